"""``schema_shape_problem``: a malformed schema from a request is the caller's mistake, named where it is,
and the value generators (echo's and the simulators') build a value for every schema it passes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gtl_nb
from gtl_nb.protocol import InvalidRequestError
from gtl_nb.providers.schema_shape import MAX_DEPTH, MAX_PARTS, schema_shape_problem
from gtl_nb.providers.schema_values import example_value
from gtl_nb.sim.answers import sample_for_schema


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": None}, "schema.properties: must be an object of schemas, not null"),
        ({"properties": {"a": 3}}, "schema.properties.a: a schema must be an object (or true/false), not a number"),
        ({"required": "city"}, "schema.required: must be a list of property names, not a string"),
        ({"items": {"minItems": -1}}, "schema.items.minItems: must be a whole number ≥ 0, not a number"),
        ({"anyOf": []}, "schema.anyOf: must be a non-empty list of schemas, not an empty array"),
        ({"prefixItems": [{"type": 7}]}, "schema.prefixItems[0].type: must be a type name or a non-empty list"),
        ({"$ref": None}, "schema.$ref: must be a string, not null"),
        ({"enum": True}, "schema.enum: must be a non-empty list, not a boolean"),
        ({"maximum": "9"}, "schema.maximum: must be a number, not a string"),
        ({"examples": {"a": 1}}, "schema.examples: must be a list, not an object"),
        ({"$defs": {"a": {"allOf": [{"format": 1}]}}}, "schema.$defs.a.allOf[0].format: must be a string"),
    ],
)
def test_a_malformed_schema_is_named_where_it_is(schema, problem):
    assert (schema_shape_problem(schema) or "").startswith(problem)


def test_well_formed_schemas_pass_whatever_they_ask():
    for schema in (
        True,
        {},
        {"type": ["string", "null"], "minLength": 10**12, "format": "uuid"},
        {"type": "array", "items": [{"type": "string"}], "additionalItems": False},  # the older tuple form
        {"exclusiveMinimum": True, "minimum": 0},  # draft 4's boolean form
        {"$defs": {"n": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "null"}]}}, "$ref": "#/$defs/n"},
    ):
        assert schema_shape_problem(schema) is None, schema


def test_depth_and_size_are_bounded():
    deep: dict = {}
    for _ in range(MAX_DEPTH + 5):
        deep = {"items": deep}
    assert "nested deeper than" in (schema_shape_problem(deep) or "")
    wide = {"properties": {f"p{i}": {"properties": {f"q{j}": {} for j in range(200)}} for i in range(MAX_PARTS // 150)}}
    assert "schemas in all" in (schema_shape_problem(wide) or "")


def test_echo_refuses_a_malformed_response_format_or_tool_as_the_callers_mistake():
    client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
    try:
        with pytest.raises(InvalidRequestError, match=r"response_format's schema\.required: must be a list"):
            client.complete(
                "echo",
                "hi",
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"required": 1}}},
            )
        bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": []}}}
        with pytest.raises(InvalidRequestError, match=r"tool 'f': parameters\.properties: must be an object"):
            client.complete("echo", "hi", tools=[bad_tool])
    finally:
        client.close()


# -- every schema the check passes gets a value, from both generators ---------------------------------

_TYPES = st.sampled_from(["string", "object", "array", "integer", "number", "boolean", "null"])
_REFS = st.sampled_from(
    ["#/$defs/a", "#/$defs/b", "#/x", "#", "#/definitions/a", "other.json#/a", "#/properties/p", ""]
)
_NUMBERS = st.one_of(st.integers(-(10**6), 10**9), st.floats(allow_nan=False), st.none())  # null: read as absent
_COUNTS = st.integers(0, 10**9)


def _node(children: st.SearchStrategy) -> st.SearchStrategy:
    some = st.lists(children, min_size=1, max_size=3)
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(_TYPES, st.lists(_TYPES, min_size=1, max_size=3)),
            "properties": st.dictionaries(st.sampled_from(["p", "q", "city", "id"]), children, max_size=3),
            "required": st.lists(st.sampled_from(["p", "q", "city", "id", "zz"]), max_size=3),
            "items": st.one_of(children, st.booleans()),
            "prefixItems": some,
            "anyOf": some,
            "oneOf": some,
            "allOf": some,
            "$ref": _REFS,
            "$defs": st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2),
            "enum": st.lists(st.integers(), min_size=1, max_size=2),
            "minItems": _COUNTS,
            "maxItems": _COUNTS,
            "minLength": _COUNTS,
            "maxLength": _COUNTS,
            "minimum": _NUMBERS,
            "exclusiveMaximum": st.one_of(_NUMBERS, st.booleans()),
            "exclusiveMinimum": st.one_of(_NUMBERS, st.booleans()),
            "maximum": _NUMBERS,
            "format": st.sampled_from(["uuid", "date", "email", "unknown"]),
            "examples": st.lists(st.integers(), max_size=2),
        },
    )


_SCHEMAS = st.recursive(st.one_of(st.booleans(), st.just({})), _node, max_leaves=25)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_SCHEMAS)
def test_every_schema_the_check_passes_gets_a_value_from_echo_and_the_simulators(schema):
    if schema_shape_problem(schema) is None:
        example_value(schema, "weather in Oslo")
        sample_for_schema(schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "exclusiveMinimum": None},
        {"type": "number", "minimum": None, "maximum": None},
        {"type": "integer", "minimum": float("inf")},  # (no JSON carries it; a Python caller may)
    ],
)
def test_a_bound_that_is_no_number_is_read_as_absent_by_both_generators(schema):
    """``null`` passes the shape check (as absent); the generators read it so too — echo raised
    ``None + 1`` as an INTERNAL error."""
    assert isinstance(example_value(schema), (int, float))
    assert isinstance(sample_for_schema(schema), (int, float))
