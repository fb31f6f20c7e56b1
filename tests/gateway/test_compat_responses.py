"""``POST /v1/responses`` (OpenAI's Responses API), driven by the official ``openai`` SDK.

The gateway of test_compat fronts every provider's simulator; ``client.responses.create`` and
``client.responses.stream`` must get the very answer the embedded client gets from the same simulator
for the same request, whichever provider answers, with a ledger row under the response's id. What the
gateway cannot honour is the SDK's ``BadRequestError`` naming the parameter, before any provider is
called; what it stores none of (a response to retrieve) is a ``NotFoundError`` saying so."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.resources.responses.responses import Responses
from openai.types.responses import Response, ResponseStreamEvent

from gtl_nb import sim
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.compat import responses_request
from gtl_nb.gateway.compat.openai import error_fields
from gtl_nb.gateway.compat.responses_response import ResponseEventEncoder, response_object
from gtl_nb.protocol.messages import Done, Error, Token, Usage
from gtl_nb.protocol.session import Transcript
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY, write_toml
from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    CITY_SCHEMA,
    MODELS,
    PIXEL,
    PIXEL_URL,
    PROMPT,
    PROVIDERS,
    SYSTEM,
    TOKEN,
    WEATHER,
    City,
    backends,
    base_url,
    embedded,
    guarded,
    ledger_path,
    oai,
    providers,
    rows_of,
    sent_schema,
    target,
)
from tests.gateway.test_compat_strict import sdk_fields, sent
from tests.gateway.test_http import serving
from tests.ledger_wait import rows_when

TOOL = {
    "type": "function",
    "name": WEATHER.name,
    "description": WEATHER.description,
    "parameters": WEATHER.parameters,
}
QUESTION = "What is the weather in Oslo?"
STREAM_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
LIFECYCLE = ["response.created", "response.in_progress"]
TEXT_ITEM_OPEN = ["response.output_item.added", "response.content_part.added"]
TEXT_ITEM_CLOSE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


def kinds(events: list[Any]) -> list[str]:
    """The event types, consecutive text deltas as one (their number is the provider's)."""
    said: list[str] = []
    for event in events:
        if not (event.type == "response.output_text.delta" and said and said[-1] == event.type):
            said.append(event.type)
    return said


# -- answers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_create_gets_the_embedded_answer(provider, oai, embedded, ledger_path, backends):
    expected = embedded.complete(target(provider), PROMPT, system=SYSTEM)
    answer = oai.responses.create(
        model=target(provider), instructions=SYSTEM, input=PROMPT, temperature=0.2, max_output_tokens=500
    )
    assert SYSTEM in backends[provider].requests[-1].body.decode()  # the instructions went upstream
    assert answer.object == "response" and answer.status == "completed" and answer.id.startswith("resp_")
    assert answer.output_text == expected.text and answer.model == expected.model  # the model that served
    [message] = answer.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.status == "completed" and message.content[0].annotations == []
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
        expected.usage.tokens_in,
        expected.usage.tokens_out,
    )
    assert answer.usage.total_tokens == expected.usage.tokens_in + expected.usage.tokens_out
    assert answer.usage.input_tokens_details.cached_tokens == (expected.usage.cached_tokens_in or 0)
    # the request's settings, echoed; nothing is stored
    assert (answer.instructions, answer.temperature, answer.max_output_tokens) == (SYSTEM, 0.2, 500)
    assert answer.store is False and answer.error is None and answer.incomplete_details is None
    assert answer.tools == [] and answer.tool_choice == "auto" and answer.parallel_tool_calls is True
    assert answer._request_id == answer.id  # x-request-id: the GTL session id, the ledger row's
    assert [row["status"] for row in rows_of(ledger_path, answer.id)] == ["ok"]


