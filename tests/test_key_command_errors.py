"""The command line's output contract (docs/cli.md): `referral-api keys …` over a key that
will not unwrap or a record that will not decrypt ends with one `error:` line and exit 1,
not a traceback (found by a reviewer's probe); progress and notices go to stderr."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from referral_api.access.roles import Role
from referral_api.cases.models import Case
from referral_api.crypto.models import IndexKey
from referral_api.extensions import db


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    app_config["KEYRING_PATH"] = str(tmp_path / "keyring.json")
    return app_config


def _case(client: Any, factory: Any) -> str:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    response = client.post(
        "/api/v1/cases",
        json={"case_type": "thb", "identity": {"given_name": "Olena"}},
        headers=headers,
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def _one_line_error(result: Any) -> None:
    # A clear `error: …` line and exit 1 (docs/cli.md), not an uncaught exception.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    assert "run the command again" in lines[-1]


def test_rotate_root_over_a_key_that_does_not_unwrap_is_one_error_line(
    app, client, factory, runner
):
    _case(client, factory)
    with db.session_factory_for(app)() as s:
        wrapped = s.scalar(select(IndexKey.wrapped_key))
        s.execute(update(IndexKey).values(wrapped_key=wrapped[:-1] + bytes([wrapped[-1] ^ 1])))
        s.commit()
    result = runner.invoke(args=["keys", "rotate-root"])
    _one_line_error(result)


def test_rotate_case_keys_over_a_record_that_does_not_decrypt_is_one_error_line(
    app, client, factory, runner
):
    case_id = _case(client, factory)
    import uuid

    with db.session_factory_for(app)() as s:
        ct = s.scalar(select(Case.identity_ct).where(Case.id == uuid.UUID(case_id)))
        s.execute(
            update(Case)
            .where(Case.id == uuid.UUID(case_id))
            .values(identity_ct=ct[:-1] + bytes([ct[-1] ^ 1]))
        )
        s.commit()
    app.extensions["referral_api.crypto"].cache.clear()
    result = runner.invoke(args=["keys", "rotate-case-keys"])
    _one_line_error(result)


@pytest.mark.parametrize(
    ("command", "label"),
    [
        ("rotate-root", "re-wrapping keys"),
        ("rotate-case-keys", "re-encrypting cases"),
        ("rotate-index", "backfilling index"),
        ("rotate-org-keys", "re-wrapping data keys"),
    ],
)
def test_progress_goes_to_stderr_and_stdout_keeps_the_result_line(
    client, factory, runner, command, label
):
    """docs/cli.md: scripts read stdout, so progress and notices go to stderr (the bars
    wrote their labels to stdout)."""
    _case(client, factory)
    result = runner.invoke(args=["keys", command])
    assert result.exit_code == 0, result.output
    assert label in result.stderr
    assert label not in result.stdout
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout


def test_the_sealer_announces_itself_on_stderr(runner):
    result = runner.invoke(args=["audit", "seal", "--follow", "--rounds", "1"])
    assert result.exit_code == 0, result.output
    assert "until stopped" in result.stderr and "until stopped" not in result.stdout
    assert result.stdout.strip().endswith("rows sealed")
