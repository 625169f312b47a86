"""Reports for the data-protection officer (DESIGN.md §11). No Flask; (session, actor,
filters) → rows of plain dicts; never commits; every call is audited (`dpo:report`).

Everything here is SQL over plaintext metadata — ids, codes, times — and never decrypts:
no report carries a personal field. Scope is applied in SQL: a DPO sees the cases their
organisation controls (consents, access log, erasures) and the referrals and disclosures
from or to it; a DPO of the platform organisation sees every organisation, and may narrow to
one with `org_id`. Where a row concerns a case of another organisation (a referral the DPO's
organisation received), its case id is withheld: the receiver never learns the sender's case
id, which would link the person's other referrals.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    and_,
    case,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    true,
    union,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor
from referral_api.access.categories import ALL_CATEGORIES, ORG_TYPE_CEILINGS, Category
from referral_api.access.permissions import Permission
from referral_api.access.policy import OUTSIDE_OWN_ORGANISATION, decide, decide_report_scope
from referral_api.access.roles import OrgType
from referral_api.audit import service as audit
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import Organisation
from referral_api.auth.service import SECURITY_EVENT_ACTIONS
from referral_api.cases.models import Case
from referral_api.consent.decision import ConsentView, EventView, ProvisionView, decide_disclosure
from referral_api.consent.models import (
    ConsentEvent,
    ConsentEventSummary,
    ConsentProvision,
    ConsentRecord,
)
from referral_api.consent.vocabulary import ConsentState, EventType, Grantor
from referral_api.db import Base
from referral_api.dpo import keyset
from referral_api.dpo.derived_state import (
    any_late,
    consent_states,
    effective_until,
    in_force,
    provision_state,
)
from referral_api.dpo.keyset import SortKey
from referral_api.exceptions import Conflict, Forbidden, NotFound, ValidationFailed
from referral_api.referrals.models import Disclosure, Referral
from referral_api.referrals.service import SENT
from referral_api.referrals.vocabulary import LIVE_STATUSES
from referral_api.rights.service import retention_due_at, retention_due_select

REPORT_ACTION = "dpo:report"
REVIEW_ACTION = "dpo:override-review"

_CASES = Case.__table__
_RECORDS = ConsentRecord.__table__
_PROVISIONS = ConsentProvision.__table__
_EVENTS = ConsentEvent.__table__
_SUMMARIES = ConsentEventSummary.__table__
_REFERRALS = Referral.__table__
_DISCLOSURES = Disclosure.__table__
_ORGS = Organisation.__table__
_AUDIT = AuditEvent.__table__

_CATEGORY_CODES = frozenset(c.value for c in Category)
QUALITY_ISSUES = ("no_evidence", "minor_without_guardian", "unknown_notice_version")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Report:
    """A report's rows: a page (a list, with the next page's cursor) or, for an export, a
    lazy iterator over every row (read in batches while the response is written)."""

    name: str
    columns: tuple[str, ...]
    rows: Iterable[dict[str, Any]]
    next_cursor: str | None = None


# ---- scope and audit ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose records a report reads: one organisation, or every one (None)."""

    org_id: uuid.UUID | None

    def owns(self, org_column: Any) -> ColumnElement[bool]:
        return literal(True) if self.org_id is None else org_column == self.org_id

    def party(self, from_column: Any, to_column: Any) -> ColumnElement[bool]:
        if self.org_id is None:
            return literal(True)
        return or_(from_column == self.org_id, to_column == self.org_id)

    def sender_case_id(self, from_column: Any, case_column: Any, *, unless: Any = None) -> Any:
        """The value of `case_column` (a case id, or anything naming the person's case) when
        the scope holds the sending organisation (or `unless` holds), else null."""
        if self.org_id is None:
            return case_column
        shown = (
            from_column == self.org_id
            if unless is None
            else or_(from_column == self.org_id, unless)
        )
        return case((shown, case_column), else_=null())


def report_scope(session: Session, actor: Actor, report: str, filters: dict[str, Any]) -> Scope:
    """The organisation(s) a report reads, as access.policy decides; a refusal is audited.
    An `org_id` naming no organisation is a 422: an empty report for it would read as a
    clean one."""
    decision, org_id = decide_report_scope(actor, Permission.DPO_REPORTS, filters.get("org_id"))
    if decision.allowed:
        if org_id not in (None, actor.org_id) and not session.scalar(
            select(exists().where(_ORGS.c.id == org_id))
        ):
            raise ValidationFailed({"org_id": ["No such organisation."]}, location="query")
        return Scope(org_id)
    error = Forbidden(
        "Only a data-protection officer of the platform organisation reports on other "
        "organisations."
        if decision.reason == OUTSIDE_OWN_ORGANISATION
        else "Your role does not allow this action."
    )
    error.audit = {
        "action": REPORT_ACTION,
        "resource_type": "report",
        "resource_id": report,
        "case_id": None,
        "decision": audit.DENY,
        "reason": decision.reason,
    }
    raise error


_AUDITED_FILTERS = (
    "org_id",
    "purpose",
    "recipient_org_id",
    "recipient_org_type",
    "from_",
    "to",
    "within_days",
    "case_id",
    "reviewed",
    "issue",
)


def _audit(
    session: Session,
    actor: Actor,
    report: str,
    filters: dict[str, Any],
    case_id: uuid.UUID | None = None,
) -> None:
    details: dict[str, Any] = {"report": report}
    for key in _AUDITED_FILTERS:
        if filters.get(key) is not None:
            details[key.rstrip("_")] = filters[key]
    if filters.get("limit", 0) is None:
        details["export"] = True
    audit.record(
        session,
        actor,
        REPORT_ACTION,
        resource_type="report",
        resource_id=report,
        case_id=case_id,
        purpose=filters["purpose"].value if filters.get("purpose") else None,
        details=details,
    )


def _case_in_scope(session: Session, scope: Scope, filters: dict[str, Any]) -> uuid.UUID | None:
    """The case a `case_id` filter names, when the report may read it (the organisation
    controls it, or a platform DPO asks): the report's audit row is then on that case's
    access log. Another organisation's case id reads nothing of it, so the row must not
    show an access there (the id stays in the row's details, as typed)."""
    case_id = filters.get("case_id")
    if case_id is None or scope.org_id is None:
        return case_id  # type: ignore[no-any-return]
    owner = session.scalar(select(_CASES.c.org_id).where(_CASES.c.id == case_id))
    return case_id if owner == scope.org_id else None


