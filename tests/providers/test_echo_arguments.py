"""``echo``'s tool-call arguments: plausible values for what each field names, always schema-valid."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

import gtl_nb
from gtl_nb.protocol.messages import CompletionRequest, Message, Tool, ToolCall, ToolCallEvent
from gtl_nb.providers.echo import EchoProvider
from gtl_nb.providers.schema_values import example_value

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}


def _arguments(prompt: str, schema: dict) -> dict:
    request = CompletionRequest(
        session_id="s",
        model="echo",
        messages=[Message(role="user", content=prompt)],
        tools=[Tool(name="tool", parameters=schema)],
    )
    (call,) = [e.function for _, e in EchoProvider().generate(request) if isinstance(e, ToolCallEvent)]
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


def test_a_city_field_takes_the_city_the_prompt_names() -> None:
    assert _arguments("What's the weather in Oslo?", WEATHER) == {"city": "Oslo", "unit": "celsius"}
    assert _arguments("Is it raining in New York today?", WEATHER)["city"] == "New York"


def test_without_a_capitalised_name_a_city_field_gets_a_fixed_example_city() -> None:
    assert _arguments("what's the weather like?", WEATHER)["city"] == "Paris"
    assert _arguments("Weather please", WEATHER)["city"] == "Paris"  # a sentence's first word is not a name


def test_a_search_field_takes_the_request_and_other_strings_an_example_of_their_name() -> None:
    schema = {
        "type": "object",
        "properties": {"query": {"type": "string"}, "title": {"type": "string"}},
        "required": ["query", "title"],
    }
    arguments = _arguments("Find papers about   tokenizers", schema)
    assert arguments == {"query": "Find papers about tokenizers", "title": "example title"}


def test_length_limits_still_hold() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 3}}, "required": ["city"]}
    assert _arguments("Weather in Oslo", schema) == {"city": "Osl"}
    short = {"type": "string", "minLength": 12}
    assert len(example_value(short, "hi", name="code")) >= 12


# -- structured output: the same generator answers a response_format ---------------------------------


def _answer(response_format: dict, prompt: str = "Weather in Oslo?", **fields: object) -> str:
    request = CompletionRequest(
        session_id="s",
        model="echo",
        messages=[Message(role="user", content=prompt)],
        response_format=response_format,
        **fields,  # type: ignore[arg-type]
    )
    return "".join(getattr(event, "text", "") for _, event in EchoProvider().generate(request))


def test_a_json_schema_is_answered_with_json_valid_for_it():
    text = _answer({"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}})
    value = json.loads(text)
    jsonschema.validate(value, WEATHER)
    assert value["city"] == "Oslo"


def test_json_object_is_the_usual_answer_as_an_object_and_max_tokens_still_cuts():
    assert json.loads(_answer({"type": "json_object"}))["answer"].startswith('You said: "Weather in Oslo?"')
    assert len(_answer({"type": "json_object"}, max_tokens=3)) < 20  # cut like any answer (finish: length)


def test_a_format_echo_cannot_read_is_refused_through_the_engine():
    import gtl_nb
    from gtl_nb.protocol import InvalidRequestError

    client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
    try:
        for response_format, complaint in (
            ({"type": "xml"}, "unknown type 'xml'"),
            ({"type": "json_schema"}, "needs json_schema.schema"),
        ):
            with pytest.raises(InvalidRequestError, match=complaint) as refused:
                client.complete("echo", "hi", response_format=response_format)
            assert refused.value.provider == "echo"  # the deployment's refusal, not an internal error
    finally:
        client.close()


def test_a_pydantic_model_is_a_response_format_and_a_bare_schema_is_told_how_to_wrap():
    import pydantic

    import gtl_nb
    from gtl_nb.protocol import InvalidRequestError

    class City(pydantic.BaseModel):
        name: str
        population: int

    client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
    try:
        sent = client.request("echo", "Name a city", response_format=City).response_format
        schema = {**City.model_json_schema(), "additionalProperties": False}  # strict, as the SDK's parse sends it
        assert sent == {"type": "json_schema", "json_schema": {"name": "City", "schema": schema, "strict": True}}
        answer = client.complete("echo", "Name a city", response_format=City)
        assert isinstance(City.model_validate_json(answer.text), City)
        with pytest.raises(InvalidRequestError, match="looks like the schema alone: wrap it so"):
            client.complete("echo", "x", response_format={"type": "object", "properties": {}})
        with pytest.raises(InvalidRequestError, match="a pydantic model class"):
            client.complete("echo", "x", response_format="json")
        with pytest.raises(InvalidRequestError, match="looks like the schema alone"):
            client.complete("echo", "x", response_format={"type": "array", "items": {"type": "string"}})
        with pytest.raises(InvalidRequestError, match=r"takes the model class \(City\), not an instance"):
            client.complete("echo", "x", response_format=City(name="Oslo", population=1))
        with pytest.raises(InvalidRequestError, match="no JSON Schema for it"):
            client.complete("echo", "x", response_format=pydantic.BaseModel)

        @dataclasses.dataclass
        class Harbour:
            depth_m: int

        answer = client.complete("echo", "How deep?", response_format=Harbour)  # as the OpenAI SDK's parse takes
        assert isinstance(Harbour(**json.loads(answer.text)).depth_m, int)
    finally:
        client.close()


def test_echo_answers_recursive_schemas_with_trees_that_end_and_any_schema_in_bounded_size():
    """A tree ends at a leaf; a schema asking for a billion items (from a request — on a gateway, from
    anyone) gets a bounded answer at once, never a billion-element list."""
    from gtl_nb.providers.schema_values import MAX_ITEMS, example_value

    num = {"type": "object", "properties": {"value": {"type": "number"}}, "required": ["value"]}
    binop = {
        "type": "object",
        "properties": {"left": {"anyOf": [{"$ref": "#/$defs/B"}, {"$ref": "#/$defs/N"}]}},
        "required": ["left"],
    }
    schema = {"$defs": {"B": binop, "N": num}, **binop}
    tree = example_value(schema)
    while "left" in tree:  # the branch a few levels down, then the leaf
        tree = tree["left"]
    assert set(tree) == {"value"}
    greedy = {"type": "array", "minItems": 10**9, "items": {"type": "array", "minItems": 10**9}}
    assert len(example_value(greedy)) == MAX_ITEMS
    # a string's minLength too (a billion characters was built; ten billion ran out of memory)
    from gtl_nb.providers.schema_values import MAX_TEXT

    assert len(example_value({"type": "string", "minLength": 10**10})) == MAX_TEXT
    assert example_value({"type": "string", "minLength": "lots", "maxLength": -1}, name="x") == "example x"


def test_tuples_and_formats_are_answered_with_valid_values_by_echo_and_the_simulators() -> None:
    import jsonschema

    from gtl_nb.providers.schema_values import example_value
    from gtl_nb.sim.answers import sample_for_schema

    schemas = (
        {"type": "array", "prefixItems": [{"type": "string", "format": "uuid"}, {"type": "integer"}], "items": False},
        {"type": "array", "prefixItems": [{"type": "number"}], "minItems": 3, "items": {"type": "string"}},
        {
            "type": "object",
            "properties": {name: {"type": "string", "format": name} for name in ("uuid", "email", "date-time", "uri")},
            "required": ["uuid", "email", "date-time", "uri"],
        },
    )
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    for schema in schemas:
        for generate in (example_value, sample_for_schema):
            jsonschema.Draft202012Validator(schema, format_checker=checker).validate(generate(schema))


def test_echo_quotes_a_bounded_part_of_a_huge_prompt_or_tool_result() -> None:
    """Its answer stays the size of a model's whatever the prompt: an 8 MB prompt answered whole was an
    80 MB body on a gateway, held in memory for a client that might never read it."""
    from gtl_nb.providers.echo import MAX_QUOTED

    huge = "word " * 400_000
    said = _answer({"type": "text"}, prompt=huge)
    assert said.startswith('You said: "word word') and len(said) < MAX_QUOTED + 400 and '…"' in said
    request = CompletionRequest(
        session_id="s",
        model="echo",
        messages=[
            Message(role="user", content="go"),
            Message(role="assistant", tool_calls=[ToolCall(id=f"c{i}", name="f", arguments="{}") for i in range(50)]),
            *(Message(role="tool", tool_call_id=f"c{i}", content=huge[: MAX_QUOTED * 2]) for i in range(50)),
        ],
    )
    text = "".join(getattr(event, "text", "") for _, event in EchoProvider().generate(request))
    assert text.startswith("The tool returned c0: word") and len(text) < MAX_QUOTED + 400


@pytest.mark.parametrize(
    ("stop", "max_tokens", "text", "finish", "matched"),
    [
        (["said"], None, "You ", "stop", "said"),
        (["Echo", "said"], None, "You ", "stop", "said"),  # the earliest in the text, not the first listed
        (["said", "You"], None, "", "stop", "You"),
        (["zzz"], None, None, "stop", None),  # none occurs: the whole answer, no sequence named
        (["Echo"], 2, "You said", "length", None),  # max_tokens came first
    ],
)
def test_echo_names_the_stop_sequence_that_ended_its_answer(stop, max_tokens, text, finish, matched):
    client = gtl_nb.connect(ledger=False)
    try:
        answer = client.complete("echo", "hi", stop=stop, max_tokens=max_tokens)
    finally:
        client.close()
    assert (answer.finish_reason, answer.stop_sequence) == (finish, matched)
    if text is not None:
        assert answer.text == text
