"""Idempotency-Key handling for POSTs (police systems retry on network failure).

Same key + same body + same endpoint → nothing done twice, and the first response's status
with `Idempotent-Replayed: true`. Same key + another body or endpoint → 422. Keys are scoped
per authenticated client (principal). The record is inserted before the work and committed
with it: a concurrent twin blocks on the unique key, then replays.

What a replay answers: for an endpoint that names a `resource` view (`Blueprint.idempotent`:
all but police intake), what the first request made as it is now, found by its id
(`resource_id`) and read through the policy and audited as a GET of it is. Nothing of the
first response is stored: it may hold personal data the policy no longer shows (the case
restricted, the consent withdrawn, the packet closed), or a value corrected since, kept for
the key's lifetime; an organisation or a service has no case key to encrypt it with; an API
client's body holds its secret, shown once. Police intake's response (ids and codes) is
stored, encrypted with its case's key, and replayed as it was. Once the case is erased, a
replay answers 410.

Every other POST either declares that a repeat is harmless (`Blueprint.repeatable`: the
header is accepted and ignored) or refuses a request carrying the header (422,
`refuse_key`), so an endpoint that never decided cannot silently do a retried request twice.

A key is honoured for IDEMPOTENCY_KEY_TTL_SECONDS after its first use (default 7 days):
past that, the key is free again and its record and stored response are deleted when it is
reused, or by `referral-api retention run --apply` (`purge_expired`), so neither a stored
response (encrypted personal data) nor the digest of a request body outlives its use.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Response, current_app, make_response, request
from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, Uuid, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from referral_api.access.actor import Actor
from referral_api.access.categories import Category
from referral_api.consent.models import _CaseKeyed
from referral_api.crypto.fields import EncryptedField
from referral_api.crypto.server_keys import keyed_digest
from referral_api.db import Base, UTCDateTime, new_id, utcnow
from referral_api.exceptions import Conflict, Gone, ValidationFailed

# Also the documented pattern of the header (OpenAPI): keep it to what ECMA 262 reads too.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")  # anchored for OpenAPI; checked by fullmatch
# `body_sha256` of a record whose case was erased: the digest of a request body (a message's
# text, a whole intake) could confirm a guessed copy, so erasure overwrites it with this.
ERASED = "erased"
# Renders the current view of what a first request made from its id (the record's
# `resource_id`) and the view's arguments: a Flask response, or what a view returns.
ResourceView = Callable[[uuid.UUID, dict[str, Any]], Any]


class IdempotencyRecord(Base):
    """A POST made with an Idempotency-Key, scoped per client (principal). Inserted before
    the work, in the same transaction, so a concurrent twin waits on the unique key and then
    replays; the same key with another body or endpoint is refused."""

    __tablename__ = "idempotency_records"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    principal: Mapped[str] = mapped_column(String(80))
    key: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(300))
    body_sha256: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("cases.id"), index=True)
    status_code: Mapped[int | None] = mapped_column(Integer)
    # What the first request made, for a `resource` view's replay (no response is stored).
    resource_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("principal", "key", name="uq_idempotency_principal_key"),)


class IdempotentResponse(_CaseKeyed, Base):
    """The stored response of an idempotent request, encrypted with the case's key (it may
    carry personal data); replayed byte for byte."""

    __tablename__ = "idempotent_responses"

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("idempotency_records.id"), primary_key=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    body = EncryptedField(Category.NEEDS)
    etag: Mapped[str | None] = mapped_column(String(80))


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            {"Idempotency-Key": ["8 to 128 characters: letters, digits and . _ : -"]},
            location="headers",
        )
    return key


def refuse_key() -> None:
    """An endpoint that neither honours Idempotency-Key nor declared a repeat harmless: a
    request carrying the key is refused before anything is done, rather than done again on
    every retry while the caller believes it is safe."""
    if "Idempotency-Key" in request.headers:
        raise ValidationFailed(
            {
                "Idempotency-Key": [
                    "This endpoint does not honour Idempotency-Key: a retry would be a new "
                    "request. Send it without the header."
                ]
            },
            detail="This endpoint does not honour the Idempotency-Key header.",
            location="headers",
        )


def _principal(actor: Actor) -> str:
    return f"{actor.kind.value}:{actor.id}"


def _fingerprint() -> tuple[str, str]:
    """The request's endpoint and the keyed digest of its body (`body_sha256`): an unkeyed
    one, beside the plaintext columns holding the rest of a body, confirmed a guessed name,
    message or reason (crypto.server_keys)."""
    body = keyed_digest(b"idempotent request body v1", request.get_data())
    return f"{request.method} {request.path}", body


def ttl() -> timedelta:
    return timedelta(seconds=current_app.config.get("IDEMPOTENCY_KEY_TTL_SECONDS", 7 * 86400))


def find(session: Session, actor: Actor, key: str) -> IdempotencyRecord | None:
    """The record of this client's key, if it is still honoured. An expired one is deleted
    here, with its stored response, so the key can be claimed again in this transaction (a
    concurrent twin doing the same waits on the delete, then on the new claim)."""
    record = session.scalars(
        select(IdempotencyRecord).where(
            IdempotencyRecord.principal == _principal(actor), IdempotencyRecord.key == key
        )
    ).one_or_none()
    if record is None or record.created_at > utcnow() - ttl():
        return record
    _delete_records(session, IdempotencyRecord.id == record.id)
    session.expunge(record)
    return None


def purge_expired(session: Session, actor: Actor, now: datetime | None = None) -> int:
    """Delete every record older than the keys' time to live and the responses stored with
    them (`referral-api retention run --apply`); audited when it deletes anything."""
    from referral_api.audit import service as audit

    deleted = _delete_records(session, IdempotencyRecord.created_at <= (now or utcnow()) - ttl())
    if deleted:
        audit.record(
            session,
            actor,
            "idempotency:purge",
            resource_type="idempotency_record",
            details={"deleted": deleted},
        )
    return deleted


def _delete_records(session: Session, which: Any) -> int:
    """Delete the records matching `which` and their stored responses; how many records."""
    chosen = select(IdempotencyRecord.id).where(which)
    session.execute(
        delete(IdempotentResponse)
        .where(IdempotentResponse.id.in_(chosen))
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        delete(IdempotencyRecord).where(which).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def replay(
    session: Session,
    record: IdempotencyRecord,
    view_args: dict[str, Any] | None = None,
    resource: ResourceView | None = None,
) -> Response:
    """The answer to a repeated request (module docstring): `resource`'s view of what the
    first request made, found by its id, with the first status; without it, the stored
    response."""
    endpoint, body_hash = _fingerprint()
    if record.endpoint == endpoint and record.body_sha256 == ERASED:
        gone = Gone("The case this request concerned was erased.")
        gone.case_id = record.case_id  # refused on the record, as the request without a key
        raise gone
    if record.endpoint != endpoint or record.body_sha256 != body_hash:
        raise ValidationFailed(
            {"Idempotency-Key": ["This key was used for another request; use a new key."]},
            location="headers",
        )
    if resource is not None:
        made = record.resource_id
        if made is None and record.status_code is not None:
            made = _made_before_upgrade(session, record)
        if made is None or record.status_code is None:
            raise Conflict("A request with this Idempotency-Key is still being processed.")
        response = make_response(resource(made, view_args or {}))
        response.status_code = record.status_code
        response.headers["Idempotent-Replayed"] = "true"
        return response
    stored = session.get(IdempotentResponse, record.id)
    if stored is None or record.status_code is None:
        raise Conflict("A request with this Idempotency-Key is still being processed.")
    response = Response(stored.body, status=record.status_code, mimetype="application/json")
    if stored.etag:
        response.headers["ETag"] = stored.etag
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _made_before_upgrade(session: Session, record: IdempotencyRecord) -> uuid.UUID | None:
    """What a request made, for a record an earlier version wrote (it stored the response
    of every endpoint with a case, and left `resource_id` empty): the stored response's
    `id`. Such records expire with their keys (IDEMPOTENCY_KEY_TTL_SECONDS)."""
    stored = session.get(IdempotentResponse, record.id)
    if stored is None:
        return None
    return uuid.UUID(json.loads(stored.body)["id"])


def claim(session: Session, actor: Actor, key: str) -> IdempotencyRecord:
    """Insert the key in the request's transaction before doing the work."""
    endpoint, body_hash = _fingerprint()
    record = IdempotencyRecord(
        id=uuid.uuid4(),
        principal=_principal(actor),
        key=key,
        endpoint=endpoint,
        body_sha256=body_hash,
    )
    session.add(record)
    session.flush()
    return record


