"""Key rotation through the `keys` CLI and the rotation jobs (DESIGN.md §6): root rotation
re-wraps keys and frees the old root version for destruction; the case-key sweep leaves no
data under the old data keys and survives interruption; index-key rotation dual-writes,
backfills and retires the old index key while search keeps working."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import assert_problem
from idempotency_support import as_written_before
from rights_support import API, as_bytes, new_token, ok
from rights_support import World as RightsWorld
from sqlalchemy import func, select

from referral_api.access.roles import Role
from referral_api.audit.models import AuditEvent
from referral_api.cases.models import Case, CaseNote, CaseSearchIndex
from referral_api.crypto import envelope, rotation
from referral_api.crypto.fields import ciphertext_attrs, encrypted_models
from referral_api.crypto.keyring import KeyUnavailable, LocalKeyring
from referral_api.crypto.keys import _index_key_aad, _org_key_aad
from referral_api.crypto.models import CaseKey, IndexKey, OrgKey, RotationJob
from referral_api.extensions import db
from referral_api.rights.models import LegalHold

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
        """Every category column of every case holds a ciphertext (its fields null or not),
        plus notes."""
        return len(self.cases) * len(Case.__encrypted_columns__) + self.note_count


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
                for name, stored in type(row).__encrypted_columns__.items():
                    blob = getattr(row, stored.attr)
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
    assert ciphertexts > 50
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
    assert data["ciphertexts_by_format"] == {"4": ciphertexts}

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


def test_a_key_that_will_not_unwrap_is_a_named_503_for_the_operators(
    app, client, world, monkeypatch
):
    """A backup restored after `keys destroy-root`, or served with another deployment's
    keyring: every read was a bare 500 (found by review). It is a 503 naming the problem,
    not retryable, with nothing of the keys in it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    crypto = app.extensions["referral_api.crypto"]
    monkeypatch.setattr(crypto.provider, "_keys", {1: AESGCM.generate_key(bit_length=256)})
    crypto.cache.clear()
    case = world.cases[0]
    response = client.get(f"{CASES}/{case.id}", headers=world.headers[case.org])
    body = assert_problem(response, 503)
    assert body["type"] == "/problems/key-unavailable"
    assert "Retry-After" not in response.headers
    assert case.payload["identity"]["given_name"] not in response.get_data(as_text=True)


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
        assert result.output.startswith("error: ")
    assert "current" in _invoke(runner, "destroy-root", "3", "--yes").output
    status = _keyring(app).describe()
    assert (status.current_version, status.versions, status.destroyed) == (3, (1, 2, 3), ())
    # The current version is still usable for new keys.
    created = client.post(CASES, json=_payload("A", 7), headers=world.headers["A"])
    assert created.status_code == 201


def _add_orgs_with_keys(app: Any, count: int, *, ids: list[uuid.UUID] | None = None) -> None:
    """Organisations with their org key and index key, as the admin API provisions them."""
    from referral_api.auth.models import Organisation
    from referral_api.crypto.fields import crypto_of

    ids = ids or [uuid.uuid4() for _ in range(count)]
    with db.session_factory_for(app)() as session:
        for org_id in ids:
            session.add(Organisation(id=org_id, name=f"rotation-{org_id.hex}", org_type="ngo"))
        session.flush()
        keys = crypto_of(session).keys(session)
        for org_id in ids:
            keys.ensure_org_keys(org_id)
        session.commit()


def _root_wrapped(app: Any) -> dict[tuple[str, uuid.UUID, int], tuple[int, bytes]]:
    """Every root-wrapped key: (table, org, version) → (root_version column, wrapped)."""
    found = {}
    with db.session_factory_for(app)() as session:
        for model in (OrgKey, IndexKey):
            rows = session.execute(
                select(model.org_id, model.version, model.root_version, model.wrapped_key)
            )
            for org_id, version, root_version, wrapped in rows:
                found[(model.__tablename__, org_id, version)] = (root_version, wrapped)
        session.rollback()
    return found


def _key_material(app: Any) -> dict[tuple[str, uuid.UUID, int], bytes]:
    """Every root-wrapped key unwrapped from what the database and keyring hold now (cache
    cleared): what a rotation must preserve exactly."""
    from referral_api.crypto.fields import crypto_of

    _clear_key_cache(app)
    material = {}
    with db.session_factory_for(app)() as session:
        keys = crypto_of(session).keys(session)
        for table, org_id, version in _root_wrapped(app):
            unwrap = keys.org_key if table == OrgKey.__tablename__ else keys.index_key
            material[(table, org_id, version)] = unwrap(org_id, version)
        session.rollback()
    _clear_key_cache(app)
    return material


