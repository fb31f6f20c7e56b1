"""The GAP markdown block: writer, parser and the scanner that finds every block in a text.

The grammar, with examples, is in ``docs/gap-format.md``. In short::

    [GAP:START]
    From: {platform} | Thread: {thread_id}
    Context: {role} message from {timestamp}
    Entities: "{key}" = "{value}" ({type}; {defined_in}), ...
    Chat: {chat_id}                        <- optional lines, any order, defaults when absent
    Model: {model}
    Parents: {id}, {id}
    Hints: {transform_hints as a JSON object: only the fields that differ from the role's defaults}
    Version: 0.1.0
    [GAP:CONTENT]
    {content, with marker text escaped}
    [GAP:END]

A header value is written bare when that is unambiguous and as a JSON string (``"..."``) otherwise;
``-`` is null. In the content, ``[GAP:START]``, ``[GAP:CONTENT]`` and ``[GAP:END]`` get one backslash
after the ``[`` (``[\\GAP:END]``), and text that already looks like that gets one more, so unescaping
(remove one backslash) is exact.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gtl_nb.gap.errors import GAPFormatError
from gtl_nb.gap.jsonfmt import check_version, hints_from_dict, hints_to_dict, unique_keys
from gtl_nb.gap.limits import MAX_JSON_DEPTH, check_text, json_too_deep, number_too_long
from gtl_nb.gap.model import TIMESTAMP_FORMS, Entity, TransformHints, WrappedMessage, iso_timestamp

START, CONTENT, END = "[GAP:START]", "[GAP:CONTENT]", "[GAP:END]"
_MARKERS = (START, CONTENT, END)
_MARKER_RE = re.compile(r"\[(\\*)GAP:(START|CONTENT|END)\]")
_ESCAPED_MARKER_RE = re.compile(r"\[(\\+)GAP:(START|CONTENT|END)\]")
_HEADER_RE = re.compile(r"(?P<key>[A-Za-z][A-Za-z_-]*)[ \t]*:(?P<rest>.*)\Z", re.DOTALL)
_CONTEXT_RE = re.compile(r"(?P<role>\w+)(?:[ \t]+message(?:[ \t]+from(?=[ \t]|\Z)(?P<ts>.*))?)?\Z", re.I | re.S)
_DECODER = json.JSONDecoder()
_OBJECT_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)  # for Hints:, whose keys may not repeat
_NONE_WORDS = frozenset({"", "none", "-"})


def escape_content(content: str) -> str:
    """Make ``content`` safe between the markers: ``[GAP:END]`` -> ``[\\GAP:END]`` (and so on)."""
    return _MARKER_RE.sub(lambda m: f"[\\{m.group(1)}GAP:{m.group(2)}]", content)


def unescape_content(text: str) -> str:
    """Undo ``escape_content`` exactly."""
    return _ESCAPED_MARKER_RE.sub(lambda m: f"[{m.group(1)[1:]}GAP:{m.group(2)}]", text)


# --- writing -----------------------------------------------------------------------------------


def _printable(json_text: str) -> str:
    """Escape the non-printable characters JSON leaves raw (U+2028, NBSP, ...): one visible line."""
    out = []
    for char in json_text:
        if char.isprintable():
            out.append(char)
        elif ord(char) > 0xFFFF:
            code = ord(char) - 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


def _quote(value: str) -> str:
    """``value`` as a JSON string that stays on one visible line."""
    return _printable(json.dumps(value, ensure_ascii=False))


def _token(value: str | None, forbidden: str = "", reserved: frozenset[str] = frozenset()) -> str:
    """``value`` bare when unambiguous, else quoted; ``None`` is ``-``."""
    if value is None:
        return "-"
    bare = (
        value
        and value == value.strip()
        and value != "-"
        and not value.startswith('"')
        and value.isprintable()
        and not any(char in forbidden for char in value)
        and value.lower() not in reserved
    )
    return value if bare else _quote(value)


def _entities_line(wrapped: WrappedMessage) -> str:
    """The spec's ``"key" = value, ...``: a value bare where a reader of the spec's form takes it whole,
    and the ``(type; defined_in)`` a reader cannot infer only where it differs from what it infers
    (``user_defined`` for a value, ``ambiguous_reference`` for ``-``; defined nowhere)."""
    parts = []
    for key, entity in wrapped.entities.items():
        part = f"{_quote(key)} = {_token(entity.value, ',()')}"
        implied = "ambiguous_reference" if entity.value is None else "user_defined"
        if entity.defined_in is not None:
            part += f" ({_token(entity.type, ';(),')}; {_token(entity.defined_in, ';(),')})"
        elif entity.type != implied:
            part += f" ({_token(entity.type, ';(),')})"
        parts.append(part)
    return ", ".join(parts) if parts else "none"


def _hints_line(wrapped: WrappedMessage) -> str | None:
    """The non-default transform hints as a compact JSON object, or None when all are defaults."""
    defaults = hints_to_dict(TransformHints.for_role(wrapped.role))
    changed = {k: v for k, v in hints_to_dict(wrapped.hints).items() if v != defaults[k]}
    if not changed:
        return None
    return _printable(json.dumps(changed, ensure_ascii=False))


def _context_line(wrapped: WrappedMessage) -> str:
    """The spec's ``Context: {role} message from {timestamp}``; without the ``from`` when there is no time
    (the spec's form has no word for none, and ``from -`` reads as a time called ``-``)."""
    if wrapped.timestamp is None:
        return f"Context: {wrapped.role} message"
    return f"Context: {wrapped.role} message from {_token(wrapped.timestamp)}"


def to_markdown(wrapped: WrappedMessage) -> str:
    """The message as one GAP markdown block (no trailing newline)."""
    lines = [
        START,
        f"From: {_token(wrapped.platform, '|')} | Thread: {_token(wrapped.thread_id, '|')}",
        _context_line(wrapped),
        f"Entities: {_entities_line(wrapped)}",
    ]
    if wrapped.chat_id:
        lines.append(f"Chat: {_token(wrapped.chat_id)}")
    if wrapped.model is not None:
        lines.append(f"Model: {_token(wrapped.model)}")
    if wrapped.parent_messages:
        lines.append("Parents: " + ", ".join(_token(parent, ",", _NONE_WORDS) for parent in wrapped.parent_messages))
    hints = _hints_line(wrapped)
    if hints is not None:
        lines.append(f"Hints: {hints}")
    lines += [CONTENT, escape_content(wrapped.content), END]
    return "\n".join(lines)


# --- reading -----------------------------------------------------------------------------------


class _Cursor:
    """Reads values off one header line, raising errors that name the line and column."""

    def __init__(self, text: str, line: int, offset: int, label: str) -> None:
        self.text = text
        self.pos = 0
        self.line = line
        self.offset = offset  # columns before ``text`` starts on the line
        self.label = label

    def error(self, message: str) -> GAPFormatError:
        return GAPFormatError(f"{self.label}: {message} (column {self.offset + self.pos + 1})", line=self.line)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r":
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, literal: str, *, ignore_case: bool = False) -> None:
        self.skip_space()
        piece = self.text[self.pos : self.pos + len(literal)]
        if piece != literal and not (ignore_case and piece.lower() == literal.lower()):
            found = self.text[self.pos : self.pos + 20] or "end of line"
            raise self.error(f"expected {literal!r}, found {found!r}")
        self.pos += len(literal)

    def value(self, stops: str = "", *, nullable: bool = True) -> str | None:
        """A JSON string, ``-`` (null) or a bare value running up to one of ``stops``."""
        self.skip_space()
        if self.peek() == '"':
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                self.pos = exc.pos
                raise self.error(f"bad quoted value: {exc.msg}") from None
            self.pos = end
            return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            self.pos += 1
        bare = self.text[start : self.pos].strip()
        if bare == "-" or (nullable and not bare):  # nothing written is null too ("" is written quoted)
            if not nullable:
                self.pos = start
                raise self.error("this value cannot be null ('-'); quote it as \"-\" if that is the value")
            return None
        return bare

    def string(self, stops: str = "") -> str:
        value = self.value(stops, nullable=False)
        assert value is not None
        return value


