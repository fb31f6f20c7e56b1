"""Prompt caching from the embedded client: a ``cache_point`` on a message reaches the providers that cache
on request, the cache's counts come back in the answer's usage, its footer, its cost and its ledger row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import InvalidRequestError
from gtl_nb.protocol.messages import Message
from tests.ledger_wait import rows_when

BEDROCK = {"region": "us-east-1", "aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
CASES = {  # provider -> model, with a price for cache writes and reads in the catalog
    "anthropic": "claude-sonnet-4-5",
    "bedrock": "anthropic.claude-sonnet-4-5-20250929-v1:0",
}
QUESTION = "Which clause speaks of noon?"


def document() -> str:
    """A system prompt long enough to cache (~2,000 tokens by the simulators' estimate), unique per call."""
    marker = uuid.uuid4().hex
    return f"Charter {marker}. " + " ".join(
        f"clause {i} of the harbour charter says the tide turns at {i % 24} o'clock." for i in range(120)
    )


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict[str, sim.Simulator]]:
    started = {name: sim.serve(name, seed=5) for name in ("anthropic", "bedrock", "openai")}
    yield started
    for simulator in started.values():
        simulator.close()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompt-cache") / "ledger.sqlite3"


@pytest.fixture(scope="module")
def client(simulators: dict[str, sim.Simulator], ledger: Path) -> Iterator[gtl_nb.Client]:
    providers: dict[str, dict[str, Any]] = {
        "anthropic": {"api_key": "sim-key", "base_url": simulators["anthropic"].base_url},
        "bedrock": {"base_url": simulators["bedrock"].base_url, **BEDROCK},
        "openai": {"api_key": "sim-key", "base_url": simulators["openai"].base_url},
    }
    connected = gtl_nb.connect(providers=providers, config={"ledger": {"path": str(ledger)}}, environ={})
    yield connected
    connected.close()


@pytest.mark.parametrize("provider", sorted(CASES))
def test_a_marked_system_prompt_is_written_once_then_read(provider, client, simulators, ledger):
    messages = [{"role": "system", "content": document(), "cache_point": True}, {"role": "user", "content": QUESTION}]
    model = f"{provider}:{CASES[provider]}"
    first = client.complete(model, messages, max_tokens=40)
    second = client.complete(model, messages, max_tokens=40)
    assert first.text == second.text
    assert first.usage.cache_write_tokens_in > 1024 and not first.usage.cached_tokens_in
    assert second.usage.cached_tokens_in == first.usage.cache_write_tokens_in
    assert not second.usage.cache_write_tokens_in
    assert first.tokens_in == second.tokens_in  # every input token, wherever it came from
    uncached = client.catalog.cost(provider, CASES[provider], first.tokens_in, first.tokens_out)
    assert second.cost < uncached < first.cost  # a write costs 1.25x input, a read a tenth
    assert f"{first.usage.cache_write_tokens_in:,} to prompt cache" in first.footer()
    assert f"{second.usage.cached_tokens_in:,} from prompt cache" in second.footer()
    rows = [rows_when(ledger, session_id=answer.session_id)[0] for answer in (first, second)]
    assert rows[0]["cache_write_tokens_in"] == first.usage.cache_write_tokens_in
    assert rows[1]["cached_tokens_in"] == second.usage.cached_tokens_in
    assert [row["cost"] for row in rows] == pytest.approx([first.cost, second.cost])


def test_the_conversation_so_far_can_be_cached_turn_by_turn(client, simulators):
    history: list[Any] = [{"role": "system", "content": document()}]
    reads = []
    for turn in range(3):
        history.append(Message(role="user", content=f"Question {turn}: {QUESTION}", cache_point=True))
        answer = client.stream("anthropic:claude-sonnet-4-5", history, max_tokens=40)
        for _ in answer:
            pass
        usage = answer.result().usage
        reads.append(usage.cached_tokens_in or 0)
        history[-1] = Message(role="user", content=f"Question {turn}: {QUESTION}")  # the mark moves on
        history.append(answer.result().message)
    sent = json.loads(simulators["anthropic"].requests[-1].body)
    assert json.dumps(sent).count("cache_control") == 1  # only the newest turn is marked
    assert reads[0] == 0 and 0 < reads[1] < reads[2]  # each turn reads the conversation before it


def test_anthropics_cache_control_key_is_taken_for_a_cache_point(client, simulators):
    client.complete(
        "anthropic:claude-sonnet-4-5",
        [{"role": "system", "content": "rules", "cache_control": {"type": "ephemeral"}}, "hi"],
        max_tokens=10,
    )
    sent = json.loads(simulators["anthropic"].requests[-1].body)
    assert sent["system"] == [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]


def test_a_provider_that_caches_by_itself_gets_no_marker(client, simulators):
    answer = client.complete(
        "openai:gpt-4o-mini", [{"role": "system", "content": "rules", "cache_point": True}, "hi"], max_tokens=10
    )
    assert answer.text
    assert b"cache" not in simulators["openai"].requests[-1].body


@pytest.mark.parametrize("marker", [False, "ephemeral", {}, {"type": "forever"}])
def test_a_cache_control_that_is_not_ephemeral_is_refused(client, marker):
    with pytest.raises(InvalidRequestError, match="cache_control"):
        client.complete("anthropic:claude-sonnet-4-5", [{"role": "user", "content": "hi", "cache_control": marker}])


def test_a_cache_point_that_is_no_boolean_is_refused(client):
    with pytest.raises(InvalidRequestError, match="cache_point"):
        client.complete("anthropic:claude-sonnet-4-5", [{"role": "user", "content": "hi", "cache_point": "yes"}])
