"""Each worker's sealing thread: audited requests only signal it; it chains their rows in
one round soon after, and every interval seals whatever is left pending."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import conftest
import pytest
from sqlalchemy import Integer, bindparam, func, select

from referral_api import create_app
from referral_api.access.roles import Role
from referral_api.audit import hooks, service
from referral_api.audit.models import AuditEvent


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait until `condition` holds (checked every 50 ms); fail after `timeout` seconds.
    The timeout only bounds a broken sealer: nothing here depends on how fast it is."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _unsealed(session: Any) -> int:
    count = session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
    )
    session.rollback()
    return int(count or 0)


@pytest.fixture
def threaded(app: Any, database_url: str, keyring_path: str) -> Iterator[Any]:
    """An app with its sealing thread (`app`, interval 0, only provides table clean-up).
    The interval is long, so every round these tests see was asked for by a request."""
    looping = create_app(
        conftest.test_config(
            database_url,
            keyring_path,
            AUDIT_SEAL_INTERVAL_SECONDS=600,
            AUDIT_SEAL_DELAY_SECONDS=0.01,
        )
    )
    yield looping
    looping.extensions[hooks.SEALER].stop(timeout=30)


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads that ran a sealing round, in order."""
    seen: list[str] = []
    real = hooks.seal_batch

    def recording(session: Any, batch_size: int = 500) -> int | None:
        seen.append(threading.current_thread().name)
        return real(session, batch_size)

    monkeypatch.setattr(hooks, "seal_batch", recording)
    return seen


