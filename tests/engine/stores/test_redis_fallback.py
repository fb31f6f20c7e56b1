"""The Redis stores while their server is away: budgets counted locally under a share of each limit,
breakers kept locally, the cache skipped, revocations answered from the last list read — one warning
each, a ``degraded_reason`` naming the server without its password — and back to Redis when it
answers again. Every scenario stops and restarts a real ``redis-server`` of its own."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_kit import run

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.cache import CachedAnswer
from gtl_nb.engine.ratelimit import Limits, utc_day_start
from gtl_nb.engine.stores.memory import MemoryBudgetCounter
from gtl_nb.engine.stores.redis import RedisBreakerStore, RedisBudgetCounter, RedisResponseCache
from gtl_nb.engine.stores.redis_budget import local_limits
from gtl_nb.engine.stores.replicas import ReplicaRegistry
from gtl_nb.protocol.errors import RateLimitError

CANARY = "canary-pw-5d1e"  # the server's password: it must appear in no message


@pytest.fixture
def server(redis_server: Any, tmp_path: Path) -> Iterator[Any]:
    """A ``redis-server`` of this test alone (so it may be stopped), with a password and an append-only
    file (its data survives a restart). ``redis_server`` first: it skips or fails without redis-server."""
    kit = sys.modules["gtl_nb_tests_redis_server"]  # loaded by conftest.py
    started = kit.RedisServer.start(tmp_path / "redis", password=CANARY, appendonly=True)
    try:
        yield started
    finally:
        started.stop()


def raw(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


async def until(done: Callable[[], bool], poke: Callable[[], Awaitable[Any]], seconds: float = 15.0) -> None:
    """Call ``poke`` (a request, which starts a due probe) until ``done()``; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "Redis was not noticed back in time"
        await poke()
        await asyncio.sleep(0.02)


def messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


def outage_and_return(caplog: pytest.LogCaptureFixture, store: str) -> tuple[list[str], list[str]]:
    """The warnings of ``store`` (its prefix) that an outage began, and those that Redis answers again:
    both ends are warnings, so an operator at the default level sees the end of what it saw begin."""
    warnings = messages(caplog, logging.WARNING, store)
    back = [message for message in warnings if "answers again" in message]
    return [message for message in warnings if message not in back], back


# -- the share of each limit ------------------------------------------------------------------------


def test_local_limits_divide_and_round_down_but_never_below_one():
    limits = Limits(requests_per_minute=10, tokens_per_minute=1000, usd_per_day=3.0)
    assert local_limits(limits, 1) is limits
    assert local_limits(limits, 3) == Limits(requests_per_minute=3, tokens_per_minute=333, usd_per_day=1.0)
    assert local_limits(Limits(requests_per_minute=2), 3) == Limits(requests_per_minute=1)  # not 0: still serves
    assert local_limits(Limits(requests_per_minute=0), 3) == Limits(requests_per_minute=0)  # 0 still blocks
    assert local_limits(Limits(), 5) == Limits()


# -- the live replicas -----------------------------------------------------------------------------------


def test_replicas_count_each_other_and_forget_the_silent_and_the_closed(server: Any):
    from gtl_nb.engine.stores.redis_client import RedisConnector

    now = [1_000_000.0]
    one, two = (RedisConnector(server.url, what="test") for _ in range(2))
    first = ReplicaRegistry(one, replica="one", wall_clock=lambda: now[0])
    second = ReplicaRegistry(two, replica="two", wall_clock=lambda: now[0])

    async def scenario() -> list[int]:
        counts = [await first.beat(), await second.beat()]
        first.keep_beating()  # a task: aclose takes the entry out only of a replica that beat on its own
        await asyncio.sleep(0.05)
        await first.aclose()
        counts.append(await second.beat())
        client = await two.client()
        await client.zadd(second.key, {"silent": now[0] - 20})  # a replica that died 20 s ago
        counts.append(await second.beat())
        await one.aclose()
        await two.aclose()
        return counts

    assert run(scenario()) == [1, 2, 1, 1]


