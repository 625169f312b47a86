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
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, Response, abort, current_app, g, request
from webargs.core import is_json

from referral_api.errors import problem_response

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
access_log = logging.getLogger("referral_api.access")

_STANDARD_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


# A line per request: orjson writes it in compiled code; datetimes and dataclasses go to
# `str` as the stdlib's `default=str` sends them.
_LOG_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


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
            entry["traceback"] = traceback_without_messages(record.exc_info[1])
        try:
            return orjson.dumps(entry, default=str, option=_LOG_OPTIONS).decode("utf-8")
        except TypeError:  # what orjson does not write (non-text keys, huge integers)
            return json.dumps(entry, default=str)


def traceback_without_messages(error: BaseException | None) -> str:
    """Frames and exception types of the whole chain, never an exception's message.

    `logging.Formatter.formatException` ends each traceback with `Type: message`, and messages
    quote values: a PostgreSQL unique violation names the duplicate e-mail address, an SQL
    error carries the statement. The frames and types are what an operator needs.
    """
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        cause = error.__cause__
        context = None if error.__suppress_context__ else error.__context__
        error = cause or context
    parts: list[str] = []
    for position, link in enumerate(reversed(chain)):
        if position:
            parts.append("\nwhich led to:\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(link.__traceback__))
        parts.append(f"{type(link).__module__}.{type(link).__qualname__}\n")
    return "".join(parts).rstrip("\n")


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


_BODY_LOCATIONS = frozenset({"json", "form", "json_or_form", "files"})


def _has_body() -> bool:
    return bool(request.content_length) or request.headers.get(
        "Transfer-Encoding", ""
    ).lower().startswith("chunked")


def _body_locations() -> set[str]:
    """Where the matched view reads its body arguments from (flask-smorest's own record)."""
    if request.url_rule is None or request.endpoint is None:
        return set()
    view: Any = current_app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    if view_class is not None:  # a MethodView: the method's own documentation
        view = getattr(view_class, request.method.lower(), None)
    parameters = (getattr(view, "_apidoc", None) or {}).get("arguments", {}).get("parameters", [])
    return {p.get("in") for p in parameters} & _BODY_LOCATIONS


def _refuse_an_ignored_body() -> None:
    """A view that reads no body would ignore one and act: `POST /erasures/{id}/approve`
    with `{"approve": false}` erased the case. Only an empty JSON object passes (clients
    send `{}` with every POST); anything else is a 415 (not JSON) or a 422."""
    from referral_api.exceptions import ValidationFailed
    from referral_api.jsonio import loads

    if not is_json(request.mimetype):
        abort(problem_response(415))
    try:
        empty = loads(request.get_data(cache=True)) == {}
    except ValueError:
        empty = False
    if not empty:
        raise ValidationFailed(
            {"_schema": ["This endpoint takes no request body; send none (or {})."]},
            location="json",
        )


def init_request_hooks(app: Flask) -> None:
    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.before_request
    def refuse_unsupported_body() -> Response | None:
        # webargs silently ignores a body that is not JSON: a PATCH sent as text/plain or a
        # form would answer 200 having changed nothing. Refuse it instead (415).
        if not _has_body():
            return None
        accepted = _body_locations()
        if not accepted and request.url_rule is not None:
            _refuse_an_ignored_body()
        if not accepted or is_json(request.mimetype):
            return None
        if request.mimetype == "application/x-www-form-urlencoded" and accepted & {
            "form",
            "json_or_form",
        }:
            return None
        if request.mimetype == "multipart/form-data" and accepted & {"form", "files"}:
            return None
        return problem_response(415)

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
