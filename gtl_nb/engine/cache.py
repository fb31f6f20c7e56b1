"""The response cache: the same question to the same deployment and model gets the stored answer.

**Key.** ``cache_key`` is the SHA-256 (hex) of canonical JSON — sorted keys, no whitespace,
``ensure_ascii=False``, floats in Python's shortest round-trip ``repr`` — of everything that shapes
the answer: the deployment, the model, every field of every message (content, images, tool calls,
tool results, ``provider_data``), ``tools``, ``tool_choice``, ``response_format`` and the sampling
parameters ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``reasoning``, ``reasoning_effort`` and
``reasoning_budget`` (how hard the model thought changes the answer, shown or not). Left out, because
they do not change the answer: ``session_id``, ``metadata``, ``stream``, ``provider``/``providers``
(the deployment in the key is the one that answers) and ``cache`` itself. Fields left at their
defaults are omitted before hashing, so an explicit default and an absent field give one key.

**Scope.** Behind a gateway the key also holds whose cache it is (``partition``, from ``[cache]
scope``): ``"tenant"`` (the default) — the token's tenant, or the principal alone when its token
names none; ``"principal"`` — each principal its own; ``"shared"`` — everyone's one cache. A cached
answer tells its reader that someone asked the same question (status ``cached``, cost 0) and hands
over an answer another team's key paid for, so by default answers stay within the organisation that
paid. The partition is hashed with the rest: no key, log line or answer shows it. Identical requests
in flight share one upstream call within the same partition only. The embedded engine has no tenants
and its caller holds every key: its keys hold no partition (``scope`` does not apply).

**What is cached** (``is_cacheable``): nothing unless ``[cache] enabled = true`` — the operator's
master switch — and never a request with ``cache = false``. A request that samples (temperature
above 0, *or no temperature at all*, because every provider's default samples) is cached only when
asked for explicitly, by ``cache = true`` on the request or ``cache_nonzero_temperature = true`` in
the configuration: re-running it is otherwise expected to give a new answer.

**Replay.** A ``CachedAnswer`` keeps the events of a completed answer (no statuses; only what came
after the last failover). ``replay`` re-addresses them to the new session: ``status: cached``,
the content events one by one as they originally streamed, one ``usage`` with ``cache_hit = true``,
the original token counts and ``cost = 0.0``, and the original ``done`` (finish reason, provider,
model and ``provider_data`` kept; the original timings dropped, they measured another session).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, cast

import msgspec

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.stores.base import ResponseCache
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Reasoning,
    Status,
    StreamEvent,
    Token,
    ToolCallEvent,
    Usage,
)
from gtl_nb.protocol.session import Transcript
from gtl_nb.words import a_kind_of, with_article

KEY_VERSION = 1  # part of every key: bump it when the key's contents change
SCOPES = ("tenant", "principal", "shared")
"""``[cache] scope``: whose requests may read one another's answers behind a gateway (module docstring)."""


# ----------------------------------------------------------------------------------------------
# Configuration and the cacheability rule


