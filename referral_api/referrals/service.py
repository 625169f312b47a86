"""Referral rules: creation, the consent gate at send and accept, the status machine, the
receiver's packet, messages, notifications, the withdrawal effect, and police intake.

No Flask; (session, actor, …); never commits; audits every access and change.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, select, union_all
from sqlalchemy.orm import Session, aliased

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.categories import Category, ceiling_for
from referral_api.access.permissions import Permission
from referral_api.access.policy import Decision, decide, referral_parties, scope_referrals
from referral_api.access.roles import OrgType, Role
from referral_api.audit import service as audit
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import Organisation
from referral_api.cases import service as cases
from referral_api.cases.layout import CATEGORY_FIELDS
from referral_api.cases.models import Case, must_be_processable, recheck_case
from referral_api.consent import service as consent_service
from referral_api.consent.decision import ConsentView, DisclosureDecision
from referral_api.consent.hooks import on_withdrawal
from referral_api.consent.models import ConsentRecord
from referral_api.exceptions import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    ProcessingRestricted,
    ReferralApiError,
    ValidationFailed,
)
from referral_api.pagination import (
    Page,
    after_cursor,
    fetch_page,
    newest_first,
    page_parameters,
    paginate,
)
from referral_api.referrals.models import (
    Disclosure,
    Notification,
    Referral,
    ReferralMessage,
    ReferralTransition,
)
from referral_api.referrals.vocabulary import (
    LIVE_STATUSES,
    REASON_REQUIRED,
    REASONS,
    TRANSITIONS,
    Outcome,
    Party,
    ReferralStatus,
)

S = ReferralStatus


class ConsentRequired(ReferralApiError):
    status = 409
    title = "Consent required"
    problem_type = "/problems/consent-required"


class InvalidTransition(ReferralApiError):
    status = 409
    title = "Invalid transition"
    problem_type = "/problems/invalid-transition"


class OverrideApprovalRequired(ReferralApiError):
    status = 409
    title = "Override approval required"
    problem_type = "/problems/override-approval-required"


def now() -> datetime:
    return datetime.now(UTC)


# ---- access -------------------------------------------------------------------------------

# "Sent" is one thing everywhere: the referral went out (draft → requested set `sent_at`,
# which nothing clears). A referral never sent does not exist for its receiver, whatever its
# status: a draft cancelled or entered in error was never sent either. Reads (one referral,
# lists, the DPO's reports) and notifications all ask this, never the status.
SENT: ColumnElement[bool] = Referral.sent_at.is_not(None)


def was_sent(referral: Referral) -> bool:
    """`SENT` for a loaded referral."""
    return referral.sent_at is not None


def authorize(
    session: Session, actor: Actor, action: Permission, referral_id: uuid.UUID
) -> tuple[Referral, Party]:
    """Load a referral for one of its two parties; anyone else gets 404 (audited)."""
    referral = session.get(Referral, referral_id)
    decision = (
        decide(actor, action, referral)
        if referral is not None
        else Decision(False, "no such referral", conceal=True)
    )
    receiver = decision.allowed and decision.details.get("party") == "receiver"
    if referral is not None and receiver and not was_sent(referral):
        # Never sent (a draft, or one dropped before sending): the receiver does not know it
        # exists.
        decision = Decision(False, "referral never sent", conceal=True)
    if referral is None or not decision.allowed:
        error: NotFound | Forbidden = (
            NotFound() if decision.conceal else Forbidden("Your role does not allow this action.")
        )
        error.audit = {
            "action": str(action),
            "resource_type": "referral",
            "resource_id": str(referral_id),
            "case_id": None,
            "decision": audit.DENY,
            "reason": decision.reason,
        }
        raise error
    return referral, Party(decision.details["party"])


def _denial(action: str, referral: Referral, reason: str) -> dict[str, Any]:
    """The audit entry of a refusal about `referral` (ids and codes only)."""
    return {
        "action": action,
        "resource_type": "referral",
        "resource_id": str(referral.id),
        "case_id": referral.case_id,
        "decision": audit.DENY,
        "reason": reason,
    }


def _refused(action: str, referral: Referral, message: str, reason: str) -> Forbidden:
    """A refusal decided here, after the route's permission check: on the record like any
    other denied attempt (ids and codes only)."""
    error = Forbidden(message)
    error.audit = _denial(action, referral, reason)
    return error


def _audit(session: Session, actor: Actor, action: str, referral: Referral, **extra: Any) -> None:
    audit.record(
        session,
        actor,
        action,
        resource_type="referral",
        resource_id=referral.id,
        case_id=referral.case_id,
        purpose=referral.purpose.value,
        **extra,
    )


def _notify(
    session: Session,
    referral: Referral,
    event: str,
    *,
    parties: tuple[uuid.UUID, ...] | None = None,
) -> None:
    for org_id in parties or (referral.from_org_id, referral.to_org_id):
        session.add(
            Notification(
                id=uuid.uuid4(),
                org_id=org_id,
                referral_id=referral.id,
                event=event,
                status=referral.status.value,
            )
        )


# ---- consent gate -------------------------------------------------------------------------


def _recipient(session: Session, referral: Referral) -> Organisation:
    org = session.get(Organisation, referral.to_org_id)
    assert org is not None  # noqa: S101 - foreign key
    return org


def consent_decision(
    session: Session,
    referral: Referral,
    at: datetime | None = None,
    views: Sequence[ConsentView] | None = None,
) -> DisclosureDecision:
    return consent_service.decide_for_case(
        session,
        referral.case_id,
        _recipient(session, referral),
        referral.purpose,
        referral.category_set,
        at,
        views,
    )


def _basis(referral: Referral, decision: DisclosureDecision) -> tuple[str, str]:
    if decision.permit:
        ids = sorted({str(i) for ids in decision.provisions_used.values() for i in ids})
        return "consent", ",".join(ids)
    assert referral.override_reason is not None  # noqa: S101 - checked by the gate
    return "override", referral.override_reason.value


# The audit row's legal-basis column width.
_LEGAL_BASIS_LENGTH: int = AuditEvent.__table__.c.legal_basis.type.length  # type: ignore[attr-defined]


def _legal_basis(basis_type: str, basis: str) -> tuple[str, dict[str, str]]:
    """The audit row's legal basis, `consent:<provision ids>` or `override:<reason>`, and
    what goes into its details. The column is short: a disclosure covered by many provisions
    names them in the details instead (an overlong value fails the whole send on
    PostgreSQL)."""
    text = f"{basis_type}:{basis}"
    if len(text) <= _LEGAL_BASIS_LENGTH:
        return text, {}
    return f"{basis_type}:{basis.count(',') + 1} provisions (see details)", {"basis": basis}


def _hold_consents(session: Session, case_id: uuid.UUID) -> None:
    """Hold the case's consents against lifecycle changes until this transaction ends (FOR
    SHARE; a withdrawal takes FOR UPDATE, consent.service._load_to_change), and read their
    events afresh. A withdrawal committed between a send's consent check and its commit
    found no live referral to stop and the send went out on the withdrawn consent; now the
    withdrawal waits and then stops what was sent, or commits first and the send sees it.
    Before anything of this transaction is flushed: the consent, then the referral row, in
    the order a withdrawal takes them."""
    with session.no_autoflush:
        session.execute(
            select(ConsentRecord.id)
            .where(ConsentRecord.case_id == case_id)
            .with_for_update(read=True)
        )
    for held in list(session.identity_map.values()):
        if isinstance(held, ConsentRecord) and held.case_id == case_id:
            session.expire(held, ["events"])


def _gate(session: Session, referral: Referral, action: str) -> DisclosureDecision:
    """Permit every shared category, or stop with the missing ones (409). An approved
    override stands in for consent, but never lifts an organisation-type ceiling. The
    case's consents are held until the transaction ends (`_hold_consents`). A refusal is a
    denied disclosure: on the record (`action`, the categories refused, codes only)."""
    _hold_consents(session, referral.case_id)
    decision = consent_decision(session, referral)
    if decision.permit:
        return decision
    ceiling = ceiling_for(_recipient(session, referral).org_type)
    over_ceiling = sorted(c.value for c in referral.category_set - ceiling)
    error: ConsentRequired | OverrideApprovalRequired
    if over_ceiling:
        error = ConsentRequired(
            "These categories can never be shared with this organisation.",
            missing_categories=over_ceiling,
            denied={c.value: why for c, why in decision.denied.items()},
        )
        refused, reason = over_ceiling, "over the organisation-type ceiling"
    elif referral.override_reason is not None:
        if referral.override_approved:
            return decision
        error = OverrideApprovalRequired(
            "A supervisor must approve the override before this referral is sent."
        )
        refused, reason = sorted(c.value for c in decision.denied), "override not approved"
    else:
        refused = sorted(c.value for c in decision.denied)
        error = ConsentRequired(
            "The person's consent does not cover every category for this recipient and purpose.",
            missing_categories=refused,
            denied={c.value: why for c, why in decision.denied.items()},
        )
        reason = "consent does not cover"
    error.audit = {**_denial(action, referral, reason), "categories": refused}
    raise error


# ---- creation -----------------------------------------------------------------------------


def create_referral(
    session: Session, actor: Actor, case_id: uuid.UUID, data: dict[str, Any]
) -> Referral:
    # cases.authorize refuses restricted (Art. 18) and erased cases, audited.
    case, _ = cases.authorize(session, actor, Permission.REFERRAL_CREATE, case_id)
    to_org = session.get(Organisation, data["to_org_id"])
    if to_org is None or not to_org.active:
        raise ValidationFailed({"to_org_id": ["No such active organisation."]})
    if to_org.org_type is OrgType.PLATFORM:
        # It runs the service and handles no cases: no role there reads case content.
        raise ValidationFailed(
            {"to_org_id": ["The platform's organisation receives no referrals."]}
        )
    if to_org.id == case.org_id:
        raise ValidationFailed({"to_org_id": ["A referral goes to another organisation."]})
    categories = frozenset(data["categories"])
    over = sorted(c.value for c in categories - ceiling_for(to_org.org_type))
    if over:
        raise ValidationFailed(
            {
                "categories": [
                    f"A {to_org.org_type.value} organisation never receives: {', '.join(over)}."
                ]
            }
        )
    if data.get("service_id") is not None:
        _check_service(session, data["service_id"], to_org.id)
    referral = Referral(
        id=uuid.uuid4(),
        case_id=case.id,
        from_org_id=case.org_id,
        to_org_id=to_org.id,
        service_id=data.get("service_id"),
        purpose=data["purpose"],
        categories=",".join(sorted(c.value for c in categories)),
        urgency=data["urgency"],
        status=S.DRAFT,
        created_by=actor.id,
        override_reason=data.get("override_reason"),
        override_requested_by=actor.id if data.get("override_reason") else None,
    )
    if data.get("send", False):
        # The send's consent hold comes first, before this transaction locks the case's
        # row (its first encrypted write): a withdrawal takes them in that order.
        _hold_consents(session, case.id)
    referral.message = data.get("message")
    referral.override_note = data.get("override_note")
    session.add(referral)
    session.add(_history(referral, actor, None, S.DRAFT, None))
    session.flush()
    _audit(
        session,
        actor,
        str(Permission.REFERRAL_CREATE),
        referral,
        categories=[c.value for c in categories],
        details={"to_org_id": str(to_org.id), "override": referral.override_reason},
    )
    if data.get("send", False):
        _move(session, actor, referral, Party.SENDER, S.REQUESTED, None)
    return referral


def _check_service(session: Session, service_id: uuid.UUID, org_id: uuid.UUID) -> None:
    from referral_api.directory.models import Service

    service = session.get(Service, service_id)
    if service is None or service.org_id != org_id:
        raise ValidationFailed({"service_id": ["No such service of the receiving organisation."]})
    if not _accepting(service):
        raise ValidationFailed({"service_id": ["This service is not accepting referrals."]})


def _accepting(service: Any) -> bool:
    from referral_api.directory.models import ServiceStatus

    return bool(service.accepting_referrals and service.status is ServiceStatus.ACTIVE)


def _service_closed_since(session: Session, referral: Referral) -> bool:
    """Whether the directory service a draft names stopped taking referrals (or was
    withdrawn) after the draft was made: sending it then would disclose the person's data to
    a service that takes no one."""
    from referral_api.directory.models import Service

    if referral.service_id is None:
        return False
    service = session.get(Service, referral.service_id)
    return service is None or not _accepting(service)


def _case_restricted(session: Session, referral: Referral) -> bool:
    """Whether processing of the referral's case is restricted (GDPR Art. 18). (An erased
    case's referral holds nothing personal any more: its message was cleared.)"""
    case = session.get(Case, referral.case_id)
    return case is not None and case.restricted


