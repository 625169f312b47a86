"""The id of what an idempotent request made

`Idempotency-Key` is honoured on the administration, directory and subject-rights POSTs too
(organisations, users, API clients, services, exports, erasure requests, legal holds,
restrictions). Their replays answer what the first request made as it is now, found by its
id: no response body is stored for them (an API client's would hold its secret, and an
organisation's or a service's has no case key to be encrypted with), only the id, here.

Downgrade deletes the records that have one (the code before this revision does not honour
the key on those endpoints, and could not answer their replays), then drops the column.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_records") as batch_op:
        batch_op.add_column(sa.Column("resource_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    records = sa.table(
        "idempotency_records", sa.column("id", sa.Uuid()), sa.column("resource_id", sa.Uuid())
    )
    responses = sa.table("idempotent_responses", sa.column("id", sa.Uuid()))
    with_resource = sa.select(records.c.id).where(records.c.resource_id.is_not(None))
    # None is stored for them; deleted first all the same, for the foreign key.
    op.execute(responses.delete().where(responses.c.id.in_(with_resource)))
    op.execute(records.delete().where(records.c.resource_id.is_not(None)))
    with op.batch_alter_table("idempotency_records") as batch_op:
        batch_op.drop_column("resource_id")
