"""``RedisRevocationList``: the GhostToken deny-list that every gateway replica shares, in Redis.

A ``RevocationList`` (``tokens.store``) whose entries live in one sorted set, ``<prefix>revoked``
(``jti`` -> when the entry may be forgotten, unix seconds), beside a version key
``<prefix>revoked:version`` that every change sets to a new random value. Like ``SqliteTokenStore``,
``is_revoked`` answers from a set in memory — it runs for every connection and every completion —
and at most every ``refresh`` seconds asks Redis for the version, re-reading the set only when it
moved: a token revoked through any replica (or ``gtl token revoke`` pointed at the same Redis) is
refused by all within ``refresh`` seconds, at the cost of one ``GET`` per replica per ``refresh``.
A version key that vanished (a Redis restarted without persistence) counts as moved too.

When Redis cannot be reached:

* once the set was read, ``is_revoked`` keeps answering from the last set read (one warning is
  logged, ``degraded_reason`` says so for ``/readyz``, and the next look is at most every
  ``max(refresh, 1 s)``, so a dead server does not hold up each token check): every token revoked
  before the outage stays refused, and the gateway keeps serving. What it cannot know is a
  revocation written to Redis by a replica that still reaches it; that one is refused from the
  first look after Redis answers again (logged at info). It cannot be written through this replica
  meanwhile either: ``revoke`` raises.
* before the set was ever read (Redis down when the gateway started), ``is_revoked`` raises
  ``RevocationStoreError`` (a ``GTLError``) and ``TokenAuthenticator`` refuses the token,
  retryably: with nothing known it fails closed rather than let a revoked token through.

``revoke``, ``prune`` and ``revoked`` always raise ``RevocationStoreError`` when Redis cannot be
reached: an operator is told. Run Redis with persistence (``appendonly yes``) so a restart does not
forget revocations. ``expires_at`` and ``refresh`` use ``clock``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from gtl_nb.engine.stores.redis_client import sync_client, translated
from gtl_nb.engine.stores.redis_fallback import RETRY_SECONDS, one_line
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.engine.stores.urls import parse_store_url, shown_url
from gtl_nb.gateway.tokens.store import DEFAULT_REFRESH
from gtl_nb.log import get_logger

__all__ = ["RedisRevocationList", "RevocationStoreError"]

log = get_logger("gateway.tokens")


class RevocationStoreError(StoreError):
    """The shared deny-list could not be read or written (retryable: Redis may come back)."""

    default_retryable = True


# KEYS: the set, the version.  ARGV: jti, expires_at, new version.  An earlier revocation's later
# time is kept (as SqliteTokenStore); repeating the call changes nothing more than a new version.
_REVOKE = """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known or tonumber(known) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# KEYS: the set, the version.  ARGV: now, new version.  Returns how many entries were forgotten.
_PRUNE = """
local gone = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if gone > 0 then redis.call('SET', KEYS[2], ARGV[2]) end
return gone
"""


