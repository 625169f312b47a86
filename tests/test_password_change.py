"""A user's own password change, at sign-in (`POST /auth/login` with `new_password`), and the
change a password set by an administrator requires (migration 0020, docs/decisions.md): the
administrator's password signs in only to be replaced, so it does not stay usable by
whoever chose it."""

from __future__ import annotations

import json
import uuid
from typing import Any

from conftest import TEST_PASSWORD, assert_problem
from sqlalchemy import func, select

from referral_api.access.roles import Role
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import AuthSession, LoginThrottle, User
from referral_api.extensions import db

API = "/api/v1"
SET_BY_ADMIN = "chosen by the administrator 1"
OWN = "the user's very own passphrase"


def _login(client: Any, email: str, password: str, new_password: str | None = None) -> Any:
    body = {"email": email, "password": password}
    if new_password is not None:
        body["new_password"] = new_password
    return client.post(f"{API}/auth/login", json=body)


def _read(app: Any, query: Any) -> Any:
    with db.session_factory_for(app)() as s:
        return s.execute(query).all()


def _user(app: Any, user_id: uuid.UUID) -> User:
    with db.session_factory_for(app)() as s:
        user = s.get(User, user_id)
        assert user is not None
        s.expunge(user)
        return user


def _rows(app: Any, action: str) -> list[AuditEvent]:
    with db.session_factory_for(app)() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        s.expunge_all()
        return rows


def _admin_sets_password(client: Any, factory: Any, role: Role = Role.CASEWORKER) -> Any:
    """An org admin creates an account with a password of its choosing; its principal."""
    admin = factory.user(Role.ORG_ADMIN)
    email = f"new-{uuid.uuid4().hex[:8]}@example.org"
    created = client.post(
        f"{API}/orgs/{admin.org_id}/users",
        json={"email": email, "display_name": "New", "role": role.value, "password": SET_BY_ADMIN},
        headers=factory.headers(admin),
    )
    assert created.status_code == 201, created.get_json()
    return uuid.UUID(created.get_json()["id"]), email


def test_a_user_changes_their_own_password_at_sign_in(app: Any, client: Any, factory: Any) -> None:
    worker = factory.user(Role.CASEWORKER)
    earlier = factory.headers(worker)  # another login of the same account
    assert _user(app, worker.id).password_change_required is False

    changed = _login(client, worker.email, TEST_PASSWORD, OWN)
    assert changed.status_code == 200, changed.get_json()
    new_headers = {"Authorization": f"Bearer {changed.get_json()['access_token']}"}
    assert client.get(f"{API}/me", headers=new_headers).status_code == 200
    # Every other login of the account ends; the old password no longer signs in.
    assert_problem(client.get(f"{API}/me", headers=earlier), 401)
    assert_problem(_login(client, worker.email, TEST_PASSWORD), 401)
    assert _login(client, worker.email, OWN).status_code == 200

    [row] = _rows(app, "auth:password-change")
    assert (row.actor_id, row.actor_org_id, row.resource_type, row.resource_id) == (
        worker.id,
        worker.org_id,
        "user",
        str(worker.id),
    )
    assert (row.decision, json.loads(row.details or "{}")) == ("allow", {"required": False})
    for value in (row.details or "", row.reason or ""):
        assert OWN not in value and TEST_PASSWORD not in value


def test_a_password_set_by_an_administrator_signs_in_only_to_be_replaced(
    app: Any, client: Any, factory: Any
) -> None:
    user_id, email = _admin_sets_password(client, factory)
    assert _user(app, user_id).password_change_required is True
    sessions_before = _read(app, select(func.count()).select_from(AuthSession))

    refused = _login(client, email, SET_BY_ADMIN)
    body = assert_problem(refused, 403)
    assert body["type"] == "/problems/password-change-required"
    assert "new_password" in body["detail"]
    # No login was opened, and the right password is not a failure that counts to a lock.
    assert _read(app, select(func.count()).select_from(AuthSession)) == sessions_before
    assert all(failures == 0 for (failures,) in _read(app, select(LoginThrottle.failures)))
    [denied] = [r for r in _rows(app, "auth:sign-in") if r.reason == "password-change-required"]
    assert (denied.decision, denied.resource_id) == ("deny", str(user_id))

    assert _login(client, email, SET_BY_ADMIN, OWN).status_code == 200
    assert _user(app, user_id).password_change_required is False
    assert_problem(_login(client, email, SET_BY_ADMIN), 401)
    assert _login(client, email, OWN).status_code == 200
    [changed] = _rows(app, "auth:password-change")
    assert json.loads(changed.details or "{}") == {"required": True}


def test_a_refused_change_changes_nothing(app: Any, client: Any, factory: Any) -> None:
    user_id, email = _admin_sets_password(client, factory)
    before = _user(app, user_id).password_hash

    # The wrong current password: the same 401 as any wrong password.
    assert_problem(_login(client, email, "not the password at all", OWN), 401)
    # The same password again, or one too short: 422, naming new_password.
    for new_password in (SET_BY_ADMIN, "short"):
        body = assert_problem(_login(client, email, SET_BY_ADMIN, new_password), 422)
        assert "new_password" in json.dumps(body)

    stored = _user(app, user_id)
    assert (stored.password_hash, stored.password_change_required) == (before, True)
    assert _rows(app, "auth:password-change") == []
    assert_problem(_login(client, email, OWN), 401)


def test_an_administrator_resets_others_and_changes_its_own_only_at_sign_in(
    app: Any, client: Any, factory: Any
) -> None:
    """A reset by another administrator of the organisation is replaced at the next sign-in;
    an administrator's own password is not set with PATCH (a stolen access token would
    become the account), only with the current one at sign-in."""
    admin = factory.user(Role.ORG_ADMIN)
    headers = factory.headers(admin)
    url = f"{API}/users/{admin.id}"

    def patch_password(who: dict[str, str], password: str) -> Any:
        tag = client.get(url, headers=who).headers["ETag"]
        return client.patch(url, json={"password": password}, headers={**who, "If-Match": tag})

    before = _user(app, admin.id).password_hash
    body = assert_problem(patch_password(headers, OWN), 403)
    assert "new_password" in body["detail"]
    assert _user(app, admin.id).password_hash == before
    assert client.get(f"{API}/me", headers=headers).status_code == 200  # nothing ended

    other = factory.headers(factory.user(Role.ORG_ADMIN, admin.org_id))
    assert patch_password(other, SET_BY_ADMIN).status_code == 200
    assert _user(app, admin.id).password_change_required is True
    assert_problem(_login(client, admin.email, SET_BY_ADMIN), 403)
    assert _login(client, admin.email, SET_BY_ADMIN, OWN).status_code == 200


def test_a_new_password_equal_to_the_password_is_refused_before_any_check(
    app: Any, client: Any, factory: Any
) -> None:
    """Refused by the schema, right or wrong, with nothing counted or recorded: a 422 decided
    after verifying would have told a guesser the password was right (found by review)."""
    worker = factory.user(Role.CASEWORKER)
    for password in (TEST_PASSWORD, "not the password at all"):
        body = assert_problem(_login(client, worker.email, password, password), 422)
        assert "new_password" in body["errors"]["json"]
    assert _read(app, select(LoginThrottle.failures)) == []
    with db.session_factory_for(app)() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0
    assert _login(client, worker.email, TEST_PASSWORD).status_code == 200
