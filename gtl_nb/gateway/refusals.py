"""A completion request the gateway refuses at a session cap, or while it stops, still leaves its one ledger
row and audit record.

Every request ends in exactly one ``done`` or ``error`` and one ledger row (docs/ledger.md), also one
the gateway does not run: a scope refusal goes through ``run_session(..., refused=...)``, a budget
refusal through the engine's reservation. A request beyond ``max_sessions_per_connection`` or
``max_sessions_per_principal`` is refused before any session starts — it must not count against the
cap it exceeded — so ``recorded_refusal`` writes its row here, outside every count: status
``error``, the refusal's code, the caller's principal and the model it asked for, no provider
called and no budget used; the audit log hears of it through the engine's hooks like any other end.

**What it costs.** The engine's own refused path (``Engine.stream_batches(refused=...)``): the row's
start and end and the two hook events, no budget reservation — less than a budget refusal. With the
SQLite ledger both writes are queued without waiting, so the refusal never waits at all; once the
ledger's writer holds its 10,000 queued operations the start waits for room (its back-pressure,
docs/ledger.md); the PostgreSQL ledger queues its writes the same way. A refused request is no
running session: the ``sessions`` query does not list it, and a ``cancel`` query cannot reach the
task that writes its row (the caller's own — a connection's reader). The caller awaits the row in the task
that read the request — an HTTP request's, a gRPC call's, a connection's reader (which reads the
next frame only then) — so a flood of refused requests is paced by those writes and holds no more
than one recording per reader, never a queue of its own. On QUIC, where each request has a stream,
the refused stream's own task writes it and the stream stays open until its error goes out: QUIC's
limit on the streams a connection holds open bounds them.

**While the gateway stops.** A request that arrives once the stop began (``Shutdown.begin()``: SIGTERM)
is refused with ``GatewayStopping`` (a retryable ``PROVIDER_UNAVAILABLE``: the client asks another
replica) the same way, on every transport: its row and audit record are written during the drain,
while the ledger and the audit log are still open, and a connection the stop would close once its
last session ended waits for the refusal its reader is recording (``GatewayConnection``). Each
recording is counted, with its caller's task, by the engine's ``Recordings`` (``recordings_of``);
``Parts.aclose`` (and ``serve_stdio``) call ``Recordings.settle`` before closing the audit log and the
ledger: it waits until none runs, at most ``RECORDING_WAIT`` seconds. That bound is enough, and keeps
a flood from holding the stop open: by then every listener has stopped and closed its connections, so
no new refusal can come; the recordings left are at most one per connection or request task (each
caller awaits its own), each two queued ledger writes that wait only while the ledger's queue is full
(its back-pressure); and the drain itself never waits for refusals (they are no sessions), so a flood
of them during the stop costs rows, paced by those writes, not time. The callers of recordings still
running after the bound (a ledger that made no room for five seconds) are cancelled, counted in a
WARNING, and given as long again: a row whose start was queued ends ``cancelled``, one still waiting
for room is not written.

**A token the gateway cannot check** (``TokenUncheckable``: its revocation list was never read) is
refused — never let through — but as the gateway's trouble: a retryable unavailable answer (``503``
over HTTP), so the caller and the proxy try another replica, not a ``401`` that says its key is bad.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.gateway.per_engine import PerEngine
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import AuthenticationError, GTLError, OverloadedError, ProviderUnavailableError
from gtl_nb.protocol.messages import CompletionRequest, Error

__all__ = [
    "RECORDING_WAIT",
    "REFUSED_BEFORE_START",
    "UNCHECKABLE_RETRY_AFTER",
    "GatewayStopping",
    "Recordings",
    "TokenUncheckable",
    "recorded_refusal",
    "recordings_of",
    "unavailable_status",
]

log = get_logger("gateway")

RECORDING_WAIT = 5.0
"""Seconds the end of a stop waits for refusals still being recorded (module docstring) — as long as a
listener's own last step waits for its closing connections."""


class GatewayStopping(ProviderUnavailableError):
    """A request refused because the gateway is stopping (retryable: another replica may take it)."""

    def __init__(self, message: str = "the gateway is shutting down; connect again (to another replica)") -> None:
        super().__init__(message)


