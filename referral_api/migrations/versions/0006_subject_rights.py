"""Data-subject rights: legal holds, erasure requests and tombstones, subject exports

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 00:05:18.235810
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from referral_api.migrations.guards import refuse_if_holding

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_tombstones",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column(
            "basis",
            sa.Enum(
                "consent_withdrawn",
                "no_longer_necessary",
                "objection",
                "unlawful_processing",
                "legal_obligation",
                "retention_expired",
                name="basis",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("approved_by", sa.Uuid(), nullable=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data_keys_destroyed", sa.Integer(), nullable=False),
        sa.Column("ciphertexts_cleared", sa.Integer(), nullable=False),
        sa.Column("index_entries_deleted", sa.Integer(), nullable=False),
        sa.Column("referrals_cancelled", sa.Integer(), nullable=False),
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_tombstones")),
        sa.UniqueConstraint("case_id", name=op.f("uq_erasure_tombstones_case_id")),
    )
    with op.batch_alter_table("erasure_tombstones", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasure_tombstones_org_id"), ["org_id"], unique=False)

    op.create_table(
        "erasure_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column(
            "basis",
            sa.Enum(
                "consent_withdrawn",
                "no_longer_necessary",
                "objection",
                "unlawful_processing",
                "legal_obligation",
                "retention_expired",
                name="basis",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "executed",
                "refused",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.Uuid(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_erasure_requests_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_requests")),
    )
    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_erasure_requests_case_id"), ["case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_erasure_requests_org_id"), ["org_id"], unique=False)

    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("placed_by", sa.Uuid(), nullable=True),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lifted_by", sa.Uuid(), nullable=True),
        sa.Column("lifted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_legal_holds_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_legal_holds_case_id"), ["case_id"], unique=False)

    op.create_table(
        "subject_exports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("downloaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("document", sa.LargeBinary(), nullable=True),
        sa.Column("reason", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_subject_exports_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_exports")),
    )
    with op.batch_alter_table("subject_exports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subject_exports_case_id"), ["case_id"], unique=False)


def downgrade() -> None:
    refuse_if_holding("subject_exports", "legal_holds", "erasure_requests", "erasure_tombstones")
    with op.batch_alter_table("subject_exports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subject_exports_case_id"))

    op.drop_table("subject_exports")
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_legal_holds_case_id"))

    op.drop_table("legal_holds")
    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasure_requests_org_id"))
        batch_op.drop_index(batch_op.f("ix_erasure_requests_case_id"))

    op.drop_table("erasure_requests")
    with op.batch_alter_table("erasure_tombstones", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_erasure_tombstones_org_id"))

    op.drop_table("erasure_tombstones")
