"""How any text reaches a notebook's markdown: shown as written, its dollars as dollars, never live.

JupyterLab, Notebook 7 and nbconvert's HTML pages run MathJax over the rendered output, and MathJax
pairs two ``$`` of one run of text into a formula whether the markdown escaped them (``\\$``, ``&#36;``)
or not. It never pairs a ``$`` standing in an element of its own, so that is how a dollar is written
(``DOLLAR``).

The markdown of an output the kernel produced is rendered with its raw HTML (JupyterLab trusts a
session's own outputs; nbconvert's HTML keeps it): a model repeating ``<img src=x onerror=…>`` — from a
document it summarised, say — would run script in the notebook's page, which can drive the kernel.
So nothing of a text is passed on as written. Every ``<``, ``&`` and ``"`` is escaped and a script's
scheme (``javascript:``) broken by an invisible word joiner; code is written as HTML of its own whose
text is all entities: a code block (fenced or indented) as one line, ``<pre><code>…</code></pre>``, at
the indentation of the list item holding it; an inline span as ``<code>…</code>``. The text's blocks
are read as CommonMark reads them — list items and their content's indentation, block quotes, fences,
indented code, headings — so that code shows as code where it was written. Where this reading differs
from a renderer's (loose indentation renderers read differently among themselves, a tab after a list
marker, math JupyterLab takes out before rendering, a table row), the
difference shows — text as code, or code as text — but nothing turns live: every piece of the text is
written escaped, whatever block a renderer puts it in.

``no_math_markdown`` for text with blocks (an answer), ``no_math_inline`` for one line where no block
may start (a table cell), ``no_math_html`` for HTML, ``code_span`` for code of one's own.
"""

from __future__ import annotations

import bisect
import html
import re

__all__ = ["DOLLAR", "code_span", "no_math_html", "no_math_inline", "no_math_markdown"]

DOLLAR = "<span>&#36;</span>"
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t\r\n]|$)")
_LIST_MARKER = re.compile(r" {0,3}(?:[-+*]|[0-9]{1,9}[.)])(?=[ \r\n]|$)")
# "javascript:", "vbscript:", "data:" (of any type: text/html, image/svg+xml, "text\/html" once markdown
# reads the escape) — or with "\:" (markdown reads that escape as the colon); linear
_SCRIPT_SCHEME = re.compile(r"(?i)(?:java|vb)(?=script\\*:)|data(?=\\*:)")
_ESCAPED_SPECIAL = re.compile(r'\\(?=[<&"])')  # a backslash right before what ``_no_html`` escapes
_LINE_END = re.compile(r"(\r\n|\r|\n)")  # CommonMark's line endings (``_lines``)
_WORD_JOINER = "\u2060"  # invisible: "java⁠script:" reads the same and is no scheme a browser runs
_QUOTE = re.compile(r" {0,3}>")
_MAX_ITEM_DEPTH = 32  # list items nested deeper are read as their parent's text (a bound on the stack)
_MAX_QUOTE_DEPTH = 8  # block quotes nested deeper are read as text (a bound on the readers' recursion)


def no_math_html(text: str) -> str:
    """``text`` escaped for HTML, each ``$`` in an element of its own (never the start of a formula) and
    a ``javascript:`` link's scheme broken (markdown around the HTML would still make it a link)."""
    return _disarmed(html.escape(text)).replace("$", DOLLAR)  # (quotes too: see ``_no_html``)


def no_math_markdown(text: str) -> str:
    """Markdown ``text`` whose dollar signs show as dollars, never as LaTeX, and which holds no live HTML.

    Nothing of ``text`` is passed on as written (module docstring): a code block, fenced or indented,
    becomes one line, a ``<pre><code>`` element whose text is entities (a fence's language kept as the
    code's class), at the indentation of the list item it is in; an inline code span a ``<code>``
    element alike (``code_span``); elsewhere every ``<``, ``&`` and ``"`` is escaped, a ``javascript:``
    (or ``vbscript:``, ``data:``) scheme broken, and each ``$`` (or ``\\$``) becomes
    ``DOLLAR``. ``\\(…\\)`` and ``\\[…\\]`` math still renders. One pass over the text.
    """
    blocks = _Blocks()
    for line in _lines(text):
        blocks.line(line)
    return blocks.end()


