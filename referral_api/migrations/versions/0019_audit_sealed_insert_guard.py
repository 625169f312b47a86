"""The database refuses an audit row inserted already sealed

An audit row is inserted unsealed and sealed afterwards (seq, prev_hash, hash and sealed_at
set by one UPDATE, which the append-only trigger of 0002 allows only on an unsealed row).
Nothing the application does inserts a row that carries any of the four, but the trigger
did not refuse such an INSERT: a role given full INSERT on `audit_events` could add a
sealed-looking row anywhere in the chain. `audit verify` names such a row, wherever it is;
docs/audit.md's grants keep the four columns from the application's role. Now the database
refuses it too, whatever the role's grants (a superuser can still switch triggers off).

The trigger's WHEN clause is evaluated before the function is called, so the application's
inserts (every request's audit row) do not run PL/pgSQL. PostgreSQL only, as 0002's guard.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

REFUSE_SEALED_INSERT = """
CREATE FUNCTION audit_events_refuse_sealed_insert() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (INSERT of a sealed row refused: seq, '
        'prev_hash, hash and sealed_at are set by sealing alone)'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""

SEALED = (
    "NEW.seq IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.hash IS NOT NULL "
    "OR NEW.sealed_at IS NOT NULL"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(REFUSE_SEALED_INSERT)
    op.execute(
        "CREATE TRIGGER audit_events_sealed_insert_guard BEFORE INSERT ON audit_events "
        f"FOR EACH ROW WHEN ({SEALED}) EXECUTE FUNCTION audit_events_refuse_sealed_insert()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS audit_events_sealed_insert_guard ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS audit_events_refuse_sealed_insert()")