# ---- shared pieces ------------------------------------------------------------------------

# PostgreSQL settings for the report transaction only (set_config(…, is_local)): JIT
# compilation cost more than these queries themselves (about 1 s of a 1 s consent summary in
# bench/dpo_reports.py), and their hash joins and aggregates over a million rows want more
# than the default 4 MB of working memory.
_POSTGRES_REPORT_SETTINGS = (("jit", "off"), ("work_mem", "64MB"))


def _tune(session: Session) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    for name, value in _POSTGRES_REPORT_SETTINGS:
        session.execute(select(func.set_config(name, value, True)))


def _split(value: str | None) -> list[str]:
    return [item for item in (value or "").split(",") if item]


def _in_range(column: Any, filters: dict[str, Any]) -> list[ColumnElement[bool]]:
    """The date range, half-open: from ≤ t < to."""
    clauses = []
    if filters.get("from_") is not None:
        clauses.append(column >= filters["from_"])
    if filters.get("to") is not None:
        clauses.append(column < filters["to"])
    return clauses


def _recipient_filters(
    org_id_column: Any, org_type_column: Any, filters: dict[str, Any]
) -> list[ColumnElement[bool]]:
    """Filter a provision-like recipient (an organisation or an organisation type)."""
    clauses = []
    if filters.get("recipient_org_id") is not None:
        clauses.append(org_id_column == filters["recipient_org_id"])
    if filters.get("recipient_org_type") is not None:
        wanted = filters["recipient_org_type"]
        of_type = select(_ORGS.c.id).where(_ORGS.c.org_type == wanted)
        clauses.append(or_(org_type_column == wanted, org_id_column.in_(of_type)))
    return clauses


def _has_category(column: Any, category: Category) -> ColumnElement[bool]:
    """`column` (sorted, comma-separated codes) names `category`."""
    return (literal(",") + column + literal(",")).like(f"%,{category.value},%")


def _exported(
    session: Session,
    name: str,
    base: Select[Any],
    order: list[SortKey],
    cursor: str | None,
    shape: Callable[[dict[str, Any]], dict[str, Any]],
    sealed: str | None,
) -> Iterator[dict[str, Any]]:
    """Every row, read when the export is written (in a transaction of its own); the
    cursor is checked now, before the response starts."""
    rows = keyset.stream(session, name, base, order, cursor, sealed)

    def shaped() -> Iterator[dict[str, Any]]:
        _tune(session)
        for row in rows:
            yield shape(row)

    return shaped()


def _listing(
    session: Session,
    name: str,
    columns: tuple[str, ...],
    base: Select[Any],
    order: list[SortKey],
    filters: dict[str, Any],
    shape: Callable[[dict[str, Any]], dict[str, Any]],
    sealed: str | None = None,
) -> Report:
    """A page of `limit` rows, or (limit None) every row as a lazy export. `sealed`: the
    purpose of a sealed cursor, for a report ordered by a row id it does not show."""
    cursor = filters.get("cursor")
    if filters.get("limit") is None:
        return Report(name, columns, _exported(session, name, base, order, cursor, shape, sealed))
    _tune(session)
    page = keyset.page(session, name, base, order, cursor, filters["limit"], sealed)
    return Report(name, columns, [shape(row) for row in page.rows], page.next_cursor)


def _scoped_consents(scope: Scope, filters: dict[str, Any]) -> list[ColumnElement[bool]]:
    return [scope.owns(_RECORDS.c.org_id), *_in_range(_RECORDS.c.created_at, filters)]


def _not_erased(case_id_column: Any) -> ColumnElement[bool]:
    """The case was not erased. An erased person's consents are records of what was: they
    write no closing event (erasure cancels the referrals and destroys the evidence), so
    they would go on reading `active`, in force and due for renewal, though nothing can be
    disclosed or renewed again and there is no one left to ask. NOT EXISTS, an anti-join
    against the few erased cases (index ix_cases_erased): a NOT IN subquery kept PostgreSQL
    from scanning in parallel, and doubled the platform's consent-summary at a million
    cases (bench/README.md, *DPO reports*)."""
    c = _CASES
    return ~exists().where(c.c.id == case_id_column, c.c.erased.is_(True))


# ---- consent-summary ----------------------------------------------------------------------

CONSENT_SUMMARY_COLUMNS = (
    "org_id",
    "state",
    "purpose",
    "recipient_org_id",
    "recipient_org_type",
    "consents",
    "provisions",
    "provisions_in_force",
)


def _repeats(flagged_only: bool) -> Any:
    """The provisions repeating an earlier one of their consent (a lower position) in purpose
    and recipient: a consent counts once per row of consent-summary, and consents = provisions
    - repeats. (A DISTINCT count would sort every provision: seconds over a million cases.)
    `flagged_only`: look only in the consents whose summary says they have a repeat
    (`has_repeats`, migration 0011; a partial index finds the few) — exact for every consent
    with a summary row. A join, not a correlated subquery in the aggregate: that would keep
    PostgreSQL from running the report in parallel workers."""
    p, q = _PROVISIONS.alias("repeat"), _PROVISIONS.alias("earlier")
    found = select(p.c.id).where(
        p.c.position > 0,
        exists().where(
            q.c.consent_id == p.c.consent_id,
            q.c.position < p.c.position,
            q.c.purpose == p.c.purpose,
            q.c.recipient_org_id.is_not_distinct_from(p.c.recipient_org_id),
            q.c.recipient_org_type.is_not_distinct_from(p.c.recipient_org_type),
        ),
    )
    if flagged_only:
        s = _SUMMARIES.alias("flagged")
        found = found.join(s, and_(s.c.consent_id == p.c.consent_id, s.c.has_repeats == true()))
    return found.subquery("repeats")


