"""Idempotency-Key on POSTs (DESIGN.md §8, §10; issue 5): a police system retries safely.

Same key and body → the first response again, byte for byte, marked `Idempotent-Replayed`,
and nothing done twice; the same key with another body or on another endpoint → 422; keys
belong to one client; concurrent twins produce one set of rows; a failed request stores
nothing; stored responses are ciphertext.
"""

from __future__ import annotations

import copy
import threading
import uuid
from typing import Any

import pytest
from conftest import assert_problem
from idempotency_support import as_written_before
from referral_support import (
    API,
    MESSAGE_CANARY,
    World,
    canary_case,
    consent_body,
    count,
    etag,
    keyed_post,
    ok,
    provision,
    raw_bytes,
    record_consent,
    refer,
    rows,
)

from referral_api.access.roles import OrgType, Role, permissions_for
from referral_api.cases.models import Case
from referral_api.consent.models import ConsentRecord
from referral_api.idempotency import IdempotencyRecord, IdempotentResponse
from referral_api.referrals.models import (
    Disclosure,
    Referral,
    ReferralMessage,
    ReferralTransition,
)

KEY = "intake-2026-11-28-0001"


class Police:
    def __init__(self, factory: Any, client: Any, org_id: Any = None) -> None:
        self.org_id = org_id or factory.org(OrgType.POLICE)
        self.ngo_org = factory.org(OrgType.NGO)
        self.headers = self.token(factory, client)

    def token(self, factory: Any, client: Any) -> dict[str, str]:
        client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, self.org_id)
        body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        access = ok(client.post(f"{API}/auth/token", json=body))["access_token"]
        return {"Authorization": f"Bearer {access}", "X-Acting-Officer": "badge-7"}

    def intake(self, categories: tuple[str, ...] = ("identity", "contact")) -> dict[str, Any]:
        return {
            "case": canary_case(),
            "consent": consent_body(
                provision("psychosocial_support", ["identity", "contact"], org_id=self.ngo_org)
            ),
            "referral": {
                "to_org_id": str(self.ngo_org),
                "purpose": "psychosocial_support",
                "categories": list(categories),
                "urgency": "urgent",
            },
        }


def _counts(app: Any) -> tuple[int, ...]:
    return tuple(
        count(app, model)
        for model in (Case, ConsentRecord, Referral, Disclosure, IdempotencyRecord)
    )


def _intake(client: Any, headers: dict[str, str], body: Any, key: str = KEY) -> Any:
    return client.post(f"{API}/intake", json=body, headers={**headers, "Idempotency-Key": key})


@pytest.fixture
def police(factory: Any, client: Any) -> Police:
    return Police(factory, client)


def test_replay_answers_the_first_response_and_does_nothing_twice(
    app: Any, client: Any, police: Police
) -> None:
    body = police.intake()
    first = _intake(client, police.headers, body)
    ok(first, 201)
    assert "Idempotent-Replayed" not in first.headers
    assert _counts(app) == (1, 1, 1, 1, 1)
    for _ in range(2):
        again = _intake(client, police.headers, body)
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.get_data() == first.get_data()
        assert again.mimetype == "application/json"
    assert _counts(app) == (1, 1, 1, 1, 1)
    # Without a key, each call is a new request.
    ok(client.post(f"{API}/intake", json=body, headers=police.headers), 201)
    assert _counts(app) == (2, 2, 2, 2, 1)


