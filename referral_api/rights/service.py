"""Data-subject rights (GDPR Art. 15, 17, 18, 20): export, erasure by crypto-shredding,
restriction, legal holds and retention. No Flask; (session, actor, …); never commits."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, false, func, or_, select, update
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.categories import ALL_CATEGORIES
from referral_api.access.permissions import Permission
from referral_api.access.policy import decide_report_scope
from referral_api.access.roles import Role
from referral_api.audit import service as audit
from referral_api.audit.models import AuditEvent
from referral_api.cases.layout import project
from referral_api.cases.models import (
    Case,
    CaseNote,
    CaseSearchIndex,
    CaseStatus,
    CaseStatusChange,
)
from referral_api.crypto.fields import ciphertext_attrs, crypto_of, encrypted_models
from referral_api.crypto.models import CaseKey
from referral_api.exceptions import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    ReferralApiError,
    ValidationFailed,
)
from referral_api.pagination import Page, paginate
from referral_api.rights.models import (
    ErasureBasis,
    ErasureRequest,
    ErasureStatus,
    ErasureTombstone,
    LegalHold,
    SubjectExport,
)


class LegalHoldActive(ReferralApiError):
    status = 409
    title = "Legal hold"
    problem_type = "/problems/legal-hold"


def now() -> datetime:
    return datetime.now(UTC)


def _case_for(session: Session, actor: Actor, action: Permission, case_id: uuid.UUID) -> Case:
    """Own organisation's case (platform DPO: any) for a rights action: 404 outside scope,
    410 once erased (cases.service.authorize)."""
    from referral_api.cases.service import authorize

    case, _ = authorize(session, actor, action, case_id)
    return case


def _audit(session: Session, actor: Actor, action: str, case_id: uuid.UUID, **extra: Any) -> None:
    audit.record(
        session, actor, action, resource_type="case", resource_id=case_id, case_id=case_id, **extra
    )


# ---- legal hold ---------------------------------------------------------------------------


def _lock_case(session: Session, case: Case) -> None:
    """The case row, read again FOR UPDATE: placing a legal hold and erasing (retention's
    included) both take it first, so one waits for the other and then sees what it did —
    never an erasure of a case held at the same moment (PostgreSQL; SQLite runs one writer
    at a time)."""
    session.refresh(case, with_for_update=True)


def _lock_case_to_erase(session: Session, case: Case) -> None:
    """An erasure's locks: the case's consents first (FOR UPDATE; the erasure clears their
    ciphertexts), then the case row (`_lock_case`). Everything else that holds both takes
    them in this order — a withdrawal (the consent, then the row when it writes its event),
    a send (the consents FOR SHARE, then the row) — so a withdrawal in flight is waited for
    or waits, never a deadlock in which PostgreSQL kills one of them."""
    from referral_api.consent.models import ConsentRecord

    session.execute(
        select(ConsentRecord.id)
        .where(ConsentRecord.case_id == case.id)
        .order_by(ConsentRecord.id)
        .with_for_update()
    )
    _lock_case(session, case)


def active_hold(session: Session, case_id: uuid.UUID) -> LegalHold | None:
    return session.scalars(
        select(LegalHold).where(LegalHold.case_id == case_id, LegalHold.lifted_at.is_(None))
    ).first()


def set_legal_hold(
    session: Session, actor: Actor, case_id: uuid.UUID, hold: bool, reason: str | None
) -> LegalHold | None:
    case = _case_for(session, actor, Permission.CASE_LEGAL_HOLD, case_id)
    _lock_case(session, case)
    if case.erased:  # erased since it was authorised (we waited on its row)
        raise Gone.case_erased(case.id)
    current = active_hold(session, case.id)
    if hold:
        if current is not None:
            raise Conflict("A legal hold is already in place.")
        if not reason:
            raise ValidationFailed({"reason": ["A legal hold needs a reason."]})
        current = LegalHold(
            id=uuid.uuid4(), case_id=case.id, org_id=case.org_id, placed_by=actor.id
        )
        current.reason = reason
        session.add(current)
    else:
        if current is None:
            raise Conflict("There is no legal hold to lift.")
        current.lifted_by, current.lifted_at = actor.id, now()
    session.flush()
    _audit(session, actor, "case:legal-hold", case.id, details={"hold": hold})
    return current


def legal_hold_now(
    session: Session, actor: Actor, case_id: uuid.UUID
) -> tuple[Case, LegalHold | None]:
    """The case's legal hold as it is now (what a retried hold or lift answers): the hold in
    place, or else the one lifted last (None if there never was one)."""
    case = _case_for(session, actor, Permission.CASE_LEGAL_HOLD, case_id)
    hold = (
        active_hold(session, case.id)
        or session.scalars(
            select(LegalHold)
            .where(LegalHold.case_id == case.id, LegalHold.lifted_at.is_not(None))
            .order_by(LegalHold.lifted_at.desc(), LegalHold.id)
            .limit(1)
        ).first()
    )
    _audit(session, actor, "case:legal-hold-read", case.id)
    return case, hold


# ---- restriction (Art. 18) ----------------------------------------------------------------


def set_restriction(session: Session, actor: Actor, case_id: uuid.UUID, restricted: bool) -> Case:
    case = _case_for(session, actor, Permission.CASE_RESTRICT, case_id)
    if case.restricted == restricted:
        raise Conflict("The case is already " + ("restricted." if restricted else "unrestricted."))
    case.restricted = restricted
    case.updated_at = now()
    session.flush()
    _audit(session, actor, "case:restrict" if restricted else "case:lift-restriction", case.id)
    return case


def restriction_now(session: Session, actor: Actor, case_id: uuid.UUID) -> Case:
    """The case whose restriction a retried request set, read through the policy now (and
    on the record, as every answer about a case is)."""
    case = _case_for(session, actor, Permission.CASE_RESTRICT, case_id)
    _audit(session, actor, "case:restriction-read", case.id)
    return case


# ---- erasure (Art. 17) --------------------------------------------------------------------


def request_erasure(
    session: Session, actor: Actor, case_id: uuid.UUID, basis: ErasureBasis
) -> ErasureRequest:
    case = _case_for(session, actor, Permission.CASE_ERASURE_REQUEST, case_id)
    if session.scalar(
        select(ErasureRequest).where(
            ErasureRequest.case_id == case.id, ErasureRequest.status == ErasureStatus.PENDING
        )
    ):
        raise Conflict("An erasure request for this case is already pending.")
    request = ErasureRequest(
        id=uuid.uuid4(),
        case_id=case.id,
        org_id=case.org_id,
        basis=basis,
        status=ErasureStatus.PENDING,
        requested_by=actor.id,
    )
    session.add(request)
    session.flush()
    _audit(
        session,
        actor,
        "case:erasure-request",
        case.id,
        details={"request_id": str(request.id), "basis": basis.value},
    )
    return request


def read_erasure_request(
    session: Session, actor: Actor, case_id: uuid.UUID, request_id: uuid.UUID
) -> ErasureRequest:
    """An erasure request of the case as it is now (what a retried request answers): 404,
    on the record, for one of another case."""
    case = _case_for(session, actor, Permission.CASE_ERASURE_REQUEST, case_id)
    request = session.get(ErasureRequest, request_id)
    if request is None or request.case_id != case.id:
        raise _denied(
            NotFound(),
            "case:erasure-request",
            case.id,
            "no such request",
            {"request_id": str(request_id)},
        )
    # Shown, so on the case's access log as a listed request is (`erasure:list`).
    audit.record(
        session,
        actor,
        "erasure:read",
        resource_type="erasure_request",
        resource_id=request.id,
        case_id=request.case_id,
    )
    return request


def organisations_in_scope(actor: Actor, action: Permission) -> uuid.UUID | None:
    """Whose records a subject-rights list reads, as the policy decides: the actor's
    organisation, or every one (None) for the platform organisation's officers."""
    decision, org_id = decide_report_scope(actor, action, None)
    if not decision.allowed:
        raise Forbidden("Your role does not allow this action.")
    return org_id


