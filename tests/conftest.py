"""Fixtures in the flask tutorial's shape: app, client, runner, plus per-role auth helpers.

One migrated database per test session (`alembic upgrade head`, never create_all): a temp
SQLite file by default, or a fresh database created inside the PostgreSQL server named by
DATABASE_URL (dropped at the end). Each test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from referral_api import create_app
from referral_api.access.roles import OrgType, Role
from referral_api.db import Base
from referral_api.migrate import upgrade
from referral_api.settings import normalise_database_url

TEST_PASSWORD = "correct horse battery staple"
JWT_TEST_SECRET = "test-secret-" + "x" * 40


def _base_url() -> str | None:
    url = os.environ.get("DATABASE_URL")
    return normalise_database_url(url) if url else None


def pytest_report_header(config: pytest.Config) -> str:
    url = _base_url()
    dialect = make_url(url).get_backend_name() if url else "sqlite"
    where = make_url(url).render_as_string(hide_password=True) if url else "temporary file"
    return f"database dialect: {dialect} ({where})"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "own_database: the test makes its own databases (URLs of both dialects, whatever "
        "DATABASE_URL names): it runs in the SQLite pass only (.ci/run's PostgreSQL pass "
        "would run the same thing again)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PostgreSQL pass deselects the `own_database` tests (listed as deselected)."""
    url = _base_url()
    if url is None or url.startswith("sqlite"):
        return
    own = [item for item in items if item.get_closest_marker("own_database")]
    if own:
        config.hook.pytest_deselected(items=own)
        items[:] = [item for item in items if not item.get_closest_marker("own_database")]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = _base_url()
    if base is None or base.startswith("sqlite"):
        path = tmp_path_factory.mktemp("db") / "test.db"
        url = f"sqlite:///{path}"
        upgrade(url)
        yield url
        return
    name = f"referral_api_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def keyring_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("keys") / "keyring.json")


def test_config(database_url: str, keyring_path: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "ENV_NAME": "testing",
        "TESTING": True,
        "DATABASE_URL": database_url,
        "JWT_SECRET_KEY": JWT_TEST_SECRET,
        "KEYRING_PATH": keyring_path,
        # Cheap Argon2 in tests; production defaults are in settings.py.
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 1024,
        "ARGON2_PARALLELISM": 1,
        # Tests seal deterministically (after responses, or explicitly); no timer thread.
        "AUDIT_SEAL_INTERVAL_SECONDS": 0,
    }
    config.update(overrides)
    return config


@pytest.fixture
def app_config(database_url: str, keyring_path: str) -> dict[str, Any]:
    """Override entries in a test (before `app` is first used) to change the config."""
    return test_config(database_url, keyring_path)


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Any]:
    app = create_app(app_config)
    yield app
    from referral_api.extensions import db

    engine = db.engine_for(app)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # The audit trail refuses DELETE by trigger; only test teardown (as superuser)
            # may switch triggers off, for this transaction only.
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())
    engine.dispose()
    from referral_api.crypto.keys import KeyCache

    crypto = app.extensions["referral_api.crypto"]
    assert isinstance(crypto.cache, KeyCache)
    crypto.cache.clear()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Any) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def session(app: Any) -> Iterator[Any]:
    """A separate database session for arranging data and inspecting what was stored."""
    from referral_api.extensions import db

    s = db.session_factory_for(app)()
    yield s
    s.close()


@dataclass
class Principal:
    id: uuid.UUID
    org_id: uuid.UUID
    email: str
    role: Role
    password: str = TEST_PASSWORD


class Factory:
    """Arranges organisations, users and clients directly in the database."""

    def __init__(self, app: Any, client: Any) -> None:
        self.app = app
        self.client = client

    def _session(self) -> Any:
        from referral_api.extensions import db

        return db.session_factory_for(self.app)()

    def org(self, org_type: OrgType = OrgType.NGO, name: str | None = None) -> uuid.UUID:
        from referral_api.auth.models import Organisation

        with self._session() as s:
            org = Organisation(
                id=uuid.uuid4(),
                name=name or f"{org_type.value}-{uuid.uuid4().hex[:8]}",
                org_type=org_type,
            )
            s.add(org)
            s.commit()
            return org.id

    def user(self, role: Role, org_id: uuid.UUID | None = None, **kw: Any) -> Principal:
        from referral_api.auth.models import User
        from referral_api.extensions import hasher

        if org_id is None:
            org_type = {
                Role.POLICE_OFFICER: OrgType.POLICE,
                Role.PLATFORM_ADMIN: OrgType.PLATFORM,
            }.get(role, OrgType.NGO)
            org_id = self.org(org_type)
        email = kw.pop("email", f"{role.value}-{uuid.uuid4().hex[:8]}@example.org")
        with self._session() as s:
            user = User(
                id=uuid.uuid4(),
                org_id=org_id,
                email=email,
                display_name=kw.pop("name", email),
                role=role,
                password_hash=hasher.hash(TEST_PASSWORD),
                **kw,
            )
            s.add(user)
            s.commit()
            return Principal(user.id, org_id, email, role)

    def login(self, principal: Principal) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/auth/login", json={"email": principal.email, "password": principal.password}
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def headers(self, principal: Principal) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.login(principal)['access_token']}"}

    def client_credentials(self, role: Role, org_id: uuid.UUID) -> tuple[str, str]:
        """Create an API client; returns (client_id, client_secret)."""
        from referral_api.access.actor import Actor
        from referral_api.admin import service
        from referral_api.auth.models import Organisation
        from referral_api.extensions import hasher

        with self._session() as s:
            org = s.get(Organisation, org_id)
            created = service.create_client(s, Actor.system(), hasher, org, name="test", role=role)
            s.commit()
            return created.client.client_id, created.client_secret


@pytest.fixture
def factory(app: Any, client: Any) -> Factory:
    return Factory(app, client)


@pytest.fixture
def auth_headers(factory: Factory) -> Callable[..., dict[str, str]]:
    """auth_headers(Role.X, org_id=None) → Authorization header for a new user of that role."""

    def make(role: Role, org_id: uuid.UUID | None = None) -> dict[str, str]:
        return factory.headers(factory.user(role, org_id))

    return make


def consent_if_match(client: Any, consent_id: Any, headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the If-Match a consent's renewal, revocation or entered-in-error needs:
    the ETag of the consent as `headers`' caller reads it now."""
    read = client.get(f"/api/v1/consents/{consent_id}", headers=headers)
    assert read.status_code == 200, (read.status_code, read.get_data(as_text=True))
    return {**headers, "If-Match": read.headers["ETag"]}


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem response with the given status and return its body."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json", response.mimetype
    body = response.get_json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body.get("detail"), str)
    return body  # type: ignore[no-any-return]


def write_audit_rows(session_factory: Any, count: int) -> None:
    """`count` unsealed audit rows of the system actor, committed (for the chain's tests)."""
    from referral_api.access.actor import Actor
    from referral_api.audit import service

    with session_factory() as s:
        for _ in range(count):
            service.record(s, Actor.system(), "test:row", resource_type="test")
        s.commit()


class FakeClock:
    """A monotonic clock the test moves by hand: monkeypatch it over the `monotonic` a
    module reads, then advance `now`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follow_pages(client: Any, url: str, headers: dict[str, str]) -> list[list[dict[str, Any]]]:
    """Every page of a list, from `url` on through its `Link: rel="next"` headers."""
    import re

    pages = []
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        pages.append(response.get_json())
        link = response.headers.get("Link")
        url = re.match(r"<([^>]*)>", link).group(1) if link else ""  # type: ignore[union-attr]
    return pages
