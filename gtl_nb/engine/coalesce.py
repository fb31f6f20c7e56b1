"""In-flight coalescing: identical concurrent requests share one upstream call.

The first request with a given key becomes the *leader*: its upstream call runs in a task of its
own (``Flight.task``) that publishes every event to a ``Flight``. The leader and every later
identical request (*followers*) read the flight from its first event, whenever they join; followers
re-address each event to their own session and pay nothing (their ``usage`` costs 0) — unless the
leader's caller left before the usage arrived: then the first follower to read it pays, so the call
is on exactly one ledger row. A reader that leaves does not disturb the others; the upstream call
is cancelled when its last reader has left, and the flight is then ``abandoned``: a request that
arrives after that starts its own call instead of joining one that is ending. A flight that ends
without a terminal event ends its remaining readers with a retryable error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

from gtl_nb.protocol.messages import Done, Error, Status, StreamEvent, Usage


class Flight:
    """The events of one upstream call, readable by any number of followers."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self.closed = False
        self.followers = 0
        self.readers = 0
        self.task: asyncio.Future[None] | None = None
        self.payer: str | None = None  # the session whose row carries the call's cost
        self.abandoned = False  # every reader left and the call is being cancelled
        self._changed = asyncio.Event()

    def publish(self, event: StreamEvent) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, session_id: str, *, own: bool = False) -> AsyncIterator[StreamEvent]:
        """The flight's events for ``session_id`` (the ``queued`` status is skipped: every reader
        sent its own). ``own`` is the leader's session: its events are passed on unchanged."""
        if own:
            self.payer = session_id
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
                    if not own:
                        if isinstance(event, Usage):
                            if self.payer is None:
                                self.payer = session_id  # the leader left: this reader pays
                            elif self.payer != session_id:
                                event = msgspec.structs.replace(event, cost=0.0)
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
            if not ended and self.payer == session_id:
                self.payer = None  # left before the end: a follower still reading pays instead
            if not ended and self.readers == 0 and self.task is not None and not self.task.done():
                self.abandoned = True
                self.task.cancel()  # the last reader left: nobody wants the answer any more
