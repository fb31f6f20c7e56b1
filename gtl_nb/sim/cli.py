"""``gtl sim PROVIDER`` — run one simulator in the foreground until Ctrl-C.

    gtl sim openai --port 0 --seed 1 --pace 0.05 [--model gpt-4o-mini …| --any-model]

prints the base URL to give the provider's SDK (one line on standard output, so scripts can read it) and
serves until interrupted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from gtl_nb.sim.base import (
    ANY_MODEL,
    DEFAULT_API_KEY,
    DEFAULT_AWS_ACCESS_KEY_ID,
    DEFAULT_AWS_SECRET_ACCESS_KEY,
    PROVIDERS,
)
from gtl_nb.sim.server import serve

__all__ = ["add_subcommands", "run_sim"]


def add_subcommands(subparsers: Any) -> None:
    """Register ``sim`` on the ``gtl`` command's subparsers (handler in ``handler``)."""
    parser = subparsers.add_parser(
        "sim",
        help="serve an offline provider simulator on loopback",
        description="Serve an offline simulator that speaks the provider's real wire format.",
    )
    parser.add_argument("provider", choices=sorted(PROVIDERS), help="which provider to simulate")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="TCP port (default: 0, an ephemeral port)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic answers")
    parser.add_argument("--pace", type=_seconds, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--api-key", default=None, help="the key the simulator expects (default: sim-key)")
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="serve only these models (repeatable; default: the provider's own list)",
    )
    models.add_argument(
        "--any-model",
        action="store_const",
        const=ANY_MODEL,
        dest="models",
        help="accept any model name instead of answering an unknown one with the provider's 'not found' error",
    )
    parser.set_defaults(handler=run_sim)


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: 0 (any free one) to 65535")
    return port


def _seconds(text: str) -> float:
    """A pause of zero seconds or more."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a pause: give 0 or more seconds")
    return seconds


#: the variables gtl_nb (and each provider's SDK) read a base URL and key from, where it reads them;
#: the simulators import nothing from the rest of gtl_nb, so ``tests/sim/test_cli.py`` follows this advice
_VARIABLES = {
    "openai": ("OPENAI_BASE_URL", "OPENAI_API_KEY"),
    "anthropic": ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
    "ollama": ("OLLAMA_HOST", None),
}


def _how_to_use(provider: str, base_url: str, key: str) -> str:
    """How to point gtl_nb at the simulator: the provider's own variables where gtl_nb reads a base URL
    from one (OpenAI's, Anthropic's, Ollama's, which their SDKs read too), else a TOML section to paste."""
    if provider in _VARIABLES:
        url_variable, key_variable = _VARIABLES[provider]
        variables = [f"{url_variable}={base_url}", *([f"{key_variable}={key}"] if key_variable else [])]
        return "to use it, export " + " ".join(variables)
    settings = {"base_url": base_url}
    if provider == "bedrock":  # signed requests: the simulator's own key pair
        settings |= {
            "region": "us-east-1",
            "aws_access_key_id": DEFAULT_AWS_ACCESS_KEY_ID,
            "aws_secret_access_key": DEFAULT_AWS_SECRET_ACCESS_KEY,
        }
    else:
        settings["api_key"] = key
    lines = [f"[providers.{provider}]", *(f'{name} = "{value}"' for name, value in settings.items())]
    return "to use it, put this in a TOML file given with gtl --config FILE:\n" + "\n".join(lines)


def run_sim(args: argparse.Namespace, *, stop: threading.Event | None = None) -> int:
    """Start the simulator, print its base URL, and block until Ctrl-C (or until ``stop`` is set)."""
    options: dict[str, Any] = {}
    if args.models:
        options["models"] = args.models
    try:
        sim = serve(
            args.provider,
            seed=args.seed,
            pace=args.pace,
            api_key=args.api_key,
            host=args.host,
            port=args.port,
            **options,
        )
    except OSError as exc:  # a port in use, a name that does not resolve, an address not of this machine
        reason = exc.strerror or str(exc)
        hint = "; another process has it (pick another --port, or 0 for any free one)" if exc.errno == 98 else ""
        print(f"gtl sim: cannot listen on {args.host}:{args.port}: {reason}{hint}", file=sys.stderr)
        return 2
    try:
        print(sim.base_url, flush=True)
        key = args.api_key if args.api_key is not None else DEFAULT_API_KEY
        # the key on standard error only: standard output stays the one line scripts read
        if args.provider == "bedrock":
            credentials = f"AWS key pair {DEFAULT_AWS_ACCESS_KEY_ID} / {DEFAULT_AWS_SECRET_ACCESS_KEY}"
            if args.api_key is not None:
                credentials += f", or the bearer key {key!r}"
        elif args.provider == "ollama":
            credentials = "no key"
        else:
            credentials = f"API key {key!r}"
        print(
            f"gtl sim: {args.provider} simulator listening ({credentials}); Ctrl-C to stop\n"
            f"gtl sim: {_how_to_use(args.provider, sim.base_url, key)}",
            file=sys.stderr,
            flush=True,
        )
        waiter = stop or threading.Event()
        while not waiter.wait(0.5):  # a timed wait keeps Ctrl-C responsive on every platform
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.close()
    return 0
