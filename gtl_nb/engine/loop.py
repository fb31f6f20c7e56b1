"""One long-lived background event loop thread for the synchronous API.

A Jupyter kernel already runs an asyncio loop in its main thread, so ``asyncio.run`` fails there and
patching the loop (nest_asyncio) breaks other libraries. Instead every synchronous call submits its
coroutine to this thread's loop and waits on a ``concurrent.futures.Future``. Connection pools live
on this loop and survive between notebook cells.

A ``KeyboardInterrupt`` while waiting (the notebook's "interrupt kernel") cancels the coroutine on
the loop thread, waits briefly for its clean-up to finish, and re-raises.

``stop()`` — at interpreter exit for the shared loop — first ends what still runs on the loop: each
resource given to ``close_at_exit`` (a client's connection to a gateway the program never closed) is
closed, within ``EXIT_SECONDS``, then every task left is cancelled and awaited, ``TASK_SECONDS`` at
most per round: a gateway that is gone or hung cannot hold the exit for more than a few seconds. A
task still pending when the loop closes would be destroyed by the garbage collector later, printing
"Task was destroyed but it is pending!" and running its clean-up against a closed loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_CLEANUP_GRACE_SECONDS = 5.0
EXIT_SECONDS = 2.0
"""Seconds ``stop`` gives the ``close_at_exit`` resources to close (a polite close waits for the gateway)."""
TASK_SECONDS = 1.0
"""Seconds ``stop`` gives the tasks it cancelled to run their clean-up, per round (two at most)."""


class Closable(Protocol):
    """What ``close_at_exit`` takes: anything with an ``aclose()`` coroutine."""

    async def aclose(self) -> None: ...


class LoopThread:
    """A daemon thread running an asyncio event loop forever."""

    def __init__(self, name: str = "gtl_nb-loop") -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # weak: a resource the program let go of is not kept alive for the exit (its tasks still end there)
        self._at_exit: weakref.WeakSet[Closable] = weakref.WeakSet()
        self._at_exit_lock = threading.Lock()  # added to from any thread, read by ``stop``
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("the synchronous gtl_nb API cannot be called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result; Ctrl-C cancels it."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # do not leave the work running on the loop after giving up on it
            raise
        except KeyboardInterrupt:
            future.cancel()
            # Let the coroutine's clean-up (closing upstream responses, recording the cancel) run.
            concurrent.futures.wait([future], timeout=_CLEANUP_GRACE_SECONDS)
            raise

    def close_at_exit(self, resource: Closable) -> None:
        """Have ``stop`` close ``resource`` (``await resource.aclose()`` on this loop) if it is still alive
        then; closing it earlier does no harm (``aclose`` is called again and must allow that)."""
        with self._at_exit_lock:
            self._at_exit.add(resource)

    def stop(self) -> None:
        """End what runs on the loop (see the module docstring), then stop the loop and its thread."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        if self.in_loop_thread:  # it cannot wait for itself: the loop just stops
            loop.stop()
            return
        ending = asyncio.run_coroutine_threadsafe(self._end_everything(), loop)
        with contextlib.suppress(Exception):  # a wedged loop: stop it all the same
            ending.result(EXIT_SECONDS + 2 * TASK_SECONDS + 1)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)

    async def _end_everything(self) -> None:
        """Close the ``close_at_exit`` resources, cancel the tasks left and wait for them (bounded)."""
        with self._at_exit_lock:
            resources = list(self._at_exit)
            self._at_exit.clear()
        if resources:
            closing = [asyncio.ensure_future(_close_quietly(resource)) for resource in resources]
            await asyncio.wait(closing, timeout=EXIT_SECONDS)
        here = asyncio.current_task()
        for _ in range(2):  # a second round for the tasks the first one's clean-up started
            tasks = [task for task in asyncio.all_tasks() if task is not here]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=TASK_SECONDS)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # seen: nobody is left to read it
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().shutdown_asyncgens()


async def _close_quietly(resource: Closable) -> None:
    """``resource.aclose()``; at exit nobody is left to hear how it failed."""
    with contextlib.suppress(Exception):
        await resource.aclose()


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process-wide loop thread, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared._thread.is_alive():
            _shared = LoopThread()
            atexit.register(_shared.stop)
        return _shared
