"""``RedisResponseCache``: finished answers that every gateway replica shares.

One string per answer, ``<prefix>cache:<cache key>`` (the key is ``cache.cache_key``'s SHA-256 hex),
holding JSON — never pickle: a value another program wrote into the server can at worst be
unreadable, never run — of the ``CachedAnswer`` and its expiry. Redis deletes the key itself when
the time to live is over (``SET … PX``), so the cache needs no sweeping and holds at most one TTL of
traffic; the expiry inside the value (``wall_clock`` seconds) is checked as well, so an injected
clock is obeyed as with the SQLite cache. An answer whose JSON is larger than ``max_value_bytes``
is not stored (and any older answer under its key is dropped): a huge answer must not fill the
server's memory for everyone.

While Redis cannot be used (``redis_fallback``), ``get`` answers a miss and ``set``/``delete`` do
nothing, without raising — a cache never fails a request — and without a log line per request: one
warning when the outage starts, one when Redis answers again, and no call waits on the
dead server in between (a background probe asks every second). ``clear``, an operator's explicit
request, still raises ``RedisUnavailableError``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec

from gtl_nb.engine.cache import CachedAnswer
from gtl_nb.engine.stores.redis_client import RedisConnector, RedisUnavailableError
from gtl_nb.engine.stores.redis_fallback import RedisOutage
from gtl_nb.log import get_logger

__all__ = ["MAX_VALUE_BYTES", "RedisResponseCache"]

log = get_logger("engine.stores")

MAX_VALUE_BYTES = 4 * 1024 * 1024
"""The largest answer (as JSON) stored by default: a long answer's token events fit many times over."""
_CLEAR_BATCH = 500  # keys per SCAN step and per UNLINK when clearing


class _Stored(msgspec.Struct, frozen=True):
    """What one key holds: the answer and when it expires (``wall_clock`` seconds)."""

    expires: float
    answer: CachedAnswer


_DECODER = msgspec.json.Decoder(_Stored)


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by ``SCAN MATCH`` (a key prefix may hold ``*``, ``?`` or ``[``)."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisResponseCache:
    """A ``ResponseCache`` in Redis (module docstring): ``url`` is a ``redis://`` or ``rediss://`` URL;
    ``default_ttl`` applies to ``set`` without one. ``degraded_reason`` is ``None`` while Redis
    answers, else why every lookup is a miss (for ``/readyz``)."""

    def __init__(
        self,
        url: str,
        *,
        default_ttl: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        self.redis = RedisConnector(url, what="[cache] backend")
        self.default_ttl = default_ttl
        self.wall_clock = wall_clock
        self.max_value_bytes = max_value_bytes
        self.outage = RedisOutage(
            self.redis,
            store="cache",
            meanwhile=lambda: "every lookup is a miss and nothing is stored",
            back="answers are cached again",
        )

    def __repr__(self) -> str:
        return f"RedisResponseCache({self.redis.shown!r})"

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and that the cache is skipped."""
        return self.outage.degraded_reason

    def _key(self, key: str) -> str:
        return f"{self.redis.prefix}cache:{key}"

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key``, or ``None`` (also while Redis is down)."""
        if not self.outage.usable():
            return None
        try:
            data = await self.outage.call("reading the cache", lambda client: client.get(self._key(key)))
        except RedisUnavailableError:
            return None
        if data is None:
            return None
        try:
            stored = _DECODER.decode(data)
        except msgspec.DecodeError:  # written by another version of gtl_nb (or not by us): a miss, and gone
            log.debug("cache entry %s could not be read; dropped", key)
            await self.delete(key)
            return None
        if stored.expires <= self.wall_clock():
            return None  # Redis deletes it itself; another replica may already have stored a fresh one
        return stored.answer

    async def set(self, key: str, answer: CachedAnswer, ttl: float | None = None) -> None:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            await self.delete(key)
            return
        data = msgspec.json.encode(_Stored(self.wall_clock() + ttl, answer))
        if len(data) > self.max_value_bytes:
            log.info(
                "cache: an answer of %d bytes is over the %d-byte limit; not stored", len(data), self.max_value_bytes
            )
            await self.delete(key)  # an older answer under this key must not outlive the newer one
            return
        milliseconds = max(1, math.ceil(ttl * 1000))
        if self.outage.usable():
            with contextlib.suppress(RedisUnavailableError):  # noted by the outage: not stored, never an error
                await self.outage.call(
                    "writing the cache", lambda client: client.set(self._key(key), data, px=milliseconds)
                )

    async def delete(self, key: str) -> None:
        if self.outage.usable():
            with contextlib.suppress(RedisUnavailableError):
                await self.outage.call("deleting from the cache", lambda client: client.delete(self._key(key)))

    async def clear(self) -> None:
        """Delete every answer under this URL's key prefix (other data in the server is left alone)."""
        pattern = _glob_escaped(self._key("")) + "*"

        async def work(client: Any) -> None:
            batch: list[bytes] = []
            async for name in client.scan_iter(match=pattern, count=_CLEAR_BATCH):
                batch.append(name)
                if len(batch) >= _CLEAR_BATCH:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)

        await self.outage.call("clearing the cache", work)

    async def aclose(self) -> None:
        await self.outage.aclose()
        await self.redis.aclose()

    def close(self) -> None:
        """Close without a loop."""
        self.redis.close()
