"""The consent decision as a table and as properties (pure functions, no database).

DESIGN.md §7 and `referral_api.consent.decision`: a consent's state is replayed from its
events up to a moment; a disclosure is permitted only when, for every category asked for,
an in-force provision of an active consent names the purpose, the recipient (the very
organisation, or its organisation type) and the category — and the recipient's
organisation-type ceiling allows the category whatever the consent says.

Times are hours after T0 (`h(n)`), so the tables read as timelines.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from referral_api.access.categories import Category
from referral_api.access.roles import OrgType
from referral_api.consent.decision import (
    ConsentView,
    DerivedState,
    EventView,
    ProvisionView,
    current_state,
    decide_disclosure,
    derive_state,
    is_expired_at,
)
from referral_api.consent.vocabulary import ConsentState, EventType, Purpose

C = Category
P = Purpose
E = EventType
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def ev(kind: EventType, at: float, valid_until: float | None = None) -> EventView:
    return EventView(kind, h(at), h(valid_until) if valid_until is not None else None)


def prov(
    name: str,
    purpose: Purpose,
    categories: set[Category],
    *,
    org: uuid.UUID | None = None,
    org_type: OrgType | None = None,
    start: float = 0,
    end: float | None = None,
) -> ProvisionView:
    assert (org is None) != (org_type is None)
    return ProvisionView(
        id=PID[name],
        purpose=purpose,
        recipient_org_id=org,
        recipient_org_type=org_type,
        categories=frozenset(categories),
        valid_from=h(start),
        valid_until=h(end) if end is not None else None,
    )


def consent(*provisions: ProvisionView, events: tuple[EventView, ...] = ()) -> ConsentView:
    return ConsentView(id=uuid.uuid4(), provisions=provisions, events=events or (ev(E.GIVEN, 0),))


# Stable provision ids by name, sorted in name order (provisions_used lists ids sorted).
PID = {name: uuid.UUID(int=i + 1) for i, name in enumerate("abcdefghijklmnop")}

# Recipient organisations: (id, type).
LEGAL_1 = (uuid.UUID(int=101), OrgType.LEGAL_AID)
LEGAL_2 = (uuid.UUID(int=102), OrgType.LEGAL_AID)
SHELTER_1 = (uuid.UUID(int=201), OrgType.SHELTER)
SHELTER_2 = (uuid.UUID(int=202), OrgType.SHELTER)
POLICE_1 = (uuid.UUID(int=301), OrgType.POLICE)
PROSECUTION_1 = (uuid.UUID(int=401), OrgType.PROSECUTION)
NGO_1 = (uuid.UUID(int=501), OrgType.NGO)
HEALTH_1 = (uuid.UUID(int=601), OrgType.HEALTH)
LABOUR_1 = (uuid.UUID(int=701), OrgType.LABOUR_INSPECTION)

# One consent given at h(0) whose provisions the table below asks about.
WORLD = consent(
    # A specific organisation.
    prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY, C.CONTACT, C.LEGAL}, org=LEGAL_1[0], end=100),
    # An organisation type, valid from h(10) until h(50).
    prov(
        "b",
        P.SHELTER,
        {C.IDENTITY, C.LOCATION, C.NEEDS},
        org_type=OrgType.SHELTER,
        start=10,
        end=50,
    ),
    # Police named with categories above its ceiling.
    prov(
        "c",
        P.LAW_ENFORCEMENT_REPORT,
        {C.IDENTITY, C.INCIDENT, C.HEALTH, C.PSYCHOSOCIAL},
        org_type=OrgType.POLICE,
    ),
    # Prosecution by id, with health.
    prov("d", P.LAW_ENFORCEMENT_REPORT, {C.IDENTITY, C.HEALTH}, org=PROSECUTION_1[0], end=100),
    # Types without a health/psychosocial ceiling.
    prov("e", P.PSYCHOSOCIAL_SUPPORT, {C.IDENTITY, C.PSYCHOSOCIAL}, org_type=OrgType.NGO),
    prov("f", P.HEALTH, {C.IDENTITY, C.HEALTH}, org_type=OrgType.HEALTH, end=100),
    # Labour inspection: location is above its ceiling.
    prov("g", P.SOCIAL_ASSISTANCE, {C.IDENTITY, C.LOCATION}, org_type=OrgType.LABOUR_INSPECTION),
)

NOT_COVERED = "no provision covers it"
POLICE_HEALTH = "a police organisation never receives health data"
POLICE_PSY = "a police organisation never receives psychosocial data"


@dataclass(frozen=True)
class Row:
    name: str
    recipient: tuple[uuid.UUID, OrgType]
    purpose: Purpose
    categories: frozenset[Category]
    at: float
    permit: bool
    used: dict[Category, tuple[str, ...]]
    denied: dict[Category, str]
    valid_until: float | None = None


def row(
    name: str,
    recipient: tuple[uuid.UUID, OrgType],
    purpose: Purpose,
    categories: set[Category],
    at: float,
    *,
    used: dict[Category, tuple[str, ...]] | None = None,
    denied: dict[Category, str] | None = None,
    until: float | None = None,
) -> Row:
    denied = denied or {}
    return Row(
        name,
        recipient,
        purpose,
        frozenset(categories),
        at,
        permit=bool(categories) and not denied,
        used=used or {},
        denied=denied,
        valid_until=until,
    )


TABLE = [
    # -- a specific organisation: only that one ---------------------------------------------
    row(
        "specific-org",
        LEGAL_1,
        P.LEGAL_ASSISTANCE,
        {C.IDENTITY, C.LEGAL},
        1,
        used={C.IDENTITY: ("a",), C.LEGAL: ("a",)},
        until=100,
    ),
    row(
        "specific-org-other-org-same-type",
        LEGAL_2,
        P.LEGAL_ASSISTANCE,
        {C.IDENTITY},
        1,
        denied={C.IDENTITY: NOT_COVERED},
    ),
    row(
        "specific-org-wrong-purpose",
        LEGAL_1,
        P.SHELTER,
        {C.IDENTITY},
        1,
        denied={C.IDENTITY: NOT_COVERED},
    ),
    row(
        "specific-org-category-not-named",
        LEGAL_1,
        P.LEGAL_ASSISTANCE,
        {C.IDENTITY, C.LOCATION},
        1,
        used={C.IDENTITY: ("a",)},
        denied={C.LOCATION: NOT_COVERED},
    ),
    row(
        "specific-org-at-its-end",
        LEGAL_1,
        P.LEGAL_ASSISTANCE,
        {C.CONTACT},
        100,
        denied={C.CONTACT: "provision expired"},
    ),
    row(
        "specific-org-just-before-end",
        LEGAL_1,
        P.LEGAL_ASSISTANCE,
        {C.CONTACT},
        99.999,
        used={C.CONTACT: ("a",)},
        until=100,
    ),
    # -- an organisation type: any organisation of it, none of another ----------------------
    row(
        "org-type-first",
        SHELTER_1,
        P.SHELTER,
        {C.LOCATION, C.NEEDS},
        10,
        used={C.LOCATION: ("b",), C.NEEDS: ("b",)},
        until=50,
    ),
    row(
        "org-type-second",
        SHELTER_2,
        P.SHELTER,
        {C.LOCATION},
        49,
        used={C.LOCATION: ("b",)},
        until=50,
    ),
    row(
        "org-type-other-type",
        NGO_1,
        P.SHELTER,
        {C.LOCATION},
        20,
        denied={C.LOCATION: NOT_COVERED},
    ),
    row(
        "org-type-not-yet-valid",
        SHELTER_1,
        P.SHELTER,
        {C.LOCATION},
        9.99,
        denied={C.LOCATION: "provision not yet valid"},
    ),
    row(
        "org-type-expired",
        SHELTER_1,
        P.SHELTER,
        {C.LOCATION, C.NEEDS},
        50,
        denied={C.LOCATION: "provision expired", C.NEEDS: "provision expired"},
    ),
    row(
        "org-type-long-after-end",
        SHELTER_2,
        P.SHELTER,
        {C.IDENTITY},
        5000,
        denied={C.IDENTITY: "provision expired"},
    ),
    # -- ceilings: police and prosecution never receive health or psychosocial data ---------
    row(
        "police-within-ceiling",
        POLICE_1,
        P.LAW_ENFORCEMENT_REPORT,
        {C.IDENTITY, C.INCIDENT},
        1000,
        used={C.IDENTITY: ("c",), C.INCIDENT: ("c",)},
        until=None,
    ),
    row(
        "police-health-named-in-consent",
        POLICE_1,
        P.LAW_ENFORCEMENT_REPORT,
        {C.IDENTITY, C.HEALTH},
        1,
        used={C.IDENTITY: ("c",)},
        denied={C.HEALTH: POLICE_HEALTH},
    ),
    row(
        "police-psychosocial-named-in-consent",
        POLICE_1,
        P.LAW_ENFORCEMENT_REPORT,
        {C.PSYCHOSOCIAL},
        1,
        denied={C.PSYCHOSOCIAL: POLICE_PSY},
    ),
    row(
        "police-health-and-psychosocial",
        POLICE_1,
        P.LAW_ENFORCEMENT_REPORT,
        {C.HEALTH, C.PSYCHOSOCIAL},
        1,
        denied={C.HEALTH: POLICE_HEALTH, C.PSYCHOSOCIAL: POLICE_PSY},
    ),
    row(
        "police-ceiling-without-any-provision",
        POLICE_1,
        P.CASE_MANAGEMENT,
        {C.HEALTH, C.IDENTITY},
        1,
        denied={C.HEALTH: POLICE_HEALTH, C.IDENTITY: NOT_COVERED},
    ),
    row(
        "prosecution-health-named-in-consent",
        PROSECUTION_1,
        P.LAW_ENFORCEMENT_REPORT,
        {C.IDENTITY, C.HEALTH},
        1,
        used={C.IDENTITY: ("d",)},
        denied={C.HEALTH: "a prosecution organisation never receives health data"},
    ),
    row(
        "labour-inspection-location",
        LABOUR_1,
        P.SOCIAL_ASSISTANCE,
        {C.LOCATION},
        1,
        denied={C.LOCATION: "a labour_inspection organisation never receives location data"},
    ),
    row(
        "ngo-psychosocial-unaffected",
        NGO_1,
        P.PSYCHOSOCIAL_SUPPORT,
        {C.IDENTITY, C.PSYCHOSOCIAL},
        1,
        used={C.IDENTITY: ("e",), C.PSYCHOSOCIAL: ("e",)},
        until=None,
    ),
    row(
        "health-org-health-unaffected",
        HEALTH_1,
        P.HEALTH,
        {C.HEALTH},
        1,
        used={C.HEALTH: ("f",)},
        until=100,
    ),
    # -- asking for nothing permits nothing -------------------------------------------------
    row("no-categories", LEGAL_1, P.LEGAL_ASSISTANCE, set(), 1),
    row("no-categories-police", POLICE_1, P.LAW_ENFORCEMENT_REPORT, set(), 1),
]


@pytest.mark.parametrize("case", TABLE, ids=[r.name for r in TABLE])
def test_decision_table(case: Row) -> None:
    org_id, org_type = case.recipient
    decision = decide_disclosure(
        [WORLD], org_id, org_type, case.purpose, case.categories, h(case.at)
    )
    assert decision.permit is case.permit
    assert decision.provisions_used == {
        category: tuple(PID[name] for name in names) for category, names in case.used.items()
    }
    assert decision.denied == case.denied
    expected_until = h(case.valid_until) if case.permit and case.valid_until is not None else None
    assert decision.valid_until == expected_until


def test_the_table_exercises_every_reason() -> None:
    reasons = {why for r in TABLE for why in r.denied.values()}
    assert {NOT_COVERED, "provision expired", "provision not yet valid", POLICE_HEALTH} <= reasons
    assert {r.permit for r in TABLE} == {True, False}


# ---- overlapping provisions ----------------------------------------------------------------


def _decide(
    consents: list[ConsentView],
    categories: set[Category],
    at: float,
    recipient: tuple[uuid.UUID, OrgType] = LEGAL_1,
    purpose: Purpose = P.LEGAL_ASSISTANCE,
    *,
    live: bool = False,
):  # type: ignore[no-untyped-def]
    return decide_disclosure(
        consents, recipient[0], recipient[1], purpose, categories, h(at), live=live
    )


def test_overlapping_provisions_are_all_named() -> None:
    both = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY, C.LEGAL}, org=LEGAL_1[0], end=30),
        prov("b", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org_type=OrgType.LEGAL_AID, end=60),
    )
    decision = _decide([both], {C.IDENTITY, C.LEGAL}, 10)
    assert decision.permit
    assert decision.provisions_used == {C.IDENTITY: (PID["a"], PID["b"]), C.LEGAL: (PID["a"],)}
    # identity holds until h(60) (the later of two), legal until h(30): the disclosure as a
    # whole until the earliest of those.
    assert decision.valid_until == h(30)
    assert _decide([both], {C.IDENTITY}, 10).valid_until == h(60)


def test_one_expired_and_one_active_provision_still_permits() -> None:
    both = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=30),
        prov("b", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org_type=OrgType.LEGAL_AID, end=60),
    )
    decision = _decide([both], {C.IDENTITY}, 40)
    assert decision.permit
    assert decision.provisions_used == {C.IDENTITY: (PID["b"],)}
    assert decision.valid_until == h(60)
    # After both ended: denied, with the reason of the first near miss.
    later = _decide([both], {C.IDENTITY}, 60)
    assert not later.permit and later.denied == {C.IDENTITY: "provision expired"}


def test_overlap_across_consents_one_withdrawn() -> None:
    withdrawn = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0]),
        events=(ev(E.GIVEN, 0), ev(E.WITHDRAWN, 5)),
    )
    active = consent(prov("b", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=80))
    decision = _decide([withdrawn, active], {C.IDENTITY}, 10)
    assert decision.permit
    assert decision.provisions_used == {C.IDENTITY: (PID["b"],)}
    assert decision.valid_until == h(80)
    # Before the withdrawal both counted.
    assert _decide([withdrawn, active], {C.IDENTITY}, 4).provisions_used == {
        C.IDENTITY: (PID["a"], PID["b"])
    }
    alone = _decide([withdrawn], {C.IDENTITY}, 10)
    assert alone.denied == {C.IDENTITY: "consent withdrawn"}


def test_valid_until_is_the_earliest_end_among_categories() -> None:
    mixed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0]),  # open-ended
        prov("b", P.LEGAL_ASSISTANCE, {C.LEGAL}, org=LEGAL_1[0], end=40),
        prov("c", P.LEGAL_ASSISTANCE, {C.CONTACT}, org=LEGAL_1[0], end=70),
    )
    assert _decide([mixed], {C.IDENTITY}, 1).valid_until is None
    assert _decide([mixed], {C.CONTACT, C.IDENTITY}, 1).valid_until == h(70)
    # An open-ended category does not make the whole disclosure open-ended: legal ends.
    assert _decide([mixed], {C.IDENTITY, C.LEGAL, C.CONTACT}, 1).valid_until == h(40)
    # A denial has no validity.
    denied = _decide([mixed], {C.IDENTITY, C.LEGAL}, 40)
    assert not denied.permit and denied.valid_until is None


# ---- events: only those up to `at` count --------------------------------------------------

CLOSING = [
    (E.WITHDRAWN, "consent withdrawn", ConsentState.WITHDRAWN),
    (E.REVOKED, "consent revoked", ConsentState.REVOKED),
    (E.ENTERED_IN_ERROR, "consent entered_in_error", ConsentState.ENTERED_IN_ERROR),
]


@pytest.mark.parametrize(("kind", "reason", "state"), CLOSING, ids=[c[0].value for c in CLOSING])
def test_closing_events_deny_from_their_moment_only(
    kind: EventType, reason: str, state: ConsentState
) -> None:
    closed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY, C.LEGAL}, org=LEGAL_1[0]),
        events=(ev(E.GIVEN, 0), ev(kind, 5)),
    )
    before = _decide([closed], {C.IDENTITY, C.LEGAL}, 4.99)
    assert before.permit, "an event after `at` must not affect the decision at `at`"
    for at in (5, 6, 10_000):
        after = _decide([closed], {C.IDENTITY, C.LEGAL}, at)
        assert not after.permit
        assert after.denied == {C.IDENTITY: reason, C.LEGAL: reason}
        assert after.provisions_used == {}
        assert derive_state(closed.events, h(at)).state is state
    assert derive_state(closed.events, h(4)).state is ConsentState.ACTIVE


@pytest.mark.parametrize("kind", [c[0] for c in CLOSING], ids=[c[0].value for c in CLOSING])
def test_nothing_reopens_a_closed_consent(kind: EventType) -> None:
    closed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(kind, 5), ev(E.RENEWED, 6, 100), ev(E.GIVEN, 7)),
    )
    assert derive_state(closed.events, h(8)).state is ConsentState(kind.value)
    assert not _decide([closed], {C.IDENTITY}, 8).permit


@pytest.mark.parametrize("kind", [c[0] for c in CLOSING], ids=[c[0].value for c in CLOSING])
def test_a_closing_event_stamped_before_given_still_closes(kind: EventType) -> None:
    """Clocks of two app hosts may disagree: a withdrawal recorded on a host whose clock is
    behind can carry a time before the `given` event. It must still end the consent."""
    skewed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0]),
        events=(ev(E.GIVEN, 1), ev(kind, 0.5)),
    )
    assert not _decide([skewed], {C.IDENTITY}, 2).permit
    assert derive_state(skewed.events, h(2)).state is ConsentState(kind.value)


@pytest.mark.parametrize(("kind", "reason", "state"), CLOSING, ids=[c[0].value for c in CLOSING])
def test_a_live_question_counts_a_closing_event_stamped_ahead(
    kind: EventType, reason: str, state: ConsentState
) -> None:
    """A host whose clock runs ahead stamped the closing event after this host's now: asked
    live, it counts already; asked about that moment in the past, the replay is strict.
    Only closing events count early: a renewal stamped ahead waits for its time."""
    skewed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(E.RENEWED, 32, 40), ev(kind, 35)),
    )
    live = _decide([skewed], {C.IDENTITY}, 10, live=True)
    assert not live.permit and live.denied == {C.IDENTITY: reason}
    assert derive_state(skewed.events, h(30), live=True) == DerivedState(state)
    assert current_state(skewed, h(30), live=True) is state
    assert not is_expired_at(skewed, h(30), live=True)
    # Strictly, at those moments: given and not yet renewed.
    assert _decide([skewed], {C.IDENTITY}, 10).permit
    assert current_state(skewed, h(30)) is ConsentState.EXPIRED
    assert is_expired_at(skewed, h(30))


def test_not_yet_given() -> None:
    later = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0]), events=(ev(E.GIVEN, 5),)
    )
    assert _decide([later], {C.IDENTITY}, 4).denied == {C.IDENTITY: "consent not yet given"}
    assert derive_state(later.events, h(4)) == DerivedState(None)
    assert _decide([later], {C.IDENTITY}, 5).permit


def test_event_order_in_input_does_not_matter() -> None:
    events = (ev(E.WITHDRAWN, 5), ev(E.GIVEN, 0))
    assert derive_state(events, h(3)).state is ConsentState.ACTIVE
    assert derive_state(events, h(5)).state is ConsentState.WITHDRAWN


# ---- renewal and expiry -------------------------------------------------------------------


def test_renewal_extends_validity_from_its_moment() -> None:
    renewed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(E.RENEWED, 15, 40)),
    )
    # Before the renewal: the original end.
    assert _decide([renewed], {C.IDENTITY}, 14).valid_until == h(20)
    assert _decide([renewed], {C.IDENTITY}, 16).valid_until == h(40)
    assert _decide([renewed], {C.IDENTITY}, 30).permit
    assert _decide([renewed], {C.IDENTITY}, 40).denied == {C.IDENTITY: "provision expired"}
    # A question about h(30) asked "as of" before the renewal: not permitted then.
    not_yet = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(E.RENEWED, 35, 60)),
    )
    assert not _decide([not_yet], {C.IDENTITY}, 30).permit
    assert _decide([not_yet], {C.IDENTITY}, 36).permit


def test_open_ended_renewal() -> None:
    renewed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), EventView(E.RENEWED, h(10), None)),
    )
    decision = _decide([renewed], {C.IDENTITY}, 10_000)
    assert decision.permit and decision.valid_until is None


def test_renewal_after_expired_event_reactivates() -> None:
    lapsed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(E.EXPIRED, 21), ev(E.RENEWED, 30, 60)),
    )
    assert derive_state(lapsed.events, h(25)).state is ConsentState.EXPIRED
    assert _decide([lapsed], {C.IDENTITY}, 25).denied == {C.IDENTITY: "consent expired"}
    assert derive_state(lapsed.events, h(31)) == DerivedState(ConsentState.ACTIVE, True, h(60))
    decision = _decide([lapsed], {C.IDENTITY}, 31)
    assert decision.permit and decision.valid_until == h(60)


def test_expired_event_while_provisions_still_run_denies() -> None:
    # Recorded by the expiry job only when every provision ended; read as the state it is.
    early = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0]),
        events=(ev(E.GIVEN, 0), ev(E.EXPIRED, 5)),
    )
    assert _decide([early], {C.IDENTITY}, 6).denied == {C.IDENTITY: "consent expired"}


def test_expiry_needs_every_provision_ended() -> None:
    two = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        prov("b", P.SHELTER, {C.LOCATION}, org_type=OrgType.SHELTER, end=40),
    )
    assert not is_expired_at(two, h(30))
    assert current_state(two, h(30)) is ConsentState.ACTIVE
    assert is_expired_at(two, h(40))
    assert current_state(two, h(40)) is ConsentState.EXPIRED
    open_ended = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        prov("b", P.SHELTER, {C.LOCATION}, org_type=OrgType.SHELTER),
    )
    assert not is_expired_at(open_ended, h(10_000))
    # A closed consent is not "expired": its state stays the closing one.
    withdrawn = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(E.WITHDRAWN, 10)),
    )
    assert not is_expired_at(withdrawn, h(30))
    assert current_state(withdrawn, h(30)) is ConsentState.WITHDRAWN
    # A renewal pushes every provision's end.
    renewed = consent(
        prov("a", P.LEGAL_ASSISTANCE, {C.IDENTITY}, org=LEGAL_1[0], end=20),
        events=(ev(E.GIVEN, 0), ev(E.RENEWED, 10, 90)),
    )
    assert not is_expired_at(renewed, h(30)) and is_expired_at(renewed, h(90))


# ---- properties ---------------------------------------------------------------------------
#
# A small world, so that random provisions often match a random question: two legal-aid
# organisations and one police organisation, two purposes, three categories, times on an
# hourly grid (ties and boundaries happen often).

CLOSING_EVENTS = frozenset({E.WITHDRAWN, E.REVOKED, E.ENTERED_IN_ERROR})
GRID = st.integers(min_value=0, max_value=16)
RECIPIENTS = [LEGAL_1, LEGAL_2, POLICE_1]
PURPOSES = [P.LEGAL_ASSISTANCE, P.LAW_ENFORCEMENT_REPORT]
CATEGORIES = [C.IDENTITY, C.HEALTH, C.PSYCHOSOCIAL]
# DESIGN.md §5: police (and prosecution) never receive health or psychosocial data.
ABOVE_CEILING = {
    OrgType.POLICE: {C.HEALTH, C.PSYCHOSOCIAL},
    OrgType.PROSECUTION: {C.HEALTH, C.PSYCHOSOCIAL},
}


def reference_replay(events: tuple[EventView, ...], at: datetime) -> DerivedState:
    """DESIGN.md §7, written down plainly: take the events up to `at` in time order (at one
    instant: given, then expired, then renewed, then the closing events; ties of one kind in
    recorded order). The first withdrawn / revoked / entered_in_error ends the consent for
    good. Before it, `given` starts the consent once; `expired` lapses a started, active
    consent; `renewed` re-activates a started consent and sets the end of every provision."""
    order = {E.GIVEN: 0, E.EXPIRED: 1, E.RENEWED: 2}
    timeline = sorted(
        (e for e in events if e.occurred_at <= at),
        key=lambda e: (e.occurred_at, order.get(e.event_type, 3)),
    )
    closing = next((i for i, e in enumerate(timeline) if e.event_type in CLOSING_EVENTS), None)
    before_close = timeline if closing is None else timeline[:closing]

    started = False
    lapsed = False
    renewal: EventView | None = None
    for event in before_close:
        if event.event_type is E.GIVEN:
            started = True
        elif started and event.event_type is E.EXPIRED:
            lapsed = True
        elif started and event.event_type is E.RENEWED:
            lapsed = False
            renewal = event

    if closing is not None:
        state: ConsentState | None = ConsentState(timeline[closing].event_type.value)
    elif not started:
        state = None
    else:
        state = ConsentState.EXPIRED if lapsed else ConsentState.ACTIVE
    if renewal is None:
        return DerivedState(state)
    return DerivedState(state, True, renewal.valid_until)


def reference_end(owner: ConsentView, provision: ProvisionView, at: datetime) -> datetime | None:
    derived = reference_replay(owner.events, at)
    return derived.renewed_until if derived.renewed else provision.valid_until


def reference_covering(
    consents: list[ConsentView],
    recipient: tuple[uuid.UUID, OrgType],
    purpose: Purpose,
    category: Category,
    at: datetime,
) -> list[tuple[ConsentView, ProvisionView]]:
    """Provisions that would let `category` go to `recipient` for `purpose` at `at`."""
    if category in ABOVE_CEILING.get(recipient[1], set()):
        return []
    found = []
    for owner in consents:
        if reference_replay(owner.events, at).state is not ConsentState.ACTIVE:
            continue
        for provision in owner.provisions:
            names_recipient = (
                provision.recipient_org_id == recipient[0]
                if provision.recipient_org_id is not None
                else provision.recipient_org_type is recipient[1]
            )
            end = reference_end(owner, provision, at)
            if (
                names_recipient
                and provision.purpose is purpose
                and category in provision.categories
                and provision.valid_from <= at
                and (end is None or at < end)
            ):
                found.append((owner, provision))
    return found


@st.composite
def event_sequences(draw: st.DrawFn) -> tuple[EventView, ...]:
    """Mostly a `given` early on, then any events at any times (closing events rarer, so
    that many consents are still active when asked about)."""
    events = []
    if draw(st.integers(min_value=0, max_value=9)) < 9:  # (shrinks towards a `given`)
        events.append(ev(E.GIVEN, draw(st.integers(min_value=0, max_value=4))))
    kinds = st.sampled_from(
        [E.RENEWED, E.RENEWED, E.EXPIRED, E.GIVEN, E.WITHDRAWN, E.REVOKED, E.ENTERED_IN_ERROR]
    )
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kind = draw(kinds)
        until = draw(st.one_of(st.none(), GRID.map(h))) if kind is E.RENEWED else None
        events.append(EventView(kind, h(draw(GRID)), until))
    return tuple(draw(st.permutations(events)))


@st.composite
def provisions(draw: st.DrawFn) -> ProvisionView:
    start = draw(st.integers(min_value=0, max_value=10))
    end = draw(st.one_of(st.integers(min_value=start + 1, max_value=18), st.none()))
    recipient = draw(st.sampled_from(RECIPIENTS))
    by_type = draw(st.booleans())
    return ProvisionView(
        id=draw(st.uuids()),
        purpose=draw(st.sampled_from(PURPOSES)),
        recipient_org_id=None if by_type else recipient[0],
        recipient_org_type=recipient[1] if by_type else None,
        categories=frozenset(draw(st.sets(st.sampled_from(CATEGORIES), min_size=1))),
        valid_from=h(start),
        valid_until=h(end) if end is not None else None,
    )


@st.composite
def consent_views(draw: st.DrawFn) -> ConsentView:
    return ConsentView(
        id=draw(st.uuids()),
        provisions=tuple(draw(st.lists(provisions(), min_size=1, max_size=4))),
        events=draw(event_sequences()),
    )


def _distinct_ids(consents: list[ConsentView]) -> bool:
    ids = [c.id for c in consents] + [p.id for c in consents for p in c.provisions]
    return len(ids) == len(set(ids))


PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(events=event_sequences(), at=GRID)
@example(events=(ev(E.GIVEN, 0), ev(E.EXPIRED, 1), ev(E.GIVEN, 2)), at=3)
@example(events=(ev(E.WITHDRAWN, 0), ev(E.GIVEN, 1)), at=2)
@example(events=(ev(E.GIVEN, 0), ev(E.REVOKED, 1), ev(E.RENEWED, 2, 9)), at=3)
@example(events=(ev(E.RENEWED, 0, 9), ev(E.GIVEN, 1)), at=2)
def test_derive_state_equals_reference_replay(events: tuple[EventView, ...], at: int) -> None:
    assert derive_state(events, h(at)) == reference_replay(events, h(at))


QUESTIONS = {
    "consents": st.lists(consent_views(), min_size=1, max_size=3).filter(_distinct_ids),
    "recipient": st.sampled_from(RECIPIENTS),
    "purpose": st.sampled_from(PURPOSES),
    "categories": st.sets(st.sampled_from(CATEGORIES), min_size=1, max_size=3),
    "at": GRID,
}


@PROPERTY_SETTINGS
@given(**QUESTIONS)
def test_no_closed_or_ended_provision_ever_permits(
    consents: list[ConsentView],
    recipient: tuple[uuid.UUID, OrgType],
    purpose: Purpose,
    categories: set[Category],
    at: int,
) -> None:
    """Whatever the events: a provision used for a permit belongs to a consent given and not
    withdrawn, revoked or entered in error at or before `at`, and `at` lies inside its
    (renewed) window."""
    moment = h(at)
    decision = decide_disclosure(consents, recipient[0], recipient[1], purpose, categories, moment)
    owner = {p.id: c for c in consents for p in c.provisions}
    by_id = {p.id: p for c in consents for p in c.provisions}
    for used in decision.provisions_used.values():
        for provision_id in used:
            provision, owning = by_id[provision_id], owner[provision_id]
            events = [e for e in owning.events if e.occurred_at <= moment]
            assert any(e.event_type is E.GIVEN for e in events), "permitted before given"
            assert not any(e.event_type in CLOSING_EVENTS for e in events), (
                "a withdrawn, revoked or erroneous consent permitted"
            )
            assert provision.valid_from <= moment, "permitted before valid_from"
            end = reference_end(owning, provision, moment)
            assert end is None or moment < end, "permitted at or after its end"
    if decision.permit and decision.valid_until is not None:
        assert decision.valid_until > moment


@PROPERTY_SETTINGS
@given(**QUESTIONS)
def test_decision_equals_reference_decision(
    consents: list[ConsentView],
    recipient: tuple[uuid.UUID, OrgType],
    purpose: Purpose,
    categories: set[Category],
    at: int,
) -> None:
    moment = h(at)
    decision = decide_disclosure(consents, recipient[0], recipient[1], purpose, categories, moment)
    covering = {c: reference_covering(consents, recipient, purpose, c, moment) for c in categories}

    assert decision.provisions_used == {
        c: tuple(sorted(p.id for _, p in found)) for c, found in covering.items() if found
    }
    assert set(decision.denied) == {c for c, found in covering.items() if not found}
    for category in ABOVE_CEILING.get(recipient[1], set()) & categories:
        assert "never receives" in decision.denied[category]
    assert decision.permit is (bool(categories) and all(covering.values()))
    if not decision.permit:
        assert decision.valid_until is None
        return
    # Each category holds until its last covering provision ends; the disclosure until the
    # first category stops.
    category_ends = []
    for found in covering.values():
        ends = [reference_end(owner, p, moment) for owner, p in found]
        category_ends.append(None if None in ends else max(e for e in ends if e is not None))
    bounded = [e for e in category_ends if e is not None]
    assert decision.valid_until == (min(bounded) if bounded else None)


@PROPERTY_SETTINGS
@given(consent_view=consent_views(), at=GRID)
def test_expiry_and_reported_state_equal_reference(consent_view: ConsentView, at: int) -> None:
    moment = h(at)
    derived = reference_replay(consent_view.events, moment)
    ends = [reference_end(consent_view, p, moment) for p in consent_view.provisions]
    ended = derived.state is ConsentState.ACTIVE and all(
        e is not None and e <= moment for e in ends
    )
    assert is_expired_at(consent_view, moment) is ended
    assert current_state(consent_view, moment) is (ConsentState.EXPIRED if ended else derived.state)


@PROPERTY_SETTINGS
@given(consent_view=consent_views(), later=event_sequences(), at=GRID)
def test_events_after_at_do_not_change_the_decision(
    consent_view: ConsentView, later: tuple[EventView, ...], at: int
) -> None:
    moment = h(at)
    shifted = tuple(
        EventView(e.event_type, e.occurred_at + timedelta(hours=at + 1), e.valid_until)
        for e in later
    )
    extended = ConsentView(consent_view.id, consent_view.provisions, consent_view.events + shifted)
    for recipient in RECIPIENTS:
        args = (recipient[0], recipient[1], P.LEGAL_ASSISTANCE, {C.IDENTITY, C.HEALTH}, moment)
        assert decide_disclosure([extended], *args) == decide_disclosure([consent_view], *args)
    assert derive_state(extended.events, moment) == derive_state(consent_view.events, moment)
