"""The audit log (DESIGN.md §9): who did what to which case, denials included, hash-chained.

Every case endpoint writes rows in the transaction of what it records; denied attempts are
committed on their own although the request fails; rows hold ids and categories, never
personal values; a sealer chains rows after the response; `audit verify` (CLI and HTTP)
recomputes the chain and names the first altered or missing row.

Database-level append-only enforcement (a PostgreSQL trigger) is in test_audit_postgres.py.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import assert_problem
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from referral_api.access.categories import Category
from referral_api.access.roles import OrgType, Role
from referral_api.audit import hooks, service
from referral_api.audit.models import AuditChainHead, AuditEvent

ALL_CATEGORIES = ",".join(sorted(c.value for c in Category))
ACCESS_LOG_KEYS = {
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_role",
    "actor_org_id",
    "acting_officer",
    "action",
    "categories",
    "decision",
}


# ---- helpers ------------------------------------------------------------------------------


def _db() -> Any:
    from referral_api.extensions import db

    return db


def audit_rows(app: Any, *where: Any) -> list[AuditEvent]:
    """Audit rows as stored, read in a short session (closed at once: SQLite has one writer)."""
    with _db().session_factory_for(app)() as s:
        return list(s.scalars(select(AuditEvent).where(*where).order_by(AuditEvent.id)))


def rows_of(app: Any, response: Any) -> list[AuditEvent]:
    """The rows written by one request, found by the X-Request-ID the response carries."""
    request_id = response.headers["X-Request-ID"]
    assert request_id
    return audit_rows(app, AuditEvent.request_id == request_id)


def one_row_of(app: Any, response: Any) -> AuditEvent:
    rows = rows_of(app, response)
    assert len(rows) == 1, [(r.action, r.decision, r.case_id) for r in rows]
    return rows[0]


def seal(app: Any) -> int:
    return service.seal_all(_db().session_factory_for(app))


def verify(app: Any) -> service.VerifyResult:
    with _db().session_factory_for(app)() as s:
        return service.verify_chain(s)


def raw_sql(app: Any, sql: str, **params: Any) -> None:
    """Tamper as a database superuser would: on PostgreSQL the append-only trigger is
    switched off for this one transaction (session_replication_role = replica)."""
    with _db().engine_for(app).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        connection.execute(text(sql), params)


def details(row: AuditEvent) -> dict[str, Any]:
    return json.loads(row.details) if row.details else {}


def create_case(client: Any, headers: dict[str, str], **body: Any) -> tuple[Any, str, str]:
    """POST a case; returns (response, case id, ETag)."""
    body.setdefault("case_type", "thb")
    response = client.post("/api/v1/cases", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response, response.get_json()["id"], response.headers["ETag"]


def cli_output(result: Any) -> str:
    return result.output + (getattr(result, "stderr", "") or "")


# ---- rows for every case endpoint ---------------------------------------------------------


def test_create_read_update_write_one_row_each_with_actor_resource_and_request_id(
    app: Any, client: Any, factory: Any
) -> None:
    worker = factory.user(Role.CASEWORKER)
    headers = factory.headers(worker)

    created, case_id, etag = create_case(
        client, headers, identity={"given_name": "A"}, contact={"phone": "+380501112233"}
    )
    row = one_row_of(app, created)
    assert row.action == "case:create"
    assert row.decision == "allow"
    assert row.actor_type == "user"
    assert row.actor_id == worker.id
    assert row.actor_role == "caseworker"
    assert row.actor_org_id == worker.org_id
    assert row.acting_officer is None
    assert row.resource_type == "case"
    assert row.resource_id == case_id
    assert row.case_id == uuid.UUID(case_id)
    assert row.categories == "contact,identity"
    assert row.occurred_at is not None

    # A caller-supplied request id is kept end to end (response header and audit row).
    read = client.get(
        f"/api/v1/cases/{case_id}", headers={**headers, "X-Request-ID": "trace-abc-12345"}
    )
    assert read.status_code == 200
    assert read.headers["X-Request-ID"] == "trace-abc-12345"
    row = one_row_of(app, read)
    assert row.request_id == "trace-abc-12345"
    assert (row.action, row.case_id, row.decision) == ("case:read", uuid.UUID(case_id), "allow")
    assert row.categories == ALL_CATEGORIES  # a caseworker was shown every category

    patched = client.patch(
        f"/api/v1/cases/{case_id}",
        json={"contact": {"email": "x@example.org"}},
        headers={**headers, "If-Match": etag},
    )
    assert patched.status_code == 200, patched.get_json()
    row = one_row_of(app, patched)
    # The answer shows the whole case: the row names every category shown, and which
    # of them were written.
    assert (row.action, row.categories, row.case_id) == (
        "case:update",
        ALL_CATEGORIES,
        uuid.UUID(case_id),
    )
    assert details(row) == {"changed": ["contact"]}

    # A metadata-only change writes no category, and shows them all.
    risk = client.patch(
        f"/api/v1/cases/{case_id}",
        json={"risk_level": "high"},
        headers={**headers, "If-Match": patched.headers["ETag"]},
    )
    assert risk.status_code == 200
    row = one_row_of(app, risk)
    assert (row.action, row.categories, details(row)) == (
        "case:update",
        ALL_CATEGORIES,
        {"changed": []},
    )


def test_status_assign_notes_and_access_log_are_audited(
    app: Any, client: Any, factory: Any
) -> None:
    org = factory.org()
    supervisor = factory.user(Role.SUPERVISOR, org)
    worker = factory.user(Role.CASEWORKER, org)
    headers = factory.headers(supervisor)
    _, case_id, etag = create_case(client, headers)
    case_uuid = uuid.UUID(case_id)

    activated = client.post(
        f"/api/v1/cases/{case_id}/status",
        json={"to": "active", "reason": "support_started"},
        headers={**headers, "If-Match": etag},
    )
    assert activated.status_code == 200, activated.get_json()
    row = one_row_of(app, activated)
    assert (row.action, row.case_id, row.reason) == ("case:update", case_uuid, "support_started")
    assert details(row) == {"to": "active"}
    assert row.categories == ALL_CATEGORIES  # the answer shows the case

    closed = client.post(
        f"/api/v1/cases/{case_id}/status",
        json={"to": "closed", "reason": "duplicate"},
        headers={**headers, "If-Match": activated.headers["ETag"]},
    )
    assert closed.status_code == 200
    row = one_row_of(app, closed)
    assert (row.action, row.reason, details(row)) == ("case:close", "duplicate", {"to": "closed"})
    assert row.categories == ALL_CATEGORIES

    assigned = client.post(
        f"/api/v1/cases/{case_id}/assign",
        json={"assignee_id": str(worker.id)},
        headers={**headers, "If-Match": closed.headers["ETag"]},
    )
    assert assigned.status_code == 200, assigned.get_json()
    row = one_row_of(app, assigned)
    assert (row.action, row.actor_id, row.case_id) == ("case:assign", supervisor.id, case_uuid)
    assert details(row) == {"assignee_id": str(worker.id)}
    assert row.categories == ALL_CATEGORIES

    note = client.post(
        f"/api/v1/cases/{case_id}/notes",
        json={"category": "health", "text": "seen by a doctor"},
        headers=headers,
    )
    assert note.status_code == 201
    row = one_row_of(app, note)
    assert (row.action, row.categories, row.case_id) == ("case:note", "health", case_uuid)
    assert details(row) == {"note_id": note.get_json()["id"]}

    notes = client.get(f"/api/v1/cases/{case_id}/notes", headers=headers)
    assert notes.status_code == 200
    row = one_row_of(app, notes)
    assert (row.action, row.categories, details(row)) == ("case:read", "health", {"notes": 1})

    log = client.get(f"/api/v1/cases/{case_id}/access-log", headers=headers)
    assert log.status_code == 200
    row = one_row_of(app, log)
    assert (row.action, row.case_id, row.resource_id) == ("case:access-log", case_uuid, case_id)


def test_list_writes_one_row_per_case_shown(app: Any, client: Any, factory: Any) -> None:
    worker = factory.user(Role.CASEWORKER)
    headers = factory.headers(worker)
    ids = {uuid.UUID(create_case(client, headers)[1]) for _ in range(3)}
    # Another organisation's case is neither listed nor audited in this list.
    _, foreign_id, _ = create_case(client, factory.headers(factory.user(Role.CASEWORKER)))

    listed = client.get("/api/v1/cases", headers=headers)
    assert listed.status_code == 200
    assert {uuid.UUID(item["id"]) for item in listed.get_json()} == ids
    rows = rows_of(app, listed)
    assert len(rows) == 3
    assert {r.case_id for r in rows} == ids
    assert uuid.UUID(foreign_id) not in {r.case_id for r in rows}
    for row in rows:
        assert row.action == "case:read"
        assert row.categories == "identity"
        assert details(row) == {"via": "list"}
        assert (row.actor_id, row.actor_org_id) == (worker.id, worker.org_id)

    # A page shows two cases: two rows, not three.
    page = client.get("/api/v1/cases?limit=2", headers=headers)
    assert page.status_code == 200
    assert len(page.get_json()) == 2
    assert {r.case_id for r in rows_of(app, page)} == {uuid.UUID(i["id"]) for i in page.get_json()}

    # A list with nothing to show is still on the record.
    empty = client.get("/api/v1/cases?status=closed", headers=headers)
    assert empty.get_json() == []
    row = one_row_of(app, empty)
    assert row.case_id is None
    assert details(row) == {"results": 0, "via": "list"}


def test_search_is_audited_even_with_zero_results(app: Any, client: Any, factory: Any) -> None:
    worker = factory.user(Role.CASEWORKER)
    headers = factory.headers(worker)
    _, wanted, _ = create_case(
        client, headers, identity={"given_name": "Oksana", "family_name": "Kovalenko"}
    )
    create_case(client, headers, identity={"given_name": "Maria", "family_name": "Ionescu"})

    found = client.get("/api/v1/cases?name=Oksana", headers=headers)
    assert [item["id"] for item in found.get_json()] == [wanted]
    row = one_row_of(app, found)
    assert (row.action, row.case_id, row.categories) == (
        "case:read",
        uuid.UUID(wanted),
        "identity",
    )
    assert details(row) == {"via": "search"}

    nothing = client.get("/api/v1/cases?name=Nobody", headers=headers)
    assert nothing.status_code == 200
    assert nothing.get_json() == []
    row = one_row_of(app, nothing)
    assert (row.action, row.decision, row.case_id) == ("case:view", "allow", None)
    assert (row.actor_id, row.actor_org_id) == (worker.id, worker.org_id)
    assert details(row) == {"results": 0, "via": "search"}


# ---- denials ------------------------------------------------------------------------------


def test_another_orgs_user_is_answered_404_and_the_attempt_is_recorded(
    app: Any, client: Any, factory: Any
) -> None:
    owner = factory.headers(factory.user(Role.CASEWORKER))
    _, case_id, etag = create_case(client, owner, contact={"phone": "+380501112233"})
    intruder = factory.user(Role.CASEWORKER)
    headers = factory.headers(intruder)

    response = client.get(f"/api/v1/cases/{case_id}", headers=headers)
    assert_problem(response, 404)
    # Read back in another session: the denial was committed although the request failed.
    row = one_row_of(app, response)
    assert row.decision == "deny"
    assert row.action == "case:view"
    assert (row.resource_type, row.resource_id) == ("case", case_id)
    assert row.case_id == uuid.UUID(case_id)
    assert (row.actor_type, row.actor_id, row.actor_org_id, row.actor_role) == (
        "user",
        intruder.id,
        intruder.org_id,
        "caseworker",
    )
    assert row.reason == "outside record scope"
    assert row.categories is None

    # A write attempt is refused, recorded, and changes nothing.
    patched = client.patch(
        f"/api/v1/cases/{case_id}",
        json={"contact": {"phone": "+380509999999"}},
        headers={**headers, "If-Match": etag},
    )
    assert_problem(patched, 404)
    row = one_row_of(app, patched)
    assert (row.action, row.decision, row.case_id) == ("case:update", "deny", uuid.UUID(case_id))
    assert client.get(f"/api/v1/cases/{case_id}", headers=owner).get_json()["contact"]["phone"] == (
        "+380501112233"
    )

    for path in ("notes", "access-log"):
        denied = client.get(f"/api/v1/cases/{case_id}/{path}", headers=headers)
        assert_problem(denied, 404)
        assert one_row_of(app, denied).decision == "deny"

    # A probe for an id that does not exist looks the same to the caller and is recorded.
    missing = client.get(f"/api/v1/cases/{uuid.uuid4()}", headers=headers)
    assert_problem(missing, 404)
    row = one_row_of(app, missing)
    assert (row.decision, row.actor_id) == ("deny", intruder.id)


def test_a_role_without_the_permission_is_refused_and_recorded(
    app: Any, client: Any, factory: Any
) -> None:
    org = factory.org()
    worker = factory.user(Role.CASEWORKER, org)
    _, case_id, etag = create_case(client, factory.headers(worker))

    dpo = factory.user(Role.DPO, org)
    create = client.post("/api/v1/cases", json={"case_type": "gbv"}, headers=factory.headers(dpo))
    assert_problem(create, 403)
    row = one_row_of(app, create)
    assert (row.action, row.decision, row.actor_id, row.actor_role, row.actor_org_id) == (
        "case:create",
        "deny",
        dpo.id,
        "dpo",
        org,
    )
    assert row.reason == "permission not granted to role"
    assert (row.resource_type, row.resource_id) == ("case", None)

    # Assigning needs a supervisor: the refusal names the case from the URL.
    assign = client.post(
        f"/api/v1/cases/{case_id}/assign",
        json={"assignee_id": str(worker.id)},
        headers={**factory.headers(worker), "If-Match": etag},
    )
    assert_problem(assign, 403)
    row = one_row_of(app, assign)
    assert (row.action, row.decision, row.case_id, row.actor_id) == (
        "case:assign",
        "deny",
        uuid.UUID(case_id),
        worker.id,
    )
    assert (row.resource_type, row.resource_id) == ("case", case_id)

    # Recording a consent needs case work: the refusal names the case the URL names, typed as
    # a case (the id is the case's, not a consent's).
    consent = client.post(
        f"/api/v1/cases/{case_id}/consents", json={}, headers=factory.headers(dpo)
    )
    assert_problem(consent, 403)
    row = one_row_of(app, consent)
    assert (row.action, row.resource_type, row.resource_id, row.case_id) == (
        "consent:record",
        "case",
        case_id,
        uuid.UUID(case_id),
    )

    # Without an id in the URL, the row names what the permission acts on, in the words the
    # administration's own rows use.
    org_create = client.post(
        "/api/v1/orgs", json={"name": "X", "org_type": "ngo"}, headers=factory.headers(worker)
    )
    assert_problem(org_create, 403)
    row = one_row_of(app, org_create)
    assert (row.action, row.resource_type, row.resource_id) == ("org:manage", "organisation", None)

    # An administrator may see metadata but never notes (content).
    admin = factory.user(Role.ORG_ADMIN, org)
    notes = client.get(f"/api/v1/cases/{case_id}/notes", headers=factory.headers(admin))
    assert_problem(notes, 403)
    row = one_row_of(app, notes)
    assert (row.action, row.decision, row.case_id) == ("case:read", "deny", uuid.UUID(case_id))


def test_api_client_rows_name_the_client_and_the_acting_officer(
    app: Any, client: Any, factory: Any
) -> None:
    police = factory.org(OrgType.POLICE)
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, police)
    token = client.post(
        "/api/v1/auth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert token.status_code == 200, token.get_json()
    bearer = {"Authorization": f"Bearer {token.get_json()['access_token']}"}
    client_pk = uuid.UUID(client.get("/api/v1/me", headers=bearer).get_json()["id"])
    headers = {**bearer, "X-Acting-Officer": "PC 4711 / Kyiv-North"}

    created, case_id, _ = create_case(client, headers, identity={"given_name": "B"})
    read = client.get(f"/api/v1/cases/{case_id}", headers=headers)
    for response, action in ((created, "case:create"), (read, "case:read")):
        row = one_row_of(app, response)
        assert row.action == action
        assert row.actor_type == "client"
        assert row.actor_id == client_pk
        assert row.actor_org_id == police
        assert row.actor_role == "police_officer"
        assert row.acting_officer == "PC 4711 / Kyiv-North"

    # A refused attempt names the officer too.
    denied = client.get(f"/api/v1/cases/{uuid.uuid4()}", headers=headers)
    assert_problem(denied, 404)
    row = one_row_of(app, denied)
    assert (row.decision, row.actor_id, row.acting_officer) == (
        "deny",
        client_pk,
        "PC 4711 / Kyiv-North",
    )

    # Without the header the row says so (no officer), rather than guessing.
    row = one_row_of(app, client.get(f"/api/v1/cases/{case_id}", headers=bearer))
    assert row.acting_officer is None

    # A user cannot claim to act for someone else: the header is ignored for users.
    officer = factory.user(Role.POLICE_OFFICER, police)
    user_read = client.get(
        f"/api/v1/cases/{case_id}",
        headers={**factory.headers(officer), "X-Acting-Officer": "somebody else"},
    )
    row = one_row_of(app, user_read)
    assert (row.actor_type, row.actor_id, row.acting_officer) == ("user", officer.id, None)


# ---- no personal values -------------------------------------------------------------------

CANARIES = {
    "given": "Canarygivenqx",
    "family": "Canaryfamilyzk",
    "alias": "Canaryaliasvw",
    "dob": "1987-03-14",
    "document": "CNRYDOC77881",
    "phone": "+380 50 765 4321",
    "phone_e164": "+380507654321",
    "phone_digits": "507654321",
    "email": "canary.mail.q9@example.org",
    "safe": "Canarysafecontact",
    "address": "Canarystreet 77",
    "place": "Canaryplace",
    "narrative": "Canarynarrativetext",
    "health": "Canaryhealthnote",
    "psych": "Canarypsychnote",
    "lawyer": "Canarylawyer",
    "proceedings": "Canaryproceedings",
    "residence": "Canaryresidence",
    "needs": "Canaryneeds",
    "plan": "Canaryplan",
    "note": "Canarytimelinenote",
    "patched": "Canarypatchedvalue",
    "search_miss": "Canarysearchmiss",
}


def test_audit_rows_hold_no_personal_values(app: Any, client: Any, factory: Any) -> None:
    c = CANARIES
    org = factory.org()
    headers = factory.headers(factory.user(Role.SUPERVISOR, org))
    _, case_id, etag = create_case(
        client,
        headers,
        case_type="thb",
        identity={
            "given_name": c["given"],
            "family_name": c["family"],
            "aliases": [c["alias"]],
            "date_of_birth": c["dob"],
            "documents": [{"type": "passport", "country": "UA", "number": c["document"]}],
        },
        contact={"phone": c["phone"], "email": c["email"], "safe_contact_notes": c["safe"]},
        location={"address": c["address"], "is_shelter": True},
        incident={"incident_place": c["place"], "narrative": c["narrative"]},
        health={"notes": c["health"]},
        psychosocial={"notes": c["psych"]},
        legal={"lawyer": c["lawyer"], "proceedings": c["proceedings"]},
        immigration={"residence_status": c["residence"]},
        needs={"assessment": c["needs"], "plan": c["plan"]},
    )
    patched = client.patch(
        f"/api/v1/cases/{case_id}",
        json={"identity": {"given_name": c["patched"]}, "contact": {"safe_contact_notes": "x"}},
        headers={**headers, "If-Match": etag},
    )
    assert patched.status_code == 200
    assert client.post(
        f"/api/v1/cases/{case_id}/notes",
        json={"category": "needs", "text": c["note"]},
        headers=headers,
    ).status_code == (201)
    responses = [
        client.get(f"/api/v1/cases/{case_id}", headers=headers),
        client.get(f"/api/v1/cases/{case_id}/notes", headers=headers),
        client.get("/api/v1/cases", headers=headers),
        client.get("/api/v1/cases", query_string={"name": c["family"]}, headers=headers),
        client.get("/api/v1/cases", query_string={"phone": c["phone"]}, headers=headers),
        client.get(
            "/api/v1/cases", query_string={"document_number": c["document"]}, headers=headers
        ),
        client.get("/api/v1/cases", query_string={"date_of_birth": c["dob"]}, headers=headers),
        client.get(
            "/api/v1/cases",
            query_string={"family_name": c["family"], "birth_year": 1987},
            headers=headers,
        ),
        client.get("/api/v1/cases", query_string={"name": c["search_miss"]}, headers=headers),
        client.get(f"/api/v1/cases/{case_id}/access-log", headers=headers),
    ]
    hits = [r for r in responses[3:8] if r.get_json()]
    assert len(hits) == 5, "every search should have found the canary case"
    assert responses[8].get_json() == []
    # Denied attempts carrying personal values in the URL and body are recorded too.
    intruder = factory.headers(factory.user(Role.CASEWORKER))
    client.patch(
        f"/api/v1/cases/{case_id}",
        json={"identity": {"given_name": c["given"]}},
        headers={**intruder, "If-Match": etag},
    )
    seal(app)

    with _db().engine_for(app).connect() as connection:
        columns = [column.name for column in AuditEvent.__table__.columns]
        stored = connection.execute(text(f"SELECT {', '.join(columns)} FROM audit_events")).all()
        connection.rollback()
    assert len(stored) >= 13
    dump = "\n".join(str(value) for row in stored for value in row if value is not None)
    needles = set(c.values()) | {v.lower() for v in c.values()} | {v.upper() for v in c.values()}
    leaked = sorted(needle for needle in needles if needle in dump)
    assert leaked == [], f"personal values in audit_events: {leaked}"


# ---- sealing ------------------------------------------------------------------------------


def _assert_contiguous_chain(app: Any) -> list[AuditEvent]:
    rows = audit_rows(app)
    sealed = sorted((r for r in rows if r.seq is not None), key=lambda r: r.seq or 0)
    assert [r.seq for r in sealed] == list(range(1, len(sealed) + 1))
    previous = service.GENESIS_HASH
    for row in sealed:
        assert row.seq is not None and row.hash is not None
        assert row.prev_hash == previous
        assert row.hash == service.chain_hash(previous, row, row.seq)
        assert row.sealed_at is not None
        previous = row.hash
    with _db().session_factory_for(app)() as s:
        head = s.get(AuditChainHead, 1)
    assert head is not None
    assert (head.last_seq, head.last_hash) == (len(sealed), previous)
    return sealed


def test_rows_are_sealed_after_the_response_is_sent(app: Any, client: Any, factory: Any) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    created, case_id, _ = create_case(client, headers)
    seal(app)

    # An unbuffered response has not been closed yet: the row is committed (it was written
    # before the response left) but not sealed; closing the response runs the sealer.
    response = client.get(f"/api/v1/cases/{case_id}", headers=headers)
    row = one_row_of(app, response)
    assert row.seq is None and row.hash is None and row.prev_hash is None
    response.close()
    row = one_row_of(app, response)
    assert row.seq is not None and row.prev_hash is not None
    assert row.prev_hash == one_row_of(app, created).hash
    assert row.hash == service.chain_hash(row.prev_hash, row, row.seq)
    assert row.sealed_at is not None

    # A buffered client closes the response itself: rows are sealed when it returns.
    listed = client.get("/api/v1/cases", headers=headers, buffered=True)
    assert all(r.seq is not None for r in rows_of(app, listed))
    denied = client.get(f"/api/v1/cases/{uuid.uuid4()}", headers=headers, buffered=True)
    assert one_row_of(app, denied).seq is not None
    _assert_contiguous_chain(app)


def test_a_failing_sealer_never_fails_the_request(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    _, case_id, _ = create_case(client, headers)

    def broken(_session: Any, _batch_size: int = 500) -> int:
        raise OperationalError("SELECT 1", {}, Exception("database is down"))

    monkeypatch.setattr(hooks, "seal_batch", broken)
    response = client.get(f"/api/v1/cases/{case_id}", headers=headers, buffered=True)
    assert response.status_code == 200
    assert one_row_of(app, response).seq is None  # left for the next seal
    monkeypatch.undo()

    assert seal(app) >= 1
    assert one_row_of(app, response).seq is not None
    assert verify(app).ok


def test_concurrent_requests_end_up_in_one_contiguous_chain(
    app: Any, client: Any, factory: Any
) -> None:
    threads_n, requests_n = 6, 6
    org = factory.org()
    headers = factory.headers(factory.user(Role.CASEWORKER, org))
    case_ids = [create_case(client, headers)[1] for _ in range(3)]
    users = [factory.headers(factory.user(Role.CASEWORKER, org)) for _ in range(threads_n)]
    intruder = factory.headers(factory.user(Role.CASEWORKER))
    seal(app)

    statuses: list[int] = []
    request_ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(threads_n + 1)

    def work(n: int) -> None:
        own_client = app.test_client()
        try:
            start.wait()
            for i in range(requests_n):
                case_id = case_ids[(n + i) % len(case_ids)]
                if i % 3 == 2:  # denials take the other path (their own transaction)
                    r = own_client.get(f"/api/v1/cases/{case_id}", headers=intruder, buffered=True)
                else:
                    r = own_client.get(f"/api/v1/cases/{case_id}", headers=users[n], buffered=True)
                with lock:
                    statuses.append(r.status_code)
                    request_ids.append(r.headers["X-Request-ID"])
        except BaseException as error:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(error)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    start.wait()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    assert sorted(set(statuses)) == [200, 404]
    assert len(request_ids) == threads_n * requests_n

    # Every request left exactly one row; the sealers that ran after each response chained
    # them (a round that found the head busy leaves its rows to the next round).
    rows = audit_rows(app, AuditEvent.request_id.in_(request_ids))
    assert len(rows) == threads_n * requests_n
    unsealed_by_hooks = sum(1 for r in rows if r.seq is None)
    assert unsealed_by_hooks < len(rows)
    if _db().engine_for(app).dialect.name == "sqlite":
        # SQLite serialises writers, so the last response's sealer always sees every row.
        assert unsealed_by_hooks == 0

    seal(app)
    sealed = _assert_contiguous_chain(app)
    assert len(sealed) == len(audit_rows(app))
    assert verify(app).ok


# ---- verify (CLI) -------------------------------------------------------------------------


@pytest.fixture
def chain(app: Any, client: Any, factory: Any) -> list[AuditEvent]:
    """Five sealed rows (create, read, update, read, list)."""
    headers = factory.headers(factory.user(Role.CASEWORKER))
    _, case_id, etag = create_case(client, headers)
    client.get(f"/api/v1/cases/{case_id}", headers=headers)
    client.patch(
        f"/api/v1/cases/{case_id}",
        json={"contact": {"email": "y@example.org"}},
        headers={**headers, "If-Match": etag},
    )
    client.get(f"/api/v1/cases/{case_id}", headers=headers)
    client.get("/api/v1/cases", headers=headers)
    seal(app)
    rows = sorted(audit_rows(app), key=lambda r: r.seq or 0)
    assert len(rows) == 5 and all(r.seq for r in rows)
    return rows


def test_verify_passes_on_a_clean_chain(runner: Any, chain: list[AuditEvent]) -> None:
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0, cli_output(result)
    assert "audit chain ok: 5 rows verified" in cli_output(result)


def test_verify_seals_pending_rows_first(app: Any, runner: Any, client: Any, factory: Any) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    create_case(client, headers)
    assert audit_rows(app)[0].seq is None
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0, cli_output(result)
    assert "1 rows verified" in cli_output(result)
    assert audit_rows(app)[0].seq == 1

    assert runner.invoke(args=["audit", "seal"]).output.strip() == "0 rows sealed"


def test_a_head_behind_its_sealed_rows_is_one_error_line(
    app: Any, runner: Any, client: Any, factory: Any
) -> None:
    """A data-only restore into a migrated schema left the head `db upgrade` wrote (seq 0)
    under rows sealed past it: sealing gave a sequence number already taken, and `audit seal`
    and `audit verify` ended in a traceback of SQL (found by review). One `error:` line that
    names the likely cause; nothing is changed."""
    headers = factory.headers(factory.user(Role.CASEWORKER))
    create_case(client, headers)
    assert runner.invoke(args=["audit", "seal"]).output.strip() == "1 rows sealed"
    raw_sql(
        app, "UPDATE audit_chain_head SET last_seq = 0, last_hash = :h WHERE id = 1", h="0" * 64
    )
    create_case(client, headers)
    for args in (["audit", "seal"], ["audit", "verify"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 1, cli_output(result)
        assert result.stderr.startswith("error: the audit chain's head is behind rows already")
        assert "Traceback" not in cli_output(result)
    assert [row.seq for row in audit_rows(app)] == [1, None]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("categories", "identity"),
        ("action", "case:view"),
        ("decision", "deny"),
        ("prev_hash", "0" * 64),
        ("hash", "f" * 64),
    ],
    ids=["categories", "action", "decision", "prev_hash", "hash"],
)
def test_verify_fails_on_an_altered_row_and_names_it(
    app: Any, runner: Any, chain: list[AuditEvent], column: str, value: str
) -> None:
    target = chain[2]
    raw_sql(
        app, f"UPDATE audit_events SET {column} = :value WHERE id = :id", value=value, id=target.id
    )

    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    output = cli_output(result)
    assert f"row id {target.id} (seq {target.seq})" in output
    assert "hash mismatch" in output
    outcome = verify(app)
    assert (outcome.ok, outcome.first_bad_id, outcome.checked) == (False, target.id, 2)


def test_verify_fails_when_a_middle_row_is_deleted(
    app: Any, runner: Any, chain: list[AuditEvent]
) -> None:
    raw_sql(app, "DELETE FROM audit_events WHERE id = :id", id=chain[2].id)

    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    output = cli_output(result)
    assert f"row id {chain[3].id} (seq {chain[3].seq})" in output
    assert "sequence gap" in output


def test_verify_fails_when_the_last_row_is_deleted(
    app: Any, runner: Any, chain: list[AuditEvent]
) -> None:
    raw_sql(app, "DELETE FROM audit_events WHERE id = :id", id=chain[-1].id)

    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1
    output = cli_output(result)
    assert "chain head does not match" in output
    assert f"row id {chain[-2].id}" in output


def test_verify_fails_when_a_hash_is_recomputed_for_an_altered_row(
    app: Any, runner: Any, chain: list[AuditEvent]
) -> None:
    """Re-hashing the altered row alone does not help: the next row's prev_hash breaks."""
    target = chain[1]
    assert target.prev_hash is not None and target.seq is not None
    target.categories = "health"
    forged = service.chain_hash(target.prev_hash, target, target.seq)
    raw_sql(
        app,
        "UPDATE audit_events SET categories = 'health', hash = :hash WHERE id = :id",
        hash=forged,
        id=target.id,
    )
    outcome = verify(app)
    assert (outcome.ok, outcome.first_bad_id) == (False, chain[2].id)
    assert runner.invoke(args=["audit", "verify"]).exit_code == 1


