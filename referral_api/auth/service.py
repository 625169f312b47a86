"""Login, token rotation, logout, client credentials and per-request actor loading.

No Flask here: callers pass the session, the hasher and the clock. Functions never commit;
where a failure must still be recorded (a failed login, a detected token replay), the
caller commits before answering.

Refused sign-ins and a replayed refresh token are security events: each writes an audit row
(`record_refusal`) in the transaction that counts the failure, for the data-protection
officer's `sign-in-failures` report. The row names the account tried when there is one and
its organisation; never the e-mail address or client id typed, the password, or the
caller's address (the request id leads to the access log).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Select, bindparam, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor, ActorKind
from referral_api.audit import service as audit
from referral_api.auth.models import (
    ApiClient,
    AuthSession,
    LoginThrottle,
    Organisation,
    RefreshToken,
    User,
)
from referral_api.auth.passwords import CredentialHasher
from referral_api.crypto.keys import remember_stored_versions, stored_versions_columns
from referral_api.crypto.server_keys import keyed_digest
from referral_api.exceptions import (
    AuthenticationFailed,
    PasswordChangeRequired,
    TooManyAttempts,
)

INVALID_CREDENTIALS = "Invalid credentials."

# Audit actions of the security events (docs/audit.md).
SIGN_IN = "auth:sign-in"
CLIENT_SIGN_IN = "auth:client-token"
REFRESH = "auth:refresh"
# A signed, unexpired access token whose session no longer opens (revoked, the account or
# organisation switched off): a revoked client still trying is on the record.
TOKEN_REFUSED = "auth:token-refused"  # noqa: S105 - an action name
SECURITY_EVENT_ACTIONS = (SIGN_IN, CLIENT_SIGN_IN, REFRESH, TOKEN_REFUSED)
# Why a sign-in was refused (the audit row's reason; the caller always gets the same 401).
UNKNOWN_ACCOUNT = "unknown-account"
WRONG_SECRET = "wrong-secret"  # noqa: S105 - a reason code (password or client secret)
ACCOUNT_INACTIVE = "account-inactive"
ORGANISATION_INACTIVE = "organisation-inactive"
# The right password, set by an administrator, presented without a new one (403, not 401).
PASSWORD_CHANGE_REQUIRED = "password-change-required"  # noqa: S105 - a reason code
REFRESH_TOKEN_REUSE = "refresh-token-reuse"  # noqa: S105 - a reason code
# A user's own password change, at sign-in (an `allow` row, the user as actor).
PASSWORD_CHANGE = "auth:password-change"  # noqa: S105 - an action name
# Why a signed access token no longer opens its session (TOKEN_REFUSED; also the two above).
UNKNOWN_SESSION = "unknown-session"
SESSION_REVOKED = "session-revoked"
SESSION_EXPIRED = "session-expired"
REFUSAL_REASONS = (
    UNKNOWN_ACCOUNT,
    WRONG_SECRET,
    ACCOUNT_INACTIVE,
    ORGANISATION_INACTIVE,
    PASSWORD_CHANGE_REQUIRED,
    REFRESH_TOKEN_REUSE,
    UNKNOWN_SESSION,
    SESSION_REVOKED,
    SESSION_EXPIRED,
)


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_failures_per_account: int
    max_failures_per_address: int
    window: timedelta
    lockout: timedelta


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """What the HTTP layer needs to mint tokens: identity, session id, refresh jti."""

    subject: str
    session_id: uuid.UUID
    refresh_jti: str | None


def _throttle_key(kind: str, value: str) -> str:
    """A throttle row's key: the kind and a keyed digest of the account name typed or the
    caller's address (an unkeyed SHA-256 of an IPv4 address, or of a guessed e-mail, was
    reversible from a copy of the database; crypto.server_keys)."""
    return f"{kind}:{keyed_digest(b'login throttle v1', kind.encode(), value.encode())}"


def _address_throttle_key(address: str) -> str:
    """The throttle key of a client address, counted per host: an IPv6 host holds a whole
    /64 and sent each guess from a new address in it, past the per-address limit (found by
    review); an IPv4 address mapped into IPv6 is the IPv4 address."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return _throttle_key("addr", address)  # not an address ("unknown"): as given
    if isinstance(parsed, ipaddress.IPv6Address):
        mapped = parsed.ipv4_mapped
        host = (
            str(mapped)
            if mapped is not None
            else str(ipaddress.IPv6Network((parsed, 64), strict=False))
        )
        return _throttle_key("addr", host)
    return _throttle_key("addr", str(parsed))


