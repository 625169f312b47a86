"""Reports for the data-protection officer: JSON pages, or CSV (`Accept: text/csv` or
`?format=csv`) with the same rows in the same order."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, request
from sqlalchemy.orm import Session

from referral_api.access.permissions import Permission
from referral_api.dpo import ropa, service
from referral_api.dpo.csv_output import render_csv
from referral_api.dpo.schemas import (
    AccessLogArgsSchema,
    AccessLogRowSchema,
    ConsentExpiringRowSchema,
    ConsentsExpiringArgsSchema,
    ConsentSummaryRowSchema,
    DisclosureRowSchema,
    DisclosuresArgsSchema,
    ErasureRowSchema,
    OverrideRowSchema,
    OverridesArgsSchema,
    ProcessingRowSchema,
    QualityArgsSchema,
    QualityRowSchema,
    ReportFilterArgsSchema,
    ReportPageArgsSchema,
    RetentionDueArgsSchema,
    RetentionDueSchema,
    RopaSchema,
    SignInFailureRowSchema,
)
from referral_api.extensions import db
from referral_api.pagination import Page, link_header
from referral_api.smorest import Blueprint, current_actor

blp = Blueprint(
    "dpo", __name__, url_prefix="/api/v1", description="Reports for the data-protection officer"
)

_CSV = "text/csv"
# The CSV alternative, documented next to the JSON body of every report.
_csv_doc = blp.alt_response(
    200,
    description="A page of rows (JSON), or every row as CSV (`Accept: text/csv` or `format=csv`)",
    schema={"type": "string"},
    content_type=_CSV,
    success=True,
)


def _wants_csv(args: dict[str, Any]) -> bool:
    if args.get("format"):
        return bool(args["format"] == "csv")
    return request.accept_mimetypes.best_match(["application/json", _CSV]) == _CSV


def _csv(report: service.Report, session: Session) -> Response:
    def body() -> Iterator[str]:
        try:
            yield from render_csv(report.columns, report.rows)
        finally:
            # The rows are read through the request's session after the request has been
            # torn down (no request context is needed for it): end that read transaction
            # here, as soon as the last row is out (on SQLite it holds the write lock).
            session.close()

    return Response(
        body(),
        mimetype=_CSV,
        headers={"Content-Disposition": f'attachment; filename="{report.name}.csv"'},
    )


def _report(run: Callable[..., service.Report], args: dict[str, Any], *extra: Any) -> Any:
    """Run one report: CSV streams every row; JSON is a page with a `Link` to the next."""
    actor = current_actor()
    if _wants_csv(args):
        session = db.session
        report = run(session, actor, {**args, "limit": None}, *extra)
        session.commit()  # the audit row is on the record before the first byte
        return _csv(report, session)
    report = run(db.session, actor, args, *extra)
    rows = list(report.rows)
    db.session.commit()
    headers = link_header(Page(rows, report.next_cursor), args["limit"]) if "limit" in args else {}
    return rows, 200, headers


@blp.route("/dpo/reports/consent-summary", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(ReportFilterArgsSchema, location="query")
@blp.response(200, ConsentSummaryRowSchema(many=True))
@_csv_doc
def consent_summary(args: dict[str, Any]) -> Any:
    """Consents and provisions by state, purpose, recipient and organisation

    States are derived from the consent events as a disclosure decision derives them; an
    active consent whose provisions have all ended counts as expired.
    """
    return _report(service.consent_summary, args)


@blp.route("/dpo/reports/consents-expiring", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(ConsentsExpiringArgsSchema, location="query")
@blp.response(200, ConsentExpiringRowSchema(many=True))
@_csv_doc
def consents_expiring(args: dict[str, Any]) -> Any:
    """Provisions of active consents ending within `within_days`"""
    return _report(service.consents_expiring, args)


@blp.route("/dpo/reports/processing-without-basis", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(ReportPageArgsSchema, location="query")
@blp.response(200, ProcessingRowSchema(many=True))
@_csv_doc
def processing_without_basis(args: dict[str, Any]) -> Any:
    """Live referrals and disclosures no active consent provision or approved override covers

    Empty in a healthy system.
    """
    return _report(service.processing_without_basis, args)


@blp.route("/dpo/reports/overrides", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(OverridesArgsSchema, location="query")
@blp.response(200, OverrideRowSchema(many=True))
@_csv_doc
def overrides(args: dict[str, Any]) -> Any:
    """Legal-basis overrides: reason, requester, approver and the DPO's review"""
    return _report(service.overrides, args)


