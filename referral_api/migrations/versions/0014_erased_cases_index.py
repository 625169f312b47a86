"""A partial index of the erased cases

The DPO's consent reports and its quality report leave erased cases out
(`dpo.service._not_erased`: the case id is not among the erased ones). Without an index,
finding the erased ones scans every case on each report, in each parallel worker; erased
cases are few, and this index holds only them, so a case that is not erased is never
written to it.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_cases_erased",
        "cases",
        ["id"],
        postgresql_where=sa.text("erased"),
        sqlite_where=sa.text("erased"),
    )


def downgrade() -> None:
    op.drop_index("ix_cases_erased", table_name="cases")
