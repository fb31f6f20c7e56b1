"""Routing, retries, failover, breakers, caching, coalescing and budgets — against the simulators.

Each behaviour is driven by a simulator's fault script; sleeps of the retry policy are recorded
instead of slept, and breaker time comes from an injected clock.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.backend import EmbeddedBackend
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.core import PROBE_UNDER_WAY_WAIT, Engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol import (
    AuthenticationError,
    BudgetExceededError,
    CompletionRequest,
    Done,
    Error,
    InvalidRequestError,
    Message,
    ProviderUnavailableError,
    RateLimitError,
    SessionStateMachine,
    Status,
    Token,
    Transcript,
    Usage,
)

OPENAI = "gpt-4o-mini"
PAUSED = " — requests to it are paused after recent failures"  # what "every circuit is open" means, said


def openai_conf(url: str) -> dict:
    return {"type": "openai", "api_key": "sim-key", "base_url": url}


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def connect(providers: dict, **kw) -> gtl_nb.Client:
    """A client whose engine sleeps through a ``RecordedSleep`` (injected through the builder)."""
    ledger = kw.pop("ledger", False)
    principal = kw.pop("user", "tester")
    settings = load_settings(providers=providers, environ={}, **kw)
    sleep = RecordedSleep()
    client = gtl_nb.Client(backend=EmbeddedBackend(settings, principal=principal, ledger=ledger, sleep=sleep))
    client.recorded_sleep = sleep
    return client


def statuses(completion, state: str) -> list[Status]:
    return [e for e in completion.events if isinstance(e, Status) and e.state == state]


def assert_legal(events) -> None:
    machine = SessionStateMachine(events[0].session_id)
    for event in events:
        machine.advance(event)
    machine.end_of_stream()


# -- retries -----------------------------------------------------------------------------------


def test_a_rate_limit_is_retried_after_retry_after_and_succeeds():
    with sim.serve("openai", faults=[sim.Fault.http(429, retry_after=2)]) as s:
        client = connect({"openai": openai_conf(s.base_url)})
        answer = client.complete(OPENAI, "retry me")
        assert len(s.requests) == 2
    retrying = statuses(answer, "retrying")
    assert len(retrying) == 1 and retrying[0].attempt == 2 and "RATE_LIMIT" in retrying[0].reason
    assert client.recorded_sleep.delays[0] >= 2  # never sooner than the server asked
    assert_legal(answer.events)


def test_backoff_grows_and_stops_at_max_attempts():
    faults = [sim.Fault.http(503)] * 5
    with sim.serve("openai", faults=faults) as s:
        client = connect(
            {"openai": openai_conf(s.base_url)},
            routing={"retry": {"max_attempts": 4, "base_delay": 1, "max_delay": 100, "jitter": False}},
        )
        with pytest.raises(gtl_nb.protocol.OverloadedError):
            client.complete(OPENAI, "x")
        assert len(s.requests) == 4
    assert client.recorded_sleep.delays == [1, 2, 4]


def test_the_error_after_several_calls_says_how_many_and_to_which_deployments():
    """Three calls to one deployment, then to two: the last error says so (why the caller waited). A
    deployment that refused the request before any call (more stop sequences than its API takes) is no
    attempt: one call is one call, however many deployments were tried."""
    retry = {"retry": {"max_attempts": 3, "base_delay": 0, "jitter": False}}
    with (
        sim.serve("openai", faults=[sim.Fault.http(503)] * 9) as a,
        sim.serve("openai", faults=[sim.Fault.http(503)] * 9) as b,
    ):
        client = connect({"a": openai_conf(a.base_url)}, routing=retry)
        with pytest.raises(gtl_nb.protocol.OverloadedError, match=r"\(after 3 attempts\)$"):
            client.complete(f"a:{OPENAI}", "x")
        both = connect({"a": openai_conf(a.base_url), "b": openai_conf(b.base_url)}, routing=retry)
        with pytest.raises(gtl_nb.protocol.OverloadedError, match=r"\(after 6 attempts to a, b\)$"):
            both.complete(OPENAI, "x", providers=["a", "b"])
    with sim.serve("openai") as served:
        refusing = {"type": "azure", "api_key": "k", "base_url": "http://127.0.0.1:9", "models": [OPENAI]}
        mixed = connect({"refusing": refusing, "b": openai_conf(served.base_url)}, routing=retry)
        served.set_faults([sim.Fault.http(400)])
        with pytest.raises(gtl_nb.protocol.GTLError) as once:
            mixed.complete(OPENAI, "x", providers=["refusing", "b"], stop=["1", "2", "3", "4", "5"])
        assert "attempts" not in str(once.value)


def test_retries_are_bounded_by_the_request_deadline():
    with sim.serve("openai", faults=[sim.Fault.http(429, retry_after=30)]) as s:
        client = connect({"openai": openai_conf(s.base_url)}, routing={"retry": {"deadline": 5}})
        with pytest.raises(RateLimitError):
            client.complete(OPENAI, "x")
        assert len(s.requests) == 1
    assert client.recorded_sleep.delays == []


def test_a_rate_limit_asking_a_long_wait_is_not_waited_here_but_failed_over_or_told_at_once():
    """A provider asking for 20 s (over ``max_retry_after``, 10 s): nothing sleeps. With another
    deployment the request fails over to it at once; with none it ends with the provider's error and
    its ``retry_after``, for the caller (or an SDK in front of a gateway) to wait on once."""
    with sim.serve("openai", faults=[sim.Fault.http(429, retry_after=20)]) as s:
        client = connect({"openai": openai_conf(s.base_url)})
        with pytest.raises(RateLimitError) as info:
            client.complete(OPENAI, "x")
        assert len(s.requests) == 1 and info.value.retry_after == pytest.approx(20)
    assert client.recorded_sleep.delays == []
    with (
        sim.serve("openai", faults=[sim.Fault.http(429, retry_after=20)]) as limited,
        sim.serve("openai") as spare,
    ):
        client = connect({"limited": openai_conf(limited.base_url), "spare": openai_conf(spare.base_url)})
        answer = client.complete(OPENAI, "x", providers=["limited", "spare"])
        assert answer.provider == "spare" and len(limited.requests) == 1
    assert client.recorded_sleep.delays == [] and not statuses(answer, "retrying")
    assert statuses(answer, "failover")


def test_quota_exhausted_is_not_retried():
    with sim.serve("openai", faults=[sim.Fault.http(429, kind="quota")]) as s:
        client = connect({"openai": openai_conf(s.base_url)})
        with pytest.raises(RateLimitError) as info:
            client.complete(OPENAI, "x")
        assert not info.value.retryable and len(s.requests) == 1


# -- failover ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [sim.Fault.http(503), sim.Fault.http(500), sim.Fault.overloaded(), sim.Fault.http(429, retry_after=1)],
    ids=["503", "500", "overloaded", "429"],
)
def test_retryable_failures_fail_over_to_the_next_provider(fault):
    with sim.serve("openai", faults=fault) as a, sim.serve("anthropic") as b:
        client = connect(
            {"openai": openai_conf(a.base_url), "anthropic": {"api_key": "sim-key", "base_url": b.base_url}},
            routing={"retry": {"max_attempts": 1}},
        )
        answer = client.complete(OPENAI, "hello", providers=["openai", "anthropic:claude-sonnet-4-5"])
    assert answer.provider == "anthropic"
    [failover] = statuses(answer, "failover")
    assert failover.from_provider == "openai" and failover.to_provider == "anthropic"
    assert_legal(answer.events)


def test_connection_refused_fails_over():
    dead = sim.serve("openai")
    dead_url = dead.base_url
    dead.close()
    with sim.serve("anthropic") as b:
        client = connect(
            {"openai": openai_conf(dead_url), "anthropic": {"api_key": "sim-key", "base_url": b.base_url}},
            routing={"retry": {"max_attempts": 1}},
        )
        answer = client.complete(OPENAI, "hi", providers=["openai", "anthropic:claude-sonnet-4-5"])
    assert answer.provider == "anthropic"
    assert "PROVIDER_UNAVAILABLE" in statuses(answer, "failover")[0].reason


def test_a_stall_times_out_and_fails_over():
    with sim.serve("openai", faults=sim.Fault.stall(after=2, seconds=5)) as a, sim.serve("anthropic") as b:
        client = connect(
            {"openai": openai_conf(a.base_url), "anthropic": {"api_key": "sim-key", "base_url": b.base_url}},
            timeouts={"idle": 0.3, "first_byte": 2},
        )
        answer = client.complete(OPENAI, "hi", providers=["openai", "anthropic:claude-sonnet-4-5"])
    assert answer.provider == "anthropic"
    assert "TIMEOUT" in statuses(answer, "failover")[0].reason


@pytest.mark.parametrize(
    ("fault", "error"),
    [(sim.Fault.http(401), AuthenticationError), (sim.Fault.http(400), InvalidRequestError)],
    ids=["auth", "invalid"],
)
def test_caller_mistakes_never_fail_over(fault, error):
    with sim.serve("openai", faults=fault) as a, sim.serve("anthropic") as b:
        client = connect(
            {"openai": openai_conf(a.base_url), "anthropic": {"api_key": "sim-key", "base_url": b.base_url}}
        )
        with pytest.raises(error):
            client.complete(OPENAI, "hi", providers=["openai", "anthropic:claude-sonnet-4-5"])
        assert len(b.requests) == 0


def test_a_failure_mid_stream_discards_the_partial_answer_everywhere():
    with sim.serve("openai", faults=sim.Fault.drop_after(4)) as a, sim.serve("anthropic") as b:
        client = connect(
            {"openai": openai_conf(a.base_url), "anthropic": {"api_key": "sim-key", "base_url": b.base_url}}
        )
        events = list(client.stream(OPENAI, "a long story", providers=["openai", "anthropic:claude-sonnet-4-5"]))
        expected = connect({"anthropic": {"api_key": "sim-key", "base_url": b.base_url}}).complete(
            "claude-sonnet-4-5", "a long story"
        )
    assert_legal(events)
    index = next(i for i, e in enumerate(events) if isinstance(e, Status) and e.state == "failover")
    assert any(isinstance(e, Token) for e in events[:index]), "the first provider streamed something first"
    transcript = Transcript()
    for event in events:
        transcript.add(event)
    assert transcript.text == expected.text
    usages = [e for e in events[index:] if isinstance(e, Usage)]
    assert len(usages) == 1 and isinstance(events[-1], Done) and events[-1].provider == "anthropic"


def test_a_failure_mid_stream_with_nowhere_to_go_is_an_error_not_a_truncation():
    with sim.serve("openai", faults=sim.Fault.drop_after(4)) as a:
        client = connect({"openai": openai_conf(a.base_url)})
        with pytest.raises(ProviderUnavailableError) as info:
            client.complete(OPENAI, "a long story")
        assert len(a.requests) == 1  # content had been sent: never retried (it would duplicate output)
    partial = info.value.completion
    assert partial.finish_reason is None and partial.error.code == "PROVIDER_UNAVAILABLE"


# -- strategies --------------------------------------------------------------------------------


def test_round_robin_across_deployments_of_the_same_model():
    with sim.serve("openai") as a, sim.serve("openai") as b:
        client = connect(
            {"oa-1": openai_conf(a.base_url), "oa-2": openai_conf(b.base_url)}, routing={"strategy": "round_robin"}
        )
        providers = [client.complete(OPENAI, f"n{i}").provider for i in range(6)]
        assert Counter(providers) == {"oa-1": 3, "oa-2": 3}
        assert providers[0] != providers[1]
        assert len(a.requests) == len(b.requests) == 3


def test_weighted_routing_follows_the_weights():
    with sim.serve("openai") as a, sim.serve("openai") as b:
        client = connect(
            {"big": {**openai_conf(a.base_url), "weight": 3}, "small": openai_conf(b.base_url)},
            routing={"strategy": "weighted"},
        )
        providers = Counter(client.complete(OPENAI, f"n{i}").provider for i in range(8))
    assert providers == {"big": 6, "small": 2}


def test_lowest_cost_prefers_the_cheaper_model():
    with sim.serve("openai") as a:
        client = connect(
            {"mini": {**openai_conf(a.base_url), "models": ["gpt-4o-mini", "gpt-4o"]}},
            routing={"strategy": "lowest_cost"},
        )
        engine = client.backend.engine
        targets = [engine.router._target(engine.deployments["mini"], m) for m in ("gpt-4o", "gpt-4o-mini")]
        ordered = engine.strategy.order(targets, "")
        assert [t.model for t in ordered] == ["gpt-4o-mini", "gpt-4o"]


def test_lowest_latency_learns_the_faster_deployment():
    with sim.serve("openai", faults=sim.Fault.slow_first_token(0.3)) as slow, sim.serve("openai") as fast:
        client = connect(
            {"slow": openai_conf(slow.base_url), "fast": openai_conf(fast.base_url)},
            routing={"strategy": "lowest_latency"},
        )
        first_two = {client.complete(OPENAI, f"warm {i}").provider for i in range(2)}
        assert first_two == {"slow", "fast"}  # unmeasured deployments are tried first
        assert [client.complete(OPENAI, f"n{i}").provider for i in range(3)] == ["fast"] * 3


# -- circuit breakers (injected clock) ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(engine: Engine, request: CompletionRequest) -> list:
    async def go():
        return [e async for e in engine.stream(request)]

    return asyncio.run(go())


def circuit_engine(base_url: str, clock: FakeClock, *, attempts: int = 1) -> tuple[Engine, Callable[[int], Any]]:
    """An engine on the simulator at ``base_url`` whose circuit opens after two failures (30 s cooldown),
    ``attempts`` tries a request, ``clock`` its time; and ``ask(i)``, which sends request ``s{i}`` and
    returns its last event."""
    settings = load_settings(
        providers={"openai": openai_conf(base_url)},
        environ={},
        routing={"breaker": {"failure_threshold": 2, "cooldown": 30}, "retry": {"max_attempts": attempts}},
    )
    engine = build_engine(settings, ledger=False, clock=clock, sleep=RecordedSleep())

    def ask(i: int) -> Any:
        request = CompletionRequest(session_id=f"s{i}", model=OPENAI, messages=[Message(role="user", content="hi")])
        return run(engine, request)[-1]

    return engine, ask


def test_what_a_deployment_cannot_carry_fails_over_at_once_without_a_verdict():
    """JSON without a schema asked of a list whose first deployment cannot give it (Bedrock's Converse
    takes a schema only): the next one answers; nothing was sent to the first, and its breaker heard
    nothing. Asked of it alone, the caller gets the 400 that names the parameter."""
    structured = {"type": "json_object"}
    keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
    with sim.serve("bedrock", models="*") as aws, sim.serve("openai") as s:
        settings = load_settings(
            providers={
                "aws": {"type": "bedrock", "base_url": aws.base_url, "region": "us-east-1", **keys},
                "openai": openai_conf(s.base_url),
            },
            environ={},
            routing={"breaker": {"failure_threshold": 1, "cooldown": 30}},
        )
        engine = build_engine(settings, ledger=False, clock=FakeClock(), sleep=RecordedSleep())

        def ask(i: int, providers: list[str]) -> list:
            request = CompletionRequest(
                session_id=f"s{i}",
                model=OPENAI,
                providers=providers,
                response_format=structured,
                messages=[Message(role="user", content="a number")],
            )
            return run(engine, request)

        events = ask(1, ["aws", "openai"])
        assert isinstance(events[-1], Done) and events[-1].provider == "openai", events[-1]
        assert any(isinstance(e, Status) and e.state == "failover" for e in events)
        assert not aws.requests and asyncio.run(engine.breaker_states())["aws"]["state"] == "closed"
        alone = ask(2, ["aws"])[-1]
        assert isinstance(alone, Error) and alone.code == "INVALID_REQUEST" and "response_format" in alone.message


def test_breaker_opens_cools_down_and_closes_again():
    clock = FakeClock()
    with sim.serve("openai", faults=[sim.Fault.http(503)] * 2) as s:
        settings = load_settings(
            providers={"openai": openai_conf(s.base_url)},
            environ={},
            routing={"breaker": {"failure_threshold": 2, "cooldown": 30}, "retry": {"max_attempts": 1}},
        )
        engine = build_engine(settings, ledger=False, clock=clock, sleep=RecordedSleep())

        def ask(i):
            return run(
                engine,
                CompletionRequest(session_id=f"s{i}", model=OPENAI, messages=[Message(role="user", content="hi")]),
            )

        ask(1)
        ask(2)
        assert asyncio.run(engine.breaker_states())["openai"]["state"] == "open"
        refused = ask(3)
        assert len(s.requests) == 2  # an open circuit sends nothing upstream
        assert isinstance(refused[-1], Error) and "every circuit is open" in refused[-1].message
        assert refused[-1].retry_after == pytest.approx(30)
        clock.now += 31
        assert asyncio.run(engine.breaker_states())["openai"]["state"] in ("open", "half_open")
        probe = ask(4)
        assert isinstance(probe[-1], Done)
        assert asyncio.run(engine.breaker_states())["openai"]["state"] == "closed"


@pytest.mark.parametrize(("retry_after", "opens"), [(0.02, False), (7, True)])
def test_a_rate_limit_opens_the_circuit_unless_it_asks_for_under_a_second(retry_after, opens):
    """A 429 asking for 20 ms is a throttle the request's retry rides out: counted, a burst of them shut
    every caller out for the breaker's whole cooldown. One asking for seconds counts."""
    with sim.serve("openai", faults=[sim.Fault.http(429, retry_after=retry_after)] * 3) as s:
        settings = load_settings(
            providers={"openai": openai_conf(s.base_url)},
            environ={},
            routing={"breaker": {"failure_threshold": 2, "cooldown": 30}, "retry": {"max_attempts": 1}},
        )
        engine = build_engine(settings, ledger=False, clock=FakeClock(), sleep=RecordedSleep())

        def ask(i: int) -> Error:
            request = CompletionRequest(session_id=f"s{i}", model=OPENAI, messages=[Message(role="user", content="hi")])
            return run(engine, request)[-1]

        assert [ask(1).code, ask(2).code] == ["RATE_LIMIT", "RATE_LIMIT"]
        state = asyncio.run(engine.breaker_states())["openai"]["state"]
        third = ask(3)
    assert (state == "open") is opens, state
    assert third.code == ("PROVIDER_UNAVAILABLE" if opens else "RATE_LIMIT"), third  # refused, or asked again