def test_replay_of_a_transition_and_a_message(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client)
    referral_id = world.refer()["id"]
    receiver = world.h["receiver"]
    headers = {
        **receiver,
        "If-Match": etag(client, receiver, referral_id),
        "Idempotency-Key": "move-received-0001",
    }
    url = f"{API}/referrals/{referral_id}/transitions"
    first = client.post(url, json={"to": "received"}, headers=headers)
    ok(first)
    # The retry carries the ETag it sent first: it is stale now, yet the retry replays.
    again = client.post(url, json={"to": "received"}, headers=headers)
    assert (again.status_code, again.get_data()) == (200, first.get_data())
    assert again.headers["ETag"] == first.headers["ETag"]
    assert count(app, ReferralTransition) == 3  # draft, requested, received: once

    message = {"body": f"Arriving at 10:00 {MESSAGE_CANARY}"}
    message_headers = {**receiver, "Idempotency-Key": "message-0001-abc"}
    posted = client.post(
        f"{API}/referrals/{referral_id}/messages", json=message, headers=message_headers
    )
    ok(posted, 201)
    replayed = client.post(
        f"{API}/referrals/{referral_id}/messages", json=message, headers=message_headers
    )
    assert (replayed.status_code, replayed.get_data()) == (201, posted.get_data())
    assert count(app, ReferralMessage) == 1


