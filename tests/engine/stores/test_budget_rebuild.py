"""Budgets on a Redis that forgets (restarted empty, ``FLUSHALL``, a failover to an empty replica): the
replicas rebuild a principal's windows from the shared PostgreSQL ledger before they admit against them,
once, and never count a request twice. Real ``redis-server`` and PostgreSQL (the stores' fixtures)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from store_kit import run

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ratelimit import BudgetConfig, Limits
from gtl_nb.engine.stores import Stores, UsageLedger, open_stores
from gtl_nb.engine.stores.memory import MemoryUsageLedger
from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
from gtl_nb.engine.stores.redis_budget import RedisBudgetCounter
from gtl_nb.protocol.errors import BudgetExceededError, RateLimitError

NOON = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()
DAVE = RequestContext(principal="dave", tenant="acme")
COST = 0.0004  # three of them spend more than DAILY allows
DAILY = Limits(usd_per_day=0.001)
REPLICAS = 3


@pytest.fixture
def ledger(postgres_url: str, tmp_path: Path) -> Iterator[PostgresUsageLedger]:
    """The ledger the replicas share."""
    store = PostgresUsageLedger(postgres_url, spool_path=tmp_path / "spool.sqlite3")
    yield store
    run(store.aclose())


def replicas(url: str, ledger: UsageLedger | None, count: int = REPLICAS) -> list[RedisBudgetCounter]:
    """``count`` replicas' budget stores on one Redis, each its own pool, all reading ``ledger``."""
    made = []
    for index in range(count):
        counter = RedisBudgetCounter(f"{url}?client_name=replica-{index}", ledger=ledger)
        counter.replicas.id = f"host/{index}/test"
        made.append(counter)
    return made


async def closed(counters: list[RedisBudgetCounter]) -> None:
    for counter in counters:
        await counter.aclose()


async def request(
    counter: RedisBudgetCounter,
    ledger: UsageLedger,
    limits: Limits,
    now: float,
    *,
    cost: float = COST,
    context: RequestContext = DAVE,
    principal: str = "dave",
) -> bool:
    """One request as the engine makes it: reserved, its ledger row started and finished, settled;
    ``False`` when a limit refused it."""
    try:
        reservation = await counter.reserve(principal, limits, now=now, tokens=10, cost=cost)
    except (BudgetExceededError, RateLimitError):
        return False
    row = await ledger.start(session_id=f"s{now}", context=context, model="m", now=now)
    await ledger.finish(row, status="ok", deployment="d", cost=cost, tokens_in=4, tokens_out=6, now=now + 0.5)
    await counter.settle(reservation, tokens=10, cost=cost, now=now + 0.5)
    return True


def flushall(url: str) -> None:
    """What a Redis restarted without persistence holds: nothing."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def keys(url: str, pattern: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return list(client.keys(pattern))
    finally:
        client.close()


def delete(url: str, names: list[bytes]) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.delete(*names)
    finally:
        client.close()


def test_a_flushed_redis_still_refuses_what_the_ledger_says_was_spent_today(
    redis_url: str, ledger: PostgresUsageLedger, caplog: pytest.LogCaptureFixture
):
    async def scenario() -> None:
        counters = replicas(redis_url, ledger)
        try:
            assert [await request(counters[i], ledger, DAILY, NOON + i) for i in range(3)] == [True, True, True]
            assert not await request(counters[0], ledger, DAILY, NOON + 3)  # $0.0012 of $0.001
            await ledger.flush()
            flushall(redis_url)
            admitted = [await request(counters[i % REPLICAS], ledger, DAILY, NOON + 10 + i) for i in range(9)]
            assert admitted == [False] * 9
            lost = [record for record in caplog.records if "had lost the usage of 'dave'" in record.getMessage()]
            assert [record.levelname for record in lost] == ["WARNING"]  # once, by the replica that rebuilt
            usage = await counters[1].usage("dave", now=NOON + 20)
            assert usage["usd_today"] == pytest.approx(3 * COST)
        finally:
            await closed(counters)

    run(scenario())


@pytest.mark.parametrize("shared", ["postgresql", "sqlite"])
def test_replicas_opened_as_configured_refuse_after_redis_comes_back_empty(
    shared: str, redis_url: str, postgres_url: str, tmp_path: Path
):
    """The probe's case: ``[ledger] url`` and ``[budgets] backend = "redis://…"``, dave over his daily
    budget per the ledger, Redis emptied: none of his next 30 requests is admitted, on any replica."""
    url = postgres_url if shared == "postgresql" else f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    config = BudgetConfig(users={"dave": {"usd_per_day": 0.001}}, backend=redis_url)
    opened: list[Stores] = [
        open_stores(url, budgets=config, ledger_retention=None)
        for _ in range(REPLICAS if shared == "postgresql" else 1)
    ]
    limits = config.limits_for("dave")

    async def scenario() -> None:
        try:

            def replica(i: int) -> tuple[Any, Any]:
                return opened[i % len(opened)].budgets, opened[i % len(opened)].ledger

            assert [await request(*replica(i), limits, NOON + i) for i in range(4)] == [True] * 3 + [False]
            for stores in opened:
                await stores.ledger.flush()  # type: ignore[union-attr]
            flushall(redis_url)
            admitted = [await request(*replica(i), limits, NOON + 10 + i) for i in range(30)]
            assert admitted.count(True) == 0
        finally:
            for stores in opened:
                await stores.aclose()

    run(scenario())


@pytest.fixture
def server(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A ``redis-server`` of this test alone, without persistence: a restart empties it."""
    kit = sys.modules["gtl_nb_tests_redis_server"]  # loaded by the stores' conftest
    started = kit.RedisServer.start(tmp_path / "redis")
    try:
        yield started
    finally:
        started.stop()


