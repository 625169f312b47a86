"""What a repeated request (same Idempotency-Key) answers once the first one's data may no
longer be shown, and consent withdrawal while processing is restricted.

A replay answers the current state of what the first request made, read through the policy
and audited like a GET of it (docs/police-integration.md, referral_api/idempotency.py): after
the case is restricted or the consent withdrawn, the referral message the first answer held
is not disclosed again; after erasure a replay is 410 and no digest of the request body is
left. Consent can be withdrawn at any time (Art. 7(3)), restriction or not, and its referrals
stop then, not when the restriction is lifted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from conftest import assert_problem
from rights_support import API, World, new_token, ok, uuid_param
from sqlalchemy import func, select

from referral_api.audit.models import AuditEvent


@pytest.fixture
def world(app: Any, factory: Any, client: Any) -> World:
    return World(app, factory, client)


def restrict(world: World, case_id: str, restricted: bool) -> Any:
    return ok(
        world.client.post(
            f"{API}/cases/{case_id}/restriction",
            json={"restricted": restricted},
            headers=world.h["sup"],
        )
    )


def audit_rows(world: World) -> int:
    return int(world.scalars(select(func.count()).select_from(AuditEvent))[0])


def test_consent_can_be_withdrawn_while_processing_is_restricted(client: Any, world: World):
    token = new_token("withdraw")
    case_id = world.case(token)
    consent = world.consent(case_id, world.receiver_org, ["identity", "legal"])
    referral = world.refer(case_id, ["identity", "legal"], send=True, message=f"m {token}")["id"]
    ok(client.get(f"{API}/referrals/{referral}/packet", headers=world.h["receiver"]))
    restrict(world, case_id, True)

    withdrawn = ok(
        client.post(f"{API}/consents/{consent['id']}/withdraw", json={}, headers=world.h["worker"])
    )
    assert withdrawn["state"] == "withdrawn"
    # Everything else stays refused while restricted.
    assert_problem(client.get(f"{API}/consents/{consent['id']}", headers=world.h["worker"]), 403)

    restrict(world, case_id, False)
    # The referral stopped when the person withdrew, not later.
    assert_problem(
        client.get(f"{API}/referrals/{referral}/packet", headers=world.h["receiver"]), 404
    )
    assert ok(client.get(f"{API}/referrals/{referral}", headers=world.h["worker"]))["status"] == (
        "cancelled"
    )


def test_a_retried_withdrawal_on_a_restricted_case_shows_the_withdrawal(client: Any, world: World):
    """Found by review: a withdrawal's retry (same key, the first answer lost) answered as
    GET /consents/{id}, which a restriction refuses (403), so a client read a withdrawal
    that had happened as one that failed. It shows the withdrawn consent, as the withdrawal
    did, and is a read on the record; the consent stays closed by one event."""
    case_id = world.case(new_token("withdraw-retry"))
    consent = world.consent(case_id, world.receiver_org, ["identity", "legal"])
    restrict(world, case_id, True)
    url = f"{API}/consents/{consent['id']}/withdraw"
    headers = {**world.h["worker"], "Idempotency-Key": "withdraw-retry-0001"}
    first = ok(client.post(url, json={}, headers=headers))
    before = audit_rows(world)
    again = client.post(url, json={}, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert ok(again) == first
    assert first["state"] == "withdrawn"
    assert [e["event_type"] for e in first["events"]].count("withdrawn") == 1
    rows = world.scalars(
        select(AuditEvent).where(AuditEvent.resource_id == consent["id"]).order_by(AuditEvent.id)
    )
    assert audit_rows(world) == before + 1
    assert (rows[-1].action, rows[-1].decision) == ("consent:read", "allow")
    assert json.loads(rows[-1].details) == {"replay_of": "withdraw"}
    # The consent itself is still not read while restricted.
    assert_problem(client.get(f"{API}/consents/{consent['id']}", headers=world.h["worker"]), 403)


def test_listing_erasure_requests_is_audited_per_case(client: Any, world: World):
    first, second = world.case(new_token("erase-1")), world.case(new_token("erase-2"))
    requests = [world.request_erasure(first), world.request_erasure(second)]
    before = audit_rows(world)
    listed = ok(client.get(f"{API}/erasures", headers=world.h["dpo"]))
    assert sorted(r["case_id"] for r in listed) == sorted([first, second])
    rows = world.scalars(
        select(AuditEvent).where(AuditEvent.action == "erasure:list").order_by(AuditEvent.id)
    )
    assert audit_rows(world) == before + 2
    assert sorted((r.resource_id, str(r.case_id)) for r in rows) == sorted(
        zip(requests, [first, second], strict=True)
    )
    # An empty listing leaves one row saying nothing was shown.
    ok(client.get(f"{API}/erasures", query_string={"status": "refused"}, headers=world.h["dpo"]))
    assert audit_rows(world) == before + 3


# ---- replays ------------------------------------------------------------------------------


def _received_with_a_key(client: Any, world: World, token: str, key: str) -> tuple[Any, Any]:
    """A referral sent with a message, moved to `received` by the receiver with an
    Idempotency-Key: (the referral's id, a function repeating that request)."""
    case_id = world.case(token)
    consent = world.consent(case_id, world.receiver_org, ["identity", "legal"])
    referral = world.refer(case_id, ["identity", "legal"], send=True, message=f"msg {token}")["id"]
    etag = client.get(f"{API}/referrals/{referral}", headers=world.h["receiver"]).headers["ETag"]
    headers = {**world.h["receiver"], "If-Match": etag, "Idempotency-Key": key}

    def again() -> Any:
        return client.post(
            f"{API}/referrals/{referral}/transitions", json={"to": "received"}, headers=headers
        )

    first = ok(again())
    assert first["message"] == f"msg {token}"
    return (case_id, consent, referral), again


def test_a_replay_answers_the_current_view_and_is_audited(client: Any, world: World):
    token = new_token("replay")
    (_case, _consent, referral), again = _received_with_a_key(client, world, token, "replay-0001")

    def reads() -> int:
        return len(
            world.scalars(
                select(AuditEvent.id).where(
                    AuditEvent.action == "referral:read", AuditEvent.resource_id == referral
                )
            )
        )

    before = reads()
    replayed = again()
    assert replayed.status_code == 200
    assert replayed.headers["Idempotent-Replayed"] == "true"
    body = replayed.get_json()
    assert body["status"] == "received" and body["message"] == f"msg {token}"
    assert (
        replayed.headers["ETag"]
        == client.get(f"{API}/referrals/{referral}", headers=world.h["receiver"]).headers["ETag"]
    )
    # The replay read the referral as a GET does (one row), then the test's GET (another).
    assert reads() == before + 2


def test_a_replay_after_restriction_discloses_nothing(client: Any, world: World):
    token = new_token("replay-restricted")
    (case_id, _consent, _referral), again = _received_with_a_key(
        client, world, token, "replay-0002"
    )
    restrict(world, case_id, True)
    replayed = again()
    assert token not in replayed.get_data(as_text=True)


def test_a_replay_after_withdrawal_shows_the_cancelled_referral_without_its_message(
    client: Any, world: World
):
    token = new_token("replay-withdrawn")
    (_case, consent, _referral), again = _received_with_a_key(client, world, token, "replay-0003")
    ok(client.post(f"{API}/consents/{consent['id']}/withdraw", json={}, headers=world.h["worker"]))
    replayed = ok(again())
    assert replayed["status"] == "cancelled"
    assert token not in json.dumps(replayed)


def test_after_erasure_a_replay_is_gone_and_no_digest_of_the_body_is_left(
    app: Any, client: Any, world: World
):
    token = new_token("replay-erased")
    case_id = world.case(token)
    world.consent(case_id, world.receiver_org, ["identity", "legal"])
    referral = world.refer(case_id, ["identity", "legal"], send=True, message="hello")["id"]
    raw = json.dumps({"body": f"She is at {token}"}).encode()
    headers = {
        **world.h["receiver"],
        "Idempotency-Key": "message-0001",
        "Content-Type": "application/json",
    }
    url = f"{API}/referrals/{referral}/messages"
    ok(client.post(url, data=raw, headers=headers), 201)
    ok(world.approve(world.request_erasure(case_id)))

    digests = world.sql(
        "SELECT body_sha256 FROM idempotency_records WHERE case_id = :c",
        c=uuid_param(app, case_id),
    )
    assert digests and hashlib.sha256(raw).hexdigest() not in {d for (d,) in digests}
    assert_problem(client.post(url, data=raw, headers=headers), 410)
    # Another body under the same key is still another request.
    assert_problem(client.post(url, data=b'{"body": "x"}', headers=headers), 410)
