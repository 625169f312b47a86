"""New cases written without the unit of work (`cases.models.insert_cases`, the path of
`POST /cases`, the demo seed and the benchmark seeder) store exactly what the unit of work
stores for a `Case` added to a session, in one statement per case on PostgreSQL, and a
failed insert leaves nothing behind."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError

from referral_api.access.roles import OrgType, Role

PERSON: dict[str, Any] = {
    "given_name": "Olena",
    "family_name": "Kovalenko",
    "aliases": ["Lena"],
    "date_of_birth": "1994-03-02",
    "phone": "+380501234567",
    "documents": [{"type": "passport", "country": "UA", "number": "FE123456"}],
    "address": "Shelter room 12",
    "is_shelter": True,
    "exploitation_types": ["labour"],
}


def rows(app: Any, statement: Any) -> list[tuple[Any, ...]]:
    """Rows of raw SQL text or a Core statement (which binds ids on either database)."""
    from referral_api.extensions import db

    if isinstance(statement, str):
        statement = text(statement)
    with db.engine_for(app).connect() as connection:
        return [tuple(row) for row in connection.execute(statement)]


@contextlib.contextmanager
def captured_statements(engine: Any) -> Iterator[list[str]]:
    """The SQL statements `engine` executes inside the block, whitespace collapsed."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def build(org_id: uuid.UUID, code: str) -> Any:
    from referral_api.cases.models import Case, CaseStatus, CaseType, NrmStage, RiskLevel

    case = Case(
        id=uuid.uuid4(),
        case_code=code,
        org_id=org_id,
        case_type=CaseType.THB,
        status=CaseStatus.OPEN,
        risk_level=RiskLevel.HIGH,
        nrm_stage=NrmStage.IDENTIFIED,
    )
    for attribute, value in PERSON.items():
        setattr(case, attribute, value)
    return case


@pytest.fixture
def org_id(factory: Any) -> uuid.UUID:
    return factory.org(OrgType.NGO)  # type: ignore[no-any-return]


def test_insert_cases_stores_what_the_unit_of_work_stores(app: Any, org_id: uuid.UUID) -> None:
    from referral_api.cases.models import (
        Case,
        CaseSearchIndex,
        CaseStatus,
        CaseStatusChange,
        insert_cases,
    )
    from referral_api.extensions import db

    actor_id = uuid.uuid4()
    with db.session_factory_for(app)() as session:
        by_orm = build(org_id, "THB-ORMA-AAAA")
        session.add(by_orm)
        session.flush()
        single = build(org_id, "THB-ONEA-AAAA")
        insert_cases(session, [single], actor_id=actor_id)
        batch = [build(org_id, "THB-TWOA-AAAA"), build(org_id, "THB-TWOB-AAAA")]
        insert_cases(session, batch, actor_id=None)
        session.commit()
    ids = [by_orm.id, single.id, *(case.id for case in batch)]
    inserted = ids[1:]

    # The transient instances carry what the response shows: defaults and plaintext.
    assert single.version == 1 and single.key_version == 1 and single.created_at is not None
    assert single.given_name == "Olena" and single.email is None

    # Same metadata columns, one data key (version 1) each under the same org key version.
    metadata = rows(
        app,
        "SELECT c.id, c.version, c.key_version, c.restricted, c.erased, "
        "c.created_at IS NOT NULL AND c.updated_at IS NOT NULL, k.version, k.org_key_version "
        "FROM cases c JOIN case_keys k ON k.case_id = c.id",
    )
    assert sorted(tuple(map(int, m[1:])) for m in metadata) == [(1, 1, 0, 0, 1, 1, 1)] * 4
    assert {uuid.UUID(str(m[0])) for m in metadata} == set(ids)

    # Every category column has a ciphertext (format 4), its fields null or not, and no
    # plaintext is stored; the per-field columns of formats 1-3 stay empty.
    columns = list(Case.__encrypted_columns__)
    assert len(columns) == 10
    per_field = [Case.__table__.c[name] for name in Case.__encrypted_fields__]
    for case_id in ids:
        (blobs,) = rows(
            app,
            select(*(Case.__table__.c[name] for name in columns)).where(Case.id == case_id),
        )
        assert all(isinstance(blob, bytes) and len(blob) > 34 for blob in blobs)
        assert {bytes(blob)[0] for blob in blobs} == {4}
        assert not any(b"Olena" in bytes(blob) or b"Shelter" in bytes(blob) for blob in blobs)
        assert rows(app, select(*per_field).where(Case.id == case_id)) == [(None,) * 29]

    # The same person gives the same blind-index entries, whichever path wrote them.
    def entries(case_id: uuid.UUID) -> list[tuple[Any, ...]]:
        index = CaseSearchIndex
        return sorted(
            rows(
                app,
                select(index.field, index.key_version, index.value).where(index.case_id == case_id),
            )
        )

    assert len(entries(by_orm.id)) >= 5
    assert all(entries(case_id) == entries(by_orm.id) for case_id in inserted)

    # Every inserted case starts its status history: none → open, by the actor given.
    change = CaseStatusChange
    history = rows(
        app,
        select(
            change.case_id, change.from_status, change.to_status, change.reason, change.actor_id
        ),
    )
    assert sorted(history, key=lambda h: inserted.index(h[0])) == [
        (single.id, None, CaseStatus.OPEN, None, actor_id),
        (batch[0].id, None, CaseStatus.OPEN, None, None),
        (batch[1].id, None, CaseStatus.OPEN, None, None),
    ]

    # Read back in a new session, every field of every case decrypts to what was written.
    fields = list(Case.__encrypted_fields__)
    with db.session_factory_for(app)() as session:
        for case_id in ids:
            case = session.get(Case, case_id)
            assert case is not None
            assert {name: getattr(case, name) for name in fields} == {
                name: PERSON.get(name) for name in fields
            }


