"""The gateway's provider-key vault: named provider keys, encrypted at rest under one master key.

Clients of the gateway never hold a provider's key: the gateway does, in this file. ``Vault`` adds,
lists, removes and reads keys and re-encrypts them under a new master key; ``VaultCredentials``
(``gateway.vault_credentials``) hands them to the engine; ``gtl keys`` (``gateway.keys_cli``) is
the command line. docs/vault.md is the operator's guide.

The file (JSON, UTF-8; format version 1)::

    {
      "format": "gtl-nb-vault",
      "version": 1,
      "key_id": "5f0c8e2a91d4b7c3",          # names the master key; derived from it, reveals nothing
      "generation": 7,                       # +1 on every write; a running gateway never goes back
      "keys": {
        "team-openai": {
          "deployment": "openai",            # the only deployment that may use it; null: any
          "fingerprint": "3f2a9c1d",         # first 8 hex digits of SHA-256 of the secret
          "created": "2025-01-02T03:04:05Z",
          "rotated": null,                   # when the secret was last replaced
          "nonce": "<base64 of 12 random bytes>",
          "ciphertext": "<base64: AES-256-GCM of the secret, 16-byte tag appended>"
        }
      },
      "mac": "<base64 of HMAC-SHA256 over the canonical JSON of everything above>"
    }

Cryptography (``cryptography``'s AESGCM and HKDF): the 32-byte master key is never used directly;
HKDF-SHA256 derives three keys from it — one encrypts the records, one authenticates the file, one
makes the key id. Each record is AES-256-GCM with a fresh random 96-bit nonce (every record is
encrypted again on every write) and, as associated data, the canonical JSON of
``["gtl-nb-vault", 1, name, deployment, fingerprint, created, rotated]``: a ciphertext moved to
another name, or a record whose metadata was edited, fails to decrypt. The file-wide ``mac`` covers
the set of records and the generation, so a record deleted, added or copied in from an older file
is noticed too. Only base64 in its canonical form is accepted, so no byte of the file can change
without an error. What no file format can notice is the whole file replaced by an older copy; a
running gateway refuses a lower ``generation`` than the one it has loaded.

The master key is 32 random bytes in (URL-safe) base64, from an environment variable
(``GTL_NB_VAULT_KEY`` by default) or a file only its owner may read; never from the configuration
file (``gateway.vault_master`` loads it and derives the keys; this module re-exports its names).
Writes take an exclusive lock (``<vault>.lock``), write a private temporary file in the same
directory, ``fsync`` it and ``os.replace`` it over the vault, so a crash leaves the old vault or
the new one, never half of either.

Every failure is a ``ConfigurationError`` naming the file and the problem. No message, ``repr`` or
log line ever contains a secret or a master key: the records' plaintexts exist only in ``VaultEntry``
objects, whose ``repr`` shows the metadata.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag

from gtl_nb.engine.config import clean_credential
from gtl_nb.gateway.vault_master import (
    DEFAULT_MASTER_KEY_ENV,
    MasterKey,
    MasterKeySource,
    file_stamp,
    generate_master_key,
)
from gtl_nb.gateway.vault_master import MASTER_KEY_BYTES as MASTER_KEY_BYTES
from gtl_nb.log import get_logger, redact
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.providers.limits import nesting_exceeds

__all__ = [
    "DEFAULT_MASTER_KEY_ENV",
    "FORMAT",
    "VERSION",
    "KeyInfo",
    "MasterKey",
    "MasterKeySource",
    "Vault",
    "VaultEntry",
    "VaultSnapshot",
    "check_key_name",
    "file_stamp",
    "fingerprint",
    "generate_master_key",
    "read_snapshot",
    "read_vault_file",
]

log = get_logger("gateway.vault")

FORMAT = "gtl-nb-vault"
VERSION = 1
NONCE_BYTES = 12
MAX_VAULT_BYTES = 8 * 1024 * 1024  # thousands of keys fit; anything larger is not a vault
MAX_SECRET_CHARS = 16 * 1024
MAX_NAME_CHARS = 64
MAX_DEPLOYMENT_CHARS = 128
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_ENVELOPE_FIELDS = frozenset({"format", "version", "key_id", "generation", "keys", "mac"})
_RECORD_FIELDS = frozenset({"deployment", "fingerprint", "created", "rotated", "nonce", "ciphertext"})
_ADVICE_RESTORE = "restore it from a backup"


# ----------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class KeyInfo:
    """What ``gtl keys list`` shows of a stored key: everything but the secret."""

    name: str
    deployment: str | None
    """The only deployment that may use the key (``None``: any)."""
    fingerprint: str
    """The first 8 hex digits of the secret's SHA-256 (``printf %s "$KEY" | sha256sum``)."""
    created: str
    rotated: str | None = None
    """When the secret was last replaced (``gtl keys add --replace``), ISO 8601 UTC."""


