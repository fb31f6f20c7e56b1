"""Whether a JSON Schema that came with a request is well formed where gtl_nb reads it.

A schema arrives from outside — a ``response_format`` or a tool's ``parameters``, on a gateway
from any caller — and the offline model builds values from it. This check runs first, so a
malformed schema is refused as the caller's mistake, naming where it is, instead of failing inside
the generator as an internal error. It checks the JSON types of the keywords (``properties`` an
object of schemas, ``required`` a list of strings, ``minItems`` a count, ...), not what they mean:
a schema it passes may still ask for what no value satisfies. Bounded: at most ``MAX_DEPTH``
levels and ``MAX_PARTS`` schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gtl_nb.protocol.codec import json_kind

__all__ = ["MAX_DEPTH", "MAX_PARTS", "schema_shape_problem"]

MAX_DEPTH = 64
MAX_PARTS = 20_000

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMAS = (
    "not",
    "additionalProperties",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "if",
    "then",
    "else",
)
_COUNTS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_NUMBERS = ("minimum", "maximum", "multipleOf")
_TEXTS = ("$ref", "format", "pattern", "title", "description", "$id", "$schema", "$anchor")


def schema_shape_problem(schema: Any, where: str = "schema") -> str | None:
    """What is malformed in ``schema`` (``"schema.properties.city: type must be ..."``), else ``None``."""
    stack: list[tuple[Any, str, int]] = [(schema, where, 0)]
    parts = 0
    while stack:
        node, path, depth = stack.pop()
        parts += 1
        if parts > MAX_PARTS:
            return f"{where}: more than {MAX_PARTS:,} schemas in all"
        if depth > MAX_DEPTH:
            return f"{path}: nested deeper than {MAX_DEPTH} levels"
        if isinstance(node, bool):  # true and false are schemas too
            continue
        if not isinstance(node, Mapping):
            return f"{path}: a schema must be an object (or true/false), not {json_kind(node)}"
        problem = _keyword_problem(node, path)
        if problem is not None:
            return problem
        for keyword, value in node.items():
            inner = f"{path}.{keyword}"
            if keyword in _SCHEMA_MAPS:
                stack.extend((child, f"{inner}.{name}", depth + 1) for name, child in value.items())
            elif keyword in _SCHEMA_LISTS:
                stack.extend((child, f"{inner}[{i}]", depth + 1) for i, child in enumerate(value))
            elif keyword in _SCHEMAS or (keyword == "items" and not isinstance(value, list)):
                stack.append((value, inner, depth + 1))
            elif keyword == "items":  # the older tuple form: a list of schemas
                stack.extend((child, f"{inner}[{i}]", depth + 1) for i, child in enumerate(value))
    return None


def _keyword_problem(node: Mapping[str, Any], path: str) -> str | None:
    """The first keyword of ``node`` whose value has the wrong JSON type."""
    kind = node.get("type")
    if kind is not None and not (
        isinstance(kind, str) or (isinstance(kind, list) and kind and all(isinstance(k, str) for k in kind))
    ):
        return f"{path}.type: must be a type name or a non-empty list of them, not {json_kind(kind)}"
    for keyword in _SCHEMA_MAPS:
        if keyword in node and not isinstance(node[keyword], Mapping):
            return f"{path}.{keyword}: must be an object of schemas, not {json_kind(node[keyword])}"
    for keyword in _SCHEMA_LISTS:
        if keyword in node and not (isinstance(node[keyword], list) and node[keyword]):
            return f"{path}.{keyword}: must be a non-empty list of schemas, not {json_kind(node[keyword])}"
    required = node.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        return f"{path}.required: must be a list of property names, not {json_kind(required)}"
    examples = node.get("examples")
    if examples is not None and not isinstance(examples, list):
        return f"{path}.examples: must be a list, not {json_kind(examples)}"
    enum = node.get("enum")
    if enum is not None and not (isinstance(enum, list) and enum):
        return f"{path}.enum: must be a non-empty list, not {json_kind(enum)}"
    for keyword in _COUNTS:
        value = node.get(keyword)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return f"{path}.{keyword}: must be a whole number ≥ 0, not {json_kind(value)}"
    for keyword in (*_NUMBERS, "exclusiveMinimum", "exclusiveMaximum"):
        value = node.get(keyword)
        # (exclusiveMinimum/Maximum were booleans in draft 4: still accepted)
        boolean_allowed = keyword.startswith("exclusive")
        if value is not None and not _is_number(value, boolean_allowed=boolean_allowed):
            return f"{path}.{keyword}: must be a number, not {json_kind(value)}"
    for keyword in _TEXTS:
        if keyword in node and not isinstance(node[keyword], str):
            return f"{path}.{keyword}: must be a string, not {json_kind(node[keyword])}"
    return None


def _is_number(value: Any, *, boolean_allowed: bool) -> bool:
    if isinstance(value, bool):
        return boolean_allowed
    return isinstance(value, (int, float)) and value == value  # NaN is no bound
