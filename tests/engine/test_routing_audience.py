"""Routing's errors speak to whoever can act on them: the embedded client's user configures it, a
gateway's client cannot (``engine.routing``, "audience")."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.routing import EMBEDDED, GATEWAY, Router
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol.errors import ConfigurationError, InvalidRequestError, ModelNotFoundError
from gtl_nb.protocol.messages import CompletionRequest, Error, Message
from gtl_nb.providers.catalog import Catalog


def router(audience: str) -> Router:
    settings = load_settings(providers={"openai": {"api_key": "k", "base_url": "http://127.0.0.1:9/v1"}}, environ={})
    return Router(settings.deployments, Catalog.default(), audience=audience)


def test_the_embedded_user_is_told_what_to_configure():
    with pytest.raises(ConfigurationError, match=r"set ANTHROPIC_API_KEY, or pass providers=") as caught:
        router(EMBEDDED).resolve_model("claude-sonnet-4-5")
    assert "gateway" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="provider 'anthropic' is not configured"):
        router(EMBEDDED).candidates("anthropic:claude-sonnet-4-5")
    with pytest.raises(ModelNotFoundError, match=r"did you mean.*claude-sonnet-4-5.*`gtl models`"):
        router(EMBEDDED).resolve_model("claude-sonet-4-5")  # the catalog's names, served or not


def test_a_gateways_client_is_told_the_model_is_not_served_here():
    for model in ("claude-sonnet-4-5", "anthropic:claude-sonnet-4-5"):
        with pytest.raises(ModelNotFoundError) as caught:
            router(GATEWAY).candidates(model)
        message = str(caught.value)
        assert "this gateway has no anthropic provider" in message and "[providers.anthropic]" in message
        assert "client.models()" in message and "providers=" not in message and "gtl_nb.connect" not in message
    with pytest.raises(ModelNotFoundError) as unknown:
        router(GATEWAY).resolve_model("claude-sonet-4-5")
    assert "did you mean" not in str(unknown.value) and "gtl models" not in str(unknown.value)
    with pytest.raises(ModelNotFoundError, match="did you mean 'gpt-4o-mini'"):
        router(GATEWAY).resolve_model("gpt-4o-mni")  # an openai model: this gateway serves it


def test_an_audience_nobody_reads_is_refused():
    with pytest.raises(ValueError, match="audience"):
        router("notebook")


def test_a_gateway_names_no_deployment_in_its_routing_errors():
    settings = load_settings(
        providers={
            "public": {"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"},
            "also-openai": {"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"},
        },
        environ={},
    )
    gateway = Router(settings.deployments, Catalog.default(), audience=GATEWAY)
    with pytest.raises(ModelNotFoundError) as unknown:
        gateway.targets(CompletionRequest(session_id="s", model="gpt-4o", provider="publik", messages=[]))
    assert "no deployment or provider named 'publik'" in str(unknown.value) and "also-openai" not in str(unknown.value)
    with pytest.raises(InvalidRequestError) as several:
        gateway.targets(CompletionRequest(session_id="s", model="gpt-4o", provider="openai", messages=[]))
    assert "several deployments" in str(several.value) and "public" not in str(several.value)
    embedded = Router(settings.deployments, Catalog.default(), audience=EMBEDDED)
    with pytest.raises(ConfigurationError, match=r"several deployments \(public, also-openai\)"):
        embedded.targets(CompletionRequest(session_id="s", model="gpt-4o", provider="openai", messages=[]))


def _first_error(engine, request: CompletionRequest, context: RequestContext) -> str:
    async def run() -> str:
        try:
            async for event in engine.stream(request, context=context):
                if isinstance(event, Error):
                    return event.message
            return ""
        finally:
            await engine.aclose()

    return asyncio.run(run())


def test_did_you_mean_names_only_what_the_caller_may_see():
    """A token limited to one deployment, or without ``models:read``, hears of no other model."""
    providers = {
        "public": {"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"},
        "hr-internal": {
            "type": "openai_compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "models": ["payroll-llm-v2"],
        },
    }

    def engine():
        return build_engine(load_settings(providers=providers, environ={}), ledger=False, audience=GATEWAY)

    ask = CompletionRequest(session_id="s", model="payroll-llm", messages=[Message(role="user", content="x")])
    everyone = RequestContext(principal="a", scopes=frozenset({"chat:write", "models:read"}))
    assert "did you mean 'payroll-llm-v2'" in _first_error(engine(), ask, everyone)
    limited = RequestContext(
        principal="b", scopes=frozenset({"chat:write", "models:read"}), allowed_deployments=frozenset({"public"})
    )
    assert "payroll-llm-v2" not in _first_error(engine(), ask, limited)  # on a deployment it may not use
    blind = RequestContext(principal="c", scopes=frozenset({"chat:write"}))
    near = CompletionRequest(session_id="s", model="gpt-4o-mni", messages=[Message(role="user", content="x")])
    assert "did you mean" not in _first_error(engine(), near, blind)
    assert "did you mean 'gpt-4o-mini'" in _first_error(engine(), near, everyone)


def test_serve_words_errors_for_a_gateways_clients_whatever_engine_it_is_given():
    from gtl_nb.gateway.devauth import DevAuth
    from gtl_nb.gateway.listeners import Shutdown
    from gtl_nb.gateway.server import serve
    from gtl_nb.gateway.settings import GatewaySettings

    async def main() -> None:
        settings = load_settings(config={"gateway": {"http": {"host": "127.0.0.1", "port": 0}}}, environ={})
        engine = build_engine(settings, ledger=False)  # as an embedder builds it: the embedded audience
        assert engine.audience == EMBEDDED
        shutdown = Shutdown(grace=0)
        ready = asyncio.Event()
        serving = asyncio.ensure_future(
            serve(
                settings,
                GatewaySettings.from_settings(settings),
                authenticate=DevAuth("tester"),
                shutdown=shutdown,
                announce=lambda listener, url: ready.set(),
                engine=engine,
            )
        )
        await asyncio.wait_for(ready.wait(), 10)
        assert engine.audience == GATEWAY and engine.router.audience == GATEWAY
        shutdown.begin()
        await asyncio.wait_for(serving, 10)
        assert engine.audience == EMBEDDED  # given back to its embedder
        await engine.aclose()

    asyncio.run(main())


def test_a_gateways_forbidden_names_only_what_the_caller_asked_for():
    providers = {
        "public": {"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"},
        "secret-anthropic": {"type": "anthropic", "api_key": "k", "base_url": "http://127.0.0.1:9"},
    }
    limited = RequestContext(
        principal="b", scopes=frozenset({"chat:write", "models:read"}), allowed_deployments=frozenset({"public"})
    )
    for audience in (GATEWAY, EMBEDDED):
        for asked in ({"model": "claude-sonnet-4-5"}, {"model": "claude-sonnet-4-5", "provider": "anthropic"}):
            engine = build_engine(load_settings(providers=providers, environ={}), ledger=False, audience=audience)
            request = CompletionRequest(session_id="s", messages=[Message(role="user", content="x")], **asked)
            message = _first_error(engine, request, limited)
            assert message.startswith("this token may not use")
            if audience == GATEWAY:
                assert "secret-anthropic" not in message and "claude-sonnet-4-5" in message
                assert message.endswith("; it may use deployments public")  # its own allow-list, to choose from
                blind = dataclasses.replace(limited, scopes=frozenset({"chat:write"}))  # may not list models
                assert "it may use" not in _first_error(engine, request, blind)
            else:  # the embedded user configured the deployments: naming them helps
                assert "secret-anthropic" in message


def test_a_contexts_allowances_say_what_its_own_lists_let_it_use():
    assert RequestContext(principal="p").allowances() == ""  # nothing restricted
    assert RequestContext(principal="p", allowed_deployments=frozenset()).allowances() == "no deployment"
    both = RequestContext(principal="p", allowed_deployments=frozenset({"b", "a"}), allowed_models=frozenset({"gpt-*"}))
    assert both.allowances() == "deployments a, b; models gpt-*"
    many = RequestContext(principal="p", allowed_models=frozenset(f"m{i:02d}" for i in range(12)))
    assert many.allowances() == "models m00, m01, m02, m03, m04, m05, m06, m07, m08, m09 and 2 more"


@pytest.fixture(scope="module")
def claude_sim():
    from gtl_nb import sim

    # the account has a model no list names (a new snapshot): the provider, not a list, decides
    with sim.serve("anthropic", models=["claude-sonnet-4-5", "claude-opus-4-5", "claude-sonnet-4-5-20991231"]) as s:
        yield s


def _claude_engine(url: str, audience: str = GATEWAY, **deployment: object):
    providers = {"anthropic": {"api_key": "sim-key", "base_url": url, **deployment}}
    return build_engine(load_settings(providers=providers, environ={}), ledger=False, audience=audience)


def _asked(model: str) -> CompletionRequest:
    return CompletionRequest(session_id="s", model=model, messages=[Message(role="user", content="x")])


def test_a_typo_after_a_deployment_prefix_gets_the_providers_404_and_did_you_mean(claude_sim):
    """``anthropic:claude-sonnet-4-55`` reaches the provider (no list is complete enough to refuse a name up
    front); its 404 keeps the provider's words and adds the deployment's models like the name, as a bare
    unknown name's error does — to a caller that may see them."""
    everyone = RequestContext(principal="a", scopes=frozenset({"chat:write", "models:read"}))
    said = _first_error(_claude_engine(claude_sim.base_url), _asked("anthropic:claude-sonnet-4-55"), everyone)
    assert said.startswith("model: claude-sonnet-4-55; did you mean 'anthropic:claude-sonnet-4-5'")
    blind = RequestContext(principal="b", scopes=frozenset({"chat:write"}))
    assert _first_error(_claude_engine(claude_sim.base_url), _asked("anthropic:claude-sonnet-4-55"), blind) == (
        "model: claude-sonnet-4-55"
    )
    sonnet_45 = RequestContext(  # may ask for the typo, may see only the names its pattern allows
        principal="c", scopes=frozenset({"chat:write", "models:read"}), allowed_models=frozenset({"claude-sonnet-4-5*"})
    )
    limited = _first_error(_claude_engine(claude_sim.base_url), _asked("anthropic:claude-sonnet-4-55"), sonnet_45)
    assert "'anthropic:claude-sonnet-4-5'" in limited and "'anthropic:claude-sonnet-4-5-20250929'" in limited
    assert "opus" not in limited and "claude-sonnet-5-5" not in limited
    listed = _claude_engine(claude_sim.base_url, models=["claude-sonnet-4-5-20991231"])
    assert "'anthropic:claude-sonnet-4-5-20991231'" in _first_error(
        listed, _asked("anthropic:claude-sonet-4-5-20991231"), everyone
    )


