"""Regression tests for defects found by an adversarial review of the seams: cancels at each await
point, coalescing when the leader leaves, defaults that must not override the caller, a closed client,
a rotated key at the pre-send check, an unsendable URL, the hooks of a cancelled end."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import time

import pytest
from engine_kit import make_engine

import gtl_nb
from gtl_nb import sim
from gtl_nb.backend import EmbeddedBackend
from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.hooks import Hooks, RequestFinished
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.stores import (
    MemoryBreakerStore,
    MemoryBudgetCounter,
    MemoryResponseCache,
    SqliteBreakerStore,
    SqliteUsageLedger,
    Stores,
)
from gtl_nb.protocol import CompletionRequest, Done, Error, Message, Token
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.providers.base import Deployment


def request(sid: str, model: str = "echo", **kw) -> CompletionRequest:
    return CompletionRequest(session_id=sid, model=model, messages=[Message(role="user", content="hi")], **kw)


def test_a_cancel_while_acquiring_a_probe_slot_gives_the_slot_back(tmp_path):
    now = [1000.0]
    store = SqliteBreakerStore(
        tmp_path / "b.sqlite3",
        BreakerConfig(failure_threshold=1, cooldown=10),
        wall_clock=lambda: now[0],
        busy_timeout=0.05,
    )
    stores = Stores(ledger=None, budgets=MemoryBudgetCounter(), cache=MemoryResponseCache(), breakers=store)
    engine = make_engine({"echo": Deployment(name="echo", type="echo")}, stores=stores)

    async def main():
        await store.record_failure("echo")
        now[0] += 11  # half-open: one probe allowed
        other = sqlite3.connect(tmp_path / "b.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: acquire waits

        async def consume():
            async for _ in engine.stream(request("s1")):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        other.execute("COMMIT")  # acquire lands now and grants the probe to a cancelled request
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):  # the slot is handed back in the background
            if (await store.snapshots(["echo"]))["echo"]["probes_in_flight"] == 0:
                break
            await asyncio.sleep(0.02)
        return (await store.snapshots(["echo"]))["echo"]

    snapshot = asyncio.run(main())
    assert snapshot["probes_in_flight"] == 0 and snapshot["allowed"]


def test_a_cancel_while_the_ledger_start_waits_for_room_settles_the_budget_reservation(tmp_path):
    """The ledger's writer cannot commit (another process holds the write lock) and its queue is full,
    so the request's start waits for room; cancelled there, it holds no budget and leaves one row."""
    path = tmp_path / "ledger.sqlite3"
    ledger = SqliteUsageLedger(Ledger(path, busy_timeout=0.05), owns=True, max_pending=1)
    budgets = MemoryBudgetCounter()
    stores = Stores(ledger=ledger, budgets=budgets, cache=MemoryResponseCache(), breakers=MemoryBreakerStore())
    engine = make_engine(
        {"echo": Deployment(name="echo", type="echo")}, stores=stores, budgets={"tokens_per_minute": 100000}
    )

    async def main():
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the writer cannot commit, so its queue stays full
        bob = RequestContext(principal="bob")
        await ledger.start(session_id="taken", context=bob, model="m")
        await ledger.start(session_id="queued", context=bob, model="m")  # the queue is full now
        task = asyncio.ensure_future(anext(engine.stream(request("s1", max_tokens=50000), user="alice")))
        await asyncio.sleep(0.3)
        task.cancel()
        other.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        return await budgets.usage("alice", now=time.time()), [r["status"] for r in await ledger.rows(user="alice")]

    usage, statuses = asyncio.run(main())
    assert usage["tokens_last_minute"] == 0  # nothing was sent: the estimate is not held
    assert statuses == ["cancelled"]


def test_the_cost_of_a_shared_call_lands_on_one_row_when_the_leader_leaves(tmp_path):
    with sim.serve("openai", pace=0.02) as s:
        settings = load_settings(providers={"openai": {"api_key": "sim-key", "base_url": s.base_url}}, environ={})
        backend = EmbeddedBackend(settings, principal="ann", ledger=tmp_path / "l.sqlite3")
        client = gtl_nb.Client(backend=backend)

        async def main():
            leader = client.astream("gpt-4o-mini", "one answer for two", temperature=0)
            follower = asyncio.ensure_future(client.acomplete("gpt-4o-mini", "one answer for two", temperature=0))
            async with leader:
                async for event in leader:
                    if isinstance(event, Token):
                        break  # the leader's caller leaves; the follower reads on
            return await follower

        answer = asyncio.run(main())
        frame = client.usage()
        client.close()
    assert answer.text and len(s.requests) == 1
    assert frame["cost"].sum() == pytest.approx(answer.cost or frame["cost"].max())
    assert frame["cost"].notna().sum() == 1  # exactly one row carries the call's cost


def test_an_identical_request_after_the_last_reader_left_makes_its_own_call():
    engine = make_engine({"echo": Deployment(name="echo", type="echo", options={"pace": 0.02})})

    async def main():
        first = engine.stream(request("s1", temperature=0))
        async for event in first:
            if isinstance(event, Token):
                break
        await first.aclose()  # the only reader left: the shared call is being cancelled
        return [e async for e in engine.stream(request("s2", temperature=0))][-1]

    assert isinstance(asyncio.run(main()), Done)


