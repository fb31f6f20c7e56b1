"""``echo``'s tool-call arguments: plausible values for what each field names, always schema-valid."""

from __future__ import annotations

import json

import jsonschema

from gtl_nb.protocol.messages import CompletionRequest, Message, Tool, ToolCallEvent
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