def test_a_name_only_the_provider_knows_is_answered_and_a_listed_name_it_refuses_gets_no_offer(claude_sim):
    everyone = RequestContext(principal="a", scopes=frozenset({"chat:write", "models:read"}))
    assert (
        _first_error(_claude_engine(claude_sim.base_url), _asked("anthropic:claude-sonnet-4-5-20991231"), everyone)
        == ""
    )
    # the catalog knows it, the account does not have it: the 404 is about access, not a typo
    assert _first_error(_claude_engine(claude_sim.base_url), _asked("anthropic:claude-haiku-4-5"), everyone) == (
        "model: claude-haiku-4-5"
    )


def test_the_embedded_client_hears_the_same_offer(claude_sim):
    said = _first_error(
        _claude_engine(claude_sim.base_url, audience=EMBEDDED), _asked("anthropic:claude-opus-4-55"), None
    )
    assert said.startswith("model: claude-opus-4-55; did you mean 'anthropic:claude-opus-4-5'")


@pytest.fixture(scope="module")
def openai_and_ollama():
    from gtl_nb import sim

    with sim.serve("openai") as openai_sim, sim.serve("ollama") as ollama_sim:
        yield {
            "openai": {"api_key": "sim-key", "base_url": openai_sim.base_url},
            "ollama": {"base_url": ollama_sim.base_url},
        }


