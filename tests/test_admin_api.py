"""Administration API: organisations, users and API clients, seen from the outside.

Rule 19 matrix first (each role, own org / other org / anonymous, every admin endpoint),
then the rules an attacker would probe: cross-organisation access, self-promotion, mass
assignment, lost updates, lock-out, secrets shown once, pagination and cursors.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import TEST_PASSWORD, Factory, Principal, assert_problem
from sqlalchemy import select

from referral_api.access.roles import OrgType, Role
from referral_api.auth.models import ApiClient, AuthSession, Organisation, User
from referral_api.smorest import etag_for

API = "/api/v1"
NEW_PASSWORD = "a brand new passphrase 42"
# What a user replaces an administrator's NEW_PASSWORD with at the first sign-in.
OWN_PASSWORD = "a passphrase only its user knows"


def first_sign_in(client: Any, email: str, password: str = NEW_PASSWORD) -> Any:
    """The sign-in of an account whose password an administrator set: replaced at once."""
    return client.post(
        f"{API}/auth/login",
        json={"email": email, "password": password, "new_password": OWN_PASSWORD},
    )


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def db(app: Any) -> Callable[[], Any]:
    """db() → a short-lived session. Never keep one open across requests: on SQLite a read
    transaction here begins IMMEDIATE and would block the app's writers."""
    from referral_api.extensions import db as database

    factory = database.session_factory_for(app)

    @contextmanager
    def open_session() -> Iterator[Any]:
        with factory() as s:
            yield s
            s.rollback()

    return open_session


def row(db: Callable[[], Any], model: Any, pk: uuid.UUID) -> Any:
    with db() as s:
        obj = s.get(model, pk)
        if obj is not None:
            s.expunge(obj)
        return obj


_KINDS = {Organisation: "org", User: "user", ApiClient: "client"}


def etag(db: Callable[[], Any], model: Any, pk: uuid.UUID) -> str:
    return etag_for(_KINDS[model], pk, row(db, model, pk).version)


def snapshot(db: Callable[[], Any]) -> dict[str, Any]:
    """Every administrable row with its version: any insert or update changes it."""
    with db() as s:
        return {
            model.__tablename__: sorted(
                (str(pk), version, active)
                for pk, version, active in s.execute(select(model.id, model.version, model.active))
            )
            for model in (Organisation, User, ApiClient)
        }


