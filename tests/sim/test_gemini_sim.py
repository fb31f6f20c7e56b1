"""Gemini simulator: google-genai against it, and its SSE / JSON-array bytes against the recordings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from gtl_nb import sim

from .conftest import FIXTURES, assert_keys_between, fixture_bytes, fixture_json, split_events

MODEL = "gemini-2.5-flash"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Weather for a city",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]),
)
TIME = types.FunctionDeclaration(name="get_time", description="The time")


_ALIVE: list[genai.Client] = []  # a genai.Client closes its HTTP client when garbage-collected


def client(s: sim.Simulator, key: str = "sim-key") -> genai.Client:
    made = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=s.base_url))
    _ALIVE.append(made)
    return made


def tools_config(*decls: types.FunctionDeclaration) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(tools=[types.Tool(function_declarations=list(decls))])


# -- the official SDK -----------------------------------------------------------------------------------------


def test_sdk_streams_text_with_usage_on_every_chunk(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    chunks = list(client(s).models.generate_content_stream(model=MODEL, contents="Hello, simulated Gemini"))
    assert "".join(c.text or "" for c in chunks).startswith('You said: "Hello, simulated Gemini".')
    assert all(c.usage_metadata and c.usage_metadata.prompt_token_count for c in chunks)
    assert [c.candidates[0].finish_reason for c in chunks][-1] == types.FinishReason.STOP
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])
    last = chunks[-1].usage_metadata
    assert last.total_token_count == last.prompt_token_count + last.candidates_token_count
    assert s.requests[-1].query.get("alt") == "sse" and s.requests[-1].headers["x-goog-api-key"] == "sim-key"


def test_sdk_structured_output_follows_either_schema_field(serve_sim: Any) -> None:
    """``responseMimeType`` JSON with ``responseSchema`` (the OpenAPI subset, upper-case types) or
    ``responseJsonSchema`` (JSON Schema) is answered with JSON of that shape; the MIME type alone with
    some JSON object; neither with prose."""
    s = serve_sim("gemini")
    models = client(s).models
    openapi = types.Schema(
        type="OBJECT",
        properties={"city": types.Schema(type="STRING"), "days": types.Schema(type="INTEGER")},
        required=["city", "days"],
    )
    answer = models.generate_content(
        model=MODEL,
        contents="Plan a trip",
        config=types.GenerateContentConfig(response_mime_type="application/json", response_schema=openapi),
    )
    trip = json.loads(answer.text)
    assert isinstance(trip["city"], str) and isinstance(trip["days"], int)
    assert s.requests[-1].json["generationConfig"]["responseSchema"]["type"] == "OBJECT"
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    schema["required"] = ["tags"]
    streamed = models.generate_content_stream(
        model=MODEL,
        contents="Tag this",
        config=types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=schema),
    )
    tags = json.loads("".join(chunk.text or "" for chunk in streamed))["tags"]
    assert isinstance(tags, list) and all(isinstance(tag, str) for tag in tags)
    loose = models.generate_content(
        model=MODEL, contents="Anything", config=types.GenerateContentConfig(response_mime_type="application/json")
    )
    assert isinstance(json.loads(loose.text), dict)
    prose = models.generate_content(model=MODEL, contents="Plan a trip").text
    with pytest.raises(json.JSONDecodeError):
        json.loads(prose)


def test_sdk_streams_whole_function_calls_without_ids(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    chunks = list(
        client(s).models.generate_content_stream(
            model=MODEL, contents="get_weather and get_time", config=tools_config(WEATHER, TIME)
        )
    )
    calls = [fc for c in chunks for fc in c.function_calls or []]
    assert [(fc.name, fc.args) for fc in calls] == [("get_weather", {"city": "sample city"}), ("get_time", {})]
    assert all(fc.id is None for fc in calls)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # STOP even for calls


def test_sdk_non_streaming_text_and_function_call(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    reply = client(s).models.generate_content(model=MODEL, contents="Hello")
    assert reply.text and reply.usage_metadata.candidates_token_count > 0
    call = client(s).models.generate_content(model=MODEL, contents="weather?", config=tools_config(WEATHER))
    assert call.function_calls[0].args == {"city": "sample city"}


def test_sdk_thoughts_and_signature_when_include_thoughts(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    chunks = list(client(s).models.generate_content_stream(model=MODEL, contents="Think", config=config))
    parts = [p for c in chunks for p in c.candidates[0].content.parts]
    assert any(p.thought for p in parts) and any(p.thought_signature for p in parts)
    answer = "".join(p.text or "" for p in parts if not p.thought)
    assert answer.startswith('You said: "Think"')
    assert chunks[-1].usage_metadata.thoughts_token_count > 0


def test_gemini_3_signs_calls_and_refuses_them_replayed_unsigned_in_the_current_turn(serve_sim: Any) -> None:
    """Gemini 3 signs a function-call turn without being asked for thoughts; the SDK's own replay of the
    model's content passes, a history rebuilt without the signature is a 400 naming the call, earlier
    turns are not checked, and Google's stand-in passes. Gemini 2.5 checks nothing."""
    s = serve_sim("gemini")
    sdk = client(s)
    model = "gemini-3-pro-preview"
    first = sdk.models.generate_content(model=model, contents="weather?", config=tools_config(WEATHER))
    signed = first.candidates[0].content
    assert signed.parts[0].function_call.name == "get_weather" and signed.parts[0].thought_signature
    result = types.Part.from_function_response(name="get_weather", response={"sky": "clear"})
    question = types.Content(role="user", parts=[types.Part(text="weather?")])
    replayed = [question, signed, types.Content(role="user", parts=[result])]
    assert sdk.models.generate_content(model=model, contents=replayed, config=tools_config(WEATHER)).text

    unsigned = types.Content(role="model", parts=[types.Part(function_call=signed.parts[0].function_call)])
    rebuilt = [question, unsigned, types.Content(role="user", parts=[result])]
    with pytest.raises(errors.ClientError) as refused:
        sdk.models.generate_content(model=model, contents=rebuilt, config=tools_config(WEATHER))
    assert refused.value.code == 400 and "missing a thought_signature" in str(refused.value)
    assert "`default_api:get_weather` , position 2" in str(refused.value)

    later = [*rebuilt, types.Content(role="model", parts=[types.Part(text="Clear.")]), question]  # a new turn
    assert sdk.models.generate_content(model=model, contents=later, config=tools_config(WEATHER)).function_calls
    call = {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": "skip_thought_signature_validator"}
    stand_in = {
        "contents": [
            {"role": "user", "parts": [{"text": "weather?"}]},
            {"role": "model", "parts": [call]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}]},
        ]
    }
    assert sim_post(s, stand_in, method="generateContent", query="", model=model).json()["candidates"]
    assert sdk.models.generate_content(model=MODEL, contents=rebuilt, config=tools_config(WEATHER)).text


