"""Extended thinking through ``/v1/messages`` (``gateway.compat.thinking``), driven by the official
``anthropic`` SDK: ``thinking`` asks for reasoning, the answer starts with thinking blocks signed as the
provider signed them (whole, or streamed with each signature where its block ends), and a tool loop that
sends the blocks back gives the provider its own thinking first in that turn, as Anthropic requires."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import msgspec
import pytest

from gtl_nb import sim
from gtl_nb.gateway.compat.anthropic import error_object
from gtl_nb.gateway.compat.anthropic_request import messages_request
from gtl_nb.gateway.compat.anthropic_response import MessageEncoder
from gtl_nb.gateway.compat.replay_state import MARK, restored, unstamped
from gtl_nb.protocol.messages import CompletionRequest, Done, Message
from gtl_nb.providers.anthropic import AnthropicDecoder, replayed_thinking
from gtl_nb.providers.base import Deployment
from tests.gateway.conftest import SIM_KEY, write_toml
from tests.gateway.test_http import serving
from tests.ledger_wait import rows_when

CLAUDE = "claude-sonnet-4-5"
THINK = {"type": "enabled", "budget_tokens": 1024}
TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, sim.Simulator]]:
    simulators = {name: sim.serve(name, seed=7) for name in ("anthropic", "bedrock", "gemini")}
    yield simulators
    for simulator in simulators.values():
        simulator.close()


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("thinking") / "ledger.sqlite"


@pytest.fixture(scope="module")
def client(sims: dict[str, sim.Simulator], ledger_path: Path) -> Iterator[anthropic.Anthropic]:
    bedrock_keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
    tables = {
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": sims["anthropic"].base_url},
        "providers.bedrock": {"base_url": sims["bedrock"].base_url, "region": "us-east-1", **bedrock_keys},
        "providers.gemini": {"api_key": SIM_KEY, "base_url": sims["gemini"].base_url},
        "ledger": {"path": str(ledger_path)},
    }
    with serving(write_toml(ledger_path.parent / "gtl.toml", tables)) as served:
        yield anthropic.Anthropic(base_url=served.url, api_key="none", max_retries=0)


def _ask(client: anthropic.Anthropic, stream: bool, **asked: Any) -> Any:
    if stream:
        with client.messages.stream(**asked) as events:
            return events.get_final_message()
    return client.messages.create(**asked)


def _sent_thinking(simulator: sim.Simulator) -> list[dict[str, Any]]:
    """The thinking blocks of the assistant turns of the last request the Anthropic simulator got."""
    return [
        block
        for message in simulator.requests[-1].json["messages"]
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] in ("thinking", "redacted_thinking")
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_thinking_comes_first_signed_as_the_provider_signed_it(
    client: anthropic.Anthropic, sims: dict[str, sim.Simulator], stream: bool
):
    prompt = [{"role": "user", "content": "Why is the sky blue?"}]
    reply = _ask(client, stream, model=CLAUDE, max_tokens=2000, thinking=THINK, messages=prompt)
    assert [block.type for block in reply.content] == ["thinking", "text"]
    thought = reply.content[0]
    assert thought.thinking and thought.signature
    upstream = sims["anthropic"].requests[-1].json
    assert upstream["thinking"] == THINK and upstream["max_tokens"] == 2000  # the caller's budget, as sent
    plain = _ask(client, stream, model=CLAUDE, max_tokens=200, messages=prompt)
    assert [block.type for block in plain.content] == ["text"] and "thinking" not in sims["anthropic"].requests[-1].json


def test_a_stream_sends_thinking_deltas_then_the_signature_by_the_blocks_index(client: anthropic.Anthropic):
    prompt = [{"role": "user", "content": "Why is the sky blue?"}]
    events = list(client.messages.create(model=CLAUDE, max_tokens=2000, thinking=THINK, messages=prompt, stream=True))
    kinds = [(event.type, getattr(getattr(event, "delta", None), "type", None)) for event in events]
    assert ("content_block_delta", "thinking_delta") in kinds
    (signed,) = [event for event in events if getattr(getattr(event, "delta", None), "type", None) == "signature_delta"]
    assert signed.index == 0 and signed.delta.signature
    assert kinds.index(("content_block_delta", "signature_delta")) < kinds.index(("message_delta", None))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_tool_loop_gives_claude_its_own_thinking_back_first(
    client: anthropic.Anthropic, sims: dict[str, sim.Simulator], ledger_path: Path, stream: bool
):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    asked = {"model": CLAUDE, "max_tokens": 2000, "thinking": THINK, "tools": TOOLS}
    first = _ask(client, stream, messages=messages, **asked)
    assert first.content[0].type == "thinking" and first.stop_reason == "tool_use"
    (use,) = [block for block in first.content if block.type == "tool_use"]
    assert MARK not in use.id  # the thinking travels in its own block, not on the id as well
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    second = client.messages.create(messages=messages, **asked)
    assert second.stop_reason == "end_turn" and second.content[-1].text
    assert _sent_thinking(sims["anthropic"]) == [
        {"type": "thinking", "thinking": first.content[0].thinking, "signature": first.content[0].signature}
    ]
    assert len(rows_when(ledger_path, session_id=second.id)) == 1


def test_a_tool_loop_that_drops_the_thinking_is_refused_by_the_provider(client: anthropic.Anthropic):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Oslo"}]
    asked = {"model": CLAUDE, "max_tokens": 2000, "thinking": THINK, "tools": TOOLS}
    first = client.messages.create(messages=messages, **asked)
    (use,) = [block for block in first.content if block.type == "tool_use"]
    messages += [
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    with pytest.raises(anthropic.BadRequestError, match="must start with a thinking block"):
        client.messages.create(messages=messages, **asked)


def test_claude_on_bedrock_signs_its_thinking_too(client: anthropic.Anthropic, sims: dict[str, sim.Simulator]):
    model = "bedrock:anthropic.claude-3-7-sonnet-20250219-v1:0"
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    asked = {"model": model, "max_tokens": 2000, "thinking": THINK, "tools": TOOLS}
    first = client.messages.create(messages=messages, **asked)
    thought = first.content[0]
    assert thought.type == "thinking" and thought.signature
    (use,) = [block for block in first.content if block.type == "tool_use"]
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    assert client.messages.create(messages=messages, **asked).content[-1].text
    replayed = [
        block["reasoningContent"]
        for message in sims["bedrock"].requests[-1].json["messages"]
        if message["role"] == "assistant"
        for block in message["content"]
        if "reasoningContent" in block
    ]
    assert replayed == [{"reasoningText": {"text": thought.thinking, "signature": thought.signature}}]


def test_gemini_thoughts_come_unsigned_and_its_call_signature_rides_on_the_id(
    client: anthropic.Anthropic, sims: dict[str, sim.Simulator]
):
    """Gemini's thoughts are a summary with nothing to sign; its call's signature is not this format's own,
    so it rides on the tool call's id and comes back on the call."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    asked = {"model": "gemini-3.1-pro-preview", "max_tokens": 2000, "thinking": THINK, "tools": TOOLS}
    first = client.messages.create(messages=messages, **asked)
    assert first.content[0].type == "thinking" and first.content[0].signature == ""
    (use,) = [block for block in first.content if block.type == "tool_use"]
    _, state = unstamped(use.id)
    assert state is not None and "gemini" in state
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    assert client.messages.create(messages=messages, **asked).content[-1].text
    sent = [
        part.get("thoughtSignature")
        for content in sims["gemini"].requests[-1].json["contents"]
        for part in content["parts"]
        if "functionCall" in part
    ]
    assert sent == [state["gemini"]["parts"][0]["thoughtSignature"]]