def test_a_replica_of_another_fleet_on_the_same_keys_is_warned_of_once(server: Any, caplog: pytest.LogCaptureFixture):
    """Two fleets (other token issuers) on one Redis without their own key_prefix share budgets, cache,
    breakers and revocations silently: the live-replica registry carries each one's fleet mark, and a
    replica that sees another mark says so, with the fix — once. Unmarked entries are not compared."""
    from gtl_nb.engine.stores.redis_client import RedisConnector
    from gtl_nb.engine.stores.replicas import fleet_mark

    caplog.set_level(logging.WARNING, logger="gtl_nb")
    connectors = [RedisConnector(server.url, what="test") for _ in range(4)]
    prod, prod_b, staging, embedded = (
        ReplicaRegistry(connectors[0], replica="a", fleet=fleet_mark("https://gw.example.com")),
        ReplicaRegistry(connectors[1], replica="b", fleet=fleet_mark("https://gw.example.com")),
        ReplicaRegistry(connectors[2], replica="s", fleet=fleet_mark("https://staging.example.com")),
        ReplicaRegistry(connectors[3], replica="e"),
    )

    async def scenario() -> None:
        await embedded.beat()
        await prod.beat()
        await prod_b.beat()  # same fleet, and an unmarked entry: nothing to say
        assert not messages(caplog, logging.WARNING, "another fleet")
        await staging.beat()
        await prod.beat()
        await prod.beat()
        for connector in connectors:
            await connector.aclose()

    run(scenario())
    warned = messages(caplog, logging.WARNING, "another fleet")
    assert len(warned) == 2  # staging's, and prod's once however often it beats
    assert "holds 2 replica(s) of another fleet" in warned[0] and "holds 1 replica(s) of another fleet" in warned[1]
    assert "key_prefix" in warned[0] and CANARY not in " ".join(warned)


# -- budgets -------------------------------------------------------------------------------------------


def test_budgets_fall_back_to_a_share_of_each_limit_and_go_back_to_redis(server: Any, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="gtl_nb")
    counter = RedisBudgetCounter(server.url)
    counter.outage.retry = 0.05  # probe often: the test need not wait a second per look
    limits = Limits(requests_per_minute=9)
    client = raw(server.url)
    now = time.time()

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        first = await counter.reserve("ann", limits, now=now, cost=0.5)  # counted in Redis
        client.zadd("gtl:replicas", {"fake-a": time.time(), "fake-b": time.time()})  # two more replicas
        seen["replicas"] = await counter.replicas.beat()
        server.stop()
        outcomes: list[Any] = []
        for _ in range(5):  # a third of 9 each, from a third of the 1 Redis counted: 2 served, then refused
            try:
                outcomes.append(await counter.reserve("ann", limits, now=now + 1))
            except RateLimitError as refused:
                outcomes.append(refused)
        seen["outcomes"] = outcomes
        seen["reason"] = counter.degraded_reason
        await counter.settle(outcomes[0], tokens=10, cost=0.01)  # a local reservation: settled locally
        await counter.settle(first, tokens=100, cost=0.25)  # a Redis one: owed until Redis answers
        seen["owed"] = counter.owed
        seen["usage_down"] = await counter.usage("ann", now=now + 1)
        server.restart()
        await until(lambda: counter.degraded_reason is None, lambda: counter.usage("ann", now=now + 2))
        await until(lambda: counter.owed == 0, lambda: asyncio.sleep(0.02))
        seen["back"] = await counter.reserve("ann", limits, now=now + 2)
        seen["usage_back"] = await counter.usage("ann", now=now + 2)
        await counter.aclose()
        return seen

    try:
        seen = run(scenario())
        day = f"gtl:budget:{{ann}}:day:{int(utc_day_start(now))}"
        in_redis = (client.zcard("gtl:budget:{ann}:times"), int(client.get(day)))
    finally:
        client.close()
    assert seen["replicas"] == 3
    served = [outcome for outcome in seen["outcomes"] if not isinstance(outcome, Exception)]
    assert len(served) == 2 and all(isinstance(r.id, int) for r in served)  # the memory counter's ids
    assert all(isinstance(outcome, RateLimitError) for outcome in seen["outcomes"][2:])
    reason = seen["reason"]
    assert reason.startswith(f"Redis at redis://:***@127.0.0.1:{server.port}/0 is unreachable")
    assert "divided by 3 live replicas" in reason and "\n" not in reason
    # owed: the settlement, and the take-back of the reserve that found Redis gone (it cannot tell a
    # reserve that never left from one whose reply was lost: a tombstone for nothing is harmless)
    assert seen["owed"] == 2 and seen["usage_down"]["requests_last_minute"] == 3  # its share of Redis's 1, and 2
    assert isinstance(seen["back"].id, str)  # counted in Redis again
    assert seen["usage_back"]["requests_last_minute"] == 4  # the first, the 2 local ones handed over, the last
    assert seen["usage_back"]["usd_today"] == pytest.approx(0.26)  # the owed settlement landed, and the local $0.01
    assert in_redis == (4, 260_000_000)
    assert counter.local.principals == 0 and counter.local.reservations == 0  # nothing left behind
    warnings, back = outage_and_return(caplog, "budgets:")
    assert len(warnings) == 1 and "divided by 3 live replicas" in warnings[0]
    assert len(back) == 1 and back[0].startswith(f"budgets: Redis at redis://:***@127.0.0.1:{server.port}/0 answers")
    assert messages(caplog, logging.INFO, "answers again") == []  # a warning, not an info line
    assert CANARY not in caplog.text and CANARY not in reason


