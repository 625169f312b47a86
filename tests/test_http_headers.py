"""Security headers on every response, request ids, and the CORS allow-list."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from referral_api.access.roles import Role

ALLOWED_ORIGIN = "https://app.example.org"
OTHER_ORIGIN = "https://evil.example.net"


def _responses(client: Any, factory: Any) -> list[tuple[str, Any]]:
    """A spread of answers: public, authenticated, success, client error, preflight."""
    admin = factory.user(Role.PLATFORM_ADMIN)
    tokens = factory.login(admin)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    caseworker = factory.headers(factory.user(Role.CASEWORKER))
    return [
        ("health", client.get("/health")),
        ("ready", client.get("/ready")),
        ("openapi", client.get("/api/v1/openapi.json")),
        ("docs page", client.get("/api/v1/docs")),
        (
            "login ok",
            client.post(
                "/api/v1/auth/login", json={"email": admin.email, "password": admin.password}
            ),
        ),
        ("login bad", client.post("/api/v1/auth/login", json={"email": "x@example.org"})),
        ("me", client.get("/api/v1/me", headers=auth)),
        ("orgs list", client.get("/api/v1/orgs", headers=auth)),
        ("org 404", client.get("/api/v1/orgs/00000000-0000-0000-0000-000000000000", headers=auth)),
        ("unauthenticated", client.get("/api/v1/me")),
        ("forbidden", client.get("/api/v1/orgs", headers=caseworker)),
        ("unknown route", client.get("/api/v1/nope")),
        ("method", client.delete("/api/v1/me", headers=auth)),
        ("options", client.options("/api/v1/me")),
        ("malformed", client.post("/api/v1/auth/login", data="{", content_type="application/json")),
    ]


def test_every_response_has_nosniff_and_no_store(client, factory):
    for label, response in _responses(client, factory):
        assert response.headers.get("X-Content-Type-Options") == "nosniff", label
        assert response.headers.get("Cache-Control") == "no-store", label
        assert response.headers.get("X-Request-ID"), label


def test_unexpected_error_response_has_security_headers(app, client):
    def explode() -> Any:
        raise RuntimeError("boom")

    explode.__public__ = True  # type: ignore[attr-defined]
    app.add_url_rule("/api/v1/test-explode-headers", "explode_headers", explode)
    response = client.get("/api/v1/test-explode-headers")
    assert response.status_code == 500
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_docs_assets_are_the_only_cacheable_responses(client):
    response = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" not in response.headers.get("Cache-Control", "")
    assert "max-age" in response.headers["Cache-Control"]
    # The docs page itself (not an asset) is still no-store.
    assert client.get("/api/v1/docs").headers["Cache-Control"] == "no-store"
    # A path that only resembles the docs prefix is not exempt.
    assert client.get("/api/v1/docsx").headers["Cache-Control"] == "no-store"


def test_docs_page_loads_swagger_ui_without_a_cdn(client):
    page = client.get("/api/v1/docs").get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources
    assert all(source.startswith("/api/v1/docs/assets/") for source in sources), sources
    for source in sources:
        assert client.get(source).status_code == 200, source


# ---- request ids --------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["abcdef12", "client-req.42_A", "x" * 64])
def test_valid_request_id_is_echoed(client, request_id):
    response = client.get("/health", headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id
    problem = client.get("/api/v1/nope", headers={"X-Request-ID": request_id}).get_json()
    assert problem["instance"] == f"urn:request:{request_id}"


@pytest.mark.parametrize(
    "request_id", ["short", "x" * 65, "has spaces in it", "semi;colon;value", "<script>x</script>"]
)
def test_invalid_request_id_is_replaced(client, request_id):
    response = client.get("/health", headers={"X-Request-ID": request_id})
    generated = response.headers["X-Request-ID"]
    assert generated != request_id
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_a_request_id_with_a_trailing_line_break_is_replaced(client):
    """`$` matches before a final newline: the check must match the whole value, or a
    line break reaches the response header (and the log line)."""
    response = client.get("/health", environ_overrides={"HTTP_X_REQUEST_ID": "abcdef12\n"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_request_id_is_generated_per_request(client):
    first = client.get("/health").headers["X-Request-ID"]
    second = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


# ---- CORS ---------------------------------------------------------------------------------


def _preflight(client: Any, origin: str, method: str = "PATCH") -> Any:
    return client.options(
        "/api/v1/orgs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "Authorization, If-Match, Content-Type",
        },
    )


def _header_set(value: str | None) -> set[str]:
    return {item.strip().lower() for item in (value or "").split(",") if item.strip()}


@pytest.fixture
def cors_configured(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["CORS_ORIGINS"] = [ALLOWED_ORIGIN]
    return app_config


def test_preflight_from_allowed_origin(cors_configured, client):
    response = _preflight(client, ALLOWED_ORIGIN)
    assert response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert {"authorization", "if-match", "content-type"} <= _header_set(
        response.headers.get("Access-Control-Allow-Headers")
    )
    assert "PATCH" in response.headers["Access-Control-Allow-Methods"]
    # Bearer tokens, not cookies: credentials mode is never enabled.
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_actual_request_from_allowed_origin_exposes_headers(cors_configured, client, factory):
    headers = factory.headers(factory.user(Role.CASEWORKER))
    response = client.get("/api/v1/me", headers={**headers, "Origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    exposed = _header_set(response.headers.get("Access-Control-Expose-Headers"))
    assert {"etag", "x-request-id", "retry-after", "link", "idempotent-replayed"} <= exposed


@pytest.mark.parametrize("origin", [OTHER_ORIGIN, "https://app.example.org.evil.net", "null"])
def test_other_origin_gets_no_cors_grant(cors_configured, client, origin):
    assert "Access-Control-Allow-Origin" not in _preflight(client, origin).headers
    response = client.get("/health", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers
    response = client.get("/api/v1/me", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("origin", [".*", "https://*.example.org", "https://app.example.org/*"])
def test_an_origin_pattern_is_refused_at_start_up(app_config, origin):
    # flask-cors would read it as a regular expression matched at the start only: `.*`
    # grants every web page, `https://*.example.org` grants https://xexample.org.attacker.net.
    from referral_api import create_app
    from referral_api.exceptions import ConfigurationError

    app_config["CORS_ORIGINS"] = [ALLOWED_ORIGIN, origin]
    with pytest.raises(ConfigurationError, match="REFERRAL_API_CORS_ORIGINS"):
        create_app(app_config)


@pytest.fixture
def cors_unconfigured(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["CORS_ORIGINS"] = []
    return app_config


@pytest.mark.parametrize("origin", [ALLOWED_ORIGIN, OTHER_ORIGIN])
def test_no_cors_without_configured_origins(cors_unconfigured, client, origin):
    requests: list[Callable[[], Any]] = [
        lambda: _preflight(client, origin),
        lambda: client.get("/api/v1/me", headers={"Origin": origin}),
        lambda: client.get("/health", headers={"Origin": origin}),
    ]
    for make in requests:
        response = make()
        assert not any(name.startswith("Access-Control-") for name, _ in response.headers.items())
