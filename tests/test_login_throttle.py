"""Login throttling and user enumeration: per-account and per-address lockouts with a 429
problem and Retry-After, identical answers for unknown and known e-mails, the same Argon2
work for both, and failed attempts stored although the request fails.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import argon2
import pytest
from conftest import JWT_TEST_SECRET, TEST_PASSWORD, assert_problem
from sqlalchemy import func, select, update

from referral_api.access.roles import OrgType, Role
from referral_api.auth.models import ApiClient, AuthSession, LoginThrottle, Organisation, User
from referral_api.crypto.server_keys import keyed_digest

LOGIN = "/api/v1/auth/login"
TOKEN = "/api/v1/auth/token"
ACCOUNT_LIMIT = 3
ADDRESS_LIMIT = 6
LOCKOUT_SECONDS = 120
WINDOW_SECONDS = 600


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        LOGIN_MAX_FAILURES_PER_ACCOUNT=ACCOUNT_LIMIT,
        LOGIN_MAX_FAILURES_PER_ADDRESS=ADDRESS_LIMIT,
        LOGIN_FAILURE_WINDOW_SECONDS=WINDOW_SECONDS,
        LOGIN_LOCKOUT_SECONDS=LOCKOUT_SECONDS,
    )
    return app_config


# ---- helpers --------------------------------------------------------------------------------


def account_key(email: str) -> str:
    """The account name's throttle key: a digest keyed with the test app's secret."""
    name = email.strip().lower().encode()
    return "acct:" + keyed_digest(b"login throttle v1", b"acct", name, secret=JWT_TEST_SECRET)


def address_key(address: str) -> str:
    key = keyed_digest(b"login throttle v1", b"addr", address.encode(), secret=JWT_TEST_SECRET)
    return "addr:" + key


def attempt(client: Any, email: str, password: str, address: str = "192.0.2.10") -> Any:
    return client.post(
        LOGIN,
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def throttle_row(session: Any, key: str) -> Any:
    try:
        return session.execute(
            select(
                LoginThrottle.failures,
                LoginThrottle.window_started_at,
                LoginThrottle.locked_until,
            ).where(LoginThrottle.key == key)
        ).one_or_none()
    finally:
        session.rollback()  # end the read so the app's next write is not blocked


def count_sessions(session: Any) -> int:
    try:
        return session.scalar(select(func.count()).select_from(AuthSession))  # type: ignore[no-any-return]
    finally:
        session.rollback()


def change(session: Any, stmt: Any) -> None:
    session.execute(stmt)
    session.commit()


def assert_locked(response: Any) -> dict[str, Any]:
    body = assert_problem(response, 429)
    assert body["type"] == "/problems/too-many-attempts"
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= LOCKOUT_SECONDS + 1
    assert "access_token" not in body
    return body


def comparable(response: Any) -> tuple[int, dict[str, Any], frozenset[str]]:
    """What a caller can observe, minus the per-request id."""
    body = dict(response.get_json())
    body.pop("instance", None)
    headers = frozenset(
        name
        for name in ("Retry-After", "WWW-Authenticate", "Content-Type")
        if name in response.headers
    )
    return response.status_code, body, headers


# ---- per-account lockout ---------------------------------------------------------------------


def test_account_locked_after_n_failures_even_with_correct_password(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT):
        assert_problem(attempt(client, user.email, "wrong password"), 401)

    locked = attempt(client, user.email, TEST_PASSWORD)
    body = assert_locked(locked)
    assert TEST_PASSWORD not in locked.get_data(as_text=True)
    assert body["detail"]
    assert count_sessions(session) == 0

    row = throttle_row(session, account_key(user.email))
    assert row.failures == ACCOUNT_LIMIT
    assert row.locked_until > datetime.now(UTC)
    assert row.locked_until <= datetime.now(UTC) + timedelta(seconds=LOCKOUT_SECONDS)

    # Still locked from another address: the account, not the address, is throttled.
    assert_locked(attempt(client, user.email, TEST_PASSWORD, address="198.51.100.7"))


def test_account_not_locked_below_the_limit(client, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT - 1):
        assert_problem(attempt(client, user.email, "wrong password"), 401)
    assert attempt(client, user.email, TEST_PASSWORD).status_code == 200


def test_email_case_does_not_evade_the_account_throttle(client, factory):
    user = factory.user(Role.CASEWORKER)
    variants = [user.email, user.email.upper(), user.email.title()]
    for email in variants[:ACCOUNT_LIMIT]:
        assert_problem(attempt(client, email, "wrong password"), 401)
    assert_locked(attempt(client, user.email.swapcase(), TEST_PASSWORD))


def test_a_success_resets_the_account_counter(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT - 1):
        assert_problem(attempt(client, user.email, "wrong password"), 401)
    assert attempt(client, user.email, TEST_PASSWORD).status_code == 200
    assert throttle_row(session, account_key(user.email)).failures == 0

    # Had the counter survived, the next failure would reach the limit and lock.
    for _ in range(ACCOUNT_LIMIT - 1):
        assert_problem(attempt(client, user.email, "wrong password"), 401)
    assert attempt(client, user.email, TEST_PASSWORD).status_code == 200


def test_lock_expires_after_the_lockout(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT):
        attempt(client, user.email, "wrong password")
    assert_locked(attempt(client, user.email, TEST_PASSWORD))

    change(
        session,
        update(LoginThrottle)
        .where(LoginThrottle.key == account_key(user.email))
        .values(locked_until=datetime.now(UTC) - timedelta(seconds=1)),
    )
    assert attempt(client, user.email, TEST_PASSWORD).status_code == 200
    row = throttle_row(session, account_key(user.email))
    assert row.failures == 0
    assert row.locked_until is None


def test_lock_expires_in_real_time(app, client, factory):
    lockout = 1
    app.config["LOGIN_LOCKOUT_SECONDS"] = lockout  # read per request
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT):
        attempt(client, user.email, "wrong password")
    locked = attempt(client, user.email, TEST_PASSWORD)
    assert_problem(locked, 429)
    assert 1 <= int(locked.headers["Retry-After"]) <= lockout + 1
    time.sleep(lockout + 0.2)
    assert attempt(client, user.email, TEST_PASSWORD).status_code == 200


def test_failures_outside_the_window_start_a_new_count(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT - 1):
        attempt(client, user.email, "wrong password")
    change(
        session,
        update(LoginThrottle).values(
            window_started_at=datetime.now(UTC) - timedelta(seconds=WINDOW_SECONDS + 5)
        ),
    )
    assert_problem(attempt(client, user.email, "wrong password"), 401)
    row = throttle_row(session, account_key(user.email))
    assert row.failures == 1
    assert row.locked_until is None
    assert attempt(client, user.email, TEST_PASSWORD).status_code == 200


# ---- per-address lockout ---------------------------------------------------------------------


def test_address_throttle_spans_different_emails(client, session, factory):
    attacker, bystander = "203.0.113.66", "203.0.113.67"
    for n in range(ADDRESS_LIMIT):
        # One failure per account: no account reaches its own limit.
        assert_problem(attempt(client, f"guess-{n}@example.org", "x", address=attacker), 401)

    row = throttle_row(session, address_key(attacker))
    assert row.failures == ADDRESS_LIMIT
    assert row.locked_until is not None

    user = factory.user(Role.CASEWORKER)
    assert_locked(attempt(client, user.email, TEST_PASSWORD, address=attacker))
    assert_locked(attempt(client, "another-guess@example.org", "x", address=attacker))
    # The same account from elsewhere is unaffected.
    assert attempt(client, user.email, TEST_PASSWORD, address=bystander).status_code == 200


def test_an_ipv6_host_is_counted_per_64_and_a_mapped_ipv4_as_itself(client, session, factory):
    """Found by review: an IPv6 host holds a whole /64 and sent each guess from a new
    address in it, so the per-address limit (what bounds how many accounts one address can
    lock, and its anonymous audit rows) never applied. Its /64 is one counter; another /64
    is another; an IPv4 address mapped into IPv6 counts as the IPv4 address."""
    for n in range(ADDRESS_LIMIT):
        address = f"2001:db8:1:2:{n:x}::{n + 1:x}"
        assert_problem(attempt(client, f"spray-{n}@example.org", "x", address=address), 401)
    row = throttle_row(session, address_key("2001:db8:1:2::/64"))
    assert row.failures == ADDRESS_LIMIT and row.locked_until is not None
    assert_locked(attempt(client, "spray-more@example.org", "x", address="2001:db8:1:2::ffff"))
    user = factory.user(Role.CASEWORKER)
    assert attempt(client, user.email, TEST_PASSWORD, address="2001:db8:1:3::1").status_code == 200

    for n in range(ADDRESS_LIMIT):
        attempt(client, f"mapped-{n}@example.org", "x", address="::ffff:198.51.100.7")
    assert throttle_row(session, address_key("198.51.100.7")).failures == ADDRESS_LIMIT
    assert_locked(attempt(client, "mapped-more@example.org", "x", address="198.51.100.7"))


def test_address_counter_is_not_reset_by_a_success(client, factory):
    # A valid account of one's own must not launder an address's guesses at others.
    address = "203.0.113.90"
    own = factory.user(Role.CASEWORKER)
    for n in range(ADDRESS_LIMIT - 1):
        attempt(client, f"victim-{n}@example.org", "x", address=address)
    assert attempt(client, own.email, TEST_PASSWORD, address=address).status_code == 200
    assert_problem(attempt(client, "victim-last@example.org", "x", address=address), 401)
    assert_locked(attempt(client, "victim-more@example.org", "x", address=address))


# ---- no user enumeration ---------------------------------------------------------------------


def run_sequence(client: Any, email: str, password: str, address: str) -> list[Any]:
    return [attempt(client, email, password, address) for _ in range(ACCOUNT_LIMIT + 2)]


def test_unknown_email_answers_exactly_like_a_wrong_password(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    known = run_sequence(client, user.email, "wrong password", "192.0.2.21")
    unknown = run_sequence(client, "nobody-here@example.org", "wrong password", "192.0.2.22")

    expected_statuses = [401] * ACCOUNT_LIMIT + [429] * 2
    assert [r.status_code for r in known] == expected_statuses
    assert [comparable(r) for r in known] == [comparable(r) for r in unknown]
    for response in known + unknown:
        assert response.mimetype == "application/problem+json"

    # The unknown e-mail's attempts are recorded the same way.
    assert throttle_row(session, account_key("nobody-here@example.org")).failures == ACCOUNT_LIMIT
    assert throttle_row(session, account_key(user.email)).failures == ACCOUNT_LIMIT


def test_inactive_accounts_answer_like_wrong_passwords(client, session, factory):
    wrong = factory.user(Role.CASEWORKER)
    inactive_user = factory.user(Role.CASEWORKER, active=False)
    closed_org = factory.org(OrgType.NGO)
    in_closed_org = factory.user(Role.CASEWORKER, org_id=closed_org)
    change(session, update(Organisation).where(Organisation.id == closed_org).values(active=False))

    baseline = [comparable(r) for r in run_sequence(client, wrong.email, "nope", "192.0.2.31")]
    # Correct passwords, but the account or its organisation is inactive.
    for email, address in (
        (inactive_user.email, "192.0.2.32"),
        (in_closed_org.email, "192.0.2.33"),
    ):
        observed = [comparable(r) for r in run_sequence(client, email, TEST_PASSWORD, address)]
        assert observed == baseline
    assert count_sessions(session) == 0


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every Argon2 verification the app performs, by the hash it verified against."""
    calls: list[str] = []
    real_verify = argon2.PasswordHasher.verify

    def spy(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        calls.append(hash if isinstance(hash, str) else hash.decode())
        return real_verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy)
    return calls


