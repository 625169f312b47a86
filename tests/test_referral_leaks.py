"""Referral data that reached someone it must not.

- A referral never sent does not exist for its receiver, whatever became of it: a draft
  cancelled or entered in error stays unknown to the receiving organisation (its users, its
  lists, its notifications, its data-protection officer).
- A restricted case (GDPR Art. 18) is stored but not processed: the sending organisation no
  longer reads its referral message or thread either; the referral's metadata stays, so the
  sender can still stop it.
- An erased case's referral answers 410 to a move, as the case does, and nothing is written.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import assert_problem
from referral_support import API, World, count, move, ok, rows
from rights_support import World as RightsWorld
from rights_support import new_token
from sqlalchemy import select

from referral_api.access.roles import Role
from referral_api.audit.models import AuditEvent
from referral_api.referrals.models import ReferralMessage, ReferralTransition

RESTRICTED = "/problems/processing-restricted"


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    return World(factory, client)


def _incoming(client: Any, world: World, **query: str) -> list[str]:
    listed = ok(client.get(f"{API}/referrals", query_string=query, headers=world.h["receiver"]))
    return [item["id"] for item in listed]


# ---- a referral never sent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "by", "reason"),
    [("cancelled", "sender", "sent_in_error"), ("entered_in_error", "sender_sup", "wrong_case")],
)
def test_a_draft_dropped_before_sending_stays_unknown_to_the_receiver(
    client: Any, world: World, ending: str, by: str, reason: str
) -> None:
    draft = world.refer(send=False, override_reason="child_protection")
    rid = draft["id"]
    assert_problem(client.get(f"{API}/referrals/{rid}", headers=world.h["receiver"]), 404)
    ok(move(client, world.h[by], rid, ending, reason=reason))

    for name in ("receiver", "receiver_sup"):
        headers = world.h[name]
        for path in ("", "/packet", "/messages"):
            response = client.get(f"{API}/referrals/{rid}{path}", headers=headers)
            assert_problem(response, 404)
            assert "child_protection" not in response.get_data(as_text=True), path
    for query in ({}, {"box": "incoming"}, {"status": ending}):
        assert rid not in _incoming(client, world, **query), query
    # Not even the receiving supervisor's "any → entered_in_error" finds it.
    if ending == "cancelled":
        response = client.post(
            f"{API}/referrals/{rid}/transitions",
            json={"to": "entered_in_error", "reason": "wrong_recipient"},
            headers={**world.h["receiver_sup"], "If-Match": '"anything"'},
        )
        assert_problem(response, 404)
    assert ok(client.get(f"{API}/notifications", headers=world.h["receiver"])) == []
    # The sender still has it, and its own notification of the move.
    assert ok(client.get(f"{API}/referrals/{rid}", headers=world.h["sender"]))["status"] == ending
    assert rid in [i["id"] for i in ok(client.get(f"{API}/referrals", headers=world.h["sender"]))]
    sender_events = ok(client.get(f"{API}/notifications", headers=world.h["sender"]))
    assert [n["event"] for n in sender_events] == [f"referral:{ending}"]

    # The boundary: what counts is whether it was sent, not its status. One sent and then
    # stopped the same way is the receiver's, with its notifications.
    sent = world.refer()["id"]
    if ending == "entered_in_error":
        ok(move(client, world.h["sender"], sent, "cancelled", reason="no_longer_needed"))
    ok(move(client, world.h[by], sent, ending, reason=reason))
    assert ok(client.get(f"{API}/referrals/{sent}", headers=world.h["receiver"]))["status"] == (
        ending
    )
    assert _incoming(client, world, box="incoming") == [sent]
    events = ok(client.get(f"{API}/notifications", headers=world.h["receiver"]))
    assert {n["referral_id"] for n in events} == {sent}
    assert f"referral:{ending}" in [n["event"] for n in events]


def test_moves_and_messages_after_dropping_a_draft_tell_the_receiver_nothing(
    app: Any, client: Any, world: World
) -> None:
    draft = world.refer(send=False, override_reason="child_protection")
    rid = draft["id"]
    # A note on the draft is the sender's alone (it goes with the referral if it is sent).
    ok(
        client.post(
            f"{API}/referrals/{rid}/messages", json={"body": "x"}, headers=world.h["sender"]
        ),
        201,
    )
    ok(move(client, world.h["sender"], rid, "cancelled", reason="sent_in_error"))
    ok(move(client, world.h["sender_sup"], rid, "entered_in_error", reason="wrong_recipient"))
    assert_problem(client.get(f"{API}/referrals/{rid}", headers=world.h["receiver"]), 404)
    assert rid not in _incoming(client, world, box="incoming")
    assert ok(client.get(f"{API}/notifications", headers=world.h["receiver"])) == []

    # Dropped unsent, it can never be sent: a message would be personal data kept for no
    # one, and is refused (nothing stored, no one told).
    refused = client.post(
        f"{API}/referrals/{rid}/messages", json={"body": "y"}, headers=world.h["sender"]
    )
    assert_problem(refused, 409)
    assert ok(client.get(f"{API}/notifications", headers=world.h["receiver"])) == []
    assert count(app, ReferralMessage, ReferralMessage.referral_id == uuid.UUID(rid)) == 1
    # The sender reads its own note still.
    assert len(ok(client.get(f"{API}/referrals/{rid}/messages", headers=world.h["sender"]))) == 1


# ---- the receiving organisation's DPO -----------------------------------------------------


def test_the_receivers_dpo_never_sees_an_override_draft(
    client: Any, factory: Any, world: World
) -> None:
    receiver_dpo = factory.headers(factory.user(Role.DPO, world.receiver_org))
    draft = world.refer(
        send=False, override_reason="child_protection", categories=["identity", "location"]
    )
    rid = draft["id"]
    for ending in (None, "cancelled"):
        if ending is not None:
            ok(move(client, world.h["sender"], rid, ending, reason="sent_in_error"))
        report = client.get(f"{API}/dpo/reports/overrides", headers=receiver_dpo)
        assert report.status_code == 200
        assert rid not in report.get_data(as_text=True), ending
        review = client.post(f"{API}/dpo/overrides/{rid}/review", headers=receiver_dpo)
        assert_problem(review, 404)
    # The sending organisation's DPO has it in its report.
    own = client.get(f"{API}/dpo/reports/overrides", headers=world.h["sender_dpo"])
    assert rid in own.get_data(as_text=True)

    # The boundary: once sent, the override is in the receiver's DPO report, and its review
    # is the sending organisation's (403 to the receiver's DPO, as documented).
    sent = world.refer(
        send=False, override_reason="child_protection", categories=["identity", "location"]
    )["id"]
    tag = client.get(f"{API}/referrals/{sent}", headers=world.h["sender_sup"]).headers["ETag"]
    approval = client.post(
        f"{API}/referrals/{sent}/override-approval",
        headers={**world.h["sender_sup"], "If-Match": tag},
    )
    ok(approval)
    ok(move(client, world.h["sender"], sent, "requested"))
    report = client.get(f"{API}/dpo/reports/overrides", headers=receiver_dpo)
    assert sent in report.get_data(as_text=True) and rid not in report.get_data(as_text=True)
    assert_problem(client.post(f"{API}/dpo/overrides/{sent}/review", headers=receiver_dpo), 403)
    ok(client.post(f"{API}/dpo/overrides/{sent}/review", headers=world.h["sender_dpo"]))


# ---- a restricted case, read by its own organisation through the referral -----------------


def test_the_sender_reads_nothing_personal_of_a_restricted_cases_referral(
    app: Any, client: Any, factory: Any
) -> None:
    world = RightsWorld(app, factory, client)
    token = new_token("restr")
    case_id = world.case(token)
    world.consent(case_id, world.receiver_org, ["identity", "legal"])
    rid = world.refer(case_id, ["identity", "legal"], send=True, message=f"msg {token}")["id"]
    world.message(rid, f"thread {token}")
    ok(
        client.post(
            f"{API}/cases/{case_id}/restriction", json={"restricted": True}, headers=world.h["sup"]
        )
    )

    for who in ("worker", "sup"):
        one = client.get(f"{API}/referrals/{rid}", headers=world.h[who])
        outbox = client.get(
            f"{API}/referrals", query_string={"box": "outgoing"}, headers=world.h[who]
        )
        thread = client.get(f"{API}/referrals/{rid}/messages", headers=world.h[who])
        for name, response in (("referral", one), ("outbox", outbox), ("messages", thread)):
            assert token not in response.get_data(as_text=True), (who, name)
        # The metadata stays: the sender can still manage (stop) the referral.
        body = ok(one)
        assert (body["id"], body["status"], body["case_id"]) == (rid, "requested", case_id)
        assert "message" not in body
        assert rid in [item["id"] for item in ok(outbox)]
        # The thread is refused as the case is.
        problem = assert_problem(thread, 403)
        assert problem["type"] == RESTRICTED
    refusals = world.scalars(
        select(AuditEvent).where(
            AuditEvent.resource_id == rid,
            AuditEvent.action == "referral:messages-read",
            AuditEvent.decision == "deny",
        )
    )
    assert [r.reason for r in refusals] == ["processing restricted"] * 2

    # Lifted: the sender reads them again.
    ok(
        client.post(
            f"{API}/cases/{case_id}/restriction", json={"restricted": False}, headers=world.h["sup"]
        )
    )
    assert ok(client.get(f"{API}/referrals/{rid}", headers=world.h["worker"]))["message"] == (
        f"msg {token}"
    )
    bodies = [
        m["body"]
        for m in ok(client.get(f"{API}/referrals/{rid}/messages", headers=world.h["worker"]))
    ]
    assert bodies == [f"thread {token}"]


# ---- an erased case -----------------------------------------------------------------------


def test_a_move_of_an_erased_cases_referral_is_410_and_writes_nothing(
    app: Any, client: Any, factory: Any
) -> None:
    world = RightsWorld(app, factory, client)
    case_id = world.case(new_token("eie"))
    world.consent(case_id, world.receiver_org, ["identity"])
    rid = world.refer(case_id, ["identity"], send=True, message="m")["id"]
    ok(world.approve(world.request_erasure(case_id)))
    before = client.get(f"{API}/referrals/{rid}", headers=world.h["sup"])
    history = _transitions(app, rid)

    r = client.post(
        f"{API}/referrals/{rid}/transitions",
        json={"to": "entered_in_error", "reason": "wrong_case"},
        headers={**world.h["sup"], "If-Match": before.headers["ETag"]},
    )
    problem = assert_problem(r, 410)
    assert problem["type"].endswith("/problems/erased")
    after = client.get(f"{API}/referrals/{rid}", headers=world.h["sup"])
    assert ok(after) == ok(before) and after.headers["ETag"] == before.headers["ETag"]
    assert _transitions(app, rid) == history
    # Nor is anything added to its thread, nor read from it: the case answers 410.
    posted = client.post(
        f"{API}/referrals/{rid}/messages", json={"body": "x"}, headers=world.h["worker"]
    )
    assert_problem(posted, 410)
    assert_problem(client.get(f"{API}/referrals/{rid}/messages", headers=world.h["worker"]), 410)
    refusals = world.scalars(
        select(AuditEvent.action).where(
            AuditEvent.resource_id == rid,
            AuditEvent.decision == "deny",
            AuditEvent.reason == "case erased",
        )
    )
    assert sorted(refusals) == [
        "referral:entered_in_error",
        "referral:message",
        "referral:messages-read",
    ]


# ---- helpers ------------------------------------------------------------------------------


def _transitions(app: Any, referral_id: str) -> list[tuple[Any, ...]]:
    found = rows(app, ReferralTransition, ReferralTransition.referral_id == uuid.UUID(referral_id))
    return sorted((row.id, row.to_status) for row in found)


def test_a_withdrawal_says_which_referrals_go_on_under_an_approved_override(
    app: Any, client: Any, world: World
) -> None:
    """Sent on the person's consent with an override approved as well: withdrawing the
    consent leaves the referral live on the override (its basis from then on), and the
    withdrawal's effects and the audit log say so instead of saying nothing."""
    from referral_support import etag

    from referral_api.referrals.models import Disclosure

    referral = world.refer(by="sender_sup", send=False, override_reason="vital_interests")["id"]
    ok(
        client.post(
            f"{API}/referrals/{referral}/override-approval",
            headers={
                **world.h["sender_sup2"],
                "If-Match": etag(client, world.h["sender"], referral),
            },
        )
    )
    ok(
        client.post(
            f"{API}/referrals/{referral}/transitions",
            json={"to": "requested"},
            headers={**world.h["sender"], "If-Match": etag(client, world.h["sender"], referral)},
        )
    )
    (disclosure,) = rows(app, Disclosure, Disclosure.referral_id == uuid.UUID(referral))
    assert disclosure.basis_type == "consent"
    assert world.consent is not None
    withdrawn = ok(
        client.post(
            f"{API}/consents/{world.consent['id']}/withdraw", json={}, headers=world.h["sender"]
        )
    )
    assert withdrawn["events"][-1]["effects"] == [
        {
            "type": "referral",
            "id": referral,
            "to_org_id": str(world.receiver_org),
            "status": "requested",
            "continues_under": "override",
            "override_reason": "vital_interests",
        }
    ]
    [row] = rows(app, AuditEvent, AuditEvent.action == "referral:basis-override")
    assert (row.resource_id, row.reason) == (referral, "vital_interests")
    # The override is the basis now: the packet stays, its reads name the override.
    ok(client.get(f"{API}/referrals/{referral}/packet", headers=world.h["receiver"]))
