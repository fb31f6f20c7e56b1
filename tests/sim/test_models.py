"""Models: each simulator serves its provider's own models and answers any other name with the provider's
real "model not found" error (shapes from the recorded fixtures); ``models="*"`` accepts any name."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest

from gtl_nb import sim
from gtl_nb.providers.catalog import Catalog
from gtl_nb.sim import cli

from .conftest import chat_request, fixture_json

UNKNOWN = "no-such-model-9"


def _chat(provider: str, server: sim.Simulator, model: str) -> httpx.Response:
    return chat_request(provider, server, model)


def test_openai_answers_an_unknown_model_with_model_not_found(serve_sim: Any) -> None:
    reply = _chat("openai", serve_sim("openai"), UNKNOWN)
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {
            "message": f"The model `{UNKNOWN}` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }


def test_anthropic_answers_as_recorded(serve_sim: Any) -> None:
    recorded = fixture_json("anthropic", "error-404-model-not-found.json")
    retired = recorded["error"]["message"].removeprefix("model: ")  # claude-3-sonnet-20240229
    reply = _chat("anthropic", serve_sim("anthropic"), retired)
    assert reply.status_code == 404
    assert reply.json()["error"] == recorded["error"] and reply.json()["type"] == "error"


def test_gemini_answers_as_recorded(serve_sim: Any) -> None:
    recorded = fixture_json("gemini", "error-404-model-not-found.json")  # gemini-1.5-flash-8b, retired
    reply = _chat("gemini", serve_sim("gemini"), "gemini-1.5-flash-8b")
    assert reply.status_code == 404 and reply.json() == recorded


def test_ollama_answers_as_recorded(serve_sim: Any) -> None:
    reply = _chat("ollama", serve_sim("ollama"), "llama9")
    assert reply.status_code == 404 and reply.json() == fixture_json("ollama", "error-404-model-not-found.json")


def test_bedrock_answers_as_recorded(serve_sim: Any) -> None:
    reply = _chat("bedrock", serve_sim("bedrock"), "us.does-not-exist-model-v1:0")
    assert reply.status_code == 400
    assert reply.json() == fixture_json("bedrock", "error-400-invalid-model-stream.json")
    assert reply.headers["x-amzn-errortype"].startswith("ValidationException:")


def test_azure_answers_an_unknown_deployment_with_deployment_not_found(serve_sim: Any) -> None:
    reply = _chat("azure", serve_sim("azure"), "my-deployment")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "DeploymentNotFound"


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic", "gemini", "ollama", "bedrock"])
def test_every_model_the_catalog_prices_is_served_by_its_simulator(provider: str, serve_sim: Any) -> None:
    server = serve_sim(provider)
    for entry in Catalog.default().entries(provider):
        assert _chat(provider, server, entry.name).status_code == 200, entry.name


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic", "gemini", "ollama", "bedrock"])
def test_any_model_accepts_a_made_up_name(provider: str, serve_sim: Any) -> None:
    assert _chat(provider, serve_sim(provider, models=sim.ANY_MODEL), UNKNOWN).status_code == 200


def test_a_models_list_replaces_the_providers_own(serve_sim: Any) -> None:
    server = serve_sim("anthropic", models=["house-model"])
    assert _chat("anthropic", server, "house-model").status_code == 200
    assert _chat("anthropic", server, "claude-haiku-4-5").status_code == 404


def test_an_openai_compatible_server_serves_whatever_it_is_asked_for(serve_sim: Any) -> None:
    assert _chat("openai_compatible", serve_sim("openai_compatible"), UNKNOWN).status_code == 200


def test_aliases_and_inference_profiles_are_served(serve_sim: Any) -> None:
    assert _chat("anthropic", serve_sim("anthropic"), "claude-sonnet-4-5").status_code == 200
    assert _chat("ollama", serve_sim("ollama"), "llama3.2").status_code == 200  # a bare name is :latest
    bedrock = serve_sim("bedrock")
    assert _chat("bedrock", bedrock, "eu.amazon.nova-lite-v1:0").status_code == 200
    arn = "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"
    assert _chat("bedrock", bedrock, arn.replace("/", "%2F")).status_code == 200


def test_the_command_line_accepts_any_model_on_request() -> None:
    root = argparse.ArgumentParser(prog="gtl")
    cli.add_subcommands(root.add_subparsers(dest="command"))
    assert root.parse_args(["sim", "openai", "--any-model"]).models == sim.ANY_MODEL
    assert root.parse_args(["sim", "openai", "--model", "a", "--model", "b"]).models == ["a", "b"]
