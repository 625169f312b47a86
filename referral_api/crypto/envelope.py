"""Field ciphertext format and AEAD (AES-256-GCM via `cryptography`).

    blob = format(1) ‖ algorithm(1) ‖ key_version(4, big-endian) ‖ nonce(12) ‖ ciphertext ‖ tag(16)

Associated data binds the blob to its place: header ‖ table ‖ column ‖ row id ‖ case id, each
length-prefixed, so a ciphertext copied to another row, column or case fails to decrypt.

Formats differ only in how a field's subkey comes from the case's data key (DEK):

- FORMAT_V1 (read only): HKDF-SHA256(DEK, salt=None, info="table/column").
- FORMAT_V2 (read only): HKDF-Expand-SHA256(DEK, info="referral_api field key v2" ‖ table ‖
  column, length-prefixed). The DEK is 256 random bits, already a uniformly random
  pseudorandom key, so the Extract step adds nothing (RFC 5869 §3.3).
- FORMAT_V3 (read only): a record's key schedule, HKDF-Expand-SHA256(DEK,
  info="referral_api field keys v3" ‖ table, length-prefixed; L = 32 * the table's slots),
  cut into 32-byte subkeys; a column's subkey is the one at its slot in
  FIELD_KEY_SLOTS[FORMAT_V3]. One derivation gives every field key of a record (each output
  block is one HMAC, in `cryptography`'s Rust, instead of a Python call per field); subkeys
  stay distinct per (table, column), and the associated data still names the column.
- FORMAT_V4 (written): the same construction with info="referral_api field keys v4" ‖ table
  and the slots of FIELD_KEY_SLOTS[FORMAT_V4], whose columns for `cases` are its category
  columns (one ciphertext per data category, `crypto.fields`), not the per-field columns
  of formats 1 to 3: a case's schedule is 10 subkeys, not 29.

The format byte is part of the associated data: a blob relabelled with another format
fails to authenticate.
"""

from __future__ import annotations

import functools
import os
import struct
import uuid
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

FORMAT_V1 = 1
FORMAT_V2 = 2
FORMAT_V3 = 3
FORMAT_V4 = 4
CURRENT_FORMAT = FORMAT_V4
FORMATS = frozenset({FORMAT_V1, FORMAT_V2, FORMAT_V3, FORMAT_V4})
ALG_AES_256_GCM = 1
_HEADER = struct.Struct(">BBI")
HEADER_BYTES = _HEADER.size
NONCE_BYTES = 12
TAG_BYTES = 16
SUBKEY_BYTES = 32
_BODY = HEADER_BYTES + NONCE_BYTES
_MIN_BLOB = _BODY + TAG_BYTES
_V2_INFO = b"referral_api field key v2\x00"
_SCHEDULE_INFO = {
    FORMAT_V3: b"referral_api field keys v3\x00",
    FORMAT_V4: b"referral_api field keys v4\x00",
}
_UUID_PREFIX = struct.pack(">I", 16)
_SHA256 = hashes.SHA256()  # an immutable algorithm descriptor, shared


# Each encrypted column's slot in its table's key schedule, per format. APPEND ONLY: a slot
# names its column's key for every ciphertext written under it, so a new encrypted column
# goes at the end of its table's tuple and a dropped one keeps its place (HKDF-Expand's
# output for a longer schedule begins with the shorter one, so appending changes no key).
# Written out, not taken from the models' declaration order: moving a declaration must not
# move a key (tests/test_crypto.py pins these lists independently, bench/bare_app.py mirrors
# the case fields for its plaintext twin). FORMAT_V3 is read only: it is never extended.
_OTHER_TABLES: dict[str, tuple[str, ...]] = {
    "case_notes": ("text",),
    "consent_records": ("evidence",),
    "consent_events": ("reason",),
    "referrals": ("message", "override_note"),
    "referral_transitions": ("note",),
    "referral_messages": ("body",),
    "legal_holds": ("reason",),
    "subject_exports": ("document", "reason"),
    "idempotent_responses": ("body",),
}
FIELD_KEY_SLOTS: dict[int, dict[str, tuple[str, ...]]] = {
    FORMAT_V3: {
        # a case's fields, one column each (formats 1 to 3)
        "cases": (
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
        ),
        **_OTHER_TABLES,
    },
    FORMAT_V4: {
        # a case's category columns (the incident category's coded classifications apart
        # from its free text, so that statistics decrypt coded values only)
        "cases": (
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
        ),
        **_OTHER_TABLES,
    },
}
_SLOTS = {
    fmt: {
        table: {column: slot for slot, column in enumerate(columns)}
        for table, columns in tables.items()
    }
    for fmt, tables in FIELD_KEY_SLOTS.items()
}
# HKDF-Expand gives at most 255 hash blocks: 255 columns per table.
assert all(len(c) <= 255 for tables in FIELD_KEY_SLOTS.values() for c in tables.values())  # noqa: S101


