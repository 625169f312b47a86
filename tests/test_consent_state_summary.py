"""The consent event summaries (migrations 0010, 0011) are kept by the database: after any mix
of raw inserts, updates and deletes of consent events and provisions (and changes of a consent
record's organisation), each consent's row is what its events, provisions and record say; a
consent without events has none; the migrations' backfills build the same rows.
"""

from __future__ import annotations

import importlib.util
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from consent_history_support import consent_views, insert_rows, random_consents, reported_states
from referral_support import API, create_case, provision, record_consent
from sqlalchemy import Engine, delete, inspect, select, text, update

from referral_api.access.roles import OrgType, Role
from referral_api.consent.decision import TERMINAL_STATES, current_state
from referral_api.consent.models import (
    ConsentEvent,
    ConsentEventSummary,
    ConsentProvision,
    ConsentRecord,
)
from referral_api.consent.vocabulary import EventType
from referral_api.dpo.derived_state import consent_states
from referral_api.extensions import db
from referral_api.migrate import MIGRATIONS_DIR, alembic_config, upgrade

EVENTS = ConsentEvent.__table__
PROVISIONS = ConsentProvision.__table__
RECORDS = ConsentRecord.__table__
SUMMARIES = ConsentEventSummary.__table__
AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _expected(
    events: list[dict[str, Any]],
    provisions: list[dict[str, Any]],
    orgs: dict[uuid.UUID, uuid.UUID],
) -> dict[uuid.UUID, dict[str, Any]]:
    """Each consent's summary, from scratch in Python (`orgs`: each record's organisation)."""
    by_consent: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for event in events:
        by_consent.setdefault(event["consent_id"], []).append(event)
    summaries = {}
    for consent_id, own in by_consent.items():

        def times(kind: EventType, own: list[dict[str, Any]] = own) -> list[datetime]:
            return [e["occurred_at"] for e in own if e["event_type"] == kind]

        renewals = sorted(
            (e for e in own if e["event_type"] == EventType.RENEWED),
            key=lambda e: (e["occurred_at"], e["id"]),
        )
        summaries[consent_id] = {
            "given_at": min(times(EventType.GIVEN), default=None),
            "withdrawn_at": min(times(EventType.WITHDRAWN), default=None),
            "revoked_at": min(times(EventType.REVOKED), default=None),
            "erroneous_at": min(times(EventType.ENTERED_IN_ERROR), default=None),
            "expired_at": max(times(EventType.EXPIRED), default=None),
            "renewed_at": renewals[-1]["occurred_at"] if renewals else None,
            "renewed_until": renewals[-1]["valid_until"] if renewals else None,
            "last_event_at": max(e["occurred_at"] for e in own),
            "provisions_until": _latest_end(
                [p["valid_until"] for p in provisions if p["consent_id"] == consent_id]
            ),
            "org_id": orgs[consent_id],
            "has_repeats": _has_repeats([p for p in provisions if p["consent_id"] == consent_id]),
        }
        summaries[consent_id]["state"] = _state(summaries[consent_id])
    return summaries


def _state(row: dict[str, Any]) -> str | None:
    """The state by the summary's rules (a closing event wins, the earliest of them, ties
    withdrawn > revoked > entered in error; then the later of expiry and renewal after
    `given`, a renewal winning a tie) — the same rules the reports apply."""
    closing = [
        (row[column], rank, state)
        for rank, (column, state) in enumerate(
            (
                ("withdrawn_at", "withdrawn"),
                ("revoked_at", "revoked"),
                ("erroneous_at", "entered_in_error"),
            )
        )
        if row[column] is not None
    ]
    if closing:
        return min(closing)[2]
    given, expired, renewed = row["given_at"], row["expired_at"], row["renewed_at"]
    if given is None:
        return None
    renewal_counts = renewed is not None and renewed >= given
    if expired is not None and expired >= given and not (renewal_counts and renewed >= expired):
        return "expired"
    return "active"


_RECIPIENT = ("purpose", "recipient_org_id", "recipient_org_type")


def _has_repeats(own: list[dict[str, Any]]) -> bool:
    """Some provision repeats one at a lower position in purpose and recipient (None equal to
    None, as the report counts a consent once per row)."""
    return any(
        earlier["position"] < later["position"] and all(earlier[k] == later[k] for k in _RECIPIENT)
        for later in own
        for earlier in own
    )


