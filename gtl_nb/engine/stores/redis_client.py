"""Connections of the Redis stores: one client and connection pool per URL per process, shared.

The budget counter, the response cache and the breaker store of one URL share one
``redis.asyncio`` client. asyncio connections belong to the event loop that opened them, so
"per process" is, exactly, per URL and per running loop: the engine has one loop (its loop thread)
and so one pool; a test running scenarios under several ``asyncio.run`` gets one per loop. A pool
is created on the first call a store makes on a loop and closed when the last store using it there
closes, or when the loop ends (``asyncio.run`` and ``LoopThread.stop`` cancel the tasks left; a
small keeper task per pool closes it then, while the loop still runs).

Timeouts (each can be set in the URL's query): 0.5 s to connect, 1 s for a reply, at most 64
connections per pool and 1 s to wait for a free one; a command that fails on a dropped connection
is sent once more (every store's writes are idempotent, so a retry never counts twice). They are
short on purpose: every store command is one short step, and a request that meets a server dying
under it should be held for about a second, not many, before its store falls back. A reply timeout
is not retried (a frozen server would hold the request twice as long), and the first store to find
the server unreachable tells the others of the same server (``redis_fallback``): a request is held
once per outage, not once per store.

When the server is unreachable or fails, ``run`` raises ``RedisUnavailableError`` (a ``StoreError``,
retryable) naming the server without its password; when every connection of the pool stayed in use
for the whole wait, ``RedisBusyError`` (a ``RedisUnavailableError``: a store that does not tell the
two apart treats a busy pool as a failure; one that does may go on without calling it an outage).
The stores do not pass it on to requests: each serves from a local fallback until Redis answers
again (``redis_fallback``; the budget counter's limits divided among the live replicas, ``replicas``).
Without the ``redis`` extra, opening a Redis store raises a ``ConfigurationError`` saying what to
install.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.engine.stores.urls import DEFAULT_KEY_PREFIX, parse_store_url, shown_url
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import install_extra

__all__ = [
    "CONNECT_TIMEOUT",
    "REPLY_TIMEOUT",
    "LuaScript",
    "RedisBusyError",
    "RedisConnector",
    "RedisUnavailableError",
    "RedisUnreachableError",
    "cancel_was_swallowed",
    "key_part",
    "require_redis",
    "split_url",
    "sync_client",
    "translated",
]

log = get_logger("engine.stores")

T = TypeVar("T")

CONNECT_TIMEOUT = 0.5
"""Seconds to open a connection (``socket_connect_timeout`` in the URL overrides it)."""
REPLY_TIMEOUT = 1.0
"""Seconds to wait for a reply (``socket_timeout``): every store command is one short step."""
MAX_CONNECTIONS = 64
"""Connections per pool (``max_connections``); a caller past them waits for one to be free."""
POOL_WAIT = 1.0
"""Seconds a caller waits for a free connection before the store reports Redis as unavailable."""
RETRY_BACKOFF = (0.05, 0.2)
"""Base and cap (seconds) of the pause before a command is sent again on a fresh connection."""

INSTALL_HINT = install_extra("redis")


class RedisUnavailableError(StoreError):
    """Redis could not be reached, or failed to do what a store asked (retryable: it may come back)."""

    default_retryable = True


class RedisUnreachableError(RedisUnavailableError):
    """The server itself did not answer (refused, reset, timed out): every store of that server is
    affected, not only the one whose command failed (``redis_fallback`` tells the others). The
    command may have reached the server all the same — its reply timed out, or the connection was
    lost after it was sent, and redis-py's retry then found no server, the only error it reports —
    so a write the caller must not have twice is to be taken back (``redis_budget``)."""


class RedisBusyError(RedisUnavailableError):
    """No connection of the pool was free within the wait (``POOL_WAIT``): Redis may be fine, this
    process asks it too much at once."""


def cancel_was_swallowed() -> bool:
    """Whether the running task was asked to cancel and is still running. redis-py's asyncio client
    can swallow a ``CancelledError`` that arrives mid-command; a background loop that carried on
    would then hold ``asyncio.run``'s end forever, so each loop asks this after its Redis calls
    (Python >= 3.11 counts the requests; older versions answer ``False``)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


