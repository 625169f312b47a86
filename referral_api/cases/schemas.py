"""Case shapes. One nested schema per data category; the response schema is the full shape,
and what a viewer receives is decided before dumping (layout.project), never inside it."""

from __future__ import annotations

import enum
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.access.categories import Category
from referral_api.cases.codes import (
    ActivateReason,
    CloseReason,
    DocumentType,
    ExploitationType,
    GbvType,
    MeansOfControl,
    RecruiterRelation,
    ReopenReason,
    Sex,
)
from referral_api.cases.models import CaseStatus, CaseType, NrmStage, RiskLevel
from referral_api.fastdump import CompiledDumpSchema
from referral_api.pagination import PageArgsSchema
from referral_api.schema_fields import LANGUAGE_TAG, AwareDateTime, Boolean, Pattern

_TEXT = validate.Length(max=200)
_LONG_TEXT = validate.Length(max=20_000)
_COUNTRY = Pattern(r"^[A-Z]{2}$", error="Use an ISO 3166-1 alpha-2 code, e.g. UA.")
# YYYY, YYYY-MM or YYYY-MM-DD (incident dates are often only roughly known); a validator, so
# the OpenAPI document states the pattern it is checked against.
_PARTIAL_DATE = Pattern(
    r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$",
    error="Use YYYY, YYYY-MM or YYYY-MM-DD.",
)
_PARTIAL_DATE_FORM = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


class IsoDateString(ma.fields.Date):
    """A calendar date, stored as its ISO string (the encrypted JSON keeps no Python types)."""

    # Returns the ISO string, not the date marshmallow's Date returns.
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:  # type: ignore[override]
        return super()._deserialize(value, attr, data, **kwargs).isoformat()

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return value if value is None or isinstance(value, str) else value.isoformat()