def etag_version(session: Session, referral: Referral) -> str:
    """What the referral's ETag is made from: its version, and whether its case is
    restricted — a restriction hides the message from both parties without changing the
    referral row, and the ETag must change with what the view shows. (A consent that merely
    runs out of time changes the receiver's view with nothing written;
    docs/consent-and-referrals.md.)"""
    return (
        f"{referral.version}:restricted"
        if _case_restricted(session, referral)
        else str(referral.version)
    )


@contextmanager
def _refused_on_the_referral(referral: Referral, action: str) -> Iterator[None]:
    """A write that finds the referral's case erased or restricted under it (re-checked
    under the case row's lock, `case_key_version`) is refused as one at its start is, and
    audited the same way: on the referral."""
    try:
        yield
    except (Gone, ProcessingRestricted) as refused:
        if refused.audit is None:
            why = "case erased" if isinstance(refused, Gone) else "processing restricted"
            refused.audit = _denial(action, referral, why)
        raise


def _require_processable(
    session: Session,
    referral: Referral,
    action: str,
    *,
    stopping: bool = False,
    reading: bool = False,
) -> None:
    """Nothing is processed about a restricted case (GDPR Art. 18: 403), except `stopping`
    its referral with a reason code; nothing at all about an erased one (Art. 17: 410, as
    the case itself answers — its keys are destroyed, so not even an empty encrypted history
    note could be written). Refusals are audited, ids and codes only."""
    case = session.get(Case, referral.case_id)
    error: Gone | ProcessingRestricted
    if case is None:
        return
    if not reading:
        # Checked again when the work writes under the case's lock: `case_key_version`.
        must_be_processable(session, case.id, allowed=stopping)
    if case.erased:
        error = Gone("This case was erased.")
        why = "case erased"
    elif case.restricted and not stopping:
        error = ProcessingRestricted(
            "Processing of this case is restricted (GDPR Art. 18): it is stored but not used."
            if reading
            else "Processing of this case is restricted (GDPR Art. 18): nothing can be sent "
            "or added."
        )
        why = "processing restricted"
    else:
        return
    error.audit = _denial(action, referral, why)
    raise error


