"""`EncryptedField`: models declare `given_name = EncryptedField(Category.IDENTITY)` and read
and write plaintext; ciphertext handling happens here and in a before-flush hook.

- A field is stored in a ciphertext column: its own (named after it), or, declared with
  `stored_in=`, one shared by the fields of its data category (a case's `identity` column
  holds one JSON object of its eight identity fields). A category is what a viewer sees or
  does not, so its fields are always read together: one ciphertext per category is one
  decryption where there were up to eight, and the column reveals the category's total
  length, not each field's.
- Reading decrypts the column through the session's `CryptoContext` (session.info["crypto"])
  and caches the plaintext on the instance for as long as the ciphertext is unchanged.
- Writing keeps the plaintext pending; the flush encrypts it under the case's current data
  key with associated data naming table, column, row and case (a shared column is sealed
  again whole: its other fields keep their values).
- Values are JSON (strings, numbers, booleans, lists, objects, null); every declared field is
  encrypted even when null, so a column's presence reveals nothing.
- Fields stored in a shared column keep their own columns of ciphertext formats 1 to 3 (read
  only, loaded together and only when the shared column is empty): a case stored before
  shared columns is read from them, and its next write or key rotation moves it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import orjson
from sqlalchemy import LargeBinary, event, inspect
from sqlalchemy.orm import Session, mapped_column, object_session
from sqlalchemy.orm.attributes import flag_dirty

from referral_api.access.categories import Category
from referral_api.crypto import envelope
from referral_api.crypto.keys import CryptoContext, KeyService

_PLAIN = "_ra_plaintext"  # {column: (its blob, its plaintext)}: a shared column's is a dict
_PENDING = "_ra_pending"  # {field: value written, not yet sealed}
_LEGACY = "_ra_plaintext_per_field"  # {field: (blob, value)} from a per-field column
_PLACE = "_ra_place"
_KEYS = "_ra_keys"
# The per-field columns of fields now stored in a shared column: one deferred group, loaded
# by one SELECT the first time any of them is read (only for a record stored before).
LEGACY_GROUP = "ciphertexts_per_field"


class CryptoUnavailable(RuntimeError):
    """A session without a crypto context touched an encrypted field."""


def crypto_of(session: Session | None) -> CryptoContext:
    context = session.info.get("crypto") if session is not None else None
    if context is None:
        raise CryptoUnavailable("this session has no crypto context")
    return context  # type: ignore[no-any-return]


class StoredColumn:
    """One ciphertext column of a model and the fields whose values it holds: one field
    (its value) or, `shared`, several (a JSON object of their values)."""

    __slots__ = ("attr", "members", "name", "shared")

    def __init__(self, name: str, shared: bool) -> None:
        self.name = name
        self.attr = f"{name}_ct"
        self.members: tuple[str, ...] = ()
        self.shared = shared


class EncryptedRecord:
    """Mixin for models with encrypted fields. Subclasses say which case (and key) they
    belong to; the case id is bound into every ciphertext's associated data."""

    __encrypted_fields__: ClassVar[dict[str, EncryptedField]]
    __encrypted_columns__: ClassVar[dict[str, StoredColumn]]

    def crypto_row_id(self) -> uuid.UUID:
        return self.id  # type: ignore[attr-defined,no-any-return]

    def crypto_case_id(self) -> uuid.UUID:
        raise NotImplementedError

    def current_key_version(self, keys: KeyService) -> int:
        """The case's current data-key version, creating the first key for a new case."""
        raise NotImplementedError

    def after_encrypt(self, session: Session, crypto: CryptoContext, changed: set[str]) -> None:
        """Hook: e.g. refresh blind indexes of the changed fields."""


def encrypted_models() -> tuple[type[Any], ...]:
    """Every mapped model with encrypted fields, in table-name order (a stable lock order).

    Whatever covers "everything encrypted under a case's key" (key rotation, `keys status`,
    erasure) enumerates these rather than a list of its own: a model it forgot would keep
    ciphertexts under a key that is then deleted, or outlive an erasure."""
    import referral_api.models  # noqa: F401 - every model module, so the registry is complete
    from referral_api.db import Base

    found = [m.class_ for m in Base.registry.mappers if issubclass(m.class_, EncryptedRecord)]
    return tuple(sorted(found, key=lambda model: str(model.__tablename__)))