def _check_not_locked(session: Session, keys: list[str], now: datetime) -> None:
    rows = session.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys))).all()
    waits = [
        (row.locked_until - now).total_seconds()
        for row in rows
        if row.locked_until is not None and row.locked_until > now
    ]
    if waits:
        raise TooManyAttempts(retry_after=int(max(waits)) + 1)


def _hold_and_check(session: Session, held: str, keys: list[str], now: datetime) -> None:
    """Take the sign-in attempts of one account name (`held`: its throttle key) one at a
    time, then refuse if any of `keys` is locked. The account's counter row is created if
    missing (no failure counted: `_record_failure` starts a new window on it) and locked
    until this sign-in commits, so its verdict and its failure, if any, are counted before
    the next attempt on the name is checked: guesses sent at once no longer all pass one
    check made before any was counted (each worker verifying one past the limit, a right
    guess among them signing in although the account was locked meanwhile)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = LoginThrottle.__table__
    session.execute(
        insert(table)
        .values(key=held, failures=0, window_started_at=now, locked_until=None)
        .on_conflict_do_nothing(index_elements=[table.c.key])
    )
    session.execute(select(table.c.key).where(table.c.key == held).with_for_update())
    _check_not_locked(session, keys, now)


def _record_failure(
    session: Session, key: str, limit: int, policy: ThrottlePolicy, now: datetime
) -> bool:
    """Count one failure atomically (an upsert), locking the key once it reaches the limit.
    True when this failure locked it."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = LoginThrottle.__table__
    # A counter at 0 (cleared by a sign-in, or made by `_hold_and_check`) starts a window.
    window_expired = or_(table.c.window_started_at < now - policy.window, table.c.failures == 0)
    stmt = insert(table).values(key=key, failures=1, window_started_at=now, locked_until=None)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "failures": case((window_expired, 1), else_=table.c.failures + 1),
            "window_started_at": case((window_expired, now), else_=table.c.window_started_at),
        },
    )
    session.execute(stmt)
    locked = session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key == key, LoginThrottle.failures >= limit)
        .values(locked_until=now + policy.lockout)
        .execution_options(synchronize_session=False)
    )
    return cast(CursorResult[Any], locked).rowcount == 1


def _record_failures(
    session: Session,
    policy: ThrottlePolicy,
    now: datetime,
    *,
    account_key: str,
    address_key: str,
) -> dict[str, Any] | None:
    """Count a failed sign-in against the account name tried and the caller's address; the
    audit details of the locks it started, if any."""
    locked = [
        name
        for name, key, limit in (
            ("account", account_key, policy.max_failures_per_account),
            ("address", address_key, policy.max_failures_per_address),
        )
        if _record_failure(session, key, limit, policy, now)
    ]
    if not locked:
        return None
    return {"locked": locked, "lockout_seconds": int(policy.lockout.total_seconds())}


