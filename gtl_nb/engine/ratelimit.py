"""Per-user rate limits and daily budgets, checked before a request is sent.

Limits (``[budgets]``, each optional; per-user overrides in ``[budgets.users.<name>]``, where the
string ``"unlimited"`` lifts a default limit for that user):

* ``requests_per_minute`` and ``tokens_per_minute`` — over the sliding last 60 seconds. At or over
  the limit a request is refused with a retryable ``RateLimitError`` whose ``retry_after`` is the
  wait until enough of the window has slid out for the count to drop below the limit. A limit of 0
  blocks the user: that refusal is not retryable.
* ``usd_per_day`` — money spent since 00:00 UTC of the current day. At or over it the request is
  refused with a ``BudgetExceededError`` (not retryable) stating the limit, the spend and when the
  day resets. The daily budget is checked first: when it is spent, waiting a minute will not help.

**Reserve, then settle** (``engine.stores.BudgetCounter``, the engine's way). ``reserve`` checks a
principal's limits and counts the request in one atomic step — in-process under a lock, in SQLite
within one ``BEGIN IMMEDIATE`` transaction — so requests per minute are exact: with a limit of 25,
exactly 25 requests pass however many processes and tasks ask at the same instant. The request's
tokens and cost are counted as an *estimate* at once and replaced by the actual figures at
``settle``. A refused request is not counted; every other one is, also for a principal without
limits (another process sharing the counters, or a later configuration, may enforce some: as when
budgets were read from the ledger, which records every request). ``refusal`` below is the one decision every
``BudgetCounter`` makes, from the counted requests of the last minute and the money spent today.

**What counts** (``counts_against_budgets``, ``UNCOUNTED_ROW_SQL``): a request ends counted unless it
ended — ``error`` or ``cancelled`` — with no deployment chosen for it, which is exactly a ledger row
with no ``deployment``: refused before any provider was called (by the gateway — a scope, a session
cap, a body refused field by field, a stopping gateway —, by a budget, by a token's allow-lists, by
routing, or with every circuit open), or cancelled before routing chose. The engine gives such a
request's reservation back (``BudgetCounter.release``), and the SQLite counter that also reads the
ledger skips such rows, so every counter counts the same requests. A row that names a deployment
counts, whatever its end: the provider was called (a provider's own refusal included: calls it
refuses still spend the gateway's quota with it), answered from the cache or another session's call,
or refused by the engine just before a call it would have made (a ``max_tokens`` above the catalog's
limit, stop sequences its API refuses, a deployment whose key is missing) — the row cannot tell
these apart from a provider's own refusal.

**Overshoot bound** (tokens per minute and USD per day). A request is admitted while the counted
total is below the limit, as before; its estimate is then counted. The counted total therefore
stays below ``limit + e`` (``e``: the estimate of the request admitted last), and what was really
used differs from what was counted only by the requests still in flight, each by its ``actual -
estimate``. So usage can exceed a limit by less than ``e + sum over requests in flight of
(actual - estimate)`` — that is, by the last admitted request itself plus how much the others in
flight were underestimated. Once they settle, the next ``reserve`` sees the actual figures.
Requests per minute have no such slack: each counts exactly 1 when admitted.

**A request that ends before its provider reported usage** (cancelled, or cut by an error) is settled
with an estimate of what it used, never with nothing (``Engine._estimated_use``: once its answer began,
its prompt's estimate and the content that reached its caller at four characters a token, priced; cancelled
while its provider was silent, its prompt's estimate). "Actual" above is then that estimate: settled at
nothing, any number of requests each nearly a whole answer would have been ``actual - estimate`` below
what was really used, and the bound would not hold for a client that cancels just before each end.

``BudgetGuard`` is the older, synchronous check: the counts come from ``usage_source(user,
since_unix) -> (requests, tokens, cost_usd)`` (what the user used at or after ``since_unix``), and a
request counts only once the source has it, so concurrent requests can together pass a limit.

For ``BudgetGuard``, ``retry_after`` is found by asking ``usage_source`` again with later ``since``
values: the usage at or after ``now - 60 + d`` is what will still be in the window ``d`` seconds
from now, so a binary search over whole seconds finds the smallest sufficient ``d`` in about six
queries (the worst case is 60 s); ``refusal`` computes the wait from the records it is given (a
request reserved at ``t`` leaves the window after ``t + 60``, so the worst case there is 61 s).
Unix time has no leap seconds, so a UTC day is exactly 86,400 s and starts at
``now - now % 86400``.
"""