def field_errors(response: Any, status: int = 422) -> dict[str, list[str]]:
    """The problem's per-field messages, whether nested by location (`{"json": {...}}`, from
    request parsing) or flat (from a service's ValidationFailed)."""
    errors = assert_problem(response, status)["errors"]
    flat: dict[str, list[str]] = {}
    for key, value in errors.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_token(http: Any, client_id: str, secret: str) -> Any:
    return http.post(
        f"{API}/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


def client_pk(db: Callable[[], Any], client_id: str) -> uuid.UUID:
    with db() as s:
        return s.scalars(select(ApiClient.id).where(ApiClient.client_id == client_id)).one()


def me(http: Any, headers: dict[str, str]) -> Any:
    return http.get(f"{API}/me", headers=headers)


# ---- 1. authorization matrix ----------------------------------------------------------------


@dataclass
class World:
    actor: Principal
    headers: dict[str, str]
    org: uuid.UUID  # the actor's own organisation
    other_org: uuid.UUID
    # targets per scope ("own" / "other"): an organisation, a user and an API client in it
    targets: dict[str, dict[str, uuid.UUID]]


ACTOR_ORG_TYPE = {Role.PLATFORM_ADMIN: OrgType.PLATFORM, Role.POLICE_OFFICER: OrgType.POLICE}


def build_world(factory: Factory, db: Callable[[], Any], role: Role) -> World:
    org = factory.org(ACTOR_ORG_TYPE.get(role, OrgType.NGO))
    other_org = factory.org(OrgType.NGO)
    principal = factory.user(role, org)
    targets = {}
    for scope, org_id in (("own", org), ("other", other_org)):
        # DPO is available in every organisation type, so one body fits every target.
        user = factory.user(Role.DPO, org_id)
        cid, _ = factory.client_credentials(Role.DPO, org_id)
        targets[scope] = {"org": org_id, "user": user.id, "client": client_pk(db, cid)}
    return World(principal, factory.headers(principal), org, other_org, targets)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # formatted with org / user / client of the target
    item: str | None = None  # "org" / "user" / "client" when the path names one record
    conditional: bool = False  # If-Match required

    @property
    def model(self) -> Any:
        return {"org": Organisation, "user": User, "client": ApiClient}[self.item or ""]

    def url(self, target: dict[str, uuid.UUID]) -> str:
        return API + self.path.format(**target)

    def body(self) -> dict[str, Any] | None:
        unique = uuid.uuid4().hex[:8]
        return {
            "create_org": {"name": f"New org {unique}", "org_type": "shelter"},
            "update_org": {"name": f"Renamed {unique}"},
            "create_user": {
                "email": f"new-{unique}@example.org",
                "display_name": "New person",
                "role": "dpo",
                "password": NEW_PASSWORD,
            },
            "update_user": {"display_name": f"Renamed {unique}"},
            "create_client": {"name": f"records-{unique}", "role": "dpo"},
            "update_client": {"name": f"renamed-{unique}"},
        }.get(self.name)


ENDPOINTS = [
    Endpoint("list_orgs", "GET", "/orgs"),
    Endpoint("create_org", "POST", "/orgs"),
    Endpoint("get_org", "GET", "/orgs/{org}", "org"),
    Endpoint("update_org", "PATCH", "/orgs/{org}", "org", conditional=True),
    Endpoint("list_users", "GET", "/orgs/{org}/users"),
    Endpoint("create_user", "POST", "/orgs/{org}/users"),
    Endpoint("get_user", "GET", "/users/{user}", "user"),
    Endpoint("update_user", "PATCH", "/users/{user}", "user", conditional=True),
    Endpoint("list_clients", "GET", "/orgs/{org}/clients"),
    Endpoint("create_client", "POST", "/orgs/{org}/clients"),
    Endpoint("get_client", "GET", "/clients/{client}", "client"),
    Endpoint("update_client", "PATCH", "/clients/{client}", "client", conditional=True),
    Endpoint("rotate_secret", "POST", "/clients/{client}/secret", "client", conditional=True),
]
ENDPOINT_BY_NAME = {e.name: e for e in ENDPOINTS}

_FORBIDDEN_EVERYWHERE = {e.name: (403, 403) for e in ENDPOINTS}
# (own organisation, other organisation). Another organisation's records answer 404, never
# 403; an endpoint the role has no permission for answers 403 wherever it points.
EXPECTED: dict[Role, dict[str, tuple[int, int]]] = {
    Role.CASEWORKER: _FORBIDDEN_EVERYWHERE,
    Role.SUPERVISOR: _FORBIDDEN_EVERYWHERE,
    Role.POLICE_OFFICER: _FORBIDDEN_EVERYWHERE,
    Role.DPO: _FORBIDDEN_EVERYWHERE,
    Role.ORG_ADMIN: {
        "list_orgs": (200, 200),
        "create_org": (403, 403),
        "get_org": (200, 404),
        "update_org": (403, 403),
        "list_users": (200, 404),
        "create_user": (201, 404),
        "get_user": (200, 404),
        "update_user": (200, 404),
        "list_clients": (200, 404),
        "create_client": (201, 404),
        "get_client": (200, 404),
        "update_client": (200, 404),
        "rotate_secret": (200, 404),
    },
    Role.PLATFORM_ADMIN: {
        e.name: (201, 201) if e.name.startswith("create") else (200, 200) for e in ENDPOINTS
    },
}


def test_matrix_covers_every_admin_route(app):
    def shape(path: str) -> str:
        return re.sub(r"<uuid:\w+>|\{\w+\}", "{}", path)

    routes = {
        (method, shape(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("admin.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes == {(e.method, shape(API + e.path)) for e in ENDPOINTS}
    assert set(EXPECTED) == set(Role)
    assert all(set(EXPECTED[role]) == set(ENDPOINT_BY_NAME) for role in Role)


def request_endpoint(
    http: Any, db: Callable[[], Any], endpoint: Endpoint, target: dict[str, uuid.UUID], headers
) -> Any:
    headers = dict(headers)
    if endpoint.conditional:
        headers["If-Match"] = etag(db, endpoint.model, target[endpoint.item])
    return http.open(
        endpoint.url(target), method=endpoint.method, json=endpoint.body(), headers=headers
    )


def check_allowed_effect(
    db: Callable[[], Any], endpoint: Endpoint, target: dict[str, Any], response: Any
) -> None:
    body = response.get_json()
    name = endpoint.name
    if name == "list_orgs":
        return  # filtering is asserted by the caller
    if name.startswith("list_"):
        assert {item["org_id"] for item in body} == {str(target["org"])}
        key = "user" if name == "list_users" else "client"
        assert str(target[key]) in {item["id"] for item in body}
        return
    if name in ("create_user", "create_client"):
        model = User if name == "create_user" else ApiClient
        assert body["org_id"] == str(target["org"])
        assert row(db, model, uuid.UUID(body["id"])).org_id == target["org"]
        assert response.headers["ETag"] == etag(db, model, uuid.UUID(body["id"]))
        return
    if name == "create_org":
        created = row(db, Organisation, uuid.UUID(body["id"]))
        assert created.org_type is OrgType.SHELTER
        return
    pk = target[endpoint.item]
    assert body["id"] == str(pk)
    assert response.headers["ETag"] == etag(db, endpoint.model, pk)
    if endpoint.conditional:
        assert row(db, endpoint.model, pk).version == 2


def check_cell(
    http: Any, db: Callable[[], Any], world: World, role: Role, endpoint: Endpoint, scope: str
) -> None:
    target = world.targets[scope]
    expected = EXPECTED[role][endpoint.name][0 if scope == "own" else 1]
    before = snapshot(db)

    response = request_endpoint(http, db, endpoint, target, world.headers)

    if expected >= 400:
        body = assert_problem(response, expected)
        # Denials reveal nothing about the target, and change nothing.
        assert str(target["user"]) not in json.dumps(body)
        assert snapshot(db) == before
        return
    assert response.status_code == expected, response.get_json()
    if endpoint.method == "GET":
        assert snapshot(db) == before
    else:
        assert snapshot(db) != before
    check_allowed_effect(db, endpoint, target, response)
    if endpoint.name == "list_orgs":
        ids = {org["id"] for org in response.get_json()}
        if role is Role.PLATFORM_ADMIN:
            assert {str(world.org), str(world.other_org)} <= ids
        else:
            assert ids == {str(world.org)}


# One test per role and endpoint; it checks the own-organisation cell, then the other one
# (a fresh app per cell would double the run time for no extra isolation: the targets differ).
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_authorization_matrix(client, factory, db, role, endpoint):
    world = build_world(factory, db, role)
    for scope in ("own", "other"):
        try:
            check_cell(client, db, world, role, endpoint, scope)
        except AssertionError as error:
            raise AssertionError(f"{role.value} {endpoint.name} on {scope} org: {error}") from None


ANONYMOUS_HEADERS = {
    "no-token": {},
    "garbage-token": bearer("not-a-jwt"),
    "basic-auth": {"Authorization": "Basic dXNlcjpwYXNz"},
}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_anonymous_gets_401_everywhere(client, factory, db, endpoint):
    world = build_world(factory, db, Role.PLATFORM_ADMIN)
    before = snapshot(db)
    for name, headers in ANONYMOUS_HEADERS.items():
        for scope in ("own", "other"):
            response = request_endpoint(client, db, endpoint, world.targets[scope], headers)
            assert_problem(response, 401)
            assert "Bearer" in response.headers.get("WWW-Authenticate", ""), name
    assert snapshot(db) == before


def test_nonexistent_targets_answer_404_like_other_orgs(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    ghost = {"org": uuid.uuid4(), "user": uuid.uuid4(), "client": uuid.uuid4()}
    for endpoint in ENDPOINTS:
        if endpoint.path in ("/orgs",) or EXPECTED[Role.ORG_ADMIN][endpoint.name][1] != 404:
            continue
        response = client.open(
            endpoint.url(ghost),
            method=endpoint.method,
            json=endpoint.body(),
            headers=headers | {"If-Match": '"x"'},
        )
        assert_problem(response, 404)


def test_problem_for_other_org_equals_problem_for_missing_record(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    other_user = factory.user(Role.CASEWORKER, factory.org())
    headers = factory.headers(admin)
    existing = assert_problem(client.get(f"{API}/users/{other_user.id}", headers=headers), 404)
    missing = assert_problem(client.get(f"{API}/users/{uuid.uuid4()}", headers=headers), 404)
    for body in (existing, missing):
        body.pop("instance", None)
    assert existing == missing


# ---- API clients as administrators ----------------------------------------------------------


def test_org_admin_api_client_is_scoped_like_an_org_admin_user(client, factory, db):
    own = factory.org(OrgType.POLICE)
    other = factory.org(OrgType.NGO)
    other_user = factory.user(Role.CASEWORKER, other)
    cid, secret = factory.client_credentials(Role.ORG_ADMIN, own)
    token = client_token(client, cid, secret).get_json()["access_token"]
    headers = bearer(token)

    assert client.get(f"{API}/orgs/{own}/users", headers=headers).status_code == 200
    assert_problem(client.get(f"{API}/orgs/{other}/users", headers=headers), 404)
    assert_problem(client.get(f"{API}/users/{other_user.id}", headers=headers), 404)
    assert_problem(
        client.post(f"{API}/orgs", json={"name": "x", "org_type": "ngo"}, headers=headers), 403
    )

    pk = client_pk(db, cid)
    response = client.patch(
        f"{API}/clients/{pk}",
        json={"role": "police_officer"},
        headers=headers | {"If-Match": etag(db, ApiClient, pk)},
    )
    assert_problem(response, 403)
    assert row(db, ApiClient, pk).role is Role.ORG_ADMIN


# ---- 2. an org admin cannot touch another organisation --------------------------------------


@pytest.fixture
def two_orgs(factory, db):
    own = factory.org(OrgType.NGO)
    other = factory.org(OrgType.NGO)
    admin = factory.user(Role.ORG_ADMIN, own)
    victim = factory.user(Role.CASEWORKER, other)
    cid, secret = factory.client_credentials(Role.CASEWORKER, other)
    return {
        "own": own,
        "other": other,
        "admin": admin,
        "headers": factory.headers(admin),
        "victim": victim,
        "client_pk": client_pk(db, cid),
        "client_id": cid,
        "secret": secret,
    }


def test_org_admin_cannot_read_or_change_other_orgs_users(client, db, two_orgs):
    t = two_orgs
    victim = t["victim"]
    before = snapshot(db)
    current = etag(db, User, victim.id)
    for body in (
        {"active": False},
        {"role": "supervisor"},
        {"password": NEW_PASSWORD},
        {"display_name": "pwned"},
    ):
        response = client.patch(
            f"{API}/users/{victim.id}", json=body, headers=t["headers"] | {"If-Match": current}
        )
        assert_problem(response, 404)
    assert_problem(client.get(f"{API}/users/{victim.id}", headers=t["headers"]), 404)
    assert_problem(client.get(f"{API}/orgs/{t['other']}/users", headers=t["headers"]), 404)
    assert snapshot(db) == before
    stored = row(db, User, victim.id)
    assert (stored.active, stored.role, stored.display_name) == (
        True,
        Role.CASEWORKER,
        victim.email,
    )
    # The victim's password still works and the admin's attempts did not end their session.
    login = client.post(
        f"{API}/auth/login", json={"email": victim.email, "password": TEST_PASSWORD}
    )
    assert login.status_code == 200


def test_org_admin_cannot_create_users_or_clients_in_other_org(client, db, two_orgs):
    t = two_orgs
    before = snapshot(db)
    response = client.post(
        f"{API}/orgs/{t['other']}/users",
        json={
            "email": "planted@example.org",
            "display_name": "Planted",
            "role": "org_admin",
            "password": NEW_PASSWORD,
        },
        headers=t["headers"],
    )
    assert_problem(response, 404)
    response = client.post(
        f"{API}/orgs/{t['other']}/clients",
        json={"name": "planted", "role": "org_admin"},
        headers=t["headers"],
    )
    assert_problem(response, 404)
    assert snapshot(db) == before
    with db() as s:
        assert s.scalars(select(User).where(User.email == "planted@example.org")).first() is None


def test_org_admin_cannot_touch_other_orgs_clients(client, db, two_orgs):
    t = two_orgs
    pk = t["client_pk"]
    before = snapshot(db)
    current = etag(db, ApiClient, pk)
    headers = t["headers"] | {"If-Match": current}
    assert_problem(client.get(f"{API}/clients/{pk}", headers=t["headers"]), 404)
    assert_problem(client.get(f"{API}/orgs/{t['other']}/clients", headers=t["headers"]), 404)
    assert_problem(
        client.patch(f"{API}/clients/{pk}", json={"active": False}, headers=headers), 404
    )
    assert_problem(client.post(f"{API}/clients/{pk}/secret", headers=headers), 404)
    assert snapshot(db) == before
    # The other organisation's secret still works.
    assert client_token(client, t["client_id"], t["secret"]).status_code == 200


def test_org_admin_sees_only_own_org_in_lists(client, factory, db):
    own = factory.org(OrgType.NGO)
    others = [factory.org(OrgType.NGO) for _ in range(3)]
    admin = factory.user(Role.ORG_ADMIN, own)
    for org in others:
        factory.user(Role.CASEWORKER, org)
    headers = factory.headers(admin)
    response = client.get(f"{API}/orgs", headers=headers)
    assert response.status_code == 200
    assert [o["id"] for o in response.get_json()] == [str(own)]
    response = client.get(f"{API}/orgs?org_type=ngo&limit=100", headers=headers)
    assert [o["id"] for o in response.get_json()] == [str(own)]
    response = client.get(f"{API}/orgs/{own}/users", headers=headers)
    assert [u["id"] for u in response.get_json()] == [str(admin.id)]


# ---- 3. self-promotion, role rules, mass assignment -----------------------------------------


@pytest.mark.parametrize(
    ("role", "org_type"), [(Role.ORG_ADMIN, OrgType.NGO), (Role.PLATFORM_ADMIN, OrgType.PLATFORM)]
)
@pytest.mark.parametrize(
    "change",
    [{"role": "platform_admin"}, {"role": "dpo"}, {"active": False}, {"active": True}],
    ids=["role-up", "role-other", "deactivate", "active-true"],
)
def test_nobody_changes_own_role_or_status(client, factory, db, role, org_type, change):
    me_user = factory.user(role, factory.org(org_type))
    headers = factory.headers(me_user)
    before = snapshot(db)
    response = client.patch(
        f"{API}/users/{me_user.id}",
        json=change,
        headers=headers | {"If-Match": etag(db, User, me_user.id)},
    )
    assert_problem(response, 403)
    assert snapshot(db) == before
    assert me(client, headers).status_code == 200


def test_user_may_rename_self(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    response = client.patch(
        f"{API}/users/{admin.id}",
        json={"display_name": "Still me"},
        headers=headers | {"If-Match": etag(db, User, admin.id)},
    )
    assert response.status_code == 200
    assert row(db, User, admin.id).display_name == "Still me"
    assert me(client, headers).status_code == 200  # a rename does not end the session


def test_org_admin_cannot_grant_platform_admin(client, factory, db):
    platform = factory.org(OrgType.PLATFORM)
    admin = factory.user(Role.ORG_ADMIN, platform)
    dpo = factory.user(Role.DPO, platform)
    headers = factory.headers(admin)
    before = snapshot(db)
    response = client.post(
        f"{API}/orgs/{platform}/users",
        json={
            "email": "sneaky@example.org",
            "display_name": "Sneaky",
            "role": "platform_admin",
            "password": NEW_PASSWORD,
        },
        headers=headers,
    )
    assert_problem(response, 403)
    response = client.patch(
        f"{API}/users/{dpo.id}",
        json={"role": "platform_admin"},
        headers=headers | {"If-Match": etag(db, User, dpo.id)},
    )
    assert_problem(response, 403)
    assert snapshot(db) == before
    assert row(db, User, dpo.id).role is Role.DPO


def test_org_admin_of_an_ngo_cannot_grant_platform_admin_either(client, factory, db):
    # In an NGO the role does not exist at all: a validation error names the field.
    admin = factory.user(Role.ORG_ADMIN)
    worker = factory.user(Role.CASEWORKER, admin.org_id)
    headers = factory.headers(admin)
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"role": "platform_admin"},
        headers=headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert "role" in field_errors(response)
    assert row(db, User, worker.id).role is Role.CASEWORKER


@pytest.mark.parametrize(
    "change",
    [{"active": False}, {"role": "dpo"}, {"password": NEW_PASSWORD}, {"display_name": "x"}],
)
def test_org_admin_cannot_change_a_platform_admin(client, factory, db, change):
    platform = factory.org(OrgType.PLATFORM)
    admin = factory.user(Role.ORG_ADMIN, platform)
    boss = factory.user(Role.PLATFORM_ADMIN, platform)
    headers = factory.headers(admin)
    boss_headers = factory.headers(boss)
    before = snapshot(db)
    response = client.patch(
        f"{API}/users/{boss.id}",
        json=change,
        headers=headers | {"If-Match": etag(db, User, boss.id)},
    )
    assert_problem(response, 403)
    assert snapshot(db) == before
    assert me(client, boss_headers).status_code == 200


def test_platform_admin_can_grant_platform_admin_in_platform_org(client, factory, db):
    platform = factory.org(OrgType.PLATFORM)
    boss = factory.user(Role.PLATFORM_ADMIN, platform)
    response = client.post(
        f"{API}/orgs/{platform}/users",
        json={
            "email": "second@example.org",
            "display_name": "Second",
            "role": "platform_admin",
            "password": NEW_PASSWORD,
        },
        headers=factory.headers(boss),
    )
    assert response.status_code == 201, response.get_json()
    assert row(db, User, uuid.UUID(response.get_json()["id"])).role is Role.PLATFORM_ADMIN


@pytest.mark.parametrize(
    ("org_type", "role"),
    [
        (OrgType.NGO, "police_officer"),
        (OrgType.SHELTER, "police_officer"),
        (OrgType.NGO, "platform_admin"),
        (OrgType.POLICE, "platform_admin"),
        (OrgType.PLATFORM, "caseworker"),
        (OrgType.PLATFORM, "police_officer"),
    ],
)
def test_role_unavailable_in_org_type_is_422(client, factory, db, org_type, role):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    org = factory.org(org_type)
    target = factory.user(Role.DPO, org)
    before = snapshot(db)

    response = client.post(
        f"{API}/orgs/{org}/users",
        json={
            "email": "wrong@example.org",
            "display_name": "Wrong",
            "role": role,
            "password": NEW_PASSWORD,
        },
        headers=headers,
    )
    assert "role" in field_errors(response)
    response = client.patch(
        f"{API}/users/{target.id}",
        json={"role": role},
        headers=headers | {"If-Match": etag(db, User, target.id)},
    )
    assert "role" in field_errors(response)
    response = client.post(
        f"{API}/orgs/{org}/clients", json={"name": "c", "role": role}, headers=headers
    )
    assert "role" in field_errors(response)
    assert snapshot(db) == before


def test_police_officer_is_available_in_police_orgs(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN, factory.org(OrgType.POLICE))
    response = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json={
            "email": "officer@example.org",
            "display_name": "Officer",
            "role": "police_officer",
            "password": NEW_PASSWORD,
        },
        headers=factory.headers(admin),
    )
    assert response.status_code == 201
    assert response.get_json()["role"] == "police_officer"


@pytest.mark.parametrize(
    "field",
    [
        {"org_id": "00000000-0000-0000-0000-000000000001"},
        {"id": "00000000-0000-0000-0000-000000000001"},
        {"email": "new-address@example.org"},
        {"password_hash": "$argon2id$v=19$m=1024,t=1,p=1$AAAA$BBBB"},
        {"version": 99},
        {"created_at": "2020-01-01T00:00:00+00:00"},
    ],
    ids=lambda f: next(iter(f)),
)
def test_patch_user_rejects_read_only_fields(client, factory, db, field):
    admin = factory.user(Role.ORG_ADMIN)
    worker = factory.user(Role.CASEWORKER, admin.org_id)
    before = snapshot(db)
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"display_name": "Legit"} | field,
        headers=factory.headers(admin) | {"If-Match": etag(db, User, worker.id)},
    )
    assert field_errors(response)[next(iter(field))] == ["Unknown field."]
    assert snapshot(db) == before
    stored = row(db, User, worker.id)
    assert (stored.org_id, stored.email, stored.display_name) == (
        admin.org_id,
        worker.email,
        worker.email,
    )


@pytest.mark.parametrize(
    "field",
    [
        {"org_id": "00000000-0000-0000-0000-000000000001"},
        {"client_id": "rac_mine"},
        {"secret_hash": "x"},
    ],
    ids=lambda f: next(iter(f)),
)
def test_patch_client_rejects_read_only_fields(client, factory, db, field):
    admin = factory.user(Role.ORG_ADMIN)
    cid, _ = factory.client_credentials(Role.CASEWORKER, admin.org_id)
    pk = client_pk(db, cid)
    before = snapshot(db)
    response = client.patch(
        f"{API}/clients/{pk}",
        json=field,
        headers=factory.headers(admin) | {"If-Match": etag(db, ApiClient, pk)},
    )
    assert field_errors(response)[next(iter(field))] == ["Unknown field."]
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "field", [{"org_type": "police"}, {"id": str(uuid.uuid4())}, {"version": 5}], ids=str
)
def test_patch_org_rejects_read_only_fields(client, factory, db, field):
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    before = snapshot(db)
    response = client.patch(
        f"{API}/orgs/{org}",
        json=field,
        headers=factory.headers(boss) | {"If-Match": etag(db, Organisation, org)},
    )
    assert_problem(response, 422)
    assert snapshot(db) == before
    assert row(db, Organisation, org).org_type is OrgType.NGO


_VALID_POSTS = {
    "/orgs/{org}/users": {
        "email": "x@example.org",
        "display_name": "X",
        "role": "org_admin",
        "password": NEW_PASSWORD,
    },
    "/orgs/{org}/clients": {"name": "c", "role": "dpo"},
    "/orgs": {"name": "Org", "org_type": "ngo"},
}


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/orgs/{org}/users", {"active": False}),
        ("/orgs/{org}/users", {"org_id": "00000000-0000-0000-0000-000000000001"}),
        ("/orgs/{org}/users", {"id": "00000000-0000-0000-0000-000000000001"}),
        ("/orgs/{org}/users", {"password_hash": "$argon2id$v=19$m=1024,t=1,p=1$AAAA$BBBB"}),
        ("/orgs/{org}/clients", {"client_id": "rac_chosen"}),
        ("/orgs/{org}/clients", {"client_secret": "chosen-secret"}),
        ("/orgs/{org}/clients", {"org_id": "00000000-0000-0000-0000-000000000001"}),
        ("/orgs", {"active": False}),
        ("/orgs", {"id": "00000000-0000-0000-0000-000000000001"}),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else v,
)
def test_post_rejects_unknown_fields(client, factory, db, path, extra):
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    before = snapshot(db)
    response = client.post(
        API + path.format(org=org),
        json=_VALID_POSTS[path] | extra,
        headers=factory.headers(boss),
    )
    assert field_errors(response) == {next(iter(extra)): ["Unknown field."]}
    assert snapshot(db) == before
    # The same body without the extra field is accepted: the field alone was the problem.
    response = client.post(
        API + path.format(org=org), json=_VALID_POSTS[path], headers=factory.headers(boss)
    )
    assert response.status_code == 201, response.get_json()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/orgs", {"name": "   ", "org_type": "ngo"}, "name"),
        ("/orgs", {"name": "", "org_type": "ngo"}, "name"),
        ("/orgs", {"name": "x" * 201, "org_type": "ngo"}, "name"),
        ("/orgs", {"org_type": "ngo"}, "name"),
        (
            "/orgs/{org}/users",
            {
                "email": "b@example.org",
                "display_name": "  ",
                "role": "dpo",
                "password": NEW_PASSWORD,
            },
            "display_name",
        ),
        (
            "/orgs/{org}/users",
            {"email": "not-an-email", "display_name": "B", "role": "dpo", "password": NEW_PASSWORD},
            "email",
        ),
        (
            "/orgs/{org}/users",
            {
                "email": "b@example.org",
                "display_name": "B",
                "role": "wizard",
                "password": NEW_PASSWORD,
            },
            "role",
        ),
        ("/orgs/{org}/clients", {"name": " ", "role": "dpo"}, "name"),
    ],
)
def test_post_validates_fields(client, factory, db, path, body, field):
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    before = snapshot(db)
    response = client.post(API + path.format(org=org), json=body, headers=factory.headers(boss))
    assert field in field_errors(response)
    assert snapshot(db) == before


