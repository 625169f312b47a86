"""Key rotation through the `keys` CLI and the rotation jobs (DESIGN.md §6): root rotation
re-wraps keys and frees the old root version for destruction; the case-key sweep leaves no
data under the old data keys and survives interruption; index-key rotation dual-writes,
backfills and retires the old index key while search keeps working."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from referral_api.access.roles import Role
from referral_api.audit.models import AuditEvent
from referral_api.cases.models import Case, CaseNote, CaseSearchIndex
from referral_api.crypto import envelope, rotation
from referral_api.crypto.keyring import LocalKeyring
from referral_api.crypto.models import CaseKey, IndexKey, OrgKey, RotationJob
from referral_api.extensions import db

CASES = "/api/v1/cases"


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    """A keyring of this test's own: these tests rotate and destroy root versions."""
    app_config["KEYRING_PATH"] = str(tmp_path / "keyring.json")
    return app_config


@dataclass
class CaseRecord:
    id: str
    org: str
    payload: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)  # note id → text


@dataclass
class World:
    headers: dict[str, dict[str, str]]  # org label → caseworker's Authorization header
    cases: list[CaseRecord]

    @property
    def note_count(self) -> int:
        return sum(len(c.notes) for c in self.cases)

    @property
    def ciphertext_count(self) -> int:
        """Every encrypted field of every case holds a ciphertext (null or not), plus notes."""
        return len(self.cases) * len(Case.__encrypted_fields__) + self.note_count


def _payload(label: str, number: int) -> dict[str, Any]:
    token = uuid.uuid4().hex[:8]
    return {
        "case_type": "gbv" if number % 2 else "thb",
        "identity": {
            "given_name": f"Ołena{label}{number}{token}",
            "family_name": f"Kovalenko-{label}{number}{token}",
            "aliases": [f"Alias{label}{number}{token}"],
            # Unique per case across both organisations (searches assert exact results).
            "date_of_birth": f"19{80 + 10 * (label == 'B') + number}-0{number + 1}-1{number}",
            "documents": [{"type": "passport", "country": "UA", "number": f"FA{token}{number}"}],
        },
        "contact": {"phone": f"+38050{int(token[:6], 16) % 10_000_000:07d}"},
        "location": {"address": f"Shelter {label}{number} {token}", "is_shelter": True},
        "incident": {"narrative": f"Narrative {label}{number} {token} — текст"},
        "health": {"notes": f"Health {label}{number} {token}"},
    }


@pytest.fixture
def world(factory: Any, client: Any) -> World:
    """Two organisations: three cases in A and two in B, with notes on three of them."""
    headers = {}
    for label in ("A", "B"):
        headers[label] = factory.headers(factory.user(Role.CASEWORKER))
    cases: list[CaseRecord] = []
    for label, count in (("A", 3), ("B", 2)):
        for number in range(count):
            payload = _payload(label, number)
            response = client.post(CASES, json=payload, headers=headers[label])
            assert response.status_code == 201, response.get_json()
            record = CaseRecord(response.get_json()["id"], label, payload)
            if number < 2 - (label == "B"):
                for category in ("health", "needs"):
                    text = f"Note {category} {label}{number} {uuid.uuid4().hex}"
                    note = client.post(
                        f"{CASES}/{record.id}/notes",
                        json={"category": category, "text": text},
                        headers=headers[label],
                    )
                    assert note.status_code == 201, note.get_json()
                    record.notes[note.get_json()["id"]] = text
            cases.append(record)
    return World(headers, cases)


def _invoke(runner: Any, *args: str, **kwargs: Any) -> Any:
    return runner.invoke(args=["keys", *args], **kwargs)


