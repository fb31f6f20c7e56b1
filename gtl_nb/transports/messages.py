"""A ``Channel`` over a message-oriented connection (a WebSocket): one GTL frame per message, or
several when both ends agreed to it.

Reads hand each message to the connection with a newline after it (docs/transports.md), so a message
holding several newline-separated frames reads as those frames — with ``gtl.ndjson``; without it a
message is one frame, a pretty-printed one's line breaks read as the spaces they are (``one_frame``).
Writes split the bytes the connection produced into frames and send them in order from one sender task:
each frame as one text message, or —
with ``joins_frames``, when the peer offered the ``gtl.ndjson`` subprotocol (``NDJSON_SUBPROTOCOL``) —
every frame waiting when the sender runs joined by newlines into one message of at most ``JOIN_BYTES``
(a longer frame goes alone). Each message costs the WebSocket stack ~15 µs whatever it holds (framing,
compression, the server's send path), and the frames of one provider read arrive together, so a 16-token
answer is one or two messages instead of twenty. ``drain()`` waits while more than ``HIGH_WATER_BYTES``
are queued, so a peer that is not reading stops the engine rather than growing the queue (counted in
bytes, not messages: 64 frames of 8 MiB held half a gigabyte). A closed peer reads as ``b""``."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec

from gtl_nb.protocol.errors import FrameTooLargeError, GTLError

__all__ = [
    "HIGH_WATER_BYTES",
    "JOIN_BYTES",
    "NDJSON_SUBPROTOCOL",
    "SEND_WAIT",
    "MessageChannel",
    "ws_close_code",
]

NDJSON_SUBPROTOCOL = "gtl.ndjson"
"""The WebSocket subprotocol that lets a text message carry several frames, each but the last followed
by a newline. A peer that does not offer it gets one frame per message."""
JOIN_BYTES = 64 * 1024
"""Most bytes of a message of joined frames, newlines included (a frame longer than this goes alone)."""

HIGH_WATER_BYTES = 1024 * 1024
"""Bytes queued (not yet handed to the connection) before ``drain()`` waits."""
SEND_WAIT = 3.0
"""Seconds ``aclose()`` lets the queued messages go out before it closes the connection."""


PRETTY_BYTES = 1024 * 1024
"""Largest message whose line breaks ``read()`` checks on the event loop (``one_frame``); a longer one —
up to the WebSocket's message limit, ``max_frame_bytes`` and a little on the gateway — is checked in a
worker thread, so a pretty-printed frame of any size the gateway takes is one frame."""


def one_frame(data: bytes) -> bytes:
    """A message that is one frame (the peer did not offer ``gtl.ndjson``) with its line breaks made
    spaces when it is one JSON value — pretty-printed JSON, the spec's examples as written, is one frame
    rather than a line ``{`` and more. A JSON string cannot hold a raw line break, so each one was
    whitespace between tokens. Anything else is left as it is, its lines read as frames."""
    try:
        msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return data
    return data.replace(b"\r", b" ").replace(b"\n", b" ")


WS_CLOSE_CODES = {"INTERNAL": 1011, "OVERLOADED": 1013, "PROVIDER_UNAVAILABLE": 1013}
"""The WebSocket close code (RFC 6455 7.4.1) of a connection ended for a GTL error of that code; any other
code is ``1008`` (policy violation: a bad frame, a refused token), a frame too large ``1009``."""


def ws_close_code(error: GTLError | None) -> int:
    """The WebSocket close code of a connection this end gave up on for ``error`` (``None``: a normal end,
    ``1000``). A connection ended by a refused frame says so in its close, not ``1000`` (OK)."""
    if error is None:
        return 1000
    if isinstance(error, FrameTooLargeError):
        return 1009
    return WS_CLOSE_CODES.get(error.code, 1008)


class MessageChannel:
    """``recv()`` returns the next message (``None`` once closed); ``send(text)`` sends one.
    ``joins_frames``: the peer accepts several newline-separated frames in a message."""

    def __init__(
        self,
        recv: Callable[[], Awaitable[str | bytes | None]],
        send: Callable[[str], Awaitable[None]],
        close: Callable[[], Awaitable[None]],
        *,
        peer: str | None = None,
        joins_frames: bool = False,
    ) -> None:
        self.peer = peer
        self.joins_frames = joins_frames
        self.extensions: tuple[str, ...] = ()
        """The WebSocket extensions the two ends agreed on (``("permessage-deflate",)``), when known."""
        self._recv = recv
        self._send = send
        self._close = close
        self._pending = b""
        self._frames: deque[bytes] = deque()
        self._ready = asyncio.Event()  # frames were queued (or the channel is closing)
        self._closing = False
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
        if not self.joins_frames and b"\n" in data:
            # (a long message checked off the loop, as other large frames are decoded: gateway.offload)
            data = one_frame(data) if len(data) <= PRETTY_BYTES else await asyncio.to_thread(one_frame, data)
        return data + b"\n"

    def write(self, data: bytes) -> None:
        if not data or self.broken:
            return
        if type(data) is bytes and not self._pending and data.find(b"\n") == len(data) - 1 and len(data) > 1:
            # one whole frame (what the connection hands over per event): no joining, no split
            self.queued_bytes += len(data) - 1
            self._frames.append(data[:-1])
        else:
            *frames, self._pending = (self._pending + data).split(b"\n")
            for frame in frames:
                if frame:
                    self.queued_bytes += len(frame)
                    self._frames.append(frame)
        self._ready.set()
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._pump(), name="gtl-ws-sender")

    async def _pump(self) -> None:
        frames = self._frames
        while True:
            if not frames:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            joined = [frames.popleft()]
            size = length = len(joined[0])  # size: the frames' bytes; length: the message's, newlines included
            while self.joins_frames and frames and length + 1 + len(frames[0]) <= JOIN_BYTES:
                joined.append(frames.popleft())
                size += len(joined[-1])
                length += 1 + len(joined[-1])
            frame = joined[0] if len(joined) == 1 else b"\n".join(joined)
            try:
                await self._send(frame.decode())
            except Exception:
                self.broken = True
                return
            finally:
                self.queued_bytes -= size
                self._sent.set()

    def has_room(self) -> bool:
        """Whether ``drain()`` would return at once (asked per event, so no coroutine is made)."""
        return self.queued_bytes <= HIGH_WATER_BYTES or self.broken or self._sender is None

    async def drain(self) -> None:
        while self.queued_bytes > HIGH_WATER_BYTES and not self.broken and self._sender is not None:
            self._sent.clear()
            await self._sent.wait()

    async def aclose(self) -> None:
        """Send what is queued (``SEND_WAIT`` s at most), then close the connection. The sender task ends
        either way — also when this is cancelled (a closing loop), which would otherwise leave it pending."""
        sender = self._sender
        self._closing = True
        self._ready.set()
        try:
            if sender is not None and not sender.done():
                await asyncio.wait({sender}, timeout=SEND_WAIT)  # (a cancelled sender just ends the wait)
        finally:
            if sender is not None:
                sender.cancel()
            with contextlib.suppress(Exception):
                await self._close()
