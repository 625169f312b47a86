"""Case rules. No Flask; takes (session, actor, …); never commits; audits in the caller's
transaction. Denials raise NotFound/Forbidden carrying the audit entry to record."""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.categories import Category
from referral_api.access.permissions import Permission
from referral_api.access.policy import (
    Decision,
    case_list_scope,
    decide,
    list_categories,
    visible_categories,
)
from referral_api.access.roles import Role
from referral_api.audit import service as audit
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import User
from referral_api.cases import search
from referral_api.cases.codes import ActivateReason, CloseReason, ReopenReason
from referral_api.cases.layout import CATEGORY_FIELDS, project, shown_value
from referral_api.cases.models import (
    Case,
    CaseNote,
    CaseStatus,
    CaseStatusChange,
    insert_cases,
    must_be_processable,
)
from referral_api.crypto.fields import crypto_of
from referral_api.crypto.keys import remember_wrapped_case_key
from referral_api.crypto.models import CaseKey
from referral_api.exceptions import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    ProcessingRestricted,
    ValidationFailed,
)
from referral_api.pagination import (
    Page,
    after_cursor,
    fetch_page,
    newest_first,
    open_id_cursor,
    page_parameters,
    paginate,
    seal_id_cursor,
)

T = TypeVar("T")

# Case codes: prefix, then 8 characters from an alphabet without look-alikes (I, O, 0, 1).
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_ASSIGNABLE_ROLES = frozenset({Role.CASEWORKER, Role.SUPERVISOR, Role.POLICE_OFFICER})

# Allowed status moves → (permission needed, reason codes accepted, reason required).
_TRANSITIONS: dict[tuple[CaseStatus, CaseStatus], tuple[Permission, frozenset[str], bool]] = {
    (CaseStatus.OPEN, CaseStatus.ACTIVE): (
        Permission.CASE_UPDATE,
        frozenset(ActivateReason),
        False,
    ),
    (CaseStatus.OPEN, CaseStatus.CLOSED): (Permission.CASE_CLOSE, frozenset(CloseReason), True),
    (CaseStatus.ACTIVE, CaseStatus.CLOSED): (Permission.CASE_CLOSE, frozenset(CloseReason), True),
    (CaseStatus.CLOSED, CaseStatus.OPEN): (Permission.CASE_CLOSE, frozenset(ReopenReason), True),
}


def new_case_code(case_type: str) -> str:
    body = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
    return f"{case_type.upper()}-{body[:4]}-{body[4:]}"


def case_code_taken(error: IntegrityError) -> bool:
    """Whether an insert failed on the uniqueness of the case code (PostgreSQL names the
    constraint, SQLite the column)."""
    message = str(error.orig)
    return "uq_cases_case_code" in message or "cases.case_code" in message


CODE_ATTEMPTS = 3


def _under_free_codes(attempt: Callable[[], T]) -> T:
    """`attempt()` again, up to CODE_ATTEMPTS times, while it fails on a taken case code
    (40 random bits: rare, but ~0.5 % of 100,000-case seeds meet one). Any other failure,
    and the last one, is raised. `attempt` undoes its own work when it fails."""
    for number in range(1, CODE_ATTEMPTS + 1):
        try:
            return attempt()
        except IntegrityError as error:
            if number == CODE_ATTEMPTS or not case_code_taken(error):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def committed_under_free_codes(session: Any, create: Callable[[], T]) -> T:
    """`create()` (which draws new case codes) and a commit; when a code drawn was already
    taken, the transaction is rolled back whole and `create()` run again. For a request
    whose transaction holds nothing else yet (POST /cases, the bench seeder)."""

    def attempt() -> T:
        try:
            created = create()
            session.commit()
        except IntegrityError:
            session.rollback()
            raise
        return created

    return _under_free_codes(attempt)


def created_under_free_codes(session: Any, create: Callable[[], T]) -> T:
    """`create()` inside a savepoint, run again when a code it drew was already taken: the
    rest of the caller's transaction (an idempotency claim, a consent, a referral) stays."""

    def attempt() -> T:
        with session.begin_nested():
            return create()

    return _under_free_codes(attempt)


