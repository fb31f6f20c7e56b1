"""The engine: turns one ``CompletionRequest`` into one well-formed, recorded GTL event stream.

``Engine.stream(request)`` is the one path every request takes, embedded or behind the gateway:

1. **Budgets** — the user's requests/tokens per minute and money per UTC day are checked against
   the ledger (shared by every process) before anything else: ``RATE_LIMIT`` / ``BUDGET_EXCEEDED``,
   no upstream call.
2. **Ledger** — one row is inserted (``started``) before any upstream call and completed once.
3. **Routing** — the deployments that may answer (``routing.Router``), in the order the request
   gives (``providers=[...]``) or the configured strategy chooses (round-robin, weighted, lowest
   cost, lowest latency), open circuits last.
4. **Cache and coalescing** — a cacheable request is answered from the cache when it can (status
   ``cached``, ``cache_hit``, original counts, cost 0); N identical concurrent requests share one
   upstream call (``coalesce.Flight``).
5. **Attempts** — each deployment is tried behind its circuit breaker; a retryable failure before
   any content is retried with backoff and jitter (status ``retrying``, honouring ``retry_after``,
   within the request's deadline); then the next deployment is tried after a ``failover`` status,
   which tells every reader to discard what it has received. Invalid requests, auth errors and
   local limits never fail over. A context-length error moves to the configured larger model.
6. **Guarantees** — events pass through a ``SessionStateMachine`` (a provider that breaks the order
   ends with ``INTERNAL``); ``usage`` is priced from the catalog; ``done`` is stamped with the
   deployment, model, ``ttft_ms``, ``latency_ms`` and ``provider_data``; the session ends with
   exactly one ``done`` or ``error`` — a stream is never silently truncated.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import msgspec

from gtl_nb.engine.breaker import BreakerBoard, BreakerConfig
from gtl_nb.engine.cache import CacheConfig, CachedAnswer, cache_key, is_cacheable, make_cache, replay
from gtl_nb.engine.coalesce import Flight
from gtl_nb.engine.http import HttpRunner, Timeouts
from gtl_nb.engine.ratelimit import BudgetConfig, BudgetGuard
from gtl_nb.engine.retry import RetryPolicy
from gtl_nb.engine.routing import Router, Target
from gtl_nb.engine.strategies import strategy_from_routing
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import (
    GTLError,
    InvalidRequestError,
    ProviderUnavailableError,
    SessionStateError,
    error_from_event,
)
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    ProviderInfo,
    Reasoning,
    Status,
    StreamEvent,
    Token,
    ToolCallEvent,
    Usage,
)
from gtl_nb.protocol.session import SessionStateMachine
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.registry import get_provider, is_local

log = get_logger("engine")

_CONTENT = (Token, Reasoning, ToolCallEvent)
ROUTING_SUBTABLES = ("breaker", "retry", "context_fallbacks")


class _MemoryUsage:
    """What budgets read when there is no ledger: this process's requests of the last day.

    A request is counted when it starts (so concurrent ones see each other) and its tokens and cost
    when it ends; requests refused by a budget are not counted at all."""

    def __init__(self) -> None:
        self.records: deque[tuple[float, str, int, int, float]] = deque()

    def started(self, when: float, user: str) -> None:
        self._add((when, user, 1, 0, 0.0))

    def finished(self, when: float, user: str, usage: Usage | None) -> None:
        if usage is not None:
            tokens = (usage.tokens_in or 0) + (usage.tokens_out or 0)
            if not usage.cache_hit:
                self._add((when, user, 0, tokens, usage.cost or 0.0))

    def _add(self, record: tuple[float, str, int, int, float]) -> None:
        self.records.append(record)
        horizon = record[0] - 86_400.0  # budgets look back one UTC day at most
        while self.records and self.records[0][0] < horizon:
            self.records.popleft()

    def totals(self, user: str, since: float) -> tuple[int, int, float]:
        rows = [r for r in self.records if r[0] >= since and r[1] == user]
        return sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows)


class SessionEnd:
    """Where ``Engine.stream`` puts a session's terminal event once it decided it (see ``stream``)."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event: Done | Error | None = None


