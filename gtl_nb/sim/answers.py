"""Deterministic answers shared by every simulator.

Rules (all derived from ``(seed, prompt)`` only, never from a clock or global random state):

* The text quotes the start of the prompt (``You said: "…".``) and continues with a few sentences about the
  prompt's first content words ("…a simulated answer about streaming, chat and interfaces."), each chosen
  from a small set of templates by a generator seeded from ``(seed, prompt)`` and the simulator's name.
  After tool results it starts ``The tool returned: …`` instead. Some templates hold non-ASCII text
  (``—``) so clients exercise UTF-8.
* ``pieces``: the text split into stream pieces of a few characters up to a word (concatenation == text).
* Structured output: with ``schema`` (the JSON Schema the request's response format names), the text is a
  compact JSON value that validates it (filled as tool arguments are, below); ``{}`` stands for "any JSON
  object" (OpenAI's ``json_object``). Tool calls still come first when tools are given.
* Tool calls: when ``tools`` are given (and no tool results), the model calls every tool whose name occurs in
  the prompt, in the order of ``tools``; if none is named, the first tool. The arguments fill the required
  properties of the tool's JSON Schema by type (enums take their first value, nested objects are recursed).
  The text is then empty.
* Token counts: ``tokens_in`` is what the simulator estimated for the whole request (system prompt, every
  turn, tools, images: :mod:`gtl_nb.sim.tokens`); output counts are one token per started group of 4
  characters (``count_tokens``), at least 1: ``tokens_out`` the text and the tool-call arguments,
  ``tokens_thinking`` the reasoning text (not included in ``tokens_out``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "count_tokens", "make_answer", "sample_for_schema"]

# Words that say nothing about a prompt's topic (the answer talks about the others): function words, and the
# scaffolding of a request ("explain in two sentences…").
_STOPWORD_TEXT = """
    a about above after again all also am an and any are as at be because been before being below between
    both but by can could did do does doing done during each either else ever every few for from get gets give
    got had has have having he her here hers him his how however i if in into is it its itself just know let
    like make many may me might more most much must my need no nor not now of off often on once one only or
    other our out over own please quite rather really said say same says see she should show since so some
    such tell than that the their them then there these they thing things this those though through to too
    two under until up upon us use used very want was way we well were what when where whether which while who
    whom whose why will with within without would write yes yet you your yours
    answer brief briefly call come compare define describe example explain find five four go going happen
    happens hello help hey hi line lines list look made makes matter matters mean means name paragraph question
    short simply sentence sentences summarise summarize take thank thanks think three try uses using word words work
    works"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"(?<![\w'-])[^\W\d_][\w'-]*")  # the look-behind: one start per word (no ReDoS)
_OPENERS = (
    "Here is a short simulated answer about {topic}.",
    "This is a simulated reply about {topic}.",
    "Here is what a simulated model says about {topic}.",
)
_MIDDLES = (
    "The key point about {first} is what it changes in practice, so that is where an answer should start.",
    "When it comes to {first}, a concrete example usually helps more than a definition.",
    "Most questions about {first} come down to a few trade-offs that are worth stating plainly.",
    "A good answer would start with {first} and then explain how {second} fits in.",
)
_CLOSERS = (
    "A real provider would go into more detail; this one answers offline — same seed, same words.",
    "Ask a follow-up about {second} to go further; the simulator will answer in the same way.",
    "The text is generated offline, so every run with the same seed reads exactly the same.",
)
_AFTER_TOOLS = (
    "Going by that result, here is a short simulated answer about {topic}.",
    "With that result in hand, the answer about {topic} follows directly.",
)
_THOUGHTS = (
    "They are asking about {topic}, so a short and direct answer fits best.",
    "The question is about {topic}; start from {first} and keep the answer brief.",
)

_QUOTE_CHARS = 40


def count_tokens(text: str) -> int:
    """The documented token count: one per started group of 4 characters, at least 1."""
    return max(1, (len(text) + 3) // 4)


@dataclass
class Answer:
    """What the simulated model says to one request."""

    text: str
    pieces: list[str]
    tool_calls: list[dict[str, Any]]  # [{"name": str, "arguments": dict}]
    tokens_in: int
    tokens_out: int
    thinking: str = ""
    thinking_pieces: list[str] = field(default_factory=list)
    tokens_thinking: int = 0
    finish: str = "stop"  # "stop", "tool_calls" or "length"
    stop_sequence: str | None = None  # the stop sequence that ended the text, when one did


def _rng(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[:_QUOTE_CHARS].rstrip() + "…"


def _keywords(text: str, limit: int = 3) -> list[str]:
    """The prompt's first few content words, in order, without repeats (names keep their capitals)."""
    found: list[str] = []
    previous_end = 0
    for match in _WORD.finditer(text):
        word, before = match.group().strip("'-"), text[previous_end : match.start()].rstrip()
        opens_sentence = before[-1] in ".!?" if before else previous_end == 0
        previous_end = match.end()
        if opens_sentence:
            word = word.lower()  # "Explain…" opening a sentence is not a name; "France" mid-sentence is
        if len(word) > 2 and word.lower() not in _STOPWORDS and word not in found:
            found.append(word)
            if len(found) == limit:
                break
    return found


def _slots(prompt_text: str) -> dict[str, str]:
    """The words the templates talk about: ``topic`` (a phrase), ``first`` and ``second`` (single words)."""
    words = _keywords(prompt_text)
    if not words:
        return {"topic": "your message", "first": "the question", "second": "the context"}
    topic = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return {"topic": topic, "first": words[0], "second": words[1] if len(words) > 1 else "the context"}


def _sentences(rnd: random.Random, slots: dict[str, str], *pools: tuple[str, ...]) -> str:
    """One template from each pool, filled in: sentences that read as an answer about the prompt."""
    return " ".join(rnd.choice(pool).format(**slots) for pool in pools)


def split_pieces(text: str, rnd: random.Random) -> list[str]:
    """Split ``text`` into pieces of a few characters up to a word (a word keeps its leading space)."""
    pieces: list[str] = []
    i = 0
    while i < len(text):
        j = i  # the next word, with its leading whitespace
        while j < len(text) and text[j].isspace():
            j += 1
        while j < len(text) and not text[j].isspace():
            j += 1
        while i < j:  # the word's pieces (its end is found once: a long word stays linear)
            length = j - i
            if length > 4 and (length > 9 or rnd.random() < 0.4):
                length = rnd.randint(2, min(length - 1, 8))  # cut mid-word, as real tokenizers do
            pieces.append(text[i : i + length])
            i += length
    return pieces


def _resolve_ref(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, dict) else {}


def sample_for_schema(
    schema: Any,
    root: dict[str, Any] | None = None,
    name: str = "value",
    depth: int = 0,
    built: list[int] | None = None,
    inside: tuple[str, ...] = (),
) -> Any:
    """A value validating ``schema``: required properties filled by type, enums take their first value.

    A recursive schema (a tree) ends: from ``_SHALLOW_FROM`` levels down, or once ``_MOST_NODES`` values
    are built, a sample takes the least the schema allows — an empty list, null, the choice that is no
    reference (a leaf) — so a tree stays small, whatever the schema."""
    built = built if built is not None else [0]
    built[0] += 1
    if built[0] > _NO_MORE_NODES:  # a schema no small sample satisfies (arrays of arrays, each long): stop
        return None
    if not isinstance(schema, dict) or depth > _DEEPEST:
        return None if depth > _DEEPEST else "sample"
    root = root if root is not None else schema
    ref = schema.get("$ref")
    inside = (*inside, ref) if isinstance(ref, str) else inside  # the definitions this value is within
    # (a malformed schema — a keyword of the wrong JSON type — is read as if that keyword were absent:
    # the simulator answers something, as a lenient provider would, instead of failing with a 500)
    schema = _resolve_ref(schema, root)
    deep = depth >= _SHALLOW_FROM or built[0] > _MOST_NODES
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            null = [o for o in options if isinstance(o, dict) and o.get("type") in ("null", "NULL")]
            if deep and null and combinator != "allOf":
                return None
            non_null = [o for o in options if o not in null]
            if deep and combinator != "allOf":  # a leaf: a choice that does not lead back to where it is
                non_null = sorted(non_null, key=lambda option: _leads_back(option, inside))
            return sample_for_schema((non_null or options)[0], root, name, depth + 1, built, inside)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind.lower() if isinstance(kind, str) else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        names = [key for key in required if isinstance(key, str)] if isinstance(required, list) else []
        return {key: sample_for_schema(props.get(key, {}), root, key, depth + 1, built, inside) for key in names}
    if kind == "array":
        # bounded whatever the schema says (a minItems of millions, nested, must not hang the simulator)
        least = _whole(schema.get("minItems"), 0)
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:  # a tuple: one value per position, then items if more are asked
            head = [sample_for_schema(part, root, name, depth + 1, built, inside) for part in prefix[:_MAX_ITEMS]]
            items = schema.get("items", {})
            rest = max(0, min(least, _MAX_ITEMS) - len(head)) if items is not False else 0
            return head + [sample_for_schema(items, root, name, depth + 1, built, inside) for _ in range(rest)]
        if deep and least == 0:
            return []
        count = min(max(1, least), _MAX_ITEMS)  # as many as the schema asks, bounded (the node budget too)
        count = min(count, max(0, _whole(schema.get("maxItems"), count)))
        return [sample_for_schema(schema.get("items", {}), root, name, depth + 1, built, inside) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number_within(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    form = schema.get("format")
    if isinstance(form, str) and form in _FORMATS:
        return _FORMATS[form]
    text = f"sample {name}"
    min_len = min(_whole(schema.get("minLength"), 0), _MAX_TEXT)
    text += "x" * max(0, min_len - len(text))
    max_len = schema.get("maxLength")
    return text[: max(min_len, _whole(max_len, len(text)))] if max_len is not None else text


def _leads_back(option: Any, inside: tuple[str, ...]) -> bool:
    """Whether a choice refers to a definition the value is already within (a branch, not a leaf)."""
    return isinstance(option, dict) and option.get("$ref") in inside


_MAX_ITEMS = 16
# a value of each ``format`` the providers' structured outputs accept (what a model writes for it)
_FORMATS = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T00:00:00Z",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "user@example.com",
    "hostname": "example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}
_MAX_TEXT = 4096
_SHALLOW_FROM = 5  # levels from which a sample takes the least a schema allows (a tree's leaves)
_DEEPEST = 24  # levels past which nothing is built (a schema with no leaf at all)
_MOST_NODES = 500  # values built before a sample takes the least everywhere
_NO_MORE_NODES = 4 * _MOST_NODES  # and past which it builds nothing more: a bounded answer, whatever the schema


def _whole(value: Any, default: int) -> int:
    """``value`` as a whole number, or ``default`` when it is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _number_within(schema: dict[str, Any], *, integer: bool) -> int | float:
    """A number inside the schema's bounds (``minimum``, ``exclusiveMinimum``, ``maximum``, ``exclusiveMaximum``)."""
    step = 1 if integer else 0.5
    value: float = 1 if integer else 1.5
    low, high, above, below = (
        _finite(schema.get(key)) for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    )
    if isinstance(low, (int, float)) and not isinstance(low, bool):
        value = low
    elif isinstance(above, (int, float)) and not isinstance(above, bool):
        value = above + step
    if isinstance(high, (int, float)) and not isinstance(high, bool):
        value = min(value, high)
    if isinstance(below, (int, float)) and not isinstance(below, bool) and value >= below:
        value = below - step
    if integer:
        return math.ceil(value) if isinstance(low, (int, float)) and value == low else int(value)
    return value


def _finite(value: Any) -> float | None:
    """A bound as a number, or ``None`` for one that is none (a string, a boolean, an infinity)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if number else None


def _choose_tools(prompt_text: str, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    named = [t for t in tools if t.get("name") and str(t["name"]) in prompt_text]
    return named or tools[:1]


def make_answer(
    seed: int,
    prompt_text: str,
    tools: list[dict[str, Any]],
    *,
    tool_results: list[str] | None = None,
    thinking: bool = False,
    max_tokens: int | None = None,
    tokens_in: int | None = None,
    salt: str = "",
    schema: dict[str, Any] | None = None,
    stop: Sequence[str] = (),
    one_call: bool = False,
) -> Answer:
    """Compute the answer; see the module docstring for the rules.

    ``one_call``: the request allows at most one tool call (OpenAI's ``parallel_tool_calls: false``,
    Anthropic's ``disable_parallel_tool_use``): only the first chosen tool is called.

    ``stop``: the request's stop sequences; the text ends before the first of them it would contain
    (which is not sent, as the services do) and ``Answer.stop_sequence`` names it.

    ``tokens_in`` is the input count the simulator estimated from the whole request (see
    :mod:`gtl_nb.sim.tokens`); without it, the prompt, tools and results are counted by :func:`count_tokens`.
    ``salt`` (the simulator's provider name) varies the wording between simulators sharing a seed.
    """
    tool_results = tool_results or []
    rnd = _rng(seed, prompt_text, tuple(tool_results), *([salt] if salt else []))
    if tokens_in is None:
        tokens_in = count_tokens(prompt_text) + sum(count_tokens(r) for r in tool_results)
        tokens_in += count_tokens(json.dumps(tools, sort_keys=True)) if tools else 0
    slots = _slots(prompt_text)

    thinking_text = ""
    if thinking:
        think = _rng(seed, "thinking", prompt_text, salt)  # its own generator: the answer text stays the same
        thinking_text = f'The user wrote "{_quote(prompt_text)}". ' + _sentences(think, slots, _THOUGHTS)

    tool_calls: list[dict[str, Any]] = []
    text = ""
    finish = "stop"
    if tools and not tool_results:
        chosen = _choose_tools(prompt_text, tools)
        for tool in chosen[:1] if one_call else chosen:
            params = tool.get("parameters") or {"type": "object", "properties": {}}
            tool_calls.append({"name": tool["name"], "arguments": sample_for_schema(params)})
        finish = "tool_calls"
    elif schema is not None:
        value = sample_for_schema(schema) if schema else {"answer": f"You said: {_quote(prompt_text)}"}
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    elif tool_results:
        said = _quote("; ".join(tool_results))
        text = f"The tool returned: {said}. " + _sentences(rnd, slots, _AFTER_TOOLS, _CLOSERS)
    else:
        text = f'You said: "{_quote(prompt_text)}". ' + _sentences(rnd, slots, _OPENERS, _MIDDLES, _CLOSERS)

    pieces = split_pieces(text, rnd)
    stopped_by = None
    if text and stop:
        text, pieces, stopped_by = _cut_at_stop(text, pieces, stop)
    if max_tokens is not None and text and count_tokens(text) > max_tokens:
        kept: list[str] = []
        for piece in pieces:
            if count_tokens("".join([*kept, piece])) > max_tokens:
                break
            kept.append(piece)
        pieces = kept
        text = "".join(kept)
        finish = "length"
        stopped_by = None  # the output limit came first
    tokens_out = (count_tokens(text) if text else 0) + sum(count_tokens(json.dumps(c["arguments"])) for c in tool_calls)
    return Answer(
        text=text,
        pieces=pieces,
        tool_calls=tool_calls,
        tokens_in=tokens_in,
        tokens_out=max(1, tokens_out),
        thinking=thinking_text,
        thinking_pieces=split_pieces(thinking_text, _rng(seed, "pieces", thinking_text)),
        tokens_thinking=count_tokens(thinking_text) if thinking_text else 0,
        finish=finish,
        stop_sequence=stopped_by,
    )


def _cut_at_stop(text: str, pieces: list[str], stop: Sequence[str]) -> tuple[str, list[str], str | None]:
    """``text`` and its ``pieces`` ended before the earliest stop sequence in it (the first listed wins
    a tie), and that sequence; unchanged, with ``None``, when none occurs."""
    found = [(text.find(sequence), order, sequence) for order, sequence in enumerate(stop) if sequence]
    hits = [hit for hit in found if hit[0] >= 0]
    if not hits:
        return text, pieces, None
    at, _, sequence = min(hits)
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) > at:
            if at > length:
                kept.append(piece[: at - length])
            break
        kept.append(piece)
        length += len(piece)
    return text[:at], kept, sequence