class TokenUncheckable(AuthenticationError):
    """A token refused because the gateway cannot check it now — its revocation list was never read
    (Redis away since it started): the gateway's trouble, not the caller's credentials.

    Still an ``AuthenticationError`` — every transport refuses, logs and counts it as one, so no
    token passes unchecked (fail closed) — but answered as the retryable unavailable code: GTL's
    ``PROVIDER_UNAVAILABLE``, HTTP ``503`` (``unavailable_status``) with ``retry-after``, gRPC
    ``UNAVAILABLE``. The SDKs retry it, their retry reaching the next replica through nginx's round
    robin; nginx itself retries only a ``GET`` on it — a completion's ``POST`` is passed on, never sent
    twice (docs/deploy.md, "What nginx retries")."""

    code = "PROVIDER_UNAVAILABLE"
    default_retryable = True


UNCHECKABLE_RETRY_AFTER = {"retry-after": "1"}
"""The header of every HTTP ``503`` for a token the gateway cannot check (``TokenUncheckable``) — the GTL,
OpenAI- and Anthropic-compatible endpoints and ``/metrics`` alike: the SDKs wait that second, then retry."""


def unavailable_status(exc: GTLError, refused: int = 401) -> int:
    """The HTTP status of a refused token: ``503`` when the gateway could not check it
    (``TokenUncheckable``), else ``refused``."""
    return 503 if isinstance(exc, TokenUncheckable) else refused


REFUSED_BEFORE_START: tuple[type[GTLError], ...] = (OverloadedError, GatewayStopping)
"""What a session runner raises for a request it refuses before any session starts (a cap, the stop):
recorded with ``recorded_refusal``, then answered."""


class Recordings:
    """The refusals of one engine's gateway being recorded (``recordings_of``), so the stop can wait for them."""

    def __init__(self) -> None:
        self._callers: dict[asyncio.Task[Any], int] = {}  # task -> recordings it runs (one, in practice)
        self._idle: list[asyncio.Future[None]] = []  # settle's wait for the last one to end

    def __len__(self) -> int:
        return sum(self._callers.values())

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Count one recording, run by the current task, while the body runs."""
        task = asyncio.current_task()
        assert task is not None
        self._callers[task] = self._callers.get(task, 0) + 1
        try:
            yield
        finally:
            left = self._callers.pop(task) - 1
            if left:
                self._callers[task] = left
            elif not self._callers:
                waiters, self._idle = self._idle, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def settle(self, timeout: float = RECORDING_WAIT) -> None:
        """Wait until no recording runs — those begun meanwhile too —, ``timeout`` seconds at most; then
        cancel the tasks still recording (a WARNING counts them) and give them as long again."""
        if await self._until_idle(timeout):
            return
        callers = list(self._callers)
        log.warning(
            "%d refused requests were still being recorded %g s after the listeners stopped: cancelled "
            "(the ledger made no room for them)",
            len(self),
            timeout,
        )
        for task in callers:
            task.cancel()
        await self._until_idle(timeout)

    async def _until_idle(self, timeout: float) -> bool:
        """Wait until no recording runs, ``timeout`` seconds at most; whether none runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._callers and (left := deadline - loop.time()) > 0:  # (one may begin as the last ends)
            waiter = loop.create_future()
            self._idle.append(waiter)
            await asyncio.wait({waiter}, timeout=left)
        return not self._callers


recordings_of: PerEngine[Recordings] = PerEngine(Recordings)
"""The one ``Recordings`` of an engine's gateway: every listener serving that engine shares it."""


async def recorded_refusal(
    engine: Engine, request: CompletionRequest, context: RequestContext, error: GTLError
) -> Error:
    """Record ``request``, refused with ``error`` before it ran, as its one ledger row and audit record
    (module docstring); return the ``error`` event to send its client — the refusal, unchanged.

    A cancel while the row is written (the connection or call going away) ends the row as
    ``cancelled``, as for any request whose caller left before its end, and is re-raised."""
    refusal = error.to_event(request.session_id)
    with recordings_of(engine).recording():
        batches = engine.stream_batches(request, context=context, refused=error)
        try:
            async for _batch in batches:  # ``queued``, then the refusal: only the row matters here
                pass
        except Exception:  # a bug in the engine must not keep the refusal from its client
            log.exception("session %r: recording its refusal failed", request.session_id)
        finally:
            await batches.aclose()
    return refusal
