"""The Anthropic Messages dialect, tested from recorded traffic (tests/fixtures/wire/anthropic)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import wire

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Reasoning,
    Status,
    StreamEvent,
    Token,
    Tool,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.anthropic import COUNT_DROPS, DEFAULT_MAX_TOKENS, AnthropicDialect
from gtl_nb.providers.base import Deployment, HttpDialect

FIXTURES = wire.fixture_dir("anthropic")
SID = "sess-anthropic"
DIALECT = AnthropicDialect()
DEPLOYMENT = Deployment(name="claude-main", type="anthropic", api_key="sk-ant-test-key")

# wire-formats.md §7: raw stop_reason -> GTL finish_reason
RAW_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length"}

STREAM_FIXTURES = [
    "stream-text",
    "stream-thinking",
    "stream-parallel-tool-use-empty-input",
    "stream-text-after-tool-results",
    "stream-vision-base64",
    "stream-server-tool-then-tool-use-fragments",
]
NONSTREAM_FIXTURES = ["nonstream-thinking-max-tokens", "nonstream-vision-base64", "nonstream-vision-url"]


# ----------------------------------------------------------------------------------------------
# helpers


request = wire.request_maker(session_id=SID, model="claude-haiku-4-5")


def body_of(req: CompletionRequest, deployment: Deployment = DEPLOYMENT) -> dict[str, Any]:
    return json.loads(DIALECT.build_request(req, deployment, now=0.0).body)


SPLITS = wire.named_splitters(7, 99)
F = [Tool(name="f")]  # the tool the tool loops below call (the API takes tool blocks only beside tools)


decode = wire.checked_decoding(DIALECT, DEPLOYMENT, session_id=SID)


def assert_matches_expected(events: list[StreamEvent], exp: dict[str, Any]) -> None:
    wire.assert_matches_expected(events, exp, finish_reason=RAW_FINISH[exp["finish_reason"]], provider="claude-main")


def normalized_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """String content → one text block, so recorded and built messages compare by meaning."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        out.append({"role": message["role"], "content": content})
    return out


def block_set(blocks: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(block, sort_keys=True) for block in blocks)


# ----------------------------------------------------------------------------------------------
# fixtures: responses


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("name", STREAM_FIXTURES)
def test_stream_fixture_decodes_to_expected_events_at_any_split(name: str, split) -> None:
    events, _ = decode(request(stream=True, reasoning=True), (FIXTURES / f"{name}.sse").read_bytes(), split)
    assert_matches_expected(events, wire.expected(FIXTURES, name))


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("name", NONSTREAM_FIXTURES)
def test_nonstream_fixture_decodes_to_one_token_and_expected_usage(name: str, split) -> None:
    events, _ = decode(request(stream=False, reasoning=True), (FIXTURES / f"{name}.json").read_bytes(), split)
    assert_matches_expected(events, wire.expected(FIXTURES, name))
    assert len([e for e in events if isinstance(e, Token)]) == 1


def test_done_reports_the_model_the_provider_named() -> None:
    events, _ = decode(request(stream=True), (FIXTURES / "stream-text.sse").read_bytes())
    assert events[-1].model == "claude-haiku-4-5-20251001"


def test_thinking_is_never_token_text_and_is_hidden_unless_reasoning_was_asked() -> None:
    data = (FIXTURES / "stream-thinking.sse").read_bytes()
    events, _ = decode(request(stream=True, reasoning=False), data)
    assert not any(isinstance(e, Reasoning) for e in events)
    assert wire.summarize(events)["text"] == wire.expected(FIXTURES, "stream-thinking")["text"]


def _recorded_sse_events(name: str) -> list[dict[str, Any]]:
    """The JSON payloads of a recorded stream's events, in order (pings left out)."""
    text = (FIXTURES / f"{name}.sse").read_text()
    payloads = [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]
    return [payload for payload in payloads if payload["type"] != "ping"]