def require_redis() -> ModuleType:
    """``redis.asyncio``, or a ``ConfigurationError`` that says to install the ``redis`` extra."""
    try:
        import redis.asyncio
    except ImportError:
        raise ConfigurationError(
            f"redis:// stores need the redis-py client, which is not installed: {INSTALL_HINT}"
        ) from None
    return redis.asyncio


def key_part(text: str) -> str:
    """``text`` made safe inside a key: percent-encoded, so ``:``, ``{`` and ``}`` (a Redis Cluster
    hash tag) in a principal's or deployment's name cannot run into another key."""
    return quote(text, safe="")


def split_url(url: str) -> tuple[str, str]:
    """The URL redis-py opens (without our own options) and the key prefix the URL asks for."""
    parts = urlsplit(url)
    prefix = DEFAULT_KEY_PREFIX
    kept = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "key_prefix":
            prefix = value
        else:
            kept.append((name, value))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment)), prefix


def server_of(url: str) -> str:
    """Which Redis server and database ``url`` names, whatever its client options and however the database
    is written (``/0``, ``?db=0``, none): stores that reach it through pools of their own (``client_name``,
    timeouts) share its outages (``redis_fallback``)."""
    parts = urlsplit(url)
    asked = next((value for name, value in parse_qsl(parts.query) if name == "db"), "")
    if parts.scheme == "unix":  # the path is the socket's
        return f"unix://{parts.netloc}{parts.path}/{asked or '0'}"
    return f"{parts.scheme}://{parts.netloc}/{parts.path.strip('/') or asked or '0'}"  # (redis-py: the path's first)


@contextlib.contextmanager
def translated(shown: str, what: str) -> Iterator[None]:
    """Turn redis-py's errors into ``RedisUnavailableError`` naming the server (never its password)."""
    import redis.exceptions

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        if _pool_exhausted(exc):
            raise RedisBusyError(f"Redis at {shown}: no free connection ({what}): {_reason(exc)}") from None
        if isinstance(exc, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
            # (redis-py's kinds of ConnectionError: the server answered, and refused the credentials)
            if _gives_no_password(shown) and _asks_for_a_password(exc):
                # the server's own words are RESP3's ("HELLO must be called with the client already
                # authenticated…"), which tell an operator nothing about the URL
                raise RedisUnreachableError(
                    f"Redis at {shown} requires a password ({what}); the URL gives none: "
                    "redis://:PASSWORD@host:port/db (docs/configuration.md, Redis backends)"
                ) from None
            refused = f"Redis at {shown} refused the credentials ({what}): {_reason(exc)}"
            raise RedisUnreachableError(refused) from None
        if _tls_never_began(shown, exc):
            raise RedisUnreachableError(_tls_handshake_failed(shown, what, exc)) from None
        raise RedisUnreachableError(f"Redis at {shown} is unreachable ({what}): {_reason(exc)}") from None
    except redis.exceptions.RedisError as exc:
        raise RedisUnavailableError(f"Redis at {shown} failed ({what}): {_reason(exc)}") from None


def _gives_no_password(shown: str) -> bool:
    """Whether the URL (as shown: its password, if any, is ``***``) carries no password."""
    try:
        return urlsplit(shown).password is None
    except ValueError:
        return False


def _asks_for_a_password(exc: BaseException) -> bool:
    """Whether the server refused a client that sent no password (RESP3's ``HELLO`` or RESP2's ``NOAUTH``),
    not a password it was given."""
    text = str(exc).lower()
    return "noauth" in text or "already authenticated" in text or "authentication required" in text


def _tls_never_began(shown: str, exc: BaseException) -> bool:
    """Whether a ``rediss://`` connection failed before TLS was up: a timeout while connecting (a
    plaintext Redis reads the TLS hello as a command and waits for the rest of it) or an SSL error."""
    import ssl

    import redis.exceptions

    if not shown.lower().startswith("rediss://"):
        return False
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__context__, ssl.SSLError) or "SSL" in str(exc):
        return "certificate verify failed" not in str(exc)  # a certificate refused is its own story
    return isinstance(exc, redis.exceptions.TimeoutError) and "connecting" in str(exc).lower()