def _assert_all_under(app: Any, root_version: int) -> None:
    for place, (column, wrapped) in _root_wrapped(app).items():
        assert column == root_version, place
        assert wrapped[:4] == root_version.to_bytes(4, "big"), place  # the header agrees


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("where", ["after a committed batch", "inside a batch"])
def test_interrupted_bulk_root_rotation_resumes_without_loss_or_double_wrap(
    app, client, runner, world, monkeypatch, where
):
    _add_orgs_with_keys(app, 5)  # 7 organisations: 7 org keys and 7 index keys
    material = _key_material(app)
    assert len(material) == 14
    factory = db.session_factory_for(app)

    if where == "after a committed batch":

        def progress(count: int) -> None:
            raise Interrupted

        with pytest.raises(Interrupted):
            rotation.rotate_root(factory, resume=False, batch_size=3, progress=progress)
    else:
        real_write = rotation._write_rewrapped
        calls = []

        def failing_second_write(*args: Any) -> int:
            calls.append(1)
            if len(calls) == 2:
                raise Interrupted  # the batch's UPDATE never reaches the database
            return real_write(*args)

        monkeypatch.setattr(rotation, "_write_rewrapped", failing_second_write)
        with pytest.raises(Interrupted):
            rotation.rotate_root(factory, resume=False, batch_size=3)
        monkeypatch.setattr(rotation, "_write_rewrapped", real_write)

    # Exactly the first batch (3 org keys) is done; the rest is untouched under version 1.
    middle = _root_wrapped(app)
    done = {place for place, (root, _) in middle.items() if root == 2}
    assert len(done) == 3
    assert {table for table, *_ in done} == {"org_keys"}
    assert all(middle[place][1][:4] == b"\x00\x00\x00\x02" for place in done)
    assert _status(runner)["org_keys_by_root_version"] == {"1": 4, "2": 3}
    assert _key_material(app) == material  # mid-rotation, every key still unwraps
    _assert_everything_decrypts(app, client, world)

    result = _invoke(runner, "rotate-root", "--resume")
    assert result.exit_code == 0, result.output
    assert "root key v2 current; 11 keys re-wrapped" in result.output
    assert _keyring(app).describe().versions == (1, 2)  # resuming made no new version

    after = _root_wrapped(app)
    _assert_all_under(app, 2)
    for place in done:  # not wrapped a second time
        assert after[place] == middle[place]
    assert _key_material(app) == material  # same key material, nothing lost

    # Nothing is left on version 1: destroying it loses nothing.
    assert _invoke(runner, "destroy-root", "1", "--yes").exit_code == 0
    assert _key_material(app) == material
    _assert_everything_decrypts(app, client, world)
    _assert_search_finds_every_case(app, client, world)

    again = rotation.rotate_root(factory, resume=True, batch_size=3)
    assert again == (2, 0)
    assert _root_wrapped(app) == after


def test_root_rotation_stays_online_and_picks_up_keys_written_meanwhile(
    app, client, factory, world
):
    _add_orgs_with_keys(app, 5)
    admin = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    # A transaction that wrapped a new organisation's keys under root version 1 just before
    # the rotation, and commits mid-rotation: its org id sorts first, behind the cursor.
    straggler = uuid.UUID(int=1)
    from referral_api.auth.models import Organisation

    with db.session_factory_for(app)() as session:
        session.add(Organisation(id=straggler, name="straggler", org_type="ngo"))
        session.commit()
    secret = os.urandom(32)
    straggler_key = OrgKey(
        org_id=straggler,
        version=1,
        root_version=1,
        wrapped_key=_keyring(app).wrap(secret, _org_key_aad(straggler, 1)),
    )
    material = _key_material(app)
    db_factory = db.session_factory_for(app)
    during: dict[str, Any] = {}

    def progress(count: int) -> None:
        if during:
            return
        # Between two batches: the API keeps working, old and new keys side by side.
        _assert_everything_decrypts(app, client, world)
        created = client.post(CASES, json=_payload("A", 6), headers=world.headers["A"])
        assert created.status_code == 201, created.get_json()
        response = client.post(
            "/api/v1/orgs", json={"name": "Mid-rotation NGO", "org_type": "ngo"}, headers=admin
        )
        assert response.status_code == 201, response.get_json()
        during["org"] = uuid.UUID(response.get_json()["id"])
        during["case"] = created.get_json()["id"]
        with db_factory() as session:
            session.add(straggler_key)
            session.commit()

    version, rewrapped = rotation.rotate_root(
        db_factory, resume=False, batch_size=3, progress=progress
    )
    assert version == 2
    # The new organisation was born under version 2 and needed no re-wrap; the straggler
    # (committed behind the cursor under version 1) was found by the next pass.
    assert rewrapped == len(material) + 1
    _assert_all_under(app, 2)
    wrapped = _root_wrapped(app)
    assert {("org_keys", during["org"], 1), ("index_keys", during["org"], 1)} <= set(wrapped)
    now = _key_material(app)
    assert now[("org_keys", straggler, 1)] == secret
    assert {place: now[place] for place in material} == material

    assert _keyring(app).describe().current_version == 2
    _keyring(app).destroy(1)
    _assert_everything_decrypts(app, client, world)
    read = client.get(f"{CASES}/{during['case']}", headers=world.headers["A"])
    assert read.status_code == 200, read.get_json()


