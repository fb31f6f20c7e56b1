"""What the project's own HTTP clients share: a request's target parsed once, bounded inflation of a
compressed body, a pool wait's timer, and the words for an OS error (``httptools_transport``,
``h2_transport``)."""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from gtl_nb.engine.transport import ConnectFailed, ConnectionLost, UnsendableRequest, check_request_url

__all__ = [
    "MAX_INFLATED",
    "URL_CACHE_SIZE",
    "BufferedBody",
    "BufferedPieces",
    "Expired",
    "Inflater",
    "Key",
    "NegotiatedHttp2",
    "RequestTarget",
    "alpn_protocol",
    "cancel_for_time",
    "expire",
    "os_reason",
]

MAX_INFLATED = 256 * 1024
"""Most bytes one piece of a compressed body inflates to (the rest waits for the next read)."""
URL_CACHE_SIZE = 256
"""Parsed targets kept per client (a deployment sends to the same few URLs)."""

Key = tuple[str, str, int]  # (scheme, host, port)


class RequestTarget:
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
        self.key: Key = (scheme, host, port)
        self.host = host
        self.host_header = shown_host if port == default else f"{shown_host}:{port}"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.server_hostname = host if scheme == "https" else None


class Inflater:
    """gzip or deflate (zlib-wrapped, or raw as some servers send it) undone in bounded pieces."""

    __slots__ = ("_decoder", "_encoding")

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._decoder: Any = None  # made at the first byte (deflate: wrapped or raw, told by that byte)

    @classmethod
    def for_headers(cls, headers: Mapping[str, str]) -> Inflater | None:
        """The inflater a response's ``content-encoding`` asks for; ``None`` for a plain body."""
        encoding = headers.get("content-encoding", "").strip().lower()
        return cls(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """``data`` inflated, ``MAX_INFLATED`` bytes at most per piece, each made when asked for."""
        if self._decoder is None:
            self._decoder = zlib.decompressobj(window_bits(self._encoding, data[0]))
        while data:
            try:
                piece = self._decoder.decompress(data, MAX_INFLATED)
            except zlib.error as exc:
                raise ConnectionLost(f"the compressed body is corrupt ({exc})") from None
            data = self._decoder.unconsumed_tail
            if piece:
                yield piece

    def flush(self) -> bytes:
        if self._decoder is None:
            return b""
        try:
            return self._decoder.flush()
        except zlib.error as exc:
            raise ConnectionLost(f"the compressed body is corrupt ({exc})") from None


def window_bits(encoding: str, first: int) -> int:
    """zlib's ``wbits`` for a body: gzip or zlib told apart by their headers (47); for ``deflate``,
    zlib-wrapped when the first byte names the deflate method (8) in its low bits, else raw (-15)."""
    if encoding != "deflate":
        return 47
    return 15 if first & 0x0F == 8 else -15


class Expired(Exception):
    """A pool wait ran out of time."""


def expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(Expired())


def cancel_for_time(task: asyncio.Task[Any], expired: list[bool]) -> None:
    if not task.done():
        expired.append(True)
        task.cancel()


def os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


class BufferedBody(Protocol):
    """A response body as its connection fills it in: the pieces not read yet, how it ended (a
    failure, or complete), and the reader's wake-up while it waits for more."""

    body: deque[bytes]
    failure: Exception | None
    complete: bool
    waiter: asyncio.Future[None] | None


class BufferedPieces:
    """The body's pieces as they arrive (all that is buffered at once), inflated by ``inflater`` when
    the body is compressed; ``consumed(size)`` tells the connection each time the reader took
    ``size`` bytes (its flow control). Raises the connection's failure once the buffer is empty.

    An async iterator rather than an async generator: asyncio keeps every async generator it sees
    started in a weak set (for ``shutdown_asyncgens``) — an entry made and dropped per response,
    for an iterator that is always read to its end or dropped with its response."""

    __slots__ = ("_buffered", "_consumed", "_ended", "_inflater", "_inflating")

    def __init__(self, buffered: BufferedBody, inflater: Inflater | None, consumed: Callable[[int], None]) -> None:
        self._buffered = buffered
        self._inflater = inflater
        self._consumed = consumed
        self._inflating: Iterator[bytes] | None = None  # the pieces of one inflated read, made as asked for
        self._ended = False

    def __aiter__(self) -> BufferedPieces:
        return self

    @property
    def at_end(self) -> bool:
        """Whether the body is whole and every byte of it was handed out: the next step would end the
        iteration without waiting (an inflated body may still hold a tail: never at its end here)."""
        buffered = self._buffered
        return self._ended or (
            self._inflater is None and buffered.complete and not buffered.body and buffered.failure is None
        )

    async def aclose(self) -> None:
        """Read no more: later steps end at once (as a closed async generator's do); the response's own
        ``aclose`` is what decides the connection's fate."""
        self._ended, self._inflating = True, None

    async def __anext__(self) -> bytes:
        buffered = self._buffered
        while True:
            if self._inflating is not None:  # one bounded piece per step: the caller's cap stops a bomb between pieces
                piece = next(self._inflating, None)
                if piece is not None:
                    return piece
                self._inflating = None
            if self._ended:
                raise StopAsyncIteration
            if buffered.body:
                data = buffered.body.popleft() if len(buffered.body) == 1 else b"".join(buffered.body)
                buffered.body.clear()
                self._consumed(len(data))
                if self._inflater is None:
                    return data
                self._inflating = self._inflater.pieces(data)
                continue
            if buffered.failure is not None:
                raise buffered.failure
            if buffered.complete:
                self._ended = True
                rest = self._inflater.flush() if self._inflater is not None else b""
                if rest:
                    return rest
                raise StopAsyncIteration
            waiter = buffered.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                buffered.waiter = None


class NegotiatedHttp2(ConnectFailed):
    """An HTTP/1.1 client's TLS connection on which the server chose ``h2`` by ALPN (offered by a
    context shared with the HTTP/2 client): nothing was sent; the HTTP/2 client takes the call."""


def alpn_protocol(transport: Any) -> str | None:
    """The protocol a TLS transport's server chose by ALPN (``None``: plain TCP, or no choice)."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.selected_alpn_protocol() if ssl_object is not None else None