# ---- 4. If-Match / ETag ---------------------------------------------------------------------


@pytest.fixture
def patch_targets(factory, db):
    """(url, body) of one PATCHable resource of each kind, plus headers of a platform admin."""
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    user = factory.user(Role.CASEWORKER, org)
    # A role without case content: a platform administrator sets no secret of a client
    # that reads cases in another organisation.
    cid, _ = factory.client_credentials(Role.DPO, org)
    pk = client_pk(db, cid)
    return factory.headers(boss), {
        "org": (f"{API}/orgs/{org}", {"name": "Renamed org"}, Organisation, org),
        "user": (f"{API}/users/{user.id}", {"display_name": "Renamed"}, User, user.id),
        "client": (f"{API}/clients/{pk}", {"name": "renamed"}, ApiClient, pk),
        "secret": (f"{API}/clients/{pk}/secret", None, ApiClient, pk),
    }


KINDS = ["org", "user", "client", "secret"]


def _send(client: Any, url: str, body: Any, headers: dict[str, str]) -> Any:
    method = "POST" if url.endswith("/secret") else "PATCH"
    return client.open(url, method=method, json=body, headers=headers)


@pytest.mark.parametrize("kind", KINDS)
def test_update_without_if_match_is_428(client, db, patch_targets, kind):
    headers, targets = patch_targets
    url, body, _, _ = targets[kind]
    before = snapshot(db)
    response = _send(client, url, body, headers)
    problem = assert_problem(response, 428)
    assert "If-Match" in problem["detail"]
    assert snapshot(db) == before


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "stale",
    [
        lambda kind, pk: etag_for(kind, pk, 0),
        lambda kind, pk: '"not-an-etag"',
        lambda kind, pk: etag_for("other", pk, 1),
        lambda kind, pk: "W/" + etag_for(kind, pk, 1),
    ],
    ids=["old-version", "garbage", "other-kind", "weak"],
)
def test_update_with_stale_if_match_is_412(client, db, patch_targets, kind, stale):
    headers, targets = patch_targets
    url, body, model, pk = targets[kind]
    before = snapshot(db)
    response = _send(client, url, body, headers | {"If-Match": stale(_KINDS[model], pk)})
    assert_problem(response, 412)
    assert snapshot(db) == before


