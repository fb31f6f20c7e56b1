"""The usage ledger: one SQLite row per request, safe with many threads, notebooks and processes.

Lifecycle of a row (``docs/ledger.md`` has the whole story)::

    start() ──INSERT──▶ started ──finish() (one UPDATE)──▶ ok | error | cancelled | interrupted
                           │
                           └── the writing process died (found when a ledger is opened) ──▶ interrupted

* ``Ledger.start(...)`` inserts the row with status ``started`` *before* the upstream call and
  returns its id; ``Ledger.finish(row_id, status=..., ...)`` completes it with exactly one UPDATE.
  Finishing a row that is not ``started`` (twice, or after recovery) raises ``LedgerStateError``
  and changes nothing: the first outcome wins.
* Each row records the writer's hostname, pid and a process identity that survives pid reuse
  (``process_identity``, from ``engine.processes`` and re-exported here). Opening a ledger marks
  ``interrupted`` the rows of *this* host that are still ``started`` although their process is
  gone; rows of other hosts are never judged. The rows it marked wait in ``Ledger.interrupted``
  (``engine.ledger_interrupted``) for the gateway's audit log, which writes a record for each.
* Concurrency: WAL journal, ``busy_timeout``, and every write is one short ``BEGIN IMMEDIATE``
  transaction on the ledger's single writer connection (guarded by a lock, so every public method
  is thread-safe). Contention that outlasts SQLite's busy timeout is retried with jittered backoff,
  so "database is locked" never reaches the caller. Readers use their own short-lived connection
  and, in WAL mode, never block writers.
* ``rows`` returns rows as dicts, ``to_dataframe`` as pandas (``frame_from_rows`` builds that frame
  from any ``UsageLedger``'s rows); ``totals`` and ``spend_today`` sum them for reports.

The ledger is synchronous; the engine reaches it through the async ``UsageLedger`` interface,
implemented by ``engine.stores.SqliteUsageLedger`` (writes queued for one writer thread per file,
``engine.ledger_writer``, which group-commits them with the statements and value builders below)
and, in memory, by ``MemoryUsageLedger`` with the same rules (``clean_finish_fields``,
``row_filter``). Every read through a ``Ledger`` first waits for the writes this process queued
for the same file (``register_pending_writes``), so readers see what was written before them.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import platform
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timezone
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from gtl_nb.engine import ledger_migrations
from gtl_nb.engine.ledger_interrupted import COLUMNS as INTERRUPTED_COLUMNS
from gtl_nb.engine.ledger_interrupted import InterruptedRows
from gtl_nb.engine.ledger_schema import COLUMN_NAMES, DATETIME, DTYPES, FINAL_STATUSES, LIST, TABLE
from gtl_nb.engine.processes import own_identity, process_alive, process_identity
from gtl_nb.engine.sqlite_files import create_private_file, retry_while_busy, run_transaction
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError, GTLError, escaped
from gtl_nb.protocol.messages import Done, Error, Usage

if TYPE_CHECKING:
    import pandas

__all__ = [
    "FINISH_FIELDS",
    "FINISH_STATUS_ONLY",
    "FINISH_UPDATE",
    "FINISH_UPDATE_ROWS",
    "INSERT_FINISHED",
    "INSERT_STARTED",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "LedgerLocationError",
    "LedgerStateError",
    "LedgerValueError",
    "Totals",
    "clean_finish_fields",
    "default_ledger_path",
    "finish_fields",
    "finish_values",
    "finished_row_values",
    "frame_from_rows",
    "iso_utc",
    "page_bounds",
    "process_alive",
    "process_identity",
    "refused_by_budget",
    "register_pending_writes",
    "row_filter",
    "started_row_values",
    "started_values",
    "unregister_pending_writes",
]

log = get_logger("engine.ledger")

T = TypeVar("T")
_INHERITED: list[sqlite3.Connection] = []
MEMORY = ":memory:"
DAY = 86400.0
_REFUSALS = ("RATE_LIMIT", "BUDGET_EXCEEDED")  # the error codes of a request refused by a budget


# ----------------------------------------------------------------------------------------------
# errors


class LedgerError(GTLError):
    """The usage ledger could not do what was asked (the file is unusable, the call is wrong)."""


class LedgerStateError(LedgerError):
    """A row is not in the state the call needs: finishing an unknown or already finished row,
    or using a closed ledger."""


class LedgerValueError(LedgerError, ValueError):
    """A caller mistake in arguments: an unknown status or filter (``INVALID_REQUEST``: the call is
    wrong, nothing failed)."""

    code = "INVALID_REQUEST"


class LedgerLocationError(ConfigurationError, LedgerError):
    """The ledger cannot live where it was asked to (no such directory, a file in the way, not
    writable): a set-up mistake, named with what to pass instead."""


class LedgerBusyError(LedgerError):
    """The ledger file stayed locked by other writers for longer than ``retry_for`` seconds. Shown (``str``,
    what ``gtl serve`` prints when it cannot start) as its words alone: another process's lock is neither a
    bug of the gateway's nor a wire code's business (over the wire it is still ``INTERNAL``)."""

    def __str__(self) -> str:
        return escaped(self.message)


class Totals(NamedTuple):
    """What ``Ledger.totals`` returns: request count, tokens in + out, cost in USD."""

    requests: int
    tokens: int
    cost: float


# ----------------------------------------------------------------------------------------------
# where the file lives


def default_ledger_path(
    environ: Mapping[str, str] | None = None, system: str | None = None, home: Path | None = None
) -> Path:
    """The default ledger file: ``<user data dir>/gtl_nb/ledger.sqlite3``.

    * ``$XDG_DATA_HOME`` when set to an absolute path (any POSIX system), else
    * macOS: ``~/Library/Application Support``;
    * Windows: ``%LOCALAPPDATA%`` (then ``%APPDATA%``, then ``~/AppData/Local``);
    * Linux and others: ``~/.local/share``.
    """
    env = os.environ if environ is None else environ
    system = system or platform.system()
    home = home or Path.home()
    if system == "Windows":
        base = env.get("LOCALAPPDATA") or env.get("APPDATA")
        root = Path(base) if base else home / "AppData" / "Local"
    else:
        xdg = env.get("XDG_DATA_HOME", "")
        if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
            root = Path(xdg)
        elif system == "Darwin":
            root = home / "Library" / "Application Support"
        else:
            root = home / ".local" / "share"
    return root / "gtl_nb" / "ledger.sqlite3"


# ----------------------------------------------------------------------------------------------
# from GTL events to finish() arguments


def finish_fields(end: Done | Error, usage: Usage | None = None) -> dict[str, Any]:
    """The ``Ledger.finish`` keyword arguments that a session's last event (and usage) imply.

    ``done`` → ``ok`` with its ``finish_reason``; an ``error`` with code ``CANCELLED`` → ``cancelled``;
    any other error → ``error`` with its code (neither has a finish reason: NULL). ``failover_path`` is
    not in the events: pass it yourself.
    """
    fields: dict[str, Any] = {}
    if isinstance(end, Done):
        fields.update(
            status="ok",
            deployment=end.provider,
            model=end.model,
            ttft_ms=end.ttft_ms,
            latency_ms=end.latency_ms,
            finish_reason=end.finish_reason,
        )
    else:
        fields.update(
            status="cancelled" if end.code == "CANCELLED" else "error", error_code=end.code, deployment=end.provider
        )
    if usage is not None:
        fields.update(
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cached_tokens_in=usage.cached_tokens_in,
            cache_write_tokens_in=usage.cache_write_tokens_in,
            reasoning_tokens_out=usage.reasoning_tokens_out,
            cost=usage.cost,
            cache_hit=usage.cache_hit,
        )
    return fields


# ----------------------------------------------------------------------------------------------
# the ledger

#: Insert a row at ``start()``: status ``started``, no outcome yet.
INSERT_STARTED = (
    f"INSERT INTO {TABLE} (time, time_utc, session_id, user, deployment, provider_type, model, status, "
    "cache_hit, coalesced, failover_path, pid, proc_start, hostname, tenant, key_id, trace_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'started', ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

#: Insert a row that is finished already: the writer's one statement when a request's start and
#: finish are written together (``finished_row_values`` builds the parameters).
INSERT_FINISHED = (
    f"INSERT INTO {TABLE} (time, time_utc, end_time, session_id, user, deployment, provider_type, model, "
    "status, error_code, finish_reason, tokens_in, tokens_out, cached_tokens_in, cache_write_tokens_in, "
    "reasoning_tokens_out, cost, usage_estimated, ttft_ms, latency_ms, cache_hit, coalesced, failover_path, pid, "
    "proc_start, hostname, tenant, key_id, trace_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# One UPDATE completes a row; the status guard makes a second finish change nothing.
_FINISH = (
    f"UPDATE {TABLE} SET status = ?, end_time = ?, error_code = ?, finish_reason = ?, "
    "deployment = COALESCE(?, deployment), provider_type = COALESCE(?, provider_type), "
    "model = COALESCE(?, model), tokens_in = ?, tokens_out = ?, cached_tokens_in = ?, cache_write_tokens_in = ?, "
    "reasoning_tokens_out = ?, cost = ?, usage_estimated = ?, ttft_ms = ?, "
    "latency_ms = COALESCE(?, (? - time) * 1000.0), "
    "cache_hit = COALESCE(?, cache_hit), coalesced = COALESCE(?, coalesced), "
    "failover_path = COALESCE(?, failover_path) "
    "WHERE id = ? AND status = 'started'"
)
#: The finishing UPDATE (parameters: ``finish_values``).
FINISH_UPDATE = _FINISH

#: ``_FINISH`` for many rows in one statement (``UPDATE … FROM``, SQLite 3.33+): ``{values}`` is a
#: list of rows of ``finish_values``, each read as ``v`` — ``v.columnN`` is the Nth parameter of
#: ``_FINISH``, and every assignment is ``_FINISH``'s (a row no longer ``started`` is left alone).
FINISH_UPDATE_ROWS = (
    f"UPDATE {TABLE} SET status = v.column1, end_time = v.column2, error_code = v.column3, "
    "finish_reason = v.column4, "
    "deployment = COALESCE(v.column5, deployment), provider_type = COALESCE(v.column6, provider_type), "
    "model = COALESCE(v.column7, model), tokens_in = v.column8, tokens_out = v.column9, "
    "cached_tokens_in = v.column10, cache_write_tokens_in = v.column11, reasoning_tokens_out = v.column12, "
    "cost = v.column13, usage_estimated = v.column14, ttft_ms = v.column15, "
    "latency_ms = COALESCE(v.column16, (v.column17 - time) * 1000.0), "
    "cache_hit = COALESCE(v.column18, cache_hit), coalesced = COALESCE(v.column19, coalesced), "
    "failover_path = COALESCE(v.column20, failover_path) "
    "FROM (VALUES {values}) AS v WHERE id = v.column21 AND status = 'started'"
)


#: The fallback when the details cannot be written: the outcome alone, so no ended request stays
#: started. Parameters: status, end time, error code, end time again, row id.
FINISH_STATUS_ONLY = (
    f"UPDATE {TABLE} SET status = ?, end_time = ?, error_code = ?, latency_ms = (? - time) * 1000.0 "
    "WHERE id = ? AND status = 'started'"
)


# The finish() fields in _FINISH's order (after status and end_time; latency_ms's default is bound between).
_FINISH_DETAILS = (
    "error_code",
    "finish_reason",
    "deployment",
    "provider_type",
    "model",
    "tokens_in",
    "tokens_out",
    "cached_tokens_in",
    "cache_write_tokens_in",
    "reasoning_tokens_out",
    "cost",
    "usage_estimated",
    "ttft_ms",
    "latency_ms",
    "cache_hit",
    "coalesced",
    "failover_path",
)
#: The keyword fields ``Ledger.finish`` (and ``UsageLedger.finish``) accept besides ``status`` and ``now``.
FINISH_FIELDS: frozenset[str] = frozenset(_FINISH_DETAILS)
#: The token counts among them: whole numbers as reported, validated alike (``clean_finish_fields``).
TOKEN_COUNTS = ("tokens_in", "tokens_out", "cached_tokens_in", "cache_write_tokens_in", "reasoning_tokens_out")
#: The longest ``finish_reason`` a row keeps: GTL's reasons are a word or two (``content_filter``);
#: a longer one is cut, so a provider's or caller's odd value cannot grow the table without bound.
FINISH_REASON_MAX = 32


def clean_finish_fields(row_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``finish`` fields as a ledger stores them: text as ``str``, an implausible token count or a
    non-finite number as unknown (``None``, with a warning), a ``finish_reason`` that is no text as
    unknown and a long one cut (``_finish_reason``), flags as bool, the path as a list.

    Every ``UsageLedger`` applies it, so rows read back alike whatever stores them. It may raise on
    values it cannot make sense of (a ``failover_path`` that is no sequence): then a ledger records
    the row's status alone rather than leave it ``started``."""
    # (each value's commonest type is accepted in the loop, without the helper's call: a row a request)
    clean: dict[str, Any] = {}
    for name in ("error_code", "deployment", "provider_type", "model"):
        value = fields.get(name)
        clean[name] = value if value is None or type(value) is str else str(value)
    value = fields.get("finish_reason")
    short = value is None or (type(value) is str and len(value) <= FINISH_REASON_MAX and value.isascii())
    clean["finish_reason"] = value if short else _finish_reason(value, row_id)
    for name in TOKEN_COUNTS:
        value = fields.get(name)
        plausible = value is None or (type(value) is int and 0 <= value <= _INT64_MAX)
        clean[name] = value if plausible else _count(value, name, row_id)
    for name in ("cost", "ttft_ms", "latency_ms"):
        value = fields.get(name)
        finite = value is None or (type(value) is float and math.isfinite(value))
        clean[name] = value if finite else _measure(value, name, row_id)
    for name in ("cache_hit", "coalesced"):
        value = fields.get(name)
        clean[name] = None if value is None else bool(value)
    clean["usage_estimated"] = bool(fields.get("usage_estimated"))
    clean["failover_path"] = _path_steps(fields.get("failover_path"))
    return clean


