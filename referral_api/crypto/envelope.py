"""Field ciphertext format and AEAD (AES-256-GCM via `cryptography`).

    blob = format(1) ‖ algorithm(1) ‖ key_version(4, big-endian) ‖ nonce(12) ‖ ciphertext ‖ tag(16)

Associated data binds the blob to its place: header ‖ table ‖ column ‖ row id ‖ case id, each
length-prefixed, so a ciphertext copied to another row, column or case fails to decrypt.
"""

from __future__ import annotations

import os
import struct
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 1
ALG_AES_256_GCM = 1
_HEADER = struct.Struct(">BBI")
HEADER_BYTES = _HEADER.size
NONCE_BYTES = 12
TAG_BYTES = 16


class DecryptionError(Exception):
    """A ciphertext did not authenticate (wrong key, place or tampering). No details."""


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def associated_data(
    header: bytes, table: str, column: str, row_id: uuid.UUID, case_id: uuid.UUID
) -> bytes:
    return header + _length_prefixed(
        table.encode("ascii"), column.encode("ascii"), row_id.bytes, case_id.bytes
    )


def field_subkey(data_key: bytes, table: str, column: str) -> bytes:
    """Per-field key: HKDF-SHA256(DEK, info="table/column")."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"{table}/{column}".encode("ascii")
    ).derive(data_key)


def key_version_of(blob: bytes) -> int:
    if len(blob) < HEADER_BYTES + NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("ciphertext is truncated")
    fmt, alg, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1 or alg != ALG_AES_256_GCM:
        raise DecryptionError("unknown ciphertext format")
    return int(version)


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
    header = _HEADER.pack(FORMAT_V1, ALG_AES_256_GCM, key_version)
    nonce = os.urandom(NONCE_BYTES)
    aad = associated_data(header, table, column, row_id, case_id)
    return header + nonce + AESGCM(subkey).encrypt(nonce, plaintext, aad)


def decrypt(
    subkey: bytes, blob: bytes, *, table: str, column: str, row_id: uuid.UUID, case_id: uuid.UUID
) -> bytes:
    key_version_of(blob)  # validates the header
    header = blob[:HEADER_BYTES]
    nonce = blob[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES]
    aad = associated_data(header, table, column, row_id, case_id)
    try:
        return AESGCM(subkey).decrypt(nonce, blob[HEADER_BYTES + NONCE_BYTES :], aad)
    except InvalidTag:
        raise DecryptionError("ciphertext did not authenticate") from None
