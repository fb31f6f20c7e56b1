"""The SQLite ledger's spool: the writes the file's write lock held back, kept beside the file, crash-safe.

A graceful stop writes everything queued (``engine.ledger_writer``); only a file another process keeps
locked past the stop's deadline (``retry_for``) can hold them back. Those writes are not dropped: the
writer appends them here — ``<ledger file>-spool.jsonl`` — and the next opening of the ledger
(``Ledger.__init__``, before crash recovery) writes them into the file and empties the spool. A running
writer whose commits the lock has held back for ``ledger_writer.BLOCKED_AFTER`` seconds appends its writes
here too, every commit window (so a crash loses no more than a window of them), and replays the spool
itself once the lock is free (``replay_spool(ledger, wait=False)``), learning the ids of the rows it spooled
still open from ``ledger_spool_replayed`` (``rows_of_lines``).

**The format cannot be half-read.** One line per write: the SHA-256 of the JSON that follows (64 hex
digits), a space, the JSON, a newline. A line without its newline (a write cut short) or whose digest
does not match is reported and skipped — copied to ``<spool>.damaged`` for whoever wants to look — and
never stops the ledger from opening.

**Nothing is dropped.** A line the file refuses for its own values (a constraint, a value SQLite cannot
bind, even with its text escaped) — or an outcome whose row was never written — is not applied and is
moved, as it was, to ``<ledger file>-spool-rejected.jsonl`` (``rejected_path``), with one error naming
how many and why; its id is taken out of ``ledger_spool_replayed``, so appending that file to the spool
once the cause is fixed applies it then. The spool is emptied only once its damaged and rejected lines
are safe in their files (written and synced): if they cannot be written there, the spool is left as it
is and the next opening tries again (the lines applied meanwhile are found applied). The file's own
trouble — locked, full, an I/O error, a corrupt database — is no line's fault: the whole replay is
undone and waits for the next opening. Each line holds the statement's parameters as the stopping
process computed them (its pid and process identity, so recovery judges a replayed ``started`` row by
its real writer):

* ``{"kind": "row", "id": …, "values": [...]}`` — a new row (``INSERT_FINISHED``'s parameters: started,
  or finished already);
* ``{"kind": "outcome", "id": …, "row": <row id> | null, "of": <the id of a spooled row> | null,
  "full": true | false, "values": [...]}`` — a row's outcome (``FINISH_UPDATE``'s parameters, or
  ``FINISH_STATUS_ONLY``'s when its details could not be cleaned), without the row id: that is ``row``
  (written before) or the id the replay gave the spooled row ``of``.

**Idempotent.** Every line has a random id, recorded in the table ``ledger_spool_replayed`` (with the
row id a ``row`` line got) in the very transaction that applies it; a line whose id is there already is
skipped. So a replay cut short by a crash (the transaction rolled back: none of it happened) or one
that committed but died before emptying the spool (every line is found applied) counts nothing twice.
Appending and replaying hold an exclusive ``flock`` on the spool (POSIX), so a process stopping while
another opens the ledger never loses a line between the read and the emptying.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gtl_nb.engine.ledger import (
    FINISH_STATUS_ONLY,
    FINISH_UPDATE,
    INSERT_FINISHED,
    clean_finish_fields,
    finish_values,
    finished_row_values,
    started_row_values,
    started_values,
)
from gtl_nb.engine.ledger_batch import Finish, Start
from gtl_nb.engine.sqlite_files import is_busy
from gtl_nb.log import get_logger

if TYPE_CHECKING:
    from gtl_nb.engine.ledger import Ledger

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; a spool is written and read by one process at a time there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "REJECTED_SUFFIX",
    "SPOOL_SUFFIX",
    "SpoolWriter",
    "read_spool",
    "rejected_path",
    "replay_spool",
    "rows_of_lines",
    "spool_path",
]

log = get_logger("engine.ledger")

SPOOL_SUFFIX = "-spool.jsonl"
REJECTED_SUFFIX = "-spool-rejected.jsonl"
_SHOWN_DAMAGED = 10  # damaged lines named one by one in the log; the rest are counted
# SQLite's primary result codes that say the statement or its values are wrong, not the file: a generic SQL
# error, a constraint, a type mismatch, misuse, a bad parameter index (as ``ledger_writer`` tells them apart)
_NOT_THE_FILE = frozenset({1, 19, 20, 21, 25})
KEEP_REPLAYED = 30 * 86400.0  # seconds the ids of replayed lines are kept (a copy of an old spool replays as nothing)
_REPLAYED = "CREATE TABLE IF NOT EXISTS ledger_spool_replayed (id TEXT PRIMARY KEY, row_id INTEGER, time REAL NOT NULL)"
_INSERT_COLUMNS = INSERT_FINISHED.count("?")
_FINISH_COLUMNS = FINISH_UPDATE.count("?") - 1  # without the row id
_STATUS_COLUMNS = FINISH_STATUS_ONLY.count("?") - 1


def spool_path(ledger_path: str | os.PathLike[str]) -> Path:
    """The spool of the ledger file at ``ledger_path``: beside it, its name plus ``-spool.jsonl``."""
    path = Path(ledger_path)
    return path.with_name(path.name + SPOOL_SUFFIX)


def rejected_path(ledger_path: str | os.PathLike[str]) -> Path:
    """Where a replay moves the spool lines the file refused (``<ledger file>-spool-rejected.jsonl``), in the
    spool's own format: appended to the spool, they are tried again at the next opening."""
    path = Path(ledger_path)
    return path.with_name(path.name + REJECTED_SUFFIX)


