"""Consent state in SQL: `consent.decision.derive_state`/`current_state` over event times.

The reports count and list consents by the state a decision would see, over a million cases.
They do not replay the events: the database keeps, per consent, the times that decide its
state (`consent_event_summaries`, recomputed by triggers on consent_events after every
write — migration 0010 — so it holds for rows written behind the application's back too):

- a closing event (withdrawn, revoked, entered in error) at or before `now` ends the consent
  whatever else happened, even when stamped before `given` (clock skew); the earliest one
  names the state; asked `live` (a report about now), one stamped after `now` as well
  (`decision.derive_state`'s `live`);
- without a `given` event there is no state yet;
- after `given`, the last of the `renewed`/`expired` events decides (expired → expired,
  renewed → active); events stamped before `given` are ignored, as the replay ignores them;
- the latest renewal after `given` sets every provision's end (None: open-ended);
- an active consent whose provisions have all ended reads `expired` (`current_state`): the
  summary also keeps the latest end among the consent's provisions (null when one is
  open-ended; triggers on consent_provisions keep it), so `provision_state` needs no look at
  the other provisions.
- the summary also keeps the consent record's organisation and whether a provision of the
  consent repeats an earlier one (migration 0011), passed through for the platform-wide
  consent-summary, which then joins nothing else (referral_api/dpo/service.py).

The summary covers every event a consent has, and keeps the state they give (`state`, by
`state_of`'s rules); a report asks about `now`. Events are stamped by the server's clock when
written, so normally none is after `now` and the kept state is the state now; for the
consents that have one (`last_event_at > now`: clock skew between hosts, or a test's history
around a fixed moment) the same aggregates are computed from their events at or before
`now` — and, asked `live` as every report is, from their closing events whatever their
stamp — so the answer is exactly the replay's either way.

Two events of one consent stamped at the same microsecond are ordered by id in the replay;
here a closing event beats another closing event in the order withdrawn, revoked, entered in
error, and a renewal beats an expiry. For a closed consent `renewed`/`renewed_until` may
count renewals after the closing event (the replay stops there): nothing reads them then.
tests/test_dpo_reports.py holds all of this to the replay on random event histories, and
tests/test_consent_state_summary.py the summary to its events.

The two kinds of consents are two branches of a UNION ALL, so a replayed state is computed
once per consent, in its branch, not once per reference to it in a report; when no consent
has a later event (`any_late`), the reports read the summary alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select, union_all
from sqlalchemy.orm import Session

from referral_api.consent.models import ConsentEvent, ConsentEventSummary, ConsentProvision
from referral_api.consent.vocabulary import TERMINAL_EVENTS, ConsentState, EventType

_EVENTS = ConsentEvent.__table__
_PROVISIONS = ConsentProvision.__table__
_SUMMARIES = ConsentEventSummary.__table__

# The summary's columns that decide a state, in the order `_replayed` computes them.
_TIMES = (
    "given_at",
    "withdrawn_at",
    "revoked_at",
    "erroneous_at",
    "expired_at",
    "renewed_at",
    "renewed_until",
)


def _first(kind: EventType) -> Any:
    return func.min(case((_EVENTS.c.event_type == kind, _EVENTS.c.occurred_at)))


def _last(kind: EventType) -> Any:
    return func.max(case((_EVENTS.c.event_type == kind, _EVENTS.c.occurred_at)))


def _replayed(now: datetime, consent_ids: Any, live: bool) -> Any:
    """The summary's columns computed from the events at or before `now` of some consents,
    and when `live` from every closing event of theirs too (one row per consent with such an
    event)."""
    counted: ColumnElement[bool] = _EVENTS.c.occurred_at <= now
    if live:
        counted = or_(counted, _EVENTS.c.event_type.in_(sorted(TERMINAL_EVENTS)))
    grouped = (
        select(
            _EVENTS.c.consent_id,
            _first(EventType.GIVEN).label("given_at"),
            _first(EventType.WITHDRAWN).label("withdrawn_at"),
            _first(EventType.REVOKED).label("revoked_at"),
            _first(EventType.ENTERED_IN_ERROR).label("erroneous_at"),
            _last(EventType.EXPIRED).label("expired_at"),
            _last(EventType.RENEWED).label("renewed_at"),
        )
        .where(counted, _EVENTS.c.consent_id.in_(consent_ids))
        .group_by(_EVENTS.c.consent_id)
        .subquery("replayed_times")
    )
    # The latest renewal's end: that renewal's row, and of two at one instant the one no
    # other outranks by id. Joins rather than a correlated subquery, which would keep the
    # report's plan from running in parallel workers.
    latest, newer = _EVENTS.alias("latest_renewal"), _EVENTS.alias("newer_renewal")
    return (
        select(
            *(grouped.c[name] for name in ("consent_id", *_TIMES[:-1])),
            latest.c.valid_until.label("renewed_until"),
        )
        .select_from(
            grouped.outerjoin(
                latest,
                and_(
                    latest.c.consent_id == grouped.c.consent_id,
                    latest.c.event_type == EventType.RENEWED,
                    latest.c.occurred_at == grouped.c.renewed_at,
                ),
            ).outerjoin(
                newer,
                and_(
                    newer.c.consent_id == latest.c.consent_id,
                    newer.c.event_type == EventType.RENEWED,
                    newer.c.occurred_at == latest.c.occurred_at,
                    newer.c.id > latest.c.id,
                ),
            )
        )
        .where(newer.c.id.is_(None))
        .subquery("replayed")
    )


def state_of(times: Any) -> Any:
    """The state from the columns of `_TIMES` (migration 0010 computes the same into the
    summary's `state`)."""
    given, renewed_at, expired_at = times.given_at, times.renewed_at, times.expired_at
    withdrawn, revoked, erroneous = times.withdrawn_at, times.revoked_at, times.erroneous_at
    return case(
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


def _state(times: Any, derived: Any = None) -> list[Any]:
    """`derived`, `renewed` and `renewed_until` from the columns of `_TIMES`."""
    given, renewed_at = times.given_at, times.renewed_at
    derived = state_of(times) if derived is None else derived
    renewed: ColumnElement[bool] = and_(
        given.is_not(None), renewed_at.is_not(None), renewed_at >= given
    )
    return [
        derived.label("derived"),
        case((renewed, 1), else_=0).label("renewed"),
        case((renewed, times.renewed_until), else_=None).label("renewed_until"),
    ]


def any_late(session: Session, now: datetime) -> bool:
    """Whether some consent has an event stamped after `now` (an index lookup)."""
    s = _SUMMARIES
    return bool(session.scalar(select(exists().where(s.c.last_event_at > now))))


def consent_states(
    now: datetime,
    consent_ids: Select[Any] | None = None,
    *,
    replay_late: bool = True,
    live: bool = False,
) -> Any:
    """A subquery, one row per consent with an event at or before `now` (or, `live`, a
    closing event): `consent_id`, `derived` (the replayed state), `renewed` (1/0),
    `renewed_until`, `provisions_until` (the latest end among its provisions, None when one
    is open-ended), `org_id` (the consent record's) and `has_repeats` (some provision repeats
    an earlier one of the consent in purpose and recipient; migration 0011). `consent_ids`
    limits the work to some consents. `replay_late=False` when `any_late` said no consent has an
    event after `now`: a plain read of the summary, which PostgreSQL can join in parallel
    workers (the replay's GROUP BY keeps it from doing so). `live`: `now` is the present, and
    a closing event stamped after it (by a host whose clock runs ahead) counts as well, as in
    `decision.derive_state`; the kept `state` already counts every event."""
    s = _SUMMARIES
    # Every event of these is at or before `now`: the state kept in the summary is theirs.
    # What does not depend on `now`, read as kept in both branches.
    kept = (s.c.provisions_until, s.c.org_id, s.c.has_repeats)
    settled = select(s.c.consent_id, *_state(s.c, s.c.state), *kept).where(s.c.last_event_at <= now)
    if consent_ids is not None:
        settled = settled.where(s.c.consent_id.in_(consent_ids))
    if not replay_late:
        return settled.subquery("consent_states")
    late_ids = select(s.c.consent_id).where(s.c.last_event_at > now)
    if consent_ids is not None:
        late_ids = late_ids.where(s.c.consent_id.in_(consent_ids))
    replayed = _replayed(now, late_ids, live)
    late = select(replayed.c.consent_id, *_state(replayed.c), *kept).join_from(
        replayed, s, s.c.consent_id == replayed.c.consent_id
    )
    # UNION ALL: the database computes each consent's state once, in its branch, rather than
    # pasting the expression wherever a report refers to it.
    return union_all(settled, late).subquery("consent_states")


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


def provision_state(states: Any, now: datetime) -> Any:
    """`decision.current_state` of the consent at `now`: an active consent whose provisions
    have all ended reads `expired`. When renewed, all its provisions end with the renewal;
    otherwise with the latest of their own ends (kept in the summary)."""
    all_ended = case(
        (
            states.c.renewed == 1,
            and_(states.c.renewed_until.is_not(None), states.c.renewed_until <= now),
        ),
        else_=and_(states.c.provisions_until.is_not(None), states.c.provisions_until <= now),
    )
    return case(
        (
            and_(states.c.derived == ConsentState.ACTIVE.value, all_ended),
            ConsentState.EXPIRED.value,
        ),
        else_=states.c.derived,
    )
