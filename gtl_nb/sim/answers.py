"""Deterministic answers shared by every simulator.

Rules (all derived from ``(seed, prompt)`` only, never from a clock or global random state):

* The text quotes the start of the prompt (``You said: "…".``) and continues with filler words picked by a
  generator seeded from ``(seed, prompt)``. After tool results it starts ``The tool returned: …`` instead.
  The filler includes a few non-ASCII words so clients exercise UTF-8 decoding.
* ``pieces``: the text split into stream pieces of a few characters up to a word (concatenation == text).
* Tool calls: when ``tools`` are given (and no tool results), the model calls every tool whose name occurs in
  the prompt, in the order of ``tools``; if none is named, the first tool. The arguments fill the required
  properties of the tool's JSON Schema by type (enums take their first value, nested objects are recursed).
  The text is then empty.
* Token counts: one token per started group of 4 characters (``count_tokens``), at least 1.
  ``tokens_in`` counts the prompt, the tool definitions and the tool results; ``tokens_out`` the text and the
  tool-call arguments; ``tokens_thinking`` the reasoning text (not included in ``tokens_out``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "count_tokens", "make_answer", "sample_for_schema"]

_FILLER = (
    "the",
    "simulator",
    "answers",
    "with",
    "deterministic",
    "words",
    "so",
    "tests",
    "can",
    "compare",
    "bytes",
    "across",
    "runs",
    "and",
    "streams",
    "arrive",
    "in",
    "small",
    "pieces",
    "café",
    "naïve",
    "résumé",
    "over",
    "a",
    "loopback",
    "socket",
    "while",
    "every",
    "chunk",
    "keeps",
    "its",
    "framing",
    "exactly",
    "as",
    "recorded",
    "provider",
    "traffic",
    "shows",
    "it",
    "→",
    "done",
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


def _rng(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[:_QUOTE_CHARS].rstrip() + "…"


def _filler(rnd: random.Random, n_words: int) -> str:
    words = [rnd.choice(_FILLER) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


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


def sample_for_schema(schema: Any, root: dict[str, Any] | None = None, name: str = "value", depth: int = 0) -> Any:
    """A value validating ``schema``: required properties filled by type, enums take their first value."""
    if not isinstance(schema, dict) or depth > 8:
        return None if depth > 8 else "sample"
    root = root if root is not None else schema
    schema = _resolve_ref(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") in ("null", "NULL"))]
            return sample_for_schema((non_null or options)[0], root, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind.lower() if isinstance(kind, str) else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            key: sample_for_schema(props.get(key, {}), root, key, depth + 1) for key in schema.get("required") or []
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [sample_for_schema(schema.get("items", {}), root, name, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return schema.get("minimum", 1.5)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if schema.get("format") == "date":
        return "2025-01-01"
    if schema.get("format") == "date-time":
        return "2025-01-01T00:00:00Z"
    text = f"sample {name}"
    min_len = int(schema.get("minLength", 0))
    return text + "x" * max(0, min_len - len(text))


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
) -> Answer:
    """Compute the answer; see the module docstring for the rules."""
    tool_results = tool_results or []
    rnd = _rng(seed, prompt_text, tuple(tool_results))
    tokens_in = count_tokens(prompt_text)
    if tools:
        tokens_in += count_tokens(json.dumps(tools, sort_keys=True))
    tokens_in += sum(count_tokens(r) for r in tool_results)

    thinking_text = ""
    if thinking:
        think = _rng(seed, "thinking", prompt_text)  # its own generator: the answer text stays the same
        thinking_text = f'The user wrote "{_quote(prompt_text)}". ' + _filler(think, think.randint(6, 10))

    tool_calls: list[dict[str, Any]] = []
    text = ""
    finish = "stop"
    if tools and not tool_results:
        for tool in _choose_tools(prompt_text, tools):
            params = tool.get("parameters") or {"type": "object", "properties": {}}
            tool_calls.append({"name": tool["name"], "arguments": sample_for_schema(params)})
        finish = "tool_calls"
    elif tool_results:
        text = f"The tool returned: {_quote('; '.join(tool_results))}. " + _filler(rnd, rnd.randint(5, 9))
    else:
        text = f'You said: "{_quote(prompt_text)}". ' + _filler(rnd, rnd.randint(8, 16))

    pieces = split_pieces(text, rnd)
    if max_tokens is not None and text and count_tokens(text) > max_tokens:
        kept: list[str] = []
        for piece in pieces:
            if count_tokens("".join([*kept, piece])) > max_tokens:
                break
            kept.append(piece)
        pieces = kept
        text = "".join(kept)
        finish = "length"
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
    )