# ----------------------------------------------------------------------------------------------
# writing (the writer thread, at a stop past its deadline)


@dataclass
class SpoolWriter:
    """Turns queued writes into spool lines for one writer: remembers which handle each spooled
    start got as its id, so an outcome spooled later (another batch) names it."""

    path: Path
    hostname: str
    _spooled: dict[int, str] = field(default_factory=dict)  # handle -> id of its spooled row

    def lines(self, ops: Iterable[Start | Finish], rowids: Mapping[int, int]) -> tuple[list[dict[str, Any]], int]:
        """The lines of ``ops`` (``rowids``: handle -> row id of rows written ``started``), and how many
        outcomes have no row to finish (their start was lost: nothing can be written for them)."""
        lines: list[dict[str, Any]] = []
        orphans = 0
        for op in ops:
            if isinstance(op, Start):
                values = started_values(
                    op.when,
                    session_id=op.session_id,
                    user=op.user,
                    model=op.model,
                    hostname=self.hostname,
                    tenant=op.tenant,
                    key_id=op.key_id,
                    trace_id=op.trace_id,
                )
                end = op.finish
                if end is None:
                    row = started_row_values(values)
                else:
                    row = finished_row_values(values, end.status, end.when, _cleaned(end), end.fields.get("error_code"))
                line_id = secrets.token_hex(16)
                if end is None:
                    self._spooled[op.handle] = line_id
                lines.append({"kind": "row", "id": line_id, "values": list(row)})
                continue
            row_id = rowids.get(op.handle)
            of = self._spooled.pop(op.handle, None)  # (finished: no later outcome names it)
            if row_id is None and of is None:
                orphans += 1
                continue
            clean = _cleaned(op)
            if clean is None:
                outcome = [op.status, op.when, _text(op.fields.get("error_code")), op.when]
            else:
                outcome = list(finish_values(0, op.status, op.when, clean)[:-1])
            lines.append(
                {
                    "kind": "outcome",
                    "id": secrets.token_hex(16),
                    "row": row_id,
                    "of": None if row_id is not None else of,
                    "full": clean is not None,
                    "values": outcome,
                }
            )
        return lines, orphans

    def remembered(self) -> dict[int, str]:
        """The spooled rows still open (handle -> line id), for ``restore`` after lines that were not appended."""
        return dict(self._spooled)

    def restore(self, remembered: dict[int, str]) -> None:
        self._spooled = dict(remembered)

    def spooled_starts(self) -> dict[int, str]:
        """Handle -> line id of every spooled row not finished yet (a replay gives each its row id)."""
        return dict(self._spooled)

    def forget(self, handle: int) -> None:
        """``handle``'s row is in the file now (its row id known to the writer): outcomes name it by that."""
        self._spooled.pop(handle, None)

    def append(self, lines: list[dict[str, Any]]) -> None:
        """Add ``lines`` at the end of the spool and sync it to the disk — all of them, or (``OSError``: a
        full disk, a failed sync) none: what reached the spool of them is cut off again, so a caller that
        keeps the writes for the file never has them in the spool too (the replay would write them twice)."""
        if not lines:
            return
        data = memoryview(b"".join(_line(body) for body in lines))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with _locked(fd):  # no other writer appends nor replays meanwhile: the size is the spool's own
                size = os.fstat(fd).st_size
                try:
                    while data:  # a filling disk writes part first (the next write says it is full)
                        written = os.write(fd, data)
                        if written <= 0:
                            raise OSError(f"the spool {self.path} took no more bytes")
                        data = data[written:]
                    os.fsync(fd)
                except BaseException:
                    _cut_back(fd, size, self.path)
                    raise
        finally:
            os.close(fd)