def record_refusal(
    session: Session,
    action: str,
    *,
    reason: str,
    account: User | ApiClient | None,
    request_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """The audit row of a refused sign-in or a replayed refresh token, in the caller's
    transaction. The actor is anonymous (whoever tried is not known); the row names the
    account tried (resource `user` or `client`, none when no account has that name) and,
    in the actor's organisation column, that account's organisation, so that the
    organisation's data-protection officer sees attempts on its accounts."""
    resource_type = "client" if action == CLIENT_SIGN_IN else "user"
    # Anonymous, but counted against the organisation of the account named.
    claimed = replace(
        Actor.anonymous(),
        org_id=account.org_id if account is not None else None,
        request_id=request_id,
    )
    values = audit.row(
        claimed,
        action,
        resource_type=resource_type,
        resource_id=account.id if account is not None else None,
        decision=audit.DENY,
        reason=reason,
        details=details,
    )
    audit.insert_rows(session, [values])
    audit.mark_written(session)


def _refused(
    session: Session,
    action: str,
    reason: str | None,
    account: User | ApiClient | None,
    policy: ThrottlePolicy,
    now: datetime,
    keys: tuple[str, str],
    request_id: str | None,
) -> AuthenticationFailed:
    """A refused sign-in: counted against the name tried and the address (`keys`), audited,
    and the one answer every refusal gets."""
    account_key, address_key = keys
    locks = _record_failures(session, policy, now, account_key=account_key, address_key=address_key)
    record_refusal(
        session,
        action,
        reason=reason or UNKNOWN_ACCOUNT,
        account=account,
        request_id=request_id,
        details=locks,
    )
    return AuthenticationFailed(INVALID_CREDENTIALS)


def _refusal_reason(account: User | ApiClient | None, secret_ok: bool) -> str | None:
    """Why these credentials do not sign in (None: they do)."""
    if account is None:
        return UNKNOWN_ACCOUNT
    if not secret_ok:
        return WRONG_SECRET
    if not account.active:
        return ACCOUNT_INACTIVE
    if not account.organisation.active:
        return ORGANISATION_INACTIVE
    return None


def _clear_failures(session: Session, key: str) -> None:
    session.execute(
        update(LoginThrottle)
        .where(LoginThrottle.key == key)
        .values(failures=0, locked_until=None)
        .execution_options(synchronize_session=False)
    )


def purge_stale_throttles(session: Session, window: timedelta, now: datetime) -> int:
    """Delete failure counters that can no longer lock anyone: their window has passed and
    they hold no lock that is still running. A later failure for the same key starts a new
    counter either way, so nothing about throttling changes; what goes is the record that
    someone (a hashed account name or address) failed to sign in, once it is no use."""
    result = session.execute(
        delete(LoginThrottle)
        .where(
            LoginThrottle.window_started_at < now - window,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until <= now),
        )
        .execution_options(synchronize_session=False)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


# How long an ended login (expired or revoked) is kept: long enough to read a refused token's
# audit row beside it, not a permanent history of who signed in when.
ENDED_SESSIONS_KEPT = timedelta(days=30)


def purge_ended_sessions(session: Session, actor: Actor, now: datetime) -> tuple[int, int]:
    """Delete the logins that ended (expired or revoked) more than ENDED_SESSIONS_KEPT ago
    and their refresh tokens: (sessions, refresh tokens) deleted, audited when there were
    any (`auth:session-purge`, counts only). A live login's used refresh tokens stay: a
    second use of one is how a copied token is caught (the whole login is revoked)."""
    cutoff = now - ENDED_SESSIONS_KEPT
    ended = select(AuthSession.id).where(
        or_(AuthSession.expires_at < cutoff, AuthSession.revoked_at < cutoff)
    )
    tokens = session.execute(
        delete(RefreshToken)
        .where(RefreshToken.session_id.in_(ended))
        .execution_options(synchronize_session=False)
    )
    sessions = session.execute(
        delete(AuthSession)
        .where(AuthSession.id.in_(ended))
        .execution_options(synchronize_session=False)
    )
    counts = (
        int(cast(CursorResult[Any], sessions).rowcount or 0),
        int(cast(CursorResult[Any], tokens).rowcount or 0),
    )
    if counts[0]:
        audit.record(
            session,
            actor,
            "auth:session-purge",
            resource_type="session",
            details={"sessions": counts[0], "refresh_tokens": counts[1]},
        )
    return counts


def _new_session(
    session: Session,
    now: datetime,
    lifetime: timedelta,
    user: User | None = None,
    client: ApiClient | None = None,
) -> AuthSession:
    auth_session = AuthSession(
        id=uuid.uuid4(),
        user_id=user.id if user else None,
        client_id=client.id if client else None,
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(auth_session)
    return auth_session


def stored_jti(jti: str) -> str:
    """A refresh token's id as the database keeps it: its SHA-256 (hex). The id is 256 random
    bits, so the digest needs no key; a copy of the database then holds no id that could be
    signed into a working refresh token by whoever also has the signing secret."""
    return hashlib.sha256(jti.encode()).hexdigest()


def _new_refresh_token(
    session: Session, auth_session: AuthSession, now: datetime, lifetime: timedelta
) -> str:
    jti = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            jti=stored_jti(jti),
            session_id=auth_session.id,
            issued_at=now,
            expires_at=now + lifetime,
        )
    )
    return jti


