"""Every registered view declares a permission; a view without one cannot even register."""

import pytest

from referral_api.access.permissions import Permission
from referral_api.smorest import Blueprint, UndeclaredPermissionError

# Views anyone may call. Adding to this list is a security decision: say why in review.
PUBLIC_ENDPOINTS = {
    "health.health",
    "health.ready",
    "auth.login",  # exchanges credentials for tokens
    "auth.refresh",  # authenticated by the refresh token itself
    "auth.token",  # client credentials grant
    "auth.client_token",
    "api-docs.openapi_json",  # the public contract, no data
    "api-docs.openapi_swagger_ui",
    "docs_asset",
}


def test_every_view_declares_a_permission_or_is_listed_public(app):
    undeclared = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        permission = getattr(view, "__required_permission__", None)
        if permission is not None:
            assert isinstance(permission, Permission)
            continue
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        undeclared.append(f"{rule.rule} -> {rule.endpoint}")
    assert undeclared == []


def test_public_views_are_exactly_the_listed_ones(app):
    public = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if not hasattr(app.view_functions[rule.endpoint], "__required_permission__")
    }
    assert public <= PUBLIC_ENDPOINTS
    assert {"health.health", "auth.login", "api-docs.openapi_json"} <= public


def test_a_view_without_a_permission_fails_to_register():
    blp = Blueprint("probe", __name__)
    with pytest.raises(UndeclaredPermissionError):

        @blp.route("/probe")
        def probe():  # pragma: no cover - never registered
            return {}


def test_permission_protected_view_answers_403_for_a_role_without_it(client, auth_headers):
    from referral_api.access.roles import Role

    response = client.post(
        "/api/v1/orgs", json={"name": "x", "org_type": "ngo"}, headers=auth_headers(Role.CASEWORKER)
    )
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
