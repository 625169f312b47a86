"""Key rotation jobs. Each works in committed batches, is safe to interrupt, and resumes
where it stopped when run again; every ciphertext and wrapped key names its version, so
progress is observable with `referral-api keys status`.

- Root rotation: new root version, then re-wrap organisation and index keys (fast, online).
- Case-key rotation: per case, a new data key; every ciphertext under the case's key (its
  fields, notes, consents, referrals, messages, holds, exports, stored responses…)
  re-encrypted; the old data key deleted in the same transaction.
- Index-key rotation: new index-key version per organisation written alongside the old one
  (dual-write), backfilled from decrypted values, then switched over; old entries deleted.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Integer,
    LargeBinary,
    Table,
    Uuid,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from referral_api.access.actor import Actor
from referral_api.audit import service as audit
from referral_api.crypto.envelope import DecryptionError
from referral_api.crypto.fields import ciphertext_attrs, crypto_of, encrypted_models, reencrypt
from referral_api.crypto.keyring import KeyProvider, KeyUnavailable
from referral_api.crypto.keys import _index_key_aad, _org_key_aad
from referral_api.crypto.models import CaseKey, IndexKey, OrgKey, RotationJob
from referral_api.exceptions import Conflict

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class KeyStatus:
    root: dict[str, Any]
    org_keys_by_root_version: dict[int, int]
    index_keys_by_root_version: dict[int, int]
    index_keys_by_state: dict[str, int]
    case_keys_by_version: dict[int, int]
    cases_by_key_version: dict[int, int]
    ciphertexts_by_key_version: dict[int, int]
    ciphertexts_by_format: dict[int, int]
    # Index keys by the normalisation rules their entries were computed under (blind_index
    # .RULES; keys made before rules were recorded: 1). Older rules: run rotate-index.
    index_keys_by_rules: dict[int, int]
    # Data keys wrapped under an organisation-key version that no longer exists, by
    # organisation: their cases cannot be decrypted (docs/key-management.md, migration 0013).
    case_keys_without_org_key: dict[str, int]


def _index_rules(plan: str) -> int:
    return int(json.loads(plan).get("rules", 1))


def key_status(session: Session) -> KeyStatus:
    from referral_api.cases.models import Case

    provider = crypto_of(session).provider
    described = provider.describe()

    def grouped(column: Any, model: Any) -> dict[Any, int]:
        rows = session.execute(select(column, func.count()).select_from(model).group_by(column))
        return {key: count for key, count in rows if key is not None}

    # Every ciphertext names its format in header byte 1 and its data-key version in bytes
    # 3..6 (1-based); counted in the database for every ciphertext column of every encrypted
    # model, so "nothing left on the old version" (or in per-field columns, formats 1-3) is
    # a fact about all the data, not a sample of it.
    cipher_versions: dict[int, int] = {}
    cipher_formats: dict[int, int] = {}
    for model in encrypted_models():
        for attr in ciphertext_attrs(model):
            column = getattr(model, attr)
            rows = session.execute(
                select(func.substr(column, 1, 1), func.substr(column, 3, 4), func.count())
                .where(column.is_not(None))
                .group_by(text("1"), text("2"))
            )
            for fmt, header, count in rows:
                version = int.from_bytes(bytes(header), "big")
                cipher_versions[version] = cipher_versions.get(version, 0) + count
                cipher_formats[bytes(fmt)[0]] = cipher_formats.get(bytes(fmt)[0], 0) + count
    return KeyStatus(
        root={
            "provider": described.provider,
            "current_version": described.current_version,
            "versions": list(described.versions),
            "destroyed": list(described.destroyed),
        },
        org_keys_by_root_version=grouped(OrgKey.root_version, OrgKey),
        index_keys_by_root_version=grouped(IndexKey.root_version, IndexKey),
        index_keys_by_state=grouped(IndexKey.state, IndexKey),
        case_keys_by_version=grouped(CaseKey.version, CaseKey),
        cases_by_key_version=grouped(Case.key_version, Case),
        ciphertexts_by_key_version=cipher_versions,
        ciphertexts_by_format=cipher_formats,
        index_keys_by_rules=dict(
            Counter(_index_rules(plan) for plan in session.scalars(select(IndexKey.plan)))
        ),
        case_keys_without_org_key={
            str(org_id): count
            for org_id, count in session.execute(
                select(CaseKey.org_id, func.count())
                .where(
                    ~exists().where(
                        OrgKey.org_id == CaseKey.org_id, OrgKey.version == CaseKey.org_key_version
                    )
                )
                .group_by(CaseKey.org_id)
            )
        },
    )


# Re-encrypted rows to store, by table and the columns rewritten: {(table, columns): [params]}.
_WriteBacks = dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]]


def _write_back(record: Any, pending: _WriteBacks) -> None:
    """Queue a record's re-encrypted columns (and a case's new key version) for an UPDATE of
    them alone (`_store_write_backs`), and mark them stored. A re-encryption changes nothing
    anyone sees: the row's version, which is its ETag, and its `updated_at` stay, so no
    client's If-Match goes stale and no `updated_since` poll finds every case changed (a
    flush of the unit of work would move both). The rows are held FOR UPDATE by the sweep."""
    state = sa_inspect(record)
    mapper = state.mapper
    columns = mapper.column_attrs
    changed = {
        columns[key].columns[0].name: (key, getattr(record, key))
        for key in state.committed_state  # the attributes set since the row was loaded
        if key in columns and state.attrs[key].history.added
    }
    if not changed:
        return
    for column in mapper.local_table.c:
        if column.onupdate is not None and column.name not in changed:
            # Written as it is: an UPDATE would otherwise set it (`updated_at`).
            key = mapper.get_property_by_column(column).key
            changed[column.name] = (key, getattr(record, key))
    params = {f"v_{name}": value for name, (_key, value) in changed.items()}
    for column in mapper.primary_key:
        params[f"k_{column.name}"] = getattr(record, mapper.get_property_by_column(column).key)
    pending.setdefault((mapper.local_table, tuple(sorted(changed))), []).append(params)
    for key, value in changed.values():
        set_committed_value(record, key, value)


def _store_write_backs(session: Session, pending: _WriteBacks) -> None:
    """The rows queued by `_write_back`: one executemany per table and set of columns."""
    for (table, columns), rows in pending.items():
        statement = (
            update(table)
            .where(*(c == bindparam(f"k_{c.name}") for c in table.primary_key.columns))
            .values({name: bindparam(f"v_{name}") for name in columns})
        )
        session.connection().execute(statement, rows)
    pending.clear()


# ---- root ---------------------------------------------------------------------------------


ROOT_BATCH_SIZE = 5000


def rotate_root(
    factory: sessionmaker[Session],
    *,
    resume: bool,
    batch_size: int = ROOT_BATCH_SIZE,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Create a new root version (unless resuming) and re-wrap every organisation and index
    key still wrapped under another one. Returns (root version now current, keys re-wrapped).

    Bulk and online: each batch reads (org_id, version, root_version, wrapped_key) in
    primary-key order after the previous batch (keyset paging, so a batch costs the same
    at the end of the table as at the start), re-wraps in Python (the wrapping and
    associated data of crypto/keys.py) and writes the batch with one UPDATE in a short
    transaction of its own. On PostgreSQL the write of one batch overlaps the read and
    re-wrap of the next (one writer thread, at most one write in flight); a failed write
    stops the run before another is started.

    Resumable: a key already under the current root version is never selected, and each
    UPDATE only applies while the row is still under the root version it was read with, so
    a concurrent or repeated run cannot wrap a key twice. A pass over the table is repeated
    until one finds nothing: a key committed behind the cursor by a transaction that
    started before the new version existed is picked up by the next pass.
    """
    with factory() as session:
        provider = crypto_of(session).provider
        overlap = session.get_bind().dialect.name == "postgresql"
    current = provider.rotate() if not resume else provider.current_version()
    total = 0
    # SQLite has one writer at a time (BEGIN IMMEDIATE): nothing to overlap there.
    with ThreadPoolExecutor(1, "rotate-root") if overlap else _Inline() as writer:
        for table, associated_data in _ROOT_WRAPPED:
            while True:
                after: tuple[uuid.UUID, int] | None = None
                found = 0
                in_flight: Future[int] | None = None
                while True:
                    batch = _read_and_rewrap(
                        factory, provider, table, associated_data, after, batch_size
                    )
                    current = batch.root_version
                    if in_flight is not None:
                        total += _settled(in_flight, progress)
                        in_flight = None
                    found += len(batch.keys)
                    if batch.keys:
                        after = batch.keys[-1][0], batch.keys[-1][1]
                        in_flight = writer.submit(_commit_rewrapped, factory, table, batch)
                    if len(batch.keys) < batch_size:
                        break
                if in_flight is not None:
                    total += _settled(in_flight, progress)
                if not found:
                    break
    return current, total


