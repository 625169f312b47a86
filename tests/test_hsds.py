"""The Open Referral HSDS 3.0 publication validates against the official compiled schemas.

The schemas are Open Referral's own (`schema/compiled/` of openreferral/specification), read
from `HSDS_SCHEMA_DIR` or from `shared/standards/hsds-3.0` beside the clone — never copied
into this project. Tests that need them skip, saying so, only where neither exists.

The compiled schemas declare no `$schema`; HSDS's OpenAPI document names JSON Schema 2020-12
as its dialect, so that is the validator used, with format checking on (uuid, email,
date-time …). Their non-standard keywords (datapackage_metadata, constraints, core,
tabular_required) are ignored by the validator, as JSON Schema prescribes.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Factory, assert_problem
from jsonschema import Draft202012Validator

from referral_api.access.roles import OrgType, Role
from referral_api.auth.models import Organisation
from referral_api.directory.models import Service, ServiceStatus, ServiceType

API = "/api/v1"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCHEMA_DIR = REPO_ROOT.parent / "shared" / "standards" / "hsds-3.0"
SCHEMA_FILES = ("service.json", "service_list.json", "organization_list.json")


def schema_dir() -> Path | None:
    candidates = [Path(os.environ["HSDS_SCHEMA_DIR"])] if os.environ.get("HSDS_SCHEMA_DIR") else []
    candidates.append(DEFAULT_SCHEMA_DIR)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in SCHEMA_FILES):
            return candidate
    return None


@pytest.fixture(scope="module")
def hsds() -> dict[str, Draft202012Validator]:
    """Validators by compiled schema name ("service", "service_list", "organization_list")."""
    directory = schema_dir()
    if directory is None:
        pytest.skip(
            "HSDS 3.0 compiled schemas not found: set HSDS_SCHEMA_DIR or place shared/ "
            f"beside the clone ({DEFAULT_SCHEMA_DIR})"
        )
    validators = {}
    for name in SCHEMA_FILES:
        schema = json.loads((directory / name).read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        validators[name.removesuffix(".json")] = Draft202012Validator(
            schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
    return validators


def page_validator(item: Draft202012Validator) -> Draft202012Validator:
    """The HSDS API's paginated list: `Page` from HSDS's schema/openapi.json (made strict:
    every page field required) whose `contents` are items of the compiled list schema."""
    integer = {"type": "integer", "minimum": 0}
    boolean = {"type": "boolean"}
    schema = {
        "type": "object",
        "required": [
            "total_items",
            "total_pages",
            "page_number",
            "size",
            "first_page",
            "last_page",
            "empty",
            "contents",
        ],
        "properties": {
            "total_items": integer,
            "total_pages": integer,
            "page_number": {"type": "integer", "minimum": 1},
            "size": integer,
            "first_page": boolean,
            "last_page": boolean,
            "empty": boolean,
            "contents": {"type": "array", "items": item.schema},
        },
    }
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors_of(validator: Draft202012Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def undeclared_keys(schema: dict[str, Any], document: Any, path: str = "") -> list[str]:
    """Keys HSDS does not define (the compiled schemas allow extra properties; we don't add
    any: a consumer must not find our internal fields in the export)."""
    found: list[str] = []
    if isinstance(document, dict) and "properties" in schema:
        for key, value in document.items():
            if key not in schema["properties"]:
                found.append(f"{path}/{key}")
            else:
                found += undeclared_keys(schema["properties"][key], value, f"{path}/{key}")
    elif isinstance(document, list) and "items" in schema:
        for index, value in enumerate(document):
            found += undeclared_keys(schema["items"], value, f"{path}/{index}")
    return found


def nulls(document: Any, path: str = "") -> list[str]:
    if document is None:
        return [path]
    if isinstance(document, dict):
        return [p for key, value in document.items() for p in nulls(value, f"{path}/{key}")]
    if isinstance(document, list):
        return [p for index, value in enumerate(document) for p in nulls(value, f"{path}/{index}")]
    return []


def assert_valid(validator: Draft202012Validator, document: Any) -> None:
    assert errors_of(validator, document) == []
    assert undeclared_keys(validator.schema, document) == []
    assert nulls(document) == []


# ---- arrangement ----------------------------------------------------------------------------


@pytest.fixture
def db(app: Any) -> Callable[[], Any]:
    from referral_api.extensions import db as database

    factory = database.session_factory_for(app)

    @contextmanager
    def open_session() -> Iterator[Any]:
        with factory() as s:
            yield s
            s.rollback()

    return open_session


def add_service(db: Callable[[], Any], org_id: uuid.UUID, **fields: Any) -> uuid.UUID:
    values: dict[str, Any] = {
        "name": f"Service {uuid.uuid4().hex[:6]}",
        "description": "Free legal advice and representation.",
        "service_type": ServiceType.LEGAL_ASSISTANCE,
        "area_served": "Kyiv",
        "professional_contact": "intake@legal-aid.example",
        "accepting_referrals": True,
        "status": ServiceStatus.ACTIVE,
    }
    languages = fields.pop("languages", ["uk"])
    values.update(fields)
    with db() as s:
        service = Service(id=uuid.uuid4(), org_id=org_id, **values)
        service.languages = languages
        s.add(service)
        s.commit()
        return service.id


@pytest.fixture
def headers(factory: Factory) -> dict[str, str]:
    return factory.headers(factory.user(Role.CASEWORKER))


def get_json(client: Any, path: str, headers: dict[str, str]) -> Any:
    response = client.get(API + path, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# ---- the list ------------------------------------------------------------------------------


def test_service_list_pages_in_the_hsds_shape(client, factory, db, headers, hsds):
    legal = factory.org(OrgType.LEGAL_AID)
    clinic = factory.org(OrgType.HEALTH)
    names = ["Alpha advice", "Bravo clinic", "Charlie counselling"]
    add_service(db, legal, name=names[0])
    add_service(db, clinic, name=names[1], service_type=ServiceType.HEALTH)
    add_service(db, legal, name=names[2], status=ServiceStatus.INACTIVE)
    validator = page_validator(hsds["service_list"])

    first = get_json(client, "/hsds/services?per_page=2", headers)
    assert_valid(validator, first)
    assert {k: v for k, v in first.items() if k != "contents"} == {
        "total_items": 3,
        "total_pages": 2,
        "page_number": 1,
        "size": 2,
        "first_page": True,
        "last_page": False,
        "empty": False,
    }
    second = get_json(client, "/hsds/services?per_page=2&page=2", headers)
    assert_valid(validator, second)
    assert (second["page_number"], second["size"]) == (2, 1)
    assert (second["first_page"], second["last_page"], second["empty"]) == (False, True, False)
    # Inactive services are published too, with their status, so consumers see closures.
    listed = first["contents"] + second["contents"]
    assert [item["name"] for item in listed] == names
    assert [item["status"] for item in listed] == ["active", "active", "inactive"]
    assert all("organization" not in item for item in listed)  # one-to-one fields only

    beyond = get_json(client, "/hsds/services?per_page=2&page=3", headers)
    assert_valid(validator, beyond)
    assert beyond["contents"] == [] and beyond["empty"] is True and beyond["last_page"] is True

    only_clinic = get_json(client, f"/hsds/services?organization_id={clinic}", headers)
    assert_valid(validator, only_clinic)
    assert [item["name"] for item in only_clinic["contents"]] == [names[1]]
    assert only_clinic["contents"][0]["organization_id"] == str(clinic)

    recent = get_json(client, "/hsds/services?modified_after=2999-01-01T00:00:00%2B00:00", headers)
    assert_valid(validator, recent)
    assert recent["total_items"] == 0 and recent["empty"] is True


def test_an_empty_directory_is_a_valid_empty_page(client, headers, hsds):
    body = get_json(client, "/hsds/services", headers)
    assert_valid(page_validator(hsds["service_list"]), body)
    assert body["total_items"] == 0 and body["empty"] is True and body["contents"] == []


def test_list_parameters_are_validated(client, headers):
    # A page past 10**6 would put the offset beyond the database's 64-bit integers.
    for query in (
        "page=0",
        "per_page=0",
        "per_page=101",
        "organization_id=x",
        "page=a",
        "page=1000001",
        f"page={10**25}",
    ):
        assert_problem(client.get(f"{API}/hsds/services?{query}", headers=headers), 422)
        if not query.startswith("organization_id"):
            response = client.get(f"{API}/hsds/organizations?{query}", headers=headers)
            assert_problem(response, 422)
    for listing in ("services", "organizations"):
        last = client.get(f"{API}/hsds/{listing}?page=1000000", headers=headers)
        assert last.status_code == 200 and last.get_json()["contents"] == []


# ---- one service, fully nested ------------------------------------------------------------


def test_full_service_validates_and_maps_every_field(client, factory, db, headers, hsds):
    org = factory.org(OrgType.LEGAL_AID, name="Legal Aid Collective")
    service_id = add_service(
        db,
        org,
        name="Free legal advice",
        languages=["uk", "pt-BR", "xyz"],
        area_served="Kyiv oblast; Lviv; kyiv oblast",
        eligibility_notes="Presumed victims of trafficking and GBV.",
        accepting_referrals=False,
    )
    body = get_json(client, f"/hsds/services/{service_id}", headers)
    assert_valid(hsds["service"], body)

    assert body["id"] == str(service_id)
    assert body["organization_id"] == str(org)
    assert body["status"] == "active"
    assert body["eligibility_description"] == "Presumed victims of trafficking and GBV."
    assert body["alert"]  # not accepting referrals
    assert body["email"] == "intake@legal-aid.example"
    # date-time is not among the formats jsonschema checks without extra packages.
    assert datetime.fromisoformat(body["last_modified"]).utcoffset() is not None
    assert body["organization"]["id"] == str(org)
    assert body["organization"]["name"] == "Legal Aid Collective"
    assert body["organization"]["description"]
    languages = [(lang["code"], lang.get("name"), lang.get("note")) for lang in body["languages"]]
    assert languages == [
        ("uk", "Ukrainian", None),
        ("pt", "Portuguese", "Language tag (BCP 47): pt-BR"),
        ("xyz", None, None),
    ]
    assert [area["name"] for area in body["service_areas"]] == ["Kyiv oblast", "Lviv"]
    assert [contact["email"] for contact in body["contacts"]] == ["intake@legal-aid.example"]
    assert body["phones"] == []
    (attribute,) = body["attributes"]
    assert attribute["link_id"] == str(service_id)
    assert attribute["taxonomy_term"]["code"] == "legal_assistance"
    assert attribute["taxonomy_term_id"] == attribute["taxonomy_term"]["id"]

    # Stable, distinct child ids, each tied to its service.
    children = [
        item["id"]
        for key in ("languages", "service_areas", "contacts", "attributes")
        for item in body[key]
    ]
    assert len(children) == len(set(children))
    assert all(
        item["service_id"] == str(service_id)
        for key in ("languages", "service_areas", "contacts")
        for item in body[key]
    )
    assert get_json(client, f"/hsds/services/{service_id}", headers) == body
    assert body["languages"][0]["id"] == str(uuid.uuid5(service_id, "language:uk"))


def test_a_phone_contact_is_published_as_a_phone(client, factory, db, headers, hsds):
    org = factory.org(OrgType.SHELTER)
    service_id = add_service(
        db, org, service_type=ServiceType.SHELTER, professional_contact="+442079460101"
    )
    body = get_json(client, f"/hsds/services/{service_id}", headers)
    assert_valid(hsds["service"], body)
    assert "email" not in body and body["contacts"] == []
    assert [(p["number"], p["type"]) for p in body["phones"]] == [("+442079460101", "voice")]
    assert body["attributes"][0]["taxonomy_term"]["code"] == "shelter"


def test_status_is_inactive_for_inactive_services_and_organisations(
    client, factory, db, headers, hsds
):
    org = factory.org(OrgType.NGO)
    closed = add_service(db, org, status=ServiceStatus.INACTIVE)
    gone_org = factory.org(OrgType.NGO)
    orphaned = add_service(db, gone_org)
    with db() as s:
        s.get(Organisation, gone_org).active = False
        s.commit()
    for service_id in (closed, orphaned):
        body = get_json(client, f"/hsds/services/{service_id}", headers)
        assert_valid(hsds["service"], body)
        assert body["status"] == "inactive"


# ---- organisations ------------------------------------------------------------------------


def test_organization_list_holds_only_organisations_with_services(
    client, factory, db, headers, hsds
):
    with_services = [factory.org(OrgType.LEGAL_AID), factory.org(OrgType.HEALTH)]
    for org in with_services:
        add_service(db, org)
    factory.org(OrgType.SHELTER)  # publishes nothing
    validator = page_validator(hsds["organization_list"])

    body = get_json(client, "/hsds/organizations?per_page=1", headers)
    assert_valid(validator, body)
    assert (body["total_items"], body["total_pages"], body["size"]) == (2, 2, 1)
    second = get_json(client, "/hsds/organizations?per_page=1&page=2", headers)
    assert_valid(validator, second)
    listed = {item["id"] for item in body["contents"] + second["contents"]}
    # The caseworker's own organisation has no services: it is not listed either.
    assert listed == {str(org) for org in with_services}


# ---- the demo directory, and the validator itself ------------------------------------------


def test_every_demo_service_validates(runner, client, factory, hsds):
    # Seed first: seed-demo does nothing once any organisation exists.
    assert runner.invoke(args=["seed-demo"]).exit_code == 0
    headers = factory.headers(factory.user(Role.CASEWORKER))
    body = get_json(client, "/hsds/services?per_page=100", headers)
    assert_valid(page_validator(hsds["service_list"]), body)
    assert body["total_items"] >= 8
    for item in body["contents"]:
        assert_valid(hsds["service"], get_json(client, f"/hsds/services/{item['id']}", headers))
    orgs = get_json(client, "/hsds/organizations?per_page=100", headers)
    assert_valid(page_validator(hsds["organization_list"]), orgs)


def test_the_validation_can_fail(client, factory, db, headers, hsds):
    """A test that cannot fail is a defect: broken documents are caught."""
    service_id = add_service(db, factory.org(OrgType.NGO))
    good = get_json(client, f"/hsds/services/{service_id}", headers)
    broken = [
        {**good, "status": "open"},
        {**good, "id": "not-a-uuid"},
        {**good, "email": "no-at-sign"},
        {**good, "languages": [{"code": "uk"}]},  # a child without its id
        {k: v for k, v in good.items() if k != "name"},
        {**good, "organization": {"id": str(uuid.uuid4()), "name": "No description"}},
    ]
    for document in broken:
        assert errors_of(hsds["service"], document) != []
    assert undeclared_keys(hsds["service"].schema, {**good, "version": 1}) == ["/version"]
    assert nulls({**good, "alert": None}) == ["/alert"]
    page = page_validator(hsds["service_list"])
    assert errors_of(page, {"contents": []}) != []