def test_sealing_and_verifying_in_small_batches(app: Any, client: Any, factory: Any) -> None:
    """Batches are an implementation detail: the chain and the verdict do not depend on them."""
    headers = factory.headers(factory.user(Role.CASEWORKER))
    _, case_id, _ = create_case(client, headers)
    for _ in range(4):
        client.get(f"/api/v1/cases/{case_id}", headers=headers)
    assert service.seal_all(_db().session_factory_for(app), batch_size=2) == 5
    rows = _assert_contiguous_chain(app)
    with _db().session_factory_for(app)() as s:
        for size in (1, 2, 3, 5, 100):
            outcome = service.verify_chain(s, batch_size=size)
            assert (outcome.ok, outcome.checked, outcome.unsealed) == (True, 5, 0), size

    raw_sql(app, "UPDATE audit_events SET reason = 'x' WHERE id = :id", id=rows[3].id)
    with _db().session_factory_for(app)() as s:
        for size in (1, 2, 3, 100):
            outcome = service.verify_chain(s, batch_size=size)
            assert (outcome.ok, outcome.first_bad_id) == (False, rows[3].id), size
    raw_sql(app, "DELETE FROM audit_events WHERE id = :id", id=rows[2].id)
    with _db().session_factory_for(app)() as s:
        for size in (1, 2, 3, 100):
            outcome = service.verify_chain(s, batch_size=size)
            assert (outcome.ok, outcome.first_bad_id) == (False, rows[3].id), size
            assert outcome.problem is not None and "sequence gap" in outcome.problem


