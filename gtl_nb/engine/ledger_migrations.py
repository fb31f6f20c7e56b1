"""Ordered, versioned migrations of the usage ledger.

``PRAGMA user_version`` holds how many migrations a file has had. ``MIGRATIONS[i]`` takes a file
from version ``i`` to ``i + 1``; ``migrate`` runs the missing ones and bumps the version, inside
the write transaction its caller opened (SQLite DDL is transactional, so two processes opening a
new file at once cannot both apply a step: the second sees the version the first committed).

To add a column later, append a function (``ALTER TABLE requests ADD COLUMN ...``, with a default
or NULL) — never edit a released one — and describe the column in ``ledger_schema.COLUMNS``. A
migration may also tidy values (version 3 strips routing prefixes from ``model``); it must then do
the same whenever it runs, so it names what it relies on itself instead of importing it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from gtl_nb.log import get_logger

log = get_logger("engine.ledger")

Migration = Callable[[sqlite3.Connection], None]


def _m001_create_requests(conn: sqlite3.Connection) -> None:
    """The ``requests`` table: one row per request, inserted at start and updated once at the end."""
    conn.execute(
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            time_utc TEXT NOT NULL,
            end_time REAL,
            session_id TEXT,
            user TEXT,
            deployment TEXT,
            provider_type TEXT,
            model TEXT,
            status TEXT NOT NULL DEFAULT 'started',
            error_code TEXT,
            tokens_in INTEGER,
            tokens_out INTEGER,
            cached_tokens_in INTEGER,
            reasoning_tokens_out INTEGER,
            cost REAL,
            ttft_ms REAL,
            latency_ms REAL,
            cache_hit INTEGER NOT NULL DEFAULT 0,
            coalesced INTEGER NOT NULL DEFAULT 0,
            failover_path TEXT,
            pid INTEGER,
            proc_start TEXT,
            hostname TEXT
        )
        """
    )
    # Budgets sum by time (and user); recovery looks only at rows still started.
    conn.execute("CREATE INDEX requests_time ON requests (time)")
    conn.execute("CREATE INDEX requests_user_time ON requests (user, time)")
    conn.execute("CREATE INDEX requests_session ON requests (session_id)")
    conn.execute("CREATE INDEX requests_started ON requests (hostname, pid) WHERE status = 'started'")


def _m002_request_context(conn: sqlite3.Connection) -> None:
    """The request context's columns: ``tenant``, ``key_id``, ``trace_id`` (NULL for older rows)."""
    for column in ("tenant", "key_id", "trace_id"):
        conn.execute(f"ALTER TABLE requests ADD COLUMN {column} TEXT")


# The provider types built in when migration 3 was written. Frozen on purpose: a migration must do
# the same thing whenever it runs, whatever the registry holds by then.
_M003_PROVIDER_TYPES = ("openai", "azure", "openai_compatible", "anthropic", "gemini", "ollama", "bedrock", "echo")


def _m003_bare_models(conn: sqlite3.Connection) -> None:
    """One model name per model: strip the routing prefix older releases stored for failed and
    cancelled requests (``badoa:gpt-4o-mini`` -> ``gpt-4o-mini``).

    Only a prefix that is the row's own deployment or a provider type is a routing prefix; any other
    colon belongs to the model's name (``llama3.1:8b``) and is kept.
    """
    prefix = "substr(model, 1, instr(model, ':') - 1)"
    types = ", ".join(f"'{name}'" for name in _M003_PROVIDER_TYPES)
    conn.execute(
        f"UPDATE requests SET model = substr(model, instr(model, ':') + 1) "
        f"WHERE instr(model, ':') > 1 AND length(model) > instr(model, ':') "
        f"AND ({prefix} = deployment OR {prefix} IN ({types}))"
    )


def _m004_cache_writes(conn: sqlite3.Connection) -> None:
    """``cache_write_tokens_in``: the input tokens a provider wrote to its prompt cache, billed above
    the input rate (Anthropic's ``cache_creation_input_tokens``). NULL for older rows: not reported."""
    conn.execute("ALTER TABLE requests ADD COLUMN cache_write_tokens_in INTEGER")


def _m005_finish_reason(conn: sqlite3.Connection) -> None:
    """``finish_reason``: why an answer ended, as its ``done`` event said (``stop``, ``length``,
    ``tool_calls``, ``content_filter``, ``other``). NULL for older rows: not recorded then."""
    conn.execute("ALTER TABLE requests ADD COLUMN finish_reason TEXT")


def _m006_tenant_time(conn: sqlite3.Connection) -> None:
    """An index of a tenant's rows by time: a tenant's budget rebuilt from the ledger and a gateway usage
    query (scoped to the caller's tenant) read only that tenant's rows. Partial (``tenant IS NOT NULL``):
    an embedded client's rows name no tenant and cost it nothing to write."""
    conn.execute("CREATE INDEX requests_tenant_time ON requests (tenant, time) WHERE tenant IS NOT NULL")


def _m007_usage_estimated(conn: sqlite3.Connection) -> None:
    """``usage_estimated``: 1 when a row's token counts and cost are gtl_nb's estimate (a session that
    ended, cancelled or failed, after its provider was called and before it reported usage), 0 when
    they are the provider's report or there are none. NULL for older rows: not recorded then."""
    conn.execute("ALTER TABLE requests ADD COLUMN usage_estimated INTEGER")


MIGRATIONS: tuple[Migration, ...] = (
    _m001_create_requests,
    _m002_request_context,
    _m003_bare_models,
    _m004_cache_writes,
    _m005_finish_reason,
    _m006_tenant_time,
    _m007_usage_estimated,
)


def user_version(conn: sqlite3.Connection) -> int:
    """The number of migrations applied to the open database."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None) -> tuple[int, int]:
    """Apply the missing ``migrations`` (default: ``MIGRATIONS``); return ``(version before, after)``.

    The caller must hold a write transaction (``BEGIN IMMEDIATE``). A file that is newer than
    this code (written by a later gtl_nb) is left as it is, with a warning: migrations only add
    columns, so this code can still read and write the columns it knows.
    """
    if migrations is None:
        migrations = MIGRATIONS  # looked up at call time
    before = user_version(conn)
    target = len(migrations)
    if before > target:
        log.warning("ledger schema version %d is newer than this gtl_nb knows (%d); using it as is", before, target)
        return before, before
    for index in range(before, target):
        log.debug("ledger migration %d: %s", index + 1, migrations[index].__name__)
        migrations[index](conn)
    if target != before:
        conn.execute(f"PRAGMA user_version = {int(target)}")  # pragmas take no bound parameters
    return before, target
