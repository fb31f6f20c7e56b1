"""The ``BudgetCounter`` contract: reserve-then-settle, exact requests per minute, the overshoot bound."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from store_kit import run

from gtl_nb.engine.ratelimit import Limits
from gtl_nb.engine.stores import BudgetCounter, MemoryBudgetCounter, Reservation, SqliteBudgetCounter
from gtl_nb.engine.stores.redis_budget import KEEP_SECONDS, RedisBudgetCounter
from gtl_nb.protocol import BudgetExceededError, RateLimitError

NOON = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()
MIDNIGHT = datetime(2024, 3, 2, 0, 0, tzinfo=timezone.utc).timestamp()


def open_counter(backend: str, store_file: Path, request: pytest.FixtureRequest) -> BudgetCounter:
    if backend == "memory":
        return MemoryBudgetCounter()
    if backend == "sqlite":
        return SqliteBudgetCounter(store_file)
    return RedisBudgetCounter(request.getfixturevalue("redis_url"))


@pytest.fixture
def counter(backend: str, store_file: Path, request: pytest.FixtureRequest):
    store = open_counter(backend, store_file, request)
    yield store
    run(store.aclose())


def test_it_is_a_budget_counter(counter: BudgetCounter):
    assert isinstance(counter, BudgetCounter)


def test_requests_per_minute_are_counted_and_the_refused_one_is_not(counter: BudgetCounter):
    limits = Limits(requests_per_minute=3)

    async def scenario() -> tuple[RateLimitError, dict[str, float]]:
        for seconds_ago in (50.5, 30, 10):
            await counter.reserve("ann", limits, now=NOON - seconds_ago)
        with pytest.raises(RateLimitError) as refused:
            await counter.reserve("ann", limits, now=NOON)
        return refused.value, await counter.usage("ann", now=NOON)

    error, usage = run(scenario())
    assert (error.retryable, error.retry_after) == (True, 10.0)  # the request of 50.5 s ago leaves in 9.5 s
    assert "reached the limit of 3 requests per minute (3 in the last 60 s); retry in 10 s" in error.message
    assert usage["requests_last_minute"] == 3  # the refusal was not counted


def test_waiting_the_retry_after_given_is_enough(counter: BudgetCounter):
    limits = Limits(requests_per_minute=2)

    async def scenario() -> None:
        await counter.reserve("ann", limits, now=NOON)
        await counter.reserve("ann", limits, now=NOON)  # both at the same instant
        with pytest.raises(RateLimitError) as refused:
            await counter.reserve("ann", limits, now=NOON)
        wait = refused.value.retry_after
        assert wait == 61.0  # a request reserved at t is in the window up to and including t + 60
        with pytest.raises(RateLimitError):
            await counter.reserve("ann", limits, now=NOON + wait - 1)
        await counter.reserve("ann", limits, now=NOON + wait)

    run(scenario())


def test_concurrent_reserves_pass_exactly_the_limit(counter: BudgetCounter):
    limits = Limits(requests_per_minute=5)

    async def scenario() -> list[object]:
        attempts = [counter.reserve("ann", limits, now=NOON, tokens=10) for _ in range(20)]
        return await asyncio.gather(*attempts, return_exceptions=True)

    outcomes = run(scenario())
    assert sum(not isinstance(outcome, Exception) for outcome in outcomes) == 5
    assert all(isinstance(outcome, RateLimitError) for outcome in outcomes if isinstance(outcome, Exception))


def test_principals_are_counted_apart_and_unlimited_ones_too(counter: BudgetCounter):
    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        await counter.reserve("ann", Limits(requests_per_minute=1), now=NOON)
        await counter.reserve("bob", Limits(requests_per_minute=1), now=NOON)
        for _ in range(3):  # never refused, but counted: limits elsewhere (or later) must see them
            reservation = await counter.reserve("cy", Limits(), now=NOON, tokens=5)
            await counter.settle(reservation, tokens=50, cost=1.0)
        with pytest.raises(BudgetExceededError):
            await counter.reserve("cy", Limits(usd_per_day=2.0), now=NOON + 1)
        return await counter.usage("bob", now=NOON), await counter.usage("cy", now=NOON)

    bob, cy = run(scenario())
    assert bob["requests_last_minute"] == 1
    assert cy == {"requests_last_minute": 3, "tokens_last_minute": 150, "usd_today": 3.0}


def test_a_zero_limit_blocks_without_a_retry(counter: BudgetCounter):
    with pytest.raises(RateLimitError, match="may not send tokens") as refused:
        run(counter.reserve("ann", Limits(tokens_per_minute=0), now=NOON))
    assert refused.value.retryable is False and refused.value.retry_after is None


def test_tokens_count_the_estimate_until_settled_then_the_actual(counter: BudgetCounter):
    limits = Limits(tokens_per_minute=100)

    async def scenario() -> list[float]:
        seen = []
        first = await counter.reserve("ann", limits, now=NOON - 30, tokens=40)
        seen.append((await counter.usage("ann", now=NOON))["tokens_last_minute"])  # the estimate
        await counter.settle(first, tokens=120, cost=None)  # actual A > estimate E
        seen.append((await counter.usage("ann", now=NOON))["tokens_last_minute"])
        with pytest.raises(RateLimitError) as refused:  # the next reserve sees the settled value
            await counter.reserve("ann", limits, now=NOON, tokens=1)
        seen.append(refused.value.retry_after)
        second = await counter.reserve("ann", limits, now=NOON + 31, tokens=40)
        await counter.settle(second, tokens=None, cost=None)  # unknown: the estimate stays
        seen.append((await counter.usage("ann", now=NOON + 31))["tokens_last_minute"])
        return seen

    assert run(scenario()) == [40, 120, 31.0, 40]


def test_overshoot_is_bounded_by_the_last_admission_and_the_underestimates_in_flight(counter: BudgetCounter):
    """ratelimit's module docstring: usage < limit + e_last + sum over requests in flight of (actual - estimate)."""
    limit, estimate, actual = 100, 30, 50
    limits = Limits(tokens_per_minute=limit)

    async def scenario() -> tuple[int, float]:
        outcomes = await asyncio.gather(
            *(counter.reserve("ann", limits, now=NOON, tokens=estimate) for _ in range(10)), return_exceptions=True
        )
        admitted = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
        for reservation in admitted:  # all of them were in flight together
            await counter.settle(reservation, tokens=actual, cost=None)
        return len(admitted), (await counter.usage("ann", now=NOON))["tokens_last_minute"]

    admitted, used = run(scenario())
    assert admitted == 4  # admitted at 0, 30, 60 and 90 counted tokens
    assert used == admitted * actual > limit
    assert used < limit + estimate + admitted * (actual - estimate)