@dataclass
class _Header:
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def _parse_from(cur: _Cursor, header: _Header) -> None:
    header.values["platform"] = cur.string("|")
    if cur.at_end():
        header.values["thread_id"] = None  # lenient: "From: claude.ai" alone
        return
    cur.expect("|")
    cur.expect("Thread:", ignore_case=True)
    header.values["thread_id"] = cur.value("|")
    if not cur.at_end():
        raise cur.error(f"unexpected text {cur.text[cur.pos : cur.pos + 20]!r} after the thread id")


def _parse_context(cur: _Cursor, header: _Header) -> None:
    match = _CONTEXT_RE.match(cur.text.strip())
    if match is None:
        raise cur.error("expected '{role} message from {timestamp}'")
    role = match.group("role").lower()
    if role not in ("assistant", "user", "system"):
        raise cur.error(f"role must be assistant, user or system, got {match.group('role')!r}")
    header.values["role"] = role
    timestamp = match.group("ts")
    if timestamp is None:
        header.values["timestamp"] = None
        return
    lead = len(cur.text) - len(cur.text.lstrip())
    sub = _Cursor(timestamp, cur.line, cur.offset + lead + match.start("ts"), cur.label)
    start = _Cursor(timestamp, cur.line, sub.offset, cur.label)  # (an error points at the timestamp's start)
    header.values["timestamp"] = sub.value()
    if not sub.at_end():
        raise sub.error("unexpected text after the timestamp")
    if header.values["timestamp"] is not None and iso_timestamp(header.values["timestamp"]) is None:
        shown = header.values["timestamp"][:60]
        raise start.error(f"the timestamp must be {TIMESTAMP_FORMS}, not {shown!r}")


