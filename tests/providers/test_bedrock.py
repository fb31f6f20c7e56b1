"""The Bedrock Converse / ConverseStream dialect against the recorded fixtures and the documented API."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import wire

from gtl_nb.protocol.errors import ConfigurationError, InvalidRequestError
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
from gtl_nb.providers.bedrock import DEFAULT_BASE_URL, BedrockDialect

FIXTURES = wire.fixture_dir("bedrock")
DIALECT = BedrockDialect()
NOW = 1_700_000_000.0
AWS = Deployment(name="bedrock-east", type="bedrock", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
# wire-formats.md §7 stop-reason normalisation, written out independently of the adapter.
GTL_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
NOVA = "us.amazon.nova-micro-v1:0"


_request = wire.request_maker(session_id="s1", model=NOVA)


def _body(request: CompletionRequest, deployment: Deployment = AWS) -> dict[str, Any]:
    return json.loads(DIALECT.build_request(request, deployment, now=NOW).body)


SPLITS = {"whole": wire.whole, "bytes": wire.byte_by_byte, "random": wire.random_splitter(25)}


def _decoder(request: CompletionRequest):
    return DIALECT.response_decoder(request, AWS)


def _decode(request: CompletionRequest, data: bytes, mode: str = "whole") -> list[Any]:
    return wire.feed_all(_decoder(request), SPLITS[mode](data))


# -- hand-built frames (independent of the adapter's decoder) ------------------------------------


def _frame(headers: dict[str, str], payload: Any) -> bytes:
    block = b""
    for name, value in headers.items():
        raw = value.encode()
        block += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
    total = 12 + len(block) + len(data) + 4
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + block + data
    return message + struct.pack(">I", zlib.crc32(message))


def _event(event_type: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return _frame(headers, {**payload, "p": "abcdef"})


def _exception(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return _frame(headers, {"message": message})


END = _event("messageStop", {"stopReason": "end_turn"}) + _event(
    "metadata",
    {"usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7}, "metrics": {"latencyMs": 1}},
)


# ----------------------------------------------------------------------------------------------
# Fixtures: responses


@pytest.mark.parametrize(
    "fixture",
    [
        "converse-stream-text.eventstream",
        "converse-stream-tool-use.eventstream",
        "converse-stream-text-after-tool-result.eventstream",
        "converse-nonstream-text.json",
        "converse-nonstream-tool-use.json",
    ],
)
@pytest.mark.parametrize("mode", ["whole", "bytes", "random"])
def test_fixture_decodes_to_the_expected_answer(fixture: str, mode: str) -> None:
    expected = wire.expected(FIXTURES, Path(fixture).stem)
    stream = fixture.endswith(".eventstream")
    events = _decode(_request(stream=stream), (FIXTURES / fixture).read_bytes(), mode)
    wire.check_sequence(events, "s1")
    finish = GTL_FINISH[expected["finish_reason"]]
    wire.assert_matches_expected(events, expected, finish_reason=finish, provider="bedrock-east", reasoning=False)
    assert events[-1].model == NOVA
    if not stream and expected["text"]:
        assert sum(isinstance(e, Token) for e in events) == 1


@pytest.mark.parametrize("mode", ["whole", "bytes", "random"])
def test_exception_frame_in_a_200_stream_is_an_error(mode: str) -> None:
    expected = wire.expected(FIXTURES, "converse-stream-exception-in-stream")["error"]
    data = (FIXTURES / "converse-stream-exception-in-stream.eventstream").read_bytes()
    events = _decode(_request(), data, mode)
    wire.check_sequence(events, "s1")
    assert len(events) == 1
    error = events[0]
    wire.assert_error_as_expected(error, expected)
    assert expected["provider_type"] in error.message


@pytest.mark.parametrize("fixture", ["error-400-invalid-model-stream", "error-503-throttled-invoke"])
def test_error_fixture_maps_to_the_suggested_code(fixture: str) -> None:
    expected = wire.expected(FIXTURES, fixture)["error"]
    body = (FIXTURES / f"{fixture}.json").read_bytes()
    error = DIALECT.decode_error(_request(), AWS, expected["http_status"], {"content-type": "application/json"}, body)
    wire.assert_error_as_expected(error, expected)
    assert (error.http_status, error.provider) == (expected["http_status"], "bedrock-east")


# ----------------------------------------------------------------------------------------------
# Fixtures: requests


def _messages_from_recording(recorded: list[dict[str, Any]]) -> list[Message]:
    """The GTL history a caller would have had for a recorded Converse ``messages`` list."""
    out: list[Message] = []
    for message in recorded:
        texts = [b["text"] for b in message["content"] if "text" in b]
        images = [
            f"data:image/{b['image']['format']};base64,{b['image']['source']['bytes']}"
            for b in message["content"]
            if "image" in b
        ]
        calls = [
            ToolCall(
                id=b["toolUse"]["toolUseId"],
                name=b["toolUse"]["name"],
                arguments=json.dumps(b["toolUse"]["input"]),
            )
            for b in message["content"]
            if "toolUse" in b
        ]
        for block in message["content"]:
            if "toolResult" in block:
                result = block["toolResult"]
                out.append(Message(role="tool", tool_call_id=result["toolUseId"], content=result["content"][0]["text"]))
        if texts or images or calls:
            out.append(Message(role=message["role"], content="".join(texts) or None, images=images, tool_calls=calls))
    return out


@pytest.mark.parametrize(
    "fixture",
    [
        "converse-nonstream-text",
        "converse-nonstream-tool-use",
        "converse-stream-text",
        "converse-stream-tool-use",
        "converse-stream-text-after-tool-result",
        "converse-stream-exception-in-stream",
        "error-400-invalid-model-stream",
    ],
)
def test_build_request_matches_the_recorded_request(fixture: str) -> None:
    recorded = wire.recorded_request(FIXTURES, fixture)
    inference = recorded.get("inferenceConfig", {})
    tools = [
        Tool(
            name=t["toolSpec"]["name"],
            description=t["toolSpec"].get("description", ""),
            parameters=t["toolSpec"]["inputSchema"]["json"],
        )
        for t in recorded.get("toolConfig", {}).get("tools", [])
    ]
    choice = recorded.get("toolConfig", {}).get("toolChoice")
    request = _request(
        messages=[Message(role="system", content=s["text"]) for s in recorded.get("system", [])]
        + _messages_from_recording(recorded["messages"]),
        stream="stream" in fixture,
        max_tokens=inference.get("maxTokens"),
        temperature=inference.get("temperature"),
        top_p=inference.get("topP"),
        tools=tools or None,
        tool_choice="required" if choice == {"any": {}} else None,
    )
    body = _body(request)
    assert body["messages"] == recorded["messages"]
    assert body.get("system", []) == recorded.get("system", [])
    assert body["inferenceConfig"] == inference
    assert body.get("toolConfig") == recorded.get("toolConfig")


# ----------------------------------------------------------------------------------------------
# Request building: URL, auth


@pytest.mark.parametrize(
    ("model", "segment"),
    [
        ("us.amazon.nova-micro-v1:0", "us.amazon.nova-micro-v1%3A0"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0",
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-sonnet-4-20250514-v1%3A0",
        ),
    ],
)
def test_model_id_is_percent_encoded_in_the_path(model: str, segment: str) -> None:
    stream = DIALECT.build_request(_request(model=model), AWS, now=NOW)
    assert stream.url == f"https://bedrock-runtime.us-east-1.amazonaws.com/model/{segment}/converse-stream"
    assert stream.stream is True
    plain = DIALECT.build_request(_request(model=model, stream=False), AWS, now=NOW)
    assert plain.url.endswith(f"/model/{segment}/converse")
    assert plain.stream is False


def test_region_and_base_url_choose_the_host() -> None:
    assert DEFAULT_BASE_URL.format(region="x") == "https://bedrock-runtime.x.amazonaws.com"
    west = Deployment(name="w", type="bedrock", region="eu-west-3", api_key="k")
    assert DIALECT.build_request(_request(), west, now=NOW).url.startswith("https://bedrock-runtime.eu-west-3.")
    local = Deployment(name="l", type="bedrock", base_url="http://127.0.0.1:9/", api_key="k")
    assert DIALECT.build_request(_request(), local, now=NOW).url == (
        "http://127.0.0.1:9/model/us.amazon.nova-micro-v1%3A0/converse-stream"
    )


def test_sigv4_headers_are_signed_at_the_given_time() -> None:
    temp = Deployment(
        name="t", type="bedrock", aws_access_key_id="AKID", aws_secret_access_key="s", aws_session_token="tok"
    )
    headers = DIALECT.build_request(_request(), temp, now=NOW).headers
    assert headers["X-Amz-Date"] == "20231114T221320Z"
    assert headers["X-Amz-Security-Token"] == "tok"
    assert headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKID/20231114/us-east-1/bedrock/aws4_request, SignedHeaders="
    )
    assert "x-amz-security-token" in headers["Authorization"]
    assert headers["Accept"] == "application/vnd.amazon.eventstream"


def test_api_key_is_sent_as_bearer_without_signing() -> None:
    keyed = Deployment(name="k", type="bedrock", api_key="ABSK-example")
    headers = DIALECT.build_request(_request(), keyed, now=NOW).headers
    assert headers["Authorization"] == "Bearer ABSK-example"
    assert "X-Amz-Date" not in headers


def test_missing_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="aws_access_key_id"):
        DIALECT.build_request(_request(), Deployment(name="n", type="bedrock"), now=NOW)


# ----------------------------------------------------------------------------------------------
# Request building: body


def test_sampling_parameters_and_stop_go_into_inference_config() -> None:
    body = _body(_request(max_tokens=100, temperature=0.3, top_p=0.8, stop=["###"]))
    assert body["inferenceConfig"] == {
        "maxTokens": 100,
        "temperature": 0.3,
        "topP": 0.8,
        "stopSequences": ["###"],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "b"}}, {"tool": {"name": "b"}}),
        (None, None),
    ],
)
def test_tool_choice_maps_to_converse_tool_choice(choice: Any, expected: Any) -> None:
    tools = [Tool(name="a", description="A"), Tool(name="b")]
    config = _body(_request(tools=tools, tool_choice=choice))["toolConfig"]
    assert config.get("toolChoice") == expected
    assert config["tools"][0] == {
        "toolSpec": {
            "name": "a",
            "description": "A",
            "inputSchema": {"json": {"type": "object", "properties": {}}},
        }
    }
    assert "description" not in config["tools"][1]["toolSpec"]


def test_tool_choice_none_leaves_tools_out_and_a_tool_history_goes_as_text() -> None:
    """Converse has no "none" and refuses tool blocks without a ``toolConfig``: the tools stay out, so the
    model can call none, and the history's calls and results are written as text it reads."""
    tools = [Tool(name="a")]
    assert "toolConfig" not in _body(_request(tools=tools, tool_choice="none"))
    history = [
        Message(role="user", content="q"),
        Message(role="assistant", tool_calls=[ToolCall(id="t1", name="a", arguments='{"x": 1}')]),
        Message(role="tool", tool_call_id="t1", content="r"),
    ]
    for request in (_request(messages=history, tools=tools, tool_choice="none"), _request(messages=history)):
        body = _body(request)
        assert "toolConfig" not in body
        assert body["messages"] == [
            {"role": "user", "content": [{"text": "q"}]},
            {"role": "assistant", "content": [{"text": '[tool call t1: a {"x": 1}]'}]},
            {"role": "user", "content": [{"text": "[tool result for t1 (a)]\nr"}]},
        ]
    offered = _body(_request(messages=history, tools=tools))
    assert offered["toolConfig"]["tools"][0]["toolSpec"]["name"] == "a"
    assert offered["messages"][1]["content"] == [{"toolUse": {"toolUseId": "t1", "name": "a", "input": {"x": 1}}}]


