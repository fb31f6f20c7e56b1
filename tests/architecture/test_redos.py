"""Every regular expression in ``gtl_nb`` is checked for catastrophic backtracking by regexploit.

Patterns are found two ways, so a new one is covered without anyone listing it:

* every module is imported and each compiled pattern it holds at module level (directly, in a
  tuple, list or dict, or in a class body) is taken with its real flags;
* the source of every module is walked for the other calls into ``re`` (``re.compile``, ``re.sub``,
  ``re.search``, ... inside functions or containers): a literal pattern (``str`` or ``bytes``) is
  taken as written, an f-string with its interpolations resolved when they name a module-level
  string and replaced by a placeholder otherwise. A call whose pattern cannot be read that way
  fails the test: compile that pattern at module level, where the first walker sees it.

regexploit reports a pattern whose *single* match attempt is at least cubic. A search tries every
start position, and on an input of a few hundred kilobytes even quadratic total work takes minutes,
so each pattern is analysed four ways:

* as written, and with ``$`` after it (regexploit's own view: exponential and cubic attempts, and
  ``fullmatch`` or a pattern followed by text it must not swallow);
* with ``[\\s\\S]*`` in front for the start positions a search tries, and one more ``[\\s\\S]*`` in
  front, which lowers regexploit's threshold from cubic to quadratic; again with and without ``$``.
  A pattern anchored with ``^``/``\\A``, or used only through ``.match``/``.fullmatch``, has no
  start positions to try; a ``MULTILINE`` ``^`` starts only after a newline; a leading one-character
  negative look-behind (``(?<![\\w.])``) starts only after a character outside its class.

That is conservative (regexploit ignores ``\\b`` and treats each alternative of an optional group
as if it had to match), so a flagged pattern may be linear in practice: rewrite it — plain string
scanning is often clearer — rather than argue with it. Known blind spots of regexploit: it models a
run of *one* repeated character, so it misses blow-ups that need a repeated word (``input token
count`` again and again before ``.*``), and it does not look inside an alternation under a repeat
(``(?:a|b+)*``). Keep ``.*`` after a literal prefix, and repeats of alternations with repeats in
them, out of patterns that read long outside text.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # regexploit imports sre_parse
    from regexploit.ast.sre import SreOpParser
    from regexploit.redos import find as find_redos

import gtl_nb

PACKAGE_ROOT = Path(gtl_nb.__file__).resolve().parent
RE_FUNCTIONS = {"compile", "search", "match", "fullmatch", "sub", "subn", "split", "findall", "finditer"}
ANCHORED_METHODS = {"match", "fullmatch"}  # a pattern used only through these tries one start position
# Where ``flags`` sits among the positional arguments of each ``re`` function (2 for the others).
FLAGS_POSITION = {"compile": 1, "sub": 4, "subn": 4, "split": 3}
PLACEHOLDER = "1"  # stands for an interpolation the walker cannot resolve; valid as a literal and a count
ANY_RUN = r"[\s\S]*"
MIN_PATTERNS = 150  # the package holds more than this; fewer means a walker broke
INLINE_FLAGS = {"a": re.ASCII, "i": re.IGNORECASE, "L": re.LOCALE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


@dataclass(frozen=True)
class Pattern:
    """One regular expression of the package, where it was found, and whether it is only anchored."""

    where: str
    pattern: str
    flags: int
    anchored_use: bool = False


# --- finding the patterns ----------------------------------------------------------------------


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"`` assignments, for resolving f-string interpolations."""
    strings: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            strings.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return strings


def _literal(node: ast.expr, strings: dict[str, str]) -> str | None:
    """The text of a pattern argument, or None when it is not written in the call."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        value = node.value
        return value.decode("latin-1") if isinstance(value, bytes) else value
    if isinstance(node, ast.Name):
        return strings.get(node.id)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            inner = value.value if isinstance(value, ast.FormattedValue) else value
            if isinstance(inner, ast.Constant):
                parts.append(str(inner.value))
            else:
                resolved = strings.get(inner.id) if isinstance(inner, ast.Name) else None
                parts.append(PLACEHOLDER if resolved is None else resolved)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left, strings), _literal(node.right, strings)
        return None if left is None or right is None else left + right
    return None


def _flags(node: ast.expr | None) -> int:
    """``re.I | re.S`` and the like; anything not spelled with ``re`` constants counts as no flag."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "re":
        value = getattr(re, node.attr, 0)
        return int(value) if isinstance(value, int) else 0
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _flags(node.left) | _flags(node.right)
    return 0


def _re_calls(tree: ast.Module) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "re"
            and func.attr in RE_FUNCTIONS
            and node.args
        ):
            yield node, func.attr


def _module_level_calls(tree: ast.Module) -> set[int]:
    """Ids of the calls that are the whole value of a module-level assignment."""
    return {id(node.value) for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))}


