"""Append-only audit events, hash-chained in order by a sealing step."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from referral_api.db import Base, UTCDateTime, utcnow

_BIGINT = BigInteger().with_variant(Integer, "sqlite")


class AuditEvent(Base):
    """One access decision or change. Ids, codes and categories only: never personal values.

    Rows are inserted unsealed (seq, prev_hash, hash NULL) in the transaction of what they
    record; the sealer later assigns seq and the chained hash. On PostgreSQL a trigger
    refuses DELETE, TRUNCATE, and any UPDATE except sealing an unsealed row.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(_BIGINT, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    actor_role: Mapped[str | None] = mapped_column(String(32))
    acting_officer: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(48))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    case_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    categories: Mapped[str | None] = mapped_column(String(200))
    purpose: Mapped[str | None] = mapped_column(String(48))
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(64))
    legal_basis: Mapped[str | None] = mapped_column(String(400))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str | None] = mapped_column(Text)
    # Sealing columns (the only ones ever updated, once).
    seq: Mapped[int | None] = mapped_column(_BIGINT, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # The sealer looks for unsealed rows after every audited request: a partial index
        # keeps that lookup independent of the size of the log.
        Index(
            "ix_audit_events_unsealed",
            "id",
            postgresql_where=text("seq IS NULL"),
            sqlite_where=text("seq IS NULL"),
        ),
    )


class AuditChainHead(Base):
    """The chain's last sealed position: one row (id = 1), locked only by the sealer."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(_BIGINT, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