def started_values(
    when: float,
    *,
    session_id: str | None,
    user: str | None,
    model: str | None,
    hostname: str,
    deployment: str | None = None,
    provider_type: str | None = None,
    cache_hit: bool = False,
    coalesced: bool = False,
    failover_path: Sequence[str] | None = None,
    tenant: Any = None,
    key_id: Any = None,
    trace_id: Any = None,
) -> tuple[Any, ...]:
    """The parameters of ``INSERT_STARTED``: a request's start as the writing process records it
    (its pid and process identity are read here)."""
    pid, identity = own_identity()
    return (
        when,
        iso_utc(when),
        session_id,
        user,
        deployment,
        provider_type,
        model,
        int(bool(cache_hit)),
        int(bool(coalesced)),
        _path_json(failover_path),
        pid,
        identity,
        hostname,
        _text(tenant),
        _text(key_id),
        _text(trace_id),
    )


def finish_values(row_id: int, status: str, when: float, clean: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parameters of ``FINISH_UPDATE`` for fields cleaned by ``clean_finish_fields``."""
    return (
        status,
        when,
        *(clean[name] for name in _FINISH_DETAILS[:-3]),
        when,
        _optional_bool(clean["cache_hit"]),
        _optional_bool(clean["coalesced"]),
        _path_json(clean["failover_path"]),
        row_id,
    )


def finished_row_values(
    started: Sequence[Any], status: str, when: float, clean: Mapping[str, Any] | None, error_code: Any = None
) -> tuple[Any, ...]:
    """The parameters of ``INSERT_FINISHED``: ``started_values`` completed exactly as ``FINISH_UPDATE``
    would complete that row (a field given as None keeps the start's value; latency defaults to the
    time since the start). ``clean=None`` records the outcome alone (status, end time, ``error_code``),
    as ``FINISH_STATUS_ONLY`` does."""
    if clean is None:
        clean = dict.fromkeys(_FINISH_DETAILS)
        clean["error_code"] = _text(error_code)
    began = started[0]
    latency = clean["latency_ms"]
    path = clean["failover_path"]
    return (
        began,
        started[1],
        when,
        started[2],
        started[3],
        started[4] if clean["deployment"] is None else clean["deployment"],
        started[5] if clean["provider_type"] is None else clean["provider_type"],
        started[6] if clean["model"] is None else clean["model"],
        status,
        clean["error_code"],
        clean["finish_reason"],
        clean["tokens_in"],
        clean["tokens_out"],
        clean["cached_tokens_in"],
        clean["cache_write_tokens_in"],
        clean["reasoning_tokens_out"],
        clean["cost"],
        bool(clean["usage_estimated"]),
        clean["ttft_ms"],
        (when - began) * 1000.0 if latency is None else latency,
        started[7] if clean["cache_hit"] is None else int(bool(clean["cache_hit"])),
        started[8] if clean["coalesced"] is None else int(bool(clean["coalesced"])),
        started[9] if path is None else _path_json(path),
        *started[10:],
    )


# error_code, finish_reason, the five token counts, cost, usage_estimated, ttft_ms, latency_ms
_NO_OUTCOME = (None,) * 11


def started_row_values(started: Sequence[Any]) -> tuple[Any, ...]:
    """``started_values`` in ``INSERT_FINISHED``'s columns: the very row ``INSERT_STARTED`` writes
    (status ``started``, no end, no outcome), so started and finished rows can share one statement."""
    return (started[0], started[1], None, *started[2:7], "started", *_NO_OUTCOME, *started[7:])


def _finish_row(conn: sqlite3.Connection, statement: str, values: Sequence[Any], row_id: int) -> str | None:
    """Run a finishing UPDATE; ``None`` when it finished the row, else the row's status (or ``missing``)."""
    if conn.execute(statement, values).rowcount == 1:
        return None
    found = conn.execute(f"SELECT status FROM {TABLE} WHERE id = ?", (row_id,)).fetchone()
    return "missing" if found is None else str(found[0])


class Ledger:
    """The usage ledger in one SQLite file (see the module docstring and ``docs/ledger.md``).

    ``Ledger()`` opens the default file (``default_ledger_path()``), ``Ledger(path)`` another one,
    ``Ledger(":memory:")`` a private in-memory database for tests. Opening creates the file and
    its directory, migrates it to the current schema and recovers rows of crashed processes.

    ``clock`` gives wall-clock unix seconds for rows written without ``now``; ``busy_timeout`` is
    SQLite's own wait for a lock (seconds); ``retry_for`` bounds the retries beyond it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
        retry_for: float = 60.0,
    ) -> None:
        if path is None:
            path = default_ledger_path()
        self.path: str | Path = MEMORY if str(path) == MEMORY else Path(path)
        self.hostname = platform.node() or "localhost"
        self._memory = self.path == MEMORY
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._retry_for = retry_for
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._conn_pid = 0
        self._closed = False
        self._no_more_waits = False  # ``stop_waiting``: a write finding the file locked gives up at once
        _LEDGERS.add(self)  # (its lock is made anew in a forked child: _reset_locks)
        if not self._memory:
            _create_private_file(Path(self.path))
        #: Names this ledger's database in the process (the file's real path), so the queued writes
        #: of every ``Ledger`` and writer on one file are found by each reader of it.
        self.key = f"{MEMORY}{id(self)}" if self._memory else os.path.realpath(self.path)
        #: The rows ``recover`` marked ``interrupted``, for the gateway's audit log (``engine.ledger_interrupted``).
        self.interrupted = InterruptedRows()
        try:
            self._write(ledger_migrations.migrate)
            if not self._memory:  # before recovery: a spooled outcome finishes its row, recovery would not
                from gtl_nb.engine.ledger_spool import replay_spool

                replay_spool(self)
            self.recover()
        except BaseException:
            self.close()
            raise

    # -- writing ------------------------------------------------------------------------------

    def start(
        self,
        *,
        session_id: str | None = None,
        user: str | None = None,
        deployment: str | None = None,
        provider_type: str | None = None,
        model: str | None = None,
        cache_hit: bool = False,
        coalesced: bool = False,
        failover_path: Sequence[str] | None = None,
        tenant: str | None = None,
        key_id: str | None = None,
        trace_id: str | None = None,
        now: float | None = None,
    ) -> int:
        """Insert the row of a request about to be sent, status ``started``; return its id.

        ``user``, ``tenant``, ``key_id`` and ``trace_id`` are the request context's facts
        (``engine.context.RequestContext``; ``user`` is its principal)."""
        when = self._clock() if now is None else float(now)
        values = started_values(
            when,
            session_id=session_id,
            user=user,
            model=model,
            hostname=self.hostname,
            deployment=deployment,
            provider_type=provider_type,
            cache_hit=cache_hit,
            coalesced=coalesced,
            failover_path=failover_path,
            tenant=tenant,
            key_id=key_id,
            trace_id=trace_id,
        )
        return self._write(lambda conn: int(conn.execute(INSERT_STARTED, values).lastrowid or 0))

    def finish(
        self,
        row_id: int,
        *,
        status: str,
        error_code: str | None = None,
        finish_reason: str | None = None,
        deployment: str | None = None,
        provider_type: str | None = None,
        model: str | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        cached_tokens_in: int | None = None,
        cache_write_tokens_in: int | None = None,
        reasoning_tokens_out: int | None = None,
        cost: float | None = None,
        usage_estimated: bool = False,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        cache_hit: bool | None = None,
        coalesced: bool | None = None,
        failover_path: Sequence[str] | None = None,
        now: float | None = None,
    ) -> None:
        """Complete a ``started`` row with its outcome, in exactly one UPDATE.

        ``status`` is ``ok``, ``error``, ``cancelled`` or ``interrupted``. ``deployment``,
        ``provider_type``, ``model``, ``cache_hit``, ``coalesced`` and ``failover_path`` overwrite
        the values given to ``start`` only when not None (failover changes the deployment). Token
        counts, cost, timings and ``finish_reason`` (why an ok answer ended: the ``done`` event's)
        are stored as given (None = unknown); ``usage_estimated`` says the counts and cost are
        gtl_nb's estimate, not the provider's report (a session that ended before its provider
        reported usage); ``latency_ms`` defaults to the wall-clock time since ``start``.

        Raises ``LedgerStateError`` (and changes nothing) when the row does not exist or is no
        longer ``started`` — finished already, or marked ``interrupted`` by recovery.
        """
        if status not in FINAL_STATUSES:
            allowed = ", ".join(FINAL_STATUSES)
            raise LedgerValueError(f"finish status must be one of {allowed}, not {status!r}")
        row_id = int(row_id)
        when = self._clock() if now is None else float(now)
        try:
            clean = clean_finish_fields(
                row_id,
                {
                    "error_code": error_code,
                    "finish_reason": finish_reason,
                    "deployment": deployment,
                    "provider_type": provider_type,
                    "model": model,
                    "tokens_in": tokens_in,
                    "tokens_out": tokens_out,
                    "cached_tokens_in": cached_tokens_in,
                    "cache_write_tokens_in": cache_write_tokens_in,
                    "reasoning_tokens_out": reasoning_tokens_out,
                    "cost": cost,
                    "usage_estimated": usage_estimated,
                    "ttft_ms": ttft_ms,
                    "latency_ms": latency_ms,
                    "cache_hit": cache_hit,
                    "coalesced": coalesced,
                    "failover_path": failover_path,
                },
            )
            values = finish_values(row_id, status, when, clean)
            previous = self._write(lambda conn: _finish_row(conn, _FINISH, values, row_id))
        except (LedgerBusyError, LedgerStateError):
            raise
        except Exception as exc:
            # Whatever went wrong with the details, the row must not stay ``started`` for a request
            # that ended: record the outcome alone, and say what was lost.
            log.warning("ledger row %s: could not record its details (%s); recording its status only", row_id, exc)
            essentials = (status, when, _text(error_code), when, row_id)
            previous = self._write(lambda conn: _finish_row(conn, FINISH_STATUS_ONLY, essentials, row_id))
        if previous == "missing":
            raise LedgerStateError(f"ledger row {row_id} does not exist")
        if previous is not None:
            raise LedgerStateError(f"ledger row {row_id} is already {previous}; it cannot be finished as {status}")

    def recover(self) -> int:
        """Mark ``interrupted`` this host's ``started`` rows whose process is gone; return how many.

        Runs when the ledger is opened. A process is gone when its pid is not running (or is a
        zombie), or runs with another identity (the pid was reused). Rows of other hostnames are
        left alone: this host cannot see their processes. The rows marked — read in the transaction
        that marks them, so a row is handed over once however many processes recover at once — go to
        ``interrupted``, where the gateway's audit log takes them.
        """
        writers = self._read(
            lambda conn: conn.execute(
                f"SELECT DISTINCT pid, proc_start FROM {TABLE} "
                "WHERE status = 'started' AND hostname = ? AND pid IS NOT NULL",
                (self.hostname,),
            ).fetchall()
        )
        # Judge processes outside any transaction (probing may run `ps`), then update in one.
        gone = [(int(pid), identity) for pid, identity in writers if not process_alive(int(pid), identity)]
        if not gone:
            return 0
        when = self._clock()

        wanted = ", ".join(INTERRUPTED_COLUMNS)
        where = "WHERE status = 'started' AND hostname = ? AND pid = ? AND proc_start IS ?"

        def mark(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            marked: list[dict[str, Any]] = []
            for pid, identity in gone:
                key = (self.hostname, pid, identity)
                found = conn.execute(f"SELECT {wanted} FROM {TABLE} {where} ORDER BY id", key).fetchall()
                conn.execute(f"UPDATE {TABLE} SET status = 'interrupted', end_time = ? {where}", (when, *key))
                marked.extend(dict(zip(INTERRUPTED_COLUMNS, row, strict=True)) for row in found)
            return marked

        marked = self._write(mark)
        if marked:
            log.info("ledger %s: %d request(s) of ended processes marked interrupted", self.path, len(marked))
            for row in marked:
                row["end_time"] = when
                row["cache_hit"] = bool(row["cache_hit"])
            self.interrupted.add(marked)
        return len(marked)

    # -- reading ------------------------------------------------------------------------------

    def row(self, row_id: int) -> dict[str, Any] | None:
        """One row as a dict (SQL values; ``failover_path`` as a list, the flags as bool), or None."""
        found = self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join(COLUMN_NAMES)} FROM {TABLE} WHERE id = ?", (int(row_id),)
            ).fetchone()
        )
        return None if found is None else _record(found)

    def rows(self, *, offset: int = 0, limit: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Every matching row as ``row()`` gives it, in id order; filters as ``to_dataframe``'s.

        ``offset`` skips that many matching rows and ``limit`` (None: no limit) caps how many are
        returned — in the SQL, so a page costs its own rows' memory, not every matching row's.
        """
        where, params = _where(filters)
        page = [*params, *page_bounds(offset, limit)]
        found = self._read(
            lambda conn: conn.execute(
                f"SELECT {', '.join(COLUMN_NAMES)} FROM {TABLE}{where} ORDER BY id LIMIT ? OFFSET ?", page
            ).fetchall()
        )
        return [_record(values) for values in found]

    def totals(
        self,
        user: str | None = None,
        since: float | None = None,
        *,
        until: float | None = None,
        tenant: str | None = None,
    ) -> Totals:
        """``(requests, tokens_in + tokens_out, cost)`` of rows started in ``[since, until)``, as
        budgets count them.

        Every row counts as a request (in-flight ones too) except requests refused locally by a
        budget (``RATE_LIMIT``/``BUDGET_EXCEEDED`` that never reached a deployment) — otherwise a
        client waiting the ``retry_after`` it was given would be refused again by its own refusals.
        Tokens of cache hits and coalesced requests are not counted (nothing went upstream for
        them); unknown token counts count as 0; cost sums the known costs only (0.0 when none is
        known). ``user=None`` means every user, ``tenant=None`` every tenant; times are unix seconds.
        """
        filters: dict[str, Any] = {"since": since, "until": until}
        if user is not None:
            filters["user"] = user
        if tenant is not None:
            filters["tenant"] = tenant
        where, params = _where(filters)
        refused = (
            "(status = 'error' AND deployment IS NULL"
            f" AND COALESCE(error_code, '') IN ({', '.join(repr(code) for code in _REFUSALS)}))"
        )
        where = f"{where} AND NOT {refused}" if where else f" WHERE NOT {refused}"
        found = self._read(
            lambda conn: conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(CASE WHEN cache_hit OR coalesced THEN 0 ELSE "
                "COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0) END), 0), "
                f"COALESCE(SUM(cost), 0.0) FROM {TABLE}{where}",
                params,
            ).fetchone()
        )
        return Totals(int(found[0]), int(found[1]), float(found[2]))

    def spend_today(self, user: str | None = None, now: float | None = None) -> float:
        """USD spent by ``user`` (None: everyone) on requests started in the UTC day of ``now``."""
        when = self._clock() if now is None else float(now)
        day = math.floor(when / DAY) * DAY  # unix time has no leap seconds: days are exact multiples
        return self.totals(user, since=day, until=day + DAY).cost

    def to_dataframe(self, **filters: Any) -> pandas.DataFrame:
        """The ledger as a pandas DataFrame, one row per request in id order.

        Filters: any column name with a value (``status="ok"``), None (``IS NULL``) or a list of
        values (``status=["error", "cancelled"]``); ``since`` / ``until`` bound the start time
        (unix seconds or an aware ``datetime``; ``until`` excluded). Columns and dtypes are
        ``ledger_schema.DTYPES``: integers ``Int64``, floats ``float64``, flags ``boolean``, times
        ``datetime64[ns, UTC]``, text ``string``, ``failover_path`` a list (object).
        """
        return frame_from_rows(self.rows(**filters))

    @property
    def busy_timeout(self) -> float:
        """SQLite's own wait for another connection's lock, in seconds."""
        return self._busy_timeout

    @property
    def retry_for(self) -> float:
        """How long a write retries beyond ``busy_timeout`` before ``LedgerBusyError``, in seconds."""
        return self._retry_for

    def vacuum(self) -> None:
        """Rewrite the file so the space of deleted rows goes back to the file system. It holds the
        write lock while it runs (other writers wait, within their ``retry_for``)."""
        with self._lock:
            self._retrying(lambda: self._writer().execute("VACUUM"))

    @property
    def schema_version(self) -> int:
        """How many migrations the file has had (``PRAGMA user_version``)."""
        return self._read(ledger_migrations.user_version)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the writer connection; later calls raise ``LedgerStateError``."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None and self._conn_pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<gtl_nb Ledger {str(self.path)!r}>"

    # -- connections and transactions ---------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, we BEGIN and COMMIT ourselves.
        return sqlite3.connect(
            str(self.path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )

    def _writer(self) -> sqlite3.Connection:
        """The single writer connection (caller holds the lock); reopened in a forked child."""
        if self._closed:
            raise LedgerStateError(f"the ledger {self.path} is closed")
        if self._conn is None or (not self._memory and self._conn_pid != os.getpid()):
            # A connection must not cross fork(): a child opens its own and keeps the parent's
            # unused and referenced, so garbage collection never closes it under the parent.
            if self._conn is not None:
                _INHERITED.append(self._conn)
            self._conn = self._retrying(self._open_writer)
            self._conn_pid = os.getpid()
        return self._conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":  # e.g. a network file system without shared memory
                    log.warning("ledger %s: journal mode %s, not WAL; readers may wait for writers", self.path, mode)
                # In WAL mode NORMAL is safe against application crashes; only power loss may drop
                # the last transactions.
                conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def transaction(self, work: Callable[[sqlite3.Connection], T], *, wait: bool = True) -> T:
        """Run ``work`` in one short ``BEGIN IMMEDIATE`` transaction on the writer connection,
        retried while another process holds the lock (``LedgerBusyError`` after ``retry_for``).

        ``wait=False`` tries once and never waits for a lock (an event loop's thread must not):
        busy, locked or failing, it raises ``LedgerError`` with the transaction rolled back."""
        if wait:
            return self._write(work)
        restore = f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}"

        def restored_first(conn: sqlite3.Connection) -> T:
            conn.execute(restore)  # the lock is taken: nothing after the COMMIT can fail the commit
            return work(conn)

        with self._lock:
            conn = self._writer()
            if self._memory:  # nobody else can hold an in-memory database's lock
                return run_transaction(conn, work)
            conn.execute("PRAGMA busy_timeout = 0")  # for BEGIN IMMEDIATE, the one statement that waits
            try:
                return run_transaction(conn, restored_first)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(restore)  # the BEGIN failed before restored_first ran
                if isinstance(exc, sqlite3.Error):
                    raise LedgerError(f"ledger {self.path}: {exc}") from exc
                raise

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the file, as far as readers allow (SQLite's
        ``PASSIVE`` checkpoint: it waits for nobody). For a writer that turned SQLite's automatic
        checkpoints off (``without_auto_checkpoints``) so that a commit never syncs the disk."""
        if self._memory:
            return
        with self._lock:
            self._retrying(lambda: self._writer().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    def without_auto_checkpoints(self) -> int:
        """Stop this connection's commits from checkpointing the write-ahead log (a checkpoint syncs
        the disk, milliseconds at least); its owner calls ``checkpoint`` instead, off the request path.
        Returns the setting it replaced (pages, for ``with_auto_checkpoints``)."""
        if self._memory:
            return 0

        def swap() -> int:
            conn = self._writer()
            before = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
            conn.execute("PRAGMA wal_autocheckpoint = 0").fetchone()
            return before

        with self._lock:
            return self._retrying(swap)

    def with_auto_checkpoints(self, pages: int = 1000) -> None:
        """Checkpoint again in a commit that finds the log longer than ``pages`` (SQLite's default:
        1,000), undoing ``without_auto_checkpoints``."""
        if self._memory or self._closed:
            return
        with self._lock:
            self._retrying(lambda: self._writer().execute(f"PRAGMA wal_autocheckpoint = {int(pages)}").fetchone())

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one short ``BEGIN IMMEDIATE`` transaction, retried while the file is busy."""
        with self._lock:
            return self._retrying(lambda: run_transaction(self._writer(), work))

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on a reader connection of its own (WAL readers never block writers), after
        the writes this process queued for the file before the call are committed."""
        flush = _PENDING_WRITES.get(self.key)
        if flush is not None:  # read-your-writes: a queued row is in the file before we look
            flush()
        if self._memory:  # an in-memory database exists only in its one connection
            with self._lock:
                return self._retrying(lambda: work(self._writer()))
        if self._closed:
            raise LedgerStateError(f"the ledger {self.path} is closed")

        def attempt() -> T:
            conn = self._connect()
            try:
                conn.execute("PRAGMA query_only = ON")
                return work(conn)
            finally:
                conn.close()

        return self._retrying(attempt)

    def stop_waiting(self) -> None:
        """From now on a write that finds the file locked by another process raises ``LedgerBusyError``
        after SQLite's own wait (``busy_timeout``) instead of retrying for ``retry_for``: what a writer
        past its stop's deadline asks of the ledger it writes through, so it can spool what it holds."""
        self._no_more_waits = True

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying with jittered backoff while SQLite reports busy/locked."""
        return retry_while_busy(
            operation,
            retry_for=self._retry_for,
            what=f"ledger {self.path}",
            error=LedgerError,
            busy_error=LedgerBusyError,
            stop=self._stopped_waiting,
            file=self.path,
        )

    def _stopped_waiting(self) -> bool:
        return self._no_more_waits


# ----------------------------------------------------------------------------------------------
# writes queued in this process (engine.ledger_writer): every reader flushes them first

_PENDING_WRITES: dict[str, Callable[[], None]] = {}


def register_pending_writes(key: str, flush: Callable[[], None]) -> None:
    """Make every read of the ledger ``key`` (``Ledger.key``) in this process call ``flush`` first:
    ``flush`` returns once the writes queued before it was called are committed."""
    _PENDING_WRITES[key] = flush


def unregister_pending_writes(key: str, flush: Callable[[], None]) -> None:
    """Undo ``register_pending_writes`` (only if ``flush`` is still the one registered for ``key``)."""
    if _PENDING_WRITES.get(key) == flush:
        del _PENDING_WRITES[key]


def _forget_pending_writes() -> None:
    # A forked child has none of its parent's writer threads: waiting on them would never end.
    _PENDING_WRITES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pending_writes)


# ----------------------------------------------------------------------------------------------
# helpers


def _create_private_file(path: Path) -> None:
    create_private_file(
        path,
        what="ledger",
        advice="pass ledger= a file path in a writable directory, or ledger=False to keep no ledger",
        error=LedgerLocationError,
    )


_LEDGERS: weakref.WeakSet[Ledger] = weakref.WeakSet()
"""Every open ``Ledger`` of the process, for the one fork handler (one handler registered per ledger was
never removed: two more with every ``connect()``)."""


def _reset_locks() -> None:
    """In a forked child: a fork while another thread held a ledger's lock would leave the child's copy
    locked for ever."""
    for ledger in list(_LEDGERS):
        ledger._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks)


_ISO_SECOND: tuple[int, str] = (-1, "")
"""The last whole second ``iso_utc`` formatted, and its text up to the seconds (replaced as one tuple:
a thread reads an old pair or a new one, never half of each)."""


def iso_utc(seconds: float) -> str:
    """Unix seconds as UTC ISO 8601 to the millisecond, as the ledger's ``time_utc`` column and the
    audit log write them: ``2024-05-01T12:00:00.250Z``.

    Every request is stamped, so the date and time of day are formatted once per second and only the
    milliseconds per call (``datetime.isoformat`` cost ~7 k instructions a row). The text is what
    ``datetime.fromtimestamp(...).isoformat(timespec="milliseconds")`` gives: microseconds rounded
    half-even (a carry moves to the next second), then cut.
    """
    global _ISO_SECOND
    if not 0 <= seconds < 1e11:  # (never a wall clock: the general path)
        stamp = datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")
    whole = int(seconds)
    micros = round((seconds - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    second, text = _ISO_SECOND
    if second != whole:
        text = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _ISO_SECOND = (whole, text)
    return f"{text}.{micros // 1000:03d}Z"


def _optional_bool(value: bool | None) -> int | None:
    return None if value is None else int(bool(value))


def _path_steps(path: Sequence[str] | str | None) -> list[str] | None:
    """The failover path as the list of text a row stores (raises for a path that is no sequence)."""
    if path is None:
        return None
    if isinstance(path, str):  # one deployment, not a sequence of characters
        return [path]
    return [str(step) for step in path]


def _path_json(path: Sequence[str] | str | None) -> str | None:
    """The failover path's column text: ``json.dumps`` of its steps, made without the encoder's set-up
    (a list of strings is its items, each as ``encode_basestring_ascii`` writes it, joined by ``", "``)."""
    steps = _path_steps(path)
    return None if steps is None else "[" + ", ".join(map(encode_basestring_ascii, steps)) + "]"


def _path_list(text: str | None) -> list[str] | None:
    return None if text is None else list(json.loads(text))


_INT64_MAX = 2**63 - 1  # SQLite's INTEGER range; a larger count raises OverflowError when bound


def _count(value: Any, column: str, row_id: int) -> int | None:
    """A token count as SQLite can store it; an implausible one (negative, beyond 64 bits, not an
    integer) is stored as unknown, with a warning, rather than failing the row."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT64_MAX:
        log.warning("ledger row %s: %s %.40r is not a plausible token count; stored as unknown", row_id, column, value)
        return None
    return value


def _finish_reason(value: Any, row_id: int) -> str | None:
    """A ``finish_reason`` as a row keeps it: text of at most ``FINISH_REASON_MAX`` characters (a
    longer one cut, with a warning); anything that is no text is stored as unknown, with a warning
    (the ``str`` of an arbitrary object is no reason a reader could group by)."""
    if value is None:
        return None
    if not isinstance(value, str):
        log.warning("ledger row %s: finish_reason %.40r is not text; stored as unknown", row_id, value)
        return None
    text = str.__str__(value)  # a str subclass (an enum's member) as its text, not its repr-like str()
    if not text.isascii():  # (every provider's reason is ASCII; a lone surrogate would cost the row its details)
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) > FINISH_REASON_MAX:
        log.warning(
            "ledger row %s: finish_reason %.40r is longer than %d characters; cut", row_id, text, FINISH_REASON_MAX
        )
        text = text[:FINISH_REASON_MAX]
    return text


