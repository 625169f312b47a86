"""The per-process cache of verified access tokens (referral_api.auth.access_tokens): a token
is verified by flask-jwt-extended once, then served from the cache only while it is still
valid, only for the byte-identical token, and never in place of the database session check.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import jwt
import pytest
from conftest import JWT_TEST_SECRET, assert_problem
from flask_jwt_extended import create_access_token

from referral_api.access.roles import Role
from referral_api.auth import access_tokens
from referral_api.auth.access_tokens import EXTENSION, VerifiedTokens

ME = "/api/v1/me"
LOGOUT = "/api/v1/auth/logout"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(factory: Any) -> dict[str, Any]:
    return factory.login(factory.user(Role.CASEWORKER))  # type: ignore[no-any-return]


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts flask-jwt-extended verifications (each one a full decode of the token)."""
    calls: list[int] = []
    real = access_tokens.verify_jwt_in_request

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(access_tokens, "verify_jwt_in_request", counting)
    return calls


def test_a_token_is_verified_once_then_served_from_the_cache(app, client, tokens, verifications):
    headers = bearer(tokens["access_token"])
    first = client.get(ME, headers=headers)
    second = client.get(ME, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.get_json() == second.get_json()
    assert len(verifications) == 1
    assert len(app.extensions[EXTENSION]) == 1


def test_a_cached_token_still_dies_with_its_session(app, client, tokens, verifications):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    assert client.post(LOGOUT, headers=headers).status_code == 204
    assert len(verifications) == 1  # the logout itself was served from the cache
    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert (
        assert_problem(response, 401)["detail"] == "The session is no longer valid. Log in again."
    )


def test_a_tampered_copy_of_a_cached_token_is_verified_and_refused(client, tokens, verifications):
    token = tokens["access_token"]
    assert client.get(ME, headers=bearer(token)).status_code == 200
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    response = client.get(ME, headers=bearer(f"{head}.{payload}.{flipped}"))
    assert response.status_code == 401
    assert assert_problem(response, 401)["detail"] == "The token is not valid."
    assert len(verifications) == 2


def test_a_token_signed_with_another_secret_never_hits(client, tokens, verifications):
    claims = jwt.decode(tokens["access_token"], JWT_TEST_SECRET, algorithms=["HS256"])
    assert client.get(ME, headers=bearer(tokens["access_token"])).status_code == 200
    forged = jwt.encode(claims, "another-secret-of-at-least-32-characters!", algorithm="HS256")
    assert client.get(ME, headers=bearer(forged)).status_code == 401
    assert len(verifications) == 2


def test_a_cached_token_expires_on_time(app, client, tokens, verifications):
    claims = jwt.decode(tokens["access_token"], JWT_TEST_SECRET, algorithms=["HS256"])
    with app.app_context():
        short = create_access_token(
            identity=claims["sub"],
            additional_claims={"sid": claims["sid"]},
            expires_delta=timedelta(seconds=1),
        )
    exp = jwt.decode(short, JWT_TEST_SECRET, algorithms=["HS256"])["exp"]
    assert client.get(ME, headers=bearer(short)).status_code == 200
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    response = client.get(ME, headers=bearer(short))
    assert response.status_code == 401
    assert assert_problem(response, 401)["detail"] == "The token has expired."
    assert len(verifications) == 2  # the hit was refused by time, the library said why
    assert len(app.extensions[EXTENSION]) == 0


def test_only_a_plain_bearer_header_uses_the_cache(client, tokens, verifications):
    token = tokens["access_token"]
    for header in (f"Bearer {token}", f"Bearer {token}"):
        assert client.get(ME, headers={"Authorization": header}).status_code == 200
    # Any other spelling goes through the library every time (and it decides).
    odd = f"Bearer {token}, Basic Zm9vOmJhcg=="
    client.get(ME, headers={"Authorization": odd})
    client.get(ME, headers={"Authorization": odd})
    assert len(verifications) == 3


def test_the_cache_is_bounded_and_checks_time_on_every_hit():
    cache = VerifiedTokens(leeway=0, max_entries=2)
    for n in range(3):
        cache.put(bytes([n]), {"sub": str(n), "exp": 100, "nbf": 10})
    assert len(cache) == 2
    assert cache.get(b"\x00", 50) is None  # the oldest was dropped
    assert cache.get(b"\x01", 50) == {"sub": "1", "exp": 100, "nbf": 10}
    assert cache.get(b"\x02", 5) is None  # not yet valid: refused, forgotten
    assert cache.get(b"\x01", 100) is None  # expired: refused, forgotten
    assert len(cache) == 0
    cache.put(b"\x03", {"sub": "3"})  # no exp: never remembered
    assert len(cache) == 0
    cache.put(b"\x04", {"sub": "4", "exp": 100})
    shared = cache.get(b"\x04", 50)
    assert shared == {"sub": "4", "exp": 100}
    with pytest.raises(TypeError):  # read-only: one request cannot change another's claims
        shared["sub"] = "someone else"  # type: ignore[index]
