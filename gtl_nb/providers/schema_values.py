"""Deterministic example values that validate against a JSON Schema (for the offline providers).

Covers the subset tool definitions use: ``type`` (and lists of types), ``enum``, ``const``,
``default``, ``examples``, ``properties`` / ``required``, ``items`` / ``minItems``, ``anyOf`` /
``oneOf`` / ``allOf`` (first branch / merged), ``minimum`` / ``maximum`` / ``exclusiveMinimum``,
``minLength`` / ``maxLength``, ``format`` (date, date-time, email, uri, uuid) and local ``$ref``
into ``$defs`` / ``definitions``. ``hint`` text seeds string values so answers look related to
the prompt.
"""

from __future__ import annotations

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


def example_value(schema: Any, hint: str = "example", *, root: Any = None, depth: int = 0) -> Any:
    """A value valid for ``schema``."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 12:
        return hint
    if "$ref" in schema:
        return example_value(_resolve(root, schema["$ref"]), hint, root=root, depth=depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if schema.get("examples"):
        return schema["examples"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example_value(schema[key][0], hint, root=root, depth=depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            part = _resolve(root, part["$ref"]) if isinstance(part, dict) and "$ref" in part else part
            for k, v in part.items():
                if k in ("properties",) and k in merged:
                    merged[k] = {**merged[k], **v}
                elif k == "required" and k in merged:
                    merged[k] = [*merged[k], *v]
                else:
                    merged[k] = v
        return example_value(merged, hint, root=root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        required = schema.get("required", list(properties))
        return {
            name: example_value(properties.get(name, {}), _hint_for(name, hint), root=root, depth=depth + 1)
            for name in required
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        items = schema.get("items", {})
        return [example_value(items, hint, root=root, depth=depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, hint)


def _hint_for(name: str, hint: str) -> str:
    return hint if hint and hint != "example" else name


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    if low is None and "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
        low = schema["exclusiveMinimum"] + 1
    high = schema.get("maximum")
    value = low if low is not None else (min(1, high) if high is not None else 1)
    return int(value) if integer else float(value)


def _string(schema: dict[str, Any], hint: str) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    text = hint or "example"
    min_length = int(schema.get("minLength", 0))
    if len(text) < min_length:
        text = text + "x" * (min_length - len(text))
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#/"):
        return {}
    node = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node
