"""Report rows, report filters and the Art. 30 record. Ids, codes, counts and times only.

Each row schema declares exactly the report's columns, in the CSV's order
(tests/test_dpo_reports.py holds them to `service.REPORTS`).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.access.roles import OrgType
from referral_api.auth.service import REFUSAL_REASONS
from referral_api.consent.vocabulary import Purpose
from referral_api.dpo.service import QUALITY_ISSUES
from referral_api.pagination import PageArgsSchema
from referral_api.rights.schemas import RetentionDueSchema
from referral_api.schema_fields import AwareDateTime, Boolean

_UUID: dict[str, Any] = {"allow_none": True}


def _time(**kw: Any) -> AwareDateTime:
    return AwareDateTime(allow_none=True, **kw)


def _codes() -> ma.fields.List:
    return ma.fields.List(ma.fields.String())


# ---- filters ------------------------------------------------------------------------------


class ReportArgsSchema(ma.Schema):
    """What every report takes: whose records, and the format."""

    org_id = ma.fields.UUID(
        metadata={"description": "One organisation (data-protection officers of the platform)"}
    )
    format = ma.fields.String(
        validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "`csv` is the same as `Accept: text/csv`"},
    )


class ReportFilterArgsSchema(ReportArgsSchema):
    purpose = ma.fields.Enum(Purpose, by_value=True)
    recipient_org_id = ma.fields.UUID()
    recipient_org_type = ma.fields.Enum(OrgType, by_value=True)
    from_ = AwareDateTime(
        data_key="from",
        default_timezone=UTC,
        metadata={"description": "Start of the date range (inclusive); UTC if no offset"},
    )
    to = AwareDateTime(
        default_timezone=UTC,
        metadata={"description": "End of the date range (exclusive); UTC if no offset"},
    )

    @ma.validates_schema
    def _range(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("from_") and data.get("to") and data["from_"] >= data["to"]:
            raise ma.ValidationError("Must be after `from`.", "to")


class ReportPageArgsSchema(ReportFilterArgsSchema, PageArgsSchema):
    """Filters plus a page: a JSON page holds up to `limit` rows; CSV holds every row from
    the cursor on."""


class RetentionDueArgsSchema(ReportArgsSchema, PageArgsSchema):
    """A page of the cases due, or (CSV) every one from the cursor on."""


class ConsentsExpiringArgsSchema(ReportPageArgsSchema):
    within_days = ma.fields.Integer(
        load_default=30, validate=validate.Range(min=1, max=3660), metadata={"example": 30}
    )


class OverridesArgsSchema(ReportPageArgsSchema):
    reviewed = ma.fields.Boolean(metadata={"description": "Only reviewed (or unreviewed) ones"})


class DisclosuresArgsSchema(ReportPageArgsSchema):
    case_id = ma.fields.UUID(metadata={"description": "One of the organisation's own cases"})


class AccessLogArgsSchema(ReportPageArgsSchema):
    case_id = ma.fields.UUID(required=True)


class QualityArgsSchema(ReportPageArgsSchema):
    issue = ma.fields.String(validate=validate.OneOf(QUALITY_ISSUES))


# ---- rows ---------------------------------------------------------------------------------


class ConsentSummaryRowSchema(ma.Schema):
    org_id = ma.fields.UUID()
    state = ma.fields.String(allow_none=True)
    purpose = ma.fields.Enum(Purpose, by_value=True)
    recipient_org_id = ma.fields.UUID(**_UUID)
    recipient_org_type = ma.fields.Enum(OrgType, by_value=True, allow_none=True)
    consents = ma.fields.Integer()
    provisions = ma.fields.Integer()
    provisions_in_force = ma.fields.Integer()


class ConsentExpiringRowSchema(ma.Schema):
    provision_id = ma.fields.UUID()
    consent_id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    purpose = ma.fields.Enum(Purpose, by_value=True)
    recipient_org_id = ma.fields.UUID(**_UUID)
    recipient_org_type = ma.fields.Enum(OrgType, by_value=True, allow_none=True)
    categories = _codes()
    valid_from = _time()
    effective_until = _time()
    renewed = Boolean()


class ProcessingRowSchema(ma.Schema):
    kind = ma.fields.String(metadata={"description": "`referral`, or `disclosure` under it"})
    referral_id = ma.fields.UUID()
    disclosure_id = ma.fields.UUID(**_UUID)
    case_id = ma.fields.UUID(**_UUID)
    from_org_id = ma.fields.UUID()
    to_org_id = ma.fields.UUID()
    to_org_type = ma.fields.Enum(OrgType, by_value=True)
    purpose = ma.fields.Enum(Purpose, by_value=True)
    categories = _codes()
    status = ma.fields.String()
    sent_at = _time()
    disclosed_at = _time()
    acknowledged_at = _time()
    uncovered_categories = _codes()
    reason = ma.fields.String()


class OverrideRowSchema(ma.Schema):
    referral_id = ma.fields.UUID()
    case_id = ma.fields.UUID(**_UUID)
    from_org_id = ma.fields.UUID()
    to_org_id = ma.fields.UUID()
    purpose = ma.fields.Enum(Purpose, by_value=True)
    categories = _codes()
    status = ma.fields.String()
    override_reason = ma.fields.String()
    requested_by = ma.fields.UUID(**_UUID)
    approved_by = ma.fields.UUID(**_UUID)
    approved_at = _time()
    reviewed_by = ma.fields.UUID(**_UUID)
    reviewed_at = _time()
    created_at = _time()
    sent_at = _time()


class DisclosureRowSchema(ma.Schema):
    disclosure_id = ma.fields.UUID()
    referral_id = ma.fields.UUID()
    case_id = ma.fields.UUID(**_UUID)
    from_org_id = ma.fields.UUID()
    to_org_id = ma.fields.UUID()
    to_org_type = ma.fields.Enum(OrgType, by_value=True)
    purpose = ma.fields.Enum(Purpose, by_value=True)
    categories = _codes()
    basis_type = ma.fields.String(metadata={"description": "`consent` or `override`"})
    basis = ma.fields.String(metadata={"description": "Provision ids, or the override reason"})
    disclosed_by = ma.fields.UUID(**_UUID)
    disclosed_at = _time()
    acknowledged_at = _time()


class AccessLogRowSchema(ma.Schema):
    occurred_at = _time()
    actor_type = ma.fields.String()
    actor_id = ma.fields.UUID(**_UUID)
    actor_role = ma.fields.String(allow_none=True)
    actor_org_id = ma.fields.UUID(**_UUID)
    acting_officer = ma.fields.String(allow_none=True)
    action = ma.fields.String()
    resource_type = ma.fields.String()
    resource_id = ma.fields.String(allow_none=True)
    categories = _codes()
    purpose = ma.fields.String(allow_none=True)
    decision = ma.fields.String()
    reason = ma.fields.String(allow_none=True)
    legal_basis = ma.fields.String(allow_none=True)


class ErasureRowSchema(ma.Schema):
    tombstone_id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    request_id = ma.fields.UUID(**_UUID)
    basis = ma.fields.String(allow_none=True)
    requested_by = ma.fields.UUID(**_UUID)
    approved_by = ma.fields.UUID(**_UUID)
    erased_at = _time()
    data_keys_destroyed = ma.fields.Integer(allow_none=True)
    ciphertexts_cleared = ma.fields.Integer(allow_none=True)
    index_entries_deleted = ma.fields.Integer(allow_none=True)
    referrals_cancelled = ma.fields.Integer(allow_none=True)
    key_digest = ma.fields.String(allow_none=True)


class SignInFailureRowSchema(ma.Schema):
    occurred_at = _time()
    action = ma.fields.String(
        metadata={"description": "`auth:sign-in`, `auth:client-token` or `auth:refresh`"}
    )
    account_type = ma.fields.String(metadata={"description": "`user` or `client`"})
    account_id = ma.fields.String(
        allow_none=True,
        metadata={"description": "The account tried; null when no account has the name"},
    )
    org_id = ma.fields.UUID(**_UUID)
    reason = ma.fields.String(metadata={"description": ", ".join(REFUSAL_REASONS)})
    locked = ma.fields.List(
        ma.fields.String(),
        metadata={"description": "Locks this failure started: `account`, `address`"},
    )
    request_id = ma.fields.String(allow_none=True)


class QualityRowSchema(ma.Schema):
    consent_id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    created_at = _time()
    grantor = ma.fields.String()
    is_minor = Boolean()
    collection_method = ma.fields.String()
    notice_version = ma.fields.String()
    no_evidence = Boolean()
    minor_without_guardian = Boolean()
    unknown_notice_version = Boolean()


ROW_SCHEMAS: dict[str, type[ma.Schema]] = {
    "consent-summary": ConsentSummaryRowSchema,
    "consents-expiring": ConsentExpiringRowSchema,
    "processing-without-basis": ProcessingRowSchema,
    "overrides": OverrideRowSchema,
    "disclosures": DisclosureRowSchema,
    "access-log": AccessLogRowSchema,
    "erasures": ErasureRowSchema,
    "sign-in-failures": SignInFailureRowSchema,
    "quality": QualityRowSchema,
    "retention-due": RetentionDueSchema,
}


# ---- the Art. 30 record -------------------------------------------------------------------


class _CodeSchema(ma.Schema):
    code = ma.fields.String()
    name = ma.fields.String()


class _ControllerSchema(ma.Schema):
    org_id = ma.fields.UUID()
    name = ma.fields.String()
    org_type = ma.fields.String()


class _SubjectSchema(ma.Schema):
    case_type = ma.fields.String()
    description = ma.fields.String()


class _CategorySchema(ma.Schema):
    code = ma.fields.String()
    special_category = Boolean(metadata={"description": "GDPR Art. 9"})
    # `fields` would shadow Schema.fields.
    field_names = ma.fields.List(ma.fields.String(), data_key="fields", attribute="fields")
    encrypted = Boolean()


class _RecipientSchema(ma.Schema):
    org_type = ma.fields.String()
    may_receive = ma.fields.List(ma.fields.String())
    never_receives = ma.fields.List(ma.fields.String())


class _LegalBasesSchema(ma.Schema):
    article6 = ma.fields.List(ma.fields.Nested(_CodeSchema))
    article9 = ma.fields.List(ma.fields.Nested(_CodeSchema))
    overrides = ma.fields.List(ma.fields.Nested(_CodeSchema))


class _ConsentPracticeSchema(ma.Schema):
    collection_methods = ma.fields.List(ma.fields.String())
    notice_versions = ma.fields.List(ma.fields.String())
    withdrawal = ma.fields.String()


class _RetentionRuleSchema(ma.Schema):
    case_type = ma.fields.String()
    status = ma.fields.String()
    days_after = ma.fields.Integer()


class _RetentionSchema(ma.Schema):
    configured = Boolean()
    rules = ma.fields.List(ma.fields.Nested(_RetentionRuleSchema))
    note = ma.fields.String(allow_none=True)


class _RoleSchema(ma.Schema):
    role = ma.fields.String()
    permissions = ma.fields.List(ma.fields.String())
    content_categories = ma.fields.List(ma.fields.String())


class _MeasureSchema(ma.Schema):
    code = ma.fields.String()
    description = ma.fields.String()
    parameters = ma.fields.Dict(keys=ma.fields.String())


class RopaSchema(ma.Schema):
    """Generated from the code and configuration in force."""

    generated_at = AwareDateTime()
    controller = ma.fields.Nested(_ControllerSchema, allow_none=True)
    scope = ma.fields.String(metadata={"description": "`organisation` or `platform`"})
    data_subjects = ma.fields.List(ma.fields.Nested(_SubjectSchema))
    purposes = ma.fields.List(ma.fields.Nested(_CodeSchema))
    data_categories = ma.fields.List(ma.fields.Nested(_CategorySchema))
    recipients = ma.fields.List(ma.fields.Nested(_RecipientSchema))
    legal_bases = ma.fields.Nested(_LegalBasesSchema)
    consent = ma.fields.Nested(_ConsentPracticeSchema)
    retention = ma.fields.Nested(_RetentionSchema)
    roles = ma.fields.List(ma.fields.Nested(_RoleSchema))
    security_measures = ma.fields.List(ma.fields.Nested(_MeasureSchema))
