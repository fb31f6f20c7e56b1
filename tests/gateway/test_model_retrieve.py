"""``GET /v1/models/{id}`` answers for every name a completion is served under, as the official SDKs ask it
(``client.models.retrieve``), and 404s in OpenAI's shape — with the completion's "did you mean" — for the rest.

The gateway fronts simulators on loopback: two OpenAI deployments sharing ``gpt-4o-mini``, Anthropic, an
Ollama deployment that takes any name no other serves, and a ``[catalog.aliases]`` name. What a completion
does with a name is the witness: retrieving it must succeed exactly when the completion does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gtl_nb import sim
from tests.gateway.conftest import SIM_KEY, jwt_echo_gateway, write_toml
from tests.gateway.test_http import serving

ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, sim.Simulator]]:
    served = {"east": sim.serve("openai", seed=1), "west": sim.serve("openai", seed=2)}
    served["anthropic"] = sim.serve("anthropic", seed=1)
    served["ollama"] = sim.serve("ollama", seed=1)
    yield served
    for simulator in served.values():
        simulator.close()


def tables(sims: dict[str, sim.Simulator], directory: Path) -> dict[str, dict[str, Any]]:
    pair = {"type": "openai", "api_key": SIM_KEY, "models": ["gpt-4o-mini"]}
    return {
        "providers.east": {**pair, "base_url": sims["east"].base_url},
        "providers.west": {**pair, "base_url": sims["west"].base_url},
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": sims["anthropic"].base_url},
        "providers.ollama": {"base_url": sims["ollama"].base_url},
        "catalog.aliases.team-model": {"anthropic": "claude-haiku-4-5"},
        "ledger": {"path": str(directory / "ledger.sqlite")},
    }


@pytest.fixture(scope="module")
def base_url(sims: dict[str, sim.Simulator], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("retrieve")
    with serving(write_toml(directory / "gtl.toml", tables(sims, directory))) as served:
        yield served.url


@pytest.fixture(scope="module")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="anything: auth is none", max_retries=0)


@pytest.fixture(scope="module")
def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="anything: auth is none", max_retries=0)


def completes(client: openai.OpenAI, name: str) -> openai.APIStatusError | None:
    """``None`` when a completion naming ``name`` is answered, else the SDK's error for it."""
    try:
        client.chat.completions.create(model=name, messages=ASK, max_tokens=5)
    except openai.APIStatusError as exc:
        return exc
    return None


ROUTED = [
    "team-model",  # [catalog.aliases]
    "gpt-4o",  # the catalog's model of a type two deployments have, neither listing it
    "east:gpt-4o",  # a deployment's prefix: routing sends it whatever follows
    "anthropic:claude-haiku-4-5",
    "llama3.2",  # pulled on Ollama as llama3.2:latest, which the catalog does not know: the catch-all's
    "llama3.2:latest",
    "ollama:llama3.2:latest",
]
TYPOS = [
    "CLAUDE-HAIKU-4-5",  # the catalog folds case to pick a provider type; the provider does not
    "gpt-4o-minii",  # taken by the catch-all only
    "east:gpt-4o-minii",
    "opena:gpt-4o-mini",
    "nothing-like-any-model",
    "openai:gpt-4o-mini",  # two deployments of that type: the prefix names neither
]


@pytest.mark.parametrize("name", ROUTED + TYPOS)
def test_a_name_is_retrieved_exactly_when_a_completion_is_served_under_it(oai, claude, name):
    refused = completes(oai, name)
    if refused is None:
        found = oai.models.retrieve(name)
        # the name as asked, or the listed id an alias stands for (claude-haiku-4-5 → its dated id)
        assert found.id == name or found.id in {model.id for model in oai.models.list()}
        assert found.object == "model" and found.owned_by
        assert claude.models.retrieve(name).id == found.id  # the Anthropic SDK's shape too
        return
    assert refused.status_code in (400, 404)
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve(name)
    body = caught.value.body  # OpenAI's own 404 for a model: invalid_request_error, param model, model_not_found
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert body["param"] == "model" and body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve(name)
    offered = str(refused.message).partition("id you mean ")[2]  # the completion's offer, when it made one
    if offered:
        assert offered.split(",")[0] in body["message"]


@pytest.mark.parametrize("name", ROUTED)
def test_every_routed_name_is_served(oai, name):
    """(The witness above holds for these names by their completions' success, not vacuously.)"""
    assert completes(oai, name) is None


def test_owned_by_names_every_deployment_a_completion_may_go_to(oai):
    assert oai.models.retrieve("gpt-4o").owned_by == "east,west"
    assert oai.models.retrieve("east:gpt-4o").owned_by == "east"
    assert oai.models.retrieve("team-model").owned_by == "anthropic"
    assert oai.models.retrieve("llama3.2").owned_by == "ollama"


def test_a_typo_gets_the_offer_a_completion_gets(oai):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve("gpt-4o-minii")
    assert "'gpt-4o-mini'" in caught.value.message and "GET /v1/models" in caught.value.message
    with pytest.raises(openai.NotFoundError) as prefixed:
        oai.models.retrieve("east:gpt-4o-minii")
    assert "'east:gpt-4o-mini'" in prefixed.value.message