def erasure_requests(
    session: Session, actor: Actor, status: ErasureStatus, cursor: str | None, limit: int
) -> Page:
    """A page of the erasure requests in `status` of the organisations in scope, oldest
    first. Like a case list, each request shown is an audit row on its case's access log."""
    org_id = organisations_in_scope(actor, Permission.ERASURE_APPROVE)
    stmt = select(ErasureRequest).where(ErasureRequest.status == status)
    if org_id is not None:
        stmt = stmt.where(ErasureRequest.org_id == org_id)
    page = paginate(
        session,
        stmt,
        created_col=ErasureRequest.requested_at,
        id_col=ErasureRequest.id,
        cursor=cursor,
        limit=limit,
        oldest_first=True,
    )
    requests: list[ErasureRequest] = page.items
    audit.record_many(
        session,
        actor,
        "erasure:list",
        resource_type="erasure_request",
        rows=[{"resource_id": r.id, "case_id": r.case_id} for r in requests],
        none_shown={"status": status.value, "shown": 0},
    )
    return page


def approve_erasure(session: Session, actor: Actor, request_id: uuid.UUID) -> ErasureTombstone:
    """The DPO approves (two different people: never the requester); refused under a legal
    hold; executed at once, in this transaction."""
    request = session.get(ErasureRequest, request_id)
    if request is None:
        raise _denied(
            NotFound(),
            "case:erase-approve",
            None,
            "no such request",
            {"request_id": str(request_id)},
        )
    try:
        case = _case_for(session, actor, Permission.ERASURE_APPROVE, request.case_id)
    except Gone:
        # In scope (authorize decides scope before erasure), and already erased: a request
        # decided before is a conflict, not a vanished case.
        if request.status is not ErasureStatus.PENDING:
            raise Conflict("This erasure request was already decided.") from None
        raise
    if actor.role is not Role.DPO:
        raise _denied(
            Forbidden("A data-protection officer approves erasures."),
            "case:erase-approve",
            case.id,
            "not a dpo",
            {"request_id": str(request.id)},
        )
    if request.status is not ErasureStatus.PENDING:
        raise Conflict("This erasure request was already decided.")
    if request.requested_by == actor.id:
        raise _denied(
            Forbidden("The approver must be another person than the requester."),
            "case:erase-approve",
            case.id,
            "approver is the requester",
            {"request_id": str(request.id)},
        )
    _lock_case_to_erase(session, case)
    if case.erased:  # erased since it was authorised (we waited on its row)
        raise Gone.case_erased(case.id)
    if active_hold(session, case.id) is not None:
        raise _denied(
            LegalHoldActive("A legal hold is in place: the case cannot be erased."),
            "case:erase-approve",
            case.id,
            "legal hold",
            {"request_id": str(request.id)},
        )
    request.status, request.decided_by, request.decided_at = ErasureStatus.EXECUTED, actor.id, now()
    return erase_case(
        session,
        actor,
        case,
        request.basis,
        request_id=request.id,
        requested_by=request.requested_by,
    )


