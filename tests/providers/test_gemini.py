"""The Gemini Developer API dialect, tested from recorded traffic (tests/fixtures/wire/gemini)."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest
import wire

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Reasoning,
    StreamEvent,
    Token,
    Tool,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import Deployment, HttpDialect
from gtl_nb.providers.gemini import SKIP_SIGNATURE, GeminiDialect, checks_signatures

FIXTURES = wire.fixture_dir("gemini")
SID = "sess-gemini"
DIALECT = GeminiDialect()
DEPLOYMENT = Deployment(name="gemini-main", type="gemini", api_key="AIza-test-key")

SSE_FIXTURES = [
    "stream-sse-text",
    "stream-sse-function-call",
    "stream-sse-text-after-function-responses",
    "stream-sse-function-call-thought-signature",
    "stream-sse-usage-growing",
]
ARRAY_FIXTURES = [
    "stream-json-array-thinking",
    "stream-json-array-function-call",
    "stream-json-array-after-function-response",
]
NONSTREAM_FIXTURES = ["nonstream-function-call", "nonstream-vision-inline"]


# ----------------------------------------------------------------------------------------------
# helpers


request = wire.request_maker(session_id=SID, model="gemini-2.5-flash")


def body_of(req: CompletionRequest, deployment: Deployment = DEPLOYMENT) -> dict[str, Any]:
    return json.loads(DIALECT.build_request(req, deployment, now=0.0).body)


SPLITS = wire.named_splitters(7, 99)


decode = wire.checked_decoding(DIALECT, DEPLOYMENT, session_id=SID)


def gtl_finish(raw: str, has_calls: bool) -> str:
    """wire-formats.md §7, read independently of the adapter."""
    if raw == "STOP":
        return "tool_calls" if has_calls else "stop"
    return {"MAX_TOKENS": "length", "SAFETY": "content_filter"}.get(raw, "other")


def assert_matches_expected(events: list[StreamEvent], exp: dict[str, Any]) -> None:
    """Against the recording, with the finish reason of :func:`gtl_finish` (Gemini sends no call ids: the
    shared check holds the decoder's made-up ones to being present and distinct)."""
    finish = gtl_finish(exp["finish_reason"], bool(exp["tool_calls"]))
    wire.assert_matches_expected(events, exp, finish_reason=finish, provider="gemini-main")


def camel(value: Any) -> Any:
    """Proto-JSON accepts snake_case too; compare recorded requests in camelCase."""
    if isinstance(value, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def lower_types(schema: Any) -> Any:
    """OpenAPI-style ``"type": "OBJECT"`` → JSON Schema ``"object"``."""
    if isinstance(schema, dict):
        return {k: (v.lower() if k == "type" and isinstance(v, str) else lower_types(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [lower_types(v) for v in schema]
    return schema


def tools_from(rec: dict[str, Any]) -> list[Tool]:
    tools = rec["tools"]
    declarations = camel(tools if isinstance(tools, list) else [tools])[0]["functionDeclarations"]
    return [
        Tool(
            name=d["name"],
            description=d.get("description") or "",
            parameters=lower_types(d.get("parametersJsonSchema") or d["parameters"]),
        )
        for d in declarations
    ]


# ----------------------------------------------------------------------------------------------
# fixtures: responses


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("name", SSE_FIXTURES)
def test_sse_fixture_decodes_to_expected_events_at_any_split(name: str, split) -> None:
    data = (FIXTURES / f"{name}.sse").read_bytes()
    events, _ = decode(request(stream=True, reasoning=True), data, split)
    assert_matches_expected(events, wire.expected(FIXTURES, name))


@pytest.mark.parametrize("stream", [False, True], ids=["nonstream-decoder", "stream-decoder"])
@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("name", ARRAY_FIXTURES)
def test_streamed_json_array_fixture_decodes_to_expected_events(name: str, split, stream: bool) -> None:
    data = (FIXTURES / f"{name}.json").read_bytes()
    events, _ = decode(request(stream=stream, reasoning=True), data, split)
    assert_matches_expected(events, wire.expected(FIXTURES, name))


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("name", NONSTREAM_FIXTURES)
def test_nonstream_fixture_decodes_to_expected_events(name: str, split) -> None:
    data = (FIXTURES / f"{name}.json").read_bytes()
    events, _ = decode(request(stream=False, reasoning=True), data, split)
    assert_matches_expected(events, wire.expected(FIXTURES, name))
    assert len([e for e in events if isinstance(e, Token)]) <= 1


def test_nonstream_decoder_emits_whole_text_and_reasoning_once() -> None:
    data = (FIXTURES / "stream-json-array-thinking.json").read_bytes()
    events, _ = decode(request(stream=False, reasoning=True), data)
    assert [type(e) for e in events] == [Reasoning, Token, Usage, Done]


def test_done_reports_the_model_version() -> None:
    events, _ = decode(request(stream=True), (FIXTURES / "stream-sse-text.sse").read_bytes())
    assert events[-1].model == "gemini-2.0-flash-exp"


def test_thought_parts_are_hidden_unless_reasoning_was_asked_and_never_tokens() -> None:
    data = (FIXTURES / "stream-json-array-thinking.json").read_bytes()
    events, _ = decode(request(stream=True, reasoning=False), data)
    assert not any(isinstance(e, Reasoning) for e in events)
    assert wire.summarize(events)["text"] == "Scoop"


def test_synthesized_call_ids_are_deterministic() -> None:
    data = (FIXTURES / "stream-sse-function-call.sse").read_bytes()
    first = wire.summarize(decode(request(), data)[0])["tool_calls"]
    second = wire.summarize(decode(request(), data, wire.byte_by_byte)[0])["tool_calls"]
    assert first == second and first[0]["id"].startswith("call_")


# ----------------------------------------------------------------------------------------------
# fixtures: errors and models


@pytest.mark.parametrize(
    "name",
    [
        "error-400-api-key-invalid",
        "error-404-model-not-found",
        "error-429-resource-exhausted",
        "error-503-overloaded",
    ],
)
def test_error_fixture_maps_to_the_expected_gtl_code(name: str) -> None:
    exp = wire.expected(FIXTURES, name)["error"]
    body = (FIXTURES / f"{name}.json").read_bytes()
    error = DIALECT.decode_error(request(), DEPLOYMENT, exp["http_status"], {}, body)
    wire.assert_error_as_expected(error, exp)
    assert error.http_status == exp["http_status"]
    assert error.provider == "gemini-main"
    assert error.session_id == SID


def test_models_list_fixture_gives_generate_content_models_without_prefix() -> None:
    exp = wire.expected(FIXTURES, "models-list")
    models = DIALECT.parse_models((FIXTURES / "models-list.json").read_bytes())
    assert models == exp["models_supporting_generateContent"]
    assert set(models) <= set(exp["models"])


def test_models_request_url_and_auth() -> None:
    http = DIALECT.models_request(DEPLOYMENT, now=0.0)
    assert (http.method, http.url) == (
        "GET",
        "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1000",
    )
    assert http.headers["x-goog-api-key"] == "AIza-test-key" and http.stream is False
    assert DIALECT.parse_models(b"<html>") == []


# ----------------------------------------------------------------------------------------------
# fixtures: recorded requests


def test_build_matches_recorded_text_request_with_system_instruction() -> None:
    rec = wire.recorded_request(FIXTURES, "stream-sse-text")
    req = request(
        [
            Message(role="system", content=rec["systemInstruction"]["parts"][0]["text"]),
            Message(role="user", content=rec["contents"][0]["parts"][0]["text"]),
        ],
        model="gemini-2.0-flash-exp",
        temperature=0.0,
        stream=True,
    )
    http = DIALECT.build_request(req, DEPLOYMENT, now=0.0)
    assert http.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash-exp:streamGenerateContent?alt=sse"
    )
    body = json.loads(http.body)
    assert body["contents"] == rec["contents"]
    assert body["systemInstruction"]["parts"] == rec["systemInstruction"]["parts"]
    assert body["generationConfig"] == rec["generationConfig"]


@pytest.mark.parametrize("name", ["error-404-model-not-found", "error-400-api-key-invalid"])
def test_build_matches_recorded_generation_config(name: str) -> None:
    rec = wire.recorded_request(FIXTURES, name)
    config = rec["generationConfig"]
    messages = [Message(role="user", content=rec["contents"][0]["parts"][0]["text"])]
    if "systemInstruction" in rec:
        messages.insert(0, Message(role="system", content=rec["systemInstruction"]["parts"][0]["text"]))
    req = request(
        messages,
        temperature=config["temperature"],
        top_p=config.get("topP"),
        max_tokens=config["maxOutputTokens"],
    )
    body = body_of(req)
    recorded = {k: v for k, v in config.items() if k != "candidateCount"}  # 1 is the default
    assert body["generationConfig"] == recorded
    assert body["contents"] == rec["contents"]
    assert body.get("systemInstruction", {}).get("parts") == rec.get("systemInstruction", {}).get("parts")


@pytest.mark.parametrize(
    "name",
    ["stream-sse-function-call", "nonstream-function-call", "stream-sse-function-call-thought-signature"],
)
def test_build_matches_recorded_function_declarations(name: str) -> None:
    rec = wire.recorded_request(FIXTURES, name)
    body = body_of(request([Message(role="user", content="q")], tools=tools_from(rec)))
    recorded = camel(rec["tools"] if isinstance(rec["tools"], list) else [rec["tools"]])[0]["functionDeclarations"]
    built = body["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in built] == [d["name"] for d in recorded]
    assert [d.get("description", "") for d in built] == [d.get("description") or "" for d in recorded]
    assert [d["parametersJsonSchema"] for d in built] == [
        lower_types(d.get("parametersJsonSchema") or d["parameters"]) for d in recorded
    ]


def test_build_matches_recorded_function_call_and_response_turns() -> None:
    rec = wire.recorded_request(FIXTURES, "stream-sse-text-after-function-responses")
    messages: list[Message] = [Message(role="system", content="You are a helpful chatbot.")]
    for content in rec["contents"]:
        part = content["parts"][0]
        if "text" in part:
            messages.append(Message(role="user", content=part["text"]))
        elif "functionCall" in part:
            call = part["functionCall"]
            arguments = json.dumps(call["args"])
            messages.append(Message(role="assistant", tool_calls=[ToolCall(call["id"], call["name"], arguments)]))
        else:
            response = part["functionResponse"]
            messages.append(Message(role="tool", tool_call_id=response["id"], content=json.dumps(response["response"])))
    body = body_of(request(messages, model="gemini-2.0-flash", tools=tools_from(rec)))
    assert body["contents"] == rec["contents"]


def test_build_matches_recorded_image_part() -> None:
    rec = wire.recorded_request(FIXTURES, "nonstream-vision-inline")
    parts = rec["contents"][0]["parts"]
    inline = next(p["inlineData"] for p in parts if "inlineData" in p)
    text = next(p["text"] for p in parts if "text" in p)
    url = f"data:{inline['mimeType']};base64,{inline['data']}"
    req = request(
        [
            Message(role="system", content="You are a helpful chatbot."),
            Message(role="user", content=text, images=[url]),
        ],
        model="gemini-2.0-flash",
        stream=False,
    )
    http = DIALECT.build_request(req, DEPLOYMENT, now=0.0)
    assert http.url.endswith("/v1beta/models/gemini-2.0-flash:generateContent")
    built = json.loads(http.body)["contents"][0]["parts"]
    assert sorted(json.dumps(p, sort_keys=True) for p in built) == sorted(json.dumps(p, sort_keys=True) for p in parts)


@pytest.mark.parametrize("name", ["stream-json-array-thinking", "stream-json-array-function-call"])
def test_build_matches_recorded_include_thoughts(name: str) -> None:
    rec = wire.recorded_request(FIXTURES, name)
    body = body_of(request([Message(role="user", content=rec["contents"][0]["parts"][0]["text"])], reasoning=True))
    assert body["generationConfig"] == rec["generationConfig"]
    assert body["contents"] == rec["contents"]


def test_decoded_call_and_signature_replay_like_the_recorded_follow_up() -> None:
    """Turn 1's response (function call + thoughtSignature) replayed as the recorded turn 2 request did."""
    events, decoder = decode(
        request(stream=False, reasoning=True),
        (FIXTURES / "stream-json-array-function-call.json").read_bytes(),
    )
    calls = [e.function for e in events if isinstance(e, ToolCallEvent)]
    rec = camel(wire.recorded_request(FIXTURES, "stream-json-array-after-function-response"))
    messages = [
        Message(role="user", content="Two names for a pet pelican"),
        Message(role="assistant", tool_calls=calls, provider_data=decoder.provider_data),
        Message(role="tool", tool_call_id=calls[0].id, content="Charles"),
    ]
    body = body_of(request(messages, reasoning=True, tools=tools_from(rec)))
    assert [c["role"] for c in body["contents"]] == [c["role"] for c in rec["contents"]]
    built_call, recorded_call = body["contents"][1]["parts"][0], rec["contents"][1]["parts"][0]
    assert built_call["thoughtSignature"] == recorded_call["thoughtSignature"]
    assert built_call["functionCall"]["name"] == recorded_call["functionCall"]["name"]
    assert built_call["functionCall"]["args"] == recorded_call["functionCall"]["args"]
    response = body["contents"][2]["parts"][0]["functionResponse"]
    assert response["name"] == rec["contents"][2]["parts"][0]["functionResponse"]["name"]
    assert response["id"] == built_call["functionCall"]["id"] == calls[0].id
    assert response["response"] == {"result": "Charles"}  # recorded client wrapped it as "output"
    assert body["generationConfig"] == rec["generationConfig"]


# ----------------------------------------------------------------------------------------------
# request building


def test_url_headers_and_auth() -> None:
    http = DIALECT.build_request(request(stream=False), DEPLOYMENT, now=0.0)
    assert http.method == "POST"
    assert http.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    assert http.headers["x-goog-api-key"] == "AIza-test-key"
    assert http.headers["content-type"] == "application/json"
    assert "AIza" not in http.url and http.stream is False


def test_base_url_version_model_path_and_extra_headers() -> None:
    deployment = Deployment(
        name="g",
        type="gemini",
        base_url="http://127.0.0.1:8080/v1beta/",
        api_version="v1",
        headers={"x-a": "b"},
    )
    http = DIALECT.build_request(request(model="tunedModels/my-model", stream=True), deployment, now=0.0)
    assert http.url == "http://127.0.0.1:8080/v1/tunedModels/my-model:streamGenerateContent?alt=sse"
    assert http.headers["x-a"] == "b" and "x-goog-api-key" not in http.headers
    prefixed = DIALECT.build_request(request(model="models/gemini-2.0-flash"), DEPLOYMENT, now=0.0)
    assert "/v1beta/models/gemini-2.0-flash:streamGenerateContent" in prefixed.url


def test_sampling_params_and_stop_sequences() -> None:
    body = body_of(request(temperature=1.7, top_p=0.4, max_tokens=77, stop=["\n\n", "END"]))
    assert body["generationConfig"] == {
        "temperature": 1.7,
        "topP": 0.4,
        "maxOutputTokens": 77,
        "stopSequences": ["\n\n", "END"],
    }
    assert "generationConfig" not in body_of(request())


def test_response_format_json_schema_and_json_object() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    config = body_of(request(response_format=fmt))["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    config = body_of(request(response_format={"type": "json_object"}))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}


def test_reasoning_asks_for_thoughts_with_an_optional_budget() -> None:
    deployment = Deployment(name="g", type="gemini", options={"thinking_budget": 512})
    config = body_of(request(reasoning=True), deployment)["generationConfig"]
    assert config == {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 512}}


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("get_weather", {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_mapping(choice, wire) -> None:
    body = body_of(request(tools=[Tool(name="get_weather", description="Weather.")], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": wire}
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather.",
                    "parametersJsonSchema": {"type": "object", "properties": {}},
                }
            ]
        }
    ]
    assert "toolConfig" not in body_of(request(tool_choice=choice))


def test_vision_inline_and_file_uri_with_guessed_mime() -> None:
    body = body_of(
        request(
            [
                Message(
                    role="user",
                    content="compare",
                    images=[
                        "data:image/webp;base64,UklGRg==",
                        "https://example.com/a/photo.PNG?size=large",
                        "https://example.com/no-extension",
                    ],
                )
            ]
        )
    )
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/webp", "data": "UklGRg=="}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a/photo.PNG?size=large"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/no-extension"}},
        {"text": "compare"},
    ]


def test_system_messages_join_and_same_role_turns_merge() -> None:
    body = body_of(
        request(
            [
                Message(role="system", content="A."),
                Message(role="user", content="x"),
                Message(role="user", content="y"),
                Message(role="system", content="B."),
                Message(role="assistant", content="z"),
            ]
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "A.\n\nB."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "x"}, {"text": "y"}]},
        {"role": "model", "parts": [{"text": "z"}]},
    ]


def test_tool_result_round_trip_recovers_names_and_wraps_non_objects() -> None:
    events, _ = decode(request(), (FIXTURES / "stream-sse-function-call.sse").read_bytes())
    (call,) = [e.function for e in events if isinstance(e, ToolCallEvent)]
    second = ToolCall(id="call_b", name="get_temperature", arguments='{"city": "Paris"}')
    body = body_of(
        request(
            [
                Message(role="user", content="Temperature of the capital of France?"),
                Message(role="assistant", content="Checking.", tool_calls=[call, second]),
                Message(role="tool", tool_call_id=call.id, content="Paris"),
                Message(role="tool", tool_call_id="call_b", content='{"celsius": 30}'),
                Message(role="tool", tool_call_id="orphan", name="legacy_tool", content="[1, 2]"),
            ]
        )
    )
    model, results = body["contents"][1], body["contents"][2]
    assert model == {
        "role": "model",
        "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_capital", "args": {"country": "France"}, "id": call.id}},
            {"functionCall": {"name": "get_temperature", "args": {"city": "Paris"}, "id": "call_b"}},
        ],
    }
    assert len(body["contents"]) == 3 and results["role"] == "user"
    assert [p["functionResponse"] for p in results["parts"]] == [
        {"name": "get_capital", "response": {"result": "Paris"}, "id": call.id},
        {"name": "get_temperature", "response": {"celsius": 30}, "id": "call_b"},
        {"name": "legacy_tool", "response": {"result": [1, 2]}, "id": "orphan"},
    ]


