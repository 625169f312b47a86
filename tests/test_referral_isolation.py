"""Receiver isolation (DESIGN.md §4, §8; issue 5): what a receiving organisation gets back
from every referral endpoint holds the shared categories and nothing else — no other
category's field or value, not the sender's case id, nothing about the person's other
referrals — and an organisation that is not a party gets 404 everywhere.

The case carries a canary string in every category (tests/referral_support.py); each check
looks at the parsed JSON recursively and at the raw response text.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import assert_problem
from referral_support import (
    API,
    CANARY,
    MESSAGE_CANARY,
    World,
    assert_no_leak,
    category_keys,
    etag,
    keys_of,
    move,
    ok,
    provision,
    raw_bytes,
    record_consent,
    walk,
)

from referral_api.access.roles import OrgType, Role

PACKET_KEYS = {"referral_id", "purpose", "categories", "valid_until", "data"}
METADATA = {
    "id",
    "from_org_id",
    "to_org_id",
    "service_id",
    "purpose",
    "categories",
    "urgency",
    "status",
    "status_reason",
    "business_status",
    "outcome",
    "override_reason",
    "override_approved_at",
    "created_at",
    "updated_at",
    "sent_at",
    "version",
}
RECEIVER_LIVE = METADATA | {"message", "receiver_case_id"}
MESSAGE_KEYS = {"id", "referral_id", "author_id", "author_org_id", "body", "created_at"}


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    return World(factory, client)


def _second_referral(client: Any, world: World) -> str:
    """The same person referred to a third organisation (the outsider) as well."""
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision("shelter", ["identity", "location", "needs"], org_id=world.outsider_org),
    )
    return world.refer(  # type: ignore[no-any-return]
        to_org_id=world.outsider_org,
        purpose="shelter",
        categories=["identity", "location", "needs"],
        message="SECOND-REFERRAL-SECRET shelter bed tonight",
    )["id"]


def _assert_isolated(response: Any, world: World, *secrets: str) -> None:
    """Nothing outside the shared categories, not the sender's case id, not the secrets."""
    assert_no_leak(response, world.shared, world.case_id, *secrets)


def test_every_receiver_response_holds_only_the_shared_categories(
    app: Any, client: Any, world: World
) -> None:
    referral_id = world.refer()["id"]
    other = _second_referral(client, world)
    receiver = world.h["receiver"]
    ok(
        client.post(
            f"{API}/referrals/{referral_id}/messages",
            json={"body": "Appointment on Monday?"},
            headers=world.h["sender"],
        ),
        201,
    )
    hidden = (other, "SECOND-REFERRAL-SECRET")

    packet = client.get(f"{API}/referrals/{referral_id}/packet", headers=receiver)
    assert keys_of(ok(packet)) <= PACKET_KEYS | category_keys(world.shared)
    assert sorted(packet.get_json()["data"]) == world.shared
    assert CANARY["identity"] in packet.get_data(as_text=True)  # the shared part is there
    _assert_isolated(packet, world, *hidden)

    for query in ({}, {"box": "incoming"}, {"box": "outgoing"}, {"case_id": world.case_id}):
        listed = client.get(f"{API}/referrals", query_string=query, headers=receiver)
        entries = ok(listed)
        expected = [referral_id] if query.get("box", "incoming") == "incoming" else []
        if "case_id" in query:
            expected = []  # a case id filter reaches the caller's own outgoing referrals only
        assert [e["id"] for e in entries] == expected, query
        for entry in entries:
            assert set(entry) <= RECEIVER_LIVE and MESSAGE_CANARY in entry["message"]
        _assert_isolated(listed, world, *hidden)

    single = client.get(f"{API}/referrals/{referral_id}", headers=receiver)
    assert set(ok(single)) <= RECEIVER_LIVE
    _assert_isolated(single, world, *hidden)

    thread = client.get(f"{API}/referrals/{referral_id}/messages", headers=receiver)
    assert keys_of(ok(thread)) <= MESSAGE_KEYS
    _assert_isolated(thread, world, *hidden)

    # Errors say no more than successes.
    errors = [
        move(client, receiver, referral_id, "completed", outcome="successful"),
        move(client, receiver, referral_id, "rejected"),
        client.post(
            f"{API}/referrals/{referral_id}/transitions",
            json={"to": "received"},
            headers=receiver,
        ),
        client.post(f"{API}/referrals/{referral_id}/case", headers=receiver),
        client.post(
            f"{API}/referrals/{referral_id}/messages", json={"body": "", "x": 1}, headers=receiver
        ),
        client.get(f"{API}/cases/{world.case_id}", headers=receiver),
        client.get(f"{API}/cases/{world.case_id}/consents", headers=receiver),
    ]
    assert [e.status_code for e in errors] == [409, 422, 428, 409, 422, 404, 404]
    for response in errors:
        _assert_isolated(response, world, *hidden)


