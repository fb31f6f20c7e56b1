"""Connections of the PostgreSQL stores: the URL, the driver, the pool and its loop, the errors.

* **URL.** ``postgresql://[user[:password]@]host[:port]/database[?options]`` (``postgres://`` and
  ``postgresql+psycopg://`` too). The query may hold libpq's own parameters (``sslmode``,
  ``connect_timeout``, ``application_name``, ``options``, …), passed to libpq as they are (our name
  for the connections is only libpq's ``fallback_application_name``), and ours,
  which are taken out first (``OPTIONS``): ``spool_path``, ``replica``, ``lease``, ``renew``,
  ``pool_max``. A password never reaches a message or a log: ``shown_url`` hides it.
* **Driver.** psycopg 3 and psycopg_pool (the ``postgres`` extra); without them, opening a store
  raises a ``ConfigurationError`` that says what to install.
* **Loop.** asyncio connections belong to the loop that opened them, and the engine's callers come
  from many loops (the engine's loop thread, a test's ``asyncio.run``, a notebook). A PostgreSQL
  store therefore runs its pool and its writer on a loop thread of its own (``engine.loop.LoopThread``)
  and callers reach it through ``PostgresLoop.call``: their loop ending never cancels a write.
* **Errors.** The server being down, restarting or refusing connections is ``PostgresUnavailableError``
  (retryable); ``is_unreachable`` tells those failures from a statement's own error. A pool's
  ``ConnectErrors`` keeps the last failure of its connection attempts, so a store's warning and
  ``/readyz`` name the cause ("password authentication failed …") rather than the pool's
  "couldn't get a connection after 5.00 sec"; psycopg_pool's own warning per failed attempt, for
  our pools (named ``gtl_nb-…``), is dropped (shown at DEBUG when ``psycopg.pool`` logs DEBUG): the
  store logs the outage once, with that cause. So is psycopg's own warning when it cannot cancel a
  statement our timeout cut short (a server that stopped answering), logged on our loop threads.
* **Stale connections.** A connection idle in the pool may have been closed by the server meanwhile
  (a restart, ``pg_terminate_backend``, a proxy's or a failover's idle kill): nobody notices until
  it is used. ``PooledConnections.run`` runs a store's work on a pooled connection and, when that
  connection turns out closed, once more on a new one (then has the pool check its other idle
  ones) — only a failure of that retry counts as an outage. A healthy write pays nothing for it
  (psycopg_pool's ``check`` callback would cost a round trip per checkout: a batch's is one); the
  work must be idempotent, as every write of our stores is (keyed by replica and number).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from gtl_nb.engine.loop import LoopThread
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.engine.stores.urls import hide_passwords, is_url_shaped, looks_like_keyword_dsn, masked_url
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import install_extra

__all__ = [
    "CONNECT_TIMEOUT",
    "GATEWAY_TABLES",
    "INSTALL_HINT",
    "INSUFFICIENT_PRIVILEGE",
    "LOOP_PREFIX",
    "OPTIONS",
    "POOL_PREFIX",
    "ConnectErrors",
    "PooledConnections",
    "PostgresLoop",
    "PostgresURL",
    "PostgresUnavailableError",
    "application_name_option",
    "is_postgres_url",
    "is_unreachable",
    "lost_connection",
    "parse_postgres_url",
    "privilege_fix",
    "require_psycopg",
    "run_once",
    "shown_url",
]

log = get_logger("engine.stores")

T = TypeVar("T")

INSTALL_HINT = install_extra("postgres")
SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT = 5.0
_REFUSED_WAIT = 0.05
"""Seconds a wait for a connection lasts when the pool's latest attempt failed and it holds none
(``PooledConnections``): long enough to take one the pool makes at once, short beside a timeout."""
"""Seconds to open a connection, or to wait for one from the pool, before the server counts as unreachable."""
_POOL_MAX = 4  # the writer, the lease keeper and a couple of readers: rows are written in batches
_LIBPQ_SECRETS = frozenset({"password", "sslpassword", "passfile"})
POOL_PREFIX = "gtl_nb-"
"""How the names of our pools begin: psycopg_pool's per-attempt warnings about them are ours to report."""
LOOP_PREFIX = "gtl_nb postgres "
"""How the names of our stores' loop threads begin (``PostgresLoop``): psycopg's lines logged there are ours."""

