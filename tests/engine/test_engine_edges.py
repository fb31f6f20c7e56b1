"""Edge cases found in review: every one ends a session with one terminal event and leaves the
breakers, budgets, cache and ledger right — whatever the consumer does at an awkward moment."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from engine_kit import make_engine

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.protocol import CompletionRequest, Done, Error, Message, Status, StreamEvent, Token, Usage
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.registry import register

_ids = itertools.count()


class Scripted:
    """A local provider whose n-th call plays the n-th script (the last one repeats)."""

    offline = True

    def __init__(self, *scripts):
        self.scripts = list(scripts)
        self.calls = 0

    def models(self):
        return []

    def generate(self, request):
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        yield from script(request.session_id)


def ok(sid):
    return [
        (0.0, Token(session_id=sid, text="hello")),
        (0.0, Usage(session_id=sid, tokens_in=5, tokens_out=5)),
        (0.0, Done(session_id=sid)),
    ]


def overloaded(sid):
    return [(0.0, Error(session_id=sid, code="OVERLOADED", message="busy", retryable=True))]


def usage_then_overloaded(sid):
    return [(0.0, Usage(session_id=sid, tokens_in=1, tokens_out=0)), *overloaded(sid)]


def too_long(sid):
    return [(0.0, Error(session_id=sid, code="CONTEXT_LENGTH_EXCEEDED", message="too long"))]


def deployment(name, *scripts):
    provider = Scripted(*scripts)
    register(name, provider)
    return Deployment(name=name, type=name, models=("m", "m-long")), provider


def request(**kw):
    kw.setdefault("model", "m")
    return CompletionRequest(session_id=f"e{next(_ids)}", messages=[Message(role="user", content="hi")], **kw)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def no_sleep(_seconds):
    return None


def collect(engine, req):
    async def go():
        return [e async for e in engine.stream(req)]

    return asyncio.run(go())


def test_a_consumer_leaving_at_the_failover_status_gives_back_the_probe_slot():
    a, _ = deployment("edge_a", overloaded)
    b, _ = deployment("edge_b", ok)
    clock = Clock()
    engine = make_engine(
        {"edge_a": a, "edge_b": b},
        clock=clock,
        sleep=no_sleep,
        routing={"breaker": {"failure_threshold": 1, "cooldown": 10}, "retry": {"max_attempts": 1}},
    )
    asyncio.run(engine.stores.breakers.record_failure("edge_b"))
    clock.now += 11  # edge_b is half-open: one probe allowed

    async def leave_at_failover():
        stream = engine.stream(request(providers=["edge_a", "edge_b"]))
        async for event in stream:
            if isinstance(event, Status) and event.state == "failover":
                break
        await stream.aclose()

    asyncio.run(leave_at_failover())
    assert asyncio.run(engine.stores.breakers.snapshots(["edge_b"]))["edge_b"]["probes_in_flight"] == 0
    assert isinstance(collect(engine, request(providers=["edge_b"]))[-1], Done)


def test_success_bookkeeping_happens_before_done_is_handed_on():
    a, _provider = deployment("edge_done", ok)
    clock = Clock()
    engine = make_engine(
        {"edge_done": a},
        clock=clock,
        sleep=no_sleep,
        cache={"enabled": True},
        routing={"breaker": {"failure_threshold": 1, "cooldown": 10}},
    )
    asyncio.run(engine.stores.breakers.record_failure("edge_done"))
    clock.now += 11

    async def stop_at_done():
        stream = engine.stream(request(temperature=0))
        async for event in stream:
            if isinstance(event, Done):
                break
        await stream.aclose()

    asyncio.run(stop_at_done())
    assert asyncio.run(engine.stores.breakers.snapshots(["edge_done"]))["edge_done"]["state"] == "closed"
    replayed = collect(engine, request(temperature=0))  # the answer was stored before done was handed on
    assert any(isinstance(e, Status) and e.state == "cached" for e in replayed)


def test_usage_sent_before_a_failure_is_not_retried_into_an_illegal_stream():
    a, provider = deployment("edge_usage", usage_then_overloaded, ok)
    engine = make_engine({"edge_usage": a}, sleep=no_sleep)
    events = collect(engine, request())
    assert isinstance(events[-1], Error) and events[-1].code == "OVERLOADED" and provider.calls == 1


def test_a_context_fallback_cycle_ends_instead_of_looping():
    a, provider = deployment("edge_cycle", too_long)
    engine = make_engine(
        {"edge_cycle": a}, sleep=no_sleep, routing={"context_fallbacks": {"m": "m-long", "m-long": "m"}}
    )
    events = collect(engine, request())
    assert isinstance(events[-1], Error) and events[-1].code == "CONTEXT_LENGTH_EXCEEDED"
    assert provider.calls == 2


def test_a_request_routing_refuses_is_recorded_under_its_bare_model(tmp_path):
    a, _ = deployment("edge_named", ok)
    ledger = Ledger(tmp_path / "l.sqlite3")
    engine = make_engine({"edge_named": a}, ledger=ledger, sleep=no_sleep)

    async def ask(model: str) -> StreamEvent:
        asked = CompletionRequest(session_id=f"s-{model}", model=model, messages=[Message(role="user", content="hi")])
        return [event async for event in engine.stream(asked)][-1]

    assert isinstance(asyncio.run(ask("anthropic:claude-x")), Error)  # no anthropic deployment: routing refuses
    for model in ("edge_named:no-such-model", "plain-typo", "llama3:8b"):
        asyncio.run(ask(model))
    rows = {row["session_id"]: row["model"] for row in ledger.rows()}
    # a prefix that names a deployment or a provider type goes; one that names neither is part of the name
    assert rows == {
        "s-edge_named:no-such-model": "no-such-model",
        "s-anthropic:claude-x": "claude-x",
        "s-plain-typo": "plain-typo",
        "s-llama3:8b": "llama3:8b",
    }


def test_budget_refusals_do_not_count_against_the_budget(tmp_path):
    a, _ = deployment("edge_budget", ok)
    wall = Clock()
    ledger = Ledger(tmp_path / "l.sqlite3", clock=wall)
    engine = make_engine(
        {"edge_budget": a}, ledger=ledger, wall_clock=wall, sleep=no_sleep, budgets={"requests_per_minute": 2}
    )

    def ask():
        async def go():
            return [e async for e in engine.stream(request(), user="ann")]

        return asyncio.run(go())[-1]

    assert isinstance(ask(), Done) and isinstance(ask(), Done)
    refused = ask()
    assert isinstance(refused, Error) and refused.code == "RATE_LIMIT"
    wall.now += refused.retry_after + 0.5
    assert isinstance(ask(), Done), "waiting the retry_after that was given must be enough"


def test_cache_hits_do_not_use_up_the_token_budget(tmp_path):
    a, provider = deployment("edge_tokens", ok)
    ledger = Ledger(tmp_path / "l.sqlite3")
    engine = make_engine(
        {"edge_tokens": a}, ledger=ledger, sleep=no_sleep, cache={"enabled": True}, budgets={"tokens_per_minute": 15}
    )
    for _ in range(4):
        assert isinstance(collect(engine, request(temperature=0))[-1], Done)
    assert provider.calls == 1


def test_close_from_another_thread_ends_the_session_once():
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.05}}}, ledger=False, environ={})
    stream = client.stream("echo", "a long answer to close from elsewhere")
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(stream))
    reader.start()
    while not any(isinstance(e, Token) for e in list(stream.transcript.events)):
        threading.Event().wait(0.01)
    stream.close()
    reader.join(10)
    errors = [e for e in stream.transcript.events if isinstance(e, Error)]
    assert not reader.is_alive() and [e.code for e in errors] == ["CANCELLED"]


def test_an_async_stream_carries_on_in_another_loop_after_a_break_and_can_be_closed():
    """As with ``EventStream``: a ``break`` out of a stream one keeps only stops reading."""
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, ledger=False, environ={})

    async def main():
        stream = client.astream("echo", "hello there you")
        first = await anext(aiter(stream))
        resumed = [event async for event in stream]
        closed = client.astream("echo", "hello")
        async for _ in closed:
            break
        await closed.aclose()
        return first, resumed, stream, closed

    first, resumed, stream, closed = asyncio.run(main())
    assert [first, *resumed] == list(stream.transcript.events)  # nothing skipped, nothing twice
    assert resumed[-1].type == "done" and "hello there you" in stream.transcript.text
    assert closed.transcript.error is not None and closed.transcript.error.code == "CANCELLED"
    client.close()


@pytest.mark.parametrize("with_ledger", [True, False])
def test_concurrent_requests_cannot_all_slip_under_requests_per_minute(tmp_path, with_ledger):
    a, provider = deployment(f"edge_rpm_{with_ledger}", ok)
    ledger = Ledger(tmp_path / "l.sqlite3") if with_ledger else False
    engine = make_engine({a.name: a}, ledger=ledger, sleep=no_sleep, budgets={"requests_per_minute": 2})

    async def main():
        async def one():
            return [e async for e in engine.stream(request(), user="eve")][-1]

        return await asyncio.gather(*(one() for _ in range(8)))

    ends = asyncio.run(main())
    assert sum(isinstance(e, Done) for e in ends) == 2
    assert provider.calls == 2
