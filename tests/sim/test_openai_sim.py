"""OpenAI and OpenAI-compatible simulators: the official SDK against them, and their bytes against the fixtures."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from gtl_nb import sim

from .conftest import FIXTURES, assert_keys_between, data_objects, fixture_bytes, split_events

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
USER = [{"role": "user", "content": "Hello, simulated OpenAI"}]


def client(s: sim.Simulator, key: str = "sim-key", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key=key, max_retries=kwargs.pop("max_retries", 0), **kwargs)


# -- the official SDK -----------------------------------------------------------------------------------------


def test_sdk_streams_text_and_usage(serve_sim: Any) -> None:
    s = serve_sim("openai", seed=1)
    chunks = list(
        client(s).chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith('You said: "Hello, simulated OpenAI".')
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


def test_sdk_stream_without_include_usage_has_no_usage_chunk(serve_sim: Any) -> None:
    s = serve_sim("openai")
    chunks = list(client(s).chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


def test_sdk_streams_parallel_tool_calls_keyed_by_index(serve_sim: Any) -> None:
    s = serve_sim("openai")
    stream = client(s).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Use get_weather and get_time"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        stream=True,
    )
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for frag in choice.delta.tool_calls or []:
                call = calls.setdefault(frag.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = frag.id or call["id"]
                if frag.function and frag.function.name:
                    call["name"] = frag.function.name
                call["arguments"] += (frag.function.arguments or "") if frag.function else ""
    assert finish == "tool_calls"
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "sample city", "unit": "c"}
    assert json.loads(calls[1]["arguments"]) == {}
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_sdk_stream_helper_assembles_the_final_completion(serve_sim: Any) -> None:
    s = serve_sim("openai")
    with client(s).chat.completions.stream(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sample city", "unit": "c"}


def test_sdk_non_streaming_text_and_tool_call(serve_sim: Any) -> None:
    s = serve_sim("openai")
    c = client(s)
    text = c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert text.object == "chat.completion" and text.choices[0].finish_reason == "stop"
    assert text.choices[0].message.content and text.usage and text.usage.prompt_tokens > 0
    tool = c.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[WEATHER_TOOL])
    assert tool.choices[0].finish_reason == "tool_calls" and tool.choices[0].message.content is None
    (call,) = tool.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments)["unit"] == "c"


def test_after_a_tool_result_the_model_answers_with_text(serve_sim: Any) -> None:
    s = serve_sim("openai")
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and cloudy"},
    ]
    reply = client(s).chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
    assert reply.choices[0].finish_reason == "stop"
    assert "18C and cloudy" in (reply.choices[0].message.content or "")


def test_max_tokens_gives_finish_reason_length(serve_sim: Any) -> None:
    s = serve_sim("openai")
    reply = client(s).chat.completions.create(model="gpt-4o-mini", messages=USER, max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length"


def test_sampling_values_outside_the_apis_range_are_refused_as_the_api_does(serve_sim: Any) -> None:
    s = serve_sim("openai")
    with pytest.raises(openai.BadRequestError) as above:
        client(s).chat.completions.create(model="gpt-4o-mini", messages=USER, temperature=5)
    assert (above.value.code, above.value.param) == ("decimal_above_max_value", "temperature")
    assert "Expected a value <= 2, but got 5 instead" in above.value.message
    with pytest.raises(openai.BadRequestError) as below:
        client(s).chat.completions.create(model="gpt-4o-mini", messages=USER, top_p=-0.5)
    assert (below.value.code, below.value.param) == ("decimal_below_min_value", "top_p")
    assert client(s).chat.completions.create(model="gpt-4o-mini", messages=USER, temperature=2, top_p=1).choices


def test_sdk_lists_models(serve_sim: Any) -> None:
    s = serve_sim("openai", models=["gpt-sim-1", "gpt-sim-2"])
    assert [m.id for m in client(s).models.list()] == ["gpt-sim-1", "gpt-sim-2"]
    with pytest.raises(openai.NotFoundError):
        client(s).chat.completions.create(model="gpt-unknown", messages=USER)


def test_wrong_key_raises_the_sdk_authentication_error(serve_sim: Any) -> None:
    s = serve_sim("openai")
    with pytest.raises(openai.AuthenticationError) as info:
        client(s, key="sk-wrong-key-0000").chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert info.value.code == "invalid_api_key"


def test_missing_key_is_a_401_invalid_api_key_envelope(serve_sim: Any) -> None:
    s = serve_sim("openai")
    response = httpx.post(s.base_url + "/chat/completions", json={"model": "m", "messages": USER})
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"


def test_sdk_retries_a_scripted_429_using_retry_after(serve_sim: Any) -> None:
    s = serve_sim("openai", [sim.Fault.http(429, retry_after=0.05), sim.Fault.ok()])
    reply = client(s, max_retries=2).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert reply.choices[0].message.content
    assert len(s.requests) == 2


def test_sdk_raises_on_an_error_inside_the_stream(serve_sim: Any) -> None:
    s = serve_sim("openai", sim.Fault.stream_error("server_error", after=2))
    with pytest.raises(openai.APIError):
        list(client(s).chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))


def test_openai_compatible_accepts_any_key_unless_asked_to_check(serve_sim: Any) -> None:
    lax = serve_sim("openai_compatible")
    assert client(lax, key="anything").chat.completions.create(model="local", messages=USER).choices
    strict = serve_sim("openai_compatible", check_key=True, api_key="secret")
    with pytest.raises(openai.AuthenticationError):
        client(strict, key="anything").chat.completions.create(model="local", messages=USER)
    assert client(strict, key="secret").chat.completions.create(model="local", messages=USER).choices


# -- the bytes against the recorded fixtures ------------------------------------------------------------------


def chunk_kind(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    delta = choice["delta"]
    if choice["finish_reason"]:
        return "finish"
    if "role" in delta:
        return "role"
    if "tool_calls" in delta:
        return "tool_first" if "id" in delta["tool_calls"][0] else "tool_args"
    return "content"


def by_kind(chunks: list[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks:
        if chunk != "[DONE]":
            out.setdefault(chunk_kind(chunk), []).append(chunk)
    return out


RECORDED = ["stream-tool-call-single.sse", "stream-text-after-tool-result.sse", "stream-parallel-tool-calls.sse"]


def recorded_chunks() -> dict[str, list[dict[str, Any]]]:
    merged: dict[str, list[dict[str, Any]]] = {}
    for name in RECORDED:
        for kind, chunks in by_kind(data_objects(fixture_bytes("openai", name))).items():
            merged.setdefault(kind, []).extend(chunks)
    return merged


def sim_stream(s: sim.Simulator, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if tools:
        body["tools"] = tools
    response = httpx.post(s.base_url + "/chat/completions", json=body, headers={"authorization": "Bearer sim-key"})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    return response.content


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_streams_use_data_lines_only_and_end_with_done(name: str) -> None:
    # the framing the simulator is held to, checked on the recordings themselves
    events = split_events(fixture_bytes("openai", name))
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
    assert events[-1] == b"data: [DONE]"


def test_sim_stream_framing_matches_the_recordings(serve_sim: Any) -> None:
    s = serve_sim("openai")
    for raw in (sim_stream(s, USER), sim_stream(s, USER, [WEATHER_TOOL, TIME_TOOL])):
        events = split_events(raw)
        assert raw.endswith(b"\n\n") and b"\r" not in raw
        assert all(e.startswith(b"data: ") and b"\n" not in e for e in events)
        assert events[-1] == b"data: [DONE]"


def test_sim_chunk_fields_match_the_recordings_kind_by_kind(serve_sim: Any) -> None:
    s = serve_sim("openai")
    recorded = recorded_chunks()
    got: dict[str, list[dict[str, Any]]] = {}
    for raw in (
        sim_stream(s, USER),
        sim_stream(s, [{"role": "user", "content": "get_weather get_time"}], [WEATHER_TOOL, TIME_TOOL]),
    ):
        for kind, chunks in by_kind(data_objects(raw)).items():
            got.setdefault(kind, []).extend(chunks)
    assert set(got) == set(recorded) == {"role", "content", "tool_first", "tool_args", "finish", "usage"}
    for kind, chunks in got.items():
        for chunk in chunks:
            assert_keys_between(chunk, recorded[kind], f"{kind} chunk")
            if kind == "usage":
                assert chunk["choices"] == []
                assert_keys_between(chunk["usage"], [c["usage"] for c in recorded[kind]], "usage")
                for detail in ("prompt_tokens_details", "completion_tokens_details"):
                    assert_keys_between(chunk["usage"][detail], [c["usage"][detail] for c in recorded[kind]], detail)
                continue
            assert chunk["usage"] is None
            choice = chunk["choices"][0]
            assert_keys_between(choice, [c["choices"][0] for c in recorded[kind]], f"{kind} choice")
            assert_keys_between(choice["delta"], [c["choices"][0]["delta"] for c in recorded[kind]], f"{kind} delta")
            if kind.startswith("tool"):
                frag = choice["delta"]["tool_calls"][0]
                samples = [c["choices"][0]["delta"]["tool_calls"][0] for c in recorded[kind]]
                assert_keys_between(frag, samples, f"{kind} fragment")
                assert_keys_between(frag["function"], [f["function"] for f in samples], f"{kind} function")


def test_sim_first_tool_fragment_has_empty_arguments_and_later_ones_only_pieces(serve_sim: Any) -> None:
    s = serve_sim("openai")
    chunks = data_objects(sim_stream(s, [{"role": "user", "content": "weather"}], [WEATHER_TOOL]))
    frags = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks[:-1]
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert frags[0]["function"] == {"name": "get_weather", "arguments": ""} and frags[0]["type"] == "function"
    assert len(frags) > 2 and all(set(f) == {"index", "function"} for f in frags[1:])
    assert json.loads("".join(f["function"]["arguments"] for f in frags)) == {"city": "sample city", "unit": "c"}
    assert chunks[0]["choices"][0]["delta"]["content"] is None  # a tool-only turn, as recorded


def test_sim_non_streaming_fields_match_the_recording(serve_sim: Any) -> None:
    s = serve_sim("openai")
    recorded = json.loads(fixture_bytes("openai", "nonstream-tool-call.json"))
    reply = httpx.post(
        s.base_url + "/chat/completions",
        headers={"authorization": "Bearer sim-key"},
        json={"model": "gpt-4o-mini", "messages": USER, "tools": [TIME_TOOL]},
    ).json()
    assert set(reply) == set(recorded)
    assert set(reply["choices"][0]) == set(recorded["choices"][0])
    assert set(reply["choices"][0]["message"]) == set(recorded["choices"][0]["message"])
    assert set(reply["choices"][0]["message"]["tool_calls"][0]) == {"id", "type", "function"}
    assert reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"  # a JSON string
    assert set(reply["usage"]) == set(recorded["usage"])


def test_sim_401_envelope_matches_the_recording(serve_sim: Any) -> None:
    s = serve_sim("openai")
    recorded = json.loads(fixture_bytes("openai", "error-401-invalid-api-key.json"))
    response = httpx.get(s.base_url + "/models", headers={"authorization": "Bearer test-key-openai"})
    body = response.json()
    assert response.status_code == 401
    assert set(body["error"]) == set(recorded["error"])
    assert body["error"]["type"] == recorded["error"]["type"] and body["error"]["code"] == recorded["error"]["code"]
    assert body["error"]["message"].startswith("Incorrect API key provided: test-key***enai.")


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (FIXTURES / "openai").glob("*.request.json") if "401" not in p.name),  # 401: embeddings
)
def test_recorded_requests_are_understood(name: str, serve_sim: Any) -> None:
    s = serve_sim("openai", models=sim.ANY_MODEL)  # recorded requests name retired models too
    body = json.loads(fixture_bytes("openai", name))
    response = httpx.post(s.base_url + "/chat/completions", json=body, headers={"authorization": "Bearer sim-key"})
    assert response.status_code == 200
    if body.get("stream"):
        chunks = [c for c in data_objects(response.content) if c != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        called = any("tool_calls" in c["choices"][0]["delta"] for c in chunks if c["choices"])
    else:
        message = response.json()["choices"][0]["message"]
        text, called = message["content"] or "", bool(message.get("tool_calls"))
    last = body["messages"][-1]
    if last["role"] == "tool":
        assert text.startswith("The tool returned:") and not called
    elif body.get("tools"):
        assert called and not text
    else:
        assert text.startswith("You said:")


def test_reasoning_effort_is_one_of_the_sdks_values_or_the_apis_invalid_value(serve_sim: Any) -> None:
    s = serve_sim("openai")
    for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "max"):
        assert client(s).chat.completions.create(model="gpt-5.5", messages=USER, reasoning_effort=effort).choices
    with pytest.raises(openai.BadRequestError) as refused:
        client(s).chat.completions.create(model="gpt-5.5", messages=USER, reasoning_effort="huge")  # type: ignore[arg-type]
    error = refused.value
    assert (error.status_code, error.code, error.param, error.type) == (
        400,
        "invalid_value",
        "reasoning_effort",
        "invalid_request_error",
    )
    assert "Invalid value: 'huge'. Supported values are: 'none', 'minimal'" in error.message