@pytest.mark.parametrize("fault", [sim.Fault.http(429, retry_after=120), sim.Fault.overloaded(retry_after=120)])
def test_a_providers_retry_after_keeps_the_circuit_open_past_the_cooldown(fault):
    """The failure that opens the circuit said "retry after 120 s": with a 30 s cooldown the deployment
    was probed at 30 s, while its provider had said it would refuse. Now it is left alone until then,
    the refusal and ``client.breakers()`` say when, and after it one probe closes the circuit."""
    clock = FakeClock()
    with sim.serve("openai", faults=[fault] * 2) as s:
        engine, ask = circuit_engine(s.base_url, clock)

        first, second = ask(1), ask(2)
        assert first.retry_after == second.retry_after == pytest.approx(120), second
        opened = asyncio.run(engine.breaker_states())["openai"]
        clock.now += 31
        past_cooldown = ask(3)
        clock.now += 88
        still = asyncio.run(engine.breaker_states())["openai"]
        clock.now += 1
        probe = ask(4)
        closed = asyncio.run(engine.breaker_states())["openai"]["state"]
    assert (opened["state"], opened["retry_in"], opened["provider_retry_after"]) == ("open", 120, 120)
    assert past_cooldown.code == "PROVIDER_UNAVAILABLE" and "every circuit is open" in past_cooldown.message
    assert past_cooldown.retry_after == pytest.approx(89)  # the caller is told when, too
    assert (still["state"], still["retry_in"]) == ("open", pytest.approx(1))
    assert len(s.requests) == 3  # the two failures and the probe: nothing sent while the provider refused
    assert isinstance(probe, Done) and closed == "closed"


