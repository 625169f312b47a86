"""Extensions created without an app and bound in create_app (flask tutorial style)."""

from __future__ import annotations

from flask import Flask, g
from flask_jwt_extended import JWTManager
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from referral_api.auth.passwords import CredentialHasher
from referral_api.crypto.keys import CryptoContext
from referral_api.db import make_engine, make_session_factory
from referral_api.smorest import Api


class Database:
    """Engine per app, one session per request (on `g`), closed at teardown."""

    def __init__(self) -> None:
        self._apps: dict[int, tuple[Engine, sessionmaker[Session]]] = {}

    def init_app(self, app: Flask, crypto: CryptoContext) -> None:
        engine = make_engine(
            app.config["DATABASE_URL"], app.config.get("DB_PING_AFTER_IDLE_SECONDS", 1.0)
        )
        factory = make_session_factory(engine)
        # Every session of this app can encrypt and decrypt through the app's keyring.
        factory.configure(info={"crypto": crypto})
        app.extensions["referral_api.db"] = (engine, factory)
        app.extensions["referral_api.crypto"] = crypto
        app.teardown_appcontext(self._close_session)

    @staticmethod
    def _bound(app: Flask) -> tuple[Engine, sessionmaker[Session]]:
        return app.extensions["referral_api.db"]  # type: ignore[no-any-return]

    def engine_for(self, app: Flask) -> Engine:
        return self._bound(app)[0]

    def session_factory_for(self, app: Flask) -> sessionmaker[Session]:
        return self._bound(app)[1]

    @property
    def session(self) -> Session:
        from flask import current_app

        if "db_session" not in g:
            g.db_session = self._bound(current_app)[1]()
        return g.db_session  # type: ignore[no-any-return]

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            # Anything not committed by the route is rolled back here.
            session.close()


api = Api()
jwt = JWTManager()
db = Database()
hasher = CredentialHasher()


def init_hasher(app: Flask) -> None:
    hasher.configure(
        app.config["ARGON2_TIME_COST"],
        app.config["ARGON2_MEMORY_COST"],
        app.config["ARGON2_PARALLELISM"],
    )
