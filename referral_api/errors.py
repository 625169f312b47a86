"""One error shape for every failure: application/problem+json (RFC 9457).

Nothing from an exception's text, a stack trace, SQL or personal data ever reaches a
response: details are fixed sentences chosen here or by the project's own exceptions.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask import Flask, Response, g, json
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from referral_api.crypto.keyring import KeyUnavailable
from referral_api.crypto.keys import KeyRemovedConcurrently
from referral_api.exceptions import AuthenticationFailed, ReferralApiError, TooManyAttempts

log = logging.getLogger("referral_api.errors")

PROBLEM_MIMETYPE = "application/problem+json"

# Fixed, caller-safe details for plain HTTP errors (werkzeug's own texts are replaced).
_DEFAULT_DETAILS = {
    400: "The request could not be understood.",
    401: "Authentication is required.",
    403: "Your role does not allow this action.",
    404: "The requested resource was not found.",
    405: "The method is not allowed for this resource.",
    406: "The requested representation is not available.",
    409: "The request conflicts with the current state of the resource.",
    410: "The resource is gone.",
    412: "The resource was changed since you read it. Reload and try again.",
    413: "The request body is too large.",
    415: "The request body must be application/json.",
    422: "The request did not pass validation.",
    428: "This request must be conditional: send If-Match with the resource's ETag.",
    429: "Too many requests. Try again later.",
    500: "An internal error occurred. Quote the request id when reporting it.",
    503: "The service is not ready.",
}


# RFC 9110 names where Python's table still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details, as every error response of this API is shaped."""

    type = ma.fields.String(
        metadata={"description": "URI reference identifying the problem type"},
        dump_default="about:blank",
    )
    title = ma.fields.String(metadata={"description": "Short summary of the problem type"})
    status = ma.fields.Integer(metadata={"description": "HTTP status code"})
    detail = ma.fields.String(metadata={"description": "Explanation of this occurrence"})
    instance = ma.fields.String(metadata={"description": "Request id of this occurrence"})
    errors = ma.fields.Dict(
        metadata={
            "description": "Validation errors: location (json, query, headers) → field → messages"
        }
    )


def problem_response(
    status: int,
    *,
    detail: str | None = None,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or _TITLES.get(status) or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or _DEFAULT_DETAILS.get(status, HTTPStatus(status).phrase),
    }
    request_id = getattr(g, "request_id", None)
    if request_id:
        body["instance"] = f"urn:request:{request_id}"
    body.update({key: value for key, value in extra.items() if value is not None})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    if status == 401:
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="referral_api"')
    return response


def problem_from_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    headers = dict(data.get("headers") or {})
    valid_methods = getattr(error, "valid_methods", None)  # werkzeug's MethodNotAllowed
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(sorted(valid_methods))
    detail = data.get("message") if isinstance(data.get("message"), str) else None
    if status == 400 and errors:
        # webargs reports malformed JSON as a 400 with a nested message; keep ours.
        errors = None
    type_ = "/problems/validation" if status == 422 else "about:blank"
    return problem_response(status, detail=detail, type_=type_, headers=headers, errors=errors)


def handle_domain_error(error: ReferralApiError) -> Response:
    if error.audit is not None:
        from flask import current_app

        from referral_api.audit.hooks import record_denial

        record_denial(current_app._get_current_object(), error.audit)  # type: ignore[attr-defined]
    headers: dict[str, str] = {}
    if isinstance(error, TooManyAttempts):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, AuthenticationFailed) and error.challenge:
        headers["WWW-Authenticate"] = error.challenge
    return problem_response(
        error.status,
        detail=error.detail,
        title=error.title,
        type_=error.problem_type,
        headers=headers,
        **error.extra,
    )


def handle_stale_data(_error: StaleDataError) -> Response:
    # A concurrent writer changed the row between our read and our versioned update.
    return problem_response(412, type_="/problems/stale-etag")


