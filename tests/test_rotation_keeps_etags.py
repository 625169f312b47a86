"""A case-key rotation changes nothing anyone sees: no ETag goes stale, and a PATCH racing
the sweep is stored under the new key (the sweep once moved every case's and referral's
version, so every If-Match a client held was answered 412)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from referral_support import API, World, etag, ok
from rights_support import uuid_param
from sqlalchemy import text

from referral_api.crypto import rotation
from referral_api.crypto.envelope import key_version_of
from referral_api.crypto.fields import crypto_of
from referral_api.extensions import db

needs_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL",
)


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    app_config["KEYRING_PATH"] = str(tmp_path / "keyring.json")
    return app_config


def sql_key_versions(app: Any, case_id: str) -> list[int]:
    """The case's data-key versions held, read in the database."""
    with db.engine_for(app).connect() as connection:
        rows = connection.execute(
            text("SELECT version FROM case_keys WHERE case_id = :c ORDER BY version"),
            {"c": uuid_param(app, case_id)},
        )
        return [int(v) for (v,) in rows]


def _sweep(app: Any) -> int:
    return rotation.rotate_case_keys(db.session_factory_for(app), started_at=datetime.now(UTC))


def test_a_key_rotation_does_not_make_every_etag_stale(app: Any, client: Any, factory: Any) -> None:
    """rotate-case-keys re-encrypts every record and nothing a client sees changes: every
    If-Match a client holds (a caseworker's open form, a police system's referral ETag)
    still matches, and `updated_at` stays (an `updated_since` poll does not find every
    case changed), as a PATCH that changes nothing keeps them (564aaad)."""
    world = World(factory, client)
    referral_id = world.refer()["id"]
    read = client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"])
    case_tag = read.headers["ETag"]
    referral_tag = etag(client, world.h["receiver"], referral_id)
    assert _sweep(app) >= 1
    assert sql_key_versions(app, world.case_id) == [2]
    again = client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"])
    assert again.headers["ETag"] == case_tag
    assert ok(again)["updated_at"] == ok(read)["updated_at"]
    patched = client.patch(
        f"{API}/cases/{world.case_id}",
        json={"risk_level": "low"},
        headers={**world.h["sender"], "If-Match": case_tag},
    )
    moved = client.post(
        f"{API}/referrals/{referral_id}/transitions",
        json={"to": "received"},
        headers={**world.h["receiver"], "If-Match": referral_tag},
    )
    assert (patched.status_code, moved.status_code) == (200, 200), (
        patched.get_data(as_text=True),
        moved.get_data(as_text=True),
    )


@needs_postgres
def test_a_patch_racing_a_rotation_sweep_is_stored_under_the_new_key(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH has read the case (key version 1) when a sweep re-encrypts it and deletes
    version 1: the PATCH waits for the sweep, seals under version 2 and succeeds (the sweep
    changed nothing the client saw); the other categories keep the sweep's ciphertexts.
    (With the row's version left alone, the PATCH once sealed under the version it had
    loaded, now deleted: a 200, then a case no worker could read.)"""
    from referral_api.cases import service as case_service

    world = World(factory, client)
    read = client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"])
    before, case_tag = ok(read), read.headers["ETag"]
    real = case_service._apply_categories
    during: dict[str, Any] = {}

    def apply_then_sweep(*args: Any, **kwargs: Any) -> Any:
        touched = real(*args, **kwargs)
        if "swept" not in during:
            thread = threading.Thread(target=lambda: during.update(swept=_sweep(app)))
            thread.start()
            thread.join(timeout=30)
        return touched

    monkeypatch.setattr(case_service, "_apply_categories", apply_then_sweep)
    patched = client.patch(
        f"{API}/cases/{world.case_id}",
        json={"contact": {"safe_contact_notes": "changed"}},
        headers={**world.h["sender"], "If-Match": case_tag},
    )
    assert during.get("swept") == 1
    assert patched.status_code == 200, patched.get_data(as_text=True)
    # Sealed under the case's new key, not the deleted one it was read under: with no copy
    # of the old key left in memory (another worker, or this one after the cache's TTL) the
    # case still reads.
    with db.engine_for(app).connect() as connection:
        key_version, contact = connection.execute(
            text("SELECT key_version, contact FROM cases WHERE id = :c"),
            {"c": uuid_param(app, world.case_id)},
        ).one()
    assert (key_version, key_version_of(bytes(contact))) == (2, 2)
    with app.app_context():
        crypto_of(db.session).cache.clear()
    body = ok(client.get(f"{API}/cases/{world.case_id}", headers=world.h["sender"]))
    assert body["contact"]["safe_contact_notes"] == "changed"
    assert body["identity"] == before["identity"]
    assert sql_key_versions(app, world.case_id) == [2]
