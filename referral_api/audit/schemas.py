from __future__ import annotations

from typing import Any

import marshmallow as ma

from referral_api.schema_fields import Boolean, Pattern


class VerifyArgsSchema(ma.Schema):
    """An anchor kept outside the database (docs/audit.md): the head of an earlier
    verification, `last_seq`/`last_hash` of its answer."""

    anchor_seq = ma.fields.Integer(
        validate=ma.validate.Range(min=1, max=2**63 - 1),
        metadata={"description": "seq of an anchored row (with anchor_hash)"},
    )
    anchor_hash = ma.fields.String(
        validate=Pattern(r"^[0-9a-f]{64}$", error="64 lowercase hexadecimal digits."),
        metadata={"description": "The hash that row had when it was anchored"},
    )

    @ma.validates_schema
    def _together(self, data: dict[str, Any], **_: Any) -> None:
        if ("anchor_seq" in data) != ("anchor_hash" in data):
            raise ma.ValidationError(
                "anchor_seq and anchor_hash are given together.",
                "anchor_hash" if "anchor_seq" in data else "anchor_seq",
            )


class VerifyResultSchema(ma.Schema):
    ok = Boolean()
    checked = ma.fields.Integer(metadata={"description": "Sealed rows recomputed"})
    unsealed = ma.fields.Integer(metadata={"description": "Rows not yet chained"})
    last_seq = ma.fields.Function(
        lambda result: result["checked"] if result["last_hash"] else None,
        allow_none=True,
        metadata={"description": "seq of the last row verified: keep it with last_hash"},
    )
    last_hash = ma.fields.String(
        allow_none=True,
        metadata={
            "description": "Hash of the last row verified. Kept outside the database and "
            "passed back as anchor_seq/anchor_hash, it shows rows cut from the end or a "
            "chain re-hashed since"
        },
    )
    first_bad_id = ma.fields.Integer(allow_none=True)
    first_bad_seq = ma.fields.Integer(allow_none=True)
    problem = ma.fields.String(allow_none=True)
    head_rebuilt_at = ma.fields.List(
        ma.fields.Integer(),
        metadata={
            "description": "Ids of the rows recording that the chain head was lost and "
            "rebuilt from the last sealed row: rows removed from the end before each could "
            "not be detected (the chain is whole after it)"
        },
    )
