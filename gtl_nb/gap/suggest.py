"""``suggest_definitions``: propose values for a message's undefined references.

Candidates come from the thread's history and from the message itself: every defined entity of
those messages (their stored entities over what ``detect_entities`` finds in their content). A
reference's head noun says which entity types fit (``vocabulary.HEAD_NOUN_TYPES``: "the database"
wants a ``database``, "the framework" a ``framework``, "the file" a ``file_reference``, ...).

Ranking — most specific and most recent first. A candidate scores ``tier * 0.9 ** distance``:

* tier 1.0 when an earlier message defined the very same key (``the_database`` = "PostgreSQL 14"),
  0.8 for the head noun's first (most specific) type, 0.6 for another type that fits;
* ``distance`` is 0 for the message itself, 1 for the last message of ``history``, 2 for the one
  before, and so on (``history`` is in chronological order, oldest first).

History messages of another thread (both thread ids set and different) are skipped. With ``ask``
(a callable from prompt text to answer text, e.g. a model call) the model is asked too; its answers
are suggestions with ``source="model"``, ``chat_id=None`` and score ``MODEL_SCORE``.

A suggestion is never another entity's value: a value one of the message's own references already
stands for (``the_database`` defined as "PostgreSQL 14") is not proposed for another of them (``the
server``), from the history or from the model — two references of one message name two things. A
named entity (``postgresql`` = "PostgreSQL 14", keyed by its own name) is the thing itself, and stays
a candidate for the references that may mean it. ``best_definitions`` picks one value per reference,
never the same value for two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gtl_nb.gap import vocabulary as vocab
from gtl_nb.gap.entities import detect_entities
from gtl_nb.gap.model import Entity, WrappedMessage
from gtl_nb.gap.platforms import inline

MODEL_SCORE = 0.7
RECENCY_DECAY = 0.9
_EXACT, _SPECIFIC, _FITTING = 1.0, 0.8, 0.6
_PLURALS = {plural: singular for singular, plural in vocab.HEAD_NOUNS.items()}
_ALL_TYPES = (
    "technical_component",
    "database",
    "framework",
    "software_version",
    "file_reference",
    "user_defined",
)
_NO_ANSWER = frozenset({"", "unknown", "none", "n/a", "na", "?", "unclear", "not specified", "null", "-", "not sure"})
_LIST_MARKS = frozenset(">*•-.)")  # with whitespace and digits: what may precede the key of an answer line
_SNIPPET = 600
_BACKTICK_RUN = re.compile("`+")


@dataclass(frozen=True)
class Suggestion:
    """A proposed value for an undefined entity.

    ``chat_id`` is the message the value came from (``None`` for a model's answer); ``source`` is
    ``"history"`` or ``"model"``; ``type`` is the suggested entity type.
    """

    key: str
    value: str
    score: float
    chat_id: str | None
    source: str = "history"
    type: str = "user_defined"


def _head_noun(key: str) -> str | None:
    determiner, _, noun = key.partition("_")
    if determiner not in ("the", "this", "that", "these", "those"):
        return None
    noun = _PLURALS.get(noun, noun)
    return noun if noun in vocab.HEAD_NOUNS else None


def _fitting_types(key: str) -> tuple[str, ...]:
    noun = _head_noun(key)
    if noun is None:
        return _ALL_TYPES
    return vocab.HEAD_NOUN_TYPES.get(noun, _ALL_TYPES)


def _defined_entities(message: WrappedMessage) -> dict[str, Entity]:
    entities = detect_entities(message.content, message_id=message.chat_id)
    entities.update(message.entities)
    return {key: e for key, e in entities.items() if e.value is not None}


def _owned_values(wrapped: WrappedMessage) -> dict[str, str]:
    """The values the message's own references stand for, casefolded, each with its entity's key.

    A defined entity whose key is not its value's own name (detection reads the value and finds no
    entity of that key) is a reference that names something else: ``the_database`` = "PostgreSQL 14",
    or a key a user defined by hand. One keyed by its value's name (``postgresql``, ``settings.py``) is
    the named thing itself.
    """
    owned: dict[str, str] = {}
    for key, entity in wrapped.entities.items():
        if entity.value is None or key in detect_entities(entity.value):
            continue
        owned.setdefault(entity.value.strip().casefold(), key)
    return owned


def _sources(wrapped: WrappedMessage, history: Iterable[WrappedMessage]) -> list[WrappedMessage]:
    """The message itself, then the history from the most recent back, same thread only."""
    earlier = [
        m
        for m in history
        if m.chat_id != wrapped.chat_id
        and not (wrapped.thread_id is not None and m.thread_id is not None and m.thread_id != wrapped.thread_id)
    ]
    return [wrapped, *reversed(earlier)]


def _from_history(wrapped: WrappedMessage, history: Sequence[WrappedMessage], undefined: list[str]) -> list[Suggestion]:
    suggestions = []
    for distance, message in enumerate(_sources(wrapped, history)):
        recency = RECENCY_DECAY**distance
        for cand_key, entity in _defined_entities(message).items():
            assert entity.value is not None
            for key in undefined:
                if cand_key == key:
                    tier = _EXACT
                else:
                    types = _fitting_types(key)
                    if entity.type not in types:
                        continue
                    tier = _SPECIFIC if entity.type == types[0] else _FITTING
                suggestions.append(
                    Suggestion(key, entity.value, round(tier * recency, 4), message.chat_id, "history", entity.type)
                )
    return suggestions


def build_prompt(wrapped: WrappedMessage, history: Sequence[WrappedMessage], undefined: list[str]) -> str:
    """The question put to a model: the undefined references, the context, and the answer format."""
    lines = [
        "A message was moved from one AI chat to another. It uses references whose meaning it does not "
        "state. Say what each one refers to, using the conversation below.",
        "",
        "Undefined references:",
        *(f"- {inline(key)} ({json.dumps(key.replace('_', ' '), ensure_ascii=False)})" for key in undefined),
    ]
    earlier = _sources(wrapped, history)[1:]
    if earlier:
        lines += ["", "Earlier messages, oldest first:"]
        for message in reversed(earlier):
            text = message.content if len(message.content) <= _SNIPPET else message.content[:_SNIPPET] + " [...]"
            lines += [f"[{inline(message.chat_id)}] {message.role} on {inline(message.platform)}:", fenced(text)]
    known = [f"- {inline(key)} = {inline(e.value)}" for key, e in wrapped.entities.items() if e.value is not None]
    if known:
        lines += ["", "Already defined in the message:", *known]
    lines += [
        "",
        f"The message ({wrapped.role} on {inline(wrapped.platform)}):",
        fenced(wrapped.content),
        "",
        "Answer with one line per reference, exactly in the form `key: value`, where value names the "
        "specific thing (a product, version, file, component or method). If the conversation does not "
        "say, write `key: unknown`.",
    ]
    return "\n".join(lines)


def fenced(text: str) -> str:
    """``text`` in a fenced block that no line of it can close (its fence is longer than any backtick run).

    Each message's content is quoted so in a prompt: a line of it can never pass for a line of the
    prompt, such as another earlier message (``[c-0] user on claude.ai: ...``) or a known entity.
    """
    longest = max((len(run) for run in _BACKTICK_RUN.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _clean(text: str) -> str:
    return text.strip().strip("`*\"'“”").strip()


def _answer_line(line: str) -> tuple[str, str] | None:
    """``(key, value)`` of a ``key: value`` (or ``key = value``) line after list marks, else None.

    Plain scanning, linear in the line: the key runs from the first character that is not a list
    mark (keeping at least one) to the first ``:`` or ``=``; the value is the rest, not empty.
    """
    colon, equals = line.find(":"), line.find("=")
    cut = min(colon, equals) if colon >= 0 and equals >= 0 else max(colon, equals)
    if cut <= 0 or cut == len(line) - 1:
        return None
    start = 0
    while start < cut - 1 and (line[start].isspace() or line[start].isdecimal() or line[start] in _LIST_MARKS):
        start += 1
    return line[start:cut], line[cut + 1 :]


def parse_answer(answer: str, undefined: list[str]) -> dict[str, str]:
    """Read ``key: value`` lines leniently (bullets, backticks, bold, ``=``, spaces for ``_``)."""
    wanted = {key.lower(): key for key in undefined}
    wanted.update({key.replace("_", " ").lower(): key for key in undefined})
    found: dict[str, str] = {}
    for line in answer.splitlines():
        pair = _answer_line(line)
        if pair is None:
            continue
        key = wanted.get(_clean(pair[0]).lower())
        value = _clean(_clean(pair[1]).rstrip("."))
        if key is None or key in found or _clean(value).lower() in _NO_ANSWER:
            continue
        found[key] = value
    return found


def suggest_definitions(
    wrapped: WrappedMessage,
    history: Iterable[WrappedMessage] = (),
    *,
    ask: Callable[[str], str] | None = None,
    limit: int | None = 5,
) -> list[Suggestion]:
    """Ranked suggestions for the message's undefined entities (see the module docstring).

    The list is grouped by undefined key (in the message's order), best first within a key, at most
    ``limit`` per key; a value suggested twice for a key is kept once, with its best score.
    """
    undefined = list(wrapped.undefined)
    if not undefined:
        return []
    history = list(history)
    suggestions = _from_history(wrapped, history, undefined)
    if ask is not None:
        answer = ask(build_prompt(wrapped, history, undefined))
        if not isinstance(answer, str):
            raise TypeError(f"ask must return the answer text, not {type(answer).__name__}")
        for key, value in parse_answer(answer, undefined).items():
            suggestions.append(Suggestion(key, value, MODEL_SCORE, None, "model", _fitting_types(key)[0]))
    owned = _owned_values(wrapped)  # another reference's value is never this one's
    suggestions = [s for s in suggestions if owned.get(s.value.strip().casefold(), s.key) == s.key]

    best: dict[tuple[str, str], tuple[int, Suggestion]] = {}
    for order, suggestion in enumerate(suggestions):
        ident = (suggestion.key, suggestion.value.casefold())
        kept = best.get(ident)
        if kept is None or suggestion.score > kept[1].score:
            best[ident] = (order, suggestion)
    ranked: list[Suggestion] = []
    for key in undefined:
        group = sorted((item for item in best.values() if item[1].key == key), key=lambda i: (-i[1].score, i[0]))
        ranked.extend(s for _order, s in group[: limit if limit is not None else None])
    return ranked


def best_definitions(suggestions: Iterable[Suggestion]) -> dict[str, Suggestion]:
    """One suggestion per key to apply: the best scored first, each value given to one key only.

    ``suggest_definitions`` may propose one value for two references ("the database" and "the cluster"
    both fit PostgreSQL 14); applied to both, one would hold the other's value. Here the higher score
    takes it (the earlier key on a tie) and the other key gets its next proposal, or none.
    """
    ranked = sorted(enumerate(suggestions), key=lambda item: (-item[1].score, item[0]))
    chosen: dict[str, Suggestion] = {}
    taken: set[str] = set()
    for _order, suggestion in ranked:
        value = suggestion.value.strip().casefold()
        if suggestion.key in chosen or value in taken:
            continue
        chosen[suggestion.key] = suggestion
        taken.add(value)
    return chosen
