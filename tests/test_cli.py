"""The `referral-api` command line: flags and output are a contract integrators script."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from referral_api.access.roles import OrgType, Role
from referral_api.auth.models import ApiClient, Organisation, User
from referral_api.crypto.keyring import LocalKeyring
from referral_api.migrate import head_revision

PASSWORD = "cli-password-" + "long-enough"
NO_PASSWORD_ENV = {"REFERRAL_API_PASSWORD": None}


def _count(session, model) -> int:
    count = session.scalar(select(func.count()).select_from(model))
    session.rollback()  # end the read: SQLite's BEGIN IMMEDIATE would block the app
    return int(count or 0)


def _login(client, email: str, password: str):
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


# ---- create-org ---------------------------------------------------------------------------


def test_create_org_prints_only_the_id(runner, session):
    result = runner.invoke(args=["create-org", "--name", "Northern Shelter", "--type", "shelter"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    org_id = uuid.UUID(lines[0])
    org = session.get(Organisation, org_id)
    assert (org.name, org.org_type) == ("Northern Shelter", OrgType.SHELTER)


def test_create_org_rejects_an_unknown_type(runner, session):
    result = runner.invoke(args=["create-org", "--name", "Bad Type Org", "--type", "charity"])
    assert result.exit_code != 0
    assert "charity" in result.output
    assert result.stdout == ""
    assert _count(session, Organisation) == 0


def test_create_org_twice_fails_with_a_message(runner, session):
    args = ["create-org", "--name", "Twice Org", "--type", "ngo"]
    assert runner.invoke(args=args).exit_code == 0
    result = runner.invoke(args=args)
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert result.stdout == ""
    assert _count(session, Organisation) == 1


# ---- create-user --------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["name", "id"])
def test_create_user_with_password_from_env(runner, client, factory, session, by):
    org_id = factory.org(OrgType.NGO, name="CLI Users NGO")
    org_ref = "CLI Users NGO" if by == "name" else str(org_id)
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "Case.Worker@Example.org",
            "--org",
            org_ref,
            "--role",
            "caseworker",
        ],
        env={"REFERRAL_API_PASSWORD": PASSWORD},
    )
    assert result.exit_code == 0, result.output
    user_id = uuid.UUID(result.stdout.strip())
    user = session.get(User, user_id)
    assert (user.org_id, user.role, user.email) == (
        org_id,
        Role.CASEWORKER,
        "case.worker@example.org",
    )
    assert PASSWORD not in user.password_hash
    session.rollback()

    tokens = _login(client, "case.worker@example.org", PASSWORD)
    assert tokens.status_code == 200
    me = client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {tokens.get_json()['access_token']}"}
    ).get_json()
    assert (me["id"], me["role"], me["organisation"]["id"]) == (
        str(user_id),
        "caseworker",
        str(org_id),
    )


def test_create_user_without_password_and_without_tty_fails(runner, factory, session):
    factory.org(OrgType.NGO, name="No Password NGO")
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "nopass@example.org",
            "--org",
            "No Password NGO",
            "--role",
            "caseworker",
        ],
        env=NO_PASSWORD_ENV,
    )
    assert result.exit_code != 0
    assert "REFERRAL_API_PASSWORD" in result.output
    assert result.stdout == ""
    assert _count(session, User) == 0


def test_create_user_has_no_password_option(runner, factory, session):
    # A password on the command line ends up in shell history and `ps` output.
    factory.org(OrgType.NGO, name="Option NGO")
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "opt@example.org",
            "--org",
            "Option NGO",
            "--role",
            "caseworker",
            "--password",
            PASSWORD,
        ],
        env={"REFERRAL_API_PASSWORD": PASSWORD},
    )
    assert result.exit_code != 0
    assert _count(session, User) == 0


@pytest.mark.parametrize(
    ("org_type", "role", "message"),
    [
        (OrgType.NGO, "police_officer", "police_officer"),
        (OrgType.NGO, "platform_admin", "platform_admin"),
        (OrgType.PLATFORM, "caseworker", "caseworker"),
    ],
)
def test_create_user_role_not_allowed_in_org_type(
    runner, factory, session, org_type, role, message
):
    factory.org(org_type, name="Role Check Org")
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "role@example.org",
            "--org",
            "Role Check Org",
            "--role",
            role,
        ],
        env={"REFERRAL_API_PASSWORD": PASSWORD},
    )
    assert result.exit_code != 0
    assert message in result.stderr
    assert "not available" in result.stderr
    assert result.stdout == ""
    assert _count(session, User) == 0


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--org", "No Such Org"], {"REFERRAL_API_PASSWORD": PASSWORD}, "No organisation"),
        (["--org", "Input NGO"], {"REFERRAL_API_PASSWORD": "short"}, "12 characters"),
    ],
)
def test_create_user_bad_input_fails_with_message(runner, factory, session, extra, env, message):
    factory.org(OrgType.NGO, name="Input NGO")
    result = runner.invoke(
        args=["create-user", "--email", "input@example.org", "--role", "caseworker", *extra],
        env=env,
    )
    assert result.exit_code != 0
    assert message in result.output
    assert _count(session, User) == 0


def test_create_user_rejects_a_malformed_email(runner, factory, session):
    factory.org(OrgType.NGO, name="Email NGO")
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "not-an-email",
            "--org",
            "Email NGO",
            "--role",
            "caseworker",
        ],
        env={"REFERRAL_API_PASSWORD": PASSWORD},
    )
    assert result.exit_code != 0
    assert "--email" in result.output
    assert _count(session, User) == 0


def test_create_user_duplicate_email_fails(runner, factory, session):
    factory.org(OrgType.NGO, name="Dup NGO")
    args = ["create-user", "--email", "dup@example.org", "--org", "Dup NGO", "--role", "dpo"]
    env = {"REFERRAL_API_PASSWORD": PASSWORD}
    assert runner.invoke(args=args, env=env).exit_code == 0
    result = runner.invoke(args=args, env=env)
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert _count(session, User) == 1


# ---- create-client ------------------------------------------------------------------------


def test_create_client_prints_a_working_credential_pair(runner, client, factory, session):
    org_id = factory.org(OrgType.POLICE, name="CLI Police")
    result = runner.invoke(
        args=[
            "create-client",
            "--name",
            "Records system",
            "--org",
            "CLI Police",
            "--role",
            "police_officer",
        ]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["client_id", "client_secret", "id"]
    client_id = lines[0].split("=", 1)[1]
    secret = lines[1].split("=", 1)[1]
    assert client_id and len(secret) >= 32

    stored = session.scalars(select(ApiClient).where(ApiClient.client_id == client_id)).one()
    assert (stored.org_id, stored.role) == (org_id, Role.POLICE_OFFICER)
    # The id /clients/{id} URLs take (a reviewer found only client_id printed, a 404 there).
    assert lines[2] == f"id={stored.id}"
    assert secret not in stored.secret_hash
    session.rollback()

    response = client.post(
        "/api/v1/auth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.get_json()
    token = response.get_json()["access_token"]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert (me["kind"], me["role"], me["organisation"]["id"]) == (
        "client",
        "police_officer",
        str(org_id),
    )
    wrong = client.post(
        "/api/v1/auth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"},
    )
    assert wrong.status_code == 401


def test_create_client_role_not_allowed_fails(runner, factory, session):
    factory.org(OrgType.NGO, name="Client NGO")
    result = runner.invoke(
        args=["create-client", "--name", "x", "--org", "Client NGO", "--role", "police_officer"]
    )
    assert result.exit_code != 0
    assert "client_secret" not in result.output
    assert _count(session, ApiClient) == 0


# ---- seed-demo ----------------------------------------------------------------------------


def test_seed_demo_creates_every_org_type_and_working_users(runner, client, session):
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.startswith("demo users (password for all: ")
    password = header.split("password for all: ", 1)[1].rstrip("):")
    users = [row.split() for row in rows]
    assert users

    org_types = set(session.scalars(select(Organisation.org_type)))
    assert org_types == set(OrgType)
    stored_users = {u.email: u.role for u in session.scalars(select(User))}
    session.rollback()
    assert {email for email, *_ in users} == set(stored_users)
    # One user per role, each role present somewhere.
    assert set(stored_users.values()) == set(Role)

    email, role = next((e, r) for e, r, *_ in users if r == "police_officer")
    response = _login(client, email, password)
    assert response.status_code == 200
    token = response.get_json()["access_token"]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert me["role"] == role
    assert me["organisation"]["org_type"] == "police"

    orgs, people = _count(session, Organisation), _count(session, User)
    again = runner.invoke(args=["seed-demo"])
    assert again.exit_code == 0
    assert again.stdout == ""
    assert "nothing seeded" in again.stderr
    assert (_count(session, Organisation), _count(session, User)) == (orgs, people)


def test_seed_demo_does_nothing_when_an_organisation_exists(runner, factory, session):
    factory.org(OrgType.NGO, name="Real Org")
    result = runner.invoke(args=["seed-demo"])
    assert result.exit_code == 0
    assert (_count(session, Organisation), _count(session, User)) == (1, 0)


def test_seed_demo_is_refused_in_production(app_config, keyring_path, session):
    from referral_api import create_app

    LocalKeyring.load(keyring_path, create_if_missing=True)
    production = create_app(
        {
            **app_config,
            "ENV_NAME": "production",
            "TESTING": False,
            # Production runs on PostgreSQL only: the suite's own on the PostgreSQL run, one
            # never dialled on the SQLite run (the refusal comes before any connection).
            "DATABASE_URL": app_config["DATABASE_URL"]
            if app_config["DATABASE_URL"].startswith("postgresql")
            else "postgresql://nobody@127.0.0.1:1/never-connected",
            "KEYRING_CREATE_IF_MISSING": False,
            # The cheapest password hashing production accepts (the suite's own is cheaper).
            "ARGON2_TIME_COST": 2,
            "ARGON2_MEMORY_COST": 19 * 1024,
        }
    )
    result = production.test_cli_runner().invoke(args=["seed-demo"])
    assert (result.exit_code, result.stderr) == (1, "error: seed-demo is refused in production.\n")
    assert result.stdout == ""
    assert _count(session, Organisation) == 0


# ---- openapi write ------------------------------------------------------------------------


def test_openapi_write_writes_the_live_spec(runner, client, tmp_path):
    target = tmp_path / "nested" / "openapi.json"
    result = runner.invoke(args=["openapi", "write", str(target)])
    assert result.exit_code == 0, result.output
    document = json.loads(target.read_text(encoding="utf-8"))
    assert document["openapi"] == "3.1.0"
    assert "/api/v1/auth/login" in document["paths"]
    assert "bearerAuth" in document["components"]["securitySchemes"]
    assert document == client.get("/api/v1/openapi.json").get_json()


# ---- the installed console script ---------------------------------------------------------


def _console_script() -> str:
    candidate = Path(sys.prefix) / "bin" / "referral-api"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("referral-api")
    assert found, "the referral-api console script is not installed"
    return found


@pytest.mark.own_database
def test_installed_console_script_upgrades_from_any_directory(tmp_path):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    database = tmp_path / "x.db"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{database}",
        "REFERRAL_API_ENV": "development",
        "REFERRAL_API_KEYRING": str(tmp_path / "k.json"),
        "REFERRAL_API_JWT_SECRET": "console-script-test-secret-" + "y" * 24,
    }
    completed = subprocess.run(
        [_console_script(), "db", "upgrade"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "(head)" in completed.stderr
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert revision == head_revision()
    assert list(workdir.iterdir()) == []  # nothing written to the working directory


def _script_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """What an operator's shell or a cron job gives the console script, with the keyring
    already made (its creation would add a warning to stderr)."""
    keyring = tmp_path / "keyring.json"
    LocalKeyring.load(keyring, create_if_missing=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "REFERRAL_API_ENV": "development",
        "REFERRAL_API_JWT_SECRET": "console-script-test-secret-" + "y" * 24,
        "REFERRAL_API_KEYRING": str(keyring),
        "REFERRAL_API_PASSWORD": PASSWORD,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
    }
    env.update(overrides)
    return env


def _script(args: list[str] | list[bytes], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script: str | bytes = _console_script()
    if args and isinstance(args[0], bytes):
        script = os.fsencode(script)
    return subprocess.run(
        [script, *args],
        env=env,
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        check=False,
    )


DB_PASSWORD = "db-" + "password-canary"


@pytest.mark.own_database
@pytest.mark.parametrize(
    "args",
    [
        ["keys", "status"],
        ["db", "upgrade"],
        ["audit", "verify"],
        ["audit", "seal"],
        ["consent", "expire"],
        ["retention", "run"],
        ["seed-demo"],
        ["create-org", "--name", "Unreached NGO", "--type", "ngo"],
        ["create-user", "--email", "u@example.org", "--org", "Unreached NGO", "--role", "dpo"],
        ["create-client", "--name", "Unreached", "--org", "Unreached NGO", "--role", "dpo"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
@pytest.mark.parametrize(
    "url",
    [f"postgresql://referral:{DB_PASSWORD}@127.0.0.1:1/referral", "sqlite:///{tmp}/no/such/dir.db"],
    ids=["postgresql", "sqlite"],
)
def test_an_unreachable_database_is_one_error_line_from_every_command(tmp_path, args, url):
    # A database down, a wrong host or port: what a cron job meets after a failover. The
    # exception's message is not shown: it can quote the URL and its password.
    completed = _script(args, _script_env(tmp_path, DATABASE_URL=url.format(tmp=tmp_path)))
    assert (completed.returncode, completed.stderr) == (
        1,
        "error: the database could not be reached (OperationalError)\n",
    )
    assert completed.stdout == ""


@pytest.mark.own_database
@pytest.mark.parametrize(
    "args",
    [
        ["keys", "status"],
        ["audit", "verify"],
        ["consent", "expire"],
        ["retention", "run"],
        ["seed-demo"],
        ["create-org", "--name", "Early NGO", "--type", "ngo"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_database_not_migrated_yet_is_one_error_line_naming_db_upgrade(tmp_path, args):
    # A deployment that skipped `db upgrade`: every command met a missing table with a
    # traceback of SQL. The database is reachable; its schema is not this release's.
    completed = _script(args, _script_env(tmp_path))
    assert (completed.returncode, completed.stdout) == (1, "")
    assert completed.stderr == (
        f"error: the database schema is at no revision, this release needs {head_revision()}: "
        "run `referral-api db upgrade` first\n"
    )


@pytest.mark.own_database
def test_a_schema_behind_this_release_is_refused_before_any_command_runs(tmp_path):
    """Found by review: the check ran only when a statement failed, and against an older
    schema some commands ran to the end (audit seal, create-org, create-client printing a
    secret, consent expire, retention run). Every command except `db` now refuses first."""
    # One migration behind: none of these commands touches what 0020 added, so without the
    # check before it runs, each ran to the end (`audit seal`: exit 0, "0 rows sealed").
    env = _script_env(tmp_path)
    behind = "0019"
    migrated = _script(["db", "upgrade", "--revision", behind], env)
    assert migrated.returncode == 0, migrated.stderr
    refusal = (
        f"error: the database schema is at {behind}, this release needs {head_revision()}: "
        "run `referral-api db upgrade` first\n"
    )
    for args in (
        ["audit", "seal"],
        ["audit", "verify"],
        ["create-org", "--name", "Early NGO", "--type", "ngo"],
        ["consent", "expire"],
        ["retention", "run", "--apply"],
    ):
        completed = _script(args, env)
        assert (completed.returncode, completed.stdout, completed.stderr) == (1, "", refusal), args
    with sqlite3.connect(tmp_path / "db.sqlite") as connection:
        assert connection.execute("SELECT count(*) FROM organisations").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM audit_events").fetchone() == (0,)
    upgraded = _script(["db", "upgrade"], env)
    assert upgraded.returncode == 0, upgraded.stderr
    created = _script(["create-org", "--name", "Early NGO", "--type", "ngo"], env)
    assert created.returncode == 0, created.stderr


def test_create_keyring_makes_a_production_keyring_without_a_database(tmp_path):
    """Production refuses to start without a keyring, and nothing made one (a reviewer had
    to write its JSON by hand): `create-keyring` needs neither the database (this URL is
    never dialled) nor a keyring, and never replaces one."""
    path = tmp_path / "keys" / "keyring.json"
    env = _script_env(
        tmp_path,
        REFERRAL_API_ENV="production",
        REFERRAL_API_KEYRING=str(path),
        DATABASE_URL=f"postgresql://referral:{DB_PASSWORD}@127.0.0.1:1/referral",
    )
    made = _script(["create-keyring"], env)
    assert (made.returncode, made.stdout, made.stderr) == (0, f"{path}\n", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keyring = LocalKeyring.load(path, create_if_missing=False)
    assert keyring.current_version() == 1
    before = path.read_bytes()
    again = _script(["create-keyring", str(path)], env)
    assert (again.returncode, again.stdout) == (1, "")
    assert (
        again.stderr == f"error: the keyring cannot be created at {path}: a file is already there\n"
    )
    assert path.read_bytes() == before
    unset = _script(
        ["create-keyring"], {k: v for k, v in env.items() if k != "REFERRAL_API_KEYRING"}
    )
    assert (unset.returncode, unset.stderr) == (1, "error: give PATH or set REFERRAL_API_KEYRING\n")


@pytest.mark.own_database
def test_an_unparseable_database_url_is_one_error_line(tmp_path):
    url = f"postgres-ql//referral:{DB_PASSWORD}@db/referral"
    completed = _script(["keys", "status"], _script_env(tmp_path, DATABASE_URL=url))
    assert (completed.returncode, completed.stderr, completed.stdout) == (
        1,
        "error: DATABASE_URL is not a valid database URL\n",
        "",
    )


@pytest.mark.own_database
def test_a_name_that_is_not_utf8_is_refused_like_the_api_refuses_it(tmp_path):
    # A non-UTF-8 byte on the command line arrives as a lone surrogate (surrogateescape);
    # the API answers such text 422 (docs/errors.md). The INSERT crashed with a traceback.
    env = _script_env(tmp_path)
    assert _script(["db", "upgrade"], env).returncode == 0
    completed = _script([b"create-org", b"--name", b"North \xff Shelter", b"--type", b"ngo"], env)
    assert (completed.returncode, completed.stdout) == (1, "")
    assert completed.stderr == (
        "error: --name: Text must be valid Unicode (an unpaired surrogate was sent).\n"
    )
    engine = create_engine(env["DATABASE_URL"])
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM organisations")).scalar() == 0
    finally:
        engine.dispose()


USER_ARGS = ["create-user", "--email", "t@example.org", "--org", "Text NGO", "--role", "dpo"]
NUL = "U+0000"
SURROGATE = "an unpaired surrogate"


@pytest.mark.parametrize(
    ("args", "option", "problem"),
    [
        (["create-org", "--name", "Nul\x00 NGO", "--type", "ngo"], "--name", NUL),
        (["create-org", "--name", "North \udcff NGO", "--type", "ngo"], "--name", SURROGATE),
        (
            ["create-client", "--name", "Nul\x00", "--org", "Text NGO", "--role", "dpo"],
            "--name",
            NUL,
        ),
        (
            ["create-client", "--name", "Ok", "--org", "Text\udcff NGO", "--role", "dpo"],
            "--org",
            SURROGATE,
        ),
        (
            ["create-user", "--email", "a\x00@example.org", "--org", "Text NGO", "--role", "dpo"],
            "--email",
            NUL,
        ),
        (
            ["create-user", "--email", "t@example.org", "--org", "Text NGO\x00", "--role", "dpo"],
            "--org",
            NUL,
        ),
        (
            [*USER_ARGS, "--name", "T\udcff"],
            "--name",
            SURROGATE,
        ),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_text_that_cannot_be_stored_is_refused_on_the_command_line(
    runner, factory, session, args, option, problem
):
    factory.org(OrgType.NGO, name="Text NGO")
    result = runner.invoke(args=args, env={"REFERRAL_API_PASSWORD": PASSWORD})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: Text must "), lines
    assert problem in lines[0]
    assert result.stdout == ""
    assert (_count(session, Organisation), _count(session, User), _count(session, ApiClient)) == (
        1,
        0,
        0,
    )
