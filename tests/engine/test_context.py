"""``RequestContext``: the copy with a trace id is the one ``dataclasses.replace`` makes."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from gtl_nb.engine.context import RequestContext


def test_traced_is_dataclasses_replace_without_its_cost() -> None:
    context = RequestContext(
        principal="ada",
        tenant="lab",
        key_id="k1",
        peer="127.0.0.1",
        transport="ws",
        scopes=frozenset({"chat:write"}),
        allowed_models=frozenset({"gpt-*"}),
        expires_at=1.5,
        provider_keys=MappingProxyType({"openai": "team"}),
    )
    traced = context.traced("0af7651916cd43dd8448eb211c80319c")
    assert traced == dataclasses.replace(context, trace_id="0af7651916cd43dd8448eb211c80319c")
    assert traced.provider_keys == context.provider_keys
    assert context.trace_id is None  # the original is untouched
    assert hash(traced) == hash(dataclasses.replace(context, trace_id="0af7651916cd43dd8448eb211c80319c"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        traced.trace_id = "x"  # type: ignore[misc]


def test_traced_keeps_a_subclass_and_its_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Traced(RequestContext):
        traceparent: str | None = None

    context = Traced(principal="ann", traceparent="00-x")
    traced = context.traced("abc")
    assert type(traced) is Traced
    assert traced == dataclasses.replace(context, trace_id="abc")


def test_traced_goes_through_replace_for_a_slotted_or_deriving_subclass() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted(RequestContext):
        region: str = ""

    assert Slotted(principal="p", region="us").traced("T").region == "us"

    @dataclasses.dataclass(frozen=True)
    class Deriving(RequestContext):
        label: str = ""

        def __post_init__(self) -> None:
            object.__setattr__(self, "label", f"{self.principal}/{self.trace_id}")

    assert Deriving(principal="p").traced("T").label == "p/T"


def test_unrestartable_is_the_same_context_that_takes_no_failover_once_the_answer_began() -> None:
    context = RequestContext(principal="ada", trace_id="t", scopes=frozenset({"chat:write"}))
    assert context.failover_after_content  # GTL's clients take a failover mid-answer (they discard what came)
    held = context.unrestartable()
    assert held == dataclasses.replace(context, failover_after_content=False)
    assert context.failover_after_content  # the original is untouched

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted(RequestContext):
        region: str = ""

    expected = Slotted("p", region="us", failover_after_content=False)
    assert Slotted(principal="p", region="us").unrestartable() == expected


def test_a_model_entry_without_a_colon_never_matches_by_the_deployments_name() -> None:
    """``gpt-4o*`` matched ``gpt-4o-azure:o1-pro`` through ``deployment:model``: every model of any
    deployment named like a model. A bare entry matches the model; one with a colon, the pair too."""
    wildcard = RequestContext(principal="p", allowed_models=frozenset({"gpt-4o*"}))
    assert wildcard.allows("openai", "gpt-4o-mini") and wildcard.allows("gpt-4o-azure", "gpt-4o")
    assert not wildcard.allows("gpt-4o-azure", "o1-pro") and not wildcard.allows("gpt-4o-azure", "claude-opus-4")
    echo = RequestContext(principal="p", allowed_models=frozenset({"echo*"}))
    assert echo.allows("echo", "echo") and not echo.allows("echo", "gpt-4o")
    paired = RequestContext(principal="p", allowed_models=frozenset({"anthropic:claude-*", "llama3.1:8b"}))
    assert paired.allows("anthropic", "claude-sonnet-4-5") and not paired.allows("bedrock", "claude-sonnet-4-5")
    assert paired.allows("ollama", "llama3.1:8b")  # a model whose own name holds a colon, matched as the model


def test_a_model_that_names_another_deployment_is_refused_before_any_allow_list():
    """``openai-prod:anthropic:claude-x`` asked ``anthropic:claude-x`` of openai-prod: a token allowed
    ``anthropic:claude-*`` (Claude on the anthropic deployment) matched that model name and reached a
    deployment it was not given. No provider has such a model: routing refuses it, in every form."""
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.protocol.errors import InvalidRequestError
    from gtl_nb.protocol.messages import CompletionRequest, Message

    settings = load_settings(
        providers={
            "openai-prod": {"type": "openai", "api_key": "k"},
            "anthropic": {"type": "anthropic", "api_key": "k"},
            "ollama": {"type": "ollama"},
        },
        environ={},
    )
    engine = build_engine(settings, ledger=False)
    hi = [Message(role="user", content="hi")]
    for asked in (
        {"model": "openai-prod:anthropic:claude-x"},
        {"model": "anthropic:claude-x", "providers": ["openai-prod:anthropic:claude-x"]},
        {"model": "openai-prod:openai:gpt-4o"},
    ):
        with pytest.raises(InvalidRequestError, match="begins with another deployment's name"):
            engine.targets(CompletionRequest(session_id="s", messages=hi, **asked))  # type: ignore[arg-type]
    (target,) = engine.targets(CompletionRequest(session_id="s", model="ollama:llama3.1:8b", messages=hi))
    assert (target.name, target.model) == ("ollama", "llama3.1:8b")  # a model's own colon is fine
