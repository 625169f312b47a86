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
import operator
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

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

_Error = TypeVar("_Error", bound=Exception)


def on_record(
    error: _Error, action: str, resource_type: str, resource_id: Any, reason: str
) -> _Error:
    """`error`, carrying the deny row it leaves (errors.handle_domain_error writes it in a
    transaction of its own): ids and a reason code, never a value the request carried."""
    error.audit = {  # type: ignore[attr-defined]
        "action": action,
        "resource_type": resource_type,
        "resource_id": str(resource_id) if resource_id is not None else None,
        "decision": DENY,
        "reason": reason,
    }
    return error


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


_CANONICAL_OF = operator.attrgetter(*_CANONICAL_FIELDS)
# Values the canonical document holds as they are (a bool, an int's subclass, too).
_AS_IS = frozenset({str, int, bool, type(None)})


def _canonical_values(values: Sequence[Any], seq: int) -> bytes:
    """`values`: a row's canonical columns, in `_CANONICAL_FIELDS` order."""
    document: dict[str, Any] = {"seq": seq}
    for name, value in zip(_CANONICAL_FIELDS, values, strict=True):
        if type(value) not in _AS_IS:
            if isinstance(value, datetime):
                if value.tzinfo is not UTC:
                    value = value.astimezone(UTC)
                value = value.isoformat(timespec="microseconds")
            elif not isinstance(value, (str, int)):
                value = str(value)
        document[name] = value
    return _CANONICAL_JSON.encode(document).encode("utf-8")


def _canonical(event: Any, seq: int) -> bytes:
    """`event`: an AuditEvent or a row with its canonical columns."""
    return _canonical_values(_CANONICAL_OF(event), seq)


def chain_hash(prev_hash: str, event: Any, seq: int) -> str:
    return _hash_values(prev_hash, _CANONICAL_OF(event), seq)


def _hash_values(prev_hash: str, values: Sequence[Any], seq: int) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + _canonical_values(values, seq)).hexdigest()


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
        digest = _hash_values(last_hash, row, seq)  # the row: the canonical columns
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
    # The seq and hash of the last row verified: the anchor to keep outside the database,
    # or where the next page goes on. None when nothing is sealed or the chain is broken.
    last_hash: str | None = None
    last_seq: int | None = None
    # False when the verification stopped at its `limit` with rows left to verify: it goes
    # on after (last_seq, last_hash), and the end-of-chain checks are the last page's.
    complete: bool = True


# The rows verify reads, by seq (its unique index), with Core: the canonical columns, then
# the sealing ones. Loading them as ORM objects cost over a third of verifying.
_VERIFY_COLUMNS = (*_CANONICAL_FIELDS, "seq", "prev_hash", "hash")
_SEALED_FROM = (
    select(*[_TABLE.c[name] for name in _VERIFY_COLUMNS])
    .where(_TABLE.c.seq >= bindparam("from_seq"))
    .order_by(_TABLE.c.seq)
    .limit(bindparam("batch_size", type_=Integer(), literal_execute=True))
)
_LOWEST_SEQ = -(2**63)
_AT_SEQ = select(_TABLE.c.id, _TABLE.c.hash).where(_TABLE.c.seq == bindparam("seq"))
_ID, _ACTION = _CANONICAL_FIELDS.index("id"), _CANONICAL_FIELDS.index("action")
_SEQ, _PREV_HASH, _HASH = (_VERIFY_COLUMNS.index(name) for name in ("seq", "prev_hash", "hash"))
_CANONICAL_COUNT = len(_CANONICAL_FIELDS)


