"""The ``openai_compatible`` dialect: the tolerances that servers such as vLLM, llama.cpp, LM Studio,
OpenRouter, Groq and Ollama's ``/v1`` need (no usage, no ``[DONE]``, reasoning fields, other error
envelopes), the recorded Ollama ``/v1`` exchange, and reasoning replay."""

from __future__ import annotations

import json
from typing import Any

import pytest
import wire

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Reasoning,
    Token,
    Tool,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.openai import OpenAICompatibleDialect

OLLAMA = wire.fixture_dir("ollama")
DIALECT = OpenAICompatibleDialect()
DEPLOYMENT = Deployment(name="local-vllm", type="openai_compatible", base_url="http://127.0.0.1:8000/v1")


make_request = wire.request_maker(session_id="s-1", model="qwen3-8b")


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "model": "served-model",
        "choices": [choice],
        **extra,
    }


def sse(*chunks: Any, done: bool = True) -> bytes:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


# how wire.piece_sets cuts this file's bodies at random
SEED, MAX_CUTS = 3, 30


def decode(pieces: list[bytes], request: CompletionRequest | None = None) -> tuple[list[Any], Any]:
    decoder = DIALECT.response_decoder(request or make_request(), DEPLOYMENT)
    return wire.feed_all(decoder, pieces), decoder


def all_splits(body: bytes, request: CompletionRequest | None = None) -> list[Any]:
    """Decode every split of ``body``; they must agree. Returns the events."""
    return wire.decode_every_way(lambda pieces: decode(pieces, request)[0], body, seed=SEED, max_cuts=MAX_CUTS)


def body_of(built: Any) -> dict[str, Any]:
    return json.loads(built.body)


# ----------------------------------------------------------------------------------------------
# recorded Ollama /v1 exchange


FIXTURE = (OLLAMA / "openai-compat-v1-tool-call.json").read_bytes()
EXPECTED = wire.expected(OLLAMA, "openai-compat-v1-tool-call")
RECORDED_REQUEST = wire.recorded_request(OLLAMA, "openai-compat-v1-tool-call")


@pytest.mark.parametrize("reasoning", [True, False])
def test_recorded_ollama_v1_completion_decodes_to_the_expected_events(reasoning: bool) -> None:
    events = all_splits(FIXTURE, make_request(stream=False, reasoning=reasoning))
    wire.check_sequence(events, "s-1")
    # the raw finish reason, "tool_calls", is also GTL's name for it
    wire.assert_matches_expected(events, EXPECTED, finish_reason=EXPECTED["finish_reason"], reasoning=reasoning)
    assert events[-1].model == "gpt-oss:20b"


def test_recorded_reasoning_is_kept_as_provider_data_whether_or_not_it_was_streamed() -> None:
    events, decoder = decode([FIXTURE], make_request(stream=False))
    data = {"openai_reasoning": {"field": "reasoning", "text": EXPECTED["reasoning_text"]}}
    assert decoder.provider_data == data
    assert events[-1].provider_data == data


def _recorded_messages_to_gtl() -> list[Message]:
    out = []
    for m in RECORDED_REQUEST["messages"]:
        data = {"openai_reasoning": {"field": "reasoning", "text": m["reasoning"]}} if "reasoning" in m else None
        out.append(Message(role=m["role"], content=m["content"], provider_data=data))
    return out


def test_build_request_replays_reasoning_like_the_recorded_request_when_enabled() -> None:
    fn = RECORDED_REQUEST["tools"][0]["function"]
    request = make_request(
        model=RECORDED_REQUEST["model"],
        stream=False,
        messages=_recorded_messages_to_gtl(),
        tools=[Tool(name=fn["name"], description=fn["description"], parameters=fn["parameters"])],
        tool_choice="auto",
    )
    deployment = Deployment(
        name="ollama-cloud",
        type="openai_compatible",
        base_url="https://ollama.com/v1",
        api_key="ok",
        options={"replay_reasoning": True},
    )
    built = DIALECT.build_request(request, deployment, now=0.0)
    assert built.url == "https://ollama.com/v1/chat/completions"
    body = body_of(built)
    assert body["messages"] == RECORDED_REQUEST["messages"]
    for key in ("model", "stream", "tool_choice", "tools"):
        assert body[key] == RECORDED_REQUEST[key]
    # by default the non-standard field is not sent (strict servers reject unknown message fields)
    plain = body_of(DIALECT.build_request(request, DEPLOYMENT, now=0.0))
    assert all("reasoning" not in m for m in plain["messages"])


