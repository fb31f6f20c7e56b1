"""The limits of the GAP parsers, and the checks that enforce them before any parsing starts.

``from_json``, ``from_markdown`` and ``parse_all`` read outside text (a pasted chat, a file, a
model's answer). They refuse, with ``GAPLimitError`` (a ``GAPFormatError``):

* a text longer than ``MAX_TEXT_CHARS`` characters (16 Mi);
* JSON (a whole document, or a markdown block's ``Hints:`` object) whose arrays and objects nest
  deeper than ``MAX_JSON_DEPTH`` (64, the outermost one counting as one). The depth is found by a
  linear scan, never by recursion, so no input reaches the recursion limit of the JSON parser;
* JSON with a number longer than Python converts (``sys.get_int_max_str_digits()``, 4300 digits by
  default): ``json`` raises a bare ``ValueError`` for it, which the parsers turn into the format error;
* a ``pronoun_map`` of more than ``MAX_PRONOUN_MAP`` entries (64): each word it names other than the
  pronouns is one more pass over the content when it is transformed — sixteen thousand keys of a
  pasted block took 36 s over 389 KB.
"""

from __future__ import annotations

import sys

from gtl_nb.gap.errors import GAPLimitError

MAX_TEXT_CHARS = 16 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_PRONOUN_MAP = 64

# Only brackets and quotes matter to the depth scan; every other byte is deleted first.
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def check_text(text: object, what: str) -> str:
    """``text`` itself, refused when it is too long (``GAPLimitError``) or not a ``str``.

    A value that is not text at all is a caller's mistake: ``TypeError``, as for every GAP function
    given a wrong Python value.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise GAPLimitError(f"{what} is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}")
    return text


def json_too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON in ``text`` nests arrays/objects deeper than ``limit``, without parsing it.

    Escapes are removed, string contents dropped, and matched bracket pairs removed innermost first,
    one level per pass, for at most ``limit`` passes: linear in ``len(text)`` for a fixed limit.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # the fast path: too few brackets to nest that deep
    data = text.encode("utf-8", "surrogatepass")  # multi-byte sequences never hold ASCII bytes
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = unescaped.translate(_TO_PARENS, _NOT_STRUCTURE)
    outside = b"".join(skeleton.split(b'"')[::2])  # the even pieces lie outside strings
    for _ in range(limit):
        reduced = outside.replace(b"()", b"")
        if len(reduced) == len(outside):
            return outside.count(b"(") > limit  # unbalanced openers: not JSON, but the parser would recurse
        outside = reduced
    return b"()" in outside


def number_too_long() -> str:
    """The reason for a JSON number Python refuses to convert (``json`` raises a bare ``ValueError``)."""
    return f"a number longer than {sys.get_int_max_str_digits()} digits"
