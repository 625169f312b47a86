"""Referral-scoped routes (and notification ids, override reviews) answer a referral
the caller may not know and a made-up id identically."""

from __future__ import annotations

from typing import Any

import pytest
from oracle_support import diff, fresh, indistinguishable, send
from referral_support import API, World, move, ok, set_status

from referral_api.access.roles import OrgType, Role


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    w = World(factory, client)
    for name, role, org in (
        ("outsider_dpo", Role.DPO, w.outsider_org),
        ("receiver_dpo", Role.DPO, w.receiver_org),
        ("outsider_admin", Role.ORG_ADMIN, w.outsider_org),
    ):
        w.h[name] = factory.headers(factory.user(role, org))
    w.h["police"] = factory.headers(factory.user(Role.POLICE_OFFICER, factory.org(OrgType.POLICE)))
    return w


def _requests(rid: str) -> list[tuple[str, str, Any, dict[str, str]]]:
    return [
        ("GET", f"/referrals/{rid}", None, {}),
        ("GET", f"/referrals/{rid}/packet", None, {}),
        ("GET", f"/referrals/{rid}/messages", None, {}),
        ("POST", f"/referrals/{rid}/messages", {"body": "hello"}, {}),
        (
            "POST",
            f"/referrals/{rid}/messages",
            {"body": "hello"},
            {"Idempotency-Key": "probe-msg-1"},
        ),
        ("POST", f"/referrals/{rid}/transitions", {"to": "received"}, {}),
        ("POST", f"/referrals/{rid}/transitions", {"to": "received"}, {"If-Match": '"x"'}),
        (
            "POST",
            f"/referrals/{rid}/transitions",
            {"to": "entered_in_error", "reason": "wrong_recipient"},
            {"If-Match": '"x"'},
        ),
        (
            "POST",
            f"/referrals/{rid}/transitions",
            {"to": "cancelled", "reason": "no_longer_needed"},
            {},
        ),
        ("POST", f"/referrals/{rid}/override-approval", None, {}),
        ("POST", f"/referrals/{rid}/override-approval", None, {"If-Match": '"x"'}),
        ("POST", f"/referrals/{rid}/case", None, {}),
        ("POST", f"/dpo/overrides/{rid}/review", None, {}),
    ]


def _referrals(app: Any, client: Any, world: World) -> dict[str, str]:
    out: dict[str, str] = {}
    out["draft"] = world.refer(send=False)["id"]
    out["override-draft"] = world.refer(send=False, override_reason="child_protection")["id"]
    dropped = world.refer(send=False, override_reason="child_protection")["id"]
    ok(move(client, world.h["sender"], dropped, "cancelled", reason="sent_in_error"))
    out["dropped-draft"] = dropped
    eie = world.refer(send=False)["id"]
    ok(move(client, world.h["sender_sup"], eie, "entered_in_error", reason="wrong_case"))
    out["eie-draft"] = eie
    out["requested"] = world.refer()["id"]
    accepted = world.refer()["id"]
    set_status(app, accepted, "accepted")
    out["accepted"] = accepted
    completed = world.refer()["id"]
    set_status(app, completed, "completed")
    out["completed"] = completed
    return out


PROBERS = ["outsider", "outsider_sup", "outsider_dpo", "outsider_admin", "police"]


def _differences(client: Any, headers: dict[str, str], label: str, rid: str) -> list[str]:
    """Every referral route, for referral `rid` and for a made-up id, where the caller's
    answers (or the audit rows they write) differ."""
    found = []
    for real_req, fake_req in zip(_requests(rid), _requests(fresh()), strict=True):
        method, path, body, extra = real_req
        real = send(client, method, path, body, {**headers, **extra})
        fake = send(client, fake_req[0], fake_req[1], fake_req[2], {**headers, **fake_req[3]})
        if not indistinguishable(real, fake):
            found.append(f"{label} {method} {path}{diff(real, fake)}")
    return found


def test_a_non_party_sees_every_referral_like_a_made_up_id(
    app: Any, client: Any, world: World
) -> None:
    referrals = _referrals(app, client, world)
    failures = [
        f"{caller} {line}"
        for caller in PROBERS
        for label, rid in referrals.items()
        for line in _differences(client, world.h[caller], label, rid)
    ]
    assert not failures, "\n".join(failures)


def test_the_receiver_sees_an_unsent_referral_like_a_made_up_id(
    app: Any, client: Any, world: World
) -> None:
    referrals = _referrals(app, client, world)
    failures = [
        f"{caller} {line}"
        for caller in ("receiver", "receiver_sup", "receiver_dpo")
        for label in ("draft", "override-draft", "dropped-draft", "eie-draft")
        for line in _differences(client, world.h[caller], label, referrals[label])
    ]
    assert not failures, "\n".join(failures)


def test_notification_ids_of_another_org_answer_like_made_up_ids(
    app: Any, client: Any, world: World
) -> None:
    world.refer()
    sender_notes = ok(client.get(f"{API}/notifications", headers=world.h["sender"]))
    assert sender_notes
    nid = sender_notes[0]["id"]
    failures = []
    for caller in ("outsider", "outsider_sup", "receiver", "police"):
        real = client.post(f"{API}/notifications/{nid}/read", headers=world.h[caller])
        fake = client.post(f"{API}/notifications/{fresh()}/read", headers=world.h[caller])
        if not indistinguishable(real, fake):
            failures.append(f"{caller}{diff(real, fake)}")
    assert not failures, "\n".join(failures)


def test_referral_list_filters_reveal_nothing_of_other_orgs(
    app: Any, client: Any, world: World
) -> None:
    rid = world.refer()["id"]
    failures = []
    for caller in ("receiver", "outsider"):
        real = client.get(
            f"{API}/referrals", query_string={"case_id": world.case_id}, headers=world.h[caller]
        )
        fake = client.get(
            f"{API}/referrals", query_string={"case_id": fresh()}, headers=world.h[caller]
        )
        if not indistinguishable(real, fake):
            failures.append(f"{caller} case_id filter{diff(real, fake)}")
    assert rid  # the receiver's unfiltered list holds it (sanity)
    assert not failures, "\n".join(failures)
