"""The protected-span finder shared by detection and pronoun rewriting (CommonMark code rules)."""

from __future__ import annotations

import pytest

from gtl_nb.gap.spans import SpanSet, code_spans, free_segments, protected_spans


def covered(text: str, spans) -> list[str]:
    return [text[start:end] for start, end in spans]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a `b` c", ["`b`"]),
        ("a ``b ` c`` d", ["``b ` c``"]),  # a longer run can hold a shorter one
        ("a ` b", []),  # an unmatched backtick is literal
        ("x\n```py\ncode\n```\ny", ["```py\ncode\n```"]),
        ("~~~\ncode\n~~~~\nafter", ["~~~\ncode\n~~~~"]),
        ("```\nnever closed", ["```\nnever closed"]),
        ("````\n```\nstill code\n````\nout", ["````\n```\nstill code\n````"]),
        ("``` `not a fence` ```", ["``` `not a fence` ```"]),  # backticks in the info string: inline code
        ("see ```\nspans\nlines``` here", ["```\nspans\nlines```"]),
    ],
)
def test_code_spans(text, expected):
    assert covered(text, code_spans(text)) == expected


def test_protected_spans_add_urls_and_optionally_quotes():
    text = 'go to https://x.io/a?b=c, say "hi" and “there”'
    assert covered(text, protected_spans(text)) == ["https://x.io/a?b=c"]
    assert covered(text, protected_spans(text, quotes=True)) == ["https://x.io/a?b=c", '"hi"', "“there”"]


def test_free_segments_are_the_complement():
    text = "ab`cd`ef"
    assert covered(text, free_segments(text, code_spans(text))) == ["ab", "ef"]


def test_span_set_refuses_overlaps():
    spans = SpanSet()
    assert spans.add(5, 10)
    assert not spans.add(9, 12) and not spans.add(0, 6) and not spans.add(6, 7)
    assert spans.add(10, 12) and spans.add(0, 5)
    assert list(spans) == [(0, 5), (5, 10), (10, 12)]