def test_a_rate_limit_asking_for_2_s_opens_the_circuit_for_2_s_not_the_cooldown():
    """A provider answering 429 with ``Retry-After: 2`` opened the circuit for the 30 s cooldown: for 30 s
    every request was refused, and a client honouring the provider's wait (the OpenAI SDK's retries)
    gave up. The circuit is open for the provider's 2 s, the refusal says so, and then a probe goes."""
    clock = FakeClock()
    with sim.serve("openai", faults=[sim.Fault.http(429, retry_after=2)] * 2) as s:
        engine, ask = circuit_engine(s.base_url, clock)

        limited = [ask(1), ask(2)]
        opened = asyncio.run(engine.breaker_states())["openai"]
        refused = ask(3)
        clock.now += 1.5
        still_refused = ask(4)
        clock.now += 0.5
        probe = ask(5)
        closed = asyncio.run(engine.breaker_states())["openai"]["state"]
    assert [error.code for error in limited] == ["RATE_LIMIT", "RATE_LIMIT"]
    assert (opened["state"], opened["retry_in"], opened["provider_retry_after"]) == ("open", 2, 2)
    assert refused.code == "PROVIDER_UNAVAILABLE", refused
    assert refused.message == f"every circuit is open (openai){PAUSED}; retry in 2 s"
    assert refused.retry_after == pytest.approx(2)
    assert still_refused.code == "PROVIDER_UNAVAILABLE" and still_refused.retry_after == pytest.approx(0.5)
    assert still_refused.message.endswith("; retry in 1 s")  # rounded up: never "retry in 0 s"
    assert len(s.requests) == 3  # the two 429s and the probe: nothing sent while the provider refused
    assert isinstance(probe, Done) and closed == "closed"


