"""Entity detection and the entity operations: detect, merge, update, find undefined.

Detection reads prose only: nothing inside fenced code blocks, inline code spans or URLs is
detected. It finds two kinds of entities.

**Ambiguous references** — a determiner (the, this, that, these, those) followed by a head noun from
``vocabulary.HEAD_NOUNS`` or its plural ("the system", "that method", "these APIs"), matched
case-insensitively. "this"/"that" only take the singular and "these"/"those" only the plural, so the
conjunction in "ensure that files close" is not a reference. The key is the phrase lower-cased with
``_`` for spaces (``the_system``, ``these_apis``); the type is ``ambiguous_reference`` and the value
``None``. A reference is *immediately defined* — and then is not ambiguous — when the name follows
directly (after optional ``:``, ``,``, ``(``, "called" or "named"): a typed entity ("the database
PostgreSQL 14"), an inline code span ("the function `parse()`"), a quoted name, an identifier that
looks like code or a product (CamelCase, or with a digit or ``_``: "the service AuthService", "the
model GPT-4"), or, after "version", a bare version number. The reference is then one defined entity
under its own key, valued with the name and typed like it (``the_database`` = "PostgreSQL 14", type
``database``; ``technical_component`` when the name has no type of its own).

**Typed entities**, one entity per span, the most specific reading winning where spans compete
(a named product beats a file name, so "Node.js" is software, not a ``.js`` file):

* ``database`` / ``framework``: a name from ``vocabulary.DATABASES`` / ``FRAMEWORKS``, keyed by its
  canonical name (``postgresql``, ``django``); a version that follows stays in the value:
  "PostgreSQL 14.5" is one ``database`` entity ``postgresql`` = "PostgreSQL 14.5".
* ``software_version``: other software from ``vocabulary.SOFTWARE`` *followed by a version*
  ("Python 3.11" -> ``python``), a ``v``-prefixed dotted version ("v2.3.1" -> ``v2_3_1``) or
  "version 2.3" (-> ``v2_3``).
* ``file_reference``: paths and file names with a known extension (``src/app.py``, ``config.yaml``),
  rooted paths (``/etc/hosts``, ``./run``, ``~/notes``), dot files (``.env``) and well-known names
  (``Dockerfile``); keyed by the path exactly as written.
* ``technical_component``: CamelCase identifiers ending in a component word from
  ``vocabulary.COMPONENT_SUFFIXES`` ("AuthService" -> ``auth_service``) and empty calls outside code
  ("parse_args()" -> ``parse_args``).

When a key occurs more than once, the first occurrence wins, except that a value replaces ``None``
and a longer value that extends the kept one replaces it ("PostgreSQL" then "PostgreSQL 14.5").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gtl_nb.gap import vocabulary as vocab
from gtl_nb.gap.model import Entity, WrappedMessage, as_entity
from gtl_nb.gap.spans import SpanSet, code_spans, overlaps, protected_spans

# Boundaries for names: not glued to a word, a path, an e-mail address or a hyphenated compound.
_BEFORE_CHARS = r"[\w./\\@#$-]"
_BEFORE = rf"(?<!{_BEFORE_CHARS})"
_AFTER = r"(?![\w@]|[./\\-]\w)"
_VERSION = r"v?\d+(?:\.\d+){0,3}(?:\.x|[-.+]?(?:alpha|beta|rc|dev|post|pre|a|b)\.?\d*)?"


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    key: str
    type: str
    value: str
    priority: int


def _product_regex(pattern: str, case_sensitive: bool, *, version_required: bool) -> re.Pattern:
    version = rf"[ \t]?(?P<version>{_VERSION})"
    version_part = version if version_required else rf"(?:{version})?"
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(rf"{_BEFORE}(?P<name>{pattern}){version_part}{_AFTER}", flags)


def _products(
    products: Iterable[vocab.Product], entity_type: str, priority: int
) -> list[tuple[str, str, int, re.Pattern]]:
    """``(key, type, priority, regex)`` for each named product; software needs a version after it."""
    required = entity_type == "software_version"
    return [
        (key, entity_type, priority, _product_regex(pattern, case_sensitive, version_required=required))
        for key, pattern, case_sensitive in products
    ]


# Every named product, in the order their hits are listed (the order overlap resolution breaks ties by).
_PRODUCTS = (
    *_products(vocab.DATABASES, "database", 4),
    *_products(vocab.FRAMEWORKS, "framework", 4),
    *_products(vocab.SOFTWARE, "software_version", 3),
)
# Scanning the text once per product cost ~2 µs a character. Instead one scan finds the positions
# where some product's name may start, and only the products whose name can start with the
# character there are tried there (see _product_hits).


def _alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of a name pattern (``|`` outside parentheses)."""
    alternatives, depth, start, index = [], 0, 0, 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 1  # an escaped character is never a parenthesis or a bar
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif char == "|" and depth == 0:
            alternatives.append(pattern[start:index])
            start = index + 1
        index += 1
    return [*alternatives, pattern[start:]]