# ---- anchors kept outside the database ----------------------------------------------------


def _rehash_from(app: Any, chain: list[AuditEvent], index: int, categories: str) -> None:
    """A superuser's rewrite the database alone cannot show: row `index` altered, it and
    every later row re-hashed, and the chain head moved to match."""
    prev_hash = chain[index].prev_hash
    assert prev_hash is not None
    chain[index].categories = categories
    for event in chain[index:]:
        assert event.seq is not None
        event.prev_hash = prev_hash
        event.hash = service.chain_hash(prev_hash, event, event.seq)
        raw_sql(
            app,
            "UPDATE audit_events SET categories = :categories, prev_hash = :prev, hash = :hash "
            "WHERE id = :id",
            categories=event.categories,
            prev=prev_hash,
            hash=event.hash,
            id=event.id,
        )
        prev_hash = event.hash
    raw_sql(app, "UPDATE audit_chain_head SET last_hash = :hash WHERE id = 1", hash=prev_hash)


def _cut_after(app: Any, chain: list[AuditEvent], keep: int) -> None:
    """Sealed rows cut from the end after the chain's row `keep`, the chain head rewritten
    to it."""
    raw_sql(app, "DELETE FROM audit_events WHERE seq > :seq", seq=chain[keep - 1].seq)
    raw_sql(
        app,
        "UPDATE audit_chain_head SET last_seq = :seq, last_hash = :hash WHERE id = 1",
        seq=chain[keep - 1].seq,
        hash=chain[keep - 1].hash,
    )


