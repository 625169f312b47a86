"""Consent shapes (DESIGN.md §10 request contract)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.access.categories import Category
from referral_api.access.roles import OrgType
from referral_api.consent.vocabulary import (
    Article6Basis,
    Article9Condition,
    CollectionMethod,
    ConsentState,
    EventType,
    Grantor,
    GuardianRelation,
    Purpose,
)
from referral_api.schema_fields import LANGUAGE_TAG, AwareDateTime, Boolean, Pattern

# The tag is stored in a column of 16 characters (enough for `sr-Latn-RS`, `de-CH-1996`).
_LANGUAGE = [*LANGUAGE_TAG, validate.Length(max=16)]


class LegalBasisSchema(ma.Schema):
    article6 = ma.fields.Enum(Article6Basis, by_value=True, required=True)
    article9 = ma.fields.Enum(Article9Condition, by_value=True, allow_none=True)


class ProvisionCreateSchema(ma.Schema):
    purpose = ma.fields.Enum(Purpose, by_value=True, required=True)
    recipient_org_id = ma.fields.UUID(allow_none=True)
    recipient_org_type = ma.fields.Enum(OrgType, by_value=True, allow_none=True)
    categories = ma.fields.List(
        ma.fields.Enum(Category, by_value=True),
        required=True,
        validate=validate.Length(min=1, error="Name at least one data category."),
    )
    valid_from = AwareDateTime(allow_none=True)
    valid_until = AwareDateTime(allow_none=True)

    @ma.validates_schema
    def _window(self, data: dict[str, Any], **_: Any) -> None:
        start, end = data.get("valid_from"), data.get("valid_until")
        if start and end and end <= start:
            raise ma.ValidationError("Must be after valid_from.", "valid_until")


class EvidenceSchema(ma.Schema):
    media_type = ma.fields.String(
        required=True,
        validate=validate.OneOf(
            ["application/pdf", "image/jpeg", "image/png", "audio/mpeg", "audio/ogg"]
        ),
    )
    content_base64 = ma.fields.String(
        required=True, load_only=True, validate=validate.Length(min=4)
    )


class ConsentCreateSchema(ma.Schema):
    grantor = ma.fields.Enum(Grantor, by_value=True, required=True)
    guardian_relation = ma.fields.Enum(GuardianRelation, by_value=True, allow_none=True)
    is_minor = Boolean(load_default=False)
    collection_method = ma.fields.Enum(CollectionMethod, by_value=True, required=True)
    language = ma.fields.String(required=True, validate=_LANGUAGE)
    notice_version = ma.fields.String(required=True, validate=validate.Length(min=1, max=32))
    jurisdiction = ma.fields.String(
        required=True, validate=Pattern(r"^[A-Z]{2}$", error="ISO 3166-1 alpha-2, e.g. UA.")
    )
    legal_basis = ma.fields.Nested(LegalBasisSchema, required=True)
    evidence = ma.fields.Nested(EvidenceSchema, allow_none=True)
    provisions = ma.fields.List(
        ma.fields.Nested(ProvisionCreateSchema),
        required=True,
        validate=validate.Length(min=1, max=50, error="Record at least one provision."),
    )


class ProvisionSchema(ma.Schema):
    id = ma.fields.UUID()
    purpose = ma.fields.Enum(Purpose, by_value=True)
    recipient_org_id = ma.fields.UUID(allow_none=True)
    recipient_org_type = ma.fields.Enum(OrgType, by_value=True, allow_none=True)
    categories = ma.fields.Method("_categories")
    valid_from = AwareDateTime()
    valid_until = AwareDateTime(allow_none=True)

    def _categories(self, provision: Any) -> list[str]:
        return [c for c in provision.categories.split(",") if c]


class ConsentEventSchema(ma.Schema):
    id = ma.fields.UUID()
    event_type = ma.fields.Enum(EventType, by_value=True)
    occurred_at = AwareDateTime()
    actor_id = ma.fields.UUID(allow_none=True)
    actor_org_id = ma.fields.UUID(allow_none=True)
    valid_until = AwareDateTime(allow_none=True)
    effects = ma.fields.Raw(
        allow_none=True, metadata={"description": "What the event caused (ids)"}
    )


class ConsentSchema(ma.Schema):
    """Consent metadata: codes, ids and dates (no personal field of the case)."""

    id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    state = ma.fields.Enum(ConsentState, by_value=True, allow_none=True)
    version = ma.fields.Integer(
        metadata={"description": "Changes with every event (the ETag is made from it)"}
    )
    grantor = ma.fields.Enum(Grantor, by_value=True)
    guardian_relation = ma.fields.Enum(GuardianRelation, by_value=True, allow_none=True)
    is_minor = Boolean()
    captured_by_id = ma.fields.UUID(allow_none=True)
    captured_by_org_id = ma.fields.UUID()
    collection_method = ma.fields.Enum(CollectionMethod, by_value=True)
    language = ma.fields.String()
    notice_version = ma.fields.String()
    jurisdiction = ma.fields.String()
    legal_basis = ma.fields.Dict()
    evidence_sha256 = ma.fields.String(allow_none=True)
    evidence_media_type = ma.fields.String(allow_none=True)
    created_at = AwareDateTime()
    provisions = ma.fields.List(ma.fields.Nested(ProvisionSchema))
    events = ma.fields.List(ma.fields.Nested(ConsentEventSchema))


class WithdrawSchema(ma.Schema):
    reason = ma.fields.String(
        allow_none=True,
        validate=validate.Length(max=2000),
        metadata={"description": "Optional: withdrawal needs no justification"},
    )


class ReasonRequiredSchema(ma.Schema):
    reason = ma.fields.String(required=True, validate=validate.Length(min=3, max=2000))


class RenewSchema(ma.Schema):
    valid_until = AwareDateTime(
        required=True, allow_none=True, metadata={"description": "New end of every provision"}
    )


class ConsentCheckSchema(ma.Schema):
    recipient_org_id = ma.fields.UUID(required=True)
    purpose = ma.fields.Enum(Purpose, by_value=True, required=True)
    categories = ma.fields.List(
        ma.fields.Enum(Category, by_value=True), required=True, validate=validate.Length(min=1)
    )
    at = AwareDateTime(allow_none=True)


class ConsentCheckResultSchema(ma.Schema):
    permit = Boolean()
    provisions_used = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.List(ma.fields.UUID())
    )
    denied = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    valid_until = AwareDateTime(allow_none=True)


class ReceiptSchema(ma.Schema):
    """ISO/IEC TS 27560-shaped consent receipt (see docs/consent.md)."""

    class Meta:
        unknown = ma.INCLUDE

    receipt_version = ma.fields.String()
    receipt_id = ma.fields.String()
    record_id = ma.fields.String()
    issued_at = ma.fields.String()
    language = ma.fields.String()
    jurisdiction = ma.fields.String()
    consent_timestamp = ma.fields.String()
    collection_method = ma.fields.String()
    notice_version = ma.fields.String()
    grantor = ma.fields.String()
    state = ma.fields.String(allow_none=True)
    controller = ma.fields.Dict()
    legal_basis = ma.fields.Dict()
    purposes = ma.fields.List(ma.fields.Dict())
    withdrawal = ma.fields.Dict()
