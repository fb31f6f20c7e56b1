"""``gtl audit``: check and read the gateway's audit log (docs/operations.md).

    gtl audit verify [--log FILE]               the chain, every retained file and the checkpoint
    gtl audit tail [--log FILE] [-n N] [-f]     the last records, as JSON lines (-f: keep following)

Without ``--log`` the log is ``[gateway.audit] path`` of the configuration (``--config FILE``, as
``gtl --config``), then ``audit.jsonl`` in the user data directory. ``verify`` exits with 0 when the
log is intact, 1 when it is not (each problem on a line: what and where), 2 when there is no log there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["add_subcommands"]

FOLLOW_INTERVAL = 0.5
"""Seconds between two looks at the file for ``tail -f``."""


def add_subcommands(subparsers: Any) -> None:
    """Register ``audit`` on the ``gtl`` command's subparsers (handlers in ``handler``)."""
    audit = subparsers.add_parser(
        "audit",
        help="check (verify) or read (tail) the gateway's audit log",
        description="Check or read the gateway's hash-chained audit log.",
    )
    actions = audit.add_subparsers(dest="audit_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    # their own names: `gtl --log LEVEL` is the log verbosity, and a subcommand's default would
    # overwrite the global --config given before it
    common.add_argument("--log", dest="audit_log", metavar="FILE", help="the log's current file")
    common.add_argument("--config", dest="audit_config", metavar="FILE", help="TOML configuration (as gtl --config)")

    check = actions.add_parser(
        "verify",
        parents=[common],
        help="check the chain and the checkpoint (exit 1 with what is wrong and where)",
        description="Check every retained file of the audit log against its hash chain and checkpoint.",
    )
    check.set_defaults(handler=_verify)

    tail = actions.add_parser("tail", parents=[common], help="print the last records as JSON lines")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing records as they are written")
    tail.set_defaults(handler=_tail)


def _verify(args: argparse.Namespace) -> int:
    from gtl_nb.gateway.audit import checkpoint_path, verify

    path = _log_path(args)
    if not path.exists() and not checkpoint_path(path).exists():
        raise ConfigurationError(f"no audit log at {path} (give its current file with --log)")
    report = verify(path)
    print(report.describe(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _tail(args: argparse.Namespace) -> int:
    from gtl_nb.gateway.audit import rotated_files

    path = _log_path(args)
    if not path.exists():
        raise ConfigurationError(f"no audit log at {path} (give its current file with --log)")
    count = max(0, args.lines)
    last: deque[bytes] = deque(maxlen=count or None)
    if count:
        # a file just rotated may hold few records: take the rest from the newest rotated ones
        rotated = rotated_files(path)
        sources = [path, *(rotated[n] for n in sorted(rotated, reverse=True))]
        for source in sources:
            if len(last) >= count:
                break
            with source.open("rb") as handle:
                lines = [line for line in handle if line.endswith(b"\n")]
            last.extendleft(reversed(lines[-(count - len(last)) :]))
    out = sys.stdout.buffer
    out.writelines(last if count else [])
    out.flush()
    if args.follow:
        _follow(path, out)
    return 0


def _follow(path: Path, out: Any) -> None:
    """Print lines appended to ``path`` until interrupted, reopening it when it is rotated."""
    handle = path.open("rb")
    handle.seek(0, os.SEEK_END)
    identity = os.fstat(handle.fileno()).st_ino
    pending = b""
    try:
        while True:
            chunk = handle.read()
            if chunk:
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                if complete:
                    out.write(complete + b"\n")
                    out.flush()
                continue
            try:
                rotated = path.stat().st_ino != identity
            except FileNotFoundError:
                rotated = False  # between the rename and the new file
            if rotated:
                handle.close()
                handle = path.open("rb")
                identity = os.fstat(handle.fileno()).st_ino
                pending = b""
                continue
            time.sleep(FOLLOW_INTERVAL)
    finally:
        handle.close()


def _log_path(args: argparse.Namespace) -> Path:
    """``--log``, else ``[gateway.audit] path`` of the configuration, else the default file."""
    if args.audit_log:
        return Path(args.audit_log).expanduser()
    from gtl_nb.engine.config import load_config
    from gtl_nb.gateway.audit import AuditSettings

    config_file = args.audit_config or getattr(args, "config", None)
    if config_file is not None and not Path(config_file).expanduser().is_file():
        raise ConfigurationError(f"--config {config_file}: no such file")
    config = load_config(config=config_file)
    base = config.source_path.parent if config.source_path is not None else Path.cwd()
    return AuditSettings.from_table(config.gateway.get("audit"), base=base).path