def test_input_items_of_every_role_reach_the_provider(oai, backends):
    history = [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "input_text", "text": "Remember the word tangerine."}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Noted: tangerine.", "annotations": []}]},
        {"type": "message", "role": "user", "content": "Which word?"},
    ]
    answer = oai.responses.create(model=target("anthropic"), input=history, metadata={"run": "7"}, user="u-1")
    sent_body = json.loads(backends["anthropic"].requests[-1].body)
    assert sent_body["system"] in ("Answer in English.", [{"type": "text", "text": "Answer in English."}])
    roles = [message["role"] for message in sent_body["messages"]]
    assert roles == ["user", "assistant", "user"] and "Noted: tangerine." in json.dumps(sent_body["messages"][1])
    assert answer.output_text and answer.metadata == {"run": "7"} and answer.user == "u-1"


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_an_input_image_reaches_the_provider(provider, oai, embedded, backends):
    content = [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": PIXEL_URL, "detail": "auto"},
    ]
    answer = oai.responses.create(model=target(provider), input=[{"role": "user", "content": content}])
    assert PIXEL in backends[provider].requests[-1].body.decode()  # in the provider's own format
    asked = {"role": "user", "content": "What is in this picture?", "images": [PIXEL_URL]}
    assert answer.output_text == embedded.complete(target(provider), [asked]).text