@dataclass(frozen=True)
class VaultEntry:
    """A stored key with its secret. The ``repr`` shows the metadata only."""

    info: KeyInfo
    secret: str = field(repr=False)


@dataclass(frozen=True)
class VaultSnapshot:
    """A verified, decrypted vault: what ``read_snapshot`` returns and ``Vault`` writes."""

    generation: int = 0
    key_id: str | None = None
    entries: Mapping[str, VaultEntry] = field(default_factory=dict)

    def infos(self) -> tuple[KeyInfo, ...]:
        return tuple(self.entries[name].info for name in sorted(self.entries))


def fingerprint(secret: str) -> str:
    """The first 8 hex digits of the SHA-256 of ``secret``: enough to tell keys apart, far too little to find one."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]


def check_key_name(name: str, what: str = "key name") -> str:
    """``name`` when it can name a stored key (1-64 letters, digits, ``.``, ``_``, ``-``, starting with
    a letter or digit), else a ``ConfigurationError``. A name that looks like a credential is refused
    without being quoted: the secret is read from standard input, never from the command line."""
    if redact(name) != name:
        raise ConfigurationError(
            f"that {what} looks like a provider key itself; name the key (e.g. team-openai) and give the secret "
            "on standard input or at the prompt, never on the command line"
        )
    if not name or len(name) > MAX_NAME_CHARS or not set(name) <= _NAME_CHARS or not name[0].isalnum():
        shown = repr(name) if len(name) <= MAX_NAME_CHARS else f"of {len(name)} characters"
        raise ConfigurationError(
            f"{what} {shown} is not allowed: use 1 to {MAX_NAME_CHARS} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_deployment(deployment: str | None) -> str | None:
    if deployment is None:
        return None
    if not deployment or len(deployment) > MAX_DEPLOYMENT_CHARS or not deployment.isprintable():
        raise ConfigurationError(f"a deployment name must be 1 to {MAX_DEPLOYMENT_CHARS} printable characters")
    return deployment


def _record_aad(name: str, info: KeyInfo) -> bytes:
    return _canonical([FORMAT, VERSION, name, info.deployment, info.fingerprint, info.created, info.rotated])


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, path: Path) -> bytes:
    """Strict base64: the canonical form only, so no character of the file can change unnoticed."""
    try:
        data = base64.b64decode(text, validate=True) if isinstance(text, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None or _b64(data) != text:
        raise _damaged(path, f"{what} is not valid base64")
    return data


# ----------------------------------------------------------------------------------------------
# Reading and writing the file


def read_snapshot(raw: bytes | None, master: MasterKey, path: Path) -> VaultSnapshot:
    """The vault in ``raw`` (the file's bytes; ``None``: no file yet, an empty vault), verified and
    decrypted with ``master``; a ``ConfigurationError`` naming ``path`` and what is wrong otherwise."""
    if raw is None:
        return VaultSnapshot()
    envelope = _parse_envelope(raw, path)
    if envelope["key_id"] != master.key_id:
        raise ConfigurationError(
            f"the vault {path} was written with the master key whose id is {envelope['key_id']}, but "
            f"{master.source} has id {master.key_id}: use the key the vault was written with "
            "(after gtl keys rotate, the new one)"
        )
    entries: dict[str, VaultEntry] = {}
    for name, record in envelope["keys"].items():
        info = KeyInfo(name, record["deployment"], record["fingerprint"], record["created"], record["rotated"])
        nonce = _unb64(record["nonce"], f"the nonce of key {name!r}", path)
        ciphertext = _unb64(record["ciphertext"], f"the ciphertext of key {name!r}", path)
        if len(nonce) != NONCE_BYTES:
            raise _damaged(path, f"the nonce of key {name!r} is not {NONCE_BYTES} bytes")
        try:
            secret = master._record_key.decrypt(nonce, ciphertext, _record_aad(name, info)).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise ConfigurationError(
                f"the vault {path} is damaged or was tampered with: key {name!r} fails its authentication "
                f"check (its record was altered, or moved from another name); {_ADVICE_RESTORE}"
            ) from None
        entries[name] = VaultEntry(info, secret)
    body = {key: value for key, value in envelope.items() if key != "mac"}
    mac = _unb64(envelope["mac"], "the mac", path)
    if not hmac.compare_digest(mac, hmac.new(master._mac_key, _canonical(body), hashlib.sha256).digest()):
        raise ConfigurationError(
            f"the vault {path} was changed outside gtl keys: its records or generation do not match its "
            f"authentication code (a key removed, added or copied from another file?); {_ADVICE_RESTORE}"
        )
    return VaultSnapshot(generation=envelope["generation"], key_id=envelope["key_id"], entries=entries)


def _damaged(path: Path, problem: str) -> ConfigurationError:
    return ConfigurationError(f"the vault {path} is damaged or truncated ({problem}); {_ADVICE_RESTORE}")


def _parse_envelope(raw: bytes, path: Path) -> dict[str, Any]:
    """The file's JSON, its structure checked field by field (so a bad file is one clear error)."""
    if len(raw) > MAX_VAULT_BYTES:
        raise _damaged(path, f"larger than {MAX_VAULT_BYTES} bytes")
    if nesting_exceeds(raw, 8):  # the format nests 3 levels; never hand a deep document to the parser
        raise _damaged(path, "not a vault file: nested too deeply")
    try:
        envelope = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _damaged(path, "not valid JSON") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise ConfigurationError(f"{path} is not a gtl_nb vault file")
    version = envelope.get("version")
    if type(version) is int and version > VERSION:
        raise ConfigurationError(
            f"the vault {path} has format version {version}, written by a newer gtl_nb; this one reads "
            f"version {VERSION}: upgrade gtl_nb"
        )
    if version != VERSION or type(version) is not int or set(envelope) != _ENVELOPE_FIELDS:
        raise _damaged(path, "its fields are not those of a vault file")
    key_id, generation, keys = envelope["key_id"], envelope["generation"], envelope["keys"]
    if not isinstance(key_id, str) or type(generation) is not int or generation < 0 or not isinstance(keys, dict):
        raise _damaged(path, "key_id, generation or keys has the wrong type")
    for name, record in keys.items():
        try:
            check_key_name(name)
        except ConfigurationError:
            raise _damaged(path, "a record has a name that is not allowed") from None
        if not isinstance(record, dict) or set(record) != _RECORD_FIELDS:
            raise _damaged(path, f"the record of key {name!r} does not have the fields of a vault record")
        optional = (record["deployment"], record["rotated"])
        required = (record["fingerprint"], record["created"], record["nonce"], record["ciphertext"])
        if not all(isinstance(v, str) for v in required) or not all(v is None or isinstance(v, str) for v in optional):
            raise _damaged(path, f"a field of key {name!r} has the wrong type")
    return envelope


def _encode(snapshot: VaultSnapshot, master: MasterKey) -> bytes:
    """``snapshot`` as the file's bytes, every record encrypted again with a fresh nonce."""
    keys: dict[str, Any] = {}
    for name in sorted(snapshot.entries):
        entry = snapshot.entries[name]
        info = entry.info
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = master._record_key.encrypt(nonce, entry.secret.encode("utf-8"), _record_aad(name, info))
        keys[name] = {
            "deployment": info.deployment,
            "fingerprint": info.fingerprint,
            "created": info.created,
            "rotated": info.rotated,
            "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext),
        }
    body = {"format": FORMAT, "version": VERSION, "key_id": master.key_id, "generation": snapshot.generation}
    body["keys"] = keys
    mac = hmac.new(master._mac_key, _canonical(body), hashlib.sha256).digest()
    return (json.dumps({**body, "mac": _b64(mac)}, indent=2) + "\n").encode("utf-8")


def read_vault_file(path: Path) -> bytes | None:
    """The vault file's bytes (at most one more than the limit), or ``None`` when there is none yet."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_VAULT_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigurationError(f"the vault path {path} is a directory") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read the vault {path} ({exc.strerror or exc})") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: a private temporary file beside it, flushed to
    disk, then renamed over it (a crash leaves the old file or the new one, never a mix)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), 0o600)  # mkstemp makes it 0600; say so in case of odd platforms
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open a directory, and needs no such step."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold ``<vault>.lock`` exclusively: writers take turns, so no change is lost to another's."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot open the vault's lock file {lock_path} ({exc.strerror or exc})") from None
    try:
        if os.name == "posix":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        else:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# The vault


class Vault:
    """The vault file at ``path``, read and written with ``master``.

    Every operation reads the file afresh and verifies all of it; changes happen under the vault's
    lock and replace the file atomically. ``wall_clock`` (unix seconds) stamps ``created`` and
    ``rotated``.
    """

    def __init__(
        self, path: str | os.PathLike[str], master: MasterKey, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path).expanduser()
        self.master = master
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r}, key_id={self.master.key_id!r})"

    def snapshot(self) -> VaultSnapshot:
        """Everything in the vault, verified and decrypted (for the resolver)."""
        return read_snapshot(read_vault_file(self.path), self.master, self.path)

    def list(self) -> tuple[KeyInfo, ...]:
        """The stored keys' names and metadata, sorted by name; never a secret."""
        return self.snapshot().infos()

    def get(self, name: str) -> str:
        """The secret stored as ``name`` (for the credential resolver only)."""
        return self._entry(self.snapshot(), name).secret

    def add(self, name: str, secret: str, deployment: str | None = None, *, replace: bool = False) -> KeyInfo:
        """Store ``secret`` as ``name``, optionally only for ``deployment``.

        An existing name is an error unless ``replace``: then the secret is replaced, ``rotated`` is
        stamped and ``created`` kept (and the deployment too, unless a new one is given). Whitespace
        around the secret is removed; a character that cannot go in an HTTP header is refused.
        """
        check_key_name(name)
        deployment = _check_deployment(deployment)
        secret = _check_secret(secret, name)
        with self._changing() as (_snapshot, entries):
            old = entries.get(name)
            if old is not None and not replace:
                raise ConfigurationError(
                    f"the vault {self.path} already has a key named {name!r}; replace its secret (gtl keys add "
                    "--replace), or remove it first"
                )
            now = _timestamp(self._wall_clock())
            if old is None:
                info = KeyInfo(name, deployment, fingerprint(secret), now)
            else:
                info = KeyInfo(name, deployment or old.info.deployment, fingerprint(secret), old.info.created, now)
            entries[name] = VaultEntry(info, secret)
        log.info(
            "vault %s: %s key %r (fingerprint %s)", self.path, "replaced" if old else "added", name, info.fingerprint
        )
        return info

    def remove(self, name: str) -> KeyInfo:
        """Remove the key ``name``; its metadata is returned."""
        with self._changing() as (snapshot, entries):
            removed = self._entry(snapshot, name).info
            del entries[name]
        log.info("vault %s: removed key %r", self.path, name)
        return removed

    def rotate_master(self, new_master: MasterKey) -> int:
        """Encrypt every key again under ``new_master`` (this vault's key must still open the file);
        from then on this object uses ``new_master``. Returns how many keys there are."""
        if new_master.key_id == self.master.key_id:
            raise ConfigurationError(f"{new_master.source} is the vault's current master key; give a new one")
        with _exclusive_lock(self._directory()):
            snapshot = read_snapshot(read_vault_file(self.path), self.master, self.path)
            rotated = VaultSnapshot(snapshot.generation + 1, new_master.key_id, snapshot.entries)
            self._write(_encode(rotated, new_master))
        log.info("vault %s: master key rotated from id %s to id %s", self.path, self.master.key_id, new_master.key_id)
        self.master = new_master
        return len(snapshot.entries)

    # -- helpers --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _changing(self) -> Iterator[tuple[VaultSnapshot, dict[str, VaultEntry]]]:
        """Under the lock: the current snapshot and a copy of its entries to change; written on success."""
        with _exclusive_lock(self._directory()):
            snapshot = read_snapshot(read_vault_file(self.path), self.master, self.path)
            entries = dict(snapshot.entries)
            yield snapshot, entries
            self._write(_encode(VaultSnapshot(snapshot.generation + 1, self.master.key_id, entries), self.master))

    def _directory(self) -> Path:
        """Make the vault's directory (private) if needed; the path of the vault."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the vault's directory {self.path.parent} ({exc.strerror})"
            ) from None
        if self.path.is_dir():
            raise ConfigurationError(f"the vault path {self.path} is a directory")
        return self.path

    def _write(self, data: bytes) -> None:
        try:
            _write_atomically(self.path, data)
        except OSError as exc:
            raise ConfigurationError(f"cannot write the vault {self.path} ({exc.strerror or exc})") from None

    def _entry(self, snapshot: VaultSnapshot, name: str) -> VaultEntry:
        entry = snapshot.entries.get(name)
        if entry is None:
            stored = ", ".join(sorted(snapshot.entries)) or "none"
            raise ConfigurationError(f"the vault {self.path} has no key named {name!r} (stored: {stored})")
        return entry


def _check_secret(secret: str, name: str) -> str:
    if not isinstance(secret, str):
        raise ConfigurationError(f"the secret for key {name!r} must be text")
    secret = secret.strip()
    if not secret:
        raise ConfigurationError(f"the secret for key {name!r} is empty")
    if len(secret) > MAX_SECRET_CHARS:
        raise ConfigurationError(f"the secret for key {name!r} is longer than {MAX_SECRET_CHARS} characters")
    return clean_credential(secret, f"the secret for key {name!r}", warn=False)


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
