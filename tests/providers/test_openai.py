"""The ``openai`` dialect: recorded OpenAI traffic through the decoder (whole, byte by byte, random
splits), recorded requests against ``build_request``, error fixtures through ``decode_error``, and
unit tests of the request mapping and the decoder's edge cases."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import wire

from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Reasoning,
    Token,
    Tool,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.openai import DEFAULT_BASE_URL, OpenAIDialect, is_reasoning_model

OPENAI = wire.fixture_dir("openai")
DIALECT = OpenAIDialect()
DEPLOYMENT = Deployment(name="openai-main", type="openai", api_key="sk-test-123")
# the raw finish reasons of the expected files, mapped by hand to GTL's
GTL_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}


# ----------------------------------------------------------------------------------------------
# helpers


make_request = wire.request_maker(session_id="s-1", model="gpt-4o-mini")


def sse(*chunks: Any, done: bool = True) -> bytes:
    """An SSE body of ``data: <json>`` events (strings are sent as they are)."""
    parts = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    if done:
        parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


# how wire.piece_sets cuts this file's bodies at random
SEED, MAX_CUTS = 7, 40


def decode(pieces: list[bytes], request: CompletionRequest, deployment: Deployment = DEPLOYMENT) -> list[Any]:
    return wire.feed_all(DIALECT.response_decoder(request, deployment), pieces)


def all_splits(body: bytes, request: CompletionRequest) -> list[Any]:
    """Decode every split of ``body``; they must agree. Returns the events."""
    return wire.decode_every_way(lambda pieces: decode(pieces, request), body, seed=SEED, max_cuts=MAX_CUTS)


def assert_matches_expected(events: list[Any], expected: dict[str, Any]) -> None:
    wire.check_sequence(events, "s-1")
    wire.assert_matches_expected(events, expected, finish_reason=GTL_FINISH[expected["finish_reason"]], reasoning=False)


def body_of(http_request: Any) -> dict[str, Any]:
    return json.loads(http_request.body)


# ----------------------------------------------------------------------------------------------
# recorded responses


STREAM_FIXTURES = ["stream-tool-call-single", "stream-parallel-tool-calls", "stream-text-after-tool-result"]
NONSTREAM_FIXTURES = [
    "nonstream-tool-call",
    "nonstream-finish-length",
    "nonstream-vision-base64",
    "nonstream-vision-url-after-tool",
]


@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_recorded_stream_decodes_to_expected_events_however_it_is_split(name: str) -> None:
    body = (OPENAI / f"{name}.sse").read_bytes()
    events = all_splits(body, make_request(stream=True))
    assert_matches_expected(events, wire.expected(OPENAI, name))


@pytest.mark.parametrize("name", NONSTREAM_FIXTURES)
def test_recorded_completion_decodes_to_expected_events_however_it_is_split(name: str) -> None:
    body = (OPENAI / f"{name}.json").read_bytes()
    events = all_splits(body, make_request(stream=False))
    assert_matches_expected(events, wire.expected(OPENAI, name))
    assert sum(isinstance(e, Token) for e in events) <= 1  # one Token with the whole text


def test_done_names_the_deployment_and_the_model_the_provider_reported() -> None:
    events = decode([(OPENAI / "stream-tool-call-single.sse").read_bytes()], make_request())
    done = events[-1]
    assert done.provider == "openai-main"
    assert done.model == "gpt-4o-mini-2024-07-18"  # from the chunks, not request.model
    assert done.provider_data is None


# ----------------------------------------------------------------------------------------------
# recorded requests: build_request has the same semantics


def _content_parts(content: Any) -> list[tuple[str, str]]:
    """A message content, string or parts, as (kind, value) pairs: the two shapes mean the same."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [("text", content)]
    return [("text", p["text"]) if p["type"] == "text" else ("image", p["image_url"]["url"]) for p in content]


