"""Reports as CSV: the same rows and order as the JSON pages, one line per row.

Values are written as the JSON shows them: timestamps ISO 8601 with offset, ids and codes as
strings, booleans `true`/`false`, lists comma-joined, null empty. A cell that a spreadsheet
would run as a formula is prefixed with an apostrophe (OWASP CSV injection); report values
are ids, codes and times, so none should start that way, but a tampered row could.
"""

from __future__ import annotations

import csv
import enum
import io
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        value = ",".join(csv_value(item) for item in value)
    text = str(value)
    if text.startswith(_FORMULA_START) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def render_csv(
    columns: Sequence[str], rows: Iterable[dict[str, Any]], batch: int = 1000
) -> Iterator[str]:
    """Header, then the rows, yielded in chunks (the response is streamed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    pending = 0
    for row in rows:
        writer.writerow([csv_value(row.get(column)) for column in columns])
        pending += 1
        if pending >= batch:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue()
