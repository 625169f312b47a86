"""Administration of organisations, users and API clients.

Platform administrators manage organisations and may administer any organisation's
accounts (to bootstrap a new organisation); organisation administrators manage only their
own organisation's users and clients. Nobody changes their own role or status, and only a
platform administrator grants or changes the platform administrator role.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.permissions import Permission
from referral_api.access.policy import require, scope_to_org
from referral_api.access.roles import OrgType, Role, permissions_for, role_allowed_in_org
from referral_api.audit import service as audit
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.auth.passwords import CredentialHasher
from referral_api.auth.service import (
    revoke_sessions_of_client,
    revoke_sessions_of_organisation,
    revoke_sessions_of_user,
)
from referral_api.crypto.fields import crypto_of
from referral_api.exceptions import Conflict, Forbidden, NotFound, ValidationFailed


@dataclass(frozen=True, slots=True)
class ClientWithSecret:
    client: ApiClient
    client_secret: str


def _flush_unique(session: Session, message: str) -> None:
    """Flush inside a savepoint so a uniqueness clash leaves the transaction usable."""
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(message) from None


def _changed(changes: dict[str, Any]) -> dict[str, Any]:
    """Which fields changed; new values only where they are not secrets."""
    shown = {key: value for key, value in changes.items() if key in ("role", "active")}
    return {"changed": sorted(changes), **{k: getattr(v, "value", v) for k, v in shown.items()}}


def _audit(
    session: Session,
    actor: Actor,
    action: Permission,
    resource_type: str,
    resource_id: uuid.UUID,
    org_id: uuid.UUID,
    details: dict[str, Any],
) -> None:
    # Account changes are how an administrator could reach case content (e.g. resetting a
    # caseworker's password), so every one is on the record for the DPO.
    audit.record(
        session,
        actor,
        str(action),
        resource_type=resource_type,
        resource_id=resource_id,
        details={**details, "org_id": str(org_id)},
    )


# ---- organisations ------------------------------------------------------------------------


def get_organisation(
    session: Session, actor: Actor, org_id: uuid.UUID, action: Permission
) -> Organisation:
    org = session.get(Organisation, org_id)
    if org is None:
        raise NotFound()
    require(actor, action, org)
    return org


def find_organisation(session: Session, reference: str) -> Organisation:
    """An organisation by id or exact name (CLI convenience)."""
    try:
        org = session.get(Organisation, uuid.UUID(reference))
    except ValueError:
        org = session.scalars(
            select(Organisation).where(Organisation.name == reference)
        ).one_or_none()
    if org is None:
        raise NotFound("No organisation with that id or name.")
    return org


def list_organisations_query(actor: Actor, org_type: OrgType | None = None) -> Select[Any]:
    stmt = scope_to_org(actor, Permission.ORG_READ, select(Organisation), Organisation.id)
    if org_type is not None:
        stmt = stmt.where(Organisation.org_type == org_type)
    return stmt


def create_organisation(
    session: Session, actor: Actor, *, name: str, org_type: OrgType
) -> Organisation:
    require(actor, Permission.ORG_MANAGE)
    org = Organisation(id=uuid.uuid4(), name=_name(name), org_type=org_type)
    session.add(org)
    _flush_unique(session, "An organisation with this name already exists.")
    # Every organisation gets its own key-encryption and blind-index keys at birth.
    crypto_of(session).keys(session).ensure_org_keys(org.id)
    _audit(session, actor, Permission.ORG_MANAGE, "organisation", org.id, org.id, {"created": True})
    return org


def update_organisation(
    session: Session, actor: Actor, org: Organisation, changes: dict[str, Any]
) -> Organisation:
    require(actor, Permission.ORG_MANAGE, org)
    if "active" in changes and not changes["active"] and org.id == actor.org_id:
        raise Forbidden("You cannot deactivate your own organisation.")
    deactivated = org.active and changes.get("active") is False
    # Its services' HSDS documents carry its name and take their status from it: an
    # incremental pull (`modified_after`) must see them change when either does.
    published_changed = ("active" in changes and changes["active"] != org.active) or (
        "name" in changes and changes["name"].strip() != org.name
    )
    for field in ("name", "active"):
        if field in changes:
            setattr(org, field, changes[field].strip() if field == "name" else changes[field])
    _flush_unique(session, "An organisation with this name already exists.")
    if deactivated:
        # Every login of its users and clients ends now, as a user's or client's own
        # deactivation ends theirs: reactivating the organisation later brings none back.
        revoke_sessions_of_organisation(
            session, org.id, reason="organisation_deactivated", now=datetime.now(UTC)
        )
    if published_changed:
        from referral_api.directory.models import Service

        session.execute(
            update(Service)
            .where(Service.org_id == org.id)
            .values(updated_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
    _audit(
        session,
        actor,
        Permission.ORG_MANAGE,
        "organisation",
        org.id,
        org.id,
        {"changed": sorted(changes)},
    )
    return org


# ---- roles --------------------------------------------------------------------------------


def _name(name: str) -> str:
    """A name as the API's schemas take it (1-200 characters, not blank), for callers that
    bypass them (the CLI)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationFailed({"name": ["1 to 200 characters, not blank."]})
    return name