@pytest.mark.parametrize("kind", KINDS)
def test_update_with_current_etag_returns_new_etag(client, db, patch_targets, kind):
    headers, targets = patch_targets
    url, body, model, pk = targets[kind]
    read_url = url.removesuffix("/secret")
    read = client.get(read_url, headers=headers)
    assert read.status_code == 200
    first = read.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', first)

    response = _send(client, url, body, headers | {"If-Match": first})
    assert response.status_code == 200, response.get_json()
    second = response.headers["ETag"]
    assert second != first
    assert client.get(read_url, headers=headers).headers["ETag"] == second
    assert row(db, model, pk).version == 2

    # The same ETag again: the first write won, the second is refused and changes nothing.
    before = snapshot(db)
    again = _send(
        client, url, body and {k: v + " 2" for k, v in body.items()}, headers | {"If-Match": first}
    )
    assert_problem(again, 412)
    assert snapshot(db) == before
    # The new ETag works.
    assert _send(client, url, body, headers | {"If-Match": second}).status_code == 200


def test_if_match_with_several_tags_accepts_the_current_one(client, db, patch_targets):
    headers, targets = patch_targets
    url, body, model, pk = targets["user"]
    current = etag(db, model, pk)
    response = _send(client, url, body, headers | {"If-Match": f'"aaaa", {current}'})
    assert response.status_code == 200


def test_lost_update_between_two_admins(client, factory, db):
    admin_a = factory.user(Role.ORG_ADMIN)
    admin_b = factory.user(Role.ORG_ADMIN, admin_a.org_id)
    worker = factory.user(Role.CASEWORKER, admin_a.org_id)
    headers_a, headers_b = factory.headers(admin_a), factory.headers(admin_b)
    tag_a = client.get(f"{API}/users/{worker.id}", headers=headers_a).headers["ETag"]
    tag_b = client.get(f"{API}/users/{worker.id}", headers=headers_b).headers["ETag"]
    assert tag_a == tag_b
    first = client.patch(
        f"{API}/users/{worker.id}",
        json={"role": "supervisor"},
        headers=headers_a | {"If-Match": tag_a},
    )
    assert first.status_code == 200
    second = client.patch(
        f"{API}/users/{worker.id}",
        json={"active": False},
        headers=headers_b | {"If-Match": tag_b},
    )
    assert_problem(second, 412)
    stored = row(db, User, worker.id)
    assert (stored.role, stored.active) == (Role.SUPERVISOR, True)


