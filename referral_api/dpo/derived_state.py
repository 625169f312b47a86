"""Consent state in SQL: `consent.decision.derive_state`/`current_state` over event times.

The reports count and list consents by the state a decision would see, over a million cases,
so the replay of each consent's events is folded into one GROUP BY per consent:

- a closing event (withdrawn, revoked, entered in error) at or before `now` ends the consent
  whatever else happened, even when stamped before `given` (clock skew); the earliest one
  names the state;
- without a `given` event there is no state yet;
- after `given`, the last of the `renewed`/`expired` events decides (expired → expired,
  renewed → active); events stamped before `given` are ignored, as the replay ignores them;
- the latest renewal after `given` sets every provision's end (None: open-ended);
- an active consent whose provisions have all ended reads `expired` (`current_state`).

Two events of one consent stamped at the same microsecond are ordered by id in the replay;
here a closing event beats another closing event in the order withdrawn, revoked, entered in
error, and a renewal beats an expiry. tests/test_dpo_reports.py checks this module against
the replay on random event histories.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select

from referral_api.consent.models import ConsentEvent, ConsentProvision
from referral_api.consent.vocabulary import ConsentState, EventType

_EVENTS = ConsentEvent.__table__
_PROVISIONS = ConsentProvision.__table__


def _first(kind: EventType) -> Any:
    return func.min(case((_EVENTS.c.event_type == kind, _EVENTS.c.occurred_at)))


def _last(kind: EventType) -> Any:
    return func.max(case((_EVENTS.c.event_type == kind, _EVENTS.c.occurred_at)))


def consent_states(now: datetime, consent_ids: Select[Any] | None = None) -> Any:
    """A subquery, one row per consent with an event at or before `now`:
    `consent_id`, `derived` (the replayed state), `state` (as reported: `current_state`),
    `renewed` (1/0) and `renewed_until`. `consent_ids` limits the work to some consents."""
    times = (
        select(
            _EVENTS.c.consent_id,
            _first(EventType.GIVEN).label("given_at"),
            _first(EventType.WITHDRAWN).label("withdrawn_at"),
            _first(EventType.REVOKED).label("revoked_at"),
            _first(EventType.ENTERED_IN_ERROR).label("eie_at"),
            _last(EventType.RENEWED).label("renewed_at"),
            _last(EventType.EXPIRED).label("expired_at"),
        )
        .where(_EVENTS.c.occurred_at <= now)
        .group_by(_EVENTS.c.consent_id)
    )
    ends = select(
        _PROVISIONS.c.consent_id,
        func.count().label("provisions"),
        func.count(_PROVISIONS.c.valid_until).label("bounded"),
        func.max(_PROVISIONS.c.valid_until).label("last_until"),
    ).group_by(_PROVISIONS.c.consent_id)
    if consent_ids is not None:
        times = times.where(_EVENTS.c.consent_id.in_(consent_ids))
        ends = ends.where(_PROVISIONS.c.consent_id.in_(consent_ids))
    t = times.subquery("consent_event_times")
    e = ends.subquery("consent_provision_ends")

    derived = case(
        (
            and_(
                t.c.withdrawn_at.is_not(None),
                or_(t.c.revoked_at.is_(None), t.c.withdrawn_at <= t.c.revoked_at),
                or_(t.c.eie_at.is_(None), t.c.withdrawn_at <= t.c.eie_at),
            ),
            ConsentState.WITHDRAWN.value,
        ),
        (
            and_(
                t.c.revoked_at.is_not(None),
                or_(t.c.eie_at.is_(None), t.c.revoked_at <= t.c.eie_at),
            ),
            ConsentState.REVOKED.value,
        ),
        (t.c.eie_at.is_not(None), ConsentState.ENTERED_IN_ERROR.value),
        (t.c.given_at.is_(None), None),
        (
            and_(
                t.c.expired_at >= t.c.given_at,
                or_(
                    t.c.renewed_at.is_(None),
                    t.c.renewed_at < t.c.given_at,
                    t.c.expired_at > t.c.renewed_at,
                ),
            ),
            ConsentState.EXPIRED.value,
        ),
        else_=ConsentState.ACTIVE.value,
    )
    renewed: ColumnElement[bool] = and_(
        t.c.given_at.is_not(None), t.c.renewed_at.is_not(None), t.c.renewed_at >= t.c.given_at
    )
    latest = _EVENTS.alias("latest_renewal")
    renewed_until = case(
        (
            renewed,
            select(latest.c.valid_until)
            .where(
                latest.c.consent_id == t.c.consent_id,
                latest.c.event_type == EventType.RENEWED,
                latest.c.occurred_at == t.c.renewed_at,
            )
            .order_by(latest.c.id.desc())
            .limit(1)
            .scalar_subquery(),
        ),
        else_=None,
    )
    replayed = select(
        t.c.consent_id,
        derived.label("derived"),
        case((renewed, 1), else_=0).label("renewed"),
        renewed_until.label("renewed_until"),
        e.c.provisions,
        e.c.bounded,
        e.c.last_until,
    ).outerjoin(e, e.c.consent_id == t.c.consent_id)
    r = replayed.subquery("consent_replayed")
    # current_state: every provision ended (the renewal's end when renewed) → expired.
    all_ended = and_(
        r.c.provisions > 0,
        or_(
            and_(r.c.renewed == 1, r.c.renewed_until.is_not(None), r.c.renewed_until <= now),
            and_(r.c.renewed == 0, r.c.bounded == r.c.provisions, r.c.last_until <= now),
        ),
    )
    state = case(
        (and_(r.c.derived == ConsentState.ACTIVE.value, all_ended), ConsentState.EXPIRED.value),
        else_=r.c.derived,
    )
    return select(
        r.c.consent_id,
        r.c.derived,
        state.label("state"),
        r.c.renewed,
        r.c.renewed_until,
    ).subquery("consent_states")


def effective_until(states: Any, provisions: Any = _PROVISIONS) -> Any:
    """`decision.effective_until`: the latest renewal's end when renewed, else the
    provision's own."""
    return case((states.c.renewed == 1, states.c.renewed_until), else_=provisions.c.valid_until)


def in_force(states: Any, now: datetime, provisions: Any = _PROVISIONS) -> ColumnElement[bool]:
    """`decision.provision_in_force` at `now`."""
    until = effective_until(states, provisions)
    return and_(
        states.c.derived == ConsentState.ACTIVE.value,
        provisions.c.valid_from <= now,
        or_(until.is_(None), until > now),
    )