def ciphertext_attrs(model: type) -> tuple[str, ...]:
    """The ORM attributes of every ciphertext column of `model`: its stored columns and the
    per-field columns kept from before shared ones (counting and clearing what is held)."""
    fields: dict[str, EncryptedField] = model.__encrypted_fields__  # type: ignore[attr-defined]
    columns: dict[str, StoredColumn] = model.__encrypted_columns__  # type: ignore[attr-defined]
    legacy = [f.legacy_attr for f in fields.values() if f.legacy_attr is not None]
    return (*(c.attr for c in columns.values()), *legacy)


class EncryptedField:
    def __init__(self, category: Category, *, stored_in: str | None = None) -> None:
        self.category = category
        self.stored_in = stored_in
        self.name = ""
        self.column = ""  # the ciphertext column holding this field's value
        self.column_attr = ""  # its ORM attribute
        self.legacy_attr: str | None = None  # stored_in: the field's own column (formats 1-3)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.column = self.stored_in or name
        self.column_attr = f"{self.column}_ct"
        columns = dict(owner.__dict__.get("__encrypted_columns__", {}))
        stored = columns.get(self.column)
        if stored is None:
            stored = columns[self.column] = StoredColumn(self.column, self.stored_in is not None)
            # The ciphertext column carries the field's (or the category's) name.
            setattr(owner, self.column_attr, mapped_column(self.column, LargeBinary, nullable=True))
        stored.members = (*stored.members, name)
        if self.stored_in is not None:
            self.legacy_attr = f"{name}_ct"
            setattr(
                owner,
                self.legacy_attr,
                mapped_column(name, LargeBinary, nullable=True, deferred_group=LEGACY_GROUP),
            )
        fields = dict(owner.__dict__.get("__encrypted_fields__", {}))
        fields[name] = self
        owner.__encrypted_fields__ = fields  # type: ignore[attr-defined]
        owner.__encrypted_columns__ = columns  # type: ignore[attr-defined]

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        state = instance.__dict__
        pending = state.get(_PENDING)
        if pending and self.name in pending:
            return pending[self.name]
        blob = getattr(instance, self.column_attr)
        if blob is None:
            return None if self.legacy_attr is None else _legacy_value(instance, self)
        plain = state.get(_PLAIN)
        if plain is None:
            plain = state[_PLAIN] = {}
        cached = plain.get(self.column)
        if cached is None or cached[0] is not blob:
            value = decrypt_value(object_session(instance), instance, self.column, blob)
            cached = plain[self.column] = (blob, value)
        return cached[1] if self.stored_in is None else cached[1].get(self.name)

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__.setdefault(_PENDING, {})[self.name] = value
        if object_session(instance) is not None:
            flag_dirty(instance)


def _legacy_value(instance: Any, field: EncryptedField) -> Any:
    """A field of a record stored before its shared column, from its own column."""
    blob = getattr(instance, field.legacy_attr)  # type: ignore[arg-type]
    if blob is None:
        return None
    memo = instance.__dict__.setdefault(_LEGACY, {})
    cached = memo.get(field.name)
    if cached is None or cached[0] is not blob:
        value = decrypt_value(object_session(instance), instance, field.name, blob)
        cached = memo[field.name] = (blob, value)
    return cached[1]


# Plaintexts are compact UTF-8 JSON (no spaces, non-ASCII as is). orjson writes exactly that
# (the same bytes as json.JSONEncoder(ensure_ascii=False, separators=(",", ":")) for these
# values) and reads it 2-3 times faster, writes it ~10 times faster: one encode or decode
# per category on every case written or read.


def _place_of(instance: Any) -> tuple[uuid.UUID, bytes]:
    """(case id, the row id ‖ case id part of the associated data), remembered per instance
    for as long as its ids are the same objects (a record's fields share them)."""
    row_id, case_id = instance.crypto_row_id(), instance.crypto_case_id()
    memo = instance.__dict__.get(_PLACE)
    if memo is None or memo[0] is not row_id or memo[1] is not case_id:
        memo = (row_id, case_id, envelope.place_aad(row_id, case_id))
        instance.__dict__[_PLACE] = memo
    return case_id, memo[2]


def _field_keys(
    instance: Any,
    case_id: uuid.UUID,
    version: int,
    data_key: bytes | Callable[[], bytes],
    columns: Iterable[str] = (),
) -> envelope.FieldKeys:
    """The record's field keys under data-key `version`, remembered on the instance: one key
    schedule per record and version, however many of its fields are read or written.
    Reads pass `data_key` as a function, called only the first time. Writes pass the data
    key itself, and a remembered schedule of another key is replaced: sealing under a stale
    key would store what nothing can decrypt (a read under one only fails). `columns`, the
    ones about to be used, size the first derivation."""
    memo = instance.__dict__.get(_KEYS)
    if memo is None:
        memo = instance.__dict__[_KEYS] = {}
    keys = memo.get((case_id, version))
    if keys is None or (isinstance(data_key, bytes) and keys.data_key != data_key):
        key = data_key if isinstance(data_key, bytes) else data_key()
        keys = memo[case_id, version] = envelope.FieldKeys(key, instance.__tablename__)
    keys.plan(columns)
    return keys  # type: ignore[no-any-return]