@dataclass(frozen=True, slots=True)
class CaseView:
    case: Case
    categories: frozenset[Category]

    def as_dict(self) -> dict[str, Any]:
        return project(self.case, self.categories)


def _denied(
    actor: Actor,
    action: Permission,
    case: Case | None,
    decision: Decision,
    tried_id: uuid.UUID | None = None,
) -> Exception:
    error: NotFound | Forbidden
    error = (
        NotFound()
        if decision.conceal or case is None
        else Forbidden("Your role does not allow this action.")
    )
    error.audit = {
        "action": str(action),
        "resource_type": "case",
        # A probe of a case id that does not exist keeps the id that was tried.
        "resource_id": str(case.id if case is not None else tried_id),
        "case_id": case.id if case is not None else None,
        "decision": audit.DENY,
        "reason": decision.reason,
    }
    return error


def _refused(
    action: Permission,
    case: Case | None,
    message: str,
    reason: str,
    categories: Iterable[Category] = (),
    **details: Any,
) -> Forbidden:
    """A refusal decided inside the service (after the route's permission check): it must be
    on the record like any other denied attempt, with ids and codes only."""
    error = Forbidden(message)
    error.audit = {
        "action": str(action),
        "resource_type": "case",
        "resource_id": str(case.id) if case is not None else None,
        "case_id": case.id if case is not None else None,
        "categories": [c.value for c in categories],
        "decision": audit.DENY,
        "reason": reason,
        "details": details or None,
    }
    return error


# Audit action of a search candidate decrypted for comparison and not shown.
SEARCH_COMPARE = "case:search-compare"

# A case read with its current wrapped data key: one statement, where loading the key when
# the first field is decrypted would be a second (cases are read at random, and a large
# caseload's keys are rarely cached yet). Used by a read and by a page of a list or search.
_KEY_COLUMNS = (CaseKey.org_id, CaseKey.org_key_version, CaseKey.wrapped_key)
_CURRENT_KEY = and_(CaseKey.case_id == Case.id, CaseKey.version == Case.key_version)
_CASE_WITH_KEY = (
    select(Case, *_KEY_COLUMNS)
    .outerjoin(CaseKey, _CURRENT_KEY)
    .where(Case.id == bindparam("case_id"))
)


def _with_key(session: Any, row: Any) -> Case:
    """The case of a (case, *_KEY_COLUMNS) row; its wrapped key goes to the key service,
    to be unwrapped only if a field is decrypted and the key is not cached."""
    case, org_id, org_key_version, wrapped_key = row
    if wrapped_key is not None and case.key_version is not None:
        remember_wrapped_case_key(
            session, case.id, case.key_version, org_id, org_key_version, wrapped_key
        )
    return case  # type: ignore[no-any-return]


def load_cases_with_keys(session: Any, case_ids: Iterable[uuid.UUID]) -> list[Case]:
    """Several cases, each with its current wrapped data key, in one statement (a page of
    rows decrypting something under each case's key: referral messages)."""
    wanted = sorted(set(case_ids))
    if not wanted:
        return []
    stmt = select(Case, *_KEY_COLUMNS).outerjoin(CaseKey, _CURRENT_KEY).where(Case.id.in_(wanted))
    return [_with_key(session, row) for row in session.execute(stmt)]


def _load_case(session: Any, case_id: uuid.UUID) -> Case | None:
    row = session.execute(_CASE_WITH_KEY, {"case_id": case_id}).one_or_none()
    return None if row is None else _with_key(session, row)


def authorize(
    session: Any, actor: Actor, action: Permission, case_id: uuid.UUID
) -> tuple[Case, Decision]:
    """Load a case and decide; out-of-scope and missing cases are indistinguishable (404)."""
    case = _load_case(session, case_id)
    if case is None:
        raise _denied(
            actor, action, None, Decision(False, "no such case", conceal=True), tried_id=case_id
        )
    decision = decide(actor, action, case)
    if not decision.allowed:
        raise _denied(actor, action, case, decision)
    if case.erased:
        gone = Gone("This case was erased.")
        gone.audit = _denial(actor, action, case, "case erased")
        raise gone
    allowed_restricted = action in _ALLOWED_WHILE_RESTRICTED
    if case.restricted and not allowed_restricted:
        restricted = ProcessingRestricted(
            "Processing of this case is restricted (GDPR Art. 18): it is stored but not used."
        )
        restricted.audit = _denial(actor, action, case, "processing restricted")
        raise restricted
    # Checked again when the work writes under the case's lock (a restriction may commit in
    # between): `case_key_version`.
    must_be_processable(session, case.id, allowed=allowed_restricted)
    return case, decision


