"""Directory of services, seen from the outside.

Rule 19 matrix first (each role × own org / other org / anonymous × every directory
endpoint), then what a caseworker searching for a service and an org admin editing one would
notice: normalised values, search filters, cursor pagination, validation, lost-update
protection and the audit trail of every change.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Factory, assert_problem
from sqlalchemy import func, select

from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import Organisation
from referral_api.directory.models import Service, ServiceStatus, ServiceType
from referral_api.smorest import etag_for

API = "/api/v1"

# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def db(app: Any) -> Callable[[], Any]:
    """db() → a short-lived session. Never keep one open across requests: on SQLite a
    transaction here begins IMMEDIATE and would block the app's writers."""
    from referral_api.extensions import db as database

    factory = database.session_factory_for(app)

    @contextmanager
    def open_session() -> Iterator[Any]:
        with factory() as s:
            yield s
            s.rollback()

    return open_session


def add_service(db: Callable[[], Any], org_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    """Arrange a service directly in the database."""
    values: dict[str, Any] = {
        "name": f"Service {uuid.uuid4().hex[:6]}",
        "description": "Counselling for survivors.",
        "service_type": ServiceType.PSYCHOSOCIAL_SUPPORT,
        "area_served": "Kyiv",
        "professional_contact": "intake@ngo.example",
        "accepting_referrals": True,
        "status": ServiceStatus.ACTIVE,
    }
    languages = fields.pop("languages", ["uk", "en"])
    values.update(fields)
    with db() as s:
        service = Service(id=uuid.uuid4(), org_id=org_id, **values)
        service.languages = languages
        s.add(service)
        s.commit()
        return service.id


def stored(db: Callable[[], Any], service_id: uuid.UUID) -> Service | None:
    with db() as s:
        service = s.get(Service, service_id)
        if service is not None:
            s.expunge(service)
        return service


def etag(db: Callable[[], Any], service_id: uuid.UUID) -> str:
    service = stored(db, service_id)
    assert service is not None
    return etag_for("service", service_id, service.version)


def count_services(db: Callable[[], Any]) -> int:
    with db() as s:
        return s.scalar(select(func.count()).select_from(Service))


def service_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Free legal advice",
        "description": "Residence status, compensation claims, representation.",
        "service_type": "legal_assistance",
        "languages": ["uk", "en"],
        "eligibility_notes": "Presumed victims of trafficking and GBV.",
        "area_served": "Kyiv oblast; Lviv",
        "professional_contact": "intake@legal-aid.example",
    }
    body.update(overrides)
    return body


def field_errors(response: Any, status: int = 422) -> dict[str, Any]:
    errors = assert_problem(response, status)["errors"]
    flat: dict[str, Any] = {}
    for key, value in errors.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.get_json()
    return {item["id"] for item in response.get_json()}


# ---- 1. authorization matrix ----------------------------------------------------------------

ACTOR_ORG_TYPE = {Role.PLATFORM_ADMIN: OrgType.PLATFORM, Role.POLICE_OFFICER: OrgType.POLICE}


@dataclass
class World:
    headers: dict[str, str]
    # per scope ("own" / "other"): the organisation and one service of it
    targets: dict[str, dict[str, uuid.UUID]]


def build_world(factory: Factory, db: Callable[[], Any], role: Role) -> World:
    own = factory.org(ACTOR_ORG_TYPE.get(role, OrgType.NGO))
    other = factory.org(OrgType.LEGAL_AID)
    headers = factory.headers(factory.user(role, own))
    targets = {
        scope: {"org": org_id, "service": add_service(db, org_id)}
        for scope, org_id in (("own", own), ("other", other))
    }
    return World(headers, targets)


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: str  # formatted with the target's org and service

    def url(self, target: dict[str, uuid.UUID]) -> str:
        return API + self.path.format(**target)


