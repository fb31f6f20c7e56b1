"""The Bedrock simulator, checked by boto3 (the official SDK) and by gtl_nb's own Bedrock dialect."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

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
from gtl_nb.providers.bedrock import BedrockDialect
from gtl_nb.sim import Fault, serve

KEY_ID, SECRET, REGION = "AKIDSIMULATOR", "sim-secret", "us-east-1"
MODEL = "us.amazon.nova-micro-v1:0"
NOW = 1_735_689_600.0
WEATHER = {
    "toolSpec": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "inputSchema": {
            "json": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
                "required": ["city", "unit"],
            }
        },
    }
}


@pytest.fixture(autouse=True)
def _no_bearer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)  # boto3 would prefer it over SigV4


@pytest.fixture(scope="module")
def sim() -> Iterator[Any]:
    with serve("bedrock", seed=3) as simulator:
        yield simulator


@pytest.fixture
def fresh_sim() -> Iterator[Any]:
    with serve("bedrock", seed=3) as simulator:
        yield simulator


def _client(
    base_url: str,
    secret: str = SECRET,
    key_id: str = KEY_ID,
    service: str = "bedrock-runtime",
    validate: bool = True,
) -> Any:
    return boto3.client(
        service,
        endpoint_url=base_url,
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=validate),
    )


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


# ----------------------------------------------------------------------------------------------
# boto3


def test_boto3_converse_returns_text_and_usage(sim: Any) -> None:
    response = _client(sim.base_url).converse(
        modelId=MODEL, messages=_user("What is the capital of France?"), system=[{"text": "Be brief."}]
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    content = response["output"]["message"]["content"]
    assert content[0]["text"].startswith('You said: "What is the capital of France?"')
    assert response["stopReason"] == "end_turn"
    usage = response["usage"]
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]


def test_boto3_converse_stream_gives_the_same_text_in_pieces(sim: Any) -> None:
    client = _client(sim.base_url)
    whole = client.converse(modelId=MODEL, messages=_user("Tell me about Paris."))
    stream = client.converse_stream(modelId=MODEL, messages=_user("Tell me about Paris."))["stream"]
    events = list(stream)
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert "contentBlockStart" not in kinds  # text blocks start directly with deltas
    deltas = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert len(deltas) > 1
    assert "".join(deltas) == whole["output"]["message"]["content"][0]["text"]
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == whole["usage"]


def test_boto3_converse_tool_use_fills_the_schema(sim: Any) -> None:
    response = _client(sim.base_url).converse(
        modelId=MODEL,
        messages=_user("What is the weather in Oslo? Use get_weather."),
        toolConfig={"tools": [WEATHER], "toolChoice": {"auto": {}}},
    )
    assert response["stopReason"] == "tool_use"
    [block] = response["output"]["message"]["content"]
    tool_use = block["toolUse"]
    assert tool_use["name"] == "get_weather"
    assert tool_use["toolUseId"].startswith("tooluse_")
    assert set(tool_use["input"]) == {"city", "unit"} and tool_use["input"]["unit"] in ("C", "F")


def test_boto3_converse_stream_tool_use_assembles_input_fragments(sim: Any) -> None:
    stream = _client(sim.base_url).converse_stream(
        modelId=MODEL, messages=_user("Weather in Oslo?"), toolConfig={"tools": [WEATHER]}
    )["stream"]
    events = list(stream)
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert starts[0]["start"]["toolUse"]["name"] == "get_weather"
    fragments = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e and "toolUse" in e["contentBlockDelta"]["delta"]
    ]
    assert set(json.loads("".join(fragments))) == {"city", "unit"}
    assert [e["messageStop"]["stopReason"] for e in events if "messageStop" in e] == ["tool_use"]


def test_boto3_tool_result_turn_answers_with_text(sim: Any) -> None:
    messages = [
        *_user("Weather in Oslo?"),
        {
            "role": "assistant",
            "content": [{"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Oslo"}}}],
        },
        {
            "role": "user",
            "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "12 C"}]}}],
        },
    ]
    response = _client(sim.base_url).converse(modelId=MODEL, messages=messages, toolConfig={"tools": [WEATHER]})
    assert response["stopReason"] == "end_turn"
    assert response["output"]["message"]["content"][0]["text"].startswith("The tool returned: 12 C")


def test_boto3_reasoning_comes_back_with_a_signature(sim: Any) -> None:
    response = _client(sim.base_url).converse(
        modelId="us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        messages=_user("Think about it."),
        inferenceConfig={"maxTokens": 2048},
        additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    reasoning = response["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"]
    assert reasoning["text"] and reasoning["signature"]


def test_wrong_secret_is_403_invalid_signature(sim: Any) -> None:
    with pytest.raises(ClientError) as caught:
        _client(sim.base_url, secret="not-the-secret").converse(modelId=MODEL, messages=_user("hi"))
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert "signature we calculated does not match" in error["Error"]["Message"]
    assert "us.amazon.nova-micro-v1%253A0" in error["Error"]["Message"]  # the canonical string it expected


def test_unknown_access_key_is_unrecognized_client(sim: Any) -> None:
    with pytest.raises(ClientError) as caught:
        _client(sim.base_url, key_id="AKIDOTHER").converse(modelId=MODEL, messages=_user("hi"))
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_missing_authorization_is_403_missing_authentication_token(sim: Any) -> None:
    parts = urlsplit(sim.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/model/amazon.nova-micro-v1%3A0/converse",
            body=b"{}",
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 403
    assert response.getheader("x-amzn-ErrorType", "").startswith("MissingAuthenticationTokenException:")
    assert body == {"message": "Missing Authentication Token"}


def test_validation_errors_are_400_validation_exception(sim: Any) -> None:
    client = _client(sim.base_url)
    with pytest.raises(ClientError) as caught:
        client.converse(modelId=MODEL, messages=[*_user("a"), *_user("b")])
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "alternate" in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": [*_user("hi")], "toolConfig": {"tools": []}}, "toolConfig.tools"),
        (
            {
                "messages": [
                    *_user("q"),
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
                    },
                    {
                        "role": "user",
                        "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "r"}]}}],
                    },
                ]
            },
            "toolConfig field must be defined",
        ),
        (
            {
                "modelId": "meta.llama3-1-8b-instruct-v1:0",
                "messages": [
                    *_user("q"),
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
                    },
                    {
                        "role": "user",
                        "content": [
                            {
                                "toolResult": {
                                    "toolUseId": "t1",
                                    "content": [{"text": "r"}],
                                    "status": "success",
                                }
                            }
                        ],
                    },
                ],
                "toolConfig": {"tools": [WEATHER]},
            },
            "toolResult.status",
        ),
        (
            {
                "messages": [
                    *_user("q"),
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "functions.f:0", "name": "f", "input": {}}}],
                    },
                ],
                "toolConfig": {"tools": [WEATHER]},
            },
            "Value 'functions.f:0' at 'messages.2.member.content.1.member.toolUse.toolUseId' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
        ),
    ],
    ids=["empty-tools", "tool-blocks-without-tool-config", "status-on-llama", "tool-use-id-pattern"],
)
def test_tool_validation_like_the_service(sim: Any, kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("modelId", MODEL)
    with pytest.raises(ClientError) as caught:
        _client(sim.base_url, validate=False).converse(**kwargs)  # let the server do the validating
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert message in caught.value.response["Error"]["Message"]


def test_image_that_is_not_its_format_fails_inside_the_stream(sim: Any) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"text": "Describe this image."},
                {"image": {"format": "png", "source": {"bytes": b"these bytes are not a PNG image"}}},
            ],
        }
    ]
    stream = _client(sim.base_url).converse_stream(modelId=MODEL, messages=messages)["stream"]
    with pytest.raises(EventStreamError) as caught:
        list(stream)
    assert caught.value.response["Error"]["Code"] == "validationException"
    assert "does not match the expected type image/png" in caught.value.response["Error"]["Message"]


def test_list_foundation_models_on_the_control_plane(sim: Any) -> None:
    summaries = _client(sim.base_url, service="bedrock").list_foundation_models()["modelSummaries"]
    assert "amazon.nova-micro-v1:0" in [s["modelId"] for s in summaries]


# ----------------------------------------------------------------------------------------------
# Faults, through boto3


def test_http_429_fault_is_a_throttling_exception(fresh_sim: Any) -> None:
    fresh_sim.set_faults([Fault.http(429), Fault.ok()])
    client = _client(fresh_sim.base_url)
    with pytest.raises(ClientError) as caught:
        client.converse(modelId=MODEL, messages=_user("hi"))
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert client.converse(modelId=MODEL, messages=_user("hi"))["stopReason"] == "end_turn"


def test_overloaded_fault_is_503_service_unavailable(fresh_sim: Any) -> None:
    fresh_sim.set_faults(Fault.overloaded())
    with pytest.raises(ClientError) as caught:
        _client(fresh_sim.base_url).converse(modelId=MODEL, messages=_user("hi"))
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_stream_error_fault_is_a_throttling_exception_frame(fresh_sim: Any) -> None:
    fresh_sim.set_faults(Fault.stream_error("rate_limit", after=2))
    stream = _client(fresh_sim.base_url).converse_stream(modelId=MODEL, messages=_user("hi"))["stream"]
    seen = []
    with pytest.raises(EventStreamError) as caught:
        for event in stream:
            seen.append(event)
    assert len(seen) == 2
    assert caught.value.response["Error"]["Code"] == "throttlingException"


# ----------------------------------------------------------------------------------------------
# gtl_nb's own dialect against the simulator

DIALECT = BedrockDialect()


def _deployment(base_url: str, **kwargs: Any) -> Deployment:
    kwargs.setdefault("aws_access_key_id", KEY_ID)
    kwargs.setdefault("aws_secret_access_key", SECRET)
    return Deployment(name="bedrock-sim", type="bedrock", base_url=base_url, region=REGION, **kwargs)


def _run(deployment: Deployment, request: CompletionRequest) -> tuple[int, list[Any]]:
    """Send the dialect's request with httpx and decode the answer as the engine would."""
    http = DIALECT.build_request(request, deployment, now=NOW)
    with (
        httpx.Client(timeout=10) as client,
        client.stream(http.method, http.url, headers=http.headers, content=http.body) as response,
    ):
        if response.status_code >= 300:
            body = response.read()
            return response.status_code, [
                DIALECT.decode_error(request, deployment, response.status_code, response.headers, body)
            ]
        decoder = DIALECT.response_decoder(request, deployment)
        events = []
        try:
            for piece in response.iter_raw():
                events.extend(decoder.feed(piece))
        except httpx.RemoteProtocolError:
            pass  # the connection was cut mid-body: the decoder sees the end of what arrived
        events.extend(decoder.close())
        return response.status_code, events