def test_root_rotation_leaves_a_key_rewrapped_by_someone_else_meanwhile(app, world, monkeypatch):
    """Two rotations at once (or a rerun racing an old one): a key another run re-wrapped
    between this batch's read and its write keeps that run's wrapping; it is neither
    overwritten nor counted."""
    from sqlalchemy import update

    _add_orgs_with_keys(app, 1)
    material = _key_material(app)
    real_write = rotation._write_rewrapped
    theirs: dict[str, Any] = {}

    def other_run_first(session: Any, table: Any, rewrapped: list[Any], root: int) -> int:
        if not theirs:
            org_id, version, _, _ = rewrapped[0]
            key = material[(table.name, org_id, version)]
            aad = (_org_key_aad if table.name == "org_keys" else _index_key_aad)(org_id, version)
            theirs.update(place=(table.name, org_id, version), wrapped=_keyring(app).wrap(key, aad))
            session.execute(
                update(table)
                .where(table.c.org_id == org_id, table.c.version == version)
                .values(root_version=root, wrapped_key=theirs["wrapped"])
            )
        return real_write(session, table, rewrapped, root)

    monkeypatch.setattr(rotation, "_write_rewrapped", other_run_first)
    version, rewrapped = rotation.rotate_root(db.session_factory_for(app), resume=False)

    assert (version, rewrapped) == (2, len(material) - 1)
    assert _root_wrapped(app)[theirs["place"]] == (2, theirs["wrapped"])
    _assert_all_under(app, 2)
    assert _key_material(app) == material


def test_root_rotation_stops_at_a_key_that_does_not_unwrap_and_names_it(app, world):
    from sqlalchemy import update

    _add_orgs_with_keys(app, 1)
    victim = sorted(org_id for _, org_id, _ in _root_wrapped(app))[1]
    with db.session_factory_for(app)() as session:
        wrapped = session.scalar(select(IndexKey.wrapped_key).where(IndexKey.org_id == victim))
        session.execute(
            update(IndexKey)
            .where(IndexKey.org_id == victim)
            .values(wrapped_key=wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
        )
        session.commit()

    with pytest.raises(KeyUnavailable) as caught:
        rotation.rotate_root(db.session_factory_for(app), resume=False)

    assert f"index_keys org {victim} version 1" in str(caught.value)
    assert wrapped.hex() not in str(caught.value)
    # Organisation keys were done; the failing batch of index keys wrote nothing.
    assert {
        root for (table, *_), (root, _) in _root_wrapped(app).items() if table == "org_keys"
    } == {2}
    assert {
        root for (table, *_), (root, _) in _root_wrapped(app).items() if table == "index_keys"
    } == {1}


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 8, 5000])
def test_root_rotation_batch_boundaries(app, world, batch_size):
    _add_orgs_with_keys(app, 5)  # 7 keys per table: a multiple of 1 and 7 only
    material = _key_material(app)
    reported: list[int] = []

    version, rewrapped = rotation.rotate_root(
        db.session_factory_for(app), resume=False, batch_size=batch_size, progress=reported.append
    )

    assert (version, rewrapped) == (2, 14)
    assert sum(reported) == 14
    assert all(0 < count <= batch_size for count in reported)
    assert len(reported) == 2 * -(-7 // batch_size)  # each table in ceil(7 / size) batches
    _assert_all_under(app, 2)
    assert _key_material(app) == material
    assert rotation.rotate_root(
        db.session_factory_for(app), resume=True, batch_size=batch_size
    ) == (
        2,
        0,
    )


def test_root_rotation_checks_the_keyring_file_once_per_batch_not_per_key(app, world, monkeypatch):
    _add_orgs_with_keys(app, 28)  # 30 keys per table
    checks = []
    real = LocalKeyring._file_signature

    def counted(self: LocalKeyring) -> tuple[int, int, int]:
        checks.append(1)
        return real(self)

    monkeypatch.setattr(LocalKeyring, "_file_signature", counted)
    version, rewrapped = rotation.rotate_root(
        db.session_factory_for(app), resume=False, batch_size=10
    )
    assert (version, rewrapped) == (2, 60)
    # Per table: 3 full batches, one empty one ending the pass and one confirming pass
    # (5 snapshots); plus rotate() itself. Per key it would be 3 × 60.
    assert len(checks) <= 2 * 5 + 3
    _assert_all_under(app, 2)


def test_keyring_snapshot_is_taken_fresh_and_then_stays_put(tmp_path):
    path = tmp_path / "keyring.json"
    server = LocalKeyring.load(path, create_if_missing=True)
    LocalKeyring.load(path, create_if_missing=False).rotate()  # another process
    snapshot = server.snapshot()
    assert snapshot.current_version() == 2  # the other process's rotation is seen

    LocalKeyring.load(path, create_if_missing=False).rotate()
    wrapped = snapshot.wrap(b"k" * 32, b"ad")
    assert wrapped[:4] == (2).to_bytes(4, "big")  # one version for the whole batch
    assert server.unwrap(wrapped, b"ad") == b"k" * 32
    assert server.current_version() == 3  # single operations still see changes at once
    with pytest.raises(KeyUnavailable):  # a version newer than the snapshot is not in it
        snapshot.unwrap(server.wrap(b"j" * 32, b"ad"), b"ad")
    with pytest.raises(TypeError):
        snapshot.rotate()
    with pytest.raises(TypeError):
        snapshot.destroy(1)
    assert LocalKeyring.load(path, create_if_missing=False).describe().versions == (1, 2, 3)


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


def _store_per_field(app: Any, case_id: str) -> int:
    """Rewrite a case as stored before category columns: each field in its own column,
    format 3, the category columns empty. Returns the number of fields."""
    from sqlalchemy import update

    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(case_id))
        assert case is not None
        place = envelope.place_aad(case.id, case.id)
        data_key = session.info["crypto"].keys(session).case_key(case.id, 1)
        blobs = {
            name: envelope.seal(
                envelope.field_aead(data_key, "cases", name, envelope.FORMAT_V3),
                envelope.header(1, envelope.FORMAT_V3),
                json.dumps(getattr(case, name)).encode(),
                envelope.column_aad("cases", name) + place,
            )
            for name in Case.__encrypted_fields__
        }
        session.execute(
            update(Case.__table__)
            .where(Case.__table__.c.id == case.id)
            .values({**blobs, **dict.fromkeys(Case.__encrypted_columns__)})
        )
        session.commit()
    return len(blobs)