def test_streamed_reasoning_round_trips_through_provider_data_into_the_next_request() -> None:
    body = sse(
        chunk({"reasoning_content": "Let me "}),
        chunk({"reasoning_content": "think."}),
        chunk({"content": "4"}),
        chunk({}, "stop"),
    )
    _, decoder = decode([body])
    answer = Message(role="assistant", content="4", provider_data=decoder.provider_data)
    deployment = Deployment(
        name="v", type="openai_compatible", base_url="http://h/v1", options={"replay_reasoning": True}
    )
    request = make_request(
        messages=[Message(role="user", content="2+2?"), answer, Message(role="user", content="and 3+3?")]
    )
    sent = body_of(DIALECT.build_request(request, deployment, now=0.0))["messages"][1]
    assert sent == {"role": "assistant", "content": "4", "reasoning_content": "Let me think."}


# ----------------------------------------------------------------------------------------------
# streaming tolerances


def test_stream_without_a_usage_chunk_reports_unknown_counts() -> None:
    events = all_splits(sse(chunk({"role": "assistant"}), chunk({"content": "Hi"}), chunk({}, "stop")))
    assert [type(e) for e in events] == [Token, Usage, Done]
    assert events[1] == Usage(session_id="s-1")


def test_finish_reason_then_eof_without_done_is_a_normal_end() -> None:
    events = all_splits(sse(chunk({"content": "Hi"}), chunk({}, "length"), done=False))
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "length"


def test_eof_before_any_finish_reason_is_a_retryable_error() -> None:
    events = all_splits(sse(chunk({"content": "Hi"}), done=False))
    assert isinstance(events[-1], Error) and events[-1].code == "PROVIDER_UNAVAILABLE" and events[-1].retryable


def test_usage_in_the_finish_chunk_is_read() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    events = all_splits(sse(chunk({"content": "ok"}), chunk({}, "stop", usage=usage)))
    assert events[-2] == Usage(session_id="s-1", tokens_in=9, tokens_out=2)


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_fields_become_reasoning_events_only_when_asked(field: str) -> None:
    body = sse(chunk({field: "Because"}), chunk({field: " so."}), chunk({"content": "Yes"}), chunk({}, "stop"))
    asked = all_splits(body, make_request(reasoning=True))
    assert wire.texts(asked, Reasoning) == ["Because", " so."] and wire.texts(asked, Token) == ["Yes"]
    quiet = all_splits(body)
    assert wire.texts(quiet, Reasoning) == [] and wire.texts(quiet, Token) == ["Yes"]


def test_reasoning_sent_under_both_names_is_counted_once() -> None:
    body = sse(
        chunk({"reasoning": "r", "reasoning_content": "r", "content": None}),
        chunk({"content": "a"}),
        chunk({}, "stop"),
    )
    events, decoder = decode([body], make_request(reasoning=True))
    assert wire.texts(events, Reasoning) == ["r"]
    assert decoder.provider_data == {"openai_reasoning": {"field": "reasoning_content", "text": "r"}}


