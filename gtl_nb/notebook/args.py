"""Option parsing for the magics: shell quoting (``shlex``), argparse grammars, one-line errors.

``split`` turns a magic's line into words with the shell's quoting rules, so
``--system "Be brief, and polite"`` is one value. The parsers never exit the kernel: a mistake is an
``ArgumentError`` whose message is one line naming the option and where to read more. ``--token``
is refused everywhere: a token typed in a cell would be saved in the notebook.
"""

from __future__ import annotations

import argparse
import builtins
import keyword
import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from gtl_nb.cli_unknown import option_meant, with_close_choice
from gtl_nb.engine.ledger_schema import USAGE_GROUPINGS
from gtl_nb.notebook.template import render
from gtl_nb.protocol.messages import REASONING_EFFORTS

__all__ = [
    "FORMATS",
    "TOKEN_REFUSAL",
    "ArgumentError",
    "Parser",
    "comma_list",
    "effort_choice",
    "gap_cell_parser",
    "gtl_cell_parser",
    "non_negative_int",
    "output_name",
    "parse_assignments",
    "parse_bool",
    "refuse_credential_values",
    "refuse_secret_settings",
    "refuse_secrets",
    "split",
    "variable_name",
]

FORMATS = ("markdown", "text", "json", "code")
TOKEN_REFUSAL = (
    "refusing --token: a token typed in a cell is saved in the notebook; set $GTL_TOKEN, put it in the "
    "config file, or use `%gtl connect URL --token-env VAR` (or --ask-token for a password prompt)"
)
# Settings that hold secrets: refused as literal values, accepted as the name of an environment variable.
SECRET_KEYS = ("api_key", "aws_secret_access_key", "aws_session_token", "token")
# Header names that carry a credential: each provider type's own key header, and the generic ones.
CREDENTIAL_HEADERS = frozenset(
    ("authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-goog-api-key")
)
# Words that make a header or an option name a credential's (``x-auth-token``, ``Ocp-Apim-Subscription-Key``,
# ``azure_ad_token``, ``client_secret``); ``max_tokens`` ends in ``tokens`` and is no credential.
_CREDENTIAL_ENDINGS = frozenset(
    ("key", "apikey", "token", "secret", "password", "passwd", "auth", "authorization", "credential", "credentials")
)
# Words that make a name a credential's wherever they stand (``X-Authorization-Id``, ``apikey_v2``)
_CREDENTIAL_WORDS = frozenset(("authorization", "apikey", "password", "passwd", "secret", "credentials"))
# How a value says it is a credential, whatever its header's name
_CREDENTIAL_SCHEMES = ("bearer ", "basic ", "token ")
_KEY_INSTEAD = (
    "name the environment variable holding the provider's key with api_key_env=VAR (each type sends it in its "
    "own header: Authorization: Bearer, x-api-key, api-key, x-goog-api-key), or put the setting in a config "
    "file read with `%gtl config file=PATH`"
)


_UNRECOGNIZED = "unrecognized arguments: "  # argparse's words for options no action takes