def erase_case(
    session: Session,
    actor: Actor,
    case: Case,
    basis: ErasureBasis,
    *,
    request_id: uuid.UUID | None,
    requested_by: uuid.UUID | None,
) -> ErasureTombstone:
    """Crypto-shredding in one transaction: destroy every data-key version of the case, clear
    every ciphertext column, delete blind-index entries and derived copies, cancel open
    referrals, keep a tombstone without personal data, audit it."""
    from referral_api.consent.models import ConsentRecord
    from referral_api.idempotency import ERASED as IDEMPOTENCY_ERASED
    from referral_api.idempotency import IdempotencyRecord, IdempotentResponse
    from referral_api.referrals.models import (
        Disclosure,
        Notification,
        Referral,
        ReferralTransition,
    )
    from referral_api.referrals.vocabulary import OPEN_STATUSES, ReferralStatus

    _lock_case_to_erase(session, case)
    if case.erased:  # erased since it was authorised (we waited on its row)
        raise Gone.case_erased(case.id)
    if active_hold(session, case.id) is not None:
        raise LegalHoldActive("A legal hold is in place: the case cannot be erased.")
    at = now()
    # Proof: a digest of the wrapped keys destroyed (useless for unwrapping).
    wrapped = sorted(session.scalars(select(CaseKey.wrapped_key).where(CaseKey.case_id == case.id)))
    key_digest = hashlib.sha256(b"".join(wrapped)).hexdigest()

    models = encrypted_models()
    # What is destroyed is what was held: counted before anything below adds rows.
    cleared = 0
    for model in models:
        owner = model.id if model is Case else model.case_id
        for attr in ciphertext_attrs(model):
            column = getattr(model, attr)
            cleared += (
                session.scalar(
                    select(func.count())
                    .select_from(model)
                    .where(owner == case.id, column.is_not(None))
                )
                or 0
            )

    # Open referrals are cancelled first, while the case key still exists: the history rows
    # this adds are encrypted records too (their note is encrypted even when empty), and
    # are cleared below with everything else.
    cancelled = 0
    told: set[tuple[uuid.UUID, uuid.UUID]] = set()
    for referral in session.scalars(
        select(Referral)
        .where(Referral.case_id == case.id, Referral.status.in_(sorted(OPEN_STATUSES)))
        .order_by(Referral.id)
        # Locked and read again: one changed meanwhile (the receiver opening its case from
        # it) is seen as it committed, not failed as a stale write.
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all():
        previous = referral.status
        transition = ReferralTransition(
            id=uuid.uuid4(),
            referral_id=referral.id,
            case_id=case.id,
            from_status=previous,
            to_status=ReferralStatus.CANCELLED,
            reason="case_erased",
            actor_id=actor.id,
            actor_org_id=actor.org_id,
        )
        transition.note = None
        session.add(transition)
        referral.status, referral.status_reason, referral.updated_at = (
            ReferralStatus.CANCELLED,
            "case_erased",
            at,
        )
        if previous is not ReferralStatus.DRAFT:
            # The receiver learns that the referral ended (Art. 19), like any cancellation;
            # a draft was never sent, so its receiver does not know it existed.
            told.add((referral.id, referral.to_org_id))
            for org_id in (referral.from_org_id, referral.to_org_id):
                session.add(
                    Notification(
                        id=uuid.uuid4(),
                        org_id=org_id,
                        referral_id=referral.id,
                        event="referral:cancelled",
                        status=ReferralStatus.CANCELLED.value,
                    )
                )
        audit.record(
            session,
            actor,
            "referral:cancelled",
            resource_type="referral",
            resource_id=referral.id,
            case_id=case.id,
            purpose=referral.purpose.value,
            reason="case_erased",
            details={"from": previous.value},
        )
        cancelled += 1
    session.flush()

    recipients_told = 0
    # Art. 19: every organisation that received data about the person learns of the
    # erasure, so it can act on its own copy (its own case is its own record: this
    # controller cannot erase it). Receivers of a referral cancelled above already know.
    for referral_id, org_id in session.execute(
        select(Disclosure.referral_id, Disclosure.to_org_id)
        .where(Disclosure.case_id == case.id)
        .group_by(Disclosure.referral_id, Disclosure.to_org_id)
        .order_by(Disclosure.referral_id)
    ):
        if (referral_id, org_id) not in told:
            session.add(
                Notification(
                    id=uuid.uuid4(), org_id=org_id, referral_id=referral_id, event="case:erased"
                )
            )
            recipients_told += 1
    session.flush()

    for model in models:
        columns = ciphertext_attrs(model)
        owner = model.id if model is Case else model.case_id
        session.execute(
            update(model)
            .where(owner == case.id)
            .values({getattr(model, a): None for a in columns})
            .execution_options(synchronize_session=False)
        )
    # A digest of the consent form is derived from the person's document: with the document
    # gone, a digest could still confirm a guessed copy of it.
    session.execute(
        update(ConsentRecord)
        .where(ConsentRecord.case_id == case.id)
        .values(evidence_sha256=None, evidence_media_type=None)
        .execution_options(synchronize_session=False)
    )
    # The receiver's workflow code is plaintext shown to the sender; older rows may hold text
    # written before it had to be a code.
    session.execute(
        update(Referral)
        .where(Referral.case_id == case.id)
        # Its message went with the ciphertexts above: a new representation, a new ETag.
        .values(business_status=None, version=Referral.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(IdempotentResponse).where(IdempotentResponse.case_id == case.id))
    # The keys stay (a retry must not do the work again: it answers 410), not the digest of
    # each request's body, which could confirm a guessed copy of a message or an intake, nor
    # the id of what a request made (an export deleted here, a legal hold).
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.case_id == case.id)
        .values(body_sha256=IDEMPOTENCY_ERASED, resource_id=None)
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(SubjectExport).where(SubjectExport.case_id == case.id))
    index_deleted = session.execute(
        delete(CaseSearchIndex).where(CaseSearchIndex.case_id == case.id)
    ).rowcount  # type: ignore[attr-defined]
    keys_deleted = session.execute(delete(CaseKey).where(CaseKey.case_id == case.id)).rowcount  # type: ignore[attr-defined]
    crypto_of(session).cache.discard_case(case.id)
    # Objects still in the session hold the ciphertexts (and decrypted values) in memory.
    session.expire_all()

    # Any other request still pending for this case (e.g. erased by the retention schedule
    # meanwhile) is settled by this erasure.
    for other in session.scalars(
        select(ErasureRequest).where(
            ErasureRequest.case_id == case.id,
            ErasureRequest.status == ErasureStatus.PENDING,
        )
    ):
        other.status, other.decided_by, other.decided_at = ErasureStatus.EXECUTED, actor.id, at

    case = session.get(Case, case.id)  # type: ignore[assignment]
    case.erased = True
    case.restricted = False
    case.key_version = None
    case.status = CaseStatus.CLOSED
    case.closed_at = case.closed_at or at
    case.updated_at = at
    tombstone = ErasureTombstone(
        id=uuid.uuid4(),
        case_id=case.id,
        org_id=case.org_id,
        request_id=request_id,
        basis=basis,
        requested_by=requested_by,
        approved_by=actor.id,
        erased_at=at,
        data_keys_destroyed=keys_deleted,
        ciphertexts_cleared=cleared,
        index_entries_deleted=index_deleted,
        referrals_cancelled=cancelled,
        key_digest=key_digest,
    )
    session.add(tombstone)
    session.flush()
    _audit(
        session,
        actor,
        "case:erase",
        case.id,
        legal_basis=f"gdpr-17:{basis.value}",
        details={
            "tombstone_id": str(tombstone.id),
            "data_keys_destroyed": keys_deleted,
            "ciphertexts_cleared": cleared,
            "index_entries_deleted": index_deleted,
            "referrals_cancelled": cancelled,
            "recipients_notified": recipients_told,
            "key_digest": key_digest,
        },
    )
    return tombstone


