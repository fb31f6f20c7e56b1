"""``open_stores``: the four stores an engine runs on, chosen from settings.

Store URLs (``engine.stores.urls``): ``memory://``, and ``sqlite:///relative/path`` or
``sqlite:////absolute/path`` — the path follows the third slash, the usual convention; and
``redis://host:port/db`` (``rediss://`` with TLS) for the budgets, the cache and the breakers that
gateway replicas share (``engine.stores.redis``; the ledger does not live in Redis); and
``postgresql://user:password@host/database`` for the usage ledger that replicas share
(``engine.stores.postgres_ledger``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.cache import CacheConfig
from gtl_nb.engine.ledger import Ledger, default_ledger_path
from gtl_nb.engine.ledger_retention import Retention
from gtl_nb.engine.ratelimit import BudgetConfig
from gtl_nb.engine.stores.base import BreakerStore, BudgetCounter, ResponseCache, Stores, UsageLedger
from gtl_nb.engine.stores.memory import (
    MemoryBreakerStore,
    MemoryBudgetCounter,
    MemoryResponseCache,
    MemoryUsageLedger,
)
from gtl_nb.engine.stores.postgres_pool import is_postgres_url
from gtl_nb.engine.stores.sqlite import SqliteBreakerStore, SqliteBudgetCounter, SqliteResponseCache, SqliteUsageLedger
from gtl_nb.engine.stores.urls import parse_store_url, refuse_url_for_path, unknown_scheme
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["check_store_urls", "open_stores"]

LedgerChoice = UsageLedger | Ledger | str | os.PathLike[str] | None

log = get_logger("engine.stores")
LEDGER_ACCEPTED = "sqlite:///path (sqlite:////absolute/path), memory:// or postgresql://user@host/database"
"""The store URLs a usage ledger may have (not the other stores' redis://; docs/configuration.md, [ledger] url)."""


def open_stores(
    ledger: LedgerChoice = None,
    *,
    default_ledger: bool = False,
    cache: CacheConfig | None = None,
    budgets: BudgetConfig | None = None,
    breaker: BreakerConfig | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    ledger_retention: Retention | None = None,
    ledger_group_commit: float | None = None,
    ledger_loop_commits: bool = False,
    ledger_strict_durability: bool = False,
) -> Stores:
    """The ``Stores`` the settings select (opening SQLite files: blocking, call it before the loop runs).

    ``ledger`` is a file path, a ``sqlite:///path`` or ``memory://`` URL, an object implementing
    ``UsageLedger`` (used as it is), a synchronous ``Ledger`` (wrapped; its owner still closes it), or
    ``None``: no ledger — unless ``default_ledger``, then the default file (``default_ledger_path()``).

    ``cache.backend`` and ``breaker.backend`` are URLs (default ``memory://``; a ``redis://`` URL needs
    the ``redis`` extra, and connects on first use, not here). ``budgets.backend``
    defaults to the ledger's own file when the ledger is a SQLite file — processes that share a
    ledger share budgets, as before — and to ``memory://`` otherwise. ``clock`` (monotonic seconds)
    drives the in-memory cache and breakers; ``wall_clock`` (unix seconds) stamps ledger rows and
    drives the SQLite cache and breakers, whose times other processes must read alike.
    ``ledger_group_commit``: the seconds the ledger's writer gathers rows into one commit (``None``: the
    default, ``GROUP_COMMIT``); ``ledger_loop_commits``: the SQLite ledger's commits on the event loop
    that queued the rows (else on its writer's thread; ``engine.ledger_writer``);
    ``ledger_strict_durability``: a PostgreSQL ledger's row counts as written (``when_written``) only once
    PostgreSQL committed it, not when it is in the local spool.
    """
    cache = cache or CacheConfig()
    breaker = breaker or BreakerConfig()
    with ExitStack() as opened:  # a store that fails to open closes the ones opened before it
        usage = _open_ledger(
            ledger,
            default_ledger,
            wall_clock,
            ledger_retention,
            ledger_group_commit,
            ledger_loop_commits,
            ledger_strict_durability,
        )
        if usage is not None and usage is not ledger:  # never close what the caller passed in
            opened.callback(_close_quietly, usage)
        counters = _open_budgets(budgets, usage)
        opened.callback(_close_quietly, counters)
        answers = _open_cache(cache, clock, wall_clock)
        opened.callback(_close_quietly, answers)
        circuits = _open_breakers(breaker, clock, wall_clock)
        opened.pop_all()
    return Stores(ledger=usage, budgets=counters, cache=answers, breakers=circuits)


def check_store_urls(
    *,
    ledger: Any = None,
    cache: CacheConfig | None = None,
    budgets: BudgetConfig | None = None,
    breaker: BreakerConfig | None = None,
) -> None:
    """What ``open_stores`` would refuse of these choices' URLs (a bad URL, a store that cannot hold
    that part, a missing driver), in its words, without opening or reaching anything: a reload checks
    with it the stores it cannot change in place (``gateway.restart_checks``). A database that does
    not answer is no mistake here, as it is none at a start (the parts that use it spool)."""
    if isinstance(ledger, str) and is_postgres_url(ledger):
        from gtl_nb.engine.stores.postgres_pool import parse_postgres_url, require_psycopg

        parse_postgres_url(ledger, where="ledger")
        require_psycopg()
    elif isinstance(ledger, str) and "://" in ledger:
        _check_ledger_scheme(ledger)
        parse_store_url(ledger, where="ledger")
    else:
        refuse_url_for_path(ledger, "ledger", f"a SQLite file's path, or a store URL ({LEDGER_ACCEPTED})")
    if budgets is not None and budgets.backend is not None:
        parse_store_url(budgets.backend, where="[budgets] backend")
    if cache is not None:
        parse_store_url(cache.backend, where="[cache] backend")
    if breaker is not None:
        parse_store_url(breaker.backend, where="[routing.breaker] backend")


def _check_ledger_scheme(url: str) -> None:
    """Refuse a ledger URL of no SQLite or memory scheme (PostgreSQL's is taken before this), in words
    that list the ledger's own choices — the stores' list would offer redis:// and omit postgresql://."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss"):
        raise ConfigurationError(
            "ledger: the usage ledger does not live in Redis (Redis holds budgets, the cache and breakers); "
            f"use {LEDGER_ACCEPTED}"
        )
    if scheme not in ("sqlite", "memory"):
        raise ConfigurationError(f"ledger: unknown store {unknown_scheme(scheme)}; use {LEDGER_ACCEPTED}")


def _open_ledger(
    ledger: LedgerChoice,
    default_ledger: bool,
    wall_clock: Callable[[], float],
    retention: Retention | None,
    group_commit: float | None,
    loop_commits: bool,
    strict_durability: bool = False,
) -> UsageLedger | None:
    sqlite_options: dict[str, Any] = {
        "retention": retention,
        "group_commit": group_commit,
        "loop_commits": loop_commits,
    }
    if ledger is None or ledger is False:
        if not default_ledger:
            return None
        return SqliteUsageLedger(default_ledger_path(), clock=wall_clock, **sqlite_options)
    if isinstance(ledger, Ledger):
        return SqliteUsageLedger(ledger, **sqlite_options)
    if isinstance(ledger, UsageLedger):
        return ledger
    if isinstance(ledger, str) and is_postgres_url(ledger):
        from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger

        return PostgresUsageLedger(
            ledger,
            clock=wall_clock,
            group_commit=group_commit,
            retention=retention,
            strict_durability=strict_durability,
        )
    if isinstance(ledger, str) and "://" in ledger:
        _check_ledger_scheme(ledger)
        url = parse_store_url(ledger, where="ledger")
        if url.scheme == "memory":
            return MemoryUsageLedger(clock=wall_clock)
        return SqliteUsageLedger(url.path, clock=wall_clock, **sqlite_options)
    if isinstance(ledger, (str, os.PathLike)):
        refuse_url_for_path(ledger, "ledger", f"a SQLite file's path, or a store URL ({LEDGER_ACCEPTED})")
        return SqliteUsageLedger(ledger, clock=wall_clock, **sqlite_options)
    raise ConfigurationError(
        f"ledger must be a path, a store URL ({LEDGER_ACCEPTED}), a UsageLedger, a Ledger, False or None, "
        f"got {ledger!r}"
    )


def _open_budgets(budgets: BudgetConfig | None, ledger: UsageLedger | None) -> BudgetCounter:
    backend = budgets.backend if budgets is not None else None
    if backend is None:
        if isinstance(ledger, SqliteUsageLedger) and ledger.path is not None:
            return SqliteBudgetCounter(ledger.path, ledger_rows=True)
        if budgets is not None and _limits_anything(budgets) and _shared_by_replicas(ledger):
            log.warning(
                "[budgets]: limits are set and the ledger is shared by replicas (PostgreSQL), but the budgets "
                "are counted in this process's memory: each replica counts alone and a restart forgets today's "
                'spend; set [budgets] backend = "redis://…" to share them'
            )
        return MemoryBudgetCounter()
    url = parse_store_url(backend, where="[budgets] backend")
    if url.scheme == "redis":
        from gtl_nb.engine.stores.redis_budget import RedisBudgetCounter

        return RedisBudgetCounter(url.url, ledger=ledger)  # type: ignore[arg-type]
    return MemoryBudgetCounter() if url.scheme == "memory" else SqliteBudgetCounter(url.path)  # type: ignore[arg-type]


def _limits_anything(budgets: BudgetConfig) -> bool:
    """Whether ``[budgets]`` sets any limit: its defaults, a user's or a tenant's."""
    overrides = (*budgets.users.values(), *budgets.tenants.values())
    return budgets.default.any or any(value is not None for table in overrides for value in table.values())


def _shared_by_replicas(ledger: UsageLedger | None) -> bool:
    """Whether ``ledger`` is one several gateway processes share across hosts (PostgreSQL's)."""
    module = sys.modules.get("gtl_nb.engine.stores.postgres_ledger")  # (loaded when such a ledger exists)
    return module is not None and isinstance(ledger, module.PostgresUsageLedger)


def _open_cache(config: CacheConfig, clock: Callable[[], float], wall_clock: Callable[[], float]) -> ResponseCache:
    url = parse_store_url(config.backend, where="[cache] backend")
    if url.scheme == "memory":
        return MemoryResponseCache(config.max_entries, config.ttl, clock=clock)
    if url.scheme == "redis":
        from gtl_nb.engine.stores.redis_cache import RedisResponseCache

        return RedisResponseCache(url.url, default_ttl=config.ttl, wall_clock=wall_clock)  # type: ignore[arg-type]
    return SqliteResponseCache(url.path, default_ttl=config.ttl, wall_clock=wall_clock)  # type: ignore[arg-type]


def _open_breakers(config: BreakerConfig, clock: Callable[[], float], wall_clock: Callable[[], float]) -> BreakerStore:
    url = parse_store_url(config.backend, where="[routing.breaker] backend")
    if url.scheme == "memory":
        return MemoryBreakerStore(config, clock=clock)
    if url.scheme == "redis":
        from gtl_nb.engine.stores.redis_breakers import RedisBreakerStore

        return RedisBreakerStore(url.url, config, wall_clock=wall_clock)  # type: ignore[arg-type]
    return SqliteBreakerStore(url.path, config, wall_clock=wall_clock)  # type: ignore[arg-type]


def _close_quietly(store: Any) -> None:
    """Close a store a failed ``open_stores`` opened (synchronously: no loop may be running)."""
    close = getattr(store, "close", None)
    if callable(close):
        close()