def _recorded_to_gtl(recorded: dict[str, Any]) -> CompletionRequest:
    """Read a recorded OpenAI request body into the CompletionRequest a GTL client would send."""
    messages = []
    for m in recorded["messages"]:
        parts = _content_parts(m.get("content"))
        text = "".join(v for k, v in parts if k == "text") or None
        images = [v for k, v in parts if k == "image"]
        calls = [
            ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
            for c in m.get("tool_calls", [])
        ]
        messages.append(
            Message(
                role=m["role"],
                content=text,
                images=images,
                tool_calls=calls,
                tool_call_id=m.get("tool_call_id"),
            )
        )
    tools = [
        Tool(
            name=t["function"]["name"],
            description=t["function"]["description"],
            parameters=t["function"]["parameters"],
        )
        for t in recorded.get("tools", [])
    ]
    return CompletionRequest(
        session_id="s-1",
        model=recorded["model"],
        messages=messages,
        stream=recorded.get("stream", False),
        max_tokens=recorded.get("max_tokens"),
        temperature=recorded.get("temperature"),
        tools=tools or None,
        tool_choice=recorded.get("tool_choice"),
    )


def _semantic(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": body["model"],
        "stream": bool(body.get("stream")),
        "stream_options": body.get("stream_options"),
        "max_tokens": body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "tool_choice": body.get("tool_choice"),
        "messages": [
            {
                "role": m["role"],
                "content": _content_parts(m.get("content")),
                "tool_calls": [
                    (c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in m.get("tool_calls", [])
                ],
                "tool_call_id": m.get("tool_call_id"),
            }
            for m in body["messages"]
        ],
        "tools": [
            (
                t["type"],
                t["function"]["name"],
                t["function"].get("description", ""),
                t["function"]["parameters"],
            )
            for t in body.get("tools", [])
        ],
    }


@pytest.mark.parametrize(
    "name",
    [
        "stream-tool-call-single",
        "stream-parallel-tool-calls",
        "stream-text-after-tool-result",
        "nonstream-tool-call",
        "nonstream-finish-length",
        "nonstream-vision-base64",
        "nonstream-vision-url-after-tool",
    ],
)
def test_build_request_matches_the_recorded_request(name: str) -> None:
    recorded = wire.recorded_request(OPENAI, name)
    built = DIALECT.build_request(_recorded_to_gtl(recorded), DEPLOYMENT, now=0.0)
    assert built.method == "POST"
    assert built.url == "https://api.openai.com/v1/chat/completions"
    assert built.stream is recorded.get("stream", False)
    assert _semantic(body_of(built)) == _semantic(recorded)


def test_reasoning_model_gets_developer_role_where_the_recorded_system_role_was_rejected() -> None:
    # o1-mini answered the recorded request (system role) with a 400 "does not support 'system'"
    recorded = wire.recorded_request(OPENAI, "error-400-unsupported-system-role")
    body = body_of(DIALECT.build_request(_recorded_to_gtl(recorded), DEPLOYMENT, now=0.0))
    assert [m["role"] for m in body["messages"]] == ["developer", "user"]
    assert body["messages"][0]["content"] == "You are a helpful assistant."


def test_extra_body_option_sends_provider_parameters_gtl_has_no_field_for() -> None:
    recorded = wire.recorded_request(OPENAI, "error-400-param-not-supported")
    deployment = Deployment(
        name="o",
        type="openai",
        api_key="k",
        options={"extra_body": {"web_search_options": {"search_context_size": "low"}}},
    )
    body = body_of(DIALECT.build_request(_recorded_to_gtl(recorded), deployment, now=0.0))
    assert body["web_search_options"] == recorded["web_search_options"]
    assert _semantic(body) == _semantic(recorded)


def test_tool_call_from_the_decoder_round_trips_into_the_next_request() -> None:
    events = decode([(OPENAI / "stream-tool-call-single.sse").read_bytes()], make_request())
    call = next(e for e in events if isinstance(e, ToolCallEvent)).function
    first = wire.recorded_request(OPENAI, "stream-tool-call-single")
    follow_up = wire.recorded_request(OPENAI, "stream-text-after-tool-result")
    request = _recorded_to_gtl(first)
    request = CompletionRequest(
        session_id="s-2",
        model=request.model,
        messages=[
            *request.messages,
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id=call.id, content="London"),
        ],
        tools=request.tools,
        tool_choice="auto",
    )
    body = body_of(DIALECT.build_request(request, DEPLOYMENT, now=0.0))
    assert body["messages"] == follow_up["messages"]  # byte-for-byte the same messages, content null included


