"""Circuit breakers: stop sending requests to a deployment that keeps failing, then probe it.

One ``CircuitBreaker`` per deployment (``BreakerBoard`` creates them on demand)::

    closed --N consecutive failures, or error rate >= R over the last W s with >= M calls--> open
    open --cooldown (or the provider's wait) elapsed, checked lazily against the clock--> half_open
    half_open --a probe succeeds--> closed          (counters and window cleared)
    half_open --a probe fails--> open               (a new cooldown, or the provider's new wait, starts)

**A provider's Retry-After sets how long the circuit stays open.** ``record_failure(retry_after=...)``
passes the wait the provider asked for (a 429/503/529's ``Retry-After``). When that failure is the one
that opens the circuit (from closed, or a failed probe from half-open), the circuit stays open for
exactly that wait instead of ``cooldown`` — longer or shorter — bounded below by ``MOMENTARY_LIMIT``
(1 s) and above by ``max_cooldown``: the provider said when it will take requests again, so the
half-open probe goes then, neither before (it would be refused) nor long after (callers honouring the
provider's wait would find the circuit still open). A failure that asks for no wait (or for none that
is a finite number above 0) opens the circuit for ``cooldown``; ``max_cooldown = 0`` ignores providers'
waits altogether (every opening is for ``cooldown``). The waits of failures that arrive while the
circuit is already open change nothing (such results are ignored, below).

In ``half_open`` at most K probe calls are let through at a time: ``allow()`` reserves a slot,
``record_success`` / ``record_failure`` / ``release`` give it back. After every ``allow()`` that
returned True the caller reports exactly one of those three (``release`` for a call that ended
without a verdict, e.g. cancelled by the user), or the slot stays taken.

A lone deployment is cooled down like any other: there is no "never open the last one" exception,
so a single failing deployment answers fast with an error instead of piling up timeouts.

**Which failures count is the caller's decision**; the breaker only counts what it is told. The
intended use: a failure for retryable upstream faults (``OVERLOADED``, ``PROVIDER_UNAVAILABLE``,
``TIMEOUT``, ``RATE_LIMIT``, a stream cut short), a success for a completed answer, and for a
caller mistake (``INVALID_REQUEST``, ``CONTEXT_LENGTH_EXCEEDED``, ``AUTH_FAILED``…), which says
nothing about the deployment's health, ``release()`` (a no-op outside half-open).

Results that arrive while the circuit is open (calls started before it opened) are ignored. In
``half_open`` any result decides, whether or not it came from a probe: the newest news wins.

Time comes from an injected ``clock`` (monotonic seconds), so the breaker is tested without sleeping;
``opened_at`` / ``retry_at`` in ``snapshot()`` are values of that clock. A lock makes a breaker safe
to read from another thread (a gateway's status endpoint) while the engine's loop updates it.

**The error-rate window is bucketed.** Results are not kept one by one: the window is cut into
``WINDOW_BUCKETS`` (20) buckets of ``window / 20`` seconds, aligned on the clock (bucket ``k`` holds
the results of ``[k·w, (k+1)·w)``), each holding its number of calls and of failures. The rate is taken
over the current bucket and the 19 before it, so a result counts for at least ``window · 19/20`` and at
most ``window`` seconds (57 to 60 s by default) — never longer than the window, sometimes up to one
bucket shorter. The state is therefore small and of bounded size whatever the traffic (20 buckets,
not one entry per call), which is what a store shared by processes reads and writes on every request.
The consecutive-failure rule, the cooldown and the half-open probes are exact.

``to_state()`` / ``CircuitBreaker.from_state()`` export and restore a breaker's state as plain JSON
data, so a store shared by processes (``engine.stores.SqliteBreakerStore``) keeps it in a table and
applies these same rules to it; its clock is then the wall clock, the one clock processes share.
``from_state`` also reads the state of earlier versions, which listed every call of the window as
``[time, failed]``: those calls are put in their buckets.
"""

from __future__ import annotations

import difflib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import a_kind_of

log = get_logger("engine.breaker")

BreakerState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]
StateListener = Callable[[str, str, str], None]  # (deployment, old state, new state)

WINDOW_BUCKETS = 20
"""Buckets the error-rate window is kept in, each ``window / WINDOW_BUCKETS`` seconds long (module docstring)."""