# Transaction conflicts the database resolved by aborting this request's transaction:
# PostgreSQL's serialization failure, deadlock and lock timeout (SQLSTATE), SQLite's busy
# and locked (extended result codes reduced to their primary code).
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_SQLITE_BUSY_OR_LOCKED = frozenset({5, 6})


# A new data key wrapped under an organisation-key version that a concurrent
# `keys rotate-org-keys` has just deleted (the reference of migration 0013): nothing was
# stored, and a retry wraps it under the new version.
_ROTATED_AWAY = ("23503", "fk_case_keys_org_id_org_keys")


def is_transaction_conflict(error: DBAPIError) -> bool:
    orig = error.orig
    if getattr(orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
        return True
    diag = getattr(orig, "diag", None)
    if (getattr(orig, "sqlstate", None), getattr(diag, "constraint_name", None)) == _ROTATED_AWAY:
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _SQLITE_BUSY_OR_LOCKED


def handle_database_error(error: DBAPIError) -> Response:
    # Worth a retry: the database aborted the transaction over a concurrent one (nothing of
    # it was stored), the connection went away under the request (a restart, a failover:
    # SQLAlchemy has then discarded it and every older pooled connection), or no connection
    # could be made at all (no statement was run). Any other database error is a bug.
    cause = type(error.orig).__name__
    if is_transaction_conflict(error):
        return _retry_later(
            "/problems/transaction-conflict",
            "A concurrent change got in the way and nothing was stored. Retry the request.",
            "transaction aborted by a concurrent one: %s",
            cause,
        )
    unreachable = isinstance(error, OperationalError) and error.statement is None
    if not (error.connection_invalidated or unreachable):
        return handle_unexpected(error)
    # The transaction was not committed, unless the connection died during COMMIT itself.
    lost = " (connection lost)" if error.connection_invalidated else ""
    return _retry_later(
        "/problems/database-unavailable",
        "The database is unavailable or the connection to it was lost. Retry the request.",
        "database unavailable: %s%s",
        cause,
        lost,
    )


def handle_key_removed(error: Exception) -> Response:
    # Rows read before a concurrent `keys rotate-*` or erasure removed the key version they
    # are under (crypto.keys.KeyRemovedConcurrently): nothing is wrong with what is stored,
    # and a retry reads the rows as they are now.
    return _retry_later(
        "/problems/transaction-conflict",
        "A concurrent change got in the way and nothing was stored. Retry the request.",
        "a key version was removed by a concurrent change: %s",
        type(error).__name__,
    )


def handle_key_unavailable(error: KeyUnavailable) -> Response:
    # A key the request's rows are wrapped under cannot be unwrapped: its root version was
    # destroyed or is missing from the keyring (a backup restored after `keys destroy-root`,
    # a keyring file from another deployment or an older copy). Nothing a client can fix
    # or retry: an operator's. The message names versions, never key material.
    log.error(
        "key unavailable: %s",
        error,
        extra={"request_id": getattr(g, "request_id", None)},
    )
    return problem_response(
        503,
        detail="A key this record is encrypted under is not available. Tell the operators.",
        type_="/problems/key-unavailable",
    )


def _retry_later(problem_type: str, detail: str, logged: str, *args: str) -> Response:
    """A retryable 503 (Retry-After: 1), logged as a warning without a traceback: `logged`
    (a constant format, `args` its values) names the cause by exception class only (a
    database message may quote values)."""
    log.warning(logged, *args, extra={"request_id": getattr(g, "request_id", None)})
    return problem_response(503, detail=detail, type_=problem_type, headers={"Retry-After": "1"})


def handle_unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return problem_from_http_exception(error)
    log.error(
        "unhandled exception",
        exc_info=error,
        extra={"request_id": getattr(g, "request_id", None)},
    )
    return problem_response(500)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ReferralApiError, handle_domain_error)
    app.register_error_handler(StaleDataError, handle_stale_data)
    app.register_error_handler(DBAPIError, handle_database_error)
    app.register_error_handler(KeyRemovedConcurrently, handle_key_removed)
    app.register_error_handler(KeyUnavailable, handle_key_unavailable)
    app.register_error_handler(Exception, handle_unexpected)