# ----------------------------------------------------------------------------------------------
# request mapping


def test_headers_carry_the_bearer_key_organization_project_and_deployment_headers() -> None:
    deployment = Deployment(
        name="o",
        type="openai",
        api_key="sk-abc",
        headers={"X-Trace": "1"},
        options={"organization": "org-1", "project": "proj-2"},
    )
    built = DIALECT.build_request(make_request(), deployment, now=0.0)
    assert built.headers["Authorization"] == "Bearer sk-abc"
    assert built.headers["OpenAI-Organization"] == "org-1"
    assert built.headers["OpenAI-Project"] == "proj-2"
    assert built.headers["X-Trace"] == "1"
    assert built.headers["Content-Type"] == "application/json"
    assert built.headers["Accept"] == "text/event-stream"


def test_no_api_key_sends_no_authorization_header() -> None:
    built = DIALECT.build_request(make_request(stream=False), Deployment(name="o", type="openai"), now=0.0)
    assert "Authorization" not in built.headers
    assert built.headers["Accept"] == "application/json"


def test_url_uses_the_default_or_the_configured_base_url() -> None:
    assert DEFAULT_BASE_URL == "https://api.openai.com/v1"
    custom = Deployment(name="o", type="openai", api_key="k", base_url="https://proxy.example/v1/")
    assert DIALECT.build_request(make_request(), custom, now=0.0).url == "https://proxy.example/v1/chat/completions"


def test_sampling_parameters_and_stop_are_sent() -> None:
    request = make_request(temperature=0.3, top_p=0.9, max_tokens=50, stop=["END", "\n\n"])
    body = body_of(DIALECT.build_request(request, DEPLOYMENT, now=0.0))
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (
        0.3,
        0.9,
        50,
        ["END", "\n\n"],
    )
    assert "max_completion_tokens" not in body


def test_unset_parameters_are_not_sent() -> None:
    body = body_of(DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0))
    for key in ("temperature", "top_p", "max_tokens", "stop", "tools", "tool_choice", "response_format"):
        assert key not in body


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("o1", True),
        ("o1-mini", True),
        ("o3-mini", True),
        ("o4-mini-2025-04-16", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("gpt-4o", False),
        ("gpt-4o-mini", False),
        ("gpt-4.1-nano", False),
        ("omni-moderation-latest", False),
    ],
)
def test_reasoning_model_names_are_recognised(model: str, expected: bool) -> None:
    assert is_reasoning_model(model) is expected


def test_reasoning_model_gets_max_completion_tokens_developer_role_and_no_unasked_sampling() -> None:
    request = make_request(
        model="o3-mini",
        max_tokens=200,
        messages=[Message(role="system", content="Be brief."), Message(role="user", content="q")],
    )
    body = body_of(DIALECT.build_request(request, DEPLOYMENT, now=0.0))
    assert body["max_completion_tokens"] == 200
    assert "max_tokens" not in body and "temperature" not in body and "top_p" not in body
    assert body["messages"][0] == {"role": "developer", "content": "Be brief."}


def test_reasoning_model_keeps_a_temperature_the_request_asked_for() -> None:
    body = body_of(DIALECT.build_request(make_request(model="gpt-5", temperature=1.0), DEPLOYMENT, now=0.0))
    assert body["temperature"] == 1.0