def test_a_caller_refused_while_the_probe_is_under_way_is_told_to_ask_again_shortly():
    """Past the cooldown one probe goes (here, or on another replica sharing the circuit); everyone else is
    refused until its verdict. That refusal named no wait, so a gateway answered it 502 without
    ``Retry-After``; it says a second, the gateway's 503 with ``Retry-After: 1``."""
    clock = FakeClock()
    with sim.serve("openai", faults=[sim.Fault.http(500)] * 2) as s:
        engine, ask = circuit_engine(s.base_url, clock)
        ask(1), ask(2)
        clock.now += 31
        grant = asyncio.run(engine.stores.breakers.acquire("openai"))  # the probe, under way elsewhere
        state = asyncio.run(engine.breaker_states())["openai"]
        refused = ask(3)
    assert grant == "probe" and (state["state"], state["retry_in"]) == ("half_open", None)
    assert refused.code == "PROVIDER_UNAVAILABLE" and refused.retryable
    assert refused.retry_after == PROBE_UNDER_WAY_WAIT == 1.0
    assert refused.message == f"every circuit is open (openai){PAUSED}; retry in 1 s"
    assert len(s.requests) == 2


def test_a_shorter_retry_after_holds_the_circuit_for_itself_and_a_longer_one_is_bounded():
    clock = FakeClock()
    faults = [sim.Fault.http(429, retry_after=5), sim.Fault.http(429, retry_after=86_400)]
    with sim.serve("openai", faults=faults) as s:
        settings = load_settings(
            providers={"short": openai_conf(s.base_url), "long": openai_conf(s.base_url)},
            environ={},
            routing={
                "breaker": {"failure_threshold": 1, "cooldown": 30, "max_cooldown": 600},
                "retry": {"max_attempts": 1},
            },
        )
        engine = build_engine(settings, ledger=False, clock=clock, sleep=RecordedSleep())
        for i, deployment in enumerate(("short", "long")):
            request = CompletionRequest(
                session_id=f"s{i}", model=OPENAI, providers=[deployment], messages=[Message(role="user", content="hi")]
            )
            run(engine, request)
        states = asyncio.run(engine.breaker_states())
    assert (states["short"]["retry_in"], states["long"]["retry_in"]) == (5, 600)


