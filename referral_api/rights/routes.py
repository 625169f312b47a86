"""Data-subject rights: export (Art. 15/20), erasure (Art. 17), restriction (Art. 18) and
legal holds. (The DPO's retention-due report is with the other reports, in dpo/.)

The POSTs that make something honour Idempotency-Key: a replay answers what the first request
made as it is now (no response is stored); an erasure's approval declares a repeat harmless."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from referral_api.access.permissions import Permission
from referral_api.extensions import db
from referral_api.idempotency import case_in_url
from referral_api.pagination import link_header
from referral_api.rights import service
from referral_api.rights.schemas import (
    ErasureCreateSchema,
    ErasureQueryArgsSchema,
    ErasureRequestSchema,
    ExportCreateSchema,
    ExportSchema,
    LegalHoldSchema,
    LegalHoldStateSchema,
    RestrictionSchema,
    RestrictionStateSchema,
    TombstoneSchema,
)
from referral_api.smorest import Blueprint, current_actor

blp = Blueprint("rights", __name__, url_prefix="/api/v1", description="Data-subject rights")


def _export_view(export: Any) -> dict[str, Any]:
    return {
        "id": export.id,
        "case_id": export.case_id,
        "created_at": export.created_at,
        "expires_at": export.expires_at,
        "download": f"/api/v1/exports/{export.id}/download",
    }


def _current_export(export_id: uuid.UUID, view_args: dict[str, Any]) -> Any:
    """A replay's answer: the export the first request made (its record, never its
    document), for its requester, as it is now."""
    export = service.read_export(db.session, current_actor(), view_args["case_id"], export_id)
    return jsonify(ExportSchema().dump(_export_view(export)))


@blp.route("/cases/<uuid:case_id>/export", methods=["POST"])
@blp.requires(Permission.CASE_EXPORT)
@blp.idempotent(resource=_current_export)
@blp.arguments(ExportCreateSchema)
@blp.response(201, ExportSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(410, response="GONE")
def create_export(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Export everything held about the person (supervisor; reason required)

    The document (case, notes, consents, referrals, disclosures, access log) is kept
    encrypted and can be downloaded once before it expires.
    """
    ttl = timedelta(seconds=current_app.config.get("EXPORT_TTL_SECONDS", 86400))
    export = service.create_export(db.session, current_actor(), case_id, data["reason"], ttl)
    return _export_view(export), 201


@blp.route("/exports/<uuid:export_id>/download", methods=["GET"])
@blp.requires(Permission.CASE_EXPORT)
@blp.response(200)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(410, response="GONE")
def download_export(export_id: uuid.UUID) -> Any:
    """Download an export (once; by whoever requested it)"""
    if request.method == "HEAD":
        # Flask answers HEAD with the GET view, and this GET spends the export: a link
        # preview or a download manager probing first would use up the only download (and
        # audit a hand-out no one received). HEAD must change nothing (RFC 9110 §9.2.1).
        raise MethodNotAllowed(valid_methods=["GET"])
    document = service.download_export(db.session, current_actor(), export_id)
    db.session.commit()
    response = Response(document, mimetype="application/json")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="subject-export-{export_id}.json"'
    )
    return response


def _current_erasure_request(request_id: uuid.UUID, view_args: dict[str, Any]) -> Any:
    """A replay's answer: the erasure request the first request made, as it is now (410
    once it was executed: the case is erased)."""
    request = service.read_erasure_request(
        db.session, current_actor(), view_args["case_id"], request_id
    )
    return jsonify(ErasureRequestSchema().dump(request))


@blp.route("/cases/<uuid:case_id>/erasure", methods=["POST"])
@blp.requires(Permission.CASE_ERASURE_REQUEST)
@blp.idempotent(resource=_current_erasure_request)
@blp.arguments(ErasureCreateSchema)
@blp.response(201, ErasureRequestSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def request_erasure(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Request erasure of a case (supervisor); a DPO approves"""
    return service.request_erasure(db.session, current_actor(), case_id, data["basis"])


@blp.route("/erasures", methods=["GET"])
@blp.requires(Permission.ERASURE_APPROVE)
@blp.arguments(ErasureQueryArgsSchema, location="query")
@blp.response(200, ErasureRequestSchema(many=True))
def list_erasures(args: dict[str, Any]) -> Any:
    """Erasure requests of the cases your organisation controls (pending by default)

    Oldest first, a page at a time (`limit`, default 50, at most 100; the next page at the
    `Link: rel="next"` URL).
    """
    page = service.erasure_requests(
        db.session, current_actor(), args["status"], args["cursor"], args["limit"]
    )
    db.session.commit()
    return page.items, link_header(page, args["limit"])


@blp.route("/erasures/<uuid:request_id>/approve", methods=["POST"])
@blp.requires(Permission.ERASURE_APPROVE)
@blp.repeatable(
    "an erasure is executed once; a repeat finds the request decided (409) and does nothing."
)
@blp.response(200, TombstoneSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def approve_erasure(request_id: uuid.UUID) -> Any:
    """Approve and execute an erasure (DPO, not the requester; refused under legal hold)

    In one transaction: every data key of the case destroyed, ciphertexts cleared, blind
    indexes deleted, open referrals cancelled, a tombstone kept. The case then answers 410.
    """
    tombstone = service.approve_erasure(db.session, current_actor(), request_id)
    db.session.commit()
    return tombstone


def _hold_view(case_id: uuid.UUID, hold: Any) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "hold": hold is not None and hold.lifted_at is None,
        "placed_at": hold.placed_at if hold else None,
        "lifted_at": hold.lifted_at if hold else None,
    }


def _current_hold(case_id: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the case's legal hold as it is now (held, or lifted since)."""
    case, hold = service.legal_hold_now(db.session, current_actor(), case_id)
    return jsonify(LegalHoldStateSchema().dump(_hold_view(case.id, hold)))


@blp.route("/cases/<uuid:case_id>/legal-hold", methods=["POST"])
@blp.requires(Permission.CASE_LEGAL_HOLD)
@blp.idempotent(resource=_current_hold, resource_id=case_in_url)
@blp.arguments(LegalHoldSchema)
@blp.response(200, LegalHoldStateSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def legal_hold(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Place (`hold: true`, reason required) or lift a legal hold; a hold blocks erasure"""
    hold = service.set_legal_hold(
        db.session, current_actor(), case_id, data["hold"], data.get("reason")
    )
    return _hold_view(case_id, hold)


def _current_restriction(case_id: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: whether the case is restricted now."""
    case = service.restriction_now(db.session, current_actor(), case_id)
    return jsonify(
        RestrictionStateSchema().dump({"case_id": case.id, "restricted": case.restricted})
    )


@blp.route("/cases/<uuid:case_id>/restriction", methods=["POST"])
@blp.requires(Permission.CASE_RESTRICT)
@blp.idempotent(resource=_current_restriction, resource_id=case_in_url)
@blp.arguments(RestrictionSchema)
@blp.response(200, RestrictionStateSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def restriction(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Restrict processing (Art. 18) or lift the restriction (supervisor; audited)

    A restricted case is stored but not processed: reads and changes are refused (403,
    audited) and nothing can be sent; DPO reports still see its metadata.
    """
    case = service.set_restriction(db.session, current_actor(), case_id, data["restricted"])
    return {"case_id": case.id, "restricted": case.restricted}
