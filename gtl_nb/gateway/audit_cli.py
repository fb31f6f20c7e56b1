"""``gtl audit``: check and read the gateway's audit log (docs/operations.md).

    gtl audit verify [--log FILE] [--url URL]          the file log's chain, files and checkpoint; every
                                                       replica's chain in PostgreSQL
    gtl audit tail [--log FILE | --url URL [--replica NAME]] [-n N] [-f]
                                                       the last records, as JSON lines (-f: keep following a file)
    gtl audit drain-spool FILE [--url URL]             an audit spool left under another database's name
                                                       (docs/deploy.md), into the configured database

Without ``--log`` or ``--url`` the places are those of ``[gateway.audit]`` in the configuration
(``--config FILE``, as ``gtl --config``): its ``path`` (``audit.jsonl`` in the user data directory when
the table has neither ``path`` nor ``url``) and its ``url``. ``verify`` exits with 0 when every place is
intact, 1 when one is not (each problem on a line: what and where), 2 when there is nothing there to
check or the database cannot be reached. A file log a running gateway writes (it holds the log's lock)
whose only "problems" are its newest records, not checkpointed yet, is intact: exit 0, and says so.
A password in a URL is never printed; libpq also reads it from ``PGPASSWORD`` or ``~/.pgpass``, which
keeps it off the command line.
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
        description="Check or read the gateway's hash-chained audit log (a file, or PostgreSQL).",
    )
    actions = audit.add_subparsers(dest="audit_action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    # their own names: `gtl --log LEVEL` is the log verbosity, and a subcommand's default would
    # overwrite the global --config given before it
    common.add_argument("--log", dest="audit_log", metavar="FILE", help="the file log's current file")
    common.add_argument(
        "--url", dest="audit_url", metavar="URL", help="the PostgreSQL database: postgresql://user@host/database"
    )
    common.add_argument("--config", dest="audit_config", metavar="FILE", help="TOML configuration (as gtl --config)")

    check = actions.add_parser(
        "verify",
        parents=[common],
        help="check the chains and their heads (exit 1 with what is wrong and where)",
        description="Check the file log against its hash chain and checkpoint, and each replica's chain in "
        "PostgreSQL against its head.",
    )
    check.set_defaults(handler=_verify)

    tail = actions.add_parser("tail", parents=[common], help="print the last records as JSON lines")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many records (default 10)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing records as they are written (a file)")
    tail.add_argument("--replica", metavar="NAME", help="with --url: only this replica's chains (its name or chain id)")
    tail.set_defaults(handler=_tail)

    drain = actions.add_parser(
        "drain-spool",
        parents=[common],
        help="write an audit spool file into the configured database (once: a replay changes nothing)",
        description="Write the records an audit log spooled in FILE (audit-spool-<digest>.jsonl: records left "
        "under an earlier [gateway.audit] url) into the database [gateway.audit] url (or --url) names, each "
        "into its own chain; a record written twice changes nothing.",
    )
    drain.add_argument("spool", metavar="FILE", help="the spool file (audit-spool-<digest>.jsonl)")
    drain.set_defaults(handler=_drain_spool)


def _verify(args: argparse.Namespace) -> int:
    from gtl_nb.gateway.audit import being_written, checkpoint_path, verify

    path, url = _places(args)
    intact = True
    if path is not None:
        if not path.exists() and not checkpoint_path(path).exists():
            raise ConfigurationError(f"no audit log at {path} (give its current file with --log)")
        report = verify(path)
        # a running gateway's newest records are on their way to the checkpoint: not a crash, nothing wrong
        live = being_written(path) and all(problem.after_crash for problem in report.problems)
        print(report.describe(live=live), file=sys.stdout if report.ok or live else sys.stderr)
        intact = report.ok or live
    if url is not None:
        from gtl_nb.gateway.audit_postgres import verify_postgres

        database = _reading(verify_postgres, url)
        if not database.chains:
            raise ConfigurationError(f"no audit records in {database.url} (no gateway has written there yet)")
        print(database.describe(), file=sys.stdout if database.ok else sys.stderr)
        intact = intact and database.ok
    return 0 if intact else 1


def _tail(args: argparse.Namespace) -> int:
    path, url = _places(args)
    if args.replica and url is None:
        raise ConfigurationError("--replica names a chain in PostgreSQL: give --url (or [gateway.audit] url)")
    if path is not None and url is not None:
        raise ConfigurationError("[gateway.audit] writes a file and PostgreSQL: say which to read, --log or --url")
    if url is not None:
        if args.follow:
            raise ConfigurationError("--follow reads a file log; for PostgreSQL run tail again (or query it)")
        from gtl_nb.gateway.audit_postgres import last_records, replica_names

        lines = _reading(last_records, url, max(0, args.lines), replica=args.replica)
        if args.replica and not lines and args.lines > 0:  # a typo must not read as "no records"
            names = _reading(replica_names, url)
            raise ConfigurationError(
                f"no audit records of replica {args.replica!r} (replicas with records: {', '.join(names) or 'none'})"
            )
        out = sys.stdout.buffer
        out.writelines(line.encode("utf-8") + b"\n" for line in lines)
        out.flush()
        return 0
    assert path is not None
    return _tail_file(path, args)


def _tail_file(path: Path, args: argparse.Namespace) -> int:
    from gtl_nb.gateway.audit import rotated_files

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


def _reading(read: Any, url: str, *args: Any, **kwargs: Any) -> Any:
    """``read(url, ...)``, with an unreachable database as a one-line error (exit 2), never its password."""
    from gtl_nb.engine.stores.postgres_pool import PostgresUnavailableError

    try:
        return read(url, *args, **kwargs)
    except PostgresUnavailableError as exc:
        raise ConfigurationError(exc.message) from None


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


def _drain_spool(args: argparse.Namespace) -> int:
    """``gtl audit drain-spool FILE``: open the configured database's audit sink with FILE as its spool
    (which it drains when it opens and when it closes), then say what is left."""
    from gtl_nb.engine.stores.postgres_pool import parse_postgres_url
    from gtl_nb.gateway.audit_postgres import PostgresAuditSink
    from gtl_nb.gateway.spool_orphans import audit_records

    spool = Path(args.spool).expanduser()
    if not spool.is_file():
        raise ConfigurationError(f"no spool file at {spool}")
    if spool.suffix != ".jsonl":
        raise ConfigurationError(
            f"{spool} is not an audit spool (audit-spool-<digest>.jsonl); a ledger spool "
            "(postgres-spool-<digest>.sqlite3) is written by gtl ledger drain-spool"
        )
    _, url = _places(args)
    if url is None:
        raise ConfigurationError(
            "no database to write the spool into: give it with --url, or a configuration whose [gateway.audit] "
            "url names it (--config)"
        )
    before = audit_records(spool)
    sink = PostgresAuditSink(url, spool_path=spool, replica="drain-spool")
    problem = sink.degraded_cause
    sink.close()
    left = audit_records(spool)
    shown = parse_postgres_url(url, where="--url").shown  # (no password)
    if left:
        why = f": {problem}" if problem else ""
        print(
            f"gtl: {before - left} of {before} spooled audit record(s) of {spool} written; {left} still wait{why} "
            "(run it again: a record already written changes nothing)",
            file=sys.stderr,
        )
        return 1
    print(f"{spool}: {before} spooled audit record(s) written into {shown}; the file is empty now")
    return 0


def _places(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """``(file, database URL)`` to read: ``--log`` and ``--url`` when given (either or both), else
    ``[gateway.audit]`` ``path`` and ``url`` of the configuration (the default file when it names neither)."""
    if args.audit_log or args.audit_url:
        path = Path(args.audit_log).expanduser() if args.audit_log else None
        if args.audit_url is not None:
            from gtl_nb.gateway.audit import check_audit_url

            check_audit_url(args.audit_url, "--url")  # the same check, and message, as the configuration's
        return path, args.audit_url
    from gtl_nb.engine.config import load_config
    from gtl_nb.gateway.audit import AuditSettings

    config_file = args.audit_config or getattr(args, "config", None)
    if config_file is not None and not Path(config_file).expanduser().is_file():
        raise ConfigurationError(f"--config {config_file}: no such file")
    config = load_config(config=config_file)
    base = config.source_path.parent if config.source_path is not None else Path.cwd()
    settings = AuditSettings.from_table(config.gateway.get("audit"), base=base)
    return settings.path, settings.url
