"""Store URLs: which implementation a ``backend`` setting (or the ledger's location) names.

* ``memory://`` — this process's memory (``"memory"`` is accepted too: the cache's older spelling);
* ``sqlite:///relative/path`` and ``sqlite:////absolute/path`` — a SQLite file, shared by the
  processes of one machine (the usual SQLAlchemy convention: the path follows the third slash);
* ``redis://[user:password@]host[:port][/db]`` and ``rediss://…`` (TLS) — a Redis server that
  gateway replicas share (budgets, the response cache, circuit breakers). The query may set the
  client's timeouts and pool (``socket_timeout``, ``socket_connect_timeout``, ``max_connections``,
  ``health_check_interval``, ``client_name``, the ``ssl_*`` options of redis-py) and
  ``key_prefix`` (default ``gtl:``), which lets several deployments share one server;
* ``postgresql://`` is the usage ledger's (``engine.stores.postgres_ledger``, opened by the factory);
  for the other stores it is refused with a message that says so.

A Redis URL may carry a password: ``shown_url`` is the form to put in messages and logs.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import a_kind_of

__all__ = [
    "ACCEPTED",
    "DEFAULT_KEY_PREFIX",
    "REDIS_OPTIONS",
    "StoreURL",
    "hide_passwords",
    "is_url_shaped",
    "looks_like_keyword_dsn",
    "masked_url",
    "parse_store_url",
    "refuse_url_for_path",
    "shown_url",
]

ACCEPTED = "memory:// or sqlite:///path (sqlite:////absolute/path), or redis://host:port/db (rediss:// for TLS)"
_SCALE_OUT = ("postgresql", "postgres")
_REDIS = ("redis", "rediss")
DEFAULT_KEY_PREFIX = "gtl:"

# The query options a Redis store URL may set: the number ones are checked here, so a typo is a
# configuration error at start-up rather than a failure at the first request.
_NUMBER_OPTIONS = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_connections": int,
    "health_check_interval": int,
    "db": int,
}
_TEXT_OPTIONS = (
    "key_prefix",
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
REDIS_OPTIONS = frozenset((*_NUMBER_OPTIONS, *_TEXT_OPTIONS))


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: ``scheme`` is ``"memory"``, ``"sqlite"`` or ``"redis"`` (``rediss://`` too);
    ``path`` is the SQLite file; ``url`` the whole Redis URL (never in ``repr``: it may hold a password)."""

    scheme: str
    path: Path | None = None
    url: str | None = field(default=None, repr=False)


def parse_store_url(url: object, *, where: str = "store") -> StoreURL:
    """Parse ``url``; a ``ConfigurationError`` prefixed with ``where`` names what is accepted."""
    if not isinstance(url, str):
        # named by its kind, never quoted: a URL put in a list by mistake still holds its password
        raise ConfigurationError(f"{where}: a store URL must be a string ({ACCEPTED}), got {a_kind_of(url)}")
    if url.lower() in ("memory", "memory://"):
        return StoreURL("memory")
    scheme, separator, rest = url.partition("://")
    base_scheme = scheme.split("+", 1)[0].lower()  # postgresql+psycopg://
    if separator and base_scheme in _SCALE_OUT:
        raise ConfigurationError(
            f"{where}: {base_scheme}:// holds the usage ledger only ([ledger] url); use {ACCEPTED}"
        )
    if separator and scheme.lower() in _REDIS:
        return _parse_redis(url, where)
    if not separator or scheme.lower() != "sqlite":
        shown = unknown_scheme(scheme) if separator else _quoted(url)
        raise ConfigurationError(f"{where}: unknown store {shown}; use {ACCEPTED}")
    host, slash, path = rest.partition("/")
    if host or not slash or not path:
        raise ConfigurationError(
            f"{where}: {_quoted(url)} names no file; write sqlite:///relative/path or sqlite:////absolute/path"
        )
    return StoreURL("sqlite", Path(unquote(path)).expanduser())


