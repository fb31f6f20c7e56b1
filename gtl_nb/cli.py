"""The ``gtl`` command.

    gtl complete "prompt" [--model echo] [--system S] [--temperature T] [--max-tokens N] [--json]
    gtl models
    gtl --gateway URL complete|models ...   the same on a running gateway ($GTL_NB_GATEWAY; its token
                                            in $GTL_TOKEN, else $GTL_NB_TOKEN, never on the command line;
                                            --verify FILE or $GTL_NB_CA_FILE: the CA of its certificate)
    gtl usage [--by model|provider|day|hour|user|status|...] [--days N] [--json]   the ledger's sums
                                            (this machine's file; a gateway's with gtl --gateway URL usage)
    gtl sim PROVIDER [--port P] [--seed S] [--pace SECONDS]
    gtl gap wrap|transform|parse|graph ...
    gtl serve [--config FILE] [--stdio | --http/--grpc/--quic HOST:PORT] [--tls-cert F --tls-key F]
    gtl certs DIRECTORY [--name NAME ...]
    gtl token mint|list|revoke ...      GhostTokens (docs/tokens.md)
    gtl keys add|list|remove|rotate|genkey ...   the provider-key vault (docs/vault.md)
    gtl audit verify|tail ...           the gateway's audit log (docs/operations.md)
    gtl usage [--by model|provider|day|hour|user|status|...] [--days N]   what the usage ledger recorded
    gtl ledger prune ...                the ledger's retention, by hand (docs/ledger.md)

Errors a user can fix print one line (``gtl: error: …``) and exit with status 2; provider errors
print their GTL code and exit with status 1, and so does a refusal that passes in time (a retryable
``RATE_LIMIT``).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gtl_nb.client import CA_FILE_ENV, CONNECT_READS, TOKEN_VARIABLES
from gtl_nb.notebook.args import effort_choice, finite_float, non_negative_int
from gtl_nb.protocol.errors import ConfigurationError, GTLError, PermissionDeniedError, RequestError
from gtl_nb.words import shown_in_terminal

GATEWAY_ENV = "GTL_NB_GATEWAY"
"""The gateway ``complete`` and ``models`` use when ``--gateway`` is not given."""
TOKEN_ENV = TOKEN_VARIABLES[0]
"""The variable every message names for the gateway's token (``$GTL_TOKEN``): read from the environment
only, so it never shows in a process list — by ``client.sendable_environment_token``, in the SDK's and the
notebook's order (``TOKEN_VARIABLES``), so the terminal and ``gtl_nb.connect`` send the same token."""
FALLBACK_TOKEN_ENV = TOKEN_VARIABLES[1]
"""The older variable (``$GTL_NB_TOKEN``), read when ``$GTL_TOKEN`` is unset."""


