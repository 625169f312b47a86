"""Record of processing activities (GDPR Art. 30), generated from code and configuration.

Nothing here is prose written for one deployment: purposes, categories (and which are special
under Art. 9), recipients and what each type may ever receive, legal bases, retention, roles
and security measures are read from the enums, tables and settings the system enforces, so
the record cannot drift from what the code does. No Flask; no personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from referral_api.access.actor import Actor
from referral_api.access.categories import (
    ALL_CATEGORIES,
    ROLE_CATEGORIES,
    Category,
    ceiling_for,
)
from referral_api.access.roles import ROLE_PERMISSIONS, OrgType
from referral_api.audit import service as audit
from referral_api.auth.models import Organisation
from referral_api.cases.layout import CATEGORY_FIELDS
from referral_api.cases.models import CaseType
from referral_api.consent.service import SPECIAL_CATEGORIES
from referral_api.consent.vocabulary import (
    Article6Basis,
    Article9Condition,
    CollectionMethod,
    Purpose,
)
from referral_api.crypto import envelope
from referral_api.crypto.keys import DATA_KEY_BYTES, CryptoContext
from referral_api.dpo.service import REPORT_ACTION, now, report_scope
from referral_api.referrals.vocabulary import OverrideReason

# Who the records are about, per case type (the case type is the only thing that says so).
_DATA_SUBJECTS = {
    CaseType.THB: "presumed victims of trafficking in human beings",
    CaseType.GBV: "victims of gender-based violence",
}


def _label(member: Any) -> str:
    return str(member.name).replace("_", " ").lower()


def _codes(members: Any) -> list[dict[str, str]]:
    return [{"code": m.value, "name": _label(m)} for m in members]


def _retention(config: Mapping[str, Any]) -> dict[str, Any]:
    policy = config.get("RETENTION_POLICY")
    if not policy:
        return {"configured": False, "rules": [], "note": "not configured"}
    rules = [
        {"case_type": case_type, "status": status, "days_after": int(days)}
        for case_type, by_status in sorted(policy.items())
        for status, days in sorted(by_status.items())
    ]
    return {"configured": True, "rules": rules, "note": None}


def _seconds(value: Any) -> int | None:
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    return int(value) if isinstance(value, int | float) else None


def _security_measures(
    config: Mapping[str, Any], crypto: CryptoContext, dialect: str
) -> list[dict[str, Any]]:
    provider = crypto.provider.describe().provider
    append_only = "a database trigger refuses changes" if dialect == "postgresql" else None
    return [
        {
            "code": "field_encryption",
            "description": "Every personal field encrypted at rest, one key per case",
            "parameters": {
                "algorithm": "AES-256-GCM",
                "algorithm_id": envelope.ALG_AES_256_GCM,
                "ciphertext_format": envelope.CURRENT_FORMAT,
                "data_key_bits": DATA_KEY_BYTES * 8,
                "field_subkeys": (
                    "one per table and column: a record's key schedule derived from its case "
                    "data key by HKDF-Expand-SHA256 (RFC 5869)"
                ),
                "ciphertexts": (
                    "a case: one per data category (its fields as one JSON object); "
                    "other records: one per encrypted field"
                ),
                "associated_data": "header, table, column, row id, case id",
                "key_hierarchy": "root key → organisation key → case data key",
                "root_key_provider": provider,
            },
        },
        {
            "code": "blind_indexes",
            "description": "Exact search through keyed, truncated HMAC-SHA256 indexes",
            "parameters": {"bits": dict(sorted(crypto.index_bits.items()))},
        },
        {
            "code": "hash_chained_audit",
            "description": "Every access decision and change recorded, chained by SHA-256",
            "parameters": {"append_only": append_only, "personal_values": False},
        },
        {
            "code": "crypto_shredding",
            "description": "Erasure destroys the case's data keys; a tombstone keeps proof",
            "parameters": {},
        },
        {
            "code": "access_control",
            "description": "Deny by default; one policy decision point; roles reloaded per request",
            "parameters": {
                "access_token_seconds": _seconds(config.get("JWT_ACCESS_TOKEN_EXPIRES")),
                "password_hash": "Argon2id",
            },
        },
        {
            "code": "sign_in_throttling",
            "description": (
                "Failed sign-ins counted per account name and per address (hashed), locked "
                "past a limit; each refused sign-in audited without the name typed"
            ),
            "parameters": {
                "max_failures_per_account": config.get("LOGIN_MAX_FAILURES_PER_ACCOUNT"),
                "max_failures_per_address": config.get("LOGIN_MAX_FAILURES_PER_ADDRESS"),
                "failure_window_seconds": config.get("LOGIN_FAILURE_WINDOW_SECONDS"),
                "lockout_seconds": config.get("LOGIN_LOCKOUT_SECONDS"),
                "refused_sign_ins_audited": True,
            },
        },
    ]


def record_of_processing(
    session: Session, actor: Actor, config: Mapping[str, Any], crypto: CryptoContext
) -> dict[str, Any]:
    scope = report_scope(session, actor, "ropa", {})
    org = session.get(Organisation, scope.org_id) if scope.org_id else None
    audit.record(
        session,
        actor,
        REPORT_ACTION,
        resource_type="report",
        resource_id="ropa",
        details={"report": "ropa"},
    )
    recipients = [
        {
            "org_type": org_type.value,
            "may_receive": sorted(c.value for c in ceiling_for(org_type)),
            "never_receives": sorted(c.value for c in ALL_CATEGORIES - ceiling_for(org_type)),
        }
        # The platform organisation runs the system and never receives case data.
        for org_type in OrgType
        if org_type is not OrgType.PLATFORM
    ]
    return {
        "generated_at": now(),
        "controller": None
        if org is None
        else {"org_id": org.id, "name": org.name, "org_type": org.org_type.value},
        "scope": "organisation" if scope.org_id else "platform",
        "data_subjects": [
            {"case_type": t.value, "description": _DATA_SUBJECTS.get(t, _label(t))}
            for t in CaseType
        ],
        "purposes": _codes(Purpose),
        "data_categories": [
            {
                "code": category.value,
                "special_category": category in SPECIAL_CATEGORIES,
                "fields": sorted(CATEGORY_FIELDS.get(category, {})),
                "encrypted": True,
            }
            for category in Category
        ],
        "recipients": recipients,
        "legal_bases": {
            "article6": _codes(Article6Basis),
            "article9": _codes(Article9Condition),
            "overrides": _codes(OverrideReason),
        },
        "consent": {
            "collection_methods": [m.value for m in CollectionMethod],
            "notice_versions": list(config.get("KNOWN_NOTICE_VERSIONS") or []),
            "withdrawal": "one call, no justification; dependent referrals cancelled at once",
        },
        "retention": _retention(config),
        "roles": [
            {
                "role": role.value,
                "permissions": sorted(p.value for p in permissions),
                "content_categories": sorted(c.value for c in ROLE_CATEGORIES.get(role, ())),
            }
            for role, permissions in ROLE_PERMISSIONS.items()
        ],
        "security_measures": _security_measures(config, crypto, session.get_bind().dialect.name),
    }