class Code(ma.fields.Enum):
    """A coded value stored as its plain string inside encrypted JSON."""

    def __init__(self, enum_cls: type[enum.Enum], **kwargs: Any) -> None:
        super().__init__(enum_cls, by_value=True, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        return super()._deserialize(value, attr, data, **kwargs).value  # type: ignore[no-any-return]

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return value.value if isinstance(value, enum.Enum) else value


# The earliest time zone's date (UTC+14): a person born today anywhere is not "in the
# future" (the server's local date refused a birth today in Samoa or Kiribati for part of
# every day, and moved with the server's time zone).
_EARLIEST_ZONE = timezone(timedelta(hours=14))


def _not_future(value: str) -> None:
    if date.fromisoformat(value) > datetime.now(_EARLIEST_ZONE).date():
        raise ma.ValidationError("Must not be in the future.")


def _a_date_that_exists(value: str) -> None:
    """After _PARTIAL_DATE (which reports a wrong form): year 1 or later, a day the month has
    (1990-02-30 and 2026-02-29 were stored, for receiving systems to choke on)."""
    if not _PARTIAL_DATE_FORM.fullmatch(value):
        return
    year, month, day = ([int(part) for part in value.split("-")] + [1, 1])[:3]
    try:
        date(year, month, day)
    except ValueError:
        raise ma.ValidationError("Not a date that exists.") from None


class DocumentSchema(ma.Schema):
    type = Code(DocumentType, required=True)
    country = ma.fields.String(validate=_COUNTRY, allow_none=True)
    number = ma.fields.String(required=True, validate=validate.Length(min=1, max=64))


class IdentitySchema(ma.Schema):
    given_name = ma.fields.String(validate=_TEXT, allow_none=True)
    family_name = ma.fields.String(validate=_TEXT, allow_none=True)
    aliases = ma.fields.List(ma.fields.String(validate=_TEXT), validate=validate.Length(max=20))
    date_of_birth = IsoDateString(allow_none=True, validate=_not_future)
    sex = Code(Sex, allow_none=True)
    nationality = ma.fields.String(validate=_COUNTRY, allow_none=True)
    languages = ma.fields.List(
        ma.fields.String(validate=LANGUAGE_TAG), validate=validate.Length(max=20)
    )
    documents = ma.fields.List(ma.fields.Nested(DocumentSchema), validate=validate.Length(max=20))


class ContactSchema(ma.Schema):
    phone = ma.fields.String(validate=validate.Length(max=40), allow_none=True)
    email = ma.fields.Email(allow_none=True, validate=validate.Length(max=254))
    safe_contact_notes = ma.fields.String(validate=validate.Length(max=2000), allow_none=True)


class LocationSchema(ma.Schema):
    address = ma.fields.String(validate=validate.Length(max=500), allow_none=True)
    is_shelter = Boolean(allow_none=True)


class IncidentSchema(ma.Schema):
    gbv_type = Code(GbvType, allow_none=True)
    # At most one of each code (as many as there are): a list is stored with the case.
    exploitation_types = ma.fields.List(
        Code(ExploitationType), validate=validate.Length(max=len(ExploitationType))
    )
    means_of_control = ma.fields.List(
        Code(MeansOfControl), validate=validate.Length(max=len(MeansOfControl))
    )
    recruiter_relation = Code(RecruiterRelation, allow_none=True)
    incident_date = ma.fields.String(validate=[_PARTIAL_DATE, _a_date_that_exists], allow_none=True)
    incident_place = ma.fields.String(validate=validate.Length(max=500), allow_none=True)
    narrative = ma.fields.String(validate=_LONG_TEXT, allow_none=True)


class NotesSchema(ma.Schema):
    notes = ma.fields.String(validate=_LONG_TEXT, allow_none=True)


class LegalSchema(ma.Schema):
    status = ma.fields.String(validate=validate.Length(max=500), allow_none=True)
    proceedings = ma.fields.String(validate=_LONG_TEXT, allow_none=True)
    lawyer = ma.fields.String(validate=_TEXT, allow_none=True)


class ImmigrationSchema(ma.Schema):
    residence_status = ma.fields.String(validate=validate.Length(max=500), allow_none=True)
    reflection_period_until = IsoDateString(allow_none=True)


class NeedsSchema(ma.Schema):
    assessment = ma.fields.String(validate=_LONG_TEXT, allow_none=True)
    plan = ma.fields.String(validate=_LONG_TEXT, allow_none=True)


CATEGORY_SCHEMAS: dict[Category, type[ma.Schema]] = {
    Category.IDENTITY: IdentitySchema,
    Category.CONTACT: ContactSchema,
    Category.LOCATION: LocationSchema,
    Category.INCIDENT: IncidentSchema,
    Category.HEALTH: NotesSchema,
    Category.PSYCHOSOCIAL: NotesSchema,
    Category.LEGAL: LegalSchema,
    Category.IMMIGRATION: ImmigrationSchema,
    Category.NEEDS: NeedsSchema,
}


class _CategoryFields(ma.Schema):
    identity = ma.fields.Nested(IdentitySchema)
    contact = ma.fields.Nested(ContactSchema)
    location = ma.fields.Nested(LocationSchema)
    incident = ma.fields.Nested(IncidentSchema)
    health = ma.fields.Nested(NotesSchema)
    psychosocial = ma.fields.Nested(NotesSchema)
    legal = ma.fields.Nested(LegalSchema)
    immigration = ma.fields.Nested(ImmigrationSchema)
    needs = ma.fields.Nested(NeedsSchema)


class CaseCreateSchema(_CategoryFields):
    case_type = ma.fields.Enum(CaseType, by_value=True, required=True)
    risk_level = ma.fields.Enum(RiskLevel, by_value=True, load_default=RiskLevel.MEDIUM)
    nrm_stage = ma.fields.Enum(NrmStage, by_value=True, load_default=NrmStage.IDENTIFIED)
    assignee_id = ma.fields.UUID(allow_none=True)


class CaseUpdateSchema(_CategoryFields):
    """PATCH: metadata and any category objects; inside a category, keys sent replace those
    fields and keys omitted stay as they are. Status and assignee have their own endpoints."""

    risk_level = ma.fields.Enum(RiskLevel, by_value=True)
    nrm_stage = ma.fields.Enum(NrmStage, by_value=True)


class CaseSchema(CompiledDumpSchema, _CategoryFields):
    """A case as returned: metadata, then only the categories the caller may see. Dumped by
    its compiled form (every case response and list item; referral_api.fastdump)."""

    id = ma.fields.UUID()
    case_code = ma.fields.String(metadata={"example": "THB-7K3Q-9XMD"})
    case_type = ma.fields.Enum(CaseType, by_value=True)
    status = ma.fields.Enum(CaseStatus, by_value=True)
    status_reason = ma.fields.String(allow_none=True)
    risk_level = ma.fields.Enum(RiskLevel, by_value=True)
    org_id = ma.fields.UUID()
    assignee_id = ma.fields.UUID(allow_none=True)
    nrm_stage = ma.fields.Enum(NrmStage, by_value=True)
    created_at = AwareDateTime()
    updated_at = AwareDateTime()
    closed_at = AwareDateTime(allow_none=True)
    restricted = Boolean()


class CaseQueryArgsSchema(PageArgsSchema):
    status = ma.fields.Enum(CaseStatus, by_value=True)
    case_type = ma.fields.Enum(CaseType, by_value=True)
    risk_level = ma.fields.Enum(RiskLevel, by_value=True)
    assignee_id = ma.fields.UUID()
    updated_since = AwareDateTime()
    # Exact search through blind indexes (never logged; see docs/search.md).
    name = ma.fields.String(validate=validate.Length(min=1, max=200))
    family_name = ma.fields.String(validate=validate.Length(min=1, max=200))
    birth_year = ma.fields.Integer(validate=validate.Range(min=1900, max=2100))
    date_of_birth = ma.fields.Date()
    phone = ma.fields.String(validate=validate.Length(min=3, max=40))
    document_number = ma.fields.String(validate=validate.Length(min=1, max=64))

    @ma.validates_schema
    def _compound(self, data: dict[str, Any], **_: Any) -> None:
        if ("family_name" in data) != ("birth_year" in data):
            raise ma.ValidationError(
                "family_name and birth_year are searched together.", "family_name"
            )


SEARCH_PARAMETERS = ("name", "family_name", "date_of_birth", "phone", "document_number")


class StatusChangeSchema(ma.Schema):
    to = ma.fields.Enum(CaseStatus, by_value=True, required=True)
    reason = ma.fields.String(
        validate=validate.OneOf(
            sorted({r.value for r in (*CloseReason, *ReopenReason, *ActivateReason)})
        ),
        allow_none=True,
        metadata={"description": "A reason code (required to close or reopen)"},
    )


class AssignSchema(ma.Schema):
    assignee_id = ma.fields.UUID(required=True, allow_none=True)


class NoteCreateSchema(ma.Schema):
    category = ma.fields.Enum(Category, by_value=True, required=True)
    text = ma.fields.String(required=True, validate=validate.Length(min=1, max=20_000))


class NoteSchema(ma.Schema):
    id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    author_id = ma.fields.UUID(allow_none=True)
    category = ma.fields.Enum(Category, by_value=True)
    text = ma.fields.String()
    created_at = AwareDateTime()


class AccessLogEntrySchema(ma.Schema):
    occurred_at = AwareDateTime()
    actor_type = ma.fields.String()
    actor_id = ma.fields.UUID(allow_none=True)
    actor_role = ma.fields.String(allow_none=True)
    actor_org_id = ma.fields.UUID(allow_none=True)
    acting_officer = ma.fields.String(allow_none=True)
    action = ma.fields.String()
    categories = ma.fields.List(ma.fields.String())
    decision = ma.fields.String()