@pytest.mark.parametrize(
    ("thinking", "max_tokens", "param", "said"),
    [
        ({"type": "enabled", "budget_tokens": 512}, 2000, "thinking.budget_tokens", "greater than or equal to 1024"),
        ({"type": "enabled", "budget_tokens": 4096}, 2000, "max_tokens", "must be greater than"),
        ({"type": "enabled"}, 2000, "thinking.budget_tokens", "required"),
        ({"type": "sometimes"}, 2000, "thinking.type", "Input should be"),
        ({"type": "adaptive", "budget_tokens": 2000}, 4000, "thinking.budget_tokens", "Extra inputs"),
        ({"type": "enabled", "budget_tokens": 1024, "display": "loud"}, 2000, "thinking.display", "summarized"),
    ],
)
def test_a_thinking_setting_anthropic_refuses_is_refused_here_too(
    client: anthropic.Anthropic, thinking: dict[str, Any], max_tokens: int, param: str, said: str
):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=CLAUDE, max_tokens=max_tokens, thinking=thinking, messages=[{"role": "user", "content": "hi"}]
        )
    assert param in str(refused.value) and said in str(refused.value)


def test_thinking_disabled_asks_for_none(client: anthropic.Anthropic, sims: dict[str, sim.Simulator]):
    reply = client.messages.create(
        model=CLAUDE, max_tokens=200, thinking={"type": "disabled"}, messages=[{"role": "user", "content": "hi"}]
    )
    assert [block.type for block in reply.content] == ["text"]
    assert "thinking" not in sims["anthropic"].requests[-1].json


