"""Unit tests of the policy decision point and the role → permission table (no HTTP, no DB).

The table is the security boundary of every later feature, so its invariants are pinned
here: a change that hands case content to an administrator or a DPO must fail a test.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql

from referral_api.access import (
    ROLE_PERMISSIONS,
    Actor,
    ActorKind,
    Decision,
    OrgType,
    Permission,
    Role,
    decide,
    require,
    role_allowed_in_org,
)
from referral_api.access.policy import scope_to_org
from referral_api.access.roles import ROLES_BY_ORG_TYPE, permissions_for
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.exceptions import Forbidden, NotFound

OWN_ORG = uuid.uuid4()
OTHER_ORG = uuid.uuid4()

ADMIN_PERMISSIONS = frozenset(
    {
        Permission.ORG_READ,
        Permission.ORG_MANAGE,
        Permission.USER_READ,
        Permission.USER_MANAGE,
        Permission.CLIENT_READ,
        Permission.CLIENT_MANAGE,
    }
)
# Case metadata that DPOs and administrators may see: the pseudonymous record (code, type,
# status, dates) and who accessed it. Everything else under `case:` is content.
# Legal holds flag a case against erasure: they neither read nor change its content.
CASE_METADATA = frozenset(
    p for p in Permission if p.value in ("case:view", "case:access-log", "case:legal-hold")
)
# Permissions that read or change the content of a case (as opposed to its metadata).
CASE_CONTENT = frozenset(
    p
    for p in Permission
    if (p.value.startswith("case:") and p not in CASE_METADATA)
    or p
    in {
        Permission.CONSENT_RECORD,
        Permission.CONSENT_WITHDRAW,
        Permission.CONSENT_REVOKE,
        Permission.CONSENT_ENTERED_IN_ERROR,
        Permission.REFERRAL_CREATE,
        Permission.REFERRAL_TRANSITION,
        Permission.REFERRAL_APPROVE_OVERRIDE,
        Permission.INTAKE_CREATE,
    }
)
NON_CASE_ROLES = (Role.DPO, Role.ORG_ADMIN, Role.PLATFORM_ADMIN)
CASE_ROLES = (Role.CASEWORKER, Role.SUPERVISOR, Role.POLICE_OFFICER)


def actor(role: Role, org_id: uuid.UUID = OWN_ORG, kind: ActorKind = ActorKind.USER) -> Actor:
    org_type = {
        Role.PLATFORM_ADMIN: OrgType.PLATFORM,
        Role.POLICE_OFFICER: OrgType.POLICE,
    }.get(role, OrgType.NGO)
    return Actor.for_principal(kind, uuid.uuid4(), org_id, org_type, role)


@dataclass
class Owned:
    """Any resource carrying an org_id (what feature packages will pass to decide())."""

    org_id: Any


def user_in(org_id: uuid.UUID) -> User:
    return User(id=uuid.uuid4(), org_id=org_id, email="x@example.org", role=Role.CASEWORKER)


# ---- the role → permission table ----------------------------------------------------------


def test_every_role_has_an_entry_and_can_read_itself():
    assert set(ROLE_PERMISSIONS) == set(Role)
    for role in Role:
        assert Permission.SELF_READ in ROLE_PERMISSIONS[role], role


@pytest.mark.parametrize("role", NON_CASE_ROLES)
def test_dpo_and_administrators_never_get_case_content(role):
    assert ROLE_PERMISSIONS[role] & CASE_CONTENT == frozenset()
    assert Permission.CASE_READ not in permissions_for(role)
    assert Permission.CASE_UPDATE not in permissions_for(role)


def test_case_content_set_is_not_empty():
    # Guards the invariant above against a rename that would empty the set.
    assert {Permission.CASE_READ, Permission.CASE_UPDATE, Permission.CASE_CREATE} <= CASE_CONTENT


@pytest.mark.parametrize("role", CASE_ROLES)
def test_case_roles_read_cases_but_administer_nothing(role):
    granted = ROLE_PERMISSIONS[role]
    assert Permission.CASE_READ in granted
    assert granted & ADMIN_PERMISSIONS == frozenset()
    assert Permission.KEYS_MANAGE not in granted
    assert Permission.DPO_REPORTS not in granted


def test_dpo_administers_nothing_and_reads_audit():
    granted = ROLE_PERMISSIONS[Role.DPO]
    assert granted & ADMIN_PERMISSIONS == frozenset()
    assert {Permission.AUDIT_READ, Permission.DPO_REPORTS} <= granted


def test_only_platform_admin_manages_organisations_and_keys():
    for role in Role:
        holds = ROLE_PERMISSIONS[role] & {Permission.ORG_MANAGE, Permission.KEYS_MANAGE}
        if role is Role.PLATFORM_ADMIN:
            assert holds == {Permission.ORG_MANAGE, Permission.KEYS_MANAGE}
        else:
            assert holds == frozenset(), role


def test_only_administrators_manage_users_and_clients():
    managers = {
        role
        for role in Role
        if ROLE_PERMISSIONS[role] & {Permission.USER_MANAGE, Permission.CLIENT_MANAGE}
    }
    assert managers == {Role.ORG_ADMIN, Role.PLATFORM_ADMIN}


def test_only_police_officers_create_intake():
    assert {r for r in Role if Permission.INTAKE_CREATE in ROLE_PERMISSIONS[r]} == {
        Role.POLICE_OFFICER
    }


def test_supervisor_is_a_superset_of_caseworker():
    assert ROLE_PERMISSIONS[Role.CASEWORKER] < ROLE_PERMISSIONS[Role.SUPERVISOR]
    assert Permission.REFERRAL_APPROVE_OVERRIDE not in ROLE_PERMISSIONS[Role.CASEWORKER]


def test_permission_values_are_resource_action_strings():
    pattern = re.compile(r"^[a-z]+:[a-z-]+$")
    values = [p.value for p in Permission]
    assert len(values) == len(set(values))
    for value in values:
        assert pattern.match(value), value


def test_the_table_cannot_be_changed_at_runtime():
    with pytest.raises(TypeError):
        ROLE_PERMISSIONS[Role.CASEWORKER] = frozenset(Permission)  # type: ignore[index]
    with pytest.raises(AttributeError):
        ROLE_PERMISSIONS[Role.DPO].add(Permission.CASE_READ)  # type: ignore[attr-defined]


def test_no_role_means_no_permission():
    assert permissions_for(None) == frozenset()
    nobody = Actor(ActorKind.USER, uuid.uuid4(), OWN_ORG, OrgType.NGO, None)
    assert not decide(nobody, Permission.SELF_READ)


# ---- roles available per organisation type ------------------------------------------------


def test_every_org_type_has_roles_and_can_be_administered():
    assert set(ROLES_BY_ORG_TYPE) == set(OrgType)
    for org_type in OrgType:
        assert role_allowed_in_org(Role.ORG_ADMIN, org_type), org_type
        assert role_allowed_in_org(Role.DPO, org_type), org_type


@pytest.mark.parametrize("org_type", list(OrgType))
def test_police_officers_only_in_police_organisations(org_type):
    assert role_allowed_in_org(Role.POLICE_OFFICER, org_type) is (org_type is OrgType.POLICE)


@pytest.mark.parametrize("org_type", list(OrgType))
def test_platform_admins_only_in_the_platform_organisation(org_type):
    assert role_allowed_in_org(Role.PLATFORM_ADMIN, org_type) is (org_type is OrgType.PLATFORM)


def test_nobody_works_cases_inside_the_platform_organisation():
    for role in CASE_ROLES:
        assert not role_allowed_in_org(role, OrgType.PLATFORM), role


@pytest.mark.parametrize("org_type", [t for t in OrgType if t is not OrgType.PLATFORM])
def test_case_organisations_have_caseworkers_and_supervisors(org_type):
    assert role_allowed_in_org(Role.CASEWORKER, org_type)
    assert role_allowed_in_org(Role.SUPERVISOR, org_type)


# ---- Actor --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_actor_permissions_come_from_the_table(role):
    a = actor(role)
    assert a.permissions == ROLE_PERMISSIONS[role]
    for permission in Permission:
        assert a.can(permission) is (permission in ROLE_PERMISSIONS[role])


def test_system_actor_is_explicit_and_holds_no_role():
    system = Actor.system()
    assert system.kind is ActorKind.SYSTEM
    assert system.id is None and system.org_id is None and system.role is None
    assert system.permissions == frozenset()


# ---- decide / require ---------------------------------------------------------------------


def test_decide_denies_without_permission_and_does_not_conceal():
    decision = decide(actor(Role.CASEWORKER), Permission.USER_READ, user_in(OWN_ORG))
    assert isinstance(decision, Decision)
    assert not decision and decision.allowed is False
    assert decision.conceal is False


def test_decide_without_permission_ignores_the_resource():
    # The 403 must not depend on whether the target exists or whose it is.
    a = actor(Role.DPO)
    assert decide(a, Permission.USER_MANAGE, user_in(OTHER_ORG)).conceal is False
    assert decide(a, Permission.USER_MANAGE, user_in(OWN_ORG)).conceal is False
    assert decide(a, Permission.USER_MANAGE).conceal is False


def test_decide_allows_permission_without_resource():
    assert decide(actor(Role.ORG_ADMIN), Permission.USER_MANAGE)
    assert not decide(actor(Role.ORG_ADMIN), Permission.ORG_MANAGE)


@pytest.mark.parametrize(
    "make_resource",
    [
        lambda org: Organisation(id=org, name="x", org_type=OrgType.NGO),
        user_in,
        lambda org: ApiClient(id=uuid.uuid4(), org_id=org, name="c", role=Role.DPO),
        Owned,
    ],
    ids=["organisation", "user", "client", "any-org-owned"],
)
def test_decide_scopes_to_own_organisation_and_conceals_others(make_resource):
    admin = actor(Role.ORG_ADMIN)
    own = decide(admin, Permission.USER_READ, make_resource(OWN_ORG))
    other = decide(admin, Permission.USER_READ, make_resource(OTHER_ORG))
    assert own.allowed
    assert not other.allowed and other.conceal is True


@pytest.mark.parametrize("permission", sorted(ADMIN_PERMISSIONS))
def test_platform_admin_administers_every_organisation(permission):
    admin = actor(Role.PLATFORM_ADMIN)
    assert decide(admin, permission, user_in(OTHER_ORG))
    assert decide(admin, permission, Organisation(id=OTHER_ORG, org_type=OrgType.NGO))


def test_platform_admin_reach_is_limited_to_administration():
    # DIRECTORY_READ is held by the platform admin but is not a platform-wide permission.
    admin = actor(Role.PLATFORM_ADMIN)
    decision = decide(admin, Permission.DIRECTORY_READ, Owned(OTHER_ORG))
    assert not decision and decision.conceal
    assert decide(admin, Permission.DIRECTORY_READ, Owned(admin.org_id))


def test_org_admin_of_the_platform_org_is_not_a_platform_admin():
    platform_org_admin = Actor.for_principal(
        ActorKind.USER, uuid.uuid4(), OWN_ORG, OrgType.PLATFORM, Role.ORG_ADMIN
    )
    assert platform_org_admin.is_platform
    assert not decide(platform_org_admin, Permission.USER_MANAGE, user_in(OTHER_ORG))
    assert not decide(platform_org_admin, Permission.ORG_MANAGE)


@pytest.mark.parametrize("resource", [object(), {"org_id": str(OWN_ORG)}, Owned(None)])
def test_decide_denies_unknown_resource_shapes(resource):
    decision = decide(actor(Role.PLATFORM_ADMIN), Permission.USER_READ, resource)
    assert not decision and decision.conceal


def test_client_actors_follow_the_same_table():
    machine = actor(Role.ORG_ADMIN, kind=ActorKind.CLIENT)
    assert decide(machine, Permission.CLIENT_READ, Owned(OWN_ORG))
    assert not decide(machine, Permission.CLIENT_READ, Owned(OTHER_ORG))
    assert not decide(machine, Permission.ORG_MANAGE)


def test_system_actor_is_allowed_everything():
    for permission in Permission:
        assert decide(Actor.system(), permission, Owned(OTHER_ORG))


def test_require_raises_forbidden_then_not_found():
    with pytest.raises(Forbidden):
        require(actor(Role.CASEWORKER), Permission.ORG_READ)
    with pytest.raises(NotFound):
        require(actor(Role.ORG_ADMIN), Permission.USER_READ, user_in(OTHER_ORG))
    decision = require(actor(Role.ORG_ADMIN), Permission.USER_READ, user_in(OWN_ORG))
    assert decision.allowed


# ---- scope_to_org --------------------------------------------------------------------------


def _where(stmt: Any) -> str:
    compiled = stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return str(compiled).partition("WHERE")[2]


def test_scope_to_org_filters_org_admin_in_sql():
    admin = actor(Role.ORG_ADMIN)
    stmt = scope_to_org(admin, Permission.USER_READ, select(User), User.org_id)
    where = _where(stmt)
    assert "users.org_id" in where
    assert OWN_ORG.hex in where.replace("-", "")


def test_scope_to_org_lets_platform_admin_and_system_see_all():
    base = select(Organisation)
    for who in (actor(Role.PLATFORM_ADMIN), Actor.system()):
        stmt = scope_to_org(who, Permission.ORG_READ, base, Organisation.id)
        assert _where(stmt) == ""


def test_scope_to_org_filters_platform_admin_outside_administration():
    admin = actor(Role.PLATFORM_ADMIN)
    stmt = scope_to_org(admin, Permission.DIRECTORY_READ, select(User), User.org_id)
    assert "users.org_id" in _where(stmt)


@pytest.mark.parametrize("role", [Role.CASEWORKER, Role.DPO, Role.SUPERVISOR])
def test_scope_to_org_refuses_without_permission(role):
    with pytest.raises(Forbidden):
        scope_to_org(actor(role), Permission.ORG_READ, select(Organisation), Organisation.id)


def test_scope_to_org_filters_rows_in_the_database(app, factory, session):
    own = factory.org(OrgType.NGO)
    other = factory.org(OrgType.POLICE)
    factory.user(Role.CASEWORKER, own)
    factory.user(Role.CASEWORKER, other)
    admin = Actor.for_principal(ActorKind.USER, uuid.uuid4(), own, OrgType.NGO, Role.ORG_ADMIN)
    rows = session.scalars(
        scope_to_org(admin, Permission.USER_READ, select(User), User.org_id)
    ).all()
    session.rollback()
    assert [u.org_id for u in rows] == [own]
    orgs = session.scalars(
        scope_to_org(admin, Permission.ORG_READ, select(Organisation), Organisation.id)
    ).all()
    session.rollback()
    assert [o.id for o in orgs] == [own]


def test_report_scope_own_organisation_unless_platform_officer():
    from referral_api.access.policy import OUTSIDE_OWN_ORGANISATION, decide_report_scope

    dpo = actor(Role.DPO)
    platform_dpo = Actor.for_principal(
        ActorKind.USER, uuid.uuid4(), OWN_ORG, OrgType.PLATFORM, Role.DPO
    )
    reports = Permission.DPO_REPORTS
    # An organisation's officer: their own organisation, asked for or not; never another.
    assert decide_report_scope(dpo, reports, None)[1] == OWN_ORG
    assert decide_report_scope(dpo, reports, OWN_ORG)[1] == OWN_ORG
    refused, org = decide_report_scope(dpo, reports, OTHER_ORG)
    assert (refused.allowed, refused.reason, org) == (False, OUTSIDE_OWN_ORGANISATION, None)
    # The platform organisation's officer: any one organisation, or all of them (None).
    assert decide_report_scope(platform_dpo, reports, OTHER_ORG) == (
        Decision(True, "platform organisation"),
        OTHER_ORG,
    )
    assert decide_report_scope(platform_dpo, reports, None)[1] is None
    # Roles without the permission get nothing, whatever they ask for.
    for role in (Role.CASEWORKER, Role.SUPERVISOR, Role.ORG_ADMIN, Role.PLATFORM_ADMIN):
        for requested in (None, OWN_ORG):
            decision, org = decide_report_scope(actor(role), reports, requested)
            assert not decision and org is None, (role, requested)
    # The system (CLI jobs) reports on what it is asked.
    assert decide_report_scope(Actor.system(), reports, OTHER_ORG)[1] == OTHER_ORG


def test_resource_shapes_remembered_per_class_answer_as_isinstance_does(monkeypatch):
    """`_is` answers like isinstance against the resource protocols: from the class for a
    model that declares the attributes (without asking the protocol again), from the
    instance otherwise (an object carrying them itself, or lacking them)."""
    from types import SimpleNamespace

    import referral_api.models  # noqa: F401 (registers the models)
    from referral_api.access import policy
    from referral_api.cases.models import Case
    from referral_api.referrals.models import Referral

    shapes = (policy.CaseRecord, policy.ReferralRecord, policy.OrgOwned)
    resources = [
        Case(),
        Referral(),
        SimpleNamespace(case_code="THB-AAAA-AAAA", org_id=uuid.uuid4()),
        SimpleNamespace(from_org_id=uuid.uuid4(), to_org_id=uuid.uuid4()),
        SimpleNamespace(org_id=uuid.uuid4()),
        SimpleNamespace(),
    ]
    expected = {
        (i, shape): isinstance(resource, shape)
        for i, resource in enumerate(resources)
        for shape in shapes
    }
    asked: list[Any] = []
    real_isinstance = isinstance

    def counting(obj: Any, cls: Any) -> bool:
        asked.append(type(obj))
        return real_isinstance(obj, cls)

    monkeypatch.setattr(policy, "isinstance", counting, raising=False)
    for (i, shape), answer in expected.items():
        assert policy._is(resources[i], shape) is answer, (i, shape)
    assert expected[(0, policy.CaseRecord)] and expected[(1, policy.ReferralRecord)]
    # A case is never asked whether it is a case record: its class declared it.
    asked.clear()
    policy._is(Case(), policy.CaseRecord)
    assert asked == []