def _history(
    referral: Referral,
    actor: Actor,
    old: ReferralStatus | None,
    new: ReferralStatus,
    reason: str | None,
    note: str | None = None,
) -> ReferralTransition:
    row = ReferralTransition(
        id=uuid.uuid4(),
        referral_id=referral.id,
        case_id=referral.case_id,
        from_status=old,
        to_status=new,
        reason=reason,
        actor_id=actor.id,
        actor_org_id=actor.org_id,
    )
    row.note = note
    return row


# ---- the status machine -------------------------------------------------------------------


def allowed_moves(referral: Referral, parties: set[Party]) -> list[str]:
    return sorted(
        to.value
        for (frm, to), who in TRANSITIONS.items()
        if frm is referral.status and who & parties
    )


def _parties(actor: Actor, party: Party) -> set[Party]:
    parties = {party}
    if actor.role is Role.SUPERVISOR:
        parties.add(Party.SUPERVISOR)
    return parties


def transition(
    session: Session,
    actor: Actor,
    referral: Referral,
    party: Party,
    to: ReferralStatus,
    *,
    reason: str | None = None,
    note: str | None = None,
    business_status: str | None = None,
    outcome: Outcome | None = None,
) -> Referral:
    parties = _parties(actor, party)
    who = TRANSITIONS.get((referral.status, to))
    if who is None:
        raise InvalidTransition(
            f"A {referral.status.value} referral cannot move to {to.value}.",
            allowed_transitions=allowed_moves(referral, parties),
        )
    if not who & parties:
        allowed = " or ".join(sorted(p.value for p in who))
        raise _refused(
            str(Permission.REFERRAL_TRANSITION),
            referral,
            f"Only the {allowed} may move a referral to {to.value}.",
            f"not the {allowed} of the referral"[:64],
        )
    # After the party check: a caller who may not make this move learns nothing about the
    # case's restriction. Stopping a referral of a restricted case is possible, with its
    # reason code; anything else is processing — so is adding a note or a business status
    # to the stop. Nothing at all is written about an erased case (410).
    stopping = to in (S.CANCELLED, S.ENTERED_IN_ERROR) and note is None and business_status is None
    _require_processable(session, referral, f"referral:{to.value}", stopping=stopping)
    if to in REASON_REQUIRED and not reason:
        raise ValidationFailed({"reason": ["A reason is required for this move."]})
    # Reasons are codes: they are stored and audited in plaintext and shown to the other
    # party, so free text (which may name a person or a place) goes into the encrypted note.
    if reason is not None and reason not in REASONS.get(to, frozenset()):
        codes = REASONS.get(to)
        raise ValidationFailed(
            {
                "reason": [
                    f"Use one of: {', '.join(sorted(codes))}."
                    if codes
                    else "This move takes no reason code; write free text in the note."
                ]
            }
        )
    if to is S.COMPLETED and outcome is None:
        raise ValidationFailed({"outcome": ["Completing a referral records its outcome."]})
    if outcome is not None and to is not S.COMPLETED:
        raise ValidationFailed({"outcome": ["Only a completed referral has an outcome."]})
    if business_status is not None:
        if Party.RECEIVER not in parties:
            raise ValidationFailed(
                {"business_status": ["Only the receiving organisation sets its workflow status."]}
            )
        referral.business_status = business_status
    if outcome is not None:
        referral.outcome = outcome
    _move(session, actor, referral, party, to, reason, note)
    return referral