class DecryptionError(Exception):
    """A ciphertext did not authenticate (wrong key, place or tampering). No details."""


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join([struct.pack(">I", len(part)) + part for part in parts])


@functools.cache
def column_aad(table: str, column: str) -> bytes:
    """The (table, column) part of the associated data, built once per column."""
    return _length_prefixed(table.encode("ascii"), column.encode("ascii"))


def place_aad(row_id: uuid.UUID, case_id: uuid.UUID) -> bytes:
    """The (row id, case id) part of the associated data."""
    return _UUID_PREFIX + row_id.bytes + _UUID_PREFIX + case_id.bytes


def associated_data(
    header: bytes, table: str, column: str, row_id: uuid.UUID, case_id: uuid.UUID
) -> bytes:
    return header + column_aad(table, column) + place_aad(row_id, case_id)


def header(key_version: int, fmt: int = CURRENT_FORMAT) -> bytes:
    return _HEADER.pack(fmt, ALG_AES_256_GCM, key_version)


def field_slot(table: str, column: str, fmt: int = CURRENT_FORMAT) -> int:
    """A column's slot in its table's key schedule of format `fmt` (3 or 4); ValueError for
    a column that has none (add it to FIELD_KEY_SLOTS)."""
    try:
        return _SLOTS[fmt][table][column]
    except KeyError:
        raise ValueError(f"{table}.{column} has no field-key slot in format {fmt}") from None


def _schedule(data_key: bytes, table: str, slots: int, fmt: int) -> bytes:
    """The first `slots` subkeys of a record's key schedule (format 3 or 4), in one
    derivation."""
    info = _SCHEDULE_INFO[fmt] + _length_prefixed(table.encode("ascii"))
    return HKDFExpand(_SHA256, SUBKEY_BYTES * slots, info).derive(data_key)


def field_subkey(data_key: bytes, table: str, column: str, fmt: int = CURRENT_FORMAT) -> bytes:
    """A column's subkey under ciphertext format `fmt` (see the module docstring)."""
    if fmt in _SCHEDULE_INFO:
        slot = field_slot(table, column, fmt)
        return _schedule(data_key, table, slot + 1, fmt)[SUBKEY_BYTES * slot :]
    if fmt == FORMAT_V2:
        info = _V2_INFO + column_aad(table, column)
        return HKDFExpand(_SHA256, SUBKEY_BYTES, info).derive(data_key)
    if fmt == FORMAT_V1:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=SUBKEY_BYTES,
            salt=None,
            info=f"{table}/{column}".encode("ascii"),
        ).derive(data_key)
    raise ValueError("unknown ciphertext format")


def field_aead(data_key: bytes, table: str, column: str, fmt: int = CURRENT_FORMAT) -> AESGCM:
    return AESGCM(field_subkey(data_key, table, column, fmt))


