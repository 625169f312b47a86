"""Structured JSON access logs, and no secret or search term ever written to a log."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from referral_api.access.roles import Role
from referral_api.observability import JsonFormatter

CANARY = "secret-" + "canary-text"  # never written whole in this file's source
QUERY_CANARY = "SEARCH" + "CANARY"
WRONG_PASSWORD = "Wrong-Password-" + "Canary-42"


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (pytest swaps it between phases)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture
def stderr_json_lines(app: Any, capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What the app's own JSON handler writes to stderr during the test, via capfd.

    The handler is created once per process, bound to whichever stderr existed then; it is
    pointed at the current stderr so the test reads exactly what the JSON formatter writes.
    """
    handler = next(
        h for h in logging.getLogger("referral_api").handlers if getattr(h, "_referral_api", False)
    )
    assert isinstance(handler, logging.StreamHandler)
    assert isinstance(handler.formatter, JsonFormatter)
    previous = handler.setStream(_CurrentStderr())  # type: ignore[arg-type]
    yield lambda: capfd.readouterr().err
    handler.setStream(previous)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _everything_logged(caplog: pytest.LogCaptureFixture, stderr: str) -> str:
    """Message, extras and formatted exceptions of every record, plus raw stderr."""
    parts = [caplog.text, stderr]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(json.dumps(vars(record), default=str))
    return "\n".join(parts)


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "referral_api.access"]


def test_access_log_fields_for_login_and_authenticated_request(
    client, factory, caplog, stderr_json_lines
):
    user = factory.user(Role.PLATFORM_ADMIN)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="referral_api"):
        login = client.post(
            "/api/v1/auth/login",
            json={"email": user.email, "password": user.password},
            headers={"X-Request-ID": "login-request-0001"},
        )
        token = login.get_json()["access_token"]
        org = client.get(
            f"/api/v1/orgs/{user.org_id}",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "orgs-request-0002"},
        )
    assert (login.status_code, org.status_code) == (200, 200)

    records = _access_records(caplog)
    assert len(records) == 2
    login_record, org_record = records
    assert login_record.request_id == "login-request-0001"
    assert login_record.actor_id is None
    assert login_record.route == "/api/v1/auth/login"
    assert login_record.method == "POST"
    assert login_record.status == 200
    assert isinstance(login_record.duration_ms, float) and login_record.duration_ms >= 0

    assert org_record.request_id == "orgs-request-0002"
    assert org_record.actor_id == str(user.id)
    assert org_record.actor_org_id == str(user.org_id)
    assert org_record.route == "/api/v1/orgs/<uuid:org_id>"  # the template, not the path
    assert org_record.status == 200

    lines = [
        line for line in _json_lines(stderr_json_lines()) if line["logger"] == "referral_api.access"
    ]
    assert [line["request_id"] for line in lines] == ["login-request-0001", "orgs-request-0002"]
    for line in lines:
        assert {"ts", "level", "msg", "actor_id", "route", "status", "duration_ms"} <= set(line)
    assert lines[1]["actor_id"] == str(user.id)
    assert str(user.org_id) not in lines[1]["route"]


def test_error_responses_are_logged_with_their_status(client, caplog):
    with caplog.at_level(logging.INFO, logger="referral_api"):
        client.get("/api/v1/nope")
        client.get("/api/v1/me")
    statuses = [(r.route, r.status) for r in _access_records(caplog)]
    assert statuses == [(None, 404), ("/api/v1/me", 401)]


def test_no_password_token_or_query_value_in_logs(client, factory, caplog, stderr_json_lines):
    user = factory.user(Role.PLATFORM_ADMIN)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        tokens = client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": user.password}
        ).get_json()
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        client.get(f"/api/v1/orgs?cursor={QUERY_CANARY}", headers=bearer)
        client.get(f"/api/v1/orgs?org_type=ngo&limit=5&{QUERY_CANARY}=1", headers=bearer)
        client.get(f"/api/v1/nope?q={QUERY_CANARY}")
        client.post("/api/v1/auth/login", json={"email": user.email, "password": WRONG_PASSWORD})
        client.post(
            "/api/v1/auth/login",
            data=f'{{"email": "x@example.org", "password": "{WRONG_PASSWORD}"',
            content_type="application/json",
        )
        refreshed = client.post(
            "/api/v1/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
        ).get_json()
        client.get("/api/v1/me", headers={"Authorization": f"Bearer {refreshed['access_token']}"})
        # A reused refresh token (revokes the family) is logged too, without the token.
        client.post(
            "/api/v1/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
        )
    logged = _everything_logged(caplog, stderr_json_lines())
    assert len(_access_records(caplog)) == 9
    secrets = {
        "password": user.password,
        "wrong password": WRONG_PASSWORD,
        "access token": tokens["access_token"],
        "refresh token": tokens["refresh_token"],
        "rotated access token": refreshed["access_token"],
        "rotated refresh token": refreshed["refresh_token"],
        "query value": QUERY_CANARY,
    }
    for label, value in secrets.items():
        assert value not in logged, label
    # JWTs share their header; no token fragment at all.
    assert tokens["access_token"].split(".")[1] not in logged


