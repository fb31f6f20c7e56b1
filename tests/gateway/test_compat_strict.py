"""What the compatible endpoints refuse rather than ignore, driven by the official ``openai`` and
``anthropic`` SDKs: a field the API does not have (``max_token``, ``temprature``, GTL's ``providers``
in ``extra_body``), a ``max_tokens`` no model can write, an image URL neither ``https:`` nor ``data:``.

Each was accepted: the slip ignored, the number or the URL forwarded. Each is now a ``400`` in the
API's own error shape naming the field — the SDK's ``BadRequestError`` — with no provider called and
exactly one ledger row (``error``, ``INVALID_REQUEST``, under the answer's request id)."""

# ruff: noqa: F811 - the tests take test_compat's fixtures, imported below, by name

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.gateway.compat import anthropic_request, openai_request
from tests.gateway.test_compat import (  # noqa: F401 - the module's fixtures: one gateway before every simulator
    PIXEL_URL,
    backends,
    base_url,
    chat,
    claude,
    ledger_path,
    oai,
    providers,
    rows_of,
    target,
)

USER = [{"role": "user", "content": "hi"}]


def sent(backends: dict[str, sim.Simulator]) -> dict[str, int]:
    """How many requests each provider's simulator has been sent."""
    return {name: len(simulator.requests) for name, simulator in backends.items()}


def one_refusal_row(ledger: Path, error: openai.APIStatusError | anthropic.APIStatusError) -> dict[str, Any]:
    """The one ledger row of a refused request, found by the id its answer named."""
    session_id = error.response.headers.get("x-request-id") or error.response.headers["request-id"]
    rows = rows_of(ledger, session_id)
    assert [(row["status"], row["error_code"]) for row in rows] == [("error", "INVALID_REQUEST")], rows
    assert not rows[0]["tokens_in"] and not rows[0]["cost"]
    return rows[0]


# -- fields the API does not have --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, hint",
    [("max_token", "; did you mean max_tokens?"), ("temprature", "; did you mean temperature?"), ("colour", "")],
)
def test_a_field_chat_completions_has_not_is_refused_as_openai_refuses_it(oai, backends, ledger_path, field, hint):
    before = sent(backends)
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), extra_body={field: 3})
    error = caught.value
    said = error.body["message"]  # (the SDK's body is the "error" object)
    assert said == f"Unrecognized request argument supplied: {field}{hint}"
    assert (error.status_code, error.type, error.param, error.code) == (400, "invalid_request_error", field, None)
    assert sent(backends) == before  # refused before any provider
    assert one_refusal_row(ledger_path, error)["model"] == "gpt-4o-mini"
    with pytest.raises(openai.BadRequestError, match=f"supplied: {field}"):  # streamed: the same 400
        list(oai.chat.completions.create(model=target("openai"), messages=chat(), stream=True, extra_body={field: 3}))


@pytest.mark.parametrize(
    "field, hint",
    [("max_token", "; did you mean max_tokens?"), ("stop_sequence", "; did you mean stop_sequences?"), ("n", "")],
)
def test_a_field_messages_has_not_is_refused_as_anthropic_refuses_it(claude, backends, ledger_path, field, hint):
    before = sent(backends)
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=target("anthropic"), max_tokens=10, messages=USER, extra_body={field: 2})
    error = caught.value
    assert error.body["error"] == {
        "type": "invalid_request_error",
        "message": f"{field}: Extra inputs are not permitted{hint}",
    }
    assert error.status_code == 400 and sent(backends) == before
    one_refusal_row(ledger_path, error)


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize(
    "asked, path, hint",
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "paramters": SCHEMA}}]},
            "tools[0].function.paramters",
            "; did you mean parameters?",
        ),
        (
            {"stream": True, "stream_options": {"include_usages": True}},
            "stream_options.include_usages",
            "; did you mean include_usage?",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_contrl": {}}]}]},
            "messages[0].content[0].cache_contrl",
            "; did you mean cache_control?",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": PIXEL_URL, "detial": "low"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.detial",
            "; did you mean detail?",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}, "strict": True},
            },
            "tool_choice.strict",
            "",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "shema": SCHEMA}}},
            "response_format.json_schema.shema",
            "; did you mean schema?",
        ),
    ],
    ids=["function", "stream-options", "text-part", "image-url", "tool-choice", "json-schema"],
)
def test_a_nested_key_chat_completions_has_not_is_refused_naming_its_path(
    oai, backends, ledger_path, asked, path, hint
):
    """A misspelt nested key (``paramters``, ``include_usages``) was ignored: the tool went without its
    parameters, the stream without its usage chunk, and nothing was said."""
    before = sent(backends)
    body = {"model": target("openai"), "messages": chat(), **asked}
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(**body)
    error = caught.value
    assert error.body["message"] == f"Unrecognized request argument supplied: {path}{hint}"
    assert (error.status_code, error.param) == (400, path)
    assert sent(backends) == before
    one_refusal_row(ledger_path, error)


