"""The police ceiling (DESIGN.md §5) on every route a police API client reaches as the
receiver of a referral: the referral, its packet, lists, notifications, messages, the
accept transition, opening a case from the packet (and its idempotent replay), and that
case's read, list, search, notes, access log and consents. No health or psychosocial value
reaches it, in a body or a header. (A reviewer's probe that found nothing: kept as the
regression test for the whole route surface.)"""

from __future__ import annotations

from typing import Any

from referral_support import (
    API,
    CANARY,
    World,
    ok,
    walk,
)

from referral_api.access.roles import OrgType, Role

FORBIDDEN = [CANARY["health"], CANARY["psychosocial"]]


def _police_client(factory: Any, client: Any, org_id: Any) -> dict[str, str]:
    cid, secret = factory.client_credentials(Role.POLICE_OFFICER, org_id)
    body = {"grant_type": "client_credentials", "client_id": cid, "client_secret": secret}
    token = ok(client.post(f"{API}/auth/token", json=body))["access_token"]
    return {"Authorization": f"Bearer {token}", "X-Acting-Officer": "badge-7"}


def _clean(response: Any) -> None:
    raw = response.get_data(as_text=True)
    for token in FORBIDDEN:
        assert token not in raw, (token, response.status_code, raw[:2000])
    for value in response.headers.values():
        for token in FORBIDDEN:
            assert token not in value


def test_police_receiver_every_route(app: Any, client: Any, factory: Any) -> None:
    w = World(
        factory,
        client,
        receiver_type=OrgType.POLICE,
        shared=("identity", "contact", "incident"),
        purpose="law_enforcement_report",
    )
    police = _police_client(factory, client, w.receiver_org)
    ref = w.refer()
    rid = ref["id"]
    responses = [
        client.get(f"{API}/referrals/{rid}", headers=police),
        client.get(f"{API}/referrals/{rid}/packet", headers=police),
        client.get(f"{API}/referrals?box=incoming", headers=police),
        client.get(f"{API}/referrals", headers=police),
        client.get(f"{API}/notifications?unread=false", headers=police),
        client.get(f"{API}/referrals/{rid}/messages", headers=police),
    ]
    for r in responses:
        _clean(r)
    walk(client, police, rid, "accepted")
    opened = client.post(
        f"{API}/referrals/{rid}/case", json={}, headers={**police, "Idempotency-Key": "open-case-1"}
    )
    _clean(opened)
    again = client.post(
        f"{API}/referrals/{rid}/case", json={}, headers={**police, "Idempotency-Key": "open-case-1"}
    )
    _clean(again)
    got = ok(client.get(f"{API}/referrals/{rid}", headers=police))
    case_id = got["receiver_case_id"]
    assert case_id
    for r in (
        client.get(f"{API}/cases/{case_id}", headers=police),
        client.get(f"{API}/cases", headers=police),
        client.get(f"{API}/cases?name=Kovalenko", headers=police),
        client.get(f"{API}/cases/{case_id}/notes", headers=police),
        client.get(f"{API}/cases/{case_id}/access-log", headers=police),
        client.get(f"{API}/cases/{case_id}/consents", headers=police),
    ):
        _clean(r)
        assert r.status_code == 200, r.get_data(as_text=True)
    body = client.get(f"{API}/cases/{case_id}", headers=police).get_json()
    # The police's own case shows every category (docs/roles.md), but nothing of the
    # sender's health or psychosocial data was copied into it.
    assert not any((body.get("health") or {}).values()), body
    assert not any((body.get("psychosocial") or {}).values()), body
