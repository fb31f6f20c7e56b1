"""Typed settings: the validated configuration parsed once into dataclasses the engine reads.

``load_config`` (``engine.config``) merges and validates the sources; ``Settings.from_config`` parses
every table into the objects below, so nothing inside the engine parses a raw dict again. The
builder (``engine.builder.build_engine``) takes a ``Settings``; the client, and next the gateway,
build one with ``load_settings``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.cache import CacheConfig
from gtl_nb.engine.config import Config, load_config
from gtl_nb.engine.http import Timeouts
from gtl_nb.engine.ledger_retention import Retention
from gtl_nb.engine.ratelimit import BudgetConfig
from gtl_nb.engine.retry import RetryPolicy
from gtl_nb.protocol.errors import ConfigurationError, GTLError
from gtl_nb.providers.base import Deployment
from gtl_nb.words import install_extra

__all__ = [
    "LedgerSettings",
    "RequestDefaults",
    "RoutingSettings",
    "Settings",
    "UpstreamSettings",
    "load_settings",
]

BUILTIN_DEFAULT_MODEL = "echo"


@dataclass(frozen=True)
class RequestDefaults:
    """``[defaults]``: what a request gets for each argument it leaves out."""

    model: str = BUILTIN_DEFAULT_MODEL
    provider: str | None = None
    providers: tuple[str, ...] | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    reasoning: bool = False
    reasoning_effort: str | None = None
    """How hard the model thinks (``ReasoningEffort``); with ``reasoning_budget``, only for a request that
    gives neither (a caller's one replaces the pair)."""
    reasoning_budget: int | None = None
    warn_cost_usd: float | None = None
    """Warn before sending a request whose estimated cost is above this many USD."""

    def __post_init__(self) -> None:
        # the pair must agree on whether to think, as a request's must: refused here, not at every request
        effort, budget = self.reasoning_effort, self.reasoning_budget
        if effort is not None and budget is not None and (effort == "none") != (budget == 0):
            raise ConfigurationError(
                f"[defaults] reasoning_effort {effort!r} and reasoning_budget {budget} disagree on whether to "
                "think: effort 'none' goes with budget 0, budget 0 with effort 'none' (or give one of them)"
            )

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> RequestDefaults:
        providers = table.get("providers")
        return cls(
            model=table.get("model") or BUILTIN_DEFAULT_MODEL,
            provider=table.get("provider"),
            providers=tuple(providers) if providers else None,
            system=table.get("system"),
            temperature=None if table.get("temperature") is None else float(table["temperature"]),
            max_tokens=table.get("max_tokens"),
            reasoning=bool(table.get("reasoning", False)),
            reasoning_effort=table.get("reasoning_effort"),
            reasoning_budget=table.get("reasoning_budget"),
            warn_cost_usd=None if table.get("warn_cost_usd") is None else float(table["warn_cost_usd"]),
        )


@dataclass(frozen=True)
class RoutingSettings:
    """``[routing]``: the strategy and its keys, ``[routing.breaker]``, ``[routing.retry]``, fallbacks."""

    strategy: str = "failover"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    """The strategy's own keys (``weights``, ``latency_alpha``), validated by ``make_strategy``."""
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    context_fallbacks: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any], weights: Mapping[str, float]) -> RoutingSettings:
        options = {k: v for k, v in table.items() if k not in ("strategy", "breaker", "retry", "context_fallbacks")}
        if weights:
            options["weights"] = dict(weights)
        return cls(
            strategy=str(table.get("strategy", "failover")),
            strategy_options=options,
            breaker=BreakerConfig.from_dict(table.get("breaker")),
            retry=RetryPolicy.from_dict(table.get("retry")),
            context_fallbacks=dict(table.get("context_fallbacks") or {}),
        )


@dataclass(frozen=True)
class UpstreamSettings:
    """``[upstream]``: the HTTP client provider calls go through and its pool's bounds (0: none)."""

    client: str = "httptools"
    max_connections: int = 0
    max_connections_per_host: int = 0

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> UpstreamSettings:
        return cls(
            client=table.get("client", cls.client),
            max_connections=int(table.get("max_connections", cls.max_connections)),
            max_connections_per_host=int(table.get("max_connections_per_host", cls.max_connections_per_host)),
        )

    def transport(self) -> Any:
        """A new ``HttpTransport`` of this kind (``engine.transport``)."""
        kind = self.transport_class()
        if self.client == "httpx":
            # httpx counts keep-alive connections separately; without a bound of ours, keep them all
            limit = self.max_connections or None
            return kind(max_connections=limit, max_keepalive_connections=limit)
        return kind(max_connections=self.max_connections, max_connections_per_host=self.max_connections_per_host)

    def transport_class(self) -> Any:
        """The ``HttpTransport`` class of ``client``, imported (a missing extra: ``ConfigurationError``).
        Builds nothing: a reload checks with it what a start would refuse (``gateway.restart_checks``)."""
        if self.client == "httpx":
            from gtl_nb.engine.httpx_transport import HttpxTransport

            return HttpxTransport
        if self.client == "aiohttp":
            from gtl_nb.engine.aiohttp_transport import AiohttpTransport

            return AiohttpTransport
        if self.client == "h2":
            try:
                from gtl_nb.engine.h2_transport import H2Transport
            except ImportError as exc:
                raise ConfigurationError(
                    f'[upstream] client = "h2" needs {exc.name or "h2"}, which is not installed: '
                    f"{install_extra('http2')}"
                ) from None
            return H2Transport
        from gtl_nb.engine.httptools_transport import HttptoolsTransport

        return HttptoolsTransport