_URL_SHAPE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):(/+)")
"""A scheme (two characters at least: ``C:/…`` is a Windows path) and a colon, then one slash or more:
what a setting that takes a file's path must not be given — the path would be a folder named after the
URL, its password included (``postgresql:/user:password@host/db``)."""


_KEYWORD_DSN = re.compile(
    r"\s*(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options|application_name|"
    r"connect_timeout)\s*=",
    re.IGNORECASE,
)
"""How a libpq keyword/value connection string begins (``host=db user=gtl password='a b'``)."""
_PASSWORD_OPTION = re.compile(
    r"(?<![A-Za-z0-9_])(sslpassword|pgpassword|password|passfile|passwd|pass)(\s*=\s*)"
    r"('(?:[^'\\]|\\.)*'?|(?:\\.|[^\s\\'&])*)",
    re.IGNORECASE,
)
"""A password-like option and its value, as libpq writes them — quoted (``'a b'``, ``'it\\'s'``, to the
closing quote, or to the end when it has none) or not (to a blank or ``&``, a backslash escaping the
next character): one pass, each character read once."""


def looks_like_keyword_dsn(value: object) -> bool:
    """Whether ``value`` begins as a libpq keyword/value connection string does (``host=… password=…``):
    not a file's path, and perhaps holding a password."""
    return isinstance(value, str) and _KEYWORD_DSN.match(value) is not None


def hide_passwords(text: str) -> str:
    """``text`` with the value of every password-like option (``password``, ``sslpassword``, ``passfile``,
    ``passwd``, …, in any letter case) replaced by ``***``, however it is written: quoted with spaces and
    escaped quotes inside (``password='a \\'b'``), or bare — a keyword/value connection string, a URL's
    query, or a message quoting either."""
    return _PASSWORD_OPTION.sub(lambda found: found.group(1) + found.group(2) + "***", text)


def is_url_shaped(value: object) -> bool:
    """Whether ``value`` begins as a URL does (``scheme://`` or ``scheme:/``), not as a file's path."""
    return isinstance(value, str) and _URL_SHAPE.match(value) is not None


def masked_url(value: str) -> str:
    """A URL-shaped ``value`` as a message may show it: its scheme, slashes, host and path as given, the
    user name kept and the password replaced by ``***`` (all of the user part when it has no ``:`` —
    ``redis://TOKEN@host``), and no query or fragment (a ``?password=`` perhaps). Whatever comes before
    the last ``@`` is the user part."""
    found = _URL_SHAPE.match(value)
    if found is None:
        return "the value given"
    # the last @ ends the user part: a password may hold a /, ? or @ unencoded (a query's @ masks more)
    userinfo, at, rest = value[found.end() :].rpartition("@")
    cut = min((i for i in (rest.find(mark) for mark in "?#") if i >= 0), default=len(rest))
    shown = rest[:cut] + ("?…" if cut < len(rest) else "")
    if at:
        user, colon, _ = userinfo.partition(":")
        plain = colon and user and not any(mark in user for mark in "/?#")
        shown = (f"{user}:***@" if plain else "***@") + shown
    return f"{found.group(1)}:{found.group(2)}{shown}"


def refuse_url_for_path(value: object, where: str, takes: str) -> None:
    """Refuse ``value`` for a setting (``where``) that takes a file's path when it is a URL, saying what
    to give instead (``takes``), and never quoting the URL's password. A libpq keyword/value connection
    string (``host=db password='…'``) is refused too, unquoted: read as a path, it would name a file after
    the password."""
    if looks_like_keyword_dsn(value):
        raise ConfigurationError(
            f"{where}: a libpq keyword/value connection string (not shown: it may hold a password) is not a "
            f"file's path; a database is given as a postgresql://user@host:5432/database URL: give {takes}"
        )
    if not is_url_shaped(value):
        return
    assert isinstance(value, str)
    scheme, slashes = _URL_SHAPE.match(value).groups()  # type: ignore[union-attr]
    one_slash = f" (and a URL has two slashes after {scheme}:)" if len(slashes) == 1 else ""
    raise ConfigurationError(f"{where}: {masked_url(value)!r} is a URL, not a file's path{one_slash}: give {takes}")


