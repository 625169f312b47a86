"""Typed SQLAlchemy base, column types shared by every model, engine and session handling."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from time import monotonic
from typing import Any, ClassVar

from sqlalchemy import (
    DateTime,
    Engine,
    Enum,
    MetaData,
    Table,
    TypeDecorator,
    create_engine,
    event,
    exc,
)
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Stable constraint names, so migrations can drop or alter them on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model here is mapped to a Table (DeclarativeBase types it as any FromClause).
    __table__: ClassVar[Table]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """Application-generated primary keys: they are bound into ciphertexts' associated data."""
    return uuid.uuid4()


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every dialect (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def value_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    """Store an enum by value as VARCHAR with a CHECK constraint (portable, readable)."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


def make_engine(url: str, ping_after_idle: float = 1.0) -> Engine:
    """The app's engine. A pooled connection is pinged before use only when it has been idle
    for `ping_after_idle` seconds or more (0: before every use, SQLAlchemy's pre-ping)."""
    # hide_parameters: an SQL error logged or raised never carries bound values (which may be
    # e-mail addresses, hashes or ciphertext).
    kwargs: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": ping_after_idle <= 0}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, **kwargs)
    if ping_after_idle > 0:
        _ping_idle_connections(engine, ping_after_idle)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


_LAST_CHECKIN = "referral_api.last_checkin"


def _ping_idle_connections(engine: Engine, after_idle: float) -> None:
    """Ping a pooled connection at checkout only if it sat idle `after_idle` seconds or more.

    SQLAlchemy's pre-ping costs a round trip on every checkout, i.e. on every request. A
    connection checked in a moment ago by the previous request is very unlikely to be dead;
    one that sat idle (through a database restart, a failover, an idle timeout) is the kind
    pre-ping exists for. A connection that dies within `after_idle` seconds of its last use
    fails its first statement instead: SQLAlchemy then invalidates it and every older
    connection of the pool, and the request is answered 503 with Retry-After (errors.py);
    its transaction is lost with the connection, uncommitted unless the connection died
    during COMMIT itself. Failing a ping raises DisconnectionError, which makes the pool
    discard the connection and check out (or open) another one, as pre-ping does.
    """
    dialect = engine.dialect

    def stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_CHECKIN] = monotonic()

    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_CHECKIN)
        if last is None or monotonic() - last < after_idle:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            raise exc.DisconnectionError("pooled connection failed its ping") from error

    event.listen(engine, "checkin", stamp)
    event.listen(engine, "checkout", ping_if_idle)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy issue BEGIN itself so "BEGIN IMMEDIATE" can serialise writers.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # SQLite's deferred BEGIN lets two writers read the same version and then one fails on
    # upgrade with "database is locked"; IMMEDIATE makes the second wait instead.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """For CLI commands and jobs: one transaction, committed on success."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