def test_a_dead_redis_adds_no_wait_to_requests_between_probes(server: Any):
    """After the first failure, requests are counted locally at once; a probe runs in the background."""
    counter = RedisBudgetCounter(server.url)
    server.stop()

    async def scenario() -> float:
        await counter.reserve("ann", Limits(), now=time.time())  # notices the outage
        started = time.monotonic()
        for _ in range(200):
            await counter.reserve("ann", Limits(), now=time.time())
        elapsed = time.monotonic() - started
        await counter.aclose()
        return elapsed

    assert run(scenario()) < 1.0
    assert isinstance(counter.local, MemoryBudgetCounter)


def test_a_frozen_redis_holds_one_request_one_timeout_and_every_store_of_it_falls_back_at_once(server: Any):
    """A server that stops answering (SIGSTOP: the port accepts, nothing replies) costs the request that
    finds it one reply timeout — not one per retry, nor one per store: the first store to find the server
    gone tells the others of the same server, so /readyz names them all before they are called — the
    coalescing registry too, though it reaches the server through a pool of its own."""
    from gtl_nb.engine.stores.redis_client import REPLY_TIMEOUT
    from gtl_nb.engine.stores.redis_flights import RedisFlights

    counter = RedisBudgetCounter(server.url)
    cache = RedisResponseCache(server.url)
    breakers = RedisBreakerStore(server.url, BreakerConfig())
    flights = RedisFlights(server.url)
    for store in (counter, cache, breakers, flights):
        store.outage.retry = 0.05

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await counter.reserve("ann", Limits(), now=time.time())  # connections open, Redis answers
        assert await cache.get("k") is None and await breakers.acquire("oa") == "pass"
        server.freeze()
        try:
            started = time.monotonic()
            await counter.reserve("ann", Limits(), now=time.time())
            seen["first"] = time.monotonic() - started
            seen["reasons"] = [store.degraded_reason for store in (counter, cache, breakers, flights)]
            started = time.monotonic()
            seen["cache"] = await cache.get("k")
            seen["breakers"] = await breakers.acquire("oa")
            seen["others"] = time.monotonic() - started
        finally:
            server.thaw()
        await until(
            lambda: all(s.degraded_reason is None for s in (counter, cache, breakers, flights)),
            lambda: asyncio.sleep(0.02),
        )
        for store in (counter, cache, breakers, flights):
            await store.aclose()
        return seen

    seen = run(scenario())
    assert REPLY_TIMEOUT * 0.9 < seen["first"] < REPLY_TIMEOUT * 1.9, seen  # one timeout (two took 2.1 s)
    assert all(reason and "unreachable" in reason and CANARY not in reason for reason in seen["reasons"]), seen
    assert seen["cache"] is None and seen["breakers"] == "pass" and seen["others"] < 0.2, seen


def test_an_outage_is_told_only_to_the_stores_of_the_same_engines_loop(server: Any):
    """Two engines in one process sharing a Redis URL (two embedded clients): a failure found on one's
    loop marks that engine's stores, never the other's — whose probe and recovery belong to its loop."""
    theirs = RedisResponseCache(server.url)
    ours_first, ours_too = RedisBudgetCounter(server.url), RedisResponseCache(server.url)
    run(theirs.get("k"))  # used on a loop of its own (another engine's), while Redis answers
    server.freeze()
    try:

        async def here() -> None:
            await ours_first.reserve("ann", Limits(), now=time.time())

        run(here())
    finally:
        server.thaw()
    assert ours_first.degraded_reason is not None and ours_too.degraded_reason is not None  # (never used: told)
    assert theirs.degraded_reason is None
    for store in (theirs, ours_first, ours_too):
        run(store.aclose())


