"""Referral, note and consent writes racing each other (PostgreSQL; found by a reviewer's
race probes, each failing on the code before its fix):

- a withdrawal or an erasure approval racing the receiver opening its case from the
  referral failed its versioned UPDATE of the referral (412 to a call that sent no ETag),
  and nothing was withdrawn or erased: the referrals are now locked and read again;
- a send or a note racing a restriction (GDPR Art. 18) checked `restricted` at its start
  only and committed after it: the write re-checks it under the case row's lock;
- a create-and-send took the case row before the consents, a withdrawal the other way
  round: a deadlock (503); the send's consent hold now comes first."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from race_support import run_during
from referral_support import API, World, etag, ok, refer, request_erasure, walk
from sqlalchemy import text

from referral_api.extensions import db
from referral_api.referrals import service as referral_service

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL",
)


def sql(app: Any, query: str, **params: Any) -> list[Any]:
    with db.engine_for(app).connect() as connection:
        return list(connection.execute(text(query), params))


def test_withdrawal_racing_a_receivers_plain_transition_still_withdraws(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver marks the referral received (a move that takes no consent lock) while
    the person withdraws consent. The withdrawal is 'one call, effective at once': it must
    succeed and cancel the referral, not fail with 412 stale-etag (the caller of a withdrawal
    sent no ETag at all)."""
    world = World(factory, client)
    assert world.consent is not None
    referral_id = world.refer()["id"]

    withdraw = _withdrawal(app, world)

    during = run_during(
        monkeypatch,
        referral_service,
        "_audit",
        lambda _s, _a, action, *_r, **_k: action == "referral:received",
        withdraw,
    )
    moved = client.post(
        f"{API}/referrals/{referral_id}/transitions",
        json={"to": "received"},
        headers={**world.h["receiver"], "If-Match": etag(client, world.h["receiver"], referral_id)},
    )
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert ok(moved)["status"] == "received"
    withdrawn = during["response"]
    assert withdrawn.status_code == 200, (withdrawn.status_code, withdrawn.get_data(as_text=True))
    final = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["sender"]))
    assert (final["status"], final["status_reason"]) == ("cancelled", "consent_withdrawn")


def _withdrawal(app: Any, world: World) -> Callable[[], Any]:
    """The person withdrawing the world's consent, as a request of its own (for a thread)."""
    assert world.consent is not None
    consent_id = world.consent["id"]
    return lambda: app.test_client().post(
        f"{API}/consents/{consent_id}/withdraw", json={}, headers=world.h["sender"]
    )


def _restrict(app: Any, case_id: str, headers: dict[str, str]) -> Any:
    return app.test_client().post(
        f"{API}/cases/{case_id}/restriction", json={"restricted": True}, headers=headers
    )


