"""``AiohttpTransport``: the default ``HttpTransport``, one pooled ``aiohttp.ClientSession`` per event loop.

Why aiohttp rather than httpx for the upstream calls (docs/benchmarks.md has the figures): its HTTP
parser is compiled and its connection pool hands a free connection to a waiting request without
scanning the whole pool, so a streamed 16-chunk answer costs about a quarter of httpx's CPU at
concurrency 1 and a tenth at concurrency 20, and thousands of concurrent streams start as fast as the
upstream answers. ``HttpxTransport`` stays available (``[upstream] client = "httpx"``).

Errors map onto the seam's exceptions (``engine.transport``); none of aiohttp's own escapes, and no
message quotes a header value (a key may be in one).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
import yarl

from gtl_nb.engine.transport import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    UnsendableRequest,
    check_request_headers,
    check_request_url,
)
from gtl_nb.providers.base import HttpRequest

__all__ = ["AiohttpTransport"]

_READ_SIZE = 64 * 1024


class _AiohttpResponse:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        # lower-case names, as the dialects and the runner look them up (Retry-After, Content-Type)
        self.headers: Mapping[str, str] = {name.lower(): value for name, value in response.headers.items()}

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()  # what the network delivered, decoded of gzip/deflate
                if not chunk:
                    return
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # aiohttp raises a lost connection before handing out what arrived just ahead of it;
            # those bytes are part of the answer (tokens the user should see before the error)
            tail = _buffered(content)
            if tail:
                yield tail
            raise ConnectionLost(type(exc).__name__) from None

    async def aclose(self) -> None:
        # a body read to its end goes back to the pool; one abandoned mid-way closes its connection
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport:
    """Pooled HTTP/1.1 over aiohttp; the pool is created lazily on the loop that uses it.

    ``max_connections`` bounds the open connections in all (0: no bound) and
    ``max_connections_per_host`` those to one host (0: no bound). A request waiting for a free
    connection waits within its connect and first-byte timeouts.
    """

    def __init__(self, *, max_connections: int = 0, max_connections_per_host: int = 0) -> None:
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return (
            f"AiohttpTransport(max_connections={self.max_connections}, "
            f"max_connections_per_host={self.max_connections_per_host})"
        )

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # a pool belongs to the loop that opened its connections (the engine's loop thread)
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                ssl=self._ssl,
                enable_cleanup_closed=False,
            )
            self._session_loop = loop
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                trust_env=False,  # like httpx(trust_env=False): no proxy or netrc from the environment
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> _AiohttpResponse:
        check_request_headers(request.headers)
        url = _exact_url(request.url)
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        try:
            response = await session.request(
                request.method,
                url,
                headers=request.headers,
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
                read_bufsize=_READ_SIZE,
            )
        except (aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError):
            raise ConnectTimeout(f"connect timeout ({connect_timeout} s)") from None
        except (aiohttp.InvalidURL, ValueError, UnicodeError) as exc:
            # an illegal header value or URL: the library's message may quote it (and a key)
            raise UnsendableRequest(type(exc).__name__) from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(_connector_reason(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(type(exc).__name__) from None
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _exact_url(url: str) -> yarl.URL:
    """``url`` as the dialect built it: already percent-encoded (a SigV4 signature covers the exact
    path, which yarl would otherwise re-quote), and free of whitespace and control characters."""
    check_request_url(url)
    try:
        return yarl.URL(url, encoded=True)
    except (ValueError, TypeError) as exc:
        raise UnsendableRequest(type(exc).__name__) from None


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What ``content`` holds unread (aiohttp keeps it, but its public reads raise first). Reads the
    reader's own buffer; should a later aiohttp rename it, nothing is recovered and nothing breaks
    (tests/engine/test_runner.py pins the behaviour)."""
    read = getattr(content, "_read_nowait", None)
    if read is None or not getattr(content, "_buffer", None):
        return b""
    try:
        return bytes(read(-1))
    except Exception:  # the private API changed: lose the tail, keep the error
        return b""


def _connector_reason(exc: aiohttp.ClientConnectorError) -> str:
    """``connection refused (host:port)`` from the OS error, without aiohttp's request details."""
    error = exc.os_error
    reason = (error.strerror or type(error).__name__) if error is not None else type(exc).__name__
    return f"{reason} ({exc.host}:{exc.port})"
