"""One ciphertext per data category of a case

Ten binary columns on `cases`, one per data category (the incident category's coded
classifications, `incident_codes`, apart from its free text, `incident`): since ciphertext
format 4 a case's fields are written into their category's column as one JSON object,
encrypted once, instead of one ciphertext per field (docs/decisions.md, "One ciphertext per
data category"). The 29 per-field columns stay: cases written before are read from them,
and a case moves to its category columns when it is next written or when
`referral-api keys rotate-case-keys` re-encrypts it (`keys status` counts what is left).

Nothing is rewritten here: re-encryption needs the keys, which migrations never see.
Downgrade drops the new columns, and refuses while any case has data in them (the code
before this revision cannot read them; rotating the case keys with that code does not
bring them back either).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CATEGORY_COLUMNS = (
    "identity",
    "contact",
    "location",
    "incident_codes",
    "incident",
    "health",
    "psychosocial",
    "legal",
    "immigration",
    "needs",
)


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        for column in CATEGORY_COLUMNS:
            batch.add_column(sa.Column(column, sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    cases = sa.table("cases", *(sa.column(c) for c in CATEGORY_COLUMNS))
    held = op.get_bind().scalar(
        sa.select(sa.func.count())
        .select_from(cases)
        .where(sa.or_(*(cases.c[c].is_not(None) for c in CATEGORY_COLUMNS)))
    )
    if held:
        raise RuntimeError(
            f"{held} case(s) hold data in category columns: this downgrade would lose it"
        )
    with op.batch_alter_table("cases") as batch:
        for column in CATEGORY_COLUMNS:
            batch.drop_column(column)
