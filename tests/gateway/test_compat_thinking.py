"""Extended thinking through ``/v1/messages`` (``gateway.compat.thinking``), driven by the official
``anthropic`` SDK: ``thinking`` asks for reasoning, the answer starts with thinking blocks signed as the
provider signed them (whole, or streamed with the signatures at the end), and a tool loop that sends
the blocks back gives the provider its own thinking first in that turn, as Anthropic requires."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gtl_nb import sim
from gtl_nb.gateway.compat.replay_state import MARK, unstamped
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
    assert upstream["thinking"]["type"] == "enabled"  # asked of the provider, with the deployment's budget
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
