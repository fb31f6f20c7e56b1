"""A class given as ``response_format`` is sent strict, as the OpenAI SDK's ``parse`` sends it.

OpenAI's strict mode and Anthropic's structured outputs refuse an object schema that is not closed
(``additionalProperties: false``; OpenAI also wants every property required). pydantic's schema of
a class says neither: ``gtl_nb.strict_schema`` closes it, and the simulators refuse what the APIs
refuse, so a class works against both while a hand-written open schema gets the provider's 400.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from typing import Annotated, Any, Optional, TypedDict

import pydantic
import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import InvalidRequestError
from gtl_nb.sim.schemas import schema_problem
from gtl_nb.strict_schema import MAX_SCHEMA_DEPTH, left_open, strict_schema


class Harbour(pydantic.BaseModel):
    name: str
    depth_m: int = pydantic.Field(ge=0, description="at low tide")


class City(pydantic.BaseModel):
    name: str
    mayor: Optional[str] = None  # noqa: UP045 (the spelling many users' models have)
    harbours: list[Harbour] = []
    nickname: str | None = None


def test_every_object_is_closed_and_every_property_required_and_nothing_else_changes() -> None:
    original = City.model_json_schema()
    strict = strict_schema(original)
    assert strict["additionalProperties"] is False and strict["required"] == ["name", "mayor", "harbours", "nickname"]
    assert strict["$defs"]["Harbour"]["additionalProperties"] is False
    assert strict["$defs"]["Harbour"]["required"] == ["name", "depth_m"]
    assert strict["$defs"]["Harbour"]["properties"]["depth_m"] == original["$defs"]["Harbour"]["properties"]["depth_m"]
    assert "default" not in strict["properties"]["mayor"]  # null defaults go: every property is required
    assert strict["properties"]["harbours"]["default"] == []  # others stay
    assert strict["properties"]["mayor"]["anyOf"] == original["properties"]["mayor"]["anyOf"]
    assert original == City.model_json_schema() and "additionalProperties" not in original  # a copy, not changed
    assert schema_problem(strict, every_property_required=True) is None
    closed_only = original | {"additionalProperties": False}
    assert "Missing 'mayor'" in str(schema_problem(closed_only, every_property_required=True))


def test_nested_shapes_are_closed_where_they_hide_and_an_object_left_open_stays_open() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "pair": {"type": "array", "prefixItems": [{"type": "object", "properties": {"a": {"type": "string"}}}]},
            "either": {"anyOf": [{"type": ["object", "null"], "properties": {"b": {"type": "integer"}}}]},
            "free": {"type": "object", "additionalProperties": True},
            "mapping": {"type": "object", "additionalProperties": {"type": "object", "properties": {}}},
        },
    }
    strict = strict_schema(schema)
    properties = strict["properties"]
    assert properties["pair"]["prefixItems"][0]["additionalProperties"] is False
    assert properties["either"]["anyOf"][0] == {
        "type": ["object", "null"],
        "properties": {"b": {"type": "integer"}},
        "additionalProperties": False,
        "required": ["b"],
    }
    assert properties["free"]["additionalProperties"] is True  # the class said so: the provider answers for it
    assert properties["mapping"]["additionalProperties"]["additionalProperties"] is False
    assert "context=('properties', 'free')" in str(schema_problem(strict, every_property_required=True))


def test_a_schema_nested_past_the_bound_is_refused_clearly() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH + 2):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequestError, match="nests deeper than"):
        strict_schema(deep)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Quay(pydantic.BaseModel):
    harbour: Harbour = pydantic.Field(description="where it is")  # a $ref with a keyword beside it
    paint: Colour = Colour.RED  # a $ref with a default beside it


class Node(pydantic.BaseModel):  # recursive: pydantic's schema is only a $ref to its definitions
    value: int
    children: list[Node] = []


class Num(pydantic.BaseModel):
    value: float


class BinOp(pydantic.BaseModel):  # a union of a branch and a leaf: the sample must pick the leaf to end
    op: str
    left: BinOp | Num
    right: BinOp | Num


class Expr(pydantic.BaseModel):
    args: list[Expr | int] = pydantic.Field(min_length=2)  # at least two, at every level


class Tagged(pydantic.BaseModel):
    name: str
    tags: dict[str, int]  # open to any key: strict mode cannot say it


def test_a_ref_with_keywords_beside_it_is_inlined_and_a_recursive_models_top_is_the_object() -> None:
    quay = strict_schema(Quay.model_json_schema())
    harbour = quay["properties"]["harbour"]
    assert "$ref" not in harbour and harbour["description"] == "where it is"
    assert harbour["additionalProperties"] is False and harbour["required"] == ["name", "depth_m"]
    paint = {"enum": ["red", "blue"], "title": "Colour", "type": "string", "default": "red"}
    assert quay["properties"]["paint"] == paint
    node = strict_schema(Node.model_json_schema())
    assert node["type"] == "object" and node["required"] == ["value", "children"] and "$ref" not in node
    assert node["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}  # a reference alone stays one
    for schema in (quay, node):
        assert schema_problem(schema, every_property_required=True) is None
    closed_only = {
        **quay,
        "properties": {**quay["properties"], "harbour": Quay.model_json_schema()["properties"]["harbour"]},
    }
    assert "$ref cannot have keywords {'description'}" in str(schema_problem(closed_only, every_property_required=True))


def test_a_class_with_an_open_mapping_is_sent_without_strict_and_says_where() -> None:
    sent = (
        gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
        .request("echo", "x", response_format=Tagged)
        .response_format
    )
    assert "strict" not in sent["json_schema"] and left_open(sent["json_schema"]["schema"]) == "tags"
    assert left_open(strict_schema(City.model_json_schema())) is None


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "echo"])
def test_a_recursive_model_is_answered_with_a_tree_that_validates(provider: str) -> None:
    model = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash", "echo": "echo"}[
        provider
    ]
    if provider == "echo":
        client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
        answer = client.complete("echo", "a tree", response_format=Node)
        client.close()
        Node.model_validate_json(answer.text)
        return
    with sim.serve(provider, api_key="sim-key") as simulator:
        deployment = {"type": provider, "api_key": "sim-key", "base_url": simulator.base_url}
        client = gtl_nb.connect(providers={"p": deployment}, config={"ledger": {"enabled": False}}, environ={})
        try:
            for shape in (Node, Quay, BinOp, Expr):
                answer = client.complete(f"p:{model}", "a tree", response_format=shape).text
                assert len(answer) < 20_000, shape  # a tree that ends, small
                shape.model_validate_json(answer)
        finally:
            client.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_class_is_answered_by_both_apis_and_an_open_schema_gets_their_refusal(provider: str) -> None:
    model = "gpt-4o-mini" if provider == "openai" else "claude-sonnet-4-5"
    with sim.serve(provider, api_key="sim-key") as simulator:
        deployment = {"type": provider, "api_key": "sim-key", "base_url": simulator.base_url}
        client = gtl_nb.connect(providers={"p": deployment}, config={"ledger": {"enabled": False}}, environ={})
        try:
            answer = client.complete(f"p:{model}", "Describe a harbour town", response_format=City)
            city = City.model_validate_json(answer.text)
            assert isinstance(city.harbours, list)
            sent = simulator.requests[-1].json
            if provider == "openai":
                assert sent["response_format"]["json_schema"]["strict"] is True
            else:
                assert sent["output_config"]["format"]["schema"]["additionalProperties"] is False
            open_schema = {"type": "object", "properties": {"name": {"type": "string"}}}
            wrapped = {"type": "json_schema", "json_schema": {"name": "town", "schema": open_schema, "strict": True}}
            with pytest.raises(InvalidRequestError, match="additionalProperties") as refused:
                client.complete(f"p:{model}", "Name a town", response_format=wrapped)
            assert refused.value.provider == "p"
        finally:
            client.close()


def test_openais_refusals_of_a_format_it_cannot_read_reach_the_caller_and_a_compatible_server_takes_it():
    """OpenAI refuses a ``response_format`` type it does not know and a ``json_schema`` without its schema
    (a 400 naming the parameter); an OpenAI-compatible server may take other types, and is not held to it."""
    with sim.serve("openai", api_key="sim-key") as openai_sim, sim.serve("openai_compatible") as local:
        providers = {
            "p": {"type": "openai", "api_key": "sim-key", "base_url": openai_sim.base_url},
            "local": {"type": "openai_compatible", "base_url": local.base_url},
        }
        client = gtl_nb.connect(providers=providers, config={"ledger": {"enabled": False}}, environ={})
        try:
            for odd, said in (
                ({"type": "bogus"}, "Supported values are: 'text', 'json_object', and 'json_schema'"),
                ({"type": "json_schema"}, "Missing required parameter: 'response_format.json_schema'"),
            ):
                with pytest.raises(InvalidRequestError, match=said):
                    client.complete("p:gpt-4o-mini", "hi", response_format=odd)
            assert client.complete("local:any-model", "hi", response_format={"type": "bogus"}).text
        finally:
            client.close()


def test_a_schema_no_small_sample_satisfies_is_answered_in_bounded_time_and_size() -> None:
    from gtl_nb.sim.answers import sample_for_schema

    schema: dict[str, Any] = {"type": "string"}
    for _ in range(20):  # sixteen items a level, twenty levels: 16**20 strings if built
        schema = {"type": "array", "items": schema, "minItems": 16}
    root = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    assert len(json.dumps(sample_for_schema(root))) < 100_000


class Described(pydantic.BaseModel):  # a model within itself, the reference described
    name: str
    children: list[Annotated[Described, pydantic.Field(description="a child")]] = []


def test_a_described_reference_to_the_model_itself_stays_a_reference() -> None:
    strict = strict_schema(Described.model_json_schema())
    assert strict["properties"]["children"]["items"] == {"$ref": "#/$defs/Described"}
    assert strict["$defs"]["Described"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Described"}
    assert schema_problem(strict, every_property_required=True) is None


def test_a_schema_that_inlining_would_grow_without_bound_is_refused_clearly() -> None:
    definitions: dict[str, Any] = {"L0": {"type": "object", "properties": {"v": {"type": "integer"}}}}
    for level in range(1, 12):  # each level refers three times, described, to the one below: 3**11 copies
        below = {"$ref": f"#/$defs/L{level - 1}", "description": "d"}
        definitions[f"L{level}"] = {"type": "object", "properties": {"a": below, "b": below, "c": below}}
    with pytest.raises(InvalidRequestError, match="grows past 20,000 parts"):
        strict_schema({"$defs": definitions, "$ref": "#/$defs/L11"})


@dataclasses.dataclass
class Point:
    x: float
    label: str = "origin"


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    parts: list[Shape]


class Tally(TypedDict):
    counts: list[int]


def test_a_dataclass_or_typeddict_has_its_schema_without_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make demo`` installs no pydantic: a notebook's dataclass given to ``--schema`` was refused ("reading
    a class's schema needs pydantic"). msgspec (a dependency) reads it, its root written out."""
    monkeypatch.setitem(sys.modules, "pydantic", None)  # (as if it were not installed: importing it fails)
    client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
    try:
        shape = client.request("echo", "x", response_format=Shape).response_format["json_schema"]
        tally = client.request("echo", "x", response_format=Tally).response_format["json_schema"]
        answer = client.complete("echo", "a tally", response_format=Tally)
    finally:
        client.close()
    assert shape["name"] == "Shape" and shape["schema"]["type"] == "object" and "$ref" not in shape["schema"]
    assert shape["schema"]["properties"]["points"]["items"] == {"$ref": "#/$defs/Point"}
    assert set(shape["schema"]["$defs"]) == {"Point", "Shape"}  # a class that contains itself keeps its definition
    assert tally["schema"]["properties"]["counts"] == {"type": "array", "items": {"type": "integer"}}
    assert isinstance(json.loads(answer.text)["counts"], list)