@pytest.mark.parametrize(
    "asked, path, hint",
    [
        (
            {"output_config": {"fromat": {"type": "json_schema", "schema": SCHEMA}}},
            "output_config.fromat",
            "; did you mean format?",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "a"},
                            {"type": "text", "text": "b", "cache_contrl": {"type": "ephemeral"}},
                        ],
                    }
                ]
            },
            "messages.0.content.1.cache_contrl",
            "; did you mean cache_control?",
        ),
        (
            {
                "tools": [{"name": "f", "input_schema": SCHEMA}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_us": True},
            },
            "tool_choice.disable_parallel_tool_us",
            "; did you mean disable_parallel_tool_use?",
        ),
        ({"tools": [{"name": "f", "input_shema": SCHEMA}]}, "tools.0.input_shema", "; did you mean input_schema?"),
        (
            {"system": [{"type": "text", "text": "Be brief.", "cahce_control": {"type": "ephemeral"}}]},
            "system.0.cahce_control",
            "; did you mean cache_control?",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "mediatype": "image/png", "data": "AA=="}}
                        ],
                    }
                ]
            },
            "messages.0.content.0.source.mediatype",
            "; did you mean media_type?",
        ),
    ],
    ids=["output-config", "text-block", "tool-choice", "tool", "system-block", "image-source"],
)
def test_a_nested_key_messages_has_not_is_refused_naming_its_path(claude, backends, ledger_path, asked, path, hint):
    """A misspelt nested key (``fromat``, ``cache_contrl``) was ignored: the answer came in prose, the
    prompt uncached, and nothing was said; Anthropic refuses extra inputs at every level."""
    before = sent(backends)
    body = {"model": target("anthropic"), "max_tokens": 10, "messages": USER, **asked}
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(**body)
    error = caught.value
    assert error.body["error"] == {
        "type": "invalid_request_error",
        "message": f"{path}: Extra inputs are not permitted{hint}",
    }
    assert error.status_code == 400 and sent(backends) == before
    one_refusal_row(ledger_path, error)