def test_a_probe_that_meets_a_momentary_rate_limit_gives_its_slot_back():
    """The half-open probe's answer was a 429 asking for 20 ms: no verdict, but the probe's slot must be
    given back before the retry — kept, the circuit stayed half-open with its one slot taken, and every
    later request was refused without asking the provider, for good."""
    clock = FakeClock()
    faults = [sim.Fault.http(503)] * 2 + [sim.Fault.http(429, retry_after=0.02)]
    with sim.serve("openai", faults=faults) as s:
        engine, ask = circuit_engine(s.base_url, clock, attempts=2)

        ask(1)  # two 503s: the circuit opens
        assert asyncio.run(engine.breaker_states())["openai"]["state"] == "open"
        clock.now += 31
        probe = ask(2)  # the probe meets the 429, gives its slot back, and its retry is answered
        later = ask(3)
        state = asyncio.run(engine.breaker_states())["openai"]["state"]
    assert isinstance(probe, Done) and isinstance(later, Done), (probe, later)
    assert state == "closed"


def test_an_open_circuit_is_skipped_in_favour_of_a_healthy_deployment():
    with sim.serve("openai", faults=sim.Fault.http(503)) as bad, sim.serve("openai") as good:
        client = connect(
            {"bad": openai_conf(bad.base_url), "good": openai_conf(good.base_url)},
            routing={"breaker": {"failure_threshold": 1}, "retry": {"max_attempts": 1}},
        )
        first = client.complete(OPENAI, "x", providers=["bad", "good"])
        assert first.provider == "good" and client.breakers()["bad"]["state"] == "open"
        second = client.complete(OPENAI, "y", providers=["bad", "good"])
        assert second.provider == "good" and not statuses(second, "failover")
        assert len(bad.requests) == 1


