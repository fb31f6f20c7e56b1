"""The OpenAI- and Anthropic-compatible endpoints, driven by the official ``openai`` and ``anthropic`` SDKs.

One in-process gateway (``serving`` of test_http) fronts every provider's simulator — OpenAI, Anthropic,
Gemini, Bedrock, Ollama — and each SDK, pointed at it, must get the very answer the embedded client gets
from the same simulators for the same request. Errors must come back as each SDK's own exception class,
and every completion request must leave exactly one ledger row, under the answer's id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pydantic
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.compat.models import find_model, model_ids
from gtl_nb.gateway.compat.runner import failover_code
from gtl_nb.protocol import ModelInfo, ProviderInfo, Tool
from gtl_nb.protocol.messages import Status
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY, write_toml
from tests.gateway.test_http import serving
from tests.ledger_wait import rows_when

PROVIDERS = ["openai", "anthropic", "gemini", "bedrock", "ollama"]
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
    "ollama": "llama3.1:8b",
}
SYSTEM = "Be brief."
PROMPT = "Tell me about the harbour of Bergen"
WEATHER = Tool(
    name="get_weather",
    description="Weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
)
OPENAI_TOOL = {
    "type": "function",
    "function": {"name": WEATHER.name, "description": WEATHER.description, "parameters": WEATHER.parameters},
}
ANTHROPIC_TOOL = {"name": WEATHER.name, "description": WEATHER.description, "input_schema": WEATHER.parameters}
# a 1x1 PNG
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
PIXEL_URL = f"data:image/png;base64,{PIXEL}"
TOKEN = "compat-dev-token"


def deployment(provider: str, url: str) -> dict[str, Any]:
    """The deployment settings of a provider's simulator, exactly as a real deployment would be configured."""
    if provider == "ollama":
        return {"base_url": url}
    if provider == "bedrock":
        keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
        return {"base_url": url, "region": "us-east-1", **keys}
    return {"api_key": SIM_KEY, "base_url": url}


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, sim.Simulator]]:
    simulators = {name: sim.serve(name, seed=3) for name in PROVIDERS}
    yield simulators
    for simulator in simulators.values():
        simulator.close()


@pytest.fixture(scope="module")
def providers(backends: dict[str, sim.Simulator]) -> dict[str, dict[str, Any]]:
    return {name: deployment(name, simulator.base_url) for name, simulator in backends.items()}


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compat") / "ledger.sqlite"


@pytest.fixture(scope="module")
def base_url(providers: dict[str, dict[str, Any]], ledger_path: Path) -> Iterator[str]:
    """The gateway in front of every simulator (no token), 64 KiB bodies at most."""
    tables: dict[str, dict[str, Any]] = {f"providers.{name}": settings for name, settings in providers.items()}
    tables["ledger"] = {"path": str(ledger_path)}
    tables["gateway"] = {"max_frame_bytes": 64 * 1024}
    with serving(write_toml(ledger_path.parent / "gtl.toml", tables)) as served:
        yield served.url


@pytest.fixture(scope="module")
def embedded(providers: dict[str, dict[str, Any]]) -> Iterator[gtl_nb.Client]:
    """The embedded client on the same simulators: what the gateway's answers must equal."""
    client = gtl_nb.connect(providers=providers, environ={})
    yield client
    client.close()


@pytest.fixture(scope="module")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="anything: auth is none", max_retries=0)


@pytest.fixture(scope="module")
def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="anything: auth is none", max_retries=0)


def target(provider: str) -> str:
    return f"{provider}:{MODELS[provider]}"


def chat(prompt: str = PROMPT) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def rows_of(ledger: Path, session_id: str) -> list[dict[str, Any]]:
    return rows_when(ledger, session_id=session_id)


