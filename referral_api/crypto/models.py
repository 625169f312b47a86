"""Wrapped keys. Nothing here is usable without the root key held by the key provider."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from referral_api.db import Base, UTCDateTime, utcnow


class OrgKey(Base):
    """Per-organisation key-encryption key, wrapped by the root key."""

    __tablename__ = "org_keys"

    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CaseKey(Base):
    """Per-case data key (DEK), wrapped by the owning organisation's key. Destroying every
    version of a case's DEK makes its ciphertexts unreadable (crypto-shredding)."""

    __tablename__ = "case_keys"
    # The organisation key a data key is wrapped under exists as long as the data key does:
    # deleting an old organisation-key version waits for a data key being wrapped under it
    # (the insert holds it) and then fails while one is (`rotation.rotate_org_keys`).
    __table_args__ = (
        ForeignKeyConstraint(
            ["org_id", "org_key_version"],
            ["org_keys.org_id", "org_keys.version"],
            ondelete="RESTRICT",
        ),
    )

    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    org_key_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IndexKey(Base):
    """Per-organisation blind-index key, wrapped by the root key.

    state: `active` (written and queried), `backfilling` (written, not yet queried);
    `retired` only inside the transaction that switches to the backfilled version, which
    deletes the retired key with its index rows (left from before that: deleted by the
    next switch).
    """

    __tablename__ = "index_keys"

    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_version: Mapped[int] = mapped_column(Integer, index=True)
    state: Mapped[str] = mapped_column(String(16), default="active")
    # JSON {field: bits}: the truncation plan is fixed per key version (re-planned on rotation).
    plan: Mapped[str] = mapped_column(String(400))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RotationJob(Base):
    """A long key-rotation sweep; an unfinished one is resumed by the next run."""

    __tablename__ = "key_rotation_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
