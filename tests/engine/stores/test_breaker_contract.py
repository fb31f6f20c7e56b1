"""The ``BreakerStore`` contract: every implementation applies ``engine.breaker``'s rules alike."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_kit import T0, FakeClock, run

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.stores import BreakerStore, MemoryBreakerStore, SqliteBreakerStore
from gtl_nb.engine.stores.redis_breakers import RedisBreakerStore

CONFIG = BreakerConfig(failure_threshold=2, error_rate_threshold=0, cooldown=30.0, half_open_probes=1)


def open_store(
    backend: str, path: Path, clock: FakeClock, config: BreakerConfig = CONFIG, redis_url: str = ""
) -> BreakerStore:
    if backend == "memory":
        return MemoryBreakerStore(config, clock=clock)
    if backend == "redis":
        return RedisBreakerStore(redis_url, config, wall_clock=clock)
    return SqliteBreakerStore(path, config, wall_clock=clock)


def redis_url_of(backend: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url")) if backend == "redis" else ""


@pytest.fixture
def store(backend: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest):
    opened = open_store(backend, store_file, clock, redis_url=redis_url_of(backend, request))
    yield opened
    run(opened.aclose())


def test_it_is_a_breaker_store(store: BreakerStore):
    assert isinstance(store, BreakerStore)


def test_failures_open_the_circuit_and_report_the_change(store: BreakerStore):
    async def scenario() -> list[Any]:
        return [
            await store.acquire("oa"),
            await store.record_failure("oa"),
            await store.record_success("oa"),  # ends the streak
            await store.record_failure("oa"),
            await store.record_failure("oa"),
            await store.acquire("oa"),
            await store.record_failure("oa"),  # results while open are ignored
            await store.acquire("other"),
        ]

    assert run(scenario()) == ["pass", None, None, None, ("closed", "open"), None, None, "pass"]


def test_after_the_cooldown_one_probe_decides(store: BreakerStore, clock: FakeClock):
    async def scenario() -> list[Any]:
        seen: list[Any] = []
        await store.record_failure("oa")
        await store.record_failure("oa")
        clock.now += 29.9
        seen.append(await store.acquire("oa"))  # still cooling down
        clock.now += 0.1
        seen += [await store.acquire("oa"), await store.acquire("oa")]  # one probe slot
        await store.release("oa")  # given back without a verdict
        seen += [await store.acquire("oa"), await store.record_failure("oa")]  # the probe failed
        clock.now += 30
        seen += [await store.acquire("oa"), await store.record_success("oa"), await store.acquire("oa")]
        return seen

    assert run(scenario()) == [
        None,
        "probe",
        None,
        "probe",
        ("half_open", "open"),
        "probe",
        ("half_open", "closed"),
        "pass",
    ]


def test_snapshots_say_state_counts_times_and_whether_a_call_is_allowed(store: BreakerStore, clock: FakeClock):
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        await store.record_failure("oa")
        await store.record_failure("oa")
        opened = await store.snapshots(["oa", "an"])
        clock.now += 30
        await store.acquire("oa")
        probing = await store.snapshots(["oa"])
        return opened["oa"], opened["an"], probing["oa"]

    opened, fresh, probing = run(scenario())
    assert opened["state"] == "open" and opened["allowed"] is False
    assert (opened["consecutive_failures"], opened["calls_in_window"], opened["error_rate"]) == (2, 2, 1.0)
    assert (opened["opened_at"], opened["retry_at"], opened["retry_in"]) == (T0, T0 + 30.0, 30.0)
    assert fresh["state"] == "closed" and fresh["allowed"] is True and fresh["deployment"] == "an"
    assert (probing["state"], probing["probes_in_flight"], probing["allowed"]) == ("half_open", 1, False)


def test_a_providers_retry_after_holds_the_opening_circuit_open_until_then(store: BreakerStore, clock: FakeClock):
    """The failure that opens (through a closed circuit's verdict) or re-opens (a failed probe) asks for a
    wait: no probe before then, and one then, whether that is past the cooldown or short of it."""

    async def scenario() -> list[Any]:
        await store.record_failure("oa")
        seen: list[Any] = [await store.record_failure("oa", retry_after=120.0)]
        opened = (await store.snapshots(["oa"]))["oa"]
        seen += [opened["retry_at"] - T0, opened["retry_in"], opened["provider_retry_after"]]
        clock.now += 30
        seen.append(await store.acquire("oa"))  # the cooldown is over, the provider's wait is not
        clock.now += 90
        seen += [await store.acquire("oa"), await store.record_failure("oa", retry_after=200.0)]
        clock.now += 199.5
        seen.append(await store.acquire("oa"))
        clock.now += 0.5
        seen += [await store.acquire("oa"), await store.record_failure("oa", retry_after=5.0)]
        reopened = (await store.snapshots(["oa"]))["oa"]
        seen += [reopened["retry_in"], reopened["provider_retry_after"]]
        clock.now += 4.5
        seen.append(await store.acquire("oa"))
        clock.now += 0.5
        seen += [await store.acquire("oa"), await store.record_failure("oa", retry_after=0.25)]
        seen.append((await store.snapshots(["oa"]))["oa"]["retry_in"])
        clock.now += 1
        seen += [await store.acquire("oa"), await store.record_success("oa")]
        seen.append((await store.snapshots(["oa"]))["oa"]["provider_retry_after"])
        return seen

    assert run(scenario()) == [
        ("closed", "open"),
        120.0,
        120.0,
        120.0,
        None,
        "probe",
        ("half_open", "open"),
        None,
        "probe",
        ("half_open", "open"),
        5.0,  # 5 s asked: open 5 s, not the 30 s cooldown
        5.0,
        None,
        "probe",
        ("half_open", "open"),
        1.0,  # 0.25 s asked: held for the 1 s floor
        "probe",
        ("half_open", "closed"),
        None,
    ]


@pytest.mark.parametrize(
    ("retry_after", "held"),
    [(3.0, 3.0), (0.25, 1.0), (60.0, 60.0), (86_400.0, 90.0), (None, 30.0), (-1.0, 30.0), (float("nan"), 30.0)],
)
def test_a_closed_circuit_opened_by_a_wait_is_held_for_it_within_the_floor_and_max_cooldown(
    retry_after: float | None,
    held: float,
    backend: str,
    store_file: Path,
    clock: FakeClock,
    request: pytest.FixtureRequest,
):
    url = redis_url_of(backend, request)
    config = BreakerConfig(failure_threshold=1, error_rate_threshold=0, cooldown=30.0, max_cooldown=90.0)

    async def scenario() -> list[Any]:
        store = open_store(backend, store_file, clock, config, redis_url=url)
        await store.record_success("oa")  # state written first, so the opening is a closed circuit's verdict
        await store.record_failure("oa", retry_after=retry_after)
        seen = [(await store.snapshots(["oa"]))["oa"]["retry_in"]]
        clock.now += held - 0.01
        seen.append(await store.acquire("oa"))
        clock.now += 0.01
        seen.append(await store.acquire("oa"))
        await store.aclose()
        return seen

    assert run(scenario()) == [held, None, "probe"]


def test_a_max_cooldown_of_zero_ignores_the_providers_wait(
    backend: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest
):
    url = redis_url_of(backend, request)
    config = BreakerConfig(failure_threshold=1, error_rate_threshold=0, cooldown=30.0, max_cooldown=0)

    async def scenario() -> list[Any]:
        store = open_store(backend, store_file, clock, config, redis_url=url)
        await store.record_success("oa")
        await store.record_failure("oa", retry_after=3.0)
        shorter = (await store.snapshots(["oa"]))["oa"]
        clock.now += 30
        seen = [shorter["retry_in"], shorter["provider_retry_after"], await store.acquire("oa")]
        await store.record_failure("oa", retry_after=600.0)
        seen.append((await store.snapshots(["oa"]))["oa"]["retry_in"])
        await store.aclose()
        return seen

    assert run(scenario()) == [30.0, None, "probe", 30.0]


def test_a_disabled_breaker_lets_everything_through(
    backend: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest
):
    url = redis_url_of(backend, request)

    async def scenario() -> list[Any]:
        store = open_store(backend, store_file, clock, BreakerConfig(enabled=False), redis_url=url)
        seen = [await store.record_failure("oa") for _ in range(10)]
        seen.append(await store.acquire("oa"))
        await store.aclose()
        return seen

    assert run(scenario()) == [None] * 10 + ["pass"]


# -- the SQLite implementation's own promises ------------------------------------------------------


def test_processes_on_one_machine_share_a_circuit(store_file: Path, clock: FakeClock):
    async def scenario() -> list[Any]:
        one = SqliteBreakerStore(store_file, CONFIG, wall_clock=clock)
        two = SqliteBreakerStore(store_file, CONFIG, wall_clock=clock)
        await one.record_failure("oa")
        change = await two.record_failure("oa")  # the second failure, seen by another store
        seen = [change, await one.acquire("oa")]
        clock.now += 30
        seen += [await two.acquire("oa"), await one.acquire("oa")]  # one probe between them
        await one.aclose()
        await two.aclose()
        return seen

    assert run(scenario()) == [("closed", "open"), None, "probe", None]
    conn = sqlite3.connect(store_file)
    try:
        (text,) = conn.execute("SELECT state FROM breakers WHERE deployment = 'oa'").fetchone()
    finally:
        conn.close()
    assert json.loads(text)["state"] == "half_open"


@pytest.mark.parametrize("shared", ["sqlite", "redis"])
def test_a_probe_slot_of_a_process_that_never_reported_is_given_back(
    shared: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest
):
    url = redis_url_of(shared, request)

    async def scenario() -> list[Any]:
        store: SqliteBreakerStore | RedisBreakerStore = (
            RedisBreakerStore(url, CONFIG, wall_clock=clock, probe_lease=120.0)
            if shared == "redis"
            else SqliteBreakerStore(store_file, CONFIG, wall_clock=clock, probe_lease=120.0)
        )
        await store.record_failure("oa")
        await store.record_failure("oa")
        clock.now += 30
        seen = [await store.acquire("oa")]  # its holder dies without a verdict
        clock.now += 120
        seen.append(await store.acquire("oa"))
        clock.now += 0.5
        seen.append(await store.acquire("oa"))
        await store.aclose()
        return seen

    assert run(scenario()) == ["probe", None, "probe"]


def test_unreadable_stored_state_starts_closed(store_file: Path, clock: FakeClock):
    async def scenario() -> str | None:
        store = SqliteBreakerStore(store_file, CONFIG, wall_clock=clock)
        await store.record_failure("oa")
        conn = sqlite3.connect(store_file)
        with conn:
            conn.execute('UPDATE breakers SET state = \'{"state": "melted"}\'')
        conn.close()
        grant = await store.acquire("oa")
        await store.aclose()
        return grant

    assert run(scenario()) == "pass"


# -- the Redis implementation's own promises: replicas share every circuit -------------------------


def raw(url: str):
    """A plain redis-py client, to look at what the store wrote."""
    import redis

    return redis.Redis.from_url(url)


def test_a_breaker_opened_through_one_replica_is_open_through_the_other(
    replica_urls: tuple[str, str], clock: FakeClock
):
    async def scenario() -> list[Any]:
        one = RedisBreakerStore(replica_urls[0], CONFIG, wall_clock=clock)
        two = RedisBreakerStore(replica_urls[1], CONFIG, wall_clock=clock)
        await one.record_failure("oa")
        seen = [await two.record_failure("oa")]  # the second failure, through the other replica
        seen += [await one.acquire("oa"), await two.acquire("oa"), (await one.snapshots(["oa"]))["oa"]["state"]]
        clock.now += 30
        seen += [await two.acquire("oa"), await one.record_success("oa"), await two.acquire("oa")]
        await one.aclose()
        await two.aclose()
        return seen

    assert run(scenario()) == [("closed", "open"), None, None, "open", "probe", ("half_open", "closed"), "pass"]


def test_exactly_one_half_open_probe_across_replicas(replica_urls: tuple[str, str], clock: FakeClock):
    async def scenario() -> list[Any]:
        one = RedisBreakerStore(replica_urls[0], CONFIG, wall_clock=clock)
        two = RedisBreakerStore(replica_urls[1], CONFIG, wall_clock=clock)
        await one.record_failure("oa")
        await one.record_failure("oa")
        clock.now += 30  # the cooldown is over: the next acquire may probe
        grants = await asyncio.gather(*((one, two)[i % 2].acquire("oa") for i in range(40)))
        await one.aclose()
        await two.aclose()
        return grants

    grants = run(scenario())
    assert grants.count("probe") == 1 and grants.count(None) == 39


def test_concurrent_failures_from_both_replicas_are_all_counted(replica_urls: tuple[str, str], clock: FakeClock):
    config = BreakerConfig(failure_threshold=1000, error_rate_threshold=0, window=600.0)

    async def scenario() -> dict[str, Any]:  # (200 calls at once: the fixture's URLs are patient)
        one = RedisBreakerStore(replica_urls[0], config, wall_clock=clock)
        two = RedisBreakerStore(replica_urls[1], config, wall_clock=clock)
        await asyncio.gather(*((one, two)[i % 2].record_failure("oa") for i in range(200)))
        snapshot = (await two.snapshots(["oa"]))["oa"]
        await one.aclose()
        await two.aclose()
        return snapshot

    snapshot = run(scenario())  # no update lost to another replica's at the same instant
    assert (snapshot["state"], snapshot["consecutive_failures"], snapshot["calls_in_window"]) == ("closed", 200, 200)


def test_every_replica_keeps_a_circuit_closed_until_the_providers_retry_after(
    replica_urls: tuple[str, str], clock: FakeClock
):
    """The opening replica's Retry-After is in the shared state: the other replica does not probe
    before it either, whether the circuit opened through the closed circuit's script or a failed probe."""

    async def scenario() -> list[Any]:
        one = RedisBreakerStore(replica_urls[0], CONFIG, wall_clock=clock)
        two = RedisBreakerStore(replica_urls[1], CONFIG, wall_clock=clock)
        await one.record_failure("oa")
        seen: list[Any] = [await one.record_failure("oa", retry_after=150.0)]
        seen.append((await two.snapshots(["oa"]))["oa"]["retry_in"])
        clock.now += 149
        seen += [await two.acquire("oa"), await one.acquire("oa")]
        clock.now += 1
        seen += [await two.acquire("oa"), await two.record_failure("oa", retry_after=60.0)]
        clock.now += 59
        seen.append(await one.acquire("oa"))
        clock.now += 1
        seen.append(await one.acquire("oa"))
        await one.aclose()
        await two.aclose()
        return seen

    assert run(scenario()) == [("closed", "open"), 150.0, None, None, "probe", ("half_open", "open"), None, "probe"]


def test_unreadable_redis_state_starts_closed_and_state_expires(redis_url: str, clock: FakeClock):
    client = raw(redis_url)

    async def scenario() -> list[Any]:
        store = RedisBreakerStore(redis_url, CONFIG, wall_clock=clock)
        await store.record_failure("a:b")
        stored = json.loads(client.get("gtl:breaker:a%3Ab"))
        kept = client.pttl("gtl:breaker:a%3Ab")
        assert 86_400_000 < kept <= (300 + 300 + 86_400) * 1000  # max_cooldown, probe lease, a day: then it expires
        client.set("gtl:breaker:a%3Ab", b'{"state": "melted"}')
        seen = [stored["consecutive"], await store.acquire("a:b"), await store.record_failure("a:b")]
        seen.append(json.loads(client.get("gtl:breaker:a%3Ab"))["consecutive"])  # written over
        await store.aclose()
        return seen

    try:
        assert run(scenario()) == [1, "pass", None, 1]
    finally:
        client.close()


# -- the state is small, and earlier versions' state is read ---------------------------------------


OLD_STATE = {  # as an earlier version wrote it: every call of the window
    "state": "closed",
    "consecutive": 1,
    "window": [[T0 - 100.0, True], [T0 - 10.0, False], [T0 - 5.0, True]],
    "opened_at": None,
    "probes": 0,
    "probe_at": None,
    "token": "old",
}


@pytest.mark.parametrize("shared", ["sqlite", "redis"])
def test_state_of_an_earlier_version_is_read_and_the_state_stays_small(
    shared: str, store_file: Path, clock: FakeClock, request: pytest.FixtureRequest
):
    url = redis_url_of(shared, request)
    config = BreakerConfig(failure_threshold=0, error_rate_threshold=0.5, min_calls=4, window=60.0)

    def stored() -> dict[str, Any]:
        if shared == "redis":
            client = raw(url)
            try:
                return json.loads(client.get("gtl:breaker:oa"))
            finally:
                client.close()
        conn = sqlite3.connect(store_file)
        try:
            return json.loads(conn.execute("SELECT state FROM breakers WHERE deployment = 'oa'").fetchone()[0])
        finally:
            conn.close()

    async def scenario() -> list[Any]:
        store: SqliteBreakerStore | RedisBreakerStore = (
            RedisBreakerStore(url, config, wall_clock=clock)
            if shared == "redis"
            else SqliteBreakerStore(store_file, config, wall_clock=clock)
        )
        if shared == "redis":
            client = raw(url)
            client.set("gtl:breaker:oa", json.dumps(OLD_STATE))
            client.close()
        else:
            await store.snapshots(["oa"])  # makes the table
            conn = sqlite3.connect(store_file)
            with conn:
                conn.execute("INSERT INTO breakers VALUES ('oa', ?)", (json.dumps(OLD_STATE),))
            conn.close()
        before = (await store.snapshots(["oa"]))["oa"]  # the call 100 s ago has left the window
        seen = [before["calls_in_window"], before["consecutive_failures"]]
        for _ in range(5000):
            clock.now += 0.01
            await store.record_success("oa")
        seen.append(await store.record_failure("oa"))
        after = (await store.snapshots(["oa"]))["oa"]
        seen += [after["calls_in_window"], after["consecutive_failures"]]
        await store.aclose()
        return seen

    assert run(scenario()) == [2, 1, None, 5002, 1]  # the call 10 s before the start has left too
    state = stored()
    assert state["window"] == [] and len(state["buckets"]) <= 20  # readers of earlier versions see no calls
    assert len(json.dumps(state)) < 700


def _random_steps(seed: int, count: int) -> list[tuple[str, float]]:
    import random

    chance = random.Random(seed)
    verbs = ["acquire", "record_success", "record_failure", "release", "wait"]
    return [
        (chance.choices(verbs, weights=[3, 4, 3, 1, 2])[0], chance.choice([0.1, 0.7, 2.5, 9.0])) for _ in range(count)
    ]


@pytest.mark.parametrize(
    ("seed", "config", "asked"),
    [
        (1, BreakerConfig(failure_threshold=3, error_rate_threshold=0.5, min_calls=4, window=10.0, cooldown=3.0), 0),
        (2, BreakerConfig(failure_threshold=0, error_rate_threshold=0.3, min_calls=6, window=5.0, cooldown=1.0), 0),
        (
            3,
            BreakerConfig(failure_threshold=2, error_rate_threshold=0, window=60.0, cooldown=2.0, half_open_probes=2),
            0,
        ),
        (
            4,
            BreakerConfig(failure_threshold=3, error_rate_threshold=0.5, min_calls=4, cooldown=3.0, max_cooldown=20),
            3,
        ),
    ],
    ids=["both-rules", "error-rate", "streak", "retry-after"],
)
def test_redis_decides_as_the_rules_in_memory_on_random_calls(
    seed: int, config: BreakerConfig, asked: float, redis_url: str, clock: FakeClock
):
    """The closed circuit's Lua script restates engine.breaker's rules: both must decide alike.
    ``asked``: failures carry a Retry-After of this many times the step's wait (0: none)."""

    async def scenario() -> tuple[list[Any], list[Any]]:
        memory = MemoryBreakerStore(config, clock=clock)
        shared = RedisBreakerStore(redis_url, config, wall_clock=clock)
        seen: tuple[list[Any], list[Any]] = ([], [])
        for verb, wait in _random_steps(seed, 600):
            if verb == "wait":
                clock.now += wait
                continue
            extra = {"retry_after": wait * asked} if asked and verb == "record_failure" else {}
            for store, answers in ((memory, seen[0]), (shared, seen[1])):
                answers.append((verb, await getattr(store, verb)("oa", **extra)))
            snapshots = [(await store.snapshots(["oa"]))["oa"] for store in (memory, shared)]
            seen[0].append(snapshots[0])
            seen[1].append(snapshots[1])
        await shared.aclose()
        return seen

    in_memory, in_redis = run(scenario())
    assert in_redis == in_memory
    assert sum(1 for step in in_memory if step == ("record_failure", ("closed", "open"))) >= 2


def test_a_closed_circuits_verdict_is_one_script_and_a_pass_one_read(redis_url: str, clock: FakeClock):
    client = raw(redis_url)

    def calls() -> dict[str, int]:
        return {name: int(stats["calls"]) for name, stats in client.info("commandstats").items()}

    async def scenario() -> list[dict[str, int]]:
        store = RedisBreakerStore(redis_url, CONFIG, wall_clock=clock)
        await store.record_success("oa")  # the first: no state yet, written by the general path
        await store.record_failure("oa")  # loads the script
        counted = []
        for verb in ("acquire", "record_success", "record_failure"):
            client.config_resetstat()
            await getattr(store, verb)("oa")
            counted.append(
                {name: n for name, n in calls().items() if not name.startswith(("cmdstat_config", "cmdstat_info"))}
            )
        await store.aclose()
        return counted

    try:
        acquire, success, failure = run(scenario())
    finally:
        client.close()
    assert acquire == {"cmdstat_get": 1}  # nothing written
    assert success == failure == {"cmdstat_evalsha": 1, "cmdstat_get": 1, "cmdstat_set": 1}  # within the script
