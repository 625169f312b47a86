"""Recording, sealing and verifying the audit chain.

Requests never lock the chain: each inserts unsealed rows in its own transaction. The
sealer (each worker's sealing thread, see `hooks`, and `referral-api audit seal`/`verify`)
takes the head row with SKIP LOCKED — if another worker is sealing, it simply leaves the
work to it — and chains a batch of unsealed rows in id order:
    hash = SHA-256(prev_hash ‖ canonical(row))
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    CursorResult,
    Integer,
    String,
    Text,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from referral_api.access.actor import Actor
from referral_api.audit.models import AuditChainHead, AuditEvent

GENESIS_HASH = "0" * 64
ALLOW = "allow"
DENY = "deny"

log = logging.getLogger(__name__)
# The action of the row that records a lost chain head rebuilt by sealing (`_lock_head`).
HEAD_REBUILT = "audit:chain-head-rebuilt"

_CANONICAL_FIELDS = (
    "id",
    "occurred_at",
    "actor_type",
    "actor_id",
    "actor_org_id",
    "actor_role",
    "acting_officer",
    "action",
    "resource_type",
    "resource_id",
    "case_id",
    "categories",
    "purpose",
    "decision",
    "reason",
    "legal_basis",
    "request_id",
    "details",
)


# Set on a session that wrote audit rows: its worker's sealer is woken after the request
# (audit/hooks.py).
ROWS_WRITTEN = "audit_rows_written"
# inline(): no RETURNING of the new id (nothing reads it back).
_INSERT = insert(AuditEvent.__table__).inline()


def _row(
    actor: Actor,
    action: str,
    *,
    resource_type: str,
    resource_id: Any = None,
    case_id: uuid.UUID | None = None,
    categories: Iterable[str] = (),
    purpose: str | None = None,
    decision: str = ALLOW,
    reason: str | None = None,
    legal_basis: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "occurred_at": datetime.now(UTC),
        "actor_type": actor.kind.value,
        "actor_id": actor.id,
        "actor_org_id": actor.org_id,
        "actor_role": actor.role.value if actor.role else None,
        "acting_officer": actor.acting_officer,
        "action": action,
        "resource_type": resource_type,
        "resource_id": str(resource_id) if resource_id is not None else None,
        "case_id": case_id,
        "categories": ",".join(sorted(set(categories))) or None,
        "purpose": purpose,
        "decision": decision,
        "reason": reason,
        "legal_basis": legal_basis,
        "request_id": actor.request_id,
        "details": json.dumps(details, sort_keys=True, default=str) if details else None,
    }


def row(actor: Actor, action: str, **fields: Any) -> dict[str, Any]:
    """An audit row's column values, for a caller that inserts it with its own statement
    (`insert_from_json`) and then calls `mark_written`; `record` writes one itself."""
    return _row(actor, action, **fields)


def mark_written(session: Session) -> None:
    """Tell the request's sealer that this session wrote audit rows."""
    session.info[ROWS_WRITTEN] = True


_JSON_COLUMNS = tuple(
    c.key
    for c in AuditEvent.__table__.c
    if c.key not in ("id", "seq", "prev_hash", "hash", "sealed_at")
)


def _insert_json(function: Any, parameter: str) -> Any:
    """An INSERT of the audit rows that `function` (json_populate_record or _recordset)
    makes, typed by the table itself, of the JSON in the text parameter `parameter`."""
    source = function(
        literal_column("NULL::audit_events"), sql_cast(bindparam(parameter, type_=Text), JSON)
    ).table_valued(*_JSON_COLUMNS)
    return insert(AuditEvent.__table__).from_select(
        _JSON_COLUMNS, select(*(source.c[c] for c in _JSON_COLUMNS))
    )


def insert_from_json(parameter: str) -> Any:
    """PostgreSQL: an INSERT of one audit row given as a JSON object (`row_json`) in the
    text parameter `parameter`: to be a CTE of a statement that writes a record and its
    audit row at once, one parameter where the row has 17 columns."""
    return _insert_json(func.json_populate_record, parameter)


# PostgreSQL: many audit rows as one JSON array (`row_json` of a list) in one parameter,
# built once: psycopg's executemany of a single-row INSERT sends a statement per row and
# dumps each row's 17 parameters in Python, a tenth of an exact-name search's CPU for its
# page of results (bench/README.md).
_INSERT_JSON_ROWS = _insert_json(func.json_populate_recordset, "rows")


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert rows from `row` (then `mark_written`)."""
    session.connection().execute(_INSERT, rows)


def row_json(values: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The JSON of a row from `row`, or of a list of them (uuids and timestamps as text,
    microseconds kept): the parameter of `insert_from_json` or `_INSERT_JSON_ROWS`."""
    return orjson.dumps(values).decode("utf-8")


