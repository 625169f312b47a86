"""Who is acting: reloaded from the database on every request, never trusted from a token."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from referral_api.access.permissions import Permission
from referral_api.access.roles import OrgType, Role, permissions_for


class ActorKind(enum.StrEnum):
    USER = "user"
    CLIENT = "client"
    SYSTEM = "system"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Actor:
    kind: ActorKind
    id: uuid.UUID | None
    org_id: uuid.UUID | None
    org_type: OrgType | None
    role: Role | None
    session_id: uuid.UUID | None = None
    acting_officer: str | None = None
    permissions: frozenset[Permission] = field(default=frozenset())
    # The HTTP request this actor acts in (audit rows name it); None for jobs.
    request_id: str | None = None

    @classmethod
    def for_principal(
        cls,
        kind: ActorKind,
        id: uuid.UUID,
        org_id: uuid.UUID,
        org_type: OrgType,
        role: Role,
        session_id: uuid.UUID | None = None,
    ) -> Actor:
        return cls(
            kind=kind,
            id=id,
            org_id=org_id,
            org_type=org_type,
            role=role,
            session_id=session_id,
            permissions=permissions_for(role),
        )

    @classmethod
    def system(cls) -> Actor:
        """Jobs and CLI commands run under an explicit system actor, never an anonymous one."""
        return cls(kind=ActorKind.SYSTEM, id=None, org_id=None, org_type=None, role=None)

    @classmethod
    def anonymous(cls) -> Actor:
        return cls(kind=ActorKind.ANONYMOUS, id=None, org_id=None, org_type=None, role=None)

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def is_platform(self) -> bool:
        return self.org_type is OrgType.PLATFORM
