"""``{name}`` substitution in prompts: variables in, every other brace as typed."""

from __future__ import annotations

import pytest

from gtl_nb.notebook.template import TemplateError, render


class Row:
    title = "Harbour of Bergen"


NS = {"x": 3, "name": "Ada", "items": [10, 20, 30], "data": {"key": "value", "nested": [1, 2]}, "row": Row()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello {name}", "Hello Ada"),
        ("{x}{x}", "33"),
        ("{row.title}", "Harbour of Bergen"),
        ("{items[0]} {items[-1]}", "10 30"),
        ("{data[key]} {data['key']} {data[\"key\"]}", "value value value"),
        ("{data[nested][1]}", "2"),
        ("{x}\n{name}", "3\nAda"),
    ],
)
def test_names_attributes_and_indexes_are_substituted(text, expected):
    assert render(text, NS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{x}}", "{x}"),
        ("{{", "{"),
        ("}}", "}"),
        ("a }} b {{", "a } b {"),
        ("{{{x}}}", "{3}"),
        ('{{"a": {{"b": 1}}}}', '{"a": {"b": 1}}'),
    ],
)
def test_doubled_braces_write_literal_braces(text, expected):
    assert render(text, NS) == expected


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '{"a": {"b": 1}}',
        '[{"a": {"b": {"c": []}}}]',
        "if (ok) { return {a: 1}; }",
        "def f(): return {}",
        "{ x }",
        "{x:.2f}",
        "{1}",
        "{}",
        "}{",
    ],
)
def test_other_braces_stay_as_typed(text):
    assert render(text, NS) == text


def test_a_variable_inside_json_is_substituted_and_the_json_braces_kept():
    assert render('{"a": {x}}', NS) == '{"a": 3}'
    assert render('{"k": "{{x}}"}', NS) == '{"k": "{x}"}'


def test_values_are_inserted_with_str():
    assert render("{items}", NS) == "[10, 20, 30]"


def test_an_unknown_name_is_an_error_naming_it_and_the_escape():
    with pytest.raises(TemplateError) as caught:
        render("Tell me about {topic} please", NS)
    message = str(caught.value)
    assert "'topic'" in message
    assert "{{" in message and "}}" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["{row.missing}", "{items[9]}", "{data[nope]}", "{x.real.nope}"])
def test_a_failing_attribute_or_index_is_an_error_naming_the_expression(text):
    with pytest.raises(TemplateError) as caught:
        render(text, NS)
    assert text in str(caught.value)
    assert "{{" in str(caught.value)
