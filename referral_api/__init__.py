"""referral_api: victim-oriented case management and consent-gated referrals."""

from __future__ import annotations

from typing import Any

from flask import Flask, send_from_directory
from werkzeug.middleware.proxy_fix import ProxyFix

__all__ = ["create_app"]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    import os

    from referral_api import features
    from referral_api.audit import hooks as audit_hooks
    from referral_api.auth import access_tokens
    from referral_api.crypto.keyring import LocalKeyring
    from referral_api.errors import register_error_handlers
    from referral_api.extensions import api, db, init_hasher, jwt
    from referral_api.jsonio import OrjsonProvider
    from referral_api.jwt_errors import register_jwt_callbacks
    from referral_api.observability import configure_logging, init_request_hooks
    from referral_api.settings import load_settings

    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.json = OrjsonProvider(app)
    os.makedirs(app.instance_path, mode=0o700, exist_ok=True)
    app.config.update(load_settings(app.instance_path, config))
    configure_logging(app)

    if app.config["TRUSTED_PROXY_COUNT"]:
        proxies = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]

    # Fail at start-up, not at the first request, when the keyring is missing in production.
    keyring = LocalKeyring.load(
        app.config["KEYRING_PATH"], create_if_missing=app.config["KEYRING_CREATE_IF_MISSING"]
    )
    db.init_app(app, crypto_context(app.config, keyring))
    jwt.init_app(app)
    register_jwt_callbacks(jwt)
    access_tokens.init_app(app)
    init_hasher(app)
    init_request_hooks(app)
    audit_hooks.init_app(app)
    _init_cors(app)

    api.init_app(app)
    for blueprint in features.BLUEPRINTS:
        api.register_blueprint(blueprint)
    register_error_handlers(app)
    _serve_docs_assets(app)

    from referral_api.cli import register_commands

    register_commands(app)
    return app


def crypto_context(config: Any, keyring: Any) -> Any:
    from referral_api.cases.search import default_plan
    from referral_api.crypto.keys import CryptoContext, KeyCache

    plan = default_plan(config.get("BLIND_INDEX_EXPECTED_CASES", 1_000_000))
    plan.update(config.get("BLIND_INDEX_BITS") or {})
    return CryptoContext(
        provider=keyring,
        cache=KeyCache(ttl_seconds=config.get("KEY_CACHE_SECONDS", 300)),
        index_bits=plan,
        phone_region=config.get("PHONE_REGION", "GB"),
    )


def _init_cors(app: Flask) -> None:
    from flask_cors import CORS

    origins = app.config["CORS_ORIGINS"]
    if not origins:
        return  # no cross-origin access unless configured
    CORS(
        app,
        resources={r"/api/v1/*": {"origins": origins}},
        allow_headers=[
            "Authorization",
            "Content-Type",
            "If-Match",
            "Idempotency-Key",
            "X-Acting-Officer",
            "X-Request-ID",
        ],
        # Idempotent-Replayed: a web front end retrying a POST must tell a replay from a
        # first answer (and not act twice on it).
        expose_headers=[
            "ETag",
            "Link",
            "Retry-After",
            "Location",
            "X-Request-ID",
            "Idempotent-Replayed",
        ],
        methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        supports_credentials=False,
        max_age=600,
    )


def _serve_docs_assets(app: Flask) -> None:
    """Swagger UI's files from the installed flask-swagger-ui package: no CDN, works offline."""
    import os

    import flask_swagger_ui

    assets = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")

    def docs_asset(filename: str) -> Any:
        return send_from_directory(assets, filename, max_age=3600)

    docs_asset.__public__ = True  # type: ignore[attr-defined]
    app.add_url_rule("/api/v1/docs/assets/<path:filename>", "docs_asset", docs_asset)