def _name_starts() -> list[tuple[int, str, str, bool]]:
    """``(product index, first character, rest, case-sensitive)`` for each spelling of each name.

    Every spelling starts with one literal character (a letter or ``\\.``), so it splits into that
    character and the rest.
    """
    starts = []
    for index, (_key, pattern, case_sensitive) in enumerate((*vocab.DATABASES, *vocab.FRAMEWORKS, *vocab.SOFTWARE)):
        for alternative in _alternatives(pattern):
            cut = 2 if alternative.startswith("\\") else 1
            first, rest = alternative[:cut], alternative[cut:]
            if not (first.isalpha() or first == r"\.") or rest[:1] in ("?", "*", "+", "{"):
                raise ValueError(f"a product name must start with a literal character: {alternative!r}")
            starts.append((index, first, rest, case_sensitive))
    return starts


def _by_first_character(starts: list[tuple[int, str, str, bool]]) -> str:
    """All the spellings as one alternation grouped by first character ("(?i:p(?:ostgres|ytorch|...))").

    A position then costs one test per first character rather than one per spelling: three times
    faster than the plain alternation.
    """
    groups: dict[tuple[str, bool], list[str]] = {}
    for _index, first, rest, case_sensitive in starts:
        groups.setdefault((first if case_sensitive else first.lower(), case_sensitive), []).append(rest)
    parts = []
    for (first, case_sensitive), rests in groups.items():
        part = f"{first}(?:{'|'.join(rests)})"
        parts.append(part if case_sensitive else f"(?i:{part})")
    return "|".join(parts)


_NAME_STARTS = _name_starts()
# Where some product's name starts (same look-behind, same spellings, same case rule as its regex):
# a superset of the positions where a product's regex can match.
_PRODUCT_START_RE = re.compile(rf"{_BEFORE}(?=(?:{_by_first_character(_NAME_STARTS)}))")


def _first_characters(starts: list[tuple[int, str, str, bool]]) -> tuple[re.Pattern, ...]:
    """For each product, a regex for one character its names can start with, under its case rule.

    Matched against a single character, it tells which products can start there, with the Unicode
    case folding the product regexes themselves apply (the Kelvin sign starts "Kubernetes").
    """
    firsts: dict[int, list[str]] = {}
    flags: dict[int, int] = {}
    for index, first, _rest, case_sensitive in starts:
        firsts.setdefault(index, []).append(first)
        flags[index] = 0 if case_sensitive else re.IGNORECASE
    return tuple(re.compile(rf"(?:{'|'.join(chars)})", flags[index]) for index, chars in sorted(firsts.items()))


