"""The gateway's own settings: the ``[gateway]`` table of the validated configuration, typed.

``[gateway]`` holds the limits every transport applies and one table per listener::

    [gateway]
    max_frame_bytes = 1048576
    shutdown_grace = 30

    [gateway.http]            # HTTP, SSE, WebSocket, discovery, /healthz, /readyz
    port = 8787
    tls_cert = "certs/server.pem"
    tls_key = "certs/server.key"

    [gateway.grpc]
    port = 8788

``engine.config`` validates the keys (and names the new home of a retired one); this module turns
them into ``ListenerSettings`` and ``Limits`` (``gateway.listeners``). Relative TLS paths are read
from the configuration file's folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gtl_nb.engine.settings import Settings
from gtl_nb.engine.tracing import EXPORTERS, refuse_credential_in_query  # (imports OpenTelemetry lazily)
from gtl_nb.gateway.listeners import DEFAULT_MAX_UNFINISHED_BYTES, TRANSPORTS, Limits, ListenerSettings, TlsFiles
from gtl_nb.gateway.proxies import TrustedProxies
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["DEFAULT_PORTS", "TRACING_KEYS", "GatewaySettings", "TracingSettings"]

DEFAULT_PORTS = {"http": 8787, "grpc": 8788, "quic": 8789}
"""Each listener's port when its table names none (QUIC's is a UDP port)."""


@dataclass(frozen=True)
class GatewaySettings:
    """``[gateway]``, typed: authentication mode, limits, listeners and the shutdown grace period."""

    auth: str = "none"
    limits: Limits = field(default_factory=Limits)
    listeners: tuple[ListenerSettings, ...] = ()
    shutdown_grace: float = 30.0
    event_loop: str = "auto"
    """``[gateway] event_loop``: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``."""
    allowed_hosts: frozenset[str] = frozenset()
    """``[gateway] allowed_hosts``: names besides loopback ones a development gateway answers to, as
    DNS compares them (case folded, no final dot)."""
    advertise: Mapping[str, str] = field(default_factory=dict)
    """``[gateway] advertise``: the gRPC/QUIC URLs discovery offers instead of the listeners' own
    (behind a proxy, clients must not be sent around it)."""
    jwt: Mapping[str, Any] | None = field(default=None, repr=False)
    """``[gateway.jwt]`` as written (``gateway.tokens.TokenPolicy.from_table`` reads it)."""
    vault: Mapping[str, Any] | None = field(default=None, repr=False)
    """``[gateway.vault]`` as written (``gateway.vault_credentials.VaultSettings.from_table`` reads it)."""
    audit: Mapping[str, Any] | None = field(default=None, repr=False)
    """``[gateway.audit]`` as written (``gateway.audit.AuditSettings.from_table``); none: no audit log.
    Out of ``repr``: its ``url`` may hold the database's password."""
    metrics: Mapping[str, Any] | None = None
    """``[gateway.metrics]`` as written (``gateway.metrics.MetricsSettings.from_table``); none: no ``/metrics``."""
    tracing: Mapping[str, Any] | None = None
    """``[gateway.tracing]`` as written (``TracingSettings.from_table``); none: no traces."""
    base: Path = field(default_factory=Path.cwd)
    """The configuration file's folder: relative paths in the tables start there."""

    @property
    def max_frame_bytes(self) -> int:
        return self.limits.max_frame_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewaySettings:
        config = settings.config
        table: dict[str, Any] = dict(config.gateway) if config is not None else {}
        base = config.source_path.parent if config is not None and config.source_path is not None else Path.cwd()
        limits = Limits(
            max_frame_bytes=int(table.get("max_frame_bytes") or DEFAULT_MAX_FRAME_BYTES),
            max_sessions_per_connection=int(table.get("max_sessions_per_connection") or 256),
            max_sessions_per_principal=_per_principal(table.get("max_sessions_per_principal")),
            max_connections_per_address=int(table.get("max_connections_per_address") or 256),
            max_connections=int(table.get("max_connections") or 0),
            header_timeout=float(table.get("header_timeout") or 10.0),
            idle_timeout=float(table.get("idle_timeout") or 300.0),
            write_timeout=float(table.get("write_timeout") or 60.0),
            max_unfinished_bytes=int(table.get("max_unfinished_bytes", DEFAULT_MAX_UNFINISHED_BYTES)),
            trusted_proxies=TrustedProxies.parse(table.get("trusted_proxies")),
        )
        listeners = tuple(
            _listener(transport, table[transport], base) for transport in TRANSPORTS if table.get(transport) is not None
        )
        return cls(
            auth=str(table.get("auth") or "none"),
            limits=limits,
            listeners=listeners,
            shutdown_grace=float(table.get("shutdown_grace", 30.0)),
            allowed_hosts=frozenset(name.lower().rstrip(".") for name in table.get("allowed_hosts") or ()),
            advertise=dict(table.get("advertise") or {}),
            event_loop=str(table.get("event_loop") or "auto"),
            jwt=table.get("jwt"),
            vault=table.get("vault"),
            audit=table.get("audit"),
            metrics=table.get("metrics"),
            tracing=table.get("tracing"),
            base=base,
        )