def test_the_daily_budget_is_spent_by_settled_costs_and_resets_at_utc_midnight(counter: BudgetCounter):
    limits = Limits(usd_per_day=1.0, requests_per_minute=100)

    async def scenario() -> BudgetExceededError:
        reservation = await counter.reserve("ann", limits, now=NOON, cost=0.1)
        await counter.settle(reservation, tokens=10, cost=1.5)
        with pytest.raises(BudgetExceededError) as refused:
            await counter.reserve("ann", limits, now=NOON + 3600)
        assert (await counter.usage("ann", now=NOON))["usd_today"] == 1.5
        await counter.reserve("ann", limits, now=MIDNIGHT)  # a new UTC day
        assert (await counter.usage("ann", now=MIDNIGHT))["usd_today"] == 0.0
        return refused.value

    error = run(scenario())
    assert error.retryable is False
    assert "daily budget of $1.00 for user 'ann' is used up: $1.5000 spent today" in error.message
    assert "resets at 2024-03-02 00:00 UTC (in 11 h 0 min)" in error.message


def test_settling_an_unknown_reservation_changes_nothing(counter: BudgetCounter):
    async def scenario() -> dict[str, float]:
        await counter.reserve("ann", Limits(), now=NOON, tokens=5)
        await counter.settle(Reservation(987_654, "ann", 5, 0.0, NOON), tokens=500, cost=5.0)
        return await counter.usage("ann", now=NOON)

    assert run(scenario())["tokens_last_minute"] == 5


