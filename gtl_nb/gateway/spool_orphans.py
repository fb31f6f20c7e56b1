"""Spool files a replica finds in its data directory that are not its own: rows orphaned by a URL that
changed.

The PostgreSQL ledger's and audit log's default spools are named after a digest of the database's host,
port, name and user (``postgres-spool-<digest>.sqlite3``, ``audit-spool-<digest>.jsonl``). A replica
whose ``[ledger] url`` (or ``[gateway.audit] url``) was mistyped spools under the typo's digest; once the
URL is fixed, its next run spools — and drains — under another name, and the rows of the first stay
where they are, out of ``gtl usage`` and of the budgets rebuilt from the ledger. At start the gateway
looks for such files holding rows and warns, naming each file, how many writes or records wait there
and the command that writes them into the configured database (``gtl ledger drain-spool FILE``,
``gtl audit drain-spool FILE``) — exactly once, as an ordinary drain is.

Another gateway of the same host and data directory with another database would own such a file too:
the warning says so. Counting reads the files, never changes them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ForeignSpool", "foreign_spools", "own_spools", "spool_warnings"]

LEDGER_PATTERN = "postgres-spool-*.sqlite3"
AUDIT_PATTERN = "audit-spool-*.jsonl"
_DRAINING = ".draining"  # an audit spool a drain took (``<spool>.<time>.<random>.draining``)


@dataclass(frozen=True)
class ForeignSpool:
    """A spool file of another database, and what waits in it."""

    path: Path
    kind: str  # "ledger" or "audit"
    count: int


def ledger_writes(path: Path) -> int:
    """How many writes wait in the ledger spool ``path`` (read-only; 0 for a file that is not one)."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def audit_records(path: Path) -> int:
    """How many records wait in the audit spool ``path`` and the drains of it left behind."""
    count = 0
    for file in (path, *path.parent.glob(f"{path.name}.*{_DRAINING}")):
        with contextlib.suppress(OSError):
            count += sum(1 for line in file.read_bytes().splitlines() if line.strip())
    return count


def own_spools(engine: Any) -> set[Path]:
    """The spool files the engine's ledger and the audit log it writes use (none for other stores)."""
    from gtl_nb.gateway.audit import audit_log_of

    found = set()
    ledger = getattr(getattr(engine, "stores", None), "ledger", None)
    audit = audit_log_of(engine)
    for part in (ledger, getattr(ledger, "inner", None), *getattr(audit, "_sinks", ())):
        path = getattr(part, "spool_path", None)
        if isinstance(path, Path):
            with contextlib.suppress(OSError):
                found.add(path.resolve())
    return found


def foreign_spools(folder: Path, own: set[Path]) -> list[ForeignSpool]:
    """The spool files of ``folder`` not in ``own`` that hold anything, by name."""
    found = []
    for pattern, kind, count in ((LEDGER_PATTERN, "ledger", ledger_writes), (AUDIT_PATTERN, "audit", audit_records)):
        for path in sorted(folder.glob(pattern)):
            with contextlib.suppress(OSError):
                if path.resolve() in own:
                    continue
            waiting = count(path)
            if waiting:
                found.append(ForeignSpool(path, kind, waiting))
    return found


def spool_warnings(engine: Any, *, config: str | None = None, folder: Path | None = None) -> list[str]:
    """The start's warnings for the spools of ``folder`` (the data directory) the engine does not use."""
    from gtl_nb.engine.ledger import default_ledger_path

    folder = default_ledger_path().parent if folder is None else folder
    if not folder.is_dir():
        return []
    given = f"--config {config} " if config else ""
    warnings = []
    for spool in foreign_spools(folder, own_spools(engine)):
        what, table = (
            ("write(s) of ledger rows", "[ledger] url")
            if spool.kind == "ledger"
            else (
                "audit record(s)",
                "[gateway.audit] url",
            )
        )
        warnings.append(
            f"{spool.path} holds {spool.count} {what} spooled for another database than {table} names (a spool "
            f"is named after the database's host, port, name and user: the URL changed since, or another "
            f"gateway of this host uses that database); unless that gateway still runs, write them into the "
            f"configured database: gtl {given}{spool.kind} drain-spool {spool.path}"
        )
    return warnings
