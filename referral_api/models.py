"""Imports every model module so Base.metadata knows all tables (Alembic, tests)."""

from referral_api.auth import models as auth_models  # noqa: F401
