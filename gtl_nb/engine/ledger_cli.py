"""``gtl usage``: what the usage ledger recorded, summed by model (or any of ``USAGE_GROUPINGS``: deployment,
user, day, hour, status, provider type, error code, finish reason);
``gtl ledger prune``: apply its retention by hand (docs/ledger.md, "Retention").

    gtl usage [--by model|provider|deployment|day|hour|user|status|...] [--days N] [--ledger FILE] [--json]
    gtl ledger prune [--ledger FILE] [--days N] [--max-rows N] [--vacuum]
    gtl ledger drain-spool FILE [--ledger URL] [--wait SECONDS]

``drain-spool`` writes a PostgreSQL ledger's spool file left under another database's name (a URL fixed
after a typo: docs/deploy.md) into the configured PostgreSQL ledger, exactly once; exits 1 when rows
still wait (the database away), saying why.

Without ``--ledger`` the file is ``[ledger] path``/``url`` of the configuration (``--config FILE``, as
``gtl --config``), then the default ledger file; without ``--days``/``--max-rows`` the limits are
``[ledger] retention_days``/``max_rows``. ``--vacuum`` then hands the freed space back to the file
system. Prints what was deleted; exits 0, or 2 when there is nothing to prune by or the file is not
there (``--ledger`` or the configuration named it: a typo, most often; the default file not made yet
is only said to hold nothing).

A ``postgresql://`` URL (``[ledger] url``, or given to ``--ledger``) is read and pruned in that
database: the same groups, sums and order as from a file (``POSTGRES_GROUPINGS``), and the same
retention, safe beside running replicas (``engine.stores.postgres_retention``). PostgreSQL
unreachable or refusing: exit 2, saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gtl_nb.engine.ledger_schema import (
    COST_UNKNOWN_SQL,
    USAGE_GROUPINGS,
    cost_unknown,
    usage_outcome,
    usage_outcome_sql,
)
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import dollars, shown_in_terminal

__all__ = ["add_subcommands", "days_ago"]


#: ``gtl usage --by`` choices (``USAGE_GROUPINGS`` less ``BY_ALIASES``) → the SQL expression rows are grouped by
GROUPINGS = {
    "model": "COALESCE(model, '-')",
    "deployment": "COALESCE(deployment, '-')",
    "user": "COALESCE(NULLIF(user, ''), '-')",
    "day": "strftime('%Y-%m-%d', time, 'unixepoch')",
    "hour": "strftime('%Y-%m-%d %H:00', time, 'unixepoch')",
    "status": "status",
    "provider_type": "COALESCE(provider_type, '-')",
    "error_code": "COALESCE(error_code, '-')",
    "finish_reason": "COALESCE(finish_reason, '-')",
}
#: The same groups in PostgreSQL (``COLLATE "C"`` in the query orders them by code point, as SQLite's
#: BINARY text and Python's ``sorted`` do; a database's own collation would not).
POSTGRES_GROUPINGS = {
    "model": "COALESCE(model, '-')",
    "deployment": "COALESCE(deployment, '-')",
    "user": """COALESCE(NULLIF("user", ''), '-')""",
    "day": "to_char(to_timestamp(time) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "hour": "to_char(to_timestamp(time) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:00')",
    "status": "status",
    "provider_type": "COALESCE(provider_type, '-')",
    "error_code": "COALESCE(error_code, '-')",
    "finish_reason": "COALESCE(finish_reason, '-')",
}
#: Columns later schema versions added, which a ledger an older release wrote and nobody migrated
#: lacks (``gtl usage`` only reads: it never migrates): read there as NULL, as its rows would hold.
_LATER_COLUMNS = ("cache_write_tokens_in", "finish_reason")

#: ``--by`` names kept for another's sake: ``provider`` is what ``%gtl usage`` and ``usage_table`` group by
BY_ALIASES = {"provider": "deployment"}


def add_subcommands(subparsers: Any) -> None:
    """Register ``usage`` and ``ledger`` on the ``gtl`` command's subparsers (handlers in ``handler``)."""
    usage = subparsers.add_parser(
        "usage",
        help="requests, tokens and cost the usage ledger recorded, by model",
        description="Sum the usage ledger of this machine (the file the embedded engine writes, or a "
        "gateway's with --ledger), or with gtl --gateway URL usage a running gateway's rows: requests, "
        "errors (failed or interrupted), cancelled, tokens and cost, grouped.",
    )
    usage.add_argument(
        "--by",
        choices=USAGE_GROUPINGS,  # the notebook's %gtl usage --by takes the same
        default="model",
        help="group rows by this (default: model; provider: the deployment; day, hour: the UTC day, hour; "
        "finish_reason: why answers ended, - for errors; error_code: - for requests without an error)",
    )
    usage.add_argument("--days", type=float, metavar="N", help="only requests of the last N days")
    usage.add_argument("--ledger", dest="ledger_file", metavar="FILE", help="the ledger file (or postgresql:// URL)")
    usage.add_argument("--config", dest="ledger_config", metavar="FILE", help="TOML configuration (as gtl --config)")
    usage.add_argument("--json", action="store_true", help="print one JSON object a group")
    usage.set_defaults(handler=_usage)
    ledger = subparsers.add_parser(
        "ledger", help="maintain the usage ledger (prune)", description="Maintain the usage ledger file."
    )
    actions = ledger.add_subparsers(dest="ledger_action", metavar="ACTION", required=True)
    prune = actions.add_parser(
        "prune",
        help="delete the oldest finished rows past an age or beyond a row count",
        description="Delete the oldest finished rows the retention settings no longer keep (never a started row, "
        "never one of the current or previous UTC day).",
    )
    prune.add_argument("--ledger", dest="ledger_file", metavar="FILE", help="the ledger file (or postgresql:// URL)")
    # its own name: a subcommand's default would overwrite the global --config given before it
    prune.add_argument("--config", dest="ledger_config", metavar="FILE", help="TOML configuration (as gtl --config)")
    prune.add_argument("--days", type=float, metavar="N", help="delete finished rows older than N days (N >= 1)")
    prune.add_argument("--max-rows", type=int, metavar="N", help="keep at most the newest N rows")
    prune.add_argument("--vacuum", action="store_true", help="then shrink the file (holds the write lock meanwhile)")
    prune.set_defaults(handler=_prune)
    drain = actions.add_parser(
        "drain-spool",
        help="write a PostgreSQL ledger's spool file into the configured ledger (once: a replay changes nothing)",
        description="Write the rows a PostgreSQL ledger spooled in FILE (postgres-spool-<digest>.sqlite3: rows "
        "left under an earlier [ledger] url) into the ledger [ledger] url (or --ledger) names, oldest first; "
        "each write is deleted from FILE once committed, and one written twice changes nothing.",
    )
    drain.add_argument("spool", metavar="FILE", help="the spool file (postgres-spool-<digest>.sqlite3)")
    drain.add_argument("--ledger", dest="ledger_file", metavar="URL", help="the postgresql:// ledger to write into")
    drain.add_argument("--config", dest="ledger_config", metavar="FILE", help="TOML configuration (as gtl --config)")
    drain.add_argument(
        "--wait", type=float, default=60.0, metavar="SECONDS", help="give up after this long (default 60)"
    )
    drain.set_defaults(handler=_drain_spool)