@dataclass(frozen=True)
class CacheConfig:
    """The ``[cache]`` table."""

    enabled: bool = False
    """Master switch: no caching at all unless true."""
    ttl: float = 3600.0
    """Seconds an answer stays valid."""
    max_entries: int = 1024
    """Answers kept by the in-memory backend (least recently used ones are evicted)."""
    cache_nonzero_temperature: bool = False
    """Also cache requests that sample (temperature > 0 or unset) without a per-request ``cache = true``."""
    backend: str = "memory://"
    """Where answers live: ``memory://`` (this process, an LRU of ``max_entries``; ``"memory"`` is the
    older spelling) or ``sqlite:///path`` (a file the processes of one machine share)."""
    coalescing: str = "auto"
    """Where identical in-flight requests find one another: ``auto`` (through ``backend`` when it is a
    ``redis://`` URL, else in this process), ``memory://`` (this process only) or a ``redis://`` URL
    (replicas share one upstream call: ``engine.stores.redis_flights``)."""
    scope: str = "tenant"
    """Behind a gateway, whose requests share answers (``SCOPES``): ``tenant`` (the token's tenant; a
    principal whose token names none is its own), ``principal`` or ``shared`` (module docstring)."""

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.max_entries < 1:
            raise ConfigurationError("[cache] ttl must be > 0 seconds and max_entries >= 1")
        if isinstance(self.scope, str) and self.scope not in SCOPES:
            raise ConfigurationError(f"[cache] scope must be one of {', '.join(SCOPES)}, not {self.scope[:40]!r}")
        from gtl_nb.engine.stores.urls import parse_store_url

        if isinstance(self.backend, str):  # from_dict reports a wrong type itself
            parse_store_url(self.backend, where="[cache] backend")
        if isinstance(self.coalescing, str) and self.coalescing != "auto":
            scheme = parse_store_url(self.coalescing, where="[cache] coalescing").scheme
            if scheme not in ("memory", "redis"):
                raise ConfigurationError(
                    "[cache] coalescing: use auto, memory:// (this process) or redis://host:port/db (replicas)"
                )

    def coalescing_url(self) -> str | None:
        """The Redis URL identical in-flight requests are shared through, or ``None`` (this process only)."""
        from gtl_nb.engine.stores.urls import parse_store_url

        chosen = self.backend if self.coalescing == "auto" else self.coalescing
        url = parse_store_url(chosen, where="[cache] coalescing")
        return url.url if url.scheme == "redis" else None

    @classmethod
    def from_dict(cls, table: Mapping[str, Any] | None, *, where: str = "[cache]") -> CacheConfig:
        """Build from a ``[cache]`` table; unknown keys and wrong types are ``ConfigurationError``."""
        if table is not None and not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table, got {table!r}")
        table = dict(table or {})
        known = {f.name: f.default for f in fields(cls)}
        for key, value in table.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigurationError(f"{where}: unknown key {key!r}{hint} (known: {', '.join(known)})")
            default = known[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, str):
                ok = isinstance(value, str)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                wanted = with_article(type(default).__name__)
                shown = a_kind_of(value) if key == "backend" else repr(value)  # a redis:// URL may hold a password
                raise ConfigurationError(f"{where}: {key} must be {wanted}, got {shown}")
        try:
            return cls(**table)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc.message}") from None


def is_cacheable(request: CompletionRequest, cache_config: CacheConfig) -> bool:
    """Whether ``request``'s answer may be served from / stored in the cache (module docstring)."""
    if not cache_config.enabled or request.cache is False:
        return False
    samples = request.temperature is None or request.temperature > 0
    if samples:
        return request.cache is True or cache_config.cache_nonzero_temperature
    return True


# ----------------------------------------------------------------------------------------------
# The key


def partition(scope: str, context: RequestContext | None) -> list[str] | None:
    """Whose cache a gateway request's answers live in under ``[cache] scope`` (module docstring):
    ``["tenant", tenant]``, ``["principal", tenant or "", sub]``, or ``None`` (everyone's: ``shared``,
    or no context). A principal is named with its tenant: two tenants' tokens may carry the same ``sub``."""
    if scope == "shared" or context is None:
        return None
    if scope == "tenant" and context.tenant:
        return ["tenant", context.tenant]
    return ["principal", context.tenant or "", context.principal]


def cache_key(deployment: str, model: str, request: CompletionRequest, owner: list[str] | None = None) -> str:
    """SHA-256 hex digest of the canonical JSON of what shapes the answer (module docstring), and of
    ``owner`` (``partition``'s) when given: one owner's key is never another's."""
    payload: dict[str, Any] = {
        "v": KEY_VERSION,
        "deployment": deployment,
        "model": model,
        "messages": msgspec.to_builtins(request.messages),
        "tools": msgspec.to_builtins(request.tools),
        "tool_choice": request.tool_choice,
        "response_format": request.response_format,
        # ints where floats are meant (temperature=1 built in Python) must hash like the float
        "temperature": None if request.temperature is None else float(request.temperature),
        "top_p": None if request.top_p is None else float(request.top_p),
        "max_tokens": request.max_tokens,
        "stop": request.stop,
        "reasoning": request.reasoning,
    }
    # (in the key only when set: the keys of requests without them are the ones they always were)
    if request.reasoning_effort is not None:
        payload["reasoning_effort"] = request.reasoning_effort
    if request.reasoning_budget is not None:
        payload["reasoning_budget"] = request.reasoning_budget
    if owner is not None:  # (absent otherwise: a shared or embedded cache keeps the keys it always had)
        payload["owner"] = owner
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# The stored answer and its replay

