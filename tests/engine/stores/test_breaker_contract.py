"""The ``BreakerStore`` contract: every implementation applies ``engine.breaker``'s rules alike."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from store_kit import T0, FakeClock, run

from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.stores import BreakerStore, MemoryBreakerStore, SqliteBreakerStore

CONFIG = BreakerConfig(failure_threshold=2, error_rate_threshold=0, cooldown=30.0, half_open_probes=1)


def open_store(backend: str, path: Path, clock: FakeClock, config: BreakerConfig = CONFIG) -> BreakerStore:
    if backend == "memory":
        return MemoryBreakerStore(config, clock=clock)
    return SqliteBreakerStore(path, config, wall_clock=clock)


@pytest.fixture
def store(backend: str, store_file: Path, clock: FakeClock):
    opened = open_store(backend, store_file, clock)
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


def test_a_disabled_breaker_lets_everything_through(backend: str, store_file: Path, clock: FakeClock):
    async def scenario() -> list[Any]:
        store = open_store(backend, store_file, clock, BreakerConfig(enabled=False))
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


def test_a_probe_slot_of_a_process_that_never_reported_is_given_back(store_file: Path, clock: FakeClock):
    async def scenario() -> list[Any]:
        store = SqliteBreakerStore(store_file, CONFIG, wall_clock=clock, probe_lease=120.0)
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
