"""The client's backend seam: what ``Client`` needs from whatever runs its sessions.

``EmbeddedBackend`` runs the engine in this process on the loop thread; a remote backend (the
gateway issue) will speak GTL over a transport. The client — and so every magic, widget, batch and
``client.usage()`` — goes through this interface only and never reaches into an engine.
"""

from __future__ import annotations

import asyncio
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.counting import TokenCount
from gtl_nb.engine.estimates import estimate_prompt_tokens
from gtl_nb.engine.loop import CAN_TAKE_BACK_A_CANCEL, CallersLoop, LoopThread, shared_loop
from gtl_nb.engine.session import run_session
from gtl_nb.engine.settings import RequestDefaults, Settings
from gtl_nb.protocol.errors import ContextLengthExceededError, GTLError
from gtl_nb.protocol.messages import CompletionRequest, ProviderInfo, StreamEvent
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.catalog import Catalog

__all__ = [
    "Backend",
    "ContextFallbackWarning",
    "CostWarning",
    "EmbeddedBackend",
    "TokenCount",
    "estimate_prompt_tokens",
]

#: a prompt is refused before sending only when clearly over the window: the estimate is rough
CLEARLY_OVER = 1.1
#: seconds ``aclose`` waits for cancelled sessions to record their ends
_CLOSE_WAIT = 10.0


class CostWarning(UserWarning):
    """A request's estimated cost passes ``[defaults] warn_cost_usd`` (a warning, never a question:
    kernels may run headless)."""


class ContextFallbackWarning(UserWarning):
    """A prompt too long for the model was sent to the configured ``context_fallbacks`` model."""


Deliver = Callable[[StreamEvent], None]


@runtime_checkable
class Backend(Protocol):
    """Runs sessions for a ``Client`` and answers its questions about providers and usage."""

    loop: LoopThread
    defaults: RequestDefaults

    async def session(self, request: CompletionRequest, deliver: Deliver) -> None:
        """Run one session on ``loop``, handing each event to ``deliver``: exactly one ``done`` or
        ``error`` ends it, a ``CANCELLED`` error when the task running this is cancelled."""
        ...

    def check(self, request: CompletionRequest) -> None:
        """Raise, before any session starts, the routing or credential error sending would meet."""
        ...

    def route(self, request: CompletionRequest) -> list[tuple[str, str, str]]:
        """``(deployment, provider type, model id)`` of each candidate, in routing order."""
        ...

    def default_routing(self, model: str, *, named: bool) -> tuple[str | None, tuple[str, ...] | None]:
        """The ``[defaults] provider`` / ``providers`` that apply to a request for ``model`` that names
        no provider itself (``named``: the caller chose the model)."""
        ...

    def fit(self, request: CompletionRequest) -> CompletionRequest:
        """``request`` if its prompt fits the first candidate's context window; moved to the configured
        context fallback if not; else a ``ContextLengthExceededError`` with the numbers. Warns
        (``CostWarning``) when the estimated cost passes ``[defaults] warn_cost_usd``."""
        ...

    def providers(self) -> list[ProviderInfo]: ...

    def provider_type(self, deployment: str | None) -> str | None: ...

    async def list_models(self, deployment: str) -> list[str]: ...

    async def breakers(self) -> dict[str, dict[str, Any]]: ...

    async def usage_rows(self, *, all_users: bool = False, **filters: Any) -> list[dict[str, Any]]:
        """The usage-ledger rows the caller may see (``[]`` when no ledger is kept); ``all_users``:
        everyone's, where the caller's own are the default (a gateway's, with ``usage:admin``)."""
        ...

    def describe(self) -> str:
        """A short description for ``repr(client)``."""
        ...

    async def aclose(self) -> None: ...


