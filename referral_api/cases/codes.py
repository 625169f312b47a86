"""Coded classifications (stored encrypted like free text; statistics decrypt codes only)."""

from __future__ import annotations

import enum


class Sex(enum.StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class GbvType(enum.StrEnum):
    """GBVIMS six core types of gender-based violence."""

    RAPE = "rape"
    SEXUAL_ASSAULT = "sexual_assault"
    PHYSICAL_ASSAULT = "physical_assault"
    FORCED_MARRIAGE = "forced_marriage"
    DENIAL_OF_RESOURCES = "denial_of_resources"
    PSYCHOLOGICAL_ABUSE = "psychological_abuse"


class ExploitationType(enum.StrEnum):
    """CTDC-style forms of exploitation in trafficking cases."""

    SEXUAL = "sexual"
    LABOUR = "labour"
    DOMESTIC_SERVITUDE = "domestic_servitude"
    FORCED_CRIMINALITY = "forced_criminality"
    FORCED_BEGGING = "forced_begging"
    FORCED_MARRIAGE = "forced_marriage"
    ORGAN_REMOVAL = "organ_removal"
    OTHER = "other"


class MeansOfControl(enum.StrEnum):
    DEBT_BONDAGE = "debt_bondage"
    DOCUMENT_CONFISCATION = "document_confiscation"
    THREATS = "threats"
    PHYSICAL_ABUSE = "physical_abuse"
    SEXUAL_ABUSE = "sexual_abuse"
    PSYCHOLOGICAL_ABUSE = "psychological_abuse"
    RESTRICTED_MOVEMENT = "restricted_movement"
    WITHHOLDING_WAGES = "withholding_wages"
    SUBSTANCE_ABUSE = "substance_abuse"
    THREATS_TO_FAMILY = "threats_to_family"
    FALSE_PROMISES = "false_promises"
    ISOLATION = "isolation"
    OTHER = "other"


class RecruiterRelation(enum.StrEnum):
    INTIMATE_PARTNER = "intimate_partner"
    FAMILY = "family"
    FRIEND = "friend"
    ACQUAINTANCE = "acquaintance"
    STRANGER = "stranger"
    EMPLOYER = "employer"
    RECRUITMENT_AGENCY = "recruitment_agency"
    OTHER = "other"
    UNKNOWN = "unknown"


class DocumentType(enum.StrEnum):
    PASSPORT = "passport"
    NATIONAL_ID = "national_id"
    RESIDENCE_PERMIT = "residence_permit"
    DRIVING_LICENCE = "driving_licence"
    BIRTH_CERTIFICATE = "birth_certificate"
    OTHER = "other"


class CloseReason(enum.StrEnum):
    SERVICES_COMPLETED = "services_completed"
    DECLINED_FURTHER_SUPPORT = "declined_further_support"
    LOST_CONTACT = "lost_contact"
    TRANSFERRED = "transferred"
    MOVED_AWAY = "moved_away"
    RETURNED_HOME = "returned_home"
    DUPLICATE = "duplicate"
    OTHER = "other"


class ReopenReason(enum.StrEnum):
    NEW_NEED = "new_need"
    RETURNED_TO_SERVICE = "returned_to_service"
    CLOSED_IN_ERROR = "closed_in_error"
    OTHER = "other"


class ActivateReason(enum.StrEnum):
    ASSESSMENT_COMPLETED = "assessment_completed"
    SUPPORT_STARTED = "support_started"
    OTHER = "other"