def test_options_override_reasoning_detection_and_system_role() -> None:
    deployment = Deployment(
        name="o", type="openai", api_key="k", options={"reasoning_model": False, "system_role": "system"}
    )
    request = make_request(model="o3-mini", max_tokens=5, messages=[Message(role="system", content="x")])
    body = body_of(DIALECT.build_request(request, deployment, now=0.0))
    assert body["max_tokens"] == 5 and body["messages"][0]["role"] == "system"


def test_streaming_asks_for_usage_and_non_streaming_does_not() -> None:
    streamed = body_of(DIALECT.build_request(make_request(stream=True), DEPLOYMENT, now=0.0))
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    plain = DIALECT.build_request(make_request(stream=False), DEPLOYMENT, now=0.0)
    assert plain.stream is False
    assert body_of(plain)["stream"] is False and "stream_options" not in body_of(plain)


TOOLS = [Tool(name="get_weather", description="Weather", parameters={"type": "object", "properties": {}})]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
        ({"type": "function", "function": {"name": "x"}}, {"type": "function", "function": {"name": "x"}}),
    ],
)
def test_tool_choice_passes_through_and_a_bare_name_picks_that_function(choice: Any, wire: Any) -> None:
    body = body_of(DIALECT.build_request(make_request(tools=TOOLS, tool_choice=choice), DEPLOYMENT, now=0.0))
    assert body["tool_choice"] == wire
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather", "parameters": TOOLS[0].parameters},
        }
    ]


def test_tool_choice_without_tools_is_not_sent() -> None:
    body = body_of(DIALECT.build_request(make_request(tool_choice="auto"), DEPLOYMENT, now=0.0))
    assert "tool_choice" not in body


def test_response_format_and_reasoning_effort_pass_through() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True}}
    deployment = Deployment(name="o", type="openai", api_key="k", options={"reasoning_effort": "low"})
    body = body_of(DIALECT.build_request(make_request(response_format=fmt), deployment, now=0.0))
    assert body["response_format"] == fmt
    assert body["reasoning_effort"] == "low"


def test_images_become_image_url_parts_after_the_text() -> None:
    message = Message(
        role="user", content="What is this?", images=["data:image/png;base64,AAAA", "https://x.test/a.jpg"]
    )
    body = body_of(DIALECT.build_request(make_request(messages=[message]), DEPLOYMENT, now=0.0))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
    ]


def test_images_on_tool_results_follow_the_tool_messages_as_one_user_message() -> None:
    messages = [
        Message(role="user", content="look"),
        Message(role="assistant", tool_calls=[ToolCall(id="c1", name="a"), ToolCall(id="c2", name="b")]),
        Message(role="tool", tool_call_id="c1", content="one", images=["https://x.test/1.png"]),
        Message(role="tool", tool_call_id="c2", content="two"),
        Message(role="user", content="and?"),
    ]
    body = body_of(DIALECT.build_request(make_request(messages=messages), DEPLOYMENT, now=0.0))
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "tool", "tool", "user", "user"]
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "one"}
    images = [p for p in body["messages"][4]["content"] if p["type"] == "image_url"]
    assert images == [{"type": "image_url", "image_url": {"url": "https://x.test/1.png"}}]
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_an_assistant_text_after_its_calls_joins_them_before_their_results() -> None:
    """The Responses API's items as LiteLLM orders them: the call, then the assistant's text, then the
    result — Chat Completions wants the result right after the message of calls."""
    messages = [
        Message(role="user", content="weather?"),
        Message(role="assistant", tool_calls=[ToolCall(id="c1", name="a", arguments='{"x":1}')]),
        Message(role="assistant", content="Checking.", tool_calls=[ToolCall(id="c2", name="b")]),
        Message(role="tool", tool_call_id="c2", content="two"),
        Message(role="tool", tool_call_id="c1", content="one"),
    ]
    body = body_of(DIALECT.build_request(make_request(messages=messages), DEPLOYMENT, now=0.0))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "tool"]
    assert body["messages"][1]["content"] == "Checking."
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == ["c1", "c2"]
    assert [m["tool_call_id"] for m in body["messages"][2:]] == ["c2", "c1"]


