"""Deterministic example values that validate against a JSON Schema (for the offline providers).

Covers the subset tool definitions use: ``type`` (and lists of types), ``enum``, ``const``,
``default``, ``examples``, ``properties`` / ``required``, ``items`` / ``prefixItems`` / ``minItems``, ``anyOf`` /
``oneOf`` / ``allOf`` (first branch / merged), ``minimum`` / ``maximum`` / ``exclusiveMinimum``,
``minLength`` / ``maxLength``, ``format`` (date, date-time, email, uri, uuid) and local ``$ref``
into ``$defs`` / ``definitions``.

Strings are chosen by what their property is called, so a tool call reads like one a model would make:

* a place (``city``, ``location``, ``country``…) takes the first capitalised name of the prompt that does
  not open a sentence ("weather in **New York**?"), else a fixed example ("Paris", "France");
* a request (``query``, ``q``, ``question``, ``text``…) takes the prompt itself, whitespace collapsed;
* a few common fields (``name``, ``language``, ``timezone``…) take a fixed example;
* any other string is ``"example <name>"``.
"""

from __future__ import annotations

import math
import re
from typing import Any

_FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}

#: place-like properties -> the example used when the prompt names no place
_PLACES = {
    "city": "Paris",
    "town": "Paris",
    "location": "Paris",
    "place": "Paris",
    "destination": "Paris",
    "origin": "London",
    "country": "France",
    "region": "Europe",
}
#: properties that carry the user's request itself
_REQUESTS = {"query", "q", "search", "question", "text", "prompt", "topic", "message", "input", "keywords", "term"}
#: common properties with one sensible fixed value
_FIXED = {
    "name": "Ada Lovelace",
    "language": "English",
    "lang": "en",
    "locale": "en-US",
    "currency": "EUR",
    "timezone": "Europe/Paris",
    "unit": "celsius",
    "units": "metric",
    "email": "user@example.com",
    "url": "https://example.com/",
}
# Capitalised words that are not names even in mid-sentence.
_NOT_NAMES = {"I", "I'm", "I'd", "I'll", "I've", "OK", "Please"}
_WORD = re.compile(r"(?<![\w'’-])[^\W\d_][\w'’-]*")  # the look-behind: one start per word (no ReDoS)
_SENTENCE_END = ".!?:;\n"


def example_value(schema: Any, prompt: str = "", *, name: str = "value", root: Any = None) -> Any:
    """A value valid for ``schema``; ``prompt`` (the user's message) and ``name`` shape the strings.

    Bounded whatever the schema asks (it comes from a request, and on a gateway from anyone): arrays
    of at most ``MAX_ITEMS``, and a recursive schema (a tree) ends — from ``SHALLOW_FROM`` levels down,
    or once ``MOST_VALUES`` are built, a value takes the least the schema allows (an empty list, null,
    a choice that does not lead back into itself); past ``NO_MORE_VALUES`` nothing more is built."""
    return _Example(schema if root is None else root, prompt).value(schema, name, 0, ())


MAX_ITEMS = 16
MAX_TEXT = 4096  # characters a string is padded to at most, whatever its minLength
SHALLOW_FROM = 5
MOST_VALUES = 500
NO_MORE_VALUES = 4 * MOST_VALUES


class _Example:
    """One example value being built: the schema's root (for ``$ref``), the prompt, the count so far."""

    def __init__(self, root: Any, prompt: str) -> None:
        self.root = root
        self.prompt = prompt
        self.built = 0

    def value(self, schema: Any, name: str, depth: int, inside: tuple[str, ...]) -> Any:
        self.built += 1
        if not isinstance(schema, dict) or depth > 12 or self.built > NO_MORE_VALUES:
            return _string({}, name, self.prompt)
        deep = depth >= SHALLOW_FROM or self.built > MOST_VALUES
        if "$ref" in schema:
            ref = schema["$ref"]
            within = (*inside, ref) if isinstance(ref, str) else inside
            return self.value(_resolve(self.root, ref), name, depth + 1, within)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        if "default" in schema:
            return schema["default"]
        if schema.get("examples"):
            return schema["examples"][0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if options and isinstance(options, list):
                if deep:  # the least: null when allowed, else a choice that does not lead back (a leaf)
                    if any(isinstance(o, dict) and o.get("type") == "null" for o in options):
                        return None
                    options = sorted(options, key=lambda o: isinstance(o, dict) and o.get("$ref") in inside)
                return self.value(options[0], name, depth + 1, inside)
        if schema.get("allOf"):
            return self.value(_merge(schema["allOf"], self.root), name, depth + 1, inside)
        kind = _kind(schema)
        if kind == "object":
            properties = schema.get("properties", {})
            required = schema.get("required", list(properties))
            return {key: self.value(properties.get(key, {}), key, depth + 1, inside) for key in required}
        if kind == "array":
            least = _whole(schema.get("minItems"))
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list) and prefix:  # a tuple: one value per position, then items if more are asked
                head = [self.value(part, name, depth + 1, inside) for part in prefix[:MAX_ITEMS]]
                rest = max(0, min(least, MAX_ITEMS) - len(head))
                items = schema.get("items", {})
                return head + [
                    self.value(items, name, depth + 1, inside) for _ in range(rest if items is not False else 0)
                ]
            if deep and least == 0:
                return []
            items = schema.get("items", {})
            return [self.value(items, name, depth + 1, inside) for _ in range(min(max(1, least), MAX_ITEMS))]
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return _string(schema, name, self.prompt)