@dataclass(frozen=True, slots=True)
class _Rewrapped:
    """One batch: (org_id, version, root version read, new wrapped key) for each key, all
    newly wrapped under `root_version`."""

    root_version: int
    keys: list[tuple[uuid.UUID, int, int, bytes]]


# The root-wrapped keys, each with the associated data it is wrapped with (crypto/keys.py).
_ROOT_WRAPPED: tuple[tuple[Table, Callable[[uuid.UUID, int], bytes]], ...] = (
    (cast(Table, OrgKey.__table__), _org_key_aad),
    (cast(Table, IndexKey.__table__), _index_key_aad),
)


class _Inline:
    """The executor interface, running each task at once in the calling thread (a failure
    is raised from `submit`)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def submit(self, task: Callable[..., int], *args: Any) -> Future[int]:
        done: Future[int] = Future()
        done.set_result(task(*args))
        return done


def _settled(write: Future[int], progress: Progress | None) -> int:
    written = write.result()  # re-raises a failed write here, before anything else starts
    if progress:
        progress(written)
    return written


def _batch_keyring(provider: KeyProvider) -> KeyProvider:
    """The provider as of now, for one batch. A local keyring otherwise stat()s its file on
    every wrap, unwrap and current_version (three times per key); its snapshot checks once
    and keeps one current version for the whole batch. Other providers (HSM, Vault) are
    used as they are."""
    snapshot = getattr(provider, "snapshot", None)
    return snapshot() if callable(snapshot) else provider  # type: ignore[no-any-return]


def _read_and_rewrap(
    factory: sessionmaker[Session],
    provider: KeyProvider,
    table: Table,
    associated_data: Callable[[uuid.UUID, int], bytes],
    after: tuple[uuid.UUID, int] | None,
    limit: int,
) -> _Rewrapped:
    keyring = _batch_keyring(provider)
    current = keyring.current_version()
    query = select(table.c.org_id, table.c.version, table.c.root_version, table.c.wrapped_key)
    query = query.where(table.c.root_version != current)
    if after is not None:
        query = query.where(tuple_(table.c.org_id, table.c.version) > tuple_(*after))
    with factory() as session:
        rows = session.execute(query.order_by(table.c.org_id, table.c.version).limit(limit)).all()
    rewrapped = []
    for org_id, version, root_version, wrapped in rows:
        aad = associated_data(org_id, version)
        try:
            key = keyring.unwrap(wrapped, aad)
        except KeyUnavailable:
            # Stop: a key that cannot be unwrapped needs a person, and saying which one (no
            # key material) saves them a search. Nothing of this batch has been written.
            raise KeyUnavailable(
                f"{table.name} org {org_id} version {version} (root version "
                f"{root_version}) did not unwrap; nothing in this batch was written"
            ) from None
        rewrapped.append((org_id, version, root_version, keyring.wrap(key, aad)))
    return _Rewrapped(current, rewrapped)


def _commit_rewrapped(factory: sessionmaker[Session], table: Table, batch: _Rewrapped) -> int:
    with factory() as session:
        written = _write_rewrapped(session, table, batch.keys, batch.root_version)
        session.commit()
    return written


def _write_rewrapped(
    session: Session,
    table: Table,
    rewrapped: list[tuple[uuid.UUID, int, int, bytes]],
    root_version: int,
) -> int:
    """Write re-wrapped keys, (org_id, version, root version read, new wrapped key) each;
    returns how many rows changed. A row re-wrapped (or deleted) by someone else since it
    was read is left alone: the UPDATE matches on the root version it was read under."""
    if session.get_bind().dialect.name == "postgresql":
        org_ids, versions, read_under, wrapped_keys = (
            list(c) for c in zip(*rewrapped, strict=True)
        )
        # One UPDATE … FROM unnest(four arrays): one round trip and one cached statement
        # per batch. (An executemany is a statement per row, even pipelined; a VALUES list
        # is a new 20,000-parameter statement to compile per batch.)
        source = (
            func.unnest(
                bindparam("org_ids", org_ids, type_=ARRAY(Uuid)),
                bindparam("versions", versions, type_=ARRAY(Integer)),
                bindparam("read_under", read_under, type_=ARRAY(Integer)),
                bindparam("wrapped_keys", wrapped_keys, type_=ARRAY(LargeBinary)),
            )
            .table_valued("org_id", "version", "read_under", "wrapped_key")
            .render_derived(name="rewrapped")
        )
        return _rowcount(
            session.execute(
                update(table)
                .where(
                    table.c.org_id == source.c.org_id,
                    table.c.version == source.c.version,
                    table.c.root_version == source.c.read_under,
                )
                .values(wrapped_key=source.c.wrapped_key, root_version=root_version)
            )
        )
    # SQLite (in process: no round trips to save): SQLAlchemy's executemany UPDATE.
    statement = (
        update(table)
        .where(
            table.c.org_id == bindparam("b_org_id"),
            table.c.version == bindparam("b_version"),
            table.c.root_version == bindparam("b_read_under"),
        )
        .values(wrapped_key=bindparam("b_wrapped_key"), root_version=root_version)
    )
    parameters = [
        {"b_org_id": org_id, "b_version": version, "b_read_under": read, "b_wrapped_key": key}
        for org_id, version, read, key in rewrapped
    ]
    return _rowcount(session.execute(statement, parameters))


def _rowcount(result: Any) -> int:
    # Both drivers report the rows an UPDATE changed, summed over an executemany.
    return cast(CursorResult[Any], result).rowcount


def destroy_root_version(session: Session, version: int) -> None:
    """Destroy an old root version once no key is wrapped under it."""
    from referral_api.exceptions import Conflict

    described = crypto_of(session).provider.describe()
    if version == described.current_version:
        raise Conflict(f"Root version {version} is the current version; rotate the root key first.")
    if version not in described.versions:
        raise Conflict(f"Root version {version} does not exist or was already destroyed.")
    in_use = (
        session.scalar(
            select(func.count()).select_from(OrgKey).where(OrgKey.root_version == version)
        )
        or 0
    )
    in_use += (
        session.scalar(
            select(func.count()).select_from(IndexKey).where(IndexKey.root_version == version)
        )
        or 0
    )
    if in_use:
        raise Conflict(
            f"{in_use} keys are still wrapped under root version {version}; "
            "run `keys rotate-root --resume` first."
        )
    crypto_of(session).provider.destroy(version)


# ---- case data keys -----------------------------------------------------------------------


# The most cases a sweep's batch takes: they are bound one parameter each (`IN`), and a
# statement takes 65,535 parameters on PostgreSQL (32,766 on SQLite's default build).
MAX_SWEEP_BATCH = 10_000


def _check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_SWEEP_BATCH:
        raise ValueError(f"batch_size must be between 1 and {MAX_SWEEP_BATCH}")


def cases_needing_rotation(session: Session, started_at: datetime) -> Any:
    """Cases whose current data key predates the sweep."""
    from referral_api.cases.models import Case

    current_key_created = (
        select(CaseKey.created_at)
        .where(CaseKey.case_id == Case.id, CaseKey.version == Case.key_version)
        .scalar_subquery()
    )
    return select(Case.id).where(
        Case.key_version.is_not(None), Case.erased.is_(False), current_key_created < started_at
    )


def _unfinished_job(session: Session, kind: str) -> RotationJob | None:
    return session.scalars(
        select(RotationJob).where(RotationJob.kind == kind, RotationJob.finished_at.is_(None))
    ).first()


def open_rotation_job(session: Session, kind: str) -> RotationJob:
    """The unfinished job of this kind, or a new one starting now (what makes it resumable)."""
    job = _unfinished_job(session, kind)
    if job is None:
        job = RotationJob(kind=kind, started_at=utcnow())
        session.add(job)
        session.flush()
    return job


def rotate_case_keys(
    factory: sessionmaker[Session],
    *,
    started_at: datetime,
    batch_size: int = 200,
    progress: Progress | None = None,
    stop_after_batches: int | None = None,
) -> int:
    """Re-encrypt every case whose data key predates `started_at` under a fresh key: every
    record of every encrypted model that belongs to the case (`encrypted_models`), since
    the older key versions are deleted with it and whatever stays under them is lost.

    Resumable: a case done in an earlier run has a newer key and is skipped. Each batch is
    one transaction, so an interruption loses at most the batch in flight (rolled back).
    The records of a batch's cases are loaded with one query per model, not per case.
    """
    from referral_api.cases.models import Case
    from referral_api.consent.models import ConsentRecord

    _check_batch_size(batch_size)
    # Everything else encrypted under a case's key names the case in `case_id`.
    dependents = [model for model in encrypted_models() if model is not Case]
    for model in dependents:
        if not hasattr(model, "case_id"):
            raise TypeError(f"{model.__name__}: an encrypted model without case_id")
    done = 0
    batches = 0
    # Keyset: each batch looks on from the last case of the one before. From the start each
    # time, a batch re-read every case swept already (a subquery each): 17.8 s per 10,000
    # cases at the start of 100,000, 27.4 s at the end, quadratic. A case committed behind
    # the keyset after its batch passed (made by a request in flight when the sweep began,
    # its key older than the sweep) is found by the next pass from the start: the sweep
    # ends with a pass that found nothing.
    after: uuid.UUID | None = None
    rotated_this_pass = 0
    while stop_after_batches is None or batches < stop_after_batches:
        with factory() as session:
            pending = cases_needing_rotation(session, started_at)
            if after is not None:
                pending = pending.where(Case.id > after)
            ids = list(session.scalars(pending.order_by(Case.id).limit(batch_size)))
            if not ids:
                if after is None or not rotated_this_pass:
                    break
                after, rotated_this_pass = None, 0  # another pass, from the start
                continue
            keys = crypto_of(session).keys(session)
            # The cases' consents are locked before the case rows, the order an erasure, a
            # withdrawal and a send take them in (rights.service._lock_case_to_erase): the
            # other order deadlocked with an erasure in flight, and PostgreSQL killed one.
            consents = _locked_records(session, ConsentRecord, ids)
            # Checked again under the lock: a case erased since the ids were read has no
            # key left to rotate (PostgreSQL re-evaluates these on the locked row).
            # FOR NO KEY UPDATE: no key column changes, and a referral transition or a note
            # inserting a row that references the case (a key-share lock) is not blocked —
            # it holds its referral, which the batch locks next: FOR UPDATE deadlocked.
            cases = session.scalars(
                select(Case)
                .where(Case.id.in_(ids), Case.erased.is_(False), Case.key_version.is_not(None))
                .order_by(Case.id)
                .with_for_update(key_share=True)
            ).all()
            records: dict[uuid.UUID, list[Any]] = {case.id: [case] for case in cases}
            rewritten: list[dict[str, Any]] = []
            written: _WriteBacks = {}
            for model in dependents:
                for record in (
                    consents
                    if model is ConsentRecord
                    else _locked_records(session, model, list(records))
                ):
                    if record.case_id in records:  # not of a case erased meanwhile
                        records[record.case_id].append(record)
            for case in cases:
                new = cast(int, case.key_version) + 1  # not None: filtered under the lock
                # Decrypt everything under the old key before it goes.
                for record in records[case.id]:
                    _decrypt_all(record)
                keys.create_case_key(case.id, case.org_id, version=new)
                # Not flushed by the unit of work (see _write_back): no autoflush between.
                with session.no_autoflush:
                    for record in records[case.id]:
                        reencrypt(record, keys, new)
                    case.key_version = new
                    for record in records[case.id]:
                        _write_back(record, written)
                session.flush()
                session.execute(
                    delete(CaseKey).where(CaseKey.case_id == case.id, CaseKey.version < new)
                )
                keys.cache.discard_case(case.id)
                rewritten.append(
                    {
                        "resource_id": case.id,
                        "case_id": case.id,
                        "details": {"key_version": new, "records": len(records[case.id])},
                    }
                )
            _store_write_backs(session, written)
            # Each case's re-encryption on its access log, committed with it.
            audit.record_many(
                session,
                Actor.system(),
                "keys:rotate-case-key",
                resource_type="case",
                rows=rewritten,
                none_shown={},
            )
            session.commit()
        done += len(cases)
        rotated_this_pass += len(ids)
        batches += 1
        after = ids[-1]
        if progress:
            progress(len(ids))
    return done


def _locked_records(session: Session, model: Any, case_ids: list[uuid.UUID]) -> list[Any]:
    """The cases' records of `model`, locked: what is decrypted is written back
    re-encrypted, so a change committed in between would be overwritten with the old value.
    Relationships are not loaded: only the record's own columns are rewritten."""
    case_id = model.case_id
    return list(
        session.scalars(
            select(model)
            .where(case_id.in_(case_ids))
            .order_by(case_id, *model.__mapper__.primary_key)
            .options(lazyload("*"))
            .with_for_update(of=model)
        )
    )