def test_results_after_a_users_words_move_up_to_their_call() -> None:
    messages = [
        Message(role="user", content="weather?"),
        Message(
            role="assistant", content="Looking.", tool_calls=[ToolCall(id="c1", name="a"), ToolCall(id="c2", name="b")]
        ),
        Message(role="tool", tool_call_id="c1", content="one", images=["https://x.test/1.png"]),
        Message(role="user", content="hurry"),
        Message(role="tool", tool_call_id="c2", content="two"),
        Message(role="assistant", content="Done."),
        Message(role="tool", tool_call_id="c1", content="late"),  # no call of its own since: left for the API
    ]
    body = body_of(DIALECT.build_request(make_request(messages=messages), DEPLOYMENT, now=0.0))
    sent = [(m["role"], m.get("tool_call_id") or m.get("content")) for m in body["messages"]]
    assert [role for role, _ in sent] == ["user", "assistant", "tool", "tool", "user", "user", "assistant", "tool"]
    assert sent[2:4] == [("tool", "c1"), ("tool", "c2")] and sent[5] == ("user", "hurry")
    assert body["messages"][4]["content"][0]["text"] == "Images returned by tool call c1:"
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "Looking.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
        ],
    }


def test_message_names_and_foreign_provider_data_are_handled() -> None:
    messages = [
        Message(role="user", content="hi", name="alice"),
        Message(
            role="assistant",
            content="hello",
            provider_data={"openai_reasoning": {"field": "reasoning", "text": "t"}},
        ),
    ]
    body = body_of(DIALECT.build_request(make_request(messages=messages), DEPLOYMENT, now=0.0))
    assert body["messages"][0] == {"role": "user", "content": "hi", "name": "alice"}
    assert body["messages"][1] == {"role": "assistant", "content": "hello"}  # OpenAI takes no reasoning field


# ----------------------------------------------------------------------------------------------
# decoder edge cases

CHUNK = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini-x"}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**CHUNK, "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_stream_that_ends_before_done_and_before_a_finish_reason_is_a_retryable_error() -> None:
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), done=False)
    for pieces in wire.piece_sets(body, seed=SEED, max_cuts=MAX_CUTS).values():
        events = decode(pieces, make_request())
        wire.check_sequence(events, "s-1")
        assert [e.text for e in events if isinstance(e, Token)] == ["Hel"]
        error = events[-1]
        assert isinstance(error, Error) and error.code == "PROVIDER_UNAVAILABLE" and error.retryable
        assert "stream ended before [DONE]" in error.message


def test_stream_cut_in_the_middle_of_an_event_is_an_error() -> None:
    body = sse(chunk({"content": "Hi"}), chunk({}, "stop"))
    events = decode([body[: len(body) - 30]], make_request())  # inside the finish chunk
    assert isinstance(events[-1], Error) and "before [DONE]" in events[-1].message


def test_finish_reason_then_clean_eof_without_done_is_accepted() -> None:
    body = sse(chunk({"content": "Hi"}), chunk({}, "stop"), done=False)
    events = decode([body], make_request())
    wire.check_sequence(events, "s-1")
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"
    assert events[-2] == Usage(session_id="s-1")  # no usage chunk: every count unknown


def test_malformed_chunk_is_an_error_and_nothing_follows_it() -> None:
    body = sse(chunk({"content": "a"}), "{not json", chunk({"content": "b"}), chunk({}, "stop"))
    decoder = DIALECT.response_decoder(make_request(), DEPLOYMENT)
    events = decoder.feed(body)
    assert [type(e) for e in events] == [Token, Error]
    assert "not JSON" in events[-1].message
    assert decoder.feed(b"data: [DONE]\n\n") == [] and decoder.close() == []


def test_chunk_that_is_not_an_object_is_an_error() -> None:
    events = decode([sse("[1, 2]")], make_request())
    assert isinstance(events[-1], Error) and "not a JSON object" in events[-1].message


