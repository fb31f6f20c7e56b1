"""``gtl reload [--pid PID | --pidfile FILE] [--wait SECONDS]``: ask a running gateway to reload its
configuration, and say whether it was taken.

It sends SIGHUP to the gateway's process (``gtl serve --pidfile FILE`` writes its id there); the
gateway re-reads and validates its file and prints on its standard error one line saying what it
reloaded, or why it kept the previous configuration (``gateway.reload``). A gateway started with
``--pidfile`` also keeps that line in ``FILE.reload`` (``gateway.reload_report``): ``gtl reload``
waits for the reload its signal asked for and prints the line — exit status 0 when it was taken,
1 when it was refused or no answer came in time, 3 when it was taken but for a part to ask for
again or settings that apply only at a restart (the line names them; they are also said on standard
error). A gateway's report appears once it handles SIGHUP: until then ``gtl reload`` waits (a
gateway that has written its pid file counts a SIGHUP and reloads once it is up, but the answer
would be lost). A report that never comes — one the gateway cannot write (it logs why) — does not
stop the reload: the signal goes after the wait, and the gateway's standard error says the rest.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gtl_nb.gateway.reload_report import read_report, report_path, wait_for_reload, wait_for_report
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
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_WAIT,
        help=f"how long to wait for the gateway to say whether it took the reload (default {DEFAULT_WAIT:g}; "
        "0: send the signal only)",
    )
    parser.set_defaults(handler=_reload)


DEFAULT_WAIT = 30.0
"""Seconds ``gtl reload`` waits for the outcome: a reload reads one file, but may wait on a Redis
that does not answer (a new revocation list) for its connect timeout."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, not {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"between 0 and 3600 seconds, not {text}")
    return value


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
"""The programs whose ``serve`` subcommand is a gateway (``gtl serve``, ``python -m gtl_nb serve``)."""


def _runs_a_gateway(words: list[str]) -> bool:
    """Whether a command line is a gtl_nb gateway's: ``gtl … serve …``, ``python -m gtl_nb … serve …`` or
    ``python -m gtl_nb.gateway …`` — not any ``gtl`` command (``gtl complete`` and ``gtl audit tail -f`` end
    at a SIGHUP, and so would a notebook's kernel started as ``python -m gtl_nb…``)."""
    for index, word in enumerate(words):
        if word == "gtl_nb.gateway" or word.startswith("gtl_nb.gateway."):
            return True
        if Path(word).name in _GATEWAY_COMMANDS and "serve" in words[index + 1 :]:
            return True
    return False