def test_a_send_racing_a_restriction_does_not_go_out_on_the_restricted_case(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor restricts processing (Art. 18: 'nothing can be sent') while a caseworker
    sends a draft referral. The send checked `restricted` at its start and never again: the
    restriction commits in between, the send commits after it, and a disclosure of the
    restricted case is recorded (referral 'requested', a disclosures row)."""
    world = World(factory, client)
    referral_id = world.refer(send=False)["id"]
    tag = etag(client, world.h["sender"], referral_id)
    during = run_during(
        monkeypatch,
        referral_service,
        "consent_decision",
        lambda *_a, **_k: True,
        lambda: _restrict(app, world.case_id, world.h["sender_sup"]),
    )
    sent = client.post(
        f"{API}/referrals/{referral_id}/transitions",
        json={"to": "requested"},
        headers={**world.h["sender"], "If-Match": tag},
    )
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert ok(during["response"])["restricted"] is True
    restricted = sql(app, "SELECT restricted FROM cases WHERE id = :c", c=world.case_id)
    assert restricted == [(True,)]
    disclosures = sql(app, "SELECT COUNT(*) FROM disclosures WHERE referral_id = :r", r=referral_id)
    status = sql(app, "SELECT status FROM referrals WHERE id = :r", r=referral_id)
    # The send is refused (403 processing-restricted); nothing is disclosed about a
    # restricted case.
    assert (sent.status_code, status, disclosures) == (403, [("draft",)], [(0,)]), (
        sent.status_code,
        status,
        disclosures,
    )


def test_a_note_racing_a_restriction_is_not_added_to_the_restricted_case(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same check-then-act for a case note: authorised while the case was not restricted,
    committed after the restriction."""
    from referral_api.cases import service as case_service

    world = World(factory, client)
    during = run_during(
        monkeypatch,
        case_service,
        "authorize",
        lambda _s, _a, action, _c: str(action) == "case:note",
        lambda: _restrict(app, world.case_id, world.h["sender_sup"]),
    )
    note = client.post(
        f"{API}/cases/{world.case_id}/notes",
        json={"category": "needs", "text": "added under restriction"},
        headers=world.h["sender"],
    )
    during["thread"].join(timeout=60)
    assert ok(during["response"])["restricted"] is True
    notes = sql(app, "SELECT COUNT(*) FROM case_notes WHERE case_id = :c", c=world.case_id)
    assert (note.status_code, notes) == (403, [(0,)]), (note.status_code, notes)
    assert note.get_json()["type"] == "/problems/processing-restricted"
    # On the record like a refusal at the request's start.
    denials = sql(
        app,
        "SELECT action, resource_type FROM audit_events WHERE case_id = :c"
        " AND decision = 'deny' AND reason = 'processing restricted'",
        c=world.case_id,
    )
    assert [tuple(row) for row in denials] == [("case:note", "case")]


def _accepted_referral(client: Any, world: World) -> str:
    referral_id = world.refer()["id"]
    walk(client, world.h["receiver"], referral_id, "received", "accepted")
    return referral_id


def _open_case(client: Any, world: World, referral_id: str) -> Any:
    return client.post(f"{API}/referrals/{referral_id}/case", headers=world.h["receiver"])


def test_withdrawal_racing_the_receiver_opening_its_case_still_withdraws(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver opens its own case from an accepted referral (POST /referrals/{id}/case,
    which updates the referral row without touching the case row) while the person
    withdraws consent. The withdrawal read the referral before the open-case committed,
    waited on its row, and then failed its versioned UPDATE: 412 stale-etag for a call
    that sent no ETag, and the consent is NOT withdrawn."""
    world = World(factory, client)
    assert world.consent is not None
    referral_id = _accepted_referral(client, world)

    withdraw = _withdrawal(app, world)

    during = run_during(
        monkeypatch,
        referral_service,
        "_audit",
        lambda _s, _a, action, *_r, **_k: action == "referral:open-case",
        withdraw,
    )
    opened = _open_case(client, world, referral_id)
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert opened.status_code == 201, opened.get_data(as_text=True)
    assert during["waited"], "the withdrawal did not wait for the open-case"
    withdrawn = during["response"]
    events = sql(
        app,
        "SELECT event_type FROM consent_events WHERE consent_id = :c ORDER BY occurred_at",
        c=world.consent["id"],
    )
    status = sql(app, "SELECT status, status_reason FROM referrals WHERE id = :r", r=referral_id)
    assert (withdrawn.status_code, events[-1], status) == (
        200,
        ("withdrawn",),
        [("cancelled", "consent_withdrawn")],
    ), (withdrawn.status_code, withdrawn.get_data(as_text=True), events, status)


def test_erasure_approval_racing_the_receiver_opening_its_case_still_erases(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same race against an erasure approval (which cancels open referrals with versioned
    UPDATEs after locking the case row, a lock the open-case never takes)."""
    world = World(factory, client)
    referral_id = _accepted_referral(client, world)
    request_id = request_erasure(client, world)
    dpo = world.h["sender_dpo"]
    during = run_during(
        monkeypatch,
        referral_service,
        "_audit",
        lambda _s, _a, action, *_r, **_k: action == "referral:open-case",
        lambda: app.test_client().post(f"{API}/erasures/{request_id}/approve", headers=dpo),
    )
    opened = _open_case(client, world, referral_id)
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert opened.status_code == 201, opened.get_data(as_text=True)
    approved = during["response"]
    erased = sql(app, "SELECT erased FROM cases WHERE id = :c", c=world.case_id)
    assert (approved.status_code, erased) == (200, [(True,)]), (
        approved.status_code,
        approved.get_data(as_text=True),
        erased,
        during.get("waited"),
    )


def test_create_and_send_racing_a_withdrawal_does_not_deadlock(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /cases/{id}/referrals with send: true flushes the referral and its history row
    (which locks the case row: case_key_version) before its consent gate takes the case's
    consents FOR SHARE; a withdrawal takes the consent FOR UPDATE and then the case row.
    Opposite lock orders: PostgreSQL kills one of them (deadlock, 503). Either order of
    the two would be fine; a 503 (possibly on the withdrawal) is not."""
    world = World(factory, client)
    assert world.consent is not None

    withdraw = _withdrawal(app, world)

    during = run_during(
        monkeypatch,
        referral_service,
        "_audit",
        lambda _s, _a, action, *_r, **_k: action == "referral:create",
        withdraw,
    )
    sent = world.client.post(
        f"{API}/cases/{world.case_id}/referrals",
        json={
            "to_org_id": str(world.receiver_org),
            "purpose": world.purpose,
            "categories": world.shared,
            "send": True,
        },
        headers=world.h["sender"],
    )
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert during["waited"], "the withdrawal did not wait on the case row"
    withdrawn = during["response"]
    statuses = (sent.status_code, withdrawn.status_code)
    assert statuses == (201, 200), (
        statuses,
        sent.get_data(as_text=True),
        withdrawn.get_data(as_text=True),
    )
    final = ok(client.get(f"{API}/referrals/{sent.get_json()['id']}", headers=world.h["sender"]))
    assert (final["status"], final["status_reason"]) == ("cancelled", "consent_withdrawn")


def test_an_override_approval_racing_a_restriction_approves_nothing(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Approving sharing without consent is processing of the case, but writes nothing
    under its key: it re-checks the case under the row's lock itself (recheck_case), and is
    refused like one that began after the restriction (403, a deny row on the referral)."""
    world = World(factory, client, consent=False)
    draft = refer(
        client,
        world.h["sender"],
        world.case_id,
        world.receiver_org,
        world.shared,
        send=False,
        override_reason="vital_interests",
    )
    assert draft.status_code == 201, draft.get_data(as_text=True)
    referral_id = draft.get_json()["id"]
    during = run_during(
        monkeypatch,
        referral_service,
        "_require_processable",
        lambda _s, _r, action, **_k: action == "referral:approve-override",
        lambda: _restrict(app, world.case_id, world.h["sender_sup2"]),
    )
    approved = client.post(
        f"{API}/referrals/{referral_id}/override-approval",
        headers={**world.h["sender_sup"], "If-Match": draft.headers["ETag"]},
    )
    during["thread"].join(timeout=60)
    assert ok(during["response"])["restricted"] is True
    stored = sql(
        app, "SELECT override_approved_by IS NOT NULL FROM referrals WHERE id = :r", r=referral_id
    )
    assert (approved.status_code, [tuple(r) for r in stored]) == (403, [(False,)])
    denials = sql(
        app,
        "SELECT action, resource_type, resource_id FROM audit_events WHERE case_id = :c"
        " AND decision = 'deny' AND reason = 'processing restricted'",
        c=world.case_id,
    )
    assert [tuple(r) for r in denials] == [("referral:approve-override", "referral", referral_id)]


def test_opening_a_case_from_a_referral_holds_the_senders_case_against_a_restriction(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver copies the packet into a case of its own. The sender's case row is held
    from before the packet is read until the copy commits: a restriction asked for in
    between waits and comes after the copy, never between the check and the copy."""
    world = World(factory, client)
    referral_id = world.refer()["id"]
    walk(client, world.h["receiver"], referral_id, "received", "accepted")
    during = run_during(
        monkeypatch,
        referral_service,
        "read_packet",
        lambda *_a, **_k: True,
        lambda: _restrict(app, world.case_id, world.h["sender_sup"]),
    )
    opened = client.post(f"{API}/referrals/{referral_id}/case", headers=world.h["receiver"])
    during["thread"].join(timeout=60)
    assert opened.status_code == 201, opened.get_data(as_text=True)
    assert during["waited"], "the restriction did not wait for the copy"
    assert ok(during["response"])["restricted"] is True


def test_a_send_refused_by_a_racing_restriction_is_audited_like_one_refused_at_its_start(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(factory, client)
    referral_id = world.refer(send=False)["id"]

    def send() -> Any:
        return client.post(
            f"{API}/referrals/{referral_id}/transitions",
            json={"to": "requested"},
            headers={**world.h["sender"], "If-Match": etag(client, world.h["sender"], referral_id)},
        )

    during = run_during(
        monkeypatch,
        referral_service,
        "consent_decision",
        lambda *_a, **_k: True,
        lambda: _restrict(app, world.case_id, world.h["sender_sup"]),
    )
    assert send().status_code == 403  # met the restriction under the case's lock
    during["thread"].join(timeout=60)
    monkeypatch.undo()
    assert send().status_code == 403  # refused at its start
    denials = sql(
        app,
        "SELECT action, resource_type, resource_id, reason FROM audit_events"
        " WHERE case_id = :c AND decision = 'deny' ORDER BY id",
        c=world.case_id,
    )
    row = ("referral:requested", "referral", referral_id, "processing restricted")
    assert [tuple(r) for r in denials] == [row, row]