def test_error_inside_a_200_stream_ends_it_with_a_mapped_error() -> None:
    error = {"error": {"message": "The server had an error processing your request.", "type": "server_error"}}
    events = decode([sse(chunk({"content": "par"}), error)], make_request())
    wire.check_sequence(events, "s-1")
    assert isinstance(events[0], Token)
    assert events[-1].code == "PROVIDER_UNAVAILABLE" and events[-1].retryable
    assert events[-1].message == "The server had an error processing your request."


def test_error_event_whose_data_is_the_bare_error_object_is_recognised() -> None:
    payload = {"message": "Rate limit reached. Please try again in 20ms.", "type": "requests"}
    body = f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
    events = decode([body], make_request())
    assert events[-1].code == "RATE_LIMIT" and events[-1].retryable
    assert events[-1].retry_after == pytest.approx(0.02)


def test_usage_counts_include_cached_and_reasoning_tokens() -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 256},
    }
    body = sse(
        chunk({"content": "x"}),
        chunk({}, "stop"),
        {**CHUNK, "choices": [], "usage": usage, "obfuscation": "zz"},
    )
    events = decode([body], make_request())
    assert events[-2] == Usage(
        session_id="s-1", tokens_in=1200, tokens_out=300, cached_tokens_in=1024, reasoning_tokens_out=256
    )


def test_finish_reasons_map_to_gtl() -> None:
    for raw, gtl in [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("weird", "other"),
    ]:
        events = decode([sse(chunk({"content": "x"}), chunk({}, raw))], make_request())
        assert events[-1].finish_reason == gtl


def test_refusal_is_visible_text_and_empty_role_chunk_is_not_a_token() -> None:
    body = sse(
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"refusal": "I can't help."}),
        chunk({}, "stop"),
    )
    events = decode([body], make_request())
    assert [e.text for e in events if isinstance(e, Token)] == ["I can't help."]
    # never an answer to parse: a caller of structured output learns it was refused
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "content_filter"


def test_parallel_tool_calls_with_interleaved_fragments_stay_apart_and_in_index_order() -> None:
    def frag(index: int, **kw: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **kw}]})

    body = sse(
        frag(1, id="call_b", type="function", function={"name": "b", "arguments": ""}),
        frag(0, id="call_a", type="function", function={"name": "a", "arguments": '{"x"'}),
        frag(1, function={"arguments": '{"y": 2}'}),
        frag(0, function={"arguments": ": 1}"}),
        chunk({}, "tool_calls"),
    )
    events = decode([body], make_request())
    calls = [e.function for e in events if isinstance(e, ToolCallEvent)]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_a", "a", {"x": 1}),
        ("call_b", "b", {"y": 2}),
    ]
    assert events[-1].finish_reason == "tool_calls"


def test_tool_calls_are_emitted_when_the_finish_reason_arrives() -> None:
    decoder = DIALECT.response_decoder(make_request(), DEPLOYMENT)
    opening = sse(
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
        done=False,
    )
    assert decoder.feed(opening) == []
    finished = decoder.feed(sse(chunk({}, "tool_calls"), done=False))
    assert [type(e) for e in finished] == [ToolCallEvent]
    assert [type(e) for e in decoder.feed(b"data: [DONE]\n\n")] == [Usage, Done]


def test_reasoning_text_is_dropped_unless_asked_and_never_becomes_a_token() -> None:
    body = sse(chunk({"reasoning_content": "think"}), chunk({"content": "ans"}), chunk({}, "stop"))
    quiet = decode([body], make_request())
    assert [type(e) for e in quiet] == [Token, Usage, Done] and quiet[0].text == "ans"
    loud = decode([body], make_request(reasoning=True))
    assert [(type(e), getattr(e, "text", None)) for e in loud[:2]] == [(Reasoning, "think"), (Token, "ans")]


