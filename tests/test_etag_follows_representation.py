"""A strong ETag changes whenever the representation it names does, including changes made
by a request to another resource (found by review): an organisation's rename showed in its
services with their old ETags; a case's restriction hid its referrals' message with theirs;
an erasure cleared a closed referral's message and workflow code with its. Each test fails
without its fix, and checks that an `If-Match` with the ETag read before is then stale."""

from __future__ import annotations

from typing import Any

from conftest import assert_problem
from input_support import API, World, ok
from rights_support import World as RightsWorld
from rights_support import new_token


def test_a_service_takes_a_new_etag_when_its_organisation_is_renamed(app, client, factory):
    w = World(app, client, factory)
    before = client.get(f"{API}/services/{w.service}", headers=w.h["admin"])
    org_etag = client.get(f"{API}/orgs/{w.ngo}", headers=w.h["padmin"]).headers["ETag"]
    ok(
        client.patch(
            f"{API}/orgs/{w.ngo}",
            json={"name": "Renamed NGO"},
            headers={**w.h["padmin"], "If-Match": org_etag},
        )
    )
    after = client.get(f"{API}/services/{w.service}", headers=w.h["admin"])
    assert before.get_json()["org_name"] != "Renamed NGO"
    assert after.get_json()["org_name"] == "Renamed NGO"
    assert before.headers["ETag"] != after.headers["ETag"]
    stale = client.patch(
        f"{API}/services/{w.service}",
        json={"name": "Shelter renamed"},
        headers={**w.h["admin"], "If-Match": before.headers["ETag"]},
    )
    assert_problem(stale, 412)
    ok(
        client.patch(
            f"{API}/services/{w.service}",
            json={"name": "Shelter renamed"},
            headers={**w.h["admin"], "If-Match": after.headers["ETag"]},
        )
    )


def _restrict(client: Any, w: World, restricted: bool) -> None:
    ok(
        client.post(
            f"{API}/cases/{w.case}/restriction", json={"restricted": restricted}, headers=w.h["sup"]
        )
    )


def test_a_referral_takes_a_new_etag_while_its_case_is_restricted(app, client, factory):
    w = World(app, client, factory)
    made = client.post(
        f"{API}/cases/{w.case}/referrals",
        json={
            "to_org_id": str(w.recv),
            "purpose": "legal_assistance",
            "categories": ["identity"],
            "send": False,
            "message": "Please call her on Monday",
        },
        headers=w.h["worker"],
    )
    rid = ok(made, 201)["id"]
    url = f"{API}/referrals/{rid}"
    before = client.get(url, headers=w.h["worker"])
    assert before.get_json()["message"] == "Please call her on Monday"
    assert before.headers["ETag"] == made.headers["ETag"]

    _restrict(client, w, True)
    during = client.get(url, headers=w.h["worker"])
    assert "message" not in during.get_json()
    assert during.get_json()["version"] == before.get_json()["version"]
    assert during.headers["ETag"] != before.headers["ETag"]
    # A move sent with the ETag of the view that showed the message is stale.
    stale = client.post(
        f"{url}/transitions",
        json={"to": "cancelled", "reason": "sent_in_error"},
        headers={**w.h["worker"], "If-Match": before.headers["ETag"]},
    )
    assert_problem(stale, 412)

    _restrict(client, w, False)
    again = client.get(url, headers=w.h["worker"])
    assert again.get_json()["message"] == "Please call her on Monday"
    # Nothing of the referral changed: the view, and so its ETag, is the one from before.
    assert again.headers["ETag"] == before.headers["ETag"]
    moved = client.post(
        f"{url}/transitions",
        json={"to": "cancelled", "reason": "sent_in_error"},
        headers={**w.h["worker"], "If-Match": again.headers["ETag"]},
    )
    assert ok(moved)["status"] == "cancelled"


def test_a_closed_referral_takes_a_new_etag_when_the_erasure_clears_it(app, client, factory):
    world = RightsWorld(app, factory, client)
    token = new_token("etag")
    case_id = world.case(token)
    world.consent(case_id, world.receiver_org, ["identity", "legal"])
    done = world.refer(case_id, ["identity"], send=True, message=f"done {token}")["id"]
    world.move(done, "rejected", reason="no_capacity", business_status="intake-2")
    before = client.get(f"{API}/referrals/{done}", headers=world.h["worker"])
    assert before.get_json()["business_status"] == "intake-2"
    assert before.get_json()["message"] == f"done {token}"

    ok(world.approve(world.request_erasure(case_id)))
    after = client.get(f"{API}/referrals/{done}", headers=world.h["worker"])
    body: dict[str, Any] = after.get_json()
    assert body["business_status"] is None
    assert body.get("message") is None
    assert body["version"] == before.get_json()["version"] + 1
    assert after.headers["ETag"] != before.headers["ETag"]
