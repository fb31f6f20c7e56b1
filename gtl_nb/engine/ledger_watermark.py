"""A watermark over numbered writes, and the calls waiting for it: what the ledgers' ``when_written`` share.

A ledger numbers each write it queues (1, 2, 3, …) and writes them in order, so "every write up to
*n* is safe" is one number, the watermark, that only rises. Whoever must not go on before the writes
queued so far are safe — the gateway's audit log, which holds a request's record until its ledger row
is committed — asks to be called once the watermark reaches the number of the last write queued
(``call_when``). The writer raises the watermark after each commit (``raise_to``), which calls every
callback whose number it reached, in the order of their numbers (and, for one number, of their
registration), outside the lock, each on its own: one that raises is logged and the others still run.

Used by the SQLite ledger's writer (``engine.ledger_writer``: its flushes wait on the same number,
under the writer's own lock, which is why a ``Watermark`` can share a lock it is given) and by the
PostgreSQL ledger (``engine.stores.postgres_ledger``). Thread-safe: callbacks may be registered from
any thread while another raises the watermark.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Watermark"]


class Watermark:
    """The number of the last write known safe, and the callbacks waiting for it to reach theirs.

    ``lock`` guards the number and the waiting callbacks; give the lock that also guards the writes'
    numbering when other state must change with the watermark in one step (``value`` and
    ``raise_locked`` are then read and called with it held). ``what`` names the writer in the log line
    of a callback that raised, on ``logger``."""

    __slots__ = ("_lock", "_log", "_order", "_value", "_waiting", "_what")

    def __init__(self, what: str, logger: logging.Logger, *, lock: Any = None) -> None:
        self._lock = threading.Lock() if lock is None else lock
        self._value = 0
        # (number, registration order, callback): the smallest number first, ties in registration order
        self._waiting: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._what = what
        self._log = logger

    @property
    def value(self) -> int:
        """Every write numbered up to this one is safe (0: none yet)."""
        return self._value

    def pending(self) -> int:
        """How many callbacks wait."""
        with self._lock:
            return len(self._waiting)

    def call_when(self, target: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the watermark reaches ``target``: at once, on this thread, when it has
        already (an exception it raises then is the caller's), else from whoever raises it that far."""
        with self._lock:
            if self._value < target:
                heapq.heappush(self._waiting, (target, next(self._order), callback))
                return
        callback()

    def raise_to(self, bound: int) -> None:
        """Every write numbered up to ``bound`` is safe: raise the watermark (never lower it) and call the
        callbacks it reached, in order (``run``)."""
        with self._lock:
            ready = self.raise_locked(bound)
        self.run(ready)

    def raise_locked(self, bound: int) -> list[Callable[[], None]]:
        """``raise_to`` for a caller that holds the lock: the callbacks reached, for it to ``run`` once it
        let the lock go (a callback may take other locks, or register again)."""
        if bound > self._value:
            self._value = bound
        waiting = self._waiting
        ready: list[Callable[[], None]] = []
        while waiting and waiting[0][0] <= self._value:
            ready.append(heapq.heappop(waiting)[2])
        return ready

    def run(self, ready: list[Callable[[], None]]) -> None:
        """Call each of ``ready`` in turn; one that raises is logged and the next still called (a
        watcher's defect must not stop the writer, nor keep another watcher waiting)."""
        for callback in ready:
            try:
                callback()
            except Exception:
                self._log.exception("%s: a call after a commit failed", self._what)
