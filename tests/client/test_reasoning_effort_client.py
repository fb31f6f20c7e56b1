"""How hard the model thinks, from the embedded client to the provider simulators: each deployment receives
the caller's effort or budget in its own API's knob, and Claude asked to think without showing it thinks,
shows nothing, and still gets its signed thinking back in a tool loop (which its API requires)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import InvalidRequestError
from gtl_nb.protocol.messages import Message, Reasoning

BEDROCK = {"region": "us-east-1", "aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict[str, sim.Simulator]]:
    started = {name: sim.serve(name, seed=3) for name in ("anthropic", "bedrock", "openai", "gemini", "ollama")}
    yield started
    for simulator in started.values():
        simulator.close()


@pytest.fixture(scope="module")
def client(simulators: dict[str, sim.Simulator]) -> Iterator[gtl_nb.Client]:
    providers: dict[str, dict[str, Any]] = {
        "anthropic": {"api_key": "sim-key", "base_url": simulators["anthropic"].base_url},
        "bedrock": {"base_url": simulators["bedrock"].base_url, **BEDROCK},
        "openai": {"api_key": "sim-key", "base_url": simulators["openai"].base_url},
        "gemini": {"api_key": "sim-key", "base_url": simulators["gemini"].base_url},
        "ollama": {"base_url": simulators["ollama"].base_url},
    }
    connected = gtl_nb.connect(providers=providers, config={"ledger": {"enabled": False}}, environ={})
    yield connected
    connected.close()


def last_body(simulator: sim.Simulator) -> dict[str, Any]:
    return simulator.requests[-1].json


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("deployment", "model"),
    [("anthropic", "claude-sonnet-4-5"), ("bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0")],
)
def test_claude_asked_how_hard_to_think_thinks_unseen_and_gets_its_thinking_back_in_a_tool_loop(
    client: gtl_nb.Client, simulators: dict[str, sim.Simulator], deployment: str, model: str, stream: bool
):
    simulator = simulators[deployment]
    asked = {"tools": [WEATHER], "reasoning_effort": "high", "max_tokens": 20000}
    messages: list[Any] = [Message(role="user", content="get_weather for Bergen")]
    if stream:
        with client.stream(f"{deployment}:{model}", messages, **asked) as events:
            streamed = list(events)
            first = events.result()
        assert not [event for event in streamed if isinstance(event, Reasoning)]
    else:
        first = client.complete(f"{deployment}:{model}", messages, **asked)
    sent = last_body(simulator)
    if deployment == "anthropic":
        assert sent["thinking"] == {"type": "enabled", "budget_tokens": 16384} and sent["max_tokens"] == 20000
    else:
        assert sent["additionalModelRequestFields"]["thinking"] == {"type": "enabled", "budget_tokens": 16384}
        assert sent["inferenceConfig"]["maxTokens"] == 20000
    assert first.tool_calls and not first.reasoning  # thought, not shown
    assert not [event for event in first.events if isinstance(event, Reasoning)]
    assert first.message.provider_data  # the signed thinking, kept for the next turn
    messages += [
        first.message,
        Message(role="tool", tool_call_id=first.tool_calls[0].id, name="get_weather", content="clear"),
    ]
    second = client.complete(f"{deployment}:{model}", messages, **asked)  # refused if the thinking was lost
    assert second.text and not second.reasoning
    replayed = next(m for m in last_body(simulator)["messages"] if m["role"] == "assistant")["content"][0]
    assert ("thinking" in replayed) if deployment == "anthropic" else ("reasoningContent" in replayed)


def test_each_provider_receives_the_effort_in_its_own_knob(client: gtl_nb.Client, simulators):
    client.complete("openai:gpt-5.5", "hi", reasoning_effort="xhigh")  # (o4-mini refuses xhigh, as at OpenAI)
    assert last_body(simulators["openai"])["reasoning_effort"] == "xhigh"
    client.complete("openai:o4-mini", "hi", reasoning_budget=10000)
    assert last_body(simulators["openai"])["reasoning_effort"] == "medium"
    answer = client.complete("gemini:gemini-3-pro-preview", "hi", reasoning_effort="low", reasoning=True)
    assert last_body(simulators["gemini"])["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": True,
        "thinkingLevel": "low",
    }
    assert answer.reasoning  # asked to be shown: shown
    client.complete("gemini:gemini-2.5-flash", "hi", reasoning_budget=3000)
    assert last_body(simulators["gemini"])["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 3000}
    unseen = client.complete("ollama:qwen3:8b", "hi", reasoning_effort="medium")
    assert last_body(simulators["ollama"])["think"] is True and not unseen.reasoning
    client.complete("anthropic:claude-sonnet-4-5", "hi", reasoning=True, reasoning_effort="none", max_tokens=50)
    assert "thinking" not in last_body(simulators["anthropic"])


def test_a_value_no_api_takes_is_refused_before_anything_is_sent(client: gtl_nb.Client, simulators):
    before = len(simulators["openai"].requests)
    with pytest.raises(InvalidRequestError, match="reasoning_effort must be one of 'none', 'minimal'"):
        client.complete("openai:o4-mini", "hi", reasoning_effort="extreme")
    with pytest.raises(InvalidRequestError, match="reasoning_budget"):
        client.complete("openai:o4-mini", "hi", reasoning_budget=-1)
    with pytest.raises(InvalidRequestError, match="disagree on whether to think"):
        client.complete("openai:o4-mini", "hi", reasoning_effort="none", reasoning_budget=4096)
    assert len(simulators["openai"].requests) == before