def _measure(value: Any, column: str, row_id: int) -> float | None:
    """A cost or duration as a finite float; anything else is stored as unknown, with a warning."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        log.warning("ledger row %s: %s %.40r is not a finite number; stored as unknown", row_id, column, value)
        return None
    return number


def _text(value: Any) -> str | None:
    """A text column's value: ``None`` or ``str`` (other values are written as their ``str``)."""
    return None if value is None else str(value)


def bound_seconds(value: Any) -> float:
    """A ``since``/``until`` bound as unix seconds: a number, a timezone-aware ``datetime``, ISO-8601
    text with its offset (``"2026-12-01T00:00:00Z"``), or a day alone — a ``date`` or
    ``"2026-12-01"`` — which starts at midnight UTC, as the ledger's ``time_utc`` counts days."""
    if isinstance(value, str):
        text = value.strip()
        # unix seconds as text, as float() always took them — in ASCII digits (float() takes other scripts'
        # too); eight digits are a day written without dashes (20200101), not a time in 1970
        if text.isascii() and not (len(text) == 8 and text.isdigit()):
            try:
                return _finite(float(text), value)
            except ValueError:
                pass
        if len(text) in (8, 10):  # YYYY-MM-DD or YYYYMMDD: a day has no time to be ambiguous about
            with contextlib.suppress(ValueError):
                value = date.fromisoformat(value.strip())
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise LedgerValueError(_BOUND_ADVICE.format(value=value[:60])) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise LedgerValueError(
                "since/until datetimes must be timezone-aware (UTC is safest): add tzinfo=timezone.utc, "
                "or an offset such as Z or +00:00 to the text"
            )
        return value.timestamp()
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)  # (numpy's numbers too)
    except (TypeError, ValueError):
        raise LedgerValueError(_BOUND_ADVICE.format(value=repr(value)[:60])) from None
    return _finite(seconds, value)


