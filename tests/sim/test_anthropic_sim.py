"""Anthropic simulator: the official SDK against it, and its SSE bytes against the recorded streams."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from gtl_nb import sim

from .conftest import FIXTURES, assert_keys_between, fixture_bytes, fixture_json, split_events

MODEL = "claude-haiku-4-5-20251001"
USER = [{"role": "user", "content": "Hello, simulated Claude"}]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
NAMER = {"name": "pelican_name_generator", "description": "", "input_schema": {"type": "object", "properties": {}}}
HEADERS = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}


def client(s: sim.Simulator, key: str = "sim-key") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.base_url, api_key=key, max_retries=0)


# -- the official SDK -----------------------------------------------------------------------------------------


def test_sdk_streams_text_and_cumulative_usage(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    with client(s).messages.stream(model=MODEL, max_tokens=500, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith('You said: "Hello, simulated Claude".')
    assert final.stop_reason == "end_turn" and final.content[0].type == "text"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 1


def test_sdk_streams_parallel_tool_use_with_fragmented_input(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    with client(s).messages.stream(
        model=MODEL,
        max_tokens=500,
        tools=[WEATHER, NAMER],
        messages=[{"role": "user", "content": "get_weather and pelican_name_generator"}],
    ) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use"
    assert [(u.name, u.input) for u in uses] == [
        ("get_weather", {"city": "sample city"}),
        ("pelican_name_generator", {}),
    ]
    assert all(u.id.startswith("toolu_") for u in uses)


def test_sdk_streams_thinking_with_a_signature(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    with client(s).messages.stream(
        model=MODEL, max_tokens=2000, messages=USER, thinking={"type": "enabled", "budget_tokens": 1024}
    ) as stream:
        final = stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text" and text.text.startswith("You said:")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_thinking_sent_back_must_carry_the_signature_given_for_its_text(serve_sim: Any, stream: bool) -> None:
    """The service checks each thinking block it gets back against its signature ("Invalid `signature` in
    `thinking` block"): the block as given passes, an edited text or a signature of another block does not."""
    s = serve_sim("anthropic")
    think = {"type": "enabled", "budget_tokens": 1024}
    asked: dict[str, Any] = {"model": MODEL, "max_tokens": 2000, "thinking": think, "tools": [WEATHER]}
    turn = [{"role": "user", "content": "get_weather for Bergen"}]
    if stream:
        with client(s).messages.stream(messages=turn, **asked) as events:
            first = events.get_final_message()
    else:
        first = client(s).messages.create(messages=turn, **asked)
    other = client(s).messages.create(messages=[{"role": "user", "content": "get_weather for Oslo"}], **asked)
    thought = first.content[0].model_dump(exclude_none=True)
    (use,) = [block for block in first.content if block.type == "tool_use"]

    def loop(thinking_block: dict[str, Any]) -> Any:
        content = [thinking_block, use.model_dump(exclude_none=True)]
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "clear"}
        messages = [*turn, {"role": "assistant", "content": content}, {"role": "user", "content": [result]}]
        return client(s).messages.create(messages=messages, **asked)

    assert loop(thought).stop_reason == "end_turn"
    edited = {**thought, "thinking": thought["thinking"] + " (edited)"}
    foreign = {**thought, "signature": other.content[0].signature}
    assert other.content[0].signature != thought["signature"]
    for forged in (edited, foreign):
        with pytest.raises(anthropic.BadRequestError, match=r"messages\.1\.content\.0: Invalid `signature`"):
            loop(forged)


def test_sdk_non_streaming_text_and_tool_use(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    reply = client(s).messages.create(model=MODEL, max_tokens=500, messages=USER)
    assert reply.type == "message" and reply.content[0].type == "text" and reply.stop_reason == "end_turn"
    tool = client(s).messages.create(model=MODEL, max_tokens=500, messages=USER, tools=[WEATHER])
    assert tool.stop_reason == "tool_use" and tool.content[0].input == {"city": "sample city"}


def test_after_tool_results_the_answer_mentions_them(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "minus 3, snow"}]},
    ]
    reply = client(s).messages.create(model=MODEL, max_tokens=500, messages=messages, tools=[WEATHER])
    assert reply.stop_reason == "end_turn" and "minus 3, snow" in reply.content[0].text


