"""A provider's 404 for the URL itself says to check base_url; a 404 for a model stays as it was."""

from __future__ import annotations

import json

import pytest

import gtl_nb
from gtl_nb.protocol.errors import ModelNotFoundError
from gtl_nb.protocol.messages import CompletionRequest, Message
from gtl_nb.providers.anthropic import AnthropicDialect
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.gemini import GeminiDialect
from gtl_nb.providers.limits import MAX_ERROR_MESSAGE_CHARS
from gtl_nb.providers.ollama import OllamaDialect
from gtl_nb.providers.openai import OpenAICompatibleDialect, OpenAIDialect

REQUEST = CompletionRequest(session_id="s1", model="m", messages=[Message(role="user", content="hi")])
JSON = {"content-type": "application/json"}

# (dialect, deployment type, a 404 body for a wrong path, a 404 body for an unknown model)
CASES = [
    (
        OpenAIDialect(),
        "openai",
        {"error": {"message": "Invalid URL (POST /chat/completions)", "type": "invalid_request_error", "code": None}},
        {"error": {"message": "The model `gpt4o` does not exist", "type": "invalid_request_error", "code": None}},
    ),
    (
        OpenAICompatibleDialect(),
        "openai_compatible",
        {"detail": "Not Found"},
        {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404},
    ),
    (
        AnthropicDialect(),
        "anthropic",
        {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}},
        {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-nope"}},
    ),
    (
        GeminiDialect(),
        "gemini",
        {"error": {"code": 404, "message": "Method not found: POST /x/v1beta/models/g:generateContent"}},
        {"error": {"code": 404, "message": "models/g is not found for API version v1beta", "status": "NOT_FOUND"}},
    ),
    (
        OllamaDialect(),
        "ollama",
        {"error": "404 page not found"},
        {"error": 'model "llama9" not found, try pulling it first'},
    ),
]


def _decode(dialect: object, kind: str, status: int, body: object) -> tuple[str, str]:
    deployment = Deployment(name="team-llm", type=kind, api_key="k", base_url="http://127.0.0.1:9/api")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = dialect.decode_error(REQUEST, deployment, status, JSON, raw)  # type: ignore[attr-defined]
    return error.code, error.message


@pytest.mark.parametrize(("dialect", "kind", "wrong_path", "unknown_model"), CASES)
def test_a_404_for_the_path_names_the_deployments_base_url(
    dialect: object, kind: str, wrong_path: object, unknown_model: object
) -> None:
    code, message = _decode(dialect, kind, 404, wrong_path)
    assert code == "MODEL_NOT_FOUND"  # the code stays what the services mean by 404
    assert "HTTP 404 for the URL itself, not for a model: check the base_url of deployment 'team-llm'" in message
    assert "127.0.0.1:9" not in message  # the address stays with the deployment (a gateway's clients)


@pytest.mark.parametrize(("dialect", "kind", "wrong_path", "unknown_model"), CASES)
def test_a_404_for_a_model_is_left_as_the_provider_said_it(
    dialect: object, kind: str, wrong_path: object, unknown_model: object
) -> None:
    code, message = _decode(dialect, kind, 404, unknown_model)
    assert code == "MODEL_NOT_FOUND"
    assert "base_url" not in message


def test_a_404_page_that_is_not_json_gets_the_hint_and_other_statuses_do_not() -> None:
    _, page = _decode(OpenAICompatibleDialect(), "openai_compatible", 404, b"<html>File Not Found</html>")
    assert "an OpenAI-compatible server's usually ends in /v1" in page
    _, refused = _decode(OpenAIDialect(), "openai", 400, CASES[0][2])
    assert "base_url" not in refused


def test_an_azure_deployment_that_does_not_exist_gets_no_base_url_hint() -> None:
    body = {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this resource does not exist."}}
    _, message = _decode(OpenAIDialect(), "azure", 404, body)
    assert "base_url" not in message


def test_a_long_provider_message_gives_way_to_the_hint() -> None:
    long = "Invalid URL (POST /chat/completions) " + "x" * 10_000
    _, message = _decode(OpenAIDialect(), "openai", 404, {"error": {"message": long}})
    assert len(message) <= MAX_ERROR_MESSAGE_CHARS
    assert message.endswith("OpenAI's ends in /v1, as https://api.openai.com/v1)")


def test_openai_base_url_without_v1_is_told_to_check_base_url() -> None:
    with gtl_nb.sim.running("openai") as url:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": url.removesuffix("/v1")}}, ledger=False
        )
        try:
            with pytest.raises(ModelNotFoundError, match=r"check the base_url of deployment 'openai'; OpenAI's ends"):
                client.complete("gpt-4o", "hi")
        finally:
            client.close()


def test_ollama_base_url_with_v1_reaches_the_native_api() -> None:
    with gtl_nb.sim.running("ollama") as url:
        client = gtl_nb.connect(providers={"ollama": {"base_url": url + "/v1"}}, ledger=False)
        try:
            assert client.complete("ollama:llama3.2", "hi").text.startswith('You said: "hi"')
        finally:
            client.close()


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        # a router's verdict at the right URL: no backend serves what the request asks
        ("openai_compatible", {"error": {"message": "No endpoints found that support tool use.", "code": 404}}),
        ("gemini", {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}),
    ],
)
def test_a_providers_own_404_verdict_in_json_gets_no_base_url_hint(kind: str, body: object) -> None:
    dialect = GeminiDialect() if kind == "gemini" else OpenAICompatibleDialect()
    code, message = _decode(dialect, kind, 404, body)
    assert code == "MODEL_NOT_FOUND"
    assert "base_url" not in message


@pytest.mark.parametrize("body", [b"", b"Not Found", b"<!DOCTYPE html><html><body>nope</body></html>"])
def test_a_404_body_that_is_no_json_object_is_the_servers_for_the_path(body: bytes) -> None:
    _, message = _decode(OpenAICompatibleDialect(), "openai_compatible", 404, body)
    assert "check the base_url of deployment 'team-llm'" in message


def test_a_very_long_deployment_name_keeps_the_message_in_its_bound() -> None:
    deployment = Deployment(name="n" * 5000, type="openai", api_key="k", base_url="http://127.0.0.1:9/api")
    raw = json.dumps({"error": {"message": "Invalid URL (POST /chat/completions)"}}).encode()
    error = OpenAIDialect().decode_error(REQUEST, deployment, 404, JSON, raw)
    assert len(error.message) <= MAX_ERROR_MESSAGE_CHARS
    assert "check the base_url of deployment 'nnnn" in error.message
