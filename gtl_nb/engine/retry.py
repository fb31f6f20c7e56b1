"""When to try a failed request again: exponential backoff with full jitter, within a deadline.

The wait before retry number ``attempt`` (``attempt`` = attempts made so far, 1 after the first
failure) is::

    ceiling = min(max_delay, base_delay * multiplier ** (attempt - 1))
    backoff = uniform(0, ceiling)          # "full jitter"; exactly ``ceiling`` with jitter = false
    delay   = max(backoff, retry_after)    # never sooner than the server asked, even past max_delay

and there is no retry (``None``) when ``attempt >= max_attempts``, when the server's ``retry_after``
is longer than ``max_retry_after`` (a wait that long is the caller's to choose: the request fails over,
or ends at once with the provider's error and its ``retry_after``, which a gateway's HTTP endpoints
answer with ``Retry-After`` — an SDK retrying on its own then waits once, not the gateway's waits
times its own), or when ``now + delay`` would not be before the request's ``deadline`` — in
particular when the server's ``retry_after`` alone reaches past it: waiting would only end in a
timeout. Full jitter spreads the retries of many
clients that failed together over the whole interval, so they do not return in lockstep.

``deadline`` is an absolute time on the engine's monotonic clock; ``RetryPolicy.deadline`` is the
per-request budget in seconds from which ``deadline_from(start)`` computes it. Randomness comes
from an injected ``random.Random`` so tests are reproducible. Which errors are worth retrying is
the caller's decision (the engine retries errors whose ``retryable`` flag is set).
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError

Seconds = float | None  # a duration in seconds, or None (no retry_after given / do not retry)

_KEYS = ("max_attempts", "base_delay", "max_delay", "multiplier", "jitter", "deadline", "max_retry_after")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff settings, from the ``[routing.retry]`` table (see the module docstring for the formula)."""

    max_attempts: int = 3
    """Attempts in total, the first one included (1: never retry)."""
    base_delay: float = 0.5
    """Ceiling of the first wait, in seconds."""
    max_delay: float = 20.0
    """Largest backoff ceiling, in seconds (a server's ``retry_after`` may exceed it)."""
    multiplier: float = 2.0
    """Growth of the ceiling per attempt."""
    jitter: bool = True
    """Full jitter (uniform in ``[0, ceiling]``); false waits exactly the ceiling."""
    deadline: float = 120.0
    """Per-request time budget in seconds, retries included."""
    max_retry_after: float = 10.0
    """The longest a server's ``retry_after`` is waited before a retry on the same deployment; a longer
    one fails over or ends the request with that error (module docstring)."""
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"retry max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.base_delay <= self.max_delay:
            got = f"got {self.base_delay} and {self.max_delay}"
            raise ConfigurationError(f"retry delays must satisfy 0 <= base_delay <= max_delay, {got}")
        if not self.multiplier >= 1:
            raise ConfigurationError(f"retry multiplier must be >= 1, got {self.multiplier}")
        if not self.deadline > 0:  # (written so that NaN, which TOML reads, is refused too)
            raise ConfigurationError(f"retry deadline must be > 0 seconds, got {self.deadline}")
        if not self.max_retry_after >= 0:
            raise ConfigurationError(f"retry max_retry_after must be >= 0 seconds, got {self.max_retry_after}")

    @classmethod
    def from_dict(
        cls,
        table: Mapping[str, Any] | None,
        *,
        rng: random.Random | None = None,
        where: str = "[routing.retry]",
    ) -> RetryPolicy:
        """Build from a ``[routing.retry]`` table; unknown keys and wrong types are ``ConfigurationError``."""
        if table is not None and not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table, got {table!r}")
        table = dict(table or {})
        for key, value in table.items():
            if key not in _KEYS:
                close = difflib.get_close_matches(key, _KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(f"{where}: unknown key {key!r}{hint} (known: {', '.join(_KEYS)})")
            if key == "jitter":
                if not isinstance(value, bool):
                    raise ConfigurationError(f"{where}: jitter must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigurationError(f"{where}: {key} must be a number, got {value!r}")
            elif key == "max_attempts" and not isinstance(value, int):
                raise ConfigurationError(f"{where}: max_attempts must be an integer, got {value!r}")
        if rng is not None:
            table["rng"] = rng
        try:
            return cls(**table)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc.message}") from None

    def deadline_from(self, start: float) -> float:
        """The absolute deadline of a request that started at ``start`` (same clock)."""
        return start + self.deadline

    def ceiling(self, attempt: int) -> float:
        """The backoff ceiling before retry number ``attempt`` (>= 1), jitter aside."""
        try:
            grown = self.base_delay * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # a huge attempt number: the cap applies anyway
            return self.max_delay
        return min(self.max_delay, grown)

    def next_delay(self, attempt: int, retry_after: Seconds, now: float, deadline: float) -> Seconds:
        """Seconds to wait before the next attempt, or ``None`` to stop retrying.

        ``attempt`` is the number of attempts made so far; ``retry_after`` the server's wish in
        seconds (``None``: none given); ``now`` and ``deadline`` are times on one clock."""
        if attempt >= self.max_attempts or (retry_after is not None and retry_after > self.max_retry_after):
            return None
        ceiling = self.ceiling(attempt)
        delay = self.rng.uniform(0.0, ceiling) if self.jitter else ceiling
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        if now + delay >= deadline:
            return None
        return delay
