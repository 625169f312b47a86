"""Unit tests of the crypto building blocks: ciphertext format and associated data, field
subkeys, root-key providers, the key cache, blind-index normalisers and the bit planner."""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import uuid

import pytest
from conftest import FakeClock
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from referral_api.crypto import envelope
from referral_api.crypto import keyring as keyring_module
from referral_api.crypto import keys as keys_module
from referral_api.crypto.blind_index import (
    MAX_BITS,
    MIN_BITS,
    blind_index,
    normalise_document,
    normalise_name,
    normalise_phone,
    plan_bits,
)
from referral_api.crypto.envelope import DecryptionError
from referral_api.crypto.keyring import InMemoryKeyring, KeyUnavailable, LocalKeyring
from referral_api.crypto.keys import KeyCache
from referral_api.exceptions import ConfigurationError

TABLE = "cases"
COLUMN = "identity"
PLAINTEXT = "Олена Коваленко".encode()


@pytest.fixture
def place() -> dict[str, object]:
    return {"table": TABLE, "column": COLUMN, "row_id": uuid.uuid4(), "case_id": uuid.uuid4()}


@pytest.fixture
def subkey() -> bytes:
    return envelope.field_subkey(os.urandom(32), TABLE, COLUMN)


# ---- envelope -----------------------------------------------------------------------------


def test_round_trip(subkey, place):
    blob = envelope.encrypt(subkey, 7, PLAINTEXT, **place)
    assert envelope.decrypt(subkey, blob, **place) == PLAINTEXT
    assert PLAINTEXT not in blob


def test_empty_plaintext_round_trips(subkey, place):
    blob = envelope.encrypt(subkey, 1, b"", **place)
    assert envelope.decrypt(subkey, blob, **place) == b""


def test_header_layout(subkey, place):
    blob = envelope.encrypt(subkey, 0x01020304, PLAINTEXT, **place)
    assert blob[0] == 4  # format version: only FORMAT_V4 is written
    assert blob[1] == 1  # AES-256-GCM
    assert blob[2:6] == b"\x01\x02\x03\x04"  # key version, big-endian
    assert envelope.HEADER_BYTES == 6
    assert envelope.key_version_of(blob) == 0x01020304
    # header ‖ 12-byte nonce ‖ ciphertext (same length as plaintext) ‖ 16-byte tag
    assert len(blob) == 6 + 12 + len(PLAINTEXT) + 16


def test_nonce_is_fresh_per_encryption(subkey, place):
    first = envelope.encrypt(subkey, 1, PLAINTEXT, **place)
    second = envelope.encrypt(subkey, 1, PLAINTEXT, **place)
    assert first[:6] == second[:6]
    assert first[6:18] != second[6:18]  # nonces differ: no deterministic encryption
    assert first[18:] != second[18:]


def test_ciphertext_is_aes_gcm_over_the_documented_associated_data(subkey, place):
    """The blob decrypts with plain AESGCM given header ‖ len-prefixed table, column, row
    id and case id — the format is what DESIGN.md §6 says, not merely self-consistent."""
    blob = envelope.encrypt(subkey, 3, PLAINTEXT, **place)
    header, nonce, sealed = blob[:6], blob[6:18], blob[18:]

    def lp(part: bytes) -> bytes:
        return struct.pack(">I", len(part)) + part

    aad = (
        header
        + lp(TABLE.encode())
        + lp(COLUMN.encode())
        + lp(place["row_id"].bytes)  # type: ignore[attr-defined]
        + lp(place["case_id"].bytes)  # type: ignore[attr-defined]
    )
    assert AESGCM(subkey).decrypt(nonce, sealed, aad) == PLAINTEXT


@pytest.mark.parametrize(
    "moved",
    [
        {"table": "case_notes"},
        {"column": "contact"},
        {"row_id": uuid.uuid4()},
        {"case_id": uuid.uuid4()},
    ],
    ids=["table", "column", "row", "case"],
)
def test_blob_moved_elsewhere_fails(subkey, place, moved):
    blob = envelope.encrypt(subkey, 1, PLAINTEXT, **place)
    with pytest.raises(DecryptionError):
        envelope.decrypt(subkey, blob, **{**place, **moved})


def test_length_prefixing_keeps_table_and_column_apart(subkey, place):
    """("case", "snotes") and ("cases", "notes") concatenate alike; the AAD must not."""
    blob = envelope.encrypt(subkey, 1, PLAINTEXT, **{**place, "table": "case", "column": "snotes"})
    with pytest.raises(DecryptionError):
        envelope.decrypt(subkey, blob, **{**place, "table": "cases", "column": "notes"})


@pytest.mark.parametrize(
    "position",
    [0, 1, 2, 5, 6, 17, 18, -17, -16, -1],
    ids=[
        "format",
        "algorithm",
        "version-high",
        "version-low",
        "nonce-first",
        "nonce-last",
        "ciphertext-first",
        "ciphertext-last",
        "tag-first",
        "tag-last",
    ],
)
def test_any_flipped_byte_fails(subkey, place, position):
    blob = bytearray(envelope.encrypt(subkey, 1, PLAINTEXT, **place))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        envelope.decrypt(subkey, bytes(blob), **place)