@dataclass(frozen=True)
class LedgerSettings:
    """``[ledger]``: whether usage is recorded, where (a path or a store URL; ``None``: the default
    file), how long finished rows are kept (``retention``; ``None``: every row, the default), and how
    many seconds a busy writer gathers rows into one commit (``group_commit``; ``None``: not configured,
    ``GROUP_COMMIT`` — so a second user of the file does not undo another's setting), and who commits
    them (``commits``: ``"loop"``, ``"thread"``, or ``None``: the loop for an engine on its caller's loop,
    ``gtl_nb.aconnect``; else the thread — ``engine.builder``); and whether a PostgreSQL ledger's row counts
    as written only once PostgreSQL committed it (``strict_durability``), not when it is in the spool."""

    enabled: bool = True
    url: str | None = None
    retention: Retention | None = None
    group_commit: float | None = None
    commits: str | None = None
    strict_durability: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> LedgerSettings:
        url, path = table.get("url"), table.get("path")
        if url and path:
            raise ConfigurationError("[ledger] has both url and path; path is the shorthand for sqlite:///<path>")
        days, rows = table.get("retention_days"), table.get("max_rows")
        retention = None if days is None and rows is None else Retention(days=days, max_rows=rows)
        window = table.get("group_commit_ms")
        return cls(
            enabled=bool(table.get("enabled", True)),
            url=url or path,
            retention=retention,
            group_commit=None if window is None else window / 1000,
            commits=table.get("commits"),
            strict_durability=bool(table.get("strict_durability", False)),
        )


@dataclass(frozen=True)
class Settings:
    """Everything the builder needs, typed (see the module docstring)."""

    deployments: Mapping[str, Deployment]
    timeouts: Timeouts = field(default_factory=Timeouts)
    deployment_timeouts: Mapping[str, Timeouts] = field(default_factory=dict)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    cache: CacheConfig = field(default_factory=CacheConfig)
    budgets: BudgetConfig | None = None
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    defaults: RequestDefaults = field(default_factory=RequestDefaults)
    catalog_overrides: Mapping[str, Any] = field(default_factory=dict)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    config: Config | None = field(default=None, repr=False, compare=False)
    """The validated source configuration (credential hints, where it was read from)."""

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """Parse a validated ``Config`` into typed settings."""
        return cls(
            deployments=dict(config.deployments),
            timeouts=config.timeouts,
            deployment_timeouts=dict(config.deployment_timeouts),
            routing=RoutingSettings.from_table(config.routing, config.routing.get("weights") or {}),
            cache=CacheConfig.from_dict(config.cache),
            budgets=BudgetConfig.from_dict(config.budgets) if config.budgets else None,
            ledger=LedgerSettings.from_table(config.ledger),
            defaults=RequestDefaults.from_table(config.defaults),
            catalog_overrides=dict(config.catalog),
            upstream=UpstreamSettings.from_table(config.upstream),
            config=config,
        )

    def require_credentials(self, name: str, current: Deployment | None = None) -> Deployment:
        """The deployment called ``name`` (or ``current``, its credentials as resolved now), or a
        ``ConfigurationError`` saying what to set."""
        if self.config is None:
            found = current or self.deployments.get(name)
            if found is None:
                raise ConfigurationError(f"no deployment named {name!r}")
            return found
        return self.config.require_credentials(name, current)

    def missing_credentials(self, resolve: Any = None) -> list[str]:
        """What each deployment lacks to be called, and what to set (``require_credentials``'s message),
        its credentials as ``resolve`` (a ``CredentialResolver``'s ``resolve``) finds them now: a
        gateway says so at start and on a reload, where nobody is there to be refused."""
        problems = []
        # a resolver that knows another source of keys says how to use it (a gateway's vault)
        advice = getattr(getattr(resolve, "__self__", None), "missing_key_advice", None)
        for name, deployment in self.deployments.items():
            try:
                current = resolve(deployment) if resolve is not None else None
                self.require_credentials(name, current)
            except GTLError as exc:
                more = advice(name) if advice is not None and "is missing api_key" in exc.message else None
                problems.append(f"{exc.message}; or {more}" if more else exc.message)
        return problems


def load_settings(
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    providers: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    known_types: Collection[str] | None = None,
    home: str | Path | None = None,
    **sections: Any,
) -> Settings:
    """``load_config`` then ``Settings.from_config`` (the arguments are ``load_config``'s; the provider
    types default to every registered one, plugins included)."""
    if known_types is None:
        from gtl_nb.providers.registry import provider_types

        known_types = provider_types()
    return Settings.from_config(
        load_config(config=config, providers=providers, environ=environ, known_types=known_types, home=home, **sections)
    )