def record(session: Session, actor: Actor, action: str, **fields: Any) -> None:
    """Write one audit row in the caller's transaction (it commits, or rolls back, with the
    change): ids, codes and categories only, never personal values. `fields` are `_row`'s
    keywords (resource_type, resource_id, case_id, categories, …); an unknown one is a
    TypeError there.

    A Core INSERT, executed now on the session's connection: the row is never read back or
    changed by the request, so the unit of work has nothing to track, and building,
    flushing and identity-mapping an ORM object for it cost about a tenth of reading a case
    (`Session.execute` of a Core statement only adds ~40 µs of dispatch to the same
    connection's execute, bench/README.md)."""
    row = _row(actor, action, **fields)
    session.connection().execute(_INSERT, row)
    session.info[ROWS_WRITTEN] = True


def record_many(
    session: Session,
    actor: Actor,
    action: str,
    *,
    resource_type: str,
    rows: list[dict[str, Any]],
    none_shown: dict[str, Any],
) -> None:
    """Audit a page of results: one row per entry of `rows` (each: the keyword arguments of
    `_row` beyond action and resource type), written at once (on PostgreSQL one INSERT of
    a JSON array, `_INSERT_JSON_ROWS`; elsewhere an executemany); a page with nothing on
    it gets one row whose details are `none_shown`. The rows refer only to records
    already in the database."""
    if not rows:
        record(session, actor, action, resource_type=resource_type, details=none_shown)
        return
    values = [_row(actor, action, resource_type=resource_type, **entry) for entry in rows]
    connection = session.connection()
    if len(values) > 1 and connection.dialect.name == "postgresql":
        connection.execute(_INSERT_JSON_ROWS, {"rows": row_json(values)})
    else:
        connection.execute(_INSERT, values)
    session.info[ROWS_WRITTEN] = True


# json.dumps(document, sort_keys=True, separators=(",", ":")) builds this encoder on every
# call; the same encoder, built once, gives the same bytes.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical(event: Any, seq: int) -> bytes:
    """`event`: an AuditEvent or a row with its canonical columns."""
    document: dict[str, Any] = {"seq": seq}
    for name in _CANONICAL_FIELDS:
        value = getattr(event, name)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        elif value is not None and not isinstance(value, (str, int)):
            value = str(value)
        document[name] = value
    return _CANONICAL_JSON.encode(document).encode("utf-8")


def chain_hash(prev_hash: str, event: Any, seq: int) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + _canonical(event, seq)).hexdigest()


_HEAD = AuditChainHead.__table__
# The chain head read, locked and moved with Core: a sealing round runs several times a
# second per sealer, and the ORM object bought nothing but per-round overhead.
_READ_HEAD = select(_HEAD.c.last_seq, _HEAD.c.last_hash).where(_HEAD.c.id == 1)
_LOCK_HEAD = _READ_HEAD.with_for_update(skip_locked=True)
_MOVE_HEAD = (
    update(_HEAD)
    .where(_HEAD.c.id == 1)
    .values(last_seq=bindparam("last_seq"), last_hash=bindparam("last_hash"))
)


def _lock_head(session: Session) -> tuple[int, str] | None:
    """(last seq, last hash) of the chain head, locked for this transaction on PostgreSQL;
    None if another sealer holds it (or created it concurrently)."""
    locking = session.get_bind().dialect.name == "postgresql"
    head = session.execute(_LOCK_HEAD if locking else _READ_HEAD).one_or_none()
    if head is not None:
        return head.last_seq, head.last_hash
    if session.execute(_READ_HEAD).one_or_none() is not None:
        return None  # locked by another sealer: SKIP LOCKED saw no row
    # No head yet: the chain starts, or goes on from its last sealed row when the head row
    # was lost (the table holding it is not append-only): starting again at seq 0 would
    # collide with the sealed rows, and verify would stop at an error instead of a row.
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash)
        .where(AuditEvent.seq.is_not(None))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).one_or_none()
    last_seq, last_hash = (last.seq, last.hash) if last is not None else (0, GENESIS_HASH)
    try:
        with session.begin_nested():
            session.add(AuditChainHead(id=1, last_seq=last_seq, last_hash=last_hash))
            session.flush()
    except IntegrityError:
        return None  # created concurrently; the next seal will use it
    if last is not None:
        # The head was lost: rows removed from the end before now cannot be detected any
        # more. That is itself recorded, in the chain (sealed in this batch), for the DPO.
        log.error("audit chain head was missing; rebuilt from its last sealed row %s", last_seq)
        record(
            session,
            Actor.system(),
            HEAD_REBUILT,
            resource_type="audit_chain",
            decision=DENY,
            reason="chain head missing",
            details={"resumed_after_seq": last_seq},
        )
    return last_seq, last_hash