def test_truncated_or_foreign_blobs_fail(subkey, place):
    blob = envelope.encrypt(subkey, 1, PLAINTEXT, **place)
    for broken in (b"", blob[:6], blob[: 6 + 12 + 15], b"\x00" + blob[1:], b"\x05" + blob[1:]):
        with pytest.raises(DecryptionError):
            envelope.decrypt(subkey, broken, **place)


def test_wrong_key_fails(subkey, place):
    blob = envelope.encrypt(subkey, 1, PLAINTEXT, **place)
    with pytest.raises(DecryptionError):
        envelope.decrypt(os.urandom(32), blob, **place)


def test_decryption_error_says_nothing_about_the_value(subkey, place):
    blob = envelope.encrypt(subkey, 1, b"canary-value-xyz", **place)
    with pytest.raises(DecryptionError) as caught:
        envelope.decrypt(subkey, blob, **{**place, "row_id": uuid.uuid4()})
    assert "canary" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_field_subkey_per_table_column_and_key():
    dek = os.urandom(32)
    derived = {
        (table, column): envelope.field_subkey(dek, table, column)
        for table, column in (
            ("cases", "identity"),
            ("cases", "contact"),
            ("cases", "needs"),
            ("case_notes", "text"),
            ("referral_messages", "body"),
            ("subject_exports", "reason"),
        )
    }
    derived[("cases", "given_name", 3)] = envelope.field_subkey(  # type: ignore[index]
        dek, "cases", "given_name", envelope.FORMAT_V3
    )
    derived[("case_notes", "text", 3)] = envelope.field_subkey(  # type: ignore[index]
        dek, "case_notes", "text", envelope.FORMAT_V3
    )
    assert len(set(derived.values())) == len(derived)
    assert all(len(key) == 32 for key in derived.values())
    assert envelope.field_subkey(dek, "cases", "identity") == derived[("cases", "identity")]
    assert (
        envelope.field_subkey(os.urandom(32), "cases", "identity") != derived[("cases", "identity")]
    )
    assert dek not in derived.values()


def test_subkey_of_another_column_cannot_decrypt(place):
    dek = os.urandom(32)
    blob = envelope.encrypt(envelope.field_subkey(dek, TABLE, COLUMN), 1, PLAINTEXT, **place)
    with pytest.raises(DecryptionError):
        envelope.decrypt(envelope.field_subkey(dek, TABLE, "contact"), blob, **place)


def _lp(part: bytes) -> bytes:
    return struct.pack(">I", len(part)) + part


def test_field_subkeys_are_the_documented_hkdf_derivations():
    """V4 (written) and V3 (read): the slot-th 32 bytes of HKDF-Expand-SHA256 of the data key
    with info "referral_api field keys v4" (v3) and the length-prefixed table, 32 bytes per
    slot of the table in that format; V2 and V1 (still read): HKDF-Expand with a per-column
    info, HKDF with info "table/column". Computed here independently, with `cryptography`'s
    own HKDF, so a silent change of any derivation (which would make stored ciphertexts
    undecryptable) fails."""
    dek = os.urandom(32)
    v4_slots = len(envelope.FIELD_KEY_SLOTS[envelope.FORMAT_V4]["cases"])
    v4 = HKDFExpand(
        hashes.SHA256(), 32 * v4_slots, b"referral_api field keys v4\x00" + _lp(b"cases")
    ).derive(dek)
    v3_slots = len(envelope.FIELD_KEY_SLOTS[envelope.FORMAT_V3]["cases"])
    schedule = HKDFExpand(
        hashes.SHA256(), 32 * v3_slots, b"referral_api field keys v3\x00" + _lp(b"cases")
    ).derive(dek)
    v3_given, v3_family = schedule[:32], schedule[32:64]
    v2 = HKDFExpand(
        hashes.SHA256(), 32, b"referral_api field key v2\x00" + _lp(b"cases") + _lp(b"given_name")
    ).derive(dek)
    v1 = HKDF(hashes.SHA256(), 32, salt=None, info=b"cases/given_name").derive(dek)
    assert envelope.field_subkey(dek, "cases", "identity") == v4[:32]
    assert envelope.field_subkey(dek, "cases", "contact", envelope.FORMAT_V4) == v4[32:64]
    assert envelope.field_subkey(dek, "cases", "needs") == v4[-32:]
    assert envelope.field_subkey(dek, "cases", "given_name", envelope.FORMAT_V3) == v3_given
    assert envelope.field_subkey(dek, "cases", "family_name", envelope.FORMAT_V3) == v3_family
    assert envelope.field_subkey(dek, "cases", "service_plan", 3) == schedule[-32:]
    assert envelope.field_subkey(dek, "cases", "given_name", envelope.FORMAT_V2) == v2
    assert envelope.field_subkey(dek, "cases", "given_name", envelope.FORMAT_V1) == v1
    assert len({v1, v2, v3_given, v3_family, v4[:32]}) == 5
    # The same table and column under formats 3 and 4: distinct keys (distinct labels).
    assert envelope.field_subkey(dek, "case_notes", "text", 3) != envelope.field_subkey(
        dek, "case_notes", "text", 4
    )
    with pytest.raises(ValueError):
        envelope.field_subkey(dek, "cases", "given_name", 9)
    with pytest.raises(ValueError, match="format 4"):
        envelope.field_subkey(dek, "cases", "given_name")  # per-field columns: formats 1-3


