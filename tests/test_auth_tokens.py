"""Bearer tokens from the outside: every JWT failure mode, login, refresh rotation with
replay detection, logout, per-request reload of role/org/active, and client credentials.

Tokens are decoded and forged with PyJWT and the test signing secret, so each failure test
starts from a token the API accepts and changes exactly one thing about it.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from conftest import JWT_TEST_SECRET, TEST_PASSWORD, assert_problem
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import func, select, update

from referral_api.access.roles import OrgType, Role, permissions_for
from referral_api.auth.models import ApiClient, AuthSession, Organisation, RefreshToken, User
from referral_api.auth.service import stored_jti

ME = "/api/v1/me"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
TOKEN = "/api/v1/auth/token"

IDENTITY_CLAIMS = {"sub", "sid", "jti", "type", "exp", "iat", "fresh", "nbf"}

# Texts that flask-jwt-extended and PyJWT put in their exceptions; none may reach a caller.
LIBRARY_TEXTS = (
    "Signature verification failed",
    "Signature has expired",
    "Token has expired",
    "Not enough segments",
    "Invalid header",
    "Invalid payload",
    "Invalid crypto padding",
    "The specified alg value is not allowed",
    "alg value",
    "Missing Authorization Header",
    "Missing 'Bearer' type",
    "Bad Authorization header",
    "Only access tokens are allowed",
    "Only refresh tokens are allowed",
    "Subject must be a string",
    "The token is not yet valid",
    "Missing claim",
    "Traceback",
    "DecodeError",
    "badly formed",
)
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "errors"}


# ---- helpers --------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def decode(token: str) -> dict[str, Any]:
    return jwt.decode(token, JWT_TEST_SECRET, algorithms=["HS256"])


def sign(claims: dict[str, Any], secret: str = JWT_TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_unauthorized(
    response: Any, *secrets_not_echoed: str, case: object = None
) -> dict[str, Any]:
    """A 401 problem that names nothing but our own fixed sentences. `case` labels the
    failing input when one test walks several."""
    assert response.status_code == 401, (case, response.status_code, response.get_data())
    body = assert_problem(response, 401)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), response.headers
    assert set(body) <= PROBLEM_KEYS, body
    assert "msg" not in body  # flask-jwt-extended's own error shape
    text = response.get_data(as_text=True)
    for library_text in LIBRARY_TEXTS:
        assert library_text not in text, (library_text, text)
    for secret in secrets_not_echoed:
        assert secret not in text
    return body


def assert_identity_only(claims: dict[str, Any]) -> None:
    # Exactly these: no role, organisation, e-mail, permissions, nor flask-jwt-extended's
    # cookie CSRF nonce (tokens travel only in the Authorization header).
    assert set(claims) == IDENTITY_CLAIMS, claims


def rows(session: Any, stmt: Any) -> list[Any]:
    """Read through the test's own session and end its transaction at once (SQLite's
    BEGIN IMMEDIATE would otherwise block the app's next request)."""
    try:
        return list(session.execute(stmt).all())
    finally:
        session.rollback()


def change(session: Any, stmt: Any) -> None:
    session.execute(stmt)
    session.commit()


def session_row(session: Any, sid: str) -> Any:
    (row,) = rows(
        session,
        select(
            AuthSession.user_id,
            AuthSession.client_id,
            AuthSession.revoked_at,
            AuthSession.revoked_reason,
        ).where(AuthSession.id == uuid.UUID(sid)),
    )
    return row


def refresh_with(client: Any, refresh_token: str) -> Any:
    return client.post(REFRESH, headers=bearer(refresh_token))


@pytest.fixture
def caseworker(factory: Any) -> Any:
    return factory.user(Role.CASEWORKER)


@pytest.fixture
def tokens(factory: Any, caseworker: Any) -> dict[str, Any]:
    return factory.login(caseworker)  # type: ignore[no-any-return]


# ---- every JWT failure mode is a 401 problem -----------------------------------------------


def test_valid_token_and_resigned_copy_are_accepted(client, tokens):
    # Control for the forgery tests below: re-signing the same claims with the right key and
    # algorithm yields a token the API accepts, so their 401s come from the one change each.
    assert client.get(ME, headers=bearer(tokens["access_token"])).status_code == 200
    resigned = sign(decode(tokens["access_token"]))
    assert client.get(ME, headers=bearer(resigned)).status_code == 200


def test_missing_authorization_header(client, tokens):
    body = assert_unauthorized(client.get(ME))
    assert body["detail"] == "A bearer token is required."


def test_non_bearer_scheme_is_rejected_even_with_a_valid_token(client, tokens):
    token = tokens["access_token"]
    for scheme in ("Basic", "Token", "JWT", "Bearerx", "MAC"):
        response = client.get(ME, headers={"Authorization": f"{scheme} {token}"})
        assert_unauthorized(response, token, case=scheme)


