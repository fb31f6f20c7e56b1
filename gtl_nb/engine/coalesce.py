"""In-flight coalescing: identical concurrent requests share one upstream call.

The first request with a given key becomes the *leader* and publishes each event it yields to a
``Flight``; later identical requests become *followers* that read the flight from its first event
(whenever they join) and re-address every event to their own session. A follower's ``usage`` costs
nothing (the leader paid); its ``done`` is stamped with its own timings. A flight that ends without
a terminal event (the leader was cancelled) ends its followers with a retryable error.
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

    async def follow(self, session_id: str) -> AsyncIterator[StreamEvent]:
        """The flight's events re-addressed to ``session_id`` (the leader's ``queued`` is skipped)."""
        self.followers += 1
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if isinstance(event, Status) and event.state == "queued":
                    continue
                if isinstance(event, Usage):
                    event = msgspec.structs.replace(event, cost=0.0)
                yield msgspec.structs.replace(event, session_id=session_id)
                if isinstance(event, (Done, Error)):
                    return
            if self.closed:
                yield Error(
                    session_id=session_id,
                    code="PROVIDER_UNAVAILABLE",
                    message="the identical request this one was coalesced with was cancelled",
                    retryable=True,
                )
                return
            await self._changed.wait()