class Engine:
    """Runs completion requests against configured deployments (see the module docstring)."""

    def __init__(
        self,
        deployments: dict[str, Deployment],
        *,
        catalog: Any = None,
        timeouts: Timeouts | None = None,
        ledger: Any = None,
        routing: dict[str, Any] | None = None,
        cache: dict[str, Any] | None = None,
        budgets: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        routing = dict(routing or {})
        self.deployments = deployments
        self.catalog = catalog
        self.ledger = ledger
        self.router = Router(deployments, catalog)
        self.http = HttpRunner(timeouts)
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self.breakers = BreakerBoard(BreakerConfig.from_dict(routing.get("breaker")), clock=clock)
        self.retry = RetryPolicy.from_dict(routing.get("retry"), rng=rng)
        self.strategy = strategy_from_routing(
            routing, healthy=self.breakers.would_allow, price_of=self._price_of, other_keys=ROUTING_SUBTABLES
        )
        self.context_fallbacks: dict[str, str] = dict(routing.get("context_fallbacks") or {})
        self.cache_config = CacheConfig.from_dict(cache)
        self.cache = make_cache(self.cache_config, clock=clock)
        self._memory_usage = _MemoryUsage()
        budget_config = BudgetConfig.from_dict(budgets)
        self.budgets = BudgetGuard(budget_config, self._usage_since, clock_wall=wall_clock) if budgets else None
        self._flights: dict[str, Flight] = {}
        self._budget_gate = asyncio.Lock()

    # -- public -------------------------------------------------------------------------------

    async def stream(
        self, request: CompletionRequest, *, user: str | None = None, ending: SessionEnd | None = None
    ) -> AsyncIterator[StreamEvent]:
        """The complete, validated event stream of ``request``, recorded as one ledger row.

        The row is inserted (status ``started``) before any upstream call and completed once, before
        the terminal event is handed on — also when the caller stops listening early (``cancelled``).
        ``ending`` receives the terminal event as soon as the row is being completed with it, so a runner
        cancelled in between reports that event rather than ``CANCELLED``.
        """
        user = user or ""  # one spelling of "no user" for the ledger, budgets and the memory window
        if self.budgets is None:
            refusal, row = None, await self._ledger_start(request, user)
        else:
            # check and insert as one step per process, so concurrent requests (a batch) cannot all
            # pass the check before any of them is counted
            async with self._budget_gate:
                refusal = await self._check_budget(request, user)
                row = await self._ledger_start(request, user)
                if refusal is None and self.ledger is None:
                    self._memory_usage.started(self.wall_clock(), user)
        record: dict[str, Any] = {"path": [], "cache_hit": False, "coalesced": False}
        usage: Usage | None = None
        end: Done | Error | None = None
        try:
            async with aclosing(self._guarded(request, record, refusal)) as events:
                async for event in events:
                    if isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, Status) and event.state == "failover":
                        usage = None
                    elif isinstance(event, (Done, Error)):
                        end = event
                        if ending is not None:
                            ending.event = event
                        if self.ledger is None and self.budgets is not None and refusal is None:
                            self._memory_usage.finished(self.wall_clock(), user, usage)
                        if row is not None:  # complete the row before the caller sees the end
                            finished, row = row, None
                            await self._ledger_finish(finished, end, usage, record)
                    yield event
        finally:
            if row is not None:
                await self._ledger_finish(row, end, usage, record)

    async def _guarded(
        self, request: CompletionRequest, record: dict[str, Any], refusal: Error | None
    ) -> AsyncIterator[StreamEvent]:
        """``_run``, with a bug anywhere below turned into an ``INTERNAL`` error that still ends the
        session (and its ledger row) properly instead of an exception that leaves both open."""
        ended = False
        try:
            async with aclosing(self._run(request, record, refusal)) as events:
                async for event in events:
                    ended = isinstance(event, (Done, Error))
                    yield event
        except Exception as exc:
            if ended:
                raise
            log.exception("session %s failed inside the engine", request.session_id)
            yield Error(
                session_id=request.session_id,
                code="INTERNAL",
                message=f"gtl_nb internal error: {type(exc).__name__}: {exc}",
                provider=record["path"][-1] if record["path"] else None,
            )

    def breaker_states(self) -> dict[str, dict[str, Any]]:
        """Each deployment's circuit: state, failures, error rate, when it may be tried again."""
        return {name: self.breakers.get(name).snapshot() for name in self.deployments}

    async def _ledger_start(self, request: CompletionRequest, user: str | None) -> int | None:
        if self.ledger is None:
            return None
        insert = asyncio.ensure_future(
            asyncio.to_thread(self.ledger.start, session_id=request.session_id, user=user, model=request.model)
        )
        try:
            return await asyncio.shield(insert)
        except asyncio.CancelledError:
            # cancelled while the row was being inserted: the insert still lands, so close it
            insert.add_done_callback(self._finish_cancelled_insert)
            raise
        except Exception:  # the ledger must never take a request down with it
            log.exception("ledger: could not record the start of %s", request.session_id)
            return None

    def _finish_cancelled_insert(self, insert: asyncio.Future[int]) -> None:
        if insert.cancelled() or insert.exception() is not None:
            return
        row = insert.result()
        asyncio.get_running_loop().run_in_executor(
            None, lambda: self.ledger.finish(row, status="cancelled", error_code="CANCELLED")
        )

    async def _ledger_finish(
        self, row: int, end: Done | Error | None, usage: Usage | None, record: dict[str, Any]
    ) -> None:
        from gtl_nb.engine.ledger import finish_fields

        if end is None:
            fields: dict[str, Any] = {"status": "cancelled", "error_code": "CANCELLED"}
            if usage is not None:
                fields.update(tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost=usage.cost)
        else:
            fields = finish_fields(end, usage)
        path: list[str] = record["path"]
        fields["coalesced"] = record["coalesced"]
        fields["cache_hit"] = record["cache_hit"] or bool(fields.get("cache_hit"))
        deployment = self.deployments.get(fields.get("deployment") or (path[-1] if path else ""))
        if deployment is not None:
            fields["deployment"] = fields.get("deployment") or deployment.name
            fields["provider_type"] = deployment.type
        write = asyncio.ensure_future(asyncio.to_thread(self.ledger.finish, row, failover_path=path or None, **fields))
        try:
            await asyncio.shield(write)  # a cancellation must not lose the row's completion
        except asyncio.CancelledError:
            # the write runs on in its thread; let it land before the caller hears of the end, so a
            # reader right after sees the row finished (a second cancel stops this wait, not the write)
            await asyncio.wait({write})
            raise
        except Exception:
            log.exception("ledger: could not complete row %s", row)

    async def _check_budget(self, request: CompletionRequest, user: str | None) -> Error | None:
        """The refusal the user's budgets give, or ``None`` (read before the row of this request exists)."""
        if self.budgets is None:
            return None
        try:
            await asyncio.to_thread(self.budgets.check, user or "", self.wall_clock())
        except GTLError as exc:
            return exc.to_event(request.session_id)
        return None

    def _usage_since(self, user: str, since: float) -> tuple[int, int, float]:
        if self.ledger is not None:
            totals = self.ledger.totals(user=user, since=since)
            return totals.requests, totals.tokens, totals.cost
        return self._memory_usage.totals(user, since)

    def _price_of(self, target: Target) -> float | None:
        if self.catalog is None:
            return None
        info = self.catalog.model(target.deployment.type, target.model)
        if info is None or info.cost_per_1k_input is None or info.cost_per_1k_output is None:
            return None
        return info.cost_per_1k_input + info.cost_per_1k_output

    def _ordered(self, request: CompletionRequest) -> list[Target]:
        targets = self.router.targets(request)
        if self.router.explicit(request) or len(targets) < 2:
            # the request's own order is the failover order; open circuits still go last
            healthy = [t for t in targets if self.breakers.would_allow(t.name)]
            return healthy + [t for t in targets if t not in healthy]
        return self.strategy.order(targets, request.model)

    async def _run(
        self, request: CompletionRequest, record: dict[str, Any], refusal: Error | None
    ) -> AsyncIterator[StreamEvent]:
        sid = request.session_id
        machine = SessionStateMachine(sid)
        started = self.clock()
        queued = Status(session_id=sid, state="queued")
        machine.advance(queued)
        yield queued
        if refusal is not None:
            yield refusal
            return
        try:
            targets = self._ordered(request)
        except GTLError as exc:
            yield exc.to_event(sid)
            return
        key = None
        if is_cacheable(request, self.cache_config):
            key = cache_key(targets[0].name, targets[0].model, request)
            hit = self.cache.get(key)
            if hit is not None:
                record["cache_hit"] = True
                record["path"].append(hit.deployment)
                for event in replay(hit, sid):
                    if isinstance(event, Done):
                        event = msgspec.structs.replace(event, latency_ms=_ms(self.clock() - started))
                    machine.advance(event)
                    yield event
                return
        flight_key = key or self._coalescing_key(request, targets[0])
        flight = self._flights.get(flight_key) if flight_key else None
        if flight is not None:
            record["coalesced"] = True
            record["path"].append(targets[0].name)
            first: float | None = None
            async with aclosing(flight.follow(sid)) as events:
                async for event in events:
                    if isinstance(event, _CONTENT) and first is None:
                        first = self.clock()
                    if isinstance(event, Done):
                        event = msgspec.structs.replace(
                            event,
                            ttft_ms=_ms(first - started) if first else None,
                            latency_ms=_ms(self.clock() - started),
                        )
                    machine.advance(event)
                    yield event
            return
        attempts = self._attempts(request, targets, record, machine, started, key)
        if not flight_key:
            async with aclosing(attempts) as events:
                async for event in events:
                    yield event
            return
        # The leader: the upstream call runs in a task of its own that publishes to the flight, so a
        # reader leaving (the leader's caller included) never cuts the others off; the call is
        # cancelled only when its last reader has gone.
        flight = Flight()
        self._flights[flight_key] = flight
        flight.publish(queued)
        flight.task = asyncio.ensure_future(self._fly(flight, flight_key, attempts, sid))
        async with aclosing(flight.follow(sid, own=True)) as events:
            async for event in events:
                yield event

    async def _fly(self, flight: Flight, flight_key: str, attempts: AsyncIterator[StreamEvent], sid: str) -> None:
        """Run the leader's attempts, publishing every event to ``flight``."""
        try:
            async with aclosing(attempts) as events:  # type: ignore[type-var]
                async for event in events:
                    flight.publish(event)
        except asyncio.CancelledError:
            pass  # every reader left
        except Exception as exc:  # a bug must still end every reader's session
            log.exception("session %s failed inside the engine", sid)
            flight.publish(Error(session_id=sid, code="INTERNAL", message=f"gtl_nb internal error: {exc!r}"))
        finally:
            flight.close()
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]

    def _coalescing_key(self, request: CompletionRequest, target: Target) -> str | None:
        """Identical deterministic requests (or ones opted into caching) share one upstream call."""
        if request.cache is False:
            return None
        deterministic = request.temperature is not None and request.temperature == 0
        if not (deterministic or request.cache is True or self.cache_config.cache_nonzero_temperature):
            return None
        return "flight:" + cache_key(target.name, target.model, request)

    async def _attempts(
        self,
        request: CompletionRequest,
        targets: list[Target],
        record: dict[str, Any],
        machine: SessionStateMachine,
        started: float,
        key: str | None,
    ) -> AsyncIterator[StreamEvent]:
        """Try the targets in order: breakers, retries with backoff, failover, the context fallback.

        A breaker's probe slot is held from ``acquire`` until a verdict is recorded, inside one
        ``try``/``finally`` that hands it back on any exit (a consumer that stops reading, a cancel
        during back-off). Success bookkeeping (breaker, latency, cache) happens *before* ``done`` is
        yielded, so a consumer that stops at ``done`` loses none of it.
        """
        sid = request.session_id
        deadline = self.retry.deadline_from(started)
        targets = list(targets)
        tried = {(t.name, t.model) for t in targets}
        last_failure: tuple[Target, Error] | None = None
        refused: list[str] = []
        index = 0
        while index < len(targets):
            target = targets[index]
            index += 1
            breaker = self.breakers.get(target.name)
            grant = breaker.acquire()
            if grant is None:
                refused.append(target.name)
                continue
            try:
                if last_failure is not None:
                    previous, failed = last_failure
                    status = Status(
                        session_id=sid,
                        state="failover",
                        from_provider=previous.name,
                        to_provider=target.name,
                        reason=f"{failed.code}: {failed.message}",
                    )
                    machine.advance(status)
                    yield status
                record["path"].append(target.name)
                attempt = 0
                while True:  # attempts at this target, each holding the breaker grant
                    attempt += 1
                    outcome: dict[str, Any] = {}
                    async with aclosing(self._one_attempt(request, target, machine, started, outcome)) as events:
                        async for event in events:
                            if isinstance(event, Done):
                                breaker.record_success()
                                grant = None
                                self._remember_success(request, target, outcome, key)
                            yield event
                    if "done" in outcome:
                        return
                    failed = outcome["error"]
                    if failed.retryable:
                        breaker.record_failure()
                        grant = None
                    if not failed.retryable:
                        fallback = self._context_fallback(failed, target)
                        if fallback is None or (fallback.name, fallback.model) in tried:
                            yield failed
                            return
                        tried.add((fallback.name, fallback.model))
                        targets.insert(index, fallback)
                        last_failure = (target, failed)
                        break
                    last_failure = (target, failed)
                    if outcome.get("content"):
                        break  # never retry once content or usage was sent: fail over, which discards it
                    delay = self.retry.next_delay(attempt, failed.retry_after, self.clock(), deadline)
                    if delay is None:
                        break
                    grant = breaker.acquire()
                    if grant is None:
                        break
                    status = Status(
                        session_id=sid, state="retrying", attempt=attempt + 1, reason=f"{failed.code}: {failed.message}"
                    )
                    machine.advance(status)
                    yield status
                    await self._sleep(delay)
            finally:
                if grant == "probe":
                    breaker.release()  # no verdict: a caller mistake, or the session was cancelled
        if last_failure is not None:
            yield last_failure[1]
            return
        retry_in = [self.breakers.get(name).snapshot().get("retry_in") for name in refused]
        wait = min((r for r in retry_in if r is not None), default=None)
        yield Error(
            session_id=sid,
            code="PROVIDER_UNAVAILABLE",
            message=f"every circuit is open ({', '.join(refused)})" + (f"; retry in {wait:.0f} s" if wait else ""),
            retryable=True,
            retry_after=wait,
        )

    def _remember_success(
        self, request: CompletionRequest, target: Target, outcome: dict[str, Any], key: str | None
    ) -> None:
        """What a successful attempt teaches: its own time to first token, and a cache entry stored
        under the key of the deployment that actually answered."""
        if outcome.get("ttft") is not None:
            self.strategy.observe_ttft(target.name, outcome["ttft"])
        if key is not None:
            answer = CachedAnswer.from_events(
                outcome["events"], deployment=target.name, model=target.model, stored_at=self.wall_clock()
            )
            if answer is not None:
                self.cache.set(cache_key(target.name, target.model, request), answer)

    def _context_fallback(self, failed: Error, target: Target) -> Target | None:
        if failed.code != "CONTEXT_LENGTH_EXCEEDED":
            return None
        entry = self.context_fallbacks.get(target.model) or self.context_fallbacks.get(f"{target.name}:{target.model}")
        if not entry:
            return None
        prefix, sep, model = entry.partition(":")
        if sep and prefix in self.deployments:
            return self.router._target(self.deployments[prefix], model)
        return self.router._target(target.deployment, entry)

    async def _one_attempt(
        self,
        request: CompletionRequest,
        target: Target,
        machine: SessionStateMachine,
        started: float,
        outcome: dict[str, Any],
    ) -> AsyncIterator[StreamEvent]:
        """One call to one target: yields its validated events; leaves ``done`` or ``error`` in ``outcome``."""
        sid = request.session_id
        events: list[StreamEvent] = []
        outcome["events"] = events
        first: float | None = None
        attempt_started = self.clock()
        attempt = self._attempt(request, target)
        try:
            async for event in attempt:
                if isinstance(event, Error):
                    outcome["error"] = event
                    return
                if isinstance(event, _CONTENT) and first is None:
                    first = self.clock()
                    outcome["ttft"] = first - attempt_started  # this attempt's own, for lowest_latency
                if isinstance(event, Done):
                    event = _stamp(event, target, started, first, self.clock())
                try:
                    machine.advance(event)
                except SessionStateError as exc:
                    outcome["error"] = Error(
                        session_id=sid,
                        code="INTERNAL",
                        message=f"{target.name} broke the event order: {exc}",
                        provider=target.name,
                    )
                    return
                if isinstance(event, (*_CONTENT, Usage)):
                    outcome["content"] = True  # the caller has it: a retry would duplicate it
                events.append(event)
                if isinstance(event, Done):
                    outcome["done"] = event
                yield event
                if isinstance(event, Done):
                    return
        finally:
            await attempt.aclose()
        outcome["error"] = Error(
            session_id=sid, code="INTERNAL", message=f"{target.name} ended without done or error", provider=target.name
        )

    def provider_info(self) -> list[ProviderInfo]:
        """``provider_info`` for every configured deployment."""
        infos = []
        for deployment in self.deployments.values():
            provider = get_provider(deployment.type)
            offline = bool(getattr(provider, "offline", False))
            if is_local(provider):
                infos.append(
                    ProviderInfo(
                        provider=deployment.name,
                        models=provider.models(),
                        offline=offline,
                        provider_type=deployment.type,
                    )
                )
            elif self.catalog is not None:
                info = self.catalog.provider_info(
                    deployment.name, deployment.type, offline=offline, models=list(deployment.models) or None
                )
                infos.append(msgspec.structs.replace(info, provider_type=deployment.type))
            else:
                infos.append(ProviderInfo(provider=deployment.name, provider_type=deployment.type))
        return infos

    async def list_models(self, deployment_name: str) -> list[str]:
        """Live model listing from the provider's own endpoint (local providers list their models)."""
        deployment = self.router._deployment(deployment_name)
        provider = get_provider(deployment.type)
        if is_local(provider):
            return [model.name for model in provider.models()]
        if not hasattr(provider, "models_request"):
            raise InvalidRequestError(f"{deployment.type} has no model listing endpoint")
        description = provider.models_request(deployment, now=time.time())
        try:
            status, headers, body = await self.http.fetch(description)
        except (asyncio.TimeoutError, OSError) as exc:
            raise ProviderUnavailableError(
                f"cannot list models of {deployment.name}: {exc}", provider=deployment.name
            ) from None
        except Exception as exc:  # httpx errors: the engine is the boundary that translates them
            raise ProviderUnavailableError(
                f"cannot list models of {deployment.name}: {type(exc).__name__}: {exc}", provider=deployment.name
            ) from None
        if status >= 400:
            request = CompletionRequest(session_id="models", model="", messages=[])
            raise error_from_event(provider.decode_error(request, deployment, status, headers, body))
        try:
            return provider.parse_models(body)
        except ValueError as exc:
            raise ProviderUnavailableError(f"unreadable model list from {deployment.name}: {exc}") from None

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- one attempt at one deployment --------------------------------------------------------

    async def _attempt(self, request: CompletionRequest, target: Target) -> AsyncIterator[StreamEvent]:
        sid = request.session_id
        sent = msgspec.structs.replace(request, model=target.model, provider=target.name, providers=None)
        try:
            provider = get_provider(target.deployment.type)
        except GTLError as exc:
            yield exc.to_event(sid)
            return
        yield Status(session_id=sid, state="streaming")
        if is_local(provider):
            options = getattr(provider, "with_options", None)
            if options is not None and target.deployment.options:
                provider = options(dict(target.deployment.options))
            for delay, event in provider.generate(sent):
                if delay > 0:
                    await asyncio.sleep(delay)
                yield self._priced(event, target)
            return
        decoder: Any = None
        pending: Done | None = None
        try:
            async for item in self.http.run(provider, sent, target.deployment):
                if not isinstance(item, (Status, Token, Reasoning, ToolCallEvent, Usage, Done, Error)):
                    decoder = item  # the runner hands over the decoder once the body is consumed
                elif pending is not None:
                    log.warning("%s: %s after done ignored", target.name, type(item).__name__)
                elif isinstance(item, Done):
                    pending = item  # held until provider_data is readable
                else:
                    yield self._priced(item, target)
        except GTLError as exc:  # a dialect refusing the request (e.g. an unsupported image URL)
            yield _with_provider(exc.to_event(sid), target)
            return
        if pending is not None:
            data = getattr(decoder, "provider_data", None)
            yield msgspec.structs.replace(pending, provider_data=data) if data else pending

    def _priced(self, event: StreamEvent, target: Target) -> StreamEvent:
        if (
            isinstance(event, Usage)
            and event.cost is None
            and self.catalog is not None
            and event.tokens_in is not None
            and event.tokens_out is not None
        ):
            cost = self.catalog.cost(
                target.deployment.type, target.model, event.tokens_in, event.tokens_out, event.cached_tokens_in
            )
            if cost is not None:
                return msgspec.structs.replace(event, cost=cost)
        return event


def _with_provider(event: Error, target: Target) -> Error:
    return event if event.provider else msgspec.structs.replace(event, provider=target.name)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _stamp(done: Done, target: Target, started: float, first: float | None, now: float) -> Done:
    return msgspec.structs.replace(
        done,
        provider=target.name,
        model=done.model or target.model,
        ttft_ms=round((first - started) * 1000.0, 3) if first is not None else None,
        latency_ms=round((now - started) * 1000.0, 3),
    )
