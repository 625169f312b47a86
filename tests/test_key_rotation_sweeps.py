"""The key-rotation sweeps go through the cases by keyset (each batch on from the last one's
last case): a case committed behind the keyset while they run is still rotated, and their
batches stay within what a statement can bind."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from referral_api.access.roles import Role
from referral_api.cases import service as case_service
from referral_api.cases.models import Case
from referral_api.crypto import rotation
from referral_api.crypto.models import RotationJob
from referral_api.extensions import db

on_postgresql = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="a request in flight during the sweep needs PostgreSQL (one writer on SQLite)",
)

CASES = "/api/v1/cases"
LOW = uuid.UUID("00000000-0000-4000-8000-000000000001")


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    app_config["KEYRING_PATH"] = str(tmp_path / "keyring.json")
    return app_config


class _LowUuid:
    """case_service's `uuid`, with the racing case's id first in id order."""

    def __getattr__(self, name: str) -> Any:
        return getattr(uuid, name)

    @staticmethod
    def uuid4() -> uuid.UUID:
        return LOW


@on_postgresql
def test_a_case_created_in_flight_at_the_sweeps_start_is_rotated(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = factory.headers(factory.user(Role.CASEWORKER))
    for n in range(3):
        body = {"case_type": "thb", "identity": {"given_name": f"Existing{n}"}}
        assert client.post(CASES, json=body, headers=headers).status_code == 201
    sessions = db.session_factory_for(app)
    posted = threading.Event()
    sweep: dict[str, Any] = {}
    real_insert = case_service.insert_cases

    def sweep_now() -> None:
        # `keys rotate-case-keys` starts (another process) while the POST has made its
        # case's data key and not yet committed.
        with sessions() as s:
            job = rotation.open_rotation_job(s, "case-keys")
            started_at = job.started_at
            s.commit()
        sweep["started_at"] = started_at

        def progress(_n: int) -> None:
            posted.wait(30)  # the POST commits after the first batch

        def run() -> None:
            try:
                sweep["done"] = rotation.rotate_case_keys(
                    sessions, started_at=started_at, batch_size=1, progress=progress
                )
            except BaseException as error:  # noqa: BLE001
                sweep["error"] = error

        sweep["thread"] = threading.Thread(target=run, daemon=True)
        sweep["thread"].start()

    def insert_then_sweep(*args: Any, **kwargs: Any) -> Any:
        result = real_insert(*args, **kwargs)
        sweep_now()
        sweep["thread"].join(timeout=1.5)  # the first batch is chosen and swept meanwhile
        return result

    monkeypatch.setattr(case_service, "insert_cases", insert_then_sweep)
    monkeypatch.setattr(case_service, "uuid", _LowUuid())
    body = {"case_type": "thb", "identity": {"given_name": "InFlight"}}
    created = client.post(CASES, json=body, headers=headers)
    monkeypatch.undo()
    posted.set()
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["id"] == str(LOW)
    sweep["thread"].join(timeout=60)
    assert "error" not in sweep, sweep.get("error")

    with sessions() as s:
        left = list(s.scalars(rotation.cases_needing_rotation(s, sweep["started_at"])))
        versions = dict(s.execute(select(Case.id, Case.key_version)).all())
        s.rollback()
    # The sweep ended (the CLI then marks its job finished) only when every case's data key
    # was newer than its start (docs/key-management.md): the case committed behind its
    # keyset was found by a pass from the start.
    assert left == [], f"left on a pre-sweep data key: {left}, versions {versions}"
    assert versions[LOW] == 2


@pytest.mark.parametrize("sweep", ["rotate-case-keys", "rotate-index"])
def test_a_batch_larger_than_a_statement_can_bind_is_refused(
    app: Any, runner: Any, sweep: str
) -> None:
    """A batch's cases are bound one parameter each: past 65,535 (PostgreSQL) the sweep
    failed midway. The CLI refuses such a batch size before anything starts."""
    result = runner.invoke(args=["keys", sweep, "--batch-size", str(rotation.MAX_SWEEP_BATCH + 1)])
    assert result.exit_code == 2
    assert "--batch-size" in result.output + (getattr(result, "stderr", "") or "")
    with db.session_factory_for(app)() as s:
        assert s.scalars(select(RotationJob)).all() == []
    sessions = db.session_factory_for(app)
    with pytest.raises(ValueError, match="batch_size"):
        rotation.backfill_index(sessions, batch_size=rotation.MAX_SWEEP_BATCH + 1)
    with pytest.raises(ValueError, match="batch_size"):
        rotation.rotate_case_keys(
            sessions, started_at=datetime.now(UTC), batch_size=rotation.MAX_SWEEP_BATCH + 1
        )
