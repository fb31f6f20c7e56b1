"""How hard the model thinks, asked through the compatible endpoints by the official ``openai`` and
``anthropic`` SDKs: chat's ``reasoning_effort``, the Responses API's ``reasoning.effort``, Anthropic's
``thinking.budget_tokens`` and ``output_config.effort`` reach the upstream simulator in its own API's knob
(no longer the deployment's option alone); a value the caller's API does not know is its 400, naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gtl_nb import sim
from tests.gateway.conftest import SIM_KEY, write_toml
from tests.gateway.test_http import serving

CLAUDE = "anthropic:claude-sonnet-4-5"
TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
USER = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, sim.Simulator]]:
    simulators = {name: sim.serve(name, seed=11) for name in ("anthropic", "openai", "gemini")}
    yield simulators
    for simulator in simulators.values():
        simulator.close()


@pytest.fixture(scope="module")
def gateway_url(sims: dict[str, sim.Simulator], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("effort")
    tables = {
        # the deployments' own options, which a caller's effort must now win over
        "providers.anthropic": {
            "api_key": SIM_KEY,
            "base_url": sims["anthropic"].base_url,
            "options": {"thinking_budget_tokens": 1500},
        },
        "providers.openai": {
            "api_key": SIM_KEY,
            "base_url": sims["openai"].base_url,
            "options": {"reasoning_effort": "low"},
        },
        "providers.gemini": {"api_key": SIM_KEY, "base_url": sims["gemini"].base_url},
        "ledger": {"path": str(directory / "ledger.sqlite")},
    }
    with serving(write_toml(Path(directory) / "gtl.toml", tables)) as served:
        yield served.url


@pytest.fixture(scope="module")
def oai(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def claude(gateway_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway_url, api_key="none", max_retries=0)


def upstream(simulator: sim.Simulator) -> dict[str, Any]:
    return simulator.requests[-1].json


# ----------------------------------------------------------------------------------------------
# OpenAI's chat and Responses


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_reasoning_effort_reaches_each_provider_in_its_own_knob(oai, sims, stream):
    def ask(model: str, effort: str) -> None:
        answer = oai.chat.completions.create(model=model, messages=USER, reasoning_effort=effort, stream=stream)
        if stream:
            assert [chunk for chunk in answer]  # type: ignore[union-attr]
        else:
            assert answer.choices[0].message.content  # type: ignore[union-attr]

    ask("openai:o4-mini", "high")
    assert upstream(sims["openai"])["reasoning_effort"] == "high"  # not the deployment's "low"
    ask(CLAUDE, "medium")
    sent = upstream(sims["anthropic"])
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 8192} and sent["max_tokens"] > 8192
    ask("gemini:gemini-3-pro-preview", "minimal")
    assert upstream(sims["gemini"])["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "low"}
    ask("openai:gpt-5.5", "none")  # (o4-mini refuses none, as OpenAI does: a newer model takes it)
    assert upstream(sims["openai"])["reasoning_effort"] == "none"
    oai.chat.completions.create(model="openai:o4-mini", messages=USER)  # left out: the deployment's option
    assert upstream(sims["openai"])["reasoning_effort"] == "low"


def test_chat_claude_thinks_unseen_and_its_tool_loop_still_works(oai, sims):
    """Chat shows no reasoning: Claude asked for an effort thinks, the answer holds no thinking, and the
    signed blocks ride on the tool call's id back to Claude in the next turn (which its API requires)."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    first = oai.chat.completions.create(model=CLAUDE, messages=messages, tools=tools, reasoning_effort="high")
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    message = first.choices[0].message
    (call,) = message.tool_calls
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "clear"},
    ]
    second = oai.chat.completions.create(model=CLAUDE, messages=messages, tools=tools, reasoning_effort="high")
    assert second.choices[0].message.content
    replayed = next(m for m in upstream(sims["anthropic"])["messages"] if m["role"] == "assistant")
    assert replayed["content"][0]["type"] == "thinking" and replayed["content"][0]["signature"]


def test_responses_reasoning_effort_reaches_the_provider_and_summary_still_asks_to_see_it(oai, sims):
    unseen = oai.responses.create(model=CLAUDE, input="Why is the sky blue?", reasoning={"effort": "low"})
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert unseen.reasoning.effort == "low" and not [item for item in unseen.output if item.type == "reasoning"]
    shown = oai.responses.create(
        model=CLAUDE, input="Why is the sky blue?", reasoning={"effort": "xhigh", "summary": "auto"}
    )
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert [item for item in shown.output if item.type == "reasoning"]
    oai.responses.create(model="openai:o4-mini", input="hi", reasoning={"effort": "medium"})
    assert upstream(sims["openai"])["reasoning_effort"] == "medium"


O4 = "openai:o4-mini"
REFUSED_EFFORTS = {
    "chat": (lambda c: c.chat.completions.create(model=O4, messages=USER, reasoning_effort="huge"), "reasoning_effort"),
    "chat, streamed": (
        lambda c: c.chat.completions.create(model=O4, messages=USER, stream=True, reasoning_effort=3),
        "reasoning_effort",
    ),
    "responses": (
        lambda c: c.responses.create(model=O4, input="hi", reasoning={"effort": "extreme"}),
        "reasoning.effort",
    ),
}