async def back_on_redis(counter: RedisBudgetCounter) -> None:
    """Until ``counter`` counts in Redis again and has handed over what it counted alone."""
    deadline = time.monotonic() + 15
    while counter.degraded_reason is not None or counter.local.principals:
        assert time.monotonic() < deadline, "not back on Redis in time"
        await asyncio.sleep(0.02)


def test_an_outage_that_ends_in_an_empty_redis_forgets_nothing_the_ledger_has(server: Any, ledger: PostgresUsageLedger):
    """Redis stops (the replicas count alone, one of them admits a request) and comes back empty:
    the day is rebuilt from the ledger, that request included whichever comes first, the rebuild or
    the hand-over of what was counted alone — so no replica admits dave again."""
    limits = Limits(usd_per_day=1.0)
    spend = 0.25

    async def scenario() -> None:
        counters = replicas(server.url, ledger)
        for counter in counters:
            counter.outage.retry = 0.05
        try:
            for i in range(3):
                assert await request(counters[i], ledger, limits, NOON + i, cost=spend)
            server.stop()
            assert await request(counters[0], ledger, limits, NOON + 5, cost=spend)  # alone: its share has room
            assert counters[0].degraded_reason is not None
            server.restart()
            for counter in counters:
                await back_on_redis(counter)
            admitted = [await request(counters[i % REPLICAS], ledger, limits, NOON + 10 + i) for i in range(6)]
            assert admitted == [False] * 6
            usage = await counters[2].usage("dave", now=NOON + 20)
            assert usage["usd_today"] >= 4 * spend  # (the local one may count twice: a refusal sooner)
        finally:
            await closed(counters)

    run(scenario())


def test_a_flushed_redis_keeps_the_minute_the_ledger_holds(redis_url: str, ledger: PostgresUsageLedger):
    limits = Limits(requests_per_minute=3, tokens_per_minute=1000)

    async def scenario() -> None:
        counters = replicas(redis_url, ledger)
        try:
            assert [await request(counters[i], ledger, limits, NOON + i, cost=0.0) for i in range(3)] == [True] * 3
            flushall(redis_url)
            usage = await counters[0].usage("dave", now=NOON + 30)  # (usage rebuilds too)
            assert (usage["requests_last_minute"], usage["tokens_last_minute"]) == (3, 30)
            with pytest.raises(RateLimitError) as refused:
                await counters[2].reserve("dave", limits, now=NOON + 30)
            assert refused.value.retry_after == pytest.approx(31, abs=1)  # the oldest leaves at NOON + 60
            assert await request(counters[0], ledger, limits, NOON + 60.5, cost=0.0)  # it did leave
        finally:
            await closed(counters)

    run(scenario())