def test_data_url_image_becomes_an_image_block() -> None:
    message = Message(role="user", content="Look", images=["data:image/jpeg;base64,/9j/4AAQ"])
    content = _body(_request(messages=[message]))["messages"][0]["content"]
    assert content == [{"text": "Look"}, {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}}]


def test_https_image_is_refused_with_a_clear_error() -> None:
    message = Message(role="user", content="Look", images=["https://example.com/a.png"])
    with pytest.raises(InvalidRequestError, match="data: URL"):
        DIALECT.build_request(_request(messages=[message]), AWS, now=NOW)


def test_unsupported_image_type_is_refused() -> None:
    message = Message(role="user", content="Look", images=["data:image/tiff;base64,AAAA"])
    with pytest.raises(InvalidRequestError, match="tiff"):
        DIALECT.build_request(_request(messages=[message]), AWS, now=NOW)


def test_tool_call_round_trip_puts_results_in_one_user_message() -> None:
    data = (
        _event("messageStart", {"role": "assistant"})
        + _event(
            "contentBlockStart",
            {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tu_1", "name": "f"}}},
        )
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"x":'}}})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": " 1}"}}})
        + _event("contentBlockStop", {"contentBlockIndex": 0})
        + _event(
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu_2", "name": "g"}}},
        )
        + _event("contentBlockStop", {"contentBlockIndex": 1})
        + _event("messageStop", {"stopReason": "tool_use"})
        + _event("metadata", {"usage": {"inputTokens": 9, "outputTokens": 4}})
    )
    events = _decode(_request(tools=[Tool(name="f"), Tool(name="g")]), data, "bytes")
    calls = [e.function for e in events if isinstance(e, ToolCallEvent)]
    assert calls == [
        ToolCall(id="tu_1", name="f", arguments='{"x": 1}'),
        ToolCall(id="tu_2", name="g", arguments="{}"),
    ]
    assert events[-1].finish_reason == "tool_calls"

    history = [
        Message(role="user", content="Do both"),
        Message(role="assistant", tool_calls=calls),
        Message(role="tool", tool_call_id="tu_1", content="one"),
        Message(role="tool", tool_call_id="tu_2", content="two"),
        Message(role="user", content="Thanks"),
    ]
    body = _body(_request(messages=history, tools=[Tool(name="f"), Tool(name="g")]))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": "tu_1", "name": "f", "input": {"x": 1}}},
        {"toolUse": {"toolUseId": "tu_2", "name": "g", "input": {}}},
    ]
    assert body["messages"][2]["content"] == [
        {"toolResult": {"toolUseId": "tu_1", "content": [{"text": "one"}], "status": "success"}},
        {"toolResult": {"toolUseId": "tu_2", "content": [{"text": "two"}], "status": "success"}},
        {"text": "Thanks"},
    ]


