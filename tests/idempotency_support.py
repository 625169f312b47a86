"""Idempotency records as an earlier version wrote them: it stored the response of every
keyed POST that had a case (encrypted with the case's key) and no `resource_id`. Such
records live on for the keys' time to live after an upgrade, and are what erasure, key
rotation and the retention purge must still reach."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from referral_api.extensions import db
from referral_api.idempotency import IdempotencyRecord, IdempotentResponse


def as_written_before(app: Any, key: str, response: Any) -> None:
    """Turn the record of the keyed request `key` into the earlier version's: `response`
    (its JSON body, as text or as a dict) stored, `resource_id` empty."""
    body = response if isinstance(response, str) else json.dumps(response)
    with app.app_context(), db.session_factory_for(app)() as s:
        record = s.scalars(select(IdempotencyRecord).where(IdempotencyRecord.key == key)).one()
        assert record.case_id is not None and record.resource_id is not None
        record.resource_id = None
        stored = IdempotentResponse(id=record.id, case_id=record.case_id)
        stored.body = body
        s.add(stored)
        s.commit()