def test_the_bearer_scheme_is_case_insensitive(client, tokens):
    """RFC 9110 §11.1 (and RFC 6750's ABNF): `bearer`, `BEARER` name the same scheme; a
    client library that lower-cases it is not refused."""
    token = tokens["access_token"]
    for scheme in ("bearer", "BEARER", "bEaReR"):
        response = client.get(ME, headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 200, (scheme, response.get_data(as_text=True))


def test_token_without_scheme_is_rejected(client, tokens):
    token = tokens["access_token"]
    assert_unauthorized(client.get(ME, headers={"Authorization": token}), token)


GARBAGE_AUTHORIZATION = (
    "Bearer",
    "Bearer ",
    "Bearer    ",
    "Bearer garbage",
    "Bearer a.b.c",
    "Bearer ...",
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30",
    "Bearer eyJhbGciOiJIUzI1NiJ9.e30.",
    "Bearer not a token",
    "Bearer %%%.%%%.%%%",
    "Bearer " + "A" * 4000,
)


def test_empty_or_garbage_token(client, tokens):
    for header in GARBAGE_AUTHORIZATION:
        assert_unauthorized(client.get(ME, headers={"Authorization": header}), case=header)


def test_expired_access_token_minted_by_the_app(app, client, tokens):
    claims = decode(tokens["access_token"])
    with app.app_context():
        expired = create_access_token(
            identity=claims["sub"],
            additional_claims={"sid": claims["sid"]},
            expires_delta=timedelta(seconds=-5),
        )
    body = assert_unauthorized(client.get(ME, headers=bearer(expired)))
    assert body["detail"] == "The token has expired."


def test_expired_access_token_forged_with_pyjwt(client, tokens):
    claims = decode(tokens["access_token"])
    now = int(datetime.now(UTC).timestamp())
    claims.update(iat=now - 1000, nbf=now - 1000, exp=now - 1)
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_not_yet_valid(client, tokens):
    claims = decode(tokens["access_token"])
    now = int(datetime.now(UTC).timestamp())
    claims.update(nbf=now + 600, exp=now + 900)
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_signed_with_another_secret(client, tokens):
    forged = sign(decode(tokens["access_token"]), secret="another-secret-" + "y" * 40)
    body = assert_unauthorized(client.get(ME, headers=bearer(forged)))
    assert body["detail"] == "The token is not valid."


def test_tampered_payload_keeps_old_signature(client, factory, tokens):
    other = factory.user(Role.SUPERVISOR)
    header, _payload, signature = tokens["access_token"].split(".")
    claims = decode(tokens["access_token"])
    claims["sub"] = f"user:{other.id}"
    forged = f"{header}.{b64url(claims)}.{signature}"
    assert_unauthorized(client.get(ME, headers=bearer(forged)))


def test_alg_none_token(client, tokens):
    claims = decode(tokens["access_token"])  # valid sub, sid, jti, type, exp
    for alg in ("none", "None", "NONE", "nOnE"):
        for signature in ("", "AAAA"):
            forged = f"{b64url({'alg': alg, 'typ': 'JWT'})}.{b64url(claims)}.{signature}"
            assert_unauthorized(client.get(ME, headers=bearer(forged)), case=(alg, signature))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_algorithm_outside_the_allow_list_is_refused(client, tokens):
    # Right secret, wrong algorithm: only HS256 is accepted.
    forged = sign(decode(tokens["access_token"]), algorithm="HS512")
    assert_unauthorized(client.get(ME, headers=bearer(forged)))


def test_refresh_token_used_as_access_token(client, tokens):
    assert_unauthorized(client.get(ME, headers=bearer(tokens["refresh_token"])))


def test_access_token_used_as_refresh_token(client, tokens, session):
    assert_unauthorized(refresh_with(client, tokens["access_token"]))
    sid = decode(tokens["access_token"])["sid"]
    # Refused before any rotation: the login's refresh token is still unused and works.
    assert session_row(session, sid).revoked_at is None
    assert refresh_with(client, tokens["refresh_token"]).status_code == 200


def test_access_token_with_type_claim_changed_to_refresh(client, tokens):
    claims = decode(tokens["access_token"])
    claims["type"] = "refresh"
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_of_a_revoked_session(client, tokens):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    assert client.post(LOGOUT, headers=headers).status_code == 204
    assert_unauthorized(client.get(ME, headers=headers))


def test_token_without_sid(client, tokens):
    claims = decode(tokens["access_token"])
    del claims["sid"]
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_with_malformed_sid(client, tokens):
    claims = decode(tokens["access_token"])
    malformed = (None, "", "not-a-uuid", "1234", 1234, 1.5, True, ["x"], {"id": "x"}, "' OR 1=1 --")
    for sid in malformed:
        forged = sign({**claims, "sid": sid})
        assert_unauthorized(client.get(ME, headers=bearer(forged)), case=sid)


def test_token_naming_an_unknown_session(client, tokens):
    claims = decode(tokens["access_token"])
    claims["sid"] = str(uuid.uuid4())
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_pairing_a_subject_with_another_users_session(client, factory, tokens):
    # Even with the signing key, a token cannot borrow another principal's live session.
    other = factory.user(Role.SUPERVISOR)
    other_sid = decode(factory.login(other)["access_token"])["sid"]
    claims = decode(tokens["access_token"])
    claims["sid"] = other_sid
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_for_a_nonexistent_user(client, tokens):
    claims = decode(tokens["access_token"])
    claims["sub"] = f"user:{uuid.uuid4()}"
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_with_malformed_subject(client, caseworker, tokens):
    claims = decode(tokens["access_token"])
    subjects = (
        f"client:{caseworker.id}",  # kind confusion
        f"system:{caseworker.id}",
        f"admin:{caseworker.id}",
        str(caseworker.id),  # no kind at all
        "user:",
        "user:not-a-uuid",
        "",
        None,  # not a string at all
        1234,
        ["user:x"],
    )
    for sub in subjects:
        forged = sign({**claims, "sub": sub})
        assert_unauthorized(client.get(ME, headers=bearer(forged)), case=sub)


def test_token_without_subject(client, tokens):
    claims = decode(tokens["access_token"])
    del claims["sub"]
    assert_unauthorized(client.get(ME, headers=bearer(sign(claims))))


def test_token_whose_session_expired_in_the_database(client, session, tokens):
    sid = uuid.UUID(decode(tokens["access_token"])["sid"])
    change(
        session,
        update(AuthSession)
        .where(AuthSession.id == sid)
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)),
    )
    assert_unauthorized(client.get(ME, headers=bearer(tokens["access_token"])))
    assert_unauthorized(refresh_with(client, tokens["refresh_token"]))


