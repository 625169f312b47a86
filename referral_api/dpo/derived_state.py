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
- an active consent whose provisions have all ended reads `expired` (`current_state`):
  `provision_state` decides it per provision row, looking at the consent's other provisions
  only when the row's own provision has ended (rarely), so no second aggregate is joined.

Two events of one consent stamped at the same microsecond are ordered by id in the replay;
here a closing event beats another closing event in the order withdrawn, revoked, entered in
error, and a renewal beats an expiry. For a closed consent `renewed`/`renewed_until` may
count renewals after the closing event (the replay stops there): nothing reads them then.
tests/test_dpo_reports.py holds all of this to the replay on random event histories.

The state is computed over the aggregates in the grouped query itself, and nothing is
joined to it before the report joins it, so the database sees that `consent_id` is unique
there and plans the report's joins on it well.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select

from referral_api.consent.models import ConsentEvent, ConsentProvision
from referral_api.consent.vocabulary import ConsentState, EventType

_EVENTS = ConsentEvent.__table__
_PROVISIONS = ConsentProvision.__table__


def _first(kind: EventType) -> Any:
    return func.min(case((_EVENTS.c.event_type == kind, _EVENTS.c.occurred_at)))


def _last(kind: EventType) -> Any:
    return func.max(case((_EVENTS.c.event_type == kind, _EVENTS.c.occurred_at)))


def consent_states(now: datetime, consent_ids: Select[Any] | None = None) -> Any:
    """A subquery, one row per consent with an event at or before `now`: `consent_id`,
    `derived` (the replayed state), `renewed` (1/0) and `renewed_until`. `consent_ids`
    limits the work to some consents."""
    given = _first(EventType.GIVEN)
    withdrawn = _first(EventType.WITHDRAWN)
    revoked = _first(EventType.REVOKED)
    erroneous = _first(EventType.ENTERED_IN_ERROR)
    renewed_at = _last(EventType.RENEWED)
    expired_at = _last(EventType.EXPIRED)
    derived = case(
        (
            and_(
                withdrawn.is_not(None),
                or_(revoked.is_(None), withdrawn <= revoked),
                or_(erroneous.is_(None), withdrawn <= erroneous),
            ),
            ConsentState.WITHDRAWN.value,
        ),
        (
            and_(revoked.is_not(None), or_(erroneous.is_(None), revoked <= erroneous)),
            ConsentState.REVOKED.value,
        ),
        (erroneous.is_not(None), ConsentState.ENTERED_IN_ERROR.value),
        (given.is_(None), None),
        (
            and_(
                expired_at >= given,
                or_(renewed_at.is_(None), renewed_at < given, expired_at > renewed_at),
            ),
            ConsentState.EXPIRED.value,
        ),
        else_=ConsentState.ACTIVE.value,
    )
    renewed: ColumnElement[bool] = and_(
        given.is_not(None), renewed_at.is_not(None), renewed_at >= given
    )
    grouped = (
        select(
            _EVENTS.c.consent_id,
            derived.label("derived"),
            case((renewed, 1), else_=0).label("renewed"),
            renewed_at.label("renewed_at"),
        )
        .where(_EVENTS.c.occurred_at <= now)
        .group_by(_EVENTS.c.consent_id)
    )
    if consent_ids is not None:
        grouped = grouped.where(_EVENTS.c.consent_id.in_(consent_ids))
    g = grouped.subquery("consent_event_times")
    # The latest renewal's end: looked up only for renewed consents (SQLite cannot refer to
    # an aggregate from inside a subquery, so this sits one level out).
    latest = _EVENTS.alias("latest_renewal")
    renewed_until = case(
        (
            g.c.renewed == 1,
            select(latest.c.valid_until)
            .where(
                latest.c.consent_id == g.c.consent_id,
                latest.c.event_type == EventType.RENEWED,
                latest.c.occurred_at == g.c.renewed_at,
            )
            .order_by(latest.c.id.desc())
            .limit(1)
            .scalar_subquery(),
        ),
        else_=None,
    )
    return select(
        g.c.consent_id, g.c.derived, g.c.renewed, renewed_until.label("renewed_until")
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


def provision_state(states: Any, now: datetime, provisions: Any = _PROVISIONS) -> Any:
    """`decision.current_state` of the consent, evaluated on one of its provision rows: an
    active consent whose provisions have all ended reads `expired`. When renewed, all its
    provisions end with the renewal; otherwise this one has ended and no other is open."""
    others = _PROVISIONS.alias("other_provision")
    # `id <>` keeps this a lookup per row (a plain correlation on consent_id alone would let
    # PostgreSQL hash every open provision first), and it only runs for ended provisions.
    another_open = exists().where(
        others.c.consent_id == provisions.c.consent_id,
        others.c.id != provisions.c.id,
        or_(others.c.valid_until.is_(None), others.c.valid_until > now),
    )
    all_ended = case(
        (
            states.c.renewed == 1,
            and_(states.c.renewed_until.is_not(None), states.c.renewed_until <= now),
        ),
        else_=and_(
            provisions.c.valid_until.is_not(None), provisions.c.valid_until <= now, ~another_open
        ),
    )
    return case(
        (
            and_(states.c.derived == ConsentState.ACTIVE.value, all_ended),
            ConsentState.EXPIRED.value,
        ),
        else_=states.c.derived,
    )