@pytest.mark.parametrize(("create", "param"), list(REFUSED_EFFORTS.values()), ids=list(REFUSED_EFFORTS))
def test_an_effort_openai_does_not_know_is_its_400_naming_the_parameter(oai, sims, create, param):
    before = len(sims["openai"].requests)
    with pytest.raises(openai.BadRequestError) as refused:
        create(oai)
    assert refused.value.param == param and "Supported values are: 'none', 'minimal'" in refused.value.message
    assert len(sims["openai"].requests) == before  # refused before any provider


# ----------------------------------------------------------------------------------------------
# Anthropic's Messages


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_callers_thinking_budget_and_max_tokens_reach_claude_as_sent(claude, sims, stream):
    asked = {
        "model": CLAUDE,
        "max_tokens": 6000,
        "messages": USER,
        "thinking": {"type": "enabled", "budget_tokens": 5000},
    }
    if stream:
        with claude.messages.stream(**asked) as events:
            reply = events.get_final_message()
    else:
        reply = claude.messages.create(**asked)
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 5000}  # not 1500
    assert upstream(sims["anthropic"])["max_tokens"] == 6000  # exactly as the caller sent it
    assert [block.type for block in reply.content] == ["thinking", "text"] and reply.content[0].thinking
    claude.messages.create(model="openai:o4-mini", max_tokens=20000, messages=USER, thinking=asked["thinking"])
    assert upstream(sims["openai"])["reasoning_effort"] == "medium"  # another provider: the budget converted


def test_output_config_effort_reaches_the_provider(claude, sims):
    claude.messages.create(
        model=CLAUDE, max_tokens=20000, messages=USER, thinking={"type": "adaptive"}, output_config={"effort": "high"}
    )
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    claude.messages.create(
        model="openai:gpt-5.5",  # (o4-mini takes low to high only, as at OpenAI)
        max_tokens=100,
        messages=USER,
        thinking={"type": "adaptive"},
        output_config={"effort": "max"},
    )
    assert upstream(sims["openai"])["reasoning_effort"] == "max"
    claude.messages.create(model=CLAUDE, max_tokens=3000, messages=USER, thinking={"type": "adaptive"})
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 1500}  # the option's


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}], ids=["no thinking", "thinking disabled"])
def test_an_effort_without_thinking_turns_no_thinking_on_as_at_anthropic(claude, sims, thinking):
    """Anthropic's ``output_config.effort`` tunes the whole answer and never turns thinking on; the gateway's
    effort is only how hard to think, so without ``thinking`` (or with it disabled) it changes nothing: the
    caller's forced tool, temperature and ``max_tokens`` reach Claude as sent, with no thinking."""
    asked: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "get_weather for Bergen"}],
        "tools": TOOLS,
        "tool_choice": {"type": "any"},
        "extra_body": {"temperature": 0.2},  # (the SDK has no parameter for it now; the API still takes it)
        "output_config": {"effort": "high"},
    }
    if thinking is not None:
        asked["thinking"] = thinking
    reply = claude.messages.create(**asked)
    sent = upstream(sims["anthropic"])
    assert "thinking" not in sent and sent["max_tokens"] == 1000 and sent["temperature"] == 0.2
    assert [block.type for block in reply.content] == ["tool_use"]
    claude.messages.create(model="openai:o4-mini", max_tokens=100, messages=USER, output_config={"effort": "max"})
    assert upstream(sims["openai"])["reasoning_effort"] == "low"  # the deployment's option, as before


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_chat_effort_gives_claude_a_budget_unseen_and_its_tool_loop_works(oai, sims, stream):
    """Chat's ``reasoning_effort`` to Claude: a thinking budget (chat has no place to show the thinking),
    and the tool loop still gives Claude its signed thinking back (it rides on the tool call's id)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "get_weather for Bergen"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]}}]
    asked = {"model": CLAUDE, "tools": tools, "reasoning_effort": "low", "max_tokens": 20000}
    if stream:
        calls: dict[int, dict[str, Any]] = {}
        for chunk in oai.chat.completions.create(messages=messages, stream=True, **asked):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        (call,) = calls.values()
    else:
        (made,) = oai.chat.completions.create(messages=messages, **asked).choices[0].message.tool_calls
        call = {"id": made.id, "name": made.function.name, "arguments": made.function.arguments}
    assert upstream(sims["anthropic"])["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "clear"},
    ]
    second = oai.chat.completions.create(messages=messages, **asked)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    replayed = next(m for m in upstream(sims["anthropic"])["messages"] if m["role"] == "assistant")["content"][0]
    assert replayed["type"] == "thinking" and replayed["thinking"] and replayed["signature"]  # Claude's own


def test_an_effort_anthropic_does_not_know_is_its_400(claude, sims):
    before = len(sims["anthropic"].requests)
    with pytest.raises(anthropic.BadRequestError, match=r"output_config\.effort: Input should be 'low'"):
        claude.messages.create(model=CLAUDE, max_tokens=100, messages=USER, output_config={"effort": "minimal"})
    assert len(sims["anthropic"].requests) == before
