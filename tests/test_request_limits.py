"""What one request may cost: inputs bounded so that no caller, signed in or not, makes a
request cost far more than its body (a reviewer's probes; each failed before)."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import consent_if_match
from referral_support import API, consent_body, count, ok, provision

from referral_api.access.roles import OrgType, Role
from referral_api.consent import service as consent_service
from referral_api.consent.models import ConsentEvent, ConsentRecord


def _case(client: Any, headers: dict[str, str], **categories: Any) -> Any:
    return client.post(f"{API}/cases", json={"case_type": "thb", **categories}, headers=headers)


def _consents_url(client: Any, factory: Any) -> tuple[dict[str, str], str, dict[str, Any]]:
    """A caseworker's headers, the consents URL of a new case of theirs, and a consent's body
    for it."""
    legal = factory.org(OrgType.LEGAL_AID)
    headers = factory.headers(factory.user(Role.CASEWORKER, factory.org(OrgType.NGO)))
    case_id = ok(_case(client, headers), 201)["id"]
    body = consent_body(provision("legal_assistance", ["identity"], org_id=legal))
    return headers, f"{API}/cases/{case_id}/consents", body


def test_the_incident_code_lists_hold_each_code_at_most_once_in_length(
    client: Any, auth_headers: Any
) -> None:
    """Like aliases, languages and documents: a caseworker stored 100,000 codes in one case
    (encrypted, decrypted again on every read of the incident, packet and export)."""
    h = auth_headers(Role.CASEWORKER)
    codes = ["labour"] * 100_000
    response = _case(client, h, incident={"exploitation_types": codes})
    assert response.status_code == 422, (response.status_code, "100,000 codes stored")


def test_the_means_of_control_list_is_bounded(client: Any, auth_headers: Any) -> None:
    h = auth_headers(Role.CASEWORKER)
    codes = ["debt_bondage"] * 60_000
    response = _case(client, h, incident={"means_of_control": codes})
    assert response.status_code == 422, (response.status_code, "60,000 codes stored")


def test_the_contact_email_is_at_most_254_characters(client: Any, auth_headers: Any) -> None:
    """As every other e-mail field (RFC 5321); it took 900,000."""
    h = auth_headers(Role.CASEWORKER)
    email = "a" * 900_000 + "@example.org"
    response = _case(client, h, contact={"email": email})
    assert response.status_code == 422, (response.status_code, "900 kB e-mail stored")


def test_a_deep_body_with_an_unstorable_text_costs_memory_in_proportion_to_it(client: Any) -> None:
    """Anonymous: a login body nested ~900 deep with a wide list at the bottom and one
    `\\u0000` escape. The walk looking for unstorable text built a dotted path
    ("z.0.0.0....0.N", ~1,800 characters) for every element: ~1 GB for a 1 MB body. Paths
    are joined only for a problem found now."""
    depth, width = 900, 60_000
    body = (
        '{"email":"a@example.org","password":"x","z":'
        + "[" * depth
        + "0," * width
        + '"\\u0000"'
        + "]" * depth
        + "}"
    ).encode()
    tracemalloc.start()
    try:
        response = client.post(
            f"{API}/auth/login", data=body, headers={"Content-Type": "application/json"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code in (400, 422), response.status_code
    # A body is parsed into objects a few tens of times its size at most; here ~1,000x
    # (a 1 MB body, the largest accepted, costs ~1 GB in one anonymous request).
    ratio = peak / len(body)
    assert ratio < 100, (
        f"peak {peak / 1e6:.0f} MB for a {len(body) / 1e3:.0f} kB body ({ratio:.0f}x)"
    )


def test_a_body_is_refused_for_its_first_20_unstorable_texts(client: Any) -> None:
    body = {"email": "a@example.org", "password": "x", "z": ["\u0000"] * 50}
    response = client.post(f"{API}/auth/login", json=body)
    assert response.status_code == 422, response.status_code
    errors = response.get_json()["errors"]["json"]
    assert len(errors["z"]) == 20


def test_a_case_holds_a_bounded_number_of_consents(
    app: Any, client: Any, factory: Any, monkeypatch: Any
) -> None:
    """Every consent decision about a case reads all its consents, and the list shows them
    at once: a caseworker could add thousands (101 came back in one response). Past the
    most a case holds, recording another is a 409 that writes nothing."""
    assert consent_service.MAX_CONSENTS_PER_CASE == 200
    monkeypatch.setattr(consent_service, "MAX_CONSENTS_PER_CASE", 3)
    headers, url, body = _consents_url(client, factory)
    for _ in range(3):
        ok(client.post(url, json=body, headers=headers), 201)
    refused = client.post(url, json=body, headers=headers)
    assert refused.status_code == 409, refused.get_json()
    assert "the most a case may hold" in refused.get_json()["detail"]
    assert count(app, ConsentRecord) == 3


def test_a_consent_is_renewed_a_bounded_number_of_times(
    app: Any, client: Any, factory: Any, monkeypatch: Any
) -> None:
    """Each renewal is an event every decision about the case replays."""
    assert consent_service.MAX_RENEWALS_PER_CONSENT == 100
    monkeypatch.setattr(consent_service, "MAX_RENEWALS_PER_CONSENT", 2)
    headers, consents_url, body = _consents_url(client, factory)
    consent = ok(client.post(consents_url, json=body, headers=headers), 201)
    url = f"{API}/consents/{consent['id']}/renew"
    until = {"valid_until": (datetime.now(UTC) + timedelta(days=30)).isoformat()}
    for _ in range(2):
        ok(client.post(url, json=until, headers=consent_if_match(client, consent["id"], headers)))
    events = count(app, ConsentEvent)
    refused = client.post(url, json=until, headers=consent_if_match(client, consent["id"], headers))
    assert refused.status_code == 409, refused.get_json()
    assert "record a new consent" in refused.get_json()["detail"]
    assert count(app, ConsentEvent) == events