def test_field_key_slots_are_pinned_and_cover_every_encrypted_column():
    """A slot names a column's key in every ciphertext written under it: the table's slots
    may only grow at the end (this pins today's), and every encrypted column has one."""
    import referral_api.consent.models
    import referral_api.idempotency
    import referral_api.referrals.models
    import referral_api.rights.models  # noqa: F401 (registers the models)
    from referral_api.cases.models import Case
    from referral_api.crypto.fields import EncryptedRecord

    others = {
        "case_notes": ["text"],
        "consent_records": ["evidence"],
        "consent_events": ["reason"],
        "referrals": ["message", "override_note"],
        "referral_transitions": ["note"],
        "referral_messages": ["body"],
        "legal_holds": ["reason"],
        "subject_exports": ["document", "reason"],
        "idempotent_responses": ["body"],
    }
    v3_cases = [
        "given_name",
        "family_name",
        "aliases",
        "date_of_birth",
        "sex",
        "nationality",
        "languages",
        "documents",
        "phone",
        "email",
        "safe_contact_notes",
        "address",
        "is_shelter",
        "gbv_type",
        "exploitation_types",
        "means_of_control",
        "recruiter_relation",
        "incident_date",
        "incident_place",
        "narrative",
        "health_notes",
        "psychosocial_notes",
        "legal_status",
        "legal_proceedings",
        "lawyer",
        "residence_status",
        "reflection_period_until",
        "needs_assessment",
        "service_plan",
    ]
    v4_cases = [
        "identity",
        "contact",
        "location",
        "incident_codes",
        "incident",
        "health",
        "psychosocial",
        "legal",
        "immigration",
        "needs",
    ]
    pinned = {
        envelope.FORMAT_V3: {"cases": v3_cases, **others},
        envelope.FORMAT_V4: {"cases": v4_cases, **others},
    }
    assert set(envelope.FIELD_KEY_SLOTS) == set(pinned)
    # Format 3 is read only: its slots are exactly these, for ever.
    assert envelope.FIELD_KEY_SLOTS[3] == {t: tuple(c) for t, c in pinned[3].items()}
    for table, columns in pinned[envelope.FORMAT_V4].items():
        assert list(envelope.FIELD_KEY_SLOTS[4][table][: len(columns)]) == columns, table

    def models(base: type) -> list[type]:
        found = []
        for sub in base.__subclasses__():
            found += [sub, *models(sub)]
        return found

    records = [m for m in models(EncryptedRecord) if "__tablename__" in m.__dict__]
    written = {(m.__tablename__, column) for m in records for column in m.__encrypted_columns__}
    assert ("cases", "needs") in written and Case in records
    assert written == {
        (table, column)
        for table, columns in envelope.FIELD_KEY_SLOTS[envelope.FORMAT_V4].items()
        for column in columns
    }
    # Every field has a column written in format 4; the fields of a category column keep
    # their own columns of formats 1-3 (read only), and format 3 has a slot for each.
    kept = {
        (m.__tablename__, name)
        for m in records
        for name, field in m.__encrypted_fields__.items()
        if field.legacy_attr is not None
    }
    assert kept == {("cases", name) for name in v3_cases}
    assert {
        (m.__tablename__, f.name) for m in records for f in m.__encrypted_fields__.values()
    } == (kept | {(t, c) for t, cs in others.items() for c in cs})
    with pytest.raises(ValueError, match=r"cases\.nickname has no field-key slot"):
        envelope.field_subkey(os.urandom(32), "cases", "nickname")


def test_field_keys_derive_only_the_planned_slots_then_the_whole_table(monkeypatch):
    """Announced columns size the first derivation (a search's identity column: slot 0 of
    10); a wider plan derives again up to it, a column beyond every plan derives the whole
    table; each format has its own schedule; every key equals `field_subkey`'s."""
    derived: list[tuple[int, int]] = []
    real = envelope._schedule

    def spy(data_key: bytes, table: str, slots: int, fmt: int) -> bytes:
        derived.append((fmt, slots))
        return real(data_key, table, slots, fmt)

    monkeypatch.setattr(envelope, "_schedule", spy)
    dek, dek_id = os.urandom(32), uuid.uuid4()
    keys = envelope.FieldKeys(dek, "cases")
    keys.plan(["identity"])
    keys.aead("identity")
    assert derived == [(4, 1)]
    keys.plan(["location", "contact"])  # slots 2 and 1: up to 3
    keys.aead("location")
    keys.aead("contact")
    keys.aead("identity")
    assert derived == [(4, 1), (4, 3)]
    keys.aead("needs")  # never announced: the whole table
    keys.aead("health")
    assert derived == [(4, 1), (4, 3), (4, 10)]
    keys.aead("aliases", envelope.FORMAT_V3)  # format 3's own schedule, whole (not planned)
    keys.aead("given_name", envelope.FORMAT_V3)
    assert derived == [(4, 1), (4, 3), (4, 10), (3, 29)]
    keys.plan([])  # nothing announced changes nothing
    monkeypatch.setattr(envelope, "_schedule", real)
    for column, fmt in (("identity", 4), ("location", 4), ("needs", 4), ("aliases", 3)):
        key = envelope.field_subkey(dek, "cases", column, fmt)
        header = envelope.header(1, fmt)
        tail = envelope.column_aad("cases", column) + envelope.place_aad(dek_id, dek_id)
        blob = envelope.seal(AESGCM(key), header, PLAINTEXT, tail)
        assert envelope.open_sealed(keys.aead(column, fmt), blob, tail) == PLAINTEXT


