"""Keyset pagination over a report's labelled columns, in any mix of directions.

The cursor is opaque (base64 of JSON): the report's name and the sort key of the last row
returned, each value tagged with its type so it binds back exactly. A report ordered by a
row id its reader must not see (the platform-wide audit ids) seals it instead
(`pagination.seal_id_cursor`, for a purpose naming the report and its scope). A cursor is
only ever a position: the report's scope and filters are applied again on every page.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from referral_api.pagination import (
    MAX_ROW_ID,
    cursor_document,
    cursor_instant,
    invalid_cursor,
    open_id_cursor,
    seal_id_cursor,
)

# Rows fetched per round trip when a report is exported whole (server-side cursor on
# PostgreSQL, so memory stays flat however many rows there are).
EXPORT_BATCH = 2000


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    # What a cursor must hold for it: "d" a timestamp, "u" an id, "i" an integer.
    kind: str
    descending: bool = False


def _tag(value: Any) -> list[Any]:
    if isinstance(value, datetime):
        return ["d", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["i", value]
    if isinstance(value, str):
        return ["s", value]
    raise TypeError(f"unsupported sort key type {type(value).__name__}")


def _untag(item: Any) -> Any:
    """A sort-key value from its tagged form; ValueError for anything the server could not
    have written: the cursor is the client's to forge, and a value that parses but cannot be
    bound (an instant outside UTC's years 1-9999, an integer past BIGINT) would fail only in
    the query, after a CSV export has started."""
    kind, value = item
    if kind == "d" and isinstance(value, str):
        return cursor_instant(value)
    if kind == "u" and isinstance(value, str):
        return uuid.UUID(value)
    if kind == "b" and isinstance(value, bool):
        return value
    if kind == "i" and isinstance(value, int) and not isinstance(value, bool):
        if not -MAX_ROW_ID - 1 <= value <= MAX_ROW_ID:
            raise ValueError("integer past BIGINT")
        return value
    if kind == "s" and isinstance(value, str) and "\x00" not in value:
        value.encode("utf-8")  # an unpaired surrogate: UnicodeEncodeError, a ValueError
        return value
    raise ValueError("bad cursor value")


def encode_cursor(report: str, values: Sequence[Any]) -> str:
    raw = json.dumps({"r": report, "k": [_tag(v) for v in values]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(report: str, cursor: str, kinds: Sequence[str]) -> list[Any]:
    """The sort key in a cursor; 422 when it is malformed, belongs to another report or holds
    other types than the report sorts by."""
    document = cursor_document(cursor)
    try:
        if document["r"] != report or [item[0] for item in document["k"]] != list(kinds):
            raise ValueError("cursor of another report")
        return [_untag(item) for item in document["k"]]
    except (ValueError, TypeError, KeyError, IndexError):
        raise invalid_cursor() from None


def after(columns: Sequence[Any], order: Sequence[SortKey], values: Sequence[Any]) -> Any:
    """Rows strictly after `values` in the sort order (a lexicographic OR chain, since the
    directions may differ and not every database compares row values)."""
    clauses: list[ColumnElement[bool]] = []
    for position, key in enumerate(order):
        column = columns[position]
        beyond = column < values[position] if key.descending else column > values[position]
        ties = [columns[i] == values[i] for i in range(position)]
        clauses.append(and_(*ties, beyond))
    return or_(*clauses)


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None


def _position(report: str, cursor: str, order: Sequence[SortKey], sealed: str | None) -> list[Any]:
    if sealed is None:
        return decode_cursor(report, cursor, [k.kind for k in order])
    return [open_id_cursor(cursor, sealed)]


def _cursor_after(
    report: str, row: dict[str, Any], order: Sequence[SortKey], sealed: str | None
) -> str:
    values = [row[key.column] for key in order]
    if sealed is None:
        return encode_cursor(report, values)
    (row_id,) = values
    return seal_id_cursor(row_id, sealed)


def _ordered(
    report: str,
    base: Select[Any],
    order: Sequence[SortKey],
    cursor: str | None,
    sealed: str | None,
) -> Any:
    if sealed is not None and [key.kind for key in order] != ["i"]:
        raise ValueError("a sealed cursor holds one row id")
    sub = base.subquery("report_rows")
    columns = [sub.c[key.column] for key in order]
    stmt = select(sub)
    if cursor:
        stmt = stmt.where(after(columns, order, _position(report, cursor, order, sealed)))
    return stmt.order_by(
        *(c.desc() if k.descending else c.asc() for c, k in zip(columns, order, strict=True))
    )


def page(
    session: Session,
    report: str,
    base: Select[Any],
    order: Sequence[SortKey],
    cursor: str | None,
    limit: int,
    sealed: str | None = None,
) -> Page:
    """One page of `limit` rows after `cursor`, and the cursor of the next page (sealed for
    the purpose `sealed` when given: the order is then one row id)."""
    stmt = _ordered(report, base, order, cursor, sealed).limit(limit + 1)
    rows = [dict(row) for row in session.execute(stmt).mappings()]
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, _cursor_after(report, rows[-1], order, sealed))


def stream(
    session: Session,
    report: str,
    base: Select[Any],
    order: Sequence[SortKey],
    cursor: str | None,
    sealed: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every row after `cursor`, in the same order as the pages, fetched in batches when
    iterated. The cursor is checked now (422), before an export's first byte is sent: once
    the response has started, an error can only cut it short."""
    stmt = _ordered(report, base, order, cursor, sealed).execution_options(yield_per=EXPORT_BATCH)

    def rows() -> Iterator[dict[str, Any]]:
        for row in session.execute(stmt).mappings():
            yield dict(row)

    return rows()
