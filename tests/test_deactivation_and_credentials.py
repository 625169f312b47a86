"""An organisation's deactivation ends its logins for good, and is published to directory
consumers; credentials arrive in the forms the standards allow and the acting officer is
never blank.

- Deactivating an organisation revokes every session of its users and API clients, as a
  user's or client's own deactivation does: reactivating it brings no old token back.
- A refresh refused while the organisation is inactive does not spend the refresh token, so
  it is never mistaken for a replay (a false `refresh-token-reuse` security event).
- Its services' HSDS `last_modified` moves with it: an incremental pull sees them go.
- `Authorization: basic …` is HTTP Basic (schemes are case-insensitive); a blank
  `X-Acting-Officer` is refused rather than recorded as if an officer were named.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import assert_problem
from sqlalchemy import select
from test_directory import add_service

from referral_api.access.roles import OrgType, Role
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import AuthSession, Organisation
from referral_api.extensions import db
from referral_api.smorest import etag_for

API = "/api/v1"


def patch_org(app: Any, client: Any, boss: dict[str, str], org_id: Any, **changes: Any) -> None:
    with db.session_factory_for(app)() as s:
        org = s.get(Organisation, org_id)
        etag = etag_for("org", org.id, org.version)
    response = client.patch(
        f"{API}/orgs/{org_id}", json=changes, headers={**boss, "If-Match": etag}
    )
    assert response.status_code == 200, response.get_json()


def set_active(app: Any, client: Any, boss: dict[str, str], org_id: Any, active: bool) -> None:
    patch_org(app, client, boss, org_id, active=active)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_reactivating_an_organisation_brings_back_no_login(app: Any, client: Any, factory: Any):
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    org = factory.org(OrgType.POLICE)
    tokens = factory.login(factory.user(Role.POLICE_OFFICER, org))
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org)
    machine = client.post(
        f"{API}/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    ).get_json()["access_token"]
    assert client.get(f"{API}/me", headers=bearer(machine)).status_code == 200

    set_active(app, client, boss, org, False)
    set_active(app, client, boss, org, True)
    for token in (tokens["access_token"], machine):
        assert_problem(client.get(f"{API}/me", headers=bearer(token)), 401)
    assert_problem(client.post(f"{API}/auth/refresh", headers=bearer(tokens["refresh_token"])), 401)
    with db.session_factory_for(app)() as s:
        reasons = list(s.scalars(select(AuthSession.revoked_reason)))
    # The login and the client's token; not the administrator's own session.
    assert sorted(reasons, key=str) == [
        None,
        "organisation_deactivated",
        "organisation_deactivated",
    ]


def test_a_refresh_refused_while_inactive_is_not_taken_for_a_replay(
    app: Any, client: Any, factory: Any
):
    org = factory.org(OrgType.NGO)
    tokens = factory.login(factory.user(Role.CASEWORKER, org))
    with db.session_factory_for(app)() as s:
        # The organisation is switched off behind the API's back: its sessions stay open.
        s.get(Organisation, org).active = False
        s.commit()
    refresh = bearer(tokens["refresh_token"])
    assert_problem(client.post(f"{API}/auth/refresh", headers=refresh), 401)
    with db.session_factory_for(app)() as s:
        s.get(Organisation, org).active = True
        s.commit()
    assert client.post(f"{API}/auth/refresh", headers=refresh).status_code == 200
    with db.session_factory_for(app)() as s:
        events = s.scalars(select(AuditEvent.reason).where(AuditEvent.action == "auth:refresh"))
        assert list(events) == []


@pytest.mark.parametrize(
    ("changes", "published"),
    [
        ({"active": False}, ("inactive", "Shelter of the test")),
        # A service's document carries its organisation's name (`organization.name`).
        ({"name": "Renamed shelter"}, ("active", "Renamed shelter")),
    ],
    ids=["deactivated", "renamed"],
)
def test_an_incremental_directory_pull_sees_an_organisations_change_in_its_services(
    app: Any, client: Any, factory: Any, changes: dict[str, Any], published: tuple[str, str]
):
    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    reader = factory.headers(factory.user(Role.CASEWORKER))
    shelter = factory.org(OrgType.SHELTER, name="Shelter of the test")
    service = str(add_service(db.session_factory_for(app), shelter))
    synced = datetime.now(UTC)
    time.sleep(0.01)
    patch_org(app, client, boss, shelter, **changes)
    changed = client.get(
        f"{API}/hsds/services", query_string={"modified_after": synced.isoformat()}, headers=reader
    ).get_json()["contents"]
    assert [(s["id"], s["status"]) for s in changed] == [(service, published[0])]
    full = client.get(f"{API}/hsds/services/{service}", headers=reader).get_json()
    assert full["organization"]["name"] == published[1]


def test_the_basic_scheme_is_case_insensitive(client: Any, factory: Any):
    org = factory.org(OrgType.POLICE)
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org)
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    for scheme in ("basic", "BASIC"):
        response = client.post(
            f"{API}/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"{scheme} {credentials}"},
        )
        assert response.status_code == 200, (scheme, response.get_json())


def test_a_blank_acting_officer_is_refused(client: Any, factory: Any):
    org = factory.org(OrgType.POLICE)
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org)
    token = client.post(
        f"{API}/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    ).get_json()["access_token"]
    for blank in (" ", "   ", " badge-1", "badge-1 "):
        response = client.get(f"{API}/me", headers={**bearer(token), "X-Acting-Officer": blank})
        assert assert_problem(response, 422)["errors"]["headers"]["X-Acting-Officer"]
    named = client.get(f"{API}/me", headers={**bearer(token), "X-Acting-Officer": "badge 4711"})
    assert named.status_code == 200 and named.get_json()["acting_officer"] == "badge 4711"


# ---- a sign-in racing a change of its credential (PostgreSQL) ------------------------------


def _sign_in_racing(app: Any, monkeypatch: Any, sign_in: Any, change: Any) -> Any:
    """Run `sign_in()` in a thread; once its credential has been verified (and before it
    opens its session), run `change()` here to the end; return the sign-in's response."""
    import threading

    from referral_api.extensions import hasher

    verified, release = threading.Event(), threading.Event()
    real_verify = hasher.verify

    def slow_verify(stored: Any, secret: str) -> bool:
        result = real_verify(stored, secret)
        if threading.current_thread().name == "sign-in":
            verified.set()
            release.wait(10)
        return result

    monkeypatch.setattr(hasher, "verify", slow_verify)
    outcome: dict[str, Any] = {}

    def run() -> None:
        with app.test_client() as other:
            outcome["response"] = sign_in(other)

    thread = threading.Thread(target=run, name="sign-in")
    thread.start()
    assert verified.wait(10)
    change()
    release.set()
    thread.join(15)
    return outcome["response"]


