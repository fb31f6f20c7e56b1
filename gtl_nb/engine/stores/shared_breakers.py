"""``RulesOverState``: the four ``BreakerStore`` verbs for a store that keeps each deployment's breaker as
state it loads, changes with ``engine.breaker``'s rules and writes back in one atomic ``_update`` (the
SQLite and the Redis breaker stores); ``stored_json``: the JSON both keep.

The stored state is ``CircuitBreaker.to_state()`` — small and bounded: the error-rate window is 20
buckets of counts, not a list of calls — plus each store's own fields, plus ``"window": []``. That
last one is for processes of earlier versions sharing the store during an upgrade: they read the
window from it (as a list of every call) and find it empty, so they still see the circuit's state,
its failure streak, its cooldown and its probes; ``from_state`` reads what they write back (every
call of the window, as ``[time, failed]``) into buckets. Such a process does not know
``provider_retry_after`` either: it lets probes through after the plain cooldown, and what it writes
back lacks the field (read as none). Every process reads the stored ``provider_retry_after`` with its
own rule (``engine.breaker.open_for``): one of a version that held a circuit open for the longer of the
cooldown and the provider's wait refuses a circuit that this version already probes after a shorter
wait, until the cooldown ends or the probe's verdict is written.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from gtl_nb.engine.breaker import BreakerConfig, CircuitBreaker

__all__ = ["RulesOverState", "stored_json", "verdict"]


def stored_json(state: dict[str, Any]) -> str:
    """``state`` (``to_state()`` and the store's own fields) as the JSON a shared store keeps."""
    return json.dumps({"window": [], **state}, separators=(",", ":"))


class RulesOverState:
    """Mixin: ``acquire``/``record_success``/``record_failure``/``release`` through ``self._update``;
    a verdict goes through ``self._record``, which a store may answer faster for a closed circuit."""

    config: BreakerConfig
    _update: Callable[[str, Callable[[CircuitBreaker], Any]], Awaitable[Any]]

    async def acquire(self, deployment: str) -> str | None:
        if not self.config.enabled:
            return "pass"
        return await self._update(deployment, lambda breaker: breaker.acquire())

    async def record_success(self, deployment: str) -> tuple[str, str] | None:
        if not self.config.enabled:
            return None
        return await self._record(deployment, failed=False)

    async def record_failure(self, deployment: str, retry_after: float | None = None) -> tuple[str, str] | None:
        if not self.config.enabled:
            return None
        return await self._record(deployment, failed=True, retry_after=retry_after)

    async def release(self, deployment: str) -> None:
        await self._update(deployment, lambda breaker: breaker.release())

    async def _record(
        self, deployment: str, *, failed: bool, retry_after: float | None = None
    ) -> tuple[str, str] | None:
        """A verdict, through ``_update`` (a store overrides this to serve a closed circuit in one step)."""
        return await self._update(deployment, verdict(failed, retry_after))


def verdict(failed: bool, retry_after: float | None = None) -> Callable[[CircuitBreaker], tuple[str, str] | None]:
    """The breaker operation of a verdict: a success, or a failure with the provider's ``retry_after``."""
    if failed:
        return lambda breaker: breaker.record_failure(retry_after)
    return CircuitBreaker.record_success
