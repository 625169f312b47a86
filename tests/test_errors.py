"""Every error path answers application/problem+json (RFC 9457) and leaks nothing."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from conftest import assert_problem
from sqlalchemy import select, text

from referral_api.access.roles import Role
from referral_api.auth.models import Organisation

# Built so that the full text never appears in this file's source lines (tracebacks quote them).
CANARY = "secret-" + "canary-text"

LOGIN = "/api/v1/auth/login"


def _assert_nothing_leaked(body_text: str) -> None:
    for needle in ("Traceback", 'File "', "RuntimeError", "SELECT", "sqlalchemy", CANARY):
        assert needle not in body_text, needle


# ---- 400 / 422: request bodies ------------------------------------------------------------


def test_malformed_json_body_is_400_problem(client):
    response = client.post(
        LOGIN, data='{"email": "a@example.org",', content_type="application/json"
    )
    body = assert_problem(response, 400)
    # webargs' nested parser message is replaced by a fixed sentence, no "errors" echo.
    assert "errors" not in body
    assert body["instance"].startswith("urn:request:")


@pytest.mark.parametrize(
    "body",
    [
        '{"email": 1' + "0" * 4400 + ', "password": "x"}',
        '{"email": "a@example.org", "password": "x", "n": [-' + "9" * 5000 + "]}",
    ],
    ids=["field", "nested"],
)
def test_a_number_past_pythons_digit_limit_is_malformed_json(client, caplog, body):
    # The stdlib's int() refuses more than 4,300 digits with a plain ValueError, not a
    # JSONDecodeError: it was a 500 with a traceback, for anyone (sign-in needs no token).
    with caplog.at_level(logging.DEBUG):
        response = client.post(LOGIN, data=body, content_type="application/json")
    malformed = client.post(LOGIN, data='{"email": 1,', content_type="application/json")
    problem = assert_problem(response, 400)
    assert problem == {**assert_problem(malformed, 400), "instance": problem["instance"]}
    assert "errors" not in problem and "4300" not in response.get_data(as_text=True)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert "Traceback" not in caplog.text


def test_missing_field_is_422_with_per_field_errors(client):
    response = client.post(LOGIN, json={"email": "someone@example.org"})
    body = assert_problem(response, 422)
    assert body["type"] == "/problems/validation"
    assert body["errors"]["json"]["password"] == ["Missing data for required field."]
    assert "email" not in body["errors"]["json"]


def test_bad_email_is_422_naming_the_field(client):
    response = client.post(LOGIN, json={"email": "not-an-email", "password": "x"})
    body = assert_problem(response, 422)
    assert list(body["errors"]["json"]) == ["email"]
    assert body["errors"]["json"]["email"]


def test_unknown_body_field_is_422(client):
    response = client.post(
        LOGIN, json={"email": "a@example.org", "password": "x", "role": "platform_admin"}
    )
    body = assert_problem(response, 422)
    assert body["errors"]["json"] == {"role": ["Unknown field."]}


def test_an_unknown_query_parameter_is_422_on_every_list(app, client, factory):
    """A list or report that ignored a parameter it did not know answered as if a misspelt
    filter (`stauts=`, `orgid=`) had matched everything: every GET taking query parameters
    refuses an unknown one, naming it (the OpenAPI document lists the known ones)."""
    routes = sorted(
        path
        for path, operations in app.test_client()
        .get("/api/v1/openapi.json")
        .get_json()["paths"]
        .items()
        if any(p.get("in") == "query" for p in operations.get("get", {}).get("parameters", []))
        and "{" not in path
    )
    assert len(routes) >= 10, routes
    headers = {
        role: factory.headers(factory.user(role))
        for role in (Role.CASEWORKER, Role.DPO, Role.ORG_ADMIN)
    }
    refused = {}
    for path in routes:
        for auth in headers.values():
            response = client.get(path, query_string={"no_such_filter": "1"}, headers=auth)
            if response.status_code in (401, 403):
                continue  # this role may not list it at all
            refused[path] = response.status_code
            errors = assert_problem(response, 422)["errors"]
            assert "no_such_filter" in errors["query"], (path, errors)
            break
    assert set(refused) == set(routes), sorted(set(routes) - set(refused))


def test_unknown_field_on_update_changes_nothing(client, factory, auth_headers, session):
    headers = auth_headers(Role.PLATFORM_ADMIN)
    org_id = factory.org(name="Unchanged Org")
    etag = client.get(f"/api/v1/orgs/{org_id}", headers=headers).headers["ETag"]
    response = client.patch(
        f"/api/v1/orgs/{org_id}",
        json={"name": "Renamed", "org_type": "police"},
        headers={**headers, "If-Match": etag},
    )
    body = assert_problem(response, 422)
    assert "org_type" in body["errors"]["json"]
    org = session.get(Organisation, org_id)
    assert (org.name, org.org_type.value) == ("Unchanged Org", "ngo")


# ---- 415: bodies that are not JSON --------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None],
)
def test_non_json_body_to_json_endpoint_is_415(client, content_type):
    # Observed: 415. webargs alone would ignore such a body; the app refuses it instead.
    kwargs: dict[str, Any] = {"data": '{"email": "a@example.org", "password": "x"}'}
    if content_type:
        kwargs["content_type"] = content_type
    body = assert_problem(client.post(LOGIN, **kwargs), 415)
    assert "application/json" in body["detail"]


def test_non_json_update_is_refused_and_changes_nothing(client, factory, auth_headers, session):
    headers = auth_headers(Role.PLATFORM_ADMIN)
    org_id = factory.org(name="Plain Text Org")
    etag = client.get(f"/api/v1/orgs/{org_id}", headers=headers).headers["ETag"]
    response = client.patch(
        f"/api/v1/orgs/{org_id}",
        data='{"name": "Renamed by text"}',
        content_type="text/plain",
        headers={**headers, "If-Match": etag},
    )
    assert_problem(response, 415)
    org = session.get(Organisation, org_id)
    assert org.name == "Plain Text Org"
    session.rollback()  # end the read: SQLite's BEGIN IMMEDIATE would block the next request
    assert client.get(f"/api/v1/orgs/{org_id}", headers=headers).headers["ETag"] == etag


def test_json_with_charset_and_form_on_form_endpoint_are_accepted(client):
    response = client.post(
        LOGIN,
        data='{"email": "nobody@example.org", "password": "wrong-password"}',
        content_type="application/json; charset=utf-8",
    )
    assert_problem(response, 401)  # parsed, then refused on the credentials
    response = client.post(
        "/api/v1/auth/token",
        data={"grant_type": "client_credentials", "client_id": "rac_x", "client_secret": "nope"},
    )
    assert_problem(response, 401)  # the token endpoint takes form-encoded bodies (OAuth 2.0)


# ---- 404 / 405 ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/nope", "/nope", "/api/v1/orgs/extra/segments/x"])
def test_unknown_route_is_404_problem(client, path):
    body = assert_problem(client.get(path), 404)
    assert path not in body["detail"]


def test_malformed_uuid_in_path_is_404(client, auth_headers):
    headers = auth_headers(Role.PLATFORM_ADMIN)
    assert_problem(client.get("/api/v1/orgs/not-a-uuid", headers=headers), 404)
    assert_problem(client.get("/api/v1/users/1234", headers=headers), 404)


def test_unknown_uuid_is_404(client, auth_headers):
    headers = auth_headers(Role.PLATFORM_ADMIN)
    assert_problem(client.get(f"/api/v1/orgs/{uuid.uuid4()}", headers=headers), 404)


def test_wrong_method_is_405_with_allow_header(client):
    response = client.delete(LOGIN)
    assert_problem(response, 405)
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert "POST" in allowed
    assert "DELETE" not in allowed
    response = client.put("/api/v1/me")
    assert_problem(response, 405)
    assert "GET" in response.headers["Allow"]


# ---- 413 ----------------------------------------------------------------------------------


@pytest.fixture
def small_body_limit(app_config):
    app_config["MAX_CONTENT_LENGTH"] = 256
    return app_config


def test_body_larger_than_limit_is_413(small_body_limit, client):
    response = client.post(LOGIN, json={"email": "a@example.org", "password": "p" * 1000})
    assert_problem(response, 413)
    # A body under the limit still reaches the view.
    small = client.post(LOGIN, json={"email": "a@example.org", "password": "p" * 20})
    assert_problem(small, 401)


# ---- 401 / 403 / 429 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [None, "Bearer not-a-jwt", "Basic Zm9vOmJhcg==", "Bearer "]
)
def test_missing_or_bad_token_is_401_problem(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/api/v1/me", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_credentials_are_401_problem(client, factory):
    user = factory.user(Role.CASEWORKER)
    response = client.post(LOGIN, json={"email": user.email, "password": "wrong-password"})
    body = assert_problem(response, 401)
    assert "wrong-password" not in response.get_data(as_text=True)
    assert user.email not in body["detail"]


def test_role_without_permission_is_403_problem(client, auth_headers):
    response = client.get("/api/v1/orgs", headers=auth_headers(Role.CASEWORKER))
    assert_problem(response, 403)


@pytest.fixture
def strict_throttle(app_config):
    app_config["LOGIN_MAX_FAILURES_PER_ACCOUNT"] = 2
    app_config["LOGIN_LOCKOUT_SECONDS"] = 120
    return app_config


def test_throttled_login_is_429_with_retry_after(strict_throttle, client, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(2):
        assert_problem(client.post(LOGIN, json={"email": user.email, "password": "nope"}), 401)
    response = client.post(LOGIN, json={"email": user.email, "password": user.password})
    body = assert_problem(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= 121
    assert body["type"] == "/problems/too-many-attempts"


# ---- 500 ----------------------------------------------------------------------------------


def _add_public_route(app, rule: str, view) -> None:
    view.__public__ = True
    app.add_url_rule(rule, view.__name__, view)


def test_unexpected_exception_is_generic_500(app, client, caplog):
    def explode() -> Any:
        raise RuntimeError(CANARY)

    _add_public_route(app, "/api/v1/test-explode", explode)
    request_id = "req-500-test-0001"
    with caplog.at_level(logging.ERROR, logger="referral_api.errors"):
        response = client.get("/api/v1/test-explode", headers={"X-Request-ID": request_id})

    body = assert_problem(response, 500)
    assert body["instance"] == f"urn:request:{request_id}"
    assert request_id in body["detail"] or "request id" in body["detail"]
    _assert_nothing_leaked(response.get_data(as_text=True))
    assert response.headers["X-Request-ID"] == request_id

    records = [r for r in caplog.records if r.name == "referral_api.errors"]
    assert len(records) == 1
    record = records[0]
    assert record.request_id == request_id
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text
    assert "in explode" in caplog.text


def test_database_error_is_500_without_sql(app, client, caplog):
    from referral_api.extensions import db

    def bad_query() -> Any:
        db.session.execute(text("SELECT secret_column FROM no_such_table_xyz"))
        return {}

    _add_public_route(app, "/api/v1/test-bad-query", bad_query)
    with caplog.at_level(logging.ERROR, logger="referral_api.errors"):
        response = client.get("/api/v1/test-bad-query")
    assert_problem(response, 500)
    data = response.get_data(as_text=True)
    _assert_nothing_leaked(data)
    assert "no_such_table_xyz" not in data
    assert "secret_column" not in data
    assert any(r.name == "referral_api.errors" and r.exc_info for r in caplog.records)
    # The request's session was discarded: the next request works normally.
    assert client.get("/health").status_code == 200


def test_error_responses_never_echo_the_request(client, session):
    response = client.post(
        LOGIN, data='{"email": "leak@example.org", "password": ', content_type="application/json"
    )
    assert_problem(response, 400)
    assert "leak@example.org" not in response.get_data(as_text=True)
    # Nothing was stored by any of the failed requests.
    assert session.scalar(select(Organisation).limit(1)) is None
