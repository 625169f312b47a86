"""Consent event summaries, kept by the database for the DPO reports

One row per consent with events: the earliest `given`, the earliest of each closing event
(withdrawn, revoked, entered in error), the latest `expired`, the latest `renewed` and that
renewal's end (two renewals at one instant: the greater id, as the replay orders them), the
latest event of any kind, the latest end among the consent's provisions (null when one is
open-ended), and the consent's state with all its events counted. Triggers on consent_events and consent_provisions recompute a consent's row after
every INSERT, DELETE or UPDATE of a column the summary reads, so the row holds even for rows
written behind the application's back; the application never writes it.

Over a million cases (bench/dpo_reports.py) the reports read these rows instead of replaying
1.2 million events per call (referral_api/dpo/derived_state.py).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COLUMNS = (
    "consent_id, given_at, withdrawn_at, revoked_at, erroneous_at, expired_at, renewed_at, "
    "renewed_until, last_event_at, provisions_until, state"
)
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS.split(", ")[1:])
# The summary of the consents `e` holds: one SELECT for the backfill and both dialects'
# triggers, so they cannot disagree. The renewal's end is looked up only for renewed consents;
# the provisions' latest end is null when one of them is open-ended. `state` is the state
# with every event counted (referral_api/dpo/derived_state.py `_state`, the same rules; a
# test holds the two together).
_SUMMARY = """
SELECT a.*, CASE
    WHEN a.withdrawn_at IS NOT NULL AND (a.revoked_at IS NULL OR a.withdrawn_at <= a.revoked_at)
        AND (a.erroneous_at IS NULL OR a.withdrawn_at <= a.erroneous_at) THEN 'withdrawn'
    WHEN a.revoked_at IS NOT NULL AND (a.erroneous_at IS NULL OR a.revoked_at <= a.erroneous_at)
        THEN 'revoked'
    WHEN a.erroneous_at IS NOT NULL THEN 'entered_in_error'
    WHEN a.given_at IS NULL THEN NULL
    WHEN a.expired_at >= a.given_at AND (a.renewed_at IS NULL OR a.renewed_at < a.given_at
        OR a.expired_at > a.renewed_at) THEN 'expired'
    ELSE 'active' END
FROM (
    SELECT e.consent_id AS consent_id,
        min(CASE WHEN e.event_type = 'given' THEN e.occurred_at END) AS given_at,
        min(CASE WHEN e.event_type = 'withdrawn' THEN e.occurred_at END) AS withdrawn_at,
        min(CASE WHEN e.event_type = 'revoked' THEN e.occurred_at END) AS revoked_at,
        min(CASE WHEN e.event_type = 'entered_in_error' THEN e.occurred_at END) AS erroneous_at,
        max(CASE WHEN e.event_type = 'expired' THEN e.occurred_at END) AS expired_at,
        max(CASE WHEN e.event_type = 'renewed' THEN e.occurred_at END) AS renewed_at,
        CASE WHEN max(CASE WHEN e.event_type = 'renewed' THEN e.occurred_at END) IS NOT NULL
        THEN (
            SELECT r.valid_until FROM consent_events r
            WHERE r.consent_id = e.consent_id AND r.event_type = 'renewed'
            ORDER BY r.occurred_at DESC, r.id DESC LIMIT 1
        ) END AS renewed_until,
        max(e.occurred_at) AS last_event_at,
        (
            SELECT CASE WHEN count(*) = count(v.valid_until) THEN max(v.valid_until) END
            FROM consent_provisions v WHERE v.consent_id = e.consent_id
        ) AS provisions_until
    FROM consent_events e {where}
    GROUP BY e.consent_id
) a"""

# Every consent's row from scratch (bench/dpo_reports.py seeds events with the triggers off,
# then runs this).
BACKFILL = f"INSERT INTO consent_event_summaries ({_COLUMNS}){_SUMMARY.format(where='')}"

# PostgreSQL: writers of one consent's events take turns on its record (FOR NO KEY UPDATE
# does not conflict with the key-share lock of the events' foreign key), so each recompute,
# reading with a fresh snapshot under READ COMMITTED, sees the other's committed event.
_POSTGRES_REFRESH = f"""
CREATE FUNCTION consent_event_summary_refresh(target uuid) RETURNS void AS $$
BEGIN
    PERFORM 1 FROM consent_records WHERE id = target FOR NO KEY UPDATE;
    INSERT INTO consent_event_summaries ({_COLUMNS})
    {_SUMMARY.format(where="WHERE e.consent_id = target")}
    ON CONFLICT (consent_id) DO UPDATE SET {_UPDATES};
    IF NOT FOUND THEN
        DELETE FROM consent_event_summaries WHERE consent_id = target;
    END IF;
