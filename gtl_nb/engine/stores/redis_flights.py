"""``RedisFlights``: identical concurrent requests that reach different replicas share one upstream call.

Each replica coalesces in-process first (``engine.coalesce``), so Redis sees one leader or one reader
per replica per flight — its traffic per flight is O(replicas), whatever the number of callers.

**Keys.** The engine's coalescing key may name the stored keys a token chose, so it never reaches
Redis: every name holds ``h``, the SHA-256 of it (the input already holds a 256-bit digest of the
request, so ``h`` cannot be turned back; every replica must compute the same name, so it is not
keyed). ``{h}`` is a Redis Cluster hash tag: a flight's keys live on one node. ``t`` is the flight's
random id, so a new call for the same request never mixes with the records of an old one.

====================================  ==============================================================
``<prefix>flight:{h}:lock``           ``t`` of the replica running the call (``SET NX PX lease``,
                                      renewed every lease/3, deleted after the terminal event)
``<prefix>flight:{h}:t:events``       a stream: each entry ``s`` (index of its first event) and
                                      ``e`` (the events as GTL frames, session ids blanked, one per
                                      line); ``MAXLEN ~`` bounded; expires ``linger`` seconds after
                                      the last write or renewal (so also after the terminal event)
``<prefix>flight:{h}:t:readers``      a sorted set of the replicas reading the call, scored by
                                      when their membership lapses (Redis's own clock)
``<prefix>flight:{h}:t:payer``        which replica's reader claimed the call's cost (``payer_ttl``)
``<prefix>flights:wake:w``            a stream of one entry (``w`` random per replica): written to
                                      wake that replica's reader when it follows one call more
====================================  ==============================================================

**Protocol.** ``join`` runs one script: take the lock, or learn who holds it. The winner leads: the
engine runs the call and ``publish``es each event; a writer task batches them into ``XADD``\\ s off
the request path — by a script that appends only while the lock is its own, and renews it — renews
the lock when nothing was written for lease/3 and, after the terminal event, lets the stream linger
for late readers and releases the lock. A loser joins the holder's flight (a script that checks the
lock still names it, else tries again) and reads its stream from the first entry, touching its
membership every lease/3. A replica reads the streams of all the calls it follows with one task and
one ``XREAD BLOCK`` over all of them (and its wake stream, so a call followed meanwhile is read at
once): one connection however many calls it follows. Multi-key ``XREAD`` needs the keys on one
server, as every command of these stores does (the client is not a Redis Cluster client).

**Who pays.** Each replica's reader that would pay in-process (``Flight``'s rule) claims the call
with ``SET NX`` on the payer key; the first claim wins, every other replica's rows see cost 0, so
exactly one ledger row across the replicas carries the cost. Normally the leader's replica wins (its
reader sees the usage first). When the leader's caller left, the leader's replica keeps the call
running while another replica's reader is a live member of ``readers``: that reader then claims and
pays. A claim that landed counts even when its reader's caller left while the answer was on its
way (``Flight`` keeps the answer: that row, or the next reader there, pays). Two rows could pay only
if a second claim came more than ``payer_ttl`` after the first, or if Redis could not answer a
claim: the reader that asked pays then, wherever it is — two rows pay if another replica's claim had
landed, but not paying could leave no row paying at all (its leader's caller may have left), and
a double charge is the smaller error.

**Failures** (every wait is bounded):

* the leader's replica died: its lock lapses within ``lease`` seconds; a reader that then finds
  nothing new in the stream stops with ``FlightLost`` — before any of the answer (statuses only) its
  replica runs the call itself, after it the callers get a retryable ``PROVIDER_UNAVAILABLE`` error;
* a replica asking to join a call whose lock has less than ``lease/3`` left (no renewal for two turns:
  its leader likely died) runs the call itself, unshared, rather than replay what the dead leader
  wrote and fail at the lapse; a reader that joined before that and got only statuses runs it too;
* the stream's first entries were trimmed or expired (a reader joined very late): ``FlightLost`` too;
* the leader's replica shuts down (``aclose``): the calls it shares end for their readers elsewhere at
  once, with a retryable ``PROVIDER_UNAVAILABLE`` error;
* the leader's replica stalled longer than the lease (its lock lapsed; another replica may lead a
  new call for the same request by then): its next append or renewal says so (the append script
  then writes nothing), and it stops sharing — its own callers still get the answer, nothing more
  goes to the stream, the lock (anyone's now) is left alone; its readers elsewhere end as when a
  leader dies;
* Redis fails: flights are coalesced in-process only (``join`` leads locally at once, never raises)
  until a background probe finds it back (``redis_fallback.RedisOutage``: one warning per outage,
  ``degraded_reason`` for ``/readyz``); a leader stops sharing (and pays), a reader stops with
  ``FlightLost``;
* no connection of the pool is free within its wait (``RedisBusyError``): not an outage — a flight
  being joined runs here, unshared; a leader's writer tries again (for at most a lease), a reader
  touches its membership at the next turn.

The flights use a pool of their own (the URL's ``client_name`` with ``-flights`` appended): the
reader's blocked ``XREAD`` and the writers never take the connections that budgets, the cache and
the breakers need.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from gtl_nb.engine.loop import running_loop
from gtl_nb.engine.stores.flights import LOCAL_LEAD, FlightLost, LocalLead
from gtl_nb.engine.stores.redis_client import (
    REPLY_TIMEOUT,
    LuaScript,
    RedisBusyError,
    RedisConnector,
    RedisUnavailableError,
    cancel_was_swallowed,
)
from gtl_nb.engine.stores.redis_fallback import RedisOutage
from gtl_nb.engine.stores.sqlite_db import StoreError
from gtl_nb.ids import random_hex
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import decode, encode_frame
from gtl_nb.protocol.errors import ProtocolError
from gtl_nb.protocol.messages import Done, Error, StreamEvent

if TYPE_CHECKING:
    from gtl_nb.engine.coalesce import Flight

__all__ = ["RedisFlights"]

log = get_logger("engine.stores")

LEASE = 5.0
"""Seconds the leader's lock lives without renewal: how long readers wait on a replica that died."""
LINGER = 30.0
"""Seconds a flight's events stay after the last write or renewal, for readers still on their way."""
PAYER_TTL = 600.0
"""Seconds the payer claim is kept: replicas reading the usage further apart than this could both pay."""
MAX_ENTRIES = 10_000
"""Stream entries kept per flight (``MAXLEN ~``); an entry holds up to ``BATCH`` events."""
BATCH = 256
"""Events per stream entry at most."""
CLOSE_GRACE = 1.0
"""Seconds ``aclose`` gives writers to release their flights."""
_STORE_FAILED = "the store shared with the other replicas stopped answering"  # callers never see its address
LAPSE_WARNING_EVERY = 60.0
"""Seconds between two warnings about leads whose lock lapsed."""
_JOIN_TRIES = 3  # the lock changed hands between two scripts this often: lead here instead
_READ_COUNT = 64  # stream entries per XREAD

