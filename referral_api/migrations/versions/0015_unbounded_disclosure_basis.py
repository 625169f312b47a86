"""A disclosure's basis as unbounded text

A disclosure on consent records every provision that permitted it (their ids, comma
separated, 37 characters each): with more than 54 of them, over a case's consents, the
bounded column failed the send on PostgreSQL (a 500), and the person could not be referred.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("disclosures") as batch_op:
        batch_op.alter_column("basis", type_=sa.Text(), existing_type=sa.String(2000))


def downgrade() -> None:
    with op.batch_alter_table("disclosures") as batch_op:
        batch_op.alter_column("basis", type_=sa.String(2000), existing_type=sa.Text())