def source_patterns() -> tuple[list[Pattern], list[str]]:
    """Patterns written in calls into ``re``, and the call sites whose pattern is out of sight."""
    found: list[Pattern] = []
    unresolved: list[str] = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        tree = _tree(path)
        strings = _module_strings(tree)
        assigned = _module_level_calls(tree)
        for call, name in _re_calls(tree):
            where = f"{path.relative_to(PACKAGE_ROOT.parent).as_posix()}:{call.lineno}"
            if id(call) in assigned:
                continue  # a module-level result: compiled_patterns analyses it, knowing how it is used
            text = _literal(call.args[0], strings)
            if text is None:
                unresolved.append(where)
                continue
            position = FLAGS_POSITION.get(name, 2)
            flag_node = next((k.value for k in call.keywords if k.arg == "flags"), None)
            if flag_node is None and len(call.args) > position:
                flag_node = call.args[position]
            found.append(Pattern(where, text, _flags(flag_node), name in ANCHORED_METHODS))
    return found, unresolved


def _method_uses(tree: ast.Module) -> dict[str, set[str]]:
    """For each name, what is done with it: the method called on it, or ``""`` for any other use."""
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    uses: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            parent = parents.get(id(node))
            method = parent.attr if isinstance(parent, ast.Attribute) else ""
            uses.setdefault(node.id, set()).add(method)
    return uses


