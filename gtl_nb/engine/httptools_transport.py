"""``HttptoolsTransport``: the default ``HttpTransport``, a lean HTTP/1.1 client of our own over httptools.

Why (docs/benchmarks.md has the figures): a provider call is one POST to a host the engine talks to all
day, and most of a general client's work per request — cookie jars, redirects, proxy and tracing hooks,
a multidict per response, a timer per request — is work the engine never needs. This client parses
with httptools (the compiled llhttp parser uvicorn's server uses, and ours) and keeps only what a
provider call needs: a keep-alive pool per host (the most recently used connection first), TLS, the
seam's connect timeout, gzip and deflate bodies, and flow control. ``[upstream] client = "aiohttp"``
and ``"httpx"`` stay available.

What it does, precisely:

* **Pool.** Idle connections are kept per ``(scheme, host, port)`` for ``idle_timeout`` seconds (15,
  aiohttp's default). ``max_connections`` bounds open connections in all and
  ``max_connections_per_host`` those to one host (0: no bound); a request waiting for a free one waits
  in order of arrival, within its connect timeout. A connection goes back to the pool as soon as its
  response has arrived whole — the body the caller has not read yet stays buffered in the response —
  unless the server said ``Connection: close``; a response abandoned mid-body closes its connection.
* **A pooled connection the server closed.** If a reused connection ends before any byte of the
  response came back (the server dropped it while idle), the request is sent once more on a new
  connection; a failure of that one is the caller's ``ConnectFailed``.
* **Limits.** Response heads are capped (``MAX_HEAD_BYTES``, ``MAX_HEADERS``); reading pauses while
  ``PAUSE_BYTES`` of body wait unread; compressed bodies are inflated as the caller reads, at most
  ``MAX_INFLATED`` bytes per piece, so a compression bomb cannot grow past the runner's body cap.
* **Errors** map onto the seam's exceptions (``engine.transport``): no message quotes a header value
  (a key may be in one) or the URL's query (Gemini's ``?key=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

from gtl_nb.engine.transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    UnsendableRequest,
    check_request_headers,
    check_request_url,
)
from gtl_nb.providers.base import HttpRequest

__all__ = ["HttptoolsTransport"]

MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of status line and headers taken from a response."""
MAX_HEADERS = 256
PAUSE_BYTES = 256 * 1024
"""Body bytes buffered unread before the connection stops reading (resumed at a quarter of it)."""
MAX_INFLATED = 256 * 1024
"""Most bytes one piece of a compressed body inflates to (the rest waits for the next read)."""
IDLE_TIMEOUT = 15.0
_URL_CACHE_SIZE = 256

_Key = tuple[str, str, int]  # (scheme, host, port)


class _Target:
    """What sending to one URL needs, parsed once per URL (a deployment sends to the same few)."""

    __slots__ = ("host", "host_header", "key", "path", "server_hostname")

    def __init__(self, url: str) -> None:
        check_request_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsendableRequest(type(exc).__name__) from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise UnsendableRequest("the URL is not http:// or https:// with a host")
        if parts.username is not None or parts.password is not None:
            raise UnsendableRequest("the URL carries credentials")
        host = parts.hostname
        default = 443 if scheme == "https" else 80
        port = default if port is None else port
        shown_host = f"[{host}]" if ":" in host else host
        self.key: _Key = (scheme, host, port)
        self.host = host
        self.host_header = shown_host if port == default else f"{shown_host}:{port}"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.server_hostname = host if scheme == "https" else None


