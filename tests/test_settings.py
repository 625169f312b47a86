"""Configuration: production refuses to start without its secrets; development makes its own."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from referral_api import create_app
from referral_api.crypto.keyring import LocalKeyring
from referral_api.exceptions import ConfigurationError
from referral_api.extensions import db
from referral_api.settings import load_settings, normalise_database_url

GOOD_SECRET = "pX4-vK9q_Tz2LmW7rB0sYc5NhJd8eGf3uAo1iRt6"  # as token_urlsafe makes one
# Production runs on PostgreSQL only; starting the app connects to no database, so the
# SQLite run of the suite checks production's settings against an address never dialled.
UNUSED_POSTGRES_URL = "postgresql://nobody@127.0.0.1:1/never-connected"
ENV_VARS = (
    "DATABASE_URL",
    "REFERRAL_API_ENV",
    "REFERRAL_API_KEYRING",
    "REFERRAL_API_JWT_SECRET",
    "REFERRAL_API_CORS_ORIGINS",
    "REFERRAL_API_MAX_BODY_BYTES",
    "REFERRAL_API_ACCESS_TOKEN_SECONDS",
    "REFERRAL_API_IDEMPOTENCY_KEY_SECONDS",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def production_keyring(tmp_path: Path) -> str:
    path = tmp_path / "prod-keyring.json"
    LocalKeyring.load(path, create_if_missing=True)
    return str(path)


@pytest.fixture
def production_database_url(database_url: str) -> str:
    return database_url if database_url.startswith("postgresql") else UNUSED_POSTGRES_URL


@pytest.fixture
def production_env(clean_env, production_database_url, production_keyring) -> pytest.MonkeyPatch:
    """A complete production environment; each test removes or spoils one part."""
    clean_env.setenv("REFERRAL_API_ENV", "production")
    clean_env.setenv("DATABASE_URL", production_database_url)
    clean_env.setenv("REFERRAL_API_KEYRING", production_keyring)
    clean_env.setenv("REFERRAL_API_JWT_SECRET", GOOD_SECRET)
    return clean_env


def _start(config: dict[str, Any] | None = None) -> Flask:
    app = create_app(config)
    db.engine_for(app).dispose()
    return app


def test_complete_production_environment_starts(production_env, production_keyring):
    app = _start()
    assert app.config["ENV_NAME"] == "production"
    assert app.config["JWT_SECRET_KEY"] == GOOD_SECRET
    assert app.config["KEYRING_PATH"] == production_keyring
    assert app.config["KEYRING_CREATE_IF_MISSING"] is False
    assert not app.config.get("TESTING")


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("REFERRAL_API_JWT_SECRET", "REFERRAL_API_JWT_SECRET"),
        ("DATABASE_URL", "DATABASE_URL"),
        ("REFERRAL_API_KEYRING", "REFERRAL_API_KEYRING"),
    ],
)
def test_production_refuses_to_start_without(production_env, variable, message):
    production_env.delenv(variable)
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert message in raised.value.detail


def test_production_refuses_an_empty_secret(production_env):
    production_env.setenv("REFERRAL_API_JWT_SECRET", "")
    with pytest.raises(ConfigurationError):
        _start()


def test_production_refuses_a_short_secret(production_env):
    production_env.setenv("REFERRAL_API_JWT_SECRET", GOOD_SECRET[:31])
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert "32" in raised.value.detail
    production_env.setenv("REFERRAL_API_JWT_SECRET", GOOD_SECRET[:32])
    assert _start().config["JWT_SECRET_KEY"] == GOOD_SECRET[:32]


@pytest.mark.parametrize(
    "weak",
    [
        "s" * 64,  # one character
        "password" * 4,  # a word repeated: 32 characters of 7 distinct, 90 bits at most
    ],
)
def test_production_refuses_a_secret_of_too_few_distinct_characters(production_env, weak):
    production_env.setenv("REFERRAL_API_JWT_SECRET", weak)
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert "distinct characters" in raised.value.detail


@pytest.mark.parametrize(
    "generated",
    [
        secrets.token_hex(32),  # openssl rand -hex 32: 64 characters of at most 16
        secrets.token_hex(16),  # 32 hex characters: 128 random bits, rated 96-128
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(24),  # 32 characters
    ],
)
def test_production_takes_a_generated_secret(production_env, generated):
    production_env.setenv("REFERRAL_API_JWT_SECRET", generated)
    assert _start().config["JWT_SECRET_KEY"] == generated


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REFERRAL_API_ARGON2_MEMORY_KIB", "8", "REFERRAL_API_ARGON2_MEMORY_KIB"),
        ("REFERRAL_API_ARGON2_TIME_COST", "1", "REFERRAL_API_ARGON2_TIME_COST"),
        ("REFERRAL_API_CORS_ORIGINS", "https://app.example.org, *", "REFERRAL_API_CORS_ORIGINS"),
    ],
)
def test_production_refuses_settings_that_weaken_it(production_env, variable, value, message):
    production_env.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert message in raised.value.detail


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/referral_api.db", "sqlite://"])
def test_production_refuses_sqlite(production_env, tmp_path, url):
    # No database-enforced append-only audit log there (no trigger, no grants).
    production_env.setenv("DATABASE_URL", url.format(tmp=tmp_path))
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert "PostgreSQL" in raised.value.detail
    assert "DATABASE_URL" in raised.value.detail
    production_env.setenv("REFERRAL_API_ENV", "development")
    assert _start().config["DATABASE_URL"] == url.format(tmp=tmp_path)


def test_production_refuses_a_missing_keyring_file_and_creates_none(production_env, tmp_path):
    missing = tmp_path / "absent" / "keyring.json"
    production_env.setenv("REFERRAL_API_KEYRING", str(missing))
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert "keyring" in raised.value.detail.lower()
    assert not missing.exists()


def test_production_refuses_a_keyring_readable_by_others(production_env, production_keyring):
    os.chmod(production_keyring, 0o640)
    with pytest.raises(ConfigurationError) as raised:
        _start()
    assert "600" in raised.value.detail


def test_production_through_config_overrides(
    clean_env, production_database_url, production_keyring
):
    # create_app(config) is checked exactly as the environment is.
    config = {
        "ENV_NAME": "production",
        "DATABASE_URL": production_database_url,
        "KEYRING_PATH": production_keyring,
    }
    with pytest.raises(ConfigurationError):
        _start(config)
    with pytest.raises(ConfigurationError):
        _start({**config, "JWT_SECRET_KEY": "short"})
    assert _start({**config, "JWT_SECRET_KEY": GOOD_SECRET}).config["ENV_NAME"] == "production"


def test_unknown_environment_name_is_refused(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_ENV", "prod")
    with pytest.raises(ConfigurationError):
        load_settings(str(tmp_path))


def test_non_integer_setting_is_refused(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_MAX_BODY_BYTES", "1MB")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(str(tmp_path))
    assert "REFERRAL_API_MAX_BODY_BYTES" in raised.value.detail


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("REFERRAL_API_AUDIT_SEAL_SECONDS", "AUDIT_SEAL_INTERVAL_SECONDS"),
        ("REFERRAL_API_KEY_CACHE_SECONDS", "KEY_CACHE_SECONDS"),
        ("REFERRAL_API_TRUSTED_PROXIES", "TRUSTED_PROXY_COUNT"),
    ],
)
def test_settings_where_zero_means_something_take_zero(clean_env, tmp_path, variable, setting):
    """0 is documented for these (no sealing thread: each response seals its own rows; no
    key cache; no proxy): it must not be refused like a 0 that means nothing."""
    clean_env.setenv(variable, "0")
    assert load_settings(str(tmp_path))[setting] == 0


def test_an_idempotency_key_is_honoured_for_at_least_an_hour(clean_env, tmp_path):
    """A shorter window would let a retry after an outage create a second case."""
    assert load_settings(str(tmp_path))["IDEMPOTENCY_KEY_TTL_SECONDS"] == 7 * 24 * 3600
    clean_env.setenv("REFERRAL_API_IDEMPOTENCY_KEY_SECONDS", "3600")
    assert load_settings(str(tmp_path))["IDEMPOTENCY_KEY_TTL_SECONDS"] == 3600
    clean_env.setenv("REFERRAL_API_IDEMPOTENCY_KEY_SECONDS", "60")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(str(tmp_path))
    assert "REFERRAL_API_IDEMPOTENCY_KEY_SECONDS must be at least 3600" in raised.value.detail


# ---- development defaults -----------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_development_generates_a_private_secret_once(clean_env, tmp_path):
    instance = tmp_path / "instance"
    settings = load_settings(str(instance))
    secret_file = instance / "jwt-secret"
    assert settings["ENV_NAME"] == "development"
    assert _mode(secret_file) == 0o600
    assert settings["JWT_SECRET_KEY"] == secret_file.read_text(encoding="ascii").strip()
    assert len(settings["JWT_SECRET_KEY"]) >= 32
    # Stable across restarts: the same secret is read back, not regenerated.
    assert load_settings(str(instance))["JWT_SECRET_KEY"] == settings["JWT_SECRET_KEY"]
    # Another instance folder gets its own secret.
    assert load_settings(str(tmp_path / "other"))["JWT_SECRET_KEY"] != settings["JWT_SECRET_KEY"]


def test_development_defaults_live_in_the_instance_folder(clean_env, tmp_path):
    instance = tmp_path / "instance"
    settings = load_settings(str(instance))
    assert settings["DATABASE_URL"] == f"sqlite:///{instance / 'referral_api.db'}"
    assert settings["KEYRING_PATH"] == str(instance / "keyring.json")
    assert settings["KEYRING_CREATE_IF_MISSING"] is True
    assert settings["CORS_ORIGINS"] == []
    assert settings["MAX_CONTENT_LENGTH"] == 1024 * 1024


def test_development_app_creates_private_instance_files(clean_env, tmp_path, monkeypatch):
    instance = tmp_path / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(instance))
    app = _start()
    assert app.instance_path == str(instance)
    assert _mode(instance) & 0o077 == 0
    for name in ("jwt-secret", "keyring.json"):
        assert _mode(instance / name) == 0o600, name
    assert app.config["DATABASE_URL"].endswith(str(instance / "referral_api.db"))
    # The generated keyring is the one a restart loads.
    keyring = LocalKeyring.load(instance / "keyring.json", create_if_missing=False)
    assert keyring.current_version() == 1
    assert _start().config["JWT_SECRET_KEY"] == app.config["JWT_SECRET_KEY"]


def test_explicit_secret_is_used_and_nothing_generated(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_JWT_SECRET", GOOD_SECRET)
    settings = load_settings(str(tmp_path))
    assert settings["JWT_SECRET_KEY"] == GOOD_SECRET
    assert not (tmp_path / "jwt-secret").exists()


# ---- parsing --------------------------------------------------------------------------------


def test_cors_origins_from_environment(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_CORS_ORIGINS", " https://a.example.org, ,https://b.example.org,")
    settings = load_settings(str(tmp_path))
    assert settings["CORS_ORIGINS"] == ["https://a.example.org", "https://b.example.org"]


@pytest.mark.parametrize("env", ["development", "production"])
@pytest.mark.parametrize(
    "origin",
    [
        "*",
        # flask-cors reads these as regular expressions matched at the start only: the first
        # three grant every origin, the next `https://xexample.org.attacker.net`.
        ".*",
        "https://.*",
        "https?://.*",
        "https://*.example.org",
        "https://app\\.example\\.org",
        "https://[::1]:8443",
        "https://app.example.org/",
        "https://app.example.org/path",
        "https://user@app.example.org",
        "https://app.example.org:port",
        "ftp://app.example.org",
        "app.example.org",
        "null",
    ],
)
def test_cors_origins_must_be_exact_origins_in_every_environment(
    production_env, env, origin, tmp_path
):
    production_env.setenv("REFERRAL_API_ENV", env)
    production_env.setenv("REFERRAL_API_CORS_ORIGINS", f"https://app.example.org,{origin}")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(str(tmp_path))
    assert raised.value.detail.startswith("REFERRAL_API_CORS_ORIGINS must list exact origins")
    # Set by the app's caller rather than the environment: the same rule.
    production_env.delenv("REFERRAL_API_CORS_ORIGINS")
    with pytest.raises(ConfigurationError, match="REFERRAL_API_CORS_ORIGINS"):
        load_settings(str(tmp_path), {"CORS_ORIGINS": [origin]})


def test_cors_origins_may_name_a_port_and_any_case(production_env, tmp_path):
    origins = "http://localhost:5173,https://App.Example.org:8443,http://127.0.0.1:8080"
    production_env.setenv("REFERRAL_API_CORS_ORIGINS", origins)
    assert load_settings(str(tmp_path))["CORS_ORIGINS"] == origins.split(",")


@pytest.mark.parametrize(
    "url",
    [
        "postgres-ql//referral:{password}@db/referral",
        "postgresql://referral:{password}@db:notaport/referral",
        "postgresql+nodriver://referral:{password}@db/referral",
        "nosuchdb://referral:{password}@db/referral",
    ],
)
def test_an_unusable_database_url_is_refused_without_echoing_it(clean_env, tmp_path, url):
    password = "db-" + "password-canary"
    clean_env.setenv("DATABASE_URL", url.format(password=password))
    with pytest.raises(ConfigurationError) as raised:
        load_settings(str(tmp_path))
    assert raised.value.detail == "DATABASE_URL is not a valid database URL"
    # Not chained: the parser's message quotes the URL, password included.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize("driver", ["psycopg2", "asyncpg", "pg8000"])
def test_a_database_driver_not_installed_is_refused_without_echoing_the_url(
    clean_env, tmp_path, driver
):
    """Found by review: a URL naming a driver this install lacks passed the check and failed
    on the first connection with a ModuleNotFoundError traceback."""
    password = "db-" + "password-canary"
    clean_env.setenv("DATABASE_URL", f"postgresql+{driver}://referral:{password}@db/referral")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(str(tmp_path))
    assert raised.value.detail == (
        "DATABASE_URL names a database driver that is not installed "
        "(use postgresql:// or postgresql+psycopg://)"
    )
    assert password not in raised.value.detail
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_access_tokens_never_outlive_fifteen_minutes(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_ACCESS_TOKEN_SECONDS", "86400")
    settings = load_settings(str(tmp_path))
    assert settings["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds() == 900


def test_body_limit_from_environment(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_MAX_BODY_BYTES", "2048")
    assert load_settings(str(tmp_path))["MAX_CONTENT_LENGTH"] == 2048


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)
def test_database_url_normalisation(given, expected):
    assert normalise_database_url(given) == expected


@pytest.mark.parametrize("region", ["XX", "UK", "ukr", "+380", ""])
def test_an_unknown_phone_region_is_refused(clean_env, tmp_path, region):
    """Found by review: any value was accepted, and every national number (a search term or
    a stored phone) was then read as no number at all."""
    clean_env.setenv("REFERRAL_API_PHONE_REGION", region)
    with pytest.raises(ConfigurationError, match="REFERRAL_API_PHONE_REGION"):
        load_settings(str(tmp_path))


def test_a_known_phone_region_is_taken_in_any_case(clean_env, tmp_path):
    clean_env.setenv("REFERRAL_API_PHONE_REGION", "ua")
    assert load_settings(str(tmp_path))["PHONE_REGION"] == "UA"