def test_nested_keys_each_api_defines_are_still_accepted(oai, claude):
    """What the APIs define in those objects (and what their answers carry, which a client replays) is
    not refused: OpenAI's ``strict``, ``detail``, ``include_obfuscation``, a part's ``cache_control``;
    Anthropic's ``citations``, ``caller``, a tool's ``strict``, ``output_config.effort``."""
    tool = {"type": "function", "function": {"name": "f", "description": "", "parameters": SCHEMA, "strict": True}}
    parts = [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": PIXEL_URL, "detail": "low"}},
    ]
    form = {"type": "json_schema", "json_schema": {"name": "c", "description": "", "schema": SCHEMA, "strict": True}}
    answer = oai.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": parts}],
        tools=[tool],
        tool_choice="none",
        response_format=form,
    )
    assert answer.choices[0].message.content
    streamed = oai.chat.completions.create(
        model="echo",
        messages=chat(),
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    assert list(streamed)[-1].usage is not None
    history = [
        {"role": "user", "content": [{"type": "text", "text": "weather?", "citations": None}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "f",
                    "input": {"city": "Oslo"},
                    "caller": {"type": "direct"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny", "citations": None}],
                    "is_error": False,
                }
            ],
        },
    ]
    reply = claude.messages.create(
        model="echo",
        max_tokens=50,
        messages=history,
        tools=[{"name": "f", "description": "", "input_schema": SCHEMA, "strict": True}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        output_config={"effort": "low"},
    )
    assert reply.content


def test_gtl_request_fields_in_extra_body_are_refused_saying_where_they_go(oai, claude, backends, ledger_path):
    """``extra_body={"providers": [...]}`` — a GTL failover list — was ignored: the request went where the
    model string sent it, and the caller believed it had a failover. The model string is this endpoint's
    way to choose; a failover list is ``/v1/gtl``'s."""
    before = sent(backends)
    failover = {"providers": ["openai", "anthropic"]}
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="gpt-4o-mini", messages=chat(), extra_body=failover)
    assert caught.value.param == "providers"
    assert "a GTL request field" in caught.value.message and "POST /v1/gtl" in caught.value.message
    with pytest.raises(anthropic.BadRequestError, match=r"providers: Extra inputs are not permitted: a GTL request"):
        claude.messages.create(model="echo", max_tokens=10, messages=USER, extra_body=failover)
    assert sent(backends) == before


def sdk_fields(create: Any, *header_only: str) -> set[str]:
    """The body fields an SDK's ``create`` takes (its keyword arguments, less the transport's own)."""
    own = {"self", "extra_headers", "extra_query", "extra_body", "timeout", *header_only}
    return set(inspect.signature(create).parameters) - own


def test_every_field_the_sdks_send_is_known_to_its_endpoint():
    """Refusing unknown fields must never refuse what the official SDK sends: each of its keyword
    arguments is mapped, refused for a reason, or ignored — a new one fails here, to be placed."""
    known = openai_request.MAPPED | openai_request.REFUSED | openai_request.IGNORED
    assert sdk_fields(openai.resources.chat.Completions.create) <= known
    known = anthropic_request.MAPPED | anthropic_request.REFUSED | anthropic_request.IGNORED
    assert sdk_fields(anthropic.resources.Messages.create) <= known
    assert sdk_fields(anthropic.resources.beta.Messages.create, "betas") <= known  # betas: a header
    assert not (openai_request.MAPPED & openai_request.IGNORED) and not (
        anthropic_request.MAPPED & anthropic_request.IGNORED
    )


def test_what_is_accepted_and_ignored_is_answered(oai, claude):
    ignored = {
        "seed": 7,
        "user": "u-1",
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "store": False,
        "metadata": {"job": "nightly"},
        "service_tier": "auto",
        "verbosity": "low",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "logit_bias": {},
        "n": 1,
        "logprobs": False,
        "modalities": ["text"],
    }
    assert oai.chat.completions.create(model="echo", messages=chat(), **ignored).choices[0].message.content
    streamed = oai.chat.completions.create(
        model="echo", messages=chat(), stream=True, stream_options={"include_usage": True}, **ignored
    )
    assert [chunk for chunk in streamed][-1].usage is not None
    extra = {"top_k": 5, "context_management": {"edits": []}, "temperature": 0.5, "top_p": 0.9}
    answer = claude.messages.create(
        model="echo", max_tokens=50, messages=USER, metadata={"user_id": "u-1"}, service_tier="auto", extra_body=extra
    )
    assert answer.content
    with claude.messages.stream(model="echo", max_tokens=50, messages=USER, metadata={"user_id": "u-1"}) as stream:
        assert stream.get_final_message().content


def test_a_token_bias_or_audio_settings_are_refused_not_dropped(oai):
    with pytest.raises(openai.BadRequestError, match="cannot bias tokens") as caught:
        oai.chat.completions.create(model="echo", messages=chat(), logit_bias={"1734": -100})
    assert caught.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError, match="text only") as caught:
        oai.chat.completions.create(model="echo", messages=chat(), audio={"voice": "alloy", "format": "wav"})
    assert caught.value.param == "audio"


