"""``RedisBudgetCounter``: per-principal budgets that every gateway replica shares, exact across them.

Per principal (its name percent-encoded inside a ``{…}`` hash tag, so a Redis Cluster keeps its
keys in one slot), under the URL's key prefix (``gtl:`` by default)::

    gtl:budget:{ann}:times      sorted set   reservation id -> reservation time (unix seconds)
    gtl:budget:{ann}:spends     hash         reservation id -> "<tokens> <nano-USD>", and the minute's
                                             running totals: =since, =requests, =tokens, =members
    gtl:budget:{ann}:day:<d>    string       nano-USD counted for the UTC day starting at <d>
    gtl:budget:{ann}:handed:<h> string       the mark of a hand-over (below), for an hour
    gtl:budget:{ann}:void       sorted set   reservation id -> time, of reservations taken back before
                                             they landed (below)
    gtl:budget:{ann}:rebuilt:<d> string      "1": the windows of the UTC day <d> were rebuilt from the
                                             ledger (below), for two days

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

**A Redis that forgot** (restarted without persistence, ``FLUSHDB``, a failover to an empty replica)
would admit a principal as if it had spent nothing. With a ledger (``ledger``, the one the replicas
share) the reserve script first looks for the principal's ``rebuilt`` mark of the day and the day's
total — one ``EXISTS`` in the script, no round trip of its own — and, without either, counts nothing
and answers so (a total gone while its mark stayed was evicted).
The replica then reads the principal's last minute and day from the ledger (``budget_ledger``; one
read per principal and day at a time, which the reserves that also need it wait for) and
``_REBUILD`` writes them, once (it does nothing when it finds the mark and the total there: another
replica rebuilt, and both are written in the one script): the day's total becomes the larger of Redis's
and the ledger's, and the minute gets the oldest of the ledger's requests it lacks by count (as
reservations ``ledger:<row id>``, so the same row is never added twice). Never the sum: what Redis
still holds (keys of an earlier version without marks, an evicted mark, what a replica handed over
after an outage) is not counted twice, and replicas rebuilding at once write once. Then the reserve
runs again, asking for no rebuild. Nothing is reserved in Redis between the loss and the rebuild
(the reserves wait for it), so the ledger, which has every request up to then, is the whole day.
The mark is missing too at a principal's first request of each UTC day: one small read then.
``usage`` rebuilds as a reserve does. Not rebuilt: the cost of requests in flight at the loss (their
rows have none yet, their settlement finds no reservation), rows not yet written to the ledger (a
PostgreSQL writer's few milliseconds, a spool), and, when an outage and an empty restart come
together, what a replica counted locally and hands over after another one rebuilt is counted twice
(a refusal sooner). A ledger read that fails or takes over ``REBUILD_TIMEOUT`` is not tried again
for ``LEDGER_RETRY`` seconds, nor while the ledger reports a problem (``degraded_reason``: a
PostgreSQL ledger spooling its rows would answer without them): requests are counted in Redis
meanwhile, and the rebuild that follows takes the larger figures, so they are not lost either.
What eviction can still hide: the minute's keys alone, and a day's total that a settlement (an
``INCRBY``) writes again before the next reserve looks.

**A reserve whose reply never came** (Redis frozen past ``REPLY_TIMEOUT``, a connection cut after the
script was sent) may still run later — after this replica counted the request locally instead. So
it is taken back, owed like a settlement (below) and sent once Redis answers again (at once, should
another call have found it answering meanwhile): the take-back
(``_UNCOUNT``) removes a reservation that landed, and of one that has not landed yet it leaves a
tombstone in ``void``, which the reserve, when it does run, finds and counts nothing. Either order
leaves the request counted once — locally, then handed over. Tombstones leave with the day's slack.

When Redis cannot be used (``redis_fallback``), requests are not refused for it: ``reserve``,
``settle``, ``release`` and ``usage`` go to a ``MemoryBudgetCounter`` of this process, with every limit divided
by the number of live replicas last seen (``replicas``; ``local_limits`` says how it rounds), one
warning logged when that starts and one when Redis answers again; from then on new
requests are counted in Redis again. A reservation made locally is settled locally (its id is the
memory counter's integer, a Redis one is a hex string); what the local counter counted is added to
Redis when it answers again (below). The settlement (or take-back: ``release``) of
a reservation made in Redis that cannot reach it is kept (up to ``MAX_OWED``, in memory) and sent
when Redis answers again — settling is idempotent — so the day's spend in Redis is not left at the
estimate.

**What a principal already used counts locally too.** Every reserve that Redis answers also returns
the principal's usage as the check saw it — requests and tokens of its minute, this one included,
and the nano-dollars of its UTC day — and the replica remembers the last of it per principal with
limits (``MAX_SEEN`` principals, least recently reserved forgotten first). At a principal's first
local reserve of an outage, its local counter starts from this replica's share of that usage
(``local_seed``): each amount divided by the live replicas ``n``, rounded up, counted in the minute
after the moment Redis reported it (as if reserved then: it leaves the window 60 s later) and in
that UTC day. The local limit is ``local_limits``' share ``S`` (``L // n`` but at least 1 for
requests and tokens, ``L / n`` for dollars).

**The bound.** Take a principal, a limit ``L`` and a window ``W`` — any 60 s for requests and
tokens per minute, the UTC day for dollars — during which ``n`` replicas are live, each dividing by
``n``. Let ``D_i`` be what Redis counted in ``W`` after replica ``i`` last heard the principal's
usage from it, before ``i`` counted locally — all that Redis counted in ``W``, if it heard nothing
of ``W`` (it never served the principal then, or forgot it). Then the requests the replicas admit in
``W``, in Redis and locally together, number at most::

    max(L, n) + (D_1 + ... + D_n) / n

(``n * S <= L`` unless ``L < n``, when each replica still admits 1.) Tokens and dollars have the
usual overshoot on top (``ratelimit``): per replica, the estimate of the last request it admitted
locally, and the underestimates in flight. So when every replica's last word from Redis was current
— the principal's requests spread over the replicas, as a load balancer does — the cluster stays
within the limit; each replica whose word was behind adds ``1/n`` of what Redis counted after it:
at most one local share while Redis counted at most the limit. The worst case is a principal served by
one replica before the outage and by all ``n`` during it: ``L + (n - 1) * L / n``. No rule can do
better without refusing principals a replica has never seen: to it, a principal that spent its
budget through another replica looks exactly like one that spent nothing. (The proof: each replica
admits locally at most ``S`` minus its seed, its seed is at least ``1/n`` of what Redis counted in
``W`` before its last word, and ``n * S <= max(L, n)``.) ``n`` is each replica's count at the last
beat: a replica joins within about a second of its store being on a loop (``replicas``), so a
replica started in the last second, or one that started while Redis was down (it applies the whole
limit), is not counted yet; a replica that died is counted for 15 s more, which only makes shares
smaller.

**When Redis answers again**, the seeds go and what each replica counted locally is added to Redis
(``_ADD_LOCAL``): per principal, its local reservations of the last minute (as reservations of their
own, at their times, with their tokens) and the nano-dollars it counted locally that UTC day —
before the principal's next request on that replica is counted in Redis, and for every other
principal in the background — once (each hand-over leaves a mark for an hour: a script redis-py
sends again does nothing twice). From then on Redis refuses as if it had counted those requests
itself, so the bound holds for windows that run past the outage too, and across any number of
outages — but replicas see Redis answer at different moments (each probes on its own: every second,
less often after relapses), and until one has handed over, Redis may admit up to what that one
counted locally more than it will a moment later. A principal's local usage then leaves the memory
counter (a later ``settle`` of a local reservation changes nothing: its estimate stays counted);
what could not be handed over (Redis failed again) stays, counts at the next outage, and is handed
over at the next return. The memory counter forgets idle principals on its own
(``MemoryBudgetCounter``), so an outage leaves nothing behind for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from gtl_nb.engine.ratelimit import DAY, WINDOW, Limits, Spend, horizon, refusal, usage_report, utc_day_start
from gtl_nb.engine.stores.base import Reservation, UsageLedger
from gtl_nb.engine.stores.budget_ledger import ledger_usage
from gtl_nb.engine.stores.memory import MemoryBudgetCounter
from gtl_nb.engine.stores.redis_client import (
    LuaScript,
    RedisConnector,
    RedisUnavailableError,
    RedisUnreachableError,
    key_part,
)
from gtl_nb.engine.stores.redis_fallback import RedisOutage
from gtl_nb.engine.stores.replicas import ReplicaRegistry
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.ids import random_hex
from gtl_nb.log import get_logger
from gtl_nb.words import dollars

__all__ = [
    "LEDGER_RETRY",
    "MAX_OWED",
    "MAX_SEEN",
    "REBUILD_TIMEOUT",
    "RedisBudgetCounter",
    "local_limits",
    "local_seed",
]

log = get_logger("engine.stores")

NANOS = 1_000_000_000  # nano-dollars per dollar
KEEP_SECONDS = int(2 * DAY + 2 * WINDOW)  # how long a principal's keys outlive its last reservation
MAX_OWED = 10_000
"""Settlements and take-backs kept for Redis while it is down; past them the oldest settlement is dropped
(a take-back only when nothing else is left: losing one counts a request twice), counted in a log line."""
REBUILD_TIMEOUT = 5.0
"""Seconds a rebuild waits for the ledger (the reserves that need it wait as long) before counting without it."""
LEDGER_RETRY = 10.0
"""Seconds after a failed ledger read during which reserves count without asking for a rebuild."""
MAX_SEEN = 4096
"""Principals whose last usage Redis reported is remembered (the least recently reserved are forgotten first)."""

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

# KEYS: times, spends, day, void, the day's rebuilt mark.  ARGV: id, now, tokens, nanos, minute start,
# forget before, check limits (1/0), requests per minute, tokens per minute, USD per day ('' = none),
# seconds to keep the keys, ask for a rebuild when the mark or the day's total is missing (1/0).
# Returns {1, requests, tokens, nanos spent today} (counted: the minute's totals with this one, as the
# check saw them — without a check, the running totals), {1} (a retry of a reserve that landed), {2}
# (taken back before it landed: its caller has long given up on it), {3} (the mark
# or the day's total is missing: nothing counted, rebuild the windows from the ledger first) or
# {0, nanos spent today, time, tokens, time, tokens, ...} (refused).
_RESERVE = LuaScript(
    _READ_MINUTE
    + """