class _Blocks:
    """CommonMark's block structure, as far as code needs it, read line by line (``no_math_markdown``).

    Kept: the open list items (the column each one's content starts at, innermost last), the paragraph
    being gathered (its text escaped when it ends, so a code span may cross its lines), the code block
    being gathered — a fence (its marker, the column of the item it is in, its own indentation, its
    language) or an indented block (the column of its item) — and an open block quote: its column and
    the reader of its content, whose markdown is written back behind ``>`` when the quote ends (quotes
    nested ``_MAX_QUOTE_DEPTH`` deep are read as text)."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth  # the quotes around this reader's text
        self.quote: tuple[int, _Blocks] | None = None
        self.item_opened_empty = False  # the last line was a list marker with nothing after it
        self.out: list[str] = []
        self.paragraph: list[str] = []
        self.items: list[int] = []
        self.fence: tuple[str, int, int, str] | None = None  # marker, item column, indentation, language
        self.indented: int | None = None  # an indented code block's item column
        self.code: list[str] = []  # the lines of the code block being gathered
        self.code_tight = False  # it is an empty item's first block: no blank line before it (one would end the item)
        self.after_blank = True  # the last line was blank (or there was none)

    def line(self, raw: str) -> None:
        line = _tabs_expanded(raw)  # (the structure's view, indentation in columns; code keeps its tabs)
        width = len(line) - len(line.lstrip(" "))
        blank = not line.strip()
        if self.quote is not None:
            column, inner = self.quote
            marker = _QUOTE.match(line, column) if width >= column else None
            if marker:
                after = marker.end() + (line[marker.end() : marker.end() + 1] == " ")
                inner.line(line[after:])
                return
            if not blank and inner.paragraph and not inner.after_blank and _plain_text(line[column:]):
                inner.line(line)  # a paragraph's lazy continuation, inside the quote
                return
            self._end_quote()
        if self.fence is not None:
            marker, column, indent, _ = self.fence
            if blank or width >= column:
                if not blank and _closes_fence(line[column:], marker):
                    self._end_code()
                else:
                    self.code.append(_dedented(raw, column + indent))
                return
            self._end_code()  # a line less indented than the fence's list item ends the item, and the fence
        if self.indented is not None:
            if blank or width >= self.indented + 4:
                self.code.append(_dedented(raw, self.indented + 4))
                return
            self._end_code()
        if blank:
            self._flush()
            self.out.append(line)
            self.after_blank = True
            return
        opened_empty, self.item_opened_empty = self.item_opened_empty, False
        self._block_line(raw, line, width, opened_empty)
        self.after_blank = False

    def _block_line(self, raw: str, line: str, width: int, after_empty_item: bool = False) -> None:
        """A line that is neither blank nor in a code block (``line``: ``raw``, its indentation's tabs expanded)."""
        items = self.items
        if items and width < items[-1]:  # not inside the innermost item's content
            landing = next((column for column in reversed(items) if column <= width), 0)
            if self.paragraph and not self.after_blank and _plain_text(line[landing:]):
                self.paragraph.append(line)  # a paragraph's lazy continuation: the items stay open
                return
            while items and width < items[-1]:
                items.pop()  # the item ended
        column = items[-1] if items else 0
        rest = line[column:]
        if width - column >= 4:
            if self.paragraph:  # a paragraph's continuation, however indented
                self.paragraph.append(line)
            else:  # after a blank line or a block: indented code
                self.indented, self.code_tight = column, after_empty_item
                self.code.append(_dedented(raw, column + 4))
            return
        if _QUOTE.match(rest) and self.depth < _MAX_QUOTE_DEPTH:
            self._flush()
            self.quote = (column, _Blocks(self.depth + 1))
            self.line(raw)  # (now read as the quote's first line)
            return
        marker = _LIST_MARKER.match(rest)
        if marker and len(items) < _MAX_ITEM_DEPTH:
            self._flush()
            after = rest[marker.end() :]
            spaces = len(after) - len(after.lstrip(" "))
            # the content starts after the marker and its spaces; after five or more, one space (the rest is code)
            items.append(column + marker.end() + (spaces if 1 <= spaces <= 4 and after.strip() else 1))
            self.paragraph.append(line)
            self.item_opened_empty = not after.strip()
            return
        opening = _FENCE_OPEN.match(rest)
        info = rest[opening.end() :].strip() if opening else ""
        if opening and opening.group(1)[0] == "`" and "`" in info:
            opening = None  # a backtick in the info string: no fence to CommonMark, text to escape
        if opening:
            self._flush()
            self.fence = (opening.group(1), column, opening.start(1), info.split(" ")[0])
            self.code_tight = after_empty_item
            return
        if _HEADING.match(rest):  # a heading is a block of its own line: no span crosses it
            self._flush()
            self.paragraph.append(line)
            self._flush()
            return
        self.paragraph.append(line)

    def _flush(self) -> None:
        if self.paragraph:
            self.out.append(_escape_inline("".join(self.paragraph)))
            self.paragraph.clear()

    def _end_code(self) -> None:
        """Write the code block gathered (an indented one without its trailing blank lines, which follow it)."""
        trailing: list[str] = []
        if self.fence is not None:
            column, language = self.fence[1], self.fence[3]
        else:
            column, language = self.indented or 0, ""
            while self.code and not self.code[-1].strip():
                trailing.append(self.code.pop())
        self.out.append(_code_block(column, language, self.code, tight=self.code_tight))
        self.out += trailing
        self.fence, self.indented, self.code, self.code_tight = None, None, [], False

    def _end_quote(self) -> None:
        """Write the quote's content, read as text of its own, back behind its ``>`` markers."""
        assert self.quote is not None
        column, inner = self.quote
        self.quote = None
        prefix = " " * column + "> "
        self.out.append("".join(prefix + piece for piece in _lines(inner.end())))

    def end(self) -> str:
        if self.quote is not None:
            self._end_quote()
        self._flush()
        if self.fence is not None or self.indented is not None:  # a fence not closed: code to the end
            self._end_code()
        return "".join(self.out)


def _tabs_expanded(line: str) -> str:
    """``line`` with the tabs of its indentation as spaces to the next multiple of four (CommonMark's tab stops)."""
    body = line.lstrip(" \t")
    indentation = line[: len(line) - len(body)]
    return indentation.expandtabs(4) + body if "\t" in indentation else line


def _plain_text(rest: str) -> bool:
    """Whether ``rest`` — a line from the column of the list item it would be in — is a paragraph's text
    there: indented code cannot interrupt a paragraph, and no item, fence or heading opens there."""
    if len(rest) - len(rest.lstrip(" ")) > 3:
        return True
    return not (_LIST_MARKER.match(rest) or _FENCE_OPEN.match(rest) or _HEADING.match(rest))


def _dedented(line: str, columns: int) -> str:
    """``line`` without up to ``columns`` columns of its indentation (a tab reaching past them leaves the
    rest of its width as spaces); what follows, tabs included, as written (a Makefile's recipe keeps its tab)."""
    at = column = 0
    while at < len(line) and column < columns:
        char = line[at]
        if char == "\t":
            stop = column + 4 - column % 4
            if stop > columns:
                return " " * (stop - columns) + line[at + 1 :]
            column = stop
        elif char == " ":
            column += 1
        else:
            break
        at += 1
    return line[at:]


def _lines(text: str) -> list[str]:
    """``text``'s lines as CommonMark splits them (at ``\\n``, ``\\r\\n`` and ``\\r`` only: ``str.splitlines`` also
    splits at U+2028 and other characters a renderer does not), each with its ending; in one pass."""
    pieces = _LINE_END.split(text)  # line, ending, line, ending, …, last line
    lines = [pieces[index] + pieces[index + 1] for index in range(0, len(pieces) - 1, 2)]
    return [*lines, pieces[-1]] if pieces[-1] else lines


def _code_block(indent: int, language: str, lines: list[str], *, tight: bool = False) -> str:
    """A code block as one line of markdown, between blank lines (``tight``: none before it): a
    ``<pre><code>`` element (a list item's when indented as its content) whose text is entities, its
    line breaks included — whatever a renderer made of the lines around it, nothing in it can be read
    as markdown or HTML."""
    code = "".join(lines)
    if "\r" in code:  # (a carriage return's entity shows as a space in a page, not as a line break)
        code = code.replace("\r\n", "\n").replace("\r", "\n")
    code = code[:-1] if code.endswith("\n") else code
    language = "".join(char for char in language if char.isalnum() or char in "+-_.#")[:40]
    kind = f' class="language-{language}"' if language else ""
    body = "".join(_ENTITY.get(char, char) for char in code)
    return f"{'' if tight else chr(10)}{' ' * indent}<pre><code{kind}>{body}</code></pre>\n\n"


def no_math_inline(text: str) -> str:
    """``text`` on one line of markdown where no block of its own may start — a table cell, after a
    label: its whitespace runs made one space, then written as ``no_math_markdown`` writes a paragraph's
    text (dollars as dollars, ``<`` and ``&`` escaped, code spans as ``code_span``). Text whose blocks
    matter (a fence) goes through ``no_math_markdown``, at the start of a line."""
    return _escape_inline(" ".join(text.split()))


def code_span(text: str) -> str:
    """``text`` as one inline code element: ``<code>`` holding it with every character but a letter, a
    digit or a space written as an entity, so no markdown of it (a backtick, a ``|`` of a table row, a
    line break, a link) and no HTML is read — only shown, in code's type, whatever surrounds it."""
    return f"<code>{''.join(_ENTITY.get(char, char) for char in text)}</code>"


_ENTITY = {char: f"&#{ord(char)};" for char in map(chr, range(128)) if not (char.isalnum() or char == " ")}
"""Every ASCII character but letters, digits and the space, as its numeric entity (``code_span``)."""


def _span_text(inside: str) -> str:
    """A code span's text as CommonMark makes it: line endings as spaces, then one space stripped from
    each end when both ends have one and it is not all spaces."""
    inside = inside.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    if len(inside) > 1 and inside[0] == " " and inside[-1] == " " and inside.strip(" "):
        return inside[1:-1]
    return inside


def _closes_fence(line: str, fence: str) -> bool:
    """Whether ``line`` (from its list item's column) closes a block ``fence`` opened, as CommonMark reads
    it: up to 3 spaces, at least as many of its character, then only spaces and tabs."""
    body = line.rstrip("\r\n")
    indent = len(body) - len(body.lstrip(" "))
    if indent > 3:
        return False
    rest = body[indent:]
    run = len(rest) - len(rest.lstrip(fence[0]))
    return run >= len(fence) and not rest[run:].strip(" \t")


def _escape_inline(text: str) -> str:
    """Dollars and HTML escaped outside code spans, each span written as ``code_span`` writes it.

    As CommonMark reads spans: a run of N backticks opens one, closed by the next run of exactly N; an
    opening backtick after an odd number of backslashes is text (the run opens with the rest), while
    inside a span a backslash is text, so it never keeps a run from closing one. (Were this reading
    wrong somewhere, nothing turns live: a span's text is all entities, and the text around is escaped.)"""
    runs = [(match.start(), match.end()) for match in re.finditer(r"`+", text)]
    of_length: dict[int, list[int]] = {}  # run length -> the indexes of the runs of that length, in order
    for index, (start, end) in enumerate(runs):
        of_length.setdefault(end - start, []).append(index)
    pieces: list[str] = []
    position = index = 0
    while index < len(runs):
        start, end = runs[index]
        before = start
        while before > position and text[before - 1] == "\\":  # (backslashes since the last span: linear)
            before -= 1
        if (start - before) % 2:  # "\`": that backtick is text; the run opens with the rest
            start += 1
        candidates = of_length.get(end - start, [])
        at = bisect.bisect_right(candidates, index)
        closing = candidates[at] if at < len(candidates) else None
        if start == end or closing is None:  # no span opens here: the backticks are plain text
            index += 1
            continue
        inside = text[end : runs[closing][0]]
        pieces += [_escape_dollars(text[position:start]), code_span(_span_text(inside))]
        position, index = runs[closing][1], closing + 1
    pieces.append(_escape_dollars(text[position:]))
    return "".join(pieces)


def _no_html(text: str) -> str:
    """``text`` with every ``<``, ``&`` and ``"`` escaped and a script's scheme disarmed: shown as written,
    never live. (``"``: JupyterLab puts math it took out before rendering back into an image's ``alt`` or
    a link's title unescaped, where a quote would end the attribute.)"""
    if "<" in text or "&" in text or '"' in text:
        if "\\" in text:
            text = _without_escaping_backslashes(text)
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    return _disarmed(text)


def _without_escaping_backslashes(text: str) -> str:
    """``text`` without the backslash that escapes a ``<``, ``&`` or ``"`` (``\\"`` is markdown for ``"``):
    left before the entity ``_no_html`` writes, it would escape the entity's ``&`` and show it as typed.
    Each run of backslashes is looked at once, by the character it ends at: linear."""
    pieces: list[str] = []
    position = 0
    for match in _ESCAPED_SPECIAL.finditer(text):
        start = match.start()
        run_start = start
        while run_start > position and text[run_start - 1] == "\\":
            run_start -= 1
        if (start + 1 - run_start) % 2:  # an odd run: its last backslash escapes the character
            pieces.append(text[position:start])
            position = start + 1
    pieces.append(text[position:])
    return "".join(pieces)


def _disarmed(text: str) -> str:
    """``javascript:`` with an invisible word joiner inside it: the same to read, no scheme to a browser
    (escaping the colon would not do: markdown decodes entities and backslash escapes in a link)."""
    return _SCRIPT_SCHEME.sub(lambda match: match.group(0) + _WORD_JOINER, text) if ":" in text else text


def _escape_dollars(text: str) -> str:
    text = _no_html(text)
    if "$" not in text:
        return text
    out: list[str] = []
    slashes = 0
    for char in text:
        if char == "$":
            if slashes % 2:  # "\$" was the markdown escape: the element does its work now
                out.pop()
            out.append(DOLLAR)
        else:
            out.append(char)
        slashes = slashes + 1 if char == "\\" else 0
    return "".join(out)
