"""The compatible endpoints and the SDKs' own retries: one layer retries, not both.

The OpenAI and Anthropic SDKs retry a 429 or 5xx twice by default, obeying ``x-should-retry`` before
their own rules. When the gateway has already retried (or failed over) within its retry policy, its
error says ``x-should-retry: false``: three calls upstream for one, not nine. An error the gateway did
not retry keeps the SDK's retries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gtl_nb import sim
from gtl_nb.gateway.compat.reply import SDK_WAIT_LIMIT, error_headers, retried_already
from gtl_nb.protocol.messages import Error, Status
from tests.gateway.conftest import SIM_KEY, write_toml
from tests.gateway.test_http import serving

ATTEMPTS = 3  # the gateway's retry policy: attempts in all, the first one included


@pytest.fixture
def limited() -> Iterator[sim.Simulator]:
    """An Anthropic simulator that answers every request with its 429 (``retry-after: 0``)."""
    with sim.serve("anthropic", sim.Fault.http(429, retry_after=0)) as simulator:
        yield simulator


def gateway_config(directory: Path, simulator: sim.Simulator, max_attempts: int, deployments: int = 1) -> Path:
    retry = {"max_attempts": max_attempts, "base_delay": 0.01, "max_delay": 0.02}
    names = ["anthropic", *(f"anthropic{n}" for n in range(2, deployments + 1))]
    tables: dict[str, dict[str, Any]] = {
        f"providers.{name}": {"type": "anthropic", "api_key": SIM_KEY, "base_url": simulator.base_url} for name in names
    }
    return write_toml(
        directory / "gtl.toml",
        {
            **tables,
            "routing.retry": retry,
            "routing.breaker": {"enabled": False},  # every attempt reaches the provider: they can be counted
            "ledger": {"path": str(directory / "ledger.sqlite3")},
        },
    )


def calls_for_one(simulator: sim.Simulator, ask: Any) -> int:
    before = len(simulator.requests)
    ask()
    return len(simulator.requests) - before


@pytest.mark.parametrize("stream", [False, True])
def test_an_error_the_gateway_retried_is_not_retried_by_the_sdks(tmp_path, limited, stream):
    with serving(gateway_config(tmp_path, limited, ATTEMPTS)) as served:
        oai = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=2)
        claude = anthropic.Anthropic(base_url=served.url, api_key="none", max_retries=2)

        def ask_openai() -> None:
            with pytest.raises(openai.RateLimitError) as raised:
                oai.chat.completions.create(
                    model="anthropic:claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], stream=stream
                )
            assert raised.value.response.headers["x-should-retry"] == "false"

        def ask_anthropic() -> None:
            with pytest.raises(anthropic.RateLimitError) as raised:
                claude.messages.create(
                    model="anthropic:claude-haiku-4-5",
                    max_tokens=10,
                    messages=[{"role": "user", "content": "hi"}],
                    stream=stream,
                )
            assert raised.value.response.headers["x-should-retry"] == "false"

        assert calls_for_one(limited, ask_openai) == ATTEMPTS
        assert calls_for_one(limited, ask_anthropic) == ATTEMPTS


def test_an_error_the_gateway_did_not_retry_is_left_to_the_sdks(tmp_path, limited):
    with serving(gateway_config(tmp_path, limited, 1)) as served:  # the gateway retries nothing
        oai = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=2)

        def ask() -> None:
            with pytest.raises(openai.RateLimitError) as raised:
                oai.chat.completions.create(
                    model="anthropic:claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}]
                )
            assert raised.value.response.headers["x-should-retry"] == "true"

        assert calls_for_one(limited, ask) == 3  # the SDK's first call and its two retries


def test_a_failover_alone_leaves_the_retries_to_the_sdk(tmp_path, limited):
    with serving(gateway_config(tmp_path, limited, 1, deployments=2)) as served:  # no retries, two deployments
        oai = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=2)

        def ask() -> None:
            with pytest.raises(openai.RateLimitError) as raised:
                oai.chat.completions.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
            assert raised.value.response.headers["x-should-retry"] == "true"

        assert calls_for_one(limited, ask) == 3 * 2  # each of the SDK's three calls tries both deployments


def test_which_statuses_say_the_gateway_tried_again():
    assert not retried_already([Status(session_id="s", state="queued"), Status(session_id="s", state="streaming")])
    assert retried_already([Status(session_id="s", state="retrying", attempt=2)])
    assert not retried_already([Status(session_id="s", state="failover", from_provider="a", to_provider="b")])
    error = Error(session_id="s", code="RATE_LIMIT", message="slow down", retryable=True, retry_after=1.5)
    assert error_headers(error) == {"x-should-retry": "true", "retry-after": "2"}
    assert error_headers(error, retried=True) == {"x-should-retry": "false", "retry-after": "2"}
    refused = Error(session_id="s", code="INVALID_REQUEST", message="no", retryable=False)
    assert error_headers(refused)["x-should-retry"] == "false"
    # a wait longer than the SDKs' own longest backoff is said, but the SDK is not told to sit through it
    open_circuit = Error(session_id="s", code="PROVIDER_UNAVAILABLE", message="open", retryable=True, retry_after=26.2)
    assert error_headers(open_circuit) == {"x-should-retry": "false", "retry-after": "27"}
    at_limit = Error(session_id="s", code="RATE_LIMIT", message="slow", retryable=True, retry_after=SDK_WAIT_LIMIT)
    assert error_headers(at_limit)["x-should-retry"] == "true"
    endless = Error(session_id="s", code="RATE_LIMIT", message="slow", retryable=True, retry_after=float("inf"))
    assert error_headers(endless) == {"x-should-retry": "false"}  # no wait an SDK could sit through


def test_an_open_circuit_fails_the_sdk_call_at_once_not_after_its_retry_after(tmp_path):
    """Every circuit open: the gateway says so with ``retry-after`` (the circuit's wait), and the SDK
    makes one call, not three spread over that wait."""
    with sim.serve("openai", sim.Fault.http(503)) as down:
        config = write_toml(
            tmp_path / "gtl.toml",
            {
                "providers.down": {"type": "openai", "api_key": SIM_KEY, "base_url": down.base_url},
                "routing.retry": {"max_attempts": 1},
                "routing.breaker": {"failure_threshold": 1, "cooldown": 30},
                "ledger": {"path": str(tmp_path / "ledger.sqlite3")},
            },
        )
        with serving(config) as served:
            sent: list[object] = []
            hooks = {"request": [sent.append]}
            oai = openai.OpenAI(
                base_url=f"{served.url}/v1", api_key="none", max_retries=2, http_client=httpx.Client(event_hooks=hooks)
            )
            ask = {"model": "down:gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            with pytest.raises(openai.APIStatusError):
                oai.chat.completions.create(**ask)  # the failure that opens the circuit
            sent.clear()
            with pytest.raises(openai.APIStatusError) as raised:
                oai.chat.completions.create(**ask)
            assert "every circuit is open" in raised.value.message
            assert raised.value.response.headers["x-should-retry"] == "false"
            assert int(raised.value.response.headers["retry-after"]) > SDK_WAIT_LIMIT
            assert len(sent) == 1
