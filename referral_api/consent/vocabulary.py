"""Consent vocabularies (DESIGN.md §7), shaped after HL7 FHIR Consent and ISO/IEC TS 27560."""

from __future__ import annotations

import enum


class Purpose(enum.StrEnum):
    CASE_MANAGEMENT = "case_management"
    PSYCHOSOCIAL_SUPPORT = "psychosocial_support"
    LEGAL_ASSISTANCE = "legal_assistance"
    SHELTER = "shelter"
    HEALTH = "health"
    SOCIAL_ASSISTANCE = "social_assistance"
    LAW_ENFORCEMENT_REPORT = "law_enforcement_report"
    RETURN_ASSISTANCE = "return_assistance"
    STATISTICS = "statistics"


class Grantor(enum.StrEnum):
    PERSON = "person"
    GUARDIAN = "guardian"


class GuardianRelation(enum.StrEnum):
    PARENT = "parent"
    LEGAL_GUARDIAN = "legal_guardian"
    COURT_APPOINTED_GUARDIAN = "court_appointed_guardian"
    OTHER = "other"


class CollectionMethod(enum.StrEnum):
    WRITTEN = "written"
    VERBAL_WITNESSED = "verbal_witnessed"
    INTERPRETER_ASSISTED = "interpreter_assisted"
    ELECTRONIC = "electronic"


class Article6Basis(enum.StrEnum):
    """GDPR Art. 6(1) lawful bases."""

    CONSENT = "a"
    CONTRACT = "b"
    LEGAL_OBLIGATION = "c"
    VITAL_INTERESTS = "d"
    PUBLIC_TASK = "e"
    LEGITIMATE_INTERESTS = "f"


class Article9Condition(enum.StrEnum):
    """GDPR Art. 9(2) conditions for special categories."""

    EXPLICIT_CONSENT = "a"
    EMPLOYMENT_SOCIAL_SECURITY = "b"
    VITAL_INTERESTS = "c"
    NOT_FOR_PROFIT_BODY = "d"
    MADE_PUBLIC = "e"
    LEGAL_CLAIMS = "f"
    SUBSTANTIAL_PUBLIC_INTEREST = "g"
    HEALTH_SOCIAL_CARE = "h"
    PUBLIC_HEALTH = "i"
    ARCHIVING_RESEARCH = "j"


class EventType(enum.StrEnum):
    GIVEN = "given"
    RENEWED = "renewed"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    REVOKED = "revoked"
    ENTERED_IN_ERROR = "entered_in_error"


class ConsentState(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    REVOKED = "revoked"
    ENTERED_IN_ERROR = "entered_in_error"


# Events after which nothing can make the consent permit again.
TERMINAL_EVENTS = frozenset({EventType.WITHDRAWN, EventType.REVOKED, EventType.ENTERED_IN_ERROR})
