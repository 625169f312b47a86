"""A data key references the organisation-key version it is wrapped under

`case_keys (org_id, org_key_version)` → `org_keys (org_id, version)`, ON DELETE RESTRICT.
`keys rotate-org-keys` deleted an old organisation-key version once it counted no data key
under it, but a `POST /cases` in flight (its data key wrapped under that version, not yet
committed) was not counted: it committed a data key under a deleted key, and the case could
no longer be decrypted once the workers' key caches forgot the old key. With the reference,
the delete waits for such an insert and then fails; the rotation leaves that version and
re-wraps again (`referral_api/crypto/rotation.py`).

An installation where a data key already references a missing organisation key cannot
take this migration: those cases are unreadable already. `referral-api keys status` before
upgrading, and docs/key-management.md, say how to find them.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_NAME = "fk_case_keys_org_id_org_keys"


def upgrade() -> None:
    with op.batch_alter_table("case_keys", schema=None) as batch_op:
        batch_op.create_foreign_key(
            _NAME,
            "org_keys",
            ["org_id", "org_key_version"],
            ["org_id", "version"],
            ondelete="RESTRICT",
        )


def downgrade() -> None:
    with op.batch_alter_table("case_keys", schema=None) as batch_op:
        batch_op.drop_constraint(_NAME, type_="foreignkey")