def login(
    session: Session,
    hasher: CredentialHasher,
    *,
    email: str,
    password: str,
    address: str,
    policy: ThrottlePolicy,
    refresh_lifetime: timedelta,
    now: datetime,
    request_id: str | None = None,
    new_password: str | None = None,
) -> IssuedSession:
    """Check e-mail and password; on success open a session with a first refresh token.

    Unknown e-mail, wrong password, inactive user and inactive organisation all raise the
    same AuthenticationFailed after the same Argon2 work; the audit row (`record_refusal`)
    says which it was. With `new_password` the account's password is replaced first (its
    other logins end); a password an administrator set must be replaced so, or the sign-in
    is refused (PasswordChangeRequired).
    """
    email = email.strip().lower()
    account_key = _throttle_key("acct", email)
    address_key = _address_throttle_key(address)
    _hold_and_check(session, account_key, [account_key, address_key], now)

    user = session.scalars(select(User).where(User.email == email)).one_or_none()
    password_ok = hasher.verify(user.password_hash if user else None, password) and (
        user is not None and _credential_current(session, hasher, user, "password_hash", password)
    )
    reason = _refusal_reason(user, password_ok)
    if reason is not None or user is None:
        raise _refused(
            session, SIGN_IN, reason, user, policy, now, (account_key, address_key), request_id
        )

    _clear_failures(session, account_key)
    if new_password is not None:
        _change_own_password(session, hasher, user, new_password, now, request_id)
    elif user.password_change_required:
        record_refusal(
            session,
            SIGN_IN,
            reason=PASSWORD_CHANGE_REQUIRED,
            account=user,
            request_id=request_id,
        )
        raise PasswordChangeRequired(
            "This password was set by an administrator: sign in with a new_password of your "
            "own to replace it."
        )
    elif hasher.needs_rehash(user.password_hash):
        user.password_hash = hasher.hash(password)
    auth_session = _new_session(session, now, refresh_lifetime, user=user)
    jti = _new_refresh_token(session, auth_session, now, refresh_lifetime)
    return IssuedSession(subject=f"user:{user.id}", session_id=auth_session.id, refresh_jti=jti)


def _change_own_password(
    session: Session,
    hasher: CredentialHasher,
    user: User,
    new_password: str,
    now: datetime,
    request_id: str | None,
) -> None:
    """The signed-in user's own new password (the current one just verified; LoginSchema
    refused one equal to it before anything was checked): stored, the administrator's mark
    cleared, every other login of the account ended, audited."""
    required = user.password_change_required
    user.password_hash = hasher.hash(new_password)
    user.password_change_required = False
    revoke_sessions_of_user(session, user.id, reason="password_changed", now=now)
    actor = replace(
        Actor.for_principal(
            kind=ActorKind.USER,
            id=user.id,
            org_id=user.org_id,
            org_type=user.organisation.org_type,
            role=user.role,
        ),
        request_id=request_id,
    )
    audit.record(
        session,
        actor,
        PASSWORD_CHANGE,
        resource_type="user",
        resource_id=user.id,
        details={"required": required},
    )


def rotate_refresh_token(
    session: Session,
    *,
    jti: str,
    session_id: uuid.UUID,
    refresh_lifetime: timedelta,
    now: datetime,
    request_id: str | None = None,
) -> IssuedSession:
    """Exchange a refresh token once. A replayed token revokes its whole family (and is
    audited: someone else may hold a copy of the token)."""
    token = session.get(RefreshToken, stored_jti(jti))
    auth_session = session.get(AuthSession, session_id)
    if token is None or auth_session is None or token.session_id != auth_session.id:
        raise AuthenticationFailed("The refresh token is not valid.")
    if auth_session.revoked_at is not None or auth_session.expires_at <= now:
        raise AuthenticationFailed("The session has ended. Log in again.")
    # The account is checked before the token is spent: a refresh refused while the user or
    # organisation is inactive must not burn the token (presented again after a
    # reactivation, it would read as a replay: a false token-theft event).
    user = session.get(User, auth_session.user_id) if auth_session.user_id else None
    if user is None or not user.active or not user.organisation.active:
        raise AuthenticationFailed("The session has ended. Log in again.")
    # Conditional update: of two concurrent exchanges of one token, exactly one wins.
    claimed = session.execute(
        update(RefreshToken)
        .where(RefreshToken.jti == token.jti, RefreshToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        revoke_session(session, auth_session.id, reason="refresh_token_reuse", now=now)
        record_refusal(
            session,
            REFRESH,
            reason=REFRESH_TOKEN_REUSE,
            account=user,
            request_id=request_id,
            details={"session_id": str(auth_session.id)},
        )
        raise AuthenticationFailed("The refresh token was already used; the session is revoked.")
    new_jti = _new_refresh_token(session, auth_session, now, auth_session.expires_at - now)
    return IssuedSession(subject=f"user:{user.id}", session_id=auth_session.id, refresh_jti=new_jti)


def revoke_session(session: Session, session_id: uuid.UUID, *, reason: str, now: datetime) -> None:
    session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )


def revoke_sessions_of_user(
    session: Session, user_id: uuid.UUID, *, reason: str, now: datetime
) -> None:
    session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )


