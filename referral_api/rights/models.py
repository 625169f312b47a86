"""Data-subject rights: legal holds, erasure requests and their tombstones, subject-access
exports. Tombstones hold no personal data: ids, times, who, the legal basis and counts."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from referral_api.access.categories import Category
from referral_api.consent.models import _CaseKeyed
from referral_api.crypto.fields import EncryptedField
from referral_api.db import Base, UTCDateTime, new_id, utcnow, value_enum


class ErasureBasis(enum.StrEnum):
    """GDPR Art. 17(1) grounds, plus the retention schedule."""

    CONSENT_WITHDRAWN = "consent_withdrawn"  # 17(1)(b)
    NO_LONGER_NECESSARY = "no_longer_necessary"  # 17(1)(a)
    OBJECTION = "objection"  # 17(1)(c)
    UNLAWFUL_PROCESSING = "unlawful_processing"  # 17(1)(d)
    LEGAL_OBLIGATION = "legal_obligation"  # 17(1)(e)
    RETENTION_EXPIRED = "retention_expired"


class ErasureStatus(enum.StrEnum):
    PENDING = "pending"
    EXECUTED = "executed"
    REFUSED = "refused"


class LegalHold(_CaseKeyed, Base):
    __tablename__ = "legal_holds"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    placed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    reason = EncryptedField(Category.LEGAL)


class ErasureRequest(Base):
    __tablename__ = "erasure_requests"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    basis: Mapped[ErasureBasis] = mapped_column(value_enum(ErasureBasis, "basis"))
    status: Mapped[ErasureStatus] = mapped_column(value_enum(ErasureStatus, "status"))
    requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ErasureTombstone(Base):
    """What remains of an erased case: no personal data, and proof of what was destroyed."""

    __tablename__ = "erasure_tombstones"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    basis: Mapped[ErasureBasis] = mapped_column(value_enum(ErasureBasis, "basis"))
    requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    approved_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data_keys_destroyed: Mapped[int] = mapped_column(Integer)
    ciphertexts_cleared: Mapped[int] = mapped_column(Integer)
    index_entries_deleted: Mapped[int] = mapped_column(Integer)
    referrals_cancelled: Mapped[int] = mapped_column(Integer)
    # SHA-256 over the destroyed wrapped keys (sorted): proves which keys were destroyed
    # without keeping anything that could unwrap them.
    key_digest: Mapped[str] = mapped_column(String(64))


class SubjectExport(_CaseKeyed, Base):
    """An Art. 15/20 export, encrypted with the case key, downloadable once, expiring."""

    __tablename__ = "subject_exports"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    downloaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    document = EncryptedField(Category.IDENTITY)
    if TYPE_CHECKING:  # the ciphertext column EncryptedField adds (cleared once downloaded)
        document_ct: bytes | None
    reason = EncryptedField(Category.NEEDS)
