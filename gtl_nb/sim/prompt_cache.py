"""A provider's prompt cache as the simulators keep it (Anthropic's ``cache_control``, Converse's ``cachePoint``).

A request names breakpoints; the prompt up to each one is a *prefix*. What the services document, and
what this reproduces:

* a prefix shorter than the model's minimum (``minimum_tokens``; ``claude_minimum``) is not cached, and
  that is no error;
* the longest prefix already cached is *read* (``cache_read_input_tokens`` / ``cacheReadInputTokens``),
  looked up at the breakpoints and at the *lookups* a simulator adds (Anthropic looks for a hit at
  the block boundaries up to 20 blocks before each breakpoint, so marking only the newest turn of a
  conversation reads what the previous turn wrote);
* the prompt from there to the last cacheable breakpoint is *written* (``cache_creation_input_tokens`` /
  ``cacheWriteInputTokens``), and every prefix of the request is cached from then on;
* an entry lives its breakpoint's lifetime from its last use, a hit renewing it: five minutes, or an
  hour for a breakpoint that asks for it (``ttl: "1h"``); the written tokens are told apart by the
  lifetime of the breakpoint that ends their stretch of the prompt (``ephemeral_1h_input_tokens`` /
  ``cacheDetails``);
* the input count the service reports apart is what follows the part read or written.

Prefixes are told apart by a digest of what they hold (the model and the key included: a cache is never
shared across accounts), markers left out; their sizes come from the simulator's own token estimate.
The cache holds at most ``max_entries`` prefixes, dropping the expired, then the oldest.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TTLS", "CacheUse", "PromptCache", "claude_minimum", "prefix_key"]

MINIMUM_TOKENS = 1024
"""The shortest prefix most simulated models cache (Claude Sonnet's documented minimum)."""


def claude_minimum(model: str) -> int:
    """The shortest prefix a Claude model caches, as Anthropic documents them: 4,096 tokens for Haiku
    4.5 and Opus 4.5 and 4.6, 2,048 for the Haiku 3 models, 1,024 for the others."""
    if any(name in model for name in ("haiku-4-5", "opus-4-5", "opus-4-6")):
        return 4096
    if any(name in model for name in ("3-5-haiku", "3-haiku")):
        return 2048
    return MINIMUM_TOKENS


TTL_SECONDS = 300.0
"""How long an entry lives after its last use: the five-minute cache."""
HOUR_SECONDS = 3600.0
"""The one-hour cache's lifetime (``ttl: "1h"``)."""
TTLS = {"5m": TTL_SECONDS, "1h": HOUR_SECONDS}
"""A marker's ``ttl`` → seconds (absent: the five-minute cache)."""


@dataclass(frozen=True)
class CacheUse:
    """What one request did with the cache: tokens read from it and written to it, ``written_1h``
    of those to the one-hour cache."""

    read: int = 0
    written: int = 0
    written_1h: int = 0


def prefix_key(*parts: Any, marker: str) -> str:
    """A digest of a prefix's content (JSON values), every ``marker`` key left out at any depth."""
    text = json.dumps([_unmarked(part, marker) for part in parts], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _unmarked(value: Any, marker: str) -> Any:
    if isinstance(value, dict):
        return {key: _unmarked(item, marker) for key, item in value.items() if key != marker}
    if isinstance(value, list):
        return [_unmarked(item, marker) for item in value if not (isinstance(item, dict) and set(item) == {marker})]
    return value


@dataclass
class PromptCache:
    """The prefixes cached so far, with when each expires (see the module docstring)."""

    ttl: float = TTL_SECONDS
    minimum_tokens: int = MINIMUM_TOKENS
    max_entries: int = 4096
    clock: Callable[[], float] = time.monotonic
    _expiry: dict[str, float] = field(default_factory=dict)
    _lifetime: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def use(
        self,
        prefixes: Sequence[tuple[str, int] | tuple[str, int, float]],
        lookups: Sequence[tuple[str, int]] = (),
        *,
        minimum_tokens: int | None = None,
    ) -> CacheUse:
        """Look up ``prefixes`` — ``(key, tokens up to the breakpoint[, lifetime in seconds])``, the
        cache's ``ttl`` when no lifetime is given — and ``lookups`` (prefixes only looked for), then
        store ``prefixes``; a hit is renewed for its own lifetime. ``minimum_tokens``: the model's
        (default: the cache's)."""
        shortest = self.minimum_tokens if minimum_tokens is None else minimum_tokens
        eligible = [
            (prefix[0], prefix[1], prefix[2] if len(prefix) > 2 else self.ttl)  # type: ignore[misc]
            for prefix in prefixes
            if prefix[1] >= shortest
        ]
        if not eligible:
            return CacheUse()
        looked = [(key, tokens) for key, tokens, _ in eligible]
        looked += [(key, tokens) for key, tokens in lookups if tokens >= shortest]
        with self._lock:
            now = self.clock()
            hits = [(key, tokens) for key, tokens in looked if self._expiry.get(key, 0.0) > now]
            read = max((tokens for _, tokens in hits), default=0)
            written = written_1h = 0
            start = read
            for _, tokens, lifetime in sorted(eligible, key=lambda prefix: prefix[1]):  # each stretch's own
                stretch = max(0, tokens - start)
                written += stretch
                written_1h += stretch if lifetime >= HOUR_SECONDS else 0
                start = max(start, tokens)
            renewals = {key: self._lifetime.get(key, self.ttl) for key, _ in hits}
            # a hit keeps the longer of its lifetimes: a five-minute mark rereading an hour's entry
            # does not shorten what was paid for
            stored = [(key, max(lifetime, renewals.get(key, 0.0))) for key, _, lifetime in eligible]
            for key, lifetime in [*renewals.items(), *stored]:
                self._expiry.pop(key, None)  # re-inserted last: the dict's order is the order of use
                self._expiry[key] = now + lifetime
                self._lifetime[key] = lifetime
            self._bound(now)
        return CacheUse(read=read, written=written, written_1h=written_1h)

    def _bound(self, now: float) -> None:
        if len(self._expiry) <= self.max_entries:
            return
        for key in [key for key, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[key]
            self._lifetime.pop(key, None)
        while len(self._expiry) > self.max_entries:
            oldest = next(iter(self._expiry))
            del self._expiry[oldest]
            self._lifetime.pop(oldest, None)
