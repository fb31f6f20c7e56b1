"""``RulesOverState``: the four ``BreakerStore`` verbs for a store that keeps each deployment's breaker as
state it loads, changes with ``engine.breaker``'s rules and writes back in one atomic ``_update`` (the
SQLite and the Redis breaker stores)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gtl_nb.engine.breaker import BreakerConfig, CircuitBreaker

__all__ = ["RulesOverState"]


class RulesOverState:
    """Mixin: ``acquire``/``record_success``/``record_failure``/``release`` through ``self._update``."""

    config: BreakerConfig
    _update: Callable[[str, Callable[[CircuitBreaker], Any]], Awaitable[Any]]

    async def acquire(self, deployment: str) -> str | None:
        if not self.config.enabled:
            return "pass"
        return await self._update(deployment, lambda breaker: breaker.acquire())

    async def record_success(self, deployment: str) -> tuple[str, str] | None:
        if not self.config.enabled:
            return None
        return await self._update(deployment, lambda breaker: breaker.record_success())

    async def record_failure(self, deployment: str) -> tuple[str, str] | None:
        if not self.config.enabled:
            return None
        return await self._update(deployment, lambda breaker: breaker.record_failure())

    async def release(self, deployment: str) -> None:
        await self._update(deployment, lambda breaker: breaker.release())
