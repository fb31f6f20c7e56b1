"""GAP JSON as people hand it over: with a byte-order mark, with escaped keys, beyond a limit."""

from __future__ import annotations

import json
import sys

import pytest

from gtl_nb.gap import GAPFormatError, from_json, to_json, wrap_message
from gtl_nb.gap.errors import GAPLimitError
from gtl_nb.gap.jsonfmt import is_meant_as_gap_json
from gtl_nb.gap.limits import MAX_JSON_DEPTH

SENT = wrap_message("The system needs an index.", "claude.ai", "c-1", thread_id="perf")
DOCUMENT = to_json(SENT)
ESCAPED_KEY = DOCUMENT.replace('"gap_version"', '"gap\\u005fversion"', 1)
THREAD = '"thread_id":"perf"'
DEEP = DOCUMENT.replace(THREAD, '"thread_id":' + "[" * 70 + "]" * 70, 1)
LONG_NUMBER = DOCUMENT.replace(THREAD, '"thread_id":' + "1" * 100_000, 1)


def test_the_fixtures_are_what_they_say():
    assert ESCAPED_KEY != DOCUMENT and DEEP != DOCUMENT and LONG_NUMBER != DOCUMENT


def test_a_byte_order_mark_is_dropped_from_text_as_from_bytes():
    assert from_json("\ufeff" + DOCUMENT) == SENT
    assert from_json(("\ufeff" + DOCUMENT).encode("utf-8")) == SENT


def test_an_escaped_key_reads_as_the_key_it_decodes_to():
    assert from_json(ESCAPED_KEY) == SENT
    every_letter = "".join(f"\\u{ord(c):04x}" for c in "gap_version")
    assert from_json(DOCUMENT.replace('"gap_version"', f'"{every_letter}"', 1)) == SENT


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (DEEP, f"nested deeper than {MAX_JSON_DEPTH}"),
        (LONG_NUMBER, f"a number longer than {sys.get_int_max_str_digits()} digits"),
    ],
    ids=["deep", "long-number"],
)
def test_a_document_beyond_a_limit_is_a_limit_error_naming_it(text, reason):
    with pytest.raises(GAPLimitError, match=reason):
        from_json(text)
    assert issubclass(GAPLimitError, GAPFormatError)  # callers catching format errors still catch it


def test_malformed_json_is_a_format_error_but_no_limit_error():
    with pytest.raises(GAPFormatError) as raised:
        from_json(DOCUMENT[:-1])
    assert not isinstance(raised.value, GAPLimitError)


@pytest.mark.parametrize(
    "text",
    [
        DOCUMENT,
        ESCAPED_KEY,
        DEEP,
        LONG_NUMBER,
        "\ufeff" + DEEP,
        "  \n" + DEEP,
        ESCAPED_KEY.replace(THREAD, '"thread_id":' + "[" * 70 + "]" * 70, 1),
        # gap_version not first, a number too long: decoded with its numbers left as they are
        json.dumps({"message": {}, "gap_version": "0.1.0"}).replace("{}", '{"n": ' + "9" * 5000 + "}"),
    ],
    ids=["plain", "escaped", "deep", "long-number", "bom-deep", "blank-deep", "escaped-deep", "key-later"],
)
def test_gap_documents_are_recognised_even_beyond_a_limit(text):
    assert is_meant_as_gap_json(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"question": "what is a gap_version?"}',
        json.dumps({"examples": [{"gap_version": "0.1.0"}]}),
        '{"examples": ' + "[" * 70 + "]" * 70 + ', "gap_version": 1}',  # too deep, and gap_version not first
        '{"gap\\u005fversio": 1}',
        '{"gap\\u00": 1}',
        "[" + DOCUMENT + "]",
        "gap_version",
    ],
)
def test_other_json_and_text_are_not_taken_for_gap_documents(text):
    assert not is_meant_as_gap_json(text)