from __future__ import annotations

import bisect
import difflib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, NamedTuple

from gtl_nb.protocol.errors import BudgetExceededError, ConfigurationError, GTLError, RateLimitError
from gtl_nb.words import dollars

UsageSource = Callable[[str, float], tuple[int, int, float]]  # (user, since_unix) -> requests, tokens, usd

WINDOW = 60.0  # seconds of the per-minute limits
DAY = 86_400.0
UNLIMITED = "unlimited"
_LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "usd_per_day")
TENANT_PREFIX = "tenant:"
"""A tenant's shared budget is counted under ``tenant:<name>`` (``Engine._reserve``): no principal may be
named so (a GhostToken's ``sub`` that starts with it is refused), or its requests would count as the tenant's."""


@dataclass(frozen=True)
class Limits:
    """The limits of one user; ``None`` is no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: float | None = None

    @property
    def any(self) -> bool:
        values = (self.requests_per_minute, self.tokens_per_minute, self.usd_per_day)
        return any(v is not None for v in values)


@dataclass(frozen=True)
class BudgetConfig:
    """The ``[budgets]`` table: default limits and per-user overrides (only the keys a user sets)."""

    default: Limits = field(default_factory=Limits)
    users: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    tenants: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    """``[budgets.tenants.<name>]``: limits the members of a tenant (a token's ``tenant`` claim) share, on top
    of each member's own; a tenant without a table has none."""
    backend: str | None = None
    """Where the counters live: ``memory://`` or ``sqlite:///path``. ``None``: the SQLite ledger's own
    file when the ledger is SQLite (processes that share a ledger share budgets), else memory."""

    def __post_init__(self) -> None:
        if self.backend is not None:
            from gtl_nb.engine.stores.urls import parse_store_url

            parse_store_url(self.backend, where="[budgets] backend")

    def limits_for(self, user: str) -> Limits:
        """The default limits with ``user``'s overrides applied."""
        override = self.users.get(user)
        return replace(self.default, **override) if override else self.default

    def limits_for_tenant(self, tenant: str | None) -> Limits:
        """The limits ``tenant``'s members share (none unless ``[budgets.tenants.<tenant>]`` sets some)."""
        shared = self.tenants.get(tenant) if tenant else None
        return Limits(**shared) if shared else Limits()

    @classmethod
    def from_dict(cls, table: Mapping[str, Any] | None, *, where: str = "[budgets]") -> BudgetConfig:
        """Build from a ``[budgets]`` table; unknown keys and bad values are ``ConfigurationError``."""
        if table is not None and not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table, got {table!r}")
        table = dict(table or {})
        backend = table.pop("backend", None)
        if backend is not None:
            from gtl_nb.engine.stores.urls import parse_store_url

            parse_store_url(backend, where=where.replace("]", "] backend", 1))
        users = table.pop("users", {})
        if not isinstance(users, Mapping):
            raise ConfigurationError(f"{_nested(where, 'users')} must be a table of users, got {users!r}")
        tenants = table.pop("tenants", {})
        if not isinstance(tenants, Mapping):
            raise ConfigurationError(f"{_nested(where, 'tenants')} must be a table of tenants, got {tenants!r}")
        default = _limits(table, where, allow_unlimited=False)
        overrides = {}
        for name, spec in users.items():
            overrides[str(name)] = _limits(spec, _nested(where, f"users.{name}"), allow_unlimited=True)
        shared = {}
        for name, spec in tenants.items():
            shared[str(name)] = _limits(spec, _nested(where, f"tenants.{name}"), allow_unlimited=False)
        return cls(default=Limits(**default), users=overrides, tenants=shared, backend=backend)


def _nested(where: str, path: str) -> str:
    """``"[budgets] in x.toml"`` + ``"users.ann"`` -> ``"[budgets.users.ann] in x.toml"``."""
    if where.startswith("[") and "]" in where:
        end = where.index("]")
        return f"{where[:end]}.{path}{where[end:]}"
    return f"{where}.{path}"


def _limits(table: Any, where: str, *, allow_unlimited: bool) -> dict[str, float | None]:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{where} must be a table of limits, got {table!r}")
    known = (*_LIMIT_KEYS, "users", "tenants", "backend") if not allow_unlimited else _LIMIT_KEYS
    parsed: dict[str, float | None] = {}
    for key, value in table.items():
        if key not in _LIMIT_KEYS:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"{where}: unknown key {key!r}{hint} (known: {', '.join(known)})")
        if allow_unlimited and value == UNLIMITED:
            parsed[key] = None
            continue
        integer = key != "usd_per_day"
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
            what = "a whole number >= 0" if integer else "a number >= 0"
            extra = f' or "{UNLIMITED}"' if allow_unlimited else ""
            raise ConfigurationError(f"{where}: {key} must be {what}{extra}, got {value!r}")
        parsed[key] = value if integer else float(value)
    return parsed


