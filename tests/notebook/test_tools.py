"""``gtl_nb.tools``: schemas from signatures and docstrings, and running a model's tool calls."""

from __future__ import annotations

import enum
import json
from typing import Literal, Optional

import jsonschema
import pytest

from gtl_nb.protocol import Tool, ToolCall
from gtl_nb.tools import run_tool_calls, schema_for_annotation, tool_from_function


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def get_weather(city: str, days: int = 1, unit: Unit = Unit.CELSIUS, *extra, **options) -> str:
    """Weather forecast for a city,
    day by day.

    Args:
        city: the city name, e.g. "Oslo"
        days (int): how many days
            ahead to forecast
        unit: temperature unit

    Returns:
        the forecast text
    """
    return f"{city}: sunny for {days} day(s) in {unit}"


def numpy_style(x, y: float, flag: bool = False):
    """Add two numbers.

    Parameters
    ----------
    x : int
        the first number
    y : float
        the second
        number

    Returns
    -------
    float
    """
    return x + y


def sphinx_style(names: list[str], scores: dict[str, float], mode: Literal["fast", "slow"] = "fast"):
    """Rank names.

    :param names: who to rank
    :param scores: score per name
    :returns: the ranking
    """
    return sorted(names, key=lambda n: -scores.get(n, 0))


def test_the_tool_is_named_after_the_function_and_described_by_the_docstring_summary():
    tool = tool_from_function(get_weather)
    assert isinstance(tool, Tool)
    assert tool.name == "get_weather"
    assert tool.description == "Weather forecast for a city, day by day."


def test_parameters_without_defaults_are_required_and_annotations_give_types():
    params = tool_from_function(get_weather).parameters
    assert params["type"] == "object"
    assert params["required"] == ["city"]
    props = params["properties"]
    assert set(props) == {"city", "days", "unit"}  # *extra and **options are not offered
    assert props["city"]["type"] == "string"
    assert props["days"] == {
        "type": "integer",
        "description": "how many days ahead to forecast",
        "default": 1,
    }
    assert props["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert props["unit"]["default"] == "celsius"


def test_google_numpy_and_sphinx_docstrings_describe_parameters():
    assert (
        tool_from_function(get_weather).parameters["properties"]["city"]["description"] == 'the city name, e.g. "Oslo"'
    )
    numpy = tool_from_function(numpy_style).parameters["properties"]
    assert numpy["x"] == {"description": "the first number"}  # unannotated: any value
    assert numpy["y"] == {"type": "number", "description": "the second number"}
    assert tool_from_function(numpy_style).description == "Add two numbers."
    sphinx = tool_from_function(sphinx_style).parameters["properties"]
    assert sphinx["names"] == {"type": "array", "items": {"type": "string"}, "description": "who to rank"}
    assert sphinx["scores"]["additionalProperties"] == {"type": "number"}
    assert sphinx["mode"]["enum"] == ["fast", "slow"]


def test_the_schema_is_valid_json_schema_and_accepts_a_real_call():
    for func in (get_weather, numpy_style, sphinx_style):
        schema = tool_from_function(func).parameters
        jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate({"city": "Oslo", "days": 2, "unit": "fahrenheit"}, tool_from_function(get_weather).parameters)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"days": 2}, tool_from_function(get_weather).parameters)