def _status(runner: Any) -> dict[str, Any]:
    result = _invoke(runner, "status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def _scalars(app: Any, statement: Any) -> list[Any]:
    with db.session_factory_for(app)() as session:
        values = list(session.scalars(statement))
        session.rollback()  # end the read at once: SQLite's BEGIN IMMEDIATE would block
    return values


def _clear_key_cache(app: Any) -> None:
    """Force every key to be unwrapped again from what the database and keyring hold."""
    app.extensions["referral_api.crypto"].cache.clear()


def _assert_everything_decrypts(app: Any, client: Any, world: World) -> None:
    _clear_key_cache(app)
    for record in world.cases:
        headers = world.headers[record.org]
        response = client.get(f"{CASES}/{record.id}", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        for category in ("identity", "contact", "location", "incident", "health"):
            for key, value in record.payload[category].items():
                assert body[category][key] == value, (record.id, category, key)
        notes = client.get(f"{CASES}/{record.id}/notes", headers=headers)
        assert notes.status_code == 200, notes.get_data(as_text=True)
        assert {n["id"]: n["text"] for n in notes.get_json()} == record.notes


def _search(client: Any, world: World, org: str, **params: Any) -> list[str]:
    response = client.get(CASES, query_string=params, headers=world.headers[org])
    assert response.status_code == 200, response.get_json()
    return [c["id"] for c in response.get_json()]


def _assert_search_finds_every_case(
    app: Any, client: Any, world: World, *, every_field: bool = False
) -> None:
    """Each case is found by its own organisation (by name and phone, or by every indexed
    field), and never by the other organisation."""
    _clear_key_cache(app)
    for record in world.cases:
        identity = record.payload["identity"]
        other = "B" if record.org == "A" else "A"
        queries = [
            {"name": identity["given_name"].upper()},
            {"phone": record.payload["contact"]["phone"]},
        ]
        if every_field:
            queries += [
                {"name": identity["aliases"][0]},
                {
                    "family_name": identity["family_name"],
                    "birth_year": identity["date_of_birth"][:4],
                },
                {"date_of_birth": identity["date_of_birth"]},
                {"document_number": identity["documents"][0]["number"].lower()},
            ]
        for query in queries:
            assert _search(client, world, record.org, **query) == [record.id], query
        assert _search(client, world, other, **queries[0]) == []


def _ciphertexts(app: Any) -> dict[tuple[str, str, str], bytes]:
    """Every encrypted column of every case and note: (table, row id, column) → blob."""
    blobs: dict[tuple[str, str, str], bytes] = {}
    with db.session_factory_for(app)() as session:
        for model in (Case, CaseNote):
            for row in session.scalars(select(model)):
                for name, encrypted in type(row).__encrypted_fields__.items():
                    blob = getattr(row, encrypted.column_attr)
                    assert blob is not None, (model.__tablename__, name)
                    blobs[(model.__tablename__, str(row.id), name)] = blob
        session.rollback()
    return blobs


def _versions_by_case(app: Any) -> dict[str, int]:
    with db.session_factory_for(app)() as session:
        rows = session.execute(select(Case.id, Case.key_version)).all()
        session.rollback()
    return {str(case_id): version for case_id, version in rows}


def _keyring(app: Any) -> LocalKeyring:
    provider = app.extensions["referral_api.crypto"].provider
    assert isinstance(provider, LocalKeyring)
    return provider


# ---- status -------------------------------------------------------------------------------


def test_status_shows_versions_and_counts(runner, world):
    ciphertexts = world.ciphertext_count
    assert ciphertexts > 100
    data = _status(runner)
    assert data["root"] == {
        "provider": "local-file",
        "current_version": 1,
        "versions": [1],
        "destroyed": [],
    }
    assert data["org_keys_by_root_version"] == {"1": 2}
    assert data["index_keys_by_root_version"] == {"1": 2}
    assert data["index_keys_by_state"] == {"active": 2}
    assert data["case_keys_by_version"] == {"1": 5}
    assert data["cases_by_key_version"] == {"1": 5}
    assert data["ciphertexts_by_key_version"] == {"1": ciphertexts}

    result = _invoke(runner, "status")
    assert result.exit_code == 0, result.output
    assert "root key: provider local-file, current v1, available [1], destroyed []" in result.output
    assert "case keys by version: v1: 5" in result.output
    assert f"ciphertexts by key version: v1: {ciphertexts}" in result.output
    # Counts and versions only: nothing personal, no key material.
    assert world.cases[0].payload["identity"]["given_name"] not in result.output


# ---- root key -----------------------------------------------------------------------------


def test_rotate_root_rewraps_everything_and_frees_the_old_version(app, client, runner, world):
    wrapped_before = set(_scalars(app, select(OrgKey.wrapped_key)))

    result = _invoke(runner, "rotate-root")
    assert result.exit_code == 0, result.output
    assert "root key v2 current; 4 keys re-wrapped" in result.output

    assert set(_scalars(app, select(OrgKey.root_version))) == {2}
    assert set(_scalars(app, select(IndexKey.root_version))) == {2}
    for wrapped in _scalars(app, select(OrgKey.wrapped_key)) + _scalars(
        app, select(IndexKey.wrapped_key)
    ):
        assert wrapped[:4] == (2).to_bytes(4, "big")
    assert not wrapped_before & set(_scalars(app, select(OrgKey.wrapped_key)))
    data = _status(runner)
    assert data["root"]["current_version"] == 2
    assert data["org_keys_by_root_version"] == {"2": 2}
    assert data["index_keys_by_root_version"] == {"2": 2}
    _assert_everything_decrypts(app, client, world)

    result = _invoke(runner, "destroy-root", "1", "--yes")
    assert result.exit_code == 0, result.output
    assert "root key v1 destroyed" in result.output
    assert _keyring(app).describe().destroyed == (1,)
    on_disk = LocalKeyring.load(_keyring(app).path, create_if_missing=False).describe()
    assert (on_disk.versions, on_disk.destroyed) == ((2,), (1,))
    assert _status(runner)["root"]["destroyed"] == [1]

    # Nothing needed version 1: every case, note and search still works without it.
    _assert_everything_decrypts(app, client, world)
    _assert_search_finds_every_case(app, client, world)
    created = client.post(CASES, json=_payload("A", 8), headers=world.headers["A"])
    assert created.status_code == 201

    actions = _scalars(app, select(AuditEvent.action).where(AuditEvent.actor_type == "system"))
    assert {"keys:rotate-root", "keys:destroy-root"} <= set(actions)


def test_destroy_root_refused_while_keys_are_wrapped_under_it(app, client, runner, world):
    # A new root version without re-wrapping (as if `rotate-root` stopped right after it).
    assert _keyring(app).rotate() == 2

    result = _invoke(runner, "destroy-root", "1", "--yes")
    assert result.exit_code != 0
    assert "still wrapped under root version 1" in result.output
    assert _keyring(app).describe().versions == (1, 2)
    _assert_everything_decrypts(app, client, world)

    result = _invoke(runner, "rotate-root", "--resume")
    assert result.exit_code == 0, result.output
    assert "root key v2 current; 4 keys re-wrapped" in result.output
    assert _keyring(app).describe().versions == (1, 2)  # resuming made no new version

    # Without confirmation nothing happens.
    result = _invoke(runner, "destroy-root", "1", input="n\n")
    assert result.exit_code != 0
    assert _keyring(app).describe().destroyed == ()

    result = _invoke(runner, "destroy-root", "1", "--yes")
    assert result.exit_code == 0, result.output
    _assert_everything_decrypts(app, client, world)


def test_destroying_the_current_or_an_unknown_root_version_is_refused(app, client, runner, world):
    assert _invoke(runner, "rotate-root").exit_code == 0
    assert _keyring(app).rotate() == 3  # current, and nothing wrapped under it yet

    for version in ("3", "99"):
        result = _invoke(runner, "destroy-root", version, "--yes")
        assert result.exit_code == 1, result.output
        # A clear refusal, not a crash.
        assert isinstance(result.exception, SystemExit), result.exception
        assert "Error:" in result.output
    assert "current" in _invoke(runner, "destroy-root", "3", "--yes").output
    status = _keyring(app).describe()
    assert (status.current_version, status.versions, status.destroyed) == (3, (1, 2, 3), ())
    # The current version is still usable for new keys.
    created = client.post(CASES, json=_payload("A", 7), headers=world.headers["A"])
    assert created.status_code == 201


# ---- case data keys -----------------------------------------------------------------------


def test_rotate_case_keys_reencrypts_every_case_and_note(app, client, runner, world):
    before = _ciphertexts(app)
    assert {envelope.key_version_of(blob) for blob in before.values()} == {1}

    result = _invoke(runner, "rotate-case-keys")
    assert result.exit_code == 0, result.output
    assert "5 cases re-encrypted under new data keys" in result.output

    after = _ciphertexts(app)
    assert after.keys() == before.keys()
    for place, blob in after.items():
        assert envelope.key_version_of(blob) == 2, place
        assert blob != before[place], place
    assert set(_versions_by_case(app).values()) == {2}
    assert sorted(_scalars(app, select(CaseKey.version))) == [2] * 5
    data = _status(runner)
    assert data["cases_by_key_version"] == {"2": 5}
    assert data["case_keys_by_version"] == {"2": 5}
    assert data["ciphertexts_by_key_version"] == {"2": world.ciphertext_count}
    finished = _scalars(app, select(RotationJob.finished_at).where(RotationJob.kind == "case-keys"))
    assert len(finished) == 1 and finished[0] is not None

    _assert_everything_decrypts(app, client, world)
    _assert_search_finds_every_case(app, client, world)
    # The case remains writable under its new key.
    record = world.cases[0]
    etag = client.get(f"{CASES}/{record.id}", headers=world.headers["A"]).headers["ETag"]
    patched = client.patch(
        f"{CASES}/{record.id}",
        json={"health": {"notes": "after rotation"}},
        headers={**world.headers["A"], "If-Match": etag},
    )
    assert patched.status_code == 200, patched.get_json()
    _clear_key_cache(app)
    body = client.get(f"{CASES}/{record.id}", headers=world.headers["A"]).get_json()
    assert body["health"]["notes"] == "after rotation"


def _open_job(app: Any) -> datetime:
    with db.session_factory_for(app)() as session:
        job = rotation.open_rotation_job(session, "case-keys")
        started_at = job.started_at
        session.commit()
    return started_at


def test_interrupted_sweep_resumes_without_loss_or_double_rotation(app, client, runner, world):
    started_at = _open_job(app)
    factory = db.session_factory_for(app)
    done = rotation.rotate_case_keys(
        factory, started_at=started_at, batch_size=2, stop_after_batches=1
    )
    assert done == 2
    versions = _versions_by_case(app)
    assert sorted(versions.values()) == [1, 1, 1, 2, 2]
    data = _status(runner)
    assert data["case_keys_by_version"] == {"1": 3, "2": 2}
    # Progress is observable: status counts exactly what the blobs' headers say.
    headers = Counter(envelope.key_version_of(b) for b in _ciphertexts(app).values())
    assert set(headers) == {1, 2}
    assert data["ciphertexts_by_key_version"] == {str(v): n for v, n in headers.items()}
    # Mid-sweep, cases on either version read fine.
    _assert_everything_decrypts(app, client, world)

    result = _invoke(runner, "rotate-case-keys")
    assert result.exit_code == 0, result.output
    assert "3 cases re-encrypted" in result.output  # resumed the open job
    assert set(_versions_by_case(app).values()) == {2}  # each case rotated exactly once
    assert sorted(_scalars(app, select(CaseKey.version))) == [2] * 5
    assert {envelope.key_version_of(b) for b in _ciphertexts(app).values()} == {2}
    assert len(_scalars(app, select(RotationJob.id))) == 1
    _assert_everything_decrypts(app, client, world)


def test_sweep_failing_mid_batch_rolls_back_and_rerun_completes(
    app, client, runner, world, monkeypatch
):
    order = sorted(_versions_by_case(app))
    real_reencrypt = rotation.reencrypt

    noted = {c.id for c in world.cases if c.notes}
    # The first case with notes after the first batch (of two) is where the crash comes;
    # the batches before it are committed, its own batch is not.
    target = next(case_id for case_id in order[2:] if case_id in noted)
    committed = 2 * (order.index(target) // 2)

    def failing_on_the_target_note(instance: Any, keys: Any, version: int) -> int:
        # Fails on a note after its case's own fields were re-encrypted under the new
        # key: the rolled-back batch has already used (and cached) that key.
        if isinstance(instance, CaseNote) and str(instance.case_id) == target:
            raise RuntimeError("simulated crash")
        return real_reencrypt(instance, keys, version)

    monkeypatch.setattr(rotation, "reencrypt", failing_on_the_target_note)
    result = _invoke(runner, "rotate-case-keys", "--batch-size", "2")
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    monkeypatch.setattr(rotation, "reencrypt", real_reencrypt)

    versions = _versions_by_case(app)
    assert [versions[case_id] for case_id in order] == [2] * committed + [1] * (5 - committed)
    # The failed batch left nothing behind: no new key without its re-encrypted data.
    assert _status(runner)["case_keys_by_version"] == {"1": 5 - committed, "2": committed}
    unfinished = _scalars(app, select(RotationJob).where(RotationJob.finished_at.is_(None)))
    assert len(unfinished) == 1

    # Retried in the same process (as a job runner would), with whatever the failed batch
    # left in the key cache.
    result = _invoke(runner, "rotate-case-keys", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert f"{5 - committed} cases re-encrypted" in result.output
    assert set(_versions_by_case(app).values()) == {2}
    assert sorted(_scalars(app, select(CaseKey.version))) == [2] * 5
    _assert_everything_decrypts(app, client, world)


# ---- blind-index keys ---------------------------------------------------------------------


def _index_versions_by_case(app: Any) -> dict[str, set[int]]:
    with db.session_factory_for(app)() as session:
        rows = session.execute(select(CaseSearchIndex.case_id, CaseSearchIndex.key_version)).all()
        session.rollback()
    found: dict[str, set[int]] = {}
    for case_id, version in rows:
        found.setdefault(str(case_id), set()).add(version)
    return found


def _index_states(app: Any) -> dict[int, set[str]]:
    with db.session_factory_for(app)() as session:
        rows = session.execute(select(IndexKey.version, IndexKey.state)).all()
        session.rollback()
    states: dict[int, set[str]] = {}
    for version, state in rows:
        states.setdefault(version, set()).add(state)
    return states


def test_rotate_index_keeps_search_working_and_retires_the_old_key(app, client, runner, world):
    _assert_search_finds_every_case(app, client, world)
    entries_before = len(_scalars(app, select(CaseSearchIndex.id)))

    result = _invoke(runner, "rotate-index")
    assert result.exit_code == 0, result.output
    assert "2 organisations on a new index key; 5 cases indexed" in result.output

    assert _index_states(app) == {1: {"retired"}, 2: {"active"}}
    assert set(map(frozenset, _index_versions_by_case(app).values())) == {frozenset({2})}
    assert len(_index_versions_by_case(app)) == 5
    assert _scalars(
        app,
        select(func.count()).select_from(CaseSearchIndex).where(CaseSearchIndex.key_version == 1),
    ) == [0]
    assert len(_scalars(app, select(CaseSearchIndex.id))) == entries_before
    assert _status(runner)["index_keys_by_state"] == {"retired": 2, "active": 2}
    _assert_search_finds_every_case(app, client, world, every_field=True)

    # And again: a second rotation retires version 2 the same way.
    assert _invoke(runner, "rotate-index").exit_code == 0
    assert _index_states(app) == {1: {"retired"}, 2: {"retired"}, 3: {"active"}}
    assert set(map(frozenset, _index_versions_by_case(app).values())) == {frozenset({3})}
    _assert_search_finds_every_case(app, client, world)


def test_index_rotation_dual_writes_until_backfill_completes(app, client, world):
    factory = db.session_factory_for(app)
    with factory() as session:
        assert rotation.start_index_rotation(session) == 2
        session.commit()
    assert _index_states(app) == {1: {"active"}, 2: {"backfilling"}}

    payload = _payload("A", 5)
    response = client.post(CASES, json=payload, headers=world.headers["A"])
    assert response.status_code == 201
    new = CaseRecord(response.get_json()["id"], "A", payload)

    with factory() as session:
        rows = session.execute(
            select(CaseSearchIndex.field, CaseSearchIndex.key_version).where(
                CaseSearchIndex.case_id == uuid.UUID(new.id)
            )
        ).all()
        session.rollback()
    by_version = {v: sorted(f for f, kv in rows if kv == v) for v in (1, 2)}
    assert by_version[1] and by_version[1] == by_version[2]  # every entry written twice
    assert set(by_version[1]) == {"name", "dob", "family_birth", "phone", "document"}
    versions = _index_versions_by_case(app)
    assert all(versions[c.id] == {1} for c in world.cases)  # not backfilled yet
    # Queries still use the active version.
    assert _search(client, world, "A", name=payload["identity"]["given_name"]) == [new.id]

    # An update during dual-write rewrites both versions.
    etag = client.get(f"{CASES}/{new.id}", headers=world.headers["A"]).headers["ETag"]
    renamed = f"Renamed{uuid.uuid4().hex[:8]}"
    patched = client.patch(
        f"{CASES}/{new.id}",
        json={"identity": {"given_name": renamed}},
        headers={**world.headers["A"], "If-Match": etag},
    )
    assert patched.status_code == 200, patched.get_json()
    assert _index_versions_by_case(app)[new.id] == {1, 2}

    filled = rotation.backfill_index(factory, batch_size=2)
    assert filled == len(world.cases)  # the dual-written case needed no backfill
    assert _index_states(app) == {1: {"retired"}, 2: {"active"}}
    assert set(map(frozenset, _index_versions_by_case(app).values())) == {frozenset({2})}
    assert _search(client, world, "A", name=renamed) == [new.id]
    assert _search(client, world, "A", name=payload["identity"]["given_name"]) == []
    _assert_search_finds_every_case(app, client, world)


def test_rotate_org_keys_rewraps_data_keys_under_new_material_and_drops_old_versions(
    app, client, runner, world
):
    org_material_before = set(_scalars(app, select(OrgKey.wrapped_key)))
    data_keys_before = set(_scalars(app, select(CaseKey.wrapped_key)))

    result = _invoke(runner, "rotate-org-keys")
    assert result.exit_code == 0, result.output
    assert f"{len(data_keys_before)} data keys re-wrapped" in result.output

    assert set(_scalars(app, select(OrgKey.version))) == {2}  # version 1 deleted
    assert set(_scalars(app, select(CaseKey.org_key_version))) == {2}
    assert not org_material_before & set(_scalars(app, select(OrgKey.wrapped_key)))
    after = set(_scalars(app, select(CaseKey.wrapped_key)))
    assert len(after) == len(data_keys_before)
    assert not after & data_keys_before  # every data key re-wrapped
    _clear_key_cache(app)
    _assert_everything_decrypts(app, client, world)
    _assert_search_finds_every_case(app, client, world)

    again = _invoke(runner, "rotate-org-keys")
    assert again.exit_code == 0, again.output
    assert set(_scalars(app, select(OrgKey.version))) == {3}
    _clear_key_cache(app)
    _assert_everything_decrypts(app, client, world)
    assert "keys:rotate-org-keys" in set(
        _scalars(app, select(AuditEvent.action).where(AuditEvent.actor_type == "system"))
    )