def _engine_of(providers: dict, audience: str = GATEWAY):
    return build_engine(load_settings(providers=providers, environ={}), ledger=False, audience=audience)


def test_a_typo_that_reached_the_local_model_deployment_only_as_its_catch_all_gets_did_you_mean(openai_and_ollama):
    """With Ollama configured every name no other deployment serves goes to it: a typo of an OpenAI name
    gets Ollama's 404, which keeps Ollama's words and adds what the same typo gets without Ollama — the
    names like it across every deployment the caller may see, and the pointer to the model list."""
    sdk = RequestContext(principal="a", scopes=frozenset({"chat:write", "models:read"}), api="openai")
    said = _first_error(_engine_of(openai_and_ollama), _asked("gpt-4o-minii"), sdk)
    assert said.startswith('model "gpt-4o-minii" not found, try pulling it first')  # the provider's words
    assert "deployment 'ollama'" in said and "did you mean 'gpt-4o-mini'" in said
    assert said.endswith("; GET /v1/models lists what this gateway serves")
    mistyped_prefix = _first_error(_engine_of(openai_and_ollama), _asked("opena:gpt-4o-mini"), sdk)
    assert "did you mean 'openai:gpt-4o-mini'" in mistyped_prefix
    gtl = RequestContext(principal="a", scopes=frozenset({"chat:write", "models:read"}))
    assert "client.models()" in _first_error(_engine_of(openai_and_ollama), _asked("gpt-4o-minii"), gtl)
    # a token that may not list models hears of none, and of the scope it lacks
    blind = _first_error(
        _engine_of(openai_and_ollama),
        _asked("gpt-4o-minii"),
        dataclasses.replace(sdk, scopes=frozenset({"chat:write"})),
    )
    assert "did you mean" not in blind and "models:read scope (this one has not)" in blind
    # one limited to the Ollama deployment hears only of Ollama's names
    local = dataclasses.replace(sdk, allowed_deployments=frozenset({"ollama"}))
    assert "gpt-4o-mini'" not in _first_error(_engine_of(openai_and_ollama), _asked("gpt-4o-minii"), local)
    assert "did you mean 'llama3.1:8b'" in _first_error(_engine_of(openai_and_ollama), _asked("llama3.1:8bb"), local)
    embedded = _first_error(_engine_of(openai_and_ollama, EMBEDDED), _asked("gpt-4o-minii"), None)
    assert "did you mean 'gpt-4o-mini'" in embedded and embedded.endswith("`gtl models` lists what is available")
    # a name the Ollama deployment was asked for by name is not a catch-all's typo: its own models only
    named = _first_error(_engine_of(openai_and_ollama), _asked("ollama:llama3.1:8bb"), sdk)
    assert "'ollama:llama3.1:8b'" in named and "GET /v1/models" not in named


def test_a_mistyped_deployment_prefix_is_told_apart_from_an_ollama_tag():
    router_ = router(GATEWAY)
    with pytest.raises(ModelNotFoundError) as prefix:
        router_.resolve_model("opena:gpt-4o-mini")
    assert "'opena' names no deployment here (did you mean 'openai:gpt-4o-mini'" in str(prefix.value)
    with pytest.raises(ModelNotFoundError, match="'opena' names no deployment here; did you mean 'openai:gpt-4o-mini'"):
        router(EMBEDDED).resolve_model("opena:gpt-4o-mini")
    assert router_.misspelt_prefix("openai:gpt-4o-mini") == []  # not misspelt
    assert router_.misspelt_prefix("opena:no-such-model") == []  # the rest is no model it serves
    assert router_.misspelt_prefix("opena:gpt-4o-mini", lambda deployment, model: False) == []  # may see none