def test_concurrent_patches_with_one_etag_let_exactly_one_win(app, factory, db):
    """Two admins send the same If-Match at the same moment: one 200, one 412, never two."""
    admin = factory.user(Role.ORG_ADMIN)
    worker = factory.user(Role.CASEWORKER, admin.org_id)
    headers = factory.headers(admin) | {"If-Match": etag(db, User, worker.id)}
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def patch(name: str) -> None:
        http = app.test_client()
        barrier.wait()
        response = http.patch(
            f"{API}/users/{worker.id}", json={"display_name": name}, headers=headers
        )
        results[name] = (response.status_code, response.mimetype)

    threads = [threading.Thread(target=patch, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    statuses = sorted(status for status, _ in results.values())
    assert statuses == [200, 412], results
    loser = next(name for name, (status, _) in results.items() if status == 412)
    assert results[loser][1] == "application/problem+json"
    stored = row(db, User, worker.id)
    assert stored.version == 2
    assert stored.display_name == next(n for n, (status, _) in results.items() if status == 200)


# ---- 5. lock-out and session revocation -----------------------------------------------------


@pytest.fixture
def admin_and_worker(factory):
    admin = factory.user(Role.ORG_ADMIN)
    worker = factory.user(Role.CASEWORKER, admin.org_id)
    return factory.headers(admin), worker


def _open_sessions(db: Callable[[], Any], user_id: uuid.UUID) -> int:
    with db() as s:
        return len(
            s.scalars(
                select(AuthSession).where(
                    AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
                )
            ).all()
        )


def test_deactivation_locks_the_user_out_at_once(client, factory, db, admin_and_worker):
    admin_headers, worker = admin_and_worker
    tokens = factory.login(worker)
    worker_headers = bearer(tokens["access_token"])
    assert me(client, worker_headers).status_code == 200

    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"active": False},
        headers=admin_headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert response.status_code == 200
    assert response.get_json()["active"] is False

    assert_problem(me(client, worker_headers), 401)
    refresh = client.post(f"{API}/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert_problem(refresh, 401)
    login = client.post(
        f"{API}/auth/login", json={"email": worker.email, "password": TEST_PASSWORD}
    )
    assert_problem(login, 401)
    assert _open_sessions(db, worker.id) == 0

    # Reactivation lets them log in again, but the old token stays dead.
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"active": True},
        headers=admin_headers | {"If-Match": response.headers["ETag"]},
    )
    assert response.status_code == 200
    assert_problem(me(client, worker_headers), 401)
    assert me(client, factory.headers(worker)).status_code == 200


@pytest.mark.parametrize(
    "change", [{"role": "supervisor"}, {"password": NEW_PASSWORD}], ids=["role", "password"]
)
def test_role_change_or_password_reset_ends_sessions(client, factory, db, admin_and_worker, change):
    admin_headers, worker = admin_and_worker
    tokens = [factory.login(worker) for _ in range(2)]
    assert _open_sessions(db, worker.id) == 2
    response = client.patch(
        f"{API}/users/{worker.id}",
        json=change,
        headers=admin_headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert response.status_code == 200
    for t in tokens:
        assert_problem(me(client, bearer(t["access_token"])), 401)
        assert_problem(client.post(f"{API}/auth/refresh", headers=bearer(t["refresh_token"])), 401)
    assert _open_sessions(db, worker.id) == 0
    # The admin's own session is untouched.
    assert me(client, admin_headers).status_code == 200


def test_password_reset_replaces_the_password(client, db, admin_and_worker):
    admin_headers, worker = admin_and_worker
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"password": NEW_PASSWORD},
        headers=admin_headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert response.status_code == 200
    assert NEW_PASSWORD not in response.get_data(as_text=True)
    assert row(db, User, worker.id).password_change_required is True
    old = client.post(f"{API}/auth/login", json={"email": worker.email, "password": TEST_PASSWORD})
    assert_problem(old, 401)
    # The administrator's password signs in only to be replaced.
    new = client.post(f"{API}/auth/login", json={"email": worker.email, "password": NEW_PASSWORD})
    assert assert_problem(new, 403)["type"] == "/problems/password-change-required"
    assert first_sign_in(client, worker.email).status_code == 200
    assert row(db, User, worker.id).password_change_required is False
    reset = client.post(f"{API}/auth/login", json={"email": worker.email, "password": NEW_PASSWORD})
    assert_problem(reset, 401)
    own = client.post(f"{API}/auth/login", json={"email": worker.email, "password": OWN_PASSWORD})
    assert own.status_code == 200


def test_rename_does_not_end_sessions(client, factory, db, admin_and_worker):
    admin_headers, worker = admin_and_worker
    worker_headers = factory.headers(worker)
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"display_name": "New name"},
        headers=admin_headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert response.status_code == 200
    assert me(client, worker_headers).get_json()["display_name"] == "New name"


def test_role_change_takes_effect_on_next_login(client, factory, db, admin_and_worker):
    admin_headers, worker = admin_and_worker
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"role": "org_admin"},
        headers=admin_headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert response.status_code == 200
    body = me(client, factory.headers(worker)).get_json()
    assert body["role"] == "org_admin"
    assert "user:manage" in body["permissions"]


def test_deactivating_an_org_locks_out_its_users_and_clients(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    worker = factory.user(Role.CASEWORKER, org)
    cid, secret = factory.client_credentials(Role.CASEWORKER, org)
    worker_headers = factory.headers(worker)
    client_headers = bearer(client_token(client, cid, secret).get_json()["access_token"])
    response = client.patch(
        f"{API}/orgs/{org}",
        json={"active": False},
        headers=factory.headers(boss) | {"If-Match": etag(db, Organisation, org)},
    )
    assert response.status_code == 200
    assert response.get_json()["active"] is False
    assert_problem(me(client, worker_headers), 401)
    assert_problem(me(client, client_headers), 401)
    assert_problem(client_token(client, cid, secret), 401)


# ---- 6. users: creation rules ---------------------------------------------------------------


def _new_user(**overrides: Any) -> dict[str, Any]:
    return {
        "email": "person@example.org",
        "display_name": "A Person",
        "role": "caseworker",
        "password": NEW_PASSWORD,
    } | overrides


def test_created_user_can_log_in_and_password_is_never_shown(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    response = client.post(f"{API}/orgs/{admin.org_id}/users", json=_new_user(), headers=headers)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert set(body) == {
        "id",
        "org_id",
        "email",
        "display_name",
        "role",
        "active",
        "password_change_required",
        "created_at",
        "updated_at",
    }
    assert body["org_id"] == str(admin.org_id)
    assert body["role"] == "caseworker" and body["active"] is True
    assert body["password_change_required"] is True
    assert response.headers["ETag"] == etag(db, User, uuid.UUID(body["id"]))

    texts = [response.get_data(as_text=True)]
    texts.append(client.get(f"{API}/users/{body['id']}", headers=headers).get_data(as_text=True))
    texts.append(
        client.get(f"{API}/orgs/{admin.org_id}/users", headers=headers).get_data(as_text=True)
    )
    for text in texts:
        assert NEW_PASSWORD not in text
        assert '"password"' not in text and "password_hash" not in text
        assert "$argon2" not in text

    stored = row(db, User, uuid.UUID(body["id"]))
    assert stored.password_hash.startswith("$argon2id$")
    assert NEW_PASSWORD not in stored.password_hash

    assert stored.password_change_required is True
    login = first_sign_in(client, "person@example.org")
    assert login.status_code == 200
    who = me(client, bearer(login.get_json()["access_token"])).get_json()
    assert (who["role"], who["organisation"]["id"]) == ("caseworker", str(admin.org_id))


def test_email_is_normalised(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    response = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json=_new_user(email="Mixed.Case@Example.ORG"),
        headers=factory.headers(admin),
    )
    assert response.status_code == 201
    assert response.get_json()["email"] == "mixed.case@example.org"
    assert first_sign_in(client, "MIXED.case@example.org").status_code == 200


@pytest.mark.parametrize(
    "email", ["person@example.org", "PERSON@example.org"], ids=["same", "other-case"]
)
def test_duplicate_email_is_409(client, factory, db, email):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    first = client.post(f"{API}/orgs/{admin.org_id}/users", json=_new_user(), headers=headers)
    assert first.status_code == 201
    before = snapshot(db)
    again = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json=_new_user(email=email, display_name="Someone else"),
        headers=headers,
    )
    body = assert_problem(again, 409)
    assert "person@example.org" not in json.dumps(body).lower()
    assert snapshot(db) == before
    # The transaction is still usable after the conflict: the next request works.
    ok = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json=_new_user(email="other@example.org"),
        headers=headers,
    )
    assert ok.status_code == 201


def test_duplicate_email_across_organisations_is_409(client, factory, db):
    other = factory.user(Role.CASEWORKER, factory.org())
    admin = factory.user(Role.ORG_ADMIN)
    response = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json=_new_user(email=other.email),
        headers=factory.headers(admin),
    )
    assert_problem(response, 409)
    assert row(db, User, other.id).org_id == other.org_id


@pytest.mark.parametrize("password", ["", "short", "x" * 11], ids=["empty", "short", "eleven"])
def test_password_under_12_chars_is_422(client, factory, db, password):
    admin = factory.user(Role.ORG_ADMIN)
    worker = factory.user(Role.CASEWORKER, admin.org_id)
    headers = factory.headers(admin)
    before = snapshot(db)
    response = client.post(
        f"{API}/orgs/{admin.org_id}/users", json=_new_user(password=password), headers=headers
    )
    assert "password" in field_errors(response)
    if password:
        assert password not in response.get_data(as_text=True)
    response = client.patch(
        f"{API}/users/{worker.id}",
        json={"password": password},
        headers=headers | {"If-Match": etag(db, User, worker.id)},
    )
    assert "password" in field_errors(response)
    assert snapshot(db) == before


def test_twelve_character_password_is_accepted(client, factory):
    admin = factory.user(Role.ORG_ADMIN)
    response = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json=_new_user(password="x" * 12),
        headers=factory.headers(admin),
    )
    assert response.status_code == 201