def test_rotate_case_keys_moves_cases_stored_per_field_into_category_columns(
    app, client, runner, world
):
    """A case stored before category columns (one format-3 ciphertext per field) reads as
    before; `keys status` counts its ciphertexts by format, and the sweep re-encrypts it
    into its category columns (format 4), clearing the per-field ones."""
    record = world.cases[1]
    fields = _store_per_field(app, record.id)
    assert fields == 29
    _assert_everything_decrypts(app, client, world)
    data = _status(runner)
    columns = len(Case.__encrypted_columns__)
    assert data["ciphertexts_by_format"] == {
        "3": fields,
        "4": world.ciphertext_count - columns,
    }
    assert data["ciphertexts_by_key_version"] == {"1": world.ciphertext_count - columns + fields}
    assert "ciphertexts by format: v3: 29, v4: " in _invoke(runner, "status").output

    result = _invoke(runner, "rotate-case-keys")
    assert result.exit_code == 0, result.output
    data = _status(runner)
    assert data["ciphertexts_by_format"] == {"4": world.ciphertext_count}
    assert data["ciphertexts_by_key_version"] == {"2": world.ciphertext_count}
    with db.session_factory_for(app)() as session:
        case = session.get(Case, uuid.UUID(record.id))
        assert case is not None
        assert all(getattr(case, c.attr) is not None for c in Case.__encrypted_columns__.values())
        assert all(getattr(case, f.legacy_attr) is None for f in Case.__encrypted_fields__.values())
        session.rollback()
    _assert_everything_decrypts(app, client, world)
    _assert_search_finds_every_case(app, client, world, every_field=True)


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


# ---- everything under a case's data key ---------------------------------------------------


@dataclass
class RichCase:
    """A case with a row in every table encrypted under its data key, and how to read each
    back through the API."""

    id: str
    token: str
    referral: str  # sent with an Idempotency-Key, accepted with a note, messages both ways
    idempotent: tuple[dict[str, Any], dict[str, str]]  # the keyed request: (body, headers)
    override: str  # a draft on a vital-interests override, with its note
    export: str


def _rich_case(people: RightsWorld) -> RichCase:
    """A case with a note, consent with evidence, a consent withdrawn with a reason, a
    referral (message; an Idempotency-Key, its response stored as an earlier version did)
    accepted with a transition note and a message each way, a draft on an override with its
    note, a lifted legal hold with its reason and a subject export: every field of every
    encrypted model carries a ciphertext of this case, most of them its token."""
    client = people.client
    token = new_token("rotate")
    case_id = people.case(token)
    people.note(case_id, "health", f"note {token}")
    shared = ["identity", "legal"]
    evidence = base64.b64encode(f"%PDF-1.4 {token}".encode()).decode()
    people.consent(
        case_id,
        people.receiver_org,
        shared,
        evidence={"media_type": "application/pdf", "content_base64": evidence},
    )
    withdrawn = people.consent(case_id, people.outsider_org, ["needs"])["id"]
    ok(
        client.post(
            f"{API}/consents/{withdrawn}/withdraw",
            json={"reason": f"changed mind {token}"},
            headers=people.h["worker"],
        )
    )
    body = {
        "to_org_id": str(people.receiver_org),
        "purpose": "legal_assistance",
        "categories": shared,
        "message": f"Please help {token}",
        "send": True,
    }
    keyed = {**people.h["worker"], "Idempotency-Key": f"rotate-{uuid.uuid4().hex}"}
    referral = ok(client.post(f"{API}/cases/{case_id}/referrals", json=body, headers=keyed), 201)
    # Stored as an earlier version stored every keyed response (kept for the key's lifetime
    # after an upgrade): a record of this case encrypted under its key too.
    as_written_before(people.app, keyed["Idempotency-Key"], referral)
    people.move(referral["id"], "received")
    people.move(referral["id"], "accepted", note=f"we take it {token}")
    for by in ("receiver", "worker"):
        ok(
            client.post(
                f"{API}/referrals/{referral['id']}/messages",
                json={"body": f"message from {by} {token}"},
                headers=people.h[by],
            ),
            201,
        )
    override = ok(
        client.post(
            f"{API}/cases/{case_id}/referrals",
            json={
                **body,
                "categories": ["health"],
                "send": False,
                "override_reason": "vital_interests",
                "override_note": f"Imminent danger {token}",
            },
            headers=people.h["worker"],
        ),
        201,
    )["id"]
    ok(people.hold(case_id, True, reason=f"court order {token}"))
    ok(people.hold(case_id, False))
    export = ok(
        client.post(
            f"{API}/cases/{case_id}/export",
            json={"reason": f"subject request {token}"},
            headers=people.h["sup"],
        ),
        201,
    )["id"]
    return RichCase(case_id, token, referral["id"], (body, keyed), override, export)


