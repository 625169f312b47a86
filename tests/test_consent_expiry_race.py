"""`consent expire`: a renewal racing the batch (PostgreSQL) is not undone (the batch read
the consent's events without a lock, and stamped `expired` after a renewal that committed
meanwhile; it now locks each consent it expires and reads its events again). Erased cases:
test_consent_expiry_vs_erasure."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from referral_support import API, World, consent_body, ok, provision

from referral_api.access.actor import Actor
from referral_api.consent import service as consent_service
from referral_api.consent.decision import current_state
from referral_api.consent.models import ConsentRecord
from referral_api.consent.vocabulary import ConsentState
from referral_api.extensions import db

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL",
)


def test_a_renewal_committed_while_consent_expire_runs_is_not_undone(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The person renews a consent just as its provisions end, and `consent expire` runs at
    that moment: the batch read the consent's events (no lock) before the renewal committed,
    then records `expired` stamped after the renewal. The renewal is lost: the consent
    reads 'expired' and stops permitting although it was renewed for 30 days.

    Times: the provision ends in 2 h; the batch runs 'at' 3 h from now (passed to
    expire_due, as the CLI's now() would be then); the renewal's now() is 1 ms before it
    (it began just before the batch and committed while the batch was reading)."""
    world = World(factory, client)
    until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    body = consent_body(
        provision("legal_assistance", ["identity"], org_id=world.receiver_org, valid_until=until)
    )
    recorded = client.post(
        f"{API}/cases/{world.case_id}/consents", json=body, headers=world.h["sender"]
    )
    consent_id = ok(recorded, 201)["id"]
    as_recorded = {**world.h["sender"], "If-Match": recorded.headers["ETag"]}
    at = datetime.now(UTC) + timedelta(hours=3)
    renewed_until = at + timedelta(days=30)
    real_is_expired = consent_service.is_expired_at
    during: dict[str, Any] = {}

    def renew() -> None:
        during["renewed"] = app.test_client().post(
            f"{API}/consents/{consent_id}/renew",
            json={"valid_until": renewed_until.isoformat()},
            headers=as_recorded,
        )

    def is_expired_while_renewed(view: Any, when: Any) -> bool:
        expired = real_is_expired(view, when)
        if expired and str(view.id) == consent_id and "thread" not in during:
            monkeypatch.setattr(consent_service, "now", lambda: at - timedelta(milliseconds=1))
            during["thread"] = threading.Thread(target=renew)
            during["thread"].start()
            during["thread"].join(timeout=30)
            monkeypatch.undo()
        return expired

    monkeypatch.setattr(consent_service, "is_expired_at", is_expired_while_renewed)
    with db.session_factory_for(app)() as session:
        consent_service.expire_due(session, Actor.system(), at=at)
        session.commit()
    assert ok(during["renewed"])["id"] == consent_id
    with db.session_factory_for(app)() as session:
        consent = session.get(ConsentRecord, uuid.UUID(consent_id))
        assert consent is not None
        events = [e.event_type.value for e in consent.events]
        state = current_state(consent_service.view_of(consent), at + timedelta(seconds=1))
        session.rollback()
    assert state is ConsentState.ACTIVE, (state, events)