# ---- 7. API clients -------------------------------------------------------------------------


def test_client_secret_is_shown_once_and_works(client, factory, db, caplog):
    caplog.set_level(logging.DEBUG)
    admin = factory.user(Role.ORG_ADMIN, factory.org(OrgType.POLICE))
    headers = factory.headers(admin)
    response = client.post(
        f"{API}/orgs/{admin.org_id}/clients",
        json={"name": "Records system", "role": "police_officer"},
        headers=headers,
    )
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    secret = created["client_secret"]
    assert len(secret) >= 32
    assert created["client_id"].startswith("rac_")
    assert "secret_hash" not in created
    assert "no-store" in response.headers.get("Cache-Control", "")
    pk = uuid.UUID(created["id"])
    stored = row(db, ApiClient, pk)
    assert stored.secret_hash.startswith("$argon2id$") and secret not in stored.secret_hash
    assert response.headers["ETag"] == etag(db, ApiClient, pk)

    for view in (
        client.get(f"{API}/clients/{pk}", headers=headers),
        client.get(f"{API}/orgs/{admin.org_id}/clients", headers=headers),
    ):
        assert view.status_code == 200
        text = view.get_data(as_text=True)
        assert "client_secret" not in text and "secret_hash" not in text
        assert secret not in text and "$argon2" not in text

    token = client_token(client, created["client_id"], secret)
    assert token.status_code == 200
    assert "refresh_token" not in token.get_json()
    who = me(client, bearer(token.get_json()["access_token"])).get_json()
    assert (who["kind"], who["role"], who["id"]) == ("client", "police_officer", str(pk))
    assert_problem(client_token(client, created["client_id"], secret + "x"), 401)
    assert secret not in caplog.text