def _sse(name: str, **data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


def _stream_of(blocks: list[tuple[str, str, str]]) -> bytes:
    """An Anthropic stream of thinking (text, signature) and redacted (data) blocks, then "answer"."""
    start = {"id": "m", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "usage": {}}
    sse = _sse("message_start", message=start)
    for index, (kind, text, signature) in enumerate(blocks):
        if kind == "redacted_thinking":
            sse += _sse("content_block_start", index=index, content_block={"type": kind, "data": text})
        else:
            sse += _sse(
                "content_block_start", index=index, content_block={"type": kind, "thinking": "", "signature": ""}
            )
            sse += _sse("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": text})
            sse += _sse("content_block_delta", index=index, delta={"type": "signature_delta", "signature": signature})
        sse += _sse("content_block_stop", index=index)
    last = len(blocks)
    sse += _sse("content_block_start", index=last, content_block={"type": "text", "text": ""})
    sse += _sse("content_block_delta", index=last, delta={"type": "text_delta", "text": "answer"})
    sse += _sse("content_block_stop", index=last)
    sse += _sse("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 5})
    return (sse + _sse("message_stop")).encode()


def _streamed_through_the_gateway(upstream: bytes) -> list[dict[str, Any]]:
    """The content a client accumulates from the gateway's stream of the provider's ``upstream``, as the
    SDK's accumulator does (signatures taken by their block's index)."""
    request = CompletionRequest(session_id="s", model="claude-x", messages=[Message(role="user", content="q")])
    decoder = AnthropicDecoder(msgspec.structs.replace(request, reasoning=True), Deployment(name="a", type="anthropic"))
    events = decoder.feed(upstream) + decoder.close()
    encoder = MessageEncoder("s", model="claude-x", error_object=error_object)
    wire = encoder.open(events[0])
    for event in events:
        if isinstance(event, Done):
            event = msgspec.structs.replace(event, provider_data=decoder.provider_data)
        wire += encoder.encode(event)
    blocks: dict[int, dict[str, Any]] = {}
    for frame in wire.decode().split("\n\n"):
        if not frame.strip():
            continue
        data = json.loads(frame.split("data: ", 1)[1])
        if data["type"] == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif data["type"] == "content_block_delta":
            delta, block = data["delta"], blocks[data["index"]]
            if delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "text_delta":
                block["text"] += delta["text"]
    return [blocks[index] for index in sorted(blocks)]


def _replayed(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The thinking blocks an Anthropic deployment gets back when a client sends ``content`` as its turn."""
    body = {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": "more"},
        ],
    }
    assistant = restored(messages_request(body, "s")).messages[1]
    return replayed_thinking(assistant.provider_data)


@pytest.mark.parametrize(
    "blocks",
    [
        [("thinking", "AAA", "SIG-A")],
        [("thinking", "AAA", "SIG-A"), ("redacted_thinking", "R", ""), ("thinking", "BBB", "SIG-B")],
        [("thinking", "AAA", "SIG-A"), ("thinking", "BBB", "SIG-B")],
        [("redacted_thinking", "R", "")],
    ],
    ids=["one", "thinking-redacted-thinking", "two-in-a-row", "only-redacted"],
)
def test_a_streamed_answers_thinking_goes_back_to_the_provider_exactly_as_it_wrote_it(
    blocks: list[tuple[str, str, str]],
):
    """Each provider block streams as itself, signed (or, redacted, whole) where it ends, and the provider
    gets back its blocks as it wrote them."""
    content = _streamed_through_the_gateway(_stream_of(blocks))
    expected = [
        {"type": "redacted_thinking", "data": text}
        if kind == "redacted_thinking"
        else {"type": "thinking", "thinking": text, "signature": signature}
        for kind, text, signature in blocks
    ]
    assert _replayed(content) == expected
    assert content[: len(blocks)] == expected  # streamed as they were: the provider's own blocks and signatures


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_thinking_displayed_omitted_has_no_text_and_still_goes_back_whole(
    client: anthropic.Anthropic, sims: dict[str, sim.Simulator], stream: bool
):
    """``display: "omitted"``: the thinking block has no text, its signature the provider's whole state, and
    the tool loop that sends it back gives Claude its thinking as it wrote it."""
    omitted = {**THINK, "display": "omitted"}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    asked = {"model": CLAUDE, "max_tokens": 2000, "thinking": omitted, "tools": TOOLS}
    if stream:
        events = list(client.messages.create(messages=messages, stream=True, **asked))
        assert not [event for event in events if getattr(getattr(event, "delta", None), "type", "") == "thinking_delta"]
    first = _ask(client, stream, messages=messages, **asked)
    thought = first.content[0]
    assert (thought.type, thought.thinking) == ("thinking", "") and thought.signature.startswith(MARK)
    _, state = unstamped(thought.signature)  # what the provider wrote, as the gateway received it
    assert state is not None
    written = state["anthropic"]["content"]
    assert written[0]["thinking"] and written[0]["signature"]
    (use,) = [block for block in first.content if block.type == "tool_use"]
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    assert client.messages.create(messages=messages, **asked).content[-1].text
    assert _sent_thinking(sims["anthropic"]) == written
