"""Hypothesis strategies for GAP input, from plausible to hostile, reusable wherever GAP text arrives.

* :data:`prose` — message text built from the pieces the detectors and rewriters react to (pronouns,
  determiners and head nouns, product names, paths, URLs, code fences, quotes, list markers, GAP
  markers) and from :data:`HOSTILE` runs that once made a scanner go super-linear;
* :data:`wrapped` — ``WrappedMessage`` values made by ``wrap_message`` from :data:`prose`;
* :func:`json_documents` — GAP JSON text: valid documents, documents damaged (a field dropped,
  retyped, or replaced by deep nesting), and arbitrary JSON;
* :func:`markdown_texts` — GAP markdown: valid blocks, blocks with lines dropped, duplicated, swapped
  or damaged, and prose around them.

Loading: ``tests/gap/conftest.py`` registers this file as the module ``gap_strategies``.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from gtl_nb.gap import ROLES, to_dict, to_markdown, wrap_message

# Runs that were super-linear in some scanner before it was rewritten (sized to hurt a quadratic
# scan, small enough for a property test): answer lines, URLs, quotes, list markers, fences, words.
HOSTILE = (
    " " * 3000,
    "a." * 3000,
    "a:" * 2000,
    "“" * 3000,
    ">" * 60 + "x.",
    "```" * 1000,
    "S" * 3000,
    "[" * 3000,
    '{"a":' * 1000,
    "1" * 3000 + ":",
    "the" + " " * 3000,
    "\\ud800",
)
PIECES = (
    "I", "I'm", "my", "me", "mine", "myself", "Do I", " ", "\n", "\t", ". ", "? ", "\n- ", "\n1. ", "\n> ",
    "# ", "the system", "these APIs", "the database PostgreSQL 14.5", "Python 3.11", "v2.3.1", "src/app.py",
    ".env", "Dockerfile", "AuthService", "HTTPClient", "parse_args()", "https://example.com/a?b=c.", "`code`",
    "```py\nx = 1\n```", '"quoted"', "“curly”", "[GAP:START]", "[GAP:CONTENT]", "[GAP:END]", "[\\GAP:END]",
    "key: value", "the_system = PostgreSQL", "é", "🙂", "\u2028",
)  # fmt: skip

prose = st.lists(st.sampled_from(PIECES) | st.text(max_size=8) | st.sampled_from(HOSTILE), max_size=12).map("".join)
names = st.text(min_size=1, max_size=10)
wrapped = st.builds(
    wrap_message,
    content=prose,
    platform=names,
    chat_id=names,
    role=st.sampled_from(ROLES),
    thread_id=st.none() | names,
    parent_messages=st.lists(names, max_size=3),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of nested dicts, parents before children."""
    if not isinstance(data, dict):
        return []
    out = []
    for key, value in data.items():
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def json_documents(draw: st.DrawFn) -> str:
    """GAP JSON text: valid, damaged at one field, or any JSON at all."""
    kind = draw(st.sampled_from(["valid", "damaged", "damaged", "any"]))
    if kind == "any":
        return json.dumps(draw(json_values))
    document = to_dict(draw(wrapped))
    if kind == "damaged":
        path = draw(st.sampled_from(_paths(document)))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        replacement = draw(st.sampled_from(["drop", "deep", "value"]))
        if replacement == "drop":
            del parent[path[-1]]
        elif replacement == "deep":
            parent[path[-1]] = json.loads("[" * 70 + "]" * 70)
        else:
            parent[path[-1]] = draw(json_values)
    return json.dumps(document, ensure_ascii=draw(st.booleans()))


@st.composite
def markdown_texts(draw: st.DrawFn) -> str:
    """GAP markdown: one or two blocks, possibly damaged line by line, with prose around them."""
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 2))):
        lines += to_markdown(draw(wrapped)).split("\n")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["drop", "duplicate", "swap", "damage", "hints"]))
        if operation == "drop":
            del lines[at]
        elif operation == "duplicate":
            lines.insert(at, lines[at])
        elif operation == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif operation == "damage":
            cut = draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:cut] + draw(st.sampled_from(PIECES) | st.sampled_from(HOSTILE)) + lines[at][cut:]
        else:
            lines.insert(at, "Hints: " + draw(st.sampled_from(['{"pronoun_map": 5}', "[" * 100, "{", "{}"])))
        if not lines:
            break
    return draw(prose) + "\n" + "\n".join(lines) + "\n" + draw(prose)
