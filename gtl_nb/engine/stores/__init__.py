"""The engine's state behind async interfaces: the usage ledger, budget counters, the response cache
and circuit-breaker state.

The engine sees only these protocols; ``open_stores`` picks the implementations from URLs in the
configuration (``memory://``, ``sqlite:///relative/path``, ``sqlite:////absolute/path``; ``redis://``
for what gateway replicas share, ``postgresql://`` for their ledger). Every implementation runs the
same contract test suite (``tests/engine/stores/``).

Shared by gateway replicas: ``RedisBudgetCounter``, ``RedisResponseCache`` and ``RedisBreakerStore``
(``redis://``, the ``redis`` extra) and ``PostgresUsageLedger`` (``postgresql://``, the ``postgres`` extra).

========================  =====================================  ==================================
interface                 memory://                              sqlite:///path
========================  =====================================  ==================================
``UsageLedger``           ``MemoryUsageLedger`` (tests)          ``SqliteUsageLedger`` (the default)
``BudgetCounter``         ``MemoryBudgetCounter`` (one process)  ``SqliteBudgetCounter`` (processes
                                                                 on one machine share it, exact rpm)
``ResponseCache``         ``MemoryResponseCache`` (LRU)          ``SqliteResponseCache``
``BreakerStore``          ``MemoryBreakerStore`` (the default)   ``SqliteBreakerStore``
========================  =====================================  ==================================

The implementations are imported on first use: the engine's policy modules (``cache``, ``breaker``,
``ratelimit``) import ``stores.base`` and ``stores.urls``, and the implementations import them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gtl_nb.engine.stores.base import (
    BreakerStore,
    BudgetCounter,
    Reservation,
    ResponseCache,
    Stores,
    UsageLedger,
)

if TYPE_CHECKING:
    from gtl_nb.engine.stores.factory import open_stores
    from gtl_nb.engine.stores.memory import (
        MemoryBreakerStore,
        MemoryBudgetCounter,
        MemoryResponseCache,
        MemoryUsageLedger,
    )
    from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
    from gtl_nb.engine.stores.redis import RedisBreakerStore, RedisBudgetCounter, RedisResponseCache
    from gtl_nb.engine.stores.sqlite import (
        SqliteBreakerStore,
        SqliteBudgetCounter,
        SqliteResponseCache,
        SqliteUsageLedger,
    )

_LAZY = {
    "open_stores": "factory",
    **dict.fromkeys(
        ("MemoryBreakerStore", "MemoryBudgetCounter", "MemoryResponseCache", "MemoryUsageLedger"), "memory"
    ),
    **dict.fromkeys(
        ("SqliteBreakerStore", "SqliteBudgetCounter", "SqliteResponseCache", "SqliteUsageLedger"), "sqlite"
    ),
    **dict.fromkeys(("RedisBreakerStore", "RedisBudgetCounter", "RedisResponseCache"), "redis"),
    "PostgresUsageLedger": "postgres_ledger",
}

__all__ = [
    "BreakerStore",
    "BudgetCounter",
    "MemoryBreakerStore",
    "MemoryBudgetCounter",
    "MemoryResponseCache",
    "MemoryUsageLedger",
    "PostgresUsageLedger",
    "RedisBreakerStore",
    "RedisBudgetCounter",
    "RedisResponseCache",
    "Reservation",
    "ResponseCache",
    "SqliteBreakerStore",
    "SqliteBudgetCounter",
    "SqliteResponseCache",
    "SqliteUsageLedger",
    "Stores",
    "UsageLedger",
    "open_stores",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
