"""The Messages stream of ``/v1/messages`` as Anthropic's own API sends it, driven by the official ``anthropic``
SDK against a gateway on loopback: ``message_start`` tells the prompt's input tokens when the provider told
them before its answer (0 from a provider that tells nothing early, never an estimate), and a thinking
block's ``signature_delta`` is its last delta, before its ``content_block_stop`` — the order of the recorded
stream (tests/fixtures/wire/anthropic/stream-thinking.sse) — while the SDK's final message keeps every count
and signature, and the next turn's thinking still verifies at the provider."""

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
from gtl_nb.gateway.compat.anthropic_response import MessageEncoder
from gtl_nb.protocol.messages import CompletionRequest, Done, Message, Status, Token
from gtl_nb.providers.anthropic import AnthropicDecoder
from gtl_nb.providers.base import Deployment
from tests.gateway.conftest import SIM_KEY, write_toml
from tests.gateway.test_compat_thinking import _stream_of
from tests.gateway.test_http import serving

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wire" / "anthropic"
CLAUDE = "claude-sonnet-4-5"
ON_BEDROCK = "bedrock:anthropic.claude-3-7-sonnet-20250219-v1:0"
THINK = {"type": "enabled", "budget_tokens": 1024}
TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
# long enough for the simulated Claude's prompt cache (its least cacheable prefix is 1,024 tokens)
LONG_SYSTEM = " ".join(f"Rule {n}: answer plainly, cite nothing, and keep every sentence short." for n in range(160))


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, sim.Simulator]]:
    names = ("anthropic", "bedrock", "gemini", "openai")
    simulators = {name: sim.serve(name, seed=11, api_key=SIM_KEY) for name in names}
    yield simulators
    for simulator in simulators.values():
        simulator.close()


@pytest.fixture(scope="module")
def client(sims: dict[str, sim.Simulator], tmp_path_factory: pytest.TempPathFactory) -> Iterator[anthropic.Anthropic]:
    folder = tmp_path_factory.mktemp("anthropic_stream")
    bedrock_keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
    tables = {
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": sims["anthropic"].base_url},
        "providers.bedrock": {"base_url": sims["bedrock"].base_url, "region": "us-east-1", **bedrock_keys},
        "providers.openai": {"api_key": SIM_KEY, "base_url": sims["openai"].base_url},
        "providers.gemini": {"api_key": SIM_KEY, "base_url": sims["gemini"].base_url},
        "ledger": {"path": str(folder / "ledger.sqlite")},
    }
    with serving(write_toml(folder / "gtl.toml", tables)) as served:
        yield anthropic.Anthropic(base_url=served.url, api_key="none", max_retries=0)


def _shape(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """A stream's events as (type, block index, block or delta type), pings left out and each run of
    text or thinking deltas of one block as one: how a stream is built, whatever its text."""
    shape: list[tuple[Any, ...]] = []
    for event in events:
        kind = event["type"]
        if kind == "ping":
            continue
        what = event.get("content_block", event.get("delta", {})).get("type") if "index" in event else None
        step = (kind, event.get("index"), what)
        if what in ("text_delta", "thinking_delta") and shape and shape[-1] == step:
            continue
        shape.append(step)
    return shape


def _recorded(name: str) -> list[dict[str, Any]]:
    text = (FIXTURES / f"{name}.sse").read_text()
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


def _streamed(client: anthropic.Anthropic, **asked: Any) -> list[dict[str, Any]]:
    """The events of one streamed answer as the SDK reads them off the wire, as JSON."""
    with client.messages.create(stream=True, **asked) as events:
        return [event.to_dict() for event in events]


def test_message_start_tells_the_input_tokens_anthropic_told_before_its_answer(client: anthropic.Anthropic):
    asked = {"model": CLAUDE, "max_tokens": 500, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    with client.messages.stream(**asked) as stream:
        first = next(iter(stream))
        assert first.type == "message_start"
        told = stream.current_message_snapshot.usage.input_tokens  # what a client shows as the answer begins
        final = stream.get_final_message()
    assert told > 0 and told == final.usage.input_tokens
    assert final.usage.output_tokens > 0


def test_message_start_tells_the_cache_counts_too(client: anthropic.Anthropic):
    system = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    asked = {"model": CLAUDE, "max_tokens": 300, "system": system}
    for question in ("Why is the sky blue?", "Why is the sea salty?"):  # the first writes the cache, the next reads
        events = _streamed(client, messages=[{"role": "user", "content": question}], **asked)
        started, closing = events[0]["message"]["usage"], events[-2]["usage"]
        assert events[0]["type"] == "message_start" and events[-2]["type"] == "message_delta"
        for count in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            assert started[count] == closing[count], count
        assert started["output_tokens"] == 0  # not known yet: never guessed
    assert started["cache_read_input_tokens"] > 0


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", ON_BEDROCK, "gemini:gemini-2.5-flash"])
def test_a_provider_that_tells_nothing_early_starts_at_0_and_ends_right(client: anthropic.Anthropic, model: str):
    """OpenAI's chat API and Bedrock's Converse count the prompt only at the end, Gemini's chunks with a
    count its last chunk may correct: ``message_start`` says 0, not an estimate or a count still to change
    (a client would take either for the provider's word), and the SDK's final message has the provider's
    counts from ``message_delta``."""
    asked = {"model": model, "max_tokens": 300, "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    events = _streamed(client, **asked)
    assert events[0]["message"]["usage"]["input_tokens"] == 0
    with client.messages.stream(**asked) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", [CLAUDE, ON_BEDROCK])
def test_a_thinking_stream_is_built_as_anthropics_own(client: anthropic.Anthropic, model: str):
    """The signature is the thinking block's last delta, before its stop, as in the recorded stream."""
    asked = {"model": model, "max_tokens": 2000, "thinking": THINK}
    events = _streamed(client, messages=[{"role": "user", "content": "Say hello in one sentence."}], **asked)
    assert _shape(events) == _shape(_recorded("stream-thinking"))
    (signed,) = [event for event in events if event.get("delta", {}).get("type") == "signature_delta"]
    assert signed["delta"]["signature"]


def test_the_sdks_final_message_keeps_the_signature_and_the_next_turn_verifies(
    client: anthropic.Anthropic, sims: dict[str, sim.Simulator]
):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    asked = {"model": CLAUDE, "max_tokens": 2000, "thinking": THINK, "tools": TOOLS}
    events = _streamed(client, messages=messages, **asked)
    (signed,) = [event for event in events if event.get("delta", {}).get("type") == "signature_delta"]
    with client.messages.stream(messages=messages, **asked) as stream:
        first = stream.get_final_message()
    thought = first.content[0]
    assert thought.type == "thinking" and thought.signature == signed["delta"]["signature"]
    (use,) = [block for block in first.content if block.type == "tool_use"]
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "clear"}]},
    ]
    with client.messages.stream(messages=messages, **asked) as stream:  # the simulator checks the signature
        assert stream.get_final_message().stop_reason == "end_turn"
    edited = {**messages[1]["content"][0], "thinking": thought.thinking + " (edited)"}
    messages[1] = {"role": "assistant", "content": [edited, *messages[1]["content"][1:]]}
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):  # so a broken one would show
        client.messages.create(messages=messages, **asked)


