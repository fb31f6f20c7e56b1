"""A session that ends before its provider reported usage — cancelled by its caller mid-answer, cut by
an error after its answer began — is counted at no less than what it is known to have produced: the
text that reached its caller (four characters a token, as every estimate of the engine) and its
prompt's estimate, priced from the catalog, against tokens per minute and USD per day alike; its ledger
row holds those figures marked ``usage_estimated``. A request cancelled while its provider was still
silent counts its prompt (the provider may bill what it read), no output.

Without it a client that closes each stream just before its end was never refused: its requests settled
at nothing. Every scenario runs against each budget counter (memory, SQLite, Redis), over the paced
OpenAI simulator (a priced model), on loopback."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.estimates import estimate_prompt_tokens
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol import CompletionRequest, Done, Error, Message, StreamEvent, Token, Tool, ToolCall
from gtl_nb.sim.faults import Fault

MODEL = "gpt-4o-mini"
PROMPT = "Explain streaming, cancellation, pipes, gateways, ledgers and simulators, one by one, at length."
ANN = RequestContext(principal="ann")


def ask(sid: str) -> CompletionRequest:
    return CompletionRequest(
        session_id=sid, model=MODEL, messages=[Message(role="user", content=PROMPT)], max_tokens=100, stream=True
    )


@pytest.fixture
def upstream() -> Iterator[Any]:
    with sim.serve("openai", seed=3, pace=0.002, api_key="sim-key") as simulator:
        yield simulator


def budget_backend(backend: str, store_file: Path, request: pytest.FixtureRequest) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        store_file.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{store_file}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def make(backend: str, store_file: Path, request: pytest.FixtureRequest, upstream: Any):
    """``make(limits)``: an engine over the simulator counting ann's budgets in ``backend`` (run its
    scenario with ``on``, which closes it on the scenario's loop)."""

    def engine(**limits: Any) -> Engine:
        settings = load_settings(
            providers={"openai": {"api_key": "sim-key", "base_url": upstream.base_url}},
            budgets={"backend": budget_backend(backend, store_file, request), "users": {"ann": limits}},
            environ={},
        )
        return build_engine(settings, ledger="memory://")

    return engine


def on(engine: Engine, scenario: Callable[[], Awaitable[Any]]) -> Any:
    """``scenario()`` run to its end, then ``engine`` closed, on one loop."""

    async def run() -> Any:
        try:
            return await scenario()
        finally:
            await engine.aclose()

    return asyncio.run(run())


async def read_then_leave(engine: Engine, sid: str, tokens: int | None) -> tuple[list[StreamEvent], bool]:
    """Read the session, closing it after ``tokens`` tokens (``None``: to its end); the events read,
    and whether it was left before its end."""
    events: list[StreamEvent] = []
    stream = engine.stream(ask(sid), context=ANN)
    try:
        async for event in stream:
            events.append(event)
            if tokens is not None and sum(type(each) is Token for each in events) >= tokens:
                return events, True
    finally:
        await stream.aclose()
    return events, False


def received(events: list[StreamEvent]) -> str:
    return "".join(event.text for event in events if type(event) is Token)


async def row_of(engine: Engine, sid: str) -> dict[str, Any]:
    found = await engine.ledger.rows(session_id=sid)
    assert len(found) == 1, found
    return found[0]


async def counted(engine: Engine) -> dict[str, float]:
    return await engine.stores.budgets.usage("ann", now=time.time())


def prompt_estimate() -> int:
    """The engine's estimate of the prompt (``estimate_prompt_tokens``, what ``count_tokens`` answers too)."""
    return estimate_prompt_tokens(ask("any"))


def price(engine: Engine, tokens_in: int, tokens_out: int) -> float:
    cost = engine.catalog.cost("openai", MODEL, tokens_in, tokens_out)
    assert cost is not None and cost > 0  # a priced model: the USD budget has something to count
    return cost


def test_a_stream_left_after_its_answer_began_counts_what_reached_its_caller(make):
    engine = make(tokens_per_minute=100_000, usd_per_day=10)

    async def scenario():
        events, left = await read_then_leave(engine, "cut", 20)
        return events, left, await row_of(engine, "cut"), await counted(engine)

    events, left, row, usage = on(engine, scenario)
    assert left and not any(type(event) in (Done, Error) for event in events)
    tokens_out = math.ceil(len(received(events)) / 4)
    assert (row["status"], row["error_code"], row["usage_estimated"]) == ("cancelled", "CANCELLED", True)
    assert (row["tokens_in"], row["tokens_out"]) == (prompt_estimate(), tokens_out)
    assert row["cost"] == pytest.approx(price(engine, prompt_estimate(), tokens_out))
    # the budget counts the row's figures: tokens per minute and money alike
    assert usage["tokens_last_minute"] == row["tokens_in"] + row["tokens_out"]
    assert usage["usd_today"] == pytest.approx(row["cost"])


def test_an_answer_read_to_its_end_is_counted_as_its_provider_reported_it(make):
    engine = make(tokens_per_minute=100_000, usd_per_day=10)

    async def scenario():
        events, left = await read_then_leave(engine, "whole", None)
        return events, left, await row_of(engine, "whole"), await counted(engine)

    events, left, row, usage = on(engine, scenario)
    reported = next(event for event in events if type(event).__name__ == "Usage")
    assert not left and type(events[-1]) is Done
    assert (row["status"], row["usage_estimated"]) == ("ok", False)
    assert (row["tokens_in"], row["tokens_out"]) == (reported.tokens_in, reported.tokens_out)
    assert usage["tokens_last_minute"] == reported.tokens_in + reported.tokens_out


