"""Store URLs: which implementation a ``backend`` setting (or the ledger's location) names.

* ``memory://`` — this process's memory (``"memory"`` is accepted too: the cache's older spelling);
* ``sqlite:///relative/path`` and ``sqlite:////absolute/path`` — a SQLite file, shared by the
  processes of one machine (the usual SQLAlchemy convention: the path follows the third slash);
* ``redis://`` and ``postgresql://`` are refused with a clear message: they come with scale-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["ACCEPTED", "StoreURL", "parse_store_url"]

ACCEPTED = "memory:// or sqlite:///path (sqlite:////absolute/path)"
_SCALE_OUT = ("redis", "rediss", "postgresql", "postgres")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: ``scheme`` is ``"memory"`` or ``"sqlite"``; ``path`` is the SQLite file."""

    scheme: str
    path: Path | None = None


def parse_store_url(url: object, *, where: str = "store") -> StoreURL:
    """Parse ``url``; a ``ConfigurationError`` prefixed with ``where`` names what is accepted."""
    if not isinstance(url, str):
        raise ConfigurationError(f"{where}: a store URL must be a string ({ACCEPTED}), got {url!r}")
    if url in ("memory", "memory://"):
        return StoreURL("memory")
    scheme, separator, rest = url.partition("://")
    base_scheme = scheme.split("+", 1)[0].lower()  # postgresql+psycopg://
    if separator and base_scheme in _SCALE_OUT:
        raise ConfigurationError(
            f"{where}: {base_scheme}:// stores come with scale-out and are not available yet; use {ACCEPTED}"
        )
    if not separator or scheme.lower() != "sqlite":
        shown = f"{scheme}://…" if separator else repr(url[:40])  # a URL may carry user:password@
        raise ConfigurationError(f"{where}: unknown store {shown}; use {ACCEPTED}")
    host, slash, path = rest.partition("/")
    if host or not slash or not path:
        raise ConfigurationError(
            f"{where}: {url!r} names no file; write sqlite:///relative/path or sqlite:////absolute/path"
        )
    return StoreURL("sqlite", Path(unquote(path)).expanduser())
