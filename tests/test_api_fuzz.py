"""Generated requests against every operation of the published OpenAPI document.

Schemathesis draws requests from the document itself: valid ones (positive) and ones that
break it (negative: wrong types, missing fields, out-of-range values, odd strings), with the
bearer token of a user of each role below, and against a real case half of the time (a
random id the other half). Whatever arrives, the answer is never a server error, every
refusal is an RFC 9457 problem (`application/problem+json`), and every answer is what the
document says it is: its content type, its declared headers and its body's schema
(schemathesis' conformance checks; the status is always documented, since every operation
declares a `default` problem response). What it found when first run:
a page number past 64 bits in the HSDS listings (a 500 from the database), and a malformed
cursor on a DPO report's CSV export (refused only after the download had started).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    FailureGroup,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)
from schemathesis.generation import GenerationMode

from referral_api.access.roles import Role

API = "/api/v1"
EXAMPLES = 8
# Sign-in, refresh and sign-out would end the session the generated requests use.
LEFT_OUT = (f"{API}/auth/",)
# A case worker (case and referral work), a DPO (reports, rights) and a police officer
# (intake, the police ceiling): between them every operation is reached past the role check.
ROLES = (Role.CASEWORKER, Role.DPO, Role.POLICE_OFFICER)
CONFORMANCE = [content_type_conformance, response_headers_conformance, response_schema_conformance]


def _explore(strategy: Any, check: Any) -> None:
    """`check` over EXAMPLES requests drawn from `strategy`, the same ones on every run."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        check(case)

    run()


def _content_type(response: Any) -> str:
    for name, values in response.headers.items():
        if name.lower() == "content-type":
            return str(values[0] if isinstance(values, list) else values)
    return ""


@pytest.mark.parametrize("role", ROLES, ids=str)
def test_generated_requests_are_answered_without_server_errors(
    app: Any, client: Any, auth_headers: Any, role: Role
) -> None:
    created = client.post(
        f"{API}/cases",
        json={"case_type": "thb", "identity": {"given_name": "Olena"}},
        headers=auth_headers(Role.CASEWORKER),
    )
    case_id, etag = created.get_json()["id"], created.headers["ETag"]
    headers = auth_headers(role)
    schema = schemathesis.openapi.from_wsgi(f"{API}/openapi.json", app)
    failures: list[str] = []
    calls = 0

    def check(operation: Any, case: Any) -> None:
        nonlocal calls
        calls += 1
        if "case_id" in (case.path_parameters or {}) and calls % 2:
            case.path_parameters["case_id"] = case_id
        case.headers = {**(case.headers or {}), **headers}
        if case.method.upper() in ("PATCH", "POST"):
            case.headers.setdefault("If-Match", etag)
        response = case.call()
        asked = f"{case.method} {operation.path} {case.path_parameters or ''} {case.query or ''}"
        problem = "application/problem+json" in _content_type(response)
        if response.status_code >= 500 or (response.status_code >= 400 and not problem):
            failures.append(f"{asked} -> {response.status_code} {response.text[:200]}")
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as group:
            failures.append(f"{asked} -> {response.status_code}: {str(group)[:600]}")

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 60
    for operation in operations:
        if operation.path.startswith(LEFT_OUT):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _explore(operation.as_strategy(mode), lambda case, op=operation: check(op, case))
            except Unsatisfiable:
                # Nothing in the operation can be made invalid (no parameters, no body).
                assert mode is GenerationMode.NEGATIVE, operation.path
    assert calls > 500
    assert failures == []
