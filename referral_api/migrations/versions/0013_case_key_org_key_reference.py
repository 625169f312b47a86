"""A data key references the organisation-key version it is wrapped under

`case_keys (org_id, org_key_version)` → `org_keys (org_id, version)`, ON DELETE RESTRICT.
`keys rotate-org-keys` deleted an old organisation-key version once it counted no data key
under it, but a `POST /cases` in flight (its data key wrapped under that version, not yet
committed) was not counted: it committed a data key under a deleted key, and the case could
no longer be decrypted once the workers' key caches forgot the old key. With the reference,
the delete waits for such an insert and then fails; the rotation leaves that version and
re-wraps again (`referral_api/crypto/rotation.py`).

An installation where a data key already references a missing organisation key cannot
take this migration: those cases are unreadable already. The upgrade then stops before
changing anything, naming how many; `referral-api keys status` lists them by organisation
(`case_keys_without_org_key`) and docs/key-management.md ("Data keys without their
organisation key") says how to recover them from a backup.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_NAME = "fk_case_keys_org_id_org_keys"


def upgrade() -> None:
    orphans = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM case_keys k WHERE NOT EXISTS (SELECT 1 FROM org_keys o "
                "WHERE o.org_id = k.org_id AND o.version = k.org_key_version)"
            )
        )
        .scalar()
    )
    if orphans:
        raise RuntimeError(
            f"{orphans} case data keys are wrapped under an organisation key that no longer "
            "exists (their cases cannot be decrypted): see docs/key-management.md, 'Data keys "
            "without their organisation key', then upgrade again. Nothing was changed."
        )
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