class BudgetGuard:
    """Checks a user's limits against what ``usage_source`` reports (see the module docstring)."""

    def __init__(
        self,
        config: BudgetConfig,
        usage_source: UsageSource,
        clock_wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.usage_source = usage_source
        self.clock_wall = clock_wall

    def check(self, user: str, now: float | None = None) -> None:
        """Return if ``user`` may send a request at unix time ``now`` (default: the wall clock);
        raise ``BudgetExceededError`` or ``RateLimitError`` otherwise."""
        limits = self.config.limits_for(user)
        if not limits.any:
            return
        now = self.clock_wall() if now is None else now
        if limits.usd_per_day is not None:
            self._check_day(user, now, limits.usd_per_day)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is None and tpm is None:
            return
        requests, tokens, _ = self.usage_source(user, now - WINDOW)
        if rpm is not None and requests >= rpm:
            self._refuse(user, now, "requests", 0, rpm, requests)
        if tpm is not None and tokens >= tpm:
            self._refuse(user, now, "tokens", 1, tpm, tokens)

    def status(self, user: str, now: float | None = None) -> dict[str, Any]:
        """``user``'s limits and current usage (for a budget endpoint or a notebook display)."""
        limits = self.config.limits_for(user)
        now = self.clock_wall() if now is None else now
        requests, tokens, _ = self.usage_source(user, now - WINDOW)
        day_start = utc_day_start(now)
        spent = self.usage_source(user, day_start)[2]
        return {
            "user": user,
            "requests_per_minute": limits.requests_per_minute,
            "requests_last_minute": requests,
            "tokens_per_minute": limits.tokens_per_minute,
            "tokens_last_minute": tokens,
            "usd_per_day": limits.usd_per_day,
            "usd_today": spent,
            "day_resets_at": day_start + DAY,
        }

    def _check_day(self, user: str, now: float, limit: float) -> None:
        day_start = utc_day_start(now)
        spent = self.usage_source(user, day_start)[2]
        if spent < limit:
            return
        raise _day_refusal(user, now, limit, spent)

    def _refuse(self, user: str, now: float, what: str, index: int, limit: int, used: int) -> None:
        if limit == 0:
            raise _blocked(user, what)
        raise _rate_refusal(user, what, limit, used, self._wait(user, now, index, limit))

    def _wait(self, user: str, now: float, index: int, limit: int) -> float:
        """Whole seconds until the usage still in the window drops below ``limit`` (module docstring)."""
        low, high = 0, int(WINDOW)  # usage(since=now-60+low) >= limit; assume high suffices
        while high - low > 1:
            middle = (low + high) // 2
            if self.usage_source(user, now - WINDOW + middle)[index] < limit:
                high = middle
            else:
                low = middle
        return float(high)


# ----------------------------------------------------------------------------------------------
# The decision every BudgetCounter makes


class Spend(NamedTuple):
    """One counted request of the last minute: when it was reserved and its tokens (estimate or actual)."""

    time: float
    tokens: int


def counts_against_budgets(status: str, deployment: str | None) -> bool:
    """Whether a request whose ledger row ends with ``status`` and ``deployment`` counts against
    budgets (module docstring, "What counts"): not when it ended ``error`` or ``cancelled`` with no
    deployment chosen for it. ``UNCOUNTED_ROW_SQL`` is the same rule on a ledger row."""
    return deployment is not None or status not in ("error", "cancelled")


#: ``counts_against_budgets``'s refusal in SQL: the ledger rows (``requests``) budgets never count.
UNCOUNTED_ROW_SQL = "(status IN ('error', 'cancelled') AND deployment IS NULL)"


def horizon(now: float) -> float:
    """The earliest reservation time the decision at ``now`` can need (a minute or the UTC day back)."""
    return min(now - WINDOW, utc_day_start(now))


def refusal(
    principal: str, limits: Limits, *, now: float, minute: Iterable[Spend], spent_today: float
) -> GTLError | None:
    """Whether ``principal`` may send one more request at ``now``: ``None``, or the error to raise.

    ``minute`` holds the principal's counted requests reserved at or after ``now - 60`` (older ones
    are ignored), ``spent_today`` the USD counted for requests reserved since 00:00 UTC. A limit is
    reached when the counted total is at or over it (the overshoot bound is in the module
    docstring). The daily budget is checked first, then requests, then tokens per minute; the
    messages and ``retry_after`` are ``BudgetGuard``'s.
    """
    if limits.usd_per_day is not None and spent_today >= limits.usd_per_day:
        return _day_refusal(principal, now, limits.usd_per_day, spent_today)
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    if rpm is None and tpm is None:
        return None
    recent = sorted((spend for spend in minute if spend.time >= now - WINDOW), key=lambda spend: spend.time)
    for what, limit, amounts in (
        ("requests", rpm, [1] * len(recent)),
        ("tokens", tpm, [spend.tokens for spend in recent]),
    ):
        used = sum(amounts)
        if limit is None or used < limit:
            continue
        if limit == 0:
            return _blocked(principal, what)
        return _rate_refusal(principal, what, limit, used, _wait([s.time for s in recent], amounts, now, limit))
    return None


def usage_report(*, now: float, minute: Iterable[Spend], spent_today: float) -> dict[str, float]:
    """What ``BudgetCounter.usage`` returns, from the same inputs as ``refusal``."""
    recent = [spend for spend in minute if spend.time >= now - WINDOW]
    return {
        "requests_last_minute": len(recent),
        "tokens_last_minute": sum(spend.tokens for spend in recent),
        "usd_today": spent_today,
    }


def _wait(times: list[float], amounts: list[int], now: float, limit: int) -> float:
    """Whole seconds until the amounts still in the window sum below ``limit`` (``times`` sorted).

    A request reserved at ``t`` is in the window up to and including ``t + 60``, so it has left
    after ``d`` seconds when ``now + d > t + 60``."""
    suffix = [0] * (len(amounts) + 1)  # suffix[i]: the amounts of requests i and later
    for index in range(len(amounts) - 1, -1, -1):
        suffix[index] = suffix[index + 1] + amounts[index]
    for seconds in range(1, int(WINDOW) + 2):
        first_kept = bisect.bisect_left(times, now - WINDOW + seconds)
        if suffix[first_kept] < limit:
            return float(seconds)
    return WINDOW + 1  # not reached: every record has left the window by then


def _day_refusal(user: str, now: float, limit: float, spent: float) -> BudgetExceededError:
    reset = utc_day_start(now) + DAY
    when = datetime.fromtimestamp(reset, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return BudgetExceededError(
        f"daily budget of {_budget(limit)} for user {user!r} is used up: {dollars(spent)} spent today; "
        f"it resets at {when} (in {_duration(reset - now)})",
        retryable=False,
    )


def _budget(limit: float) -> str:
    """A configured budget as written: ``$5.00`` when whole cents, else every digit (``$0.000500``, not ``$0.00``)."""
    return f"${limit:,.2f}" if round(limit, 2) == limit else dollars(limit)


def _blocked(user: str, what: str) -> RateLimitError:
    return RateLimitError(f"user {user!r} may not send {what} (limit {what}_per_minute = 0)", retryable=False)


def _rate_refusal(user: str, what: str, limit: int, used: int, wait: float) -> RateLimitError:
    return RateLimitError(
        f"user {user!r} reached the limit of {limit} {what} per minute ({used} in the last 60 s); retry in {wait:g} s",
        retryable=True,
        retry_after=wait,
    )


def utc_day_start(now: float) -> float:
    """Unix time of 00:00 UTC of the day ``now`` falls in."""
    return now - now % DAY


def _duration(seconds: float) -> str:
    minutes = max(1, int(seconds + 59) // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