def test_a_stream_cut_by_an_error_after_its_answer_began_counts_what_reached_its_caller(make, upstream):
    engine = make(tokens_per_minute=100_000, usd_per_day=10)
    upstream.set_faults(Fault.stream_error(after=6))

    async def scenario():
        events, _ = await read_then_leave(engine, "broken", None)
        return events, await row_of(engine, "broken"), await counted(engine)

    events, row, usage = on(engine, scenario)
    assert type(events[-1]) is Error and received(events)  # the answer had begun
    tokens_out = math.ceil(len(received(events)) / 4)
    assert (row["status"], row["usage_estimated"]) == ("error", True)
    assert (row["tokens_in"], row["tokens_out"]) == (prompt_estimate(), tokens_out)
    assert usage["tokens_last_minute"] == prompt_estimate() + tokens_out
    assert usage["usd_today"] == pytest.approx(price(engine, prompt_estimate(), tokens_out))


def test_a_request_cancelled_while_its_provider_is_silent_counts_its_prompt(make, upstream):
    engine = make(tokens_per_minute=100_000, usd_per_day=10)
    upstream.set_faults(Fault.slow_first_token(30))

    async def scenario():
        task = asyncio.ensure_future(read_then_leave(engine, "silent", None))
        while not upstream.requests:  # the provider has the request
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await row_of(engine, "silent"), await counted(engine)

    row, usage = on(engine, scenario)
    assert (row["status"], row["usage_estimated"]) == ("cancelled", True)
    assert (row["tokens_in"], row["tokens_out"]) == (prompt_estimate(), 0)
    assert usage["tokens_last_minute"] == prompt_estimate()
    assert usage["usd_today"] == pytest.approx(price(engine, prompt_estimate(), 0))


def test_a_prompts_tools_are_reserved_and_settled_as_count_tokens_estimates_them(make, upstream):
    """One estimate of a prompt: the reservation and the cancelled session's row count the tool
    definitions and the replayed tool call too, as ``count_tokens`` does — not the messages' text alone."""
    engine = make(tokens_per_minute=100_000, usd_per_day=10)
    upstream.set_faults(Fault.slow_first_token(30))
    described = "Look a word up in the project's glossary and return every definition it has, " * 8
    request = CompletionRequest(
        session_id="tooled",
        model=MODEL,
        messages=[
            Message(role="system", content="Answer in one line."),
            Message(role="user", content=PROMPT),
            Message(role="assistant", tool_calls=[ToolCall(id="c1", name="glossary", arguments='{"word": "lane"}')]),
            Message(role="tool", tool_call_id="c1", content="lane: the common session's own path"),
        ],
        tools=[Tool(name="glossary", description=described, parameters={"type": "object", "properties": {}})],
        max_tokens=100,
    )
    estimate = estimate_prompt_tokens(request)
    texts_only = msgspec.structs.replace(request, tools=None, messages=request.messages[:2])
    assert estimate > estimate_prompt_tokens(texts_only) + 100  # the tools weigh in the one estimate

    async def read() -> None:
        async with aclosing(engine.stream(request, context=ANN)) as stream:
            async for _ in stream:
                pass

    async def scenario():
        task = asyncio.ensure_future(read())
        while not upstream.requests:  # the provider has the request: the reservation is held
            await asyncio.sleep(0.01)
        reserved = await counted(engine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return reserved, await row_of(engine, "tooled"), await counted(engine)

    reserved, row, usage = on(engine, scenario)
    assert reserved["tokens_last_minute"] == estimate + request.max_tokens
    assert (row["status"], row["usage_estimated"]) == ("cancelled", True)
    assert (row["tokens_in"], row["tokens_out"]) == (estimate, 0)
    assert usage["tokens_last_minute"] == estimate
    assert usage["usd_today"] == pytest.approx(price(engine, estimate, 0))


def test_leaving_each_stream_before_its_end_no_longer_escapes_tokens_per_minute(make):
    limit = 600
    engine = make(tokens_per_minute=limit)

    async def scenario():
        outcomes = []
        for number in range(40):
            events, left = await read_then_leave(engine, f"s{number}", 20)
            outcomes.append((left, events[-1]))
            if not left:
                break
        return outcomes, await engine.ledger.rows(), await counted(engine)

    outcomes, rows, usage = on(engine, scenario)
    refused = outcomes[-1][1]
    assert type(refused) is Error and refused.code == "RATE_LIMIT", outcomes[-1]
    admitted = [row for row in rows if row["status"] == "cancelled"]
    assert len(admitted) == len(outcomes) - 1 and all(row["usage_estimated"] for row in admitted)
    # admitted while the counted total was below the limit: the last one took it to the limit or over
    total = sum(row["tokens_in"] + row["tokens_out"] for row in admitted)
    assert total - (admitted[-1]["tokens_in"] + admitted[-1]["tokens_out"]) < limit <= total
    assert usage["tokens_last_minute"] == total
