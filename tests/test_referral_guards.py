"""Referral guards found missing by a reviewer's probes: who may set what, to whom a referral
may go, and what a closed or restricted referral still takes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import assert_problem
from referral_support import (
    API,
    MESSAGE_CANARY,
    World,
    count,
    etag,
    move,
    ok,
    provision,
    record_consent,
    refer,
    rows,
    walk,
)
from test_directory import add_service

from referral_api.access.roles import OrgType
from referral_api.directory.models import Service, ServiceStatus
from referral_api.extensions import db
from referral_api.referrals.models import Disclosure, Notification, Referral, ReferralMessage


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    return World(factory, client)


def _get(client: Any, world: World, rid: str, who: str = "sender") -> dict[str, Any]:
    return ok(client.get(f"{API}/referrals/{rid}", headers=world.h[who]))  # type: ignore[no-any-return]


def test_the_sender_cannot_overwrite_the_receivers_business_status(
    client: Any, world: World
) -> None:
    rid = world.refer()["id"]
    walk(client, world.h["receiver"], rid, "accepted")
    ok(move(client, world.h["receiver"], rid, "in_progress", business_status="intake-2"))
    # The sender cancels and overwrites the receiver's own workflow label.
    response = move(
        client,
        world.h["sender"],
        rid,
        "cancelled",
        reason="no_longer_needed",
        business_status="sender-label",
    )
    problem = assert_problem(response, 422)
    assert "business_status" in str(problem["errors"])
    after = _get(client, world, rid, "receiver")
    assert (after["business_status"], after["status"]) == ("intake-2", "in_progress")


def test_a_draft_is_not_sent_to_an_organisation_deactivated_since(
    app: Any, client: Any, world: World
) -> None:
    from referral_api.auth.models import Organisation
    from referral_api.extensions import db

    rid = world.refer(send=False)["id"]
    with db.session_factory_for(app)() as s:
        org = s.get(Organisation, world.receiver_org)
        org.active = False
        s.commit()
    response = move(client, world.h["sender"], rid, "requested")
    assert "no longer active" in assert_problem(response, 409)["detail"]
    assert _get(client, world, rid)["status"] == "draft"
    assert count(app, Disclosure, Disclosure.referral_id == uuid.UUID(rid)) == 0


def test_an_override_is_not_approved_on_a_restricted_case(
    app: Any, client: Any, factory: Any
) -> None:
    world = World(factory, client, consent=False)
    rid = world.refer(by="sender", send=False, override_reason="vital_interests")["id"]
    ok(
        client.post(
            f"{API}/cases/{world.case_id}/restriction",
            json={"restricted": True},
            headers=world.h["sender_sup"],
        )
    )
    response = client.post(
        f"{API}/referrals/{rid}/override-approval",
        headers={**world.h["sender_sup"], "If-Match": etag(client, world.h["sender"], rid)},
    )
    assert_problem(response, 403)
    (ref,) = rows(app, Referral, Referral.id == uuid.UUID(rid))
    assert ref.override_approved_at is None


def test_the_platform_organisation_receives_no_referrals(
    app: Any, client: Any, world: World, factory: Any
) -> None:
    platform = factory.org(OrgType.PLATFORM)
    record_consent(
        client,
        world.h["sender"],
        world.case_id,
        provision(world.purpose, ["identity"], org_id=platform),
    )
    response = client.post(
        f"{API}/cases/{world.case_id}/referrals",
        json={
            "to_org_id": str(platform),
            "purpose": world.purpose,
            "categories": ["identity"],
            "send": True,
        },
        headers=world.h["sender"],
    )
    assert "to_org_id" in str(assert_problem(response, 422)["errors"])
    assert count(app, Disclosure, Disclosure.to_org_id == platform) == 0


def test_no_message_goes_to_a_thread_the_receiver_can_no_longer_read(
    app: Any, client: Any, world: World
) -> None:
    assert world.consent is not None
    rid = world.refer()["id"]
    ok(
        client.post(
            f"{API}/consents/{world.consent['id']}/withdraw", json={}, headers=world.h["sender"]
        )
    )
    before = count(app, Notification, Notification.org_id == world.receiver_org)
    response = client.post(
        f"{API}/referrals/{rid}/messages",
        json={"body": f"Where is she now? {MESSAGE_CANARY}"},
        headers=world.h["sender"],
    )
    # The receiver could never read it (its access ended), yet it was stored and announced.
    stored = count(app, ReferralMessage, ReferralMessage.referral_id == uuid.UUID(rid))
    after = count(app, Notification, Notification.org_id == world.receiver_org)
    assert response.status_code == 409 and stored == 0 and after == before, (
        response.status_code,
        stored,
        after - before,
    )


def test_a_disclosure_the_consent_gate_refuses_is_on_the_record(
    app: Any, client: Any, factory: Any
) -> None:
    """A send refused for want of consent (409) wrote no audit row: a denied disclosure, the
    kind a DPO most needs to see, left no trace (found in a review of the docs against the
    code). Now a `deny` row names the action, the reason and the categories refused."""
    from referral_api.audit.models import AuditEvent

    world = World(factory, client, consent=False)
    refused = refer(
        client,
        world.h["sender"],
        world.case_id,
        world.receiver_org,
        world.shared,
        purpose=world.purpose,
    )
    assert_problem(refused, 409)
    (row,) = rows(app, AuditEvent, AuditEvent.request_id == refused.headers["X-Request-ID"])
    assert (row.action, row.decision, row.reason) == (
        "referral:send",
        "deny",
        "consent does not cover",
    )
    assert row.categories == ",".join(sorted(world.shared))
    assert row.case_id == uuid.UUID(world.case_id)
    assert count(app, Referral) == 0  # the draft made on the way went with the refusal


@pytest.mark.parametrize(
    "closed",
    [{"accepting_referrals": False}, {"status": ServiceStatus.INACTIVE}],
    ids=["not-accepting", "inactive"],
)
def test_a_draft_is_not_sent_to_a_service_closed_since(
    app: Any, client: Any, world: World, closed: dict[str, Any]
) -> None:
    """A referral to a service that takes none is refused when it is made (422); a draft
    made while it took them was still sent once it stopped: the case was disclosed, on the
    register, to a service that takes no one (a reviewer's probe). The send is a 409, as
    for an organisation deactivated since the draft."""
    sessions = db.session_factory_for(app)
    service_id = add_service(sessions, world.receiver_org)
    draft = world.refer(send=False, service_id=str(service_id))["id"]
    with sessions() as s:
        service = s.get(Service, service_id)
        for name, value in closed.items():
            setattr(service, name, value)
        s.commit()
    refused = assert_problem(move(client, world.h["sender"], draft, "requested"), 409)
    assert "no longer accepts referrals" in refused["detail"]
    assert count(app, Disclosure) == 0
    (referral,) = rows(app, Referral, Referral.id == uuid.UUID(draft))
    assert (referral.status.value, referral.sent_at) == ("draft", None)


def test_a_send_covered_by_many_provisions_records_them_all(
    app: Any, client: Any, factory: Any
) -> None:
    """A disclosure on consent names every provision used (37 characters each) in its
    basis, a VARCHAR(2000): from 55 covering provisions on (two consents of 28 here),
    PostgreSQL refused the insert and the send answered 500 (a reviewer's probe). The
    column is unbounded text (migration 0015)."""
    world = World(factory, client, consent=False)
    for _ in range(2):
        record_consent(
            client,
            world.h["sender"],
            world.case_id,
            *[provision(world.purpose, ["identity"], org_id=world.receiver_org)] * 28,
        )
    sent = refer(
        client,
        world.h["sender"],
        world.case_id,
        world.receiver_org,
        ["identity"],
        purpose=world.purpose,
    )
    assert sent.status_code == 201, sent.get_data(as_text=True)
    (disclosure,) = rows(app, Disclosure)
    assert disclosure.basis_type == "consent" and len(disclosure.basis.split(",")) == 56
    packet = client.get(
        f"{API}/referrals/{sent.get_json()['id']}/packet", headers=world.h["receiver"]
    )
    assert ok(packet)["categories"] == ["identity"]
