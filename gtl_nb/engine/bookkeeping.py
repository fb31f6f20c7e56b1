"""A session's bookkeeping: its budget reservations and its ledger row (``Bookkeeping``, which ``Engine``
is built on).

Before anything is sent, ``_reserve`` counts the request against its principal's budgets and its
tenant's (the prompt's estimate plus ``max_tokens``: ``estimates``), and ``_ledger_start`` starts its
row; when the session ends, ``_finish`` completes the row and settles each reservation with what was
used — the provider's usage, else what the session is known to have used (``_estimated_use``), else
nothing — or gives it back whole when the request does not count (``ratelimit.counts_against_budgets``).
Both writes survive a cancellation: a cancelled caller waits ``CANCELLED_WRITE_WAIT`` seconds at most
to hear of its end while the writes go on. Subscribers hear of every end (``RequestFinished``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.estimates import estimate_prompt_tokens, estimate_tokens, output_estimate
from gtl_nb.engine.hooks import Hooks, RequestFinished
from gtl_nb.engine.ledger import finish_fields
from gtl_nb.engine.ratelimit import TENANT_PREFIX, BudgetConfig, counts_against_budgets
from gtl_nb.engine.routing import Target
from gtl_nb.engine.session_parts import SessionRecord
from gtl_nb.engine.stores import Reservation, Stores
from gtl_nb.engine.stores.memory import MemoryBreakerStore, MemoryBudgetCounter
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import CompletionRequest, Done, Error, Usage
from gtl_nb.providers.base import Deployment

if TYPE_CHECKING:
    from collections.abc import Callable

    from gtl_nb.providers.catalog import Catalog

__all__ = ["CANCELLED_WRITE_WAIT", "Bookkeeping", "never_waits"]

log = get_logger("engine")

CANCELLED_WRITE_WAIT = 5.0
"""Seconds a cancelled session waits for its ledger row and budget to be written before its caller
hears of the cancel (the write itself carries on, shielded)."""


def never_waits(store: Any) -> bool:
    """Whether ``store`` answers every call without suspending (the in-process breakers and budget
    counters). Such a call is awaited directly: nothing can cancel it half-way, so it needs neither a
    task of its own nor a shield, which cost more than the call itself."""
    return type(store) in (MemoryBreakerStore, MemoryBudgetCounter)


class Bookkeeping:
    """The budgets and the ledger row of each session, for ``Engine`` (the module docstring)."""

    stores: Stores
    budgets: BudgetConfig | None
    catalog: Catalog | None
    hooks: Hooks
    deployments: dict[str, Deployment]
    wall_clock: Callable[[], float]
    _background: set[asyncio.Future[Any]]

    async def _reserve(
        self, request: CompletionRequest, context: RequestContext, targets: list[Target] | GTLError
    ) -> tuple[tuple[Reservation, ...] | None, Error | None]:
        """Count the request against the principal's budgets and its tenant's shared ones: the
        reservations, or the refusal (a tenant refusing gives the principal's reservation back)."""
        if self.budgets is None:
            return None, None
        counted = [(context.principal, self.budgets.limits_for(context.principal))]
        if context.tenant:
            counted.append((TENANT_PREFIX + context.tenant, self.budgets.limits_for_tenant(context.tenant)))
        counted = [(key, limits) for key, limits in counted if limits.any]
        if not counted:
            return None, None
        output = output_estimate(request)
        tokens = estimate_prompt_tokens(request) + output
        cost = 0.0
        if isinstance(targets, list) and targets and self.catalog is not None:
            first = targets[0]
            cost = self.catalog.cost(first.deployment.type, first.model, tokens - output, output) or 0.0
        held: list[Reservation] = []
        for key, limits in counted:
            try:
                held.append(
                    await self.stores.budgets.reserve(
                        key, limits, now=self.wall_clock(), tokens=tokens, cost=cost, session_id=request.session_id
                    )
                )
            except GTLError as exc:
                # refused: the earlier counters count it no more than the refusing one
                await self._give_back(held)
                return None, exc.to_event(request.session_id)
            except BaseException:  # cancelled (or failed) between two counters: the earlier ones give theirs back
                await self._give_back(held, wait=CANCELLED_WRITE_WAIT)  # (its caller has gone: not held for long)
                raise
        return tuple(held), None

    async def _give_back(self, held: list[Reservation], *, wait: float | None = None) -> None:
        """Give every reservation of ``held`` back whole, in a task of its own: a cancel while they are
        being given back (a store that waits) stops the wait, never the giving back; so does ``wait``
        seconds, when given."""
        if not held:
            return
        if never_waits(self.stores.budgets):  # nothing can cancel an in-process counter half-way
            for each in held:
                await self._settle(each, None, None, counted=False)
            return
        work = asyncio.ensure_future(asyncio.gather(*(self._settle(each, None, None, counted=False) for each in held)))
        self._background.add(work)  # held until done: a cancel below leaves it running, referenced by nobody else
        work.add_done_callback(self._background.discard)
        if wait is None:
            await asyncio.shield(work)
        else:
            await asyncio.wait({work}, timeout=wait)

    async def _ledger_start(
        self, request: CompletionRequest, context: RequestContext, model: str, *, cancelled: bool = False
    ) -> int | None:
        """Start the request's row: its handle, or ``None`` (no ledger, a ledger that failed, or — for a
        request ``cancelled`` already — a start that did not land within ``CANCELLED_WRITE_WAIT``: it is
        ended ``cancelled`` when it lands, as the caller of a cancelled request is not held for longer)."""
        ledger = self.stores.ledger
        if ledger is None:
            return None
        start_nowait = getattr(ledger, "start_nowait", None)
        if start_nowait is not None:  # a ledger that queues (SQLite's writer): no task, nothing to cancel
            try:
                handle = start_nowait(session_id=request.session_id, context=context, model=model)
            except Exception:  # the ledger must never take a request down with it
                log.exception("ledger: could not record the start of %r", request.session_id)
                return None
            if handle is not None:
                return handle
        insert = asyncio.ensure_future(ledger.start(session_id=request.session_id, context=context, model=model))
        try:
            if cancelled:  # its caller has gone (a timeout, a client): waits as a cancelled write does, bounded
                await asyncio.wait({insert}, timeout=CANCELLED_WRITE_WAIT)
                if not insert.done():
                    insert.add_done_callback(self._finish_cancelled_insert)
                    return None
            return await asyncio.shield(insert)
        except asyncio.CancelledError:
            # cancelled while the row was being inserted: the insert still lands, so close it
            insert.add_done_callback(self._finish_cancelled_insert)
            raise
        except Exception:  # the ledger must never take a request down with it
            log.exception("ledger: could not record the start of %r", request.session_id)
            return None

    def _finish_cancelled_insert(self, insert: asyncio.Future[int]) -> None:
        if insert.cancelled() or insert.exception() is not None or self.stores.ledger is None:
            return
        finish = self.stores.ledger.finish(insert.result(), status="cancelled", error_code="CANCELLED")
        task = asyncio.ensure_future(finish)
        self._background.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._background.discard)

    async def _finish(
        self,
        request: CompletionRequest,
        context: RequestContext,
        row: int | None,
        end: Done | Error | None,
        usage: Usage | None,
        record: SessionRecord,
        reservation: tuple[Reservation, ...] | None,
    ) -> None:
        """Complete the ledger row and settle the budget reservations (both survive a cancellation)."""
        if end is None:
            fields: dict[str, Any] = {"status": "cancelled", "error_code": "CANCELLED"}
            if usage is not None:
                fields.update(tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost=usage.cost)
        else:
            fields = finish_fields(end, usage)
        fields["coalesced"] = record.coalesced
        fields["cache_hit"] = record.cache_hit or bool(fields.get("cache_hit"))
        # the bare model asked of the deployment that answered, never "deployment:model" — nor the dated
        # snapshot the provider says served an alias (done.model, the caller's to read): one model, one name
        # in a table by model (docs/ledger.md), whether the request was answered or failed
        fields["model"] = record.model or fields.get("model")
        # a follower's path names the deployment its leader was to call when it joined; whether the leader
        # called it is the shared end's to say (an error before any call names no provider)
        guessed = record.path[-1] if record.path and not (record.coalesced and type(end) is Error) else ""
        deployment = self.deployments.get(fields.get("deployment") or guessed)
        if deployment is not None:
            fields["deployment"] = fields.get("deployment") or deployment.name
            fields["provider_type"] = deployment.type
        if usage is None and fields["status"] != "ok":
            fields.update(self._estimated_use(request, record, fields["status"], deployment))
        work = []
        if row is not None and self.stores.ledger is not None:
            finish_nowait = getattr(self.stores.ledger, "finish_nowait", None)
            if finish_nowait is not None:  # queued at once: no task, and a cancellation cannot lose it
                try:
                    finish_nowait(row, failover_path=record.path or None, **fields)
                except Exception:
                    log.exception("ledger: could not complete row %s", row)
            else:
                work.append(self._ledger_finish(row, record, fields))
        # refused before any provider was called (no deployment: ``ratelimit``'s "What counts"): the
        # reservations are given back, as the SQLite counter skips such a row of a process without budgets
        counted = counts_against_budgets(fields["status"], fields.get("deployment"))
        # in-process counters never wait: settled directly, a cancellation cannot come in between
        settle_now = not work and never_waits(self.stores.budgets)
        tokens, cost = _spent(usage, fields)
        if not settle_now:
            work.extend(self._settle(held, tokens, cost, counted=counted) for held in reservation or ())
        try:
            if settle_now:
                for held in reservation or ():
                    await self._settle(held, tokens, cost, counted=counted)
            elif work:
                # a cancellation must not lose the row's completion: the write runs as a task of its own;
                # the caller hears of the end once it has landed, so a reader right after sees the row
                # finished — a cancelled session's caller only for a while, as a stalled store must not
                # hold a cancel (a caller's timeout) for as long as the store takes; a second cancel
                # stops the wait, never the write
                write = asyncio.ensure_future(asyncio.gather(*work))
                if end is None:  # cancelled: its caller waits to hear so
                    await asyncio.wait({write}, timeout=CANCELLED_WRITE_WAIT)
                    return
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    await asyncio.wait({write}, timeout=CANCELLED_WRITE_WAIT)
                    raise
        finally:
            if self.hooks:  # subscribers hear of every end, a cancelled one included
                self.hooks.emit(_finished_event(request, context, fields, record))

    async def _ledger_finish(self, row: int, record: SessionRecord, fields: dict[str, Any]) -> None:
        try:
            await self.stores.ledger.finish(row, failover_path=record.path or None, **fields)  # type: ignore[union-attr]
        except Exception:
            log.exception("ledger: could not complete row %s", row)

    def _estimated_use(
        self, request: CompletionRequest, record: SessionRecord, status: str, deployment: Deployment | None
    ) -> dict[str, Any]:
        """The ledger fields of a session that called a provider and ended — cancelled, or failed —
        before the provider reported usage: what it is known to have used, marked ``usage_estimated``.

        Once content began, the provider generated at least what reached the caller and read the
        prompt: the prompt's estimate (``estimates.estimate_prompt_tokens``) and the content's characters at four
        a token, priced from the catalog. A request cancelled before any content was sent all the same
        (the provider may bill the prompt it read): its prompt's estimate counts, no output. A request
        that failed before any content counts nothing (a provider's refusal bills nothing). No
        estimate for a cached answer, nor before a provider was called, nor for a reader of a shared
        call (``coalesce``) that went on for other readers, here or on another replica: the one that
        reads its usage pays. The last reader to leave one — the call cancelled with it — is counted.
        ``{}``: nothing to estimate."""
        if deployment is None or not record.path or record.cache_hit:
            return {}
        flight = record.flight
        if flight is not None and (flight.remote or not flight.abandoned):
            return {}
        produced = record.produced
        if produced is None and status != "cancelled":
            return {}
        tokens_in = estimate_prompt_tokens(request)
        tokens_out = estimate_tokens(produced or 0)
        model = record.model or ""
        cost = None if self.catalog is None else self.catalog.cost(deployment.type, model, tokens_in, tokens_out)
        return {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost, "usage_estimated": True}

    async def _settle(
        self, reservation: Reservation, tokens: int | None, cost: float | None, *, counted: bool = True
    ) -> None:
        """Settle the reservation with what was used (``None``: unknown, the estimate stays), or give
        it back whole when the request does not count (``ratelimit.counts_against_budgets``)."""
        if not counted:
            try:
                await self.stores.budgets.release(reservation)
            except Exception:
                log.exception("budgets: could not give back the reservation of %s", reservation.principal)
            return
        try:
            await self.stores.budgets.settle(reservation, tokens=tokens, cost=cost, now=self.wall_clock())
        except Exception:
            log.exception("budgets: could not settle the reservation of %s", reservation.principal)


