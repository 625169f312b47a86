"""Random consent histories written straight into the tables, and the replay's view of
them: the DPO reports' SQL consent state (test_dpo_reports) and the event summaries kept by
migrations 0010-0011 (test_consent_state_summary) are both checked against them."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from dpo_support import NOTICE
from sqlalchemy import select

from referral_api.access.categories import Category
from referral_api.access.roles import OrgType
from referral_api.consent.decision import ConsentView, EventView, ProvisionView
from referral_api.consent.models import ConsentProvision
from referral_api.consent.vocabulary import EventType, Purpose
from referral_api.dpo.derived_state import provision_state
from referral_api.extensions import db

KINDS = [
    EventType.GIVEN,
    EventType.GIVEN,
    EventType.RENEWED,
    EventType.RENEWED,
    EventType.EXPIRED,
    EventType.WITHDRAWN,
    EventType.REVOKED,
    EventType.ENTERED_IN_ERROR,
]


def random_consents(
    rng: random.Random, at: datetime, case_id: uuid.UUID, org_id: uuid.UUID, count: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Consent histories around `at`, every event at its own minute (no ties)."""
    records, provisions, events = [], [], []
    for _ in range(count):
        consent_id = uuid.uuid4()
        records.append(
            {
                "id": consent_id,
                "case_id": case_id,
                "org_id": org_id,
                "grantor": "person",
                "is_minor": False,
                "captured_by_org_id": org_id,
                "collection_method": "written",
                "language": "uk",
                "notice_version": NOTICE,
                "jurisdiction": "UA",
                "article6": "a",
                "created_at": at - timedelta(days=60),
            }
        )
        for position in range(rng.randint(1, 3)):
            until = rng.choice([None, at + timedelta(days=rng.randint(-30, 30))])
            provisions.append(
                {
                    "id": uuid.uuid4(),
                    "consent_id": consent_id,
                    "case_id": case_id,
                    "position": position,
                    "purpose": "legal_assistance",
                    "recipient_org_id": None,
                    "recipient_org_type": "legal_aid",
                    "categories": "identity",
                    "valid_from": at - timedelta(days=rng.randint(31, 60)),
                    "valid_until": until,
                }
            )
        minutes = rng.sample(range(-50 * 24 * 60, 10 * 24 * 60), rng.randint(0, 6))
        for minute in minutes:
            kind = rng.choice(KINDS)
            events.append(
                {
                    "id": uuid.uuid4(),
                    "consent_id": consent_id,
                    "case_id": case_id,
                    "event_type": kind,
                    "occurred_at": at + timedelta(minutes=minute),
                    "valid_until": rng.choice([None, at + timedelta(days=rng.randint(-20, 20))])
                    if kind is EventType.RENEWED
                    else None,
                }
            )
    return records, provisions, events


def consent_views(
    records: list[dict], provisions: list[dict], events: list[dict]
) -> list[ConsentView]:
    return [
        ConsentView(
            id=record["id"],
            provisions=tuple(
                ProvisionView(
                    id=p["id"],
                    purpose=Purpose(p["purpose"]),
                    recipient_org_id=p.get("recipient_org_id"),
                    recipient_org_type=OrgType(p["recipient_org_type"])
                    if p.get("recipient_org_type")
                    else None,
                    categories=frozenset(Category(c) for c in p["categories"].split(",")),
                    valid_from=p["valid_from"],
                    valid_until=p["valid_until"],
                )
                for p in provisions
                if p["consent_id"] == record["id"]
            ),
            events=tuple(
                EventView(e["event_type"], e["occurred_at"], e["valid_until"])
                for e in sorted(events, key=lambda e: e["occurred_at"])
                if e["consent_id"] == record["id"]
            ),
        )
        for record in records
    ]


def insert_rows(app: Any, *batches: tuple[Any, list[dict]]) -> None:
    with db.engine_for(app).begin() as connection:
        for table, rows in batches:
            if rows:
                connection.execute(table.__table__.insert(), rows)


def reported_states(session: Any, states: Any, at: datetime) -> dict[uuid.UUID, set[str | None]]:
    """{consent id: the states the SQL reports on its provision rows} for `states`, a
    `consent_states` subquery (one state per consent expected: a set, to see otherwise)."""
    provisions = ConsentProvision.__table__
    reported: dict[uuid.UUID, set[str | None]] = {}
    for consent_id, state in session.execute(
        select(provisions.c.consent_id, provision_state(states, at)).join(
            states, states.c.consent_id == provisions.c.consent_id
        )
    ):
        reported.setdefault(consent_id, set()).add(state)
    return reported
