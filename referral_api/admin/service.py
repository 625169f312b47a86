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
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.permissions import Permission
from referral_api.access.permissions import resource_type as permission_resource_type
from referral_api.access.policy import require_on_record, scope_to_org
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


# ---- refusals -----------------------------------------------------------------------------
# Every refusal is on the record (docs/audit.md): a refused password reset is an attempt to
# reach case content. errors.handle_domain_error writes the entry in its own transaction;
# the caller's answer is the plain 404 or 403, whatever the reason.

_Record = Organisation | User | ApiClient
_Refusal = TypeVar("_Refusal", bound=NotFound | Forbidden)

# The audit log's names (access.permissions.resource_type): an API client is a `client`, as
# in the sign-in rows and the DPO's sign-in-failures report.
_RESOURCE_TYPES: dict[type, str] = {
    Organisation: "organisation",
    User: "user",
    ApiClient: "client",
}


def _on_record(
    error: _Refusal,
    action: Permission,
    resource_type: str,
    resource_id: uuid.UUID | None,
    reason: str,
) -> _Refusal:
    """`error`, carrying the deny row it leaves: ids and a reason, never a value the request
    carried (a password, a name)."""
    return audit.on_record(error, str(action), resource_type, resource_id, reason)


def _forbidden(message: str, action: Permission, target: _Record, reason: str) -> Forbidden:
    return _on_record(Forbidden(message), action, _RESOURCE_TYPES[type(target)], target.id, reason)


def _missing(action: Permission, model: type[_Record], tried_id: uuid.UUID) -> NotFound:
    # A made-up id is answered, and recorded, like another organisation's record: neither
    # the answer nor the number of rows written tells them apart.
    resource_type = _RESOURCE_TYPES[model]
    return _on_record(NotFound(), action, resource_type, tried_id, f"no such {resource_type}")


def _require(actor: Actor, action: Permission, target: _Record | None = None) -> None:
    """policy.decide, refusing on the record: 404 when the target is outside the actor's
    scope (existence is not confirmed), 403 when the role lacks the permission."""
    if target is None:
        resource_type, resource_id = permission_resource_type(action), None
    else:
        resource_type, resource_id = _RESOURCE_TYPES[type(target)], target.id
    require_on_record(actor, action, target, resource_type, resource_id)


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
        raise _missing(action, Organisation, org_id)
    _require(actor, action, org)
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
    _require(actor, Permission.ORG_READ)  # refused on the record, before scoping the query
    stmt = scope_to_org(actor, Permission.ORG_READ, select(Organisation), Organisation.id)
    if org_type is not None:
        stmt = stmt.where(Organisation.org_type == org_type)
    return stmt


def create_organisation(
    session: Session, actor: Actor, *, name: str, org_type: OrgType
) -> Organisation:
    _require(actor, Permission.ORG_MANAGE)
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
    _require(actor, Permission.ORG_MANAGE, org)
    if "active" in changes and not changes["active"] and org.id == actor.org_id:
        raise _forbidden(
            "You cannot deactivate your own organisation.",
            Permission.ORG_MANAGE,
            org,
            "own organisation deactivated",
        )
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
            # A service's representation shows its organisation's name and status, so its
            # ETag (from its version) changes with them.
            .values(updated_at=datetime.now(UTC), version=Service.version + 1)
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


def _manages_accounts(role: Role | None) -> bool:
    """An account of this role sets up others (users or clients): in its organisation it can
    make one that reads case content."""
    granted = permissions_for(role)
    return Permission.USER_MANAGE in granted or Permission.CLIENT_MANAGE in granted


_MANAGING_ROLES = tuple(role for role in Role if _manages_accounts(role))


def _platform_admin_elsewhere(actor: Actor, org_id: uuid.UUID) -> bool:
    return (
        actor.role is Role.PLATFORM_ADMIN
        and actor.kind is not ActorKind.SYSTEM
        and org_id != actor.org_id
    )


def _check_credentials_outside_platform(
    actor: Actor, action: Permission, target: _Record, org_id: uuid.UUID, role: Role | None
) -> None:
    """A platform administrator sees no case content (DESIGN.md §4), so it may not hand
    itself a way in: outside the platform organisation it neither grants a role that reads
    case content nor sets the password or secret of an account that has one, or that sets
    up accounts (an administrator whose password it chose would make it a caseworker in
    two steps). It appoints an organisation's administrator where there is none
    (`_check_appointment`); deactivating an account (which only takes access away) stays
    open to it."""
    if not _platform_admin_elsewhere(actor, org_id):
        return
    if _reaches_case_content(role):
        raise _forbidden(
            "A platform administrator does not set up accounts that read case content in "
            "another organisation; its administrator does.",
            action,
            target,
            "case-content account outside the platform organisation",
        )
    if _manages_accounts(role):
        raise _forbidden(
            "A platform administrator does not set the password or secret of another "
            "organisation's administrator; its administrators do.",
            action,
            target,
            "administrator's credentials outside the platform organisation",
        )


