"""Directory services as the API reads and writes them, and their HSDS 3.0 publication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.directory.models import ServiceStatus, ServiceType
from referral_api.directory.service import (
    LANGUAGE_TAG_PATTERN,
    MAX_LANGUAGE_TAG,
    MAX_LANGUAGES,
    normalise_language_tag,
    normalise_professional_contact,
)
from referral_api.pagination import MAX_PAGE_SIZE, PageArgsSchema
from referral_api.schema_fields import AwareDateTime, Boolean, no_coordinates, not_blank


def _text(max_length: int) -> list[Callable[[Any], Any]]:
    return [validate.Length(min=1, max=max_length), not_blank, no_coordinates]


class LanguageTag(ma.fields.String):
    """A BCP 47 language tag, loaded in canonical case (`pt-br` → `pt-BR`)."""

    def __init__(self, **kwargs: Any) -> None:
        metadata = {
            "pattern": LANGUAGE_TAG_PATTERN,
            "maxLength": MAX_LANGUAGE_TAG,
            **kwargs.pop("metadata", {}),
        }
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalise_language_tag(text)
        except ValueError as error:
            raise ma.ValidationError(str(error)) from None


class ProfessionalContact(ma.fields.String):
    """An intake e-mail address or an international phone number (stored as E.164)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalise_professional_contact(text)
        except ValueError as error:
            raise ma.ValidationError(str(error)) from None


_LANGUAGE_COUNT = validate.Length(min=1, max=MAX_LANGUAGES)
_LANGUAGES_DOC = {"description": "BCP 47 language tags the service is delivered in"}
_AREA_DOC = {
    "description": "Regions served, separated by `;` (e.g. `Kyiv oblast; Lviv`); never an "
    "address, and map coordinates are refused"
}
_CONTACT_DOC = {
    "description": "Intake channel for professionals: an e-mail address (ASCII) or an "
    "international phone number. Never a street address."
}


class ServiceSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    org_id = ma.fields.UUID(dump_only=True)
    org_name = ma.fields.String(dump_only=True, attribute="organisation.name")
    name = ma.fields.String()
    description = ma.fields.String()
    service_type = ma.fields.Enum(ServiceType, by_value=True)
    languages = ma.fields.List(ma.fields.String(), metadata=_LANGUAGES_DOC)
    eligibility_notes = ma.fields.String(allow_none=True)
    area_served = ma.fields.String(metadata=_AREA_DOC)
    professional_contact = ma.fields.String(metadata=_CONTACT_DOC)
    accepting_referrals = Boolean()
    status = ma.fields.Enum(ServiceStatus, by_value=True)
    created_at = AwareDateTime(dump_only=True)
    updated_at = AwareDateTime(dump_only=True)


class ServiceCreateSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=_text(200))
    description = ma.fields.String(required=True, validate=_text(4000))
    service_type = ma.fields.Enum(ServiceType, by_value=True, required=True)
    languages = ma.fields.List(
        LanguageTag(), required=True, validate=_LANGUAGE_COUNT, metadata=_LANGUAGES_DOC
    )
    eligibility_notes = ma.fields.String(
        allow_none=True, validate=[validate.Length(max=4000), no_coordinates]
    )
    area_served = ma.fields.String(required=True, validate=_text(500), metadata=_AREA_DOC)
    professional_contact = ProfessionalContact(required=True, metadata=_CONTACT_DOC)
    accepting_referrals = Boolean()
    status = ma.fields.Enum(ServiceStatus, by_value=True)


class ServiceUpdateSchema(ma.Schema):
    """Every field optional; the organisation and the id cannot be changed."""

    name = ma.fields.String(validate=_text(200))
    description = ma.fields.String(validate=_text(4000))
    service_type = ma.fields.Enum(ServiceType, by_value=True)
    languages = ma.fields.List(LanguageTag(), validate=_LANGUAGE_COUNT, metadata=_LANGUAGES_DOC)
    eligibility_notes = ma.fields.String(
        allow_none=True, validate=[validate.Length(max=4000), no_coordinates]
    )
    area_served = ma.fields.String(validate=_text(500), metadata=_AREA_DOC)
    professional_contact = ProfessionalContact(metadata=_CONTACT_DOC)
    accepting_referrals = Boolean()
    status = ma.fields.Enum(ServiceStatus, by_value=True)