# -- breakers and the cache ------------------------------------------------------------------------------


def test_breakers_are_kept_locally_while_redis_is_down(server: Any, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="gtl_nb")
    breakers = RedisBreakerStore(server.url, BreakerConfig(failure_threshold=2))
    breakers.outage.retry = 0.05

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {"before": await breakers.acquire("oa")}
        server.stop()
        seen["changes"] = [await breakers.record_failure("oa"), await breakers.record_failure("oa")]
        seen["open"] = await breakers.acquire("oa")
        seen["snapshot"] = (await breakers.snapshots(["oa"]))["oa"]
        seen["reason"] = breakers.degraded_reason
        server.restart()
        await until(lambda: breakers.degraded_reason is None, lambda: asyncio.sleep(0.02))  # no traffic needed
        seen["shared"] = await breakers.acquire("oa")  # Redis's state: never opened there
        await breakers.aclose()
        return seen

    seen = run(scenario())
    assert seen["before"] == "pass" and seen["changes"] == [None, ("closed", "open")]
    assert seen["open"] is None and seen["snapshot"]["state"] == "open" and seen["snapshot"]["allowed"] is False
    assert "kept by this replica alone" in seen["reason"] and CANARY not in seen["reason"]
    assert seen["shared"] == "pass"
    warnings, back = outage_and_return(caplog, "breakers:")
    assert len(warnings) == 1 and len(back) == 1 and back[0].endswith("circuit breakers are shared again")
    assert CANARY not in caplog.text


def test_the_cache_is_skipped_without_an_error_or_a_log_line_per_request(server: Any, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="gtl_nb")
    cache = RedisResponseCache(server.url)
    cache.outage.retry = 0.05
    answer = CachedAnswer(events=[], deployment="oa", model="m", stored_at=0.0)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        server.stop()
        for number in range(50):  # never raises, whatever the call
            await cache.set(f"k{number}", answer)
            assert await cache.get(f"k{number}") is None
            await cache.delete(f"k{number}")
        seen["reason"] = cache.degraded_reason
        server.restart()
        await until(lambda: cache.degraded_reason is None, lambda: cache.get("k"))
        await cache.set("k", answer)
        seen["back"] = await cache.get("k")
        await cache.aclose()
        return seen

    seen = run(scenario())
    assert "every lookup is a miss" in seen["reason"]
    assert seen["back"] == answer
    warnings, back = outage_and_return(caplog, "cache")
    assert len(warnings) == 1 and len(back) == 1  # one for the outage and one for its end, not one per request


# -- revocations -------------------------------------------------------------------------------------