MOMENTARY_LIMIT = 1.0
"""Seconds: a rate limit whose provider asks for less than this before the next try is a momentary
throttle, which the request's own retry rides out — not a verdict on the deployment's health, so the
engine does not count it (``engine.core``). Counted, a burst of 429s asking for 20 ms opened the circuit
and shut every caller out for its whole cooldown. It is also the shortest a provider's wait holds an
opening circuit open (``open_for``), unless ``max_cooldown`` is set lower."""


@dataclass(frozen=True)
class BreakerConfig:
    """Settings of every breaker, from the ``[routing.breaker]`` table.

    ``failure_threshold`` and ``error_rate_threshold`` are the two independent reasons to open;
    either may be set to 0 to switch that rule off. ``enabled = false`` switches breakers off
    entirely (``allow()`` is always True).
    """

    enabled: bool = True
    failure_threshold: int = 5
    """Consecutive failures that open the circuit (0: rule off)."""
    error_rate_threshold: float = 0.5
    """Failed fraction of the calls in the window at or above which the circuit opens (0: rule off)."""
    window: float = 60.0
    """Length in seconds of the sliding window the error rate is computed over, kept in
    ``WINDOW_BUCKETS`` buckets: a result counts for between 19/20 of it and all of it."""
    min_calls: int = 10
    """Calls the window must hold before its error rate can open the circuit."""
    cooldown: float = 30.0
    """Seconds the circuit stays open before it lets probes through, when the failure that opened it
    carried no ``Retry-After`` (one that did holds it open for the provider's wait instead)."""
    max_cooldown: float = 300.0
    """Longest a provider's ``Retry-After`` may hold an opening circuit open (seconds). A circuit opened by
    a failure asking for a wait stays open for that wait (at least ``MOMENTARY_LIMIT``), up to this;
    0: providers' waits are ignored, every circuit opens for ``cooldown``."""
    half_open_probes: int = 1
    """Probe calls allowed at the same time while half-open."""
    backend: str = "memory://"
    """Where breaker state lives: ``memory://`` (this process) or ``sqlite:///path`` (the processes of
    one machine share it)."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 0:
            raise ConfigurationError(f"breaker failure_threshold must be >= 0, got {self.failure_threshold}")
        if not 0 <= self.error_rate_threshold <= 1:
            raise ConfigurationError(
                f"breaker error_rate_threshold must be between 0 and 1, got {self.error_rate_threshold}"
            )
        if self.window <= 0 or self.cooldown < 0:
            raise ConfigurationError("breaker window must be > 0 and cooldown >= 0 seconds")
        if not (math.isfinite(self.max_cooldown) and self.max_cooldown >= 0):
            # a ceiling of inf would let one provider's Retry-After of a year shut a deployment for a year
            raise ConfigurationError(f"breaker max_cooldown must be a finite number >= 0, got {self.max_cooldown}")
        if self.min_calls < 1 or self.half_open_probes < 1:
            raise ConfigurationError("breaker min_calls and half_open_probes must be >= 1")
        from gtl_nb.engine.stores.urls import parse_store_url

        parse_store_url(self.backend, where="breaker backend")

    @classmethod
    def from_dict(cls, table: Mapping[str, Any] | None, *, where: str = "[routing.breaker]") -> BreakerConfig:
        """Build from a ``[routing.breaker]`` table; unknown keys or wrong types: ``ConfigurationError``."""
        if table is not None and not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table, got {table!r}")
        table = dict(table or {})
        known = {f.name: f for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(f"{where}: unknown key {key!r}{hint} (known: {', '.join(known)})")
            default = known[key].default
            if isinstance(default, str):
                if not isinstance(value, str):  # named by its kind: the backend's redis:// URL may hold a password
                    raise ConfigurationError(f"{where}: {key} must be a string, got {a_kind_of(value)}")
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigurationError(f"{where}: {key} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigurationError(f"{where}: {key} must be a number, got {value!r}")
            elif isinstance(default, int) and not isinstance(value, int):
                raise ConfigurationError(f"{where}: {key} must be an integer, got {value!r}")
        try:
            return cls(**table)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc.message}") from None


class CircuitBreaker:
    """The breaker of one deployment (see the module docstring for the state diagram)."""

    def __init__(
        self,
        name: str = "",
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.RLock()  # re-entrant: an on_change listener may read the breaker
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._window: deque[list[int]] = deque()  # [bucket, calls, failures] of recent results, oldest first
        self._calls_in_window = 0
        self._failures_in_window = 0
        self._opened_at: float | None = None
        self._provider_retry_after: float | None = None  # the wait asked with the failure that opened it
        self._probes = 0  # reserved half-open slots

    # -- reading --------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"`` as of now."""
        with self._lock:
            return self._current(self.clock())

    def would_allow(self) -> bool:
        """Whether ``allow()`` would return True now, without reserving a probe slot (for ordering).

        Like every read it applies the clock-driven open -> half_open change when the cooldown is over."""
        if not self.config.enabled:
            return True
        with self._lock:
            state = self._current(self.clock())
            return state == "closed" or (state == "half_open" and self._probes < self.config.half_open_probes)

    def snapshot(self) -> dict[str, Any]:
        """The breaker's state for the public API (times are values of the breaker's clock).

        ``retry_at`` / ``retry_in`` say when the circuit lets a probe through (after the provider's wait
        when the failure that opened it asked for one, else after the cooldown); ``provider_retry_after``
        is the wait the failure that opened it asked for (bounded by ``max_cooldown``), ``None`` when it
        asked for none."""
        with self._lock:
            now = self.clock()
            state = self._current(now)
            self._prune(now)
            calls = self._calls_in_window
            retry_at = self._retry_at()
            return {
                "deployment": self.name,
                "state": state,
                "consecutive_failures": self._consecutive,
                "calls_in_window": calls,
                "error_rate": self._failures_in_window / calls if calls else 0.0,
                "opened_at": self._opened_at,
                "retry_at": retry_at,
                "retry_in": max(0.0, retry_at - now) if retry_at is not None and state == "open" else None,
                "provider_retry_after": self._provider_retry_after,
                "probes_in_flight": self._probes,
            }

    # -- the calls ------------------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go to this deployment now? In half-open a True reserves one probe slot."""
        if not self.config.enabled:
            return True
        with self._lock:
            state = self._current(self.clock())
            if state == "closed":
                return True
            if state == "half_open" and self._probes < self.config.half_open_probes:
                self._probes += 1
                return True
            return False

    def acquire(self) -> str | None:
        """Like ``allow`` but says what was granted: ``"probe"`` (a half-open slot to hand back with
        ``release`` unless a verdict is recorded), ``"pass"`` (closed: nothing reserved) or ``None``."""
        if not self.config.enabled:
            return "pass"
        with self._lock:
            state = self._current(self.clock())
            if state == "closed":
                return "pass"
            if state == "half_open" and self._probes < self.config.half_open_probes:
                self._probes += 1
                return "probe"
            return None

    def record_success(self) -> tuple[BreakerState, BreakerState] | None:
        """A call succeeded: counted in the window, ends a failure streak, closes a half-open circuit.

        Returns the change it caused, ``(old, new)``, or None."""
        if not self.config.enabled:
            return None
        with self._lock:
            now = self.clock()
            state = self._current(now)
            if state == "half_open":
                self._close()
            elif state == "closed":
                self._consecutive = 0
                self._add(now, failed=False)
            return None if self._state == state else (state, self._state)

    def record_failure(self, retry_after: float | None = None) -> tuple[BreakerState, BreakerState] | None:
        """A call failed in a way that says the deployment is unwell (see "which failures count").

        ``retry_after``: seconds the provider asked the caller to wait (its ``Retry-After``), if it said;
        should this failure open the circuit, it stays open that long instead of the cooldown, within
        ``MOMENTARY_LIMIT`` and ``max_cooldown`` (module docstring). Returns the change it caused,
        ``(old, new)``, or None."""
        if not self.config.enabled:
            return None
        with self._lock:
            now = self.clock()
            state = self._current(now)
            if state == "half_open":
                self._open(now, "a probe failed", retry_after)
            elif state == "closed":
                self._count_failure(now, retry_after)
            return None if self._state == state else (state, self._state)

    def release(self) -> None:
        """Give back a half-open probe slot without a verdict (a cancelled call, or the caller's fault)."""
        with self._lock:
            if self._probes:
                self._probes -= 1

    def reset(self) -> None:
        """Force the circuit closed and forget its history (an operator's action)."""
        with self._lock:
            self._close()

    # -- state as data ----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The breaker's state as JSON-ready data (times are values of its clock).

        ``buckets`` is the error-rate window, ``[bucket, calls, failures]`` oldest first (bucket ``k``
        starts at ``k * bucket_width`` seconds of the clock); ``bucket_width`` is a string (``repr`` of
        the float), so that a JSON encoder that rounds numbers (Redis's Lua one keeps 14 digits) leaves
        it exact."""
        with self._lock:
            return {
                "state": self._state,
                "consecutive": self._consecutive,
                "buckets": [list(bucket) for bucket in self._window],
                "bucket_width": repr(self._width()),
                "opened_at": self._opened_at,
                "provider_retry_after": self._provider_retry_after,
                "probes": self._probes,
            }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        name: str = "",
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_change: StateListener | None = None,
    ) -> CircuitBreaker:
        """A breaker in the state ``to_state()`` exported (``ValueError`` when it is not such data).

        Also reads the state of earlier versions (``window``: every call as ``[time, failed]``), and
        buckets of another ``bucket_width`` (a changed ``window``), putting their calls in this
        configuration's buckets."""
        breaker = cls(name, config, clock=clock, on_change=on_change)
        try:
            if state["state"] not in ("closed", "open", "half_open"):
                raise ValueError(f"unknown breaker state {state['state']!r}")
            breaker._state = state["state"]
            breaker._consecutive = int(state["consecutive"])
            width = breaker._width()
            buckets = state.get("buckets")
            if buckets is None:  # an earlier version's: every call of the window
                for at, failed in state["window"]:
                    breaker._count(math.floor(float(at) / width), 1, int(bool(failed)))
            else:
                stored = float(state["bucket_width"])
                for bucket, calls, failures in buckets:
                    index = int(bucket) if stored == width else math.floor(int(bucket) * stored / width)
                    breaker._count(index, int(calls), int(failures))
            opened_at = state["opened_at"]
            breaker._opened_at = None if opened_at is None else float(opened_at)
            # absent from the state of versions before it existed: the cooldown alone
            breaker._provider_retry_after = provider_wait(state.get("provider_retry_after"), breaker.config)
            breaker._probes = int(state["probes"])
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"not a breaker state: {state!r}") from exc
        return breaker

    # -- internals (called with the lock held) ---------------------------------------------------

    def _count_failure(self, now: float, retry_after: float | None) -> None:
        """A failure while closed: the two rules that may open the circuit."""
        self._consecutive += 1
        self._add(now, failed=True)
        cfg = self.config
        if cfg.failure_threshold and self._consecutive >= cfg.failure_threshold:
            self._open(now, f"{self._consecutive} consecutive failures", retry_after)
            return
        calls = self._calls_in_window
        if cfg.error_rate_threshold and calls >= cfg.min_calls:
            rate = self._failures_in_window / calls
            if rate >= cfg.error_rate_threshold:
                reason = f"error rate {rate:.0%} over the last {cfg.window:g} s ({calls} calls)"
                self._open(now, reason, retry_after)

    def _current(self, now: float) -> BreakerState:
        if self._state == "open":
            retry_at = self._retry_at()
            if retry_at is not None and now >= retry_at:
                self._transition("half_open", "cooldown over")
                self._probes = 0
        return self._state

    def _retry_at(self) -> float | None:
        if self._opened_at is None:
            return None
        return self._opened_at + open_for(self._provider_retry_after, self.config)

    def _width(self) -> float:
        """Seconds of one bucket of the error-rate window."""
        return self.config.window / WINDOW_BUCKETS

    def _add(self, now: float, *, failed: bool) -> None:
        self._prune(now)
        self._count(math.floor(now / self._width()), 1, int(failed))

    def _count(self, index: int, calls: int, failures: int) -> None:
        """Add ``calls`` and ``failures`` to bucket ``index`` (made if missing; the buckets stay in order)."""
        window = self._window
        self._calls_in_window += calls
        self._failures_in_window += failures
        if window and window[-1][0] == index:  # the usual case: the current bucket
            last = window[-1]
            last[1] += calls
            last[2] += failures
            return
        if not window or window[-1][0] < index:
            window.append([index, calls, failures])
            return
        for position, bucket in enumerate(window):  # an earlier bucket: a result reported late (at most 20)
            if bucket[0] == index:
                bucket[1] += calls
                bucket[2] += failures
                return
            if bucket[0] > index:
                window.insert(position, [index, calls, failures])
                return

    def _prune(self, now: float) -> None:
        """Drop the buckets that have left the window: all but the current one and the 19 before it."""
        horizon = math.floor(now / self._width()) - WINDOW_BUCKETS
        window = self._window
        while window and window[0][0] <= horizon:
            _, calls, failures = window.popleft()
            self._calls_in_window -= calls
            self._failures_in_window -= failures

    def _open(self, now: float, reason: str, retry_after: float | None) -> None:
        self._opened_at = now
        self._provider_retry_after = provider_wait(retry_after, self.config)
        self._probes = 0
        reason += held_reason(self._provider_retry_after, self.config)
        self._transition("open", reason)

    def _close(self) -> None:
        self._consecutive = 0
        self._window.clear()
        self._calls_in_window = 0
        self._failures_in_window = 0
        self._opened_at = None
        self._provider_retry_after = None
        self._probes = 0
        self._transition("closed", "recovered")

    def _transition(self, new: BreakerState, reason: str) -> None:
        old = self._state
        self._state = new
        if old == new:
            return
        log.info("circuit %s: %s -> %s (%s)", self.name or "?", old, new, reason)
        if self.on_change is not None:
            self.on_change(self.name, old, new)


