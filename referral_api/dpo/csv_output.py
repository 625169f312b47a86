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
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# A plain decimal number (a signed count or amount) is left as it is; anything else that
# begins like a formula is not, however a number parser would read it (`-inf`, `+nan`,
# `-1_0`, `-1e5`).
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def _text(value: str) -> str:
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


# By exact type: an export writes millions of cells, and a dict lookup beats a chain of
# isinstance checks. Enum types are added the first time one is met.
_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: _text,
    uuid.UUID: str,
    datetime: datetime.isoformat,
    bool: lambda value: "true" if value else "false",
    int: str,
    type(None): lambda _: "",
}


def csv_value(value: Any) -> str:
    write = _BY_TYPE.get(type(value))
    if write is not None:
        return write(value)
    if isinstance(value, enum.Enum):
        _BY_TYPE[type(value)] = write = lambda member: _text(str(member.value))
        return write(value)
    if isinstance(value, list | tuple):
        return _text(",".join(csv_value(item) for item in value))
    if isinstance(value, datetime):  # a subclass
        return value.isoformat()
    return _text(str(value))


def render_csv(
    columns: Sequence[str], rows: Iterable[dict[str, Any]], batch: int = 1000
) -> Iterator[str]:
    """Header, then the rows, yielded in chunks (the response is streamed).

    The header goes out alone: a server pulls the first chunk before the client reads
    anything, and it should not start reading the database for a client that may never ask
    for the rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    yield buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
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
