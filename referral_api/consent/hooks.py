"""The one place withdrawal effects plug in.

A feature that holds disclosures depending on consent (referrals) registers a handler here;
`withdraw` calls every handler in the withdrawal's own transaction and lists what each one
did on the event and in the audit log. Withdrawal code never changes to add a new effect.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from referral_api.access.actor import Actor

# handler(session, actor, consent_record, at) → effects: [{"type": …, "id": …, …}] (ids only)
WithdrawalHandler = Callable[[Session, Actor, Any, datetime], list[dict[str, Any]]]

_WITHDRAWAL_HANDLERS: list[WithdrawalHandler] = []


def on_withdrawal(handler: WithdrawalHandler) -> WithdrawalHandler:
    if handler not in _WITHDRAWAL_HANDLERS:
        _WITHDRAWAL_HANDLERS.append(handler)
    return handler


def run_withdrawal_handlers(
    session: Session, actor: Actor, consent: Any, at: datetime
) -> list[dict[str, Any]]:
    effects: list[dict[str, Any]] = []
    for handler in list(_WITHDRAWAL_HANDLERS):
        effects.extend(handler(session, actor, consent, at))
    return effects
