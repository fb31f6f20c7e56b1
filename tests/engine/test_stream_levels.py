"""``Engine.stream_batches`` and the levels below it: however the source is chosen, read and closed,
every session ends once and leaves its ledger row completed, its budget settled and its request
context reset — also when closing the levels below fails or is cancelled a second time, and when a
bug while choosing the source raises ``StopAsyncIteration`` (which a coroutine, unlike a generator,
does not turn into ``RuntimeError``)."""

from __future__ import annotations

import asyncio
import logging
import time

from engine_kit import make_engine

from gtl_nb.engine import session_parts
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.session import run_session
from gtl_nb.engine.stores import MemoryBreakerStore, MemoryBudgetCounter, MemoryResponseCache, Stores
from gtl_nb.engine.stores.memory import MemoryUsageLedger
from gtl_nb.protocol import CompletionRequest, Message, Token
from gtl_nb.protocol.messages import Error
from gtl_nb.providers.base import Deployment

BUDGETS = {"tokens_per_minute": 100000}


def _request(**fields: object) -> CompletionRequest:
    return CompletionRequest(
        session_id="s1", model="echo", messages=[Message(role="user", content="hello there")], **fields
    )


def _engine(breakers: MemoryBreakerStore, ledger: MemoryUsageLedger, budgets: MemoryBudgetCounter, *names: str):
    stores = Stores(ledger=ledger, budgets=budgets, cache=MemoryResponseCache(), breakers=breakers)
    deployments = {name: Deployment(name=name, type="echo") for name in names or ("echo",)}
    return make_engine(deployments, stores=stores, budgets=BUDGETS)


async def _settled(budgets: MemoryBudgetCounter) -> int:
    """The tokens the principal's minute holds: the estimate while reserved, the real count once settled."""
    return (await budgets.usage("alice", now=time.time()))["tokens_last_minute"]


class _ProbeNotTakenBack(MemoryBreakerStore):
    """Grants the half-open probe slot, and fails to take it back (a shared store gone)."""

    async def acquire(self, deployment: str) -> str:
        return "probe"

    async def release(self, deployment: str) -> None:
        raise ConnectionError("breaker store unreachable")


def test_a_consumer_leaving_while_the_probe_slot_cannot_be_handed_back_still_ends_the_row(caplog):
    async def main() -> tuple[list, object, int]:
        ledger, budgets = MemoryUsageLedger(), MemoryBudgetCounter()
        engine = _engine(_ProbeNotTakenBack(), ledger, budgets)
        batches = engine.stream_batches(_request(), context=RequestContext(principal="alice"))
        async for batch in batches:
            if any(isinstance(event, Token) for event in batch):
                break  # the consumer stops mid-answer
        await batches.aclose()
        return await ledger.rows(), session_parts.REQUEST_CONTEXT.get(None), await _settled(budgets)

    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        rows, context, held = asyncio.run(main())
    assert [(row["status"], row["error_code"]) for row in rows] == [("cancelled", "CANCELLED")]
    assert context is None
    assert held < 100  # settled to what the answer used, not the reservation's estimate
    assert any("closing the levels below failed" in r.getMessage() and r.exc_info for r in caplog.records)


class _SlowToTakeBack(MemoryBreakerStore):
    """Grants the probe slot and takes a moment to take it back."""

    def __init__(self) -> None:
        super().__init__()
        self.releasing = asyncio.Event()

    async def acquire(self, deployment: str) -> str:
        return "probe"

    async def release(self, deployment: str) -> None:
        self.releasing.set()
        await asyncio.sleep(0.3)


def test_a_second_cancel_while_the_levels_below_close_still_ends_the_row_and_settles_the_budget():
    async def main() -> tuple[list, list, int]:
        ledger, budgets, breakers = MemoryUsageLedger(), MemoryBudgetCounter(), _SlowToTakeBack()
        engine = _engine(breakers, ledger, budgets)
        sent: list = []
        blocked = asyncio.Event()

        def drain():  # a reader that never catches up once the answer flows
            if any(isinstance(event, Token) for event in sent):
                blocked.set()
                return asyncio.Event().wait()
            return None

        context = RequestContext(principal="alice")
        task = asyncio.ensure_future(run_session(engine, _request(), context, sent.append, drain=drain))
        await blocked.wait()
        task.cancel()
        await breakers.releasing.wait()
        task.cancel()  # a second cancel (a shutdown, a timeout) while the probe slot is handed back
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.4)
        return sent, await ledger.rows(), await _settled(budgets)

    sent, rows, held = asyncio.run(main())
    assert isinstance(sent[-1], Error) and sent[-1].code == "CANCELLED"
    assert [(row["status"], row["error_code"]) for row in rows] == [("cancelled", "CANCELLED")]
    assert held < 100


def test_stop_async_iteration_raised_while_choosing_the_source_is_a_bug_not_the_end_of_the_answer(caplog):
    async def main() -> tuple[list, list]:
        ledger = MemoryUsageLedger()
        engine = _engine(MemoryBreakerStore(), ledger, MemoryBudgetCounter(), "a", "b")

        async def exhausted():
            return
            yield

        async def broken_ordering(request, targets):
            return await exhausted().__anext__()  # a bug that raises StopAsyncIteration

        engine._ordered = broken_ordering
        sent: list = []
        await run_session(engine, _request(providers=["a", "b"]), RequestContext(principal="alice"), sent.append)
        return sent, await ledger.rows()

    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        sent, rows = asyncio.run(main())
    assert [(type(e).__name__, getattr(e, "state", None) or getattr(e, "code", None)) for e in sent] == [
        ("Status", "queued"),
        ("Error", "INTERNAL"),
    ]
    assert [(row["status"], row["error_code"]) for row in rows] == [("error", "INTERNAL")]
    assert any("failed inside the engine" in r.getMessage() for r in caplog.records)
