"""Requests the gateway refuses before any provider is called use none of the caller's budget: a
real gateway with ``[budgets] requests_per_minute`` and the default SQLite ledger, whose budget
counter also counts the ledger's rows. Each refusal leaves its row (``error``, no deployment), and
that row must not be counted as a request."""

from __future__ import annotations

import openai
import pytest

from gtl_nb import sim
from gtl_nb.gateway.local import start_gateway
from tests.gateway.conftest import SIM_KEY, write_toml

USER = [{"role": "user", "content": "hi"}]


def test_requests_refused_for_what_they_ask_leave_the_rate_limit_untouched(tmp_path):
    provider = sim.serve("openai", api_key=SIM_KEY)
    tables = {
        "providers.openai": {"api_key": SIM_KEY, "base_url": provider.base_url},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        "budgets": {"requests_per_minute": 3},
        "gateway.http": {"port": 0},
    }
    gateway = start_gateway(write_toml(tmp_path / "gtl.toml", tables))
    try:
        client = openai.OpenAI(base_url=gateway.url("http") + "/v1", api_key="unused", max_retries=0)
        for _ in range(3):  # a field the API does not have: refused field by field, one row each
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="openai:gpt-4o-mini", messages=USER, extra_body={"max_token": 3})
        with pytest.raises(openai.NotFoundError):  # routing's refusal: no such deployment, nothing sent
            client.chat.completions.create(model="nowhere:gpt-4o-mini", messages=USER)
        assert not [r for r in provider.requests if r.method == "POST"]
        for _ in range(3):  # the whole budget is still there
            answer = client.chat.completions.create(model="openai:gpt-4o-mini", messages=USER)
            assert answer.choices[0].message.content
        with pytest.raises(openai.RateLimitError, match="reached the limit of 3 requests per minute"):
            client.chat.completions.create(model="openai:gpt-4o-mini", messages=USER)
    finally:
        gateway.stop()
        provider.close()
