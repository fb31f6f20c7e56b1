"""The usage ledger's table as data: every column, its SQL type, its pandas dtype and its meaning.

This is the *current* shape of the ``requests`` table, the one readers rely on; the migrations in
``ledger_migrations`` build it step by step and a test checks that both agree. ``docs/ledger.md``
is the prose version of this table.
"""

from __future__ import annotations

from typing import NamedTuple

TABLE = "requests"

#: Every status a row can have. ``started`` is the only non-final one.
STATUSES: tuple[str, ...] = ("started", "ok", "error", "cancelled", "interrupted")
#: The statuses ``Ledger.finish`` accepts.
FINAL_STATUSES: tuple[str, ...] = STATUSES[1:]

#: How a usage summary counts a request by how it ended — one rule for every reader: ``gtl usage`` (a file,
#: PostgreSQL, a gateway's rows) and ``%gtl usage`` / ``usage_table``. ``errors`` are the requests that failed:
#: ``error``, and ``interrupted`` (its process died before it ended); ``cancelled`` ones — stopped by their
#: caller or a shutdown — are counted apart, never as errors (docs/ledger.md, "Reading it"). A ``started``
#: row is in none of them.
USAGE_OUTCOMES: dict[str, tuple[str, ...]] = {
    "ok": ("ok",),
    "errors": ("error", "interrupted"),
    "cancelled": ("cancelled",),
}


def usage_outcome(status: object) -> str | None:
    """The count of a usage summary a row of ``status`` is in: ``ok``, ``errors`` or ``cancelled``
    (``USAGE_OUTCOMES``); ``None`` for a row still ``started``, or one that knows no status."""
    if not isinstance(status, str):  # (None, or pandas' NA, which no comparison answers)
        return None
    for outcome, statuses in USAGE_OUTCOMES.items():
        if status in statuses:
            return outcome
    return None


def usage_outcome_sql(outcome: str) -> str:
    """``usage_outcome``'s rule for ``outcome`` as a condition on ``status`` (SQLite and PostgreSQL alike)."""
    return "status IN (" + ", ".join(f"'{status}'" for status in USAGE_OUTCOMES[outcome]) + ")"


def cost_unknown(status: object, cost_known: bool, answer_began: bool) -> bool:
    """Whether a row is one whose cost a usage summary cannot add: it cost something — it answered, or was
    cancelled once its answer had begun (the provider bills what it generated) — and its cost is unknown
    (no price for the model). A failed or refused request, or one cancelled before any answer, billed nothing."""
    outcome = usage_outcome(status)
    return not cost_known and (outcome == "ok" or (outcome == "cancelled" and answer_began))


#: ``cost_unknown`` as an SQL condition (the answer began when ``ttft_ms`` is known).
COST_UNKNOWN_SQL = "cost IS NULL AND (status = 'ok' OR (status = 'cancelled' AND ttft_ms IS NOT NULL))"

#: What usage may be grouped by, one list for every reader: ``gtl usage --by``, ``%gtl usage --by`` and
#: ``usage_table(by=)``. ``provider`` is the deployment that answered (GTL's name for it), ``day`` and
#: ``hour`` the UTC day and hour a request started; the others are columns as they are.
USAGE_GROUPINGS: tuple[str, ...] = (
    "provider",
    "deployment",
    "model",
    "day",
    "hour",
    "user",
    "status",
    "provider_type",
    "error_code",
    "finish_reason",
)


class Column(NamedTuple):
    """One column of the ``requests`` table."""

    name: str
    sql: str  # SQLite storage type
    dtype: str | None  # pandas dtype in ``Ledger.to_dataframe``; None = not in the DataFrame
    doc: str


# "time" dtypes come from REAL unix seconds; "list" is a JSON array turned into a Python list.
DATETIME = "datetime64[ns, UTC]"
LIST = "object"

