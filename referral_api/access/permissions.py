"""Every permission the API knows, as `resource:action` strings."""

from __future__ import annotations

import enum


class Permission(enum.StrEnum):
    # Own identity
    SELF_READ = "self:read"
    # Organisations (platform administration)
    ORG_READ = "org:read"
    ORG_MANAGE = "org:manage"
    # Users and machine clients of an organisation
    USER_READ = "user:read"
    USER_MANAGE = "user:manage"
    CLIENT_READ = "client:read"
    CLIENT_MANAGE = "client:manage"
    # Case records (content is further limited by data category per role)
    CASE_CREATE = "case:create"
    # Pseudonymous metadata (code, type, status, risk, dates); content needs CASE_READ.
    CASE_VIEW = "case:view"
    # Personal content, limited further to the role's data categories.
    CASE_READ = "case:read"
    CASE_UPDATE = "case:update"
    CASE_ASSIGN = "case:assign"
    CASE_CLOSE = "case:close"
    CASE_NOTE = "case:note"
    CASE_ACCESS_LOG = "case:access-log"
    # Data-subject rights
    CASE_EXPORT = "case:export"
    CASE_ERASURE_REQUEST = "case:erasure-request"
    ERASURE_APPROVE = "erasure:approve"
    CASE_LEGAL_HOLD = "case:legal-hold"
    CASE_RESTRICT = "case:restrict"
    # Consent
    CONSENT_READ = "consent:read"
    CONSENT_RECORD = "consent:record"
    CONSENT_WITHDRAW = "consent:withdraw"
    CONSENT_REVOKE = "consent:revoke"
    CONSENT_ENTERED_IN_ERROR = "consent:entered-in-error"
    # Referrals
    REFERRAL_READ = "referral:read"
    REFERRAL_CREATE = "referral:create"
    REFERRAL_TRANSITION = "referral:transition"
    REFERRAL_APPROVE_OVERRIDE = "referral:approve-override"
    INTAKE_CREATE = "intake:create"
    # Directory of services
    DIRECTORY_READ = "directory:read"
    DIRECTORY_MANAGE = "directory:manage"
    # Data protection
    AUDIT_READ = "audit:read"
    AUDIT_VERIFY = "audit:verify"
    DPO_REPORTS = "dpo:reports"
    # Keys and system
    KEYS_MANAGE = "keys:manage"


# The audit log's names for what a permission acts on (its `resource:` part), where the two
# differ: the same vocabulary as the rows services write (`organisation`, `client`, ...).
_RESOURCE_TYPES = {
    "self": "user",
    "org": "organisation",
    "intake": "case",
    "directory": "service",
    "dpo": "report",
    "erasure": "erasure_request",
}


def resource_type(permission: Permission) -> str:
    """The audit resource type of what `permission` acts on."""
    resource = permission.value.partition(":")[0]
    return _RESOURCE_TYPES.get(resource, resource)
