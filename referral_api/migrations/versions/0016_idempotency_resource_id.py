"""The id of what an idempotent request made

`Idempotency-Key` is honoured on the administration, directory and subject-rights POSTs too
(organisations, users, API clients, services, exports, erasure requests, legal holds,
restrictions). Their replays answer what the first request made as it is now, found by its
id: no response body is stored for them (an API client's would hold its secret, and an
organisation's or a service's has no case key to be encrypted with), only the id, here.

Downgrade deletes the records of those endpoints (the code before this revision does not
honour the key on them), then drops the column. The records of the endpoints it did honour
(cases, notes, consents, referrals, intake) stay, even those that, written by a later
version, keep an id and no response: that code answers their retry 409 (a request still in
progress) until the key expires, where without the record it would make a second case,
consent or referral.

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


# The endpoints this revision began to honour the key on (`idempotency_records.endpoint` is
# "POST <path>"): organisations, their API clients and services, and a case's export,
# erasure request, legal hold and restriction.
_NEWLY_HONOURED = (
    "POST /api/v1/orgs%",
    *(
        f"POST /api/v1/cases/%/{tail}"
        for tail in ("export", "erasure", "legal-hold", "restriction")
    ),
)


def downgrade() -> None:
    records = sa.table(
        "idempotency_records", sa.column("id", sa.Uuid()), sa.column("endpoint", sa.String())
    )
    responses = sa.table("idempotent_responses", sa.column("id", sa.Uuid()))
    newly_honoured = sa.or_(*(records.c.endpoint.like(pattern) for pattern in _NEWLY_HONOURED))
    # None is stored for them; deleted first all the same, for the foreign key.
    op.execute(
        responses.delete().where(responses.c.id.in_(sa.select(records.c.id).where(newly_honoured)))
    )
    op.execute(records.delete().where(newly_honoured))
    with op.batch_alter_table("idempotency_records") as batch_op:
        batch_op.drop_column("resource_id")