def seal_pending(session: Session, batch_size: int = 500) -> int:
    """Chain up to `batch_size` unsealed rows; returns how many. Caller commits."""
    return seal_batch(session, batch_size) or 0


class SealConflict(SQLAlchemyError):
    """A batch could not be sealed as selected (see `seal_batch`)."""


_TABLE = AuditEvent.__table__
# What sealing reads of a row (the canonical fields) and writes back (only the sealing
# columns: the PostgreSQL trigger refuses anything else), both with Core: the rows are not
# needed as ORM objects, and loading and flushing them cost most of a seal's CPU.
_UNSEALED = (
    select(*[_TABLE.c[name] for name in _CANONICAL_FIELDS])
    .where(_TABLE.c.seq.is_(None))
    .order_by(_TABLE.c.id)
    .limit(bindparam("batch_size", type_=Integer(), literal_execute=True))
)
_SEAL = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("row_id"), _TABLE.c.seq.is_(None))
    .values(
        seq=bindparam("seq"),
        prev_hash=bindparam("prev_hash"),
        hash=bindparam("hash"),
        sealed_at=bindparam("sealed_at"),
    )
)
# PostgreSQL: the whole batch in one UPDATE … FROM unnest(four arrays), built once. An
# executemany is still one statement per row for the driver and the server (the batch is
# sealed in the background, but on the same cores as the requests).
_SEALS = (
    func.unnest(
        bindparam("row_ids", type_=ARRAY(BigInteger, dimensions=1)),
        bindparam("seqs", type_=ARRAY(BigInteger, dimensions=1)),
        bindparam("prev_hashes", type_=ARRAY(String, dimensions=1)),
        bindparam("hashes", type_=ARRAY(String, dimensions=1)),
    )
    .table_valued("row_id", "seq", "prev_hash", "hash")
    .render_derived(name="seals")
)
_SEAL_BATCH = (
    update(_TABLE)
    .where(_TABLE.c.id == _SEALS.c.row_id, _TABLE.c.seq.is_(None))
    .values(
        seq=_SEALS.c.seq,
        prev_hash=_SEALS.c.prev_hash,
        hash=_SEALS.c.hash,
        sealed_at=bindparam("sealed_at"),
    )
)


def _write_seals(session: Session, seals: list[dict[str, Any]], now: datetime) -> int:
    """Write a batch's seals; returns how many rows were sealed (rows sealed meanwhile by
    anyone else are left alone by the `seq IS NULL` condition and not counted)."""
    if session.get_bind().dialect.name == "postgresql":
        result = session.execute(
            _SEAL_BATCH,
            {
                "row_ids": [seal["row_id"] for seal in seals],
                "seqs": [seal["seq"] for seal in seals],
                "prev_hashes": [seal["prev_hash"] for seal in seals],
                "hashes": [seal["hash"] for seal in seals],
                "sealed_at": now,
            },
        )
    else:
        # SQLite (in process: no round trips to save): an executemany.
        result = session.execute(_SEAL, [{**seal, "sealed_at": now} for seal in seals])
    return cast(CursorResult[Any], result).rowcount


def seal_batch(session: Session, batch_size: int = 500) -> int | None:
    """Like `seal_pending`, but None when another worker holds the chain head (it is
    sealing right now, and may have selected its rows before ours were committed)."""
    head = _lock_head(session)
    if head is None:
        return None
    rows = session.execute(_UNSEALED, {"batch_size": batch_size}).all()
    if not rows:
        return 0
    now = datetime.now(UTC)
    last_seq, last_hash = head
    seals = []
    for row in rows:
        seq = last_seq + 1
        digest = chain_hash(last_hash, row, seq)
        seals.append({"row_id": row.id, "seq": seq, "prev_hash": last_hash, "hash": digest})
        last_seq, last_hash = seq, digest
    if _write_seals(session, seals, now) != len(seals):
        # Only possible if something sealed rows without holding the chain head: chaining
        # on would fork the chain. The caller's transaction must roll back.
        raise SealConflict("audit rows were sealed concurrently; nothing sealed")
    session.execute(_MOVE_HEAD, {"last_seq": last_seq, "last_hash": last_hash})
    return len(rows)