def test_token_only_in_query_string_or_cookie_is_ignored(client, tokens):
    token = tokens["access_token"]
    assert_unauthorized(client.get(f"{ME}?jwt={token}&access_token={token}"), token)
    client.set_cookie("access_token_cookie", token)
    assert_unauthorized(client.get(ME), token)


# ---- login ----------------------------------------------------------------------------------


def test_login_returns_short_lived_identity_only_tokens(client, session, caseworker):
    response = client.post(LOGIN, json={"email": caseworker.email, "password": TEST_PASSWORD})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900

    access = decode(body["access_token"])
    assert_identity_only(access)
    assert access["type"] == "access"
    assert access["sub"] == f"user:{caseworker.id}"
    assert 0 < access["exp"] - access["iat"] <= 900
    assert access["exp"] - access["iat"] == body["expires_in"]
    # Identity only: nothing that could go stale or leak.
    for leaked in ("role", "org", "org_id", "organisation", "email", "permissions", "kind"):
        assert leaked not in access
    raw = base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "==").decode()
    assert caseworker.email not in raw
    assert str(caseworker.org_id) not in raw
    assert Role.CASEWORKER.value not in raw

    refresh = decode(body["refresh_token"])
    assert_identity_only(refresh)
    assert refresh["type"] == "refresh"
    assert refresh["sid"] == access["sid"]
    assert refresh["jti"] != access["jti"]

    stored = session_row(session, access["sid"])
    assert stored.user_id == caseworker.id
    assert stored.client_id is None
    assert stored.revoked_at is None
    ((used_at, token_sid),) = rows(
        session,
        select(RefreshToken.used_at, RefreshToken.session_id).where(
            RefreshToken.jti == stored_jti(refresh["jti"])
        ),
    )
    assert used_at is None
    assert str(token_sid) == access["sid"]
    # Kept by its digest: a copy of the database holds no id to sign into a refresh token.
    assert rows(session, select(RefreshToken.jti).where(RefreshToken.jti == refresh["jti"])) == []


def test_login_email_is_case_insensitive(client, caseworker):
    response = client.post(
        LOGIN, json={"email": caseworker.email.upper(), "password": TEST_PASSWORD}
    )
    assert response.status_code == 200
    assert decode(response.get_json()["access_token"])["sub"] == f"user:{caseworker.id}"


def test_wrong_password_opens_no_session(client, session, caseworker):
    response = client.post(LOGIN, json={"email": caseworker.email, "password": "wrong"})
    body = assert_problem(response, 401)
    assert "access_token" not in body and "refresh_token" not in body
    assert "wrong" not in response.get_data(as_text=True)
    assert rows(session, select(func.count()).select_from(AuthSession)) == [(0,)]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"email": "a@example.org"},
        {"password": "x"},
        {"email": "not-an-email", "password": "x"},
        {"email": "a@example.org", "password": ""},
        {"email": "a@example.org", "password": "x", "role": "platform_admin"},
    ],
)
def test_login_validation_errors_are_422_problems(client, payload):
    body = assert_problem(client.post(LOGIN, json=payload), 422)
    assert body["errors"]


