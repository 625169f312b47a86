"""Consent endpoints. There is no PATCH or DELETE: records and events are append-only."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import jsonify
from sqlalchemy import select

from referral_api.access.permissions import Permission
from referral_api.auth.models import Organisation
from referral_api.consent import service
from referral_api.consent.models import ConsentRecord
from referral_api.consent.receipt import build_receipt
from referral_api.consent.schemas import (
    ConsentCheckResultSchema,
    ConsentCheckSchema,
    ConsentCreateSchema,
    ConsentSchema,
    ReasonRequiredSchema,
    ReceiptSchema,
    RenewSchema,
    WithdrawSchema,
)
from referral_api.extensions import db
from referral_api.smorest import Blueprint, current_actor, etag_for, require_if_match

blp = Blueprint("consent", __name__, url_prefix="/api/v1", description="Consent")

_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "Strong entity tag"}}


def _etag(consent: ConsentRecord) -> str:
    return etag_for("consent", consent.id, service.consent_version(consent))


def _respond(consent: ConsentRecord, status: int = 200) -> Any:
    return _dump(consent), status, {"ETag": _etag(consent)}


def _if_match(consent: ConsentRecord) -> None:
    """The change is made to the consent as the client last read it (428 without If-Match,
    412 when another event came first): checked under the consent's lock."""
    require_if_match(_etag(consent))


def _dump(consent: ConsentRecord) -> dict[str, Any]:
    return {
        **{
            name: getattr(consent, name)
            for name in (
                "id",
                "case_id",
                "org_id",
                "grantor",
                "guardian_relation",
                "is_minor",
                "captured_by_id",
                "captured_by_org_id",
                "collection_method",
                "language",
                "notice_version",
                "jurisdiction",
                "evidence_sha256",
                "evidence_media_type",
                "created_at",
                "provisions",
            )
        },
        "state": service.state_of(consent),
        "version": service.consent_version(consent),
        "legal_basis": {
            "article6": consent.article6.value,
            "article9": consent.article9.value if consent.article9 else None,
        },
        "events": [
            {
                "id": e.id,
                "event_type": e.event_type,
                "occurred_at": e.occurred_at,
                "actor_id": e.actor_id,
                "actor_org_id": e.actor_org_id,
                "valid_until": e.valid_until,
                "effects": json.loads(e.effects) if e.effects else None,
            }
            for e in consent.events
        ],
    }