def test_a_function_response_turn_gets_text_mentioning_it(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather?")]),
        types.Content(
            role="model",
            parts=[types.Part(function_call=types.FunctionCall(name="get_weather", args={"city": "Rome"}))],
        ),
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(name="get_weather", response={"output": "31 degrees"})
                )
            ],
        ),
    ]
    reply = client(s).models.generate_content(model=MODEL, contents=contents, config=tools_config(WEATHER))
    assert "31 degrees" in reply.text and not reply.function_calls


def test_sdk_lists_models(serve_sim: Any) -> None:
    s = serve_sim("gemini", models=["gemini-sim"])
    assert [m.name for m in client(s).models.list()] == ["models/gemini-sim"]


def test_wrong_key_is_a_400_api_key_invalid(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    bad = client(s, key="wrong")
    with pytest.raises(errors.ClientError) as info:
        bad.models.generate_content(model=MODEL, contents="hi")
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"
    reasons = [d.get("reason") for d in info.value.details["error"]["details"]]
    assert "API_KEY_INVALID" in reasons
    recorded = fixture_json("gemini", "error-400-api-key-invalid.json")
    assert info.value.details["error"] == recorded["error"]


def test_the_key_may_come_as_a_query_parameter(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    url = f"{s.base_url}/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    assert httpx.post(url + "?key=sim-key", json=body).status_code == 200
    assert httpx.post(url + "?key=nope", json=body).status_code == 400
    assert httpx.post(url, json=body).status_code == 403  # no key at all: an unregistered caller


@pytest.mark.parametrize(
    ("fault", "error_class", "status"),
    [
        (sim.Fault.http(429, retry_after=37), errors.ClientError, "RESOURCE_EXHAUSTED"),
        (sim.Fault.overloaded(), errors.ServerError, "UNAVAILABLE"),
        (sim.Fault.http(500), errors.ServerError, "INTERNAL"),
    ],
)
def test_faults_map_to_the_sdk_errors(fault: sim.Fault, error_class: type, status: str, serve_sim: Any) -> None:
    s = serve_sim("gemini", fault)
    with pytest.raises(error_class) as info:
        client(s).models.generate_content(model=MODEL, contents="hi")
    assert info.value.status == status


def test_rate_limit_carries_retry_info_like_the_service(serve_sim: Any) -> None:
    s = serve_sim("gemini", sim.Fault.http(429, retry_after=37))
    response = httpx.post(
        f"{s.base_url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": []},
        headers={"x-goog-api-key": "sim-key"},
    )
    recorded = fixture_json("gemini", "error-429-resource-exhausted.json")
    error = response.json()["error"]
    assert set(error) == set(recorded["error"]) and error["status"] == recorded["error"]["status"]
    types_ = [d["@type"].rsplit(".", 1)[-1] for d in error["details"]]
    assert "RetryInfo" in types_ and "Help" in types_
    assert next(d for d in error["details"] if d["@type"].endswith("RetryInfo"))["retryDelay"] == "37s"
    assert "retry-after" not in response.headers  # the hint lives in the body


# -- the bytes against the recordings --------------------------------------------------------------------------

SSE_RECORDED = [
    "stream-sse-text.sse",
    "stream-sse-function-call.sse",
    "stream-sse-usage-growing.sse",
    "stream-sse-function-call-thought-signature.sse",
    "stream-sse-text-after-function-responses.sse",
]


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    events = split_events(raw, b"\r\n\r\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e and b"\r" not in e for e in events)
    return [json.loads(e[len(b"data: ") :]) for e in events]


def recorded_sse() -> list[dict[str, Any]]:
    return [c for name in SSE_RECORDED for c in sse_chunks(fixture_bytes("gemini", name))]


def sim_post(
    s: sim.Simulator,
    body: dict[str, Any],
    method: str = "streamGenerateContent",
    query: str = "?alt=sse",
    model: str = MODEL,
) -> httpx.Response:
    response = httpx.post(
        f"{s.base_url}/v1beta/models/{model}:{method}{query}", json=body, headers={"x-goog-api-key": "sim-key"}
    )
    assert response.status_code == 200, response.text
    return response


TEXT_BODY = {"contents": [{"role": "user", "parts": [{"text": "Hello, simulated Gemini"}]}]}
TOOL_BODY = {
    "contents": [{"role": "user", "parts": [{"text": "get_weather"}]}],
    "tools": [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]},
                }
            ]
        }
    ],
}