def _move(
    session: Session,
    actor: Actor,
    referral: Referral,
    party: Party,
    to: ReferralStatus,
    reason: str | None,
    note: str | None = None,
) -> None:
    at = now()
    details: dict[str, Any] = {"from": referral.status.value, "to": to.value}
    if to is S.REQUESTED:
        _require_processable(session, referral, "referral:send")
        if not _recipient(session, referral).active:
            raise Conflict("The receiving organisation is no longer active; refer elsewhere.")
        if _service_closed_since(session, referral):
            raise Conflict("The service no longer accepts referrals; refer elsewhere.")
        decision = _gate(session, referral, "referral:send")
        basis_type, basis = _basis(referral, decision)
        session.add(
            Disclosure(
                id=uuid.uuid4(),
                referral_id=referral.id,
                case_id=referral.case_id,
                from_org_id=referral.from_org_id,
                to_org_id=referral.to_org_id,
                purpose=referral.purpose,
                categories=referral.categories,
                basis_type=basis_type,
                basis=basis,
                disclosed_by=actor.id,
                disclosed_at=at,
            )
        )
        referral.sent_at = at
        legal_basis, _ = _legal_basis(basis_type, basis)
        details.update({"disclosure": basis_type, "basis": basis, "legal_basis": legal_basis})
    elif to is S.ACCEPTED:
        # Consent is checked again when the receiver takes the referral on.
        decision = _gate(session, referral, "referral:accepted")
    if to is S.RECEIVED or (to is S.ACCEPTED and referral.status is S.REQUESTED):
        _acknowledge(session, referral, at)
    # A referral never sent does not exist for the receiver: a move of one (dropping a
    # draft, or marking it entered in error, at any time) tells only the sender. A send set
    # `sent_at` above.
    unsent = not was_sent(referral)
    session.add(_history(referral, actor, referral.status, to, reason, note))
    referral.status = to
    referral.status_reason = reason
    referral.updated_at = at
    with _refused_on_the_referral(referral, f"referral:{to.value}"):
        session.flush()
    _notify(
        session,
        referral,
        f"referral:{to.value}",
        parties=(referral.from_org_id,) if unsent else None,
    )
    _audit(
        session,
        actor,
        f"referral:{to.value}" if to is not S.REQUESTED else "referral:send",
        referral,
        categories=sorted(c.value for c in referral.category_set) if to is S.REQUESTED else (),
        reason=reason,
        legal_basis=details.pop("legal_basis", None),
        details=details,
    )


def _acknowledge(session: Session, referral: Referral, at: datetime) -> None:
    for disclosure in session.scalars(
        select(Disclosure).where(
            Disclosure.referral_id == referral.id, Disclosure.acknowledged_at.is_(None)
        )
    ):
        disclosure.acknowledged_at = at