def _whole(value: Any) -> int:
    """A count a schema gives (``minItems``), or 0 for anything that is not a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _kind(schema: dict[str, Any]) -> str:
    """The schema's type, lower-cased (the first non-null of a list; guessed from its keywords if absent)."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind.lower()
    return "object" if "properties" in schema else "array" if "items" in schema else "string"


def _merge(parts: list[Any], root: Any) -> dict[str, Any]:
    """``allOf`` as one schema: properties and required lists united, other keys the last one's."""
    merged: dict[str, Any] = {}
    for part in parts:
        part = _resolve(root, part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
        if not isinstance(part, dict):  # true adds nothing (false no value satisfies: not ours to refuse)
            continue
        for key, value in part.items():
            if key == "properties" and key in merged:
                merged[key] = {**merged[key], **value}
            elif key == "required" and key in merged:
                merged[key] = [*merged[key], *value]
            else:
                merged[key] = value
    return merged


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """A number within ``minimum``/``exclusiveMinimum``/``maximum`` (a bound that is no finite number,
    ``null`` say, is read as absent)."""
    low, above, high = (_bound(schema.get(key)) for key in ("minimum", "exclusiveMinimum", "maximum"))
    if low is None and above is not None:
        low = above + 1
    value = low if low is not None else (min(1, high) if high is not None else 1)
    return int(value) if integer else float(value)


def _bound(value: Any) -> float | None:
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if finite else None


def _string(schema: dict[str, Any], name: str, prompt: str) -> str:
    """A string for ``name``: its ``format``'s example, else a plausible one, padded to ``minLength``
    (at most ``MAX_TEXT`` characters: the schema comes from a request) and cut to ``maxLength``."""
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    text = _plausible(name, prompt)
    min_length = min(_whole(schema.get("minLength")), MAX_TEXT)
    if len(text) < min_length:
        text = text + "x" * (min_length - len(text))
    max_length = schema.get("maxLength")
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length >= 0:
        text = text[: max(max_length, min_length)]
    return text


def _plausible(name: str, prompt: str) -> str:
    """The string a model would likely pass for a property called ``name`` given ``prompt``."""
    key = name.lower().replace("-", "_")
    last = key.rsplit("_", 1)[-1]  # "city_name" and "home_city" are cities too
    if key in _PLACES or last in _PLACES:
        return proper_name(prompt) or _PLACES.get(key, _PLACES.get(last, "Paris"))
    if key in _REQUESTS or last in _REQUESTS:
        return " ".join(prompt.split()) or f"example {name}"
    if key in _FIXED:
        return _FIXED[key]
    return f"example {name.replace('_', ' ')}"


def proper_name(prompt: str) -> str:
    """The first run of capitalised words of ``prompt`` that does not open a sentence ("" when none)."""
    run: list[str] = []
    previous_end = 0
    for match in _WORD.finditer(prompt):
        word, gap = match.group(), prompt[previous_end : match.start()]
        before = gap.rstrip()
        opens_sentence = before[-1] in _SENTENCE_END if before else previous_end == 0
        if word[0].isupper() and word not in _NOT_NAMES and not opens_sentence and (not run or gap == " "):
            run.append(word)
        elif run:
            break
        previous_end = match.end()
    return " ".join(run)


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#/"):
        return {}
    node = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node