def test_breaking_out_of_astream_cancels_the_session(tmp_path):
    path = tmp_path / "l.sqlite3"
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.05}}}, ledger=path, environ={})

    async def main():
        async for event in client.astream("echo", "a long answer that the caller stops reading early"):
            if isinstance(event, Token):
                break
        gc.collect()
        await asyncio.sleep(0.5)  # the loop keeps running: the session must not run on to its end

    asyncio.run(main())
    client.close()
    assert list(Ledger(path).to_dataframe()["status"]) == ["cancelled"]


def test_defaults_never_override_the_model_or_deployment_the_caller_named():
    with sim.serve("openai") as oa, sim.serve("anthropic") as an:
        providers = {
            "openai": {"api_key": "sim-key", "base_url": oa.base_url},
            "anthropic": {"api_key": "sim-key", "base_url": an.base_url},
        }
        failover = gtl_nb.connect(
            providers=providers,
            defaults={"providers": ["openai:gpt-4o", "anthropic:claude-haiku-4-5"]},
            environ={},
            ledger=False,
        )
        assert failover.complete("claude-haiku-4-5", "hi").provider == "anthropic"
        assert failover.complete("anthropic:claude-haiku-4-5", "hi").provider == "anthropic"
        assert failover.complete(messages="no model named").provider == "openai"  # the defaults apply
        one = gtl_nb.connect(providers=providers, defaults={"provider": "openai"}, environ={}, ledger=False)
        assert one.complete("claude-haiku-4-5", "hi").provider == "anthropic"  # openai does not serve it
        assert one.complete("gpt-4o-mini", "hi").provider == "openai"


def test_a_closed_client_refuses_requests_instead_of_sending_them_unrecorded(tmp_path):
    client = gtl_nb.connect(ledger=tmp_path / "l.sqlite3", environ={})
    client.complete("echo", "before")
    client.close()
    with pytest.raises(ConfigurationError, match="closed"):
        client.complete("echo", "after")
    assert len(Ledger(tmp_path / "l.sqlite3").to_dataframe()) == 1


def test_the_pre_send_check_sees_a_key_set_after_connect(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with sim.serve("openai") as s:
        client = gtl_nb.connect(providers={"openai": {"base_url": s.base_url}}, ledger=False)
        with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
            client.complete("gpt-4o-mini", "hi")
        monkeypatch.setenv("OPENAI_API_KEY", "sim-key")
        assert client.complete("gpt-4o-mini", "hi").text


def test_an_invalid_base_url_is_an_unsendable_request_not_an_internal_error():
    client = gtl_nb.connect(
        providers={"bad": {"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1\r\nX: y"}},
        ledger=False,
        environ={},
    )
    stream = client.stream("gpt-4o-mini", "hi", provider="bad")
    events = list(stream)
    assert isinstance(events[-1], Error) and events[-1].code == "INVALID_REQUEST" and not events[-1].retryable


def test_subscribers_hear_the_end_of_a_session_cancelled_while_its_row_is_completed(tmp_path):
    class SlowFinish(SqliteUsageLedger):
        finish_nowait = None  # a ledger whose completion waits (the engine's fast path is off)

        async def finish(self, *args, **kwargs):
            await asyncio.sleep(0.2)
            return await super().finish(*args, **kwargs)

    heard: list[str] = []
    hooks = Hooks()
    hooks.subscribe(lambda event: heard.append(type(event).__name__))
    stores = Stores(
        ledger=SlowFinish(tmp_path / "l.sqlite3"),
        budgets=MemoryBudgetCounter(),
        cache=MemoryResponseCache(),
        breakers=MemoryBreakerStore(),
    )
    engine = make_engine({"echo": Deployment(name="echo", type="echo")}, stores=stores, hooks=hooks)

    async def main():
        async def consume():
            async for _ in engine.stream(request("s1")):
                pass

        task = asyncio.ensure_future(consume())
        while "RequestStarted" not in heard:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the session has ended and its row is being completed
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert heard.count("RequestFinished") == 1 and isinstance(RequestFinished, type)
    assert os.path.exists(tmp_path / "l.sqlite3")


def test_a_shared_cache_that_is_down_is_a_miss_not_a_failed_request(caplog):
    """A cache backend that raises (a Redis that went away) on every lookup and store: the request is
    answered from the provider, and the warning says why the cache was skipped."""

    class Down(MemoryResponseCache):
        async def get(self, key):
            raise ConnectionError("the cache server is unreachable")

        async def set(self, key, answer, ttl=None):
            raise ConnectionError("the cache server is unreachable")

    stores = Stores(ledger=None, budgets=MemoryBudgetCounter(), cache=Down(), breakers=MemoryBreakerStore())
    engine = make_engine({"echo": Deployment(name="echo", type="echo")}, stores=stores, cache={"enabled": True})

    async def main():
        try:
            return [event async for event in engine.stream(request("s1", temperature=0))]
        finally:
            await engine.aclose()

    with caplog.at_level("WARNING", logger="gtl_nb"):
        events = asyncio.run(main())
    assert isinstance(events[-1], Done), events[-1]
    assert "cache: lookup failed" in caplog.text
