"""Synthetic directory entries for the demo organisations. Every name, address and number
is invented: e-mail domains end in `.example`, phone numbers are in the UK's range reserved
for drama (+44 20 7946 0xxx)."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from referral_api.access.roles import OrgType
from referral_api.auth.models import Organisation
from referral_api.directory.models import Service, ServiceStatus, ServiceType
from referral_api.directory.service import normalise_professional_contact

# (service type, name, description, languages, eligibility, area served, contact: "email" or
# a phone number, accepting referrals)
_Template = tuple[ServiceType, str, str, list[str], str | None, str, str, bool]

DEMO_SERVICES: dict[OrgType, list[_Template]] = {
    OrgType.NGO: [
        (
            ServiceType.PSYCHOSOCIAL_SUPPORT,
            "Trauma-informed counselling",
            "Individual and group counselling for survivors of trafficking and violence.",
            ["uk", "ru", "en"],
            "Adults and accompanied minors; no police report needed.",
            "Kyiv; Kyiv oblast",
            "email",
            True,
        ),
        (
            ServiceType.SHELTER,
            "Emergency safe accommodation",
            "Short-stay safe accommodation with 24-hour staff. Location shared only on "
            "acceptance of a referral.",
            ["uk", "ru", "en", "ro"],
            "Women and their children.",
            "Kyiv oblast; Zhytomyr oblast",
            "+44 20 7946 0101",
            True,
        ),
        (
            ServiceType.INTERPRETATION,
            "Community interpreters",
            "Interpreting for appointments, interviews and court hearings.",
            ["ar", "fa", "vi", "ti", "en"],
            None,
            "Nationwide (remote)",
            "email",
            False,
        ),
    ],
    OrgType.SOCIAL_SERVICES: [
        (
            ServiceType.SOCIAL_ASSISTANCE,
            "Benefits and housing support",
            "Access to benefits, documents and longer-term housing.",
            ["uk", "en"],
            "Residents and people in the reflection period.",
            "Kyiv",
            "email",
            True,
        ),
        (
            ServiceType.RETURN_ASSISTANCE,
            "Safe return and reintegration",
            "Planning a safe, voluntary return home, with partners in the country of origin.",
            ["uk", "en", "ro", "pt-BR"],
            "Only at the person's request.",
            "Nationwide",
            "+44 20 7946 0102",
            True,
        ),
    ],
    OrgType.POLICE: [
        (
            ServiceType.LAW_ENFORCEMENT,
            "Anti-trafficking unit liaison",
            "Contact point for reporting, protection measures and witness support.",
            ["uk", "en"],
            None,
            "Kyiv; Kyiv oblast",
            "+44 20 7946 0103",
            True,
        ),
    ],
    OrgType.LEGAL_AID: [
        (
            ServiceType.LEGAL_ASSISTANCE,
            "Free legal advice and representation",
            "Residence status, compensation claims and representation in criminal proceedings.",
            ["uk", "ru", "en", "fr"],
            "Presumed and identified victims of trafficking and GBV.",
            "Kyiv; Lviv; Odesa",
            "email",
            True,
        ),
    ],
    OrgType.SHELTER: [
        (
            ServiceType.SHELTER,
            "Medium-term supported housing",
            "Supported housing for up to six months with a key worker.",
            ["uk", "en"],
            "Adults after an emergency stay.",
            "Lviv; Lviv oblast",
            "email",
            True,
        ),
    ],
    OrgType.HEALTH: [
        (
            ServiceType.HEALTH,
            "Survivor health clinic",
            "Medical examination, sexual and reproductive health care, referrals to specialists.",
            ["uk", "ru", "en", "ar"],
            None,
            "Kyiv",
            "+44 20 7946 0104",
            True,
        ),
        (
            ServiceType.PSYCHOSOCIAL_SUPPORT,
            "Psychiatric assessment",
            "Assessment and treatment planning by a psychiatrist.",
            ["uk", "en"],
            "By referral only.",
            "Kyiv",
            "email",
            True,
        ),
    ],
    OrgType.PROSECUTION: [
        (
            ServiceType.LAW_ENFORCEMENT,
            "Victim and witness liaison",
            "Information on proceedings and protective measures for witnesses.",
            ["uk", "en"],
            None,
            "Nationwide",
            "email",
            True,
        ),
    ],
}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def seed_demo_services(session: Session) -> list[Service]:
    """A few services for each demo organisation, unless the directory already has some."""
    if session.scalar(select(func.count()).select_from(Service)):
        return []
    created: list[Service] = []
    organisations = session.scalars(select(Organisation).order_by(Organisation.name)).all()
    for org in organisations:
        for index, template in enumerate(DEMO_SERVICES.get(org.org_type, [])):
            service_type, name, description, languages, eligibility, area, contact, open_ = template
            if contact == "email":
                contact = f"referrals-{index + 1}@{_slug(org.name)}.example"
            service = Service(
                id=uuid.uuid4(),
                org_id=org.id,
                name=name,
                description=description,
                service_type=service_type,
                eligibility_notes=eligibility,
                area_served=area,
                professional_contact=normalise_professional_contact(contact),
                accepting_referrals=open_,
                status=ServiceStatus.ACTIVE,
            )
            service.languages = languages
            session.add(service)
            created.append(service)
    session.flush()
    return created
