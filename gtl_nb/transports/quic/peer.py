"""``QuicPeer``: aioquic's asyncio protocol with per-stream listeners and flow-controlled writes.

Both ends use it. Each stream has a ``StreamListener`` that the peer calls synchronously with what
arrived (data, a reset, a stop-sending request); a stream the other side opens is announced to
``on_stream``, which returns its listener (or ``None``: the stream is ignored).

**Back-pressure.** ``write`` hands bytes to QUIC at once; ``drain(stream_id)`` then waits while more
than ``HIGH_WATER`` of them have not gone out yet. QUIC sends a stream's bytes only as far as that
stream's flow-control window (granted by the reader) and the congestion window allow, so a writer
that drains after each frame holds at most ``HIGH_WATER`` plus one frame per stream, and a stream
whose reader is slow stops its own writer only.

**A stream that takes nothing.** While ``drain`` waits, the stream's sent offset is watched: when none
of its bytes went out for ``write_timeout`` seconds (its reader granted no flow-control credit, or the
connection's is used up) ``on_write_stalled(stream_id)`` is called, once per wait; the owner decides
what to end. A slow reader is not cut: each byte QUIC sends on the stream starts the count again.

aioquic has no public view of a stream's send state, so ``unsent`` reads the stream table
(``QuicConnection._streams``, the same since aioquic 0.9); the slow-reader test fails if that changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection

from gtl_nb.log import get_logger
from gtl_nb.transports.quic.config import HIGH_WATER
from gtl_nb.transports.quic.wire import CLOSE_CODES

__all__ = ["QuicPeer", "StreamListener"]

log = get_logger("transports.quic")
_PING_IDS = itertools.count(1)
# aioquic logs a failed handshake as a warning that Python's last-resort handler would print under a
# notebook cell; the caller gets it as the connection's error. An application's own logging still sees it.
logging.getLogger("quic").addHandler(logging.NullHandler())


class StreamListener(Protocol):
    """What one stream's owner is told (synchronously, on the loop)."""

    def data_received(self, data: bytes, end: bool) -> None:
        """Bytes in order; ``end`` once the peer finished its side (FIN)."""

    def reset_received(self, code: int) -> None:
        """The peer abandoned its side (RESET_STREAM)."""

    def stop_received(self, code: int) -> None:
        """The peer will not read this stream any more (STOP_SENDING); QUIC has reset our side."""


