"""Referral endpoints: create/send, inbox and outbox, transitions, the receiver's packet,
messages, override approval, notifications, and police intake. POSTs honour Idempotency-Key
(the wrapper commits), but marking a notification read, whose repeat is harmless."""

from __future__ import annotations

import uuid
from typing import Any

from flask import jsonify

from referral_api.access.permissions import Permission
from referral_api.extensions import db
from referral_api.pagination import PageArgsSchema, link_header
from referral_api.referrals import service
from referral_api.referrals.schemas import (
    IntakeResultSchema,
    IntakeSchema,
    MessageCreateSchema,
    MessageSchema,
    NotificationQueryArgsSchema,
    NotificationSchema,
    PacketSchema,
    ReferralCreateSchema,
    ReferralQueryArgsSchema,
    ReferralSchema,
    TransitionSchema,
)
from referral_api.smorest import Blueprint, current_actor, etag_for, require_if_match

blp = Blueprint("referrals", __name__, url_prefix="/api/v1", description="Referrals")

_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "Strong entity tag"}}


def _etag(referral: Any) -> str:
    return etag_for("referral", referral.id, service.etag_version(db.session, referral))


def _respond(referral: Any, party: service.Party, status: int = 200) -> Any:
    body = service.referral_view(db.session, referral, party, current_actor())
    return body, status, {"ETag": _etag(referral)}