def _sse_payloads(wire: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in wire.decode().splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize(
    "blocks",
    [
        [("thinking", "AAA", "SIG-A"), ("redacted_thinking", "R", ""), ("thinking", "BBB", "SIG-B")],
        [("thinking", "AAA", "SIG-A"), ("thinking", "BBB", "SIG-B")],
        [("redacted_thinking", "R", "")],
    ],
    ids=["thinking-redacted-thinking", "two-in-a-row", "only-redacted"],
)
def test_the_providers_thinking_blocks_stream_through_built_as_it_built_them(blocks: list[tuple[str, str, str]]):
    """The gateway's stream of a provider's stream has the provider's blocks, in its order, each signature
    its block's last delta and each redacted block where it came."""
    upstream = _stream_of(blocks)
    request = CompletionRequest(
        session_id="s", model="claude-x", messages=[Message(role="user", content="q")], reasoning=True
    )
    decoder = AnthropicDecoder(request, Deployment(name="a", type="anthropic"))
    events = decoder.feed(upstream) + decoder.close()
    encoder = MessageEncoder("s", model="claude-x", error_object=error_object)
    answer = [event for event in events if not isinstance(event, Status)]
    wire = encoder.open(answer[0])
    for event in answer:
        if isinstance(event, Done):
            event = msgspec.structs.replace(event, provider_data=decoder.provider_data)
        wire += encoder.encode(event)
    sent = _sse_payloads(wire)
    assert _shape(sent) == _shape(_sse_payloads(upstream))
    given = [e["content_block"] for e in _sse_payloads(upstream) if e["type"] == "content_block_start"]
    started = [e["content_block"] for e in sent if e["type"] == "content_block_start"]
    assert [b for b in started if b["type"] == "redacted_thinking"] == [
        b for b in given if b["type"] == "redacted_thinking"
    ]


def _message_start_usage(events: list[Any]) -> dict[str, Any]:
    encoder = MessageEncoder("s", model="m", error_object=error_object)
    for event in events[:-1]:
        encoder.encode(event)  # the statuses before the answer, as ``runner`` hands them over
    frame = encoder.open(events[-1]).decode()
    return json.loads(frame.split("data: ", 1)[1])["message"]["usage"]


@pytest.mark.parametrize(
    "then",
    [
        [Status(session_id="s", state="failover", from_provider="a", to_provider="b")],
        [Status(session_id="s", state="retrying", attempt=2), Status(session_id="s", state="streaming")],
    ],
    ids=["failover", "retry"],
)
def test_a_call_given_up_before_the_answer_takes_its_counts_with_it(then: list[Status]):
    """The counts are the call's that told them: a retry or a failover before the answer voids them, and the
    call that answers tells its own (or nothing)."""
    told = Status(session_id="s", state="streaming", tokens_in=120, cached_tokens_in=100)
    hi = Token(session_id="s", text="hi")
    assert _message_start_usage([told, hi])["cache_read_input_tokens"] == 100
    assert _message_start_usage([told, *then, hi])["input_tokens"] == 0
    retold = Status(session_id="s", state="streaming", tokens_in=30)
    assert _message_start_usage([told, *then, retold, hi])["input_tokens"] == 30
