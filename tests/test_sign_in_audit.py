"""Refused sign-ins and replayed refresh tokens are audited (docs/audit.md, "Security
events"): one row per refused attempt, written with the failure count in one transaction,
naming the account tried and its organisation and why it was refused, never the e-mail
address or client id typed, the password or the caller's address; attempts refused while
locked write nothing (the row of the failure that locked says so); a successful sign-in
writes no row. The data-protection officer's `sign-in-failures` report reads them, scoped
to the officer's organisation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TEST_PASSWORD, assert_problem
from sqlalchemy import select, text, update

from referral_api.access.roles import OrgType, Role
from referral_api.audit import service as audit_service
from referral_api.audit.models import AuditEvent
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.auth.service import SECURITY_EVENT_ACTIONS
from referral_api.dpo.service import SIGN_IN_FAILURES_COLUMNS

API = "/api/v1"
ACCOUNT_LIMIT = 3
ADDRESS_LIMIT = 5
LOCKOUT_SECONDS = 120
TYPED_EMAIL = "Nobody.Here-7q3x@Example.org"
TYPED_PASSWORD = "typed-password-7q3x"
ADDRESS = "192.0.2.77"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": ACCOUNT_LIMIT,
        "LOGIN_MAX_FAILURES_PER_ADDRESS": ADDRESS_LIMIT,
        "LOGIN_LOCKOUT_SECONDS": LOCKOUT_SECONDS,
    }


def sign_in(client: Any, email: str, password: str, address: str = ADDRESS) -> Any:
    return client.post(
        f"{API}/auth/login",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def security_rows(session: Any) -> list[AuditEvent]:
    try:
        rows = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.in_(SECURITY_EVENT_ACTIONS))
                .order_by(AuditEvent.id)
            )
        )
        session.expunge_all()
        return rows
    finally:
        session.rollback()


def change(session: Any, statement: Any) -> None:
    session.execute(statement)
    session.commit()


def assert_row(row: AuditEvent, response: Any, **expected: Any) -> None:
    assert row.actor_type == "anonymous"
    assert row.actor_id is None and row.actor_role is None
    assert row.decision == "deny"
    assert row.case_id is None and row.categories is None
    assert row.request_id == response.headers["X-Request-ID"]
    got = {key: getattr(row, key) for key in expected}
    assert got == expected


def test_a_wrong_password_is_audited_against_the_account(client: Any, session: Any, factory: Any):
    user = factory.user(Role.CASEWORKER)
    response = sign_in(client, user.email, TYPED_PASSWORD)
    assert_problem(response, 401)
    [row] = security_rows(session)
    assert_row(
        row,
        response,
        action="auth:sign-in",
        resource_type="user",
        resource_id=str(user.id),
        actor_org_id=user.org_id,
        reason="wrong-secret",
        details=None,
    )


def test_an_unknown_account_is_audited_without_the_name_typed(client: Any, session: Any):
    response = sign_in(client, TYPED_EMAIL, TYPED_PASSWORD)
    assert_problem(response, 401)
    [row] = security_rows(session)
    assert_row(
        row,
        response,
        action="auth:sign-in",
        resource_type="user",
        resource_id=None,
        actor_org_id=None,
        reason="unknown-account",
    )
    # Nothing typed and not the address is anywhere in the audit table (raw rows).
    try:
        raw = json.dumps(
            [list(r) for r in session.execute(text("SELECT * FROM audit_events")).all()],
            default=str,
        ).lower()
    finally:
        session.rollback()
    for typed in (TYPED_EMAIL, TYPED_PASSWORD, ADDRESS, "nobody.here"):
        assert typed.lower() not in raw, typed


def test_inactive_accounts_and_organisations_are_told_apart(
    client: Any, session: Any, factory: Any
):
    user = factory.user(Role.CASEWORKER)
    other = factory.user(Role.CASEWORKER)
    change(session, update(User).where(User.id == user.id).values(active=False))
    change(
        session, update(Organisation).where(Organisation.id == other.org_id).values(active=False)
    )
    # The right password: the caller still gets the one answer for every refusal.
    first = sign_in(client, user.email, TEST_PASSWORD)
    second = sign_in(client, other.email, TEST_PASSWORD)
    assert assert_problem(first, 401)["detail"] == assert_problem(second, 401)["detail"]
    rows = security_rows(session)
    assert [(r.resource_id, r.actor_org_id, r.reason) for r in rows] == [
        (str(user.id), user.org_id, "account-inactive"),
        (str(other.id), other.org_id, "organisation-inactive"),
    ]


def test_a_successful_sign_in_writes_no_row(client: Any, session: Any, factory: Any):
    user = factory.user(Role.CASEWORKER)
    assert sign_in(client, user.email, TEST_PASSWORD).status_code == 200
    assert security_rows(session) == []


def test_the_failure_that_locks_says_so_and_locked_attempts_write_nothing(
    client: Any, session: Any, factory: Any
):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT):
        assert_problem(sign_in(client, user.email, TYPED_PASSWORD), 401)
    for _ in range(3):
        assert_problem(sign_in(client, user.email, TEST_PASSWORD), 429)
    rows = security_rows(session)
    assert len(rows) == ACCOUNT_LIMIT
    assert [r.details for r in rows[:-1]] == [None] * (ACCOUNT_LIMIT - 1)
    assert json.loads(rows[-1].details) == {
        "locked": ["account"],
        "lockout_seconds": LOCKOUT_SECONDS,
    }
    # Two more failures from the address (on other names) lock it too.
    for n in range(ADDRESS_LIMIT - ACCOUNT_LIMIT):
        sign_in(client, f"other-{n}@example.org", TYPED_PASSWORD)
    last = security_rows(session)[-1]
    assert json.loads(last.details) == {"locked": ["address"], "lockout_seconds": LOCKOUT_SECONDS}


def test_a_refused_client_secret_is_audited_against_the_client(
    client: Any, session: Any, factory: Any
):
    org = factory.org(OrgType.POLICE)
    client_id, _secret = factory.client_credentials(Role.POLICE_OFFICER, org)
    try:
        pk = session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id))
    finally:
        session.rollback()
    response = client.post(
        f"{API}/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "not-the-secret",
        },
    )
    assert_problem(response, 401)
    [row] = security_rows(session)
    assert_row(
        row,
        response,
        action="auth:client-token",
        resource_type="client",
        resource_id=str(pk),
        actor_org_id=org,
        reason="wrong-secret",
    )
    assert client_id not in json.dumps([row.resource_id, row.details, row.reason])


def test_a_replayed_refresh_token_is_audited_once(client: Any, session: Any, factory: Any):
    user = factory.user(Role.CASEWORKER)
    tokens = factory.login(user)
    refresh = {"Authorization": f"Bearer {tokens['refresh_token']}"}
    assert client.post(f"{API}/auth/refresh", headers=refresh).status_code == 200
    replay = client.post(f"{API}/auth/refresh", headers=refresh)
    assert_problem(replay, 401)
    # The family is revoked now: presenting the token again is an ended session, not news.
    assert_problem(client.post(f"{API}/auth/refresh", headers=refresh), 401)
    [row] = security_rows(session)
    assert_row(
        row,
        replay,
        action="auth:refresh",
        resource_type="user",
        resource_id=str(user.id),
        actor_org_id=user.org_id,
        reason="refresh-token-reuse",
    )
    assert set(json.loads(row.details)) == {"session_id"}


@pytest.mark.parametrize(
    ("how", "reason", "revoked_reason"),
    [
        ("rotate", "session-revoked", "secret_rotated"),
        ("deactivate-client", "session-revoked", "client_changed"),
        ("deactivate-org", "session-revoked", "organisation_deactivated"),
        ("org-off-behind-the-api", "organisation-inactive", None),
    ],
)
def test_a_revoked_clients_token_still_used_is_audited_against_it(
    client: Any, session: Any, factory: Any, how: str, reason: str, revoked_reason: str | None
):
    """A police system whose access was withdrawn keeps calling with its last token: each
    call is refused (401) and on the record for its organisation's DPO."""
    from referral_api.smorest import etag_for

    org = factory.org(OrgType.POLICE)
    admin = factory.headers(factory.user(Role.ORG_ADMIN, org))
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, org)
    body = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    token = client.post(f"{API}/auth/token", json=body).get_json()["access_token"]
    police = {"Authorization": f"Bearer {token}", "X-Acting-Officer": "badge 9"}
    try:
        pk = session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id))
        org_version = session.get(Organisation, org).version
    finally:
        session.rollback()
    tag = client.get(f"{API}/clients/{pk}", headers=admin).headers["ETag"]
    if how == "rotate":
        changed = client.post(f"{API}/clients/{pk}/secret", headers={**admin, "If-Match": tag})
    elif how == "deactivate-client":
        changed = client.patch(
            f"{API}/clients/{pk}", json={"active": False}, headers={**admin, "If-Match": tag}
        )
    elif how == "deactivate-org":
        boss = factory.headers(factory.user(Role.PLATFORM_ADMIN))
        changed = client.patch(
            f"{API}/orgs/{org}",
            json={"active": False},
            headers={**boss, "If-Match": etag_for("org", org, org_version)},
        )
    else:
        change(session, update(Organisation).where(Organisation.id == org).values(active=False))
        changed = None
    assert changed is None or changed.status_code == 200, changed.get_json()

    refused = client.get(f"{API}/cases", headers=police)
    assert_problem(refused, 401)
    [row] = security_rows(session)
    assert_row(
        refused_row := row,
        refused,
        action="auth:token-refused",
        resource_type="client",
        resource_id=str(pk),
        actor_org_id=org,
        reason=reason,
    )
    expected = {"session_id"} | ({"revoked_reason"} if revoked_reason else set())
    assert set(json.loads(refused_row.details)) == expected
    if revoked_reason:
        assert json.loads(refused_row.details)["revoked_reason"] == revoked_reason

    # The organisation's own DPO may be switched off with it: the platform's reads it.
    dpo = factory.headers(factory.user(Role.DPO, factory.org(OrgType.PLATFORM)))
    report = client.get(f"{API}/dpo/reports/sign-in-failures", headers=dpo).get_json()
    assert [(r["action"], r["account_id"], r["org_id"], r["reason"]) for r in report] == [
        ("auth:token-refused", str(pk), str(org), reason)
    ]