@pytest.mark.parametrize("name", ["stream-text", "stream-thinking"])
@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
def test_the_input_counts_of_message_start_go_on_before_any_content(name: str, split) -> None:
    """Anthropic tells the prompt's size in ``message_start``: a ``streaming`` status says it at once,
    before the first piece of the answer, and the one ``usage`` at the end repeats it."""
    recorded = _recorded_sse_events(name)[0]["message"]["usage"]
    told = recorded["input_tokens"] + recorded["cache_read_input_tokens"] + recorded["cache_creation_input_tokens"]
    events, _ = decode(request(stream=True, reasoning=True), (FIXTURES / f"{name}.sse").read_bytes(), split)
    early = [(i, e) for i, e in enumerate(events) if isinstance(e, Status)]
    first_content = next(i for i, e in enumerate(events) if isinstance(e, (Token, Reasoning)))
    ((where, status),) = early
    assert where < first_content and status.state == "streaming"
    assert status.tokens_in == told and status.cached_tokens_in == recorded["cache_read_input_tokens"]
    (usage,) = [e for e in events if isinstance(e, Usage)]
    assert usage.tokens_in == status.tokens_in


def test_a_thinking_blocks_end_is_marked_with_its_signature_where_the_stream_ends_it() -> None:
    recorded = _recorded_sse_events("stream-thinking")
    (signature,) = [e["delta"]["signature"] for e in recorded if e.get("delta", {}).get("type") == "signature_delta"]
    events, decoder = decode(request(stream=True, reasoning=True), (FIXTURES / "stream-thinking.sse").read_bytes())
    thoughts = [e for e in events if isinstance(e, Reasoning)]
    assert [e.signature for e in thoughts if e.signature] == [signature]
    assert thoughts[-1].signature == signature and thoughts[-1].text == ""  # the last piece of the block
    assert events.index(thoughts[-1]) < next(i for i, e in enumerate(events) if isinstance(e, Token))
    assert decoder.provider_data["anthropic"]["content"][0]["signature"] == signature  # the whole state, as before
    unasked, _ = decode(request(stream=True, reasoning=False), (FIXTURES / "stream-thinking.sse").read_bytes())
    assert not any(isinstance(e, Reasoning) for e in unasked)


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
def test_error_event_inside_a_200_stream_ends_with_a_retryable_overloaded_error(split) -> None:
    exp = wire.expected(FIXTURES, "error-midstream-overloaded")
    events, _ = decode(request(), (FIXTURES / "error-midstream-overloaded.sse").read_bytes(), split)
    assert wire.summarize(events)["text"] == exp["text"]
    error = events[-1]
    wire.assert_error_as_expected(error, exp["error"])
    assert error.http_status == exp["error"]["http_status"]
    assert error.provider == "claude-main"


# ----------------------------------------------------------------------------------------------
# fixtures: errors


@pytest.mark.parametrize(
    "name",
    [
        "error-400-invalid-request",
        "error-400-prompt-too-long",
        "error-404-model-not-found",
        "error-529-overloaded",
    ],
)
def test_error_fixture_maps_to_the_expected_gtl_code(name: str) -> None:
    exp = wire.expected(FIXTURES, name)["error"]
    headers_file = FIXTURES / f"{name}.response-headers.json"
    headers = json.loads(headers_file.read_text()) if headers_file.exists() else {}
    body = (FIXTURES / f"{name}.json").read_bytes()
    error = DIALECT.decode_error(request(), DEPLOYMENT, exp["http_status"], headers, body)
    wire.assert_error_as_expected(error, exp)
    assert error.http_status == exp["http_status"]
    assert error.provider == "claude-main"
    assert error.session_id == SID


def err(status: int, error_type: str | None, message: str = "boom", headers=None, **extra: Any) -> Error:
    payload = {"type": "error", "error": {"type": error_type, "message": message, **extra}}
    return DIALECT.decode_error(request(), DEPLOYMENT, status, headers or {}, json.dumps(payload).encode())


@pytest.mark.parametrize(
    ("status", "error_type", "code", "retryable"),
    [
        (401, "authentication_error", "AUTH_FAILED", False),
        (403, "permission_error", "FORBIDDEN", False),
        (402, "billing_error", "RATE_LIMIT", False),  # the account's credit: as OpenAI's insufficient_quota
        (402, None, "RATE_LIMIT", False),
        (413, "request_too_large", "INVALID_REQUEST", False),
        (429, "rate_limit_error", "RATE_LIMIT", True),
        (500, "api_error", "INTERNAL", True),
        (529, "overloaded_error", "OVERLOADED", True),
        (504, "timeout_error", "TIMEOUT", True),
        (418, "brand_new_error", "INVALID_REQUEST", False),
        (502, "brand_new_error", "PROVIDER_UNAVAILABLE", True),
    ],
)
def test_error_types_map_to_gtl_codes(status: int, error_type: str, code: str, retryable: bool) -> None:
    error = err(status, error_type)
    assert (error.code, error.retryable, error.http_status) == (code, retryable, status)