def client_credentials(
    session: Session,
    hasher: CredentialHasher,
    *,
    client_id: str,
    client_secret: str,
    address: str,
    policy: ThrottlePolicy,
    token_lifetime: timedelta,
    now: datetime,
    request_id: str | None = None,
) -> IssuedSession:
    """The client credentials grant: the same throttling and audit as `login`."""
    client_key = _throttle_key("client", client_id)
    address_key = _address_throttle_key(address)
    _hold_and_check(session, client_key, [client_key, address_key], now)
    client = session.scalars(
        select(ApiClient).where(ApiClient.client_id == client_id)
    ).one_or_none()
    secret_ok = hasher.verify(client.secret_hash if client else None, client_secret) and (
        client is not None
        and _credential_current(session, hasher, client, "secret_hash", client_secret)
    )
    reason = _refusal_reason(client, secret_ok)
    if reason is not None or client is None:
        raise _refused(
            session,
            CLIENT_SIGN_IN,
            reason,
            client,
            policy,
            now,
            (client_key, address_key),
            request_id,
        )
    _clear_failures(session, client_key)
    auth_session = _new_session(session, now, token_lifetime, client=client)
    return IssuedSession(
        subject=f"client:{client.id}", session_id=auth_session.id, refresh_jti=None
    )


def _credential_current(
    session: Session,
    hasher: CredentialHasher,
    principal: User | ApiClient,
    attribute: str,
    secret: str,
) -> bool:
    """Whether the secret just verified still matches the stored credential, read again and
    held (FOR NO KEY UPDATE) until this sign-in commits. A secret rotation or password
    change committed during the (slow) verification refuses the sign-in; one not committed
    yet waits for it and then revokes the session it opened. Without this, a sign-in with
    the old secret racing its rotation kept a working token (the rotation revoked the
    sessions it saw, and this one committed after). A stored hash that changed is checked
    again before refusing: another sign-in of the account may have re-hashed the same
    password (new Argon2 settings). Exclusive, not FOR SHARE: two sign-ins that both
    re-hash would each wait for the other's share lock (a deadlock); the lock is held only
    for the rest of the sign-in, after the hash check, and does not hold back inserts that
    reference the account. The account is read again whole, so that what this sign-in
    writes to it (a re-hash) goes on from the row as it now is.

    Its organisation is read again too, held FOR SHARE: a deactivation of the organisation
    committed meanwhile refuses the sign-in, and one not committed yet waits for it, then
    revokes the session it opened (it revoked only those it saw, and reactivating the
    organisation brought this one back)."""
    verified = getattr(principal, attribute)
    session.refresh(principal, with_for_update={"key_share": True, "of": type(principal)})
    session.refresh(principal.organisation, with_for_update={"read": True})
    current = getattr(principal, attribute)
    return bool(current == verified or hasher.verify(current, secret))


def _actor_statement(principal: type[User] | type[ApiClient]) -> Select[Any]:
    """The one per-request query: the session, its principal and the principal's
    organisation, as plain columns (no ORM entities to build for every request)."""
    table = principal.__table__
    sessions = AuthSession.__table__
    orgs = Organisation.__table__
    session_column = sessions.c.user_id if principal is User else sessions.c.client_id
    return (
        select(
            table.c.role,
            table.c.active,
            orgs.c.id,
            orgs.c.org_type,
            orgs.c.active,
            # What the key service would otherwise ask in a statement of its own before the
            # request's first write or search: carried here, one round trip fewer.
            *stored_versions_columns(orgs.c.id),
        )
        .select_from(table)
        .join(orgs, orgs.c.id == table.c.org_id)
        .join(sessions, session_column == table.c.id)
        .where(
            table.c.id == bindparam("principal_id"),
            sessions.c.id == bindparam("session_id"),
            sessions.c.revoked_at.is_(None),
            sessions.c.expires_at > bindparam("now"),
        )
    )


# Built once: the statement is the same for every request, only its parameters change.
_ACTOR_STATEMENTS: dict[str, Select[Any]] = {
    ActorKind.USER.value: _actor_statement(User),
    ActorKind.CLIENT.value: _actor_statement(ApiClient),
}


