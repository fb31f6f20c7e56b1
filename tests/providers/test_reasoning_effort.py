"""How hard the model thinks: each dialect's request body for a request's ``reasoning_effort`` and
``reasoning_budget`` — effort only, budget only, both, ``none``, and neither (the deployment's option kept) —
and, for Claude, thinking asked for without ``reasoning``: on, unseen, its signed blocks kept."""

from __future__ import annotations

import json
from typing import Any

import pytest
import wire

from gtl_nb.protocol.messages import REASONING_EFFORTS, CompletionRequest, Reasoning, Token, Tool
from gtl_nb.providers.anthropic import AnthropicDialect
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.bedrock import BedrockDialect
from gtl_nb.providers.effort import BUDGETS, budget_of, effort_of
from gtl_nb.providers.gemini import GeminiDialect
from gtl_nb.providers.ollama import OllamaDialect
from gtl_nb.providers.openai import AzureDialect, OpenAICompatibleDialect, OpenAIDialect

request = wire.request_maker(session_id="s1", model="m")


def body(dialect: Any, req: CompletionRequest, deployment: Deployment) -> dict[str, Any]:
    return json.loads(dialect.build_request(req, deployment, now=1_700_000_000.0).body)


# ----------------------------------------------------------------------------------------------
# the tables


def test_every_effort_has_a_budget_growing_with_it_and_reads_back_as_an_effort():
    assert tuple(BUDGETS) == REASONING_EFFORTS
    budgets = [budget_of(effort) for effort in REASONING_EFFORTS]
    assert budgets == sorted(budgets) and budgets[0] == 0 and budgets[1] == 1024  # Anthropic's least
    assert [effort_of(budget) for budget in budgets] == ["none", "low", "low", "medium", "high", "high", "high"]
    assert [effort_of(b) for b in (1, 4096, 4097, 12288, 12289, 10**9)] == [
        *("low", "low", "medium", "medium", "high", "high")
    ]


# ----------------------------------------------------------------------------------------------
# OpenAI, Azure, compatible servers: reasoning_effort


OPENAI = Deployment(name="o", type="openai", api_key="k")
OPENAI_LOW = Deployment(name="o", type="openai", api_key="k", options={"reasoning_effort": "low"})


@pytest.mark.parametrize(
    ("fields", "deployment", "sent"),
    [
        ({"reasoning_effort": "high"}, OPENAI, "high"),  # effort only: as is
        ({"reasoning_effort": "xhigh"}, OPENAI_LOW, "xhigh"),  # the request's wins over the option
        ({"reasoning_budget": 2000}, OPENAI_LOW, "low"),  # budget only: by the thresholds
        ({"reasoning_budget": 8000}, OPENAI, "medium"),
        ({"reasoning_budget": 50000}, OPENAI, "high"),
        ({"reasoning_effort": "minimal", "reasoning_budget": 30000}, OPENAI, "minimal"),  # both: the native one
        ({"reasoning_effort": "none"}, OPENAI_LOW, "none"),
        ({}, OPENAI_LOW, "low"),  # neither: the deployment's option
        ({}, OPENAI, None),
    ],
)
def test_openai_sends_the_requests_effort_or_its_budget_converted(fields, deployment, sent):
    built = body(OpenAIDialect(), request(model="o4-mini", **fields), deployment)
    assert built.get("reasoning_effort") == sent
    assert (
        body(OpenAIDialect(), request(model="gpt-5", reasoning=True, **fields), deployment).get("reasoning_effort")
        == sent
    )  # (reasoning alone changes nothing: Chat Completions shows no reasoning)


@pytest.mark.parametrize(
    ("model", "sent"),
    [
        ("o4-mini", "low"),
        ("o3-2025-04-16", "low"),
        ("gpt-5", "minimal"),
        ("gpt-5-mini-2025-08-07", "minimal"),
        ("gpt-5.1", "none"),
        ("gpt-5.4-mini", "none"),
    ],
)
def test_a_budget_of_0_is_the_least_effort_the_model_takes(model, sent):
    """The o-series and the first GPT-5 models cannot stop thinking and refuse ``none`` ("Unsupported
    value"); a budget of 0 read as an effort is the dialect's reading, so it sends what the model takes. An
    effort of ``none`` the caller gave goes as given: OpenAI's to refuse, in its words."""
    assert body(OpenAIDialect(), request(model=model, reasoning_budget=0), OPENAI)["reasoning_effort"] == sent
    assert body(OpenAIDialect(), request(model=model, reasoning_effort="none"), OPENAI)["reasoning_effort"] == "none"
    azure = Deployment(name="a", type="azure", api_key="k", base_url="https://r.openai.azure.com")
    assert body(AzureDialect(), request(model=model, reasoning_budget=0), azure)["reasoning_effort"] == sent