# -- caching and coalescing --------------------------------------------------------------------


def test_identical_deterministic_requests_are_served_from_the_cache():
    with sim.serve("openai") as s:
        client = connect({"openai": openai_conf(s.base_url)}, cache={"enabled": True})
        first = client.complete(OPENAI, "cache me", temperature=0)
        second = client.complete(OPENAI, "cache me", temperature=0)
        assert len(s.requests) == 1
    assert second.text == first.text and second.session_id != first.session_id
    assert statuses(second, "cached") and second.usage.cache_hit and second.cost == 0.0
    assert second.usage.tokens_in == first.usage.tokens_in and second.usage.tokens_out == first.usage.tokens_out
    first_tokens = [e.text for e in first.events if isinstance(e, Token)]
    assert [e.text for e in second.events if isinstance(e, Token)] == first_tokens  # still a stream, as it came
    assert all(e.session_id == second.session_id for e in second.events)


def test_sampling_requests_are_cached_only_when_asked():
    with sim.serve("openai") as s:
        client = connect({"openai": openai_conf(s.base_url)}, cache={"enabled": True})
        client.complete(OPENAI, "warm", temperature=0.7)
        client.complete(OPENAI, "warm", temperature=0.7)
        assert len(s.requests) == 2
        client.complete(OPENAI, "opt in", temperature=0.7, cache=True)
        client.complete(OPENAI, "opt in", temperature=0.7, cache=True)
        assert len(s.requests) == 3
        client.complete(OPENAI, "opt out", temperature=0, cache=False)
        client.complete(OPENAI, "opt out", temperature=0, cache=False)
        assert len(s.requests) == 5


