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
from typing import Any, ClassVar

from sqlalchemy import LargeBinary, event
from sqlalchemy.orm import Session, mapped_column, object_session
from sqlalchemy.orm.attributes import flag_dirty

from referral_api.access.categories import Category
from referral_api.crypto import envelope
from referral_api.crypto.keys import CryptoContext, KeyService

_PLAIN = "_ra_plaintext"
_PENDING = "_ra_pending"


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
        if self.name in state.get(_PENDING, ()):
            return state[_PLAIN][self.name][1]
        blob = getattr(instance, self.column_attr)
        if blob is None:
            return None
        cached = state.get(_PLAIN, {}).get(self.name)
        if cached is not None and cached[0] is blob:
            return cached[1]
        value = decrypt_value(object_session(instance), instance, self.name, blob)
        state.setdefault(_PLAIN, {})[self.name] = (blob, value)
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        state = instance.__dict__
        state.setdefault(_PLAIN, {})[self.name] = (None, value)
        state.setdefault(_PENDING, set()).add(self.name)
        if object_session(instance) is not None:
            flag_dirty(instance)


def decrypt_value(session: Session | None, instance: Any, column: str, blob: bytes) -> Any:
    keys = crypto_of(session).keys(session)  # type: ignore[arg-type]
    version = envelope.key_version_of(blob)
    case_id = instance.crypto_case_id()
    table = instance.__tablename__
    plaintext = envelope.decrypt(
        keys.subkey(case_id, version, table, column),
        blob,
        table=table,
        column=column,
        row_id=instance.crypto_row_id(),
        case_id=case_id,
    )
    return json.loads(plaintext)


def encrypt_value(keys: KeyService, instance: Any, column: str, value: Any, version: int) -> bytes:
    case_id = instance.crypto_case_id()
    table = instance.__tablename__
    plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return envelope.encrypt(
        keys.subkey(case_id, version, table, column),
        version,
        plaintext,
        table=table,
        column=column,
        row_id=instance.crypto_row_id(),
        case_id=case_id,
    )


def reencrypt(instance: Any, keys: KeyService, version: int) -> int:
    """Re-encrypt every encrypted field of `instance` under data-key `version` (rotation)."""
    count = 0
    for name, field in type(instance).__encrypted_fields__.items():
        if getattr(instance, field.column_attr) is None:
            continue
        value = getattr(instance, name)
        blob = encrypt_value(keys, instance, name, value, version)
        setattr(instance, field.column_attr, blob)
        instance.__dict__.setdefault(_PLAIN, {})[name] = (blob, value)
        count += 1
    return count


@event.listens_for(Session, "before_flush")
def _encrypt_pending(session: Session, _flush_context: Any, _instances: Any) -> None:
    new = set(session.new)
    for instance in [*session.new, *session.dirty]:
        if not isinstance(instance, EncryptedRecord):
            continue
        if instance in new:
            # Every declared field gets a ciphertext, null or not.
            for name in type(instance).__encrypted_fields__:
                if name not in instance.__dict__.get(_PENDING, ()):
                    EncryptedField.__set__(
                        type(instance).__encrypted_fields__[name], instance, None
                    )
        pending: set[str] | None = instance.__dict__.get(_PENDING)
        if not pending:
            continue
        crypto = crypto_of(session)
        keys = crypto.keys(session)
        version = instance.current_key_version(keys)
        plain = instance.__dict__[_PLAIN]
        fields = type(instance).__encrypted_fields__
        for name in sorted(pending):
            value = plain[name][1]
            blob = encrypt_value(keys, instance, name, value, version)
            setattr(instance, fields[name].column_attr, blob)
            plain[name] = (blob, value)
        changed = set(pending)
        pending.clear()
        instance.after_encrypt(session, crypto, changed)
