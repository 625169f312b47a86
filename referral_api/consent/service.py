"""Consent rules. No Flask; (session, actor, …); never commits; audits every write.

Who may do what (on the owning organisation's cases; other organisations → 404):
record, renew and withdraw — caseworkers, supervisors, police officers of the owning org;
revoke and entered-in-error — supervisors; read — those roles and the DPO (metadata only;
a DPO of the platform organisation: every organisation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from referral_api.access.actor import Actor
from referral_api.access.categories import Category
from referral_api.access.permissions import Permission
from referral_api.audit import service as audit
from referral_api.auth.models import Organisation
from referral_api.cases import service as cases
from referral_api.cases.models import Case
from referral_api.consent.decision import (
    ConsentView,
    DisclosureDecision,
    EventView,
    ProvisionView,
    current_state,
    decide_disclosure,
    is_expired_at,
)
from referral_api.consent.hooks import run_withdrawal_handlers
from referral_api.consent.models import ConsentEvent, ConsentProvision, ConsentRecord
from referral_api.consent.vocabulary import (
    TERMINAL_EVENTS,
    ConsentState,
    EventType,
    Grantor,
    Purpose,
)
from referral_api.exceptions import Conflict, NotFound, ValidationFailed

# GDPR Art. 9 special categories among ours: health, and what psychosocial notes and GBV
# incident details reveal (health, sex life). Sharing them needs an Art. 9(2) condition.
SPECIAL_CATEGORIES = frozenset({Category.HEALTH, Category.PSYCHOSOCIAL, Category.INCIDENT})


def now() -> datetime:
    return datetime.now(UTC)


# ---- views for the pure decision ----------------------------------------------------------


def view_of(consent: ConsentRecord) -> ConsentView:
    return ConsentView(
        id=consent.id,
        provisions=tuple(
            ProvisionView(
                id=p.id,
                purpose=p.purpose,
                recipient_org_id=p.recipient_org_id,
                recipient_org_type=p.recipient_org_type,
                categories=p.category_set,
                valid_from=p.valid_from,
                valid_until=p.valid_until,
            )
            for p in consent.provisions
        ),
        events=tuple(EventView(e.event_type, e.occurred_at, e.valid_until) for e in consent.events),
    )


def consents_of_case(session: Session, case_id: uuid.UUID) -> list[ConsentRecord]:
    return list(
        session.scalars(
            select(ConsentRecord)
            .where(ConsentRecord.case_id == case_id)
            .order_by(ConsentRecord.created_at, ConsentRecord.id)
        )
    )


def consent_views_of_cases(
    session: Session, case_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[ConsentView]]:
    """The stored consents of several cases as decision views ({case id: views}, each case
    named, with or without consents), read in three statements (consents, provisions,
    events) however many cases: a list deciding for each of its rows (the referral inbox)
    reads them once, not once per row."""
    wanted = sorted(set(case_ids))
    views: dict[uuid.UUID, list[ConsentView]] = {case_id: [] for case_id in wanted}
    if not wanted:
        return views
    consents = session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.case_id.in_(wanted))
        .order_by(ConsentRecord.created_at, ConsentRecord.id)
        .options(selectinload(ConsentRecord.provisions), selectinload(ConsentRecord.events))
    )
    for consent in consents:
        views[consent.case_id].append(view_of(consent))
    return views


def decide_for_case(
    session: Session,
    case_id: uuid.UUID,
    recipient: Organisation,
    purpose: Purpose,
    categories: set[Category] | frozenset[Category],
    at: datetime | None = None,
    views: Sequence[ConsentView] | None = None,
) -> DisclosureDecision:
    """decide_disclosure over the case's stored consents (used at referral send, accept and
    every read by a recipient). Without `at` the decision is live: every stored closing
    event counts, however far ahead the clock of the host that stamped it. `views`: the
    case's consents read already in this transaction (`consent_views_of_cases`)."""
    if views is None:
        views = [view_of(c) for c in consents_of_case(session, case_id)]
    return decide_disclosure(
        views, recipient.id, recipient.org_type, purpose, categories, at or now(), live=at is None
    )


