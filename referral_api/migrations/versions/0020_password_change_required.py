"""A password set by someone else is changed at its first sign-in

`users.password_change_required` is set when an administrator (anyone but the account
itself, the CLI excepted) sets an account's password: at account creation or a reset. Until
the account's holder signs in with a `new_password`, a sign-in with the right password is
refused (403), so a password an administrator chose does not stay usable by whoever chose
it. Existing accounts start without the flag.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "password_change_required",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("password_change_required")
