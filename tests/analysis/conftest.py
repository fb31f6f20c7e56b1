"""A usage ledger filled by real requests: echo, two provider simulators, and a failed request."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import AuthenticationError


@dataclass
class Filled:
    """The ledger's frame, and what the requests themselves reported (the independent witness)."""

    frame: object
    path: object
    answers: dict[str, list] = field(default_factory=dict)  # deployment -> Completions
    failed: dict[str, int] = field(default_factory=dict)  # deployment -> failed requests


ROUTES = (("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("echo", "echo"))


@pytest.fixture(scope="session")
def filled(tmp_path_factory) -> Filled:
    path = tmp_path_factory.mktemp("ledger") / "ledger.sqlite3"
    result = Filled(frame=None, path=path)
    with sim.running("openai") as oa, sim.running("anthropic") as an:
        client = gtl_nb.connect(
            providers={
                "openai": {"api_key": "sim-key", "base_url": oa},
                "anthropic": {"api_key": "sim-key", "base_url": an},
                "echo": {},
            },
            ledger=path,
            environ={},
        )
        bad = gtl_nb.connect(providers={"openai": {"api_key": "wrong", "base_url": oa}}, ledger=path, environ={})
        try:
            for i in range(4):
                for deployment, model in ROUTES:
                    answer = client.complete(model, f"question number {i}: " + "why? " * i)
                    result.answers.setdefault(deployment, []).append(answer)
            with pytest.raises(AuthenticationError):
                bad.complete("gpt-4o-mini", "this one fails")
            result.failed["openai"] = 1
        finally:
            client.close()
            bad.close()
    reader = gtl_nb.connect(ledger=path, environ={})
    result.frame = reader.usage()
    reader.close()
    return result