# ---- subject access (Art. 15/20) ----------------------------------------------------------


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


_ACCESS_LOG_BATCH = 5_000


def build_export(session: Session, case: Case) -> dict[str, Any]:
    """Everything held about the person: case fields, the case's status history (codes),
    notes, consents with their terms
    (grantor, legal basis, notice, jurisdiction), signed form (evidence) and events (with the
    reasons given), referrals with the override justification, their history (with notes)
    and their message threads, disclosures (who received what, when), legal holds (with
    their reasons), erasure requests, and the access log."""
    from referral_api.consent.models import ConsentRecord
    from referral_api.referrals.models import (
        Disclosure,
        Referral,
        ReferralMessage,
        ReferralTransition,
    )

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, (uuid.UUID,)):
            return str(value)
        if hasattr(value, "value") and not isinstance(value, (str, int)):
            return value.value
        return _iso(value)

    notes = session.scalars(
        select(CaseNote).where(CaseNote.case_id == case.id).order_by(CaseNote.created_at)
    ).all()
    status_history = session.scalars(
        select(CaseStatusChange)
        .where(CaseStatusChange.case_id == case.id)
        .order_by(CaseStatusChange.created_at, CaseStatusChange.id)
    ).all()
    consents = session.scalars(select(ConsentRecord).where(ConsentRecord.case_id == case.id)).all()
    referrals = session.scalars(select(Referral).where(Referral.case_id == case.id)).all()
    disclosures = session.scalars(select(Disclosure).where(Disclosure.case_id == case.id)).all()
    holds = session.scalars(
        select(LegalHold).where(LegalHold.case_id == case.id).order_by(LegalHold.placed_at)
    ).all()
    erasures = session.scalars(
        select(ErasureRequest)
        .where(ErasureRequest.case_id == case.id)
        .order_by(ErasureRequest.requested_at)
    ).all()

    def per_referral(model: Any) -> dict[uuid.UUID, list[Any]]:
        """The case's records of `model` (history, thread) by referral, oldest first."""
        grouped: dict[uuid.UUID, list[Any]] = {}
        for record in session.scalars(
            select(model).where(model.case_id == case.id).order_by(model.created_at, model.id)
        ):
            grouped.setdefault(record.referral_id, []).append(record)
        return grouped

    history = per_referral(ReferralTransition)
    threads = per_referral(ReferralMessage)
    # A case's access log grows with every list page that shows it: read as plain tuples of
    # the columns shown, a batch at a time, not as ORM rows held by the session.
    accesses = session.execute(
        select(
            AuditEvent.occurred_at,
            AuditEvent.actor_id,
            AuditEvent.actor_role,
            AuditEvent.actor_org_id,
            AuditEvent.action,
            AuditEvent.decision,
            AuditEvent.categories,
        )
        .where(AuditEvent.case_id == case.id)
        .order_by(AuditEvent.id)
        .execution_options(yield_per=_ACCESS_LOG_BATCH)
    )
    document: dict[str, Any] = plain(
        {
            "format": "referral-api-subject-export-1",
            "generated_at": now(),
            "case": project(case, ALL_CATEGORIES),
            # Found by review: the case's own history (codes only) is about the person too.
            "status_history": [
                {
                    "from_status": s.from_status,
                    "to_status": s.to_status,
                    "reason": s.reason,
                    "at": s.created_at,
                }
                for s in status_history
            ],
            "notes": [
                {"id": n.id, "category": n.category, "created_at": n.created_at, "text": n.text}
                for n in notes
            ],
            "consents": [
                {
                    "id": c.id,
                    "grantor": c.grantor,
                    "guardian_relation": c.guardian_relation,
                    "is_minor": c.is_minor,
                    "collection_method": c.collection_method,
                    "language": c.language,
                    "notice_version": c.notice_version,
                    "jurisdiction": c.jurisdiction,
                    "article6": c.article6,
                    "article9": c.article9,
                    "recorded_by_org_id": c.captured_by_org_id,
                    "created_at": c.created_at,
                    "provisions": [
                        {
                            "purpose": p.purpose,
                            "recipient_org_id": p.recipient_org_id,
                            "recipient_org_type": p.recipient_org_type,
                            "categories": p.categories.split(","),
                            "valid_from": p.valid_from,
                            "valid_until": p.valid_until,
                        }
                        for p in c.provisions
                    ],
                    "evidence": (
                        {"media_type": c.evidence_media_type, "content_base64": c.evidence}
                        if c.evidence
                        else None
                    ),
                    "events": [
                        {
                            "event_type": e.event_type,
                            "occurred_at": e.occurred_at,
                            "reason": e.reason,
                        }
                        for e in c.events
                    ],
                }
                for c in consents
            ],
            "referrals": [
                {
                    "id": r.id,
                    "to_org_id": r.to_org_id,
                    "purpose": r.purpose,
                    "categories": r.categories.split(","),
                    "status": r.status,
                    "status_reason": r.status_reason,
                    "outcome": r.outcome,
                    "created_at": r.created_at,
                    "sent_at": r.sent_at,
                    "message": r.message,
                    "override_reason": r.override_reason,
                    "override_note": r.override_note,
                    "history": [
                        {
                            "from_status": t.from_status,
                            "to_status": t.to_status,
                            "reason": t.reason,
                            "at": t.created_at,
                            "by_org_id": t.actor_org_id,
                            "note": t.note,
                        }
                        for t in history.get(r.id, [])
                    ],
                    "messages": [
                        {"from_org_id": m.author_org_id, "at": m.created_at, "body": m.body}
                        for m in threads.get(r.id, [])
                    ],
                }
                for r in referrals
            ],
            "disclosures": [
                {
                    "to_org_id": d.to_org_id,
                    "categories": d.categories.split(","),
                    "purpose": d.purpose,
                    "basis_type": d.basis_type,
                    "disclosed_at": d.disclosed_at,
                    "acknowledged_at": d.acknowledged_at,
                }
                for d in disclosures
            ],
            "legal_holds": [
                {
                    "org_id": h.org_id,
                    "placed_at": h.placed_at,
                    "lifted_at": h.lifted_at,
                    "reason": h.reason,
                }
                for h in holds
            ],
            "erasure_requests": [
                {
                    "basis": e.basis,
                    "status": e.status,
                    "requested_at": e.requested_at,
                    "decided_at": e.decided_at,
                }
                for e in erasures
            ],
        }
    )
    # Plain already (strings, None, lists of strings): not copied again by `plain`.
    document["access_log"] = [
        {
            "occurred_at": occurred_at.isoformat(),
            "actor_id": str(actor_id) if actor_id is not None else None,
            "actor_role": actor_role,
            "actor_org_id": str(actor_org_id) if actor_org_id is not None else None,
            "action": action,
            "decision": decision,
            "categories": categories.split(",") if categories else [],
        }
        for (
            occurred_at,
            actor_id,
            actor_role,
            actor_org_id,
            action,
            decision,
            categories,
        ) in accesses
    ]
    return document


