"""DPO reports (issue 6, DESIGN.md §11): known answers over a seeded world, JSON and CSV
agreeing, processing without a basis found after tampering, override review, scope per
organisation, no personal field anywhere, and the SQL consent state held to the replay.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem
from consent_history_support import consent_views, insert_rows, random_consents, reported_states
from dpo_support import (
    NOTICE,
    DpoWorld,
    as_csv_cells,
    assert_no_personal_data,
    iso,
    next_cursor,
)
from referral_support import API, create_case
from sqlalchemy import select

from referral_api.access.actor import Actor
from referral_api.access.categories import ORG_TYPE_CEILINGS, Category
from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.consent.decision import (
    ConsentView,
    current_state,
    decide_disclosure,
    derive_state,
)
from referral_api.consent.models import (
    ConsentEvent,
    ConsentEventSummary,
    ConsentProvision,
    ConsentRecord,
)
from referral_api.consent.service import SPECIAL_CATEGORIES
from referral_api.consent.vocabulary import (
    Article6Basis,
    Article9Condition,
    ConsentState,
    EventType,
    Purpose,
)
from referral_api.dpo import keyset, service
from referral_api.dpo.derived_state import consent_states
from referral_api.dpo.schemas import ROW_SCHEMAS
from referral_api.extensions import db
from referral_api.referrals.models import Referral

LISTS = {
    "consents-expiring": {"within_days": 30},
    "processing-without-basis": {},
    "overrides": {},
    "disclosures": {},
    "erasures": {},
    "sign-in-failures": {},
    "quality": {},
    "retention-due": {},
}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "KNOWN_NOTICE_VERSIONS": [NOTICE, "2025-06"]}


@pytest.fixture
def world(app: Any, client: Any, factory: Any) -> DpoWorld:
    return DpoWorld(app, client, factory)


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


def _tamper_withdraw(world: DpoWorld, consent: str) -> None:
    """A `withdrawn` event written straight into the table: nothing was cancelled."""
    world.sql(
        "INSERT INTO consent_events (id, consent_id, case_id, event_type, occurred_at) "
        "SELECT :id, id, case_id, 'withdrawn', :at FROM consent_records WHERE id = :consent",
        id=uuid.uuid4(),
        consent=uuid.UUID(world.consent[consent]),
        at=world.now - timedelta(minutes=1),
    )


def _add_tombstones(world: DpoWorld) -> bool:
    table = service.erasure_register_table()
    if table is None:
        return False
    with db.engine_for(world.app).begin() as connection:
        for case, org in (("case3", "A"), ("caseB", "B")):
            connection.execute(
                table.insert().values(
                    id=uuid.uuid4(),
                    case_id=uuid.UUID(world.case[case]),
                    org_id=world.org[org],
                    basis="consent_withdrawn",
                    requested_by=world.user["a"],
                    approved_by=world.user["a_dpo"],
                    erased_at=world.now,
                    data_keys_destroyed=1,
                    ciphertexts_cleared=30,
                    index_entries_deleted=6,
                    referrals_cancelled=0,
                    key_digest="0" * 64,
                )
            )
    return True


# ---- shape --------------------------------------------------------------------------------


def test_every_row_schema_declares_exactly_the_report_columns() -> None:
    assert set(ROW_SCHEMAS) == set(service.REPORTS)
    for name, columns in service.REPORTS.items():
        schema = ROW_SCHEMAS[name]()
        keys = [field.data_key or key for key, field in schema.fields.items()]
        assert keys == list(columns), name


# ---- consent-summary ----------------------------------------------------------------------


def test_consent_summary_counts_by_derived_state(world: DpoWorld) -> None:
    rows = world.report("consent-summary", "a_dpo").get_json()
    org_a, legal, shelter = str(world.org["A"]), str(world.org["L"]), str(world.org["S"])
    got = {
        (r["state"], r["purpose"], r["recipient_org_id"] or r["recipient_org_type"]): (
            r["consents"],
            r["provisions"],
            r["provisions_in_force"],
        )
        for r in rows
    }
    assert {r["org_id"] for r in rows} == {org_a}
    assert got == {
        # C1 (one provision) and C9 (two provisions, each one category).
        ("active", "legal_assistance", legal): (2, 3, 3),
        ("active", "law_enforcement_report", "police"): (1, 1, 1),
        # Renewed to end in five days: still in force.
        ("active", "shelter", shelter): (1, 1, 1),
        ("active", "case_management", "social_services"): (1, 1, 1),
        ("withdrawn", "psychosocial_support", legal): (1, 1, 0),
        ("revoked", "legal_assistance", "legal_aid"): (1, 1, 0),
        # Its only provision ended yesterday: expired with no `expired` event.
        ("expired", "health", "health"): (1, 1, 0),
        ("entered_in_error", "statistics", "ngo"): (1, 1, 0),
    }
    # Filters: purpose, recipient (an organisation, or a type naming it or its type).
    assert [
        r["state"] for r in world.report("consent-summary", "a_dpo", purpose="health").get_json()
    ] == ["expired"]
    by_org = world.report("consent-summary", "a_dpo", recipient_org_id=legal).get_json()
    assert sorted((r["state"], r["provisions"]) for r in by_org) == [
        ("active", 3),
        ("withdrawn", 1),
    ]
    by_type = world.report("consent-summary", "a_dpo", recipient_org_type="legal_aid").get_json()
    assert sum(r["provisions"] for r in by_type) == 5  # 3 + 1 by id, 1 by type
    # B's DPO sees B only; the platform's sees both.
    b_rows = world.report("consent-summary", "b_dpo").get_json()
    assert [(r["org_id"], r["state"], r["consents"]) for r in b_rows] == [
        (str(world.org["B"]), "active", 1)
    ]
    everything = world.report("consent-summary", "plat_dpo").get_json()
    assert sum(r["consents"] for r in everything) == 10
    only_b = world.report("consent-summary", "plat_dpo", org_id=str(world.org["B"])).get_json()
    assert only_b == b_rows


def test_consent_summary_date_range_is_when_the_consent_was_recorded(world: DpoWorld) -> None:
    later = iso(world.now + timedelta(days=1))
    assert world.report("consent-summary", "a_dpo", **{"from": later}).get_json() == []
    earlier = iso(world.now - timedelta(days=1))
    rows = world.report("consent-summary", "a_dpo", **{"from": earlier, "to": later}).get_json()
    assert sum(r["provisions"] for r in rows) == 10
    world.report("consent-summary", "a_dpo", 422, **{"from": later, "to": earlier})


_RECORD_COPY = (
    "case_id, org_id, grantor, is_minor, captured_by_org_id, collection_method, language, "
    "notice_version, jurisdiction, article6, created_at"
)
_PROVISION_COPY = (
    "case_id, purpose, recipient_org_id, recipient_org_type, categories, valid_from, valid_until"
)


def _platform_summary(world: DpoWorld) -> dict[tuple, tuple[int, int, int]]:
    """The platform DPO's consent-summary, keyed (organisation, state, purpose, recipient);
    each organisation's part is also its own DPO's report (which joins the consent records
    and looks for repeats among every provision, whatever the summaries say)."""
    rows = world.report("consent-summary", "plat_dpo").get_json()
    for org, dpo in (("A", "a_dpo"), ("B", "b_dpo")):
        own = [r for r in rows if r["org_id"] == str(world.org[org])]
        assert own == world.report("consent-summary", dpo).get_json(), org
    assert {r["org_id"] for r in rows} <= {str(world.org["A"]), str(world.org["B"])}
    return {
        (
            "A" if r["org_id"] == str(world.org["A"]) else "B",
            r["state"],
            r["purpose"],
            r["recipient_org_id"] or r["recipient_org_type"],
        ): (r["consents"], r["provisions"], r["provisions_in_force"])
        for r in rows
    }


def _repeat(world: DpoWorld, consent: str, position: int, **changes: Any) -> None:
    """A copy of the consent's first provision at `position`, written straight into the
    table (with `changes`: `recipient_org_id`/`recipient_org_type` set to null or a type)."""
    columns = _PROVISION_COPY
    for column, value in changes.items():
        columns = columns.replace(column, "NULL" if value is None else f"'{value}'")
    world.sql(
        f"INSERT INTO consent_provisions (id, consent_id, position, {_PROVISION_COPY}) "
        f"SELECT :id, consent_id, :position, {columns} FROM consent_provisions "
        "WHERE consent_id = :consent AND position = 0",
        id=uuid.uuid4(),
        consent=uuid.UUID(world.consent[consent]),
        position=position,
    )


def test_platform_consent_summary_counts_a_consent_once_with_repeated_provisions(
    world: DpoWorld,
) -> None:
    legal = str(world.org["L"])
    before = _platform_summary(world)
    # C1 and C9 (whose second provision repeats its first): 2 consents, 3 provisions.
    assert before[("A", "active", "legal_assistance", legal)] == (2, 3, 3)
    assert before[("B", "active", "legal_assistance", legal)] == (1, 1, 1)
    _repeat(world, "C1", 5)
    _repeat(world, "CB", 2)
    _repeat(world, "CB", 3)
    # Not a repeat: the same purpose for legal aid by type, not by organisation.
    _repeat(world, "C1", 7, recipient_org_id=None, recipient_org_type="legal_aid")
    after = _platform_summary(world)
    assert after[("A", "active", "legal_assistance", legal)] == (2, 4, 4)
    assert after[("B", "active", "legal_assistance", legal)] == (1, 3, 3)
    assert after[("A", "active", "legal_assistance", "legal_aid")] == (1, 1, 1)
    assert {k: v for k, v in after.items() if k[3] not in (legal, "legal_aid")} == {
        k: v for k, v in before.items() if k[3] not in (legal, "legal_aid")
    }


def test_platform_consent_summary_counts_a_consent_without_events(world: DpoWorld) -> None:
    """Only a raw write makes one: it has no summary row, and is counted all the same (not
    given yet), under its record's organisation, its repeat once."""
    before = _platform_summary(world)
    consent = uuid.uuid4()
    world.sql(
        f"INSERT INTO consent_records (id, {_RECORD_COPY}) "
        f"SELECT :id, {_RECORD_COPY} FROM consent_records WHERE id = :c1",
        id=consent,
        c1=uuid.UUID(world.consent["C1"]),
    )
    world.consent["C0"] = str(consent)
    for position in (0, 1):  # C1's two provisions
        world.sql(
            f"INSERT INTO consent_provisions (id, consent_id, position, {_PROVISION_COPY}) "
            f"SELECT :id, :consent, position, {_PROVISION_COPY} FROM consent_provisions "
            "WHERE consent_id = :c1 AND position = :position",
            id=uuid.uuid4(),
            consent=consent,
            c1=uuid.UUID(world.consent["C1"]),
            position=position,
        )
    _repeat(world, "C0", 4)
    after = _platform_summary(world)
    legal = str(world.org["L"])
    assert after[("A", None, "legal_assistance", legal)] == (1, 2, 0)
    assert after[("A", None, "law_enforcement_report", "police")] == (1, 1, 0)
    assert {k: v for k, v in after.items() if k[1] is not None} == before
    assert sum(r["consents"] for r in world.report("consent-summary", "plat_dpo").get_json()) == 12