def test_the_persons_other_referrals_are_invisible_to_a_receiver(
    app: Any, client: Any, world: World
) -> None:
    referral_id = world.refer()["id"]
    other = _second_referral(client, world)
    receiver = world.h["receiver"]
    for method, path, body in (
        ("get", f"/referrals/{other}", None),
        ("get", f"/referrals/{other}/packet", None),
        ("get", f"/referrals/{other}/messages", None),
        ("post", f"/referrals/{other}/messages", {"body": "hello"}),
        ("post", f"/referrals/{other}/transitions", {"to": "received"}),
        ("post", f"/referrals/{other}/case", None),
    ):
        headers = {**receiver, "If-Match": etag(client, world.h["sender"], other)}
        response = getattr(client, method)(f"{API}{path}", json=body, headers=headers)
        assert_problem(response, 404)
        _assert_isolated(response, world, other, "SECOND-REFERRAL-SECRET")
    assert [e["id"] for e in ok(client.get(f"{API}/referrals", headers=receiver))] == [referral_id]
    notes = ok(client.get(f"{API}/notifications", headers=receiver))
    assert {n["referral_id"] for n in notes} == {referral_id}
    # And the other receiver, symmetrically, knows nothing of the first referral.
    outsider = world.h["outsider"]
    assert_problem(client.get(f"{API}/referrals/{referral_id}", headers=outsider), 404)
    assert [e["id"] for e in ok(client.get(f"{API}/referrals", headers=outsider))] == [other]


def test_after_closing_a_receiver_sees_only_metadata(app: Any, client: Any, world: World) -> None:
    referral_id = world.refer()["id"]
    walk(client, world.h["receiver"], referral_id, "accepted", "in_progress")
    ok(
        client.post(
            f"{API}/referrals/{referral_id}/messages",
            json={"body": f"Update {MESSAGE_CANARY}"},
            headers=world.h["sender"],
        ),
        201,
    )
    ok(move(client, world.h["receiver"], referral_id, "completed", outcome="successful"))
    receiver = world.h["receiver"]
    for response in (
        client.get(f"{API}/referrals", headers=receiver),
        client.get(f"{API}/referrals", query_string={"status": "completed"}, headers=receiver),
        client.get(f"{API}/referrals/{referral_id}", headers=receiver),
    ):
        body = ok(response)
        for entry in body if isinstance(body, list) else [body]:
            assert set(entry) <= METADATA, set(entry) - METADATA
            assert entry["status"] == "completed"
        assert_no_leak(response, [], world.case_id, MESSAGE_CANARY)
    for path in ("packet", "messages"):
        assert_problem(client.get(f"{API}/referrals/{referral_id}/{path}", headers=receiver), 404)
    late = client.post(
        f"{API}/referrals/{referral_id}/messages", json={"body": "one more"}, headers=receiver
    )
    assert_problem(late, 404)
    # The sender keeps its own thread.
    assert (
        len(ok(client.get(f"{API}/referrals/{referral_id}/messages", headers=world.h["sender"])))
        == 1
    )


def test_an_organisation_that_is_no_party_gets_404_everywhere(
    app: Any, client: Any, world: World, factory: Any
) -> None:
    referral_id = world.refer()["id"]
    current = etag(client, world.h["sender"], referral_id)
    for actor in ("outsider", "outsider_sup"):
        headers = {**world.h[actor], "If-Match": current}
        for method, path, body in (
            ("get", f"/referrals/{referral_id}", None),
            ("get", f"/referrals/{referral_id}/packet", None),
            ("get", f"/referrals/{referral_id}/messages", None),
            ("post", f"/referrals/{referral_id}/messages", {"body": "hello"}),
            ("post", f"/referrals/{referral_id}/transitions", {"to": "received"}),
            ("post", f"/referrals/{referral_id}/transitions", {"to": "entered_in_error"}),
            ("post", f"/referrals/{referral_id}/override-approval", None),
            ("post", f"/referrals/{referral_id}/case", None),
            ("get", f"/referrals/{uuid.uuid4()}", None),
        ):
            response = getattr(client, method)(f"{API}{path}", json=body, headers=headers)
            if path.endswith("override-approval") and actor == "outsider":
                assert_problem(response, 403)  # a caseworker's role approves nothing at all
            else:
                assert_problem(response, 404)
            assert_no_leak(response, [], world.case_id, MESSAGE_CANARY)
        assert ok(client.get(f"{API}/referrals", headers=world.h[actor])) == []
        assert ok(client.get(f"{API}/notifications", headers=world.h[actor])) == []
    # A police organisation with no part in it is just as blind.
    police = factory.headers(factory.user(Role.POLICE_OFFICER, factory.org(OrgType.POLICE)))
    assert_problem(client.get(f"{API}/referrals/{referral_id}/packet", headers=police), 404)