def _decrypt_all(record: Any) -> None:
    """Read every encrypted field of `record` (the plaintext stays cached on it). One that
    does not decrypt stops the sweep before its case's old key is deleted, naming the
    record (no plaintext, no key material); nothing of the batch has been written."""
    try:
        for name in type(record).__encrypted_fields__:
            getattr(record, name)
    except (KeyUnavailable, DecryptionError):
        raise KeyUnavailable(
            f"{record.__tablename__} {record.crypto_row_id()} of case "
            f"{record.crypto_case_id()} did not decrypt; nothing in this batch was written"
        ) from None


# ---- blind-index keys ---------------------------------------------------------------------


_INDEX_JOB = "index-keys"


def start_index_rotation(session: Session) -> int:
    """Give every organisation a new `backfilling` index-key version (dual-write starts).
    While a rotation is unfinished (interrupted), nothing is created: its backfill goes on,
    and an organisation it has switched already is not rotated a second time."""
    if _unfinished_job(session, _INDEX_JOB) is not None:
        return 0
    open_rotation_job(session, _INDEX_JOB)
    keys = crypto_of(session).keys(session)
    created = 0
    org_ids = session.scalars(select(OrgKey.org_id).distinct()).all()
    for org_id in org_ids:
        if session.scalar(
            select(func.count())
            .select_from(IndexKey)
            .where(IndexKey.org_id == org_id, IndexKey.state == "backfilling")
        ):
            continue
        latest = (
            session.scalar(select(func.max(IndexKey.version)).where(IndexKey.org_id == org_id)) or 0
        )
        keys.create_index_key(org_id, version=latest + 1, state="backfilling", plan=keys.plan)
        created += 1
    return created