def test_one_case_is_one_statement_on_postgresql(app: Any, org_id: uuid.UUID) -> None:
    """In a transaction of its own, a new case costs one read (the organisation's key and
    index-key versions, together) and, on PostgreSQL, one write."""
    from referral_api.cases.models import insert_cases
    from referral_api.extensions import db

    engine = db.engine_for(app)
    with db.session_factory_for(app)() as session:
        insert_cases(session, [build(org_id, "THB-WARM-AAAA")], actor_id=None)  # org keys
        session.commit()
    with (
        captured_statements(engine) as statements,
        db.session_factory_for(app)() as session,
    ):
        insert_cases(session, [build(org_id, "THB-ONEA-AAAA")], actor_id=None)
        session.commit()
    statements = [s for s in statements if not s.upper().startswith(("BEGIN", "COMMIT"))]
    versions, *writes = statements
    assert versions.startswith("SELECT") and "org_key_version" in versions
    assert "FROM org_keys" in versions and "FROM index_keys" in versions
    if engine.dialect.name == "postgresql":
        assert len(writes) == 1 and writes[0].startswith("WITH")
        for table in ("cases", "case_keys", "case_status_changes", "case_search_index"):
            assert f"INSERT INTO {table} " in writes[0]
    else:
        assert [s.split()[2] for s in writes] == [
            "cases",
            "case_keys",
            "case_status_changes",
            "case_search_index",
        ]


def test_a_failed_insert_leaves_nothing_behind(app: Any, org_id: uuid.UUID) -> None:
    from referral_api.cases.models import insert_cases
    from referral_api.extensions import db

    with db.session_factory_for(app)() as session:
        insert_cases(session, [build(org_id, "THB-TAKE-NAAA")], actor_id=None)
        session.commit()
    for batch_size in (1, 2):
        with db.session_factory_for(app)() as session:
            # The last case's code is taken: the whole batch fails.
            batch = [build(org_id, f"THB-NEWA-AAA{n}") for n in range(batch_size - 1)]
            batch.append(build(org_id, "THB-TAKE-NAAA"))
            with pytest.raises(IntegrityError):
                insert_cases(session, batch, actor_id=None)
            session.rollback()
    for table in ("cases", "case_keys", "case_status_changes"):
        assert rows(app, f"SELECT count(*) FROM {table}") == [(1,)]
    assert rows(app, "SELECT count(DISTINCT case_id) FROM case_search_index") == [(1,)]