def _open(keys: envelope.FieldKeys, column: str, fmt: int, blob: bytes, place: bytes) -> Any:
    """A field's value from its blob (header already parsed), `place` = the row's part of
    the associated data."""
    try:
        aead = keys.aead(column, fmt)
    except ValueError:  # no key for this column in the blob's format: not its ciphertext
        raise envelope.DecryptionError("ciphertext did not authenticate") from None
    plaintext = envelope.open_sealed(aead, blob, envelope.column_aad(keys.table, column) + place)
    return orjson.loads(plaintext)


def decrypt_value(session: Session | None, instance: Any, column: str, blob: bytes) -> Any:
    """Decrypt `blob` as the content of `instance`'s ciphertext column `column` (a shared
    column's is the JSON object of its fields)."""
    crypto_of(session)  # a session without a crypto context fails here, not later
    fmt, version = envelope.parse_header(blob)
    case_id, place = _place_of(instance)
    keys = _field_keys(instance, case_id, version, _data_key_loader(session, case_id, version))
    return _open(keys, column, fmt, blob, place)


def _data_key_loader(
    session: Session | None, case_id: uuid.UUID, version: int
) -> Callable[[], bytes]:
    return lambda: crypto_of(session).case_key(session, case_id, version)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def _by_column(
    model: type, names: tuple[str, ...]
) -> tuple[tuple[tuple[StoredColumn, tuple[str, ...]], ...], tuple[str, ...]]:
    """`names` grouped by the column holding them, in order, and those columns' names."""
    fields: dict[str, EncryptedField] = model.__encrypted_fields__  # type: ignore[attr-defined]
    stored: dict[str, StoredColumn] = model.__encrypted_columns__  # type: ignore[attr-defined]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(fields[name].column, []).append(name)
    return tuple((stored[c], tuple(members)) for c, members in groups.items()), tuple(groups)


def decrypt_fields(instance: Any, names: Iterable[str]) -> dict[str, Any]:
    """The values of several fields of one record ({name: value}), decrypted now and cached
    on the instance (reading them again hits the cache): the session's crypto context, the
    record's column keys for each key version and its part of the associated data are
    looked up once per record, and each column once however many of its fields are named.
    Pending fields give their unsealed value, fields with no ciphertext None."""
    state = instance.__dict__
    plain = state.get(_PLAIN)
    if plain is None:
        plain = state[_PLAIN] = {}
    pending = state.get(_PENDING) or {}
    model = type(instance)
    groups, columns = _by_column(model, tuple(names))  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    by_version: dict[int, envelope.FieldKeys] = {}
    place: bytes | None = None
    for stored, members in groups:
        blob = getattr(instance, stored.attr)
        if blob is None:
            for name in members:
                if name in pending:
                    values[name] = pending[name]
                elif stored.shared:
                    values[name] = _legacy_value(instance, model.__encrypted_fields__[name])
                else:
                    values[name] = None
            continue
        cached = plain.get(stored.name)
        if cached is None or cached[0] is not blob:
            if place is None:
                case_id, place = _place_of(instance)
                session = object_session(instance)
            fmt, version = envelope.parse_header(blob)
            keys = by_version.get(version)
            if keys is None:
                keys = by_version[version] = _field_keys(
                    instance, case_id, version, _data_key_loader(session, case_id, version), columns
                )
            cached = plain[stored.name] = (blob, _open(keys, stored.name, fmt, blob, place))
        content = cached[1]
        if stored.shared:
            for name in members:
                values[name] = pending[name] if name in pending else content.get(name)
        else:
            name = members[0]
            values[name] = pending.get(name, content)
    return values


def _seal_fields(
    keys: KeyService, instance: Any, values: dict[str, Any], version: int
) -> dict[str, bytes]:
    """Encrypt several ciphertext columns of one record ({column: its plaintext}) under
    data-key `version`: the column keys, the header and the row's part of the associated
    data are looked up once per record."""
    case_id, place = _place_of(instance)
    table = instance.__tablename__
    field_keys = _field_keys(instance, case_id, version, keys.case_key(case_id, version), values)
    header = envelope.header(version)
    return {
        column: envelope.seal(
            field_keys.aead(column),
            header,
            orjson.dumps(value),
            envelope.column_aad(table, column) + place,
        )
        for column, value in values.items()
    }


