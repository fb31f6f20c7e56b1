"""``gtl serve``: the gateway as a subcommand of the ``gtl`` command (``cli._optional_subcommands``).

``gtl serve --stdio --config FILE`` and ``gtl --config FILE serve --stdio`` mean the same.
``gtl reload`` (``gateway.reload_cli``) makes a running gateway reload its configuration.
"""

from __future__ import annotations

import argparse
from typing import Any

from gtl_nb.gateway.main import add_arguments, run

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
    # the spellings of other servers' commands: one option here says host and port at once
    listen = "give the address as --http HOST:PORT (127.0.0.1:8787; port 0: any free port)"
    parser.set_defaults(handler=_serve, unknown_option_hints={"--port": listen, "--host": listen, "--bind": listen})
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