@pytest.mark.parametrize(
    ("annotation", "schema"),
    [
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (Optional[int], {"type": "integer"}),  # noqa: UP045 - the old spelling must work too
        (int | None, {"type": "integer"}),
        (list, {"type": "array"}),
        (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
        (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        (object, {}),
    ],
)
def test_annotations_map_to_json_schema(annotation, schema):
    assert schema_for_annotation(annotation) == schema


def test_string_annotations_from_future_imports_are_resolved():
    namespace: dict = {}
    exec(
        "from __future__ import annotations\ndef f(a: int, b: list[str] | None = None):\n    '''Doc.'''\n",
        namespace,
    )
    props = tool_from_function(namespace["f"]).parameters["properties"]
    assert props["a"] == {"type": "integer"}
    assert props["b"] == {"type": "array", "items": {"type": "string"}}  # a None default is just optional


def test_a_callable_object_and_an_explicit_name_work():
    class Lookup:
        def __call__(self, key: str) -> str:
            """Look a key up."""
            return key.upper()

    tool = tool_from_function(Lookup(), name="lookup")
    assert tool.name == "lookup"
    assert tool.parameters["required"] == ["key"]


def test_names_the_providers_refuse_are_an_error():
    with pytest.raises(ValueError, match="tool name"):
        tool_from_function(get_weather, name="get weather!")
    with pytest.raises(TypeError):
        tool_from_function("not callable")  # type: ignore[arg-type]


def call(name: str, arguments: object, call_id: str = "c1") -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(id=call_id, name=name, arguments=text)


def test_run_tool_calls_runs_each_call_and_builds_the_tool_messages():
    results = run_tool_calls(
        [
            call("get_weather", {"city": "Oslo"}, "a"),
            call("sphinx_style", {"names": ["x", "y"], "scores": {"y": 2}}, "b"),
        ],
        {"get_weather": get_weather, "sphinx_style": sphinx_style},
    )
    assert [r.ok for r in results] == [True, True]
    assert results[0].value.startswith("Oslo: sunny for 1 day(s)")
    assert results[0].message.role == "tool"
    assert results[0].message.tool_call_id == "a"
    assert results[0].message.content == results[0].value
    assert results[1].content == '["y", "x"]'  # non-text values are sent as JSON


@pytest.mark.parametrize(
    ("the_call", "fragment"),
    [
        (call("nope", {}), "unknown tool 'nope'"),
        (call("get_weather", "[1, 2]"), "not a JSON object"),
        (call("get_weather", "{not json"), "not a JSON object"),
        (call("get_weather", {"town": "Oslo"}), "do not fit get_weather()"),
        (call("boom", {}), "ZeroDivisionError"),
    ],
)
def test_a_failing_call_becomes_an_error_result_the_model_can_read(the_call, fragment):
    [result] = run_tool_calls([the_call], {"get_weather": get_weather, "boom": lambda: 1 / 0})
    assert not result.ok
    assert fragment in result.error
    assert result.message.content.startswith("error: ")


def bare_lines(city: str, unit: str = "celsius", days: int = 1) -> dict:
    """Current weather for a city.

    city: the city name
    unit: celsius or fahrenheit,
        as the user asked
    """
    return {}


def prose_with_a_colon(city: str) -> dict:
    """Current weather for a city.

    Note: the service is slow on Mondays
    city: the city name
    """
    return {}


def test_bare_name_lines_describe_the_parameters_they_name_and_prose_is_left_alone():
    props = tool_from_function(bare_lines).parameters["properties"]
    assert props["city"]["description"] == "the city name"
    assert props["unit"]["description"] == "celsius or fahrenheit, as the user asked"
    assert "description" not in props["days"]
    assert tool_from_function(bare_lines).description == "Current weather for a city."
    # a paragraph with a line that names no parameter is prose: nothing read from it, nothing guessed
    assert "description" not in tool_from_function(prose_with_a_colon).parameters["properties"]["city"]


def test_the_quickstarts_tool_reaches_the_schema_with_its_parameter_descriptions():
    """Notebook 01 defines its tool in the bare form; run that cell as written and read the tool."""
    from pathlib import Path

    import nbformat

    notebook = nbformat.read(Path(__file__).resolve().parents[2] / "notebooks" / "01-quickstart.ipynb", as_version=4)
    source = next(cell.source for cell in notebook.cells if "def get_weather" in cell.source)
    namespace: dict = {}
    exec(compile(source, "01-quickstart", "exec"), namespace)  # the notebook's own cell
    props = tool_from_function(namespace["get_weather"]).parameters["properties"]
    assert props["city"].get("description") and props["unit"].get("description"), props
