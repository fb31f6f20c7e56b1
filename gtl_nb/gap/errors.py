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
        self.reason = message
        self.line = line
        self.path = path
        where = []
        if line is not None:
            where.append(f"line {line}")
        if path:
            where.append(path)
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class GAPLimitError(GAPFormatError):
    """A GAP text beyond one of the limits of ``gap.limits``: too long, JSON nested too deep, a number
    with too many digits.

    The text may be well-formed otherwise: a reader that tells GAP text from other text should report
    this error rather than take the text for something else.
    """
