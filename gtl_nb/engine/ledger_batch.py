"""One group commit of the ledger writer: the queued starts and finishes of many requests, written
inside the one transaction its caller holds (``engine.ledger_writer`` runs it; ``docs/ledger.md``,
"How rows are written").

New rows — a request's start, or its whole row when it ended before the writer took its start —
go in together, in start order: multi-row INSERTs of a power of two rows each, at most
``MAX_ROWS_PER_INSERT`` (50 rows: 32, 16 and 2), not a statement each (a row written alone cost
~35 % more: SQLite's per-statement work, and the interpreter's lock let go and taken back around
each of its steps, which is a hand-over between threads whenever the engine's loop is busy). The
ids of started rows, which their finishes need, follow from the statement's last id: the table's
ids are ``AUTOINCREMENT``, so one statement's rows take consecutive ids in order (asking SQLite for
them with ``RETURNING`` would be a step — a hand-over — a row). The outcomes of rows earlier
batches left started go in one ``UPDATE … FROM (VALUES …)`` for many rows (SQLite 3.33+; with an
older one, an UPDATE each, as before).

Whatever one request's values do to its statement, the others are written: a statement refused
for its values leaves the transaction open (SQLite rolls back that statement only), so its requests
fall back to one statement each, then to their outcome alone, then to text SQLite can store, and
are dropped — loudly — only when even that fails. ``sqlite3.OperationalError`` propagates: the
caller (``ledger_writer``) retries the whole batch for the file's own failures (disk full,
read-only, I/O error, locked) and writes it an operation at a time for a defect in the SQL.
"""

from __future__ import annotations

import math
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
    FINISH_UPDATE_ROWS,
    INSERT_FINISHED,
    INSERT_STARTED,
    clean_finish_fields,
    finish_values,
    finished_row_values,
    started_row_values,
    started_values,
)
from gtl_nb.engine.ledger_schema import TABLE
from gtl_nb.log import get_logger

__all__ = ["MAX_ROWS_PER_INSERT", "Finish", "Start", "write_batch"]

log = get_logger("engine.ledger")

MAX_ROWS_PER_INSERT = 64
"""Rows one INSERT (or outcomes one UPDATE) writes at most (fewer where SQLite allows fewer
parameters a statement)."""
BATCHED_UPDATES = sqlite3.sqlite_version_info >= (3, 33, 0)
"""Whether outcomes go many to a statement: ``UPDATE … FROM`` needs SQLite 3.33."""
_COLUMNS = INSERT_FINISHED.count("?")
_INSERT_HEAD, _, _ = INSERT_FINISHED.partition(" VALUES ")
_FINISH_COLUMNS = FINISH_UPDATE.count("?")
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
    """Write ``ops`` on ``conn``, inside the caller's transaction: new rows in the order of their
    starts, then the outcomes of rows written before.

    ``rowids`` maps the handles of rows committed ``started`` by earlier batches to their row ids.
    Returns the same map for the rows this batch leaves ``started`` (valid once it commits)."""
    started: dict[int, int] = {}
    rows = _NewRows(conn, hostname, started)
    outcomes = _Outcomes(conn)
    for op in ops:
        if isinstance(op, Start):
            rows.add(op)
            continue
        if op.handle not in started and op.handle not in rowids:
            rows.write()  # its start may be among the rows not written yet (the writer merges those)
        row_id = started.get(op.handle, rowids.get(op.handle))
        if row_id is None:  # its start could not be written: already logged
            log.warning("ledger: the outcome %s of a request whose row was never written is lost", op.status)
            continue
        if BATCHED_UPDATES:
            outcomes.add(op, row_id)
        else:
            rows.write()
            _update(conn, op, row_id)
    rows.write()
    outcomes.write()
    return started


