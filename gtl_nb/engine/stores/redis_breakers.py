"""``RedisBreakerStore``: circuit breakers every gateway replica shares.

One string per deployment, ``<prefix>breaker:<deployment>``, holding ``CircuitBreaker.to_state()``
as JSON (times in wall-clock unix seconds, which replicas share) plus when the last half-open
probe was granted — a few hundred bytes whatever the traffic: the error-rate window is 20 buckets
of counts (``engine.breaker``), not a list of calls. Every request costs one round trip per call
and writes only what it changes:

* **A closed circuit's verdicts** (``record_success``, ``record_failure``) are one Lua script that
  applies the closed circuit's rules to the stored JSON and writes it back, atomically: end or
  extend the failure streak, count the call in its bucket (dropping the buckets that left the
  window), and for a failure the two reasons to open — an opening keeps the provider's Retry-After
  (``provider_retry_after``: every replica holds the circuit open for that wait instead of the
  cooldown, as ``engine.breaker.open_for`` reads it when the circuit is next loaded).
  These few rules are restated in Lua (``_CLOSED``), the one place outside ``engine.breaker``;
  ``tests/engine/stores`` checks that both decide alike on random sequences. On anything else — no
  state yet, a circuit not closed, state of an earlier version or of another ``window`` — the script
  changes nothing and says so, and the call takes the general path below.
* **Everything else** (an open circuit turning half-open, probes, their verdicts, ``release``) reads
  the state, applies ``engine.breaker``'s rules in Python and writes the new state with a Lua
  compare-and-set that succeeds only if the key still holds exactly what was read. When another
  replica changed it meanwhile, the change is applied again to what that replica wrote. So every
  transition is atomic across replicas, and the last half-open probe slot goes to exactly one of
  them. A call that changes nothing (a closed circuit letting a request through, an open one
  refusing) is one ``GET`` and writes nothing. These writes of one deployment take turns within a
  process, so a compare-and-set only ever races the other replicas' (a few), never this process's
  own hundreds of concurrent calls — which would spend their attempts failing against each other.

Every write carries a random token, so a write that landed although its reply was lost (redis-py
sends it once more) is recognised, not applied twice. A probe slot whose replica never reported back
(it died) is given back after ``probe_lease`` seconds, as in the SQLite store. A breaker nobody
touched for a day expires: it starts closed again.

While Redis cannot be used (``redis_fallback``: one warning, then a background probe every second),
each call goes to a ``BreakerBoard`` of this process with the same rules and configuration — its
breakers start closed, as after a day without use — and when Redis answers again, calls go back to
the shared state, which is as the replicas left it. A request never fails because Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from gtl_nb.engine.breaker import (
    WINDOW_BUCKETS,
    BreakerBoard,
    BreakerConfig,
    CircuitBreaker,
    held_reason,
    provider_wait,
)
from gtl_nb.engine.ratelimit import DAY
from gtl_nb.engine.stores.redis_client import LuaScript, RedisConnector, RedisUnavailableError, key_part
from gtl_nb.engine.stores.redis_fallback import RedisOutage
from gtl_nb.engine.stores.shared_breakers import RulesOverState, stored_json, verdict
from gtl_nb.ids import random_hex
from gtl_nb.log import get_logger

__all__ = ["RedisBreakerStore"]

log = get_logger("engine.stores")

T = TypeVar("T")

MAX_ATTEMPTS = 100
"""Compare-and-set attempts before giving up: each failed one means another replica made progress."""

_FAST_BUCKETS = 10**13
"""Bucket numbers the Lua path handles: its JSON encoder keeps 14 significant digits (a window of a
few milliseconds would pass it; such a breaker takes the general path)."""

# A closed circuit's verdict (module docstring): engine.breaker's rules for a closed circuit, restated.
# KEYS: the breaker.  ARGV: 1 '1' a failure / '0' a success, 2 the current bucket, 3 bucket_width as
# to_state() writes it, 4 now, 5 this call's token, 6 milliseconds to keep the key, 7 failure_threshold,
# 8 error_rate_threshold, 9 min_calls, 10 WINDOW_BUCKETS, 11 the provider's wait as breaker.provider_wait
# bounds it ('' none; kept as a string, like opened_at, so that the encoder's 14 digits leave it exact).
# Returns {'slow'} (not a closed circuit in this version's format: nothing written), {'ok'},
# {'opened', consecutive failures, calls in the window, failures in the window}, or {'again', state}
# (the token is this call's: a retry of a script that ran, whose reply was lost).
_CLOSED = LuaScript(
    """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'slow'} end