def _current_referral(made: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the referral the first request answered with, as it is now and
    as GET /referrals/{id} shows it to this caller (policy, audit row, ETag)."""
    return get_referral(referral_id=made)


def _current_message(made: uuid.UUID, view_args: dict[str, Any]) -> Any:
    """A replay's answer: the message the first request added, read through the thread's
    access rules now (refused once the thread is closed to this caller)."""
    message = service.read_message(db.session, current_actor(), view_args["referral_id"], made)
    return jsonify(MessageSchema().dump(_message_view(message)))


@blp.route("/cases/<uuid:case_id>/referrals", methods=["POST"])
@blp.requires(Permission.REFERRAL_CREATE)
@blp.idempotent(resource=_current_referral)
@blp.arguments(ReferralCreateSchema)
@blp.response(201, ReferralSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def create_referral(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Refer a case to another organisation (draft, or sent at once with `send: true`)

    Sending runs the consent decision for every shared category: any category not covered
    answers 409 `consent-required` listing the missing categories.
    """
    referral = service.create_referral(db.session, current_actor(), case_id, data)
    return _respond(referral, service.Party.SENDER, 201)


@blp.route("/referrals", methods=["GET"])
@blp.requires(Permission.REFERRAL_READ)
@blp.arguments(ReferralQueryArgsSchema, location="query")
@blp.response(200, ReferralSchema(many=True))
def list_referrals(args: dict[str, Any]) -> Any:
    """Incoming and outgoing referrals (`box=incoming|outgoing`), newest first"""
    actor = current_actor()
    page = service.list_referrals(db.session, actor, args)
    preload = service.preload_for_views(db.session, actor, page.items)
    items = [
        service.referral_view(
            db.session, r, service.party_of(actor, r), actor, preload.consent_views
        )
        for r in page.items
    ]
    db.session.commit()
    return items, 200, link_header(page, args["limit"])


@blp.route("/referrals/<uuid:referral_id>", methods=["GET"])
@blp.requires(Permission.REFERRAL_READ)
@blp.response(200, ReferralSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
def get_referral(referral_id: uuid.UUID) -> Any:
    """Read a referral (its own metadata; the sender also sees its case id)"""
    referral, party = service.read_referral(db.session, current_actor(), referral_id)
    body = _respond(referral, party)
    db.session.commit()
    return body


@blp.route("/referrals/<uuid:referral_id>/transitions", methods=["POST"])
@blp.requires(Permission.REFERRAL_TRANSITION)
@blp.idempotent(resource=_current_referral)
@blp.arguments(TransitionSchema)
@blp.response(200, ReferralSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
@blp.alt_response(410, response="GONE")
def transition(data: dict[str, Any], referral_id: uuid.UUID) -> Any:
    """Move a referral along its status machine (If-Match required)

    Sender: send (requested), cancel. Receiver: received, accepted, rejected, in_progress,
    on_hold, completed (with outcome), failed, cancelled. Supervisors: entered_in_error.
    Illegal moves answer 409 `invalid-transition` naming the allowed moves.
    """
    actor = current_actor()
    referral, party = service.authorize(
        db.session, actor, Permission.REFERRAL_TRANSITION, referral_id
    )
    require_if_match(_etag(referral))
    service.transition(
        db.session,
        actor,
        referral,
        party,
        data["to"],
        reason=data.get("reason"),
        note=data.get("note"),
        business_status=data.get("business_status"),
        outcome=data.get("outcome"),
    )
    return _respond(referral, party)


@blp.route("/referrals/<uuid:referral_id>/override-approval", methods=["POST"])
@blp.requires(Permission.REFERRAL_APPROVE_OVERRIDE)
@blp.idempotent(resource=_current_referral)
@blp.response(200, ReferralSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def approve_override(referral_id: uuid.UUID) -> Any:
    """Approve sharing without covering consent (a supervisor other than the requester)"""
    actor = current_actor()
    referral, party = service.authorize(
        db.session, actor, Permission.REFERRAL_APPROVE_OVERRIDE, referral_id
    )
    require_if_match(_etag(referral))
    service.approve_override(db.session, actor, referral, party)
    return _respond(referral, party)


@blp.route("/referrals/<uuid:referral_id>/packet", methods=["GET"])
@blp.requires(Permission.REFERRAL_READ)
@blp.response(200, PacketSchema)
@blp.alt_response(404, response="NOT_FOUND")
def packet(referral_id: uuid.UUID) -> Any:
    """The receiver's view of the shared case data

    Only the shared categories (within the receiver's organisation-type ceiling), only while
    the referral is open and consent (or an approved override) covers it; otherwise 404.
    """
    body = service.read_packet(db.session, current_actor(), referral_id)
    db.session.commit()
    return body


@blp.route("/referrals/<uuid:referral_id>/messages", methods=["GET"])
@blp.requires(Permission.REFERRAL_READ)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, MessageSchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(410, response="GONE")
def list_messages(args: dict[str, Any], referral_id: uuid.UUID) -> Any:
    """Messages between sender and receiver about this referral, oldest first (cursor
    pages; `Link: rel="next"` while more remain)"""
    page = service.list_messages(
        db.session, current_actor(), referral_id, args["cursor"], args["limit"]
    )
    body = [_message_view(m) for m in page.items]
    db.session.commit()
    return body, 200, link_header(page, args["limit"])


@blp.route("/referrals/<uuid:referral_id>/messages", methods=["POST"])
@blp.requires(Permission.REFERRAL_TRANSITION)
@blp.idempotent(resource=_current_message)
@blp.arguments(MessageCreateSchema)
@blp.response(201, MessageSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(410, response="GONE")
def add_message(data: dict[str, Any], referral_id: uuid.UUID) -> Any:
    """Send a message to the other party (encrypted at rest)"""
    message = service.add_message(db.session, current_actor(), referral_id, data["body"])
    return _message_view(message), 201


def _message_view(message: Any) -> dict[str, Any]:
    # Decrypted here, inside the request's transaction; the response schema dumps it (a
    # pre-dumped dict would be dumped twice: a 500 on every message).
    return {
        name: getattr(message, name)
        for name in ("id", "referral_id", "author_id", "author_org_id", "body", "created_at")
    }


@blp.route("/referrals/<uuid:referral_id>/case", methods=["POST"])
@blp.requires(Permission.CASE_CREATE)
@blp.idempotent(resource=_current_referral)
@blp.response(201, ReferralSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def open_case(referral_id: uuid.UUID) -> Any:
    """Open the receiving organisation's own case from an accepted referral's packet"""
    actor = current_actor()
    service.open_case_from_referral(db.session, actor, referral_id)
    referral, party = service.authorize(db.session, actor, Permission.REFERRAL_READ, referral_id)
    return _respond(referral, party, 201)


@blp.route("/notifications", methods=["GET"])
@blp.requires(Permission.REFERRAL_READ)
@blp.arguments(NotificationQueryArgsSchema, location="query")
@blp.response(200, NotificationSchema(many=True))
def list_notifications(args: dict[str, Any]) -> Any:
    """Your organisation's referral events (unread by default), newest first

    Follow `Link: rel="next"` for more.
    """
    page = service.list_notifications(
        db.session, current_actor(), args["unread"], args["cursor"], args["limit"]
    )
    db.session.commit()  # the page's audit rows
    return page.items, 200, link_header(page, args["limit"])


@blp.route("/notifications/<uuid:notification_id>/read", methods=["POST"])
@blp.requires(Permission.REFERRAL_TRANSITION)
@blp.repeatable("marking a read notification read again keeps its first read time.")
@blp.response(200, NotificationSchema)
@blp.alt_response(404, response="NOT_FOUND")
def mark_read(notification_id: uuid.UUID) -> Any:
    """Mark a notification read, for your whole organisation

    The organisation's referral workers share its notifications: one of them marking one
    read marks it read for all. A role that only oversees referrals (a DPO) lists them but
    cannot mark them read, so its reading never hides an event from those who act on it.
    """
    notification = service.mark_notification_read(db.session, current_actor(), notification_id)
    db.session.commit()
    return notification


@blp.route("/intake", methods=["POST"])
@blp.requires(Permission.INTAKE_CREATE)
@blp.idempotent
@blp.arguments(IntakeSchema)
@blp.response(201, IntakeResultSchema)
@blp.alt_response(409, response="CONFLICT")
def intake(data: dict[str, Any]) -> Any:
    """Police intake: case, consent and referral of a presumed victim in one idempotent call

    Send `Idempotency-Key` and retry freely: a replay answers the first response (ids and
    codes only).
    """
    result = service.intake(db.session, current_actor(), data)
    return {
        "case_id": result.case.id,
        "case_code": result.case.case_code,
        "consent_id": result.consent_id,
        "referral_id": result.referral.id,
        "referral_status": result.referral.status,
    }, 201
