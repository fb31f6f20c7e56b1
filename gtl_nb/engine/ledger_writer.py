"""The ledger's writer: one per ledger file per process takes the rows off the request path.

``SqliteUsageLedger.start`` and ``finish`` put an operation on the writer's queue and return at
once; ``start`` returns a *row handle* (a negative int, so it is never mistaken for a row id).
Everything queued (up to ``max_batch``) is written in ONE transaction — a group commit — once every
``group_commit`` seconds (``[ledger] group_commit_ms``, default ``lingering.GROUP_COMMIT``). So the
window a SIGKILL can lose is at most ``group_commit`` plus the batch being written — also while another
process holds the file's write lock, once it has held it ``BLOCKED_AFTER`` seconds: the writes then go to
the spool every window (``engine.ledger_spool``) and are written into the file, once, when the lock goes. A request that
ended before its start was written is one INSERT of the finished row.

Who commits: the event loop that queued the operations, a window after the first of them, in one
attempt that waits for nothing (see "the loop's commits" in the class) — a second thread taking the
interpreter's lock back from a busy loop cost more than the writing. The writer's thread does all
that may wait: a batch the loop could not write at once (a lock held by another process, a full
disk, a bad value), reads waiting for the queue, back-pressure, retention, checkpoints, the drain at
``close``, and what a caller without a loop, or a stopped or blocked loop, leaves queued. A busy
thread is not woken per operation (that cost a wake-up and a GIL handover per request) but looks
again every ``group_commit`` seconds; an idle one (nothing for ``IDLE_AFTER`` seconds) is woken by
the next operation.

Guarantees (``docs/ledger.md``, "How rows are written"):

* **Nothing is dropped quietly.** A failed commit (disk full, locked by another process) is
  logged and the same batch retried, with backoff, until it lands — a lock held for ``BLOCKED_AFTER``
  seconds is said once (a warning, and ``degraded_reason`` for ``/readyz``), and its end once; one
  request's unstorable values never fail the others (``engine.ledger_batch``). A batch that fails
  for anything but the file — a value or a defect that no retry changes — is written an operation at
  a time, and only an operation that fails alone is dropped, with an error naming it: one bad row never stalls the rest.
* **Read-your-writes.** Every read through a ``Ledger`` of the same file in this process first waits
  for the writes queued before it (``flush``, through ``ledger.register_pending_writes``), and so
  does the budget counter that reads the ledger's rows (``flush_rows_of``).
* **Bounded memory.** At most ``max_pending`` operations wait; a ``start`` beyond that waits for
  room (back-pressure). A ``finish`` is always accepted: there is at most one per started request.
* **Exactly one outcome.** A handle is finished once; the second ``finish`` raises
  ``LedgerStateError`` at once, from memory (the first outcome wins).
* **Drained at the end.** ``close`` (the last user's ``aclose``) and interpreter exit (``atexit``)
  write everything queued before they return, waiting up to ``retry_for`` for a failing file; what a
  file locked past that deadline still refuses goes to its spool (``engine.ledger_spool``), which the
  next opening of the ledger writes.

A forked child never touches its parent's writer (its thread does not exist there): it starts its
own on first use, and the parent's queued rows stay the parent's to write.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import sqlite3
import threading
import time
from collections import ChainMap, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any

from gtl_nb.engine.ledger import (
    MEMORY,
    Ledger,
    LedgerBusyError,
    LedgerError,
    LedgerStateError,
    LedgerValueError,
    register_pending_writes,
    unregister_pending_writes,
)
from gtl_nb.engine.ledger_batch import Finish, Start, write_batch
from gtl_nb.engine.ledger_retention import PRUNE_EVERY, Retention, prune
from gtl_nb.engine.ledger_spool import SpoolWriter, replay_spool, rows_of_lines, spool_path
from gtl_nb.engine.ledger_watermark import Watermark
from gtl_nb.engine.lingering import GROUP_COMMIT, checked_window
from gtl_nb.engine.loop import stop_shared_loop
from gtl_nb.engine.sqlite_files import is_busy
from gtl_nb.log import get_logger

__all__ = [
    "BLOCKED_AFTER",
    "MAX_BATCH",
    "MAX_PENDING",
    "LedgerWriter",
    "acquire_writer",
    "flush_rows_of",
    "release_writer",
]

log = get_logger("engine.ledger")

MAX_PENDING = 10_000  # queued operations before a start waits: a few MB at most
MAX_BATCH = 1_000  # operations per transaction: the write lock is held for milliseconds, not seconds
IDLE_AFTER = 0.5  # seconds without work after which the writer sleeps until an operation wakes it
BACKSTOP_WINDOWS = 3  # windows a queued operation waits for its loop's commit before the thread writes it
CHECKPOINT_EVERY = 0.25  # seconds from a commit to the thread's checkpoint of the write-ahead log
_REPORT_EVERY = 30.0  # seconds between two log lines about the same failing commit
GIVE_UP_MARGIN = 5.0  # seconds beyond the ledger's busy_timeout a close waits for the thread to spool
BLOCKED_AFTER = 1.0  # seconds another process's write lock holds the commits back before the ledger says so
# (and spools them: see "a write lock held by another process" in the class)
_BLOCKED: dict[int, int] = {}  # what _write returns for a batch the lock held past BLOCKED_AFTER (to spool)


class LedgerWriter:
    """The writer of one ledger database: its thread, and the loops that commit (module docstring).

    ``ledger`` is the connection it writes through (closed with the writer when ``owns_ledger``).
    ``clock`` is wall-clock unix seconds, for retention; ``prune_every`` the seconds between two
    prunes; ``wait_for`` bounds how long ``flush`` and ``close`` wait for a failing file (default:
    the ledger's ``retry_for``); ``group_commit`` the seconds a busy writer gathers operations into
    one commit (``GROUP_COMMIT``); ``loop_commits``: the loop that queues operations commits them
    (else every commit is the thread's)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        owns_ledger: bool = False,
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        prune_every: float = PRUNE_EVERY,
        wait_for: float | None = None,
        group_commit: float = GROUP_COMMIT,
        loop_commits: bool = False,
    ) -> None:
        self.ledger = ledger
        self.loop_commits = loop_commits
        self.group_commit = checked_window(group_commit)
        self.max_pending = max(1, max_pending)
        self.max_batch = max(1, max_batch)
        self.wait_for = ledger.retry_for if wait_for is None else wait_for
        self.forked = False  # set in a forked child: this object is its parent's
        self._owns_ledger = owns_ledger
        self._clock = clock
        self._prune_every = prune_every
        self._retention = retention if retention is not None and retention.enabled else None
        self._next_prune = -float("inf")  # the first prune runs when the writer starts
        lock = threading.Lock()
        self._lock = lock
        self._wake = threading.Condition(lock)  # the thread: something to do
        self._room = threading.Condition(lock)  # starts waiting for the queue to shrink
        self._done = threading.Condition(lock)  # flushes waiting for a commit
        self._queue: deque[Start | Finish] = deque()
        self._queued_starts: dict[int, Start] = {}  # starts not yet taken: a finish merges into them
        self._open: dict[int, str | None] = {}  # handle -> user of every started, unfinished request
        self._inflight: list[Start | Finish] = []  # the batch being written
        self._rowids: dict[int, int] = {}  # the writer thread's own: handle -> row id of rows left started
        self._next_handle = -1
        self._seq = 0  # changes queued so far
        # every change numbered up to this one is written (or reported lost), and the calls waiting for it
        self._committed = Watermark(f"ledger {ledger.path}", log, lock=lock)
        # ... or safe in the spool (a lock held past BLOCKED_AFTER): what when_committed waits for
        self._durable = Watermark(f"ledger {ledger.path}", log, lock=lock)
        self._idle = False
        self._last_work = -float("inf")  # monotonic time of the last commit: the writer starts idle
        self._closing = False
        self._abandoned = False  # past the stop's deadline: what cannot be written now is spooled
        self._abandon = threading.Event()  # the same, for the thread's sleeps between attempts
        self._spool: SpoolWriter | None = None  # made when first needed (ledger_spool)
        self._urgent = False  # a start waiting for room: the thread writes now, whoever commits
        self._flush_target = 0  # a flush waits for this change: the thread writes until it is written
        self._blocked_since: float | None = None  # monotonic time a commit first found the file locked
        self._blocked_said = False  # ... for BLOCKED_AFTER or longer: degraded_reason says so
        # writes spooled while the lock held (see "a write lock held by another process"): until the spool
        # is replayed into the file nothing is written to it directly, and readers wait for the replay
        self._spool_pending = False
        self._spooled_bound = 0  # the last change spooled
        self._spooled_count = 0  # writes spooled since the lock began
        self._next_replay = 0.0  # monotonic time of the thread's next try at the replay
        # commits on the loop (see "the loop's commits" below)
        self._commit_lock = threading.Lock()  # held by whoever writes to the file: the thread or the loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop that commits while it runs
        self._loop_thread = 0  # its thread's ident
        self._loop_due = False  # a commit is scheduled on it
        self._queued_since = 0.0  # monotonic time the queue last went from empty to not
        self._handed_back: tuple[list[Start | Finish], int] | None = None  # a batch the loop could not write
        self._next_checkpoint = 0.0  # monotonic time; 0: nothing committed since the last checkpoint
        self._auto_checkpoint = ledger.without_auto_checkpoints() if loop_commits else None
        # (a commit on the loop must never sync the disk: the thread checkpoints instead)
        self._thread = threading.Thread(target=self._run, name=f"gtl_nb ledger writer {ledger.path}", daemon=True)
        self._thread.start()

    # -- the request path (any thread) ---------------------------------------------------------

    def start(
        self,
        when: float,
        *,
        session_id: str | None,
        user: str | None,
        model: str | None,
        tenant: Any = None,
        key_id: Any = None,
        trace_id: Any = None,
    ) -> int | None:
        """Queue a request's start; its row handle, or ``None`` when the queue is full (wait for
        ``wait_for_room`` and try again)."""
        with self._lock:
            if self._closing:
                raise LedgerStateError(f"the ledger {self.ledger.path} is closed")
            if len(self._queue) >= self.max_pending:
                self._urgent = True
                self._wake.notify()  # a lingering writer looks now: a start is waiting for room
                return None
            self._seq += 1
            handle = self._next_handle
            self._next_handle -= 1
            op = Start(handle, self._seq, when, session_id, user, model, tenant, key_id, trace_id)
            self._enqueue(op)
            self._queued_starts[handle] = op
            self._open[handle] = user
        return handle

    def finish(self, handle: int, status: str, when: float, fields: dict[str, Any]) -> None:
        """Queue a request's outcome (``status`` and ``fields`` are checked by the caller); raise
        ``LedgerStateError`` for a handle that is not open — finished already, or never started."""
        with self._lock:
            if self._closing:
                raise LedgerStateError(f"the ledger {self.ledger.path} is closed")
            if handle not in self._open:
                if self._next_handle < handle < 0:
                    raise LedgerStateError(
                        f"ledger row handle {handle} is already finished; it cannot be finished as {status} "
                        "(the first outcome wins)"
                    )
                raise LedgerStateError(f"ledger row handle {handle} does not exist")
            self._seq += 1
            end = Finish(handle, self._seq, status, when, fields, self._open.pop(handle))
            queued = self._queued_starts.pop(handle, None)
            if queued is not None:
                queued.finish = end  # not written yet: one INSERT of the finished row
                return
            self._enqueue(end)

    def _enqueue(self, op: Start | Finish) -> None:
        """Queue ``op`` and see that someone writes it (caller holds the lock): the loop of this
        thread if it commits, else the writer thread."""
        if not self._queue:
            self._queued_since = time.monotonic()
        self._queue.append(op)
        if self._loop_thread == threading.get_ident():
            if not self._loop.is_running():  # type: ignore[union-attr]  # stopped or closed: another may run here
                self._forget_loop()
                self._adopt_running_loop()
            elif not self._loop_due:
                self._schedule_loop_commit()
        elif self.loop_commits and self._loop is None:
            self._adopt_running_loop()
        if self._idle:
            self._wake.notify()

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until a ``start`` would be accepted (or the writer closes); False after ``timeout``."""
        with self._lock:
            return self._room.wait_for(lambda: len(self._queue) < self.max_pending or self._closing, timeout)

    # -- readers ----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything queued before the call is committed; ``LedgerBusyError`` if that
        takes longer than ``timeout`` (default ``wait_for``: the file keeps failing, see the log).
        A no-op on the writer's own thread (its reads come between its commits)."""
        if threading.current_thread() is self._thread:
            return
        with self._lock:
            target = self._seq
            if self._committed.value >= target:
                return
            self._wake.notify()  # a lingering writer looks now: a reader is waiting
            limit = self.wait_for if timeout is None else timeout
            self._flush_target = max(self._flush_target, target)  # the thread writes until it is reached
            if not self._done.wait_for(lambda: self._committed.value >= target, limit):
                behind = len(self._queue) + len(self._inflight)
                raise LedgerBusyError(
                    f"the ledger {self.ledger.path} has not taken {behind} queued write(s) for {limit:g} s; see the log"
                )

    def when_committed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once every change queued before this call is written (or reported
        lost): at once when nothing is waiting, else from whoever commits — the writer's thread or the
        loop that committed, right after the commit — so it must be quick and thread-safe. What waits
        for a row's durability without waiting on the request path (the gateway's audit log: a record
        reaches its file only once its row is in the ledger's). Changes a ``close`` past its
        deadline spooled count as written (the next opening writes them); never called for those it
        lost."""
        with self._lock:
            target = self._seq
        self._durable.call_when(target, callback)

    def flush_user(self, user: str | None) -> None:
        """``flush``, if any write still queued or being written is a row of ``user``."""
        with self._lock:
            waiting = any(op.user == user for op in chain(self._queue, self._inflight))
        if waiting:
            self.flush()

    def pending(self) -> int:
        """How many operations are queued or being written."""
        with self._lock:
            return len(self._queue) + len(self._inflight)

    # -- retention --------------------------------------------------------------------------------

    def set_retention(self, retention: Retention | None) -> None:
        """Prune by ``retention`` from now on, starting with a prune as soon as the writer is free."""
        with self._lock:
            self._retention = retention if retention is not None and retention.enabled else None
            self._next_prune = -float("inf")
            self._wake.notify()

    # -- the end ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether it refuses new work (it may still be writing what it holds)."""
        return self._closing

    def stop_taking(self) -> None:
        """Refuse new starts and finishes from now on, and let the thread end once it has written
        what it holds (``close`` also waits for that)."""
        with self._lock:
            self._closing = True
            self._wake.notify()
            self._room.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the thread (and close the ledger it owns). New starts
        and finishes are refused from now on. After ``timeout`` (default ``wait_for``) of a failing
        file the thread stops waiting — its attempt under way ends within the ledger's ``busy_timeout``
        — and appends what it could not write to the file's spool (``engine.ledger_spool``), which the
        next opening of the ledger writes; only what even the spool refuses is lost, with an error
        naming how many."""
        self.stop_taking()
        if threading.current_thread() is self._thread:
            return  # it ends (and closes its ledger) once it has written what it holds
        self._thread.join(self.wait_for if timeout is None else timeout)
        unregister_pending_writes(self.ledger.key, self.flush)  # readers waited for the drain until now
        if self._thread.is_alive():
            self._abandoned = True
            self._abandon.set()
            if self.ledger.path != MEMORY:  # (an in-memory ledger is its readers' too, and never locked)
                self.ledger.stop_waiting()
            # the attempt under way, then one at what was queued behind it: SQLite's wait each, at most
            self._thread.join(2 * self.ledger.busy_timeout + GIVE_UP_MARGIN)
        if self._thread.is_alive():
            log.error(
                "ledger %s: %d queued write(s) could not be written and are lost", self.ledger.path, self.pending()
            )

    # -- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._thread_writes() or self._closing or self._prune_due() or self._checkpoint_due()):
                    if (
                        self._queue
                        or self._next_checkpoint
                        or self._spool_pending
                        or time.monotonic() - self._last_work < IDLE_AFTER
                    ):
                        # busy, work queued for a loop, a checkpoint to come: look again soon; _idle
                        # stays False, nobody notifies
                        self._wake.wait(self.group_commit)
                        continue
                    self._idle = True
                    self._wake.wait(self._prune_every if self._retention is not None else None)
                    self._idle = False
                prune_now = self._prune_due()
            with self._commit_lock:  # a loop's commit in flight ends first: it may hand its batch back
                with self._lock:
                    done = not (self._queue or self._handed_back or prune_now) and self._closing
                if done:
                    if self._spool_pending and not self._abandoned:  # a last try (else the next opening writes it)
                        self._next_replay = 0.0
                        self._try_replay()
                    break
                if prune_now:
                    self._prune()
                spool_window = False
                if self._spool_pending:  # (also with nothing queued: the spooled rows reach the file)
                    with self._lock:  # this window's queue goes to the spool (or, the lock gone, into the
                        spool_window = bool(self._queue) and self._thread_writes()  # file): decided before
                    self._try_replay()  # the try moves the next one a window on (which _thread_writes reads)
                with self._lock:  # decided now, not before the wait for the commit lock: the loop
                    batch, bound = None, 0  # may have written everything meanwhile
                    if self._handed_back is not None:  # older than anything queued: written first
                        (batch, bound), self._handed_back = self._handed_back, None
                    elif self._closing or spool_window or self._thread_writes():
                        batch, bound = self._take()
                    self._urgent = False
                if batch:
                    self._commit(batch)
                    self._last_work = time.monotonic()
                if batch is not None:
                    self._committed_up_to(bound)
                if self._checkpoint_due():
                    self._checkpoint()
        if self._owns_ledger:
            self.ledger.close()
        elif self._auto_checkpoint is not None:  # its owner writes on without this writer's checkpoints
            try:
                self.ledger.with_auto_checkpoints(self._auto_checkpoint)
            except Exception as exc:  # closed by its owner meanwhile: nothing left to checkpoint for
                log.debug("ledger %s: automatic checkpoints not restored: %s", self.ledger.path, exc)

    def _thread_writes(self) -> bool:
        """Whether the thread should write now (caller holds the lock): a batch handed back, a reader
        waiting, or work queued that no loop is committing — none adopted, or its commit overdue
        (a stopped, closed or blocked loop)."""
        if self._spool_pending:  # a try at the replay (and the spooling of what queued) every window
            return self._urgent or time.monotonic() >= self._next_replay
        if self._handed_back is not None or self._urgent or self._committed.value < self._flush_target:
            return True
        if not self._queue:
            return False
        if self._loop is None:
            return True
        if not self._loop.is_running():  # stopped or closed: its queued work is the thread's now
            self._forget_loop()
            return True
        return time.monotonic() - self._queued_since >= BACKSTOP_WINDOWS * self.group_commit

    def _take(self) -> tuple[list[Start | Finish], int]:
        """The next batch, removed from the queue, and the number of the last change it leaves
        written (caller holds the lock)."""
        count = min(len(self._queue), self.max_batch)
        batch = [self._queue.popleft() for _ in range(count)]
        for op in batch:
            if isinstance(op, Start):
                self._queued_starts.pop(op.handle, None)  # written now: a later finish is an UPDATE
        self._inflight = batch
        if count:
            self._room.notify_all()
        if self._queue:
            self._queued_since = time.monotonic()
            return batch, self._queue[0].seq - 1
        return batch, self._seq

    def _committed_up_to(self, bound: int) -> None:
        """Every change numbered up to ``bound`` is written: wake the flushes waiting for it, and an
        idle thread after a loop's commit (it owes the log a checkpoint)."""
        with self._lock:
            self._inflight = []
            ready = self._durable.raise_locked(bound)
            if not self._spool_pending:  # (spooled: safe, but in the file only once the replay wrote them)
                self._committed.raise_locked(bound)
            self._done.notify_all()
            if self._idle:
                self._wake.notify()
        self._durable.run(ready)  # in the order of their changes; one that fails never stops the writer

    def _commit(self, batch: list[Start | Finish]) -> None:
        """Write ``batch`` in one transaction, retrying (and saying so) while the file fails. When the
        batch itself is what fails — a value or a defect in the batch code, which no retry changes —
        its operations are written one at a time, and only the one that fails alone is lost (loudly):
        the writer never stalls on a batch, so the rows after it keep landing. While writes wait in the
        spool for the lock to go, ``batch`` joins them there (``_spooled_while_locked``)."""
        if self._spooled_while_locked(batch, self._rowids):
            return
        try:
            started = self._write(batch, self._rowids)
            if started is _BLOCKED:  # held past BLOCKED_AFTER: spooled, unless the spool refuses
                if self._spool_live(batch, self._rowids):
                    return
                started = self._write(batch, self._rowids, may_spool=False)
        except LedgerStateError as exc:  # the ledger was closed under us: nobody can write these
            log.error("ledger %s: %d queued write(s) lost: %s", self.ledger.path, len(batch), exc)
            return
        except Exception as exc:
            log.error(
                "ledger %s: a batch of %d operation(s) could not be written (%s: %s); writing them one at a time",
                self.ledger.path,
                len(batch),
                type(exc).__name__,
                exc,
            )
            started = self._write_one_by_one(batch)
        if started is None:  # given up by close, nothing of it written: it goes to the spool
            self._spool_the_rest(batch, self._rowids)
        else:
            self._settle(batch, started)

    def _spool_the_rest(self, ops: list[Start | Finish], rowids: Mapping[int, int]) -> None:
        """``ops`` and everything still queued, appended to the file's spool: the stop's deadline has
        passed with the file locked by another process (``close``). The next opening writes them."""
        with self._lock:
            rest = list(self._queue)
            self._queue.clear()
            self._queued_starts.clear()
            self._inflight = [*ops, *rest]
            bound = self._seq
        ops = [*ops, *self._write_once(rest, rowids)]
        if self.ledger.path == MEMORY:
            log.error("ledger %s: %d queued write(s) could not be written and are lost", self.ledger.path, len(ops))
            self._committed_up_to(bound)
            return
        if self._spool is None:
            self._spool = SpoolWriter(spool_path(self.ledger.path), self.ledger.hostname)
        lines, orphans = self._spool.lines(ops, rowids)
        try:
            self._spool.append(lines)
        except OSError as exc:
            log.error(
                "ledger %s: %d queued write(s) could not be written nor spooled in %s (%s); they are lost",
                self.ledger.path,
                len(ops),
                self._spool.path,
                exc,
            )
            return
        log.warning(
            "ledger %s: %d queued write(s) could not be committed by the stop's deadline (the file still refused "
            "them: locked by another process, or failing); they are spooled in %s and written when the ledger is "
            "next opened",
            self.ledger.path,
            len(lines),
            self._spool.path,
        )
        if orphans:
            log.error(
                "ledger %s: %d outcome(s) of requests whose row was never written are lost", self.ledger.path, orphans
            )
        self._committed_up_to(bound)  # safe in the spool: whoever waits for these rows may go on

    def _settle(self, batch: list[Start | Finish], started: Mapping[int, int]) -> None:
        """Remember the row ids of the rows ``batch`` left started, forget those it finished."""
        for op in batch:
            if isinstance(op, Finish):
                self._rowids.pop(op.handle, None)
        self._rowids.update(started)
        if self._next_checkpoint == 0.0 and self._auto_checkpoint is not None:
            self._next_checkpoint = time.monotonic() + CHECKPOINT_EVERY

    def _write(
        self, ops: list[Start | Finish], rowids: Mapping[int, int], *, may_spool: bool = True
    ) -> dict[int, int] | None:
        """``write_batch`` of ``ops`` in one transaction, retried while the file fails
        (``_the_files_trouble``: full, read-only, I/O, locked by others); ``None`` once ``close``
        gave up waiting. Any other exception is the operations' own and is raised.

        Each attempt waits for nothing (``wait=False``): while another process holds the write lock the
        thread tries again every few milliseconds (up to 0.1 s apart, as SQLite's own busy wait does)
        instead of sleeping inside SQLite, so it sees how long the lock has held its commits — past
        ``BLOCKED_AFTER`` the ledger says so (``degraded_reason``, one warning) until a commit lands, and
        (``may_spool``, a file's writer) returns ``_BLOCKED`` for its caller to spool ``ops``."""
        if self._abandoned:  # a close gave up already: what is left goes to the spool without waiting
            return None
        hostname = self.ledger.hostname
        memory = self.ledger.path == MEMORY  # nobody else holds its lock: SQLite's own wait is never used
        delay, busy_delay, failing_since, reported = 0.05, 0.002, 0.0, 0.0
        while True:
            try:
                started = self.ledger.transaction(lambda conn: write_batch(conn, ops, rowids, hostname), wait=memory)
                break
            except Exception as exc:
                if not _the_files_trouble(exc):
                    raise  # closed, or the operations' own failure: no retry changes either
                now = time.monotonic()
                if self._abandoned:
                    return None
                if _locked_by_another(exc):
                    self._blocked(now)
                    if may_spool and self._blocked_said and not memory:
                        return _BLOCKED
                    if self._abandon.wait(busy_delay * random.uniform(0.5, 1.5)):  # a close gave up meanwhile
                        return None
                    busy_delay = min(busy_delay * 2, 0.1)
                    continue
                if not failing_since:
                    failing_since = now
                if now - reported >= _REPORT_EVERY:
                    reported = now
                    log.warning(
                        "ledger %s: could not write %d queued operation(s) (%s); retrying, nothing is dropped",
                        self.ledger.path,
                        len(ops),
                        exc,
                    )
                if self._abandon.wait(delay * random.uniform(0.5, 1.5)):  # a close gave up meanwhile
                    return None
                delay = min(delay * 2, 2.0)
        if failing_since:
            log.warning(
                "ledger %s: writes succeed again after %.1f s", self.ledger.path, time.monotonic() - failing_since
            )
        self._unblocked()
        return started

    # -- a write lock held by another process ------------------------------------------------------

    @property
    def degraded_reason(self) -> str | None:
        """``None``, or — while another process's write lock has held this writer's commits back for
        ``BLOCKED_AFTER`` seconds or more — one line naming the file, for how long, and how many rows
        and outcomes wait in memory meanwhile (what a crash now would lose)."""
        with self._lock:
            since = self._blocked_since if self._blocked_said else None
            if since is None:
                return None
            ops = [*self._inflight, *self._queue]
            spooled = self._spooled_count
        rows = sum(1 for op in ops if isinstance(op, Start))
        where = f" in {self._spool.path}" if self._spool is not None else ""
        return (
            f"the ledger file {self.ledger.path} has been locked by another process for "
            f"{time.monotonic() - since:.1f} s; {spooled} write(s) spooled{where} since, written into it once it is "
            f"free; {rows} row(s) and {len(ops) - rows} outcome(s) wait in memory (at most a commit window's)"
        )

    def _blocked(self, now: float) -> None:
        """A commit found the file locked by another process (the writer's thread): start the clock, and
        say so once it has held the commits back for ``BLOCKED_AFTER`` seconds."""
        with self._lock:
            if self._blocked_since is None:
                self._blocked_since = now
            if self._blocked_said or now - self._blocked_since < BLOCKED_AFTER:
                return
            self._blocked_said = True
            waiting = len(self._queue) + len(self._inflight)
        log.warning(
            "ledger %s: another process has held the file's write lock for %.1f s; requests are still answered, "
            "and their %d queued write(s) and those that follow go to the spool %s every commit window until it "
            "is free (then into the file, once)",
            self.ledger.path,
            now - self._blocked_since,
            waiting,
            spool_path(self.ledger.path),
        )

    # While the lock holds past BLOCKED_AFTER, the writes would wait in memory, where a crash loses them:
    # they go to the spool (``engine.ledger_spool``: checksummed lines, each applied once) every window
    # instead, and ``when_committed`` counts them safe. From the first spooled write until the spool is
    # replayed into the file, nothing is written to the file directly (an outcome may finish a spooled
    # row, whose id only the replay gives), and readers wait for the replay: the thread tries it every
    # window, and once it landed it learns the ids of the spooled rows still open (``rows_of_lines``).
    # Each write is in the spool or in a commit, never both: exactly once.

    def _spool_live(self, ops: list[Start | Finish], rowids: Mapping[int, int]) -> bool:
        """Append ``ops`` and everything queued to the spool (a lock held past ``BLOCKED_AFTER``); whether they
        are there — else (the spool refuses: a full disk) they are as they were, for the file to take."""
        if self.ledger.path == MEMORY:
            return False
        if self._spool is None:
            self._spool = SpoolWriter(spool_path(self.ledger.path), self.ledger.hostname)
        spool = self._spool
        with self._lock:
            rest = list(self._queue)
            self._queue.clear()
            self._queued_starts.clear()  # a finish from now on is queued on its own, never merged into a spooled start
            self._inflight = [*ops, *rest]
            bound = self._seq
        every = [*ops, *rest]
        before = spool.remembered()
        try:
            lines, orphans = spool.lines(every, rowids)
            spool.append(lines)
        except Exception as exc:  # a full disk (or a defect): the writes stay the file's to take
            spool.restore(before)
            with self._lock:
                if rest:
                    self._queue.extendleft(reversed(rest))
                    self._queued_since = time.monotonic()
                self._inflight = list(ops)
            log.error(
                "ledger %s: the spool %s refused %d write(s) (%s); they wait in memory for the file",
                self.ledger.path,
                spool.path,
                len(every),
                exc,
            )
            return False
        for op in every:
            if isinstance(op, Finish):
                self._rowids.pop(op.handle, None)
        with self._lock:
            self._spool_pending = True
            self._spooled_bound = max(self._spooled_bound, bound)
            self._spooled_count += len(lines)
            self._next_replay = time.monotonic() + self.group_commit
            self._room.notify_all()
        if orphans:
            log.error(
                "ledger %s: %d outcome(s) of requests whose row was never written are lost", self.ledger.path, orphans
            )
        self._committed_up_to(bound)  # safe in the spool: whoever waits for these rows may go on
        return True

    def _spooled_while_locked(self, batch: list[Start | Finish], rowids: Mapping[int, int]) -> bool:
        """Whether ``batch`` went to the spool because writes spooled before it still wait there (the
        lock still held): nothing may reach the file before them."""
        while self._spool_pending and not self._try_replay():
            if self._spool_live(batch, rowids):
                return True
            if self._abandon.wait(self.group_commit):  # a close gave up: its own spooling takes them
                return False
            self._next_replay = 0.0
        return False

    def _try_replay(self) -> bool:
        """Write the spool into the file if the lock is gone (one try a window, waiting for nothing); whether
        no write waits there any more."""
        if not self._spool_pending:
            return True
        now = time.monotonic()
        if now < self._next_replay:
            return False
        self._next_replay = now + self.group_commit
        try:
            self.ledger.transaction(_nothing, wait=False)  # free now? (reading the spool costs more than this)
        except Exception:
            return False
        if replay_spool(self.ledger, wait=False) is None:
            return False
        assert self._spool is not None
        open_rows = self._spool.spooled_starts()
        try:
            found = self.ledger.transaction(lambda conn: rows_of_lines(conn, list(open_rows.values())), wait=False)
        except Exception:
            return False  # the spool is written; the ids are asked again at the next try
        for handle, line in open_rows.items():
            self._spool.forget(handle)
            row_id = found.get(line)
            if row_id is not None:  # (else refused by the replay and kept aside: said there)
                self._rowids[handle] = row_id
        with self._lock:
            self._spool_pending = False
            self._spooled_count = 0
            self._committed.raise_locked(self._spooled_bound)
            self._done.notify_all()
        self._unblocked()
        return True

    def _unblocked(self) -> None:
        """A commit landed: the lock, if it held the commits back, is over (said once, if it was said)."""
        with self._lock:
            since, said = self._blocked_since, self._blocked_said
            self._blocked_since, self._blocked_said = None, False
        if said and since is not None:
            log.info(
                "ledger %s: the file's write lock is free again; commits resume after %.1f s",
                self.ledger.path,
                time.monotonic() - since,
            )

    def _write_once(self, ops: list[Start | Finish], rowids: Mapping[int, int]) -> list[Start | Finish]:
        """One attempt at writing ``ops`` — what was queued behind a batch ``close`` gave up on: the file
        may take them (the trouble was that batch's alone) — leaving out the outcomes of rows that batch
        holds; what is left to spool (all of ``ops`` when the attempt fails)."""
        later = [op for op in ops if isinstance(op, Start) or op.handle in rowids]
        if not later:
            return ops
        hostname = self.ledger.hostname
        try:
            started = self.ledger.transaction(lambda conn: write_batch(conn, later, rowids, hostname))
        except Exception:  # locked still (SQLite's busy_timeout at most: the ledger waits no longer), failing
            return ops
        self._settle(later, started)
        written = set(map(id, later))
        return [op for op in ops if id(op) not in written]

    def _write_one_by_one(self, batch: list[Start | Finish]) -> dict[int, int]:
        """``batch`` written an operation a transaction (``_commit``'s way out of a batch that fails
        as a whole): the row ids of the rows it left started — also when ``close`` gave up waiting
        part-way, for the rows written until then, whose outcomes may still be queued."""
        started: dict[int, int] = {}
        known = ChainMap(started, self._rowids)  # a finish later in the batch finds its start's row here
        for index, op in enumerate(batch):
            try:
                written = self._write([op], known)
                if written is _BLOCKED:  # held past BLOCKED_AFTER: this one, the rest and the queue are spooled
                    if self._spool_live(batch[index:], known):
                        return started
                    written = self._write([op], known, may_spool=False)
            except LedgerStateError as exc:
                log.error("ledger %s: queued write(s) lost: %s", self.ledger.path, exc)
                return started
            except Exception as exc:
                log.error(
                    "ledger %s: %s could not be written (%s: %s); it is lost",
                    self.ledger.path,
                    _described(op, known),
                    type(exc).__name__,
                    exc,
                )
                continue
            if written is None:  # close gave up: what was written still counts, the rest is spooled
                self._spool_the_rest(batch[index:], known)
                return started
            started.update(written)
        return started

    # -- the loop's commits ------------------------------------------------------------------------
    #
    # A second thread that writes costs the event loop more than the writing: every time the writer
    # takes the interpreter's lock back from a busy loop — after each SQLite step, each wake-up —
    # both threads pay futex calls and context switches (docs/benchmarks.md, "The ledger's writer
    # at concurrency"). So the loop that queues the operations commits them itself, once a window,
    # as long as that needs no waiting: one attempt, never waiting for another process's lock, and
    # no checkpoint (a commit of the write-ahead log with ``synchronous = NORMAL`` writes to the page
    # cache; the disk syncs are the checkpoint's, which the thread runs every ``CHECKPOINT_EVERY``).
    # Everything that may wait stays the thread's: a batch the loop could not write (handed back,
    # retried there), reads waiting for the queue (``flush``), back-pressure, retention, ``close``;
    # and work a stopped or blocked loop leaves queued for ``BACKSTOP_WINDOWS`` windows.

    def _adopt_running_loop(self) -> None:
        """Commit on the event loop running in this thread, if any (caller holds the lock)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop, self._loop_thread = loop, threading.get_ident()
        self._schedule_loop_commit()

    def _schedule_loop_commit(self) -> None:
        """A commit on the loop a window from now (caller holds the lock, on the loop's running thread)."""
        assert self._loop is not None
        self._loop_due = True
        self._loop.call_later(self.group_commit, self._commit_on_loop, self._loop)

    def _forget_loop(self) -> None:
        """The loop commits no more; the thread writes until another loop is adopted (caller holds the lock)."""
        self._loop, self._loop_thread, self._loop_due = None, 0, False

    def _commit_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write what is queued, once, waiting for nothing; what fails is handed to the thread."""
        if self.forked:  # a forked child's copy of the loop: the rows are the parent's to write, and
            return  # the locks may have been held by a parent's thread at the fork
        with self._lock:
            if loop is not self._loop:  # forgotten meanwhile
                return
            self._loop_due = False
            if self._closing or self._handed_back is not None or self._spool_pending:
                return  # the thread's to write
            if not self._commit_lock.acquire(blocking=False):  # the thread is writing: look again later
                if self._queue:
                    self._schedule_loop_commit()
                return
        try:
            with self._lock:
                batch, bound = self._take()
            if batch:
                hostname = self.ledger.hostname
                try:
                    started = self.ledger.transaction(
                        lambda conn: write_batch(conn, batch, self._rowids, hostname), wait=False
                    )
                except BaseException as exc:  # busy, failing, the batch's own trouble: the thread decides
                    with self._lock:
                        self._handed_back = (batch, bound)
                        self._wake.notify()
                    if isinstance(exc, Exception):
                        return
                    raise
                self._settle(batch, started)
                self._last_work = time.monotonic()
            self._committed_up_to(bound)
        finally:
            self._commit_lock.release()
        with self._lock:
            if self._queue and not self._loop_due and loop is self._loop:  # queued from other threads meanwhile
                self._schedule_loop_commit()

    def _checkpoint_due(self) -> bool:
        return 0.0 < self._next_checkpoint <= time.monotonic()

    def _checkpoint(self) -> None:
        """The write-ahead log copied into the file, on the thread (``Ledger.checkpoint``)."""
        self._next_checkpoint = 0.0
        try:
            self.ledger.checkpoint()
        except Exception as exc:  # the next commits try again; readers still find every row in the log
            log.warning("ledger %s: checkpoint failed (%s)", self.ledger.path, exc)

    def _prune_due(self) -> bool:
        return self._retention is not None and self._clock() >= self._next_prune

    def _prune(self) -> None:
        now = self._clock()
        with self._lock:  # a set_retention from now on asks for another prune
            retention = self._retention
            self._next_prune = now + self._prune_every
        if retention is None:
            return
        try:
            prune(self.ledger, retention, now=now)
        except Exception as exc:  # retention must never stop the rows being written
            log.warning(
                "ledger %s: pruning failed (%s); trying again in %g s", self.ledger.path, exc, self._prune_every
            )


def _described(op: Start | Finish, rowids: Mapping[int, int]) -> str:
    """What ``op`` is, for a log line: a row's start (or whole row) by its session, an outcome by
    the id of its row (``rowids``: handle to row id), whose session is in that row."""
    if isinstance(op, Start):
        return f"the {'finished ' if op.finish is not None else ''}row of session {op.session_id}"
    row_id = rowids.get(op.handle)
    return f"the outcome {op.status} of ledger row {row_id if row_id is not None else f'handle {op.handle}'}"


# SQLite's primary result codes that say the statement or its values are wrong, not the file: a
# generic SQL error (no such column, syntax), a constraint, a type mismatch, misuse, a bad index
_NOT_THE_FILE = frozenset({1, 19, 20, 21, 25})


def _nothing(conn: sqlite3.Connection) -> None:
    """An empty transaction: whether the write lock can be taken now."""


def _locked_by_another(exc: BaseException) -> bool:
    """Whether a failed write found the file's write lock taken by another connection (busy, locked)."""
    cause = exc.__cause__
    return isinstance(exc, LedgerBusyError) or (isinstance(cause, sqlite3.Error) and is_busy(cause))


def _the_files_trouble(exc: BaseException) -> bool:
    """Whether a failed write is the file's trouble — worth retrying whole until it passes (full,
    read-only, I/O error, locked by others, out of memory) — rather than the operations' own (a value,
    a defect in the batch code or its SQL), which no retry changes."""
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, LedgerError) or isinstance(exc, (LedgerStateError, LedgerValueError)):
        return False
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)  # Python 3.11+: SQLite's extended result code
    return not (isinstance(code, int) and code & 0xFF in _NOT_THE_FILE)


