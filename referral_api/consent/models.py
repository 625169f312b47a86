"""Consent records, their provisions and their append-only events.

Records and provisions are written once; the state of a consent is derived from its events
(never edited in place). Plaintext columns are codes and ids; the evidence attachment and
free-text reasons are encrypted under the case's data key.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from referral_api.access.categories import Category
from referral_api.access.roles import OrgType
from referral_api.cases.models import case_key_version
from referral_api.consent.vocabulary import (
    Article6Basis,
    Article9Condition,
    CollectionMethod,
    EventType,
    Grantor,
    GuardianRelation,
    Purpose,
)
from referral_api.crypto.fields import EncryptedField, EncryptedRecord
from referral_api.crypto.keys import KeyService
from referral_api.db import Base, UTCDateTime, new_id, utcnow, value_enum


class _CaseKeyed(EncryptedRecord):
    case_id: Mapped[uuid.UUID]

    def crypto_case_id(self) -> uuid.UUID:
        return self.case_id

    def current_key_version(self, keys: KeyService) -> int:
        return case_key_version(keys.session, self.case_id)


class ConsentRecord(_CaseKeyed, Base):
    __tablename__ = "consent_records"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"), index=True)
    # The controller: the organisation that owns the case.
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    grantor: Mapped[Grantor] = mapped_column(value_enum(Grantor, "grantor"))
    guardian_relation: Mapped[GuardianRelation | None] = mapped_column(
        value_enum(GuardianRelation, "guardian_relation")
    )
    is_minor: Mapped[bool] = mapped_column(Boolean, default=False)
    captured_by_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    captured_by_org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    collection_method: Mapped[CollectionMethod] = mapped_column(
        value_enum(CollectionMethod, "collection_method")
    )
    language: Mapped[str] = mapped_column(String(16))
    notice_version: Mapped[str] = mapped_column(String(32))
    jurisdiction: Mapped[str] = mapped_column(String(8))
    article6: Mapped[Article6Basis] = mapped_column(value_enum(Article6Basis, "article6"))
    article9: Mapped[Article9Condition | None] = mapped_column(
        value_enum(Article9Condition, "article9")
    )
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    evidence_media_type: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Base64 of the scanned form or recording, encrypted with the case key.
    evidence = EncryptedField(Category.IDENTITY)

    provisions: Mapped[list[ConsentProvision]] = relationship(
        back_populates="consent", order_by="ConsentProvision.position", lazy="selectin"
    )
    events: Mapped[list[ConsentEvent]] = relationship(
        back_populates="consent",
        order_by="[ConsentEvent.occurred_at, ConsentEvent.id]",
        lazy="selectin",
    )


class ConsentProvision(Base):
    """An enforceable rule: purpose, recipient (an organisation or an organisation type),
    data categories and a validity window."""

    __tablename__ = "consent_provisions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    consent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consent_records.id"), index=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    purpose: Mapped[Purpose] = mapped_column(value_enum(Purpose, "purpose"))
    recipient_org_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organisations.id"))
    recipient_org_type: Mapped[OrgType | None] = mapped_column(
        value_enum(OrgType, "recipient_org_type")
    )
    # Sorted, comma-separated category codes (e.g. "contact,identity,legal").
    categories: Mapped[str] = mapped_column(String(200))
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    consent: Mapped[ConsentRecord] = relationship(back_populates="provisions")

    __table_args__ = (Index("ix_consent_provisions_case_purpose", "case_id", "purpose"),)

    @property
    def category_set(self) -> frozenset[Category]:
        return frozenset(Category(c) for c in self.categories.split(",") if c)


class ConsentEvent(_CaseKeyed, Base):
    """Append-only: given, renewed, withdrawn, expired, revoked, entered_in_error."""

    __tablename__ = "consent_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    consent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("consent_records.id"), index=True)
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("cases.id"))
    event_type: Mapped[EventType] = mapped_column(value_enum(EventType, "event_type"))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Renewal: the new end of every provision's validity (None: open-ended).
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the event caused (ids only), e.g. referrals cancelled by a withdrawal.
    effects: Mapped[str | None] = mapped_column(Text)

    reason = EncryptedField(Category.NEEDS)

    consent: Mapped[ConsentRecord] = relationship(back_populates="events")

    # The DPO reports replay every consent's events in SQL: (consent, type, time) answers
    # those lookups from the index alone (referral_api/dpo, bench/dpo_reports.py).
    __table_args__ = (
        Index("ix_consent_events_consent_type_time", "consent_id", "event_type", "occurred_at"),
    )


class ConsentEventSummary(Base):
    """Per consent, what its events say, kept by the DATABASE: triggers on consent_events and
    consent_provisions (migrations 0010, 0011) recompute a consent's row after every insert, delete
    or change of its events or provisions, including rows written behind the application's
    back. The application never
    writes it; the DPO reports read it instead of replaying every event
    (referral_api/dpo/derived_state.py). No row: the consent has no event."""

    __tablename__ = "consent_event_summaries"

    consent_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("consent_records.id"), primary_key=True
    )
    # The earliest `given`; the earliest of each closing event.
    given_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    erroneous_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The latest `expired` and `renewed`, and that renewal's end (None: open-ended; two
    # renewals at one instant: the one with the greater id, as the replay orders them).
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    renewed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The latest event of any kind: a report at an earlier moment cannot use this row.
    last_event_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The latest end among the consent's provisions; None when one of them is open-ended.
    provisions_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The state with every event counted (ConsentState value; None: not given yet), by the
    # rules of referral_api/dpo/derived_state.py, for reports at or after `last_event_at`.
    state: Mapped[str | None] = mapped_column(String(32))
    # Migration 0011, for the platform-wide consent-summary report: the consent record's
    # organisation, and whether some provision of the consent repeats an earlier one (lower
    # position) in purpose, recipient organisation and recipient type (nulls equal). Kept by
    # the same triggers (and one on consent_records.org_id); null only on a database where
    # 0011 has not run.
    org_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    has_repeats: Mapped[bool | None] = mapped_column(Boolean)

    # The few consents with a repeat (migration 0011).
    __table_args__ = (
        Index(
            "ix_consent_event_summaries_repeats",
            "consent_id",
            postgresql_where=text("has_repeats"),
            sqlite_where=text("has_repeats"),
        ),
    )