def _reaches_case_content(role: Role | None) -> bool:
    return Permission.CASE_READ in permissions_for(role)


def _check_credentials_outside_platform(actor: Actor, org_id: uuid.UUID, role: Role | None) -> None:
    """A platform administrator sees no case content (DESIGN.md §4), so it may not hand
    itself a way in: outside the platform organisation it neither grants a role that reads
    case content nor sets the password or secret of an account that has one. It appoints
    the organisation's administrator (and DPO), who manages its staff; deactivating an
    account (which only takes access away) stays open to it."""
    if (
        actor.role is Role.PLATFORM_ADMIN
        and actor.kind is not ActorKind.SYSTEM
        and org_id != actor.org_id
        and _reaches_case_content(role)
    ):
        raise Forbidden(
            "A platform administrator does not set up accounts that read case content in "
            "another organisation; its administrator does."
        )


def _check_role_grant(actor: Actor, org: Organisation, role: Role) -> None:
    if not role_allowed_in_org(role, org.org_type):
        raise ValidationFailed(
            {
                "role": [
                    f"The role {role.value} is not available in a "
                    f"{org.org_type.value} organisation."
                ]
            }
        )
    if (
        role is Role.PLATFORM_ADMIN
        and actor.role is not Role.PLATFORM_ADMIN
        and actor.kind is not ActorKind.SYSTEM
    ):
        raise Forbidden("Only a platform administrator can grant that role.")
    _check_credentials_outside_platform(actor, org.id, role)


# ---- users --------------------------------------------------------------------------------


def get_user(session: Session, actor: Actor, user_id: uuid.UUID, action: Permission) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound()
    require(actor, action, user)
    return user


def list_users_query(actor: Actor, org: Organisation) -> Select[Any]:
    require(actor, Permission.USER_READ, org)
    return select(User).where(User.org_id == org.id)


def create_user(
    session: Session,
    actor: Actor,
    hasher: CredentialHasher,
    org: Organisation,
    *,
    email: str,
    display_name: str,
    role: Role,
    password: str,
) -> User:
    require(actor, Permission.USER_MANAGE, org)
    _check_role_grant(actor, org, role)
    user = User(
        id=uuid.uuid4(),
        org_id=org.id,
        email=email.strip().lower(),
        display_name=display_name.strip(),
        role=role,
        password_hash=hasher.hash(password),
    )
    session.add(user)
    _flush_unique(session, "A user with this e-mail address already exists.")
    _audit(
        session,
        actor,
        Permission.USER_MANAGE,
        "user",
        user.id,
        org.id,
        {"created": True, "role": role.value},
    )
    return user