def test_identical_concurrent_requests_make_one_upstream_call(tmp_path):
    with sim.serve("openai", pace=0.02) as s:
        client = connect({"openai": openai_conf(s.base_url)}, ledger=tmp_path / "l.sqlite3")
        results: list = [None] * 5

        def ask(i):
            results[i] = client.complete(OPENAI, "same question", temperature=0)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(s.requests) == 1
    assert len({r.text for r in results}) == 1 and len({r.session_id for r in results}) == 5
    frame = client.usage()
    assert len(frame) == 5 and frame["coalesced"].sum() == 4 and (frame["status"] == "ok").all()
    assert frame[frame["coalesced"]]["cost"].fillna(0).sum() == 0


# -- budgets -----------------------------------------------------------------------------------


def test_requests_per_minute_refuses_before_any_upstream_call(tmp_path):
    with sim.serve("openai") as s:
        client = connect(
            {"openai": openai_conf(s.base_url)},
            ledger=tmp_path / "l.sqlite3",
            budgets={"requests_per_minute": 2},
            user="bob",
        )
        client.complete(OPENAI, "1")
        client.complete(OPENAI, "2")
        with pytest.raises(RateLimitError) as info:
            client.complete(OPENAI, "3")
        assert len(s.requests) == 2
    assert info.value.retryable and info.value.retry_after
    frame = client.usage()
    assert len(frame) == 3 and list(frame["error_code"].dropna()) == ["RATE_LIMIT"]