def test_platform_consent_summary_follows_provisions_rewritten_into_and_out_of_a_repeat(
    world: DpoWorld,
) -> None:
    legal = str(world.org["L"])
    c1, c9 = uuid.UUID(world.consent["C1"]), uuid.UUID(world.consent["C9"])
    # C1's police provision (in force, ends in ten days) rewritten to repeat its first.
    world.sql(
        "UPDATE consent_provisions SET purpose = 'legal_assistance', recipient_org_id = :legal, "
        "recipient_org_type = NULL WHERE consent_id = :c1 AND position = 1",
        legal=world.org["L"],
        c1=c1,
    )
    rows = _platform_summary(world)
    assert rows[("A", "active", "legal_assistance", legal)] == (2, 4, 4)
    assert ("A", "active", "law_enforcement_report", "police") not in rows
    # … and out of it again, by its recipient: now a row of its own.
    world.sql(
        "UPDATE consent_provisions SET recipient_org_id = NULL, recipient_org_type = 'legal_aid' "
        "WHERE consent_id = :c1 AND position = 1",
        c1=c1,
    )
    rows = _platform_summary(world)
    assert rows[("A", "active", "legal_assistance", legal)] == (2, 3, 3)
    assert rows[("A", "active", "legal_assistance", "legal_aid")] == (1, 1, 1)
    # C9's two provisions at one position: neither is earlier, neither repeats the other.
    world.sql("UPDATE consent_provisions SET position = 0 WHERE consent_id = :c9", c9=c9)
    rows = _platform_summary(world)
    assert rows[("A", "active", "legal_assistance", legal)] == (3, 3, 3)
    # Back to two positions, by purpose: C9's second provision differs, then repeats again.
    world.sql(
        "UPDATE consent_provisions SET position = 1, purpose = 'statistics' "
        "WHERE consent_id = :c9 AND categories = 'legal'",
        c9=c9,
    )
    rows = _platform_summary(world)
    assert rows[("A", "active", "legal_assistance", legal)] == (2, 2, 2)
    assert rows[("A", "active", "statistics", legal)] == (1, 1, 1)
    world.sql(
        "UPDATE consent_provisions SET purpose = 'legal_assistance' WHERE consent_id = :c9",
        c9=c9,
    )
    assert _platform_summary(world)[("A", "active", "legal_assistance", legal)] == (2, 3, 3)


# ---- consents-expiring --------------------------------------------------------------------


def test_consents_expiring_uses_the_latest_renewal(world: DpoWorld) -> None:
    rows = world.rows("consents-expiring", "a_dpo", within_days=14)
    assert [(r["purpose"], r["renewed"]) for r in rows] == [
        ("shelter", True),  # renewed: ends in 5 days (its own end is in 40)
        ("law_enforcement_report", False),  # ends in 10 days
    ]
    assert rows[0]["consent_id"] == world.consent["C2"]
    assert rows[0]["categories"] == ["identity", "location", "needs"]
    assert [r["purpose"] for r in world.rows("consents-expiring", "a_dpo", within_days=7)] == [
        "shelter"
    ]
    assert world.rows("consents-expiring", "a_dpo", within_days=3) == []
    # The 40-day end no longer applies: a 60-day window still holds the two.
    assert len(world.rows("consents-expiring", "a_dpo", within_days=60)) == 2
    assert world.rows("consents-expiring", "b_dpo", within_days=60) == []
    world.report("consents-expiring", "a_dpo", 422, within_days=0)