def test_a_token_retrieves_only_what_it_may_use_and_is_offered_nothing_else(tmp_path, monkeypatch, sims):
    """A token kept to echo and Ollama: a name routed to a deployment it may not use is a 404 naming
    neither that deployment nor its models, and a typo is offered none of them."""
    from gtl_nb.gateway.local import start_gateway

    more = {name: table for name, table in tables(sims, tmp_path).items() if name.startswith("providers.")}
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "GTL_TEST_RETRIEVE_SECRET", more=more)
    token = mint("chat:write", "models:read", allowed_deployments=["echo", "ollama"])
    with start_gateway(config) as running:
        client = openai.OpenAI(base_url=f"{running.url('http')}/v1", api_key=token, max_retries=0)
        assert client.models.retrieve("llama3.2").owned_by == "ollama"
        assert client.models.retrieve("echo").owned_by == "echo"
        for hidden in ("gpt-4o", "east:gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", "gpt-4o-minii"):
            assert completes(client, hidden) is not None
            with pytest.raises(openai.NotFoundError) as caught:
                client.models.retrieve(hidden)
            said = caught.value.message.replace(repr(hidden), "")  # (the name asked is said back)
            assert said.startswith("Error code: 404 - The model  does not exist on this gateway")
            for unseen in ("east", "west", "anthropic", "claude", "gpt-4o"):
                assert unseen not in said


def test_owned_by_of_a_bare_name_is_every_deployment_a_request_for_it_may_fail_over_to(tmp_path):
    """Anthropic and Bedrock both serve Claude: a request for the bare id fails over from one to the other
    (here Anthropic is overloaded and Bedrock answers), so the list and retrieve name both, in that order."""
    down = sim.serve("anthropic", faults=sim.Fault.overloaded())
    bedrock = sim.serve("bedrock", seed=1)
    keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret", "region": "us-east-1"}
    config = {
        "providers.anthropic": {"api_key": SIM_KEY, "base_url": down.base_url},
        "providers.bedrock": {"base_url": bedrock.base_url, **keys},
        "routing.retry": {"max_attempts": 1},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    try:
        with serving(write_toml(tmp_path / "gtl.toml", config)) as served:
            client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="anything: auth is none", max_retries=0)
            listed = {model.id: model.owned_by for model in client.models.list()}
            bare = next(name for name in listed if name.startswith("claude-haiku-4-5-"))
            assert completes(client, bare) is None  # answered, by Bedrock: Anthropic is down
            assert listed[bare] == "anthropic,bedrock"
            assert client.models.retrieve(bare).owned_by == "anthropic,bedrock"
            assert client.models.retrieve("claude-haiku-4-5").owned_by == "anthropic,bedrock"  # (its alias)
            assert listed[f"anthropic:{bare}"] == "anthropic"
    finally:
        down.close()
        bedrock.close()


def provider_list(simulator: sim.Simulator, kind: str) -> dict[str, Any]:
    """A simulator's own model list, read as its provider's SDK would: id → its creation time, as listed."""
    if kind == "openai":
        listed = openai.OpenAI(base_url=simulator.base_url, api_key=SIM_KEY, max_retries=0).models.list()
        return {model.id: model.created for model in listed}
    client = anthropic.Anthropic(base_url=simulator.base_url, api_key=SIM_KEY, max_retries=0)
    return {model.id: model.created_at for model in client.models.list(limit=1000)}


def test_created_is_the_providers_own_time_where_its_list_gives_one(oai, claude, sims):
    """OpenAI's ``created`` and Anthropic's ``created_at`` come from the providers' lists; Ollama's list has
    no creation time (``modified_at`` is when it was pulled), nor has echo: theirs is 0, the epoch."""
    east, made_by_anthropic = provider_list(sims["east"], "openai"), provider_list(sims["anthropic"], "anthropic")
    listed = {model.id: model for model in oai.models.list()}
    assert listed["east:gpt-4o-mini"].created == east["gpt-4o-mini"] > 0
    assert listed["gpt-4o-mini"].created == east["gpt-4o-mini"]  # (east's and west's lists agree)
    claude_ids = [name for name in listed if name.startswith("anthropic:")]
    assert claude_ids
    for name in claude_ids:
        bare = name.partition(":")[2]
        assert listed[name].created == listed[bare].created == int(made_by_anthropic[bare].timestamp())
    assert {listed[name].created for name in listed if name.startswith(("ollama:", "echo"))} == {0}
    assert oai.models.retrieve("east:gpt-4o").created == east["gpt-4o"]  # a routed name on that list
    assert oai.models.retrieve("team-model").created == 0  # on no provider's list
    in_claudes_shape = {model.id: model.created_at for model in claude.models.list(limit=1000)}
    for name in claude_ids:
        assert in_claudes_shape[name] == made_by_anthropic[name.partition(":")[2]]
    assert claude.models.retrieve("east:gpt-4o-mini").created_at.timestamp() == east["gpt-4o-mini"]
    assert in_claudes_shape["echo"].timestamp() == 0


def test_a_provider_list_that_cannot_be_had_leaves_created_unknown_and_the_list_answers(tmp_path, sims):
    config = {
        "providers.east": {"type": "openai", "api_key": SIM_KEY, "base_url": sims["east"].base_url},
        "providers.refused": {"type": "openai", "api_key": "not-the-key", "base_url": sims["west"].base_url},
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
    }
    with serving(write_toml(tmp_path / "gtl.toml", config)) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="anything: auth is none", max_retries=0)
        listed = {model.id: model.created for model in client.models.list()}
    assert listed["refused:gpt-4o-mini"] == 0  # its list refused the gateway's key: the time is unknown
    assert listed["east:gpt-4o-mini"] == provider_list(sims["east"], "openai")["gpt-4o-mini"]
    assert listed["gpt-4o-mini"] == listed["east:gpt-4o-mini"]  # the owner whose list has it
