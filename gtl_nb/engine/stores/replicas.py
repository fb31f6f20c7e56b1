"""``ReplicaRegistry``: how many gateway processes share a Redis budget store, known without a round trip.

Under the URL's key prefix (``gtl:`` by default)::

    gtl:replicas    sorted set   replica id -> when it last said it is alive (unix seconds)

Every process whose budgets live in Redis beats every ``HEARTBEAT_SECONDS`` (5 s) — the second beat
one second after the first (``FIRST_PAUSE``) — from a background task on its loop, started as soon as
its budget store is used on a loop (``RedisBudgetCounter.join_replicas``: opened there, ``/readyz``,
a reservation), not only at its first reservation, so a replica is counted before it serves: one script
adds or refreshes its own entry, forgets the entries silent for ``EXPIRY_SECONDS`` (15 s: three
missed beats) and returns how many are left. ``count`` is the last number read while Redis
answered, at least 1 (this process): the number a replica divides each limit by while Redis is down
(``redis_budget``) — when Redis is down the set cannot be read, and the last count is the best
knowledge there is. No request waits on the registry. A process that closes its store removes its
entry at once; one that died drops out after the expiry, and the set itself expires when no replica
beats any more.

A gateway marks its id with its fleet (``set_fleet``: a digest of its token issuer), ``host/pid/random~mark``.
Fleets that share one Redis server and key prefix share budgets, the cache, breakers and revocations
(a user ``mo`` of one issuer spends the other's ``mo``'s budget); a replica that finds, in its first
beats, entries of another mark says so once, with the fix (a ``key_prefix`` per fleet). Entries without
a mark (an embedded client, an older release) are not compared.

Times are each replica's own wall clock: clocks a few seconds apart are well within the expiry. A
replica's id is ``host/pid/random``: readable in ``ZRANGE``, and a forked child gets its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gtl_nb.engine.stores.redis_client import LuaScript, RedisConnector, RedisUnavailableError, cancel_was_swallowed
from gtl_nb.engine.stores.redis_fallback import RedisOutage
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.log import get_logger

__all__ = ["EXPIRY_SECONDS", "HEARTBEAT_SECONDS", "ReplicaRegistry", "fleet_mark", "replica_id", "set_fleet"]

log = get_logger("engine.stores")

HEARTBEAT_SECONDS = 5.0
"""How often a replica says it is alive."""
FIRST_PAUSE = 1.0
"""Seconds between a replica's first beat and its second: replicas started together count one another
after about a second, not a whole ``HEARTBEAT_SECONDS``."""
EXPIRY_SECONDS = 15.0
"""How long a replica counts as alive after its last beat."""
LEAVE_TIMEOUT = 1.0
"""Seconds a closing store waits to take its entry out (a dead server must not hold up shutdown)."""

# KEYS: the set.  ARGV: replica id, now, forget before, seconds the set outlives the last beat.
_BEAT = LuaScript(
    """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""
)

_own_id: tuple[int, str] | None = None
_fleet: str | None = None
FLEET_CHECKS = 3
"""How many of its first beats a replica looks for entries of another fleet after (replicas started
together see one another from the second beat on)."""


def fleet_mark(issuer: str) -> str:
    """The mark of the fleet whose tokens carry ``issuer`` (a digest: the id stays short and plain)."""
    return hashlib.sha256(issuer.encode("utf-8", "backslashreplace")).hexdigest()[:8]


def set_fleet(mark: str | None) -> None:
    """Mark the ids of the registries this process makes from now on with ``mark`` (``fleet_mark``)."""
    global _fleet
    _fleet = mark


def replica_id() -> str:
    """This process's replica id, ``host/pid/random`` (made again in a forked child)."""
    global _own_id
    pid = os.getpid()
    if _own_id is None or _own_id[0] != pid:
        _own_id = (pid, f"{socket.gethostname()}/{pid}/{secrets.token_hex(4)}")
    return _own_id[1]


