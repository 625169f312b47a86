"""Operations that went wrong on inputs an operator can give: a hand-edited key file, a zero
batch size, a lost chain head, a blank name, a non-positive setting, an unusable
configuration at the command line. Each is refused clearly and changes nothing (or, for the
chain head, the chain goes on from its last sealed row).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import write_audit_rows
from sqlalchemy import func, select, text

from referral_api.audit import service as audit_service
from referral_api.auth.models import ApiClient, Organisation
from referral_api.crypto.keyring import LocalKeyring
from referral_api.crypto.models import IndexKey, OrgKey, RotationJob
from referral_api.exceptions import ConfigurationError
from referral_api.extensions import db
from referral_api.settings import load_settings

KEY = base64.b64encode(b"\x11" * 32).decode()


def _key_file(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document), encoding="utf-8")
    os.chmod(path, 0o600)
    return str(path)


@pytest.mark.parametrize(
    "keys", [[KEY], None, "abc", 5, {KEY: "1"}], ids=["list", "null", "text", "number", "swapped"]
)
def test_a_malformed_key_file_is_a_configuration_error_without_its_contents(tmp_path, keys):
    path = _key_file(tmp_path / "keyring.json", {"format": 1, "current": 1, "keys": keys})
    with pytest.raises(ConfigurationError, match="malformed") as raised:
        LocalKeyring.load(path, create_if_missing=False)
    # Nothing chained: a parse error would quote the value, here a key.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def _a_directory(path: Path) -> str:
    path.mkdir(mode=0o700)  # a volume mounted at the key file's path
    return str(path)


def _unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # A file the service user may not read (the suite may run as root, whom chmod 000 does
    # not stop): the error its read raises.
    _key_file(path, {"format": 1, "current": 1, "keys": {"1": KEY}})

    def refused(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refused)
    return str(path)


@pytest.mark.parametrize("make", ["directory", "unreadable"])
def test_a_key_file_that_cannot_be_read_is_a_configuration_error(tmp_path, monkeypatch, make):
    path = tmp_path / "keyring.json"
    target = _a_directory(path) if make == "directory" else _unreadable(path, monkeypatch)
    for create_if_missing in (False, True):
        with pytest.raises(ConfigurationError) as raised:
            LocalKeyring.load(target, create_if_missing=create_if_missing)
        assert raised.value.detail == "The keyring file cannot be read."
        assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.own_database
def test_a_key_file_that_cannot_be_read_is_one_error_line(tmp_path):
    import subprocess
    import sys

    env = {
        **os.environ,
        "REFERRAL_API_ENV": "development",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "REFERRAL_API_JWT_SECRET": "Hs2-Wq8_nLc5Xv1RbT9yKm4Pd7Ge0Zu3Ja6Fo",
        "REFERRAL_API_KEYRING": _a_directory(tmp_path / "keyring.json"),
    }
    script = Path(sys.executable).parent / "referral-api"
    completed = subprocess.run(
        [str(script), "keys", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (completed.returncode, completed.stderr) == (
        1,
        "error: The keyring file cannot be read.\n",
    )
    assert completed.stdout == ""


def test_readiness_says_the_key_file_is_unusable(app, client, tmp_path):
    app.config["KEYRING_PATH"] = _key_file(
        tmp_path / "keyring.json", {"format": 1, "current": 1, "keys": [KEY]}
    )
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.get_json()["checks"]["keyring"] == "unavailable"


@pytest.mark.parametrize("command", ["rotate-case-keys", "rotate-index", "rotate-org-keys"])
def test_a_batch_size_below_one_is_refused_before_anything_changes(runner, session, command):
    assert runner.invoke(args=["create-org", "--name", "Batch NGO", "--type", "ngo"]).exit_code == 0

    def state() -> tuple[int, int, int]:
        try:
            return (
                session.scalar(select(func.count()).select_from(OrgKey)),
                session.scalar(select(func.count()).select_from(IndexKey)),
                session.scalar(select(func.count()).select_from(RotationJob)),
            )
        finally:
            session.rollback()

    before = state()
    for size in ("0", "-1"):
        result = runner.invoke(args=["keys", command, "--batch-size", size])
        assert result.exit_code == 2 and "--batch-size" in result.output
    assert state() == before


def test_keys_status_names_index_key_states_as_states(runner):
    assert (
        runner.invoke(args=["create-org", "--name", "Status NGO", "--type", "ngo"]).exit_code == 0
    )
    output = runner.invoke(args=["keys", "status"]).output
    line = next(x for x in output.splitlines() if x.startswith("index keys by state"))
    assert line == "index keys by state: active: 1"


def test_the_chain_goes_on_from_its_last_sealed_row_when_its_head_is_lost(app, runner):
    factory = db.session_factory_for(app)

    write_audit_rows(factory, 3)
    audit_service.seal_all(factory)
    with db.engine_for(app).begin() as connection:
        connection.execute(text("DELETE FROM audit_chain_head"))
    # Until sealing rebuilds it, verify cannot tell rows removed at the end from a chain
    # that ends there: it says so.
    with factory() as s:
        missing = audit_service.verify_chain(s)
    assert (missing.ok, missing.problem) == (False, "chain head missing (rows removed at the end?)")
    write_audit_rows(factory, 2)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    with factory() as s:
        verified = audit_service.verify_chain(s)
        rows = s.execute(text("SELECT id, seq, action FROM audit_events ORDER BY id")).all()
    # The rebuild is recorded in the chain, and verify points at it ever after: rows removed
    # from the end before the head was lost could not be detected.
    rebuilt = [r for r in rows if r.action == "audit:chain-head-rebuilt"]
    assert len(rebuilt) == 1 and verified.ok
    assert verified.head_rebuilt_at == (rebuilt[0].id,)
    assert "the chain head was lost and rebuilt (row id" in result.output
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_the_command_line_refuses_names_the_api_refuses(runner, factory, session, name):
    org = factory.org(name="Names NGO")
    created_org = runner.invoke(args=["create-org", "--name", name, "--type", "ngo"])
    created_client = runner.invoke(
        args=["create-client", "--name", name, "--org", str(org), "--role", "caseworker"]
    )
    for result in (created_org, created_client):
        assert result.exit_code == 1 and "name: 1 to 200 characters" in result.output
    try:
        assert session.scalar(select(func.count()).select_from(Organisation)) == 1
        assert session.scalar(select(func.count()).select_from(ApiClient)) == 0
    finally:
        session.rollback()


@pytest.mark.parametrize("days", ["0", "-1"])
def test_a_retention_period_below_one_day_is_refused(monkeypatch, tmp_path, days):
    monkeypatch.setenv("REFERRAL_API_RETENTION_DAYS_THB", days)
    with pytest.raises(ConfigurationError, match="REFERRAL_API_RETENTION_DAYS_THB"):
        load_settings(str(tmp_path))


def test_upgrading_to_an_older_revision_says_where_the_database_is(runner):
    from referral_api.migrate import head_revision

    result = runner.invoke(args=["db", "upgrade", "--revision", "0005"])
    assert result.exit_code == 0
    assert f"database at {head_revision()} (head)" in result.output
    bogus = runner.invoke(args=["db", "upgrade", "--revision", "bogus"])
    assert bogus.exit_code == 1 and bogus.output.startswith("error: ")


@pytest.mark.own_database
def test_an_unusable_configuration_is_one_error_line(tmp_path):
    import subprocess
    import sys

    keyring = _key_file(tmp_path / "keyring.json", {"format": 1, "current": 1, "keys": {"1": KEY}})
    os.chmod(keyring, 0o644)
    env = {
        **os.environ,
        "REFERRAL_API_ENV": "production",
        # Never dialled: the keyring is refused first.
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/never-connected",
        "REFERRAL_API_JWT_SECRET": "Hs2-Wq8_nLc5Xv1RbT9yKm4Pd7Ge0Zu3Ja6Fo",
        "REFERRAL_API_KEYRING": keyring,
    }
    script = Path(sys.executable).parent / "referral-api"
    completed = subprocess.run(
        [str(script), "keys", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert "error: The keyring file must not be readable by group or others" in completed.stderr
