"""Imports every model module so Base.metadata knows all tables (Alembic, tests)."""

from referral_api import idempotency as idempotency_models  # noqa: F401
from referral_api.audit import models as audit_models  # noqa: F401
from referral_api.auth import models as auth_models  # noqa: F401
from referral_api.cases import models as case_models  # noqa: F401
from referral_api.consent import models as consent_models  # noqa: F401
from referral_api.crypto import models as crypto_models  # noqa: F401
from referral_api.directory import models as directory_models  # noqa: F401
from referral_api.referrals import models as referral_models  # noqa: F401
from referral_api.rights import models as rights_models  # noqa: F401
