"""The byte stream under a connection: what every transport hands to ``FramedConnection``.

A ``Channel`` reads whatever bytes arrived (``b""`` once the peer closed), buffers writes without
blocking, and makes a writer wait in ``drain()`` while the peer is not keeping up — the one place
back-pressure comes from. A peer that vanished is not an exception here: reads return ``b""``,
writes are dropped and ``drain()`` returns, so the connection's own end-of-stream handling (one
``error`` per live session) is the only way a lost peer is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol, runtime_checkable

__all__ = ["CLOSE_WAIT", "READ_SIZE", "Channel", "StreamChannel"]

READ_SIZE = 64 * 1024
"""Bytes asked of the stream per read (a frame may span many reads; the codec bounds a frame)."""
CLOSE_WAIT = 3.0
"""Seconds ``aclose`` lets the last buffered bytes reach a peer that reads slowly (or not at all)."""


@runtime_checkable
class Channel(Protocol):
    """A bidirectional byte stream to one peer."""

    peer: str | None
    """Who is at the other end, for the request context and logs (an address, ``"stdio"``)."""

    async def read(self) -> bytes:
        """The next bytes from the peer; ``b""`` when it closed its side (or the stream broke)."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer without waiting; dropped once the stream is closed or broken."""
        ...

    async def drain(self) -> None:
        """Wait until the queued bytes are down to the transport's high-water mark."""
        ...

    # Optional: ``has_room() -> bool``, true when ``drain()`` would return at once. A channel that can
    # tell cheaply offers it, and a session's writer then makes no ``drain()`` coroutine per event
    # (``FramedConnection.drain_when_full``).

    async def aclose(self) -> None:
        """Close this side (idempotent)."""
        ...


class StreamChannel:
    """A ``Channel`` over an asyncio ``StreamReader``/``StreamWriter`` pair (pipes or sockets)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, peer: str | None = None) -> None:
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self.broken = False
        """Whether a write or drain found the peer gone."""

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            self.broken = True
            return b""

    def write(self, data: bytes) -> None:
        if not data or self.broken or self._writer.is_closing():
            return
        try:
            self._writer.write(data)
        except (ConnectionError, OSError, RuntimeError):
            self.broken = True

    async def drain(self) -> None:
        if self.broken or self._writer.is_closing():
            return
        try:
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            self.broken = True  # the read side reports the end; nothing more is written

    async def aclose(self) -> None:
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError, asyncio.TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), CLOSE_WAIT)  # a peer not reading gives up the rest
