"""Case records, their notes and status history, and their blind-index entries.

Plaintext columns are pseudonymous and operational only (ids, random case code, owning
organisation, type, status, risk, assignee, NRM stage, timestamps, versions, flags). Every
personal field is an `EncryptedField` in exactly one data category.
"""

from __future__ import annotations

import enum
import functools
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Connection,
    ForeignKey,
    Index,
    Integer,
    String,
    Uuid,
    bindparam,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import set_committed_value

from referral_api.access.categories import Category
from referral_api.crypto.fields import EncryptedField, EncryptedRecord
from referral_api.crypto.keys import CryptoContext, KeyService
from referral_api.crypto.models import CaseKey
from referral_api.db import Base, UTCDateTime, new_id, utcnow, value_enum
from referral_api.exceptions import Gone, ProcessingRestricted

C = Category


class CaseType(enum.StrEnum):
    THB = "thb"
    GBV = "gbv"


class CaseStatus(enum.StrEnum):
    OPEN = "open"
    ACTIVE = "active"
    CLOSED = "closed"


class RiskLevel(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class NrmStage(enum.StrEnum):
    """National referral mechanism stages (pseudonymous, operational)."""

    IDENTIFIED = "identified"
    REFLECTION_PERIOD = "reflection_period"
    ASSISTANCE = "assistance"
    INTEGRATION = "integration"
    RETURN = "return"
    CLOSED = "closed"


class Case(EncryptedRecord, Base):
    __tablename__ = "cases"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_code: Mapped[str] = mapped_column(String(16), unique=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    case_type: Mapped[CaseType] = mapped_column(value_enum(CaseType, "case_type"))
    status: Mapped[CaseStatus] = mapped_column(value_enum(CaseStatus, "case_status"))
    status_reason: Mapped[str | None] = mapped_column(String(48))
    risk_level: Mapped[RiskLevel] = mapped_column(value_enum(RiskLevel, "risk_level"))
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    nrm_stage: Mapped[NrmStage] = mapped_column(value_enum(NrmStage, "nrm_stage"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    key_version: Mapped[int | None] = mapped_column(Integer)
    restricted: Mapped[bool] = mapped_column(Boolean, default=False)
    erased: Mapped[bool] = mapped_column(Boolean, default=False)

    # One ciphertext column per data category (`crypto.fields`); the incident category's
    # coded classifications apart from its free text, so statistics decrypt codes only.
    # identity
    given_name = EncryptedField(C.IDENTITY, stored_in="identity")
    family_name = EncryptedField(C.IDENTITY, stored_in="identity")
    aliases = EncryptedField(C.IDENTITY, stored_in="identity")
    date_of_birth = EncryptedField(C.IDENTITY, stored_in="identity")
    sex = EncryptedField(C.IDENTITY, stored_in="identity")
    nationality = EncryptedField(C.IDENTITY, stored_in="identity")
    languages = EncryptedField(C.IDENTITY, stored_in="identity")
    documents = EncryptedField(C.IDENTITY, stored_in="identity")
    # contact
    phone = EncryptedField(C.CONTACT, stored_in="contact")
    email = EncryptedField(C.CONTACT, stored_in="contact")
    safe_contact_notes = EncryptedField(C.CONTACT, stored_in="contact")
    # location (safety-critical)
    address = EncryptedField(C.LOCATION, stored_in="location")
    is_shelter = EncryptedField(C.LOCATION, stored_in="location")
    # incident (coded classifications are encrypted like free text)
    gbv_type = EncryptedField(C.INCIDENT, stored_in="incident_codes")
    exploitation_types = EncryptedField(C.INCIDENT, stored_in="incident_codes")
    means_of_control = EncryptedField(C.INCIDENT, stored_in="incident_codes")
    recruiter_relation = EncryptedField(C.INCIDENT, stored_in="incident_codes")
    incident_date = EncryptedField(C.INCIDENT, stored_in="incident")
    incident_place = EncryptedField(C.INCIDENT, stored_in="incident")
    narrative = EncryptedField(C.INCIDENT, stored_in="incident")
    # health, psychosocial
    health_notes = EncryptedField(C.HEALTH, stored_in="health")
    psychosocial_notes = EncryptedField(C.PSYCHOSOCIAL, stored_in="psychosocial")
    # legal
    legal_status = EncryptedField(C.LEGAL, stored_in="legal")
    legal_proceedings = EncryptedField(C.LEGAL, stored_in="legal")
    lawyer = EncryptedField(C.LEGAL, stored_in="legal")
    # immigration
    residence_status = EncryptedField(C.IMMIGRATION, stored_in="immigration")
    reflection_period_until = EncryptedField(C.IMMIGRATION, stored_in="immigration")
    # needs
    needs_assessment = EncryptedField(C.NEEDS, stored_in="needs")
    service_plan = EncryptedField(C.NEEDS, stored_in="needs")

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        # The case list pages newest first within an organisation (keyset pagination).
        Index("ix_cases_org_created", "org_id", "created_at", "id"),
        # The few erased cases, which DPO reports leave out (migration 0014).
        Index(
            "ix_cases_erased", "id", postgresql_where=text("erased"), sqlite_where=text("erased")
        ),
    )

    def crypto_case_id(self) -> uuid.UUID:
        return self.id

    def current_key_version(self, keys: KeyService) -> int:
        if self.key_version is None:
            keys.create_case_key(self.id, self.org_id, version=1)
            self.key_version = 1
            return 1
        if not sa_inspect(self).persistent:
            return self.key_version  # being made (insert_cases): no one else can see it
        # Read again under the row's lock, not the version loaded with the case: a key
        # sweep may have moved the case to a new key (and deleted the old one) since, and
        # it leaves the row's `version` alone, so nothing else would stop a write under
        # the deleted key.
        version = case_key_version(keys.session, self.id)
        if version != self.key_version:
            set_committed_value(self, "key_version", version)
        return version

    def after_encrypt(self, session: Session, crypto: CryptoContext, changed: set[str]) -> None:
        from referral_api.cases.search import INDEXED_SOURCE_FIELDS, refresh_blind_index

        if changed & INDEXED_SOURCE_FIELDS:
            refresh_blind_index(session, crypto, self)


class CaseNote(EncryptedRecord, Base):
    """A timeline entry. Its category decides who may read it, like a case field."""

    __tablename__ = "case_notes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    author_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    category: Mapped[Category] = mapped_column(value_enum(Category, "category"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    text = EncryptedField(C.NEEDS)  # the note's own `category` governs access, not this one

    def crypto_case_id(self) -> uuid.UUID:
        return self.case_id

    def current_key_version(self, keys: KeyService) -> int:
        return case_key_version(keys.session, self.case_id)


# Cases this transaction's work must find processable (GDPR Art. 18) when it writes, and
# those it acts on in a way a restriction allows (withdrawing consent, stopping a referral,
# holds, erasure, export): see `case_key_version`. Forgotten at the end of the transaction.
_MUST_BE_PROCESSABLE = "_ra_must_be_processable"
_ALLOWED_RESTRICTED = "_ra_allowed_while_restricted"


def must_be_processable(session: Session, case_id: uuid.UUID, allowed: bool = False) -> None:
    """Record that the work just authorised on the case needs it unrestricted (or, with
    `allowed`, is allowed while restricted)."""
    session.info.setdefault(_ALLOWED_RESTRICTED if allowed else _MUST_BE_PROCESSABLE, set()).add(
        case_id
    )


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_processable(session: Session) -> None:
    session.info.pop(_MUST_BE_PROCESSABLE, None)
    session.info.pop(_ALLOWED_RESTRICTED, None)


def recheck_case(session: Session, case_id: uuid.UUID) -> None:
    """For work on a stored case that seals nothing under its key (and so never reaches
    `case_key_version` by itself): the same re-check under the case row's lock — 410 when it
    was erased meanwhile, 403 when restricted (the work needs it processable)."""
    must_be_processable(session, case_id)
    case_key_version(session, case_id)


def _refused_as_restricted(session: Session, case_id: uuid.UUID) -> bool:
    return case_id in session.info.get(_MUST_BE_PROCESSABLE, ()) and case_id not in (
        session.info.get(_ALLOWED_RESTRICTED, ())
    )


def case_key_version(session: Session, case_id: uuid.UUID) -> int:
    """The data-key version a new ciphertext of the case's records goes under. For a case
    already stored, read now with a key-share lock on its row (PostgreSQL; SQLite runs one
    writer at a time): a case-key sweep holds the row FOR UPDATE while it re-encrypts and
    deletes the old version, so a writer waits for it and then sees the new version, and
    never commits a ciphertext under a key that is gone. Other writers of the case (key
    share is taken by every foreign-key check and is compatible with updates of non-key
    columns) are not held up. (SQLAlchemy renders `key_share=True` alone as FOR NO KEY
    UPDATE: encrypted writes of one case take turns on its row, which is also what orders
    two withdrawals of different consents of the case.)

    A case erased meanwhile (its erasure committed while this writer waited on the row)
    has no key any more: 410, as for a case already erased when the request began. One
    restricted meanwhile (GDPR Art. 18; the restriction is an update of the row, so it
    commits either before this lock or after this writer) refuses work authorised as
    needing it processable (`must_be_processable`): 403, as for a case already restricted."""
    with session.no_autoflush:  # asked while sealing: what is pending is being sealed
        case = session.get(Case, case_id)
        assert case is not None  # noqa: S101 - the record's foreign key
        if sa_inspect(case).pending:
            assert case.key_version is not None  # noqa: S101 - set when the case is made
            return case.key_version  # created in this transaction: no one else can see it
        version, restricted = session.execute(
            select(Case.key_version, Case.restricted)
            .where(Case.id == case_id)
            .with_for_update(key_share=True)
        ).one()
    if version is None:
        raise Gone.case_erased(case_id)
    if restricted and _refused_as_restricted(session, case_id):
        raise ProcessingRestricted.case_restricted(case_id)
    return int(version)


class CaseStatusChange(Base):
    """History of status changes; reasons are codes, never free text (no personal data)."""

    __tablename__ = "case_status_changes"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    from_status: Mapped[CaseStatus | None] = mapped_column(value_enum(CaseStatus, "from_status"))
    to_status: Mapped[CaseStatus] = mapped_column(value_enum(CaseStatus, "to_status"))
    reason: Mapped[str | None] = mapped_column(String(48))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CaseSearchIndex(Base):
    """Blind-index entries: (org, field, index-key version, truncated HMAC) → case."""

    __tablename__ = "case_search_index"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    field: Mapped[str] = mapped_column(String(24))
    key_version: Mapped[int] = mapped_column(Integer)
    value: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_case_search_index_lookup", "org_id", "field", "key_version", "value"),
    )


_DEFERRED_INDEX_ENTRIES = "_ra_index_entries"


def add_index_entries(session: Session, entries: list[dict[str, Any]]) -> None:
    """Add blind-index entries (column values). Written by the encryption hook inside a
    flush, they are inserted with one statement once that flush has inserted their cases:
    as ORM objects (~7 per case) each would be built, tracked and inserted with RETURNING
    of its generated id, a quarter of the CPU of seeding or creating a case. Outside a
    flush (an index-key backfill) they are ordinary ORM objects."""
    if not entries:
        return
    # Session has no public "inside a flush" flag.
    if session._flushing:
        session.info.setdefault(_DEFERRED_INDEX_ENTRIES, []).extend(entries)
    else:
        session.add_all([CaseSearchIndex(**entry) for entry in entries])


@event.listens_for(Session, "after_flush")
def _insert_deferred_index_entries(session: Session, _flush_context: Any) -> None:
    entries = session.info.pop(_DEFERRED_INDEX_ENTRIES, None)
    if entries:
        _insert_index_entries(session.connection(), entries)


_INDEX_COLUMNS = ("org_id", "case_id", "field", "key_version", "value")
_INDEX_ARRAY_TYPES = (Uuid, Uuid, String, Integer, BigInteger)


@functools.cache
def _insert_from_arrays() -> Any:
    """INSERT … SELECT FROM unnest(five arrays), built once (the arrays are its parameters):
    one round trip and one cached statement per flush (an executemany is a statement per
    row, even pipelined; a VALUES list is a new statement to parse for every number of
    rows)."""
    source = (
        func.unnest(
            *(
                bindparam(f"{column}s", type_=ARRAY(type_))
                for column, type_ in zip(_INDEX_COLUMNS, _INDEX_ARRAY_TYPES, strict=True)
            )
        )
        .table_valued(*_INDEX_COLUMNS)
        .render_derived(name="entries")
    )
    return insert(CaseSearchIndex).from_select(_INDEX_COLUMNS, select(*source.c))


def _insert_index_entries(connection: Connection, entries: list[dict[str, Any]]) -> None:
    if connection.dialect.name != "postgresql":
        connection.execute(insert(CaseSearchIndex), entries)
        return
    connection.execute(_insert_from_arrays(), _index_arrays(entries))


def _index_arrays(entries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The parameters of `_insert_from_arrays`: one array per column."""
    return {f"{column}s": [entry[column] for entry in entries] for column in _INDEX_COLUMNS}


@functools.cache
def _case_columns() -> tuple[tuple[str, str, Any], ...]:
    """(column name, attribute name, column default) of every column of `cases` a new case
    is written in (not the per-field ciphertext columns of formats 1 to 3)."""
    legacy = {f.legacy_attr for f in Case.__encrypted_fields__.values()}
    return tuple(
        (prop.columns[0].key, prop.key, prop.columns[0].default)
        for prop in Case.__mapper__.column_attrs
        if prop.key not in legacy
    )


def _case_row(case: Case) -> dict[str, Any]:
    """A new case's column values; a column left unset takes its Python-side default, on the
    instance too (the response shows `created_at`, the ETag `version`)."""
    row = {}
    for column, attribute, default in _case_columns():
        value = getattr(case, attribute)
        if value is None and default is not None:
            value = default.arg if default.is_scalar else default.arg(None)
            setattr(case, attribute, value)
        row[column] = value
    return row


def insert_cases(
    session: Session,
    cases: list[Case],
    *,
    actor_id: uuid.UUID | None,
    audit_row: dict[str, Any] | None = None,
) -> None:
    """Insert new cases with Core, not the unit of work: for each case a new data key (its
    first version), every declared field encrypted under it (null ones too), its
    blind-index entries under every index-key version written and its first status-history
    row (by `actor_id`), and `audit_row` (from `audit.row`) if given. On PostgreSQL one case
    is one statement (the inserts as data-modifying CTEs: foreign keys are checked at its
    end); otherwise one INSERT per table for the batch, cases first.

    The unit of work does the same through the before-flush hook (a `Case` added to a
    session still gets it), but builds, tracks and flushes a `Case` and a `CaseKey` object
    and sends four statements: a `POST /cases` cost 3.1 to 3.5 ms of CPU that way, 2.5 to 2.8 ms
    this way (bench/README.md). The instances stay transient (outside the session), their
    plaintext cached for the response."""
    from referral_api.audit import service as audit
    from referral_api.cases.search import written_index_entries
    from referral_api.crypto.fields import crypto_of, seal_new

    if not cases:
        return
    crypto = crypto_of(session)
    keys = crypto.keys(session)
    case_rows, key_rows, history_rows, index_rows = [], [], [], []
    for case in cases:
        if case.id is None:
            case.id = new_id()  # bound into every ciphertext: needed before sealing
        key_rows.append(keys.new_case_key(case.id, case.org_id, version=1))
        case.key_version = 1
        seal_new(keys, case)
        index_rows += written_index_entries(keys, crypto, case)
        case_rows.append(_case_row(case))
        history_rows.append(
            {
                "id": new_id(),
                "case_id": case.id,
                "from_status": None,
                "to_status": case.status,
                "reason": None,
                "actor_id": actor_id,
                "created_at": case.created_at,
            }
        )
    connection = session.connection()
    one = cases[0]
    if (
        connection.dialect.name == "postgresql"
        and len(cases) == 1
        and all(e["case_id"] == one.id and e["org_id"] == one.org_id for e in index_rows)
    ):
        parameters = {
            **_prefixed("case", case_rows[0]),
            **_prefixed("key", key_rows[0]),
            **_prefixed("history", history_rows[0]),
            **{
                f"entry_{column}s": [entry[column] for entry in index_rows]
                for column in _ENTRY_COLUMNS
            },
        }
        if audit_row is not None:
            parameters["audit_row"] = audit.row_json(audit_row)
        connection.execute(_insert_one_case(audit_row is not None), parameters)
    else:
        connection.execute(insert(Case.__table__), case_rows)
        connection.execute(insert(CaseKey.__table__), key_rows)
        connection.execute(insert(CaseStatusChange.__table__), history_rows)
        if index_rows:
            _insert_index_entries(connection, index_rows)
        if audit_row is not None:
            audit.insert_rows(session, [audit_row])
    if audit_row is not None:
        audit.mark_written(session)


def _prefixed(prefix: str, row: dict[str, Any], leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f"{prefix}_{column}": value for column, value in row.items() if column not in leave_out}


def _parameters(table: Any, prefix: str, only: Any = None) -> dict[str, Any]:
    """{column: the parameter prefix_column} for every column of `table` (or those named in
    `only`)."""
    return {
        c.key: bindparam(f"{prefix}_{c.key}", type_=c.type)
        for c in table.c
        if only is None or c.key in only
    }


# A case's own blind-index entries: the case's id and organisation are its parameters.
_ENTRY_COLUMNS = ("field", "key_version", "value")


@functools.cache
def _insert_one_case(with_audit_row: bool) -> Any:
    """PostgreSQL: a case, its data key, its first status-history row and its blind-index
    entries in one statement (data-modifying CTEs), built once. Its parameters stay under
    psycopg's limits for caching the statement's conversion (50 parameters, 4,096 bytes of
    SQL; past them it parses the SQL again every time), and array parameters are few: psycopg
    dumps an array element by element in Python (where one bytea, uuid or text parameter is
    dumped in C), so the entries share the case's id and organisation parameters and only
    their field, key version and value travel as arrays. `with_audit_row`: the audit row of
    the creation too, as one JSON parameter (its 17 columns would pass the 50)."""
    case_values = _parameters(Case.__table__, "case", {c for c, _, _ in _case_columns()})
    entries = (
        func.unnest(
            *(
                bindparam(f"entry_{column}s", type_=ARRAY(type_))
                for column, type_ in zip(_ENTRY_COLUMNS, (String, Integer, BigInteger), strict=True)
            )
        )
        .table_valued(*_ENTRY_COLUMNS)
        .render_derived(name="entries")
    )
    new_entries = insert(CaseSearchIndex).from_select(
        _INDEX_COLUMNS,
        select(case_values["org_id"], case_values["id"], *entries.c),
    )
    new_case = insert(Case.__table__).from_select(list(case_values), select(*case_values.values()))
    ctes = [
        new_case.cte("new_case"),
        insert(CaseKey.__table__).values(_parameters(CaseKey.__table__, "key")).cte("new_key"),
        insert(CaseStatusChange.__table__)
        .values(_parameters(CaseStatusChange.__table__, "history"))
        .cte("new_history"),
    ]
    if with_audit_row:
        from referral_api.audit.service import insert_from_json

        ctes.append(insert_from_json("audit_row").cte("new_audit"))
    return new_entries.add_cte(*ctes)


@event.listens_for(Session, "after_soft_rollback")
def _forget_deferred_index_entries(session: Session, _previous: Any) -> None:
    # A failed flush: its cases were not inserted, so neither are their entries.
    session.info.pop(_DEFERRED_INDEX_ENTRIES, None)


def delete_index_entries(session: Session, case_id: uuid.UUID, **filters: Any) -> None:
    stmt = delete(CaseSearchIndex).where(CaseSearchIndex.case_id == case_id)
    for column, value in filters.items():
        stmt = stmt.where(getattr(CaseSearchIndex, column) == value)
    session.execute(stmt.execution_options(synchronize_session=False))