# -- the OpenAI SDK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_gets_the_embedded_answer(provider, oai, embedded, ledger_path, backends):
    expected = embedded.complete(target(provider), PROMPT, system=SYSTEM)
    answer = oai.chat.completions.create(model=target(provider), messages=chat(), temperature=0.2, max_tokens=500)
    assert SYSTEM in backends[provider].requests[-1].body.decode()  # the system message went upstream too
    assert answer.object == "chat.completion" and answer.model == expected.model  # the model that served
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == expected.usage.tokens_in
    assert answer.usage.completion_tokens == expected.usage.tokens_out
    assert answer._request_id == answer.id  # x-request-id: the GTL session id, the ledger row's
    assert [row["status"] for row in rows_of(ledger_path, answer.id)] == ["ok"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_streams_the_embedded_answer(provider, oai, embedded, ledger_path):
    expected = embedded.complete(target(provider), PROMPT, system=SYSTEM)
    chunks = list(
        oai.chat.completions.create(
            model=target(provider), messages=chat(), stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.text
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.usage.tokens_out
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert [row["status"] for row in rows_of(ledger_path, chunks[0].id)] == ["ok"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_async_openai_sdk_gets_the_embedded_answer(provider, base_url, embedded):
    expected = embedded.complete(target(provider), PROMPT, system=SYSTEM).text

    async def both() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
            whole = await client.chat.completions.create(model=target(provider), messages=chat())
            pieces = []
            async for chunk in await client.chat.completions.create(
                model=target(provider), messages=chat(), stream=True
            ):
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
            return whole.choices[0].message.content, "".join(pieces)

    assert asyncio.run(both()) == (expected, expected)


PROMPT_DETAILS = {"cached_tokens", "cache_write_tokens", "audio_tokens"}
COMPLETION_DETAILS = {"reasoning_tokens", "audio_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_usage_has_one_shape_whichever_provider_answers(provider, oai):
    """Gemini's, Bedrock's and Ollama's answers left both details objects out (``None`` in the SDK:
    ``usage.prompt_tokens_details.cached_tokens`` raised), OpenAI's had them: now every answer, whole and
    the stream's usage chunk, carries both with every field OpenAI sends, 0 where the provider said nothing."""
    whole = oai.chat.completions.create(model=target(provider), messages=chat()).usage
    (streamed,) = [
        chunk.usage
        for chunk in oai.chat.completions.create(
            model=target(provider), messages=chat(), stream=True, stream_options={"include_usage": True}
        )
        if chunk.usage is not None
    ]
    for usage in (whole, streamed):
        assert usage.prompt_tokens_details.model_fields_set == PROMPT_DETAILS
        assert usage.completion_tokens_details.model_fields_set == COMPLETION_DETAILS
        assert usage.prompt_tokens_details.cached_tokens == 0 and usage.completion_tokens_details.audio_tokens == 0
        assert usage.completion_tokens_details.reasoning_tokens == 0 and usage.prompt_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_usage_has_one_shape_whichever_provider_answers(provider, oai):
    whole = oai.responses.create(model=target(provider), input=PROMPT).usage
    completed = [
        event.response.usage
        for event in oai.responses.create(model=target(provider), input=PROMPT, stream=True)
        if event.type == "response.completed"
    ]
    for usage in (whole, *completed):
        assert usage.input_tokens_details.model_fields_set == {"cached_tokens", "cache_write_tokens"}
        assert usage.output_tokens_details.model_fields_set == {"reasoning_tokens"}
        assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert len(completed) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_tool_call_round_trip(provider, oai, embedded):
    question = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = embedded.complete(target(provider), question, tools=[WEATHER])
    # streamed: the call comes as deltas (index, id, name, then the arguments), which the SDK reassembles
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in oai.chat.completions.create(
        model=target(provider), messages=question, tools=[OPENAI_TOOL], stream=True
    ):
        for delta_call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = calls.setdefault(delta_call.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta_call.id or ""
            call["name"] += (delta_call.function.name or "") if delta_call.function else ""
            call["arguments"] += (delta_call.function.arguments or "") if delta_call.function else ""
        finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
    assert finish == "tool_calls" and [call["name"] for call in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == first.tool_calls[0].parsed_arguments
    # the stream helper's final message: no text at all (None, as OpenAI streams a tool-only turn), not ""
    with oai.chat.completions.stream(model=target(provider), messages=question, tools=[OPENAI_TOOL]) as stream:
        assert stream.get_final_completion().choices[0].message.content is None
    # not streamed: the same call, then the tool's result goes back and the answer uses it
    answer = oai.chat.completions.create(
        model=target(provider), messages=question, tools=[OPENAI_TOOL], tool_choice="required"
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == json.loads(
        calls[0]["arguments"]
    )
    history = [
        *question,
        answer.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    follow = oai.chat.completions.create(model=target(provider), messages=history, tools=[OPENAI_TOOL])
    expected = embedded.complete(
        target(provider),
        [*question, first.message, {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert follow.choices[0].finish_reason == "stop"
    assert follow.choices[0].message.content == expected.text and "sunny, 21 C" in expected.text


@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_a_tool_call_id_another_provider_minted_reaches_a_provider_with_an_id_pattern(provider, oai, backends):
    call = {"id": "functions.get_weather:0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
    ]
    answer = oai.chat.completions.create(model=target(provider), messages=history, tools=[OPENAI_TOOL])
    assert "sunny, 21 C" in answer.choices[0].message.content
    assert "functions.get_weather:0" not in backends[provider].requests[-1].body.decode()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_sdk_image_part_reaches_the_provider(provider, oai, embedded, backends):
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": PIXEL_URL}},
    ]
    answer = oai.chat.completions.create(model=target(provider), messages=[{"role": "user", "content": content}])
    assert PIXEL in backends[provider].requests[-1].body.decode()  # the image went upstream, in the provider's format
    asked = {"role": "user", "content": "What is in this picture?", "images": [PIXEL_URL]}
    expected = embedded.complete(target(provider), [asked])
    assert answer.choices[0].message.content == expected.text


class City(pydantic.BaseModel):
    """A structured answer's shape (the SDKs' ``parse`` helpers take a pydantic model)."""

    name: str
    population: int


CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}


def sent_schema(provider: str, body: bytes) -> dict[str, Any]:
    """The JSON schema a provider's request body carries, in that provider's own form."""
    sent = json.loads(body)
    if provider == "ollama":
        return sent["format"]
    if provider == "gemini":
        return sent["generationConfig"]["responseJsonSchema"]
    if provider == "anthropic":
        return sent["output_config"]["format"]["schema"]
    if provider == "bedrock":
        return json.loads(sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"])
    return sent["response_format"]["json_schema"]["schema"]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "ollama", "gemini"])
def test_openai_sdk_structured_output_reaches_the_provider_and_parses(provider, oai, backends):
    # the schema goes upstream in the provider's own form (Anthropic: output_config.format; Bedrock's
    # Converse: outputConfig.textFormat), never dropped
    parsed = oai.chat.completions.parse(model=target(provider), messages=chat("Name a city"), response_format=City)
    assert isinstance(parsed.choices[0].message.parsed, City), parsed.choices[0].message.content
    assert set(sent_schema(provider, backends[provider].requests[-1].body)["properties"]) == {"name", "population"}
    with oai.chat.completions.stream(
        model=target(provider), messages=chat("Name a city"), response_format=City
    ) as stream:
        assert isinstance(stream.get_final_completion().choices[0].message.parsed, City)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "ollama", "gemini"])
def test_anthropic_sdk_structured_output_parses_whichever_provider_answers(provider, claude, backends):
    """``messages.parse(output_format=...)`` (``output_config.format``) through the gateway: the Ollama
    simulator answered prose to the ``format`` it was sent, so the parse failed for Ollama only."""
    question = [{"role": "user", "content": "Name a city"}]
    parsed = claude.messages.parse(model=target(provider), max_tokens=500, messages=question, output_format=City)
    assert isinstance(parsed.parsed_output, City), parsed.content
    assert set(sent_schema(provider, backends[provider].requests[-1].body)["properties"]) == {"name", "population"}


def test_a_response_format_a_provider_cannot_honour_is_refused_not_dropped(oai, claude):
    # answering in prose instead would break the caller's parser after a paid call
    with pytest.raises(openai.BadRequestError, match="json_object") as caught:
        oai.chat.completions.create(model=target("anthropic"), messages=chat(), response_format={"type": "json_object"})
    assert "response_format" in str(caught.value)
    with pytest.raises(openai.BadRequestError, match="Bedrock's Converse answers to a JSON Schema only"):
        oai.chat.completions.create(model=target("bedrock"), messages=chat(), response_format={"type": "json_object"})
    with pytest.raises(anthropic.BadRequestError, match=r"output_config\.format\.type"):
        claude.messages.create(
            model=target("openai"),
            max_tokens=200,
            messages=[{"role": "user", "content": "Name a city"}],
            output_config={"format": {"type": "xml", "schema": CITY_SCHEMA}},  # type: ignore[typeddict-item]
        )


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock"])
def test_anthropic_sdk_structured_output_reaches_the_provider(provider, claude, backends):
    message = claude.messages.create(
        model=target(provider),
        max_tokens=200,
        messages=[{"role": "user", "content": "Name a city"}],
        output_config={"format": {"type": "json_schema", "schema": CITY_SCHEMA}},
    )
    assert City.model_validate_json(message.content[0].text)  # type: ignore[union-attr]
    assert sent_schema(provider, backends[provider].requests[-1].body) == CITY_SCHEMA


def test_openai_sdk_lists_the_gateways_models(oai):
    listed = {model.id: model.owned_by for model in oai.models.list()}
    assert {"openai", "anthropic", "gemini", "bedrock", "echo"} <= set(listed.values())
    assert listed["openai:gpt-4o-mini"] == "openai" and listed["echo:echo"] == "echo"
    assert listed["gpt-4o-mini"] == "openai"  # one deployment lists it: the bare name is unambiguous
    assert oai.models.retrieve("openai:gpt-4o-mini").owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nobody:lists-this")


def test_a_bare_model_id_is_listed_once_owned_by_every_deployment_that_lists_it():
    """A request for ``m2`` goes to east or west (as the routing strategy orders them): the list has it, and
    ``GET /v1/models/m2`` finds it, as it finds ``m1``."""
    infos = [ProviderInfo("east", [ModelInfo("m1"), ModelInfo("m2")]), ProviderInfo("west", [ModelInfo("m2")])]
    assert model_ids(infos) == [
        ("east:m1", "east"),
        ("east:m2", "east"),
        ("west:m2", "west"),
        ("m1", "east"),
        ("m2", "east,west"),
    ]
    assert find_model(infos, "m2") == ("m2", "east,west")
    assert find_model(infos, "west:m2") == ("west:m2", "west")


def test_a_bare_model_two_deployments_serve_is_listed_retrieved_and_answered(tmp_path):
    """``gpt-4o-mini`` served by two deployments: chat answers it, so the list shows it (owned by both)
    and ``models.retrieve`` finds it, in each SDK's shape."""
    sims = [sim.serve("openai", seed=seed) for seed in (1, 2)]
    tables: dict[str, dict[str, Any]] = {
        f"providers.{name}": {**deployment("openai", simulator.base_url), "type": "openai", "models": ["gpt-4o-mini"]}
        for name, simulator in zip(("east", "west"), sims, strict=True)
    }
    tables["ledger"] = {"path": str(tmp_path / "ledger.sqlite")}
    try:
        with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
            client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="anything: auth is none", max_retries=0)
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=chat())
            assert answer.choices[0].message.content
            listed = {model.id: model.owned_by for model in client.models.list()}
            assert listed["gpt-4o-mini"] == "east,west" and listed["west:gpt-4o-mini"] == "west"
            assert client.models.retrieve("gpt-4o-mini").owned_by == "east,west"
            claude_sdk = anthropic.Anthropic(base_url=served.url, api_key="anything: auth is none", max_retries=0)
            assert claude_sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    finally:
        for simulator in sims:
            simulator.close()


# -- the Anthropic SDK -------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_gets_the_embedded_answer(provider, claude, embedded, ledger_path, backends):
    expected = embedded.complete(target(provider), PROMPT, system=SYSTEM)
    message = claude.messages.create(
        model=target(provider), max_tokens=500, system=SYSTEM, messages=[{"role": "user", "content": PROMPT}]
    )
    assert SYSTEM in backends[provider].requests[-1].body.decode()
    assert message.type == "message" and message.role == "assistant" and message.model == expected.model
    assert [block.type for block in message.content] == ["text"] and message.content[0].text == expected.text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == expected.usage.tokens_out
    assert message._request_id == message.id
    with claude.messages.stream(
        model=target(provider), max_tokens=500, system=SYSTEM, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == expected.text and len(pieces) > 1
    assert final.content[0].text == expected.text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == expected.usage.tokens_out
    assert final.usage.input_tokens == expected.usage.tokens_in - (expected.usage.cached_tokens_in or 0)
    for usage in (message.usage, final.usage):  # every count there, as the API writes them: clients add them
        total = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        assert total == expected.usage.tokens_in, usage
        assert usage.cache_creation is not None and usage.cache_creation.ephemeral_1h_input_tokens == 0
    for answered in (message.id, final.id):
        assert [row["status"] for row in rows_of(ledger_path, answered)] == ["ok"]


def test_anthropic_stream_events_come_in_the_documented_order(claude):
    with claude.messages.create(
        model=target("gemini"), max_tokens=100, messages=[{"role": "user", "content": "Hi"}], stream=True
    ) as events:
        kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert set(kinds[2:-3]) == {"content_block_delta"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_sdk_tool_use_round_trip(provider, claude, embedded):
    question = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = embedded.complete(target(provider), question, tools=[WEATHER])
    with claude.messages.stream(
        model=target(provider), max_tokens=500, messages=question, tools=[ANTHROPIC_TOOL], tool_choice={"type": "any"}
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [(block.type, block.name) for block in streamed.content] == [("tool_use", "get_weather")]
    assert streamed.content[0].input == first.tool_calls[0].parsed_arguments
    message = claude.messages.create(model=target(provider), max_tokens=500, messages=question, tools=[ANTHROPIC_TOOL])
    use = message.content[-1]
    assert message.stop_reason == "tool_use" and use.type == "tool_use" and use.input == streamed.content[0].input
    history = [
        *question,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
    ]
    follow = claude.messages.create(model=target(provider), max_tokens=500, messages=history, tools=[ANTHROPIC_TOOL])
    expected = embedded.complete(
        target(provider),
        [*question, first.message, {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert follow.stop_reason == "end_turn" and follow.content[0].text == expected.text
    assert "sunny, 21 C" in expected.text  # the tool's result reached the provider


def test_anthropic_sdk_image_block_reaches_the_provider(claude, backends):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}
    content = [image, {"type": "text", "text": "What is in this picture?"}]
    claude.messages.create(model=target("gemini"), max_tokens=100, messages=[{"role": "user", "content": content}])
    assert PIXEL in backends["gemini"].requests[-1].body.decode()


def test_anthropic_sdk_lists_the_gateways_models(claude):
    ids = [model.id for model in claude.models.list()]  # the SDK walks every page
    assert "openai:gpt-4o-mini" in ids and "gpt-4o-mini" in ids and "echo" in ids
    assert len(ids) == len(set(ids)) > 20
    # pages as the API pages them: limit, after_id, before_id, has_more (they were ignored: one page of all)
    first = claude.models.list(limit=5)
    assert [model.id for model in first.data] == ids[:5] and first.has_more and first.last_id == ids[4]
    following = claude.models.list(limit=5, after_id=first.last_id)
    assert [model.id for model in following.data] == ids[5:10]
    earlier = claude.models.list(limit=3, before_id=ids[5])
    assert [model.id for model in earlier.data] == ids[2:5] and earlier.has_more
    last = claude.models.list(limit=1000, after_id=ids[-3])
    assert [model.id for model in last.data] == ids[-2:] and not last.has_more
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        claude.models.list(limit=0)


def test_a_model_name_the_gateway_answers_to_can_be_retrieved(claude, oai):
    """The list shows the catalog's ids (``claude-sonnet-4-5-20250929``); a request may name the model by
    its alias (``claude-sonnet-4-5``), so retrieving it by that name finds the entry it stands for."""
    listed = {model.id for model in claude.models.list()}
    assert "claude-sonnet-4-5" not in listed  # (the alias itself is not listed)
    found = claude.models.retrieve("claude-sonnet-4-5")
    assert found.id in listed and found.id.startswith("claude-sonnet-4-5-")
    assert oai.models.retrieve("anthropic:claude-sonnet-4-5").id == f"anthropic:{found.id}"
    # a request for it may go to Anthropic or, failing over, to Bedrock: both own it, in that order
    assert oai.models.retrieve("claude-sonnet-4-5").owned_by == "anthropic,bedrock"
    for refused in ("claude-sonnet-9", "CLAUDE-SONNET-4-5", "gemini-2.5-flash-001"):  # names chat refuses too
        with pytest.raises(anthropic.NotFoundError):
            claude.models.retrieve(refused)
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("openai:claude-sonnet-4-5")  # not what that deployment lists


# -- errors in each SDK's own classes ----------------------------------------------------------------------


def test_an_unknown_model_is_not_found(oai, claude, ledger_path):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="openai:no-such-model", messages=chat())
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as streamed:  # streamed too: the status waits for the first answer event
        list(oai.chat.completions.create(model="openai:no-such-model", messages=chat(), stream=True))
    with pytest.raises(anthropic.NotFoundError) as refused:
        claude.messages.create(model="openai:no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert refused.value.body["error"]["type"] == "not_found_error"
    for error in (caught.value, streamed.value, refused.value):  # each is one session: one row, status error
        session_id = error.response.headers.get("x-request-id") or error.response.headers["request-id"]
        assert [row["status"] for row in rows_of(ledger_path, session_id)] == ["error"]


def test_a_request_gtl_cannot_express_is_bad_request(oai, claude):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), n=2)
    assert caught.value.param == "n"
    audio = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    with pytest.raises(openai.BadRequestError, match="input_audio"):
        oai.chat.completions.create(model=target("openai"), messages=[{"role": "user", "content": audio}])
    with pytest.raises(openai.BadRequestError, match="text only") as audio_out:  # message.audio would be None
        oai.chat.completions.create(model=target("openai"), messages=chat(), modalities=["text", "audio"])
    assert audio_out.value.param == "modalities"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: this field is required"):
        claude.post("/v1/messages", body={"model": target("openai"), "messages": []}, cast_to=object)


def test_stream_options_without_stream_is_refused_as_openai_refuses_it(oai, backends):
    """OpenAI answers ``stream_options`` on a request that does not stream with a 400 naming it; the gateway
    took it and answered, so an app that asked for a usage chunk never learnt it would get none."""
    sent = len(backends["openai"].requests)
    for stream in (False, None):  # said, or left to its default
        asked = {"stream": stream} if stream is not None else {}
        with pytest.raises(openai.BadRequestError, match="only allowed when stream is enabled") as caught:
            oai.chat.completions.create(
                model=target("openai"), messages=chat(), stream_options={"include_usage": True}, **asked
            )
        assert caught.value.status_code == 400 and caught.value.param == "stream_options"
        assert caught.value.type == "invalid_request_error"
    assert len(backends["openai"].requests) == sent  # refused before any session
    plain = oai.chat.completions.with_raw_response.create(
        model=target("openai"), messages=chat(), stream=False, extra_body={"stream_options": None}
    )
    assert plain.status_code == 200  # null says nothing


def test_stop_sequences_are_refused_as_each_api_refuses_them(oai, claude, backends, base_url):
    """OpenAI takes at most 4 stop sequences and answers more with a 400 naming ``stop``; Anthropic takes any
    number but none empty or of whitespace only. Each endpoint refuses what its API refuses; and a deployment
    whose API would refuse the request's stop sequences is never sent them: the engine refuses first, naming
    ``stop``, or fails over to a deployment of the request's list that takes them."""
    sent = {name: len(backends[name].requests) for name in ("openai", "anthropic")}
    five = ["<1>", "<2>", "<3>", "<4>", "<5>"]
    with pytest.raises(openai.BadRequestError, match="at most 4 stop sequences, but got 5") as caught:
        oai.chat.completions.create(model=target("anthropic"), messages=chat(), stop=five)  # whatever answers
    assert caught.value.status_code == 400 and caught.value.param == "stop"
    user = [{"role": "user", "content": "hi"}]
    for blank, said in (("", "must be non-empty"), ("\n", "must contain non-whitespace")):
        with pytest.raises(anthropic.BadRequestError, match=f"stop_sequences: each stop sequence {said}"):
            claude.messages.create(model=target("openai"), max_tokens=10, messages=user, stop_sequences=["END", blank])
    # what the endpoint takes but the deployment's API would refuse: refused before it is sent
    with pytest.raises(anthropic.BadRequestError, match="stop: OpenAI's Chat Completions API takes at most 4"):
        claude.messages.create(model=target("openai"), max_tokens=10, messages=user, stop_sequences=five)
    whitespace = r"stop: Anthropic's Messages API refuses .* whitespace only"
    with pytest.raises(openai.BadRequestError, match=whitespace) as by:
        oai.chat.completions.create(model=target("anthropic"), messages=chat(), stop=["\n"])
    assert by.value.param == "stop"  # the engine's refusal names its parameter as the endpoint's own does
    assert {name: len(backends[name].requests) for name in sent} == sent  # nothing reached either
    claude.messages.create(model=target("anthropic"), max_tokens=10, messages=user, stop_sequences=five * 2)
    assert json.loads(backends["anthropic"].requests[-1].body)["stop_sequences"] == five * 2
    # a list of deployments: the one whose API cannot take them is passed over at once
    request = {
        "type": "completion_request",
        "session_id": "stops",
        "model": MODELS["anthropic"],
        "providers": ["openai", "anthropic"],
        "stop": five,
        "stream": False,
        "messages": [{"role": "user", "content": "hi"}],
    }
    answered = httpx.post(f"{base_url}/v1/gtl", json=request)
    assert answered.status_code == 200 and answered.json()["events"][-1]["provider"] == "anthropic"
    assert len(backends["openai"].requests) == sent["openai"]


def test_logprobs_asked_for_are_refused_not_answered_with_null(oai):
    """Accepted and ignored, ``logprobs=True`` came back as ``choice.logprobs = None``: the app's next
    line, ``choice.logprobs.content``, failed with an ``AttributeError`` far from the cause."""
    with pytest.raises(openai.BadRequestError, match="no token log probabilities") as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), logprobs=True)
    assert caught.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="echo", messages=chat(), stream=True, top_logprobs=3)
    assert caught.value.param == "top_logprobs"
    asked_nothing = oai.chat.completions.create(model="echo", messages=chat(), logprobs=False, top_logprobs=0)
    assert asked_nothing.choices[0].logprobs is None


def test_tools_the_provider_would_run_itself_are_refused_not_dropped(oai, claude):
    """OpenAI's ``web_search_options`` and Anthropic's MCP connector (``mcp_servers``) were accepted and
    ignored: the model answered without searching or calling a tool, and the SDK could not tell."""
    with pytest.raises(openai.BadRequestError, match="no web search") as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), web_search_options={})
    assert caught.value.param == "web_search_options"
    server = {"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}
    with pytest.raises(anthropic.BadRequestError, match="mcp_servers: server-side MCP tools"):
        claude.beta.messages.create(
            model=target("anthropic"),
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            mcp_servers=[server],
            betas=["mcp-client-2025-04-04"],
        )


def test_a_model_name_longer_than_gtls_limit_is_refused_not_echoed(oai, claude):
    """``/v1/gtl`` takes names of at most 512 characters; the compatible endpoints did not check, and a
    3 MB name came back in the answer and went into a ledger row."""
    long_name = "echo" + "m" * 600
    with pytest.raises(openai.BadRequestError, match="at most 512 characters") as caught:
        oai.chat.completions.create(model=long_name, messages=chat())
    assert caught.value.param == "model" and long_name not in str(caught.value)
    with pytest.raises(anthropic.BadRequestError, match="at most 512 characters"):
        claude.messages.create(model=long_name, max_tokens=10, messages=[{"role": "user", "content": "hi"}])


def test_a_tool_choice_the_tools_cannot_give_is_a_bad_request_not_prose(oai, claude):
    # as OpenAI and Anthropic refuse it; answered in prose, the caller would wait for a call that never comes
    named = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(openai.BadRequestError, match="not among the request's tools"):
        oai.chat.completions.create(model="echo", messages=chat(), tools=[OPENAI_TOOL], tool_choice=named)
    with pytest.raises(openai.BadRequestError, match="has no tools"):
        oai.chat.completions.create(model=target("openai"), messages=chat(), tool_choice="required")
    with pytest.raises(anthropic.BadRequestError, match="not among the request's tools"):
        claude.messages.create(
            model=target("anthropic"),
            max_tokens=50,
            messages=[{"role": "user", "content": "hi"}],
            tools=[ANTHROPIC_TOOL],
            tool_choice={"type": "tool", "name": "nope"},
        )


def test_allowed_tools_narrow_what_the_model_may_call(oai, backends):
    """OpenAI's ``tool_choice: {"type": "allowed_tools", …}``: the tools it names reach the provider (the
    model may call those and no other), with its mode as the choice; a name no tool has is a 400."""
    time_function = {"name": "get_time", "description": "Time in a city", "parameters": {"type": "object"}}
    tools = [OPENAI_TOOL, {"type": "function", "function": time_function}]
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]},
    }
    answer = oai.chat.completions.create(
        model=target("openai"), messages=chat("Call get_weather and get_time"), tools=tools, tool_choice=allowed
    )
    assert {call.function.name for call in answer.choices[0].message.tool_calls} == {"get_time"}
    sent = json.loads(backends["openai"].requests[-1].body)
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_time"] and sent["tool_choice"] == "required"
    missing = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "nope"}}]},
    }
    with pytest.raises(openai.BadRequestError, match="names no tool of tools: 'nope'") as refused:
        oai.chat.completions.create(model=target("openai"), messages=chat(), tools=tools, tool_choice=missing)
    assert refused.value.param == "tool_choice.allowed_tools.tools"
    with pytest.raises(openai.BadRequestError, match='expected "auto" or "required"'):
        bad_mode = {
            "type": "allowed_tools",
            "allowed_tools": {"mode": "none", "tools": allowed["allowed_tools"]["tools"]},
        }
        oai.chat.completions.create(model=target("openai"), messages=chat(), tools=tools, tool_choice=bad_mode)