class _NewRows:
    """New rows waiting to be inserted together (``write_batch``): finished rows with their fields
    cleaned, and started ones, whose ids go to ``started`` once written.

    When a multi-row INSERT is refused for one row's values (SQLite undoes that statement alone and
    keeps the transaction), that statement's rows go the one-by-one way, with the fields cleaned
    here: the others are written, the odd one falls back as it always did, and no warning is logged
    twice."""

    __slots__ = ("_cleaned", "_conn", "_hostname", "_limit", "_ops", "_rows", "_started")

    def __init__(self, conn: sqlite3.Connection, hostname: str, started: dict[int, int]) -> None:
        self._conn = conn
        self._hostname = hostname
        self._started = started
        self._ops: list[Start] = []
        self._cleaned: list[dict[str, Any] | None] = []
        self._rows: list[tuple[Any, ...]] = []
        self._limit = 0  # rows per statement, read from the connection when first needed

    def add(self, op: Start) -> None:
        """Take ``op``: a start, with its finish or still running."""
        values = _started(op, self._hostname)
        end = op.finish
        clean = None
        if end is None:
            row = started_row_values(values)
        else:  # its details, or (when they cannot be cleaned) its outcome alone
            clean = _clean(end, f"session {op.session_id!r}")
            row = finished_row_values(values, end.status, end.when, clean, end.fields.get("error_code"))
        self._rows.append(row)
        self._ops.append(op)
        self._cleaned.append(clean)

    def write(self) -> None:
        """Insert the rows taken so far, in order, and forget them."""
        rows, ops, cleaned = self._rows, self._ops, self._cleaned
        if not rows:
            return
        self._rows, self._ops, self._cleaned = [], [], []
        if not self._limit:
            self._limit = _rows_per_statement(self._conn, _COLUMNS)
        done = 0
        while done < len(rows):
            count = _statement_size(len(rows) - done, self._limit)
            part, part_ops = rows[done : done + count], ops[done : done + count]
            nulls = _null_columns(part)
            changes = self._conn.total_changes
            try:
                cursor = self._conn.execute(_insert_rows(count, nulls), _flat(part, nulls))
            except sqlite3.OperationalError:
                raise  # not these values': the file's trouble or the SQL's, which the caller tells apart
            except Exception:
                if not self._conn.in_transaction:
                    raise
                for op, clean in zip(part_ops, cleaned[done : done + count], strict=True):
                    row_id = _insert(self._conn, op, self._hostname, clean=clean)  # each on its own
                    if row_id is not None and op.finish is None:
                        self._started[op.handle] = row_id
                done += count
                continue
            # AUTOINCREMENT: each row's id is one more than the last id the table ever had, so the
            # statement's rows hold the ids up to its last one, in the order of its VALUES — unless
            # something else inserted between them (a trigger added to the table by hand): then the
            # ids are unknown, and raising undoes the batch, which the writer writes a row at a time
            ids_needed = any(op.finish is None for op in part_ops)
            if ids_needed and count > 1 and self._conn.total_changes - changes != count:
                raise RuntimeError(
                    f"a {count}-row INSERT changed {self._conn.total_changes - changes} rows (a trigger on "
                    f"{TABLE}?): its rows' ids are not known"
                )
            first = int(cursor.lastrowid or 0) - count + 1
            for offset, op in enumerate(part_ops):
                if op.finish is None:
                    self._started[op.handle] = first + offset
            done += count


