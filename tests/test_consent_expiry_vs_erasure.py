"""`consent expire` and erasure. An erased case's consent is left alone. Racing an erasure
(PostgreSQL), the run took the consent and then waited for the case row, the erasure the
other way round: a deadlock that failed either the erasure (503) or the whole run. The
run now takes the case row and the consent only when free, and leaves a busy one to the
next run."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from referral_support import API, World, consent_body, ok, provision, request_erasure

from referral_api.access.actor import Actor
from referral_api.consent import service as consent_service
from referral_api.consent.models import ConsentRecord
from referral_api.extensions import db
from referral_api.rights import service as rights_service

needs_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL",
)


def _due_consent(world: World, until: str) -> dict[str, Any]:
    return consent_body(
        provision("legal_assistance", ["identity"], org_id=world.receiver_org, valid_until=until)
    )


def _setup(client: Any, world: World) -> tuple[str, str, str]:
    until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()

    def due_consent(case_id: str) -> str:
        response = client.post(
            f"{API}/cases/{case_id}/consents",
            json=_due_consent(world, until),
            headers=world.h["sender"],
        )
        return ok(response, 201)["id"]  # type: ignore[no-any-return]

    doomed = due_consent(world.case_id)
    live_case = ok(
        client.post(f"{API}/cases", json={"case_type": "thb"}, headers=world.h["sender"]), 201
    )
    live = due_consent(live_case["id"])
    return doomed, live, request_erasure(client, world)


def _events(app: Any, consent_id: str) -> list[str]:
    with db.session_factory_for(app)() as session:
        consent = session.get(ConsentRecord, uuid.UUID(consent_id))
        assert consent is not None
        events = [e.event_type.value for e in consent.events]
        session.rollback()
    return events


def test_consent_expire_leaves_an_erased_cases_consent_alone(
    app: Any, client: Any, factory: Any
) -> None:
    """Writing the erased case's `expired` event under its destroyed key failed the whole
    run, so nothing on the platform expired any more: its consent is left alone."""
    world = World(factory, client, consent=False)
    _doomed, live, request_id = _setup(client, world)
    ok(client.post(f"{API}/erasures/{request_id}/approve", headers=world.h["sender_dpo"]))
    at = datetime.now(UTC) + timedelta(hours=3)
    with db.session_factory_for(app)() as session:
        count = consent_service.expire_due(session, Actor.system(), at=at)
        session.commit()
    assert count == 1  # the live case's consent, not the erased one's
    assert _events(app, live) == ["given", "expired"]


@needs_postgres
def test_erasure_committed_between_batch_read_and_lock_is_passed_over(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Gone path: the erasure commits after the batch read the consent, before it locks
    it. The run should skip that consent and still expire the other one."""
    world = World(factory, client, consent=False)
    doomed, live, request_id = _setup(client, world)
    dpo = world.h["sender_dpo"]
    real = consent_service._due_to_expire
    during: dict[str, Any] = {}

    def due(consent: Any, at: Any) -> bool:
        result = real(consent, at)
        if str(consent.id) == doomed and "thread" not in during:
            during["thread"] = threading.Thread(
                target=lambda: during.update(
                    approved=app.test_client().post(
                        f"{API}/erasures/{request_id}/approve", headers=dpo
                    )
                )
            )
            during["thread"].start()
            during["thread"].join(timeout=30)
        return result

    monkeypatch.setattr(consent_service, "_due_to_expire", due)
    at = datetime.now(UTC) + timedelta(hours=3)
    with db.session_factory_for(app)() as session:
        count = consent_service.expire_due(session, Actor.system(), at=at)
        session.commit()
    assert during["approved"].status_code == 200, during["approved"].get_data(as_text=True)
    assert count == 1
    assert _events(app, live) == ["given", "expired"]
    assert _events(app, doomed) == ["given"]


@needs_postgres
@pytest.mark.parametrize("pause", [1.5, 0.3])
def test_an_erasure_in_flight_and_consent_expire_both_complete(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch, pause: float
) -> None:
    """The erasure holds the case row (FOR UPDATE) and has not yet cleared the consent's
    ciphertexts when `consent expire` reaches the case's due consent. The run once locked
    the consent and waited on the case row while the erasure went on to update the consent:
    a deadlock in which PostgreSQL killed the erasure (a 503, nothing erased; the erasure
    paused past deadlock_timeout, 1.5 s) or the whole run (0.3 s). Now the erasure commits,
    and the run passes the busy case over and expires the other case's consent."""
    world = World(factory, client, consent=False)
    _doomed, live, request_id = _setup(client, world)
    dpo = world.h["sender_dpo"]
    locked = threading.Event()
    real_models = rights_service.encrypted_models

    def slow_models() -> Any:
        locked.set()
        time.sleep(pause)  # the run meets the case while the erasure holds it
        return real_models()

    monkeypatch.setattr(rights_service, "encrypted_models", slow_models)
    during: dict[str, Any] = {}

    def approve() -> None:
        try:
            during["approved"] = app.test_client().post(
                f"{API}/erasures/{request_id}/approve", headers=dpo
            )
        except BaseException as error:  # noqa: BLE001
            during["error"] = error

    thread = threading.Thread(target=approve, daemon=True)
    thread.start()
    assert locked.wait(30)
    at = datetime.now(UTC) + timedelta(hours=3)
    outcome: Any
    try:
        with db.session_factory_for(app)() as session:
            outcome = consent_service.expire_due(session, Actor.system(), at=at)
            session.commit()
    except Exception as error:  # noqa: BLE001
        outcome = repr(error)[:300]
    thread.join(timeout=60)
    approved = during.get("approved")
    status = approved.status_code if approved is not None else during.get("error")
    body = approved.get_data(as_text=True)[:300] if approved is not None else None
    assert (outcome, status) == (1, 200), (outcome, status, body)
    assert _events(app, live) == ["given", "expired"]