def _next_case_ids(
    session: Session, org_id: uuid.UUID, after: uuid.UUID | None, batch_size: int
) -> Sequence[uuid.UUID]:
    """The organisation's next `batch_size` case ids after `after`, in id order (keyset)."""
    from referral_api.cases.models import Case

    following = select(Case.id).where(Case.org_id == org_id).order_by(Case.id).limit(batch_size)
    if after is not None:
        following = following.where(Case.id > after)
    return session.scalars(following).all()


def _unindexed(ids: Sequence[uuid.UUID], version: int, *, indexed: bool = False) -> Any:
    """Those of the cases `ids` (not erased, with data) with no index entry under `version`
    (and, `indexed`, with some entry), read FOR SHARE. By ids: a few index probes a case
    whatever the planner estimates. Asked of all the organisation's cases at once, the
    anti-join read every entry again for each batch (quadratic: 8 s a batch at 100,000
    cases), and with statistics taken before the backfill (no entry under the new version
    yet) scanned every entry for each case (minutes)."""
    from referral_api.cases.models import Case, CaseSearchIndex

    stmt = (
        select(Case)
        .where(
            Case.id.in_(ids),
            Case.erased.is_(False),
            Case.key_version.is_not(None),
            ~exists().where(
                CaseSearchIndex.case_id == Case.id, CaseSearchIndex.key_version == version
            ),
        )
        .order_by(Case.id)
        .with_for_update(read=True)
    )
    if indexed:
        stmt = stmt.where(exists().where(CaseSearchIndex.case_id == Case.id))
    return stmt


