"""Audit-chain verification for data-protection officers and platform administrators."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import current_app

from referral_api.access.permissions import Permission
from referral_api.access.policy import decide
from referral_api.audit import service
from referral_api.audit.schemas import VerifyArgsSchema, VerifyResultSchema
from referral_api.exceptions import Forbidden
from referral_api.extensions import db
from referral_api.smorest import Blueprint, current_actor

blp = Blueprint("audit", __name__, url_prefix="/api/v1", description="Audit log")


@blp.route("/audit/verify", methods=["GET"])
@blp.requires(Permission.AUDIT_VERIFY)
@blp.arguments(VerifyArgsSchema, location="query")
@blp.response(200, VerifyResultSchema)
def verify(args: dict[str, Any]) -> Any:
    """Recompute the audit hash chain and name the first row that does not match

    Pending rows are sealed first. `ok: false` with `first_bad_id` points at the first
    altered or missing row. With `anchor_seq`/`anchor_hash` (the `last_seq`/`last_hash` of
    an earlier answer, kept outside the database), that row must still hold that hash.
    One answer verifies `limit` rows at most: while `complete` is false, ask again with
    `after_seq`/`after_hash` set to its `last_seq`/`last_hash` (that row must still hold
    that hash; the answer goes on after it). The whole chain is verified when every page
    has answered `ok: true` and the last `complete: true`.
    The platform organisation's officers only (403 for another organisation's DPO): the
    chain spans every organisation.
    """
    actor = current_actor()
    decision = decide(actor, Permission.AUDIT_VERIFY)
    if not decision.allowed:
        denied = Forbidden(
            "Only the platform organisation's officers verify the audit chain: it spans every "
            "organisation."
        )
        denied.audit = {
            "action": str(Permission.AUDIT_VERIFY),
            "resource_type": "audit",
            "decision": "deny",
            "reason": decision.reason,
        }
        raise denied
    anchors = {args["anchor_seq"]: args["anchor_hash"]} if "anchor_seq" in args else None
    # End the transaction the authentication read opened before sealing in sessions of
    # its own: on SQLite every transaction holds the single write lock (BEGIN IMMEDIATE),
    # so the sealer would otherwise wait on this request until the busy timeout (500).
    db.session.commit()
    service.seal_all(db.session_factory_for(current_app))
    after = (args["after_seq"], args["after_hash"]) if "after_seq" in args else None
    result = service.verify_chain(db.session, anchors=anchors, after=after, limit=args["limit"])
    service.record(
        db.session,
        actor,
        str(Permission.AUDIT_VERIFY),
        resource_type="audit",
        details={
            "ok": result.ok,
            "checked": result.checked,
            "anchored": anchors is not None,
            "after_seq": after[0] if after is not None else None,
            "complete": result.complete,
        },
    )
    db.session.commit()
    return asdict(result)
