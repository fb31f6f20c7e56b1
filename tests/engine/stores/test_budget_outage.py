"""Budgets across a Redis outage: what the cluster admits stays within the bound ``redis_budget``'s
docstring states, every replica is counted from the start, and nothing is left in memory after.

The bound, for a principal, a limit ``L`` and a window (60 s, or the UTC day), ``n`` live replicas:
``max(L, n) + (D_1 + ... + D_n) / n`` — ``D_i`` what Redis counted in the window after replica ``i``
last heard the principal's usage from it — plus, for dollars and tokens, one request's estimate per
replica. Three replicas (three counters with their own pools and ids) share a real ``redis-server``
that each scenario stops and restarts."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from store_kit import run

from gtl_nb.engine.ratelimit import DAY, Limits
from gtl_nb.engine.stores.memory import TIDY_STEP, MemoryBudgetCounter
from gtl_nb.engine.stores.redis_budget import RedisBudgetCounter, local_seed
from gtl_nb.protocol.errors import BudgetExceededError, RateLimitError

NOON = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()
REPLICAS = 3
PER_MINUTE = Limits(requests_per_minute=6)
PER_DAY = Limits(usd_per_day=1.0)
COST = 0.25  # each request's estimate and actual cost against PER_DAY


@pytest.fixture
def server(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A ``redis-server`` of this test alone (so it may be stopped), its data kept across a restart."""
    kit = sys.modules["gtl_nb_tests_redis_server"]  # loaded by conftest.py
    started = kit.RedisServer.start(tmp_path / "redis", appendonly=True)
    try:
        yield started
    finally:
        started.stop()


def replicas(url: str, count: int = REPLICAS) -> list[RedisBudgetCounter]:
    """``count`` replicas' budget stores: each its own pool and replica id, probing for Redis often."""
    made = []
    for index in range(count):
        counter = RedisBudgetCounter(f"{url}?client_name=replica-{index}")
        counter.replicas.id = f"host/{index}/test"
        counter.outage.retry = 0.05
        made.append(counter)
    return made


async def admitted(counter: RedisBudgetCounter, principal: str, limits: Limits, now: float) -> bool:
    """One request: reserved and settled (at its estimate), or refused by a limit."""
    cost = COST if limits.usd_per_day is not None else 0.0
    try:
        reservation = await counter.reserve(principal, limits, now=now, cost=cost)
    except (RateLimitError, BudgetExceededError):
        return False
    await counter.settle(reservation, tokens=0, cost=cost, now=now)
    return True


async def until_refused(counter: RedisBudgetCounter, principal: str, limits: Limits, now: float) -> int:
    count = 0
    while await admitted(counter, principal, limits, now + count * 0.001):
        count += 1
        assert count < 100
    return count


