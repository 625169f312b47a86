"""Consent endpoints from the outside (DESIGN.md §7, §10; issue 4).

Recording a consent ceremony, validation that stores nothing, reading with events,
withdrawal that takes effect at once (with its effects on the event and in the audit log),
revocation and entered-in-error (supervisor, reason), renewal, expiry by time and by the
`consent expire` command, receipts in the person's language, no way to edit or delete a
consent, and an audit row for every write.

Database state is read through short-lived connections: on SQLite every transaction takes
the write lock, so nothing here keeps one open.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem, consent_if_match
from sqlalchemy import text

from referral_api.access.roles import OrgType, Role
from referral_api.cases.layout import CATEGORY_FIELDS, METADATA_FIELDS
from referral_api.consent import hooks
from referral_api.smorest import etag_for

API = "/api/v1"

# Personal values of the case: none may ever appear in a consent response, receipt or audit
# row.
CASE = {
    "case_type": "thb",
    "risk_level": "high",
    "identity": {
        "given_name": "Zoryana",
        "family_name": "Kanarchuk",
        "date_of_birth": "1994-07-19",
        "documents": [{"type": "passport", "country": "UA", "number": "KN778899"}],
    },
    "contact": {"phone": "+380509998877", "safe_contact_notes": "Call the aunt first"},
    "location": {"address": "Provulok Tykhyi 3, Rivne", "is_shelter": True},
    "health": {"notes": "Asthma inhaler needed"},
}
CANARIES = [
    "Zoryana",
    "Kanarchuk",
    "1994-07-19",
    "KN778899",
    "+380509998877",
    "aunt first",
    "Tykhyi",
    "Asthma",
]
PERSONAL_KEYS = {k for fields in CATEGORY_FIELDS.values() for k in fields} - set(METADATA_FIELDS)

UK_LEGAL = "Юридична допомога та представництво"
UK_IDENTITY = "Хто ви (ім'я, дата народження, документи)"
EN_LEGAL = "Legal advice and representation"
EN_IDENTITY = "Who you are (name, date of birth, documents)"


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def rows(app: Any, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    from referral_api.extensions import db

    with db.engine_for(app).connect() as connection:
        return [tuple(r) for r in connection.execute(text(sql), params)]


def consent_counts(app: Any) -> tuple[int, int, int]:
    ((records, provisions, events),) = rows(
        app,
        "SELECT (SELECT COUNT(*) FROM consent_records), (SELECT COUNT(*) FROM "
        "consent_provisions), (SELECT COUNT(*) FROM consent_events)",
    )
    return records, provisions, events


def audit_rows(app: Any, action: str | None = None) -> list[dict[str, Any]]:
    columns = (
        "action, resource_type, resource_id, case_id, actor_id, actor_org_id, decision, "
        "categories, legal_basis, details"
    )
    sql = f"SELECT {columns} FROM audit_events"
    params: dict[str, Any] = {}
    if action:
        sql += " WHERE action = :action"
        params["action"] = action
    sql += " ORDER BY id"
    names = [c.strip() for c in columns.split(",")]
    return [dict(zip(names, r, strict=True)) for r in rows(app, sql, **params)]


def assert_no_personal_data(payload: Any) -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert key not in PERSONAL_KEYS, key
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(payload)
    dumped = json.dumps(payload, ensure_ascii=False, default=str)
    for canary in CANARIES:
        assert canary not in dumped, canary


def flat_errors(errors: Any, prefix: str = "") -> dict[str, list[str]]:
    """{"provisions": {"0": {"purpose": [...]}}} as {"provisions.0.purpose": [...]}; every
    422 reports nested fields in that one shape, whether a schema or a service found them."""
    if isinstance(errors, list):
        return {prefix: errors}
    flat: dict[str, list[str]] = {}
    for key, value in errors.items():
        assert "." not in str(key), f"a dotted path instead of nesting: {key}"
        flat.update(flat_errors(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


@dataclass
class Team:
    org_id: uuid.UUID
    caseworker: dict[str, str]
    caseworker_id: uuid.UUID
    supervisor: dict[str, str]
    supervisor_id: uuid.UUID
    legal_org: uuid.UUID
    legal_org_name: str
    other_legal_org: uuid.UUID
    shelter_org: uuid.UUID
    police_org: uuid.UUID
    org_name: str


@pytest.fixture
def team(factory: Any) -> Team:
    name = f"Nadiya NGO {uuid.uuid4().hex[:6]}"
    org = factory.org(OrgType.NGO, name=name)
    caseworker = factory.user(Role.CASEWORKER, org)
    supervisor = factory.user(Role.SUPERVISOR, org)
    legal_name = f"Pravo Legal Aid {uuid.uuid4().hex[:6]}"
    return Team(
        org_id=org,
        caseworker=factory.headers(caseworker),
        caseworker_id=caseworker.id,
        supervisor=factory.headers(supervisor),
        supervisor_id=supervisor.id,
        legal_org=factory.org(OrgType.LEGAL_AID, name=legal_name),
        legal_org_name=legal_name,
        other_legal_org=factory.org(OrgType.LEGAL_AID),
        shelter_org=factory.org(OrgType.SHELTER),
        police_org=factory.org(OrgType.POLICE),
        org_name=name,
    )


def new_case(client: Any, team: Team) -> str:
    response = client.post(f"{API}/cases", json=CASE, headers=team.caseworker)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]  # type: ignore[no-any-return]


def consent_body(team: Team, **overrides: Any) -> dict[str, Any]:
    """DESIGN.md §10's request shape: a specific organisation and an organisation type."""
    start = now() - timedelta(days=1)
    body: dict[str, Any] = {
        "grantor": "person",
        "guardian_relation": None,
        "is_minor": False,
        "collection_method": "written",
        "language": "uk",
        "notice_version": "2026-01",
        "jurisdiction": "UA",
        "legal_basis": {"article6": "a", "article9": None},
        "provisions": [
            {
                "purpose": "legal_assistance",
                "recipient_org_id": str(team.legal_org),
                "recipient_org_type": None,
                "categories": ["identity", "contact", "legal"],
                "valid_from": iso(start),
                "valid_until": iso(start + timedelta(days=90)),
            },
            {
                "purpose": "shelter",
                "recipient_org_id": None,
                "recipient_org_type": "shelter",
                "categories": ["identity", "location", "needs"],
                "valid_from": iso(start),
                "valid_until": None,
            },
        ],
    }
    body.update(overrides)
    return body