def test_a_400_about_the_credit_balance_is_a_quota_used_up_not_a_bad_request() -> None:
    """Anthropic answers an account out of credit with a 400 ``invalid_request_error``: it is read as
    OpenAI's ``insufficient_quota`` is — ``RATE_LIMIT``, not retryable — so a caller can tell it from a
    request to mend, and nothing retries it; the provider's words are kept."""
    words = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade."
    error = err(400, "invalid_request_error", words)
    assert (error.code, error.retryable, error.http_status, error.message) == ("RATE_LIMIT", False, 400, words)
    # even when a proxy in front says to retry it
    assert err(400, "invalid_request_error", words, headers={"x-should-retry": "true"}).retryable is False
    assert err(400, "invalid_request_error", "max_tokens: field required").code == "INVALID_REQUEST"
    quoted = "messages.0.content: 'your credit balance is too low' is not a valid block"
    assert err(400, "invalid_request_error", quoted).code == "INVALID_REQUEST"  # the caller's own words


def test_rate_limit_carries_the_retry_after_header() -> None:
    error = err(429, "rate_limit_error", headers={"Retry-After": "12"})
    assert error.retry_after == 12.0 and error.retryable


def test_spend_limit_429_is_not_retryable() -> None:
    error = err(429, "rate_limit_error", "limit reached", details={"error_code": "enforced_spend_limit_reached"})
    assert error.code == "RATE_LIMIT" and error.retryable is False


def test_x_should_retry_header_decides_retryability() -> None:
    assert err(500, "api_error", headers={"x-should-retry": "false"}).retryable is False
    assert err(409, None, headers={"X-Should-Retry": "true"}).retryable is True


def test_non_json_error_body_falls_back_to_the_status() -> None:
    error = DIALECT.decode_error(request(), DEPLOYMENT, 502, {}, b"<html>Bad gateway</html>")
    assert error.code == "PROVIDER_UNAVAILABLE" and error.retryable
    assert "Bad gateway" in error.message


# ----------------------------------------------------------------------------------------------
# fixtures: recorded requests


def test_build_matches_recorded_plain_text_request() -> None:
    rec = wire.recorded_request(FIXTURES, "stream-text")
    req = request(
        [Message(role="user", content="Say just hello")],
        model=rec["model"],
        max_tokens=8192,
        temperature=1.0,
        stream=True,
    )
    body = body_of(req)
    for key in ("model", "max_tokens", "temperature", "stream"):
        assert body[key] == rec[key]
    assert normalized_messages(body["messages"]) == normalized_messages(rec["messages"])
    assert "system" not in body and "tools" not in body


def test_build_matches_recorded_tool_definition() -> None:
    rec = wire.recorded_request(FIXTURES, "stream-parallel-tool-use-empty-input")
    tool = rec["tools"][0]
    req = request(
        [Message(role="user", content="Two names for a pet pelican")],
        model=rec["model"],
        max_tokens=8192,
        temperature=1.0,
        tools=[Tool(name=tool["name"], description=tool["description"], parameters=tool["input_schema"])],
    )
    body = body_of(req)
    assert body["tools"] == rec["tools"]
    assert normalized_messages(body["messages"]) == normalized_messages(rec["messages"])


def test_build_matches_recorded_tool_use_and_tool_result_turns() -> None:
    rec = wire.recorded_request(FIXTURES, "stream-text-after-tool-results")
    ids = [b["id"] for b in rec["messages"][1]["content"] if b["type"] == "tool_use"]
    messages = [
        Message(role="user", content="Two names for a pet pelican"),
        Message(
            role="assistant",
            content=" ",
            tool_calls=[ToolCall(id=i, name="pelican_name_generator", arguments="{}") for i in ids],
        ),
        Message(role="tool", tool_call_id=ids[0], content="Charles"),
        Message(role="tool", tool_call_id=ids[1], content="Sammy"),
    ]
    tools = [Tool(name=t["name"], parameters=t["input_schema"]) for t in rec["tools"]]
    body = body_of(request(messages, model=rec["model"], max_tokens=8192, tools=tools))
    assert normalized_messages(body["messages"]) == normalized_messages(rec["messages"])