async def until(done: Callable[[], bool], poke: Callable[[], Awaitable[Any]], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "not in time"
        await poke()
        await asyncio.sleep(0.02)


def heard(counter: RedisBudgetCounter, principal: str, index: int) -> int:
    """What Redis last told this replica of the principal (``index`` 1: requests, 3: nano-USD), 0 if nothing."""
    seen = counter._seen.get(principal)
    return 0 if seen is None else seen[index]


# -- the bound -------------------------------------------------------------------------------------


@pytest.mark.parametrize("routing", ["spread", "one replica"])
def test_the_cluster_stays_within_the_bound_across_outages(server: Any, routing: str):
    """Before the outage the principal spends its minute and its day in Redis — through the three
    replicas in turn, or all through one — then every replica serves it locally until refused; Redis
    comes back (each replica adds what it counted there), and goes away once more."""
    counters = replicas(server.url)

    def route(attempt: int) -> RedisBudgetCounter:
        return counters[attempt % REPLICAS] if routing == "spread" else counters[0]

    async def spend_in_redis(principal: str, limits: Limits) -> int:
        count = 0
        while await admitted(route(count), principal, limits, NOON + count * 0.001):
            count += 1
        return count

    async def everywhere(principal: str, limits: Limits, now: float) -> list[int]:
        return [await until_refused(counter, principal, limits, now) for counter in counters]

    async def scenario() -> dict[str, Any]:
        for _ in range(2):  # every replica beating and counting the others
            for counter in counters:
                await counter.replicas.beat()
        seen: dict[str, Any] = {"counts": [counter.replicas.count for counter in counters]}
        seen["redis"] = (await spend_in_redis("ann", PER_MINUTE), await spend_in_redis("bob", PER_DAY))
        seen["heard"] = ([heard(c, "ann", 1) for c in counters], [heard(c, "bob", 3) / 1e9 for c in counters])
        server.stop()
        seen["down"] = (await everywhere("ann", PER_MINUTE, NOON + 1), await everywhere("bob", PER_DAY, NOON + 1))
        server.restart()
        for counter in counters:
            await until(lambda c=counter: c.degraded_reason is None, lambda c=counter: c.usage("x", now=NOON + 2))
            await until(lambda c=counter: c.local.principals == 0, lambda: asyncio.sleep(0.02))
        seen["back"] = (await everywhere("ann", PER_MINUTE, NOON + 2), await everywhere("bob", PER_DAY, NOON + 2))
        server.stop()  # and once more: a second outage adds no new share
        seen["again"] = (await everywhere("ann", PER_MINUTE, NOON + 3), await everywhere("bob", PER_DAY, NOON + 3))
        seen["left"] = sum(counter.local.reservations for counter in counters)
        for counter in counters:
            await counter.aclose()
        return seen

    seen = run(scenario())
    assert seen["counts"] == [REPLICAS] * REPLICAS
    assert seen["redis"] == (6, 4)  # the minute's 6 requests, the day's $1.00: all Redis would admit
    (ann_heard, bob_heard), (ann_down, bob_down) = seen["heard"], seen["down"]

    # requests per minute: max(L, n) + sum(D_i) / n, D_i what Redis counted after replica i last heard
    ann_total = 6 + sum(ann_down)
    assert ann_total <= max(6, REPLICAS) + sum(6 - h for h in ann_heard) / REPLICAS
    # dollars per day: L + sum(D_i) / n, plus the last request's estimate per replica
    bob_total = 4 * COST + sum(bob_down) * COST
    assert bob_total <= 1.0 + sum(1.0 - h for h in bob_heard) / REPLICAS + REPLICAS * COST + 1e-9
    if routing == "spread":  # every replica heard the latest, or nearly: the limit holds
        assert ann_heard == [6, 5, 6] and ann_down == [0, 0, 0] and ann_total == 6
        assert bob_heard == [1.0, 1.0, 0.75] and bob_down == [0, 0, 1] and bob_total == 1.25
    else:  # one replica heard it all, two nothing: each of those adds a local share (the worst case)
        assert ann_heard == [6, 0, 0] and ann_down == [0, 2, 2] and ann_total == 10
        assert bob_heard == [1.0, 0, 0] and bob_down == [0, 2, 2] and bob_total == 2.0
    # Redis back: it counted what the replicas admitted locally, so it admits nothing more in that
    # minute or day — and the next outage starts from that, so it adds nothing either
    assert seen["back"] == ([0, 0, 0], [0, 0, 0])
    assert seen["again"] == ([0, 0, 0], [0, 0, 0])
    assert seen["left"] == 0


def test_redis_counts_what_was_admitted_locally_once_it_answers_again(server: Any):
    """The local requests of the minute, as reservations at their times; the day's money whole."""
    (counter,) = replicas(server.url, 1)
    limits = Limits(requests_per_minute=10, tokens_per_minute=1000, usd_per_day=5.0)

    async def scenario() -> tuple[dict[str, float], dict[str, float], list[bool]]:
        await counter.replicas.beat()
        reservation = await counter.reserve("ann", limits, now=NOON, tokens=100, cost=1.0)
        server.stop()
        for index in range(3):  # counted locally, starting from the 1 request, 100 tokens and $1 in Redis
            local = await counter.reserve("ann", limits, now=NOON + 10 + index, tokens=100, cost=0.5)
            await counter.settle(local, tokens=50, cost=0.25)
        await counter.settle(reservation, tokens=10, cost=0.1)  # owed to Redis
        down = await counter.usage("ann", now=NOON + 20)
        server.restart()
        await until(lambda: counter.degraded_reason is None, lambda: asyncio.sleep(0.02))
        await until(lambda: counter.local.principals == 0 and counter.owed == 0, lambda: asyncio.sleep(0.02))
        back = await counter.usage("ann", now=NOON + 20)
        leaving = [await admitted(counter, "ann", Limits(requests_per_minute=5), NOON + at) for at in (20, 60.5)]
        await counter.aclose()
        return down, back, leaving

    down, back, leaving = run(scenario())
    assert down == {"requests_last_minute": 4, "tokens_last_minute": 250, "usd_today": 1.75}
    assert back == {"requests_last_minute": 4, "tokens_last_minute": 160, "usd_today": pytest.approx(0.85)}
    # at NOON + 20 the minute is full (4 + 1 = 5); at NOON + 60.5 the one made at NOON has left it
    assert leaving == [True, True]


def test_what_could_not_be_handed_over_stays_until_redis_really_answers(server: Any):
    """Redis answers once and fails again at once: the local usage stays local (and counts), then goes."""
    (counter,) = replicas(server.url, 1)
    limits = Limits(requests_per_minute=10)

    async def scenario() -> tuple[tuple[int, int, bool], dict[str, float]]:
        await counter.replicas.beat()
        server.stop()
        for index in range(3):
            await counter.reserve("ann", limits, now=NOON + index)
        counter.outage.answered()  # as if a probe got through: the hand-over starts, and fails
        await until(lambda: counter.outage.down, lambda: asyncio.sleep(0.02))
        await asyncio.sleep(0.1)
        kept = (counter.local.principals, counter.local.reservations, counter.outage.down)
        server.restart()
        await until(lambda: counter.local.principals == 0, lambda: asyncio.sleep(0.02))
        usage = await counter.usage("ann", now=NOON + 3)
        await counter.aclose()
        return kept, usage

    kept, usage = run(scenario())
    assert kept == (1, 3, True)
    assert usage["requests_last_minute"] == 3


def test_a_hand_over_sent_twice_counts_once(redis_url: str):
    from gtl_nb.engine.stores.redis_budget import _ADD_LOCAL

    (counter,) = replicas(redis_url, 1)
    keys = [*counter._keys("ann", NOON), "gtl:budget:{ann}:handed:h1"]
    args = ["3600", "250000000", "h1:1", repr(NOON), "10", "h1:2", repr(NOON + 1), "20"]

    async def scenario() -> tuple[list[int], dict[str, float]]:
        answers = [await counter.redis.run("test", lambda client: _ADD_LOCAL(client, keys, args)) for _ in range(2)]
        usage = await counter.usage("ann", now=NOON + 2)
        await counter.aclose()
        return answers, usage

    answers, usage = run(scenario())
    assert answers == [1, 0]
    assert usage == {"requests_last_minute": 2, "tokens_last_minute": 30, "usd_today": 0.25}


# -- every replica counted -------------------------------------------------------------------------


def test_a_replica_is_counted_from_the_start_not_from_its_first_reservation(redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)

    async def scenario() -> tuple[list[int], int, int]:
        on_loop = replicas(redis_url, 2)  # opened on a running loop: they join at once
        await asyncio.sleep(1.5)  # the first beat, and the second a second later
        counts = [counter.replicas.count for counter in on_loop]
        before = int(client.zcard("gtl:replicas"))
        late = await asyncio.to_thread(RedisBudgetCounter, f"{redis_url}?client_name=late")  # no loop there
        late.replicas.id = "host/late/test"
        assert late.degraded_reason is None  # /readyz asks: it joins
        await asyncio.sleep(0.2)
        after = int(client.zcard("gtl:replicas"))
        for counter in [*on_loop, late]:
            await counter.aclose()
        return counts, before, after

    try:
        assert run(scenario()) == ([2, 2], 2, 3)
    finally:
        client.close()


# -- memory ----------------------------------------------------------------------------------------


def test_the_local_counter_is_empty_once_redis_has_what_it_counted(server: Any):
    (counter,) = replicas(server.url, 1)
    limits = Limits(requests_per_minute=100)

    async def scenario() -> tuple[int, int, int, int, dict[str, float]]:
        await counter.reserve("warm", limits, now=NOON)
        server.stop()
        for index in range(3000):  # an outage: 3 requests each of 1,000 principals
            await counter.reserve(f"user-{index % 1000}", limits, now=NOON + 1 + index * 0.001)
        during = (counter.local.principals, counter.local.reservations)
        server.restart()
        await until(lambda: counter.degraded_reason is None, lambda: asyncio.sleep(0.02))
        await until(lambda: counter.local.principals == 0, lambda: asyncio.sleep(0.02))
        usage = await counter.usage("user-7", now=NOON + 10)
        after = (counter.local.principals, counter.local.reservations)
        await counter.aclose()
        return (*during, *after, usage)

    principals, reservations, principals_after, reservations_after, usage = run(scenario())
    assert (principals, reservations) == (1000, 3000)
    assert (principals_after, reservations_after) == (0, 0)
    assert usage["requests_last_minute"] == 3  # in Redis now


def test_idle_principals_are_forgotten_by_the_memory_counter():
    """The embedded default too: a principal that has not reserved since the day before yesterday
    holds nothing; one that spent money today or yesterday is kept."""
    counter = MemoryBudgetCounter()
    limits = Limits(requests_per_minute=10)

    async def scenario() -> list[tuple[int, int]]:
        seen = []
        for index in range(500):
            await counter.reserve(f"user-{index}", limits, now=NOON + index * 0.001, cost=0.01)
        seen.append((counter.principals, counter.reservations))
        for step in range(20):  # a day later: every principal spent yesterday, all kept
            await counter.reserve("ann", Limits(), now=NOON + DAY + step)
        seen.append((counter.principals, counter.reservations))
        for step in range(500 // TIDY_STEP + 2):  # two days later: a pass over them all, a step a reserve
            await counter.reserve("ann", Limits(), now=NOON + 2 * DAY + step)
        seen.append((counter.principals, counter.reservations))
        return seen

    # ann keeps yesterday's 20 (a day of slack for a clock that steps back), and today's
    assert run(scenario()) == [(500, 500), (501, 520), (1, 20 + 500 // TIDY_STEP + 2)]


def test_a_seed_counts_in_the_minute_after_it_and_in_its_day():
    counter = MemoryBudgetCounter()
    limits = Limits(requests_per_minute=3, usd_per_day=1.0)
    at, requests, tokens, nanos = local_seed((NOON, 5, 149, 1_400_000_001), 3)
    assert (at, requests, tokens, nanos) == (NOON, 2, 50, 466_666_667)  # each divided, rounded up

    async def scenario() -> list[Any]:
        counter.seed("ann", at=at, requests=requests, tokens=tokens, cost=nanos / 1e9)
        seen: list[Any] = [await counter.reserve("ann", limits, now=NOON + 1, cost=0.25)]
        try:
            await counter.reserve("ann", limits, now=NOON + 2)
        except RateLimitError as exc:
            seen.append(exc.retry_after)
        seen.append(await counter.usage("ann", now=NOON + 2))
        seen.append(await counter.reserve("ann", limits, now=NOON + 61, cost=0.3))  # the seed has left the minute
        try:
            await counter.reserve("ann", limits, now=NOON + 62)
        except BudgetExceededError:
            seen.append("day spent")  # 0.4667 + 0.25 + 0.3: the day counts the seed still
        counter.forget_seeds()
        seen.append(await counter.usage("ann", now=NOON + 62))
        return seen

    seen = run(scenario())
    assert seen[1] == 59.0  # the two of the seed leave the window 60 s after it
    assert seen[2] == {"requests_last_minute": 3, "tokens_last_minute": 50, "usd_today": pytest.approx(0.716666667)}
    assert seen[4] == "day spent"
    assert seen[5] == {"requests_last_minute": 1, "tokens_last_minute": 0, "usd_today": pytest.approx(0.55)}


def test_a_reservation_given_back_while_redis_is_down_is_taken_back_once_it_answers(server: Any):
    """``release`` of a Redis reservation Redis cannot hear is owed, as a settlement is, and sent as a
    take-back: the request, its tokens and its cost leave Redis's counts."""
    (counter,) = replicas(server.url, 1)
    limits = Limits(requests_per_minute=10, tokens_per_minute=1000, usd_per_day=5.0)

    async def scenario() -> tuple[int, dict[str, float]]:
        await counter.replicas.beat()
        refused = await counter.reserve("ann", limits, now=NOON, tokens=100, cost=1.0)
        await counter.reserve("ann", limits, now=NOON + 1, tokens=5, cost=0.5)
        server.stop()
        await counter.release(refused)  # Redis cannot hear it: owed
        owed = counter.owed
        server.restart()
        await until(lambda: counter.degraded_reason is None and counter.owed == 0, lambda: asyncio.sleep(0.02))
        usage = await counter.usage("ann", now=NOON + 2)
        await counter.aclose()
        return owed, usage

    owed, usage = run(scenario())
    assert owed == 1
    assert usage == {"requests_last_minute": 1, "tokens_last_minute": 5, "usd_today": 0.5}


# -- a reserve whose reply was lost ----------------------------------------------------------------


def test_a_reserve_whose_reply_was_lost_is_counted_once_when_it_lands_after_all(server: Any):
    """Redis frozen past the reply timeout: the replica counts the request locally — and the reserve it
    had sent runs once Redis wakes. Taken back (owed, then sent on the return), it leaves the request
    counted once: the local reservation, handed over. (It was counted twice: refused early after.)"""
    (counter,) = replicas(server.url, 1)
    limits = Limits(requests_per_minute=100, usd_per_day=5.0)

    async def scenario() -> tuple[Any, int, dict[str, float]]:
        await counter.replicas.beat()
        await counter.reserve("ann", limits, now=NOON, cost=0.5)  # in Redis
        server.freeze()
        try:
            lost = await counter.reserve("ann", limits, now=NOON + 1, cost=0.25)  # its reply never comes
            owed = counter.owed
        finally:
            server.thaw()  # ... and the script runs now
        await until(lambda: counter.degraded_reason is None and counter.owed == 0, lambda: asyncio.sleep(0.02))
        usage = await counter.usage("ann", now=NOON + 2)
        await counter.aclose()
        return lost, owed, usage

    lost, owed, usage = run(scenario())
    assert isinstance(lost.id, int) and owed == 1  # counted locally; its Redis twin owed a take-back
    assert usage == {"requests_last_minute": 2, "tokens_last_minute": 0, "usd_today": 0.75}


def test_a_take_back_that_overtakes_its_reserve_leaves_a_tombstone_the_reserve_obeys(redis_url: str):
    """The take-back can reach Redis first (another connection): the reserve that follows counts nothing."""
    from gtl_nb.engine.stores.base import Reservation as Kept
    from gtl_nb.engine.stores.redis_budget import _RESERVE

    counter = RedisBudgetCounter(redis_url)

    async def scenario() -> tuple[list[Any], dict[str, float]]:
        lost = Kept("lost-reply-id", "bea", 7, 0.25, NOON)
        await counter.release(lost)  # nothing to remove yet: a tombstone
        keys = counter._keys("bea", NOON)
        args = [lost.id, repr(NOON), "7", "250000000", repr(NOON - 60), repr(NOON - 2 * DAY), "0", "", "", "", "3600"]
        late = await counter.redis.run("test", lambda client: _RESERVE(client, keys, args))
        usage = await counter.usage("bea", now=NOON + 1)
        await counter.aclose()
        return late, usage

    late, usage = run(scenario())
    assert int(late[0]) == 2  # taken back before it landed
    assert usage == {"requests_last_minute": 0, "tokens_last_minute": 0, "usd_today": 0.0}


def test_a_take_back_owed_while_redis_already_answers_again_is_sent_at_once(redis_url: str):
    """A reserve's reply lost, and another call answered before its caller resumed: no recovery will
    come to send what is owed, so it goes at once (it waited for an outage that had ended)."""
    from gtl_nb.engine.stores.base import Reservation as Kept

    counter = RedisBudgetCounter(redis_url)

    async def scenario() -> tuple[int, dict[str, float]]:
        await counter.reserve("cy", Limits(), now=NOON)  # connections open, Redis answers
        lost = Kept("reply-lost-id", "cy", 0, 0.0, NOON)
        counter._owe_take_back(lost, counter._keys("cy", NOON))  # as _reserve_in_redis does, Redis up
        owed_then = counter.owed
        await until(lambda: counter.owed == 0, lambda: asyncio.sleep(0.01), seconds=5)
        usage = await counter.usage("cy", now=NOON + 1)
        await counter.aclose()
        return owed_then, usage

    owed_then, usage = run(scenario())
    assert owed_then == 1
    assert usage["requests_last_minute"] == 1  # the first reservation alone


def test_a_full_list_of_owed_writes_drops_a_settlement_before_a_take_back():
    from gtl_nb.engine.stores import redis_budget

    counter = RedisBudgetCounter("redis://127.0.0.1:9/0")
    keys = ["t", "s", "d", "v"]
    counter._owe("take-back", redis_budget._UNCOUNT, keys, ["take-back", "1.0", "60"])
    for index in range(redis_budget.MAX_OWED):
        counter._owe(f"s{index}", redis_budget._SETTLE, keys, [f"s{index}", "1", "", "60"])
    assert counter.owed == redis_budget.MAX_OWED and "take-back" in counter._owed and "s0" not in counter._owed
    counter.close()