def test_repeated_call_ids_resolve_to_the_nearest_earlier_call() -> None:
    body = body_of(
        request(
            [
                Message(role="assistant", tool_calls=[ToolCall(id="call_0", name="first")]),
                Message(role="tool", tool_call_id="call_0", content="1"),
                Message(role="assistant", tool_calls=[ToolCall(id="call_0", name="second")]),
                Message(role="tool", tool_call_id="call_0", content="2"),
            ]
        )
    )
    names = [c["parts"][0]["functionResponse"]["name"] for c in body["contents"] if c["role"] == "user"]
    assert names == ["first", "second"]


def test_tool_result_without_a_known_call_or_name_is_a_request_error() -> None:
    with pytest.raises(InvalidRequestError, match="function name"):
        body_of(request([Message(role="tool", tool_call_id="nope", content="x")]))


def test_function_call_signature_is_exposed_and_replayed_on_its_part() -> None:
    raw = (FIXTURES / "stream-sse-function-call-thought-signature.sse").read_text()
    signature = re.search(r'"thoughtSignature": "([^"]+)"', raw).group(1)
    events, decoder = decode(request(), raw.encode())
    (call,) = [e.function for e in events if isinstance(e, ToolCallEvent)]
    assert decoder.provider_data == {
        "gemini": {"parts": [{"functionCall": {"name": "get_country", "id": call.id}, "thoughtSignature": signature}]}
    }
    body = body_of(
        request(
            [
                Message(role="user", content="q"),
                Message(role="assistant", tool_calls=[call], provider_data=decoder.provider_data),
                Message(role="tool", tool_call_id=call.id, content="France"),
            ]
        )
    )
    assert body["contents"][1]["parts"] == [
        {"functionCall": {"name": "get_country", "args": {}, "id": call.id}, "thoughtSignature": signature}
    ]