def seal_all(session_factory: Any, batch_size: int = 500) -> int:
    """Seal until nothing is pending, one committed batch at a time."""
    total = 0
    while True:
        with session_factory() as session:
            sealed = seal_pending(session, batch_size)
            session.commit()
        total += sealed
        if sealed < batch_size:
            return total


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    unsealed: int
    first_bad_id: int | None = None
    first_bad_seq: int | None = None
    problem: str | None = None
    # Ids of the `audit:chain-head-rebuilt` rows met: the head was lost there, so rows
    # removed from the end before each could not be detected (the chain after it holds).
    head_rebuilt_at: tuple[int, ...] = ()
    # The hash of the last row verified (seq `checked`): with `checked`, the anchor to keep
    # outside the database. None when nothing is sealed or the chain is broken.
    last_hash: str | None = None


def verify_chain(
    session: Session, batch_size: int = 5000, anchors: Mapping[int, str] | None = None
) -> VerifyResult:
    """Recompute the chain from the first row; name the first row that does not match.

    The chain head is read first: sealers go on extending the chain while the rows are read
    (in several statements), and a head read last could be ahead of them (a false "rows
    removed at the end"). Rows sealed after it are checked too, against the chain only.

    `anchors` (seq → hash) are heads of earlier verifications kept outside the database:
    the row at each seq must still exist with that hash. They catch what the database
    alone cannot: rows cut from the end with the chain head rewritten to match, or the
    chain re-hashed from some row on."""
    anchors = anchors or {}
    head = session.execute(_READ_HEAD).one_or_none()
    prev_hash = GENESIS_HASH
    expected_seq = 1
    checked = 0
    last_id: int | None = None
    at_head: str | None = None  # the hash of the row at the head's seq, once reached
    rebuilt: list[int] = []
    while True:
        stmt = select(AuditEvent).where(AuditEvent.seq.is_not(None)).order_by(AuditEvent.seq)
        if checked:
            stmt = stmt.where(AuditEvent.seq >= expected_seq)
        rows = session.scalars(stmt.limit(batch_size)).all()
        for event in rows:
            if event.seq != expected_seq:
                return VerifyResult(
                    False, checked, 0, event.id, event.seq, "sequence gap (a row was removed)"
                )
            if event.prev_hash != prev_hash or event.hash != chain_hash(
                prev_hash, event, expected_seq
            ):
                return VerifyResult(
                    False, checked, 0, event.id, event.seq, "hash mismatch (row altered)"
                )
            anchored = anchors.get(event.seq)
            if anchored is not None and anchored != event.hash:
                return VerifyResult(
                    False,
                    checked,
                    0,
                    event.id,
                    event.seq,
                    "hash differs from the anchor kept outside the database "
                    "(the chain was rewritten up to this row)",
                )
            if event.action == HEAD_REBUILT:
                rebuilt.append(event.id)
            prev_hash = event.hash
            if head is not None and expected_seq == head.last_seq:
                at_head = event.hash
            expected_seq += 1
            checked += 1
            last_id = event.id
        if len(rows) < batch_size:
            break
    if head is None and checked:
        # Sealing rebuilds a lost head (recording it, `_lock_head`); until then rows
        # removed at the end could not be told from a chain that ends there.
        return VerifyResult(
            False, checked, 0, last_id, checked, "chain head missing (rows removed at the end?)"
        )
    if head is not None and head.last_seq and at_head != head.last_hash:
        return VerifyResult(
            False,
            checked,
            0,
            last_id,
            checked,
            "chain head does not match (rows removed at the end)",
        )
    beyond = [seq for seq in anchors if seq > checked]
    if beyond:
        return VerifyResult(
            False,
            checked,
            0,
            last_id,
            checked,
            f"the anchored row seq {max(beyond)} is missing (rows removed at the end)",
        )
    unsealed = (
        session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None)))
        or 0
    )
    return VerifyResult(
        True,
        checked,
        int(unsealed),
        head_rebuilt_at=tuple(rebuilt),
        last_hash=prev_hash if checked else None,
    )
