"""Seal audit rows right after the request that wrote them has been answered.

An `after_flush` listener marks sessions that inserted audit rows; after the response is
sent (`call_on_close`), short transactions seal pending rows until none is left. Because
the sealer skips a chain head another worker holds, requests never wait on each other for
the chain. A row can still miss every round (its request found the head busy just as the
holder finished), so each worker also runs a short background loop that seals whatever is
pending every AUDIT_SEAL_INTERVAL_SECONDS.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask, Response, current_app, g
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from referral_api.audit.models import AuditEvent
from referral_api.audit.service import seal_pending

log = logging.getLogger(__name__)
_FLAG = "audit_rows_written"


@event.listens_for(Session, "after_flush")
def _mark_audit_rows(session: Session, _context: Any) -> None:
    if any(isinstance(obj, AuditEvent) for obj in session.new):
        session.info[_FLAG] = True


def seal_now(app: Flask, *, max_rounds: int = 20) -> int:
    """Seal in committed batches until a round finds nothing (or the head is busy)."""
    from referral_api.extensions import db

    total = 0
    try:
        for _ in range(max_rounds):
            with db.session_factory_for(app)() as session:
                sealed = seal_pending(session)
                session.commit()
            total += sealed
            if sealed == 0:
                break
        return total
    except SQLAlchemyError:
        # Never fails a request: unsealed rows are picked up by the next seal or verify.
        log.warning("audit sealing deferred", exc_info=True)
        return 0


class BackgroundSealer:
    """One daemon thread per worker process, started with its first request (after a
    pre-forking server has forked), sealing pending rows every `interval` seconds."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            thread = threading.Thread(target=self._run, name="audit-sealer", daemon=True)
            thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            seal_now(self.app)

    def stop(self) -> None:
        self._stop.set()


def init_app(app: Flask) -> None:
    interval = float(app.config.get("AUDIT_SEAL_INTERVAL_SECONDS", 5))
    if interval > 0:
        sealer = BackgroundSealer(app, interval)
        app.extensions["referral_api.audit_sealer"] = sealer
        app.before_request(sealer.ensure_running)

    @app.after_request
    def seal_after_response(response: Response) -> Response:
        session = g.get("db_session")
        if session is not None and session.info.pop(_FLAG, False):
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
    seal_now(app)
