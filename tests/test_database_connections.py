"""Pooled database connections: pinged only after sitting idle, and a connection lost under
a request answers 503 (retryable) instead of 500, and the next request works again. A
transaction the database aborts over a concurrent one (deadlock, serialization failure, lock
timeout, SQLite busy) is a retryable 503 too, with nothing of it stored."""

from __future__ import annotations

import logging
import os
from typing import Any

import conftest
import pytest
from conftest import FakeClock, assert_problem
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import referral_api.db
from referral_api import create_app
from referral_api.access.roles import Role
from referral_api.extensions import db

on_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="terminating a server connection or holding a row lock past a lock timeout needs "
    "PostgreSQL (set DATABASE_URL=postgresql://… to run these tests)",
)


@pytest.fixture
def ping_after_1s(app_config: dict[str, Any]) -> None:
    app_config["DB_PING_AFTER_IDLE_SECONDS"] = 1.0


@pytest.fixture
def ping_always(app_config: dict[str, Any]) -> None:
    app_config["DB_PING_AFTER_IDLE_SECONDS"] = 0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(referral_api.db, "monotonic", fake)
    return fake


def _count_pings(monkeypatch: pytest.MonkeyPatch, app: Any) -> list[int]:
    dialect = db.engine_for(app).dialect
    real_ping = dialect.do_ping
    pings: list[int] = []

    def counting(dbapi_connection: Any) -> bool:
        pings.append(1)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counting)
    return pings


def test_busy_connections_are_not_pinged_idle_ones_are(
    ping_after_1s, clock, monkeypatch, factory, auth_headers
):
    client = factory.client
    headers = auth_headers(Role.CASEWORKER)
    pings = _count_pings(monkeypatch, factory.app)

    for _ in range(3):  # back to back: the connection was checked in "just now"
        assert client.get("/api/v1/cases", headers=headers).status_code == 200
    assert pings == []

    clock.now += 1.5  # every pooled connection has now sat idle for 1.5 s
    assert client.get("/api/v1/cases", headers=headers).status_code == 200
    assert pings, "an idle connection must be pinged before use"


def test_zero_threshold_pings_before_every_use(ping_always, monkeypatch, factory, auth_headers):
    client = factory.client
    headers = auth_headers(Role.CASEWORKER)
    pings = _count_pings(monkeypatch, factory.app)

    for _ in range(3):
        assert client.get("/api/v1/cases", headers=headers).status_code == 200
    assert len(pings) >= 3


def _assert_retryable_503(
    response: Any,
    caplog: Any,
    logged: str,
    secret: str,
    problem_type: str = "/problems/database-unavailable",
) -> None:
    """503 `problem_type` with Retry-After, `secret` not echoed, a warning (never an error
    with a traceback) naming the cause."""
    problem = assert_problem(response, 503)
    assert problem["type"] == problem_type
    assert response.headers["Retry-After"] == "1"
    assert secret not in response.get_data(as_text=True)
    assert any(logged in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def _kill_pooled_connection(app: Any) -> None:
    """Leave exactly one connection in the app's pool and terminate it on the server."""
    engine = db.engine_for(app)
    engine.pool.dispose()  # any other pooled connection goes; the next checkout reconnects
    with engine.connect() as connection:
        pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(engine.url, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            assert connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            ).scalar_one()
    finally:
        admin.dispose()


@on_postgres
def test_connection_killed_while_idle_is_replaced_by_the_ping(
    ping_after_1s, clock, factory, auth_headers
):
    client = factory.client
    headers = auth_headers(Role.CASEWORKER)
    _kill_pooled_connection(factory.app)

    clock.now += 5  # a restart between two quiet requests
    response = client.get("/api/v1/cases", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)


@on_postgres
def test_connection_killed_between_busy_requests_is_a_retryable_503(
    ping_after_1s, clock, factory, auth_headers, session, caplog
):
    client = factory.client
    principal = factory.user(Role.CASEWORKER)
    headers = factory.headers(principal)
    body = {"case_type": "thb", "risk_level": "high", "identity": {"given_name": "Ana"}}
    _kill_pooled_connection(factory.app)

    # Within the idle threshold: no ping, so the request meets the dead connection.
    with caplog.at_level(logging.WARNING, logger="referral_api.errors"):
        response = client.post("/api/v1/cases", json=body, headers=headers)
    _assert_retryable_503(response, caplog, "(connection lost)", "Ana")
    count = "SELECT count(*) FROM cases WHERE org_id = :org"
    assert session.execute(text(count), {"org": principal.org_id}).scalar_one() == 0

    # SQLAlchemy discarded the dead connection: the retry succeeds, once.
    retry = client.post("/api/v1/cases", json=body, headers=headers)
    assert retry.status_code == 201, retry.get_data(as_text=True)
    assert session.execute(text(count), {"org": principal.org_id}).scalar_one() == 1


def test_unreachable_database_is_a_retryable_503_not_a_500(tmp_path, caplog):
    # Nothing listens on port 1: every request that needs the database fails to connect.
    app = create_app(
        conftest.test_config(
            "postgresql+psycopg://postgres@127.0.0.1:1/nothing", str(tmp_path / "keys.json")
        )
    )
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="referral_api.errors"):
        login = client.post(
            "/api/v1/auth/login", json={"email": "someone@example.org", "password": "x" * 12}
        )
        token = client.post(
            "/api/v1/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic Y2xpZW50OnNlY3JldA=="},
        )
    for response in (login, token):
        _assert_retryable_503(response, caplog, "database unavailable", "someone@example.org")
    assert client.get("/ready").status_code == 503