def provider_wait(retry_after: Any, config: BreakerConfig) -> float | None:
    """A provider's ``retry_after`` as an opening circuit keeps it: bounded by ``max_cooldown``;
    ``None`` when there is none (absent, not a finite number, not above 0)."""
    if retry_after is None or isinstance(retry_after, bool):
        return None
    wait = min(float(retry_after), config.max_cooldown)  # float(): the Redis script stores it as a string
    return wait if math.isfinite(wait) and wait > 0 else None


def open_for(provider_retry_after: float | None, config: BreakerConfig) -> float:
    """Seconds a circuit stays open: the provider's wait when the failure that opened it asked for one —
    at least ``MOMENTARY_LIMIT``, at most ``max_cooldown`` (bounded again by the current configuration: a
    reload may have changed it since the circuit opened; 0 now means the wait is ignored; a ceiling set
    under the floor wins) — else ``cooldown``."""
    wait = provider_wait(provider_retry_after, config)
    if wait is None:
        return config.cooldown
    return min(max(wait, MOMENTARY_LIMIT), config.max_cooldown)


def held_reason(provider_retry_after: float | None, config: BreakerConfig) -> str:
    """What an opening's log line adds when the provider's wait, not the cooldown, holds it open."""
    if provider_wait(provider_retry_after, config) is None:
        return ""
    return f"; open {open_for(provider_retry_after, config):g} s, as the provider's Retry-After asked"