def test_a_records_field_keys_come_from_one_schedule():
    """`FieldKeys` (the model hooks' path) gives each column the same key as `field_subkey`,
    derives the table's schedule once however many fields it serves, and still builds
    older formats' keys per field."""
    dek = os.urandom(32)
    row_id = uuid.uuid4()
    keys = envelope.FieldKeys(dek, "cases")
    tail = envelope.place_aad(row_id, row_id)
    for column in envelope.FIELD_KEY_SLOTS[envelope.FORMAT_V4]["cases"]:
        blob = envelope.seal(
            keys.aead(column),
            envelope.header(1),
            PLAINTEXT,
            envelope.column_aad("cases", column) + tail,
        )
        subkey = envelope.field_subkey(dek, "cases", column)
        place = {"table": "cases", "column": column, "row_id": row_id, "case_id": row_id}
        assert envelope.decrypt(subkey, blob, **place) == PLAINTEXT
    schedule = keys._schedules[envelope.FORMAT_V4]
    keys.aead("identity")
    assert keys._schedules[envelope.FORMAT_V4] is schedule
    assert len(schedule) == 32 * len(envelope.FIELD_KEY_SLOTS[envelope.FORMAT_V4]["cases"])
    # A V2 field key is the V2 derivation, and does not open what V3 sealed (or the reverse).
    sex_tail = envelope.column_aad("cases", "sex") + tail
    v2_header = envelope.header(1, envelope.FORMAT_V2)
    sealed = envelope.seal(keys.aead("sex", envelope.FORMAT_V2), v2_header, PLAINTEXT, sex_tail)
    v2_key = envelope.field_subkey(dek, "cases", "sex", envelope.FORMAT_V2)
    assert envelope.open_sealed(AESGCM(v2_key), sealed, sex_tail) == PLAINTEXT
    with pytest.raises(DecryptionError):
        envelope.open_sealed(keys.aead("sex", envelope.FORMAT_V3), sealed, sex_tail)
    with pytest.raises(ValueError):
        keys.aead("nickname")
    with pytest.raises(ValueError):
        keys.aead("sex")  # a per-field column has no key in format 4


def _v1_blob(dek: bytes, version: int, plaintext: bytes, place: dict[str, object]) -> bytes:
    """A FORMAT_V1 ciphertext built by hand from the documented layout (the application
    writes only V2 now; V1 blobs written before the change must stay readable)."""
    header = struct.pack(">BBI", 1, 1, version)
    nonce = os.urandom(12)
    subkey = HKDF(
        hashes.SHA256(), 32, salt=None, info=f"{place['table']}/{place['column']}".encode()
    ).derive(dek)
    aad = (
        header
        + _lp(str(place["table"]).encode())
        + _lp(str(place["column"]).encode())
        + _lp(place["row_id"].bytes)  # type: ignore[attr-defined]
        + _lp(place["case_id"].bytes)  # type: ignore[attr-defined]
    )
    return header + nonce + AESGCM(subkey).encrypt(nonce, plaintext, aad)


def test_format_v1_blobs_still_decrypt_and_stay_bound_to_their_place(place):
    dek = os.urandom(32)
    blob = _v1_blob(dek, 4, PLAINTEXT, place)
    assert envelope.parse_header(blob) == (envelope.FORMAT_V1, 4)
    v1_key = envelope.field_subkey(dek, TABLE, COLUMN, envelope.FORMAT_V1)
    assert envelope.decrypt(v1_key, blob, **place) == PLAINTEXT
    # The V2 subkey of the same data key does not open it, and neither does V1's subkey of
    # another column; moved elsewhere it fails like a V2 blob.
    with pytest.raises(DecryptionError):
        envelope.decrypt(envelope.field_subkey(dek, TABLE, COLUMN), blob, **place)
    with pytest.raises(DecryptionError):
        envelope.decrypt(
            envelope.field_subkey(dek, TABLE, "family_name", envelope.FORMAT_V1), blob, **place
        )
    for moved in ({"row_id": uuid.uuid4()}, {"case_id": uuid.uuid4()}, {"column": "sex"}):
        with pytest.raises(DecryptionError):
            envelope.decrypt(v1_key, blob, **{**place, **moved})