def approve_override(session: Session, actor: Actor, referral: Referral, party: Party) -> Referral:
    """A supervisor of the sending organisation approves sharing without covering consent.
    Four eyes: the approver is not who asked. Flagged for the DPO."""
    if party is not Party.SENDER or actor.role is not Role.SUPERVISOR:
        raise _refused(
            str(Permission.REFERRAL_APPROVE_OVERRIDE),
            referral,
            "A supervisor of the sending organisation approves overrides.",
            "not a supervisor of the sending organisation",
        )
    if referral.override_reason is None:
        raise Conflict("This referral asks for no override.")
    if referral.override_approved:
        raise Conflict("The override is already approved.")
    if referral.status is not S.DRAFT:
        raise Conflict("Overrides are approved before the referral is sent.")
    if referral.override_requested_by == actor.id:
        raise _refused(
            str(Permission.REFERRAL_APPROVE_OVERRIDE),
            referral,
            "The override must be approved by another person than who asked for it.",
            "approver is the requester",
        )
    _require_processable(session, referral, "referral:approve-override")
    with _refused_on_the_referral(referral, "referral:approve-override"):
        recheck_case(session, referral.case_id)
    referral.override_approved_by = actor.id
    referral.override_approved_at = now()
    referral.updated_at = referral.override_approved_at
    session.flush()
    _audit(
        session,
        actor,
        str(Permission.REFERRAL_APPROVE_OVERRIDE),
        referral,
        legal_basis=f"override:{referral.override_reason.value}",
        details={"override": referral.override_reason.value, "flag": "dpo_review"},
    )
    return referral


# ---- what each party sees -----------------------------------------------------------------


def packet_live(
    session: Session, referral: Referral, views: Sequence[ConsentView] | None = None
) -> tuple[bool, frozenset[Category], DisclosureDecision | None]:
    """The receiver's packet exists while the referral is live and consent (or an approved
    override) still covers it; it holds the shared categories within the receiver's ceiling.
    `views`: the case's consents, read already (`preload_for_views`)."""
    if referral.status not in LIVE_STATUSES:
        return False, frozenset(), None
    case = session.get(Case, referral.case_id)
    if case is None or case.erased or case.restricted:
        return False, frozenset(), None
    ceiling = ceiling_for(_recipient(session, referral).org_type)
    decision = consent_decision(session, referral, views=views)
    if decision.permit:
        return True, referral.category_set & ceiling, decision
    if referral.override_approved:
        return True, referral.category_set & ceiling, decision
    return False, frozenset(), decision


@dataclass
class PagePreload:
    """What `referral_view` reads for a page of referrals, read in a fixed number of
    statements. Held by the caller while it builds the views: the session's identity map
    keeps only objects something else holds, so loaded and dropped they were read again,
    one statement per row."""

    held: list[Any] = field(default_factory=list)
    consent_views: dict[uuid.UUID, list[ConsentView]] = field(default_factory=dict)


def preload_for_views(session: Session, actor: Actor, referrals: Sequence[Referral]) -> PagePreload:
    """The page's cases with their data keys (for the messages), the recipients, and the
    consents of the cases whose packet the receiver may see, as views (a receiver's row
    decided consent from the case, its consents, their provisions and events read again for
    every row: ~6 statements a referral)."""
    preload = PagePreload()
    if not actor.can(Permission.CASE_READ):
        return preload
    received = [
        r for r in referrals if party_of(actor, r) is Party.RECEIVER and r.status in LIVE_STATUSES
    ]
    sent = [r for r in referrals if party_of(actor, r) is Party.SENDER]
    preload.held += cases.load_cases_with_keys(session, [r.case_id for r in (*sent, *received)])
    if received:
        recipients = sorted({r.to_org_id for r in received})
        preload.held += session.scalars(
            select(Organisation).where(Organisation.id.in_(recipients))
        ).all()
        preload.consent_views = consent_service.consent_views_of_cases(
            session, [r.case_id for r in received]
        )
    return preload


def referral_view(
    session: Session,
    referral: Referral,
    party: Party,
    actor: Actor,
    consent_views: Mapping[uuid.UUID, Sequence[ConsentView]] | None = None,
) -> dict[str, Any]:
    """The sender sees its referral in full; the receiver sees the referral's own metadata,
    plus the message only while the packet is live. Neither sees the person's other
    referrals. A DPO (metadata roles) never sees the message. While the case is restricted
    (GDPR Art. 18) the sender too sees the metadata only — enough to manage (stop) the
    referral, nothing personal."""
    view: dict[str, Any] = {
        name: getattr(referral, name)
        for name in (
            "id",
            "from_org_id",
            "to_org_id",
            "service_id",
            "purpose",
            "urgency",
            "status",
            "status_reason",
            "business_status",
            "outcome",
            "created_at",
            "updated_at",
            "sent_at",
            "override_reason",
            "override_approved_at",
            "version",
        )
    }
    view["categories"] = sorted(c.value for c in referral.category_set)
    content = actor.can(Permission.CASE_READ)
    if party is Party.SENDER:
        view["case_id"] = referral.case_id
        if content and not _case_restricted(session, referral):
            view["message"] = referral.message
    elif content and packet_live(session, referral, (consent_views or {}).get(referral.case_id))[0]:
        view["message"] = referral.message
        view["receiver_case_id"] = referral.receiver_case_id
    return view


def read_referral(session: Session, actor: Actor, referral_id: uuid.UUID) -> tuple[Referral, Party]:
    referral, party = authorize(session, actor, Permission.REFERRAL_READ, referral_id)
    _audit(session, actor, str(Permission.REFERRAL_READ), referral, details={"party": party.value})
    return referral, party


