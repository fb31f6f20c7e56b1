"""What each simulator refuses as its API does because of the model asked for or a name the API cannot take —
function names, images a model cannot see or the API cannot read, reasoning knobs a model lacks — and the
dated snapshot an alias is answered with. Each through the provider's official SDK, over loopback."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import anthropic
import boto3
import httpx
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors, types

from gtl_nb import sim
from gtl_nb.sim import base

from .conftest import fixture_json

USER = [{"role": "user", "content": "Hello"}]


def _png() -> str:
    """A real 1x1 PNG, base64."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    raw = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(raw).decode()


PNG = _png()
BMP = base64.b64encode(b"BM" + b"\x00" * 32).decode()


def _openai(s: sim.Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.base_url, api_key="sim-key", max_retries=0)


def _anthropic(s: sim.Simulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.base_url, api_key="sim-key", max_retries=0)


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


def _image_message(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


# -- OpenAI (and Azure, which shares its checks) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("bad name!", "invalid_value", "string does not match pattern. Expected a string that matches the pattern"),
        ("a.b", "invalid_value", "'^[a-zA-Z0-9_-]+$'"),
        (
            "x" * 65,
            "string_above_max_length",
            "Expected a string with maximum length 64, but got a string with length 65",
        ),
    ],
)
def test_openai_refuses_a_function_name_outside_its_pattern(name: str, code: str, words: str, serve_sim: Any) -> None:
    s = serve_sim("openai")
    with pytest.raises(openai.BadRequestError) as refused:
        _openai(s).chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[_tool("ok"), _tool(name)])  # type: ignore[list-item]
    error = refused.value
    assert (error.code, error.param, error.type) == (code, "tools[1].function.name", "invalid_request_error")
    assert words in error.message
    assert _openai(s).chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[_tool("x" * 64)]).choices  # type: ignore[list-item]


def test_openai_refuses_a_replayed_call_of_a_name_outside_its_pattern(serve_sim: Any) -> None:
    s = serve_sim("openai")
    call = {"id": "call_1", "type": "function", "function": {"name": "get weather", "arguments": "{}"}}
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        _openai(s).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert refused.value.param == "messages[1].tool_calls[0].function.name"


def test_an_openai_compatible_server_takes_any_function_name(serve_sim: Any) -> None:
    s = serve_sim("openai_compatible")
    assert _openai(s).chat.completions.create(model="local", messages=USER, tools=[_tool("bad name!")]).choices  # type: ignore[list-item]


def test_openai_refuses_reasoning_effort_to_a_model_that_does_not_reason(serve_sim: Any) -> None:
    s = serve_sim("openai")
    for model in ("gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo"):
        with pytest.raises(openai.BadRequestError) as refused:
            _openai(s).chat.completions.create(model=model, messages=USER, reasoning_effort="low")  # type: ignore[arg-type]
        error = refused.value
        assert (error.code, error.param) == ("unsupported_parameter", "reasoning_effort")
        assert error.body["message"] == "Unsupported parameter: 'reasoning_effort' is not supported with this model."
    for model in ("o4-mini", "gpt-5-mini"):
        assert _openai(s).chat.completions.create(model=model, messages=USER, reasoning_effort="low").choices  # type: ignore[arg-type]


def test_openai_refuses_an_image_to_a_model_that_cannot_see(serve_sim: Any) -> None:
    s = serve_sim("openai")
    with pytest.raises(openai.BadRequestError) as refused:
        _openai(s).chat.completions.create(
            model="gpt-3.5-turbo", messages=_image_message(f"data:image/png;base64,{PNG}")
        )  # type: ignore[arg-type]
    error = refused.value
    assert error.body["message"] == "Invalid content type. image_url is only supported by certain models."
    assert (error.param, error.code) == ("messages.[0].content.[1].type", None)
    assert (
        _openai(s)
        .chat.completions.create(model="gpt-4o-mini", messages=_image_message(f"data:image/png;base64,{PNG}"))
        .choices
    )  # type: ignore[arg-type]


def test_openai_refuses_an_image_type_it_cannot_read(serve_sim: Any) -> None:
    s = serve_sim("openai")
    with pytest.raises(openai.BadRequestError) as refused:
        _openai(s).chat.completions.create(model="gpt-4o-mini", messages=_image_message(f"data:image/bmp;base64,{BMP}"))  # type: ignore[arg-type]
    assert refused.value.code == "invalid_image_format"
    assert "['png', 'jpeg', 'gif', 'webp']" in refused.value.message