local times, spends, day, void = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, since = ARGV[1], ARGV[5]
if redis.call('HEXISTS', spends, id) == 1 then return {1} end  -- a retry of a reserve that landed
if redis.call('ZSCORE', void, id) then return {2} end  -- its reply was lost and it was taken back: count nothing
if ARGV[12] == '1' and redis.call('EXISTS', KEYS[5], day) < 2 then return {3} end  -- not rebuilt, or lost since
redis.call('ZREMRANGEBYSCORE', void, '-inf', '(' .. ARGV[6])  -- tombstones leave with the day's slack
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
local count, sum = requests, tokens  -- this reserve's minute, before it (what the replica remembers)
if ARGV[7] == '1' then
  local spent = redis.call('GET', day) or '0'
  local usd, rpm, tpm = tonumber(ARGV[10]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local function reached(count, sum)
    return (usd ~= nil and tonumber(spent) / 1e9 >= usd) or (rpm ~= nil and count >= rpm)
      or (tpm ~= nil and sum >= tpm)
  end
  if tonumber(since) < tonumber(start) then  -- this clock is behind =since: add the few in between
    local between = read_minute(times, spends, since, '(' .. start)
    count, sum = count + #between / 2, sum + sum_tokens(between)
  end
  if reached(count, sum) then  -- only a refusal reads the minute, and decides on that exact read
    local minute = read_minute(times, spends, since)
    start, requests, tokens = since, #minute / 2, sum_tokens(minute)
    count, sum = requests, tokens
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
local today
if ARGV[4] ~= '0' then
  today = redis.call('INCRBY', day, ARGV[4])
  redis.call('EXPIRE', day, ARGV[11])
else
  today = redis.call('GET', day) or '0'
end
return {1, count + 1, sum + tonumber(ARGV[3]), today}
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

# KEYS: times, spends, day, void of the reservation.  ARGV: id, its time, seconds to keep the keys.
# Takes a reservation back (a cancelled caller, a request never sent, a reserve whose reply was lost);
# one that has not landed is marked void, so that it counts nothing if it lands later.
_UNCOUNT = LuaScript(
    """
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[3])
  return 0
end
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

# KEYS: times, spends, day, the hand-over's mark.  ARGV: seconds to keep the keys, nanos counted
# locally that day, then id, time, tokens of each reservation counted locally in the last minute.  Adds
# them (no nanos of their own: the day's are added whole), once per mark (kept an hour: a reply lost and
# the script sent again): returns 1, or 0 when it had been.
_ADD_LOCAL = LuaScript(
    """
local times, spends, day = KEYS[1], KEYS[2], KEYS[3]
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', 3600) then return 0 end
local kept = redis.call('HMGET', spends, '=since', '=requests', '=tokens', '=members')
local members = redis.call('ZCARD', times)
local totals = kept[1] and kept[2] and kept[3] and tonumber(kept[4]) == members
local requests, tokens = tonumber(kept[2]), tonumber(kept[3])
for i = 3, #ARGV - 2, 3 do
  local id, at, used = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZADD', times, at, id) == 1 then
    members = members + 1
    if totals and tonumber(at) >= tonumber(kept[1]) then  -- in the running totals' minute
      requests, tokens = requests + 1, tokens + tonumber(used)
    end
  end
  redis.call('HSET', spends, id, used .. ' 0')
end
if totals then
  redis.call('HSET', spends, '=requests', string.format('%d', requests), '=tokens', string.format('%d', tokens),
    '=members', string.format('%d', members))
end
redis.call('EXPIRE', times, ARGV[1])
redis.call('EXPIRE', spends, ARGV[1])
if ARGV[2] ~= '0' then
  redis.call('INCRBY', day, ARGV[2])
  redis.call('EXPIRE', day, ARGV[1])
end
return 1
"""
)

# KEYS: times, spends, day, the day's rebuilt mark.  ARGV: seconds to keep the keys, nanos the ledger
# has for the day, minute start, then id, time, tokens of each request the ledger has in the last minute
# (oldest first).  Once per mark and day's total (returns 0 when both are there: another replica rebuilt;
# the total alone missing is a total Redis evicted, the mark alone one it has not rebuilt yet): the
# day's total becomes the larger of its own and the ledger's, and the minute gets the oldest of the
# ledger's requests it lacks by count — never the sum, so nothing Redis still holds is counted twice.
# Returns 2 when that changed anything (Redis had lost some), else 1.
_REBUILD = LuaScript(
    """
local times, spends, day = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', KEYS[4], day) == 2 then return 0 end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[1])
local had = redis.call('GET', day)
local raised = tonumber(ARGV[2]) > tonumber(had or '0')
if raised or not had then redis.call('SET', day, raised and ARGV[2] or had or '0', 'EX', ARGV[1]) end
local lacking = (#ARGV - 3) / 3 - redis.call('ZCOUNT', times, ARGV[3], '+inf')
for i = 4, 3 + 3 * lacking, 3 do  -- (the running totals' =members no longer match: the next reserve recounts)
  if redis.call('ZADD', times, ARGV[i + 1], ARGV[i]) == 1 then
    redis.call('HSET', spends, ARGV[i], ARGV[i + 2] .. ' 0')  -- no nanos of its own: the day's are set whole
  end
end
if lacking > 0 then
  redis.call('EXPIRE', times, ARGV[1])
  redis.call('EXPIRE', spends, ARGV[1])
  return 2
end
return raised and 2 or 1
"""
)

# KEYS: times, spends, day, void, the day's rebuilt mark.  ARGV: minute start, ask for a rebuild when
# the mark or the day's total is missing (1/0).  Returns {nanos spent today, time, tokens, ...}, or {}
# (rebuild first).
_USAGE = LuaScript(
    _READ_MINUTE
    + """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[5], KEYS[3]) < 2 then return {} end
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


def _share(amount: int, replicas: int) -> int:
    """``amount / replicas`` rounded up."""
    return -(-int(amount) // max(1, replicas))


def local_seed(seen: tuple[float, int, int, int], replicas: int) -> tuple[float, int, int, int]:
    """What a replica's local counter starts at for a principal, from ``seen`` — ``(time, requests,
    tokens, nano-USD)``: what Redis last reported to this replica for the principal's minute up to
    ``time`` and for that UTC day — with ``replicas`` live: each amount divided, rounded up (module
    docstring)."""
    at, requests, tokens, spent = seen
    return at, _share(requests, replicas), _share(tokens, replicas), _share(spent, replicas)


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
    while Redis answers, else why limits are counted locally (for ``/readyz``). ``ledger`` is the usage
    ledger the replicas share, from which a principal's windows Redis lost are rebuilt (``None``: they
    are not; module docstring)."""

    def __init__(self, url: str, *, ledger: UsageLedger | None = None) -> None:
        self.redis = RedisConnector(url, what="[budgets] backend")
        self.ledger = ledger
        """Where a principal's windows are rebuilt from when Redis has lost them (``None``: they are not)."""
        self._rebuilding: dict[tuple[str, float], asyncio.Future[None]] = {}  # (principal, day) -> its rebuild
        self._ledger_retry_at = 0.0  # (monotonic) no rebuild is asked for before then: the ledger failed
        self._rebuilt_warned = -60.0  # (monotonic) the last rebuild that found Redis had lost something
        self.outage = RedisOutage(
            self.redis,
            store="budgets",
            meanwhile=self._meanwhile,
            back="limits are counted in Redis again",
            on_recovered=self._recovered,
        )
        self.replicas = ReplicaRegistry(self.redis, outage=self.outage)
        self.local = MemoryBudgetCounter()
        """Where requests are counted while Redis is down (each limit divided: ``local_limits``)."""
        self._seen: OrderedDict[str, tuple[float, int, int, int]] = OrderedDict()
        """Principal -> what Redis last reported of its usage (``local_seed``), the most recent last."""
        self._seeded: set[str] = set()  # principals whose local counter started from ``_seen`` in this outage
        self._unsent: set[str] = set()  # principals whose local usage is still to be added to Redis
        self._sending: dict[str, asyncio.Future[None]] = {}  # principal -> its hand-over under way
        self._owed: OrderedDict[str, tuple[LuaScript, list[str], list[str]]] = OrderedDict()
        self._dropped = 0  # settlements dropped from a full ``_owed`` during this outage
        self._paying: asyncio.Task[None] | None = None  # the task sending what is owed, while it runs
        self._background: set[asyncio.Future[Any]] = set()
        with contextlib.suppress(RuntimeError):  # opened on a running loop: among the live replicas at once
            self.join_replicas()

    def __repr__(self) -> str:
        return f"RedisBudgetCounter({self.redis.shown!r})"

    def join_replicas(self) -> None:
        """Start this replica's heartbeat on the running loop (``RuntimeError`` without one), so the
        others count it from now on, before it serves a request (module docstring). Opening the store on
        a running loop does it, and so does every call: ``reserve``, ``usage``, ``degraded_reason``."""
        asyncio.get_running_loop()
        self.replicas.keep_beating()

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and that limits are counted locally.

        Read on a running loop (``/readyz``, which a load balancer asks before it sends traffic), it
        starts the heartbeat too (``join_replicas``)."""
        with contextlib.suppress(RuntimeError):
            self.join_replicas()
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
        """The principal's keys the scripts take: times, spends, the day of ``at``, void (module docstring)."""
        base = f"{self.redis.prefix}budget:{{{key_part(principal)}}}"
        return [f"{base}:times", f"{base}:spends", f"{base}:day:{int(utc_day_start(at))}", f"{base}:void"]

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
            if now >= self.local.tidy_at:  # what an outage left that could not be handed over, once idle
                self.local.tidy(now)
            with contextlib.suppress(RedisUnavailableError):  # the outage noted it: count locally
                if self._unsent and principal in self._unsent:  # what it used locally first
                    await self._hand_over(principal)
                return await self._reserve_in_redis(principal, limits, now=now, tokens=int(tokens), cost=float(cost))
        replicas = self.replicas.count
        shared = local_limits(limits, replicas)
        if shared.any and principal not in self._seeded:  # its first local reserve of this outage
            self._seeded.add(principal)
            seen = self._seen.get(principal)
            if seen is not None:
                at, requests, spent_tokens, spent = local_seed(seen, replicas)
                self.local.seed(principal, at=at, requests=requests, tokens=spent_tokens, cost=spent / NANOS)
        return await self.local.reserve(principal, shared, now=now, tokens=tokens, cost=cost)

    async def _reserve_in_redis(
        self, principal: str, limits: Limits, *, now: float, tokens: int, cost: float
    ) -> Reservation:
        reservation = Reservation(random_hex(2), principal, tokens, cost, now)
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
            "1" if self._may_rebuild() else "0",
        ]
        mark = [*keys, self._rebuilt_mark(principal, now)]
        outcome = await self._run_reserve(reservation, mark, args)
        if int(outcome[0]) == 3:  # Redis has no windows of this principal's day: rebuild them, count once
            await self._rebuild(principal, now)
            args[-1] = "0"  # (rebuilt, or the ledger failed: counted either way, never asked twice)
            outcome = await self._run_reserve(reservation, mark, args)
        if int(outcome[0]) == 2:  # (only a reserve whose caller gave up is taken back: never this one)
            raise StoreError(f"Redis at {self.redis.shown} found reservation {reservation.id} already taken back")
        if int(outcome[0]) == 1:
            if len(outcome) == 4 and limits.any:
                self._remember(principal, (now, int(outcome[1]), int(outcome[2]), int(outcome[3])))
            return reservation
        minute = _spends(outcome[2:])
        if limits.any:
            self._remember(principal, (now, len(minute), sum(spend.tokens for spend in minute), int(outcome[1])))
        refused = refusal(principal, limits, now=now, minute=minute, spent_today=int(outcome[1]) / NANOS)
        if refused is None:  # cannot happen: the script decides as refusal() does, on the same numbers
            raise StoreError(f"Redis at {self.redis.shown} refused a request that the limits allow")
        raise refused

    async def _run_reserve(self, reservation: Reservation, keys: list[str], args: list[str]) -> Any:
        """``_RESERVE``'s outcome; a cancelled caller's reserve is taken back once it lands, one whose reply
        was lost is owed a take-back (module docstring)."""
        attempt = asyncio.ensure_future(self.outage.call("reserving", lambda client: _RESERVE(client, keys, args)))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._uncount(done, reservation, keys))
            raise
        except RedisUnreachableError:  # counted locally instead: should the script run still, it counts nothing
            self._owe_take_back(reservation, keys)
            raise

    def _rebuilt_mark(self, principal: str, at: float) -> str:
        """The key whose presence says ``principal``'s windows of the UTC day of ``at`` were rebuilt."""
        return f"{self.redis.prefix}budget:{{{key_part(principal)}}}:rebuilt:{int(utc_day_start(at))}"

    def _may_rebuild(self) -> bool:
        """Whether a reserve should ask for a rebuild: a ledger to read, not failing lately, and not
        reporting a problem itself (a PostgreSQL ledger spooling its rows: it would answer without them)."""
        if self.ledger is None or time.monotonic() < self._ledger_retry_at:
            return False
        return getattr(self.ledger, "degraded_reason", None) is None

    def _rebuild(self, principal: str, now: float) -> Awaitable[None]:
        """Rebuild ``principal``'s windows at ``now`` from the ledger (``_REBUILD``): one read at a time
        per principal and day on this replica, which the reserves that also found them missing wait for."""
        key = (principal, utc_day_start(now))
        rebuilding = self._rebuilding.get(key)
        if rebuilding is None:
            rebuilding = self._rebuilding[key] = self._in_background(self._rebuild_now(principal, now))
            rebuilding.add_done_callback(lambda done: self._rebuilding.pop(key, None))
            rebuilding.add_done_callback(_retrieved)
        return asyncio.shield(rebuilding)

    async def _rebuild_now(self, principal: str, now: float) -> None:
        """Read the ledger and write what it says in one script. A ledger that fails or is slow
        (``REBUILD_TIMEOUT``) is not asked again for ``LEDGER_RETRY`` seconds: requests are counted in
        Redis meanwhile, and the next rebuild takes the larger of those counts and the ledger's."""
        assert self.ledger is not None
        try:
            found = await asyncio.wait_for(ledger_usage(self.ledger, principal, now=now), REBUILD_TIMEOUT)
        except Exception as exc:
            self._ledger_retry_at = time.monotonic() + LEDGER_RETRY
            log.warning(
                "budgets: could not read the ledger to rebuild what Redis at %s lost (%s); counting without it "
                "for %g s",
                self.redis.shown,
                _reason(exc),
                LEDGER_RETRY,
            )
            return
        args = [str(KEEP_SECONDS), str(_nanos(found.usd_today)), repr(now - WINDOW)]
        for row_id, at, tokens in found.minute:
            args += [f"ledger:{row_id}", repr(at), str(tokens)]
        keys = [*self._keys(principal, now)[:3], self._rebuilt_mark(principal, now)]
        written = await self.outage.call("rebuilding from the ledger", lambda client: _REBUILD(client, keys, args))
        if int(written) == 2:  # (not at a principal's first request of a day, when Redis had lost nothing)
            warned, self._rebuilt_warned = self._rebuilt_warned, time.monotonic()
            log.log(
                logging.WARNING if self._rebuilt_warned - warned >= 60 else logging.INFO,  # one warning per loss
                "budgets: Redis at %s had lost the usage of %r: rebuilt from the ledger "
                "(%d requests this minute, %s today)",
                self.redis.shown,
                principal,
                len(found.minute),
                dollars(found.usd_today),
            )

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
        await self._write_or_owe("settling", _SETTLE, reservation.id, keys, args)

    async def release(self, reservation: Reservation) -> None:
        """Take the reservation back whole (``_UNCOUNT``): its request was never sent. A local
        reservation is released locally; a Redis one while Redis is down is owed, as a settlement is."""
        if isinstance(reservation.id, int):  # the memory counter's id: made while Redis was down
            await self.local.release(reservation)
            return
        keys = self._keys(reservation.principal, reservation.time)
        await self._write_or_owe("taking back a reservation", _UNCOUNT, reservation.id, keys, _take_back(reservation))

    async def _write_or_owe(
        self, doing: str, script: Any, reservation_id: str, keys: list[str], args: list[str]
    ) -> None:
        """Run ``script`` on Redis for a reservation, or owe it (``_owe``) while Redis is down. As the SQLite
        counter's: a cancelled caller's write still lands (it is shielded, and owed if Redis fails it)."""
        if not self.outage.usable():
            self._owe(reservation_id, script, keys, args)
            return
        write = asyncio.ensure_future(self.outage.call(doing, lambda client: script(client, keys, args)))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait({write})
            if not write.cancelled() and isinstance(write.exception(), RedisUnavailableError):
                self._owe(reservation_id, script, keys, args)
            raise
        except RedisUnavailableError:
            self._owe(reservation_id, script, keys, args)

    async def usage(self, principal: str, *, now: float) -> dict[str, float]:
        """``requests_last_minute``, ``tokens_last_minute`` and ``usd_today`` of ``principal`` (while
        Redis is down, what this replica counted locally, from its share of what Redis had counted)."""
        self.replicas.keep_beating()
        if self.outage.usable():
            keys = [*self._keys(principal, now), self._rebuilt_mark(principal, now)]
            args = [repr(now - WINDOW), "1" if self._may_rebuild() else "0"]
            with contextlib.suppress(RedisUnavailableError):
                if self._unsent and principal in self._unsent:
                    await self._hand_over(principal)
                found = await self.outage.call("reading usage", lambda client: _USAGE(client, keys, args))
                if not found:  # Redis has no windows of this principal's day: rebuild them (as a reserve does)
                    await self._rebuild(principal, now)
                    args[-1] = "0"
                    found = await self.outage.call("reading usage", lambda client: _USAGE(client, keys, args))
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

    def _owe(self, reservation_id: str, script: LuaScript, keys: list[str], args: list[str]) -> None:
        """Keep a settlement or a take-back Redis could not take, to send when it answers (the newest
        wins: a take-back replaces a settlement, and is never replaced by one — a settlement of a
        reservation taken back finds nothing to settle)."""
        previous = self._owed.pop(reservation_id, None)
        if previous is not None and previous[0] is _UNCOUNT and script is not _UNCOUNT:
            script, keys, args = previous
        self._owed[reservation_id] = (script, keys, args)
        while len(self._owed) > MAX_OWED:  # the oldest settlement goes first: a lost take-back counts a request twice
            oldest = next((key for key, owed in self._owed.items() if owed[0] is not _UNCOUNT), None)
            self._owed.pop(oldest) if oldest is not None else self._owed.popitem(last=False)
            self._dropped += 1

    def _remember(self, principal: str, seen: tuple[float, int, int, int]) -> None:
        """Keep what Redis reported of ``principal``'s usage (``local_seed``), in an LRU of ``MAX_SEEN``."""
        remembered = self._seen
        remembered[principal] = seen
        remembered.move_to_end(principal)
        if len(remembered) > MAX_SEEN:
            remembered.popitem(last=False)

    def _recovered(self) -> None:
        """Redis answers again (``on_recovered``): the seeds go (Redis counts that usage itself), what
        was counted locally is added to Redis (module docstring), the owed settlements are sent."""
        self._seeded.clear()
        self.local.forget_seeds()
        self._unsent.update(self.local.names())
        if self._unsent:
            self._in_background(self._hand_over_all())
        self._pay_owed()

    def _in_background(self, work: Any) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _hand_over(self, principal: str) -> Awaitable[None]:
        """Add what ``principal`` used locally to Redis (one hand-over at a time per principal; one
        that is under way is waited for). ``RedisUnavailableError`` when Redis fails again."""
        sending = self._sending.get(principal)
        if sending is None:
            sending = self._sending[principal] = self._in_background(self._send_local(principal))
            sending.add_done_callback(lambda done: self._sending.pop(principal, None))
            sending.add_done_callback(_retrieved)
        return asyncio.shield(sending)

    async def _send_local(self, principal: str) -> None:
        try:
            await self._send_local_now(principal)
        except StoreError:
            raise  # Redis failed again (noted), or the store closed: it stays to send
        except Exception:  # a bug: that principal's local usage stays local, requests go on
            log.exception("budgets: could not add what %r used while Redis was down to it", principal)
            self._unsent.discard(principal)

    async def _send_local_now(self, principal: str) -> None:
        latest = self.local.latest
        day = utc_day_start(latest)
        newest, minute, nanos = self.local.outbox(principal, since=latest - WINDOW, day=day)
        if minute or nanos:
            handing = random_hex(2)
            args = [str(KEEP_SECONDS), str(nanos)]
            for number, at, tokens in minute:
                args += [f"{handing}:{number}", repr(at), str(tokens)]
            keys = self._keys(principal, day)[:3]
            keys.append(f"{keys[0].removesuffix(':times')}:handed:{handing}")
            await self.outage.call("adding what was counted locally", lambda client: _ADD_LOCAL(client, keys, args))
            seen = self._seen.get(principal)
            if seen is not None:  # what Redis holds now, as far as this replica knows (all of it at the latest)
                at = max(seen[0], latest)
                spent = seen[3] if utc_day_start(seen[0]) == utc_day_start(at) else 0
                if utc_day_start(at) == day:
                    spent += nanos
                tokens = seen[2] + sum(record[2] for record in minute)
                self._seen[principal] = (at, seen[1] + len(minute), tokens, spent)
        self.local.handed_over(principal, newest, day=day, nanos=nanos)
        self._unsent.discard(principal)

    async def _hand_over_all(self) -> None:
        """Hand over every principal's local usage, one after the other, until done or Redis fails again."""
        count = 0
        for principal in list(self._unsent):
            if self.outage.down:
                return  # the rest wait for the next return
            if principal not in self._unsent:  # a request of it handed it over meanwhile
                continue
            try:
                await self._hand_over(principal)
            except StoreError:
                return  # down again (noted), or closed
            count += 1
        if count:
            log.info("budgets: what %d principals used while Redis was down was added to Redis", count)

    def _pay_owed(self) -> None:
        """Send the owed settlements in the background."""
        if self._dropped:
            log.warning(
                "budgets: %d settlements were dropped while Redis was down (over %d kept)", self._dropped, MAX_OWED
            )
            self._dropped = 0
        if not self._owed or (self._paying is not None and not self._paying.done()):
            return  # (one sender at a time: it goes on until nothing is owed)
        task = self._paying = asyncio.get_running_loop().create_task(self._send_owed())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_owed(self) -> None:
        sent = 0
        while self._owed:
            reservation_id, owed = next(iter(self._owed.items()))
            script, keys, args = owed
            try:
                await self.outage.call(
                    "settling", lambda client, keys=keys, args=args, script=script: script(client, keys, args)
                )
            except StoreError:
                return  # down again (noted) or closed: the rest wait for the next recovery
            if self._owed.get(reservation_id) == owed:  # unless a newer settlement replaced it meanwhile
                del self._owed[reservation_id]
            sent += 1
        log.info("budgets: %d settlements made while Redis was down were sent to it", sent)

    def _owe_take_back(self, reservation: Reservation, keys: list[str]) -> None:
        """Take back, once Redis answers again, a reserve whose reply was lost (module docstring) — at
        once if it answers already (another call succeeded meanwhile: no recovery will send it). One
        that never reached Redis leaves a tombstone nothing obeys, gone with the day's slack."""
        self._owe(reservation.id, _UNCOUNT, keys, _take_back(reservation))
        if not self.outage.down:
            self._pay_owed()

    def _uncount(self, attempt: asyncio.Future[Any], reservation: Reservation, keys: list[str]) -> None:
        """The reserve of a cancelled caller landed: take it back (the request will not be sent); if its
        reply was lost, it may land still: owe the take-back (``_owe_take_back``)."""
        if attempt.cancelled():
            return
        if attempt.exception() is not None:
            if isinstance(attempt.exception(), RedisUnreachableError):
                self._owe_take_back(reservation, keys)
            return
        if int(attempt.result()[0]) != 1:
            return
        args = _take_back(reservation)
        undo = asyncio.ensure_future(
            self.redis.run("taking back a reservation", lambda client: _UNCOUNT(client, keys, args))
        )
        self._background.add(undo)
        undo.add_done_callback(self._background.discard)
        undo.add_done_callback(_log_failure)


def _take_back(reservation: Reservation) -> list[str]:
    """``_UNCOUNT``'s arguments for ``reservation``: its id, its time (a tombstone's), how long keys stay."""
    return [str(reservation.id), repr(float(reservation.time)), str(KEEP_SECONDS)]


def _reason(exc: BaseException) -> str:
    """One line saying why a ledger read failed (a timeout has no message: its type says it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a hand-over as seen (the callers that waited for it have had it)."""
    if not future.cancelled():
        future.exception()


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("could not take back a cancelled reservation: %s", future.exception())