class BreakerBoard:
    """One ``CircuitBreaker`` per deployment name, created on first use, all with one config and clock."""

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self.clock = clock
        self.on_change = on_change
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, deployment: str) -> CircuitBreaker:
        """The breaker of ``deployment`` (created closed on first use)."""
        breaker = self._breakers.get(deployment)  # (every call but the first: no lock needed to read)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(deployment)
            if breaker is None:
                breaker = CircuitBreaker(deployment, self.config, clock=self.clock, on_change=self.on_change)
                self._breakers[deployment] = breaker
            return breaker

    __getitem__ = get

    def would_allow(self, deployment: str) -> bool:
        """Side-effect free health check, usable as a strategy's ``healthy`` callable.

        A deployment without a breaker yet is healthy, and none is created for it."""
        if not self.config.enabled:
            return True
        with self._lock:
            breaker = self._breakers.get(deployment)
        return True if breaker is None else breaker.would_allow()

    def states(self) -> dict[str, str]:
        """``{deployment: state}`` for every breaker created so far."""
        return {name: breaker.state for name, breaker in self._items()}

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """``{deployment: snapshot()}`` for every breaker created so far."""
        return {name: breaker.snapshot() for name, breaker in self._items()}

    def _items(self) -> list[tuple[str, CircuitBreaker]]:
        with self._lock:
            return sorted(self._breakers.items())