# What may still happen to a restricted case: lifting it, legal holds, erasure.
_ALLOWED_WHILE_RESTRICTED = frozenset(
    {
        Permission.CASE_RESTRICT,
        # Art. 7(3): consent can be withdrawn at any time; a withdrawal only stops processing
        # (its dependent referrals are cancelled now, not when the restriction is lifted).
        Permission.CONSENT_WITHDRAW,
        Permission.CASE_LEGAL_HOLD,
        Permission.CASE_ERASURE_REQUEST,
        Permission.ERASURE_APPROVE,
        # Art. 15: the person's own access request is honoured under restriction.
        Permission.CASE_EXPORT,
        # Who touched the case (metadata), e.g. to verify the restriction holds.
        Permission.CASE_ACCESS_LOG,
    }
)


def _denial(actor: Actor, action: Permission, case: Case, reason: str) -> dict[str, Any]:
    return {
        "action": str(action),
        "resource_type": "case",
        "resource_id": str(case.id),
        "case_id": case.id,
        "decision": audit.DENY,
        "reason": reason,
    }


# History rows are written once and never read back by the request that writes them: a Core
# INSERT, not an ORM object for the unit of work to track (the case row must already be in
# the database: the history row refers to it).
_STATUS_CHANGE = insert(CaseStatusChange.__table__).inline()


def _record_status_change(
    session: Any,
    case_id: uuid.UUID,
    from_status: CaseStatus | None,
    to_status: CaseStatus,
    reason: str | None,
    actor_id: uuid.UUID | None,
) -> None:
    session.execute(
        _STATUS_CHANGE,
        {
            "case_id": case_id,
            "from_status": from_status,
            "to_status": to_status,
            "reason": reason,
            "actor_id": actor_id,
        },
    )


def _case_audit(case: Case, categories: frozenset[Category] | set[Category]) -> dict[str, Any]:
    """The audit fields of an action on `case` disclosing or changing `categories`."""
    return {
        "resource_type": "case",
        "resource_id": case.id,
        "case_id": case.id,
        "categories": [c.value for c in categories],
    }


def _audit_case(
    session: Any,
    actor: Actor,
    action: Permission,
    case: Case,
    categories: frozenset[Category] | set[Category],
    **extra: Any,
) -> None:
    audit.record(session, actor, str(action), **_case_audit(case, categories), **extra)


def _apply_categories(
    case: Case,
    data: dict[str, Any],
    allowed: frozenset[Category],
    action: Permission,
    *,
    only_changed: bool = False,
) -> set[Category]:
    """Set the category fields in `data` (refusing a category the role may not write) and
    return the categories written; `only_changed`: leave a field that already holds the
    value alone (a PATCH that changes nothing writes nothing)."""
    touched: set[Category] = set()
    for category in Category:
        values = data.get(category.value)
        if values is None:
            continue
        if category not in allowed:
            raise _refused(
                action,
                # A case being created was never stored: its id names nothing.
                case if action is Permission.CASE_UPDATE else None,
                f"Your role may not write {category.value} data.",
                "category not visible to role",
                [category],
            )
        for key, value in values.items():
            attribute = CATEGORY_FIELDS[category][key]
            # Compared as a read shows them: a list never written is stored null and shown
            # as [], and a client sending back what it read changes nothing.
            if only_changed and shown_value(attribute, getattr(case, attribute)) == value:
                continue
            setattr(case, attribute, value)
            touched.add(category)
    return touched