# Take the lock, or say who holds it and for how long yet (one step: no moment when neither is true).
_ACQUIRE = LuaScript("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, ARGV[1], 0} end
return {0, redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
""")

# Join (or touch) the flight ARGV[1] as reader ARGV[2] for ARGV[3] ms — only while its lock is held:
# 0 says the call ended or its replica is gone. Membership lapses by Redis's clock, never a replica's.
_JOIN = LuaScript("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[2], 2 * tonumber(ARGV[3]))
return 1
""")

# Append entries (ARGV[5], ARGV[6]: the first's s and e; and so on) while the lock is ours, renewing it:
# a leader whose lock lapsed (it stalled) never writes into a call that may be led elsewhere by now.
_APPEND = LuaScript("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 's', ARGV[i], 'e', ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
""")

# Renew the lock while it is ours; keep the stream alive either way (readers are still on it).
_RENEW = LuaScript("""
local mine = redis.call('GET', KEYS[1]) == ARGV[1]
if mine then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if mine then return 1 end
return 0
""")

# No reader here: count the live readers elsewhere; with none, let go of the lock in the same step,
# so a replica joining now finds it free and leads instead of joining a call being cancelled.
_IDLE = LuaScript("""
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms)
local n = redis.call('ZCARD', KEYS[2])
if n == 0 and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return n
""")

# The call is over: release the lock if it is still ours; the stream stays for late readers.
_RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
""")