def test_server_side_features_that_would_change_the_answer_are_refused_not_dropped(oai, claude, backends):
    before = sent(backends)
    moderation = {"model": "omni-moderation-latest", "policy": {"output": {"mode": "block"}}}
    with pytest.raises(openai.BadRequestError, match="runs no moderation") as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), extra_body={"moderation": moderation})
    assert caught.value.param == "moderation"
    for name, value, said in (
        ("thread", {"type": "continue", "previous_message_id": "msg_x"}, "send the whole conversation"),
        ("compaction", {"type": "enabled"}, "compaction requests are not served"),
        ("fallbacks", "default", "fallback models are not tried"),
    ):
        with pytest.raises(anthropic.BadRequestError, match=f"{name}: .*{said}"):
            claude.messages.create(model=target("anthropic"), max_tokens=10, messages=USER, extra_body={name: value})
    assert sent(backends) == before
    # null is no request for them
    answer = claude.messages.create(
        model="echo", max_tokens=10, messages=USER, extra_body={"thread": None, "compaction": None, "fallbacks": []}
    )
    assert answer.content
    assert oai.chat.completions.create(model="echo", messages=chat(), extra_body={"moderation": None}).choices


def test_every_refusal_of_what_a_request_asks_leaves_one_row(oai, claude, backends, ledger_path):
    """A request refused for what it asks — here fields refused before this change too — is a completion
    request its caller sent: one row, as a budget or scope refusal has, under the id its answer names."""
    before = sent(backends)
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=target("openai"), messages=chat(), n=2)
    assert one_refusal_row(ledger_path, caught.value)["model"] == "gpt-4o-mini"
    body = {"model": target("anthropic"), "max_tokens": 10, "messages": USER, "temperature": 1.5}
    with pytest.raises(anthropic.BadRequestError) as by:
        claude.post("/v1/messages", body=body, cast_to=object)
    assert one_refusal_row(ledger_path, by.value)["model"] == "claude-sonnet-4-5"
    with pytest.raises(anthropic.BadRequestError, match="model: this field is required") as unnamed:
        claude.post("/v1/messages", body={"max_tokens": 10, "messages": USER}, cast_to=object)
    one_refusal_row(ledger_path, unnamed.value)
    assert sent(backends) == before


# -- max_tokens no model can write -------------------------------------------------------------------------


@pytest.mark.parametrize("asked", [2**31, 10**30, 2**64])
def test_max_tokens_past_any_model_is_refused_on_every_endpoint(oai, claude, backends, ledger_path, base_url, asked):
    before = sent(backends)
    for name in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(
            openai.BadRequestError, match=f"{name}: expected an integer of at most 2,147,483,647"
        ) as caught:
            oai.chat.completions.create(model=target("openai"), messages=chat(), **{name: asked})
        assert caught.value.param == name
        one_refusal_row(ledger_path, caught.value)
    with pytest.raises(
        anthropic.BadRequestError, match="max_tokens: expected an integer of at most 2,147,483,647"
    ) as by:
        # (streamed: the SDK itself refuses to wait for that many tokens without a stream)
        claude.messages.create(model=target("anthropic"), max_tokens=asked, messages=USER, stream=True)
    one_refusal_row(ledger_path, by.value)
    gtl = {"type": "completion_request", "session_id": "huge", "model": target("openai"), "messages": USER}
    answered = httpx.post(f"{base_url}/v1/gtl", json={**gtl, "stream": False, "max_tokens": asked})
    assert answered.status_code == 400 and "max_tokens" in answered.text
    assert sent(backends) == before