#: Our own query options (libpq would refuse them), with their type and default.
OPTIONS: dict[str, tuple[type, Any]] = {
    "spool_path": (str, None),
    "replica": (str, None),
    "lease": (float, 15.0),
    "renew": (float, 5.0),
    "pool_max": (int, _POOL_MAX),
}


class PostgresUnavailableError(StoreError):
    """PostgreSQL could not be reached, or dropped the connection (retryable: it may come back)."""

    default_retryable = True


def require_psycopg() -> tuple[ModuleType, ModuleType]:
    """``(psycopg, psycopg_pool)``, or a ``ConfigurationError`` saying to install the ``postgres`` extra."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise ConfigurationError(
            f"postgresql:// stores need psycopg 3 and psycopg_pool, which are not installed: {INSTALL_HINT}"
        ) from None
    return psycopg, psycopg_pool


# ----------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class PostgresURL:
    """A parsed ``postgresql://`` URL: ``conninfo`` for libpq (never in ``repr``: it may hold a
    password), ``shown`` for messages, and our own ``options`` (``OPTIONS``), typed."""

    conninfo: str = field(repr=False)
    shown: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """A short name of the database (host, port, database, user; no password): names its spool file."""
        parts = urlsplit(self.conninfo)
        key = f"{parts.hostname}:{parts.port}:{parts.path}:{parts.username}"
        return hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()[:12]


def is_postgres_url(url: object) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://``, ``postgres://``, ``postgresql+psycopg://``)."""
    if not isinstance(url, str):
        return False
    scheme, separator, _ = url.partition("://")
    return bool(separator) and scheme.split("+", 1)[0].lower() in SCHEMES


def parse_postgres_url(url: object, *, where: str = "ledger") -> PostgresURL:
    """Check ``url`` and split our options from libpq's; a ``ConfigurationError`` prefixed with
    ``where`` says what is wrong (never quoting the password)."""
    if looks_like_keyword_dsn(url):  # libpq takes one; we take URLs (our options ride in the query)
        raise ConfigurationError(
            f"{where}: expected a postgresql://user@host:5432/database URL, got a libpq keyword/value "
            "connection string (not shown: it may hold a password); write it as a URL"
        )
    if not is_postgres_url(url):
        # another scheme's URL without its password and query; other text without a password option
        shown = (masked_url(url) if is_url_shaped(url) else hide_passwords(url)) if isinstance(url, str) else url
        raise ConfigurationError(f"{where}: expected a postgresql://user@host:5432/database URL, got {shown!r:.60}")
    assert isinstance(url, str)
    shown = shown_url(url)
    scheme, _, rest = url.partition("://")
    try:
        parts = urlsplit(f"postgresql://{rest}")
        parts.port  # noqa: B018 - parses the port: a bad one raises ValueError here, not at the first write
    except ValueError:
        raise ConfigurationError(f"{where}: {shown!r} is not a valid PostgreSQL URL (bad port?)") from None
    if scheme.lower().partition("+")[2] not in ("", "psycopg"):
        raise ConfigurationError(f"{where}: {shown!r}: only the psycopg driver is supported (postgresql+psycopg://)")
    options: dict[str, Any] = {name: default for name, (_, default) in OPTIONS.items()}
    kept: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in OPTIONS:
            kept.append((name, value))
            continue
        kind = OPTIONS[name][0]
        try:
            typed = kind(value)
        except ValueError:
            raise ConfigurationError(f"{where}: {shown!r}: {name} must be a number, got {value!r}") from None
        if kind is str and not typed:
            raise ConfigurationError(f"{where}: {shown!r}: {name} must not be empty")
        if kind is not str and not (math.isfinite(typed) and typed > 0):
            raise ConfigurationError(f"{where}: {shown!r}: {name} must be a positive number, got {value!r}")
        options[name] = typed
    if options["renew"] >= options["lease"]:
        raise ConfigurationError(f"{where}: {shown!r}: renew ({options['renew']:g} s) must be shorter than lease")
    if not any(name == "connect_timeout" for name, _ in kept):
        kept.append(("connect_timeout", str(int(CONNECT_TIMEOUT))))
    # (not urlunsplit: it drops the "//" of an empty authority, libpq's ``postgresql:///db?host=/socket``)
    conninfo = f"postgresql://{parts.netloc}{parts.path}?{urlencode(kept, quote_via=quote)}"
    badly_written = _badly_written_part(parts.netloc, parts.path)
    if badly_written:
        raise ConfigurationError(f"{where}: {shown!r} is not a valid PostgreSQL URL: {badly_written}")
    psycopg, _ = require_psycopg()
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)  # libpq's own check of its parameters
    except psycopg.ProgrammingError as exc:
        reason = _unquoted(_first_line(exc), parts.netloc)
        raise ConfigurationError(f"{where}: {shown!r} is not a valid PostgreSQL URL: {reason}") from None
    wrong_value = _bad_libpq_value(kept)
    if wrong_value:
        raise ConfigurationError(f"{where}: {shown!r} is not a valid PostgreSQL URL: {wrong_value}")
    # shown in logs and /readyz as the database it names: our own options (a spool's path…) left out
    named = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name not in OPTIONS]
    database = f"{scheme}://{parts.netloc}{parts.path}" + (f"?{urlencode(named, quote_via=quote)}" if named else "")
    return PostgresURL(conninfo, shown_url(database), options)