def test_consent_reports_leave_erased_cases_out(world: DpoWorld) -> None:
    """An erasure writes no closing event: an erased person's consent would go on reading
    active, in force and due for renewal, though nothing can be disclosed or renewed again
    (the case answers 410) and there is no one left to ask. Left out as in `quality`."""
    legal = str(world.org["L"])
    world.erase("case1")  # C1: legal aid (open-ended) and the police (ends in ten days)
    assert [r["consent_id"] for r in world.rows("consents-expiring", "a_dpo", within_days=14)] == [
        world.consent["C2"]
    ]
    rows = _platform_summary(world)  # the platform's rows of A are A's own report's
    assert rows[("A", "active", "legal_assistance", legal)] == (1, 2, 2)  # C9 alone
    assert not [key for key in rows if key[2] == "law_enforcement_report"]
    assert sum(consents for consents, _, _ in rows.values()) == 8  # 10 less C1's two rows
    # With a date range the platform's report joins the consent records: the same.
    dated = world.report(
        "consent-summary", "plat_dpo", **{"from": iso(world.now - timedelta(days=1))}
    ).get_json()
    assert sum(r["consents"] for r in dated) == 8


# ---- processing-without-basis -------------------------------------------------------------


def test_processing_without_basis_is_empty_in_a_healthy_system(world: DpoWorld) -> None:
    # R6 is covered only by two provisions together: not reported. R5 rests on an approved
    # override; R4 was cancelled when its consent was withdrawn.
    for who in ("a_dpo", "b_dpo", "l_dpo", "s_dpo", "plat_dpo"):
        assert world.rows("processing-without-basis", who) == [], who
        assert world.csv_rows("processing-without-basis", who)[1] == [], who


def test_processing_without_basis_finds_a_withdrawal_written_behind_the_services_back(
    world: DpoWorld,
) -> None:
    _tamper_withdraw(world, "C1")
    rows = world.rows("processing-without-basis", "a_dpo")
    assert [(r["kind"], r["referral_id"]) for r in rows] == [
        ("referral", world.referral["R2"]),
        ("disclosure", world.referral["R2"]),
        ("referral", world.referral["R1"]),
        ("disclosure", world.referral["R1"]),
    ]
    r2, r2_disclosure = rows[0], rows[1]
    assert r2["status"] == "accepted"
    assert r2["uncovered_categories"] == ["contact", "identity"]
    assert r2["reason"] == "consent withdrawn"
    assert r2["case_id"] == world.case["case1"]
    assert r2_disclosure["disclosure_id"] is not None
    assert r2_disclosure["acknowledged_at"] is not None
    # Pages of one row walk the same rows in the same order.
    assert world.rows("processing-without-basis", "a_dpo", limit=1) == rows
    # The receiver's DPO sees its own part, without the sender's case id; B sees nothing.
    legal = world.rows("processing-without-basis", "l_dpo")
    assert [(r["kind"], r["referral_id"], r["case_id"]) for r in legal] == [
        ("referral", world.referral["R1"], None),
        ("disclosure", world.referral["R1"], None),
    ]
    assert world.rows("processing-without-basis", "b_dpo") == []
    assert len(world.rows("processing-without-basis", "plat_dpo")) == 4
    assert world.rows("processing-without-basis", "a_dpo", recipient_org_type="police") == rows[:2]


def test_reports_follow_events_rewritten_or_deleted_behind_the_services_back(
    world: DpoWorld,
) -> None:
    """The consent event summaries are kept by the database (migration 0010): an event
    rewritten or deleted in place changes what every report reads."""
    world.sql(
        "UPDATE consent_events SET event_type = 'revoked' WHERE consent_id = :id",
        id=uuid.UUID(world.consent["C1"]),
    )
    world.sql(
        "DELETE FROM consent_events WHERE consent_id = :id", id=uuid.UUID(world.consent["CB"])
    )
    found = {
        r["referral_id"]: r["reason"]
        for r in world.rows("processing-without-basis", "plat_dpo")
        if r["kind"] == "referral"
    }
    assert found == {
        world.referral["R1"]: "consent revoked",
        world.referral["R2"]: "consent revoked",
        world.referral["RB"]: "consent not yet given",
    }
    b_rows = world.report("consent-summary", "b_dpo").get_json()
    assert [(r["state"], r["consents"], r["provisions_in_force"]) for r in b_rows] == [(None, 1, 0)]
    a_states = {
        (r["state"], r["purpose"]): r["provisions"]
        for r in world.report("consent-summary", "a_dpo").get_json()
    }
    assert a_states[("revoked", "law_enforcement_report")] == 1
    assert ("active", "law_enforcement_report") not in a_states
    # C1 ends in ten days by its police provision; revoked, it is no longer expiring.
    expiring = world.rows("consents-expiring", "a_dpo", within_days=30)
    assert world.consent["C1"] not in {r["consent_id"] for r in expiring}
    assert world.consent["C2"] in {r["consent_id"] for r in expiring}


def test_processing_without_basis_finds_a_provision_narrowed_in_place(world: DpoWorld) -> None:
    world.sql(
        "UPDATE consent_provisions SET categories = 'identity' WHERE consent_id = :id",
        id=uuid.UUID(world.consent["CB"]),
    )
    rows = world.rows("processing-without-basis", "b_dpo")
    assert [(r["kind"], r["referral_id"], r["uncovered_categories"]) for r in rows] == [
        ("referral", world.referral["RB"], ["legal"]),
        ("disclosure", world.referral["RB"], ["legal"]),
    ]
    assert rows[0]["reason"] == "no provision covers it"
    assert world.rows("processing-without-basis", "a_dpo") == []
    assert len(world.rows("processing-without-basis", "l_dpo")) == 2


# ---- overrides ----------------------------------------------------------------------------


def test_overrides_report_and_review(world: DpoWorld, app: Any) -> None:
    rows = world.rows("overrides", "a_dpo")
    assert len(rows) == 1
    row = rows[0]
    assert row["referral_id"] == world.referral["R5"]
    assert row["override_reason"] == "vital_interests"
    assert row["requested_by"] == str(world.user["a"])
    assert row["approved_by"] == str(world.user["a_sup"])
    assert row["approved_at"] is not None
    assert (row["reviewed_by"], row["reviewed_at"]) == (None, None)
    assert world.rows("overrides", "a_dpo", reviewed="true") == []
    # The receiving shelter's DPO sees it without the sender's case id.
    assert [r["case_id"] for r in world.rows("overrides", "s_dpo")] == [None]
    assert world.rows("overrides", "b_dpo") == []

    url = f"{API}/dpo/overrides/{world.referral['R5']}/review"
    assert_problem(world.client.post(url, headers=world.h["b_dpo"]), 404)
    assert_problem(world.client.post(url, headers=world.h["s_dpo"]), 403)
    reviewed = world.client.post(url, headers=world.h["a_dpo"])
    assert reviewed.status_code == 200, reviewed.get_data(True)
    body = reviewed.get_json()
    assert body["reviewed_by"] == str(world.user["a_dpo"])
    assert body["reviewed_at"] is not None
    assert_problem(world.client.post(url, headers=world.h["a_dpo"]), 409)
    assert_problem(world.client.post(url, headers=world.h["plat_dpo"]), 409)
    # No override on R1; no such referral at all.
    for other in (world.referral["R1"], str(uuid.uuid4())):
        response = world.client.post(
            f"{API}/dpo/overrides/{other}/review", headers=world.h["a_dpo"]
        )
        assert_problem(response, 404)
    assert [r["reviewed_by"] for r in world.rows("overrides", "a_dpo", reviewed="true")] == [
        str(world.user["a_dpo"])
    ]
    assert world.rows("overrides", "a_dpo", reviewed="false") == []
    with db.session_factory_for(app)() as s:
        actions = [
            (e.action, e.decision, e.actor_id)
            for e in s.scalars(
                select(AuditEvent)
                .where(AuditEvent.resource_id == world.referral["R5"])
                .where(AuditEvent.action == "dpo:override-review")
                .order_by(AuditEvent.id)
            )
        ]
        s.rollback()
    assert actions == [
        ("dpo:override-review", "deny", world.user["b_dpo"]),
        ("dpo:override-review", "deny", world.user["s_dpo"]),
        ("dpo:override-review", "allow", world.user["a_dpo"]),
    ]