def _request(**kwargs: Any) -> CompletionRequest:
    kwargs.setdefault("messages", [Message(role="user", content="Hello there, simulator!")])
    return CompletionRequest(session_id="s1", model=kwargs.pop("model", MODEL), **kwargs)


@pytest.mark.parametrize(
    "model",
    [
        MODEL,
        "anthropic.claude-3-haiku-20240307-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_dialect_request_is_accepted_and_decodes_completely(sim: Any, model: str, stream: bool) -> None:
    status, events = _run(_deployment(sim.base_url), _request(model=model, stream=stream))
    assert status == 200
    assert [type(e) for e in events[-2:]] == [Usage, Done]
    text = "".join(e.text for e in events if isinstance(e, Token))
    assert text.startswith('You said: "Hello there, simulator!"')
    usage, done = events[-2], events[-1]
    assert usage.tokens_in and usage.tokens_out
    assert (done.finish_reason, done.provider) == ("stop", "bedrock-sim")


def test_dialect_with_session_token_and_bearer_key_are_accepted(sim: Any) -> None:
    status, _ = _run(_deployment(sim.base_url, aws_session_token="FwoGZXIvYXdzSIM"), _request())
    assert status == 200
    keyed = Deployment(name="k", type="bedrock", base_url=sim.base_url, api_key="sim-key")
    assert _run(keyed, _request())[0] == 200
    wrong = Deployment(name="k", type="bedrock", base_url=sim.base_url, api_key="nope")
    status, [error] = _run(wrong, _request())
    assert (status, error.code) == (403, "AUTH_FAILED")


@pytest.mark.parametrize("model", [MODEL, "meta.llama3-1-8b-instruct-v1:0"])
def test_dialect_tool_round_trip_against_the_simulator(sim: Any, model: str) -> None:
    tool = Tool(name="get_weather", parameters=WEATHER["toolSpec"]["inputSchema"]["json"])
    first = _request(model=model, messages=[Message(role="user", content="Weather in Oslo?")], tools=[tool])
    _, events = _run(_deployment(sim.base_url), first)
    calls = [e.function for e in events if isinstance(e, ToolCallEvent)]
    assert [c.name for c in calls] == ["get_weather"]
    assert set(calls[0].parsed_arguments) == {"city", "unit"}
    assert events[-1].finish_reason == "tool_calls"
    follow_up = _request(
        model=model,
        messages=[
            *first.messages,
            Message(role="assistant", tool_calls=calls),
            Message(role="tool", tool_call_id=calls[0].id, content="12 C and sunny"),
        ],
        tools=[tool],
    )
    _, events = _run(_deployment(sim.base_url), follow_up)
    assert "".join(e.text for e in events if isinstance(e, Token)).startswith("The tool returned: 12 C and sunny")


def test_dialect_reasoning_and_signature_replay(sim: Any) -> None:
    claude = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
    request = _request(model=claude, reasoning=True)
    http = DIALECT.build_request(request, _deployment(sim.base_url), now=NOW)
    with httpx.Client(timeout=10) as client:
        raw = client.post(http.url, headers=http.headers, content=http.body).content
    decoder = DIALECT.response_decoder(request, _deployment(sim.base_url))
    events = decoder.feed(raw) + decoder.close()
    assert any(isinstance(e, Reasoning) for e in events) and isinstance(events[-1], Done)
    data = decoder.provider_data
    assert data and data["bedrock_reasoning"][0]["reasoningText"]["signature"]
    replay = _request(
        model=claude,
        reasoning=True,
        messages=[
            *request.messages,
            Message(role="assistant", content="ok", provider_data=data),
            Message(role="user", content="more"),
        ],
    )
    assert _run(_deployment(sim.base_url), replay)[0] == 200


def test_dialect_wrong_secret_maps_to_auth_failed(sim: Any) -> None:
    status, [error] = _run(_deployment(sim.base_url, aws_secret_access_key="wrong"), _request())
    assert (status, error.code, error.retryable) == (403, "AUTH_FAILED", False)
    assert "InvalidSignatureException" in error.message


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault.stream_error("rate_limit", after=2), "RATE_LIMIT"),
        (Fault.stream_error("overloaded", after=1), "OVERLOADED"),
        (Fault.drop_after(2), "PROVIDER_UNAVAILABLE"),
        (Fault.malformed_chunk(after=1), "PROVIDER_UNAVAILABLE"),
        (Fault.http(429), "RATE_LIMIT"),
        (Fault.http(500), "INTERNAL"),
        (Fault.overloaded(), "OVERLOADED"),
    ],
)
def test_dialect_sees_each_fault_as_a_retryable_error(fresh_sim: Any, fault: Fault, code: str) -> None:
    fresh_sim.set_faults(fault)
    _, events = _run(_deployment(fresh_sim.base_url), _request())
    error = events[-1]
    assert isinstance(error, Error)
    assert (error.code, error.retryable) == (code, True)
    assert sum(isinstance(e, (Done, Error)) for e in events) == 1


