"""Consent lifecycle changes at the same moment (PostgreSQL: SQLite runs one writer at a time)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from referral_support import API, consent_body, create_case, ok, provision
from sqlalchemy import bindparam, text

from referral_api.access.roles import OrgType, Role
from referral_api.extensions import db

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL (SQLite runs one writer at a time)",
)


def _close(
    app: Any,
    barrier: threading.Barrier,
    statuses: list[int],
    consent: str,
    action: str,
    payload: dict[str, Any],
    headers: dict[str, str],
) -> None:
    client = app.test_client()
    barrier.wait()
    response = client.post(f"{API}/consents/{consent}/{action}", json=payload, headers=headers)
    statuses.append(response.status_code)


def _at_once(
    app: Any, consent: str, calls: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[int]:
    """The statuses of `calls` (action, body, headers) on `consent`, sent at one moment."""
    barrier = threading.Barrier(len(calls))
    statuses: list[int] = []
    threads = [
        threading.Thread(target=_close, args=(app, barrier, statuses, consent, *call))
        for call in calls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


def _events(app: Any, consent: str, *kinds: str) -> int:
    with db.engine_for(app).connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT COUNT(*) FROM consent_events WHERE consent_id = :id "
                    "AND event_type IN :kinds"
                ).bindparams(bindparam("kinds", expanding=True)),
                {"id": consent, "kinds": list(kinds)},
            ).scalar_one()
        )


def test_simultaneous_closings_of_one_consent_record_one_event(
    app: Any, client: Any, factory: Any
) -> None:
    """Four withdrawals (or a withdrawal racing a revocation) of one consent: one closes it,
    the others find it closed (409); one closing event, one set of effects. Each saw it open
    and each closed it, until the consent was locked before its events were read."""
    org = factory.org(OrgType.NGO)
    legal = factory.org(OrgType.LEGAL_AID)
    workers = [factory.headers(factory.user(Role.CASEWORKER, org)) for _ in range(3)]
    supervisor = factory.headers(factory.user(Role.SUPERVISOR, org))
    case_id = create_case(client, workers[0], {"case_type": "thb"})
    outcomes = []
    for _round in range(3):
        body = consent_body(provision("legal_assistance", ["identity"], org_id=legal))
        recorded = client.post(f"{API}/cases/{case_id}/consents", json=body, headers=workers[0])
        consent = ok(recorded, 201)["id"]
        calls = [("withdraw", {}, h) for h in workers]
        as_recorded = {**supervisor, "If-Match": recorded.headers["ETag"]}
        calls.append(("revoke", {"reason": "obtained under pressure"}, as_recorded))
        statuses = _at_once(app, consent, calls)
        outcomes.append(sorted(statuses))
        closing = _events(app, consent, "withdrawn", "revoked")
        assert closing == 1, (closing, statuses)
    # The revocation, sent with the consent's ETag as recorded, finds it changed (412) when a
    # withdrawal closed it first; the other withdrawals find it closed.
    assert all(o in ([200, 409, 409, 409], [200, 409, 409, 412]) for o in outcomes), outcomes


def test_renewals_at_once_from_one_reading_make_one_change(
    app: Any, client: Any, factory: Any
) -> None:
    """Three renewals sent at once with the ETag of one reading: one is made, the others
    find the consent changed (412) under its lock; one `renewed` event."""
    org = factory.org(OrgType.NGO)
    legal = factory.org(OrgType.LEGAL_AID)
    workers = [factory.headers(factory.user(Role.CASEWORKER, org)) for _ in range(3)]
    case_id = create_case(client, workers[0], {"case_type": "thb"})
    body = consent_body(provision("legal_assistance", ["identity"], org_id=legal))
    recorded = client.post(f"{API}/cases/{case_id}/consents", json=body, headers=workers[0])
    consent = ok(recorded, 201)["id"]
    calls = [
        (
            "renew",
            {"valid_until": f"2099-0{n + 1}-01T00:00:00+00:00"},
            {**headers, "If-Match": recorded.headers["ETag"]},
        )
        for n, headers in enumerate(workers)
    ]
    assert sorted(_at_once(app, consent, calls)) == [200, 412, 412]
    assert _events(app, consent, "renewed") == 1


def test_a_send_and_a_withdrawal_at_once_leave_no_live_referral_on_the_withdrawn_consent(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A withdrawal committed between a send's consent check and the send's commit found no
    live referral to stop, and the referral went out on a withdrawn consent (found by a
    reviewer's probe). The send now holds the case's consents (FOR SHARE) from its check to
    its commit: the withdrawal waits, then stops the referral it sent."""
    from referral_support import World, etag

    from referral_api.consent import service as consent_service
    from referral_api.referrals import service as referral_service

    world = World(factory, client)
    assert world.consent is not None
    referral_id = world.refer(send=False)["id"]
    tag = etag(client, world.h["sender"], referral_id)
    decide = consent_service.decide_for_case
    withdrawal: list[Any] = []
    threads: list[threading.Thread] = []

    def withdraw() -> None:
        response = app.test_client().post(
            f"{API}/consents/{world.consent['id']}/withdraw", json={}, headers=world.h["sender"]
        )
        withdrawal.append(response)

    def decide_while_a_withdrawal_comes_in(*args: Any, **kwargs: Any) -> Any:
        decision = decide(*args, **kwargs)  # permits: the consent is still active
        if not threads:
            threads.append(threading.Thread(target=withdraw))
            threads[0].start()
            threads[0].join(timeout=1.5)
            assert threads[0].is_alive(), "the withdrawal did not wait for the send"
        return decision

    monkeypatch.setattr(
        referral_service.consent_service, "decide_for_case", decide_while_a_withdrawal_comes_in
    )
    sent = client.post(
        f"{API}/referrals/{referral_id}/transitions",
        json={"to": "requested"},
        headers={**world.h["sender"], "If-Match": tag},
    )
    threads[0].join(timeout=60)
    assert ok(sent)["status"] == "requested"
    (withdrawn,) = withdrawal
    effects = ok(withdrawn)["events"][-1]["effects"]
    assert [(e["type"], e["id"]) for e in effects] == [("referral", referral_id)], effects
    final = ok(client.get(f"{API}/referrals/{referral_id}", headers=world.h["sender"]))
    assert (final["status"], final["status_reason"]) == ("cancelled", "consent_withdrawn")
