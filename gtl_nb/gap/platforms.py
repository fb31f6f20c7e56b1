"""``transform_for_platform``: a context preamble in the target platform's convention, then the content.

The preamble lists the source platform, model, thread, role and time (absent ones are left out),
every defined entity and every undefined one, flagged as needing a definition. Values, entity keys
and types are written on one line (one that is not plain single-line text is shown as a JSON string),
so text read from a message cannot end the preamble early. The content follows after a blank line
with its first-person pronouns rewritten per the message's ``transform_hints.pronoun_map`` and role —
unless its ``preserve_perspective`` asks for the first person (``FIRST_PERSON``), when the content is
kept as written; nothing else in it changes (so whatever ``maintain_tense`` says, the tense is kept:
the rewrite changes a verb's person, "I think" → "the user thinks", never its tense).

=============  =============================================================================
claude.ai      ``[Context from GAP-wrapped message]`` then ``Key: value`` lines, closed by
               ``[End of context]``
chatgpt        a ``# Context`` heading with ``- **Key:** value`` items, then ``# Message``
gemini         ``**Context from GAP-wrapped message**`` then ``**Key:** value`` lines
copilot        ``// Context from GAP-wrapped message`` then ``// Key: value`` comment lines
perplexity     ``Context from GAP-wrapped message:`` then ``- Key: value`` bullet points
generic        ``Context from GAP-wrapped message`` then plain ``Key: value`` lines
=============  =============================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gtl_nb.gap.model import WrappedMessage
from gtl_nb.gap.pronouns import transform_pronouns

PLATFORMS: tuple[str, ...] = ("claude.ai", "chatgpt", "gemini", "copilot", "perplexity", "generic")
TITLE = "Context from GAP-wrapped message"
UNDEFINED_NOTE = "UNDEFINED (needs definition)"
FIRST_PERSON = frozenset({"first_person", "first-person", "first person", "first"})
"""``preserve_perspective`` values (any letter case) that keep the content's pronouns as written; any
other value — ``third_person``, one this version does not know — leaves the role's rewrite on."""


def inline(value: str) -> str:
    """Plain single-line text as is; anything else as a JSON string (so it cannot start a line of its own)."""
    if value and value.isprintable() and value == value.strip():
        return value
    return json.dumps(value, ensure_ascii=True)


def context_items(wrapped: WrappedMessage) -> list[tuple[str, str]]:
    """The preamble as ``(label, text)`` pairs, in order, before any platform styling."""
    items = [("Source platform", inline(wrapped.platform))]
    if wrapped.model is not None:
        items.append(("Model", inline(wrapped.model)))
    if wrapped.thread_id is not None:
        items.append(("Thread", inline(wrapped.thread_id)))
    items.append(("Role", wrapped.role))
    if wrapped.timestamp is not None:
        items.append(("Time", inline(wrapped.timestamp)))
    for key, entity in wrapped.entities.items():
        if entity.value is not None:
            items.append((f"Entity {inline(key)}", f"{inline(entity.value)} ({inline(entity.type)})"))
    for key, entity in wrapped.entities.items():
        if entity.value is None:
            items.append((f"Entity {inline(key)}", UNDEFINED_NOTE))
    return items


def _claude(items: list[tuple[str, str]]) -> list[str]:
    return [f"[{TITLE}]", *(f"{label}: {text}" for label, text in items), "[End of context]"]


def _chatgpt(items: list[tuple[str, str]]) -> list[str]:
    return ["# Context", "", *(f"- **{label}:** {text}" for label, text in items), "", "# Message"]


def _gemini(items: list[tuple[str, str]]) -> list[str]:
    return [f"**{TITLE}**", *(f"**{label}:** {text}" for label, text in items)]


def _copilot(items: list[tuple[str, str]]) -> list[str]:
    return [f"// {TITLE}", *(f"// {label}: {text}" for label, text in items)]


def _perplexity(items: list[tuple[str, str]]) -> list[str]:
    return [f"{TITLE}:", *(f"- {label}: {text}" for label, text in items)]


def _generic(items: list[tuple[str, str]]) -> list[str]:
    return [TITLE, *(f"{label}: {text}" for label, text in items)]


_STYLES: dict[str, Callable[[list[tuple[str, str]]], list[str]]] = {
    "claude.ai": _claude,
    "chatgpt": _chatgpt,
    "gemini": _gemini,
    "copilot": _copilot,
    "perplexity": _perplexity,
    "generic": _generic,
}


def transform_for_platform(wrapped: WrappedMessage, target_platform: str) -> str:
    """The message ready to paste into ``target_platform``: preamble, blank line, rewritten content.

    ``target_platform`` is one of ``PLATFORMS`` (case-insensitive); anything else is a
    ``ValueError`` that lists them.
    """
    style = _STYLES.get(target_platform.strip().lower()) if isinstance(target_platform, str) else None
    if style is None:
        raise ValueError(f"unknown target platform {target_platform!r}; expected one of: {', '.join(PLATFORMS)}")
    content = wrapped.content
    perspective = wrapped.hints.preserve_perspective
    if perspective is None or perspective.strip().lower() not in FIRST_PERSON:
        content = transform_pronouns(content, wrapped.role, pronoun_map=wrapped.hints.pronoun_map)
    return "\n".join(style(context_items(wrapped))) + "\n\n" + content
