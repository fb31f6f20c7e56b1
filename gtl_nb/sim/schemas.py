"""What the providers' structured outputs refuse in a JSON Schema, as the simulators check it.

OpenAI's strict mode (``json_schema.strict: true``) and Anthropic's structured outputs
(``output_config.format``) take only closed objects: each object schema says
``"additionalProperties": false``; OpenAI's strict mode also wants every property listed in
``required``. ``schema_problem`` names the first place a schema breaks that rule, or ``None``.
"""

from __future__ import annotations

import json
from typing import Any

_NESTED_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_NESTED_MAPS = ("properties", "$defs", "definitions")
_MAX_DEPTH = 64  # a request's schema deeper than this is refused as a whole (the simulator's bound)


def schema_problem(schema: Any, *, every_property_required: bool) -> str | None:
    """The first rule ``schema`` breaks (closed objects; with ``every_property_required`` — OpenAI's
    strict mode — also a full ``required``, a ``$ref`` with nothing beside it, and an object at the
    top), as ``"In context=(path), ..."``; ``None`` when it keeps them."""
    if every_property_required and isinstance(schema, dict) and schema.get("type") != "object":
        got = json.dumps(schema.get("type"))
        return f"In context=(), schema must be a JSON Schema of 'type: \"object\"', got 'type: {got}'."
    return _problem(schema, (), every_property_required, 0)


def _problem(schema: Any, path: tuple[str, ...], every_property_required: bool, level: int) -> str | None:
    if level > _MAX_DEPTH:
        return f"the schema nests deeper than {_MAX_DEPTH} levels"
    if not isinstance(schema, dict):
        return None
    where = f"In context=({', '.join(repr(step) for step in path)})"
    if every_property_required and "$ref" in schema and len(schema) > 1:
        others = ", ".join(repr(key) for key in schema if key != "$ref")
        return f"{where}, $ref cannot have keywords {{{others}}}."
    kind = schema.get("type")
    properties = schema.get("properties")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or isinstance(properties, dict):
        if schema.get("additionalProperties") is not False:
            return f"{where}, 'additionalProperties' is required to be supplied and to be false."
        if every_property_required and isinstance(properties, dict):
            required = schema.get("required")
            listed = {name for name in required if isinstance(name, str)} if isinstance(required, list) else set()
            missing = [name for name in properties if name not in listed]
            if missing:
                return (
                    f"{where}, 'required' is required to be supplied and to be an array including every key in "
                    f"properties. Missing '{missing[0]}'."
                )
    nested: list[tuple[tuple[str, ...], Any]] = []
    for key in _NESTED_MAPS:
        members = schema.get(key)
        if isinstance(members, dict):
            nested.extend(((key, str(name)), member) for name, member in members.items())
    for key in _NESTED_LISTS:
        members = schema.get(key)
        if isinstance(members, list):
            nested.extend(((key, str(index)), member) for index, member in enumerate(members))
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            nested.append(((key,), schema[key]))
    for steps, member in nested:
        problem = _problem(member, (*path, *steps), every_property_required, level + 1)
        if problem is not None:
            return problem
    return None
