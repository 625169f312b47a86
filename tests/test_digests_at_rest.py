"""Digests kept at rest are keyed (crypto.server_keys): someone holding a copy of the
database (a dump, a backup, a replica) and nothing else — no keyring, no JWT secret —
cannot confirm a guessed name, message, reason, e-mail or address from them, as they could
from the unkeyed SHA-256 kept before.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import uuid
from typing import Any

from referral_support import API, World, ok
from sqlalchemy import text

from referral_api.access.roles import Role


def _sql(app: Any, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    from referral_api.extensions import db

    with db.session_factory_for(app)() as s:
        found = [tuple(row) for row in s.execute(text(statement), params)]
        s.rollback()
    return found


def _compact(body: dict[str, Any]) -> bytes:
    # What a browser's JSON.stringify (or most HTTP clients) sends: insertion order, no spaces.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _post_raw(client: Any, url: str, headers: dict[str, str], raw: bytes, key: str) -> Any:
    return client.post(
        url,
        data=raw,
        headers={**headers, "Idempotency-Key": key, "Content-Type": "application/json"},
    )


# ---- idempotency_records.body_sha256: personal data under a fast, unkeyed hash -----------


def test_case_creation_digest_is_no_oracle_for_who_the_person_is(app, client, factory):
    """A case created with an Idempotency-Key (police systems retry with one): the person's
    name, birth date and phone are AES-GCM ciphertext in `cases`, but the record keeps
    SHA-256(body). Someone who knows the person (an abusive partner, a trafficker) and has a
    dump recomputes the body from what they know plus the plaintext case_type/risk_level
    columns, and learns that she is a case and which organisation (principal → user → org:
    e.g. a shelter) registered her. Key rotation and crypto-shredding of backups do nothing
    to an unkeyed digest."""
    worker = factory.user(Role.CASEWORKER)
    headers = factory.headers(worker)
    body = {
        "case_type": "gbv",
        "risk_level": "high",
        "identity": {
            "given_name": "Olena",
            "family_name": "Kovalenko",
            "date_of_birth": "1999-04-02",
        },
        "contact": {"phone": "+380501234567"},
    }
    ok(_post_raw(client, f"{API}/cases", headers, _compact(body), "case-create-0001"), 201)

    # The attacker: the plaintext columns of each case, and the person they look for.
    stored = dict(_sql(app, "SELECT body_sha256, principal FROM idempotency_records"))
    confirmed = []
    for case_type, risk in _sql(app, "SELECT case_type, risk_level FROM cases"):
        guess = {
            "case_type": case_type,
            "risk_level": risk,
            "identity": {
                "given_name": "Olena",
                "family_name": "Kovalenko",
                "date_of_birth": "1999-04-02",
            },
            "contact": {"phone": "+380501234567"},
        }
        if _sha(_compact(guess)) in stored:
            confirmed.append(stored[_sha(_compact(guess))])
    assert confirmed == [], (
        "idempotency_records.body_sha256 confirms from a guess that Olena Kovalenko is a case "
        f"and names who registered her: {confirmed}"
    )


def test_referral_digest_is_no_oracle_for_the_encrypted_message(app, client, factory):
    """A referral's body is to_org_id, purpose, categories, send (all plaintext in the
    `referrals` row) plus `message` (encrypted). SHA-256(body) beside the row leaves one
    unknown: the message, guessed from a list offline."""
    world = World(factory, client)
    secret_message = "She is now at the Lviv shelter"
    body = {
        "to_org_id": str(world.receiver_org),
        "purpose": world.purpose,
        "categories": world.shared,
        "send": True,
        "message": secret_message,
    }
    url = f"{API}/cases/{world.case_id}/referrals"
    ok(_post_raw(client, url, world.h["sender"], _compact(body), "referral-0001"), 201)

    (to_org, purpose, categories), *_ = _sql(
        app, "SELECT to_org_id, purpose, categories FROM referrals"
    )
    digests = {d for (d,) in _sql(app, "SELECT body_sha256 FROM idempotency_records")}
    to_org_text = str(uuid.UUID(str(to_org)))
    candidates = [
        f"She is now at the {town} shelter" for town in ("Kyiv", "Odesa", "Lviv", "Kharkiv")
    ]
    recovered = [
        message
        for message in candidates
        if _sha(
            _compact(
                {
                    "to_org_id": to_org_text,
                    "purpose": purpose,
                    "categories": sorted(categories.split(",")),
                    "send": True,
                    "message": message,
                }
            )
        )
        in digests
    ]
    assert recovered == [], f"the encrypted referral message was recovered offline: {recovered}"


def test_withdrawal_digest_is_no_oracle_for_the_encrypted_reason(app, client, factory):
    """A withdrawal's body is only {"reason": …}; the reason is encrypted in consent_events,
    and SHA-256 of the body sits unkeyed in idempotency_records (until the TTL purge, and in
    every backup for good)."""
    world = World(factory, client)
    assert world.consent is not None
    reason = "returned to her husband"
    url = f"{API}/consents/{world.consent['id']}/withdraw"
    ok(_post_raw(client, url, world.h["sender"], _compact({"reason": reason}), "withdraw-0001"))

    digests = {d for (d,) in _sql(app, "SELECT body_sha256 FROM idempotency_records")}
    canned = [
        "moved abroad",
        "returned to her husband",
        "returned to the trafficker",
        "no longer wants support",
    ]
    recovered = [r for r in canned if _sha(_compact({"reason": r})) in digests]
    assert recovered == [], f"the encrypted withdrawal reason was recovered offline: {recovered}"


# ---- login_throttle.key: SHA-256 of an IPv4 address / e-mail ------------------------------


def test_throttle_row_does_not_reveal_the_callers_ip_address(app, client, factory):
    """A failed sign-in stores `addr:` + SHA-256(remote address). The IPv4 space is 2^32:
    a /24 (a shelter's or an NGO office's line) is 256 hashes. The address of a
    caseworker's network is a location the design treats as safety-critical."""
    user = factory.user(Role.CASEWORKER)
    shelter_line = "198.51.100.23"
    response = client.post(
        f"{API}/auth/login",
        json={"email": user.email, "password": "wrong password"},
        environ_base={"REMOTE_ADDR": shelter_line},
    )
    assert response.status_code == 401
    keys = {k for (k,) in _sql(app, "SELECT key FROM login_throttle")}
    recovered = [
        str(address)
        for address in ipaddress.ip_network("198.51.100.0/24")
        if "addr:" + _sha(str(address).encode()) in keys
    ]
    assert recovered == [], f"login_throttle reveals the caller's address: {recovered}"


def test_throttle_row_does_not_reveal_the_address_typed_at_sign_in(app, client, factory):
    """An unknown e-mail typed at sign-in (a typo of a colleague's, a private address) is
    kept as `acct:` + SHA-256(lower-cased e-mail): confirmable from a guess, and every
    account's sign-in attempts read straight off the users table."""
    typed = "olena.k.private@example.net"
    response = client.post(
        f"{API}/auth/login",
        json={"email": typed, "password": "whatever"},
        environ_base={"REMOTE_ADDR": "192.0.2.99"},
    )
    assert response.status_code == 401
    keys = {k for (k,) in _sql(app, "SELECT key FROM login_throttle")}
    assert "acct:" + _sha(typed.encode()) not in keys
