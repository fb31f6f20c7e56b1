"""Routing's errors speak to whoever can act on them: the embedded client's user configures it, a
gateway's client cannot (``engine.routing``, "audience")."""

from __future__ import annotations

import pytest

from gtl_nb.engine.routing import EMBEDDED, GATEWAY, Router
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol.errors import ConfigurationError, ModelNotFoundError
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
        assert "GET /v1/models" in message and "providers=" not in message and "gtl_nb.connect" not in message
    with pytest.raises(ModelNotFoundError) as unknown:
        router(GATEWAY).resolve_model("claude-sonet-4-5")
    assert "did you mean" not in str(unknown.value) and "gtl models" not in str(unknown.value)
    with pytest.raises(ModelNotFoundError, match="did you mean 'gpt-4o-mini'"):
        router(GATEWAY).resolve_model("gpt-4o-mni")  # an openai model: this gateway serves it


def test_an_audience_nobody_reads_is_refused():
    with pytest.raises(ValueError, match="audience"):
        router("notebook")
