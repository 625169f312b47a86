"""Consent event summaries also keep the consent's organisation and whether it has repeats

Two columns for the platform-wide consent-summary report (referral_api/dpo/service.py), which
then reads provisions ⋈ summaries alone instead of also joining 1.1 million consent records
(for the organisation) and the provisions with themselves (to find a provision repeating an
earlier one of its consent, counted once):

- `org_id`: the consent record's organisation;
- `has_repeats`: some provision of the consent repeats an earlier one (a lower position) in
  purpose, recipient organisation and recipient type (null-safe) — false for almost every
  consent, so the report looks for the repeated provisions only in the few that have them.

Both are computed in the same recompute SELECT as the other columns (one SELECT for the
backfill and both dialects' triggers). The triggers on consent_provisions now also watch the
columns a repeat depends on (position, purpose, recipient), and one on consent_records its
`org_id`, so the row holds even for rows written behind the application's back. Existing
rows are filled by one UPDATE … FROM a join, no lookup per consent (~11 s over 1.1 million
rows on the bench, ANALYZE included). Also: a partial index on the consents with repeats,
and on PostgreSQL extended statistics on the provisions' purpose and recipient (below).
Downgrade restores migration 0010's definitions.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _previous() -> Any:
    """Migration 0010's module (its definitions are what downgrade restores)."""
    path = Path(__file__).with_name("0010_consent_state_summary.py")
    spec = importlib.util.spec_from_file_location("_consent_state_summary_0010", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_COLUMNS = (
    "consent_id, given_at, withdrawn_at, revoked_at, erroneous_at, expired_at, renewed_at, "
    "renewed_until, last_event_at, provisions_until, org_id, has_repeats, state"
)
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS.split(", ")[1:])


def _same(column: str, a: str = "y", b: str = "x") -> str:
    """Null-safe equality, portable (IS NOT DISTINCT FROM is PostgreSQL's only)."""
    return f"({a}.{column} = {b}.{column} OR ({a}.{column} IS NULL AND {b}.{column} IS NULL))"


# `y` is an earlier provision of the consent `x` belongs to, with x's purpose and recipient:
# x repeats y (the report's `consents` counts a consent once per row — dpo/service.py).
_REPEATS = (
    "y.consent_id = x.consent_id AND y.position < x.position AND y.purpose = x.purpose "
    f"AND {_same('recipient_org_id')} AND {_same('recipient_org_type')}"
)