class _Exchange:
    """One response as it arrives: the head, then body pieces, then its end (or a failure)."""

    __slots__ = (
        "body",
        "buffered",
        "complete",
        "failure",
        "head",
        "head_bytes",
        "header_names",
        "headers",
        "received",
        "status",
        "waiter",
    )

    def __init__(self, head: asyncio.Future[None]) -> None:
        self.head = head
        self.status = 0
        self.headers: dict[str, str] = {}
        self.header_names: list[bytes] = []
        self.head_bytes = 0
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.failure: Exception | None = None
        self.received = False  # any byte of the response arrived
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: httptools parses what arrives into the current ``_Exchange``."""

    def __init__(self, pool: HttptoolsTransport, key: _Key, generation: int) -> None:
        self.pool = pool
        self.key = key
        self.generation = generation  # the pool's loop it was counted in (``HttptoolsTransport._adopt``)
        self.counted = True  # it holds a place in the pool's counts until it closes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self.paused = False
        self._pending_name = b""

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        exchange.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # a callback's own exception (a head too large) arrives wrapped: say what it was
            self._fail(exc.__context__ if isinstance(exc.__context__, _HeadTooLarge) else exc)

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._discard(self)
        exchange = self.exchange
        if exchange is not None and not exchange.complete and exchange.failure is None:
            if exchange.head.done() and _until_close(exchange):
                self._end_message()  # a body without a length ends with its connection
            else:
                self._fail(exc)

    # -- httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.head_bytes += len(name) + len(value) + 4
        if exchange.head_bytes > MAX_HEAD_BYTES or len(exchange.headers) >= MAX_HEADERS:
            raise _HeadTooLarge("the response head is too large")
        # lower-case names, as the dialects and the runner look them up; a repeated header: the last wins
        exchange.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (103 Early Hints): the real one follows
            exchange.headers = {}
            exchange.head_bytes = 0
            return
        exchange.status = status
        if not exchange.head.done():
            exchange.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if not exchange.head.done():  # the end of an interim response
            return
        self._end_message()

    # -- ours

    def send(self, data: bytes, exchange: _Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.transport.write(data)

    def consumed(self, exchange: _Exchange, size: int) -> None:
        """The caller took ``size`` buffered bytes: read on once a quarter of the pause mark is left."""
        exchange.buffered -= size
        if self.paused and exchange.buffered <= PAUSE_BYTES // 4 and self.exchange is exchange:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()  # connection_lost follows (and tells a waiting exchange)

    def _end_message(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.complete = True
        self.exchange = None
        exchange.wake()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        if self.parser.should_keep_alive() and not self.closed:
            self.pool._release(self)
        else:
            self.close()

    def _fail(self, exc: BaseException | None) -> None:
        exchange = self.exchange
        self.exchange = None
        if exchange is not None and exchange.failure is None and not exchange.complete:
            if exchange.head.done():
                exchange.failure = ConnectionLost(_reason(exc, "the connection ended mid-body"))
                exchange.wake()
            else:
                failure = _Unanswered(_reason(exc, "the connection closed before a response"))
                failure.received = exchange.received
                exchange.head.set_exception(failure)
        self.close()


class _HeadTooLarge(Exception):
    pass


class _Unanswered(ConnectFailed):
    """The connection failed before the response's head was complete."""

    received = False