def _latest_end(ends: list[datetime | None]) -> datetime | None:
    if not ends or any(end is None for end in ends):
        return None
    return max(end for end in ends if end is not None)


def _stored(engine: Engine) -> dict[uuid.UUID, dict[str, Any]]:
    with engine.connect() as connection:
        return {
            row["consent_id"]: {k: v for k, v in row.items() if k != "consent_id"}
            for row in connection.execute(select(SUMMARIES)).mappings()
        }


def _id(rng: random.Random) -> uuid.UUID:
    """Ids from the walk's generator, and rows read back in id order: the walk picks rows
    by position, so with random ids (or the database's row order, which updates change)
    it took another path on each run and sometimes missed what it must reach (it once ended
    without a repeated provision)."""
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _stored_events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(EVENTS).order_by(EVENTS.c.id)).mappings()
        return [dict(row) for row in rows]


def _stored_provisions(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(PROVISIONS).order_by(PROVISIONS.c.id)).mappings()
        return [dict(row) for row in rows]


def _stored_orgs(engine: Engine) -> dict[uuid.UUID, uuid.UUID]:
    with engine.connect() as connection:
        return dict(connection.execute(select(RECORDS.c.id, RECORDS.c.org_id)).all())


def _recomputed(engine: Engine) -> dict[uuid.UUID, dict[str, Any]]:
    return _expected(_stored_events(engine), _stored_provisions(engine), _stored_orgs(engine))


def _provision(
    rng: random.Random, case_id: uuid.UUID, consent_id: uuid.UUID, recipient: uuid.UUID
) -> dict[str, Any]:
    """Few positions, purposes and recipients, so that some provisions repeat others."""
    return {
        "id": _id(rng),
        "consent_id": consent_id,
        "case_id": case_id,
        **_recipient_change(rng, recipient),
        "categories": "identity",
        "valid_from": AT - timedelta(days=30),
        "valid_until": rng.choice([None, AT + timedelta(days=rng.randint(-5, 5))]),
    }


def _recipient_change(rng: random.Random, recipient: uuid.UUID) -> dict[str, Any]:
    return {
        "position": rng.randint(0, 2),
        "purpose": rng.choice(["legal_assistance", "statistics"]),
        "recipient_org_id": rng.choice([None, recipient]),
        "recipient_org_type": rng.choice([None, "legal_aid"]),
    }


def _consents(app: Any, client: Any, factory: Any, count: int) -> tuple[uuid.UUID, list]:
    org = factory.org(OrgType.NGO)
    case_id = uuid.UUID(create_case(client, factory.headers(factory.user(Role.CASEWORKER, org))))
    records = [
        {
            "id": uuid.uuid4(),
            "case_id": case_id,
            "org_id": org,
            "grantor": "person",
            "is_minor": False,
            "captured_by_org_id": org,
            "collection_method": "written",
            "language": "uk",
            "notice_version": "2026-01",
            "jurisdiction": "UA",
            "article6": "a",
            "created_at": AT - timedelta(days=60),
        }
        for _ in range(count)
    ]
    with db.engine_for(app).begin() as connection:
        connection.execute(ConsentRecord.__table__.insert(), records)
    return case_id, [record["id"] for record in records]


def _event(rng: random.Random, case_id: uuid.UUID, consent_id: uuid.UUID) -> dict[str, Any]:
    kind = rng.choice(list(EventType))
    # Few distinct minutes, so that two renewals of a consent sometimes share an instant
    # (the greater id is the latest, as in the replay).
    return {
        "id": _id(rng),
        "consent_id": consent_id,
        "case_id": case_id,
        "event_type": kind,
        "occurred_at": AT + timedelta(minutes=rng.randint(-5, 5)),
        "valid_until": rng.choice([None, AT + timedelta(days=rng.randint(-5, 5))])
        if kind is EventType.RENEWED
        else None,
    }


