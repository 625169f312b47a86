"""Keys derived from the server's token-signing secret (REFERRAL_API_JWT_SECRET), which is
configured outside the database: for what the database keeps that a copy of it (a dump, a
backup, a replica) must not let anyone recompute or open.

- `keyed_digest`: HMAC-SHA256 of values kept only to be compared later (an idempotent
  request's body, a login throttle's account name and address). An unkeyed SHA-256 of them
  was an offline oracle: the rest of a body is in plaintext columns, so a guessed name,
  message or reason could be confirmed; an IPv4 address is a few billion guesses.
- `derived_key`: the key behind sealed pagination cursors (`pagination`).

A new secret makes every derived value new: sessions end (tokens), sealed cursors are 422s,
throttle counters start again, and an idempotent request made before it no longer matches
its retry (422: the key names another request). docs/operations.md says so.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app


@functools.lru_cache(maxsize=16)
def derived_key(secret: str, purpose: bytes) -> bytes:
    """A 256-bit key for `purpose`, derived from `secret` (HKDF-SHA256)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"referral_api " + purpose
    ).derive(secret.encode())


def keyed_digest(purpose: bytes, *parts: bytes, secret: str | None = None) -> str:
    """HMAC-SHA256 (hex) of `parts`, each length-prefixed, under the key for `purpose` derived
    from `secret` (by default the app's)."""
    key = derived_key(secret or current_app.config["JWT_SECRET_KEY"], purpose)
    message = b"".join(len(part).to_bytes(8, "big") + part for part in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()
