"""The one place that assembles an engine: ``build_engine(settings, ...)``.

The embedded client calls it now and the gateway will next; tests inject through its keyword
arguments (a fake clock and sleep, another HTTP transport, stores, a credential resolver) rather
than patching an engine's attributes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gtl_nb.engine.core import Engine
from gtl_nb.engine.credentials import ConfiguredCredentials, CredentialResolver, StaticCredentials
from gtl_nb.engine.hooks import Hooks
from gtl_nb.engine.http import HttpRunner
from gtl_nb.engine.routing import EMBEDDED
from gtl_nb.engine.settings import Settings
from gtl_nb.engine.stores import Stores
from gtl_nb.engine.stores.flights import FlightRegistry, open_flights
from gtl_nb.engine.transport import HttpTransport
from gtl_nb.providers.catalog import Catalog

__all__ = ["build_engine"]


def build_engine(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    http_transport: HttpTransport | None = None,
    stores: Stores | None = None,
    ledger: Any = None,
    catalog: Catalog | None = None,
    credentials: CredentialResolver | None = None,
    hooks: Hooks | None = None,
    max_response_bytes: int | None = None,
    flights: FlightRegistry | None = None,
    audience: str = EMBEDDED,
    on_callers_loop: bool = False,
) -> Engine:
    """An engine for ``settings``.

    ``clock`` (monotonic seconds) drives timings, breakers and retries; ``wall_clock`` (unix seconds)
    stamps ledger rows and budgets; ``sleep`` is awaited for every back-off and pacing delay.
    ``stores`` defaults to what the settings select (``open_stores``); ``ledger`` overrides only the
    ledger choice (a path, a URL, a store, a ``Ledger``, or ``False`` for none). ``catalog`` defaults
    to the built-in model catalog with the settings' overrides. ``credentials`` defaults to
    re-reading the environment per request (``ConfiguredCredentials``). ``flights`` (where identical
    in-flight requests find one another) defaults to what ``[cache] coalescing`` selects (``open_flights``).
    ``audience`` is who reads routing's errors: ``"embedded"`` (the user who configures the client) or
    ``"gateway"`` (a gateway's client, who cannot; ``engine.routing``). ``on_callers_loop``: the engine
    runs on its caller's own loop (``gtl_nb.aconnect``), which decides who commits the ledger's rows
    when ``[ledger] commits`` does not say (below).
    """
    from gtl_nb.engine.stores.factory import open_stores

    if catalog is None:
        catalog = Catalog.default()
        if settings.catalog_overrides:
            catalog = catalog.with_overrides(settings.catalog_overrides)
    if stores is None:
        if ledger is None:
            ledger = settings.ledger.url if settings.ledger.enabled else False
        stores = open_stores(
            ledger=None if ledger is False else ledger,
            default_ledger=ledger is None,
            cache=settings.cache,
            budgets=settings.budgets,
            breaker=settings.routing.breaker,
            clock=clock,
            wall_clock=wall_clock,
            ledger_retention=settings.ledger.retention,
            ledger_group_commit=settings.ledger.group_commit,
            ledger_strict_durability=settings.ledger.strict_durability,
            # The loop commits when it is the one busy thread besides the writer's (the caller's own,
            # aconnect): there the writer's lock hand-overs cost more than the writing. An engine with a
            # loop thread of its own (connect) or a gateway's loop serving every client keeps the thread:
            # its commits overlap the loop's waits at concurrency 1, and the loop's tail stays free.
            ledger_loop_commits=(settings.ledger.commits or ("loop" if on_callers_loop else "thread")) == "loop",
        )
    if credentials is None:
        config = settings.config
        credentials = (
            StaticCredentials()
            if config is None
            else ConfiguredCredentials(config.rebuild_deployment, config.credential_sources, environ=config.environ)
        )
    runner_options = {} if max_response_bytes is None else {"max_response_bytes": max_response_bytes}
    transport = http_transport if http_transport is not None else settings.upstream.transport()
    runner = HttpRunner(settings.timeouts, transport=transport, wall_clock=wall_clock, **runner_options)
    return Engine(
        deployments=settings.deployments,
        catalog=catalog,
        runner=runner,
        stores=stores,
        routing=settings.routing,
        cache=settings.cache,
        budgets=settings.budgets,
        deployment_timeouts=settings.deployment_timeouts,
        credentials=credentials,
        hooks=hooks or Hooks(),
        clock=clock,
        wall_clock=wall_clock,
        sleep=sleep,
        rng=rng,
        flights=flights if flights is not None else open_flights(settings.cache),
        audience=audience,
    )
