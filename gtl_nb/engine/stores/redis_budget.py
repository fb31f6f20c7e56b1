"""``RedisBudgetCounter``: per-principal budgets that every gateway replica shares, exact across them.

Per principal (its name percent-encoded inside a ``{…}`` hash tag, so a Redis Cluster keeps its
keys in one slot), under the URL's key prefix (``gtl:`` by default)::

    gtl:budget:{ann}:times      sorted set   reservation id -> reservation time (unix seconds)
    gtl:budget:{ann}:spends     hash         reservation id -> "<tokens> <nano-USD>", and the minute's
                                             running totals: =since, =requests, =tokens, =members
    gtl:budget:{ann}:day:<d>    string       nano-USD counted for the UTC day starting at <d>

``reserve`` is one Lua script, so it is atomic across replicas, and it costs the same however many
reservations the principal's minute holds (amortised): it does not read the minute. The hash keeps
running totals — ``=requests`` and ``=tokens`` count the reservations at or after ``=since`` (the
start of the newest minute asked about) — and each reserve first moves ``=since`` up to its own
minute's start, subtracting the reservations that left the minute since the last one (each leaves
once), then decides exactly as ``ratelimit.refusal`` does on those totals and today's spend, and
counts the request (adding it to the totals). Only a refusal reads the minute one by one, to answer
with what ``refusal`` needs for the error's message and ``retry_after`` (and it decides again on that
exact read, which also resets the totals). A reserve whose clock is behind ``=since`` (another
replica's, a few milliseconds ahead) adds the few reservations in between. ``settle`` (a script too)
replaces the estimate, moves the totals by the difference while the reservation is in them, and the
day's total. Money is counted in whole nano-dollars (integers: Redis adds them exactly); ``usage``
reports dollars (it reads the minute: it is not on the request path).

``=members`` is how many reservations the set held when the totals were last right: when it is
missing or differs (keys written by an earlier version of gtl_nb, which kept no totals, or by hand),
the reserve counts the minute afresh once. Requests per minute are therefore exact, as before.
(While replicas of an earlier version write the same keys — a rolling upgrade — their settlements
move no totals, and one of their reserves that also forgets a day-old reservation leaves the count
unchanged: the totals can be off by those until the next refusal, which recounts.) Reservations
older than a minute or the UTC day, with a day of slack, are forgotten as they go, as in the memory
counter.

Every key expires on its own two days after its principal's last reservation: an idle principal
leaves nothing behind. Reservation ids are made here (random), so a reserve that redis-py sends
again after a dropped reply is recognised and not counted twice; a reserve whose caller is
cancelled is taken back once it lands, as the SQLite counter does.

When Redis cannot be used (``redis_fallback``), requests are not refused for it: ``reserve``,
``settle`` and ``usage`` go to a ``MemoryBudgetCounter`` of this process, with every limit divided
by the number of live replicas last seen (``replicas``; ``local_limits`` says how it rounds), one
warning logged when that starts and one info line when Redis answers again; from then on new
requests are counted in Redis again. A reservation made locally is settled locally (its id is the
memory counter's integer, a Redis one is a hex string), never sent to Redis later. The settlement of
a reservation made in Redis that cannot reach it is kept (up to ``MAX_OWED``, in memory) and sent
when Redis answers again — settling is idempotent — so the day's spend in Redis is not left at the
estimate. What the local counter saw is not added to Redis afterwards: during the minute after an
outage, a principal may get up to one local share more than its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from typing import Any

from gtl_nb.engine.ratelimit import DAY, WINDOW, Limits, Spend, horizon, refusal, usage_report, utc_day_start
from gtl_nb.engine.stores.base import Reservation
from gtl_nb.engine.stores.memory import MemoryBudgetCounter
from gtl_nb.engine.stores.redis_client import LuaScript, RedisConnector, RedisUnavailableError, key_part
from gtl_nb.engine.stores.redis_fallback import RedisOutage
from gtl_nb.engine.stores.replicas import ReplicaRegistry
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.log import get_logger

__all__ = ["MAX_OWED", "RedisBudgetCounter", "local_limits"]

log = get_logger("engine.stores")

NANOS = 1_000_000_000  # nano-dollars per dollar
KEEP_SECONDS = int(2 * DAY + 2 * WINDOW)  # how long a principal's keys outlive its last reservation
MAX_OWED = 10_000
"""Settlements kept for Redis while it is down; past them the oldest are dropped (and counted in a log line)."""

# The minute's spends as a flat list {time, tokens, time, tokens, ...} (strings: exact doubles), from
# ``since`` (a score) up to ``upto`` (a score, "(" before it for exclusive; by default +inf).
_READ_MINUTE = """
local function read_minute(times, spends, since, upto)
  local found = redis.call('ZRANGEBYSCORE', times, since, upto or '+inf', 'WITHSCORES')
  local result, ids = {}, {}
  for i = 1, #found, 2 do ids[#ids + 1] = found[i] end
  local records = {}
  for first = 1, #ids, 1000 do  -- in slices: unpack() has a limit on how many values it spreads
    local slice = redis.call('HMGET', spends, unpack(ids, first, math.min(first + 999, #ids)))
    for i = 1, #slice do records[first + i - 1] = slice[i] end
  end
  for i = 1, #ids do
    local record = records[i] or '0 0'
    result[#result + 1] = found[2 * i]
    result[#result + 1] = string.sub(record, 1, string.find(record, ' ') - 1)
  end
  return result
end

local function sum_tokens(minute)
  local tokens = 0
  for i = 2, #minute, 2 do tokens = tokens + tonumber(minute[i]) end
  return tokens
end
"""

# KEYS: times, spends, day.  ARGV: id, now, tokens, nanos, minute start, forget before, check limits
# (1/0), requests per minute, tokens per minute, USD per day ('' = none), seconds to keep the keys.
# Returns {1} (counted) or {0, nanos spent today, time, tokens, time, tokens, ...} (refused).
_RESERVE = LuaScript(
    _READ_MINUTE
    + """
local times, spends, day = KEYS[1], KEYS[2], KEYS[3]
local id, since = ARGV[1], ARGV[5]
if redis.call('HEXISTS', spends, id) == 1 then return {1} end  -- a retry of a reserve that landed
-- the running totals of the reservations at or after =since (module docstring)
local kept = redis.call('HMGET', spends, '=since', '=requests', '=tokens', '=members')
local members = redis.call('ZCARD', times)
local start, requests, tokens = kept[1], tonumber(kept[2]), tonumber(kept[3])
if not start or not requests or not tokens or tonumber(kept[4]) ~= members then
  local minute = read_minute(times, spends, since)  -- none kept, or not of this set: count afresh
  start, requests, tokens = since, #minute / 2, sum_tokens(minute)
elseif tonumber(since) > tonumber(start) then  -- the minute moved on: subtract what left it
  local left = read_minute(times, spends, start, '(' .. since)
  start, requests, tokens = since, requests - #left / 2, tokens - sum_tokens(left)
end
local stale = redis.call('ZRANGEBYSCORE', times, '-inf', '(' .. ARGV[6])  -- all before =since
if #stale > 0 then
  for first = 1, #stale, 1000 do
    redis.call('HDEL', spends, unpack(stale, first, math.min(first + 999, #stale)))
  end
  redis.call('ZREMRANGEBYSCORE', times, '-inf', '(' .. ARGV[6])
  members = members - #stale
end
local function keep_totals()
  redis.call('HSET', spends, '=since', start, '=requests', string.format('%d', requests),
    '=tokens', string.format('%d', tokens), '=members', string.format('%d', members))
end
if ARGV[7] == '1' then
  local spent = redis.call('GET', day) or '0'
  local usd, rpm, tpm = tonumber(ARGV[10]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local function reached(count, sum)
    return (usd ~= nil and tonumber(spent) / 1e9 >= usd) or (rpm ~= nil and count >= rpm)
      or (tpm ~= nil and sum >= tpm)
  end
  local count, sum = requests, tokens
  if tonumber(since) < tonumber(start) then  -- this clock is behind =since: add the few in between
    local between = read_minute(times, spends, since, '(' .. start)
    count, sum = count + #between / 2, sum + sum_tokens(between)
  end
  if reached(count, sum) then  -- only a refusal reads the minute, and decides on that exact read
    local minute = read_minute(times, spends, since)
    start, requests, tokens = since, #minute / 2, sum_tokens(minute)
    if reached(requests, tokens) then
      keep_totals()
      local answer = {0, spent}
      for i = 1, #minute do answer[#answer + 1] = minute[i] end
      return answer
    end
  end
end
redis.call('ZADD', times, ARGV[2], id)
redis.call('HSET', spends, id, ARGV[3] .. ' ' .. ARGV[4])
members = members + 1
if tonumber(ARGV[2]) >= tonumber(start) then
  requests, tokens = requests + 1, tokens + tonumber(ARGV[3])
end
keep_totals()
redis.call('EXPIRE', times, ARGV[11])
redis.call('EXPIRE', spends, ARGV[11])
if ARGV[4] ~= '0' then
  redis.call('INCRBY', day, ARGV[4])
  redis.call('EXPIRE', day, ARGV[11])
end
return {1}
"""
)

# KEYS: times, spends, day of the reservation.  ARGV: id, tokens ('' = keep), nanos ('' = keep), keep.
# Replacing is idempotent: settling twice with the same figures changes nothing more.
_SETTLE = LuaScript(
    """
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return 0 end
local space = string.find(record, ' ')
local tokens, nanos = string.sub(record, 1, space - 1), string.sub(record, space + 1)
if ARGV[2] ~= '' then
  local change = tonumber(ARGV[2]) - tonumber(tokens)
  if change ~= 0 then  -- the minute's running total counts it while it is at or after =since
    local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
    local kept = redis.call('HMGET', KEYS[2], '=since', '=tokens')
    if at and kept[1] and kept[2] and tonumber(at) >= tonumber(kept[1]) then
      redis.call('HSET', KEYS[2], '=tokens', string.format('%d', tonumber(kept[2]) + change))
    end
  end
  tokens = ARGV[2]
end
if ARGV[3] ~= '' then
  local change = tonumber(ARGV[3]) - tonumber(nanos)
  if change ~= 0 then
    redis.call('INCRBY', KEYS[3], string.format('%d', change))
    redis.call('EXPIRE', KEYS[3], ARGV[4])
  end
  nanos = ARGV[3]
end
redis.call('HSET', KEYS[2], ARGV[1], tokens .. ' ' .. nanos)
return 1
"""
)

# KEYS: times, spends, day of the reservation.  ARGV: id.  Takes a reservation back (cancelled caller).
_UNCOUNT = LuaScript(
    """
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return 0 end
local space = string.find(record, ' ')
local tokens, nanos = tonumber(string.sub(record, 1, space - 1)), tonumber(string.sub(record, space + 1))
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then  -- and out of the running totals (module docstring)
  local kept = redis.call('HMGET', KEYS[2], '=since', '=requests', '=tokens', '=members')
  if kept[1] and kept[2] and kept[3] and kept[4] then
    local requests, sum = tonumber(kept[2]), tonumber(kept[3])
    if tonumber(at) >= tonumber(kept[1]) then requests, sum = requests - 1, sum - tokens end
    redis.call('HSET', KEYS[2], '=requests', string.format('%d', requests), '=tokens', string.format('%d', sum),
      '=members', string.format('%d', tonumber(kept[4]) - 1))
  end
end
if nanos ~= 0 then redis.call('INCRBY', KEYS[3], string.format('%d', -nanos)) end
return 1
"""
)

# KEYS: times, spends, day.  ARGV: minute start.  Returns {nanos spent today, time, tokens, ...}.
_USAGE = LuaScript(
    _READ_MINUTE
    + """
local answer = {redis.call('GET', KEYS[3]) or '0'}
local minute = read_minute(KEYS[1], KEYS[2], ARGV[1])
for i = 1, #minute do answer[#answer + 1] = minute[i] end
return answer
"""
)


def _nanos(cost: float) -> int:
    return round(float(cost) * NANOS)


def _spends(flat: list[Any]) -> list[Spend]:
    """``[time, tokens, time, tokens, ...]`` as the scripts return them (bytes) -> ``Spend``s."""
    return [Spend(float(flat[i]), int(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def local_limits(limits: Limits, replicas: int) -> Limits:
    """``limits`` for one of ``replicas`` replicas counting alone while Redis is down.

    Requests and tokens per minute are divided and rounded down — the replicas together never admit
    more than the limit — but never below 1, so a replica can still serve (with 3 replicas a limit
    of 10 is 3 each, a limit of 2 is 1 each: then up to 3 together). A limit of 0 stays 0 (it
    blocks). Dollars per day are divided exactly."""
    if replicas <= 1 or not limits.any:
        return limits

    def share(limit: int | None) -> int | None:
        if limit is None or limit <= 0:
            return limit
        return max(1, int(limit) // replicas)

    usd = limits.usd_per_day
    return Limits(
        requests_per_minute=share(limits.requests_per_minute),
        tokens_per_minute=share(limits.tokens_per_minute),
        usd_per_day=None if usd is None else usd / replicas,
    )


class RedisBudgetCounter:
    """A ``BudgetCounter`` in Redis, exact across the replicas that share the server (module docstring).

    ``url`` is a ``redis://`` or ``rediss://`` URL (``engine.stores.urls``). Times are the ``now``
    callers pass: wall-clock unix seconds, which replicas share. ``degraded_reason`` is ``None``
    while Redis answers, else why limits are counted locally (for ``/readyz``)."""

    def __init__(self, url: str) -> None:
        self.redis = RedisConnector(url, what="[budgets] backend")
        self.outage = RedisOutage(
            self.redis,
            store="budgets",
            meanwhile=self._meanwhile,
            back="limits are counted in Redis again",
            on_recovered=self._pay_owed,
        )
        self.replicas = ReplicaRegistry(self.redis, outage=self.outage)
        self.local = MemoryBudgetCounter()
        """Where requests are counted while Redis is down (each limit divided: ``local_limits``)."""
        self._owed: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()
        self._dropped = 0  # settlements dropped from a full ``_owed`` during this outage
        self._background: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"RedisBudgetCounter({self.redis.shown!r})"

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and that limits are counted locally."""
        return self.outage.degraded_reason

    @property
    def owed(self) -> int:
        """Settlements of Redis reservations waiting for Redis to answer again."""
        return len(self._owed)

    def _meanwhile(self) -> str:
        count = self.replicas.count
        divided = "as configured (no other replica was seen)" if count <= 1 else f"divided by {count} live replicas"
        return f"budgets are counted by this replica alone, each limit {divided}"

    def _keys(self, principal: str, at: float) -> list[str]:
        base = f"{self.redis.prefix}budget:{{{key_part(principal)}}}"
        return [f"{base}:times", f"{base}:spends", f"{base}:day:{int(utc_day_start(at))}"]

    async def reserve(
        self,
        principal: str,
        limits: Limits,
        *,
        now: float,
        tokens: int = 0,
        cost: float = 0.0,
        session_id: str | None = None,
    ) -> Reservation:
        """Check and count one request in one script; raise the refusal, which counts nothing.

        A principal without limits is counted too: other replicas, or a later configuration, may
        enforce some. ``session_id`` is not needed: Redis counts no ledger rows. While Redis is down,
        the local counter decides, on ``local_limits``."""
        self.replicas.keep_beating()
        if self.outage.usable():
            with contextlib.suppress(RedisUnavailableError):  # the outage noted it: count locally
                return await self._reserve_in_redis(principal, limits, now=now, tokens=int(tokens), cost=float(cost))
        shared = local_limits(limits, self.replicas.count)
        return await self.local.reserve(principal, shared, now=now, tokens=tokens, cost=cost)

    async def _reserve_in_redis(
        self, principal: str, limits: Limits, *, now: float, tokens: int, cost: float
    ) -> Reservation:
        reservation = Reservation(uuid.uuid4().hex, principal, tokens, cost, now)
        keys = self._keys(principal, now)

        def optional(limit: float | None) -> str:
            return "" if limit is None else repr(limit)

        args = [
            reservation.id,
            repr(float(now)),
            str(tokens),
            str(_nanos(cost)),
            repr(now - WINDOW),  # the very double refusal() compares with
            repr(horizon(now) - DAY),  # a day of slack for clocks of other replicas
            "1" if limits.any else "0",
            optional(limits.requests_per_minute),
            optional(limits.tokens_per_minute),
            optional(limits.usd_per_day),
            str(KEEP_SECONDS),
        ]
        attempt = asyncio.ensure_future(self.outage.call("reserving", lambda client: _RESERVE(client, keys, args)))
        try:
            outcome = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._uncount(done, reservation, keys))
            raise
        if int(outcome[0]) == 1:
            return reservation
        refused = refusal(principal, limits, now=now, minute=_spends(outcome[2:]), spent_today=int(outcome[1]) / NANOS)
        if refused is None:  # cannot happen: the script decides as refusal() does, on the same numbers
            raise StoreError(f"Redis at {self.redis.shown} refused a request that the limits allow")
        raise refused

    async def settle(
        self, reservation: Reservation, *, tokens: int | None, cost: float | None, now: float | None = None
    ) -> None:
        """Replace the estimate with the actual figures (``None``: keep the estimate); an unknown
        reservation (another counter's, or one forgotten after two days) changes nothing. A local
        reservation is settled locally; a Redis one while Redis is down is owed (module docstring)."""
        if isinstance(reservation.id, int):  # the memory counter's id: made while Redis was down
            await self.local.settle(reservation, tokens=tokens, cost=cost, now=now)
            return
        if tokens is None and cost is None:
            return
        keys = self._keys(reservation.principal, reservation.time)
        args = [
            str(reservation.id),
            "" if tokens is None else str(int(tokens)),
            "" if cost is None else str(_nanos(cost)),
            str(KEEP_SECONDS),
        ]
        if not self.outage.usable():
            self._owe(reservation.id, keys, args)
            return
        write = asyncio.ensure_future(self.outage.call("settling", lambda client: _SETTLE(client, keys, args)))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:  # as the SQLite counter: a cancelled caller's settle still lands
            await asyncio.wait({write})
            if not write.cancelled() and isinstance(write.exception(), RedisUnavailableError):
                self._owe(reservation.id, keys, args)
            raise
        except RedisUnavailableError:
            self._owe(reservation.id, keys, args)

    async def usage(self, principal: str, *, now: float) -> dict[str, float]:
        """``requests_last_minute``, ``tokens_last_minute`` and ``usd_today`` of ``principal`` (while
        Redis is down, what this replica counted locally)."""
        self.replicas.keep_beating()
        if self.outage.usable():
            keys = self._keys(principal, now)
            with contextlib.suppress(RedisUnavailableError):
                found = await self.outage.call(
                    "reading usage", lambda client: _USAGE(client, keys, [repr(now - WINDOW)])
                )
                return usage_report(now=now, minute=_spends(found[1:]), spent_today=int(found[0]) / NANOS)
        return await self.local.usage(principal, now=now)

    async def aclose(self) -> None:
        await self.replicas.aclose()
        await self.outage.aclose()
        if self._background:  # take-backs and owed settlements under way: let them land before the pool closes
            await asyncio.wait(set(self._background))
        if self._owed:
            log.warning("budgets: %d settlements could not be sent to Redis at %s", len(self._owed), self.redis.shown)
        await self.redis.aclose()

    def close(self) -> None:
        """Close without a loop."""
        self.redis.close()

    def _owe(self, reservation_id: str, keys: list[str], args: list[str]) -> None:
        """Keep a settlement Redis could not take, to send when it answers (the newest figures win)."""
        self._owed.pop(reservation_id, None)
        self._owed[reservation_id] = (keys, args)
        while len(self._owed) > MAX_OWED:
            self._owed.popitem(last=False)
            self._dropped += 1

    def _pay_owed(self) -> None:
        """Redis answers again: send the owed settlements in the background (``on_recovered``)."""
        if self._dropped:
            log.warning(
                "budgets: %d settlements were dropped while Redis was down (over %d kept)", self._dropped, MAX_OWED
            )
            self._dropped = 0
        if not self._owed:
            return
        task = asyncio.get_running_loop().create_task(self._send_owed())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_owed(self) -> None:
        sent = 0
        while self._owed:
            reservation_id, (keys, args) = next(iter(self._owed.items()))
            try:
                await self.outage.call("settling", lambda client, keys=keys, args=args: _SETTLE(client, keys, args))
            except StoreError:
                return  # down again (noted) or closed: the rest wait for the next recovery
            if self._owed.get(reservation_id) == (keys, args):  # unless a newer settlement replaced it meanwhile
                del self._owed[reservation_id]
            sent += 1
        log.info("budgets: %d settlements made while Redis was down were sent to it", sent)

    def _uncount(self, attempt: asyncio.Future[Any], reservation: Reservation, keys: list[str]) -> None:
        """The reserve of a cancelled caller landed: take it back (the request will not be sent)."""
        if attempt.cancelled() or attempt.exception() is not None or int(attempt.result()[0]) != 1:
            return
        undo = asyncio.ensure_future(
            self.redis.run("taking back a reservation", lambda client: _UNCOUNT(client, keys, [reservation.id]))
        )
        self._background.add(undo)
        undo.add_done_callback(self._background.discard)
        undo.add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not take back a cancelled reservation: %s", future.exception())
