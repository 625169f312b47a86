"""Liveness and readiness probes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_problem
from conftest import test_config as make_test_config
from sqlalchemy import inspect

from referral_api import create_app
from referral_api.extensions import db


def test_health_answers_without_authentication(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {}}


def test_ready_when_everything_is_in_place(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "checks": {
            "database": "ok",
            "migrations": "ok",
            "audit_sealing": "ok",
            "keyring": "ok",
            "keys": "ok",
        },
    }


def test_ready_is_503_when_stored_keys_are_under_a_root_version_the_keyring_lacks(
    app, client, factory, tmp_path
):
    """A backup restored after `keys destroy-root`, or another deployment's keyring: the
    keyring loads, so /ready answered ok while every read of a case failed (found by
    review). The organisations' keys are wrapped under root version 1; a keyring holding
    only version 2 cannot read them."""
    from referral_api.access.roles import Role
    from referral_api.crypto.keyring import LocalKeyring

    worker = factory.headers(factory.user(Role.CASEWORKER))
    made = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=worker)
    assert made.status_code == 201  # its organisation's keys, wrapped under root version 1
    other = tmp_path / "other" / "keyring.json"
    keyring = LocalKeyring.create(other)
    keyring.rotate()
    keyring.destroy(1)
    app.config["KEYRING_PATH"] = str(other)
    body = assert_problem(client.get("/ready"), 503)
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "audit_sealing": "ok",
        "keyring": "ok",
        "keys": "unavailable",
    }
    assert "keys: unavailable" in body["detail"]


def test_ready_is_503_when_the_keyring_file_is_missing(app, client, tmp_path):
    missing = tmp_path / "gone" / "keyring.json"
    app.config["KEYRING_PATH"] = str(missing)
    response = client.get("/ready")
    body = assert_problem(response, 503)
    assert body["checks"] == {
        "database": "ok",
        "migrations": "ok",
        "audit_sealing": "ok",
        "keyring": "unavailable",
    }
    assert "keyring" in body["detail"]
    assert str(missing) not in response.get_data(as_text=True)
    # A readiness probe never creates a keyring: that would silently start a new key history.
    assert not missing.exists()


def test_ready_is_503_when_the_keyring_file_is_readable_by_others(app, client, tmp_path):
    exposed = tmp_path / "keyring.json"
    shutil.copyfile(app.config["KEYRING_PATH"], exposed)
    os.chmod(exposed, 0o644)
    app.config["KEYRING_PATH"] = str(exposed)
    body = assert_problem(client.get("/ready"), 503)
    assert body["checks"]["keyring"] == "unavailable"


def test_ready_is_503_when_the_keyring_file_is_malformed(app, client, tmp_path):
    broken = tmp_path / "keyring.json"
    broken.write_text("{not json", encoding="utf-8")
    os.chmod(broken, 0o600)
    app.config["KEYRING_PATH"] = str(broken)
    body = assert_problem(client.get("/ready"), 503)
    assert body["checks"]["keyring"] == "unavailable"


def test_ready_reports_audit_rows_left_unsealed_without_failing(app, client, session):
    """A row unsealed for over a minute (no sealer running) shows as `behind`; the service
    stays ready. Sealing clears the report; a row unsealed for seconds is normal."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from referral_api.access.actor import Actor
    from referral_api.audit import service as audit
    from referral_api.audit.models import AuditEvent

    def unsealed_row(age: timedelta) -> None:
        row = audit._row(Actor.system(), "probe:test", resource_type="test")
        row["occurred_at"] = datetime.now(UTC) - age
        session.execute(insert(AuditEvent), row)
        session.commit()

    unsealed_row(timedelta(minutes=2))
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "checks": {
            "database": "ok",
            "migrations": "ok",
            "audit_sealing": "behind",
            "keyring": "ok",
            "keys": "ok",
        },
    }

    audit.seal_pending(session)
    session.commit()
    assert client.get("/ready").get_json()["checks"]["audit_sealing"] == "ok"

    unsealed_row(timedelta(seconds=5))  # a sealer's normal delay
    assert client.get("/ready").get_json()["checks"]["audit_sealing"] == "ok"

    # The threshold is a setting (REFERRAL_API_AUDIT_SEALING_ALERT_SECONDS).
    app.config["AUDIT_SEALING_LAG_ALERT_SECONDS"] = 2
    assert client.get("/ready").get_json()["checks"]["audit_sealing"] == "behind"
    app.config["AUDIT_SEALING_LAG_ALERT_SECONDS"] = 60
    assert client.get("/ready").get_json()["checks"]["audit_sealing"] == "ok"


@pytest.fixture
def app_on(keyring_path: str) -> Iterator[Any]:
    """An app on a database of the test's choosing (the shared `app` fixture needs the schema)."""
    created: list[Any] = []

    def make(database_url: str) -> Any:
        application = create_app(make_test_config(database_url, keyring_path))
        created.append(application)
        return application

    yield make
    for application in created:
        db.engine_for(application).dispose()


def test_ready_is_503_when_the_database_is_not_migrated(app_on, tmp_path):
    database = tmp_path / "empty.db"
    application = app_on(f"sqlite:///{database}")
    response = application.test_client().get("/ready")
    body = assert_problem(response, 503)
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["migrations"] == "behind"
    assert "migrations" in body["detail"]
    # The probe only looks: it neither migrates nor creates tables.
    assert inspect(db.engine_for(application)).get_table_names() == []


def test_ready_is_503_when_the_database_is_unreachable(app_on, tmp_path):
    unreachable = Path(tmp_path) / "no" / "such" / "directory" / "x.db"
    application = app_on(f"sqlite:///{unreachable}")
    response = application.test_client().get("/ready")
    body = assert_problem(response, 503)
    assert body["checks"]["database"] == "unreachable"
    text = response.get_data(as_text=True)
    assert str(unreachable) not in text
    assert "sqlite" not in text.lower()