def test_a_signed_out_users_token_still_used_is_audited(client: Any, session: Any, factory: Any):
    user = factory.user(Role.CASEWORKER)
    tokens = factory.login(user)
    access = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.post(f"{API}/auth/logout", headers=access).status_code == 204
    refused = client.get(f"{API}/me", headers=access)
    assert_problem(refused, 401)
    [row] = security_rows(session)
    assert_row(
        row,
        refused,
        action="auth:token-refused",
        resource_type="user",
        resource_id=str(user.id),
        actor_org_id=user.org_id,
        reason="session-revoked",
    )


def test_a_token_retried_in_a_loop_is_recorded_once_a_minute(
    client: Any, session: Any, factory: Any, monkeypatch: Any
):
    """Refused on every call, recorded once per login per minute (per worker process): a
    client retrying on 401 for its token's remaining lifetime cannot fill the audit log."""
    from referral_api.auth import service as auth_service

    user = factory.user(Role.CASEWORKER)
    access = {"Authorization": f"Bearer {factory.login(user)['access_token']}"}
    assert client.post(f"{API}/auth/logout", headers=access).status_code == 204
    for _ in range(40):
        assert_problem(client.get(f"{API}/me", headers=access), 401)
    assert len(security_rows(session)) == 1
    # A minute later (the window passed), the next refusal is on the record again.
    clock = auth_service.time.monotonic() + 61
    monkeypatch.setattr(auth_service.time, "monotonic", lambda: clock)
    assert_problem(client.get(f"{API}/me", headers=access), 401)
    assert [row.reason for row in security_rows(session)] == ["session-revoked"] * 2