def backfill_index(
    factory: sessionmaker[Session], *, batch_size: int = 500, progress: Progress | None = None
) -> int:
    """Write entries for every backfilling version, then switch it to active and retire the
    old version (deleting its entries). Resumable.

    One pass over the organisation's cases in id order (keyset), each batch read FOR SHARE:
    a case without any indexed value gets no entry and is not read again (selecting "cases
    with no entry yet" until none is left never ended with a batch of such cases), and an
    erasure of a case in the batch waits for the batch, then deletes its new entries with
    the rest (a case erased before is skipped)."""
    from referral_api.cases.models import Case, CaseSearchIndex

    _check_batch_size(batch_size)
    filled = 0
    with factory() as session:
        targets = session.execute(
            select(IndexKey.org_id, IndexKey.version).where(IndexKey.state == "backfilling")
        ).all()
    if targets:
        _wait_for_older_transactions(factory)
    for org_id, version in targets:
        after: uuid.UUID | None = None
        while True:
            with factory() as session:
                ids = _next_case_ids(session, org_id, after, batch_size)
                cases = session.scalars(_unindexed(ids, version)).all()
                _index_under(session, crypto_of(session), cases, version)
                session.commit()
            filled += len(cases)
            if progress:
                progress(len(cases))
            if len(ids) < batch_size:
                break
            after = ids[-1]
        with factory() as session:
            # A write that began before the new version existed wrote the old versions only
            # (a PATCH deleting the case's entries under the new one too): such a case has
            # entries, none under the new version. Indexed again here, before the switch.
            missed: list[Case] = []
            after = None
            while True:
                ids = _next_case_ids(session, org_id, after, batch_size)
                missed.extend(session.scalars(_unindexed(ids, version, indexed=True)))
                if len(ids) < batch_size:
                    break
                after = ids[-1]
            _index_under(session, crypto_of(session), missed, version)
            filled += len(missed)
            session.execute(
                update(IndexKey)
                .where(IndexKey.org_id == org_id, IndexKey.state == "active")
                .values(state="retired")
            )
            session.execute(
                update(IndexKey)
                .where(IndexKey.org_id == org_id, IndexKey.version == version)
                .values(state="active")
            )
            retired = select(IndexKey.version).where(
                IndexKey.org_id == org_id, IndexKey.state == "retired"
            )
            # Every older version's entries: the retired one's, and any a write still holding
            # an older version list added after an earlier switch.
            session.execute(
                delete(CaseSearchIndex).where(
                    CaseSearchIndex.org_id == org_id,
                    or_(
                        CaseSearchIndex.key_version.in_(retired),
                        CaseSearchIndex.key_version < version,
                    ),
                )
            )
            # And the retired keys themselves: nothing is indexed under them any more, and
            # kept (re-wrapped by every root rotation) they would let a backup's index rows
            # of an erased person still confirm a guessed name.
            session.execute(
                delete(IndexKey).where(IndexKey.org_id == org_id, IndexKey.state == "retired")
            )
            session.commit()
    with factory() as session:
        job = _unfinished_job(session, _INDEX_JOB)
        done = job.id if job is not None else None
    if done is not None:
        finish_rotation_job(factory, done)
    return filled