def test_a_taken_case_code_at_intake_is_drawn_again_and_the_claim_kept(
    app: Any, client: Any, police: Police, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Intake's case is created inside the transaction that holds the idempotency claim: a
    case code already taken is drawn again there (a savepoint), and the intake is stored
    once, whole, and replayable; a code taken on every draw fails the request and stores
    nothing at all."""
    from referral_api.cases import service as case_service

    first = ok(_intake(client, police.headers, police.intake(), key="intake-first-0001"), 201)
    taken = first["case_code"]
    codes = iter([taken, "THB-NEWC-ODE3"])
    monkeypatch.setattr(case_service, "new_case_code", lambda _type: next(codes))
    body = police.intake()
    second = _intake(client, police.headers, body)
    ok(second, 201)
    assert second.get_json()["case_code"] == "THB-NEWC-ODE3"
    assert _counts(app) == (2, 2, 2, 2, 2)
    again = _intake(client, police.headers, body)
    assert (again.status_code, again.get_data()) == (201, second.get_data())
    assert again.headers["Idempotent-Replayed"] == "true"

    monkeypatch.setattr(case_service, "new_case_code", lambda _type: taken)
    failed = _intake(client, police.headers, police.intake(), key="intake-third-0003")
    assert_problem(failed, 500)
    assert _counts(app) == (2, 2, 2, 2, 2)


def test_a_refused_part_of_an_intake_is_named_inside_that_part(
    app: Any, client: Any, police: Police
) -> None:
    """Police intake carries a case, a consent and a referral: a rule one of them breaks is
    reported at that part's path of the intake body (as the schema's own errors are), and
    nothing of the intake is stored."""
    refusals = {}
    body = police.intake()
    body["case"]["assignee_id"] = str(uuid.uuid4())
    refusals["case"] = (body, "assignee_id")
    body = police.intake()
    body["consent"]["provisions"][0]["recipient_org_type"] = "legal_aid"  # and an org id
    refusals["consent"] = (body, "provisions")
    body = police.intake()
    body["referral"]["to_org_id"] = str(uuid.uuid4())
    refusals["referral"] = (body, "to_org_id")
    # No draft, so no supervisor to approve an override: one asked for was sent on the
    # consent and listed as sent without approval (a reviewer's probe).
    body = police.intake()
    body["referral"]["override_reason"] = "vital_interests"
    refusals["referral override"] = (body, "override_reason")
    for number, (label, (body, field)) in enumerate(refusals.items()):
        part = label.split()[0]
        response = _intake(client, police.headers, body, key=f"intake-refused-{number:04d}")
        errors = assert_problem(response, 422)["errors"]
        assert list(errors) == ["json"] and list(errors["json"]) == [part], errors
        assert field in errors["json"][part], errors
    assert _counts(app) == (0, 0, 0, 0, 0)


def test_same_key_with_another_body_or_endpoint_is_422(
    app: Any, client: Any, police: Police
) -> None:
    body = police.intake()
    ok(_intake(client, police.headers, body), 201)
    before = _counts(app)
    changed = copy.deepcopy(body)
    changed["case"]["risk_level"] = "low"
    problem = assert_problem(_intake(client, police.headers, changed), 422)
    assert "Idempotency-Key" in str(problem["errors"])
    # Another endpoint with the same key: refused too, whatever the body.
    referral_id = ok(client.get(f"{API}/referrals", headers=police.headers))[0]["id"]
    response = client.post(
        f"{API}/referrals/{referral_id}/messages",
        json={"body": "hello"},
        headers={**police.headers, "Idempotency-Key": KEY},
    )
    assert_problem(response, 422)
    assert _counts(app) == before
    assert count(app, ReferralMessage) == 0


def test_same_key_and_body_on_another_resource_is_422(app: Any, client: Any, factory: Any) -> None:
    world = World(factory, client)
    first, second = world.refer()["id"], world.refer()["id"]
    headers = {**world.h["sender"], "Idempotency-Key": "note-to-receiver-01"}
    message = {"body": "Is there a bed?"}
    ok(client.post(f"{API}/referrals/{first}/messages", json=message, headers=headers), 201)
    response = client.post(f"{API}/referrals/{second}/messages", json=message, headers=headers)
    problem = assert_problem(response, 422)
    assert "Idempotency-Key" in str(problem["errors"])
    assert count(app, ReferralMessage) == 1


def test_keys_belong_to_one_client(app: Any, client: Any, factory: Any, police: Police) -> None:
    colleague = police.token(factory, client)  # another API client of the same force
    other_force = Police(factory, client)
    body = police.intake()
    first = _intake(client, police.headers, body)
    second = _intake(client, colleague, body)
    third = _intake(client, other_force.headers, other_force.intake())
    for response in (first, second, third):
        ok(response, 201)
        assert "Idempotent-Replayed" not in response.headers
    assert len({r.get_json()["case_id"] for r in (first, second, third)}) == 3
    assert count(app, Case) == 3 and count(app, IdempotencyRecord) == 3


@pytest.mark.parametrize(
    "key", ["short", "has spaces in it", "x" * 129, "ключ-идемпотентности", "semi;colon;key"]
)
def test_a_malformed_key_is_422(app: Any, client: Any, police: Police, key: str) -> None:
    headers = {**police.headers, "Idempotency-Key": key}
    problem = assert_problem(
        client.post(f"{API}/intake", json=police.intake(), headers=headers), 422
    )
    assert "Idempotency-Key" in str(problem["errors"])
    assert count(app, Case) == 0


def test_a_key_with_a_trailing_line_break_is_422(app: Any, client: Any, police: Police) -> None:
    response = client.post(
        f"{API}/intake",
        json=police.intake(),
        headers=police.headers,
        environ_overrides={"HTTP_IDEMPOTENCY_KEY": "intake-key-0001\n"},
    )
    assert "Idempotency-Key" in str(assert_problem(response, 422)["errors"])
    assert count(app, Case) == 0


@pytest.mark.parametrize("key_was", ["new", "used-and-expired"])
def test_concurrent_twins_create_one_set_of_rows(app: Any, police: Police, key_was: str) -> None:
    """Two requests with one key at once make one set of rows; the other replays it. Also
    with a key whose earlier use has expired: both delete the old record, one claims it."""
    body = police.intake()
    before = (0, 0, 0, 0, 0)
    if key_was == "used-and-expired":
        ok(_intake(app.test_client(), police.headers, body, key="concurrent-twin-0001"), 201)
        _age_records(app, app.config["IDEMPOTENCY_KEY_TTL_SECONDS"] + 1)
        before = (1, 1, 1, 1, 0)
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def send(slot: int) -> None:
        twin = app.test_client()  # a separate client per thread, like two retrying sockets
        barrier.wait()
        results[slot] = _intake(twin, police.headers, body, key="concurrent-twin-0001")

    threads = [threading.Thread(target=send, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(r is not None for r in results)
    statuses = [r.status_code for r in results]
    assert statuses == [201, 201], [r.get_data(as_text=True) for r in results]
    assert results[0].get_data() == results[1].get_data()
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in results) == ["", "true"]
    assert _counts(app) == tuple(n + 1 for n in before)


def test_a_failed_request_stores_nothing_so_a_retry_can_succeed(
    app: Any, client: Any, factory: Any, police: Police
) -> None:
    # The intake's referral asks for a category its own consent does not cover: 409.
    body = police.intake(categories=("identity", "contact", "legal"))
    problem = assert_problem(_intake(client, police.headers, body), 409)
    assert problem["type"] == "/problems/consent-required"
    assert _counts(app) == (0, 0, 0, 0, 0)
    # Nothing was kept, so the same request is simply refused again (not replayed) ...
    again = _intake(client, police.headers, body)
    assert_problem(again, 409)
    assert "Idempotent-Replayed" not in again.headers
    assert _counts(app) == (0, 0, 0, 0, 0)
    # A body refused by validation keeps nothing either.
    malformed = police.intake()
    malformed["referral"]["urgency"] = "whenever"
    assert_problem(_intake(client, police.headers, malformed), 422)
    assert count(app, IdempotencyRecord) == 0
    # ... and the corrected request under the same key goes through.
    fixed = _intake(client, police.headers, police.intake())
    ok(fixed, 201)
    assert "Idempotent-Replayed" not in fixed.headers
    assert _counts(app) == (1, 1, 1, 1, 1)

    # The same for a referral: no consent → 409; the person consents; the same request
    # (same key, same body) now succeeds.
    world = World(factory, client, consent=False)
    headers = {**world.h["sender"], "Idempotency-Key": "refer-legal-aid-0001"}
    body = {
        "to_org_id": str(world.receiver_org),
        "purpose": world.purpose,
        "categories": world.shared,
        "send": True,
    }
    url = f"{API}/cases/{world.case_id}/referrals"
    assert_problem(client.post(url, json=body, headers=headers), 409)
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(world.purpose, world.shared, org_id=world.receiver_org),
    )
    sent = ok(client.post(url, json=body, headers=headers), 201)
    assert sent["status"] == "requested"
    assert count(app, Referral, Referral.case_id == uuid.UUID(world.case_id)) == 1


def test_a_keyed_request_keeps_ids_never_its_response(app: Any, client: Any, factory: Any) -> None:
    """Only police intake's response (ids and codes) is stored. Every other keyed POST keeps
    the id of what it made: its response (here a message to the receiver) is not copied,
    even encrypted, to outlive a correction, a restriction or the key's use."""
    world = World(factory, client)
    response = refer(
        client,
        world.h["sender"],
        world.case_id,
        world.receiver_org,
        world.shared,
        purpose=world.purpose,
        message=f"She is at the bus station {MESSAGE_CANARY}",
    )
    assert response.status_code == 201
    keyed = client.post(
        f"{API}/cases/{world.case_id}/referrals",
        json={
            "to_org_id": str(world.receiver_org),
            "purpose": world.purpose,
            "categories": world.shared,
            "message": f"Second, keyed {MESSAGE_CANARY}",
        },
        headers={**world.h["sender"], "Idempotency-Key": "keyed-referral-0001"},
    )
    assert MESSAGE_CANARY in ok(keyed, 201)["message"]
    assert count(app, IdempotentResponse) == 0
    assert MESSAGE_CANARY.encode() not in raw_bytes(app, "SELECT * FROM idempotency_records")
    (record,) = rows(app, IdempotencyRecord)
    assert (str(record.resource_id), str(record.case_id)) == (keyed.get_json()["id"], world.case_id)
    # And yet it replays the plaintext response.
    replay = client.post(
        f"{API}/cases/{world.case_id}/referrals",
        json={
            "to_org_id": str(world.receiver_org),
            "purpose": world.purpose,
            "categories": world.shared,
            "message": f"Second, keyed {MESSAGE_CANARY}",
        },
        headers={**world.h["sender"], "Idempotency-Key": "keyed-referral-0001"},
    )
    assert replay.get_data() == keyed.get_data()
    assert replay.headers["Idempotent-Replayed"] == "true"


