"""The engine: turns one ``CompletionRequest`` into one well-formed GTL event stream.

``Engine.stream(request)`` resolves the request to its deployments (``routing``), runs the first
one — an HTTP dialect through the pooled ``HttpRunner`` or a local generator whose delays it
sleeps — and guarantees the stream the spec promises:

* it starts with ``status: queued``, then ``status: streaming``;
* events pass through a ``SessionStateMachine``: a provider that breaks the order ends the session
  with an ``INTERNAL`` error instead of confusing the caller;
* ``usage`` gets its cost from the catalog when the provider reported counts;
* ``done`` is stamped with the deployment, the model, ``ttft_ms`` (time to the first token,
  reasoning or tool call) and ``latency_ms``, plus the dialect's ``provider_data``;
* when the request lists ``providers``, a retryable failure moves on to the next one with a
  ``status: failover`` (which tells every reader to discard what it received so far);
* the session ends with exactly one ``done`` or ``error``, also when the provider vanished or the
  caller cancelled (``CANCELLED``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from gtl_nb.engine.http import HttpRunner, Timeouts
from gtl_nb.engine.routing import Router, Target
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


class Engine:
    """Runs completion requests against configured deployments (see the module docstring)."""

    def __init__(
        self,
        deployments: dict[str, Deployment],
        *,
        catalog: Any = None,
        timeouts: Timeouts | None = None,
        ledger: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployments = deployments
        self.catalog = catalog
        self.ledger = ledger
        self.router = Router(deployments, catalog)
        self.http = HttpRunner(timeouts)
        self.clock = clock

    # -- public -------------------------------------------------------------------------------

    async def stream(self, request: CompletionRequest, *, user: str | None = None) -> AsyncIterator[StreamEvent]:
        """The complete, validated event stream of ``request``, recorded as one ledger row.

        The row is inserted (status ``started``) before any upstream call and completed once at the
        end — also when the caller stops listening early (``cancelled``).
        """
        row = await self._ledger_start(request, user)
        path: list[str] = []
        usage: Usage | None = None
        end: Done | Error | None = None
        try:
            async for event in self._run(request, path):
                if isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Status) and event.state == "failover":
                    usage = None
                elif isinstance(event, (Done, Error)):
                    end = event
                    if row is not None:  # complete the row before the caller sees the end
                        finished, row = row, None
                        await self._ledger_finish(finished, end, usage, path)
                yield event
        finally:
            if row is not None:
                await self._ledger_finish(row, end, usage, path)

    async def _ledger_start(self, request: CompletionRequest, user: str | None) -> int | None:
        if self.ledger is None:
            return None
        try:
            return await asyncio.to_thread(
                self.ledger.start, session_id=request.session_id, user=user, model=request.model
            )
        except Exception:  # the ledger must never take a request down with it
            log.exception("ledger: could not record the start of %s", request.session_id)
            return None

    async def _ledger_finish(self, row: int, end: Done | Error | None, usage: Usage | None, path: list[str]) -> None:
        from gtl_nb.engine.ledger import finish_fields

        if end is None:
            fields: dict[str, Any] = {"status": "cancelled", "error_code": "CANCELLED"}
            if usage is not None:
                fields.update(tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost=usage.cost)
        else:
            fields = finish_fields(end, usage)
        deployment = self.deployments.get(fields.get("deployment") or (path[-1] if path else ""))
        if deployment is not None:
            fields["deployment"] = fields.get("deployment") or deployment.name
            fields["provider_type"] = deployment.type
        write = asyncio.ensure_future(asyncio.to_thread(self.ledger.finish, row, failover_path=path or None, **fields))
        try:
            await asyncio.shield(write)  # a second cancellation must not lose the row's completion
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ledger: could not complete row %s", row)

    async def _run(self, request: CompletionRequest, path: list[str]) -> AsyncIterator[StreamEvent]:
        sid = request.session_id
        started = self.clock()
        machine = SessionStateMachine(sid)
        queued = Status(session_id=sid, state="queued")
        machine.advance(queued)
        yield queued
        try:
            targets = self.router.targets(request)
        except GTLError as exc:
            yield exc.to_event(sid)
            return
        first_content: float | None = None
        for index, target in enumerate(targets):
            next_target = targets[index + 1] if index + 1 < len(targets) else None
            path.append(target.name)
            attempt = self._attempt(request, target)
            failed: Error | None = None
            try:
                async for event in attempt:
                    if isinstance(event, Error):
                        failed = event
                        break
                    if isinstance(event, _CONTENT) and first_content is None:
                        first_content = self.clock()
                    if isinstance(event, Done):
                        event = _stamp(event, target, started, first_content, self.clock())
                    try:
                        machine.advance(event)
                    except SessionStateError as exc:
                        failed = Error(
                            session_id=sid,
                            code="INTERNAL",
                            message=f"{target.name} broke the event order: {exc}",
                            provider=target.name,
                        )
                        break
                    yield event
                    if isinstance(event, Done):
                        return
            finally:
                await attempt.aclose()
            if failed is None:
                failed = Error(
                    session_id=sid,
                    code="INTERNAL",
                    message=f"{target.name} ended without done or error",
                    provider=target.name,
                )
            if next_target is not None and failed.retryable:
                log.info("failover %s -> %s: %s %s", target.name, next_target.name, failed.code, failed.message)
                status = Status(
                    session_id=sid,
                    state="failover",
                    from_provider=target.name,
                    to_provider=next_target.name,
                    reason=f"{failed.code}: {failed.message}",
                )
                machine.advance(status)
                first_content = None
                yield status
                continue
            yield failed
            return

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


def _stamp(done: Done, target: Target, started: float, first: float | None, now: float) -> Done:
    return msgspec.structs.replace(
        done,
        provider=target.name,
        model=done.model or target.model,
        ttft_ms=round((first - started) * 1000.0, 3) if first is not None else None,
        latency_ms=round((now - started) * 1000.0, 3),
    )