def test_unknown_email_costs_the_same_argon2_work(client, session, factory, verify_calls):
    user = factory.user(Role.CASEWORKER)
    try:
        (stored_hash,) = session.execute(select(User.password_hash).where(User.id == user.id)).one()
    finally:
        session.rollback()

    assert_problem(attempt(client, user.email, "wrong password", "192.0.2.41"), 401)
    assert verify_calls == [stored_hash]

    verify_calls.clear()
    assert_problem(
        attempt(client, f"ghost-{uuid.uuid4().hex}@example.org", "pw", "192.0.2.42"), 401
    )
    # One verification against a decoy hash of the same Argon2id parameters, not a shortcut.
    assert len(verify_calls) == 1
    decoy = verify_calls[0]
    assert decoy != stored_hash
    assert decoy.startswith("$argon2id$")
    assert argon2.extract_parameters(decoy) == argon2.extract_parameters(stored_hash)

    verify_calls.clear()
    change(session, update(User).where(User.id == user.id).values(active=False))
    assert_problem(attempt(client, user.email, TEST_PASSWORD, "192.0.2.43"), 401)
    assert verify_calls == [stored_hash]


def test_unknown_client_id_costs_the_same_argon2_work(client, session, factory, verify_calls):
    client_id, _secret = factory.client_credentials(
        Role.POLICE_OFFICER, factory.org(OrgType.POLICE)
    )
    try:
        stored_hash = session.scalar(
            select(ApiClient.secret_hash).where(ApiClient.client_id == client_id)
        )
    finally:
        session.rollback()

    def grant(cid: str) -> Any:
        return client.post(
            TOKEN,
            json={"grant_type": "client_credentials", "client_id": cid, "client_secret": "x"},
        )

    verify_calls.clear()
    assert_problem(grant(client_id), 401)
    assert verify_calls == [stored_hash]

    verify_calls.clear()
    assert_problem(grant("rac_ghost"), 401)
    assert len(verify_calls) == 1
    assert verify_calls[0] != stored_hash
    assert argon2.extract_parameters(verify_calls[0]) == argon2.extract_parameters(stored_hash)


