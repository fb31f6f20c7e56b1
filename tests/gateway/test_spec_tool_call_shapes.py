"""Tool calls in the shapes a spec peer sends — OpenAI's tool call, its bare function object, arguments
as a JSON object, no id — are read over the wire (``POST /v1/gtl``) and by the client's message dicts,
and reach the provider as the canonical call: the arguments' JSON text, and for a call without an id a
made-up one, which the tool result without a ``tool_call_id`` after it answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import SIM_KEY, write_toml

PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {"name": "get_weather", "arguments": {"city": "Lyon", "days": 2}},  # no id, arguments an object
        ],
    },
    {"role": "tool", "tool_call_id": "call_paris", "content": "sunny"},
    {"role": "tool", "content": "rain"},  # no id to name: it answers the call that had none
]


@pytest.fixture(scope="module")
def openai_sim() -> Iterator[sim.Simulator]:
    simulator = sim.serve("openai", seed=4)
    yield simulator
    simulator.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, openai_sim: sim.Simulator) -> Iterator[Any]:
    directory: Path = tmp_path_factory.mktemp("tool-call-shapes")
    config = write_toml(
        directory / "gtl.toml",
        {
            "ledger": {"path": str(directory / "ledger.sqlite")},
            "providers.openai": {"api_key": SIM_KEY, "base_url": openai_sim.base_url},
            "gateway.http": {"port": 0},
        },
    )
    with start_gateway(config) as running:
        yield running


def check(simulator: sim.Simulator) -> None:
    body = json.loads(simulator.requests[-1].body)
    [assistant] = [message for message in body["messages"] if message.get("tool_calls")]
    paris, lyon = assistant["tool_calls"]
    assert paris["id"] == "call_paris" and paris["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert lyon["function"] == {"name": "get_weather", "arguments": '{"city":"Lyon","days":2}'}
    assert lyon["id"].startswith("call_") and lyon["id"] != paris["id"]
    results = {message["tool_call_id"]: message["content"] for message in body["messages"] if message["role"] == "tool"}
    assert results == {"call_paris": "sunny", lyon["id"]: "rain"}


def test_a_gtl_request_with_openai_shaped_tool_calls_reaches_the_provider(gateway, openai_sim):
    request = {"type": "completion_request", "session_id": "shapes-1", "model": "gpt-4o-mini", "messages": HISTORY}
    answer = httpx.post(f"{gateway.url('http')}/v1/gtl", json=request, timeout=30)
    assert answer.status_code == 200, answer.text
    events = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    assert events[-1]["type"] == "done", events[-1]
    check(openai_sim)


def test_the_clients_message_dicts_take_the_same_shapes(openai_sim):
    providers = {"openai": {"api_key": SIM_KEY, "base_url": openai_sim.base_url}}
    with gtl_nb.connect(providers=providers, environ={}) as client:
        assert client.complete("gpt-4o-mini", HISTORY).text
    check(openai_sim)
