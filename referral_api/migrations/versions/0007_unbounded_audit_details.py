"""Audit details and consent-event effects as unbounded text

A withdrawal that cancels many referrals lists every effect; bounded columns made such a
withdrawal fail on PostgreSQL.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column("details", type_=sa.Text(), existing_type=sa.String(2000))
        batch_op.alter_column("legal_basis", type_=sa.String(400), existing_type=sa.String(100))
    with op.batch_alter_table("consent_events") as batch_op:
        batch_op.alter_column("effects", type_=sa.Text(), existing_type=sa.String(4000))


def downgrade() -> None:
    with op.batch_alter_table("consent_events") as batch_op:
        batch_op.alter_column("effects", type_=sa.String(4000), existing_type=sa.Text())
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.alter_column("legal_basis", type_=sa.String(100), existing_type=sa.String(400))
        batch_op.alter_column("details", type_=sa.String(2000), existing_type=sa.Text())
