"""``gtl reload [--pid PID | --pidfile FILE]``: ask a running gateway to reload its configuration.

It sends SIGHUP to the gateway's process (``gtl serve --pidfile FILE`` writes its id there); the
gateway re-reads and validates its file and prints on its standard error one line saying what it
reloaded, or why it kept the previous configuration (``gateway.reload``).
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["add_reload_subcommand", "gateway_pid", "send_reload"]


def add_reload_subcommand(subparsers: Any) -> None:
    """Register ``reload`` on the ``gtl`` command's subparsers (handler in ``handler``)."""
    parser = subparsers.add_parser(
        "reload",
        help="make a running gateway reload its configuration file (SIGHUP)",
        description="Send SIGHUP to a running gateway: it reloads deployments, routing, prices, budgets and "
        "its token policy without a restart; its standard error says what changed.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="the gateway's process id")
    which.add_argument("--pidfile", metavar="FILE", help="the file gtl serve --pidfile FILE wrote")
    parser.set_defaults(handler=_reload)


def gateway_pid(*, pid: int | None = None, pidfile: str | os.PathLike[str] | None = None) -> int:
    """The gateway's process id: ``pid``, or the one ``pidfile`` holds (``ConfigurationError`` when unusable)."""
    if pid is not None:
        if pid <= 0:  # 0 and negative ids would signal whole process groups
            raise ConfigurationError(f"--pid takes a process id, not {pid}")
        return pid
    if pidfile is None:
        raise ConfigurationError("give --pid PID or --pidfile FILE")
    try:
        text = Path(pidfile).expanduser().read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigurationError(f"--pidfile {pidfile}: {exc.strerror or exc} (is the gateway running?)") from None
    if not text.isdigit() or int(text) <= 0:
        raise ConfigurationError(f"--pidfile {pidfile} holds no process id")
    return int(text)


_GATEWAY_COMMANDS = ("gtl_nb", "gtl")
"""What a gateway's command line holds (``gtl serve``, ``python -m gtl_nb serve``, ``python -m gtl_nb.gateway``)."""


def _not_a_gateway(pid: int) -> str | None:
    """Why process ``pid`` is not a gateway, as far as ``/proc`` tells (``None``: it may be one, or there
    is no ``/proc`` to ask). SIGHUP ends most other programs: a pid file left by a gateway that was
    killed may name a process that took its id since."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else f"no process {pid}: is the gateway running?"
    except OSError:
        return None
    words = [word.decode("utf-8", "replace") for word in raw.split(b"\0") if word]
    if any(Path(word).name in _GATEWAY_COMMANDS or word.startswith("gtl_nb") for word in words):
        return None
    shown = " ".join(words)[:80] or "?"
    return f"process {pid} is not a gtl_nb gateway ({shown}); SIGHUP would likely end it, so none was sent"


def send_reload(pid: int) -> None:
    """SIGHUP to ``pid`` (``ConfigurationError`` when no such process, not a gateway, or not ours to signal)."""
    hang_up = getattr(signal, "SIGHUP", None)
    if hang_up is None:
        raise ConfigurationError("gtl reload needs SIGHUP, which this platform does not have")
    refusal = _not_a_gateway(pid)
    if refusal is not None:
        raise ConfigurationError(refusal)
    try:
        os.kill(pid, hang_up)
    except ProcessLookupError:
        raise ConfigurationError(f"no process {pid}: is the gateway running?") from None
    except PermissionError:
        raise ConfigurationError(
            f"process {pid} belongs to another user: run gtl reload as the gateway's user"
        ) from None


def _reload(args: argparse.Namespace) -> int:
    pid = gateway_pid(pid=args.pid, pidfile=args.pidfile)
    send_reload(pid)
    print(f"sent SIGHUP to gateway process {pid}; its standard error says what it reloaded")
    return 0
