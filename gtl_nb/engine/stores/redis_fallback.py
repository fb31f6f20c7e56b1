"""``RedisOutage``: how a Redis store notices that its server is gone, and that it is back.

Each Redis store (budgets, cache, breakers) holds one, and keeps a local fallback of its own (a
``MemoryBudgetCounter``, no cache, a ``BreakerBoard``). While Redis answers, ``usable()`` is true
and costs nothing. The first call that fails (``failed``) logs ONE warning — naming the server as
``shown_url`` does, never with its password, and what the store does meanwhile — and from then on
``usable()`` is false, so requests are served from the fallback at once: a dead server does not add
a connect timeout to every request. Meanwhile a background task probes every ``retry`` seconds
(1 s) — with or without traffic, so ``/readyz`` turns ready again on its own — and the first answer
(``answered``) logs one warning too — an operator who saw the outage at the default level sees its end,
as PostgreSQL's stores log theirs; the store uses Redis again from its next call.
``degraded_reason`` is the one line ``/readyz`` shows while it is down. When the server itself does
not answer (refused, reset, timed out), the first store to find it tells every other store of that
server, which falls back at once and probes on its own: a request is held for one timeout per outage,
not one per store, and ``/readyz`` names every store of the server from the first failure.

The probe is a small write (``SET <prefix>probe`` with a short expiry), not a ``PING``: a Redis that
answers but refuses writes — out of memory under ``noeviction``, a read-only replica after a
fail-over — is still down for the stores, which all write. A failure within ``RELAPSE`` seconds of
Redis answering again (a store's command that keeps failing while Redis itself works) is the same
outage: no new warning (neither for the failure nor for the return), and the probe waits twice as long after each such
return, up to ``MAX_RETRY`` seconds. So there is one warning per outage, flapping or not.

A store may say that a busy pool (``RedisBusyError``: no free connection within the wait) is not an
outage (``busy_is_outage=False``): the call fails, Redis is not declared down.

Everything runs on the event loop of the store's caller (one engine loop): no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from gtl_nb.engine.loop import running_loop
from gtl_nb.engine.stores.redis_client import (
    RedisBusyError,
    RedisConnector,
    RedisUnavailableError,
    RedisUnreachableError,
    cancel_was_swallowed,
)
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.log import get_logger

__all__ = ["MAX_RETRY", "RELAPSE", "RETRY_SECONDS", "RedisOutage", "one_line"]

log = get_logger("engine.stores")

T = TypeVar("T")

RETRY_SECONDS = 1.0
"""While Redis is down, how often a background probe asks whether it is back."""
RELAPSE = 30.0
"""Seconds after Redis answered again during which a new failure is the same outage (module docstring)."""
MAX_RETRY = 30.0
"""The longest pause between probes, after returns that failed again at once."""
PROBE_TTL_MS = 10_000
"""How long the probe's key lives (milliseconds): it is written again at each probe."""


# Every store's outage watch by its server (host, port, database: ``server_of``, whatever pool and
# client options a store uses — the coalescing registry has a pool of its own), so the first to find
# the server gone tells the others of its own loop's engine (``RedisOutage.failed``).
_same_server: dict[str, weakref.WeakSet[RedisOutage]] = {}


def one_line(text: str) -> str:
    """``text`` on one line, without a final full stop (for ``/readyz`` and a log line, where more
    follows it): redis-py's messages may span several."""
    return " ".join(text.split()).rstrip(".")