def test_a_released_reservation_counts_nothing(counter: BudgetCounter):
    """``release``: a request refused before any provider was called gives back its request, its tokens
    and its cost — one still in the minute's totals, and one that left them but is in the day's."""
    limits = Limits(requests_per_minute=3, tokens_per_minute=1000, usd_per_day=5.0)

    async def scenario() -> list[dict[str, float]]:
        seen = []
        older = await counter.reserve("ann", limits, now=NOON - 90, tokens=10, cost=1.0)
        await counter.reserve("ann", limits, now=NOON - 10, tokens=100, cost=0.5)
        refused = await counter.reserve("ann", limits, now=NOON - 5, tokens=200, cost=0.25)
        await counter.reserve("ann", limits, now=NOON, tokens=300, cost=0.125)
        with pytest.raises(RateLimitError):  # three in the minute
            await counter.reserve("ann", limits, now=NOON)
        await counter.release(refused)
        seen.append(await counter.usage("ann", now=NOON))
        await counter.release(older)
        await counter.release(older)  # twice, and an unknown one: nothing more
        await counter.release(Reservation(987_654, "ann", 5, 5.0, NOON))
        seen.append(await counter.usage("ann", now=NOON))
        await counter.reserve("ann", limits, now=NOON, tokens=1)  # the place given back
        seen.append(await counter.usage("ann", now=NOON))
        return seen

    assert run(scenario()) == [
        {"requests_last_minute": 2, "tokens_last_minute": 400, "usd_today": 1.625},
        {"requests_last_minute": 2, "tokens_last_minute": 400, "usd_today": 0.625},
        {"requests_last_minute": 3, "tokens_last_minute": 401, "usd_today": 0.625},
    ]


# -- the SQLite implementation's own promises ------------------------------------------------------


def test_two_counters_on_one_file_share_the_counts(store_file: Path):
    limits = Limits(requests_per_minute=2)

    async def scenario() -> None:
        first, second = SqliteBudgetCounter(store_file), SqliteBudgetCounter(store_file)
        await first.reserve("ann", limits, now=NOON)
        await second.reserve("ann", limits, now=NOON)
        with pytest.raises(RateLimitError):
            await first.reserve("ann", limits, now=NOON)
        await first.aclose()
        await second.aclose()

    run(scenario())


@pytest.mark.parametrize("shared", ["sqlite", "redis"])
def test_a_cancelled_reserve_is_taken_back(shared: str, store_file: Path, request: pytest.FixtureRequest):
    limits = Limits(requests_per_minute=5)
    counter = open_counter(shared, store_file, request)

    async def scenario() -> float:
        task = asyncio.ensure_future(counter.reserve("ann", limits, now=NOON))
        await asyncio.sleep(0)  # the transaction (or the script) is under way
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(200):
            used = (await counter.usage("ann", now=NOON))["requests_last_minute"]
            if used == 0:
                break
            await asyncio.sleep(0.01)
        await counter.aclose()
        return used

    assert run(scenario()) == 0


# -- the Redis implementation's own promises: replicas share one exact count -----------------------


def test_two_replicas_admit_exactly_the_limit_between_them(replica_urls: tuple[str, str]):
    """50 reserves at one instant, alternating between two replicas' counters, against a limit of 20."""
    limits = Limits(requests_per_minute=20)

    async def scenario() -> tuple[list[object], dict[str, float], dict[str, float]]:
        one, two = RedisBudgetCounter(replica_urls[0]), RedisBudgetCounter(replica_urls[1])
        assert await one.redis.client() is not await two.redis.client()  # separate clients and pools
        attempts = [(one, two)[i % 2].reserve("ann", limits, now=NOON, tokens=3) for i in range(50)]
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        seen = await one.usage("ann", now=NOON), await two.usage("ann", now=NOON)
        await one.aclose()
        await two.aclose()
        return outcomes, *seen

    outcomes, by_one, by_two = run(scenario())
    assert sum(isinstance(outcome, Reservation) for outcome in outcomes) == 20
    assert all(isinstance(outcome, (Reservation, RateLimitError)) for outcome in outcomes)
    assert by_one == by_two == {"requests_last_minute": 20, "tokens_last_minute": 60, "usd_today": 0.0}