# ---- the case, note and consent POSTs -----------------------------------------------------


def _actions(app: Any, response: Any) -> list[str]:
    from sqlalchemy import select

    from referral_api.audit.models import AuditEvent
    from referral_api.extensions import db

    with db.session_factory_for(app)() as s:
        actions = s.scalars(
            select(AuditEvent.action).where(
                AuditEvent.request_id == response.headers["X-Request-ID"]
            )
        ).all()
        s.rollback()
    return list(actions)


@pytest.mark.parametrize("written_before", [False, True], ids=["ids-only", "response-stored"])
def test_a_retried_case_creation_makes_one_case_and_answers_it_as_it_is_now(
    app: Any, client: Any, police: Police, monkeypatch: pytest.MonkeyPatch, written_before: bool
) -> None:
    """POST /cases with a key: the retry creates nothing, answers 201 with the case as a GET
    shows it now (its new ETag after a change, audited as a read); another body is 422. A
    case code already taken is drawn again inside the key's transaction (a savepoint). So
    too for a key an earlier version recorded (its response stored, no id): such records
    are honoured for their time to live after an upgrade."""
    from referral_api.cases import service as case_service

    url, body = f"{API}/cases", canary_case()
    first = keyed_post(client, url, police.headers, body, "case-create-0001")
    created = ok(first, 201)
    assert _actions(app, first) == ["case:create"]
    if written_before:
        as_written_before(app, "case-create-0001", first.get_data(as_text=True))
    changed = client.patch(
        f"{url}/{created['id']}",
        json={"risk_level": "low"},
        headers={**police.headers, "If-Match": first.headers["ETag"]},
    )
    ok(changed)
    again = keyed_post(client, url, police.headers, body, "case-create-0001")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == created["id"]
    assert again.get_json()["risk_level"] == "low"
    assert again.headers["ETag"] == changed.headers["ETag"]
    assert _actions(app, again) == ["case:read"]
    assert count(app, Case) == 1
    other = keyed_post(
        client, url, police.headers, {**body, "risk_level": "medium"}, "case-create-0001"
    )
    assert "Idempotency-Key" in str(assert_problem(other, 422)["errors"])

    codes = iter([created["case_code"], "THB-NEWC-ODE4"])
    monkeypatch.setattr(case_service, "new_case_code", lambda _type: next(codes))
    second = ok(keyed_post(client, url, police.headers, body, "case-create-0002"), 201)
    assert second["case_code"] == "THB-NEWC-ODE4"
    assert count(app, Case) == 2 and count(app, IdempotencyRecord) == 2
    replayed = keyed_post(client, url, police.headers, body, "case-create-0002")
    assert replayed.get_json()["id"] == second["id"]
    monkeypatch.undo()
    # Without a key, every POST is a case of its own, as before.
    ok(client.post(url, json=body, headers=police.headers), 201)
    assert count(app, Case) == 3