def test_trailing_text_signature_is_replayed_as_an_empty_text_part() -> None:
    data = json.loads((FIXTURES / "stream-json-array-thinking.json").read_text())
    signature = data[-1]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    _, decoder = decode(request(stream=False), json.dumps(data).encode())
    assert decoder.provider_data == {"gemini": {"parts": [{"text": "", "thoughtSignature": signature}]}}
    body = body_of(
        request(
            [
                Message(role="user", content="q"),
                Message(role="assistant", content="Scoop", provider_data=decoder.provider_data),
            ]
        )
    )
    assert body["contents"][1]["parts"] == [{"text": "Scoop"}, {"text": "", "thoughtSignature": signature}]


def test_provider_data_is_none_without_signatures() -> None:
    _, decoder = decode(request(), (FIXTURES / "stream-sse-text.sse").read_bytes())
    assert decoder.provider_data is None


# ----------------------------------------------------------------------------------------------
# decoding edge cases


def sse(*chunks: dict[str, Any]) -> bytes:
    return "".join(f"data: {json.dumps(chunk)}\r\n\r\n" for chunk in chunks).encode()


def chunk(parts: list[dict[str, Any]], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


def test_stream_without_a_finish_reason_is_a_retryable_error() -> None:
    data = (FIXTURES / "stream-sse-text.sse").read_bytes()
    last = data.rindex(b"data: ")
    events, _ = decode(request(), data[:last])
    assert isinstance(events[-1], Error)
    assert events[-1].code == "PROVIDER_UNAVAILABLE" and events[-1].retryable
    assert "ended early" in events[-1].message
    assert wire.summarize(events)["text"] == "The capital of France"


def test_stream_cut_inside_the_last_chunk_is_an_error_not_an_exception() -> None:
    data = (FIXTURES / "stream-sse-text.sse").read_bytes()
    events, _ = decode(request(), data[: len(data) - 40])
    assert isinstance(events[-1], Error) and events[-1].code == "PROVIDER_UNAVAILABLE"


def test_empty_body_is_a_retryable_error() -> None:
    events, _ = decode(request(), b"")
    assert isinstance(events[-1], Error) and events[-1].retryable


def test_malformed_chunk_is_an_error() -> None:
    events, _ = decode(request(), b'data: {"candidates": [\r\n\r\n' + sse(chunk([{"text": "x"}], "STOP")))
    assert isinstance(events[-1], Error)
    assert events[-1].code == "PROVIDER_UNAVAILABLE" and "not JSON" in events[-1].message
    assert not any(isinstance(e, Token) for e in events)


def test_nothing_is_emitted_after_the_terminal_event() -> None:
    decoder = DIALECT.response_decoder(request(), DEPLOYMENT)
    decoder.feed(b"data: {oops}\r\n\r\n")
    assert decoder.feed(sse(chunk([{"text": "late"}], "STOP"))) == []
    assert decoder.close() == []


def test_blocked_prompt_ends_with_content_filter_done() -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    events, _ = decode(request(), sse(blocked))
    assert [type(e) for e in events] == [Usage, Done]
    assert events[-1].finish_reason == "content_filter"
    assert wire.summarize(events)["usage"] == (9, None, None, None)


@pytest.mark.parametrize(
    ("raw", "finish"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "other"),
        ("OTHER", "other"),
        ("STOP", "stop"),
    ],
)
def test_finish_reason_mapping(raw: str, finish: str) -> None:
    events, _ = decode(request(), sse(chunk([{"text": "a"}]), chunk([{"text": "b"}], raw)))
    assert events[-1].finish_reason == finish
    assert wire.summarize(events)["text"] == "ab"