def test_max_tokens_stops_with_max_tokens(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    assert client(s).messages.create(model=MODEL, max_tokens=2, messages=USER).stop_reason == "max_tokens"


def test_sdk_lists_models(serve_sim: Any) -> None:
    s = serve_sim("anthropic", models=["claude-sim-1"])
    assert [m.id for m in client(s).models.list()] == ["claude-sim-1"]
    with pytest.raises(anthropic.NotFoundError):
        client(s).messages.create(model="claude-unknown-1", max_tokens=5, messages=USER)


def test_wrong_key_raises_the_sdk_authentication_error(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    with pytest.raises(anthropic.AuthenticationError) as info:
        client(s, key="wrong").messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_the_x_api_key_header_and_the_version_header(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    body = {"model": MODEL, "max_tokens": 5, "messages": USER}
    assert httpx.post(s.base_url + "/v1/messages", json=body, headers=HEADERS).status_code == 200
    missing_key = httpx.post(s.base_url + "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert missing_key.status_code == 401 and missing_key.json()["error"]["type"] == "authentication_error"
    no_version = httpx.post(s.base_url + "/v1/messages", json=body, headers={"x-api-key": "sim-key"})
    assert no_version.status_code == 400 and no_version.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in no_version.json()["error"]["message"]


def test_a_temperature_above_1_is_refused_as_the_api_does(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    body = {"model": MODEL, "messages": USER, "max_tokens": 10, "temperature": 1.5}
    response = httpx.post(s.base_url + "/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "temperature: Input should be less than or equal to 1",
    }


@pytest.mark.parametrize(
    ("turn", "where"),
    [
        (
            {"role": "assistant", "content": [{"type": "tool_use", "id": "functions.f:0", "name": "f", "input": {}}]},
            "messages.1.content.0.tool_use.id",
        ),
        (
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call 1", "content": "ok"}]},
            "messages.1.content.0.tool_result.tool_use_id",
        ),
    ],
)
def test_a_tool_id_outside_the_apis_pattern_is_refused_as_the_api_does(turn, where, serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    body = {"model": MODEL, "messages": [*USER, turn], "max_tokens": 10}
    response = httpx.post(s.base_url + "/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_request_error",
        "message": f"{where}: String should match pattern '^[a-zA-Z0-9_-]+$'",
    }


def test_max_tokens_is_required(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    response = httpx.post(s.base_url + "/v1/messages", json={"model": MODEL, "messages": USER}, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}


@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        (sim.Fault.overloaded(), anthropic.OverloadedError),
        (sim.Fault.http(429, retry_after=2), anthropic.RateLimitError),
        (sim.Fault.http(429, kind="quota"), anthropic.RateLimitError),
        (sim.Fault.http(500), anthropic.InternalServerError),
    ],
)
def test_faults_map_to_the_sdk_error_classes(fault: sim.Fault, error_class: type, serve_sim: Any) -> None:
    s = serve_sim("anthropic", fault)
    with pytest.raises(error_class):
        client(s).messages.create(model=MODEL, max_tokens=5, messages=USER)


def test_quota_is_the_spend_limit_429_that_must_not_be_retried(serve_sim: Any) -> None:
    s = serve_sim("anthropic", sim.Fault.http(429, kind="quota"))
    response = httpx.post(
        s.base_url + "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": USER}, headers=HEADERS
    )
    assert response.json()["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
    assert response.headers["x-should-retry"] == "false"


def test_sdk_raises_on_an_error_event_inside_the_stream(serve_sim: Any) -> None:
    s = serve_sim("anthropic", sim.Fault.stream_error("overloaded", after=3))
    with (
        pytest.raises(anthropic.APIError),
        client(s).messages.stream(model=MODEL, max_tokens=500, messages=USER) as stream,
    ):
        stream.get_final_message()


# -- the bytes against the recorded streams --------------------------------------------------------------------

RECORDED = [
    "stream-text.sse",
    "stream-parallel-tool-use-empty-input.sse",
    "stream-thinking.sse",
    "stream-text-after-tool-results.sse",
    "stream-vision-base64.sse",
]


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for event in split_events(raw):
        lines = event.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), event
        name = lines[0][len(b"event: ") :].decode()
        data = json.loads(lines[1][len(b"data: ") :])
        out.append((name, data))
    return out


def recorded_events() -> list[tuple[str, dict[str, Any]]]:
    return [e for name in RECORDED for e in events(fixture_bytes("anthropic", name))]


def sim_raw(s: sim.Simulator, body: dict[str, Any]) -> bytes:
    response = httpx.post(
        s.base_url + "/v1/messages", json={"model": MODEL, "max_tokens": 2000, "stream": True, **body}, headers=HEADERS
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    return response.content


def check_grammar(seq: list[tuple[str, dict[str, Any]]]) -> None:
    """message_start, blocks (start, deltas, stop; same index, in order), message_delta, message_stop."""
    names = [n for n, _ in seq if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index = None
    next_index = 0
    for name, data in seq[1:-2]:
        assert data["type"] == name
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index = data["index"]
        elif name in ("content_block_delta", "content_block_stop"):
            assert data["index"] == open_index
            if name == "content_block_stop":
                open_index, next_index = None, next_index + 1
    assert open_index is None


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_streams_follow_the_grammar_the_sim_is_held_to(name: str) -> None:
    check_grammar(events(fixture_bytes("anthropic", name)))


def test_sim_streams_follow_the_event_grammar(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    for body in (
        {"messages": USER},
        {"messages": USER, "tools": [WEATHER, NAMER]},
        {"messages": USER, "thinking": {"type": "enabled", "budget_tokens": 1024}},
    ):
        seq = events(sim_raw(s, body))
        check_grammar(seq)
        assert all(data["type"] == name for name, data in seq)
        assert ("ping", {"type": "ping"}) in seq


def test_sim_event_fields_match_the_recordings(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    recorded = recorded_events()
    got = [
        e
        for body in (
            {"messages": USER},
            {
                "messages": [{"role": "user", "content": "get_weather, pelican_name_generator"}],
                "tools": [WEATHER, NAMER],
            },
            {"messages": USER, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        )
        for e in events(sim_raw(s, body))
    ]

    def samples(name: str, pick: Any = lambda d: d, where: Any = lambda d: True) -> list[dict[str, Any]]:
        return [pick(d) for n, d in recorded if n == name and where(d)]

    for name, data in got:
        assert_keys_between(data, samples(name), name)
        if name == "message_start":
            assert_keys_between(data["message"], samples(name, lambda d: d["message"]), "message")
            assert_keys_between(data["message"]["usage"], samples(name, lambda d: d["message"]["usage"]), "usage")
        elif name == "content_block_start":
            kind = data["content_block"]["type"]
            assert_keys_between(
                data["content_block"],
                samples(name, lambda d: d["content_block"], lambda d, k=kind: d["content_block"]["type"] == k),
                kind,
            )
        elif name == "content_block_delta":
            kind = data["delta"]["type"]
            assert_keys_between(
                data["delta"], samples(name, lambda d: d["delta"], lambda d, k=kind: d["delta"]["type"] == k), kind
            )
        elif name == "message_delta":
            assert_keys_between(data["delta"], samples(name, lambda d: d["delta"]), "message_delta.delta")
            assert_keys_between(data["usage"], samples(name, lambda d: d["usage"]), "message_delta.usage")
    kinds = {d["delta"]["type"] for n, d in got if n == "content_block_delta"}
    assert kinds == {"text_delta", "input_json_delta", "thinking_delta", "signature_delta"}


def test_sim_pads_payloads_before_the_closing_brace_like_the_service(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    data_lines = [e.split(b"\n")[1] for e in split_events(sim_raw(s, {"messages": USER}))]
    assert any(line.endswith(b" }") for line in data_lines)
    assert any(
        line.endswith(b" }")
        for e in split_events(fixture_bytes("anthropic", "stream-text.sse"))
        for line in [e.split(b"\n")[1]]
    )


def test_sim_empty_tool_input_is_one_empty_partial_json_as_recorded(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    seq = events(sim_raw(s, {"messages": [{"role": "user", "content": "names"}], "tools": [NAMER]}))
    deltas = [d["delta"] for n, d in seq if n == "content_block_delta"]
    recorded = [
        d["delta"]
        for n, d in events(fixture_bytes("anthropic", "stream-parallel-tool-use-empty-input.sse"))
        if n == "content_block_delta"
    ]
    assert deltas == [{"type": "input_json_delta", "partial_json": ""}] == recorded[:1]
    start = next(d for n, d in seq if n == "content_block_start")["content_block"]
    assert start["input"] == {} and start["id"].startswith("toolu_")
    stop_reason = next(d for n, d in seq if n == "message_delta")["delta"]["stop_reason"]
    assert stop_reason == "tool_use"


def test_sim_non_streaming_and_error_bodies_match_the_recordings(serve_sim: Any) -> None:
    s = serve_sim("anthropic", [sim.Fault.overloaded()])
    overloaded = httpx.post(
        s.base_url + "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": USER}, headers=HEADERS
    )
    recorded_error = fixture_json("anthropic", "error-529-overloaded.json")
    assert overloaded.status_code == 529 and overloaded.headers["x-should-retry"] == "true"
    assert set(overloaded.json()) == set(recorded_error) and overloaded.json()["error"] == recorded_error["error"]
    reply = httpx.post(
        s.base_url + "/v1/messages", json={"model": MODEL, "max_tokens": 500, "messages": USER}, headers=HEADERS
    ).json()
    recorded = fixture_json("anthropic", "nonstream-vision-url.json")
    assert set(reply) == set(recorded)
    assert set(reply["usage"]) == set(recorded["usage"])
    assert reply["content"][0].keys() == recorded["content"][0].keys()


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "anthropic").glob("*.request.json")))
def test_recorded_requests_are_understood(name: str, serve_sim: Any) -> None:
    s = serve_sim("anthropic", models=sim.ANY_MODEL)  # recorded requests name retired models too
    body = json.loads(fixture_bytes("anthropic", name))
    response = httpx.post(s.base_url + "/v1/messages?beta=true", json=body, headers=HEADERS)
    assert response.status_code == 200
    if body.get("stream"):
        seq = events(response.content)
        check_grammar(seq)
        text = "".join(d["delta"].get("text", "") for n, d in seq if n == "content_block_delta")
        called = any(d["content_block"]["type"] == "tool_use" for n, d in seq if n == "content_block_start")
    else:
        content = response.json()["content"]
        text = "".join(b.get("text", "") for b in content)
        called = any(b["type"] == "tool_use" for b in content)
    last = body["messages"][-1]
    if isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"]):
        assert text.startswith("The tool returned:") and not called
    elif any("type" not in t or t["type"] == "custom" for t in body.get("tools", [])):
        assert called
    else:
        assert text.startswith("You said:")


def test_a_thinking_budget_is_refused_as_the_api_refuses_it(serve_sim: Any) -> None:
    """At least 1,024 and below ``max_tokens`` (the service's 400s); Anthropic's own ``output_config.effort``
    is taken and changes nothing here."""
    s = serve_sim("anthropic")
    with pytest.raises(anthropic.BadRequestError, match="greater than or equal to 1024"):
        client(s).messages.create(
            model=MODEL, max_tokens=2000, messages=USER, thinking={"type": "enabled", "budget_tokens": 1000}
        )
    with pytest.raises(anthropic.BadRequestError, match=r"`max_tokens` must be greater than `thinking\.budget_tokens`"):
        client(s).messages.create(
            model=MODEL, max_tokens=1024, messages=USER, thinking={"type": "enabled", "budget_tokens": 1024}
        )
    answer = client(s).messages.create(
        model=MODEL,
        max_tokens=1025,
        messages=USER,
        thinking={"type": "enabled", "budget_tokens": 1024},
        output_config={"effort": "high"},
    )
    assert [block.type for block in answer.content] == ["thinking", "text"]


# -- token counting -------------------------------------------------------------------------------------------

COUNTED_REQUESTS = {
    "plain": {"messages": USER},
    "system and tools": {"messages": USER, "system": "Be brief.", "tools": [WEATHER], "tool_choice": {"type": "auto"}},
    "thinking": {"messages": USER, "thinking": {"type": "enabled", "budget_tokens": 1024}},
}


@pytest.mark.parametrize("shape", list(COUNTED_REQUESTS))
def test_a_count_is_the_input_tokens_the_answer_reports(shape: str, serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    counted = client(s).messages.count_tokens(model=MODEL, **COUNTED_REQUESTS[shape])
    answer = client(s).messages.create(model=MODEL, max_tokens=2048, **COUNTED_REQUESTS[shape])
    assert counted.input_tokens == answer.usage.input_tokens > 0


def test_a_count_refuses_what_the_counting_endpoint_has_not(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    for extra in ({"max_tokens": 10}, {"stream": False}, {"temperature": 0.5}):
        with pytest.raises(anthropic.BadRequestError) as refused:
            client(s).messages.count_tokens(model=MODEL, messages=USER, extra_body=extra)
        assert refused.value.body["error"]["message"] == f"{next(iter(extra))}: Extra inputs are not permitted"
    answer = httpx.post(f"{s.base_url}/v1/messages/count_tokens", json={"model": MODEL}, headers=HEADERS)
    assert answer.status_code == 400 and answer.json()["error"]["message"] == "messages: Field required"
    answer = httpx.post(f"{s.base_url}/v1/messages/count_tokens", content=b"{oops", headers=HEADERS)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


def test_a_count_of_an_unknown_model_or_a_refused_request_is_the_apis_error(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    with pytest.raises(anthropic.NotFoundError, match="model: claude-nope"):
        client(s).messages.count_tokens(model="claude-nope", messages=USER)
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        client(s).messages.count_tokens(model=MODEL, messages=USER, thinking={"type": "enabled", "budget_tokens": 10})
    with pytest.raises(anthropic.AuthenticationError):
        client(s, key="wrong").messages.count_tokens(model=MODEL, messages=USER)


def test_a_prompt_over_the_window_is_still_counted(serve_sim: Any) -> None:
    s = serve_sim("anthropic", context_windows={MODEL: 50})
    long = [{"role": "user", "content": "word " * 400}]
    assert client(s).messages.count_tokens(model=MODEL, messages=long).input_tokens > 50
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client(s).messages.create(model=MODEL, max_tokens=10, messages=long)


def test_a_count_takes_every_field_the_sdks_count_with() -> None:
    """The SDK's count_tokens and the beta's never send a field the simulator refuses as an extra input
    (their keyword arguments less those sent as headers)."""
    import inspect

    from gtl_nb.sim.anthropic import COUNT_FIELDS

    own = {"self", "extra_headers", "extra_query", "extra_body", "timeout", "betas", "user_profile_id", "workspace_id"}
    for count in (anthropic.resources.Messages.count_tokens, anthropic.resources.beta.Messages.count_tokens):
        assert set(inspect.signature(count).parameters) - own <= COUNT_FIELDS