_REPLICA = """
import asyncio, sys
from gtl_nb.engine.ratelimit import Limits
from gtl_nb.engine.stores.redis_budget import RedisBudgetCounter

async def main(url, attempts, limit, now):
    counter = RedisBudgetCounter(url)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()
    tries = [counter.reserve("ann", Limits(requests_per_minute=limit), now=now) for _ in range(attempts)]
    outcomes = await asyncio.gather(*tries, return_exceptions=True)
    await counter.aclose()
    print(sum(not isinstance(outcome, Exception) for outcome in outcomes))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
"""


def test_replica_processes_share_the_limit(redis_url: str):
    """Three processes, 20 reserves each at one instant, against a limit of 25: 25 pass in total."""
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _REPLICA, redis_url, "20", "25", repr(NOON)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # release them together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        admitted = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            admitted.append(int(out.strip()))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert sum(admitted) == 25, admitted
    counter = RedisBudgetCounter(redis_url)
    assert run(counter.usage("ann", now=NOON))["requests_last_minute"] == 25
    run(counter.aclose())


def raw(url: str):
    """A plain redis-py client, to look at what the stores wrote."""
    import redis

    return redis.Redis.from_url(url)


def test_every_key_expires_on_its_own_and_old_reservations_are_forgotten(redis_url: str):
    async def scenario() -> None:
        counter = RedisBudgetCounter(redis_url)
        first = await counter.reserve("ann", Limits(), now=NOON, tokens=5, cost=0.25)
        await counter.settle(first, tokens=7, cost=0.5)
        await counter.reserve("ann", Limits(), now=NOON + 3 * 86_400)  # three days later
        await counter.aclose()

    run(scenario())
    client = raw(redis_url)
    try:
        keys = sorted(key.decode() for key in client.keys("gtl:budget:*"))
        assert keys == [
            "gtl:budget:{ann}:day:1709251200",  # 2024-03-01: the first reservation's day
            "gtl:budget:{ann}:spends",
            "gtl:budget:{ann}:times",
        ]
        assert all(0 < client.ttl(key) <= KEEP_SECONDS for key in keys)
        assert client.zcard("gtl:budget:{ann}:times") == 1
        spends = client.hgetall("gtl:budget:{ann}:spends")
        assert [field for field in spends if not field.startswith(b"=")] == client.zrange(
            "gtl:budget:{ann}:times", 0, -1
        )
        assert (spends[b"=requests"], spends[b"=tokens"], spends[b"=members"]) == (b"1", b"0", b"1")  # the newest
        assert client.get("gtl:budget:{ann}:day:1709251200") == b"500000000"  # the settled cost, in nano-USD
    finally:
        client.close()


def test_principals_with_odd_names_keep_apart(redis_url: str):
    async def scenario() -> list[dict[str, float]]:
        counter = RedisBudgetCounter(redis_url)
        await counter.reserve("tenant:acme", Limits(requests_per_minute=1), now=NOON)
        await counter.reserve("tenant:acme}:x", Limits(requests_per_minute=1), now=NOON)
        seen = [await counter.usage(name, now=NOON) for name in ("tenant:acme", "tenant:acme}:x", "tenant")]
        await counter.aclose()
        return seen

    assert [usage["requests_last_minute"] for usage in run(scenario())] == [1, 1, 0]


def test_the_key_prefix_separates_deployments_on_one_server(redis_url: str):
    limits = Limits(requests_per_minute=1)

    async def scenario() -> None:
        staging, production = (RedisBudgetCounter(f"{redis_url}?key_prefix={name}:") for name in ("stg", "prd"))
        await staging.reserve("ann", limits, now=NOON)
        await production.reserve("ann", limits, now=NOON)  # its own count
        with pytest.raises(RateLimitError):
            await staging.reserve("ann", limits, now=NOON)
        await staging.aclose()
        await production.aclose()

    run(scenario())