def test_json_answer_to_a_stream_request_is_decoded_as_a_completion() -> None:
    body = (OPENAI / "nonstream-vision-base64.json").read_bytes()
    events = decode([body[:1], body[1:]], make_request(stream=True))
    assert wire.summarize(events)["text"] == "This vegetable is a potato."


def test_empty_or_non_json_completion_body_is_an_error() -> None:
    assert isinstance(decode([b""], make_request(stream=False))[-1], Error)
    assert isinstance(decode([b""], make_request(stream=True))[-1], Error)
    html = decode([b"<html>oops</html>"], make_request(stream=False))
    assert isinstance(html[-1], Error) and "not a JSON object" in html[-1].message


def test_completion_body_with_an_error_object_is_an_error() -> None:
    body = json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
    events = decode([body], make_request(stream=False))
    assert events == [events[-1]] and events[-1].code == "PROVIDER_UNAVAILABLE"


# ----------------------------------------------------------------------------------------------
# errors


ERROR_FIXTURES = [
    "error-400-context-length-exceeded",
    "error-400-param-not-supported",
    "error-400-unsupported-system-role",
    "error-401-invalid-api-key",
    "error-429-rate-limit-tokens",
]


@pytest.mark.parametrize("name", ERROR_FIXTURES)
def test_recorded_error_maps_to_the_expected_code(name: str) -> None:
    expected = wire.expected(OPENAI, name)["error"]
    body = (OPENAI / f"{name}.json").read_bytes()
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, expected["http_status"], {}, body)
    wire.assert_error_as_expected(error, expected)
    assert error.http_status == expected["http_status"]
    assert error.provider == "openai-main" and error.session_id == "s-1"


def test_rate_limit_wait_hint_comes_from_the_message_text() -> None:
    body = (OPENAI / "error-429-rate-limit-tokens.json").read_bytes()
    assert DIALECT.decode_error(make_request(), DEPLOYMENT, 429, {}, body).retry_after == pytest.approx(1.574)


def test_rate_limit_headers_win_over_the_message_text() -> None:
    body = (OPENAI / "error-429-rate-limit-tokens.json").read_bytes()
    assert DIALECT.decode_error(make_request(), DEPLOYMENT, 429, {"Retry-After-Ms": "2500"}, body).retry_after == 2.5
    assert DIALECT.decode_error(make_request(), DEPLOYMENT, 429, {"retry-after": "7"}, body).retry_after == 7.0