def _check_appointment(
    session: Session, actor: Actor, action: Permission, target: _Record, org_id: uuid.UUID
) -> None:
    """A platform administrator appoints an administrator (a role that sets up accounts) of
    another organisation only while it has none active: a new organisation's first, or a
    replacement once the last was switched off. An organisation with an administrator
    appoints the next itself, so the platform cannot silently add one whose password it
    chose. The organisation's row is locked first, so two appointments at once are decided
    one after the other.

    Locks in a sign-in's order (`auth.service._credential_current`: the account, then its
    organisation), so an appointment and a sign-in of the account appointed never wait for
    each other both ways: the account being promoted or switched on first, then the
    organisation, FOR NO KEY UPDATE (which does not hold back rows referencing it)."""
    if isinstance(target, (User, ApiClient)):
        account = type(target)
        session.execute(
            select(account.id).where(account.id == target.id).with_for_update(key_share=True)
        )
    session.execute(
        select(Organisation.id).where(Organisation.id == org_id).with_for_update(key_share=True)
    )
    for model in (User, ApiClient):
        others = select(model.id).where(
            model.org_id == org_id, model.active.is_(True), model.role.in_(_MANAGING_ROLES)
        )
        if isinstance(target, model):  # the account being promoted is not one already
            others = others.where(model.id != target.id)
        if session.scalar(others.limit(1)) is not None:
            raise _forbidden(
                "This organisation has an administrator: it appoints the next one.",
                action,
                target,
                "administrator appointed where one is active",
            )


def _check_reactivation(
    session: Session,
    actor: Actor,
    action: Permission,
    target: _Record,
    org_id: uuid.UUID,
    role: Role,
) -> None:
    """Switching an administrator back on is appointing it again: a platform administrator
    does it only where the organisation has no active administrator (an account it set up
    and switched off would otherwise be a way in, kept for later)."""
    if _manages_accounts(role) and _platform_admin_elsewhere(actor, org_id):
        _check_appointment(session, actor, action, target, org_id)


def _check_client_administrator(
    actor: Actor, action: Permission, target: _Record, org_id: uuid.UUID, role: Role
) -> None:
    """A platform administrator makes no administrator client of another organisation, nor
    switches one on: a client cannot replace its own secret, so one the platform was handed
    would stay the platform's. It appoints a user administrator, who replaces the password
    at the first sign-in and sets up the organisation's clients."""
    if _manages_accounts(role) and _platform_admin_elsewhere(actor, org_id):
        raise _forbidden(
            "A platform administrator appoints another organisation's administrator as a "
            "user; its administrators set up its clients.",
            action,
            target,
            "administrator client outside the platform organisation",
        )


def _check_role_grant(
    session: Session,
    actor: Actor,
    action: Permission,
    target: _Record,
    org: Organisation,
    role: Role,
) -> None:
    """May `actor` give `role` to an account in `org`? `target`: the account, or `org` when
    it is being created (what a refusal records)."""
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
        raise _forbidden(
            "Only a platform administrator can grant that role.",
            action,
            target,
            "platform administrator role granted by another role",
        )
    if _reaches_case_content(role):
        _check_credentials_outside_platform(actor, action, target, org.id, role)
    elif _manages_accounts(role) and _platform_admin_elsewhere(actor, org.id):
        _check_appointment(session, actor, action, target, org.id)


# ---- users --------------------------------------------------------------------------------


def get_user(session: Session, actor: Actor, user_id: uuid.UUID, action: Permission) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise _missing(action, User, user_id)
    _require(actor, action, user)
    return user