def test_revocations_answer_from_the_last_list_read_while_redis_is_down(server: Any, caplog: pytest.LogCaptureFixture):
    from gtl_nb.gateway.tokens.redis_revocations import RedisRevocationList, RevocationStoreError

    def eventually(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15.0
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    caplog.set_level(logging.INFO, logger="gtl_nb")
    now = time.time()
    with RedisRevocationList(server.url, refresh=0.2) as revocations:
        revocations.revoke("jti-gone", now + 3600)
        server.stop()
        # the list's watcher notices, without a token: /readyz turns degraded on its own
        eventually(lambda: revocations.degraded_reason is not None, "the outage was not noticed")
        answers = [revocations.is_revoked("jti-gone"), revocations.is_revoked("jti-fine")]  # no error: from memory
        reason = revocations.degraded_reason
        with pytest.raises(RevocationStoreError):
            revocations.revoke("jti-new", now + 3600)  # an operator is told
        server.restart()
        eventually(lambda: revocations.degraded_reason is None, "Redis was not noticed back")  # and ready again
        assert answers == [True, False] and revocations.is_revoked("jti-gone") is True
        assert reason is not None and "1 revocations read at" in reason and CANARY not in reason
    warnings, back = outage_and_return(caplog, "token revocations:")
    assert len(warnings) == 1 and back == [
        f"token revocations: Redis at redis://:***@127.0.0.1:{server.port}/0 answers again; "
        "the revocation list is current"
    ]
    assert messages(caplog, logging.INFO, "answers again") == []  # a warning, not an info line


# -- a Redis that answers but refuses -------------------------------------------------------------------


def _outage(url: str) -> Any:
    from gtl_nb.engine.stores.redis_client import RedisConnector
    from gtl_nb.engine.stores.redis_fallback import RedisOutage

    connector = RedisConnector(url, what="test")
    return RedisOutage(connector, store="teststore", meanwhile=lambda: "kept here", back="shared again", retry=0.05)


async def _watch(outage: Any, operation: Callable[[Any], Awaitable[Any]], seconds: float) -> int:
    """Call ``operation`` through ``outage`` whenever it is usable, for ``seconds``: how often it failed."""
    from gtl_nb.engine.stores.redis_client import RedisUnavailableError

    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if outage.usable():
            try:
                await outage.call("writing", operation)
            except RedisUnavailableError:
                failures += 1
        await asyncio.sleep(0.01)
    return failures


@pytest.mark.parametrize("refusal", ["oom", "readonly"])
def test_a_redis_that_answers_ping_but_refuses_writes_is_one_outage_not_one_a_second(
    server: Any, caplog: pytest.LogCaptureFixture, refusal: str
):
    """Out of memory under ``noeviction``, or a replica after a fail-over: ``PING`` answers, every write
    is refused. The probe writes, so the store stays on its fallback until writes work again."""
    caplog.set_level(logging.INFO, logger="gtl_nb")
    outage = _outage(server.url)
    client = raw(server.url)

    async def scenario() -> tuple[int, bool, bool]:
        await outage.call("writing", lambda redis: redis.set("gtl:k", "v"))
        if refusal == "oom":
            client.config_set("maxmemory-policy", "noeviction")
            client.set("ballast", "x" * 2_000_000)
            client.config_set("maxmemory", "1mb")
        else:
            client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a master that is not there: read-only
        try:
            failures = await _watch(outage, lambda redis: redis.set("gtl:k", "v"), 1.0)
            still = outage.down
        finally:
            if refusal == "oom":
                client.config_set("maxmemory", "0")
            else:
                client.execute_command("REPLICAOF", "NO", "ONE")
        await until(lambda: not outage.down, lambda: asyncio.sleep(0.02))
        await outage.aclose()
        await outage.connector.aclose()
        return failures, still, outage.down

    try:
        failures, still, down = run(scenario())
    finally:
        client.close()
    assert failures == 1 and still, f"{failures} failures in a second: it went back and forth"
    assert not down
    warnings, back = outage_and_return(caplog, "teststore:")
    assert len(warnings) == 1 and len(back) == 1  # back once writes work again


def test_a_failure_that_returns_right_after_redis_answered_again_is_the_same_outage(
    server: Any, caplog: pytest.LogCaptureFixture
):
    """A store's command that keeps failing while Redis itself works (a probe's write succeeds): each
    return is followed by the same failure. One warning for all of it, and the probe backs off."""
    caplog.set_level(logging.INFO, logger="gtl_nb")
    outage = _outage(server.url)
    client = raw(server.url)
    client.set("gtl:text", "not a list")

    async def scenario() -> int:
        failures = await _watch(outage, lambda redis: redis.lpush("gtl:text", "x"), 1.5)  # WRONGTYPE, every time
        await outage.aclose()
        await outage.connector.aclose()
        return failures

    try:
        failures = run(scenario())
    finally:
        client.close()
    assert 2 <= failures <= 6, f"{failures} failures in 1.5 s, probing every 0.05 s: the probe did not back off"
    warnings, back = outage_and_return(caplog, "teststore:")
    assert len(warnings) == 1 and len(back) <= 1  # the relapses say nothing more


class _SwallowingConnector:
    """A connector whose commands swallow a cancellation, as redis-py's asyncio client can mid-command."""

    shown = "redis://127.0.0.1:1/0"
    client_url = "redis://127.0.0.1:1/0"
    server = "redis://127.0.0.1:1/0?db="
    prefix = "gtl:"
    closed = False

    def __init__(self) -> None:
        self.calls = 0

    async def run(self, what: str, operation: Any) -> Any:
        from gtl_nb.engine.stores.redis_client import RedisUnavailableError

        self.calls += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # swallowed
        raise RedisUnavailableError("Redis is still down")


def test_a_probe_cancelled_while_the_client_swallows_the_cancellation_still_ends():
    """Otherwise the probe would go on forever and hold asyncio.run's end (as a CI run once hung)."""
    from gtl_nb.engine.stores.redis_client import RedisUnavailableError
    from gtl_nb.engine.stores.redis_fallback import RedisOutage

    connector = _SwallowingConnector()

    async def scenario() -> None:
        outage = RedisOutage(connector, store="budgets", meanwhile=lambda: "local", back="Redis", retry=0.01)  # type: ignore[arg-type]
        outage.failed(RedisUnavailableError("connection refused"))
        probe = outage._probe
        assert probe is not None
        while connector.calls == 0:
            await asyncio.sleep(0.005)
        probe.cancel()
        done, _ = await asyncio.wait({probe}, timeout=5)
        assert done == {probe}, "the probe carried on after its cancellation was swallowed"
        assert connector.calls == 1

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_every_kind_of_redis_unavailability_is_retryable():
    from gtl_nb.engine.stores.redis_client import RedisBusyError, RedisUnavailableError, RedisUnreachableError

    assert all(kind("Redis away").retryable for kind in (RedisUnavailableError, RedisBusyError, RedisUnreachableError))


def test_credentials_the_server_refuses_are_not_called_unreachable(server: Any) -> None:
    """redis-py's refusal of a password is a kind of ConnectionError: `gtl token revoke` and the stores
    said the server "is unreachable" when it had answered — and refused the password."""
    from gtl_nb.engine.stores.redis_client import RedisUnreachableError, translated

    client = raw(f"redis://:wrong-pw-7c2@127.0.0.1:{server.port}/0")
    shown = f"redis://127.0.0.1:{server.port}/0"
    with pytest.raises(RedisUnreachableError, match="refused the credentials") as caught, translated(shown, "a ping"):
        client.ping()
    assert "unreachable" not in str(caught.value)
    assert "wrong-pw-7c2" not in str(caught.value) and CANARY not in str(caught.value)


def test_a_server_that_wants_a_password_the_url_lacks_says_so_in_our_words(server: Any) -> None:
    """Without a password in the URL, a Redis with ``requirepass`` answered RESP3's "HELLO must be called
    with the client already authenticated…", which names neither the URL nor the fix."""
    url = f"redis://127.0.0.1:{server.port}/0"

    async def scenario() -> str | None:
        counter = RedisBudgetCounter(url)
        await counter.reserve("ann", Limits(), now=time.time())  # served locally; the reason is kept
        reason = counter.degraded_reason
        await counter.aclose()
        return reason

    reason = run(scenario())
    assert reason is not None
    assert f"Redis at {url} requires a password" in reason
    assert "the URL gives none: redis://:PASSWORD@host:port/db" in reason
    assert "HELLO" not in reason and CANARY not in reason


def test_rediss_to_a_plaintext_server_names_the_tls_handshake(server: Any) -> None:
    """``rediss://`` to a Redis without TLS timed out as "Timeout connecting to server"."""
    url = f"rediss://:{CANARY}@127.0.0.1:{server.port}/0"

    async def scenario() -> str | None:
        counter = RedisBudgetCounter(url)
        await counter.reserve("ann", Limits(), now=time.time())
        reason = counter.degraded_reason
        await counter.aclose()
        return reason

    reason = run(scenario())
    assert reason is not None
    assert f"the TLS handshake with 127.0.0.1:{server.port} did not complete" in reason
    assert "use redis:// for a plaintext one" in reason and "tls-port" in reason
    assert CANARY not in reason


def test_stores_of_one_server_share_its_outages_however_their_urls_are_written():
    """The budgets' URL and the coalescing registry's own pool (another ``client_name``), ``/0`` or ``?db=0``
    or no database at all: one server, told of one outage together."""
    from gtl_nb.engine.stores.redis_client import server_of

    one = {server_of(url) for url in ("redis://h:1/0", "redis://h:1?db=0&client_name=x-flights", "redis://h:1")}
    assert one == {"redis://h:1/0"}
    assert server_of("redis://h:1/2") != server_of("redis://h:1/0") != server_of("redis://other:1/0")
    assert server_of("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock/1"