def days_ago(days: float | None) -> float | None:
    """``--days N`` (``gtl usage``, ``%gtl usage``) as the unix time N days ago, ``None`` for no
    ``--days``; N must be more than 0, and one reaching before 1970 (``inf``, ``36500``) means every row."""
    if days is None:
        return None
    if not days > 0:  # not >: NaN is refused too
        raise ConfigurationError(f"--days must be more than 0, got {days:g}")
    now = time.time()
    if not math.isfinite(days) or days * 86400 >= now:  # inf, or before 1970: every row, as a user means it
        return 0.0
    return now - days * 86400


def _usage(args: argparse.Namespace) -> int:
    args.by = BY_ALIASES.get(args.by, args.by)
    since = days_ago(args.days)
    remote = getattr(args, "gateway_usage_rows", None)  # the gtl command's way to a gateway's rows
    if _gateway_given(args) and remote is not None:
        if args.ledger_file or args.ledger_config:
            raise ConfigurationError("--ledger and --config name a file on this machine; --gateway asks the gateway")
        rows, source = remote(args, since)
        return _print_usage(args, group_rows(rows, args.by), source)
    _refuse_a_gateway(args, "usage")
    path, _, named_by = _configured(args)
    if isinstance(path, str):
        return _postgres_usage(args, path, since)
    if path.is_dir():
        raise ConfigurationError(f"{path} is a folder; give the ledger file in it with --ledger")
    if not path.is_file():
        if args.ledger_file:  # a file named by hand that is not there: most often a typo
            raise ConfigurationError(f"--ledger {path}: no such file")
        # a configured file that is not there yet: nothing ran with it, or its name is mistyped
        named = f"; {named_by} names it: check the name if something has run with it" if named_by else ""
        print(f"gtl: no usage recorded yet (no ledger at {os.path.abspath(path)}{named})", file=sys.stderr)
        return 0
    return _print_usage(args, _usage_groups(path, GROUPINGS[args.by], since), f"ledger {path}")