# ---- refresh rotation -----------------------------------------------------------------------


def test_refresh_rotates_the_pair(client, session, caseworker, tokens):
    response = refresh_with(client, tokens["refresh_token"])
    assert response.status_code == 200
    rotated = response.get_json()
    assert set(rotated) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert rotated["access_token"] != tokens["access_token"]
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert 0 < rotated["expires_in"] <= 900

    old, new = decode(tokens["refresh_token"]), decode(rotated["refresh_token"])
    assert new["sid"] == old["sid"]
    assert new["jti"] != old["jti"]
    assert new["sub"] == f"user:{caseworker.id}"
    assert_identity_only(decode(rotated["access_token"]))

    used = dict(
        rows(
            session,
            select(RefreshToken.jti, RefreshToken.used_at).where(
                RefreshToken.jti.in_([stored_jti(old["jti"]), stored_jti(new["jti"])])
            ),
        )
    )
    assert used[stored_jti(old["jti"])] is not None
    assert used[stored_jti(new["jti"])] is None

    me = client.get(ME, headers=bearer(rotated["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["id"] == str(caseworker.id)
    # The new refresh token works once in turn.
    assert refresh_with(client, rotated["refresh_token"]).status_code == 200


def test_refresh_token_reuse_revokes_the_whole_family(client, session, factory, caseworker):
    first = factory.login(caseworker)
    other_login = factory.login(caseworker)
    rotated = refresh_with(client, first["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.get_json()
    assert client.get(ME, headers=bearer(second["access_token"])).status_code == 200

    # The old refresh token presented again: someone holds a copy.
    replay = refresh_with(client, first["refresh_token"])
    assert_unauthorized(replay, first["refresh_token"])
    assert "access_token" not in replay.get_json()

    # Every token of that login is dead now, including the pair the rotation produced.
    assert_unauthorized(client.get(ME, headers=bearer(second["access_token"])))
    assert_unauthorized(refresh_with(client, second["refresh_token"]))
    assert_unauthorized(client.get(ME, headers=bearer(first["access_token"])))
    assert_unauthorized(refresh_with(client, first["refresh_token"]))

    revoked = session_row(session, decode(first["access_token"])["sid"])
    assert revoked.revoked_at is not None
    assert revoked.revoked_reason == "refresh_token_reuse"

    # Another login of the same user is a different family and keeps working.
    assert client.get(ME, headers=bearer(other_login["access_token"])).status_code == 200
    assert session_row(session, decode(other_login["access_token"])["sid"]).revoked_at is None
    assert refresh_with(client, other_login["refresh_token"]).status_code == 200


def test_concurrent_refresh_with_one_token_succeeds_once(app, tokens):
    barrier = threading.Barrier(2)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def exchange() -> None:
        try:
            own_client = app.test_client()
            barrier.wait(timeout=10)
            statuses.append(refresh_with(own_client, tokens["refresh_token"]).status_code)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=exchange) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(statuses) == [200, 401], statuses


def test_refresh_token_of_a_deactivated_user_is_refused(client, session, caseworker, tokens):
    change(session, update(User).where(User.id == caseworker.id).values(active=False))
    assert_unauthorized(refresh_with(client, tokens["refresh_token"]))


def test_expired_refresh_token_is_refused(app, client, tokens):
    claims = decode(tokens["refresh_token"])
    with app.app_context():
        expired = create_refresh_token(
            identity=claims["sub"],
            additional_claims={"sid": claims["sid"], "jti": claims["jti"]},
            expires_delta=timedelta(seconds=-5),
        )
    assert_unauthorized(refresh_with(client, expired))
    # The genuine token was not consumed by the refused attempt.
    assert refresh_with(client, tokens["refresh_token"]).status_code == 200


@pytest.mark.parametrize(
    "mutation",
    ["unknown_jti", "no_jti", "no_sid", "bad_sid", "other_sid", "bad_signature", "alg_none"],
)
def test_forged_refresh_tokens_are_refused(client, session, factory, tokens, mutation):
    claims = decode(tokens["refresh_token"])
    forged: str | None = None
    if mutation == "unknown_jti":
        claims["jti"] = "unknown-" + uuid.uuid4().hex
    elif mutation == "no_jti":
        del claims["jti"]
    elif mutation == "no_sid":
        del claims["sid"]
    elif mutation == "bad_sid":
        claims["sid"] = "not-a-uuid"
    elif mutation == "other_sid":
        other = factory.login(factory.user(Role.CASEWORKER))
        claims["sid"] = decode(other["refresh_token"])["sid"]
    elif mutation == "bad_signature":
        forged = sign(claims, secret="another-secret-" + "y" * 40)
    else:
        forged = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."
    assert_unauthorized(refresh_with(client, forged or sign(claims)))
    # A forgery neither consumes the genuine token nor revokes the login.
    assert session_row(session, decode(tokens["refresh_token"])["sid"]).revoked_at is None
    assert refresh_with(client, tokens["refresh_token"]).status_code == 200


def test_every_bearer_endpoint_refuses_missing_or_garbage_tokens(client):
    for method, path in (("get", ME), ("post", REFRESH), ("post", LOGOUT)):
        for authorization in (None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer a.b.c"):
            headers = {} if authorization is None else {"Authorization": authorization}
            response = getattr(client, method)(path, headers=headers)
            assert_unauthorized(response, case=(path, authorization))


# ---- logout ---------------------------------------------------------------------------------


def test_logout_revokes_only_that_login(client, session, factory, caseworker):
    first = factory.login(caseworker)
    second = factory.login(caseworker)

    response = client.post(LOGOUT, headers=bearer(first["access_token"]))
    assert response.status_code == 204
    assert response.get_data() == b""

    assert_unauthorized(client.get(ME, headers=bearer(first["access_token"])))
    assert_unauthorized(refresh_with(client, first["refresh_token"]))
    assert_unauthorized(client.post(LOGOUT, headers=bearer(first["access_token"])))

    assert client.get(ME, headers=bearer(second["access_token"])).status_code == 200
    assert refresh_with(client, second["refresh_token"]).status_code == 200

    first_row = session_row(session, decode(first["access_token"])["sid"])
    assert first_row.revoked_at is not None
    # A later refresh attempt with the dead token does not rewrite why the session ended.
    assert first_row.revoked_reason == "logout"
    assert session_row(session, decode(second["access_token"])["sid"]).revoked_at is None


def test_logout_requires_a_token(client):
    assert_unauthorized(client.post(LOGOUT))


def test_logout_with_refresh_token_is_refused(client, tokens):
    assert_unauthorized(client.post(LOGOUT, headers=bearer(tokens["refresh_token"])))
    assert client.get(ME, headers=bearer(tokens["access_token"])).status_code == 200


# ---- role, organisation and active status are reloaded on every request ---------------------


def test_deactivated_user_is_locked_out_on_next_request(client, session, caseworker, tokens):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    change(session, update(User).where(User.id == caseworker.id).values(active=False))
    assert_unauthorized(client.get(ME, headers=headers))
    assert_unauthorized(client.post(LOGOUT, headers=headers))
    # And cannot log in again either.
    login = client.post(LOGIN, json={"email": caseworker.email, "password": TEST_PASSWORD})
    assert_problem(login, 401)


def test_deactivated_organisation_locks_out_its_users(client, session, caseworker, tokens):
    headers = bearer(tokens["access_token"])
    assert client.get(ME, headers=headers).status_code == 200
    change(
        session,
        update(Organisation).where(Organisation.id == caseworker.org_id).values(active=False),
    )
    assert_unauthorized(client.get(ME, headers=headers))
    assert_unauthorized(refresh_with(client, tokens["refresh_token"]))


def test_reactivated_user_is_let_back_in(client, session, caseworker, tokens):
    headers = bearer(tokens["access_token"])
    change(session, update(User).where(User.id == caseworker.id).values(active=False))
    assert_unauthorized(client.get(ME, headers=headers))
    change(session, update(User).where(User.id == caseworker.id).values(active=True))
    assert client.get(ME, headers=headers).status_code == 200


def test_role_change_is_reflected_with_the_same_token(client, session, caseworker, tokens):
    headers = bearer(tokens["access_token"])
    before = client.get(ME, headers=headers).get_json()
    assert before["role"] == "caseworker"
    assert before["kind"] == "user"
    assert sorted(before["permissions"]) == sorted(
        p.value for p in permissions_for(Role.CASEWORKER)
    )

    change(session, update(User).where(User.id == caseworker.id).values(role=Role.ORG_ADMIN))
    after = client.get(ME, headers=headers).get_json()
    assert after["role"] == "org_admin"
    assert sorted(after["permissions"]) == sorted(p.value for p in permissions_for(Role.ORG_ADMIN))
    assert "case:read" not in after["permissions"]


def test_organisation_move_is_reflected_with_the_same_token(
    client, session, factory, caseworker, tokens
):
    other_org = factory.org(OrgType.SHELTER)
    change(session, update(User).where(User.id == caseworker.id).values(org_id=other_org))
    body = client.get(ME, headers=bearer(tokens["access_token"])).get_json()
    assert body["organisation"]["id"] == str(other_org)
    assert body["organisation"]["org_type"] == "shelter"


def test_me_answers_role_and_organisation_from_the_database(client, caseworker, tokens):
    response = client.get(ME, headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["id"] == str(caseworker.id)
    assert body["email"] == caseworker.email
    assert body["organisation"]["id"] == str(caseworker.org_id)
    assert body["acting_officer"] is None


# ---- client credentials ---------------------------------------------------------------------


@pytest.fixture
def police_org(factory: Any) -> uuid.UUID:
    return factory.org(OrgType.POLICE)  # type: ignore[no-any-return]


@pytest.fixture
def police_client(factory: Any, police_org: uuid.UUID) -> tuple[str, str]:
    return factory.client_credentials(Role.POLICE_OFFICER, police_org)  # type: ignore[no-any-return]


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def assert_client_token(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in"}  # no refresh token
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 900
    return body  # type: ignore[no-any-return]


def test_client_credentials_as_json(client, session, police_client, police_org):
    client_id, secret = police_client
    body = assert_client_token(
        client.post(
            TOKEN,
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    )
    claims = decode(body["access_token"])
    assert_identity_only(claims)
    ((client_pk,),) = rows(session, select(ApiClient.id).where(ApiClient.client_id == client_id))
    assert claims["sub"] == f"client:{client_pk}"
    stored = session_row(session, claims["sid"])
    assert stored.client_id == client_pk
    assert stored.user_id is None
    assert rows(session, select(func.count()).select_from(RefreshToken)) == [(0,)]

    me = client.get(ME, headers=bearer(body["access_token"]))
    assert me.status_code == 200
    me_body = me.get_json()
    assert me_body["kind"] == "client"
    assert me_body["id"] == str(client_pk)
    assert me_body["role"] == "police_officer"
    assert me_body["organisation"]["id"] == str(police_org)
    assert me_body["organisation"]["org_type"] == "police"
    assert me_body["email"] is None
    assert me_body["acting_officer"] is None


def test_client_credentials_form_encoded(client, police_client):
    client_id, secret = police_client
    body = assert_client_token(
        client.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    )
    assert client.get(ME, headers=bearer(body["access_token"])).get_json()["kind"] == "client"


def test_client_credentials_with_http_basic(client, police_client):
    client_id, secret = police_client
    body = assert_client_token(
        client.post(
            TOKEN, data={"grant_type": "client_credentials"}, headers=basic(client_id, secret)
        )
    )
    assert client.get(ME, headers=bearer(body["access_token"])).status_code == 200


@pytest.mark.parametrize("how", ["json", "form", "basic"])
def test_client_credentials_wrong_secret(client, session, police_client, how):
    client_id, secret = police_client
    wrong = secret[:-4] + "abcd" if not secret.endswith("abcd") else secret[:-4] + "wxyz"
    grant = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": wrong}
    if how == "json":
        response = client.post(TOKEN, json=grant)
    elif how == "form":
        response = client.post(TOKEN, data=grant)
    else:
        response = client.post(
            TOKEN, data={"grant_type": "client_credentials"}, headers=basic(client_id, wrong)
        )
    body = assert_problem(response, 401)
    assert "access_token" not in body
    # RFC 6749 §5.2: the challenge names the scheme the client authenticated with.
    expected = 'Basic realm="referral_api"' if how == "basic" else 'Bearer realm="referral_api"'
    assert response.headers["WWW-Authenticate"] == expected
    text = response.get_data(as_text=True)
    assert wrong not in text and secret not in text
    assert rows(session, select(func.count()).select_from(AuthSession)) == [(0,)]


def test_unknown_client_answers_like_a_wrong_secret(client, police_client):
    client_id, _secret = police_client
    wrong_secret = client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"},
    )
    unknown = client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": "rac_nobody", "client_secret": "x"},
    )
    first, second = assert_problem(wrong_secret, 401), assert_problem(unknown, 401)
    first.pop("instance", None)
    second.pop("instance", None)
    assert first == second


@pytest.mark.parametrize(
    "grant_type",
    [None, "", "password", "refresh_token", "authorization_code", "CLIENT_CREDENTIALS"],
)
def test_client_credentials_requires_the_right_grant_type(client, police_client, grant_type):
    client_id, secret = police_client
    grant = {"client_id": client_id, "client_secret": secret}
    if grant_type is not None:
        grant["grant_type"] = grant_type
    body = assert_problem(client.post(TOKEN, json=grant), 422)
    assert "grant_type" in json.dumps(body["errors"])
    basic_body = assert_problem(
        client.post(
            TOKEN,
            data={} if grant_type is None else {"grant_type": grant_type},
            headers=basic(client_id, secret),
        ),
        422,
    )
    assert "grant_type" in json.dumps(basic_body["errors"])


@pytest.mark.parametrize("missing", ["client_id", "client_secret"])
def test_client_credentials_missing_credentials(client, police_client, missing):
    client_id, secret = police_client
    grant = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    del grant[missing]
    body = assert_problem(client.post(TOKEN, json=grant), 422)
    assert body["errors"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        # An empty secret or id came in the header: credentials (401 with the challenge),
        # not a body field's 422 naming `json.client_id` (found by review).
        "Basic " + base64.b64encode(b"rac_someclient:").decode(),
        "Basic " + base64.b64encode(b":a-secret").decode(),
        "Basic " + base64.b64encode(b":").decode(),
        # A byte past ASCII in the header (read as Latin-1) was a 500 (found by review).
        "Basic \u00e9\u00e9\u00e9\u00e9",
        "Basic YWJj\u00e9",
        "basic \u00ff",
    ],
)
def test_malformed_basic_credentials(client, authorization):
    response = client.post(
        TOKEN, data={"grant_type": "client_credentials"}, headers={"Authorization": authorization}
    )
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Basic realm="referral_api"'


def test_credentials_sent_both_as_basic_and_in_the_body_are_refused(client, police_client):
    """RFC 6749 §2.3.1: one authentication method per request. Basic won silently, and a
    body naming other (or wrong) credentials was neither checked nor counted (found by
    review). A 422 naming the body's fields; nothing is issued."""
    client_id, secret = police_client
    basic = {
        "Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    }
    for extra in ({"client_secret": "something-else"}, {"client_id": client_id}):
        response = client.post(
            TOKEN, data={"grant_type": "client_credentials", **extra}, headers=basic
        )
        body = assert_problem(response, 422)
        assert set(body["errors"]["json_or_form"]) == set(extra)
        assert "access_token" not in response.get_data(as_text=True)
    assert_client_token(
        client.post(TOKEN, data={"grant_type": "client_credentials"}, headers=basic)
    )


def test_client_token_cannot_be_refreshed(client, police_client):
    client_id, secret = police_client
    body = assert_client_token(
        client.post(
            TOKEN,
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
    )
    assert_unauthorized(refresh_with(client, body["access_token"]))


def client_access_token(client: Any, client_id: str, secret: str) -> str:
    response = client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    return assert_client_token(response)["access_token"]  # type: ignore[no-any-return]


def test_acting_officer_is_echoed_for_clients(client, police_client):
    token = client_access_token(client, *police_client)
    response = client.get(ME, headers={**bearer(token), "X-Acting-Officer": "Sgt. K. Ivanenko"})
    assert response.status_code == 200
    assert response.get_json()["acting_officer"] == "Sgt. K. Ivanenko"
    # Per request: not remembered for the next one.
    assert client.get(ME, headers=bearer(token)).get_json()["acting_officer"] is None


def test_acting_officer_is_ignored_for_users(client, tokens):
    response = client.get(
        ME, headers={**bearer(tokens["access_token"]), "X-Acting-Officer": "Sgt. Somebody"}
    )
    assert response.status_code == 200
    assert response.get_json()["acting_officer"] is None


@pytest.mark.parametrize("officer", ["", "x" * 129, "<script>", "a\tb", "name; drop"])
def test_malformed_acting_officer_is_refused(client, police_client, officer):
    token = client_access_token(client, *police_client)
    response = client.get(ME, headers={**bearer(token), "X-Acting-Officer": officer})
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/problem+json"
    assert "acting_officer" not in response.get_json()


def test_inactive_client_gets_no_token_and_its_tokens_stop_working(client, session, police_client):
    client_id, secret = police_client
    token = client_access_token(client, client_id, secret)
    assert client.get(ME, headers=bearer(token)).status_code == 200

    change(session, update(ApiClient).where(ApiClient.client_id == client_id).values(active=False))
    assert_unauthorized(client.get(ME, headers=bearer(token)))
    response = client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert_problem(response, 401)


def test_client_of_inactive_organisation_is_refused(client, session, police_client, police_org):
    token = client_access_token(client, *police_client)
    change(session, update(Organisation).where(Organisation.id == police_org).values(active=False))
    assert_unauthorized(client.get(ME, headers=bearer(token)))
    client_id, secret = police_client
    response = client.post(
        TOKEN,
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert_problem(response, 401)


def test_client_role_change_is_reflected_with_the_same_token(client, session, police_client):
    client_id, secret = police_client
    token = client_access_token(client, client_id, secret)
    change(
        session,
        update(ApiClient).where(ApiClient.client_id == client_id).values(role=Role.CASEWORKER),
    )
    assert client.get(ME, headers=bearer(token)).get_json()["role"] == "caseworker"


def test_client_logout_revokes_its_token(client, session, police_client):
    token = client_access_token(client, *police_client)
    assert client.post(LOGOUT, headers=bearer(token)).status_code == 204
    assert_unauthorized(client.get(ME, headers=bearer(token)))
    assert session_row(session, decode(token)["sid"]).revoked_reason == "logout"


def test_client_session_cannot_be_borrowed_as_a_user(client, session, police_client, tokens):
    # A client's live session named with the `user:` kind, by the client's own id or by a
    # user's: the session belongs to the client alone, so neither is anyone.
    token = client_access_token(client, *police_client)
    client_claims = decode(token)
    client_pk = client_claims["sub"].partition(":")[2]
    user_sub = decode(tokens["access_token"])["sub"]
    for sub in (f"user:{client_pk}", user_sub):
        forged = sign({**client_claims, "sub": sub})
        assert_unauthorized(client.get(ME, headers=bearer(forged)), case=sub)
    assert client.get(ME, headers=bearer(token)).status_code == 200


# ---- ended logins are not kept for ever -----------------------------------------------------


def test_retention_apply_deletes_logins_ended_over_30_days_ago(
    client, session, factory, runner
) -> None:
    """Every login and refresh adds a row; without a purge the tables were a permanent
    history of who signed in when. Logins that ended (expired or revoked) over 30 days ago
    go with their refresh tokens; a live login keeps its used tokens (a second use of one
    is how a copy is caught), and a recently ended one stays."""
    expired, revoked, recent, live = (factory.login(factory.user(Role.CASEWORKER)) for _ in "1234")
    sids = {
        name: decode(t["access_token"])["sid"]
        for name, t in zip(
            ("expired", "revoked", "recent", "live"), (expired, revoked, recent, live), strict=True
        )
    }
    ok_refresh = refresh_with(client, live["refresh_token"])
    assert ok_refresh.status_code == 200, ok_refresh.get_json()
    long_ago = datetime.now(UTC) - timedelta(days=31)
    change(
        session,
        update(AuthSession)
        .where(AuthSession.id == uuid.UUID(sids["expired"]))
        .values(created_at=long_ago - timedelta(hours=12), expires_at=long_ago),
    )
    change(
        session,
        update(AuthSession)
        .where(AuthSession.id == uuid.UUID(sids["revoked"]))
        .values(revoked_at=long_ago, revoked_reason="logout"),
    )
    change(
        session,
        update(AuthSession)
        .where(AuthSession.id == uuid.UUID(sids["recent"]))
        .values(revoked_at=datetime.now(UTC) - timedelta(days=29), revoked_reason="logout"),
    )

    applied = runner.invoke(args=["retention", "run", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert "2 logins ended over 30 days ago deleted, with 2 refresh tokens" in applied.output
    left = {str(r.id) for r in rows(session, select(AuthSession.id))}
    assert left == {sids["recent"], sids["live"]}
    by_session = dict(
        rows(
            session,
            select(RefreshToken.session_id, func.count()).group_by(RefreshToken.session_id),
        )
    )
    assert {str(k): v for k, v in by_session.items()} == {sids["recent"]: 1, sids["live"]: 2}
    from referral_api.audit.models import AuditEvent

    (purge,) = rows(
        session,
        select(AuditEvent.details).where(AuditEvent.action == "auth:session-purge"),
    )
    assert json.loads(purge.details) == {"sessions": 2, "refresh_tokens": 2}
    # The live login goes on; the used token of its first refresh is still caught.
    assert refresh_with(client, live["refresh_token"]).status_code == 401


def test_0017_keeps_refresh_tokens_issued_before_it_working_by_their_digest(
    app, client, session, factory
) -> None:
    """A refresh token the code before 0017 issued (its id stored as presented) still
    refreshes after the upgrade, which replaces the stored id by its digest."""
    from alembic import command

    from referral_api.extensions import db
    from referral_api.migrate import alembic_config, current_revision, head_revision, upgrade

    tokens = factory.login(factory.user(Role.CASEWORKER))
    claims = decode(tokens["refresh_token"])
    url = app.config["DATABASE_URL"]
    engine = db.engine_for(app)
    session.close()
    engine.dispose()
    try:
        command.downgrade(alembic_config(url), "0016")
        assert current_revision(engine) == "0016"
        with engine.begin() as connection:
            # The downgrade deleted the refresh tokens; the one the old code had issued:
            connection.execute(
                RefreshToken.__table__.insert().values(
                    jti=claims["jti"],
                    session_id=uuid.UUID(claims["sid"]),
                    issued_at=datetime.now(UTC),
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                )
            )
        engine.dispose()
    finally:
        upgrade(url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        kept = connection.execute(select(RefreshToken.__table__.c.jti)).scalars().all()
    engine.dispose()
    assert kept == [stored_jti(claims["jti"])]
    assert refresh_with(client, tokens["refresh_token"]).status_code == 200
