"""Text that cannot be stored as sent: a 422 on every database, never a 500.

PostgreSQL's text cannot hold U+0000, so a plaintext column (an organisation's name, a
service's description, a client id looked up) answered with a database error; an unpaired
surrogate (JSON can escape one) is not Unicode text, and failed the encryption of a case or
the encoding of a plaintext column. The request parser refuses both in any JSON, form or
query value (and key) before a schema or a service sees them; HTTP Basic credentials holding
U+0000 are malformed; a body nested past what a parser recurses is malformed JSON.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from conftest import assert_problem
from referral_support import count

from referral_api.access.roles import OrgType, Role
from referral_api.auth.models import Organisation
from referral_api.directory.models import Service
from referral_api.jsonio import NUL_MESSAGE, SURROGATE_MESSAGE

API = "/api/v1"


@pytest.fixture
def people(factory: Any) -> dict[str, Any]:
    """Headers of an NGO's administrator and caseworker, and of a platform administrator."""
    org = factory.org(OrgType.NGO)
    return {
        "org": org,
        "admin": factory.headers(factory.user(Role.ORG_ADMIN, org)),
        "caseworker": factory.headers(factory.user(Role.CASEWORKER, org)),
        "platform": factory.headers(factory.user(Role.PLATFORM_ADMIN)),
    }


def test_nul_in_any_request_text_is_a_422_naming_the_field(
    app: Any, client: Any, people: dict[str, Any]
) -> None:
    org, admin = people["org"], people["admin"]
    platform, caseworker = people["platform"], people["caseworker"]
    organisations, services = count(app, Organisation), count(app, Service)
    service = {
        "name": "Legal advice",
        "description": "Free legal advice\x00",
        "service_type": "legal",
        "languages": ["uk", "e\x00n"],
        "area_served": "Kyiv",
        "professional_contact": "+380501234567",
    }
    refused = {
        ("json", ("name",)): client.post(
            f"{API}/orgs", json={"name": "Shelter\x00", "org_type": "ngo"}, headers=platform
        ),
        ("json", ("description", "languages.1")): client.post(
            f"{API}/orgs/{org}/services", json=service, headers=admin
        ),
        ("json", ("identity.given_name",)): client.post(
            f"{API}/cases",
            json={"case_type": "thb", "identity": {"given_name": "O\x00lena"}},
            headers=caseworker,
        ),
        ("query", ("area",)): client.get(
            f"{API}/services", query_string={"area": "Ky\x00iv"}, headers=caseworker
        ),
        ("json_or_form", ("client_id",)): client.post(
            f"{API}/auth/token",
            json={"grant_type": "client_credentials", "client_id": "a\x00", "client_secret": "b"},
        ),
        ("json_or_form", ("client_secret",)): client.post(
            f"{API}/auth/token",
            data={"grant_type": "client_credentials", "client_id": "a", "client_secret": "\x00"},
        ),
    }
    for (location, fields), response in refused.items():
        errors = assert_problem(response, 422)["errors"]
        assert list(errors) == [location], errors
        for field in fields:
            node = errors[location]
            for part in field.split("."):
                node = node[part]
            assert node == [NUL_MESSAGE], (field, errors)
    assert (count(app, Organisation), count(app, Service)) == (organisations, services)

    # Escaped, the six characters \u0000 are ordinary text.
    response = client.post(
        f"{API}/cases",
        json={"case_type": "thb", "identity": {"given_name": "O\\u0000lena"}},
        headers=caseworker,
    )
    assert response.status_code == 201
    assert response.get_json()["identity"]["given_name"] == "O\\u0000lena"


def test_nul_in_basic_client_credentials_is_malformed(client: Any) -> None:
    credentials = base64.b64encode(b"client\x00:secret").decode()
    response = client.post(
        f"{API}/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {credentials}"},
    )
    problem = assert_problem(response, 401)
    assert problem["detail"] == "Malformed Basic credentials."


def test_an_unpaired_surrogate_is_a_422_and_a_pair_is_text(
    app: Any, client: Any, people: dict[str, Any]
) -> None:
    platform, caseworker = people["platform"], people["caseworker"]
    json_headers = {"Content-Type": "application/json"}
    organisations = count(app, Organisation)
    refused = {
        ("name",): client.post(
            f"{API}/orgs",
            data='{"name": "Shelter \\ud800", "org_type": "ngo"}',
            headers={**platform, **json_headers},
        ),
        ("identity", "given_name"): client.post(
            f"{API}/cases",
            data='{"case_type": "thb", "identity": {"given_name": "O\\udc00lena"}}',
            headers={**caseworker, **json_headers},
        ),
    }
    for path, response in refused.items():
        node = assert_problem(response, 422)["errors"]["json"]
        for part in path:
            node = node[part]
        assert node == [SURROGATE_MESSAGE], path
    assert count(app, Organisation) == organisations
    paired = client.post(
        f"{API}/cases",
        data='{"case_type": "thb", "identity": {"given_name": "Olena \\ud83c\\udf3b"}}',
        headers={**caseworker, **json_headers},
    )
    assert paired.status_code == 201
    assert paired.get_json()["identity"]["given_name"] == "Olena \U0001f33b"


def test_a_body_nested_past_the_parsers_is_malformed_json(client: Any, factory: Any) -> None:
    caseworker = factory.headers(factory.user(Role.CASEWORKER))
    for body in ("[" * 100_000 + "]" * 100_000, '{"identity": ' + "[" * 5000 + "]" * 5000 + "}"):
        response = client.post(
            f"{API}/cases",
            data=body,
            headers={**caseworker, "Content-Type": "application/json"},
        )
        problem = assert_problem(response, 400)
        # As any malformed JSON body (test_errors): a 400 problem, nothing echoed.
        assert "errors" not in problem, problem
