"""Request ids, structured JSON logs and security headers.

A log line names the route *template* (never the path or query string, which may carry
search terms) and the actor id; bodies, headers and tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
access_log = logging.getLogger("referral_api.access")

_STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Type and traceback only: exception messages may quote values.
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(app: Flask) -> None:
    root = logging.getLogger("referral_api")
    if not any(getattr(h, "_referral_api", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._referral_api = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = app.config.get("ENV_NAME") == "testing"


def _client_address() -> str:
    return request.remote_addr or "unknown"


def init_request_hooks(app: Flask) -> None:
    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def secure_and_log(response: Response) -> Response:
        headers = response.headers
        headers["X-Request-ID"] = g.get("request_id", "")
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        if not request.path.startswith("/api/v1/docs"):
            headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
        if not request.path.startswith("/api/v1/docs/assets/"):
            # Nothing this API answers may be kept by a browser or proxy cache.
            headers["Cache-Control"] = "no-store"
            headers["Pragma"] = "no-cache"
        actor = g.get("actor")
        access_log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "actor_id": str(actor.id) if actor is not None and actor.id else None,
                "actor_org_id": str(actor.org_id) if actor is not None and actor.org_id else None,
                "method": request.method,
                "route": request.url_rule.rule if request.url_rule else None,
                "status": response.status_code,
                "duration_ms": round(
                    (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2
                ),
            },
        )
        return response