def test_client_secret_is_not_logged(client, factory, caplog, stderr_json_lines):
    org_id = factory.org()
    client_id, secret = factory.client_credentials(Role.CASEWORKER, org_id)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        ok = client.post(
            "/api/v1/auth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        client.post(
            "/api/v1/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": CANARY,
            },
        )
    assert ok.status_code == 200
    logged = _everything_logged(caplog, stderr_json_lines())
    for value in (secret, CANARY, ok.get_json()["access_token"]):
        assert value not in logged


def test_unexpected_error_json_log_has_traceback_but_not_the_message(
    app, client, caplog, stderr_json_lines
):
    def explode_for_log() -> Any:
        raise RuntimeError(CANARY)

    explode_for_log.__public__ = True  # type: ignore[attr-defined]
    app.add_url_rule("/api/v1/test-explode-log", "explode_for_log", explode_for_log)
    response = client.get("/api/v1/test-explode-log", headers={"X-Request-ID": "boom-request-01"})
    assert response.status_code == 500

    lines = _json_lines(stderr_json_lines())
    errors = [line for line in lines if line["logger"] == "referral_api.errors"]
    assert len(errors) == 1
    entry = errors[0]
    assert entry["request_id"] == "boom-request-01"
    assert entry["level"] == "ERROR"
    assert entry["exc_type"] == "RuntimeError"
    assert entry["traceback"].startswith("Traceback (most recent call last):")
    assert "explode_for_log" in entry["traceback"]
    assert entry["traceback"].rstrip().endswith("RuntimeError")
    # Exception messages may quote personal data or SQL; the JSON log keeps only the type.
    assert CANARY not in "\n".join(json.dumps(line) for line in lines)
    access = [line for line in lines if line["logger"] == "referral_api.access"]
    assert access[-1]["status"] == 500 and access[-1]["request_id"] == "boom-request-01"


def test_json_formatter_keeps_the_exception_chain_without_messages():
    formatter = JsonFormatter()
    try:
        try:
            raise KeyError(CANARY)
        except KeyError as inner:
            raise ValueError(CANARY + "-outer") from inner
    except ValueError:
        record = logging.LogRecord(
            "referral_api.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    record.request_id = "chain-0001"
    entry = json.loads(formatter.format(record))
    assert entry["request_id"] == "chain-0001"
    assert entry["exc_type"] == "ValueError"
    assert entry["traceback"].count("Traceback (most recent call last):") == 2
    assert "builtins.KeyError" in entry["traceback"]
    assert entry["traceback"].endswith("builtins.ValueError")
    assert CANARY not in json.dumps(entry)


def test_json_formatter_writes_extras_as_the_stdlib_default_str_did():
    import dataclasses
    import enum
    import logging
    import uuid
    from datetime import UTC, datetime

    from referral_api.observability import JsonFormatter

    class Colour(enum.StrEnum):
        RED = "red"

    @dataclasses.dataclass
    class Thing:
        n: int

    extras = {
        "actor_id": uuid.UUID("11111111-2222-3333-4444-555555555555"),
        "at": datetime(2026, 11, 29, 8, tzinfo=UTC),
        "colour": Colour.RED,
        "thing": Thing(3),
        "huge": 2**70,
        "text": "Müller \u2028",
    }
    record = logging.LogRecord("referral_api.access", logging.INFO, "f.py", 1, "request", (), None)
    record.__dict__.update(extras)
    line = json.loads(JsonFormatter().format(record))
    assert line["actor_id"] == "11111111-2222-3333-4444-555555555555"
    assert line["at"] == "2026-11-29 08:00:00+00:00"  # str(datetime), as default=str wrote it
    assert line["colour"] == "red"
    assert line["thing"].endswith("Thing(n=3)")
    assert line["huge"] == 2**70
    assert line["text"] == "Müller \u2028"
    assert line["level"] == "INFO" and line["msg"] == "request"
    del record.huge  # without it, orjson writes the line
    assert json.loads(JsonFormatter().format(record))["thing"].endswith("Thing(n=3)")