@pytest.mark.parametrize("name", ["stream-vision-base64", "nonstream-vision-base64", "nonstream-vision-url"])
def test_build_matches_recorded_image_blocks(name: str) -> None:
    rec = wire.recorded_request(FIXTURES, name)
    blocks = rec["messages"][0]["content"]
    text = next(b["text"] for b in blocks if b["type"] == "text")
    source = next(b["source"] for b in blocks if b["type"] == "image")
    url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
    body = body_of(request([Message(role="user", content=text, images=[url])], model=rec["model"]))
    built = body["messages"][0]["content"]
    assert block_set(built) == block_set(blocks)
    assert built[0]["type"] == "image"  # images lead, as Anthropic advises


@pytest.mark.parametrize("name", ["stream-thinking", "nonstream-thinking-max-tokens"])
def test_build_matches_recorded_thinking_request(name: str) -> None:
    rec = wire.recorded_request(FIXTURES, name)
    messages = [Message(role="user", content=rec["messages"][0]["content"])]
    if "system" in rec:
        messages.insert(0, Message(role="system", content=rec["system"]))
    deployment = Deployment(name="c", type="anthropic", options={"thinking_budget_tokens": 1024})
    req = request(
        messages,
        model=rec["model"],
        max_tokens=rec["max_tokens"],
        top_p=rec.get("top_p"),
        stream=rec["stream"],
        reasoning=True,
    )
    body = body_of(req, deployment)
    assert body["thinking"] == rec["thinking"]
    assert body["max_tokens"] == rec["max_tokens"]
    assert body.get("system") == rec.get("system")
    assert body.get("top_p") == rec.get("top_p")
    assert body["stream"] is rec["stream"]
    assert normalized_messages(body["messages"]) == normalized_messages(rec["messages"])


def test_build_matches_recorded_system_and_sampling_request() -> None:
    rec = wire.recorded_request(FIXTURES, "error-404-model-not-found")
    req = request(
        [
            Message(role="system", content=rec["system"]),
            Message(role="user", content=rec["messages"][0]["content"]),
        ],
        model=rec["model"],
        max_tokens=100,
        temperature=0.9,
        top_p=0.8,
        stream=True,
    )
    body = body_of(req)
    for key in ("model", "max_tokens", "temperature", "top_p", "system", "stream"):
        assert body[key] == rec[key]


def test_build_matches_recorded_tool_choice_and_client_tools() -> None:
    rec = wire.recorded_request(FIXTURES, "stream-server-tool-then-tool-use-fragments")
    client_tools = [t for t in rec["tools"] if "input_schema" in t]  # the server tool has no GTL form
    tools = [Tool(name=t["name"], description=t["description"], parameters=t["input_schema"]) for t in client_tools]
    req = request(
        [Message(role="user", content=rec["messages"][0]["content"][0]["text"])],
        model=rec["model"],
        tools=tools,
        tool_choice="auto",
    )
    body = body_of(req)
    assert body["tool_choice"] == rec["tool_choice"]
    assert [(t["name"], t["description"], t["input_schema"]) for t in body["tools"]] == [
        (t["name"], t["description"], t["input_schema"]) for t in client_tools
    ]


def test_default_max_tokens_matches_recorded_sdk_default() -> None:
    rec = wire.recorded_request(FIXTURES, "error-400-invalid-request")
    body = body_of(request([Message(role="user", content="What is 2+2?")], model=rec["model"], stream=False))
    assert body["max_tokens"] == rec["max_tokens"] == DEFAULT_MAX_TOKENS
    assert normalized_messages(body["messages"]) == normalized_messages(rec["messages"])


# ----------------------------------------------------------------------------------------------
# request building


def test_url_headers_and_auth() -> None:
    http = DIALECT.build_request(request(), DEPLOYMENT, now=0.0)
    assert http.method == "POST"
    assert http.url == "https://api.anthropic.com/v1/messages"
    assert http.headers["x-api-key"] == "sk-ant-test-key"
    assert http.headers["anthropic-version"] == "2023-06-01"
    assert http.headers["content-type"] == "application/json"
    assert "anthropic-beta" not in http.headers
    assert http.stream is True
    assert "sk-ant-test-key" not in repr(DEPLOYMENT)