class ReplicaRegistry:
    """This process's entry among the live replicas of one Redis, and their last known ``count``.

    ``outage`` (the budget counter's) hears how each beat went, so a Redis that dies while no request
    runs is noticed too, and its return."""

    def __init__(
        self,
        connector: RedisConnector,
        *,
        outage: RedisOutage | None = None,
        wall_clock: Callable[[], float] = time.time,
        interval: float = HEARTBEAT_SECONDS,
        expiry: float = EXPIRY_SECONDS,
        replica: str | None = None,
        fleet: str | None = None,
    ) -> None:
        self.connector = connector
        self.outage = outage
        self.wall_clock = wall_clock
        self.interval = interval
        self.expiry = expiry
        self.fleet = fleet if fleet is not None else _fleet
        self.id = (replica or replica_id()) + (f"~{self.fleet}" if self.fleet else "")
        self._fleet_checks = FLEET_CHECKS if self.fleet else 0
        self.key = f"{connector.prefix}replicas"
        self.count = 1
        """Live replicas at the last beat Redis answered (this one included), at least 1."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ReplicaRegistry({self.id!r}, count={self.count})"

    def keep_beating(self) -> None:
        """Make sure the heartbeat runs on the running loop (a few attribute checks when it does)."""
        task = self._task
        if self._closed or (task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()):
            return
        self._task = asyncio.get_running_loop().create_task(self._beat_forever(), name=f"gtl_nb replica {self.id}")

    async def beat(self) -> int:
        """Say this replica is alive and read how many are; ``RedisUnavailableError`` when Redis is down."""
        now = self.wall_clock()
        args = [self.id, repr(float(now)), repr(float(now) - self.expiry), str(int(self.expiry * 4) + 1)]
        found = await self._run("counting the live replicas", lambda client: _BEAT(client, [self.key], args))
        self.count = max(1, int(found))
        if self._fleet_checks and self.count > 1:
            await self._look_for_other_fleets()
        return self.count

    async def _look_for_other_fleets(self) -> None:
        """Warn (once) when live entries carry another fleet's mark: two fleets share this Redis's keys."""
        self._fleet_checks -= 1
        members = await self._run("reading the live replicas", lambda client: client.zrange(self.key, 0, -1))
        marks = [(m.decode() if isinstance(m, bytes) else str(m)).rpartition("~") for m in members]
        others = [mark for _, tilde, mark in marks if tilde and mark and mark != self.fleet]
        if not others:
            return
        self._fleet_checks = 0
        log.warning(
            "Redis at %s: the live-replica registry %s holds %d replica(s) of another fleet (another token "
            "issuer) beside this one: fleets sharing one Redis and key prefix share per-user budgets, the "
            "response cache, circuit breakers and the revocation list; give each fleet its own key_prefix "
            "(?key_prefix=staging: in every Redis URL of one of them) or database number (docs/deploy.md)",
            self.connector.shown,
            self.key,
            len(others),
        )

    async def aclose(self) -> None:
        """Stop beating and take this replica's entry out (when it ever beat and Redis answers)."""
        self._closed = True
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            task.cancel()
            with contextlib.suppress(RuntimeError):  # a task of another loop: its loop's end cancels it
                await asyncio.wait({task})
        if self.outage is not None and self.outage.down:
            return
        with contextlib.suppress(StoreError, asyncio.TimeoutError):
            await asyncio.wait_for(
                self.connector.run("leaving the live replicas", lambda client: client.zrem(self.key, self.id)),
                LEAVE_TIMEOUT,
            )

    async def _beat_forever(self) -> None:
        pause = min(self.interval, FIRST_PAUSE)
        while True:
            try:
                await self.beat()
            except RedisUnavailableError:
                pass  # the outage heard of it (and logged it once); the last count stays
            except StoreError:
                return  # the store was closed
            except Exception:  # a bug must not end the heartbeat silently, nor kill the loop's task
                log.exception("the replica heartbeat failed")
            if self._closed or cancel_was_swallowed():
                # closed, or cancelled (the loop ending) during the beat, whose client may have swallowed
                # the cancellation: a task that carried on would hold asyncio.run's end forever
                return
            await asyncio.sleep(pause)
            pause = self.interval

    def _run(self, what: str, operation: Callable[[Any], Awaitable[Any]]) -> Awaitable[Any]:
        if self.outage is not None:
            return self.outage.call(what, operation)
        return self.connector.run(what, operation)
