"""Case endpoints: parse → one service call → commit → respond. Every personal read is
audited in the same transaction, committed before the response leaves."""

from __future__ import annotations

import uuid
from typing import Any

from flask import jsonify

from referral_api.access.permissions import Permission
from referral_api.cases import service
from referral_api.cases.schemas import (
    AccessLogEntrySchema,
    AssignSchema,
    CaseCreateSchema,
    CaseQueryArgsSchema,
    CaseSchema,
    CaseUpdateSchema,
    NoteCreateSchema,
    NoteSchema,
    StatusChangeSchema,
)
from referral_api.extensions import db
from referral_api.idempotency import idempotency_key
from referral_api.pagination import PageArgsSchema, link_header
from referral_api.smorest import Blueprint, current_actor, etag_for, require_if_match

blp = Blueprint("cases", __name__, url_prefix="/api/v1", description="Case records")

_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "Strong entity tag"}}

# Why a repeated status change or assignment cannot act twice (`Blueprint.repeatable`).
_IF_MATCH_GUARDS = (
    "the first change moves the case's ETag, so a repeat with the same If-Match is "
    "refused (412) and changes nothing."
)


def _respond(view: service.CaseView, status: int = 200) -> Any:
    body = view.as_dict()
    return body, status, {"ETag": etag_for("case", view.case.id, view.case.version)}


# The note attributes a response carries, read once (a schema instance copies its fields).
_NOTE_FIELDS = tuple(NoteSchema().fields)


def _note_view(note: Any) -> dict[str, Any]:
    # Decrypted before the commit; @blp.response dumps it (dumping here too would dump twice).
    return {name: getattr(note, name) for name in _NOTE_FIELDS}


def _authorize_for_change(case_id: uuid.UUID, permission: Permission) -> Any:
    case, decision = service.authorize(db.session, current_actor(), permission, case_id)
    require_if_match(etag_for("case", case.id, case.version))
    return case, decision


def _current_case(made: uuid.UUID, _view_args: dict[str, Any]) -> Any:
    """A replay's answer: the case the first request created, as GET /cases/{id} shows it
    to this caller now (policy, audit row, ETag)."""
    return get_case(case_id=made)


@blp.route("/cases", methods=["POST"])
@blp.requires(Permission.CASE_CREATE)
@blp.idempotent(resource=_current_case, case_field="id")
@blp.arguments(CaseCreateSchema)
@blp.response(201, CaseSchema, headers=_ETAG)
def create_case(data: dict[str, Any]) -> Any:
    """Open a case for the caller's organisation"""
    actor = current_actor()

    def create() -> service.CaseView:
        return service.create_case(db.session, actor, data)

    # Case codes are random: one already taken is drawn again (the case created whole
    # anew). With an Idempotency-Key the key's claim is in the transaction already: the
    # case is made in a savepoint, and the idempotency wrapper commits both.
    if idempotency_key() is None:
        view = service.committed_under_free_codes(db.session, create)
    else:
        view = service.created_under_free_codes(db.session, create)
    return _respond(view, 201)


@blp.route("/cases", methods=["GET"])
@blp.requires(Permission.CASE_VIEW)
@blp.arguments(CaseQueryArgsSchema, location="query")  # unknown parameters: 422 (smorest)
@blp.response(200, CaseSchema(many=True))
def list_cases(args: dict[str, Any]) -> Any:
    """List or search the organisation's cases

    Filters: status, case_type, risk_level, assignee_id, updated_since. Exact search (through
    blind indexes, never logged): name, date_of_birth, phone, document_number, or
    family_name + birth_year. Items carry metadata and, for roles that see identity, the
    identity category. Follow `Link: rel="next"` for more.
    """
    page, shown = service.list_cases(db.session, current_actor(), args)
    items = [service.CaseView(case, shown).as_dict() for case in page.items]
    db.session.commit()
    return items, 200, link_header(page, args["limit"])