ENDPOINTS = [
    Endpoint("list", "GET", "/services?org_id={org}"),
    Endpoint("get", "GET", "/services/{service}"),
    Endpoint("create", "POST", "/orgs/{org}/services"),
    Endpoint("update", "PATCH", "/services/{service}"),
    Endpoint("hsds_list", "GET", "/hsds/services?organization_id={org}"),
    Endpoint("hsds_get", "GET", "/hsds/services/{service}"),
    Endpoint("hsds_orgs", "GET", "/hsds/organizations"),
]
_READS = {"list", "get", "hsds_list", "hsds_get", "hsds_orgs"}
_READ_ONLY = {e.name: (200, 200) if e.name in _READS else (403, 403) for e in ENDPOINTS}
# (own organisation, other organisation). Everyone signed in reads every organisation's
# services; only an org admin edits, and only their own (another organisation's → 404).
EXPECTED: dict[Role, dict[str, tuple[int, int]]] = {
    Role.CASEWORKER: _READ_ONLY,
    Role.SUPERVISOR: _READ_ONLY,
    Role.POLICE_OFFICER: _READ_ONLY,
    Role.DPO: _READ_ONLY,
    Role.ORG_ADMIN: {**_READ_ONLY, "create": (201, 404), "update": (200, 404)},
    Role.PLATFORM_ADMIN: _READ_ONLY,
}


