"""The directory in Open Referral HSDS 3.0 form (read-only), for other referral tools.

Mapping (our model → HSDS):
- service: id, organization_id, name, description, status (active/inactive; a service of a
  deactivated organisation is published as inactive), eligibility_notes →
  eligibility_description, updated_at → last_modified, accepting_referrals = false → alert,
  an e-mail professional contact → email.
- languages: one language object per BCP 47 tag; `code` is the primary subtag (an ISO 639-1
  or 639-3 code, as HSDS asks), the full tag goes in `note` when it says more.
- area_served: one service_area per ";"-separated region (free-text `name`).
- professional_contact: an e-mail address → a contact with that email; a phone number → a
  phone of type "voice". Both are the professionals' intake desk, never a location.
- service_type: an attribute linking the service to a term of this platform's service-type
  taxonomy.

Child records have no rows of their own, so their ids are uuid5 of the parent service's id
and a stable key: the same record keeps the same id from one export to the next.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from referral_api.access.roles import OrgType
from referral_api.auth.models import Organisation
from referral_api.directory.models import Service, ServiceStatus, ServiceType
from referral_api.directory.service import is_email_contact

# Fixed namespace for the platform's own vocabularies (taxonomy and term ids).
VOCABULARY_NAMESPACE = uuid.UUID("6f1b7c2e-3d54-4c0a-9a8e-2b4f0d1e7a93")
SERVICE_TYPE_TAXONOMY_ID = uuid.uuid5(VOCABULARY_NAMESPACE, "taxonomy:service_type")
SERVICE_TYPE_TAXONOMY = "referral_api service types"

APPLICATION_PROCESS = (
    "Referral by a professional through the national referral mechanism platform, with the "
    "person's informed consent."
)
NOT_ACCEPTING_ALERT = "Not accepting new referrals at the moment."

SERVICE_TYPE_LABELS: dict[ServiceType, tuple[str, str]] = {
    ServiceType.LEGAL_ASSISTANCE: ("Legal assistance", "Legal advice and representation."),
    ServiceType.PSYCHOSOCIAL_SUPPORT: (
        "Psychosocial support",
        "Counselling and psychosocial support.",
    ),
    ServiceType.SHELTER: ("Shelter", "Safe accommodation."),
    ServiceType.HEALTH: ("Health", "Medical care."),
    ServiceType.SOCIAL_ASSISTANCE: ("Social assistance", "Social services and benefits."),
    ServiceType.LAW_ENFORCEMENT: ("Law enforcement", "Police and prosecution liaison."),
    ServiceType.RETURN_ASSISTANCE: ("Return assistance", "Safe and voluntary return."),
    ServiceType.INTERPRETATION: ("Interpretation", "Interpreting and translation."),
}

ORG_TYPE_LABELS: dict[OrgType, str] = {
    OrgType.NGO: "Non-governmental organisation",
    OrgType.SOCIAL_SERVICES: "Social services",
    OrgType.POLICE: "Police",
    OrgType.LEGAL_AID: "Legal aid provider",
    OrgType.HEALTH: "Health care provider",
    OrgType.SHELTER: "Shelter provider",
    OrgType.PROSECUTION: "Prosecution service",
    OrgType.LABOUR_INSPECTION: "Labour inspectorate",
    OrgType.PLATFORM: "Platform operator",
}

# English names of the languages most often needed in victim assistance in Europe; a tag
# not listed is published with its code only (HSDS `name` is optional).
LANGUAGE_NAMES: dict[str, str] = {
    "am": "Amharic",
    "ar": "Arabic",
    "be": "Belarusian",
    "bg": "Bulgarian",
    "bn": "Bengali",
    "bs": "Bosnian",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "ha": "Hausa",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "hu": "Hungarian",
    "hy": "Armenian",
    "ig": "Igbo",
    "it": "Italian",
    "ka": "Georgian",
    "kk": "Kazakh",
    "ku": "Kurdish",
    "ky": "Kyrgyz",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "mk": "Macedonian",
    "mn": "Mongolian",
    "nl": "Dutch",
    "no": "Norwegian",
    "pa": "Punjabi",
    "pl": "Polish",
    "ps": "Pashto",
    "pt": "Portuguese",
    "ro": "Romanian",
    "rom": "Romany",
    "ru": "Russian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "so": "Somali",
    "sq": "Albanian",
    "sr": "Serbian",
    "sv": "Swedish",
    "sw": "Swahili",
    "ta": "Tamil",
    "th": "Thai",
    "ti": "Tigrinya",
    "tl": "Tagalog",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "uz": "Uzbek",
    "vi": "Vietnamese",
    "yo": "Yoruba",
    "zh": "Chinese",
}


def child_id(parent: uuid.UUID, kind: str, key: str) -> str:
    return str(uuid.uuid5(parent, f"{kind}:{key}"))


def service_type_term_id(service_type: ServiceType) -> uuid.UUID:
    return uuid.uuid5(VOCABULARY_NAMESPACE, f"service_type:{service_type.value}")


def hsds_status(service: Service) -> str:
    if service.status is ServiceStatus.ACTIVE and service.organisation.active:
        return "active"
    return "inactive"


def _without_empty(document: dict[str, Any]) -> dict[str, Any]:
    # HSDS types optional fields as strings: an absent value is left out, never null.
    return {key: value for key, value in document.items() if value not in (None, "")}


def service_summary(service: Service) -> dict[str, Any]:
    """The one-to-one fields of a service (an item of the paginated list)."""
    contact = service.professional_contact
    return _without_empty(
        {
            "id": str(service.id),
            "organization_id": str(service.org_id),
            "name": service.name,
            "description": service.description,
            "email": contact if is_email_contact(contact) else None,
            "status": hsds_status(service),
            "application_process": APPLICATION_PROCESS,
            "eligibility_description": service.eligibility_notes,
            "alert": None if service.accepting_referrals else NOT_ACCEPTING_ALERT,
            "last_modified": service.updated_at.isoformat(timespec="milliseconds"),
        }
    )


def organization_summary(org: Organisation) -> dict[str, Any]:
    return {
        "id": str(org.id),
        "name": org.name,
        "description": (
            f"{ORG_TYPE_LABELS[org.org_type]} taking part in the national referral mechanism."
        ),
    }


def _language(service: Service, tag: str) -> dict[str, Any]:
    code = tag.split("-", 1)[0]
    return _without_empty(
        {
            "id": child_id(service.id, "language", tag),
            "service_id": str(service.id),
            "name": LANGUAGE_NAMES.get(code),
            "code": code,
            "note": f"Language tag (BCP 47): {tag}" if tag != code else None,
        }
    )


def _service_area(service: Service, area: str) -> dict[str, Any]:
    return {
        "id": child_id(service.id, "service_area", area.casefold()),
        "service_id": str(service.id),
        "name": area,
    }


def _service_type_attribute(service: Service) -> dict[str, Any]:
    term_id = str(service_type_term_id(service.service_type))
    name, description = SERVICE_TYPE_LABELS[service.service_type]
    return {
        "id": child_id(service.id, "attribute", "service_type"),
        "link_id": str(service.id),
        "link_entity": "service",
        "taxonomy_term_id": term_id,
        "value": service.service_type.value,
        "taxonomy_term": {
            "id": term_id,
            "code": service.service_type.value,
            "name": name,
            "description": description,
            "taxonomy": SERVICE_TYPE_TAXONOMY,
            "taxonomy_id": str(SERVICE_TYPE_TAXONOMY_ID),
            "language": "en",
        },
    }


def _contact_channels(service: Service) -> dict[str, list[dict[str, Any]]]:
    contact = service.professional_contact
    if is_email_contact(contact):
        return {
            "contacts": [
                {
                    "id": child_id(service.id, "contact", "professional_intake"),
                    "service_id": str(service.id),
                    "name": "Referral intake for professionals",
                    "email": contact,
                }
            ],
            "phones": [],
        }
    return {
        "contacts": [],
        "phones": [
            {
                "id": child_id(service.id, "phone", "professional_intake"),
                "service_id": str(service.id),
                "number": contact,
                "type": "voice",
                "description": "Referral intake for professionals",
            }
        ],
    }


def _distinct(areas: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for area in areas:
        seen.setdefault(area.casefold(), area)
    return list(seen.values())


def service_full(service: Service) -> dict[str, Any]:
    """A fully nested service, as HSDS `GET /services/{id}` returns it."""
    return {
        **service_summary(service),
        "organization": organization_summary(service.organisation),
        "languages": [_language(service, tag) for tag in service.languages],
        "service_areas": [_service_area(service, area) for area in _distinct(service.areas)],
        **_contact_channels(service),
        "attributes": [_service_type_attribute(service)],
    }


def page_of(
    contents: list[dict[str, Any]], *, total: int, page: int, per_page: int
) -> dict[str, Any]:
    """The HSDS API's paginated list shape (page numbers start at 1)."""
    total_pages = math.ceil(total / per_page)
    return {
        "total_items": total,
        "total_pages": total_pages,
        "page_number": page,
        "size": len(contents),
        "first_page": page == 1,
        "last_page": page >= total_pages,
        "empty": not contents,
        "contents": contents,
    }