def _cut_back(fd: int, size: int, path: Path) -> None:
    """The spool back to ``size`` bytes: an append that failed part-way leaves nothing of its lines."""
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:  # the lines that reached it stay: the replay applies them (each once)
        log.error(
            "ledger spool %s: a failed append could not be cut off again (%s); its lines that reached the spool "
            "may also be written into the file by this process",
            path,
            exc,
        )


def _cleaned(op: Finish) -> dict[str, Any] | None:
    try:
        return clean_finish_fields(op.handle, op.fields)
    except Exception as exc:  # values it cannot make sense of: the outcome alone is recorded, as when written
        log.warning(
            "ledger: could not record the details of an outcome %s (%s); spooling its status only", op.status, exc
        )
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _line(body: Mapping[str, Any]) -> bytes:
    text = json.dumps(body, separators=(",", ":")).encode()  # ASCII: a lone surrogate is escaped, not refused
    return hashlib.sha256(text).hexdigest().encode() + b" " + text + b"\n"


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# reading and replaying (the next open)


@dataclass
class SpoolContents:
    """What a spool holds: its readable lines, and the damaged ones (line number, why, raw bytes)."""

    lines: list[dict[str, Any]]
    damaged: list[tuple[int, str, bytes]]


def read_spool(data: bytes) -> SpoolContents:
    """The lines of a spool's bytes, each checked: a line cut short, a digest that does not match, or a
    body that is not a spool line is damaged (never raised)."""
    contents = SpoolContents([], [])
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        problem, body = _parsed(raw)
        if problem is None:
            contents.lines.append(body)  # type: ignore[arg-type]
        else:
            contents.damaged.append((number, problem, raw))
    return contents


def _parsed(raw: bytes) -> tuple[str | None, dict[str, Any] | None]:
    if not raw.endswith(b"\n"):
        return "cut short (no end of line)", None
    digest, space, text = raw[:-1].partition(b" ")
    if not space or len(digest) != 64:
        return "no checksum", None
    if hashlib.sha256(text).hexdigest().encode() != digest:
        return "its checksum does not match", None
    try:
        body = json.loads(text)
    except ValueError:
        return "not JSON", None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("values"), list):
        return "not a spooled write", None
    kind, values = body.get("kind"), body["values"]
    if kind == "row" and len(values) == _INSERT_COLUMNS:
        return None, body
    if kind == "outcome" and len(values) == (_FINISH_COLUMNS if body.get("full") else _STATUS_COLUMNS):
        row, of = body.get("row"), body.get("of")
        if (isinstance(row, int) and not isinstance(row, bool)) or isinstance(of, str):
            return None, body
    return "not a spooled write", None