def _tls_handshake_failed(shown: str, what: str, exc: BaseException) -> str:
    parts = urlsplit(shown)
    place = parts.netloc.rpartition("@")[2] or "the server"
    return (
        f"Redis at {shown}: the TLS handshake with {place} did not complete ({what}): {_reason(exc)}; "
        "does that Redis serve TLS? rediss:// needs Redis's tls-port; use redis:// for a plaintext one"
    )


def _pool_exhausted(exc: BaseException) -> bool:
    """Whether redis-py gave up waiting for a free connection of the pool (no server was asked):
    ``MaxConnectionsError`` (a non-blocking pool, redis-py 6+), or the ``ConnectionError`` the blocking
    pool raises when its wait times out."""
    import redis.exceptions

    exhausted = getattr(redis.exceptions, "MaxConnectionsError", None)
    if exhausted is not None and isinstance(exc, exhausted):
        return True
    return isinstance(exc, redis.exceptions.ConnectionError) and str(exc).startswith("No connection available")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


# ----------------------------------------------------------------------------------------------
# the shared clients


@dataclass(eq=False)
class _Shared:
    """One URL's client on one event loop, and the connectors using it."""

    key: tuple[str, int]
    loop: asyncio.AbstractEventLoop
    client: Any
    pool: Any
    users: set[RedisConnector] = field(default_factory=set)
    keeper: asyncio.Task[None] | None = None

    async def keep(self) -> None:
        """Wait until cancelled (by the last connector's ``aclose`` or the loop's end), then close."""
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            with _registry_lock:
                if _registry.get(self.key) is self:
                    del _registry[self.key]
            await self._close()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):  # closing: nobody is left to hear how it failed
            closer = getattr(self.client, "aclose", None) or self.client.close
            await closer()
        with contextlib.suppress(Exception):
            await self.pool.disconnect()


_registry: dict[tuple[str, int], _Shared] = {}
_registry_lock = threading.Lock()  # stores on several loops (threads) may open pools at once


def _forget_parent_pools() -> None:
    """In a forked child: the parent's connections are not ours to use (or to close)."""
    _registry.clear()
    _sync_clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_pools)