def test_a_retried_note_is_added_once(app: Any, client: Any, police: Police) -> None:
    case_id = ok(client.post(f"{API}/cases", json=canary_case(), headers=police.headers), 201)["id"]
    url = f"{API}/cases/{case_id}/notes"
    body = {"category": "needs", "text": "Asked for winter clothes"}
    first = ok(keyed_post(client, url, police.headers, body, "note-0001"), 201)
    again = keyed_post(client, url, police.headers, body, "note-0001")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first
    assert _actions(app, again) == ["case:read"]
    assert [n["id"] for n in ok(client.get(url, headers=police.headers))] == [first["id"]]


def test_a_note_replay_shows_no_note_of_another_case_and_no_missing_one(
    app: Any, client: Any, police: Police
) -> None:
    """A replay answers the note its first request added through `read_note`, which takes
    the note id the first request recorded and the case from the URL: a note of another case,
    or none at all, is a 404 on the record (deny, `no such note`), never the note."""
    from referral_api.access.actor import Actor, ActorKind
    from referral_api.cases import service as case_service
    from referral_api.exceptions import NotFound
    from referral_api.extensions import db

    first, second = (
        ok(client.post(f"{API}/cases", json=canary_case(), headers=police.headers), 201)["id"]
        for _ in range(2)
    )
    body = {"category": "needs", "text": "Asked for winter clothes"}
    note = ok(client.post(f"{API}/cases/{first}/notes", json=body, headers=police.headers), 201)
    actor = Actor(
        kind=ActorKind.CLIENT,
        id=uuid.uuid4(),
        org_id=police.org_id,
        org_type=OrgType.POLICE,
        role=Role.POLICE_OFFICER,
        permissions=permissions_for(Role.POLICE_OFFICER),
    )
    with app.test_request_context():
        shown = case_service.read_note(db.session, actor, uuid.UUID(first), uuid.UUID(note["id"]))
        assert shown.text == body["text"]
        db.session.rollback()
        for case_id, note_id in ((second, note["id"]), (first, str(uuid.uuid4()))):
            with pytest.raises(NotFound) as refused:
                case_service.read_note(db.session, actor, uuid.UUID(case_id), uuid.UUID(note_id))
            assert refused.value.audit == {
                "action": "case:read",
                "resource_type": "case_note",
                "resource_id": note_id,
                "case_id": uuid.UUID(case_id),
                "decision": "deny",
                "reason": "no such note",
            }
            db.session.rollback()