class _Outcomes:
    """The outcomes of rows earlier batches left ``started``, finished together (``write_batch``):
    ``FINISH_UPDATE_ROWS``, a statement for many, falling back to one each as ``_NewRows`` does."""

    __slots__ = ("_conn", "_limit", "_pending")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._pending: list[tuple[Finish, int, dict[str, Any]]] = []
        self._limit = 0

    def add(self, op: Finish, row_id: int) -> None:
        """Take ``op``, the outcome of row ``row_id``."""
        clean = _clean(op, f"row {row_id}")
        if clean is None:  # its status alone: the one-by-one way at once (rare)
            _update(self._conn, op, row_id, clean=None)
            return
        self._pending.append((op, row_id, clean))

    def write(self) -> None:
        """Finish the rows taken so far, and forget them."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        if not self._limit:
            self._limit = _rows_per_statement(self._conn, _FINISH_COLUMNS)
        done = 0
        while done < len(pending):
            count = _statement_size(len(pending) - done, self._limit)
            part = pending[done : done + count]
            done += count
            values = [finish_values(row_id, op.status, op.when, clean) for op, row_id, clean in part]
            nulls = _null_columns(values)
            try:
                cursor = self._conn.execute(_update_rows(count, nulls), _flat(values, nulls))
            except sqlite3.OperationalError:
                raise  # not these values': the file's trouble or the SQL's, which the caller tells apart
            except Exception:
                if not self._conn.in_transaction:
                    raise
                for op, row_id, clean in part:  # one of them is refused: each on its own
                    _update(self._conn, op, row_id, clean=clean)
                continue
            if cursor.rowcount != count:  # some rows were no longer started: say which (rare)
                for op, row_id, _ in part:
                    _check_finished(self._conn, op, row_id)


def _flat(rows: Sequence[tuple[Any, ...]], nulls: tuple[int, ...]) -> list[Any]:
    """The parameters of ``rows`` in one list, the columns ``nulls`` (written ``NULL``) left out."""
    if not nulls:
        return list(chain.from_iterable(rows))
    kept = [index not in nulls for index in range(len(rows[0]))]
    return list(chain.from_iterable(map(compress, rows, repeat(kept))))


def _rows_per_statement(conn: sqlite3.Connection, columns: int) -> int:
    """How many rows of ``columns`` parameters one statement may hold on ``conn``:
    ``MAX_ROWS_PER_INSERT``, or fewer where the build of SQLite allows fewer parameters a
    statement (999 before 3.32)."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11 and later
    parameters = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
    return max(1, min(MAX_ROWS_PER_INSERT, parameters // columns))


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
    return f"{_INSERT_HEAD} VALUES {', '.join([_row_of(_COLUMNS, nulls)] * count)}"


@lru_cache(maxsize=64)
def _update_rows(count: int, nulls: tuple[int, ...] = ()) -> str:
    """``FINISH_UPDATE_ROWS`` for ``count`` outcomes, with ``NULL`` written for the columns ``nulls``."""
    return FINISH_UPDATE_ROWS.format(values=", ".join([_row_of(_FINISH_COLUMNS, nulls)] * count))


def _row_of(columns: int, nulls: tuple[int, ...]) -> str:
    """One row of a ``VALUES`` list: a parameter a column, ``NULL`` for the columns ``nulls``."""
    return "(" + ", ".join("NULL" if index in nulls else "?" for index in range(columns)) + ")"


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
            clean = _clean(end, f"session {op.session_id!r}")
        if clean is not None:
            attempts.insert(0, (INSERT_FINISHED, finished_row_values(values, end.status, end.when, clean)))
    cursor = _first_that_works(conn, attempts, f"session {op.session_id!r}")
    if cursor is None:
        log.error("ledger: the row of session %r could not be written at all; it is lost", op.session_id)
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


def _update(conn: sqlite3.Connection, op: Finish, row_id: int, clean: dict[str, Any] | None = _NOT_CLEANED) -> None:
    """Finish row ``row_id`` with ``op`` the one-by-one way; ``clean``: its fields cleaned already
    (``None``: they could not be — its status alone is recorded)."""
    essentials = (op.status, op.when, _text(op.fields.get("error_code")), op.when, row_id)
    attempts: list[tuple[str, Sequence[Any] | Callable[[], Sequence[Any]]]] = [(FINISH_STATUS_ONLY, essentials)]
    if clean is _NOT_CLEANED:
        clean = _clean(op, f"row {row_id}")
    if clean is not None:
        attempts.insert(0, (FINISH_UPDATE, finish_values(row_id, op.status, op.when, clean)))
    cursor = _first_that_works(conn, attempts, f"row {row_id}")
    if cursor is None:
        log.error("ledger row %s: its outcome %s could not be written at all; it stays started", row_id, op.status)
    elif cursor.rowcount != 1:
        _not_finished(op, row_id, _row_state(conn, row_id))


def _check_finished(conn: sqlite3.Connection, op: Finish, row_id: int) -> None:
    """After an UPDATE of many rows that finished fewer than it was given: whether row ``row_id``
    holds the outcome ``op`` (its status and end time), and if not, say so."""
    found = _row_state(conn, row_id)
    if found is None or found[0] != op.status or not _same_end(found[1], op.when):
        _not_finished(op, row_id, found)


def _same_end(stored: Any, when: float) -> bool:
    """Whether ``stored`` is the end time ``when`` as the ledger writes it (NaN is stored as NULL)."""
    return stored == when or (stored is None and math.isnan(when))


def _row_state(conn: sqlite3.Connection, row_id: int) -> tuple[Any, Any] | None:
    """Row ``row_id``'s status and end time (``None``: no such row)."""
    found = conn.execute(f"SELECT status, end_time FROM {TABLE} WHERE id = ?", (row_id,)).fetchone()
    return None if found is None else (found[0], found[1])


def _not_finished(op: Finish, row_id: int, found: tuple[Any, Any] | None) -> None:
    """Say that the outcome ``op`` left row ``row_id`` as ``found`` (its status and end time).
    Only a hand-made change can get here (the row deleted, or finished by another tool): the
    writer finishes each row once, and recovery never judges the rows of a live process."""
    now = "no longer exists" if found is None else f"is already {found[0]}"
    log.warning("ledger row %s %s; its outcome %s was not recorded (the first outcome wins)", row_id, now, op.status)


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
            raise  # not this request's values: the file's trouble or the SQL's, which the caller tells apart
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