def _consent_summary_rows(
    session: Session, scope: Scope, filters: dict[str, Any], at: datetime, platform: bool
) -> list[dict[str, Any]]:
    """`platform`: the whole platform with no date on when the consents were recorded. Then
    nothing is read from consent_records but the organisation, which the summary keeps
    (migration 0011), so the report reads provisions ⋈ summaries alone — 1.1 million records
    not joined, nor the provisions with themselves. A provision whose consent has no row in
    `states` (no event at or before `at`) then has no organisation: its row's `org_id` is
    None, and the caller asks again the other way."""
    r, p = _RECORDS, _PROVISIONS
    where = [] if platform else _scoped_consents(scope, filters)
    states = consent_states(
        at,
        select(r.c.id).where(*where) if scope.org_id else None,
        replay_late=any_late(session, at),
        live=True,
    )
    where.append(_not_erased(p.c.case_id))
    if filters.get("purpose") is not None:
        where.append(p.c.purpose == filters["purpose"])
    where += _recipient_filters(p.c.recipient_org_id, p.c.recipient_org_type, filters)
    repeats = _repeats(flagged_only=platform)
    with_state = states.c.consent_id == p.c.consent_id
    if platform:
        joined: Any = p.outerjoin(states, with_state)
        org: Any = states.c.org_id
    else:
        joined = p.join(r, r.c.id == p.c.consent_id).outerjoin(states, with_state)
        org = r.c.org_id
    # Grouped by plain columns and one flag: the consent's kept state (`derived`) and whether
    # an active consent has run out of provisions (`ended`: it then reads `expired`). Both are
    # computed once per provision row and PostgreSQL estimates their groups from column
    # statistics, so it hashes a few thousand groups in parallel workers. (Grouped by the
    # finished state expression instead, it cannot estimate the groups and sorts 1.5 million
    # rows; counting per state in one aggregate per state evaluates the expression 18 times
    # per row.) The outer query folds `ended` into the state over those few thousand rows.
    state = provision_state(states, at)
    ended = and_(states.c.derived == ConsentState.ACTIVE.value, state == ConsentState.EXPIRED.value)
    group = (org, p.c.purpose, p.c.recipient_org_type, p.c.recipient_org_id)
    grouped = (
        select(
            org.label("org_id"),
            *group[1:],
            states.c.derived,
            ended.label("ended"),
            func.sum(case((repeats.c.id.is_(None), 1), else_=0)).label("consents"),
            func.count().label("provisions"),
            func.sum(case((in_force(states, at, p), 1), else_=0)).label("in_force"),
        )
        .select_from(joined.outerjoin(repeats, repeats.c.id == p.c.id))
        .where(*where)
        .group_by(*group, states.c.derived, ended)
        .subquery("consent_summary_groups")
    )
    g = grouped.c
    folded = case((g.ended, ConsentState.EXPIRED.value), else_=g.derived)
    order = (g.org_id, folded, g.purpose, g.recipient_org_type, g.recipient_org_id)
    stmt = (
        select(
            g.org_id,
            folded.label("state"),
            g.purpose,
            g.recipient_org_id,
            g.recipient_org_type,
            func.sum(g.consents).label("consents"),
            func.sum(g.provisions).label("provisions"),
            func.sum(g.in_force).label("provisions_in_force"),
        )
        .group_by(*order)
        .order_by(*(column.asc().nulls_last() for column in order))
    )
    return [
        {
            **row,
            "consents": int(row["consents"]),
            "provisions": int(row["provisions"]),
            "provisions_in_force": int(row["provisions_in_force"]),
        }
        for row in session.execute(stmt).mappings()
    ]


def consent_summary(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Consents and provisions by derived consent state, purpose, recipient and controlling
    organisation. `consents` counts the distinct consents with a provision in the row (a
    consent with two purposes counts in both rows); `provisions_in_force` those a disclosure
    decision would use now. Erased cases are left out (`_not_erased`). Date range: when the
    consent was recorded."""
    name = "consent-summary"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    _tune(session)
    at = now()
    platform = scope.org_id is None and not _in_range(_RECORDS.c.created_at, filters)
    rows = _consent_summary_rows(session, scope, filters, at, platform)
    if platform and any(row["org_id"] is None for row in rows):
        # Some provision's consent has no summary row to name its organisation: it has no
        # event (only a raw write makes such a consent) or, on a clock behind the events,
        # none yet. Counted exactly by joining the consent records, as an organisation's
        # report always is.
        rows = _consent_summary_rows(session, scope, filters, at, platform=False)
    return Report(name, CONSENT_SUMMARY_COLUMNS, rows)


# ---- consents-expiring --------------------------------------------------------------------

CONSENTS_EXPIRING_COLUMNS = (
    "provision_id",
    "consent_id",
    "case_id",
    "org_id",
    "purpose",
    "recipient_org_id",
    "recipient_org_type",
    "categories",
    "valid_from",
    "effective_until",
    "renewed",
)


def consents_expiring(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Provisions of active consents whose effective end (their own `valid_until`, or the
    latest renewal's) falls within `within_days` from now; soonest first. Erased cases are
    left out: no one can renew their consents."""
    name = "consents-expiring"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    at = now()
    horizon = at + timedelta(days=filters["within_days"])
    r, p, e = _RECORDS, _PROVISIONS, _EVENTS
    # Only consents with an end inside the window can qualify: replay just those.
    ending = union(
        select(p.c.consent_id).where(p.c.valid_until > at, p.c.valid_until <= horizon),
        select(e.c.consent_id).where(
            e.c.event_type == EventType.RENEWED, e.c.valid_until > at, e.c.valid_until <= horizon
        ),
    )
    where = _scoped_consents(scope, filters)
    states = consent_states(at, select(r.c.id).where(r.c.id.in_(ending), *where), live=True)
    until = effective_until(states, p)
    where.append(_not_erased(r.c.case_id))
    where += _recipient_filters(p.c.recipient_org_id, p.c.recipient_org_type, filters)
    if filters.get("purpose") is not None:
        where.append(p.c.purpose == filters["purpose"])
    base = (
        select(
            p.c.id.label("provision_id"),
            p.c.consent_id,
            r.c.case_id,
            r.c.org_id,
            p.c.purpose,
            p.c.recipient_org_id,
            p.c.recipient_org_type,
            p.c.categories,
            p.c.valid_from,
            until.label("effective_until"),
            states.c.renewed,
        )
        .select_from(
            p.join(r, r.c.id == p.c.consent_id).join(states, states.c.consent_id == r.c.id)
        )
        .where(states.c.derived == "active", until > at, until <= horizon, *where)
    )

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "categories": _split(row["categories"]), "renewed": bool(row["renewed"])}

    order = [SortKey("effective_until", "d"), SortKey("provision_id", "u")]
    return _listing(session, name, CONSENTS_EXPIRING_COLUMNS, base, order, filters, shape)