def test_a_model_that_does_not_reason_is_not_sent_the_requests_effort():
    """OpenAI refuses ``reasoning_effort`` for gpt-4o (400 "Unsupported parameter"): a model that does not
    think has nothing to tune, so a default effort does not break it; the deployment's option, an operator's
    own setting, still goes as configured, and ``reasoning_model`` says what the name cannot."""
    assert "reasoning_effort" not in body(OpenAIDialect(), request(model="gpt-4o", reasoning_effort="high"), OPENAI)
    assert (
        body(OpenAIDialect(), request(model="gpt-4o", reasoning_effort="high"), OPENAI_LOW)["reasoning_effort"] == "low"
    )
    told = Deployment(name="o", type="openai", api_key="k", options={"reasoning_model": True})
    assert body(OpenAIDialect(), request(model="my-ft", reasoning_effort="high"), told)["reasoning_effort"] == "high"


def test_azure_and_compatible_servers_take_it_as_openai_does():
    azure = Deployment(name="a", type="azure", api_key="k", base_url="https://r.openai.azure.com")
    assert body(AzureDialect(), request(model="o3", reasoning_budget=3000), azure)["reasoning_effort"] == "low"
    assert "reasoning_effort" not in body(AzureDialect(), request(model="gpt-4o", reasoning_effort="low"), azure)
    local = Deployment(name="l", type="openai_compatible", base_url="http://127.0.0.1:8000/v1")
    # a compatible server's models cannot be told apart by name: sent, unless the deployment says not to
    assert (
        body(OpenAICompatibleDialect(), request(model="qwen3", reasoning_effort="medium"), local)["reasoning_effort"]
        == "medium"
    )
    plain = Deployment(name="l", type="openai_compatible", base_url="http://x/v1", options={"reasoning_model": False})
    assert "reasoning_effort" not in body(
        OpenAICompatibleDialect(), request(model="llama3", reasoning_effort="low"), plain
    )


# ----------------------------------------------------------------------------------------------
# Anthropic: thinking.budget_tokens


CLAUDE = Deployment(name="c", type="anthropic", api_key="k")
CLAUDE_4K = Deployment(name="c", type="anthropic", api_key="k", options={"thinking_budget_tokens": 4000})


@pytest.mark.parametrize(
    ("fields", "deployment", "budget", "max_tokens"),
    [
        ({"reasoning_effort": "high", "max_tokens": 20000}, CLAUDE, 16384, 20000),  # caller's max_tokens kept
        ({"reasoning_effort": "low", "max_tokens": 1000}, CLAUDE_4K, 2048, 3048),  # request's wins; raised
        ({"reasoning_effort": "max"}, CLAUDE, 32768, 32768 + 4096),  # the default max_tokens, raised
        ({"reasoning_budget": 5000, "max_tokens": 8000}, CLAUDE_4K, 5000, 8000),  # budget only: as is
        ({"reasoning_budget": 100, "max_tokens": 8000}, CLAUDE, 1024, 8000),  # at least Anthropic's least
        ({"reasoning_effort": "minimal", "reasoning_budget": 3000, "max_tokens": 9000}, CLAUDE, 3000, 9000),
        ({"reasoning_effort": "none", "reasoning": True, "max_tokens": 100}, CLAUDE_4K, None, 100),
        ({"reasoning_budget": 0, "reasoning": True, "max_tokens": 100}, CLAUDE, None, 100),
        ({"reasoning": True, "max_tokens": 9000}, CLAUDE_4K, 4000, 9000),  # neither: the option
        ({"reasoning": True, "max_tokens": 100}, CLAUDE, 2048, 2148),  # … or the dialect's default
        ({"max_tokens": 100}, CLAUDE_4K, None, 100),  # no reasoning, no effort: no thinking
    ],
)
def test_anthropic_sends_the_requests_budget_or_its_effort_converted(fields, deployment, budget, max_tokens):
    for reasoning in {fields.pop("reasoning", False), True} if budget else {fields.pop("reasoning", False)}:
        built = body(AnthropicDialect(), request(model="claude-sonnet-4-5", reasoning=reasoning, **fields), deployment)
        thinking = built.get("thinking")
        assert (thinking and thinking["budget_tokens"]) == budget
        assert thinking is None or thinking == {"type": "enabled", "budget_tokens": budget}
        assert built["max_tokens"] == max_tokens
        assert "output_config" not in built  # Anthropic's own effort is not sent (module docstring)


