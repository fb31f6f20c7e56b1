"""The vault's master key: 32 random bytes in (URL-safe) base64, read from an environment variable
(``GTL_NB_VAULT_KEY`` by default) or from a file only its owner may read, never from the configuration
file; ``gtl keys genkey`` makes one (``generate_master_key``).

``MasterKey`` never uses the key directly: HKDF-SHA256 derives from it the key that encrypts the
records, the key that authenticates the file and the key id (``gateway.vault`` uses them). Its
``repr`` shows the key id and where the key came from, never the key, and it refuses to be pickled.
``MasterKeySource`` says where to read the key and checks a key file's permissions on the open file.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import looks_like_variable_name

__all__ = [
    "DEFAULT_MASTER_KEY_ENV",
    "MASTER_KEY_BYTES",
    "MasterKey",
    "MasterKeySource",
    "file_stamp",
    "generate_master_key",
]

DEFAULT_MASTER_KEY_ENV = "GTL_NB_VAULT_KEY"
MASTER_KEY_BYTES = 32
_MAX_KEY_FILE_BYTES = 4096


def generate_master_key() -> str:
    """A new random master key, as the URL-safe base64 text that ``GTL_NB_VAULT_KEY`` or a key file holds."""
    return base64.urlsafe_b64encode(secrets.token_bytes(MASTER_KEY_BYTES)).decode("ascii")


class MasterKey:
    """The vault's master key and the keys derived from it. Its ``repr`` shows the key id and where
    the key came from, never the key. The derived keys (``_record_key``, ``_mac_key``) are for
    ``gateway.vault``, which encrypts and authenticates the file with them, alone."""

    __slots__ = ("_mac_key", "_record_key", "key_id", "source")

    def __init__(self, material: bytes, source: str = "the master key") -> None:
        if len(material) != MASTER_KEY_BYTES:
            raise ConfigurationError(f"{source} is not a vault master key: it must be {MASTER_KEY_BYTES} bytes")
        self.source = source
        """Where the key came from (``$GTL_NB_VAULT_KEY``, ``master key file /etc/…``), for messages."""
        self._record_key = AESGCM(_derive(material, b"records"))
        self._mac_key = _derive(material, b"manifest")
        self.key_id = _derive(material, b"key id")[:8].hex()
        """16 hex digits naming this key in the vault file; derived one-way, so it reveals nothing."""

    @classmethod
    def from_text(cls, text: str, source: str) -> MasterKey:
        """A key written as base64 (URL-safe or standard, padding optional), or a ``ConfigurationError``
        naming ``source`` (never the text)."""
        cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
        try:
            material = base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            material = b""
        if len(material) != MASTER_KEY_BYTES:
            raise ConfigurationError(
                f"{source} is not a vault master key: it must be {MASTER_KEY_BYTES} bytes in base64 "
                "(gtl keys genkey makes one)"
            )
        return cls(material, source)

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r}, source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # a pickle would carry the key: refuse rather than leak it
        raise TypeError("a vault master key cannot be pickled")


def _derive(material: bytes, purpose: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gtl-nb vault v1 " + purpose)
    return hkdf.derive(material)


@dataclass(frozen=True)
class MasterKeySource:
    """Where the master key is read from: a file (when ``file`` is set) or the environment variable ``env``.

    A file must be readable by its owner only (mode 0600 or 0400); anything else is refused with the
    ``chmod`` to run. ``stamp()`` changes when the file does, so a running gateway can read a
    replaced key file again (the environment of a running process does not change).
    """

    env: str = DEFAULT_MASTER_KEY_ENV
    file: Path | None = None
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)
    """The environment to read ``env`` from (``None``: the live ``os.environ``)."""
    named_by: str = field(default="master_key_env", compare=False)
    """What the user wrote ``env`` in (``--key-env``, ``master_key_env``): a message that cannot quote the
    name says where it was given."""

    def describe(self) -> str:
        """Where the key comes from, for a message: a variable is named only when its name has a variable
        name's usual shape — a key pasted where its variable's name belongs is never quoted."""
        if self.file is not None:
            return f"the master key file {self.file}"
        return f"${self.env}" if looks_like_variable_name(self.env) else f"the variable {self.named_by} names"

    def load(self) -> MasterKey:
        """The master key, or a ``ConfigurationError`` saying what to set (never quoting a key)."""
        if self.file is not None:
            return MasterKey.from_text(_read_key_file(self.file), self.describe())
        environ = os.environ if self.environ is None else self.environ
        text = environ.get(self.env)
        if not text:
            unquoted = (
                "" if looks_like_variable_name(self.env) else " (is the key itself there, not its variable's name?)"
            )
            raise ConfigurationError(
                f"no vault master key: {self.describe()} is not set{unquoted}; set it to a key from gtl keys "
                "genkey, or name a key file (master_key_file in [gateway.vault], --key-file)"
            )
        return MasterKey.from_text(text, self.describe())

    def stamp(self) -> tuple[int, ...] | None:
        """Changes when the key file is replaced or rewritten (``None`` for the environment)."""
        return file_stamp(self.file) if self.file is not None else None


def _read_key_file(path: Path) -> str:
    """The key file's text, after checking (on the open file, so it cannot be swapped in between) that
    it is a regular file nobody but its owner may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hang the gateway
    except OSError as exc:
        raise ConfigurationError(f"cannot read the vault master key file {path} ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigurationError(f"the vault master key file {path} is not a regular file")
    if os.name == "posix" and info.st_mode & 0o077:
        os.close(fd)
        raise ConfigurationError(
            f"the vault master key file {path} can be read or written by other users "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); make it private to the gateway's user: chmod 600 {path}"
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigurationError(f"cannot read the vault master key file {path} ({exc.strerror or exc})") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return ""  # not base64 either: from_text words the error


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """``(device, inode, size, mtime_ns)`` of ``path``, or ``None`` when it cannot be seen: what changes when
    the file is rewritten or replaced."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
