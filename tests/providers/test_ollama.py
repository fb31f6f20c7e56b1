"""The Ollama dialect against the recorded fixtures and the native /api/chat contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import wire

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Token,
    Tool,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.ollama import DEFAULT_BASE_URL, OllamaDialect

FIXTURES = wire.fixture_dir("ollama")
DIALECT = OllamaDialect()
LOCAL = Deployment(name="ollama-local", type="ollama")
# wire-formats.md §7: Ollama's done_reason "stop" means tool_calls when calls were seen.
GTL_FINISH = {"stop": "stop", "length": "length"}


_request = wire.request_maker(session_id="s1", model="llama3.2")


def _body(request: CompletionRequest, deployment: Deployment = LOCAL) -> dict[str, Any]:
    return json.loads(DIALECT.build_request(request, deployment, now=0.0).body)


SPLITS = {"whole": wire.whole, "bytes": wire.byte_by_byte, "random": wire.random_splitter(12)}


def _decode(request: CompletionRequest, data: bytes, mode: str = "whole") -> list[Any]:
    return wire.feed_all(DIALECT.response_decoder(request, LOCAL), SPLITS[mode](data))


# ----------------------------------------------------------------------------------------------
# Fixtures: responses


@pytest.mark.parametrize(
    ("fixture", "stream"),
    [
        ("chat-stream-text.ndjson", True),
        ("chat-stream-tool-call.ndjson", True),
        ("chat-nonstream-tool-call.json", False),
    ],
)
@pytest.mark.parametrize("mode", ["whole", "bytes", "random"])
def test_fixture_decodes_to_the_expected_answer(fixture: str, stream: bool, mode: str) -> None:
    expected = wire.expected(FIXTURES, Path(fixture).stem)
    events = _decode(_request(stream=stream), (FIXTURES / fixture).read_bytes(), mode)
    wire.check_sequence(events, "s1")
    wanted = "tool_calls" if expected["tool_calls"] else GTL_FINISH[expected["finish_reason"]]
    got = wire.assert_matches_expected(events, expected, finish_reason=wanted, provider="ollama-local", reasoning=False)
    for call, exp in zip(got["tool_calls"], expected["tool_calls"], strict=True):
        if not exp["id"]:
            assert call["id"].startswith("call_")  # Ollama sent none: the decoder made it up


def test_nonstream_pretty_body_gives_one_token_with_the_whole_text() -> None:
    body = (
        b'{"model":"llama3.2","message":{"role":"assistant","content":"Hello there."},'
        b'"done":true,\n"done_reason":"stop"}'
    )
    events = _decode(_request(stream=False), body, "bytes")
    assert [type(e) for e in events] == [Token, Usage, Done]
    assert events[0].text == "Hello there."
    assert (events[1].tokens_in, events[1].tokens_out) == (None, None)


@pytest.mark.parametrize("mode", ["whole", "bytes", "random"])
def test_midstream_error_line_ends_the_stream_with_an_error(mode: str) -> None:
    expected = wire.expected(FIXTURES, "error-midstream")
    events = _decode(_request(), (FIXTURES / "error-midstream.ndjson").read_bytes(), mode)
    wire.check_sequence(events, "s1")
    assert wire.summarize(events)["text"] == expected["text"]
    wire.assert_error_as_expected(events[-1], expected["error"])
    assert not any(isinstance(e, Usage) for e in events)


def test_error_404_model_not_found_maps_to_model_not_found() -> None:
    expected = wire.expected(FIXTURES, "error-404-model-not-found")["error"]
    body = (FIXTURES / "error-404-model-not-found.json").read_bytes()
    error = DIALECT.decode_error(_request(), LOCAL, 404, {"content-type": "application/json"}, body)
    wire.assert_error_as_expected(error, expected)
    assert (error.http_status, error.provider, error.session_id) == (404, "ollama-local", "s1")


@pytest.mark.parametrize("status", [400, 500])
def test_the_input_length_refusal_maps_to_context_length_exceeded(status: int) -> None:
    """Ollama's "the input length exceeds the context length" (``truncate: false``; embeddings, seen as a
    400 and as a 500) is CONTEXT_LENGTH_EXCEEDED, not retried — not an INVALID_REQUEST or INTERNAL."""
    body = b'{"error":"the input length exceeds the context length"}'
    error = DIALECT.decode_error(_request(), LOCAL, status, {"content-type": "application/json"}, body)
    assert (error.code, error.retryable, error.http_status) == ("CONTEXT_LENGTH_EXCEEDED", False, status)


def test_the_input_length_refusal_inside_the_stream_is_context_length_exceeded() -> None:
    events = _decode(_request(), b'{"error":"the input length exceeds the context length"}\n')
    errors = [e for e in events if isinstance(e, Error)]
    assert [(e.code, e.retryable) for e in errors] == [("CONTEXT_LENGTH_EXCEEDED", False)]


def test_api_tags_lists_model_names_with_tags() -> None:
    expected = wire.expected(FIXTURES, "api-tags")
    assert DIALECT.parse_models((FIXTURES / "api-tags.json").read_bytes()) == expected["models"]


# ----------------------------------------------------------------------------------------------
# Fixtures: requests


@pytest.mark.parametrize("fixture", ["chat-stream-tool-call", "chat-nonstream-tool-call"])
def test_build_request_matches_the_recorded_request(fixture: str) -> None:
    recorded = wire.recorded_request(FIXTURES, fixture)
    fn = recorded["tools"][0]["function"]
    request = _request(
        model=recorded["model"],
        messages=[Message(role=m["role"], content=m["content"]) for m in recorded["messages"]],
        tools=[Tool(name=fn["name"], description=fn["description"], parameters=fn["parameters"])],
        stream=recorded["stream"],
    )
    body = _body(request)
    assert body["model"] == recorded["model"]
    assert body["messages"] == recorded["messages"]
    assert body["tools"] == recorded["tools"]
    assert body["stream"] is recorded["stream"]


# ----------------------------------------------------------------------------------------------
# Request building


def test_url_defaults_to_localhost_and_honours_base_url() -> None:
    assert DIALECT.build_request(_request(), LOCAL, now=0).url == "http://localhost:11434/api/chat"
    assert DEFAULT_BASE_URL == "http://localhost:11434"
    remote = Deployment(name="o", type="ollama", base_url="http://gpu-box:11434/")
    assert DIALECT.build_request(_request(), remote, now=0).url == "http://gpu-box:11434/api/chat"


def test_stream_is_always_sent_explicitly() -> None:
    assert _body(_request(stream=True))["stream"] is True
    http = DIALECT.build_request(_request(stream=False), LOCAL, now=0)
    assert json.loads(http.body)["stream"] is False
    assert http.stream is False


def test_no_authorization_locally_and_bearer_for_ollama_com() -> None:
    assert "Authorization" not in DIALECT.build_request(_request(), LOCAL, now=0).headers
    cloud = Deployment(name="cloud", type="ollama", base_url="https://ollama.com", api_key="k-123")
    http = DIALECT.build_request(_request(), cloud, now=0)
    assert http.headers["Authorization"] == "Bearer k-123"
    assert http.url == "https://ollama.com/api/chat"
    assert http.headers["Content-Type"] == "application/json"


def test_sampling_parameters_go_into_options() -> None:
    body = _body(_request(temperature=0.2, top_p=0.9, max_tokens=64, stop=["END", "\n\n"]))
    assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["END", "\n\n"]}
    assert "options" not in _body(_request())


def test_system_and_history_keep_their_roles_and_order() -> None:
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello!"),
        Message(role="user", content="Again"),
    ]
    body = _body(_request(messages=messages))
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Again"),
    ]


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
    ],
)
def test_response_format_maps_to_format(response_format: dict[str, Any], expected: Any) -> None:
    assert _body(_request(response_format=response_format))["format"] == expected


def test_reasoning_asks_for_think() -> None:
    assert _body(_request(reasoning=True))["think"] is True
    assert "think" not in _body(_request())


def test_tool_choice_none_drops_tools_and_a_named_tool_narrows_them() -> None:
    tools = [Tool(name="a"), Tool(name="b")]
    assert "tools" not in _body(_request(tools=tools, tool_choice="none"))
    named = _body(_request(tools=tools, tool_choice={"type": "function", "function": {"name": "b"}}))
    assert [t["function"]["name"] for t in named["tools"]] == ["b"]
    assert len(_body(_request(tools=tools, tool_choice="auto"))["tools"]) == 2


def test_data_url_images_become_bare_base64() -> None:
    message = Message(role="user", content="What is this?", images=["data:image/png;base64,iVBORw0KGgo="])
    body = _body(_request(messages=[message]))
    assert body["messages"][0]["images"] == ["iVBORw0KGgo="]


def test_https_images_are_refused_with_a_clear_error() -> None:
    message = Message(role="user", content="What is this?", images=["https://example.com/cat.png"])
    with pytest.raises(InvalidRequestError, match="data: URL"):
        DIALECT.build_request(_request(messages=[message]), LOCAL, now=0)


def test_tool_call_round_trip_recovers_the_tool_name() -> None:
    line = {
        "model": "llama3.2",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_abcdefgh", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        "done": False,
    }
    done = {
        "model": "llama3.2",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
    }
    raw = (json.dumps(line) + "\n" + json.dumps(done) + "\n").encode()
    events = _decode(_request(tools=[Tool(name="get_weather")]), raw)
    call = next(e.function for e in events if isinstance(e, ToolCallEvent))
    assert call == ToolCall(id="call_abcdefgh", name="get_weather", arguments='{"city": "Oslo"}')
    assert events[-1].finish_reason == "tool_calls"

    history = [
        Message(role="user", content="Weather in Oslo?"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", tool_call_id=call.id, content="12°C"),
    ]
    sent = _body(_request(messages=history, tools=[Tool(name="get_weather")]))["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_abcdefgh", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    assert sent[2] == {
        "role": "tool",
        "content": "12°C",
        "tool_name": "get_weather",
        "tool_call_id": "call_abcdefgh",
    }


def test_models_request_is_get_api_tags() -> None:
    http = DIALECT.models_request(Deployment(name="o", type="ollama", base_url="http://h:1"), now=0)
    assert (http.method, http.url) == ("GET", "http://h:1/api/tags")


# ----------------------------------------------------------------------------------------------
# Decoding


def _lines(*objects: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


FINAL = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}


@pytest.mark.parametrize("asked", [True, False])
def test_thinking_is_reasoning_only_when_asked_and_never_token(asked: bool) -> None:
    raw = _lines(
        {"message": {"role": "assistant", "content": "", "thinking": "Let me see."}, "done": False},
        {"message": {"role": "assistant", "content": "Yes."}, "done": False},
        FINAL,
    )
    summary = wire.summarize(_decode(_request(reasoning=asked), raw, "bytes"))
    assert summary["text"] == "Yes."
    assert summary["reasoning_text"] == ("Let me see." if asked else "")


def test_parallel_tool_calls_without_ids_get_distinct_ids_in_order() -> None:
    call = {"function": {"name": "f", "arguments": {"n": 1}}}
    call2 = {"function": {"name": "g", "arguments": {}}}
    raw = _lines(
        {"message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False},
        {"message": {"role": "assistant", "content": "", "tool_calls": [call2]}, "done": False},
        FINAL,
    )
    calls = [e.function for e in _decode(_request(), raw) if isinstance(e, ToolCallEvent)]
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"n": 1}'), ("g", "{}")]
    assert len({c.id for c in calls}) == 2


def test_done_reason_length_and_missing_counts() -> None:
    raw = _lines({"message": {"content": "abc"}, "done": True, "done_reason": "length", "eval_count": 3})
    events = _decode(_request(), raw)
    usage, done = events[-2], events[-1]
    assert (usage.tokens_in, usage.tokens_out) == (None, 3)
    assert done.finish_reason == "length"


def test_stream_that_ends_without_done_is_a_retryable_error() -> None:
    raw = _lines({"message": {"role": "assistant", "content": "partial"}, "done": False})
    events = _decode(_request(), raw, "bytes")
    assert isinstance(events[0], Token)
    error = events[-1]
    assert isinstance(error, Error)
    assert (error.code, error.retryable) == ("PROVIDER_UNAVAILABLE", True)
    assert "ended early" in error.message


def test_malformed_line_is_an_error_not_an_exception() -> None:
    raw = b'{"message":{"content":"ok"},"done":false}\n{"message": {"content": tru\n' + _lines(FINAL)
    events = _decode(_request(), raw)
    assert [type(e) for e in events] == [Token, Error]
    assert "malformed" in events[-1].message


def test_nothing_comes_after_the_terminal_event() -> None:
    decoder = DIALECT.response_decoder(_request(), LOCAL)
    first = decoder.feed(_lines(FINAL))
    assert isinstance(first[-1], Done)
    assert decoder.feed(_lines({"message": {"content": "late"}, "done": False})) == []
    assert decoder.close() == []


def test_utf8_split_inside_a_character_is_reassembled() -> None:
    raw = _lines({"message": {"content": "30°C ☀"}, "done": False}, FINAL)
    assert wire.summarize(_decode(_request(), raw, "bytes"))["text"] == "30°C ☀"


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (
            400,
            {"error": "registry.ollama.ai/library/gemma:2b does not support tools"},
            "INVALID_REQUEST",
            False,
        ),
        (401, {"error": "unauthorized", "signin_url": "https://ollama.com/connect"}, "AUTH_FAILED", False),
        (
            503,
            {"error": "server busy, please try again.  maximum pending requests exceeded"},
            "OVERLOADED",
            True,
        ),
        (500, {"error": "llama runner process has terminated"}, "INTERNAL", True),
    ],
)
def test_decode_error_maps_status_and_message(status: int, body: dict[str, Any], code: str, retryable: bool) -> None:
    error = DIALECT.decode_error(_request(), LOCAL, status, {}, json.dumps(body).encode())
    assert (error.code, error.retryable, error.http_status) == (code, retryable, status)
    assert error.message == body["error"]


def test_decode_error_of_a_non_json_body_keeps_its_text() -> None:
    error = DIALECT.decode_error(_request(), LOCAL, 502, {}, b"Bad Gateway")
    assert (error.code, error.retryable, error.message) == ("PROVIDER_UNAVAILABLE", True, "Bad Gateway")
