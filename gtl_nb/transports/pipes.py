"""A ``Channel`` over two pipe file descriptors (the gateway's standard input and output).

Reading uses asyncio's ``StreamReader`` (which stops reading the pipe while its buffer is full);
writing uses the pipe transport directly with a small flow-control protocol, so ``drain()`` waits
while the transport's buffer is above its high-water mark and returns at once when the reader went
away. Pipes, sockets and terminals only (``loop.connect_read_pipe`` refuses regular files: ``file_relay``).

Whoever reads the output going away before the channel's close (a pipe's reader gone, or a file's relay
stopped by a failed write) is the peer leaving: ``read`` returns the end at once, whatever is still
unread, and ``output_lost`` says so; ``answers_dropped`` says whether bytes were lost with it (some still
buffered then, or written afterwards) — a reader that left once it had read everything lost none.
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
        self.cut = False  # the pipe was lost with bytes still buffered (a write failed: its reader gone)
        self.gone = asyncio.Event()
        self.on_lost: Callable[[], object] | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.cut = exc is not None  # (both loops pass the failed write's error; a reader gone while idle: None)
        self.gone.set()
        self._wake()
        if self.on_lost is not None:
            self.on_lost()

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
        self._closed = asyncio.Event()  # the channel's close, or the output's reader gone
        self._closing = False
        self._ended = False  # ``read`` returned the end: the connection is over, its last answers going out
        self.output_gone = asyncio.Event()
        """Set when the output's reader went away before the channel's close: the peer left (what it did not
        read is lost; ``transports.stdio.answers_failure`` says why)."""
        self.output_fd: int | None = None
        """The descriptor written (``open_pipe_channel``)."""
        self.input_transport: asyncio.BaseTransport | None = None
        """The pipe transport ``reader`` is fed by (``open_pipe_channel``)."""
        self.on_output_gone: Callable[[], object] | None = None
        """Called when ``output_gone`` is set, before anything else reacts to it (the gateway notes whether
        sessions were still running, which the end of the connection then cancels)."""
        self._dropped = False  # bytes written once the output was gone: they reached nobody
        outflow.on_lost = self._output_gone

    def _output_gone(self) -> None:
        if self._closing or self._ended:  # (a client that closed our input first may stop reading then)
            return
        self.output_gone.set()
        if self.on_output_gone is not None:
            self.on_output_gone()
        self.on_half_close = None  # requests not read yet, or still running, can no longer be answered
        if self.input_transport is not None:
            self.input_transport.close()  # nothing more is read: a read waiting for bytes returns the end now
        self._closed.set()  # and so does one waiting after the input's end

    @property
    def output_lost(self) -> bool:
        """Whether ``output_gone`` is set."""
        return self.output_gone.is_set()

    @property
    def answers_dropped(self) -> bool:
        """Whether bytes written to the channel never reached its output: still buffered when the output's
        reader went away, or written after that (only answers handed to the pipe before count as read)."""
        return self._outflow.cut or self._dropped

    async def read(self) -> bytes:
        data = b""
        if not self.output_lost:
            with contextlib.suppress(ConnectionError, OSError):
                data = await self._reader.read(READ_SIZE)
            if not data and self.on_half_close is not None:
                hook, self.on_half_close = self.on_half_close, None
                hook()
                await self._closed.wait()
        if self.output_lost:
            data = b""
        self._ended = not data
        return data

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._outflow.lost and not self._transport.is_closing():
            self._transport.write(data)
        elif self.output_lost:
            self._dropped = True

    def has_room(self) -> bool:
        """Whether ``drain()`` would return at once (``FramedConnection.drain_when_full`` asks per event)."""
        return not self._outflow.paused or self._outflow.lost

    async def drain(self) -> None:
        await self._outflow.wait_for_room()

    async def aclose(self) -> None:
        self._closing = True
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
    input_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader),
        open(in_fd, "rb", buffering=0, closefd=False),  # noqa: SIM115
    )
    transport, outflow = await loop.connect_write_pipe(_Outflow, os.fdopen(out_fd, "wb", buffering=0))
    channel = PipeChannel(reader, transport, outflow, peer=peer)
    channel.output_fd, channel.input_transport = out_fd, input_transport
    return channel
