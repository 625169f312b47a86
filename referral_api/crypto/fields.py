"""`EncryptedField`: models declare `given_name = EncryptedField(Category.IDENTITY)` and read
and write plaintext; ciphertext handling happens here and in a before-flush hook.

- Reading decrypts the column through the session's `CryptoContext` (session.info["crypto"])
  and caches the plaintext on the instance for as long as the ciphertext is unchanged.
- Writing keeps the plaintext pending; the flush encrypts it under the case's current data
  key with associated data naming table, column, row and case.
- Values are JSON (strings, numbers, booleans, lists, objects, null); every declared field is
  encrypted even when null, so a column's presence reveals nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from sqlalchemy import LargeBinary, event
from sqlalchemy.orm import Session, mapped_column, object_session
from sqlalchemy.orm.attributes import flag_dirty

from referral_api.access.categories import Category
from referral_api.crypto import envelope
from referral_api.crypto.keys import CryptoContext, KeyService

_PLAIN = "_ra_plaintext"
_PENDING = "_ra_pending"
_PLACE = "_ra_place"
_KEYS = "_ra_keys"


class CryptoUnavailable(RuntimeError):
    """A session without a crypto context touched an encrypted field."""


def crypto_of(session: Session | None) -> CryptoContext:
    context = session.info.get("crypto") if session is not None else None
    if context is None:
        raise CryptoUnavailable("this session has no crypto context")
    return context  # type: ignore[no-any-return]


class EncryptedRecord:
    """Mixin for models with encrypted fields. Subclasses say which case (and key) they
    belong to; the case id is bound into every ciphertext's associated data."""

    __encrypted_fields__: ClassVar[dict[str, EncryptedField]]

    def crypto_row_id(self) -> uuid.UUID:
        return self.id  # type: ignore[attr-defined,no-any-return]

    def crypto_case_id(self) -> uuid.UUID:
        raise NotImplementedError

    def current_key_version(self, keys: KeyService) -> int:
        """The case's current data-key version, creating the first key for a new case."""
        raise NotImplementedError

    def after_encrypt(self, session: Session, crypto: CryptoContext, changed: set[str]) -> None:
        """Hook: e.g. refresh blind indexes of the changed fields."""


class EncryptedField:
    def __init__(self, category: Category) -> None:
        self.category = category
        self.name = ""
        self.column_attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.column_attr = f"{name}_ct"
        # The ciphertext column carries the field's name in the database.
        setattr(owner, self.column_attr, mapped_column(name, LargeBinary, nullable=True))
        fields = dict(owner.__dict__.get("__encrypted_fields__", {}))
        fields[name] = self
        owner.__encrypted_fields__ = fields  # type: ignore[attr-defined]

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        state = instance.__dict__
        plain = state.get(_PLAIN)
        if plain is None:
            plain = state[_PLAIN] = {}
        elif self.name in state.get(_PENDING, ()):
            return plain[self.name][1]
        blob = getattr(instance, self.column_attr)
        if blob is None:
            return None
        cached = plain.get(self.name)
        if cached is not None and cached[0] is blob:
            return cached[1]
        value = decrypt_value(object_session(instance), instance, self.name, blob)
        plain[self.name] = (blob, value)
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        state = instance.__dict__
        state.setdefault(_PLAIN, {})[self.name] = (None, value)
        state.setdefault(_PENDING, set()).add(self.name)
        if object_session(instance) is not None:
            flag_dirty(instance)


# Compact UTF-8 JSON, one encoder and decoder for every field (json.dumps with options
# builds an encoder per call; json.loads re-checks its argument's type and encoding).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_DECODER = json.JSONDecoder()


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
    plaintext = envelope.open_sealed(
        keys.aead(column, fmt), blob, envelope.column_aad(keys.table, column) + place
    )
    return _JSON_DECODER.decode(plaintext.decode("utf-8"))