def test_a_foreign_tool_call_id_is_sent_in_the_services_pattern_and_still_pairs_with_its_result() -> None:
    ids = ["functions.f:0", "functions_f_0", "y" * 65, "tooluse_Ab-9"]
    history = [
        Message(role="user", content="Do it"),
        Message(role="assistant", tool_calls=[ToolCall(id=i, name="f", arguments="{}") for i in ids]),
        *[Message(role="tool", tool_call_id=i, content="ok") for i in ids],
    ]
    body = _body(_request(messages=history, tools=[Tool(name="f")]))
    sent = [block["toolUse"]["toolUseId"] for block in body["messages"][1]["content"]]
    assert [block["toolResult"]["toolUseId"] for block in body["messages"][2]["content"]] == sent
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in sent) and len(set(sent)) == len(ids)
    assert sent[1:4:2] == ["functions_f_0", "tooluse_Ab-9"]  # ids that fit are kept


def test_reasoning_on_anthropic_models_asks_for_thinking() -> None:
    claude = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
    body = _body(_request(model=claude, reasoning=True, max_tokens=4000))
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert body["inferenceConfig"]["maxTokens"] == 4000
    small = _body(_request(model=claude, reasoning=True))
    assert small["inferenceConfig"]["maxTokens"] > 1024
    budget = Deployment(name="b", type="bedrock", api_key="k", options={"thinking_budget_tokens": 2048})
    assert (
        _body(_request(model=claude, reasoning=True), budget)["additionalModelRequestFields"]["thinking"][
            "budget_tokens"
        ]
        == 2048
    )
    assert "additionalModelRequestFields" not in _body(_request(reasoning=True))  # Nova: nothing to ask


