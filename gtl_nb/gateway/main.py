"""The gateway's command line: ``python -m gtl_nb.gateway --stdio [--config FILE] [--principal NAME]``.

``add_arguments`` and ``run`` are shared with ``gtl serve`` (``gateway.cli``). Errors a user can fix
print one line on standard error and exit with status 2; standard output carries only frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """The gateway's options (``config=False`` when the parent command already has ``--config``)."""
    parser.add_argument("--stdio", action="store_true", help="serve one connection on standard input and output")
    parser.add_argument(
        "--http", metavar="HOST:PORT", help="serve HTTP, SSE and discovery on one TCP port (port 0: any free port)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="let a plaintext --http listener bind to an address beyond loopback"
    )
    if config:
        parser.add_argument("--config", help="TOML configuration file (default: $GTL_NB_CONFIG, then the user config)")
    parser.add_argument(
        "--principal",
        metavar="NAME",
        help="TEMPORARY: who sessions are accounted to (default: the user running the gateway)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve as ``args`` say; raises ``ConfigurationError`` for a set-up mistake (after which nothing was served)."""
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.devauth import DevAuth
    from gtl_nb.gateway.settings import GatewaySettings
    from gtl_nb.gateway.stdio import serve_stdio
    from gtl_nb.transports.stdio import take_stdout

    if getattr(args, "http", None):
        return _run_http(args)
    if not args.stdio:
        raise ConfigurationError("choose a transport: --stdio or --http HOST:PORT")
    frames_fd = take_stdout()  # first: nothing may print on the frames
    settings = load_settings(config=args.config)
    authenticate = DevAuth.from_settings(GatewaySettings.from_settings(settings).auth, principal=args.principal)
    asyncio.run(_until_signalled(serve_stdio(settings, authenticate=authenticate, frames_fd=frames_fd)))
    return 0


def _run_http(args: argparse.Namespace) -> int:
    """``--http HOST:PORT``: prints ``listening on http://HOST:PORT`` on standard error once it accepts."""
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.devauth import DevAuth
    from gtl_nb.gateway.http import bind, serve_http
    from gtl_nb.gateway.settings import GatewaySettings

    host, sep, port = args.http.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigurationError(f"--http takes HOST:PORT (127.0.0.1:8080), not {args.http!r}")
    host = host.strip("[]")
    settings = load_settings(config=args.config)
    options = GatewaySettings.from_settings(settings)
    authenticate = DevAuth.from_settings(options.auth, principal=args.principal)
    try:
        sock = bind(host, int(port), insecure=args.insecure)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {args.http}: {exc.strerror or exc}") from None

    def ready(base: str) -> None:
        print(f"gtl gateway: listening on {base}", file=sys.stderr, flush=True)

    async def serve() -> None:
        engine = build_engine(settings)
        try:
            await serve_http(
                engine, sock, authenticate=authenticate, max_body_bytes=options.max_frame_bytes, ready=ready
            )
        finally:
            await engine.aclose()

    asyncio.run(serve())  # uvicorn handles SIGINT and SIGTERM: running sessions are cancelled, rows completed
    return 0


async def _until_signalled(serving: Coroutine[Any, Any, None]) -> None:
    """Run ``serving``; SIGTERM and SIGHUP cancel it, so sessions end and ledger rows complete."""
    task = asyncio.ensure_future(serving)
    loop = asyncio.get_running_loop()
    for signum in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if signum is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gtl_nb.gateway", description="The gtl_nb gateway.")
    add_arguments(parser)
    parser.add_argument("--log", metavar="LEVEL", help="log verbosity on standard error: DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    from gtl_nb.log import configure_logging

    configure_logging(args.log)
    try:
        return run(args)
    except ConfigurationError as exc:
        print(f"gtl gateway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
