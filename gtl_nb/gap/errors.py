"""The GAP errors: a text (markdown or JSON) that does not follow the format, or is beyond a limit.

Caller mistakes with Python values (a wrong role, an unknown platform) are plain ``ValueError`` /
``TypeError``; ``GAPFormatError`` is for *text* that cannot be parsed, and says what is wrong and where.
"""

from __future__ import annotations


class GAPFormatError(ValueError):
    """A GAP markdown block or JSON document is malformed.

    ``line`` is the 1-based line number in the parsed text (markdown) when known; ``path`` is the
    dotted location inside a JSON document (``message.source.role``) when known. Both also appear
    in the message, so ``str(error)`` alone tells the reader where to look.
    """

    def __init__(self, message: str, *, line: int | None = None, path: str | None = None) -> None:
        # one short line whatever the text held: a path names a document's keys and a message may quote
        # its values, and either can be 16 MiB of newlines (an error is read, logged and shown in cells)
        self.reason = one_line(message, MAX_SHOWN)
        self.line = line
        self.path = None if path is None else one_line(path, MAX_PATH_SHOWN)
        where = []
        if line is not None:
            where.append(f"line {line}")
        if self.path:
            where.append(self.path)
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + self.reason)


MAX_SHOWN = 300
"""Characters of an error's own words at most (what it quotes of the text is cut to fit)."""
MAX_PATH_SHOWN = 120
"""Characters of a JSON path in an error at most (a key may be any text)."""


def one_line(text: str, limit: int) -> str:
    """``text`` as one line of at most ``limit`` characters (and an ellipsis): control characters
    written as escapes (``\\n``), the rest cut."""
    if len(text) <= limit and text.isprintable():
        return text
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text[: limit + 1])
    return shown if len(shown) <= limit and len(text) <= limit else shown[:limit] + "…"


class GAPLimitError(GAPFormatError):
    """A GAP text beyond one of the limits of ``gap.limits``: too long, JSON nested too deep, a number
    with too many digits.

    The text may be well-formed otherwise: a reader that tells GAP text from other text should report
    this error rather than take the text for something else.
    """