def decrypt_value(session: Session | None, instance: Any, column: str, blob: bytes) -> Any:
    """Decrypt `blob` as the value of `instance`'s field `column`."""
    crypto = crypto_of(session)
    fmt, version = envelope.parse_header(blob)
    case_id, place = _place_of(instance)
    keys = _field_keys(
        instance,
        case_id,
        version,
        lambda: crypto.case_key(session, case_id, version),  # type: ignore[arg-type]
    )
    return _open(keys, column, fmt, blob, place)


def decrypt_fields(instance: Any, names: Iterable[str]) -> None:
    """Decrypt several fields of one record now (reading them then hits the instance's
    plaintext cache): the session's crypto context, the record's field keys for each key
    version and its part of the associated data are looked up once per record, not per
    field. Fields already decrypted, pending or null are skipped."""
    state = instance.__dict__
    plain = state.get(_PLAIN)
    if plain is None:
        plain = state[_PLAIN] = {}
    pending = state.get(_PENDING, ())
    fields = type(instance).__encrypted_fields__
    session = object_session(instance)
    case_id, place = _place_of(instance)

    def data_key_of(version: int) -> Callable[[], bytes]:
        return lambda: crypto_of(session).case_key(session, case_id, version)  # type: ignore[arg-type]

    names = tuple(names)
    by_version: dict[int, envelope.FieldKeys] = {}
    for name in names:
        blob = getattr(instance, fields[name].column_attr)
        if blob is None or name in pending:
            continue
        cached = plain.get(name)
        if cached is not None and cached[0] is blob:
            continue
        fmt, version = envelope.parse_header(blob)
        keys = by_version.get(version)
        if keys is None:
            keys = by_version[version] = _field_keys(
                instance, case_id, version, data_key_of(version), names
            )
        plain[name] = (blob, _open(keys, name, fmt, blob, place))


def _seal_fields(
    keys: KeyService, instance: Any, values: dict[str, Any], version: int
) -> dict[str, bytes]:
    """Encrypt several fields of one record under data-key `version`: the field keys, the
    header and the row's part of the associated data are looked up once per record."""
    case_id, place = _place_of(instance)
    table = instance.__tablename__
    field_keys = _field_keys(instance, case_id, version, keys.case_key(case_id, version), values)
    header = envelope.header(version)
    return {
        name: envelope.seal(
            field_keys.aead(name),
            header,
            _JSON.encode(value).encode("utf-8"),
            envelope.column_aad(table, name) + place,
        )
        for name, value in values.items()
    }


def reencrypt(instance: Any, keys: KeyService, version: int) -> int:
    """Re-encrypt every encrypted field of `instance` under data-key `version` (rotation)."""
    fields = type(instance).__encrypted_fields__
    values = {
        name: getattr(instance, name)
        for name, field in fields.items()
        if getattr(instance, field.column_attr) is not None
    }
    plain = instance.__dict__.setdefault(_PLAIN, {})
    for name, blob in _seal_fields(keys, instance, values, version).items():
        setattr(instance, fields[name].column_attr, blob)
        plain[name] = (blob, values[name])
    return len(values)


def _declare_unset(instance: Any) -> None:
    """A record not yet stored: every declared field gets a ciphertext, null or not."""
    state = instance.__dict__
    given = state.setdefault(_PLAIN, {})
    unset = state.setdefault(_PENDING, set())
    for name in type(instance).__encrypted_fields__:
        if name not in unset:
            given[name] = (None, None)
            unset.add(name)


def _seal_pending(keys: KeyService, instance: Any) -> set[str] | None:
    """Encrypt the fields written since the last seal under the record's current data key;
    the names sealed, or None when nothing was pending."""
    pending: set[str] | None = instance.__dict__.get(_PENDING)
    if not pending:
        return None
    version = instance.current_key_version(keys)
    plain = instance.__dict__[_PLAIN]
    fields = type(instance).__encrypted_fields__
    values = {name: plain[name][1] for name in sorted(pending)}
    for name, blob in _seal_fields(keys, instance, values, version).items():
        setattr(instance, fields[name].column_attr, blob)
        plain[name] = (blob, values[name])
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