def _conflicts() -> list[Any]:
    import sqlite3

    import psycopg.errors

    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5  # type: ignore[attr-defined]
    snapshot = sqlite3.OperationalError("database is locked")
    snapshot.sqlite_errorcode = 517  # type: ignore[attr-defined]  # SQLITE_BUSY_SNAPSHOT
    return [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        busy,
        snapshot,
    ]


@pytest.mark.parametrize("cause", _conflicts(), ids=lambda cause: type(cause).__name__)
def test_a_transaction_aborted_by_a_concurrent_one_is_a_retryable_503(
    cause, monkeypatch, factory, session, caplog
):
    """The request's work so far (a whole case) is rolled back with it: nothing stored."""
    from sqlalchemy.exc import OperationalError

    from referral_api.cases import service

    principal = factory.user(Role.CASEWORKER)
    headers = factory.headers(principal)
    real_create = service.create_case

    def create_then_abort(db_session: Any, actor: Any, data: Any) -> Any:
        real_create(db_session, actor, data)
        raise OperationalError("UPDATE cases …", {}, cause)

    monkeypatch.setattr(service, "create_case", create_then_abort)
    body = {"case_type": "thb", "identity": {"given_name": "Ana"}}
    with caplog.at_level(logging.WARNING, logger="referral_api.errors"):
        response = factory.client.post("/api/v1/cases", json=body, headers=headers)
    _assert_retryable_503(
        response, caplog, type(cause).__name__, "Ana", "/problems/transaction-conflict"
    )
    from sqlalchemy import func, select

    from referral_api.cases.models import Case

    stored = select(func.count()).select_from(Case).where(Case.org_id == principal.org_id)
    assert session.execute(stored).scalar_one() == 0


def test_other_operational_errors_stay_500(monkeypatch, factory, caplog):
    """Only the causes a retry can cure are 503: e.g. a missing table is a bug."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from referral_api.cases import service

    headers = factory.headers(factory.user(Role.CASEWORKER))
    error = sqlite3.OperationalError("no such table: cases")
    error.sqlite_errorcode = 1  # type: ignore[attr-defined]  # SQLITE_ERROR

    def broken(*_args: Any) -> Any:
        raise OperationalError("SELECT …", {}, error)

    monkeypatch.setattr(service, "create_case", broken)
    response = factory.client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    assert assert_problem(response, 500)["type"] == "about:blank"


@on_postgres
def test_a_lock_timeout_on_postgresql_is_a_retryable_503_and_the_retry_works(
    factory, auth_headers, session, caplog
):
    """A real one: another transaction holds the case's row lock past the app's
    lock_timeout, so the PATCH's UPDATE is aborted by the server (SQLSTATE 55P03)."""
    from sqlalchemy import event

    client = factory.client
    headers = auth_headers(Role.CASEWORKER)
    created = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    case_id, etag = created.get_json()["id"], created.headers["ETag"]
    engine = db.engine_for(factory.app)
    engine.pool.dispose()  # new connections get the short lock timeout below

    def short_lock_timeout(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        dbapi_connection.commit()

    event.listen(engine, "connect", short_lock_timeout)
    change = {"risk_level": "critical"}
    holder = create_engine(engine.url, poolclass=NullPool)
    try:
        with holder.begin() as connection:
            connection.execute(
                text("SELECT id FROM cases WHERE id = :id FOR UPDATE"), {"id": case_id}
            )
            with caplog.at_level(logging.WARNING, logger="referral_api.errors"):
                response = client.patch(
                    f"/api/v1/cases/{case_id}",
                    json=change,
                    headers={**headers, "If-Match": etag},
                )
        _assert_retryable_503(
            response, caplog, "LockNotAvailable", case_id, "/problems/transaction-conflict"
        )
        risk = "SELECT risk_level, version FROM cases WHERE id = :id"
        assert session.execute(text(risk), {"id": case_id}).one() == ("medium", 1)

        # The lock is gone: the same request (same ETag) now succeeds.
        retry = client.patch(
            f"/api/v1/cases/{case_id}", json=change, headers={**headers, "If-Match": etag}
        )
        assert retry.status_code == 200, retry.get_data(as_text=True)
    finally:
        event.remove(engine, "connect", short_lock_timeout)
        holder.dispose()
        engine.pool.dispose()