# ---- failures are stored although the request fails ------------------------------------------


def test_failed_login_is_stored(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    address = "192.0.2.51"
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert_problem(attempt(client, user.email, "wrong password", address), 401)

    account = throttle_row(session, account_key(user.email))
    assert account is not None
    assert account.failures == 1
    assert account.locked_until is None
    assert before <= account.window_started_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert throttle_row(session, address_key(address)).failures == 1

    # Keys are hashes: the stored rows name neither the e-mail nor the address.
    try:
        keys = session.scalars(select(LoginThrottle.key)).all()
    finally:
        session.rollback()
    assert all(user.email not in key and address not in key for key in keys)

    assert_problem(attempt(client, user.email, "wrong again", address), 401)
    assert throttle_row(session, account_key(user.email)).failures == 2


def test_failed_login_for_unknown_email_is_stored(client, session):
    assert_problem(attempt(client, "unknown@example.org", "x", "192.0.2.52"), 401)
    assert throttle_row(session, account_key("unknown@example.org")).failures == 1
    assert throttle_row(session, address_key("192.0.2.52")).failures == 1


def test_a_locked_attempt_is_not_counted_again(client, session, factory):
    user = factory.user(Role.CASEWORKER)
    for _ in range(ACCOUNT_LIMIT):
        attempt(client, user.email, "wrong password")
    first = throttle_row(session, account_key(user.email))
    for _ in range(3):
        assert_locked(attempt(client, user.email, "wrong password"))
    # Hammering a locked account neither extends the lock nor grows the count.
    assert throttle_row(session, account_key(user.email)) == first


# ---- client credentials are throttled too ----------------------------------------------------


def test_client_credentials_throttled_per_client(client, session, factory):
    client_id, secret = factory.client_credentials(Role.POLICE_OFFICER, factory.org(OrgType.POLICE))

    def grant(client_secret: str) -> Any:
        return client.post(
            TOKEN,
            json={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
            environ_base={"REMOTE_ADDR": "192.0.2.61"},
        )

    for _ in range(ACCOUNT_LIMIT):
        assert_problem(grant("wrong-secret"), 401)
    assert_locked(grant(secret))
    assert count_sessions(session) == 0


# ---- spent counters are purged by the retention run ----------------------------------------


def test_retention_apply_deletes_spent_counters_and_keeps_live_ones(
    client, session, factory, runner
):
    spent, live, locked = (factory.user(Role.CASEWORKER) for _ in range(3))
    for user, address in ((spent, "198.51.100.1"), (live, "198.51.100.2")):
        attempt(client, user.email, "wrong password", address)
    for _ in range(ACCOUNT_LIMIT):
        attempt(client, locked.email, "wrong password", "198.51.100.3")
    long_ago = datetime.now(UTC) - timedelta(seconds=WINDOW_SECONDS + 5)
    # The spent account's and address's windows ended; the locked account's window ended
    # too, but its lock is still running.
    change(
        session,
        update(LoginThrottle)
        .where(
            LoginThrottle.key.in_(
                [
                    account_key(spent.email),
                    address_key("198.51.100.1"),
                    account_key(locked.email),
                ]
            )
        )
        .values(window_started_at=long_ago),
    )
    assert throttle_row(session, account_key(locked.email)).locked_until is not None

    listed = runner.invoke(args=["retention", "run"])
    assert listed.exit_code == 0, listed.output
    assert throttle_row(session, account_key(spent.email)) is not None  # listing changes nothing

    applied = runner.invoke(args=["retention", "run", "--apply"])
    assert applied.exit_code == 0, applied.output
    assert "2 spent sign-in failure counters deleted" in applied.output
    assert throttle_row(session, account_key(spent.email)) is None
    assert throttle_row(session, address_key("198.51.100.1")) is None
    assert throttle_row(session, account_key(live.email)).failures == 1
    assert throttle_row(session, address_key("198.51.100.2")).failures == 1
    assert throttle_row(session, account_key(locked.email)).failures == ACCOUNT_LIMIT
    # The lock still holds after the purge.
    assert_locked(attempt(client, locked.email, TEST_PASSWORD, "198.51.100.9"))


def test_a_lock_that_has_ended_is_purged_with_its_window(session, app):
    from referral_api.auth.service import purge_stale_throttles
    from referral_api.extensions import db

    now = datetime.now(UTC)
    window = timedelta(seconds=WINDOW_SECONDS)
    rows = [
        ("acct:ended", now - window * 2, now - timedelta(seconds=1)),  # lock over: purged
        ("acct:running", now - window * 2, now + timedelta(seconds=60)),  # lock on: kept
        ("acct:fresh", now - timedelta(seconds=5), None),  # window open: kept
    ]
    session.add_all(
        LoginThrottle(key=key, failures=3, window_started_at=started, locked_until=until)
        for key, started, until in rows
    )
    session.commit()
    with db.session_factory_for(app)() as purge:
        assert purge_stale_throttles(purge, window, now) == 1
        purge.commit()
    left = set(session.scalars(select(LoginThrottle.key)))
    session.rollback()
    assert left == {"acct:running", "acct:fresh"}


# ---- guesses sent at once (PostgreSQL) -------------------------------------------------------


@pytest.mark.skipif(
    not __import__("os").environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="SQLite runs one sign-in at a time (BEGIN IMMEDIATE)",
)
@pytest.mark.parametrize("right_guess_among_them", [False, True])
def test_guesses_sent_at_once_get_no_more_verdicts_than_the_limit(
    app, factory, monkeypatch, right_guess_among_them
):
    """Every sign-in checked the lock before its slow verification and counted its failure
    after it: eight guesses at once all passed one check, all were verified and answered as
    wrong passwords (a reviewer's probe), and a right one among them signed in although
    the account was locked meanwhile. Attempts on one account name now take their turn: at
    most the limit are verified, the rest are refused locked, unverified."""
    import contextlib
    import threading

    from referral_api.extensions import hasher

    worker = factory.user(Role.CASEWORKER)
    guesses = 8
    barrier = threading.Barrier(guesses, timeout=2)
    verified: list[str] = []
    real_verify = hasher.verify

    def verify_together(stored: Any, secret: str) -> bool:
        verified.append(secret)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()  # as many in flight at once as will come
        return real_verify(stored, secret)

    monkeypatch.setattr(hasher, "verify", verify_together)
    answers: dict[int, Any] = {}

    def guess(number: int) -> None:
        right = right_guess_among_them and number == guesses - 1
        with app.test_client() as http:
            answers[number] = attempt(
                http, worker.email, TEST_PASSWORD if right else f"wrong guess {number}"
            )

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = sorted(answer.status_code for answer in answers.values())
    # Verified one at a time (in this order); the rest refused unverified.
    assert statuses.count(429) == guesses - len(verified), statuses
    for answer in answers.values():
        if answer.status_code == 429:
            assert_locked(answer)
    if TEST_PASSWORD in verified:
        # The right one signed in while fewer than the limit had failed; a sign-in starts
        # the account's count again.
        at = verified.index(TEST_PASSWORD)
        assert at < ACCOUNT_LIMIT and len(verified) - at - 1 <= ACCOUNT_LIMIT, verified
        assert answers[guesses - 1].status_code == 200
    else:
        assert len(verified) <= ACCOUNT_LIMIT, statuses
        if right_guess_among_them:
            assert_locked(answers[guesses - 1])


def test_a_counter_at_zero_starts_its_window_at_the_next_failure(client, session, factory):
    """A sign-in leaves the account's counter at 0 (it takes its turn on that row): the
    window of the failures that follow starts at the first of them, not at the sign-in."""
    worker = factory.user(Role.CASEWORKER)
    assert attempt(client, worker.email, TEST_PASSWORD).status_code == 200
    key = account_key(worker.email)
    signed_in = datetime.now(UTC) - timedelta(seconds=WINDOW_SECONDS - 5)
    change(
        session,
        update(LoginThrottle).where(LoginThrottle.key == key).values(window_started_at=signed_in),
    )
    assert throttle_row(session, key).failures == 0
    before = datetime.now(UTC)
    assert_problem(attempt(client, worker.email, "wrong password"), 401)
    row = throttle_row(session, key)
    assert row.failures == 1 and row.window_started_at >= before
