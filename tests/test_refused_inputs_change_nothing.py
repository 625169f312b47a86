"""Bad input changes nothing: the holes a reviewer's sweep over every POST and PATCH found
(a body sent to an endpoint that takes none was ignored and the action ran — an erasure
approved with {"approve": false}; JSON strings and numbers read as booleans; an empty JSON
body read as {}). The sweep's passing cases are listed in its report, not kept here.

Each calls an endpoint as a role allowed to call it, with one bad input, and asserts a 4xx
application/problem+json answer and an unchanged database (every table's row count and a
digest of every row). Excluded from the digest: audit_events and audit_chain_head (the audit
trail records refused attempts on purpose: audit/hooks.record_denial)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from input_support import API, World, diff, snapshot


def _assert_refused_and_unchanged(app: Any, client: Any, method: str, url: str, **kw: Any) -> None:
    before = snapshot(app)
    response = client.open(url, method=method, **kw)
    changed = diff(before, snapshot(app))
    assert 400 <= response.status_code < 500, (
        response.status_code,
        response.get_data(as_text=True)[:200],
    )
    assert response.mimetype == "application/problem+json", response.mimetype
    assert changed == [], changed


# ---- 1. a body sent to an endpoint that takes none is ignored, and the action runs ---------

NO_BODY = {
    # name: (url template, who, etag (path, who) or None)
    "erasure_approve": ("/erasures/{erasure}/approve", "dpo", None),
    "client_secret_rotate": (
        "/clients/{client_pk}/secret",
        "admin",
        ("/clients/{client_pk}", "admin"),
    ),
    "override_approval": (
        "/referrals/{override}/override-approval",
        "sup",
        ("/referrals/{override}", "sup"),
    ),
    "notification_read": ("/notifications/{notification}/read", "rworker", None),
    "logout": ("/auth/logout", "worker", None),
}


@pytest.mark.parametrize("name", sorted(NO_BODY))
def test_body_on_bodyless_endpoint_is_refused(
    app: Any, client: Any, factory: Any, name: str
) -> None:
    template, who, etag_of = NO_BODY[name]
    w = World(app, client, factory)
    # A client that believes the endpoint takes options (here: "do not do it").
    _assert_refused_and_unchanged(
        app,
        client,
        "POST",
        API + w.fill(template),
        data=json.dumps({"approve": False, "dry_run": True}),
        headers=w.json_headers(who, etag_of),
    )


def test_override_review_with_body_is_refused(app: Any, client: Any, factory: Any) -> None:
    w = World(app, client, factory)
    w.approve_and_send_override()
    _assert_refused_and_unchanged(
        app,
        client,
        "POST",
        f"{API}/dpo/overrides/{w.override}/review",
        data=json.dumps({"reviewed": False}),
        headers={**w.h["dpo"], "Content-Type": "application/json"},
    )


def test_open_case_from_referral_with_body_is_refused(app: Any, client: Any, factory: Any) -> None:
    w = World(app, client, factory)
    w.accept_referral()
    _assert_refused_and_unchanged(
        app,
        client,
        "POST",
        f"{API}/referrals/{w.referral}/case",
        data=b"this is not json",
        headers={**w.h["rworker"], "Content-Type": "text/plain"},
    )


# ---- 2. a JSON string or number where the schema says boolean is accepted -----------------

BOOLEANS = {
    # name: (method, url template, who, etag (path, who) or None, body)
    "restriction": ("POST", "/cases/{case}/restriction", "sup", None, {"restricted": "yes"}),
    "legal_hold": (
        "POST",
        "/cases/{case}/legal-hold",
        "sup",
        None,
        {"hold": 1, "reason": "litigation"},
    ),
    "referral_send": (
        "POST",
        "/cases/{case}/referrals",
        "worker",
        None,
        {
            "to_org_id": "{recv}",
            "purpose": "legal_assistance",
            "categories": ["identity"],
            "send": "true",
        },
    ),
    "user_active": (
        "PATCH",
        "/users/{worker2}",
        "admin",
        ("/users/{worker2}", "admin"),
        {"active": "false"},
    ),
    "org_active": ("PATCH", "/orgs/{recv}", "padmin", ("/orgs/{recv}", "padmin"), {"active": 0}),
    "client_active": (
        "PATCH",
        "/clients/{client_pk}",
        "admin",
        ("/clients/{client_pk}", "admin"),
        {"active": "no"},
    ),
    "service_accepting": (
        "PATCH",
        "/services/{service}",
        "admin",
        ("/services/{service}", "admin"),
        {"accepting_referrals": "0"},
    ),
    "case_is_shelter": (
        "PATCH",
        "/cases/{case}",
        "worker",
        ("/cases/{case}", "worker"),
        {"location": {"is_shelter": "false"}},
    ),
    "consent_is_minor": ("POST", "/cases/{case}/consents", "worker", None, "CONSENT_IS_MINOR_0"),
}


@pytest.mark.parametrize("name", sorted(BOOLEANS))
def test_non_boolean_for_boolean_field_is_refused(
    app: Any, client: Any, factory: Any, name: str
) -> None:
    method, template, who, etag_of, body = BOOLEANS[name]
    w = World(app, client, factory)
    if body == "CONSENT_IS_MINOR_0":
        body = {
            **w.consent_body(w.provision("shelter", ["identity"], org_id=w.recv)),
            "is_minor": 0,
        }
    _assert_refused_and_unchanged(
        app,
        client,
        method,
        API + w.fill(template),
        data=w.fill(json.dumps(body)),
        headers=w.json_headers(who, etag_of),
    )


# ---- 3. an empty body sent as application/json is read as {} ------------------------------

EMPTY = {
    "case_patch": ("/cases/{case}", "worker", ("/cases/{case}", "worker")),
    "user_patch": ("/users/{worker2}", "admin", ("/users/{worker2}", "admin")),
    "org_patch": ("/orgs/{recv}", "padmin", ("/orgs/{recv}", "padmin")),
    "client_patch": ("/clients/{client_pk}", "admin", ("/clients/{client_pk}", "admin")),
    "service_patch": ("/services/{service}", "admin", ("/services/{service}", "admin")),
}


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_json_body_on_patch_is_refused(
    app: Any, client: Any, factory: Any, name: str
) -> None:
    template, who, etag_of = EMPTY[name]
    w = World(app, client, factory)
    _assert_refused_and_unchanged(
        app,
        client,
        "PATCH",
        API + w.fill(template),
        data=b"",
        headers=w.json_headers(who, etag_of),
    )