@blp.route("/dpo/overrides/<uuid:referral_id>/review", methods=["POST"])
@blp.requires(Permission.DPO_REPORTS)
@blp.repeatable("a review is recorded once; a repeat answers 409 and records nothing.")
@blp.response(200, OverrideRowSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def review_override(referral_id: uuid.UUID) -> Any:
    """Record the DPO's review of an override (once)

    The sending organisation's DPO, or a DPO of the platform organisation, reviews it.
    """
    row = service.review_override(db.session, current_actor(), referral_id)
    db.session.commit()
    return row


@blp.route("/dpo/reports/disclosures", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(DisclosuresArgsSchema, location="query")
@blp.response(200, DisclosureRowSchema(many=True))
@_csv_doc
def disclosures(args: dict[str, Any]) -> Any:
    """Disclosures from and to the organisation: recipient, categories, basis, times"""
    return _report(service.disclosures, args)


@blp.route("/dpo/reports/access-log", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(AccessLogArgsSchema, location="query")
@blp.response(200, AccessLogRowSchema(many=True))
@blp.alt_response(404, response="NOT_FOUND")
@_csv_doc
def access_log(args: dict[str, Any]) -> Any:
    """Every access to one case: who, role, organisation, when, what, decision, basis"""
    return _report(service.access_log, args)


@blp.route("/dpo/reports/erasures", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(ReportPageArgsSchema, location="query")
@blp.response(200, ErasureRowSchema(many=True))
@_csv_doc
def erasures(args: dict[str, Any]) -> Any:
    """The erasure register: tombstones with proof of what was destroyed"""
    return _report(service.erasures, args)


@blp.route("/dpo/reports/sign-in-failures", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(ReportPageArgsSchema, location="query")
@blp.response(200, SignInFailureRowSchema(many=True))
@_csv_doc
def sign_in_failures(args: dict[str, Any]) -> Any:
    """Refused sign-ins and replayed refresh tokens on the organisation's accounts"""
    return _report(service.sign_in_failures, args)


@blp.route("/dpo/reports/quality", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(QualityArgsSchema, location="query")
@blp.response(200, QualityRowSchema(many=True))
@_csv_doc
def quality(args: dict[str, Any]) -> Any:
    """Consents without evidence, minors without a guardian, unknown notice versions"""
    known = list(current_app.config.get("KNOWN_NOTICE_VERSIONS") or [])
    return _report(service.quality, args, known)


@blp.route("/dpo/reports/retention-due", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.arguments(RetentionDueArgsSchema, location="query")
@blp.response(200, RetentionDueSchema(many=True))
@_csv_doc
def retention_due(args: dict[str, Any]) -> Any:
    """Closed cases past their retention period (legal holds flagged)"""
    return _report(service.retention_due, args, current_app.config["RETENTION_POLICY"])


@blp.route("/dpo/ropa", methods=["GET"])
@blp.requires(Permission.DPO_REPORTS)
@blp.response(200, RopaSchema)
def record_of_processing() -> Any:
    """Record of processing activities (GDPR Art. 30), generated from code and configuration"""
    body = ropa.record_of_processing(
        db.session,
        current_actor(),
        current_app.config,
        current_app.extensions["referral_api.crypto"],
    )
    db.session.commit()
    return body