@pytest.mark.parametrize(
    ("fields", "budget"), [({"reasoning_effort": "medium"}, 8192), ({"reasoning_budget": 3000}, 3000)]
)
def test_bedrock_claude_thinks_as_anthropic_does_and_other_models_ignore_it(fields, budget):
    aws = Deployment(name="b", type="bedrock", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="s")
    claude = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    built = body(BedrockDialect(), request(model=claude, max_tokens=20000, **fields), aws)
    assert built["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": budget}}
    assert built["inferenceConfig"]["maxTokens"] == 20000
    small = body(BedrockDialect(), request(model=claude, max_tokens=500, **fields), aws)
    assert small["inferenceConfig"]["maxTokens"] == budget + 500
    off = body(BedrockDialect(), request(model=claude, reasoning=True, reasoning_effort="none"), aws)
    assert "additionalModelRequestFields" not in off
    kept = Deployment(name="b", type="bedrock", api_key="k", options={"thinking_budget_tokens": 2048})
    neither = body(BedrockDialect(), request(model=claude, reasoning=True), kept)
    assert neither["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 2048
    nova = body(BedrockDialect(), request(model="us.amazon.nova-micro-v1:0", **fields), aws)
    assert "additionalModelRequestFields" not in nova  # Converse has no common knob: ignored there


TOOL = Tool(name="get_weather", description="", parameters={"type": "object", "properties": {}})


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("claude-sonnet-4-5", {"tools": [TOOL], "tool_choice": "required"}),  # a forced tool: no thinking with it
        (
            "claude-sonnet-4-5",
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        ("claude-sonnet-4-5", {"temperature": 0.2}),  # thinking takes temperature 1 only
        ("claude-sonnet-4-5", {"top_p": 0.5}),  # … and a top_p of 0.95 or more
        ("claude-3-5-haiku-20241022", {}),  # the catalog knows it does not think
    ],
)
def test_an_effort_alone_never_makes_claude_think_where_the_request_would_then_be_refused(model, fields):
    """How hard to think is a hint: where thinking would make Anthropic refuse the request the caller made,
    or the model does not think, an effort alone sends no ``thinking`` (the request is answered as made)."""
    built = body(AnthropicDialect(), request(model=model, reasoning_effort="high", max_tokens=900, **fields), CLAUDE)
    assert "thinking" not in built and built["max_tokens"] == 900
    aws = Deployment(name="b", type="bedrock", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="s")
    claude = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    if model == "claude-sonnet-4-5":  # Claude on Bedrock: the same rule
        on_bedrock = body(
            BedrockDialect(), request(model=claude, reasoning_effort="high", max_tokens=900, **fields), aws
        )
        assert "additionalModelRequestFields" not in on_bedrock
    # the same choices with thinking asked for (``reasoning``): the caller's to see refused, not dropped
    asked = body(AnthropicDialect(), request(model=model, reasoning=True, reasoning_effort="high", **fields), CLAUDE)
    assert asked["thinking"] == {"type": "enabled", "budget_tokens": 16384}


# ----------------------------------------------------------------------------------------------
# Gemini: thinkingLevel (Gemini 3) or thinkingBudget (earlier), never both


GEMINI = Deployment(name="g", type="gemini", api_key="AIza-k")
GEMINI_512 = Deployment(name="g", type="gemini", api_key="AIza-k", options={"thinking_budget": 512})


