"""A class's JSON Schema made strict, as the providers' structured outputs take it.

OpenAI's strict mode and Anthropic's structured outputs both refuse an object schema that may hold
keys it does not name: every object must say ``"additionalProperties": false``, and (OpenAI) list
every property in ``required`` — an optional field is one whose value may be ``null``, not one that
may be missing. A schema pydantic writes for a model class says neither, so a class given as
``response_format`` (as the OpenAI SDK's ``parse`` takes it) is sent in this form, with
``"strict": true``: the answer is then held to the schema, not just steered by it.

Only the shape changes: types, descriptions, enums and constraints stay as the class wrote them. A
``"default": null`` is dropped (every property is required, so no default applies); an object the
class left open on purpose (``"additionalProperties": true`` or a schema) is left open — the
provider then says why it refuses it.
"""

from __future__ import annotations

from typing import Any

from gtl_nb.protocol.errors import InvalidRequestError

__all__ = ["MAX_SCHEMA_DEPTH", "strict_schema"]

MAX_SCHEMA_DEPTH = 64
"""Levels of nesting a schema may have here (a class's schema nests by ``$ref``, a few levels deep)."""

_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with every object closed and every property required (module docstring);
    ``InvalidRequestError`` for a schema nested deeper than ``MAX_SCHEMA_DEPTH``."""
    return _strict(schema, 0)


def _strict(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidRequestError(f"response_format: the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        members = out.get(key)
        if isinstance(members, dict):
            out[key] = {name: _sub(member, depth) for name, member in members.items()}
    for key in _SUBSCHEMA_LISTS:
        members = out.get(key)
        if isinstance(members, list):
            out[key] = [_sub(member, depth) for member in members]
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _sub(out[key], depth)
    properties = out.get("properties")
    kind = out.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or isinstance(properties, dict):
        out.setdefault("additionalProperties", False)
        if isinstance(properties, dict):
            out["required"] = list(properties)
    if "default" in out and out["default"] is None:
        del out["default"]
    return out


def _sub(member: Any, depth: int) -> Any:
    return _strict(member, depth + 1) if isinstance(member, dict) else member
