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

__all__ = ["MAX_SCHEMA_DEPTH", "left_open", "strict_schema"]

MAX_SCHEMA_DEPTH = 64
"""Levels of nesting a schema may have here (a class's schema nests by ``$ref``, a few levels deep)."""

_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` with every object closed and every property required (module docstring);
    ``InvalidRequestError`` for a schema nested deeper than ``MAX_SCHEMA_DEPTH`` or grown past
    ``MAX_SCHEMA_PARTS`` once its references are inlined.

    Strict mode takes a ``$ref`` alone: one with keywords beside it (pydantic writes a field's
    ``description`` or ``default`` there) is replaced by what it names, those keywords on top — but
    within the very definition it names (a model that holds itself) it stays a reference, its keywords
    dropped; and the top level must be the object itself, so a schema that is only a ``$ref`` to its
    definitions (pydantic's form for a recursive model) gets the definition inlined at the top."""
    definitions = {
        f"#/{key}/{name}": member for key in ("$defs", "definitions") for name, member in _members(schema, key)
    }
    root, within = schema, frozenset[str]()
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref in definitions:
        root = {**definitions[ref], **{k: v for k, v in schema.items() if k != "$ref"}}
        within = frozenset({ref})
    return _Strict(definitions).made(root, 0, within)


MAX_SCHEMA_PARTS = 20_000
"""Subschemas a strict schema may have once its references are inlined (each inlining copies a
definition: a chain of described references could otherwise grow it without bound)."""


def _members(schema: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    members = schema.get(key)
    return list(members.items()) if isinstance(members, dict) else []


class _Strict:
    """One schema made strict: its definitions, and how many parts it has grown to."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions
        self.parts = 0

    def made(self, schema: dict[str, Any], depth: int, within: frozenset[str]) -> dict[str, Any]:
        self.parts += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequestError(f"response_format: the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if self.parts > MAX_SCHEMA_PARTS:
            raise InvalidRequestError(
                f"response_format: the schema grows past {MAX_SCHEMA_PARTS:,} parts once its references are inlined "
                "(strict mode takes a $ref alone); describe fewer of the fields that refer to other models"
            )
        out = dict(schema)
        ref = out.get("$ref")
        if isinstance(ref, str) and len(out) > 1 and isinstance(self.definitions.get(ref), dict):
            if ref in within:  # a model within itself: a reference alone, its keywords dropped
                return {"$ref": ref}
            del out["$ref"]
            out = {**self.definitions[ref], **out}  # the field's own description or default on top
            within = within | {ref}
        for key in _SUBSCHEMA_MAPS:
            members = out.get(key)
            if isinstance(members, dict):  # (a definition is within itself)
                out[key] = {
                    name: self._sub(member, depth, within if key == "properties" else within | {f"#/{key}/{name}"})
                    for name, member in members.items()
                }
        for key in _SUBSCHEMA_LISTS:
            members = out.get(key)
            if isinstance(members, list):
                out[key] = [self._sub(member, depth, within) for member in members]
        for key in ("items", "additionalProperties", "not"):
            if isinstance(out.get(key), dict):
                out[key] = self._sub(out[key], depth, within)
        properties = out.get("properties")
        if _is_object(out):
            out.setdefault("additionalProperties", False)
            if isinstance(properties, dict):
                out["required"] = list(properties)
        if "default" in out and out["default"] is None:
            del out["default"]
        return out

    def _sub(self, member: Any, depth: int, within: frozenset[str]) -> Any:
        return self.made(member, depth + 1, within) if isinstance(member, dict) else member


def left_open(schema: Any) -> str | None:
    """Where ``schema`` (as ``strict_schema`` made it) still has an object open to keys it does not
    name — a ``dict[str, X]`` field, a model with ``extra="allow"`` — as a path of property names;
    ``None`` when every object is closed. Strict mode cannot take such a schema."""
    steps = _open_at(schema, 0)
    return None if steps is None else ".".join(steps) or "(the top level)"


def _open_at(schema: Any, depth: int) -> list[str] | None:
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return None
    if _is_object(schema) and schema.get("additionalProperties", False) is not False:
        return []
    for step, member in _nested(schema):
        below = _open_at(member, depth + 1)
        if below is not None:
            return [step, *below]
    return None


def _is_object(schema: dict[str, Any]) -> bool:
    """Whether ``schema`` describes an object (by its type, or by naming properties)."""
    kind = schema.get("type")
    named = isinstance(schema.get("properties"), dict)
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or named


def _nested(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    """``schema``'s subschemas, each with the step that names it (a property by its name)."""
    nested = [(name, member) for name, member in _members(schema, "properties")]
    nested += [(f"{key}/{name}", member) for key in ("$defs", "definitions") for name, member in _members(schema, key)]
    for key in _SUBSCHEMA_LISTS:
        members = schema.get(key)
        nested += [(f"{key}[{i}]", member) for i, member in enumerate(members)] if isinstance(members, list) else []
    nested += [
        (key, schema[key]) for key in ("items", "additionalProperties", "not") if isinstance(schema.get(key), dict)
    ]
    return nested