def test_a_retried_consent_is_recorded_once_and_its_withdrawal_stops_sharing(
    app: Any, client: Any, police: Police
) -> None:
    """The retry of a consent POST made a second, hidden consent: withdrawing the one the
    system was told about left the other permitting disclosure. Now the retry answers the
    one consent as it is (withdrawn, after the withdrawal), and a retried withdrawal
    answers it again instead of 409."""
    case_id = ok(client.post(f"{API}/cases", json=canary_case(), headers=police.headers), 201)["id"]
    body = consent_body(provision("psychosocial_support", ["identity"], org_id=police.ngo_org))
    url = f"{API}/cases/{case_id}/consents"
    first = ok(keyed_post(client, url, police.headers, body, "consent-0001"), 201)
    assert (
        ok(keyed_post(client, url, police.headers, body, "consent-0001"), 201)["id"] == first["id"]
    )
    assert count(app, ConsentRecord) == 1

    withdraw = f"{API}/consents/{first['id']}/withdraw"
    withdrawn = ok(keyed_post(client, withdraw, police.headers, {}, "withdraw-0001"))
    assert withdrawn["state"] == "withdrawn"
    retried = keyed_post(client, withdraw, police.headers, {}, "withdraw-0001")
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_json()["state"] == "withdrawn"
    assert [e["event_type"] for e in retried.get_json()["events"]].count("withdrawn") == 1
    replayed = ok(keyed_post(client, url, police.headers, body, "consent-0001"), 201)
    assert replayed["state"] == "withdrawn"
    check = client.post(
        f"{API}/cases/{case_id}/consent-check",
        json={
            "recipient_org_id": str(police.ngo_org),
            "purpose": "psychosocial_support",
            "categories": ["identity"],
        },
        headers=police.headers,
    )
    assert ok(check)["permit"] is False


# ---- keys expire --------------------------------------------------------------------------


def _age_records(app: Any, seconds: int, *where: Any) -> None:
    """Move the first use of the matching keys `seconds` into the past."""
    from datetime import timedelta

    from sqlalchemy import select

    from referral_api.extensions import db

    with db.session_factory_for(app)() as s:
        for record in s.scalars(select(IdempotencyRecord).where(*where)):
            record.created_at -= timedelta(seconds=seconds)
        s.commit()


