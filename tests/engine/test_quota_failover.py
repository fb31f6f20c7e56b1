"""An account with no credit or quota left (a non-retryable ``RATE_LIMIT``: Anthropic's credit balance,
OpenAI's ``insufficient_quota``) is never retried, but the request fails over: another deployment is
another account. No verdict on its circuit: its own callers keep hearing the provider's words."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol.errors import RateLimitError


@pytest.fixture
def accounts() -> Iterator[dict[str, sim.Simulator]]:
    servers = {name: sim.serve(kind, seed=3) for name, kind in [("oa", "openai"), ("ob", "openai")]}
    servers |= {name: sim.serve("anthropic", seed=3) for name in ("ca", "cb")}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()


def connected(servers: dict[str, sim.Simulator]) -> gtl_nb.Client:
    kinds = {"oa": "openai", "ob": "openai", "ca": "anthropic", "cb": "anthropic"}
    providers = {
        name: {"type": kinds[name], "api_key": "sim-key", "base_url": server.base_url}
        for name, server in servers.items()
    }
    return gtl_nb.connect(providers=providers, ledger=False, routing={"retry": {"base_delay": 0}})


@pytest.mark.parametrize(
    ("first", "second", "model", "fault"),
    [
        ("oa", "ob", "gpt-4o-mini", sim.Fault.http(429, kind="quota")),  # OpenAI's insufficient_quota
        ("ca", "cb", "claude-sonnet-4-5", sim.Fault.http(400, kind="billing")),  # "credit balance is too low"
        ("ca", "cb", "claude-sonnet-4-5", sim.Fault.http(402, kind="billing")),  # Anthropic's billing_error
    ],
)
def test_an_account_used_up_fails_over_to_another_and_is_asked_once(accounts, first, second, model, fault):
    accounts[first].set_faults([fault] * 10)
    with connected(accounts) as client:
        answer = client.complete(model, "Hello", providers=[first, second])
        assert answer.text and answer.provider == second
        assert len(answer.failovers) == 1 and first in answer.failovers[0], answer.failovers
        assert len(accounts[first].requests) == 1  # never retried on the account that has nothing left
        accounts[first].set_faults(None)
        accounts[second].set_faults([fault] * 10)
        with pytest.raises(RateLimitError) as caught:  # every account used up: the provider's words, final
            client.complete(model, "Hello", providers=[second])
        assert not caught.value.retryable and len(accounts[second].requests) == 2
        with pytest.raises(RateLimitError):  # again: the provider's words, never "every circuit is open"
            client.complete(model, "Hello", providers=[second])
        assert client.breakers()[second]["state"] == "closed"