# -- every counter decides as ratelimit.refusal does on the whole minute -----------------------------


def _random_budget_steps(seed: int, count: int) -> list[tuple[str, float, int, float, Limits]]:
    """Reserves (now and then with a clock a little behind), settlements and usage reads over two hours."""
    import random

    chance = random.Random(seed)
    choices = [
        Limits(requests_per_minute=6),
        Limits(tokens_per_minute=400),
        Limits(usd_per_day=30.0, requests_per_minute=9),
        Limits(),
    ]
    steps, now = [], NOON
    for _ in range(count):
        now += chance.choice([0.0, 0.5, 2.0, 7.5, 20.0, 65.0]) if chance.random() < 0.9 else -chance.choice([0.25, 3.0])
        verb = chance.choices(["reserve", "settle", "usage"], weights=[6, 3, 1])[0]
        steps.append(
            (verb, now, chance.choice([0, 10, 60, 150]), chance.choice([0.0, 0.25, 1.5]), chance.choice(choices))
        )
    return steps


class _Reference:
    """The old way: every reservation kept, the whole minute and day read at each check."""

    def __init__(self) -> None:
        from gtl_nb.engine.ratelimit import Spend, refusal, utc_day_start

        self.records: list[list[float]] = []
        self.spend, self.refusal, self.day = Spend, refusal, utc_day_start

    def decide(self, limits: Limits, now: float) -> Exception | None:
        minute = [self.spend(at, tokens) for at, tokens, _ in self.records if at >= now - 60]
        spent = sum(cost for at, _, cost in self.records if self.day(at) == self.day(now))
        return self.refusal("ann", limits, now=now, minute=minute, spent_today=spent)

    def usage(self, now: float) -> dict[str, float]:
        minute = [(at, tokens) for at, tokens, _ in self.records if at >= now - 60]
        spent = sum(cost for at, _, cost in self.records if self.day(at) == self.day(now))
        return {
            "requests_last_minute": len(minute),
            "tokens_last_minute": sum(t for _, t in minute),
            "usd_today": spent,
        }


@pytest.mark.parametrize("seed", [7, 8])
def test_every_check_decides_as_the_whole_minute_would(counter: BudgetCounter, seed: int):
    """Running totals (memory, Redis) and sums (SQLite) against the old full read, step by step."""
    reference = _Reference()

    async def scenario() -> tuple[list[object], list[object]]:
        import random

        pick = random.Random(seed)
        seen: list[object] = []
        expected: list[object] = []
        admitted: list[tuple[Reservation, list[float]]] = []
        for verb, now, tokens, cost, limits in _random_budget_steps(seed, 400):
            if verb == "reserve":
                refused = reference.decide(limits, now)
                expected.append(None if refused is None else (type(refused).__name__, refused.message))
                try:
                    reservation = await counter.reserve("ann", limits, now=now, tokens=tokens, cost=cost)
                except (RateLimitError, BudgetExceededError) as exc:
                    seen.append((type(exc).__name__, exc.message))
                else:
                    seen.append(None)
                    record = [now, tokens, cost]
                    reference.records.append(record)
                    admitted.append((reservation, record))
            elif verb == "settle" and admitted:
                reservation, record = pick.choice(admitted)
                actual_tokens = pick.choice([None, tokens])
                actual_cost = pick.choice([None, cost])
                await counter.settle(reservation, tokens=actual_tokens, cost=actual_cost)
                record[1] = record[1] if actual_tokens is None else actual_tokens
                record[2] = record[2] if actual_cost is None else actual_cost
            elif verb == "usage":
                seen.append(await counter.usage("ann", now=now))
                expected.append(reference.usage(now))
        assert getattr(counter, "degraded_reason", None) is None  # Redis answered every call itself
        return seen, expected

    seen, expected = run(scenario())
    assert seen == expected
    assert 20 < sum(outcome is not None and not isinstance(outcome, dict) for outcome in seen) < 300