def rows_of_lines(conn: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
    """Line id -> the row id a replay gave each ``row`` line of ``ids`` that it applied (any process's replay:
    the table ``ledger_spool_replayed``); ids not there are left out."""
    found: dict[str, int] = {}
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_spool_replayed'"
    if not ids or conn.execute(exists).fetchone() is None:
        return found
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        query = f"SELECT id, row_id FROM ledger_spool_replayed WHERE row_id IS NOT NULL AND id IN ({marks})"
        found.update((line, row) for line, row in conn.execute(query, chunk))
    return found


def replay_spool(ledger: Ledger, *, wait: bool = True) -> int | None:
    """Write what the spool beside ``ledger``'s file holds into it, once, then empty the spool; how many
    lines were applied. Damaged lines are reported and kept aside (``<spool>.damaged``), lines the file
    refuses are moved to ``rejected_path`` (one error with their count); a replay that fails for the
    file's sake (locked for longer than ``retry_for``, a full disk) leaves the spool for the next opening,
    and so does one whose damaged or refused lines could not be kept. Never raises for the spool's sake:
    the ledger opens whatever the spool holds.

    ``wait=False`` (a running writer whose file was locked: ``engine.ledger_writer``) takes the file's write
    lock only if it is free now, and returns ``None`` — quietly when the file is still locked — whenever the
    spool keeps lines for later."""
    path = spool_path(ledger.path)
    try:
        if path.stat().st_size == 0:
            return 0
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.error("ledger spool %s cannot be read (%s); its writes wait for the next opening", path, exc)
        return 0 if wait else None
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        log.error("ledger spool %s cannot be opened (%s); its writes wait for the next opening", path, exc)
        return 0 if wait else None
    rejected: list[tuple[dict[str, Any], str]] = []
    try:
        with _locked(fd):
            data = _read_all(fd)
            contents = read_spool(data)
            _report_damaged(path, contents.damaged)

            def work(conn: sqlite3.Connection) -> int:
                return _apply(conn, contents.lines, ledger.path, rejected)

            try:
                applied = ledger._write(work) if wait else ledger.transaction(work, wait=False)
            except Exception as exc:
                if not wait:
                    if not _lock_taken(exc):
                        log.error(
                            "ledger %s: the %d write(s) its spool %s holds could not be written now (%s); trying again",
                            ledger.path,
                            len(contents.lines),
                            path,
                            exc,
                        )
                    return None
                log.error(
                    "ledger %s: the %d write(s) its spool %s holds could not be written now (%s); they stay there "
                    "for the next opening",
                    ledger.path,
                    len(contents.lines),
                    path,
                    exc,
                )
                return 0
            kept = _keep_damaged(path, contents.damaged) and _keep_rejected(ledger.path, path, rejected)
            if not kept:  # the only copy of those lines is the spool: it stays, and the next opening tries again
                return applied - len(rejected) if wait else None
            os.ftruncate(fd, 0)
            os.fsync(fd)
    except OSError as exc:
        log.error("ledger spool %s could not be emptied (%s); a later replay finds its lines applied", path, exc)
        return 0 if wait else None
    finally:
        os.close(fd)
    if contents.lines and not wait:
        log.info(
            "ledger %s: %d write(s) spooled while the file was locked are in the ledger now (%d found there already%s)",
            ledger.path,
            applied - len(rejected),
            len(contents.lines) - applied,
            f", {len(rejected)} refused" if rejected else "",
        )
    elif contents.lines:
        log.warning(
            "ledger %s: %d write(s) left in the spool %s (by a stop, or during a lock) are in the ledger now (%d found "
            "there already%s)",
            ledger.path,
            applied - len(rejected),
            path,
            len(contents.lines) - applied,
            f", {len(rejected)} refused" if rejected else "",
        )
    return applied - len(rejected)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _report_damaged(path: Path, damaged: list[tuple[int, str, bytes]]) -> None:
    """Say which lines are damaged: the first ``_SHOWN_DAMAGED`` one by one, the others counted."""
    target = path.with_name(path.name + ".damaged")
    for number, problem, _ in damaged[:_SHOWN_DAMAGED]:
        log.error(
            "ledger spool %s: line %d is damaged (%s) and not applied; it is kept in %s", path, number, problem, target
        )
    if len(damaged) > _SHOWN_DAMAGED:
        log.error(
            "ledger spool %s: %d more damaged line(s) not applied, kept in %s",
            path,
            len(damaged) - _SHOWN_DAMAGED,
            target,
        )


def _keep_damaged(path: Path, damaged: list[tuple[int, str, bytes]]) -> bool:
    """Copy the damaged lines to ``<spool>.damaged`` (the evidence outlives the spool's emptying); whether
    they are there (or there were none)."""
    if not damaged:
        return True
    target = path.with_name(path.name + ".damaged")
    return _append_synced(target, b"".join(raw if raw.endswith(b"\n") else raw + b"\n" for _, _, raw in damaged), path)


def _keep_rejected(ledger_path: Any, path: Path, rejected: list[tuple[dict[str, Any], str]]) -> bool:
    """Move the lines the file refused to ``rejected_path`` (as spool lines: appended to the spool, they are
    tried again), saying once how many and why; whether they are there (or there were none)."""
    if not rejected:
        return True
    target = rejected_path(ledger_path)
    if not _append_synced(target, b"".join(_line(body) for body, _ in rejected), path):
        return False
    reasons = list(dict.fromkeys(reason for _, reason in rejected))
    log.error(
        "ledger %s: %d write(s) of the spool %s were refused and not applied (%s%s); they are kept in %s — append "
        "it to the spool once the cause is fixed, and the next opening writes them",
        ledger_path,
        len(rejected),
        path,
        "; ".join(reasons[:3]),
        f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else "",
        target,
    )
    return True


def _append_synced(target: Path, data: bytes, spool: Path) -> bool:
    """Append ``data`` to ``target`` (made mode 600) and sync it; whether that worked (else logged: the
    spool is then kept whole)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error(
            "ledger spool %s: lines it could not apply cannot be kept in %s (%s); the spool is left as it is, for "
            "the next opening",
            spool,
            target,
            exc,
        )
        return False
    return True


def _apply(
    conn: sqlite3.Connection, lines: list[dict[str, Any]], where: Any, rejected: list[tuple[dict[str, Any], str]]
) -> int:
    """Apply each line not applied before, inside the caller's transaction; how many were taken (applied,
    or refused: those are added to ``rejected`` with why, and their ids forgotten so a later replay of them
    applies them)."""
    conn.execute(_REPLAYED)
    now = time.time()
    conn.execute("DELETE FROM ledger_spool_replayed WHERE time < ?", (now - KEEP_REPLAYED,))
    rejected.clear()  # (a replay retried whole starts over)
    applied = 0
    for body in lines:
        line_id = body["id"]
        taken = conn.execute(
            "INSERT OR IGNORE INTO ledger_spool_replayed (id, time) VALUES (?, ?)", (line_id, now)
        ).rowcount
        if not taken:
            continue  # applied by an earlier replay
        applied += 1
        refused = _apply_line(conn, body, where)
        if refused is not None:
            conn.execute("DELETE FROM ledger_spool_replayed WHERE id = ?", (line_id,))
            rejected.append((body, refused))
    return applied


def _apply_line(conn: sqlite3.Connection, body: dict[str, Any], where: Any) -> str | None:
    """Apply one spool line; ``None``, or why the file refused it."""
    values = body["values"]
    if body["kind"] == "row":
        cursor, refused = _execute(conn, INSERT_FINISHED, values, where)
        if cursor is not None:
            conn.execute("UPDATE ledger_spool_replayed SET row_id = ? WHERE id = ?", (cursor.lastrowid, body["id"]))
        return refused
    row_id = body.get("row")
    if row_id is None:
        found = conn.execute("SELECT row_id FROM ledger_spool_replayed WHERE id = ?", (body.get("of"),)).fetchone()
        row_id = None if found is None else found[0]
    if row_id is None:
        return "an outcome of a row that was never written"
    statement = FINISH_UPDATE if body.get("full") else FINISH_STATUS_ONLY
    cursor, refused = _execute(conn, statement, [*values, row_id], where)
    if cursor is not None and cursor.rowcount != 1:
        log.warning(
            "ledger %s: row %s was no longer started; its spooled outcome %s was not recorded",
            where,
            row_id,
            values[0],
        )
    return refused


def _execute(
    conn: sqlite3.Connection, statement: str, values: list[Any], where: Any
) -> tuple[sqlite3.Cursor | None, str | None]:
    """Run one spooled statement; text SQLite cannot store is escaped. ``(cursor, None)``, or ``(None, why)``
    when the statement's values are refused; the file's own trouble is raised (the whole replay waits)."""
    try:
        return conn.execute(statement, values), None
    except Exception as exc:
        if _the_files_trouble(exc):
            raise
    storable = [v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v for v in values]
    try:
        return conn.execute(statement, storable), None
    except Exception as exc:
        if _the_files_trouble(exc):
            raise
        return None, f"{type(exc).__name__}: {exc}"


def _lock_taken(exc: BaseException) -> bool:
    """Whether a failed write found the file locked by another connection."""
    cause = exc.__cause__ if isinstance(exc.__cause__, sqlite3.Error) else exc
    return isinstance(cause, sqlite3.Error) and is_busy(cause)


def _the_files_trouble(exc: BaseException) -> bool:
    """Whether a failed statement is the file's trouble (locked, full, read-only, an I/O error, a corrupt
    database, out of memory) rather than its values' (a constraint, a value that cannot be bound): by
    SQLite's result code where Python gives it, else by the exception's class."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False  # a value Python could not bind (too large an integer, a type SQLite has no place for)
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF not in _NOT_THE_FILE
    return not isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError))