END;
$$ LANGUAGE plpgsql;
"""  # noqa: S608 - DDL from constants, no values
_POSTGRES_TRIGGER_FUNCTION = """
CREATE FUNCTION consent_summary_refresh_row() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM consent_event_summary_refresh(OLD.consent_id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.consent_id <> OLD.consent_id) THEN
        PERFORM consent_event_summary_refresh(NEW.consent_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""
# table → the columns the summary reads: writing a withdrawal's effects or re-encrypting a
# reason (key rotation, erasure) recomputes nothing.
_WATCHED = {
    "consent_events": "UPDATE OF id, consent_id, event_type, occurred_at, valid_until",
    "consent_provisions": "UPDATE OF consent_id, valid_until",
}


def _sqlite_triggers(table: str) -> dict[str, tuple[str, list[str]]]:
    return {
        f"{table}_summary_insert": ("INSERT", ["NEW"]),
        f"{table}_summary_update": (_WATCHED[table], ["OLD", "NEW"]),
        f"{table}_summary_delete": ("DELETE", ["OLD"]),
    }


def _sqlite_refresh(row: str) -> str:
    return (
        f"DELETE FROM consent_event_summaries WHERE consent_id = {row}.consent_id;\n"  # noqa: S608 - DDL from constants (`row` is NEW or OLD), no values
        f"INSERT INTO consent_event_summaries ({_COLUMNS})"
        f"{_SUMMARY.format(where=f'WHERE e.consent_id = {row}.consent_id')};\n"
    )


def upgrade() -> None:
    op.create_table(
        "consent_event_summaries",
        sa.Column("consent_id", sa.Uuid(), nullable=False),
        sa.Column("given_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erroneous_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renewed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provisions_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["consent_id"],
            ["consent_records.id"],
            name=op.f("fk_consent_event_summaries_consent_id_consent_records"),
        ),
        sa.PrimaryKeyConstraint("consent_id", name=op.f("pk_consent_event_summaries")),
    )
    op.create_index(
        op.f("ix_consent_event_summaries_last_event_at"),
        "consent_event_summaries",
        ["last_event_at"],
    )
    op.execute(BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRES_REFRESH)
        op.execute(_POSTGRES_TRIGGER_FUNCTION)
        for table, watched in _WATCHED.items():
            op.execute(
                f"CREATE TRIGGER {table}_summary AFTER INSERT OR DELETE OR {watched} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION consent_summary_refresh_row()"
            )
    else:
        for table in _WATCHED:
            for name, (when, rows) in _sqlite_triggers(table).items():
                body = "".join(_sqlite_refresh(row) for row in rows)
                op.execute(
                    f"CREATE TRIGGER {name} AFTER {when} ON {table} FOR EACH ROW\nBEGIN\n{body}END"
                )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _WATCHED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_summary ON {table}")
        op.execute("DROP FUNCTION IF EXISTS consent_summary_refresh_row()")
        op.execute("DROP FUNCTION IF EXISTS consent_event_summary_refresh(uuid)")
    else:
        for table in _WATCHED:
            for name in _sqlite_triggers(table):
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index(
        op.f("ix_consent_event_summaries_last_event_at"), table_name="consent_event_summaries"
    )
    op.drop_table("consent_event_summaries")
