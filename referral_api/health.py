"""Liveness and readiness probes (no authentication, no data)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from referral_api.crypto.keyring import LocalKeyring
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


@blp.route("/ready", methods=["GET"])
@blp.public
@blp.response(200, HealthSchema)
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def ready() -> Any:
    """Readiness: database reachable, schema at the latest migration, keyring loadable"""
    checks: dict[str, str] = {}
    engine = db.engine_for(current_app)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if current_revision(engine) == head_revision() else "behind"
    except SQLAlchemyError:
        checks["database"] = "unreachable"
        checks["migrations"] = "unknown"
    try:
        LocalKeyring.load(current_app.config["KEYRING_PATH"], create_if_missing=False)
        checks["keyring"] = "ok"
    except (ConfigurationError, OSError):
        checks["keyring"] = "unavailable"
    if all(value == "ok" for value in checks.values()):
        return {"status": "ok", "checks": checks}
    failing = ", ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
    return problem_response(503, detail=f"Not ready ({failing}).", checks=checks)