def record(client: Any, team: Team, case_id: str, body: dict[str, Any] | None = None) -> Any:
    response = client.post(
        f"{API}/cases/{case_id}/consents",
        json=body if body is not None else consent_body(team),
        headers=team.caseworker,
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def check(
    client: Any,
    headers: dict[str, str],
    case_id: str,
    recipient: uuid.UUID,
    purpose: str = "legal_assistance",
    categories: tuple[str, ...] = ("identity", "legal"),
    at: datetime | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "recipient_org_id": str(recipient),
        "purpose": purpose,
        "categories": list(categories),
    }
    if at is not None:
        payload["at"] = iso(at)
    response = client.post(f"{API}/cases/{case_id}/consent-check", json=payload, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ---- recording ----------------------------------------------------------------------------


def test_record_returns_201_active_with_provisions_and_a_given_event(
    app: Any, client: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    sent = consent_body(team)
    response = client.post(f"{API}/cases/{case_id}/consents", json=sent, headers=team.caseworker)

    assert response.status_code == 201, response.get_json()
    consent = response.get_json()
    assert consent["state"] == "active"
    assert consent["case_id"] == case_id
    assert consent["org_id"] == str(team.org_id)
    assert consent["captured_by_id"] == str(team.caseworker_id)
    assert consent["captured_by_org_id"] == str(team.org_id)
    assert consent["legal_basis"] == {"article6": "a", "article9": None}
    for key in ("grantor", "is_minor", "collection_method", "language", "jurisdiction"):
        assert consent[key] == sent[key], key
    assert [
        (p["purpose"], p["recipient_org_id"], p["recipient_org_type"], p["categories"])
        for p in consent["provisions"]
    ] == [
        ("legal_assistance", str(team.legal_org), None, ["contact", "identity", "legal"]),
        ("shelter", None, "shelter", ["identity", "location", "needs"]),
    ]
    first = consent["provisions"][0]
    assert parse(first["valid_from"]) == parse(sent["provisions"][0]["valid_from"])
    assert parse(first["valid_until"]) == parse(sent["provisions"][0]["valid_until"])
    assert consent["provisions"][1]["valid_until"] is None
    assert [e["event_type"] for e in consent["events"]] == ["given"]
    assert consent["events"][0]["actor_id"] == str(team.caseworker_id)
    assert_no_personal_data(consent)

    assert consent_counts(app) == (1, 2, 1)
    (row,) = audit_rows(app, "consent:record")
    assert row["resource_type"] == "consent"
    assert row["resource_id"] == consent["id"]
    assert str(row["case_id"]) in (case_id, case_id.replace("-", ""))
    assert row["decision"] == "allow"
    assert row["categories"] == "contact,identity,legal,location,needs"


def test_list_and_get_show_the_consent_with_its_events(client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    first = record(client, team, case_id)
    second = record(client, team, case_id, consent_body(team, language="ru"))
    other_case = new_case(client, team)
    record(client, team, other_case)

    listed = client.get(f"{API}/cases/{case_id}/consents", headers=team.caseworker)
    assert listed.status_code == 200
    assert [c["id"] for c in listed.get_json()] == [first["id"], second["id"]]
    assert all(c["state"] == "active" for c in listed.get_json())

    one = client.get(f"{API}/consents/{first['id']}", headers=team.caseworker)
    assert one.status_code == 200
    assert one.get_json() == first
    assert_no_personal_data(one.get_json())
    assert_no_personal_data(listed.get_json())

    assert_problem(client.get(f"{API}/consents/{uuid.uuid4()}", headers=team.caseworker), 404)
    assert_problem(client.get(f"{API}/cases/{uuid.uuid4()}/consents", headers=team.caseworker), 404)


def test_a_minor_consent_is_given_by_a_guardian_with_relation(client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    consent = record(
        client,
        team,
        case_id,
        consent_body(team, grantor="guardian", guardian_relation="legal_guardian", is_minor=True),
    )
    assert (consent["grantor"], consent["guardian_relation"], consent["is_minor"]) == (
        "guardian",
        "legal_guardian",
        True,
    )


def test_evidence_is_referenced_by_hash_and_never_returned(
    app: Any, client: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    raw = b"%PDF-1.4 signed consent form"
    content = base64.b64encode(raw).decode()
    consent = record(
        client,
        team,
        case_id,
        consent_body(team, evidence={"media_type": "application/pdf", "content_base64": content}),
    )
    assert consent["evidence_sha256"] == hashlib.sha256(raw).hexdigest()
    assert consent["evidence_media_type"] == "application/pdf"
    assert content not in json.dumps(consent)
    stored = rows(app, "SELECT * FROM consent_records")
    assert content.encode() not in b"".join(
        v if isinstance(v, bytes) else str(v).encode() for v in stored[0]
    )

    bad = client.post(
        f"{API}/cases/{case_id}/consents",
        json=consent_body(
            team, evidence={"media_type": "application/pdf", "content_base64": "not base64!"}
        ),
        headers=team.caseworker,
    )
    body = assert_problem(bad, 422)
    assert "evidence.content_base64" in flat_errors(body["errors"]["json"])
    assert consent_counts(app) == (1, 2, 1)


def _provision(team: Team, **changes: Any) -> dict[str, Any]:
    provision = consent_body(team)["provisions"][0]
    provision.update(changes)
    return provision


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


_PAST = now() - timedelta(days=10)

# (name, body changes given the team, a field whose errors must be reported)
INVALID: list[tuple[str, Any, str]] = [
    # A final line break passed the anchored patterns (`$` matches before one) and was stored.
    ("language-with-line-break", lambda t: {"language": "uk\n"}, "language"),
    ("jurisdiction-with-line-break", lambda t: {"jurisdiction": "UA\n"}, "jurisdiction"),
    # A well-formed tag longer than its column: a 500 on PostgreSQL.
    ("language-longer-than-stored", lambda t: {"language": "uk-abcdefgh-abcdefgh"}, "language"),
    (
        "provision-without-categories",
        lambda t: {"provisions": [_provision(t, categories=[])]},
        "provisions.0.categories",
    ),
    (
        "provision-categories-missing",
        lambda t: {"provisions": [_without(_provision(t), "categories")]},
        "provisions.0.categories",
    ),
    (
        "valid-until-before-valid-from",
        lambda t: {
            "provisions": [
                _provision(t, valid_from=iso(_PAST), valid_until=iso(_PAST - timedelta(days=1)))
            ]
        },
        "provisions.0.valid_until",
    ),
    (
        "valid-until-equal-to-valid-from",
        lambda t: {"provisions": [_provision(t, valid_from=iso(_PAST), valid_until=iso(_PAST))]},
        "provisions.0.valid_until",
    ),
    (
        # valid_from defaults to now: an end in the past inverts the window.
        "valid-until-in-the-past-without-valid-from",
        lambda t: {"provisions": [_without(_provision(t, valid_until=iso(_PAST)), "valid_from")]},
        "provisions.0.valid_until",
    ),
    (
        "second-provision-invalid",
        lambda t: {"provisions": [_provision(t), _provision(t, purpose="marketing")]},
        "provisions.1.purpose",
    ),
    ("guardian-without-relation", lambda t: {"grantor": "guardian"}, "guardian_relation"),
    ("minor-with-person-grantor", lambda t: {"is_minor": True}, "grantor"),
    # A person's own consent naming a guardian's relation was stored contradictory.
    (
        "person-with-guardian-relation",
        lambda t: {"guardian_relation": "parent"},
        "guardian_relation",
    ),
    (
        "minor-with-guardian-without-relation",
        lambda t: {"is_minor": True, "grantor": "guardian"},
        "guardian_relation",
    ),
    (
        "purpose-outside-enum",
        lambda t: {"provisions": [_provision(t, purpose="marketing")]},
        "provisions.0.purpose",
    ),
    (
        "category-outside-enum",
        lambda t: {"provisions": [_provision(t, categories=["identity", "finances"])]},
        "provisions.0.categories.1",
    ),
    (
        "org-type-outside-enum",
        lambda t: {"provisions": [_provision(t, recipient_org_id=None, recipient_org_type="bank")]},
        "provisions.0.recipient_org_type",
    ),
    (
        "both-recipient-id-and-type",
        lambda t: {"provisions": [_provision(t, recipient_org_type="legal_aid")]},
        "provisions.0.recipient_org_id",
    ),
    (
        "neither-recipient-id-nor-type",
        lambda t: {"provisions": [_provision(t, recipient_org_id=None)]},
        "provisions.0.recipient_org_id",
    ),
    (
        "unknown-recipient-org",
        lambda t: {"provisions": [_provision(t, recipient_org_id=str(uuid.uuid4()))]},
        "provisions.0.recipient_org_id",
    ),
    (
        "health-without-article9",
        lambda t: {"provisions": [_provision(t, categories=["identity", "health"])]},
        "legal_basis.article9",
    ),
    (
        "psychosocial-without-article9",
        lambda t: {
            "legal_basis": {"article6": "a"},
            "provisions": [_provision(t, categories=["psychosocial"])],
        },
        "legal_basis.article9",
    ),
    (
        "incident-without-article9",
        lambda t: {"provisions": [_provision(t, categories=["incident"])]},
        "legal_basis.article9",
    ),
    ("article6-outside-enum", lambda t: {"legal_basis": {"article6": "z"}}, "legal_basis.article6"),
    (
        "collection-method-outside-enum",
        lambda t: {"collection_method": "telepathy"},
        "collection_method",
    ),
    ("language-not-a-tag", lambda t: {"language": "Ukrainian language"}, "language"),
    ("jurisdiction-lowercase", lambda t: {"jurisdiction": "ua"}, "jurisdiction"),
    ("no-provisions", lambda t: {"provisions": []}, "provisions"),
    # Mass assignment: read-only and unknown fields are refused, not ignored.
    ("state-in-body", lambda t: {"state": "withdrawn"}, "state"),
    ("id-in-body", lambda t: {"id": str(uuid.uuid4())}, "id"),
    ("org-id-in-body", lambda t: {"org_id": str(uuid.uuid4())}, "org_id"),
    ("captured-by-in-body", lambda t: {"captured_by_id": str(uuid.uuid4())}, "captured_by_id"),
    (
        "events-in-body",
        lambda t: {"events": [{"event_type": "withdrawn", "occurred_at": iso(_PAST)}]},
        "events",
    ),
    (
        "provision-id-in-body",
        lambda t: {"provisions": [_provision(t, id=str(uuid.uuid4()))]},
        "provisions.0.id",
    ),
    (
        "evidence-hash-in-body",
        lambda t: {"evidence_sha256": "0" * 64},
        "evidence_sha256",
    ),
]


def test_invalid_consent_is_422_naming_the_field_and_stores_nothing(
    app: Any, client: Any, team: Team
) -> None:
    """Every row of INVALID against one case (one app per row would be slow on PostgreSQL);
    all mismatches are reported together, by row name."""
    case_id = new_case(client, team)
    record(client, team, case_id)  # something stored already, which must stay as it is
    before = consent_counts(app)
    failures = []
    for name, changes, field in INVALID:
        response = client.post(
            f"{API}/cases/{case_id}/consents",
            json=consent_body(team, **changes(team)),
            headers=team.caseworker,
        )
        try:
            body = assert_problem(response, 422)
            assert body["type"] == "/problems/validation"
            errors = flat_errors(body["errors"]["json"])
            assert field in errors, errors
            assert all(isinstance(m, str) and m for messages in errors.values() for m in messages)
            assert consent_counts(app) == before, "something was stored"
        except AssertionError as error:
            failures.append(f"{name}: {error}")
    assert not failures, "\n".join(failures)
    assert len(audit_rows(app, "consent:record")) == 1


def test_the_valid_body_used_by_the_validation_table_is_accepted(
    app: Any, client: Any, team: Team
) -> None:
    """The table above changes one thing at a time from this body: it must pass as is."""
    case_id = new_case(client, team)
    record(client, team, case_id)
    record(
        client,
        team,
        case_id,
        consent_body(
            team,
            legal_basis={"article6": "a", "article9": "a"},
            provisions=[_provision(team, categories=["identity", "health", "incident"])],
        ),
    )
    assert consent_counts(app) == (2, 3, 2)


# ---- consent-check ------------------------------------------------------------------------


def test_consent_check_names_provisions_and_honours_recipient_and_ceiling(
    client: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    consent = record(
        client,
        team,
        case_id,
        consent_body(
            team,
            legal_basis={"article6": "a", "article9": "a"},
            provisions=[
                *consent_body(team)["provisions"],
                {
                    "purpose": "law_enforcement_report",
                    "recipient_org_type": "police",
                    "categories": ["identity", "incident", "health", "psychosocial"],
                },
            ],
        ),
    )
    legal_id, shelter_id, police_id = (p["id"] for p in consent["provisions"])

    permitted = check(client, team.caseworker, case_id, team.legal_org)
    assert permitted["permit"] is True
    assert permitted["provisions_used"] == {"identity": [legal_id], "legal": [legal_id]}
    assert permitted["denied"] == {}
    assert parse(permitted["valid_until"]) == parse(consent["provisions"][0]["valid_until"])

    other = check(client, team.caseworker, case_id, team.other_legal_org)
    assert other["permit"] is False
    assert other["denied"] == {
        "identity": "no provision covers it",
        "legal": "no provision covers it",
    }

    shelter = check(
        client, team.caseworker, case_id, team.shelter_org, "shelter", ("location", "needs")
    )
    assert shelter["permit"] is True and shelter["valid_until"] is None
    assert shelter["provisions_used"] == {"location": [shelter_id], "needs": [shelter_id]}

    police = check(
        client,
        team.caseworker,
        case_id,
        team.police_org,
        "law_enforcement_report",
        ("identity", "incident", "health", "psychosocial"),
    )
    assert police["permit"] is False
    assert police["provisions_used"] == {"identity": [police_id], "incident": [police_id]}
    assert set(police["denied"]) == {"health", "psychosocial"}
    assert all("never receives" in why for why in police["denied"].values())


def test_consent_check_rejects_bad_questions(client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    url = f"{API}/cases/{case_id}/consent-check"
    good = {"recipient_org_id": str(team.legal_org), "purpose": "legal_assistance"}
    for payload, field in [
        ({**good, "categories": []}, "categories"),
        ({**good, "categories": ["finances"]}, "categories.0"),
        ({**good, "purpose": "marketing", "categories": ["identity"]}, "purpose"),
        (
            {**good, "recipient_org_id": str(uuid.uuid4()), "categories": ["identity"]},
            "recipient_org_id",
        ),
        ({**good, "categories": ["identity"], "permit": True}, "permit"),
    ]:
        body = assert_problem(client.post(url, json=payload, headers=team.caseworker), 422)
        assert field in flat_errors(body["errors"]["json"]), (payload, body)


# ---- withdrawal ---------------------------------------------------------------------------


@dataclass
class HandlerCalls:
    calls: list[tuple[str, str | None]]
    effects: list[dict[str, Any]]


@pytest.fixture
def withdrawal_handler() -> Iterator[HandlerCalls]:
    """A stand-in for referrals: it cancels one referral and audits that in the session it is
    given (so its change commits, or not, with the withdrawal)."""
    from referral_api.audit import service as audit

    seen = HandlerCalls([], [{"type": "referral", "id": "x", "status": "cancelled"}])

    def cancel_referrals(session: Any, actor: Any, consent: Any, at: datetime) -> Any:
        seen.calls.append((str(consent.id), str(actor.id) if actor.id else None))
        audit.record(session, actor, "referral:cancel", resource_type="referral", resource_id="x")
        return list(seen.effects)

    hooks.on_withdrawal(cancel_referrals)
    try:
        yield seen
    finally:
        hooks._WITHDRAWAL_HANDLERS.remove(cancel_referrals)


def test_withdraw_needs_no_body_and_the_decision_denies_at_once(
    app: Any, client: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)
    assert check(client, team.caseworker, case_id, team.legal_org)["permit"] is True

    response = client.post(f"{API}/consents/{consent['id']}/withdraw", headers=team.caseworker)

    assert response.status_code == 200, response.get_json()
    withdrawn = response.get_json()
    assert withdrawn["state"] == "withdrawn"
    assert [e["event_type"] for e in withdrawn["events"]] == ["given", "withdrawn"]
    event = withdrawn["events"][1]
    assert event["actor_id"] == str(team.caseworker_id)
    assert event["effects"] is None
    assert_no_personal_data(withdrawn)

    decision = check(client, team.caseworker, case_id, team.legal_org)
    assert decision == {
        "permit": False,
        "provisions_used": {},
        "denied": {"identity": "consent withdrawn", "legal": "consent withdrawn"},
        "valid_until": None,
    }
    shelter = check(client, team.caseworker, case_id, team.shelter_org, "shelter", ("needs",))
    assert shelter["denied"] == {"needs": "consent withdrawn"}
    # Only events up to `at` count: asked about the moment it was given, it still permitted.
    then = check(
        client,
        team.caseworker,
        case_id,
        team.legal_org,
        at=parse(withdrawn["events"][0]["occurred_at"]),
    )
    assert then["permit"] is True

    listed = client.get(f"{API}/cases/{case_id}/consents", headers=team.caseworker).get_json()
    assert [c["state"] for c in listed] == ["withdrawn"]

    (row,) = audit_rows(app, "consent:withdraw")
    assert row["resource_id"] == consent["id"]
    assert row["actor_id"] is not None and row["decision"] == "allow"
    assert json.loads(row["details"] or "{}").get("effects", []) == []

    again = client.post(f"{API}/consents/{consent['id']}/withdraw", headers=team.caseworker)
    assert_problem(again, 409)
    assert consent_counts(app) == (1, 2, 2)
    assert len(audit_rows(app, "consent:withdraw")) == 1


def test_withdraw_accepts_an_empty_or_missing_reason(app: Any, client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    for payload in (None, {}, {"reason": ""}, {"reason": None}, {"reason": "Moved"}):
        consent = record(client, team, case_id)
        response = client.post(
            f"{API}/consents/{consent['id']}/withdraw", json=payload, headers=team.caseworker
        )
        assert response.status_code == 200, (payload, response.get_json())
        assert response.get_json()["state"] == "withdrawn"
    # A reason is kept encrypted: never in a response, an audit row or a plaintext column.
    assert "Moved" not in response.get_data(as_text=True)
    assert all("Moved" not in json.dumps(r, default=str) for r in audit_rows(app))
    stored = rows(app, "SELECT * FROM consent_events")
    assert len(stored) == 10
    assert not any(b"Moved" in v for r in stored for v in r if isinstance(v, bytes))
    assert not any("Moved" in v for r in stored for v in r if isinstance(v, str))


def test_withdraw_rejects_unknown_fields(app: Any, client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)
    response = client.post(
        f"{API}/consents/{consent['id']}/withdraw",
        json={"occurred_at": iso(_PAST)},
        headers=team.caseworker,
    )
    assert "occurred_at" in flat_errors(assert_problem(response, 422)["errors"]["json"])
    assert consent_counts(app) == (1, 2, 1)


def test_withdrawal_effects_are_listed_on_the_event_and_in_the_audit_row(
    app: Any, client: Any, team: Team, withdrawal_handler: HandlerCalls
) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)

    response = client.post(
        f"{API}/consents/{consent['id']}/withdraw", json={}, headers=team.caseworker
    )

    assert response.status_code == 200, response.get_json()
    assert withdrawal_handler.calls == [(consent["id"], str(team.caseworker_id))]
    event = response.get_json()["events"][-1]
    assert event["event_type"] == "withdrawn"
    assert event["effects"] == withdrawal_handler.effects
    # The same, read back later.
    again = client.get(f"{API}/consents/{consent['id']}", headers=team.caseworker).get_json()
    assert again["events"][-1]["effects"] == withdrawal_handler.effects
    (row,) = audit_rows(app, "consent:withdraw")
    assert json.loads(row["details"])["effects"] == withdrawal_handler.effects
    # The handler's own change committed with the withdrawal.
    assert len(audit_rows(app, "referral:cancel")) == 1


def test_a_failing_withdrawal_effect_rolls_the_withdrawal_back(
    app: Any, client: Any, team: Team
) -> None:
    """Withdrawal and its effects share one transaction: never a withdrawal whose dependent
    disclosures are still running, nor cancelled referrals without a withdrawal."""
    case_id = new_case(client, team)
    consent = record(client, team, case_id)

    def broken(session: Any, actor: Any, consent: Any, at: datetime) -> Any:
        raise RuntimeError("referral store unavailable")

    hooks.on_withdrawal(broken)
    try:
        response = client.post(f"{API}/consents/{consent['id']}/withdraw", headers=team.caseworker)
    finally:
        hooks._WITHDRAWAL_HANDLERS.remove(broken)

    body = assert_problem(response, 500)
    assert "unavailable" not in json.dumps(body)
    assert consent_counts(app) == (1, 2, 1)
    assert not audit_rows(app, "consent:withdraw")
    current = client.get(f"{API}/consents/{consent['id']}", headers=team.caseworker).get_json()
    assert current["state"] == "active"
    # And it can be withdrawn once the effect works again.
    retry = client.post(f"{API}/consents/{consent['id']}/withdraw", headers=team.caseworker)
    assert retry.status_code == 200


# ---- revoke and entered-in-error ----------------------------------------------------------

CLOSERS = [
    ("revoke", "revoked", "consent:revoke"),
    ("entered-in-error", "entered_in_error", "consent:entered-in-error"),
]


@pytest.mark.parametrize(("path", "state", "action"), CLOSERS, ids=[c[0] for c in CLOSERS])
def test_revoke_and_entered_in_error_need_a_supervisor_and_a_reason(
    app: Any,
    client: Any,
    team: Team,
    withdrawal_handler: HandlerCalls,
    path: str,
    state: str,
    action: str,
) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)
    url = f"{API}/consents/{consent['id']}/{path}"
    reason = "Signed under pressure from the employer"

    assert_problem(client.post(url, json={"reason": reason}, headers=team.caseworker), 403)
    for payload in (None, {}, {"reason": None}, {"reason": ""}, {"reason": "no"}):
        response = client.post(url, json=payload, headers=team.supervisor)
        body = assert_problem(response, 422)
        assert "reason" in flat_errors(body["errors"]["json"]), payload
    assert consent_counts(app) == (1, 2, 1)
    # Refusals are audited as denials; nothing was allowed.
    assert {r["decision"] for r in audit_rows(app, action)} == {"deny"}

    read = consent_if_match(client, consent["id"], team.supervisor)
    # Without If-Match, or with the ETag of another version of it: nothing changes.
    assert_problem(client.post(url, json={"reason": reason}, headers=team.supervisor), 428)
    stale = {**team.supervisor, "If-Match": '"0123456789abcdef0123456789abcdef"'}
    assert_problem(client.post(url, json={"reason": reason}, headers=stale), 412)
    assert consent_counts(app) == (1, 2, 1)
    response = client.post(url, json={"reason": reason}, headers=read)

    assert response.status_code == 200, response.get_json()
    closed = response.get_json()
    assert closed["state"] == state
    assert closed["events"][-1]["event_type"] == state
    assert closed["events"][-1]["actor_id"] == str(team.supervisor_id)
    # Like a withdrawal, it stops dependent disclosures.
    assert closed["events"][-1]["effects"] == withdrawal_handler.effects
    assert reason not in json.dumps(closed)
    decision = check(client, team.caseworker, case_id, team.legal_org)
    assert decision["permit"] is False
    assert set(decision["denied"].values()) == {f"consent {state}"}

    (row,) = [r for r in audit_rows(app, action) if r["decision"] == "allow"]
    assert row["resource_id"] == consent["id"]
    assert reason not in json.dumps(audit_rows(app), default=str)
    assert json.loads(row["details"])["effects"] == withdrawal_handler.effects

    assert response.headers["ETag"] != read["If-Match"]
    closed_now = {**team.supervisor, "If-Match": response.headers["ETag"]}
    assert_problem(client.post(url, json={"reason": reason}, headers=closed_now), 409)
    assert_problem(
        client.post(f"{API}/consents/{consent['id']}/withdraw", headers=team.caseworker), 409
    )
    assert_problem(
        client.post(
            f"{API}/consents/{consent['id']}/renew",
            json={"valid_until": iso(now() + timedelta(days=30))},
            headers={**team.caseworker, "If-Match": response.headers["ETag"]},
        ),
        409,
    )
    assert consent_counts(app) == (1, 2, 2)


# ---- renewal and expiry -------------------------------------------------------------------


def _short_consent(team: Team, start: datetime, end: datetime) -> dict[str, Any]:
    provision = _provision(team, valid_from=iso(start), valid_until=iso(end))
    return consent_body(team, provisions=[provision])


def test_renew_extends_validity(app: Any, client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    old_end = now() + timedelta(hours=1)
    consent = record(
        client, team, case_id, _short_consent(team, now() - timedelta(days=1), old_end)
    )
    later = old_end + timedelta(hours=1)
    assert check(client, team.caseworker, case_id, team.legal_org, at=later)["denied"] == {
        "identity": "provision expired",
        "legal": "provision expired",
    }

    new_end = now() + timedelta(days=60)
    response = client.post(
        f"{API}/consents/{consent['id']}/renew",
        json={"valid_until": iso(new_end)},
        headers=consent_if_match(client, consent["id"], team.caseworker),
    )

    assert response.status_code == 200, response.get_json()
    renewed = response.get_json()
    assert renewed["state"] == "active"
    assert [e["event_type"] for e in renewed["events"]] == ["given", "renewed"]
    assert parse(renewed["events"][1]["valid_until"]) == new_end
    decision = check(client, team.caseworker, case_id, team.legal_org, at=later)
    assert decision["permit"] is True
    assert parse(decision["valid_until"]) == new_end
    assert not check(client, team.caseworker, case_id, team.legal_org, at=new_end)["permit"]

    (row,) = [
        r for r in audit_rows(app, "consent:record") if "renewed_until" in (r["details"] or "")
    ]
    assert row["resource_id"] == consent["id"]

    # The receipt states the validity in force now, not the superseded end.
    receipt = client.get(f"{API}/consents/{consent['id']}/receipt", headers=team.caseworker)
    assert parse(receipt.get_json()["purposes"][0]["valid_until"]) == new_end

    # Open-ended renewal.
    open_ended = client.post(
        f"{API}/consents/{consent['id']}/renew",
        json={"valid_until": None},
        headers={**team.caseworker, "If-Match": response.headers["ETag"]},
    )
    assert open_ended.status_code == 200
    far = check(client, team.caseworker, case_id, team.legal_org, at=now() + timedelta(days=3650))
    assert far["permit"] is True and far["valid_until"] is None


def test_a_consent_has_an_etag_and_a_renewal_is_made_to_the_version_read(
    app: Any, client: Any, team: Team
) -> None:
    """Found by review: a consent had no ETag and a renewal took no If-Match, so of two
    renewals made from one reading the later silently replaced the other's date. The ETag
    changes with every event; renewal (like revocation and entered-in-error) needs it."""
    case_id = new_case(client, team)
    recorded = client.post(
        f"{API}/cases/{case_id}/consents", json=consent_body(team), headers=team.caseworker
    )
    consent = recorded.get_json()
    read = client.get(f"{API}/consents/{consent['id']}", headers=team.caseworker)
    assert read.headers["ETag"] == recorded.headers["ETag"]
    assert read.get_json()["version"] == consent["version"] == 1
    url = f"{API}/consents/{consent['id']}/renew"
    first_until, second_until = now() + timedelta(days=40), now() + timedelta(days=400)
    as_read = {**team.caseworker, "If-Match": read.headers["ETag"]}

    assert_problem(
        client.post(url, json={"valid_until": iso(first_until)}, headers=team.caseworker), 428
    )
    assert consent_counts(app) == (1, 2, 1)
    first = client.post(url, json={"valid_until": iso(first_until)}, headers=as_read)
    assert first.status_code == 200, first.get_json()
    # The second renewal, from the same reading, does not replace the first's date unseen.
    assert_problem(client.post(url, json={"valid_until": iso(second_until)}, headers=as_read), 412)
    now_read = client.get(f"{API}/consents/{consent['id']}", headers=team.caseworker)
    assert now_read.headers["ETag"] == first.headers["ETag"] != read.headers["ETag"]
    assert now_read.get_json()["version"] == 2
    assert [e["event_type"] for e in now_read.get_json()["events"]] == ["given", "renewed"]
    assert parse(now_read.get_json()["events"][1]["valid_until"]) == first_until
    listed = client.get(f"{API}/cases/{case_id}/consents", headers=team.caseworker).get_json()
    assert [c["version"] for c in listed] == [2]

    # A withdrawal needs no If-Match, and a stale one does not stop it (Art. 7(3)).
    withdrawn = client.post(f"{API}/consents/{consent['id']}/withdraw", headers=as_read)
    assert withdrawn.status_code == 200, withdrawn.get_json()
    assert withdrawn.get_json()["state"] == "withdrawn"
    assert withdrawn.headers["ETag"] not in (read.headers["ETag"], first.headers["ETag"])


def test_invalid_renewal_is_422_and_stores_nothing(app: Any, client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)
    for payload, field in [
        ({"valid_until": iso(now() - timedelta(days=1))}, "valid_until"),
        ({"valid_until": iso(now())}, "valid_until"),
        ({}, "valid_until"),
        ({"valid_until": "next year"}, "valid_until"),
        ({"valid_until": iso(now() + timedelta(days=1)), "state": "active"}, "state"),
    ]:
        response = client.post(
            f"{API}/consents/{consent['id']}/renew",
            json=payload,
            headers=consent_if_match(client, consent["id"], team.caseworker),
        )
        body = assert_problem(response, 422)
        assert field in flat_errors(body["errors"]["json"]), payload
    assert consent_counts(app) == (1, 2, 1)
    assert len(audit_rows(app, "consent:record")) == 1


def test_an_ended_provision_stops_permitting_before_any_job_runs(
    app: Any, client: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    ended = record(
        client,
        team,
        case_id,
        _short_consent(team, now() - timedelta(days=10), now() - timedelta(seconds=1)),
    )
    decision = check(client, team.caseworker, case_id, team.legal_org)
    assert decision["permit"] is False
    assert decision["denied"] == {"identity": "provision expired", "legal": "provision expired"}
    # Reported as expired although no `expired` event has been recorded.
    current = client.get(f"{API}/consents/{ended['id']}", headers=team.caseworker).get_json()
    assert current["state"] == "expired"
    assert [e["event_type"] for e in current["events"]] == ["given"]
    # Only events up to `at` count: inside the window, but before the consent was given.
    before = check(client, team.caseworker, case_id, team.legal_org, at=now() - timedelta(days=1))
    assert before["denied"] == {
        "identity": "consent not yet given",
        "legal": "consent not yet given",
    }


def test_consent_expire_records_expired_once_for_fully_ended_consents(
    app: Any, client: Any, runner: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    past_start, past_end = now() - timedelta(days=10), now() - timedelta(days=1)
    ended = record(client, team, case_id, _short_consent(team, past_start, past_end))
    half = record(
        client,
        team,
        case_id,
        consent_body(
            team,
            provisions=[
                _provision(team, valid_from=iso(past_start), valid_until=iso(past_end)),
                _provision(
                    team, valid_from=iso(past_start), valid_until=iso(now() + timedelta(days=5))
                ),
            ],
        ),
    )
    open_ended = record(client, team, case_id)
    closed = record(client, team, case_id, _short_consent(team, past_start, past_end))
    withdraw = client.post(f"{API}/consents/{closed['id']}/withdraw", headers=team.caseworker)
    assert withdraw.status_code == 200
    not_started = record(
        client,
        team,
        case_id,
        _short_consent(team, now() + timedelta(days=1), now() + timedelta(days=2)),
    )

    result = runner.invoke(args=["consent", "expire"])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "1 consents marked expired"

    def events(consent: dict[str, Any]) -> list[str]:
        body = client.get(f"{API}/consents/{consent['id']}", headers=team.caseworker).get_json()
        return [e["event_type"] for e in body["events"]]

    assert events(ended) == ["given", "expired"]
    assert events(half) == ["given"]
    assert events(open_ended) == ["given"]
    assert events(closed) == ["given", "withdrawn"]
    assert events(not_started) == ["given"]
    expired_event = client.get(f"{API}/consents/{ended['id']}", headers=team.caseworker).get_json()
    assert expired_event["state"] == "expired"
    assert expired_event["events"][1]["actor_id"] is None  # the system, not a user
    (row,) = audit_rows(app, "consent:expire")
    assert row["resource_id"] == ended["id"] and row["actor_id"] is None

    counts = consent_counts(app)
    again = runner.invoke(args=["consent", "expire"])
    assert again.exit_code == 0
    assert again.output.strip() == "0 consents marked expired"
    assert consent_counts(app) == counts
    assert len(audit_rows(app, "consent:expire")) == 1

    # A renewal after the `expired` event makes it active again.
    renewal = client.post(
        f"{API}/consents/{ended['id']}/renew",
        json={"valid_until": iso(now() + timedelta(days=30))},
        headers=consent_if_match(client, ended["id"], team.caseworker),
    )
    assert renewal.status_code == 200 and renewal.get_json()["state"] == "active"
    assert check(client, team.caseworker, case_id, team.legal_org)["permit"] is True
    assert runner.invoke(args=["consent", "expire"]).output.strip() == "0 consents marked expired"


# ---- receipts -----------------------------------------------------------------------------


def test_receipt_in_the_consent_language(app: Any, client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)

    response = client.get(f"{API}/consents/{consent['id']}/receipt", headers=team.caseworker)

    assert response.status_code == 200, response.get_json()
    receipt = response.get_json()
    assert receipt["language"] == "uk"
    assert receipt["record_id"] == consent["id"]
    assert receipt["receipt_id"] == f"urn:uuid:{consent['id']}"
    assert receipt["state"] == "active"
    assert receipt["jurisdiction"] == "UA"
    assert receipt["grantor"] == "person"
    assert receipt["controller"] == {
        "organisation_id": str(team.org_id),
        "name": team.org_name,
        "type": "ngo",
    }
    assert receipt["legal_basis"] == {"gdpr_article_6": "a", "gdpr_article_9": None}
    legal, shelter = receipt["purposes"]
    assert legal["purpose"] == "legal_assistance"
    assert legal["purpose_description"] == UK_LEGAL
    assert legal["recipient"] == {
        "organisation_id": str(team.legal_org),
        "name": team.legal_org_name,
        "type": "legal_aid",
    }
    assert [c["code"] for c in legal["data_categories"]] == ["contact", "identity", "legal"]
    assert legal["data_categories"][1]["description"] == UK_IDENTITY
    assert parse(legal["valid_from"]) == parse(consent["provisions"][0]["valid_from"])
    assert parse(legal["valid_until"]) == parse(consent["provisions"][0]["valid_until"])
    assert shelter["recipient"] == {"organisation_type": "shelter"}
    assert shelter["valid_until"] is None
    withdrawal = receipt["withdrawal"]
    assert withdrawal["justification_required"] is False
    assert withdrawal["api"] == f"POST /api/v1/consents/{consent['id']}/withdraw"
    assert team.org_name in withdrawal["method"]
    assert "відкликати" in withdrawal["method"]
    assert_no_personal_data(receipt)
    assert len(audit_rows(app, "consent:read")) == 1


@pytest.mark.parametrize(
    ("language", "expected", "legal_text"),
    [("sw", "en", EN_LEGAL), ("en", "en", EN_LEGAL), ("ru", "ru", None), ("uk-UA", "uk", UK_LEGAL)],
)
def test_receipt_falls_back_to_english(
    client: Any, team: Team, language: str, expected: str, legal_text: str | None
) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id, consent_body(team, language=language))
    receipt = client.get(f"{API}/consents/{consent['id']}/receipt", headers=team.caseworker)
    assert receipt.status_code == 200
    body = receipt.get_json()
    assert body["language"] == expected
    description = body["purposes"][0]["purpose_description"]
    if legal_text:
        assert description == legal_text
    else:
        assert description not in (EN_LEGAL, UK_LEGAL) and description
    if expected == "en":
        assert body["purposes"][0]["data_categories"][1]["description"] == EN_IDENTITY
        assert "withdraw this consent at any time" in body["withdrawal"]["method"]


# ---- nothing is edited or deleted through the API -----------------------------------------


def test_no_patch_put_or_delete_on_consents(app: Any, client: Any, team: Team) -> None:
    case_id = new_case(client, team)
    consent = record(client, team, case_id)
    before = consent_counts(app)
    urls = [
        f"{API}/consents/{consent['id']}",
        f"{API}/consents/{consent['id']}/withdraw",
        f"{API}/consents/{consent['id']}/receipt",
        f"{API}/cases/{case_id}/consents",
    ]
    for url in urls:
        for method in ("PATCH", "PUT", "DELETE"):
            response = client.open(
                url, method=method, json={"state": "withdrawn"}, headers=team.supervisor
            )
            assert_problem(response, 405)
            assert method not in response.headers.get("Allow", ""), (url, method)
    assert consent_counts(app) == before
    current = client.get(f"{API}/consents/{consent['id']}", headers=team.caseworker).get_json()
    assert current == consent

    # And none is registered at all (not only refused for this payload).
    for rule in app.url_map.iter_rules():
        if "consent" in rule.rule:
            assert not (rule.methods or set()) & {"PATCH", "PUT", "DELETE"}, rule


def test_every_write_is_audited_once_without_personal_data(
    app: Any, client: Any, runner: Any, team: Team
) -> None:
    case_id = new_case(client, team)
    # Only what the consent endpoints write (case creation audits itself).
    baseline = len(audit_rows(app))
    ids = [record(client, team, case_id)["id"] for _ in range(3)]
    expired = record(
        client,
        team,
        case_id,
        _short_consent(team, now() - timedelta(days=3), now() - timedelta(days=2)),
    )
    future = iso(now() + timedelta(days=9))
    # The ETag of a consent just recorded (one event), without a read to audit.
    given = {i: {"If-Match": etag_for("consent", i, 1)} for i in ids}
    writes = [
        (
            "POST",
            f"{API}/consents/{ids[0]}/renew",
            {"valid_until": future},
            {**team.caseworker, **given[ids[0]]},
        ),
        ("POST", f"{API}/consents/{ids[0]}/withdraw", None, team.caseworker),
        (
            "POST",
            f"{API}/consents/{ids[1]}/revoke",
            {"reason": "Under duress"},
            {**team.supervisor, **given[ids[1]]},
        ),
        (
            "POST",
            f"{API}/consents/{ids[2]}/entered-in-error",
            {"reason": "Wrong case"},
            {**team.supervisor, **given[ids[2]]},
        ),
    ]
    for method, url, payload, headers in writes:
        response = client.open(url, method=method, json=payload, headers=headers)
        assert response.status_code == 200, (url, response.get_json())
    assert runner.invoke(args=["consent", "expire"]).exit_code == 0

    written = audit_rows(app)[baseline:]
    assert sorted(r["action"] for r in written) == sorted(
        ["consent:record"] * 4
        + ["consent:record", "consent:withdraw", "consent:revoke", "consent:entered-in-error"]
        + ["consent:expire"]
    )
    assert {r["resource_id"] for r in written} == {*ids, expired["id"]}
    assert all(r["resource_type"] == "consent" and r["case_id"] is not None for r in written)
    assert all(r["legal_basis"] for r in written if r["action"] != "consent:expire")
    assert_no_personal_data(written)
    assert not any(
        text_ in json.dumps(written, default=str) for text_ in ("Under duress", "Wrong case")
    )