def purge_expired_exports(session: Session, actor: Actor, at: datetime | None = None) -> int:
    """Clear the document of every export that expired without being downloaded (a
    download clears its own), so no copy of a person's record outlives its time to live;
    the row (who asked, when, the encrypted reason) stays as the record of the request.
    Run with every new export and by `referral-api retention run --apply`; audited when it
    clears anything."""
    table = SubjectExport.__table__
    result = session.execute(
        update(table)
        .where(table.c.expires_at <= (at or now()), table.c.document.is_not(None))
        .values(document=None)
    )
    cleared = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if cleared:
        audit.record(
            session, actor, "export:purge", resource_type="export", details={"cleared": cleared}
        )
    return cleared


def create_export(
    session: Session, actor: Actor, case_id: uuid.UUID, reason: str, ttl: timedelta
) -> SubjectExport:
    case = _case_for(session, actor, Permission.CASE_EXPORT, case_id)
    if actor.role is not Role.SUPERVISOR and actor.kind is not ActorKind.SYSTEM:
        raise _denied(
            Forbidden("A supervisor of the owning organisation exports a person's data."),
            "case:export",
            case.id,
            "not a supervisor",
        )
    purge_expired_exports(session, actor)
    export = SubjectExport(
        id=uuid.uuid4(), case_id=case.id, requested_by=actor.id, expires_at=now() + ttl
    )
    export.reason = reason
    session.add(export)
    session.flush()
    # The access log inside the export includes this export's own audit row.
    _audit(
        session,
        actor,
        "case:export",
        case.id,
        categories=[c.value for c in ALL_CATEGORIES],
        details={"export_id": str(export.id)},
    )
    session.flush()
    export.document = json.dumps(build_export(session, case), ensure_ascii=False, sort_keys=True)
    session.flush()
    return export


