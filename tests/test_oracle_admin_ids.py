"""Admin (orgs, users, clients) and directory ids of another organisation answer like
made-up ids; HSDS/directory never carry a street address field."""

from __future__ import annotations

import json
from typing import Any

from oracle_support import diff, fresh, indistinguishable, send

from referral_api.access.roles import OrgType, Role

API = "/api/v1"


def test_admin_ids_of_another_org_answer_like_made_up_ids(client: Any, factory: Any) -> None:
    mine, theirs = factory.org(OrgType.NGO), factory.org(OrgType.SHELTER)
    admin = factory.headers(factory.user(Role.ORG_ADMIN, mine))
    worker = factory.headers(factory.user(Role.CASEWORKER, mine))
    dpo = factory.headers(factory.user(Role.DPO, mine))
    their_user = factory.user(Role.CASEWORKER, theirs)
    inactive = factory.user(Role.CASEWORKER, theirs, active=False)
    their_client_id, _ = factory.client_credentials(Role.CASEWORKER, theirs)
    from referral_api.auth.models import ApiClient
    from referral_api.extensions import db

    with db.session_factory_for(client.application)() as s:
        client_pk = str(s.query(ApiClient).filter_by(client_id=their_client_id).one().id)

    def requests(org: str, user: str, cpk: str) -> list[tuple[str, str, Any, dict[str, str]]]:
        return [
            ("GET", f"/orgs/{org}", None, {}),
            ("PATCH", f"/orgs/{org}", {"name": "x-renamed"}, {}),
            ("GET", f"/orgs/{org}/users", None, {}),
            (
                "POST",
                f"/orgs/{org}/users",
                {
                    "email": f"p{fresh()[:6]}@example.org",
                    "display_name": "P",
                    "role": "caseworker",
                    "password": "x" * 14,
                },
                {},
            ),
            ("GET", f"/orgs/{org}/clients", None, {}),
            ("POST", f"/orgs/{org}/clients", {"name": "c", "role": "caseworker"}, {}),
            (
                "POST",
                f"/orgs/{org}/services",
                {
                    "name": "s",
                    "description": "d",
                    "service_type": "shelter",
                    "languages": ["uk"],
                    "area_served": "Lviv",
                    "professional_contact": "a@example.org",
                },
                {},
            ),
            ("GET", f"/users/{user}", None, {}),
            ("PATCH", f"/users/{user}", {"display_name": "y"}, {}),
            ("PATCH", f"/users/{user}", {"display_name": "y"}, {"If-Match": '"x"'}),
            ("GET", f"/clients/{cpk}", None, {}),
            ("PATCH", f"/clients/{cpk}", {"name": "z"}, {}),
            ("POST", f"/clients/{cpk}/secret", None, {}),
        ]

    failures = []
    for who, headers in (("admin", admin), ("worker", worker), ("dpo", dpo)):
        for label, user in (("user", str(their_user.id)), ("inactive", str(inactive.id))):
            for real_req, fake_req in zip(
                requests(str(theirs), user, client_pk),
                requests(fresh(), fresh(), fresh()),
                strict=True,
            ):
                real = send(
                    client, real_req[0], real_req[1], real_req[2], {**headers, **real_req[3]}
                )
                fake = send(
                    client, fake_req[0], fake_req[1], fake_req[2], {**headers, **fake_req[3]}
                )
                if not indistinguishable(real, fake):
                    failures.append(f"{who} {label} {real_req[0]} {real_req[1]}{diff(real, fake)}")
    assert not failures, "\n".join(failures)


def test_directory_and_hsds_carry_no_address_fields(client: Any, factory: Any) -> None:
    org = factory.org(OrgType.SHELTER)
    admin = factory.headers(factory.user(Role.ORG_ADMIN, org))
    reader = factory.headers(factory.user(Role.CASEWORKER, factory.org(OrgType.NGO)))
    created = client.post(
        f"{API}/orgs/{org}/services",
        json={
            "name": "Safe house",
            "description": "Beds",
            "service_type": "shelter",
            "languages": ["uk"],
            "area_served": "Lviv",
            "professional_contact": "+380501234567",
        },
        headers=admin,
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    sid = created.get_json()["id"]
    # A street address is refused as the contact.
    refused = client.post(
        f"{API}/orgs/{org}/services",
        json={
            "name": "Safe house 2",
            "description": "Beds",
            "service_type": "shelter",
            "languages": ["uk"],
            "area_served": "Lviv",
            "professional_contact": "vul. Tykha 7, Lviv",
        },
        headers=admin,
    )
    assert refused.status_code == 422
    docs = [
        client.get(f"{API}/services/{sid}", headers=reader).get_json(),
        client.get(f"{API}/hsds/services/{sid}", headers=reader).get_json(),
        client.get(f"{API}/hsds/services", headers=reader).get_json(),
        client.get(f"{API}/hsds/organizations", headers=reader).get_json(),
    ]
    text = json.dumps(docs).lower()
    for key in (
        '"address',
        '"location',
        '"physical_address',
        '"postal_address',
        '"latitude',
        '"street',
    ):
        assert key not in text, key
