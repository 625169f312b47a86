"""Rows that miss every after-request round are sealed by the worker's background loop."""

import time
from datetime import UTC, datetime

from conftest import test_config
from sqlalchemy import select

from referral_api import create_app
from referral_api.audit.models import AuditEvent


def test_background_sealer_seals_rows_left_pending(app, database_url, keyring_path, session):
    # `app` (interval 0) only provides table clean-up; this one runs the loop.
    looping = create_app(test_config(database_url, keyring_path, AUDIT_SEAL_INTERVAL_SECONDS=0.2))
    orphan = AuditEvent(
        occurred_at=datetime.now(UTC),
        actor_type="system",
        action="probe:orphan",
        resource_type="probe",
        decision="allow",
    )
    session.add(orphan)
    session.commit()
    orphan_id = orphan.id
    session.close()

    assert looping.test_client().get("/health").status_code == 200  # starts the loop
    sealed = None
    deadline = time.monotonic() + 10
    while sealed is None and time.monotonic() < deadline:
        time.sleep(0.1)
        sealed = session.scalars(select(AuditEvent.seq).where(AuditEvent.id == orphan_id)).one()
        session.rollback()
    looping.extensions["referral_api.audit_sealer"].stop()
    assert sealed is not None, "the background loop never sealed the pending row"


def test_no_background_loop_when_disabled(app):
    assert "referral_api.audit_sealer" not in app.extensions
