"""Refresh tokens are kept by the SHA-256 of their id

`refresh_tokens.jti` held each refresh token's `jti` claim as presented: with the signing
secret, a copy of the database was a set of ready-to-sign refresh tokens. It now holds the
claim's SHA-256 (hex, 64 characters: the column's width); upgrade replaces every stored id
by its digest, so the tokens already issued go on working.

Downgrade deletes the refresh tokens (a digest cannot be turned back into an id): every
login signs in again at its next refresh. Their logins (auth_sessions) stay.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_TOKENS = sa.table("refresh_tokens", sa.column("jti", sa.String(64)))


def upgrade() -> None:
    connection = op.get_bind()
    ids = connection.execute(sa.select(_TOKENS.c.jti)).scalars().all()
    if ids:
        connection.execute(
            _TOKENS.update()
            .where(_TOKENS.c.jti == sa.bindparam("presented"))
            .values(jti=sa.bindparam("digest")),
            [{"presented": i, "digest": hashlib.sha256(i.encode()).hexdigest()} for i in ids],
        )


def downgrade() -> None:
    op.execute(_TOKENS.delete())