# ----------------------------------------------------------------------------------------------
# Decoding


def _reasoning_stream() -> bytes:
    return (
        _event("messageStart", {"role": "assistant"})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Think "}}})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hard."}}})
        + _event(
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "SIG=="}}},
        )
        + _event("contentBlockStop", {"contentBlockIndex": 0})
        + _event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Answer."}})
        + _event("contentBlockStop", {"contentBlockIndex": 1})
        + END
    )


@pytest.mark.parametrize("asked", [True, False])
def test_reasoning_content_is_reasoning_only_when_asked(asked: bool) -> None:
    summary = wire.summarize(_decode(_request(reasoning=asked), _reasoning_stream(), "bytes"))
    assert summary["text"] == "Answer."
    assert summary["reasoning_text"] == ("Think hard." if asked else "")


def test_a_reasoning_blocks_end_is_marked_where_the_stream_ends_it() -> None:
    """Each reasoning block ends, where ``contentBlockStop`` ends it, with a ``reasoning`` event of its
    signature (a redacted block: of its data), before the answer's text; nothing when not asked."""
    redacted = (
        _event("messageStart", {"role": "assistant"})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"redactedContent": "R"}}})
        + _event("contentBlockStop", {"contentBlockIndex": 0})
        + _event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Answer."}})
        + _event("contentBlockStop", {"contentBlockIndex": 1})
        + END
    )
    for stream, mark in ((_reasoning_stream(), {"signature": "SIG=="}), (redacted, {"redacted": "R"})):
        events = _decode(_request(reasoning=True), stream, "bytes")
        thoughts = [event for event in events if isinstance(event, Reasoning)]
        assert thoughts[-1] == Reasoning(session_id=thoughts[-1].session_id, text="", **mark)
        assert events.index(thoughts[-1]) < next(i for i, event in enumerate(events) if isinstance(event, Token))
        assert not any(isinstance(event, Reasoning) for event in _decode(_request(reasoning=False), stream, "bytes"))


