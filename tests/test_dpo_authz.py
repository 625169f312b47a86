"""Who may read the DPO reports (issue 6): the data-protection officer only — every other
role 403, no token 401 — and each officer within their own organisation's records (404 for a
case or override outside it), the platform's officer across organisations."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import assert_problem
from dpo_support import DpoWorld
from referral_support import API
from sqlalchemy import select

from referral_api.access.roles import Role
from referral_api.audit.models import AuditEvent
from referral_api.extensions import db

REPORTS = (
    "consent-summary",
    "consents-expiring",
    "processing-without-basis",
    "overrides",
    "disclosures",
    "access-log",
    "erasures",
    "quality",
    "retention-due",
)


@pytest.fixture
def world(app: Any, client: Any, factory: Any) -> DpoWorld:
    return DpoWorld(app, client, factory)


def _reads(world: DpoWorld) -> list[tuple[str, dict[str, str]]]:
    case_id = world.case["case1"]
    return [
        *(
            (f"{API}/dpo/reports/{name}", {"case_id": case_id} if name == "access-log" else {})
            for name in REPORTS
        ),
        (f"{API}/dpo/ropa", {}),
    ]


def test_only_the_dpo_role_reads_reports(world: DpoWorld, factory: Any) -> None:
    org_a, org_p, platform = world.org["A"], world.org["P"], world.org["PLAT"]
    others = {
        Role.CASEWORKER: org_a,
        Role.SUPERVISOR: org_a,
        Role.ORG_ADMIN: org_a,
        Role.POLICE_OFFICER: org_p,
        Role.PLATFORM_ADMIN: platform,
    }
    headers = {role: factory.headers(factory.user(role, org)) for role, org in others.items()}
    for url, params in _reads(world):
        for fmt in ("json", "csv"):
            query = {**params, "format": fmt}
            assert_problem(world.client.get(url, query_string=query), 401)
            for role, role_headers in headers.items():
                response = world.client.get(url, query_string=query, headers=role_headers)
                assert_problem(response, 403)
                assert "CANARY" not in response.get_data(as_text=True), (url, role)
            for dpo in ("a_dpo", "plat_dpo"):
                response = world.client.get(url, query_string=query, headers=world.h[dpo])
                assert response.status_code == 200, (url, dpo, response.get_data(True))
    review = f"{API}/dpo/overrides/{world.referral['R5']}/review"
    assert_problem(world.client.post(review), 401)
    for role_headers in headers.values():
        assert_problem(world.client.post(review, headers=role_headers), 403)
    assert world.client.post(review, headers=world.h["a_dpo"]).status_code == 200


def test_role_refusals_are_on_the_record(world: DpoWorld, factory: Any, app: Any) -> None:
    caseworker = factory.user(Role.CASEWORKER, world.org["A"])
    response = world.client.get(
        f"{API}/dpo/reports/disclosures", headers=factory.headers(caseworker)
    )
    assert_problem(response, 403)
    with db.session_factory_for(app)() as s:
        denied = [
            (e.action, e.decision)
            for e in s.scalars(select(AuditEvent).where(AuditEvent.actor_id == caseworker.id))
        ]
        s.rollback()
    assert ("dpo:reports", "deny") in denied


def test_a_case_outside_the_officers_organisation_is_not_found(world: DpoWorld) -> None:
    url = f"{API}/dpo/reports/access-log"
    own, other = world.case["case1"], world.case["caseB"]
    assert (
        world.client.get(url, query_string={"case_id": own}, headers=world.h["a_dpo"]).status_code
        == 200
    )
    for who, case_id in (("a_dpo", other), ("b_dpo", own), ("l_dpo", own), ("s_dpo", own)):
        body = assert_problem(
            world.client.get(url, query_string={"case_id": case_id}, headers=world.h[who]), 404
        )
        assert case_id not in str(body)
    # Nor is an unknown case told apart from another organisation's.
    missing = world.client.get(
        url, query_string={"case_id": str(uuid.uuid4())}, headers=world.h["a_dpo"]
    )
    assert (
        assert_problem(missing, 404)["detail"]
        == assert_problem(
            world.client.get(url, query_string={"case_id": other}, headers=world.h["a_dpo"]), 404
        )["detail"]
    )
    for case_id in (own, other):
        response = world.client.get(
            url, query_string={"case_id": case_id}, headers=world.h["plat_dpo"]
        )
        assert response.status_code == 200
    # The platform's officer narrowed to one organisation sees only its cases.
    narrowed = world.client.get(
        url,
        query_string={"case_id": own, "org_id": str(world.org["B"])},
        headers=world.h["plat_dpo"],
    )
    assert_problem(narrowed, 404)


def test_override_review_outside_the_sender_is_refused(world: DpoWorld) -> None:
    url = f"{API}/dpo/overrides/{world.referral['R5']}/review"
    assert_problem(world.client.post(url, headers=world.h["b_dpo"]), 404)
    assert_problem(world.client.post(url, headers=world.h["l_dpo"]), 404)
    # The receiving shelter's officer sees the override but does not review it.
    assert_problem(world.client.post(url, headers=world.h["s_dpo"]), 403)
    assert world.client.post(url, headers=world.h["plat_dpo"]).status_code == 200


def test_lists_hold_only_the_officers_organisations_records(world: DpoWorld) -> None:
    """Every row of every list names the officer's organisation as controller or party."""
    columns = {
        "consent-summary": ("org_id",),
        "consents-expiring": ("org_id",),
        "overrides": ("from_org_id", "to_org_id"),
        "disclosures": ("from_org_id", "to_org_id"),
        "quality": ("org_id",),
    }
    for who, org in (("a_dpo", "A"), ("b_dpo", "B"), ("l_dpo", "L"), ("s_dpo", "S")):
        mine = str(world.org[org])
        for name, keys in columns.items():
            params = {"within_days": 60} if name == "consents-expiring" else {}
            rows = world.client.get(
                f"{API}/dpo/reports/{name}", query_string=params, headers=world.h[who]
            ).get_json()
            for row in rows:
                assert mine in {row[key] for key in keys}, (who, name, row)
    everything = world.client.get(
        f"{API}/dpo/reports/disclosures", headers=world.h["plat_dpo"]
    ).get_json()
    assert {row["from_org_id"] for row in everything} == {str(world.org["A"]), str(world.org["B"])}
    a_only = world.client.get(
        f"{API}/dpo/reports/disclosures",
        query_string={"org_id": str(world.org["B"])},
        headers=world.h["plat_dpo"],
    ).get_json()
    assert [row["referral_id"] for row in a_only] == [world.referral["RB"]]