def _open_sessions(app: Any, whose: Any) -> list[Any]:
    with db.session_factory_for(app)() as s:
        still_open = select(AuthSession.id).where(whose, AuthSession.revoked_at.is_(None))
        return list(s.scalars(still_open))


needs_postgres = pytest.mark.skipif(
    not __import__("os").environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="SQLite serialises the two transactions (BEGIN IMMEDIATE)",
)


@needs_postgres
def test_a_token_grant_racing_its_secret_rotation_gives_no_working_token(
    app: Any, client: Any, factory: Any, monkeypatch: Any
):
    from referral_api.auth.models import ApiClient

    org = factory.org(OrgType.POLICE)
    admin = factory.headers(factory.user(Role.ORG_ADMIN, org))
    client_id, old_secret = factory.client_credentials(Role.POLICE_OFFICER, org)
    with db.session_factory_for(app)() as s:
        pk = s.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id))

    def rotate() -> None:
        tag = client.get(f"{API}/clients/{pk}", headers=admin).headers["ETag"]
        rotated = client.post(f"{API}/clients/{pk}/secret", headers={**admin, "If-Match": tag})
        assert rotated.status_code == 200, rotated.get_json()

    body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": old_secret}
    granted = _sign_in_racing(
        app, monkeypatch, lambda other: other.post(f"{API}/auth/token", json=body), rotate
    )
    assert_problem(granted, 401)
    assert _open_sessions(app, AuthSession.client_id == pk) == []


@needs_postgres
def test_a_login_racing_a_password_change_opens_no_session(
    app: Any, client: Any, factory: Any, monkeypatch: Any
):
    from referral_api.auth.models import User

    org = factory.org(OrgType.NGO)
    admin = factory.headers(factory.user(Role.ORG_ADMIN, org))
    worker = factory.user(Role.CASEWORKER, org)

    def change_password() -> None:
        with db.session_factory_for(app)() as s:
            version = s.get(User, worker.id).version
        changed = client.patch(
            f"{API}/users/{worker.id}",
            json={"password": "a new long passphrase 42"},
            headers={**admin, "If-Match": etag_for("user", worker.id, version)},
        )
        assert changed.status_code == 200, changed.get_json()

    body = {"email": worker.email, "password": worker.password}
    login = _sign_in_racing(
        app, monkeypatch, lambda other: other.post(f"{API}/auth/login", json=body), change_password
    )
    assert_problem(login, 401)
    assert _open_sessions(app, AuthSession.user_id == worker.id) == []