def _index_under(session: Session, crypto: Any, cases: Sequence[Any], version: int) -> None:
    """Write the cases' index entries under `version` (their identity decrypted to do it),
    each on its access log (`keys:index-backfill`), in the caller's transaction."""
    from referral_api.cases.search import write_index_entries

    for case in cases:
        write_index_entries(session, crypto, case, version)
    if cases:
        audit.record_many(
            session,
            Actor.system(),
            "keys:index-backfill",
            resource_type="case",
            rows=[
                {"resource_id": c.id, "case_id": c.id, "details": {"key_version": version}}
                for c in cases
            ],
            none_shown={},
        )


# How long the backfill waits for transactions older than it (requests that read the index
# versions before the new one existed) before it goes on regardless.
OLDER_TRANSACTIONS_WAIT_SECONDS = 30.0


def _wait_for_older_transactions(factory: sessionmaker[Session]) -> None:
    """On PostgreSQL, wait until every transaction that began before now has ended: a
    request that read its organisation's index versions before the backfilling one was
    committed writes without it, and the backfill must not pass its case while it still
    may. Requests are short; an idle-in-transaction session left open is waited for
    `OLDER_TRANSACTIONS_WAIT_SECONDS` at most: what it writes before the switch, the
    switch's catch-up indexes again; a case it writes after the switch keeps old-version
    entries only, unsearchable until its next edit or the next rotation. The database role
    must see the other sessions' transactions (the application's own role, or
    pg_read_all_stats). SQLite runs one writer at a time: nothing is older."""
    import time

    with factory() as session:
        if session.get_bind().dialect.name != "postgresql":
            return
        started = session.scalar(text("SELECT clock_timestamp()"))
        deadline = time.monotonic() + OLDER_TRANSACTIONS_WAIT_SECONDS
        while time.monotonic() < deadline:
            session.rollback()
            older = session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                    "AND xact_start < :started"
                ),
                {"started": started},
            )
            if not older:
                return
            time.sleep(0.05)


