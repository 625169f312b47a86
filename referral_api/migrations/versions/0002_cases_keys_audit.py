"""Encrypted cases and notes, wrapped keys, blind indexes, hash-chained audit log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 23:04:15.666664
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from referral_api.migrations.guards import refuse_if_holding

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

AUDIT_GUARD_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_events_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.seq IS NULL AND NEW.seq IS NOT NULL
       AND (NEW.id, NEW.occurred_at, NEW.actor_type, NEW.actor_id, NEW.actor_org_id,
            NEW.actor_role, NEW.acting_officer, NEW.action, NEW.resource_type,
            NEW.resource_id, NEW.case_id, NEW.categories, NEW.purpose, NEW.decision,
            NEW.reason, NEW.legal_basis, NEW.request_id, NEW.details)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.occurred_at, OLD.actor_type, OLD.actor_id, OLD.actor_org_id,
            OLD.actor_role, OLD.acting_officer, OLD.action, OLD.resource_type,
            OLD.resource_id, OLD.case_id, OLD.categories, OLD.purpose, OLD.decision,
            OLD.reason, OLD.legal_basis, OLD.request_id, OLD.details)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_org_id", sa.Uuid(), nullable=True),
        sa.Column("actor_role", sa.String(length=32), nullable=True),
        sa.Column("acting_officer", sa.String(length=128), nullable=True),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("case_id", sa.Uuid(), nullable=True),
        sa.Column("categories", sa.String(length=200), nullable=True),
        sa.Column("purpose", sa.String(length=48), nullable=True),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("legal_basis", sa.String(length=100), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("details", sa.String(length=2000), nullable=True),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_events_seq")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_events_actor_org_id"), ["actor_org_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_audit_events_case_id"), ["case_id"], unique=False)

    op.create_table(
        "index_keys",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("root_version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.String(length=400), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_index_keys_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("org_id", "version", name=op.f("pk_index_keys")),
    )
    with op.batch_alter_table("index_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_index_keys_root_version"), ["root_version"], unique=False
        )

    op.create_table(
        "key_rotation_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_rotation_jobs")),
    )
    op.create_table(
        "org_keys",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("root_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_org_keys_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("org_id", "version", name=op.f("pk_org_keys")),
    )
    with op.batch_alter_table("org_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_org_keys_root_version"), ["root_version"], unique=False
        )

    op.create_table(
        "cases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_code", sa.String(length=16), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column(
            "case_type",
            sa.Enum(
                "thb", "gbv", name="case_type", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "active",
                "closed",
                name="case_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("status_reason", sa.String(length=48), nullable=True),
        sa.Column(
            "risk_level",
            sa.Enum(
                "low",
                "medium",
                "high",
                "critical",
                name="risk_level",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("assignee_id", sa.Uuid(), nullable=True),
        sa.Column(
            "nrm_stage",
            sa.Enum(
                "identified",
                "reflection_period",
                "assistance",
                "integration",
                "return",
                "closed",
                name="nrm_stage",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.Column("restricted", sa.Boolean(), nullable=False),
        sa.Column("erased", sa.Boolean(), nullable=False),
        sa.Column("given_name", sa.LargeBinary(), nullable=True),
        sa.Column("family_name", sa.LargeBinary(), nullable=True),
        sa.Column("aliases", sa.LargeBinary(), nullable=True),
        sa.Column("date_of_birth", sa.LargeBinary(), nullable=True),
        sa.Column("sex", sa.LargeBinary(), nullable=True),
        sa.Column("nationality", sa.LargeBinary(), nullable=True),
        sa.Column("languages", sa.LargeBinary(), nullable=True),
        sa.Column("documents", sa.LargeBinary(), nullable=True),
        sa.Column("phone", sa.LargeBinary(), nullable=True),
        sa.Column("email", sa.LargeBinary(), nullable=True),
        sa.Column("safe_contact_notes", sa.LargeBinary(), nullable=True),
        sa.Column("address", sa.LargeBinary(), nullable=True),
        sa.Column("is_shelter", sa.LargeBinary(), nullable=True),
        sa.Column("gbv_type", sa.LargeBinary(), nullable=True),
        sa.Column("exploitation_types", sa.LargeBinary(), nullable=True),
        sa.Column("means_of_control", sa.LargeBinary(), nullable=True),
        sa.Column("recruiter_relation", sa.LargeBinary(), nullable=True),
        sa.Column("incident_date", sa.LargeBinary(), nullable=True),
        sa.Column("incident_place", sa.LargeBinary(), nullable=True),
        sa.Column("narrative", sa.LargeBinary(), nullable=True),
        sa.Column("health_notes", sa.LargeBinary(), nullable=True),
        sa.Column("psychosocial_notes", sa.LargeBinary(), nullable=True),
        sa.Column("legal_status", sa.LargeBinary(), nullable=True),
        sa.Column("legal_proceedings", sa.LargeBinary(), nullable=True),
        sa.Column("lawyer", sa.LargeBinary(), nullable=True),
        sa.Column("residence_status", sa.LargeBinary(), nullable=True),
        sa.Column("reflection_period_until", sa.LargeBinary(), nullable=True),
        sa.Column("needs_assessment", sa.LargeBinary(), nullable=True),
        sa.Column("service_plan", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["assignee_id"], ["users.id"], name=op.f("fk_cases_assignee_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_cases_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("case_code", name=op.f("uq_cases_case_code")),
    )
    op.create_table(
        "case_keys",
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("org_key_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], name=op.f("fk_case_keys_case_id_cases")),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_case_keys_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("case_id", "version", name=op.f("pk_case_keys")),
    )
    with op.batch_alter_table("case_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_keys_org_id"), ["org_id"], unique=False)

    op.create_table(
        "case_notes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("author_id", sa.Uuid(), nullable=True),
        sa.Column(
            "category",
            sa.Enum(
                "identity",
                "contact",
                "location",
                "incident",
                "health",
                "psychosocial",
                "legal",
                "immigration",
                "needs",
                name="category",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_case_notes_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organisations.id"], name=op.f("fk_case_notes_org_id_organisations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_notes")),
    )
    with op.batch_alter_table("case_notes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_notes_case_id"), ["case_id"], unique=False)

    op.create_table(
        "case_search_index",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column("field", sa.String(length=24), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_case_search_index_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_search_index")),
    )
    with op.batch_alter_table("case_search_index", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_search_index_case_id"), ["case_id"], unique=False)
        batch_op.create_index(
            "ix_case_search_index_lookup", ["org_id", "field", "key_version", "value"], unique=False
        )

    op.create_table(
        "case_status_changes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("case_id", sa.Uuid(), nullable=False),
        sa.Column(
            "from_status",
            sa.Enum(
                "open",
                "active",
                "closed",
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
                "open",
                "active",
                "closed",
                name="to_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=48), nullable=True),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_case_status_changes_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_status_changes")),
    )
    with op.batch_alter_table("case_status_changes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_case_status_changes_case_id"), ["case_id"], unique=False
        )

    op.execute(
        sa.text(
            "INSERT INTO audit_chain_head (id, last_seq, last_hash) VALUES (1, 0, :genesis)"
        ).bindparams(genesis="0" * 64)
    )
    if op.get_bind().dialect.name == "postgresql":
        # The database itself refuses to change the audit trail: no DELETE, no TRUNCATE, and
        # UPDATE only to seal an unsealed row (seq, prev_hash, hash, sealed_at; nothing else).
        op.execute(AUDIT_GUARD_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_events_guard BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_guard()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_guard()"
        )


def downgrade() -> None:
    refuse_if_holding(
        "case_status_changes",
        "case_search_index",
        "case_notes",
        "case_keys",
        "cases",
        "org_keys",
        "key_rotation_jobs",
        "index_keys",
        "audit_events",
        "audit_chain_head",
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_guard ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_guard()")
    with op.batch_alter_table("case_status_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_status_changes_case_id"))

    op.drop_table("case_status_changes")
    with op.batch_alter_table("case_search_index", schema=None) as batch_op:
        batch_op.drop_index("ix_case_search_index_lookup")
        batch_op.drop_index(batch_op.f("ix_case_search_index_case_id"))

    op.drop_table("case_search_index")
    with op.batch_alter_table("case_notes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_notes_case_id"))

    op.drop_table("case_notes")
    with op.batch_alter_table("case_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_case_keys_org_id"))

    op.drop_table("case_keys")
    op.drop_table("cases")
    with op.batch_alter_table("org_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_org_keys_root_version"))

    op.drop_table("org_keys")
    op.drop_table("key_rotation_jobs")
    with op.batch_alter_table("index_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_index_keys_root_version"))

    op.drop_table("index_keys")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_case_id"))
        batch_op.drop_index(batch_op.f("ix_audit_events_actor_org_id"))

    op.drop_table("audit_events")
    op.drop_table("audit_chain_head")