@needs_postgres
def test_two_logins_of_an_account_both_re_hashing_its_password_both_succeed(
    app: Any, client: Any, factory: Any, monkeypatch: Any
):
    """After the Argon2 settings change, an account's first login re-hashes its password.
    Two logins at once (two tabs): the second waits for the first's lock on the account,
    then finds a hash other than the one it verified: the same password re-hashed, not a
    change, so it signs in too (it was refused as a wrong password, a false security
    event counted towards the lockout). A reviewer's probe."""
    import threading

    from argon2 import PasswordHasher, Type
    from sqlalchemy import update

    from referral_api.auth import service as auth_service
    from referral_api.auth.models import User

    worker = factory.user(Role.CASEWORKER)
    older = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1, type=Type.ID)
    with db.session_factory_for(app)() as s:
        s.execute(
            update(User)
            .where(User.id == worker.id)
            .values(password_hash=older.hash(worker.password))
        )
        s.commit()
    body = {"email": worker.email, "password": worker.password}
    second: dict[str, Any] = {}
    real = auth_service._credential_current

    def run() -> None:
        with app.test_client() as other:
            second["response"] = other.post(f"{API}/auth/login", json=body)

    thread = threading.Thread(target=run, name="second")

    def first_holds_the_lock(*args: Any) -> bool:
        current = real(*args)
        if threading.current_thread() is not thread and not thread.is_alive():
            thread.start()  # the second login, while the first holds the account's lock
            thread.join(1.5)
        return current

    monkeypatch.setattr(auth_service, "_credential_current", first_holds_the_lock)
    first = client.post(f"{API}/auth/login", json=body)
    thread.join(15)
    assert first.status_code == 200, first.get_json()
    assert second["response"].status_code == 200, second["response"].get_json()
    with db.session_factory_for(app)() as s:
        refused = s.scalars(select(AuditEvent.reason).where(AuditEvent.decision == "deny")).all()
    assert refused == []


@needs_postgres
@pytest.mark.parametrize("kind", ["login", "client token"])
@pytest.mark.parametrize("deactivated", ["before the sign-in's lock", "while it holds it"])
def test_a_sign_in_racing_its_organisations_deactivation_leaves_no_login(
    app: Any, client: Any, factory: Any, monkeypatch: Any, kind: str, deactivated: str
):
    """A deactivation revokes the sessions it sees; a sign-in that had read its
    organisation as active and had not committed its session yet kept a login that came
    back with the reactivation (a reviewer's probe). The sign-in now re-reads its
    organisation under a share lock: a deactivation committed first refuses it, one that
    comes after waits for it and revokes its session."""
    from race_support import run_during

    from referral_api.auth import service as auth_service
    from referral_api.auth.models import ApiClient

    boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
    org = factory.org(OrgType.POLICE)
    if kind == "login":
        worker = factory.user(Role.POLICE_OFFICER, org)
        url, body = f"{API}/auth/login", {"email": worker.email, "password": worker.password}
        whose = AuthSession.user_id == worker.id
    else:
        client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org)
        url = f"{API}/auth/token"
        body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        with db.session_factory_for(app)() as s:
            whose = AuthSession.client_id == s.scalar(
                select(ApiClient.id).where(ApiClient.client_id == client_id)
            )

    def deactivate() -> None:
        with app.test_client() as other:
            set_active(app, other, boss, org, False)

    if deactivated == "before the sign-in's lock":
        signed_in = _sign_in_racing(
            app, monkeypatch, lambda other: other.post(url, json=body), deactivate
        )
        assert_problem(signed_in, 401)
    else:
        during = run_during(
            monkeypatch, auth_service, "_credential_current", lambda *_a: True, deactivate
        )
        signed_in = client.post(url, json=body)
        during["thread"].join(15)
        assert during["waited"], "the deactivation did not wait for the sign-in"
        assert "error" not in during, during.get("error")
        assert signed_in.status_code == 200, signed_in.get_json()
    monkeypatch.undo()
    set_active(app, client, boss, org, True)
    assert _open_sessions(app, whose) == []
    if signed_in.status_code == 200:
        tokens = signed_in.get_json()
        assert_problem(client.get(f"{API}/me", headers=bearer(tokens["access_token"])), 401)
        if "refresh_token" in tokens:
            refreshed = client.post(f"{API}/auth/refresh", headers=bearer(tokens["refresh_token"]))
            assert_problem(refreshed, 401)