def test_message_thread_between_the_two_parties(app: Any, client: Any, world: World) -> None:
    referral_id = world.refer()["id"]
    url = f"{API}/referrals/{referral_id}/messages"
    first = ok(
        client.post(
            url, json={"body": "CANARY-THREAD-1 can you take her?"}, headers=world.h["sender"]
        ),
        201,
    )
    second = ok(
        client.post(url, json={"body": "CANARY-THREAD-2 yes, Monday"}, headers=world.h["receiver"]),
        201,
    )
    assert (first["author_org_id"], second["author_org_id"]) == (
        str(world.sender_org),
        str(world.receiver_org),
    )
    for actor in ("sender", "receiver", "receiver_sup", "sender_sup"):
        thread = ok(client.get(url, headers=world.h[actor]))
        assert [m["body"] for m in thread] == [
            "CANARY-THREAD-1 can you take her?",
            "CANARY-THREAD-2 yes, Monday",
        ], actor
    # Each message notifies the other party only.
    sender_events = [
        n["event"] for n in ok(client.get(f"{API}/notifications", headers=world.h["sender"]))
    ]
    receiver_events = [
        n["event"] for n in ok(client.get(f"{API}/notifications", headers=world.h["receiver"]))
    ]
    assert sender_events.count("referral:message") == 1
    assert receiver_events.count("referral:message") == 1
    # Encrypted at rest.
    stored = raw_bytes(app, "SELECT * FROM referral_messages")
    assert b"CANARY-THREAD" not in stored and stored
    assert MESSAGE_CANARY.encode() not in raw_bytes(app, "SELECT * FROM referrals")
    # Once the referral is rejected the receiver's side of the thread is gone.
    ok(move(client, world.h["receiver"], referral_id, "rejected", reason="no_capacity"))
    assert_problem(client.get(url, headers=world.h["receiver"]), 404)
    assert_problem(
        client.post(url, json={"body": "still there?"}, headers=world.h["receiver"]), 404
    )
    assert len(ok(client.get(url, headers=world.h["sender"]))) == 2


def test_notifications_are_the_organisations_own(app: Any, client: Any, world: World) -> None:
    referral_id = world.refer()["id"]
    other = _second_referral(client, world)
    ok(move(client, world.h["receiver"], referral_id, "received"))

    def events(actor: str, **query: Any) -> list[dict[str, Any]]:
        return ok(client.get(f"{API}/notifications", query_string=query, headers=world.h[actor]))  # type: ignore[no-any-return]

    receiver = events("receiver")
    assert {n["referral_id"] for n in receiver} == {referral_id}
    assert sorted(n["event"] for n in receiver) == ["referral:received", "referral:requested"]
    assert {n["referral_id"] for n in events("outsider")} == {other}
    assert {n["referral_id"] for n in events("sender")} == {referral_id, other}
    # Colleagues share the organisation's outbox; reading one marks it for all of them.
    assert {n["id"] for n in events("receiver_sup")} == {n["id"] for n in receiver}
    first = receiver[0]["id"]
    assert ok(client.post(f"{API}/notifications/{first}/read", headers=world.h["receiver"]))[
        "read_at"
    ]
    assert first not in {n["id"] for n in events("receiver_sup")}
    assert first in {n["id"] for n in events("receiver", unread="false")}
    # Another organisation's notification does not exist for you.
    foreign = events("outsider")[0]["id"]
    assert_problem(
        client.post(f"{API}/notifications/{foreign}/read", headers=world.h["receiver"]), 404
    )
    assert all(n["read_at"] is None for n in events("outsider"))


