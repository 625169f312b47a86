"""Liveness and readiness probes (no authentication, no data)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import marshmallow as ma
from flask import current_app
from sqlalchemy import Engine, select, text, union
from sqlalchemy.exc import SQLAlchemyError

from referral_api.audit.models import AuditEvent
from referral_api.crypto.keyring import LocalKeyring
from referral_api.crypto.models import IndexKey, OrgKey
from referral_api.errors import problem_response
from referral_api.exceptions import ConfigurationError
from referral_api.extensions import db
from referral_api.migrate import current_revision, head_revision
from referral_api.smorest import Blueprint

blp = Blueprint("health", __name__, description="Probes")


class HealthSchema(ma.Schema):
    status = ma.fields.String()
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())


@blp.route("/health", methods=["GET"])
@blp.public
@blp.response(200, HealthSchema)
def health() -> dict[str, Any]:
    """Liveness: the process answers"""
    return {"status": "ok", "checks": {}}


# An audit row still unsealed after AUDIT_SEALING_LAG_ALERT_SECONDS means no sealer is running
# (a stopped `audit seal --follow` process) or every round fails: reported for alerting, not a
# reason to stop serving (rows are still written with what they record and are chained once a
# sealer runs again).
# Served by the partial index of unsealed rows: independent of the size of the log.
_OLDEST_UNSEALED = (
    select(AuditEvent.occurred_at).where(AuditEvent.seq.is_(None)).order_by(AuditEvent.id).limit(1)
)
# Reported, not required for readiness.
_INFORMATIONAL = frozenset({"audit_sealing"})


@blp.route("/ready", methods=["GET"])
@blp.public
@blp.response(200, HealthSchema)
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def ready() -> Any:
    """Readiness: database reachable, schema at the latest migration, keyring loadable and
    holding every root key version the stored keys are wrapped under (`keys`)

    Also reports `audit_sealing`: `behind` when an audit row has waited longer than
    REFERRAL_API_AUDIT_SEALING_ALERT_SECONDS (default 60) for its seal (is a sealer
    running?). That alone does not make the service unready.
    """
    checks: dict[str, str] = {}
    engine = db.engine_for(current_app)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        migrated = current_revision(engine) == head_revision()
        checks["migrations"] = "ok" if migrated else "behind"
        alert = timedelta(seconds=current_app.config["AUDIT_SEALING_LAG_ALERT_SECONDS"])
        checks["audit_sealing"] = _sealing(engine, alert) if migrated else "unknown"
    except SQLAlchemyError:
        checks.setdefault("database", "unreachable")
        checks.setdefault("migrations", "unknown")
        checks.setdefault("audit_sealing", "unknown")
    try:
        keyring = LocalKeyring.load(current_app.config["KEYRING_PATH"], create_if_missing=False)
        checks["keyring"] = "ok"
    except (ConfigurationError, OSError):
        checks["keyring"] = "unavailable"
    if checks["keyring"] == "ok" and checks["migrations"] == "ok":
        checks["keys"] = _keys_readable(engine, set(keyring.describe().versions))
    if all(value == "ok" for name, value in checks.items() if name not in _INFORMATIONAL):
        return {"status": "ok", "checks": checks}
    failing = ", ".join(
        f"{name}: {value}"
        for name, value in checks.items()
        if value != "ok" and name not in _INFORMATIONAL
    )
    return problem_response(503, detail=f"Not ready ({failing}).", checks=checks)


# The root key versions the organisations' keys are wrapped under (a few rows per
# organisation): all must be in the keyring, or no case of theirs can be read.
_ROOT_VERSIONS_IN_USE = union(
    select(OrgKey.root_version).distinct(), select(IndexKey.root_version).distinct()
)


def _keys_readable(engine: Engine, available: set[int]) -> str:
    """`unavailable` when a key is wrapped under a root version the keyring does not hold:
    a backup restored after `keys destroy-root`, or another deployment's keyring file. The
    keyring itself loads, so without this the service looked ready and answered every read
    with an error."""
    try:
        with engine.connect() as connection:
            in_use = set(connection.execute(_ROOT_VERSIONS_IN_USE).scalars())
    except SQLAlchemyError:
        return "unknown"
    return "ok" if in_use <= available else "unavailable"


def _sealing(engine: Engine, alert: timedelta) -> str:
    """`behind` if the first unsealed row (in id order, i.e. the order of sealing) is
    older than `alert`."""
    with engine.connect() as connection:
        oldest = connection.execute(_OLDEST_UNSEALED).scalar()
    return "behind" if oldest is not None and datetime.now(UTC) - oldest > alert else "ok"
