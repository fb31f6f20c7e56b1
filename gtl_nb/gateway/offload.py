"""Converting a large request body in a worker thread, so the event loop keeps serving everyone else.

A request body is turned into GTL's ``CompletionRequest`` in Python, element by element (the compatible
endpoints' JSON parse, duplicate-key count and field readers; msgspec calling each message's
``__post_init__`` on ``/v1/gtl``): up to
``protocol.limits``' bounds and ``max_frame_bytes``, that is hundreds of milliseconds for the largest
bodies. On the loop, every other client of the listener would wait that long. In a worker thread the
conversion still holds the GIL, but the interpreter hands it back to the loop every switch interval
(5 ms), so the loop goes on reading, answering and streaming in between — measured with four callers
converting 100,000-message bodies at once, a small request's wait went from a median of 2.9 s (on the
loop) to 17 ms (in threads) for the compatible endpoint, from 2.1 s to 88 ms for ``/v1/gtl``'s decode.

A body of at most ``OFF_LOOP_BYTES`` is converted on the loop, as before: a thread's hand-off
(~50–100 µs) would cost more than the conversion of a usual request, and such a body holds the loop
for at most a few milliseconds.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["OFF_LOOP_BYTES", "WORKERS", "converted"]

OFF_LOOP_BYTES = 128 * 1024
"""The body size above which a body is converted in a worker thread (module docstring)."""
WORKERS = 2
"""Threads converting bodies. Their own: asyncio's default pool also runs the SQLite stores' calls
(budgets, cache, breakers) and name lookups, which a few large bodies would otherwise queue behind."""

T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _workers() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:  # (made once, on first use: most gateways never see a body this large)
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="gtl-convert")
        return _pool


async def converted(size: int, convert: Callable[..., T], *args: object) -> T:
    """``convert(*args)``: called here for a body of ``size`` bytes up to ``OFF_LOOP_BYTES``, else in a
    worker thread (its exception raised here either way)."""
    if size <= OFF_LOOP_BYTES:
        return convert(*args)
    return await _in_worker(convert, *args)


async def _in_worker(convert: Callable[..., T], *args: object) -> T:
    """``convert(*args)`` in one of the ``WORKERS`` threads."""
    return await asyncio.get_running_loop().run_in_executor(_workers(), functools.partial(convert, *args))
