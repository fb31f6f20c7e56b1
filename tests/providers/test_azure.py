"""The ``azure`` dialect: the recorded Azure stream (parsed chunks turned back into SSE), Azure's
error bodies, URLs per API flavour, the ``api-key`` header and the content-filter cases."""

from __future__ import annotations

import json
from typing import Any

import pytest
import wire

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import CompletionRequest, Done, Error, Message, Token, Usage
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.openai import AZURE_API_VERSION, AzureDialect

AZURE = wire.fixture_dir("azure")
DIALECT = AzureDialect()
DEPLOYMENT = Deployment(
    name="azure-east",
    type="azure",
    api_key="azure-key-1",
    base_url="https://myres.openai.azure.com/",
    options={"deployment": "gpt4o-prod"},
)
GTL_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
}


make_request = wire.request_maker(session_id="s-1", model="gpt-4o")


def sse(chunks: list[Any], *, done: bool = True) -> bytes:
    """Parsed chunks back into SSE bytes, as the fixtures README says: ``data: <json>\\n\\n`` each, then
    ``data: [DONE]\\n\\n``."""
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (body + ("data: [DONE]\n\n" if done else "")).encode()


# how wire.piece_sets cuts this file's bodies at random
SEED, MAX_CUTS = 11, 60


def decode(pieces: list[bytes], request: CompletionRequest | None = None) -> list[Any]:
    return wire.feed_all(DIALECT.response_decoder(request or make_request(), DEPLOYMENT), pieces)


def assert_matches(events: list[Any], expected: dict[str, Any]) -> None:
    wire.check_sequence(events, "s-1")
    wire.assert_matches_expected(
        events, expected, finish_reason=GTL_FINISH[expected["finish_reason"]], provider="azure-east", reasoning=False
    )
    assert expected["usage"] is None  # Azure sent no usage chunk: every count is unknown, not 0
    assert events[-2] == Usage(session_id="s-1")


# ----------------------------------------------------------------------------------------------
# recorded stream

CHUNKS = json.loads((AZURE / "stream-text-then-tool-call.chunks.json").read_text())
EXPECTED = wire.expected(AZURE, "stream-text-then-tool-call")


def test_whole_recording_replayed_as_one_stream_gives_the_expected_top_level_result() -> None:
    events = wire.decode_every_way(decode, sse(CHUNKS), seed=SEED, max_cuts=MAX_CUTS)
    assert_matches(events, EXPECTED)


@pytest.mark.parametrize("which", [0, 1])
def test_each_recorded_stream_alone_gives_its_expected_result(which: int) -> None:
    expected = EXPECTED["streams"][which]
    first, last = expected["chunks"]
    chunks = CHUNKS[first : last + 1]
    assert chunks[0]["choices"] == [] and "prompt_filter_results" in chunks[0]  # starts with the prelude
    for pieces in wire.piece_sets(sse(chunks), seed=which, max_cuts=MAX_CUTS).values():
        events = decode(pieces)
        assert_matches(events, expected)
        assert events[-1].model == "gpt-4o-2024-05-13"  # the prelude's empty model is not taken


def test_prelude_alone_then_eof_is_a_stream_ended_error() -> None:
    events = decode([sse(CHUNKS[:1], done=False)])
    assert len(events) == 1 and isinstance(events[0], Error)
    assert events[0].code == "PROVIDER_UNAVAILABLE" and events[0].retryable
    assert "before [DONE]" in events[0].message


def test_content_filter_finish_reason_maps_to_content_filter() -> None:
    filtered = {**CHUNKS[-1], "choices": [{**CHUNKS[-1]["choices"][0], "finish_reason": "content_filter"}]}
    events = decode([sse([CHUNKS[0], CHUNKS[1], CHUNKS[2], filtered])])
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "content_filter"
    assert [e.text for e in events if isinstance(e, Token)] == ["Hello"]


# ----------------------------------------------------------------------------------------------
# errors


MIDSTREAM = json.loads((AZURE / "error-midstream-server-error.json").read_text())
MIDSTREAM_EXPECTED = wire.expected(AZURE, "error-midstream-server-error")["error"]


@pytest.mark.parametrize("event_line", ["", "event: error\n"])
def test_overload_error_inside_a_200_stream_is_a_retryable_overloaded_error(event_line: str) -> None:
    body = sse(CHUNKS[:3], done=False) + f"{event_line}data: {json.dumps(MIDSTREAM)}\n\n".encode()
    for pieces in wire.piece_sets(body, seed=SEED, max_cuts=MAX_CUTS).values():
        events = decode(pieces)
        wire.check_sequence(events, "s-1")
        assert [e.text for e in events if isinstance(e, Token)] == ["Hello"]
        error = events[-1]
        wire.assert_error_as_expected(error, MIDSTREAM_EXPECTED)
        assert error.http_status == 200  # the provider's answer, inside its 200 (as every provider's is)


RATE_LIMIT = (AZURE / "error-429-rate-limit.json").read_bytes()
RATE_LIMIT_EXPECTED = wire.expected(AZURE, "error-429-rate-limit")["error"]


def test_azure_429_with_string_code_is_a_retryable_rate_limit_with_the_text_hint() -> None:
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, RATE_LIMIT_EXPECTED["http_status"], {}, RATE_LIMIT)
    wire.assert_error_as_expected(error, RATE_LIMIT_EXPECTED)
    assert error.retry_after == 86400.0  # "Please retry after 86400 seconds"
    assert (error.http_status, error.provider) == (429, "azure-east")