_FIRST_CHARACTERS = _first_characters(_NAME_STARTS)
# The patterns below that start with a literal character check the boundary before it only after it
# (a look-behind over both): a search then skips straight to that character instead of trying the
# look-behind at every position. The matches are the same.
_BARE_VERSION_RE = re.compile(
    rf"[Vv](?<!{_BEFORE_CHARS}[Vv])(?:(?<=v)(?P<v>\d+(?:\.\d+){{1,3}}(?:-[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?)"
    rf"|ersion[ \t]+(?P<word>\d+(?:\.\d+){{1,3}}))(?![\w-]|\.\w)"
)
_BARE_FILE_NAMES = "|".join(rf"{name[0]}(?<!\w{name[0]}){name[1:]}" for name in vocab.BARE_FILE_NAMES)
_EXT = "|".join(sorted(vocab.FILE_EXTENSIONS, key=len, reverse=True))
_FILE_RES = (
    # a path with a directory part and an extension
    re.compile(rf"(?<![\w.@/\\~-])(?:~/|\.{{1,2}}/|/)?(?:[\w.-]+/)+[\w.-]*\.(?:{_EXT})(?![\w/-]|\.\w)", re.IGNORECASE),
    # a rooted path: /a/b (two parts at least), ./x, ../x, ~/x
    re.compile(r"(?<![\w.@/\\~:-])(?:~|\.{1,2}(?=/)|(?=/[\w.-]*\w/))(?:/[\w.-]*\w)+(?![\w/-])"),
    # a bare file name with an extension
    re.compile(rf"(?<![\w.@/\\~-])[\w-]+(?:\.[\w-]+)*\.(?:{_EXT})(?![\w-]|\.\w)", re.IGNORECASE),
    re.compile(rf"\.(?<![\w./]\.)(?:{'|'.join(map(re.escape, vocab.DOT_FILES))})(?:\.\w+)?(?![\w-]|\.\w)"),
    # a well-known name at the start of a word (as \b before it, checked after its first letter)
    re.compile(rf"(?:{_BARE_FILE_NAMES})(?![\w-]|\.\w)"),
)
# What every match of each _FILE_RES pattern holds, for _finditer_in_runs (None: searched throughout).
_FILE_MARKERS = ("/", "/", ".", None, None)
# The characters of paths and calls besides word characters (see _finditer_in_runs).
_RUN_CHARS = frozenset(".~/-()")
_RUN_RE = re.compile(r"[\w.~/()-]*")
_RUN_SPACING = 64  # markers closer than this on average: one pass over the text instead of windows
# A file-looking span that is really a product name ("Node.js", "Next.js") is not a file.
_PRODUCT_NAME_RE = re.compile(
    "|".join(f"(?:{pattern})" for _key, pattern, _cs in (*vocab.DATABASES, *vocab.FRAMEWORKS, *vocab.SOFTWARE)),
    re.IGNORECASE,
)
# CamelCase component names are found by scanning each word: a regular expression for "camel parts,
# then a component word" nests repeats and backtracks badly on long runs of capitals.
# Only a word that starts with an ASCII capital can be a component name (see _camel_parts): scanning
# for those skips the Python work on every other word. A whole word still: nothing before it is \w.
_CAPITAL_WORD_RE = re.compile(r"(?<!\w)[A-Z]\w*")
_NOT_BEFORE_NAME = frozenset("./\\@#$-")  # with word characters: what may not touch a name (as _BEFORE)
_JOINERS = frozenset("./\\-")  # followed by a word character, these glue a name to more (as _AFTER)
_CALL_RE = re.compile(r"(?<![\w.])(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(\)")

_DETERMINER_NOUN_RE = re.compile(
    r"(?<![\w-])(?P<det>the|this|that|these|those)[ \t\n]+(?P<noun>"
    + "|".join(sorted([*vocab.HEAD_NOUNS, *vocab.HEAD_NOUNS.values()], key=len, reverse=True))
    + r")(?![\w-])",
    re.IGNORECASE,
)
_PLURALS = {plural: singular for singular, plural in vocab.HEAD_NOUNS.items()}
_DEFINER_GAP_RE = re.compile(r"[ \t]*(?:[:,(][ \t]*|(?:called|named)[ \t]+)?")
_CODEISH_NAME_RE = re.compile(r"(?P<name>[A-Za-z_][\w.\-]*[\w](?:\(\))?)(?![\w\-])")
_QUOTED_NAME_RE = re.compile(r"\"(?P<q1>[^\"\n]{1,80})\"|“(?P<q2>[^”\n]{1,80})”")
_NUMBER_RE = re.compile(r"v?\d+(?:\.\d+){0,3}(?![\w.]\w)")


