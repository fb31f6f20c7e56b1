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
  aiohttp's default; a timer closes those past it). ``max_connections`` bounds open connections in
  all and ``max_connections_per_host`` those to one host (0: no bound); when only the overall bound
  stands in the way, another host's oldest idle connection is closed to make room. A request waiting
  for a free connection is woken in order of arrival and waits within its connect timeout. A
  connection goes back to the pool as soon as its response has arrived whole — the body the caller
  has not read yet stays buffered in the response — unless the server said ``Connection: close``; a
  response abandoned mid-body closes its connection.
* **A pooled connection the server closed.** A ``GET`` (or another idempotent request) whose reused
  connection ends before any byte of the response (the server dropped it while idle) is sent once more
  on a new connection. A ``POST`` is not — the server may have acted on it — and is the caller's
  ``ConnectFailed``, as with aiohttp: the engine's retry policy decides.
* **Limits.** Response heads are capped (``MAX_HEAD_BYTES``, ``MAX_HEADERS``), counted as the bytes
  arrive (llhttp buffers a header line until it ends); trailers are dropped; reading pauses while
  ``PAUSE_BYTES`` of body wait unread; compressed bodies are inflated one piece of at most
  ``MAX_INFLATED`` bytes per read of the caller, so a compression bomb cannot grow past the runner's
  body cap.
* **Errors** map onto the seam's exceptions (``engine.transport``): no message quotes a header value
  (a key may be in one) or the URL's query (Gemini's ``?key=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping

import httptools

from gtl_nb.engine.http_parts import (
    MAX_INFLATED,  # noqa: F401  (the tests read the bound here, where the client applies it)
    URL_CACHE_SIZE,
    BufferedPieces,
    Expired,
    Inflater,
    Key,
    NegotiatedHttp2,
    RequestTarget,
    alpn_protocol,
    cancel_for_time,
    expire,
    os_reason,
)
from gtl_nb.engine.transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    UnsendableRequest,
    check_request_headers,
)
from gtl_nb.providers.base import HttpRequest

__all__ = ["HttptoolsTransport"]

MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of status line and headers taken from a response."""
MAX_HEADERS = 256
PAUSE_BYTES = 256 * 1024
"""Body bytes buffered unread before the connection stops reading (resumed at a quarter of it)."""
IDLE_TIMEOUT = 15.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class _Exchange:
    """One response as it arrives: the head, then body pieces, then its end (or a failure)."""

    __slots__ = (
        "body",
        "buffered",
        "complete",
        "failure",
        "head",
        "head_bytes",
        "headers",
        "received",
        "status",
        "waiter",
    )

    def __init__(self, head: asyncio.Future[None]) -> None:
        self.head = head
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_bytes = 0  # bytes fed to the parser while the head was not complete
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

    def __init__(self, pool: HttptoolsTransport, key: Key, generation: int) -> None:
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

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self.close()
            return
        exchange.received = True
        heading = not exchange.head.done()
        buffered = exchange.buffered
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # a callback's own exception (too many headers) arrives wrapped: say what it was
            self._fail(exc.__context__ if isinstance(exc.__context__, _BadResponse) else exc)
            return
        except httptools.HttpParserUpgrade:
            self._fail(_BadResponse("a protocol upgrade nobody asked for"))
            return
        if exchange.buffered != buffered:  # body bytes came: one wake-up per read, not one per chunk
            self._body_arrived(exchange)
        if heading and not exchange.head.done():
            # llhttp keeps an unfinished header line itself: count what it was given, not what it parsed
            exchange.head_bytes += len(data)
            if exchange.head_bytes > MAX_HEAD_BYTES:
                self._fail(_BadResponse("the response head is too large"))

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
        if exchange.head.done():
            return  # a trailer (after a chunked body): never mixed into the response's headers
        if len(exchange.headers) >= MAX_HEADERS:
            raise _BadResponse("the response head has too many headers")
        # lower-case names, as the dialects and the runner look them up; a repeated header: the last
        # wins; values as aiohttp reads them (UTF-8, without trailing blanks)
        exchange.headers[name.decode("latin-1").lower()] = value.decode("utf-8", "replace").rstrip(" \t")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (103 Early Hints): the real one follows
            exchange.headers = {}
            return
        exchange.status = status
        if not exchange.head.done():
            exchange.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.body.append(body)
        exchange.buffered += len(body)  # ``data_received`` wakes the reader once the read is parsed

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if not exchange.head.done():  # the end of an interim response
            return
        self._end_message()

    # -- ours

    def _body_arrived(self, exchange: _Exchange) -> None:
        """Body bytes were buffered by the read just parsed: stop reading while too much waits (unless the
        response already ended: ``_end_message`` read on and handed the connection back), wake the reader."""
        transport = self.transport
        if exchange.buffered > PAUSE_BYTES and self.exchange is exchange and not self.paused and transport is not None:
            self.paused = True
            transport.pause_reading()
        exchange.wake()

    def send(self, data: bytes, exchange: _Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.transport.write(data)

    def consumed(self, exchange: _Exchange, size: int) -> None:
        """The caller took ``size`` buffered bytes: read on once a quarter of the pause mark is left."""
        exchange.buffered -= size
        if self.paused and exchange.buffered <= PAUSE_BYTES // 4 and self.exchange is exchange:
            self.paused = False
            if self.transport is not None and not self.closed:
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
        if self.paused and self.transport is not None and not self.closed:  # (uvloop raises on a closed one)
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


class _BadResponse(Exception):
    """A response this client will not take (a head too large, an upgrade nobody asked for)."""


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
        self._inflater = Inflater.for_headers(exchange.headers)

    def chunks(self) -> AsyncIterator[bytes]:
        exchange, connection = self._exchange, self._connection
        return BufferedPieces(exchange, self._inflater, lambda size: connection.consumed(exchange, size))

    async def aclose(self) -> None:
        exchange = self._exchange
        if not exchange.complete and exchange.failure is None:
            self._connection.close()  # abandoned mid-body: the rest would arrive on a pooled connection
        exchange.body.clear()


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
        self._idle: dict[Key, dict[_Connection, None]] = {}
        self._open: dict[Key, int] = {}
        self._open_total = 0
        self._waiters: deque[tuple[Key, asyncio.Future[None]]] = deque()
        self._targets: dict[str, RequestTarget] = {}
        self._ssl = ssl_context  # None: the system's trust store (ssl.create_default_context), made at first use
        self._closed = False
        self._generation = 0
        self._reaper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"HttptoolsTransport(max_connections={self.max_connections}, "
            f"max_connections_per_host={self.max_connections_per_host})"
        )

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> _Response:
        target = self._targets.get(request.url)
        if target is None:
            target = RequestTarget(request.url)
            if len(self._targets) >= URL_CACHE_SIZE:
                self._targets.clear()
            self._targets[request.url] = target
        data = _request_bytes(request, target)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._adopt(loop)
        self._closed = False  # (a transport closed by aclose opens new connections again, as aiohttp's)
        fresh = False
        while True:
            connection = await self._acquire(target, connect_timeout, loop, fresh=fresh)
            exchange = _Exchange(loop.create_future())
            connection.send(data, exchange)
            try:
                await exchange.head
            except _Unanswered as exc:
                # a reused connection the server had closed while idle: once more on a new one, when
                # sending twice is harmless (module docstring)
                if not fresh and connection.reused and not exc.received and request.method in _IDEMPOTENT:
                    fresh = True
                    continue
                raise ConnectFailed(str(exc)) from None
            except BaseException:
                connection.close()  # cancelled (the first-byte timeout): the answer would come unasked
                raise
            return _Response(connection, exchange)

    async def aclose(self) -> None:
        """Close the idle connections and wake every waiting request (with ``ConnectFailed``); a later
        ``send`` opens new connections."""
        self._closed = True
        for connections in self._idle.values():
            for connection in list(connections):
                connection.close()
        self._idle.clear()
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    # -- the pool

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a pool on ``loop`` (a pool's connections belong to the loop that opened them): the
        old loop's connections are dropped, never touched from this one, and no longer counted."""
        self._idle, self._open, self._open_total, self._waiters = {}, {}, 0, deque()
        self._generation += 1
        self._loop = loop
        self._reaper = None  # (a timer of the old loop fires there, finds another generation, and stops)

    async def _acquire(
        self, target: RequestTarget, connect_timeout: float | None, loop: asyncio.AbstractEventLoop, *, fresh: bool
    ) -> _Connection:
        """An idle connection to ``target`` (unless ``fresh``), else a new one when there is room, else
        the first free one in order of arrival — within ``connect_timeout`` (``ConnectTimeout``)."""
        key = target.key
        deadline = None if connect_timeout is None else loop.time() + connect_timeout
        while True:
            idle = None if fresh else self._idle.get(key)
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
            if not self._has_room(key):
                self._close_idle_elsewhere(key)  # another host's idle connection gives its place up
            if self._has_room(key):
                return await self._connect(target, deadline, loop)
            await self._wait_for_room(key, deadline, connect_timeout, loop)
            if self._closed:
                raise ConnectFailed("the HTTP client was closed")

    async def _wait_for_room(
        self, key: Key, deadline: float | None, connect_timeout: float | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Wait to be woken (``_wake_one``) until ``deadline``. A timer fails the wait: no task and no
        ``wait_for``, whose 3.11 version can swallow a cancellation that arrives as the wait ends."""
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (key, waiter)
        self._waiters.append(entry)
        timer = None if deadline is None else loop.call_at(deadline, expire, waiter)
        try:
            await waiter
        except Expired:
            raise ConnectTimeout(f"no free connection within the connect timeout ({connect_timeout} s)") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # woken, then cancelled before going on: the next waiter's turn
            raise
        finally:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _has_room(self, key: Key) -> bool:
        return not self._all_full() and not self._host_full(key)

    def _all_full(self) -> bool:
        return bool(self.max_connections) and self._open_total >= self.max_connections

    def _host_full(self, key: Key) -> bool:
        return bool(self.max_connections_per_host) and self._open.get(key, 0) >= self.max_connections_per_host

    def _could_make_room(self, key: Key) -> bool:
        """Whether closing another host's idle connection would let ``key`` open one."""
        return not self._host_full(key) and any(c for other, c in self._idle.items() if other != key)

    def _close_idle_elsewhere(self, key: Key) -> None:
        """Close the oldest idle connection to another host when that makes room for ``key`` (the
        overall bound, not the per-host one, stands in the way)."""
        if not self._all_full() or self._host_full(key):
            return
        for other, connections in self._idle.items():
            if other != key and connections:
                oldest = next(iter(connections))
                self._discard(oldest)  # its place is free now, before its transport has finished closing
                oldest.close()
                return

    async def _connect(
        self, target: RequestTarget, deadline: float | None, loop: asyncio.AbstractEventLoop
    ) -> _Connection:
        key = target.key
        self._open[key] = self._open.get(key, 0) + 1
        self._open_total += 1
        connection = _Connection(self, key, self._generation)
        context = None
        if target.server_hostname is not None:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        opening = loop.create_task(
            loop.create_connection(
                lambda: connection, target.host, key[2], ssl=context, server_hostname=target.server_hostname
            )
        )
        expired: list[bool] = []
        timer = None if deadline is None else loop.call_at(deadline, cancel_for_time, opening, expired)
        try:
            await opening  # a cancellation of ours cancels it too (and is never swallowed)
        except BaseException as exc:
            connection.close()
            self._discard(connection)
            if expired and isinstance(exc, asyncio.CancelledError):
                raise ConnectTimeout(f"connect timeout to {target.host_header}") from None
            if isinstance(exc, (OSError, ssl.SSLError, ValueError)):
                raise ConnectFailed(f"{os_reason(exc)} ({target.host_header})") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if alpn_protocol(connection.transport) not in (None, "http/1.1"):  # (a context that offered h2 too)
            connection.close()
            self._discard(connection)
            raise NegotiatedHttp2(f"the server chose HTTP/2 by ALPN ({target.host_header})")
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection whose response arrived whole, kept for the next request to its host."""
        if self._closed or connection.closed or self._loop is None or connection.generation != self._generation:
            connection.close()
            return
        connection.idle_since = self._loop.time()
        self._idle.setdefault(connection.key, {})[connection] = None
        if self._reaper is None:
            self._reaper = self._loop.call_later(self.idle_timeout, self._reap, self._generation)
        self._wake_one()

    def _reap(self, generation: int) -> None:
        """Close the idle connections past ``idle_timeout``; look again while any is left."""
        if generation != self._generation or self._loop is None:
            return
        self._reaper = None
        limit = self._loop.time() - self.idle_timeout
        for connections in list(self._idle.values()):
            for connection in [c for c in connections if c.idle_since <= limit]:
                self._discard(connection)
                connection.close()
        if any(self._idle.values()):
            self._reaper = self._loop.call_later(self.idle_timeout / 2, self._reap, generation)

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
        self._wake_one()

    def _wake_one(self) -> None:
        """Wake the first waiter that can go on now (an idle connection to its host, or room — made by
        closing another host's idle connection if need be)."""
        for waiting_key, waiter in self._waiters:
            if waiter.done():
                continue
            if self._idle.get(waiting_key) or self._has_room(waiting_key) or self._could_make_room(waiting_key):
                waiter.set_result(None)
                return


def _request_bytes(request: HttpRequest, target: RequestTarget) -> bytes:
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
    if isinstance(exc, (_BadResponse, httptools.HttpParserError)):
        return f"a malformed response ({exc})"
    return f"{default} ({os_reason(exc)})"
