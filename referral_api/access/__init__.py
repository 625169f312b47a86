"""The one policy decision point. Nothing else in the code base decides access."""

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.permissions import Permission
from referral_api.access.policy import Decision, decide, require
from referral_api.access.roles import ROLE_PERMISSIONS, OrgType, Role, role_allowed_in_org

__all__ = [
    "ROLE_PERMISSIONS",
    "Actor",
    "ActorKind",
    "Decision",
    "OrgType",
    "Permission",
    "Role",
    "decide",
    "require",
    "role_allowed_in_org",
]