def test_security_rows_are_chained_like_any_other(app: Any, client: Any, factory: Any):
    from referral_api.extensions import db

    user = factory.user(Role.CASEWORKER)
    sign_in(client, user.email, TYPED_PASSWORD)
    sign_in(client, TYPED_EMAIL, TYPED_PASSWORD)
    with db.session_factory_for(app)() as s:
        audit_service.seal_all(db.session_factory_for(app))
        assert audit_service.verify_chain(s).ok
        sealed = s.scalars(select(AuditEvent.hash).where(AuditEvent.action == "auth:sign-in")).all()
        assert len(sealed) == 2 and all(sealed)


# ---- the report -------------------------------------------------------------------------


def report(client: Any, headers: dict[str, str], status: int = 200, **params: Any) -> Any:
    response = client.get(
        f"{API}/dpo/reports/sign-in-failures", query_string=params, headers=headers
    )
    assert response.status_code == status, response.get_data(as_text=True)
    return response


def test_the_report_is_scoped_to_the_officers_organisation(client: Any, factory: Any):
    org_a, org_b = factory.org(), factory.org()
    a, b = factory.user(Role.CASEWORKER, org_a), factory.user(Role.CASEWORKER, org_b)
    for email in (a.email, a.email, b.email, TYPED_EMAIL):
        sign_in(client, email, TYPED_PASSWORD)
    dpo_a = factory.headers(factory.user(Role.DPO, org_a))
    platform = factory.headers(factory.user(Role.DPO, factory.org(OrgType.PLATFORM)))

    rows = report(client, dpo_a).get_json()
    assert [(r["account_id"], r["org_id"], r["reason"]) for r in rows] == [
        (str(a.id), str(org_a), "wrong-secret")
    ] * 2
    assert rows[0]["occurred_at"] >= rows[1]["occurred_at"]  # newest first
    assert set(rows[0]) == set(SIGN_IN_FAILURES_COLUMNS)
    assert rows[0]["action"] == "auth:sign-in" and rows[0]["account_type"] == "user"
    assert rows[0]["locked"] == [] and rows[0]["request_id"]

    everything = report(client, platform).get_json()
    assert sorted((r["account_id"] or "", r["org_id"] or "") for r in everything) == sorted(
        [(str(a.id), str(org_a))] * 2 + [(str(b.id), str(org_b)), ("", "")]
    )
    only_b = report(client, platform, org_id=str(org_b)).get_json()
    assert [r["account_id"] for r in only_b] == [str(b.id)]
    # An organisation's officer cannot ask for another's; other roles cannot ask at all.
    assert_problem(report(client, dpo_a, 403, org_id=str(org_b)), 403)
    caseworker = factory.headers(factory.user(Role.CASEWORKER, org_a))
    assert_problem(report(client, caseworker, 403), 403)
    assert_problem(report(client, {}, 401), 401)