def test_base_url_with_or_without_v1_and_beta_and_extra_headers() -> None:
    deployment = Deployment(
        name="proxy",
        type="anthropic",
        base_url="http://127.0.0.1:9000/v1/",
        options={"anthropic_beta": ["interleaved-thinking-2025-05-14", "b2"]},
        headers={"x-extra": "1"},
    )
    http = DIALECT.build_request(request(stream=False), deployment, now=0.0)
    assert http.url == "http://127.0.0.1:9000/v1/messages"
    assert http.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14,b2"
    assert http.headers["x-extra"] == "1"
    assert "x-api-key" not in http.headers
    assert http.stream is False


def test_sampling_params_and_stop_sequences() -> None:
    body = body_of(request(temperature=1.5, top_p=0.5, stop=["END", "STOP"], max_tokens=33))
    assert body["temperature"] == 1.5  # passed through: the API validates Anthropic's 0–1 range
    assert body["top_p"] == 0.5
    assert body["stop_sequences"] == ["END", "STOP"]
    assert body["max_tokens"] == 33


def test_max_tokens_falls_back_to_deployment_option_then_default() -> None:
    assert body_of(request())["max_tokens"] == DEFAULT_MAX_TOKENS
    deployment = Deployment(name="c", type="anthropic", options={"max_tokens": 1234})
    assert body_of(request(), deployment)["max_tokens"] == 1234


def test_system_messages_are_joined_at_top_level_and_same_role_turns_merge() -> None:
    body = body_of(
        request(
            [
                Message(role="system", content="Be brief."),
                Message(role="user", content="a"),
                Message(role="user", content="b"),
                Message(role="system", content="Use French."),
                Message(role="assistant", content="c"),
            ]
        )
    )
    assert body["system"] == "Be brief.\n\nUse French."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
    ]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_mapping(choice, wire) -> None:
    body = body_of(request(tools=[Tool(name="get_weather")], tool_choice=choice))
    assert body["tool_choice"] == wire
    assert body["tools"] == [
        {"name": "get_weather", "description": "", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_tool_choice_is_not_sent_without_tools() -> None:
    assert "tool_choice" not in body_of(request(tool_choice="auto"))


def test_vision_data_and_https_urls() -> None:
    body = body_of(
        request(
            [
                Message(
                    role="user",
                    content="what?",
                    images=[
                        "data:image/png;base64,iVBORw0KGgo=",
                        "https://example.com/cat.jpg",
                    ],
                )
            ]
        )
    )
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "what?"},
    ]


def test_reasoning_enables_thinking_and_raises_max_tokens_above_the_budget() -> None:
    body = body_of(request(reasoning=True, max_tokens=500))
    budget = body["thinking"]["budget_tokens"]
    assert body["thinking"]["type"] == "enabled" and budget >= 1024
    assert body["max_tokens"] == budget + 500
    roomy = body_of(request(reasoning=True, max_tokens=20000))
    assert roomy["max_tokens"] == 20000
    assert "thinking" not in body_of(request())


def test_tool_result_round_trip_from_decoded_tool_calls() -> None:
    events, _ = decode(request(stream=True), (FIXTURES / "stream-parallel-tool-use-empty-input.sse").read_bytes())
    calls = [e.function for e in events if isinstance(e, ToolCallEvent)]
    messages = [
        Message(role="user", content="Two names for a pet pelican"),
        Message(role="assistant", tool_calls=calls),
        Message(role="tool", tool_call_id=calls[0].id, content="Charles"),
        Message(role="tool", tool_call_id=calls[1].id, content="Sammy"),
        Message(role="user", content="Which is better?"),
    ]
    body = body_of(request(messages, tools=[Tool(name="pelican_name_generator")]))
    assistant, results = body["messages"][1], body["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": c.id, "name": "pelican_name_generator", "input": {}} for c in calls],
    }
    assert results["role"] == "user" and len(body["messages"]) == 3
    assert [b["type"] for b in results["content"]] == ["tool_result", "tool_result", "text"]
    assert [b.get("tool_use_id") for b in results["content"][:2]] == [c.id for c in calls]
    assert [b["content"] for b in results["content"][:2]] == ["Charles", "Sammy"]