COLUMNS: tuple[Column, ...] = (
    Column("id", "INTEGER", "Int64", "row id, increasing in insertion order (the handle start() returns)"),
    Column("time", "REAL", DATETIME, "when the request started: unix seconds (UTC) in SQL"),
    Column("time_utc", "TEXT", None, "the same instant as ISO-8601 UTC text, e.g. 2024-05-01T12:00:00.250Z"),
    Column("end_time", "REAL", DATETIME, "when the row was finished or marked interrupted; NULL if started"),
    Column("session_id", "TEXT", "string", "the GTL session id"),
    Column("user", "TEXT", "string", "who made the request (the client's or the gateway's user name)"),
    Column("deployment", "TEXT", "string", "the deployment that answered (the last one tried on failover)"),
    Column("provider_type", "TEXT", "string", "that deployment's provider type: openai, anthropic, ..."),
    Column(
        "model",
        "TEXT",
        "string",
        "the model asked of that deployment, bare: never prefixed with the deployment (that is its own column)",
    ),
    Column("status", "TEXT", "string", "started, ok, error, cancelled or interrupted"),
    Column("error_code", "TEXT", "string", "the GTL error code (RATE_LIMIT, CANCELLED, ...) when not ok"),
    Column("tokens_in", "INTEGER", "Int64", "input tokens as the provider reported them; NULL = unknown"),
    Column("tokens_out", "INTEGER", "Int64", "output tokens as reported; NULL = not reported"),
    Column("cached_tokens_in", "INTEGER", "Int64", "input tokens served from the provider's prompt cache"),
    Column("reasoning_tokens_out", "INTEGER", "Int64", "output tokens spent on reasoning"),
    Column("cost", "REAL", "float64", "cost in USD; NULL when unknown (no price or no token counts)"),
    Column("ttft_ms", "REAL", "float64", "milliseconds to the first token, reasoning or tool call"),
    Column("latency_ms", "REAL", "float64", "milliseconds from start to the end of the session"),
    Column("cache_hit", "INTEGER", "boolean", "1 when the answer came from gtl_nb's response cache"),
    Column("coalesced", "INTEGER", "boolean", "1 when the request joined an identical one already in flight"),
    Column("failover_path", "TEXT", LIST, 'the deployments tried, in order, as a JSON array: ["a", "b"]'),
    Column("pid", "INTEGER", "Int64", "process id of the writer (crash recovery)"),
    Column("proc_start", "TEXT", "string", "the writer process's identity across pid reuse (see docs)"),
    Column("hostname", "TEXT", "string", "host of the writer; recovery only judges rows of its own host"),
    # schema version 2: the request context (``engine.context.RequestContext``)
    Column("tenant", "TEXT", "string", "the organisation of the principal (the gateway's token claim); NULL embedded"),
    Column("key_id", "TEXT", "string", "which credential authenticated the caller (its id, never the key)"),
    Column("trace_id", "TEXT", "string", "joins the row with audit records and logs of the same request"),
    # schema version 4: prompt-cache writes (billed above the input rate), beside the reads above
    Column(
        "cache_write_tokens_in",
        "INTEGER",
        "Int64",
        "input tokens the provider wrote to its prompt cache (part of tokens_in); NULL = not reported",
    ),
    # schema version 5: why the answer ended (the done event's), beside status and error_code
    Column(
        "finish_reason",
        "TEXT",
        "string",
        "why an ok answer ended: stop, length, tool_calls, content_filter or other; NULL when not ok",
    ),
    # schema version 7: the counts and cost are an estimate (a session ended before usage was reported)
    Column(
        "usage_estimated",
        "INTEGER",
        "boolean",
        "1 when the token counts and cost are gtl_nb's estimate, not the provider's report; NULL if started",
    ),
)

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)

_BESIDE = {"cache_write_tokens_in": "cached_tokens_in", "finish_reason": "error_code", "usage_estimated": "cost"}
"""Columns added after their kin (``ALTER TABLE`` appends), shown next to it in a DataFrame."""


def _reading_order(columns: tuple[Column, ...]) -> list[Column]:
    """``columns`` with each of ``_BESIDE`` moved to follow its kin."""
    ordered = [column for column in columns if column.name not in _BESIDE]
    for name, kin in _BESIDE.items():
        at = next(index for index, column in enumerate(ordered) if column.name == kin)
        ordered.insert(at + 1, next(column for column in columns if column.name == name))
    return ordered


#: The columns ``Ledger.to_dataframe`` returns, in order (the table's, but a later column beside its
#: kin), with their pandas dtypes.
DTYPES: dict[str, str] = {column.name: column.dtype for column in _reading_order(COLUMNS) if column.dtype is not None}