def _check_assignee(
    session: Any, actor: Actor, org_id: uuid.UUID, assignee_id: uuid.UUID | None
) -> None:
    if assignee_id is None:
        return
    user = session.get(User, assignee_id)
    if (
        user is None
        or user.org_id != org_id
        or not user.active
        or user.role not in _ASSIGNABLE_ROLES
    ):
        raise ValidationFailed(
            {
                "assignee_id": [
                    "Must be an active caseworker, supervisor or officer "
                    "of the case's organisation."
                ]
            }
        )


def create_case(session: Any, actor: Actor, data: dict[str, Any]) -> CaseView:
    decision = decide(actor, Permission.CASE_CREATE)
    if not decision.allowed or actor.org_id is None:
        raise _refused(
            Permission.CASE_CREATE, None, "Your role does not allow this action.", decision.reason
        )
    case_id = uuid.uuid4()
    case = Case(
        id=case_id,
        case_code=new_case_code(data["case_type"].value),
        org_id=actor.org_id,
        case_type=data["case_type"],
        status=CaseStatus.OPEN,
        risk_level=data["risk_level"],
        nrm_stage=data["nrm_stage"],
        created_by=actor.id if actor.kind is ActorKind.USER else None,
    )
    categories = decide(actor, Permission.CASE_READ, case)
    allowed = visible_categories(categories) if categories.allowed else frozenset()
    _check_assignee(session, actor, actor.org_id, data.get("assignee_id"))
    case.assignee_id = data.get("assignee_id")
    touched = _apply_categories(case, data, allowed, Permission.CASE_CREATE)
    # The creation's audit row goes in with the case (one statement on PostgreSQL).
    insert_cases(
        session,
        [case],
        actor_id=actor.id,
        audit_row=audit.row(actor, str(Permission.CASE_CREATE), **_case_audit(case, touched)),
    )
    return CaseView(case, allowed)


def read_case(session: Any, actor: Actor, case_id: uuid.UUID) -> CaseView:
    case, decision = authorize(session, actor, Permission.CASE_VIEW, case_id)
    categories = visible_categories(decision)
    _audit_case(
        session,
        actor,
        Permission.CASE_READ if categories else Permission.CASE_VIEW,
        case,
        categories,
    )
    return CaseView(case, categories)


def update_case(
    session: Any, actor: Actor, case: Case, decision: Decision, changes: dict[str, Any]
) -> CaseView:
    categories = visible_categories(decision)
    moved = False
    for field in ("risk_level", "nrm_stage"):
        if field in changes and getattr(case, field) != changes[field]:
            setattr(case, field, changes[field])
            moved = True
    touched = _apply_categories(
        case, changes, categories, Permission.CASE_UPDATE, only_changed=True
    )
    if moved or touched:
        # Only a real change moves the version (and the ETag): a PATCH that sets what is
        # already there (a retry, `{}`) does not make every other client's If-Match stale.
        case.updated_at = datetime.now(UTC)
    session.flush()
    _audit_case(
        session,
        actor,
        Permission.CASE_UPDATE,
        case,
        categories,  # the answer shows them all, not only those written
        details={"changed": sorted(c.value for c in touched)},
    )
    return CaseView(case, categories)


def change_status(
    session: Any, actor: Actor, case: Case, decision: Decision, to: CaseStatus, reason: str | None
) -> CaseView:
    rule = _TRANSITIONS.get((case.status, to))
    if rule is None:
        allowed = sorted(t.value for (f, t) in _TRANSITIONS if f == case.status)
        raise Conflict(
            f"A {case.status.value} case cannot move to {to.value}.", allowed_transitions=allowed
        )
    permission, reasons, reason_required = rule
    if not actor.can(permission):
        raise _refused(
            permission,
            case,
            "Your role does not allow this status change.",
            "permission not granted to role",
            to=to.value,
        )
    if reason is None and reason_required:
        raise ValidationFailed({"reason": ["A reason code is required for this change."]})
    if reason is not None and reason not in reasons:
        raise ValidationFailed({"reason": [f"Use one of: {', '.join(sorted(reasons))}."]})
    _record_status_change(session, case.id, case.status, to, reason, actor.id)
    case.status = to
    case.status_reason = reason
    case.closed_at = datetime.now(UTC) if to is CaseStatus.CLOSED else None
    case.updated_at = datetime.now(UTC)
    session.flush()
    categories = visible_categories(decision)
    _audit_case(
        session, actor, permission, case, categories, reason=reason, details={"to": to.value}
    )
    return CaseView(case, categories)