# -- streams -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_both_sdk_stream_entry_points_get_the_embedded_answer(provider, oai, embedded, ledger_path):
    expected = embedded.complete(target(provider), PROMPT, system=SYSTEM)
    streamed = oai.responses.create(model=target(provider), instructions=SYSTEM, input=PROMPT, stream=True)
    events = list(streamed)
    assert kinds(events) == [*LIFECYCLE, *TEXT_ITEM_OPEN, "response.output_text.delta", *TEXT_ITEM_CLOSE,
                             "response.completed"]  # fmt: skip
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(event.delta for event in deltas) == expected.text
    item_id = events[2].item.id
    assert all(event.item_id == item_id for event in deltas) and events[-4].text == expected.text
    final = events[-1].response
    assert final.id == events[0].response.id and final.status == "completed" and final.output_text == expected.text
    assert final.model == expected.model and final.usage.output_tokens == expected.usage.tokens_out
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert streamed.response.headers["x-request-id"] == final.id  # the ledger row's session id
    assert [row["status"] for row in rows_of(ledger_path, final.id)] == ["ok"]
    # the SDK's stream helper: its text deltas, and the final response
    with oai.responses.stream(model=target(provider), instructions=SYSTEM, input=PROMPT) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        whole = stream.get_final_response()
    assert "".join(texts) == whole.output_text == expected.text and whole.status == "completed"
    assert whole.usage.input_tokens == expected.usage.tokens_in


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_function_tool_loop_round_trips(provider, oai, embedded, backends):
    """function_call → function_call_output → the answer that uses it, whichever provider answers."""
    question = [{"role": "user", "content": QUESTION}]
    first = embedded.complete(target(provider), question, tools=[WEATHER])
    answer = oai.responses.create(model=target(provider), input=QUESTION, tools=[TOOL], tool_choice="required")
    [call] = [item for item in answer.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.id.startswith("fc_") and call.status == "completed"
    assert json.loads(call.arguments) == first.tool_calls[0].parsed_arguments and call.call_id
    assert answer.tools[0].name == "get_weather" and answer.tool_choice == "required"
    # the whole output goes back as input, as the Responses API guide does it, with the tool's result
    history = [
        *question,
        *answer.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    follow = oai.responses.create(model=target(provider), input=history, tools=[TOOL])
    assert call.call_id not in ("", None) and "sunny, 21 C" in backends[provider].requests[-1].body.decode()
    expected = embedded.complete(
        target(provider),
        [*question, first.message, {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert follow.status == "completed" and follow.output_text == expected.text and "sunny, 21 C" in expected.text
    # streamed: the call's item, its arguments as delta then done, and the stream helper's final response
    events = list(oai.responses.create(model=target(provider), input=QUESTION, tools=[TOOL], stream=True))
    calls = [event for event in events if event.type.startswith("response.function_call_arguments")]
    assert [event.type for event in calls] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    assert json.loads(calls[-1].arguments) == first.tool_calls[0].parsed_arguments
    assert [event.sequence_number for event in events] == list(range(len(events)))
    with oai.responses.stream(model=target(provider), input=QUESTION, tools=[TOOL]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output if item.type == "function_call"] == ["function_call"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_loop_whose_call_comes_before_the_assistants_text_reaches_every_provider_paired(provider, oai, backends):
    """LiteLLM sends a turn of text and calls as ``function_call`` items first, then the assistant's
    ``message`` (BerriAI/litellm 1.82.3's Anthropic-to-Responses adapter); the Responses API takes it. Each
    provider, whose API wants a call's result in the message right after it, must still get a history it
    takes (OpenAI's Chat Completions refused this one: 'An assistant message with 'tool_calls' must be
    followed by tool messages …')."""
    answer = oai.responses.create(model=target(provider), input=QUESTION, tools=[TOOL], tool_choice="required")
    [call] = [item for item in answer.output if item.type == "function_call"]
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking it up."}]}
    history = [
        {"role": "user", "content": QUESTION},
        call,
        said,
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    follow = oai.responses.create(model=target(provider), input=history, tools=[TOOL])
    assert follow.status == "completed" and "sunny, 21 C" in follow.output_text


def test_a_function_choice_and_allowed_tools_reach_the_provider(oai, backends):
    other = {**TOOL, "name": "get_time", "description": "The time in a city"}
    oai.responses.create(
        model=target("openai"),
        input=QUESTION,
        tools=[TOOL, other],
        tool_choice={"type": "function", "name": "get_time"},
    )
    body = json.loads(backends["openai"].requests[-1].body)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}
    answer = oai.responses.create(model=target("openai"), input=QUESTION, tools=[TOOL, other], tool_choice=allowed)
    body = json.loads(backends["openai"].requests[-1].body)
    assert [tool["function"]["name"] for tool in body["tools"]] == ["get_weather"] and body["tool_choice"] == "required"
    assert answer.output[0].type == "function_call"
    oai.responses.create(model=target("openai"), input=QUESTION, tools=[TOOL], parallel_tool_calls=False)
    assert json.loads(backends["openai"].requests[-1].body)["parallel_tool_calls"] is False


@pytest.mark.parametrize("provider", ["openai", "anthropic", "bedrock", "ollama", "gemini"])
def test_structured_output_via_text_format_reaches_the_provider_and_parses(provider, oai, backends):
    parsed = oai.responses.parse(model=target(provider), input="Name a city", text_format=City)
    assert isinstance(parsed.output_parsed, City), parsed.output_text
    assert set(sent_schema(provider, backends[provider].requests[-1].body)["properties"]) == {"name", "population"}
    asked = {"format": {"type": "json_schema", "name": "city", "schema": CITY_SCHEMA, "strict": True}}
    answer = oai.responses.create(model=target(provider), input="Name a city", text=asked)
    assert City.model_validate_json(answer.output_text) and answer.text.format.type == "json_schema"
    assert sent_schema(provider, backends[provider].requests[-1].body) == CITY_SCHEMA
    with oai.responses.stream(model=target(provider), input="Name a city", text_format=City) as stream:
        assert isinstance(stream.get_final_response().output_parsed, City)


def test_a_format_the_provider_cannot_honour_names_text_format(oai):
    with pytest.raises(openai.BadRequestError, match="json_object") as caught:
        oai.responses.create(model=target("anthropic"), input="hi", text={"format": {"type": "json_object"}})
    assert caught.value.param == "text.format" and "response_format" not in caught.value.message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_max_output_tokens_reached_is_an_incomplete_response(provider, oai, ledger_path):
    answer = oai.responses.create(model=target(provider), input=LONG_PROMPT, max_output_tokens=5)
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert answer.output[0].status == "incomplete" and answer.output_text and answer.max_output_tokens == 5
    assert answer.usage.output_tokens <= 5
    events = list(oai.responses.create(model=target(provider), input=LONG_PROMPT, max_output_tokens=5, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.incomplete_details.reason == (
        "max_output_tokens"
    )
    assert events[-1].response.output_text == answer.output_text
    assert [row["status"] for row in rows_of(ledger_path, answer.id)] == ["ok"]
    with pytest.raises(openai.BadRequestError) as caught:  # more than the model writes: named as asked
        oai.responses.create(model=target(provider), input="hi", max_output_tokens=10_000_000)
    assert caught.value.param == "max_output_tokens" and "max_output_tokens" in caught.value.message


# -- refused rather than ignored --------------------------------------------------------------------------------

REFUSED = [
    ({"previous_response_id": "resp_123"}, "previous_response_id", "stores no responses"),
    ({"conversation": "conv_123"}, "conversation", "send the earlier turns in input"),
    ({"background": True}, "background", "no background"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search'"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type", "'file_search'"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type", "'code_interpreter'"),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type", "'image_generation'"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]}, "tools[0].type", "'mcp'"),
    (
        {"tools": [{"type": "computer_use_preview", "display_height": 1, "display_width": 1, "environment": "linux"}]},
        "tools[0].type",
        "'computer_use_preview'",
    ),
    ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "only a function"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
        "input[0].content[0].type",
        "reads no files",
    ),
    (
        {
            "input": [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
            ]
        },
        "input[0].content[0].type",
        "takes no audio",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1", "detail": "auto"}]}]},
        "input[0].content[0].file_id",
        "no uploaded files",
    ),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "stores no responses"),
    ({"reasoning": {"effort": "low", "summary": "brief"}}, "reasoning.summary", "expected one of"),
    ({"include": ["reasoning.encrypted_content"]}, "include[0]", "no reasoning items"),
    ({"include": ["message.output_text.logprobs"]}, "include[0]", "log probabilities"),
    ({"include": [{}]}, "include[0]", "expected a string, not an object"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name", "none of the tools"),
    ({"text": {"format": {"type": []}}}, "text.format.type", 'expected "text"'),
    ({"truncation": "auto"}, "truncation", "drops no input items"),
    ({"top_logprobs": 3}, "top_logprobs", "log probabilities"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "no stored prompts"),
    ({"extra_body": {"max_output_token": 5}}, "max_output_token", "did you mean max_output_tokens?"),
    ({"extra_body": {"providers": ["openai"]}}, "providers", "a GTL request field"),
    ({"tools": [{**TOOL, "paramters": {}}]}, "tools[0].paramters", "did you mean parameters?"),
    ({"text": {"format": {"type": "json_schema", "schema": CITY_SCHEMA}}}, "text.format.name", "required"),
]


@pytest.mark.parametrize("asked, param, said", REFUSED, ids=[case[1] for case in REFUSED])
def test_what_the_gateway_cannot_honour_is_a_bad_request_naming_it(asked, param, said, oai, backends, ledger_path):
    before = sent(backends)
    request = {"model": target("openai"), "input": "hi", **asked}
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(**request)
    error = caught.value
    assert (error.status_code, error.type, error.param) == (400, "invalid_request_error", param)
    assert said in error.message
    rows = rows_of(ledger_path, error.response.headers["x-request-id"])  # its one ledger row
    assert [(row["status"], row["error_code"]) for row in rows] == [("error", "INVALID_REQUEST")]
    with pytest.raises(openai.BadRequestError) as streamed:  # streamed: the same 400, before any event
        list(oai.responses.create(**request, stream=True))
    assert streamed.value.param == param
    assert sent(backends) == before  # refused before any provider


def test_what_is_accepted_and_ignored_is_answered(oai):
    answer = oai.responses.create(
        model=target("openai"),
        input="hi",
        store=True,
        safety_identifier="hashed-user",
        service_tier="auto",
        prompt_cache_key="k",
        reasoning={"effort": "low"},
        include=["web_search_call.action.sources"],
        truncation="disabled",
        text={"format": {"type": "text"}, "verbosity": "low"},
        stream_options=None,
    )
    assert answer.output_text and answer.store is False  # nothing is stored, whatever was asked
    assert answer.safety_identifier == "hashed-user" and answer.reasoning.effort == "low"


def test_every_field_the_sdk_sends_is_known():
    known = responses_request.MAPPED | responses_request.REFUSED | responses_request.IGNORED
    assert sdk_fields(Responses.create) <= known
    assert not (responses_request.MAPPED & responses_request.IGNORED)


def test_an_oversized_body_and_an_unknown_model_are_refused(oai, ledger_path):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(model=target("openai"), input="x" * (80 * 1024))  # over the gateway's 64 KiB
    assert caught.value.code == "request_too_large" and "65536" in caught.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        oai.responses.create(model="openai:no-such-model", input="hi")
    assert missing.value.code == "model_not_found"
    session_id = missing.value.response.headers["x-request-id"]
    assert session_id.startswith("resp_") and [row["status"] for row in rows_of(ledger_path, session_id)] == ["error"]
    with pytest.raises(openai.NotFoundError):  # streamed: an HTTP error before any event, as on chat
        list(oai.responses.create(model="openai:no-such-model", input="hi", stream=True))


# -- nothing is stored -------------------------------------------------------------------------------------------


def test_a_stored_response_is_not_found_saying_none_is_stored(oai, base_url):
    for call in (
        lambda: oai.responses.retrieve("resp_123"),
        lambda: oai.responses.delete("resp_123"),
        lambda: oai.responses.cancel("resp_123"),
        lambda: oai.responses.input_items.list("resp_123"),
    ):
        with pytest.raises(openai.NotFoundError, match="stores no responses") as caught:
            call()
        assert caught.value.code == "unsupported_endpoint"
    wrong = httpx.get(f"{base_url}/v1/responses", timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert "use POST /v1/responses" in wrong.json()["error"]["message"]


# -- tokens, providers that fail, disconnects, ledger rows -------------------------------------------------------


def test_a_refused_token_is_an_authentication_error(guarded):
    wrong = openai.OpenAI(base_url=f"{guarded[0]}/v1", api_key="wrong-token", max_retries=0)
    for call in (
        lambda: wrong.responses.create(model=f"limited:{MODEL}", input="hi"),
        lambda: list(wrong.responses.create(model=f"limited:{MODEL}", input="hi", stream=True)),
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            call()
        assert caught.value.code == "invalid_api_key" and "wrong-token" not in caught.value.message
    let_in = openai.OpenAI(base_url=f"{guarded[0]}/v1", api_key=TOKEN, max_retries=0)
    assert let_in.responses.create(model=f"limited:{MODEL}", input="hi").output_text


def test_a_provider_rate_limit_before_the_answer_is_a_rate_limit_error(guarded):
    url, simulator, ledger = guarded
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    for stream in (False, True):
        simulator.set_faults([sim.Fault.http(429, retry_after=7)])
        with pytest.raises(openai.RateLimitError) as caught:
            answer = client.responses.create(model=f"limited:{MODEL}", input="hi", stream=stream)
            if stream:
                list(answer)
        headers = caught.value.response.headers
        assert headers["retry-after"] == "7" and [
            row["status"] for row in rows_of(ledger, headers["x-request-id"])
        ] == ["error"]


def test_a_provider_error_mid_stream_fails_the_response(tmp_path):
    """An overload after the answer began: ``response.failed`` with what was answered, then the ``error``
    event the SDK raises as ``APIError`` — from ``create(stream=True)`` and from the stream helper."""
    simulator = sim.serve("anthropic", seed=3, api_key=SIM_KEY)
    tables = {
        "providers.only": {"type": "anthropic", "api_key": SIM_KEY, "base_url": simulator.base_url},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    model = f"only:{MODELS['anthropic']}"
    try:
        with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
            client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
            simulator.set_faults([sim.Fault.stream_error("overloaded", after=4)])
            events: list[Any] = []
            with pytest.raises(openai.APIError) as told:
                for event in client.responses.create(model=model, input=LONG_PROMPT, stream=True):
                    events.append(event)
            assert (told.value.type, told.value.code) == ("server_error", "overloaded")
            assert "response.output_text.delta" in kinds(events) and events[-1].type == "response.failed"
            failed = events[-1].response
            assert failed.status == "failed" and failed.error.code == "server_error" and failed.error.message
            assert failed.output[0].status == "incomplete" and failed.output_text  # what was answered
            assert [event.sequence_number for event in events] == list(range(len(events)))
            simulator.set_faults([sim.Fault.stream_error("overloaded", after=4)])
            with (
                pytest.raises(openai.APIError, match="overloaded"),
                client.responses.stream(model=model, input=LONG_PROMPT) as stream,
            ):
                stream.get_final_response()
    finally:
        simulator.close()
    assert [row["status"] for row in rows_of(tmp_path / "ledger.sqlite", failed.id)] == ["error"]


def test_every_request_leaves_exactly_one_row(oai, ledger_path):
    before = len(Ledger(ledger_path).rows())
    ids = [oai.responses.create(model=target("openai"), input="x").id]
    with oai.responses.stream(model=target("gemini"), input="x") as stream:
        ids.append(stream.get_final_response().id)
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=target("openai"), input="x", background=True)
    ids.append(refused.value.response.headers["x-request-id"])
    with pytest.raises(openai.NotFoundError) as missing:
        oai.responses.create(model="openai:no-such-model", input="x")
    ids.append(missing.value.response.headers["x-request-id"])
    rows = rows_when(ledger_path, before + len(ids))
    mine = [row for row in rows if row["session_id"] in set(ids)]
    assert len(mine) == len(ids) == len(set(ids)) and len(rows) - before == len(ids)


def test_the_gateway_lists_the_endpoint_among_those_it_serves(base_url):
    answer = httpx.get(f"{base_url}/", timeout=10)
    assert "POST /v1/responses" in answer.json()["message"]


def test_a_filtered_answer_is_an_incomplete_response_the_sdk_reads():
    """No simulator filters content: GTL's ``content_filter`` end, fed to the encoders, must read as the
    SDK's ``Response`` with ``incomplete_details.reason == "content_filter"``, whole and streamed."""
    events = [
        Token(session_id="resp_1", text="I can"),
        Token(session_id="resp_1", text="not"),
        Usage(session_id="resp_1", tokens_in=7, tokens_out=2, cached_tokens_in=3),
        Done(session_id="resp_1", finish_reason="content_filter", model="served-model"),
    ]
    transcript = Transcript(session_id="resp_1")
    for event in events:
        transcript.add(event)
    settings = responses_request.responses_request({"model": "asked", "input": "hi"}, "resp_1").settings
    whole = Response.model_validate(response_object(transcript, model="asked", created=1, settings=settings))
    assert (whole.status, whole.incomplete_details.reason, whole.model) == (
        "incomplete",
        "content_filter",
        "served-model",
    )
    assert whole.output_text == "I cannot" and whole.output[0].status == "incomplete"
    assert (whole.usage.input_tokens, whole.usage.input_tokens_details.cached_tokens) == (7, 3)
    encoder = ResponseEventEncoder("resp_1", model="asked", created=1, settings=settings, error_fields=error_fields)
    wire = encoder.open(events[0]) + b"".join(encoder.encode(event) for event in events)
    frames = [frame for frame in wire.decode().split("\n\n") if frame]
    last = json.loads(frames[-1].split("\ndata: ", 1)[1])
    assert frames[-1].startswith("event: response.incomplete\n") and last["sequence_number"] == len(frames) - 1
    streamed = Response.model_validate(last["response"])
    assert streamed.incomplete_details.reason == "content_filter" and streamed.output_text == whole.output_text


def frames_of(wire: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event, data)`` of each server-sent event."""
    pairs = []
    for frame in wire.split("\n\n"):
        if frame.strip():
            head, data = frame.split("\ndata: ", 1)
            pairs.append((head.removeprefix("event: "), json.loads(data)))
    return pairs


@pytest.mark.parametrize("tools", [[], [TOOL]], ids=["text", "function_call"])
def test_every_answer_and_event_is_what_the_sdks_types_require(tools, base_url, oai):
    """The SDK reads leniently (a missing field is None, not an error): validated strictly here, whole and
    streamed, so no field the API always sends is missing."""
    asked = {"model": target("anthropic"), "input": QUESTION, "tools": tools, "max_output_tokens": 300}
    whole = Response.model_validate(oai.responses.with_raw_response.create(**asked).http_response.json())
    assert [item.type for item in whole.output] == (["function_call"] if tools else ["message"])
    answer = httpx.post(f"{base_url}/v1/responses", json={**asked, "stream": True}, timeout=30)
    frames = frames_of(answer.text)
    validated = [STREAM_EVENT.validate_python(data) for _, data in frames]
    assert [name for name, _ in frames] == [event.type for event in validated]
    assert validated[-1].type == "response.completed" and validated[-1].response.output[0].type == whole.output[0].type


def test_an_error_mid_stream_is_what_the_sdks_types_require():
    settings = responses_request.responses_request({"model": "asked", "input": "hi"}, "resp_1").settings
    encoder = ResponseEventEncoder("resp_1", model="asked", created=1, settings=settings, error_fields=error_fields)
    first = Token(session_id="resp_1", text="Half an")
    wire = encoder.open(first) + encoder.encode(first)
    wire += encoder.encode(Error(session_id="resp_1", code="OVERLOADED", message="the provider is overloaded"))
    frames = frames_of(wire.decode())
    events = [STREAM_EVENT.validate_python(data) for _, data in frames]
    assert [event.type for event in events][-2:] == ["response.failed", "error"]
    failed, error = events[-2], events[-1]
    assert failed.response.status == "failed" and failed.response.output_text == "Half an"
    assert (error.code, error.message) == ("overloaded", "the provider is overloaded")
    assert frames[-1][1]["error"]["type"] == "server_error"  # nested too: what makes the SDK raise APIError
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_an_answers_text_and_its_calls_go_back_as_one_assistant_turn(oai, backends):
    """A replayed output of a message and function calls is one assistant turn upstream (Anthropic's API
    wants the tool_use blocks in the turn before their results), whatever the Responses API splits."""
    history = [
        {"role": "user", "content": QUESTION},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": {"city": "Bergen"}},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},  # dropped: only OpenAI could read it
    ]
    answer = oai.responses.create(model=target("anthropic"), input=history, tools=[TOOL])
    sent_messages = json.loads(backends["anthropic"].requests[-1].body)["messages"]
    assert [message["role"] for message in sent_messages] == ["user", "assistant", "user"]
    blocks = sent_messages[1]["content"]
    assert [block["type"] for block in blocks] == ["text", "tool_use", "tool_use"]
    assert blocks[2]["input"] == {"city": "Bergen"}
    results = [block for block in sent_messages[2]["content"] if block["type"] == "tool_result"]
    assert [result["tool_use_id"] for result in results] == ["call_1", "call_2"] and answer.output_text


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_a_reasoning_summary_asked_is_the_providers_reasoning(provider, base_url, oai, backends):
    """``reasoning.summary`` asks the deployment for its reasoning: Claude's thinking, Gemini's thoughts
    come back as one reasoning item before the message, whole and streamed (strictly the SDK's types)."""
    asked = {"model": target(provider), "input": QUESTION, "reasoning": {"summary": "auto"}, "max_output_tokens": 3000}
    whole = Response.model_validate(oai.responses.with_raw_response.create(**asked).http_response.json())
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    assert whole.output[0].summary[0].text and whole.reasoning.summary == "auto"
    with oai.responses.stream(**asked) as events:
        kinds = [event.type for event in events]
        final = events.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == whole.output[0].summary[0].text  # the simulators answer alike
    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index("response.output_text.delta")
    answer = httpx.post(f"{base_url}/v1/responses", json={**asked, "stream": True}, timeout=30)
    events = [STREAM_EVENT.validate_python(data) for _, data in frames_of(answer.text)]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    plain = oai.responses.create(model=target(provider), input=QUESTION, max_output_tokens=300)
    assert [item.type for item in plain.output] == ["message"]  # not asked: none


def test_a_deployment_without_reasoning_text_answers_no_reasoning_item(oai):
    answer = oai.responses.create(model=target("openai"), input=QUESTION, reasoning={"summary": "auto"})
    assert [item.type for item in answer.output] == ["message"] and answer.output_text
