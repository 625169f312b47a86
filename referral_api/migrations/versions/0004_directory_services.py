"""Directory of services (Open Referral HSDS-shaped)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 00:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from referral_api.migrations.guards import refuse_if_holding

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directory_services",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=4000), nullable=False),
        sa.Column(
            "service_type",
            sa.Enum(
                "legal_assistance",
                "psychosocial_support",
                "shelter",
                "health",
                "social_assistance",
                "law_enforcement",
                "return_assistance",
                "interpretation",
                name="service_type",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("languages", sa.String(length=1000), nullable=False),
        sa.Column("eligibility_notes", sa.String(length=4000), nullable=True),
        sa.Column("area_served", sa.String(length=500), nullable=False),
        sa.Column("area_served_folded", sa.String(length=2000), nullable=False),
        sa.Column("professional_contact", sa.String(length=254), nullable=False),
        sa.Column("accepting_referrals", sa.Boolean(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "inactive",
                name="service_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organisations.id"],
            name=op.f("fk_directory_services_org_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_services")),
    )
    with op.batch_alter_table("directory_services", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_directory_services_org_id"), ["org_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_directory_services_service_type"), ["service_type"], unique=False
        )


def downgrade() -> None:
    refuse_if_holding("directory_services")
    with op.batch_alter_table("directory_services", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_directory_services_service_type"))
        batch_op.drop_index(batch_op.f("ix_directory_services_org_id"))

    op.drop_table("directory_services")