# The first claim of the call's cost wins; claiming again answers the same.
_CLAIM = LuaScript("""
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return 0
""")


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(value: Any) -> str | None:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Names:
    """The key names of one coalescing key (module docstring): the key itself appears in none."""

    def __init__(self, prefix: str, key: str) -> None:
        digest = hashlib.sha256(b"gtl_nb flight v1\x00" + key.encode("utf-8", "surrogatepass")).hexdigest()
        self.base = f"{prefix}flight:{{{digest}}}"
        self.lock = self.base + ":lock"

    def events(self, token: str) -> str:
        return f"{self.base}:{token}:events"

    def readers(self, token: str) -> str:
        return f"{self.base}:{token}:readers"

    def payer(self, token: str) -> str:
        return f"{self.base}:{token}:payer"


class RedisFlights:
    """A ``FlightRegistry`` shared through Redis (module docstring). ``url`` is a ``redis://`` or
    ``rediss://`` URL; the other arguments are the protocol's timings (tests shorten them)."""

    def __init__(
        self,
        url: str,
        *,
        lease: float = LEASE,
        linger: float = LINGER,
        payer_ttl: float = PAYER_TTL,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease <= 0 or linger <= 0 or payer_ttl <= 0 or max_entries < 1:
            raise ValueError("lease, linger and payer_ttl must be > 0 seconds and max_entries >= 1")
        self.redis = RedisConnector(_own_pool(url), what="[cache] coalescing")
        self.lease = lease
        self.renew_every = lease / 3
        self.stale_after = lease / 3
        """A lock with less than this left was not renewed for two turns: its leader is likely gone (a
        replica joining it would replay what it wrote and then fail at the lapse), so none joins it."""
        self.linger = max(linger, lease)
        self.payer_ttl = payer_ttl
        self.max_entries = max_entries
        # a blocked XREAD must return well before the client's reply timeout gives up on it
        self.block = min(1.0, self.renew_every, _reply_timeout(url) / 2)
        self.outage = RedisOutage(
            self.redis,
            store="coalescing",
            meanwhile=lambda: "identical requests are shared within this process only",
            back="identical requests are shared across replicas again",
            clock=clock,
            busy_is_outage=False,  # a pool busy for a moment: that flight runs here, Redis is fine
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._leads: set[_Lead] = set()  # calls this replica runs now
        self._reader: _Reader | None = None  # reads every call followed here (on the loop it runs on)
        self._clock = clock
        self._lapses = 0  # leases lost since the last warning about them
        self._lapse_warned: float | None = None  # when that warning was logged

    def __repr__(self) -> str:
        return f"RedisFlights({self.redis.shown!r})"

    @property
    def degraded_reason(self) -> str | None:
        """``None`` while Redis answers, else one line: what failed and that sharing is in-process only."""
        return self.outage.degraded_reason

    async def join(self, key: str) -> _Lead | _Follow | LocalLead:
        """Lead or follow the flight of ``key``; in-process only while Redis is failing (never raises)."""
        if not self.outage.usable():
            return LOCAL_LEAD
        names = _Names(self.redis.prefix, key)
        token = random_hex(2)
        try:
            for _ in range(_JOIN_TRIES):
                won, holder, left = await self._script(
                    "taking a flight's lock", _ACQUIRE, [names.lock], [token, _ms(self.lease)]
                )
                if won:
                    return _Lead(self, names, token)
                holder = _text(holder)
                if holder is None:
                    continue
                if 0 <= int(left) < _ms(self.stale_after):  # its leader missed two renewals: likely gone
                    log.info("coalescing: the replica leading this call has not renewed it; running the call here")
                    return LOCAL_LEAD
                member = random_hex()
                readers = names.readers(holder)
                if await self._script(
                    "joining a flight", _JOIN, [names.lock, readers], [holder, member, _ms(self.lease)]
                ):
                    return _Follow(self, names, holder, member)
        except RedisBusyError:
            pass  # no free connection now: this flight runs here, the next one may be shared again
        except RedisUnavailableError:
            pass  # noted by the outage: in-process only until Redis answers again
        except Exception:  # sharing is an optimisation: a request never fails for it
            log.exception("coalescing: could not share a flight through %s", self.redis.shown)
        return LOCAL_LEAD

    async def aclose(self) -> None:
        """End the calls this replica still shares (their readers elsewhere get a retryable error now,
        not when the lease lapses), give the writers ``CLOSE_GRACE`` seconds, then close the connection."""
        for lead in list(self._leads):
            lead.finish()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop(FlightLost("the replica reading the shared call is shutting down"))
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_GRACE)
        await self.outage.aclose()
        await self.redis.aclose()

    # -- for the roles ----------------------------------------------------------------------------

    async def _script(
        self, what: str, script: LuaScript, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> Any:
        return await self.outage.call(what, lambda client: script(client, keys, args))  # type: ignore[arg-type]

    def noted(self, exc: Exception) -> None:
        """A role's Redis call failed: a Redis failure is the outage's to log, a closed store is no news;
        anything else is logged here."""
        if not isinstance(exc, StoreError):
            log.warning("coalescing: sharing a flight through %s failed: %r", self.redis.shown, exc)

    def reader(self) -> _Reader:
        """The reader of the calls followed on the running loop (a new one on a new loop)."""
        reader = self._reader
        if reader is None or reader.loop is not asyncio.get_running_loop():
            reader = self._reader = _Reader(self)
        return reader

    def lapsed(self) -> None:
        """A lead's lock lapsed: one warning a minute at most, counting the others (a stalled replica
        may lose many at once)."""
        self._lapses += 1
        now = self._clock()
        if self._lapse_warned is not None and now - self._lapse_warned < LAPSE_WARNING_EVERY:
            return
        log.warning(
            "coalescing: %d shared call(s) lost their lock (this replica did not renew it within %g s): their "
            "callers here still get the answer, their readers on other replicas end with a retryable error",
            self._lapses,
            self.lease,
        )
        self._lapses, self._lapse_warned = 0, now

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._tasks.discard)
        return task


def _own_pool(url: str) -> str:
    """``url`` with ``-flights`` added to its ``client_name``: a pool of its own (module docstring)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    name = next((value for key, value in query if key == "client_name"), "gtl_nb")
    query = [(key, value) for key, value in query if key != "client_name"] + [("client_name", f"{name}-flights")]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def _reply_timeout(url: str) -> float:
    """The reply timeout the URL sets (``socket_timeout``), else the client's default."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "socket_timeout":
            with contextlib.suppress(ValueError):
                return float(value) if float(value) > 0 else REPLY_TIMEOUT
    return REPLY_TIMEOUT


class _Lead:
    """This replica runs the call: its events go to the stream through a writer task (module docstring)."""

    leads = True

    def __init__(self, owner: RedisFlights, names: _Names, token: str) -> None:
        self._owner = owner
        self._token = token
        self._lock = names.lock
        self._events = names.events(token)
        self._readers = names.readers(token)
        self._payer = names.payer(token)
        self._frames: list[bytes] = []
        self._written = 0  # events in the stream so far: the next entry's ``s``
        self._ended = False  # a terminal event was published
        self._finishing = False
        self._broken = False  # Redis failed: nothing more is shared (readers elsewhere see the lock lapse)
        self._watched: Flight | None = None  # a flight without local readers, kept for readers elsewhere
        self._check_idle = False
        self._wake = asyncio.Event()
        owner._leads.add(self)
        self._task = owner._spawn(self._write(), f"gtl_nb flight writer {token[:8]}")
        self._task.add_done_callback(lambda _: owner._leads.discard(self))

    def publish(self, event: StreamEvent) -> None:
        if self._ended or self._broken:
            return
        terminal = isinstance(event, (Done, Error))
        try:
            frame = encode_frame(msgspec.structs.replace(event, session_id=""))
        except ProtocolError:  # the callers here got it; the other replicas' get a retryable end instead
            frame, terminal = encode_frame(_ended_early("an event of the shared call could not be shared")), True
        self._frames.append(frame)
        self._ended = terminal
        self._wake.set()

    def idle(self, flight: Flight) -> bool:
        if self._broken or self._finishing:
            return False
        self._watched = flight
        self._check_idle = True
        self._wake.set()
        return True

    def finish(self) -> None:
        self._finishing = True
        self._wake.set()

    async def claim(self) -> bool:
        """Whether this replica pays; when Redis cannot say, it does (another replica's reader can only
        have claimed before Redis failed: the one case where two rows could pay)."""
        try:
            member = "lead"  # readers' members are hex: never equal
            return bool(
                await self._owner._script(
                    "claiming a flight's cost", _CLAIM, [self._payer], [member, _ms(self._owner.payer_ttl)]
                )
            )
        except Exception as exc:
            self._owner.noted(exc)
            return True

    async def _write(self) -> None:
        owner = self._owner
        loop = asyncio.get_running_loop()
        renew_at = check_at = loop.time() + owner.renew_every
        busy_since: float | None = None  # no free connection since then (module docstring)
        try:
            while True:
                if cancel_was_swallowed():  # a Redis call swallowed our cancellation: end as cancelled
                    raise asyncio.CancelledError
                if not (self._frames or self._finishing or self._check_idle):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(0.0, min(renew_at, check_at) - loop.time()))
                self._wake.clear()
                try:
                    if self._frames:
                        if not await self._flush():
                            self._lost()
                            return
                        renew_at = loop.time() + owner.renew_every  # the append renewed the lock
                    if self._finishing:
                        await self._release()
                        return
                    now = loop.time()
                    if now >= renew_at:
                        if not await owner._script(
                            "renewing a flight's lock",
                            _RENEW,
                            [self._lock, self._events],
                            [self._token, _ms(owner.lease), _ms(owner.linger)],
                        ):
                            self._lost()
                            return
                        renew_at = now + owner.renew_every
                    if now >= check_at:
                        check_at = now + owner.renew_every
                        self._check_idle = self._watched is not None  # readers elsewhere may have left since
                    if self._check_idle:
                        self._check_idle = False
                        await self._idle_check()
                except RedisBusyError:
                    busy_since = loop.time() if busy_since is None else busy_since
                    if loop.time() - busy_since >= owner.lease:
                        raise
                    continue  # the pool's own wait paced this; what was not written is still queued
                busy_since = None
        except Exception as exc:
            self._broken = True
            owner.noted(exc)
            watched = self._watched
            if watched is not None and watched.readers == 0:
                watched.abandon()  # nobody here reads it and nobody elsewhere can: stop the call

    def _lost(self) -> None:
        """The lock lapsed (this replica stalled longer than the lease): stop sharing (module docstring)."""
        self._broken = True
        self._frames.clear()
        self._owner.lapsed()
        watched = self._watched
        if watched is not None and watched.readers == 0:
            watched.abandon()  # kept only for readers elsewhere, who cannot follow it any more

    async def _flush(self) -> bool:
        """Append the frames published so far; ``False`` if the lock is not ours any more (nothing written)."""
        frames, self._frames = self._frames, []
        written = self._written
        owner = self._owner
        args: list[str | int | bytes] = [self._token, _ms(owner.lease), _ms(owner.linger), owner.max_entries]
        for start in range(0, len(frames), BATCH):
            args += [str(written + start), b"".join(frames[start : start + BATCH])]
        try:
            mine = await owner._script("sharing a flight's events", _APPEND, [self._lock, self._events], args)
        except RedisBusyError:
            self._frames[:0] = frames  # nothing was sent: written at the next try, in order
            raise
        self._written = written + len(frames)
        return bool(mine)

    async def _idle_check(self) -> None:
        """No local reader: cancel the call unless a replica elsewhere still reads it."""
        flight = self._watched
        if flight is None or flight.readers > 0 or flight.task is None or flight.task.done():
            self._watched = None
            return
        try:
            readers = await self._owner._script(
                "counting a flight's readers", _IDLE, [self._lock, self._readers], [self._token]
            )
        except RedisBusyError:
            return  # counted again at the next renewal
        if flight.readers == 0 and not readers:
            self._watched = None
            flight.abandon()

    async def _release(self) -> None:
        if not self._ended:  # cancelled or failed without an answer: readers elsewhere end now, not at the lease
            self._frames.append(encode_frame(_ended_early("the shared call ended without an answer")))
            self._ended = True
        if self._frames and not await self._flush():  # the terminal event among them
            self._lost()
            return
        owner = self._owner
        await owner._script(
            "releasing a flight", _RELEASE, [self._lock, self._events], [self._token, _ms(owner.linger)]
        )


