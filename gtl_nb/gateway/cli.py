"""``gtl serve``: the gateway as a subcommand of the ``gtl`` command (``cli._optional_subcommands``).

``gtl serve --stdio --config FILE`` and ``gtl --config FILE serve --stdio`` mean the same, as do
``gtl serve --log info`` and ``gtl --log info serve``.
``gtl reload`` (``gateway.reload_cli``) makes a running gateway reload its configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from gtl_nb.gateway.main import add_arguments, run

_LISTEN_OPTIONS = ("--port", "-p", "--host", "-H", "--bind", "-b")
"""Other servers' spellings of where to listen (``gtl serve`` says it with ``--http HOST:PORT``)."""

__all__ = ["add_subcommands"]


def add_subcommands(subparsers: Any) -> None:
    """Register ``serve`` (and ``reload``) on the ``gtl`` command's subparsers (handler in ``handler``)."""
    parser = subparsers.add_parser(
        "serve",
        help="run the gateway (--stdio: one connection on standard input and output; --http HOST:PORT)",
        description="Run the gtl_nb gateway.",
    )
    add_arguments(parser, config=False)
    # its own name: a subcommand's default would overwrite the global --config given before it
    parser.add_argument("--config", dest="serve_config", metavar="FILE", help="TOML configuration (as gtl --config)")
    parser.add_argument(  # as --config: after the command's name too (docs/configuration.md writes it so)
        "--log",
        metavar="LEVEL",
        default=argparse.SUPPRESS,  # not typed here: the one before the command (or none) stands
        help="log verbosity on standard error: DEBUG, INFO, WARNING, ERROR (as gtl --log)",
    )
    # the spellings of other servers' commands: one option here says host and port at once
    listen = dict.fromkeys(_LISTEN_OPTIONS, _listen_hint)
    parser.set_defaults(handler=_serve, unknown_option_hints=listen)
    from gtl_nb.gateway.reload_cli import add_reload_subcommand

    add_reload_subcommand(subparsers)  # gtl reload: the running gateway's other half


def _serve(args: argparse.Namespace) -> int:
    args.config = args.serve_config or getattr(args, "config", None)
    if not getattr(args, "log", None):  # (gtl --log LEVEL already did)
        from gtl_nb.log import configure_logging

        # as ``python -m gtl_nb.gateway``: an operator sees the gateway's warnings (an upstream it cannot
        # reach, a breaker opening, a store away) on standard error, at $GTL_NB_LOG or WARNING
        configure_logging()
    return run(args)


def _listen_hint(extras: Sequence[str]) -> str:
    """What ``gtl serve --host H --port P`` (another server's spelling) means here: ``--http H:P``."""
    from gtl_nb.cli_unknown import option_values

    hosts = option_values(extras, "--host", "-H", "--bind", "-b")
    ports = option_values(extras, "--port", "-p")
    host, port = (hosts[-1] if hosts else "127.0.0.1"), (ports[-1] if ports else "8787")
    if host.count(":") == 1:  # --bind HOST:PORT
        host, _, port = host.partition(":")
    elif ":" in host and not host.startswith("["):  # an IPv6 address: bracketed before its port
        host = f"[{host}]"
    names = (word.partition("=")[0] for word in extras)
    given = "/".join(dict.fromkeys(name for name in names if name in _LISTEN_OPTIONS))
    return f"for {given}, give the address as --http {host}:{port} (port 0: any free port)"
