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
  first look after Redis answers again (logged as a warning, as the outage was). It cannot be
  written through this replica meanwhile either: ``revoke`` raises.
* before the set was ever read (Redis down when the gateway started), ``is_revoked`` raises
  ``RevocationStoreError`` (a ``GTLError``) and ``TokenAuthenticator`` refuses the token,
  retryably: with nothing known it fails closed rather than let a revoked token through.

A Redis that lost the list — restarted without persistence, its entries evicted or deleted, or a
list new to it (a gateway moved from the SQLite file to Redis) — would let every earlier revocation
through. The set holds a marker, ``SENTINEL`` (its score ``+inf``: never pruned), which every write
puts back; a look that finds the version key or the marker missing writes back, before it reads the
set, every unexpired revocation this list knows: those it read from Redis before (every running
replica holds the whole list in memory, so the first to look restores it for all) and those of
``restore_from``, the gateway's own record (``gtl token revoke`` writes the SQLite token store beside
Redis). It is logged as a warning, with how many; no revoked token is accepted in between, and every
replica learns them from its next look. (A revocation cannot be taken back, only expire: so writing
back what was read is never wrong.) A list an earlier release wrote has no marker: the first look
adds it, with the same warning.

A frozen Redis (one that accepts connections but never answers) holds up only the watcher, for a
reply timeout per look: never a request. ``revoke``, ``revoke_many``, ``prune`` and ``revoked`` are
for ``gtl token`` (never on a gateway's loop): they talk to Redis synchronously and raise
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
SENTINEL = "~gtl_nb:the-list-is-here~"
"""The set's marker (module docstring): its absence says the entries were lost. Its score, ``+inf``,
and its first character, past every letter and digit, make it the set's last member: a look asks
for that one (``ZRANGE -1 -1``, which every Redis user that reads the list may run). A token whose
``jti`` it is counts as revoked."""


class RevocationStoreError(StoreError):
    """The shared deny-list could not be read or written (retryable: Redis may come back)."""

    default_retryable = True


# KEYS: the set, the version.  ARGV: jti, expires_at, new version, the marker.  An earlier
# revocation's later time is kept (as SqliteTokenStore); repeating the call changes nothing more than
# a new version. The marker goes back with every write (a set rebuilt after a loss has it again).
_REVOKE = """
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not known or tonumber(known) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
redis.call('ZADD', KEYS[1], '+inf', ARGV[4])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""

# KEYS: the set, the version.  ARGV: new version, the marker, then jti and expires_at pairs: ``_REVOKE`` for
# each pair, in one call (``revoke_many``: ``gtl token push-revocations`` of thousands).
_REVOKE_MANY = """
for i = 3, #ARGV, 2 do
  local known = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not known or tonumber(known) < tonumber(ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
redis.call('ZADD', KEYS[1], '+inf', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
REVOKE_BATCH = 1000
"""Revocations ``revoke_many`` writes per call (one script run, a short pause for the Redis it runs on)."""

# KEYS: the set, the version.  ARGV: new version, the marker.  A list with no revocation yet.
_MARK = """
redis.call('ZADD', KEYS[1], '+inf', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
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
        restore_source: str | None = None,
    ) -> None:
        parse_store_url(url, where="[gateway.jwt] revocations")
        self._restore_from = restore_from  # (``jti`` -> until when) to write back into a list Redis lost
        # what ``restore_from`` reads, named in the warning of a new list it had nothing for (a gateway's
        # list names it; ``gtl token``'s, which write the list themselves, do not)
        self._restore_source = restore_source
        self._restore_problems: set[str] = (
            set()
        )  # what stopped write-backs since the last one that worked (logged once each)
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
        self._until: dict[str, float] = {}  # the same, with when each may be forgotten (for a write-back)
        self._shared: frozenset[str] = frozenset()  # what the shared list held at the last read
        self._unshared: dict[str, float] = {}  # refused here, missing there: written back at every look
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
        return jti in revoked or jti == SENTINEL

    def look(self) -> None:
        """Look at Redis now, in the caller's thread: re-read the set if its version moved, and note
        Redis going away or coming back. The watcher calls it every ``refresh`` seconds; a test may
        call it to skip the wait. Never on an event loop: it may wait for a reply timeout."""
        with self._io:
            failed: dict[str, float] = {}
            wrote = False
            try:
                version, marked = self._call("reading the revocation list", self._version_and_marker)
                if version is None or not marked:  # lost (or never written, or written before the marker)
                    failed = self._restore(lost_version=version is None)
                elif self._unshared:  # what an earlier look could not write back: again, every look
                    failed = self._write_back_missing(self._unshared)
                    wrote = not failed
                if self._revoked is None or version != self._version or failed or wrote:
                    # (a write-back that just failed is not tried twice in one look)
                    failed = {**self._reload(write_back=not failed), **failed}
            except RevocationStoreError as exc:
                problem = one_line(exc.message)
                if self._problem is None:
                    log.warning("token revocations: %s; %s", problem, self._meanwhile(self._revoked))
                self._problem = problem
                return
            now = self._clock()
            unshared = {jti: until for jti, until in failed.items() if jti not in self._shared and until > now}
            self._unshared = unshared
            if unshared:
                # the write-back failed: those stay refused here (never fail open), and /readyz says so
                self._until = {**unshared, **self._until}
                self._revoked = (self._revoked or frozenset()) | unshared.keys()
                self._problem = (
                    f"{len(unshared)} revocation(s) could not be written back to the shared list at {self.shown}: "
                    "refused by this replica only"
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

    def _version_and_marker(self, client: Any) -> tuple[Any, bool]:
        """The version, and whether the set has its marker (not: it lost its entries, or never had them)."""
        pipe = client.pipeline(transaction=False)
        pipe.get(self._version_key)
        pipe.zrange(self._key, -1, -1)
        version, last = pipe.execute()
        return version, bool(last) and _text(last[0]) == SENTINEL

    def _restore(self, *, lost_version: bool) -> dict[str, float]:
        """Write back every unexpired revocation this list knows — read from Redis before, and
        ``restore_from``'s — into a list that lost its version or its marker, and the marker (caller
        holds ``_io``; module docstring). Returns those it could not write, which the caller keeps
        refused in memory. Its failures are logged (once for each distinct one, as the list stays
        unmarked and every look tries again), never raised: the set is read after it whatever
        happens — a Redis user without write rights, a read-only replica, a full Redis."""
        now = self._clock()
        kept = {jti: until for jti, until in self._until.items() if until > now}
        recorded = 0
        if self._restore_from is not None:
            try:
                local = {jti: until for jti, until in self._restore_from().items() if until > now}
            except Exception as exc:  # the local record unreadable: what was read before is all there is
                self._restore_failed(
                    one_line(str(exc)),
                    f"the shared list at {self.shown} has lost its version or marker, and the local record of "
                    "revocations could not be read",
                )
            else:
                recorded = len(local.keys() - kept.keys())
                kept = {**local, **{jti: max(until, local.get(jti, until)) for jti, until in kept.items()}}
        try:
            self._write_back(kept)
        except RevocationStoreError as exc:
            if kept:
                self._restore_failed(
                    one_line(exc.message),
                    f"the shared list at {self.shown} has lost its version or marker (or an earlier gtl_nb wrote "
                    f"it), and {len(kept)} revocation(s) could not be written back",
                )
            return kept
        self._restore_problems.clear()
        if not kept and self._restore_source is not None:
            # nothing known here to write back into a list without its marker: on a deployment moved from
            # a token store to Redis, the revocations that store holds (on another host, or in another data
            # directory than this replica's) are in no list, and their tokens pass. Only the operator knows
            # where that store is: say so loudly, once (the marker is written now).
            log.warning(
                "token revocations: the shared list at %s is new (or lost everything) and this gateway's token "
                "store (%s) holds no unexpired revocation to write back into it: a revocation recorded in another "
                "token store — the single gateway's before revocations moved to Redis, or wherever gtl token "
                "revoke ran — is NOT in the shared list, and its token is accepted. Copy it with gtl --config "
                "FILE token push-revocations --from THAT_STORE (docs/deploy.md); on a deployment that never "
                "revoked a token, nothing is missing",
                self.shown,
                self._restore_source,
            )
        if kept:
            lost = "its version" if lost_version else "its entries, or its marker"
            log.warning(
                "token revocations: the shared list at %s had lost %s (Redis restarted without persistence or "
                "evicted them, the list is new there, or an earlier gtl_nb wrote it): wrote back %d revocation(s) "
                "(%d read from it before, %d from this gateway's token store)%s",
                self.shown,
                lost,
                len(kept),
                len(kept) - recorded,
                recorded,
                ""
                if self._restore_source is None
                else f"; a revocation recorded only in another token store than {self._restore_source} is not "
                "among them: copy it with gtl token push-revocations --from THAT_STORE (docs/deploy.md)",
            )
        return {}

    def _restore_failed(self, why: str, what: str) -> None:
        """Log ``what`` failed, ``why``, once for each reason (the counts change from look to look)."""
        if why not in self._restore_problems:
            self._restore_problems.add(why)
            log.warning("token revocations: %s (%s)", what, why)

    def _write_back_missing(self, lost: Mapping[str, float]) -> dict[str, float]:
        """Write back ``lost``, revocations known here that the shared list is missing (caller holds
        ``_io``); returns them when Redis refused (the failure logged once per reason), else ``{}``."""
        try:
            self._write_back(lost)
        except RevocationStoreError as exc:
            self._restore_failed(
                one_line(exc.message),
                f"{len(lost)} revocation(s) known here are missing from the shared list at {self.shown} and could "
                "not be written back",
            )
            return dict(lost)
        self._restore_problems.clear()
        log.warning(
            "token revocations: %d revocation(s) read before were missing from the shared list at %s "
            "(evicted or deleted: revocations leave it only when they expire): wrote them back",
            len(lost),
            self.shown,
        )
        return {}

    def _answered(self) -> None:
        """Redis answered: the list is current again (logged when it had not been; caller holds ``_io``)."""
        if self._problem is not None:
            self._problem = None
            # a warning like the outage's: at the default level an operator sees both ends of it
            log.warning("token revocations: Redis at %s answers again; the revocation list is current", self.shown)

    def revoke(self, jti: str, expires_at: float) -> None:
        """Deny ``jti`` until ``expires_at`` for every replica (an earlier revocation's later time is kept).

        Synchronous (``gtl token revoke``): never call it on an event loop."""
        now = self._clock()
        with self._io:
            self._call(
                "revoking a token",
                lambda client: client.eval(
                    _REVOKE, 2, self._key, self._version_key, jti, repr(float(expires_at)), uuid.uuid4().hex, SENTINEL
                ),
            )
            self._prune(now)
            self._reload()
            self._answered()

    def revoke_many(self, entries: Mapping[str, float]) -> None:
        """``revoke`` each of ``entries`` (``jti`` -> ``expires_at``), with the same effect — an earlier
        revocation's later time kept, the marker back, a new version — in ``REVOKE_BATCH`` entries per call
        to Redis, then one prune and one read of the set: a bounded number of round trips, where one
        ``revoke`` per entry pruned and read the whole set each time (quadratic: 4,000 took a minute).

        Synchronous (``gtl token push-revocations``): never call it on an event loop."""
        if not entries:
            return
        now = self._clock()
        pairs = sorted(entries.items())
        with self._io:
            for start in range(0, len(pairs), REVOKE_BATCH):
                argv = [uuid.uuid4().hex, SENTINEL]
                for jti, until in pairs[start : start + REVOKE_BATCH]:
                    argv += [jti, repr(float(until))]
                self._call(
                    "revoking tokens",
                    lambda client, argv=argv: client.eval(_REVOKE_MANY, 2, self._key, self._version_key, *argv),
                )
            self._prune(now)
            self._reload()
            self._answered()

    def prune(self, now: float) -> int:
        """Forget the entries whose ``expires_at`` has passed (for every replica); how many."""
        with self._io:
            count = self._prune(now)
            self._reload(now=max(now, self._clock()))
            return count

    def revoked(self) -> dict[str, float]:
        """Every revoked ``jti`` and when it may be forgotten (``gtl token list`` shows them)."""
        pairs = self._call(
            "reading the revocation list", lambda client: client.zrange(self._key, 0, -1, withscores=True)
        )
        return {_text(jti): float(until) for jti, until in pairs if _text(jti) != SENTINEL}

    def _prune(self, now: float) -> int:
        gone = self._call(
            "pruning the revocation list",
            lambda client: client.eval(_PRUNE, 2, self._key, self._version_key, repr(float(now)), uuid.uuid4().hex),
        )
        return int(gone)

    def _write_back(self, entries: Mapping[str, float]) -> None:
        """Put ``entries`` (``jti`` -> until when) and the marker into the set, under a new version, in
        one transaction (caller holds ``_io``); ``RevocationStoreError`` when Redis refuses."""
        version = uuid.uuid4().hex

        def write(client: Any) -> None:
            pipe = client.pipeline(transaction=True)
            for jti, until in entries.items():
                pipe.eval(_REVOKE, 2, self._key, self._version_key, jti, repr(float(until)), version, SENTINEL)
            pipe.eval(_MARK, 2, self._key, self._version_key, version, SENTINEL)
            pipe.execute()

        self._call("restoring the revocation list", write)

    def _reload(self, *, write_back: bool = True, now: float | None = None) -> dict[str, float]:
        """Read the set and its version together (one transaction: no change can fall between; caller
        holds ``_io``). A revocation read before that is missing now, unexpired at ``now`` (default:
        the clock's), was lost (they leave only by expiry): it is written back (unless not
        ``write_back``), and kept in memory whatever happens. Returns those not written back."""

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.get(self._version_key)
            pipe.zrange(self._key, 0, -1, withscores=True)
            return list(pipe.execute())

        version, members = self._call("reading the revocation list", read)
        until = {_text(jti): float(score) for jti, score in members}
        until.pop(SENTINEL, None)
        shared = frozenset(until)
        now = self._clock() if now is None else now
        lost = {jti: when for jti, when in self._until.items() if when > now and jti not in until}
        unshared: dict[str, float] = {}
        if lost:
            unshared = self._write_back_missing(lost) if write_back else lost
            until.update(lost)
        self._version = version
        self._read_at = self._clock()
        self._shared = shared
        self._until = until
        self._revoked = frozenset(until)  # last: readers see a complete read
        return unshared

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
