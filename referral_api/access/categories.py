"""Data categories: what consent, referrals and roles speak about (DESIGN.md §5)."""

from __future__ import annotations

import enum
from types import MappingProxyType

from referral_api.access.roles import OrgType, Role


class Category(enum.StrEnum):
    IDENTITY = "identity"
    CONTACT = "contact"
    LOCATION = "location"
    INCIDENT = "incident"
    HEALTH = "health"
    PSYCHOSOCIAL = "psychosocial"
    LEGAL = "legal"
    IMMIGRATION = "immigration"
    NEEDS = "needs"


ALL_CATEGORIES = frozenset(Category)

# Categories of case content each role may see on its own organisation's cases. Roles not
# listed (dpo, org_admin, platform_admin) see pseudonymous metadata only.
ROLE_CATEGORIES: MappingProxyType[Role, frozenset[Category]] = MappingProxyType(
    {
        Role.CASEWORKER: ALL_CATEGORIES,
        Role.SUPERVISOR: ALL_CATEGORIES,
        Role.POLICE_OFFICER: ALL_CATEGORIES,
    }
)

# Ceilings on what an organisation type may ever receive from another organisation,
# whatever a consent says. Police never receive health or psychosocial data.
ORG_TYPE_CEILINGS: MappingProxyType[OrgType, frozenset[Category]] = MappingProxyType(
    {
        OrgType.POLICE: ALL_CATEGORIES - {Category.HEALTH, Category.PSYCHOSOCIAL},
        OrgType.PROSECUTION: ALL_CATEGORIES - {Category.HEALTH, Category.PSYCHOSOCIAL},
        OrgType.LABOUR_INSPECTION: ALL_CATEGORIES
        - {Category.HEALTH, Category.PSYCHOSOCIAL, Category.LOCATION},
    }
)


def categories_for_role(role: Role | None) -> frozenset[Category]:
    if role is None:
        return frozenset()
    return ROLE_CATEGORIES.get(role, frozenset())


def ceiling_for(org_type: OrgType | None) -> frozenset[Category]:
    if org_type is None:
        return frozenset()
    return ORG_TYPE_CEILINGS.get(org_type, ALL_CATEGORIES)