def test_a_foreign_tool_call_id_is_sent_in_the_apis_pattern_and_still_pairs_with_its_result() -> None:
    ids = ["functions.f:0", "functions_f_0", "functions f:0", "", "x" * 80, "toolu_01AbC-d_9"]
    messages: list[Message] = [Message(role="user", content="go")]
    messages.append(Message(role="assistant", tool_calls=[ToolCall(id=i, name="f", arguments="{}") for i in ids]))
    messages += [Message(role="tool", tool_call_id=i, content="ok") for i in ids]
    body = body_of(request(messages, tools=F))
    sent = [block["id"] for block in body["messages"][1]["content"]]
    assert [block["tool_use_id"] for block in body["messages"][2]["content"]] == sent  # still paired
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in sent)
    assert len(set(sent)) == len(ids)  # "functions.f:0" and "functions_f_0" do not collide
    assert sent[1] == "functions_f_0" and sent[-1] == "toolu_01AbC-d_9"  # an id that fits is kept
    assert sent[0].startswith("functions_f_0_") and sent[0] != sent[2]
    assert body_of(request(messages, tools=F))["messages"] == body["messages"]  # the same every time (cached)


def test_tool_results_open_their_user_message_even_after_user_text() -> None:
    body = body_of(
        request(
            [
                Message(role="assistant", tool_calls=[ToolCall(id="toolu_1", name="f", arguments='{"a": 1}')]),
                Message(role="user", content="also this"),
                Message(role="tool", tool_call_id="toolu_1", content="42", images=["https://x.org/a.png"]),
            ],
            tools=F,
        )
    )
    assert body["messages"][0]["content"][0]["input"] == {"a": 1}
    content = body["messages"][1]["content"]
    assert content[0]["type"] == "tool_result"
    assert content[0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://x.org/a.png"}},
        {"type": "text", "text": "42"},
    ]
    assert content[1] == {"type": "text", "text": "also this"}


def test_tool_call_with_non_object_arguments_is_a_request_error() -> None:
    bad = request([Message(role="assistant", tool_calls=[ToolCall(id="t", name="f", arguments="[1]")])], tools=F)
    with pytest.raises(InvalidRequestError):
        DIALECT.build_request(bad, DEPLOYMENT, now=0.0)


def test_thinking_blocks_are_kept_and_replayed_first_in_the_assistant_turn() -> None:
    raw = (FIXTURES / "stream-thinking.sse").read_text()
    signature = re.search(r'"signature_delta","signature":"([^"]+)"', raw).group(1)
    events, decoder = decode(request(stream=True, reasoning=True), raw.encode())
    blocks = decoder.provider_data["anthropic"]["content"]
    assert blocks == [
        {
            "type": "thinking",
            "thinking": wire.expected(FIXTURES, "stream-thinking")["reasoning_text"],
            "signature": signature,
        }
    ]
    answer = wire.summarize(events)["text"]
    body = body_of(
        request(
            [
                Message(role="user", content="hello"),
                Message(role="assistant", content=answer, provider_data=decoder.provider_data),
                Message(role="user", content="again"),
            ],
            reasoning=True,
        )
    )
    assert body["messages"][1]["content"] == [*blocks, {"type": "text", "text": answer}]


def test_nonstream_thinking_block_becomes_provider_data() -> None:
    body = json.loads((FIXTURES / "nonstream-thinking-max-tokens.json").read_text())
    _, decoder = decode(request(stream=False), json.dumps(body).encode())
    thinking = body["content"][0]
    assert decoder.provider_data == {
        "anthropic": {
            "content": [{"type": "thinking", "thinking": thinking["thinking"], "signature": thinking["signature"]}]
        }
    }


def test_redacted_thinking_is_kept_for_replay() -> None:
    stream = sse(
        ("message_start", {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3}}}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "redacted_thinking", "data": "EncryptedXYZ"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    events, decoder = decode(request(reasoning=True), stream)
    assert decoder.provider_data == {"anthropic": {"content": [{"type": "redacted_thinking", "data": "EncryptedXYZ"}]}}
    assert not any(isinstance(e, (Token, Reasoning)) and e.text for e in events)  # nothing of it to read
    # its end is marked where it came, with its data: a reader keeping the provider's blocks apart needs it
    marks = [e for e in events if isinstance(e, Reasoning)]
    assert marks == [Reasoning(session_id=SID, text="", redacted="EncryptedXYZ")]