def test_rate_limit_reset_header_is_the_last_resort_hint() -> None:
    body = json.dumps({"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}})
    headers = {"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-reset-requests": "20ms"}
    assert DIALECT.decode_error(make_request(), DEPLOYMENT, 429, headers, body.encode()).retry_after == 360.0


def test_a_400_about_the_accounts_verification_is_the_accounts_forbidden() -> None:
    message = "Your organization must be verified to use the model `o3`. Please go to: https://platform.openai.com/..."
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 400, {}, json.dumps(body).encode())
    assert (error.code, error.retryable) == ("FORBIDDEN", False)
    # the caller's own text quoted back, a tool named so, a 5xx saying it: the request's, or the provider's
    for status, message in (
        (400, "1 validation error: input_value={'txt': 'Hi, your organization must be verified'}"),
        (400, "Invalid schema for function 'account_deactivated'"),
        (500, "Your organization must be verified, and the server failed"),
    ):
        quoted = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
        error = DIALECT.decode_error(make_request(), DEPLOYMENT, status, {}, json.dumps(quoted).encode())
        assert error.code != "FORBIDDEN", message


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("billing_hard_limit_reached", "Billing hard limit has been reached"),
        (None, "Your credit balance is too low to access the Anthropic API."),  # a proxy relaying Anthropic's 400
    ],
)
def test_a_400_about_the_accounts_money_is_a_quota_used_up(code, message) -> None:
    """The account's money, said in a 400: read as ``insufficient_quota`` is — ``RATE_LIMIT``, not
    retryable — never the caller's ``INVALID_REQUEST`` nor a permission."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 400, {}, json.dumps(body).encode())
    assert (error.code, error.retryable, error.message) == ("RATE_LIMIT", False, message)


def test_insufficient_quota_429_is_not_retryable() -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "code": "insufficient_quota",
        }
    }
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 429, {"retry-after": "1"}, json.dumps(body).encode())
    assert (error.code, error.retryable, error.retry_after) == ("RATE_LIMIT", False, None)


@pytest.mark.parametrize(
    ("status", "payload", "code", "retryable"),
    [
        (
            403,
            {
                "error": {
                    "message": "Country not supported",
                    "type": "request_forbidden",
                    "code": "unsupported_country_region_territory",
                }
            },
            "FORBIDDEN",
            False,
        ),
        (
            404,
            {
                "error": {
                    "message": "The model `gpt-9` does not exist",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
            "MODEL_NOT_FOUND",
            False,
        ),
        (
            500,
            {"error": {"message": "The server had an error", "type": "server_error", "code": None}},
            "PROVIDER_UNAVAILABLE",
            True,
        ),
        (
            503,
            {"error": {"message": "The engine is currently overloaded", "type": "server_error"}},
            "OVERLOADED",
            True,
        ),
        (502, {"error": {"message": "Bad gateway", "type": "server_error"}}, "PROVIDER_UNAVAILABLE", True),
    ],
)
def test_http_errors_map_by_status_and_code(status: int, payload: Any, code: str, retryable: bool) -> None:
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, status, {}, json.dumps(payload).encode())
    assert (error.code, error.retryable, error.http_status) == (code, retryable, status)
    assert error.message == payload["error"]["message"]


def test_html_error_page_from_a_proxy_is_still_a_clear_error() -> None:
    body = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>nginx</body></html>"
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 502, {"content-type": "text/html"}, body)
    assert error.code == "PROVIDER_UNAVAILABLE" and error.retryable and error.http_status == 502
    assert "HTTP 502" in error.message and "Bad Gateway" in error.message and "<" not in error.message


def test_empty_error_body_names_the_status() -> None:
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 401, {}, b"")
    assert error.code == "AUTH_FAILED" and "HTTP 401" in error.message


# ----------------------------------------------------------------------------------------------
# model listing and purity


def test_models_request_and_parse() -> None:
    built = DIALECT.models_request(DEPLOYMENT, now=0.0)
    assert (built.method, built.url) == ("GET", "https://api.openai.com/v1/models")
    assert built.headers["Authorization"] == "Bearer sk-test-123"
    body = json.dumps(
        {
            "object": "list",
            "data": [
                {"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "system"},
                {"id": "o3-mini"},
            ],
        }
    ).encode()
    assert DIALECT.parse_models(body) == ["gpt-4o", "o3-mini"]
    with pytest.raises(ValueError):
        DIALECT.parse_models(b"<html>")


def test_dialect_module_imports_no_io_library() -> None:
    code = (
        "import sys, gtl_nb.providers.openai\n"
        "bad = [m for m in ('asyncio', 'socket', 'httpx', 'IPython') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_deployment_repr_never_shows_the_key() -> None:
    built = DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0)
    assert "sk-test-123" not in repr(DEPLOYMENT) and "sk-test-123" not in built.url


def test_model_times_read_created_and_azures_created_at() -> None:
    listing = {
        "object": "list",
        "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
            {"id": "azure-base", "object": "model", "created_at": 1715558400},
            {"id": "text", "object": "model", "created": "1721172741"},
            {"id": "flag", "object": "model", "created": True},
            {"id": "zero", "object": "model", "created": 0},
            {"id": "none", "object": "model"},
        ],
    }
    assert DIALECT.model_times(json.dumps(listing).encode()) == {"gpt-4o-mini": 1721172741, "azure-base": 1715558400}
    with pytest.raises(ValueError):
        DIALECT.model_times(b'{"object": "list"}')
