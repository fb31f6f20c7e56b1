"""``FramedConnection``: a sans-I/O ``GTLConnection`` driven over a ``Channel``.

Both ends of every transport use it, so the rules below hold for the gateway and the client alike:

* **Order.** ``send_nowait`` hands the message to the connection and writes the bytes it returns in
  the same step (no ``await`` in between), so frames reach the channel in the order the connection
  produced them, whichever task sent them.
* **Back-pressure.** ``send`` also waits in ``drain()`` until the channel is below its high-water
  mark; a task that sends through ``send`` therefore holds at most one frame beyond that mark, which
  bounds the memory of each session however slowly the peer reads. Drains are serialised by a lock
  (Python 3.10's streams allow one waiter at a time).
* **One reader.** ``events()`` is the read loop: it yields the connection's events, writes the
  replies the protocol produced itself before reading more, and ends after ``ConnectionTerminated``
  with the last bytes queued (closing the channel sends them, within the channel's own time limit).
  With ``reader_waits`` (the gateway) it also waits for those replies to drain, so a peer that does
  not read is not read either; a client's reader must not wait (``reader_waits=False``), or two full
  pipes could wait on each other. Each read goes to the connection through ``receive``, whose result
  (if any) the reader awaits before it reads on: the gateway's ``offload.OffloadedFrames`` decodes a
  large frame in a worker thread there, the frames after it waiting their turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.connection_events import CONNECTION_CLOSED, NEED_DATA, ConnectionEvent
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import WireMessage
from gtl_nb.transports.channel import Channel

__all__ = ["FramedConnection"]


class FramedConnection:
    """One ``GTLConnection`` on one ``Channel`` (see the module docstring)."""

    def __init__(self, connection: GTLConnection, channel: Channel, *, reader_waits: bool = True) -> None:
        self.connection = connection
        self.channel = channel
        self.reader_waits = reader_waits
        self._drain_lock = asyncio.Lock()
        self._has_room: Callable[[], bool] | None = getattr(channel, "has_room", None)
        self.waiting_for_peer = False
        """Whether the reader waits — for room to write, then for the peer's next bytes — with every byte it
        read handled."""
        self.read_no_more = False
        """Set to end ``events()`` at its next need of bytes, once what was read is handled (the gateway's stop
        answers every request it read, then closes)."""

    @property
    def closed(self) -> bool:
        """Whether the connection ended (its last events may still be waiting in ``events()``)."""
        return self.connection.closed

    def send_nowait(self, message: WireMessage) -> None:
        """Frame ``message`` and queue it (and any reply due before it) on the channel.

        Raises what ``GTLConnection.send`` raises for a message this end may not send now.
        """
        self.channel.write(self.connection.send(message))

    async def send(self, message: WireMessage) -> None:
        """``send_nowait``, then wait until the channel has room again."""
        self.send_nowait(message)
        await self.drain()

    def flush_nowait(self) -> None:
        """Queue the bytes the connection produced by itself (hello, protocol replies)."""
        self.channel.write(self.connection.data_to_send())

    async def drain(self) -> None:
        """Wait until the channel is below its high-water mark."""
        async with self._drain_lock:
            await self.channel.drain()

    def drain_when_full(self) -> Awaitable[None] | None:
        """``drain()`` when the channel may be over its mark; ``None`` when its ``has_room()`` (a method
        a channel may offer) says there is room — the per-event check, with no coroutine made for it."""
        if self._has_room is not None and self._has_room():
            return None
        return self.drain()

    def close_nowait(self, error: GTLError | None = None) -> None:
        """End the connection from this side; with ``error`` the peer is told why."""
        self.channel.write(self.connection.close(error))

    async def events(self) -> AsyncIterator[ConnectionEvent]:
        """The connection's events until it ended; reads the channel whenever it needs data."""
        connection = self.connection
        while True:
            event = connection.next_event()
            if event is CONNECTION_CLOSED:
                self.flush_nowait()  # the channel's aclose() gets these last bytes out (or gives up)
                return
            if event is NEED_DATA:
                self.flush_nowait()
                if self.read_no_more:
                    return
                self.waiting_for_peer = True
                try:
                    if self.reader_waits:
                        await self.drain()
                    data = await self.channel.read()
                finally:
                    self.waiting_for_peer = False
                received = self.receive(data)
                if received is not None:
                    await received
                continue
            yield event

    def receive(self, data: bytes) -> Awaitable[None] | None:
        """Hand ``data`` read from the channel to the connection; ``events()`` awaits what this returns
        (if anything) before it reads on. Here the connection decodes it at once; the gateway's
        ``offload.OffloadedFrames`` decodes a large frame in a worker thread instead."""
        self.connection.receive_data(data)
        return None
