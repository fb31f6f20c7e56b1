"""In-flight coalescing: identical concurrent requests share one upstream call.

The first request with a given key becomes the *leader*: its upstream call runs in a task of its
own (``Flight.task``) that publishes every event to a ``Flight``. The leader and every later
identical request (*followers*) read the flight from its first event, whenever they join; followers
re-address each event to their own session and pay nothing (their ``usage`` costs 0).

**Who pays.** Exactly one reader's ``usage`` keeps the cost, so the call is on exactly one ledger
row: the leader's, unless the leader's caller left before reading the usage — then the first
follower to read it pays. A reader that has read the usage pays even if it leaves before the end
(its row is finished with the usage it saw). When the flight is shared with other replicas
(``engine.stores.flights``), ``Flight.claim`` asks them first: the replica whose reader claims the
call first pays, the others' readers see cost 0. A claim may land in the shared store while its
answer is on the way back, so once asked, the answer always counts: the claim runs on its own (a
cancelled reader does not cancel it), the other readers here that reach the usage meanwhile wait
for its answer, and a claim won stays this replica's — its claimant pays even when its caller left
while waiting (its row gets the paid usage, then the cancellation goes on); a claimant cancelled
twice stops waiting and the next reader here pays, without asking again. A claim that raises
counts as won (at least one payer rather than none).

**Leaving.** A reader that leaves does not disturb the others; when the last reader has left, the
upstream call is cancelled and the flight is ``abandoned`` (a request that arrives after that
starts its own call instead of joining one that is ending) — unless ``on_idle`` says readers on
other replicas still want it; then the shared lead decides later (``abandon``). A flight that ends
without a terminal event ends its remaining readers with a retryable error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from gtl_nb.protocol.messages import Done, Error, Status, StreamEvent, Usage

ELSEWHERE = "\x00elsewhere"
"""``Flight.paid_by`` when another replica's reader pays for the call (never one of this one's readers)."""


class Flight:
    """The events of one upstream call, readable by any number of followers."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self.closed = False
        self.followers = 0
        self.readers = 0
        self.task: asyncio.Future[None] | None = None
        # readers are told apart by a token of their own, never by session id: ids are the clients', and
        # two identical requests of one id would otherwise both pay
        self.payer: object | None = None  # the reader with the right to pay (the leader while it reads)
        self.paid_by: object | None = None  # the reader whose row carries the cost, once one read the usage
        self._asking: asyncio.Future[None] | None = None  # the claim under way (its answer decides)
        self._won = False  # this replica's claim won: a reader here pays without asking again
        self.abandoned = False  # every reader left and the call is being cancelled
        self.remote = False  # the events come from a call another replica runs
        self.claim: Callable[[], Awaitable[bool]] | None = None
        """Asks the other replicas sharing the call whether this one pays (``None``: in-process only)."""
        self.on_idle: Callable[[], bool] | None = None
        """Called when the last local reader left; ``True`` keeps the call running (readers elsewhere)."""
        self._changed = asyncio.Event()

    def publish(self, event: StreamEvent) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def abandon(self) -> None:
        """Nobody wants the answer any more: cancel the call; later requests start their own."""
        self.abandoned = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _pays(self, reader: object) -> bool:
        """Whether ``reader``'s ``usage`` keeps the cost (decided once per flight: module docstring)."""
        while True:
            if self.paid_by is not None:
                return self.paid_by is reader
            if self.payer is not None and self.payer is not reader:
                return False
            if self._asking is not None:  # another reader's claim is under way: its answer decides
                await asyncio.shield(self._asking)
                continue
            if self.claim is None or self._won:
                self.paid_by = reader
                return True
            asking = self._asking = asyncio.ensure_future(self._ask(self.claim))
            try:
                await asyncio.shield(asking)  # a cancel must not lose the answer: the claim may have landed
            except asyncio.CancelledError:
                # the caller left while the answer was on its way; a second cancel stops this wait,
                # not the claim (whose answer then goes to the next reader here)
                await asyncio.wait({asking})
                if self.paid_by is not None or not self._won or (self.payer is not None and self.payer is not reader):
                    raise
                self.paid_by = reader  # won: this row carries the cost, the cancellation goes on after it
                _cancel_again()
                return True

    async def _ask(self, claim: Callable[[], Awaitable[bool]]) -> None:
        """Ask the other replicas whether this one pays, and keep the answer (whoever still waits for it)."""
        try:
            try:
                won = await claim()
            except Exception:
                won = True  # nobody could say: pay here (rather no payer at all)
            if won:
                self._won = True
            else:
                self.paid_by = ELSEWHERE
        finally:
            self._asking = None

    async def follow(self, session_id: str, *, own: bool = False) -> AsyncIterator[StreamEvent]:
        """The flight's events for ``session_id`` (the ``queued`` status is skipped: every reader
        sent its own). ``own`` is the session the flight was started for: its events already carry
        its session id, and it has the first right to pay."""
        reader = object()  # this reader, whatever its session id
        if own:
            self.payer = reader
        else:
            self.followers += 1
        self.readers += 1
        ended = False
        index = 0
        try:
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if isinstance(event, Status) and event.state == "queued":
                        continue
                    if isinstance(event, Usage) and not await self._pays(reader):
                        event = msgspec.structs.replace(event, cost=0.0)
                    if not own:
                        event = msgspec.structs.replace(event, session_id=session_id)
                    ended = isinstance(event, (Done, Error))
                    yield event
                    if ended:
                        return
                if self.closed:
                    ended = True
                    yield Error(
                        session_id=session_id,
                        code="PROVIDER_UNAVAILABLE",
                        message="the upstream call this request shared ended without an answer",
                        retryable=True,
                    )
                    return
                await self._changed.wait()
        finally:
            self.readers -= 1
            if not ended and self.payer is reader:
                self.payer = None  # left before the end: a follower still reading pays instead (if unpaid)
            orphaned = not ended and self.readers == 0 and self.task is not None and not self.task.done()
            if orphaned and (self.on_idle is None or not self.on_idle()):
                self.abandon()  # the last reader left: nobody wants the answer any more (here or elsewhere)


def _cancel_again() -> None:
    """Cancel the running task again: a reader that swallowed its cancellation to hand on the paid usage
    is stopped at its caller's next wait, as one cancellation (``uncancel`` first keeps the count)."""
    task = asyncio.current_task()
    if task is None:
        return
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+
    if uncancel is not None:
        uncancel()
    task.cancel()
