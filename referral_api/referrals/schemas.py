"""Referral shapes (DESIGN.md §8 and §10)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.access.categories import Category
from referral_api.cases.schemas import CaseCreateSchema
from referral_api.consent.schemas import ConsentCreateSchema
from referral_api.consent.vocabulary import Purpose
from referral_api.pagination import PageArgsSchema
from referral_api.referrals.vocabulary import Outcome, OverrideReason, ReferralStatus, Urgency
from referral_api.schema_fields import AwareDateTime, Boolean, Pattern


class ReferralCreateSchema(ma.Schema):
    to_org_id = ma.fields.UUID(required=True)
    service_id = ma.fields.UUID(allow_none=True)
    purpose = ma.fields.Enum(Purpose, by_value=True, required=True)
    categories = ma.fields.List(
        ma.fields.Enum(Category, by_value=True), required=True, validate=validate.Length(min=1)
    )
    urgency = ma.fields.Enum(Urgency, by_value=True, load_default=Urgency.NORMAL)
    message = ma.fields.String(allow_none=True, validate=validate.Length(max=5000))
    override_reason = ma.fields.Enum(
        OverrideReason,
        by_value=True,
        allow_none=True,
        metadata={"description": "Share without covering consent: needs a supervisor's approval"},
    )
    override_note = ma.fields.String(allow_none=True, validate=validate.Length(max=2000))
    send = Boolean(load_default=False, metadata={"description": "Send at once (draft → requested)"})

    @ma.validates_schema
    def _override(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("override_note") and not data.get("override_reason"):
            raise ma.ValidationError(
                "An override note needs an override reason.", "override_reason"
            )


class ReferralSchema(ma.Schema):
    id = ma.fields.UUID()
    case_id = ma.fields.UUID(metadata={"description": "Sender only"})
    receiver_case_id = ma.fields.UUID(allow_none=True)
    from_org_id = ma.fields.UUID()
    to_org_id = ma.fields.UUID()
    service_id = ma.fields.UUID(allow_none=True)
    purpose = ma.fields.Enum(Purpose, by_value=True)
    categories = ma.fields.List(ma.fields.String())
    urgency = ma.fields.Enum(Urgency, by_value=True)
    status = ma.fields.Enum(ReferralStatus, by_value=True)
    status_reason = ma.fields.String(allow_none=True)
    business_status = ma.fields.String(allow_none=True)
    outcome = ma.fields.Enum(Outcome, by_value=True, allow_none=True)
    message = ma.fields.String(allow_none=True)
    override_reason = ma.fields.Enum(OverrideReason, by_value=True, allow_none=True)
    override_approved_at = AwareDateTime(allow_none=True)
    created_at = AwareDateTime()
    updated_at = AwareDateTime()
    sent_at = AwareDateTime(allow_none=True)
    version = ma.fields.Integer()


class ReferralQueryArgsSchema(PageArgsSchema):
    box = ma.fields.String(validate=validate.OneOf(["incoming", "outgoing"]))
    status = ma.fields.Enum(ReferralStatus, by_value=True)
    updated_since = AwareDateTime()
    case_id = ma.fields.UUID(metadata={"description": "Outgoing referrals of one of your cases"})


class TransitionSchema(ma.Schema):
    to = ma.fields.Enum(ReferralStatus, by_value=True, required=True)
    reason = ma.fields.String(allow_none=True, validate=validate.Length(max=48))
    note = ma.fields.String(allow_none=True, validate=validate.Length(max=2000))
    # The receiver's own workflow label (FHIR Task.businessStatus): stored unencrypted and
    # shown to the sender, so a code, never free text (which may name a person or a place).
    business_status = ma.fields.String(
        allow_none=True,
        validate=Pattern(
            r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
            error="Use a short code (letters, digits, _ . : -, at most 64, no spaces); "
            "write free text in the note.",
        ),
        metadata={"description": "A code of the receiver's own workflow, e.g. `intake-2`"},
    )
    outcome = ma.fields.Enum(Outcome, by_value=True, allow_none=True)


class PacketSchema(ma.Schema):
    referral_id = ma.fields.UUID()
    purpose = ma.fields.Enum(Purpose, by_value=True)
    categories = ma.fields.List(ma.fields.String())
    valid_until = AwareDateTime(allow_none=True)
    data = ma.fields.Dict(
        metadata={"description": "The shared categories only, shaped like a case's categories"}
    )


class MessageCreateSchema(ma.Schema):
    body = ma.fields.String(required=True, validate=validate.Length(min=1, max=5000))


class MessageSchema(ma.Schema):
    id = ma.fields.UUID()
    referral_id = ma.fields.UUID()
    author_id = ma.fields.UUID(allow_none=True)
    author_org_id = ma.fields.UUID()
    body = ma.fields.String()
    created_at = AwareDateTime()


class NotificationSchema(ma.Schema):
    id = ma.fields.UUID()
    referral_id = ma.fields.UUID()
    event = ma.fields.String()
    status = ma.fields.String(allow_none=True)
    created_at = AwareDateTime()
    read_at = AwareDateTime(allow_none=True)


class NotificationQueryArgsSchema(PageArgsSchema):
    unread = ma.fields.Boolean(load_default=True)
    limit = ma.fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class IntakeReferralSchema(ReferralCreateSchema):
    # An intake is sent at once on the consent it records: no draft for a supervisor to
    # approve an override on. One asked for would travel unapproved (on the DPO's overrides
    # report as sent without approval) or be refused after all: refused up front instead.
    class Meta:
        exclude = ("send", "override_reason", "override_note")


class IntakeSchema(ma.Schema):
    case = ma.fields.Nested(CaseCreateSchema, required=True)
    consent = ma.fields.Nested(ConsentCreateSchema, required=True)
    referral = ma.fields.Nested(IntakeReferralSchema, required=True)


class IntakeResultSchema(ma.Schema):
    case_id = ma.fields.UUID()
    case_code = ma.fields.String()
    consent_id = ma.fields.UUID()
    referral_id = ma.fields.UUID()
    referral_status = ma.fields.Enum(ReferralStatus, by_value=True)
