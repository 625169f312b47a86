"""Consent state and disclosure decisions, as pure functions over plain values.

`derive_state` replays a consent's events up to a moment; `decide_disclosure` answers
whether a recipient organisation may receive given categories for a purpose at a moment,
naming the provisions used and, per denied category, why. A live question (`live=True`:
about now, not a past moment) counts every stored closing event whatever its timestamp.
Nothing here touches the database, so the rules can be tested exhaustively
(tests/test_consent_decision.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from referral_api.access.categories import Category, ceiling_for
from referral_api.access.roles import OrgType
from referral_api.consent.vocabulary import TERMINAL_EVENTS, ConsentState, EventType, Purpose


@dataclass(frozen=True, slots=True)
class EventView:
    event_type: EventType
    occurred_at: datetime
    valid_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProvisionView:
    id: uuid.UUID
    purpose: Purpose
    recipient_org_id: uuid.UUID | None
    recipient_org_type: OrgType | None
    categories: frozenset[Category]
    valid_from: datetime
    valid_until: datetime | None


@dataclass(frozen=True, slots=True)
class ConsentView:
    id: uuid.UUID
    provisions: tuple[ProvisionView, ...]
    events: tuple[EventView, ...]


@dataclass(frozen=True, slots=True)
class DerivedState:
    """`state` None means no `given` event yet (at that moment)."""

    state: ConsentState | None
    renewed: bool = False
    renewed_until: datetime | None = None


# Events stamped at the same instant replay in this order: an expiry before a renewal (a
# renewal needs a validity ahead of its own time, so at a shared instant it came after the
# expiry; `consent expire` and a renewal can commit within one clock tick), as the DPO
# reports' summaries count them ("a renewal beats an expiry"). Closing events end the consent
# in any order.
_TIE_RANK = {
    EventType.GIVEN: 0,
    EventType.EXPIRED: 1,
    EventType.RENEWED: 2,
    EventType.WITHDRAWN: 3,
    EventType.REVOKED: 3,
    EventType.ENTERED_IN_ERROR: 3,
}


def derive_state(events: Iterable[EventView], at: datetime, *, live: bool = False) -> DerivedState:
    """Replay events that happened at or before `at`, in time order.

    `live`: `at` is this host's now, and a closing event stamped later counts too. It was
    stored, so it has happened: its stamp is ahead only because the host that recorded it
    has a clock running ahead, and a withdrawal must never wait for ours to catch up. A
    question about a past moment (`live` false) replays strictly."""
    state: ConsentState | None = None
    renewed = False
    renewed_until: datetime | None = None
    counted = (
        e for e in events if e.occurred_at <= at or (live and e.event_type in TERMINAL_EVENTS)
    )
    for event in sorted(counted, key=lambda e: (e.occurred_at, _TIE_RANK[e.event_type])):
        kind = event.event_type
        if state in (ConsentState.WITHDRAWN, ConsentState.REVOKED, ConsentState.ENTERED_IN_ERROR):
            break  # terminal: nothing after it counts
        if kind is EventType.GIVEN and state is None:
            state = ConsentState.ACTIVE
        elif kind is EventType.RENEWED and state in (ConsentState.ACTIVE, ConsentState.EXPIRED):
            state = ConsentState.ACTIVE
            renewed, renewed_until = True, event.valid_until
        elif kind is EventType.EXPIRED and state is ConsentState.ACTIVE:
            state = ConsentState.EXPIRED
        # A closing event ends the consent even when stamped before `given`: two app hosts'
        # clocks may disagree, and a withdrawal must never be undone by clock skew.
        elif kind is EventType.WITHDRAWN:
            state = ConsentState.WITHDRAWN
        elif kind is EventType.REVOKED:
            state = ConsentState.REVOKED
        elif kind is EventType.ENTERED_IN_ERROR:
            state = ConsentState.ENTERED_IN_ERROR
    return DerivedState(state, renewed, renewed_until)


def effective_until(provision: ProvisionView, derived: DerivedState) -> datetime | None:
    return derived.renewed_until if derived.renewed else provision.valid_until


def provision_in_force(provision: ProvisionView, derived: DerivedState, at: datetime) -> bool:
    """Active consent, inside the provision's validity window (time decides, not batches)."""
    if derived.state is not ConsentState.ACTIVE:
        return False
    until = effective_until(provision, derived)
    return provision.valid_from <= at and (until is None or at < until)


