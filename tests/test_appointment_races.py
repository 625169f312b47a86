"""An appointment by the platform administrator (admin.service._check_appointment) and a
sign-in of the account being appointed, at once, on PostgreSQL (found by review): both
finish, neither a deadlock (503)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from conftest import TEST_PASSWORD

from referral_api.access.roles import OrgType, Role

API = "/api/v1"

needs_postgres = pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="two transactions at once need PostgreSQL (SQLite serialises writers)",
)


def _sign_in(app: Any, email: str) -> Any:
    """A sign-in on a client (and connection) of its own, as another request would be."""
    with app.test_client() as other:
        return other.post(f"{API}/auth/login", json={"email": email, "password": TEST_PASSWORD})


@needs_postgres
def test_a_promotion_racing_the_promoted_users_sign_in_does_not_deadlock(
    app: Any, client: Any, factory: Any, monkeypatch: Any
) -> None:
    """Sign-in locks the account (FOR NO KEY UPDATE), then its organisation (FOR SHARE); an
    appointment locked the organisation first, then updated the account: each waited for the
    other (PostgreSQL's deadlock, a 503). It now locks in the sign-in's order."""
    from race_support import run_during

    from referral_api.admin import service as admin_service

    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    shelter = factory.org(OrgType.SHELTER)
    worker = factory.user(Role.CASEWORKER, shelter)
    url = f"{API}/users/{worker.id}"
    tag = client.get(url, headers=boss).headers["ETag"]

    def sign_in() -> Any:
        return _sign_in(app, worker.email)

    during = run_during(
        monkeypatch,
        admin_service,
        "revoke_sessions_of_user",
        lambda *_a, **_k: True,
        sign_in,
        before=True,
    )
    promoted = client.patch(url, json={"role": "org_admin"}, headers={**boss, "If-Match": tag})
    during["thread"].join(15)
    assert "error" not in during, during.get("error")
    login = during["response"]
    assert (promoted.status_code, login.status_code) == (200, 200), (
        promoted.get_data(as_text=True),
        login.get_data(as_text=True),
    )


@needs_postgres
def test_a_reactivation_racing_the_accounts_sign_in_does_not_deadlock(
    app: Any, client: Any, factory: Any, monkeypatch: Any
) -> None:
    """A platform administrator switches an org's (only, dormant) administrator back on
    while it tries to sign in."""
    from referral_api.admin import service as admin_service

    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    shelter = factory.org(OrgType.SHELTER)
    dormant = factory.user(Role.ORG_ADMIN, shelter, active=False)
    url = f"{API}/users/{dormant.id}"
    tag = client.get(url, headers=boss).headers["ETag"]

    def sign_in() -> Any:
        return _sign_in(app, dormant.email)

    real = admin_service._check_appointment
    state: dict[str, Any] = {}

    def racer_then_check(*args: Any, **kwargs: Any) -> Any:
        # the organisation is locked inside real(); race after it, before the user's UPDATE
        result = real(*args, **kwargs)
        t = threading.Thread(target=lambda: state.__setitem__("response", sign_in()))
        t.start()
        t.join(1.5)
        state["thread"] = t
        return result

    monkeypatch.setattr(admin_service, "_check_appointment", racer_then_check)
    switched = client.patch(url, json={"active": True}, headers={**boss, "If-Match": tag})
    state["thread"].join(15)
    login = state["response"]
    assert switched.status_code == 200, switched.get_data(as_text=True)
    assert login.status_code in (200, 401), login.get_data(as_text=True)
    assert login.status_code != 503
