"""Migrations are the schema: `upgrade head` builds exactly what the models declare."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import referral_api.models  # noqa: F401
from referral_api.db import Base
from referral_api.extensions import db
from referral_api.migrate import current_revision, head_revision


def test_database_is_at_head(app):
    assert current_revision(db.engine_for(app)) == head_revision()


def test_models_and_migrations_do_not_drift(app):
    with db.engine_for(app).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