# ---- disclosures --------------------------------------------------------------------------


def test_disclosures_per_case_and_per_recipient(world: DpoWorld) -> None:
    rows = world.rows("disclosures", "a_dpo")
    assert {r["referral_id"] for r in rows} == {
        world.referral[name] for name in ("R1", "R2", "R3", "R4", "R5", "R6")
    }
    assert [r["disclosed_at"] for r in rows] == sorted(
        (r["disclosed_at"] for r in rows), reverse=True
    )
    police = world.rows("disclosures", "a_dpo", recipient_org_type="police")
    assert len(police) == 1
    assert police[0]["referral_id"] == world.referral["R2"]
    assert police[0]["categories"] == ["contact", "identity"]
    assert police[0]["basis_type"] == "consent"
    assert police[0]["acknowledged_at"] is not None
    override = _by(rows, "referral_id")[world.referral["R5"]]
    assert (override["basis_type"], override["basis"]) == ("override", "vital_interests")
    one_case = world.rows("disclosures", "a_dpo", case_id=world.case["case1"])
    assert {r["referral_id"] for r in one_case} == {world.referral["R1"], world.referral["R2"]}
    assert len(world.rows("disclosures", "a_dpo", purpose="shelter")) == 2
    assert len(world.rows("disclosures", "a_dpo", recipient_org_id=str(world.org["L"]))) == 3
    # Legal aid received four (R1, R4, R6 from A; RB from B) and learns no case id.
    legal = world.rows("disclosures", "l_dpo")
    assert len(legal) == 4
    assert {r["case_id"] for r in legal} == {None}
    # A case id is looked up only by its controller.
    assert world.rows("disclosures", "l_dpo", case_id=world.case["case1"]) == []
    assert [r["referral_id"] for r in world.rows("disclosures", "b_dpo")] == [world.referral["RB"]]
    assert len(world.rows("disclosures", "plat_dpo")) == 7


# ---- access-log ---------------------------------------------------------------------------


def test_access_log_lists_every_audit_row_of_the_case(world: DpoWorld, app: Any) -> None:
    case_id = world.case["case1"]
    with db.session_factory_for(app)() as s:
        before = s.execute(
            select(AuditEvent.action, AuditEvent.resource_id, AuditEvent.actor_id)
            .where(AuditEvent.case_id == uuid.UUID(case_id))
            .order_by(AuditEvent.id.desc())
        ).all()
        s.rollback()
    rows = world.rows("access-log", "a_dpo", case_id=case_id, limit=3)
    # Newest first; the report's own reading is on the record first, then every row of the
    # case once, page after page (each page's own reading is newer than its cursor).
    assert rows[0]["action"] == "dpo:report"
    assert rows[0]["actor_id"] == str(world.user["a_dpo"])
    assert [(r["action"], r["resource_id"], r["actor_id"]) for r in rows[1:]] == [
        (action, resource_id, str(actor_id) if actor_id else None)
        for action, resource_id, actor_id in before
    ]
    actions = Counter(r["action"] for r in rows)
    assert actions["referral:send"] == 2
    assert actions["consent:record"] == 1
    accepted = next(r for r in rows if r["action"] == "referral:accepted")
    assert (accepted["actor_role"], accepted["actor_org_id"]) == (
        "police_officer",
        str(world.org["P"]),
    )
    # Outside scope: 404, for another controller and for a receiver alike.
    for who in ("b_dpo", "l_dpo"):
        body = assert_problem(
            world.client.get(
                f"{API}/dpo/reports/access-log",
                query_string={"case_id": case_id},
                headers=world.h[who],
            ),
            404,
        )
        assert case_id not in json.dumps(body)
    assert_problem(
        world.client.get(
            f"{API}/dpo/reports/access-log",
            query_string={"case_id": str(uuid.uuid4())},
            headers=world.h["a_dpo"],
        ),
        404,
    )
    assert world.rows("access-log", "plat_dpo", case_id=case_id)[0]["actor_id"] == str(
        world.user["plat_dpo"]
    )
    world.report("access-log", "a_dpo", 422)  # case_id is required


# ---- erasures -----------------------------------------------------------------------------


def test_erasure_register_per_organisation(world: DpoWorld) -> None:
    if not _add_tombstones(world):
        assert world.rows("erasures", "a_dpo") == []
        return
    rows = world.rows("erasures", "a_dpo")
    assert [(r["case_id"], r["basis"], r["data_keys_destroyed"]) for r in rows] == [
        (world.case["case3"], "consent_withdrawn", 1)
    ]
    assert rows[0]["key_digest"] == "0" * 64
    assert [r["case_id"] for r in world.rows("erasures", "b_dpo")] == [world.case["caseB"]]
    assert len(world.rows("erasures", "plat_dpo")) == 2
    assert world.rows("erasures", "a_dpo", to=iso(world.now - timedelta(days=1))) == []


# ---- quality ------------------------------------------------------------------------------


def test_quality_flags_record_keeping_faults(world: DpoWorld) -> None:
    rows = world.rows("quality", "a_dpo")
    flagged = {r["consent_id"]: r for r in rows}
    # Every consent of A but C1 lacks evidence; C5 also has the two other faults.
    assert set(flagged) == {world.consent[c] for c in ("C2", "C3", "C4", "C5", "C6", "C7", "C9")}
    c5 = flagged[world.consent["C5"]]
    assert (c5["no_evidence"], c5["minor_without_guardian"], c5["unknown_notice_version"]) == (
        True,
        True,
        True,
    )
    assert (c5["is_minor"], c5["grantor"], c5["notice_version"]) == (True, "person", "2019-01")
    assert sum(r["minor_without_guardian"] for r in rows) == 1
    assert sum(r["unknown_notice_version"] for r in rows) == 1
    assert len(world.rows("quality", "a_dpo", issue="no_evidence")) == 7
    assert [
        r["consent_id"] for r in world.rows("quality", "a_dpo", issue="unknown_notice_version")
    ] == [world.consent["C5"]]
    assert len(world.rows("quality", "a_dpo", purpose="case_management")) == 1
    assert [r["consent_id"] for r in world.rows("quality", "b_dpo")] == [world.consent["CB"]]
    world.report("quality", "a_dpo", 422, issue="spelling")


# ---- retention-due ------------------------------------------------------------------------


