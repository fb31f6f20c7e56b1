"""Events from the engine's loop thread to whoever reads a stream, in batches.

Handing each event over on its own costs a lock, a condition and a thread wake-up per token (or a
write to the reading loop's self-pipe): at concurrency 20 that was 100–130 context switches per
request. ``Batcher`` collects what one turn of the engine's loop delivers (an upstream chunk usually
decodes into many tokens) and hands it on as one list when the turn ends, so the reader wakes once
per chunk, not once per token. ``EventHandoff`` is the reading end for a thread.

A terminal event (``done`` or ``error``) goes out at once, with anything still pending: the end of a
session never waits for a loop turn that may not come (a loop being stopped at exit).
"""

from __future__ import annotations

import asyncio
import queue
from collections import deque
from collections.abc import Callable

from gtl_nb.protocol.messages import TERMINAL_EVENTS, StreamEvent

__all__ = ["AsyncEventHandoff", "Batcher", "EventHandoff"]

Batch = list[StreamEvent]
_CLOSED: Batch = []  # (its identity: a batch the engine hands on always holds an event)


class Batcher:
    """``deliver(event)`` on the engine's loop thread; ``send(batch)`` gets each turn's events."""

    __slots__ = ("_pending", "_send")

    def __init__(self, send: Callable[[Batch], None]) -> None:
        self._send = send
        self._pending: Batch | None = None

    def deliver(self, event: StreamEvent) -> None:
        """Take one event (on the loop thread, where sessions deliver their events)."""
        terminal = type(event) in TERMINAL_EVENTS
        pending = self._pending
        if pending is not None:
            pending.append(event)
            if terminal:
                self._flush()
            return
        if terminal:
            self._send([event])
            return
        self._pending = [event]
        try:
            asyncio.get_running_loop().call_soon(self._flush)
        except RuntimeError:  # not on a loop: nothing to batch with
            self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, None
        if batch:
            self._send(batch)


class EventHandoff:
    """The reading end for a thread: ``deliver`` (a ``Batcher``'s) feeds it, ``next`` reads it."""

    __slots__ = ("_batches", "_ready", "deliver")

    def __init__(self) -> None:
        # compiled, a fraction of ``queue.Queue``'s cost per batch; its waits can be interrupted (Ctrl-C)
        self._batches: queue.SimpleQueue[Batch] = queue.SimpleQueue()
        self._ready: deque[StreamEvent] = deque()  # the reader's own
        self.deliver = Batcher(self._batches.put).deliver

    def next(self, timeout: float | None = None) -> StreamEvent | None:
        """The next event, waiting up to ``timeout`` seconds (``None``: as long as it takes);
        ``queue.Empty`` when none came in time, ``None`` when ``wake_readers`` ended the wait."""
        if not self._ready:
            batch = self._batches.get(timeout=timeout)
            if not batch:
                return None
            self._ready.extend(batch)
        return self._ready.popleft()

    def wake_readers(self, count: int = 2) -> None:
        """End the wait of up to ``count`` threads blocked in ``next`` (they get ``None``): the stream
        ended while another thread — one calling ``close()`` — consumed its last events."""
        for _ in range(count):
            self._batches.put([])


class AsyncEventHandoff:
    """The reading end for a coroutine on another event loop (the caller's). ``ready`` holds the rest of
    the batch last taken: a reader may pop from it without awaiting ``next``."""

    __slots__ = ("_batches", "deliver", "ready")

    def __init__(self, caller: asyncio.AbstractEventLoop) -> None:
        self._batches: asyncio.Queue[Batch] = asyncio.Queue()
        self.ready: deque[StreamEvent] = deque()

        def send(batch: Batch) -> None:
            try:
                caller.call_soon_threadsafe(self._batches.put_nowait, batch)
            except RuntimeError:  # the caller's loop has closed: nobody is listening any more
                pass

        self.deliver = Batcher(send).deliver

    async def next(self) -> StreamEvent | None:
        """The next event, as soon as its batch arrives; ``None`` once ``close`` was called."""
        if not self.ready:
            batch = await self._batches.get()
            if batch is _CLOSED:
                self._batches.put_nowait(batch)  # for any other reader waiting, or coming later
                return None
            self.ready.extend(batch)
        return self.ready.popleft()

    def close(self) -> None:
        """Wake every reader waiting in ``next`` (``None``): the stream ended, recorded by another task."""
        self._batches.put_nowait(_CLOSED)