def _snake(name: str) -> str:
    """``AuthService`` -> ``auth_service``, ``HTTPClient`` -> ``http_client``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _version_key(version: str) -> str:
    return "v" + re.sub(r"[^0-9a-z]+", "_", version.lower()).strip("_")


def _camel_parts(name: str, end: int) -> bool:
    """Whether ``name[:end]`` is CamelCase parts: a capital and lower-case letters or digits ("User",
    "V2"), or an acronym of two or more capitals before such a part ("HTTP" in "HTTPClient")."""
    index = 0
    while index < end:
        if not name[index].isupper():
            return False
        after = index + 1
        while after < end and (name[after].islower() or name[after].isdigit()):
            after += 1
        if after > index + 1:
            index = after
            continue
        capitals = index
        while capitals < len(name) and name[capitals].isupper():
            capitals += 1
        last = capitals - 1  # the last capital starts the next part, which must be "Xy..."
        if last - index < 2 or last > end or capitals >= len(name) or not name[capitals].islower():
            return False
        index = last
    return end > 0


def _is_component_name(name: str) -> bool:
    """An ASCII CamelCase name ending in a component word ("AuthService", "HTTPClient")."""
    if not (name.isascii() and name.isalnum()):
        return False
    return any(
        name.endswith(suffix) and _camel_parts(name, len(name) - len(suffix)) for suffix in vocab.COMPONENT_SUFFIXES
    )


def _component_spans(text: str) -> list[tuple[int, int]]:
    """Whole words that are component names, not glued to a path, an address or a hyphenated word."""
    spans = []
    for word in _CAPITAL_WORD_RE.finditer(text):
        if not word.group().endswith(vocab.COMPONENT_SUFFIXES):
            continue  # the cheap half of _is_component_name, for the many capitalised words that fail it
        start, end = word.span()
        if start > 0 and text[start - 1] in _NOT_BEFORE_NAME:
            continue
        if end < len(text) and (
            text[end] == "@" or (text[end] in _JOINERS and end + 1 < len(text) and _is_word_char(text[end + 1]))
        ):
            continue
        if _is_component_name(word.group()):
            spans.append((start, end))
    return spans


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"  # what \w matches


def _products_starting_with(char: str, cache: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Indexes into ``_PRODUCTS`` of the products a name of which can start with ``char``."""
    found = cache.get(char)
    if found is None:
        found = cache[char] = tuple(index for index, first in enumerate(_FIRST_CHARACTERS) if first.match(char))
    return found


def _product_hits(text: str) -> list[_Hit]:
    """The hits of every ``_PRODUCTS`` regex, listed product by product, each product's left to right.

    The same list as running ``finditer`` of each product's regex over the whole text: a product's
    regex can only match where ``_PRODUCT_START_RE`` finds a start and the character there can start
    its name, and a product's next match is looked for only after its previous one ends, where
    ``finditer`` resumes.
    """
    found: list[list[_Hit]] = [[] for _ in _PRODUCTS]
    resume = [0] * len(_PRODUCTS)
    cache: dict[str, tuple[int, ...]] = {}
    for start in _PRODUCT_START_RE.finditer(text):
        pos = start.start()
        for index in _products_starting_with(text[pos], cache):
            if pos < resume[index]:
                continue
            key, entity_type, priority, regex = _PRODUCTS[index]
            m = regex.match(text, pos)
            if m:
                found[index].append(_Hit(pos, m.end(), key, entity_type, " ".join(m.group(0).split()), priority))
                resume[index] = m.end()
    return [hit for hits in found for hit in hits]


def _in_run(char: str) -> bool:
    return char in _RUN_CHARS or _is_word_char(char)


def _finditer_in_runs(regex: re.Pattern, text: str, marker: str) -> Iterator[re.Match]:
    """``regex.finditer(text)``, searching only the runs of ``_RUN_CHARS`` and word characters that
    hold ``marker``.

    For a regex whose every match holds ``marker``, consists of such characters only and looks at
    most two characters past its end, the matches are the same: a match lies in one run, and a run
    without the marker holds none. Paths ("/"), calls ("()") and file names (".") are a small part
    of prose, so most of the text is skipped by ``str.find`` instead of being tried position by
    position. A text full of
    markers is searched in one pass, as windows would then cost more than they save.
    """
    if text.count(marker) * _RUN_SPACING > len(text):
        yield from regex.finditer(text)
        return
    pos = 0
    while (found := text.find(marker, pos)) >= 0:
        start = found
        while start > pos and _in_run(text[start - 1]):
            start -= 1
        end = _RUN_RE.match(text, found).end()
        # (the view ends two characters after the run, so the look-ahead past a match sees as before)
        yield from regex.finditer(text, start, end + 2)
        pos = end + 1  # text[end] is not in a run (or is the end)