# ----------------------------------------------------------------------------------------------
# decoding edge cases


def sse(*events: tuple[str, Any]) -> bytes:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def test_provider_data_is_none_without_thinking() -> None:
    _, decoder = decode(request(), (FIXTURES / "stream-text.sse").read_bytes())
    assert decoder.provider_data is None


@pytest.mark.parametrize("cut", ["event: message_stop", "event: message_delta", 'data: {"type":"content_block_delta"'])
def test_stream_that_ends_before_message_stop_is_a_retryable_error(cut: str) -> None:
    data = (FIXTURES / "stream-text.sse").read_bytes()
    truncated = data[: data.index(cut.encode())]
    events, _ = decode(request(), truncated)
    error = events[-1]
    assert isinstance(error, Error)
    assert error.code == "PROVIDER_UNAVAILABLE" and error.retryable
    assert "ended early" in error.message


def test_empty_body_is_a_retryable_error() -> None:
    events, _ = decode(request(), b"")
    assert isinstance(events[-1], Error) and events[-1].code == "PROVIDER_UNAVAILABLE"


def test_malformed_chunk_is_an_error_not_an_exception() -> None:
    data = (FIXTURES / "stream-text.sse").read_bytes().replace(b'"text_delta","text":"Hello"}', b'"text_delta",', 1)
    events, _ = decode(request(), data)
    assert isinstance(events[-1], Error)
    assert events[-1].code == "PROVIDER_UNAVAILABLE"
    assert "content_block_delta" in events[-1].message


def test_nothing_is_emitted_after_the_terminal_event() -> None:
    decoder = DIALECT.response_decoder(request(), DEPLOYMENT)
    data = (FIXTURES / "stream-text.sse").read_bytes()
    events = decoder.feed(data)
    assert isinstance(events[-1], Done)
    assert (
        decoder.feed(
            sse(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "late"},
                    },
                )
            )
        )
        == []
    )
    assert decoder.close() == []


def test_cache_tokens_count_as_input_and_cache_reads_as_cached() -> None:
    stream = sse(
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "model": "m",
                    "usage": {
                        "input_tokens": 5,
                        "cache_creation_input_tokens": 20,
                        "cache_read_input_tokens": 100,
                        "output_tokens": 1,
                    },
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        ),
        ("message_stop", {"type": "message_stop"}),
    )
    usage = wire.summarize(decode(request(), stream)[0])["usage"]
    assert usage == (125, 7, 100, None)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("refusal", "content_filter"),
        ("pause_turn", "other"),
        ("stop_sequence", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "other"),
    ],
)
def test_stop_reason_mapping(stop_reason: str, finish: str) -> None:
    message = {
        "type": "message",
        "model": "m",
        "content": [],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 1, "output_tokens": 0},
    }
    events, _ = decode(request(stream=False), json.dumps(message).encode())
    assert events[-1].finish_reason == finish
    assert not any(isinstance(e, Token) for e in events)