def _close(world: DpoWorld, case: str, days_ago: int) -> datetime:
    closed_at = world.now - timedelta(days=days_ago)
    world.sql(
        "UPDATE cases SET status = 'closed', closed_at = :at WHERE id = :id",
        at=closed_at,
        id=uuid.UUID(world.case[case]),
    )
    return closed_at


def test_retention_due_pages_and_exports_like_every_report(world: DpoWorld, app: Any) -> None:
    app.config["RETENTION_POLICY"] = {"thb": {"closed": 30}, "gbv": {"closed": 30}}
    closed = {
        case: _close(world, case, days)
        for case, days in (("case4", 100), ("caseB", 50), ("case6", 40), ("case7", 10))
    }
    world._post(
        f"/cases/{world.case['case4']}/legal-hold",
        "a_sup",
        {"hold": True, "reason": "criminal proceedings"},
    )
    # Oldest closure first, a page at a time; case7 is not due yet.
    rows = world.rows("retention-due", "a_dpo", limit=1)
    assert [(r["case_id"], r["legal_hold"]) for r in rows] == [
        (world.case["case4"], True),
        (world.case["case6"], False),
    ]
    for row, case in zip(rows, ("case4", "case6"), strict=True):
        assert (row["org_id"], row["case_type"]) == (str(world.org["A"]), "thb")
        closed_at = datetime.fromisoformat(row["closed_at"])
        assert abs(closed_at - closed[case]) < timedelta(seconds=1)
        assert datetime.fromisoformat(row["due_at"]) - closed_at == timedelta(days=30)
    header, csv_rows = world.csv_rows("retention-due", "a_dpo")
    assert header == list(service.REPORTS["retention-due"])
    assert csv_rows == [as_csv_cells(row) for row in rows]
    assert world.report("retention-due", "a_dpo", format="csv").mimetype == "text/csv"
    # The platform's officer sees every organisation's, or one's.
    everyone = [r["case_id"] for r in world.rows("retention-due", "plat_dpo", limit=2)]
    assert everyone == [world.case[c] for c in ("case4", "caseB", "case6")]
    only_b = world.rows("retention-due", "plat_dpo", org_id=str(world.org["B"]))
    assert [r["case_id"] for r in only_b] == [world.case["caseB"]]
    assert world.rows("retention-due", "b_dpo") == only_b
    world.report("retention-due", "a_dpo", 422, limit=0)


# ---- JSON and CSV, scope, personal data, audit --------------------------------------------


def test_json_pages_and_csv_hold_the_same_rows_in_the_same_order(world: DpoWorld) -> None:
    _tamper_withdraw(world, "C1")
    _add_tombstones(world)
    for who in ("a_dpo", "l_dpo", "plat_dpo"):
        for name, params in {**LISTS, "consent-summary": {}}.items():
            json_rows = (
                world.report(name, who).get_json()
                if name == "consent-summary"
                else world.rows(name, who, limit=2, **params)
            )
            header, csv_rows = world.csv_rows(name, who, **params)
            assert header == list(service.REPORTS[name]), name
            assert csv_rows == [as_csv_cells(row) for row in json_rows], (who, name)
    # The access log grows by one row per reading (each page's own): the CSV holds the
    # readings made since, then the JSON's rows.
    json_rows = world.rows("access-log", "a_dpo", case_id=world.case["case2"], limit=4)
    _, csv_rows = world.csv_rows("access-log", "a_dpo", case_id=world.case["case2"])
    since = csv_rows[: len(csv_rows) - len(json_rows)]
    assert len(since) == 1 + (len(json_rows) - 1) // 4  # the later pages' and the export's
    assert {(row["action"], row["actor_id"]) for row in since} == {
        ("dpo:report", str(world.user["a_dpo"]))
    }
    assert csv_rows[len(since) :] == [as_csv_cells(row) for row in json_rows]
    # `?format=csv` is the same as the Accept header.
    response = world.report("overrides", "a_dpo", format="csv")
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]


def test_no_report_holds_a_personal_field(world: DpoWorld) -> None:
    _tamper_withdraw(world, "C1")
    _add_tombstones(world)
    reports = {
        **LISTS,
        "consent-summary": {},
        "access-log": {"case_id": world.case["case1"]},
    }
    for who in ("a_dpo", "l_dpo", "s_dpo", "plat_dpo"):
        for name, params in reports.items():
            if name == "access-log" and who in ("l_dpo", "s_dpo"):
                continue
            for fmt in ("json", "csv"):
                response = world.report(name, who, format=fmt, **params)
                assert_no_personal_data(response.get_data(as_text=True))
    ropa = world.client.get(f"{API}/dpo/ropa", headers=world.h["a_dpo"])
    assert_no_personal_data(ropa.get_data(as_text=True))


def test_no_report_shows_another_organisations_cases(world: DpoWorld) -> None:
    _tamper_withdraw(world, "C1")
    b_case, b_consent, b_referral = world.case["caseB"], world.consent["CB"], world.referral["RB"]
    a_ids = {world.case[c] for c in world.case if c != "caseB"} | {
        world.consent[c] for c in world.consent if c != "CB"
    }
    for name, params in {**LISTS, "consent-summary": {}}.items():
        for fmt in ("json", "csv"):
            a_text = world.report(name, "a_dpo", format=fmt, **params).get_data(as_text=True)
            for foreign in (b_case, b_consent, b_referral, str(world.org["B"])):
                assert foreign not in a_text, (name, fmt)
            b_text = world.report(name, "b_dpo", format=fmt, **params).get_data(as_text=True)
            assert not any(own in b_text for own in a_ids), (name, fmt)
            # A receiver never learns a sender's case id.
            l_text = world.report(name, "l_dpo", format=fmt, **params).get_data(as_text=True)
            assert not any(world.case[c] in l_text for c in world.case), (name, fmt)


def test_an_organisations_dpo_cannot_ask_for_another_organisation(world: DpoWorld) -> None:
    response = world.client.get(
        f"{API}/dpo/reports/disclosures",
        query_string={"org_id": str(world.org["B"])},
        headers=world.h["a_dpo"],
    )
    assert_problem(response, 403)
    own = world.rows("disclosures", "a_dpo", org_id=str(world.org["A"]))
    assert len(own) == 6
    plat = world.rows("disclosures", "plat_dpo", org_id=str(world.org["L"]))
    assert len(plat) == 4


def test_an_org_id_naming_no_organisation_is_refused(world: DpoWorld) -> None:
    """An empty report for a mistyped organisation would read as a clean one."""
    made_up = str(uuid.uuid4())
    calls = {**LISTS, "consent-summary": {}, "access-log": {"case_id": world.case["case1"]}}
    for name, params in calls.items():
        for fmt in ("json", "csv"):
            response = world.report(name, "plat_dpo", 422, org_id=made_up, format=fmt, **params)
            problem = assert_problem(response, 422)
            assert problem["errors"] == {"query": {"org_id": ["No such organisation."]}}, name
    # An organisation's officer is refused any other organisation, existing or not.
    world.report("disclosures", "a_dpo", 403, org_id=made_up)
    # A case id naming nothing is an empty answer on purpose (it is one of another
    # organisation's cases as well).
    assert world.rows("disclosures", "a_dpo", case_id=made_up) == []


