"""The HTTP runner: the one pooled ``httpx.AsyncClient`` that executes dialects' request descriptions.

Dialects stay free of I/O and clocks; this module owns the network and the three timeouts:

* ``connect`` — establishing the connection (``httpx.ConnectTimeout``),
* ``first_byte`` — one deadline from sending the request to the first byte of the body (the
  headers and the first chunk share it),
* ``idle`` — the longest silence between two body chunks of a streamed answer.

Each becomes a retryable ``TIMEOUT`` error event naming the timeout and its value. Connection
failures become ``PROVIDER_UNAVAILABLE``; a connection lost mid-body is handed to the dialect's
decoder as end-of-body, which reports the missing terminator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from gtl_nb.log import get_logger, redact
from gtl_nb.protocol.messages import CompletionRequest, Error, StreamEvent
from gtl_nb.providers.base import Deployment, HttpDialect, HttpRequest, retry_after_seconds

log = get_logger("engine.http")

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Timeouts:
    """Seconds; ``None`` disables one."""

    connect: float | None = 10.0
    first_byte: float | None = 60.0
    idle: float | None = 60.0

    @classmethod
    def from_config(cls, value: Any) -> Timeouts:
        if value is None:
            return cls()
        if isinstance(value, Timeouts):
            return value
        get = value.get if isinstance(value, dict) else (lambda k, d=None: getattr(value, k, d))
        return cls(
            connect=get("connect", cls.connect),
            first_byte=get("first_byte", cls.first_byte),
            idle=get("idle", cls.idle),
        )


class HttpRunner:
    """Executes dialect requests on one pooled client (created lazily on the running loop)."""

    def __init__(
        self,
        timeouts: Timeouts | None = None,
        *,
        max_connections: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.max_response_bytes = max_response_bytes
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            # a pool belongs to the loop that opened its connections (the engine's loop thread)
            self._client_loop = loop
            self._client = httpx.AsyncClient(
                limits=self._limits,
                timeout=httpx.Timeout(None, connect=self.timeouts.connect),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def fetch(
        self, description: HttpRequest, timeouts: Timeouts | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Execute a plain (non-streamed) request description: status, headers, body."""
        limits = timeouts or self.timeouts
        client = self._get_client()
        request = client.build_request(
            description.method, description.url, headers=description.headers, content=description.body
        )
        response = await asyncio.wait_for(client.send(request), limits.first_byte)
        return response.status_code, dict(response.headers), response.content

    async def run(
        self,
        dialect: HttpDialect,
        request: CompletionRequest,
        deployment: Deployment,
        timeouts: Timeouts | None = None,
    ) -> AsyncIterator[StreamEvent | Any]:
        """Send ``request`` through ``dialect`` and yield the decoded events.

        Yields the dialect decoder object itself last (so the engine can read ``provider_data``).
        """
        limits = timeouts or self.timeouts
        description = dialect.build_request(request, deployment, now=time.time())
        client = self._get_client()
        try:
            http_request = client.build_request(
                description.method, description.url, headers=description.headers, content=description.body
            )
        except (UnicodeError, ValueError, httpx.HTTPError) as exc:
            yield _unsendable(request, deployment, exc)
            return
        log.debug("%s %s -> %s", description.method, _safe_url(description.url), deployment.name)
        loop = asyncio.get_running_loop()
        # ``first_byte`` is one deadline from sending the request to the first byte of the body
        first_byte_deadline = None if limits.first_byte is None else loop.time() + limits.first_byte
        try:
            response = await asyncio.wait_for(client.send(http_request, stream=True), limits.first_byte)
        except httpx.LocalProtocolError as exc:  # our own request is not valid HTTP: never retried
            yield _unsendable(request, deployment, exc)
            return
        except asyncio.TimeoutError:
            yield _error(
                request,
                deployment,
                "TIMEOUT",
                f"no response within the first-byte timeout ({limits.first_byte} s)",
            )
            return
        except httpx.ConnectTimeout:
            yield _error(
                request,
                deployment,
                "TIMEOUT",
                f"connect timeout ({limits.connect} s) to {_host(description.url)}",
            )
            return
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            yield _error(
                request,
                deployment,
                "PROVIDER_UNAVAILABLE",
                f"cannot reach {_host(description.url)}: {exc or type(exc).__name__}",
            )
            return
        except httpx.HTTPError as exc:
            yield _error(request, deployment, "PROVIDER_UNAVAILABLE", f"HTTP failure: {exc or type(exc).__name__}")
            return
        try:
            if response.status_code >= 400:
                try:
                    body = await _read_capped(response, limits.idle, self.max_response_bytes)
                except (asyncio.TimeoutError, httpx.HTTPError) as exc:
                    yield _error(
                        request,
                        deployment,
                        "PROVIDER_UNAVAILABLE",
                        f"HTTP {response.status_code}, and its error body could not be read: "
                        f"{type(exc).__name__} {exc}".rstrip(),
                        http_status=response.status_code,
                    )
                    return
                headers = _seconds_retry_after(dict(response.headers), time.time())
                yield dialect.decode_error(request, deployment, response.status_code, headers, body)
                return
            decoder = dialect.response_decoder(request, deployment)
            chunks = response.aiter_bytes()  # decoded: providers gzip JSON bodies
            received = 0
            timeout = None if first_byte_deadline is None else max(0.0, first_byte_deadline - loop.time())
            deadline = _ReadDeadline()
            first_chunk = True
            while True:
                try:
                    chunk = await deadline.read(chunks.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    which, limit = ("first-byte", limits.first_byte) if first_chunk else ("idle", limits.idle)
                    yield _error(
                        request,
                        deployment,
                        "TIMEOUT",
                        f"stream stalled: {which} timeout ({limit} s) exceeded",
                    )
                    return
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    log.debug("connection lost mid-stream from %s: %s", deployment.name, exc)
                    break
                timeout = limits.idle
                first_chunk = False
                received += len(chunk)
                if received > self.max_response_bytes:  # a runaway body must not exhaust memory
                    yield _error(
                        request,
                        deployment,
                        "PROVIDER_UNAVAILABLE",
                        f"response larger than {self.max_response_bytes} bytes; stopped reading it",
                    )
                    return
                for event in decoder.feed(chunk):
                    yield event
            for event in decoder.close():
                yield event
            yield decoder
        finally:
            await response.aclose()


class _ReadDeadline:
    """A timeout on one read of a stream, for the task doing that read.

    ``asyncio.wait_for`` wraps every awaited read in a new task before Python 3.12 — for a
    streamed answer, one task per chunk. This arms one timer per read instead and, when it fires,
    cancels the task doing the read (looked up per read: a stream may change hands between tasks)
    and turns that cancellation into ``asyncio.TimeoutError``.
    """

    async def read(self, awaitable: Any, timeout: float | None) -> Any:
        task = asyncio.current_task()
        if timeout is None or task is None:
            return await awaitable
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not expired:
                raise  # a real cancellation from the caller
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None and uncancel() > 0:  # Python >= 3.11 counts cancellations
                raise  # the caller cancelled in the same tick: theirs wins
            raise asyncio.TimeoutError from None
        finally:
            handle.cancel()


def _seconds_retry_after(headers: dict[str, str], now: float) -> dict[str, str]:
    """Rewrite an HTTP-date ``Retry-After`` as seconds: dialects read no clock, the runner does."""
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                float(value)
            except ValueError:
                seconds = retry_after_seconds({"retry-after": value}, now=now)
                if seconds is not None:
                    headers[key] = f"{seconds:.3f}"
            break
    return headers


def _error(
    request: CompletionRequest,
    deployment: Deployment,
    code: str,
    message: str,
    *,
    http_status: int | None = None,
    retryable: bool = True,
) -> Error:
    return Error(
        session_id=request.session_id,
        code=code,  # type: ignore[arg-type]
        message=redact(message),  # an HTTP library's message may quote a header: never a key
        retryable=retryable,
        provider=deployment.name,
        http_status=http_status,
    )


def _unsendable(request: CompletionRequest, deployment: Deployment, exc: BaseException) -> Error:
    """Our request could not be put on the wire (an illegal header value, a bad URL): a configuration
    fault, never retried. The HTTP library's message quotes the offending value, which may be a key,
    so only the exception's type is kept."""
    log.warning("request to %s could not be encoded as HTTP (%s)", deployment.name, type(exc).__name__)
    return _error(
        request,
        deployment,
        "INVALID_REQUEST",
        f"the request to deployment {deployment.name!r} cannot be sent: a header or URL of its configuration "
        f"is not valid HTTP ({type(exc).__name__}); check its credentials, headers and base_url",
        retryable=False,
    )


async def _read_capped(response: httpx.Response, idle: float | None, limit: int) -> bytes:
    """An error body, read within ``idle`` seconds and at most ``limit`` bytes (the rest is dropped)."""

    async def read() -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            parts.append(chunk[: max(0, limit - size)])
            size += len(chunk)
            if size >= limit:
                break
        return b"".join(parts)

    return await asyncio.wait_for(read(), idle)


def _host(url: str) -> str:
    try:
        parsed = httpx.URL(url)
        return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}"
    except Exception:  # pragma: no cover - defensive, a bad URL is reported by httpx earlier
        return url


def _safe_url(url: str) -> str:
    """The URL without its query (Gemini's ``?key=`` must never be logged)."""
    return url.split("?", 1)[0]