def test_the_summary_follows_raw_inserts_updates_and_deletes(
    app: Any, client: Any, factory: Any
) -> None:
    rng = random.Random(10)  # noqa: S311 - test data
    case_id, consents = _consents(app, client, factory, 12)
    orgs = [factory.org(OrgType.NGO), factory.org(OrgType.LEGAL_AID)]
    engine = db.engine_for(app)
    emptied = False
    provisions_changed = False
    repeats_seen: set[bool] = set()
    orgs_seen: set[uuid.UUID] = set()
    for step in range(200):
        events, provisions = _stored_events(engine), _stored_provisions(engine)
        roll = rng.random()
        with engine.begin() as connection:
            if step % 11 == 10:
                # A consent record handed to another organisation.
                connection.execute(
                    update(RECORDS)
                    .where(RECORDS.c.id == rng.choice(consents))
                    .values(org_id=rng.choice(orgs))
                )
            elif step % 5 == 4 or step % 5 == 2:
                # A provision added, moved to another consent, re-dated, re-positioned,
                # re-purposed, re-addressed, or removed.
                if not provisions or roll < 0.4:
                    row = _provision(rng, case_id, rng.choice(consents), orgs[1])
                    connection.execute(PROVISIONS.insert(), [row])
                elif roll < 0.8:
                    target = rng.choice(provisions)
                    change = rng.choice(
                        ["valid_until", "consent_id", *_recipient_change(rng, orgs[1])]
                    )
                    value = {
                        "valid_until": rng.choice([None, AT + timedelta(days=rng.randint(-5, 5))]),
                        "consent_id": rng.choice(consents),
                        **_recipient_change(rng, orgs[1]),
                    }[change]
                    connection.execute(
                        update(PROVISIONS)
                        .where(PROVISIONS.c.id == target["id"])
                        .values({change: value})
                    )
                else:
                    target = rng.choice(provisions)
                    connection.execute(delete(PROVISIONS).where(PROVISIONS.c.id == target["id"]))
                provisions_changed = True
            elif not events or roll < 0.45:
                connection.execute(
                    EVENTS.insert(),
                    [_event(rng, case_id, rng.choice(consents)) for _ in range(rng.randint(1, 3))],
                )
            elif roll < 0.8:
                target = rng.choice(events)
                change = rng.choice(["event_type", "occurred_at", "valid_until", "consent_id"])
                value = {
                    "event_type": rng.choice(list(EventType)),
                    "occurred_at": AT + timedelta(minutes=rng.randint(-5, 5)),
                    "valid_until": AT + timedelta(days=rng.randint(-5, 5)),
                    "consent_id": rng.choice(consents),
                }[change]
                connection.execute(
                    update(EVENTS).where(EVENTS.c.id == target["id"]).values({change: value})
                )
            else:
                # Sometimes every event of a consent at once: its row must go.
                target = rng.choice(events)
                where = (
                    EVENTS.c.consent_id == target["consent_id"]
                    if step % 7 == 0
                    else EVENTS.c.id == target["id"]
                )
                connection.execute(delete(EVENTS).where(where))
        stored = _stored(engine)
        assert stored == _recomputed(engine), step
        repeats_seen |= {row["has_repeats"] for row in stored.values()}
        orgs_seen |= {row["org_id"] for row in stored.values()}
        if step % 7 == 0 and step % 5 not in (2, 4) and step % 11 != 10 and roll >= 0.8 and events:
            assert target["consent_id"] not in stored
            emptied = True
    # The walk reached what it is meant to test.
    assert emptied and provisions_changed
    assert any(row["provisions_until"] for row in stored.values())
    assert any(row["renewed_until"] for row in stored.values())
    assert any(row["withdrawn_at"] and row["given_at"] for row in stored.values())
    assert repeats_seen == {True, False}
    assert orgs_seen & set(orgs), "no record changed organisation while it had a summary"


def test_of_two_renewals_at_one_instant_the_greater_id_is_the_latest(
    app: Any, client: Any, factory: Any
) -> None:
    """As the replay orders them (occurred_at, then id): its end is the renewed end."""
    case_id, consents = _consents(app, client, factory, 1)
    engine = db.engine_for(app)

    def renewal(event_id: uuid.UUID, days: int) -> dict[str, Any]:
        return {
            "id": event_id,
            "consent_id": consents[0],
            "case_id": case_id,
            "event_type": EventType.RENEWED,
            "occurred_at": AT,
            "valid_until": AT + timedelta(days=days),
        }

    low, high = uuid.UUID(int=5 << 64), uuid.UUID(int=9 << 64)
    # The greater id written first, so that the order of writing cannot be the answer.
    for event in (renewal(high, 30), renewal(low, 7)):
        with engine.begin() as connection:
            connection.execute(EVENTS.insert(), [event])
    assert _stored(engine)[consents[0]]["renewed_until"] == AT + timedelta(days=30)
    with engine.begin() as connection:
        connection.execute(delete(EVENTS).where(EVENTS.c.id == high))
    assert _stored(engine)[consents[0]]["renewed_until"] == AT + timedelta(days=7)