@pytest.mark.parametrize("name", SSE_RECORDED)
def test_recorded_sse_uses_crlf_separators_and_no_done(name: str) -> None:
    raw = fixture_bytes("gemini", name)
    assert raw.endswith(b"\r\n\r\n") and b"[DONE]" not in raw
    sse_chunks(raw)


def test_sim_sse_framing_is_crlf_without_done(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    for body in (TEXT_BODY, TOOL_BODY):
        response = sim_post(s, body)
        raw = response.content
        assert response.headers["content-type"].startswith("text/event-stream")
        assert raw.endswith(b"\r\n\r\n") and b"[DONE]" not in raw
        assert raw.replace(b"\r\n\r\n", b"").count(b"\n") == 0  # no LF-only separators anywhere
        sse_chunks(raw)


def test_sim_sse_chunk_fields_match_the_recordings(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    recorded = recorded_sse()
    thinking = {**TEXT_BODY, "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    for body in (TEXT_BODY, TOOL_BODY, thinking):
        chunks = sse_chunks(sim_post(s, body).content)
        for i, chunk in enumerate(chunks):
            assert_keys_between(chunk, recorded, "chunk")
            candidate = chunk["candidates"][0]
            assert_keys_between(candidate, [c["candidates"][0] for c in recorded], "candidate")
            assert set(candidate["content"]) == {"parts", "role"} and candidate["content"]["role"] == "model"
            assert_keys_between(chunk["usageMetadata"], [c["usageMetadata"] for c in recorded], "usageMetadata")
            assert ("finishReason" in candidate) == (i == len(chunks) - 1)  # only the last chunk finishes
            for part in candidate["content"]["parts"]:
                if "functionCall" in part:
                    assert set(part["functionCall"]) == {"name", "args"} and isinstance(
                        part["functionCall"]["args"], dict
                    )


def test_sim_json_array_stream_matches_the_recorded_framing(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    raw = sim_post(s, TEXT_BODY, query="").content
    recorded = fixture_bytes("gemini", "stream-json-array-function-call.json")
    for body in (raw, recorded):
        assert body.startswith(b"[{\n") and body.endswith(b"}\n]")
        assert b"}\n,\r\n{" in body or body.count(b"candidates") == 1
        assert isinstance(json.loads(body), list)
    assert len(json.loads(raw)) > 1 and b"}\n,\r\n{" in raw


def test_sim_thinking_signature_closes_the_turn_like_the_recording(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    body = {**TEXT_BODY, "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    chunks = json.loads(sim_post(s, body, query="").content)
    recorded = fixture_json("gemini", "stream-json-array-thinking.json")
    for stream in (chunks, recorded):
        first_part = stream[0]["candidates"][0]["content"]["parts"][0]
        last_part = stream[-1]["candidates"][0]["content"]["parts"][-1]
        assert first_part["thought"] is True
        assert last_part["text"] == "" and last_part["thoughtSignature"]
        assert stream[-1]["usageMetadata"]["thoughtsTokenCount"] > 0


def test_sim_non_streaming_matches_the_recorded_function_call(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    reply = sim_post(s, TOOL_BODY, method="generateContent", query="").json()
    recorded = fixture_json("gemini", "nonstream-function-call.json")
    assert set(reply) >= {"candidates", "usageMetadata", "modelVersion"}
    assert set(reply["candidates"][0]) - {"index"} <= set(recorded["candidates"][0]) | {"index"}
    part = reply["candidates"][0]["content"]["parts"][0]
    assert set(part) == set(recorded["candidates"][0]["content"]["parts"][0]) == {"functionCall"}
    assert set(reply["usageMetadata"]) <= set(recorded["usageMetadata"])


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (FIXTURES / "gemini").glob("*.request.json") if not p.name.startswith("error")),
    ids=lambda p: p.name,
)
def test_recorded_requests_are_understood(path: Path, serve_sim: Any) -> None:
    s = serve_sim("gemini")
    body = json.loads(path.read_text())
    name = path.name
    if name.startswith("stream-sse"):
        chunks = sse_chunks(sim_post(s, body).content)
    elif name.startswith("stream-json-array"):
        chunks = json.loads(sim_post(s, body, query="").content)
    else:
        chunks = [sim_post(s, body, method="generateContent", query="").json()]
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    last = body["contents"][-1]["parts"]
    if any("functionResponse" in p or "function_response" in p for p in last):
        assert not any("functionCall" in p for p in parts)  # after results: text
        assert "".join(p.get("text", "") for p in parts if not p.get("thought")).startswith("The tool returned:")
    elif body.get("tools"):
        assert any("functionCall" in p for p in parts)


def test_a_thinking_level_goes_to_gemini_3_alone_and_never_with_a_budget(serve_sim: Any) -> None:
    """The API's 400s: a level and a budget together (any model), a level before Gemini 3."""
    s = serve_sim("gemini")
    both = types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW, thinking_budget=1024)
    with pytest.raises(errors.ClientError) as refused:
        client(s).models.generate_content(
            model="gemini-3-pro-preview", contents="hi", config=types.GenerateContentConfig(thinking_config=both)
        )
    assert refused.value.code == 400 and "only one of thinking budget and thinking level" in str(refused.value)
    level = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_level=types.ThinkingLevel.HIGH))
    assert client(s).models.generate_content(model="gemini-3-pro-preview", contents="hi", config=level).text
    with pytest.raises(errors.ClientError) as early:
        client(s).models.generate_content(model="gemini-2.5-flash", contents="hi", config=level)
    assert early.value.code == 400 and "thinking_level is not supported" in str(early.value)
    budget = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=2048))
    assert client(s).models.generate_content(model="gemini-2.5-flash", contents="hi", config=budget).text


