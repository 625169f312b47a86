from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from referral_api.pagination import PageArgsSchema
from referral_api.rights.models import ErasureBasis, ErasureStatus
from referral_api.schema_fields import AwareDateTime, Boolean


class ExportCreateSchema(ma.Schema):
    reason = ma.fields.String(required=True, validate=validate.Length(min=3, max=2000))


class ExportSchema(ma.Schema):
    id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    created_at = AwareDateTime()
    expires_at = AwareDateTime()
    download = ma.fields.String(metadata={"description": "Download once, before expires_at"})


# `retention_expired` is the retention schedule's own basis (no request, no requester): a
# person's request claiming it would show a manual erasure as the schedule's.
REQUEST_BASES = [
    basis.value for basis in ErasureBasis if basis is not ErasureBasis.RETENTION_EXPIRED
]


class ErasureCreateSchema(ma.Schema):
    # A string checked against the request bases, not an Enum field: that one would accept
    # (and document) every member.
    basis = ma.fields.String(required=True, validate=validate.OneOf(REQUEST_BASES))

    @ma.post_load
    def _as_basis(self, data: dict[str, Any], **_kwargs: Any) -> dict[str, Any]:
        data["basis"] = ErasureBasis(data["basis"])
        return data


class ErasureRequestSchema(ma.Schema):
    id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    basis = ma.fields.Enum(ErasureBasis, by_value=True)
    status = ma.fields.Enum(ErasureStatus, by_value=True)
    requested_by = ma.fields.UUID(allow_none=True)
    requested_at = AwareDateTime()
    decided_by = ma.fields.UUID(allow_none=True)
    decided_at = AwareDateTime(allow_none=True)


class ErasureQueryArgsSchema(PageArgsSchema):
    status = ma.fields.Enum(ErasureStatus, by_value=True, load_default=ErasureStatus.PENDING)


class TombstoneSchema(ma.Schema):
    id = ma.fields.UUID()
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    request_id = ma.fields.UUID(allow_none=True)
    basis = ma.fields.Enum(ErasureBasis, by_value=True)
    requested_by = ma.fields.UUID(allow_none=True)
    approved_by = ma.fields.UUID(allow_none=True)
    erased_at = AwareDateTime()
    data_keys_destroyed = ma.fields.Integer()
    ciphertexts_cleared = ma.fields.Integer()
    index_entries_deleted = ma.fields.Integer()
    referrals_cancelled = ma.fields.Integer()
    key_digest = ma.fields.String()


class LegalHoldSchema(ma.Schema):
    hold = Boolean(required=True)
    reason = ma.fields.String(allow_none=True, validate=validate.Length(max=2000))


class LegalHoldStateSchema(ma.Schema):
    case_id = ma.fields.UUID()
    hold = Boolean()
    placed_at = AwareDateTime(allow_none=True)
    lifted_at = AwareDateTime(allow_none=True)


class RestrictionSchema(ma.Schema):
    restricted = Boolean(required=True)


class RestrictionStateSchema(ma.Schema):
    case_id = ma.fields.UUID()
    restricted = Boolean()


class RetentionDueSchema(ma.Schema):
    case_id = ma.fields.UUID()
    org_id = ma.fields.UUID()
    case_type = ma.fields.String()
    closed_at = AwareDateTime()
    due_at = AwareDateTime()
    legal_hold = Boolean()
    restricted = Boolean(
        metadata={"description": "Processing restricted: retention leaves it alone too."}
    )
