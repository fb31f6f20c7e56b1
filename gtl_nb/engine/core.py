"""The engine: turns one ``CompletionRequest`` into one well-formed, recorded GTL event stream.

``Engine.stream(request)`` (``stream_batches``, and ``session.run_session`` over it) is the path every request
takes, embedded or behind the gateway:

1. **Budgets** — the principal's requests/tokens per minute and money per UTC day are reserved in
   the ``BudgetCounter`` (one atomic check-and-count, shared by processes when the store is) before
   anything else: ``RATE_LIMIT`` / ``BUDGET_EXCEEDED``, no upstream call; the estimate is settled
   with the actual tokens and cost when the session ends.
2. **Ledger** — one row is inserted (``started``) before any upstream call and completed once,
   with the request context (principal, tenant, key id, trace id).
3. **Routing** — the deployments that may answer (``routing.Router``), in the order the request
   gives (``providers=[...]``) or the configured strategy chooses (round-robin, weighted, lowest
   cost, lowest latency), open circuits last.
4. **Cache and coalescing** — a cacheable request is answered from the cache when it can (status
   ``cached``, ``cache_hit``, original counts, cost 0); N identical concurrent requests share one
   upstream call (``coalesce.Flight``) — across replicas too, when the ``FlightRegistry`` is shared
   (``engine.stores.flights``): one replica runs the call, the others read its events.
5. **Attempts** — each deployment is tried behind its circuit breaker; a retryable failure before
   any content is retried with backoff and jitter (status ``retrying``, honouring ``retry_after``,
   within the request's deadline); then the next deployment is tried after a ``failover`` status,
   which tells every reader to discard what it has received. Invalid requests, auth errors and
   local limits never fail over. A context-length error moves to the configured larger model.
6. **Guarantees** — events pass through a ``SessionStateMachine`` (a provider that breaks the order
   ends with ``INTERNAL``); ``usage`` is priced from the catalog; ``done`` is stamped with the
   deployment, model, ``ttft_ms``, ``latency_ms`` and ``provider_data``; the session ends with
   exactly one ``done`` or ``error`` — a stream is never silently truncated.

``session.run_session`` runs the common session — one target, nothing to count, cache or share — in
its own coroutine (``session._run_lane``), the same steps without the levels between them, and hands it
to the general path the moment it needs more (a retry, failover, a breaker's probe). What the two paths
share is in ``session_parts``; the estimates in ``estimates``; how a provider's errors reach a caller
in ``caller_errors``.

The engine reads its state only through the store interfaces (``engine.stores``), its clock, sleep
and HTTP transport only as injected by ``engine.builder.build_engine`` (the one place that builds
an engine), and announces what happens on ``engine.hooks`` (``Hooks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

import msgspec

from gtl_nb.engine import bookkeeping
from gtl_nb.engine.bookkeeping import Bookkeeping, never_waits
from gtl_nb.engine.breaker import MOMENTARY_LIMIT
from gtl_nb.engine.cache import CacheConfig, CachedAnswer, cache_key, is_cacheable, partition, replay
from gtl_nb.engine.caller_errors import (
    MODELS_READ,
    gateways_key_refused,
    listing_for,
    operators_side,
    reworded_for_caller,
    scrubbed,
    with_attempts,
    with_provider,
    without_account_ids,
)
from gtl_nb.engine.coalesce import Flight
from gtl_nb.engine.config import missing_credentials
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.counting import TokenCount, counted_input
from gtl_nb.engine.credentials import CredentialResolver, with_key
from gtl_nb.engine.estimates import content_characters
from gtl_nb.engine.hooks import (
    AttemptStarted,
    BreakerChanged,
    CacheHit,
    FailedOver,
    Hooks,
    Reloaded,
    RequestStarted,
    RetryScheduled,
)
from gtl_nb.engine.http import HttpRunner, Timeouts
from gtl_nb.engine.ratelimit import BudgetConfig
from gtl_nb.engine.routing import EMBEDDED, GATEWAY, GATEWAY_LIST, Router, Target, Visible
from gtl_nb.engine.session_parts import (
    ANSWER,
    CONTENT,
    REQUEST_CONTEXT,
    TEXT,
    TOKENS,
    AttemptOutcome,
    Lane,
    LaneHandover,
    SessionRecord,
    close_attempt,
    ended_unfinished,
    refused_by_dialect,
)
from gtl_nb.engine.settings import RoutingSettings, Settings
from gtl_nb.engine.stores import Reservation, Stores
from gtl_nb.engine.stores.flights import LOCAL_LEAD, FlightFollow, FlightLead, FlightLost, FlightRegistry, LocalFlights
from gtl_nb.engine.strategies import make_strategy
from gtl_nb.engine.transport import TransportError
from gtl_nb.ids import random_hex
from gtl_nb.log import get_logger, quotes_secret, redact
from gtl_nb.protocol.errors import (
    ConfigurationError,
    GTLError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
    ProviderUnavailableError,
    SessionStateError,
    error_from_event,
)
from gtl_nb.protocol.limits import request_limit_refusal
from gtl_nb.protocol.messages import (
    TERMINAL_EVENTS,
    CompletionRequest,
    Done,
    Error,
    ProviderInfo,
    Status,
    StreamEvent,
    Token,
    Usage,
    plain_http_image,
)
from gtl_nb.protocol.session import SessionState, SessionStateMachine, is_failover
from gtl_nb.providers.base import Deployment, NotServedHere, check_tool_choice
from gtl_nb.providers.catalog import Catalog
from gtl_nb.providers.registry import get_provider, is_local
from gtl_nb.providers.url_hint import URL_NOT_MODEL

if TYPE_CHECKING:
    from gtl_nb.engine.session import SessionEnd

log = get_logger("engine")


def _nothing_visible(deployment: str, model: str) -> bool:
    return False


def _asked_for(request: CompletionRequest) -> str:
    """The model, provider or failover list a request named, as the caller wrote it."""
    if request.providers:
        return f"{request.model!r} on {', '.join(request.providers)}"
    if request.provider:
        return f"{request.model!r} on {request.provider}"
    return repr(request.model)


PROBE_UNDER_WAY_WAIT = 1.0
"""Seconds a caller refused by a half-open circuit (its probe under way) is told to wait: the
``retry_after`` of "every circuit is open", which the gateway answers ``503`` with ``Retry-After``."""
_TARGETS_MEMO = 1024
"""Bare model names whose targets ``Engine._targets`` remembers at most (then it starts again)."""


async def _batches_of(*batches: list[StreamEvent]) -> AsyncGenerator[list[StreamEvent], None]:
    """``batches``, as a source of ``stream_batches`` (a refusal, an error, a cached answer; none: a
    source that has ended)."""
    for batch in batches:
        yield batch


async def _one_by_one(events: AsyncGenerator[StreamEvent, None]) -> AsyncGenerator[list[StreamEvent], None]:
    """``events`` (a coalesced flight's), each a batch of its own; closed when this is."""
    async with aclosing(events) as each:
        async for event in each:
            yield [event]


class Engine(Bookkeeping):
    """Runs completion requests against configured deployments (see the module docstring).

    Build one with ``engine.builder.build_engine``; the constructor takes the parts already built.
    """

    def __init__(
        self,
        *,
        deployments: Mapping[str, Deployment],
        catalog: Catalog | None,
        runner: HttpRunner,
        stores: Stores,
        routing: RoutingSettings,
        cache: CacheConfig,
        budgets: BudgetConfig | None,
        deployment_timeouts: Mapping[str, Timeouts],
        credentials: CredentialResolver,
        hooks: Hooks,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        flights: FlightRegistry | None = None,
        audience: str = EMBEDDED,
    ) -> None:
        self.deployments = dict(deployments)
        self.catalog = catalog
        self.router = Router(self.deployments, catalog, audience=audience)
        self._bare_targets: dict[str, tuple[Target, ...]] = {}  # the router's answers by bare model name
        # each model's most output tokens per answer as the catalog says (``None``: unknown), looked up once
        self._output_limits: dict[tuple[str, str], int | None] = {}
        # a gateway's deployments as resolved when their credentials were found complete, and what the
        # operator was last told about each that could not be called (``_uncallable``)
        self._complete_credentials: dict[str, Deployment] = {}
        self._told_operator: dict[str, str] = {}
        self.http = runner
        runner.names_upstream = audience != GATEWAY  # a gateway's clients learn no upstream address
        self.stores = stores
        self.hooks = hooks
        self.credentials = credentials
        self.clock = clock
        self.wall_clock = wall_clock
        self._sleep = sleep
        self.retry = routing.retry if rng is None else dataclasses.replace(routing.retry, rng=rng)
        self._health: Mapping[str, dict[str, Any]] = {}
        self.strategy = make_strategy(
            routing.strategy, healthy=self._healthy, price_of=self._price_of, **dict(routing.strategy_options)
        )
        self.context_fallbacks: dict[str, str] = dict(routing.context_fallbacks)
        self.cache_config = cache
        self.budgets = budgets
        self.deployment_timeouts = dict(deployment_timeouts)
        self._flights: dict[str, Flight] = {}
        self.flights: FlightRegistry = flights if flights is not None else LocalFlights()
        """Who runs the call of a coalescing key: this process, or one replica for all (``[cache] coalescing``)."""
        self._background: set[asyncio.Future[Any]] = set()

    def reload(
        self,
        settings: Settings,
        *,
        catalog: Catalog | None = None,
        credentials: CredentialResolver | None = None,
    ) -> None:
        """Apply ``settings`` in place between requests: deployments, routing (strategy, retry, breaker
        thresholds, context fallbacks), prices and catalog overrides, timeouts, budget limits, credentials.

        Everything is built first, so a mistake (an unknown strategy, a bad override) raises
        ``ConfigurationError`` with nothing changed; then every attribute is swapped in one synchronous
        step, so no request sees half of each. A running session keeps the targets (deployments, keys, base
        URLs) it resolved when it started. ``catalog`` defaults to the built-in one with the settings'
        overrides and ``credentials`` to re-reading the new configuration's sources, as ``build_engine`` does.

        The stores are not replaced: the ledger, cache, budget counters and breaker backend stay as opened
        (their backends need a restart). When ``[routing.breaker]``'s thresholds changed, in-process circuits
        restart closed under the new ones (a breaker keeps its config from creation); shared SQLite circuits
        keep their state and are judged by the new thresholds from now on.
        """
        from gtl_nb.engine.breaker import BreakerBoard
        from gtl_nb.engine.credentials import ConfiguredCredentials, StaticCredentials

        if catalog is None:
            catalog = Catalog.default()
            if settings.catalog_overrides:
                catalog = catalog.with_overrides(settings.catalog_overrides)
        if credentials is None:
            config = settings.config
            credentials = (
                StaticCredentials()
                if config is None
                else ConfiguredCredentials(config.rebuild_deployment, config.credential_sources, environ=config.environ)
            )
        routing = settings.routing
        deployments = dict(settings.deployments)
        strategy = make_strategy(
            routing.strategy, healthy=self._healthy, price_of=self._price_of, **dict(routing.strategy_options)
        )
        retry = dataclasses.replace(routing.retry, rng=self.retry.rng)  # an injected rng stays (tests' seeds)
        breakers = self.stores.breakers
        board = getattr(breakers, "board", None)
        current = board.config if isinstance(board, BreakerBoard) else getattr(breakers, "config", None)
        # the backend is the store's, opened at start: only the thresholds change here
        breaker_config = (
            routing.breaker if current is None else dataclasses.replace(routing.breaker, backend=current.backend)
        )
        new_board = None
        if isinstance(board, BreakerBoard) and board.config != breaker_config:
            new_board = BreakerBoard(breaker_config, clock=board.clock, on_change=board.on_change)
        # -- from here on nothing can fail and nothing awaits: one step for every request that starts next
        self.deployments = deployments
        self.catalog = catalog
        self.router = Router(self.deployments, catalog, audience=self.audience)
        self._bare_targets = {}  # after the router (``_targets`` reads them the other way round)
        self._output_limits = {}
        self.credentials = credentials
        self.retry = retry
        self.strategy = strategy
        self.context_fallbacks = dict(routing.context_fallbacks)
        self.budgets = settings.budgets
        self.deployment_timeouts = dict(settings.deployment_timeouts)
        self.http.timeouts = settings.timeouts
        if new_board is not None:
            breakers.board = new_board  # type: ignore[attr-defined]
        elif board is None and hasattr(breakers, "config"):
            breakers.config = breaker_config  # type: ignore[attr-defined]
        self.hooks.emit(Reloaded(self))  # metrics and the audit log learn the new deployments' labels

    @property
    def ledger(self) -> Any:
        """The usage ledger store (``None`` when no ledger is kept)."""
        return self.stores.ledger

    # -- public -------------------------------------------------------------------------------

    async def stream(
        self,
        request: CompletionRequest,
        *,
        context: RequestContext | None = None,
        user: str | None = None,
        ending: SessionEnd | None = None,
        refused: GTLError | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The complete, validated event stream of ``request``, recorded as one ledger row, one event
        at a time: ``stream_batches`` (which says what every argument does), unbatched."""
        batches = self.stream_batches(request, context=context, user=user, ending=ending, refused=refused)
        async with aclosing(batches) as each:
            async for batch in each:
                for event in batch:
                    yield event

    async def stream_batches(
        self,
        request: CompletionRequest,
        *,
        context: RequestContext | None = None,
        user: str | None = None,
        ending: SessionEnd | None = None,
        refused: GTLError | None = None,
        resume: LaneHandover | None = None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """The complete, validated event stream of ``request``, recorded as one ledger row, in batches:
        the events one read of the upstream decoded go through the engine's levels together (one step
        of each per read, not per event). Batches are never empty, and the terminal event is alone in
        the last one.

        ``refused``: the caller may not make this request at all (a gateway's scope check); the session
        is that error, recorded as its row like any other end, with no provider called and no budget used.

        ``context`` says who the request is for (``user=`` is the shorthand for a context with only a
        principal). The row is inserted (status ``started``) before any upstream call and completed
        once, before the terminal event is handed on — also when the caller stops listening early
        (``cancelled``). ``ending`` receives the terminal event as soon as the row is being completed
        with it, so a runner cancelled in between reports that event rather than ``CANCELLED``.

        ``resume``: the session so far, from ``run_session``'s lane (``_run_lane``), which ran it until
        its first attempt did not simply answer: the row, state and attempt are taken over from there.
        """
        if context is None:
            context = RequestContext(principal=user or "", trace_id=random_hex(2))
        elif context.trace_id is None:  # every request has one: it joins its ledger row, audit record and span
            context = context.traced(random_hex(2))
        targets = self.session_targets(request, context) if resume is None else resume.targets
        if refused is not None:
            targets = refused
        scope = REQUEST_CONTEXT.set(context)  # the attempts read it: which stored key a token chose
        # a request already refused (by a cap, routing, its token's allow-list, a limit) reserves nothing:
        # it would hold a budget's place until its client read its answer, and hear RATE_LIMIT, not its error
        unserved = refused is not None or isinstance(targets, GTLError)
        reservation: tuple[Reservation, ...] | None = None
        refusal: Error | None = None
        # the row's model is the bare name, also for a request routing refused ("openai:gpt-x" → "gpt-x")
        model = targets[0].model if isinstance(targets, list) and targets else self.router.bare_model(request.model)
        if resume is None:
            record = SessionRecord(answer=[] if self.hooks.want_answers else None, refused=refused is not None)
        else:
            record = resume.record
        usage: Usage | None = None if resume is None else resume.usage
        end: Done | Error | None = None
        row: int | None = None
        batches: AsyncGenerator[list[StreamEvent], None] | None = None
        cancelled: asyncio.CancelledError | None = None
        try:
            if resume is not None:  # the lane's session (no await before this ``try``: the row is ours)
                row, machine, started = resume.row, resume.machine, resume.started
                batches = self._attempts(request, targets, record, machine, started, None, first=resume.first)  # type: ignore[arg-type]
            else:
                # counted before the row starts: the SQLite counter counts rows without a reservation (another
                # process's), and a row started here before its reservation would count against its own request
                # and its neighbours'; a cancel while counting gives back what was taken (``_reserve``)
                if not unserved and self.budgets is not None:
                    try:
                        reservation, refusal = await self._reserve(request, context, targets)
                    except asyncio.CancelledError as exc:
                        # cancelled while counting (a store that waits: a client gone, a caller's timeout): the
                        # request still leaves its row, started now and ended ``cancelled`` as the cancel goes on
                        cancelled = exc
                    except Exception:  # the budget store failed: the request ends INTERNAL, its row with it
                        log.exception("session %r: the budget counter failed", request.session_id)
                        # (its words stay in the log: a store's error may name its address or credentials)
                        refusal = Error(
                            session_id=request.session_id, code="INTERNAL", message="the budget counter failed"
                        )
                try:
                    row = await self._ledger_start(request, context, model, cancelled=cancelled is not None)
                finally:  # also when cancelled while the row starts (it lands all the same, ``_ledger_start``)
                    if self.hooks:  # so every request's subscribers hear one start, then one end (``_finish``)
                        self.hooks.emit(
                            RequestStarted(
                                request.session_id, context, request.model, request, record.refused, record.handle
                            )
                        )
                if cancelled is not None:
                    raise cancelled  # the row is started: ``_finish`` below ends it ``cancelled``
                machine = SessionStateMachine(request.session_id)
                started = self.clock()
                queued = Status(session_id=request.session_id, state="queued")
                machine.advance(queued)
                yield [queued]
            # The levels below are one generator fewer than they read: choosing the source
            # (``_source``) is a coroutine, and a bug anywhere below is turned into an ``INTERNAL``
            # error that ends the session and its row here (each level is an async-generator step
            # per batch, for every read of every stream).
            while True:
                try:
                    if batches is None:
                        batches = await self._source(request, targets, record, refusal, machine, started)
                    batch = await batches.__anext__()
                except Exception as exc:
                    if isinstance(exc, StopAsyncIteration) and batches is not None:
                        break  # the source has ended (raised by ``_source`` itself, it is a bug: below)
                    if end is not None:
                        raise
                    batch = [self._internal_error(request, record, exc)]
                    batches = batches or _batches_of()  # (the source could not be chosen: nothing follows)
                answer = record.answer
                # (asked in C first: most batches are tokens alone, and only hooks want their text)
                if answer is None and TOKENS.issuperset(map(type, batch)):
                    record.produced = (record.produced or 0) + sum(map(len, map(TEXT, batch)))
                else:
                    produced = record.produced
                    for event in batch:
                        kind = type(event)
                        if kind is Token:
                            produced = (produced or 0) + len(event.text)  # type: ignore[union-attr]
                            if answer is not None:
                                answer.append(event.text)  # type: ignore[union-attr]
                        elif kind in CONTENT:
                            produced = (produced or 0) + content_characters(event)
                        elif kind is Usage:
                            usage = event
                        elif kind is Status and is_failover(event):
                            usage = None  # the protocol's reset: the usage of an abandoned attempt is void
                            if answer is not None:
                                answer.clear()
                    record.produced = produced
                last = batch[-1]
                kind = type(last)
                if kind not in TERMINAL_EVENTS:
                    yield batch
                    continue
                if len(batch) > 1:  # what came before the end reaches the caller even if the end is cancelled
                    yield batch[:-1]
                end = last
                if kind is Done:
                    record.finish_reason = last.finish_reason
                if ending is not None:
                    ending.event = last
                # complete the row (and settle) before the caller sees the end, exactly once
                finished, row = row, None
                held, reservation = reservation, None
                await self._finish(request, context, finished, end, usage, record, held)
                yield [last]
        finally:
            try:
                if batches is not None:
                    await batches.aclose()
            except Exception:  # (a store that fails to take back a breaker's probe slot): the row still ends
                log.exception("session %r: closing the levels below failed", request.session_id)
            finally:  # also when a second cancel comes while they close
                with contextlib.suppress(ValueError):  # closed from another context (a finalizer): nothing to undo
                    REQUEST_CONTEXT.reset(scope)
                if end is None or row is not None or reservation is not None:  # ended without a terminal event
                    if end is None and ending is not None:  # a failed reader's end, or its front end's (``SessionEnd``)
                        end = ending.failure
                    await self._finish(request, context, row, end, usage, record, reservation)

    def lane_targets(self, request: CompletionRequest, context: RequestContext) -> Lane | None:
        """The lane of ``request`` when ``run_session`` may run it in its own coroutine (``_run_lane``):
        one target to try, no budget to count, no cache or shared call to consult, no hook subscriber
        that wants the answer's text, a breaker answered in-process. ``None`` sends it down the
        general path."""
        if self.hooks.want_answers or self.budgets is not None or not never_waits(self.stores.breakers):
            return None
        # (what needs no routing first: a session that will not take the lane is routed once, down the general path)
        if (request.providers is not None and len(request.providers) > 1) or is_cacheable(request, self.cache_config):
            return None
        targets = self.session_targets(request, context)
        if type(targets) is not list or len(targets) != 1:
            return None  # (a refusal: the general path words and records it)
        target = targets[0]
        if self._coalescing_key(request, target) is not None:
            return None
        if context.trace_id is None:  # every request has one: it joins its ledger row, audit record and span
            context = context.traced(random_hex(2))
        return Lane(context, target)

    def session_targets(self, request: CompletionRequest, context: RequestContext) -> list[Target] | GTLError:
        """``checked_targets`` for a session that will run: a request with no messages or no model is refused
        first (a JSON frame cannot omit them; a gRPC request leaves unset fields empty, and no model was
        routing's "unknown model ''"). Asking who serves a name alone (``/v1/models/{id}``) is not refused."""
        if not request.messages:
            return InvalidRequestError("messages is empty: a completion needs at least one message")
        if not request.model and not request.providers:
            return InvalidRequestError("model is empty: name the model to run (`gtl models` lists them)")
        return self.checked_targets(request, context)

    def checked_targets(self, request: CompletionRequest, context: RequestContext) -> list[Target] | GTLError:
        """Who may serve ``request`` for ``context``, in routing's order — or the error that refuses it
        before anything runs: too many pieces, an ``http:`` image at a gateway, a malformed
        ``tool_choice``, no route, or a token's allow-lists."""
        try:
            over = request_limit_refusal(request)  # before any per-message work: a request of too many pieces
            if over is not None:
                raise InvalidRequestError(over)
            if self.audience == GATEWAY and (where := plain_http_image(request)) is not None:
                raise InvalidRequestError(
                    f"{where}: a gateway takes images by https: or data: URL only (an http: URL would be "
                    "fetched by the provider's server from its own network)"
                )
            if request.tool_choice is not None:
                check_tool_choice(request)
            return self._allowed(self._targets(request, context), context, request)
        except GTLError as exc:
            return exc

    def targets(self, request: CompletionRequest) -> list[Target]:
        """The deployments and models that may serve ``request``, in routing's order (``Router.targets``;
        remembered for a model name alone, see ``_targets``). Safe from any thread."""
        return self._targets(request)

    def _targets(self, request: CompletionRequest, context: RequestContext | None = None) -> list[Target]:
        """``router.targets(request)``, remembered for a model name alone (the common request).

        Resolving a name asks the catalog about every provider type (~12 µs a request). For a name
        with no ``provider``/``providers`` — bare, or ``deployment:model`` naming a configured
        deployment — the answer depends only on the deployments and the catalog, which change only by
        ``reload`` (which starts a new memo). (A ``provider_type:model`` is not remembered: the types
        registered may change.) Failures are not remembered; the memo is emptied when it holds
        ``_TARGETS_MEMO`` names (they come from callers)."""
        try:
            return self._routed(request, context)
        except (ModelNotFoundError, InvalidRequestError) as exc:
            if context is None or self.audience != GATEWAY or GATEWAY_LIST not in exc.message:
                raise
            exc.message = exc.message.replace(GATEWAY_LIST, listing_for(context))
            raise

    def _routed(self, request: CompletionRequest, context: RequestContext | None) -> list[Target]:
        """``_targets`` before a gateway's errors are worded for the caller's API."""
        model = request.model
        # read once, the memo first: ``reload`` replaces the router, then the memo, so a caller's thread
        # (``targets``) that sees the new memo sees the new router too, and never stores an answer of
        # the old routing in it
        memo = self._bare_targets
        router = self.router
        chosen_elsewhere = ":" in model and model.partition(":")[0] not in router.deployments  # a provider type
        if request.providers or request.provider or chosen_elsewhere:
            return router.targets(request, self._visible(context))
        known = memo.get(model)
        if known is None:  # (a remembered answer needs no visibility: only errors name models)
            known = tuple(router.targets(request, self._visible(context)))
            if len(memo) >= _TARGETS_MEMO:
                memo.clear()
            memo[model] = known
        return list(known)

    @property
    def audience(self) -> str:
        """Who reads routing's errors (``engine.routing``): ``"embedded"`` or ``"gateway"``."""
        return self.router.audience

    def set_audience(self, audience: str) -> None:
        """Word routing's errors, and those of an upstream that cannot be reached (``HttpRunner``), for
        ``audience`` from the next request on (``engine.routing``): a gateway serving an engine built for
        the embedded client makes it a gateway's."""
        self.router = Router(self.deployments, self.catalog, audience=audience)
        self._bare_targets = {}
        self.http.names_upstream = audience != GATEWAY

    def _visible(self, context: RequestContext | None) -> Visible | None:
        """What routing's errors may name to a gateway's caller (``engine.routing``): the models its
        allow-lists permit, and none without the ``models:read`` scope (the gateway's for listing models)."""
        if self.audience != GATEWAY or context is None:
            return None
        if MODELS_READ not in context.scopes:
            return _nothing_visible
        return context.allows

    def _allowed(self, targets: list[Target], context: RequestContext, request: CompletionRequest) -> list[Target]:
        """The targets the context's allow-lists permit (a token's); ``FORBIDDEN`` when none is left.
        A gateway's refusal names only what the caller asked for: never a deployment it did not name."""
        if context.allowed_deployments is None and context.allowed_models is None:
            return targets
        permitted = [target for target in targets if context.allows(target.name, target.model)]
        if targets and not permitted:
            if self.audience == GATEWAY:  # its own allow-lists, to a token that may list models
                may = f"; it may use {context.allowances()}" if MODELS_READ in context.scopes else ""
                raise PermissionDeniedError(f"this token may not use {_asked_for(request)}{may}")
            names = ", ".join(f"{target.name}:{target.model}" for target in targets)
            raise PermissionDeniedError(f"this token may not use {names}")
        return permitted

    def permitted_deployment(self, name: str, context: RequestContext) -> Deployment:
        """The deployment ``name`` (a deployment, or a provider type with one) if the context's
        allow-lists let it be used; one they do not is answered as if it did not exist (a gateway's
        queries must neither reach it nor confirm it)."""
        deployment = self.router._deployment(name)
        if context.allowed_deployments is not None and deployment.name not in context.allowed_deployments:
            raise ModelNotFoundError(f"this gateway has no deployment or provider named {name!r}")
        return deployment

    def _internal_error(self, request: CompletionRequest, record: SessionRecord, exc: Exception) -> Error:
        """The ``INTERNAL`` error that ends a session a bug below ``stream_batches`` broke (logged with
        its traceback): the session and its ledger row still end properly, instead of an exception
        that leaves both open."""
        log.exception("session %r failed inside the engine", request.session_id, exc_info=exc)
        return Error(
            session_id=request.session_id,
            code="INTERNAL",
            message=f"gtl_nb internal error: {type(exc).__name__}: {exc}",
            provider=record.path[-1] if record.path else None,
        )

    async def breaker_states(self) -> dict[str, dict[str, Any]]:
        """Each deployment's circuit: state, failures, error rate, when it may be tried again."""
        snapshots = await self.stores.breakers.snapshots(self.deployments)
        return {name: {k: v for k, v in snap.items() if k != "allowed"} for name, snap in snapshots.items()}

    # -- routing ------------------------------------------------------------------------------

    def _healthy(self, deployment: str) -> bool:
        snapshot = self._health.get(deployment)
        return True if snapshot is None else bool(snapshot.get("allowed", True))

    def _price_of(self, target: Target) -> float | None:
        if self.catalog is None:
            return None
        info = self.catalog.model(target.deployment.type, target.model)
        if info is None or info.cost_per_1k_input is None or info.cost_per_1k_output is None:
            return None
        return info.cost_per_1k_input + info.cost_per_1k_output

    async def _ordered(self, request: CompletionRequest, targets: list[Target]) -> list[Target]:
        if len(targets) == 1:
            return targets  # open or not, it is the only one: no circuit to read (its breaker still decides)
        health = await self.stores.breakers.snapshots({t.name for t in targets})
        self._health = health  # read by the synchronous ordering below, before any other await
        if self.router.explicit(request) or len(targets) < 2:
            # the request's own order is the failover order; open circuits still go last
            healthy = [t for t in targets if self._healthy(t.name)]
            return healthy + [t for t in targets if t not in healthy]
        return self.strategy.order(targets, request.model)

    async def _source(
        self,
        request: CompletionRequest,
        targets: list[Target] | GTLError,
        record: SessionRecord,
        refusal: Error | None,
        machine: SessionStateMachine,
        started: float,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """Where the session's batches after ``queued`` come from: the refusal or routing's error, a
        cached answer, another session's call of the same request (coalescing), or the attempts
        themselves — returned, not passed on, so the attempts' batches reach ``stream_batches`` with
        no level in between."""
        sid = request.session_id
        if refusal is not None:
            return _batches_of([refusal])
        if isinstance(targets, GTLError):
            return _batches_of([targets.to_event(sid)])
        if len(targets) > 1:  # (the only one is tried, open or not: its breaker decides)
            targets = await self._ordered(request, targets)
        key = None
        if is_cacheable(request, self.cache_config):
            key = cache_key(targets[0].name, targets[0].model, request, self._cache_owner())
            try:
                hit = await self.stores.cache.get(key)
            except Exception as exc:  # a shared cache that is down is a miss, never a failed request
                log.warning("cache: lookup failed, answering without it: %s", exc)
                hit = None
            if hit is not None:
                record.cache_hit = True
                record.path.append(hit.deployment)
                record.model = hit.model
                if self.hooks:
                    self.hooks.emit(CacheHit(sid, hit.deployment, record.handle))
                answer: list[StreamEvent] = []
                for event in replay(hit, sid):
                    if isinstance(event, Done):
                        event = msgspec.structs.replace(event, latency_ms=_ms(self.clock() - started))
                    machine.advance(event)
                    answer.append(event)
                return _batches_of(answer)
        flight_key = key or self._coalescing_key(request, targets[0])
        context = REQUEST_CONTEXT.get(None)
        if flight_key and context is not None and context.provider_keys:  # share a call only on the same key
            flight_key += "|keys:" + ",".join(f"{k}={v}" for k, v in sorted(context.provider_keys.items()))
        flight = self._flights.get(flight_key) if flight_key else None
        if flight is not None and not flight.abandoned:
            record.coalesced = True
            record.flight = flight
            record.path.append(targets[0].name)
            record.model = targets[0].model
            return _one_by_one(self._read_flight(flight, sid, machine, started))
        attempts = self._attempts(request, targets, record, machine, started, key)
        if not flight_key:
            return attempts
        # The first of its kind here: the call (or the reading of another replica's) runs in a task of
        # its own that publishes to the flight, so a reader leaving (this one included) never cuts the
        # others off; the call is cancelled only when its last reader has gone.
        flight = Flight()
        self._flights[flight_key] = flight
        record.flight = flight
        flight.publish(Status(session_id=sid, state="queued"))  # (as the session began)
        flight.task = asyncio.ensure_future(self._fly(flight, flight_key, attempts, sid))
        return _one_by_one(self._read_flight(flight, sid, machine, started, own=(record, targets[0])))

    async def _read_flight(
        self,
        flight: Flight,
        sid: str,
        machine: SessionStateMachine,
        started: float,
        *,
        own: tuple[SessionRecord, Target] | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """``flight``'s events for session ``sid``, timed and checked as its own. ``own``: the record and
        first target of the session the flight was started for — while this replica runs the call, its
        attempts already checked and stamped the events; when another replica runs it, the session is
        recorded as coalesced, like any follower."""
        first: float | None = None
        async with aclosing(flight.follow(sid, own=own is not None)) as events:
            async for event in events:
                if own is not None:
                    if not flight.remote:
                        yield event
                        continue
                    record, target = own
                    if not record.coalesced:
                        record.coalesced = True
                        record.path.append(target.name)
                        record.model = target.model
                if first is None and type(event) in CONTENT:
                    first = self.clock()
                if isinstance(event, Done):
                    event = msgspec.structs.replace(
                        event,
                        ttft_ms=_ms(first - started) if first else None,
                        latency_ms=_ms(self.clock() - started),
                    )
                machine.advance(event)
                yield event

    async def _fly(self, flight: Flight, flight_key: str, attempts: AsyncIterator[list[StreamEvent]], sid: str) -> None:
        """Run the call of ``flight_key`` here, or read the one another replica runs (``self.flights``
        decides), publishing every event to ``flight``."""
        lead: FlightLead | None = None
        try:
            role: FlightLead | FlightFollow = await self.flights.join(flight_key)
            if not role.leads:
                if await self._follow_remote(flight, cast(FlightFollow, role), sid):
                    return  # (``attempts`` never started: nothing to close)
                role = LOCAL_LEAD  # lost before its first event: run the call here, unshared
            lead = shared = cast(FlightLead, role)
            flight.remote, flight.claim = False, lead.claim
            flight.on_idle = lambda: shared.idle(flight)  # readers on other replicas may keep it running
            async with aclosing(attempts) as batches:  # type: ignore[type-var]
                async for batch in batches:
                    for event in batch:
                        flight.publish(event)
                        shared.publish(event)
        except asyncio.CancelledError:
            pass  # every reader left
        except Exception as exc:  # a bug must still end every reader's session
            log.exception("session %r failed inside the engine", sid)
            error = Error(session_id=sid, code="INTERNAL", message=f"gtl_nb internal error: {exc!r}")
            flight.publish(error)
            if lead is not None:
                lead.publish(error)
        finally:
            flight.close()
            if lead is not None:
                lead.finish()
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]

    async def _follow_remote(self, flight: Flight, follow: FlightFollow, sid: str) -> bool:
        """Publish the events of the call another replica runs, re-addressed to ``sid``. ``False`` when
        it was lost before any of its answer — nothing but statuses, which the call run here sends again
        (a provider slow to its first token) — and this replica then runs the call itself; lost later,
        the readers end with a retryable error."""
        flight.remote, flight.claim, flight.on_idle = True, follow.claim, None
        answered = False  # a statuses-only start commits nothing: the call run here sends its own again
        try:
            async with aclosing(follow.events()) as events:  # type: ignore[type-var]
                async for event in events:
                    flight.publish(msgspec.structs.replace(event, session_id=sid))
                    answered = answered or type(event) is not Status
        except FlightLost as lost:
            if not answered:
                log.info("coalescing: %s; running the call here", lost)
                return False
            message = f"the upstream call this request shared was lost: {lost}"
            flight.publish(Error(session_id=sid, code="PROVIDER_UNAVAILABLE", message=message, retryable=True))
        return True

    def _coalescing_key(self, request: CompletionRequest, target: Target) -> str | None:
        """Identical deterministic requests (or ones opted into caching) share one upstream call."""
        if request.cache is False:
            return None
        deterministic = request.temperature is not None and request.temperature == 0
        if not (deterministic or request.cache is True or self.cache_config.cache_nonzero_temperature):
            return None
        key = "flight:" + cache_key(target.name, target.model, request, self._cache_owner())
        # a flight may end at the context fallback: only callers alike in whether they may use it share one
        # (a token without it must not be handed the fallback's answer, nor one with it the refusal)
        if self.context_fallbacks and self.context_fallback_for(target) and not self._usable_fallback(target):
            key += ":no-fallback"
        return key

    def _cache_owner(self) -> list[str] | None:
        """Whose answers the running request may read and share (``cache.partition``): behind a gateway,
        as ``[cache] scope`` says; embedded, everyone's (no tenants, and the caller holds every key)."""
        if self.audience != GATEWAY:
            return None
        return partition(self.cache_config.scope, REQUEST_CONTEXT.get(None))

    async def _attempts(
        self,
        request: CompletionRequest,
        targets: list[Target],
        record: SessionRecord,
        machine: SessionStateMachine,
        started: float,
        key: str | None,
        *,
        first: tuple[str | None, AttemptOutcome | None] | None = None,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """Try the targets in order, in batches: breakers, retries with backoff, failover, the context fallback.

        A breaker's probe slot is held from ``acquire`` until a verdict is recorded, inside one
        ``try``/``finally`` that hands it back on any exit (a consumer that stops reading, a cancel
        during back-off). Success bookkeeping (breaker, latency, cache) happens *before* ``done`` is
        yielded, so a consumer that stops at ``done`` loses none of it.

        ``first``: what the lane (``_run_lane``) already did at the first target — the breaker's grant it
        got, and the outcome of the attempt it made with it (``None``: it made none) — taken up from there.
        """
        sid = request.session_id
        breakers = self.stores.breakers
        deadline = self.retry.deadline_from(started)
        targets = list(targets)
        tried = {(t.name, t.model) for t in targets}
        last_failure: tuple[Target, Error] | None = None
        # the error the session ends with when no target answers: the last failure of a call — or, when
        # every target refused before any call (``uncallable``: each deployment refusing the same
        # max_tokens), the first refusal, of the deployment the request would have gone to, not of
        # whichever the list happened to end on
        reported: tuple[Target, Error] | None = None  # (its target: the row names that one's model too)
        refused: list[str] = []
        called: list[str] = []  # the deployment of each call made (the lane's first included): an error says so
        index = 0
        while index < len(targets):
            target = targets[index]
            index += 1
            made: AttemptOutcome | None = None  # the attempt the lane made, taken up as this target's first
            if first is not None:
                (grant, made), first = first, None
            else:
                grant = await self._acquire(target.name)
            if grant is None:
                refused.append(target.name)
                continue
            try:
                if last_failure is not None:
                    previous, failed = last_failure
                    reason = f"{failed.code}: {failed.message}"
                    status = Status(
                        session_id=sid,
                        state="failover",
                        from_provider=previous.name,
                        to_provider=target.name,
                        reason=reason,
                    )
                    machine.advance(status)
                    if self.hooks:
                        self.hooks.emit(FailedOver(sid, previous.name, target.name, reason, record.handle))
                    yield [status]
                if made is None:  # (the lane named the target it tried)
                    record.path.append(target.name)
                    record.model = target.model
                attempt = 0
                while True:  # attempts at this target, each holding the breaker grant
                    attempt += 1
                    if made is not None:
                        outcome, made = made, None
                    else:
                        if self.hooks:
                            self.hooks.emit(AttemptStarted(sid, target.name, target.model, attempt, record.handle))
                        outcome = AttemptOutcome(events=[] if key is not None else None)
                        batches = self._one_attempt(request, target, machine, started, outcome)
                        try:  # (``aclosing`` without its two coroutines an attempt)
                            async for batch in batches:
                                if type(batch[-1]) is not Done:
                                    yield batch
                                    continue
                                if len(batch) > 1:  # the answer reaches the caller even if the bookkeeping is cancelled
                                    yield batch[:-1]
                                self._breaker_changed(target.name, await breakers.record_success(target.name))
                                grant = None
                                await self._remember_success(request, target, outcome, key)
                                yield batch[-1:]
                        finally:
                            await batches.aclose()
                    if outcome.done is not None:
                        return
                    failed = outcome.error
                    assert failed is not None
                    if failed.retryable and _refuses_the_request(failed):
                        # the provider's words on the request's content (a proxy's ``x-should-retry: true``
                        # on its 400, say): no retry, no failover, no verdict on the provider's breaker
                        failed = outcome.error = msgspec.structs.replace(failed, retryable=False, retry_after=None)
                    if outcome.uncallable:
                        # this process cannot call it (``_uncallable``: its operator's set-up), or its API
                        # cannot carry the request (``NotServedHere``): no verdict on the provider for a
                        # breaker replicas may share, no retry (none mends it): fail over
                        last_failure = (target, failed)
                        reported = reported or (target, failed)
                        break
                    called.append(target.name)  # (a call was made: a refusal before any is no attempt)
                    reported = (target, failed)
                    if failed.retryable and _momentary_limit(failed):
                        if grant == "probe":  # no verdict, but the probe's slot is given back before a retry
                            await asyncio.shield(breakers.release(target.name))
                        grant = None
                    elif failed.retryable:
                        # the provider's Retry-After: an opening circuit stays open until then, no longer (breaker.py)
                        change = await breakers.record_failure(target.name, retry_after=failed.retry_after)
                        self._breaker_changed(target.name, change)
                        grant = None
                    if _account_used_up(failed) and (not outcome.content or _caller_takes_failover()):
                        # this deployment's account (its credit, its quota for the period) is used up: never
                        # it again in this request, but another deployment is another account, and may answer.
                        # No verdict on its circuit: an open one would tell the next caller "retry in 30 s"
                        # where the provider's words (no credit) are the truth, and it answers them at once
                        last_failure = (target, failed)
                        break
                    if not failed.retryable:
                        fallback = self._context_fallback(failed, target)
                        if (
                            fallback is None
                            or (fallback.name, fallback.model) in tried
                            or (outcome.content and not _caller_takes_failover())
                        ):
                            yield [with_attempts(failed, called)]
                            return
                        tried.add((fallback.name, fallback.model))
                        targets.insert(index, fallback)
                        last_failure = (target, failed)
                        break
                    last_failure = (target, failed)
                    if outcome.content:
                        if not _caller_takes_failover():  # it cannot discard what it passed on: the end
                            yield [with_attempts(failed, called)]
                            return
                        break  # never retry once content or usage was sent: fail over, which discards it
                    delay = self.retry.next_delay(attempt, failed.retry_after, self.clock(), deadline)
                    if delay is None:
                        break
                    grant = await self._acquire(target.name)
                    if grant is None:
                        break
                    reason = f"{failed.code}: {failed.message}"
                    status = Status(session_id=sid, state="retrying", attempt=attempt + 1, reason=reason)
                    machine.advance(status)
                    if self.hooks:
                        self.hooks.emit(RetryScheduled(sid, target.name, attempt + 1, delay, reason, record.handle))
                    yield [status]
                    await self._sleep(delay)
            finally:
                if grant == "probe":
                    # no verdict: a caller mistake, or the session was cancelled (shielded, so a
                    # cancellation cannot leave the probe slot taken)
                    await asyncio.shield(breakers.release(target.name))
        if last_failure is not None:
            target, failed = reported or last_failure
            record.model = target.model  # (the row's deployment is the error's: its model with it)
            yield [with_attempts(failed, called)]
            return
        would_refuse = self._refusal_without_call(request, [t for t in targets if t.name in refused])
        if would_refuse is not None:
            # every deployment whose circuit is open would refuse this request anyway: its reason is
            # the caller's to hear, not a wait that would end in that refusal
            target, failed = would_refuse
            record.model = target.model
            yield [with_attempts(failed, called)]
            return
        snapshots = await breakers.snapshots(refused)
        # a circuit open until a time says so; one half-open whose probe is under way (here or on
        # another replica) names no time: its verdict comes with that call, so ask again shortly
        retry_in = [snapshots.get(name, {}).get("retry_in") for name in refused]
        wait = min((PROBE_UNDER_WAY_WAIT if r is None else r for r in retry_in), default=None)
        # rounded up, as a provider's wait is (and the Retry-After header): never "retry in 0 s"
        when = f"; retry in {math.ceil(wait)} s" if wait else ""
        # (the breaker's word, then what it means to a caller who has never heard of one)
        them = "it" if len(refused) == 1 else "them"
        paused = f" — requests to {them} are paused after recent failures"
        every_circuit_open = Error(
            session_id=sid,
            code="PROVIDER_UNAVAILABLE",
            message=f"every circuit is open ({', '.join(refused)}){paused}{when}",
            retryable=True,
            retry_after=wait,
        )
        yield [every_circuit_open]

    def _refusal_without_call(self, request: CompletionRequest, targets: list[Target]) -> tuple[Target, Error] | None:
        """The first of ``targets`` with its refusal when each of them would refuse ``request`` before any
        call — a ``max_tokens`` above what its model writes, what its API cannot carry (``NotServedHere``),
        a request its dialect refuses — asked of the dialect without calling it (its circuit is open).
        ``None`` when one of them might answer, or cannot be asked (a local provider, credentials this
        process lacks): then the circuits are what the caller hears of."""
        first: tuple[Target, Error] | None = None
        sid = request.session_id
        for target in targets:
            refused: Error | None = None
            if request.max_tokens is not None:
                refused = self._over_output_limit(request.max_tokens, target, sid)
            if refused is None:
                try:
                    provider = get_provider(target.deployment.type)
                    if is_local(provider):
                        return None
                    deployment, _ = self._credentials_for(target)
                except Exception:  # (the call would have said so; here it is only not knowable)
                    return None
                sent = msgspec.structs.replace(request, model=target.model, provider=target.name, providers=None)
                try:
                    provider.build_request(sent, deployment, now=self.wall_clock())
                except InvalidRequestError as exc:  # the caller's request, as the call would have refused it
                    refused = with_provider(scrubbed(exc.to_event(sid), deployment), target)
                except Exception:
                    return None
            if refused is None:
                return None
            first = first or (target, refused)
        return first

    async def _acquire(self, deployment: str) -> str | None:
        """``BreakerStore.acquire``, safe against a cancel: a probe slot granted while the caller was
        being cancelled is handed back rather than held until its lease runs out."""
        breakers = self.stores.breakers
        if never_waits(breakers):
            return await breakers.acquire(deployment)  # no suspension, so no cancel can come in between
        acquiring = asyncio.ensure_future(breakers.acquire(deployment))
        try:
            return await asyncio.shield(acquiring)
        except asyncio.CancelledError:

            def give_back(done: asyncio.Future[str | None]) -> None:
                if not done.cancelled() and done.exception() is None and done.result() == "probe":
                    task = asyncio.ensure_future(breakers.release(deployment))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

            acquiring.add_done_callback(give_back)
            raise

    def _breaker_changed(self, deployment: str, change: tuple[str, str] | None) -> None:
        if change is not None and self.hooks:
            self.hooks.emit(BreakerChanged(deployment, change[0], change[1]))

    async def _remember_success(
        self, request: CompletionRequest, target: Target, outcome: AttemptOutcome, key: str | None
    ) -> None:
        """What a successful attempt teaches: its own time to first token, and a cache entry stored
        under the key of the deployment that actually answered."""
        if outcome.ttft is not None:
            self.strategy.observe_ttft(target.name, outcome.ttft)
        if key is not None and outcome.events is not None:
            answer = CachedAnswer.from_events(
                outcome.events, deployment=target.name, model=target.model, stored_at=self.wall_clock()
            )
            if answer is not None:
                try:
                    owner = self._cache_owner()
                    await self.stores.cache.set(cache_key(target.name, target.model, request, owner), answer)
                except Exception:  # a cache that cannot store must not fail the answer
                    log.exception("cache: could not store the answer of %r", request.session_id)

    def _context_fallback(self, failed: Error, target: Target) -> Target | None:
        """Where a prompt ``target`` found too long goes next, if anywhere: the configured fallback,
        when the request's context (a token's allow-lists) may use it — else the request ends with the
        provider's refusal, as it would have without a fallback (the fallback spends another
        deployment's key: a token must not reach through it what it may not ask for)."""
        if failed.code != "CONTEXT_LENGTH_EXCEEDED":
            return None
        return self._usable_fallback(target)

    def _usable_fallback(self, target: Target) -> Target | None:
        """``context_fallback_for(target)`` when the running request's context (a token's allow-lists) may
        use it, else ``None``."""
        fallback = self.context_fallback_for(target)
        context = REQUEST_CONTEXT.get(None)
        if fallback is not None and context is not None and not context.allows(fallback.name, fallback.model):
            return None
        return fallback

    def context_fallback_for(self, target: Target) -> Target | None:
        """Where ``[routing] context_fallbacks`` sends a prompt too long for ``target``, if anywhere."""
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
        outcome: AttemptOutcome,
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """One call to one target: yields its validated events in batches; leaves ``done`` or ``error``
        in ``outcome`` (an ``error`` is not yielded: the attempt loop decides what follows it).

        An HTTP deployment's batches come straight from ``HttpRunner.run`` and are priced and scrubbed
        of the deployment's key here, not in a generator of their own: one level less for every read
        of every stream (see ``_call``)."""
        sid = request.session_id
        attempt_started = self.clock()
        attempt, deployment = self._call(request, target, outcome)
        kept = outcome.events
        # once an answer flows (content seen, first token timed, the session open), a token needs no
        # pricing, stamping or state change: the bulk of every stream skips the checks (``_checked``)
        flowing = False
        try:
            async for batch in attempt:
                if flowing and TOKENS.issuperset(map(type, batch)):
                    if kept is not None:
                        kept.extend(batch)
                    yield batch
                    continue
                checked: list[StreamEvent] = []
                for event in batch:
                    kind = type(event)
                    if flowing and kind is Token:
                        if kept is not None:
                            kept.append(event)
                        checked.append(event)
                        continue
                    event = self._checked(event, kind, target, deployment, machine, started, attempt_started, outcome)
                    if event is None:
                        break
                    if kept is not None:
                        kept.append(event)
                    checked.append(event)
                    if outcome.done is not None:
                        break
                    flowing = outcome.content and outcome.first is not None and machine.state is SessionState.OPEN
                if checked:
                    yield checked
                if outcome.done is not None or outcome.error is not None:
                    return
        except GTLError as exc:  # a dialect refusing the request (e.g. an unsupported image URL)
            if deployment is None:
                raise
            refused_by_dialect(exc, target, deployment, sid, outcome)
            return
        finally:
            await close_attempt(attempt, target, sid)
        outcome.error = ended_unfinished(target, sid)

    def _checked(
        self,
        event: StreamEvent,
        kind: type,
        target: Target,
        deployment: Deployment | None,
        machine: SessionStateMachine,
        started: float,
        attempt_started: float,
        outcome: AttemptOutcome,
    ) -> StreamEvent | None:
        """One event of an attempt as the caller may see it — ``usage`` priced, an ``error`` scrubbed of
        the deployment's key, ``done`` stamped, the session's order kept — or ``None`` when it ends the
        attempt unseen: a provider's ``error`` (the attempt loop decides what follows) or an event out of
        order (``INTERNAL``), left in ``outcome``. ``outcome`` also learns the first content's time, that
        content reached the caller, and the ``done``. Every event goes through here until the answer
        flows; after that, a token needs none of it."""
        if kind is Usage:
            event = self._priced(event, target)
        elif kind is Error and deployment is not None:  # a provider may quote the key it refused
            event = scrubbed(event, deployment)  # type: ignore[arg-type]
            if self.audience == GATEWAY:
                event = self._for_gateway_caller(event, target, deployment)  # type: ignore[arg-type]
            if event.code == "MODEL_NOT_FOUND":  # type: ignore[union-attr]
                event = self._with_close_models(event, target)  # type: ignore[arg-type]
        done = kind is Done
        if done:
            event = _stamp(event, target, deployment, started, outcome.first, self.clock())  # type: ignore[arg-type]
        elif outcome.first is None and kind in CONTENT:
            outcome.first = first = self.clock()
            outcome.ttft = first - attempt_started  # this attempt's own, for lowest_latency
        elif kind is Error:
            outcome.error = event  # type: ignore[assignment]
            return None
        try:
            machine.advance(event)
        except SessionStateError as exc:
            outcome.error = Error(
                session_id=event.session_id,
                code="INTERNAL",
                message=f"{target.name} broke the event order: {exc}",
                provider=target.name,
            )
            return None
        if not outcome.content and kind in ANSWER:
            outcome.content = True  # the caller has it: a retry would duplicate it
        if done:
            outcome.done = event  # type: ignore[assignment]
        return event

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

    async def list_models(self, deployment_name: str, key_name: str | None = None) -> list[str]:
        """Live model listing from the provider's own endpoint (local providers list their models),
        asked with the deployment's key — or the stored key ``key_name`` (a token's ``provider_keys``
        choice: a fine-tuned model of one team's account is listed to that team only)."""
        names, _ = await self.listed_models(deployment_name, key_name)
        return names

    async def provider_fetch(
        self, description: Any, deployment: Deployment, doing: str, provider: str | None = None
    ) -> tuple[int, Any, bytes]:
        """One call of a provider outside a completion (a model list, a token count), ``description`` its
        request: the answer's status, headers and body, or ``ProviderUnavailableError`` saying it could not
        be reached — ``doing`` ("cannot list models from") the words before the deployment; a gateway's
        clients learn the deployment, not the address (``HttpRunner.names_upstream``). ``provider``: the
        name the error carries (the deployment's by default)."""
        try:
            return await self.http.fetch(description, self.deployment_timeouts.get(deployment.name))
        except Exception as exc:  # (an HTTP library's own errors too: the engine is the boundary that translates)
            if isinstance(exc, asyncio.TimeoutError):
                reason = "no answer within the timeout"
            elif isinstance(exc, (OSError, TransportError)):
                reason = str(exc) or type(exc).__name__
            else:
                reason = f"{type(exc).__name__}: {exc}"
            message = self.http.unreachable(doing, description, deployment, reason)
            raise ProviderUnavailableError(redact(message), provider=provider or deployment.name) from None

    async def listed_models(
        self, deployment_name: str, key_name: str | None = None
    ) -> tuple[list[str], dict[str, int]]:
        """``list_models``'s names, and when the listing says each was made (Unix seconds), for the
        models whose provider's list gives a time (``model_times``: OpenAI's ``created``, Anthropic's
        ``created_at``); one call to the provider either way."""
        deployment = self.router._deployment(deployment_name)
        provider = get_provider(deployment.type)
        if is_local(provider):
            return [model.name for model in provider.models()], {}
        if not hasattr(provider, "models_request"):
            raise InvalidRequestError(f"{deployment.type} has no model listing endpoint")
        deployment = self.caller_credentials(deployment, key_name)  # a set-up mistake: the operator's log
        description = provider.models_request(deployment, now=self.wall_clock())
        status, headers, body = await self.provider_fetch(description, deployment, "cannot list models from")
        if status >= 400:
            request = CompletionRequest(session_id="models", model="", messages=[])
            event = scrubbed(provider.decode_error(request, deployment, status, headers, body), deployment)
            if self.audience == GATEWAY:  # as a completion's: the provider's words go to the operator's log
                event = self._for_gateway_caller(event, Target(deployment, ""), deployment)
            raise error_from_event(event)
        try:
            times = getattr(provider, "model_times", None)
            return provider.parse_models(body), times(body) if times is not None else {}
        except ValueError as exc:
            raise ProviderUnavailableError(f"unreadable model list from {deployment.name}: {exc}") from None

    async def count_tokens(self, request: CompletionRequest, *, context: RequestContext | None = None) -> TokenCount:
        """``request``'s input tokens, counted without running it (``engine.counting``): the provider's own
        count where its API has one (Anthropic, Gemini) or the local generator's (echo), else the gateway's
        estimate — ``TokenCount.exact`` says which. Routed as the completion would be, within the
        context's allow-lists; a provider call counts against the principal's ``requests_per_minute``.
        Raises the ``GTLError`` a completion would end with before any answer (no route, not allowed,
        the provider's refusal), or the provider's trouble when no deployment could count."""
        if context is None:
            context = RequestContext(principal="")
        scope = REQUEST_CONTEXT.set(context)  # (the model's "did you mean" reads it, as an attempt's does)
        try:
            return await counted_input(self, request, context)
        except (GTLError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug below is the caller's INTERNAL, as a session's, never a bare traceback
            log.exception("counting the tokens of %r failed inside the engine", request.session_id)
            raise InternalError(f"gtl_nb internal error: {type(exc).__name__}: {exc}") from None
        finally:
            REQUEST_CONTEXT.reset(scope)

    def provider_error(
        self,
        provider: Any,
        request: CompletionRequest,
        target: Target,
        deployment: Deployment,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Error:
        """A provider's non-2xx answer to a call other than a completion's (a token count) as that call's
        caller reads it: what ``_checked`` makes of a completion's error — the deployment's keys scrubbed,
        a gateway's caller told only what is about its request, an unknown model's "did you mean"."""
        said = provider.decode_error(request, deployment, status, headers, body)
        event = with_provider(scrubbed(said, deployment), target)
        if self.audience == GATEWAY:
            event = self._for_gateway_caller(event, target, deployment)
        if event.code == "MODEL_NOT_FOUND":
            event = self._with_close_models(event, target)
        return event

    async def aclose(self) -> None:
        """Close the HTTP pool, the flight registry and the stores — once the writes still running for
        cancelled requests (a row's end, a reservation given back) have landed, for a while at most."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=bookkeeping.CANCELLED_WRITE_WAIT)
        await self.http.aclose()
        await self.flights.aclose()
        await self.stores.aclose()

    # -- one attempt at one deployment --------------------------------------------------------

    def _uncallable(self, exc: GTLError, target: Target, sid: str, outcome: AttemptOutcome) -> Error:
        """The error an attempt becomes when ``target``'s credentials cannot be had.

        A gateway's own set-up (a ``ConfigurationError``: a key missing from its environment or its
        vault) is not its caller's mistake, nor the caller's to fix: the operator reads it in the log
        (once for each deployment and reason), the caller hears that the deployment cannot be called —
        retryable, and the attempt is marked so (``outcome.uncallable``): the attempt loop fails over at
        once, with no retry and no verdict for the provider's breaker. Anything else (a token's choice
        of stored key) is the caller's, as it was raised."""
        if self.audience != GATEWAY or not isinstance(exc, ConfigurationError):
            return with_provider(exc.to_event(sid), target)
        outcome.uncallable = True
        return self._setup_incomplete(exc, target.name).to_event(sid)

    def _setup_incomplete(self, exc: ConfigurationError, name: str) -> ProviderUnavailableError:
        """A gateway's own set-up mistake about deployment ``name`` (``exc``: a key missing from its
        environment or its vault) as its caller hears it — retryable ``PROVIDER_UNAVAILABLE`` with no path
        and no key name; the operator's words go to the log, once for each deployment and reason."""
        if self._told_operator.get(name) != exc.message:
            self._told_operator[name] = exc.message
            log.error("deployment %s cannot be called: %s", name, exc.message)
        message = (
            f"deployment {name!r} cannot be called: the gateway's set-up for it is incomplete "
            "(its operator is told so in the gateway's log)"
        )
        return ProviderUnavailableError(message, retryable=True, provider=name)

    def caller_credentials(self, deployment: Deployment, key_name: str | None = None) -> Deployment:
        """``with_key`` for a request of a caller other than a completion (a model listing): a gateway's
        set-up mistake (its vault lacks the key its table names, a key variable unset) is raised as
        ``_uncallable`` words it for a completion — ``PROVIDER_UNAVAILABLE``, the detail in the log only.
        A token's own choice of stored key is the caller's, raised as it is."""
        try:
            resolved = with_key(self.credentials, deployment, key_name)
            if self.audience == GATEWAY:
                _check_credentials(resolved, self.credentials)
        except ConfigurationError as exc:
            if self.audience != GATEWAY:
                raise
            raise self._setup_incomplete(exc, deployment.name) from None
        if self._told_operator and key_name is None:  # mended: a later breakage is told again (as ``_call``)
            self._told_operator.pop(deployment.name, None)
        return resolved

    def _for_gateway_caller(self, event: Error, target: Target, deployment: Deployment) -> Error:
        """A provider's error as a gateway's caller reads it (``OPERATORS_SIDE``): about the caller's
        request, in the provider's words with its account ids redacted; about the gateway's own account
        with the provider, in the gateway's words, the provider's going to the operator's log."""
        if event.code == "AUTH_FAILED":
            return gateways_key_refused(event, target, self._described(deployment))
        if operators_side(event):
            return reworded_for_caller(event, target)
        return without_account_ids(event)

    def _with_close_models(self, event: Error, target: Target) -> Error:
        """A provider's ``MODEL_NOT_FOUND`` for a model the deployment was asked for by name — a typo after
        its prefix, ``anthropic:claude-sonnet-4-55`` — with the "did you mean" that an unknown bare name
        gets from routing: the names like it that the deployment is known to serve (its configured
        ``models``, the catalog's models of its type and their aliases), each as ``deployment:model``,
        and of those only what the caller may see (a gateway's ``visible``, as routing's own offer).

        The lists are not checked before the call: they are rarely complete (a new model, a dated
        snapshot, a fine-tune, an Azure deployment's own name), and refusing a name the provider knows
        would be worse than a round trip for a typo. So the provider decides, and its words stay; a
        model the lists do know gets no offer (its 404 is about something else: access, the region,
        the ``base_url``).

        A name that reached the single local-model deployment only because no other deployment serves
        it (``Target.catch_all``: ``gpt-4o-minii`` on a gateway with Ollama) is most likely a typo of a
        name meant for any deployment: its 404 gets what the same typo gets without that deployment —
        routing's offer across every deployment (``Router.close_names``: a mended deployment prefix,
        ``opena:gpt-4o-mini`` → ``openai:gpt-4o-mini``, among them) and the pointer to the model list —
        and says which deployment was asked, and why."""
        deployment, model = target.deployment, target.model
        router = self.router
        context = REQUEST_CONTEXT.get(None)
        visible = self._visible(context)
        if target.catch_all:
            matches = router.close_names(model, visible)
            pointer = router.listing_pointer()
            if context is not None and GATEWAY_LIST in pointer:
                pointer = pointer.replace(GATEWAY_LIST, listing_for(context))
            said = event.message.rstrip().rstrip(".")
            asked = f" (asked of deployment {deployment.name!r}, which takes any name no other deployment serves)"
            offer = f"; did you mean {', '.join(repr(name) for name in matches)}?" if matches else ""
            return msgspec.structs.replace(event, message=f"{said}{asked}{offer}; {pointer}")
        catalog = self.catalog
        configured = model in deployment.models or model == deployment.model
        if not model or configured or (catalog is not None and catalog.entry(deployment.type, model)):
            return event
        if URL_NOT_MODEL in event.message:  # the 404 was for the URL (``url_hint``): no name would mend it
            return event
        if deployment.type == "azure" and not deployment.models:
            return event  # (Azure's names are the resource's own deployments: the catalog's would mislead)
        listed = router.served_names(deployment)
        if visible is not None:
            listed = {name for name in listed if visible(deployment.name, name)}
        matches = difflib.get_close_matches(model, sorted(listed), n=5, cutoff=0.6)
        if not matches:
            return event
        offer = ", ".join(repr(f"{deployment.name}:{name}") for name in matches)
        said = event.message.rstrip()
        message = f"{said} Did you mean {offer}?" if said.endswith(".") else f"{said}; did you mean {offer}?"
        return msgspec.structs.replace(event, message=message)

    def _described(self, deployment: Deployment) -> str | None:
        """What the operator calls the key ``deployment`` carries, when the resolver can say (the
        gateway's vault: ``describe_key``, told the request's token's choice); for a log line, never
        for a client."""
        describe = getattr(self.credentials, "describe_key", None)
        if describe is None:
            return None
        context = REQUEST_CONTEXT.get(None)
        chosen = context.provider_keys.get(deployment.name) if context is not None else None
        try:
            return describe(deployment, chosen)
        except Exception:  # a log line's detail: never worth failing the request over
            return None

    def _credentials_for(self, target: Target) -> tuple[Deployment, bool]:
        """The deployment with its current key — the stored key the request's token chose for it
        (``provider_keys``), through a resolver that can choose (``resolve_for``, the gateway's vault) —
        and whether the token chose it."""
        context = REQUEST_CONTEXT.get(None)
        chosen = context.provider_keys.get(target.name) if context is not None else None
        return with_key(self.credentials, target.deployment, chosen), chosen is not None

    def _call(
        self, request: CompletionRequest, target: Target, outcome: AttemptOutcome
    ) -> tuple[AsyncGenerator[list[StreamEvent], None], Deployment | None]:
        """The event batches of one call to ``target`` — ``status: streaming`` first — and, for an HTTP
        deployment, the deployment with the keys it was called with (its events' errors are scrubbed of
        them). For HTTP that is ``HttpRunner.run``'s own generator; a local provider's events, or the
        error that stopped the call before it began, come from a small generator here."""
        sid = request.session_id
        if request.max_tokens is not None:
            refused = self._over_output_limit(request.max_tokens, target, sid)
            if refused is not None:  # nothing is sent: another deployment of the list may write that much
                outcome.uncallable = True
                return _batches_of([refused]), None
        sent = msgspec.structs.replace(request, model=target.model, provider=target.name, providers=None)
        try:
            provider = get_provider(target.deployment.type)
        except GTLError as exc:
            return _batches_of([exc.to_event(sid)]), None
        streaming = Status(session_id=sid, state="streaming")
        if is_local(provider):
            return self._local_call(provider, sent, target, streaming), None
        try:
            deployment, chosen = self._credentials_for(target)  # current keys: rotation needs no restart
            if self._complete_credentials.get(target.name) is not deployment and self.audience == GATEWAY:
                _check_credentials(deployment, self.credentials)  # (an embedded client checks before it starts)
                self._complete_credentials[target.name] = deployment
            if self._told_operator and not chosen:  # its own credentials mended: a later breakage is told again
                self._told_operator.pop(target.name, None)
        except GTLError as exc:
            return _batches_of([streaming, self._uncallable(exc, target, sid, outcome)]), None
        timeouts = self.deployment_timeouts.get(target.name)
        return self.http.run(provider, sent, deployment, timeouts, announce=streaming), deployment

    def _over_output_limit(self, max_tokens: int, target: Target, sid: str) -> Error | None:
        """The ``INVALID_REQUEST`` (``NotServedHere``) of a ``max_tokens`` above the most ``target``'s model
        writes per answer, as the catalog knows it: the provider would refuse it after a round trip (or
        read it clipped), and no such answer can come. ``None`` when it is within, or the limit unknown."""
        key = (target.deployment.type, target.model)
        if key not in self._output_limits:
            if len(self._output_limits) >= _OUTPUT_LIMITS_KEPT:  # model names are the callers': keep few
                self._output_limits.clear()
            entry = self.catalog.entry(*key) if self.catalog is not None else None
            self._output_limits[key] = entry.max_tokens if entry is not None else None
        limit = self._output_limits[key]
        if limit is None or max_tokens <= limit:
            return None
        message = (
            f"max_tokens: {target.model} writes at most {limit:,} tokens per answer, not {max_tokens:,}; "
            f"ask for at most {limit:,}"
        )
        return with_provider(NotServedHere(message).to_event(sid), target)

    async def _local_call(
        self, provider: Any, sent: CompletionRequest, target: Target, streaming: Status
    ) -> AsyncGenerator[list[StreamEvent], None]:
        """A local provider's events (``echo``, a simulator in the process), each after its delay: the
        events between two delays go on as one batch."""
        yield [streaming]
        options = getattr(provider, "with_options", None)
        if options is not None and target.deployment.options:
            provider = options(dict(target.deployment.options))
        batch: list[StreamEvent] = []
        try:
            for delay, event in provider.generate(sent):
                if delay > 0:
                    if batch:
                        yield batch
                        batch = []
                    await self._sleep(delay)
                batch.append(event)
                if type(event) in TERMINAL_EVENTS:  # nothing after the end is read (a generator may go on)
                    break
        except GTLError as exc:  # the provider refused the request (a format it cannot honour): its error
            yield [*batch, with_provider(exc.to_event(sent.session_id), target)]
            return
        except Exception:
            if batch:  # what it produced before it failed goes on first, as it would have one by one
                yield batch
            raise
        if batch:
            yield batch

    def _priced(self, event: StreamEvent, target: Target) -> StreamEvent:
        if (
            isinstance(event, Usage)
            and event.cost is None
            and self.catalog is not None
            and event.tokens_in is not None
            and event.tokens_out is not None
        ):
            cost = self.catalog.cost(
                target.deployment.type,
                target.model,
                event.tokens_in,
                event.tokens_out,
                event.cached_tokens_in,
                event.cache_write_tokens_in,
                event.cache_write_1h_tokens_in,
            )
            if cost is not None:
                return msgspec.structs.replace(event, cost=cost)
        return event


def _account_used_up(error: Error) -> bool:
    """Whether ``error`` is a provider's word that the account calling it has no credit or quota left for
    the period (a ``RATE_LIMIT`` it marked not retryable: Anthropic's ``billing_error``, OpenAI's
    ``insufficient_quota``, a daily quota): no retry on that deployment, but a failover to another."""
    return error.code == "RATE_LIMIT" and not error.retryable


def _caller_takes_failover() -> bool:
    """Whether the running request's caller can take a failover after the answer began
    (``RequestContext.failover_after_content``: a compatible API's stream cannot)."""
    caller = REQUEST_CONTEXT.get(None)
    return caller is None or caller.failover_after_content


def _check_credentials(deployment: Deployment, credentials: Any = None) -> None:
    """``ConfigurationError`` when ``deployment`` lacks what its provider type needs to be called (a key
    whose variable is unset): a gateway would otherwise call the provider without it. ``credentials``
    (the engine's resolver) may say where else the key can come from (``missing_key_advice``: a
    gateway's vault)."""
    missing = missing_credentials(deployment)
    if missing:
        advice = getattr(credentials, "missing_key_advice", None)
        more = advice(deployment.name) if advice is not None and "api_key" in missing else None
        raise ConfigurationError(
            f"deployment {deployment.name!r} ({deployment.type}) has no {' and '.join(missing)} to send: "
            "set it in the gateway's environment or configuration"
            + (f", or {more}" if more else "")
            + " (gtl serve warned at start)"
        )


_SERVER_SIDE_CODES = frozenset({"RATE_LIMIT", "OVERLOADED", "TIMEOUT", "PROVIDER_UNAVAILABLE", "INTERNAL"})
_RETRIED_CLIENT_STATUSES = frozenset({408, 409, 424, 429})  # (409: a lock; 424: Bedrock's model failure)


def _refuses_the_request(error: Error) -> bool:
    """Whether ``error`` is a provider's ``4xx`` about the request itself (its content, its parameters):
    the same request would be refused again, so it is never retried nor counted against the
    deployment's breaker, whatever else the answer said (a proxy's ``x-should-retry: true``). A code of
    the provider's side (a throttle some APIs send as 400) keeps its retry."""
    status = error.http_status
    return (
        status is not None
        and 400 <= status < 500
        and status not in _RETRIED_CLIENT_STATUSES
        and error.code not in _SERVER_SIDE_CODES
    )


def _momentary_limit(error: Error) -> bool:
    """Whether ``error`` is a rate limit the provider expects to lift within ``MOMENTARY_LIMIT``
    (``engine.breaker``, where it is also the shortest a provider's wait holds a circuit open)."""
    return error.code == "RATE_LIMIT" and error.retry_after is not None and error.retry_after < MOMENTARY_LIMIT


_OUTPUT_LIMITS_KEPT = 4096
"""The most models whose output limit ``Engine._over_output_limit`` keeps looked up."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _stamp(
    done: Done, target: Target, deployment: Deployment | None, started: float, first: float | None, now: float
) -> Done:
    """``done`` as the caller sees it: the deployment that served it, the times, and the model the
    provider says served it — unless that name quotes the deployment's key (whoever answers at its
    address may put anything there, and the name reaches clients, the ledger and the audit log); then,
    as when the provider names none, the model asked for."""
    served = done.model
    # (the model asked for is the caller's or the configuration's words, not the provider's: no check)
    if served and served != target.model and deployment is not None and quotes_secret(served, deployment.secrets):
        served = None
    return msgspec.structs.replace(
        done,
        provider=target.name,
        model=served or target.model,
        ttft_ms=round((first - started) * 1000.0, 3) if first is not None else None,
        latency_ms=round((now - started) * 1000.0, 3),
    )