def test_a_column_the_summary_does_not_read_changes_nothing(
    app: Any, client: Any, factory: Any
) -> None:
    rng = random.Random(3)  # noqa: S311 - test data
    case_id, consents = _consents(app, client, factory, 1)
    engine = db.engine_for(app)
    event = _event(rng, case_id, consents[0])
    with engine.begin() as connection:
        connection.execute(EVENTS.insert(), [event])
    before = _stored(engine)
    with engine.begin() as connection:
        connection.execute(
            update(EVENTS).where(EVENTS.c.id == event["id"]).values(effects='[{"x": 1}]')
        )
    assert _stored(engine) == before == _expected([event], [], _stored_orgs(engine))


def test_the_consent_service_fills_the_summary(app: Any, client: Any, factory: Any) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    case_id = create_case(client, headers)
    created = record_consent(
        client, headers, case_id, provision("statistics", ["needs"], org_type="ngo")
    )
    consent_id = uuid.UUID(created["id"])
    engine = db.engine_for(app)
    given = _stored(engine)[consent_id]
    assert given["given_at"] is not None and given["withdrawn_at"] is None
    assert given["last_event_at"] == given["given_at"]
    withdrawn = client.post(f"{API}/consents/{consent_id}/withdraw", json={}, headers=headers)
    assert withdrawn.status_code == 200, withdrawn.get_json()
    after = _stored(engine)[consent_id]
    assert after["given_at"] == given["given_at"]
    assert after["withdrawn_at"] is not None and after["withdrawn_at"] >= given["given_at"]
    assert after["last_event_at"] == after["withdrawn_at"]
    assert after["provisions_until"] is None  # its provision is open-ended
    assert _stored(engine) == _recomputed(engine)


def test_asked_live_a_report_counts_a_closing_event_stamped_after_now(
    app: Any, client: Any, factory: Any
) -> None:
    """The reports ask live: a closing event stamped after `now` (by a host whose clock runs
    ahead) closes the consent in the SQL state as in `current_state(..., live=True)`, on
    random histories around `now` (the strict replay is held to in test_dpo_reports)."""
    org = factory.org(OrgType.NGO)
    case_id = uuid.UUID(create_case(client, factory.headers(factory.user(Role.CASEWORKER, org))))
    rng = random.Random(7)  # noqa: S311 - test data
    records, provisions, events = random_consents(rng, AT, case_id, org, 300)
    insert_rows(
        app, (ConsentRecord, records), (ConsentProvision, provisions), (ConsentEvent, events)
    )
    states = consent_states(AT, live=True)
    with db.session_factory_for(app)() as s:
        reported = reported_states(s, states, AT)
        s.rollback()
    closed_ahead = 0
    for view in consent_views(records, provisions, events):
        expected = current_state(view, AT, live=True)
        assert reported.get(view.id, {None}) == {expected.value if expected else None}, view
        strictly = current_state(view, AT)
        closed_ahead += expected in TERMINAL_STATES and strictly not in TERMINAL_STATES
    assert closed_ahead > 10, closed_ahead  # the case in question occurs


def _empty_category_columns(engine: Any) -> None:
    """Migration 0012's downgrade refuses to drop category columns holding a case's data;
    these tests need the consents, not the case's personal data."""
    from referral_api.cases.models import Case

    with engine.begin() as connection:
        connection.execute(update(Case.__table__).values(dict.fromkeys(Case.__encrypted_columns__)))


