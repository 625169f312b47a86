"""Authorization matrix for every case endpoint (STYLE.md rule 19; DESIGN.md §4, §5).

Each role × (own organisation's case, another organisation's case) plus anonymous callers,
against every case endpoint, must answer the documented status:

- anonymous → 401;
- a role without the endpoint's permission → 403, wherever the id points (the refusal comes
  before the record is looked up, so it is the same for an existing and a made-up id and
  confirms nothing);
- another organisation's case → 404, never 403, for every role that holds the permission,
  except a DPO of the platform organisation, who may read any case's metadata and access
  log;
- metadata-only roles (DPO, org admin) never receive a personal field or value;
- lists hold the caller's own organisation's cases only (a platform DPO's: every case,
  metadata only).

The platform organisation holds no cases (no role there handles cases), so its roles are
exercised against other organisations' cases only.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import assert_problem
from sqlalchemy import select, text

from referral_api.access.roles import OrgType, Role
from referral_api.cases.layout import CATEGORY_FIELDS, METADATA_FIELDS
from referral_api.cases.models import Case

API = "/api/v1"

CASE = {
    "case_type": "thb",
    "risk_level": "high",
    "identity": {
        "given_name": "Halyna",
        "family_name": "Tkachenko",
        "aliases": ["Galina Tkach"],
        "date_of_birth": "1996-02-11",
        "sex": "female",
        "nationality": "UA",
        "languages": ["uk"],
        "documents": [{"type": "passport", "country": "UA", "number": "FB654321"}],
    },
    "contact": {
        "phone": "+380671112299",
        "email": "halyna.t@example.net",
        "safe_contact_notes": "Only via sister",
    },
    "location": {"address": "Vulytsia Sadova 12, Lutsk", "is_shelter": True},
    "incident": {
        "exploitation_types": ["domestic_servitude"],
        "means_of_control": ["isolation"],
        "recruiter_relation": "family",
        "incident_date": "2026-03",
        "incident_place": "Private house in Vienna",
        "narrative": "Worked without pay for an uncle",
    },
    "health": {"notes": "Chronic back pain"},
    "psychosocial": {"notes": "Panic attacks at night"},
    "legal": {"status": "Witness", "proceedings": "Criminal case 4411", "lawyer": "Petro Savchuk"},
    "immigration": {"residence_status": "Visa overstay", "reflection_period_until": "2027-02-01"},
    "needs": {"assessment": "Trauma counselling", "plan": "Weekly sessions"},
}
PERSONAL_VALUES = [
    "Halyna",
    "Tkachenko",
    "Galina",
    "1996-02-11",
    "FB654321",
    "+380671112299",
    "halyna.t@",
    "via sister",
    "Sadova",
    "domestic_servitude",
    "isolation",
    "Vienna",
    "without pay",
    "back pain",
    "Panic attacks",
    "Witness",
    "Criminal case 4411",
    "Petro Savchuk",
    "Lutsk",
    "Visa overstay",
    "2027-02-01",
    "Trauma counselling",
    "Weekly sessions",
    "Note about a safe meeting place",
]
CATEGORY_KEYS = {category.value for category in CATEGORY_FIELDS}
# Keys that only a personal category holds ("status" is also case metadata).
PERSONAL_KEYS = (
    CATEGORY_KEYS | {key for fields in CATEGORY_FIELDS.values() for key in fields}
) - set(METADATA_FIELDS)


def assert_no_personal_data(body: Any) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert key not in PERSONAL_KEYS, f"{path}.{key}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(body, "$")
    dumped = json.dumps(body, ensure_ascii=False)
    for value in PERSONAL_VALUES:
        assert value not in dumped, value


def rows(app: Any, sql: Any, **params: Any) -> list[tuple[Any, ...]]:
    """Raw SQL (or a Core select) through a connection closed, with its transaction, at once."""
    from referral_api.extensions import db

    statement = text(sql) if isinstance(sql, str) else sql
    with db.engine_for(app).connect() as connection:
        return [tuple(row) for row in connection.execute(statement, params)]


@dataclass
class Target:
    id: str
    etag: str
    org_id: uuid.UUID
    assignee_id: uuid.UUID  # an assignable user of the case's organisation


@dataclass
class World:
    headers: dict[str, str]  # the caller's (empty for anonymous)
    actor_org: uuid.UUID | None
    own: Target | None  # a case of the caller's organisation (None for platform roles)
    other: Target  # another organisation's case
    all_case_ids: set[str] = field(default_factory=set)


def _case_in(client: Any, factory: Any, org_id: uuid.UUID, role: Role) -> Target:
    author = factory.user(role, org_id)
    response = client.post(f"{API}/cases", json=CASE, headers=factory.headers(author))
    assert response.status_code == 201, response.get_json()
    note = client.post(
        f"{API}/cases/{response.get_json()['id']}/notes",
        json={"category": "needs", "text": "Note about a safe meeting place"},
        headers=factory.headers(author),
    )
    assert note.status_code == 201
    # A note touches the case (updated_at), so its ETag is read afterwards.
    current = client.get(
        f"{API}/cases/{response.get_json()['id']}", headers=factory.headers(author)
    )
    return Target(response.get_json()["id"], current.headers["ETag"], org_id, author.id)


# Callers: (role, organisation type of the caller's organisation); None = anonymous.
CALLERS: dict[str, tuple[Role, OrgType] | None] = {
    "caseworker": (Role.CASEWORKER, OrgType.NGO),
    "supervisor": (Role.SUPERVISOR, OrgType.NGO),
    "police_officer": (Role.POLICE_OFFICER, OrgType.POLICE),
    "dpo": (Role.DPO, OrgType.NGO),
    "org_admin": (Role.ORG_ADMIN, OrgType.NGO),
    "platform_dpo": (Role.DPO, OrgType.PLATFORM),
    "platform_admin": (Role.PLATFORM_ADMIN, OrgType.PLATFORM),
    "anonymous": None,
}


def build_world(client: Any, factory: Any, caller: str) -> World:
    spec = CALLERS[caller]
    other_org = factory.org(OrgType.NGO)
    other = _case_in(client, factory, other_org, Role.CASEWORKER)
    if spec is None:
        home = factory.org(OrgType.NGO)
        own = _case_in(client, factory, home, Role.CASEWORKER)
        return World({}, None, own, other, {own.id, other.id})
    role, org_type = spec
    home = factory.org(org_type)
    own = None
    if org_type is not OrgType.PLATFORM:
        author_role = Role.POLICE_OFFICER if org_type is OrgType.POLICE else Role.CASEWORKER
        own = _case_in(client, factory, home, author_role)
    headers = factory.headers(factory.user(role, home))
    ids = {other.id} | ({own.id} if own else set())
    return World(headers, home, own, other, ids)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # "" (collection) or a suffix after /cases/{id}
    on_case: bool = True
    conditional: bool = False
    mutating: bool = False

    def request(self, client: Any, headers: dict[str, str], target: Target | None) -> Any:
        if not self.on_case:
            url = f"{API}/cases"
        else:
            assert target is not None
            url = f"{API}/cases/{target.id}{self.path}"
        if self.conditional and target is not None:
            headers = {**headers, "If-Match": target.etag}
        body = {
            "create": CASE,
            "patch": {"risk_level": "critical", "needs": {"plan": "Changed plan"}},
            "status": {"to": "active"},
            "assign": {"assignee_id": str(target.assignee_id) if target else None},
            "add_note": {"category": "needs", "text": "Another note"},
        }.get(self.name)
        return client.open(url, method=self.method, json=body, headers=headers)


ENDPOINTS = {
    e.name: e
    for e in [
        Endpoint("create", "POST", "", on_case=False, mutating=True),
        Endpoint("list", "GET", "", on_case=False),
        Endpoint("get", "GET", ""),
        Endpoint("patch", "PATCH", "", conditional=True, mutating=True),
        Endpoint("status", "POST", "/status", conditional=True, mutating=True),
        Endpoint("assign", "POST", "/assign", conditional=True, mutating=True),
        Endpoint("list_notes", "GET", "/notes"),
        Endpoint("add_note", "POST", "/notes", mutating=True),
        Endpoint("access_log", "GET", "/access-log"),
    ]
}

_CASE_HANDLER = {
    "create": 201,
    "list": 200,
    "get": 200,
    "patch": 200,
    "status": 200,
    "assign": 403,
    "list_notes": 200,
    "add_note": 201,
    "access_log": 200,
}
# Status on the caller's own organisation's case. On another organisation's case every 2xx
# becomes 404 (creation and the list do not point at a case and stay as they are).
EXPECTED_OWN: dict[str, dict[str, int]] = {
    "caseworker": _CASE_HANDLER,
    "supervisor": {**_CASE_HANDLER, "assign": 200},
    "police_officer": _CASE_HANDLER,
    "dpo": {
        **dict.fromkeys(ENDPOINTS, 403),
        "list": 200,
        "get": 200,
        "access_log": 200,
    },
    "org_admin": {**dict.fromkeys(ENDPOINTS, 403), "list": 200, "get": 200},
    "platform_dpo": {
        **dict.fromkeys(ENDPOINTS, 403),
        "list": 200,
        "get": 200,
        "access_log": 200,
    },
    "platform_admin": dict.fromkeys(ENDPOINTS, 403),
    "anonymous": dict.fromkeys(ENDPOINTS, 401),
}
# Platform data-protection oversight: metadata and access log of any organisation's case.
CROSS_ORG_ALLOWED = {("platform_dpo", "get"), ("platform_dpo", "access_log")}
METADATA_ONLY = {"dpo", "org_admin", "platform_dpo"}


def expected(caller: str, endpoint: str, where: str) -> int:
    status = EXPECTED_OWN[caller][endpoint]
    crosses = where == "other" and ENDPOINTS[endpoint].on_case
    if crosses and status < 300 and (caller, endpoint) not in CROSS_ORG_ALLOWED:
        return 404
    return status


def _state(app: Any) -> list[tuple[Any, ...]]:
    """Everything a refused request must leave untouched."""
    return rows(
        app,
        "SELECT id, version, status, risk_level, assignee_id, "
        "(SELECT COUNT(*) FROM case_notes n WHERE n.case_id = c.id) FROM cases c ORDER BY id",
    )


def _current(app: Any, target: Target) -> Target:
    """The target with the ETag of its stored version (earlier requests may have moved it)."""
    from referral_api.smorest import etag_for

    ((version,),) = rows(app, select(Case.version).where(Case.id == uuid.UUID(target.id)))
    return Target(
        target.id, etag_for("case", target.id, version), target.org_id, target.assignee_id
    )


# Reads before writes, the collection's creation last (so the list sees the world as built).
ORDER = (
    "list",
    "get",
    "list_notes",
    "access_log",
    "patch",
    "status",
    "assign",
    "add_note",
    "create",
)


def check(app: Any, client: Any, world: World, caller: str, endpoint: str, where: str) -> None:
    spec = ENDPOINTS[endpoint]
    target = world.own if where == "own" else world.other
    if target is not None:
        target = _current(app, target)
    before = _state(app)

    response = spec.request(client, world.headers, target)

    status = expected(caller, endpoint, where)
    if status >= 400:
        body = assert_problem(response, status)
        assert_no_personal_data(body)
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        if spec.mutating:
            assert _state(app) == before, "a refused request changed the database"
        if status in (403, 404) and spec.on_case:
            # The refusal is the same for a made-up id: it confirms nothing.
            assert target is not None
            made_up = Target(str(uuid.uuid4()), target.etag, target.org_id, target.assignee_id)
            again = spec.request(client, world.headers, made_up)
            assert again.status_code == status, "refusal differs for a made-up id"
            assert {k: v for k, v in again.get_json().items() if k != "instance"} == {
                k: v for k, v in body.items() if k != "instance"
            }
        return

    assert response.status_code == status, (response.status_code, response.get_json())
    assert response.headers["Cache-Control"] == "no-store"
    payload = response.get_json()
    if caller in METADATA_ONLY:
        assert_no_personal_data(payload)
    if endpoint == "list":
        listed = {item["id"] for item in payload}
        if caller == "platform_dpo":
            assert listed == world.all_case_ids
        else:
            assert world.own is not None
            assert listed == {world.own.id}, "list holds another organisation's case"
        if caller not in METADATA_ONLY:
            assert all(set(item) & CATEGORY_KEYS == {"identity"} for item in payload)
    elif endpoint == "get":
        assert target is not None and payload["id"] == target.id
        assert response.headers["ETag"] == target.etag
        if caller in METADATA_ONLY:
            assert set(payload) <= set(METADATA_FIELDS)
        else:
            assert set(payload) >= CATEGORY_KEYS
            for category in CATEGORY_KEYS:
                sent = CASE[category]
                assert {key: payload[category][key] for key in sent} == sent, category
    elif endpoint == "create":
        assert payload["org_id"] == str(world.actor_org)
    elif endpoint == "access_log":
        assert payload and all("actor_id" in entry for entry in payload)
    elif endpoint == "list_notes":
        assert [n["text"] for n in payload] == ["Note about a safe meeting place"]
    elif endpoint in ("patch", "status", "assign"):
        assert target is not None
        assert response.headers["ETag"] != target.etag, "a change must yield a new ETag"


SCENARIOS = [
    (caller, where)
    for caller in CALLERS
    for where in ("own", "other")
    if not (where == "own" and caller in ("platform_dpo", "platform_admin"))
]


@pytest.mark.parametrize(("caller", "where"), SCENARIOS, ids=["-".join(s) for s in SCENARIOS])
def test_authorization_matrix(app: Any, client: Any, factory: Any, caller: str, where: str) -> None:
    """Every endpoint for one caller and one target; all mismatches are reported together."""
    world = build_world(client, factory, caller)
    has_own = world.own is not None
    failures = []
    for endpoint in ORDER:
        spec = ENDPOINTS[endpoint]
        # The collection (list, create) points at no case: checked once per caller.
        if not spec.on_case and where == "other" and has_own:
            continue
        try:
            check(app, client, world, caller, endpoint, where)
        except AssertionError as error:
            failures.append(f"{endpoint} (expected {expected(caller, endpoint, where)}): {error}")
    assert not failures, "\n".join(failures)


def test_police_officer_sees_every_category_of_its_own_case(client: Any, factory: Any) -> None:
    police = factory.org(OrgType.POLICE)
    author = factory.headers(factory.user(Role.POLICE_OFFICER, police))
    reader = factory.headers(factory.user(Role.POLICE_OFFICER, police))
    created = client.post(f"{API}/cases", json=CASE, headers=author)
    assert created.status_code == 201
    body = client.get(f"{API}/cases/{created.get_json()['id']}", headers=reader).get_json()
    assert body["health"] == CASE["health"]
    assert body["psychosocial"] == CASE["psychosocial"]
    assert body["identity"] == CASE["identity"]
    for category in ("health", "psychosocial"):
        note = client.post(
            f"{API}/cases/{created.get_json()['id']}/notes",
            json={"category": category, "text": f"{category} note"},
            headers=reader,
        )
        assert note.status_code == 201, note.get_json()
    notes = client.get(f"{API}/cases/{created.get_json()['id']}/notes", headers=author)
    assert [n["category"] for n in notes.get_json()] == ["psychosocial", "health"]  # newest first


def test_a_bad_token_is_401_everywhere(client: Any, factory: Any) -> None:
    org = factory.org()
    target = _case_in(client, factory, org, Role.CASEWORKER)
    for spec in ENDPOINTS.values():
        for headers in ({"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic abc"}):
            response = spec.request(client, headers, target)
            assert_problem(response, 401)


def test_cross_organisation_attempts_are_audited_as_denials(
    app: Any, client: Any, factory: Any
) -> None:
    world = build_world(client, factory, "supervisor")
    for spec in ENDPOINTS.values():
        if spec.on_case:
            assert spec.request(client, world.headers, world.other).status_code == 404
    denials = rows(
        app,
        "SELECT action, actor_org_id, case_id, categories FROM audit_events "
        "WHERE decision = 'deny'",
    )
    assert len(denials) == sum(1 for spec in ENDPOINTS.values() if spec.on_case)
    other_case = uuid.UUID(world.other.id)
    for action, actor_org, case_id, categories in denials:
        assert uuid.UUID(str(actor_org)) == world.actor_org
        assert uuid.UUID(str(case_id)) == other_case, action
        assert categories is None