def _store(
    keys: KeyService, instance: Any, values: dict[str, Any], version: int, legacy: set[str]
) -> None:
    """Seal `values` ({column: plaintext}) under data-key `version` into their columns,
    cache the plaintext, and clear the per-field columns of the shared columns in `legacy`
    (their values are in `values` now)."""
    model = type(instance)
    stored = model.__encrypted_columns__
    fields = model.__encrypted_fields__
    plain = instance.__dict__.setdefault(_PLAIN, {})
    for column, blob in _seal_fields(keys, instance, values, version).items():
        target = stored[column]
        setattr(instance, target.attr, blob)
        plain[column] = (blob, values[column])
        if column in legacy:
            for name in target.members:
                attr = fields[name].legacy_attr
                if getattr(instance, attr) is not None:
                    setattr(instance, attr, None)


def _stored_before_shared_columns(instance: Any, column: StoredColumn) -> bool:
    """A stored record whose shared `column` is empty: its fields may be in their own
    columns (stored before shared columns; or erased, and then those are empty too)."""
    if not column.shared or getattr(instance, column.attr) is not None:
        return False
    return inspect(instance).has_identity


def reencrypt(instance: Any, keys: KeyService, version: int) -> int:
    """Re-encrypt every ciphertext column of `instance` under data-key `version` (rotation),
    moving fields still in their own columns into their shared one; the number of columns
    written. Columns with nothing stored (erased) stay empty."""
    model = type(instance)
    fields = model.__encrypted_fields__
    values: dict[str, Any] = {}
    legacy: set[str] = set()
    for column, stored in model.__encrypted_columns__.items():
        if not stored.shared:
            if getattr(instance, stored.attr) is not None:
                values[column] = getattr(instance, column)
            continue
        if _stored_before_shared_columns(instance, stored):
            if all(getattr(instance, fields[n].legacy_attr) is None for n in stored.members):
                continue  # nothing held
            legacy.add(column)
        elif getattr(instance, stored.attr) is None:
            continue
        values[column] = {name: getattr(instance, name) for name in stored.members}
    _store(keys, instance, values, version, legacy)
    return len(values)


def _declare_unset(instance: Any) -> None:
    """A record not yet stored: every declared field gets a ciphertext, null or not."""
    pending = instance.__dict__.setdefault(_PENDING, {})
    for name in type(instance).__encrypted_fields__:
        pending.setdefault(name, None)


def _seal_pending(keys: KeyService, instance: Any) -> set[str] | None:
    """Encrypt the fields written since the last seal under the record's current data key
    (a shared column whole, its other fields read first); the names sealed, or None when
    nothing was pending."""
    pending: dict[str, Any] | None = instance.__dict__.get(_PENDING)
    if not pending:
        return None
    version = instance.current_key_version(keys)
    model = type(instance)
    fields = model.__encrypted_fields__
    values: dict[str, Any] = {}
    legacy: set[str] = set()
    for column in sorted({fields[name].column for name in pending}):
        stored = model.__encrypted_columns__[column]
        if not stored.shared:
            values[column] = pending[column]
            continue
        if _stored_before_shared_columns(instance, stored):
            legacy.add(column)
        values[column] = {
            name: pending[name] if name in pending else getattr(instance, name)
            for name in stored.members
        }
    _store(keys, instance, values, version, legacy)
    changed = set(pending)
    pending.clear()
    return changed


def seal_new(keys: KeyService, instance: Any) -> None:
    """Encrypt every declared field of a record about to be inserted without the unit of
    work (fields never written are encrypted as null). Its `after_encrypt` hook is not
    called: the caller writes what it would have (e.g. blind-index entries)."""
    _declare_unset(instance)
    _seal_pending(keys, instance)


@event.listens_for(Session, "before_flush")
def _encrypt_pending(session: Session, _flush_context: Any, _instances: Any) -> None:
    new = [i for i in session.new if isinstance(i, EncryptedRecord)]
    dirty = [i for i in session.dirty if isinstance(i, EncryptedRecord)]
    crypto: CryptoContext | None = None
    keys: KeyService | None = None
    for instance in new:
        _declare_unset(instance)
    for instance in (*new, *dirty):
        if not instance.__dict__.get(_PENDING):
            continue
        if crypto is None or keys is None:
            crypto = crypto_of(session)
            keys = crypto.keys(session)
        changed = _seal_pending(keys, instance)
        if changed:
            instance.after_encrypt(session, crypto, changed)