def test_azure_refuses_what_the_deployments_model_cannot_take(serve_sim: Any) -> None:
    s = serve_sim("azure")
    azure = openai.AzureOpenAI(azure_endpoint=s.base_url, api_key="sim-key", api_version="2024-10-21", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        azure.chat.completions.create(model="gpt-4o", messages=USER, reasoning_effort="low")  # type: ignore[arg-type]
    assert refused.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as misnamed:
        azure.chat.completions.create(model="gpt-4o", messages=USER, tools=[_tool("bad name!")])  # type: ignore[list-item]
    assert misnamed.value.param == "tools[0].function.name"


@pytest.mark.parametrize("name", ["nonstream-tool-call", "nonstream-finish-length", "nonstream-vision-base64"])
def test_openai_answers_an_alias_with_the_recorded_snapshot(name: str, serve_sim: Any) -> None:
    s = serve_sim("openai", models="*")
    asked = fixture_json("openai", f"{name}.request.json")["model"]
    recorded = fixture_json("openai", f"{name}.json")["model"]
    assert asked != recorded
    assert _openai(s).chat.completions.create(model=asked, messages=USER).model == recorded
    streamed = list(_openai(s).chat.completions.create(model=asked, messages=USER, stream=True))
    assert {chunk.model for chunk in streamed} == {recorded}
    assert _openai(s).chat.completions.create(model=recorded, messages=USER).model == recorded  # a dated id as asked


# -- Anthropic ------------------------------------------------------------------------------------------------


def test_anthropic_refuses_a_tool_name_outside_its_pattern(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    tools = [
        {"name": "ok", "input_schema": {"type": "object"}},
        {"name": "bad name!", "input_schema": {"type": "object"}},
    ]
    with pytest.raises(anthropic.BadRequestError) as refused:
        _anthropic(s).messages.create(model="claude-haiku-4-5", max_tokens=64, messages=USER, tools=tools)  # type: ignore[arg-type]
    assert refused.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error",
        "message": "tools.1.custom.name: String should match pattern '^[a-zA-Z0-9_-]{1,128}$'",
    }
    long_name = [{"name": "x" * 128, "input_schema": {"type": "object"}}]
    assert (
        _anthropic(s).messages.create(model="claude-haiku-4-5", max_tokens=64, messages=USER, tools=long_name).content
    )  # type: ignore[arg-type]


def test_anthropic_refuses_thinking_to_a_model_that_does_not_think(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    thinking = {"type": "enabled", "budget_tokens": 1024}
    for model in ("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"):
        with pytest.raises(anthropic.BadRequestError) as refused:
            _anthropic(s).messages.create(model=model, max_tokens=2048, messages=USER, thinking=thinking)  # type: ignore[arg-type]
        assert refused.value.body["error"]["message"] == "'claude-3-5-haiku-20241022' does not support thinking."  # type: ignore[index]
    assert _anthropic(s).messages.create(model="claude-3-5-haiku-latest", max_tokens=64, messages=USER).content
    answer = _anthropic(s).messages.create(model="claude-haiku-4-5", max_tokens=2048, messages=USER, thinking=thinking)  # type: ignore[arg-type]
    assert answer.content


def test_anthropic_refuses_an_image_type_it_cannot_read(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": BMP}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, image]}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        _anthropic(s).messages.create(model="claude-haiku-4-5", max_tokens=64, messages=messages)  # type: ignore[arg-type]
    assert refused.value.body["error"]["message"] == (  # type: ignore[index]
        "messages.0.content.1.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
        "'image/gif' or 'image/webp'"
    )


@pytest.mark.parametrize(
    "name", ["nonstream-vision-base64", "stream-vision-base64", "stream-server-tool-then-tool-use-fragments"]
)
def test_anthropic_answers_an_alias_with_the_recorded_model(name: str, serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    asked = fixture_json("anthropic", f"{name}.request.json")["model"]
    recorded = (
        fixture_json("anthropic", f"{name}.json")["model"]
        if name.startswith("nonstream")
        else {"claude-sonnet-4-5": "claude-sonnet-4-5-20250929", "claude-sonnet-4-6": "claude-sonnet-4-6"}[asked]
    )
    assert _anthropic(s).messages.create(model=asked, max_tokens=64, messages=USER).model == recorded
    with _anthropic(s).messages.stream(model=asked, max_tokens=64, messages=USER) as stream:  # type: ignore[arg-type]
        assert stream.get_final_message().model == recorded


def test_the_recorded_anthropic_streams_name_the_model_so(serve_sim: Any) -> None:
    """The table the test above reads for streamed recordings, checked against their bytes."""
    from .conftest import fixture_bytes

    assert b'"model":"claude-sonnet-4-5-20250929"' in fixture_bytes("anthropic", "stream-vision-base64.sse")
    assert b'"model":"claude-sonnet-4-6"' in fixture_bytes(
        "anthropic", "stream-server-tool-then-tool-use-fragments.sse"
    )


# -- Gemini ---------------------------------------------------------------------------------------------------


def _gemini(s: sim.Simulator) -> genai.Client:
    return genai.Client(api_key="sim-key", http_options=types.HttpOptions(base_url=s.base_url))


@pytest.mark.parametrize(
    ("model", "budget", "words"),
    [
        ("gemini-2.5-pro", 0, "Budget 0 is invalid. This model only works in thinking mode."),
        ("gemini-2.5-pro", 64, "The thinking budget (64) is invalid."),
        ("gemini-2.5-pro", 40000, "The thinking budget (40000) is invalid."),
        ("gemini-2.5-flash", 32768, "The thinking budget (32768) is invalid."),
        ("gemini-2.5-flash-lite", 256, "The thinking budget (256) is invalid."),
    ],
)
def test_gemini_refuses_a_thinking_budget_outside_the_models_range(
    model: str, budget: int, words: str, serve_sim: Any
) -> None:
    s = serve_sim("gemini")
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=budget))
    client = _gemini(s)
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model=model, contents="Hello", config=config)
    assert (refused.value.code, refused.value.status, refused.value.message) == (400, "INVALID_ARGUMENT", words)


@pytest.mark.parametrize(
    ("model", "budget"),
    [
        ("gemini-2.5-pro", 128),
        ("gemini-2.5-pro", 32768),
        ("gemini-2.5-pro", -1),
        ("gemini-2.5-flash", 0),
        ("gemini-2.5-flash", 24576),
        ("gemini-2.5-flash-lite", 0),
        ("gemini-2.5-flash-lite", 512),
    ],
)
def test_gemini_takes_a_budget_in_the_models_range(model: str, budget: int, serve_sim: Any) -> None:
    s = serve_sim("gemini")
    config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=budget))
    client = _gemini(s)
    assert client.models.generate_content(model=model, contents="Hello", config=config).text