def _case_and_headers(app: Any, client: Any) -> tuple[str, dict[str, str]]:
    factory = conftest.Factory(app, client)
    headers = factory.headers(factory.user(Role.CASEWORKER))
    response = client.post("/api/v1/cases", json={"case_type": "thb"}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"], headers


def test_requests_leave_sealing_to_the_worker_thread(
    threaded: Any, session: Any, rounds: list[str]
) -> None:
    client = threaded.test_client()
    case_id, headers = _case_and_headers(threaded, client)
    for _ in range(3):
        response = client.get(f"/api/v1/cases/{case_id}", headers=headers, buffered=True)
        assert response.status_code == 200
    factory = conftest.Factory(threaded, client)
    intruder = factory.headers(factory.user(Role.CASEWORKER))  # another organisation
    denied = client.get(f"/api/v1/cases/{case_id}", headers=intruder, buffered=True)
    assert denied.status_code == 404  # a denial is recorded and sealed the same way

    _wait_for(lambda: _unsealed(session) == 0, "the sealing thread to seal every row")
    assert rounds and set(rounds) == {"audit-sealer"}, rounds  # never a request's thread
    with hooks_session(threaded) as s:
        outcome = service.verify_chain(s)
    # The creation, three reads and the denial.
    assert (outcome.ok, outcome.checked, outcome.unsealed) == (True, 5, 0)


def test_a_burst_of_requests_is_sealed_in_one_round(
    threaded: Any, session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = threaded.test_client()
    case_id, headers = _case_and_headers(threaded, client)
    _wait_for(lambda: _unsealed(session) == 0, "the case creation to be sealed")

    # Hold the thread's next round until the whole burst is committed.
    gate, held = threading.Event(), threading.Event()
    calls: list[int | None] = []
    sealers: set[str] = set()
    real = hooks.seal_batch

    def gated(s: Any, batch_size: int = 500) -> int | None:
        sealers.add(threading.current_thread().name)
        if not calls:
            held.set()
            assert gate.wait(30), "the test never opened the gate"
        calls.append(real(s, batch_size))
        return calls[-1]

    monkeypatch.setattr(hooks, "seal_batch", gated)
    burst = 10
    for _ in range(burst):
        assert client.get(f"/api/v1/cases/{case_id}", headers=headers).status_code == 200
    assert held.wait(30), "no request signalled the sealing thread"
    # Every request has answered while its rows were still pending: none of them sealed.
    assert _unsealed(session) == burst
    assert sealers == {"audit-sealer"}, sealers
    gate.set()

    _wait_for(lambda: _unsealed(session) == 0, "the burst to be sealed")
    # One round chained all ten rows; at most one more (signals that came in meanwhile).
    assert calls[0] == burst, calls
    assert len(calls) <= 2, calls
    assert sealers == {"audit-sealer"}, sealers
    with hooks_session(threaded) as s:
        assert service.verify_chain(s).ok


def _orphan_row(session: Any) -> int:
    """An unsealed row no request announced (e.g. of a worker that died); its id."""
    orphan = AuditEvent(
        occurred_at=datetime.now(UTC),
        actor_type="system",
        action="probe:orphan",
        resource_type="probe",
        decision="allow",
    )
    session.add(orphan)
    session.commit()
    orphan_id = orphan.id
    session.close()
    return orphan_id


def _is_sealed(session: Any, row_id: int) -> bool:
    seq = session.scalars(select(AuditEvent.seq).where(AuditEvent.id == row_id)).one()
    session.rollback()
    return seq is not None


def test_background_sealer_seals_rows_left_pending(app, database_url, keyring_path, session):
    # Rows no request announced (e.g. of a worker that died) wait for the periodic round.
    looping = create_app(
        conftest.test_config(database_url, keyring_path, AUDIT_SEAL_INTERVAL_SECONDS=0.2)
    )
    orphan_id = _orphan_row(session)

    assert looping.test_client().get("/health").status_code == 200  # starts the loop

    def sealed() -> bool:
        return _is_sealed(session, orphan_id)

    try:
        _wait_for(sealed, "the background loop to seal the pending row")
    finally:
        looping.extensions[hooks.SEALER].stop(timeout=30)


def test_the_background_sealer_outlives_an_unexpected_error(
    app, database_url, keyring_path, session, monkeypatch
):
    """An error that is not the database's (a bug, a row it cannot read) is logged and the
    thread goes on: a dead sealer thread would leave every later row unsealed."""
    looping = create_app(
        conftest.test_config(database_url, keyring_path, AUDIT_SEAL_INTERVAL_SECONDS=0.2)
    )
    real, calls = hooks.seal_batch, []

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not a database error")
        return real(*args, **kwargs)

    monkeypatch.setattr(hooks, "seal_batch", fails_once)
    orphan_id = _orphan_row(session)
    assert looping.test_client().get("/health").status_code == 200  # starts the loop

    def sealed() -> bool:
        return _is_sealed(session, orphan_id)

    try:
        _wait_for(sealed, "the background loop to seal after its failed round")
    finally:
        looping.extensions[hooks.SEALER].stop(timeout=30)
    assert len(calls) >= 2


def test_no_background_loop_when_disabled(app):
    assert hooks.SEALER not in app.extensions


def test_stop_ends_the_thread(threaded: Any) -> None:
    assert threaded.test_client().get("/health").status_code == 200
    sealer = threaded.extensions[hooks.SEALER]
    thread = sealer._thread
    assert thread is not None and thread.is_alive()
    sealer.stop(timeout=30)
    assert not thread.is_alive()


def hooks_session(app: Any) -> Any:
    from referral_api.extensions import db

    return db.session_factory_for(app)()


def test_a_batch_holding_a_row_sealed_meanwhile_is_refused_whole(app, monkeypatch):
    # Sealing updates only unsealed rows; should a selected row turn out to be sealed
    # already (something sealed without the chain head), chaining on would fork the chain:
    # the batch is refused and nothing changes.
    from referral_api.access.actor import Actor
    from referral_api.audit.models import AuditChainHead

    with hooks_session(app) as s:
        service.record(s, Actor.system(), "probe:first", resource_type="probe")
        s.commit()
        assert service.seal_pending(s) == 1
        s.commit()
        service.record(s, Actor.system(), "probe:second", resource_type="probe")
        s.commit()
    # The batch query now also returns the row sealed above.
    everything = (
        select(*service._UNSEALED.selected_columns)
        .order_by(AuditEvent.id)
        .limit(bindparam("batch_size", type_=Integer(), literal_execute=True))
    )
    monkeypatch.setattr(service, "_UNSEALED", everything)
    with hooks_session(app) as s, pytest.raises(service.SealConflict):
        service.seal_pending(s)
    with hooks_session(app) as s:
        head = s.get(AuditChainHead, 1)
        assert head is not None and head.last_seq == 1
        pending = s.scalars(select(AuditEvent.action).where(AuditEvent.seq.is_(None))).all()
        assert pending == ["probe:second"]
        assert service.verify_chain(s).ok


@pytest.fixture
def external(app: Any, database_url: str, keyring_path: str) -> Any:
    """An app whose workers leave sealing to the `audit seal --follow` process."""
    return create_app(conftest.test_config(database_url, keyring_path, AUDIT_SEALER="external"))


def test_external_sealer_workers_leave_rows_to_the_sealer_process(
    external: Any, session: Any, rounds: list[str]
) -> None:
    assert hooks.SEALER not in external.extensions  # no thread
    client = external.test_client()
    case_id, headers = _case_and_headers(external, client)
    for _ in range(3):
        response = client.get(f"/api/v1/cases/{case_id}", headers=headers, buffered=True)
        assert response.status_code == 200
    # Neither a thread nor the responses sealed anything: creation + three reads wait.
    assert rounds == []
    assert _unsealed(session) == 4

    result = external.test_cli_runner().invoke(
        args=["audit", "seal", "--follow", "--delay-ms", "10", "--rounds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "4 rows sealed"
    assert _unsealed(session) == 0
    with hooks_session(external) as s:
        outcome = service.verify_chain(s)
    assert (outcome.ok, outcome.checked, outcome.unsealed) == (True, 4, 0)


def test_follow_survives_a_failed_round_and_stops_on_sigterm(app, session, monkeypatch):
    import os
    import signal

    from referral_api.access.actor import Actor

    with hooks_session(app) as s:
        service.record(s, Actor.system(), "probe:pending", resource_type="probe")
        s.commit()
    calls: list[int] = []
    real = hooks.seal_batch

    def flaky(session: Any, batch_size: int = 500) -> int | None:
        calls.append(1)
        if len(calls) == 1:
            raise service.SealConflict("database away")  # logged, retried next round
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by follow: ends after this round
        return real(session, batch_size)

    monkeypatch.setattr(hooks, "seal_batch", flaky)
    handler_before = signal.getsignal(signal.SIGTERM)
    assert hooks.follow(app, delay=0.01) == 1
    assert len(calls) == 2
    assert _unsealed(session) == 0
    assert signal.getsignal(signal.SIGTERM) is handler_before  # restored


def test_follow_backs_off_when_idle_or_failing_and_resets_after_work():
    """The external sealer's waits: `delay` after a round with work (or a busy chain head);
    idle rounds double it up to 1 s, failed rounds up to 5 s; work resets it."""
    work, busy = hooks._Round(3, False), hooks._Round(0, True)
    idle, failed = hooks._Round(0, False), hooks._Round(0, False, failed=True)
    pause, waits = 0.1, []
    for outcome in [idle] * 5 + [work] + [failed] * 8 + [busy, failed]:
        pause = hooks._next_pause(pause, 0.1, outcome)
        waits.append(pause)
    assert waits == pytest.approx(
        [
            *[0.2, 0.4, 0.8, 1.0, 1.0],  # idle: up to 1 s
            0.1,  # work: back to the delay
            *[0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0],  # database away: up to 5 s
            *[0.1, 0.2],  # a busy head is not idle; a new failure starts again from the delay
        ]
    )
    # A delay above the idle cap is never shortened.
    assert hooks._next_pause(2.0, 2.0, idle) == 2.0


def test_unknown_sealer_mode_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from referral_api.exceptions import ConfigurationError
    from referral_api.settings import load_settings

    monkeypatch.setenv("REFERRAL_API_AUDIT_SEALER", "cron")
    with pytest.raises(ConfigurationError, match="REFERRAL_API_AUDIT_SEALER"):
        load_settings(str(tmp_path))