def test_replicas_rebuilding_at_once_count_the_ledger_once(redis_url: str, ledger: PostgresUsageLedger):
    limits = Limits(usd_per_day=1.0, requests_per_minute=100)

    async def scenario() -> None:
        counters = replicas(redis_url, ledger)
        try:
            for i in range(4):
                assert await request(counters[i % REPLICAS], ledger, limits, NOON + i)
            flushall(redis_url)
            at_once = [counters[i % REPLICAS].reserve("dave", limits, now=NOON + 10, cost=0.01) for i in range(12)]
            await asyncio.gather(*at_once)
            usage = await counters[0].usage("dave", now=NOON + 10)
            assert usage["requests_last_minute"] == 4 + 12
            assert usage["usd_today"] == pytest.approx(4 * COST + 12 * 0.01)
        finally:
            await closed(counters)

    run(scenario())


def test_a_lost_mark_alone_counts_nothing_twice(
    redis_url: str, ledger: PostgresUsageLedger, caplog: pytest.LogCaptureFixture
):
    """Keys Redis still holds (an evicted mark, keys of an earlier version) are not added to."""
    limits = Limits(usd_per_day=1.0, requests_per_minute=100)

    async def scenario() -> None:
        counters = replicas(redis_url, ledger)
        try:
            for i in range(3):
                assert await request(counters[i], ledger, limits, NOON + i)
            before = await counters[0].usage("dave", now=NOON + 5)
            marks = keys(redis_url, "*rebuilt*")
            assert len(marks) == 1
            delete(redis_url, marks)
            assert await request(counters[1], ledger, limits, NOON + 5, cost=0.0)
            after = await counters[0].usage("dave", now=NOON + 5)
            assert after["usd_today"] == pytest.approx(before["usd_today"])
            assert after["requests_last_minute"] == before["requests_last_minute"] + 1
            assert "had lost" not in caplog.text  # Redis had lost nothing: no warning
        finally:
            await closed(counters)

    run(scenario())


def test_an_evicted_day_total_is_rebuilt_though_its_mark_stayed(redis_url: str, ledger: PostgresUsageLedger):
    async def scenario() -> None:
        counters = replicas(redis_url, ledger)
        try:
            assert [await request(counters[i], ledger, DAILY, NOON + i) for i in range(3)] == [True] * 3
            delete(redis_url, keys(redis_url, "*:day:*"))
            assert keys(redis_url, "*rebuilt*")
            assert not await request(counters[1], ledger, DAILY, NOON + 10)
        finally:
            await closed(counters)

    run(scenario())


def test_a_tenants_shared_budget_is_rebuilt_from_its_members_rows(redis_url: str, ledger: PostgresUsageLedger):
    async def scenario() -> None:
        counters = replicas(redis_url, ledger)
        try:
            for i, name in enumerate(("ann", "bob", "cy")):
                member = RequestContext(principal=name, tenant="acme")
                assert await request(counters[i], ledger, DAILY, NOON + i, context=member, principal="tenant:acme")
            flushall(redis_url)
            with pytest.raises(BudgetExceededError):
                await counters[0].reserve("tenant:acme", DAILY, now=NOON + 10, cost=COST)
        finally:
            await closed(counters)

    run(scenario())


class FailingLedger(MemoryUsageLedger):
    """A ledger that cannot be read (PostgreSQL away)."""

    reads = 0

    async def rows(self, **filters: Any) -> list[dict[str, Any]]:
        FailingLedger.reads += 1
        raise OSError("the ledger is away")


def test_a_ledger_that_fails_is_not_asked_per_request(redis_url: str, caplog: pytest.LogCaptureFixture):
    async def scenario() -> None:
        counters = replicas(redis_url, FailingLedger(), count=1)
        try:
            for i in range(5):
                await counters[0].reserve("dave", DAILY, now=NOON + i, cost=COST / 10)
            usage = await counters[0].usage("dave", now=NOON + 5)
            assert usage["usd_today"] == pytest.approx(COST / 2)
        finally:
            await closed(counters)

    run(scenario())
    assert FailingLedger.reads == 1
    assert "could not read the ledger" in caplog.text


def test_without_a_ledger_nothing_is_rebuilt_nor_asked_for(redis_url: str):
    async def scenario() -> None:
        counters = replicas(redis_url, None, count=1)
        try:
            assert await counters[0].reserve("dave", DAILY, now=NOON, cost=COST)
            assert keys(redis_url, "*rebuilt*") == []
        finally:
            await closed(counters)

    run(scenario())