@pytest.fixture
def people(app: Any, factory: Any, client: Any) -> RightsWorld:
    return RightsWorld(app, factory, client)


def _plaintexts(app: Any) -> dict[tuple[str, str, str], Any]:
    """Every encrypted field of every record of every encrypted model, decrypted through
    the ORM with every key unwrapped afresh: (table, row id, field) → value."""
    _clear_key_cache(app)
    values: dict[tuple[str, str, str], Any] = {}
    with db.session_factory_for(app)() as session:
        for model in encrypted_models():
            for record in session.scalars(select(model)):
                for name in model.__encrypted_fields__:
                    place = (model.__tablename__, str(record.crypto_row_id()), name)
                    values[place] = getattr(record, name)
        session.rollback()
    return values


def _headers(app: Any) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """(format, algorithm, key version) from the header bytes of every ciphertext held by
    an encrypted model, read without the ORM: (table, row id, column) → header."""
    found: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    with db.session_factory_for(app)() as session:
        for model in encrypted_models():
            table = model.__table__
            (row_id,) = table.primary_key.columns
            for attr in ciphertext_attrs(model):
                column = table.c[getattr(model, attr).property.columns[0].name]
                for key, value in session.execute(
                    select(row_id, column).where(column.is_not(None))
                ):
                    blob = as_bytes(value)
                    assert blob is not None
                    header = (blob[0], blob[1], int.from_bytes(blob[2:6], "big"))
                    found[(table.name, str(key), column.name)] = header
        session.rollback()
    return found


def _assert_rich_case_reads(app: Any, client: Any, people: RightsWorld, rich: RichCase) -> None:
    """What each party reads of the case through the API is still there, keys unwrapped
    afresh."""
    _clear_key_cache(app)
    h, token = people.h, rich.token
    case = ok(client.get(f"{API}/cases/{rich.id}", headers=h["worker"]))
    assert case["identity"]["given_name"] == f"Olena{token}"
    notes = ok(client.get(f"{API}/cases/{rich.id}/notes", headers=h["worker"]))
    assert [n["text"] for n in notes] == [f"note {token}"]
    for by in ("worker", "receiver"):  # the sender's read once answered 500
        referral = ok(client.get(f"{API}/referrals/{rich.referral}", headers=h[by]))
        assert referral["message"] == f"Please help {token}", by
        thread = ok(client.get(f"{API}/referrals/{rich.referral}/messages", headers=h[by]))
        assert {m["body"] for m in thread} == {
            f"message from receiver {token}",
            f"message from worker {token}",
        }
    # The override note is shown by no endpoint: `_plaintexts` reads it through the ORM.
    override = ok(client.get(f"{API}/referrals/{rich.override}", headers=h["worker"]))
    assert override["message"] == f"Please help {token}"
    body, keyed = rich.idempotent
    replay = client.post(f"{API}/cases/{rich.id}/referrals", json=body, headers=keyed)
    assert replay.status_code == 201, replay.get_data(as_text=True)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["id"] == rich.referral
    assert replay.get_json()["message"] == f"Please help {token}"


def test_rotate_case_keys_reencrypts_every_record_under_the_case_key(app, client, runner, people):
    """Not only the case and its notes: consents and their events, referrals, their
    history and messages, legal holds, exports and stored responses are encrypted under the
    case's data key too, and its old versions are deleted. Each record still decrypts
    (through the ORM and the API), every ciphertext names the new key version, and
    `keys status` counts every one of them."""
    rich = [_rich_case(people), _rich_case(people)]
    before = _plaintexts(app)
    # The arrangement holds a ciphertext in every encrypted model, so none goes unchecked.
    held = {table for table, _, _ in _headers(app)}
    assert held == {model.__tablename__ for model in encrypted_models()}
    assert len(held) >= 10
    for table in held - {"idempotent_responses"}:
        values = json.dumps([v for (t, _, _), v in before.items() if t == table])
        if table == "consent_records":  # the evidence file, base64
            values = json.dumps(
                [
                    base64.b64decode(v).decode()
                    for (t, _, _), v in before.items()
                    if t == table and v
                ]
            )
        assert rich[0].token in values, table
    assert before[("referrals", rich[0].override, "override_note")] == (
        f"Imminent danger {rich[0].token}"
    )
    headers = _headers(app)
    assert set(headers.values()) == {(envelope.FORMAT_V4, envelope.ALG_AES_256_GCM, 1)}
    data = _status(runner)
    assert data["ciphertexts_by_key_version"] == {"1": len(headers)}
    assert data["ciphertexts_by_format"] == {"4": len(headers)}

    result = _invoke(runner, "rotate-case-keys")
    assert result.exit_code == 0, result.output
    assert "2 cases re-encrypted under new data keys" in result.output

    assert _plaintexts(app) == before
    after = _headers(app)
    assert after.keys() == headers.keys()
    assert set(after.values()) == {(envelope.FORMAT_V4, envelope.ALG_AES_256_GCM, 2)}
    assert sorted(_scalars(app, select(CaseKey.version))) == [2, 2]
    data = _status(runner)
    assert data["case_keys_by_version"] == {"2": 2}
    assert data["ciphertexts_by_key_version"] == {"2": len(after)}
    assert data["ciphertexts_by_format"] == {"4": len(after)}
    for case in rich:
        _assert_rich_case_reads(app, client, people, case)
        # The export, downloaded once, after the rotation.
        download = client.get(f"{API}/exports/{case.export}/download", headers=people.h["sup"])
        assert download.status_code == 200, download.get_data(as_text=True)
        assert case.token in download.get_data(as_text=True)