def _parse_entities(cur: _Cursor, header: _Header) -> None:
    entities: dict[str, Entity] = {}
    if cur.text.strip().lower() in _NONE_WORDS:
        header.values["entities"] = entities
        return
    while True:
        cur.skip_space()
        if cur.peek() != '"':
            raise cur.error("expected a quoted entity key")
        key_at = cur.pos
        key = cur.string()
        if not key:
            cur.pos = key_at
            raise cur.error("an entity key must not be empty")
        if key in entities:
            raise cur.error(f"entity {key!r} appears twice")
        cur.expect("=")
        value = cur.value(",(")
        entity_type = "ambiguous_reference" if value is None else "user_defined"
        defined_in = None
        cur.skip_space()
        if cur.peek() == "(":
            cur.pos += 1
            entity_type = cur.string(";)")
            cur.skip_space()
            if cur.peek() == ";":
                cur.pos += 1
                defined_in = cur.value(")")
            cur.expect(")")
        entities[key] = Entity(entity_type, value, defined_in)
        if cur.at_end():
            break
        cur.expect(",")
    header.values["entities"] = entities


def _parse_single(name: str, nullable: bool) -> Callable[[_Cursor, _Header], None]:
    def parse(cur: _Cursor, header: _Header) -> None:
        header.values[name] = cur.value() if nullable else cur.string()
        if not cur.at_end():
            raise cur.error("unexpected text after the value")

    return parse


def _parse_parents(cur: _Cursor, header: _Header) -> None:
    parents: list[str] = []
    if cur.text.strip().lower() not in _NONE_WORDS:
        while True:
            parents.append(cur.string(","))
            if cur.at_end():
                break
            cur.expect(",")
    header.values["parent_messages"] = tuple(parents)


def _parse_hints(cur: _Cursor, header: _Header) -> None:
    cur.skip_space()
    if json_too_deep(cur.text):
        raise cur.error(f"arrays/objects nested deeper than {MAX_JSON_DEPTH}")
    try:
        data, end = _OBJECT_DECODER.raw_decode(cur.text, cur.pos)
    except GAPFormatError as exc:
        raise cur.error(exc.reason) from None
    except json.JSONDecodeError as exc:
        cur.pos = exc.pos
        raise cur.error(f"expected a JSON object: {exc.msg}") from None
    except ValueError:  # not a JSONDecodeError: a number too long to convert (see gap.limits)
        raise cur.error(f"expected a JSON object: {number_too_long()}") from None
    cur.pos = end
    if not isinstance(data, dict) or not cur.at_end():
        raise cur.error("expected one JSON object")
    header.values["hints"] = data


def _parse_version(cur: _Cursor, header: _Header) -> None:
    check_version(cur.string(), path="Version", line=cur.line)


_PARSERS: dict[str, Callable[[_Cursor, _Header], None]] = {
    "from": _parse_from,
    "context": _parse_context,
    "entities": _parse_entities,
    "chat": _parse_single("chat_id", nullable=False),
    "model": _parse_single("model", nullable=True),
    "parents": _parse_parents,
    "hints": _parse_hints,
    "version": _parse_version,
}
_LABELS = {key: key.capitalize() for key in _PARSERS}


def _build(header_lines: Iterable[tuple[int, str]], content: str, start_line: int) -> WrappedMessage:
    header = _Header()
    for number, raw in header_lines:
        if not raw.strip():
            continue
        match = _HEADER_RE.match(raw.strip())
        if match is None:
            raise GAPFormatError(f"expected a 'Key: value' header line, found {raw.strip()[:40]!r}", line=number)
        key = match.group("key").lower()
        parser = _PARSERS.get(key)
        if parser is None:
            continue  # a header from a newer version of the format: ignored
        if key in header.lines:
            raise GAPFormatError(f"{_LABELS[key]} appears twice (first at line {header.lines[key]})", line=number)
        header.lines[key] = number
        rest = match.group("rest")
        parser(_Cursor(rest, number, len(raw) - len(raw.lstrip()) + match.start("rest"), _LABELS[key]), header)
    for required in ("from", "context"):
        if required not in header.lines:
            raise GAPFormatError(
                f"the block has no {_LABELS[required]}: line (block opened at line {start_line})",
                line=start_line,
            )
    values = header.values
    role = str(values["role"])
    hints_data = values.get("hints")
    try:
        hints = hints_from_dict(hints_data, role, "Hints") if isinstance(hints_data, dict) else None
        return WrappedMessage(
            content=content,
            platform=str(values["platform"]),
            chat_id=str(values.get("chat_id", "")),
            role=role,
            model=values.get("model"),
            timestamp=values.get("timestamp"),
            thread_id=values.get("thread_id"),
            parent_messages=values.get("parent_messages", ()),
            entities=values.get("entities", {}),
            transform_hints=hints,
        )
    except GAPFormatError as exc:
        raise GAPFormatError(exc.reason, line=header.lines.get("hints", start_line), path=exc.path) from None
    except (TypeError, ValueError) as exc:
        raise GAPFormatError(f"invalid block: {exc}", line=start_line) from None


