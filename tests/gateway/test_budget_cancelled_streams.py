"""A client that closes each stream just before its end is held to ``tokens_per_minute`` as one that
reads to the end: over WebSocket, HTTP, SSE and the embedded client, each of its cancelled sessions
counts what reached it (and its prompt) against its budget, and its ledger row holds those figures
marked ``usage_estimated``. Before, every such request settled at nothing and none was ever refused.

A real gateway child process (GhostTokens, the default SQLite ledger whose file also holds the budget
counters) in front of the paced OpenAI simulator, on loopback; the counters are read from that file."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.estimates import estimate_prompt_tokens
from gtl_nb.engine.stores import SqliteBudgetCounter
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol import CompletionRequest, GTLError, Message
from tests.gateway.conftest import LONG_PROMPT, SIM_KEY, jwt_echo_gateway
from tests.ledger_wait import rows_when

LIMIT = 600  # tokens per minute of every principal here
LEAVE_AFTER = 20  # tokens read before the client closes the stream
TRIES = 40  # more than LIMIT could admit of such requests, even counted at their prompt alone
MODEL = "slow:gpt-4o-mini"


@pytest.fixture(scope="module")
def paced() -> Iterator[Any]:
    simulator = sim.serve("openai", seed=3, api_key=SIM_KEY, pace=0.002)
    yield simulator
    simulator.close()


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, paced: Any) -> Iterator[tuple[Any, Any, Path]]:
    more = {
        "providers.slow": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.base_url},
        "budgets": {"tokens_per_minute": LIMIT},
    }
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "BUDGET_CANCEL_SECRET", more)
    with start_gateway(config) as started:
        yield started, mint, tmp_path / "ledger.sqlite"


def leave_each_stream_early(client: gtl_nb.Client) -> tuple[list[int], Any]:
    """Stream the long answer again and again, closing each after ``LEAVE_AFTER`` tokens, until a request
    is refused (or ``TRIES`` were made): the characters each admitted one delivered, and the refusal."""
    delivered: list[int] = []
    for _ in range(TRIES):
        stream = client.stream(MODEL, LONG_PROMPT, max_tokens=100)
        characters = tokens = 0
        try:
            for event in stream:
                if type(event).__name__ == "Error":
                    return delivered, event
                if type(event).__name__ == "Token":
                    characters += len(event.text)
                    tokens += 1
                    if tokens >= LEAVE_AFTER:
                        break
        except GTLError as refused:
            return delivered, refused
        finally:
            stream.close()
        delivered.append(characters)
    return delivered, None


def counted_tokens(ledger: Path, principal: str) -> float:
    async def read() -> float:
        counter = SqliteBudgetCounter(ledger)
        try:
            return (await counter.usage(principal, now=time.time()))["tokens_last_minute"]
        finally:
            await counter.aclose()

    return asyncio.run(read())


def check(ledger: Path, principal: str, delivered: list[int], refusal: Any) -> None:
    assert refusal is not None, f"{len(delivered)} streams left early were all admitted"
    assert getattr(refusal, "code", None) == "RATE_LIMIT", refusal
    # the engine's estimate of the prompt: what count_tokens answers for a provider that does not count
    prompt = estimate_prompt_tokens(
        CompletionRequest(session_id="any", model=MODEL, messages=[Message(role="user", content=LONG_PROMPT)])
    )
    # each admitted request counts its prompt and what it delivered at the least: the limit is reached
    least = prompt + math.ceil(min(delivered) / 4)
    assert len(delivered) <= LIMIT // least + 1
    rows = rows_when(ledger, len(delivered) + 1, user=principal)  # and the refusal's
    cut = [row for row in rows if row["status"] == "cancelled"]
    assert len(cut) == len(delivered), [(row["status"], row["error_code"]) for row in rows]
    for row, characters in zip(cut, delivered, strict=True):
        assert row["usage_estimated"] is True and row["tokens_in"] == prompt
        # the gateway may have sent a little more than the client read before it hung up
        assert row["tokens_out"] >= math.ceil(characters / 4)
        assert row["cost"] > 0  # priced: the USD budget counts it too
    refused = [row for row in rows if row["status"] == "error"]
    assert [(row["error_code"], row["tokens_in"], row["usage_estimated"]) for row in refused] == [
        ("RATE_LIMIT", None, False)
    ]
    # the budget counter holds the rows' figures once every session has settled
    assert counted_tokens(ledger, principal) == sum(row["tokens_in"] + row["tokens_out"] for row in cut)


@pytest.mark.parametrize("scheme", ["ws", "http", "sse"])
def test_a_client_leaving_each_stream_early_is_held_to_its_tokens_per_minute(gateway, scheme: str):
    started, mint, ledger = gateway
    principal = f"{scheme}-leaver"
    token = mint("chat:write", subject=principal)
    with gtl_nb.connect(started.url("http").replace("http", scheme, 1), token=token) as client:
        delivered, refusal = leave_each_stream_early(client)
    check(ledger, principal, delivered, refusal)


def test_an_embedded_client_leaving_each_stream_early_is_held_to_its_tokens_per_minute(tmp_path: Path, paced: Any):
    ledger = tmp_path / "ledger.sqlite"
    client = gtl_nb.connect(
        providers={"slow": {"type": "openai", "api_key": SIM_KEY, "base_url": paced.base_url}},
        budgets={"tokens_per_minute": LIMIT},
        ledger=ledger,
        user="leaver",
        environ={},
    )
    with client:
        delivered, refusal = leave_each_stream_early(client)
    check(ledger, "leaver", delivered, refusal)
