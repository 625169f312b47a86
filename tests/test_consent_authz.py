"""Authorization matrix for every consent endpoint (STYLE.md rule 19; DESIGN.md §4, §7).

Each role × (a consent of its own organisation's case, one of another organisation's case)
plus anonymous callers, against every consent endpoint:

- anonymous → 401;
- a role without the endpoint's permission → 403, the same for a made-up id (the refusal
  comes before any lookup): a DPO reads but never records, renews or withdraws; org and
  platform administrators have no consent access at all; revoke and entered-in-error need
  a supervisor;
- another organisation's case or consent → 404, never 403, even when its consent names the
  caller's organisation as a recipient — except a DPO of the platform organisation, who
  reads consent metadata (and the consent check) of any organisation;
- no response, allowed or refused, carries a personal field of the case (the DPO's
  included); a refused write changes nothing; lists hold the case's own consents only.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem
from sqlalchemy import text

from referral_api.access.roles import OrgType, Role
from referral_api.cases.layout import CATEGORY_FIELDS, METADATA_FIELDS
from referral_api.consent import service as consent_service
from referral_api.smorest import etag_for

API = "/api/v1"

CASE = {
    "case_type": "gbv",
    "identity": {
        "given_name": "Myroslava",
        "family_name": "Sinytsia",
        "date_of_birth": "2001-03-04",
        "documents": [{"type": "passport", "country": "UA", "number": "SN112233"}],
    },
    "contact": {"phone": "+380631234321"},
    "location": {"address": "Vulytsia Lisova 9, Chernihiv", "is_shelter": True},
    "psychosocial": {"notes": "Nightmares since March"},
}
CANARIES = [
    "Myroslava",
    "Sinytsia",
    "2001-03-04",
    "SN112233",
    "+380631234321",
    "Lisova",
    "Nightmares",
]
PERSONAL_KEYS = {k for fields in CATEGORY_FIELDS.values() for k in fields} - set(METADATA_FIELDS)
REASON = "Consent taken without an interpreter"


def assert_no_personal_data(payload: Any) -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                assert key not in PERSONAL_KEYS, f"{path}.{key}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(payload, "$")
    dumped = json.dumps(payload, ensure_ascii=False)
    for canary in [*CANARIES, REASON]:
        assert canary not in dumped, canary


def rows(app: Any, sql: str) -> list[tuple[Any, ...]]:
    from referral_api.extensions import db

    with db.engine_for(app).connect() as connection:
        return [tuple(r) for r in connection.execute(text(sql))]


def stored(app: Any) -> list[tuple[Any, ...]]:
    """Everything a refused request must leave untouched."""
    return rows(
        app,
        "SELECT 'r', CAST(id AS VARCHAR(64)), NULL FROM consent_records "
        "UNION ALL SELECT 'p', CAST(id AS VARCHAR(64)), NULL FROM consent_provisions "
        "UNION ALL SELECT 'e', CAST(consent_id AS VARCHAR(64)), event_type FROM consent_events "
        "ORDER BY 1, 2, 3",
    )


@dataclass
class Side:
    """A case and its consents: one to read and renew, one per closing endpoint."""

    case_id: str
    read: str
    withdraw: str
    revoke: str
    entered_in_error: str
    all_consents: set[str] = field(default_factory=set)


@dataclass
class World:
    headers: dict[str, str]
    own: Side | None  # None: the platform organisation holds no cases
    other: Side
    recipient: uuid.UUID  # a legal-aid organisation named by the provisions


def consent_body(recipient: uuid.UUID, caller_org: uuid.UUID | None) -> dict[str, Any]:
    start = datetime.now(UTC) - timedelta(days=1)
    provisions: list[dict[str, Any]] = [
        {
            "purpose": "legal_assistance",
            "recipient_org_id": str(recipient),
            "categories": ["identity", "legal"],
            "valid_from": start.isoformat(),
            "valid_until": (start + timedelta(days=30)).isoformat(),
        }
    ]
    if caller_org is not None:
        # Naming the caller's organisation as a recipient does not open the consent to it.
        provisions.append(
            {
                "purpose": "case_management",
                "recipient_org_id": str(caller_org),
                "categories": ["identity"],
            }
        )
    return {
        "grantor": "person",
        "collection_method": "interpreter_assisted",
        "language": "uk",
        "notice_version": "2026-01",
        "jurisdiction": "UA",
        "legal_basis": {"article6": "a", "article9": "a"},
        "provisions": provisions,
    }


def side(
    client: Any,
    factory: Any,
    org_id: uuid.UUID,
    author_role: Role,
    recipient: uuid.UUID,
    named: uuid.UUID | None,
) -> Side:
    headers = factory.headers(factory.user(author_role, org_id))
    response = client.post(f"{API}/cases", json=CASE, headers=headers)
    assert response.status_code == 201, response.get_json()
    case_id = response.get_json()["id"]
    ids = []
    for _ in range(4):
        consent = client.post(
            f"{API}/cases/{case_id}/consents",
            json=consent_body(recipient, named),
            headers=headers,
        )
        assert consent.status_code == 201, consent.get_json()
        ids.append(consent.get_json()["id"])
    return Side(case_id, *ids, all_consents=set(ids))


# Callers: (role, type of the caller's organisation); None = anonymous.
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
    recipient = factory.org(OrgType.LEGAL_AID)
    if spec is None:
        home = factory.org(OrgType.NGO)
        own = side(client, factory, home, Role.CASEWORKER, recipient, None)
        other = side(client, factory, factory.org(OrgType.NGO), Role.CASEWORKER, recipient, None)
        return World({}, own, other, recipient)
    role, org_type = spec
    home = factory.org(org_type)
    own = None
    if org_type is not OrgType.PLATFORM:
        author = Role.POLICE_OFFICER if org_type is OrgType.POLICE else Role.CASEWORKER
        own = side(client, factory, home, author, recipient, None)
    other = side(client, factory, factory.org(OrgType.NGO), Role.CASEWORKER, recipient, home)
    return World(factory.headers(factory.user(role, home)), own, other, recipient)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    mutating: bool = False

    def url(self, target: Side, made_up: bool = False) -> str:
        fake = str(uuid.uuid4())
        case_id = fake if made_up else target.case_id
        consent = {
            "withdraw": target.withdraw,
            "revoke": target.revoke,
            "entered_in_error": target.entered_in_error,
        }.get(self.name, target.read)
        consent = fake if made_up else consent
        return {
            "record": f"{API}/cases/{case_id}/consents",
            "list": f"{API}/cases/{case_id}/consents",
            "check": f"{API}/cases/{case_id}/consent-check",
            "get": f"{API}/consents/{consent}",
            "receipt": f"{API}/consents/{consent}/receipt",
            "renew": f"{API}/consents/{consent}/renew",
            "withdraw": f"{API}/consents/{consent}/withdraw",
            "revoke": f"{API}/consents/{consent}/revoke",
            "entered_in_error": f"{API}/consents/{consent}/entered-in-error",
        }[self.name]

    def body(self, world: World) -> Any:
        return {
            "record": consent_body(world.recipient, None),
            "check": {
                "recipient_org_id": str(world.recipient),
                "purpose": "legal_assistance",
                "categories": ["identity", "legal"],
            },
            "renew": {"valid_until": (datetime.now(UTC) + timedelta(days=60)).isoformat()},
            "withdraw": {"reason": REASON},
            "revoke": {"reason": REASON},
            "entered_in_error": {"reason": REASON},
        }.get(self.name)

    def request(self, client: Any, world: World, target: Side, made_up: bool = False) -> Any:
        headers = world.headers
        if self.name in ("renew", "revoke", "entered_in_error"):
            # Its consent as recorded (one event): the If-Match a change needs, so that the
            # status is the policy's (an outsider's 404 comes before any If-Match check).
            consent = self.url(target, made_up).split("/")[-2]
            headers = {**headers, "If-Match": etag_for("consent", consent, 1)}
        return client.open(
            self.url(target, made_up),
            method=self.method,
            json=self.body(world),
            headers=headers,
        )


ENDPOINTS = {
    e.name: e
    for e in [
        Endpoint("list", "GET"),
        Endpoint("get", "GET"),
        Endpoint("receipt", "GET"),
        Endpoint("check", "POST"),
        Endpoint("record", "POST", mutating=True),
        Endpoint("renew", "POST", mutating=True),
        Endpoint("withdraw", "POST", mutating=True),
        Endpoint("revoke", "POST", mutating=True),
        Endpoint("entered_in_error", "POST", mutating=True),
    ]
}
ORDER = tuple(ENDPOINTS)  # reads first; each write has a consent of its own

_HANDLER = {
    "list": 200,
    "get": 200,
    "receipt": 200,
    "check": 200,
    "record": 201,
    "renew": 200,
    "withdraw": 200,
    "revoke": 403,
    "entered_in_error": 403,
}
_READS = {"list", "get", "receipt", "check"}
# Status on the caller's own organisation's consents. On another organisation's, every 2xx
# becomes 404 except the platform DPO's reads.
EXPECTED_OWN: dict[str, dict[str, int]] = {
    "caseworker": _HANDLER,
    "supervisor": {**_HANDLER, "revoke": 200, "entered_in_error": 200},
    "police_officer": _HANDLER,
    "dpo": {name: 200 if name in _READS else 403 for name in ENDPOINTS},
    "org_admin": dict.fromkeys(ENDPOINTS, 403),
    "platform_dpo": {name: 200 if name in _READS else 403 for name in ENDPOINTS},
    "platform_admin": dict.fromkeys(ENDPOINTS, 403),
    "anonymous": dict.fromkeys(ENDPOINTS, 401),
}


def expected(caller: str, endpoint: str, where: str) -> int:
    status = EXPECTED_OWN[caller][endpoint]
    if where == "other" and status < 300 and caller != "platform_dpo":
        return 404
    return status


def check(app: Any, client: Any, world: World, caller: str, endpoint: str, where: str) -> None:
    spec = ENDPOINTS[endpoint]
    target = world.own if where == "own" else world.other
    assert target is not None
    before = stored(app)

    response = spec.request(client, world, target)

    status = expected(caller, endpoint, where)
    if status >= 400:
        body = assert_problem(response, status)
        assert_no_personal_data(body)
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert stored(app) == before, "a refused request changed the database"
        if status in (403, 404):
            again = spec.request(client, world, target, made_up=True)
            assert again.status_code == status, "the refusal differs for a made-up id"
            assert {k: v for k, v in again.get_json().items() if k != "instance"} == {
                k: v for k, v in body.items() if k != "instance"
            }
        return

    assert response.status_code == status, (response.status_code, response.get_json())
    payload = response.get_json()
    assert_no_personal_data(payload)
    if endpoint == "list":
        assert {c["id"] for c in payload} == target.all_consents
        assert {c["case_id"] for c in payload} == {target.case_id}
    elif endpoint == "check":
        assert payload["permit"] is True
        assert set(payload["provisions_used"]) == {"identity", "legal"}
    elif endpoint == "receipt":
        assert payload["record_id"] == target.read
    elif endpoint == "record":
        assert payload["case_id"] == target.case_id and payload["state"] == "active"
        target.all_consents.add(payload["id"])
    else:
        state = {
            "get": "active",
            "renew": "active",
            "withdraw": "withdrawn",
            "revoke": "revoked",
            "entered_in_error": "entered_in_error",
        }[endpoint]
        assert payload["state"] == state
        assert payload["case_id"] == target.case_id
        if spec.mutating:
            assert len(stored(app)) == len(before) + 1, "one event per write"


SCENARIOS = [
    (caller, where)
    for caller in CALLERS
    for where in ("own", "other")
    if not (where == "own" and caller in ("platform_dpo", "platform_admin"))
]


@pytest.mark.parametrize(("caller", "where"), SCENARIOS, ids=["-".join(s) for s in SCENARIOS])
def test_authorization_matrix(app: Any, client: Any, factory: Any, caller: str, where: str) -> None:
    """Every consent endpoint for one caller and one target; mismatches reported together."""
    world = build_world(client, factory, caller)
    failures = []
    for endpoint in ORDER:
        try:
            check(app, client, world, caller, endpoint, where)
        except AssertionError as error:
            failures.append(f"{endpoint} (expected {expected(caller, endpoint, where)}): {error}")
    assert not failures, "\n".join(failures)


def test_the_matrix_covers_every_consent_route(app: Any) -> None:
    """A new consent endpoint must be added to the matrix above."""
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if re.search(r"/consents(/|$)|/consent-check$", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    side_ = Side("<uuid:case_id>", *(["<uuid:consent_id>"] * 4))
    covered = {(e.url(side_), e.method) for e in ENDPOINTS.values()}
    assert routes == covered


SERVICE_WRITES = {
    "record": lambda s, a, c: consent_service.record_consent(s, a, c.case_id, {}),
    "renew": lambda s, a, c: consent_service.renew(s, a, c.id, None),
    "withdraw": lambda s, a, c: consent_service.withdraw(s, a, c.id),
    "revoke": lambda s, a, c: consent_service.revoke(s, a, c.id, REASON),
    "entered_in_error": lambda s, a, c: consent_service.mark_entered_in_error(s, a, c.id, REASON),
}
# Roles of the consent's own organisation refused each write by the service itself.
SERVICE_REFUSALS = [
    (Role.DPO, "record"),
    (Role.DPO, "renew"),
    (Role.DPO, "withdraw"),
    (Role.DPO, "revoke"),
    (Role.ORG_ADMIN, "withdraw"),
    (Role.CASEWORKER, "revoke"),
    (Role.CASEWORKER, "entered_in_error"),
]


def test_the_service_refuses_too(app: Any, client: Any, factory: Any, session: Any) -> None:
    """Defence in depth: the route's permission is not the only check (a job or another
    feature calling the service with the wrong actor is refused as well)."""
    from referral_api.access.actor import Actor, ActorKind
    from referral_api.consent.models import ConsentRecord
    from referral_api.exceptions import Forbidden

    recipient = factory.org(OrgType.LEGAL_AID)
    home = factory.org(OrgType.NGO)
    target = side(client, factory, home, Role.CASEWORKER, recipient, None)
    before = stored(app)
    accepted = []
    for role, write in SERVICE_REFUSALS:
        actor = Actor.for_principal(ActorKind.USER, uuid.uuid4(), home, OrgType.NGO, role)
        try:
            consent = session.get(ConsentRecord, uuid.UUID(target.read))
            SERVICE_WRITES[write](session, actor, consent)
            accepted.append(f"{role.value} {write}")
        except Forbidden:
            pass
        finally:
            session.rollback()
    assert not accepted, accepted
    assert stored(app) == before


def test_refused_reads_of_another_organisation_are_audited_as_denials(
    app: Any, client: Any, factory: Any
) -> None:
    world = build_world(client, factory, "caseworker")
    response = ENDPOINTS["get"].request(client, world, world.other)
    assert_problem(response, 404)
    denials = rows(
        app,
        "SELECT action, decision FROM audit_events WHERE decision = 'deny' "
        "AND case_id IS NOT NULL AND action = 'consent:read'",
    )
    assert denials == [("consent:read", "deny")]


def test_a_probe_of_a_consent_id_that_does_not_exist_is_audited(
    app: Any, client: Any, factory: Any
) -> None:
    world = build_world(client, factory, "caseworker")
    tried = uuid.uuid4()
    response = client.get(f"/api/v1/consents/{tried}", headers=world.headers)
    assert_problem(response, 404)
    denials = rows(
        app,
        "SELECT action, resource_type, resource_id, reason FROM audit_events "
        "WHERE decision = 'deny'",
    )
    assert denials == [("consent:read", "consent", str(tried), "no such consent")]