def update_user(
    session: Session, actor: Actor, hasher: CredentialHasher, user: User, changes: dict[str, Any]
) -> User:
    require(actor, Permission.USER_MANAGE, user)
    is_self = actor.kind is ActorKind.USER and actor.id == user.id
    if is_self and ({"role", "active"} & changes.keys()):
        raise Forbidden("You cannot change your own role or status.")
    if user.role is Role.PLATFORM_ADMIN and actor.role is not Role.PLATFORM_ADMIN:
        raise Forbidden("Only a platform administrator can change a platform administrator.")
    if "role" in changes:
        _check_role_grant(actor, user.organisation, changes["role"])
        user.role = changes["role"]
    if "display_name" in changes:
        user.display_name = changes["display_name"].strip()
    if "password" in changes:
        _check_credentials_outside_platform(actor, user.org_id, changes.get("role", user.role))
        user.password_hash = hasher.hash(changes["password"])
    if "active" in changes:
        user.active = changes["active"]
    if changes.get("active") is False or "password" in changes or "role" in changes:
        # Existing logins end at once (access checks reload the user anyway).
        revoke_sessions_of_user(session, user.id, reason="account_changed", now=datetime.now(UTC))
    session.flush()
    _audit(session, actor, Permission.USER_MANAGE, "user", user.id, user.org_id, _changed(changes))
    return user


# ---- API clients --------------------------------------------------------------------------


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def get_client(
    session: Session, actor: Actor, client_pk: uuid.UUID, action: Permission
) -> ApiClient:
    client = session.get(ApiClient, client_pk)
    if client is None:
        raise NotFound()
    require(actor, action, client)
    return client


def list_clients_query(actor: Actor, org: Organisation) -> Select[Any]:
    require(actor, Permission.CLIENT_READ, org)
    return select(ApiClient).where(ApiClient.org_id == org.id)


def create_client(
    session: Session,
    actor: Actor,
    hasher: CredentialHasher,
    org: Organisation,
    *,
    name: str,
    role: Role,
) -> ClientWithSecret:
    require(actor, Permission.CLIENT_MANAGE, org)
    _check_role_grant(actor, org, role)
    if role is Role.PLATFORM_ADMIN:
        raise ValidationFailed({"role": ["Machine clients cannot be platform administrators."]})
    secret = _new_secret()
    client = ApiClient(
        id=uuid.uuid4(),
        org_id=org.id,
        name=_name(name),
        client_id=f"rac_{secrets.token_hex(12)}",
        secret_hash=hasher.hash(secret),
        role=role,
    )
    session.add(client)
    session.flush()
    _audit(
        session,
        actor,
        Permission.CLIENT_MANAGE,
        "api_client",
        client.id,
        org.id,
        {"created": True, "role": role.value},
    )
    return ClientWithSecret(client, secret)


def update_client(
    session: Session, actor: Actor, client: ApiClient, changes: dict[str, Any]
) -> ApiClient:
    require(actor, Permission.CLIENT_MANAGE, client)
    if actor.kind is ActorKind.CLIENT and actor.id == client.id:
        raise Forbidden("A client cannot change itself.")
    if "role" in changes:
        _check_role_grant(actor, client.organisation, changes["role"])
        if changes["role"] is Role.PLATFORM_ADMIN:
            raise ValidationFailed({"role": ["Machine clients cannot be platform administrators."]})
        client.role = changes["role"]
    if "name" in changes:
        client.name = changes["name"].strip()
    if "active" in changes:
        client.active = changes["active"]
    if changes.get("active") is False or "role" in changes:
        revoke_sessions_of_client(
            session, client.id, reason="client_changed", now=datetime.now(UTC)
        )
    session.flush()
    _audit(
        session,
        actor,
        Permission.CLIENT_MANAGE,
        "api_client",
        client.id,
        client.org_id,
        _changed(changes),
    )
    return client


def rotate_client_secret(
    session: Session, actor: Actor, hasher: CredentialHasher, client: ApiClient
) -> ClientWithSecret:
    require(actor, Permission.CLIENT_MANAGE, client)
    _check_credentials_outside_platform(actor, client.org_id, client.role)
    secret = _new_secret()
    client.secret_hash = hasher.hash(secret)
    # Tokens obtained with the old secret stop working at once.
    revoke_sessions_of_client(session, client.id, reason="secret_rotated", now=datetime.now(UTC))
    session.flush()
    _audit(
        session,
        actor,
        Permission.CLIENT_MANAGE,
        "api_client",
        client.id,
        client.org_id,
        {"secret_rotated": True},
    )
    return ClientWithSecret(client, secret)