def assign(
    session: Any, actor: Actor, case: Case, decision: Decision, assignee_id: uuid.UUID | None
) -> CaseView:
    if not actor.can(Permission.CASE_ASSIGN):
        raise _refused(
            Permission.CASE_ASSIGN,
            case,
            "Your role does not allow assigning cases.",
            "permission not granted to role",
        )
    _check_assignee(session, actor, case.org_id, assignee_id)
    case.assignee_id = assignee_id
    case.updated_at = datetime.now(UTC)
    session.flush()
    categories = visible_categories(decision)
    _audit_case(
        session,
        actor,
        Permission.CASE_ASSIGN,
        case,
        categories,  # the answer shows the case
        details={"assignee_id": str(assignee_id)},
    )
    return CaseView(case, categories)


# ---- lists and search ---------------------------------------------------------------------


def _search_requested(params: dict[str, Any]) -> bool:
    return any(
        params.get(name)
        for name in ("name", "family_name", "date_of_birth", "phone", "document_number")
    )


@functools.cache
def _deferred_except(loaded: frozenset[str]) -> tuple[Any, ...]:
    """Loader options deferring (with raiseload) every ciphertext column not holding one of
    the fields in `loaded` (per-field columns of formats 1 to 3 are deferred anyway).
    Built once per combination (a handful: categories shown by fields searched); building
    ~20 options was an eighth of a search's CPU. Loader options are immutable."""
    needed = {Case.__encrypted_fields__[name].column_attr for name in loaded}
    return tuple(
        defer(getattr(Case, column.attr), raiseload=True)
        for column in Case.__encrypted_columns__.values()
        if column.attr not in needed
    )


_LIST_FILTERS = ("status", "case_type", "risk_level", "assignee_id")


@functools.lru_cache(maxsize=256)
def _list_statement(
    limited: bool,
    filters: tuple[str, ...],
    updated_since: bool,
    searches: int,
    loaded: frozenset[str],
    decrypting: bool,
    after: bool,
) -> Select[Any]:
    """A list or search query of one shape (which filters, how many blind-index lookups,
    which ciphertexts loaded, cursor or not), built once with its values as parameters:
    building it and its cache key for every request was a sixth of a name search's CPU.
    Parameters:
    `scope_org_id` when `limited` (the policy's `CaseScope`), `filter_<name>`,
    `updated_since`, `term<i>_…` per lookup (`search.candidate_parameters`) and
    pagination's (`page_parameters`)."""
    stmt: Select[Any] = select(Case)
    if limited:
        stmt = stmt.where(Case.org_id == bindparam("scope_org_id"))
    # Erased cases are gone; restricted ones may be stored but not processed (Art. 18).
    stmt = stmt.where(Case.erased.is_(False), Case.restricted.is_(False))
    for name in filters:
        stmt = stmt.where(getattr(Case, name) == bindparam(f"filter_{name}"))
    if updated_since:
        stmt = stmt.where(Case.updated_at >= bindparam("updated_since"))
    for i in range(searches):
        stmt = stmt.where(Case.id.in_(search.candidate_ids_statement(f"term{i}_")))
    # Only the ciphertexts the page shows or the search re-checks are loaded; touching any
    # other encrypted column of these cases raises instead of loading it case by case.
    stmt = stmt.options(*_deferred_except(loaded))
    if decrypting:
        # Each case comes with its current wrapped data key, in the page's own statement (a
        # second statement for the page's keys, or one per case as fields decrypt, otherwise).
        stmt = stmt.add_columns(*_KEY_COLUMNS).outerjoin(CaseKey, _CURRENT_KEY)
    if after:
        stmt = after_cursor(stmt, Case.created_at, Case.id)
    return newest_first(stmt, Case.created_at, Case.id)


