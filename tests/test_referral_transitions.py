"""The referral status machine from the outside (DESIGN.md §8, issue 5).

Every legal move by every allowed actor succeeds, leaves a history row and a new ETag; every
illegal move answers 409 naming the allowed ones; the wrong party gets 403 (a non-party 404);
reasons, outcomes and If-Match are enforced; overrides need another supervisor's approval
and never lift an organisation-type ceiling.

The referral under test is put into its starting status directly in the database (arrange);
the move itself always goes through HTTP.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import assert_problem
from referral_support import (
    API,
    World,
    assert_no_leak,
    count,
    etag,
    move,
    ok,
    raw_bytes,
    rows,
    set_status,
)

from referral_api.access.roles import OrgType
from referral_api.audit.models import AuditEvent
from referral_api.referrals.models import Disclosure, Referral, ReferralTransition
from referral_api.referrals.vocabulary import (
    REASONS,
    TRANSITIONS,
    Party,
    ReferralStatus,
)

S = ReferralStatus

# Who acts for each party: the supervisor party is a supervisor of either organisation.
ACTORS: dict[Party, tuple[str, ...]] = {
    Party.SENDER: ("sender",),
    Party.RECEIVER: ("receiver",),
    Party.SUPERVISOR: ("sender_sup", "receiver_sup"),
}

# The parties each test actor holds (a supervisor is also a plain party of its own org).
PARTIES_OF: dict[str, set[Party]] = {
    "sender": {Party.SENDER},
    "sender_sup": {Party.SENDER, Party.SUPERVISOR},
    "receiver": {Party.RECEIVER},
    "receiver_sup": {Party.RECEIVER, Party.SUPERVISOR},
}


def _extra(to: ReferralStatus) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if to in REASONS:
        fields["reason"] = sorted(REASONS[to])[0]
    if to is S.COMPLETED:
        fields["outcome"] = "successful"
    return fields


LEGAL_MOVES = sorted(
    {
        (frm, to, actor)
        for (frm, to), parties in TRANSITIONS.items()
        for party in parties
        for actor in ACTORS[party]
        # A draft has not been sent: the receiving organisation does not know it exists.
        if not (frm is S.DRAFT and actor.startswith("receiver"))
    }
)


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    return World(factory, client)


def _referral_in(app: Any, world: World, status: ReferralStatus) -> str:
    referral_id: str = world.refer(send=False)["id"]
    if status is not S.DRAFT:
        set_status(app, referral_id, status.value)
    return referral_id


def _history(app: Any, referral_id: str) -> list[ReferralTransition]:
    found = rows(app, ReferralTransition, ReferralTransition.referral_id == uuid.UUID(referral_id))
    return sorted(found, key=lambda r: r.created_at)


def test_every_legal_move_by_every_allowed_actor(app: Any, client: Any, world: World) -> None:
    # One world for all moves (a fresh referral each): setting up per move would be slow.
    failures = []
    for frm, to, actor in LEGAL_MOVES:
        where = f"{frm.value} -> {to.value} by {actor}"
        referral_id = _referral_in(app, world, frm)
        headers = world.h[actor]
        before = etag(client, headers, referral_id)
        response = client.post(
            f"{API}/referrals/{referral_id}/transitions",
            json={"to": to.value, **_extra(to)},
            headers={**headers, "If-Match": before},
        )
        if response.status_code != 200:
            failures.append((where, response.status_code, response.get_json()))
            continue
        body = response.get_json()
        assert body["status"] == to.value, where
        assert body["status_reason"] == _extra(to).get("reason"), where
        assert body["outcome"] == ("successful" if to is S.COMPLETED else None), where
        new_etag = response.headers["ETag"]
        assert new_etag != before, where
        assert new_etag == etag(client, world.h["sender"], referral_id), where
        last = _history(app, referral_id)[-1]
        assert (last.from_status, last.to_status) == (frm, to), where
        assert last.reason == _extra(to).get("reason"), where
        assert last.actor_id == world.ids[actor], where
        org = world.sender_org if actor.startswith("sender") else world.receiver_org
        assert last.actor_org_id == org, where
    assert not failures, failures
    assert len(LEGAL_MOVES) == 43  # 14 single-party moves, 5 x 2 cancels, 19 entered_in_error


def test_every_illegal_move_is_409_naming_the_allowed_ones(
    app: Any, client: Any, world: World
) -> None:
    referral_id = world.refer(send=False)["id"]
    checked = 0
    for frm in S:
        # The receiving supervisor holds two parties; a draft is only the sender's to see.
        actor = "sender_sup" if frm is S.DRAFT else "receiver_sup"
        parties = PARTIES_OF[actor]
        set_status(app, referral_id, frm.value)
        tag = etag(client, world.h["sender"], referral_id)
        expected = sorted(
            t.value for (f, t), who in TRANSITIONS.items() if f is frm and who & parties
        )
        for to in S:
            if (frm, to) in TRANSITIONS:
                continue
            response = move_unchecked(client, world, actor, referral_id, to, tag)
            problem = assert_problem(response, 409)
            assert problem["type"] == "/problems/invalid-transition", (frm, to)
            assert problem["allowed_transitions"] == expected, (frm, to)
            checked += 1
    assert checked == len(S) ** 2 - len(TRANSITIONS)
    # Refused moves leave nothing behind: only the creation is in the history.
    assert [h.to_status for h in _history(app, referral_id)] == [S.DRAFT]


def test_wrong_party_is_403_and_a_non_party_404(app: Any, client: Any, world: World) -> None:
    referral_id = world.refer(send=False)["id"]
    everyone = ("sender", "sender_sup", "receiver", "receiver_sup")
    checked = 0
    for (frm, to), parties in TRANSITIONS.items():
        set_status(app, referral_id, frm.value)
        tag = etag(client, world.h["sender"], referral_id)
        for actor in everyone:
            if PARTIES_OF[actor] & parties:
                continue
            response = move_unchecked(client, world, actor, referral_id, to, tag)
            if frm is S.DRAFT and actor.startswith("receiver"):
                assert_problem(response, 404)  # an unsent draft does not exist for them
            else:
                assert_problem(response, 403)
            checked += 1
        # An organisation that is no party: 404 (its supervisor tries the supervisor's move).
        outsider = "outsider_sup" if Party.SUPERVISOR in parties else "outsider"
        assert_problem(move_unchecked(client, world, outsider, referral_id, to, tag), 404)
    assert checked > 40
    refused = rows(
        app,
        AuditEvent,
        AuditEvent.resource_id == referral_id,
        AuditEvent.decision == "deny",
        AuditEvent.action == "referral:transition",
    )
    assert len(refused) >= checked  # every refusal is on the record (404s included)
    assert sum(1 for e in refused if (e.reason or "").startswith("not the ")) == sum(
        1
        for (frm, _), parties in TRANSITIONS.items()
        for actor in ("sender", "sender_sup", "receiver", "receiver_sup")
        if not PARTIES_OF[actor] & parties and not (frm is S.DRAFT and actor.startswith("rec"))
    )
    # A DPO of the sending organisation reads referrals but never moves them.
    set_status(app, referral_id, S.REQUESTED.value)
    assert_problem(move_unchecked(client, world, "sender_dpo", referral_id, S.CANCELLED), 403)
    assert [h.to_status for h in _history(app, referral_id)] == [S.DRAFT]


def move_unchecked(
    client: Any, world: World, actor: str, referral_id: str, to: ReferralStatus, tag: str = ""
) -> Any:
    """A move with the current ETag (read as the sender unless given), so only who acts
    decides. A refused move changes no version, so a tag read once serves many attempts."""
    return client.post(
        f"{API}/referrals/{referral_id}/transitions",
        json={"to": to.value, **_extra(to)},
        headers={
            **world.h[actor],
            "If-Match": tag or etag(client, world.h["sender"], referral_id),
        },
    )


def test_reasons_are_required_and_coded(app: Any, client: Any, world: World) -> None:
    referral_id = world.refer(send=False)["id"]
    cases = {
        S.REJECTED: (S.RECEIVED, "receiver"),
        S.FAILED: (S.IN_PROGRESS, "receiver"),
        S.CANCELLED: (S.ACCEPTED, "sender"),
        S.ENTERED_IN_ERROR: (S.ACCEPTED, "receiver_sup"),
    }
    for to, (frm, actor) in cases.items():
        set_status(app, referral_id, frm.value)
        for fields in ({}, {"reason": None}, {"reason": ""}, {"reason": "felt_like_it"}):
            response = move(client, world.h[actor], referral_id, to.value, **fields)
            problem = assert_problem(response, 422)
            assert "reason" in problem["errors"]["json"], (to, fields)
        # A known code goes through (and is what the status_reason says).
        code = sorted(REASONS[to])[0]
        assert (
            ok(move(client, world.h[actor], referral_id, to.value, reason=code))["status_reason"]
            == code
        )
    # A move without a code list takes no reason: free text belongs in the encrypted note,
    # never in the plaintext status_reason the other party and the audit log see.
    set_status(app, referral_id, S.IN_PROGRESS.value)
    free_text = "CANARY-NOTE-7Q3X staying at her sister's, vul. Tykha 7"
    problem = assert_problem(
        move(client, world.h["receiver"], referral_id, "on_hold", reason=free_text[:48]), 422
    )
    assert "reason" in problem["errors"]["json"]
    held = ok(move(client, world.h["receiver"], referral_id, "on_hold", note=free_text))
    assert held["status_reason"] is None and "CANARY-NOTE" not in json.dumps(held)
    assert b"CANARY-NOTE" not in raw_bytes(app, "SELECT * FROM referral_transitions")
    assert b"CANARY-NOTE" not in raw_bytes(app, "SELECT * FROM audit_events")
    assert _history(app, referral_id)[-1].to_status is S.ON_HOLD
    # The business status is the receiver's workflow code, shown to the sender in plaintext:
    # free text is refused and changes nothing; a code is kept.
    set_status(app, referral_id, S.IN_PROGRESS.value)
    for text in (free_text[:64], "waiting for Olena", "", "x" * 65):
        problem = assert_problem(
            move(client, world.h["receiver"], referral_id, "on_hold", business_status=text), 422
        )
        assert "business_status" in problem["errors"]["json"], text
    current = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["receiver"]))
    assert (current["status"], current["business_status"]) == ("in_progress", None)
    coded = ok(
        move(client, world.h["receiver"], referral_id, "on_hold", business_status="intake-2")
    )
    assert coded["business_status"] == "intake-2"
    for table in ("referrals", "referral_transitions", "audit_events"):
        stored = raw_bytes(app, f"SELECT * FROM {table}")
        assert b"CANARY-NOTE" not in stored and b"Olena" not in stored, table
    # Completion records an outcome; only completion has one.
    set_status(app, referral_id, S.IN_PROGRESS.value)
    problem = assert_problem(move(client, world.h["receiver"], referral_id, "completed"), 422)
    assert "outcome" in problem["errors"]["json"]
    problem = assert_problem(
        move(client, world.h["receiver"], referral_id, "on_hold", outcome="successful"), 422
    )
    assert "outcome" in problem["errors"]["json"]
    problem = assert_problem(
        move(client, world.h["receiver"], referral_id, "completed", outcome="great"), 422
    )
    done = ok(
        move(
            client,
            world.h["receiver"],
            referral_id,
            "completed",
            outcome="not_successful",
            reason="partially_delivered",
        )
    )
    assert (done["status"], done["outcome"]) == ("completed", "not_successful")


def test_if_match_is_required_and_must_be_current(app: Any, client: Any, world: World) -> None:
    referral_id = world.refer()["id"]
    url = f"{API}/referrals/{referral_id}/transitions"
    missing = client.post(url, json={"to": "received"}, headers=world.h["receiver"])
    assert_problem(missing, 428)
    stale = etag(client, world.h["receiver"], referral_id)
    ok(move(client, world.h["receiver"], referral_id, "received"))
    response = client.post(
        url, json={"to": "accepted"}, headers={**world.h["receiver"], "If-Match": stale}
    )
    assert_problem(response, 412)
    wildcard = client.post(
        url, json={"to": "accepted"}, headers={**world.h["receiver"], "If-Match": "*"}
    )
    assert_problem(wildcard, 412)
    assert (
        ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["sender"]))["status"]
        == "received"
    )
    assert [h.to_status for h in _history(app, referral_id)] == [S.DRAFT, S.REQUESTED, S.RECEIVED]


# ---- overrides ----------------------------------------------------------------------------


def test_override_needs_another_supervisors_approval(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client, consent=False)
    # The person's consent does not cover this: without an override the gate says so.
    problem = assert_problem(
        client.post(
            f"{API}/cases/{world.case_id}/referrals",
            json={
                "to_org_id": str(world.receiver_org),
                "purpose": world.purpose,
                "categories": world.shared,
                "send": True,
            },
            headers=world.h["sender_sup"],
        ),
        409,
    )
    assert problem["type"] == "/problems/consent-required"

    draft = world.refer(
        by="sender_sup",
        send=False,
        override_reason="vital_interests",
        override_note="Imminent threat from the recruiter",
    )
    referral_id = draft["id"]
    assert draft["override_reason"] == "vital_interests" and draft["override_approved_at"] is None
    problem = assert_problem(move(client, world.h["sender_sup"], referral_id, "requested"), 409)
    assert problem["type"] == "/problems/override-approval-required"

    def approve(actor: str) -> Any:
        return client.post(
            f"{API}/referrals/{referral_id}/override-approval",
            headers={**world.h[actor], "If-Match": etag(client, world.h["sender"], referral_id)},
        )

    assert_problem(approve("sender_sup"), 403)  # four eyes: not who asked
    assert_problem(approve("sender"), 403)  # a caseworker approves nothing
    assert_problem(approve("outsider_sup"), 404)
    approvals = rows(app, AuditEvent, AuditEvent.action == "referral:approve-override")
    assert [e.decision for e in approvals] == ["deny", "deny", "deny"]
    no_etag = client.post(
        f"{API}/referrals/{referral_id}/override-approval", headers=world.h["sender_sup2"]
    )
    assert_problem(no_etag, 428)

    approved = ok(approve("sender_sup2"))
    assert approved["override_approved_at"] is not None
    assert_problem(approve("sender_sup2"), 409)  # once

    sent = ok(move(client, world.h["sender"], referral_id, "requested"))
    assert sent["status"] == "requested"
    (disclosure,) = rows(app, Disclosure, Disclosure.referral_id == uuid.UUID(referral_id))
    assert (disclosure.basis_type, disclosure.basis) == ("override", "vital_interests")
    assert disclosure.categories == ",".join(world.shared)
    audit = rows(app, AuditEvent, AuditEvent.resource_id == referral_id)
    (approval,) = [
        e for e in audit if e.action == "referral:approve-override" and e.decision == "allow"
    ]
    assert approval.actor_id == world.ids["sender_sup2"]
    assert approval.legal_basis == "override:vital_interests"
    assert "dpo_review" in (approval.details or "")
    (send,) = [e for e in audit if e.action == "referral:send" and e.decision == "allow"]
    assert send.legal_basis == "override:vital_interests"
    # The send refused before the approval is on the record too, with why.
    refused = [e.reason for e in audit if e.action == "referral:send" and e.decision == "deny"]
    assert refused == ["override not approved"]
    # The receiver's packet stands on the approved override.
    packet = client.get(f"{API}/referrals/{referral_id}/packet", headers=world.h["receiver"])
    assert sorted(ok(packet)["data"]) == world.shared
    assert_no_leak(packet, world.shared)


def test_override_is_approved_by_the_sending_organisation_only(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(factory, client, consent=False)
    referral_id = world.refer(send=False, override_reason="court_order")["id"]
    # The receiver never sees a draft; once sent it is too late to approve anything.
    response = client.post(
        f"{API}/referrals/{referral_id}/override-approval",
        headers={
            **world.h["receiver_sup"],
            "If-Match": etag(client, world.h["sender"], referral_id),
        },
    )
    assert_problem(response, 404)
    plain = world.refer(by="sender", send=False)["id"]
    response = client.post(
        f"{API}/referrals/{plain}/override-approval",
        headers={**world.h["sender_sup"], "If-Match": etag(client, world.h["sender"], plain)},
    )
    assert_problem(response, 409)  # asks for no override


def test_override_never_lifts_an_org_type_ceiling(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client, receiver_type=OrgType.POLICE, consent=False, shared=["identity"])
    for categories in (["identity", "health"], ["psychosocial"]):
        response = client.post(
            f"{API}/cases/{world.case_id}/referrals",
            json={
                "to_org_id": str(world.receiver_org),
                "purpose": "law_enforcement_report",
                "categories": categories,
                "override_reason": "vital_interests",
                "send": False,
            },
            headers=world.h["sender_sup"],
        )
        problem = assert_problem(response, 422)
        assert "categories" in problem["errors"]["json"]
    assert count(app, Referral, Referral.case_id == uuid.UUID(world.case_id)) == 0