def test_gemini_refuses_function_names_outside_its_rule(serve_sim: Any) -> None:
    s = serve_sim("gemini")
    declarations = [
        types.FunctionDeclaration(name=name, description="d") for name in ("ok.name:v1", "bad name!", "1st")
    ]
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=declarations)])
    client = _gemini(s)
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="Hello", config=config)
    message = refused.value.message or ""
    assert message.startswith("The GenerateContentRequest proto is invalid:\n")
    assert "tools[0].function_declarations[1].name: [FIELD_INVALID] Invalid function name." in message
    assert "tools[0].function_declarations[2].name" in message
    assert "function_declarations[0]" not in message


# -- Bedrock --------------------------------------------------------------------------------------------------


def test_bedrock_refuses_a_tool_name_outside_its_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    with sim.serve("bedrock") as s:
        client = boto3.client(
            "bedrock-runtime",
            endpoint_url=s.base_url,
            region_name=base.DEFAULT_AWS_REGION,
            aws_access_key_id=base.DEFAULT_AWS_ACCESS_KEY_ID,
            aws_secret_access_key=base.DEFAULT_AWS_SECRET_ACCESS_KEY,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        spec = {"inputSchema": {"json": {"type": "object", "properties": {}}}}
        tools = [{"toolSpec": {"name": "ok", **spec}}, {"toolSpec": {"name": "bad name!", **spec}}]
        messages = [{"role": "user", "content": [{"text": "Hello"}]}]
        with pytest.raises(ClientError) as refused:
            client.converse(modelId="us.amazon.nova-micro-v1:0", messages=messages, toolConfig={"tools": tools})
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationException"
        assert error["Message"] == (
            "1 validation error detected: Value 'bad name!' at 'toolConfig.tools.2.member.toolSpec.name' failed to "
            "satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
        )
        tools[1] = {"toolSpec": {"name": "fine-name_2", **spec}}
        assert client.converse(modelId="us.amazon.nova-micro-v1:0", messages=messages, toolConfig={"tools": tools})


# -- Ollama ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("think", [True, "high"])
def test_ollama_refuses_think_to_a_model_that_does_not_think(think: Any, serve_sim: Any) -> None:
    s = serve_sim("ollama")
    body = {"model": "llama3.1:8b", "messages": USER, "think": think, "stream": False}
    refused = httpx.post(f"{s.base_url}/api/chat", json=body)
    assert (refused.status_code, refused.json()) == (400, {"error": '"llama3.1:8b" does not support thinking'})
    for model, think_value in (("llama3.1:8b", False), ("qwen3:8b", True), ("gpt-oss:20b", "high")):
        body = {"model": model, "messages": USER, "think": think_value, "stream": False}
        assert httpx.post(f"{s.base_url}/api/chat", json=body).status_code == 200
    shown = httpx.post(f"{s.base_url}/api/show", json={"model": "llama3.1:8b"}).json()
    assert "thinking" not in shown["capabilities"]
    assert "thinking" in httpx.post(f"{s.base_url}/api/show", json={"model": "qwen3:8b"}).json()["capabilities"]
