"""A request cancelled while its budgets are counted (a counter that waits: SQLite's lock, Redis,
PostgreSQL; a client gone, a caller's timeout) leaves exactly one ledger row, ``cancelled``, gives back
what it had reserved, and its subscribers hear one start and one end — as any cancelled request.

The count comes before the row's start on purpose (``Engine.stream_batches``): these tests hold the
counter, cancel the session there, and read what is left."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import pytest
from engine_kit import make_engine

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.hooks import Hooks, RequestFinished, RequestStarted
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.ratelimit import Limits
from gtl_nb.engine.stores import (
    MemoryBreakerStore,
    MemoryBudgetCounter,
    MemoryResponseCache,
    MemoryUsageLedger,
    SqliteBudgetCounter,
    SqliteUsageLedger,
    Stores,
)
from gtl_nb.protocol import CompletionRequest, Done, Message
from gtl_nb.providers.base import Deployment

ECHO = {"echo": Deployment(name="echo", type="echo")}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def request(sid: str) -> CompletionRequest:
    return CompletionRequest(session_id=sid, model="echo", messages=[Message(role="user", content="hi")])


class HeldCounter(MemoryBudgetCounter):
    """An in-process counter that waits, as a shared one does: a reserve for a key in ``held`` blocks
    until ``gate`` opens; ``release`` can be made to wait too (``slow_release``)."""

    def __init__(self, held: set[str], *, slow_release: bool = False) -> None:
        super().__init__()
        self.held = held
        self.slow_release = slow_release
        self.waiting: asyncio.Event | None = None
        self.gate: asyncio.Event | None = None
        self.released: list[str] = []

    def arm(self) -> None:
        """Make the events on the running loop (``asyncio.run`` makes a new one per test)."""
        self.waiting, self.gate = asyncio.Event(), asyncio.Event()

    async def reserve(self, principal: str, limits: Limits, **kwargs: Any):
        if principal in self.held:
            assert self.waiting is not None and self.gate is not None
            self.waiting.set()
            await self.gate.wait()
        return await super().reserve(principal, limits, **kwargs)

    async def release(self, reservation) -> None:
        if self.slow_release:
            await asyncio.sleep(0.2)
        await super().release(reservation)
        self.released.append(reservation.principal)


def engine_over(ledger: Any, counter: Any, budgets: dict[str, Any], hooks: Hooks | None = None):
    stores = Stores(ledger=ledger, budgets=counter, cache=MemoryResponseCache(), breakers=MemoryBreakerStore())
    return make_engine(ECHO, stores=stores, budgets=budgets, hooks=hooks)


MEMBER_AND_TENANT = {"users": {"ana": {"requests_per_minute": 1}}, "tenants": {"acme": {"requests_per_minute": 5}}}


async def cancel_while_counting(engine, counter: HeldCounter, context: RequestContext, sid: str = "s-cut") -> None:
    """Start ``sid``, cancel it once the counter holds it, and see the cancel through."""
    counter.arm()

    async def consume() -> None:
        async for _ in engine.stream(request(sid), context=context):
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(counter.waiting.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture(params=["sqlite", "memory"])
def ledger(request: pytest.FixtureRequest, tmp_path):
    """The SQLite ledger (its writes queued at once, ``start_nowait``) and one whose writes are awaited."""
    if request.param == "sqlite":
        return SqliteUsageLedger(tmp_path / "ledger.sqlite3")
    return MemoryUsageLedger()


def test_a_request_cancelled_while_counted_leaves_one_cancelled_row_and_holds_nothing(ledger):
    counter = HeldCounter({"tenant:acme"})
    heard: list[Any] = []
    hooks = Hooks()
    hooks.subscribe(heard.append)
    engine = engine_over(ledger, counter, MEMBER_AND_TENANT, hooks)
    context = RequestContext(principal="ana", tenant="acme", trace_id=TRACE)

    async def main() -> tuple[list[dict[str, Any]], dict[str, float]]:
        await cancel_while_counting(engine, counter, context)
        if hasattr(ledger, "flush"):
            await ledger.flush()
        rows = await ledger.rows()
        usage = await counter.usage("ana", now=time.time())
        counter.held = set()
        after = [event async for event in engine.stream(request("s-next"), context=context)]
        assert isinstance(after[-1], Done)  # her one request a minute is still hers
        await engine.aclose()
        return rows, usage

    rows, usage = asyncio.run(main())
    assert len(rows) == 1
    row = rows[0]
    assert (row["session_id"], row["status"], row["error_code"]) == ("s-cut", "cancelled", "CANCELLED")
    assert (row["user"], row["tenant"], row["trace_id"], row["model"]) == ("ana", "acme", TRACE, "echo")
    assert row["deployment"] is None  # nothing was sent: the row counts against no budget
    assert counter.released == ["ana"] and usage["requests_last_minute"] == 0
    ours = [event for event in heard if getattr(event, "session_id", None) == "s-cut"]
    assert [type(event) for event in ours] == [RequestStarted, RequestFinished]
    assert ours[0].handle is ours[1].handle and ours[1].status == "cancelled"


def test_a_cancel_while_a_refused_requests_reservation_is_given_back_still_gives_it_back(ledger):
    """The tenant refuses; cancelled while the member's own reservation is being given back (a counter
    that waits), the giving back goes on, and the request still leaves its one row."""
    counter = HeldCounter(set(), slow_release=True)
    tenant_of_one = {"users": {"ana": {"requests_per_minute": 1}}, "tenants": {"acme": {"requests_per_minute": 1}}}
    engine = engine_over(ledger, counter, tenant_of_one)
    acme = RequestContext(principal="ana", tenant="acme")

    async def main() -> list[dict[str, Any]]:
        other = RequestContext(principal="bo", tenant="acme")
        assert isinstance([e async for e in engine.stream(request("s-bo"), context=other)][-1], Done)
        task = asyncio.ensure_future(anext(engine.stream(request("s-cut"), context=acme)))
        await asyncio.sleep(0.05)  # the tenant has refused; her own reservation is being given back
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.4)
        if hasattr(ledger, "flush"):
            await ledger.flush()
        rows = [row for row in await ledger.rows() if row["session_id"] == "s-cut"]
        await engine.aclose()
        return rows

    rows = asyncio.run(main())
    assert counter.released == ["ana"]
    assert [(row["status"], row["error_code"]) for row in rows] == [("cancelled", "CANCELLED")]


def test_a_request_cancelled_while_the_sqlite_counter_waits_for_the_lock(tmp_path):
    """The real thing: the default counter in the ledger's own file, which another process holds."""
    path = tmp_path / "ledger.sqlite3"
    ledger = SqliteUsageLedger(Ledger(path, busy_timeout=5.0), owns=True)
    counter = SqliteBudgetCounter(path, ledger_rows=True, busy_timeout=5.0)
    heard: list[Any] = []
    hooks = Hooks()
    hooks.subscribe(heard.append)
    engine = engine_over(ledger, counter, {"requests_per_minute": 1}, hooks)

    async def main() -> tuple[list[dict[str, Any]], dict[str, float], Any]:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the counter's transaction waits for the lock
        task = asyncio.ensure_future(anext(engine.stream(request("s-cut"), user="alice")))
        await asyncio.sleep(0.3)
        task.cancel()
        other.execute("COMMIT")  # the count lands now, for a request already cancelled
        other.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):  # the counter takes its count back in the background
            if (await counter.usage("alice", now=time.time()))["requests_last_minute"] == 0:
                break
            await asyncio.sleep(0.02)
        await ledger.flush()
        rows = await ledger.rows(user="alice")
        usage = await counter.usage("alice", now=time.time())
        after = [event async for event in engine.stream(request("s-next"), user="alice")]
        await engine.aclose()
        return rows, usage, after[-1]

    rows, usage, end = asyncio.run(main())
    assert [(row["session_id"], row["status"], row["error_code"]) for row in rows] == [
        ("s-cut", "cancelled", "CANCELLED")
    ]
    assert rows[0]["model"] == "echo" and rows[0]["deployment"] is None
    assert usage["requests_last_minute"] == 0
    assert isinstance(end, Done)  # the minute's one request is still there: the cancelled row is not counted
    ours = [type(event) for event in heard if getattr(event, "session_id", None) == "s-cut"]
    assert ours == [RequestStarted, RequestFinished]