_LIBPQ_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "load_balance_hosts": ("disable", "random"),
    "sslcertmode": ("disable", "allow", "require"),
    "sslnegotiation": ("postgres", "direct"),
    "sslcompression": ("0", "1"),
    "sslsni": ("0", "1"),
    "keepalives": ("0", "1"),
}
"""libpq's options that take one of a few words (libpq's "Parameter Key Words"). libpq's parser takes any
value and checks these only when it connects: a misspelt one (``sslmode=requir``) was a connection that
failed for ever — a degraded start that never heals — where a misspelt option name refuses the start."""
_LIBPQ_NUMBERS = ("connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")


def _bad_libpq_value(options: list[tuple[str, str]]) -> str | None:
    """What is wrong with the value of a libpq option of ``options`` that libpq would refuse only when it
    connects (the option's name and its allowed values; the value quoted only when it is one word)."""
    for name, value in options:
        choices = _LIBPQ_CHOICES.get(name)
        if choices is not None and value not in choices:
            meant = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            hint = f"; did you mean {meant[0]!r}?" if meant else ""
            shown = repr(value) if _plain_name(value.replace("-", "_")) or value.isdigit() else "the value given"
            return f"{name} must be one of {', '.join(choices)}, not {shown}{hint}"
        if name in _LIBPQ_NUMBERS and not value.strip().lstrip("-").isdigit():
            shown = repr(value) if len(value) <= 20 and _plain_name(value.replace(".", "_")) else "the value given"
            return f"{name} must be a whole number (seconds or a count; milliseconds for tcp_user_timeout), not {shown}"
    return None


_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
"""A ``%`` that does not begin a percent-escape (two hex digits)."""
_QUOTED = re.compile(r'"([^"]*)"')


def _badly_written_part(netloc: str, path: str) -> str | None:
    """What is wrong, in our words, with a part of a URL's authority or path that libpq would refuse
    by quoting it — its message repeats the part, which may be the password: a ``%`` not followed by
    two hex digits, or a space."""
    userinfo, _, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    parts = (
        ("the user name", user),
        ("the password", password if colon else ""),
        ("the host", hostport),
        ("the database name", path.lstrip("/")),
    )
    for name, text in parts:
        if _PERCENT_ESCAPE.search(text):
            return f"{name} has a % not followed by two hex digits: percent-encode it as %25"
        if any(character.isspace() for character in text):
            how = "" if name == "the host" else ": percent-encode it (a space as %20)"
            return f"{name} has a space (or another blank){how}"
    return None


def _plain_name(text: str) -> bool:
    return text.isascii() and text.isidentifier()


