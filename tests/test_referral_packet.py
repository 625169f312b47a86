"""The consent gate and the receiver's packet (DESIGN.md §5, §7, §8; issue 5).

Sending needs consent for every shared category; a police organisation never receives
health or psychosocial data whatever a consent says; the packet exists only while the
referral is live and consent holds, and is checked again when the receiver accepts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem, consent_if_match
from referral_support import (
    API,
    World,
    assert_no_leak,
    category_keys,
    count,
    create_case,
    keys_of,
    move,
    ok,
    provision,
    record_consent,
    refer,
    rows,
    walk,
)

from referral_api.access.categories import Category
from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.consent import service as consent_service
from referral_api.extensions import db
from referral_api.referrals.models import Disclosure, Referral

PACKET_KEYS = {"referral_id", "purpose", "categories", "valid_until", "data"}


def _packet(client: Any, headers: dict[str, str], referral_id: str) -> Any:
    return client.get(f"{API}/referrals/{referral_id}/packet", headers=headers)


def _police_client(factory: Any, client: Any, org_id: Any, officer: str) -> dict[str, str]:
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org_id)
    body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    token = ok(client.post(f"{API}/auth/token", json=body))["access_token"]
    return {"Authorization": f"Bearer {token}", "X-Acting-Officer": officer}


# ---- the consent gate ---------------------------------------------------------------------


def test_sending_without_covering_consent_is_409_listing_missing_categories(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(factory, client)  # consent: identity and legal, for legal assistance
    response = refer(
        client,
        world.h["sender"],
        world.case_id,
        world.receiver_org,
        ["identity", "contact", "legal"],
    )
    problem = assert_problem(response, 409)
    assert problem["type"] == "/problems/consent-required"
    assert problem["missing_categories"] == ["contact"]
    assert problem["denied"] == {"contact": "no provision covers it"}
    # Another purpose is another question: nothing of it is covered.
    problem = assert_problem(
        refer(
            client,
            world.h["sender"],
            world.case_id,
            world.receiver_org,
            world.shared,
            purpose="shelter",
        ),
        409,
    )
    assert problem["missing_categories"] == world.shared
    # A refused send leaves nothing behind; a draft that cannot be sent stays a draft.
    assert count(app, Referral) == 0 and count(app, Disclosure) == 0
    draft = world.refer(send=False, categories=["identity", "contact"])["id"]
    problem = assert_problem(move(client, world.h["sender"], draft, "requested"), 409)
    assert problem["missing_categories"] == ["contact"]
    assert (
        ok(client.get(f"{API}/referrals/{draft}", headers=world.h["sender"]))["status"] == "draft"
    )
    assert count(app, Disclosure) == 0
    # Once consent covers it, the same draft goes.
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(world.purpose, ["contact"], org_type="legal_aid"),
    )
    assert ok(move(client, world.h["sender"], draft, "requested"))["status"] == "requested"
    assert count(app, Disclosure) == 1


def test_send_covered_by_many_provisions_names_them_all(
    app: Any, client: Any, factory: Any
) -> None:
    # Three consents, one category each: the disclosure and its audit row name all three
    # provisions (a long basis once overflowed the audit column on PostgreSQL: a 500).
    world = World(factory, client, consent=False)
    shared = ["contact", "identity", "legal"]
    provision_ids = sorted(
        record_consent(
            client,
            world.h["sender"],
            world.case_id,
            provision(world.purpose, [c], org_id=world.receiver_org),
        )["provisions"][0]["id"]
        for c in shared
    )
    referral_id = world.refer(categories=shared)["id"]
    assert sorted(ok(_packet(client, world.h["receiver"], referral_id))["data"]) == shared
    (disclosure,) = rows(app, Disclosure)
    assert (disclosure.basis_type, disclosure.basis.split(",")) == ("consent", provision_ids)
    audit = rows(app, AuditEvent, AuditEvent.resource_id == referral_id)
    for action in ("referral:send", "referral:packet"):
        (event,) = [e for e in audit if e.action == action]
        named = (event.legal_basis or "") + (event.details or "")
        assert event.legal_basis.startswith("consent:"), action
        assert len(event.legal_basis) <= AuditEvent.__table__.c.legal_basis.type.length
        assert all(p in named for p in provision_ids), action


# ---- the police ceiling -------------------------------------------------------------------


def test_police_ceiling_holds_whatever_the_consent_says(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(factory, client, receiver_type=OrgType.POLICE, consent=False)
    purpose = "law_enforcement_report"
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(purpose, [c.value for c in Category], org_id=world.receiver_org),
        provision(purpose, ["health", "psychosocial", "identity"], org_type="police"),
    )
    for categories in (["psychosocial"], ["health"], ["identity", "health", "psychosocial"]):
        for send in (True, False):
            response = refer(
                client,
                world.h["sender"],
                world.case_id,
                world.receiver_org,
                categories,
                purpose=purpose,
                send=send,
            )
            problem = assert_problem(response, 422)
            assert "police" in problem["errors"]["json"]["categories"][0]
    assert count(app, Referral) == 0

    shared = ["contact", "identity", "incident", "legal"]
    referral_id = world.refer(purpose=purpose, categories=shared)["id"]
    police = _police_client(factory, client, world.receiver_org, "badge-0042")
    response = _packet(client, police, referral_id)
    packet = ok(response)
    assert packet["categories"] == shared and sorted(packet["data"]) == shared
    assert keys_of(packet) <= PACKET_KEYS | category_keys(shared)
    assert_no_leak(response, shared)
    # The officer the police system acted for is on the record of the read.
    (read,) = rows(
        app, AuditEvent, AuditEvent.action == "referral:packet", AuditEvent.decision == "allow"
    )
    assert (read.actor_type, read.acting_officer) == ("client", "badge-0042")
    assert read.categories == ",".join(shared)


def test_police_packet_never_holds_health_or_psychosocial_even_if_a_referral_names_them(
    app: Any, client: Any, factory: Any
) -> None:
    # Defence in depth: were a referral row to name psychosocial and health for a police
    # receiver (an old row, a bug elsewhere), the packet still leaves them out.
    world = World(factory, client, receiver_type=OrgType.POLICE, consent=False)
    purpose = "law_enforcement_report"
    every = [c.value for c in Category]
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(purpose, every, org_id=world.receiver_org),
    )
    referral_id = world.refer(purpose=purpose, categories=["identity"])["id"]
    with db.session_factory_for(app)() as s:
        referral = s.get(Referral, uuid.UUID(referral_id))
        referral.categories = ",".join(sorted(every))
        s.commit()
    response = _packet(client, world.h["receiver"], referral_id)
    # Either layer may stop it (the consent decision refuses the whole packet; the packet
    # view trims to the ceiling): what must hold is that neither category ever arrives.
    assert response.status_code in (200, 404), response.status_code
    allowed = sorted(set(every) - {"health", "psychosocial"})
    assert_no_leak(response, allowed)
    if response.status_code == 200:
        packet = response.get_json()
        assert packet["categories"] == allowed and sorted(packet["data"]) == allowed
    with db.session_factory_for(app)() as s:
        referral = s.get(Referral, uuid.UUID(referral_id))
        referral.categories = "identity"
        s.commit()
    assert ok(_packet(client, world.h["receiver"], referral_id))["categories"] == ["identity"]


# ---- when the packet disappears -----------------------------------------------------------

CLOSING = {
    "rejected": [("receiver", "rejected", {"reason": "no_capacity"})],
    "cancelled": [("sender", "cancelled", {"reason": "no_longer_needed"})],
    "cancelled_by_receiver": [
        ("receiver", "accepted", {}),
        ("receiver", "cancelled", {"reason": "person_declined"}),
    ],
    "completed": [
        ("receiver", "accepted", {}),
        ("receiver", "in_progress", {}),
        ("receiver", "completed", {"outcome": "successful", "reason": "service_delivered"}),
    ],
    "failed": [("receiver", "accepted", {}), ("receiver", "failed", {"reason": "lost_contact"})],
    "entered_in_error": [("sender_sup", "entered_in_error", {"reason": "wrong_recipient"})],
    "entered_in_error_by_receiver": [
        ("receiver", "received", {}),
        ("receiver_sup", "entered_in_error", {"reason": "duplicate"}),
    ],
}


def test_packet_is_404_once_the_referral_closes(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client)
    receiver = world.h["receiver"]
    for name, steps in CLOSING.items():
        referral_id = world.refer()["id"]
        assert ok(_packet(client, receiver, referral_id))["categories"] == world.shared, name
        for actor, to, fields in steps:
            ok(move(client, world.h[actor], referral_id, to, **fields))
        assert_problem(_packet(client, receiver, referral_id), 404)
        assert_problem(client.get(f"{API}/referrals/{referral_id}/messages", headers=receiver), 404)
        # The referral's own metadata stays visible to both parties; the message does not.
        seen = ok(client.get(f"{API}/referrals/{referral_id}", headers=receiver))
        assert seen["status"] == steps[-1][1] and "message" not in seen, name
        assert ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["sender"]))[
            "message"
        ]
    denied = rows(
        app, AuditEvent, AuditEvent.action == "referral:packet", AuditEvent.decision == "deny"
    )
    assert len(denied) == len(CLOSING) and {e.reason for e in denied} == {"referral not live"}


def test_a_draft_has_no_packet_and_the_sender_never_reads_one(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(factory, client)
    draft = world.refer(send=False)["id"]
    for headers in (world.h["receiver"], world.h["receiver_sup"], world.h["sender"]):
        assert_problem(_packet(client, headers, draft), 404)
    assert_problem(client.get(f"{API}/referrals/{draft}", headers=world.h["receiver"]), 404)
    for query in ({}, {"box": "incoming"}, {"status": "draft"}):
        listed = client.get(f"{API}/referrals", query_string=query, headers=world.h["receiver"])
        assert ok(listed) == [], query
    assert ok(client.get(f"{API}/notifications", headers=world.h["receiver"])) == []
    # Notes on a draft and dropping it are the sender's business alone: the receiver hears
    # nothing of them.
    ok(
        client.post(
            f"{API}/referrals/{draft}/messages",
            json={"body": "draft note"},
            headers=world.h["sender"],
        ),
        201,
    )
    ok(move(client, world.h["sender"], draft, "cancelled", reason="sent_in_error"))
    other_draft = world.refer(send=False)["id"]
    ok(move(client, world.h["sender_sup"], other_draft, "entered_in_error", reason="wrong_case"))
    assert ok(client.get(f"{API}/notifications", headers=world.h["receiver"])) == []
    sender_events = ok(client.get(f"{API}/notifications", headers=world.h["sender"]))
    assert sorted(n["event"] for n in sender_events) == [
        "referral:cancelled",
        "referral:entered_in_error",
    ]
    sent = world.refer()["id"]
    assert_problem(_packet(client, world.h["sender"], sent), 404)  # the sender has the case
    ok(_packet(client, world.h["receiver"], sent))


@pytest.mark.parametrize("ending", ["withdraw", "revoke", "entered-in-error"])
def test_packet_is_404_once_consent_ends(app: Any, client: Any, factory: Any, ending: str) -> None:
    world = World(factory, client)
    assert world.consent is not None
    referral_id = world.refer()["id"]
    walk(client, world.h["receiver"], referral_id, "accepted", "in_progress")
    ok(_packet(client, world.h["receiver"], referral_id))
    body = {} if ending == "withdraw" else {"reason": "obtained under pressure"}
    actor = "sender" if ending == "withdraw" else "sender_sup"
    headers = world.h[actor]
    if ending != "withdraw":  # a withdrawal needs no If-Match
        headers = consent_if_match(client, world.consent["id"], headers)
    ended = ok(
        client.post(f"{API}/consents/{world.consent['id']}/{ending}", json=body, headers=headers)
    )
    assert [e["id"] for e in ended["events"][-1]["effects"]] == [referral_id]
    assert_problem(_packet(client, world.h["receiver"], referral_id), 404)
    seen = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["receiver"]))
    assert (seen["status"], seen["status_reason"]) == ("cancelled", "consent_withdrawn")
    assert "message" not in seen
    # The system cancelled it: accepting or resuming is no longer possible.
    problem = assert_problem(move(client, world.h["receiver"], referral_id, "on_hold"), 409)
    assert problem["type"] == "/problems/invalid-transition"


def test_packet_is_404_after_the_provision_expires_and_accept_rechecks(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(factory, client, consent=False)
    until = datetime.now(UTC) + timedelta(hours=1)
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(
            world.purpose, world.shared, org_id=world.receiver_org, valid_until=until.isoformat()
        ),
    )
    expiring = world.refer()["id"]
    received = world.refer()["id"]
    ok(move(client, world.h["receiver"], received, "received"))
    packet = ok(_packet(client, world.h["receiver"], expiring))
    assert datetime.fromisoformat(packet["valid_until"]) == until

    later = until + timedelta(minutes=1)
    monkeypatch.setattr(consent_service, "now", lambda: later)
    for referral_id in (expiring, received):
        assert_problem(_packet(client, world.h["receiver"], referral_id), 404)
        seen = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["receiver"]))
        assert "message" not in seen
    # Nothing cancelled it (expiry is not a withdrawal), so accepting asks consent again.
    for referral_id in (expiring, received):
        problem = assert_problem(move(client, world.h["receiver"], referral_id, "accepted"), 409)
        assert problem["type"] == "/problems/consent-required"
        assert problem["missing_categories"] == world.shared
        assert set(problem["denied"].values()) == {"provision expired"}
    assert (
        ok(client.get(f"{API}/referrals/{received}", headers=world.h["sender"]))["status"]
        == "received"
    )
    # Nor can a new referral be sent on it.
    assert_problem(
        refer(client, world.h["sender"], world.case_id, world.receiver_org, world.shared), 409
    )


def test_a_provision_already_past_never_covers_a_send(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client, consent=False)
    start = datetime.now(UTC) - timedelta(days=30)
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(
            world.purpose,
            world.shared,
            org_id=world.receiver_org,
            valid_from=start.isoformat(),
            valid_until=(start + timedelta(days=1)).isoformat(),
        ),
    )
    problem = assert_problem(
        refer(client, world.h["sender"], world.case_id, world.receiver_org, world.shared), 409
    )
    assert problem["type"] == "/problems/consent-required"
    assert problem["missing_categories"] == world.shared


def test_accept_rechecks_consent_withdrawn_since_send(app: Any, client: Any, factory: Any) -> None:
    # Two consents cover the send; the one that covers `legal` is withdrawn. The withdrawal
    # cancels the referral at once, so the accept that follows meets a cancelled referral.
    world = World(factory, client, consent=False)
    identity = record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(world.purpose, ["identity"], org_id=world.receiver_org),
    )
    legal = record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(world.purpose, ["legal"], org_id=world.receiver_org),
    )
    referral_id = world.refer()["id"]
    other_case = create_case(client, world.h["sender"])
    record_consent(
        client,
        world.h["sender"],
        other_case,
        provision(world.purpose, ["identity"], org_id=world.receiver_org),
    )
    unaffected = world.refer(case_id=other_case, categories=["identity"])["id"]
    ok(client.post(f"{API}/consents/{legal['id']}/withdraw", json={}, headers=world.h["sender"]))
    problem = assert_problem(move(client, world.h["receiver"], referral_id, "accepted"), 409)
    assert problem["type"] == "/problems/invalid-transition"
    assert (
        ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["sender"]))["status_reason"]
        == "consent_withdrawn"
    )
    # The other case's referral, and the still-active identity consent, are untouched.
    assert ok(move(client, world.h["receiver"], unaffected, "accepted"))["status"] == "accepted"
    still = ok(client.get(f"{API}/consents/{identity['id']}", headers=world.h["sender"]))
    assert still["state"] == "active"


def test_withdrawing_a_consent_the_referral_does_not_depend_on_changes_nothing(
    app: Any, client: Any, factory: Any
) -> None:
    # Two consents each cover the whole referral: withdrawing one leaves it covered.
    world = World(factory, client)
    assert world.consent is not None
    spare = record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(world.purpose, world.shared, org_type="legal_aid"),
    )
    referral_id = world.refer()["id"]
    withdrawn = ok(
        client.post(
            f"{API}/consents/{world.consent['id']}/withdraw", json={}, headers=world.h["sender"]
        )
    )
    assert withdrawn["events"][-1]["effects"] is None
    assert ok(_packet(client, world.h["receiver"], referral_id))["categories"] == world.shared
    seen = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["receiver"]))
    assert seen["status"] == "requested"
    reads = rows(
        app, AuditEvent, AuditEvent.action == "referral:packet", AuditEvent.decision == "allow"
    )
    assert [e.legal_basis for e in reads] == [f"consent:{spare['provisions'][0]['id']}"]
    # The second withdrawal is the one it depended on.
    ended = ok(
        client.post(f"{API}/consents/{spare['id']}/withdraw", json={}, headers=world.h["sender"])
    )
    assert [e["id"] for e in ended["events"][-1]["effects"]] == [referral_id]
    assert_problem(_packet(client, world.h["receiver"], referral_id), 404)
