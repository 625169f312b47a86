"""The national referral mechanism end to end, through HTTP only (issue 5, DESIGN.md §7-§9).

A police system hands a presumed victim over to an NGO in one idempotent intake call; the
NGO works the referral, opens its own case, records the person's consent and refers onward
to legal aid, which sees exactly the shared categories; the person withdraws that consent and
legal aid's access ends at once while the NGO keeps its own case; the police system follows
its referral by polling; the audit chain verifies and names every disclosure.

Only the last assertions look at the database: the audit trail and the disclosure register are
what a data-protection officer reads there.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from referral_support import (
    API,
    CANARY,
    MESSAGE_CANARY,
    World,
    assert_no_leak,
    canary_case,
    category_keys,
    consent_body,
    count,
    keys_of,
    move,
    ok,
    provision,
    record_consent,
    refer,
    rows,
)

from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.referrals.models import Disclosure

OFFICER = "badge-4711"
POLICE_SHARES = ["contact", "identity", "legal", "needs"]
LEGAL_SHARES = ["identity", "legal"]
PACKET_KEYS = {"referral_id", "purpose", "categories", "valid_until", "data"}


def _police_client(factory: Any, client: Any, org_id: Any) -> dict[str, str]:
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org_id)
    token = ok(
        client.post(
            f"{API}/auth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    )["access_token"]
    return {"Authorization": f"Bearer {token}", "X-Acting-Officer": OFFICER}


def test_police_to_ngo_to_legal_aid_and_withdrawal(app: Any, client: Any, factory: Any) -> None:
    police_org = factory.org(OrgType.POLICE)
    ngo_org = factory.org(OrgType.NGO)
    legal_org = factory.org(OrgType.LEGAL_AID)
    platform_org = factory.org(OrgType.PLATFORM)
    police = _police_client(factory, client, police_org)
    ngo = factory.headers(factory.user(Role.CASEWORKER, ngo_org))
    legal = factory.headers(factory.user(Role.CASEWORKER, legal_org))
    dpo = factory.headers(factory.user(Role.DPO, platform_org))

    # 1. Police intake: case, consent and referral in one idempotent call.
    intake = {
        "case": canary_case(),
        "consent": consent_body(provision("social_assistance", POLICE_SHARES, org_id=ngo_org)),
        "referral": {
            "to_org_id": str(ngo_org),
            "purpose": "social_assistance",
            "categories": POLICE_SHARES,
            "urgency": "urgent",
            "message": f"Needs a safe place tonight {MESSAGE_CANARY}",
        },
    }
    first = client.post(
        f"{API}/intake", json=intake, headers={**police, "Idempotency-Key": "intake-e2e-0001"}
    )
    created = ok(first, 201)
    assert created["referral_status"] == "requested"
    retry = client.post(
        f"{API}/intake", json=intake, headers={**police, "Idempotency-Key": "intake-e2e-0001"}
    )
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_data() == first.get_data()
    police_case, police_ref = created["case_id"], created["referral_id"]
    police_consent = created["consent_id"]
    polled_from = datetime.now(UTC)

    # 2. The NGO sees it in its inbox (metadata and message, never the police case id).
    inbox = ok(client.get(f"{API}/referrals", query_string={"box": "incoming"}, headers=ngo))
    assert [r["id"] for r in inbox] == [police_ref]
    assert inbox[0]["status"] == "requested" and MESSAGE_CANARY in inbox[0]["message"]
    assert "case_id" not in inbox[0] and police_case not in json_text(inbox)

    for step in ("received", "accepted", "in_progress"):
        assert ok(move(client, ngo, police_ref, step))["status"] == step

    ngo_packet = ok(client.get(f"{API}/referrals/{police_ref}/packet", headers=ngo))
    assert sorted(ngo_packet["data"]) == POLICE_SHARES
    assert ngo_packet["data"]["identity"]["given_name"] == f"Olena {CANARY['identity']}"

    # 3. The NGO opens its own case from the packet: shared categories only.
    opened = ok(client.post(f"{API}/referrals/{police_ref}/case", headers=ngo), 201)
    ngo_case = opened["receiver_case_id"]
    assert ngo_case and ngo_case != police_case
    ngo_view = ok(client.get(f"{API}/cases/{ngo_case}", headers=ngo))
    assert ngo_view["legal"]["lawyer"] == f"Adv. Petrenko {CANARY['legal']}"
    assert "health" not in ngo_view or not any(ngo_view["health"].values())

    # 4. The person consents, on the NGO's case, to legal aid receiving identity and legal.
    ngo_consent = record_consent(
        client, ngo, ngo_case, provision("legal_assistance", LEGAL_SHARES, org_id=legal_org)
    )
    provision_id = ngo_consent["provisions"][0]["id"]
    onward = ok(
        refer(
            client,
            ngo,
            ngo_case,
            legal_org,
            LEGAL_SHARES,
            message="Court date soon",
            urgency="normal",
        ),
        201,
    )
    legal_ref = onward["id"]
    assert onward["status"] == "requested"

    # 5. Legal aid sees exactly identity and legal, and nothing else at any depth.
    response = client.get(f"{API}/referrals/{legal_ref}/packet", headers=legal)
    legal_packet = ok(response)
    assert legal_packet["categories"] == LEGAL_SHARES
    assert sorted(legal_packet["data"]) == LEGAL_SHARES
    assert keys_of(legal_packet) <= PACKET_KEYS | category_keys(LEGAL_SHARES)
    assert legal_packet["data"]["legal"]["status"] == f"Witness {CANARY['legal']}"
    assert_no_leak(response, LEGAL_SHARES, police_case, police_ref, MESSAGE_CANARY)
    # Nothing of the police referral reaches legal aid.
    assert client.get(f"{API}/referrals/{police_ref}", headers=legal).status_code == 404
    legal_list = ok(client.get(f"{API}/referrals", headers=legal))
    assert [r["id"] for r in legal_list] == [legal_ref]

    # 6. The person withdraws the NGO's consent: legal aid's access ends in that moment.
    withdrawn = ok(
        client.post(f"{API}/consents/{ngo_consent['id']}/withdraw", json={}, headers=ngo)
    )
    assert withdrawn["state"] == "withdrawn"
    effects = withdrawn["events"][-1]["effects"]
    assert {"type": "referral", "id": legal_ref, "to": "cancelled"}.items() <= effects[0].items()
    assert [e["id"] for e in effects] == [legal_ref]
    assert client.get(f"{API}/referrals/{legal_ref}/packet", headers=legal).status_code == 404
    cancelled = ok(client.get(f"{API}/referrals/{legal_ref}", headers=legal))
    assert (cancelled["status"], cancelled["status_reason"]) == ("cancelled", "consent_withdrawn")
    assert "message" not in cancelled

    # The NGO keeps its own case and its police referral (another consent) stays live.
    assert ok(client.get(f"{API}/cases/{ngo_case}", headers=ngo))["identity"]["family_name"]
    assert ok(client.get(f"{API}/referrals/{police_ref}", headers=ngo))["status"] == "in_progress"
    assert client.get(f"{API}/referrals/{police_ref}/packet", headers=ngo).status_code == 200

    # 7. Police polls its outgoing referrals and sees the NGO's progress.
    outbox = ok(
        client.get(
            f"{API}/referrals",
            query_string={"box": "outgoing", "updated_since": polled_from.isoformat()},
            headers=police,
        )
    )
    assert [(r["id"], r["status"]) for r in outbox] == [(police_ref, "in_progress")]
    assert outbox[0]["case_id"] == police_case
    later = ok(
        client.get(
            f"{API}/referrals",
            query_string={"box": "outgoing", "updated_since": datetime.now(UTC).isoformat()},
            headers=police,
        )
    )
    assert later == []
    events = [n["event"] for n in ok(client.get(f"{API}/notifications", headers=police))]
    for step in ("received", "accepted", "in_progress"):
        assert f"referral:{step}" in events
    assert "referral:cancelled" not in events  # legal aid's referral is none of police's business

    # 8. The audit chain verifies (as a platform DPO) and names each disclosure.
    verified = ok(client.get(f"{API}/audit/verify", headers=dpo))
    assert verified["ok"] is True and verified["unsealed"] == 0

    audit = rows(app, AuditEvent)
    sends = {e.resource_id: e for e in audit if e.action == "referral:send"}
    assert set(sends) == {police_ref, legal_ref}
    police_provisions = _provision_ids(client, police, police_consent)
    assert sends[police_ref].legal_basis == "consent:" + ",".join(police_provisions)
    assert sends[police_ref].categories == ",".join(POLICE_SHARES)
    assert sends[police_ref].acting_officer == OFFICER
    assert sends[legal_ref].legal_basis == f"consent:{provision_id}"
    assert sends[legal_ref].categories == ",".join(LEGAL_SHARES)
    packet_reads = [e for e in audit if e.action == "referral:packet" and e.decision == "allow"]
    legal_reads = [e for e in packet_reads if e.resource_id == legal_ref]
    assert legal_reads and all(e.legal_basis == f"consent:{provision_id}" for e in legal_reads)
    assert all(e.acting_officer is None for e in legal_reads)
    denied = [e for e in audit if e.action == "referral:packet" and e.decision == "deny"]
    assert [e.resource_id for e in denied] == [legal_ref]
    system_cancel = [e for e in audit if e.action == "referral:cancelled"]
    assert [(e.resource_id, e.actor_type, e.reason) for e in system_cancel] == [
        (legal_ref, "system", "consent_withdrawn")
    ]
    intake_rows = [e for e in audit if e.actor_org_id is not None and e.actor_org_id == police_org]
    assert all(e.acting_officer == OFFICER for e in intake_rows)
    assert not any(token in json_text([_row(e) for e in audit]) for token in CANARY.values())

    # 9. The disclosure register: one row per send, acknowledged once received or accepted.
    disclosures = {str(d.referral_id): d for d in rows(app, Disclosure)}
    assert set(disclosures) == {police_ref, legal_ref}
    to_ngo, to_legal = disclosures[police_ref], disclosures[legal_ref]
    assert (to_ngo.basis_type, to_ngo.basis) == ("consent", ",".join(police_provisions))
    assert to_ngo.categories == ",".join(POLICE_SHARES)
    assert (str(to_ngo.from_org_id), str(to_ngo.to_org_id)) == (str(police_org), str(ngo_org))
    assert to_ngo.acknowledged_at is not None and to_ngo.acknowledged_at >= to_ngo.disclosed_at
    assert (to_legal.basis_type, to_legal.basis) == ("consent", provision_id)
    assert to_legal.categories == ",".join(LEGAL_SHARES)
    assert to_legal.acknowledged_at is None  # legal aid never received it


def _provision_ids(client: Any, headers: dict[str, str], consent_id: str) -> list[str]:
    consent = ok(client.get(f"{API}/consents/{consent_id}", headers=headers))
    return sorted(p["id"] for p in consent["provisions"])


def _row(event: AuditEvent) -> dict[str, Any]:
    return {c: str(getattr(event, c)) for c in ("details", "reason", "legal_basis", "categories")}


def json_text(value: Any) -> str:
    return json.dumps(value, default=str)


def test_a_case_opened_from_a_referral_under_a_taken_code_is_drawn_again(
    app: Any, client: Any, factory: Any, monkeypatch: Any
) -> None:
    """The receiver's case is created inside the request's transaction (with the referral's
    link and its audit rows): a case code already taken is drawn again there, and the case
    is opened once, linked, with the shared categories."""
    from referral_api.cases import service as case_service
    from referral_api.cases.models import Case

    world = World(factory, client)
    referral_id = world.refer()["id"]
    receiver = world.h["receiver"]
    for step in ("received", "accepted"):
        ok(move(client, receiver, referral_id, step))
    taken = ok(client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"]))["case_code"]
    codes = iter([taken, "THB-NEWC-ODE4"])
    monkeypatch.setattr(case_service, "new_case_code", lambda _type: next(codes))
    before = count(app, Case)
    opened = ok(client.post(f"{API}/referrals/{referral_id}/case", headers=receiver), 201)
    assert count(app, Case) == before + 1
    view = ok(client.get(f"{API}/cases/{opened['receiver_case_id']}", headers=receiver))
    assert view["case_code"] == "THB-NEWC-ODE4"
    assert view["identity"]["given_name"]


def test_notifications_page_with_a_cursor(client: Any, factory: Any) -> None:
    """The notification list is cursor-paginated like every other list: newest first,
    `Link: rel="next"` while more remain, every notification once."""
    world = World(factory, client)
    for _ in range(3):
        world.refer()
    receiver = world.h["receiver"]
    everything = ok(client.get(f"{API}/notifications", headers=receiver))
    assert len(everything) == 3
    assert [n["created_at"] for n in everything] == sorted(
        (n["created_at"] for n in everything), reverse=True
    )
    first = client.get(f"{API}/notifications", query_string={"limit": 2}, headers=receiver)
    assert [n["id"] for n in ok(first)] == [n["id"] for n in everything[:2]]
    link = first.headers["Link"]
    url = link[link.index("<") + 1 : link.index(">")]
    second = client.get(url, headers=receiver)
    assert [n["id"] for n in ok(second)] == [everything[2]["id"]]
    assert "Link" not in second.headers