def test_subscribers_hear_the_start_of_a_request_cancelled_while_its_row_starts(tmp_path):
    """The ledger's queue is full (its writer cannot commit), so the row's start waits for room; a
    cancel there still lands the row (``cancelled``), and subscribers — the gateway's audit log and
    metrics — hear its start before its end, not an end alone."""
    path = tmp_path / "ledger.sqlite3"
    ledger = SqliteUsageLedger(Ledger(path, busy_timeout=0.05), owns=True, max_pending=1)
    heard: list[Any] = []
    hooks = Hooks()
    hooks.subscribe(heard.append)
    engine = engine_over(ledger, MemoryBudgetCounter(), {"tokens_per_minute": 100000}, hooks)

    async def main() -> list[dict[str, Any]]:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the writer cannot commit, so its queue stays full
        bob = RequestContext(principal="bob")
        await ledger.start(session_id="taken", context=bob, model="m")
        await ledger.start(session_id="queued", context=bob, model="m")  # the queue is full now
        task = asyncio.ensure_future(anext(engine.stream(request("s-cut"), user="alice")))
        await asyncio.sleep(0.3)
        task.cancel()
        other.execute("COMMIT")
        other.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        await ledger.flush()
        rows = await ledger.rows(user="alice")
        await engine.aclose()
        return rows

    rows = asyncio.run(main())
    assert [(row["status"], row["error_code"]) for row in rows] == [("cancelled", "CANCELLED")]
    ours = [event for event in heard if getattr(event, "session_id", None) == "s-cut"]
    assert [type(event) for event in ours] == [RequestStarted, RequestFinished]
    assert ours[0].handle is ours[1].handle