def read_packet(session: Session, actor: Actor, referral_id: uuid.UUID) -> dict[str, Any]:
    referral, party = authorize(session, actor, Permission.REFERRAL_READ, referral_id)
    live, categories, decision = (
        packet_live(session, referral) if party is Party.RECEIVER else (False, frozenset(), None)
    )
    if not live or not actor.can(Permission.CASE_READ) or not categories:
        # Reasons are short codes: the audit column holds 64 characters, and an overlong
        # value turns this 404 into a 500 on PostgreSQL.
        if party is not Party.RECEIVER:
            why = "not the receiver"
        elif not actor.can(Permission.CASE_READ):
            why = "role reads no case content"
        elif referral.status not in LIVE_STATUSES:
            why = "referral not live"
        else:
            why = "consent or case no longer allows it"
        error = NotFound()
        error.audit = _denial("referral:packet", referral, why)
        raise error
    case = session.get(Case, referral.case_id)
    assert case is not None  # noqa: S101
    shared = {
        category.value: {
            key: getattr(case, attr) for key, attr in CATEGORY_FIELDS[category].items()
        }
        for category in sorted(categories)
    }
    for fields in shared.values():
        for key, value in list(fields.items()):
            if value is None and key in (
                "aliases",
                "languages",
                "documents",
                "exploitation_types",
                "means_of_control",
            ):
                fields[key] = []
    if decision is not None and decision.permit:
        used = sorted({str(i) for ids in decision.provisions_used.values() for i in ids})
        basis, basis_details = _legal_basis("consent", ",".join(used))
    else:
        reason = referral.override_reason.value if referral.override_reason else ""
        basis, basis_details = _legal_basis("override", reason)
    _audit(
        session,
        actor,
        "referral:packet",
        referral,
        categories=[c.value for c in categories],
        legal_basis=basis,
        details=basis_details or None,
    )
    return {
        "referral_id": referral.id,
        "purpose": referral.purpose,
        "categories": sorted(c.value for c in categories),
        "valid_until": decision.valid_until if decision is not None and decision.permit else None,
        "data": shared,
    }


def list_referrals(session: Session, actor: Actor, params: dict[str, Any]) -> Page:
    filters: list[ColumnElement[bool]] = []
    if params.get("status") is not None:
        filters.append(Referral.status == params["status"])
    if params.get("updated_since") is not None:
        filters.append(Referral.updated_at >= params["updated_since"])
    if params.get("case_id") is not None:
        filters += [Referral.case_id == params["case_id"], Referral.from_org_id == actor.org_id]
    box, cursor, limit = params.get("box"), params.get("cursor"), params["limit"]
    if box is None:
        page = _both_boxes(session, actor, filters, cursor, limit)
    else:
        stmt = scope_referrals(
            actor,
            Permission.REFERRAL_READ,
            select(Referral),
            from_org=Referral.from_org_id,
            to_org=Referral.to_org_id,
            sent=SENT,
        ).where(*filters)
        if box == "incoming":
            stmt = stmt.where(Referral.to_org_id == actor.org_id)
        elif box == "outgoing":
            stmt = stmt.where(Referral.from_org_id == actor.org_id)
        page = paginate(
            session,
            stmt,
            created_col=Referral.created_at,
            id_col=Referral.id,
            cursor=cursor,
            limit=limit,
        )
    # One row per referral shown, as for a single read: the list carries each one's message.
    _record_shown(
        session,
        actor,
        [
            {
                "resource_id": referral.id,
                "case_id": referral.case_id,
                "purpose": referral.purpose.value,
                "details": {"party": party_of(actor, referral).value, "via": "list"},
            }
            for referral in page.items
        ],
        none_shown={"box": box or "all", "results": 0},
    )
    return page


def _record_shown(
    session: Session, actor: Actor, rows: list[dict[str, Any]], none_shown: dict[str, Any]
) -> None:
    """A page of referrals shown (the list, the notifications): one referral:read row each."""
    audit.record_many(
        session,
        actor,
        str(Permission.REFERRAL_READ),
        resource_type="referral",
        rows=rows,
        none_shown=none_shown,
    )


def _both_boxes(
    session: Session,
    actor: Actor,
    filters: list[ColumnElement[bool]],
    cursor: str | None,
    limit: int,
) -> Page:
    """A page of the referrals the actor's organisation sent or receives: the page of each
    (`referral_parties`), read newest first from its own index, then merged. Their OR was
    read whole and sorted for every page (23-30 ms against 0.4 ms for a receiver of 60,000,
    bench/README.md); PostgreSQL does not merge the two index scans of a UNION ALL under
    one LIMIT by itself, so each half has its own order and limit."""
    halves = []
    for party in referral_parties(
        actor,
        Permission.REFERRAL_READ,
        from_org=Referral.from_org_id,
        to_org=Referral.to_org_id,
        sent=SENT,
    ):
        half = select(Referral).where(party, *filters)
        if cursor:
            half = after_cursor(half, Referral.created_at, Referral.id)
        half_page = newest_first(half, Referral.created_at, Referral.id).subquery()
        halves.append(select(half_page))  # a subquery each: SQLite takes no ORDER BY here
    shown = aliased(Referral, union_all(*halves).subquery("scoped_referrals"))
    return fetch_page(
        session,
        newest_first(select(shown), shown.created_at, shown.id),
        page_parameters(cursor, limit),
        created_col=shown.created_at,
        id_col=shown.id,
        limit=limit,
    )


def party_of(actor: Actor, referral: Referral) -> Party:
    return Party.SENDER if actor.org_id == referral.from_org_id else Party.RECEIVER


# ---- messages -----------------------------------------------------------------------------


def _require_thread_access(
    session: Session, actor: Actor, referral: Referral, party: Party, action: str
) -> None:
    """`action`: what a refusal is recorded as, `referral:message` (writing) or
    `referral:messages-read`, as the allowed request would have been."""
    if not actor.can(Permission.CASE_READ):
        raise _refused(
            action,
            referral,
            "Your role does not read referral messages.",
            "role reads no case content",
        )
    if party is Party.RECEIVER and not packet_live(session, referral)[0]:
        error = NotFound()
        error.audit = _denial(action, referral, "referral no longer live")
        raise error


