"""Field ciphertext format and AEAD (AES-256-GCM via `cryptography`).

    blob = format(1) ‖ algorithm(1) ‖ key_version(4, big-endian) ‖ nonce(12) ‖ ciphertext ‖ tag(16)

Associated data binds the blob to its place: header ‖ table ‖ column ‖ row id ‖ case id, each
length-prefixed, so a ciphertext copied to another row, column or case fails to decrypt.

Formats differ only in how a field's subkey comes from the case's data key (DEK):

- FORMAT_V1 (read only): HKDF-SHA256(DEK, salt=None, info="table/column").
- FORMAT_V2 (written): HKDF-Expand-SHA256(DEK, info="referral_api field key v2" ‖ table ‖
  column, length-prefixed). The DEK is 256 random bits, already a uniformly random
  pseudorandom key, so the Extract step adds nothing (RFC 5869 §3.3); Expand alone is one
  HMAC per field instead of two. Subkeys stay distinct per (table, column).

The format byte is part of the associated data: a V2 blob relabelled V1 (or the reverse)
fails to authenticate.
"""

from __future__ import annotations

import functools
import os
import struct
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

FORMAT_V1 = 1
FORMAT_V2 = 2
CURRENT_FORMAT = FORMAT_V2
FORMATS = frozenset({FORMAT_V1, FORMAT_V2})
ALG_AES_256_GCM = 1
_HEADER = struct.Struct(">BBI")
HEADER_BYTES = _HEADER.size
NONCE_BYTES = 12
TAG_BYTES = 16
SUBKEY_BYTES = 32
_BODY = HEADER_BYTES + NONCE_BYTES
_MIN_BLOB = _BODY + TAG_BYTES
_V2_INFO = b"referral_api field key v2\x00"
_UUID_PREFIX = struct.pack(">I", 16)
_SHA256 = hashes.SHA256()  # an immutable algorithm descriptor, shared


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


def field_subkey(data_key: bytes, table: str, column: str, fmt: int = CURRENT_FORMAT) -> bytes:
    """A field's subkey under ciphertext format `fmt` (see the module docstring)."""
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