@pytest.mark.parametrize(
    ("model", "fields", "deployment", "thinking"),
    [
        ("gemini-2.5-flash", {"reasoning_effort": "high"}, GEMINI_512, {"thinkingBudget": 16384}),
        ("gemini-2.5-flash", {"reasoning_budget": 3000}, GEMINI_512, {"thinkingBudget": 3000}),
        ("gemini-2.5-flash", {"reasoning_effort": "low", "reasoning_budget": 700}, GEMINI, {"thinkingBudget": 700}),
        ("gemini-2.5-flash", {"reasoning_effort": "none"}, GEMINI_512, {"thinkingBudget": 0}),
        ("gemini-2.5-flash", {"reasoning_effort": "max"}, GEMINI, {"thinkingBudget": 24576}),  # Flash's most
        ("gemini-2.5-flash-lite", {"reasoning_effort": "none"}, GEMINI, {"thinkingBudget": 0}),
        ("gemini-2.5-pro", {"reasoning_effort": "none"}, GEMINI, {"thinkingBudget": 128}),  # Pro cannot stop
        ("models/gemini-2.5-pro", {"reasoning_effort": "max"}, GEMINI, {"thinkingBudget": 32768}),
        ("gemini-2.5-pro", {"reasoning_budget": 0}, GEMINI, {"thinkingBudget": 0}),  # the caller's, as given
        ("gemini-2.5-flash", {"reasoning_budget": 30000}, GEMINI, {"thinkingBudget": 30000}),
        ("gemini-2.5-flash", {"reasoning": True}, GEMINI_512, {"includeThoughts": True, "thinkingBudget": 512}),
        ("gemini-2.5-flash", {}, GEMINI_512, None),
        ("gemini-3-pro-preview", {"reasoning_effort": "medium"}, GEMINI_512, {"thinkingLevel": "high"}),
        ("gemini-flash-latest", {"reasoning_effort": "low"}, GEMINI, {"thinkingBudget": 2048}),  # may be 2.5
        ("models/gemini-pro-latest", {"reasoning_budget": 3000}, GEMINI, {"thinkingBudget": 3000}),
        ("gemini-3-pro-preview", {"reasoning_effort": "minimal"}, GEMINI, {"thinkingLevel": "low"}),
        ("gemini-3-flash-preview", {"reasoning_budget": 3000}, GEMINI_512, {"thinkingLevel": "low"}),
        ("gemini-3-flash-preview", {"reasoning_budget": 0}, GEMINI, {"thinkingLevel": "low"}),  # cannot stop
        (
            "gemini-3-pro-preview",
            {"reasoning_effort": "max", "reasoning_budget": 2000},
            GEMINI,
            {"thinkingLevel": "high"},
        ),
        (
            "gemini-3-pro-preview",
            {"reasoning": True, "reasoning_effort": "low"},
            GEMINI_512,
            {"includeThoughts": True, "thinkingLevel": "low"},
        ),
    ],
)
def test_gemini_sends_a_level_or_a_budget_never_both(model, fields, deployment, thinking):
    built = body(GeminiDialect(), request(model=model, **fields), deployment)
    assert built.get("generationConfig", {}).get("thinkingConfig") == thinking


# ----------------------------------------------------------------------------------------------
# Ollama: think


@pytest.mark.parametrize(
    ("model", "fields", "think"),
    [
        ("gpt-oss:20b", {"reasoning_effort": "xhigh"}, "high"),
        ("gpt-oss:20b", {"reasoning_effort": "medium", "reasoning": True}, "medium"),
        ("gpt-oss:20b", {"reasoning_budget": 1500}, "low"),
        ("gpt-oss:20b", {"reasoning_effort": "none"}, "low"),  # gpt-oss cannot stop thinking
        ("qwen3:8b", {"reasoning_effort": "high"}, True),  # levels are gpt-oss's alone
        ("qwen3:8b", {"reasoning_effort": "none", "reasoning": True}, False),
        ("qwen3:8b", {"reasoning_budget": 0}, False),
        ("qwen3:8b", {"reasoning": True}, True),
        ("qwen3:8b", {}, None),
        ("deepseek-r1:14b", {"reasoning_effort": "low"}, True),  # a thinking family the catalog lacks
        ("llama3.1:8b", {"reasoning_effort": "high"}, None),  # Ollama refuses think to a model that cannot
        ("llama3.1:8b", {"reasoning_effort": "none"}, False),
        ("llama3.1:8b", {"reasoning_effort": "high", "reasoning": True}, True),  # asked to see it: the caller's
    ],
)
def test_ollama_think_takes_a_level_for_gpt_oss_and_a_switch_for_the_others(model, fields, think):
    built = body(OllamaDialect(), request(model=model, **fields), Deployment(name="l", type="ollama"))
    assert built.get("think") == think


# ----------------------------------------------------------------------------------------------
# Claude thinking without reasoning: on, unseen, its blocks kept


ANTHROPIC_FIXTURES = wire.fixture_dir("anthropic")


@pytest.mark.parametrize("name", ["stream-thinking.sse", "nonstream-thinking-max-tokens.json"])
def test_claude_thinks_when_asked_how_hard_but_shows_nothing_and_keeps_its_signed_blocks(name):
    data = (ANTHROPIC_FIXTURES / name).read_bytes()
    for split in (wire.whole, wire.byte_by_byte):
        unseen = request(model="claude-sonnet-4-5", reasoning_effort="high", stream=name.endswith(".sse"))
        decode = wire.checked_decoding(AnthropicDialect(), CLAUDE, session_id="s1")
        events, decoder = decode(unseen, data, split)
        shown, _ = decode(unseen.__class__(**{**_fields(unseen), "reasoning": True}), data, split)
        assert not [e for e in events if type(e) is Reasoning]
        assert [e for e in shown if type(e) is Reasoning]  # (the same body, asked to show it)
        assert wire.texts(events, Token) == wire.texts(shown, Token)
        blocks = decoder.provider_data["anthropic"]["content"]
        assert blocks and all(block["signature"] for block in blocks if block["type"] == "thinking")


def _fields(req: CompletionRequest) -> dict[str, Any]:
    return {name: getattr(req, name) for name in req.__struct_fields__}