def _finite(seconds: float, value: Any) -> float:
    """``seconds``, refused when not a finite number (NaN matched no row embedded and every row through
    a gateway's query: neither is what was asked)."""
    if not math.isfinite(seconds):
        raise LedgerValueError(_BOUND_ADVICE.format(value=repr(value)[:60]))
    return seconds


_BOUND_ADVICE = (
    "since/until takes unix seconds, a timezone-aware datetime, ISO-8601 text with its offset "
    "('2026-12-01T00:00:00Z') or a day ('2026-12-01', from midnight UTC), not {value}"
)


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """A WHERE clause from keyword filters; column names come from the schema, values are bound."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in filters.items():
        if key in ("since", "until"):
            if value is not None:
                clauses.append("time >= ?" if key == "since" else "time < ?")
                params.append(bound_seconds(value))
        elif key not in COLUMN_NAMES:
            raise LedgerValueError(unknown_filter(key))
        elif value is None:
            clauses.append(f"{key} IS NULL")
        elif isinstance(checked_filter_value(key, value), (list, tuple, set, frozenset)):
            values = [_bindable(v) for v in value]
            clauses.append(f"{key} IN ({', '.join('?' * len(values))})" if values else "0")
            params.extend(values)
        else:
            clauses.append(f"{key} = ?")
            params.append(_bindable(value))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def page_bounds(offset: int, limit: int | None) -> tuple[int, int]:
    """``(limit, offset)`` for SQL's ``LIMIT ? OFFSET ?`` (a negative limit is SQLite's "no limit");
    ``LedgerValueError`` for a negative or non-integer offset or limit."""
    for name, value in (("offset", offset), ("limit", limit)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise LedgerValueError(f"the ledger's {name} must be a whole number of rows, 0 or more")
    # (past SQLite's largest integer: no row is there, and SQLite cannot bind the number)
    return (-1 if limit is None else min(limit, _LARGEST_ROWS)), min(offset, _LARGEST_ROWS)


_LARGEST_ROWS = 2**63 - 1


def unknown_filter(key: str) -> str:
    """What an unknown filter's error says (grouping, a table's job, named when it was asked for)."""
    message = f"unknown ledger filter {key!r}; use since, until or a column: {', '.join(COLUMN_NAMES)}"
    if key in ("by", "group", "group_by", "groupby"):
        message += " (to group rows: gtl_nb.analysis.usage_table(client.usage(), by=...), or %gtl usage --by)"
    return message


def row_filter(filters: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    """The rows ``to_dataframe(**filters)`` selects, as a predicate over row dicts (the same filters,
    the same ``LedgerValueError`` for an unknown one, SQL's rule that NULL matches no value)."""
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    for key, value in filters.items():
        if key in ("since", "until"):
            if value is not None:
                bound = bound_seconds(value)
                if key == "since":
                    tests.append(lambda row, b=bound: row["time"] >= b)
                else:
                    tests.append(lambda row, b=bound: row["time"] < b)
        elif key not in COLUMN_NAMES:
            raise LedgerValueError(unknown_filter(key))
        elif value is None:
            tests.append(lambda row, k=key: row[k] is None)
        elif isinstance(checked_filter_value(key, value), (list, tuple, set, frozenset)):
            wanted = [v for v in value if v is not None]
            tests.append(lambda row, k=key, w=wanted: row[k] is not None and row[k] in w)
        else:
            tests.append(lambda row, k=key, v=value: row[k] is not None and row[k] == v)
    return lambda row: all(test(row) for test in tests)


_FILTER_VALUES = (str, numbers.Real)
"""What a filter compares a column with (``bool`` is an ``int``; numpy's numbers are ``Real`` too): a
column holds text or numbers."""


def _not_a_value(key: str) -> str:
    return f"the filter {key!r} takes text or a number, or a list of them, to match the column with"


def checked_filter_value(key: str, value: Any) -> Any:
    """``value`` of the filter ``key`` when a column can be matched with it (``None``, text, a number, or
    a list of those); else ``LedgerValueError`` — a dict from a query's JSON reached SQL, which cannot
    bind it, and read as a store away. Every ledger's ``rows``/``to_dataframe`` filters go through it."""
    values = value if isinstance(value, (list, tuple, set, frozenset)) else (value,)
    if not all(v is None or (isinstance(v, _FILTER_VALUES) and _storable_number(v)) for v in values):
        raise LedgerValueError(_not_a_value(key))
    return value


def _storable_number(value: Any) -> bool:
    """Whether ``value`` (text or a number) can be compared in SQL: an integer within 64 bits (a larger one
    raised ``OverflowError`` when bound), a finite float; text always."""
    if isinstance(value, numbers.Integral):
        return -(2**63) <= int(value) < 2**63
    return not isinstance(value, numbers.Real) or math.isfinite(float(value))


def refused_by_budget(row: Mapping[str, Any]) -> bool:
    """Whether a row is a request a budget refused before it reached a deployment (``totals`` skips them)."""
    return row["status"] == "error" and row["deployment"] is None and row["error_code"] in _REFUSALS


def _bindable(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


def _record(values: Sequence[Any]) -> dict[str, Any]:
    """A SELECT of every column as the dict readers get: ``failover_path`` a list, the flags bool."""
    record = dict(zip(COLUMN_NAMES, values, strict=True))
    record["failover_path"] = _path_list(record["failover_path"])
    record["cache_hit"] = bool(record["cache_hit"])
    record["coalesced"] = bool(record["coalesced"])
    if record["usage_estimated"] is not None:  # (NULL: a row still started, or written before version 7)
        record["usage_estimated"] = bool(record["usage_estimated"])
    return record


def frame_from_rows(rows: Iterable[Mapping[str, Any]]) -> pandas.DataFrame:
    """The DataFrame ``Ledger.to_dataframe`` returns, built from row dicts (``UsageLedger.rows()``).

    Columns and dtypes are ``ledger_schema.DTYPES`` whatever the rows hold (also for no rows), so a
    frame from a remote store's rows equals the one a local file gives."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency, but be explicit
        raise LedgerError("to_dataframe needs pandas: pip install pandas") from None
    rows = list(rows)
    return pd.DataFrame({name: _series(pd, name, [row.get(name) for row in rows]) for name in DTYPES})


def _series(pd: Any, name: str, values: Iterable[Any]) -> Any:
    """One DataFrame column with the dtype ``ledger_schema`` fixes for it."""
    dtype = DTYPES[name]
    values = list(values)
    if dtype == DATETIME:
        seconds = pd.Series(values, dtype="float64")
        return pd.to_datetime(seconds, unit="s", utc=True).astype(DATETIME)
    if dtype == "boolean":
        return pd.Series([None if v is None else bool(v) for v in values], dtype="boolean")
    if dtype == LIST:
        paths = [_path_list(v) if isinstance(v, str) else None if v is None else list(v) for v in values]
        return pd.Series(paths, dtype="object")
    return pd.Series(values, dtype=dtype)
