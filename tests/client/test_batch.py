"""Batches: bounded concurrency, one result or error per item, in order, with progress."""

from __future__ import annotations

import asyncio
import io

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.backend import EmbeddedBackend
from gtl_nb.client import Completion
from gtl_nb.engine.hooks import Hooks, RequestFinished, RequestStarted
from gtl_nb.engine.settings import load_settings
from gtl_nb.progress import Progress
from gtl_nb.protocol import GTLError, InvalidRequestError, ModelNotFoundError, RateLimitError


@pytest.fixture(scope="module")
def client():
    c = gtl_nb.connect(ledger=False, environ={})
    yield c
    c.close()


def test_results_come_back_in_order_with_errors_in_place(client):
    items = ["first", {"messages": "second", "max_tokens": 3}, {"model": "no-such-model", "messages": "x"}, "fourth"]
    results = client.batch(items, model="echo", concurrency=2, progress=False)
    assert len(results) == 4
    assert isinstance(results[0], Completion) and results[0].text.startswith('You said: "first"')
    assert results[1].truncated
    assert isinstance(results[2], ModelNotFoundError)
    assert results[3].text.startswith('You said: "fourth"')


def test_concurrency_is_bounded():
    hooks = Hooks()
    active = {"now": 0, "max": 0}

    def count(event):  # the engine's lifecycle hooks see every session start and end
        if isinstance(event, RequestStarted):
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        elif isinstance(event, RequestFinished):
            active["now"] -= 1

    hooks.subscribe(count)
    with sim.serve("openai", pace=0.01) as simulator:
        settings = load_settings(
            providers={"openai": {"api_key": "sim-key", "base_url": simulator.base_url}}, environ={}
        )
        client = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="batcher", ledger=False, hooks=hooks))
        results = client.batch([f"prompt {i}" for i in range(9)], model="gpt-4o-mini", concurrency=3, progress=False)
        client.close()
    assert all(isinstance(r, Completion) for r in results)
    assert active["max"] == 3 and active["now"] == 0
    assert len(simulator.requests) == 9


def test_upstream_failures_are_per_item():
    faults = [sim.Fault.ok(), sim.Fault.http(429, retry_after=1), sim.Fault.ok()]
    with sim.running("openai", faults=faults) as url:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": url}},
            routing={"retry": {"max_attempts": 1}},  # no retries: the failure shows in its slot
            ledger=False,
            environ={},
        )
        results = client.batch(["a", "b", "c"], model="gpt-4o-mini", concurrency=1, progress=False)
        client.close()
    assert isinstance(results[0], Completion) and isinstance(results[2], Completion)
    assert isinstance(results[1], RateLimitError)


def test_async_twin(client):
    async def main():
        return await client.abatch(["x", "y"], model="echo", progress=False)

    results = asyncio.run(main())
    assert [r.text.split('"')[1] for r in results] == ["x", "y"]


def test_bad_arguments(client):
    with pytest.raises(InvalidRequestError, match="concurrency"):
        client.batch(["x"], model="echo", concurrency=0, progress=False)
    results = client.batch([42], model="echo", progress=False)
    assert isinstance(results[0], GTLError)


def test_one_request_given_alone_is_refused_not_sent_once_a_character():
    # a string (or a dict) given where a list goes was iterated: batch("hello") sent five billed requests
    with sim.serve("openai") as simulator:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": simulator.base_url}}, ledger=False, environ={}
        )
        for alone in ("hello", {"messages": "hello"}):
            with pytest.raises(InvalidRequestError, match=rf"batch\(\) takes a list .*not one {type(alone).__name__}"):
                client.batch(alone, model="gpt-4o-mini", progress=False)
        with pytest.raises(InvalidRequestError, match=r"compare\(\) takes a list of models.*not one str"):
            client.compare("gpt-4o-mini", "hello")
        with pytest.raises(InvalidRequestError, match="concurrency must be at least 1, not '4'"):
            client.batch(["hello"], model="gpt-4o-mini", concurrency="4", progress=False)
        client.close()
    assert simulator.requests == []


def test_terminal_progress_bar_draws_the_final_state():
    out = io.StringIO()
    bar = Progress(3, "demo", stream=out)
    bar.advance()
    bar.advance(ok=False)
    bar.advance()
    bar.close()
    assert out.getvalue().rstrip().endswith("3/3, 1 failed")