def _spent(export: SubjectExport) -> bool:
    """Downloaded (once is all), expired, or cleared: its document is no longer handed out."""
    return (
        export.downloaded_at is not None or export.expires_at <= now() or export.document_ct is None
    )


def read_export(
    session: Session, actor: Actor, case_id: uuid.UUID, export_id: uuid.UUID
) -> SubjectExport:
    """An export's record, never its document (what a retried export request answers), for
    its requester only: 404, on the record, otherwise."""
    case = _case_for(session, actor, Permission.CASE_EXPORT, case_id)
    export = session.get(SubjectExport, export_id)
    if export is None or export.case_id != case.id or export.requested_by != actor.id:
        raise _denied(
            NotFound(), "case:export", case.id, "no such export", {"export_id": str(export_id)}
        )
    if _spent(export):
        # Its download link would answer 410: the retry is not offered it again.
        raise _denied(
            Gone("This export was already downloaded or has expired."),
            "case:export",
            case.id,
            "export already downloaded" if export.downloaded_at else "export expired",
            {"export_id": str(export.id)},
        )
    _audit(session, actor, "case:export-read", case.id, details={"export_id": str(export.id)})
    return export


def _denied(
    error: ReferralApiError,
    action: str,
    case_id: uuid.UUID | None,
    reason: str,
    details: dict[str, Any] | None = None,
) -> ReferralApiError:
    """A refusal recorded like every other (DESIGN §9): ids and a reason code only."""
    error.audit = {
        "action": action,
        "resource_type": "case",
        "resource_id": str(case_id) if case_id is not None else None,
        "case_id": case_id,
        "decision": audit.DENY,
        "reason": reason,
        "details": details,
    }
    return error