def test_matrix_covers_every_directory_route(app):
    def shape(path: str) -> str:
        return re.sub(r"<uuid:\w+>|\{\w+\}", "{}", path.split("?")[0])

    routes = {
        (method, shape(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("directory.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes == {(e.method, shape(API + e.path)) for e in ENDPOINTS}
    assert set(EXPECTED) == set(Role)


def _request(client: Any, db: Callable[[], Any], endpoint: Endpoint, target, headers) -> Any:
    headers = dict(headers)
    body = None
    if endpoint.name == "create":
        body = service_body(name=f"New {uuid.uuid4().hex[:6]}")
    elif endpoint.name == "update":
        body = {"name": "Renamed service"}
        headers["If-Match"] = etag(db, target["service"])
    return client.open(endpoint.url(target), method=endpoint.method, json=body, headers=headers)


def _check_effect(db, endpoint: Endpoint, target, response, before: int) -> None:
    body = response.get_json()
    service = stored(db, target["service"])
    if endpoint.name == "create":
        created = stored(db, uuid.UUID(body["id"]))
        assert created is not None and created.org_id == target["org"]
        assert count_services(db) == before + 1
    elif endpoint.name == "update":
        assert service.name == "Renamed service" and service.version == 2
    elif endpoint.name in ("list", "hsds_list"):
        items = body if endpoint.name == "list" else body["contents"]
        assert str(target["service"]) in {item["id"] for item in items}
        assert {item.get("org_id", item.get("organization_id")) for item in items} == {
            str(target["org"])
        }
    elif endpoint.name == "hsds_orgs":
        assert str(target["org"]) in {item["id"] for item in body["contents"]}
    else:
        assert body["id"] == str(target["service"])


@pytest.mark.parametrize("role", list(Role))
def test_authorization_matrix(client, factory, db, role):
    world = build_world(factory, db, role)
    for endpoint in ENDPOINTS:
        for scope, expected in zip(("own", "other"), EXPECTED[role][endpoint.name], strict=True):
            target = world.targets[scope]
            before = count_services(db)
            version = stored(db, target["service"]).version
            response = _request(client, db, endpoint, target, world.headers)
            where = f"{role.value} {endpoint.name} {scope}"
            if expected >= 400:
                assert_problem(response, expected)
                # A refused write changes nothing.
                assert count_services(db) == before, where
                assert stored(db, target["service"]).version == version, where
                continue
            assert response.status_code == expected, (where, response.get_json())
            _check_effect(db, endpoint, target, response, before)
            if endpoint.name == "update":  # leave the target as it was for later checks
                with db() as s:
                    s.get(Service, target["service"]).name = "Reset"
                    s.commit()


def test_anonymous_is_refused_everywhere(client, factory, db):
    org = factory.org(OrgType.NGO)
    target = {"org": org, "service": add_service(db, org)}
    for endpoint in ENDPOINTS:
        response = client.open(endpoint.url(target), method=endpoint.method, json={})
        assert_problem(response, 401)


def test_a_bad_token_is_refused(client, factory, db):
    org = factory.org(OrgType.NGO)
    service_id = add_service(db, org)
    response = client.get(
        f"{API}/services/{service_id}", headers={"Authorization": "Bearer not-a-token"}
    )
    assert_problem(response, 401)


# ---- 2. create, read, update ----------------------------------------------------------------


@pytest.fixture
def admin(factory: Factory) -> tuple[uuid.UUID, dict[str, str], uuid.UUID]:
    """(organisation, org admin headers, org admin user id) of a legal aid organisation."""
    org = factory.org(OrgType.LEGAL_AID)
    principal = factory.user(Role.ORG_ADMIN, org)
    return org, factory.headers(principal), principal.id


def test_org_admin_creates_a_service_with_normalised_values(client, db, admin):
    org, headers, _ = admin
    body = service_body(
        languages=["UK", "pt-br", "uk", "sr-latn"],
        professional_contact=" +44 20 7946 0101 ",
        area_served="  Kyiv oblast; Lviv ",
    )
    response = client.post(f"{API}/orgs/{org}/services", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    service_id = uuid.UUID(created["id"])
    assert created["org_id"] == str(org)
    assert created["languages"] == ["uk", "pt-BR", "sr-Latn"]
    assert created["professional_contact"] == "+442079460101"
    assert created["area_served"] == "Kyiv oblast; Lviv"
    assert created["accepting_referrals"] is True
    assert created["status"] == "active"
    assert created["service_type"] == "legal_assistance"
    assert created["org_name"]
    assert response.headers["ETag"] == etag_for("service", service_id, 1)

    row = stored(db, service_id)
    assert row.org_id == org and row.version == 1
    assert row.languages_text == "uk,pt-BR,sr-Latn"

    read = client.get(f"{API}/services/{service_id}", headers=headers)
    assert read.status_code == 200
    assert read.get_json() == created
    assert read.headers["ETag"] == response.headers["ETag"]


def test_every_role_reads_a_service_of_another_organisation(client, factory, db):
    other = factory.org(OrgType.SHELTER)
    service_id = add_service(db, other, service_type=ServiceType.SHELTER)
    headers = factory.headers(factory.user(Role.CASEWORKER))
    response = client.get(f"{API}/services/{service_id}", headers=headers)
    assert response.status_code == 200
    assert response.get_json()["service_type"] == "shelter"
    assert response.headers["ETag"] == etag(db, service_id)


def test_unknown_service_and_organisation_answer_404(client, admin):
    _, headers, _ = admin
    missing = uuid.uuid4()
    assert_problem(client.get(f"{API}/services/{missing}", headers=headers), 404)
    assert_problem(client.get(f"{API}/hsds/services/{missing}", headers=headers), 404)
    response = client.patch(
        f"{API}/services/{missing}", json={"name": "x"}, headers={**headers, "If-Match": '"x"'}
    )
    assert_problem(response, 404)
    assert_problem(
        client.post(f"{API}/orgs/{missing}/services", json=service_body(), headers=headers), 404
    )


def test_update_requires_if_match_and_bumps_the_etag(client, db, admin):
    org, headers, _ = admin
    service_id = add_service(db, org)
    first = etag(db, service_id)
    url = f"{API}/services/{service_id}"

    missing = client.patch(url, json={"accepting_referrals": False}, headers=headers)
    assert_problem(missing, 428)
    stale = client.patch(
        url, json={"accepting_referrals": False}, headers={**headers, "If-Match": '"stale"'}
    )
    assert_problem(stale, 412)
    assert stored(db, service_id).version == 1
    assert stored(db, service_id).accepting_referrals is True

    response = client.patch(
        url,
        json={"accepting_referrals": False, "languages": ["EN-gb"], "eligibility_notes": None},
        headers={**headers, "If-Match": first},
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["accepting_referrals"] is False
    assert body["languages"] == ["en-GB"]
    assert body["eligibility_notes"] is None
    assert response.headers["ETag"] == etag_for("service", service_id, 2) != first
    assert stored(db, service_id).version == 2

    # The ETag read before the change no longer works: no lost update.
    again = client.patch(url, json={"name": "Other"}, headers={**headers, "If-Match": first})
    assert_problem(again, 412)
    assert stored(db, service_id).name != "Other"


def test_deactivated_service_leaves_the_default_search_but_stays_readable(client, db, admin):
    org, headers, _ = admin
    service_id = add_service(db, org)
    response = client.patch(
        f"{API}/services/{service_id}",
        json={"status": "inactive"},
        headers={**headers, "If-Match": etag(db, service_id)},
    )
    assert response.status_code == 200
    assert str(service_id) not in ids(client.get(f"{API}/services", headers=headers))
    assert str(service_id) in ids(client.get(f"{API}/services?status=inactive", headers=headers))
    assert client.get(f"{API}/services/{service_id}", headers=headers).status_code == 200


# ---- 3. validation --------------------------------------------------------------------------


INVALID_CREATE_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"description": ""}, "description"),
    ({"service_type": "counselling"}, "service_type"),
    ({"languages": []}, "languages"),
    ({"languages": ["english"]}, "languages"),
    ({"languages": ["x-private"]}, "languages"),
    ({"languages": "uk"}, "languages"),
    ({"languages": [f"en-{n:03d}" for n in range(21)]}, "languages"),
    ({"area_served": " "}, "area_served"),
    ({"professional_contact": "12 Shelter Road, Kyiv"}, "professional_contact"),
    ({"professional_contact": "call the front desk"}, "professional_contact"),
    ({"professional_contact": "+44 20 7946 0101, 12 Shelter Road"}, "professional_contact"),
    ({"professional_contact": "not@an-address"}, "professional_contact"),
    # A street address as an e-mail's local part, spelt with characters that look like
    # spaces (Hangul filler, braille blank, zero-width space, halfwidth Hangul filler).
    *(
        (
            {"professional_contact": blank.join(["Flat", "3", "Hidden", "Lane"]) + "@x.example"},
            "professional_contact",
        )
        for blank in ("\u3164", "\u2800", "\u200b", "\uffa0")
    ),
    ({"professional_contact": "intake\u0001@shelter.example"}, "professional_contact"),
    ({"professional_contact": "\u202eintake@shelter.example"}, "professional_contact"),
    # Look-alike letters (long s, Kelvin sign) match [a-z] under IGNORECASE.
    ({"professional_contact": "intake@\u017fhelter.example"}, "professional_contact"),
    ({"professional_contact": "intake@shelter.\u212aiev"}, "professional_contact"),
    ({"professional_contact": "x" * 65 + "@shelter.example"}, "professional_contact"),
    # Over RFC 5646's 35 characters: together they overflowed the column (a 500 on
    # PostgreSQL), and SQLite stored them.
    ({"languages": ["en-" + "-".join(["abcdefgh"] * 120)]}, "languages"),
    ({"languages": ["en-" + "-".join(["abcdefgh"] * 4)]}, "languages"),
    # Map coordinates, in any free text published to every organisation.
    ({"area_served": "49.8397, 24.0297"}, "area_served"),
    ({"area_served": "49°50'23\"N 24°01'47\"E"}, "area_served"),
    ({"description": "Find us at -33.86882 151.20929 after dark."}, "description"),
    ({"eligibility_notes": "Meet at 50.4501;30.5234"}, "eligibility_notes"),
    ({"name": "Shelter 49° 50′"}, "name"),
    # Decimal commas, hemisphere letters and labels: as people write them.
    ({"area_served": "50,4501, 30,5234"}, "area_served"),
    ({"area_served": "N50.4501 E30.5234"}, "area_served"),
    ({"description": "lat 50.4501 lon 30.5234"}, "description"),
    ({"eligibility_notes": "50.4501N30.5234E"}, "eligibility_notes"),
    # As maps apps, geo: URIs and map links write them (a bare comma), long labels,
    # decimal minutes, smart quotes and the ordinal sign typed for a degree.
    ({"description": "50.4501,30.5234"}, "description"),
    ({"description": "geo:50.4501,30.5234"}, "description"),
    ({"description": "https://www.google.com/maps/@50.4501,30.5234,17z"}, "description"),
    ({"eligibility_notes": "Latitude: 50.4501, Longitude: 30.5234"}, "eligibility_notes"),
    ({"area_served": "N 50° 27.006' E 030° 31.404'"}, "area_served"),
    ({"name": "Shelter 50°27’00”N 30°31’24”E"}, "name"),
    ({"description": "50º27'00\"N 30º31'24\"E"}, "description"),
    # Found by review, as devices and map apps hand out a building's place: a plus code
    # (short and full), what3words, MGRS and UTM, degrees and minutes (and seconds) written
    # without marks, fullwidth and middle-dot decimal points, and map links.
    ({"area_served": "FG3H+2V Kyiv"}, "area_served"),
    ({"description": "Entrance at 9G2GFG3H+2V, back door."}, "description"),
    ({"eligibility_notes": "Meet at ///filled.count.soap"}, "eligibility_notes"),
    ({"area_served": "35U NR 51234 45678"}, "area_served"),
    ({"area_served": "35U 512345 5590123"}, "area_served"),
    ({"description": "N 50 27.006 E 030 31.404"}, "description"),
    ({"area_served": "50 27 00.4 N 30 31 24.2 E"}, "area_served"),
    ({"description": "504501N 0305234E"}, "description"),
    ({"description": "5045.01N/03031.40E"}, "description"),
    ({"description": "50d27m00s N 30d31m24s E"}, "description"),
    ({"area_served": "50\uff0e4501, 30\uff0e5234"}, "area_served"),
    ({"area_served": "50\u00b74501, 30\u00b75234"}, "area_served"),
    ({"description": "See https://maps.app.goo.gl/Xy12AbCd"}, "description"),
    ({"description": "osm: https://www.openstreetmap.org/#map=19/50.4/30.5"}, "description"),
    ({"accepting_referrals": "perhaps"}, "accepting_referrals"),
    ({"status": "defunct"}, "status"),
    # Read-only and unknown fields: no mass assignment.
    ({"id": str(uuid.uuid4())}, "id"),
    ({"org_id": str(uuid.uuid4())}, "org_id"),
    ({"version": 7}, "version"),
    ({"created_at": "2026-01-01T00:00:00+00:00"}, "created_at"),
    ({"shelter_address": "12 Shelter Road"}, "shelter_address"),
]


def test_create_rejects_invalid_bodies(client, db, admin):
    # One app for all the cases keeps the suite fast; each case names itself on failure.
    org, headers, _ = admin
    for overrides, field in INVALID_CREATE_BODIES:
        response = client.post(
            f"{API}/orgs/{org}/services", json=service_body(**overrides), headers=headers
        )
        assert field in field_errors(response), overrides
    assert count_services(db) == 0


def test_ordinary_texts_and_contacts_are_not_taken_for_coordinates_or_addresses(client, db, admin):
    org, headers, _ = admin
    body = service_body(
        description="Open 9.00–17.30, 24/7 hotline; ages 14-17 with 2 carers, 1.5 km radius. "
        "Fees 1.500 - 2.000 UAH, up to 1,500 - 2,000 per year.",
        eligibility_notes="Survivors 18+ (ref. 2024.117, 12.5 % quota). Call 044.1234.5678; "
        "rooms at 20° in winter. Phone 044 12 34 E-mail first; C++ and Python courses; bus "
        "24N, 30 min; flat 5E; postcode SW1A 1AA.",
        area_served="Kyiv oblast; Lviv; District 5; Block C, 3 km from the centre",
        professional_contact="Intake.Team+THB@Legal-Aid.EXAMPLE",
        languages=["sr-Latn-RS", "de-CH-1996"],
    )
    response = client.post(f"{API}/orgs/{org}/services", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["professional_contact"] == "Intake.Team+THB@legal-aid.example"
    assert response.get_json()["languages"] == ["sr-Latn-RS", "de-CH-1996"]


def test_long_blank_runs_in_free_text_are_screened_in_linear_time(client, db, admin):
    """The first coordinate pattern backtracked as n⁴ over a run of blanks after a decimal
    number: 200 spaces took seconds and 400 a minute, in every worker an org admin reached.
    These bodies (each at its field's limit) finish like any other."""
    org, headers, _ = admin
    for blank in (" " * 3990, "\t \n" * 1300, " ," * 1990):
        body = service_body(
            description="1.0000" + blank + "x",
            eligibility_notes="2.5" + blank[: 4000 - 4] + "y",
            area_served="3.000" + blank[:490] + "z",
        )
        response = client.post(f"{API}/orgs/{org}/services", json=body, headers=headers)
        assert response.status_code == 201, response.get_json()


def test_a_language_search_past_a_tags_length_is_refused(client, auth_headers):
    # ~1,200 subtags made one LIKE each: SQLite's expression tree overflowed (a 500).
    for tag in ("en-" + "-".join(["abcde"] * 1200), "en-" + "-".join(["abcde"] * 6)):
        response = client.get(
            f"{API}/services", query_string={"language": tag}, headers=auth_headers(Role.CASEWORKER)
        )
        assert "language" in field_errors(response), tag[:20]


def test_create_requires_the_core_fields(client, db, admin):
    org, headers, _ = admin
    required = ["name", "description", "service_type", "languages", "area_served"]
    for field in [*required, "professional_contact"]:
        body = service_body()
        del body[field]
        response = client.post(f"{API}/orgs/{org}/services", json=body, headers=headers)
        assert field in field_errors(response), field
    optional = service_body()
    del optional["eligibility_notes"]
    response = client.post(f"{API}/orgs/{org}/services", json=optional, headers=headers)
    assert response.status_code == 201
    assert response.get_json()["eligibility_notes"] is None


INVALID_CHANGES: list[tuple[dict[str, Any], str]] = [
    ({"org_id": "OTHER"}, "org_id"),
    ({"id": str(uuid.uuid4())}, "id"),
    ({"version": 9}, "version"),
    ({"updated_at": "2026-01-01T00:00:00+00:00"}, "updated_at"),
    ({"name": None}, "name"),
    ({"languages": ["ukrainian"]}, "languages"),
    ({"professional_contact": "Flat 3, 5 Hidden Lane"}, "professional_contact"),
]


def test_update_rejects_read_only_unknown_and_invalid_fields(client, factory, db, admin):
    org, headers, _ = admin
    service_id = add_service(db, org)
    other_org = str(factory.org(OrgType.NGO))
    for changes, field in INVALID_CHANGES:
        if changes.get("org_id") == "OTHER":
            changes = {"org_id": other_org}
        response = client.patch(
            f"{API}/services/{service_id}",
            json=changes,
            headers={**headers, "If-Match": etag(db, service_id)},
        )
        assert field in field_errors(response), changes
    row = stored(db, service_id)
    assert row.version == 1 and row.org_id == org


# ---- 4. search ------------------------------------------------------------------------------


@pytest.fixture
def catalogue(factory: Factory, db: Callable[[], Any]) -> dict[str, Any]:
    ngo = factory.org(OrgType.NGO)
    clinic = factory.org(OrgType.HEALTH)
    closed_org = factory.org(OrgType.SHELTER)
    with db() as s:
        s.get(Organisation, closed_org).active = False
        s.commit()
    services = {
        "A": add_service(
            db,
            ngo,
            service_type=ServiceType.LEGAL_ASSISTANCE,
            languages=["uk", "en"],
            area_served="Kyiv oblast; Lviv",
        ),
        "B": add_service(
            db,
            ngo,
            service_type=ServiceType.SHELTER,
            languages=["pt-BR", "ro"],
            area_served="Київська область",
            accepting_referrals=False,
        ),
        "C": add_service(
            db, clinic, service_type=ServiceType.HEALTH, languages=["pt"], area_served="Odesa"
        ),
        "D": add_service(
            db,
            clinic,
            service_type=ServiceType.LEGAL_ASSISTANCE,
            languages=["uk"],
            area_served="Kharkiv",
            status=ServiceStatus.INACTIVE,
        ),
        "E": add_service(
            db, closed_org, service_type=ServiceType.SHELTER, languages=["en"], area_served="Lviv"
        ),
    }
    return {"orgs": {"ngo": ngo, "clinic": clinic, "closed": closed_org}, "services": services}


SEARCHES: list[tuple[str, str]] = [
    ("", "ABC"),
    ("service_type=legal_assistance", "A"),
    ("service_type=legal_assistance&status=inactive", "D"),
    ("status=active", "ABCE"),
    ("language=uk", "A"),
    ("language=UK", "A"),
    ("language=pt", "BC"),  # pt finds pt-BR
    ("language=pt-br", "BC"),  # pt-BR finds a service offering plain pt
    ("language=ro-MD", "B"),
    ("language=en-GB", "A"),
    ("language=ru", ""),
    ("area=lviv", "A"),
    ("area=KYIV", "A"),
    ("area=київ", "B"),  # case-insensitive beyond ASCII
    ("area=%25", ""),  # LIKE wildcards are literal
    ("area=_", ""),
    ("accepting_referrals=false", "B"),
    ("accepting_referrals=true", "AC"),
    ("org_id={clinic}", "C"),
    ("org_id={clinic}&status=inactive", "D"),
    ("org_id={closed}&status=active", "E"),
    ("service_type=legal_assistance&language=uk&area=kyiv&accepting_referrals=true", "A"),
]


def test_search_filters(client, factory, catalogue):
    headers = factory.headers(factory.user(Role.CASEWORKER))
    name_of = {str(service_id): key for key, service_id in catalogue["services"].items()}
    for query, expected in SEARCHES:
        response = client.get(
            f"{API}/services?{query.format(**catalogue['orgs'])}", headers=headers
        )
        found = "".join(sorted(name_of[service_id] for service_id in ids(response)))
        assert found == expected, query


INVALID_SEARCHES = [
    ("language=english", "language"),
    ("service_type=counselling", "service_type"),
    ("accepting_referrals=perhaps", "accepting_referrals"),
    ("org_id=not-a-uuid", "org_id"),
    ("status=closed", "status"),
    ("limit=101", "limit"),
    ("limit=0", "limit"),
    ("cursor=not-a-cursor", "cursor"),
]


def test_search_rejects_invalid_parameters(client, auth_headers):
    headers = auth_headers(Role.CASEWORKER)
    for query, field in INVALID_SEARCHES:
        response = client.get(f"{API}/services?{query}", headers=headers)
        assert field in field_errors(response), query


def test_search_pages_with_a_cursor_and_keeps_the_filters(client, factory, db):
    org = factory.org(OrgType.LEGAL_AID)
    wanted = {str(add_service(db, org, service_type=ServiceType.LEGAL_ASSISTANCE)) for _ in "12345"}
    for _ in range(3):
        add_service(db, org, service_type=ServiceType.HEALTH)
    headers = factory.headers(factory.user(Role.CASEWORKER))

    seen: list[str] = []
    url = f"{API}/services?service_type=legal_assistance&limit=2"
    pages = 0
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200
        page = response.get_json()
        assert len(page) <= 2
        assert {item["service_type"] for item in page} == {"legal_assistance"}
        seen += [item["id"] for item in page]
        pages += 1
        link = response.headers.get("Link")
        url = re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1) if link else None
        if url:
            assert "service_type=legal_assistance" in url and "limit=2" in url
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == wanted


# ---- 5. audit -------------------------------------------------------------------------------


def audit_rows(db: Callable[[], Any], service_id: uuid.UUID) -> list[AuditEvent]:
    with db() as s:
        rows = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.resource_type == "service")
            .where(AuditEvent.resource_id == str(service_id))
            .order_by(AuditEvent.id)
        ).all()
        s.expunge_all()
        return list(rows)


def test_every_write_is_audited_and_refused_writes_are_not_recorded_as_done(client, db, admin):
    org, headers, admin_id = admin
    created = client.post(f"{API}/orgs/{org}/services", json=service_body(), headers=headers)
    assert created.status_code == 201
    service_id = uuid.UUID(created.get_json()["id"])
    url = f"{API}/services/{service_id}"

    assert_problem(client.patch(url, json={"name": "Stale"}, headers=headers), 428)
    updated = client.patch(
        url,
        json={"name": "Renamed", "accepting_referrals": False},
        headers={**headers, "If-Match": created.headers["ETag"]},
    )
    assert updated.status_code == 200

    rows = audit_rows(db, service_id)
    assert [row.action for row in rows] == ["directory:manage", "directory:manage"]
    assert all(row.decision == "allow" for row in rows)
    assert all(row.actor_id == admin_id and row.actor_org_id == org for row in rows)
    assert all(row.actor_role == "org_admin" and row.case_id is None for row in rows)
    creation, change = (json.loads(row.details) for row in rows)
    assert creation == {"created": True, "org_id": str(org), "service_type": "legal_assistance"}
    assert change == {
        "changed": ["accepting_referrals", "name"],
        "accepting_referrals": False,
        "org_id": str(org),
    }
    # Field names and flags only: the texts themselves are not copied into the audit log.
    assert "Renamed" not in rows[1].details


def test_reads_write_nothing(client, factory, db):
    org = factory.org(OrgType.NGO)
    service_id = add_service(db, org)
    headers = factory.headers(factory.user(Role.CASEWORKER))
    with db() as s:
        before = s.scalar(select(func.count()).select_from(AuditEvent))
    for path in ("/services", f"/services/{service_id}", f"/hsds/services/{service_id}"):
        assert client.get(API + path, headers=headers).status_code == 200
    assert stored(db, service_id).version == 1
    with db() as s:
        after = s.scalar(select(func.count()).select_from(AuditEvent))
    # Directory reads carry no personal data; only the login itself may have been recorded.
    assert after == before


# ---- 6. demo data ---------------------------------------------------------------------------


def test_demo_seed_gives_the_demo_organisations_services(runner, client, db):
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    with db() as s:
        by_type = {
            org_type: {service.service_type for service in services}
            for org_type, services in (
                (
                    org.org_type,
                    s.scalars(select(Service).where(Service.org_id == org.id)).all(),
                )
                for org in s.scalars(select(Organisation)).all()
            )
            if services
        }
    assert ServiceType.LAW_ENFORCEMENT in by_type[OrgType.POLICE]
    assert ServiceType.LEGAL_ASSISTANCE in by_type[OrgType.LEGAL_AID]
    assert ServiceType.HEALTH in by_type[OrgType.HEALTH]
    assert {ServiceType.PSYCHOSOCIAL_SUPPORT, ServiceType.SHELTER} <= by_type[OrgType.NGO]
    assert OrgType.PLATFORM not in by_type
