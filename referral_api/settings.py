"""Configuration from the environment.

In development, missing secrets are generated once in the instance folder (with a loud
warning). In production their absence stops start-up: a default secret that works is a
secret every attacker knows.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from referral_api.exceptions import ConfigurationError

log = logging.getLogger(__name__)

ENVIRONMENTS = ("development", "production", "testing")


# A century: the longest period a setting may name (in its unit: seconds, or days for the
# retention periods), and the bound of every other integer setting. "Keep for ever" typed as
# 999999 days overflowed the date arithmetic of the retention report and job (a 500, and
# `retention run` stopped before its purges).
_CENTURY_DAYS = 100 * 366
_CENTURY_SECONDS = _CENTURY_DAYS * 86400


def _env_int(name: str, default: int, minimum: int = 1, maximum: int = _CENTURY_SECONDS) -> int:
    """An integer setting, at least `minimum`: every count, size, period and lifetime is
    positive unless zero means something (no cache, no delay, no proxy). A retention period
    of 0 or -1 days would make every closed case due at once. At most `maximum`."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be an integer") from exc
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}")
    if value > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum}")
    return value


def _read_or_create_secret(path: Path) -> str:
    """Return the secret stored at *path*, creating it (mode 0600) on first use."""
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(value)
    log.warning(
        "DEVELOPMENT ONLY: generated a JWT signing secret at %s. "
        "Set REFERRAL_API_JWT_SECRET in production.",
        path,
    )
    return value


AUDIT_SEALERS = ("thread", "external")


def _phone_region() -> str:
    """The region national phone numbers are read in: a region libphonenumber knows (an
    unknown one was accepted, and every national number read as no number at all)."""
    import phonenumbers

    region = os.environ.get("REFERRAL_API_PHONE_REGION", "GB").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            "REFERRAL_API_PHONE_REGION must be a region code libphonenumber knows (e.g. GB, UA)"
        )
    return region


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}")
    return value


