"""The committed OpenAPI document matches the live app, and documents the contract."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from referral_api.directory.service import (
    LANGUAGE_TAG_PATTERN,
    MAX_LANGUAGE_TAG,
    normalise_language_tag,
)
from referral_api.openapi import spec_json

COMMITTED = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def test_committed_openapi_matches_live_spec(app):
    live = spec_json(app)
    assert COMMITTED.exists(), "run `make openapi` and commit openapi/openapi.json"
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == json.loads(live), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


def test_spec_is_openapi_31_with_bearer_scheme_and_problem_schema(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "errors"} <= set(problem["properties"])
    unauthorized = spec["components"]["responses"]["UNAUTHORIZED"]
    assert "application/problem+json" in unauthorized["content"]


def test_protected_operations_declare_security_and_401(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    me = spec["paths"]["/api/v1/me"]["get"]
    assert me["security"] == [{"bearerAuth": []}]
    assert {"401", "403"} <= set(me["responses"])
    login = spec["paths"]["/api/v1/auth/login"]["post"]
    assert "security" not in login


def test_interactive_docs_are_served_without_a_cdn(client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/v1/docs/assets/swagger-ui-bundle.js" in html
    assert "https://" not in html.replace("https://swagger.io", "")
    asset = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.get_data()) > 100_000


def test_documented_patterns_are_the_ones_enforced(client, auth_headers):
    """What an integrator validates against before sending (the document's patterns) is what
    the server checks: a value the pattern accepts is accepted, one it refuses is refused."""
    import uuid

    from referral_api.access.roles import Role

    spec = client.get("/api/v1/openapi.json").get_json()
    intake = spec["paths"]["/api/v1/intake"]["post"]["parameters"]
    (key,) = [p for p in intake if p["name"] == "Idempotency-Key"]
    key_pattern = re.compile(key["schema"]["pattern"])
    incident = spec["components"]["schemas"]["Incident"]["properties"]["incident_date"]
    date_pattern = re.compile(incident["pattern"])

    headers = auth_headers(Role.CASEWORKER)
    for value in ("2019", "2019-07", "2019-07-31", "2019-7", "2019-13", "19", "2019-07-32"):
        body = {"case_type": "thb", "incident": {"incident_date": value}}
        response = client.post("/api/v1/cases", json=body, headers=headers)
        assert (response.status_code == 201) == bool(date_pattern.match(value)), value
    # An idempotent operation: the key is checked before the referral is looked up (404).
    url = f"/api/v1/referrals/{uuid.uuid4()}/messages"
    for value in ("intake-0001", "a" * 8, "x" * 128, "short", "x" * 129, "has space 123"):
        response = client.post(
            url, json={"body": "hello"}, headers={**headers, "Idempotency-Key": value}
        )
        expected = 404 if key_pattern.match(value) else 422
        assert response.status_code == expected, (value, response.status_code)


@given(st.from_regex(LANGUAGE_TAG_PATTERN, fullmatch=True))
def test_a_language_tag_of_the_documented_pattern_is_accepted(tag):
    """Within the documented maxLength (35): accepted; past it: refused."""
    if len(tag) > MAX_LANGUAGE_TAG:
        with pytest.raises(ValueError):
            normalise_language_tag(tag)
    else:
        assert normalise_language_tag(tag).lower() == tag.lower()


@given(st.text(alphabet="abcdeLMNZ0129-_ ", max_size=20))
def test_a_language_tag_outside_the_documented_pattern_is_refused(text):
    documented = re.fullmatch(LANGUAGE_TAG_PATTERN[1:-1], text.strip()) is not None
    try:
        normalise_language_tag(text)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == documented


def test_the_language_tag_pattern_is_documented(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    services = spec["paths"]["/api/v1/services"]["get"]["parameters"]
    (language,) = [p for p in services if p["name"] == "language"]
    assert language["schema"]["pattern"] == LANGUAGE_TAG_PATTERN