def test_relabelling_the_format_byte_fails(place):
    """The format byte is authenticated: a blob of one format claiming another fails with
    every format's subkey."""
    dek = os.urandom(32)
    # A column with a key in every format: a case note's text.
    place = {**place, "table": "case_notes", "column": "text"}
    keys = {fmt: envelope.field_subkey(dek, "case_notes", "text", fmt) for fmt in envelope.FORMATS}
    tail = envelope.column_aad("case_notes", "text") + envelope.place_aad(
        place["row_id"],  # type: ignore[arg-type]
        place["case_id"],  # type: ignore[arg-type]
    )
    v2_header = envelope.header(1, envelope.FORMAT_V2)
    blobs = {
        envelope.FORMAT_V1: _v1_blob(dek, 1, PLAINTEXT, place),
        envelope.FORMAT_V2: envelope.seal(AESGCM(keys[2]), v2_header, PLAINTEXT, tail),
        envelope.FORMAT_V3: envelope.seal(
            AESGCM(keys[3]), envelope.header(1, envelope.FORMAT_V3), PLAINTEXT, tail
        ),
        envelope.FORMAT_V4: envelope.encrypt(keys[envelope.FORMAT_V4], 1, PLAINTEXT, **place),
    }
    for fmt, blob in blobs.items():
        assert blob[0] == fmt and envelope.decrypt(keys[fmt], blob, **place) == PLAINTEXT
        for other in envelope.FORMATS - {fmt}:
            for key in keys.values():
                with pytest.raises(DecryptionError):
                    envelope.decrypt(key, bytes([other]) + blob[1:], **place)


def test_field_aead_seals_and_opens_under_the_field_subkey():
    """The prepared path (`field_aead` + `seal`/`open_sealed`, used by the model hooks)
    writes exactly what `encrypt` documents and reads older formats."""
    dek = os.urandom(32)
    row_id = uuid.uuid4()
    place = {"table": "cases", "column": "identity", "row_id": row_id, "case_id": row_id}
    tail = envelope.column_aad("cases", "identity") + envelope.place_aad(row_id, row_id)
    blob = envelope.seal(
        envelope.field_aead(dek, "cases", "identity"), envelope.header(1), PLAINTEXT, tail
    )
    assert envelope.parse_header(blob) == (envelope.FORMAT_V4, 1)
    subkey = envelope.field_subkey(dek, "cases", "identity")
    assert envelope.decrypt(subkey, blob, **place) == PLAINTEXT
    for other in (("cases", "contact"), ("case_notes", "text")):
        with pytest.raises(DecryptionError):
            envelope.open_sealed(envelope.field_aead(dek, *other), blob, tail)
    v1 = _v1_blob(dek, 1, PLAINTEXT, place)
    v1_aead = envelope.field_aead(dek, "cases", "identity", envelope.FORMAT_V1)
    assert envelope.open_sealed(v1_aead, v1, tail) == PLAINTEXT


# ---- LocalKeyring -------------------------------------------------------------------------


def test_local_keyring_created_with_mode_0600_and_a_warning(tmp_path, caplog):
    path = tmp_path / "secrets" / "keyring.json"
    with caplog.at_level(logging.WARNING, logger="referral_api.crypto.keyring"):
        keyring = LocalKeyring.load(path, create_if_missing=True)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "DEVELOPMENT ONLY" in caplog.text
    document = json.loads(path.read_text())
    assert document["current"] == 1 and list(document["keys"]) == ["1"]
    # The warning names the path but never the key.
    assert document["keys"]["1"] not in caplog.text
    assert keyring.describe().current_version == 1
    assert keyring.describe().provider == "local-file"


def test_local_keyring_created_by_another_process_first_is_kept(tmp_path, monkeypatch):
    """Two first starts at once: the one that takes the lock second must load the keyring
    the first wrote, not replace it (the data wrapped under the first would be lost)."""
    path = tmp_path / "keyring.json"
    real_flock = keyring_module.fcntl.flock
    theirs: list[LocalKeyring] = []

    def other_process_wins_the_race(fd, operation):
        if not theirs:  # between our exists() and our lock, another process creates it
            monkeypatch.setattr(keyring_module.fcntl, "flock", real_flock)
            theirs.append(LocalKeyring.load(path, create_if_missing=True))
        real_flock(fd, operation)

    monkeypatch.setattr(keyring_module.fcntl, "flock", other_process_wins_the_race)
    ours = LocalKeyring.load(path, create_if_missing=True)
    assert theirs, "the race was not staged"
    wrapped = theirs[0].wrap(b"k" * 32, b"org-key:a")
    assert ours.unwrap(wrapped, b"org-key:a") == b"k" * 32
    on_disk = LocalKeyring.load(path, create_if_missing=False)
    assert on_disk.unwrap(wrapped, b"org-key:a") == b"k" * 32


def test_local_keyring_missing_file_refused_without_create(tmp_path):
    with pytest.raises(ConfigurationError):
        LocalKeyring.load(tmp_path / "absent.json", create_if_missing=False)
    assert not (tmp_path / "absent.json").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610])