def _command_line(pid: int) -> list[str] | None:
    """Process ``pid``'s command line as ``/proc`` gives it (``None``: no ``/proc``, or it would not say)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [word.decode("utf-8", "replace") for word in raw.split(b"\0") if word]


def _not_a_gateway(pid: int) -> str | None:
    """Why process ``pid`` is not a gateway, as far as ``/proc`` tells (``None``: it may be one, or there
    is no ``/proc`` to ask). SIGHUP ends most other programs: a pid file left by a gateway that was
    killed may name a process that took its id since."""
    words = _command_line(pid)
    if words is None:
        if Path("/proc/self").exists() and not Path(f"/proc/{pid}").exists():
            return f"no process {pid}: is the gateway running?"
        return None
    if _runs_a_gateway(words):
        return None
    shown = " ".join(words)[:80] or "?"
    return f"process {pid} is not a gtl_nb gateway ({shown}); SIGHUP would likely end it, so none was sent"


def running_gateway(pid: int) -> bool:
    """Whether process ``pid`` runs and is (as far as ``/proc`` tells) a gtl_nb gateway."""
    return _alive(pid) and _not_a_gateway(pid) is None


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


def pidfile_of(pid: int) -> Path | None:
    """The ``--pidfile`` gateway ``pid`` was started with, as its command line in ``/proc`` names it
    (made absolute from its working directory); ``None`` when it names none or cannot be read."""
    words = _command_line(pid)
    if not words:
        return None
    found: str | None = None
    for index, word in enumerate(words):
        name, equals, value = word.partition("=")
        # argparse takes any unambiguous prefix (``--pidf``); ``--pi`` is the shortest (``--principal``)
        if not (len(name) >= len("--pi") and "--pidfile".startswith(name)):
            continue
        if equals:
            found = value
        elif index + 1 < len(words):
            found = words[index + 1]
    if not found:
        return None
    path = Path(found).expanduser()
    if not path.is_absolute():
        try:
            path = Path(os.readlink(f"/proc/{pid}/cwd")) / path
        except OSError:
            return None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


TAKEN_IN_PART = 3
"""``gtl reload``'s exit status for a reload taken but for a part to ask for again, or for settings that
apply only at a restart."""


def _reload(args: argparse.Namespace) -> int:
    pid = gateway_pid(pid=args.pid, pidfile=args.pidfile)
    if "--stdio" in (_command_line(pid) or ()):
        raise ConfigurationError(
            f"gateway process {pid} serves one connection on its pipes (--stdio): it has no reload, and SIGHUP "
            "would end it, so none was sent; restart it to change its configuration"
        )
    pidfile = Path(args.pidfile).expanduser() if args.pidfile else pidfile_of(pid)
    if pidfile is None:  # a gateway that keeps no report (started without --pidfile): the signal alone
        send_reload(pid)
        print(
            f"sent SIGHUP to gateway process {pid}; its standard error says what it reloaded "
            "(started with --pidfile FILE, it would also tell gtl reload)"
        )
        return 0
    report = report_path(pidfile)
    refusal = _not_a_gateway(pid)  # before waiting on a report that would never come
    if refusal is not None:
        raise ConfigurationError(refusal)
    before = wait_for_report(report, pid=pid, timeout=args.wait, alive=_alive)
    if before is None:
        return _without_report(pid, report)
    send_reload(pid)
    if args.wait == 0:
        print(f"sent SIGHUP to gateway process {pid}; its standard error says what it reloaded")
        return 0
    outcome = wait_for_reload(report, pid=pid, after=before.signals, timeout=args.wait, alive=_alive)
    if outcome is None:
        gone = not _alive(pid)
        print(
            f"gtl reload: sent SIGHUP to gateway process {pid}, which "
            + ("exited before it reported a reload" if gone else f"reported no reload within {args.wait:g} s")
            + "; its standard error says what happened",
            file=sys.stderr,
        )
        return 1
    if outcome.ok:
        print(f"gateway {pid}: {outcome.line}")
        if not outcome.partial:
            return 0
        print(f"gtl reload: gateway {pid} took the reload in part: {_what_is_left(outcome.line)}", file=sys.stderr)
        return TAKEN_IN_PART
    print(f"gtl reload: gateway {pid}: {outcome.line}", file=sys.stderr)
    return 1


_RESTART = "changed but not reloadable, restart to apply: "
_NOT_RENEWED = "token policy not renewed"
_WARNING = "; warning: "
_SECRET_ENV_NOTE = "; [gateway.jwt] secret_env is read at start"
"""The start of the note ``reload.secret_env_note`` ends a line with: said of every reload of a gateway
whose secret is in its environment, it is no item of what a reload left undone."""


def _what_is_left(line: str | None) -> str:
    """What a reload taken in part left undone, from its line: the settings that need a restart, the
    token policy to ask for again."""
    text, left = (line or "").split(_SECRET_ENV_NOTE)[0], []
    # (the line's order: what changed; the token policy not renewed; the restart list; warnings)
    token, restart = text.find(_NOT_RENEWED), text.find(_RESTART)
    if token >= 0:
        left.append(text[token : restart - 2 if restart > token else len(text)].split(_WARNING)[0])
    if restart >= 0:
        left.append(f"restart the gateway to apply {text[restart + len(_RESTART) :].split(_WARNING)[0]}")
    return "; ".join(left) or "its line says what was left undone"


def _without_report(pid: int, report: Path) -> int:
    """No report from ``pid`` came within the wait: the signal without an answer (status 0), or, for a
    process that exited or is not the one the report is about, none (status 1)."""
    found = read_report(report)
    if found is not None and found.pid != pid:  # an init (tini) as process 1, its child the gateway
        why = (
            f"the reload report {report} is process {found.pid}'s, not {pid}'s: name the gateway's own process "
            f"(gtl reload --pidfile {report.with_suffix('')})"
        )
    elif not _alive(pid):
        why = f"gateway process {pid} exited"
    else:
        send_reload(pid)
        print(
            f"gtl reload: sent SIGHUP to gateway process {pid}, which keeps no reload report at {report} to answer "
            "(it logs why it cannot write one); its standard error says what it reloaded",
            file=sys.stderr,
        )
        return 0
    print(f"gtl reload: no signal sent: {why}", file=sys.stderr)
    return 1
