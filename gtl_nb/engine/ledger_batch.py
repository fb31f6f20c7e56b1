"""One group commit of the ledger writer: the queued starts and finishes of many requests, written
inside the one transaction its caller holds (``engine.ledger_writer`` runs it; ``docs/ledger.md``,
"How rows are written").

A request whose start and finish are both in the batch is one INSERT of the finished row — and
such rows, in a run, go in together: multi-row INSERTs of a power of two rows each, at most
``MAX_ROWS_PER_INSERT`` (50 rows: 32, 16 and 2), not a statement each (a row written alone cost
~35 % more: SQLite's per-statement work, and the interpreter's lock handed over around each).
A finish whose start was committed by an earlier batch is the usual guarded UPDATE. Whatever one
request's values do to its statement, the others are written: a statement refused for its values leaves the
transaction open (SQLite rolls back that statement only), so the request falls back to its outcome
alone, then to text SQLite can store, and is dropped — loudly — only when even that fails. The
file's own failures (``sqlite3.OperationalError``: disk full, read-only, I/O error, locked)
propagate, and the caller retries the whole batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain, compress, repeat
from operator import is_
from typing import Any, cast

from gtl_nb.engine.ledger import (
    FINISH_STATUS_ONLY,
    FINISH_UPDATE,
    INSERT_FINISHED,
    INSERT_STARTED,
    clean_finish_fields,
    finish_values,
    finished_row_values,
    started_values,
)
from gtl_nb.engine.ledger_schema import TABLE
from gtl_nb.log import get_logger

__all__ = ["MAX_ROWS_PER_INSERT", "Finish", "Start", "write_batch"]

log = get_logger("engine.ledger")

MAX_ROWS_PER_INSERT = 64
"""Finished rows one INSERT writes at most (fewer where SQLite allows fewer parameters a statement)."""
_COLUMNS = INSERT_FINISHED.count("?")
_INSERT_HEAD, _, _ = INSERT_FINISHED.partition(" VALUES ")
_ONE_ROW = "(" + ", ".join("?" * _COLUMNS) + ")"
_NONES = repeat(None)


@dataclass(slots=True, eq=False)
class Finish:
    """A queued ``finish``: the request's outcome, its fields as the caller gave them (cleaned when
    written, off the request path), when it ended, and whose request it was."""

    handle: int
    seq: int
    status: str
    when: float
    fields: dict[str, Any]
    user: str | None = None


@dataclass(slots=True, eq=False)
class Start:
    """A queued ``start``; ``finish`` is set when the request ended before the row was written."""

    handle: int
    seq: int
    when: float
    session_id: str | None
    user: str | None
    model: str | None
    tenant: Any = None
    key_id: Any = None
    trace_id: Any = None
    finish: Finish | None = None


def write_batch(
    conn: sqlite3.Connection, ops: Iterable[Start | Finish], rowids: Mapping[int, int], hostname: str
) -> dict[int, int]:
    """Write ``ops`` in order on ``conn``, inside the caller's transaction.

    ``rowids`` maps the handles of rows committed ``started`` by earlier batches to their row ids.
    Returns the same map for the rows this batch leaves ``started`` (valid once it commits)."""
    started: dict[int, int] = {}
    finished = _FinishedRows(conn, hostname)
    for op in ops:
        if isinstance(op, Start):
            if op.finish is not None:
                clean = _clean(op.finish, f"session {op.session_id}")
                if clean is not None:
                    finished.add(op, clean)
                    continue
                finished.write()  # the rows before this one first: rows keep the order of their starts
                _insert(conn, op, hostname, clean=None)  # its outcome alone
                continue
            finished.write()
            row_id = _insert(conn, op, hostname)
            if row_id is not None and op.finish is None:
                started[op.handle] = row_id
            continue
        finished.write()
        row_id = started.get(op.handle, rowids.get(op.handle))
        if row_id is None:  # its start could not be written: already logged
            log.warning("ledger: the outcome %s of a request whose row was never written is lost", op.status)
            continue
        _update(conn, op, row_id)
    finished.write()
    return started


class _FinishedRows:
    """Finished rows waiting to be inserted together (``write_batch``), with their fields cleaned.

    When a multi-row INSERT is refused for one row's values (SQLite undoes that statement alone and
    keeps the transaction), that statement's rows go the one-by-one way, with the fields cleaned
    here: the others are written, the odd one falls back as it always did, and no warning is logged
    twice."""

    __slots__ = ("_cleaned", "_conn", "_hostname", "_limit", "_ops", "_rows")

    def __init__(self, conn: sqlite3.Connection, hostname: str) -> None:
        self._conn = conn
        self._hostname = hostname
        self._ops: list[Start] = []
        self._cleaned: list[dict[str, Any]] = []
        self._rows: list[tuple[Any, ...]] = []
        self._limit = 0  # rows per statement, read from the connection when first needed

    def add(self, op: Start, clean: dict[str, Any]) -> None:
        """Take ``op`` (a start with its finish, whose fields are ``clean``)."""
        end = op.finish
        assert end is not None
        values = _started(op, self._hostname)
        self._rows.append(finished_row_values(values, end.status, end.when, clean))
        self._ops.append(op)
        self._cleaned.append(clean)

    def write(self) -> None:
        """Insert the rows taken so far, in order, and forget them."""
        rows, ops, cleaned = self._rows, self._ops, self._cleaned
        if not rows:
            return
        self._rows, self._ops, self._cleaned = [], [], []
        if not self._limit:
            self._limit = _rows_per_insert(self._conn)
        done = 0
        while done < len(rows):
            count = _statement_size(len(rows) - done, self._limit)
            part = rows[done : done + count]
            nulls = _null_columns(part)
            if nulls:
                kept = [index not in nulls for index in range(_COLUMNS)]
                values = list(chain.from_iterable(map(compress, part, repeat(kept))))
            else:
                values = list(chain.from_iterable(part))
            try:
                self._conn.execute(_insert_rows(count, nulls), values)
            except sqlite3.OperationalError:
                raise  # the file's trouble, not these values: the caller retries the batch
            except Exception:
                if not self._conn.in_transaction:
                    raise
                for index in range(done, done + count):  # one of them is refused: each on its own
                    _insert(self._conn, ops[index], self._hostname, clean=cleaned[index])
            done += count


def _rows_per_insert(conn: sqlite3.Connection) -> int:
    """How many rows one INSERT may hold on ``conn``: ``MAX_ROWS_PER_INSERT``, or fewer where the
    build of SQLite allows fewer parameters a statement (999 before 3.32)."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11 and later
    parameters = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
    return max(1, min(MAX_ROWS_PER_INSERT, parameters // _COLUMNS))


def _statement_size(remaining: int, limit: int) -> int:
    """The next statement's row count: the largest power of two that fits (at most ``limit``), so
    a handful of statement texts serve every batch (SQLite's statement cache keeps them prepared)."""
    count = min(remaining, limit)
    return 1 << (count.bit_length() - 1)


def _null_columns(rows: Sequence[tuple[Any, ...]]) -> tuple[int, ...]:
    """The columns that are ``None`` in every one of ``rows``: written as ``NULL`` in the statement's
    text instead of bound. (sqlite3 binds ``None`` only after looking for an adapter, which costs a
    formatted ``AttributeError`` a value: ~1.7 k instructions, a quarter of a row's ``execute`` with
    the ten or so empty columns of an ordinary row. Asked a column at a time, in C.)"""
    # ``is``, never ``==``: a value may claim to equal None, or refuse to say (``pandas.NA``)
    return tuple(index for index, column in enumerate(zip(*rows, strict=True)) if all(map(is_, column, _NONES)))


@lru_cache(maxsize=64)
def _insert_rows(count: int, nulls: tuple[int, ...] = ()) -> str:
    """``INSERT_FINISHED`` for ``count`` rows, with ``NULL`` written for the columns ``nulls`` (a
    handful of patterns in practice: the sizes are powers of two, the empty columns few kinds of row)."""
    one_row = _ONE_ROW if not nulls else "(" + ", ".join("NULL" if i in nulls else "?" for i in range(_COLUMNS)) + ")"
    return f"{_INSERT_HEAD} VALUES {', '.join([one_row] * count)}"


_NOT_CLEANED: Any = object()  # ``_insert``'s default: clean the finish's fields here


def _insert(
    conn: sqlite3.Connection, op: Start, hostname: str, clean: dict[str, Any] | None = _NOT_CLEANED
) -> int | None:
    """INSERT ``op``'s row (finished, when it has its finish) the one-by-one way; ``clean``: its
    finish's fields cleaned already (``None``: they could not be — its outcome alone is recorded),
    so the warnings of cleaning them are logged once."""
    values = _started(op, hostname)
    attempts: list[tuple[str, Sequence[Any] | Callable[[], Sequence[Any]]]] = [(INSERT_STARTED, values)]
    end = op.finish
    if end is not None:
        essentials = partial(finished_row_values, values, end.status, end.when, None, end.fields.get("error_code"))
        attempts = [(INSERT_FINISHED, essentials)]  # made only when the full row was refused
        if clean is _NOT_CLEANED:
            clean = _clean(end, f"session {op.session_id}")
        if clean is not None:
            attempts.insert(0, (INSERT_FINISHED, finished_row_values(values, end.status, end.when, clean)))
    cursor = _first_that_works(conn, attempts, f"session {op.session_id}")
    if cursor is None:
        log.error("ledger: the row of session %s could not be written at all; it is lost", op.session_id)
        return None
    return int(cursor.lastrowid or 0)


def _started(op: Start, hostname: str) -> tuple[Any, ...]:
    """``started_values`` of a queued start."""
    return started_values(
        op.when,
        session_id=op.session_id,
        user=op.user,
        model=op.model,
        hostname=hostname,
        tenant=op.tenant,
        key_id=op.key_id,
        trace_id=op.trace_id,
    )


def _update(conn: sqlite3.Connection, op: Finish, row_id: int) -> None:
    essentials = (op.status, op.when, _text(op.fields.get("error_code")), op.when, row_id)
    attempts: list[tuple[str, Sequence[Any] | Callable[[], Sequence[Any]]]] = [(FINISH_STATUS_ONLY, essentials)]
    clean = _clean(op, f"row {row_id}")
    if clean is not None:
        attempts.insert(0, (FINISH_UPDATE, finish_values(row_id, op.status, op.when, clean)))
    cursor = _first_that_works(conn, attempts, f"row {row_id}")
    if cursor is None:
        log.error("ledger row %s: its outcome %s could not be written at all; it stays started", row_id, op.status)
    elif cursor.rowcount != 1:
        # Only a hand-made change can get here (the row deleted, or finished by another tool): the
        # writer finishes each row once, and recovery never judges the rows of a live process.
        found = conn.execute(f"SELECT status FROM {TABLE} WHERE id = ?", (row_id,)).fetchone()
        now = "no longer exists" if found is None else f"is already {found[0]}"
        log.warning(
            "ledger row %s %s; its outcome %s was not recorded (the first outcome wins)", row_id, now, op.status
        )


def _clean(op: Finish, what: str) -> dict[str, Any] | None:
    try:
        return clean_finish_fields(op.handle, op.fields)
    except Exception as exc:  # values it cannot make sense of: the outcome alone is recorded
        log.warning("ledger %s: could not record its details (%s); recording its status only", what, exc)
        return None


def _first_that_works(
    conn: sqlite3.Connection, attempts: list[tuple[str, Sequence[Any] | Callable[[], Sequence[Any]]]], what: str
) -> sqlite3.Cursor | None:
    """Run the first statement that succeeds, then the last one again with text SQLite can store;
    ``None`` when none did. Parameters may be given as a function that makes them (a fallback is
    then made only when it is needed). A failure that ended the transaction is raised (the batch is
    retried)."""
    last = len(attempts) - 1
    for index in range(last + 2):
        if index <= last:
            statement, made = attempts[index]
            params = made() if callable(made) else made
            attempts[index] = (statement, params)  # the escaped retry below starts from the last one's
        else:  # the escaped text is made only when every statement failed (it walks every value)
            statement, params = attempts[last][0], _storable(cast(Sequence[Any], attempts[last][1]))
        try:
            return conn.execute(statement, params)
        except sqlite3.OperationalError:
            raise  # the file's trouble (full, read-only, I/O), not this request's values: retry the batch
        except Exception as exc:
            if not conn.in_transaction:
                raise
            if index == last:
                log.warning("ledger %s: %s; storing its text with the unstorable characters escaped", what, exc)
            elif index < last:
                log.warning("ledger %s: could not record its details (%s); recording its status only", what, exc)
    return None


def _storable(params: Sequence[Any]) -> tuple[Any, ...]:
    """``params`` with every string encodable as UTF-8 (a lone surrogate becomes ``\\udc80``)."""
    return tuple(
        value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else value
        for value in params
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
