"""Referrals, their history, disclosures, messages and notifications.

Plaintext columns are ids, codes and times. The message to the receiver, messages, transition
notes and override notes are encrypted under the case's key.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from referral_api.access.categories import Category
from referral_api.consent.models import _CaseKeyed
from referral_api.consent.vocabulary import Purpose
from referral_api.crypto.fields import EncryptedField
from referral_api.db import Base, UTCDateTime, new_id, utcnow, value_enum
from referral_api.directory import models as _directory  # noqa: F401 - FK target
from referral_api.referrals.vocabulary import Outcome, OverrideReason, ReferralStatus, Urgency


class Referral(_CaseKeyed, Base):
    __tablename__ = "referrals"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    # Indexed with the lists' order (__table_args__), not alone.
    from_org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    to_org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"))
    service_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("directory_services.id"))
    purpose: Mapped[Purpose] = mapped_column(value_enum(Purpose, "purpose"))
    # Sorted, comma-separated category codes shared with the receiver.
    categories: Mapped[str] = mapped_column(String(200))
    urgency: Mapped[Urgency] = mapped_column(value_enum(Urgency, "urgency"))
    status: Mapped[ReferralStatus] = mapped_column(value_enum(ReferralStatus, "status"))
    status_reason: Mapped[str | None] = mapped_column(String(48))
    business_status: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[Outcome | None] = mapped_column(value_enum(Outcome, "outcome"))
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Legal-basis override: a reason code, who asked, who (a supervisor) approved, DPO review.
    override_reason: Mapped[OverrideReason | None] = mapped_column(
        value_enum(OverrideReason, "override_reason")
    )
    override_requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    override_approved_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    override_approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    override_reviewed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    override_reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The receiving organisation's own case opened from this referral, if any.
    receiver_case_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    # The sender's message to the receiver, and the override justification.
    message = EncryptedField(Category.NEEDS)
    override_note = EncryptedField(Category.NEEDS)

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        # An organisation's incoming and outgoing lists, newest first (migration 0018): the
        # first page is read from the index's end, not sorted from every referral it has.
        Index("ix_referrals_from_org_created", "from_org_id", "created_at", "id"),
        Index("ix_referrals_to_org_created", "to_org_id", "created_at", "id"),
    )

    @property
    def category_set(self) -> frozenset[Category]:
        return frozenset(Category(c) for c in self.categories.split(",") if c)

    @property
    def override_approved(self) -> bool:
        return self.override_approved_at is not None


class ReferralTransition(_CaseKeyed, Base):
    """History: every status change with who, which organisation, when, from, to and why."""

    __tablename__ = "referral_transitions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"), index=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"))
    from_status: Mapped[ReferralStatus | None] = mapped_column(
        value_enum(ReferralStatus, "from_status")
    )
    to_status: Mapped[ReferralStatus] = mapped_column(value_enum(ReferralStatus, "to_status"))
    reason: Mapped[str | None] = mapped_column(String(48))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    note = EncryptedField(Category.NEEDS)


class Disclosure(Base):
    """One disclosure of case data to another organisation: who, to whom, which categories,
    for what, under which consent provisions or override, when; acknowledged on receipt."""

    __tablename__ = "disclosures"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"), index=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    from_org_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    to_org_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    purpose: Mapped[Purpose] = mapped_column(value_enum(Purpose, "purpose"))
    categories: Mapped[str] = mapped_column(String(200))
    # "consent" (basis = comma-separated provision ids) or "override" (basis = reason code).
    basis_type: Mapped[str] = mapped_column(String(16))
    basis: Mapped[str] = mapped_column(Text)  # every provision used: unbounded (0015)
    disclosed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    disclosed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ReferralMessage(_CaseKeyed, Base):
    __tablename__ = "referral_messages"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"), index=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"))
    author_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    author_org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    body = EncryptedField(Category.NEEDS)


class Notification(Base):
    """Outbox: one row per referral change for each party organisation (webhooks later read
    from here). Ids and event codes only."""

    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    referral_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("referrals.id"))
    event: Mapped[str] = mapped_column(String(48))
    status: Mapped[str | None] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_notifications_org_unread", "org_id", "read_at", "created_at"),)
