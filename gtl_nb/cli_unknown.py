"""What ``gtl`` says about arguments no option of the command takes.

argparse collects a subcommand's unknown arguments at the top level and reports them under ``gtl``'s
own usage line, which names none of the subcommand's options: ``gtl serve --port 9000`` said only
"unrecognized arguments: --port 9000". ``refusal`` names the subcommand, the option meant when one is
close (or a subcommand's own hint for a spelling of another tool: ``serve`` maps ``--port`` and
``--host`` to ``--http HOST:PORT``; ``complete`` says to quote a prompt of several words), and where
the options are listed.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping, Sequence

HINTS_KEY = "unknown_option_hints"
"""A subcommand's ``set_defaults`` key: ``{"--port": "what to write instead"}``; the key ``""`` is
said of words that are no option (``gtl complete hello world``: the prompt unquoted)."""


def command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    """The parser of ``command`` (``None`` when there is no such subcommand)."""
    for action in parser._actions:  # argparse keeps its subparsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]  # type: ignore[no-any-return]
    return None


def refusal(
    parser: argparse.ArgumentParser, command: str | None, extras: Sequence[str], hints: Mapping[str, str]
) -> tuple[argparse.ArgumentParser, str]:
    """The parser whose usage to show, and the message for ``extras`` given to ``command``."""
    own = command_parser(parser, command) or parser
    known = sorted({name for action in own._actions for name in action.option_strings if name.startswith("--")})
    notes: list[str] = []
    if "" in hints and any(not word.startswith("-") for word in extras):
        notes.append(hints[""])  # a word that is no option: the command's hint for stray words
    for word in extras:
        name = word.partition("=")[0]
        if not name.startswith("--"):
            continue
        if name in hints:
            notes.append(f"for {name}, {hints[name]}")
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            if close:
                notes.append(f"{name}: did you mean {close[0]}?")
    listed = f"`gtl {command} --help`" if own is not parser else "`gtl --help`"
    message = f"unrecognized arguments: {' '.join(extras)}"
    if notes:
        message += "; " + "; ".join(notes)
    return own, f"{message} ({listed} lists the options)"