def test_every_report_call_is_audited(world: DpoWorld, app: Any) -> None:
    calls = {**LISTS, "consent-summary": {}, "access-log": {"case_id": world.case["case4"]}}
    for name, params in calls.items():
        world.report(name, "a_dpo", **params)
        world.csv_rows(name, "a_dpo", **params)
    world.client.get(f"{API}/dpo/ropa", headers=world.h["a_dpo"])
    with db.session_factory_for(app)() as s:
        events = list(
            s.scalars(
                select(AuditEvent).where(AuditEvent.action == "dpo:report").order_by(AuditEvent.id)
            )
        )
        s.expunge_all()
        s.rollback()
    reports = Counter(json.loads(e.details)["report"] for e in events)
    assert reports == {**dict.fromkeys(calls, 2), "ropa": 1}
    assert {e.actor_id for e in events} == {world.user["a_dpo"]}
    exports = [e for e in events if json.loads(e.details).get("export")]
    assert len(exports) == len(calls)
    log = next(e for e in events if json.loads(e.details)["report"] == "access-log")
    assert log.case_id == uuid.UUID(world.case["case4"])


def test_a_cursor_is_checked(world: DpoWorld) -> None:
    cursor = next_cursor(world.report("disclosures", "a_dpo", limit=2))
    world.report("disclosures", "a_dpo", cursor=cursor)
    # Another report's cursor, and garbage, are refused.
    world.report("overrides", "a_dpo", 422, cursor=cursor)
    world.report("disclosures", "a_dpo", 422, cursor="bm90IGEgY3Vyc29y")
    # A well-formed cursor holding other types than the report sorts by.
    forged = keyset.encode_cursor("disclosures", ["2026-01-01", "not-an-id"])
    world.report("disclosures", "a_dpo", 422, cursor=forged)
    world.report("processing-without-basis", "a_dpo", 422, cursor=forged)


