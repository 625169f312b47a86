"""Helpers for the existence-oracle tests: compare two answers for all a caller observes."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import text

API = "/api/v1"

# Headers that legitimately differ between any two requests.
_VOLATILE = {"x-request-id", "date"}


def observed(response: Any) -> dict[str, Any]:
    """Everything a caller sees of a response, minus per-request noise."""
    raw = response.get_data(as_text=True)
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "instance"}
    headers = {
        k.lower(): v
        for k, v in response.headers.items()
        if k.lower() not in _VOLATILE and k.lower() != "content-length"
    }
    return {
        "status": response.status_code,
        "body": body,
        "headers": headers,
        # Content-Length compared net of the request id carried in `instance`.
        "length": len(json.dumps(body, sort_keys=True)) if body is not None else 0,
    }


def send(client: Any, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    """The response, with `audit_rows_written` set: how many audit rows the request added
    (what /audit/verify's `checked` count would show a DPO)."""
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    before = last_audit_id(client.application)
    response = client.open(f"{API}{path}", method=method, **kwargs)
    response.audit_rows_written = last_audit_id(client.application) - before
    return response


def indistinguishable(real: Any, fake: Any) -> bool:
    """The same answer, and as many audit rows written, for both requests."""
    return bool(
        observed(real) == observed(fake)
        and getattr(real, "audit_rows_written", 0) == getattr(fake, "audit_rows_written", 0)
    )


def diff(a: Any, b: Any) -> str:
    rows_a = getattr(a, "audit_rows_written", "?")
    rows_b = getattr(b, "audit_rows_written", "?")
    return (
        f"\n  existing-other-org: {observed(a)} audit rows +{rows_a}"
        f"\n  made-up id:         {observed(b)} audit rows +{rows_b}"
    )


def audit_rows(app: Any, after: int = 0) -> list[dict[str, Any]]:
    from referral_api.extensions import db

    with db.engine_for(app).connect() as connection:
        result = connection.execute(
            text(
                "SELECT id, action, resource_type, resource_id, case_id, decision, reason, "
                "details, actor_org_id FROM audit_events WHERE id > :after ORDER BY id"
            ),
            {"after": after},
        )
        return [dict(row._mapping) for row in result]


def last_audit_id(app: Any) -> int:
    from referral_api.extensions import db

    with db.engine_for(app).connect() as connection:
        return int(
            connection.execute(text("SELECT COALESCE(MAX(id), 0) FROM audit_events")).scalar()
        )


def fresh() -> str:
    return str(uuid.uuid4())
