"""The GTL spec's failover example names its providers ``["openai", "claude"]``, and its provider list says
Google for Gemini: ``claude`` is another name of the provider type ``anthropic`` and ``google`` of
``gemini`` wherever routing looks a deployment up — a request's ``providers`` and ``provider``, and a
``name:model`` prefix. A name that is neither still fails before any provider is called."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gtl_nb import sim
from gtl_nb.engine.routing import EMBEDDED, GATEWAY, Router
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.errors import ConfigurationError, ModelNotFoundError
from gtl_nb.protocol.messages import CompletionRequest, Message
from gtl_nb.providers.catalog import Catalog
from tests.gateway.conftest import SIM_KEY, write_toml

HI = [{"role": "user", "content": "Hello AI!"}]


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[sim.Simulator, sim.Simulator]]:
    down = sim.serve("openai", faults=sim.Fault.overloaded())  # every request: overloaded
    claude = sim.serve("anthropic", seed=6)
    yield down, claude
    down.close()
    claude.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sims: tuple[sim.Simulator, sim.Simulator]) -> Iterator[Any]:
    down, claude = sims
    directory: Path = tmp_path_factory.mktemp("spec-provider-names")
    config = write_toml(
        directory / "gtl.toml",
        {
            "ledger": {"path": str(directory / "ledger.sqlite")},
            "providers.echo": {},
            "providers.openai": {"api_key": SIM_KEY, "base_url": down.base_url},
            "providers.anthropic": {"api_key": SIM_KEY, "base_url": claude.base_url},
            "routing.retry": {"max_attempts": 1},
        },
    )
    with start_gateway(config) as running:
        yield running


def gtl(running: Any, **request: Any) -> list[dict[str, Any]]:
    frame = {"type": "completion_request", "session_id": "spec-names", "messages": HI, **request}
    answer = httpx.post(f"{running.url('http')}/v1/gtl", json=frame, timeout=30)
    return [json.loads(line) for line in answer.text.splitlines() if line.strip()]


def test_the_specs_failover_list_reaches_the_anthropic_deployment(gateway, sims):
    down, claude = sims
    before = len(claude.requests)
    events = gtl(gateway, model="claude-sonnet-4-5", providers=["openai", "claude"])
    done = events[-1]
    assert done["type"] == "done" and done["provider"] == "anthropic", events[-1]
    failover = [event for event in events if event["type"] == "status" and event["state"] == "failover"]
    assert failover and failover[0]["from_provider"] == "openai" and failover[0]["to_provider"] == "anthropic"
    assert len(claude.requests) == before + 1 and down.requests


@pytest.mark.parametrize(
    "asked", [{"model": "claude:claude-sonnet-4-5"}, {"model": "claude-sonnet-4-5", "provider": "claude"}]
)
def test_claude_names_the_anthropic_deployment_as_a_prefix_and_as_provider(gateway, asked):
    events = gtl(gateway, **asked)
    assert events[-1]["type"] == "done" and events[-1]["provider"] == "anthropic", events[-1]


def test_a_name_that_is_neither_fails_before_any_call(gateway, sims):
    down, claude = sims
    before = (len(down.requests), len(claude.requests))
    events = gtl(gateway, model="echo", providers=["echo", "nosuch"])
    assert events[-1]["type"] == "error" and events[-1]["code"] == "MODEL_NOT_FOUND"
    assert "'nosuch'" in events[-1]["message"]
    assert (len(down.requests), len(claude.requests)) == before


def router(audience: str = EMBEDDED, **providers: dict[str, Any]) -> Router:
    settings = load_settings(providers=providers, environ={})
    return Router(settings.deployments, Catalog.default(), audience=audience)


def request(**fields: Any) -> CompletionRequest:
    return CompletionRequest(session_id="s", messages=[Message(role="user", content="hi")], **fields)


def test_google_names_the_gemini_deployment():
    routes = router(gemini={"api_key": "k", "base_url": "http://127.0.0.1:9"}, echo={})
    [target] = routes.targets(request(model="gemini-2.5-flash", providers=["google"]))
    assert target.deployment.type == "gemini"
    assert routes.targets(request(model="google:gemini-2.5-flash"))[0].deployment.type == "gemini"
    assert routes.bare_model("google:gemini-2.5-flash") == "gemini-2.5-flash"


def test_a_deployment_called_claude_comes_before_the_alias():
    routes = router(
        claude={"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"},
        anthropic={"api_key": "k", "base_url": "http://127.0.0.1:9"},
    )
    assert routes.targets(request(model="gpt-4o-mini", providers=["claude"]))[0].deployment.name == "claude"


def test_an_alias_without_its_provider_is_the_providers_own_error():
    with pytest.raises(ConfigurationError, match="provider 'anthropic' is not configured"):
        router(echo={}).targets(request(model="claude-sonnet-4-5", providers=["claude"]))
    with pytest.raises(ModelNotFoundError, match="this gateway has no anthropic provider"):
        router(GATEWAY, echo={}).targets(request(model="claude-sonnet-4-5", providers=["claude"]))