def test_verify_records_the_head_it_verified_in_the_anchor_file(
    app: Any, runner: Any, chain: list[AuditEvent], tmp_path: Any
) -> None:
    anchor_file = tmp_path / "audit-anchors"
    first = runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)])
    assert first.exit_code == 0, cli_output(first)
    assert f"head: seq 5 hash {chain[-1].hash}" in first.output
    assert "0 anchors checked" in first.output
    lines = anchor_file.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"5 {chain[-1].hash} ")

    # Unchanged chain: checked, nothing appended. A longer chain: its head is appended.
    again = runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)])
    assert again.exit_code == 0, cli_output(again)
    assert "1 anchors checked" in again.output
    assert anchor_file.read_text().splitlines() == lines


def test_anchors_show_rows_cut_from_the_end_with_the_head_rewritten(
    app: Any, runner: Any, chain: list[AuditEvent], tmp_path: Any
) -> None:
    anchor_file = tmp_path / "audit-anchors"
    assert runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)]).exit_code == 0
    recorded = anchor_file.read_text()
    _cut_after(app, chain, keep=3)

    # The database alone cannot tell this chain from one that ends at row 3.
    assert (verify(app).ok, verify(app).checked) == (True, 3)
    result = runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)])
    assert result.exit_code == 1
    output = cli_output(result)
    assert "the anchored row seq 5 is missing (rows removed at the end)" in output
    assert f"row id {chain[2].id} (seq 3)" in output
    assert anchor_file.read_text() == recorded  # a failed verification records nothing