class EmbeddedBackend:
    """The engine in this process, on one background loop thread (``engine.loop``).

    ``principal`` is who budgets and ledger rows are accounted to (``connect(user=...)``); the
    keyword arguments go to ``build_engine`` (``ledger=``, ``clock=``, ``sleep=``,
    ``http_transport=``, ``stores=``, ``hooks=``, ``credentials=``).
    """

    def __init__(self, settings: Settings, *, principal: str, loop: LoopThread | None = None, **engine: Any) -> None:
        self.settings = settings
        self.defaults = settings.defaults
        self.loop = loop or shared_loop()
        self.context = RequestContext(principal=principal)
        engine.setdefault("on_callers_loop", isinstance(self.loop, CallersLoop))
        self.engine: Engine = build_engine(settings, **engine)
        self._sessions: set[asyncio.Task[Any]] = set()  # the tasks running a session now
        self._closing: set[asyncio.Task[Any]] = set()  # ... which ``aclose`` cancelled, until they leave it
        self._all_left: asyncio.Future[None] | None = None  # set once ``_closing`` is empty again
        # per request, ``check`` and ``fit`` ask what rarely changes: remember the answers
        self._checked: dict[str, Deployment] = {}  # each deployment as resolved when its credentials passed
        self._context_window = functools.lru_cache(maxsize=256)(self._catalog_window)
        # a program that never closes its client still ends its rows and closes its HTTP pool at exit
        self.loop.close_at_exit(self)

    sessions_in_callers_task = CAN_TAKE_BACK_A_CANCEL
    """Whether ``session(..., callers_task=True)`` may run in a task the caller goes on using."""

    async def session(self, request: CompletionRequest, deliver: Deliver, *, callers_task: bool = False) -> None:
        """Run ``request``'s session in the current task, handing each event to ``deliver``.

        ``callers_task``: the task is the caller's own (an awaited call of ``aconnect``'s client),
        which goes on after the session. ``aclose`` ending the session then cancels it no further:
        that cancel is taken back once the session has ended ``cancelled`` (as ``asyncio.timeout``
        takes back its own), so the caller hears the end and its task goes on; a cancel of the
        caller's own still propagates."""
        # (its loop given: no getpid() system call on Python 3.11; the running loop's own otherwise)
        task = asyncio.current_task(self.loop.loop) or asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        # a caller's task may be in its own clean-up already (cancelled once): only the close's cancel is taken back
        cancels = task.cancelling() if callers_task and task is not None else 0
        try:
            await run_session(self.engine, request, self.context, deliver)
        except asyncio.CancelledError:
            if not (callers_task and task in self._closing and task.uncancel() <= cancels):  # type: ignore[union-attr]
                raise
        finally:
            self._sessions.discard(task)  # type: ignore[arg-type]
            if self._closing:
                self._left(task)  # type: ignore[arg-type]

    def _left(self, task: asyncio.Task[Any]) -> None:
        """``task``'s session has ended: when it was the last one ``aclose`` waits for, say so."""
        self._closing.discard(task)
        if not self._closing and self._all_left is not None and not self._all_left.done():
            self._all_left.set_result(None)

    async def count_tokens(self, request: CompletionRequest) -> TokenCount:
        """``request``'s input tokens, counted without running it (``Engine.count_tokens``); a backend
        without this method cannot count (``Client.count_tokens`` says so)."""
        self.check(request)  # a deployment without its key raises here, naming what to set, as complete() does
        return await self.engine.count_tokens(request, context=self.context)

    def check(self, request: CompletionRequest) -> None:
        for target in self.engine.targets(request):
            if target.name in self.settings.deployments:
                # the credentials as the request will be sent with them (a key set since connect counts)
                current = self.engine.credentials.resolve(target.deployment)
                if self._checked.get(target.name) is not current:  # resolved anew (a rotated key): check anew
                    self._checked[target.name] = self.settings.require_credentials(target.name, current)

    def route(self, request: CompletionRequest) -> list[tuple[str, str, str]]:
        return [(t.name, t.deployment.type, t.model) for t in self.engine.router.targets(request)]

    def default_routing(self, model: str, *, named: bool) -> tuple[str | None, tuple[str, ...] | None]:
        """The defaults never override what the caller chose: a ``deployment:model`` names its
        deployment; ``[defaults] provider`` applies when that deployment serves the model (or nobody
        is known to); ``[defaults] providers`` entries that name their own model apply only when the
        caller named no model."""
        defaults = self.defaults
        router = self.engine.router
        if router.names_deployment(model):
            return None, None
        provider = defaults.provider if defaults.provider and self._serves(defaults.provider, model) else None
        providers = defaults.providers
        if providers and named and any(entry.partition(":")[2] for entry in providers):
            providers = None
        return provider, providers

    def _serves(self, deployment: str, model: str) -> bool:
        try:
            return deployment in {target.name for target in self.engine.router.candidates(model)}
        except GTLError:  # a model routing does not know: the named deployment may serve it
            return True

    def fit(self, request: CompletionRequest) -> CompletionRequest:
        targets = self.engine.targets(request)
        if not targets or self.engine.catalog is None:
            return request
        estimate = estimate_prompt_tokens(request)
        target = targets[0]
        window = self._context_window(self.engine.catalog, target.deployment.type, target.model)
        if window and estimate > window * CLEARLY_OVER:
            fallback = self.engine.context_fallback_for(target)
            if fallback is None:
                raise ContextLengthExceededError(
                    f"the prompt is about {estimate:,} tokens, {target.model}'s context window is {window:,}: "
                    f"shorten it, pick a model with a larger window, or configure [routing] context_fallbacks",
                    provider=target.name,
                )
            warnings.warn(
                f"the prompt is about {estimate:,} tokens, over {target.model}'s {window:,}: sending it to "
                f"{fallback.name}:{fallback.model} ([routing] context_fallbacks)",
                ContextFallbackWarning,
                stacklevel=4,
            )
            request = msgspec.structs.replace(request, model=f"{fallback.name}:{fallback.model}", provider=None)
            target = fallback
        threshold = self.defaults.warn_cost_usd
        if threshold is not None:
            output = request.max_tokens or 0
            cost = self.engine.catalog.cost(target.deployment.type, target.model, estimate, output)
            if cost is not None and cost > threshold:
                warnings.warn(
                    f"this request will cost about ${cost:.4f} (about {estimate:,} input tokens"
                    f"{f' and up to {output:,} output tokens' if output else ''} on {target.model}), over "
                    f"[defaults] warn_cost_usd = {threshold:g}",
                    CostWarning,
                    stacklevel=4,
                )
        return request

    @staticmethod
    def _catalog_window(catalog: Catalog, provider_type: str, model: str) -> int | None:
        info = catalog.model(provider_type, model)
        return info.context_window if info is not None else None

    def providers(self) -> list[ProviderInfo]:
        return self.engine.provider_info()

    def provider_type(self, deployment: str | None) -> str | None:
        found = self.engine.deployments.get(deployment or "")
        return found.type if found else None

    async def list_models(self, deployment: str) -> list[str]:
        return await self.engine.list_models(deployment)

    async def breakers(self) -> dict[str, dict[str, Any]]:
        return await self.engine.breaker_states()

    async def usage_rows(self, *, all_users: bool = False, **filters: Any) -> list[dict[str, Any]]:
        ledger = self.engine.ledger  # (this process's ledger: every row is the caller's to read)
        return [] if ledger is None else await ledger.rows(**filters)

    def describe(self) -> str:
        return f"embedded providers=[{', '.join(self.engine.deployments)}]"

    @property
    def deployment_names(self) -> Sequence[str]:
        return tuple(self.engine.deployments)

    async def aclose(self) -> None:
        """Cancel the sessions still running and let them finish their ledger rows, then close the
        engine (its HTTP pool and stores)."""
        running = [task for task in self._sessions if not task.done() and task not in self._closing]
        self._closing.update(running)
        for task in running:  # (a close already under way cancelled the others: once is enough)
            task.cancel()
        if self._closing:
            # waited for until their sessions end, not their tasks: a caller's task goes on after
            if self._all_left is None or self._all_left.done():
                self._all_left = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._all_left], timeout=_CLOSE_WAIT)
        await self.engine.aclose()