def list_users_query(actor: Actor, org: Organisation) -> Select[Any]:
    _require(actor, Permission.USER_READ, org)
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
    _require(actor, Permission.USER_MANAGE, org)
    _check_role_grant(session, actor, Permission.USER_MANAGE, org, org, role)
    user = User(
        id=uuid.uuid4(),
        org_id=org.id,
        email=email.strip().lower(),
        display_name=display_name.strip(),
        role=role,
        password_hash=hasher.hash(password),
        # Chosen by its administrator: replaced at the first sign-in (not for the CLI's).
        password_change_required=actor.kind is not ActorKind.SYSTEM,
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
    manage = Permission.USER_MANAGE
    _require(actor, manage, user)
    is_self = actor.kind is ActorKind.USER and actor.id == user.id
    if is_self and ({"role", "active"} & changes.keys()):
        raise _forbidden(
            "You cannot change your own role or status.",
            manage,
            user,
            "own role or status",
        )
    if is_self and "password" in changes:
        # A stolen access token (15 minutes) must not become the account: one's own password
        # is changed with the current one, at sign-in.
        raise _forbidden(
            "Change your own password by signing in with it and a new_password "
            "(POST /api/v1/auth/login).",
            manage,
            user,
            "own password without the current one",
        )
    if user.role is Role.PLATFORM_ADMIN and actor.role is not Role.PLATFORM_ADMIN:
        raise _forbidden(
            "Only a platform administrator can change a platform administrator.",
            manage,
            user,
            "platform administrator changed by another role",
        )
    if "role" in changes:
        _check_role_grant(session, actor, manage, user, user.organisation, changes["role"])
        user.role = changes["role"]
    if "display_name" in changes:
        user.display_name = changes["display_name"].strip()
    if "password" in changes:
        role = changes.get("role", user.role)
        _check_credentials_outside_platform(actor, manage, user, user.org_id, role)
        if _platform_admin_elsewhere(actor, user.org_id):
            # Any account it reset could be made an administrator afterwards (demoted,
            # reset, promoted back where none is left): it sets a password only at creation.
            raise _forbidden(
                "A platform administrator resets no password in another organisation; its "
                "administrators do.",
                manage,
                user,
                "password reset outside the platform organisation",
            )
        user.password_hash = hasher.hash(changes["password"])
        # A password someone else set is replaced at the account's next sign-in.
        user.password_change_required = actor.kind is not ActorKind.SYSTEM
    if changes.get("active") is True and not user.active:
        _check_reactivation(
            session, actor, manage, user, user.org_id, changes.get("role", user.role)
        )
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
        raise _missing(action, ApiClient, client_pk)
    _require(actor, action, client)
    return client


def list_clients_query(actor: Actor, org: Organisation) -> Select[Any]:
    _require(actor, Permission.CLIENT_READ, org)
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
    _require(actor, Permission.CLIENT_MANAGE, org)
    _check_role_grant(session, actor, Permission.CLIENT_MANAGE, org, org, role)
    if role is Role.PLATFORM_ADMIN:
        raise ValidationFailed({"role": ["Machine clients cannot be platform administrators."]})
    _check_client_administrator(actor, Permission.CLIENT_MANAGE, org, org.id, role)
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
        "client",
        client.id,
        org.id,
        {"created": True, "role": role.value},
    )
    return ClientWithSecret(client, secret)


def _require_other_client(actor: Actor, client: ApiClient) -> None:
    """CLIENT_MANAGE on `client`, by anyone but the client itself: a machine client (an
    `org_admin` one) neither changes its own role or status nor renews its own secret, as
    no user changes their own role or status; a person administers it."""
    _require(actor, Permission.CLIENT_MANAGE, client)
    if actor.kind is ActorKind.CLIENT and actor.id == client.id:
        raise _forbidden(
            "A client cannot change itself.",
            Permission.CLIENT_MANAGE,
            client,
            "client changing itself",
        )


def update_client(
    session: Session, actor: Actor, client: ApiClient, changes: dict[str, Any]
) -> ApiClient:
    _require_other_client(actor, client)
    role = changes.get("role", client.role)
    if "role" in changes:
        _check_role_grant(
            session, actor, Permission.CLIENT_MANAGE, client, client.organisation, role
        )
        if role is Role.PLATFORM_ADMIN:
            raise ValidationFailed({"role": ["Machine clients cannot be platform administrators."]})
    if "role" in changes or (changes.get("active") is True and not client.active):
        _check_client_administrator(actor, Permission.CLIENT_MANAGE, client, client.org_id, role)
    if "role" in changes:
        client.role = role
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
        "client",
        client.id,
        client.org_id,
        _changed(changes),
    )
    return client


def rotate_client_secret(
    session: Session, actor: Actor, hasher: CredentialHasher, client: ApiClient
) -> ClientWithSecret:
    _require_other_client(actor, client)
    _check_credentials_outside_platform(
        actor, Permission.CLIENT_MANAGE, client, client.org_id, client.role
    )
    secret = _new_secret()
    client.secret_hash = hasher.hash(secret)
    # Tokens obtained with the old secret stop working at once.
    revoke_sessions_of_client(session, client.id, reason="secret_rotated", now=datetime.now(UTC))
    session.flush()
    _audit(
        session,
        actor,
        Permission.CLIENT_MANAGE,
        "client",
        client.id,
        client.org_id,
        {"secret_rotated": True},
    )
    return ClientWithSecret(client, secret)