@pytest.mark.parametrize(
    "anchored", [1, 2, 4], ids=["anchor-before-the-rewrite", "at-it", "after-it"]
)
def test_anchors_show_a_chain_rehashed_from_some_row_on(
    app: Any, runner: Any, chain: list[AuditEvent], tmp_path: Any, anchored: int
) -> None:
    anchor_file = tmp_path / "audit-anchors"
    old = chain[anchored]
    anchor_file.write_text(f"# kept elsewhere\n{old.seq} {old.hash} 2026-11-30T00:00:00Z\n")
    _rehash_from(app, chain, 2, "health")

    assert verify(app).ok  # consistent in itself
    result = runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)])
    if anchored < 2:  # the anchored row is before the rewrite: still as it was
        assert result.exit_code == 0, cli_output(result)
        assert "1 anchors checked" in result.output
        return
    assert result.exit_code == 1
    output = cli_output(result)
    assert f"row id {old.id} (seq {old.seq})" in output
    assert "hash differs from the anchor kept outside the database" in output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("5 abc\n", "line 1 of"),
        ("0 " + "a" * 64 + "\n", "line 1 of"),
        ("# note\n3 " + "A" * 64 + "\n", "line 2 of"),
        ("3 " + "a" * 64 + "\n3 " + "b" * 64 + "\n", "line 2 of"),
        ("3 " + "a" * 64 + " x y\n", "line 1 of"),
    ],
    ids=["short-hash", "seq-zero", "upper-case", "contradicting", "extra-field"],
)
def test_an_unreadable_anchor_file_is_refused_before_anything_is_done(
    app: Any, runner: Any, client: Any, factory: Any, tmp_path: Any, content: str, message: str
) -> None:
    create_case(client, factory.headers(factory.user(Role.CASEWORKER)))
    anchor_file = tmp_path / "audit-anchors"
    anchor_file.write_text(content)
    result = runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)])
    assert result.exit_code == 2
    assert message in cli_output(result) and "--anchors" in cli_output(result)
    assert anchor_file.read_text() == content
    assert [row.seq for row in audit_rows(app)] == [None]  # not even sealed