def test_interrupted_sweep_leaves_every_record_readable_and_rerun_completes(
    app, client, runner, people
):
    """Stopped after one batch of one case: the rotated case's records are all under its new
    key, the others' under their old one, and every record reads; run again, the sweep
    finishes the others without loss."""
    rich = [_rich_case(people) for _ in range(3)]
    before = _plaintexts(app)
    factory = db.session_factory_for(app)
    done = rotation.rotate_case_keys(
        factory, started_at=_open_job(app), batch_size=1, stop_after_batches=1
    )
    assert done == 1
    versions = _versions_by_case(app)
    (rotated,) = (case_id for case_id, version in versions.items() if version == 2)
    # Each case's re-encryption is on its access log, committed with it (and only then).
    swept = select(AuditEvent.case_id).where(AuditEvent.action == "keys:rotate-case-key")
    assert [str(c) for c in _scalars(app, swept)] == [str(rotated)]
    case_of = _case_of_ciphertexts(app)
    headers = _headers(app)
    for place, (_, _, version) in headers.items():
        assert version == (2 if case_of[place] == rotated else 1), place
    assert _status(runner)["ciphertexts_by_key_version"] == dict(
        Counter(str(version) for _, _, version in headers.values())
    )
    assert _plaintexts(app) == before
    for case in rich:
        _assert_rich_case_reads(app, client, people, case)

    result = _invoke(runner, "rotate-case-keys", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert "2 cases re-encrypted" in result.output
    assert set(_versions_by_case(app).values()) == {2}
    assert sorted(str(c) for c in _scalars(app, swept)) == sorted(versions)
    assert {version for _, _, version in _headers(app).values()} == {2}
    assert _status(runner)["ciphertexts_by_key_version"] == {"2": len(headers)}
    assert _plaintexts(app) == before
    for case in rich:
        _assert_rich_case_reads(app, client, people, case)


def test_sweep_reads_each_table_once_per_batch_not_once_per_case(app, people):
    """The records of a batch's cases are loaded with one (locking) query per encrypted
    table, however many cases the batch holds."""
    from sqlalchemy import event

    for _ in range(3):
        _rich_case(people)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = db.engine_for(app)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        done = rotation.rotate_case_keys(
            db.session_factory_for(app), started_at=_open_job(app), batch_size=3
        )
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert done == 3
    for model in encrypted_models():
        if model is Case:
            continue
        reads = [
            s
            for s in statements
            if s.lstrip().upper().startswith("SELECT")
            and re.search(rf"\bFROM {model.__tablename__}\b", s)
        ]
        assert len(reads) == 1, (model.__tablename__, reads)


def _case_of_ciphertexts(app: Any) -> dict[tuple[str, str, str], str]:
    """The case each ciphertext of `_headers` belongs to."""
    owners: dict[tuple[str, str, str], str] = {}
    with db.session_factory_for(app)() as session:
        for model in encrypted_models():
            for record in session.scalars(select(model)):
                for attr in ciphertext_attrs(model):
                    name = getattr(model, attr).property.columns[0].name
                    place = (model.__tablename__, str(record.crypto_row_id()), name)
                    owners[place] = str(record.crypto_case_id())
        session.rollback()
    return owners


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


def test_rotate_index_keeps_search_working_and_deletes_the_old_key(app, client, runner, world):
    _assert_search_finds_every_case(app, client, world)
    entries_before = len(_scalars(app, select(CaseSearchIndex.id)))

    result = _invoke(runner, "rotate-index")
    assert result.exit_code == 0, result.output
    assert "2 organisations on a new index key; 5 cases indexed" in result.output

    # The old key goes with its index rows: kept, a backup's index rows of an erased person
    # could still confirm a guessed name.
    assert _index_states(app) == {2: {"active"}}
    assert set(map(frozenset, _index_versions_by_case(app).values())) == {frozenset({2})}
    assert len(_index_versions_by_case(app)) == 5
    assert _scalars(
        app,
        select(func.count()).select_from(CaseSearchIndex).where(CaseSearchIndex.key_version == 1),
    ) == [0]
    assert len(_scalars(app, select(CaseSearchIndex.id))) == entries_before
    assert _status(runner)["index_keys_by_state"] == {"active": 2}
    _assert_search_finds_every_case(app, client, world, every_field=True)

    # And again: a second rotation deletes version 2 the same way.
    assert _invoke(runner, "rotate-index").exit_code == 0
    assert _index_states(app) == {3: {"active"}}
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
    assert _index_states(app) == {2: {"active"}}
    assert set(map(frozenset, _index_versions_by_case(app).values())) == {frozenset({2})}
    assert _search(client, world, "A", name=renamed) == [new.id]
    assert _search(client, world, "A", name=payload["identity"]["given_name"]) == []
    _assert_search_finds_every_case(app, client, world)


def test_index_backfill_ends_when_cases_have_nothing_to_index(app, client, world):
    """Cases with no name, birth date, phone or document (only `case_type` is required) get
    no entry: the backfill passes them once instead of selecting them again forever."""
    bare = [
        ok(client.post(CASES, json={"case_type": "gbv"}, headers=world.headers["A"]), 201)["id"]
        for _ in range(5)
    ]
    factory = db.session_factory_for(app)
    with factory() as session:
        rotation.start_index_rotation(session)
        session.commit()
    done: list[int] = []
    finished = threading.Thread(
        target=lambda: done.append(rotation.backfill_index(factory, batch_size=2)), daemon=True
    )
    finished.start()
    finished.join(timeout=30)
    assert done, "the backfill did not end"
    assert done == [len(world.cases) + len(bare)]
    backfilled = select(AuditEvent.case_id).where(AuditEvent.action == "keys:index-backfill")
    assert len(_scalars(app, backfilled)) == len(world.cases) + len(bare)
    assert _index_states(app) == {2: {"active"}}
    assert not set(bare) & set(_index_versions_by_case(app))
    _assert_search_finds_every_case(app, client, world)


class _Interrupted(Exception):
    pass


def test_rotate_index_rerun_after_an_interruption_resumes_it(app, client, runner, world):
    """docs/key-management.md: a rerun continues the backfilling version. An organisation
    the interrupted run had switched already was rotated a second time (a reviewer's
    probe): a crash near the end of a long rotation redid nearly all of it."""
    factory = db.session_factory_for(app)
    with factory() as session:
        assert rotation.start_index_rotation(session) == 2
        session.commit()
    calls: list[int] = []

    def progress(count: int) -> None:
        calls.append(count)
        if len(calls) == 2:  # the first organisation switched, the second's first batch done
            raise _Interrupted

    with pytest.raises(_Interrupted):
        rotation.backfill_index(factory, batch_size=100, progress=progress)
    with factory() as session:
        states = session.execute(select(IndexKey.org_id, IndexKey.version, IndexKey.state)).all()
        session.rollback()
    by_org: dict[Any, list[tuple[int, str]]] = {}
    for org_id, version, state in states:
        by_org.setdefault(org_id, []).append((version, state))
    assert sorted(map(sorted, by_org.values())) == [
        [(1, "active"), (2, "backfilling")],
        [(2, "active")],
    ]

    result = _invoke(runner, "rotate-index")
    assert result.exit_code == 0, result.output
    assert "0 organisations on a new index key" in result.output
    assert _index_states(app) == {2: {"active"}}
    _assert_search_finds_every_case(app, client, world)
    # Finished: the next run is a new rotation.
    assert _invoke(runner, "rotate-index").exit_code == 0
    assert _index_states(app) == {3: {"active"}}


@pytest.mark.parametrize("org", ["A", "B"])  # one of them is switched first
def test_the_switch_indexes_again_a_case_a_stale_write_left_without_the_new_version(
    app, client, world, org
):
    """A write that began before the backfilling version existed writes the old version
    only, and a PATCH first deletes all of its case's entries, the backfilled ones too.
    Committed between the backfill's pass and the switch, it left the case with no entry
    under the new version: after the switch no search found it."""
    factory = db.session_factory_for(app)
    with factory() as session:
        rotation.start_index_rotation(session)
        session.commit()
    target = uuid.UUID(next(c.id for c in world.cases if c.org == org))
    written: list[int] = []

    def stale_write(_count: int) -> None:
        # Once, after the batch that backfilled the target (its organisation's, whichever
        # comes first): what such a PATCH leaves, its entries under the old version only.
        if written:
            return
        with factory() as session:
            deleted = session.execute(
                CaseSearchIndex.__table__.delete().where(
                    CaseSearchIndex.case_id == target, CaseSearchIndex.key_version == 2
                )
            )
            session.commit()
        if deleted.rowcount:
            written.append(deleted.rowcount)

    rotation.backfill_index(factory, batch_size=100, progress=stale_write)
    assert written, "the stale write did not happen"
    # Decrypted twice to be indexed (its batch, the switch's catch-up): twice on its log.
    indexed = select(AuditEvent.id).where(
        AuditEvent.action == "keys:index-backfill", AuditEvent.case_id == target
    )
    assert len(_scalars(app, indexed)) == 2
    assert _index_versions_by_case(app)[str(target)] == {2}
    _assert_search_finds_every_case(app, client, world)


def test_rotate_org_keys_rewraps_data_keys_under_new_material_and_drops_old_versions(
    app, client, runner, world
):
    provider = app.extensions["referral_api.crypto"].provider

    def org_key_material() -> set[bytes]:
        """The organisation keys themselves (unwrapped), not their wrapped blobs: re-wrapping
        alone would change every blob and prove nothing."""
        with db.session_factory_for(app)() as s:
            rows = s.execute(select(OrgKey.org_id, OrgKey.version, OrgKey.wrapped_key)).all()
            s.rollback()
        return {provider.unwrap(w, _org_key_aad(org, version)) for org, version, w in rows}

    org_material_before = set(_scalars(app, select(OrgKey.wrapped_key)))
    org_keys_before = org_key_material()
    data_keys_before = set(_scalars(app, select(CaseKey.wrapped_key)))

    result = _invoke(runner, "rotate-org-keys")
    assert result.exit_code == 0, result.output
    assert re.search(rf"(?<!\d){len(data_keys_before)} data keys re-wrapped", result.output)
    assert not org_keys_before & org_key_material()  # new key material, not a re-wrap

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


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two writers at once need PostgreSQL (SQLite runs one writer at a time)",
)
def test_a_record_written_during_a_sweep_goes_under_the_new_key(app, client, factory, monkeypatch):
    """A legal hold placed while the sweep holds its case (re-encrypted, old key deleted, not
    yet committed) waits for it and its reason is encrypted under the new key, not the
    deleted one. (A note or a referral message also changes the case or referral row the
    sweep rewrote, so its request is refused with 412 and writes nothing.)"""
    from referral_api.crypto.keys import KeyCache

    world = RightsWorld(app, factory, client)
    token = new_token("race")
    case_id = world.case(token)
    during: dict[str, Any] = {}
    discard = KeyCache.discard_case

    def place_a_hold() -> None:
        try:
            during["hold"] = ok(world.hold(case_id, True, reason=f"during the sweep {token}"))
        except BaseException as error:  # noqa: BLE001 - reported by the test's thread
            during["error"] = error

    def sweep_holding_the_case(cache: Any, swept: uuid.UUID) -> None:
        if "thread" not in during:
            during["thread"] = threading.Thread(target=place_a_hold)
            during["thread"].start()
            during["thread"].join(timeout=1.0)
            during["waited"] = during["thread"].is_alive()
        discard(cache, swept)

    monkeypatch.setattr(KeyCache, "discard_case", sweep_holding_the_case)
    assert rotation.rotate_case_keys(db.session_factory_for(app), started_at=datetime.now(UTC))
    during["thread"].join(timeout=10)
    assert "error" not in during, during.get("error")
    assert during["waited"], "the hold did not wait for the sweep's transaction"
    _clear_key_cache(app)
    with db.session_factory_for(app)() as session:
        [hold] = session.scalars(select(LegalHold).where(LegalHold.case_id == uuid.UUID(case_id)))
        assert envelope.key_version_of(as_bytes(hold.reason_ct)) == 2
        assert hold.reason == f"during the sweep {token}"
        session.rollback()


