"""One gateway process serving every configured listener with one engine (``gtl serve``).

``serve(settings, gateway, authenticate=..., shutdown=..., announce=...)`` builds the engine once
(``engine.builder.build_engine``, exactly as the embedded client does), starts each listener of
``gateway.listeners`` (``gateway.listeners`` describes their contract), announces each client URL as
it starts accepting, and returns when every listener has stopped — after ``shutdown.begin()`` once
their running sessions finished or the grace period ended them — with every ledger row complete.

A listener that cannot start (its port is taken, its TLS files do not load, its extra is not
installed) stops the others and raises ``ConfigurationError`` naming it: a gateway never runs with
part of its configuration silently missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import Settings
from gtl_nb.gateway.listeners import ListenerSettings, Shutdown
from gtl_nb.gateway.live import live_sessions
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError, GTLError

__all__ = ["LISTENER_FUNCTIONS", "serve"]

log = get_logger("gateway.server")

LISTENER_FUNCTIONS: dict[str, tuple[str, str]] = {
    "http": ("gtl_nb.gateway.http:serve_http", "gateway"),
    "grpc": ("gtl_nb.gateway.grpc:serve_grpc", "grpc"),
    "quic": ("gtl_nb.gateway.quic:serve_quic", "quic"),
}
"""Transport -> (its ``serve_*`` coroutine function, the extra that installs its library)."""

Announce = Callable[[ListenerSettings, str], None]


def _serve_function(transport: str) -> Callable[..., Awaitable[None]]:
    target, extra = LISTENER_FUNCTIONS[transport]
    module_name, _, name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if (exc.name or "").startswith("gtl_nb"):
            raise
        raise ConfigurationError(
            f"[gateway.{transport}] needs {exc.name}, which is not installed: pip install 'gtl_nb[{extra}]'"
        ) from None
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
) -> None:
    """Serve every listener of ``gateway`` until they stop (see the module docstring); ``credentials``
    is the engine's credential resolver (the vault's, ``gateway.auth.build_credentials``)."""
    if not gateway.listeners:
        raise ConfigurationError("no listener to serve: add a [gateway.http], [gateway.grpc] or [gateway.quic] table")
    functions = {listener.transport: _serve_function(listener.transport) for listener in gateway.listeners}
    own_engine = engine is None
    engine = engine if engine is not None else build_engine(settings, credentials=credentials, audience=GATEWAY)
    tracing = _tracing(gateway, engine)  # [gateway.tracing]: a missing extra stops the start, before the audit log
    audit, metrics = _operations(gateway, engine)  # before any listener: a tampered audit log stops the start
    try:
        live_sessions(engine)  # every session, on every listener, is known to the sessions and cancel queries
        join = getattr(engine.stores.budgets, "join_replicas", None)
        if join is not None:  # shared budgets: the other replicas count this one before it serves anything
            join()
    except BaseException:  # no listener ran: nothing of this start outlives it (the metrics' gc timer)
        if metrics is not None:
            metrics[0].detach()
        if audit is not None:
            audit.close()
        raise
    urls: dict[str, str] = {}

    def offers() -> dict[str, str]:
        return {**urls, **{name: url for name, url in gateway.advertise.items() if name in urls}}

    def ready_of(listener: ListenerSettings) -> Callable[[str], None]:
        def ready(url: str) -> None:
            urls[listener.transport] = url
            log.info("listening on %s", url)
            if announce is not None:
                announce(listener, url)

        return ready

    tasks: dict[asyncio.Task[None], ListenerSettings] = {}
    # an embedder's engine: while it serves, its errors go to a gateway's clients (given back after)
    lent_audience = getattr(engine, "audience", GATEWAY)
    if lent_audience != GATEWAY:
        engine.set_audience(GATEWAY)
    try:
        for listener in gateway.listeners:
            options: dict[str, Any] = {
                "authenticate": authenticate,
                "limits": gateway.limits,
                "shutdown": shutdown,
                "ready": ready_of(listener),
            }
            if listener.transport == "http":
                options["offers"] = offers
                options["loopback_callers_only"] = gateway.auth != "jwt"
                if metrics is not None:
                    options["metrics"], options["metrics_require_token"] = metrics
            coroutine = functions[listener.transport](engine, listener, **options)
            task = asyncio.ensure_future(coroutine)
            tasks[task] = listener
        await _until_all_stop(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if audit is not None:  # after the listeners: the cancelled sessions' records are in
            await asyncio.to_thread(audit.close)
        if metrics is not None:
            metrics[0].detach()
        if tracing is not None:  # after the listeners: every session's span has ended; flushes the exporter
            await asyncio.to_thread(tracing.close)
        if own_engine:
            await engine.aclose()
        elif lent_audience != GATEWAY:
            engine.set_audience(lent_audience)


def _operations(gateway: GatewaySettings, engine: Any) -> tuple[Any, Any]:
    """The audit log and ``(metrics, require_token)`` that ``[gateway.audit]`` and ``[gateway.metrics]`` ask
    for (``None`` each when not configured), subscribed to the engine's hooks. The audit log (its files,
    its PostgreSQL connection and writer thread) is opened last, so nothing after it can fail and leave
    it open; ``gateway.audit.audit_log_of(engine)`` finds it (``/readyz`` reads its ``degraded_reason``)."""
    audit = metrics = None
    if gateway.metrics is not None:
        from gtl_nb.gateway.metrics import Metrics, MetricsSettings

        metrics_settings = MetricsSettings.from_table(gateway.metrics)
        if metrics_settings.enabled:
            metrics = (Metrics.for_engine(engine), metrics_settings.require_token)
    if gateway.audit is not None:
        from gtl_nb.gateway.audit import AuditLog, AuditSettings

        audit_settings = AuditSettings.from_table(gateway.audit, base=gateway.base)
        if audit_settings.enabled:
            try:
                audit = AuditLog.for_engine(audit_settings, engine)
            except BaseException:  # (a tampered log stops the start) the metrics' gc timer must not outlive it
                if metrics is not None:
                    metrics[0].detach()
                raise
    return audit, metrics


def _tracing(gateway: GatewaySettings, engine: Any) -> Any:
    """The request tracer ``[gateway.tracing]`` asks for (``None`` when off, the default), subscribed to the
    engine's hooks; OpenTelemetry is imported only here, and its absence is a ``ConfigurationError``."""
    from gtl_nb.gateway.settings import TracingSettings

    settings = TracingSettings.from_table(gateway.tracing)
    if not settings.enabled:
        return None
    from gtl_nb.engine.tracing import RequestTracer, build_tracer_provider

    try:
        provider = build_tracer_provider(
            settings.exporter, endpoint=settings.endpoint, service_name=settings.service_name
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"[gateway.tracing] {exc.message}") from None
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
                raise ConfigurationError(
                    f"[gateway.{listener.transport}] cannot listen on {listener.host}:{listener.port}: "
                    f"{error.strerror or error}"
                ) from None
            if isinstance(error, GTLError):
                raise error
            raise error