# ---- processing-without-basis -------------------------------------------------------------

PROCESSING_COLUMNS = (
    "kind",
    "referral_id",
    "disclosure_id",
    "case_id",
    "from_org_id",
    "to_org_id",
    "to_org_type",
    "purpose",
    "categories",
    "status",
    "sent_at",
    "disclosed_at",
    "acknowledged_at",
    "uncovered_categories",
    "reason",
)
# Candidates evaluated per round (one consent load per round).
_EVALUATION_BATCH = 200


def _within_ceiling(referral_categories: Any, org_type: Any) -> ColumnElement[bool]:
    over = [
        and_(org_type == kind, or_(*(_has_category(referral_categories, c) for c in excluded)))
        for kind, ceiling in ORG_TYPE_CEILINGS.items()
        if (excluded := sorted(ALL_CATEGORIES - ceiling))
    ]
    return ~or_(*over) if over else literal(True)


def _covering_provision(r: Any, o: Any, at: datetime) -> Any:
    """EXISTS one provision that alone covers the referral now: purpose, recipient, every
    category, its window, and a consent (by its event summary) with `given` by `at` and no
    closing or expired event at all, whose provisions end either on their own (no renewal
    after `given`) or with its latest renewal (after `given`, by `at`, to an end after `at`).
    Stricter than the decision, never looser: an event after `at`, an expiry, or a renewal
    at the very instant of `given` leaves the referral to the exact check, so one that this
    covers is certainly covered.

    Only ANDs and ORs of the joined rows' columns: the database turns the NOT EXISTS into one
    (parallel) anti-join of the live referrals with provisions joined to their consents'
    summaries, instead of a subquery per referral or a semi-join per kind of event."""
    p, s = _PROVISIONS.alias("cover"), _SUMMARIES.alias("cover_events")
    own_end = and_(
        or_(s.c.renewed_at.is_(None), s.c.renewed_at < s.c.given_at),
        or_(p.c.valid_until.is_(None), p.c.valid_until > at),
    )
    renewal_end = and_(
        s.c.renewed_at > s.c.given_at,
        s.c.renewed_at <= at,
        or_(s.c.renewed_until.is_(None), s.c.renewed_until > at),
    )
    return exists().where(
        p.c.case_id == r.c.case_id,
        p.c.purpose == r.c.purpose,
        or_(
            p.c.recipient_org_id == r.c.to_org_id,
            and_(p.c.recipient_org_id.is_(None), p.c.recipient_org_type == o.c.org_type),
        ),
        p.c.valid_from <= at,
        or_(
            p.c.categories == r.c.categories,
            and_(
                *(
                    or_(~_has_category(r.c.categories, c), _has_category(p.c.categories, c))
                    for c in Category
                )
            ),
        ),
        s.c.consent_id == p.c.consent_id,
        s.c.given_at <= at,
        s.c.withdrawn_at.is_(None),
        s.c.revoked_at.is_(None),
        s.c.erroneous_at.is_(None),
        s.c.expired_at.is_(None),
        or_(own_end, renewal_end),
    )