def test_local_keyring_refuses_group_or_world_access(tmp_path, mode):
    path = tmp_path / "keyring.json"
    LocalKeyring.load(path, create_if_missing=True)
    path.chmod(mode)
    with pytest.raises(ConfigurationError) as caught:
        LocalKeyring.load(path, create_if_missing=False)
    assert "chmod 600" in caught.value.detail


def test_local_keyring_refuses_malformed_file(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text('{"current": 1, "keys": {"1": "c2hvcnQ="}}')
    path.chmod(0o600)
    with pytest.raises(ConfigurationError):
        LocalKeyring.load(path, create_if_missing=False)


def test_local_keyring_rotate_destroy_describe(tmp_path):
    path = tmp_path / "keyring.json"
    keyring = LocalKeyring.load(path, create_if_missing=True)
    key = os.urandom(32)
    wrapped_v1 = keyring.wrap(key, b"org-key:a")
    assert struct.unpack(">I", wrapped_v1[:4]) == (1,)
    assert key not in wrapped_v1

    assert keyring.rotate() == 2
    assert keyring.current_version() == 2
    wrapped_v2 = keyring.wrap(key, b"org-key:a")
    assert struct.unpack(">I", wrapped_v2[:4]) == (2,)
    assert keyring.unwrap(wrapped_v1, b"org-key:a") == key
    assert keyring.unwrap(wrapped_v2, b"org-key:a") == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # still after a rewrite

    with pytest.raises(ValueError):
        keyring.destroy(2)  # the current version
    keyring.destroy(1)
    status = keyring.describe()
    assert (status.current_version, status.versions, status.destroyed) == (2, (2,), (1,))
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(wrapped_v1, b"org-key:a")
    assert keyring.unwrap(wrapped_v2, b"org-key:a") == key

    # Persisted: a fresh load sees the same state, and the key material is gone from disk.
    reloaded = LocalKeyring.load(path, create_if_missing=False)
    assert reloaded.describe() == status
    with pytest.raises(KeyUnavailable):
        reloaded.unwrap(wrapped_v1, b"org-key:a")
    assert reloaded.unwrap(wrapped_v2, b"org-key:a") == key
    # A destroyed version number is never reused.
    assert reloaded.rotate() == 3


def test_unwrap_with_other_associated_data_or_tampering_fails(tmp_path):
    keyring = LocalKeyring.load(tmp_path / "keyring.json", create_if_missing=True)
    wrapped = keyring.wrap(os.urandom(32), b"org-key:a")
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(wrapped, b"org-key:b")
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(bytes(tampered), b"org-key:a")
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(wrapped[:10], b"org-key:a")


def test_second_instance_sees_rotation_and_destruction_by_another(tmp_path):
    """The server's keyring object must notice the `keys` CLI's rotation (another process)."""
    path = tmp_path / "keyring.json"
    server = LocalKeyring.load(path, create_if_missing=True)
    cli = LocalKeyring.load(path, create_if_missing=False)
    old = server.wrap(b"k" * 32, b"ad")

    assert cli.rotate() == 2
    assert server.current_version() == 2
    wrapped = cli.wrap(b"k" * 32, b"ad")
    assert server.unwrap(wrapped, b"ad") == b"k" * 32
    new_by_server = server.wrap(b"s" * 32, b"ad")
    assert struct.unpack(">I", new_by_server[:4]) == (2,)

    cli.destroy(1)
    with pytest.raises(KeyUnavailable):
        server.unwrap(old, b"ad")
    assert server.describe().destroyed == (1,)


def test_rewrite_within_one_timestamp_tick_is_still_seen(tmp_path):
    """Coarse file timestamps: a rewrite may keep the old mtime; it must still be seen."""
    path = tmp_path / "keyring.json"
    server = LocalKeyring.load(path, create_if_missing=True)
    before = path.stat()
    LocalKeyring.load(path, create_if_missing=False).rotate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert server.current_version() == 2


def test_rotation_from_a_stale_instance_keeps_the_other_instances_version(tmp_path):
    """Two holders of the file rotate in turn: neither may overwrite the other's key
    (losing a root version would make every key wrapped under it unreadable)."""
    path = tmp_path / "keyring.json"
    first = LocalKeyring.load(path, create_if_missing=True)
    second = LocalKeyring.load(path, create_if_missing=False)
    assert first.rotate() == 2
    wrapped_by_first = first.wrap(b"f" * 32, b"ad")
    assert second.rotate() == 3
    fresh = LocalKeyring.load(path, create_if_missing=False)
    assert fresh.describe().versions == (1, 2, 3)
    assert fresh.unwrap(wrapped_by_first, b"ad") == b"f" * 32


# ---- InMemoryKeyring ----------------------------------------------------------------------


def test_in_memory_keyring(tmp_path):
    keyring = InMemoryKeyring.generate()
    assert keyring.describe().provider == "in-memory"
    assert keyring.current_version() == 1
    key = os.urandom(32)
    v1 = keyring.wrap(key, b"ad")
    assert keyring.unwrap(v1, b"ad") == key
    assert keyring.rotate() == 2
    v2 = keyring.wrap(key, b"ad")
    assert struct.unpack(">I", v2[:4]) == (2,)
    keyring.destroy(1)
    with pytest.raises(KeyUnavailable):
        keyring.unwrap(v1, b"ad")
    assert keyring.unwrap(v2, b"ad") == key
    with pytest.raises(ValueError):
        keyring.destroy(2)
    assert keyring.describe().destroyed == (1,)
    # Another in-memory keyring (another root) cannot unwrap these keys.
    with pytest.raises(KeyUnavailable):
        InMemoryKeyring.generate().unwrap(v2, b"ad")


# ---- KeyCache -----------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(keys_module.time, "monotonic", fake)
    return fake


def test_key_cache_expires_after_ttl(clock):
    cache = KeyCache(maxsize=10, ttl_seconds=30)
    cache.put(("org", 1), b"key")
    clock.now += 29
    assert cache.get(("org", 1)) == b"key"
    clock.now += 2
    assert cache.get(("org", 1)) is None
    # Refreshed on put, not on get.
    cache.put(("org", 1), b"key")
    clock.now += 20
    cache.get(("org", 1))
    clock.now += 20
    assert cache.get(("org", 1)) is None


def test_key_cache_evicts_least_recently_used(clock):
    cache = KeyCache(maxsize=2, ttl_seconds=300)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_key_cache_discard_case_and_clear(clock):
    case_a, case_b = uuid.uuid4(), uuid.uuid4()
    cache = KeyCache()
    cache.put(("case", case_a, 1), b"a1")
    cache.put(("field", case_a, 1, "cases", "given_name"), b"a1f")
    cache.put(("case", case_b, 1), b"b1")
    cache.discard_case(case_a)
    assert cache.get(("case", case_a, 1)) is None
    assert cache.get(("field", case_a, 1, "cases", "given_name")) is None
    assert cache.get(("case", case_b, 1)) == b"b1"
    cache.clear()
    assert cache.get(("case", case_b, 1)) is None


# ---- blind-index normalisers --------------------------------------------------------------


@pytest.mark.parametrize(
    "variants",
    [
        ("Müller", "MULLER", "Mueller", "müller", "MÜLLER", "Mu\u0308ller"),
        ("Олена", "ОЛЕНА", "олена"),
        ("Алёна", "Алена", "АЛЁНА"),
        ("Йосип", "ЙОСИП"),
        ("مُحَمَّد", "محمد"),
        ("أحمد", "إحمد", "آحمد", "احمد"),
        ("فاطمة", "فاطمه"),
        ("O'Brien", "O’Brien", "OBrien", "o'brien"),
        ("Jean-Luc", "Jean Luc", "JEAN-LUC", "  jean   luc "),
        ("Straße", "STRASSE"),
        ("Ａｎｎａ", "Anna"),
    ],
    ids=[
        "german",
        "cyrillic-case",
        "cyrillic-yo",
        "cyrillic-short-i",
        "arabic-harakat",
        "arabic-alef",
        "arabic-taa-marbuta",
        "apostrophe",
        "hyphen",
        "sharp-s",
        "fullwidth",
    ],
)
def test_name_variants_normalise_alike(variants):
    assert len({normalise_name(v) for v in variants}) == 1, [normalise_name(v) for v in variants]


@pytest.mark.parametrize(
    "different",
    [("Olena", "Alena"), ("Олена", "Olena"), ("Jean-Luc", "Jean"), ("محمد", "احمد")],
)
def test_different_names_stay_different(different):
    first, second = different
    assert normalise_name(first) != normalise_name(second)


def test_normalised_names_have_no_marks_punctuation_or_case():
    assert normalise_name("  Jean-Luc  O'Brien-Müller ") == "jean luc obrien muller"


def _normalise_name_as_first_written(value: str) -> str:
    """normalise_name of rules 3 (blind_index.RULES) written plainly, a Python test per
    character: every index entry stored is keyed by its output, so a faster version must
    give the same string for every input (a different one would make stored cases
    unfindable). A change of the rules changes this and RULES together (rules 2: without
    the dotless ı and the apostrophes ʻ ‘ ´ ′; rules 1: without the Persian folds, the
    tatweel and the format characters either)."""
    import re
    import unicodedata

    from referral_api.crypto.blind_index import RULES

    assert RULES == 3
    arabic = str.maketrans(
        {"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ة": "ه", "ى": "ي", "ی": "ي", "ک": "ك", "ـ": None}
    )
    text = unicodedata.normalize("NFKC", value.replace("´", "")).translate(arabic)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).casefold()
    text = text.translate(str.maketrans("", "", "'’ʼ`ʻ‘´′"))
    text = text.replace("ı", "i")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = "".join(ch if ch.isalnum() else " " for ch in text)
    text = re.sub(r"([aou])e", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def test_normalise_name_gives_what_it_first_gave_for_any_text():
    import random

    from referral_api.crypto import blind_index

    rng = random.Random(20261129)  # noqa: S311 (test inputs, not secrets)
    ranges = [
        (0x20, 0x7E),  # ASCII
        (0xA0, 0x24F),  # Latin-1, Latin Extended
        (0x300, 0x36F),  # combining marks
        (0x370, 0x3FF),  # Greek
        (0x400, 0x52F),  # Cyrillic
        (0x600, 0x6FF),  # Arabic, harakat, Arabic-Indic digits
        (0x900, 0x97F),  # Devanagari
        (0x1E00, 0x1EFF),  # Latin Extended Additional
        (0x2000, 0x206F),  # spaces, quotes, punctuation
        (0x3040, 0x30FF),  # kana
        (0x4E00, 0x4E80),  # CJK
        (0xFB50, 0xFDFF),  # Arabic presentation forms
        (0xFF00, 0xFFEF),  # fullwidth
        (0x1F300, 0x1F6FF),  # emoji
    ]
    alphabet = "'’ʼ`ʻ‘´′ı -\t\n" + "aeiouAEIOU" + "ÄÖÜäöüß"
    samples = ["", " ", "ǅ", "ﬁ", "İ", "ẞ", "Ǆemal", "Å", "ﷺ", "ﾊﾟ"]
    for _ in range(4000):
        parts = []
        for _ in range(rng.randrange(1, 14)):
            if rng.random() < 0.4:
                parts.append(rng.choice(alphabet))
            else:
                low, high = rng.choice(ranges)
                parts.append(chr(rng.randint(low, high)))
        samples.append("".join(parts))
    for text in samples:
        assert normalise_name(text) == _normalise_name_as_first_written(text), ascii(text)
    # Past the remembered characters, translation is still right (just not remembered).
    table = blind_index._WORD_CHARACTERS
    remembered = len(table)
    assert 0 < remembered <= blind_index._REMEMBERED
    assert table[ord("A")] == ord("A") and table[ord("-")] == " " and table[ord("'")] is None


@pytest.mark.parametrize(
    ("national", "international", "region"),
    [
        ("07700 900123", "+44 7700 900123", "GB"),
        ("050 123 4567", "+380501234567", "UA"),
        ("(0)30 1234567", "+49 30 1234567", "DE"),
        ("0044 7700 900123", "+447700900123", "GB"),
    ],
)
def test_phones_national_and_e164_forms_match(national, international, region):
    expected = normalise_phone(international, region)
    assert expected.startswith("+") and expected[1:].isdigit()
    assert normalise_phone(national, region) == expected
    assert normalise_phone(international, "FR") == expected  # E.164 input ignores the region


def test_national_phone_depends_on_the_region():
    assert normalise_phone("050 123 4567", "UA") == "+380501234567"
    assert normalise_phone("050 123 4567", "GB") != "+380501234567"


@pytest.mark.parametrize("variant", ["FA123456", "fa 123 456", "FA-123-456", "ＦＡ１２３４５６"])
def test_document_numbers_normalise_alike(variant):
    assert normalise_document(variant) == "FA123456"


# ---- bit planner and index values ---------------------------------------------------------


def test_more_rows_means_more_bits():
    sizes = [10, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 1_000_000_000]
    bits = [plan_bits(n).bits for n in sizes]
    assert bits == sorted(bits)
    assert bits[-1] > bits[2] > bits[0]
    for n in (10_000, 1_000_000):
        plan = plan_bits(n)
        # About the target number of unrelated rows per query (2 by default).
        assert 1.0 <= plan.expected_false_positives <= 2.0
        assert plan.expected_false_positives == pytest.approx(n / 2**plan.bits)


def test_bits_are_bounded():
    assert (MIN_BITS, MAX_BITS) == (8, 32)
    assert plan_bits(0).bits == 8
    assert plan_bits(1).bits == 8
    assert plan_bits(10**15).bits == 32
    assert plan_bits(100, target_false_positives=1e-12).bits <= 32
    assert plan_bits(10**6, cardinality=3).bits == 8


def test_cardinality_caps_bits_for_low_cardinality_attributes():
    uncapped = plan_bits(10_000_000).bits
    capped = plan_bits(10_000_000, cardinality=36_500).bits
    assert capped < uncapped
    # Each index value covers several distinct values (≥ 4 dates per value here).
    assert 36_500 / 2**capped >= 4


@pytest.mark.parametrize("bits", [8, 13, 24, 32])
def test_blind_index_values_fit_the_bit_length(bits):
    key = os.urandom(32)
    values = [blind_index(key, "name", f"name-{i}", bits) for i in range(3000)]
    assert all(0 <= v < 2**bits for v in values)
    # Uses the whole range (not stuck in the low bits).
    assert max(values) >= 2 ** (bits - 1)
    if bits == 8:
        assert len(set(values)) > 200


def test_blind_index_is_keyed_deterministic_and_field_separated():
    key = os.urandom(32)
    value = blind_index(key, "name", "olena", 32)
    assert blind_index(key, "name", "olena", 32) == value
    assert blind_index(os.urandom(32), "name", "olena", 32) != value
    assert blind_index(key, "phone", "olena", 32) != value
    # Truncation keeps the leading bits: a shorter plan is a prefix of a longer one.
    assert blind_index(key, "name", "olena", 20) == value >> 12
    # The documented construction, computed independently: stored index values depend on it.
    digest = HMAC(key, hashes.SHA256())
    digest.update(b"name\x00olena")
    assert value == int.from_bytes(digest.finalize()[:4], "big")