# ----------------------------------------------------------------------------------------------
# one writer per file per process

_WRITERS: dict[str, LedgerWriter] = {}
_USERS: dict[str, int] = {}
_REGISTRY = threading.Lock()


def acquire_writer(
    ledger: Ledger,
    *,
    retention: Retention | None = None,
    max_pending: int = MAX_PENDING,
    clock: Callable[[], float] = time.time,
    group_commit: float | None = None,
    loop_commits: bool = False,
) -> LedgerWriter:
    """This process's writer for ``ledger``'s file, started on first use; pair with ``release_writer``.

    A file's writer writes through a ``Ledger`` of its own; an in-memory ledger's writes through
    ``ledger`` itself (its database exists only in that connection). A ``retention`` replaces the
    writer's and so does a ``group_commit`` (the newest configuration wins; ``None``: the writer keeps
    its own, ``GROUP_COMMIT`` for a new one); ``max_pending``, ``clock`` and ``loop_commits`` (an in-memory
    ledger's writer commits on its thread whatever it says) are the first user's."""
    key = ledger.key
    with _REGISTRY:
        writer = _WRITERS.get(key)
        if writer is None or writer.closed or writer.forked:
            memory = ledger.path == MEMORY
            own = (
                ledger if memory else Ledger(ledger.path, busy_timeout=ledger.busy_timeout, retry_for=ledger.retry_for)
            )
            writer = LedgerWriter(
                own,
                loop_commits=loop_commits and not memory,  # an in-memory ledger's connection is its readers' too
                owns_ledger=not memory,
                max_pending=max_pending,
                retention=retention,
                clock=clock,
                group_commit=GROUP_COMMIT if group_commit is None else group_commit,
            )
            _WRITERS[key] = writer
            _USERS[key] = 0
            register_pending_writes(key, writer.flush)
        else:
            if group_commit is not None:
                writer.group_commit = checked_window(group_commit)  # read by the writer at its next look
            if retention is not None:
                writer.set_retention(retention)
            if loop_commits != writer.loop_commits and ledger.path != MEMORY:
                log.info(
                    "ledger %s: its writer in this process commits on the %s, as its first user chose; "
                    "this user's choice (the %s) applies from the next process, or once every user closed",
                    ledger.path,
                    "event loop" if writer.loop_commits else "writer's thread",
                    "event loop" if loop_commits else "writer's thread",
                )
        _USERS[key] += 1
    return writer


