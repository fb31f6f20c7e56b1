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

**Frames on a connection** are the same work: a read that completes more than ``OFF_LOOP_BYTES`` of
frames is decoded by the connection's own ``FrameReader`` in a worker thread (WebSocket, gRPC and
stdio: ``OffloadedFrames``; QUIC's control and session streams: ``InTurn``), and its frames are handed
to the connection (``GTLConnection.receive_frames``) once decoded. The connection's (or stream's) one
reader waits for that before it reads on, so a later frame never overtakes a large one, and a bad
frame is the same ``BadFrame`` — the same error, the same session ended — wherever it was decoded. A
gRPC message is first mapped from protobuf to its JSON frame, in a worker above ``OFF_LOOP_PROTO_BYTES``.
Measured with two callers looping 8 MB, 100,000-message frames, a small request's wait went from a
median of 1.36 s to 0.15 s over WebSocket, from 1.25 s to 0.04 s over gRPC (docs/security.md, "Work
per request").
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError, InternalError, OverloadedError
from gtl_nb.transports.framed import FramedConnection

__all__ = [
    "OFF_LOOP_BYTES",
    "OFF_LOOP_PROTO_BYTES",
    "WORKERS",
    "InTurn",
    "OffloadedFrames",
    "completed_bytes",
    "converted",
]

log = get_logger("gateway")

OFF_LOOP_BYTES = 128 * 1024
"""The body size above which a body is converted in a worker thread (module docstring)."""
OFF_LOOP_PROTO_BYTES = 16 * 1024
"""The same for a gRPC message read into its JSON frame (``transports.grpc.stream``): protobuf is denser
and each of its messages is built in Python (``from_proto``), so a byte costs more — 10,000 one-letter
messages are 110 KB of protobuf read in ~54 ms, against ~16 ms to decode their 300 KB of JSON."""
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


async def converted(size: int, convert: Callable[..., T], *args: object, above: int = OFF_LOOP_BYTES) -> T:
    """``convert(*args)``: called here for a body of ``size`` bytes up to ``above`` (``OFF_LOOP_BYTES``),
    else in a worker thread (its exception raised here either way)."""
    if size <= above:
        return convert(*args)
    return await _in_worker(convert, *args)


async def _in_worker(convert: Callable[..., T], *args: object) -> T:
    """``convert(*args)`` in one of the ``WORKERS`` threads."""
    return await asyncio.get_running_loop().run_in_executor(_workers(), functools.partial(convert, *args))


def completed_bytes(pending: int, data: bytes) -> int:
    """The bytes of the frames a read of ``data`` completes, with ``pending`` bytes of a frame held from
    earlier reads: those and ``data`` up to its last newline (0 when it completes none)."""
    last = data.rfind(b"\n")
    return pending + last + 1 if last >= 0 else 0


class OffloadedFrames(FramedConnection):
    """A ``FramedConnection`` that decodes a read completing more than ``OFF_LOOP_BYTES`` of frames in a
    worker thread (module docstring); a smaller read, and the end of the stream, on the loop as before."""

    def receive(self, data: bytes) -> Awaitable[None] | None:
        connection = self.connection
        size = completed_bytes(connection.reader.pending_bytes, data)
        if size <= OFF_LOOP_BYTES or connection.closed:  # (a closed connection drops what it is given)
            connection.receive_data(data)
            return None
        return self._receive_in_worker(data)

    async def _receive_in_worker(self, data: bytes) -> None:
        # only this connection's reader touches its FrameReader, and it waits here: no other feed meanwhile
        frames = await _in_worker(self.connection.reader.feed, bytes(data))
        self.connection.receive_frames(frames)


class InTurn(Generic[T]):
    """One stream's reads, taken from a protocol's callbacks (QUIC's streams) and read in arrival order:
    ``take(data, end)`` hands ``read(data, end)``'s result to ``handle``. A read completing more than
    ``OFF_LOOP_BYTES`` of frames (``pending()``: the bytes the stream's reader holds of a frame begun
    earlier) is read in a worker thread; every read and ``later`` call after it waits its turn."""

    def __init__(
        self,
        read: Callable[[bytes, bool], T],
        handle: Callable[[T], None],
        pending: Callable[[], int],
        *,
        name: str,
        most_waiting: int,
        failed: Callable[[GTLError], None],
    ) -> None:
        self._read = read
        self._handle = handle
        self._pending = pending
        self._name = name
        self._waiting: deque[tuple[bytes, bool] | Callable[[], None]] | None = None  # while one is in a worker
        self._task: asyncio.Task[None] | None = None
        # what the peer may send while a read is in a worker: its transport's flow control does not see
        # what waits here (QUIC's windows grow with what arrives), so past ``most_waiting`` bytes the reads
        # stop and ``failed`` is told why — as it is of a read that raised (a bug), which on the loop would
        # have reached the protocol's callback and ended the connection
        self._most_waiting = most_waiting
        self._waiting_bytes = 0
        self._failed = failed
        self._stopped = False  # cancelled: what comes after is dropped

    @property
    def busy(self) -> bool:
        """Whether a read is in a worker thread (what comes now waits for it)."""
        return self._waiting is not None

    def take(self, data: bytes, end: bool) -> None:
        """Read ``data`` (``end``: the stream's last bytes) now, in a worker, or after those before it."""
        if self._stopped:
            return
        if self._waiting is not None:
            self._waiting.append((data, end))
            self._waiting_bytes += len(data)
            if self._waiting_bytes > self._most_waiting:
                self.cancel()
                why = f"more than {self._most_waiting:,} bytes arrived while a large frame was being decoded"
                self._failed(OverloadedError(why))
        elif completed_bytes(self._pending(), data) <= OFF_LOOP_BYTES:
            self._handle(self._read(data, end))
        else:
            self._waiting = deque([(data, end)])  # (the read in the worker: not counted as waiting)
            self._task = asyncio.get_running_loop().create_task(self._in_turn(), name=self._name)

    def later(self, call: Callable[[], None]) -> None:
        """``call()`` once the reads taken before it were handled (at once when none waits)."""
        if self._stopped:
            return
        if self._waiting is None:
            call()
        else:
            self._waiting.append(call)

    def cancel(self) -> None:
        """Drop what waits, and whatever comes later (the stream or its connection ended, or ``failed`` was
        told): a read in a worker is not handled."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        self._waiting = None
        self._waiting_bytes = 0

    async def _in_turn(self) -> None:
        waiting = self._waiting
        first = True
        try:
            while waiting and self._waiting is waiting:  # (cancelled from a handler: what waits is dropped)
                item = waiting.popleft()
                if callable(item):
                    item()
                    continue
                data, end = item
                if not first:
                    self._waiting_bytes -= len(data)
                first = False
                self._handle(await converted(completed_bytes(self._pending(), data), self._read, data, end))
        except asyncio.CancelledError:
            pass
        except Exception:  # (on the loop it would have reached the protocol's callback: a bug either way)
            log.exception("reading %s failed", self._name)
            if self._waiting is waiting:
                self._waiting, self._stopped = None, True
                self._failed(InternalError("internal error"))
        finally:
            if self._waiting is waiting:
                self._waiting = None
                self._waiting_bytes = 0
