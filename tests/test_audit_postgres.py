"""On PostgreSQL the database itself keeps the audit trail append-only (DESIGN.md §9).

The trigger of migration 0002 refuses DELETE, TRUNCATE and every UPDATE except the sealing
step's (seq, prev_hash, hash, sealed_at of an unsealed row, nothing else); 0019's refuses an
INSERT that sets any of those four. These tests use
the application's own engine, without the replica role that only test teardown (as a
superuser) may switch on. SQLite has no such triggers, so the module is skipped there.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import pytest
from conftest import write_audit_rows
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from referral_api.access.actor import Actor
from referral_api.access.roles import OrgType, Role
from referral_api.audit import service
from referral_api.audit.models import AuditEvent

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="the append-only trigger on audit_events is PostgreSQL-only "
    "(set DATABASE_URL=postgresql://… to run these tests)",
)

# A different value for every column of audit_events. Adding a column without deciding how
# it is protected fails test_every_column_is_covered.
NEW_VALUES = {
    "id": "id + 1000000",
    "occurred_at": "occurred_at - interval '1 day'",
    "actor_type": "'client'",
    "actor_id": "gen_random_uuid()",
    "actor_org_id": "gen_random_uuid()",
    "actor_role": "'dpo'",
    "acting_officer": "'someone'",
    "action": "'case:view'",
    "resource_type": "'note'",
    "resource_id": "'other'",
    "case_id": "gen_random_uuid()",
    "categories": "'health'",
    "purpose": "'other'",
    "decision": "'deny'",
    "reason": "'edited'",
    "legal_basis": "'none'",
    "request_id": "'forged-request'",
    "details": "'{}'",
    "seq": "seq + 1000",
    "prev_hash": "repeat('a', 64)",
    "hash": "repeat('b', 64)",
    "sealed_at": "now()",
}
SEAL_COLUMNS = ("seq", "prev_hash", "hash", "sealed_at")


def _db() -> Any:
    from referral_api.extensions import db

    return db


def _record(app: Any, **overrides: Any) -> int:
    """Insert one audit row through the service, unsealed; returns its id."""
    entry: dict[str, Any] = {
        "resource_type": "case",
        "resource_id": uuid.uuid4(),
        "categories": ["contact"],
        "details": {"via": "test"},
    }
    entry.update(overrides)
    with _db().session_factory_for(app)() as s:
        service.record(s, Actor.system(), "case:read", **entry)
        row_id = s.scalars(
            select(AuditEvent.id).where(AuditEvent.resource_id == str(entry["resource_id"]))
        ).one()
        s.commit()
        return int(row_id)


def _row(app: Any, row_id: int) -> dict[str, Any] | None:
    with _db().engine_for(app).connect() as connection:
        row = connection.execute(
            text("SELECT * FROM audit_events WHERE id = :id"), {"id": row_id}
        ).one_or_none()
        connection.rollback()
    return dict(row._mapping) if row is not None else None


def _not_refused(app: Any, sql: str, **params: Any) -> str | None:
    """Run `sql` on the application's own connection; None if the trigger refused it, else
    what happened instead."""
    with _db().engine_for(app).connect() as connection:
        try:
            connection.execute(text(sql), params)
        except DBAPIError as error:
            connection.rollback()
            state = getattr(error.orig, "sqlstate", None)
            if state == "42501" and "audit_events is append-only" in str(error.orig):
                return None
            return f"failed otherwise ({state}): {sql}"
        connection.rollback()
    return f"accepted: {sql}"


def _refused(app: Any, sql: str, **params: Any) -> None:
    assert _not_refused(app, sql, **params) is None


@pytest.fixture
def rows(app: Any) -> dict[str, int]:
    sealed = _record(app)
    service.seal_all(_db().session_factory_for(app))
    unsealed = _record(app)
    assert _row(app, sealed)["seq"] == 1  # type: ignore[index]
    assert _row(app, unsealed)["seq"] is None  # type: ignore[index]
    return {"sealed": sealed, "unsealed": unsealed}


def test_every_column_is_covered() -> None:
    assert set(NEW_VALUES) == {c.name for c in AuditEvent.__table__.columns}


def test_update_of_any_column_of_a_sealed_row_is_refused(app: Any, rows: dict[str, int]) -> None:
    before = _row(app, rows["sealed"])
    accepted = [
        outcome
        for column, value in sorted(NEW_VALUES.items())
        if (
            outcome := _not_refused(
                app, f"UPDATE audit_events SET {column} = {value} WHERE id = :id", id=rows["sealed"]
            )
        )
    ]
    assert accepted == []
    assert _row(app, rows["sealed"]) == before


def test_a_no_op_update_of_a_sealed_row_is_refused(app: Any, rows: dict[str, int]) -> None:
    _refused(
        app, "UPDATE audit_events SET categories = categories WHERE id = :id", id=rows["sealed"]
    )


def test_update_of_a_content_column_of_an_unsealed_row_is_refused(
    app: Any, rows: dict[str, int]
) -> None:
    before = _row(app, rows["unsealed"])
    seal = "seq = 99, prev_hash = repeat('0', 64), hash = repeat('c', 64), sealed_at = now()"
    accepted = []
    for column, value in sorted(NEW_VALUES.items()):
        if column in SEAL_COLUMNS:
            continue
        for assignments in (
            f"{column} = {value}",
            # Not even together with sealing: the sealer must chain the row as written.
            f"{column} = {value}, {seal}",
        ):
            sql = f"UPDATE audit_events SET {assignments} WHERE id = :id"
            if outcome := _not_refused(app, sql, id=rows["unsealed"]):
                accepted.append(outcome)
    assert accepted == []
    assert _row(app, rows["unsealed"]) == before


def test_seal_columns_alone_cannot_be_set_without_sealing(app: Any, rows: dict[str, int]) -> None:
    """Writing hash or sealed_at while leaving seq NULL is not sealing: refused."""
    _refused(
        app, "UPDATE audit_events SET hash = repeat('c', 64) WHERE id = :id", id=rows["unsealed"]
    )
    _refused(app, "UPDATE audit_events SET sealed_at = now() WHERE id = :id", id=rows["unsealed"])


def test_sealing_an_unsealed_row_is_allowed(app: Any, rows: dict[str, int]) -> None:
    with _db().engine_for(app).begin() as connection:
        connection.execute(
            text(
                "UPDATE audit_events SET seq = 2, prev_hash = repeat('0', 64), "
                "hash = repeat('c', 64), sealed_at = now() WHERE id = :id"
            ),
            {"id": rows["unsealed"]},
        )
    row = _row(app, rows["unsealed"])
    assert row is not None and (row["seq"], row["hash"]) == (2, "c" * 64)
    # …once: a sealed row is never sealed again.
    _refused(app, "UPDATE audit_events SET seq = 3 WHERE id = :id", id=rows["unsealed"])


def test_the_sealer_works_under_the_trigger(app: Any, client: Any, factory: Any) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    created = client.post("/api/v1/cases", json={"case_type": "gbv"}, headers=headers)
    assert created.status_code == 201
    client.get(f"/api/v1/cases/{created.get_json()['id']}", headers=headers, buffered=True)
    service.seal_all(_db().session_factory_for(app))
    with _db().session_factory_for(app)() as s:
        result = service.verify_chain(s)
        unsealed = s.scalars(select(AuditEvent).where(AuditEvent.seq.is_(None))).all()
    assert result.ok and result.checked == 2
    assert unsealed == []


@pytest.mark.parametrize("which", ["sealed", "unsealed"])
def test_delete_is_refused(app: Any, rows: dict[str, int], which: str) -> None:
    _refused(app, "DELETE FROM audit_events WHERE id = :id", id=rows[which])
    assert _row(app, rows[which]) is not None


# A row's content, as the application inserts it; the seal columns are added one at a time.
_INSERT_COLUMNS = "occurred_at, actor_type, action, resource_type, decision"
_INSERT_VALUES = "now(), 'system', 'case:read', 'case', 'allow'"


def test_an_insert_carrying_any_seal_column_is_refused(app: Any, rows: dict[str, int]) -> None:
    """Migration 0019: a row goes in unsealed, whatever the inserting role may write. One
    forged at seq 0 or past the head would otherwise look sealed to anyone not verifying."""
    accepted = [
        outcome
        for column in SEAL_COLUMNS
        if (
            outcome := _not_refused(
                app,
                f"INSERT INTO audit_events ({_INSERT_COLUMNS}, {column}) "
                f"SELECT {_INSERT_VALUES}, {NEW_VALUES[column]} FROM audit_events WHERE id = :id",
                id=rows["sealed"],
            )
        )
    ]
    assert accepted == []
    with _db().engine_for(app).begin() as connection:
        connection.execute(
            text(f"INSERT INTO audit_events ({_INSERT_COLUMNS}) VALUES ({_INSERT_VALUES})")
        )
        count = connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
    assert count == 3  # the two rows of the fixture and the unsealed one


def test_delete_of_everything_and_truncate_are_refused(app: Any, rows: dict[str, int]) -> None:
    _refused(app, "DELETE FROM audit_events")
    _refused(app, "TRUNCATE audit_events")
    with _db().engine_for(app).connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM audit_events")).scalar_one()
        connection.rollback()
    assert count == 2


def test_sealing_never_blocks_a_request_or_a_verification(
    app: Any, client: Any, factory: Any
) -> None:
    """While another worker holds the chain head, requests are answered at once and their
    rows wait for the next seal (SKIP LOCKED), rather than queueing on the head."""
    admin_headers = factory.headers(factory.user(Role.DPO, factory.org(OrgType.PLATFORM)))
    headers = factory.headers(factory.user(Role.CASEWORKER))
    created = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    case_id = created.get_json()["id"]
    service.seal_all(_db().session_factory_for(app))

    holder = _db().engine_for(app).connect()
    holder.execute(text("SELECT * FROM audit_chain_head WHERE id = 1 FOR UPDATE"))
    results: dict[str, Any] = {}

    def requests() -> None:
        own = app.test_client()
        results["read"] = own.get(f"/api/v1/cases/{case_id}", headers=headers, buffered=True)
        results["verify"] = own.get("/api/v1/audit/verify", headers=admin_headers, buffered=True)

    worker = threading.Thread(target=requests)
    try:
        worker.start()
        worker.join(timeout=10)
        blocked = worker.is_alive()
    finally:
        holder.rollback()
        holder.close()
        worker.join(timeout=30)
    assert not blocked, "a request waited for the chain head"
    assert results["read"].status_code == 200
    verified = results["verify"]
    assert verified.status_code == 200
    assert verified.get_json()["ok"] is True
    assert verified.get_json()["unsealed"] >= 1  # the read's row, left for the next seal

    read_id = results["read"].headers["X-Request-ID"]
    with _db().session_factory_for(app)() as s:
        pending = s.scalars(select(AuditEvent).where(AuditEvent.request_id == read_id)).one()
    assert pending.seq is None
    service.seal_all(_db().session_factory_for(app))
    with _db().session_factory_for(app)() as s:
        assert s.scalars(select(AuditEvent).where(AuditEvent.seq.is_(None))).all() == []
        assert service.verify_chain(s).ok


def test_verify_while_workers_keep_sealing_reports_no_tampering(app: Any) -> None:
    """In production sealers extend the chain all the time. Verify reads the rows in several
    statements and read the head last, which could be ahead of them: "chain head does not
    match (rows removed at the end)" for an untouched chain, naming an innocent row. It now
    reads the head first (found by a reviewer's probe)."""
    factory = _db().session_factory_for(app)

    write_audit_rows(factory, 50)
    service.seal_all(factory)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            write_audit_rows(factory, 1)
            service.seal_all(factory)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        results = []
        for _ in range(30):
            with factory() as s:
                results.append(service.verify_chain(s, batch_size=10))
    finally:
        stop.set()
        thread.join(timeout=60)
    assert [r for r in results if not r.ok] == []
    assert results[-1].checked > 50


def _documented_grants(role: str) -> list[str]:
    """The statements of docs/audit.md's role set-up, for `role` (no login)."""
    from pathlib import Path

    text_ = (Path(__file__).resolve().parent.parent / "docs" / "audit.md").read_text()
    block = text_.split("```sql\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if not line.startswith("--")]
    statements = [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
    assert statements[0].startswith("CREATE ROLE referral_app LOGIN")
    statements[0] = "CREATE ROLE referral_app NOLOGIN"
    return [s.replace("referral_app", role) for s in statements]


def test_the_documented_application_role_writes_and_seals_but_cannot_forge(app: Any) -> None:
    """Run as the role docs/audit.md sets up, the application records and seals audit rows;
    it can neither insert a row that arrives sealed nor delete one."""
    from sqlalchemy.orm import Session

    from referral_api.extensions import db

    role = f"referral_app_{uuid.uuid4().hex[:10]}"
    engine = db.engine_for(app)
    with engine.begin() as connection:
        for statement in _documented_grants(role):
            connection.exec_driver_sql(statement)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SET ROLE {role}")
            connection.commit()  # a SET in a transaction rolled back is undone
            try:
                with Session(bind=connection) as session:
                    service.record(
                        session, Actor.system(), "test:as-app-role", resource_type="test"
                    )
                    # And a page's rows, one INSERT of a JSON array (the list's path).
                    service.record_many(
                        session,
                        Actor.system(),
                        "test:as-app-role-page",
                        resource_type="test",
                        rows=[{"resource_id": n} for n in range(2)],
                        none_shown={},
                    )
                    assert service.seal_pending(session) >= 1
                    session.commit()
                forged = (
                    "INSERT INTO audit_events (occurred_at, actor_type, action, resource_type, "
                    "decision, seq, prev_hash, hash) VALUES (now(), 'system', 'case:read', "
                    "'case', 'allow', -1, repeat('0', 64), repeat('0', 64))"
                )
                for refused in (forged, "DELETE FROM audit_events"):
                    with pytest.raises(DBAPIError, match="permission denied"), connection.begin():
                        connection.exec_driver_sql(refused)
            finally:
                connection.rollback()
                connection.exec_driver_sql("RESET ROLE")
                connection.commit()
        with db.session_factory_for(app)() as s:
            written = s.scalars(
                select(AuditEvent).where(AuditEvent.action.like("test:as-app-role%"))
            ).all()
            assert len(written) == 3 and all(row.seq and row.hash for row in written)
            assert s.scalar(select(AuditEvent.id).where(AuditEvent.seq < 1)) is None
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP OWNED BY {role}")
            connection.exec_driver_sql(f"DROP ROLE {role}")