def load_settings(instance_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from the environment plus explicit overrides."""
    overrides = dict(overrides or {})
    env = overrides.get("ENV_NAME") or os.environ.get("REFERRAL_API_ENV", "development")
    if env not in ENVIRONMENTS:
        raise ConfigurationError(f"REFERRAL_API_ENV must be one of {', '.join(ENVIRONMENTS)}")
    instance = Path(instance_path)

    database_url = overrides.get("DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not database_url:
        if env == "production":
            raise ConfigurationError("DATABASE_URL is required in production")
        database_url = f"sqlite:///{instance / 'referral_api.db'}"
    database_url = normalise_database_url(database_url)
    _check_database_url(database_url)

    jwt_secret = overrides.get("JWT_SECRET_KEY") or os.environ.get("REFERRAL_API_JWT_SECRET")
    if not jwt_secret:
        if env == "production":
            raise ConfigurationError("REFERRAL_API_JWT_SECRET is required in production")
        jwt_secret = _read_or_create_secret(instance / "jwt-secret")
    if env == "production":
        _refuse_weak_secret(jwt_secret)

    keyring_path = overrides.get("KEYRING_PATH") or os.environ.get("REFERRAL_API_KEYRING")
    if not keyring_path:
        if env == "production":
            raise ConfigurationError("REFERRAL_API_KEYRING is required in production")
        keyring_path = str(instance / "keyring.json")

    cors = os.environ.get("REFERRAL_API_CORS_ORIGINS", "")
    cors_origins = [origin.strip() for origin in cors.split(",") if origin.strip()]

    config: dict[str, Any] = {
        "ENV_NAME": env,
        "DATABASE_URL": database_url,
        "KEYRING_PATH": keyring_path,
        "KEYRING_CREATE_IF_MISSING": env != "production",
        "CORS_ORIGINS": cors_origins,
        # Request bodies above this size are refused with 413 before they are parsed.
        "MAX_CONTENT_LENGTH": _env_int("REFERRAL_API_MAX_BODY_BYTES", 1024 * 1024),
        # flask-jwt-extended
        "JWT_SECRET_KEY": jwt_secret,
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        "JWT_TOKEN_LOCATION": ["headers"],
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(
            seconds=min(_env_int("REFERRAL_API_ACCESS_TOKEN_SECONDS", 900), 900)
        ),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(
            seconds=_env_int("REFERRAL_API_REFRESH_TOKEN_SECONDS", 12 * 3600)
        ),
        "JWT_ERROR_MESSAGE_KEY": "detail",
        # Tokens travel in the Authorization header only, never cookies: no CSRF claim.
        "JWT_COOKIE_CSRF_PROTECT": False,
        # Login throttling: per account and per client address.
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": _env_int("REFERRAL_API_LOGIN_MAX_FAILURES", 5),
        "LOGIN_MAX_FAILURES_PER_ADDRESS": _env_int("REFERRAL_API_LOGIN_MAX_FAILURES_ADDR", 20),
        "LOGIN_FAILURE_WINDOW_SECONDS": _env_int("REFERRAL_API_LOGIN_WINDOW_SECONDS", 900),
        "LOGIN_LOCKOUT_SECONDS": _env_int("REFERRAL_API_LOGIN_LOCKOUT_SECONDS", 300),
        # Argon2id parameters (RFC 9106 second recommended option by default).
        "ARGON2_TIME_COST": _env_int("REFERRAL_API_ARGON2_TIME_COST", 3),
        "ARGON2_MEMORY_COST": _env_int("REFERRAL_API_ARGON2_MEMORY_KIB", 65536),
        "ARGON2_PARALLELISM": _env_int("REFERRAL_API_ARGON2_PARALLELISM", 4),
        # Encryption and search.
        "PHONE_REGION": _phone_region(),
        "BLIND_INDEX_EXPECTED_CASES": _env_int("REFERRAL_API_INDEX_EXPECTED_CASES", 1_000_000),
        "KEY_CACHE_SECONDS": _env_int("REFERRAL_API_KEY_CACHE_SECONDS", 300, minimum=0),
        # Retention after closure, per case type (days); `referral-api retention run`.
        "RETENTION_POLICY": {
            "thb": {
                "closed": _env_int(
                    "REFERRAL_API_RETENTION_DAYS_THB", 5 * 365, maximum=_CENTURY_DAYS
                )
            },
            "gbv": {
                "closed": _env_int(
                    "REFERRAL_API_RETENTION_DAYS_GBV", 5 * 365, maximum=_CENTURY_DAYS
                )
            },
        },
        "EXPORT_TTL_SECONDS": _env_int("REFERRAL_API_EXPORT_TTL_SECONDS", 24 * 3600),
        # How long an Idempotency-Key is honoured; `retention run --apply` deletes older
        # records and the responses stored with them.
        "IDEMPOTENCY_KEY_TTL_SECONDS": _env_int(
            "REFERRAL_API_IDEMPOTENCY_KEY_SECONDS", 7 * 24 * 3600, minimum=3600
        ),
        # Consent notice versions in use (the DPO quality report flags any other).
        "KNOWN_NOTICE_VERSIONS": [
            v.strip()
            for v in os.environ.get("REFERRAL_API_NOTICE_VERSIONS", "").split(",")
            if v.strip()
        ],
        # Each worker's sealing thread chains new audit rows this long after a request
        # wrote them, and in any case every AUDIT_SEAL_INTERVAL_SECONDS (0: no thread; each
        # audited response seals after it is sent).
        "AUDIT_SEAL_DELAY_SECONDS": _env_int("REFERRAL_API_AUDIT_SEAL_DELAY_MS", 100, minimum=0)
        / 1000,
        # 0: no sealing thread, each audited response seals its own rows (docs/audit.md).
        "AUDIT_SEAL_INTERVAL_SECONDS": _env_int("REFERRAL_API_AUDIT_SEAL_SECONDS", 5, minimum=0),
        # `thread`: each worker seals (above); `external`: workers never seal, a separate
        # `referral-api audit seal --follow` process does (docs/audit.md).
        "AUDIT_SEALER": _choice("REFERRAL_API_AUDIT_SEALER", AUDIT_SEALERS, "thread"),
        # /ready reports audit sealing `behind` when a row waited longer than this for its
        # seal (no sealer running, or every round failing).
        "AUDIT_SEALING_LAG_ALERT_SECONDS": _env_int("REFERRAL_API_AUDIT_SEALING_ALERT_SECONDS", 60),
        # A pooled database connection idle this long is pinged before use (0: before every
        # use); see db.make_engine.
        "DB_PING_AFTER_IDLE_SECONDS": _env_int(
            "REFERRAL_API_DB_PING_AFTER_IDLE_MS", 1000, minimum=0
        )
        / 1000,
        # Number of proxies in front of the app whose X-Forwarded-For may be trusted.
        "TRUSTED_PROXY_COUNT": _env_int("REFERRAL_API_TRUSTED_PROXIES", 0, minimum=0),
        # flask-smorest / OpenAPI
        "API_TITLE": "referral_api",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.1.0",
        "OPENAPI_URL_PREFIX": "/api/v1",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": "/api/v1/docs/assets/",
        "OPENAPI_SWAGGER_UI_CONFIG": {"persistAuthorization": False},
        "API_SPEC_OPTIONS": {
            "info": {
                "description": (
                    "Case management and consent-gated referrals for victims of trafficking "
                    "and gender-based violence. Every error is application/problem+json "
                    "(RFC 9457)."
                )
            },
        },
        "JSON_SORT_KEYS": False,
    }
    config.update(overrides)
    _check_cors_origins(config["CORS_ORIGINS"])
    if env == "production":
        _refuse_weak_production_settings(config)
    return config


# OWASP's floor for Argon2id (19 MiB, two passes): below it a stolen password hash is cheap
# to guess against. The defaults are RFC 9106's second recommended option (64 MiB, three).
MIN_ARGON2_MEMORY_KIB = 19 * 1024
MIN_ARGON2_TIME_COST = 2


# A production JWT secret: at least this long, and of at least this many bits by the estimate
# of `_estimated_bits` (`openssl rand -hex 32`: 256; `secrets.token_urlsafe(32)`: ~210; a
# random 32-character hex secret, `openssl rand -hex 16`: 96-128, as it shows 8-16 of the
# 16 digits; `password` repeated to 32 characters: 90).
MIN_SECRET_CHARACTERS = 32
MIN_SECRET_BITS = 96


def _estimated_bits(secret: str) -> float:
    """An upper bound of a secret's entropy: its length times log2 of the number of distinct
    characters in it. It cannot tell a random secret from a well-chosen phrase; it refuses
    the ones that are plainly not random (a character repeated, a short word repeated)."""
    return len(secret) * math.log2(len(set(secret))) if secret else 0.0


def _refuse_weak_secret(secret: str) -> None:
    """The JWT secret signs every token and keys the digests the database keeps (throttle
    names, idempotent bodies, cursors): a guessable one forges all of them."""
    if len(secret) < MIN_SECRET_CHARACTERS:
        raise ConfigurationError(
            f"REFERRAL_API_JWT_SECRET must be at least {MIN_SECRET_CHARACTERS} characters"
        )
    if _estimated_bits(secret) < MIN_SECRET_BITS:
        raise ConfigurationError(
            "REFERRAL_API_JWT_SECRET repeats too few distinct characters to be random; "
            "generate one, e.g. `openssl rand -hex 32`"
        )


def _refuse_weak_production_settings(config: dict[str, Any]) -> None:
    """Settings that work but weaken what production must hold: a database that cannot
    refuse changes to the audit log and cheap password hashes. (A wildcard origin is
    refused in every environment: `_check_cors_origins`.)"""
    if not str(config["DATABASE_URL"]).startswith("postgresql"):
        # SQLite serves development and the test suite: it has no roles or grants, and the
        # application's own connection could rewrite audit rows and then the chain's head.
        raise ConfigurationError(
            "DATABASE_URL must be a PostgreSQL database in production: only there does the "
            "database itself refuse changes to audit rows"
        )
    if config["ARGON2_MEMORY_COST"] < MIN_ARGON2_MEMORY_KIB:
        raise ConfigurationError(
            f"REFERRAL_API_ARGON2_MEMORY_KIB must be at least {MIN_ARGON2_MEMORY_KIB} in production"
        )
    if config["ARGON2_TIME_COST"] < MIN_ARGON2_TIME_COST:
        raise ConfigurationError(
            f"REFERRAL_API_ARGON2_TIME_COST must be at least {MIN_ARGON2_TIME_COST} in production"
        )


def _check_database_url(url: str) -> None:
    """Refuse a URL SQLAlchemy cannot parse or has no dialect for at start-up, not in the
    first command or request to connect. Neither the URL nor the parser's message (which
    quotes it) is shown: it may hold the database password."""
    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigurationError("DATABASE_URL is not a valid database URL") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        # `postgresql+psycopg2://`, `+asyncpg`: a traceback from the first connection.
        raise ConfigurationError(
            "DATABASE_URL names a database driver that is not installed "
            "(use postgresql:// or postgresql+psycopg://)"
        ) from None


# An origin as a browser sends it (RFC 6454): scheme, host name (or IPv4 address), optional
# port; nothing more. Not an IPv6 literal: its brackets would make flask-cors read it as a
# regular expression too.
_PLAIN_ORIGIN = re.compile(
    r"https?://[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
    r"(?::[0-9]{1,5})?",
    re.IGNORECASE,
)


def _check_cors_origins(origins: list[str]) -> None:
    """flask-cors reads an entry holding any of `* ? [ ] ( ) ^ $ \\` as a regular expression
    matched at the start only: `.*` granted every web page what `*` (refused) would, and
    `https://*.example.org` granted `https://xexample.org.attacker.net`. Only exact origins
    are accepted, in every environment: no pattern, no wildcard, no path."""
    for origin in origins:
        if not isinstance(origin, str) or not _PLAIN_ORIGIN.fullmatch(origin):
            raise ConfigurationError(
                "REFERRAL_API_CORS_ORIGINS must list exact origins such as "
                "https://app.example.org (http or https, a host name, an optional port; "
                f"no path, no pattern, not *): {origin!r} is not one"
            )


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL URLs given in the common short forms."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
