"""Bounds on messages still arriving: WebSocket messages and HTTP requests that have begun and not ended.

A message that has not ended never reaches the GTL layer, whose timers count whole frames only: left alone,
a client could send most of a ``ws_max_size`` message and stop — ~8 MiB held per connection until the
connection's idle timeout, on each of the ``max_connections_per_address`` connections of an address. Two
bounds apply while a message arrives (``LimitedWebSocket``, and ``gateway.http._HttpProtocol`` for a request):

* **Time.** From its first byte a message must be whole within ``header_timeout`` seconds plus one second
  for every ``MIN_REQUEST_RATE`` (32 KiB) of it received — the rule an HTTP request already had — and it
  may not stall: ``header_timeout`` seconds without a byte more of it ends the connection too (pings and
  pongs in between do not count). A legitimate 8 MiB frame has 10 s + 256 s with the defaults: a 256 kbit/s
  uplink. Time the gateway itself stops reading (a whole message waiting for the application) is not held
  against the client.
* **Memory.** ``UnfinishedBytes``: every connection's first ``FREE_BYTES`` (64 KiB) of an unfinished
  message are its own; beyond, bytes come from one budget for the listener, ``max_unfinished_bytes``
  (default 256 MiB). A message that would pass it ends its connection with a retryable ``OVERLOADED``.

Either way the connection is closed at once (its close frame, or its ``408``/``503``, written first) —
no close handshake is waited for from a client in the middle of a message — with one ``INFO`` line. No
ledger row or audit record: no request was ever whole (docs/ledger.md, "What leaves a row").

The same WebSocket protocol also bounds what a peer that reads nothing costs (``LimitedWebSocket``'s
"a peer that reads nothing"): while the connection's write buffer is over its high-water mark only the
latest ping is answered, once the peer reads again, and a close that cannot reach it drops the
connection instead of waiting behind what it never read.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from gtl_nb.gateway.listeners import MIN_REQUEST_RATE
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import encode
from gtl_nb.protocol.errors import GTLError, OverloadedError, ProviderTimeoutError

log = get_logger("gateway.unfinished")

FREE_BYTES = 64 * 1024
"""Bytes of an unfinished message a connection holds outside the budget (its request head, a small frame)."""


def upgrade_heads_within(max_head_bytes: int) -> None:
    """Let websockets' handshake parser take any head the HTTP listener took: one limit, one refusal.

    uvicorn reads an upgrade's head with the HTTP protocol first — a head over ``max_head_bytes`` is
    answered there, ``431`` with a GTL error, as ``POST /v1/gtl`` is — and then hands the same bytes to
    websockets, whose own limits (a line of 8 KiB, 128 header lines: ``WEBSOCKETS_MAX_LINE_LENGTH``,
    ``WEBSOCKETS_MAX_NUM_HEADERS``, read by its ``http11`` module) refused a head the listener had taken,
    with its own plain-text ``431``. Raised to the listener's (a header line is at least 4 bytes), they
    never refuse first; the head is still bounded by ``max_head_bytes``, counted before websockets sees it.
    The websockets client shares the module (it reads a server's answer with them): a gateway's only."""
    from websockets import http11

    http11.MAX_LINE_LENGTH = max(http11.MAX_LINE_LENGTH, max_head_bytes)
    http11.MAX_NUM_HEADERS = max(http11.MAX_NUM_HEADERS, max_head_bytes // 4)


# WebSocket close codes (RFC 6455 7.4.1)
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


class UnfinishedBytes:
    """The bytes one listener's connections hold in messages that have not ended, against one budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.held = 0

    def take(self, count: int) -> bool:
        """Hold ``count`` more bytes; ``False`` (nothing held) when that would pass the budget."""
        if self.held + count > self.budget:
            return False
        self.held += count
        return True

    def give(self, count: int) -> None:
        self.held = max(0, self.held - count)


def over_free(count: int) -> int:
    """The part of a connection's unfinished bytes that counts against the budget."""
    return count - FREE_BYTES if count > FREE_BYTES else 0


def limited_websocket(
    base: type[Any], *, header_timeout: float, budget: UnfinishedBytes, max_head_bytes: int | None = None
) -> type[Any]:
    """uvicorn's WebSocket protocol ``base`` (websockets' sans-I/O one) with the bounds of this module.
    ``max_head_bytes``: the HTTP listener's head limit, which an upgrade's head has passed already
    (``upgrade_heads_within``)."""
    if max_head_bytes is not None:
        upgrade_heads_within(max_head_bytes)

    class LimitedWebSocket(base):  # type: ignore[misc, valid-type]
        """Fragments are joined as they arrive (one ``bytearray``: a message of a million one-byte fragments
        costs its bytes, not a million objects), and the message still arriving — those fragments and the
        parser's incomplete frame — is measured after every read."""

        timeout: ClassVar[float] = header_timeout
        unfinished: ClassVar[UnfinishedBytes] = budget

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._message = bytearray()  # the fragments of the message arriving
            self._size = 0  # its bytes after the last read: fragments and the parser's buffer
            self._charged = 0  # of which the budget holds
            self._begun = 0.0  # when its first byte arrived
            self._progress = 0.0  # when its last new byte arrived
            self._timer: asyncio.TimerHandle | None = None
            self._delivered = False  # a whole message went to the application during the current read
            self._unsent_pong = b""  # the answer to the latest ping, while the peer reads nothing

        # -- fragments -------------------------------------------------------------------------------

        def handle_text(self, event: Any) -> None:
            self._first(event, "text")

        def handle_bytes(self, event: Any) -> None:
            self._first(event, "bytes")

        def _first(self, event: Any, kind: str) -> None:
            self.curr_msg_data_type = kind
            self._message = bytearray()
            if event.fin:
                self.frames = [event.data]
                self.send_receive_event_to_app()
            else:
                self._message += event.data

        def handle_cont(self, event: Any) -> None:
            self._message += event.data
            if event.fin:
                self.frames = [bytes(self._message)]
                self._message = bytearray()
                self.send_receive_event_to_app()

        def send_receive_event_to_app(self) -> None:
            self._delivered = True
            super().send_receive_event_to_app()

        # -- a peer that reads nothing ----------------------------------------------------------------
        # The protocol answers each ping with a pong on its own, past the application's flow control: a
        # client sending pings and reading nothing grew the gateway's write buffer without bound (15 MB/s).
        # While the peer reads nothing of what is written (the buffer over its high-water mark) only the
        # most recent ping is answered, once it reads again — RFC 6455 (5.5.3) allows that — and its input
        # is still read, so a client that sends before it reads is never held up. A close the application
        # sends then cannot reach it: the connection is dropped instead.

        def handle_ping(self) -> None:
            pong = b"".join(self.conn.data_to_send())
            if self.writable.is_set():
                self.transport.write(pong)
            else:
                self._unsent_pong = pong  # (only the latest: the ones before it are answered by it)

        def resume_writing(self) -> None:
            super().resume_writing()
            pong, self._unsent_pong = self._unsent_pong, b""
            if pong and not self.transport.is_closing():
                self.transport.write(pong)

        async def send(self, message: Any) -> None:
            if message.get("type") == "websocket.close" and not self.writable.is_set():
                peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
                log.info("dropping the WebSocket from %s: it reads nothing, so no close frame can reach it", peer)
                self.transport.abort()  # (connection_lost follows: the application's close returns)
                return
            await super().send(message)
            if message.get("type") == "websocket.close" and self.close_timer is not None:
                self.close_timer.cancel()  # (its close would wait for ever on a buffer nobody reads)
                self.close_timer = self.loop.call_later(self.close_timeout, self._close_unanswered)

        def _close_unanswered(self) -> None:
            """The peer did not answer the close frame in time: close, dropping what it never read."""
            self.close_timer = None
            if self.transport.get_write_buffer_size():
                self.transport.abort()
            else:
                self.transport.close()

        # -- measuring -------------------------------------------------------------------------------

        def data_received(self, data: bytes) -> None:
            self._delivered = False
            super().data_received(data)
            if self.transport.is_closing():
                self._settle(0)
                return
            size = len(self._message) + len(self.conn.reader.buffer)
            if size == self._size and not self._delivered:
                return
            if size and self.close_sent:
                # the application has closed; a client still sending its message is not waited for
                self._settle(0)
                self.transport.close()
                return
            now = self.loop.time()
            if size and (not self._size or self._delivered):  # a message begins (another ended in this read)
                self._begun = self._progress = now
                if self._timer is None:
                    self._timer = self.loop.call_later(self.timeout, self._check)
            elif size > self._size:
                self._progress = now
            self._size = size
            if not self._settle(size):
                error = OverloadedError("the gateway holds too many messages still arriving; send it again later")
                self._fail(TRY_AGAIN_LATER, error, "its message would pass max_unfinished_bytes")
                return
            if not size:
                self._stop()

        def _settle(self, size: int) -> bool:
            """Hold ``size`` bytes against the budget (``False``: it would pass); 0 releases them all."""
            charge = over_free(size)
            if charge > self._charged:
                if not self.unfinished.take(charge - self._charged):
                    return False
            elif charge < self._charged:
                self.unfinished.give(self._charged - charge)
            self._charged = charge
            if not size:
                self._size = 0
                self._stop()
            return True

        def _check(self) -> None:
            self._timer = None
            if not self._size or self.transport.is_closing():
                return
            now = self.loop.time()
            if self.read_paused:  # the gateway stopped reading, not the client: its time is not counted
                self._begun += now - self._progress
                self._progress = now
            deadline = self._begun + self.timeout + self._size / MIN_REQUEST_RATE
            stalled = self._progress + self.timeout
            if min(deadline, stalled) > now:
                self._timer = self.loop.call_later(min(deadline, stalled) - now, self._check)
                return
            if stalled <= now:
                what = f"a message stopped arriving for {self.timeout:g} s"
            else:
                rate = MIN_REQUEST_RATE // 1024
                what = f"a message did not arrive in time ({self.timeout:g} s, plus 1 s per {rate} KiB)"
            self._fail(POLICY_VIOLATION, ProviderTimeoutError(what), what)

        def _stop(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _fail(self, code: int, error: GTLError, why: str) -> None:
            """Tell the client (one GTL ``error``, then a close frame) and close the connection now."""
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.info("closing the WebSocket from %s: %s", peer, why)
            self._settle(0)
            self._message = bytearray()
            if self.handshake_complete and not self.close_sent and self.initial_response is None:
                try:
                    self.conn.send_text(encode(error.to_event("")))
                    self.conn.fail(code, why[:120])
                    self.transport.write(b"".join(self.conn.data_to_send()))
                except Exception as exc:  # the protocol's state allows no more frames: just close
                    log.debug("no close frame for %s: %s", peer, exc)
                self.close_sent = True
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._settle(0)
            self._message = bytearray()
            super().connection_lost(exc)

    return LimitedWebSocket