def _unquoted(reason: str, netloc: str) -> str:
    """libpq's ``reason`` without what it quotes from the URL, unless that is a plain name (an option's
    ``"foo"``); nor the URL's password, quoted or not (one of a few characters is left: it would only
    mangle the message's own words)."""
    password = netloc.rpartition("@")[0].partition(":")[2]
    reason = _QUOTED.sub(lambda found: found.group(0) if _plain_name(found.group(1)) else '"…"', reason)
    reason = hide_passwords(reason)  # a password option libpq repeats, quoted its way (``password='a b'``)
    return reason.replace(password, "***") if len(password) >= 4 else reason


def application_name_option(conninfo: str, name: str) -> dict[str, str]:
    """The connection option naming our connections ``name`` in ``pg_stat_activity`` — as libpq's
    ``fallback_application_name``, so an ``application_name`` the URL (or ``$PGAPPNAME``) gives wins;
    nothing when the URL sets a fallback of its own."""
    psycopg, _ = require_psycopg()
    given = psycopg.conninfo.conninfo_to_dict(conninfo)
    if "fallback_application_name" in given:
        return {}
    return {"fallback_application_name": name[:63]}  # PostgreSQL keeps 63 bytes of it


def shown_url(url: str) -> str:
    """``url`` with its password (in the authority or as a ``password=`` option) replaced by ``***``: the
    value of every option whose name holds ``pass`` in any letter case (``password``, ``sslpassword``,
    ``passfile``, a mistyped ``Password=`` or ``passwd=`` that libpq refuses by name), and a password
    option written inside another's value (``dbname=host=db password='a b'``, quoted or not)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{url.partition('://')[0]}://…"
    query = "&".join(
        f"{name}={'***' if name in _LIBPQ_SECRETS or 'pass' in name.lower() else hide_passwords(value)}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 address keeps its brackets
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}{'' if port is None else f':{port}'}"
    shown = f"{parts.scheme}://{netloc}{parts.path}"  # (urlunsplit would drop the "//" of an empty authority)
    return shown + (f"?{query}" if query else "") + ("#…" if parts.fragment else "")  # (a fragment: never quoted)


# ----------------------------------------------------------------------------------------------
# errors


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server cannot be used now (down, restarting, connection lost or
    refused, pool exhausted) rather than a mistake in one statement."""
    psycopg, psycopg_pool = require_psycopg()
    if isinstance(exc, (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed, OSError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    # the server going down mid-transaction: "terminating connection due to administrator command"
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate.startswith(("08", "57P"))


def lost_connection(exc: BaseException, conn: Any) -> bool:
    """Whether ``exc`` (raised while using ``conn``) means the connection itself is gone — the server
    closed it ("terminating connection due to administrator command", "server closed the connection
    unexpectedly", "the connection is closed") — rather than that one statement failed on a live one."""
    psycopg, _ = require_psycopg()
    return isinstance(exc, psycopg.Error) and bool(getattr(conn, "closed", False))


def describe(exc: BaseException, *, role: str | None = None) -> str:
    """A one-line reason for logs and ``/readyz`` (libpq's messages span lines; a password option one
    repeats is hidden, ``hide_passwords``); a privilege the ``role`` lacks with the GRANT that gives it."""
    line = hide_passwords(_first_line(exc)) or type(exc).__name__
    if getattr(exc, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
        line += privilege_fix(line, role)
    return line


INSUFFICIENT_PRIVILEGE = "42501"
GATEWAY_TABLES = ("gtl_schema_version", "requests", "ledger_leases", "audit_records", "audit_chains")
"""The tables the gateway creates (the ledger's and the audit log's; docs/deploy.md, "Database role")."""
_DENIED_SCHEMA = re.compile(r"permission denied for schema ([A-Za-z_][A-Za-z0-9_$]*)")


def privilege_fix(reason: str, role: str | None) -> str:
    """What to tell an operator whose ``role`` was refused (``reason``, PostgreSQL's words): the GRANT to run."""
    who = role if role and _plain_name(role.replace("-", "_")) else "<role>"
    schema = _DENIED_SCHEMA.search(reason)
    if schema is not None:
        return (
            f": the role {who} may not create the gateway's tables in schema {schema.group(1)}: "
            f"GRANT CREATE ON SCHEMA {schema.group(1)} TO {who}, or let the tables' owner start the first replica "
            '(docs/deploy.md, "Database role")'
        )
    return (
        f": the role {who} lacks a privilege on the gateway's tables: GRANT SELECT, INSERT, UPDATE, DELETE ON "
        f"{', '.join(GATEWAY_TABLES[1:])} TO {who} (SELECT on gtl_schema_version, requests, audit_records and "
        'audit_chains for a role that only reads: docs/deploy.md, "Database role")'
    )


class ConnectErrors:
    """The last failure of a pool's connection attempts, until one succeeds (``connection_class``
    records them): the cause a ``PoolTimeout`` — all a caller of ``pool.connection()`` gets — hides.
    ``next_failure()`` is a future the next failed attempt ends (``PooledConnections`` waits on it
    beside the pool, so a server that refuses — a stopped one, a wrong password, a database that does
    not exist — is known at once, not after the pool's whole timeout)."""

    def __init__(self) -> None:
        self.last: BaseException | None = None
        self.role: str | None = None
        """The role the last connection logged in as (the URL's user, ``$PGUSER`` or the OS user)."""
        self._waiting: list[asyncio.Future[BaseException]] = []
        _quiet_pool_log()

    def next_failure(self) -> asyncio.Future[BaseException]:
        """A future (of the running loop) whose result is the next failed attempt's exception."""
        future: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        return future

    def forget(self, future: asyncio.Future[BaseException]) -> None:
        """No longer wait on ``future`` (``next_failure``'s)."""
        future.cancel()
        if future in self._waiting:
            self._waiting.remove(future)

    def _record(self, exc: BaseException | None) -> None:
        self.last = exc
        if exc is None or _may_pass(exc):
            return
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.get_loop().call_soon_threadsafe(_settle, future, exc)

    def connection_class(self) -> type:
        """psycopg's ``AsyncConnection``, recording into this object how each connection attempt ended."""
        psycopg, _ = require_psycopg()
        errors = self

        class RecordingConnection(psycopg.AsyncConnection):  # type: ignore[misc,name-defined]
            gtl_nb_pool = True  # psycopg_pool's lines about a connection of ours name it, not its pool

            @classmethod
            async def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    conn = await super().connect(*args, **kwargs)
                except Exception as exc:
                    errors._record(exc)
                    raise
                errors._record(None)
                errors.role = conn.info.user
                return conn

        return RecordingConnection

    def describe(self, exc: BaseException) -> str:
        """``describe(exc)``; for a wait that ended without a connection (the pool's timeout, or ours
        around it) while the pool's last connection attempt failed, why that attempt failed: "Connection
        refused", "password authentication failed …" — not "no answer within 5 s", which sends an
        operator after a hung network when the server is stopped or refuses the credentials."""
        _, psycopg_pool = require_psycopg()
        if isinstance(exc, (psycopg_pool.PoolTimeout, asyncio.TimeoutError, TimeoutError)) and self.last is not None:
            return describe(self.last)
        return describe(exc, role=self.role)


def _may_pass(exc: BaseException) -> bool:
    """Whether a failed connection attempt says the server cannot take one *for now*: short of connections
    (SQLSTATE class 53, "too many connections": a busy connection of the pool still comes back — a role at
    its limit failed its second caller at once) or starting up (57P03, "the database system is starting
    up": it will take one in a moment). A wait for a connection is not cut short by these."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and (state.startswith("53") or state == "57P03"):
        return True
    said = str(exc)
    return "too many connections" in said or "the database system is starting up" in said


def _settle(future: asyncio.Future[BaseException], exc: BaseException) -> None:
    if not future.done():
        future.set_result(exc)


class _PoolAttemptNoise(logging.Filter):
    """Drops psycopg_pool's warnings about failed connection attempts of our pools (one a second or so
    while the server is away), and about each of their connections the server closed (one per pooled
    connection when it stops), and psycopg's own warning that it could not cancel a statement of ours
    (our timeout cut it short, and a server that stopped answering ignores the cancel request too):
    the store's own warning names the outage once, with its cause. With the logger (``psycopg.pool``,
    ``psycopg``) at DEBUG they are still shown, as DEBUG."""

    _MESSAGES = ("error connecting in ", "reconnection attempt in pool ")
    _CONNECTION_MESSAGES = ("discarding closed connection: ", "discarding broken connection: ")
    # psycopg's lines as it cancels a statement our timeout cut short (3.3: then closes the connection)
    _CANCEL_MESSAGES = (
        "query cancellation failed: ",
        "query not terminated after cancellation",
        "query cancellation interrupted",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        message = str(record.msg)
        if record.name == _PSYCOPG_LOGGER:
            # the line names no connection: ours are those that run on our stores' loop threads
            ours = message.startswith(self._CANCEL_MESSAGES) and (record.threadName or "").startswith(LOOP_PREFIX)
        elif message.startswith(self._CONNECTION_MESSAGES):
            ours = bool(args) and getattr(args[0], "gtl_nb_pool", False) is True
        else:
            ours = bool(args) and str(args[0]).startswith(POOL_PREFIX) and message.startswith(self._MESSAGES)
        if not (ours and record.levelno >= logging.WARNING):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_POOL_LOGGER = "psycopg.pool"
_PSYCOPG_LOGGER = "psycopg"
_NOISE_FILTER = _PoolAttemptNoise()


def _quiet_pool_log() -> None:
    """Put ``_PoolAttemptNoise`` on psycopg_pool's and psycopg's loggers (once; a logger's filter does
    not see what its children's records propagate to it)."""
    for name in (_POOL_LOGGER, _PSYCOPG_LOGGER):
        driver_log = logging.getLogger(name)
        if _NOISE_FILTER not in driver_log.filters:
            driver_log.addFilter(_NOISE_FILTER)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:300] + "…"


def run_once(url: str, work: Callable[[Any], Awaitable[T]], *, name: str, where: str = "ledger") -> T:
    """``await work(conn)`` on one new connection to the database ``url`` names (autocommit, our query
    options left out, called ``name`` in ``pg_stat_activity`` unless the URL names it), closed after:
    for commands, from a thread without a running loop. PostgreSQL unreachable or refusing us:
    ``PostgresUnavailableError``; a statement's error: ``StoreError`` — both name why, never the password."""
    parsed = parse_postgres_url(url, where=where)
    psycopg, _ = require_psycopg()

    roles: list[str] = []

    async def session() -> T:
        naming = application_name_option(parsed.conninfo, name)
        conn = await psycopg.AsyncConnection.connect(parsed.conninfo, autocommit=True, **naming)
        roles.append(conn.info.user)
        async with conn:
            return await work(conn)

    try:
        return asyncio.run(session())
    except psycopg.Error as exc:
        if is_unreachable(exc):
            raise PostgresUnavailableError(f"PostgreSQL {parsed.shown} cannot be used: {describe(exc)}") from None
        raise StoreError(f"PostgreSQL {parsed.shown}: {describe(exc, role=next(iter(roles), None))}") from None


# ----------------------------------------------------------------------------------------------
# running work on the pool's connections


class PooledConnections:
    """Runs a store's work on a connection of ``pool``, retrying it once on a new connection when the
    pooled one was closed by the server while it sat idle (module docstring: "Stale connections").

    ``configure`` prepares a new connection as the pool's own ``configure`` does; ``where`` names the
    store in the log line a retry writes. The work is run twice at most: it must be idempotent.

    ``errors`` (the pool's ``ConnectErrors``): a connection attempt of the pool that fails while the
    work waits for a connection ends the wait with that failure, rather than the pool's timeout later
    — a server that answered "password authentication failed" or refused the connection is not
    going to give one within it, and a start waited those seconds for nothing."""

    def __init__(
        self,
        pool: Any,
        *,
        timeout: float,
        where: str,
        configure: Callable[[Any], Awaitable[None]] | None = None,
        errors: ConnectErrors | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._where = where
        self._configure = configure
        self._errors = errors
        self._checking: asyncio.Future[None] | None = None

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``await work(conn)`` on a pooled connection; on a new one if that one turns out closed."""
        conn = await self._connection()
        try:
            async with conn:  # (as the pool's own ``connection()``: a pooled connection is not closed)
                try:
                    return await work(conn)
                except Exception as exc:
                    if not lost_connection(exc, conn):
                        raise
                    reason = describe(exc)
        finally:
            await self._pool.putconn(conn)
        # the pool discards the closed connection as it takes it back; the retry must not get another
        # idle one just as dead, so it runs on a connection of its own (a server that is down refuses
        # it at once: an outage is still noticed as fast as before)
        result = await self._on_new_connection(work)
        log.info("%s: a pooled connection was closed by the server (%s); done on a new one", self._where, reason)
        self._check_idle()
        return result

    async def _connection(self) -> Any:
        """A connection of the pool (``putconn`` it back), or the failure of the pool's next
        connection attempt if that comes first (``errors``), or the pool's timeout."""
        if self._errors is None:
            return await self._pool.getconn(timeout=self._timeout)
        failure = self._errors.next_failure()
        # the pool's latest attempt failed and it holds no connection made before: the wait would end in
        # that failure again; asked all the same (the pool makes a new attempt for it), briefly
        last = self._errors.last
        refused = last is not None and not _may_pass(last) and not self._pool.get_stats().get("pool_available", 0)
        if refused:
            failure.set_result(self._errors.last)  # type: ignore[arg-type]
        getting = asyncio.ensure_future(self._pool.getconn(timeout=self._timeout))
        try:
            if refused:
                await asyncio.wait({getting}, timeout=_REFUSED_WAIT)
            else:
                await asyncio.wait({getting, failure}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            getting.cancel()
            getting.add_done_callback(self._give_back)
            raise
        finally:
            self._errors.forget(failure)
        if getting.done():
            return getting.result()
        getting.cancel()  # the pool gives back a connection it handed over meanwhile
        getting.add_done_callback(self._give_back)
        raise failure.result()

    def _give_back(self, getting: asyncio.Future[Any]) -> None:
        """A connection the pool handed to a wait given up: back to it (any failure was said already)."""
        if getting.cancelled() or getting.exception() is not None:
            return
        _in_background(self._pool.putconn(getting.result()))

    async def _on_new_connection(self, work: Callable[[Any], Awaitable[T]]) -> T:
        conn = await self._pool.connection_class.connect(self._pool.conninfo, **self._pool.kwargs)
        async with conn:  # closed after: the pool makes its own new ones
            if self._configure is not None:
                await self._configure(conn)
            return await work(conn)

    def _check_idle(self) -> None:
        """Have the pool test its idle connections now (one round trip each), in the background: those
        the server closed too are replaced rather than found one write at a time."""
        if self._checking is not None and not self._checking.done():
            return
        self._checking = asyncio.ensure_future(self._pool.check())
        self._checking.add_done_callback(_consume)


def _in_background(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.ensure_future(coro).add_done_callback(_consume)


def _consume(task: asyncio.Future[Any]) -> None:
    """A background check's end: a failure there is the next write's to find, not an unretrieved error."""
    if not task.cancelled():
        task.exception()


# ----------------------------------------------------------------------------------------------
# the store's own loop


class PostgresLoop:
    """The loop thread a PostgreSQL store runs its pool and tasks on, and the bridge to it.

    ``call(coro)`` awaits ``coro`` on that loop from any other loop (cancelling the caller cancels
    the work); ``run(coro)`` waits for it from a thread without a running loop."""

    def __init__(self, name: str) -> None:
        # the prefix tells psycopg's lines about our connections from others' (``_PoolAttemptNoise``)
        self._thread = LoopThread(name=name if name.startswith(LOOP_PREFIX) else LOOP_PREFIX + name)
        self.loop = self._thread.loop

    @property
    def in_loop(self) -> bool:
        return self._thread.in_loop_thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._thread.run(coro, timeout=timeout)

    def wake(self, callback: Any) -> None:
        """Run ``callback()`` on the loop soon (from any thread)."""
        self.loop.call_soon_threadsafe(callback)

    def stop(self) -> None:
        """Cancel what still runs on the loop and end its thread (blocking, a few seconds at most)."""
        self._thread.stop()