def _ended_early(why: str) -> Error:
    return Error(session_id="", code="PROVIDER_UNAVAILABLE", message=why, retryable=True)


class _Follow:
    """Another replica runs the call: read its stream (module docstring)."""

    leads = False

    def __init__(self, owner: RedisFlights, names: _Names, token: str, member: str) -> None:
        self._owner = owner
        self._token = token
        self._member = member
        self._lock = names.lock
        self._events = names.events(token)
        self._readers = names.readers(token)
        self._payer = names.payer(token)

    async def claim(self) -> bool:
        """Whether this replica pays; when Redis cannot say, it does (module docstring: rather two payers
        than none — the leader's caller may have left, and nobody else would pay)."""
        try:
            return bool(
                await self._owner._script(
                    "claiming a flight's cost", _CLAIM, [self._payer], [self._member, _ms(self._owner.payer_ttl)]
                )
            )
        except Exception as exc:
            self._owner.noted(exc)
            return True

    async def events(self) -> AsyncIterator[StreamEvent]:
        owner = self._owner
        loop = asyncio.get_running_loop()
        inbox = await owner.reader().follow(self._events)
        expected = 0  # the index the next entry must start at: anything else is a gap
        touch_at = loop.time() + owner.renew_every
        lock_gone = False
        try:
            while True:
                if cancel_was_swallowed():  # a Redis call swallowed the caller's cancellation
                    raise asyncio.CancelledError
                entries = await inbox.take(owner.block)
                for _, fields in entries:
                    if _number(fields.get(b"s")) != expected:
                        raise FlightLost("the first events of the shared call are gone (trimmed or expired)")
                    for frame in (fields.get(b"e") or b"").split(b"\n"):
                        if not frame:
                            continue
                        try:
                            event = decode(frame)
                        except ProtocolError:
                            raise FlightLost("an event of the shared call could not be read") from None
                        expected += 1
                        yield event  # type: ignore[misc]
                        if isinstance(event, (Done, Error)):
                            return
                if not entries and lock_gone:
                    raise FlightLost("the replica running the shared call stopped before its end")
                if entries and loop.time() < touch_at:
                    continue
                try:
                    lock_gone = not await owner._script(
                        "touching a flight",
                        _JOIN,
                        [self._lock, self._readers],
                        [self._token, self._member, _ms(owner.lease)],
                    )
                except RedisBusyError:
                    pass  # touched at the next turn: the membership lasts a lease, three turns
                except Exception as exc:
                    owner.noted(exc)
                    raise FlightLost(_STORE_FAILED) from None
                touch_at = loop.time() + owner.renew_every
        finally:
            inbox.close()
            with contextlib.suppress(RuntimeError):  # no loop any more (finalised late): membership lapses
                owner._spawn(self._leave(), f"gtl_nb flight leave {self._member}")

    async def _leave(self) -> None:
        with contextlib.suppress(Exception):  # membership lapses by itself within a lease anyway
            await self._owner.outage.call("leaving a flight", lambda client: client.zrem(self._readers, self._member))


