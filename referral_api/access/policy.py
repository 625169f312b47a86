"""decide(actor, action, resource) → Decision: the single policy decision point.

Rules, in order:
1. No permission for the action → deny (403: the actor may know the route exists).
2. The resource is outside the actor's record scope → deny as not found (404), so the
   existence of another organisation's records is never confirmed.
3. Otherwise allow. Feature packages add their resource types here, not in routes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Select

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.permissions import Permission
from referral_api.access.roles import Role
from referral_api.exceptions import Forbidden, NotFound


@runtime_checkable
class OrgOwned(Protocol):
    org_id: Any


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    # When denied: answer 404 instead of 403 so existence is not confirmed.
    conceal: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.allowed


# Permissions whose resources are administered across organisations by the platform admin.
_PLATFORM_WIDE = frozenset(
    {
        Permission.ORG_READ,
        Permission.ORG_MANAGE,
        Permission.USER_READ,
        Permission.USER_MANAGE,
        Permission.CLIENT_READ,
        Permission.CLIENT_MANAGE,
    }
)


def _resource_org_id(resource: Any) -> uuid.UUID | None:
    from referral_api.auth.models import Organisation

    if isinstance(resource, Organisation):
        return resource.id
    if isinstance(resource, OrgOwned):
        return resource.org_id  # type: ignore[no-any-return]
    return None


def decide(actor: Actor, action: Permission, resource: Any = None) -> Decision:
    if actor.kind is ActorKind.SYSTEM:
        return Decision(True, "system actor")
    if not actor.can(action):
        return Decision(False, "permission not granted to role")
    if resource is None:
        return Decision(True, "permission granted")

    target_org = _resource_org_id(resource)
    if target_org is None:
        # Unknown resource shape: deny rather than guess.
        return Decision(False, "unknown resource type", conceal=True)
    if actor.role is Role.PLATFORM_ADMIN and action in _PLATFORM_WIDE:
        return Decision(True, "platform administration")
    if target_org == actor.org_id:
        return Decision(True, "own organisation")
    return Decision(False, "outside record scope", conceal=True)


def require(actor: Actor, action: Permission, resource: Any = None) -> Decision:
    """decide(), raising NotFound (concealed) or Forbidden on denial."""
    decision = decide(actor, action, resource)
    if not decision.allowed:
        if decision.conceal:
            raise NotFound()
        raise Forbidden("Your role does not allow this action.")
    return decision


def scope_to_org(
    actor: Actor, action: Permission, stmt: Select[Any], org_column: Any
) -> Select[Any]:
    """Scope a list query in SQL: rows outside the actor's organisation never load."""
    if actor.kind is ActorKind.SYSTEM:
        return stmt
    if not actor.can(action):
        raise Forbidden("Your role does not allow this action.")
    if actor.role is Role.PLATFORM_ADMIN and action in _PLATFORM_WIDE:
        return stmt
    return stmt.where(org_column == actor.org_id)