def test_max_tokens_above_the_models_own_limit_is_refused_before_it_is_sent(oai, claude, backends, ledger_path):
    """The catalog knows gpt-4o-mini writes at most 16,384 tokens per answer: more is refused naming the
    parameter as the caller named it, with no call to the provider; the limit itself is answered."""
    before = sent(backends)
    for name in ("max_completion_tokens", "max_tokens"):
        with pytest.raises(openai.BadRequestError, match=f"{name}: gpt-4o-mini writes at most 16,384 tokens") as caught:
            oai.chat.completions.create(model=target("openai"), messages=chat(), **{name: 16_385})
        assert caught.value.param == name
        one_refusal_row(ledger_path, caught.value)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens: gpt-4o-mini writes at most 16,384") as by:
        claude.messages.create(model=target("openai"), max_tokens=100_000, messages=USER, stream=True)
    one_refusal_row(ledger_path, by.value)
    assert sent(backends) == before
    assert oai.chat.completions.create(model=target("openai"), messages=chat(), max_completion_tokens=16_384).choices
    assert sent(backends)["openai"] == before["openai"] + 1


# -- image URLs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://x/y.png", "file:///etc/passwd", "javascript:alert(1)"])
def test_an_image_url_neither_https_http_nor_data_is_refused_naming_its_path(
    oai, claude, backends, ledger_path, base_url, url
):
    before = sent(backends)
    scheme = url.split(":")[0]
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    refused = f"must be https: or data: .base64., not {scheme}:"
    with pytest.raises(openai.BadRequestError, match=refused) as caught:
        oai.chat.completions.create(model=target("openai"), messages=[{"role": "user", "content": parts}])
    assert caught.value.param == "messages[0].content[1].image_url.url"
    one_refusal_row(ledger_path, caught.value)
    blocks = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": {"type": "url", "url": url}}]
    with pytest.raises(
        anthropic.BadRequestError, match=r"messages\.0\.content\.1\.source\.url: an image URL must be"
    ) as by:
        claude.messages.create(model=target("anthropic"), max_tokens=10, messages=[{"role": "user", "content": blocks}])
    one_refusal_row(ledger_path, by.value)
    gtl = {"type": "completion_request", "session_id": "ftp", "model": target("openai"), "stream": False}
    answered = httpx.post(
        f"{base_url}/v1/gtl", json={**gtl, "messages": [{"role": "user", "content": "x", "images": [url]}]}
    )
    assert answered.status_code == 400 and "an image URL must be https:, http: or data:" in answered.text
    assert sent(backends) == before


def test_https_and_data_image_urls_still_reach_the_provider(oai, backends):
    for url in ("https://example.com/y.png", PIXEL_URL, "DATA:" + PIXEL_URL[5:]):
        parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
        assert oai.chat.completions.create(
            model=target("openai"), messages=[{"role": "user", "content": parts}]
        ).choices


NOT_BASE64 = {
    "a character outside base64": PIXEL_URL[:40] + "!" + PIXEL_URL[41:],
    "cut short": PIXEL_URL[:-1],
    "padding in the middle": "data:image/png;base64,AA==AAAA",
    "a line break": PIXEL_URL[:40] + "\n" + PIXEL_URL[40:-1],
    "empty": "data:image/png;base64,",
}