def _consent_views(session: Session, case_ids: set[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """The consents of some cases as the pure decision sees them (metadata only)."""
    ids = sorted(case_ids)
    records = session.execute(
        select(_RECORDS.c.id, _RECORDS.c.case_id)
        .where(_RECORDS.c.case_id.in_(ids))
        .order_by(_RECORDS.c.created_at, _RECORDS.c.id)
    ).all()
    consent_ids = [row.id for row in records]
    provisions: dict[uuid.UUID, list[ProvisionView]] = {}
    for provision in session.execute(
        select(_PROVISIONS)
        .where(_PROVISIONS.c.consent_id.in_(consent_ids))
        .order_by(_PROVISIONS.c.consent_id, _PROVISIONS.c.position)
    ).mappings():
        provisions.setdefault(provision["consent_id"], []).append(
            ProvisionView(
                id=provision["id"],
                purpose=provision["purpose"],
                recipient_org_id=provision["recipient_org_id"],
                recipient_org_type=provision["recipient_org_type"],
                # A code no release ever wrote (a tampered row) covers nothing.
                categories=frozenset(
                    Category(c) for c in _split(provision["categories"]) if c in _CATEGORY_CODES
                ),
                valid_from=provision["valid_from"],
                valid_until=provision["valid_until"],
            )
        )
    events: dict[uuid.UUID, list[EventView]] = {}
    for event in session.execute(
        select(
            _EVENTS.c.consent_id,
            _EVENTS.c.event_type,
            _EVENTS.c.occurred_at,
            _EVENTS.c.valid_until,
        )
        .where(_EVENTS.c.consent_id.in_(consent_ids))
        .order_by(_EVENTS.c.occurred_at, _EVENTS.c.id)
    ):
        events.setdefault(event.consent_id, []).append(
            EventView(event.event_type, event.occurred_at, event.valid_until)
        )
    views: dict[uuid.UUID, list[Any]] = {}
    for row in records:
        views.setdefault(row.case_id, []).append(
            ConsentView(
                id=row.id,
                provisions=tuple(provisions.get(row.id, ())),
                events=tuple(events.get(row.id, ())),
            )
        )
    return views


def _uncovered(
    views: list[Any], candidate: dict[str, Any], at: datetime
) -> tuple[list[str], str] | None:
    """(uncovered categories, why) when the decision would not permit the referral now."""
    codes = _split(candidate["categories"])
    unknown = [code for code in codes if code not in _CATEGORY_CODES]
    if unknown or not codes:
        return sorted(unknown), "unknown or missing data categories"
    decision = decide_disclosure(
        views,
        candidate["to_org_id"],
        OrgType(candidate["to_org_type"]),
        candidate["purpose"],
        [Category(code) for code in codes],
        at,
        live=True,
    )
    if decision.permit:
        return None
    denied = sorted(decision.denied)
    return [c.value for c in denied], decision.denied[denied[0]]


def _processing_rows(
    session: Session,
    base: Any,
    at: datetime,
    start: tuple[datetime, uuid.UUID] | None,
) -> Iterator[tuple[tuple[datetime, uuid.UUID, int], dict[str, Any]]]:
    """Uncovered live referrals (each followed by its disclosures), newest first, from the
    candidate at `start` (inclusive), keyed (created_at, referral id, position)."""
    _tune(session)
    sub = base.subquery("candidates")
    columns = [sub.c.created_at, sub.c.referral_id]
    stmt = select(sub)
    if start is not None:
        order = [SortKey("created_at", "d", True), SortKey("referral_id", "u", True)]
        stmt = stmt.where(
            or_(
                keyset.after(columns, order, start),
                and_(columns[0] == start[0], columns[1] == start[1]),
            )
        )
    # Every candidate in one query: a healthy system has few, and a LIMIT or a server-side
    # cursor would make the database plan for the first rows — probing provisions and events
    # once per live referral — instead of joining them in bulk.
    candidates = [
        dict(row)
        for row in session.execute(stmt.order_by(columns[0].desc(), columns[1].desc())).mappings()
    ]
    for offset in range(0, len(candidates), _EVALUATION_BATCH):
        batch = candidates[offset : offset + _EVALUATION_BATCH]
        views = _consent_views(session, {row["case_id"] for row in batch})
        findings = {}
        for candidate in batch:
            verdict = _uncovered(views.get(candidate["case_id"], []), candidate, at)
            if verdict is not None:
                findings[candidate["referral_id"]] = verdict
        disclosures: dict[uuid.UUID, list[dict[str, Any]]] = {}
        if findings:
            for row in session.execute(
                select(_DISCLOSURES)
                .where(_DISCLOSURES.c.referral_id.in_(sorted(findings)))
                .order_by(_DISCLOSURES.c.disclosed_at, _DISCLOSURES.c.id)
            ).mappings():
                disclosures.setdefault(row["referral_id"], []).append(dict(row))
        for candidate in batch:
            if candidate["referral_id"] not in findings:
                continue
            uncovered, why = findings[candidate["referral_id"]]
            referral_row = {
                "kind": "referral",
                "referral_id": candidate["referral_id"],
                "disclosure_id": None,
                "case_id": candidate["shown_case_id"],
                "from_org_id": candidate["from_org_id"],
                "to_org_id": candidate["to_org_id"],
                "to_org_type": candidate["to_org_type"],
                "purpose": candidate["purpose"],
                "categories": _split(candidate["categories"]),
                "status": candidate["status"],
                "sent_at": candidate["sent_at"],
                "disclosed_at": None,
                "acknowledged_at": None,
                "uncovered_categories": uncovered,
                "reason": why,
            }
            key = (candidate["created_at"], candidate["referral_id"])
            yield (*key, 0), referral_row
            for position, disclosure in enumerate(
                disclosures.get(candidate["referral_id"], []), start=1
            ):
                yield (
                    (*key, position),
                    {
                        **referral_row,
                        "kind": "disclosure",
                        "disclosure_id": disclosure["id"],
                        "categories": _split(disclosure["categories"]),
                        "disclosed_at": disclosure["disclosed_at"],
                        "acknowledged_at": disclosure["acknowledged_at"],
                    },
                )


def processing_without_basis(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Live referrals without an approved override that no active provision in force covers
    now (purpose, recipient, every category), each followed by the disclosures through which
    the recipient holds the data. Empty in a healthy system. Date range: when the referral was
    created.

    SQL keeps only the referrals that no single provision clearly covers; each of those is
    then judged by `consent.decision.decide_disclosure` over its case's consent metadata, so a
    referral covered by several provisions together is not reported."""
    name = "processing-without-basis"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    at = now()
    r, o = _REFERRALS, _ORGS
    where = [
        r.c.status.in_(sorted(LIVE_STATUSES)),
        r.c.override_approved_at.is_(None),
        scope.party(r.c.from_org_id, r.c.to_org_id),
        *_in_range(r.c.created_at, filters),
    ]
    if filters.get("purpose") is not None:
        where.append(r.c.purpose == filters["purpose"])
    if filters.get("recipient_org_id") is not None:
        where.append(r.c.to_org_id == filters["recipient_org_id"])
    if filters.get("recipient_org_type") is not None:
        where.append(o.c.org_type == filters["recipient_org_type"])
    columns = (
        r.c.id.label("referral_id"),
        r.c.case_id,
        scope.sender_case_id(r.c.from_org_id, r.c.case_id).label("shown_case_id"),
        r.c.from_org_id,
        r.c.to_org_id,
        o.c.org_type.label("to_org_type"),
        r.c.purpose,
        r.c.categories,
        r.c.status,
        r.c.created_at,
        r.c.sent_at,
    )
    joined = r.join(o, o.c.id == r.c.to_org_id)
    within = _within_ceiling(r.c.categories, o.c.org_type)
    # Two selects rather than an OR, so that the NOT EXISTS can become an anti-join.
    base = union_all(
        select(*columns)
        .select_from(joined)
        .where(
            *where,
            within,
            ~_covering_provision(r, o, at),
        ),
        select(*columns).select_from(joined).where(*where, ~within),
    )
    start: tuple[datetime, uuid.UUID] | None = None
    skip = 0
    if filters.get("cursor"):
        created, referral_id, skip = keyset.decode_cursor(name, filters["cursor"], "dui")
        start = (created, referral_id)
    found = (
        (key, row)
        for key, row in _processing_rows(session, base, at, start)
        if not (start is not None and key[:2] == start and key[2] < skip)
    )
    if filters.get("limit") is None:
        return Report(name, PROCESSING_COLUMNS, (row for _, row in found))
    rows: list[dict[str, Any]] = []
    next_cursor = None
    for key, row in found:
        if len(rows) == filters["limit"]:
            next_cursor = keyset.encode_cursor(name, list(key))
            break
        rows.append(row)
    return Report(name, PROCESSING_COLUMNS, rows, next_cursor)


# ---- overrides ----------------------------------------------------------------------------

OVERRIDES_COLUMNS = (
    "referral_id",
    "case_id",
    "from_org_id",
    "to_org_id",
    "purpose",
    "categories",
    "status",
    "override_reason",
    "requested_by",
    "approved_by",
    "approved_at",
    "reviewed_by",
    "reviewed_at",
    "created_at",
    "sent_at",
)


def _override_select(scope: Scope) -> Select[Any]:
    r = _REFERRALS
    return select(
        r.c.id.label("referral_id"),
        scope.sender_case_id(r.c.from_org_id, r.c.case_id).label("case_id"),
        r.c.from_org_id,
        r.c.to_org_id,
        r.c.purpose,
        r.c.categories,
        r.c.status,
        r.c.override_reason,
        r.c.override_requested_by.label("requested_by"),
        r.c.override_approved_by.label("approved_by"),
        r.c.override_approved_at.label("approved_at"),
        r.c.override_reviewed_by.label("reviewed_by"),
        r.c.override_reviewed_at.label("reviewed_at"),
        r.c.created_at,
        r.c.sent_at,
    ).where(r.c.override_reason.is_not(None))


def _override_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "categories": _split(row["categories"])}


def overrides(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Every referral that asked for a legal-basis override: reason code, who asked, who
    approved and when, and the DPO's review. Newest first; date range: referral created.
    The receiving organisation sees only the referrals sent to it: one never sent does not
    exist for it."""
    name = "overrides"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    r = _REFERRALS
    where = [
        scope.party(r.c.from_org_id, r.c.to_org_id),
        or_(scope.owns(r.c.from_org_id), SENT),
        *_in_range(r.c.created_at, filters),
    ]
    if filters.get("purpose") is not None:
        where.append(r.c.purpose == filters["purpose"])
    if filters.get("recipient_org_id") is not None:
        where.append(r.c.to_org_id == filters["recipient_org_id"])
    if filters.get("recipient_org_type") is not None:
        of_type = select(_ORGS.c.id).where(_ORGS.c.org_type == filters["recipient_org_type"])
        where.append(r.c.to_org_id.in_(of_type))
    if filters.get("reviewed") is not None:
        reviewed = r.c.override_reviewed_at.is_not(None)
        where.append(reviewed if filters["reviewed"] else ~reviewed)
    base = _override_select(scope).where(*where)
    order = [SortKey("created_at", "d", True), SortKey("referral_id", "u", True)]
    return _listing(session, name, OVERRIDES_COLUMNS, base, order, filters, _override_row)


def review_override(session: Session, actor: Actor, referral_id: uuid.UUID) -> dict[str, Any]:
    """The DPO records that they reviewed an override, once. The sending organisation's DPO
    (or the platform's) reviews it; anyone else outside the referral gets 404 — so does the
    receiving organisation's DPO for a referral never sent (it does not exist for them); for
    a sent one they get 403."""
    scope = report_scope(session, actor, "overrides", {})
    r = _REFERRALS
    found = session.execute(
        select(
            r.c.case_id,
            r.c.from_org_id,
            r.c.to_org_id,
            r.c.override_reason,
            r.c.override_approved_at,
            SENT.label("sent"),
        ).where(r.c.id == referral_id)
    ).one_or_none()
    refusal = {
        "action": REVIEW_ACTION,
        "resource_type": "referral",
        "resource_id": str(referral_id),
        "case_id": None,
        "decision": audit.DENY,
    }
    if (
        found is None
        or found.override_reason is None
        or scope.org_id not in (None, found.from_org_id, found.to_org_id)
        or (scope.org_id not in (None, found.from_org_id) and not found.sent)
    ):
        error: NotFound | Forbidden = NotFound()
        error.audit = {**refusal, "reason": "no override in scope"}
        raise error
    if scope.org_id not in (None, found.from_org_id):
        error = Forbidden("The sending organisation's data-protection officer reviews overrides.")
        error.audit = {**refusal, "reason": "not the sending organisation"}
        raise error
    if found.override_approved_at is None:
        # A review records that the officer saw an approved override and what it disclosed:
        # one recorded before the approval would keep the approval out of the queue.
        raise Conflict("This override has not been approved yet: review it once it is.")
    at = now()
    # One conditional UPDATE: two officers reviewing at once cannot both succeed (and the
    # approval is final: it is never withdrawn).
    reviewed = session.execute(
        update(r)
        .where(r.c.id == referral_id, r.c.override_reviewed_at.is_(None))
        .values(override_reviewed_by=actor.id, override_reviewed_at=at)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], reviewed).rowcount != 1:
        raise Conflict("This override has already been reviewed.")
    audit.record(
        session,
        actor,
        REVIEW_ACTION,
        resource_type="referral",
        resource_id=referral_id,
        case_id=found.case_id,
        legal_basis=f"override:{found.override_reason.value}",
        details={"override": found.override_reason.value},
    )
    row = session.execute(_override_select(scope).where(r.c.id == referral_id)).mappings().one()
    return _override_row(dict(row))


# ---- disclosures --------------------------------------------------------------------------

DISCLOSURES_COLUMNS = (
    "disclosure_id",
    "referral_id",
    "case_id",
    "from_org_id",
    "to_org_id",
    "to_org_type",
    "purpose",
    "categories",
    "basis_type",
    "basis",
    "disclosed_by",
    "disclosed_at",
    "acknowledged_at",
)


def disclosures(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Every disclosure from or to the organisation: to whom (and its type — police
    especially), which categories, on what basis (consent provision ids or an override
    reason), when, and when the recipient acknowledged it. `case_id` narrows to one of the
    organisation's own cases. Newest first; date range: disclosed."""
    name = "disclosures"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters, case_id=_case_in_scope(session, scope, filters))
    d, o = _DISCLOSURES, _ORGS
    where = [scope.party(d.c.from_org_id, d.c.to_org_id), *_in_range(d.c.disclosed_at, filters)]
    if filters.get("case_id") is not None:
        # Only the controlling organisation looks a case up: for a receiver it would link
        # the person's referrals.
        where += [d.c.case_id == filters["case_id"], scope.owns(d.c.from_org_id)]
    if filters.get("purpose") is not None:
        where.append(d.c.purpose == filters["purpose"])
    if filters.get("recipient_org_id") is not None:
        where.append(d.c.to_org_id == filters["recipient_org_id"])
    if filters.get("recipient_org_type") is not None:
        where.append(o.c.org_type == filters["recipient_org_type"])
    base = (
        select(
            d.c.id.label("disclosure_id"),
            d.c.referral_id,
            scope.sender_case_id(d.c.from_org_id, d.c.case_id).label("case_id"),
            d.c.from_org_id,
            d.c.to_org_id,
            o.c.org_type.label("to_org_type"),
            d.c.purpose,
            d.c.categories,
            d.c.basis_type,
            # Consent provision ids belong to one person's consent: like the case id, they
            # would let the receiver link that person's referrals. An override's reason code
            # names no one.
            scope.sender_case_id(
                d.c.from_org_id, d.c.basis, unless=d.c.basis_type != "consent"
            ).label("basis"),
            d.c.disclosed_by,
            d.c.disclosed_at,
            d.c.acknowledged_at,
        )
        .select_from(d.join(o, o.c.id == d.c.to_org_id))
        .where(*where)
    )

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "categories": _split(row["categories"])}

    order = [SortKey("disclosed_at", "d", True), SortKey("disclosure_id", "u", True)]
    return _listing(session, name, DISCLOSURES_COLUMNS, base, order, filters, shape)


# ---- audit rows: access-log, sign-in-failures ---------------------------------------------

# Audit rows are paged newest first by their id, which is numbered across the platform: two
# ids read a while apart would tell an officer how much every other organisation did in
# between. The rows leave it out, and the cursor seals it (`pagination.seal_id_cursor`, as
# the case's own access log does) for a purpose naming the report and its scope, so that a
# cursor of another case's log or of another scope is refused.
_AUDIT_ROW = "audit_row"


def _sealed_for(name: str, scope: Scope, case_id: uuid.UUID | None = None) -> str:
    purpose = f"dpo report {name} of {scope.org_id or 'every organisation'}"
    return purpose if case_id is None else f"{purpose} case {case_id}"


def _audit_listing(
    session: Session,
    name: str,
    columns: tuple[str, ...],
    base: Select[Any],
    filters: dict[str, Any],
    shape: Callable[[dict[str, Any]], dict[str, Any]],
    sealed: str,
) -> Report:
    """A page (or the export) of audit rows selected with their id as `_AUDIT_ROW`."""

    def shown(row: dict[str, Any]) -> dict[str, Any]:
        shaped = shape(row)
        del shaped[_AUDIT_ROW]
        return shaped

    order = [SortKey(_AUDIT_ROW, "i", True)]
    return _listing(session, name, columns, base, order, filters, shown, sealed)


# ---- access-log ---------------------------------------------------------------------------

ACCESS_LOG_COLUMNS = (
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_role",
    "actor_org_id",
    "acting_officer",
    "action",
    "resource_type",
    "resource_id",
    "categories",
    "purpose",
    "decision",
    "reason",
    "legal_basis",
)


def access_log(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Every audit row of one case the organisation controls: who (user or client, acting
    officer), role, organisation, when, what, which categories, allowed or denied, on what
    basis. Newest first; this report's own reading is the first row. 404 outside scope."""
    name = "access-log"
    scope = report_scope(session, actor, name, filters)
    case_id = filters["case_id"]
    # Record scope by the policy (a platform DPO: any case; otherwise the own organisation's),
    # then the report's own organisation filter. An erased case keeps its log.
    case = session.execute(
        select(_CASES.c.case_code, _CASES.c.org_id).where(_CASES.c.id == case_id)
    ).one_or_none()
    if (
        case is None
        or not decide(actor, Permission.CASE_ACCESS_LOG, case)
        or scope.org_id not in (None, case.org_id)
    ):
        error = NotFound()
        error.audit = {
            "action": REPORT_ACTION,
            "resource_type": "report",
            "resource_id": name,
            "case_id": None,
            "decision": audit.DENY,
            "reason": "case outside the officer's scope",
        }
        raise error
    _audit(session, actor, name, filters, case_id=case_id)
    a = _AUDIT
    where = [a.c.case_id == case_id, *_in_range(a.c.occurred_at, filters)]
    if filters.get("purpose") is not None:
        where.append(a.c.purpose == filters["purpose"].value)
    base = select(
        a.c.id.label(_AUDIT_ROW),
        a.c.occurred_at,
        a.c.actor_type,
        a.c.actor_id,
        a.c.actor_role,
        a.c.actor_org_id,
        a.c.acting_officer,
        a.c.action,
        a.c.resource_type,
        a.c.resource_id,
        a.c.categories,
        a.c.purpose,
        a.c.decision,
        a.c.reason,
        a.c.legal_basis,
    ).where(*where)
    # The report's own row is in this transaction: make it visible to the query.
    session.flush()

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "categories": _split(row["categories"])}

    return _audit_listing(
        session, name, ACCESS_LOG_COLUMNS, base, filters, shape, _sealed_for(name, scope, case_id)
    )


# ---- erasures -----------------------------------------------------------------------------

ERASURES_COLUMNS = (
    "tombstone_id",
    "case_id",
    "org_id",
    "request_id",
    "basis",
    "requested_by",
    "approved_by",
    "erased_at",
    "data_keys_destroyed",
    "ciphertexts_cleared",
    "index_entries_deleted",
    "referrals_cancelled",
    "key_digest",
)


def erasure_register_table() -> Any:
    """The tombstones' table when the subject-rights feature has declared it, else None.
    (Wire to a model directly with `return ErasureTombstone.__table__`.)"""
    try:
        from referral_api.rights import models as _rights  # noqa: F401 - declares the table
    except ImportError:
        return None
    return Base.metadata.tables.get("erasure_tombstones")


def erasures(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """The erasure register: one tombstone per crypto-shredded case — when, who asked and
    who approved, on which Art. 17 ground, what was destroyed (counts) and a digest of the
    destroyed wrapped keys. No personal data. Newest first; date range: erased."""
    name = "erasures"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    t = erasure_register_table()
    if t is None:
        return Report(name, ERASURES_COLUMNS, [])
    column = {name: t.c[name] if name in t.c else null() for name in ERASURES_COLUMNS}
    column["tombstone_id"] = t.c.id
    base = select(*(value.label(label) for label, value in column.items())).where(
        scope.owns(t.c.org_id), *_in_range(t.c.erased_at, filters)
    )
    order = [SortKey("erased_at", "d", True), SortKey("tombstone_id", "u", True)]
    return _listing(session, name, ERASURES_COLUMNS, base, order, filters, lambda row: row)


# ---- sign-in-failures ---------------------------------------------------------------------

SIGN_IN_FAILURES_COLUMNS = (
    "occurred_at",
    "action",
    "account_type",
    "account_id",
    "org_id",
    "reason",
    "locked",
    "request_id",
)


def sign_in_failures(session: Session, actor: Actor, filters: dict[str, Any]) -> Report:
    """Refused sign-ins (password or client credentials) and replayed refresh tokens on the
    organisation's accounts, from the audit log: when, which account, why (unknown account,
    wrong secret, inactive account or organisation, token reuse), which locks the failure
    started, the request id. Attempts on no account at all have no organisation: only a
    data-protection officer of the platform sees them. Newest first; date range: occurred."""
    name = "sign-in-failures"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    a = _AUDIT
    base = select(
        a.c.id.label(_AUDIT_ROW),
        a.c.occurred_at,
        a.c.action,
        a.c.resource_type.label("account_type"),
        a.c.resource_id.label("account_id"),
        a.c.actor_org_id.label("org_id"),
        a.c.reason,
        a.c.details.label("locked"),
        a.c.request_id,
    ).where(
        a.c.action.in_(SECURITY_EVENT_ACTIONS),
        a.c.decision == audit.DENY,
        scope.owns(a.c.actor_org_id),
        *_in_range(a.c.occurred_at, filters),
    )

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        details = json.loads(row["locked"]) if row["locked"] else {}
        return {**row, "locked": list(details.get("locked", ()))}

    return _audit_listing(
        session, name, SIGN_IN_FAILURES_COLUMNS, base, filters, shape, _sealed_for(name, scope)
    )


# ---- quality ------------------------------------------------------------------------------

QUALITY_COLUMNS = (
    "consent_id",
    "case_id",
    "org_id",
    "created_at",
    "grantor",
    "is_minor",
    "collection_method",
    "notice_version",
    "no_evidence",
    "minor_without_guardian",
    "unknown_notice_version",
)


def quality(
    session: Session, actor: Actor, filters: dict[str, Any], known_notice_versions: list[str]
) -> Report:
    """Consents with a record-keeping problem: no evidence attached, a minor's consent not
    given by a guardian, a notice version the deployment does not know (an empty list of
    known versions flags every consent). `issue` keeps one kind. An erased person's consents
    are left out (their evidence was destroyed on purpose). Newest first; date range:
    consent recorded."""
    name = "quality"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    r = _RECORDS
    problems: dict[str, ColumnElement[bool]] = {
        "no_evidence": r.c.evidence_sha256.is_(None),
        "minor_without_guardian": and_(r.c.is_minor == True, r.c.grantor != Grantor.GUARDIAN),  # noqa: E712
        "unknown_notice_version": r.c.notice_version.not_in(known_notice_versions)
        if known_notice_versions
        else literal(True),
    }
    wanted = [problems[filters["issue"]]] if filters.get("issue") else list(problems.values())
    # An erased person's consents have their evidence destroyed on purpose: nothing to fix.
    where = [or_(*wanted), _not_erased(r.c.case_id), *_scoped_consents(scope, filters)]
    provision_filters = _recipient_filters(
        _PROVISIONS.c.recipient_org_id, _PROVISIONS.c.recipient_org_type, filters
    )
    if filters.get("purpose") is not None:
        provision_filters.append(_PROVISIONS.c.purpose == filters["purpose"])
    if provision_filters:
        where.append(exists().where(_PROVISIONS.c.consent_id == r.c.id, *provision_filters))
    base = select(
        r.c.id.label("consent_id"),
        r.c.case_id,
        r.c.org_id,
        r.c.created_at,
        r.c.grantor,
        r.c.is_minor,
        r.c.collection_method,
        r.c.notice_version,
        *(case((clause, 1), else_=0).label(label) for label, clause in problems.items()),
    ).where(*where)

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, **{issue: bool(row[issue]) for issue in QUALITY_ISSUES}}

    order = [SortKey("created_at", "d", True), SortKey("consent_id", "u", True)]
    return _listing(session, name, QUALITY_COLUMNS, base, order, filters, shape)


# ---- retention-due ------------------------------------------------------------------------

RETENTION_DUE_COLUMNS = (
    "case_id",
    "org_id",
    "case_type",
    "closed_at",
    "due_at",
    "legal_hold",
    "restricted",
)


def retention_due(
    session: Session,
    actor: Actor,
    filters: dict[str, Any],
    policy: dict[str, dict[str, int]] | None,
) -> Report:
    """Closed cases past their retention period under `policy` (days after closure, per
    case type), legal holds and restrictions flagged (both skipped): what `referral-api
    retention run` lists. Oldest
    closure first."""
    name = "retention-due"
    scope = report_scope(session, actor, name, filters)
    _audit(session, actor, name, filters)
    periods = policy or {}  # none configured: nothing is due
    base = retention_due_select(periods, now(), scope.org_id)

    def shape(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "case_id": row["case_id"],
            "org_id": row["org_id"],
            "case_type": str(row["case_type"]),
            "closed_at": row["closed_at"],
            "due_at": retention_due_at(periods, row["case_type"], row["closed_at"]),
            "legal_hold": bool(row["legal_hold"]),
            "restricted": bool(row["restricted"]),
        }

    order = [SortKey("closed_at", "d"), SortKey("case_id", "u")]
    return _listing(session, name, RETENTION_DUE_COLUMNS, base, order, filters, shape)


REPORTS: dict[str, tuple[str, ...]] = {
    "consent-summary": CONSENT_SUMMARY_COLUMNS,
    "consents-expiring": CONSENTS_EXPIRING_COLUMNS,
    "processing-without-basis": PROCESSING_COLUMNS,
    "overrides": OVERRIDES_COLUMNS,
    "disclosures": DISCLOSURES_COLUMNS,
    "access-log": ACCESS_LOG_COLUMNS,
    "erasures": ERASURES_COLUMNS,
    "sign-in-failures": SIGN_IN_FAILURES_COLUMNS,
    "quality": QUALITY_COLUMNS,
    "retention-due": RETENTION_DUE_COLUMNS,
}