class RedisOutage:
    """Whether one store's Redis works now, and the probe that notices its return (module docstring).

    ``store`` names the store in messages (``"budgets"``); ``meanwhile()`` says what it does while
    Redis is down, ``back`` what it does again once Redis answers; ``on_recovered`` runs (on the
    loop) when it does — the budget counter sends the settlements it owes then. ``busy_is_outage``:
    whether a busy pool (``RedisBusyError``) counts as Redis failing."""

    def __init__(
        self,
        connector: RedisConnector,
        *,
        store: str,
        meanwhile: Callable[[], str],
        back: str,
        retry: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_recovered: Callable[[], None] | None = None,
        busy_is_outage: bool = True,
    ) -> None:
        self.connector = connector
        self.store = store
        self.meanwhile = meanwhile
        self.back = back
        self.retry = retry
        self.clock = clock
        self.on_recovered = on_recovered
        self.busy_is_outage = busy_is_outage
        self._problem: str | None = None  # the last failure's message while Redis is down, else None
        self._since = 0.0  # wall-clock seconds of the first failure (shown in /readyz)
        self._down_at = 0.0  # monotonic, the same instant (for the "back after" line)
        self._back_at: float | None = None  # monotonic, when Redis last answered again after an outage
        self._relapses = 0  # returns of this outage that failed again within RELAPSE seconds
        self._probe: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop its calls run on (its engine's)
        _same_server.setdefault(connector.server, weakref.WeakSet()).add(self)

    @property
    def down(self) -> bool:
        """Whether the store serves from its local fallback now."""
        return self._problem is not None

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed, since when, and what happens meanwhile."""
        if self._problem is None:
            return None
        since = datetime.fromtimestamp(self._since, timezone.utc).strftime("%H:%M:%S UTC")
        return f"{self._problem} (since {since}); {self.meanwhile()}"

    def usable(self) -> bool:
        """Whether to ask Redis now: false while it is down (and the probe runs on this loop)."""
        if self._problem is None:
            return True
        if not self._probing():  # a probe of a loop that ended, or none yet
            self._start_probe()
        return False

    async def call(self, what: str, operation: Callable[[Any], Awaitable[T]]) -> T:
        """``connector.run(what, operation)``, its outcome noted (``failed``/``answered``);
        ``RedisUnavailableError`` is raised on, for the store to fall back."""
        self._loop = asyncio.get_running_loop()
        try:
            result = await self.connector.run(what, operation)
        except RedisUnavailableError as exc:
            if self.busy_is_outage or not isinstance(exc, RedisBusyError):
                self.failed(exc)
            raise
        self.answered()
        return result

    async def look(self) -> None:
        """One write now (the probe's), its outcome noted as a call's: the gateway's first look at start,
        so its ``ready`` line names a Redis that does not answer. ``RedisUnavailableError`` when it fails."""
        await self.call("a first look at start", self._write_probe)

    def failed(self, error: StoreError, *, tell_the_others: bool = True) -> None:
        """Redis failed a call: from now on, the fallback (the first failure of an outage is logged).

        When the server itself did not answer, the other stores of the same server fall back too, at
        once: each would otherwise find out on its own, holding a request for a timeout each (a frozen
        server held one request up to a timeout per store), and ``/readyz`` would name only the stores
        that happened to be called."""
        if tell_the_others and self._problem is None and isinstance(error, RedisUnreachableError):
            here = running_loop()
            for other in list(_same_server.get(self.connector.server, ())):
                # (only the stores of this loop's engine, or not used yet: another engine's stores
                # belong to its loop, where their probe and their recovery must run)
                ours = other._loop is None or other._loop is here
                if other is not self and ours and not other.down and not other.connector.closed:
                    other.failed(error, tell_the_others=False)
        problem = one_line(error.message)
        if self._problem is None and self._back_at is not None and self.clock() - self._back_at < RELAPSE:
            self._relapses += 1  # the same outage again (module docstring): still since its start, no warning
            log.debug("%s: %s again right after Redis answered; asking less often", self.store, problem)
        elif self._problem is None:
            self._relapses = 0
            self._since, self._down_at = time.time(), self.clock()
            log.warning(
                "%s: %s; %s until it answers (asking every %g s)",
                self.store,
                problem,
                self.meanwhile(),
                self.retry,
            )
        self._problem = problem
        with contextlib.suppress(RuntimeError):  # no loop runs (cannot happen in a store's call): usable() starts it
            if not self._probing():
                self._start_probe()

    def answered(self) -> None:
        """Redis answered a call: back to it (logged once, when it had been down)."""
        if self._problem is None:
            return
        self._problem = None
        self._back_at = self.clock()
        if self._relapses == 0:  # a return after a relapse was said already
            # a warning like the outage's: at the default level an operator sees both ends of it
            log.warning(
                "%s: Redis at %s answers again after %.1f s; %s",
                self.store,
                self.connector.shown,
                self._back_at - self._down_at,
                self.back,
            )
        if self.on_recovered is not None:
            self.on_recovered()

    async def aclose(self) -> None:
        """Stop a probe under way (on the loop it runs on)."""
        _same_server.get(self.connector.server, weakref.WeakSet()).discard(self)
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.cancel()
            with contextlib.suppress(RuntimeError):  # it belongs to another loop: that loop's end cancels it
                await asyncio.wait({probe})

    def _probing(self) -> bool:
        """Whether a probe runs on this loop (one of a loop that ended never finishes: ignore it)."""
        probe = self._probe
        return probe is not None and not probe.done() and probe.get_loop() is asyncio.get_running_loop()

    def _start_probe(self) -> None:
        self._probe = asyncio.get_running_loop().create_task(
            self._probe_until_back(), name=f"gtl_nb redis probe {self.connector.shown}"
        )

    async def _probe_until_back(self) -> None:
        """Probe every ``retry`` seconds (longer after relapses) until Redis takes a write (then
        ``answered``) or the store closes."""
        while self._problem is not None:
            await asyncio.sleep(min(self.retry * 2 ** min(self._relapses, 16), max(self.retry, MAX_RETRY)))
            if self._problem is None:  # a call of the store got through meanwhile
                return
            try:
                await self.connector.run("checking whether Redis is back", self._write_probe)
            except RedisUnavailableError as exc:
                if self._problem is not None:  # still down: the reason may have changed
                    self._problem = one_line(exc.message)
            except StoreError:
                return  # the store was closed
            else:
                self.answered()
            if cancel_was_swallowed():
                return  # cancelled during the probe (the loop ending) and the client swallowed it

    async def _write_probe(self, client: Any) -> None:
        """A write, as every store makes: refused while Redis is out of memory or read-only. A user whose
        ACL may not write the key still gets a ``PING`` through (its store's own calls then tell)."""
        import redis.exceptions

        try:
            await client.set(f"{self.connector.prefix}probe", b"1", px=PROBE_TTL_MS)
        except redis.exceptions.NoPermissionError:
            await client.ping()