@pytest.mark.parametrize(("headers", "wait"), [({"retry-after-ms": "1500"}, 1.5), ({"Retry-After": "12"}, 12.0)])
def test_azure_retry_headers_win_over_the_message_text(headers: dict[str, str], wait: float) -> None:
    assert DIALECT.decode_error(make_request(), DEPLOYMENT, 429, headers, RATE_LIMIT).retry_after == wait


def test_prompt_blocked_by_the_content_filter_is_content_filtered() -> None:
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
            "content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"violence": {"filtered": True, "severity": "high"}},
            },
        }
    }
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 400, {}, json.dumps(body).encode())
    assert (error.code, error.retryable, error.http_status) == ("CONTENT_FILTERED", False, 400)
    assert "content management policy" in error.message


def test_unknown_deployment_is_model_not_found() -> None:
    body = {
        "error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist.",
        }
    }
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 404, {}, json.dumps(body).encode())
    assert error.code == "MODEL_NOT_FOUND" and not error.retryable


def test_wrong_key_is_auth_failed() -> None:
    body = {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}
    error = DIALECT.decode_error(make_request(), DEPLOYMENT, 401, {}, json.dumps(body).encode())
    assert error.code == "AUTH_FAILED" and not error.retryable


# ----------------------------------------------------------------------------------------------
# requests


def body_of(built: Any) -> dict[str, Any]:
    return json.loads(built.body)


def test_classic_url_names_the_deployment_and_the_default_ga_api_version() -> None:
    assert AZURE_API_VERSION == "2024-10-21"
    built = DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0)
    assert built.url == (
        "https://myres.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    )
    assert body_of(built)["model"] == "gpt4o-prod"


def test_deployment_defaults_to_the_request_model_and_api_version_is_configurable() -> None:
    deployment = Deployment(
        name="az",
        type="azure",
        api_key="k",
        base_url="https://r.openai.azure.com",
        api_version="2025-04-01-preview",
    )
    built = DIALECT.build_request(make_request(model="my gpt"), deployment, now=0.0)
    assert (
        built.url
        == "https://r.openai.azure.com/openai/deployments/my%20gpt/chat/completions?api-version=2025-04-01-preview"
    )
    option = Deployment(
        name="az",
        type="azure",
        api_key="k",
        base_url="https://r.openai.azure.com",
        options={"api_version": "2024-06-01"},
    )
    assert DIALECT.build_request(make_request(), option, now=0.0).url.endswith("?api-version=2024-06-01")


def test_v1_api_url_has_no_api_version_and_sends_the_deployment_as_model() -> None:
    deployment = Deployment(
        name="az",
        type="azure",
        api_key="k",
        base_url="https://r.openai.azure.com",
        options={"api": "v1", "deployment": "dep-5"},
    )
    built = DIALECT.build_request(make_request(), deployment, now=0.0)
    assert built.url == "https://r.openai.azure.com/openai/v1/chat/completions"
    assert body_of(built)["model"] == "dep-5"


def test_api_key_header_replaces_authorization() -> None:
    headers = DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0).headers
    assert headers["api-key"] == "azure-key-1"
    assert "Authorization" not in headers


def test_entra_id_token_is_sent_as_bearer_instead_of_the_key() -> None:
    deployment = Deployment(
        name="az", type="azure", base_url="https://r.openai.azure.com", options={"azure_ad_token": "eyJ"}
    )
    headers = DIALECT.build_request(make_request(), deployment, now=0.0).headers
    assert headers["Authorization"] == "Bearer eyJ" and "api-key" not in headers


def test_resource_option_builds_the_endpoint_and_a_missing_endpoint_is_a_configuration_error() -> None:
    deployment = Deployment(name="az", type="azure", api_key="k", options={"resource": "contoso"})
    assert DIALECT.build_request(make_request(), deployment, now=0.0).url.startswith(
        "https://contoso.openai.azure.com/openai/deployments/gpt-4o/"
    )
    with pytest.raises(ConfigurationError, match="base_url"):
        DIALECT.build_request(make_request(), Deployment(name="az", type="azure", api_key="k"), now=0.0)


def test_streaming_asks_for_usage_unless_disabled_for_old_api_versions() -> None:
    assert body_of(DIALECT.build_request(make_request(), DEPLOYMENT, now=0.0))["stream_options"] == {
        "include_usage": True
    }
    old = Deployment(
        name="az",
        type="azure",
        api_key="k",
        base_url="https://r.openai.azure.com",
        api_version="2023-05-15",
        options={"stream_usage": False},
    )
    assert "stream_options" not in body_of(DIALECT.build_request(make_request(), old, now=0.0))


def test_reasoning_model_gets_max_completion_tokens_but_keeps_the_system_role() -> None:
    request = make_request(
        model="o3-mini",
        max_tokens=100,
        messages=[Message(role="system", content="s"), Message(role="user", content="u")],
    )
    body = body_of(DIALECT.build_request(request, DEPLOYMENT, now=0.0))
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body
    assert body["messages"][0]["role"] == "system"


def test_models_request_urls_for_both_api_flavours() -> None:
    classic = DIALECT.models_request(DEPLOYMENT, now=0.0)
    assert classic.url == "https://myres.openai.azure.com/openai/models?api-version=2024-10-21"
    assert classic.method == "GET" and classic.headers["api-key"] == "azure-key-1"
    v1 = Deployment(name="az", type="azure", api_key="k", base_url="https://r.openai.azure.com", options={"api": "v1"})
    assert DIALECT.models_request(v1, now=0.0).url == "https://r.openai.azure.com/openai/v1/models"
    listing = {"data": [{"id": "gpt-4o-2024-05-13", "capabilities": {"chat_completion": True}}, {"id": "dall-e-3"}]}
    assert DIALECT.parse_models(json.dumps(listing).encode()) == ["gpt-4o-2024-05-13", "dall-e-3"]