def test_the_report_shows_locks_and_pages(client: Any, factory: Any):
    org = factory.org()
    user = factory.user(Role.CASEWORKER, org)
    for _ in range(ACCOUNT_LIMIT):
        sign_in(client, user.email, TYPED_PASSWORD)
    dpo = factory.headers(factory.user(Role.DPO, org))
    first = report(client, dpo, limit=2)
    assert [r["locked"] for r in first.get_json()] == [["account"], []]
    link = first.headers["Link"]
    rest = client.get(link[link.index("<") + 1 : link.index(">")], headers=dpo)
    assert [r["locked"] for r in rest.get_json()] == [[]]
    exported = report(client, dpo, format="csv").get_data(as_text=True).splitlines()
    assert exported[0] == (
        "occurred_at,action,account_type,account_id,org_id,reason,locked,request_id"
    )
    assert len(exported) == 1 + ACCOUNT_LIMIT
    assert exported[1].count(str(user.id)) == 1 and ",account," in exported[1]


def test_reading_the_report_is_audited(client: Any, session: Any, factory: Any):
    org = factory.org()
    dpo = factory.user(Role.DPO, org)
    report(client, factory.headers(dpo))
    try:
        rows = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "dpo:report", AuditEvent.actor_id == dpo.id
            )
        ).all()
        assert [json.loads(r.details)["report"] for r in rows] == ["sign-in-failures"]
    finally:
        session.rollback()


def test_bad_report_parameters_are_refused_and_write_nothing(
    client: Any, session: Any, factory: Any
):
    org = factory.org()
    dpo = factory.user(Role.DPO, org)
    headers = factory.headers(dpo)
    assert_problem(report(client, headers, 422, limit=0), 422)
    assert_problem(report(client, headers, 422, **{"from": "yesterday"}), 422)
    assert_problem(report(client, headers, 422, cursor="bm90IGEgY3Vyc29y"), 422)
    try:
        written = session.scalars(select(AuditEvent).where(AuditEvent.actor_id == dpo.id)).all()
    finally:
        session.rollback()
    assert written == []
