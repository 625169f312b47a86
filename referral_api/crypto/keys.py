"""The key hierarchy: root (provider) → organisation key → per-case data key → field subkey;
root → per-organisation blind-index key.

Unwrapped keys are cached briefly in process, keyed by version (a version's key never
changes, so the cache cannot serve a stale key; it can only outlive a destroyed version by
at most the TTL, and destruction also removes every ciphertext that used it).

Only data keys are cached (one entry per case and version), never the field keys derived
from them: a record's field keys are derived where it is used (one HKDF-Expand for all of
them, `envelope.FieldKeys`, kept on the loaded record for its request), and a cached
`AESGCM` object holds ~2.5 KB of cipher state, so 29 of them per case would make a
50,000-case cache several GB.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    ColumnClause,
    String,
    Uuid,
    bindparam,
    cast,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from referral_api.crypto.blind_index import RULES
from referral_api.crypto.envelope import field_subkey
from referral_api.crypto.keyring import KeyProvider, KeyUnavailable
from referral_api.crypto.models import CaseKey, IndexKey, OrgKey
from referral_api.db import utcnow

DATA_KEY_BYTES = 32
_MEMO = "_ra_key_versions"
# Index keys new entries are written under: the one searched and the one being backfilled.
_WRITTEN_INDEX_STATES = ("active", "backfilling")
_WRAPPED = "_ra_wrapped_case_keys"


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_key_versions(session: Session) -> None:
    # Another transaction may rotate keys: versions are only trusted within one.
    session.info.pop(_MEMO, None)
    session.info.pop(_WRAPPED, None)


def remember_wrapped_case_key(
    session: Session,
    case_id: uuid.UUID,
    version: int,
    org_id: uuid.UUID,
    org_key_version: int,
    wrapped_key: bytes,
) -> None:
    """Hand the key service a case's wrapped data key read together with the case (one
    statement instead of two): unwrapped only if a field is then decrypted and the key is
    not cached, forgotten at the end of the transaction."""
    session.info.setdefault(_WRAPPED, {})[(case_id, version)] = (
        org_id,
        org_key_version,
        wrapped_key,
    )


_NONCE = 12


class KeyRemovedConcurrently(KeyUnavailable):
    """A key version that rows this transaction read are under was removed since by a
    concurrent `keys rotate-*` (a newer version exists) or an erasure (the case's keys are
    gone with it). Nothing is wrong with what is stored: a retry reads the rows as they are
    now (errors.py answers a retryable 503)."""


class KeyCache:
    """A small thread-safe LRU with a time-to-live."""

    def __init__(self, maxsize: int = 50_000, ttl_seconds: float = 300.0) -> None:
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._maxsize = maxsize
        self._ttl = ttl_seconds

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires < time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = (time.monotonic() + self._ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def discard_case(self, case_id: uuid.UUID) -> None:
        with self._lock:
            for key in [k for k in self._data if isinstance(k, tuple) and case_id in k]:
                del self._data[key]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


@dataclass
class CryptoContext:
    """What a database session needs to encrypt and decrypt: installed in `session.info`."""

    provider: KeyProvider
    cache: KeyCache
    # Truncation plan for new blind-index key versions ({field: bits}).
    index_bits: dict[str, int]
    # Region for phone numbers written in national form (ISO 3166 alpha-2).
    phone_region: str = "GB"

    def keys(self, session: Session) -> KeyService:
        return KeyService(session, self.provider, self.cache, self.index_bits)

    def case_key(self, session: Session, case_id: uuid.UUID, version: int) -> bytes:
        """A case's data key from the cache, or unwrapped through the session on a miss
        (the per-field read path: one cache lookup, no KeyService built while cached)."""
        cached = self.cache.get(("case", case_id, version))
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        return self.keys(session).case_key(case_id, version)


def _org_key_aad(org_id: uuid.UUID, version: int) -> bytes:
    return b"org-key\x00" + org_id.bytes + struct.pack(">I", version)


def _index_key_aad(org_id: uuid.UUID, version: int) -> bytes:
    return b"index-key\x00" + org_id.bytes + struct.pack(">I", version)


def _case_key_aad(case_id: uuid.UUID, version: int, org_key_version: int) -> bytes:
    return b"case-key\x00" + case_id.bytes + struct.pack(">II", version, org_key_version)


def wrap_data_key(kek: bytes, data_key: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, aad)


def unwrap_data_key(kek: bytes, wrapped: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
    except InvalidTag:
        raise KeyUnavailable("a wrapped key did not authenticate") from None


_COLON: ColumnClause[str] = literal_column("':'")
_COMMA: ColumnClause[str] = literal_column("','")


def stored_versions_columns(org_id: Any) -> tuple[Any, Any]:
    """An organisation's stored key versions as two columns: its newest organisation key
    version (NULL without keys) and the blind-index key versions being written (active or
    backfilling) as "state:version,…" text (the same on every database);
    `remember_stored_versions` takes both. `org_id` is a column of another query, which then
    carries them at no extra round trip (the actor's query: every request reads its actor's
    organisation first, and writes and searches for that organisation), or a parameter
    (`_STORED_VERSIONS`, outside requests)."""
    newest_org_key = (
        select(func.max(OrgKey.version))
        .where(OrgKey.org_id == org_id)
        .scalar_subquery()
        .label("org_key_version")
    )
    # Constants and plain comparisons only: an IN list or a bound separator is rendered
    # into the SQL text on every execution (SQLAlchemy's "post-compile" parameters), which
    # cost every request more CPU than the round trip this saves.
    index_keys = (
        select(
            func.aggregate_strings(
                IndexKey.state + _COLON + cast(IndexKey.version, String),
                _COMMA,  # type: ignore[arg-type]  # typed str, which is bound per execution
            )
        )
        .where(
            IndexKey.org_id == org_id,
            or_(*(IndexKey.state == state for state in _WRITTEN_INDEX_STATES)),
        )
        .scalar_subquery()
        .label("index_key_versions")
    )
    return newest_org_key, index_keys


def remember_stored_versions(
    session: Session, org_id: uuid.UUID, org_key_version: int | None, index_keys: str | None
) -> None:
    """Seed this transaction's memo of an organisation's stored key versions with the
    columns of `stored_versions_columns`, read in this transaction (forgotten, like the
    memo, at its end); the key service then does not ask again."""
    parsed = [
        (state, int(version))
        for state, _, version in (item.partition(":") for item in (index_keys or "").split(","))
        if version
    ]
    session.info.setdefault(_MEMO, {}).setdefault(
        ("stored", org_id), (org_key_version, sorted(parsed, key=lambda kv: kv[1]))
    )


# Built once: outside a request (CLI, seeding, rotation) the key service asks for the
# versions itself, at the first write of each transaction. (The org_id columns take their
# type from their foreign key only once every table is known, so the parameter names its own.)
_STORED_VERSIONS = select(*stored_versions_columns(bindparam("org_id", type_=Uuid())))


class KeyService:
    def __init__(
        self,
        session: Session,
        provider: KeyProvider,
        cache: KeyCache,
        plan: dict[str, int] | None = None,
    ) -> None:
        self.session = session
        self.provider = provider
        self.cache = cache
        self.plan = plan or {}

    # ---- organisation keys ----------------------------------------------------------------

    def _memo(self) -> dict[Any, Any]:
        """Per-transaction memo of current key versions (cleared at commit or rollback):
        inserting many cases in one transaction asks once per organisation."""
        return self.session.info.setdefault(_MEMO, {})  # type: ignore[no-any-return]

    def current_org_key_version(self, org_id: uuid.UUID) -> int:
        memo = self._memo()
        if ("org", org_id) not in memo:
            memo[("org", org_id)] = self._current_org_key_version(org_id)
        return memo[("org", org_id)]  # type: ignore[no-any-return]

    def _stored_versions(self, org_id: uuid.UUID) -> tuple[int | None, list[tuple[str, int]]]:
        """(newest organisation key version, [(state, version)] of the index keys written),
        as stored, read once per transaction (and again after this session creates a key)."""
        memo = self._memo()
        key = ("stored", org_id)
        if key not in memo:
            org_version, index_keys = self.session.execute(
                _STORED_VERSIONS, {"org_id": org_id}
            ).one()
            remember_stored_versions(self.session, org_id, org_version, index_keys)
        return memo[key]  # type: ignore[no-any-return]

    def _current_org_key_version(self, org_id: uuid.UUID) -> int:
        version = self._stored_versions(org_id)[0]
        pending = [
            r.version for r in self.session.new if isinstance(r, OrgKey) and r.org_id == org_id
        ]
        if pending:
            version = max([version or 0, *pending])
        if version is None:
            return self._create_org_key(org_id)
        return int(version)

    def _create_org_key(self, org_id: uuid.UUID, version: int = 1) -> int:
        self._memo().clear()
        key = AESGCM.generate_key(bit_length=256)
        row = OrgKey(
            org_id=org_id,
            version=version,
            root_version=self.provider.current_version(),
            wrapped_key=self.provider.wrap(key, _org_key_aad(org_id, version)),
        )
        if self._add_key_row(row):
            self.cache.put(("org", org_id, version), key)
        return version

    def _add_key_row(self, row: Any) -> bool:
        """Insert a new key row. Outside a flush, in a savepoint, so that losing a creation
        race to another transaction is harmless. Inside a flush (first use of an
        organisation created without keys), it is inserted at once, ahead of that flush's
        own rows: a data key references its organisation key (case_keys → org_keys), and
        the unit of work orders rows by relationships, which these have none of."""
        # Session has no public "inside before_flush" flag.
        if self.session._flushing:
            table = type(row).__table__
            values = {key: value for key, value in sa_inspect(row).dict.items() if key in table.c}
            self.session.connection().execute(insert(table).values(**values))
            return True
        try:
            with self.session.begin_nested():
                self.session.add(row)
                self.session.flush()
        except IntegrityError:
            return False  # another transaction created it first; use theirs
        return True

    def ensure_org_keys(self, org_id: uuid.UUID) -> None:
        """Provision an organisation's first key and blind-index key (at its creation)."""
        self.current_org_key_version(org_id)
        self.index_versions(org_id, for_query=False)

    def org_key(self, org_id: uuid.UUID, version: int) -> bytes:
        cached = self.cache.get(("org", org_id, version))
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        row = self.session.get(OrgKey, (org_id, version))
        if row is None:
            newer = self._newest(OrgKey.version, OrgKey.org_id == org_id) > version
            raise _missing("organisation key", newer=newer)
        key = self.provider.unwrap(row.wrapped_key, _org_key_aad(org_id, version))
        self.cache.put(("org", org_id, version), key)
        return key

    # ---- case data keys -------------------------------------------------------------------

    def new_case_key(
        self, case_id: uuid.UUID, org_id: uuid.UUID, version: int = 1
    ) -> dict[str, Any]:
        """A new random data key for a case, cached, and the `case_keys` row (column values)
        that stores it wrapped under the organisation's current key: the caller inserts it."""
        data_key = os.urandom(DATA_KEY_BYTES)
        org_version = self.current_org_key_version(org_id)
        try:
            kek = self.org_key(org_id, org_version)
        except KeyUnavailable:
            # The version this transaction read first was rotated away since (a concurrent
            # `keys rotate-org-keys` deleted it): wrap under the organisation's key as it
            # is now. (Had the old key still been cached, the database's reference refuses
            # the insert instead: a retryable 503, errors._ROTATED_AWAY.)
            self._memo().clear()
            org_version = self.current_org_key_version(org_id)
            kek = self.org_key(org_id, org_version)
        self.cache.put(("case", case_id, version), data_key)
        return {
            "case_id": case_id,
            "version": version,
            "org_id": org_id,
            "org_key_version": org_version,
            "wrapped_key": wrap_data_key(
                kek, data_key, _case_key_aad(case_id, version, org_version)
            ),
            "created_at": utcnow(),
        }

    def create_case_key(self, case_id: uuid.UUID, org_id: uuid.UUID, version: int = 1) -> None:
        """A new data key for a case, added to the session (inserted by its next flush)."""
        self.session.add(CaseKey(**self.new_case_key(case_id, org_id, version)))

    def case_key(self, case_id: uuid.UUID, version: int) -> bytes:
        cached = self.cache.get(("case", case_id, version))
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        known = self.session.info.get(_WRAPPED, {}).pop((case_id, version), None)
        if known is not None:
            return self._unwrap_case_key(case_id, version, *known)
        row = self.session.get(CaseKey, (case_id, version))
        if row is None:
            raise _missing("case key", newer=self._case_key_removed(case_id, version))
        return self._unwrap_case_key(
            case_id, version, row.org_id, row.org_key_version, row.wrapped_key
        )

    def _case_key_removed(self, case_id: uuid.UUID, version: int) -> bool:
        """Whether a case key version that is not stored was removed by a rotation (the
        case has a newer one) or by the case's erasure."""
        from referral_api.cases.models import Case

        newest = self._newest(CaseKey.version, CaseKey.case_id == case_id)
        if newest:
            return newest > version
        return bool(self.session.scalar(select(Case.erased).where(Case.id == case_id)))

    def _newest(self, version: Any, *where: Any) -> int:
        """The newest stored version of the keys `where` selects (0: none)."""
        return int(self.session.scalar(select(func.max(version)).where(*where)) or 0)

    def _unwrap_case_key(
        self,
        case_id: uuid.UUID,
        version: int,
        org_id: uuid.UUID,
        org_key_version: int,
        wrapped_key: bytes,
    ) -> bytes:
        try:
            kek = self.org_key(org_id, org_key_version)
        except KeyRemovedConcurrently:
            # `keys rotate-org-keys` re-wrapped this data key under a newer organisation key
            # and deleted the old one since its row was read: the data key is the same, so
            # what was read under it still decrypts. Its row as it is now:
            now = self.session.execute(
                select(CaseKey.org_key_version, CaseKey.wrapped_key).where(
                    CaseKey.case_id == case_id, CaseKey.version == version
                )
            ).one_or_none()
            if now is None or now.org_key_version == org_key_version:
                raise
            org_key_version, wrapped_key = now
            kek = self.org_key(org_id, org_key_version)
        data_key = unwrap_data_key(
            kek, wrapped_key, _case_key_aad(case_id, version, org_key_version)
        )
        self.cache.put(("case", case_id, version), data_key)
        return data_key

    def subkey(self, case_id: uuid.UUID, version: int, table: str, column: str) -> bytes:
        """A field's subkey in the current ciphertext format (for tests and restores)."""
        return field_subkey(self.case_key(case_id, version), table, column)

    # ---- blind-index keys -----------------------------------------------------------------

    def index_versions(self, org_id: uuid.UUID, *, for_query: bool) -> list[int]:
        """Versions to write (active + backfilling) or to query (active only)."""
        memo = self._memo()
        key = ("index", org_id, for_query)
        if key not in memo:
            memo[key] = self._index_versions(org_id, for_query=for_query)
        return list(memo[key])

    def _index_versions(self, org_id: uuid.UUID, *, for_query: bool) -> list[int]:
        states = ("active",) if for_query else _WRITTEN_INDEX_STATES
        versions = [v for state, v in self._stored_versions(org_id)[1] if state in states]
        versions += [
            r.version
            for r in self.session.new
            if isinstance(r, IndexKey) and r.org_id == org_id and r.state in states
        ]
        if not versions:
            versions = [self.create_index_key(org_id, version=1, state="active", plan=self.plan)]
        return sorted(versions)

    def index_plan(self, org_id: uuid.UUID, version: int) -> dict[str, int]:
        cached = self.cache.get(("index-plan", org_id, version))
        if cached is None:
            row = self.session.get(IndexKey, (org_id, version))
            if row is None:
                raise self._index_key_missing(org_id, version)
            cached = {field: int(bits) for field, bits in json.loads(row.plan).items()}
            self.cache.put(("index-plan", org_id, version), cached)
        return cached  # type: ignore[no-any-return]

    def _index_key_missing(self, org_id: uuid.UUID, version: int) -> KeyUnavailable:
        newer = self._newest(IndexKey.version, IndexKey.org_id == org_id) > version
        return _missing("index key", newer=newer)

    def create_index_key(
        self, org_id: uuid.UUID, *, version: int, state: str, plan: dict[str, int]
    ) -> int:
        self._memo().clear()
        key = AESGCM.generate_key(bit_length=256)
        row = IndexKey(
            org_id=org_id,
            version=version,
            state=state,
            # The normalisation rules its entries are computed under, for `keys status`.
            plan=json.dumps({**plan, "rules": RULES}, sort_keys=True),
            root_version=self.provider.current_version(),
            wrapped_key=self.provider.wrap(key, _index_key_aad(org_id, version)),
        )
        if self._add_key_row(row):
            self.cache.put(("index", org_id, version), key)
            self.cache.put(("index-plan", org_id, version), dict(plan))
        return version

    def index_key(self, org_id: uuid.UUID, version: int) -> bytes:
        cached = self.cache.get(("index", org_id, version))
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        row = self.session.get(IndexKey, (org_id, version))
        if row is None:
            raise self._index_key_missing(org_id, version)
        key = self.provider.unwrap(row.wrapped_key, _index_key_aad(org_id, version))
        self.cache.put(("index", org_id, version), key)
        return key


def _missing(kind: str, *, newer: bool) -> KeyUnavailable:
    """The error for a key version not stored: removed since this transaction read what is
    under it, or missing (a fault: `keys status` and the operations guide)."""
    if newer:
        return KeyRemovedConcurrently(f"{kind} version was removed by a concurrent change")
    return KeyUnavailable(f"{kind} version is not available")
