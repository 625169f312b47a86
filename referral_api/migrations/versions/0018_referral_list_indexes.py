"""Referral lists read newest first from an index

An organisation's incoming or outgoing referrals (`GET /referrals?box=…`) are listed newest
first, a page at a time. With `from_org_id` and `to_org_id` indexed alone, PostgreSQL read
every referral of the organisation and sorted them for each page (30 ms warm, 72 ms cold
for an organisation receiving 60,000, bench/README.md); indexed with the list's order
(`created_at`, `id`), a page is read from the index's end (0.3 ms). The new indexes replace
the single-column ones (their leading column serves the same lookups).

Building them locks writes to `referrals` for the time it takes (about a second a million
referrals).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_referrals_from_org_created", "referrals", ["from_org_id", "created_at", "id"]
    )
    op.create_index("ix_referrals_to_org_created", "referrals", ["to_org_id", "created_at", "id"])
    op.drop_index("ix_referrals_from_org_id", table_name="referrals")
    op.drop_index("ix_referrals_to_org_id", table_name="referrals")


def downgrade() -> None:
    op.create_index("ix_referrals_from_org_id", "referrals", ["from_org_id"])
    op.create_index("ix_referrals_to_org_id", "referrals", ["to_org_id"])
    op.drop_index("ix_referrals_to_org_created", table_name="referrals")
    op.drop_index("ix_referrals_from_org_created", table_name="referrals")
