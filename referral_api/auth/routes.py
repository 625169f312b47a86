"""Login, token refresh and logout, client credentials, and the caller's own identity."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g, request
from flask_jwt_extended import (
    create_access_token,
    create_refresh_token,
    get_jwt,
    verify_jwt_in_request,
)

from referral_api.access.actor import ActorKind
from referral_api.access.permissions import Permission
from referral_api.auth import service
from referral_api.auth.models import ApiClient, User
from referral_api.auth.schemas import ClientCredentialsSchema, LoginSchema, MeSchema, TokenSchema
from referral_api.exceptions import (
    AuthenticationFailed,
    PasswordChangeRequired,
    ReferralApiError,
    ValidationFailed,
)
from referral_api.extensions import db, hasher
from referral_api.smorest import Blueprint, current_actor

blp = Blueprint("auth", __name__, url_prefix="/api/v1", description="Authentication")


def _throttle_policy() -> service.ThrottlePolicy:
    from datetime import timedelta

    config = current_app.config
    return service.ThrottlePolicy(
        max_failures_per_account=config["LOGIN_MAX_FAILURES_PER_ACCOUNT"],
        max_failures_per_address=config["LOGIN_MAX_FAILURES_PER_ADDRESS"],
        window=timedelta(seconds=config["LOGIN_FAILURE_WINDOW_SECONDS"]),
        lockout=timedelta(seconds=config["LOGIN_LOCKOUT_SECONDS"]),
    )


def _tokens(issued: service.IssuedSession) -> dict[str, Any]:
    claims = {"sid": str(issued.session_id)}
    body: dict[str, Any] = {
        "access_token": create_access_token(identity=issued.subject, additional_claims=claims),
        "token_type": "Bearer",
        "expires_in": int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
    }
    if issued.refresh_jti:
        body["refresh_token"] = create_refresh_token(
            identity=issued.subject, additional_claims={**claims, "jti": issued.refresh_jti}
        )
    return body


def _commit_then_raise(error: ReferralApiError) -> None:
    # Failed attempts and replay revocations must be stored although the request fails.
    db.session.commit()
    raise error


@blp.route("/auth/login", methods=["POST"])
@blp.public
@blp.repeatable(
    "tokens are never stored, so a login cannot be replayed. A repeat is another login with "
    "tokens of its own; a login whose answer was lost is never used and lapses when its "
    "refresh token expires. A login with new_password is the exception: once it has changed "
    "the password, its repeat presents the old one (401, a failed sign-in); retry with the "
    "new password instead."
)
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
@blp.alt_response(403, response="FORBIDDEN")
@blp.alt_response(429, response="TOO_MANY_REQUESTS")
def login(credentials: dict[str, str]) -> dict[str, Any]:
    """Log in with e-mail and password

    Returns a short-lived access token and a rotating refresh token. Unknown e-mail and wrong
    password get the same answer; repeated failures are throttled per account and address.
    With `new_password` the password is replaced at this sign-in (every other login of the
    account ends); a password an administrator set must be replaced so at the first sign-in
    (without it: 403 `/problems/password-change-required`).
    """
    try:
        issued = service.login(
            db.session,
            hasher,
            email=credentials["email"],
            password=credentials["password"],
            new_password=credentials.get("new_password"),
            address=request.remote_addr or "unknown",
            policy=_throttle_policy(),
            refresh_lifetime=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"],
            now=datetime.now(UTC),
            request_id=g.get("request_id"),
        )
    except (AuthenticationFailed, PasswordChangeRequired) as error:
        _commit_then_raise(error)
    db.session.commit()
    return _tokens(issued)


@blp.route("/auth/refresh", methods=["POST"])
@blp.public
@blp.repeatable(
    "tokens are never stored, so a refresh cannot be replayed, and nothing is issued twice: "
    "a repeat presents a refresh token already used, which revokes every token of that "
    "login (reuse detection). After a lost answer, log in again."
)
@blp.response(200, TokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
@blp.doc(security=[{"bearerAuth": []}])
def refresh() -> dict[str, Any]:
    """Exchange a refresh token for a new token pair

    Send the refresh token as the bearer token. Each refresh token works once; presenting a
    used one revokes every token of that login.
    """
    verify_jwt_in_request(refresh=True)
    claims = get_jwt()
    try:
        session_id = uuid.UUID(str(claims.get("sid")))
    except ValueError:
        raise AuthenticationFailed("The refresh token is not valid.") from None
    try:
        issued = service.rotate_refresh_token(
            db.session,
            jti=str(claims["jti"]),
            session_id=session_id,
            refresh_lifetime=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"],
            now=datetime.now(UTC),
            request_id=g.get("request_id"),
        )
    except AuthenticationFailed as error:
        _commit_then_raise(error)
    db.session.commit()
    return _tokens(issued)


@blp.route("/auth/logout", methods=["POST"])
@blp.requires(Permission.SELF_READ)
@blp.repeatable("the login is revoked once; a repeat's token no longer works (401).")
@blp.response(204)
def logout() -> None:
    """Log out: revoke every token of this login"""
    actor = current_actor()
    assert actor.session_id is not None  # noqa: S101 - authenticate_request always sets it
    service.revoke_session(db.session, actor.session_id, reason="logout", now=datetime.now(UTC))
    db.session.commit()


_BASIC_CHALLENGE = 'Basic realm="referral_api"'


def _basic_failure(detail: str) -> AuthenticationFailed:
    error = AuthenticationFailed(detail)
    error.challenge = _BASIC_CHALLENGE
    return error


def _basic_client_credentials() -> tuple[str, str] | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":  # the scheme is case-insensitive (RFC 9110 §11.1)
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        # ValueError: a header byte past ASCII (read as Latin-1) in the base64 (a 500).
        raise _basic_failure("Malformed Basic credentials.") from None
    client_id, sep, secret = decoded.partition(":")
    # U+0000: no client id or secret has it. An empty id or secret is as malformed: it came
    # in the header, so it is answered as credentials (401 with the challenge), not as a
    # body field.
    if not sep or not client_id or not secret or "\x00" in decoded:
        raise _basic_failure("Malformed Basic credentials.")
    return client_id, secret


@blp.route("/auth/token", methods=["POST"])
@blp.public
@blp.repeatable(
    "tokens are never stored, so a token request cannot be replayed. A repeat issues another "
    "short-lived access token (no refresh token); one whose answer was lost expires unused."
)
@blp.arguments(ClientCredentialsSchema, location="json_or_form")
@blp.response(200, TokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
@blp.alt_response(429, response="TOO_MANY_REQUESTS")
def client_token(grant: dict[str, str]) -> dict[str, Any]:
    """Get an access token with client credentials (machine clients)

    OAuth 2.0 client credentials grant: `grant_type=client_credentials` with `client_id`
    and `client_secret` in the body (JSON or form-encoded) or as HTTP Basic credentials.
    No refresh token is issued; ask again when the access token expires.
    """
    basic = _basic_client_credentials()
    if basic and ("client_id" in grant or "client_secret" in grant):
        # RFC 6749 §2.3.1: one authentication method per request. Basic won silently, and
        # the body's (possibly other) credentials were neither checked nor counted.
        raise ValidationFailed(
            {
                name: ["Send the credentials once: as HTTP Basic or in the body, not both."]
                for name in ("client_id", "client_secret")
                if name in grant
            },
            location="json_or_form",
        )
    client_id, secret = basic or (grant.get("client_id"), grant.get("client_secret"))
    if not client_id or not secret:
        raise ValidationFailed({"client_id": ["client_id and client_secret are required."]})
    try:
        issued = service.client_credentials(
            db.session,
            hasher,
            client_id=client_id,
            client_secret=secret,
            address=request.remote_addr or "unknown",
            policy=_throttle_policy(),
            token_lifetime=current_app.config["JWT_ACCESS_TOKEN_EXPIRES"],
            now=datetime.now(UTC),
            request_id=g.get("request_id"),
        )
    except AuthenticationFailed as error:
        if basic:
            error.challenge = _BASIC_CHALLENGE
        _commit_then_raise(error)
    db.session.commit()
    return _tokens(issued)


@blp.route("/me", methods=["GET"])
@blp.requires(Permission.SELF_READ)
@blp.response(200, MeSchema)
def me() -> dict[str, Any]:
    """Who am I: role, organisation and permissions, as reloaded for this request"""
    actor = current_actor()
    principal: User | ApiClient | None
    if actor.kind is ActorKind.USER:
        principal = db.session.get(User, actor.id)
    else:
        principal = db.session.get(ApiClient, actor.id)
    assert principal is not None  # noqa: S101 - load_actor just found it
    return {
        "id": principal.id,
        "kind": actor.kind.value,
        "email": getattr(principal, "email", None),
        "display_name": getattr(principal, "display_name", None) or getattr(principal, "name", ""),
        "role": actor.role,
        "organisation": principal.organisation,
        "permissions": sorted(actor.permissions),
        "acting_officer": actor.acting_officer,
    }
