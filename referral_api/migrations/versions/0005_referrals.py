"""Referrals: status history, disclosures, messages, notifications outbox, idempotency keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 23:41:06.100109
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from referral_api.migrations.guards import refuse_if_holding

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("principal", sa.String(length=80), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_idempotency_records_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_records")),
        sa.UniqueConstraint("principal", "key", name="uq_idempotency_principal_key"),
    )
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_records_case_id"), ["case_id"], unique=False
        )

    op.create_table(
        "referrals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("from_org_id", sa.Uuid(), nullable=False),
        sa.Column("to_org_id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=True),
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
        sa.Column("categories", sa.String(length=200), nullable=False),
        sa.Column(
            "urgency",
            sa.Enum(
                "low",
                "normal",
                "urgent",
                "emergency",
                name="urgency",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "draft",
                "requested",
                "received",
                "accepted",
                "rejected",
                "in_progress",
                "on_hold",
                "completed",
                "failed",
                "cancelled",
                "entered_in_error",
                name="status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("status_reason", sa.String(length=48), nullable=True),
        sa.Column("business_status", sa.String(length=64), nullable=True),
        sa.Column(
            "outcome",
            sa.Enum(
                "successful",
                "not_successful",
                name="outcome",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "override_reason",
            sa.Enum(
                "vital_interests",
                "child_protection",
                "legal_obligation",
                "court_order",
                name="override_reason",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("override_requested_by", sa.Uuid(), nullable=True),
        sa.Column("override_approved_by", sa.Uuid(), nullable=True),
        sa.Column("override_approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("override_reviewed_by", sa.Uuid(), nullable=True),
        sa.Column("override_reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("receiver_case_id", sa.Uuid(), nullable=True),
        sa.Column("message", sa.LargeBinary(), nullable=True),
        sa.Column("override_note", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_referrals_case_id_cases")),
        sa.ForeignKeyConstraint(
            ["from_org_id"],
            ["organisations.id"],
            name=op.f("fk_referrals_from_org_id_organisations"),
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["directory_services.id"],
            name=op.f("fk_referrals_service_id_directory_services"),
        ),
        sa.ForeignKeyConstraint(
            ["to_org_id"], ["organisations.id"], name=op.f("fk_referrals_to_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referrals")),
    )
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_referrals_case_id"), ["case_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_referrals_from_org_id"), ["from_org_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_referrals_to_org_id"), ["to_org_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_referrals_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "disclosures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("from_org_id", sa.Uuid(), nullable=False),
        sa.Column("to_org_id", sa.Uuid(), nullable=False),
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
        sa.Column("categories", sa.String(length=200), nullable=False),
        sa.Column("basis_type", sa.String(length=16), nullable=False),
        sa.Column("basis", sa.String(length=2000), nullable=False),
        sa.Column("disclosed_by", sa.Uuid(), nullable=True),
        sa.Column("disclosed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_disclosures_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_disclosures_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_disclosures")),
    )
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_disclosures_case_id"), ["case_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_disclosures_from_org_id"), ["from_org_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_disclosures_referral_id"), ["referral_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_disclosures_to_org_id"), ["to_org_id"], unique=False)

    op.create_table(
        "idempotent_responses",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("etag", sa.String(length=80), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_idempotent_responses_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["id"],
            ["idempotency_records.id"],
            name=op.f("fk_idempotent_responses_id_idempotency_records"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotent_responses")),
    )
    with op.batch_alter_table("idempotent_responses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotent_responses_case_id"), ["case_id"], unique=False
        )

    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("event", sa.String(length=48), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["referral_id"], ["referrals.id"], name=op.f("fk_notifications_referral_id_referrals")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notifications_org_unread", ["org_id", "read_at", "created_at"], unique=False
        )

    op.create_table(
        "referral_messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("author_id", sa.Uuid(), nullable=True),
        sa.Column("author_org_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_referral_messages_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_messages_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_messages")),
    )
    with op.batch_alter_table("referral_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_referral_messages_referral_id"), ["referral_id"], unique=False
        )

    op.create_table(
        "referral_transitions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("referral_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column(
            "from_status",
            sa.Enum(
                "draft",
                "requested",
                "received",
                "accepted",
                "rejected",
                "in_progress",
                "on_hold",
                "completed",
                "failed",
                "cancelled",
                "entered_in_error",
                name="from_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column(
            "to_status",
            sa.Enum(
                "draft",
                "requested",
                "received",
                "accepted",
                "rejected",
                "in_progress",
                "on_hold",
                "completed",
                "failed",
                "cancelled",
                "entered_in_error",
                name="to_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=48), nullable=True),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_org_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_referral_transitions_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_referral_transitions_referral_id_referrals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_referral_transitions")),
    )
    with op.batch_alter_table("referral_transitions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_referral_transitions_referral_id"), ["referral_id"], unique=False
        )


def downgrade() -> None:
    refuse_if_holding(
        "referral_transitions",
        "referral_messages",
        "notifications",
        "idempotent_responses",
        "disclosures",
        "referrals",
        "idempotency_records",
    )
    with op.batch_alter_table("referral_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referral_transitions_referral_id"))

    op.drop_table("referral_transitions")
    with op.batch_alter_table("referral_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referral_messages_referral_id"))

    op.drop_table("referral_messages")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_notifications_org_unread")

    op.drop_table("notifications")
    with op.batch_alter_table("idempotent_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotent_responses_case_id"))

    op.drop_table("idempotent_responses")
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disclosures_to_org_id"))
        batch_op.drop_index(batch_op.f("ix_disclosures_referral_id"))
        batch_op.drop_index(batch_op.f("ix_disclosures_from_org_id"))
        batch_op.drop_index(batch_op.f("ix_disclosures_case_id"))

    op.drop_table("disclosures")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_referrals_updated_at"))
        batch_op.drop_index(batch_op.f("ix_referrals_to_org_id"))
        batch_op.drop_index(batch_op.f("ix_referrals_from_org_id"))
        batch_op.drop_index(batch_op.f("ix_referrals_case_id"))

    op.drop_table("referrals")
    with op.batch_alter_table("idempotency_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_records_case_id"))

    op.drop_table("idempotency_records")