def test_a_timeout_while_counting_is_not_held_by_a_row_start_that_waits(tmp_path, monkeypatch):
    """A caller's timeout lands while the SQLite counter waits for the file's lock, and the ledger's
    queue is full, so the row's start must wait for room: the caller hears its timeout within the bound a
    cancelled write is given (``CANCELLED_WRITE_WAIT``), not when the lock goes; the row still lands,
    ended ``cancelled``."""
    from gtl_nb.engine import bookkeeping

    monkeypatch.setattr(bookkeeping, "CANCELLED_WRITE_WAIT", 0.3)
    hold = 3.0
    path = tmp_path / "ledger.sqlite3"

    async def scenario() -> tuple[str, float, list[tuple[str, str]]]:
        ledger = SqliteUsageLedger(Ledger(path, busy_timeout=5.0), owns=True, max_pending=1)
        counter = SqliteBudgetCounter(path, ledger_rows=True, busy_timeout=5.0)
        engine = engine_over(ledger, counter, {"requests_per_minute": 100})
        await ledger.flush()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        bob = RequestContext(principal="bob")
        await ledger.start(session_id="taken", context=bob, model="m")
        await ledger.start(session_id="queued", context=bob, model="m")  # the queue is full now
        asyncio.get_running_loop().call_later(hold, lambda: (other.execute("COMMIT"), other.close()))
        began = time.monotonic()
        try:
            async with asyncio.timeout(0.2):
                async for _ in engine.stream(request("s-timed"), user="alice"):
                    pass
            heard = "an answer"
        except TimeoutError:
            heard = "TimeoutError"
        waited = time.monotonic() - began
        await asyncio.sleep(hold)
        await ledger.flush()
        rows = [(row["session_id"], row["status"]) for row in await ledger.rows(user="alice")]
        await engine.aclose()
        return heard, waited, rows

    heard, waited, rows = asyncio.run(scenario())
    assert heard == "TimeoutError"
    assert waited < 1.5, f"the caller's timeout was held {waited:.2f} s by the row's start"
    assert rows == [("s-timed", "cancelled")]