def state_of(consent: ConsentRecord, at: datetime | None = None) -> ConsentState | None:
    """The consent's state at `at`; without it, live (as `decide_for_case`)."""
    return current_state(view_of(consent), at or now(), live=at is None)


# ---- recording ----------------------------------------------------------------------------


def _validate(session: Session, data: dict[str, Any], at: datetime) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if data["grantor"] is Grantor.GUARDIAN and not data.get("guardian_relation"):
        errors["guardian_relation"] = ["A guardian's consent names the guardian's relation."]
    if data["grantor"] is Grantor.PERSON and data.get("guardian_relation"):
        errors["guardian_relation"] = ["A person's own consent names no guardian's relation."]
    if data.get("is_minor") and data["grantor"] is not Grantor.GUARDIAN:
        errors["grantor"] = ["A minor's consent is given by a guardian."]
    special = False
    for index, provision in enumerate(data["provisions"]):
        if (provision.get("recipient_org_id") is None) == (
            provision.get("recipient_org_type") is None
        ):
            errors[f"provisions.{index}.recipient_org_id"] = [
                "Name exactly one of recipient_org_id and recipient_org_type."
            ]
        elif (
            provision.get("recipient_org_id") is not None
            and session.get(Organisation, provision["recipient_org_id"]) is None
        ):
            errors[f"provisions.{index}.recipient_org_id"] = ["No such organisation."]
        # valid_from defaults to the moment of recording: an end before it would store an
        # inverted window (the schema compares the two only when both are sent).
        until = provision.get("valid_until")
        if provision.get("valid_from") is None and until is not None and until <= at:
            errors[f"provisions.{index}.valid_until"] = [
                "Must be after valid_from (now, when valid_from is not given)."
            ]
        special = special or bool(set(provision["categories"]) & SPECIAL_CATEGORIES)
    if special and not data["legal_basis"].get("article9"):
        errors["legal_basis.article9"] = [
            "Sharing health, psychosocial or incident data needs an Art. 9(2) condition."
        ]
    return errors


# The most consents one case holds (each with up to 50 provisions). Every consent decision
# about the case (a send, each row of the receiver's inbox, each packet read) reads all of
# them, and the list shows them in one response: a case with thousands made every such
# request as slow. No person's referrals need more.
MAX_CONSENTS_PER_CASE = 200
# The most renewals of one consent (each an event every decision replays): a monthly renewal
# for eight years.
MAX_RENEWALS_PER_CONSENT = 100


