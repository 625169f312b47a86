"""Verified access tokens, remembered by each worker process until they expire.

flask-jwt-extended decodes a bearer token four times per request (unverified claims,
unverified header twice, then verified), and PyJWT checks every base64url segment character
by character: ~265 µs of every authenticated request, a tenth of reading a case. So the first
request with a token is verified exactly as flask-jwt-extended always does it
(`verify_jwt_in_request`: signature, algorithm, exp/nbf/iat, identity claim, token type), and
its claims are then remembered until the token's `exp`, keyed by the SHA-256 of the token
(the process keeps no bearer token of its own). A later request presenting the *same bytes*
skips the decode: the same bytes under the same secret verify the same way, and only time
can change the outcome, so `exp` and `nbf` are checked again on every hit, with the same
leeway. What the cache never replaces: the session behind the token is read from the database
on every request (`auth.service.load_actor`), so logout, revocation and a disabled account
take effect at once, cached token or not.

Only a header of exactly `<type> <header.payload.signature>` is looked up or remembered: the
token the cache keys on is then, character for character, the one flask-jwt-extended
extracts and verifies. Anything else takes the library's path every time, and every refusal
comes from the library (its error handlers shape the 401s).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from flask import Flask, current_app, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request

EXTENSION = "referral_api.access_tokens"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_ENTRIES = 10_000


class VerifiedTokens:
    """token digest → (claims, exp, nbf), at most `max_entries`, oldest dropped first."""

    def __init__(self, leeway: float, max_entries: int = MAX_ENTRIES) -> None:
        self.leeway = leeway
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[Mapping[str, Any], float, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes, now: float) -> Mapping[str, Any] | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        claims, exp, nbf = entry
        if now >= exp + self.leeway or now < nbf - self.leeway:
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return claims

    def put(self, digest: bytes, claims: Mapping[str, Any]) -> None:
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            return  # a token without an expiry is never remembered
        nbf = claims.get("nbf", float("-inf"))
        if not isinstance(nbf, (int, float)):
            return
        with self._lock:
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            # Read-only: every request holding the token shares these claims.
            self._entries[digest] = (MappingProxyType(dict(claims)), float(exp), float(nbf))

    def __len__(self) -> int:
        return len(self._entries)


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = VerifiedTokens(
        leeway=_seconds(app.config.get("JWT_DECODE_LEEWAY", 0))
    )
    app.before_request(_canonical_bearer_scheme)


def _canonical_bearer_scheme() -> None:
    """`Authorization: bearer …` (any case) as `Bearer …`: an authentication scheme is
    case-insensitive (RFC 9110 §11.1), and flask-jwt-extended compares it exactly."""
    header = request.environ.get("HTTP_AUTHORIZATION")
    if not header:
        return
    scheme, space, rest = header.partition(" ")
    if space and scheme != "Bearer" and scheme.lower() == "bearer":
        request.environ["HTTP_AUTHORIZATION"] = f"Bearer {rest}"


def _seconds(leeway: Any) -> float:
    return float(leeway.total_seconds()) if hasattr(leeway, "total_seconds") else float(leeway)


def _token_digest() -> bytes | None:
    config = current_app.config
    header = request.headers.get(config.get("JWT_HEADER_NAME", "Authorization"))
    if not header:
        return None
    kind, _, token = header.partition(" ")
    if kind != config.get("JWT_HEADER_TYPE", "Bearer") or not _TOKEN.fullmatch(token):
        return None
    return hashlib.sha256(token.encode("ascii")).digest()


def access_token_claims() -> Mapping[str, Any]:
    """The verified claims of the request's access token (raises flask-jwt-extended's errors
    for a missing, invalid, expired or wrong-type token)."""
    tokens: VerifiedTokens | None = current_app.extensions.get(EXTENSION)
    digest = _token_digest() if tokens is not None else None
    if tokens is not None and digest is not None:
        claims = tokens.get(digest, time.time())
        if claims is not None:
            return claims
    verify_jwt_in_request()
    claims = get_jwt()
    if tokens is not None and digest is not None:
        tokens.put(digest, claims)
    return claims