def test_a_dpo_lists_notifications_but_does_not_mark_them_read(
    app: Any, client: Any, world: World, factory: Any
) -> None:
    # The outbox is the referral workers': an oversight role reading it must not clear an
    # event from their unread list.
    world.refer()
    dpo = factory.headers(factory.user(Role.DPO, world.receiver_org))
    listed = ok(client.get(f"{API}/notifications", headers=dpo))
    assert [n["event"] for n in listed] == ["referral:requested"]
    refused = client.post(f"{API}/notifications/{listed[0]['id']}/read", headers=dpo)
    assert assert_problem(refused, 403)
    unread = ok(client.get(f"{API}/notifications", headers=world.h["receiver"]))
    assert [(n["id"], n["read_at"]) for n in unread] == [(listed[0]["id"], None)]


def test_a_dpo_sees_referral_metadata_without_the_message(
    app: Any, client: Any, world: World, factory: Any
) -> None:
    referral_id = world.refer()["id"]
    receiver_dpo = factory.headers(factory.user(Role.DPO, world.receiver_org))
    for headers in (world.h["sender_dpo"], receiver_dpo):
        single = client.get(f"{API}/referrals/{referral_id}", headers=headers)
        assert ok(single)["status"] == "requested" and "message" not in single.get_json()
        listed = client.get(f"{API}/referrals", headers=headers)
        assert [e["id"] for e in ok(listed)] == [referral_id]
        for response in (single, listed):
            assert_no_leak(response, [], MESSAGE_CANARY)
        assert_problem(client.get(f"{API}/referrals/{referral_id}/messages", headers=headers), 403)
        assert client.get(f"{API}/referrals/{referral_id}/packet", headers=headers).status_code in (
            403,
            404,
        )
    # The sending organisation's DPO may see which of its cases it concerns; the receiver's
    # may not.
    assert (
        ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["sender_dpo"]))["case_id"]
        == world.case_id
    )
    assert "case_id" not in ok(client.get(f"{API}/referrals/{referral_id}", headers=receiver_dpo))


def test_listing_referrals_audits_every_referral_shown(world: World, app: Any) -> None:
    """The list carries each referral's message (personal data), so each one shown gets its
    own audit row, as a single read does; an empty page gets one row saying so."""
    from sqlalchemy import select

    from referral_api.audit.models import AuditEvent
    from referral_api.extensions import db

    first, second = world.refer()["id"], world.refer()["id"]
    ok(
        world.client.get(
            f"{API}/referrals", query_string={"box": "incoming"}, headers=world.h["receiver"]
        )
    )
    ok(world.client.get(f"{API}/referrals", headers=world.h["outsider"]))
    with db.session_factory_for(app)() as s:
        reads = s.execute(
            select(
                AuditEvent.actor_id, AuditEvent.resource_id, AuditEvent.case_id, AuditEvent.details
            ).where(AuditEvent.action == "referral:read")
        ).all()
        s.rollback()
    receiver = {(r.resource_id, r.case_id) for r in reads if r.actor_id == world.ids["receiver"]}
    assert receiver == {(first, uuid.UUID(world.case_id)), (second, uuid.UUID(world.case_id))}
    assert all('"via": "list"' in r.details for r in reads if r.actor_id == world.ids["receiver"])
    outsider = [r for r in reads if r.actor_id == world.ids["outsider"]]
    assert len(outsider) == 1 and outsider[0].resource_id is None
    assert '"results": 0' in outsider[0].details


def test_referral_lists_hold_the_parties_referrals_and_no_unsent_draft(world: World) -> None:
    """Lists are scoped in SQL by the policy (access.policy.scope_referrals), as a single
    read is by decide(): the sender sees its drafts, the receiver only what was sent to it,
    anyone else nothing — in every box."""
    sent, draft = world.refer()["id"], world.refer(send=False)["id"]

    def listed(who: str, box: str | None = None) -> set[str]:
        query = {"box": box} if box else {}
        response = world.client.get(f"{API}/referrals", query_string=query, headers=world.h[who])
        return {r["id"] for r in ok(response)}

    assert listed("sender") == listed("sender", "outgoing") == {sent, draft}
    assert listed("sender", "incoming") == set()
    assert listed("receiver") == listed("receiver", "incoming") == {sent}
    assert listed("receiver", "outgoing") == set()
    for box in (None, "incoming", "outgoing"):
        assert listed("outsider", box) == set()