def list_cases(
    session: Any, actor: Actor, params: dict[str, Any]
) -> tuple[Page, frozenset[Category]]:
    """List or search, scoped in SQL to the actor's organisation; search terms go through
    blind indexes and false positives are removed after decryption."""
    scope = case_list_scope(actor, Permission.CASE_VIEW)
    parameters: dict[str, Any] = {}
    if scope.limited:
        parameters["scope_org_id"] = scope.org_id
    filters = tuple(name for name in _LIST_FILTERS if params.get(name) is not None)
    for name in filters:
        parameters[f"filter_{name}"] = params[name]
    if params.get("updated_since") is not None:
        parameters["updated_since"] = params["updated_since"]

    role_categories = list_categories(actor)
    searching = _search_requested(params)
    terms: list[tuple[str, str]] = []
    if searching:
        needed = {Category.CONTACT} if params.get("phone") else set()
        if any(params.get(n) for n in ("name", "family_name", "date_of_birth", "document_number")):
            needed.add(Category.IDENTITY)
        if not needed <= role_categories or actor.org_id is None:
            # Searching by personal attributes is itself a disclosure (an oracle). The
            # refusal is recorded with the categories asked for, never the terms.
            raise _refused(
                Permission.CASE_READ,
                None,
                "Your role may not search cases by personal data.",
                "search category not visible to role",
                needed,
                via="search",
            )
        crypto = crypto_of(session)
        terms = list(search.normalised_query(params, crypto.phone_region))
        for i, (field, term) in enumerate(terms):
            parameters.update(
                search.candidate_parameters(f"term{i}_", session, crypto, actor.org_id, field, term)
            )

    parameters.update(page_parameters(params.get("cursor"), params["limit"]))

    shown = role_categories & {Category.IDENTITY}
    loaded = {attr for category in shown for attr in CATEGORY_FIELDS[category].values()}
    loaded.update(attr for field, _ in terms for attr in search.SOURCE_FIELDS[field])
    decrypting = bool(terms or shown)
    stmt = _list_statement(
        scope.limited,
        filters,
        params.get("updated_since") is not None,
        len(terms),
        frozenset(loaded),
        decrypting,
        bool(params.get("cursor")),
    )
    page = fetch_page(
        session,
        stmt,
        parameters,
        created_col=Case.created_at,
        id_col=Case.id,
        limit=params["limit"],
        whole_rows=decrypting,
    )
    if decrypting:
        page = Page([_with_key(session, row) for row in page.items], page.next_cursor)
    compared: list[Case] = []
    if terms:
        region = crypto_of(session).phone_region
        matched = []
        for case in page.items:
            if all(search.matches(case, f, t, region) for f, t in terms):
                matched.append(case)
            else:
                compared.append(case)
        page = Page(matched, page.next_cursor)
    # The searched fields' categories: decrypted to compare with the terms, for a match
    # and a false positive alike (a phone search that finds a case confirms its contact).
    searched = {
        Case.__encrypted_fields__[attr].category
        for field, _ in terms
        for attr in search.SOURCE_FIELDS[field]
    }
    # One row per case shown, written together (a page holds up to 100).
    categories = sorted(c.value for c in shown | searched)
    via = {"via": "search" if searching else "list"}
    audit.record_many(
        session,
        actor,
        str(Permission.CASE_READ if shown and page.items else Permission.CASE_VIEW),
        resource_type="case",
        rows=[
            {"resource_id": case.id, "case_id": case.id, "categories": categories, "details": via}
            for case in page.items
        ],
        none_shown={**via, "results": 0},
    )
    if compared:
        # Blind-index false positives: their searched fields were decrypted to compare
        # them with the term, then dropped. Nothing was disclosed, but the person's data
        # was processed, so their log says so.
        compared_categories = sorted(c.value for c in searched)
        audit.record_many(
            session,
            actor,
            SEARCH_COMPARE,
            resource_type="case",
            rows=[
                {
                    "resource_id": case.id,
                    "case_id": case.id,
                    "categories": compared_categories,
                    "reason": "blind-index candidate, not a match",
                    "details": {"via": "search", "shown": False},
                }
                for case in compared
            ],
            none_shown={},
        )
    return page, shown


