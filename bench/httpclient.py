"""A small, fast HTTP/1.1 keep-alive client for the load generator: one request at a time per connection.

The same client drives every HTTP path (the direct upstream, the gateway's OpenAI-compatible endpoint
and SSE transport, LiteLLM), so whatever it costs is paid equally by each path. It is an asyncio
``Protocol`` with a sans-I/O response parser (``ResponseParser``: status line, headers, a
``Content-Length`` or chunked body), no header objects, no decoding beyond de-chunking. While a body
arrives it counts a ``marker`` (each token's text) across piece boundaries and notes when the first
one arrived — the time to first token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

_HEAD_LIMIT = 64 * 1024


class ProtocolFault(Exception):
    """The server's response was not HTTP/1.1 this parser reads."""


class ResponseParser:
    """Sans-I/O: ``feed(bytes)`` until ``done``; the de-chunked body is passed to ``on_body``."""

    def __init__(self, on_body: Callable[[bytes], None]) -> None:
        self.on_body = on_body
        self.status = 0
        self.keep_alive = True
        self.done = False
        self._buffer = bytearray()
        self._state = "head"
        self._remaining = 0  # body bytes left (Content-Length) or of the current chunk

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while not self.done:
            progressed = getattr(self, "_" + self._state)()
            if not progressed:
                return

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _HEAD_LIMIT:
                raise ProtocolFault("response head too large")
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[: end + 4]
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolFault(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                self.keep_alive = value.strip().lower() != b"close"
        if chunked:
            self._state = "chunk_size"
        elif length is not None:
            self._remaining = length
            self._state = "body"
        else:
            raise ProtocolFault("a response without a length (close-delimited bodies are not read)")
        return True

    def _body(self) -> bool:
        if self._remaining == 0:
            self.done = True
            return False
        if not self._buffer:
            return False
        piece = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(piece)]
        self._remaining -= len(piece)
        self.on_body(piece)
        return True

    def _chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        size = int(bytes(self._buffer[:end]).split(b";", 1)[0], 16)
        del self._buffer[: end + 2]
        if size == 0:
            self._state = "trailer"
        else:
            self._remaining = size
            self._state = "chunk_data"
        return True

    def _chunk_data(self) -> bool:
        if not self._buffer:
            return False
        piece = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(piece)]
        self._remaining -= len(piece)
        self.on_body(piece)
        if self._remaining == 0:
            self._state = "chunk_crlf"
        return True

    def _chunk_crlf(self) -> bool:
        if len(self._buffer) < 2:
            return False
        del self._buffer[:2]
        self._state = "chunk_size"
        return True

    def _trailer(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        if not line:
            self.done = True
        return True


@dataclass
class Reply:
    """One answer as the load generator sees it (times in seconds since the request was sent)."""

    status: int
    latency: float
    ttft: float | None
    markers: int
    ended: bool
    """Whether the body held the path's end marker (``[DONE]``, ``event: done``…)."""
    head: bytes
    """The first bytes of the body, to say what went wrong when the status is not 200."""


class MarkerCounter:
    """Counts ``marker`` in a body that arrives in pieces (a marker may straddle two pieces) and notes
    whether ``end_marker`` arrived."""

    def __init__(self, marker: bytes, end_marker: bytes, start: float) -> None:
        self.marker = marker
        self.end_marker = end_marker
        self.start = start
        self.count = 0
        self.first: float | None = None
        self.ended = False
        self.head = b""
        # the last len-1 bytes seen: too short to hold a whole marker, so nothing is counted twice
        self._tail = b""
        self._end_tail = b""

    def __call__(self, piece: bytes) -> None:
        if len(self.head) < 300:
            self.head += piece[: 300 - len(self.head)]
        window = self._tail + piece
        found = window.count(self.marker)
        if found:
            self.count += found
            if self.first is None:
                self.first = time.perf_counter() - self.start
        self._tail = window[len(window) - len(self.marker) + 1 :]
        if not self.ended:
            end_window = self._end_tail + piece
            self.ended = self.end_marker in end_window
            self._end_tail = end_window[len(end_window) - len(self.end_marker) + 1 :]


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self.waiter is None or self.waiter.done():
            return
        try:
            self.parser.feed(data)
        except (ProtocolFault, ValueError) as exc:
            self.waiter.set_exception(ProtocolFault(str(exc)))
            return
        if self.parser.done:
            self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection mid-response"))


class HttpConnection:
    """One keep-alive connection to ``host:port`` (opened on first use, reopened after a close)."""

    def __init__(self, host: str, port: int, *, local_host: str | None = None) -> None:
        self.host = host
        self.port = port
        self.local_host = local_host
        self._protocol: _ClientProtocol | None = None

    async def _open(self) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        local = (self.local_host, 0) if self.local_host else None
        _, protocol = await loop.create_connection(_ClientProtocol, self.host, self.port, local_addr=local)
        return protocol

    async def request(
        self,
        head: bytes,
        body: bytes,
        marker: bytes,
        end_marker: bytes,
        body_filter: Callable[[bytes], bytes] | None = None,
    ) -> Reply:
        """Send one request (``head`` is the request line and headers without the blank line's CRLF
        pair and without ``Content-Length``); read the whole response. ``body_filter`` turns each
        de-chunked piece into what is counted (a gzip decoder, say)."""
        if self._protocol is None or self._protocol.closed:
            self._protocol = await self._open()
        protocol = self._protocol
        start = time.perf_counter()
        counter = MarkerCounter(marker, end_marker, start)
        parser = ResponseParser(counter if body_filter is None else lambda piece: counter(body_filter(piece)))
        protocol.parser = parser
        protocol.waiter = asyncio.get_running_loop().create_future()
        assert protocol.transport is not None
        protocol.transport.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        try:
            await protocol.waiter
        except BaseException:
            self.close()
            raise
        latency = time.perf_counter() - start
        if not parser.keep_alive:
            self.close()
        return Reply(parser.status, latency, counter.first, counter.count, counter.ended, counter.head)

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


def request_head(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    """A request line and headers, ready for ``HttpConnection.request`` (it adds the length)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