@pytest.mark.parametrize("url", list(NOT_BASE64.values()), ids=list(NOT_BASE64))
def test_a_data_url_whose_base64_is_not_base64_is_refused_naming_its_part(
    oai, claude, backends, ledger_path, base_url, url
):
    """Every provider decodes it and would answer a 400 after a round trip, in its own words: refused
    before any is called, by the field that holds it, on each endpoint."""
    before = sent(backends)
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError, match=r"the image's (base64 )?data") as caught:
        oai.chat.completions.create(model=target("openai"), messages=[{"role": "user", "content": parts}])
    assert caught.value.param == "messages[0].content[1].image_url.url"
    one_refusal_row(ledger_path, caught.value)
    media_type, _, data = url.removeprefix("data:").partition(";base64,")
    source = {"type": "base64", "media_type": media_type, "data": data}
    blocks = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": source}]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.content\.1\.source\.data: the image's") as by:
        claude.messages.create(model=target("anthropic"), max_tokens=10, messages=[{"role": "user", "content": blocks}])
    one_refusal_row(ledger_path, by.value)
    gtl = {"type": "completion_request", "session_id": "b64", "model": target("openai"), "stream": False}
    answered = httpx.post(
        f"{base_url}/v1/gtl", json={**gtl, "messages": [{"role": "user", "content": "x", "images": [PIXEL_URL, url]}]}
    )
    assert answered.status_code == 400 and "the message's images[1]" in answered.text
    assert sent(backends) == before


@pytest.mark.parametrize("media_type", ["image/png,x", "image/png;q=1", "text/html", ""])
def test_an_image_source_of_a_media_type_the_api_does_not_take_is_refused(claude, backends, ledger_path, media_type):
    """Anthropic takes four image types. A ``,`` in the type made the data URL the gateway builds end its
    header early, so its data went unchecked and reached the provider as percent-encoded garbage."""
    before = sent(backends)
    source = {"type": "base64", "media_type": media_type, "data": "!!not base64!!"}
    blocks = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": source}]
    with pytest.raises(anthropic.BadRequestError, match=r"messages\.0\.content\.1\.source\.media_type") as by:
        claude.messages.create(model=target("anthropic"), max_tokens=10, messages=[{"role": "user", "content": blocks}])
    one_refusal_row(ledger_path, by.value)
    assert sent(backends) == before


def test_a_data_url_that_is_not_base64_is_the_providers_to_read(oai, backends):
    """Only ``;base64`` promises base64: a percent-encoded ``data:`` URL is not checked as one."""
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,A%20b!"}}]
    assert oai.chat.completions.create(model=target("openai"), messages=[{"role": "user", "content": parts}]).choices


def test_a_gateway_takes_no_plain_http_image_url(oai, backends, ledger_path):
    """The server a deployment calls would fetch it from its own network (a cloud's metadata service
    answers plain HTTP): refused, naming where, with its row; the embedded client's user may send one."""
    before = sent(backends)
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": HTTP_IMAGE}}]
    with pytest.raises(openai.BadRequestError, match=r"must be https: or data: .base64., not http:") as caught:
        oai.chat.completions.create(model=target("openai"), messages=[{"role": "user", "content": parts}])
    assert caught.value.param == "messages[0].content[1].image_url.url"  # the caller's own path
    one_refusal_row(ledger_path, caught.value)
    assert sent(backends) == before
    with gtl_nb.connect(providers={"local": {"type": "echo"}}, ledger=False, environ={}) as embedded:
        message = {"role": "user", "content": [{"type": "text", "text": "hi"}, parts[1]]}
        assert embedded.complete("local:echo", [message]).text


HTTP_IMAGE = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


def test_allowed_tools_takes_whole_tool_definitions(oai):
    """``tool_choice.allowed_tools.tools`` lists tool definitions (the API reference; the SDK types each as
    an open object): a client passing its own tool list there was refused for their ``parameters``."""
    tools = [
        {"type": "function", "function": {"name": "f", "description": "", "parameters": SCHEMA, "strict": True}},
        {"type": "function", "function": {"name": "g", "parameters": SCHEMA}},
    ]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": tools}}
    answer = oai.chat.completions.create(model="echo", messages=chat(), tools=tools, tool_choice=choice)
    assert answer.choices[0].finish_reason in ("stop", "tool_calls")


@pytest.mark.parametrize("kind", [["json_object"], {"type": "json_object"}, 3])
def test_a_response_format_type_of_another_kind_is_a_400_not_a_500(base_url, kind):
    body = {"model": "echo", "messages": USER, "response_format": {"type": kind}}
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "response_format.type" or "response_format" in answer.text