AnswerEvent = Token | Reasoning | ToolCallEvent | Usage | Done


class CachedAnswer(msgspec.Struct, frozen=True):
    """A completed answer: its events (content, usage, done — no statuses), who gave it, and when.

    ``stored_at`` is a value of the storing backend's clock. A msgspec Struct, so a persistent
    backend can store it with ``msgspec.json.encode`` and read it back with ``decode(type=CachedAnswer)``.
    """

    events: list[AnswerEvent]
    deployment: str
    model: str
    stored_at: float = 0.0

    @classmethod
    def from_events(
        cls, events: Iterable[StreamEvent], *, deployment: str, model: str, stored_at: float = 0.0
    ) -> CachedAnswer | None:
        """The answer a session's events hold, or ``None`` if they did not end in ``done``.

        Statuses are dropped and a ``failover`` discards what came before it: the protocol's own
        reading (``Transcript``), not a copy of it."""
        transcript = Transcript()
        for event in events:
            transcript.add(event)
            if transcript.finished:
                break
        if transcript.done is None:
            return None
        kept = cast("list[AnswerEvent]", transcript.answer_events)
        return cls(events=kept, deployment=deployment, model=model, stored_at=stored_at)


def replay(answer: CachedAnswer, session_id: str) -> list[StreamEvent]:
    """The stored answer as a fresh event stream of ``session_id`` (module docstring)."""
    out: list[StreamEvent] = [Status(session_id=session_id, state="cached")]
    usage: Usage | None = None
    done: Done | None = None
    for event in answer.events:
        if isinstance(event, Usage):
            usage = event
        elif isinstance(event, Done):
            done = event
        else:
            out.append(msgspec.structs.replace(event, session_id=session_id))
    out.append(
        Usage(
            session_id=session_id,
            tokens_in=usage.tokens_in if usage else None,
            tokens_out=usage.tokens_out if usage else None,
            cached_tokens_in=usage.cached_tokens_in if usage else None,
            reasoning_tokens_out=usage.reasoning_tokens_out if usage else None,
            cost=0.0,
            cache_hit=True,
        )
    )
    finish = done or Done(session_id=session_id)
    out.append(
        msgspec.structs.replace(
            finish,
            session_id=session_id,
            provider=finish.provider or answer.deployment,
            model=finish.model or answer.model,
            ttft_ms=None,
            latency_ms=None,
        )
    )
    return out


# ----------------------------------------------------------------------------------------------
# Backends: the one cache interface is the async ``engine.stores.ResponseCache`` (``CacheBackend``
# is its older name); ``MemoryCache`` is the synchronous LRU that ``MemoryResponseCache`` wraps.

CacheBackend = ResponseCache


class MemoryCache:
    """A thread-safe LRU with a time to live per entry, in this process's memory.

    ``get`` of an expired entry removes it and misses; a ``set`` beyond ``max_entries`` evicts the
    least recently used entry (reading an entry makes it the most recently used)."""

    def __init__(
        self,
        max_entries: int = 1024,
        default_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.default_ttl = default_ttl
        self.clock = clock
        # key -> (expiry time, answer), least recently used first
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= self.clock():
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def set(self, key: str, answer: CachedAnswer, ttl: float | None = None) -> None:
        ttl = self.default_ttl if ttl is None else ttl
        if ttl <= 0:
            self.delete(key)
            return
        with self._lock:
            self._entries[key] = (self.clock() + ttl, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Entries, hits, misses and evictions so far (for metrics)."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }


def make_cache(config: CacheConfig, *, clock: Callable[[], float] = time.monotonic) -> MemoryCache:
    """The synchronous in-memory LRU for ``config`` (other backends are async stores: ``open_stores``)."""
    from gtl_nb.engine.stores.urls import parse_store_url

    if parse_store_url(config.backend, where="[cache] backend").scheme == "memory":
        return MemoryCache(config.max_entries, config.ttl, clock)
    raise ConfigurationError(
        f"[cache] backend {config.backend!r} is an async store: open it with engine.stores.open_stores"
    )
