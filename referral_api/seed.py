"""Synthetic demo data for `make run`: organisations of every type, one user per role.

Every name here is invented. The shared demo password is printed by `seed-demo` and listed
in the README; seeding is refused in production.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor
from referral_api.access.roles import ROLES_BY_ORG_TYPE, OrgType, Role
from referral_api.auth.models import Organisation, User
from referral_api.cases.demo import seed_demo_cases
from referral_api.crypto.fields import crypto_of
from referral_api.directory.demo import seed_demo_services
from referral_api.extensions import hasher

DEMO_PASSWORD = "demo-password-2026"  # noqa: S105 - published demo credential, dev only

DEMO_ORGANISATIONS: list[tuple[str, OrgType]] = [
    ("Platform Operations", OrgType.PLATFORM),
    ("Metro Police Anti-Trafficking Unit", OrgType.POLICE),
    ("Safe Haven NGO", OrgType.NGO),
    ("Women's Rights Centre", OrgType.NGO),
    ("City Social Services", OrgType.SOCIAL_SERVICES),
    ("Legal Aid Collective", OrgType.LEGAL_AID),
    ("Harbour Shelter", OrgType.SHELTER),
    ("Riverside Health Clinic", OrgType.HEALTH),
    ("Public Prosecution Office", OrgType.PROSECUTION),
    ("Labour Inspectorate", OrgType.LABOUR_INSPECTION),
]

_ROLE_ORDER = [
    Role.CASEWORKER,
    Role.SUPERVISOR,
    Role.POLICE_OFFICER,
    Role.DPO,
    Role.ORG_ADMIN,
    Role.PLATFORM_ADMIN,
]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def demo_email(role: Role, org_name: str) -> str:
    return f"{role.value.replace('_', '-')}@{_slug(org_name)}.example"


def seed_demo_data(session: Session, actor: Actor) -> list[tuple[str, str, str]]:
    """Create the demo organisations and users unless any organisation exists.

    Returns (email, role, organisation) for each user created; empty when nothing was done.
    """
    if session.scalar(select(func.count()).select_from(Organisation)):
        return []
    password_hash = hasher.hash(DEMO_PASSWORD)
    created: list[tuple[str, str, str]] = []
    for name, org_type in DEMO_ORGANISATIONS:
        org = Organisation(id=uuid.uuid4(), name=name, org_type=org_type)
        session.add(org)
        for role in _ROLE_ORDER:
            if role not in ROLES_BY_ORG_TYPE[org_type]:
                continue
            if org_type is OrgType.PLATFORM and role is Role.ORG_ADMIN:
                continue
            email = demo_email(role, name)
            session.add(
                User(
                    id=uuid.uuid4(),
                    org_id=org.id,
                    email=email,
                    display_name=f"Demo {role.value.replace('_', ' ')} ({name})",
                    role=role,
                    password_hash=password_hash,
                )
            )
            created.append((email, role.value, name))
    session.flush()
    for org in session.scalars(select(Organisation)).all():
        crypto_of(session).keys(session).ensure_org_keys(org.id)
    seed_demo_services(session)
    # Synthetic cases for the two NGOs, so search and projections can be tried at once.
    ngos = session.scalars(
        select(Organisation).where(Organisation.org_type == OrgType.NGO).order_by(Organisation.name)
    ).all()
    if ngos:
        seed_demo_cases(session, ngos[0].id)
        seed_demo_cases(session, ngos[-1].id, count=4, seed=11)
    return created
