"""Regressions: GAP inputs that once made a scanner super-linear, or a parser raise a foreign error.

Each input is sized so that the old code took many seconds (or hours); the bound of one second is a
wide margin for the linear code, not a benchmark. Where the linear code itself takes a good part of a
second, the test compares its time at a size and at four times it instead (``grows_linearly``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gtl_nb import gap
from gtl_nb.gap import GAPFormatError
from gtl_nb.gap.limits import MAX_JSON_DEPTH, MAX_TEXT_CHARS, json_too_deep
from gtl_nb.gap.suggest import parse_answer

BOUND_S = 1.0


def finishes_quickly(call: Callable[[], object]) -> object:
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    assert elapsed < BOUND_S, f"took {elapsed:.2f} s"
    return result


def grows_linearly(call: Callable[[int], object], size: int) -> None:
    """``call(n)``'s time at ``size`` and at four times it (the best of four each, the two sizes taken in
    turn so that a busy spell of the machine slows both): a linear scan takes about four times as long,
    a quadratic one sixteen — a ratio, so a slow or loaded machine does not fail it, where a bound in
    seconds would."""

    def timed(n: int) -> float:
        started = time.perf_counter()
        call(n)
        return time.perf_counter() - started

    rounds = [(timed(size), timed(4 * size)) for _ in range(4)]
    small, large = min(pair[0] for pair in rounds), min(pair[1] for pair in rounds)
    assert large < 8 * small, f"{size:,}: {small:.3f} s, {4 * size:,}: {large:.3f} s"


@pytest.mark.parametrize(
    "answer",
    [
        " " * 50_000,  # 2,000 spaces took 36 s (cubic)
        "1" * 50_000 + ":",
        "- " * 25_000 + "the_database: PostgreSQL",
        ("x" * 10_000 + "\n") * 5,
    ],
    ids=["spaces", "digits", "bullets", "lines"],
)
def test_a_models_answer_is_read_in_linear_time(answer):
    finishes_quickly(lambda: parse_answer(answer, ["the_database"]))


def test_answer_lines_are_still_read_leniently():
    answer = " 1. **the database**: `PostgreSQL 14`.\n- the_file = config.yaml\nthe_api: unknown\n: x\nkey:"
    found = parse_answer(answer, ["the_database", "the_file", "the_api", "key"])
    assert found == {"the_database": "PostgreSQL 14", "the_file": "config.yaml"}


def test_wrap_message_on_a_long_dotted_run_is_linear():
    finishes_quickly(lambda: gap.wrap_message("a." * 50_000, "claude.ai", "c1"))  # took 14 s
    finishes_quickly(lambda: gap.wrap_message("a://" * 25_000, "claude.ai", "c1"))


def test_urls_are_still_protected():
    wrapped = gap.wrap_message("See https://example.com/the/system.py, then the server.", "p", "c")
    assert list(wrapped.entities) == ["the_server"]


def test_pronouns_after_a_long_run_of_quote_marks_are_linear():
    text = "“" * 300_000 + " I think"
    assert finishes_quickly(lambda: gap.transform_pronouns(text, "assistant")).endswith("the AI assistant thinks")


def test_pronouns_after_a_long_run_of_list_marks_are_linear():
    # ">" * 26 took 5 s and every further ">" doubled it (nested repeats in the list-marker pattern)
    text = ">" * 60 + "x. I think"
    assert finishes_quickly(lambda: gap.transform_pronouns(text, "assistant")).endswith("The AI assistant thinks")
    assert gap.transform_pronouns("> 1. - I think", "assistant") == "> 1. - The AI assistant thinks"


def test_component_names_are_found_in_linear_time_and_as_before():
    finishes_quickly(lambda: gap.detect_entities("S" * 100_000 + "Service"))
    found = gap.detect_entities("The AuthService calls HTTPClient and XMLHTTPRequestHandler, not ABcService.")
    assert [k for k, e in found.items() if e.type == "technical_component"] == [
        "auth_service",
        "http_client",
        "xmlhttp_request_handler",
    ]


# --- only GAPFormatError, within stated limits ---------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, '{"a":' * 5_000, b"\xff\xfe\x00", b"\x80abc", "[" * 65 + "]" * 65],
    ids=["deep-array", "deep-object", "bad-utf16", "bad-utf8", "one-too-deep"],
)
def test_from_json_raises_only_gap_format_errors(text):
    with pytest.raises(GAPFormatError):
        gap.from_json(text)


def test_a_number_too_long_to_convert_is_a_format_error_in_both_formats():
    # json raises a bare ValueError (Python's 4300-digit int conversion limit), not a JSONDecodeError
    document = '{"gap_version":"0.1.0","message":{"content":"x","source":{"platform":"p","chat_id":"c"},'
    document += f'"extra":{"1" * 5_000}}}}}'
    with pytest.raises(GAPFormatError, match="number longer than"):
        gap.from_json(document)
    block = f'[GAP:START]\nFrom: p\nContext: user\nHints: {{"maintain_tense": {"1" * 5_000}}}\n'
    with pytest.raises(GAPFormatError, match=r"line 4.*number longer than"):
        gap.from_markdown(block + "[GAP:CONTENT]\nx\n[GAP:END]")


def test_from_json_wraps_a_message_the_model_refuses():
    document = '{"gap_version":"0.1.0","message":{"content":"x","source":{"platform":"p","chat_id":"c"},'
    document += '"context":{"parent_messages":"not-a-list"}}}'
    with pytest.raises(GAPFormatError):
        gap.from_json(document)


def test_a_document_at_the_depth_limit_parses():
    deep = "[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3)  # inside message.context: depth 3
    document = '{"gap_version":"0.1.0","message":{"content":"x","source":{"platform":"p","chat_id":"c"},'
    document += f'"context":{{"extra":{deep}}}}}}}'
    assert gap.from_json(document).content == "x"
    assert json_too_deep('{"a": "[[[[[[[[[[[\\"[[["}', 1) is False


def test_markdown_hints_nested_too_deep_are_a_format_error():
    block = "[GAP:START]\nFrom: p\nContext: user\nHints: " + "[" * 5000 + "\n[GAP:CONTENT]\nx\n[GAP:END]"
    with pytest.raises(GAPFormatError, match=r"line 4.*nested deeper than 64"):
        gap.from_markdown(block)


def test_texts_over_the_size_limit_are_refused_before_parsing():
    huge = " " * (MAX_TEXT_CHARS + 1)
    with pytest.raises(GAPFormatError, match="limit"):
        gap.parse_all(huge)
    with pytest.raises(GAPFormatError, match="limit"):
        gap.from_json(huge)


@pytest.mark.parametrize("value", [None, 5, ["[GAP:START]"]])
def test_a_value_that_is_not_text_is_a_type_error(value):
    with pytest.raises(TypeError, match="must be"):
        gap.parse_all(value)
    with pytest.raises(TypeError, match="must be"):
        gap.from_json(value)


def test_pronoun_map_words_among_many_replacements_are_linear():
    # each replacement was inserted into a sorted list, moving every one after it: the words of a
    # second key before 120,000 of the first took 3.5 s, and 16 MiB of them hours
    mapping = {"a": "b", "c": "d"}
    grows_linearly(lambda n: gap.transform_pronouns("c " * n + "a " * n, "system", pronoun_map=mapping), 20_000)
    assert gap.transform_pronouns("c " * 3 + "a " * 3, "system", pronoun_map=mapping) == "d " * 3 + "b " * 3


def test_many_pronouns_on_one_long_line_are_linear():
    # each "I" followed by "." took the whole line before it (for an "I." enumeration at a line's start):
    # 2,000 of them on a 12 MB line took 2.5 s
    grows_linearly(lambda n: gap.transform_pronouns(("I. " + "x" * 6_000 + " ") * n, "assistant"), 600)
    done = gap.transform_pronouns(("I. " + "x" * 60 + " ") * 20, "assistant")
    assert done.startswith("I. xxx") and done.count("the AI assistant.") == 19
    enumeration = "Look:\n  1. I. The first.\nI. Second"
    assert gap.transform_pronouns(enumeration, "user") == enumeration


def peak_bytes(call: Callable[[], object]) -> int:
    """The most memory allocated while ``call`` runs (its result or its GAPFormatError dropped)."""
    import tracemalloc

    tracemalloc.start()
    try:
        call()
    except GAPFormatError:
        pass
    finally:
        _size, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


HEAD = "[GAP:START]\nFrom: p\nContext: user\n"


@pytest.mark.parametrize(
    "text",
    [
        "ab\n" * 300_000,  # prose between blocks
        HEAD + "[GAP:CONTENT]\n" + "ab\n" * 300_000 + "[GAP:END]",  # content of many lines
        HEAD + "ab\n" * 300_000,  # a header never closed
        HEAD + "X-a: b\n" * 150_000 + "[GAP:CONTENT]\nx\n[GAP:END]",  # headers of a newer version
    ],
    ids=["prose", "content", "unclosed", "headers"],
)
def test_the_markdown_reader_holds_little_more_than_its_input(text):
    # the text was split into a list of its lines first: twenty times its size, fifty for the header
    assert peak_bytes(lambda: gap.parse_all(text)) < 2 * len(text)


@pytest.mark.parametrize("separator", [" ", "\n"])
def test_a_text_dense_with_pronouns_is_rewritten_whole(separator):
    # (each "I" once searched the 256 characters before it, position by position, with three patterns that
    # only read its last word or two: five times slower; docs/benchmarks.md keeps speed out of unit tests)
    text = f"so I{separator}" * 2_000
    assert gap.transform_pronouns(text, "assistant") == f"so the AI assistant{separator}" * 2_000