def test_an_anchor_file_in_a_missing_directory_is_refused_before_anything_is_done(
    app: Any, runner: Any, client: Any, factory: Any, tmp_path: Any
) -> None:
    create_case(client, factory.headers(factory.user(Role.CASEWORKER)))
    result = runner.invoke(
        args=["audit", "verify", "--anchors", str(tmp_path / "no-such-dir" / "anchors")]
    )
    assert result.exit_code == 2, cli_output(result)
    assert "is not a directory" in cli_output(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert [row.seq for row in audit_rows(app)] == [None]


def test_an_anchor_appended_after_an_unterminated_line_stays_a_line_of_its_own(
    runner: Any, chain: list[AuditEvent], tmp_path: Any
) -> None:
    anchor_file = tmp_path / "audit-anchors"
    anchor_file.write_text(f"{chain[1].seq} {chain[1].hash}")  # no final line break
    result = runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)])
    assert result.exit_code == 0, cli_output(result)
    lines = anchor_file.read_text().splitlines()
    assert lines[0] == f"{chain[1].seq} {chain[1].hash}"
    assert lines[1].startswith(f"5 {chain[-1].hash} ")
    assert runner.invoke(args=["audit", "verify", "--anchors", str(anchor_file)]).exit_code == 0


# ---- verify (HTTP) ------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.DPO, Role.PLATFORM_ADMIN])
def test_verify_endpoint_for_dpo_and_platform_admin(
    app: Any, client: Any, factory: Any, chain: list[AuditEvent], role: Role
) -> None:
    user = factory.user(role, factory.org(OrgType.PLATFORM))
    headers = factory.headers(user)

    clean = client.get("/api/v1/audit/verify", headers=headers)
    assert clean.status_code == 200, clean.get_json()
    body = clean.get_json()
    assert body["ok"] is True
    assert body["checked"] == 5
    assert body["first_bad_id"] is None
    row = one_row_of(app, clean)  # the verification itself is on the record
    assert (row.action, row.resource_type, row.decision) == ("audit:verify", "audit", "allow")
    assert (row.actor_id, row.actor_role, row.actor_org_id) == (user.id, role.value, user.org_id)
    assert details(row) == {
        "checked": 5,
        "ok": True,
        "anchored": False,
        "after_seq": None,
        "complete": True,
    }
    assert (body["last_seq"], body["last_hash"]) == (5, chain[-1].hash)

    raw_sql(app, "UPDATE audit_events SET categories = 'legal' WHERE id = :id", id=chain[3].id)
    broken = client.get("/api/v1/audit/verify", headers=headers)
    assert broken.status_code == 200
    body = broken.get_json()
    assert body["ok"] is False
    assert (body["first_bad_id"], body["first_bad_seq"]) == (chain[3].id, chain[3].seq)
    assert "hash mismatch" in body["problem"]
    assert details(one_row_of(app, broken)) == {
        "checked": 3,
        "ok": False,
        "anchored": False,
        "after_seq": None,
        "complete": True,
    }
    assert (body["last_seq"], body["last_hash"]) == (None, None)