def test_audit_row_reports_neither_show_nor_page_by_the_platform_wide_audit_id(
    world: DpoWorld,
) -> None:
    """access-log and sign-in-failures read the audit table, whose ids are numbered across
    the platform: two of them read a while apart would tell an officer how many audited
    actions every other organisation performed in between. No row holds one, and the cursor
    seals the position (as the case's own access log does) for the report and its scope."""
    log = {"case_id": world.case["case1"]}
    for name, params in (("access-log", log), ("sign-in-failures", {})):
        first = world.report(name, "a_dpo", limit=1, **params)
        row = first.get_json()[0]
        assert set(row) == set(service.REPORTS[name])
        assert not [v for v in row.values() if isinstance(v, int) and not isinstance(v, bool)]
        assert world.csv_rows(name, "a_dpo", **params)[0] == list(service.REPORTS[name])
        cursor = next_cursor(first)
        # Sealed afresh each time: two cursors of one position are not alike.
        assert cursor != next_cursor(world.report(name, "a_dpo", limit=1, **params))
        # Pages and export from it: every older row once, the same in JSON and CSV.
        rest = world.rows(name, "a_dpo", cursor=cursor, limit=1, **params)
        assert rest and row not in rest
        _, exported = world.csv_rows(name, "a_dpo", cursor=cursor, **params)
        assert exported == [as_csv_cells(r) for r in rest]
        # Altered, or a plain id as the report's cursors were: refused.
        for bad in (cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB"), "12"):
            world.report(name, "a_dpo", 422, cursor=bad, **params)
        world.report(name, "a_dpo", 422, cursor=keyset.encode_cursor(name, [10**6]), **params)
    # A cursor serves the report and scope it was sealed for only: not another case's log,
    # not the case's own access log (nor the reverse), not another officer's scope.
    cursor = next_cursor(world.report("access-log", "a_dpo", limit=1, **log))
    world.report("access-log", "a_dpo", 422, cursor=cursor, case_id=world.case["case2"])
    own_log = f"{API}/cases/{world.case['case1']}/access-log"
    response = world.client.get(own_log, query_string={"cursor": cursor}, headers=world.h["a_sup"])
    assert_problem(response, 422)
    response = world.client.get(own_log, query_string={"limit": 1}, headers=world.h["a_sup"])
    world.report("access-log", "a_dpo", 422, cursor=next_cursor(response), **log)
    cursor = next_cursor(world.report("sign-in-failures", "plat_dpo", limit=1))
    world.report("sign-in-failures", "plat_dpo", cursor=cursor)
    world.report("sign-in-failures", "a_dpo", 422, cursor=cursor)
    world.report("sign-in-failures", "plat_dpo", 422, cursor=cursor, org_id=str(world.org["A"]))


def _exports_recorded(app: Any) -> list[str]:
    """The details of every `dpo:report` audit row that recorded an export."""
    with db.session_factory_for(app)() as s:
        reports = s.scalars(
            select(AuditEvent.details).where(AuditEvent.action == "dpo:report")
        ).all()
        s.rollback()
    return [d for d in reports if json.loads(d).get("export")]


def test_an_export_checks_its_cursor_before_the_first_byte(world: DpoWorld, app: Any) -> None:
    """A CSV export streams its rows after the response has started, when an error could
    only cut it short: a bad cursor is refused first, as a 422 problem, and nothing is
    recorded as exported."""
    forged = keyset.encode_cursor("disclosures", ["2026-01-01", "not-an-id"])
    for name, params in LISTS.items():
        for cursor in ("bm90IGEgY3Vyc29y", forged, ", "):
            response = world.client.get(
                f"{API}/dpo/reports/{name}",
                query_string={**params, "cursor": cursor},
                headers={**world.h["a_dpo"], "Accept": "text/csv"},
            )
            problem = assert_problem(response, 422)
            assert "cursor" in str(problem["errors"]), (name, problem)
    assert not _exports_recorded(app)


def _forged(report: str, *items: list[Any]) -> str:
    raw = json.dumps({"r": report, "k": list(items)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_a_forged_cursor_that_parses_but_cannot_be_bound_is_refused_first(
    world: DpoWorld, app: Any
) -> None:
    """Values of the report's own kinds that no row could hold (an id that is not text, an
    instant outside UTC's years 1-9999, an integer past BIGINT) are 422s, in JSON and before
    a CSV export's first byte: they were 500s, or an export cut short after its audit row."""
    an_id = str(uuid.uuid4())
    forged = [
        ("disclosures", {}, _forged("disclosures", ["d", "2026-01-01T00:00:00+00:00"], ["u", 123])),
        (
            "disclosures",
            {},
            _forged("disclosures", ["d", "0001-01-01T00:00:00+14:00"], ["u", an_id]),
        ),
        ("overrides", {}, _forged("overrides", ["d", "9999-12-31T23:59:59-14:00"], ["u", an_id])),
        ("sign-in-failures", {}, _forged("sign-in-failures", ["i", 2**70])),
        ("access-log", {"case_id": world.case["case4"]}, _forged("access-log", ["i", -(2**64)])),
    ]
    for name, params, cursor in forged:
        for accept in ("application/json", "text/csv"):
            response = world.client.get(
                f"{API}/dpo/reports/{name}",
                query_string={**params, "cursor": cursor},
                headers={**world.h["a_dpo"], "Accept": accept},
            )
            problem = assert_problem(response, 422)
            assert problem["errors"] == {"query": {"cursor": ["Not a valid cursor."]}}, name
    assert not _exports_recorded(app)


# ---- the record of processing -------------------------------------------------------------


def test_record_of_processing_is_generated_from_code_and_configuration(
    world: DpoWorld, app: Any
) -> None:
    response = world.client.get(f"{API}/dpo/ropa", headers=world.h["a_dpo"])
    assert response.status_code == 200, response.get_data(True)
    ropa = response.get_json()
    assert ropa["controller"]["org_id"] == str(world.org["A"])
    assert ropa["scope"] == "organisation"
    assert [p["code"] for p in ropa["purposes"]] == [p.value for p in Purpose]
    categories = {c["code"]: c for c in ropa["data_categories"]}
    assert list(categories) == [c.value for c in Category]
    assert {c for c, row in categories.items() if row["special_category"]} == {
        c.value for c in SPECIAL_CATEGORIES
    }
    assert "given_name" in categories["identity"]["fields"]
    recipients = {r["org_type"]: r for r in ropa["recipients"]}
    assert "platform" not in recipients
    for org_type, ceiling in ORG_TYPE_CEILINGS.items():
        assert set(recipients[org_type.value]["may_receive"]) == {c.value for c in ceiling}
    assert {"health", "psychosocial"} <= set(recipients["police"]["never_receives"])
    assert recipients["ngo"]["never_receives"] == []
    assert [b["code"] for b in ropa["legal_bases"]["article6"]] == [b.value for b in Article6Basis]
    assert [b["code"] for b in ropa["legal_bases"]["article9"]] == [
        b.value for b in Article9Condition
    ]
    assert ropa["consent"]["notice_versions"] == [NOTICE, "2025-06"]
    policy = app.config["RETENTION_POLICY"]
    assert ropa["retention"]["configured"] is True
    assert {(r["case_type"], r["status"], r["days_after"]) for r in ropa["retention"]["rules"]} == {
        (t, s, d) for t, by in policy.items() for s, d in by.items()
    }
    measures = {m["code"]: m for m in ropa["security_measures"]}
    assert measures["field_encryption"]["parameters"]["algorithm"] == "AES-256-GCM"
    assert measures["blind_indexes"]["parameters"]["bits"] == dict(
        sorted(app.extensions["referral_api.crypto"].index_bits.items())
    )
    assert "hash_chained_audit" in measures
    assert measures["sign_in_throttling"]["parameters"] == {
        "max_failures_per_account": app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"],
        "max_failures_per_address": app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"],
        "failure_window_seconds": app.config["LOGIN_FAILURE_WINDOW_SECONDS"],
        "lockout_seconds": app.config["LOGIN_LOCKOUT_SECONDS"],
        "refused_sign_ins_audited": True,
    }
    assert {r["role"] for r in ropa["roles"]} == {r.value for r in Role}
    dpo = next(r for r in ropa["roles"] if r["role"] == "dpo")
    assert dpo["content_categories"] == []
    platform = world.client.get(f"{API}/dpo/ropa", headers=world.h["plat_dpo"]).get_json()
    assert platform["scope"] == "platform"


def test_record_of_processing_says_when_retention_is_not_configured(
    app: Any, client: Any, factory: Any
) -> None:
    app.config["RETENTION_POLICY"] = None
    headers = factory.headers(factory.user(Role.DPO))
    ropa = client.get(f"{API}/dpo/ropa", headers=headers).get_json()
    assert ropa["retention"] == {"configured": False, "rules": [], "note": "not configured"}


# ---- the SQL state is the replay's state --------------------------------------------------


def _covering_consent(
    rng: random.Random,
    now: datetime,
    case_id: uuid.UUID,
    org_id: uuid.UUID,
    referral: dict[str, Any],
    org_type: OrgType,
) -> tuple[list[dict], list[dict], list[dict]]:
    """A consent meant to cover the referral: one provision or two splitting its
    categories, by organisation or by type, open-ended or bounded, sometimes renewed (once
    into the future, or first into the past and then again)."""
    records, provisions, events = random_consents(rng, now, case_id, org_id, 1)
    consent_id = records[0]["id"]
    categories = referral["categories"].split(",")
    split = len(categories) > 1 and rng.random() < 0.4
    parts = [categories[:1], categories[1:]] if split else [categories]
    provisions[:] = [
        {
            "id": uuid.uuid4(),
            "consent_id": consent_id,
            "case_id": case_id,
            "position": position,
            "purpose": referral["purpose"],
            "recipient_org_id": referral["to_org_id"] if rng.random() < 0.5 else None,
            "recipient_org_type": None,
            "categories": ",".join(sorted({*part, rng.choice(["needs", "identity"])})),
            "valid_from": now - timedelta(days=20),
            "valid_until": rng.choice([None, now + timedelta(days=rng.randint(1, 30))]),
        }
        for position, part in enumerate(parts)
    ]
    for provision in provisions:
        if provision["recipient_org_id"] is None:
            provision["recipient_org_type"] = org_type.value

    def event(kind: EventType, days_ago: int, until: datetime | None = None) -> dict[str, Any]:
        return {
            "id": uuid.uuid4(),
            "consent_id": consent_id,
            "case_id": case_id,
            "event_type": kind,
            "occurred_at": now - timedelta(days=days_ago),
            "valid_until": until,
        }

    events[:] = [event(EventType.GIVEN, 15)]
    renewal = rng.random()
    if renewal < 0.2:
        events.append(event(EventType.RENEWED, 5, now + timedelta(days=40)))
    elif renewal < 0.3:
        events.append(event(EventType.RENEWED, 10, now - timedelta(days=2)))
        events.append(event(EventType.RENEWED, 3, rng.choice([None, now + timedelta(days=9)])))
    return records, provisions, events


def test_sql_consent_state_matches_the_replay_on_random_histories(
    app: Any, client: Any, factory: Any
) -> None:
    org = factory.org(OrgType.NGO)
    case_id = uuid.UUID(create_case(client, factory.headers(factory.user(Role.CASEWORKER, org))))
    at = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    rng = random.Random(6)  # noqa: S311 - test data
    records, provisions, events = random_consents(rng, at, case_id, org, 300)
    insert_rows(
        app, (ConsentRecord, records), (ConsentProvision, provisions), (ConsentEvent, events)
    )
    with db.session_factory_for(app)() as s:
        # Both ways of reading a consent occur: its summary as kept (every event at or
        # before `at`), and its events replayed (some event after `at`).
        late = Counter(last > at for last in s.scalars(select(ConsentEventSummary.last_event_at)))
        assert late[True] > 20 and late[False] > 20, late
        states = consent_states(at)
        got = {row.consent_id: row for row in s.execute(select(states))}
        # The reported state, evaluated on each provision row of the consent.
        reported = reported_states(s, states, at)
        s.rollback()
    seen = Counter()
    for view in consent_views(records, provisions, events):
        derived = derive_state(view.events, at)
        row = got.get(view.id)
        if row is None:  # no event at or before `at`
            assert derived.state is None
            continue
        expected = current_state(view, at)
        assert row.derived == (derived.state.value if derived.state else None), view
        assert reported[view.id] == {expected.value if expected else None}, view
        # A closed consent's renewals decide nothing (the replay stops at the closing
        # event; SQL does not bother).
        if derived.state in (ConsentState.ACTIVE, ConsentState.EXPIRED):
            assert bool(row.renewed) == derived.renewed, view
            if derived.renewed:
                assert row.renewed_until == derived.renewed_until, view
        seen[expected.value if expected else None] += 1
    # The random histories reach every state (the test would prove little otherwise).
    assert set(seen) >= {"active", "expired", "withdrawn", "revoked", "entered_in_error", None}


def test_sql_prefilter_never_hides_an_uncovered_referral(
    app: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random consents and live referrals: the report lists exactly the referrals the
    decision would refuse now."""
    rng = random.Random(11)  # noqa: S311 - test data
    sender = factory.org(OrgType.NGO)
    legal, police = factory.org(OrgType.LEGAL_AID), factory.org(OrgType.POLICE)
    types = {legal: OrgType.LEGAL_AID, police: OrgType.POLICE}
    now = datetime.now(UTC)
    cases, referrals, records, provisions, events = [], [], [], [], []
    views: dict[uuid.UUID, list[ConsentView]] = {}
    for index in range(80):
        case_id = uuid.uuid4()
        cases.append(
            {
                "id": case_id,
                "case_code": f"THB-T{index:03d}-RAND",
                "org_id": sender,
                "case_type": "thb",
                "status": "open",
                "risk_level": "low",
                "nrm_stage": "identified",
                "created_at": now,
                "updated_at": now,
                "version": 1,
                "restricted": False,
                "erased": False,
            }
        )
        r, p, e = random_consents(rng, now, case_id, sender, rng.randint(0, 2))
        for provision in p:
            provision["purpose"] = rng.choice(["legal_assistance", "law_enforcement_report"])
            provision["categories"] = ",".join(
                sorted(rng.sample(["identity", "legal", "health", "contact"], rng.randint(1, 3)))
            )
            if rng.random() < 0.5:
                provision["recipient_org_type"] = None
                provision["recipient_org_id"] = rng.choice([legal, police])
            else:
                provision["recipient_org_type"] = rng.choice(["legal_aid", "police"])
        to = rng.choice([legal, police])
        referral = {
            "id": uuid.uuid4(),
            "case_id": case_id,
            "from_org_id": sender,
            "to_org_id": to,
            "purpose": rng.choice(["legal_assistance", "law_enforcement_report"]),
            "categories": ",".join(
                sorted(rng.sample(["identity", "legal", "health", "contact"], rng.randint(1, 2)))
            ),
            "urgency": "normal",
            "status": rng.choice(["requested", "accepted", "in_progress", "completed"]),
            "created_at": now - timedelta(minutes=index),
            "updated_at": now,
            "version": 1,
        }
        referrals.append(referral)
        if rng.random() < 0.6:
            c = _covering_consent(rng, now, case_id, sender, referral, types[to])
            r, p, e = r + c[0], p + c[1], e + c[2]
        # Move the random histories clear of `now`, so the report's clock agrees.
        for event in e:
            event["occurred_at"] -= timedelta(hours=1)
        records += r
        provisions += p
        events += e
        views[case_id] = consent_views(r, p, e)
    from referral_api.cases.models import Case

    insert_rows(
        app,
        (Case, cases),
        (ConsentRecord, records),
        (ConsentProvision, provisions),
        (ConsentEvent, events),
        (Referral, referrals),
    )
    live = {"requested", "accepted", "in_progress"}
    at = datetime.now(UTC)
    expected = {
        referral["id"]
        for referral in referrals
        if referral["status"] in live
        and not decide_disclosure(
            views[referral["case_id"]],
            referral["to_org_id"],
            types[referral["to_org_id"]],
            Purpose(referral["purpose"]),
            [Category(c) for c in referral["categories"].split(",")],
            at,
        ).permit
    }
    judged: list[bool] = []
    exact_check = service._uncovered

    def spy(*args: Any) -> Any:
        verdict = exact_check(*args)
        judged.append(verdict is None)
        return verdict

    monkeypatch.setattr(service, "_uncovered", spy)
    with db.session_factory_for(app)() as s:
        report = service.processing_without_basis(s, Actor.system(), {"limit": None})
        found = [row["referral_id"] for row in report.rows if row["kind"] == "referral"]
        s.rollback()
    assert set(found) == expected
    assert len(found) == len(expected)
    # Both outcomes occur, and some candidates SQL could not clear were covered after all
    # (two provisions together, a renewal after an ended one), so the comparison means
    # something.
    assert 0 < len(expected) < sum(1 for r in referrals if r["status"] in live)
    assert any(judged), "no candidate needed the exact check to be cleared"
    assert len(judged) < sum(1 for r in referrals if r["status"] in live)


def test_a_receivers_dpo_cannot_link_one_persons_disclosures(client: Any, factory: Any) -> None:
    """The receiver's DPO sees no case id; nor the consent provision ids a disclosure was
    made on, which name one person's consent just as well (two people, each referred twice:
    four rows, and nothing tells whose they are). The sender's DPO sees both."""
    from referral_support import provision, record_consent, refer

    sender, receiver = factory.org(OrgType.NGO), factory.org(OrgType.LEGAL_AID)
    worker = factory.headers(factory.user(Role.CASEWORKER, sender))
    for _ in range(2):
        case_id = create_case(client, worker)
        record_consent(
            client, worker, case_id, provision("legal_assistance", ["legal"], org_id=receiver)
        )
        for _ in range(2):
            assert refer(client, worker, case_id, receiver, ["legal"]).status_code == 201
    for role_org, hidden in ((receiver, True), (sender, False)):
        dpo = factory.headers(factory.user(Role.DPO, role_org))
        rows = client.get(f"{API}/dpo/reports/disclosures", headers=dpo).get_json()
        assert len(rows) == 4 and {r["basis_type"] for r in rows} == {"consent"}
        if hidden:
            assert {(r["case_id"], r["basis"]) for r in rows} == {(None, None)}
        else:
            assert len({r["basis"] for r in rows}) == 2 and all(r["case_id"] for r in rows)


def test_an_override_is_reviewed_only_once_approved(app: Any, client: Any, factory: Any) -> None:
    """A review recorded while the override was only asked for (a draft nobody approved)
    kept the approval, and the disclosure it allowed, out of the DPO's `reviewed=false`
    queue. Before the approval the review is refused (409) and nothing is recorded."""
    from referral_support import World, move, ok

    world = World(factory, client, consent=False)  # the send rests on the override alone
    rid = world.refer(
        send=False, override_reason="vital_interests", categories=["identity", "location"]
    )["id"]
    url = f"{API}/dpo/overrides/{rid}/review"
    early = client.post(url, headers=world.h["sender_dpo"])
    assert "not been approved" in assert_problem(early, 409)["detail"]
    tag = client.get(f"{API}/referrals/{rid}", headers=world.h["sender_sup"]).headers["ETag"]
    ok(
        client.post(
            f"{API}/referrals/{rid}/override-approval",
            headers={**world.h["sender_sup"], "If-Match": tag},
        )
    )
    ok(move(client, world.h["sender"], rid, "requested"))

    def queue(reviewed: str) -> list[str]:
        rows = ok(
            client.get(
                f"{API}/dpo/reports/overrides",
                query_string={"reviewed": reviewed},
                headers=world.h["sender_dpo"],
            )
        )
        return [row["referral_id"] for row in rows]

    assert queue("false") == [rid]
    assert ok(client.post(url, headers=world.h["sender_dpo"]))["reviewed_at"] is not None
    assert (queue("false"), queue("true")) == ([], [rid])
    with db.session_factory_for(app)() as s:
        reviews = s.scalars(
            select(AuditEvent.decision).where(
                AuditEvent.resource_id == rid, AuditEvent.action == "dpo:override-review"
            )
        ).all()
        s.rollback()
    assert reviews == ["allow"]