def load_actor(
    session: Session, *, subject: str, session_id: uuid.UUID, now: datetime
) -> Actor | None:
    """Rebuild the actor from the database: role, organisation and active flags as of now.

    Returns None when the session was revoked or expired, or when the principal or its
    organisation is gone or inactive; the caller answers 401. Runs on the request's own
    connection and transaction, so a revocation committed before it is always seen.
    """
    kind, _, raw_id = subject.partition(":")
    statement = _ACTOR_STATEMENTS.get(kind)
    if statement is None:
        return None
    try:
        principal_id = uuid.UUID(raw_id)
    except ValueError:
        return None
    row = (
        session.connection()
        .execute(statement, {"principal_id": principal_id, "session_id": session_id, "now": now})
        .one_or_none()
    )
    if row is None:
        return None
    role, principal_active, org_id, org_type, org_active, org_key_version, index_keys = row
    if not (principal_active and org_active):
        return None
    remember_stored_versions(session, org_id, org_key_version, index_keys)
    return Actor.for_principal(
        kind=ActorKind(kind),
        id=principal_id,
        org_id=org_id,
        org_type=org_type,
        role=role,
        session_id=session_id,
    )


class _RecentlyRecorded:
    """Keys seen within the last `window` seconds, at most `capacity` of them (the oldest
    forgotten first), in this process."""

    def __init__(self, window: float, capacity: int) -> None:
        self.window, self.capacity = window, capacity
        self._seen: OrderedDict[Any, float] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: Any) -> bool:
        """True when `key` was not seen within the window (and remember it now)."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen < self.window:
                return False
            self._seen[key] = now
            self._seen.move_to_end(key)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True


# A revoked token is refused on every call, but recorded once a minute per login and
# worker process: a client retrying in a loop on 401 cannot fill the audit log (refused
# sign-ins are bounded by their throttle; a token lives 15 minutes at most).
STALE_TOKEN_RECORDS = _RecentlyRecorded(window=60.0, capacity=10_000)


def stale_token_refusal(
    session: Session, *, subject: str, session_id: uuid.UUID, now: datetime
) -> tuple[Actor, dict[str, Any]]:
    """Why a token whose signature holds no longer opens its session (`load_actor` gave
    None), as the refusal's audit entry and the actor to record it under: anonymous, as a
    refused sign-in's, but counted against the account's organisation so that its DPO sees
    a revoked client or user still trying (`record_refusal`)."""
    kind, _, raw_id = subject.partition(":")
    principal: User | ApiClient | None = None
    try:
        if kind == "user":
            principal = session.get(User, uuid.UUID(raw_id))
        elif kind == "client":
            principal = session.get(ApiClient, uuid.UUID(raw_id))
    except ValueError:
        pass
    auth = session.get(AuthSession, session_id)
    owner = None if auth is None else (auth.user_id if kind == "user" else auth.client_id)
    details: dict[str, Any] = {"session_id": str(session_id)}
    if principal is None:
        reason = UNKNOWN_ACCOUNT
    elif auth is None or owner != principal.id:
        reason = UNKNOWN_SESSION
    elif auth.revoked_at is not None:
        reason = SESSION_REVOKED
        details["revoked_reason"] = auth.revoked_reason
    elif auth.expires_at <= now:
        reason = SESSION_EXPIRED
    elif not principal.active:
        reason = ACCOUNT_INACTIVE
    else:
        reason = ORGANISATION_INACTIVE
    claimed = replace(Actor.anonymous(), org_id=principal.org_id if principal else None)
    entry = {
        "action": TOKEN_REFUSED,
        "resource_type": "client" if kind == "client" else "user",
        "resource_id": principal.id if principal is not None else None,
        "decision": audit.DENY,
        "reason": reason,
        "details": details,
    }
    return claimed, entry


def revoke_sessions_of_organisation(
    session: Session, org_id: uuid.UUID, *, reason: str, now: datetime
) -> None:
    """Every open session of the organisation's users and API clients, in one statement."""
    session.execute(
        update(AuthSession)
        .where(
            AuthSession.revoked_at.is_(None),
            or_(
                AuthSession.user_id.in_(select(User.id).where(User.org_id == org_id)),
                AuthSession.client_id.in_(select(ApiClient.id).where(ApiClient.org_id == org_id)),
            ),
        )
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )


def revoke_sessions_of_client(
    session: Session, client_pk: uuid.UUID, *, reason: str, now: datetime
) -> None:
    session.execute(
        update(AuthSession)
        .where(AuthSession.client_id == client_pk, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
