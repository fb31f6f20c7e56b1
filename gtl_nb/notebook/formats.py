"""``%%gtl --format``: the instruction each format adds to the system prompt, and how the answer is shown.

``markdown`` (the default) shows the answer as is; ``json``, ``code`` and ``text`` show it in a fenced
block in its markdown form only (``PlainText``): JSON pretty-printed when it parses, the code taken out
of the answer's own fence, the text as written — and the plain form (a saved notebook's text, a
terminal) is that body without a fence. ``code_to_insert`` takes the code out of an answer for ``--format
code``'s next cell — or says there is none (prose inserted as a cell is a SyntaxError when run).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any

from gtl_nb.completion import Completion

__all__ = ["FORMAT_INSTRUCTIONS", "PlainText", "code_of", "code_to_insert", "fenced", "shown"]

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
    """An answer shown with ``--format text``, ``json`` or ``code``: its markdown form holds the text in a
    block fenced for ``language`` (no markdown rendering, dollars literal), its plain form the text as it is."""

    language: str = "text"

    def text_markdown(self) -> str:
        return fenced(self.text, self.language) if self.text else ""


def shown(completion: Any, fmt: str) -> Any:
    """The Completion as ``--format`` shows it: markdown as is; text, json and code as a ``PlainText``
    (fenced in its markdown form only)."""
    if fmt == "markdown" or completion.tool_calls:
        return completion
    text, language = completion.text, "text"
    if fmt == "json":
        try:
            text, language = json.dumps(json.loads(code_of(text)), indent=2, ensure_ascii=False), "json"
        except ValueError as exc:
            print(f"the answer is not valid JSON ({exc}); shown as text")
    elif fmt == "code":
        fence = _first_fence(text)
        text, language = code_of(text), (fence[0] if fence else "") or "python"
    elif fmt != "text":
        raise ValueError(f"unknown --format {fmt!r}")
    fields = {f.name: getattr(completion, f.name) for f in dataclasses.fields(completion)}
    return PlainText(**{**fields, "text": text, "language": language})


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


def code_to_insert(text: str) -> str | None:
    """What ``--format code`` inserts as the next cell: the first fenced block's body, else the whole
    answer when it is Python as written (compiled, never run); ``None`` for an answer that holds no
    code — prose — or an empty block."""
    fence = _first_fence(text)
    if fence is not None:
        return fence[1].strip("\n") or None
    code = text.strip("\n")
    if not code.strip():
        return None
    try:
        tree = ast.parse(code, "<answer>")
        if _a_word_or_a_value(tree):  # "Yes", "Paris", "42": an answer, not code
            return None
        compile(tree, "<answer>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # (ValueError: a NUL; the others: a
        return None  # text nested or long enough to exhaust the parser, which is no code to insert either)
    return code


def _a_word_or_a_value(tree: ast.Module) -> bool:
    """Whether a parsed answer is one bare name or one literal: prose that happens to parse as Python."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return False
    value = tree.body[0].value
    return isinstance(value, (ast.Name, ast.Constant)) or (
        isinstance(value, ast.UnaryOp) and isinstance(value.operand, ast.Constant)
    )