def test_error_object_inside_the_stream_is_an_error_event() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    events, _ = decode(request(), sse(chunk([{"text": "partial"}]), error))
    assert isinstance(events[-1], Error)
    assert (events[-1].code, events[-1].retryable) == ("OVERLOADED", True)


def test_cached_and_tool_use_prompt_tokens_are_reported() -> None:
    usage = {
        "promptTokenCount": 100,
        "toolUsePromptTokenCount": 5,
        "cachedContentTokenCount": 60,
        "candidatesTokenCount": 7,
        "totalTokenCount": 112,
    }
    events, _ = decode(request(), sse(chunk([{"text": "ok"}], "STOP", usageMetadata=usage)))
    assert wire.summarize(events)["usage"] == (105, 7, 60, None)


def test_missing_usage_is_reported_as_none() -> None:
    events, _ = decode(request(), sse(chunk([{"text": "ok"}], "STOP")))
    assert wire.summarize(events)["usage"] == (None, None, None, None)


def test_function_call_id_from_the_provider_is_kept_and_parallel_calls_stay_apart() -> None:
    parts = [
        {"functionCall": {"name": "a", "args": {"x": 1}, "id": "provider-id"}},
        {"functionCall": {"name": "b"}},
    ]
    events, _ = decode(request(), sse(chunk(parts, "STOP", responseId="r/1")))
    assert wire.summarize(events)["tool_calls"] == [
        {"id": "provider-id", "name": "a", "arguments": {"x": 1}},
        {"id": "call_r1_1", "name": "b", "arguments": {}},
    ]
    assert events[-1].finish_reason == "tool_calls"


