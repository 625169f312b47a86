"""Refused account administration is on the record (docs/audit.md: every denial is a row).

Resetting a caseworker's password is how an administrator could reach case content, so an
attempt the service refuses — another organisation's record (404, answered like a made-up
id) or a rule of the role (403) — leaves a `deny` row for the DPO, as the role-level refusal
of `@blp.requires` does. The answer itself is unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Factory, Principal, assert_problem
from sqlalchemy import select

from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.extensions import db
from referral_api.smorest import etag_for

API = "/api/v1"
NEW_PASSWORD = "an attacker's passphrase 42"
_KINDS = {Organisation: "org", User: "user", ApiClient: "client"}
_MODELS = {kind: model for model, kind in _KINDS.items()}
_RESOURCE_TYPES = {"org": "organisation", "user": "user", "client": "client"}


def _version(app: Any, model: Any, pk: uuid.UUID) -> int:
    with db.session_factory_for(app)() as s:
        return s.get(model, pk).version  # type: ignore[no-any-return]


def _etag(app: Any, model: Any, pk: uuid.UUID) -> str:
    return etag_for(_KINDS[model], pk, _version(app, model, pk))


def _rows_of(app: Any, response: Any) -> list[AuditEvent]:
    """The audit rows one request wrote, found by its X-Request-ID."""
    with db.session_factory_for(app)() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.request_id == response.headers["X-Request-ID"])
        ).all()
        s.expunge_all()
        return list(rows)


def _client_pk(app: Any, client_id: str) -> uuid.UUID:
    with db.session_factory_for(app)() as s:
        return s.scalars(select(ApiClient.id).where(ApiClient.client_id == client_id)).one()


def assert_denial_row(
    app: Any,
    response: Any,
    *,
    actor: tuple[str, uuid.UUID, uuid.UUID, str],
    action: str,
    resource: tuple[str, uuid.UUID],
    reason: str,
) -> None:
    """The request left exactly one row: a denial naming the actor, the action and the
    record by id, with the reason and nothing the request carried."""
    rows = _rows_of(app, response)
    assert len(rows) == 1, [(r.action, r.decision, r.reason) for r in rows]
    row = rows[0]
    assert (row.action, row.decision, row.reason) == (action, "deny", reason)
    assert (row.resource_type, row.resource_id) == (resource[0], str(resource[1]))
    assert (row.actor_type, row.actor_id, row.actor_org_id, row.actor_role) == actor
    assert (row.case_id, row.categories, row.details) == (None, None, None)


def _as_actor(principal: Principal) -> tuple[str, uuid.UUID, uuid.UUID, str]:
    return ("user", principal.id, principal.org_id, principal.role.value)


# ---- 404: another organisation's record, recorded like a made-up id --------------------------


@dataclass(frozen=True)
class Probe:
    method: str
    path: str  # formatted with org / user / client
    action: str
    target: str  # which of org / user / client the row names
    body: dict[str, Any] | None = None
    conditional: bool = False


PROBES = {
    "read-org": Probe("GET", "/orgs/{org}", "org:read", "org"),
    "list-users": Probe("GET", "/orgs/{org}/users", "user:read", "org"),
    "create-user": Probe(
        "POST",
        "/orgs/{org}/users",
        "user:manage",
        "org",
        body={
            "email": "planted@example.org",
            "display_name": "Planted",
            "role": "caseworker",
            "password": NEW_PASSWORD,
        },
    ),
    "list-clients": Probe("GET", "/orgs/{org}/clients", "client:read", "org"),
    "create-client": Probe(
        "POST", "/orgs/{org}/clients", "client:manage", "org", body={"name": "p", "role": "dpo"}
    ),
    "read-user": Probe("GET", "/users/{user}", "user:read", "user"),
    "reset-password": Probe(
        "PATCH", "/users/{user}", "user:manage", "user", {"password": NEW_PASSWORD}, True
    ),
    "read-client": Probe("GET", "/clients/{client}", "client:read", "client"),
    "deactivate-client": Probe(
        "PATCH", "/clients/{client}", "client:manage", "client", {"active": False}, True
    ),
    "rotate-secret": Probe(
        "POST", "/clients/{client}/secret", "client:manage", "client", None, True
    ),
}


def _send_probe(
    http: Any, probe: Probe, ids: dict[str, uuid.UUID], headers: dict[str, str], if_match: str
) -> Any:
    if probe.conditional:
        headers = {**headers, "If-Match": if_match}
    return http.open(
        API + probe.path.format(**ids), method=probe.method, json=probe.body, headers=headers
    )


@pytest.mark.parametrize("name", sorted(PROBES))
def test_another_orgs_record_is_refused_on_the_record_like_a_made_up_id(
    app: Any, client: Any, factory: Factory, name: str
) -> None:
    probe = PROBES[name]
    admin = factory.user(Role.ORG_ADMIN, factory.org(OrgType.NGO))
    headers = factory.headers(admin)
    shelter = factory.org(OrgType.SHELTER)
    victim = factory.user(Role.CASEWORKER, shelter)
    their_client = _client_pk(app, factory.client_credentials(Role.CASEWORKER, shelter)[0])
    real = {"org": shelter, "user": victim.id, "client": their_client}
    made_up = {"org": uuid.uuid4(), "user": uuid.uuid4(), "client": uuid.uuid4()}
    model = _MODELS[probe.target]
    version = _version(app, model, real[probe.target])

    # The real record's current ETag: what refuses it is the scope, not a stale version.
    refused = _send_probe(client, probe, real, headers, _etag(app, model, real[probe.target]))
    missing = _send_probe(client, probe, made_up, headers, '"x"')

    bodies = [assert_problem(response, 404) for response in (refused, missing)]
    for body in bodies:
        body.pop("instance")
    assert (
        bodies[0]
        == bodies[1]
        == {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": "Not Found",
        }
    )
    assert _version(app, model, real[probe.target]) == version
    resource_type = _RESOURCE_TYPES[probe.target]
    for response, ids, reason in (
        (refused, real, "outside record scope"),
        (missing, made_up, f"no such {resource_type}"),
    ):
        assert_denial_row(
            app,
            response,
            actor=_as_actor(admin),
            action=probe.action,
            resource=(resource_type, ids[probe.target]),
            reason=reason,
        )


# ---- 403: a rule of the actor's role ------------------------------------------------------


@dataclass
class Attempt:
    """One refused request, and what its row must say."""

    headers: dict[str, str]
    actor: tuple[str, uuid.UUID, uuid.UUID, str]
    method: str
    url: str
    target: tuple[Any, uuid.UUID]  # (model, id) the row names, unchanged by the attempt
    action: str
    reason: str
    detail: str
    body: dict[str, Any] | None = None
    conditional: bool = True  # If-Match with the target's current ETag
    after: Callable[[], None] = field(default=lambda: None)


CONTENT_ELSEWHERE = (
    "A platform administrator does not set up accounts that read case content in another "
    "organisation; its administrator does."
)
OUTSIDE_PLATFORM = "case-content account outside the platform organisation"


ADMIN_CREDENTIALS = (
    "A platform administrator does not set the password or secret of another "
    "organisation's administrator; its administrators do."
)
ADMIN_ACTIVE = "This organisation has an administrator: it appoints the next one."


def _platform_admin(factory: Factory) -> tuple[Principal, dict[str, str]]:
    boss = factory.user(Role.PLATFORM_ADMIN, factory.org(OrgType.PLATFORM))
    return boss, factory.headers(boss)


def _admin_client(app: Any, client: Any, factory: Factory) -> tuple[Any, ...]:
    """An `org_admin` API client, its token headers, actor columns and secret."""
    org = factory.org(OrgType.POLICE)
    cid, secret = factory.client_credentials(Role.ORG_ADMIN, org)
    token = client.post(
        f"{API}/auth/token",
        data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
    ).get_json()["access_token"]
    pk = _client_pk(app, cid)
    actor = ("client", pk, org, "org_admin")
    return pk, {"Authorization": f"Bearer {token}"}, actor, (cid, secret)


def _password_of_a_caseworker_elsewhere(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    victim = factory.user(Role.CASEWORKER, factory.org(OrgType.SHELTER))
    return Attempt(
        headers,
        _as_actor(boss),
        "PATCH",
        f"/users/{victim.id}",
        (User, victim.id),
        "user:manage",
        OUTSIDE_PLATFORM,
        CONTENT_ELSEWHERE,
        body={"password": NEW_PASSWORD},
        after=lambda: factory.login(victim),  # the victim's own password still works
    )


def _secret_of_a_caseworker_client_elsewhere(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    pk = _client_pk(app, factory.client_credentials(Role.CASEWORKER, factory.org())[0])
    return Attempt(
        headers,
        _as_actor(boss),
        "POST",
        f"/clients/{pk}/secret",
        (ApiClient, pk),
        "client:manage",
        OUTSIDE_PLATFORM,
        CONTENT_ELSEWHERE,
    )


def _caseworker_created_elsewhere(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    shelter = factory.org(OrgType.SHELTER)
    body = {
        "email": "planted@example.org",
        "display_name": "Planted",
        "role": "caseworker",
        "password": NEW_PASSWORD,
    }
    return Attempt(
        headers,
        _as_actor(boss),
        "POST",
        f"/orgs/{shelter}/users",
        (Organisation, shelter),
        "user:manage",
        OUTSIDE_PLATFORM,
        CONTENT_ELSEWHERE,
        body=body,
        conditional=False,
    )


def _caseworker_client_created_elsewhere(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    shelter = factory.org(OrgType.SHELTER)
    return Attempt(
        headers,
        _as_actor(boss),
        "POST",
        f"/orgs/{shelter}/clients",
        (Organisation, shelter),
        "client:manage",
        OUTSIDE_PLATFORM,
        CONTENT_ELSEWHERE,
        body={"name": "planted", "role": "caseworker"},
        conditional=False,
    )


def _platform_admin_granted_by_org_admin(app: Any, client: Any, factory: Factory) -> Attempt:
    platform = factory.org(OrgType.PLATFORM)
    admin = factory.user(Role.ORG_ADMIN, platform)
    dpo = factory.user(Role.DPO, platform)
    return Attempt(
        factory.headers(admin),
        _as_actor(admin),
        "PATCH",
        f"/users/{dpo.id}",
        (User, dpo.id),
        "user:manage",
        "platform administrator role granted by another role",
        "Only a platform administrator can grant that role.",
        body={"role": "platform_admin"},
    )


def _own_role(app: Any, client: Any, factory: Factory) -> Attempt:
    admin = factory.user(Role.ORG_ADMIN)
    return Attempt(
        factory.headers(admin),
        _as_actor(admin),
        "PATCH",
        f"/users/{admin.id}",
        (User, admin.id),
        "user:manage",
        "own role or status",
        "You cannot change your own role or status.",
        body={"role": "dpo"},
    )


def _platform_admin_changed_by_org_admin(app: Any, client: Any, factory: Factory) -> Attempt:
    platform = factory.org(OrgType.PLATFORM)
    admin = factory.user(Role.ORG_ADMIN, platform)
    boss = factory.user(Role.PLATFORM_ADMIN, platform)
    return Attempt(
        factory.headers(admin),
        _as_actor(admin),
        "PATCH",
        f"/users/{boss.id}",
        (User, boss.id),
        "user:manage",
        "platform administrator changed by another role",
        "Only a platform administrator can change a platform administrator.",
        body={"password": NEW_PASSWORD},
    )


def _client_changes_itself(app: Any, client: Any, factory: Factory) -> Attempt:
    pk, headers, actor, _ = _admin_client(app, client, factory)
    return Attempt(
        headers,
        actor,
        "PATCH",
        f"/clients/{pk}",
        (ApiClient, pk),
        "client:manage",
        "client changing itself",
        "A client cannot change itself.",
        body={"role": "police_officer"},
    )


def _client_rotates_its_own_secret(app: Any, client: Any, factory: Factory) -> Attempt:
    pk, headers, actor, (cid, secret) = _admin_client(app, client, factory)

    def old_secret_still_works() -> None:
        token = client.post(
            f"{API}/auth/token",
            data={"grant_type": "client_credentials", "client_id": cid, "client_secret": secret},
        )
        assert token.status_code == 200, token.get_json()
        assert client.get(f"{API}/me", headers=headers).status_code == 200  # not revoked

    return Attempt(
        headers,
        actor,
        "POST",
        f"/clients/{pk}/secret",
        (ApiClient, pk),
        "client:manage",
        "client changing itself",
        "A client cannot change itself.",
        after=old_secret_still_works,
    )


def _own_organisation_deactivated(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    return Attempt(
        headers,
        _as_actor(boss),
        "PATCH",
        f"/orgs/{boss.org_id}",
        (Organisation, boss.org_id),
        "org:manage",
        "own organisation deactivated",
        "You cannot deactivate your own organisation.",
        body={"active": False},
    )


def _password_of_an_administrator_elsewhere(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    admin = factory.user(Role.ORG_ADMIN, factory.org(OrgType.SHELTER))
    return Attempt(
        headers,
        _as_actor(boss),
        "PATCH",
        f"/users/{admin.id}",
        (User, admin.id),
        "user:manage",
        "administrator's credentials outside the platform organisation",
        ADMIN_CREDENTIALS,
        body={"password": NEW_PASSWORD},
        after=lambda: factory.login(admin),
    )


def _administrator_appointed_beside_one(app: Any, client: Any, factory: Factory) -> Attempt:
    boss, headers = _platform_admin(factory)
    shelter = factory.org(OrgType.SHELTER)
    factory.user(Role.ORG_ADMIN, shelter)
    body = {
        "email": "second-admin@example.org",
        "display_name": "Second",
        "role": "org_admin",
        "password": NEW_PASSWORD,
    }
    return Attempt(
        headers,
        _as_actor(boss),
        "POST",
        f"/orgs/{shelter}/users",
        (Organisation, shelter),
        "user:manage",
        "administrator appointed where one is active",
        ADMIN_ACTIVE,
        body=body,
        conditional=False,
    )


ATTEMPTS = {
    "platform-admin-resets-administrator-password": _password_of_an_administrator_elsewhere,
    "platform-admin-appoints-beside-an-administrator": _administrator_appointed_beside_one,
    "platform-admin-resets-caseworker-password": _password_of_a_caseworker_elsewhere,
    "platform-admin-rotates-caseworker-client-secret": _secret_of_a_caseworker_client_elsewhere,
    "platform-admin-creates-caseworker": _caseworker_created_elsewhere,
    "platform-admin-creates-caseworker-client": _caseworker_client_created_elsewhere,
    "org-admin-grants-platform-admin": _platform_admin_granted_by_org_admin,
    "own-role": _own_role,
    "org-admin-changes-platform-admin": _platform_admin_changed_by_org_admin,
    "client-changes-itself": _client_changes_itself,
    "client-rotates-own-secret": _client_rotates_its_own_secret,
    "own-organisation-deactivated": _own_organisation_deactivated,
}


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_a_refused_account_change_is_on_the_record(
    app: Any, client: Any, factory: Factory, name: str
) -> None:
    attempt = ATTEMPTS[name](app, client, factory)
    model, pk = attempt.target
    version = _version(app, model, pk)
    headers = dict(attempt.headers)
    if attempt.conditional:
        headers["If-Match"] = _etag(app, model, pk)

    response = client.open(
        API + attempt.url, method=attempt.method, json=attempt.body, headers=headers
    )

    body = assert_problem(response, 403)
    body.pop("instance")
    assert body == {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": attempt.detail,
    }
    assert _version(app, model, pk) == version
    attempt.after()
    assert_denial_row(
        app,
        response,
        actor=attempt.actor,
        action=attempt.action,
        resource=(_RESOURCE_TYPES[_KINDS[model]], pk),
        reason=attempt.reason,
    )