def test_a_key_past_its_time_to_live_is_a_new_request(
    app: Any, client: Any, police: Police
) -> None:
    """A key is honoured for IDEMPOTENCY_KEY_TTL_SECONDS: after that the same key (with the
    same body or another) makes a new case, and the expired record and its stored response
    (the first case's body, encrypted) are gone, replaced by the new use's."""
    ttl = app.config["IDEMPOTENCY_KEY_TTL_SECONDS"]
    url, body = f"{API}/cases", canary_case()
    first = ok(keyed_post(client, url, police.headers, body, "case-create-0001"), 201)
    _age_records(app, ttl - 60)
    replayed = keyed_post(client, url, police.headers, body, "case-create-0001")
    assert replayed.headers["Idempotent-Replayed"] == "true"  # still inside the window
    assert replayed.get_json()["id"] == first["id"]

    _age_records(app, 120)  # now past it
    again = keyed_post(client, url, police.headers, body, "case-create-0001")
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["id"] != first["id"]
    assert count(app, Case) == 2
    (record,) = rows(app, IdempotencyRecord)
    assert str(record.resource_id) == again.get_json()["id"] != first["id"]
    # The renewed key replays the new case, and refuses another body again.
    assert (
        keyed_post(client, url, police.headers, body, "case-create-0001").get_json()["id"]
        == (again.get_json()["id"])
    )
    other = keyed_post(
        client, url, police.headers, {**body, "risk_level": "low"}, "case-create-0001"
    )
    assert "Idempotency-Key" in str(assert_problem(other, 422)["errors"])
    assert count(app, Case) == 2


def test_an_expired_key_reused_by_a_request_that_fails_keeps_its_record(
    app: Any, client: Any, police: Police
) -> None:
    """Refused requests change nothing: the expired record is deleted only together with a
    new use of its key that succeeds."""
    ttl = app.config["IDEMPOTENCY_KEY_TTL_SECONDS"]
    url, body = f"{API}/cases", canary_case()
    made = ok(keyed_post(client, url, police.headers, body, "case-create-0001"), 201)
    _age_records(app, ttl + 60)
    refused = keyed_post(
        client, url, police.headers, {**body, "case_type": "other"}, "case-create-0001"
    )
    assert_problem(refused, 422)
    (record,) = rows(app, IdempotencyRecord)
    assert str(record.resource_id) == made["id"]


def test_retention_apply_deletes_expired_keys_and_their_stored_responses(
    app: Any, client: Any, police: Police, runner: Any
) -> None:
    from referral_api.audit.models import AuditEvent

    ttl = app.config["IDEMPOTENCY_KEY_TTL_SECONDS"]
    old = keyed_post(client, f"{API}/cases", police.headers, canary_case(), "old-key-0001")
    as_written_before(app, "old-key-0001", ok(old, 201))  # its response stored
    old_intake = ok(
        keyed_post(client, f"{API}/intake", police.headers, police.intake(), "old-key-0002"), 201
    )
    fresh = ok(
        keyed_post(client, f"{API}/intake", police.headers, police.intake(), "new-key-0001"), 201
    )
    _age_records(app, ttl + 1, IdempotencyRecord.key.like("old-key-%"))

    listed = runner.invoke(args=["retention", "run"])
    assert listed.exit_code == 0, listed.output
    assert count(app, IdempotencyRecord) == 3  # listing changes nothing

    applied = runner.invoke(args=["retention", "run", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert "2 expired idempotency keys deleted" in applied.output
    assert count(app, IdempotencyRecord, IdempotencyRecord.key.like("old-key-%")) == 0
    assert count(app, IdempotentResponse) == 1  # the fresh intake's response
    (kept,) = rows(app, IdempotentResponse)
    assert str(kept.case_id) == fresh["case_id"] != old_intake["case_id"]
    assert count(app, IdempotencyRecord) == 1
    assert count(app, AuditEvent, AuditEvent.action == "idempotency:purge") == 1
    # The cases themselves stay.
    assert count(app, Case) == 3
    again = runner.invoke(args=["retention", "run", "--apply"])
    assert "idempotency" not in again.output
    assert count(app, AuditEvent, AuditEvent.action == "idempotency:purge") == 1