def test_tool_calls_without_index_are_kept_apart_by_id() -> None:
    body = sse(
        chunk({"tool_calls": [{"id": "a1", "type": "function", "function": {"name": "f", "arguments": '{"q": 1}'}}]}),
        chunk({"tool_calls": [{"id": "b2", "type": "function", "function": {"name": "g", "arguments": '{"q"'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": ": 2}"}}]}),
        chunk({}, "tool_calls"),
    )
    events = all_splits(body)
    assert wire.tool_calls(events) == [
        {"id": "a1", "name": "f", "arguments": {"q": 1}},
        {"id": "b2", "name": "g", "arguments": {"q": 2}},
    ]


def test_tool_call_reported_with_finish_reason_stop_ends_as_tool_calls() -> None:
    body = sse(
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": {"x": 1}}}]}),
        chunk({}, "stop"),
    )
    events = all_splits(body)
    call = next(e for e in events if isinstance(e, ToolCallEvent))
    assert json.loads(call.function.arguments) == {"x": 1}  # an object sent instead of JSON text
    assert events[-1].finish_reason == "tool_calls"


def test_server_that_ignores_stream_and_answers_json_is_decoded() -> None:
    events = all_splits(b"  \n" + FIXTURE, make_request(stream=True))
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "tool_calls"


def test_in_stream_error_with_an_http_status_code_is_classified_by_it() -> None:
    error = {"error": {"code": 502, "message": "Provider returned error"}}
    events = all_splits(sse(chunk({"content": "a"}), error, done=False))
    assert wire.texts(events, Token) == ["a"]
    assert events[-1].code == "PROVIDER_UNAVAILABLE" and events[-1].retryable
    limited = all_splits(sse({"error": {"code": 429, "message": "slow down"}}, done=False))
    assert limited[-1].code == "RATE_LIMIT" and limited[-1].retryable


def test_sse_comments_and_keepalives_are_ignored() -> None:
    body = b": OPENROUTER PROCESSING\n\n" + sse(chunk({"content": "x"}), chunk({}, "stop"))
    events = all_splits(body)
    assert wire.texts(events, Token) == ["x"] and isinstance(events[-1], Done)


# ----------------------------------------------------------------------------------------------
# errors in other envelopes


@pytest.mark.parametrize(
    ("status", "payload", "code", "message"),
    [
        (400, {"error": "model 'nope' not found"}, "INVALID_REQUEST", "model 'nope' not found"),
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you requested 5000.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "CONTEXT_LENGTH_EXCEEDED",
            "maximum context length is 4096",
        ),
        (404, {"detail": "Not Found"}, "MODEL_NOT_FOUND", "Not Found"),
        (
            503,
            {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}},
            "OVERLOADED",
            "Loading model",
        ),
        (
            500,
            {"error": {"message": "CUDA out of memory", "type": "server_error"}},
            "PROVIDER_UNAVAILABLE",
            "CUDA",
        ),
    ],
)
def test_error_envelopes_of_compatible_servers_are_understood(
    status: int, payload: Any, code: str, message: str
) -> None:
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, status, {}, json.dumps(payload).encode())
    assert error.code == code and message in error.message
    assert error.http_status == status and error.provider == "local-vllm"


def test_plain_text_error_body_keeps_the_status_and_text() -> None:
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 502, {}, b"upstream connect error")
    assert error.code == "PROVIDER_UNAVAILABLE" and error.retryable
    assert error.message == "HTTP 502 from local-vllm: upstream connect error"


# ----------------------------------------------------------------------------------------------
# requests


def test_base_url_is_required() -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        DIALECT.build_request(make_request(), Deployment(name="x", type="openai_compatible"), now=0.0)


def test_api_key_is_optional() -> None:
    assert "Authorization" not in DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0).headers
    keyed = Deployment(name="g", type="openai_compatible", base_url="https://api.groq.com/openai/v1", api_key="gsk")
    built = DIALECT.build_request(make_request(), keyed, now=0.0)
    assert built.headers["Authorization"] == "Bearer gsk"
    assert built.url == "https://api.groq.com/openai/v1/chat/completions"


def test_include_usage_is_sent_unless_the_server_rejects_it() -> None:
    assert body_of(DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0))["stream_options"] == {
        "include_usage": True
    }
    off = Deployment(name="l", type="openai_compatible", base_url="http://h/v1", options={"stream_usage": False})
    assert "stream_options" not in body_of(DIALECT.build_request(make_request(), off, now=0.0))


def test_model_names_are_not_assumed_to_be_openai_reasoning_models() -> None:
    request = make_request(model="o3-mini", max_tokens=10, messages=[Message(role="system", content="s")])
    body = body_of(DIALECT.build_request(request, DEPLOYMENT, now=0.0))
    assert body["max_tokens"] == 10 and body["messages"][0]["role"] == "system"
    opted = Deployment(name="r", type="openai_compatible", base_url="http://h/v1", options={"reasoning_model": True})
    assert body_of(DIALECT.build_request(request, opted, now=0.0))["max_completion_tokens"] == 10


def test_models_listing_url_and_parse() -> None:
    built = DIALECT.models_request(DEPLOYMENT, now=0.0)
    assert (built.method, built.url) == ("GET", "http://127.0.0.1:8000/v1/models")
    body = {"object": "list", "data": [{"id": "llama3.2:latest", "object": "model", "owned_by": "library"}]}
    assert DIALECT.parse_models(json.dumps(body).encode()) == ["llama3.2:latest"]
