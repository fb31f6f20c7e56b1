"""One long-lived background event loop thread for the synchronous API.

A Jupyter kernel already runs an asyncio loop in its main thread, so ``asyncio.run`` fails there and
patching the loop (nest_asyncio) breaks other libraries. Instead every synchronous call submits its
coroutine to this thread's loop and waits on a ``concurrent.futures.Future``. Connection pools live
on this loop and survive between notebook cells.

A ``KeyboardInterrupt`` while waiting (the notebook's "interrupt kernel") cancels the coroutine on
the loop thread, waits briefly for its clean-up to finish, and re-raises.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CLEANUP_GRACE_SECONDS = 5.0


class LoopThread:
    """A daemon thread running an asyncio event loop forever."""

    def __init__(self, name: str = "gtl_nb-loop") -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
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

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


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