def add_message(
    session: Session, actor: Actor, referral_id: uuid.UUID, body: str
) -> ReferralMessage:
    referral, party = authorize(session, actor, Permission.REFERRAL_TRANSITION, referral_id)
    _require_thread_access(session, actor, referral, party, "referral:message")
    _require_processable(session, referral, "referral:message")
    if not was_sent(referral) and referral.status is not S.DRAFT:
        # Dropped before it was sent: it never reaches anyone, so a message would be personal
        # data kept for no one. (A draft's notes go with it when it is sent.)
        raise Conflict("This referral was never sent and no longer can be: it has no thread.")
    if party is Party.SENDER and was_sent(referral) and not packet_live(session, referral)[0]:
        # Likewise once the receiver's access has ended (closed, or its consent withdrawn):
        # it could never read the message, but would be told one came.
        raise Conflict(
            "The receiving organisation can no longer read this thread (the referral is "
            "closed or its consent withdrawn); write in the case's notes instead."
        )
    message = ReferralMessage(
        id=uuid.uuid4(),
        referral_id=referral.id,
        case_id=referral.case_id,
        author_id=actor.id,
        author_org_id=actor.org_id,
    )
    message.body = body
    session.add(message)
    referral.updated_at = now()
    with _refused_on_the_referral(referral, "referral:message"):
        session.flush()
    other = referral.to_org_id if party is Party.SENDER else referral.from_org_id
    if was_sent(referral):  # a draft not sent yet does not exist for the receiver
        _notify(session, referral, "referral:message", parties=(other,))
    _audit(session, actor, "referral:message", referral, details={"message_id": str(message.id)})
    return message


def _open_thread(session: Session, actor: Actor, referral_id: uuid.UUID) -> Referral:
    """The referral whose thread `actor` may read now, or the refusal (audited). Asked again
    for every page: a cursor is only a position, never a grant."""
    referral, party = authorize(session, actor, Permission.REFERRAL_READ, referral_id)
    _require_thread_access(session, actor, referral, party, "referral:messages-read")
    if party is Party.SENDER:
        # The thread is the case's personal data: while the case is restricted the sender
        # reads it no more than the case itself (403; erased: 410). The receiver's packet is
        # not live then: it already got 404 above.
        _require_processable(session, referral, "referral:messages-read", reading=True)
    return referral


def list_messages(
    session: Session, actor: Actor, referral_id: uuid.UUID, cursor: str | None, limit: int
) -> Page:
    """A page of the thread, oldest first by (created_at, id); the cursor is the last message
    of the previous page. Audited as one read per page."""
    referral = _open_thread(session, actor, referral_id)
    page = paginate(
        session,
        select(ReferralMessage).where(ReferralMessage.referral_id == referral.id),
        created_col=ReferralMessage.created_at,
        id_col=ReferralMessage.id,
        cursor=cursor,
        limit=limit,
        oldest_first=True,
    )
    _audit(
        session, actor, "referral:messages-read", referral, details={"messages": len(page.items)}
    )
    return page


def read_message(
    session: Session, actor: Actor, referral_id: uuid.UUID, message_id: uuid.UUID
) -> ReferralMessage:
    """One message of the thread, through the thread's access rules now (404 otherwise),
    audited as a read of it."""
    referral = _open_thread(session, actor, referral_id)
    message = session.get(ReferralMessage, message_id)
    if message is None or message.referral_id != referral.id:
        error = NotFound()
        error.audit = _denial("referral:messages-read", referral, "no such message")
        raise error
    _audit(
        session,
        actor,
        "referral:messages-read",
        referral,
        details={"messages": 1, "message_id": str(message.id)},
    )
    return message


# ---- notifications ------------------------------------------------------------------------


def list_notifications(
    session: Session, actor: Actor, unread_only: bool, cursor: str | None, limit: int
) -> Page:
    """Newest first, a page at a time (the cursor from the previous page's `Link`). Each
    referral an event is shown of is on the record, as in the referral list (one row per
    notification shown, on its referral's case)."""
    stmt = select(Notification).where(Notification.org_id == actor.org_id)
    if unread_only:
        stmt = stmt.where(Notification.read_at.is_(None))
    page = paginate(
        session,
        stmt,
        created_col=Notification.created_at,
        id_col=Notification.id,
        cursor=cursor,
        limit=limit,
    )
    shown = {n.referral_id for n in page.items}
    cases: dict[uuid.UUID, uuid.UUID] = {}
    if shown:
        query = select(Referral.id, Referral.case_id).where(Referral.id.in_(shown))
        cases = dict(session.execute(query).all())  # type: ignore[arg-type]
    _record_shown(
        session,
        actor,
        [
            {
                "resource_id": n.referral_id,
                "case_id": cases.get(n.referral_id),
                "details": {"via": "notifications", "event": n.event},
            }
            for n in page.items
        ],
        none_shown={"via": "notifications", "results": 0},
    )
    return page


def mark_notification_read(
    session: Session, actor: Actor, notification_id: uuid.UUID
) -> Notification:
    notification = session.get(Notification, notification_id)
    if notification is None or notification.org_id != actor.org_id:
        # Another organisation's is answered as one that does not exist, both on the record.
        raise audit.on_record(
            NotFound(),
            str(Permission.REFERRAL_TRANSITION),
            "notification",
            notification_id,
            "no such notification" if notification is None else "outside record scope",
        )
    if notification.read_at is None:
        notification.read_at = now()
    return notification