class _Response:
    """``engine.transport.HttpResponse`` over one ``_Exchange``."""

    __slots__ = ("_connection", "_exchange", "_inflater", "headers", "status")

    def __init__(self, connection: _Connection, exchange: _Exchange) -> None:
        self._connection = connection
        self._exchange = exchange
        self.status = exchange.status
        self.headers: Mapping[str, str] = exchange.headers
        encoding = exchange.headers.get("content-encoding", "").strip().lower()
        self._inflater = _Inflater(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None

    async def chunks(self) -> AsyncIterator[bytes]:
        exchange, connection = self._exchange, self._connection
        while True:
            if exchange.body:
                data = exchange.body.popleft() if len(exchange.body) == 1 else b"".join(exchange.body)
                exchange.body.clear()
                connection.consumed(exchange, len(data))
                if self._inflater is None:
                    yield data
                else:
                    for piece in self._inflater.feed(data):
                        yield piece
                continue
            if exchange.failure is not None:
                raise exchange.failure
            if exchange.complete:
                if self._inflater is not None:
                    for piece in self._inflater.flush():
                        yield piece
                return
            waiter = exchange.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                exchange.waiter = None

    async def aclose(self) -> None:
        exchange = self._exchange
        if not exchange.complete and exchange.failure is None:
            self._connection.close()  # abandoned mid-body: the rest would arrive on a pooled connection
        exchange.body.clear()


class _Inflater:
    """gzip or deflate (zlib-wrapped, or raw as some servers send it) undone in bounded pieces."""

    __slots__ = ("_decoder", "_may_go_raw")

    def __init__(self, encoding: str) -> None:
        # 47: zlib or gzip, told apart by the header; deflate without a header is retried raw below
        self._decoder = zlib.decompressobj(47 if encoding != "deflate" else 15)
        self._may_go_raw = encoding == "deflate"

    def feed(self, data: bytes) -> list[bytes]:
        try:
            pieces = self._drain(data)
        except zlib.error as exc:
            if not self._may_go_raw:
                raise ConnectionLost(f"the compressed body is corrupt ({exc})") from None
            self._decoder = zlib.decompressobj(-15)
            self._may_go_raw = False
            try:
                pieces = self._drain(data)
            except zlib.error as again:
                raise ConnectionLost(f"the compressed body is corrupt ({again})") from None
        self._may_go_raw = False  # the first bytes decoded: this decoder is the right one
        return pieces

    def _drain(self, data: bytes) -> list[bytes]:
        pieces = []
        while data:
            piece = self._decoder.decompress(data, MAX_INFLATED)
            if piece:
                pieces.append(piece)
            data = self._decoder.unconsumed_tail
        return pieces

    def flush(self) -> list[bytes]:
        rest = self._decoder.flush()
        return [rest] if rest else []


class HttptoolsTransport:
    """Pooled HTTP/1.1 over httptools (module docstring); the pool belongs to the loop that uses it.

    ``max_connections`` bounds the open connections in all (0: no bound) and
    ``max_connections_per_host`` those to one host (0: no bound). A request waiting for a free
    connection waits within its connect and first-byte timeouts. ``idle_timeout``: seconds an unused
    connection is kept; ``ssl_context``: how ``https://`` servers are verified (default: the system's
    trust store, verifying host names).
    """

    def __init__(
        self,
        *,
        max_connections: int = 0,
        max_connections_per_host: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.idle_timeout = idle_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        # idle connections per host, oldest first (a dict: a closed one leaves in O(1))
        self._idle: dict[_Key, dict[_Connection, None]] = {}
        self._open: dict[_Key, int] = {}
        self._open_total = 0
        self._waiters: deque[tuple[_Key, asyncio.Future[None]]] = deque()
        self._targets: dict[str, _Target] = {}
        self._ssl = ssl_context  # None: the system's trust store (ssl.create_default_context), made at first use
        self._closed = False
        self._generation = 0

    def __repr__(self) -> str:
        return (
            f"HttptoolsTransport(max_connections={self.max_connections}, "
            f"max_connections_per_host={self.max_connections_per_host})"
        )

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> _Response:
        target = self._targets.get(request.url)
        if target is None:
            target = _Target(request.url)
            if len(self._targets) >= _URL_CACHE_SIZE:
                self._targets.clear()
            self._targets[request.url] = target
        data = _request_bytes(request, target)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._adopt(loop)
        if self._closed:
            raise ConnectFailed("the HTTP client is closed")
        for attempt in (1, 2):
            connection = await self._acquire(target, connect_timeout, loop)
            exchange = _Exchange(loop.create_future())
            connection.send(data, exchange)
            try:
                await exchange.head
            except _Unanswered as exc:
                # a reused connection the server had closed while idle: once more, on a new one
                if attempt == 1 and connection.reused and not exc.received:
                    continue
                raise ConnectFailed(str(exc)) from None
            except BaseException:
                connection.close()  # cancelled (the first-byte timeout): the answer would come unasked
                raise
            return _Response(connection, exchange)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in list(connections):
                connection.close()
        self._idle.clear()
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    # -- the pool

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a pool on ``loop`` (a pool's connections belong to the loop that opened them): the
        old loop's connections are dropped, never touched from this one, and no longer counted."""
        self._idle, self._open, self._open_total, self._waiters = {}, {}, 0, deque()
        self._generation += 1
        self._loop = loop
        self._closed = False

    async def _acquire(
        self, target: _Target, connect_timeout: float | None, loop: asyncio.AbstractEventLoop
    ) -> _Connection:
        key = target.key
        deadline = None if connect_timeout is None else loop.time() + connect_timeout
        while True:
            idle = self._idle.get(key)
            while idle:
                connection, _ = idle.popitem()  # the most recently used: warmest, least likely timed out
                transport = connection.transport
                if connection.closed or transport is None or transport.is_closing():
                    continue
                if loop.time() - connection.idle_since > self.idle_timeout:
                    connection.close()
                    continue
                connection.reused = True
                return connection
            if self._has_room(key):
                return await self._connect(target, deadline, loop)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((key, waiter))
            try:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                raise ConnectTimeout(f"no free connection within the connect timeout ({connect_timeout} s)") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove((key, waiter))
            if self._closed:
                raise ConnectFailed("the HTTP client is closed")

    def _has_room(self, key: _Key) -> bool:
        if self.max_connections and self._open_total >= self.max_connections:
            return False
        return not (self.max_connections_per_host and self._open.get(key, 0) >= self.max_connections_per_host)

    async def _connect(self, target: _Target, deadline: float | None, loop: asyncio.AbstractEventLoop) -> _Connection:
        key = target.key
        self._open[key] = self._open.get(key, 0) + 1
        self._open_total += 1
        connection = _Connection(self, key, self._generation)
        context = None
        if target.server_hostname is not None:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            opening = loop.create_connection(
                lambda: connection, target.host, key[2], ssl=context, server_hostname=target.server_hostname
            )
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait_for(opening, remaining)
        except BaseException as exc:
            connection.close()
            self._discard(connection)
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectTimeout(f"connect timeout to {target.host_header}") from None
            if isinstance(exc, (OSError, ssl.SSLError, ValueError)):
                raise ConnectFailed(f"{_os_reason(exc)} ({target.host_header})") from None
            raise
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection whose response arrived whole, kept for the next request to its host."""
        if self._closed or connection.closed or self._loop is None or connection.generation != self._generation:
            connection.close()
            return
        connection.idle_since = self._loop.time()
        self._idle.setdefault(connection.key, {})[connection] = None
        self._wake_one(connection.key)

    def _discard(self, connection: _Connection) -> None:
        """A connection closed (or never opened): out of the pool, its place free (once)."""
        if not connection.counted or connection.generation != self._generation:
            return
        connection.counted = False
        key = connection.key
        idle = self._idle.get(key)
        if idle:
            idle.pop(connection, None)
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
        self._open_total = max(0, self._open_total - 1)
        self._wake_one(key)

    def _wake_one(self, key: _Key) -> None:
        """Wake the first waiter that can go on now (an idle connection to its host, or room)."""
        if not self._waiters:
            return
        for waiting_key, waiter in self._waiters:
            if waiter.done():
                continue
            if self._idle.get(waiting_key) or self._has_room(waiting_key):
                waiter.set_result(None)
                return


def _request_bytes(request: HttpRequest, target: _Target) -> bytes:
    """The request's head and body, as one write."""
    headers = request.headers
    check_request_headers(headers)
    lines = [f"{request.method} {target.path} HTTP/1.1\r\n"]
    names = set()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in ("content-length", "transfer-encoding", "connection"):
            continue  # ours to say: the body is sent whole, the connection kept
        names.add(lowered)
        lines.append(f"{name}: {value}\r\n")
    if "host" not in names:
        lines.append(f"Host: {target.host_header}\r\n")
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: gzip, deflate\r\n")
    body = request.body or b""
    if body or request.method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    try:
        head = "".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise UnsendableRequest("a non-ASCII character in the request line") from None
    return head + body if body else head


def _until_close(exchange: _Exchange) -> bool:
    """Whether the body runs until the connection closes (no length, not chunked)."""
    headers = exchange.headers
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()


def _reason(exc: BaseException | None, default: str) -> str:
    if exc is None:
        return default
    if isinstance(exc, (_HeadTooLarge, httptools.HttpParserError)):
        return f"a malformed response ({exc})"
    return f"{default} ({_os_reason(exc)})"


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


