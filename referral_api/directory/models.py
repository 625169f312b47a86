"""The directory: services that organisations offer to other organisations' referrals.

Organisational data only — nothing here describes a person. A service's contact is the intake
channel for professionals (a phone number or an e-mail address), never a street address: a
shelter's location is exactly what a trafficker or an abusive partner looks for.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from referral_api.auth.models import Organisation
from referral_api.db import Base, UTCDateTime, new_id, utcnow, value_enum


class ServiceType(enum.StrEnum):
    LEGAL_ASSISTANCE = "legal_assistance"
    PSYCHOSOCIAL_SUPPORT = "psychosocial_support"
    SHELTER = "shelter"
    HEALTH = "health"
    SOCIAL_ASSISTANCE = "social_assistance"
    LAW_ENFORCEMENT = "law_enforcement"
    RETURN_ASSISTANCE = "return_assistance"
    INTERPRETATION = "interpretation"


class ServiceStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class Service(Base):
    __tablename__ = "directory_services"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organisations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(4000))
    service_type: Mapped[ServiceType] = mapped_column(
        value_enum(ServiceType, "service_type"), index=True
    )
    # BCP 47 tags, canonical case, comma-separated in the order given ("uk,ru,en-GB"). A
    # directory holds hundreds of rows, not millions: a scan with a delimited LIKE is cheap
    # and keeps the row one record (like consent provisions' categories).
    languages_text: Mapped[str] = mapped_column("languages", String(1000))
    eligibility_notes: Mapped[str | None] = mapped_column(String(4000))
    # Free text of regions ("Kyiv oblast; Lviv"); ";" separates areas in the HSDS export.
    area_served: Mapped[str] = mapped_column(String(500))
    # Case-folded copy for case-insensitive search on every dialect: SQLite's lower() and
    # LIKE fold ASCII only, so "київ" would never find "Київська область".
    area_served_folded: Mapped[str] = mapped_column(String(2000))
    # An e-mail address or an E.164 phone number (validated: never free text).
    professional_contact: Mapped[str] = mapped_column(String(254))
    accepting_referrals: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[ServiceStatus] = mapped_column(
        value_enum(ServiceStatus, "service_status"), default=ServiceStatus.ACTIVE
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    organisation: Mapped[Organisation] = relationship(lazy="joined")

    __mapper_args__ = {"version_id_col": version}

    @property
    def languages(self) -> list[str]:
        return [tag for tag in (self.languages_text or "").split(",") if tag]

    @languages.setter
    def languages(self, tags: list[str]) -> None:
        self.languages_text = ",".join(tags)

    @validates("area_served")
    def _fold_area(self, _key: str, value: str) -> str:
        self.area_served_folded = value.casefold()
        return value

    @property
    def areas(self) -> list[str]:
        return [area.strip() for area in self.area_served.split(";") if area.strip()]