def test_an_organisations_dpo_does_not_verify_the_platform_chain(
    app: Any, client: Any, factory: Any, chain: list[AuditEvent]
) -> None:
    """The chain holds every organisation's rows: verifying it re-hashed them all in one
    request (a minute at a million rows) and told an organisation's DPO the platform's
    audit volume (`checked`, `last_seq`). The platform organisation's officers verify it;
    another organisation's DPO is refused on the record."""
    dpo = factory.user(Role.DPO, factory.org(OrgType.NGO))
    refused = client.get("/api/v1/audit/verify", headers=factory.headers(dpo))
    body = assert_problem(refused, 403)
    assert "checked" not in body and "last_seq" not in body
    row = one_row_of(app, refused)
    assert (row.action, row.resource_type, row.decision, row.reason, row.actor_id) == (
        "audit:verify",
        "audit",
        "deny",
        "platform organisation only",
        dpo.id,
    )


def test_verify_endpoint_checks_an_anchor_given_back(
    app: Any, client: Any, factory: Any, chain: list[AuditEvent]
) -> None:
    headers = factory.headers(factory.user(Role.DPO, factory.org(OrgType.PLATFORM)))
    first = client.get("/api/v1/audit/verify", headers=headers).get_json()
    anchor = {"anchor_seq": first["last_seq"], "anchor_hash": first["last_hash"]}
    assert first["last_seq"] == 5

    held = client.get("/api/v1/audit/verify", query_string=anchor, headers=headers)
    assert held.status_code == 200 and held.get_json()["ok"] is True
    assert details(one_row_of(app, held))["anchored"] is True
    # The chain grew by the verifications' own rows; the anchor is a row inside it now.
    assert held.get_json()["last_seq"] == 6

    _cut_after(app, chain, keep=3)
    cut = client.get("/api/v1/audit/verify", query_string=anchor, headers=headers).get_json()
    assert cut["ok"] is False
    assert cut["problem"] == "the anchored row seq 5 is missing (rows removed at the end)"
    assert details(audit_rows(app)[-1]) == {
        "checked": 4,
        "ok": False,
        "anchored": True,
        "after_seq": None,
        "complete": True,
    }

    # Plain verification cannot tell: the verifications' own rows are chained on after seq 3
    # (as 4 and 5 now). The anchor still can: seq 5 is not the row it was.
    assert client.get("/api/v1/audit/verify", headers=headers).get_json()["ok"] is True
    refilled = client.get("/api/v1/audit/verify", query_string=anchor, headers=headers)
    assert (refilled.get_json()["ok"], refilled.get_json()["first_bad_seq"]) == (False, 5)
    assert refilled.get_json()["problem"].startswith("hash differs from the anchor")


@pytest.mark.parametrize(
    "query",
    [
        {"anchor_seq": 5},
        {"anchor_hash": "a" * 64},
        {"anchor_seq": 0, "anchor_hash": "a" * 64},
        {"anchor_seq": 5, "anchor_hash": "A" * 64},
        {"anchor_seq": 5, "anchor_hash": "a" * 64 + "\n"},
        {"anchor_seq": "x", "anchor_hash": "a" * 64},
    ],
    ids=["seq-alone", "hash-alone", "seq-zero", "upper-case", "line-break", "not-a-number"],
)
def test_verify_endpoint_refuses_a_malformed_anchor(
    app: Any, client: Any, factory: Any, chain: list[AuditEvent], query: dict[str, Any]
) -> None:
    headers = factory.headers(factory.user(Role.DPO, factory.org(OrgType.PLATFORM)))
    response = client.get("/api/v1/audit/verify", query_string=query, headers=headers)
    assert_problem(response, 422)
    assert not [row for row in audit_rows(app) if row.action == "audit:verify"]


def test_verify_endpoint_refuses_other_roles_and_anonymous(
    app: Any, client: Any, factory: Any
) -> None:
    worker = factory.user(Role.CASEWORKER)
    denied = client.get("/api/v1/audit/verify", headers=factory.headers(worker))
    assert_problem(denied, 403)
    row = one_row_of(app, denied)
    assert (row.action, row.decision, row.actor_id) == ("audit:verify", "deny", worker.id)

    for role in (Role.SUPERVISOR, Role.ORG_ADMIN):
        assert_problem(
            client.get("/api/v1/audit/verify", headers=factory.headers(factory.user(role))), 403
        )
    assert_problem(client.get("/api/v1/audit/verify"), 401)


# ---- access log ---------------------------------------------------------------------------


