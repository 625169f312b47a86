"""Referral statuses (after FHIR Task), who may move them, and reason codes."""

from __future__ import annotations

import enum


class ReferralStatus(enum.StrEnum):
    DRAFT = "draft"
    REQUESTED = "requested"
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered_in_error"


S = ReferralStatus

# Sent and not finished: the receiver may see the packet (while consent holds).
LIVE_STATUSES = frozenset({S.REQUESTED, S.RECEIVED, S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD})
OPEN_STATUSES = LIVE_STATUSES | {S.DRAFT}


class Party(enum.StrEnum):
    SENDER = "sender"
    RECEIVER = "receiver"
    SUPERVISOR = "supervisor"  # a supervisor of either party


class Urgency(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class Outcome(enum.StrEnum):
    SUCCESSFUL = "successful"
    NOT_SUCCESSFUL = "not_successful"


class OverrideReason(enum.StrEnum):
    """Legal bases for sharing without covering consent; every use is flagged for the DPO."""

    VITAL_INTERESTS = "vital_interests"  # imminent risk to life or health
    CHILD_PROTECTION = "child_protection"
    LEGAL_OBLIGATION = "legal_obligation"
    COURT_ORDER = "court_order"


REASONS: dict[ReferralStatus, frozenset[str]] = {
    S.REJECTED: frozenset(
        {"no_capacity", "not_eligible", "out_of_area", "person_declined", "duplicate", "other"}
    ),
    S.FAILED: frozenset(
        {"lost_contact", "person_declined", "service_unavailable", "safety_concern", "other"}
    ),
    S.CANCELLED: frozenset(
        {"no_longer_needed", "sent_in_error", "person_declined", "consent_withdrawn", "other"}
    ),
    S.ENTERED_IN_ERROR: frozenset({"wrong_case", "wrong_recipient", "duplicate", "other"}),
    S.COMPLETED: frozenset({"service_delivered", "partially_delivered", "other"}),
}

# (from, to) → who may make the move. Anything absent is illegal (409).
TRANSITIONS: dict[tuple[ReferralStatus, ReferralStatus], frozenset[Party]] = {
    (S.DRAFT, S.REQUESTED): frozenset({Party.SENDER}),
    (S.DRAFT, S.CANCELLED): frozenset({Party.SENDER}),
    (S.REQUESTED, S.RECEIVED): frozenset({Party.RECEIVER}),
    (S.REQUESTED, S.ACCEPTED): frozenset({Party.RECEIVER}),
    (S.RECEIVED, S.ACCEPTED): frozenset({Party.RECEIVER}),
    (S.REQUESTED, S.REJECTED): frozenset({Party.RECEIVER}),
    (S.RECEIVED, S.REJECTED): frozenset({Party.RECEIVER}),
    (S.ACCEPTED, S.IN_PROGRESS): frozenset({Party.RECEIVER}),
    (S.IN_PROGRESS, S.ON_HOLD): frozenset({Party.RECEIVER}),
    (S.ON_HOLD, S.IN_PROGRESS): frozenset({Party.RECEIVER}),
    (S.IN_PROGRESS, S.COMPLETED): frozenset({Party.RECEIVER}),
    (S.ACCEPTED, S.FAILED): frozenset({Party.RECEIVER}),
    (S.IN_PROGRESS, S.FAILED): frozenset({Party.RECEIVER}),
    (S.ON_HOLD, S.FAILED): frozenset({Party.RECEIVER}),
    **{
        (status, S.CANCELLED): frozenset({Party.SENDER, Party.RECEIVER})
        for status in (S.REQUESTED, S.RECEIVED, S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD)
    },
    **{
        (status, S.ENTERED_IN_ERROR): frozenset({Party.SUPERVISOR})
        for status in ReferralStatus
        if status is not S.ENTERED_IN_ERROR
    },
}

REASON_REQUIRED = frozenset({S.REJECTED, S.FAILED, S.CANCELLED, S.ENTERED_IN_ERROR})