class _Parser(argparse.ArgumentParser):
    """gtl's parsers (its subcommands' too: argparse makes them of the same class): a misspelt choice
    (``gtl complet``, ``--by modle``) is told the choice meant."""

    def error(self, message: str) -> NoReturn:
        from gtl_nb.cli_unknown import with_close_choice

        super().error(with_close_choice(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gtl", description="gtl_nb: every AI provider through one protocol.")
    parser.add_argument("--config", help="TOML configuration file (default: $GTL_NB_CONFIG, then the user config)")
    parser.add_argument(
        "--gateway",
        metavar="URL",
        default=None,  # $GTL_NB_GATEWAY is read after parsing: a command may ask whether it was typed
        help=f"run complete, models and usage on this gateway (ws://HOST:PORT, http://…, HOST:PORT) instead of "
        f"in this process (complete and models: default ${GATEWAY_ENV}; usage only as typed); its token is read "
        f"from ${TOKEN_ENV} (else ${FALLBACK_TOKEN_ENV})",
    )
    parser.add_argument(
        "--verify",
        metavar="FILE",
        default=None,
        help=f"with --gateway https://… (wss://, grpcs://, quic://): the CA file that signed the gateway's "
        f"certificate (`gtl certs` writes ca.pem; default ${CA_FILE_ENV}, else the system's trust store)",
    )
    parser.add_argument("--log", metavar="LEVEL", help="log verbosity: DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--version", action="version", version=f"gtl_nb {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    complete = sub.add_parser("complete", help="stream a completion to the terminal")
    complete.add_argument(
        "prompt", nargs="?", help="the prompt ('-', or none with standard input piped in, reads standard input)"
    )
    complete.add_argument("--model", "-m", default=None, help="model or provider:model (default: echo)")
    complete.add_argument("--provider", help="deployment to use")
    complete.add_argument("--system", "-s", help="system prompt")
    complete.add_argument("--temperature", "-t", type=finite_float, help="sampling temperature (0 = deterministic)")
    complete.add_argument(
        "--max-tokens", type=int, metavar="N", help="most tokens to generate (a longer answer stops with 'length')"
    )
    complete.add_argument("--reasoning", action="store_true", help="show the model's reasoning when it has one")
    complete.add_argument(
        "--reasoning-effort",
        type=effort_choice,
        metavar="LEVEL",
        help="how hard the model thinks, shown or not: none, minimal, low, medium, high, xhigh or max "
        "(none: no thinking; each provider gets its own setting, converted)",
    )
    complete.add_argument(
        "--reasoning-budget", type=non_negative_int, metavar="N", help="thinking tokens the model may spend (0: none)"
    )
    complete.add_argument("--json", action="store_true", help="print every GTL event as a JSON line")
    unquoted = 'the prompt is one argument: quote it (gtl complete "hello world")'
    complete.set_defaults(handler=_complete, unknown_option_hints={"": unquoted})

    models = sub.add_parser("models", help="list providers and models")
    models.add_argument("--json", action="store_true", help="print provider_info messages as JSON lines")
    models.set_defaults(handler=_models)

    _optional_subcommands(sub)
    for name in GATEWAY_COMMANDS:  # `gtl complete --gateway URL ...` reads as well as `gtl --gateway URL complete ...`
        sub.choices[name].add_argument(
            "--gateway",
            metavar="URL",
            default=argparse.SUPPRESS,  # not typed here: the one before the command (or none) stands
            help=f"run on this gateway instead of in this process (as gtl --gateway; token from ${TOKEN_ENV})",
        )
        sub.choices[name].add_argument(
            "--verify",
            metavar="FILE",
            default=argparse.SUPPRESS,  # not typed here: the one before the command (or none) stands
            help=f"the CA file of the gateway's certificate (as gtl --verify; default ${CA_FILE_ENV})",
        )
    for name in CONFIG_COMMANDS:  # `gtl complete --config FILE ...` reads as well as `gtl --config FILE complete ...`
        sub.choices[name].add_argument(
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,  # not typed here: the one before the command (or none) stands
            help="TOML configuration file (as gtl --config)",
        )
    parser.set_defaults(gateway_usage_rows=_gateway_usage_rows)  # `gtl --gateway URL usage` (engine.ledger_cli)
    return parser


GATEWAY_COMMANDS = ("complete", "models", "usage")
"""The commands ``--gateway`` sends to a gateway; it may follow their name too."""
CONFIG_COMMANDS = ("complete", "models")
"""This module's commands ``--config`` may follow too (the others' modules take it after their names)."""


def _version() -> str:
    """The installed package's version (the package's own module is above this one's layer)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gtl-nb")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _optional_subcommands(sub: Any) -> None:
    """Commands that live with their packages (``gtl sim``, ``gtl gap``, ``gtl serve``, ``gtl token``, …)."""
    for module_name in (
        "gtl_nb.sim.cli",
        "gtl_nb.gap.cli",
        "gtl_nb.gateway.cli",
        "gtl_nb.gateway.certs",
        "gtl_nb.gateway.token_cli",
        "gtl_nb.gateway.keys_cli",
        "gtl_nb.gateway.audit_cli",
        "gtl_nb.engine.ledger_cli",
    ):
        try:
            module = __import__(module_name, fromlist=["add_subcommands"])
        except ImportError:
            continue
        module.add_subcommands(sub)


def _client(args: argparse.Namespace) -> Any:
    from gtl_nb.client import connect, is_embedded, sendable_environment_token

    if args.gateway:
        if args.config is not None:
            raise ConfigurationError(
                f"--config configures this process's engine; a gateway (--gateway or ${GATEWAY_ENV}) has its own: "
                "give one of them"
            )
        # $GTL_NB_GATEWAY=embedded://: the engine here, which takes no token; a gateway's is read from the
        # same variables, in the same order, as gtl_nb.connect's
        if is_embedded(args.gateway):
            if args.verify is not None:
                raise ConfigurationError(
                    f"--verify {args.verify}: the engine of this process ({GATEWAY_ENV}={args.gateway}) has no "
                    "certificate to check; --verify is for a gateway's (--gateway https://…)"
                )
            return connect(args.gateway)
        if args.verify is not None and not Path(args.verify).expanduser().is_file():
            raise ConfigurationError(f"--verify {args.verify}: no such file (the CA file; gtl certs writes ca.pem)")
        token = sendable_environment_token()
        if args.verify is None:  # $GTL_NB_CA_FILE, else the system's store (connect reads it)
            return connect(args.gateway, token=token)
        return connect(args.gateway, token=token, verify=str(Path(args.verify).expanduser()))
    if args.verify is not None:
        raise ConfigurationError(
            f"--verify {args.verify} is the CA file of a gateway's certificate: give the gateway too "
            f"(--gateway https://HOST:PORT, or ${GATEWAY_ENV})"
        )
    if args.config is not None and not Path(args.config).expanduser().is_file():
        raise ConfigurationError(f"--config {args.config}: no such file")
    return connect(config=args.config)


def _gateway_usage_rows(args: argparse.Namespace, since: float | None) -> tuple[list[dict[str, Any]], str]:
    """The usage rows the gateway lets this token read (its own with ``usage:read``, everyone's with
    ``usage:admin``), and the words naming where they came from."""
    filters: dict[str, Any] = {} if since is None else {"since": since}
    with _client(args) as client:
        try:  # everyone's, when the token may read them; else its own
            frame = client.usage(all_users=True, **filters)
        except PermissionDeniedError:
            frame = client.usage(**filters)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return rows, f"the gateway at {args.gateway}"


# The engine words its set-up advice for Python callers; a shell user sets a variable or a TOML section.
_PYTHON_ADVICE = re.compile(r"pass providers=\{'(?P<name>[\w.-]+)': \{\.\.\.\}\}(?: to gtl_nb\.connect)?")


_OLDER_ADVICE = "give it to gtl_nb.connect as its token argument"
"""The same advice from a gateway older than ``CONNECT_READS`` (reworded alike; the longer form first)."""

# A scope refusal names the Python call it refused (``gateway.scopes.DOING``): the terminal's command instead
_SCOPE_ADVICE = (
    (
        "reading usage (client.usage())",
        "gtl --gateway URL usage (a token with it: gtl token mint ... --scope usage:read)",
    ),
    (
        "reading other users' usage (client.usage(all_users=True), or a user=)",
        "other users' usage (gtl usage --by user; a token with it: gtl token mint ... --scope usage:admin)",
    ),
    ("listing models (client.models())", "gtl --gateway URL models (gtl token mint ... --scope models:read)"),
)


def _for_the_shell(message: str) -> str:
    """A configuration error's message with Python advice rephrased as environment/``--config`` advice,
    shown as a terminal cannot act on (an error quotes what a provider or a gateway said: a model's name
    with an escape sequence in it stays text, and the error one line)."""
    message = _PYTHON_ADVICE.sub(r"add a [providers.\g<name>] section to the TOML file given with --config", message)
    message = message.replace("as gtl_nb.connect's token argument", f"in ${TOKEN_ENV} for gtl --gateway")
    for python_words in (f"give it to gtl_nb.connect as its token argument {CONNECT_READS}", _OLDER_ADVICE):
        message = message.replace(python_words, f"put it in ${TOKEN_ENV} for gtl --gateway")
    message = message.replace("the models query (gtl_nb's client.models())", "gtl --gateway URL models")
    for python_words in _VERIFY_ADVICE:  # a refused certificate: the CA file goes in --verify
        message = message.replace(python_words, _SHELL_VERIFY)
    for python_words, shell_words in _SCOPE_ADVICE:
        message = message.replace(python_words, shell_words)
    return shown_in_terminal(message.replace("(named by config=)", "(named by --config)"))


_VERIFY_ADVICE = ("pass verify= the CA file that signed it", "pass the gateway's CA file (verify=...)")
"""How the transports tell a Python caller to trust a private CA (``transports.endpoints``, ``quic.wire``,
``grpc.client``)."""
_SHELL_VERIFY = f"give the CA file that signed it with gtl --verify FILE (or in ${CA_FILE_ENV})"


_NEEDS_A_PROMPT = 'gtl complete needs a prompt: gtl complete "..." (or one piped in: echo ... | gtl complete)'


def _read_prompt(prompt: str | None) -> str:
    """The prompt argument, or standard input for ``-`` or for no prompt when input is piped in (less the
    newline ``echo`` and editors end it with); refused when there is none, or it is only blanks."""
    if prompt is None and (sys.stdin is None or sys.stdin.isatty()):  # (None: no standard input at all)
        raise ConfigurationError(_NEEDS_A_PROMPT)
    if prompt is not None and prompt != "-":
        return _not_blank(_utf8(prompt, "the prompt given"), "the prompt given")
    text = _utf8(_read_stdin(), "standard input")
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return _not_blank(text, "standard input")


_NOT_TEXT = (
    "{where} is not {encoding} text ({detail}); convert it first (iconv -f ENCODING -t {encoding}), and "
    "nothing was sent"
)


def _read_stdin() -> str:
    """Standard input as text in the locale's encoding (UTF-8 where the locale says ASCII, as Python's
    UTF-8 mode reads the C locale), its line ends as sent (as ``sys.stdin`` reads them): a
    ``ConfigurationError`` naming the first byte that is not, never a traceback or lone surrogates."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # (a text stream put in its place: its text is checked by _utf8)
        return sys.stdin.read()
    encoding = _input_encoding()
    reader = io.TextIOWrapper(buffer, encoding=encoding, errors="strict", newline="")
    try:
        return reader.read()
    except UnicodeDecodeError as exc:
        detail = f"byte 0x{exc.object[exc.start]:02x} is no {encoding}"
        raise ConfigurationError(_NOT_TEXT.format(where="standard input", encoding=encoding, detail=detail)) from None
    finally:
        reader.detach()  # (standard input stays open)


def _input_encoding() -> str:
    """The encoding standard input's text is in: the locale's, UTF-8 for an ASCII (C or POSIX) one."""
    import codecs

    named = getattr(sys.stdin, "encoding", None) or "utf-8"
    try:
        name = codecs.lookup(named).name
    except LookupError:
        return "UTF-8"
    return "UTF-8" if name in ("ascii", "utf-8") else named


def _utf8(text: str, where: str) -> str:
    """``text``, refused when it holds what no UTF-8 can carry: bytes of another encoding that Python
    decoded to lone surrogates (an argument, or input read with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        detail = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}, a lone surrogate"
        said = _NOT_TEXT.format(where=where, encoding="UTF-8", detail=f"{detail} is no UTF-8")
        raise ConfigurationError(said) from None
    return text


def _not_blank(prompt: str, where: str) -> str:
    """``prompt``, refused before anything is sent when it is empty or only whitespace: a provider would
    be paid (and the ledger written) for an answer to nothing — an unset shell variable, most often."""
    if not prompt.strip():
        raise ConfigurationError(f"{_NEEDS_A_PROMPT}; {where} was empty, and nothing was sent")
    return prompt


def _complete(args: argparse.Namespace) -> int:
    prompt = _read_prompt(args.prompt)
    with _client(args) as client:
        return _stream_to_terminal(client, args, prompt)


def _stream_to_terminal(client: Any, args: argparse.Namespace, prompt: str) -> int:
    from gtl_nb.protocol.codec import encode
    from gtl_nb.protocol.messages import Reasoning, Status, Token

    stream = client.stream(
        args.model,
        prompt,
        provider=args.provider,
        system=args.system,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        reasoning=args.reasoning,
        reasoning_effort=args.reasoning_effort,
        reasoning_budget=args.reasoning_budget,
    )
    out = sys.stdout
    for event in stream:
        if args.json:
            out.write(encode(event).decode() + "\n")
        elif isinstance(event, Token):
            out.write(event.text)
        elif isinstance(event, Reasoning):
            sys.stderr.write(event.text)
        elif isinstance(event, Status) and event.state == "failover":  # (the reason quotes the provider)
            moved = f"{event.from_provider} -> {event.to_provider}: {event.reason}"
            out.write(f"\n[failover {shown_in_terminal(moved)}]\n")
        out.flush()
    result = stream.result()  # raises the session's error
    if not args.json:
        # the answer's text is printed as the model wrote it; the lines around it name what the
        # provider chose (a call's name and arguments, the served model in the footer): shown escaped
        for call in result.tool_calls:
            out.write(f"\n[tool call] {shown_in_terminal(f'{call.name}({call.arguments})')}")
        out.write(f"\n-- {shown_in_terminal(result.footer())}\n")
    return 0


def _models(args: argparse.Namespace) -> int:
    from gtl_nb.protocol.codec import encode

    with _client(args) as client:
        infos = client.providers()
        remote = client.transport != "embedded"
        if not infos and remote:
            _check_listing_allowed(client)
    if not infos and not args.json:
        print(f"gtl: no providers listed{' for this token' if remote else ''}", file=sys.stderr)
        return 0
    # every name as the terminal shows it: a deployment's name is the configuration's, a model's may be
    # the provider's own list's, and neither may move the cursor or forge a row (``shown_in_terminal``)
    names = {id(model): shown_in_terminal(model.name) for info in infos for model in info.models}
    width = max([40, *map(len, names.values())])  # long Bedrock ids too
    for info in infos:
        if args.json:
            print(encode(info).decode())
            continue
        flag = " (offline)" if info.offline else ""
        kind = shown_in_terminal(info.provider_type or "")
        print(f"{shown_in_terminal(info.provider)} [{kind}]{flag}")
        for model in info.models:
            price = (
                f"${_per_million(model.cost_per_1k_input)}/1M in, ${_per_million(model.cost_per_1k_output)}/1M out"
                if model.cost_per_1k_input is not None and model.cost_per_1k_output is not None
                else "price unknown"
            )
            window = _window(model.context_window, offline=info.offline)
            print(f"  {names[id(model)]:<{width}} {window:>14}  {price}")
    return 0


def _check_listing_allowed(client: Any) -> None:
    """Raise the gateway's ``FORBIDDEN`` when it showed no providers because this token may not see them.

    A gateway shows a token without ``models:read`` an empty provider list on connecting, which reads
    like a gateway that serves nothing. The ``models`` query checks that scope before anything else, so
    asking it (for no deployment) tells the two apart: refused for the scope, or refused for the missing
    deployment (``INVALID_REQUEST``; a gateway without queries: a ``ConfigurationError``) — the list
    really is empty. Any other failure of the question is the command's error."""
    from gtl_nb.protocol.errors import InvalidRequestError, PermissionDeniedError

    try:
        client.list_models("")
    except PermissionDeniedError:
        raise PermissionDeniedError(
            f"the gateway shows its models only to a token with the models:read scope, and ${TOKEN_ENV} lacks it "
            "(gtl token mint ... --scope models:read)"
        ) from None
    except (InvalidRequestError, ConfigurationError):
        pass


def _per_million(per_1k: float) -> str:
    """A price per 1,000 tokens (the catalog's unit) as providers quote it, per million, in plain digits
    (``0.05``, not ``5e-05`` per 1k), cents at least (``0.60``, ``2.00``)."""
    per_million = per_1k * 1000
    if not math.isfinite(per_million):
        return "?"
    digits = 4 if per_million == 0 or abs(per_million) >= 0.0001 else 10  # a tiny price is no free one
    whole, _, fraction = f"{abs(per_million):.{digits}f}".rstrip("0").partition(".")
    return f"{'-' if per_million < 0 else ''}{whole}.{fraction.ljust(2, '0')}"


def _window(tokens: int | None, *, offline: bool) -> str:
    """The context-window column: local generators (echo) have none, which is not the same as unknown."""
    if tokens:
        return f"{tokens:,} ctx"
    return "ctx n/a" if offline else "ctx ?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    args.gateway_given = bool(args.gateway)  # typed (gtl usage then asks the gateway), or from the environment
    if not args.gateway:
        args.gateway = os.environ.get(GATEWAY_ENV) or None
    if extras:
        if args.command == "keys":  # a secret typed on the command line: never printed back
            print(
                "gtl: error: gtl keys takes no such argument (not shown: it may be a key). A key's secret is read "
                "from standard input or a hidden prompt, never from the command line; nothing was stored",
                file=sys.stderr,
            )
            return 2
        from gtl_nb.cli_unknown import HINTS_KEY, refusal

        own, message = refusal(parser, sys.argv[1:] if argv is None else argv, extras, getattr(args, HINTS_KEY, {}))
        own.error(message)  # the subcommand's usage line, which names its options
    if args.log:
        from gtl_nb.log import configure_logging

        configure_logging(args.log)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except ConfigurationError as exc:
        print(f"gtl: error: {_for_the_shell(str(exc))}", file=sys.stderr)
        return 2
    except RequestError as exc:
        print(f"gtl: error: {_for_the_shell(str(exc))}", file=sys.stderr)
        # a refusal that passes (a rate limit, after the engine's own retries; a revocation list that could
        # not be read): the provider's or gateway's state, not the command's mistake, so a script may retry
        # on 1; an exhausted quota (not retryable) stays a 2, as sending again will not help
        return 1 if exc.retryable else 2
    except GTLError as exc:  # the provider's or the gateway's trouble, not the command's: exit status 1
        # (a refused connection already asks whether the gateway runs: transports/unreached.py)
        print(f"gtl: error: {_for_the_shell(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ngtl: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gtl ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
