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

The counts come from ``usage_source(user, since_unix) -> (requests, tokens, cost_usd)``: what the
user used at or after ``since_unix`` (the engine backs it with the SQLite ledger, so several
processes share one set of limits). A request counts once the ledger has it, so requests running
at the same moment can together pass a limit by a little; these are soft limits.

``retry_after`` is found by asking ``usage_source`` again with later ``since`` values: the usage at
or after ``now - 60 + d`` is what will still be in the window ``d`` seconds from now, so a binary
search over whole seconds finds the smallest sufficient ``d`` in about six queries (the worst case
is 60 s). Unix time has no leap seconds, so a UTC day is exactly 86,400 s and starts at
``now - now % 86400``.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from gtl_nb.protocol.errors import BudgetExceededError, ConfigurationError, RateLimitError

UsageSource = Callable[[str, float], tuple[int, int, float]]  # (user, since_unix) -> requests, tokens, usd

WINDOW = 60.0  # seconds of the per-minute limits
DAY = 86_400.0
UNLIMITED = "unlimited"
_LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "usd_per_day")


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

    def limits_for(self, user: str) -> Limits:
        """The default limits with ``user``'s overrides applied."""
        override = self.users.get(user)
        return replace(self.default, **override) if override else self.default

    @classmethod
    def from_dict(cls, table: Mapping[str, Any] | None, *, where: str = "[budgets]") -> BudgetConfig:
        """Build from a ``[budgets]`` table; unknown keys and bad values are ``ConfigurationError``."""
        if table is not None and not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table, got {table!r}")
        table = dict(table or {})
        users = table.pop("users", {})
        if not isinstance(users, Mapping):
            raise ConfigurationError(f"{_nested(where, 'users')} must be a table of users, got {users!r}")
        default = _limits(table, where, allow_unlimited=False)
        overrides = {}
        for name, spec in users.items():
            overrides[str(name)] = _limits(spec, _nested(where, f"users.{name}"), allow_unlimited=True)
        return cls(default=Limits(**default), users=overrides)


def _nested(where: str, path: str) -> str:
    """``"[budgets] in x.toml"`` + ``"users.ann"`` -> ``"[budgets.users.ann] in x.toml"``."""
    if where.startswith("[") and "]" in where:
        end = where.index("]")
        return f"{where[:end]}.{path}{where[end:]}"
    return f"{where}.{path}"


def _limits(table: Any, where: str, *, allow_unlimited: bool) -> dict[str, float | None]:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{where} must be a table of limits, got {table!r}")
    known = (*_LIMIT_KEYS, "users") if not allow_unlimited else _LIMIT_KEYS
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
        reset = day_start + DAY
        when = datetime.fromtimestamp(reset, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        raise BudgetExceededError(
            f"daily budget of ${limit:.2f} for user {user!r} is used up: ${spent:.4f} spent today; "
            f"it resets at {when} (in {_duration(reset - now)})",
            retryable=False,
        )

    def _refuse(self, user: str, now: float, what: str, index: int, limit: int, used: int) -> None:
        if limit == 0:
            message = f"user {user!r} may not send {what} (limit {what}_per_minute = 0)"
            raise RateLimitError(message, retryable=False)
        wait = self._wait(user, now, index, limit)
        raise RateLimitError(
            f"user {user!r} reached the limit of {limit} {what} per minute ({used} in the last 60 s); "
            f"retry in {wait:g} s",
            retryable=True,
            retry_after=wait,
        )

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


def utc_day_start(now: float) -> float:
    """Unix time of 00:00 UTC of the day ``now`` falls in."""
    return now - now % DAY


def _duration(seconds: float) -> str:
    minutes = max(1, int(seconds + 59) // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"
