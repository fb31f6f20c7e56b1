"""The Redis stores (``redis://host:port/db``, ``rediss://`` with TLS): what gateway replicas share.

==========================  =================================================================
``RedisBudgetCounter``      per-principal requests/tokens per minute and USD per UTC day; one Lua
                            script per reserve, so a limit is exact across replicas
                            (``redis_budget``)
``RedisResponseCache``      finished answers as JSON with Redis's own expiry (``redis_cache``)
``RedisBreakerStore``       circuit-breaker state: a breaker opened by one replica is open for all,
                            one half-open probe among them (``redis_breakers``)
==========================  =================================================================

The usage ledger does not live in Redis (it lives in SQLite or PostgreSQL). Connections, timeouts,
the missing-extra error and what happens when Redis is unreachable: ``redis_client``. Token
revocations shared through Redis: ``gtl_nb.gateway.tokens.redis_revocations``.

Importing this module does not import redis-py; opening a store does.
"""

from __future__ import annotations

from gtl_nb.engine.stores.redis_breakers import RedisBreakerStore
from gtl_nb.engine.stores.redis_budget import RedisBudgetCounter
from gtl_nb.engine.stores.redis_cache import RedisResponseCache
from gtl_nb.engine.stores.redis_client import RedisUnavailableError

__all__ = ["RedisBreakerStore", "RedisBudgetCounter", "RedisResponseCache", "RedisUnavailableError"]
