"""The one fixed list of feature blueprints the app registers (bemserver-api style)."""

from referral_api.admin.routes import blp as admin_blp
from referral_api.audit.routes import blp as audit_blp
from referral_api.auth.routes import blp as auth_blp
from referral_api.cases.routes import blp as cases_blp
from referral_api.consent.routes import blp as consent_blp
from referral_api.directory.routes import blp as directory_blp
from referral_api.dpo.routes import blp as dpo_blp
from referral_api.health import blp as health_blp
from referral_api.referrals.routes import blp as referrals_blp
from referral_api.rights.routes import blp as rights_blp

BLUEPRINTS = [
    health_blp,
    auth_blp,
    admin_blp,
    cases_blp,
    directory_blp,
    consent_blp,
    referrals_blp,
    rights_blp,
    audit_blp,
    dpo_blp,
]