def test_rotating_the_secret_invalidates_the_old_one_and_its_tokens(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    cid, old_secret = factory.client_credentials(Role.CASEWORKER, admin.org_id)
    pk = client_pk(db, cid)
    old_token = client_token(client, cid, old_secret).get_json()["access_token"]
    assert me(client, bearer(old_token)).status_code == 200

    assert_problem(client.post(f"{API}/clients/{pk}/secret", headers=headers), 428)
    response = client.post(
        f"{API}/clients/{pk}/secret", headers=headers | {"If-Match": etag(db, ApiClient, pk)}
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    new_secret = body["client_secret"]
    assert new_secret != old_secret
    assert body["client_id"] == cid
    assert response.headers["ETag"] == etag(db, ApiClient, pk)

    assert_problem(me(client, bearer(old_token)), 401)
    assert_problem(client_token(client, cid, old_secret), 401)
    new_token = client_token(client, cid, new_secret)
    assert new_token.status_code == 200
    assert me(client, bearer(new_token.get_json()["access_token"])).status_code == 200
    # GET never shows it again.
    assert "client_secret" not in client.get(f"{API}/clients/{pk}", headers=headers).get_json()


def test_deactivated_client_is_locked_out(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    cid, secret = factory.client_credentials(Role.CASEWORKER, admin.org_id)
    pk = client_pk(db, cid)
    token = client_token(client, cid, secret).get_json()["access_token"]
    response = client.patch(
        f"{API}/clients/{pk}",
        json={"active": False},
        headers=headers | {"If-Match": etag(db, ApiClient, pk)},
    )
    assert response.status_code == 200
    assert response.get_json()["active"] is False
    assert "client_secret" not in response.get_json()
    assert_problem(me(client, bearer(token)), 401)
    assert_problem(client_token(client, cid, secret), 401)


def test_client_role_change_revokes_its_tokens(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    cid, secret = factory.client_credentials(Role.CASEWORKER, admin.org_id)
    pk = client_pk(db, cid)
    token = client_token(client, cid, secret).get_json()["access_token"]
    response = client.patch(
        f"{API}/clients/{pk}",
        json={"role": "supervisor"},
        headers=headers | {"If-Match": etag(db, ApiClient, pk)},
    )
    assert response.status_code == 200
    assert_problem(me(client, bearer(token)), 401)
    fresh = client_token(client, cid, secret).get_json()["access_token"]
    assert me(client, bearer(fresh)).get_json()["role"] == "supervisor"


@pytest.mark.parametrize("org_type", [OrgType.PLATFORM, OrgType.NGO])
def test_a_client_cannot_be_platform_admin(client, factory, db, org_type):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    org = factory.org(org_type)
    cid, _ = factory.client_credentials(Role.DPO, org)
    pk = client_pk(db, cid)
    before = snapshot(db)
    response = client.post(
        f"{API}/orgs/{org}/clients",
        json={"name": "root", "role": "platform_admin"},
        headers=headers,
    )
    assert "role" in field_errors(response)
    response = client.patch(
        f"{API}/clients/{pk}",
        json={"role": "platform_admin"},
        headers=headers | {"If-Match": etag(db, ApiClient, pk)},
    )
    assert "role" in field_errors(response)
    assert snapshot(db) == before


# ---- 8. pagination --------------------------------------------------------------------------


def _next_link(response: Any) -> str | None:
    header = response.headers.get("Link")
    if header is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', header)
    assert match, header
    return match.group(1)


@pytest.mark.parametrize("kind", ["users", "clients", "orgs"])
def test_pagination_follows_link_without_duplicates(client, factory, db, kind):
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    headers = factory.headers(boss)
    if kind == "users":
        expected = {str(factory.user(Role.CASEWORKER, org).id) for _ in range(7)}
        url = f"{API}/orgs/{org}/users?limit=3"
    elif kind == "clients":
        expected = {
            str(client_pk(db, factory.client_credentials(Role.DPO, org)[0])) for _ in range(7)
        }
        url = f"{API}/orgs/{org}/clients?limit=3"
    else:
        expected = {str(factory.org(OrgType.SHELTER)) for _ in range(7)}
        url = f"{API}/orgs?limit=3&org_type=shelter"

    seen: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url, headers=headers)
        assert response.status_code == 200, response.get_json()
        items = response.get_json()
        assert len(items) <= 3
        seen.extend(item["id"] for item in items)
        next_url = _next_link(response)
        if next_url:
            assert next_url.startswith(f"{API}/")
            assert "limit=3" in next_url
            if kind == "orgs":
                assert "org_type=shelter" in next_url
        pages += 1
        assert pages < 10
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert set(seen) == expected


def test_pagination_is_newest_first_and_no_link_on_last_page(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    for _ in range(2):
        factory.user(Role.CASEWORKER, admin.org_id)
    response = client.get(f"{API}/orgs/{admin.org_id}/users?limit=3", headers=headers)
    assert response.status_code == 200
    assert "Link" not in response.headers
    stamps = [u["created_at"] for u in response.get_json()]
    assert stamps == sorted(stamps, reverse=True)
    response = client.get(f"{API}/orgs/{admin.org_id}/users?limit=2", headers=headers)
    assert _next_link(response) is not None


def test_pagination_with_identical_timestamps(client, factory, db):
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    ids = {str(factory.user(Role.CASEWORKER, admin.org_id).id) for _ in range(5)} | {str(admin.id)}
    with db() as s:
        stamp = s.get(User, admin.id).created_at
        for user in s.scalars(select(User).where(User.org_id == admin.org_id)):
            user.created_at = stamp
        s.commit()
    seen: list[str] = []
    url: str | None = f"{API}/orgs/{admin.org_id}/users?limit=2"
    while url:
        response = client.get(url, headers=headers)
        seen.extend(u["id"] for u in response.get_json())
        url = _next_link(response)
    assert len(seen) == len(set(seen)) and set(seen) == ids


@pytest.mark.parametrize("path", ["/orgs", "/orgs/{org}/users", "/orgs/{org}/clients"])
def test_page_size_is_capped(client, factory, path):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    for limit in ("1000", "101", "0", "-1", "many"):
        response = client.get(
            API + path.format(org=boss.org_id), query_string={"limit": limit}, headers=headers
        )
        assert "limit" in field_errors(response), limit


def test_page_size_100_is_allowed(client, factory):
    boss = factory.user(Role.PLATFORM_ADMIN)
    response = client.get(f"{API}/orgs?limit=100", headers=factory.headers(boss))
    assert response.status_code == 200


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GARBAGE_CURSORS = {
    "junk": "garbage!!",
    "not-json": _b64(b"hello"),
    "not-utf8": _b64(b"\xff\xfe\xfd"),
    "null": _b64(b"null"),
    "wrong-shape": _b64(b'{"a": 1}'),
    "three-items": _b64(b'["2024-01-01T00:00:00+00:00", "x", "y"]'),
    "bad-date": _b64(json.dumps(["yesterday", str(uuid.uuid4())]).encode()),
    "bad-uuid": _b64(json.dumps(["2024-01-01T00:00:00+00:00", "nope"]).encode()),
    "numbers": _b64(b"[1, 2]"),
    "naive-date": _b64(json.dumps(["2024-01-01T00:00:00", str(uuid.uuid4())]).encode()),
    "sql": "' OR 1=1 --",
}


@pytest.mark.parametrize("path", ["/orgs", "/orgs/{org}/users", "/orgs/{org}/clients"])
def test_garbage_cursor_is_422(client, factory, path):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    for name, cursor in GARBAGE_CURSORS.items():
        response = client.get(
            API + path.format(org=boss.org_id), query_string={"cursor": cursor}, headers=headers
        )
        assert "cursor" in field_errors(response), name


def test_cursor_cannot_widen_scope(client, factory, db):
    """A cursor from a platform admin's listing reveals nothing when an org admin replays it."""
    admin = factory.user(Role.ORG_ADMIN)
    for _ in range(3):
        factory.org(OrgType.NGO)
    boss = factory.user(Role.PLATFORM_ADMIN)
    first = client.get(f"{API}/orgs?limit=1", headers=factory.headers(boss))
    cursor = re.search(r"cursor=([^&>]+)", first.headers["Link"]).group(1)
    response = client.get(f"{API}/orgs?cursor={cursor}", headers=factory.headers(admin))
    assert response.status_code == 200
    assert {o["id"] for o in response.get_json()} <= {str(admin.org_id)}


# ---- 9. platform administration -------------------------------------------------------------


def test_platform_admin_creates_an_organisation(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    response = client.post(
        f"{API}/orgs", json={"name": "  Legal Aid Kyiv  ", "org_type": "legal_aid"}, headers=headers
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["name"], body["org_type"], body["active"]) == ("Legal Aid Kyiv", "legal_aid", True)
    pk = uuid.UUID(body["id"])
    assert response.headers["ETag"] == etag(db, Organisation, pk)
    stored = row(db, Organisation, pk)
    assert (stored.name, stored.org_type) == ("Legal Aid Kyiv", OrgType.LEGAL_AID)
    read = client.get(f"{API}/orgs/{pk}", headers=headers)
    assert read.get_json() == body and read.headers["ETag"] == response.headers["ETag"]


def test_an_organisation_name_holds_no_map_coordinates(client, factory, db):
    """Its name is published with its services (the directory, HSDS): the same screen as
    the services' own texts, on creation and on renaming."""
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    org = factory.org(OrgType.SHELTER, name="Shelter One")
    before = snapshot(db)
    named = "Shelter 50.4501,30.5234"
    created = client.post(
        f"{API}/orgs", json={"name": named, "org_type": "shelter"}, headers=headers
    )
    assert "name" in assert_problem(created, 422)["errors"]["json"]
    renamed = client.patch(
        f"{API}/orgs/{org}",
        json={"name": named},
        headers={**headers, "If-Match": etag(db, Organisation, org)},
    )
    assert "name" in assert_problem(renamed, 422)["errors"]["json"]
    assert snapshot(db) == before


@pytest.mark.parametrize("name", ["Shelter One", "  Shelter One "])
def test_duplicate_organisation_name_is_409(client, factory, db, name):
    boss = factory.user(Role.PLATFORM_ADMIN)
    factory.org(OrgType.SHELTER, name="Shelter One")
    headers = factory.headers(boss)
    before = snapshot(db)
    response = client.post(f"{API}/orgs", json={"name": name, "org_type": "ngo"}, headers=headers)
    assert_problem(response, 409)
    assert snapshot(db) == before


def test_renaming_to_an_existing_name_is_409(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    factory.org(OrgType.SHELTER, name="Taken")
    org = factory.org(OrgType.NGO, name="Mine")
    before = snapshot(db)
    response = client.patch(
        f"{API}/orgs/{org}",
        json={"name": "Taken"},
        headers=factory.headers(boss) | {"If-Match": etag(db, Organisation, org)},
    )
    assert_problem(response, 409)
    assert snapshot(db) == before
    assert row(db, Organisation, org).name == "Mine"


@pytest.mark.parametrize("org_type", ["church", "", "NGO", None, 5])
def test_invalid_org_type_is_422(client, factory, db, org_type):
    boss = factory.user(Role.PLATFORM_ADMIN)
    before = snapshot(db)
    response = client.post(
        f"{API}/orgs",
        json={"name": "Whatever", "org_type": org_type},
        headers=factory.headers(boss),
    )
    assert "org_type" in field_errors(response)
    assert snapshot(db) == before


def test_platform_admin_bootstraps_a_new_org(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    org = client.post(
        f"{API}/orgs", json={"name": "New Police", "org_type": "police"}, headers=headers
    )
    org_id = org.get_json()["id"]
    response = client.post(
        f"{API}/orgs/{org_id}/users",
        json=_new_user(email="first-admin@example.org", role="org_admin"),
        headers=headers,
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["org_id"] == org_id

    login = first_sign_in(client, "first-admin@example.org")
    assert login.status_code == 200
    first_admin = bearer(login.get_json()["access_token"])
    # The new org admin now runs their own organisation.
    created = client.post(
        f"{API}/orgs/{org_id}/users",
        json=_new_user(email="officer@example.org", role="police_officer"),
        headers=first_admin,
    )
    assert created.status_code == 201
    listed = client.get(f"{API}/orgs", headers=first_admin).get_json()
    assert [o["id"] for o in listed] == [org_id]


def test_platform_admin_cannot_deactivate_own_organisation(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    headers = factory.headers(boss)
    before = snapshot(db)
    response = client.patch(
        f"{API}/orgs/{boss.org_id}",
        json={"active": False},
        headers=headers | {"If-Match": etag(db, Organisation, boss.org_id)},
    )
    assert_problem(response, 403)
    assert snapshot(db) == before
    assert row(db, Organisation, boss.org_id).active is True
    assert me(client, headers).status_code == 200


def test_platform_admin_renames_and_deactivates_another_org(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    org = factory.org(OrgType.NGO)
    headers = factory.headers(boss)
    response = client.patch(
        f"{API}/orgs/{org}",
        json={"name": "Renamed NGO", "active": False},
        headers=headers | {"If-Match": etag(db, Organisation, org)},
    )
    assert response.status_code == 200
    stored = row(db, Organisation, org)
    assert (stored.name, stored.active) == ("Renamed NGO", False)
    listed = client.get(f"{API}/orgs?org_type=ngo", headers=headers).get_json()
    assert [(o["id"], o["active"]) for o in listed] == [(str(org), False)]


def test_list_orgs_filters_by_type(client, factory, db):
    boss = factory.user(Role.PLATFORM_ADMIN)
    police = factory.org(OrgType.POLICE)
    factory.org(OrgType.NGO)
    response = client.get(f"{API}/orgs?org_type=police", headers=factory.headers(boss))
    assert [o["id"] for o in response.get_json()] == [str(police)]
    assert_problem(client.get(f"{API}/orgs?org_type=church", headers=factory.headers(boss)), 422)


def test_admin_responses_are_not_cached(client, factory):
    boss = factory.user(Role.PLATFORM_ADMIN)
    response = client.get(f"{API}/orgs/{boss.org_id}/users", headers=factory.headers(boss))
    assert "no-store" in response.headers.get("Cache-Control", "")


# ---- a platform administrator gives itself no way into case content ----------------------


def test_a_platform_admin_sets_up_no_content_account_in_another_organisation(client, factory, db):
    """DESIGN.md §4: a platform administrator never sees case content. It could otherwise
    create (or take over) a caseworker of a shelter, sign in as it and read the cases: it
    appoints the organisation's administrator and DPO, who manage the staff."""
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    shelter = factory.org(OrgType.SHELTER)
    caseworker = factory.user(Role.CASEWORKER, shelter)
    cid, _ = factory.client_credentials(Role.CASEWORKER, shelter)
    pk = client_pk(db, cid)
    before = snapshot(db)

    def post(path: str, body: dict) -> Any:
        return client.post(f"{API}{path}", json=body, headers=boss)

    def etag(url: str) -> str:
        return client.get(url, headers=boss).headers["ETag"]

    for role in ("caseworker", "supervisor"):
        body = {"email": f"{role}@example.org", "display_name": "X", "role": role}
        assert_problem(post(f"/orgs/{shelter}/users", body | {"password": NEW_PASSWORD}), 403)
        assert_problem(post(f"/orgs/{shelter}/clients", {"name": "c", "role": role}), 403)
    user_url, client_url = f"{API}/users/{caseworker.id}", f"{API}/clients/{pk}"
    taken_over = client.patch(
        user_url, json={"password": NEW_PASSWORD}, headers={**boss, "If-Match": etag(user_url)}
    )
    assert_problem(taken_over, 403)
    secret = client.post(f"{client_url}/secret", headers={**boss, "If-Match": etag(client_url)})
    assert_problem(secret, 403)
    assert snapshot(db) == before
    assert factory.login(caseworker)  # the caseworker's own password still works

    # What it may do: appoint the administrator and the DPO, and take access away.
    for role in ("org_admin", "dpo"):
        body = {"email": f"{role}@example.org", "display_name": "X", "role": role}
        assert post(f"/orgs/{shelter}/users", body | {"password": NEW_PASSWORD}).status_code == 201
    off = client.patch(
        user_url, json={"active": False}, headers={**boss, "If-Match": etag(user_url)}
    )
    assert off.status_code == 200, off.get_json()
    # The organisation's own administrator sets up its staff.
    admin = factory.headers(factory.user(Role.ORG_ADMIN, shelter))
    body = {"email": "new@example.org", "display_name": "N", "role": "caseworker"}
    staff = client.post(
        f"{API}/orgs/{shelter}/users", json=body | {"password": NEW_PASSWORD}, headers=admin
    )
    assert staff.status_code == 201, staff.get_json()


def test_a_platform_admin_takes_over_no_administrator_of_another_organisation(client, factory, db):
    """An administrator whose password the platform chose would make it a caseworker in two
    steps (create one, sign in as it). Where the organisation has an administrator, the
    platform neither resets its password, rotates its client's secret, nor appoints another;
    a new organisation's first administrator, or one replacing the last switched off, it
    does appoint."""
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    shelter = factory.org(OrgType.SHELTER)
    admin = factory.user(Role.ORG_ADMIN, shelter)
    caseworker = factory.user(Role.CASEWORKER, shelter)
    admin_client, _ = factory.client_credentials(Role.ORG_ADMIN, shelter)
    admin_url, client_url = (
        f"{API}/users/{admin.id}",
        f"{API}/clients/{client_pk(db, admin_client)}",
    )
    worker_url = f"{API}/users/{caseworker.id}"

    def patch(url: str, body: dict) -> Any:
        tag = client.get(url, headers=boss).headers["ETag"]
        return client.patch(url, json=body, headers={**boss, "If-Match": tag})

    def appoint(email: str) -> Any:
        body = _new_user(email=email, role="org_admin")
        return client.post(f"{API}/orgs/{shelter}/users", json=body, headers=boss)

    before = snapshot(db)
    refused = [
        patch(admin_url, {"password": NEW_PASSWORD}),
        client.post(
            f"{client_url}/secret",
            headers={**boss, "If-Match": client.get(client_url, headers=boss).headers["ETag"]},
        ),
        appoint("second-admin@example.org"),
        client.post(
            f"{API}/orgs/{shelter}/clients", json={"name": "c", "role": "org_admin"}, headers=boss
        ),
        patch(worker_url, {"role": "org_admin"}),
    ]
    assert [r.status_code for r in refused] == [403] * 5, [r.get_json() for r in refused]
    for response in refused:
        assert_problem(response, 403)
    assert snapshot(db) == before
    assert factory.login(admin)  # its own password still works

    # Switched off, an administrator still cannot be given a password by the platform...
    assert patch(admin_url, {"active": False}).status_code == 200
    assert_problem(patch(admin_url, {"password": NEW_PASSWORD}), 403)
    # ...and while the client administrator is active there is still one: no appointment.
    assert_problem(appoint("second-admin@example.org"), 403)
    off = client.patch(
        client_url,
        json={"active": False},
        headers={**boss, "If-Match": client.get(client_url, headers=boss).headers["ETag"]},
    )
    assert off.status_code == 200, off.get_json()
    # None active: the platform appoints a replacement, or promotes a member of staff.
    appointed = appoint("replacement-admin@example.org")
    assert appointed.status_code == 201, appointed.get_json()
    assert_problem(patch(worker_url, {"role": "org_admin"}), 403)  # there is one again
    # The appointee must replace the password the platform chose, at its first sign-in.
    chosen = {"email": "replacement-admin@example.org", "password": NEW_PASSWORD}
    assert_problem(client.post(f"{API}/auth/login", json=chosen), 403)
    assert first_sign_in(client, chosen["email"]).status_code == 200
    assert_problem(client.post(f"{API}/auth/login", json=chosen), 401)


def test_a_platform_admin_switches_no_dormant_administrator_back_on(client, factory, db):
    """An administrator the platform appointed and switched off would be a way in kept for
    later: switching it back on is appointing it again, refused while the organisation has
    an active administrator of its own (found by review)."""
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    org = client.post(f"{API}/orgs", json={"name": "Dormant", "org_type": "shelter"}, headers=boss)
    org_id = org.get_json()["id"]
    made = client.post(
        f"{API}/orgs/{org_id}/users",
        json=_new_user(email="dormant@example.org", role="org_admin"),
        headers=boss,
    )
    assert made.status_code == 201, made.get_json()
    url = f"{API}/users/{made.get_json()['id']}"

    def switch(on: bool) -> Any:
        tag = client.get(url, headers=boss).headers["ETag"]
        return client.patch(url, json={"active": on}, headers={**boss, "If-Match": tag})

    assert switch(False).status_code == 200
    real = factory.user(Role.ORG_ADMIN, uuid.UUID(org_id))  # the organisation's own
    before = snapshot(db)
    assert_problem(switch(True), 403)
    assert snapshot(db) == before
    # Once the organisation has no active administrator, switching one on is a recovery.
    real_url = f"{API}/users/{real.id}"
    tag = client.get(real_url, headers=boss).headers["ETag"]
    off = client.patch(real_url, json={"active": False}, headers={**boss, "If-Match": tag})
    assert off.status_code == 200
    assert switch(True).status_code == 200


def test_a_platform_admin_makes_no_administrator_client_of_another_organisation(
    client, factory, db
):
    """A client cannot replace its own secret, so an administrator client the platform made
    (or switched on) would stay the platform's: it appoints a user administrator, who sets
    up the clients."""
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    org = factory.org(OrgType.POLICE)  # no administrator at all
    dpo_client, _ = factory.client_credentials(Role.DPO, org)
    admin_client, _ = factory.client_credentials(Role.ORG_ADMIN, org)
    dpo_url = f"{API}/clients/{client_pk(db, dpo_client)}"
    admin_url = f"{API}/clients/{client_pk(db, admin_client)}"

    def patch(url: str, body: dict) -> Any:
        tag = client.get(url, headers=boss).headers["ETag"]
        return client.patch(url, json=body, headers={**boss, "If-Match": tag})

    assert patch(admin_url, {"active": False}).status_code == 200  # taking access away: yes
    before = snapshot(db)
    refused = [
        client.post(
            f"{API}/orgs/{org}/clients", json={"name": "c", "role": "org_admin"}, headers=boss
        ),
        patch(dpo_url, {"role": "org_admin"}),
        patch(admin_url, {"active": True}),
    ]
    for response in refused:
        assert "as a user" in assert_problem(response, 403)["detail"]
    assert snapshot(db) == before
    # A user administrator it may appoint (there is none active), as before.
    made = client.post(f"{API}/orgs/{org}/users", json=_new_user(role="org_admin"), headers=boss)
    assert made.status_code == 201, made.get_json()


def test_a_platform_admin_resets_no_password_in_another_organisation(client, factory, db):
    """Any account it reset could be made an administrator afterwards: the only
    administrator demoted to DPO (allowed: it takes access away), its password reset,
    promoted back where none is left. It sets a password only when it creates an account
    (found by review)."""
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    shelter = factory.org(OrgType.SHELTER)
    only_admin = factory.user(Role.ORG_ADMIN, shelter)
    url = f"{API}/users/{only_admin.id}"

    def patch(body: dict) -> Any:
        tag = client.get(url, headers=boss).headers["ETag"]
        return client.patch(url, json=body, headers={**boss, "If-Match": tag})

    assert patch({"role": "dpo"}).status_code == 200
    before = snapshot(db)
    refused = assert_problem(patch({"password": NEW_PASSWORD}), 403)
    assert "resets no password" in refused["detail"]
    assert snapshot(db) == before
    assert factory.login(only_admin)  # its own password still works


def test_a_platform_admin_promotes_staff_to_administrator_where_there_is_none(client, factory, db):
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    shelter = factory.org(OrgType.SHELTER)
    caseworker = factory.user(Role.CASEWORKER, shelter)
    url = f"{API}/users/{caseworker.id}"
    tag = client.get(url, headers=boss).headers["ETag"]
    promoted = client.patch(url, json={"role": "org_admin"}, headers={**boss, "If-Match": tag})
    assert promoted.status_code == 200, promoted.get_json()
    assert row(db, User, caseworker.id).role is Role.ORG_ADMIN
    # Promoted, it is an administrator: its password is its own.
    tag = promoted.headers["ETag"]
    reset = client.patch(url, json={"password": NEW_PASSWORD}, headers={**boss, "If-Match": tag})
    assert_problem(reset, 403)