def _postgres_usage(args: argparse.Namespace, url: str, since: float | None) -> int:
    """``gtl usage`` of the ledger in the PostgreSQL database ``url`` names."""
    from gtl_nb.engine.stores.postgres_pool import shown_url

    groups = _postgres_groups(url, POSTGRES_GROUPINGS[args.by], since)
    if groups is None:
        print(f"gtl: no usage recorded yet (no ledger table in {shown_url(url)})", file=sys.stderr)
        return 0
    return _print_usage(args, groups, f"ledger {shown_url(url)}")


def _postgres_groups(url: str, grouping: str, since: float | None) -> list[tuple[Any, ...]] | None:
    """``_usage_groups`` of a PostgreSQL ledger, summed in the database (one row a group comes back);
    ``None`` when it holds no ledger table. Read-only, as from a file."""
    from gtl_nb.engine.ledger_schema import TABLE
    from gtl_nb.engine.stores.postgres_pool import run_once

    where, params = (" WHERE time >= %s", (since,)) if since is not None else ("", ())

    async def read(conn: Any) -> list[Any] | None:
        await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        found = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,))).fetchone()
        if not found[0]:
            return None
        # a database an older release made, never migrated (this read writes nothing): later columns are NULL
        named = await conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attname = ANY(%s) AND NOT attisdropped",
            (TABLE, list(_LATER_COLUMNS)),
        )
        columns = {row[0] for row in await named.fetchall()}
        written = "SUM(cache_write_tokens_in)" if "cache_write_tokens_in" in columns else "0"
        # SUM of bigint is numeric: no overflow, as SQLite's TOTAL
        query = (
            f'SELECT ({_present(grouping, columns)}) COLLATE "C" AS grouped, COUNT(*), '
            f"COUNT(*) FILTER (WHERE {usage_outcome_sql('errors')}), "
            f"COUNT(*) FILTER (WHERE {usage_outcome_sql('cancelled')}), "
            "COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost), 0.0), "
            f"COUNT(*) FILTER (WHERE {COST_UNKNOWN_SQL}), "
            f"COALESCE(SUM(cached_tokens_in), 0), COALESCE({written}, 0) "
            f"FROM {TABLE}{where} GROUP BY grouped ORDER BY COUNT(*) DESC, grouped"
        )
        return await (await conn.execute(query, params)).fetchall()

    rows = _said(run_once, url, read, name="gtl usage")
    return None if rows is None else [_typed_group(row) for row in rows]