def _quoted(text: str) -> str:
    """``text`` quoted for an error (its start), or said in words when it may hold a password
    (``user:password@…``, ``?password=…``)."""
    if "@" in text or "password" in text.lower():
        return "the URL given (not shown: it may hold a password)"
    return repr(text[:40])


def unknown_scheme(scheme: str) -> str:
    """How an error names a URL of a scheme no store has: ``ftp://…``, never more of the URL — and
    not even that when the "scheme" is not one (``user:password@host://…`` could show a password)."""
    plain = scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()
    return f"{scheme}://…" if plain else "URL"


def shown_url(url: str) -> str:
    """``url`` with its password, and the values of query options we do not know (a ``password=``
    perhaps), replaced by ``***``: the form for messages and logs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{url.partition('://')[0]}://…"
    query = "&".join(
        f"{name}={'***' if _may_be_secret(name) else value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    fragment = "…" if parts.fragment else ""  # (no store reads one: it is shown as there, never quoted)
    if not parts.netloc or parts.password is None:  # (no host: no password there, the query may hold one)
        netloc = parts.netloc
    else:
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 address keeps its brackets
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}{'' if port is None else f':{port}'}"
    if not netloc:  # (urlunsplit would drop the "//" of "redis:///0": shown as it was written)
        return f"{parts.scheme}://{parts.path}{f'?{query}' if query else ''}{f'#{fragment}' if fragment else ''}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


_SECRET_WORDS = ("pass", "pw", "secret", "token", "auth", "cred", "key")
"""Parts of a query option's name that may mean its value is a secret: those values are masked in
messages (an unknown ``password=``); a misspelt harmless option (``socket_timeot=1``) keeps its value."""


def _may_be_secret(name: str) -> bool:
    lowered = name.lower()
    if lowered in REDIS_OPTIONS:
        return False  # ours: numbers, names and file paths
    return any(word in lowered for word in _SECRET_WORDS)


def _parse_redis(url: str, where: str) -> StoreURL:
    """Check a ``redis://`` or ``rediss://`` URL: a host, a numeric port and database, known options."""
    shown = shown_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{where}: {shown!r} is not a valid Redis URL (bad port?)") from None
    if not parts.hostname:
        raise ConfigurationError(f"{where}: {shown!r} names no host; write redis://host:6379/0")
    if port == 0:
        raise ConfigurationError(f"{where}: {shown!r}: port 0 is not a Redis server's port")
    database = unquote(parts.path).strip("/")
    if database and not database.isdigit():
        raise ConfigurationError(f"{where}: {shown!r}: the path must be a database number (redis://host:6379/0)")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in REDIS_OPTIONS:
            known = ", ".join(sorted(REDIS_OPTIONS))
            matches = difflib.get_close_matches(name, sorted(REDIS_OPTIONS), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
            raise ConfigurationError(f"{where}: {shown!r}: unknown option {name!r}{hint} (known: {known})")
        kind = _NUMBER_OPTIONS.get(name)
        if kind is not None:
            try:
                number = kind(value)
            except ValueError:
                raise ConfigurationError(f"{where}: {shown!r}: {name} must be a number, got {value!r}") from None
            if number < 0 or (name == "max_connections" and number < 1):
                raise ConfigurationError(f"{where}: {shown!r}: {name} must be a positive number, got {value!r}")
        elif name == "key_prefix" and not value:
            raise ConfigurationError(f"{where}: {shown!r}: key_prefix must not be empty")
    return StoreURL("redis", url=url)