def _download_denied(
    error: ReferralApiError, export_id: uuid.UUID, case_id: uuid.UUID | None, reason: str
) -> ReferralApiError:
    """A refused download is an attempt on a person's whole record: on the record too."""
    return _denied(error, "case:export-download", case_id, reason, {"export_id": str(export_id)})


def download_export(session: Session, actor: Actor, export_id: uuid.UUID) -> str:
    export = session.get(SubjectExport, export_id)
    if export is None:
        raise _download_denied(NotFound(), export_id, None, "no such export")
    _case_for(session, actor, Permission.CASE_EXPORT, export.case_id)
    if export.requested_by != actor.id:
        raise _download_denied(NotFound(), export.id, export.case_id, "not the requester")
    # Downloadable once: two downloads at the same moment (a double click, a retry, a stolen
    # token) would both find it not yet downloaded. The row is read again under its lock, so
    # the second waits for the first and then finds it taken (or gone with an erasure).
    export = session.get(SubjectExport, export_id, with_for_update=True, populate_existing=True)
    if export is None:
        raise _download_denied(NotFound(), export_id, None, "no such export")
    if _spent(export):
        raise _download_denied(
            Gone("This export was already downloaded or has expired."),
            export.id,
            export.case_id,
            "export already downloaded" if export.downloaded_at else "export expired",
        )
    document = str(export.document)
    export.downloaded_at = now()
    export.document_ct = None  # downloadable once: the ciphertext is cleared
    session.flush()
    _audit(
        session,
        actor,
        "case:export-download",
        export.case_id,
        categories=[c.value for c in ALL_CATEGORIES],  # the whole record is handed out
        details={"export_id": str(export.id)},
    )
    return document


