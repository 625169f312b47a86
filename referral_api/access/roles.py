"""Organisation types, roles, and the role → permission table (rendered into docs/roles.md)."""

from __future__ import annotations

import enum
from types import MappingProxyType

from referral_api.access.permissions import Permission as P


class OrgType(enum.StrEnum):
    NGO = "ngo"
    SOCIAL_SERVICES = "social_services"
    POLICE = "police"
    LEGAL_AID = "legal_aid"
    HEALTH = "health"
    SHELTER = "shelter"
    PROSECUTION = "prosecution"
    LABOUR_INSPECTION = "labour_inspection"
    PLATFORM = "platform"


class Role(enum.StrEnum):
    CASEWORKER = "caseworker"
    SUPERVISOR = "supervisor"
    POLICE_OFFICER = "police_officer"
    DPO = "dpo"
    ORG_ADMIN = "org_admin"
    PLATFORM_ADMIN = "platform_admin"


_CASE_WORK = frozenset(
    {
        P.SELF_READ,
        P.CASE_CREATE,
        P.CASE_VIEW,
        P.CASE_READ,
        P.CASE_UPDATE,
        P.CASE_NOTE,
        P.CASE_ACCESS_LOG,
        P.CONSENT_READ,
        P.CONSENT_RECORD,
        P.CONSENT_WITHDRAW,
        P.REFERRAL_READ,
        P.REFERRAL_CREATE,
        P.REFERRAL_TRANSITION,
        P.DIRECTORY_READ,
    }
)

# Deny by default: a role absent here, or a permission absent from its set, is refused.
ROLE_PERMISSIONS: MappingProxyType[Role, frozenset[P]] = MappingProxyType(
    {
        Role.CASEWORKER: _CASE_WORK,
        Role.SUPERVISOR: _CASE_WORK
        | {
            P.CASE_ASSIGN,
            P.CASE_CLOSE,
            P.CONSENT_REVOKE,
            P.CONSENT_ENTERED_IN_ERROR,
            P.REFERRAL_APPROVE_OVERRIDE,
            P.CASE_EXPORT,
            P.CASE_ERASURE_REQUEST,
            P.CASE_LEGAL_HOLD,
            P.CASE_RESTRICT,
        },
        Role.POLICE_OFFICER: _CASE_WORK | {P.INTAKE_CREATE},
        Role.DPO: frozenset(
            {
                P.SELF_READ,
                P.CASE_VIEW,
                P.CASE_ACCESS_LOG,
                P.ERASURE_APPROVE,
                P.CASE_LEGAL_HOLD,
                P.CONSENT_READ,
                P.REFERRAL_READ,
                P.AUDIT_READ,
                P.AUDIT_VERIFY,
                P.DPO_REPORTS,
                P.DIRECTORY_READ,
            }
        ),
        Role.ORG_ADMIN: frozenset(
            {
                P.SELF_READ,
                P.CASE_VIEW,
                P.ORG_READ,
                P.USER_READ,
                P.USER_MANAGE,
                P.CLIENT_READ,
                P.CLIENT_MANAGE,
                P.DIRECTORY_READ,
                P.DIRECTORY_MANAGE,
            }
        ),
        Role.PLATFORM_ADMIN: frozenset(
            {
                P.SELF_READ,
                P.ORG_READ,
                P.ORG_MANAGE,
                P.USER_READ,
                P.USER_MANAGE,
                P.CLIENT_READ,
                P.CLIENT_MANAGE,
                P.DIRECTORY_READ,
                P.AUDIT_VERIFY,
                P.KEYS_MANAGE,
            }
        ),
    }
)

# Which roles an organisation of a given type may hold. Police officers only in police
# organisations; platform administrators only in the platform organisation; nobody
# handles cases inside the platform organisation.
_CASE_ROLES = frozenset({Role.CASEWORKER, Role.SUPERVISOR, Role.DPO, Role.ORG_ADMIN})
ROLES_BY_ORG_TYPE: MappingProxyType[OrgType, frozenset[Role]] = MappingProxyType(
    {
        OrgType.PLATFORM: frozenset({Role.PLATFORM_ADMIN, Role.DPO, Role.ORG_ADMIN}),
        OrgType.POLICE: _CASE_ROLES | {Role.POLICE_OFFICER},
        **{
            org_type: _CASE_ROLES
            for org_type in OrgType
            if org_type not in (OrgType.PLATFORM, OrgType.POLICE)
        },
    }
)


def role_allowed_in_org(role: Role, org_type: OrgType) -> bool:
    return role in ROLES_BY_ORG_TYPE.get(org_type, frozenset())


def permissions_for(role: Role | None) -> frozenset[P]:
    if role is None:
        return frozenset()
    return ROLE_PERMISSIONS.get(role, frozenset())