def test_nonstream_tool_use_becomes_a_tool_call_and_server_tools_are_skipped() -> None:
    message = {
        "type": "message",
        "model": "m",
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    }
    events, _ = decode(request(stream=False), json.dumps(message).encode())
    got = wire.summarize(events)
    assert got["text"] == "Let me check."
    assert got["tool_calls"] == [{"id": "toolu_9", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert events[-1].finish_reason == "tool_calls"


def test_streaming_decoder_accepts_a_json_body() -> None:
    body = (FIXTURES / "nonstream-vision-url.json").read_bytes()
    events, _ = decode(request(stream=True), body)
    assert wire.summarize(events)["text"] == wire.expected(FIXTURES, "nonstream-vision-url")["text"]


# ----------------------------------------------------------------------------------------------
# models and registry


def test_models_request_and_parse() -> None:
    http = DIALECT.models_request(DEPLOYMENT, now=0.0)
    assert (http.method, http.url) == ("GET", "https://api.anthropic.com/v1/models?limit=1000")
    assert http.headers["x-api-key"] == "sk-ant-test-key" and http.stream is False
    page = {
        "data": [
            {"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5"},
            {"type": "model", "id": "claude-haiku-4-5"},
        ],
        "has_more": False,
    }
    assert DIALECT.parse_models(json.dumps(page).encode()) == ["claude-sonnet-4-5", "claude-haiku-4-5"]
    assert DIALECT.parse_models(b"not json") == []


def test_dialect_is_registered_and_satisfies_the_protocol() -> None:
    from gtl_nb.providers.registry import get_provider

    provider = get_provider("anthropic")
    assert isinstance(provider, AnthropicDialect) and isinstance(provider, HttpDialect)
    assert AnthropicDialect.name == "anthropic"


def test_a_json_schema_response_format_is_anthropics_output_config_format():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    wrapped = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}
    assert body_of(request(response_format=wrapped))["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    assert "output_config" not in body_of(request(response_format={"type": "text"}))
    assert "output_config" not in body_of(request())


@pytest.mark.parametrize(
    ("response_format", "said"),
    [
        ({"type": "json_object"}, "not json_object"),
        ({"type": "json_schema", "json_schema": {"name": "out"}}, "needs json_schema.schema"),
        ({"type": "yaml"}, "unknown type 'yaml'"),
    ],
)
def test_a_response_format_anthropic_cannot_honour_is_refused(response_format, said):
    with pytest.raises(InvalidRequestError, match=re.escape(said)) as refused:
        body_of(request(response_format=response_format))
    assert "response_format" in str(refused.value)


def test_model_times_read_created_at_and_leave_out_what_is_not_a_time() -> None:
    page = {
        "data": [
            {"type": "model", "id": "claude-sonnet-4-5", "created_at": "2025-09-29T00:00:00Z"},
            {"type": "model", "id": "offset", "created_at": "2025-09-29T02:00:00+02:00"},
            {"type": "model", "id": "no-zone", "created_at": "2025-09-29T00:00:00"},
            {"type": "model", "id": "garbled", "created_at": "last tuesday"},
            {"type": "model", "id": "a-number", "created_at": 1759104000},
            {"type": "model", "id": "absent"},
        ]
    }
    assert DIALECT.model_times(json.dumps(page).encode()) == {"claude-sonnet-4-5": 1759104000, "offset": 1759104000}
    assert DIALECT.model_times(b"not json") == {}


# ----------------------------------------------------------------------------------------------
# token counting (``count_request`` / ``parse_count``)


def test_a_count_is_asked_of_the_counting_endpoint_with_the_prompt_a_completion_sends() -> None:
    asked = request(
        [Message(role="system", content="Be brief."), Message(role="user", content="What is the weather in Oslo?")],
        tools=[Tool(name="get_weather", parameters={"type": "object"})],
        tool_choice="required",
        temperature=0.3,
        top_p=0.9,
        stop=["END"],
        max_tokens=50,
        reasoning=True,
        reasoning_budget=2048,
        stream=True,
    )
    described = DIALECT.count_request(asked, DEPLOYMENT, now=0.0)
    sent = json.loads(described.body)
    assert described.method == "POST" and described.url == "https://api.anthropic.com/v1/messages/count_tokens"
    assert described.headers["x-api-key"] == DEPLOYMENT.api_key and not described.stream
    whole = body_of(asked)
    # the prompt as a completion sends it; nothing the counting endpoint refuses as an extra input
    assert sent == {key: value for key, value in whole.items() if key not in COUNT_DROPS}
    assert {"system", "tools", "tool_choice", "thinking", "messages", "model"} <= set(sent)
    assert not {"max_tokens", "stream", "temperature", "top_p", "stop_sequences"} & set(sent)


def test_a_count_takes_stop_sequences_the_completion_would_refuse() -> None:
    """A stop sequence is not part of the prompt: one the Messages API refuses does not stop a count."""
    sent = json.loads(DIALECT.count_request(request(stop=[" "]), DEPLOYMENT, now=0.0).body)
    assert "stop_sequences" not in sent and sent["messages"][0]["role"] == "user"


@pytest.mark.parametrize("body", [b'{"input_tokens": 0}', b'{"input_tokens": 1234, "context_management": null}'])
def test_a_count_is_read_from_input_tokens(body: bytes) -> None:
    assert DIALECT.parse_count(body) == json.loads(body)["input_tokens"]


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b"{}", b'{"input_tokens": "12"}', b'{"input_tokens": -1}', b'{"input_tokens": true}'],
)
def test_an_answer_without_a_count_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        DIALECT.parse_count(body)