@functools.lru_cache(maxsize=256)
def _slots_needed(table: str, columns: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(format, how many of the table's slots cover `columns`) for formats 3 and 4."""
    needed = []
    for fmt, tables in _SLOTS.items():
        slots = tables.get(table, {})
        needed.append((fmt, max((slots.get(c, -1) + 1 for c in columns), default=0)))
    return tuple(needed)


class FieldKeys:
    """The column keys of one record under one data key, from its key schedule (formats 3
    and 4), derived when first needed: up to the highest slot of the columns announced by
    `plan` (a search's identity column is the first of a case's 10), or for the whole table
    when a column beyond them is used. Blobs of formats 1 and 2 get their own derivation."""

    __slots__ = ("_planned", "_schedules", "data_key", "table")

    def __init__(self, data_key: bytes, table: str) -> None:
        self.data_key = data_key
        self.table = table
        self._planned: dict[int, int] = {}
        self._schedules: dict[int, bytes] = {}

    def plan(self, columns: Iterable[str]) -> None:
        """Announce the columns about to be used (unknown ones are ignored here)."""
        columns = tuple(columns)
        if not columns:
            return
        planned = self._planned
        for fmt, wanted in _slots_needed(self.table, columns):
            if wanted > planned.get(fmt, 0):
                planned[fmt] = wanted

    def aead(self, column: str, fmt: int = CURRENT_FORMAT) -> AESGCM:
        if fmt not in _SCHEDULE_INFO:
            return field_aead(self.data_key, self.table, column, fmt)
        slots = _SLOTS[fmt].get(self.table, {})
        slot = slots.get(column)
        if slot is None:
            slot = field_slot(self.table, column, fmt)  # raises, naming the column
        start = SUBKEY_BYTES * slot
        schedule = self._schedules.get(fmt, b"")
        if len(schedule) <= start:
            planned = self._planned.get(fmt, 0)
            count = planned if slot < planned else len(slots)
            schedule = self._schedules[fmt] = _schedule(self.data_key, self.table, count, fmt)
        return AESGCM(schedule[start : start + SUBKEY_BYTES])


def parse_header(blob: bytes) -> tuple[int, int]:
    """(format, key version) of a blob; DecryptionError for anything unknown or truncated."""
    if len(blob) < _MIN_BLOB:
        raise DecryptionError("ciphertext is truncated")
    fmt, alg, version = _HEADER.unpack_from(blob)
    if fmt not in FORMATS or alg != ALG_AES_256_GCM:
        raise DecryptionError("unknown ciphertext format")
    return fmt, version


def key_version_of(blob: bytes) -> int:
    return parse_header(blob)[1]


def seal(aead: AESGCM, header: bytes, plaintext: bytes, aad_tail: bytes) -> bytes:
    """Encrypt under a prepared field key: `header` from `header()`, `aad_tail` =
    column_aad(table, column) ‖ place_aad(row id, case id). A fresh random nonce each time."""
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + aead.encrypt(nonce, plaintext, header + aad_tail)


def open_sealed(aead: AESGCM, blob: bytes, aad_tail: bytes) -> bytes:
    """Decrypt a blob whose header was checked with `parse_header` (the key chosen by it)."""
    try:
        return aead.decrypt(blob[HEADER_BYTES:_BODY], blob[_BODY:], blob[:HEADER_BYTES] + aad_tail)
    except InvalidTag:
        raise DecryptionError("ciphertext did not authenticate") from None


def encrypt(
    subkey: bytes,
    key_version: int,
    plaintext: bytes,
    *,
    table: str,
    column: str,
    row_id: uuid.UUID,
    case_id: uuid.UUID,
) -> bytes:
    """Encrypt in the current format; `subkey` = field_subkey(DEK, table, column)."""
    return seal(
        AESGCM(subkey),
        header(key_version),
        plaintext,
        column_aad(table, column) + place_aad(row_id, case_id),
    )


def decrypt(
    subkey: bytes, blob: bytes, *, table: str, column: str, row_id: uuid.UUID, case_id: uuid.UUID
) -> bytes:
    """Decrypt a blob of any readable format; `subkey` must be that format's subkey."""
    parse_header(blob)
    return open_sealed(AESGCM(subkey), blob, column_aad(table, column) + place_aad(row_id, case_id))
