"""The HTTP runner: executes dialects' request descriptions over an ``HttpTransport``.

Dialects stay free of I/O and clocks; the transport (``engine.transport``; the httptools client by default)
puts bytes on the wire; this module owns the three timeouts, the body cap and the decoding:

* ``connect`` — establishing the connection (the transport's ``ConnectTimeout``),
* ``first_byte`` — one deadline from sending the request to the first byte of the body (the
  headers and the first chunk share it),
* ``idle`` — the longest silence between two body chunks of a streamed answer.

Each becomes a retryable ``TIMEOUT`` error event naming the timeout and its value. Connection
failures become ``PROVIDER_UNAVAILABLE``; a connection lost mid-body is handed to the dialect's
decoder as end-of-body, and the error it reports for the missing end is worded alike for every
provider, "deployment 'x' ended its answer early (the connection closed after N bytes of it)", its
own words going to the log (``_cut_short``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gtl_nb.engine.loop import within
from gtl_nb.engine.transport import (
    ConnectionLost,
    ConnectTimeout,
    HttpResponse,
    HttpTransport,
    TransportError,
    UnsendableRequest,
)
from gtl_nb.log import get_logger, redact
from gtl_nb.protocol.messages import TERMINAL_EVENTS, CompletionRequest, Done, Error, StreamEvent
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
    """Executes dialect requests over an ``HttpTransport`` (the pooled httptools client unless another is given)."""

    def __init__(
        self,
        timeouts: Timeouts | None = None,
        *,
        transport: HttpTransport | None = None,
        wall_clock: Callable[[], float] = time.time,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if transport is None:
            from gtl_nb.engine.httptools_transport import HttptoolsTransport

            transport = HttptoolsTransport()
        self.timeouts = timeouts or Timeouts()
        self.transport = transport
        self.wall_clock = wall_clock  # signing (SigV4) and HTTP-date Retry-After read it
        self.max_response_bytes = max_response_bytes
        self.names_upstream = True
        """Whether an upstream that cannot be reached is named in the error by its address and the
        transport's reason. The embedded client's user runs it (and wants both); a gateway's clients do
        not (the network behind a gateway is its operator's): ``Engine`` clears this for the gateway
        audience, and then the error names the deployment and the log line has the address and reason."""

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def fetch(
        self, description: HttpRequest, timeouts: Timeouts | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Execute a plain (non-streamed) request description: status, headers, body (capped).

        Raises ``asyncio.TimeoutError`` or a ``TransportError``; the caller translates them."""
        limits = timeouts or self.timeouts

        async def exchange() -> tuple[int, dict[str, str], bytes]:
            response = await self.transport.send(description, connect_timeout=limits.connect)
            try:
                body = await _read_capped(response, None, self.max_response_bytes)
            finally:
                await response.aclose()
            return response.status, dict(response.headers), body

        return await within(exchange(), limits.first_byte)  # (a caller's cancel is never dropped: loop.within)

    def unreachable(self, what: str, description: HttpRequest, deployment: Deployment, reason: str) -> str:
        """The message of an upstream that could not be reached (``what`` it was, the address, the
        ``reason``), for whoever reads it: with the address and reason when ``names_upstream``, else
        naming the deployment only (and the log line has both)."""
        where = _host(description.url)
        if self.names_upstream:
            return f"{what} {where}" + (f": {reason}" if reason else "")
        log.warning("deployment %s: %s %s%s", deployment.name, what, where, redact(f": {reason}" if reason else ""))
        return f"{what} deployment {deployment.name!r}"

    async def run(
        self,
        dialect: HttpDialect,
        request: CompletionRequest,
        deployment: Deployment,
        timeouts: Timeouts | None = None,
        *,
        announce: StreamEvent | None = None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """Send ``request`` through ``dialect`` and yield the decoded events in batches, one batch per
        read of the body (a burst of chunks in one read goes down the engine's levels as one step, not
        one step per event); the decoder's opaque replay state (``provider_data``) goes on the ``done``
        event it ends with. ``announce`` (the engine's ``status: streaming``) is yielded first, alone,
        before the request is built or sent. Batches are never empty; a terminal event is the last of
        the last batch."""
        if announce is not None:
            yield [announce]
        limits = timeouts or self.timeouts
        description = dialect.build_request(request, deployment, now=self.wall_clock())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s", description.method, _safe_url(description.url), deployment.name)
        loop = asyncio.get_running_loop()
        # ``first_byte`` is one deadline from sending the request to the first byte of the body; one
        # timer keeps it and then the idle one (``asyncio.wait_for`` would add a task per request)
        deadline = _ReadDeadline(loop)
        first_byte_deadline = None if limits.first_byte is None else loop.time() + limits.first_byte
        failed: Error | None = None
        try:
            response = await deadline.read(
                self.transport.send(description, connect_timeout=limits.connect), limits.first_byte
            )
        except UnsendableRequest as exc:  # our own request is not valid HTTP: never retried
            failed = _unsendable(request, deployment, exc)
        except asyncio.TimeoutError:
            within = f"within the first-byte timeout ({limits.first_byte} s)"
            message = f"deployment {deployment.name!r} sent no response {within}"
            failed = _error(request, deployment, "TIMEOUT", message)
        except ConnectTimeout:
            message = self.unreachable(f"connect timeout ({limits.connect} s) to", description, deployment, "")
            failed = _error(request, deployment, "TIMEOUT", message)
        except TransportError as exc:
            message = self.unreachable("cannot reach", description, deployment, str(exc or type(exc).__name__))
            failed = _error(request, deployment, "PROVIDER_UNAVAILABLE", message)
        if failed is not None:
            deadline.close()
            yield [failed]
            return
        try:
            if response.status >= 400:
                try:
                    body = await _read_capped(response, limits.idle, self.max_response_bytes)
                except (asyncio.TimeoutError, TransportError) as exc:
                    unread = _error(
                        request,
                        deployment,
                        "PROVIDER_UNAVAILABLE",
                        f"HTTP {response.status}, and its error body could not be read: "
                        f"{type(exc).__name__} {exc}".rstrip(),
                        http_status=response.status,
                    )
                    yield [unread]
                    return
                headers = _seconds_retry_after(dict(response.headers), self.wall_clock())
                yield [dialect.decode_error(request, deployment, response.status, headers, body)]
                return
            decoder = dialect.response_decoder(request, deployment)
            chunks = response.chunks()
            received = 0
            timeout = None if first_byte_deadline is None else max(0.0, first_byte_deadline - loop.time())
            first_chunk = True
            lost = False
            pending: Done | None = None
            last: list[StreamEvent] = []  # the events of the read that held ``done`` when the body was whole
            while True:
                try:
                    chunk = await deadline.read(chunks.__anext__(), timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    which, limit = ("first-byte", limits.first_byte) if first_chunk else ("idle", limits.idle)
                    message = f"deployment {deployment.name!r}: its stream stalled past the {which} timeout ({limit} s)"
                    yield [_error(request, deployment, "TIMEOUT", message)]
                    return
                except ConnectionLost as exc:  # the answer is cut: ``_cut_short`` words it
                    log.debug("connection lost mid-stream from %s: %s", deployment.name, exc)
                    lost = True
                    break
                timeout = limits.idle
                first_chunk = False
                received += len(chunk)
                if received > self.max_response_bytes:  # a runaway body must not exhaust memory
                    message = f"response larger than {self.max_response_bytes} bytes; stopped reading it"
                    yield [_error(request, deployment, "PROVIDER_UNAVAILABLE", message)]
                    return
                events = decoder.feed(chunk)
                if not events:
                    continue
                if pending is None and TERMINAL_EVENTS.isdisjoint(map(type, events)):
                    yield events  # the common read: events, none of them the end (one pass, in C)
                    continue
                pending, batch = _held_back(events, pending, deployment)
                if pending is not None and getattr(chunks, "at_end", False):
                    # ``done`` came in the body's last read: hand it on with that read's events, one step
                    # down the engine's levels, not two (the closing step would find nothing more; and
                    # ``_held_back`` passes no error after a ``done``)
                    last = batch
                    break
                if batch:
                    yield batch
                    if type(batch[-1]) is Error:
                        return
            closing = decoder.close()
            ended_early = getattr(decoder, "ended_early", False)
            if lost or ended_early:
                # the detail is the gateway operator's to read (a WARNING); embedded, the user's, on demand
                level = logging.INFO if self.names_upstream else logging.WARNING
                closing = _cut_short(closing, deployment, received, lost, level, ended_early)
            pending, batch = _held_back(closing, pending, deployment)
            if last:
                batch = last + batch
            if pending is not None:
                data = getattr(decoder, "provider_data", None)
                batch.append(msgspec.structs.replace(pending, provider_data=data) if data else pending)
            if batch:
                yield batch
        finally:
            deadline.close()
            await response.aclose()


def _held_back(
    events: list[StreamEvent], pending: Done | None, deployment: Deployment
) -> tuple[Done | None, list[StreamEvent]]:
    """``events`` as the batch to hand on now, and the ``done`` held back until the body ends (its
    ``provider_data`` is complete only then): what comes after ``done`` is logged and dropped, and
    nothing after an ``error`` is handed on (the engine stops at it)."""
    if pending is None and events and type(events[-1]) is Done:
        body = events[:-1]
        if TERMINAL_EVENTS.isdisjoint(map(type, body)):
            return events[-1], body  # the usual end: ``done`` last of its read, nothing else ending (in C)
    batch: list[StreamEvent] = []
    for event in events:
        if pending is not None:
            log.warning("%s: %s after done ignored", deployment.name, type(event).__name__)
        elif type(event) is Done:
            pending = event
        else:
            batch.append(event)
            if type(event) is Error:
                break
    return pending, batch


_COUNTS_CANCELS = hasattr(asyncio.Task, "cancelling")  # Python 3.11


class _ReadDeadline:
    """A timeout on each read of a stream, for the task doing that read.

    ``asyncio.wait_for`` wraps every awaited read in a new task before Python 3.12 — for a
    streamed answer, one task per chunk. This keeps one timer for the whole stream instead: each
    read only moves the due time on, and the timer, when it fires early, re-arms itself for the
    time now due (a timer per read cost a timer set and cancelled per chunk). When a read is still
    waiting at its due time, the timer cancels the task doing that read (looked up per read: a
    stream may change hands between tasks) and the read turns that cancellation into
    ``asyncio.TimeoutError``. Between reads — while the consumer holds the stream — nothing is timed.
    """

    __slots__ = ("_armed", "_due", "_expired", "_handle", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when the timer fires
        self._due = 0.0  # when the current read times out
        self._task: asyncio.Task[Any] | None = None  # the task reading now, ``None`` between reads
        self._expired = False

    async def read(self, awaitable: Any, timeout: float | None) -> Any:
        # (the loop given: asking for the running one costs a getpid() system call in Python 3.11)
        task = asyncio.current_task(self._loop)
        if timeout is None or task is None:
            return await awaitable
        self._due = due = self._loop.time() + timeout
        if self._handle is None or due < self._armed:  # (an idle timeout shorter than the first-byte one)
            self._arm(due)
        self._task = task
        # the cancels the task was under before this read (Python 3.11 counts them): an awaited call
        # of aconnect's client runs in its caller's task, which may be in its own clean-up already
        cancels = task.cancelling() if _COUNTS_CANCELS else 0
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self._expired:
                raise  # a real cancellation from the caller
            self._expired = False
            if _COUNTS_CANCELS and task.uncancel() > cancels:
                raise  # the caller cancelled in the same tick: theirs wins
            raise asyncio.TimeoutError from None
        finally:
            self._task = None

    def close(self) -> None:
        """Stop the timer (the stream is over)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._handle = None
        task = self._task
        if task is None:
            return  # between reads: the next read arms the timer again
        if self._loop.time() < self._due:
            self._arm(self._due)  # a later read moved the due time on
            return
        self._expired = True
        task.cancel()


_CUT_CODES = frozenset({"PROVIDER_UNAVAILABLE", "INTERNAL"})
"""What a decoder calls a body it cannot read to the end (a truncated JSON body, a broken event)."""


def _cut_short(
    events: list[StreamEvent], deployment: Deployment, received: int, lost: bool, level: int, ended_early: bool
) -> list[StreamEvent]:
    """The events the decoder gave at the end of a body that ended before the answer's end — its
    connection ``lost``, or a whole body without the answer's end (``ended_early``) — with its error
    in the same words for every provider. Each decoder words a cut-short answer in its own
    API's terms ("stream ended before [DONE]", "no message_stop event", a quote of the truncated JSON
    body): meaningless to a client of another API — an Anthropic SDK behind a gateway whose deployment
    is OpenAI's — and a quote of the provider's body is the provider's to give, not the client's to
    read. That detail goes to the log, at ``level``."""
    worded: list[StreamEvent] = []
    for event in events:
        # the decoder's own finding — the answer's end missing (``ended_early``), or a body the cut left
        # unreadable — not an error the provider sent and the close flushed (an ``overloaded_error`` event
        # without its blank line keeps its code, retry and words)
        if type(event) is Error and (ended_early or event.code in _CUT_CODES):
            log.log(level, "deployment %s: the answer ended early: %s", deployment.name, event.message)
            how = "the connection closed" if lost else "its response ended, without the answer's end,"
            event = msgspec.structs.replace(
                event,
                code="PROVIDER_UNAVAILABLE",
                message=f"deployment {deployment.name!r} ended its answer early ({how} after {received} bytes of it)",
                retryable=True,
                http_status=None,
                retry_after=None,
            )
        worded.append(event)
    return worded


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
        f"is not valid HTTP ({exc or type(exc).__name__}); check its credentials, headers and base_url",
        retryable=False,
    )


async def _read_capped(response: HttpResponse, idle: float | None, limit: int) -> bytes:
    """A body, read within ``idle`` seconds (``None``: no limit) and at most ``limit`` bytes (the
    rest is dropped)."""

    async def read() -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in response.chunks():
            parts.append(chunk[: max(0, limit - size)])
            size += len(chunk)
            if size >= limit:
                break
        return b"".join(parts)

    return await within(read(), idle)


def _host(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (no path, no query: Gemini's ``?key=`` must never show)."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    return f"{scheme}://{authority.rsplit('@', 1)[-1]}"


def _safe_url(url: str) -> str:
    """The URL without its query (Gemini's ``?key=``) and without ``user:password@``: never logged."""
    scheme, sep, rest = url.split("?", 1)[0].partition("://")
    if not sep:
        return scheme
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rsplit('@', 1)[-1]}{slash}{path}"
