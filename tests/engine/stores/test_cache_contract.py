"""The ``ResponseCache`` contract: stored answers come back equal until their time to live is over."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from store_kit import FakeClock, run

from gtl_nb.engine.cache import CachedAnswer
from gtl_nb.engine.stores import MemoryResponseCache, ResponseCache, SqliteResponseCache
from gtl_nb.engine.stores.redis_cache import RedisResponseCache
from gtl_nb.protocol.messages import Done, Reasoning, Token, ToolCall, ToolCallEvent, Usage

ANSWER = CachedAnswer(
    events=[
        Reasoning(session_id="s", text="think"),
        Token(session_id="s", text="Hel"),
        Token(session_id="s", text="lo"),
        ToolCallEvent(session_id="s", function=ToolCall(id="call_1", name="lookup", arguments='{"q": "x"}')),
        Usage(session_id="s", tokens_in=12, tokens_out=3, cost=0.001),
        Done(session_id="s", finish_reason="stop", provider="oa", model="gpt-4o", provider_data={"id": "r1"}),
    ],
    deployment="oa",
    model="gpt-4o",
    stored_at=12.5,
)
OTHER = CachedAnswer(events=[Done(session_id="t")], deployment="an", model="claude")


def open_cache(backend: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest) -> ResponseCache:
    if backend == "memory":
        return MemoryResponseCache(16, 60.0, clock=clock)
    if backend == "sqlite":
        return SqliteResponseCache(store_file, default_ttl=60.0, wall_clock=clock)
    return RedisResponseCache(request.getfixturevalue("redis_url"), default_ttl=60.0, wall_clock=clock)


@pytest.fixture
def cache(backend: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest):
    store = open_cache(backend, store_file, clock, request)
    yield store
    run(store.aclose())


def test_it_is_a_response_cache(cache: ResponseCache):
    assert isinstance(cache, ResponseCache)


def test_a_stored_answer_comes_back_equal(cache: ResponseCache):
    async def scenario() -> tuple[CachedAnswer | None, CachedAnswer | None]:
        before = await cache.get("k")
        await cache.set("k", ANSWER)
        return before, await cache.get("k")

    before, after = run(scenario())
    assert before is None
    assert after == ANSWER


def test_an_answer_expires_after_its_ttl(cache: ResponseCache, clock: FakeClock):
    async def scenario() -> list[bool]:
        await cache.set("default", ANSWER)  # 60 s
        await cache.set("short", OTHER, ttl=5)
        seen = []
        for step in (4.9, 0.1, 54.9, 0.1):
            clock.now += step
            seen += [await cache.get("short") is not None, await cache.get("default") is not None]
        return seen

    #                    t=4.9        t=5 (gone)     t=59.9         t=60 (gone)
    assert run(scenario()) == [True, True, False, True, False, True, False, False]


def test_set_replaces_and_a_ttl_of_zero_deletes(cache: ResponseCache):
    async def scenario() -> tuple[CachedAnswer | None, CachedAnswer | None]:
        await cache.set("k", ANSWER)
        await cache.set("k", OTHER)
        replaced = await cache.get("k")
        await cache.set("k", ANSWER, ttl=0)
        return replaced, await cache.get("k")

    assert run(scenario()) == (OTHER, None)


def test_delete_and_clear(cache: ResponseCache):
    async def scenario() -> list[CachedAnswer | None]:
        await cache.set("a", ANSWER)
        await cache.set("b", OTHER)
        await cache.set("c", OTHER)
        await cache.delete("a")
        await cache.delete("never stored")
        kept = [await cache.get("a"), await cache.get("b")]
        await cache.clear()
        return [*kept, await cache.get("b"), await cache.get("c")]

    assert run(scenario()) == [None, OTHER, None, None]


# -- the SQLite implementation's own promises ------------------------------------------------------


def rows(path: Path) -> list[tuple[str, float]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT key, expires FROM response_cache ORDER BY key").fetchall()
    finally:
        conn.close()


def test_the_sqlite_cache_is_shared_and_uses_wall_clock_expiry(store_file: Path, clock: FakeClock):
    async def scenario() -> CachedAnswer | None:
        writer = SqliteResponseCache(store_file, default_ttl=60.0, wall_clock=clock)
        reader = SqliteResponseCache(store_file, default_ttl=60.0, wall_clock=clock)
        await writer.set("k", ANSWER)
        found = await reader.get("k")
        await writer.aclose()
        await reader.aclose()
        return found

    assert run(scenario()) == ANSWER
    assert rows(store_file) == [("k", clock.now + 60.0)]


def test_expired_rows_are_ignored_and_pruned(store_file: Path, clock: FakeClock):
    async def scenario() -> CachedAnswer | None:
        cache = SqliteResponseCache(store_file, default_ttl=10.0, wall_clock=clock)
        await cache.set("old", ANSWER)
        await cache.set("kept", OTHER, ttl=100)
        clock.now += 10
        found = await cache.get("old")
        await cache.aclose()
        return found

    assert run(scenario()) is None
    assert [key for key, _ in rows(store_file)] == ["kept"]


def test_an_unreadable_entry_is_a_miss_and_is_dropped(store_file: Path, clock: FakeClock):
    async def scenario() -> CachedAnswer | None:
        cache = SqliteResponseCache(store_file, wall_clock=clock)
        await cache.set("k", ANSWER)
        conn = sqlite3.connect(store_file)
        with conn:
            conn.execute("UPDATE response_cache SET answer = ?", (b'{"not": "an answer"}',))
        conn.close()
        found = await cache.get("k")
        await cache.aclose()
        return found

    assert run(scenario()) is None
    assert rows(store_file) == []


# -- the Redis implementation's own promises -------------------------------------------------------


def raw(url: str):
    """A plain redis-py client, to look at what the cache wrote."""
    import redis

    return redis.Redis.from_url(url)


def test_replicas_share_answers(replica_urls: tuple[str, str], clock: FakeClock):
    async def scenario() -> list[CachedAnswer | None]:
        one = RedisResponseCache(replica_urls[0], wall_clock=clock)
        two = RedisResponseCache(replica_urls[1], wall_clock=clock)
        await one.set("k", ANSWER)
        seen = [await two.get("k")]
        await two.delete("k")
        seen.append(await one.get("k"))
        await one.aclose()
        await two.aclose()
        return seen

    assert run(scenario()) == [ANSWER, None]


def test_redis_expires_the_entry_itself_and_the_value_is_json(redis_url: str, clock: FakeClock):
    async def scenario() -> None:
        cache = RedisResponseCache(redis_url, default_ttl=60.0, wall_clock=clock)
        await cache.set("k", ANSWER, ttl=5)
        await cache.aclose()

    run(scenario())
    client = raw(redis_url)
    try:
        assert 0 < client.pttl("gtl:cache:k") <= 5000  # Redis deletes it when the TTL is over
        stored = json.loads(client.get("gtl:cache:k"))  # JSON, never pickle
        assert stored["expires"] == clock.now + 5
        assert stored["answer"]["deployment"] == "oa" and stored["answer"]["events"][1]["text"] == "Hel"
    finally:
        client.close()


def test_an_unreadable_redis_entry_is_a_miss_and_is_dropped(redis_url: str, clock: FakeClock):
    client = raw(redis_url)
    try:
        for value in (b"\x80\x04\x95pickled", b'{"not": "an answer"}'):
            client.set("gtl:cache:k", value)
            cache = RedisResponseCache(redis_url, wall_clock=clock)
            assert run(cache.get("k")) is None
            run(cache.aclose())
            assert client.exists("gtl:cache:k") == 0
    finally:
        client.close()


def test_an_answer_over_the_size_limit_is_not_stored_and_drops_the_older_one(redis_url: str, clock: FakeClock):
    events = [Token(session_id="s", text="x" * 5000), Done(session_id="s")]
    big = CachedAnswer(events=events, deployment="oa", model="m")

    async def scenario() -> list[CachedAnswer | None]:
        cache = RedisResponseCache(redis_url, wall_clock=clock, max_value_bytes=4096)
        await cache.set("k", OTHER)
        before = await cache.get("k")
        await cache.set("k", big)
        after = await cache.get("k")
        await cache.aclose()
        return [before, after]

    assert run(scenario()) == [OTHER, None]


def test_clear_deletes_only_this_caches_answers(redis_url: str, clock: FakeClock):
    client = raw(redis_url)
    client.set("unrelated", b"kept")
    client.set("gtl:budget:{ann}:times", b"kept")

    async def scenario() -> list[CachedAnswer | None]:
        ours = RedisResponseCache(redis_url, wall_clock=clock)
        other = RedisResponseCache(f"{redis_url}?key_prefix=*other:", wall_clock=clock)  # a glob character
        for number in range(1200):  # more than one SCAN step and one UNLINK batch
            await ours.set(f"k{number}", OTHER)
        await other.set("k1", ANSWER)
        await other.clear()
        seen = [await ours.get("k1199"), await other.get("k1")]
        await ours.clear()
        seen.append(await ours.get("k1199"))
        await ours.aclose()
        await other.aclose()
        return seen

    try:
        assert run(scenario()) == [OTHER, None, None]
        assert sorted(client.keys("*")) == [b"gtl:budget:{ann}:times", b"unrelated"]
    finally:
        client.close()