def store(
    session: Session,
    record: IdempotencyRecord,
    response: Response,
    case_id: uuid.UUID | None,
    resource_id: uuid.UUID | None = None,
) -> None:
    """Complete the record of a request that succeeded: its status and case, and either the
    id of what it made (`resource` views: nothing of the response is kept) or its response,
    encrypted with the case's key."""
    record.status_code = response.status_code
    record.case_id = case_id
    record.resource_id = resource_id
    if case_id is None or resource_id is not None:
        return
    stored = IdempotentResponse(id=record.id, case_id=case_id, etag=response.headers.get("ETag"))
    stored.body = response.get_data(as_text=True)
    session.add(stored)


def id_in_body(response: Response, _view_args: dict[str, Any]) -> uuid.UUID:
    """The `id` of the resource a response shows (what a POST created)."""
    return uuid.UUID(json.loads(response.get_data(as_text=True))["id"])


def case_in_url(_response: Response, view_args: dict[str, Any]) -> uuid.UUID:
    """The case the URL names (a POST that changes the case itself)."""
    return view_args["case_id"]  # type: ignore[no-any-return]


def case_of_response(
    session: Session, response: Response, view_args: dict[str, Any], case_field: str = "case_id"
) -> uuid.UUID | None:
    """The case a response belongs to (its key encrypts the stored response): the view's
    `case_id`, a referral's case, or the body's `case_field` (`id` for a case created)."""
    if isinstance(view_args.get("case_id"), uuid.UUID):
        return view_args["case_id"]  # type: ignore[no-any-return]
    referral_id = view_args.get("referral_id")
    if isinstance(referral_id, uuid.UUID):
        from referral_api.referrals.models import Referral

        referral = session.get(Referral, referral_id)
        return referral.case_id if referral else None
    try:
        body = json.loads(response.get_data(as_text=True))
    except ValueError:
        return None
    raw = body.get(case_field) if isinstance(body, dict) else None
    return uuid.UUID(raw) if raw else None


def is_duplicate_key(error: IntegrityError) -> bool:
    return "idempotency" in str(error.orig).lower() or "unique" in str(error.orig).lower()