def _compiled_in(value: Any, where: str, depth: int = 0) -> Iterator[tuple[str, re.Pattern]]:
    if isinstance(value, re.Pattern):
        yield where, value
    elif depth < 2 and isinstance(value, (tuple, list, frozenset, set)):
        for index, item in enumerate(value):
            yield from _compiled_in(item, f"{where}[{index}]", depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for key, item in value.items():
            yield from _compiled_in(item, f"{where}[{key!r}]", depth + 1)


def _package_uses() -> dict[str, set[str]]:
    """``_method_uses`` over every module: a pattern imported elsewhere counts its uses there too."""
    uses: dict[str, set[str]] = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        for name, methods in _method_uses(_tree(path)).items():
            uses.setdefault(name, set()).update(methods)
    return uses


def compiled_patterns() -> list[Pattern]:
    """Compiled patterns held at module level (or in a class body) by every module of the package."""
    found: list[Pattern] = []
    uses = _package_uses()
    for info in pkgutil.walk_packages(gtl_nb.__path__, "gtl_nb."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # importing it runs the command line
        module = importlib.import_module(info.name)
        values = dict(vars(module))
        for name, value in list(values.items()):
            if isinstance(value, type) and value.__module__ == info.name:
                values.update({f"{name}.{key}": item for key, item in vars(value).items()})
        for name, value in values.items():
            anchored = bool(uses.get(name)) and uses[name] <= ANCHORED_METHODS
            for where, compiled in _compiled_in(value, f"{info.name}.{name}"):
                text = compiled.pattern
                text = text.decode("latin-1") if isinstance(text, bytes) else text
                found.append(Pattern(where, text, compiled.flags & ~re.UNICODE, anchored))
    return found


def all_patterns() -> list[Pattern]:
    """Every distinct pattern of the package, named by the first place it was found."""
    source, _unresolved = source_patterns()
    unique: dict[tuple[str, int, bool], Pattern] = {}
    for pattern in [*compiled_patterns(), *source]:
        unique.setdefault((pattern.pattern, pattern.flags, pattern.anchored_use), pattern)
    return list(unique.values())


# --- analysing them ----------------------------------------------------------------------------


def _split_inline_flags(pattern: str, flags: int) -> tuple[str, int]:
    """Move leading ``(?i)``-style groups into ``flags`` (nothing may come before them)."""
    while pattern.startswith("(?"):
        close = pattern.find(")")
        body = pattern[2:close]
        if close < 0 or not body or any(char not in INLINE_FLAGS for char in body):
            break
        for char in body:
            flags |= INLINE_FLAGS[char]
        pattern = pattern[close + 1 :]
    return pattern, flags & ~re.UNICODE


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the character class opened at ``pattern[start]`` (-1 if none)."""
    index = start + 1
    if pattern.startswith("^", index):
        index += 1
    if pattern.startswith("]", index):
        index += 1  # a leading ] is a literal
    while index < len(pattern):
        if pattern[index] == "\\":
            index += 2
        elif pattern[index] == "]":
            return index
        else:
            index += 1
    return -1


def _after_lookbehind(pattern: str) -> str:
    """For ``(?<![...])`` or ``(?<!\\x)`` in front: a class of the characters a start may follow."""
    if pattern.startswith("(?<![") and not pattern.startswith("(?<![^"):
        end = _class_end(pattern, 4)
        if end > 0 and pattern.startswith(")", end + 1):
            return f"[^{pattern[5:end]}]"
    if pattern.startswith("(?<!\\") and pattern.startswith(")", 6):
        return f"[^{pattern[4:6]}]"
    return ""


def analysis_models(pattern: str, flags: int, anchored_use: bool = False) -> list[str]:
    """The pattern as regexploit must see it to judge every use (see the module docstring)."""
    multiline = bool(flags & re.MULTILINE)
    if anchored_use or pattern.startswith(r"\A") or (pattern.startswith("^") and not multiline):
        starts = ""
    elif pattern.startswith("^"):
        starts = ANY_RUN + r"\n"
    else:
        starts = ANY_RUN + _after_lookbehind(pattern)
    searched = f"{ANY_RUN}{starts}(?:{pattern})"
    return [pattern, f"(?:{pattern})$", searched, searched + "$"]


def problems(pattern: str, flags: int = 0, anchored_use: bool = False) -> list[str]:
    """regexploit's findings for one pattern: each a witness input for a super-linear run."""
    pattern, flags = _split_inline_flags(pattern, flags)
    out = []
    for model in analysis_models(pattern, flags, anchored_use):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sre_parse's deprecation and its warnings on odd patterns
            for redos in find_redos(SreOpParser().parse_sre(model, flags & ~re.VERBOSE)):
                out.append(redos.example())
    return out


def _report(flagged: dict[Pattern, list[str]]) -> str:
    return "\n".join(f"  {p.where}: {p.pattern[:100]!r}\n      witness: {found[0]}" for p, found in flagged.items())


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patterns() -> list[Pattern]:
    return all_patterns()


def test_the_walkers_find_the_packages_patterns(patterns):
    """Not vacuous: the package's patterns are found, compiled and literal ones alike."""
    assert len(patterns) >= MIN_PATTERNS
    wheres = {p.where for p in patterns}
    assert "gtl_nb.gap.entities._FILE_RES[0]" in wheres  # compiled, in a tuple
    assert any(w.startswith("gtl_nb/") for w in wheres)  # literal, in a call inside a function


def test_every_call_into_re_has_its_pattern_in_view():
    """A pattern the source walker cannot read must be compiled at module level, where it is imported."""
    _found, unresolved = source_patterns()
    assert unresolved == [], f"calls into re whose pattern is neither written there nor module-level: {unresolved}"


# Patterns known to backtrack super-linearly, most of them this package's own before their fix.
KNOWN_BAD = {
    "nested-plus": r"(a+)+$",
    "gap-answer-line": r"^[\s>*•\-\d.)]*(?P<key>[^:=]+?)\s*[:=]\s*(?P<value>.+?)\s*$",
    "gap-url": r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s<>()\[\]\"'`]*[^\s<>()\[\]\"'`.,;:!?]",
    "gap-curly-quote": r"“[^”]*”",
    "gap-component": r"(?<![\w./\\@#$-])(?:[A-Z][a-z0-9]+|[A-Z]{2,}(?=[A-Z][a-z]))+(?:Service|Client)",
    "gap-header-searched": r"(?P<key>[A-Za-z][A-Za-z_-]*)[ \t]*:(?P<rest>.*)\Z",
    "notebook-template-part": r"\.(?P<attr>[A-Za-z_]\w*)|\[(?P<index>[^\]]*)\]",
    "html-tag-stripper": r"<[^>]*>",
}


@pytest.mark.parametrize("pattern", KNOWN_BAD.values(), ids=KNOWN_BAD.keys())
def test_the_analyser_flags_known_bad_patterns(pattern):
    assert problems(pattern), f"regexploit no longer flags {pattern!r}"


def test_the_analyser_flags_the_notebook_fence_pattern_before_its_fix():
    fence = r"```[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<body>.*?)\n?```"
    assert problems(fence, re.DOTALL)


@pytest.mark.parametrize(
    "pattern",
    [r"\bfoo\b", r"[a-z]+", r"^\s*(\d+)\s*$", r"\[(\\*)GAP:(START|CONTENT|END)\]", r"(?<![\w.])[a-z]\w*\(\)"],
)
def test_the_analyser_passes_plainly_linear_patterns(pattern):
    assert problems(pattern) == []


def test_a_pattern_used_only_through_match_is_judged_as_one_attempt():
    header = r"(?P<key>[A-Za-z][A-Za-z_-]*)[ \t]*:(?P<rest>.*)\Z"
    assert problems(header, anchored_use=True) == []
    assert problems(header, anchored_use=False)


def test_no_pattern_in_the_package_backtracks_catastrophically(patterns):
    flagged = {p: found for p in patterns if (found := problems(p.pattern, p.flags, p.anchored_use))}
    assert not flagged, "patterns regexploit flags (rewrite them; see this module's docstring):\n" + _report(flagged)