class ArgumentError(ValueError):
    """A mistake in a magic's options; the message is one line with the fix."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises ``ArgumentError`` instead of printing and exiting."""

    def __init__(self, prog: str, description: str | None = None, epilog: str | None = None) -> None:
        super().__init__(
            prog=prog,
            description=description,
            epilog=epilog,
            add_help=False,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def error(self, message: str) -> NoReturn:
        message = with_close_choice(message)  # --by modle: "; did you mean 'model'?"
        if message.startswith(_UNRECOGNIZED):  # --temprature 0.5: "; --temprature: did you mean --temperature?"
            known = [name for action in self._actions for name in action.option_strings]
            for word in message[len(_UNRECOGNIZED) :].split(" "):
                if meant := option_meant(word, known):
                    message += f"; {word.partition('=')[0]}: did you mean {meant}?"
        raise ArgumentError(f"{self.prog}: {message} (`{self.prog} --help` lists the options)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ArgumentError(message or f"{self.prog}: invalid options")

    def parse(self, words: Sequence[str]) -> argparse.Namespace | None:
        """The parsed options, or ``None`` when ``-h``/``--help`` asked for the help text instead."""
        if "-h" in words or "--help" in words:
            return None
        return self.parse_args(list(words))


def split(line: str, namespace: Mapping[str, Any] | None = None) -> list[str]:
    """The words of a magic's line, by shell quoting rules (never ``line.split(" ")``).

    With ``namespace``, each word then gets the prompt's ``{name}`` substitution
    (``gtl_nb.notebook.template``): split first, so ``--system {rules}`` stays one option however
    many spaces ``rules`` holds. A literal ``--token`` is refused before anything is substituted.
    """
    try:
        words = shlex.split(line, posix=True)
    except ValueError as exc:
        raise ArgumentError(f"cannot read the options: {exc} (check the quotes in {line.strip()!r})") from None
    refuse_secrets(words)
    if namespace is not None:
        words = [render(word, namespace) for word in words]
    return words


def refuse_secrets(words: Sequence[str]) -> None:
    """Refuse a literal ``--token`` (or ``--token=...``) anywhere in the words."""
    for word in words:
        if word == "--token" or word.startswith("--token="):
            raise ArgumentError(TOKEN_REFUSAL)


def comma_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return [item for item in items if item]


def variable_name(text: str) -> str:
    """A Python identifier that can name a notebook variable (one a magic reads: ``--from``, ``--context``)."""
    if not text.isidentifier() or keyword.iskeyword(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Python variable name")
    return text


def output_name(text: str) -> str:
    """A notebook variable a magic may write (``--out``): not one of Python's own dunder names —
    ``--out __builtins__`` broke every later cell (reading one, as ``--from __``, is harmless) — nor a
    builtin's name (``print``, ``list``, ``id``), which the result would hide."""
    name = variable_name(text)
    if name.startswith("__") and name.endswith("__"):
        raise argparse.ArgumentTypeError(f"{name!r} is one of Python's own names; choose another")
    if hasattr(builtins, name):  # `--out print` hid print from every later cell ("not callable")
        raise argparse.ArgumentTypeError(
            f"{name!r} is a Python builtin: storing the result there would hide it from every later cell; "
            f"choose another name (e.g. {name}_result)"
        )
    return name


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` parse as floats but mean nothing here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a number of at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return _whole_number(text, 1)


def parse_bool(text: str, *, what: str) -> bool:
    """``on/off``, ``true/false``, ``yes/no``, ``1/0`` (any case); a mistake names the setting, ``what``
    (``%gtl config: chat=``)."""
    lowered = text.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ArgumentError(f"{what} takes on or off, got {text!r}")


def parse_assignments(words: Sequence[str], *, what: str) -> dict[str, str]:
    """``key=value`` words -> a dict (in order); anything else is an ``ArgumentError``."""
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ArgumentError(f"{what}: expected key=value, got {word!r}")
        out[key.strip()] = value
    return out


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    return _whole_number(text, 0)


def effort_choice(text: str) -> str:
    """An argparse type: a reasoning effort (``none`` … ``max``), any case."""
    lowered = text.strip().lower()
    if lowered not in REASONING_EFFORTS:
        raise argparse.ArgumentTypeError(
            f"unknown reasoning effort {text!r}; choose one of {', '.join(REASONING_EFFORTS)} (least to most)"
        )
    return lowered


def format_choice(text: str) -> str:
    lowered = text.lower()
    if lowered not in FORMATS:
        raise argparse.ArgumentTypeError(f"unknown format {text!r}; choose one of {', '.join(FORMATS)}")
    return lowered


# ----------------------------------------------------------------------------------------------
# the grammars

GTL_CELL_EPILOG = """\
The cell is the prompt; {name} inserts a notebook variable ({{ and }} write literal braces).
Default model: `%gtl config model=...`, then $GTL_NB_MODEL, then the configuration's default (echo).
Examples:
  %%gtl gpt-4o-mini --system "Answer in one sentence" --temperature 0.2
  %%gtl --compare echo gpt-4o-mini claude-haiku-4-5
  %%gtl --tools get_weather --max-steps 3
  %%gtl gpt-4o-mini --schema Person
"""


def gtl_cell_parser() -> Parser:
    """The options of ``%%gtl [MODEL] [options]``."""
    p = Parser("%%gtl", "Send the cell to a model and show the answer as it streams.", GTL_CELL_EPILOG)
    p.add_argument("model", nargs="*", metavar="MODEL", help="the model (at most one; see --compare)")
    # the spelling of `gtl complete` and `%gap`: the same as naming the model first
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model, as an option")
    p.add_argument("--system", metavar="TEXT", help="system prompt")
    p.add_argument("--temperature", type=finite_float, metavar="T", help="sampling temperature")
    p.add_argument("--max-tokens", type=positive_int, metavar="N", help="output token limit")
    p.add_argument(
        "--reasoning-effort",
        type=effort_choice,
        metavar="LEVEL",
        help=f"how hard the model thinks: {', '.join(REASONING_EFFORTS)} (none: no thinking; converted to each "
        "provider's own setting; default: `%%gtl config reasoning_effort=`, else [defaults], else the deployment's)",
    )
    p.add_argument(
        "--reasoning-budget",
        type=non_negative_int,
        metavar="N",
        help="thinking tokens the model may spend (0: none; converted to an effort where a provider takes one)",
    )
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stream tokens as they arrive (default)",
    )
    p.add_argument("--format", type=format_choice, default="markdown", help="markdown (default), text, json or code")
    p.add_argument(
        "--schema",
        type=variable_name,
        metavar="VAR",
        help="structured output: the answer is JSON of the notebook's class VAR (a pydantic model, dataclass or "
        "TypedDict) or response_format dict VAR; shown as --format json",
    )
    p.add_argument("--out", type=output_name, metavar="VAR", help="also store the result in VAR")
    p.add_argument("--no-cache", action="store_true", help="do not answer from the response cache")
    p.add_argument("--endpoint", metavar="URL", help="anything gtl_nb.connect accepts (default: embedded://)")
    p.add_argument("--providers", type=comma_list, metavar="A,B", help="failover list of deployments")
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="conversation mode: keep the history",
    )
    p.add_argument("--tools", type=comma_list, metavar="F,G", help="functions of the notebook the model may call")
    p.add_argument("--max-steps", type=positive_int, default=5, metavar="N", help="tool rounds at most (default 5)")
    p.add_argument("--tools-dry-run", action="store_true", help="show the tool calls without running them")
    p.add_argument("--compare", nargs="+", metavar="MODEL", help="send the prompt to several models at once")
    p.add_argument("--context", type=variable_name, metavar="VAR", help="a GAP message to send as context")
    p.add_argument(
        "--cache-prompt",
        action="store_true",
        help="keep the system prompt and the conversation in the provider's prompt cache (Anthropic, Bedrock)",
    )
    p.add_argument(
        "--cache-ttl",
        choices=("5m", "1h"),
        help="how long the prompt cache keeps them (implies --cache-prompt; 1h: for pauses over five minutes, "
        "writes at twice the input price)",
    )
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    return p


GAP_CELL_EPILOG = """\
The chat id is --id or nb-<execution count>; the parent is the previous message of the same thread.
Examples:
  %%gap --thread db --role user
  %%gap --from-last --thread db --to claude.ai
"""


def gap_cell_parser() -> Parser:
    """The options of ``%%gap`` (wrap the cell, or the last answer, as a GAP message)."""
    p = Parser("%%gap", "Wrap the cell as a GAP message.", GAP_CELL_EPILOG)
    p.add_argument("--platform", metavar="P", help="source platform (default: generic, or the answer's provider)")
    p.add_argument("--thread", metavar="T", help="thread id")
    p.add_argument("--role", choices=("assistant", "user", "system"), help="role (default: user for a cell)")
    p.add_argument("--id", dest="chat_id", metavar="ID", help="chat id (default: nb-<execution count>)")
    p.add_argument("--reply-to", metavar="ID", help="parent message (default: the thread's previous message)")
    p.add_argument("--to", metavar="TARGET", help="also show the message transformed for TARGET")
    p.add_argument("--model", metavar="M", help="the model that wrote the content")
    source = p.add_mutually_exclusive_group()
    # argparse %-formats help strings: "%%%%gtl" shows as "%%gtl" (the cell magic), "%%gtl" as "%gtl"
    source.add_argument("--from-last", action="store_true", help="wrap the last %%%%gtl answer")
    source.add_argument("--from", dest="from_var", type=variable_name, metavar="VAR", help="wrap a Completion")
    p.add_argument("--out", type=output_name, metavar="VAR", help="also store the message in VAR")
    p.add_argument("-h", "--help", action="store_true", help="show this help")
    return p


def usage_parser() -> Parser:
    p = Parser("%gtl usage", "Cost and tokens from the usage ledger.")
    p.add_argument(
        "--by",
        # the one list gtl usage --by takes too (deployment: the ledger's name for what this calls provider)
        choices=USAGE_GROUPINGS,
        default="provider",
        help="group by this (as usage_table's by=; day and hour are UTC)",
    )
    window = p.add_mutually_exclusive_group()
    window.add_argument("--days", type=float, metavar="N", help="only requests of the last N days (as gtl usage)")
    window.add_argument(
        "--since",
        metavar="WHEN",
        help="only requests from WHEN on: a day (2026-12-01, from midnight UTC), ISO-8601 time with its offset, "
        "or unix seconds (as client.usage's since=)",
    )
    p.add_argument(
        "--all-users",
        action="store_true",
        help="from a gateway: everyone's requests, not only your token's (the token needs usage:admin)",
    )
    return p


def models_parser() -> Parser:
    p = Parser("%gtl models", "The models this notebook can use.")
    p.add_argument("--live", metavar="DEPLOYMENT", help="ask the provider itself for its models")
    return p


def connect_parser() -> Parser:
    p = Parser("%gtl connect", "Connect the notebook to a GTL endpoint.")
    p.add_argument("url", metavar="URL")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    p.add_argument("--ask-token", action="store_true", help="ask for the token with a password prompt")
    return p


def entities_parser() -> Parser:
    p = Parser("%gap entities", "Show and define the undefined entities of a GAP message.")
    p.add_argument("words", nargs="*", metavar="VAR|KEY=VALUE", help="the message (default: the last) and values")
    p.add_argument("--suggest-with", metavar="MODEL", help="ask MODEL for definitions")
    p.add_argument("--apply", action="store_true", help="apply the best suggestion for each entity")
    return p


def graph_parser() -> Parser:
    p = Parser("%gap graph", "Draw the context graph of this notebook's GAP messages.")
    p.add_argument("--out", type=output_name, metavar="VAR", help="store the networkx graph in VAR")
    return p


def export_parser() -> Parser:
    p = Parser("%gap export", "Write this notebook's GAP messages as JSON lines.")
    p.add_argument("path", metavar="PATH")
    return p


def help_text(parser: Parser) -> str:
    return parser.format_help().rstrip()


def _names_a_credential(name: str, *, header: bool) -> bool:
    """Whether a header's or an option's name says its value is a credential: a provider's key header, a
    last word among ``_CREDENTIAL_ENDINGS`` or any among ``_CREDENTIAL_WORDS`` (words split at ``-``,
    ``_`` and camelCase: ``apiKey``, ``authToken``, ``X-ApiKey``)."""
    if header and name.strip().lower() in CREDENTIAL_HEADERS:
        return True
    words = _words(name)
    return bool(words) and (words[-1] in _CREDENTIAL_ENDINGS or not _CREDENTIAL_WORDS.isdisjoint(words))


def _words(name: str) -> list[str]:
    """``name``'s words, lower-cased: split at ``-``, ``_``, spaces and a lower-case letter or digit followed
    by a capital (``xApiKey`` → ``x``, ``api``, ``key``)."""
    spaced: list[str] = []
    previous = ""
    for character in name:
        if character.isupper() and (previous.islower() or previous.isdigit()):
            spaced.append(" ")
        spaced.append(" " if character in "-_." else character)
        previous = character
    return "".join(spaced).lower().split()


def _says_a_credential(value: object) -> bool:
    """Whether a header's value carries its own credential scheme (``Bearer …``, ``Basic …``)."""
    return isinstance(value, str) and value.strip().lower().startswith(_CREDENTIAL_SCHEMES)


def refuse_credential_values(settings: Mapping[str, Any]) -> None:
    """Refuse a ``%gtl providers`` header or option whose name says it holds a credential
    (``headers='{"Authorization": "Bearer ..."}'``, ``options='{"api_key": ...}'``): typed in a cell, it is
    saved in the notebook as ``api_key=...`` would be. The name is said, the value never."""
    for setting in ("headers", "options"):
        values = settings.get(setting)
        if not isinstance(values, Mapping):
            continue  # (not a table: the configuration says so)
        for name, value in values.items():
            header = setting == "headers"
            if isinstance(name, str) and (
                _names_a_credential(name, header=header) or (header and _says_a_credential(value))
            ):
                what = f"header {name!r}" if setting == "headers" else f"option {name!r}"
                raise ArgumentError(
                    f"refusing {what} in {setting}=...: a secret typed in a cell is saved in the notebook; "
                    f"{_KEY_INSTEAD}"
                )


def refuse_secret_settings(settings: dict[str, str]) -> None:
    """Refuse ``api_key=...`` and the like: name an environment variable instead (``api_key_env=VAR``)."""
    for key in settings:
        if key in SECRET_KEYS:
            instead = (
                "name an environment variable with api_key_env=VAR"
                if key == "api_key"
                else ("set it in the environment or in the config file")
            )
            raise ArgumentError(f"refusing {key}=...: a secret typed in a cell is saved in the notebook; {instead}")
