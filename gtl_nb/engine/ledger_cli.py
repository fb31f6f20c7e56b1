"""``gtl ledger prune``: apply the usage ledger's retention by hand (docs/ledger.md, "Retention").

    gtl ledger prune [--ledger FILE] [--days N] [--max-rows N] [--vacuum]

Without ``--ledger`` the file is ``[ledger] path``/``url`` of the configuration (``--config FILE``, as
``gtl --config``), then the default ledger file; without ``--days``/``--max-rows`` the limits are
``[ledger] retention_days``/``max_rows``. ``--vacuum`` then hands the freed space back to the file
system. Prints what was deleted; exits 0, or 2 when there is nothing to prune by.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["add_subcommands"]


def add_subcommands(subparsers: Any) -> None:
    """Register ``ledger`` on the ``gtl`` command's subparsers (handlers in ``handler``)."""
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
    prune.add_argument("--ledger", dest="ledger_file", metavar="FILE", help="the ledger file")
    # its own name: a subcommand's default would overwrite the global --config given before it
    prune.add_argument("--config", dest="ledger_config", metavar="FILE", help="TOML configuration (as gtl --config)")
    prune.add_argument("--days", type=float, metavar="N", help="delete finished rows older than N days (N >= 1)")
    prune.add_argument("--max-rows", type=int, metavar="N", help="keep at most the newest N rows")
    prune.add_argument("--vacuum", action="store_true", help="then shrink the file (holds the write lock meanwhile)")
    prune.set_defaults(handler=_prune)


def _prune(args: argparse.Namespace) -> int:
    from gtl_nb.engine.ledger_retention import Retention, prune_file

    path, configured = _configured(args)
    days = args.days if args.days is not None else getattr(configured, "days", None)
    rows = args.max_rows if args.max_rows is not None else getattr(configured, "max_rows", None)
    if days is None and rows is None:
        print(
            "nothing to prune by: give --days or --max-rows, or set [ledger] retention_days or max_rows",
            file=sys.stderr,
        )
        return 2
    if days is not None and not days >= 1:  # not >=: NaN is refused too
        raise ConfigurationError(f"--days must be at least 1, got {days:g}")
    if rows is not None and rows < 1:
        raise ConfigurationError(f"--max-rows must be at least 1, got {rows}")
    pruned = prune_file(path, Retention(days=days, max_rows=rows), vacuum=args.vacuum)
    vacuumed = ", then vacuumed" if args.vacuum else ""
    print(f"{path}: deleted {pruned.by_age} row(s) by age and {pruned.by_size} by size{vacuumed}")
    return 0


def _configured(args: argparse.Namespace) -> tuple[Path, Any]:
    """The ledger file and the configured ``Retention`` (``None``: none configured)."""
    from gtl_nb.engine.ledger import default_ledger_path
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.engine.stores.urls import parse_store_url

    config_file = args.ledger_config or getattr(args, "config", None)
    if config_file is not None and not Path(config_file).expanduser().is_file():
        raise ConfigurationError(f"--config {config_file}: no such file")
    settings = load_settings(config=config_file)
    path: Path | None = Path(args.ledger_file).expanduser() if args.ledger_file else None
    if path is None and settings.ledger.url:
        where = settings.ledger.url
        if "://" not in where:
            path = Path(where).expanduser()
        else:
            url = parse_store_url(where, where="[ledger]")
            if url.scheme != "sqlite" or url.path is None:
                raise ConfigurationError(f"[ledger] {where!r} is not a ledger file; give one with --ledger")
            path = url.path
    return path or default_ledger_path(), settings.ledger.retention