def test_post_writes_one_case_through_insert_cases(app: Any, factory: Any) -> None:
    """The endpoint's case is the one `insert_cases` wrote: history by the caller, the
    response's ETag at version 1, its plaintext as sent."""
    from referral_api.cases.models import CaseStatus, CaseStatusChange
    from referral_api.smorest import etag_for

    org = factory.org(OrgType.NGO)
    user = factory.user(Role.CASEWORKER, org)
    response = app.test_client().post(
        "/api/v1/cases",
        json={"case_type": "thb", "identity": {"given_name": "Olena"}},
        headers=factory.headers(user),
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["identity"]["given_name"] == "Olena"
    assert response.headers["ETag"] == etag_for("case", uuid.UUID(body["id"]), 1)
    change = CaseStatusChange
    assert rows(
        app,
        select(change.to_status, change.actor_id).where(change.case_id == uuid.UUID(body["id"])),
    ) == [(CaseStatus.OPEN, user.id)]


def test_a_request_reads_its_key_versions_with_its_actor(app: Any, factory: Any) -> None:
    """The actor's query carries the organisation's key and index-key versions: a POST and
    a search ask no separate statement for them (a request is one round trip shorter),
    and what they write and search under is still right (a POST during an index-key
    rotation dual-writes: tests/test_key_rotation.py)."""
    from referral_api.extensions import db

    org = factory.org(OrgType.NGO)
    headers = factory.headers(factory.user(Role.CASEWORKER, org))
    client = app.test_client()
    body = {"case_type": "thb", "identity": {"given_name": "Olena", "family_name": "Kovalenko"}}
    assert client.post("/api/v1/cases", json=body, headers=headers).status_code == 201
    engine = db.engine_for(app)
    with captured_statements(engine) as statements:
        created = client.post("/api/v1/cases", json=body, headers=headers)
        found = client.get("/api/v1/cases", query_string={"name": "Olena"}, headers=headers)
    assert created.status_code == 201 and found.status_code == 200
    assert len(found.get_json()) == 2
    reads = [s for s in statements if "FROM org_keys" in s or "FROM index_keys" in s]
    assert len(reads) == 2  # one per request: its actor's query
    # Both are the actor's query: no request asks for the key versions on its own.
    assert all("FROM auth_sessions" in s or "JOIN auth_sessions" in s for s in reads)


@pytest.mark.parametrize("with_audit_row", [False, True])
def test_the_one_case_statement_stays_within_psycopgs_conversion_cache(
    with_audit_row: bool,
) -> None:
    """psycopg caches a statement's conversion only under 50 parameters and 4,096 bytes of
    SQL, and dumps array parameters element by element in Python: the one-case INSERT keeps
    under both limits, and its only arrays are the entries' field, key version and value
    (the case's ciphertexts travel as one bytea parameter each, its id and organisation
    once, its audit row as one JSON parameter)."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_PARAMS
    from sqlalchemy.dialects import postgresql

    from referral_api.cases.models import Case, _insert_one_case

    statement = _insert_one_case(with_audit_row)
    compiled = statement.compile(dialect=postgresql.dialect(paramstyle="pyformat"))
    sql = str(compiled)
    assert len(compiled.params) < MAX_CACHED_STATEMENT_PARAMS
    assert len(sql.encode()) < MAX_CACHED_STATEMENT_LENGTH
    arrays = {
        name for name in compiled.params if "[]" in sql.split(f"%({name})s", 1)[1].split(" ", 1)[0]
    }
    assert arrays == {"entry_fields", "entry_key_versions", "entry_values"}
    assert {f"case_{column}" for column in Case.__encrypted_columns__} <= set(compiled.params)
    assert ("audit_row" in compiled.params) is with_audit_row
    assert ("INSERT INTO audit_events" in sql) is with_audit_row


def test_post_writes_the_case_and_its_audit_row_together(
    app: Any, client: Any, auth_headers: Any
) -> None:
    """POST /cases writes its audit row with the case: in the same statement on PostgreSQL
    (no INSERT of its own), by the unit's separate INSERT elsewhere; the row is what
    `audit.record` writes for a creation, and the chain seals and verifies over it."""
    from referral_api.audit import service as audit
    from referral_api.audit.models import AuditEvent
    from referral_api.extensions import db

    headers = auth_headers(Role.CASEWORKER)
    warm = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    assert warm.status_code == 201
    engine = db.engine_for(app)
    with captured_statements(engine) as statements:
        created = client.post(
            "/api/v1/cases",
            json={"case_type": "gbv", "identity": {"given_name": "Olena"}},
            headers=headers,
        )
    assert created.status_code == 201, created.get_json()
    case_id = uuid.UUID(created.get_json()["id"])
    audit_inserts = [s for s in statements if "INSERT INTO audit_events" in s]
    assert len(audit_inserts) == 1
    if engine.dialect.name == "postgresql":
        assert "INSERT INTO cases " in audit_inserts[0]
    else:
        assert audit_inserts[0].startswith("INSERT INTO audit_events")

    with db.session_factory_for(app)() as session:
        (row,) = session.scalars(select(AuditEvent).where(AuditEvent.case_id == case_id)).all()
        assert (row.action, row.resource_type, row.resource_id, row.decision) == (
            "case:create",
            "case",
            str(case_id),
            "allow",
        )
        assert row.categories == "identity" and row.actor_type == "user"
        assert row.actor_id is not None and row.actor_org_id is not None
        assert row.request_id and row.occurred_at is not None and row.seq is None
    with db.session_factory_for(app)() as session:
        while audit.seal_pending(session):
            session.commit()
        session.commit()
    with db.session_factory_for(app)() as session:
        result = audit.verify_chain(session)
        assert result.ok and result.unsealed == 0, result


def test_a_case_code_already_taken_is_drawn_again(
    app: Any, client: Any, auth_headers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Case codes are random: a new case whose code is taken is created again, whole, under
    a new code (nothing of the failed attempt stays); a failure of another kind is not
    retried."""
    from referral_api.audit.models import AuditEvent
    from referral_api.cases import service
    from referral_api.cases.models import Case
    from referral_api.extensions import db

    headers = auth_headers(Role.CASEWORKER)
    first = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    assert first.status_code == 201
    taken = first.get_json()["case_code"]
    codes = iter([taken, taken, "THB-NEWC-ODE2"])
    monkeypatch.setattr(service, "new_case_code", lambda _type: next(codes))
    second = client.post(
        "/api/v1/cases",
        json={"case_type": "thb", "identity": {"given_name": "Olena"}},
        headers=headers,
    )
    assert second.status_code == 201, second.get_json()
    assert second.get_json()["case_code"] == "THB-NEWC-ODE2"
    assert second.get_json()["identity"]["given_name"] == "Olena"
    with db.session_factory_for(app)() as session:
        assert sorted(session.scalars(select(Case.case_code))) == sorted([taken, "THB-NEWC-ODE2"])
        created = session.scalars(
            select(AuditEvent.case_id).where(AuditEvent.action == "case:create")
        ).all()
        assert sorted(map(str, created)) == sorted(
            [first.get_json()["id"], second.get_json()["id"]]
        )
        from referral_api.cases.models import CaseSearchIndex

        index_cases = set(session.scalars(select(CaseSearchIndex.case_id)))
        assert index_cases <= {
            uuid.UUID(first.get_json()["id"]),
            uuid.UUID(second.get_json()["id"]),
        }

    # Always taken: after three draws the request fails, and nothing is stored.
    monkeypatch.setattr(service, "new_case_code", lambda _type: taken)
    failed = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    assert failed.status_code == 500
    assert failed.headers["Content-Type"].startswith("application/problem+json")
    with db.session_factory_for(app)() as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 2
