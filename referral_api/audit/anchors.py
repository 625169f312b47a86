"""Chain heads kept outside the database (`referral-api audit verify --anchors FILE`).

The database alone cannot show rows cut from the end of the chain together with a chain
head rewritten to match, nor a chain re-hashed from some row on by someone who can write
every row (docs/audit.md). A verification that passes appends the head it verified to a
file the operator keeps elsewhere (another machine, write-once storage); every later
verification checks that the row at each recorded seq still has the recorded hash.

One line per anchor: `<seq> <sha256 hex> <UTC time recorded>`. Blank lines and lines
starting with `#` are ignored. The file holds no personal data: sequence numbers and
hashes only.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

_LINE = re.compile(r"([1-9][0-9]{0,18}) ([0-9a-f]{64})(?: (\S+))?")


class AnchorFileError(ValueError):
    """The anchor file cannot be read as anchors: nothing is verified against it."""


def read(path: Path) -> dict[int, str]:
    """The anchors recorded in `path`, seq → hash (none when it does not exist yet)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise AnchorFileError(f"{path} cannot be read: {error}") from error
    by_seq: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise AnchorFileError(
                f"line {number} of {path} is not '<seq> <64 lowercase hex digits> [time]'"
            )
        seq, digest = int(match.group(1)), match.group(2)
        if by_seq.get(seq, digest) != digest:
            raise AnchorFileError(
                f"line {number} of {path} records seq {seq} with another hash than "
                f"line {first_line[seq]}"
            )
        by_seq[seq] = digest
        first_line.setdefault(seq, number)
    return by_seq


def append(path: Path, seq: int, digest: str) -> None:
    """Record the head `seq`/`digest` at the end of `path` (created if missing), on disk
    before returning."""
    line = f"{seq} {digest} {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.lseek(descriptor, 0, os.SEEK_END)
        if end and os.pread(descriptor, 1, end - 1) != b"\n":
            line = "\n" + line  # a last line someone left unterminated stays its own
        os.write(descriptor, line.encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
