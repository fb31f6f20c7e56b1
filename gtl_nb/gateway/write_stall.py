"""A connection that reads none of what the gateway writes is dropped after ``write_timeout`` seconds.

A session writes its events through the transport's flow control: once a connection's write buffer is over
its high-water mark (the peer's socket buffers full too), the next write waits until the peer reads. A client
that stops reading — hung, suspended, or hostile — then holds its sessions, their provider streams and their
places in the session caps, with every byte still unsent, until its connection ends: for ever, on a TCP
connection that stays up. ``WriteStallBound`` bounds that wait: when writing has stayed paused for
``write_timeout`` seconds — no ``resume_writing``, so the peer read less than the buffer's high-to-low water
span in all that time — the connection is reset (nothing more can reach the peer anyway, and the kernel's
buffer, megabytes by then, is freed at once), its sessions end ``cancelled`` as for any client that leaves,
and one ``INFO`` line says why. A slow reader is not cut: each ``resume_writing`` (the buffer drained to
its low-water mark) starts the count again.

A session whose events come without waiting (the offline ``echo`` model's) may still run to its end once
the writes it waited on fail, before the connection's end is read: its row then says ``ok`` for an answer
the client never read, as it would for a client that left while such an answer was being written.

It is a mix-in for asyncio protocols whose transport calls ``pause_writing``/``resume_writing`` (the HTTP
listener's HTTP/1.1 and WebSocket protocols): put it first among the bases and set ``write_timeout``.
gRPC and QUIC bound the same wait where they wait: ``GrpcStreamChannel`` (a write that does not complete)
and ``QuicPeer.drain`` (a stream none of whose bytes go out).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
from typing import Any, ClassVar

from gtl_nb.log import get_logger

log = get_logger("gateway.write_stall")


class WriteStallBound:
    """Abort the connection when its writing stays paused for ``write_timeout`` seconds (see the module)."""

    write_timeout: ClassVar[float]
    transport: Any
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    _stall_timer: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._stall_timer is None and math.isfinite(self.write_timeout):
            self._stall_timer = self.loop.call_later(self.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self._forget_stall()
        super().resume_writing()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget_stall()
        super().connection_lost(exc)  # type: ignore[misc]

    def _forget_stall(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _write_stalled(self) -> None:
        self._stall_timer = None
        if self.transport.get_protocol() is not self:  # upgraded meanwhile: the new protocol keeps its own count
            return
        if self.transport.is_closing() and not self.transport.get_write_buffer_size():
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        unread = self.transport.get_write_buffer_size()
        log.info(
            "dropping the connection from %s: it read none of what was written to it for %g s (%d bytes wait)",
            peer,
            self.write_timeout,
            unread,
        )
        held = self.transport.get_extra_info("socket")
        if held is not None:  # a reset, not a FIN queued behind megabytes the peer will never read
            with contextlib.suppress(OSError):
                held.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()  # (connection_lost follows: every send waiting on the buffer returns)