def test_one_tool_call_at_most_when_the_sdk_turns_parallel_calls_off(oai, claude, backends):
    """OpenAI's ``parallel_tool_calls: false`` and Anthropic's ``disable_parallel_tool_use`` reach the
    provider (an agent loop that runs one call at a time needs it), whichever SDK asked; a deployment
    whose API cannot be so limited refuses it (400) rather than answer with more calls."""
    time_tool = {"name": "get_time", "description": "Time in a city", "input_schema": {"type": "object"}}
    time_function = {"name": "get_time", "description": "Time in a city", "parameters": {"type": "object"}}
    openai_tools = [OPENAI_TOOL, {"type": "function", "function": time_function}]
    prompt = chat("Call get_weather and get_time for Paris")
    both = oai.chat.completions.create(model=target("openai"), messages=prompt, tools=openai_tools)
    assert len(both.choices[0].message.tool_calls) == 2
    for provider in ("openai", "anthropic"):
        one = oai.chat.completions.create(
            model=target(provider), messages=prompt, tools=openai_tools, parallel_tool_calls=False
        )
        assert [call.function.name for call in one.choices[0].message.tool_calls] == ["get_weather"], provider
    sent = json.loads(backends["openai"].requests[-1].body)
    assert sent["parallel_tool_calls"] is False
    sent = json.loads(backends["anthropic"].requests[-1].body)
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    message = claude.messages.create(
        model=target("openai"),
        max_tokens=300,
        messages=[{"role": "user", "content": "Call get_weather and get_time for Paris"}],
        tools=[ANTHROPIC_TOOL, time_tool],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert [block.name for block in message.content if block.type == "tool_use"] == ["get_weather"]
    with pytest.raises(openai.BadRequestError, match=r"- parallel_tool_calls: Gemini cannot limit"):
        oai.chat.completions.create(
            model=target("gemini"), messages=prompt, tools=openai_tools, parallel_tool_calls=False
        )


def test_a_deployment_that_cannot_keep_one_call_names_the_field_the_caller_sent(oai, claude, backends):
    """Bedrock's Converse has no way to limit an answer to one tool call: the 400 names the field each
    SDK sent — ``parallel_tool_calls`` (chat, Responses; OpenAI's ``param`` too), Anthropic's
    ``tool_choice.disable_parallel_tool_use`` — and says what to do, never a ``tool_choice`` the caller
    did not send. Nothing reaches the provider."""
    time_function = {"name": "get_time", "description": "Time in a city", "parameters": {"type": "object"}}
    tools = [OPENAI_TOOL, {"type": "function", "function": time_function}]
    sent = len(backends["bedrock"].requests)
    with pytest.raises(openai.BadRequestError) as chat_refusal:
        oai.chat.completions.create(
            model=target("bedrock"), messages=chat("Call both"), tools=tools, parallel_tool_calls=False
        )
    assert chat_refusal.value.param == "parallel_tool_calls"
    responses_tools = [{"type": "function", **OPENAI_TOOL["function"]}]
    with pytest.raises(openai.BadRequestError) as responses_refusal:
        oai.responses.create(model=target("bedrock"), input="Call it", tools=responses_tools, parallel_tool_calls=False)
    assert responses_refusal.value.param == "parallel_tool_calls"
    with pytest.raises(anthropic.BadRequestError) as messages_refusal:
        claude.messages.create(
            model=target("bedrock"),
            max_tokens=100,
            messages=[{"role": "user", "content": "Call it"}],
            tools=[ANTHROPIC_TOOL],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        )
    for refused, field in (
        (chat_refusal, "parallel_tool_calls"),
        (responses_refusal, "parallel_tool_calls"),
        (messages_refusal, "tool_choice.disable_parallel_tool_use"),
    ):
        body = refused.value.body
        message = (body.get("error") or body)["message"] if isinstance(body, dict) else str(refused.value)
        assert message.startswith(f"{field}: "), message
        assert "cannot limit an answer to one tool call" in message and "leave the limit out" in message
        assert message.count("tool_choice") == field.count("tool_choice"), message
    assert len(backends["bedrock"].requests) == sent


def test_echo_answers_a_structured_output_request_in_json_that_parses(oai):
    parsed = oai.chat.completions.parse(model="echo", messages=chat("Name a city"), response_format=City)
    assert isinstance(parsed.choices[0].message.parsed, City)
    plain = oai.chat.completions.create(model="echo", messages=chat(), response_format={"type": "json_object"})
    assert json.loads(plain.choices[0].message.content or "")["answer"].startswith("You said")


def test_sampling_values_outside_each_apis_range_are_bad_requests(oai, claude):
    # refused as the providers themselves refuse them (OpenAI: temperature 0-2; Anthropic: 0-1; top_p 0-1)
    with pytest.raises(openai.BadRequestError, match="temperature: expected a number from 0 to 2, not 5") as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), temperature=5)
    assert caught.value.param == "temperature"
    with pytest.raises(openai.BadRequestError, match=r"top_p: expected a number from 0 to 1, not -0\.5"):
        oai.chat.completions.create(model=target("openai"), messages=chat(), top_p=-0.5)
    body = {
        "model": target("openai"),
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 1.5,
    }
    with pytest.raises(anthropic.BadRequestError, match=r"temperature: expected a number from 0 to 1, not 1\.5"):
        claude.post("/v1/messages", body=body, cast_to=object)
    assert oai.chat.completions.create(model=target("openai"), messages=chat(), temperature=2, top_p=1).choices