def test_a_key_version_removed_meanwhile_is_told_from_a_missing_one(app, client, factory):
    """A request holding rows read before a rotation or an erasure removed the key version
    they are under gets `KeyRemovedConcurrently` (errors.py: the retryable 503 of a
    concurrent change); a key missing for no such reason stays a plain `KeyUnavailable`
    (a fault: the 500 that logs it)."""
    from sqlalchemy import delete, update

    from referral_api.crypto.fields import crypto_of
    from referral_api.crypto.keys import KeyRemovedConcurrently

    headers = factory.headers(factory.user(Role.CASEWORKER))
    ids = []
    for name in ("Swept", "Erased"):
        created = client.post(
            CASES, json={"case_type": "gbv", "identity": {"given_name": name}}, headers=headers
        )
        assert created.status_code == 201, created.get_json()
        ids.append(uuid.UUID(created.get_json()["id"]))
    swept, erased = ids
    sessions = db.session_factory_for(app)
    rotation.rotate_case_keys(sessions, started_at=datetime.now(UTC))
    with sessions() as s:  # the state an erasure leaves, as far as keys go
        s.execute(delete(CaseKey).where(CaseKey.case_id == erased))
        s.execute(update(Case).where(Case.id == erased).values(erased=True))
        s.commit()

    def case_key(case_id: uuid.UUID, version: int) -> None:
        _clear_key_cache(app)
        with sessions() as s:
            crypto_of(s).case_key(s, case_id, version)

    with pytest.raises(KeyRemovedConcurrently):
        case_key(swept, 1)  # swept to version 2
    with pytest.raises(KeyRemovedConcurrently):
        case_key(erased, 2)
    case_key(swept, 2)
    with sessions() as s:
        s.execute(delete(CaseKey).where(CaseKey.case_id == swept))
        s.commit()
    with pytest.raises(KeyUnavailable) as missing:
        case_key(swept, 2)
    assert not isinstance(missing.value, KeyRemovedConcurrently)
