"""A closing event stamped by an app host whose clock runs ahead counts at once everywhere
(docs/consent-and-referrals.md: "a withdrawal is never undone by clock skew").

Host A records the withdrawal (or revocation, or entered-in-error) with its clock 30 s ahead;
every request after it runs on host B, whose clock is right. A live decision or state (no
explicit `at`) counts every stored closing event whatever its stamp; a question about an
explicit moment before the stamp replays strictly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import assert_problem, consent_if_match
from referral_support import (
    API,
    World,
    count,
    move,
    ok,
    refer,
    rows,
    walk,
)

from referral_api.audit.models import AuditEvent
from referral_api.consent import service as consent_service
from referral_api.referrals.models import Disclosure, Referral

SKEW = timedelta(seconds=30)

# (route, who may call it, body, the state it leaves)
CLOSINGS = [
    ("withdraw", "sender", {}, "withdrawn"),
    ("revoke", "sender_sup", {"reason": "Obtained under pressure"}, "revoked"),
    ("entered-in-error", "sender_sup", {"reason": "Wrong case"}, "entered_in_error"),
]


@contextmanager
def _host_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = consent_service.now
    monkeypatch.setattr(consent_service, "now", lambda: real() + SKEW)
    try:
        yield
    finally:
        monkeypatch.setattr(consent_service, "now", real)


def _close_ahead(
    client: Any,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    consent_id: str,
    closing: tuple[str, str, dict[str, Any], str] = CLOSINGS[0],
) -> dict[str, Any]:
    route, by, body, state = closing
    headers = world.h[by]
    if route != "withdraw":  # a withdrawal needs no If-Match
        headers = consent_if_match(client, consent_id, headers)
    with _host_ahead(monkeypatch):
        closed = ok(client.post(f"{API}/consents/{consent_id}/{route}", json=body, headers=headers))
    assert closed["state"] == state
    # The stamp is ahead of host B's clock: only a strict replay would ignore it.
    assert datetime.fromisoformat(closed["events"][-1]["occurred_at"]) > datetime.now(UTC)
    return closed  # type: ignore[no-any-return]


def _check(client: Any, world: World, at: datetime | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "recipient_org_id": str(world.receiver_org),
        "purpose": world.purpose,
        "categories": world.shared,
    }
    if at is not None:
        body["at"] = at.isoformat()
    return ok(  # type: ignore[no-any-return]
        client.post(
            f"{API}/cases/{world.case_id}/consent-check", json=body, headers=world.h["sender"]
        )
    )


@pytest.mark.parametrize("closing", CLOSINGS, ids=[c[0] for c in CLOSINGS])
def test_a_send_after_a_closing_stamped_ahead_is_refused_and_discloses_nothing(
    app: Any,
    client: Any,
    factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    closing: tuple[str, str, dict[str, Any], str],
) -> None:
    world = World(factory, client)
    assert world.consent is not None
    _close_ahead(client, world, monkeypatch, world.consent["id"], closing)

    refused = refer(client, world.h["sender"], world.case_id, world.receiver_org, world.shared)

    problem = assert_problem(refused, 409)
    assert problem["type"] == "/problems/consent-required"
    assert problem["missing_categories"] == world.shared
    assert count(app, Referral) == 0
    assert count(app, Disclosure) == 0
    (row,) = rows(app, AuditEvent, AuditEvent.request_id == refused.headers["X-Request-ID"])
    assert (row.action, row.decision, row.reason) == (
        "referral:send",
        "deny",
        "consent does not cover",
    )


def test_the_consent_reads_withdrawn_now_while_the_past_replays_strictly(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(factory, client)
    assert world.consent is not None
    consent_id = world.consent["id"]
    _close_ahead(client, world, monkeypatch, consent_id)
    sender = world.h["sender"]

    assert ok(client.get(f"{API}/consents/{consent_id}", headers=sender))["state"] == "withdrawn"
    listed = ok(client.get(f"{API}/cases/{world.case_id}/consents", headers=sender))
    assert [c["state"] for c in listed] == ["withdrawn"]
    receipt = ok(client.get(f"{API}/consents/{consent_id}/receipt", headers=sender))
    assert receipt["state"] == "withdrawn"
    assert _check(client, world) == {
        "permit": False,
        "provisions_used": {},
        "denied": dict.fromkeys(world.shared, "consent withdrawn"),
        "valid_until": None,
    }
    # Asked about an explicit moment before the withdrawal's stamp: the strict replay.
    assert _check(client, world, at=datetime.now(UTC))["permit"] is True

    # Nothing revives it, and the refusal names the state it is in.
    renewal = client.post(
        f"{API}/consents/{consent_id}/renew",
        json={"valid_until": (datetime.now(UTC) + timedelta(days=9)).isoformat()},
        headers=consent_if_match(client, consent_id, sender),
    )
    assert "withdrawn" in assert_problem(renewal, 409)["detail"]
    revocation = client.post(
        f"{API}/consents/{consent_id}/revoke",
        json={"reason": "Obtained under pressure"},
        headers=consent_if_match(client, consent_id, world.h["sender_sup"]),
    )
    assert "withdrawn" in assert_problem(revocation, 409)["detail"]
    events = ok(client.get(f"{API}/consents/{consent_id}", headers=sender))["events"]
    assert [e["event_type"] for e in events] == ["given", "withdrawn"]


def test_consent_expire_leaves_a_consent_withdrawn_ahead_alone(
    app: Any, client: Any, runner: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(factory, client, consent=False)
    now = datetime.now(UTC)
    ended = world.consent_to_receiver(
        valid_from=(now - timedelta(days=10)).isoformat(),
        valid_until=(now - timedelta(days=1)).isoformat(),
    )
    _close_ahead(client, world, monkeypatch, ended["id"])

    result = runner.invoke(args=["consent", "expire"])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == "0 consents marked expired"
    body = ok(client.get(f"{API}/consents/{ended['id']}", headers=world.h["sender"]))
    assert [e["event_type"] for e in body["events"]] == ["given", "withdrawn"]
    assert count(app, AuditEvent, AuditEvent.action == "consent:expire") == 0


def test_the_referral_is_cancelled_when_its_last_consent_closes_after_one_closed_ahead(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two consents cover a referral; host A (ahead) revokes one, host B then withdraws the
    other. The withdrawal's own check is live too: it finds no consent left and cancels
    the referral (it replayed events up to its own time and left the referral live,
    uncovered): no packet, no thread, nothing left for the DPO to chase."""
    world = World(factory, client)
    assert world.consent is not None
    second = world.consent_to_receiver()
    referral_id = world.refer()["id"]
    receiver = world.h["receiver"]
    walk(client, receiver, referral_id, "received")
    _close_ahead(client, world, monkeypatch, second["id"], CLOSINGS[1])
    ok(client.get(f"{API}/referrals/{referral_id}/packet", headers=receiver))  # still covered
    withdrawn = ok(
        client.post(f"{API}/consents/{world.consent['id']}/withdraw", headers=world.h["sender"])
    )
    (event,) = [e for e in withdrawn["events"] if e["event_type"] == "withdrawn"]
    assert [(e["id"], e["to"]) for e in event["effects"]] == [(referral_id, "cancelled")]

    assert_problem(client.get(f"{API}/referrals/{referral_id}/packet", headers=receiver), 404)
    messages = f"{API}/referrals/{referral_id}/messages"
    assert_problem(client.get(messages, headers=receiver), 404)
    sent = client.post(messages, json={"body": "Any news?"}, headers=world.h["sender"])
    assert_problem(sent, 409)
    assert_problem(move(client, receiver, referral_id, "accepted"), 409)
    (disclosure,) = rows(app, Disclosure, Disclosure.referral_id == uuid.UUID(referral_id))
    assert disclosure.acknowledged_at is not None  # by `received`, before; not by `accepted`
    report = ok(
        client.get(f"{API}/dpo/reports/processing-without-basis", headers=world.h["sender_dpo"])
    )
    assert referral_id not in {r["referral_id"] for r in report}


def test_the_dpo_reports_count_a_consent_withdrawn_ahead_as_withdrawn(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(factory, client, consent=False)
    ending = world.consent_to_receiver(
        valid_until=(datetime.now(UTC) + timedelta(days=5)).isoformat()
    )
    dpo = world.h["sender_dpo"]
    expiring = f"{API}/dpo/reports/consents-expiring?within_days=30"
    assert [r["consent_id"] for r in ok(client.get(expiring, headers=dpo))] == [ending["id"]]

    _close_ahead(client, world, monkeypatch, ending["id"])

    assert ok(client.get(expiring, headers=dpo)) == []
    summary = ok(client.get(f"{API}/dpo/reports/consent-summary", headers=dpo))
    assert [(r["state"], r["consents"]) for r in summary] == [("withdrawn", 1)]
