"""``%%gtl --format``: the instruction each format adds to the system prompt, and how the answer is shown.

``markdown`` (the default) shows the answer as is; ``json`` and ``code`` show it in a fenced block
(JSON pretty-printed when it parses); ``text`` shows it in a fenced block in its markdown form only
(``PlainText``), so its plain form is the answer as written. ``code_of`` takes the code out of an
answer for ``--format code``'s next cell.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gtl_nb.completion import Completion

__all__ = ["FORMAT_INSTRUCTIONS", "PlainText", "code_of", "fenced", "shown"]

FORMAT_INSTRUCTIONS = {
    "json": "Answer with JSON only: no prose before or after it, no code fences.",
    "code": "Answer with the code only, in one fenced code block, with no explanation before or after it.",
}
_FENCE = "```"
_LANG_PUNCTUATION = frozenset("_+#.-")  # with letters and digits: what a fence's language name is made of


def _first_fence(text: str) -> tuple[str, str] | None:
    """``(language, body)`` of the first fenced block, or None.

    Plain scanning, linear in the text: only the first fence can open a block (a later one on the
    same line shares its end of line, and none follows an unclosed block), its info string runs to
    the end of its line, and the body to the next fence (the line break before that not included).
    """
    opening = text.find(_FENCE)
    newline = text.find("\n", opening + len(_FENCE)) if opening >= 0 else -1
    closing = text.find(_FENCE, newline + 1) if newline >= 0 else -1
    if closing < 0:
        return None
    end = closing - 1 if closing > newline + 1 and text[closing - 1] == "\n" else closing
    info = text[opening + len(_FENCE) : newline].lstrip(" \t")
    length = 0
    while length < len(info) and (info[length].isalnum() or info[length] in _LANG_PUNCTUATION):
        length += 1
    return info[:length], text[newline + 1 : end]


@dataclasses.dataclass(frozen=True)
class PlainText(Completion):
    """An answer shown with ``--format text``: its markdown form holds the text in a fenced block (no
    markdown rendering, dollars literal), its plain form the text as written."""

    def text_markdown(self) -> str:
        return fenced(self.text, "text") if self.text else ""


def shown(completion: Any, fmt: str) -> Any:
    """The Completion as ``--format`` shows it: markdown as is; json and code in a fenced block; text
    as a ``PlainText``, fenced in markdown only."""
    if fmt == "markdown" or completion.tool_calls:
        return completion
    if fmt == "text":
        return PlainText(**{f.name: getattr(completion, f.name) for f in dataclasses.fields(completion)})
    if fmt == "json":
        body = code_of(completion.text)
        try:
            text = fenced(json.dumps(json.loads(body), indent=2, ensure_ascii=False), "json")
        except ValueError as exc:
            print(f"the answer is not valid JSON ({exc}); shown as text")
            text = fenced(completion.text, "text")
    elif fmt == "code":
        fence = _first_fence(completion.text)
        language = (fence[0] if fence else "") or "python"
        text = fenced(code_of(completion.text), language)
    else:
        raise ValueError(f"unknown --format {fmt!r}")
    return dataclasses.replace(completion, text=text)


def fenced(body: str, language: str = "") -> str:
    """``body`` in a fenced code block whose fence no line of it can close (longer than its backtick runs)."""
    longest = 0
    run = 0
    for char in body:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{body}\n{fence}"


def code_of(text: str) -> str:
    """The first fenced block's body, or the whole text when there is no fence."""
    fence = _first_fence(text)
    return (fence[1] if fence else text).strip("\n")
