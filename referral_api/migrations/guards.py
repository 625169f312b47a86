"""What a downgrade checks before it drops tables.

A downgrade that drops a table holding records would destroy them for good: the audit
trail, erasure tombstones (the proof of what was destroyed), legal holds, consents, cases.
Every downgrade that drops tables calls `refuse_if_holding` with them first and, while any
holds a row, refuses and changes nothing. Migrations stay self-contained: this module uses
SQLAlchemy and Alembic only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def refuse_if_holding(*tables: str) -> None:
    """RuntimeError naming every table in `tables` that holds rows; nothing is dropped."""
    bind = op.get_bind()
    holding = [
        f"{name} ({count})"
        for name in tables
        if (count := bind.scalar(sa.select(sa.func.count()).select_from(sa.table(name))))
    ]
    if holding:
        raise RuntimeError(
            "This downgrade would drop tables that hold records: "
            + ", ".join(holding)
            + ". Restore a backup of the earlier version instead."
        )
