"""Properties of the GAP parsers and wrapper on random, damaged and hostile text.

Only the documented outcomes: a message (or list of messages) or a ``GAPFormatError``; and every
run is quick (a deadline per example), so a super-linear scan fails here.
"""

from __future__ import annotations

from gap_strategies import json_documents, markdown_texts, prose, wrapped
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtl_nb import gap
from gtl_nb.gap import GAPFormatError, WrappedMessage

FAST = settings(
    max_examples=120, deadline=1500, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


def parsed_or_error(parse, text):
    """The parse result, or the GAPFormatError; anything else fails the test."""
    try:
        return parse(text)
    except GAPFormatError as exc:
        return exc


@FAST
@given(json_documents())
def test_from_json_gives_a_message_or_a_format_error(text):
    result = parsed_or_error(gap.from_json, text)
    if isinstance(result, WrappedMessage):
        assert gap.from_json(gap.to_json(result)) == result
    as_bytes = text.encode("utf-8", "surrogatepass")  # a lone surrogate makes these bytes invalid UTF-8
    assert isinstance(parsed_or_error(gap.from_json, as_bytes), (WrappedMessage, GAPFormatError))


@FAST
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_from_json_on_arbitrary_text_or_bytes_gives_a_message_or_a_format_error(data):
    assert isinstance(parsed_or_error(gap.from_json, data), (WrappedMessage, GAPFormatError))


@FAST
@given(markdown_texts())
def test_the_markdown_parser_gives_blocks_or_a_format_error(text):
    result = parsed_or_error(gap.parse_all, text)
    if isinstance(result, list):
        for message in result:
            assert gap.from_markdown(gap.to_markdown(message)) == message


@FAST
@given(prose)
def test_the_markdown_parser_on_prose_gives_blocks_or_a_format_error(text):
    assert isinstance(parsed_or_error(gap.parse_all, text), (list, GAPFormatError))


@FAST
@given(wrapped)
def test_wrapping_random_text_survives_both_formats_and_every_platform(message):
    assert gap.from_markdown(gap.to_markdown(message)) == message
    assert gap.from_json(gap.to_json(message)) == message
    for platform in gap.PLATFORMS:
        assert isinstance(gap.transform_for_platform(message, platform), str)


@FAST
@given(prose, st.lists(st.sampled_from(["the_system", "the_database", "these_apis", "the_file"]), max_size=3))
def test_a_models_answer_of_any_shape_is_read_without_error(answer, keys):
    found = gap.suggest.parse_answer(answer, keys)
    assert set(found) <= set(keys)