def utcnow() -> datetime:
    return datetime.now(UTC)


def finish_rotation_job(factory: sessionmaker[Session], job_id: int) -> None:
    with factory() as session:
        job = session.get(RotationJob, job_id)
        if job is not None and job.finished_at is None:
            job.finished_at = utcnow()
        session.commit()


# ---- organisation keys --------------------------------------------------------------------


# Passes of re-wrapping then deleting old versions: a data key committed under an old
# version while the rotation ran (a request that read the version before the new one
# existed) keeps that version alive, and the next pass re-wraps it.
_ORG_KEY_PASSES = 3


def _newest_org_keys() -> Any:
    return (
        select(OrgKey.org_id, func.max(OrgKey.version).label("v"))
        .group_by(OrgKey.org_id)
        .subquery()
    )


def _rewrap_under_newest_org_keys(
    factory: sessionmaker[Session], batch_size: int, progress: Progress | None
) -> int:
    """Re-wrap every data key not under its organisation's newest key; how many."""
    from referral_api.crypto.keys import _case_key_aad, unwrap_data_key, wrap_data_key

    rewrapped = 0
    # Keyset on (case id, version): from the start each time, a batch re-read every data key
    # re-wrapped already (0.8 s per 10,000 keys at the start of 100,000, 1.2 s at the end).
    # A key written behind the keyset under an older version meanwhile keeps that version
    # referenced: `rotate_org_keys` then runs another pass.
    after: tuple[uuid.UUID, int] | None = None
    while True:
        with factory() as session:
            keys = crypto_of(session).keys(session)
            newest = _newest_org_keys()
            latest: dict[uuid.UUID, int] = dict(
                session.execute(select(newest.c.org_id, newest.c.v)).all()
            )
            stale = (
                select(CaseKey)
                .join(newest, newest.c.org_id == CaseKey.org_id)
                .where(CaseKey.org_key_version < newest.c.v)
                .order_by(CaseKey.case_id, CaseKey.version)
                .limit(batch_size)
            )
            if after is not None:
                stale = stale.where(tuple_(CaseKey.case_id, CaseKey.version) > tuple_(*after))
            rows = session.scalars(stale).all()
            for row in rows:
                old_kek = keys.org_key(row.org_id, row.org_key_version)
                data_key = unwrap_data_key(
                    old_kek,
                    row.wrapped_key,
                    _case_key_aad(row.case_id, row.version, row.org_key_version),
                )
                new_version = latest[row.org_id]
                row.wrapped_key = wrap_data_key(
                    keys.org_key(row.org_id, new_version),
                    data_key,
                    _case_key_aad(row.case_id, row.version, new_version),
                )
                row.org_key_version = new_version
            if rows:
                after = (rows[-1].case_id, rows[-1].version)
            session.commit()
        rewrapped += len(rows)
        if progress:
            progress(len(rows))
        if len(rows) < batch_size:
            return rewrapped