def release_writer(writer: LedgerWriter) -> None:
    """One user fewer; the last one drains the writer and stops it."""
    if writer.forked:
        return
    key = writer.ledger.key
    with _REGISTRY:
        if _WRITERS.get(key) is not writer:
            last = not writer.closed
        else:
            _USERS[key] -= 1
            last = _USERS[key] <= 0
            if last:
                writer.stop_taking()  # under the registry lock: no one acquires it from now on
    if not last:
        return
    writer.close()  # still registered while it drains: the budget counter waits for its rows too
    with _REGISTRY:
        if _WRITERS.get(key) is writer:
            del _WRITERS[key], _USERS[key]


def flush_rows_of(path: str | os.PathLike[str], user: str | None) -> None:
    """Wait until the rows of ``user`` this process queued for the ledger file ``path`` are written
    (nothing to wait for when no writer of that file runs here)."""
    writer = _WRITERS.get(os.path.realpath(path))
    if writer is not None and not writer.forked:
        writer.flush_user(user)


def _drain_all(writers: Iterable[LedgerWriter] | None = None) -> None:
    """At interpreter exit: end the sessions the loop thread still runs (their rows' outcomes are
    queued then: ``stop_shared_loop``), then write what every writer still holds."""
    if writers is None:
        stop_shared_loop()
    with _REGISTRY:
        found = list(_WRITERS.values()) if writers is None else list(writers)
        _WRITERS.clear()
        _USERS.clear()
    for writer in found:
        try:
            writer.close()
        except Exception as exc:  # pragma: no cover - exit must go on
            log.error("ledger %s: could not drain its writer at exit: %s", writer.ledger.path, exc)


def _forget_after_fork() -> None:
    global _REGISTRY
    for writer in _WRITERS.values():
        writer.forked = True
    _WRITERS.clear()
    _USERS.clear()
    _REGISTRY = threading.Lock()  # the parent may have held it at the fork


atexit.register(_drain_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
