"""A ``Channel`` over a message-oriented connection (a WebSocket): one GTL frame per message.

Reads hand each message to the connection with a newline after it (docs/transports.md); writes split
the bytes the connection produced into frames and send each as one text message, in order, from one
sender task. ``drain()`` waits while more than ``HIGH_WATER_BYTES`` are queued, so a peer that is
not reading stops the engine rather than growing the queue (counted in bytes, not messages: 64 frames
of 8 MiB held half a gigabyte). A closed peer reads as ``b""``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["HIGH_WATER_BYTES", "SEND_WAIT", "MessageChannel"]

HIGH_WATER_BYTES = 1024 * 1024
"""Bytes queued (not yet handed to the connection) before ``drain()`` waits."""
SEND_WAIT = 3.0
"""Seconds ``aclose()`` lets the queued messages go out before it closes the connection."""


class MessageChannel:
    """``recv()`` returns the next message (``None`` once closed); ``send(text)`` sends one."""

    def __init__(
        self,
        recv: Callable[[], Awaitable[str | bytes | None]],
        send: Callable[[str], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        *,
        peer: str | None = None,
    ) -> None:
        self.peer = peer
        self.extensions: tuple[str, ...] = ()
        """The WebSocket extensions the two ends agreed on (``("permessage-deflate",)``), when known."""
        self._recv = recv
        self._send = send
        self._close = close
        self._pending = b""
        self._queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        self.queued_bytes = 0
        """Bytes of the messages queued and not yet sent."""
        self._sender: asyncio.Task[None] | None = None
        self._sent = asyncio.Event()
        self.broken = False

    async def read(self) -> bytes:
        try:
            message = await self._recv()
        except Exception:  # the library's closed-connection errors: the end of the stream
            message = None
        if message is None:
            return b""
        data = message.encode() if isinstance(message, str) else message
        return data + b"\n"

    def write(self, data: bytes) -> None:
        if not data or self.broken:
            return
        *frames, self._pending = (self._pending + data).split(b"\n")
        for frame in frames:
            if frame:
                self.queued_bytes += len(frame)
                self._queue.put_nowait((frame.decode(), len(frame)))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._pump(), name="gtl-ws-sender")

    async def _pump(self) -> None:
        while (item := await self._queue.get()) is not None:
            text, size = item
            try:
                await self._send(text)
            except Exception:
                self.broken = True
                return
            finally:
                self.queued_bytes -= size
                self._sent.set()

    async def drain(self) -> None:
        while self.queued_bytes > HIGH_WATER_BYTES and not self.broken and self._sender is not None:
            self._sent.clear()
            await self._sent.wait()

    async def aclose(self) -> None:
        """Send what is queued (``SEND_WAIT`` s at most), then close the connection. The sender task ends
        either way — also when this is cancelled (a closing loop), which would otherwise leave it pending."""
        sender = self._sender
        try:
            if sender is not None and not sender.done():
                self._queue.put_nowait(None)
                await asyncio.wait({sender}, timeout=SEND_WAIT)  # (a cancelled sender just ends the wait)
        finally:
            if sender is not None:
                sender.cancel()
            with contextlib.suppress(Exception):
                await self._close()
