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
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from referral_api.access.categories import Category
from referral_api.crypto.fields import EncryptedField, EncryptedRecord
from referral_api.crypto.keys import CryptoContext, KeyService
from referral_api.db import Base, UTCDateTime, new_id, utcnow, value_enum

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

    # identity
    given_name = EncryptedField(C.IDENTITY)
    family_name = EncryptedField(C.IDENTITY)
    aliases = EncryptedField(C.IDENTITY)
    date_of_birth = EncryptedField(C.IDENTITY)
    sex = EncryptedField(C.IDENTITY)
    nationality = EncryptedField(C.IDENTITY)
    languages = EncryptedField(C.IDENTITY)
    documents = EncryptedField(C.IDENTITY)
    # contact
    phone = EncryptedField(C.CONTACT)
    email = EncryptedField(C.CONTACT)
    safe_contact_notes = EncryptedField(C.CONTACT)
    # location (safety-critical)
    address = EncryptedField(C.LOCATION)
    is_shelter = EncryptedField(C.LOCATION)
    # incident (coded classifications are encrypted like free text)
    gbv_type = EncryptedField(C.INCIDENT)
    exploitation_types = EncryptedField(C.INCIDENT)
    means_of_control = EncryptedField(C.INCIDENT)
    recruiter_relation = EncryptedField(C.INCIDENT)
    incident_date = EncryptedField(C.INCIDENT)
    incident_place = EncryptedField(C.INCIDENT)
    narrative = EncryptedField(C.INCIDENT)
    # health, psychosocial
    health_notes = EncryptedField(C.HEALTH)
    psychosocial_notes = EncryptedField(C.PSYCHOSOCIAL)
    # legal
    legal_status = EncryptedField(C.LEGAL)
    legal_proceedings = EncryptedField(C.LEGAL)
    lawyer = EncryptedField(C.LEGAL)
    # immigration
    residence_status = EncryptedField(C.IMMIGRATION)
    reflection_period_until = EncryptedField(C.IMMIGRATION)
    # needs
    needs_assessment = EncryptedField(C.NEEDS)
    service_plan = EncryptedField(C.NEEDS)

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        # The case list pages newest first within an organisation (keyset pagination).
        Index("ix_cases_org_created", "org_id", "created_at", "id"),
    )

    def crypto_case_id(self) -> uuid.UUID:
        return self.id

    def current_key_version(self, keys: KeyService) -> int:
        if self.key_version is None:
            keys.create_case_key(self.id, self.org_id, version=1)
            self.key_version = 1
        return self.key_version

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
        case = keys.session.get(Case, self.case_id)
        assert case is not None and case.key_version is not None  # noqa: S101
        return case.key_version


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
    connection.execute(
        _insert_from_arrays(),
        {f"{column}s": [entry[column] for entry in entries] for column in _INDEX_COLUMNS},
    )


@event.listens_for(Session, "after_soft_rollback")
def _forget_deferred_index_entries(session: Session, _previous: Any) -> None:
    # A failed flush: its cases were not inserted, so neither are their entries.
    session.info.pop(_DEFERRED_INDEX_ENTRIES, None)


def delete_index_entries(session: Session, case_id: uuid.UUID, **filters: Any) -> None:
    stmt = delete(CaseSearchIndex).where(CaseSearchIndex.case_id == case_id)
    for column, value in filters.items():
        stmt = stmt.where(getattr(CaseSearchIndex, column) == value)
    session.execute(stmt.execution_options(synchronize_session=False))