class QuicPeer(QuicConnectionProtocol):
    """One QUIC connection, either end (see the module docstring)."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic)
        self.on_stream: Callable[[int], StreamListener | None] = lambda stream_id: None
        self.on_address: Callable[[Any], None] = lambda address: None
        self.on_handshake: Callable[[str | None], None] = lambda alpn: None
        self.on_terminated: Callable[[events.ConnectionTerminated], None] = lambda event: None
        self.on_write_stalled: Callable[[int], None] = lambda stream_id: None
        self.write_timeout = math.inf
        """Seconds ``drain`` may wait with none of its stream's bytes going out before ``on_write_stalled``."""
        self.address: Any = None
        self.terminated: events.ConnectionTerminated | None = None
        """How the connection ended (``None`` while it lasts)."""
        self.closed_here = False
        """Whether this end closed it."""
        self.unreachable: OSError | None = None
        """An ICMP error reported before the handshake completed (a client's connected socket)."""
        self.handshake: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._listeners: dict[int, StreamListener] = {}
        self._known: set[int] = set()  # the peer's streams announced to on_stream, listened to or not
        self._written: dict[int, int] = {}
        self._stopped: set[int] = set()  # streams the peer stopped or we reset: nothing more goes out
        self._finished: set[int] = set()  # streams we ended (FIN written)
        self._blocked: dict[int, asyncio.Future[None]] = {}
        self._stalls: dict[int, _Stall] = {}  # streams whose drain waits: since when none of their bytes went out
        self._progress = asyncio.Event()
        self._pinging: asyncio.Task[None] | None = None

    # -- streams -----------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.terminated is None and not self.closed_here

    def open_stream(self, listener: StreamListener) -> int:
        """A new bidirectional stream of ours, listened to by ``listener``."""
        stream_id = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(stream_id, b"")  # takes the id, sends nothing yet
        self._listeners[stream_id] = listener
        self._written[stream_id] = 0
        return stream_id

    def write(self, stream_id: int, data: bytes, *, end: bool = False) -> bool:
        """Queue ``data`` (and FIN with ``end``); ``False`` when the stream or connection takes no more."""
        if not self.is_open or stream_id in self._stopped or stream_id in self._finished:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end)
        except (ValueError, RuntimeError):  # the stream was reset, finished or discarded
            self._stopped.add(stream_id)
            return False
        self._written[stream_id] = self._written.get(stream_id, 0) + len(data)
        if end:
            self._finished.add(stream_id)
        self._transmit_soon()
        return True

    def unsent(self, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that QUIC has not sent yet (flow control or congestion holds them)."""
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return 0
        return max(0, self._written.get(stream_id, 0) - stream.sender.highest_offset)

    async def drain(self, stream_id: int) -> None:
        """Wait while more than ``HIGH_WATER`` bytes of ``stream_id`` wait to be sent (watched for a stall:
        ``write_timeout``)."""
        try:
            while self.is_open and stream_id not in self._stopped and self.unsent(stream_id) > HIGH_WATER:
                self._watch_stall(stream_id)
                waiter = self._blocked[stream_id] = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    if self._blocked.get(stream_id) is waiter:
                        del self._blocked[stream_id]
        finally:
            stall = self._stalls.pop(stream_id, None)
            if stall is not None:
                stall.timer.cancel()

    def _sent(self, stream_id: int) -> int:
        """How far QUIC has sent ``stream_id`` (its highest offset sent at least once)."""
        stream = self._quic._streams.get(stream_id)
        return 0 if stream is None else int(stream.sender.highest_offset)

    def _watch_stall(self, stream_id: int) -> None:
        """Start counting, once per wait, how long none of ``stream_id``'s bytes go out."""
        if stream_id in self._stalls or not math.isfinite(self.write_timeout):
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.write_timeout, self._check_stall, stream_id)
        self._stalls[stream_id] = _Stall(self._sent(stream_id), loop.time(), timer)

    def _moved(self, stream_id: int) -> None:
        """Note whether a waiting stream sent more since its count began (then it starts again)."""
        stall = self._stalls.get(stream_id)
        if stall is not None and (sent := self._sent(stream_id)) > stall.sent:
            stall.sent, stall.since = sent, asyncio.get_running_loop().time()

    def _check_stall(self, stream_id: int) -> None:
        stall = self._stalls.get(stream_id)
        if stall is None:
            return
        self._moved(stream_id)
        loop = asyncio.get_running_loop()
        left = stall.since + self.write_timeout - loop.time()
        if left > 0:  # it moved meanwhile: count from then
            stall.timer = loop.call_later(left, self._check_stall, stream_id)
            return
        del self._stalls[stream_id]
        self.on_write_stalled(stream_id)

    async def flushed(self, stream_ids: Iterable[int], timeout: float) -> None:
        """Wait (at most ``timeout`` s) until what was written to ``stream_ids`` and their FIN are acknowledged."""

        async def settle() -> None:
            pending = set(stream_ids)
            while self.terminated is None:
                pending = {stream_id for stream_id in pending if not self._acknowledged(stream_id)}
                if not pending:
                    return
                self._progress.clear()
                await self._progress.wait()

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(settle(), timeout)

    def reset(self, stream_id: int, code: int) -> None:
        """Abandon both directions of ``stream_id`` (RESET_STREAM and STOP_SENDING) and forget it."""
        with contextlib.suppress(ValueError, RuntimeError):
            self._quic.reset_stream(stream_id, code)
        self.stop(stream_id, code)

    def stop(self, stream_id: int, code: int) -> None:
        """Stop reading ``stream_id`` (STOP_SENDING) and forget its listener."""
        with contextlib.suppress(ValueError, RuntimeError):
            self._quic.stop_stream(stream_id, code)
        self.forget(stream_id)
        self._transmit_soon()

    def forget(self, stream_id: int) -> None:
        """Stop telling anyone about ``stream_id`` (what still arrives on it is dropped)."""
        self._listeners.pop(stream_id, None)
        self._written.pop(stream_id, None)
        self._finished.discard(stream_id)
        self._stopped.discard(stream_id)
        waiter = self._blocked.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the connection -----------------------------------------------------------------------------

    def close_with(self, code: int, reason: str = "") -> None:
        """Close the connection with an application error code and reason (sent at once)."""
        self.closed_here = True
        self.close(error_code=code, reason_phrase=reason)
        self._wake_all()

    def start_pings(self, interval: float) -> None:
        """Send a PING every ``interval`` seconds while the connection lasts (the peer acknowledges it)."""
        self._pinging = asyncio.get_running_loop().create_task(self._ping(interval), name="gtl-quic-ping")

    async def _ping(self, interval: float) -> None:
        while self.is_open:
            await asyncio.sleep(interval)  # a keep-alive period, not a wait for the peer
            if self.is_open:
                self._quic.send_ping(next(_PING_IDS))
                self.transmit()

    def stop_pings(self) -> None:
        if self._pinging is not None:
            self._pinging.cancel()

    # -- aioquic's side -------------------------------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.address is None:
            self.address = addr
            self.on_address(addr)
        super().datagram_received(data, addr)

    def error_received(self, exc: OSError) -> None:
        # ICMP errors are easy to forge, so they only end a handshake that has not completed
        if not self.handshake.done():
            self.unreachable = exc
            self.handshake.set_exception(exc)
            self.handshake.exception()  # marked as seen: the opener may have stopped waiting

    def transmit(self) -> None:
        super().transmit()
        self._progress.set()
        if self._blocked:
            for stream_id, waiter in list(self._blocked.items()):
                self._moved(stream_id)
                if self.unsent(stream_id) <= HIGH_WATER and not waiter.done():
                    waiter.set_result(None)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # a listener's bug must not stop aioquic's event loop half-way: end the connection
            log.exception("handling a QUIC event failed")
            if self.is_open:
                self.close_with(CLOSE_CODES["INTERNAL"], "internal error")

    def _dispatch(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            listener = self._listener(event.stream_id)
            if listener is not None:
                listener.data_received(event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            listener = self._listener(event.stream_id)
            if listener is not None:
                listener.reset_received(event.error_code)
        elif isinstance(event, events.StopSendingReceived):
            self._stopped.add(event.stream_id)
            listener = self._listeners.get(event.stream_id)
            waiter = self._blocked.pop(event.stream_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if listener is not None:
                listener.stop_received(event.error_code)
        elif isinstance(event, events.HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(event.alpn_protocol)
            self.on_handshake(event.alpn_protocol)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            self.stop_pings()
            if not self.handshake.done():
                self.handshake.set_exception(ConnectionError(event.reason_phrase))
                self.handshake.exception()  # marked as seen: the opener reads ``terminated``
            self._wake_all()
            self.on_terminated(event)

    def _listener(self, stream_id: int) -> StreamListener | None:
        listener = self._listeners.get(stream_id)
        if listener is not None or not self._from_peer(stream_id) or stream_id in self._known:
            return listener  # a stream of ours, or one forgotten: late bytes are dropped
        if len(self._known) > 2 * len(self._listeners) + 64:
            # aioquic reports nothing more for a stream it discarded: those ids need no remembering
            self._known = {known for known in self._known if known in self._listeners or known in self._quic._streams}
        self._known.add(stream_id)
        listener = self.on_stream(stream_id)
        if listener is not None:
            self._listeners[stream_id] = listener
            self._written.setdefault(stream_id, 0)
        return listener

    def _from_peer(self, stream_id: int) -> bool:
        client_initiated = stream_id % 2 == 0
        return client_initiated != self._quic.configuration.is_client

    def _acknowledged(self, stream_id: int) -> bool:
        stream = self._quic._streams.get(stream_id)
        return stream is None or stream.sender.is_finished

    def _wake_all(self) -> None:
        self._progress.set()
        for waiter in self._blocked.values():
            if not waiter.done():
                waiter.set_result(None)
        self._blocked.clear()


class _Stall:
    """A waiting stream's count: how far it had sent, since when, and the timer that looks again."""

    __slots__ = ("sent", "since", "timer")

    def __init__(self, sent: int, since: float, timer: asyncio.TimerHandle) -> None:
        self.sent = sent
        self.since = since
        self.timer = timer