class RedisConnector:
    """A store's handle on the shared client of its URL (see the module docstring).

    Made without a loop (stores are opened before the engine's loop runs); ``client()`` gives the
    running loop's client, opening it on first use. ``aclose`` lets go of it (the last user closes it).
    """

    def __init__(self, url: str, *, what: str) -> None:
        require_redis()
        parse_store_url(url, where=what)  # a store made without open_stores gets the same checks
        self.url = url
        self.what = what
        self.shown = shown_url(url)
        self.client_url, self.prefix = split_url(url)
        self.server = server_of(self.client_url)
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisConnector({self.shown!r})"

    @property
    def closed(self) -> bool:
        """Whether its store has let go of it (``aclose``/``close``)."""
        return self._closed

    async def client(self) -> Any:
        """The ``redis.asyncio.Redis`` this process shares for the URL on the running loop."""
        if self._closed:
            raise StoreError(f"the {self.what} store at {self.shown} is closed")
        loop = asyncio.get_running_loop()
        key = (self.client_url, id(loop))  # stores with different key prefixes share the pool too
        with _registry_lock:
            shared = _registry.get(key)
            if shared is None or shared.loop is not loop:  # an id reused by a newer loop
                shared = self._open(key, loop)
                _registry[key] = shared
            shared.users.add(self)
        return shared.client

    async def run(self, what: str, operation: Callable[[Any], Awaitable[T]]) -> T:
        """``await operation(client)``, with redis-py's errors translated (``RedisUnavailableError``)."""
        client = await self.client()
        with translated(self.shown, what):
            return await operation(client)

    async def aclose(self) -> None:
        """Stop using the shared client; close it if this was its last user on this loop."""
        self._closed = True
        for shared in self._release():
            if shared.keeper is None or shared.keeper.done():
                continue
            try:
                here = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if shared.loop is here:
                shared.keeper.cancel()
                await asyncio.wait({shared.keeper})
            elif not shared.loop.is_closed():
                shared.loop.call_soon_threadsafe(shared.keeper.cancel)

    def close(self) -> None:
        """Close without a loop (a store ``open_stores`` gives back after a failure): as ``aclose``."""
        self._closed = True
        for shared in self._release():
            if shared.keeper is not None and not shared.loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to do
                    shared.loop.call_soon_threadsafe(shared.keeper.cancel)

    def _release(self) -> list[_Shared]:
        """Leave every pool this connector used; the ones left without users."""
        unused = []
        with _registry_lock:
            for key, shared in list(_registry.items()):
                if self in shared.users:
                    shared.users.discard(self)
                    if not shared.users:
                        del _registry[key]
                        unused.append(shared)
        return unused

    def _open(self, key: tuple[str, int], loop: asyncio.AbstractEventLoop) -> _Shared:
        """A client and pool for this URL on ``loop`` (no connection yet: redis-py connects on use)."""
        module = require_redis()
        from redis.asyncio.retry import Retry
        from redis.backoff import EqualJitterBackoff

        try:  # the URL's own query options win over these defaults (redis-py's rule)
            pool = module.BlockingConnectionPool.from_url(
                self.client_url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=REPLY_TIMEOUT,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_WAIT,
                health_check_interval=30,
                # once more on a dropped connection, never after a reply timeout: a server that froze
                # would otherwise hold the request two timeouts instead of one
                retry=Retry(
                    EqualJitterBackoff(cap=RETRY_BACKOFF[1], base=RETRY_BACKOFF[0]),
                    1,
                    supported_errors=(module.ConnectionError,),
                ),
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"{self.what}: {self.shown!r} cannot be used ({exc})") from None
        shared = _Shared(key, loop, module.Redis(connection_pool=pool), pool)
        shared.keeper = loop.create_task(shared.keep(), name=f"gtl_nb redis pool {self.shown}")
        return shared


# ----------------------------------------------------------------------------------------------
# Lua scripts


class LuaScript:
    """A Lua script run with ``EVALSHA``, loaded with ``SCRIPT LOAD`` when the server does not know it
    (after a restart or a fail-over, the script cache is empty). Redis runs a script atomically."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        import redis.exceptions

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


# ----------------------------------------------------------------------------------------------
# the synchronous client (token revocations are checked outside any event loop)

_sync_clients: dict[str, Any] = {}
_sync_lock = threading.Lock()


def sync_client(url: str) -> tuple[Any, str]:
    """The process's synchronous ``redis.Redis`` for ``url`` (thread-safe, one pool) and its key prefix."""
    require_redis()
    import redis
    from redis.backoff import EqualJitterBackoff
    from redis.retry import Retry

    client_url, prefix = split_url(url)
    with _sync_lock:
        client = _sync_clients.get(client_url)
        if client is None:
            try:
                client = redis.Redis.from_url(
                    client_url,
                    socket_connect_timeout=CONNECT_TIMEOUT,
                    socket_timeout=REPLY_TIMEOUT,
                    health_check_interval=30,
                    # once more on a dropped connection, never after a reply timeout: a server that froze
                    # would otherwise hold the request two timeouts instead of one
                    retry=Retry(
                        EqualJitterBackoff(cap=RETRY_BACKOFF[1], base=RETRY_BACKOFF[0]),
                        1,
                        supported_errors=(redis.ConnectionError,),
                    ),
                )
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"{shown_url(url)!r} cannot be used ({exc})") from None
            _sync_clients[client_url] = client
    return client, prefix