@blp.route("/cases/<uuid:case_id>", methods=["GET"])
@blp.requires(Permission.CASE_VIEW)
@blp.response(200, CaseSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
def get_case(case_id: uuid.UUID) -> Any:
    """Read a case (the categories your role may see)"""
    view = service.read_case(db.session, current_actor(), case_id)
    body = _respond(view)
    db.session.commit()
    return body


@blp.route("/cases/<uuid:case_id>", methods=["PATCH"])
@blp.requires(Permission.CASE_UPDATE)
@blp.arguments(CaseUpdateSchema)
@blp.response(200, CaseSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def update_case(changes: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Update a case (If-Match required)"""
    case, decision = _authorize_for_change(case_id, Permission.CASE_UPDATE)
    view = service.update_case(db.session, current_actor(), case, decision, changes)
    body = _respond(view)
    db.session.commit()
    return body


@blp.route("/cases/<uuid:case_id>/status", methods=["POST"])
@blp.requires(Permission.CASE_UPDATE)
@blp.repeatable(_IF_MATCH_GUARDS)
@blp.arguments(StatusChangeSchema)
@blp.response(200, CaseSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def change_status(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Move a case open → active → closed, or reopen it (If-Match required)

    Closing and reopening need a supervisor and a reason code.
    """
    case, decision = _authorize_for_change(case_id, Permission.CASE_UPDATE)
    view = service.change_status(
        db.session, current_actor(), case, decision, data["to"], data.get("reason")
    )
    body = _respond(view)
    db.session.commit()
    return body


@blp.route("/cases/<uuid:case_id>/assign", methods=["POST"])
@blp.requires(Permission.CASE_ASSIGN)
@blp.repeatable(_IF_MATCH_GUARDS)
@blp.arguments(AssignSchema)
@blp.response(200, CaseSchema, headers=_ETAG)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(412, response="PRECONDITION_FAILED")
@blp.alt_response(428, response="PRECONDITION_REQUIRED")
def assign_case(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Assign or reassign a case to a user of the same organisation (If-Match required)"""
    case, decision = _authorize_for_change(case_id, Permission.CASE_ASSIGN)
    view = service.assign(db.session, current_actor(), case, decision, data["assignee_id"])
    body = _respond(view)
    db.session.commit()
    return body


@blp.route("/cases/<uuid:case_id>/notes", methods=["GET"])
@blp.requires(Permission.CASE_READ)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, NoteSchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
def list_notes(args: dict[str, Any], case_id: uuid.UUID) -> Any:
    """The case timeline, newest first: notes in the categories your role may see (cursor
    pages; `Link: rel="next"` while more remain)"""
    actor = current_actor()
    case, decision = service.authorize(db.session, actor, Permission.CASE_READ, case_id)
    page = service.list_notes(db.session, actor, case, decision, args["cursor"], args["limit"])
    body = [_note_view(note) for note in page.items]
    db.session.commit()
    return body, 200, link_header(page, args["limit"])


def _current_note(made: uuid.UUID, view_args: dict[str, Any]) -> Any:
    """A replay's answer: the note the first request added, read through the case's access
    rules now (audited as a read of it)."""
    note = service.read_note(db.session, current_actor(), view_args["case_id"], made)
    return jsonify(NoteSchema().dump(_note_view(note)))


@blp.route("/cases/<uuid:case_id>/notes", methods=["POST"])
@blp.requires(Permission.CASE_NOTE)
@blp.idempotent(resource=_current_note)
@blp.arguments(NoteCreateSchema)
@blp.response(201, NoteSchema)
@blp.alt_response(404, response="NOT_FOUND")
def add_note(data: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Add a note to the case timeline"""
    actor = current_actor()
    case, decision = service.authorize(db.session, actor, Permission.CASE_NOTE, case_id)
    note = service.add_note(db.session, actor, case, decision, data["category"], data["text"])
    return _note_view(note), 201


@blp.route("/cases/<uuid:case_id>/access-log", methods=["GET"])
@blp.requires(Permission.CASE_ACCESS_LOG)
@blp.arguments(PageArgsSchema, location="query")
@blp.response(200, AccessLogEntrySchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
def access_log(args: dict[str, Any], case_id: uuid.UUID) -> Any:
    """Who accessed this case: actor, role, organisation, time, action, decision"""
    actor = current_actor()
    case, _ = service.authorize(db.session, actor, Permission.CASE_ACCESS_LOG, case_id)
    page = service.access_log(db.session, actor, case, args.get("cursor"), args["limit"])
    body = [
        {
            "occurred_at": row.occurred_at,
            "actor_type": row.actor_type,
            "actor_id": row.actor_id,
            "actor_role": row.actor_role,
            "actor_org_id": row.actor_org_id,
            "acting_officer": row.acting_officer,
            "action": row.action,
            "categories": row.categories.split(",") if row.categories else [],
            "decision": row.decision,
        }
        for row in page.items
    ]
    db.session.commit()
    return body, 200, link_header(page, args["limit"])