class ServiceQueryArgsSchema(PageArgsSchema):
    service_type = ma.fields.Enum(ServiceType, by_value=True)
    language = LanguageTag(
        metadata={"description": "BCP 47 tag; `pt` also finds `pt-BR`, `pt-BR` also finds `pt`"}
    )
    area = ma.fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "Case-insensitive part of the area served"},
    )
    accepting_referrals = ma.fields.Boolean()  # a query string: text
    org_id = ma.fields.UUID()
    status = ma.fields.Enum(
        ServiceStatus,
        by_value=True,
        metadata={"description": "Default: active services of active organisations"},
    )


# ---- Open Referral HSDS 3.0 ---------------------------------------------------------------
# Field names are HSDS's. These schemas document the publication and act as its allow-list:
# only declared fields leave; absent values are omitted, never null.


def _uuid(**kw: Any) -> ma.fields.String:
    return ma.fields.String(metadata={"format": "uuid", **kw.pop("metadata", {})}, **kw)


# Past this page the offset (page times per_page) would overflow the database's 64-bit integers.
MAX_PAGE_NUMBER = 1_000_000


class HsdsPageArgsSchema(ma.Schema):
    page = ma.fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE_NUMBER))
    per_page = ma.fields.Integer(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE_SIZE))


class HsdsServiceQueryArgsSchema(HsdsPageArgsSchema):
    organization_id = ma.fields.UUID()
    modified_after = AwareDateTime(
        metadata={"description": "Only services changed at or after this time"}
    )


class HsdsPageSchema(ma.Schema):
    total_items = ma.fields.Integer()
    total_pages = ma.fields.Integer()
    page_number = ma.fields.Integer()
    size = ma.fields.Integer(metadata={"description": "Number of entities in this page"})
    first_page = Boolean()
    last_page = Boolean()
    empty = Boolean()


class HsdsOrganizationSchema(ma.Schema):
    id = _uuid()
    name = ma.fields.String()
    description = ma.fields.String()


class HsdsServiceListItemSchema(ma.Schema):
    id = _uuid()
    organization_id = _uuid()
    name = ma.fields.String()
    description = ma.fields.String()
    email = ma.fields.String(metadata={"format": "email"})
    status = ma.fields.String(metadata={"enum": ["active", "inactive"]})
    application_process = ma.fields.String()
    eligibility_description = ma.fields.String()
    alert = ma.fields.String()
    last_modified = ma.fields.String(metadata={"format": "date-time"})


class HsdsLanguageSchema(ma.Schema):
    id = _uuid()
    service_id = _uuid()
    name = ma.fields.String()
    code = ma.fields.String(metadata={"description": "ISO 639-1 or ISO 639-3 code"})
    note = ma.fields.String()


class HsdsServiceAreaSchema(ma.Schema):
    id = _uuid()
    service_id = _uuid()
    name = ma.fields.String()


class HsdsContactSchema(ma.Schema):
    id = _uuid()
    service_id = _uuid()
    name = ma.fields.String()
    email = ma.fields.String(metadata={"format": "email"})


class HsdsPhoneSchema(ma.Schema):
    id = _uuid()
    service_id = _uuid()
    number = ma.fields.String()
    type = ma.fields.String()
    description = ma.fields.String()


class HsdsTaxonomyTermSchema(ma.Schema):
    id = _uuid()
    code = ma.fields.String()
    name = ma.fields.String()
    description = ma.fields.String()
    taxonomy = ma.fields.String()
    taxonomy_id = _uuid()
    language = ma.fields.String()


class HsdsAttributeSchema(ma.Schema):
    id = _uuid()
    link_id = _uuid()
    link_entity = ma.fields.String()
    taxonomy_term_id = _uuid()
    value = ma.fields.String()
    taxonomy_term = ma.fields.Nested(HsdsTaxonomyTermSchema)


class HsdsServiceSchema(HsdsServiceListItemSchema):
    organization = ma.fields.Nested(HsdsOrganizationSchema)
    languages = ma.fields.List(ma.fields.Nested(HsdsLanguageSchema))
    service_areas = ma.fields.List(ma.fields.Nested(HsdsServiceAreaSchema))
    contacts = ma.fields.List(ma.fields.Nested(HsdsContactSchema))
    phones = ma.fields.List(ma.fields.Nested(HsdsPhoneSchema))
    attributes = ma.fields.List(ma.fields.Nested(HsdsAttributeSchema))


class HsdsServicePageSchema(HsdsPageSchema):
    contents = ma.fields.List(ma.fields.Nested(HsdsServiceListItemSchema))


class HsdsOrganizationPageSchema(HsdsPageSchema):
    contents = ma.fields.List(ma.fields.Nested(HsdsOrganizationSchema))
