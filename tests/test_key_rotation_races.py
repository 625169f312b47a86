"""Key sweeps racing live writes (PostgreSQL: on SQLite every transaction begins IMMEDIATE,
so a sweep cannot run while a request is open). Found by a reviewer's probes, each failing
on the code before its fix:

- `keys rotate-org-keys` deleted an old organisation-key version once it counted no data
  key under it; a `POST /cases` in flight (its new data key wrapped under that version, not
  yet committed) then committed a data key under a deleted key, and the case no longer
  decrypted once the key cache forgot it. A data key now references its organisation key
  (migration 0013): the delete waits for the insert, fails, and the rotation re-wraps again.
- `keys rotate-case-keys` selected its batch's ids unlocked and then locked the cases: one
  erased in between failed the sweep on an assertion (a traceback; the batch rolled back),
  and its batch took the case rows before the consents, the reverse of an erasure (a
  deadlock: the erasure got 503).
- `keys rotate-index`: a PATCH whose request began before the new index version existed
  wrote the old version only, after deleting its case's entries, the backfilled ones too:
  once the switch deleted the old version, no search found the case. The backfill now
  waits for transactions older than it before it starts.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from race_support import run_during
from rights_support import World, new_token, ok
from sqlalchemy import select

from referral_api.access.roles import Role
from referral_api.cases import service as case_service
from referral_api.cases.models import Case
from referral_api.crypto import rotation
from referral_api.crypto.keys import KeyService
from referral_api.crypto.models import CaseKey, OrgKey
from referral_api.extensions import db

pytestmark = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL",
)

CASES = "/api/v1/cases"


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    app_config["KEYRING_PATH"] = str(tmp_path / "keyring.json")
    return app_config


def _rows(app: Any, statement: Any) -> list[Any]:
    with db.session_factory_for(app)() as s:
        return list(s.execute(statement).all())


def test_a_case_created_while_rotate_org_keys_runs_stays_readable(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = factory.org()
    headers = factory.headers(factory.user(Role.CASEWORKER, org))
    body = {"case_type": "thb", "identity": {"given_name": "First"}}
    assert client.post(CASES, json=body, headers=headers).status_code == 201

    # The rotation (another process in production) runs while the POST has inserted its
    # data key, wrapped under version 1, and not yet committed.
    during = run_during(
        monkeypatch,
        case_service,
        "insert_cases",
        lambda *_a, **_k: True,
        lambda: rotation.rotate_org_keys(db.session_factory_for(app)),
    )
    created = client.post(
        CASES, json={"case_type": "thb", "identity": {"given_name": "Racing"}}, headers=headers
    )
    assert created.status_code == 201, created.get_json()
    during["thread"].join(timeout=60)
    assert during["waited"], "the rotation did not wait for the insert"
    assert "error" not in during, during.get("error")
    assert during["response"] == (1, 2)  # a second pass re-wrapped the racing case's key

    assert _rows(app, select(OrgKey.version).where(OrgKey.org_id == org)) == [(2,)]
    assert {row.org_key_version for row in _rows(app, select(CaseKey.org_key_version))} == {2}
    app.extensions["referral_api.crypto"].cache.clear()  # a worker's cache expires
    read = client.get(f"{CASES}/{created.get_json()['id']}", headers=headers)
    assert read.status_code == 200, read.get_data(as_text=True)
    assert read.get_json()["identity"]["given_name"] == "Racing"


def test_rotate_case_keys_skips_a_case_erased_after_its_batch_was_chosen(
    app: Any, client: Any, factory: Any, runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(app, factory, client)
    keep = world.case(new_token("keep"))
    gone = world.case(new_token("gone"))
    world.close(gone)
    request_id = world.request_erasure(gone)

    real_crypto_of = rotation.crypto_of
    erased: dict[str, Any] = {}

    def erase_first(session: Any) -> Any:
        # Between the sweep's unlocked read of its batch's ids and its locks.
        if not erased:
            erased["response"] = ok(world.approve(request_id))
        return real_crypto_of(session)

    monkeypatch.setattr(rotation, "crypto_of", erase_first)
    result = runner.invoke(args=["keys", "rotate-case-keys"])
    monkeypatch.setattr(rotation, "crypto_of", real_crypto_of)
    assert erased, "the erasure did not run"
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0, result.output

    versions = dict(_rows(app, select(Case.id, Case.key_version)))
    assert versions[uuid.UUID(keep)] == 2
    assert versions[uuid.UUID(gone)] is None
    assert _rows(app, select(CaseKey.version).where(CaseKey.case_id == uuid.UUID(gone))) == []


def test_rotate_case_keys_and_an_erasure_in_flight_do_not_deadlock(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure holds the case's consents and waits for the case row; the sweep's batch
    takes the consents first too, so it waits for the erasure instead of taking the row and
    then waiting for the consents (a deadlock PostgreSQL broke by killing one)."""
    from referral_api.rights import service as rights_service

    world = World(app, factory, client)
    world.case(new_token("keep"))
    gone = world.case(new_token("gone"))
    world.consent(gone, world.receiver_org, ["identity"])
    world.close(gone)
    request_id = world.request_erasure(gone)

    # The sweep starts once the erasure holds the consents, before it locks the case row.
    during = run_during(
        monkeypatch,
        rights_service,
        "_lock_case",
        lambda *_a, **_k: True,
        lambda: rotation.rotate_case_keys(
            db.session_factory_for(app), started_at=datetime.now(UTC), batch_size=10
        ),
        before=True,
    )
    approved = world.approve(request_id)
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert approved.status_code == 200, approved.get_data(as_text=True)
    versions = dict(_rows(app, select(Case.id, Case.key_version)))
    assert versions[uuid.UUID(gone)] is None
    assert sorted(v for v in versions.values() if v is not None) == [2]


