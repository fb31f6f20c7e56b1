"""How hard a model thinks: GTL's ``reasoning_effort`` and ``reasoning_budget``, converted to each API's knob.

A request may say how hard to think in either unit, or both: an effort (``ReasoningEffort``, least to
most: ``none``, ``minimal``, ``low``, ``medium``, ``high``, ``xhigh``, ``max``) or a budget of thinking
tokens (``0``: none). Each dialect sends the one its API takes and converts the other with the tables
below; the request's value wins over the deployment's option, which stays the default when the request
gives neither. The request itself keeps the two in agreement on whether to think at all
(``CompletionRequest.__post_init__``), so a conversion never turns thinking on that the other refused.

**Effort → tokens** (``budget_of``: Anthropic's and Bedrock-Claude's ``budget_tokens``, Gemini 2.5's
``thinkingBudget``):

===========  ======  ==========================================================
effort       tokens  note
===========  ======  ==========================================================
``none``     0       no thinking (Anthropic: no ``thinking``; Gemini 2.5: 0)
``minimal``  1,024   Anthropic's least budget
``low``      2,048   the Anthropic dialect's budget before a request could ask
``medium``   8,192   where Gemini 2.5's dynamic thinking stops
``high``     16,384
``xhigh``    24,576  Gemini 2.5 Flash's largest budget
``max``      32,768  Gemini 2.5 Pro's largest budget
===========  ======  ==========================================================

A budget over what a model takes is the API's to refuse, in its own words (a Claude model's output
limit counts the thinking: ``max`` with a large ``max_tokens`` may pass it) — when the caller gave it. A
budget converted from an effort is the dialect's choice, and goes within the model's range where the
dialect knows it (Gemini 2.5: ``providers.gemini.THINKING_BUDGETS``).

**Tokens → effort** (``effort_of``: OpenAI's ``reasoning_effort``, Ollama's ``think`` levels, Gemini 3's
``thinkingLevel``): ``0`` → ``none``; up to 4,096 → ``low``; up to 12,288 → ``medium``; more → ``high``.
The thresholds are midway between the table's ``low``/``medium`` and ``medium``/``high`` budgets; a
budget never maps to ``minimal`` or ``xhigh``, which only OpenAI's newer models take, while every
reasoning model takes ``low``, ``medium`` and ``high``.
"""

from __future__ import annotations

from collections.abc import Mapping

from gtl_nb.protocol.messages import CompletionRequest

__all__ = [
    "BUDGETS",
    "EFFORT_THRESHOLDS",
    "asked_budget",
    "asked_effort",
    "budget_of",
    "effort_of",
    "thinking_asked",
]

BUDGETS: Mapping[str, int] = {
    "none": 0,
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 24576,
    "max": 32768,
}
"""Thinking tokens for each effort (the module docstring's table)."""

EFFORT_THRESHOLDS: tuple[tuple[int, str], ...] = ((0, "none"), (4096, "low"), (12288, "medium"))
"""A budget up to each bound reads as that effort; above the last, ``high``."""


def budget_of(effort: str) -> int:
    """The thinking tokens of ``effort`` (``BUDGETS``)."""
    return BUDGETS[effort]


def effort_of(budget: int) -> str:
    """The effort closest to ``budget`` thinking tokens (``EFFORT_THRESHOLDS``)."""
    for bound, effort in EFFORT_THRESHOLDS:
        if budget <= bound:
            return effort
    return "high"


def asked_effort(request: CompletionRequest) -> str | None:
    """The effort the request asks for, converted from its budget when it gives only that; ``None``: neither."""
    if request.reasoning_effort is not None:
        return request.reasoning_effort
    if request.reasoning_budget is not None:
        return effort_of(request.reasoning_budget)
    return None


def asked_budget(request: CompletionRequest) -> int | None:
    """The thinking tokens the request asks for, converted from its effort when it gives only that; ``None``:
    neither."""
    if request.reasoning_budget is not None:
        return request.reasoning_budget
    if request.reasoning_effort is not None:
        return budget_of(request.reasoning_effort)
    return None


def thinking_asked(request: CompletionRequest) -> bool | None:
    """Whether the request's effort or budget asks the model to think (``None``: it gives neither)."""
    budget = asked_budget(request)
    return None if budget is None else budget > 0
