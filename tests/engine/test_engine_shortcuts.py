"""The engine's per-request shortcuts change nothing a caller can see.

* ``Engine._targets`` remembers the targets of a bare model name: a reload starts again, a failure is
  never remembered, the memo is bounded, and a name that picks its deployment is always resolved.
* In-process breakers and budget counters are asked directly (no task, no shield): a probe slot is still
  handed back when its session ends without a verdict, and a settled reservation still counts.
"""

from __future__ import annotations

import asyncio

import pytest
from engine_kit import make_engine

from gtl_nb.engine import core
from gtl_nb.engine.cache import CacheConfig
from gtl_nb.engine.http import Timeouts
from gtl_nb.engine.settings import RoutingSettings, Settings
from gtl_nb.protocol.messages import CompletionRequest, Done, Error, Message
from gtl_nb.providers.base import Deployment


def _request(model: str, session_id: str = "s1") -> CompletionRequest:
    return CompletionRequest(session_id=session_id, model=model, messages=[Message(role="user", content="hi")])


def _events(engine: core.Engine, request: CompletionRequest) -> list:
    async def collect() -> list:
        return [event async for event in engine.stream(request)]

    return asyncio.run(collect())


def _settings(deployments: dict[str, Deployment]) -> Settings:
    return Settings(
        deployments=deployments,
        timeouts=Timeouts(),
        deployment_timeouts={},
        routing=RoutingSettings.from_table({}, {}),
        cache=CacheConfig.from_dict(None),
        budgets=None,
    )


def test_a_bare_model_is_resolved_once_until_a_reload() -> None:
    first = Deployment(name="first", type="echo", models=("m",))
    engine = make_engine({"first": first})
    assert isinstance(_events(engine, _request("m"))[-1], Done)
    assert [target.name for target in engine._bare_targets["m"]] == ["first"]
    assert _events(engine, _request("m", "s2"))[-1].provider == "first"

    engine.reload(_settings({"second": Deployment(name="second", type="echo", models=("m",))}))
    assert engine._bare_targets == {}  # the new deployments answer from now on
    assert _events(engine, _request("m", "s3"))[-1].provider == "second"


def test_a_failure_to_resolve_is_never_remembered() -> None:
    engine = make_engine({"one": Deployment(name="one", type="echo", models=("m",))})
    end = _events(engine, _request("no-such-model"))[-1]
    assert isinstance(end, Error) and end.code == "MODEL_NOT_FOUND"
    assert "no-such-model" not in engine._bare_targets


def test_a_configured_deployments_prefix_is_remembered_and_other_choices_are_always_resolved() -> None:
    engine = make_engine({"one": Deployment(name="one", type="echo", models=("m",))})
    assert _events(engine, _request("one:m"))[-1].provider == "one"
    assert [target.name for target in engine._bare_targets["one:m"]] == ["one"]  # deployments change by reload only
    assert _events(engine, _request("echo:m", "s2"))[-1].provider == "one"  # a provider type: types may be added
    request = CompletionRequest(
        session_id="s3", model="m", providers=["one"], messages=[Message(role="user", content="hi")]
    )
    assert _events(engine, request)[-1].provider == "one"
    assert set(engine._bare_targets) == {"one:m"}
    engine.reload(_settings({"two": Deployment(name="two", type="echo", models=("m",))}))
    end = _events(engine, _request("one:m", "s4"))[-1]
    assert isinstance(end, Error), end  # "one" is gone: resolved anew, not from the memo


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_TARGETS_MEMO", 2)
    engine = make_engine({"one": Deployment(name="one", type="echo", models=("a", "b", "c"))})
    for index, model in enumerate(("a", "b", "c")):
        assert isinstance(_events(engine, _request(model, f"s{index}"))[-1], Done)
        assert len(engine._bare_targets) <= 2
    assert "c" in engine._bare_targets


def test_an_in_process_probe_slot_is_given_back_when_the_caller_leaves() -> None:
    # the circuit is half-open: one probe may pass; a caller that leaves before any verdict hands it
    # back, so the next caller may probe at once
    clock = [0.0]
    engine = make_engine(
        {"one": Deployment(name="one", type="echo", models=("m",))},
        routing={"breaker": {"failure_threshold": 1, "cooldown": 10}},
        clock=lambda: clock[0],
    )
    breaker = engine.stores.breakers.board.get("one")
    breaker.record_failure()
    clock[0] = 11.0  # past the cooldown: half-open

    async def leave_early() -> None:
        stream = engine.stream(_request("m"))
        async for event in stream:
            if getattr(event, "state", None) == "streaming":
                break  # the probe was granted; no verdict yet
        await stream.aclose()

    asyncio.run(leave_early())
    assert isinstance(_events(engine, _request("m", "s2"))[-1], Done)  # the slot came back
    assert breaker.snapshot()["state"] == "closed"


def test_an_in_process_budget_is_settled_with_the_real_usage() -> None:
    engine = make_engine(
        {"one": Deployment(name="one", type="echo", models=("m",))}, budgets={"tokens_per_minute": 10_000}
    )
    assert isinstance(_events(engine, _request("m"))[-1], Done)

    async def used() -> object:
        return await engine.stores.budgets.usage("", now=engine.wall_clock())

    report = asyncio.run(used())
    # settled with the echo answer's real counts, not the reservation's estimate (input/4 + 256)
    assert 0 < report["tokens_last_minute"] < 256, report  # type: ignore[index]