def _said(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, PostgreSQL's refusal (unreachable, a wrong password, no permission) as the
    command's one-line error (exit 2), as ``gtl audit`` says it."""
    from gtl_nb.engine.stores.sqlite_db import StoreError

    try:
        return call(*args, **kwargs)
    except StoreError as exc:
        raise ConfigurationError(exc.message) from None


def _typed_group(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A group as ``_usage_groups`` gives it: the counts ints (PostgreSQL's sums are ``Decimal``), the cost a float."""
    return (row[0], *(int(value) for value in row[1:6]), float(row[6]), *(int(value) for value in row[7:]))


def _print_usage(args: argparse.Namespace, groups: list[tuple[Any, ...]], source: str) -> int:
    """The groups as JSON lines or a table; which ledger was read on standard error (the table pipes alone)."""
    if args.json:
        for group in groups:
            fields = dict(zip(_USAGE_FIELDS, group[1:], strict=True))
            # a sum of floats carries noise in its last digits (0.1 + 0.2): to 12 places, the finest the
            # table ever shows (words.dollars), a sum reads as money and no paid request rounds to 0
            fields["cost"] = round(fields["cost"], 12)
            print(json.dumps({args.by: group[0], **fields}))
        return 0
    if not groups:
        window = f" in the last {args.days:g} day(s)" if args.days is not None else ""
        print(f"gtl: no requests recorded{window} ({source})", file=sys.stderr)
        return 0
    print(_usage_table(args.by, groups))
    print(f"gtl: read {source.removeprefix('ledger ')}", file=sys.stderr)
    return 0


def group_rows(rows: Iterable[Mapping[str, Any]], by: str) -> list[tuple[Any, ...]]:
    """``_usage_groups`` of ledger rows already read (a gateway's, through its query): the same sums,
    the same unknown costs, the same order."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        key = _group_of(row, by)
        status, cost = row.get("status"), _number(row.get("cost"))
        outcome = usage_outcome(status)
        values = (
            1,
            outcome == "errors",
            outcome == "cancelled",
            _number(row.get("tokens_in")) or 0,
            _number(row.get("tokens_out")) or 0,
            cost or 0.0,
            cost_unknown(status, cost is not None, _number(row.get("ttft_ms")) is not None),
            _number(row.get("cached_tokens_in")) or 0,
            _number(row.get("cache_write_tokens_in")) or 0,
        )
        total = sums.setdefault(key, [0] * len(values))
        for index, value in enumerate(values):
            total[index] += value
    ordered = sorted(sums.items(), key=lambda item: (-item[1][0], item[0]))
    return [
        (key, *(int(value) for value in t[:5]), float(t[5]), *(int(value) for value in t[6:])) for key, t in ordered
    ]


#: The time groupings' labels, as ``GROUPINGS`` writes them in SQL (UTC).
_TIME_FORMATS = {"day": "%Y-%m-%d", "hour": "%Y-%m-%d %H:00"}


def _group_of(row: Mapping[str, Any], by: str) -> str:
    """The group ``row`` falls in, labelled as ``GROUPINGS`` labels it in SQL."""
    if by in _TIME_FORMATS:
        shape = _TIME_FORMATS[by]
        when = row.get("time")
        if hasattr(when, "strftime"):  # a DataFrame's timestamp (UTC)
            return str(when.strftime(shape))
        seconds = _number(when)
        return "-" if seconds is None else time.strftime(shape, time.gmtime(seconds))
    value = row.get(by)
    if by == "user":  # as GROUPINGS: no user and an empty one are one group
        return value if isinstance(value, str) and value else "-"
    return "-" if value is None else str(value)  # an empty model or deployment is a group of its own, as in SQL


def _number(value: Any) -> float | None:
    """A row's number, or ``None`` for a missing one (``None``, NaN, pandas' NA)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


_USAGE_FIELDS = (
    "requests",
    "errors",
    "cancelled",
    "tokens_in",
    "tokens_out",
    "cost",
    "cost_unknown",
    "cached_tokens_in",
    "cache_write_tokens_in",
)


def _usage_groups(path: Path, grouping: str, since: float | None) -> list[tuple[Any, ...]]:
    """``(group, requests, errors, cancelled, tokens in, tokens out, cost, rows whose cost is unknown — answered with
    no price, or cancelled mid-answer with no usage — tokens read
    from the prompt cache, tokens written to it)`` a group, the busiest first; read-only, so a running
    writer is never disturbed and no file is created."""
    where, params = (" WHERE time >= ?", (since,)) if since is not None else ("", ())

    def read(conn: sqlite3.Connection) -> list[Any]:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
        # a file an older release wrote, never migrated (this read writes nothing): later columns are NULL
        written = "TOTAL(cache_write_tokens_in)" if "cache_write_tokens_in" in columns else "0"
        # TOTAL, not SUM: a float that cannot overflow (SUM of integers raises past 2**63)
        query = (
            f"SELECT {_present(grouping, columns)} AS grouped, COUNT(*), TOTAL({usage_outcome_sql('errors')}), "
            f"TOTAL({usage_outcome_sql('cancelled')}), TOTAL(tokens_in), TOTAL(tokens_out), TOTAL(cost), "
            # a request cancelled once its answer had begun (ttft known) was billed for what was generated
            f"TOTAL({COST_UNKNOWN_SQL}), "
            f"TOTAL(cached_tokens_in), {written} "
            f"FROM requests{where} GROUP BY grouped ORDER BY COUNT(*) DESC, grouped"
        )
        return conn.execute(query, params).fetchall()

    return [(row[0], row[1], *(int(value) for value in row[2:6]), row[6], *(int(value) for value in row[7:]))
            for row in _read_only(path, read)]  # fmt: skip


def _present(grouping: str, columns: set[str]) -> str:
    """``grouping`` (an expression of ``GROUPINGS``) with each of ``_LATER_COLUMNS`` a ledger lacks
    read as NULL: an older release's unmigrated ledger groups its rows under ``-``, as if migrated."""
    for name in _LATER_COLUMNS:
        if name not in columns:
            grouping = grouping.replace(name, "NULL")
    return grouping


def _read_only(path: Path, read: Any) -> Any:
    """``read(connection)`` on the ledger opened read-only. A ledger in WAL mode needs its ``-shm``
    file, which a read-only open must create when no writer left one — impossible in a folder this
    user cannot write (a stopped gateway's): then, when no ``-wal`` file holds commits not yet merged, the
    file is read as immutable (no locks, no side files), which is exact for a file nobody writes."""
    base = path.resolve().as_uri()
    try:
        with contextlib.closing(sqlite3.connect(f"{base}?mode=ro", uri=True, timeout=5)) as conn:
            return read(conn)
    except (sqlite3.ProgrammingError, sqlite3.IntegrityError):
        raise  # this code's own mistakes: never "cannot read it"
    except sqlite3.DatabaseError as exc:  # (OperationalError's base: "file is not a database" too)
        first = exc
    if not any(sign in str(first) for sign in ("unable to open", "readonly", "read-only")):
        raise ConfigurationError(f"{path}: cannot read it as a usage ledger ({first})")
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:  # (an empty one, left by a reader, holds nothing)
        raise ConfigurationError(
            f"{path}: cannot open it read-only ({first}); its writer's changes are still in {path.name}-wal, "
            "so it cannot be read without write access to its folder"
        )
    try:
        with contextlib.closing(sqlite3.connect(f"{base}?mode=ro&immutable=1", uri=True, timeout=5)) as conn:
            return read(conn)
    except sqlite3.Error as exc:
        raise ConfigurationError(f"{path}: cannot read it as a usage ledger ({exc})") from None


def _usage_table(by: str, groups: list[tuple[Any, ...]]) -> str:
    """The groups as an aligned table with a total line; the prompt cache's reads and writes when it
    did anything; a cost some of whose rows had no known price is marked ``*`` and explained under it."""
    totals = [sum(group[i] for group in groups) for i in range(1, 10)]
    lines = [(_group_label(group[0]), *group[1:]) for group in groups] + [("total", *totals)]
    cache = bool(totals[7] or totals[8])
    width = max(len(by), *(len(line[0]) for line in lines))
    header = (
        f"{by:<{width}}  {'requests':>8}  {'errors':>6}  {'cancelled':>9}  {'tokens in':>12}  {'tokens out':>12}  "
        f"{'cost':>11}"
    )
    out = [header + (f"   {'from cache':>11}  {'to cache':>11}" if cache else "")]
    for name, requests, errors, cancelled, tokens_in, tokens_out, cost, unknown, cached, written in lines:
        mark = "*" if unknown else " "
        row = (
            f"{name:<{width}}  {requests:>8,}  {errors:>6,}  {cancelled:>9,}  {tokens_in:>12,}  {tokens_out:>12,}  "
            f"{dollars(cost):>11}{mark}"
        )
        out.append(row + (f"  {cached:>11,}  {written:>11,}" if cache else ""))
    if totals[6]:
        out.append(
            f"* {totals[6]:,} request(s) with no known cost — no price for the model, or cancelled once the answer "
            "had begun, before the provider reported usage: not in the sum"
        )
    if cache:
        out.append("(from cache / to cache: input tokens the provider's prompt cache read and wrote, inside tokens in)")
    return "\n".join(out)


NO_NAME = "(none)"
"""The table's label for a group whose name is empty: a refused request that named no valid model
(a gateway records it with the model ``""``), or a deployment left empty."""


def _group_label(name: Any) -> str:
    """A group's name as the table shows it: a column as a client sent it (a model, a user) is escaped,
    never acted on by the terminal; an empty one is ``NO_NAME`` rather than a blank cell, and one only
    of spaces is quoted, so neither reads as a missing row label. (``--json`` keeps the name as stored.)"""
    text = str(name)
    if not text:
        return NO_NAME
    if not text.strip():
        return repr(text)
    return shown_in_terminal(text)


def _gateway_given(args: argparse.Namespace) -> bool:
    """Whether ``--gateway`` was given on the command line (``$GTL_NB_GATEWAY`` alone is set for
    ``complete`` and ``models``, and does not move ``usage`` off this machine's ledger)."""
    return bool(getattr(args, "gateway_given", False))


def _refuse_a_gateway(args: argparse.Namespace, command: str) -> None:
    """``--gateway`` given on the command line to a command that reads this machine's ledger file: say
    so rather than answer for another ledger (``$GTL_NB_GATEWAY`` alone is not refused: it is set for
    ``complete`` and ``models``)."""
    if _gateway_given(args):
        raise ConfigurationError(
            f"gtl {command} works on a ledger file on this machine, not a gateway's: drop --gateway, and give the "
            "gateway's file with --ledger where it is readable (gtl --gateway URL usage reads a gateway's usage)"
        )


def _prune(args: argparse.Namespace) -> int:
    from gtl_nb.engine.ledger_retention import Retention, prune_file

    _refuse_a_gateway(args, "ledger prune")
    path, configured, named_by = _configured(args)
    days = args.days if args.days is not None else getattr(configured, "days", None)
    rows = args.max_rows if args.max_rows is not None else getattr(configured, "max_rows", None)
    if days is None and rows is None:
        raise ConfigurationError(
            "nothing to prune by: give --days or --max-rows, or set [ledger] retention_days or max_rows"
        )
    if days is not None and not days >= 1:  # not >=: NaN is refused too
        raise ConfigurationError(f"--days must be at least 1, got {days:g}")
    if rows is not None and rows < 1:
        raise ConfigurationError(f"--max-rows must be at least 1, got {rows}")
    if isinstance(path, str):
        return _prune_postgres(path, Retention(days=days, max_rows=rows), vacuum=args.vacuum)
    if path.is_dir():
        raise ConfigurationError(f"{path} is a folder; give the ledger file in it with --ledger")
    if not path.is_file():  # (pruning would create an empty ledger, and report success on a typo for ever)
        if args.ledger_file:
            raise ConfigurationError(f"--ledger {path}: no such file")
        if named_by is not None:  # a path someone wrote down that is not there: as likely a typo as --ledger's
            raise ConfigurationError(
                f"{named_by} names {os.path.abspath(path)}: no such file (check the path; "
                "a gateway or client with that configuration and the ledger on creates it as it first starts)"
            )
        print(f"gtl: no ledger at {os.path.abspath(path)}: nothing to prune", file=sys.stderr)
        return 0
    # a file that is no SQLite database is the caller's mistake, said as `gtl usage` says it (exit 2),
    # before the writer would call it the ledger's INTERNAL trouble
    _read_only(path, lambda conn: conn.execute("PRAGMA schema_version").fetchone())
    pruned = prune_file(path, Retention(days=days, max_rows=rows), vacuum=args.vacuum)
    vacuumed = ", then vacuumed" if args.vacuum else ""
    print(f"{path}: deleted {pruned.by_age} row(s) by age and {pruned.by_size} by size{vacuumed}{_kept(pruned)}")
    return 0


def _drain_spool(args: argparse.Namespace) -> int:
    """``gtl ledger drain-spool FILE``: open the configured PostgreSQL ledger with FILE as its spool (which
    a ledger drains before anything else) and wait until it is empty."""
    from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
    from gtl_nb.engine.stores.postgres_spool import Spool

    _refuse_a_gateway(args, "ledger drain-spool")
    spool = Path(args.spool).expanduser()
    if not spool.is_file():
        raise ConfigurationError(f"no spool file at {spool}")
    if spool.suffix != ".sqlite3":
        raise ConfigurationError(
            f"{spool} is not a ledger spool (postgres-spool-<digest>.sqlite3); an audit spool "
            "(audit-spool-<digest>.jsonl) is written by gtl audit drain-spool"
        )
    url, _, named_by = _configured(args)
    if not isinstance(url, str):
        raise ConfigurationError(
            f"the ledger {named_by or url} is not PostgreSQL: give the postgresql:// ledger to write the spool "
            "into with --ledger, or a configuration whose [ledger] url names it (--config)"
        )
    Spool(spool).close()  # refuses a file that is not a spool, before anything connects
    ledger = PostgresUsageLedger(url, spool_path=spool, replica="drain-spool")
    try:
        before = ledger.spooled
        deadline = time.monotonic() + max(0.0, args.wait)
        while ledger.spooled and time.monotonic() < deadline:
            time.sleep(0.1)
        left = ledger.spooled
        problem = ledger.degraded_cause
    finally:
        ledger.close()
    shown = ledger.url  # (no password)
    if left:
        why = f": {problem}" if problem else ""
        print(
            f"gtl: {before - left} of {before} spooled write(s) of {spool} written into {shown}; {left} still wait"
            f"{why} (run it again: a write already made changes nothing)",
            file=sys.stderr,
        )
        return 1
    print(f"{spool}: {before} spooled write(s) written into {shown}; the file is empty now (it may be deleted)")
    return 0


def _kept(pruned: Any) -> str:
    """Why a prune that deleted nothing did so (the rule is in the docs, not in the user's head)."""
    if pruned.total:
        return ""
    return " (never pruned: rows of the current and previous UTC day, which budgets may count, and rows still started)"


def _prune_postgres(url: str, retention: Any, *, vacuum: bool) -> int:
    """``gtl ledger prune`` of the ledger in the PostgreSQL database ``url`` names."""
    from gtl_nb.engine.stores.postgres_pool import shown_url
    from gtl_nb.engine.stores.postgres_retention import prune_database

    if vacuum:  # VACUUM FULL would lock the table every replica writes, for as long as it takes
        raise ConfigurationError(
            "--vacuum shrinks a SQLite file; in PostgreSQL autovacuum reuses the space of deleted rows "
            "(VACUUM FULL requests gives it back to the operating system, but locks the table meanwhile)"
        )
    pruned = _said(prune_database, url, retention)
    if pruned is None:
        print(f"gtl: no ledger table in {shown_url(url)}: nothing to prune", file=sys.stderr)
        return 0
    print(f"{shown_url(url)}: deleted {pruned.by_age} row(s) by age and {pruned.by_size} by size{_kept(pruned)}")
    return 0


def _configured(args: argparse.Namespace) -> tuple[Path | str, Any, str | None]:
    """The ledger — a file, or a PostgreSQL URL —, the configured ``Retention`` (``None``: none
    configured), and where the configuration named the ledger (``[ledger] path in FILE``; ``None`` for
    ``--ledger`` and the default file)."""
    from gtl_nb.engine.ledger import default_ledger_path
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.engine.stores.postgres_pool import is_postgres_url
    from gtl_nb.engine.stores.urls import parse_store_url, refuse_url_for_path

    config_file = args.ledger_config or getattr(args, "config", None)
    if config_file is not None and not Path(config_file).expanduser().is_file():
        raise ConfigurationError(f"--config {config_file}: no such file")
    settings = load_settings(config=config_file)
    if args.ledger_file and is_postgres_url(args.ledger_file):
        return args.ledger_file, settings.ledger.retention, None
    refuse_url_for_path(args.ledger_file, "--ledger", "the ledger's SQLite file, or a postgresql:// URL")
    path: Path | None = Path(args.ledger_file).expanduser() if args.ledger_file else None
    named_by = None
    if path is None and settings.ledger.url:
        where = settings.ledger.url
        named_by = _where_configured(settings)
        if is_postgres_url(where):  # the ledger replicas share: read and pruned in the database
            return where, settings.ledger.retention, named_by
        if "://" not in where:
            path = Path(where).expanduser()
        else:
            url = parse_store_url(where, where="[ledger]")
            if url.scheme != "sqlite" or url.path is None:
                raise ConfigurationError(f"[ledger] {where!r} is not a ledger file; give one with --ledger")
            path = url.path
    return path or default_ledger_path(), settings.ledger.retention, named_by


def _where_configured(settings: Any) -> str:
    """``[ledger] path`` (or ``url``) and the configuration file that set it, for a message."""
    config = settings.config
    table = config.ledger if config is not None else {}
    key = "url" if table.get("url") else "path"
    source = getattr(config, "source_path", None)
    return f"[ledger] {key}" + (f" in {source}" if source is not None else "")
