"""``RedisRevocationList``: the GhostToken deny-list that every gateway replica shares, in Redis.

A ``RevocationList`` (``tokens.store``) whose entries live in one sorted set, ``<prefix>revoked``
(``jti`` -> when the entry may be forgotten, unix seconds), beside a version key
``<prefix>revoked:version`` that every change sets to a new random value. ``is_revoked`` runs for
every connection and every completion, on the gateway's event loop, so it answers from a set in
memory and never talks to Redis. A daemon thread per list (the watcher) does: every ``refresh``
seconds (real time; at least ``MIN_INTERVAL`` apart) it asks Redis for the version and re-reads the
set only when it moved. A token revoked through any replica (or ``gtl token revoke`` pointed at the
same Redis) is thus refused by all within ``refresh`` seconds (plus the look itself), at the cost of
one ``GET`` per replica per ``refresh``. A version key that vanished (a Redis restarted without
persistence) counts as moved too. ``close`` stops the watcher (a reload that drops the list does).

The list is read once at construction: the constructor waits for the watcher's first read, but at
most ``FIRST_READ_WAIT`` seconds (the connect timeout), so a gateway starting against a blackholed
Redis is not held up; the read goes on in the watcher, and the list counts as never read until it
succeeds.

When Redis cannot be reached:

* once the set was read, ``is_revoked`` keeps answering from the last set read (one warning is
  logged, ``degraded_reason`` says so for ``/readyz``, and the watcher looks again every
  ``max(refresh, 1 s)``, with or without traffic, so ``/readyz`` turns ready on its own): every token
  revoked before the outage stays refused, and the gateway keeps serving. What it cannot know is a
  revocation written to Redis by a replica that still reaches it; that one is refused from the
  first look after Redis answers again (logged at info). It cannot be written through this replica
  meanwhile either: ``revoke`` raises.
* before the set was ever read (Redis down when the gateway started), ``is_revoked`` raises
  ``RevocationStoreError`` (a ``GTLError``) and ``TokenAuthenticator`` refuses the token,
  retryably: with nothing known it fails closed rather than let a revoked token through.

A Redis that lost the list — restarted without persistence, or a list new to it (a gateway moved
from the SQLite file to Redis) — would let every earlier revocation through. ``restore_from`` is the
gateway's own record of revocations (``gtl token revoke`` writes the SQLite token store beside
Redis): when the version key is missing, the watcher writes back each of its unexpired entries
before it reads the set (logged as a warning, with how many), so no revoked token is accepted in
between, and every replica learns them from the next look.

A frozen Redis (one that accepts connections but never answers) holds up only the watcher, for a
reply timeout per look: never a request. ``revoke``, ``prune`` and ``revoked`` are for ``gtl
token`` (never on a gateway's loop): they talk to Redis synchronously and raise
``RevocationStoreError`` when it cannot be reached, so an operator is told. Run Redis with
persistence (``appendonly yes``) so a restart does not forget revocations. ``clock`` stamps the
reads (``degraded_reason`` shows when the set was read) and ``revoke``'s prune; the watcher's pace
is real time.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from gtl_nb.engine.stores.redis_client import CONNECT_TIMEOUT, sync_client, translated
from gtl_nb.engine.stores.redis_fallback import RETRY_SECONDS, one_line
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.engine.stores.urls import parse_store_url, shown_url
from gtl_nb.gateway.tokens.store import DEFAULT_REFRESH
from gtl_nb.log import get_logger

__all__ = ["RedisRevocationList", "RevocationStoreError"]

log = get_logger("gateway.tokens")

FIRST_READ_WAIT = CONNECT_TIMEOUT
"""Seconds the constructor waits for the first read (the watcher goes on after, when it must)."""
MIN_INTERVAL = 0.05
"""The watcher's shortest pause between looks (``refresh = 0`` looks this often)."""


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

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh: float = DEFAULT_REFRESH,
        restore_from: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        parse_store_url(url, where="[gateway.jwt] revocations")
        self._restore_from = restore_from  # (``jti`` -> until when) to write back into a list Redis lost
        self._restore_problem: str | None = None  # what stopped the last write-back (logged once)
        self.shown = shown_url(url)
        self._client, prefix = sync_client(url)
        self._key = f"{prefix}revoked"
        self._version_key = f"{prefix}revoked:version"
        self._clock = clock
        self._refresh = float(refresh)
        # Redis is talked to under this lock (the watcher's looks, revoke, prune): a read that began
        # before a revocation can never overwrite the set read after it. ``is_revoked`` and
        # ``degraded_reason`` never take it: they read the fields below, each replaced whole.
        self._io = threading.Lock()
        self._revoked: frozenset[str] | None = None  # None: never read
        self._version: bytes | None = None
        self._read_at: float | None = None  # ``clock`` time of the last set read
        self._problem: str | None = None  # while Redis cannot be reached: why
        self._closed = False
        self._wake = threading.Event()
        self._first = threading.Event()  # the watcher's first look is over (read or failed)
        self._watcher = threading.Thread(
            target=self._watch,
            args=(weakref.ref(self), self._wake, self._first),
            name=f"gtl_nb revocations {self.shown}",
            daemon=True,
        )
        self._watcher.start()
        # read the list now, at start: a replica that starts (or restarts) and then loses Redis before
        # its first token would otherwise have no list to answer from and refuse every token; but a
        # blackholed Redis holds the start up for one connect timeout at most (module docstring)
        self._first.wait(FIRST_READ_WAIT)

    def __repr__(self) -> str:
        return f"RedisRevocationList({self.shown!r})"

    @property
    def refresh(self) -> float:
        """Seconds between the watcher's looks while Redis answers; setting it wakes the watcher."""
        return self._refresh

    @refresh.setter
    def refresh(self, seconds: float) -> None:
        self._refresh = float(seconds)
        self._wake.set()

    @property
    def loaded(self) -> bool:
        """Whether a set was ever read (until then every token is refused)."""
        return self._revoked is not None

    def close(self) -> None:
        """Stop the watcher (without waiting for a look under way); ``is_revoked`` still answers from
        the last set read, and ``revoke`` still works."""
        self._closed = True
        self._wake.set()

    def __enter__(self) -> RedisRevocationList:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and what tokens are checked against.

        State only, never a look at Redis (``/readyz`` and ``/metrics`` read it on the event loop):
        the watcher notices Redis coming back."""
        revoked, problem = self._revoked, self.problem
        return None if problem is None else f"{problem}; {self._meanwhile(revoked)}"

    @property
    def problem(self) -> str | None:
        """Why the list is not current (one line: Redis is unreachable, or has not answered yet), else ``None``."""
        problem = self._problem
        if problem is None and self._revoked is None:
            problem = f"Redis at {self.shown} has not answered yet (reading the revocation list)"
        return problem

    def _meanwhile(self, revoked: frozenset[str] | None) -> str:
        if revoked is None:
            return "every token is refused until it answers (no revocation list was read yet)"
        when = _utc(self._read_at)
        return (
            f"tokens are checked against the {len(revoked)} revocations read at {when} "
            "(one revoked elsewhere meanwhile is refused once Redis answers)"
        )

    def is_revoked(self, jti: str) -> bool:
        """From memory, never from Redis: the set the watcher last read (module docstring).

        ``RevocationStoreError`` when none was ever read."""
        revoked = self._revoked
        if revoked is None:
            raise RevocationStoreError(f"{self.problem}; the token cannot be checked")
        return jti in revoked

    def look(self) -> None:
        """Look at Redis now, in the caller's thread: re-read the set if its version moved, and note
        Redis going away or coming back. The watcher calls it every ``refresh`` seconds; a test may
        call it to skip the wait. Never on an event loop: it may wait for a reply timeout."""
        with self._io:
            unshared: frozenset[str] = frozenset()
            try:
                version = self._call("reading the revocation list", lambda client: client.get(self._version_key))
                if version is None and self._restore_from is not None:
                    unshared = self._restore()
                if self._revoked is None or version != self._version or unshared:
                    self._reload()
            except RevocationStoreError as exc:
                problem = one_line(exc.message)
                if self._problem is None:
                    log.warning("token revocations: %s; %s", problem, self._meanwhile(self._revoked))
                self._problem = problem
                return
            if unshared:
                # the write-back failed: those stay refused here (never fail open), and /readyz says so
                self._revoked = (self._revoked or frozenset()) | unshared
                self._problem = (
                    f"{len(unshared)} revocation(s) of this gateway's token store could not be written back to "
                    f"the shared list at {self.shown}: refused by this replica only"
                )
                return
            self._answered()

    @staticmethod
    def _watch(ref: weakref.ref[RedisRevocationList], wake: threading.Event, first: threading.Event) -> None:
        """The watcher: the first read, then a look every ``refresh`` s (``max(refresh, 1 s)`` while
        Redis is away) until ``close``. It holds the list weakly between looks: a list nobody holds
        any more (and so nobody closed) stops it too."""
        me = ref()
        try:
            if me is not None:
                me._look_logged()
        finally:
            first.set()
        while me is not None and not me._closed:
            every = max(me._refresh if me._problem is None else max(me._refresh, RETRY_SECONDS), MIN_INTERVAL)
            del me
            wake.wait(every)
            wake.clear()
            me = ref()
            if me is not None and not me._closed:
                me._look_logged()

    def _look_logged(self) -> None:
        try:
            self.look()
        except Exception:  # a bug, not an outage (look handles those): say so, and keep watching
            log.exception("token revocations: looking at the list failed")

    def _restore(self) -> frozenset[str]:
        """Write the unexpired entries of ``restore_from`` back into a list that has no version (caller
        holds ``_io``; module docstring); returns those it could not write, which the caller keeps
        refused in memory. Its failures are logged (once for each distinct one, as the version stays
        missing and every look tries again), never raised: the set is read after it whatever happens —
        a Redis user without write rights, a read-only replica, a full Redis."""
        now = self._clock()
        try:
            kept = {jti: until for jti, until in self._restore_from().items() if until > now}  # type: ignore[misc]
        except Exception as exc:  # the local record unreadable: Redis's own list is all there is
            self._restore_failed(f"the local record of revocations could not be read ({one_line(str(exc))})")
            return frozenset()
        if not kept:
            self._restore_problem = None
            return frozenset()
        version = uuid.uuid4().hex

        def write(client: Any) -> None:
            pipe = client.pipeline(transaction=True)
            for jti, until in kept.items():
                pipe.eval(_REVOKE, 2, self._key, self._version_key, jti, repr(float(until)), version)
            pipe.execute()

        try:
            self._call("restoring the revocation list", write)
        except RevocationStoreError as exc:
            self._restore_failed(f"{len(kept)} revocation(s) could not be written back ({one_line(exc.message)})")
            return frozenset(kept)
        self._restore_problem = None
        log.warning(
            "token revocations: the shared list at %s had lost its version (Redis restarted without persistence, "
            "or the list is new there): wrote back %d revocation(s) from this gateway's token store",
            self.shown,
            len(kept),
        )
        return frozenset()

    def _restore_failed(self, problem: str) -> None:
        if problem != self._restore_problem:
            self._restore_problem = problem
            log.warning("token revocations: the shared list at %s has no version, and %s", self.shown, problem)

    def _answered(self) -> None:
        """Redis answered: the list is current again (logged when it had not been; caller holds ``_io``)."""
        if self._problem is not None:
            self._problem = None
            log.info("token revocations: Redis at %s answers again; the revocation list is current", self.shown)

    def revoke(self, jti: str, expires_at: float) -> None:
        """Deny ``jti`` until ``expires_at`` for every replica (an earlier revocation's later time is kept).

        Synchronous (``gtl token revoke``): never call it on an event loop."""
        now = self._clock()
        with self._io:
            self._call(
                "revoking a token",
                lambda client: client.eval(
                    _REVOKE, 2, self._key, self._version_key, jti, repr(float(expires_at)), uuid.uuid4().hex
                ),
            )
            self._prune(now)
            self._reload()
            self._answered()

    def prune(self, now: float) -> int:
        """Forget the entries whose ``expires_at`` has passed (for every replica); how many."""
        with self._io:
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
        """Read the set and its version together (one transaction: no change can fall between; caller holds ``_io``)."""

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.get(self._version_key)
            pipe.zrange(self._key, 0, -1)
            return list(pipe.execute())

        version, members = self._call("reading the revocation list", read)
        self._version = version
        self._read_at = self._clock()
        self._revoked = frozenset(_text(jti) for jti in members)  # last: readers see a complete read

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
