"""A ``Channel`` over two pipe file descriptors (the gateway's standard input and output).

Reading uses asyncio's ``StreamReader`` (which stops reading the pipe while its buffer is full);
writing uses the pipe transport directly with a small flow-control protocol, so ``drain()`` waits
while the transport's buffer is above its high-water mark and returns at once when the reader went
away. Pipes, sockets and terminals only (``loop.connect_read_pipe`` refuses regular files: ``file_relay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable

from gtl_nb.transports.channel import CLOSE_WAIT, READ_SIZE

__all__ = ["PipeChannel", "open_pipe_channel"]


class _Outflow(asyncio.BaseProtocol):
    """Flow control of the write pipe: ``pause_writing``/``resume_writing`` wake ``wait_for_room``."""

    def __init__(self) -> None:
        self.paused = False
        self.lost = False
        self.gone = asyncio.Event()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.gone.set()
        self._wake()

    async def wait_for_room(self) -> None:
        if self.paused and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class PipeChannel:
    """A ``Channel`` reading one pipe and writing another (see the module docstring)."""

    def __init__(
        self, reader: asyncio.StreamReader, transport: asyncio.WriteTransport, outflow: _Outflow, *, peer: str | None
    ) -> None:
        self.peer = peer
        self._reader = reader
        self._transport = transport
        self._outflow = outflow
        self.on_half_close: Callable[[], object] | None = None
        """Called once at the end of the input when set: the peer sends no more but still reads (a
        regular file as standard input), so ``read`` then waits for the channel's close instead of
        answering the end at once."""
        self._closed = asyncio.Event()

    async def read(self) -> bytes:
        try:
            data = await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""
        if not data and self.on_half_close is not None:
            hook, self.on_half_close = self.on_half_close, None
            hook()
            await self._closed.wait()
        return data

    def write(self, data: bytes) -> None:
        if data and not self._outflow.lost and not self._transport.is_closing():
            self._transport.write(data)

    def has_room(self) -> bool:
        """Whether ``drain()`` would return at once (``FramedConnection.drain_when_full`` asks per event)."""
        return not self._outflow.paused or self._outflow.lost

    async def drain(self) -> None:
        await self._outflow.wait_for_room()

    async def aclose(self) -> None:
        self._closed.set()
        if not self._transport.is_closing():
            self._transport.close()  # flushes what is buffered, then closes the pipe (the peer reads EOF)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outflow.gone.wait(), CLOSE_WAIT)


async def open_pipe_channel(in_fd: int, out_fd: int, *, peer: str | None = None) -> PipeChannel:
    """A channel reading ``in_fd`` and writing ``out_fd`` on the running loop.

    ``out_fd`` is closed with the channel (its peer then reads the end); ``in_fd`` is left open.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader),
        open(in_fd, "rb", buffering=0, closefd=False),  # noqa: SIM115
    )
    transport, outflow = await loop.connect_write_pipe(_Outflow, os.fdopen(out_fd, "wb", buffering=0))
    return PipeChannel(reader, transport, outflow, peer=peer)