def _typed_hits(text: str, protected: list[tuple[int, int]]) -> list[_Hit]:
    """Every typed candidate span, before overlap resolution."""
    hits = _product_hits(text)
    for m in _BARE_VERSION_RE.finditer(text):
        version = m.group("v") or m.group("word")
        hits.append(_Hit(m.start(), m.end(), _version_key(version), "software_version", m.group(0), 1))
    for regex, marker in zip(_FILE_RES, _FILE_MARKERS, strict=True):
        for m in regex.finditer(text) if marker is None else _finditer_in_runs(regex, text, marker):
            if not _PRODUCT_NAME_RE.fullmatch(m.group(0)):
                hits.append(_Hit(m.start(), m.end(), m.group(0), "file_reference", m.group(0), 2))
    for start, end in _component_spans(text):
        name = text[start:end]
        hits.append(_Hit(start, end, _snake(name), "technical_component", name, 2))
    for m in _finditer_in_runs(_CALL_RE, text, "()"):
        hits.append(_Hit(m.start(), m.end(), m.group("name").lower(), "technical_component", m.group(0), 2))
    return [hit for hit in hits if not overlaps(hit.start, hit.end, protected)]


def _resolve_overlaps(hits: list[_Hit]) -> list[_Hit]:
    """One entity per span: higher priority first, then the longer span, then the earlier one."""
    alone, contested = _split_contested(hits)
    taken = SpanSet()
    chosen = [
        hit
        for hit in sorted(contested, key=lambda h: (-h.priority, -(h.end - h.start), h.start))
        if taken.add(hit.start, hit.end)
    ]
    return sorted([*alone, *chosen], key=lambda h: h.start)


def _split_contested(hits: list[_Hit]) -> tuple[list[_Hit], list[_Hit]]:
    """The hits that overlap no other hit, and the others.

    A hit that overlaps none is chosen in any order and blocks none, so only the others need the
    greedy pass (on a long text, most hits stand alone and the greedy pass was the slow part).
    """
    ordered = sorted(hits, key=lambda h: (h.start, h.end))
    alone: list[_Hit] = []
    contested: list[_Hit] = []
    reach = -1  # the furthest end of the hits before
    for index, hit in enumerate(ordered):
        after = ordered[index + 1].start if index + 1 < len(ordered) else hit.end
        # starts are sorted: an earlier hit overlaps it iff it ends past its start, a later one iff
        # the next one starts before its end
        (contested if hit.start < reach or after < hit.end else alone).append(hit)
        reach = max(reach, hit.end)
    return alone, contested


def _definer(
    text: str, pos: int, noun: str, typed_at: dict[int, _Hit], inline_code: dict[int, int]
) -> tuple[int, str, str, _Hit | None] | None:
    """What immediately defines a reference ending at ``pos``: (end, value, type, typed hit)."""
    gap = _DEFINER_GAP_RE.match(text, pos)
    start = gap.end() if gap else pos
    if start == pos:
        return None  # the noun ends the clause ("the system.", "the system's")
    hit = typed_at.get(start)
    if hit is not None:
        return hit.end, hit.value, hit.type, hit
    if start in inline_code:
        end = inline_code[start]
        value = text[start:end].strip("`").strip()
        if value and "\n" not in value and len(value) <= 100:
            return end, value, "technical_component", None
        return None
    quoted = _QUOTED_NAME_RE.match(text, start)
    if quoted:
        return quoted.end(), quoted.group("q1") or quoted.group("q2"), "technical_component", None
    if noun == "version":
        number = _NUMBER_RE.match(text, start)
        if number:
            return number.end(), number.group(0), "software_version", None
    name = _CODEISH_NAME_RE.match(text, start)
    if name:
        value = name.group("name").rstrip(".")
        body = value[1:]
        if len(value) > 1 and (any(c.isupper() for c in body) or any(c.isdigit() or c == "_" for c in value)):
            return start + len(value), value, "technical_component", None
    return None


