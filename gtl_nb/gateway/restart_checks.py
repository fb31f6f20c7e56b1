"""What a start would refuse in the tables a reload cannot apply, checked at the reload.

A reload applies what it can in place and names the rest "restart to apply" (``gateway.reload``).
That advice must hold: a reload whose restart-only tables a start would refuse — a ``[gateway.vault]
keys`` table that gives a deployment another deployment's key, a TLS file that does not load, a
ledger URL libpq refuses, an audit log URL of a database it cannot use — is refused whole
("reload refused, still serving the previous configuration: …", in the start's own words), instead
of leaving the operator a restart that takes the gateway down.

``check_restart_tables(settings, options, changed)`` runs, for each table a reload names "restart
to apply", the check a start runs on it, building nothing that serves and reaching no server: a
database or Redis that does not answer stops no start (its parts spool or degrade), so it stops no
reload either. What only the start itself can find out is left to it: whether a port can be bound
(the running gateway holds it) and what another process's environment will hold.

Only the tables that changed are checked: a file this gateway started with that went bad since (a
certificate removed) is no reason to refuse a reload that does not touch it — the one that rotates
a leaked secret, say."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

from gtl_nb.engine.settings import Settings
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["check_restart_tables"]

Check = Callable[[Settings, GatewaySettings], None]


def check_restart_tables(settings: Settings, options: GatewaySettings, changed: Collection[str]) -> None:
    """Raise the ``ConfigurationError`` a start with ``settings`` would raise for one of the ``changed``
    restart-only tables (named as the reload's line names them), if any."""
    for name in sorted(changed):
        check = _check_of(name)
        if check is not None:
            check(settings, options)


def _check_of(name: str) -> Check | None:
    if name.startswith("[gateway.") and name.rstrip("]").rpartition(".")[2] in ("http", "grpc", "quic"):
        transport = name.rstrip("]").rpartition(".")[2]
        return lambda settings, options: _listener(options, transport)
    return _CHECKS.get(name)


def _listener(options: GatewaySettings, transport: str) -> None:
    """A listener's table: its library installed, its TLS files loadable, and an address that a
    gateway checking no token may use."""
    from gtl_nb.gateway.auth import check_exposure
    from gtl_nb.gateway.server import serve_function

    listener = next((each for each in options.listeners if each.transport == transport), None)
    if listener is None:  # a listener taken out: the restart simply does not start it
        return
    serve_function(transport)
    if listener.tls is not None:
        listener.tls.server_context()
    check_exposure(dataclasses.replace(options, listeners=(listener,)))


def _event_loop(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.gateway import event_loop

    event_loop.loop_name(options.event_loop)


def _audit(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.gateway.server import audit_settings

    audit_settings(options)


def _metrics(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.gateway.server import metrics_settings

    metrics_settings(options)


def _tracing(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.engine.tracing import check_exporter
    from gtl_nb.gateway.settings import TracingSettings

    tracing = TracingSettings.from_table(options.tracing)
    if not tracing.enabled:
        return
    try:
        check_exporter(tracing.exporter)
    except ConfigurationError as exc:
        raise ConfigurationError(f"[gateway.tracing] {exc.message}") from None


def _vault(settings: Settings, options: GatewaySettings) -> None:
    """The vault as a start opens it: the file read and verified with its master key, and the ``keys``
    table checked against it and against the deployments (``VaultCredentials``)."""
    from gtl_nb.gateway.auth import build_credentials

    build_credentials(settings, options)  # (reads files only; nothing to close)


def _ledger(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.engine.stores.factory import check_store_urls

    check_store_urls(ledger=settings.ledger.url if settings.ledger.enabled else None)


def _cache(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.engine.stores.factory import check_store_urls

    check_store_urls(cache=settings.cache)


def _budgets(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.engine.stores.factory import check_store_urls

    check_store_urls(budgets=settings.budgets)


def _breakers(settings: Settings, options: GatewaySettings) -> None:
    from gtl_nb.engine.stores.factory import check_store_urls

    check_store_urls(breaker=settings.routing.breaker)


def _upstream(settings: Settings, options: GatewaySettings) -> None:
    settings.upstream.transport_class()


_CHECKS: dict[str, Check] = {
    "[gateway] event_loop": _event_loop,
    "[gateway.audit]": _audit,
    "[gateway.metrics]": _metrics,
    "[gateway.tracing]": _tracing,
    "[gateway.vault]": _vault,
    "[ledger]": _ledger,
    "[cache]": _cache,
    "[budgets] backend": _budgets,
    "[routing.breaker] backend": _breakers,
    "[upstream]": _upstream,
}
"""The start's check of each restart-only table that has one beyond reading the file (the limits,
``shutdown_grace`` and ``advertise`` are checked whole when the file is read; a change of ``auth``
refuses the reload by itself)."""