# As 0010's, with the two new columns (see its comments; `state` by the same rules).
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
        ) AS provisions_until,
        (SELECT c.org_id FROM consent_records c WHERE c.id = e.consent_id) AS org_id,
        EXISTS (
            SELECT 1 FROM consent_provisions x JOIN consent_provisions y ON <repeats>
            WHERE x.consent_id = e.consent_id
        ) AS has_repeats
    FROM consent_events e {where}
    GROUP BY e.consent_id
) a""".replace("<repeats>", _REPEATS)

# Every consent's row from scratch (bench/dpo_reports.py seeds events with the triggers off,
# then runs this).
BACKFILL = f"INSERT INTO consent_event_summaries ({_COLUMNS}){_SUMMARY.format(where='')}"

# The two new columns of the rows 0010 kept: one pass over the records and one hash
# self-join of the provisions, not a correlated lookup per consent.
_FILL = f"""
UPDATE consent_event_summaries SET org_id = f.org_id, has_repeats = f.has_repeats
FROM (
    SELECT c.id AS consent_id, c.org_id AS org_id, (r.consent_id IS NOT NULL) AS has_repeats
    FROM consent_records c LEFT JOIN (
        SELECT DISTINCT x.consent_id AS consent_id
        FROM consent_provisions x JOIN consent_provisions y ON {_REPEATS}
    ) r ON r.consent_id = c.id
) f
WHERE f.consent_id = consent_event_summaries.consent_id
"""  # noqa: S608 - DDL from constants, no values

# PostgreSQL: as 0010's function (the consent's record locked first), with the new columns.
_POSTGRES_REFRESH = f"""
CREATE OR REPLACE FUNCTION consent_event_summary_refresh(target uuid) RETURNS void AS $$
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
_POSTGRES_RECORD_FUNCTION = """
CREATE FUNCTION consent_summary_refresh_record() RETURNS trigger AS $$
BEGIN
    PERFORM consent_event_summary_refresh(NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

# table → the columns the summary reads (0010's, plus what a repeat depends on).
_WATCHED = {
    "consent_events": "UPDATE OF id, consent_id, event_type, occurred_at, valid_until",
    "consent_provisions": (
        "UPDATE OF consent_id, valid_until, position, purpose, recipient_org_id, recipient_org_type"
    ),
}
_RECORD_TRIGGER = "consent_records_summary_update"
# PostgreSQL: how many (purpose, recipient type, recipient) combinations the provisions hold.
# Without it the planner multiplies the three columns' counts, expects ~350,000 groups for the
# report's ~1,500 and, to spare gathering them from parallel workers, aggregates 1.5 million
# rows in one process (1.5-1.9 s instead of 1.1-1.3 s on the bench).
_RECIPIENT_STATISTICS = "consent_provisions_recipient_stats"


def _sqlite_triggers(table: str) -> dict[str, tuple[str, list[str]]]:
    return {
        f"{table}_summary_insert": ("INSERT", ["NEW"]),
        f"{table}_summary_update": (_WATCHED[table], ["OLD", "NEW"]),
        f"{table}_summary_delete": ("DELETE", ["OLD"]),
    }


def _sqlite_refresh(consent_id: str) -> str:
    return (
        f"DELETE FROM consent_event_summaries WHERE consent_id = {consent_id};\n"  # noqa: S608 - DDL from constants (NEW/OLD columns), no values
        f"INSERT INTO consent_event_summaries ({_COLUMNS})"
        f"{_SUMMARY.format(where=f'WHERE e.consent_id = {consent_id}')};\n"
    )


def _sqlite_create(name: str, when: str, table: str, body: str) -> None:
    op.execute(f"CREATE TRIGGER {name} AFTER {when} ON {table} FOR EACH ROW\nBEGIN\n{body}END")


def upgrade() -> None:
    op.add_column("consent_event_summaries", sa.Column("org_id", sa.Uuid(), nullable=True))
    op.add_column("consent_event_summaries", sa.Column("has_repeats", sa.Boolean(), nullable=True))
    # The few consents with a repeat, found without reading the other 1.1 million rows.
    op.create_index(
        op.f("ix_consent_event_summaries_repeats"),
        "consent_event_summaries",
        ["consent_id"],
        postgresql_where=sa.text("has_repeats"),
        sqlite_where=sa.text("has_repeats"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRES_REFRESH)
        table = "consent_provisions"
        op.execute(f"DROP TRIGGER IF EXISTS {table}_summary ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_summary AFTER INSERT OR DELETE OR {_WATCHED[table]} "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION consent_summary_refresh_row()"
        )
        op.execute(_POSTGRES_RECORD_FUNCTION)
        op.execute(
            f"CREATE TRIGGER {_RECORD_TRIGGER} AFTER UPDATE OF org_id ON consent_records "
            "FOR EACH ROW EXECUTE FUNCTION consent_summary_refresh_record()"
        )
        op.execute(
            f"CREATE STATISTICS {_RECIPIENT_STATISTICS} (ndistinct) "
            "ON purpose, recipient_org_type, recipient_org_id FROM consent_provisions"
        )
    else:
        for table in _WATCHED:
            for name, (when, rows) in _sqlite_triggers(table).items():
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
                body = "".join(_sqlite_refresh(f"{row}.consent_id") for row in rows)
                _sqlite_create(name, when, table, body)
        _sqlite_create(
            _RECORD_TRIGGER, "UPDATE OF org_id", "consent_records", _sqlite_refresh("NEW.id")
        )
    op.execute(_FILL)
    if op.get_bind().dialect.name == "postgresql":
        # The new statistics, and the new columns' (a sample: well under a second).
        op.execute("ANALYZE consent_provisions")
        op.execute("ANALYZE consent_event_summaries")


def downgrade() -> None:
    previous = _previous()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {_RECIPIENT_STATISTICS}")
        op.execute(f"DROP TRIGGER IF EXISTS {_RECORD_TRIGGER} ON consent_records")
        op.execute("DROP FUNCTION IF EXISTS consent_summary_refresh_record()")
        op.execute(
            previous._POSTGRES_REFRESH.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        )
        table = "consent_provisions"
        op.execute(f"DROP TRIGGER IF EXISTS {table}_summary ON {table}")
        op.execute(
            f"CREATE TRIGGER {table}_summary AFTER INSERT OR DELETE OR "
            f"{previous._WATCHED[table]} ON {table} FOR EACH ROW "
            "EXECUTE FUNCTION consent_summary_refresh_row()"
        )
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {_RECORD_TRIGGER}")
        for table in previous._WATCHED:
            for name, (when, rows) in previous._sqlite_triggers(table).items():
                op.execute(f"DROP TRIGGER IF EXISTS {name}")
                body = "".join(previous._sqlite_refresh(row) for row in rows)
                _sqlite_create(name, when, table, body)
    op.drop_index(op.f("ix_consent_event_summaries_repeats"), table_name="consent_event_summaries")
    op.execute("ALTER TABLE consent_event_summaries DROP COLUMN has_repeats")
    op.execute("ALTER TABLE consent_event_summaries DROP COLUMN org_id")