def detect_entities(content: str, *, message_id: str | None = None) -> dict[str, Entity]:
    """Find ambiguous references and typed entities in ``content`` (see the module docstring).

    Returns an ordered ``{key: Entity}``; entities that carry a value get ``defined_in`` =
    ``message_id`` (``wrap_message`` passes the message's ``chat_id``).
    """
    protected = protected_spans(content)
    typed = _resolve_overlaps(_typed_hits(content, protected))
    typed_at = {hit.start: hit for hit in typed}
    typed_spans = [(hit.start, hit.end) for hit in typed]
    inline_code = {start: end for start, end in code_spans(content) if content.startswith("`", start)}
    consumed: set[_Hit] = set()
    found: list[tuple[int, str, tuple[str, str | None, str | None]]] = []

    for m in _DETERMINER_NOUN_RE.finditer(content):
        det, noun = m.group("det").lower(), m.group("noun").lower()
        singular = _PLURALS.get(noun, noun)
        plural = noun != singular
        if (plural and det not in vocab.DETERMINERS_PLURAL) or (not plural and det not in vocab.DETERMINERS_SINGULAR):
            continue
        if overlaps(m.start(), m.end(), protected) or overlaps(m.start(), m.end(), typed_spans):
            continue
        key = f"{det}_{noun}"
        definer = _definer(content, m.end(), singular, typed_at, inline_code)
        if definer is None:
            found.append((m.start(), key, ("ambiguous_reference", None, None)))
            continue
        _end, value, entity_type, hit = definer
        if hit is not None:
            consumed.add(hit)
        found.append((m.start(), key, (entity_type, value, message_id)))

    for hit in typed:
        if hit not in consumed:
            found.append((hit.start, hit.key, (hit.type, hit.value, message_id)))

    # (type, value, defined_in) until kept: a long text repeats its names, and most are not
    entities: dict[str, Entity] = {}
    for _start, key, (entity_type, value, defined_in) in sorted(found, key=lambda item: item[0]):
        kept = entities.get(key)
        if kept is None or (
            value is not None
            and (kept.value is None or (len(value) > len(kept.value) and value.startswith(kept.value)))
        ):
            entities[key] = Entity(entity_type, value, defined_in)
    return entities


def merge_entities(
    detected: Mapping[str, Entity], provided: Mapping[str, Any] | None, *, defined_in: str | None = None
) -> dict[str, Entity]:
    """Combine detected entities with caller-provided ones; a provided entity always wins.

    ``provided`` values may be ``Entity`` objects, strings (``user_defined`` values, defined in
    ``defined_in``), ``None`` (declared but undefined) or mappings with ``type``/``value``/
    ``defined_in``. Detected keys keep their order; new provided keys follow in their own order.
    """
    merged = dict(detected)
    for key, value in (provided or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"entity keys must be strings, not {type(key).__name__}")
        merged[key] = as_entity(value, defined_in=defined_in)
    return merged


def find_undefined(wrapped: WrappedMessage) -> list[str]:
    """Keys of the message's entities that have no value (``value`` is null), in order."""
    return list(wrapped.undefined)


def update_entity(
    wrapped: WrappedMessage, entity_key: str, entity_value: str | None, entity_type: str | None = None
) -> WrappedMessage:
    """A copy of ``wrapped`` with one entity defined (or redefined).

    The entity's type becomes ``entity_type`` or ``user_defined`` and ``defined_in`` the message's
    ``chat_id``; ``entity_value=None`` marks the entity as undefined (and clears ``defined_in``).
    """
    if not isinstance(entity_key, str) or not entity_key:
        raise ValueError("entity_key must be a non-empty string")
    entity = Entity(
        entity_type or "user_defined",
        entity_value,
        wrapped.chat_id if entity_value is not None else None,
    )
    entities = wrapped.entities.to_dict()
    entities[entity_key] = entity
    return dataclasses.replace(wrapped, entities=entities)