def test_an_oversized_body_is_refused_in_each_format(oai, claude):
    big = "x" * (80 * 1024)  # over the gateway's 64 KiB
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(big))
    assert caught.value.code == "request_too_large" and "65536" in caught.value.message
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude.messages.create(model=target("openai"), max_tokens=10, messages=[{"role": "user", "content": big}])
    assert refused.value.status_code == 413 and refused.value.body["error"]["type"] == "request_too_large"


def test_a_body_sent_as_anything_but_json_is_refused_as_openai_refuses_it(base_url, ledger_path):
    """Any Content-Type was read as JSON: curl's default form type, text/plain (what a web page may send
    without asking) — OpenAI's API answers such a request 400 ``unsupported_content_type``."""
    bodies = {
        "/v1/chat/completions": json.dumps({"model": "echo", "messages": chat()}),
        "/v1/responses": json.dumps({"model": "echo", "input": PROMPT}),
        "/v1/messages": json.dumps(
            {"model": "echo", "max_tokens": 10, "messages": [{"role": "user", "content": PROMPT}]}
        ),
    }
    for path, body in bodies.items():
        for kind in ("application/x-www-form-urlencoded", "text/plain", "application/xml"):
            answer = httpx.post(f"{base_url}{path}", content=body, headers={"content-type": kind}, timeout=30)
            assert answer.status_code == 400, (path, kind, answer.text)
            error = answer.json()["error"]
            assert f"unsupported content type {kind!r}" in error["message"], error
            assert "Content-Type: application/json" in error["message"]
            if path != "/v1/messages":
                assert error["code"] == "unsupported_content_type"
            else:
                assert answer.json()["type"] == "error" and error["type"] == "invalid_request_error"
        for kind in ("application/json; charset=utf-8", "Application/JSON"):  # a parameter and the case aside
            answer = httpx.post(f"{base_url}{path}", content=body, headers={"content-type": kind}, timeout=30)
            assert answer.status_code == 200, (path, kind, answer.text)
    no_header = httpx.post(f"{base_url}/v1/chat/completions", content=bodies["/v1/chat/completions"], timeout=30)
    assert no_header.status_code == 200  # (no header at all is taken as JSON: no browser sends a body so)