# ---- retention ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionDue:
    case_id: uuid.UUID
    org_id: uuid.UUID
    case_type: str
    closed_at: datetime
    due_at: datetime
    legal_hold: bool
    # Processing restricted (Art. 18): stored, not processed, so not erased by retention
    # either (the person may need it kept for a legal claim); the owner lifts it first.
    restricted: bool = False

    @property
    def kept(self) -> bool:
        """Retention leaves it alone: a legal hold, or a restriction."""
        return self.legal_hold or self.restricted


def retention_due_select(
    policy: dict[str, dict[str, int]], at: datetime, org_id: uuid.UUID | None = None
) -> Select[Any]:
    """The closed cases past their retention period at `at` (days after closure, per case
    type), not erased, as one unordered statement: `case_id`, `org_id`, `case_type`,
    `closed_at`, `legal_hold` (a hold not lifted), `restricted`. `retention_due_at` gives
    each one's due date. (The DPO's report pages it; `retention_due` reads it whole.)"""
    cases = Case.__table__.c
    held = select(LegalHold.case_id).where(LegalHold.lifted_at.is_(None))
    past = [
        and_(cases.case_type == case_type, cases.closed_at <= at - timedelta(days=days))
        for case_type, periods in sorted(policy.items())
        if (days := periods.get("closed")) is not None
    ]
    stmt = select(
        cases.id.label("case_id"),
        cases.org_id,
        cases.case_type,
        cases.closed_at,
        cases.id.in_(held).label("legal_hold"),
        cases.restricted,
    ).where(
        cases.status == CaseStatus.CLOSED,
        cases.erased.is_(False),
        cases.closed_at.is_not(None),
        or_(false(), *past),
    )
    if org_id is not None:
        stmt = stmt.where(cases.org_id == org_id)
    return stmt


def retention_due_at(
    policy: dict[str, dict[str, int]], case_type: str, closed_at: datetime
) -> datetime:
    """When a case of `case_type` closed at `closed_at` is due (a type the policy keeps)."""
    return closed_at + timedelta(days=policy[str(case_type)]["closed"])


def retention_due(
    session: Session,
    policy: dict[str, dict[str, int]],
    at: datetime | None = None,
    org_id: uuid.UUID | None = None,
) -> list[RetentionDue]:
    """Every closed case past its retention period, oldest closure first."""
    stmt = retention_due_select(policy, at or now(), org_id)
    return [
        RetentionDue(
            row.case_id,
            row.org_id,
            str(row.case_type),
            row.closed_at,
            retention_due_at(policy, row.case_type, row.closed_at),
            bool(row.legal_hold),
            bool(row.restricted),
        )
        for row in session.execute(stmt.order_by("closed_at", "case_id"))
    ]


def erase_if_still_due(
    session: Session, actor: Actor, due: RetentionDue
) -> ErasureTombstone | None:
    """Retention's erasure of one case from a `retention_due` listing (basis
    `retention_expired`, no request, no requester). The listing is a snapshot: the case is
    read again under the erasure's locks (its consents, then its row, as everything else
    takes them: never a deadlock with a withdrawal), and one erased, reopened or closed
    anew since is left alone (None): a reopened case is in use again, a re-closed one not
    yet due, a restricted one is not processed. A legal hold placed since raises
    LegalHoldActive."""
    case = session.get(Case, due.case_id)
    if case is None:
        return None
    _lock_case_to_erase(session, case)
    if (
        case.erased
        or case.restricted
        or case.status is not CaseStatus.CLOSED
        or case.closed_at != due.closed_at
    ):
        return None
    return erase_case(
        session, actor, case, ErasureBasis.RETENTION_EXPIRED, request_id=None, requested_by=None
    )
