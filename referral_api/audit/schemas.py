from __future__ import annotations

from typing import Any

import marshmallow as ma

from referral_api.schema_fields import Boolean, Pattern

# Rows one answer verifies by default and at most: ~20-60 µs a row (bench/README.md, *Audit
# verification*), so a page stays well inside a worker's 30-s timeout on a slow host.
DEFAULT_PAGE_ROWS = 200_000
MAX_PAGE_ROWS = 500_000


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

    after_seq = ma.fields.Integer(
        validate=ma.validate.Range(min=1, max=2**63 - 2),  # the next seq must exist
        metadata={
            "description": "Go on from the previous page: its last_seq (with after_hash)",
        },
    )
    after_hash = ma.fields.String(
        validate=Pattern(r"^[0-9a-f]{64}$", error="64 lowercase hexadecimal digits."),
        metadata={"description": "The previous page's last_hash"},
    )
    limit = ma.fields.Integer(
        load_default=DEFAULT_PAGE_ROWS,
        validate=ma.validate.Range(min=1, max=MAX_PAGE_ROWS),
        metadata={
            "description": "Rows verified by this answer at most: a longer chain is verified "
            "page by page (complete=false, then after_seq/after_hash)"
        },
    )

    @ma.validates_schema
    def _together(self, data: dict[str, Any], **_: Any) -> None:
        for first, second in (("anchor_seq", "anchor_hash"), ("after_seq", "after_hash")):
            if (first in data) != (second in data):
                raise ma.ValidationError(
                    f"{first} and {second} are given together.",
                    second if first in data else first,
                )


class VerifyResultSchema(ma.Schema):
    ok = Boolean()
    checked = ma.fields.Integer(metadata={"description": "Sealed rows recomputed by this answer"})
    complete = Boolean(
        metadata={
            "description": "False: the chain verified so far, with rows left; ask again "
            "with after_seq=last_seq and after_hash=last_hash (the end-of-chain checks are "
            "made by the answer that reaches it). True: the answer reached the end of the "
            "chain, or stopped at a bad row (ok false: there is nothing to go on to)"
        }
    )
    unsealed = ma.fields.Integer(metadata={"description": "Rows not yet chained"})
    last_seq = ma.fields.Integer(
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
