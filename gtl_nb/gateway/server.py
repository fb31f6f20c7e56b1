"""One gateway process serving every configured listener with one engine (``gtl serve``).

``serve(settings, gateway, authenticate=..., shutdown=..., announce=...)`` builds the engine once
(``engine.builder.build_engine``, exactly as the embedded client does), starts each listener of
``gateway.listeners`` (``gateway.listeners`` describes their contract), announces each client URL as
it starts accepting, and returns when every listener has stopped — after ``shutdown.begin()`` once
their running sessions finished or the grace period ended them — with every ledger row complete.

A listener that cannot start (its port is taken, its TLS files do not load, its extra is not
installed) stops the others and raises ``ConfigurationError`` naming it: a gateway never runs with
part of its configuration silently missing.

``open_parts`` opens what the listeners serve with — the engine (its stores) and the audit log —
each in a worker thread, at the same time: their first contacts with a shared store that does not
answer (the PostgreSQL ledger and the PostgreSQL audit chain, a connect timeout each) then cost one
wait, not one after the other, and the event loop stays free meanwhile (a SIGTERM during the start is
handled at once). A shutdown begun before the listeners start starts none of them: nothing is
announced, and what was opened is closed. Once both are open, the audit log follows the ledger's
crash recovery (``AuditLog.watch``): the requests a killed gateway left running, which opening the
ledger marked ``interrupted``, have their records queued before the first listener starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import Settings
from gtl_nb.gateway.connection_budget import TCP_TRANSPORTS, connection_budget, descriptor_limit, listener_share
from gtl_nb.gateway.listeners import ListenerSettings, Shutdown
from gtl_nb.gateway.live import live_sessions
from gtl_nb.gateway.refusals import recordings_of
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError, GTLError
from gtl_nb.words import missing_package

__all__ = ["LISTENER_FUNCTIONS", "Parts", "audit_settings", "metrics_settings", "open_parts", "serve", "serve_function"]

log = get_logger("gateway.server")

LISTENER_FUNCTIONS: dict[str, tuple[str, str]] = {
    "http": ("gtl_nb.gateway.http:serve_http", "gateway"),
    "grpc": ("gtl_nb.gateway.grpc:serve_grpc", "grpc"),
    "quic": ("gtl_nb.gateway.quic:serve_quic", "quic"),
}
"""Transport -> (its ``serve_*`` coroutine function, the extra that installs its library)."""

Announce = Callable[[ListenerSettings, str], None]


def serve_function(transport: str) -> Callable[..., Awaitable[None]]:
    target, extra = LISTENER_FUNCTIONS[transport]
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        said = missing_package(exc, f"[gateway.{transport}]", extra)
        if said is None:
            raise
        raise ConfigurationError(said) from None
    return getattr(module, name)  # type: ignore[no-any-return]


async def serve(
    settings: Settings,
    gateway: GatewaySettings,
    *,
    authenticate: Authenticate,
    shutdown: Shutdown,
    announce: Announce | None = None,
    engine: Any = None,
    credentials: Any = None,
    parts: Parts | None = None,
) -> None:
    """Serve every listener of ``gateway`` until they stop (see the module docstring); ``credentials``
    is the engine's credential resolver (the vault's, ``gateway.auth.build_credentials``).

    ``parts`` (``open_parts``'s, which the caller opened first) are served and closed at the end;
    without them ``serve`` opens its own (with ``engine`` when given: closed by its owner)."""
    if not gateway.listeners:
        raise ConfigurationError("no listener to serve: add a [gateway.http], [gateway.grpc] or [gateway.quic] table")
    functions = {listener.transport: serve_function(listener.transport) for listener in gateway.listeners}
    if parts is None:
        parts = await open_parts(settings, gateway, engine=engine, credentials=credentials)
    engine, own_engine = parts.engine, parts.own_engine
    try:
        live_sessions(engine)  # every session, on every listener, is known to the sessions and cancel queries
        join = getattr(engine.stores.budgets, "join_replicas", None)
        if shutdown.is_stopping:  # stopped while it started: no listener starts, nothing is announced
            return await parts.aclose()
        if join is not None:  # shared budgets: the other replicas count this one before it serves anything
            join()
    except BaseException:  # no listener ran: nothing of this start outlives it (the metrics' gc timer)
        await parts.aclose()
        raise
    urls: dict[str, str] = {}

    def offers() -> dict[str, str]:
        return {**urls, **{name: url for name, url in gateway.advertise.items() if name in urls}}

    def ready_of(listener: ListenerSettings) -> Callable[[str], None]:
        def ready(url: str) -> None:
            if shutdown.is_stopping:  # up as the gateway began to stop: never announced, it is closing
                return
            urls[listener.transport] = url
            log.info("listening on %s", url)
            if announce is not None:
                announce(listener, url)

        return ready

    tasks: dict[asyncio.Task[None], ListenerSettings] = {}
    # the TCP listeners share [gateway] max_connections (gateway.connection_budget): each knows how many do
    tcp_listeners = sum(listener.transport in TCP_TRANSPORTS for listener in gateway.listeners)
    limits = replace(gateway.limits, tcp_listeners=max(1, tcp_listeners))
    if tcp_listeners:
        share = listener_share(limits.max_connections, limits.tcp_listeners)
        log.info("each TCP listener holds at most %s client connections", share or "any number of")
        asked = limits.max_connections
        if asked and connection_budget(asked, descriptor_limit()) < asked:
            log.warning(
                "[gateway] max_connections %d is more than the file-descriptor limit allows: each TCP listener "
                "holds at most %d (raise ulimit -n, LimitNOFILE in a unit)",
                limits.max_connections,
                share,
            )
    if parts.metrics is not None:  # every listener's refusals of a token counted (gtl_token_refusals_total)
        authenticate = parts.metrics[0].counting_refusals(authenticate)
    # an embedder's engine: while it serves, its errors go to a gateway's clients (given back after)
    lent_audience = getattr(engine, "audience", GATEWAY)
    if lent_audience != GATEWAY:
        engine.set_audience(GATEWAY)
    try:
        for listener in gateway.listeners:
            options: dict[str, Any] = {
                "authenticate": authenticate,
                "limits": limits,
                "shutdown": shutdown,
                "ready": ready_of(listener),
            }
            if listener.transport == "http":
                options["offers"] = offers
                options["advertised"] = frozenset(gateway.advertise)
                options["loopback_callers_only"] = gateway.auth != "jwt"
                options["allowed_hosts"] = gateway.allowed_hosts
                if parts.metrics is not None:
                    options["metrics"], options["metrics_require_token"] = parts.metrics
            coroutine = functions[listener.transport](engine, listener, **options)
            task = asyncio.ensure_future(coroutine)
            tasks[task] = listener
        await _until_all_stop(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await parts.aclose()  # after the listeners: the cancelled sessions' records and spans are in
        if not own_engine and lent_audience != GATEWAY:
            engine.set_audience(lent_audience)


@dataclass
class Parts:
    """What one gateway serves with besides its listeners (``open_parts``): the engine, and the request
    tracer, metrics and audit log subscribed to its hooks (``None`` each when not configured).
    ``own_engine``: the engine was opened with the parts, and closes with them."""

    engine: Any
    own_engine: bool
    tracing: Any = None
    metrics: tuple[Any, bool] | None = None
    audit: Any = None

    async def aclose(self) -> None:
        """Close them (once; later calls do nothing): after the refusals still being recorded (at most
        ``gateway.refusals.RECORDING_WAIT`` seconds: their rows and records go in first), the audit log
        (the last records written), the metrics, the tracer (its exporter flushed), then the engine if
        it is ``own_engine``."""
        audit, metrics, tracing, own = self.audit, self.metrics, self.tracing, self.own_engine
        self.audit = self.metrics = self.tracing = None
        self.own_engine = False
        try:
            await recordings_of(self.engine).settle()  # (at once when none runs: a later call costs nothing)
        finally:
            await _close_parts(self.engine if own else None, audit, metrics, tracing)


async def _close_parts(engine: Any, audit: Any, metrics: Any, tracing: Any) -> None:
    """``Parts.aclose``'s closing in its order, each step whatever the one before did (``engine``: when owned)."""
    try:
        if audit is not None:
            await asyncio.to_thread(audit.close)
    finally:
        if metrics is not None:
            metrics[0].detach()
        try:
            if tracing is not None:
                await asyncio.to_thread(tracing.close)
        finally:
            if engine is not None:
                await engine.aclose()
                if audit is not None:  # (a replica's lease keeper may mark rows after the log stopped following)
                    _unrecorded(engine, "the audit log closed before they were recovered")


def _unrecorded(engine: Any, why: str) -> None:
    """Say which requests ``engine``'s ledger marked ``interrupted`` and no audit log took (``why``)."""
    rows = getattr(getattr(getattr(engine, "stores", None), "ledger", None), "interrupted", None)
    if rows is not None and hasattr(rows, "give_up"):
        rows.give_up(why)


async def open_parts(
    settings: Settings, gateway: GatewaySettings, *, engine: Any = None, credentials: Any = None
) -> Parts:
    """Open the engine (unless ``engine`` is given) and the audit log ``[gateway.audit]`` asks for, at the
    same time in worker threads (module docstring), then subscribe the tracer, the metrics and the audit
    log to the engine's hooks. A configuration mistake (a missing tracing extra, a bad audit key) stops
    it before anything opens; a failure of one part (a tampered audit log) closes the other; cancelled,
    it waits for both to finish opening and closes them (a thread cannot be stopped halfway)."""
    provider = _tracer_provider(gateway)  # [gateway.tracing]: a missing extra stops the start, before the rest
    audit = audit_settings(gateway)
    metrics = metrics_settings(gateway)
    loop = asyncio.get_running_loop()
    jobs: dict[str, asyncio.Future[Any]] = {}
    if engine is None:
        jobs["engine"] = loop.run_in_executor(
            None, lambda: build_engine(settings, credentials=credentials, audience=GATEWAY)
        )
    if audit is not None:
        from gtl_nb.gateway.audit import AuditLog

        jobs["audit"] = loop.run_in_executor(None, AuditLog, audit)
    opened = await _all_opened(jobs)
    parts = Parts(
        engine if engine is not None else opened["engine"], own_engine=engine is None, audit=opened.get("audit")
    )
    try:
        if provider is not None:
            parts.tracing = _tracer_for(provider, parts.engine)
        if metrics is not None:
            from gtl_nb.gateway.metrics import Metrics

            parts.metrics = (Metrics.for_engine(parts.engine), metrics.require_token)
        if parts.audit is not None:  # last: it records what the hooks before it saw of each request
            parts.audit.watch(parts.engine)
    except BaseException:
        await parts.aclose()
        raise
    return parts


async def _all_opened(jobs: dict[str, asyncio.Future[Any]]) -> dict[str, Any]:
    """What each job opened, once all have finished; when one failed (or the wait was cancelled) what
    the others opened is closed and the first failure (or the cancellation) is raised."""
    if not jobs:
        return {}
    try:
        await asyncio.wait(set(jobs.values()))
    except asyncio.CancelledError:  # the threads go on: wait for them, or what they open is never closed
        await _despite_cancels(_close_when_opened(jobs))
        raise
    failed = [job.exception() for job in jobs.values() if job.exception() is not None]
    if failed:
        await _close_opened(jobs)
        raise failed[0]
    return {name: job.result() for name, job in jobs.items()}


async def _close_when_opened(jobs: dict[str, asyncio.Future[Any]]) -> None:
    """Wait for every job to finish, then close what they opened."""
    await asyncio.wait(set(jobs.values()))
    await _close_opened(jobs)


async def _despite_cancels(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end however often the caller is cancelled meanwhile (a third Ctrl-C during
    the start must not leave an engine or an audit log open); the caller re-raises its own cancel."""
    task = asyncio.ensure_future(work)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    if not task.cancelled():
        task.exception()  # (retrieved: _close_opened's failures are its own to suppress)


async def _close_opened(jobs: dict[str, asyncio.Future[Any]]) -> None:
    """Close what the finished jobs opened (an engine, an audit log), whatever else failed. An engine
    whose audit log did not open says which recovered requests are left without a record."""
    audit = jobs.get("audit")
    audit_failed = audit is not None and (audit.cancelled() or audit.exception() is not None)
    for name, job in jobs.items():
        if job.cancelled() or job.exception() is not None:
            continue
        with contextlib.suppress(Exception):
            if name == "engine":
                if audit_failed:
                    _unrecorded(job.result(), "the audit log could not open")
                await job.result().aclose()
            else:
                await asyncio.to_thread(job.result().close)


def metrics_settings(gateway: GatewaySettings) -> Any:
    """``[gateway.metrics]``'s settings when metrics are on, else ``None``."""
    if gateway.metrics is None:
        return None
    try:
        from gtl_nb.gateway.metrics import MetricsSettings
    except ImportError as exc:
        from gtl_nb.gateway.auth import missing_extra

        raise missing_extra(exc, "[gateway.metrics]") from None

    settings = MetricsSettings.from_table(gateway.metrics)
    return settings if settings.enabled else None


def audit_settings(gateway: GatewaySettings) -> Any:
    """``[gateway.audit]``'s settings when the audit log is on, else ``None`` (a bad key raises here,
    before anything opens). The log itself opens in ``open_parts``; ``gateway.audit.audit_log_of(engine)``
    finds it once it watches the engine (``/readyz`` reads its ``degraded_reason``)."""
    if gateway.audit is None:
        return None
    from gtl_nb.gateway.audit import AuditSettings

    settings = AuditSettings.from_table(gateway.audit, base=gateway.base)
    return settings if settings.enabled else None


def _tracer_provider(gateway: GatewaySettings) -> tuple[Any, Any] | None:
    """``[gateway.tracing]``'s settings and tracer provider (``None`` when off, the default); OpenTelemetry
    is imported only here, and its absence is a ``ConfigurationError``."""
    from gtl_nb.gateway.settings import TracingSettings

    settings = TracingSettings.from_table(gateway.tracing)
    if not settings.enabled:
        return None
    from gtl_nb.engine.tracing import build_tracer_provider

    try:
        provider = build_tracer_provider(
            settings.exporter, endpoint=settings.endpoint, service_name=settings.service_name
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"[gateway.tracing] {exc.message}") from None
    return settings, provider


def _tracer_for(chosen: tuple[Any, Any], engine: Any) -> Any:
    """The request tracer of ``_tracer_provider``'s choice, subscribed to ``engine``'s hooks."""
    from gtl_nb.engine.tracing import RequestTracer

    settings, provider = chosen
    return RequestTracer.for_engine(
        engine, tracer_provider=provider, capture_content=settings.capture_content, owns_provider=True
    )


async def _until_all_stop(tasks: dict[asyncio.Task[None], ListenerSettings]) -> None:
    """Wait for every listener; the first one that fails stops the rest and its error is raised."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled():
                continue
            error = task.exception()
            if error is None:
                continue
            listener = tasks[task]
            for other in pending:
                other.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
            if isinstance(error, OSError):
                raise listener.cannot_listen(error) from None
            if isinstance(error, GTLError):
                raise error
            raise error
