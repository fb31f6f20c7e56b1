"""The Redis stores' connections: URLs, one shared pool per URL and loop, closing, and the errors a
caller sees when redis-py is missing or the server cannot be reached."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from typing import Any

import pytest
from store_kit import FakeClock, run

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.cache import CacheConfig
from gtl_nb.engine.ratelimit import BudgetConfig, Limits
from gtl_nb.engine.stores import open_stores
from gtl_nb.engine.stores.redis import RedisBreakerStore, RedisBudgetCounter, RedisResponseCache, RedisUnavailableError
from gtl_nb.engine.stores.redis_client import _registry, split_url
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.engine.stores.urls import StoreURL, parse_store_url, shown_url
from gtl_nb.protocol.errors import ConfigurationError, GTLError, RateLimitError

NOW = 1_709_294_400.0


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raw(url: str):
    import redis

    return redis.Redis.from_url(url)


def named_connections(url: str, name: str) -> int:
    """How many connections the server has whose client name is ``name``."""
    client = raw(url)
    try:
        return sum(1 for entry in client.client_list() if entry.get("name") == name)
    finally:
        client.close()


def until_no_connection_named(url: str, name: str) -> int:
    """The count of ``name``'s connections once it is 0, or after a generous wait (the server sees
    a closed socket on its next turn)."""
    for _ in range(500):
        count = named_connections(url, name)
        if count == 0:
            return 0
        time.sleep(0.01)
    return count


# -- URLs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/0",
        "redis://cache",
        "rediss://user:pw@cache.internal:6380/2?socket_timeout=0.5&key_prefix=team-a:",
        "redis://[::1]:6379/0?client_name=gw1&max_connections=8",
    ],
)
def test_redis_urls_are_accepted_and_keep_the_whole_url(url: str):
    assert parse_store_url(url, where="[cache] backend") == StoreURL("redis", url=url)
    assert "pw" not in repr(parse_store_url(url))


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://", "names no host"),
        ("redis://cache:port/0", "not a valid Redis URL"),
        ("redis://cache/zero", "the path must be a database number"),
        ("redis://cache?sockettimeout=1", "unknown option 'sockettimeout'"),
        ("redis://cache?socket_timeout=soon", "socket_timeout must be a number"),
        ("redis://cache?max_connections=0", "max_connections must be a positive number"),
        ("redis://:hunter2@cache?password=hunter3", "unknown option 'password'"),
    ],
)
def test_redis_url_mistakes_are_named_without_the_password(url: str, fragment: str):
    with pytest.raises(ConfigurationError, match=r"\[budgets\] backend") as info:
        BudgetConfig(backend=url)
    assert fragment in str(info.value)
    assert "hunter" not in str(info.value)


def test_a_misspelt_url_option_is_named_with_the_option_meant_and_its_harmless_value_shown():
    with pytest.raises(ConfigurationError) as info:
        BudgetConfig(backend="redis://:hunter2@cache:6379/0?socket_timeot=1")
    message = str(info.value)
    assert "unknown option 'socket_timeot'; did you mean 'socket_timeout'" in message
    assert "socket_timeot=1" in message and "hunter2" not in message
    with pytest.raises(ConfigurationError) as info:
        BudgetConfig(backend="redis://cache:6379/0?passwd=hunter3")
    assert "passwd=***" in str(info.value) and "hunter3" not in str(info.value)


def test_the_shown_url_hides_the_password_and_split_url_takes_our_option_out():
    assert shown_url("rediss://gw:s3cret@cache:6380/1?client_name=a") == "rediss://gw:***@cache:6380/1?client_name=a"
    assert shown_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert split_url("redis://cache/0?key_prefix=x:&client_name=a") == ("redis://cache/0?client_name=a", "x:")
    assert split_url("redis://cache/0") == ("redis://cache/0", "gtl:")


# -- open_stores ---------------------------------------------------------------------------------------


def test_open_stores_chooses_redis_and_the_three_stores_share_one_pool(redis_url: str):
    url = f"{redis_url}?client_name=shared-pool"
    stores = open_stores(
        None,
        budgets=BudgetConfig(backend=url),
        cache=CacheConfig(backend=url, ttl=7),
        breaker=BreakerConfig(backend=url),
    )
    assert isinstance(stores.budgets, RedisBudgetCounter)
    assert isinstance(stores.cache, RedisResponseCache) and stores.cache.default_ttl == 7
    assert isinstance(stores.breakers, RedisBreakerStore)

    async def scenario() -> tuple[list[Any], int]:
        await stores.budgets.reserve("ann", Limits(), now=NOW)
        await stores.cache.get("k")
        await stores.breakers.acquire("oa")
        clients = [await store.redis.client() for store in (stores.budgets, stores.cache, stores.breakers)]
        in_use = named_connections(redis_url, "shared-pool")
        await stores.aclose()
        assert not [key for key in _registry if key[0] == stores.budgets.redis.client_url]
        return clients, in_use

    clients, in_use = run(scenario())
    assert clients[0] is clients[1] is clients[2]  # one client and pool per URL in this process (and loop)
    assert in_use >= 1
    assert until_no_connection_named(redis_url, "shared-pool") == 0  # the last store to close closed the pool


def test_the_ledger_does_not_live_in_redis():
    with pytest.raises(ConfigurationError, match="the usage ledger does not live in Redis"):
        open_stores("redis://cache:6379/0")


def test_the_pool_is_closed_when_its_event_loop_ends(redis_url: str):
    """No store closed: the end of ``asyncio.run`` (as of the engine's loop thread) closes the pool."""
    url = f"{redis_url}?client_name=loop-bound"
    counter = RedisBudgetCounter(url)

    async def scenario() -> int:
        await asyncio.gather(*(counter.reserve("ann", Limits(), now=NOW) for _ in range(5)))
        return named_connections(redis_url, "loop-bound")

    assert run(scenario()) >= 1
    assert until_no_connection_named(redis_url, "loop-bound") == 0
    assert run(counter.usage("ann", now=NOW))["requests_last_minute"] == 5  # a new loop opens a new pool
    run(counter.aclose())


def test_a_closed_store_refuses_calls(redis_url: str):
    cache = RedisResponseCache(redis_url)
    run(cache.aclose())
    with pytest.raises(StoreError, match="is closed"):
        run(cache.get("k"))


def test_a_flushed_script_cache_is_loaded_again(redis_url: str):
    """After a restart or a fail-over Redis knows no scripts: EVALSHA's NOSCRIPT loads them again."""
    counter = RedisBudgetCounter(redis_url)

    async def scenario() -> dict[str, float]:
        await counter.reserve("ann", Limits(requests_per_minute=5), now=NOW)
        client = await counter.redis.client()
        await client.script_flush()
        await counter.reserve("ann", Limits(requests_per_minute=5), now=NOW)
        return await counter.usage("ann", now=NOW)

    assert run(scenario())["requests_last_minute"] == 2
    run(counter.aclose())


# -- when Redis is missing or unreachable ---------------------------------------------------------------


def test_without_redis_py_opening_a_redis_store_says_what_to_install(monkeypatch: pytest.MonkeyPatch):
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now fails, as without the extra
    with pytest.raises(ConfigurationError, match=r"pip install 'gtl-nb\[redis\]'"):
        open_stores(None, cache=CacheConfig(backend="redis://cache:6379/0"))
    with pytest.raises(ConfigurationError, match="redis-py client, which is not installed"):
        RedisBreakerStore("redis://cache:6379/0")


def test_an_unreachable_server_is_a_local_fallback_and_a_clear_reason_without_the_password(redis_server: Any):
    """No request fails because Redis is away (``test_redis_fallback`` has the rest): budgets count
    locally, the cache misses, breakers are local; each store says why, and ``clear`` (an operator's
    call) still raises a clear retryable error — never with the password."""
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    clock = FakeClock()

    async def scenario() -> tuple[list[Any], list[str | None], GTLError]:
        counter, cache, breakers = (
            RedisBudgetCounter(url),
            RedisResponseCache(url, wall_clock=clock),
            RedisBreakerStore(url, wall_clock=clock),
        )
        answers = [
            await counter.reserve("ann", Limits(requests_per_minute=1), now=NOW),
            await cache.get("k"),
            await breakers.acquire("oa"),
        ]
        reasons = [store.degraded_reason for store in (counter, cache, breakers)]
        with pytest.raises(RedisUnavailableError) as info:
            await cache.clear()
        for store in (counter, cache, breakers):
            await store.aclose()
        return answers, reasons, info.value

    answers, reasons, error = run(scenario())
    assert answers[0].principal == "ann" and answers[1] is None and answers[2] == "pass"
    for reason in reasons:
        assert reason is not None and f"Redis at redis://:***@127.0.0.1:{port}/0 is unreachable" in reason
        assert "hunter2" not in reason
    assert error.retryable is True and isinstance(error, StoreError)
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 is unreachable" in error.message
    assert "hunter2" not in error.message and "hunter2" not in str(error)


# -- through the engine -----------------------------------------------------------------------------------


def test_two_clients_on_one_redis_share_requests_per_minute(redis_url: str):
    """Two embedded clients (two engines, as two gateway replicas would run) with Redis budgets."""
    import gtl_nb

    budgets = {"requests_per_minute": 3, "backend": redis_url}
    clients = [gtl_nb.connect(ledger=False, budgets=budgets, user="ann") for _ in range(2)]
    outcomes: list[str] = []
    try:
        for number in range(5):
            try:
                clients[number % 2].complete("echo", f"hello {number}")
                outcomes.append("answered")
            except RateLimitError as refused:
                assert refused.retry_after is not None and refused.retry_after > 0
                outcomes.append("refused")
    finally:
        for client in clients:
            client.close()
    assert outcomes == ["answered"] * 3 + ["refused"] * 2
    client = raw(redis_url)
    try:
        assert client.zcard("gtl:budget:{ann}:times") == 3  # counted in Redis, not in either process
    finally:
        client.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis:///0?password=CanaryPw9x",
        "redis:///0?socket_timeout=1&password=CanaryPw9x",
        "redis://h:6379/0#CanaryPw9x",
    ],
)
def test_a_url_without_a_host_or_with_a_fragment_is_shown_without_its_secret(url):
    """A host-less URL was shown as written, query and all (its refusal quoted the password); a
    fragment, which no store reads, too."""
    shown = shown_url(url)
    assert "CanaryPw9x" not in shown and shown.startswith(url.split("?")[0].split("#")[0])
    try:
        parse_store_url(url, where="[budgets] backend")
    except Exception as refused:  # (a host-less one is refused: in words that quote no password)
        assert "CanaryPw9x" not in str(refused)
