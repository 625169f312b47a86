"""How case JSON mirrors the access model: one nested object per data category.

CATEGORY_FIELDS maps each category's JSON keys to the model's encrypted attributes, so a
projection is "drop the categories this viewer may not see" (and decrypt nothing of them).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from referral_api.access.categories import Category
from referral_api.crypto.fields import decrypt_fields

C = Category

CATEGORY_FIELDS: MappingProxyType[Category, dict[str, str]] = MappingProxyType(
    {
        C.IDENTITY: {
            "given_name": "given_name",
            "family_name": "family_name",
            "aliases": "aliases",
            "date_of_birth": "date_of_birth",
            "sex": "sex",
            "nationality": "nationality",
            "languages": "languages",
            "documents": "documents",
        },
        C.CONTACT: {"phone": "phone", "email": "email", "safe_contact_notes": "safe_contact_notes"},
        C.LOCATION: {"address": "address", "is_shelter": "is_shelter"},
        C.INCIDENT: {
            "gbv_type": "gbv_type",
            "exploitation_types": "exploitation_types",
            "means_of_control": "means_of_control",
            "recruiter_relation": "recruiter_relation",
            "incident_date": "incident_date",
            "incident_place": "incident_place",
            "narrative": "narrative",
        },
        C.HEALTH: {"notes": "health_notes"},
        C.PSYCHOSOCIAL: {"notes": "psychosocial_notes"},
        C.LEGAL: {"status": "legal_status", "proceedings": "legal_proceedings", "lawyer": "lawyer"},
        C.IMMIGRATION: {
            "residence_status": "residence_status",
            "reflection_period_until": "reflection_period_until",
        },
        C.NEEDS: {"assessment": "needs_assessment", "plan": "service_plan"},
    }
)

# Fields holding lists (absent → empty list rather than null).
LIST_ATTRIBUTES = frozenset(
    {"aliases", "languages", "documents", "exploitation_types", "means_of_control"}
)

METADATA_FIELDS = (
    "id",
    "case_code",
    "case_type",
    "status",
    "status_reason",
    "risk_level",
    "org_id",
    "assignee_id",
    "nrm_stage",
    "created_at",
    "updated_at",
    "closed_at",
    "restricted",
)


def category_of_attribute(attribute: str) -> Category:
    for category, fields in CATEGORY_FIELDS.items():
        if attribute in fields.values():
            return category
    raise KeyError(attribute)


def project(case: Any, categories: frozenset[Category]) -> dict[str, Any]:
    """The case as a viewer with `categories` sees it: metadata plus those categories only.
    Categories outside the set are neither decrypted nor present."""
    view: dict[str, Any] = {name: getattr(case, name) for name in METADATA_FIELDS}
    shown = [category for category in Category if category in categories]
    values = decrypt_fields(
        case, [attr for category in shown for attr in CATEGORY_FIELDS[category].values()]
    )
    for category in shown:
        view[category.value] = {
            key: shown_value(attribute, values[attribute])
            for key, attribute in CATEGORY_FIELDS[category].items()
        }
    return view


def shown_value(attribute: str, value: Any) -> Any:
    """A field's value as a read shows it: a list never written (stored null) as []."""
    if value is None and attribute in LIST_ATTRIBUTES:
        return []
    return value
