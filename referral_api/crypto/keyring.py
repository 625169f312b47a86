"""Root-key providers. The root key only ever wraps other keys; it never touches data.

`LocalKeyring` keeps versioned 256-bit root keys in a JSON file outside the repository
(mode 0600). `InMemoryKeyring` is for tests. Both implement `KeyProvider`, which also admits
HSM (PKCS#11) and Vault-transit style providers: wrap/unwrap with associated data, current
version, rotate, destroy, describe.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from referral_api.exceptions import ConfigurationError

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12


class KeyUnavailable(Exception):
    """A key version is unknown or was destroyed (no key material in the message)."""


@dataclass(frozen=True, slots=True)
class KeyringStatus:
    provider: str
    current_version: int
    versions: tuple[int, ...]
    destroyed: tuple[int, ...]


class KeyProvider(Protocol):
    def current_version(self) -> int: ...

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes: ...

    def rotate(self) -> int: ...

    def destroy(self, version: int) -> None: ...

    def describe(self) -> KeyringStatus: ...


class _VersionedAesGcmKeyring:
    """Wrapped format: 4-byte big-endian root version ‖ 12-byte nonce ‖ AES-GCM(key)."""

    provider_name = "abstract"

    def __init__(self, keys: dict[int, bytes], current: int, destroyed: set[int]) -> None:
        self._keys = dict(keys)
        self._current = current
        self._destroyed = set(destroyed)

    def current_version(self) -> int:
        return self._current

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> bytes:
        version = self._current
        nonce = os.urandom(NONCE_BYTES)
        header = struct.pack(">I", version)
        sealed = AESGCM(self._keys[version]).encrypt(nonce, plaintext_key, header + associated_data)
        return header + nonce + sealed

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        if len(wrapped) < 4 + NONCE_BYTES + 16:
            raise KeyUnavailable("wrapped key is truncated")
        (version,) = struct.unpack(">I", wrapped[:4])
        key = self._keys.get(version)
        if key is None:
            raise KeyUnavailable(f"root key version {version} is not available")
        nonce = wrapped[4 : 4 + NONCE_BYTES]
        try:
            return AESGCM(key).decrypt(
                nonce, wrapped[4 + NONCE_BYTES :], wrapped[:4] + associated_data
            )
        except InvalidTag:
            # Callers handle one exception for "this key cannot be had", whatever the cause.
            raise KeyUnavailable("a wrapped key did not authenticate") from None

    def rotate(self) -> int:
        new_version = max([*self._keys, *self._destroyed, 0]) + 1
        self._keys[new_version] = AESGCM.generate_key(bit_length=256)
        self._current = new_version
        self._persist()
        return new_version

    def destroy(self, version: int) -> None:
        if version == self._current:
            raise ValueError("the current root key version cannot be destroyed; rotate first")
        self._keys.pop(version, None)
        self._destroyed.add(version)
        self._persist()

    def describe(self) -> KeyringStatus:
        return KeyringStatus(
            provider=self.provider_name,
            current_version=self._current,
            versions=tuple(sorted(self._keys)),
            destroyed=tuple(sorted(self._destroyed)),
        )

    def snapshot(self) -> KeyringSnapshot:
        """A read-only view of the keyring as it is now, for one batch of bulk work (root
        rotation): its current version cannot change under the batch, so every key the
        batch wraps names the version the batch records."""
        return KeyringSnapshot(self._keys, self._current, self._destroyed)

    def _persist(self) -> None:
        """In-memory keyrings keep nothing."""


class KeyringSnapshot(_VersionedAesGcmKeyring):
    """Same wrapped format and associated data as the keyring it was taken from; never
    rotates, destroys or rereads anything."""

    provider_name = "snapshot"

    def rotate(self) -> int:
        raise TypeError("a keyring snapshot cannot rotate; rotate the keyring itself")

    def destroy(self, version: int) -> None:
        raise TypeError("a keyring snapshot cannot destroy; use the keyring itself")


class InMemoryKeyring(_VersionedAesGcmKeyring):
    provider_name = "in-memory"

    @classmethod
    def generate(cls) -> InMemoryKeyring:
        return cls({1: AESGCM.generate_key(bit_length=256)}, current=1, destroyed=set())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`'s companion lock file, across processes (flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # releases the lock


class LocalKeyring(_VersionedAesGcmKeyring):
    provider_name = "local-file"

    def __init__(
        self, path: Path, keys: dict[int, bytes], current: int, destroyed: set[int]
    ) -> None:
        super().__init__(keys, current, destroyed)
        self.path = path
        self._signature = self._file_signature()
        # A reload replaces three attributes; a snapshot must not see half of it.
        self._reloading = threading.Lock()

    def _file_signature(self) -> tuple[int, int, int]:
        # mtime alone can miss a rewrite within one timestamp tick on coarse filesystems;
        # every rewrite is a new file (os.replace), so the inode changes too.
        try:
            info = self.path.stat()
        except OSError:
            return (0, 0, 0)
        return (info.st_mtime_ns, info.st_ino, info.st_size)

    def _reload(self) -> None:
        fresh = LocalKeyring.load(self.path, create_if_missing=False)
        with self._reloading:
            self._keys, self._current, self._destroyed = (
                fresh._keys,
                fresh._current,
                fresh._destroyed,
            )
            self._signature = fresh._signature

    def _reload_if_changed(self) -> None:
        """Another process (the `keys` CLI) may have rotated or destroyed a version."""
        if self._file_signature() != self._signature:
            self._reload()

    def snapshot(self) -> KeyringSnapshot:
        """One stat() of the file (reloading if it changed), then a read-only view for a
        batch: no per-key stat(), and a current version that stays put for the batch.

        Single operations (wrap, unwrap, current_version, describe) keep checking the file
        every time, so a server sees another process's rotation or destruction at once
        (it calls them rarely: unwrapped keys are cached); bulk work takes a snapshot per
        batch instead of paying three stat() calls per key."""
        self._reload_if_changed()
        with self._reloading:
            return KeyringSnapshot(self._keys, self._current, self._destroyed)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise read-modify-write of the file across processes: a rotation from a
        stale view would otherwise overwrite another process's new root version (and with
        it every key wrapped under that version)."""
        with _file_lock(self.path):
            if self.path.exists():
                self._reload()
            yield

    def rotate(self) -> int:
        with self._exclusive():
            return super().rotate()

    def destroy(self, version: int) -> None:
        with self._exclusive():
            super().destroy(version)

    def describe(self) -> KeyringStatus:
        self._reload_if_changed()
        return super().describe()

    def current_version(self) -> int:
        self._reload_if_changed()
        return self._current

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> bytes:
        self._reload_if_changed()
        return super().wrap(plaintext_key, associated_data)

    def unwrap(self, wrapped: bytes, associated_data: bytes) -> bytes:
        self._reload_if_changed()
        return super().unwrap(wrapped, associated_data)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, create_if_missing: bool) -> LocalKeyring:
        file = Path(path)
        if not file.exists():
            if not create_if_missing:
                raise ConfigurationError("The keyring file does not exist.")
            created = cls._create(file)
            if created is not None:
                return created
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            content = file.read_bytes()
        except OSError:
            # A directory (a volume mounted at the file's path), a file the service user may
            # not read. Not chained, like the malformed file below.
            raise ConfigurationError("The keyring file cannot be read.") from None
        if mode & 0o077:
            raise ConfigurationError(
                "The keyring file must not be readable by group or others (chmod 600)."
            )
        try:
            document: dict[str, Any] = json.loads(content.decode("utf-8"))
            keys = {int(v): base64.b64decode(k) for v, k in document["keys"].items()}
            current = int(document["current"])
            destroyed = {int(v) for v in document.get("destroyed", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            # Not chained: the parse error quotes the value it choked on, which can be key
            # material in a hand-edited file.
            raise ConfigurationError("The keyring file is malformed.") from None
        if current not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
            raise ConfigurationError("The keyring file is malformed.")
        return cls(file, keys, current, destroyed)

    @classmethod
    def create(cls, file: Path) -> LocalKeyring:
        """A new keyring at `file` with one root key (`referral-api create-keyring`, for a
        deployment's first start); FileExistsError when one is there, never replacing it:
        the data wrapped under the keys in it would be lost."""
        created = cls._new(file)
        if created is None:
            raise FileExistsError(str(file))
        return created

    @classmethod
    def _new(cls, file: Path) -> LocalKeyring | None:
        """A new keyring at `file`, or None when another process created one first (seen
        under the lock): two first starts at once (workers, `make run`'s migrate and serve)
        would otherwise each write a root key, and the data wrapped under the one replaced
        would be lost."""
        with _file_lock(file):
            if file.exists():
                return None
            keyring = cls(file, {1: AESGCM.generate_key(bit_length=256)}, 1, set())
            keyring._persist()
        return keyring

    @classmethod
    def _create(cls, file: Path) -> LocalKeyring | None:
        """Development's keyring, made on first start (`_new`), with a loud warning."""
        keyring = cls._new(file)
        if keyring is None:
            return None
        log.warning(
            "DEVELOPMENT ONLY: created a new root keyring at %s. Data encrypted under it "
            "is lost if this file is lost. Use a managed key store in production.",
            file,
        )
        return keyring

    def _persist(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "format": 1,
            "current": self._current,
            "keys": {str(v): base64.b64encode(k).decode("ascii") for v, k in self._keys.items()},
            "destroyed": sorted(self._destroyed),
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self._signature = self._file_signature()