def test_what_gtl_has_no_message_for_is_a_clear_not_found(oai, claude):
    with pytest.raises(openai.NotFoundError, match="GTL has no message for embeddings"):
        oai.embeddings.create(model="text-embedding-3-small", input="hello")
    with pytest.raises(openai.NotFoundError, match="/v1/completions"):
        oai.completions.create(model=target("openai"), prompt="hello")
    with pytest.raises(anthropic.NotFoundError, match="GTL has no message for it"):
        claude.messages.batches.list()


def test_an_sdk_given_a_base_url_ending_in_v1_twice_reads_an_error_saying_so(base_url):
    """``Anthropic(base_url=".../v1")`` posts to ``/v1/v1/messages``: its 404 came in GTL's shape, which the
    SDK printed as raw JSON. Each SDK now reads an error of its own kind, saying which base URL to give."""
    wrong_claude = anthropic.Anthropic(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        wrong_claude.messages.create(model="echo", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "ends in /v1 already" in caught.value.message and f"({base_url}/)" in caught.value.message
    wrong_openai = openai.OpenAI(base_url=f"{base_url}/v1/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="ends in /v1 already") as seen:
        wrong_openai.chat.completions.create(model="echo", messages=chat())
    assert seen.value.code == "unknown_url"
    root_openai = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)  # its paths then lack /v1
    with pytest.raises(openai.NotFoundError, match="needs /v1 at its end") as rooted:
        root_openai.responses.create(model="echo", input="hi")
    assert f"give it {base_url}/v1" in rooted.value.message


def test_a_wrong_method_on_a_compatible_path_is_refused_in_that_apis_shape(oai, claude, base_url):
    import httpx

    # the OpenAI SDK lists stored chat completions with GET /v1/chat/completions: a 405 it can read
    with pytest.raises(openai.APIStatusError, match="stored chat completions") as listed:
        oai.chat.completions.list()
    assert listed.value.status_code == 405
    assert listed.value.body["code"] == "method_not_allowed" and "POST /v1/chat/completions" in listed.value.message
    assert listed.value.response.headers["allow"] == "POST"
    with pytest.raises(openai.NotFoundError, match="stored chat completions"):
        oai.chat.completions.retrieve("chatcmpl-123")
    with pytest.raises(openai.NotFoundError, match="stored chat completions"):
        oai.chat.completions.delete("chatcmpl-123")
    # a browser's CORS preflight is told why no web page can call the gateway, not about stored completions
    preflight = httpx.options(f"{base_url}/v1/chat/completions", timeout=10)
    assert preflight.status_code == 405 and "answers no CORS preflight" in preflight.json()["error"]["message"]
    # and a method nobody sends: the same shapes, raw
    wrong = httpx.put(f"{base_url}/v1/messages", headers={"anthropic-version": "2023-06-01"}, timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["type"] == "error" and wrong.json()["error"]["type"] == "invalid_request_error"
    assert "use POST /v1/messages" in wrong.json()["error"]["message"]
    for headers, shape in (({}, "OpenAI"), ({"anthropic-version": "2023-06-01"}, "Anthropic")):
        refused = httpx.delete(f"{base_url}/v1/models/some-model", headers=headers, timeout=10)
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        body = refused.json()
        assert "use GET /v1/models/some-model" in body["error"]["message"]
        assert (body.get("type") == "error") == (shape == "Anthropic")  # Anthropic's body names itself an error
    for method in ("OPTIONS", "TRACE"):  # the methods nobody sends get the same shapes
        odd = httpx.request(method, f"{base_url}/v1/chat/completions/chatcmpl-1", timeout=10)
        assert odd.status_code == 404 and "stored chat completions" in odd.json()["error"]["message"]
        odd = httpx.request(method, f"{base_url}/v1/models", timeout=10)
        assert odd.status_code == 405 and odd.headers["allow"] == "GET, HEAD" and odd.json()["error"]["message"]
    assert "use GET /v1/models;" not in httpx.post(f"{base_url}/v1/models/", timeout=10).text  # no empty id offered
    # a trailing slash is redirected to the endpoint, as the router's own slash redirect does
    slash = httpx.post(f"{base_url}/v1/chat/completions/", json={}, timeout=10)
    assert slash.status_code == 307 and slash.headers["location"].endswith("/v1/chat/completions")
    # the right method still answers
    assert claude.models.list().data and oai.models.list().data


# -- a gateway that checks tokens, and providers that refuse -------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, sim.Simulator, Path]]:
    """A gateway with ``auth = "token"``, a ``limited`` deployment whose simulator takes scripted faults, a
    ``badkey`` one the simulator refuses, and no retries (a 429 reaches the caller at once)."""
    directory = tmp_path_factory.mktemp("guarded")
    simulator = sim.serve("openai", seed=3, api_key=SIM_KEY)
    tables = {
        "providers.limited": {"type": "openai", "api_key": SIM_KEY, "base_url": simulator.base_url},
        "providers.badkey": {"type": "openai", "api_key": "not-the-key", "base_url": simulator.base_url},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(directory / "ledger.sqlite")},
    }
    with serving(write_toml(directory / "gtl.toml", tables), token=TOKEN) as served:
        yield served.url, simulator, directory / "ledger.sqlite"
    simulator.close()


def test_a_refused_token_is_an_authentication_error(guarded, caplog):
    url = guarded[0]
    wrong_openai = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-token", max_retries=0)
    with caplog.at_level("WARNING", logger="gtl_nb"), pytest.raises(openai.AuthenticationError) as caught:
        wrong_openai.chat.completions.create(model=f"limited:{MODEL}", messages=chat())
    # the operator hears of it as on every transport: who was refused and why, never the token
    refusals = [record.getMessage() for record in caplog.records if "refused client" in record.getMessage()]
    assert refusals and "127.0.0.1" in refusals[0] and all("wrong-token" not in line for line in refusals)
    assert caught.value.code == "invalid_api_key" and "wrong-token" not in caught.value.message
    assert caught.value.type == "invalid_request_error"  # as OpenAI answers a wrong key
    assert "$GTL_NB_DEV_TOKEN" in caught.value.message and "API key" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        wrong_openai.models.list()
    wrong_claude = anthropic.Anthropic(base_url=url, api_key="wrong-token", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        wrong_claude.messages.create(
            model=f"limited:{MODEL}", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.body["error"]["type"] == "authentication_error"
    # the dev token is the API key: as a Bearer token (OpenAI), x-api-key or a Bearer auth_token (Anthropic)
    let_in = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
    assert let_in.chat.completions.create(model=f"limited:{MODEL}", messages=chat()).choices[0].message.content
    question = [{"role": "user", "content": "x"}]
    for client in (
        anthropic.Anthropic(base_url=url, api_key=TOKEN),
        anthropic.Anthropic(base_url=url, auth_token=TOKEN),
    ):
        assert client.messages.create(model=f"limited:{MODEL}", max_tokens=50, messages=question).content


def test_a_model_this_gateway_does_not_serve_is_not_found_and_named_for_its_client(guarded):
    """The client of a gateway cannot configure it: a model or provider it lacks is a 404 that says so
    (with what its operator could do), "did you mean" offers only what it serves, and the way to see
    what it serves is its model list — not the embedded client's ``providers=`` or ``gtl models``."""
    oai = openai.OpenAI(base_url=f"{guarded[0]}/v1", api_key=TOKEN, max_retries=0)
    claude = anthropic.Anthropic(base_url=guarded[0], api_key=TOKEN, max_retries=0)
    question = [{"role": "user", "content": "x"}]
    for model in ("claude-sonnet-4-5", "anthropic:claude-sonnet-4-5"):  # only openai deployments here
        with pytest.raises(openai.NotFoundError) as caught:
            oai.chat.completions.create(model=model, messages=chat())
        assert caught.value.code == "model_not_found"
        assert "this gateway has no anthropic provider" in caught.value.message
        assert "ANTHROPIC_API_KEY in the gateway's environment" in caught.value.message
        assert "GET /v1/models" in caught.value.message and "connect" not in caught.value.message
        with pytest.raises(anthropic.NotFoundError):
            claude.messages.create(model=model, max_tokens=10, messages=question)
    with pytest.raises(openai.NotFoundError) as typo:
        oai.chat.completions.create(model="claude-sonet-4-5", messages=chat())
    assert "did you mean" not in typo.value.message  # the near names are Anthropic's, which it cannot serve
    with pytest.raises(openai.NotFoundError) as near:
        oai.chat.completions.create(model="gpt-4o-mni", messages=chat())
    assert "did you mean 'gpt-4o-mini'" in near.value.message and "gtl models" not in near.value.message


def test_a_typo_after_a_deployment_prefix_is_the_providers_404_with_did_you_mean(oai, claude):
    """``anthropic:claude-sonnet-4-55`` is asked of the provider (a model list is rarely complete: a name
    it lacks may still be served), and its 404 comes back with the names like it this gateway serves."""
    with pytest.raises(openai.NotFoundError) as typo:
        oai.chat.completions.create(model="anthropic:claude-sonnet-4-55", messages=chat())
    assert typo.value.code == "model_not_found"
    assert "404 - model: claude-sonnet-4-55; did you mean 'anthropic:claude-sonnet-4-5'" in typo.value.message
    with pytest.raises(openai.NotFoundError, match=r"Did you mean 'openai:gpt-4o-mini'"):
        oai.responses.create(model="openai:gpt-4o-minii", input=PROMPT)
    with pytest.raises(anthropic.NotFoundError, match=r"did you mean 'anthropic:claude-sonnet-4-5'"):
        claude.messages.create(
            model="anthropic:claude-sonnet-4-55", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )


def test_a_typo_the_ollama_deployment_took_as_its_catch_all_keeps_its_words_and_gets_did_you_mean(oai, claude):
    """This gateway has an Ollama deployment, which takes any name no other deployment serves: a typo of
    another deployment's model reaches it, and its 404 keeps Ollama's words and adds what the same typo
    gets on a gateway without Ollama — the names like it and where to list them."""
    with pytest.raises(openai.NotFoundError) as typo:
        oai.chat.completions.create(model="gpt-4o-minii", messages=chat())
    assert typo.value.code == "model_not_found"
    said = typo.value.message
    assert 'model "gpt-4o-minii" not found, try pulling it first' in said
    assert "did you mean 'gpt-4o-mini'" in said and said.endswith("GET /v1/models lists what this gateway serves")
    with pytest.raises(openai.NotFoundError, match=r"did you mean 'openai:gpt-4o-mini'"):
        oai.responses.create(model="opena:gpt-4o-mini", input=PROMPT)
    with pytest.raises(anthropic.NotFoundError) as claude_typo:
        claude.messages.create(model="claude-sonet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert "try pulling it first" in str(claude_typo.value) and "did you mean 'claude-sonnet-4-5'" in str(
        claude_typo.value
    )


def test_an_empty_conversation_is_a_bad_request(oai, claude):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=target("openai"), messages=[])
    assert caught.value.param == "messages" and "at least one message" in caught.value.message
    with pytest.raises(anthropic.BadRequestError, match="at least one message"):
        claude.messages.create(model=target("openai"), max_tokens=10, messages=[])


def test_a_path_nobody_serves_lists_the_compatible_endpoints_first(base_url):
    import httpx

    answer = httpx.get(f"{base_url}/", timeout=10)
    assert answer.status_code == 404
    message = answer.json()["message"]
    assert message.index("POST /v1/chat/completions") < message.index("POST /v1/gtl")
    assert "POST /v1/messages" in message and "GET /v1/models" in message


def test_a_provider_rate_limit_is_a_rate_limit_error(guarded):
    url, simulator, ledger = guarded
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    claude = anthropic.Anthropic(base_url=url, api_key=TOKEN, max_retries=0)
    calls = [
        lambda: oai.chat.completions.create(model=f"limited:{MODEL}", messages=chat()),
        lambda: list(oai.chat.completions.create(model=f"limited:{MODEL}", messages=chat(), stream=True)),
        lambda: claude.messages.create(
            model=f"limited:{MODEL}", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ),
    ]
    classes = [openai.RateLimitError, openai.RateLimitError, anthropic.RateLimitError]
    for call, error_class in zip(calls, classes, strict=True):
        simulator.set_faults([sim.Fault.http(429, retry_after=7)])
        with pytest.raises(error_class) as caught:
            call()
        headers = caught.value.response.headers
        assert headers["retry-after"] == "7" and headers["x-should-retry"] == "true"
        # the provider names the operator's account ("in organization org-…"): the client need not learn it
        said = str(caught.value)
        assert "SimulatedAccount" not in said and "org-" not in said and "deployment 'limited'" in said
        session_id = headers.get("x-request-id") or headers["request-id"]
        assert [row["status"] for row in rows_of(ledger, session_id)] == ["error"]


def test_a_providers_exhausted_quota_stays_insufficient_quota_not_a_rate_limit(guarded):
    """OpenAI's ``429 insufficient_quota`` (the account's quota is used up: waiting will not help) reached the
    SDK as ``rate_limit_exceeded``, which a caller reads as "wait": it stays ``insufficient_quota``, type
    and code, as the gateway's own budgets answer, whole, streamed and on the Responses API."""
    url, simulator, _ledger = guarded
    oai = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    calls = [
        lambda: oai.chat.completions.create(model=f"limited:{MODEL}", messages=chat()),
        lambda: list(oai.chat.completions.create(model=f"limited:{MODEL}", messages=chat(), stream=True)),
        lambda: oai.responses.create(model=f"limited:{MODEL}", input="hi"),
    ]
    for call in calls:
        simulator.set_faults([sim.Fault.http(429, kind="quota")])
        with pytest.raises(openai.RateLimitError) as caught:
            call()
        assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert "quota with it is used up" in caught.value.message
    simulator.set_faults([sim.Fault.http(429)])  # a rate limit is still one
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model=f"limited:{MODEL}", messages=chat())
    assert limited.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [400, 402])
def test_an_anthropic_account_out_of_credit_is_a_billing_error_not_a_bad_request(claude, oai, backends, status):
    """Anthropic's "Your credit balance is too low" (a 400 ``invalid_request_error``) and its 402
    ``billing_error`` reached the Anthropic SDK as a 403 ``permission_error``: the account's credit, not a
    permission and not the request. It is Anthropic's own word now — 402 ``billing_error`` (the SDK's
    ``PaymentRequiredError``), never retried — whole and streamed; the OpenAI SDK gets OpenAI's word for
    the same, ``insufficient_quota``."""
    simulator = backends["anthropic"]
    messages = [{"role": "user", "content": "hi"}]
    calls = [
        lambda: claude.messages.create(model=target("anthropic"), max_tokens=50, messages=messages),
        lambda: list(claude.messages.create(model=target("anthropic"), max_tokens=50, messages=messages, stream=True)),
    ]
    try:
        for call in calls:
            simulator.set_faults([sim.Fault.http(status, kind="billing")])
            with pytest.raises(anthropic.APIStatusError) as caught:
                call()
            assert caught.value.status_code == 402 and type(caught.value).__name__ == "PaymentRequiredError"
            assert caught.value.body["error"]["type"] == "billing_error", caught.value.body
            assert caught.value.response.headers["x-should-retry"] == "false"
            assert "quota with it is used up" in caught.value.body["error"]["message"]
        simulator.set_faults([sim.Fault.http(status, kind="billing")])
        with pytest.raises(openai.RateLimitError) as openai_caught:
            oai.chat.completions.create(model=target("anthropic"), messages=chat())
        assert openai_caught.value.code == "insufficient_quota"
        simulator.set_faults([sim.Fault.http(400)])  # a bad request is still one
        with pytest.raises(anthropic.BadRequestError) as bad:
            claude.messages.create(model=target("anthropic"), max_tokens=50, messages=messages)
        assert bad.value.body["error"]["type"] == "invalid_request_error"
    finally:
        simulator.set_faults(None)


def test_the_gateways_own_block_is_a_rate_limit_not_a_bill(tmp_path):
    """A principal the gateway lets send nothing (``requests_per_minute = 0``) is refused with a
    non-retryable ``RATE_LIMIT`` of the gateway's own: no provider's account ran out of credit, so the
    Anthropic SDK gets a 429 ``rate_limit_error``, as for every other limit of the gateway's, not 402."""
    tables = {"providers.echo": {}, "ledger": {"path": str(tmp_path / "ledger.sqlite")}}
    tables["budgets"] = {"requests_per_minute": 0}
    with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
        claude = anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as caught:
            claude.messages.create(model="echo", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429 and caught.value.body["error"]["type"] == "rate_limit_error"


def test_a_provider_refusing_the_gateways_key_is_a_server_error(guarded):
    oai = openai.OpenAI(base_url=f"{guarded[0]}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(model=f"badkey:{MODEL}", messages=chat())
    # the caller's own key was fine: not a 401, and retrying will not help
    assert caught.value.status_code == 502 and caught.value.response.headers["x-should-retry"] == "false"
    told = str(caught.value)
    assert "refused the gateway's own credentials" in told and "your token was accepted" in told


# -- ledger rows and disconnects -----------------------------------------------------------------------------


def test_a_client_leaving_mid_stream_cancels_the_session(write_config, tmp_path, sims, relay_to):
    ledger = tmp_path / "rows.sqlite"
    relay = relay_to(sims.slow)
    config = write_config(
        ledger=ledger, providers={"slow": {"type": "openai", "api_key": SIM_KEY, "base_url": relay.url + "/v1"}}
    )
    with serving(config) as served:
        oai = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        stream = oai.chat.completions.create(model=f"slow:{MODEL}", messages=chat(LONG_PROMPT), stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()
        assert relay.cut.wait(10)  # the gateway closed the upstream response while it still ran
        session_id = chunk.id
        with anthropic.Anthropic(base_url=served.url, api_key="unused").messages.stream(
            model=f"slow:{MODEL}", max_tokens=500, messages=[{"role": "user", "content": LONG_PROMPT}]
        ) as events:
            next(iter(events.text_stream))
            message_id = events.current_message_snapshot.id
        relay.cut.clear()
        with oai.responses.stream(model=f"slow:{MODEL}", input=LONG_PROMPT) as response_events:  # the Responses API
            response_id = next(event for event in response_events if event.type == "response.created").response.id
            next(event for event in response_events if event.type == "response.output_text.delta")
        assert relay.cut.wait(10)
    # the listener has stopped: every row is complete
    assert [row["status"] for row in rows_of(ledger, session_id)] == ["cancelled"]
    assert [row["status"] for row in rows_of(ledger, message_id)] == ["cancelled"]
    assert [row["status"] for row in rows_of(ledger, response_id)] == ["cancelled"]


def test_every_request_leaves_exactly_one_row(oai, claude, ledger_path):
    before = len(Ledger(ledger_path).rows())
    ids = [
        oai.chat.completions.create(model=target("openai"), messages=chat()).id,
        claude.messages.create(model=target("gemini"), max_tokens=50, messages=[{"role": "user", "content": "x"}]).id,
    ]
    with oai.chat.completions.create(model=target("anthropic"), messages=chat(), stream=True) as left_early:
        ids.append(next(iter(left_early)).id)
    with claude.messages.stream(
        model=target("ollama"), max_tokens=50, messages=[{"role": "user", "content": "x"}]
    ) as s:
        ids.append(s.get_final_message().id)
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="openai:no-such-model", messages=chat())
    ids.append(caught.value.response.headers["x-request-id"])
    rows = rows_when(ledger_path, before + len(ids))
    mine = [row for row in rows if row["session_id"] in set(ids)]
    assert len(mine) == len(ids) == len(set(ids)) and len(rows) - before == len(ids)
    assert all(len(rows_of(ledger_path, session_id)) == 1 for session_id in ids)


def test_a_failure_after_the_answer_began_ends_the_stream_with_that_error_not_a_failover(tmp_path):
    """Two deployments serve the model; the first drops its stream after a few chunks. A compatible stream
    cannot take back what it sent, so the engine does not fail over (a second answer could never reach the
    client): the stream ends with the format's error event, and the ledger row, the audit record and the
    metrics name the deployment that failed — not the second, which is never called."""
    first = sim.serve("openai", seed=3, api_key=SIM_KEY)
    second = sim.serve("openai", seed=3, api_key=SIM_KEY)
    tables = {
        "providers.first": {"type": "openai", "api_key": SIM_KEY, "base_url": first.base_url, "models": [MODEL]},
        "providers.second": {"type": "openai", "api_key": SIM_KEY, "base_url": second.base_url, "models": [MODEL]},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    try:
        with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
            oai = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
            first.set_faults([sim.Fault.drop_after(3)])
            chunks = []
            with pytest.raises(openai.APIError, match="ended its answer early"):
                for chunk in oai.chat.completions.create(model=MODEL, messages=chat(LONG_PROMPT), stream=True):
                    chunks.append(chunk)
            assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)
            claude = anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0)
            first.set_faults([sim.Fault.drop_after(3)])
            streaming = claude.messages.stream(
                model=MODEL, max_tokens=500, messages=[{"role": "user", "content": LONG_PROMPT}]
            )
            with pytest.raises(anthropic.APIStatusError, match="ended its answer early"), streaming as stream:
                for _ in stream.text_stream:
                    message_id = stream.current_message_snapshot.id
            metrics = httpx.get(f"{served.url}/metrics").text
        assert second.requests == []  # never called: its answer would have had nowhere to go
    finally:
        first.close()
        second.close()
    for session_id in (chunks[0].id, message_id):
        rows = rows_of(tmp_path / "ledger.sqlite", session_id)
        assert [(row["status"], row["deployment"], row["failover_path"]) for row in rows] == [
            ("error", "first", ["first"])
        ], rows
    assert 'provider="second"' not in metrics


RECORDED = Path(__file__).parents[1] / "fixtures" / "wire"


class _Recorded(BaseHTTPRequestHandler):
    """An upstream that answers every POST with one recorded answer of the real API (``server.answer``)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorded() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "kind, fixture, asked, served",
    [
        ("openai", "openai/nonstream-finish-length.json", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("anthropic", "anthropic/nonstream-vision-url.json", "claude-haiku-4-5", "claude-haiku-4-5-20251001"),
    ],
)
def test_an_answer_names_the_model_that_served_it_as_the_real_apis_do(tmp_path, recorded, kind, fixture, asked, served):
    """OpenAI and Anthropic answer a model's alias with the dated snapshot that served it; so does each
    compatible endpoint, whichever API the deployment speaks and whatever prefix routed the request."""
    recorded.answer = (RECORDED / fixture).read_bytes()
    url = f"http://127.0.0.1:{recorded.server_address[1]}"
    tables = {
        "providers.upstream": {"type": kind, "api_key": SIM_KEY, "base_url": url, "models": [asked]},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    with serving(write_toml(tmp_path / "gtl.toml", tables)) as served_at:
        oai = openai.OpenAI(base_url=f"{served_at.url}/v1", api_key="unused", max_retries=0)
        claude = anthropic.Anthropic(base_url=served_at.url, api_key="unused", max_retries=0)
        for model in (asked, f"upstream:{asked}"):
            answer = oai.chat.completions.create(model=model, messages=chat())
            message = claude.messages.create(model=model, max_tokens=500, messages=[{"role": "user", "content": "x"}])
            assert (answer.model, message.model) == (served, served), model


def test_an_overload_mid_answer_reaches_each_sdk_as_that_apis_overload(tmp_path):
    """Anthropic's ``overloaded_error`` event after the answer began: alone, or moving the engine to a
    twin deployment (a failover the stream cannot carry), each stream ends with the error type its API
    gives an overload — as the table answers it before the answer began — not a generic server error."""
    simulator = sim.serve("anthropic", seed=3, api_key=SIM_KEY)
    twin = {"type": "anthropic", "api_key": SIM_KEY, "base_url": simulator.base_url, "models": [MODELS["anthropic"]]}
    tables = {
        "providers.first": twin,
        "providers.second": twin,
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    question = [{"role": "user", "content": LONG_PROMPT}]
    try:
        with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
            claude = anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0)
            oai = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
            for model, faults in ((f"first:{MODELS['anthropic']}", 1), (MODELS["anthropic"], 2)):
                simulator.set_faults([sim.Fault.stream_error("overloaded", after=4)] * faults)
                streaming = claude.messages.stream(model=model, max_tokens=500, messages=question)
                pieces: list[str] = []
                with pytest.raises(anthropic.APIStatusError) as heard, streaming as stream:
                    pieces.extend(stream.text_stream)
                assert pieces and heard.value.status_code == 200  # in the stream, after the answer began
                assert heard.value.body["error"]["type"] == "overloaded_error", (model, heard.value.body)
                simulator.set_faults([sim.Fault.stream_error("overloaded", after=4)] * faults)
                with pytest.raises(openai.APIError) as told:
                    for _ in oai.chat.completions.create(model=model, messages=question, stream=True):
                        pass
                assert (told.value.type, told.value.code) == ("server_error", "overloaded"), (model, told.value.body)
    finally:
        simulator.close()


def test_a_failover_naming_no_gtl_code_ends_the_stream_as_provider_unavailable():
    def failover(reason: str | None) -> Status:
        return Status(session_id="s", state="failover", reason=reason)

    assert failover_code(failover("OVERLOADED: the provider of deployment 'a' is overloaded")) == "OVERLOADED"
    assert failover_code(failover("TIMEOUT: stream stalled")) == "TIMEOUT"
    for reason in (None, "", "the deployment failed", "overloaded: lower case", "NOT_A_CODE: x"):
        assert failover_code(failover(reason)) == "PROVIDER_UNAVAILABLE"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_hears_which_stop_sequence_ended_the_answer(claude, stream):
    def ask(provider: str) -> Any:
        arguments = {
            "model": target(provider),
            "max_tokens": 200,
            "stop_sequences": ["harbour"],
            "messages": [{"role": "user", "content": PROMPT}],
        }
        if not stream:
            return claude.messages.create(**arguments)
        with claude.messages.stream(**arguments) as events:
            return events.get_final_message()

    answer = ask("anthropic")
    assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "harbour")
    assert "harbour" not in answer.content[0].text
    other = ask("openai")  # OpenAI's API does not say whether a sequence stopped it
    assert (other.stop_reason, other.stop_sequence) == ("end_turn", None)
    assert "harbour" not in other.content[0].text


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_hears_which_stop_sequence_ended_an_echo_answer(claude, stream):
    """The offline model a user first tries stop_sequences on says which one cut it, as Anthropic does."""
    arguments = {
        "model": "echo",
        "max_tokens": 200,
        "stop_sequences": ["zzz", "said"],
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream:
        with claude.messages.stream(**arguments) as events:
            answer = events.get_final_message()
    else:
        answer = claude.messages.create(**arguments)
    assert (answer.stop_reason, answer.stop_sequence, answer.content[0].text) == ("stop_sequence", "said", "You ")