def test_reasoning_signature_is_kept_as_provider_data_and_replayed() -> None:
    decoder = _decoder(_request(reasoning=True))
    decoder.feed(_reasoning_stream())
    assert isinstance(decoder.close()[-1], Done)
    data = decoder.provider_data
    assert data == {"bedrock_reasoning": [{"reasoningText": {"text": "Think hard.", "signature": "SIG=="}}]}

    history = [
        Message(role="user", content="q"),
        Message(role="assistant", content="Answer.", provider_data=data),
        Message(role="user", content="more"),
    ]
    content = _body(_request(messages=history))["messages"][1]["content"]
    assert content == [
        {"reasoningContent": {"reasoningText": {"text": "Think hard.", "signature": "SIG=="}}},
        {"text": "Answer."},
    ]


def test_nonstream_reasoning_block_is_reasoning_and_provider_data() -> None:
    body = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "S"}}},
                    {"text": "Yes."},
                ],
            }
        },
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": 3,
            "outputTokens": 4,
            "cacheReadInputTokens": 10,
            "cacheWriteInputTokens": 2,
        },
    }
    decoder = _decoder(_request(stream=False, reasoning=True))
    events = decoder.feed(json.dumps(body).encode()) + decoder.close()
    assert [type(e) for e in events] == [Reasoning, Token, Usage, Done]
    assert (events[2].tokens_in, events[2].tokens_out, events[2].cached_tokens_in) == (15, 4, 10)
    assert decoder.provider_data == {"bedrock_reasoning": [{"reasoningText": {"text": "Hmm.", "signature": "S"}}]}


def test_stream_usage_counts_cache_tokens_in_input() -> None:
    data = (
        _event("messageStart", {"role": "assistant"})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}})
        + _event("messageStop", {"stopReason": "max_tokens"})
        + _event("metadata", {"usage": {"inputTokens": 10, "outputTokens": 1, "cacheReadInputTokens": 100}})
    )
    events = _decode(_request(), data)
    assert (events[-2].tokens_in, events[-2].cached_tokens_in) == (110, 100)
    assert events[-1].finish_reason == "length"