class RedisRevocationList:
    """A ``RevocationList`` shared through Redis (module docstring); ``url`` is a ``redis://`` or
    ``rediss://`` URL whose ``key_prefix`` option (default ``gtl:``) names the set's keys."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, refresh: float = DEFAULT_REFRESH) -> None:
        parse_store_url(url, where="[gateway.jwt] revocations")
        self.shown = shown_url(url)
        self._client, prefix = sync_client(url)
        self._key = f"{prefix}revoked"
        self._version_key = f"{prefix}revoked:version"
        self._clock = clock
        self._refresh = refresh
        self._lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._version: bytes | None = None
        self._loaded = False
        self._checked: float | None = None
        self._read_at: float | None = None  # ``clock`` time of the last set read
        self._problem: str | None = None  # while Redis cannot be reached: why
        # read the list now, at start: a replica that starts (or restarts) and then loses Redis before
        # its first token would otherwise have no list to answer from and refuse every token
        with self._lock:
            self._checked = self._clock()
            self._look()

    def __repr__(self) -> str:
        return f"RedisRevocationList({self.shown!r})"

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and what tokens are checked against.

        While Redis is down, asking is also a look when one is due (at most every second): a gateway
        that receives no token would otherwise never notice Redis is back."""
        if self._problem is None:
            return None
        with self._lock:
            self._look_if_due(self._clock())
            problem = self._problem
            return None if problem is None else f"{problem}; {self._meanwhile()}"

    def _meanwhile(self) -> str:
        if not self._loaded:
            return "every token is refused until it answers (no revocation list was read yet)"
        when = _utc(self._read_at)
        return (
            f"tokens are checked against the {len(self._revoked)} revocations read at {when} "
            "(one revoked elsewhere meanwhile is refused once Redis answers)"
        )

    def revoke(self, jti: str, expires_at: float) -> None:
        """Deny ``jti`` until ``expires_at`` for every replica (an earlier revocation's later time is kept)."""
        now = self._clock()
        with self._lock:
            self._call(
                "revoking a token",
                lambda client: client.eval(
                    _REVOKE, 2, self._key, self._version_key, jti, repr(float(expires_at)), uuid.uuid4().hex
                ),
            )
            self._prune(now)
            self._reload()
            self._checked = now
            self._answered()

    def is_revoked(self, jti: str) -> bool:
        """From memory; the set is re-read when another replica changed it (at most every ``refresh`` s).

        While Redis cannot be reached, from the last set read; ``RevocationStoreError`` when none
        was ever read (module docstring)."""
        now = self._clock()
        with self._lock:
            self._look_if_due(now)
            if not self._loaded:
                raise RevocationStoreError(
                    f"{self._problem or 'the revocation list was not read'}; the token cannot be checked"
                )
            return jti in self._revoked

    def _look_if_due(self, now: float) -> None:
        """Look at Redis when ``refresh`` seconds passed — at least a second while it is away: each look
        may wait for a connect timeout (caller holds the lock)."""
        every = self._refresh if self._problem is None else max(self._refresh, RETRY_SECONDS)
        # a clock that went backwards also looks again, rather than trusting the set for that long
        if self._checked is None or now < self._checked or now - self._checked >= every:
            self._checked = now
            self._look()

    def _look(self) -> None:
        """Re-read the set if its version moved; note Redis going away or coming back (caller holds the lock)."""
        try:
            version = self._call("reading the revocation list", lambda client: client.get(self._version_key))
            if not self._loaded or version != self._version:
                self._reload()
        except RevocationStoreError as exc:
            if self._problem is None:
                self._problem = one_line(exc.message)
                log.warning("token revocations: %s; %s", self._problem, self._meanwhile())
            else:
                self._problem = one_line(exc.message)
            return
        self._answered()

    def _answered(self) -> None:
        """Redis answered: the list is current again (logged when it had not been)."""
        if self._problem is not None:
            self._problem = None
            log.info("token revocations: Redis at %s answers again; the revocation list is current", self.shown)

    def prune(self, now: float) -> int:
        """Forget the entries whose ``expires_at`` has passed (for every replica); how many."""
        with self._lock:
            count = self._prune(now)
            self._reload()
            return count

    def revoked(self) -> dict[str, float]:
        """Every revoked ``jti`` and when it may be forgotten (``gtl token list`` shows them)."""
        pairs = self._call(
            "reading the revocation list", lambda client: client.zrange(self._key, 0, -1, withscores=True)
        )
        return {_text(jti): float(until) for jti, until in pairs}

    def _prune(self, now: float) -> int:
        gone = self._call(
            "pruning the revocation list",
            lambda client: client.eval(_PRUNE, 2, self._key, self._version_key, repr(float(now)), uuid.uuid4().hex),
        )
        return int(gone)

    def _reload(self) -> None:
        """Read the set and its version together (one transaction: no change can fall between)."""

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.get(self._version_key)
            pipe.zrange(self._key, 0, -1)
            return list(pipe.execute())

        version, members = self._call("reading the revocation list", read)
        self._revoked = frozenset(_text(jti) for jti in members)
        self._version = version
        self._loaded = True
        self._read_at = self._clock()

    def _call(self, what: str, operation: Callable[[Any], Any]) -> Any:
        try:
            with translated(self.shown, what):
                return operation(self._client)
        except StoreError as exc:
            raise RevocationStoreError(exc.message) from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _utc(when: float | None) -> str:
    if when is None:
        return "?"
    return datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M:%S UTC")