def _delete_unused_org_keys(factory: sessionmaker[Session]) -> int:
    """Delete the organisations' older key versions no data key references; how many
    are left because one does. The database's reference (case_keys → org_keys) decides,
    not a count read beforehand: a data key being inserted under a version holds it, so
    the delete waits for that insert and then fails, in a savepoint of its own."""
    left = 0
    with factory() as session:
        newest = _newest_org_keys()
        stale = session.execute(
            select(OrgKey.org_id, OrgKey.version)
            .join(newest, newest.c.org_id == OrgKey.org_id)
            .where(OrgKey.version < newest.c.v)
        ).all()
        for org_id, version in stale:
            try:
                with session.begin_nested():
                    session.execute(
                        delete(OrgKey).where(OrgKey.org_id == org_id, OrgKey.version == version)
                    )
            except IntegrityError:
                left += 1
        session.commit()
    return left


def rotate_org_keys(
    factory: sessionmaker[Session], *, batch_size: int = 1000, progress: Progress | None = None
) -> tuple[int, int]:
    """Give every organisation new key material and re-wrap its data keys under it, then
    delete the old organisation-key versions. Returns (organisations, data keys re-wrapped).

    Root rotation only re-wraps organisation keys (same material). After an erasure, a
    restored backup's data keys could still be unwrapped with the live organisation key;
    this rotation (followed by a root rotation and destroying the old root version) makes
    every pre-rotation backup useless. Resumable: data keys already under the newest
    version are skipped; old versions are deleted only once nothing refers to them.
    """
    with factory() as session:
        keys = crypto_of(session).keys(session)
        newest = _newest_org_keys()
        orgs = session.execute(select(newest.c.org_id, newest.c.v)).all()
        if _unfinished_job(session, "org-keys") is None:  # a new run, not a resumed one
            for org_id, latest in orgs:
                keys._create_org_key(org_id, version=latest + 1)
        job_id = open_rotation_job(session, "org-keys").id
        session.commit()
    rewrapped = 0
    for _ in range(_ORG_KEY_PASSES):
        rewrapped += _rewrap_under_newest_org_keys(factory, batch_size, progress)
        if not _delete_unused_org_keys(factory):
            break
    else:
        raise Conflict(
            "old organisation keys are still referenced by data keys written meanwhile; "
            "run the command again to finish"
        )
    finish_rotation_job(factory, job_id)
    crypto_cache_clear(factory)
    return len(orgs), rewrapped


def crypto_cache_clear(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        crypto_of(session).cache.clear()