local function decide()
  local s = cjson.decode(raw)
  if type(s) ~= 'table' then return nil end
  if s.token == ARGV[5] then return {'again', tostring(s.state)} end
  if s.state ~= 'closed' or s.bucket_width ~= ARGV[3] or s.probes ~= 0 or type(s.consecutive) ~= 'number'
    or type(s.buckets) ~= 'table' then
    return nil
  end
  local failed = ARGV[1] == '1'
  local bad = failed and 1 or 0
  local current = tonumber(ARGV[2])
  local horizon = current - tonumber(ARGV[10])
  local kept, calls, failures, placed = {}, 0, 0, false
  for _, bucket in ipairs(s.buckets) do
    local index, c, f = bucket[1], bucket[2], bucket[3]
    if type(index) ~= 'number' or type(c) ~= 'number' or type(f) ~= 'number' then return nil end
    if index > horizon then  -- the buckets that left the window are dropped
      if not placed and index > current then  -- buckets ahead of this clock: the new one goes before
        kept[#kept + 1] = {current, 1, bad}
        calls, failures, placed = calls + 1, failures + bad, true
      elseif not placed and index == current then
        c, f, placed = c + 1, f + bad, true
      end
      kept[#kept + 1] = {index, c, f}
      calls, failures = calls + c, failures + f
    end
  end
  if not placed then
    kept[#kept + 1] = {current, 1, bad}
    calls, failures = calls + 1, failures + bad
  end
  s.buckets = kept
  s.consecutive = failed and s.consecutive + 1 or 0
  s.token = ARGV[5]
  local answer = {'ok'}
  if failed then
    local threshold, rate, least = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
    if (threshold > 0 and s.consecutive >= threshold)
      or (rate > 0 and calls >= least and failures / calls >= rate) then
      s.state, s.opened_at, s.probes, s.probe_at = 'open', ARGV[4], 0, cjson.null
      s.provider_retry_after = ARGV[11] ~= '' and ARGV[11] or cjson.null
      answer = {'opened', s.consecutive, calls, failures}
    end
  end
  s.window = nil  -- written first, as an empty list (an empty Lua table would be encoded as {})
  return answer, '{"window":[],' .. string.sub(cjson.encode(s), 2)
end
local ok, answer, text = pcall(decide)
if not ok or answer == nil then return {'slow'} end
if text then redis.call('SET', KEYS[1], text, 'PX', ARGV[6]) end
return answer
"""
)

# KEYS: the breaker.  ARGV: what was read ('' = nothing), the new state, milliseconds to keep it.
_SWAP = LuaScript(
    """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)


class RedisBreakerStore(RulesOverState):
    """A ``BreakerStore`` in Redis (module docstring). ``config`` may be replaced while running (the
    engine does on reconfiguration): every call reads the current one. ``degraded_reason`` is
    ``None`` while Redis answers, else why breakers are local (for ``/readyz``)."""

    def __init__(
        self,
        url: str,
        config: BreakerConfig | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        probe_lease: float = 300.0,
    ) -> None:
        self.redis = RedisConnector(url, what="[routing.breaker] backend")
        self.config = config or BreakerConfig()
        self.wall_clock = wall_clock
        self.probe_lease = probe_lease
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )
        self.outage = RedisOutage(
            self.redis,
            store="breakers",
            meanwhile=lambda: "circuit breakers are kept by this replica alone",
            back="circuit breakers are shared again",
        )
        self._local: BreakerBoard | None = None  # made at the first outage

    def __repr__(self) -> str:
        return f"RedisBreakerStore({self.redis.shown!r})"

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and that breakers are local."""
        return self.outage.degraded_reason

    def local_board(self) -> BreakerBoard:
        """The breakers of this process while Redis is down (made again when ``config`` was replaced)."""
        if self._local is None or self._local.config is not self.config:
            self._local = BreakerBoard(self.config, clock=self.wall_clock)
        return self._local

    def _key(self, deployment: str) -> str:
        return f"{self.redis.prefix}breaker:{key_part(deployment)}"

    async def snapshots(self, deployments: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Each deployment's ``snapshot()`` plus ``"allowed"``; times are wall-clock unix seconds."""
        names = list(dict.fromkeys(deployments))
        if not names:
            return {}
        if not self.outage.usable():
            return self._local_snapshots(names)
        keys = [self._key(name) for name in names]
        try:
            found = await self.outage.call("reading breakers", lambda client: client.mget(keys))
        except RedisUnavailableError:
            return self._local_snapshots(names)
        now = self.wall_clock()
        result = {}
        for name, data in zip(names, found, strict=True):
            breaker, _, _ = self._load(name, data, now)
            result[name] = {**breaker.snapshot(), "allowed": breaker.would_allow()}
        return result

    def _local_snapshots(self, names: list[str]) -> dict[str, dict[str, Any]]:
        breakers = [self.local_board().get(name) for name in names]
        return {breaker.name: {**breaker.snapshot(), "allowed": breaker.would_allow()} for breaker in breakers}

    async def aclose(self) -> None:
        await self.outage.aclose()
        await self.redis.aclose()

    def close(self) -> None:
        """Close without a loop."""
        self.redis.close()

    async def _update(self, deployment: str, operation: Callable[[CircuitBreaker], T]) -> T:
        """``operation`` on the shared breaker (``_shared_update``), or on the local one while Redis is down."""
        if self.outage.usable():
            # Redis is down (the outage noted it), or the breaker changed under MAX_ATTEMPTS writes of
            # other replicas: either way this call is decided locally rather than failing its request
            with contextlib.suppress(RedisUnavailableError):
                return await self._shared_update(deployment, operation)
        return operation(self.local_board().get(deployment))

    async def _record(
        self, deployment: str, *, failed: bool, retry_after: float | None = None
    ) -> tuple[str, str] | None:
        """A verdict: one script while the circuit is closed (``_CLOSED``), else the general path."""
        if self.outage.usable():
            with contextlib.suppress(RedisUnavailableError):  # as _update: decided locally
                done, change = await self._closed_verdict(deployment, failed, retry_after)
                if done:
                    return change
                return await self._shared_update(deployment, verdict(failed, retry_after))
        return verdict(failed, retry_after)(self.local_board().get(deployment))

    async def _closed_verdict(
        self, deployment: str, failed: bool, retry_after: float | None = None
    ) -> tuple[bool, tuple[str, str] | None]:
        """``(True, change)`` when the ``_CLOSED`` script recorded the verdict, ``(False, None)`` when the
        circuit is not one it handles (nothing was written)."""
        config = self.config
        now = self.wall_clock()
        width = config.window / WINDOW_BUCKETS
        current = math.floor(now / width)
        if abs(current) >= _FAST_BUCKETS:
            return False, None
        key = self._key(deployment)
        wait = provider_wait(retry_after, config) if failed else None
        args = [
            "1" if failed else "0",
            str(current),
            repr(width),
            repr(now),
            random_hex(2),
            self._keep(),
            str(config.failure_threshold),
            repr(float(config.error_rate_threshold)),
            str(config.min_calls),
            str(WINDOW_BUCKETS),
            "" if wait is None else repr(wait),
        ]
        answer = await self.outage.call("recording a verdict", lambda client: _CLOSED(client, [key], args))
        kind = _text(answer[0])
        if kind == "slow":
            return False, None
        if kind == "again":  # our script ran; its reply was lost and redis-py sent it again
            opened = failed and _text(answer[1]) == "open"
            return True, ("closed", "open") if opened else None
        if kind == "opened":
            consecutive, calls, failures = (int(value) for value in answer[1:4])
            if config.failure_threshold and consecutive >= config.failure_threshold:
                reason = f"{consecutive} consecutive failures"
            else:
                reason = f"error rate {failures / calls:.0%} over the last {config.window:g} s ({calls} calls)"
            reason += held_reason(wait, config)
            log.info("circuit %s: closed -> open (%s)", deployment, reason)
            return True, ("closed", "open")
        return True, None

    async def _shared_update(self, deployment: str, operation: Callable[[CircuitBreaker], T]) -> T:
        """Apply ``operation`` to the stored breaker and store the result, atomically (module docstring).

        A call that changes nothing is one ``GET``. Writes of one deployment take turns within this
        process (so compare-and-set only races other replicas', not this process's own hundred
        concurrent calls), and a lost race waits a random moment before the next try."""
        key = self._key(deployment)
        token = random_hex(2)
        step = self._step(deployment, operation, token)
        data = await self.outage.call("reading a breaker", lambda client: client.get(key))
        result, text, _ = step(data)
        if text is None:
            return result
        lock = self._lock(deployment)
        waited = lock.locked()
        async with lock:
            written: list[T] = []  # outcomes of the writes we sent, should a reply be lost
            for attempt in range(MAX_ATTEMPTS):
                if attempt or waited:  # what was read before may be stale by now
                    data = await self.outage.call("reading a breaker", lambda client: client.get(key))
                    result, text, landed = step(data)
                    if written and landed:
                        return written[-1]  # our earlier write landed; its reply did not reach us
                    if text is None:
                        return result
                written.append(result)
                swap_args = [b"" if data is None else data, text, self._keep()]
                swapped = await self.outage.call(
                    "updating a breaker",
                    lambda client, swap_args=swap_args: _SWAP(client, [key], swap_args),  # bound here, not late
                )
                if int(swapped) == 1:
                    return result
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))  # another replica wrote
        raise RedisUnavailableError(
            f"circuit {deployment}: the breaker changed under {MAX_ATTEMPTS} attempts in a row at {self.redis.shown}"
        )

    def _step(
        self, deployment: str, operation: Callable[[CircuitBreaker], T], token: str
    ) -> Callable[[bytes | None], tuple[T, str | None, bool]]:
        """``step(stored)``: the operation's result, the state to write (``None``: nothing changed),
        and whether ``stored`` is a write of this very call (carries ``token``)."""

        def step(data: bytes | None) -> tuple[T, str | None, bool]:
            now = self.wall_clock()  # after the read: a replica applies changes in the order it sees them
            breaker, probe_at, last_token = self._load(deployment, data, now)
            before = breaker.to_state()
            result = operation(breaker)
            after = breaker.to_state()
            if after == before:
                return result, None, last_token == token
            if result == "probe":
                probe_at = now  # the newest grant: the lease runs from the last sign of life
            after["probe_at"] = probe_at if after["probes"] else None
            after["token"] = token
            return result, stored_json(after), last_token == token

        return step

    def _keep(self) -> str:
        """Milliseconds a breaker's key outlives its last change."""
        longest = max(self.config.window, self.config.cooldown, self.config.max_cooldown)
        return str(int((longest + self.probe_lease + DAY) * 1000))

    def _lock(self, deployment: str) -> asyncio.Lock:
        """This loop's lock for writes of ``deployment`` (an asyncio lock belongs to one loop)."""
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        lock = locks.get(deployment)
        if lock is None:
            lock = locks[deployment] = asyncio.Lock()
        return lock

    def _load(self, deployment: str, data: bytes | None, now: float) -> tuple[CircuitBreaker, float | None, str | None]:
        """The breaker as stored, at the instant ``now``; when its last probe was granted; the write's token."""

        def clock() -> float:
            return now  # one instant per step

        if data is None:
            return CircuitBreaker(deployment, self.config, clock=clock), None, None
        try:
            state = json.loads(data)
            probe_at = state.get("probe_at")
            if state.get("probes") and probe_at is not None and now - float(probe_at) > self.probe_lease:
                log.info("circuit %s: probe slots held for over %g s were given back", deployment, self.probe_lease)
                state["probes"], probe_at = 0, None
            breaker = CircuitBreaker.from_state(state, deployment, self.config, clock=clock)
            return breaker, probe_at, state.get("token")
        except (ValueError, TypeError, AttributeError):
            log.warning("circuit %s: unreadable stored state; starting closed", deployment)
            return CircuitBreaker(deployment, self.config, clock=clock), None, None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