class _Inbox:
    """What the reader got for one follower of one stream, until it takes it."""

    def __init__(self, reader: _Reader, stream: str) -> None:
        self.reader = reader
        self.stream = stream
        self.last: tuple[int, int] = (0, 0)  # the id of the last entry delivered (0-0: from the first)
        self.entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.error: FlightLost | None = None
        self._ready = asyncio.Event()

    def deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        fresh = [(entry_id, fields) for entry_id, fields in entries if _stream_id(entry_id) > self.last]
        if fresh:
            self.last = _stream_id(fresh[-1][0])
            self.entries.extend(fresh)
            self._ready.set()

    def fail(self, error: FlightLost) -> None:
        self.error = error
        self._ready.set()

    async def take(self, timeout: float) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The entries delivered since the last take, waiting up to ``timeout`` seconds for some
        (``[]`` if none came); ``FlightLost`` once the reader failed and everything was taken."""
        if not self.entries and self.error is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        self._ready.clear()
        if not self.entries and self.error is not None:
            raise self.error
        entries, self.entries = self.entries, []
        return entries

    def close(self) -> None:
        self.reader.leave(self)


class _Reader:
    """Reads the streams of every call this replica follows, on one event loop: one task, one ``XREAD
    BLOCK`` over all of them and a wake stream of its own (module docstring). It ends when nobody
    follows anything, and starts again with the next follower."""

    def __init__(self, owner: RedisFlights) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self._wake = f"{owner.redis.prefix}flights:wake:{secrets.token_hex(8)}"
        self._woke: bytes | str = b"0-0"  # the wake stream's last entry read
        self._inboxes: dict[str, set[_Inbox]] = {}
        self._reading: dict[str, tuple[int, int]] = {}  # the streams the XREAD under way reads, from where
        self._waking = False  # a wake was sent since that XREAD started
        self._task: asyncio.Task[None] | None = None
        self._stopped: FlightLost | None = None

    async def follow(self, stream: str) -> _Inbox:
        """An inbox for ``stream``, read from its first entry on."""
        inbox = _Inbox(self, stream)
        if self._stopped is not None:
            inbox.fail(self._stopped)
            return inbox
        self._inboxes.setdefault(stream, set()).add(inbox)
        if self._task is None or self._task.done():
            self._task = self.owner._spawn(self._read(), f"gtl_nb flights reader {self._wake[-16:]}")
        elif self._reading.get(stream, (1, 0)) > inbox.last and not self._waking:
            self._waking = True  # the XREAD under way does not read this stream from its first: end it now
            try:
                await self.owner.outage.call("waking the flights' reader", self._poke)
            except Exception:
                pass  # it ends within ``block`` anyway
            except BaseException:
                self.leave(inbox)  # cancelled meanwhile: nobody will take what it gets
                raise
        return inbox

    def leave(self, inbox: _Inbox) -> None:
        inboxes = self._inboxes.get(inbox.stream)
        if inboxes is not None:
            inboxes.discard(inbox)
            if not inboxes:
                del self._inboxes[inbox.stream]

    def stop(self, error: FlightLost) -> None:
        """End every follower's reading with ``error`` (the registry closes)."""
        self._stopped = error
        self._fail(error)
        task = self._task
        if task is not None and not task.done() and task.get_loop() is running_loop():
            task.cancel()

    async def _poke(self, client: Any) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(self._wake, {"w": b"1"}, maxlen=1, approximate=False)
        pipe.pexpire(self._wake, _ms(self.owner.linger))
        await pipe.execute()

    async def _read(self) -> None:
        try:
            await self._read_while_followed()
        except Exception as exc:  # a bug must not leave the followers waiting for entries that never come
            self.owner.noted(exc)
        finally:
            self._fail(FlightLost(_STORE_FAILED))  # anyone still following (none after a normal end)

    async def _read_while_followed(self) -> None:
        owner = self.owner
        block = _ms(owner.block)
        while self._inboxes and self._stopped is None and not cancel_was_swallowed():
            reading = {stream: min(inbox.last for inbox in inboxes) for stream, inboxes in self._inboxes.items()}
            since: dict[str, bytes | str] = {stream: "{}-{}".format(*last) for stream, last in reading.items()}
            since[self._wake] = self._woke
            self._reading, self._waking = reading, False
            try:
                reply = await owner.outage.call(
                    "reading flights' events",
                    lambda client, streams=since: client.xread(streams, count=_READ_COUNT, block=block),
                )
            except RedisBusyError:
                await asyncio.sleep(0.05)  # the pool's wait paced it already; the followers keep waiting
                continue
            except Exception as exc:
                owner.noted(exc)
                return  # every follower ends with FlightLost
            finally:
                self._reading = {}
            for stream, entries in _streams(reply):
                if stream == self._wake:
                    if entries:
                        self._woke = entries[-1][0]
                    continue
                for inbox in list(self._inboxes.get(stream, ())):
                    if inbox.last >= reading.get(stream, inbox.last):  # read from where it stands, or before
                        inbox.deliver(entries)

    def _fail(self, error: FlightLost) -> None:
        inboxes, self._inboxes = self._inboxes, {}
        for followers in inboxes.values():
            for inbox in followers:
                inbox.fail(error)


def _stream_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as numbers, for comparing."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _streams(reply: Any) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """Each stream's entries of an ``XREAD`` reply (RESP2 lists or RESP3 maps)."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else [(item[0], item[1]) for item in reply]
    found = []
    for name, entries in items:
        if entries and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 wraps a stream's entries once more
        found.append((_text(name) or "", [(entry_id, dict(fields or {})) for entry_id, fields in entries]))
    return found


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