def recipient_matches(provision: ProvisionView, org_id: uuid.UUID, org_type: OrgType) -> bool:
    if provision.recipient_org_id is not None:
        return provision.recipient_org_id == org_id
    return provision.recipient_org_type is org_type


@dataclass(frozen=True, slots=True)
class DisclosureDecision:
    permit: bool
    # category → ids of the provisions that cover it
    provisions_used: dict[Category, tuple[uuid.UUID, ...]] = field(default_factory=dict)
    # category → why it may not be disclosed
    denied: dict[Category, str] = field(default_factory=dict)
    # the earliest end of validity among the provisions used (None: open-ended)
    valid_until: datetime | None = None


def decide_disclosure(
    consents: Sequence[ConsentView],
    recipient_org_id: uuid.UUID,
    recipient_org_type: OrgType,
    purpose: Purpose,
    categories: Iterable[Category],
    at: datetime,
    *,
    live: bool = False,
) -> DisclosureDecision:
    """`live`: see `derive_state`."""
    wanted = sorted(set(categories))
    ceiling = ceiling_for(recipient_org_type)
    used: dict[Category, tuple[uuid.UUID, ...]] = {}
    denied: dict[Category, str] = {}
    ends: list[datetime | None] = []
    derived = {consent.id: derive_state(consent.events, at, live=live) for consent in consents}
    for category in wanted:
        if category not in ceiling:
            denied[category] = (
                f"a {recipient_org_type.value} organisation never receives {category.value} data"
            )
            continue
        covering = []
        near_misses: list[str] = []
        for consent in consents:
            state = derived[consent.id]
            for provision in consent.provisions:
                if (
                    provision.purpose is not purpose
                    or category not in provision.categories
                    or not recipient_matches(provision, recipient_org_id, recipient_org_type)
                ):
                    continue
                if provision_in_force(provision, state, at):
                    covering.append(provision)
                else:
                    near_misses.append(_why_not(provision, state, at))
        if covering:
            used[category] = tuple(sorted(p.id for p in covering))
            # The category stays covered until the last covering provision ends.
            ends.append(_latest_end(covering, derived, consents))
        else:
            denied[category] = near_misses[0] if near_misses else "no provision covers it"
    permit = bool(wanted) and not denied
    # The disclosure holds until its first category stops being covered; an open-ended
    # category does not lift the end of a bounded one.
    bounded = [e for e in ends if e is not None]
    end = min(bounded) if permit and bounded else None
    return DisclosureDecision(permit, used, denied, end)


def _latest_end(
    provisions: list[ProvisionView],
    derived: dict[uuid.UUID, DerivedState],
    consents: Sequence[ConsentView],
) -> datetime | None:
    owner = {p.id: c.id for c in consents for p in c.provisions}
    ends = [effective_until(p, derived[owner[p.id]]) for p in provisions]
    if any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None)


def _why_not(provision: ProvisionView, derived: DerivedState, at: datetime) -> str:
    if derived.state is None:
        return "consent not yet given"
    if derived.state is not ConsentState.ACTIVE:
        return f"consent {derived.state.value}"
    if at < provision.valid_from:
        return "provision not yet valid"
    return "provision expired"


def is_expired_at(consent: ConsentView, at: datetime, *, live: bool = False) -> bool:
    """Every provision has ended (used to record `expired` events for reporting)."""
    derived = derive_state(consent.events, at, live=live)
    if derived.state is not ConsentState.ACTIVE or not consent.provisions:
        return False
    ends = [effective_until(p, derived) for p in consent.provisions]
    return all(end is not None and end <= at for end in ends)


def current_state(consent: ConsentView, at: datetime, *, live: bool = False) -> ConsentState | None:
    """The state as reported: an active consent whose provisions all ended reads `expired`
    even before the `expired` event is recorded."""
    derived = derive_state(consent.events, at, live=live)
    if derived.state is ConsentState.ACTIVE and is_expired_at(consent, at, live=live):
        return ConsentState.EXPIRED
    return derived.state


TERMINAL_STATES = frozenset(
    {ConsentState.WITHDRAWN, ConsentState.REVOKED, ConsentState.ENTERED_IN_ERROR}
)