@pytest.mark.parametrize(
    ("exception", "code", "retryable"),
    [
        ("throttlingException", "RATE_LIMIT", True),
        ("serviceUnavailableException", "OVERLOADED", True),
        ("internalServerException", "INTERNAL", True),
        ("modelStreamErrorException", "PROVIDER_UNAVAILABLE", True),
        ("validationException", "INVALID_REQUEST", False),
    ],
)
def test_exception_frames_map_to_gtl_codes(exception: str, code: str, retryable: bool) -> None:
    data = (
        _event("messageStart", {"role": "assistant"})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}})
        + _exception(exception, "Something went wrong.")
        + END
    )
    events = _decode(_request(), data, "random")
    assert [type(e) for e in events] == [Token, Error]
    assert (events[-1].code, events[-1].retryable) == (code, retryable)
    assert "Something went wrong." in events[-1].message


@pytest.mark.parametrize(
    "data",
    [
        _event("messageStart", {"role": "assistant"})
        + _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
        _event("messageStart", {"role": "assistant"}) + _event("messageStop", {"stopReason": "end_turn"}),
        _event("messageStart", {"role": "assistant"}) + END[:-7],
        b"",
    ],
    ids=["no-message-stop", "no-metadata", "truncated-frame", "empty"],
)
def test_stream_that_ends_early_is_a_retryable_error(data: bytes) -> None:
    events = _decode(_request(), data)
    error = events[-1]
    assert isinstance(error, Error)
    assert (error.code, error.retryable) == ("PROVIDER_UNAVAILABLE", True)
    assert "ended early" in error.message


def test_corrupt_frame_is_an_error_not_an_exception() -> None:
    data = bytearray(_event("messageStart", {"role": "assistant"}) + END)
    data[30] ^= 0xFF
    events = _decode(_request(), bytes(data))
    assert [type(e) for e in events] == [Error]
    assert "CRC" in events[0].message


def test_frames_before_a_corrupt_one_in_the_same_chunk_still_count() -> None:
    bad = bytearray(_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lost?"}}))
    bad[-1] ^= 0xFF  # message CRC
    good = _event("messageStart", {"role": "assistant"}) + _event(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "kept"}}
    )
    events = _decode(_request(), good + bytes(bad) + END)
    assert [type(e) for e in events] == [Token, Error]
    assert events[0].text == "kept"
    assert "message CRC" in events[1].message


def test_malformed_event_payload_is_an_error() -> None:
    data = _frame({":event-type": "contentBlockDelta", ":message-type": "event"}, b"{not json") + END
    events = _decode(_request(), data)
    assert [type(e) for e in events] == [Error]
    assert "malformed" in events[0].message


def test_malformed_nonstream_body_is_an_error() -> None:
    events = _decode(_request(stream=False), b"<html>oops</html>")
    assert [type(e) for e in events] == [Error]


# ----------------------------------------------------------------------------------------------
# Errors before streaming, model listing


@pytest.mark.parametrize(
    ("status", "error_type", "message", "code", "retryable"),
    [
        (
            400,
            "ValidationException",
            "Input is too long for requested model.",
            "CONTEXT_LENGTH_EXCEEDED",
            False,
        ),
        (400, "ValidationException", "The provided model identifier is invalid.", "MODEL_NOT_FOUND", False),
        (400, "ValidationException", "messages: field required", "INVALID_REQUEST", False),
        (403, "AccessDeniedException", "You don't have access to the model", "FORBIDDEN", False),
        (
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            "AUTH_FAILED",
            False,
        ),
        (
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match",
            "AUTH_FAILED",
            False,
        ),
        (404, "ResourceNotFoundException", "Model not found.", "MODEL_NOT_FOUND", False),
        (
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
            "RATE_LIMIT",
            True,
        ),
        (408, "ModelTimeoutException", "Model has timed out in processing the request.", "TIMEOUT", True),
        (503, "ServiceUnavailableException", "Service unavailable.", "OVERLOADED", True),
        (500, "InternalServerException", "Internal error.", "INTERNAL", True),
        (424, "ModelErrorException", "The model failed.", "PROVIDER_UNAVAILABLE", True),
    ],
)
def test_decode_error_reads_the_error_type_header(
    status: int, error_type: str, message: str, code: str, retryable: bool
) -> None:
    headers = {"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    key = "Message" if status == 403 else "message"
    error = DIALECT.decode_error(_request(), AWS, status, headers, json.dumps({key: message}).encode())
    assert (error.code, error.retryable, error.http_status) == (code, retryable, status)
    assert message in error.message and error_type in error.message


def test_models_request_is_a_signed_control_plane_get() -> None:
    http = DIALECT.models_request(AWS, now=NOW)
    assert (http.method, http.url) == ("GET", "https://bedrock.us-east-1.amazonaws.com/foundation-models")
    assert http.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/"
    )


