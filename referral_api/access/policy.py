"""decide(actor, action, resource) → Decision: the single policy decision point.

Rules, in order:
1. No permission for the action → deny (403: the actor may know the route exists).
2. The resource is outside the actor's record scope → deny as not found (404), so the
   existence of another organisation's records is never confirmed.
3. Otherwise allow. Feature packages add their resource types here, not in routes.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Select, and_, or_

from referral_api.access.actor import Actor, ActorKind
from referral_api.access.categories import ALL_CATEGORIES, Category, categories_for_role
from referral_api.access.permissions import Permission
from referral_api.access.roles import Role
from referral_api.exceptions import Forbidden, NotFound


@runtime_checkable
class OrgOwned(Protocol):
    org_id: Any


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    # When denied: answer 404 instead of 403 so existence is not confirmed.
    conceal: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.allowed


# Permissions over records that span every organisation (the audit chain: its verification
# reads and counts every organisation's rows), granted by `decide` only to the platform
# organisation's officers whatever their role's table says: an organisation's DPO verifying
# it learnt the platform's audit volume, and made one request re-hash every row of it.
PLATFORM_ORGANISATION_ONLY = frozenset({Permission.AUDIT_VERIFY})

# Permissions whose resources are administered across organisations by the platform admin.
_PLATFORM_WIDE = frozenset(
    {
        Permission.ORG_READ,
        Permission.ORG_MANAGE,
        Permission.USER_READ,
        Permission.USER_MANAGE,
        Permission.CLIENT_READ,
        Permission.CLIENT_MANAGE,
    }
)


@functools.lru_cache(maxsize=128)
def _declared_shapes(cls: type) -> frozenset[type]:
    """The resource protocols whose attributes `cls` itself declares (a model's columns),
    which every instance therefore has."""
    shapes = (CaseRecord, ReferralRecord, OrgOwned)
    return frozenset(s for s in shapes if all(hasattr(cls, a) for a in s.__annotations__))


def _is(resource: Any, shape: type) -> bool:
    """isinstance(resource, shape) for a runtime-checkable Protocol: answered once per class
    when the class declares the attributes (a case, on every case request: isinstance
    inspects the protocol on every call, ~10 µs); otherwise asked of the instance."""
    return shape in _declared_shapes(type(resource)) or isinstance(resource, shape)  # type: ignore[arg-type]


def _resource_org_id(resource: Any) -> uuid.UUID | None:
    from referral_api.auth.models import Organisation

    if isinstance(resource, Organisation):
        return resource.id
    if _is(resource, OrgOwned):
        return resource.org_id  # type: ignore[no-any-return]
    return None


def decide(actor: Actor, action: Permission, resource: Any = None) -> Decision:
    if actor.kind is ActorKind.SYSTEM:
        return Decision(True, "system actor", details={"categories": ALL_CATEGORIES})
    if not actor.can(action):
        return Decision(False, "permission not granted to role")
    if action in PLATFORM_ORGANISATION_ONLY and not actor.is_platform:
        return Decision(False, "platform organisation only")
    if resource is None:
        return Decision(True, "permission granted")
    if _is(resource, CaseRecord):
        return _decide_case(actor, action, resource)
    if _is(resource, ReferralRecord):
        return _decide_referral(actor, action, resource)

    target_org = _resource_org_id(resource)
    if target_org is None:
        # Unknown resource shape: deny rather than guess.
        return Decision(False, "unknown resource type", conceal=True)
    if actor.role is Role.PLATFORM_ADMIN and action in _PLATFORM_WIDE:
        return Decision(True, "platform administration")
    if target_org == actor.org_id:
        return Decision(True, "own organisation")
    return Decision(False, "outside record scope", conceal=True)


@runtime_checkable
class CaseRecord(Protocol):
    case_code: Any
    org_id: Any


# Actions a platform-organisation DPO may take on any organisation's case (metadata only).
_PLATFORM_DPO_CASE_ACTIONS = frozenset(
    {
        Permission.CASE_VIEW,
        Permission.CASE_ACCESS_LOG,
        Permission.CONSENT_READ,
        Permission.ERASURE_APPROVE,
        Permission.CASE_LEGAL_HOLD,
    }
)


def _decide_case(actor: Actor, action: Permission, case: Any) -> Decision:
    """Record scope: the owning organisation only (other organisations reach case data only
    as a referral packet). Content: the role's categories; metadata-only roles get none."""
    if case.org_id == actor.org_id:
        categories = (
            categories_for_role(actor.role) if actor.can(Permission.CASE_READ) else frozenset()
        )
        return Decision(True, "own organisation", details={"categories": categories})
    if actor.role is Role.DPO and actor.is_platform and action in _PLATFORM_DPO_CASE_ACTIONS:
        return Decision(
            True, "platform data-protection oversight", details={"categories": frozenset()}
        )
    return Decision(False, "outside record scope", conceal=True)


@runtime_checkable
class ReferralRecord(Protocol):
    from_org_id: Any
    to_org_id: Any


def _decide_referral(actor: Actor, action: Permission, referral: Any) -> Decision:
    """A referral exists for its two parties only: the sending and the receiving
    organisation. Anyone else (including a receiver of the same person's other referrals)
    gets 404. What each party sees of the case is decided by consent, not here."""
    if actor.org_id == referral.from_org_id:
        return Decision(True, "sending organisation", details={"party": "sender"})
    if actor.org_id == referral.to_org_id:
        return Decision(True, "receiving organisation", details={"party": "receiver"})
    return Decision(False, "not a party to the referral", conceal=True)


def visible_categories(decision: Decision) -> frozenset[Category]:
    return decision.details.get("categories", frozenset())  # type: ignore[no-any-return]


def list_categories(actor: Actor) -> frozenset[Category]:
    """Categories an actor sees on the cases of its list scope (its own organisation's)."""
    if actor.kind is ActorKind.SYSTEM:
        return ALL_CATEGORIES
    if not actor.can(Permission.CASE_READ):
        return frozenset()
    return categories_for_role(actor.role)


@dataclass(frozen=True, slots=True)
class CaseScope:
    """Which cases a list query may return: every case (`org_id` unused), or one
    organisation's. List queries bind `org_id` in their SQL: nothing is filtered after
    loading."""

    limited: bool
    org_id: uuid.UUID | None = None


_EVERY_CASE = CaseScope(limited=False)


def case_list_scope(actor: Actor, action: Permission) -> CaseScope:
    """The scope of the actor's list queries over cases; Forbidden when it may not list."""
    if actor.kind is ActorKind.SYSTEM:
        return _EVERY_CASE
    if not actor.can(action):
        raise Forbidden("Your role does not allow this action.")
    if actor.role is Role.DPO and actor.is_platform and action in _PLATFORM_DPO_CASE_ACTIONS:
        return _EVERY_CASE
    return CaseScope(limited=True, org_id=actor.org_id)


def scope_referrals(
    actor: Actor, action: Permission, stmt: Select[Any], *, from_org: Any, to_org: Any, sent: Any
) -> Select[Any]:
    """List queries over referrals, scoped in SQL as `_decide_referral` decides one: its two
    parties only — the sending organisation, and the receiving one once it was sent (an
    unsent draft does not exist for its receiver). `sent`: a SQL condition on the row."""
    return stmt.where(
        or_(*referral_parties(actor, action, from_org=from_org, to_org=to_org, sent=sent))
    )


def referral_parties(
    actor: Actor, action: Permission, *, from_org: Any, to_org: Any, sent: Any
) -> tuple[Any, Any]:
    """`scope_referrals`' condition as its two disjoint halves: the referrals the actor's
    organisation sent, and those it receives (once sent) and did not send. A list can read
    each from its own index, in order, and merge them, where their OR is read whole and
    sorted."""
    if not actor.can(action) or actor.org_id is None:
        raise Forbidden("Your role does not allow this action.")
    return from_org == actor.org_id, and_(to_org == actor.org_id, sent, from_org != actor.org_id)


def require(actor: Actor, action: Permission, resource: Any = None) -> Decision:
    """decide(), raising NotFound (concealed) or Forbidden on denial."""
    decision = decide(actor, action, resource)
    if not decision.allowed:
        raise refusal(decision)
    return decision


def require_on_record(
    actor: Actor, action: Permission, resource: Any, resource_type: str, resource_id: Any
) -> Decision:
    """require(), the refusal carrying its deny row (ids and the decision's reason; the
    error handler writes it): for services whose refusals name the record by type and id."""
    from referral_api.audit.service import on_record

    decision = decide(actor, action, resource)
    if not decision.allowed:
        raise on_record(refusal(decision), str(action), resource_type, resource_id, decision.reason)
    return decision


def refusal(decision: Decision) -> NotFound | Forbidden:
    """The answer to a denial: NotFound when existence is concealed, else Forbidden."""
    if decision.conceal:
        return NotFound()
    return Forbidden("Your role does not allow this action.")


OUTSIDE_OWN_ORGANISATION = "org_id outside the officer's organisation"


def decide_report_scope(
    actor: Actor, action: Permission, requested_org_id: uuid.UUID | None
) -> tuple[Decision, uuid.UUID | None]:
    """Whose records a report (`action`) may read: (decision, organisation id, or None for
    every organisation). The platform organisation's officers (and the system) report on
    any organisation or all of them; every other officer on their own organisation only."""
    if actor.kind is ActorKind.SYSTEM:
        return Decision(True, "system actor"), requested_org_id
    if not actor.can(action) or actor.org_id is None:
        return Decision(False, "permission not granted to role"), None
    if actor.is_platform:
        return Decision(True, "platform organisation"), requested_org_id
    if requested_org_id is not None and requested_org_id != actor.org_id:
        return Decision(False, OUTSIDE_OWN_ORGANISATION), None
    return Decision(True, "own organisation"), actor.org_id


def scope_to_org(
    actor: Actor, action: Permission, stmt: Select[Any], org_column: Any
) -> Select[Any]:
    """Scope a list query in SQL: rows outside the actor's organisation never load."""
    if actor.kind is ActorKind.SYSTEM:
        return stmt
    if not actor.can(action):
        raise Forbidden("Your role does not allow this action.")
    if actor.role is Role.PLATFORM_ADMIN and action in _PLATFORM_WIDE:
        return stmt
    return stmt.where(org_column == actor.org_id)
