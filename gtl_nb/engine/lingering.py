"""``LingeringQueue``: hand work to a background writer thread without waking it for every item.

A ``queue.Queue`` notifies its consumer on every ``put``: for a writer that runs once per request (the
ledger's, the audit log's) that is a thread wake-up, and a fight for the GIL with the event loop, per
request — 8 % of the gateway's CPU in a profile at concurrency 1. Here the consumer is woken only when
it sleeps: while work keeps arriving it polls every ``linger`` seconds (default ``GROUP_COMMIT``)
instead, taking whatever came meanwhile as one batch; after ``idle_after`` seconds without work it
sleeps until the next ``put``. So a busy writer costs ``1 / linger`` wake-ups a second whatever the
request rate, an idle one none, and an item waits at most ``linger`` seconds before its batch is taken.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["GROUP_COMMIT", "LingeringQueue", "checked_window"]

GROUP_COMMIT = 0.02
"""Seconds between a busy writer's looks at its queue (nobody wakes it meanwhile): one commit per
window — the ledger's writers and the audit log's (``group_commit_ms`` of ``[ledger]`` and
``[gateway.audit]``). A commit costs about the same whatever it holds (SQLite's locks, WAL frames and
transaction; the audit log's write and fsync): at 5 ms — six requests a commit at 1,200 requests/s —
the two writers cost the gateway 0.18 ms of CPU per request, at 20 ms 0.09 (docs/benchmarks.md).
It is also the most a SIGKILL can lose beyond the batch being written."""

T = TypeVar("T")


def checked_window(seconds: float) -> float:
    """``seconds`` as a group commit window: a positive, finite number (0 would make a busy writer spin)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        raise ValueError(f"a group commit window must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


class LingeringQueue(Generic[T]):
    """Many producers (any thread), one consumer thread (``take``)."""

    def __init__(
        self,
        *,
        maxsize: int = 0,
        linger: float = GROUP_COMMIT,
        idle_after: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxsize = maxsize
        self.linger = checked_window(linger)
        self.idle_after = idle_after
        self._clock = clock
        self._items: deque[T] = deque()
        self._wake = threading.Event()
        self._sleeping = True  # the consumer waits without a timeout: a put must wake it
        self._last_work = clock()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Queue ``item``; ``False`` (and nothing queued) when ``maxsize`` items already wait."""
        if self.maxsize and len(self._items) >= self.maxsize:
            return False
        self._items.append(item)  # appending to a deque is atomic: no lock on the request path
        # read after the append: a consumer that set _sleeping before this read looks at the items
        # again before it waits, so the item is seen either way
        if self._sleeping:
            self._sleeping = False
            self._wake.set()
        elif self.maxsize and len(self._items) * 2 >= self.maxsize:
            self._wake.set()  # half full: a lingering consumer looks now, before a burst fills the queue
        return True

    def wake(self) -> None:
        """Make a waiting ``take`` look now (a flush, say)."""
        self._sleeping = False
        self._wake.set()

    def close(self) -> None:
        """No more waiting: ``take`` hands out what is left, then returns ``[]`` at once (the consumer's
        signal to stop). ``put`` still queues, for a consumer that drains once more."""
        self.closed = True
        self.wake()

    def take(self, most: int, *, timeout: float | None = None) -> list[T]:
        """Up to ``most`` items, oldest first, waiting for at least one — or ``[]`` after ``timeout``
        seconds (``None``: as long as it takes) or a ``wake``, and at once when the queue is closed."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self._items:
            if self.closed:
                return []
            now = self._clock()
            if deadline is not None and now >= deadline:
                return []
            if now - self._last_work < self.idle_after:
                wait = self.linger  # busy: poll, nobody wakes us
            else:
                self._sleeping = True
                if self._items:  # arrived while we decided to sleep
                    self._sleeping = False
                    break
                wait = None
            if deadline is not None:
                wait = max(0.0, deadline - now) if wait is None else min(wait, max(0.0, deadline - now))
            if self._wake.wait(wait):
                self._wake.clear()
                if not self._items:
                    return []  # woken with nothing to do: a stop, or a flush
        batch = [self._items.popleft() for _ in range(min(most, len(self._items)))]
        self._last_work = self._clock()
        return batch