def test_the_migration_backfills_the_summary_and_removes_it_on_downgrade(
    app: Any, client: Any, factory: Any
) -> None:
    rng = random.Random(8)  # noqa: S311 - test data
    case_id, consents = _consents(app, client, factory, 6)
    engine = db.engine_for(app)
    with engine.begin() as connection:
        connection.execute(
            EVENTS.insert(), [_event(rng, case_id, rng.choice(consents)) for _ in range(20)]
        )
    url = app.config["DATABASE_URL"]
    _empty_category_columns(engine)
    engine.dispose()
    command.downgrade(alembic_config(url), "0009")
    try:
        assert "consent_event_summaries" not in inspect(engine).get_table_names()
        # Written while no trigger keeps a summary: the backfill must count it.
        with engine.begin() as connection:
            connection.execute(EVENTS.insert(), [_event(rng, case_id, consents[0])])
    finally:
        engine.dispose()
        upgrade(url)
    assert len(_stored_events(engine)) == 21
    assert _stored(engine) == _recomputed(engine)
    # The triggers are back.
    with engine.begin() as connection:
        connection.execute(delete(EVENTS).where(EVENTS.c.consent_id == consents[0]))
    assert consents[0] not in _stored(engine)
    assert _stored(engine) == _recomputed(engine)


def test_migration_0011_fills_the_organisation_and_repeats_of_the_rows_0010_kept(
    app: Any, client: Any, factory: Any
) -> None:
    """Written while only 0010's triggers run (they keep neither column): the UPDATE of 0011
    fills both for every row, then its triggers keep them."""
    rng = random.Random(12)  # noqa: S311 - test data
    case_id, consents = _consents(app, client, factory, 8)
    other, recipient = factory.org(OrgType.NGO), factory.org(OrgType.LEGAL_AID)
    engine = db.engine_for(app)
    url = app.config["DATABASE_URL"]
    _empty_category_columns(engine)
    engine.dispose()
    command.downgrade(alembic_config(url), "0010")
    try:
        with engine.begin() as connection:
            connection.execute(
                EVENTS.insert(), [_event(rng, case_id, consent) for consent in consents]
            )
            provisions = [
                _provision(rng, case_id, rng.choice(consents), recipient) for _ in range(24)
            ]
            # One sure repeat and one sure non-repeat (same recipient, other purpose).
            first, second, third = (
                _provision(rng, case_id, consents[0], recipient) for _ in range(3)
            )
            first.update(position=0, purpose="statistics")
            second.update({**{k: first[k] for k in _RECIPIENT}, "position": 1})
            third.update(consent_id=consents[1], position=0, purpose="statistics")
            connection.execute(PROVISIONS.insert(), [*provisions, first, second, third])
            connection.execute(
                update(RECORDS).where(RECORDS.c.id == consents[2]).values(org_id=other)
            )
    finally:
        engine.dispose()
        upgrade(url)
    stored = _stored(engine)
    assert stored == _recomputed(engine)
    assert stored[consents[0]]["has_repeats"] is True
    assert stored[consents[2]]["org_id"] == other
    assert {row["has_repeats"] for row in stored.values()} == {True, False}
    # Its triggers: moving the repeat to another position, purpose or recipient clears it.
    with engine.begin() as connection:
        connection.execute(
            update(PROVISIONS)
            .where(PROVISIONS.c.consent_id == consents[0])
            .values(purpose="legal_assistance")
        )
        connection.execute(
            update(PROVISIONS).where(PROVISIONS.c.id == second["id"]).values(purpose="statistics")
        )
    assert _stored(engine) == _recomputed(engine)


def test_the_latest_backfill_builds_the_rows_the_triggers_keep(
    app: Any, client: Any, factory: Any
) -> None:
    """0011's BACKFILL (bench/dpo_reports.py seeds with it; docs/dpo-reports.md rebuilds the
    table with it after maintenance) gives every row exactly as kept."""
    rng = random.Random(14)  # noqa: S311 - test data
    case_id, consents = _consents(app, client, factory, 10)
    recipient = factory.org(OrgType.LEGAL_AID)
    engine = db.engine_for(app)
    with engine.begin() as connection:
        connection.execute(
            EVENTS.insert(), [_event(rng, case_id, rng.choice(consents)) for _ in range(25)]
        )
        connection.execute(
            PROVISIONS.insert(),
            [_provision(rng, case_id, rng.choice(consents), recipient) for _ in range(30)],
        )
    kept = _stored(engine)
    assert {row["has_repeats"] for row in kept.values()} == {True, False}
    path = MIGRATIONS_DIR / "versions" / "0011_consent_summary_org_and_repeats.py"
    spec = importlib.util.spec_from_file_location("_summary_migration_0011", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with engine.begin() as connection:
        connection.execute(delete(SUMMARIES))
        connection.execute(text(migration.BACKFILL))
    assert _stored(engine) == kept == _recomputed(engine)