def parse_all(text: str) -> list[WrappedMessage]:
    """Every GAP block in ``text``, in order; text outside blocks is ignored.

    Markers count only on a line of their own. A malformed block raises ``GAPFormatError`` naming
    the line: a marker out of order, a block without ``[GAP:END]``, a bad header line; so does a text
    over the limits of ``gap.limits``. Nothing else is raised for any ``str``.
    """
    text = check_text(text, "a GAP markdown text")
    try:
        return _parse_blocks(text)
    except RecursionError:  # the one boundary: no input may escape as a foreign error
        raise GAPFormatError("nested too deeply to parse") from None


def _lines(text: str, start: int, stop: int, number: int) -> Iterator[tuple[int, int, int]]:
    """``(number, start, end)`` of each line of ``text[start:stop]`` (``end`` before its line break).

    One at a time, as offsets: splitting a text into a list of its lines held some twenty times its
    size, fifty for an unclosed header, before anything was read.
    """
    while True:
        end = text.find("\n", start, stop)
        if end < 0:
            yield number, start, stop
            return
        yield number, start, end
        start, number = end + 1, number + 1


def _marker(text: str, start: int, end: int) -> str | None:
    """The marker the line ``text[start:end]`` is, or None (the search first: no line is copied for it)."""
    if text.find("[GAP:", start, end) < 0:
        return None
    marker = text[start:end].strip()
    return marker if marker in _MARKERS else None


def _header_lines(text: str, start: int, stop: int, number: int) -> Iterator[tuple[int, str]]:
    """The numbered header lines between a block's ``[GAP:START]`` and ``[GAP:CONTENT]``."""
    if start < stop:
        for line_number, begin, end in _lines(text, start, stop, number):
            yield line_number, text[begin:end]


def _parse_blocks(text: str) -> list[WrappedMessage]:
    blocks: list[WrappedMessage] = []
    state = "outside"
    start_line = header_start = header_stop = content_start = 0
    crlf = False
    for number, start, end in _lines(text, 0, len(text), 1):
        marker = _marker(text, start, end)
        if marker is None:
            continue
        if state == "outside":
            if marker != START:
                raise GAPFormatError(f"{marker} without a [GAP:START] before it", line=number)
            state, start_line, header_start = "header", number, end + 1
        elif state == "header":
            if marker != CONTENT:
                problem = "a new [GAP:START]" if marker == START else "[GAP:END]"
                raise GAPFormatError(
                    f"{problem} before the [GAP:CONTENT] of the block opened at line {start_line}",
                    line=number,
                )
            state, header_stop, content_start = "content", start - 1, end + 1
            crlf = end > start and text[end - 1] == "\r"
        else:
            if marker != END:
                raise GAPFormatError(
                    f"{marker} inside the content of the block opened at line {start_line} (is its [GAP:END] missing?)",
                    line=number,
                )
            content = text[content_start : start - 1] if start > content_start else ""
            if crlf and content.endswith("\r"):
                content = content[:-1]  # the line break before [GAP:END] in a CRLF file
            header = _header_lines(text, header_start, header_stop, start_line + 1)
            blocks.append(_build(header, unescape_content(content), start_line))
            state = "outside"
    if state != "outside":
        missing = "[GAP:CONTENT] and [GAP:END]" if state == "header" else "[GAP:END]"
        raise GAPFormatError(f"the block opened here has no {missing}", line=start_line)
    return blocks


def from_markdown(text: str) -> WrappedMessage:
    """Parse the one GAP block in ``text`` (surrounding prose is ignored).

    No block, or more than one, is a ``GAPFormatError``; use ``parse_all`` for several.
    """
    blocks = parse_all(text)
    if len(blocks) != 1:
        found = "no [GAP:START] block" if not blocks else f"{len(blocks)} blocks (use parse_all)"
        raise GAPFormatError(f"expected exactly one GAP block, found {found}")
    return blocks[0]