def _current_consent(made: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the consent the first request recorded or changed, as GET
    /consents/{id} shows it now."""
    return get_consent(consent_id=made)


def _current_withdrawal(made: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A retried withdrawal's answer: the withdrawn consent as it is now, shown as the
    withdrawal itself shows it — also while the case is restricted, where the withdrawal is
    answered and GET /consents/{id} is refused (403): a retry after a lost answer must not
    read as a failed withdrawal."""
    consent = service.read_withdrawal(db.session, current_actor(), made)
    body, status, headers = _respond(consent)
    db.session.commit()
    return jsonify(ConsentSchema().dump(body)), status, headers


@blp.route("/cases/<uuid:case_id>/consents", methods=["POST"])
@blp.requires(Permission.CONSENT_RECORD)
@blp.idempotent(resource=_current_consent)
@blp.arguments(ConsentCreateSchema)
@blp.response(201, ConsentSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
def record_consent(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Record a consent ceremony and its provisions"""
    consent = service.record_consent(db.session, current_actor(), case_id, data)
    return _respond(consent, 201)


@blp.route("/cases/<uuid:case_id>/consents", methods=["GET"])
@blp.requires(Permission.CONSENT_READ)
@blp.response(200, ConsentSchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
def list_consents(case_id: uuid.UUID) -> Any:
    """A case's consents with their derived state"""
    records = service.list_consents(db.session, current_actor(), case_id)
    body = [_dump(c) for c in records]
    db.session.commit()
    return body


@blp.route("/consents/<uuid:consent_id>", methods=["GET"])
@blp.requires(Permission.CONSENT_READ)
@blp.response(200, ConsentSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
def get_consent(consent_id: uuid.UUID) -> Any:
    """A consent with its provisions and events"""
    consent = service.read_consent(db.session, current_actor(), consent_id)
    answer = _respond(consent)
    db.session.commit()
    return answer


@blp.route("/consents/<uuid:consent_id>/withdraw", methods=["POST"])
@blp.requires(Permission.CONSENT_WITHDRAW)
@blp.idempotent(resource=_current_withdrawal)
@blp.arguments(WithdrawSchema)
@blp.response(200, ConsentSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def withdraw(data: dict[str, Any], consent_id: uuid.UUID) -> Any:
    """Withdraw a consent: no justification needed, effective at once

    Every disclosure that depended on it stops in the same transaction; the event lists the
    effects. No `If-Match` is needed, and one sent is not checked: withdrawing must be as
    easy as consenting (GDPR Art. 7(3)), and no other change can make it wrong (a consent
    already closed answers 409).
    """
    consent = service.withdraw(db.session, current_actor(), consent_id, data.get("reason"))
    return _respond(consent)


@blp.route("/consents/<uuid:consent_id>/renew", methods=["POST"])
@blp.requires(Permission.CONSENT_RECORD)
@blp.idempotent(resource=_current_consent)
@blp.arguments(RenewSchema)
@blp.response(200, ConsentSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def renew(data: dict[str, Any], consent_id: uuid.UUID) -> Any:
    """Renew a consent until a new date (or open-ended; If-Match required)"""
    consent = service.renew(db.session, current_actor(), consent_id, data["valid_until"], _if_match)
    return _respond(consent)


@blp.route("/consents/<uuid:consent_id>/revoke", methods=["POST"])
@blp.requires(Permission.CONSENT_REVOKE)
@blp.idempotent(resource=_current_consent)
@blp.arguments(ReasonRequiredSchema)
@blp.response(200, ConsentSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def revoke(data: dict[str, Any], consent_id: uuid.UUID) -> Any:
    """Revoke a consent as controller (supervisor; reason required; If-Match required)"""
    consent = service.revoke(db.session, current_actor(), consent_id, data["reason"], _if_match)
    return _respond(consent)


@blp.route("/consents/<uuid:consent_id>/entered-in-error", methods=["POST"])
@blp.requires(Permission.CONSENT_ENTERED_IN_ERROR)
@blp.idempotent(resource=_current_consent)
@blp.arguments(ReasonRequiredSchema)
@blp.response(200, ConsentSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def entered_in_error(data: dict[str, Any], consent_id: uuid.UUID) -> Any:
    """Mark a consent as entered in error (supervisor; reason required; If-Match required)"""
    consent = service.mark_entered_in_error(
        db.session, current_actor(), consent_id, data["reason"], _if_match
    )
    return _respond(consent)


@blp.route("/consents/<uuid:consent_id>/receipt", methods=["GET"])
@blp.requires(Permission.CONSENT_READ)
@blp.response(200, ReceiptSchema)
@blp.alt_response(404, response="NOT_FOUND")
def receipt(consent_id: uuid.UUID) -> Any:
    """A consent receipt (ISO/IEC TS 27560 shaped) in the consent's language"""
    consent = service.read_consent(db.session, current_actor(), consent_id)
    controller = db.session.get(Organisation, consent.org_id)
    assert controller is not None  # noqa: S101 - foreign key
    recipient_ids = {p.recipient_org_id for p in consent.provisions if p.recipient_org_id}
    recipients = {
        org.id: org
        for org in db.session.scalars(
            select(Organisation).where(Organisation.id.in_(recipient_ids))
        )
    }
    state = service.state_of(consent)
    body = build_receipt(
        consent, controller, recipients, state.value if state else None, datetime.now(UTC)
    )
    db.session.commit()
    return body


@blp.route("/cases/<uuid:case_id>/consent-check", methods=["POST"])
@blp.requires(Permission.CONSENT_READ)
@blp.repeatable("the check only reads (each call is audited as a read); it changes nothing.")
@blp.arguments(ConsentCheckSchema)
@blp.response(200, ConsentCheckResultSchema)
@blp.alt_response(404, response="NOT_FOUND")
def consent_check(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Would the consents of this case permit a disclosure? (transparency)"""
    decision = service.consent_check(
        db.session,
        current_actor(),
        case_id,
        data["recipient_org_id"],
        data["purpose"],
        set(data["categories"]),
        data.get("at"),
    )
    db.session.commit()
    return {
        "permit": decision.permit,
        "provisions_used": {c.value: list(ids) for c, ids in decision.provisions_used.items()},
        "denied": {c.value: why for c, why in decision.denied.items()},
        "valid_until": decision.valid_until,
    }
