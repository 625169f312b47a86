"""Consent records, provisions and append-only events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 23:34:06.524326
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from referral_api.migrations.guards import refuse_if_holding

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column(
            "grantor",
            sa.Enum(
                "person",
                "guardian",
                name="grantor",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "guardian_relation",
            sa.Enum(
                "parent",
                "legal_guardian",
                "court_appointed_guardian",
                "other",
                name="guardian_relation",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("is_minor", sa.Boolean(), nullable=False),
        sa.Column("captured_by_id", sa.Uuid(), nullable=True),
        sa.Column("captured_by_org_id", sa.Uuid(), nullable=False),
        sa.Column(
            "collection_method",
            sa.Enum(
                "written",
                "verbal_witnessed",
                "interpreter_assisted",
                "electronic",
                name="collection_method",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("notice_version", sa.String(length=32), nullable=False),
        sa.Column("jurisdiction", sa.String(length=8), nullable=False),
        sa.Column(
            "article6",
            sa.Enum(
                "a",
                "b",
                "c",
                "d",
                "e",
                "f",
                name="article6",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "article9",
            sa.Enum(
                "a",
                "b",
                "c",
                "d",
                "e",
                "f",
                "g",
                "h",
                "i",
                "j",
                name="article9",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("evidence_sha256", sa.String(length=64), nullable=True),
        sa.Column("evidence_media_type", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_consent_records_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_consent_records_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_records_case_id"), ["case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_consent_records_org_id"), ["org_id"], unique=False)

    op.create_table(
        "consent_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column(
            "event_type",
            sa.Enum(
                "given",
                "renewed",
                "withdrawn",
                "expired",
                "revoked",
                "entered_in_error",
                name="event_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_org_id", sa.Uuid(), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("effects", sa.String(length=4000), nullable=True),
        sa.Column("reason", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_consent_events_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["consent_id"],
            ["consent_records.id"],
            name=op.f("fk_consent_events_consent_id_consent_records"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
    )
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_consent_events_consent_id"), ["consent_id"], unique=False
        )

    op.create_table(
        "consent_provisions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "purpose",
            sa.Enum(
                "case_management",
                "psychosocial_support",
                "legal_assistance",
                "shelter",
                "health",
                "social_assistance",
                "law_enforcement_report",
                "return_assistance",
                "statistics",
                name="purpose",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("recipient_org_id", sa.Uuid(), nullable=True),
        sa.Column(
            "recipient_org_type",
            sa.Enum(
                "ngo",
                "social_services",
                "police",
                "legal_aid",
                "health",
                "shelter",
                "prosecution",
                "labour_inspection",
                "platform",
                name="recipient_org_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("categories", sa.String(length=200), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_consent_provisions_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["consent_id"],
            ["consent_records.id"],
            name=op.f("fk_consent_provisions_consent_id_consent_records"),
        ),
        sa.ForeignKeyConstraint(
            ["recipient_org_id"],
            ["organisations.id"],
            name=op.f("fk_consent_provisions_recipient_org_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_provisions")),
    )
    with op.batch_alter_table("consent_provisions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_consent_provisions_case_purpose", ["case_id", "purpose"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_consent_provisions_consent_id"), ["consent_id"], unique=False
        )


def downgrade() -> None:
    refuse_if_holding("consent_provisions", "consent_events", "consent_records")
    with op.batch_alter_table("consent_provisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_provisions_consent_id"))
        batch_op.drop_index("ix_consent_provisions_case_purpose")

    op.drop_table("consent_provisions")
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_events_consent_id"))

    op.drop_table("consent_events")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_records_org_id"))
        batch_op.drop_index(batch_op.f("ix_consent_records_case_id"))

    op.drop_table("consent_records")