def verify_chain(
    session: Session,
    batch_size: int = 5000,
    anchors: Mapping[int, str] | None = None,
    *,
    after: tuple[int, str] | None = None,
    limit: int | None = None,
) -> VerifyResult:
    """Recompute the chain from the first row; name the first row that does not match.

    The chain head is read first: sealers go on extending the chain while the rows are read
    (in several statements), and a head read last could be ahead of them (a false "rows
    removed at the end"). Rows sealed after it are checked too, against the chain only.

    `anchors` (seq → hash) are heads of earlier verifications kept outside the database:
    the row at each seq must still exist with that hash. They catch what the database
    alone cannot: rows cut from the end with the chain head rewritten to match, or the
    chain re-hashed from some row on.

    Paged (`GET /audit/verify` under a worker's timeout): `limit` rows at most, and
    `after` = (seq, hash) of the previous page's last row, which must still hold that hash;
    the page goes on from it. A page that stops with rows left is `complete=False`; the
    checks of the chain's end (head, anchors past it) are made by the page that reaches it.
    """
    anchors = anchors or {}
    head = session.execute(_READ_HEAD).one_or_none()
    prev_hash = GENESIS_HASH
    expected_seq = 1
    if after is not None:
        after_seq, prev_hash = after
        stored = session.execute(_AT_SEQ, {"seq": after_seq}).one_or_none()
        if stored is None or stored.hash != prev_hash:
            return VerifyResult(
                False,
                0,
                0,
                stored.id if stored is not None else None,
                after_seq,
                "the row this page goes on from "
                + ("is missing" if stored is None else "no longer has the hash it ended with")
                + " (the chain changed since the previous page)",
            )
        expected_seq = after_seq + 1
    # Anchors and the head at rows before this page: looked up, not recomputed (the earlier
    # pages recomputed them).
    for seq in sorted(seq for seq in anchors if seq < expected_seq):
        stored = session.execute(_AT_SEQ, {"seq": seq}).one_or_none()
        if stored is None or stored.hash != anchors[seq]:
            return VerifyResult(
                False,
                0,
                0,
                stored.id if stored is not None else None,
                seq,
                "hash differs from the anchor kept outside the database "
                "(the chain was rewritten up to this row)",
            )
    at_head: str | None = None  # the hash of the row at the head's seq, once reached
    if head is not None and 0 < head.last_seq < expected_seq:
        stored = session.execute(_AT_SEQ, {"seq": head.last_seq}).one_or_none()
        at_head = stored.hash if stored is not None else None
    checked = 0
    last_id: int | None = None
    rebuilt: list[int] = []
    more = True
    while more:
        size = batch_size if limit is None else min(batch_size, limit - checked)
        if size <= 0:
            # The page is full: it is complete only if nothing follows.
            more = (
                session.execute(_SEALED_FROM, {"from_seq": expected_seq, "batch_size": 1}).first()
                is not None
            )
            break
        # The chain's first rows are read from the lowest seq there is, not from 1: a row
        # inserted with seq 0 or below (the database refuses changes, not such an INSERT)
        # comes first, and is a gap.
        first = expected_seq == 1 and after is None
        from_seq = _LOWEST_SEQ if first else expected_seq
        rows = session.execute(_SEALED_FROM, {"from_seq": from_seq, "batch_size": size}).all()
        for row in rows:
            row_id, seq = row[_ID], row[_SEQ]
            if seq != expected_seq:
                return VerifyResult(
                    False, checked, 0, row_id, seq, "sequence gap (a row was removed)"
                )
            stored_hash = row[_HASH]
            if row[_PREV_HASH] != prev_hash or stored_hash != _hash_values(
                prev_hash, row[:_CANONICAL_COUNT], seq
            ):
                return VerifyResult(False, checked, 0, row_id, seq, "hash mismatch (row altered)")
            anchored = anchors.get(seq)
            if anchored is not None and anchored != stored_hash:
                return VerifyResult(
                    False,
                    checked,
                    0,
                    row_id,
                    seq,
                    "hash differs from the anchor kept outside the database "
                    "(the chain was rewritten up to this row)",
                )
            if row[_ACTION] == HEAD_REBUILT:
                rebuilt.append(row_id)
            prev_hash = stored_hash
            if head is not None and seq == head.last_seq:
                at_head = stored_hash
            expected_seq += 1
            checked += 1
            last_id = row_id
        more = len(rows) == size
    last_seq = expected_seq - 1
    unsealed = (
        session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None)))
        or 0
    )
    if more:
        return VerifyResult(
            True,
            checked,
            int(unsealed),
            head_rebuilt_at=tuple(rebuilt),
            last_hash=prev_hash,
            last_seq=last_seq,
            complete=False,
        )
    if head is None and last_seq:
        # Sealing rebuilds a lost head (recording it, `_lock_head`); until then rows
        # removed at the end could not be told from a chain that ends there.
        return VerifyResult(
            False, checked, 0, last_id, last_seq, "chain head missing (rows removed at the end?)"
        )
    if head is not None and head.last_seq and at_head != head.last_hash:
        return VerifyResult(
            False,
            checked,
            0,
            last_id,
            last_seq,
            "chain head does not match (rows removed at the end)",
        )
    beyond = [seq for seq in anchors if seq > last_seq]
    if beyond:
        return VerifyResult(
            False,
            checked,
            0,
            last_id,
            last_seq,
            f"the anchored row seq {max(beyond)} is missing (rows removed at the end)",
        )
    return VerifyResult(
        True,
        checked,
        int(unsealed),
        head_rebuilt_at=tuple(rebuilt),
        last_hash=prev_hash if last_seq else None,
        last_seq=last_seq or None,
    )