# ---- the receiver's own case --------------------------------------------------------------


def open_case_from_referral(session: Session, actor: Actor, referral_id: uuid.UUID) -> Case:
    """The receiving organisation opens its own case from the packet (shared categories
    only). The person's consent for onward sharing is recorded anew on that case."""
    referral, party = authorize(session, actor, Permission.CASE_CREATE, referral_id)
    if party is not Party.RECEIVER:
        raise _refused(
            str(Permission.CASE_CREATE),
            referral,
            "Only the receiving organisation opens a case from a referral.",
            "not the receiver",
        )
    if referral.receiver_case_id is not None:
        raise Conflict(
            "A case was already opened from this referral.", case_id=str(referral.receiver_case_id)
        )
    if referral.status not in (S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD):
        raise Conflict("Accept the referral first.")
    # The sender's case held (its row's lock) before the packet is read and copied: a
    # restriction or erasure then either committed before, and the packet is gone, or waits.
    with _refused_on_the_referral(referral, "referral:open-case"):
        recheck_case(session, referral.case_id)
    packet = read_packet(session, actor, referral_id)
    source = session.get(Case, referral.case_id)
    assert source is not None  # noqa: S101
    data: dict[str, Any] = {
        "case_type": source.case_type,
        "risk_level": source.risk_level,
        "nrm_stage": source.nrm_stage,
    }
    data.update(packet["data"])
    view = cases.created_under_free_codes(session, lambda: cases.create_case(session, actor, data))
    referral.receiver_case_id = view.case.id
    session.flush()
    _audit(
        session,
        actor,
        "referral:open-case",
        referral,
        details={"receiver_case_id": str(view.case.id)},
    )
    return view.case


# ---- withdrawal effect --------------------------------------------------------------------


@on_withdrawal
def cancel_referrals_without_consent(
    session: Session, actor: Actor, consent: Any, at: datetime
) -> list[dict[str, Any]]:
    """Consent withdrawn (or revoked, or entered in error): every live referral of the case
    that consent no longer covers is cancelled now, by the system, in the same transaction.
    One with an approved legal-basis override is not: the override is its basis from now
    on (vital interests, child protection…), and the effects say so, so that whoever records
    the withdrawal sees which disclosures go on and why (and can stop them)."""
    effects: list[dict[str, Any]] = []
    system = Actor.system()
    # Locked and read again: a referral another transaction changes meanwhile (the receiver
    # opening its case from it) is then seen as it committed, not failed as a stale write.
    live = session.scalars(
        select(Referral)
        .where(Referral.case_id == consent.case_id, Referral.status.in_(sorted(LIVE_STATUSES)))
        .order_by(Referral.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for referral in live:
        # Live, as a send asks: a closing event of another consent stamped by a host whose
        # clock runs ahead counts already (docs/consent-and-referrals.md).
        decision = consent_decision(session, referral)
        if decision.permit:
            continue
        if referral.override_approved:
            reason = referral.override_reason.value if referral.override_reason else None
            _audit(
                session,
                system,
                "referral:basis-override",
                referral,
                reason=reason,
                details={"consent_id": str(consent.id), "by_actor": str(actor.id)},
            )
            effects.append(
                {
                    "type": "referral",
                    "id": str(referral.id),
                    "to_org_id": str(referral.to_org_id),
                    "status": referral.status.value,
                    "continues_under": "override",
                    "override_reason": reason,
                }
            )
            continue
        session.add(_history(referral, system, referral.status, S.CANCELLED, "consent_withdrawn"))
        previous = referral.status
        referral.status = S.CANCELLED
        referral.status_reason = "consent_withdrawn"
        referral.updated_at = at
        _notify(session, referral, "referral:cancelled")
        _audit(
            session,
            system,
            "referral:cancelled",
            referral,
            reason="consent_withdrawn",
            details={
                "from": previous.value,
                "consent_id": str(consent.id),
                "by_actor": str(actor.id),
            },
        )
        effects.append(
            {
                "type": "referral",
                "id": str(referral.id),
                "to_org_id": str(referral.to_org_id),
                "from": previous.value,
                "to": "cancelled",
                "reason": "consent_withdrawn",
            }
        )
    session.flush()
    return effects


# ---- police intake ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntakeResult:
    case: Case
    consent_id: uuid.UUID
    referral: Referral


def intake(session: Session, actor: Actor, data: dict[str, Any]) -> IntakeResult:
    """A police system hands a presumed victim over in one call: case, consent, referral."""
    if actor.kind is not ActorKind.CLIENT and actor.role is not Role.POLICE_OFFICER:
        raise Forbidden("Intake is for police systems and officers.")
    # A case code already taken is drawn again without losing the idempotency claim.
    with _part_of_intake("case"):
        view = cases.created_under_free_codes(
            session, lambda: cases.create_case(session, actor, data["case"])
        )
    with _part_of_intake("consent"):
        consent = consent_service.record_consent(session, actor, view.case.id, data["consent"])
    with _part_of_intake("referral"):
        referral = create_referral(session, actor, view.case.id, {**data["referral"], "send": True})
    return IntakeResult(view.case, consent.id, referral)


@contextmanager
def _part_of_intake(part: str) -> Iterator[None]:
    """A refusal of one part names its fields inside that part of the intake body."""
    try:
        yield
    except ValidationFailed as error:
        raise error.within(part) from None
