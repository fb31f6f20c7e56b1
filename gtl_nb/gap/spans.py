"""Find the parts of a text that rewriting and detection must leave alone.

Code (fenced blocks opened by three or more backticks or tildes, and inline code spans delimited by
equal backtick runs, as CommonMark defines them), URLs, and — for pronoun rewriting — quoted text
(``"..."`` on one line and ``“...”``). Spans are half-open ``(start, end)`` offsets, sorted, never
overlapping. Every scan here is linear in the length of the text: URLs and curly quotes are found
by plain string scanning, since the regular expressions for them backtrack quadratically.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator

_FENCE_OPEN = re.compile(r"^[ ]{0,3}(?P<fence>`{3,}|~{3,})[^\n]*$", re.MULTILINE)
_BACKTICKS = re.compile(r"`+")
_STRAIGHT_QUOTE = re.compile(r'"[^"\n]*"')
# A URL is a scheme (a letter, then letters, digits, "+", "." or "-", at the start of a word), "://",
# and a body of characters other than white space and <>()[]"'` that does not end in sentence
# punctuation.
_SCHEME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")
_URL_STOPS = frozenset("<>()[]\"'`")
_URL_TRAILING = frozenset(".,;:!?")

Span = tuple[int, int]


def _fenced_blocks(text: str) -> list[Span]:
    spans: list[Span] = []
    pos = 0
    while True:
        opening = _FENCE_OPEN.search(text, pos)
        if opening is None:
            return spans
        fence = opening.group("fence")
        info = text[opening.end("fence") : opening.end()]
        if fence[0] == "`" and "`" in info:
            # A backtick fence's info string may not contain backticks (that is inline code).
            pos = opening.end()
            continue
        closing = re.compile(rf"^[ ]{{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
        close = closing.search(text, opening.end())
        end = len(text) if close is None else close.end()
        spans.append((opening.start(), end))
        pos = end


def _inline_code(text: str, blocked: list[Span]) -> list[Span]:
    """Backtick runs matched to the next run of the same length (outside ``blocked``)."""
    runs = [m for m in _BACKTICKS.finditer(text) if not overlaps(m.start(), m.end(), blocked)]
    spans: list[Span] = []
    i = 0
    while i < len(runs):
        opener = runs[i]
        length = len(opener.group(0))
        for j in range(i + 1, len(runs)):
            if len(runs[j].group(0)) == length:
                spans.append((opener.start(), runs[j].end()))
                i = j + 1
                break
        else:
            i += 1  # an unmatched run is literal backticks
    return spans


def code_spans(text: str) -> list[Span]:
    """Fenced code blocks and inline code spans."""
    fenced = _fenced_blocks(text)
    return _merge(fenced + _inline_code(text, fenced))


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"  # what \w matches


def _scheme_start(text: str, lo: int, sep: int) -> int | None:
    """The leftmost start (at or after ``lo``) of a URL scheme that ends where ``://`` is, at ``sep``."""
    run = sep
    while run > lo and text[run - 1] in _SCHEME_CHARS:
        run -= 1
    for start in range(run, sep):
        if text[start].isascii() and text[start].isalpha() and (start == 0 or not _is_word_char(text[start - 1])):
            return start
    return None


def _url_end(text: str, body: int) -> int | None:
    """Where the URL whose body starts at ``body`` ends, or None when the body would be empty."""
    end = body
    while end < len(text) and text[end] not in _URL_STOPS and not text[end].isspace():
        end += 1
    while end > body and text[end - 1] in _URL_TRAILING:
        end -= 1
    return end if end > body else None


def url_spans(text: str) -> list[Span]:
    """Every URL (``scheme://...``) in ``text``, left to right, by one linear scan."""
    spans: list[Span] = []
    pos = 0
    while (sep := text.find("://", pos)) >= 0:
        start = _scheme_start(text, pos, sep)
        end = _url_end(text, sep + 3) if start is not None else None
        if start is None or end is None:
            pos = sep + 1  # no URL here; a later one starts after this "://"
            continue
        spans.append((start, end))
        pos = end
    return spans


def _curly_quotes(text: str) -> list[Span]:
    """``“...”`` spans; an opening mark never closed ends the search (no later one can close)."""
    spans: list[Span] = []
    pos = 0
    while (opening := text.find("“", pos)) >= 0:
        closing = text.find("”", opening + 1)
        if closing < 0:
            break
        spans.append((opening, closing + 1))
        pos = closing + 1
    return spans


def _straight_quotes(text: str) -> list[Span]:
    return [match.span() for match in _STRAIGHT_QUOTE.finditer(text)]


def protected_spans(text: str, *, quotes: bool = False) -> list[Span]:
    """Code, URLs and (with ``quotes=True``) quoted text, merged into sorted disjoint spans."""
    spans = code_spans(text)
    extra: list[Span] = []
    finders = [url_spans, _straight_quotes, _curly_quotes] if quotes else [url_spans]
    for find in finders:
        extra.extend(span for span in find(text) if not overlaps(span[0], span[1], spans))
    return _merge(spans + extra)


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def overlaps(start: int, end: int, spans: list[Span]) -> bool:
    """Whether ``[start, end)`` touches any of the sorted disjoint ``spans``."""
    index = bisect_right(spans, (start, 1 << 62)) - 1
    if index >= 0 and spans[index][1] > start:
        return True
    return index + 1 < len(spans) and spans[index + 1][0] < end


def free_segments(text: str, spans: list[Span]) -> list[Span]:
    """The complement of ``spans`` in ``text``: the parts that may be read or rewritten."""
    segments: list[Span] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            segments.append((pos, start))
        pos = max(pos, end)
    if pos < len(text):
        segments.append((pos, len(text)))
    return segments


class SpanSet:
    """Disjoint half-open spans added one at a time, with O(log n) overlap checks."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: dict[int, int] = {}

    def free(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` overlaps none of the spans."""
        index = bisect_left(self._starts, start)
        if index < len(self._starts) and self._starts[index] < max(end, start + 1):
            return False
        return not (index > 0 and self._ends[self._starts[index - 1]] > start)

    def add(self, start: int, end: int) -> bool:
        """Add ``[start, end)`` if it is free; returns whether it was added."""
        if not self.free(start, end):
            return False
        insort(self._starts, start)
        self._ends[start] = end
        return True

    def add_all(self, spans: Iterable[Span]) -> list[Span]:
        """Add each of ``spans`` that overlaps none held before the call; returns those added, in order.

        ``spans`` must be sorted and disjoint from one another (the matches of one ``finditer``). They
        are merged in with one sort of two sorted runs, which is linear: adding them one by one moved
        the spans after each, quadratic when they interleave with the ones held.
        """
        added = [(start, end) for start, end in spans if self.free(start, end)]
        if added:
            self._starts = sorted(self._starts + [start for start, _end in added])
            self._ends.update(added)
        return added

    def __iter__(self) -> Iterator[Span]:
        """The spans in order."""
        return ((start, self._ends[start]) for start in self._starts)