def test_model_listing_never_leaves_a_base_url_off_aws_for_public_aws() -> None:
    """A deployment configured as the simulator table says (a ``base_url``, no ``control_plane_url``) had
    its listing signed with its keys and sent to ``bedrock.us-east-1.amazonaws.com``. A runtime endpoint
    off AWS (a simulator, a proxy) is where the listing is asked; an AWS runtime host's control plane is
    its ``bedrock`` sibling; ``control_plane_url`` still decides when set."""

    def listing_url(**settings: Any) -> str:
        return DIALECT.models_request(dataclasses.replace(AWS, **settings), now=NOW).url

    assert listing_url(base_url="http://127.0.0.1:8123") == "http://127.0.0.1:8123/foundation-models"
    assert listing_url(base_url="https://llm-proxy.corp.example/bedrock/") == (
        "https://llm-proxy.corp.example/bedrock/foundation-models"
    )
    assert listing_url(base_url="https://bedrock-runtime-fips.us-west-2.amazonaws.com") == (
        "https://bedrock-fips.us-west-2.amazonaws.com/foundation-models"
    )
    assert listing_url(base_url="https://bedrock-runtime.cn-north-1.amazonaws.com.cn") == (
        "https://bedrock.cn-north-1.amazonaws.com.cn/foundation-models"
    )
    vpc = "https://vpce-0a1.bedrock-runtime.eu-west-1.vpce.amazonaws.com"  # not the control plane's VPC endpoint
    assert listing_url(base_url=vpc, region="eu-west-1") == "https://bedrock.eu-west-1.amazonaws.com/foundation-models"
    assert listing_url(base_url="http://127.0.0.1:8123", options={"control_plane_url": "http://127.0.0.1:9/cp/"}) == (
        "http://127.0.0.1:9/cp/foundation-models"
    )


def test_parse_models_reads_model_summaries() -> None:
    body = {
        "modelSummaries": [
            {"modelArn": "arn:…", "modelId": "amazon.nova-micro-v1:0", "providerName": "Amazon"},
            {
                "modelArn": "arn:…",
                "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
                "providerName": "Anthropic",
            },
        ]
    }
    assert DIALECT.parse_models(json.dumps(body).encode()) == [
        "amazon.nova-micro-v1:0",
        "anthropic.claude-3-haiku-20240307-v1:0",
    ]


def test_tool_result_status_is_sent_only_to_models_that_accept_it() -> None:
    history = [
        Message(role="user", content="q"),
        Message(role="assistant", tool_calls=[ToolCall(id="t1", name="a")]),
        Message(role="tool", tool_call_id="t1", content="r"),
    ]
    for model, has_status in [
        (NOVA, True),
        ("anthropic.claude-3-haiku-20240307-v1:0", True),
        ("meta.llama3-1-8b-instruct-v1:0", False),
    ]:
        result = _body(_request(model=model, messages=history, tools=[Tool(name="a")]))["messages"][2]["content"][0]
        assert ("status" in result["toolResult"]) is has_status


def test_a_json_schema_response_format_is_converses_output_config_text_format():
    # the shape botocore's bedrock-runtime model gives OutputConfig: the schema travels as JSON text
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    wrapped = {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}
    config = _body(_request(response_format=wrapped))["outputConfig"]
    definition = config["textFormat"]["structure"]["jsonSchema"]
    assert config["textFormat"]["type"] == "json_schema" and definition["name"] == "out"
    assert json.loads(definition["schema"]) == schema
    assert "outputConfig" not in _body(_request(response_format={"type": "text"}))


def test_json_without_a_schema_is_not_served_by_converse():
    from gtl_nb.providers.base import NotServedHere

    with pytest.raises(NotServedHere, match="response_format") as refused:
        _body(_request(response_format={"type": "json_object"}))
    assert isinstance(refused.value, InvalidRequestError)  # the caller's 400 when no deployment can