def test_a_patch_begun_before_rotate_index_leaves_its_case_searchable(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    headers = factory.headers(factory.user(Role.CASEWORKER))
    body = {
        "case_type": "thb",
        "identity": {"given_name": "Oksana", "family_name": "Bondar"},
        "contact": {"phone": "+380501112233"},
    }
    created = client.post(CASES, json=body, headers=headers)
    assert created.status_code == 201, created.get_json()
    case_id = created.get_json()["id"]
    etag = client.get(f"{CASES}/{case_id}", headers=headers).headers["ETag"]

    sessions = db.session_factory_for(app)
    backfill: dict[str, Any] = {}
    real_update = case_service.update_case

    def update_during_rotation(*args: Any, **kwargs: Any) -> Any:
        # `referral-api keys rotate-index` starts while this request is in flight (it has
        # read its organisation's index versions: the old one only) …
        with sessions() as s:
            assert rotation.start_index_rotation(s) >= 1
            s.commit()
        backfill["thread"] = threading.Thread(
            target=lambda: backfill.setdefault("filled", rotation.backfill_index(sessions)),
            daemon=True,
        )
        backfill["thread"].start()
        time.sleep(1.0)  # … and would backfill and switch before the PATCH writes
        return real_update(*args, **kwargs)

    monkeypatch.setattr(case_service, "update_case", update_during_rotation)
    patched = client.patch(
        f"{CASES}/{case_id}",
        json={"identity": {"given_name": "Oksanka"}},
        headers={**headers, "If-Match": etag},
    )
    monkeypatch.setattr(case_service, "update_case", real_update)
    assert patched.status_code == 200, patched.get_json()
    backfill["thread"].join(timeout=60)
    assert "filled" in backfill, "the backfill did not end"

    app.extensions["referral_api.crypto"].cache.clear()

    def search(**params: Any) -> list[str]:
        response = client.get(CASES, query_string=params, headers=headers)
        assert response.status_code == 200, response.get_json()
        return [c["id"] for c in response.get_json()]

    assert search(name="Oksanka") == [case_id]
    assert search(phone="+380501112233") == [case_id]


@pytest.mark.parametrize("worker_cache", ["forgot-the-old-key", "still-holds-it"])
def test_a_case_whose_org_key_was_rotated_away_before_its_insert(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch, worker_cache: str
) -> None:
    """The request read its organisation's key version, then a whole rotate-org-keys ran
    (the old version deleted, nothing referencing it yet) before the request wrapped and
    inserted its data key. A worker that no longer holds the old key wraps under the new
    one (201); one that still holds it (the rotation ran in another process) has the
    insert refused by the reference: nothing stored, the retryable 503 of a concurrent
    change (it was a 500), and the retry is stored under the new version."""
    org = factory.org()
    headers = factory.headers(factory.user(Role.CASEWORKER, org))
    body = {"case_type": "thb", "identity": {"given_name": "First"}}
    assert client.post(CASES, json=body, headers=headers).status_code == 201
    cache = app.extensions["referral_api.crypto"].cache
    old_key = cache.get(("org", org, 1))
    assert old_key is not None

    def rotate() -> Any:
        rotated = rotation.rotate_org_keys(db.session_factory_for(app))
        if worker_cache == "still-holds-it":
            cache.put(("org", org, 1), old_key)
        return rotated

    during = run_during(
        monkeypatch,
        case_service,
        "insert_cases",
        lambda *_a, **_k: True,
        rotate,
        before=True,
    )
    body = {"case_type": "thb", "identity": {"given_name": "Late"}}
    answered = client.post(CASES, json=body, headers=headers)
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    monkeypatch.undo()
    if worker_cache == "still-holds-it":
        assert answered.status_code == 503, answered.get_data(as_text=True)
        assert answered.get_json()["type"] == "/problems/transaction-conflict"
        assert answered.headers["Retry-After"] == "1"
        assert len(_rows(app, select(Case.id))) == 1
        answered = client.post(CASES, json=body, headers=headers)
    assert answered.status_code == 201, answered.get_json()
    assert {row.org_key_version for row in _rows(app, select(CaseKey.org_key_version))} == {2}
    cache.clear()
    read = client.get(f"{CASES}/{answered.get_json()['id']}", headers=headers)
    assert read.status_code == 200 and read.get_json()["identity"]["given_name"] == "Late"


def test_a_read_whose_org_key_is_rotated_away_meanwhile_still_decrypts(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request read the case with its data key wrapped under organisation-key version
    1; a whole rotate-org-keys (another process) then re-wrapped it under version 2 and
    deleted version 1 before the request unwrapped it, with the worker's key cache cold.
    The data key is the same: the request reads its re-wrapped row and answers (it was a
    500)."""
    org = factory.org()
    headers = factory.headers(factory.user(Role.CASEWORKER, org))
    body = {"case_type": "thb", "identity": {"given_name": "Nadia"}}
    created = client.post(CASES, json=body, headers=headers)
    assert created.status_code == 201, created.get_json()
    cache = app.extensions["referral_api.crypto"].cache

    def rotate() -> Any:
        rotated = rotation.rotate_org_keys(db.session_factory_for(app))
        cache.clear()
        return rotated

    cache.clear()
    during = run_during(
        monkeypatch, KeyService, "_unwrap_case_key", lambda *_a, **_k: True, rotate, before=True
    )
    read = client.get(f"{CASES}/{created.get_json()['id']}", headers=headers)
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    assert read.status_code == 200, read.get_data(as_text=True)
    assert read.get_json()["identity"]["given_name"] == "Nadia"
    assert {row.version for row in _rows(app, select(OrgKey.version))} == {2}


def test_a_search_whose_index_key_is_switched_away_meanwhile_is_a_retryable_503(
    app: Any, client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search read its organisation's index-key version (1), then a whole rotate-index
    ran and deleted version 1 before the search loaded that key (a transaction older than
    the backfill's wait for older ones, here none). The search cannot use the key it chose:
    the retryable 503 of a concurrent change (it was a 500), nothing changed, and the retry
    searches under version 2."""
    org = factory.org()
    headers = factory.headers(factory.user(Role.CASEWORKER, org))
    body = {"case_type": "thb", "identity": {"given_name": "Halyna", "family_name": "Shevchuk"}}
    created = client.post(CASES, json=body, headers=headers)
    assert created.status_code == 201, created.get_json()
    cache = app.extensions["referral_api.crypto"].cache
    sessions = db.session_factory_for(app)
    monkeypatch.setattr(rotation, "OLDER_TRANSACTIONS_WAIT_SECONDS", 0)

    def rotate() -> Any:
        with sessions() as s:
            rotation.start_index_rotation(s)
            s.commit()
        filled = rotation.backfill_index(sessions)
        cache.clear()
        return filled

    cache.clear()
    during = run_during(
        monkeypatch, KeyService, "index_key", lambda *_a, **_k: True, rotate, before=True
    )
    searched = client.get(CASES, query_string={"name": "Halyna"}, headers=headers)
    during["thread"].join(timeout=60)
    assert "error" not in during, during.get("error")
    monkeypatch.undo()
    assert searched.status_code == 503, searched.get_data(as_text=True)
    assert searched.get_json()["type"] == "/problems/transaction-conflict"
    assert searched.headers["Retry-After"] == "1"
    again = client.get(CASES, query_string={"name": "Halyna"}, headers=headers)
    assert again.status_code == 200, again.get_json()
    assert [c["id"] for c in again.get_json()] == [created.get_json()["id"]]