def _fill(url: str, principal: str, count: int, first: float, last: float) -> None:
    """Reservations written straight into the keys, without running totals (as an earlier version left them)."""
    client = raw(url)
    try:
        pipe = client.pipeline(transaction=False)
        for index in range(count):
            pipe.zadd(f"gtl:budget:{{{principal}}}:times", {f"old-{index}": first + (last - first) * index / count})
            pipe.hset(f"gtl:budget:{{{principal}}}:spends", f"old-{index}", "10 0")
        pipe.execute()
    finally:
        client.close()


def test_a_check_reads_no_reservation_of_the_minute_one_by_one(redis_url: str):
    """5,000 reservations in the minute, kept by an earlier version: counted once, then never read again."""
    _fill(redis_url, "ann", 5000, NOON - 50, NOON)
    client = raw(redis_url)
    limits = Limits(requests_per_minute=5100, tokens_per_minute=10**9)

    async def scenario() -> tuple[dict[str, float], dict[str, int]]:
        counter = RedisBudgetCounter(redis_url)
        await counter.reserve("ann", limits, now=NOON + 0.001, tokens=10)  # counts the 5,000 once
        client.config_resetstat()
        for index in range(9):  # none of the 5,000 leaves the minute yet
            await counter.reserve("ann", limits, now=NOON + 1 + index, tokens=10)
        stats = {name: int(value["calls"]) for name, value in client.info("commandstats").items()}
        for index in range(9, 30):  # now they leave, about 100 a second: each read once, as it leaves
            await counter.reserve("ann", limits, now=NOON + 1 + index, tokens=10)
        usage = await counter.usage("ann", now=NOON + 30)
        await counter.aclose()
        return usage, stats

    try:
        usage, stats = run(scenario())
    finally:
        client.close()
    assert stats["cmdstat_hmget"] == 9  # the running totals alone; reading the minute is 1 per 1,000
    assert stats["cmdstat_zrangebyscore"] == 18  # what left the minute, what is a day old: nothing
    in_minute = sum(1 for index in range(5000) if NOON - 50 + 50 * index / 5000 >= NOON + 30 - 60)
    assert usage == {
        "requests_last_minute": in_minute + 31,
        "tokens_last_minute": (in_minute + 31) * 10,
        "usd_today": 0.0,
    }


def test_keys_of_an_earlier_version_are_counted_exactly(redis_url: str):
    _fill(redis_url, "ann", 30, NOON - 59, NOON - 1)
    limits = Limits(requests_per_minute=32)

    async def scenario() -> tuple[list[bool], float | None]:
        counter = RedisBudgetCounter(redis_url)
        admitted = []
        for _ in range(3):
            try:
                await counter.reserve("ann", limits, now=NOON)
                admitted.append(True)
            except RateLimitError as exc:
                admitted.append(False)
                wait = exc.retry_after
        await counter.aclose()
        return admitted, wait

    assert run(scenario()) == ([True, True, False], 2.0)  # the oldest, at NOON - 59, is counted up to NOON + 1


def test_a_clock_a_little_behind_counts_the_reservations_it_has_not_seen_leave(counter: BudgetCounter):
    limits = Limits(requests_per_minute=2)

    async def scenario() -> list[bool]:
        await counter.reserve("ann", limits, now=NOON - 60.2)
        await counter.reserve("bob", limits, now=NOON)  # another principal: nothing of ann's moves
        await counter.reserve("ann", limits, now=NOON - 0.1)  # the first is 59.9 s old: still counted
        outcomes = []
        for now in (NOON, NOON - 0.3, NOON + 0.5):  # 60.2, 59.9, 60.7 s after the first
            try:
                await counter.reserve("ann", limits, now=now)
                outcomes.append(True)
            except RateLimitError:
                outcomes.append(False)
        return outcomes

    # at NOON the first has left (60.2 s); at NOON - 0.3, a clock behind, it is back in its minute
    assert run(scenario()) == [True, False, False]