# -- token counting -------------------------------------------------------------------------------------------

HEADERS = {"x-goog-api-key": "sim-key"}


def test_sdk_counts_what_the_usage_then_reports(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    contents = [
        types.Content(role="user", parts=[types.Part(text="Hello")]),
        types.Content(role="model", parts=[types.Part(text="Hello! How can I help?")]),
        types.Content(role="user", parts=[types.Part(text="Tell me about the harbour of Bergen")]),
    ]
    counted = client(s).models.count_tokens(model=MODEL, contents=contents)
    answer = client(s).models.generate_content(model=MODEL, contents=contents)
    assert counted.total_tokens == answer.usage_metadata.prompt_token_count > 0


def test_a_whole_generate_content_request_counts_its_system_instruction_and_tools(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    whole = {
        "model": f"models/{MODEL}",
        "contents": [{"role": "user", "parts": [{"text": "What is the weather in Oslo?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief. Answer in one sentence."}]},
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}],
    }
    url = f"{s.base_url}/v1beta/models/{MODEL}"
    counted = httpx.post(f"{url}:countTokens", json={"generateContentRequest": whole}, headers=HEADERS).json()
    alone = httpx.post(f"{url}:countTokens", json={"contents": whole["contents"]}, headers=HEADERS).json()
    usage = httpx.post(f"{url}:generateContent", json=whole, headers=HEADERS).json()["usageMetadata"]
    assert counted["totalTokens"] == usage["promptTokenCount"] > alone["totalTokens"] > 0


def test_a_count_of_an_unknown_model_or_unpaired_responses_is_the_apis_error(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    url = f"{s.base_url}/v1beta/models/{MODEL}:countTokens"
    missing = httpx.post(f"{s.base_url}/v1beta/models/gemini-nope:countTokens", json={"contents": []}, headers=HEADERS)
    assert missing.status_code == 404 and "countTokens" in missing.json()["error"]["message"]
    answers = [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ok": True}}}]}]
    unpaired = httpx.post(url, json={"contents": answers}, headers=HEADERS)
    assert unpaired.status_code == 400 and unpaired.json()["error"]["status"] == "INVALID_ARGUMENT"
    bad = httpx.post(url, content=b"{oops", headers=HEADERS)
    assert bad.status_code == 400