# ---- notes --------------------------------------------------------------------------------


def add_note(
    session: Any, actor: Actor, case: Case, decision: Decision, category: Category, text: str
) -> CaseNote:
    if not actor.can(Permission.CASE_NOTE) or category not in visible_categories(decision):
        raise _refused(
            Permission.CASE_NOTE,
            case,
            "Your role may not write notes in this category.",
            "category not visible to role",
            [category],
        )
    note = CaseNote(
        id=uuid.uuid4(), case_id=case.id, org_id=case.org_id, author_id=actor.id, category=category
    )
    note.text = text
    session.add(note)
    session.flush()
    _touch(session, case)
    _audit_case(
        session, actor, Permission.CASE_NOTE, case, {category}, details={"note_id": str(note.id)}
    )
    return note


def read_note(session: Any, actor: Actor, case_id: uuid.UUID, note_id: uuid.UUID) -> CaseNote:
    """One note of a case, through the case's record scope and the categories the role may
    see (404 otherwise), audited as a read of it."""
    case, decision = authorize(session, actor, Permission.CASE_READ, case_id)
    note = session.get(CaseNote, note_id)
    if note is None or note.case_id != case.id or note.category not in visible_categories(decision):
        missing = note is None or note.case_id != case.id
        error = NotFound()
        error.audit = {
            **_denial(
                actor,
                Permission.CASE_READ,
                case,
                "no such note" if missing else "category not visible to role",
            ),
            "resource_type": "case_note",
            "resource_id": str(note_id),
        }
        raise error
    _audit_case(
        session,
        actor,
        Permission.CASE_READ,
        case,
        {note.category},
        details={"notes": 1, "note_id": str(note.id)},
    )
    return note


def _touch(session: Any, case: Case) -> None:
    """The case changed through a record attached to it (a note): its `updated_at` and
    version move on in one UPDATE that does not compare the version read, so notes added at
    the same time all succeed (the row lock orders them; nothing about the case itself was
    decided on what was read), while an open PATCH of the case still gets 412."""
    session.execute(
        update(Case)
        .where(Case.id == case.id)
        .values(updated_at=datetime.now(UTC), version=Case.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.expire(case, ["updated_at", "version"])


def list_notes(
    session: Any, actor: Actor, case: Case, decision: Decision, cursor: str | None, limit: int
) -> Page:
    """A page of the case's timeline, newest first, in the categories the role may see."""
    categories = visible_categories(decision)
    page = paginate(
        session,
        select(CaseNote).where(
            CaseNote.case_id == case.id, CaseNote.category.in_(sorted(categories))
        ),
        created_col=CaseNote.created_at,
        id_col=CaseNote.id,
        cursor=cursor,
        limit=limit,
    )
    _audit_case(
        session,
        actor,
        Permission.CASE_READ,
        case,
        {n.category for n in page.items},
        details={"notes": len(page.items)},
    )
    return page


# ---- access log ---------------------------------------------------------------------------


def access_log(session: Any, actor: Actor, case: Case, cursor: str | None, limit: int) -> Page:
    """Who touched this case: actor, role, organisation, time, action, decision."""
    page = _case_audit_page(session, case.id, cursor, limit)
    _audit_case(session, actor, Permission.CASE_ACCESS_LOG, case, set())
    return page


def _case_audit_page(session: Any, case_id: uuid.UUID, cursor: str | None, limit: int) -> Page:
    """A page of the case's audit rows, newest first, from the row before the cursor's. The
    cursor seals that row's id (`pagination.seal_id_cursor`): ids are numbered across the
    platform, so two plain ones a caller got a while apart would tell it how much every
    other organisation did meanwhile."""
    purpose = f"case access log {case_id}"  # a cursor of one case's log is no other's
    stmt = select(AuditEvent).where(AuditEvent.case_id == case_id)
    if cursor:
        stmt = stmt.where(AuditEvent.id < open_id_cursor(cursor, purpose))
    rows = list(session.scalars(stmt.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None)
    return Page(rows[:limit], seal_id_cursor(rows[limit - 1].id, purpose))
