"""What ``gtl`` says about arguments no option of the command takes.

argparse collects a subcommand's unknown arguments at the top level and reports them under ``gtl``'s
own usage line, which names none of the subcommand's options: ``gtl serve --port 9000`` said only
"unrecognized arguments: --port 9000". ``refusal`` answers under the innermost command the words name
(``gtl token mint``, not ``gtl token``), with the option meant when one is close, a command's own hint
for a spelling of another tool (``serve`` turns ``--host``/``--port`` into ``--http HOST:PORT``), what
to do with words that are no option (``complete``: quote a prompt of several words), and where the
options are listed.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Mapping, Sequence

HINTS_KEY = "unknown_option_hints"
"""A subcommand's ``set_defaults`` key: ``{"--port": hint}``, where a hint is the text said after "for
--port, ", or a function of all the unknown words that returns the whole note (it may read their
values); the key ``""`` is said of words that are no option (``gtl complete hello world``)."""

Hint = str | Callable[[Sequence[str]], str]


def innermost_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand ``argv`` names (``gtl token mint …``: ``mint``'s)."""
    current = parser
    for word in argv:
        choices = _subcommands(current)
        if word in choices:
            current = choices[word]
    return current


def _subcommands(parser: argparse.ArgumentParser) -> Mapping[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return action.choices  # type: ignore[no-any-return]
    return {}


def option_meant(word: str, known: Sequence[str]) -> str | None:
    """The long option of ``known`` a misspelt ``word`` (``--temprature``, ``--temprature=0.5``) is close to, if any."""
    name = word.partition("=")[0]
    if not name.startswith("--"):
        return None
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def option_values(extras: Sequence[str], *names: str) -> list[str]:
    """The values given to the unknown options ``names`` among ``extras`` (``--port 9000``, ``--port=9000``)."""
    values: list[str] = []
    for index, word in enumerate(extras):
        name, equals, value = word.partition("=")
        if name in names:
            if equals:
                values.append(value)
            elif index + 1 < len(extras) and not extras[index + 1].startswith("-"):
                values.append(extras[index + 1])
    return values


def _stray_words(extras: Sequence[str]) -> list[str]:
    """The unknown words that are neither an option nor the value right after an unknown option."""
    stray: list[str] = []
    for index, word in enumerate(extras):
        if word.startswith("-"):
            continue
        before = extras[index - 1] if index else ""
        if before.startswith("-") and "=" not in before:
            continue  # ``--temprature 0.5``: the value of the misspelt option, not a word of the prompt
        stray.append(word)
    return stray


def refusal(
    parser: argparse.ArgumentParser, argv: Sequence[str], extras: Sequence[str], hints: Mapping[str, Hint]
) -> tuple[argparse.ArgumentParser, str]:
    """The parser whose usage to show, and the message for ``extras``, the words of ``argv`` no option took."""
    own = innermost_parser(parser, argv)
    known = sorted({name for action in own._actions for name in action.option_strings if name.startswith("--")})
    notes: list[str] = []
    stray = hints.get("")
    if isinstance(stray, str) and _stray_words(extras):
        notes.append(stray)
    for word in extras:
        name = word.partition("=")[0]
        if not name.startswith("-") or name == "-":
            continue
        hint = hints.get(name)
        if callable(hint):
            notes.append(hint(extras))
        elif hint:
            notes.append(f"for {name}, {hint}")
        elif meant := option_meant(name, known):
            notes.append(f"{name}: did you mean {meant}?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    if notes:
        message += "; " + "; ".join(dict.fromkeys(notes))  # each note once (--host and --port share one)
    return own, f"{message} (`{own.prog} --help` lists the options)"


# argparse's words for a value outside ``choices``: "argument X: invalid choice: 'word' (choose from
# 'a', 'b')" — the choices bare since Python 3.12.8/3.13.1, quoted before: both read. Found with string
# searches, not a regular expression: the message quotes the user's own words, of any length.
_INVALID_CHOICE = "invalid choice: "
_CHOOSE_FROM = " (choose from "


_MEANT = {"gateway": ("serve", " (gtl serve runs the gateway, whose log lines start 'gtl gateway:')")}
"""Words no spelling is close to that still mean a choice: what a user reads elsewhere (the gateway's
log lines say ``gtl gateway:``), with why."""


def close_word(word: str, known: Sequence[str]) -> str:
    """``"; did you mean 'models'?"`` when one of ``known`` is close to ``word`` (or is what it means:
    ``_MEANT``), else ``""``."""
    meant, why = _MEANT.get(word, ("", ""))
    if meant in known:
        return f"; did you mean {meant!r}?{why}"
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def with_close_choice(message: str) -> str:
    """An argparse error ``message`` about an invalid choice, with the close choice meant (``gtl complet``,
    ``--by provdier``); any other message as it is."""
    start = message.find(_INVALID_CHOICE)
    if start < 0 or not message.endswith(")"):
        return message
    rest = message[start + len(_INVALID_CHOICE) : -1]
    cut = rest.rfind(_CHOOSE_FROM)  # (the choices are the program's: the last one is argparse's)
    if cut < 0:
        return message
    choices = [choice.strip().strip("'") for choice in rest[cut + len(_CHOOSE_FROM) :].split(",")]
    return message + close_word(rest[:cut].strip("'"), choices)
