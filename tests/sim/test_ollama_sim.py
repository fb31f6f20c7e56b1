"""Ollama simulator: the ollama client against it, and its NDJSON against the recordings."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import ollama
import pytest

from gtl_nb import sim

from .conftest import assert_keys_between, fixture_bytes, fixture_json

USER = [{"role": "user", "content": "Hello, simulated Ollama"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a given city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def client(s: sim.Simulator) -> ollama.Client:
    return ollama.Client(host=s.base_url)


def lines(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.split(b"\n") if line]


# -- the official client ---------------------------------------------------------------------------------------


def test_client_streams_text_and_the_final_metrics(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    parts = list(client(s).chat(model="llama3.2", messages=USER, stream=True))
    assert "".join(p.message.content for p in parts).startswith('You said: "Hello, simulated Ollama".')
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    final = parts[-1]
    assert final.done_reason == "stop" and final.prompt_eval_count and final.eval_count
    assert final.total_duration and final.eval_duration


def test_client_streams_tool_calls_whole_with_ids(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    parts = list(
        client(s).chat(
            model="llama3.2",
            stream=True,
            tools=[WEATHER, TIME],
            messages=[{"role": "user", "content": "get_weather and get_time"}],
        )
    )
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "sample city"}),
        ("get_time", {}),
    ]
    assert parts[-1].done_reason == "stop"  # no tool-specific reason


def test_client_non_streaming_answer(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    reply = client(s).chat(model="llama3.2", messages=USER)
    assert reply.done and reply.message.content.startswith("You said:")
    tool = client(s).chat(model="llama3.2", messages=USER, tools=[WEATHER])
    assert tool.message.tool_calls[0].function.arguments == {"city": "sample city"}


def test_client_thinking(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    parts = list(client(s).chat(model="qwen3", messages=USER, stream=True, think=True))
    assert "".join(p.message.thinking or "" for p in parts).startswith("The user wrote")
    assert "".join(p.message.content for p in parts).startswith("You said:")


def test_a_tool_result_turn_gets_text_mentioning_it(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
        },
        {"role": "tool", "content": "rainy, 12C", "tool_name": "get_weather"},
    ]
    reply = client(s).chat(model="llama3.2", messages=messages, tools=[WEATHER])
    assert "rainy, 12C" in reply.message.content and not reply.message.tool_calls


def test_format_is_answered_with_json_of_the_schema_or_refused_as_ollama_refuses_it(serve_sim: Any) -> None:
    """Ollama constrains the answer to ``format`` (``"json"`` or a JSON Schema): the simulator answered
    prose, so structured output through a gateway failed to parse on an Ollama deployment only."""
    s = serve_sim("ollama")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["name", "population"],
    }
    ask = [{"role": "user", "content": "Name a city"}]
    whole = json.loads(client(s).chat(model="llama3.2", messages=ask, format=schema).message.content)
    assert isinstance(whole["name"], str) and isinstance(whole["population"], int)
    streamed = "".join(
        p.message.content for p in client(s).chat(model="llama3.2", messages=ask, format=schema, stream=True)
    )
    assert json.loads(streamed) == whole
    assert isinstance(json.loads(client(s).chat(model="llama3.2", messages=ask, format="json").message.content), dict)
    assert not client(s).chat(model="llama3.2", messages=ask, format="").message.content.startswith("{")
    refused = httpx.post(f"{s.base_url}/api/chat", json={"model": "llama3.2", "messages": ask, "format": "yaml"})
    assert refused.status_code == 400
    assert refused.json() == {"error": 'invalid format: "yaml"; expected "json" or a valid JSON Schema object'}


def test_num_predict_gives_done_reason_length(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    reply = client(s).chat(model="llama3.2", messages=USER, options={"num_predict": 2})
    assert reply.done_reason == "length"


def test_pulled_models_only_unless_any_model_and_a_404_when_restricted(serve_sim: Any) -> None:
    with pytest.raises(ollama.ResponseError, match="not found, try pulling it first"):
        client(serve_sim("ollama")).chat(model="whatever:7b", messages=USER)
    assert client(serve_sim("ollama", models=sim.ANY_MODEL)).chat(model="whatever:7b", messages=USER).done
    s = serve_sim("ollama", models=["llama3.2"])
    assert client(s).chat(model="llama3.2:latest", messages=USER).done
    with pytest.raises(ollama.ResponseError) as info:
        client(s).chat(model="llama9", messages=USER)
    recorded = fixture_json("ollama", "error-404-model-not-found.json")
    assert info.value.status_code == 404 and info.value.error == recorded["error"]


def test_client_lists_and_shows_models(serve_sim: Any) -> None:
    s = serve_sim("ollama", models=["llama3.2", "qwen3:8b"])
    assert [m.model for m in client(s).list().models] == ["llama3.2:latest", "qwen3:8b"]
    assert "tools" in (client(s).show("llama3.2").capabilities or [])


def test_busy_server_is_a_503(serve_sim: Any) -> None:
    s = serve_sim("ollama", sim.Fault.overloaded())
    with pytest.raises(ollama.ResponseError) as info:
        client(s).chat(model="llama3.2", messages=USER)
    assert info.value.status_code == 503 and "server busy" in info.value.error


def test_client_surfaces_an_error_line_inside_the_stream(serve_sim: Any) -> None:
    s = serve_sim("ollama", sim.Fault.stream_error("server_error", after=2))
    with pytest.raises(ollama.ResponseError, match="error was encountered"):
        list(client(s).chat(model="llama3.2", messages=USER, stream=True))


# -- the bytes against the recordings --------------------------------------------------------------------------


def test_stream_is_the_default_when_the_field_is_absent(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    response = httpx.post(s.base_url + "/api/chat", json={"model": "llama3.2", "messages": USER})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert len(lines(response.content)) > 2
    single = httpx.post(s.base_url + "/api/chat", json={"model": "llama3.2", "messages": USER, "stream": False})
    assert single.headers["content-type"] == "application/json; charset=utf-8"
    assert single.json()["done"] is True


def test_sim_lines_match_the_recorded_lines(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    recorded = lines(fixture_bytes("ollama", "chat-stream-text.ndjson")) + lines(
        fixture_bytes("ollama", "chat-stream-tool-call.ndjson")
    )
    partial = [r for r in recorded if not r["done"]]
    final = [r for r in recorded if r["done"]]
    for body in ({"messages": USER}, {"messages": USER, "tools": [WEATHER]}):
        raw = httpx.post(s.base_url + "/api/chat", json={"model": "llama3.2", **body}).content
        assert raw.endswith(b"\n") and b"\r" not in raw  # every line newline-terminated, as NDJSON wants
        got = lines(raw)
        assert [g["done"] for g in got] == [False] * (len(got) - 1) + [True]
        for line in got[:-1]:
            assert_keys_between(line, partial, "partial line")
            assert_keys_between(line["message"], [r["message"] for r in partial], "message")
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", line["created_at"])
        assert_keys_between(got[-1], final, "final line")
        assert got[-1]["message"] == {"role": "assistant", "content": ""}


def test_sim_tool_call_lines_carry_current_ids_and_indexes(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    got = lines(
        httpx.post(
            s.base_url + "/api/chat",
            json={
                "model": "llama3.2",
                "tools": [WEATHER, TIME],
                "messages": [{"role": "user", "content": "get_weather get_time"}],
            },
        ).content
    )
    recorded_call = lines(fixture_bytes("ollama", "chat-stream-tool-call.ndjson"))[0]["message"]["tool_calls"][0]
    calls = [line["message"]["tool_calls"] for line in got if "tool_calls" in line["message"]]
    assert [len(c) for c in calls] == [1, 1]  # one call per line
    for index, (call,) in enumerate(calls):
        assert set(recorded_call) <= set(call) and set(recorded_call["function"]) <= set(call["function"])
        assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"]) and call["function"]["index"] == index
        assert isinstance(call["function"]["arguments"], dict)


def test_sim_non_streaming_tool_call_matches_the_recording(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    body = json.loads(fixture_bytes("ollama", "chat-nonstream-tool-call.request.json"))
    reply = httpx.post(s.base_url + "/api/chat", json=body).json()
    recorded = fixture_json("ollama", "chat-nonstream-tool-call.json")
    assert set(reply) == set(recorded)
    assert reply["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_sim_tags_match_the_recorded_listing(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    tags = httpx.get(s.base_url + "/api/tags").json()
    recorded = fixture_json("ollama", "api-tags.json")
    assert set(tags) == set(recorded)
    assert set(tags["models"][0]) == set(recorded["models"][0])
    assert set(tags["models"][0]["details"]) == set(recorded["models"][0]["details"])


def test_the_root_says_ollama_is_running(serve_sim: Any) -> None:
    s = serve_sim("ollama")
    assert httpx.get(s.base_url + "/").text == "Ollama is running"
