"""Render the role → permission table as Markdown (docs/roles.md is generated from this)."""

from __future__ import annotations

from referral_api.access.permissions import Permission
from referral_api.access.policy import PLATFORM_ORGANISATION_ONLY
from referral_api.access.roles import ROLE_PERMISSIONS, ROLES_BY_ORG_TYPE, OrgType, Role


def render_role_table() -> str:
    roles = list(Role)
    lines = [
        "# Roles and permissions",
        "",
        "<!-- Generated from referral_api/access/roles.py by `make docs`; do not edit. -->",
        "",
        "Deny by default: a permission not marked here is refused (403), and a record outside",
        "the actor's organisation answers 404. Record scope and data-category projection are",
        "applied on top of this table by `referral_api.access.policy.decide`.",
        "",
        "| permission | " + " | ".join(role.value for role in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for permission in Permission:
        marks = ["✔" if permission in ROLE_PERMISSIONS[role] else "" for role in roles]
        lines.append(f"| `{permission.value}` | " + " | ".join(marks) + " |")
    only = ", ".join(f"`{p.value}`" for p in sorted(PLATFORM_ORGANISATION_ONLY))
    lines += [
        "",
        f"{only}: only for accounts of the platform organisation (its records span every",
        "organisation), whatever the role's mark above.",
    ]
    lines += [
        "",
        "## Roles available per organisation type",
        "",
        "| organisation type | roles |",
        "|---|---|",
    ]
    for org_type in OrgType:
        allowed = [role.value for role in roles if role in ROLES_BY_ORG_TYPE[org_type]]
        lines.append(f"| `{org_type.value}` | {', '.join(allowed)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_role_table(), end="")