# ----------------------------------------------------------------------------------------------
# errors


def gerr(status: int, error: dict[str, Any], headers=None, wrap: bool = False) -> Error:
    payload: Any = {"error": error}
    body = json.dumps([payload] if wrap else payload).encode()
    return DIALECT.decode_error(request(), DEPLOYMENT, status, headers or {}, body)


def test_daily_quota_429_is_not_retryable_but_keeps_the_retry_delay() -> None:
    error = gerr(
        429,
        {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
            ],
        },
    )
    assert (error.code, error.retryable, error.retry_after) == ("RATE_LIMIT", False, 37.0)


def test_per_minute_429_is_retryable_with_retry_delay() -> None:
    error = gerr(
        429,
        {
            "code": 429,
            "message": "Quota exceeded.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"},
            ],
        },
    )
    assert (error.code, error.retryable, error.retry_after) == ("RATE_LIMIT", True, 1.5)


@pytest.mark.parametrize(
    ("status", "rpc", "message", "code", "retryable"),
    [
        (
            400,
            "INVALID_ARGUMENT",
            "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "CONTEXT_LENGTH_EXCEEDED",
            False,
        ),
        (400, "INVALID_ARGUMENT", "Invalid JSON payload.", "INVALID_REQUEST", False),
        (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.", "FORBIDDEN", False),
        (500, "INTERNAL", "An internal error has occurred.", "INTERNAL", True),
        (504, "DEADLINE_EXCEEDED", "Deadline expired.", "TIMEOUT", True),
        (503, "UNAVAILABLE", "The service is currently unavailable.", "OVERLOADED", True),
    ],
)
def test_error_statuses_map_to_gtl_codes(status, rpc, message, code, retryable) -> None:
    for wrap in (False, True):  # bodies of non-SSE streaming calls come wrapped in an array
        error = gerr(status, {"code": status, "message": message, "status": rpc}, wrap=wrap)
        assert (error.code, error.retryable, error.http_status) == (code, retryable, status)
        assert error.message == message


def test_non_json_error_body_falls_back_to_the_status_and_headers() -> None:
    error = DIALECT.decode_error(request(), DEPLOYMENT, 502, {"Retry-After": "3"}, b"Bad Gateway")
    assert (error.code, error.retryable, error.retry_after) == ("PROVIDER_UNAVAILABLE", True, 3.0)
    assert error.message == "Bad Gateway"


def test_dialect_is_registered_and_satisfies_the_protocol() -> None:
    from gtl_nb.providers.registry import get_provider

    provider = get_provider("gemini")
    assert isinstance(provider, GeminiDialect) and isinstance(provider, HttpDialect)
    assert GeminiDialect.name == "gemini"


# -- Gemini 3's check of function-call signatures ----------------------------------------------------


def test_gemini_3_calls_replayed_without_a_signature_take_googles_stand_in() -> None:
    """Gemini 3 and later refuse a turn's function calls replayed unsigned; a history with no signature to
    give back (another provider's, a caller's own) sends the documented stand-in on each assistant
    message's first call, and a real signature where the message has one."""
    first = ToolCall(id="call_a", name="get_country", arguments="{}")
    parallel = [ToolCall(id="call_b", name="get_city", arguments="{}"), ToolCall(id="call_c", name="get_time")]
    history = [
        Message(role="user", content="q"),
        Message(role="assistant", tool_calls=[first]),
        Message(role="tool", tool_call_id="call_a", content="France"),
        Message(
            role="assistant",
            tool_calls=parallel,
            provider_data={"gemini": {"parts": [{"functionCall": {"id": "call_b"}, "thoughtSignature": "real"}]}},
        ),
        Message(role="tool", tool_call_id="call_b", content="Paris"),
        Message(role="tool", tool_call_id="call_c", content="noon"),
    ]
    for model in ("gemini-3-pro-preview", "gemini-3.1-flash-lite", "models/gemini-4-ultra"):
        contents = body_of(wire.request_maker(session_id=SID, model=model)(history))["contents"]
        signatures = [
            [part.get("thoughtSignature") for part in content["parts"] if "functionCall" in part]
            for content in contents
            if content["role"] == "model"
        ]
        assert signatures == [[SKIP_SIGNATURE], ["real", None]], model
    for model in ("gemini-2.5-flash", "gemma-3-27b-it", "tunedModels/my-model"):  # no check there: sent as given
        contents = body_of(wire.request_maker(session_id=SID, model=model)(history))["contents"]
        assert SKIP_SIGNATURE not in json.dumps(contents), model
    names = ("gemini-3", "gemini-30-x", "Gemini-3-Pro", "publishers/google/models/gemini-3-flash", "gemini-pro-latest")
    assert all(checks_signatures(name) for name in names)
    assert not any(checks_signatures(name) for name in ("gemini-2.5-pro", "xgemini-3", "gemma-3-27b-it", "latest"))


# ----------------------------------------------------------------------------------------------
# token counting (``count_request`` / ``parse_count``)


def test_a_count_sends_the_whole_generate_content_request() -> None:
    asked = request(
        [Message(role="system", content="Be brief."), Message(role="user", content="What is the weather in Oslo?")],
        tools=[Tool(name="get_weather", parameters={"type": "object"})],
        stop=["a", "b", "c", "d", "e", "f"],  # more than Gemini takes: no part of the prompt, left out of a count
        max_tokens=50,
        stream=True,
    )
    described = DIALECT.count_request(asked, DEPLOYMENT, now=0.0)
    sent = json.loads(described.body)
    assert described.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:countTokens"
    assert described.headers["x-goog-api-key"] == DEPLOYMENT.api_key and not described.stream
    whole = sent["generateContentRequest"]
    assert whole.pop("model") == "models/gemini-2.5-flash"
    assert "stopSequences" not in whole.get("generationConfig", {})
    assert whole["systemInstruction"] == {"parts": [{"text": "Be brief."}]} and whole["tools"]
    assert whole["contents"] == body_of(msgspec.structs.replace(asked, stop=None))["contents"]


@pytest.mark.parametrize("body", [b"", b"{}", b'{"totalTokens": "3"}', b'{"totalTokens": -2}', b"[1]"])
def test_a_count_answer_without_total_tokens_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        DIALECT.parse_count(body)
    assert DIALECT.parse_count(b'{"totalTokens": 31, "promptTokensDetails": []}') == 31
