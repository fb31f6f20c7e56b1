"""The fast typed-entity scan against the straightforward one it replaced, and its cost in regex passes.

``entities._typed_hits`` finds product names with one scan for name starts and anchored matches
there, component names by scanning capitalised words only, and versions, dot files and well-known
file names with patterns written literal-first. The reference below is what it replaced: every
product's regex run over the whole text, every word tested, the patterns as first written. The two
must list the same hits, in the same order (overlap resolution breaks ties by that order), for every
text; and overlap resolution, which now sets aside the hits that overlap no other, must choose as
the greedy pass over every hit did.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import gap_strategies
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gtl_nb.gap import entities, vocabulary, wrap_message
from gtl_nb.gap.spans import SpanSet, overlaps, protected_spans

_WORD_RE = re.compile(r"\w+")
# The patterns entities now writes literal-first (the boundary checked after the first character), as
# they were written before.
OLD_BARE_VERSION_RE = re.compile(
    rf"{entities._BEFORE}(?:v(?P<v>\d+(?:\.\d+){{1,3}}(?:-[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?)"
    rf"|[Vv]ersion[ \t]+(?P<word>\d+(?:\.\d+){{1,3}}))(?![\w-]|\.\w)"
)
OLD_FILE_RES = (
    *entities._FILE_RES[:3],
    re.compile(rf"(?<![\w./])\.(?:{'|'.join(map(re.escape, vocabulary.DOT_FILES))})(?:\.\w+)?(?![\w-]|\.\w)"),
    re.compile(rf"\b(?:{'|'.join(vocabulary.BARE_FILE_NAMES)})(?![\w-]|\.\w)"),
)


def reference_component_spans(text: str) -> list[tuple[int, int]]:
    """Every word tested, as before the capitalised-word scan."""
    spans = []
    for word in _WORD_RE.finditer(text):
        start, end = word.span()
        if start > 0 and text[start - 1] in entities._NOT_BEFORE_NAME:
            continue
        if end < len(text) and (
            text[end] == "@"
            or (text[end] in entities._JOINERS and end + 1 < len(text) and entities._is_word_char(text[end + 1]))
        ):
            continue
        if entities._is_component_name(word.group()):
            spans.append((start, end))
    return spans


def reference_typed_hits(text: str, protected: list[tuple[int, int]]) -> list[entities._Hit]:
    """``_typed_hits`` as it was: one ``finditer`` per product regex over the whole text."""
    hits = [
        entities._Hit(m.start(), m.end(), key, entity_type, " ".join(m.group(0).split()), priority)
        for key, entity_type, priority, regex in entities._PRODUCTS
        for m in regex.finditer(text)
    ]
    for m in OLD_BARE_VERSION_RE.finditer(text):
        version = m.group("v") or m.group("word")
        hits.append(
            entities._Hit(m.start(), m.end(), entities._version_key(version), "software_version", m.group(0), 1)
        )
    for regex in OLD_FILE_RES:
        for m in regex.finditer(text):
            if not entities._PRODUCT_NAME_RE.fullmatch(m.group(0)):
                hits.append(entities._Hit(m.start(), m.end(), m.group(0), "file_reference", m.group(0), 2))
    for start, end in reference_component_spans(text):
        name = text[start:end]
        hits.append(entities._Hit(start, end, entities._snake(name), "technical_component", name, 2))
    for m in entities._CALL_RE.finditer(text):
        hits.append(entities._Hit(m.start(), m.end(), m.group("name").lower(), "technical_component", m.group(0), 2))
    return [hit for hit in hits if not overlaps(hit.start, hit.end, protected)]


def reference_resolve_overlaps(hits: list[entities._Hit]) -> list[entities._Hit]:
    """The greedy pass over every hit, as before uncontested hits were set aside."""
    taken = SpanSet()
    chosen = [
        hit
        for hit in sorted(hits, key=lambda h: (-h.priority, -(h.end - h.start), h.start))
        if taken.add(hit.start, hit.end)
    ]
    return sorted(chosen, key=lambda h: h.start)


def assert_same_hits(text: str) -> None:
    protected = protected_spans(text)
    hits = entities._typed_hits(text, protected)
    assert hits == reference_typed_hits(text, protected)
    assert entities._resolve_overlaps(hits) == reference_resolve_overlaps(hits)


def _spellings() -> list[str]:
    """Spellings of every product name, as written, lower-cased, upper-cased and with a version."""
    spellings = []
    for _key, pattern, _cs in (*vocabulary.DATABASES, *vocabulary.FRAMEWORKS, *vocabulary.SOFTWARE):
        for alternative in entities._alternatives(pattern):
            plain = re.sub(r"\(\?:([^()|]*)[^()]*\)\??", r"\1", alternative)  # an optional part's first form
            plain = plain.replace("?", "").replace("\\", "")
            spellings += [plain, plain.lower(), plain.upper(), plain + " 3.11", plain + "2.0.1"]
    return spellings


# Names, their overlapping and longer forms, the Unicode letters that fold to ASCII ones under
# IGNORECASE (Kelvin sign, long s, dotted and dotless i), and the characters that glue names to more.
NAME_PIECES = (
    *_spellings(),
    "Ruby on Rails", "Spring Boot 3.2", "Apache Spark", "Apache 2.4", ".NET Core 8", "Cosmos DB", "CosmosDB",
    "Node.js 20", "NodeJS", "Go 1.21", "Golang", "ES2015", "ES 6", "\u212aubernetes 1.29", "\u017fqlite",
    "Po\u017ftgres", "\u0130OS 17", "\u0131os 17", "K8s 1.30", "React.js", "ReactJS 18", "Next.js 14", "v2.3.1",
    "version 3.2", "src/app.py", "config.yaml", "AuthService", "HTTPClient", "UserRepo", "parse_args()",
    "Version 1.2", "vv1.2", "v1.0.0-rc1", "V2.0", "v2", "xDockerfile", "Dockerfile", "Makefile.lock", "Pipfile-x",
    ".env.local", "a.env", "..env", ".gitignore", ".python-version", "/etc/hosts", "a/b/c.py", "~/x", "../y/",
    "./run", "(/a/b)", "a.b/c.d", "x/", "foo.bar()", "x()()", "f()", "(f())", "a.()", "_()", "é()", "/é/ü.py",
)  # fmt: skip
GLUE = (" ", "", ".", "-", "/", "@", "#", "$", "\\", "_", "\t", "\n", "`", "1", "x", ", ", "(", ")", "://")

name_texts = st.lists(st.sampled_from(NAME_PIECES) | st.sampled_from(GLUE) | st.text(max_size=3), max_size=16).map(
    "".join
)


@settings(max_examples=400, deadline=None)
@given(name_texts)
def test_typed_hits_match_the_per_regex_scan_on_name_heavy_text(text: str) -> None:
    assert_same_hits(text)


@settings(max_examples=200, deadline=None)
@given(gap_strategies.prose)
def test_typed_hits_match_the_per_regex_scan_on_prose(text: str) -> None:
    assert_same_hits(text)


spans = st.tuples(st.integers(0, 30), st.integers(1, 8), st.integers(1, 4), st.sampled_from("abc"))


@settings(max_examples=300, deadline=None)
@given(st.lists(spans, max_size=25))
def test_overlap_resolution_matches_the_greedy_pass_over_every_hit(drawn: list[tuple[int, int, int, str]]) -> None:
    hits = [entities._Hit(start, start + length, key, "t", key, priority) for start, length, priority, key in drawn]
    assert entities._resolve_overlaps(hits) == reference_resolve_overlaps(hits)


@pytest.mark.parametrize("spacing", [1, 3, 63, 64, 65, 200])
def test_paths_and_calls_are_found_alike_however_dense(spacing: int) -> None:
    # around _RUN_SPACING, the windows give way to one pass over the text: the same hits either way
    for piece in ("a/b.py ", "/etc/x ", "f() ", "x.md ", "e.g. "):
        assert_same_hits((piece + "x" * max(0, spacing - len(piece)) + " ") * 20)


@pytest.mark.parametrize("text", [*gap_strategies.PIECES, *gap_strategies.HOSTILE, *NAME_PIECES])
def test_typed_hits_match_the_per_regex_scan_on_each_piece(text: str) -> None:
    assert_same_hits(text)
    assert_same_hits(f"The database {text} and {text}-{text} then {text}.{text} ({text})")


class _Counting:
    """A compiled pattern that counts the calls made on it, by method name."""

    def __init__(self, pattern: re.Pattern, calls: Counter) -> None:
        self._pattern, self._calls = pattern, calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._pattern, name)
        if not callable(method):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            # a search from the start to the end is a pass over the text; one given a window is not
            self._calls[name if len(args) + len(kwargs) == 1 else f"{name} in a window"] += 1
            return method(*args, **kwargs)

        return counted


def _count_regex_calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Route every pattern of ``entities`` (at module level or in its tuples) through ``_Counting``."""
    calls: Counter = Counter()

    def wrap(value: Any) -> Any:
        if isinstance(value, re.Pattern):
            return _Counting(value, calls)
        if isinstance(value, tuple):
            return tuple(wrap(item) for item in value)
        return value

    for name, value in list(vars(entities).items()):
        if isinstance(value, (re.Pattern, tuple)):
            monkeypatch.setattr(entities, name, wrap(value))
    return calls


def test_a_long_name_heavy_text_costs_a_few_passes_not_one_per_name(monkeypatch: pytest.MonkeyPatch) -> None:
    sentence = (
        "We moved PostgreSQL 14.5 and Redis to Django 4.2 on Python 3.11; the service AuthService reads "
        "src/app.py, Node.js 20 and React run on Ubuntu 22.04 with Go 1.21, Spring Boot and Apache Spark. "
    )
    text = sentence * (2_000_000 // len(sentence))
    calls = _count_regex_calls(monkeypatch)
    wrap_message(text, platform="claude.ai", chat_id="c")
    passes = calls["finditer"] + calls["search"] + calls["findall"]
    products = len(vocabulary.DATABASES) + len(vocabulary.FRAMEWORKS) + len(vocabulary.SOFTWARE)
    assert products > 100
    assert passes <= 12  # whole-text scans: a fixed few, not one per product
    # Anchored matches and searches in windows (the runs around paths and calls): a few per word
    # (the products a name's first character can start), not one per product and word.
    anchored = sum(count for name, count in calls.items() if "match" in name or "window" in name)
    assert anchored <= 4 * len(text.split())