def test_money_per_day_is_shared_by_processes_through_the_ledger(tmp_path):
    ledger = tmp_path / "shared.sqlite3"
    with sim.serve("openai") as s:
        script = textwrap.dedent(
            """
            import sys, gtl_nb
            c = gtl_nb.connect(providers={"openai": {"api_key": "sim-key", "base_url": sys.argv[1]}},
                               ledger=sys.argv[2], user="carol", environ={})
            print(c.complete("gpt-4o", "spend some money in another process").cost)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script, s.base_url, str(ledger)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
            timeout=60,
        )
        spent = float(out.stdout.strip())
        assert spent > 0
        client = connect(
            {"openai": openai_conf(s.base_url)}, ledger=ledger, user="carol", budgets={"usd_per_day": spent / 2}
        )
        with pytest.raises(BudgetExceededError, match="daily budget"):
            client.complete(OPENAI, "one more")
        assert len(s.requests) == 1
        other = connect(
            {"openai": openai_conf(s.base_url)}, ledger=ledger, user="dave", budgets={"usd_per_day": spent / 2}
        )
        assert other.complete(OPENAI, "someone else").text


# -- context-length fallback -------------------------------------------------------------------


def register_small_context_provider() -> None:
    """An offline provider type ``smallctx`` whose model ``tiny`` refuses every prompt as too long and
    whose other models answer ``answered by MODEL``."""
    from gtl_nb.providers import registry

    class Small:
        name = "smallctx"
        offline = True

        def models(self):
            return []

        def generate(self, request):
            if request.model == "tiny":
                yield 0.0, Error(session_id=request.session_id, code="CONTEXT_LENGTH_EXCEEDED", message="too long")
                return
            yield 0.0, Token(session_id=request.session_id, text=f"answered by {request.model}")
            yield 0.0, Usage(session_id=request.session_id, tokens_in=1, tokens_out=1, cost=0.0)
            yield 0.0, Done(session_id=request.session_id)

    registry.register("smallctx", Small())


def test_context_length_errors_move_to_the_configured_larger_model():
    register_small_context_provider()
    client = connect(
        {"ctx": {"type": "smallctx", "models": ["tiny", "huge"]}}, routing={"context_fallbacks": {"tiny": "huge"}}
    )
    answer = client.complete("tiny", "a very long prompt")
    assert answer.text == "answered by huge"
    assert "CONTEXT_LENGTH_EXCEEDED" in statuses(answer, "failover")[0].reason
    plain = connect({"ctx": {"type": "smallctx", "models": ["tiny"]}})
    with pytest.raises(gtl_nb.protocol.ContextLengthExceededError):
        plain.complete("tiny", "a very long prompt")


def fallback_engine() -> Engine:
    """An engine whose deployment ``ctx`` serves ``tiny`` (every prompt too long: ``smallctx``) and
    whose ``[routing] context_fallbacks`` sends it to ``huge`` on another deployment, ``big``."""
    register_small_context_provider()
    settings = load_settings(
        providers={"ctx": {"type": "smallctx", "models": ["tiny"]}, "big": {"type": "smallctx", "models": ["huge"]}},
        environ={},
        routing={"context_fallbacks": {"tiny": "big:huge"}},
    )
    return build_engine(settings, ledger=False)


def test_a_context_fallback_a_token_may_not_use_is_not_taken():
    """The fallback spends another deployment's key: a token whose allow-lists do not reach it gets the
    provider's refusal, as without a fallback — never an answer from a model it may not ask for."""
    from gtl_nb.engine.context import RequestContext

    engine = fallback_engine()
    request = CompletionRequest(session_id="s", model="ctx:tiny", messages=[Message(role="user", content="long")])

    async def ended(context: RequestContext) -> Any:
        return [event async for event in engine.stream(request, context=context)][-1]

    narrow = RequestContext(principal="grace", allowed_deployments=frozenset({"ctx"}))
    wide = RequestContext(principal="grace", allowed_deployments=frozenset({"ctx", "big"}))
    refused, answered = asyncio.run(ended(narrow)), asyncio.run(ended(wide))
    assert refused.code == "CONTEXT_LENGTH_EXCEEDED"
    assert isinstance(answered, Done) and answered.provider == "big"


def test_callers_that_differ_in_whether_they_may_use_the_context_fallback_share_no_call():
    """A shared call may end at the context fallback: a token that may not use it must not be handed that
    answer by joining one that may (nor the other the refusal), so their flights are apart."""
    import contextvars

    from gtl_nb.engine import session_parts
    from gtl_nb.engine.context import RequestContext

    engine = fallback_engine()
    request = CompletionRequest(
        session_id="s", model="ctx:tiny", temperature=0, messages=[Message(role="user", content="long")]
    )
    (target,) = engine.targets(request)

    def key(*deployments: str) -> str | None:
        context = RequestContext(principal="p", allowed_deployments=frozenset(deployments))

        def under() -> str | None:
            session_parts.REQUEST_CONTEXT.set(context)
            return engine._coalescing_key(request, target)

        return contextvars.copy_context().run(under)

    assert key("ctx") != key("ctx", "big")
    assert key("ctx") == key("ctx") and key("ctx", "big") == key("ctx", "big")


def test_a_coalesced_request_survives_the_caller_it_shared_with_leaving():
    with sim.serve("openai", pace=0.02) as s:
        client = connect({"openai": openai_conf(s.base_url)})
        leader = client.stream(OPENAI, "one shared question", temperature=0)
        reader = threading.Thread(target=lambda: list(leader))
        reader.start()
        while not any(isinstance(e, Token) for e in list(leader.transcript.events)):
            threading.Event().wait(0.005)
        follower_result: list = []
        follower = threading.Thread(
            target=lambda: follower_result.append(client.complete(OPENAI, "one shared question", temperature=0))
        )
        follower.start()
        while not client.backend.engine._flights or next(iter(client.backend.engine._flights.values())).followers == 0:
            threading.Event().wait(0.005)
        leader.close()  # the caller that started the upstream call goes away
        reader.join(10)
        follower.join(30)
        assert len(s.requests) == 1
    assert leader.transcript.error.code == "CANCELLED"
    assert follower_result and follower_result[0].finish_reason == "stop" and follower_result[0].text


def test_the_shared_upstream_call_is_cancelled_when_its_last_reader_leaves():
    with sim.serve("openai", pace=0.05) as s:
        client = connect({"openai": openai_conf(s.base_url)})
        stream = client.stream(OPENAI, "nobody will read this to the end", temperature=0)
        next(e for e in stream if isinstance(e, Token))
        stream.close()
        for _ in range(200):
            if not client.backend.engine._flights:
                break
            threading.Event().wait(0.01)
        assert not client.backend.engine._flights