def record_consent(
    session: Session, actor: Actor, case_id: uuid.UUID, data: dict[str, Any]
) -> ConsentRecord:
    case, _ = cases.authorize(session, actor, Permission.CONSENT_RECORD, case_id)
    held = session.scalar(
        select(func.count()).select_from(ConsentRecord).where(ConsentRecord.case_id == case.id)
    )
    if (held or 0) >= MAX_CONSENTS_PER_CASE:
        raise Conflict(
            f"This case holds {MAX_CONSENTS_PER_CASE} consents, the most a case may hold: "
            "renew or correct one of them instead."
        )
    at = now()
    errors = _validate(session, data, at)
    if errors:
        raise ValidationFailed(errors)
    consent = ConsentRecord(
        id=uuid.uuid4(),
        case_id=case.id,
        org_id=case.org_id,
        grantor=data["grantor"],
        guardian_relation=data.get("guardian_relation"),
        is_minor=data.get("is_minor", False),
        captured_by_id=actor.id,
        captured_by_org_id=actor.org_id or case.org_id,
        collection_method=data["collection_method"],
        language=data["language"],
        notice_version=data["notice_version"],
        jurisdiction=data["jurisdiction"],
        article6=data["legal_basis"]["article6"],
        article9=data["legal_basis"].get("article9"),
        created_at=at,
    )
    evidence = data.get("evidence")
    if evidence:
        try:
            raw = base64.b64decode(evidence["content_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise ValidationFailed({"evidence.content_base64": ["Not valid base64."]}) from None
        consent.evidence_sha256 = hashlib.sha256(raw).hexdigest()
        consent.evidence_media_type = evidence["media_type"]
        consent.evidence = evidence["content_base64"]
    session.add(consent)
    for position, provision in enumerate(data["provisions"]):
        session.add(
            ConsentProvision(
                id=uuid.uuid4(),
                consent_id=consent.id,
                case_id=case.id,
                position=position,
                purpose=provision["purpose"],
                recipient_org_id=provision.get("recipient_org_id"),
                recipient_org_type=provision.get("recipient_org_type"),
                categories=",".join(sorted(c.value for c in set(provision["categories"]))),
                valid_from=provision.get("valid_from") or at,
                valid_until=provision.get("valid_until"),
            )
        )
    _add_event(session, actor, consent, EventType.GIVEN, at)
    session.flush()
    session.refresh(consent)
    _audit(
        session,
        actor,
        Permission.CONSENT_RECORD,
        consent,
        details={"provisions": len(data["provisions"])},
    )
    return consent


def _add_event(
    session: Session,
    actor: Actor,
    consent: ConsentRecord,
    event_type: EventType,
    at: datetime,
    *,
    reason: str | None = None,
    valid_until: datetime | None = None,
    effects: list[dict[str, Any]] | None = None,
) -> ConsentEvent:
    event = ConsentEvent(
        id=uuid.uuid4(),
        consent_id=consent.id,
        case_id=consent.case_id,
        event_type=event_type,
        occurred_at=at,
        actor_id=actor.id,
        actor_org_id=actor.org_id,
        valid_until=valid_until,
        effects=json.dumps(effects, sort_keys=True, default=str) if effects else None,
    )
    event.reason = reason
    session.add(event)
    return event


def _audit(
    session: Session, actor: Actor, action: Permission, consent: ConsentRecord, **extra: Any
) -> None:
    categories = sorted({c.value for p in consent.provisions for c in p.category_set})
    audit.record(
        session,
        actor,
        str(action),
        resource_type="consent",
        resource_id=consent.id,
        case_id=consent.case_id,
        categories=categories,
        legal_basis=f"art6:{consent.article6.value}"
        + (f";art9:{consent.article9.value}" if consent.article9 else ""),
        **extra,
    )


# ---- reading ------------------------------------------------------------------------------


def load_consent(
    session: Session, actor: Actor, action: Permission, consent_id: uuid.UUID
) -> ConsentRecord:
    """A consent by id, through its case's record scope (404 outside it). A probe of an id
    that does not exist is recorded like one outside the scope."""
    consent = session.get(ConsentRecord, consent_id)
    if consent is None:
        error = NotFound()
        error.audit = {
            "action": str(action),
            "resource_type": "consent",
            "resource_id": str(consent_id),
            "case_id": None,
            "decision": audit.DENY,
            "reason": "no such consent",
        }
        raise error
    cases.authorize(session, actor, action, consent.case_id)
    return consent


def list_consents(session: Session, actor: Actor, case_id: uuid.UUID) -> list[ConsentRecord]:
    cases.authorize(session, actor, Permission.CONSENT_READ, case_id)
    records = consents_of_case(session, case_id)
    audit.record(
        session,
        actor,
        str(Permission.CONSENT_READ),
        resource_type="consent",
        case_id=case_id,
        details={"consents": len(records)},
    )
    return records


def read_consent(session: Session, actor: Actor, consent_id: uuid.UUID) -> ConsentRecord:
    consent = load_consent(session, actor, Permission.CONSENT_READ, consent_id)
    _audit(session, actor, Permission.CONSENT_READ, consent)
    return consent


def read_withdrawal(session: Session, actor: Actor, consent_id: uuid.UUID) -> ConsentRecord:
    """A consent as a retried withdrawal shows it: through the scope and permission of the
    withdrawal (which processing restricted under Art. 18 does not stop), audited as the
    read it is."""
    consent = load_consent(session, actor, Permission.CONSENT_WITHDRAW, consent_id)
    _audit(session, actor, Permission.CONSENT_READ, consent, details={"replay_of": "withdraw"})
    return consent


# ---- lifecycle ----------------------------------------------------------------------------


# A check of the consent as the client last read it (the route's If-Match), made under the
# lock: raises to refuse the change.
Precondition = Callable[[ConsentRecord], None]


def _load_to_change(
    session: Session,
    actor: Actor,
    permission: Permission,
    consent_id: uuid.UUID,
    precondition: Precondition | None = None,
) -> ConsentRecord:
    """A consent about to get a lifecycle event, locked (FOR UPDATE) and its events read
    under the lock, then checked to be as the client read it (`precondition`) and still
    open: two withdrawals at once would otherwise each see it open and each close it (two
    closing events, two sets of effects), and two renewals each replace the other's date
    unseen."""
    consent = load_consent(session, actor, permission, consent_id)
    session.execute(
        select(ConsentRecord.id).where(ConsentRecord.id == consent_id).with_for_update()
    )
    session.expire(consent, ["events"])
    if precondition is not None:
        precondition(consent)
    _require_not_terminal(consent)
    return consent


def consent_version(consent: ConsentRecord) -> int:
    """What a consent's ETag is made from: its events, which are only ever added (its terms
    are fixed when it is recorded), so their number changes with every change."""
    return len(consent.events)


def _require_not_terminal(consent: ConsentRecord) -> None:
    if any(e.event_type in TERMINAL_EVENTS for e in consent.events):
        state = state_of(consent)
        raise Conflict(
            f"The consent is {state.value if state else 'closed'}; record a new consent instead."
        )


def withdraw(
    session: Session, actor: Actor, consent_id: uuid.UUID, reason: str | None = None
) -> ConsentRecord:
    """One call, no justification needed, effective at once: every dependent disclosure stops
    in this transaction (see consent.hooks) and the effects are listed."""
    consent = _load_to_change(session, actor, Permission.CONSENT_WITHDRAW, consent_id)
    at = now()
    event = _add_event(session, actor, consent, EventType.WITHDRAWN, at, reason=reason)
    session.flush()
    session.expire(consent, ["events"])
    effects = run_withdrawal_handlers(session, actor, consent, at)
    if effects:
        event.effects = json.dumps(effects, sort_keys=True, default=str)
    session.flush()
    _audit(session, actor, Permission.CONSENT_WITHDRAW, consent, details={"effects": effects})
    return consent


def renew(
    session: Session,
    actor: Actor,
    consent_id: uuid.UUID,
    valid_until: datetime | None,
    precondition: Precondition | None = None,
) -> ConsentRecord:
    consent = _load_to_change(session, actor, Permission.CONSENT_RECORD, consent_id, precondition)
    at = now()
    if valid_until is not None and valid_until <= at:
        raise ValidationFailed({"valid_until": ["Must be in the future."]})
    renewals = sum(1 for event in consent.events if event.event_type == EventType.RENEWED)
    if renewals >= MAX_RENEWALS_PER_CONSENT:
        raise Conflict(
            f"This consent was renewed {MAX_RENEWALS_PER_CONSENT} times, the most a consent "
            "may be: record a new consent with the person."
        )
    _add_event(session, actor, consent, EventType.RENEWED, at, valid_until=valid_until)
    session.flush()
    session.expire(consent, ["events"])
    _audit(
        session, actor, Permission.CONSENT_RECORD, consent, details={"renewed_until": valid_until}
    )
    return consent


def _close(
    session: Session,
    actor: Actor,
    consent_id: uuid.UUID,
    permission: Permission,
    event_type: EventType,
    reason: str,
    precondition: Precondition | None,
) -> ConsentRecord:
    consent = _load_to_change(session, actor, permission, consent_id, precondition)
    at = now()
    event = _add_event(session, actor, consent, event_type, at, reason=reason)
    session.flush()
    session.expire(consent, ["events"])
    # Like a withdrawal, a revoked or erroneous consent stops every dependent disclosure.
    effects = run_withdrawal_handlers(session, actor, consent, at)
    if effects:
        event.effects = json.dumps(effects, sort_keys=True, default=str)
    session.flush()
    _audit(
        session, actor, permission, consent, details={"event": event_type.value, "effects": effects}
    )
    return consent


def revoke(
    session: Session,
    actor: Actor,
    consent_id: uuid.UUID,
    reason: str,
    precondition: Precondition | None = None,
) -> ConsentRecord:
    """The controller ends the consent (e.g. it was obtained under pressure)."""
    return _close(
        session,
        actor,
        consent_id,
        Permission.CONSENT_REVOKE,
        EventType.REVOKED,
        reason,
        precondition,
    )


def mark_entered_in_error(
    session: Session,
    actor: Actor,
    consent_id: uuid.UUID,
    reason: str,
    precondition: Precondition | None = None,
) -> ConsentRecord:
    return _close(
        session,
        actor,
        consent_id,
        Permission.CONSENT_ENTERED_IN_ERROR,
        EventType.ENTERED_IN_ERROR,
        reason,
        precondition,
    )


def consent_check(
    session: Session,
    actor: Actor,
    case_id: uuid.UUID,
    recipient_org_id: uuid.UUID,
    purpose: Purpose,
    categories: set[Category],
    at: datetime | None,
) -> DisclosureDecision:
    """Transparency: what the consent decision would say for a planned disclosure."""
    cases.authorize(session, actor, Permission.CONSENT_READ, case_id)
    recipient = session.get(Organisation, recipient_org_id)
    if recipient is None:
        raise ValidationFailed({"recipient_org_id": ["No such organisation."]})
    decision = decide_for_case(session, case_id, recipient, purpose, categories, at)
    audit.record(
        session,
        actor,
        "consent:check",
        resource_type="case",
        resource_id=case_id,
        case_id=case_id,
        categories=[c.value for c in categories],
        purpose=purpose.value,
        details={"recipient_org_id": str(recipient_org_id), "permit": decision.permit},
    )
    return decision


def expire_due(
    session: Session, actor: Actor, at: datetime | None = None, batch_size: int = 500
) -> int:
    """Record `expired` events for consents whose provisions have all ended. Idempotent: an
    already expired (or closed) consent gets nothing."""
    at = at or now()
    count = 0
    # An erased case's consents keep their terms (the record of what was agreed) but
    # nothing can be written under the case's destroyed keys: they are left as they are.
    stmt = (
        select(ConsentRecord)
        .join(Case, Case.id == ConsentRecord.case_id)
        .where(Case.erased.is_(False))
        .order_by(ConsentRecord.created_at, ConsentRecord.id)
    )
    for consent in session.scalars(stmt).yield_per(batch_size):
        if not _due_to_expire(consent, at):
            continue
        if not _expire_one(session, actor, consent, at):
            continue
        audit.record(
            session,
            actor,
            "consent:expire",
            resource_type="consent",
            resource_id=consent.id,
            case_id=consent.case_id,
        )
        count += 1
    session.flush()
    return count


def _expire_one(session: Session, actor: Actor, consent: ConsentRecord, at: datetime) -> bool:
    """Record `expired` for one consent, in a savepoint, if it is still due once its case
    row and the consent are held (the order erasure takes them), each taken only if free:
    an erasure, a withdrawal or a renewal holding either is left to finish, and the consent
    to the next run (expiry is reporting only: an ended provision stops permitting at
    once). Waiting instead could deadlock with a withdrawal, which takes the consent first.
    Whether a consent was marked."""
    nested = session.begin_nested()
    try:
        held = (
            session.execute(
                select(Case.id)
                .where(Case.id == consent.case_id, Case.erased.is_(False))
                .with_for_update(key_share=True, skip_locked=True)
            ).first()
            and session.execute(
                select(ConsentRecord.id)
                .where(ConsentRecord.id == consent.id)
                .with_for_update(skip_locked=True)
            ).first()
        )
        # Read again under the locks: a renewal committed since the batch read it is seen.
        session.expire(consent, ["events", "provisions"])
        if not held or not _due_to_expire(consent, at):
            nested.rollback()
            return False
        _add_event(session, actor, consent, EventType.EXPIRED, at)
        session.flush()
    except BaseException:
        nested.rollback()
        raise
    nested.commit()
    return True


def _due_to_expire(consent: ConsentRecord, at: datetime) -> bool:
    # `at` is when the `expired` event is written, a present moment: a consent closed by an
    # event stamped ahead of this host's clock is closed, not due (a live question).
    if any(e.event_type in TERMINAL_EVENTS for e in consent.events):
        return False
    if not is_expired_at(view_of(consent), at):
        return False
    return not (consent.events and consent.events[-1].event_type is EventType.EXPIRED)


def case_of(session: Session, consent: ConsentRecord) -> Case:
    case = session.get(Case, consent.case_id)
    assert case is not None  # noqa: S101 - foreign key
    return case