def test_caseworker_sees_who_accessed_their_case_and_nothing_else(
    app: Any, client: Any, factory: Any
) -> None:
    org = factory.org()
    worker = factory.user(Role.CASEWORKER, org)
    colleague = factory.user(Role.SUPERVISOR, org)
    headers, colleague_headers = factory.headers(worker), factory.headers(colleague)
    _, mine, _ = create_case(client, headers, identity={"given_name": "C"})
    _, other, _ = create_case(client, headers)
    client.get(f"/api/v1/cases/{mine}", headers=colleague_headers)
    client.get(f"/api/v1/cases/{other}", headers=colleague_headers)
    client.get(f"/api/v1/cases/{other}/notes", headers=headers)
    client.get("/api/v1/cases", headers=headers)  # a list row for each case
    intruder = factory.user(Role.CASEWORKER)
    client.get(f"/api/v1/cases/{mine}", headers=factory.headers(intruder))

    before = audit_rows(app, AuditEvent.case_id == uuid.UUID(mine))
    response = client.get(f"/api/v1/cases/{mine}/access-log", headers=headers)
    assert response.status_code == 200
    entries = response.get_json()
    assert all(set(entry) == ACCESS_LOG_KEYS for entry in entries)
    # Exactly this case's rows, newest first: no row of the other case.
    assert [(e["action"], e["actor_id"], e["decision"]) for e in entries] == [
        (r.action, str(r.actor_id), r.decision) for r in reversed(before)
    ]
    assert [(e["action"], e["actor_id"]) for e in entries[:2]] == [
        ("case:view", str(intruder.id)),
        ("case:read", str(worker.id)),
    ]
    assert entries[0]["actor_org_id"] == str(intruder.org_id)
    assert entries[0]["decision"] == "deny"
    assert ("case:read", str(colleague.id), "supervisor") in {
        (e["action"], e["actor_id"], e["actor_role"]) for e in entries
    }
    assert entries[-1]["action"] == "case:create"
    assert entries[-1]["categories"] == ["identity"]

    # Paging through the log with its cursor yields the same entries.
    first = client.get(f"/api/v1/cases/{mine}/access-log?limit=2", headers=headers)
    assert len(first.get_json()) == 2
    assert 'rel="next"' in first.headers["Link"]

    # Another organisation's user cannot read the log (and is not told the case exists).
    assert_problem(
        client.get(f"/api/v1/cases/{mine}/access-log", headers=factory.headers(intruder)), 404
    )


def test_org_dpo_may_read_the_access_log_but_no_case_content(
    app: Any, client: Any, factory: Any
) -> None:
    org = factory.org()
    _, case_id, _ = create_case(client, factory.headers(factory.user(Role.CASEWORKER, org)))
    dpo_headers = factory.headers(factory.user(Role.DPO, org))
    log = client.get(f"/api/v1/cases/{case_id}/access-log", headers=dpo_headers)
    assert log.status_code == 200
    assert [e["action"] for e in log.get_json()] == ["case:create"]
    read = client.get(f"/api/v1/cases/{case_id}", headers=dpo_headers)
    assert read.status_code == 200
    # The DPO sees metadata only, so the row says `case:view` with no category.
    row = one_row_of(app, read)
    assert (row.action, row.categories) == ("case:view", None)


def test_canonical_form_and_chain_hash_are_pinned():
    # Every stored chain is verified against this exact byte form: changing it (key order,
    # separators, escaping, timestamp format) would make every sealed row fail verification.
    from types import SimpleNamespace

    event = SimpleNamespace(
        id=42,
        occurred_at=datetime(2026, 11, 29, 8, 0, 0, 123456, tzinfo=UTC),
        actor_type="user",
        actor_id=uuid.UUID("11111111-2222-3333-4444-555555555555"),
        actor_org_id=uuid.UUID("66666666-7777-8888-9999-000000000000"),
        actor_role="caseworker",
        acting_officer=None,
        action="case:read",
        resource_type="case",
        resource_id="abc",
        case_id=uuid.UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        categories="identity,contact",
        purpose=None,
        decision="allow",
        reason=None,
        legal_basis=None,
        request_id="r1",
        details='{"via":"list"}',
    )
    assert service._canonical(event, 7) == (
        b'{"acting_officer":null,"action":"case:read",'
        b'"actor_id":"11111111-2222-3333-4444-555555555555",'
        b'"actor_org_id":"66666666-7777-8888-9999-000000000000","actor_role":"caseworker",'
        b'"actor_type":"user","case_id":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",'
        b'"categories":"identity,contact","decision":"allow",'
        b'"details":"{\\"via\\":\\"list\\"}","id":42,"legal_basis":null,'
        b'"occurred_at":"2026-11-29T08:00:00.123456+00:00","purpose":null,"reason":null,'
        b'"request_id":"r1","resource_id":"abc","resource_type":"case","seq":7}'
    )
    assert (
        service.chain_hash(service.GENESIS_HASH, event, 7)
        == "26dfc83ae20f4e8c23704a5c5e8a0ec113666eebb63b7c370948379150c3e762"
    )


def test_a_page_of_rows_is_stored_as_rows_recorded_one_by_one_would_be(app: Any) -> None:
    # record_many writes a page in one statement on PostgreSQL (a JSON array of rows) and
    # with an executemany elsewhere: every column must come out as record() writes it,
    # non-ASCII, quotes, nulls, timestamps with microseconds and details included.
    from referral_api.access.actor import Actor, ActorKind

    actor = Actor(
        kind=ActorKind.USER,
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        org_type=OrgType.NGO,
        role=Role.CASEWORKER,
        acting_officer='Officer "Ö\u0308" 7',
        request_id=f"page-{uuid.uuid4()}",
    )
    entries = [
        {
            "resource_id": uuid.uuid4(),
            "case_id": uuid.uuid4(),
            "categories": ["identity", "contact"][: 1 + i % 2],
            "reason": None if i % 2 else "naïve \\ reason",
            "details": {"via": "search", "n": i, "ünï": "\u0645"},
        }
        for i in range(5)
    ]
    with _db().session_factory_for(app)() as s:
        service.record_many(
            s, actor, "case:read", resource_type="case", rows=entries, none_shown={}
        )
        for entry in entries:
            service.record(s, actor, "case:read", resource_type="case", **entry)
        s.commit()
    rows = audit_rows(app, AuditEvent.request_id == actor.request_id)
    assert len(rows) == 10
    columns = [c for c in service._CANONICAL_FIELDS if c not in ("id", "occurred_at")]

    def stored(row: AuditEvent) -> tuple[Any, ...]:
        return tuple(getattr(row, c) for c in columns)

    paged, one_by_one = rows[:5], rows[5:]
    assert sorted(map(stored, paged), key=repr) == sorted(map(stored, one_by_one), key=repr)
    assert {r.case_id for r in paged} == {e["case_id"] for e in entries}
    for row in paged:
        assert row.occurred_at.tzinfo is not None
        assert row.seq is None and row.hash is None  # unsealed, like any new row
    assert json.loads(paged[0].details)["ünï"] == "\u0645"


def test_every_id_a_url_names_has_an_audit_resource_type(app: Any) -> None:
    """A refusal by role records the id its URL names (smorest._denial_entry), typed from
    URL_ID_TYPES: a route naming an id under a new name must add it there, or its refusals
    would be recorded without the id."""
    from referral_api.smorest import URL_ID_TYPES

    named = {
        argument
        for rule in app.url_map.iter_rules()
        for argument in rule.arguments
        if argument.endswith(("_id", "_pk"))
    }
    assert named, "no route names an id"
    assert named <= set(URL_ID_TYPES), sorted(named - set(URL_ID_TYPES))
