"""Indexes for the audit sealer (unsealed rows) and the case list (org, newest first)

Measured in bench/: without them the sealer walked the whole audit log after every audited
request, and every case-list page sorted all of an organisation's cases.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_unsealed",
        "audit_events",
        ["id"],
        postgresql_where=sa.text("seq IS NULL"),
        sqlite_where=sa.text("seq IS NULL"),
    )
    op.create_index("ix_cases_org_created", "cases", ["org_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_cases_org_created", table_name="cases")
    op.drop_index("ix_audit_events_unsealed", table_name="audit_events")