def _per_principal(value: Any) -> int:
    """``max_sessions_per_principal``: absent is the default, ``0`` no cap (not the default, as for the others)."""
    from gtl_nb.gateway.principal_sessions import DEFAULT_MAX_SESSIONS_PER_PRINCIPAL

    return DEFAULT_MAX_SESSIONS_PER_PRINCIPAL if value is None else int(value)


def _listener(transport: str, table: dict[str, Any], base: Path) -> ListenerSettings:
    tls = None
    if table.get("tls_cert"):
        tls = TlsFiles(cert=base / Path(table["tls_cert"]).expanduser(), key=base / Path(table["tls_key"]).expanduser())
    port = table.get("port")
    return ListenerSettings(
        transport=transport,
        host=str(table.get("host") or "127.0.0.1"),
        port=DEFAULT_PORTS[transport] if port is None else int(port),
        tls=tls,
        insecure=bool(table.get("insecure", False)),
    )


# ----------------------------------------------------------------------------------------------
# [gateway.tracing]

TRACING_KEYS: Mapping[str, str] = {
    "enabled": "send an OpenTelemetry span per request (default false; needs the otel extra)",
    "exporter": '"otlp" (default: OTLP over HTTP), "console" (JSON lines on standard error) or "none" '
    "(the process's global tracer provider)",
    "endpoint": "the OTLP/HTTP collector, such as http://collector:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT)",
    "service_name": "the service.name resource attribute (default: OTEL_SERVICE_NAME, then gtl_nb)",
    "capture_content": "also record prompts and answers on the spans (default false)",
}
"""The keys of ``[gateway.tracing]`` and what each means (docs/configuration.md has the same list)."""


@dataclass(frozen=True)
class TracingSettings:
    """``[gateway.tracing]``, typed (``TRACING_KEYS`` says what each field means); off by default."""

    enabled: bool = False
    exporter: str = "otlp"
    endpoint: str | None = None
    service_name: str | None = None
    capture_content: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> TracingSettings:
        """The settings of a ``[gateway.tracing]`` table, checked key by key; no table means no traces.
        Values are never quoted in an error (an endpoint may carry a password)."""
        where = "[gateway.tracing]"
        if table is None:
            return cls()
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table")
        unknown = sorted(str(key) for key in table if key not in TRACING_KEYS)
        if unknown:
            raise ConfigurationError(f"unknown key {unknown[0]!r} in {where} (known: {', '.join(TRACING_KEYS)})")
        for key in ("enabled", "capture_content"):
            if key in table and not isinstance(table[key], bool):
                raise ConfigurationError(f"{where} {key} must be true or false")
        exporter = table.get("exporter", "otlp")
        if exporter not in EXPORTERS:
            raise ConfigurationError(f"{where} exporter must be one of {', '.join(repr(e) for e in EXPORTERS)}")
        for key in ("endpoint", "service_name"):
            if key in table and (not isinstance(table[key], str) or not table[key].strip()):
                raise ConfigurationError(f"{where} {key} must be a non-empty string")
        endpoint = table.get("endpoint")
        if endpoint is not None:
            _check_endpoint(endpoint, exporter, where)
        return cls(
            enabled=table.get("enabled", False),
            exporter=exporter,
            endpoint=endpoint,
            service_name=table.get("service_name"),
            capture_content=table.get("capture_content", False),
        )


def _check_endpoint(endpoint: str, exporter: str, where: str) -> None:
    if exporter != "otlp":
        raise ConfigurationError(f'{where} endpoint is for exporter = "otlp" only')
    try:
        parts = urlsplit(endpoint)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{where} endpoint must be an http:// or https:// URL")
    if parts.username or parts.password:
        # a collector's token belongs in OTEL_EXPORTER_OTLP_HEADERS, never in this file
        raise ConfigurationError(f"{where} endpoint must not hold a user or password: use OTEL_EXPORTER_OTLP_HEADERS")
    refuse_credential_in_query(endpoint, f"{where} endpoint")