def _spent(usage: Usage | None, fields: Mapping[str, Any]) -> tuple[int | None, float | None]:
    """The tokens and cost a budget reservation is settled with: the provider's report; else the
    row's estimate (``Engine._estimated_use``); else nothing used upstream (refused, failed before any
    content, or a replay of the cache)."""
    if usage is not None and not usage.cache_hit:
        return (usage.tokens_in or 0) + (usage.tokens_out or 0), usage.cost
    if usage is None and fields.get("usage_estimated"):
        return fields["tokens_in"] + fields["tokens_out"], fields["cost"]
    return 0, 0.0


def _finished_event(
    request: CompletionRequest, context: RequestContext, fields: Mapping[str, Any], record: SessionRecord
) -> RequestFinished:
    return RequestFinished(
        session_id=request.session_id,
        context=context,
        status=str(fields.get("status")),
        error_code=fields.get("error_code"),
        deployment=fields.get("deployment"),
        model=fields.get("model"),
        tokens_in=fields.get("tokens_in"),
        tokens_out=fields.get("tokens_out"),
        cost=fields.get("cost"),
        latency_ms=fields.get("latency_ms"),
        cache_hit=bool(fields.get("cache_hit") or record.cache_hit),
        ttft_ms=fields.get("ttft_ms"),
        provider_type=fields.get("provider_type"),
        finish_reason=record.finish_reason,
        answer=None if record.answer is None else "".join(record.answer),
        cached_tokens_in=fields.get("cached_tokens_in"),
        cache_write_tokens_in=fields.get("cache_write_tokens_in"),
        refused=record.refused,
        usage_estimated=bool(fields.get("usage_estimated")),
        handle=record.handle,
    )
