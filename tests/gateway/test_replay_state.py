"""A provider's replay state through the compatible endpoints (``gateway.compat.replay_state``).

Gemini 3 signs every function-call turn and refuses the turn's calls replayed without the signature.
Through ``/v1/chat/completions`` and ``/v1/messages`` the state rides on the first tool call's id, so
the official SDKs' ordinary tool loops give Gemini its own signature back — streamed or whole — while
answers without state keep the provider's ids. The codec is bounded against what a client may send.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import openai
import pytest

from gtl_nb import sim
from gtl_nb.gateway.compat.replay_state import (
    MARK,
    MAX_REQUEST_STATE_BYTES,
    MAX_STATE_BYTES,
    ReplayStamps,
    restored,
    stamped,
    unstamped,
)
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Status,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from tests.gateway.conftest import SIM_KEY, write_toml
from tests.gateway.test_http import serving

GEMINI_3 = "gemini-3.1-pro-preview"
STATE = {"gemini": {"parts": [{"functionCall": {"name": "get_weather", "id": "call_1"}, "thoughtSignature": "c2ln"}]}}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


# -- the codec -----------------------------------------------------------------------------------------


def _packed(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw)).rstrip(b"=").decode()


def test_state_rides_on_an_id_of_safe_characters_and_comes_back_whole():
    call_id = stamped("call_1", STATE)
    own, _, packed = call_id.partition(MARK)
    assert own == "call_1" and packed and all(c.isalnum() or c in "_-" for c in call_id)
    assert unstamped(call_id) == ("call_1", STATE)
    assert unstamped("call_1") == ("call_1", None)


def test_nothing_is_stamped_without_state_when_too_large_or_on_an_id_that_holds_the_mark():
    assert stamped("call_1", None) == stamped("call_1", {}) == "call_1"
    assert stamped(f"a{MARK}b", STATE) == f"a{MARK}b"
    huge = {"gemini": {"text": "x" * (MAX_STATE_BYTES + 1)}}
    assert stamped("call_1", huge) == "call_1"


@pytest.mark.parametrize(
    "suffix",
    [
        "!!not-base64!!",
        base64.urlsafe_b64encode(b"not zlib").decode(),
        _packed(b"[1, 2]"),  # not an object
        _packed(b"{" * 5000),  # too deep
        _packed(b'{"a": "' + b"x" * (MAX_STATE_BYTES + 10) + b'"}'),  # inflates past the bound
        _packed(json.dumps(STATE).encode())[:-12],  # cut short
    ],
)
def test_a_suffix_that_does_not_decode_is_dropped_and_the_id_kept(suffix: str, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="gtl_nb.gateway.compat"):
        assert unstamped(f"call_9{MARK}{suffix}") == ("call_9", None)
    assert "'call_9': its replay state does not decode" in caplog.text


def test_a_zip_bomb_is_not_inflated_past_the_bound():
    bomb = _packed(b'{"a": "' + b"0" * 50_000_000 + b'"}')
    assert len(bomb) < 100_000 and unstamped(f"c{MARK}{bomb}") == ("c", None)


def test_restored_takes_every_suffix_off_and_puts_the_state_on_its_message():
    first = stamped("call_1", STATE)
    request = CompletionRequest(
        session_id="s",
        model="m",
        messages=[
            Message(role="user", content="q"),
            Message(
                role="assistant", tool_calls=[ToolCall(id=first, name="get_weather"), ToolCall(id="call_2", name="t")]
            ),
            Message(role="tool", tool_call_id=first, content="sunny"),
            Message(role="tool", tool_call_id="call_2", content="noon"),
        ],
    )
    back = restored(request)
    assert [call.id for call in back.messages[1].tool_calls] == ["call_1", "call_2"]
    assert back.messages[1].provider_data == STATE
    assert [m.tool_call_id for m in back.messages[2:]] == ["call_1", "call_2"]
    plain = msgspec.structs.replace(request, messages=request.messages[:1])
    assert restored(plain) is plain  # nothing to restore: the very request


def test_a_request_decodes_a_bounded_amount_of_state_from_its_last_turn_back():
    """Many ids, each inflating to nearly the most one may: only the last turns' are read, the first call
    of each (the one stamped); every id loses its suffix all the same."""
    big = {"gemini": {"pad": "0" * (MAX_STATE_BYTES - 100)}}
    messages = [Message(role="user", content="q")]
    for turn in range(40):
        calls = [
            ToolCall(id=stamped(f"c{turn}", {**big, "turn": turn}), name="f"),
            ToolCall(id=stamped("d", STATE), name="g"),
        ]
        messages += [
            Message(role="assistant", tool_calls=calls),
            Message(role="tool", tool_call_id=calls[0].id, content="r"),
        ]
    back = restored(CompletionRequest(session_id="s", model="m", messages=messages))
    turns = [m.provider_data["turn"] for m in back.messages if m.role == "assistant" and m.provider_data]
    read = MAX_REQUEST_STATE_BYTES // MAX_STATE_BYTES
    assert turns == list(range(40 - len(turns), 40)) and read - 1 <= len(turns) <= read + 1
    assert all(MARK not in call.id for m in back.messages for call in m.tool_calls)
    assert all(MARK not in (m.tool_call_id or "") for m in back.messages)


def test_a_stream_is_held_from_its_first_call_to_its_done_then_stamped_in_order():
    stamps = ReplayStamps()
    call = ToolCallEvent(session_id="s", function=ToolCall(id="call_1", name="get_weather"))
    second = ToolCallEvent(session_id="s", function=ToolCall(id="call_2", name="get_time"))
    usage = Usage(session_id="s", tokens_in=3, tokens_out=4)
    done = Done(session_id="s", finish_reason="tool_calls", provider_data=STATE)
    assert stamps.take(Token(session_id="s", text="hi")) == [Token(session_id="s", text="hi")]
    assert stamps.batch([call, second, usage]) == []
    first, *rest = stamps.take(done)
    assert unstamped(first.function.id) == ("call_1", STATE) and rest == [second, usage, done]
    error = Error(session_id="s", code="PROVIDER_UNAVAILABLE", message="gone")
    assert stamps.batch([call, usage, error]) == [call, usage, error]  # as they came
    failover = Status(session_id="s", state="failover", from_provider="a", to_provider="b", reason="OVERLOADED: x")
    assert stamps.batch([call, failover, done]) == [failover, done]  # the voided call is gone


# -- end to end: the official SDKs, the gateway, Gemini 3 ----------------------------------------------------


@pytest.fixture(scope="module")
def gemini() -> Iterator[sim.Simulator]:
    simulator = sim.serve("gemini", seed=5)
    yield simulator
    simulator.close()


@pytest.fixture(scope="module")
def openai_sim() -> Iterator[sim.Simulator]:
    simulator = sim.serve("openai", seed=5)
    yield simulator
    simulator.close()


@pytest.fixture(scope="module")
def base_url(
    gemini: sim.Simulator, openai_sim: sim.Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("replay")
    tables = {
        "providers.gemini": {"api_key": SIM_KEY, "base_url": gemini.base_url},
        "providers.openai": {"api_key": SIM_KEY, "base_url": openai_sim.base_url},
        "ledger": {"path": str(folder / "ledger.sqlite")},
    }
    with serving(write_toml(folder / "gtl.toml", tables)) as served:
        yield served.url


def _signatures_sent(gemini: sim.Simulator) -> list[Any]:
    """The signatures on the function calls of the last request the simulator got."""
    body = gemini.requests[-1].json
    return [
        part.get("thoughtSignature")
        for content in body["contents"]
        if content["role"] == "model"
        for part in content["parts"]
        if "functionCall" in part
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_sdk_tool_loop_gives_gemini_3_its_own_signature_back(base_url: str, gemini: sim.Simulator, stream: bool):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    if stream:
        with client.chat.completions.stream(model=GEMINI_3, messages=messages, tools=tools) as events:
            message = events.get_final_completion().choices[0].message
    else:
        message = client.chat.completions.create(model=GEMINI_3, messages=messages, tools=tools).choices[0].message
    (call,) = message.tool_calls
    own, state = unstamped(call.id)
    assert MARK in call.id and state is not None
    signature = state["gemini"]["parts"][0]["thoughtSignature"]
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    answer = client.chat.completions.create(model=GEMINI_3, messages=messages, tools=tools)
    assert answer.choices[0].message.content
    assert _signatures_sent(gemini) == [signature]  # Gemini's own, not the stand-in
    sent_ids = [
        p["functionCall"].get("id")
        for c in gemini.requests[-1].json["contents"]
        for p in c["parts"]
        if "functionCall" in p
    ]
    assert sent_ids == [own]  # the provider sees its own id


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_tool_loop_gives_gemini_3_its_own_signature_back(
    base_url: str, gemini: sim.Simulator, stream: bool
):
    client = anthropic.Anthropic(base_url=base_url, api_key="none", max_retries=0)
    tools = [{"name": "get_weather", "input_schema": WEATHER}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    if stream:
        with client.messages.stream(model=GEMINI_3, max_tokens=500, messages=messages, tools=tools) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(model=GEMINI_3, max_tokens=500, messages=messages, tools=tools)
    (use,) = [block for block in reply.content if block.type == "tool_use"]
    _, state = unstamped(use.id)
    assert state is not None
    signature = state["gemini"]["parts"][0]["thoughtSignature"]
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in reply.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    answer = client.messages.create(model=GEMINI_3, max_tokens=500, messages=messages, tools=tools)
    assert answer.content[0].text
    assert _signatures_sent(gemini) == [signature]


def test_a_client_that_cuts_the_id_short_still_gets_an_answer(base_url: str, gemini: sim.Simulator):
    """A client that keeps only the provider's part of the id loses the state, not the conversation:
    Gemini 3 gets Google's stand-in signature."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Oslo"}]
    message = client.chat.completions.create(model=GEMINI_3, messages=messages, tools=tools).choices[0].message
    own = message.tool_calls[0].id.partition(MARK)[0]
    call = {"id": own, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages += [
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": own, "content": "clear"},
    ]
    assert client.chat.completions.create(model=GEMINI_3, messages=messages, tools=tools).choices[0].message.content
    assert _signatures_sent(gemini) == ["skip_thought_signature_validator"]


def test_an_answer_without_replay_state_keeps_the_providers_ids(base_url: str):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    for model in ("gpt-4o-mini", "gemini-2.5-flash"):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "get_weather for Oslo"}], tools=tools
        )
        assert MARK not in reply.choices[0].message.tool_calls[0].id, model


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_api_tool_loop_gives_gemini_3_its_own_signature_back(
    base_url: str, gemini: sim.Simulator, stream: bool
):
    """The Responses API's loop sends the previous output back as input: its ``call_id`` carries the state."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    items: list[Any] = [{"role": "user", "content": "get_weather for Bergen"}]
    if stream:
        with client.responses.stream(model=GEMINI_3, input=items, tools=tools) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(model=GEMINI_3, input=items, tools=tools)
    (call,) = [item for item in first.output if item.type == "function_call"]
    _, state = unstamped(call.call_id)
    assert state is not None
    signature = state["gemini"]["parts"][0]["thoughtSignature"]
    items += [item.model_dump(exclude_none=True) for item in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'})
    answer = client.responses.create(model=GEMINI_3, input=items, tools=tools)
    assert answer.output_text
    assert _signatures_sent(gemini) == [signature]
