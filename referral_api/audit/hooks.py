"""Seal audit rows soon after the requests that wrote them, without making requests wait.

`audit.service.record` marks the session that inserted audit rows (the rows themselves are
committed with the request's change, before its response leaves). Sealing them is not the
request's job:

- With the per-worker sealing thread (AUDIT_SEAL_INTERVAL_SECONDS > 0, the default), an
  audited request only signals its worker's thread. The thread waits
  AUDIT_SEAL_DELAY_SECONDS, so that one short transaction chains every row the worker's
  requests committed meanwhile (one round per delay under load, instead of one or two
  transactions after every request), and seals again after the delay when another worker
  held the chain head. A row is therefore sealed about AUDIT_SEAL_DELAY_SECONDS after its
  request, and at the latest by the thread's round every AUDIT_SEAL_INTERVAL_SECONDS, which
  also picks up rows no signal announced (a worker that died, a failed round).
- Without the thread (interval 0, as in the tests), each audited response seals right
  after it has been sent (`call_on_close`).

- With AUDIT_SEALER=external, workers do not seal at all: one `referral-api audit seal
  --follow` process, run beside the workers, seals every AUDIT_SEAL_DELAY_SECONDS. Sealing
  then never competes with a request for its worker's interpreter (the GIL).

Either way the sealer takes the chain head with SKIP LOCKED, so no request and no worker
ever waits for another one to finish sealing; rows are chained in id order.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, NamedTuple

from flask import Flask, Response, current_app, g
from sqlalchemy.exc import SQLAlchemyError

from referral_api.audit.service import ROWS_WRITTEN, seal_batch

log = logging.getLogger(__name__)
_BATCH = 500
_MAX_BACKOFF = 5.0
_MAX_IDLE_PAUSE = 1.0
SEALER = "referral_api.audit_sealer"


class _Round(NamedTuple):
    sealed: int  # rows sealed
    head_busy: bool  # another worker is sealing and may have missed our rows
    failed: bool = False  # a database error ended the round (logged)


def _seal(app: Flask, max_rounds: int) -> _Round:
    """Seal in committed batches until one is short."""
    from referral_api.extensions import db

    total = 0
    try:
        for _ in range(max_rounds):
            with db.session_factory_for(app)() as session:
                sealed = seal_batch(session, _BATCH)
                session.commit()
            if sealed is None:
                return _Round(total, True)
            total += sealed
            if sealed < _BATCH:
                break
    except SQLAlchemyError:
        # Never fails a request: unsealed rows are picked up by the next seal or verify.
        log.warning("audit sealing deferred", exc_info=True)
        return _Round(total, False, failed=True)
    except Exception:  # a sealer thread that died would never seal again: log, go on
        log.error("audit sealing failed", exc_info=True)
        return _Round(total, False, failed=True)
    return _Round(total, False)


def seal_now(app: Flask, *, max_rounds: int = 20) -> int:
    """Seal what is pending now, in this thread; returns how many rows were sealed."""
    return _seal(app, max_rounds)[0]


class BackgroundSealer:
    """One daemon thread per worker process, started with its first request (after a
    pre-forking server has forked). It seals `delay` seconds after a request signals
    new rows, and every `interval` seconds in any case."""

    def __init__(self, app: Flask, interval: float, delay: float) -> None:
        self.app = app
        self.interval = interval
        self.delay = delay
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            # A forked child inherits the parent's events, not its thread: start afresh.
            self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="audit-sealer", daemon=True)
            self._thread.start()

    def request_seal(self) -> None:
        """Called by a request that committed audit rows: cheap, never blocks."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            signalled = self._wake.wait(self.interval)
            # Gather the rows of the requests that follow into the same round.
            if signalled and self.delay > 0 and self._stop.wait(self.delay):
                break
            if self._stop.is_set():
                break
            # Cleared before the round's SELECT: a row committed after it signals again.
            self._wake.clear()
            if _seal(self.app, max_rounds=20).head_busy:
                self._wake.set()  # another worker is sealing: look again after the delay

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.ident != threading.get_ident():
            self._thread.join(timeout)


def _next_pause(pause: float, delay: float, outcome: _Round) -> float:
    """The external sealer's wait after a round (`pause`: its wait after the last one).
    After work, `delay`. When the database is away (retry up to every 5 s) or there was
    nothing to seal (look up to every 1 s): twice the last wait, at least `delay`, up to that."""
    idle = outcome.sealed == 0 and not outcome.head_busy
    if not (outcome.failed or idle):
        return delay
    cap = _MAX_BACKOFF if outcome.failed else max(delay, _MAX_IDLE_PAUSE)
    return min(max(pause * 2, delay), cap)


def follow(app: Flask, delay: float, rounds: int | None = None) -> int:
    """The external sealer (`referral-api audit seal --follow`): seal what is pending, wait
    `delay` seconds, again, until SIGTERM/SIGINT (or `rounds` rounds, for tests). Returns
    how many rows it sealed. A failed round (database away) is logged and retried."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)
    }
    total = done = 0
    pause = delay
    try:
        while not stop.is_set() and (rounds is None or done < rounds):
            outcome = _seal(app, max_rounds=20)
            total += outcome.sealed
            done += 1
            pause = _next_pause(pause, delay, outcome)
            if outcome.failed or outcome.sealed < _BATCH or outcome.head_busy:
                stop.wait(pause)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return total


def init_app(app: Flask) -> None:
    if app.config.get("AUDIT_SEALER", "thread") == "external":
        # Rows wait (unsealed, still append-only) for the separate sealer process.
        return
    interval = float(app.config.get("AUDIT_SEAL_INTERVAL_SECONDS", 5))
    sealer: BackgroundSealer | None = None
    if interval > 0:
        # At least 10 ms: a thread that found the chain head busy looks again after it.
        delay = max(float(app.config.get("AUDIT_SEAL_DELAY_SECONDS", 0.1)), 0.01)
        sealer = BackgroundSealer(app, interval, min(delay, interval))
        app.extensions[SEALER] = sealer
        app.before_request(sealer.ensure_running)

    @app.after_request
    def seal_after_response(response: Response) -> Response:
        session = g.get("db_session")
        if session is None or not session.info.pop(ROWS_WRITTEN, False):
            return response
        if sealer is not None:
            sealer.request_seal()
        else:
            target = current_app._get_current_object()  # type: ignore[attr-defined]
            response.call_on_close(lambda: seal_now(target))
        return response


def record_denial(app: Flask, entry: dict[str, Any]) -> None:
    """Write a denied access in its own transaction: the request's was rolled back, but the
    attempt must still be on the record."""
    from dataclasses import replace

    from referral_api.access.actor import Actor
    from referral_api.audit.service import record
    from referral_api.extensions import db

    actor = g.get("actor") or Actor.anonymous()
    actor = replace(actor, request_id=g.get("request_id"))
    # The request failed: whatever it did is rolled back, then the denial alone is committed
    # (on the request's own connection, so SQLite's single writer is not waited for).
    session = db.session
    try:
        session.rollback()
        record(session, actor, **entry)
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.error("could not record a denied access", exc_info=True)
        raise
    # Sealed like any audited request's rows: the commit marked the request's session.
