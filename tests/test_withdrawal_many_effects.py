"""A withdrawal that cancels many disclosures still succeeds and lists every effect."""

import json

import pytest
from sqlalchemy import select

from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.consent import hooks

CONSENT = {
    "grantor": "person",
    "collection_method": "written",
    "language": "en",
    "notice_version": "2026-01",
    "jurisdiction": "UA",
    "legal_basis": {"article6": "a"},
    "provisions": [
        {
            "purpose": "legal_assistance",
            "recipient_org_type": "legal_aid",
            "categories": ["identity"],
        }
    ],
}


@pytest.fixture
def many_effects():
    def handler(session, actor, consent, at):
        return [
            {"type": "referral", "id": f"{n:08d}-effect", "to": "cancelled"} for n in range(300)
        ]

    hooks.on_withdrawal(handler)
    yield
    hooks._WITHDRAWAL_HANDLERS.remove(handler)


def test_withdrawal_with_hundreds_of_effects_is_recorded_in_full(
    client, factory, session, many_effects
):
    worker = factory.user(Role.CASEWORKER, factory.org(OrgType.NGO))
    headers = factory.headers(worker)
    case = client.post("/api/v1/cases", json={"case_type": "gbv"}, headers=headers).get_json()
    consent = client.post(f"/api/v1/cases/{case['id']}/consents", json=CONSENT, headers=headers)
    assert consent.status_code == 201, consent.get_json()

    response = client.post(
        f"/api/v1/consents/{consent.get_json()['id']}/withdraw", json={}, headers=headers
    )

    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["events"][-1]["effects"]) >= 300
    row = session.scalars(select(AuditEvent).where(AuditEvent.action == "consent:withdraw")).one()
    session.rollback()
    assert len(json.loads(row.details)["effects"]) >= 300
