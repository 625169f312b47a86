from __future__ import annotations

import marshmallow as ma

from referral_api.schema_fields import Boolean


class VerifyResultSchema(ma.Schema):
    ok = Boolean()
    checked = ma.fields.Integer(metadata={"description": "Sealed rows recomputed"})
    unsealed = ma.fields.Integer(metadata={"description": "Rows not yet chained"})
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