def test_restricted_models_reject_an_unknown_id_like_the_service() -> None:
    with serve("bedrock", models=["amazon.nova-micro-v1:0"]) as restricted:
        status, [error] = _run(_deployment(restricted.base_url), _request(model="us.does-not-exist-model-v1:0"))
    assert (status, error.code) == (400, "MODEL_NOT_FOUND")
    assert "The provided model identifier is invalid." in error.message


def test_dialect_lists_models_from_the_simulated_control_plane(sim: Any) -> None:
    deployment = _deployment(sim.base_url, options={"control_plane_url": sim.base_url})
    http = DIALECT.models_request(deployment, now=NOW)
    with httpx.Client(timeout=10) as client:
        response = client.get(http.url, headers=http.headers)
    assert response.status_code == 200
    assert "amazon.nova-lite-v1:0" in DIALECT.parse_models(response.content)


def test_simulator_module_does_not_import_the_providers() -> None:
    code = (
        "import sys, gtl_nb.sim.bedrock; "
        "bad = [m for m in sys.modules if m.startswith(('gtl_nb.providers', 'gtl_nb.engine'))]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_stream_frames_have_the_recorded_headers_and_payload_keys(sim: Any) -> None:
    recorded: dict[str, list[dict[str, Any]]] = {}
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "wire" / "bedrock"
    for name in ("converse-stream-tool-use.eventstream.jsonl", "converse-stream-text.eventstream.jsonl"):
        for line in (fixtures / name).read_text().splitlines():
            frame = json.loads(line)
            recorded.setdefault(frame["headers"][":event-type"], []).append(frame)
    tool = Tool(name="get_weather", parameters=WEATHER["toolSpec"]["inputSchema"]["json"])
    for request in (_request(), _request(tools=[tool])):
        http = DIALECT.build_request(request, _deployment(sim.base_url), now=NOW)
        with httpx.Client(timeout=10) as client:
            response = client.post(http.url, headers=http.headers, content=http.body)
        assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
        frames = EventStreamBuffer()
        frames.add_data(response.content)  # botocore checks both CRCs of every frame
        for message in frames:
            samples = recorded[message.headers[":event-type"]]
            assert message.headers == samples[0]["headers"]
            payload = json.loads(message.payload)
            union = set().union(*(s["payload"] for s in samples))
            common = set.intersection(*(set(s["payload"]) for s in samples))
            assert common <= set(payload) <= union
