"""Where identical concurrent requests find one another: in this process, or across replicas.

The engine coalesces identical requests in-process first (``engine.coalesce.Flight``): whichever
request arrives first on a replica starts the replica's one flight for that key, and its task asks
the ``FlightRegistry`` what to do with it — ``join(key)`` answers with a role:

* a ``FlightLead`` (``leads`` is true): run the upstream call here and ``publish`` every event to the
  lead as well as to the local flight; ``finish`` when the call is over;
* a ``FlightFollow`` (``leads`` is false): another replica runs the call; read its ``events`` (from
  the first, whenever this replica joined) into the local flight. ``events`` raises ``FlightLost``
  when the call cannot be followed any more (its replica died, the shared store failed).

Both roles may have a ``claim`` (see ``Flight.claim``: the replica whose reader claims first pays).

``LocalFlights`` is the in-process registry (no sharing: every join leads, nothing to publish) and
the default; ``engine.stores.redis_flights.RedisFlights`` shares flights through Redis.
``open_flights`` chooses from ``[cache] coalescing`` (``CacheConfig.coalescing_url``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from gtl_nb.engine.cache import CacheConfig
    from gtl_nb.engine.coalesce import Flight
    from gtl_nb.protocol.messages import StreamEvent

__all__ = [
    "FlightFollow",
    "FlightLead",
    "FlightLost",
    "FlightRegistry",
    "LocalFlights",
    "LocalLead",
    "open_flights",
]


class FlightLost(Exception):
    """A call led by another replica cannot be followed any more (the message says why)."""


class FlightLead(Protocol):
    """This replica runs the call (see the module docstring)."""

    leads: bool
    claim: Callable[[], Awaitable[bool]] | None

    def publish(self, event: StreamEvent) -> None:
        """Share one event of the call (never blocks: writing happens off the request path)."""
        ...

    def idle(self, flight: Flight) -> bool:
        """The local flight has no reader left: ``True`` if the lead keeps the call running for readers
        elsewhere (it calls ``flight.abandon()`` itself once nobody anywhere reads), ``False`` to cancel now."""
        ...

    def finish(self) -> None:
        """The call is over (with or without a terminal event); release what the lead holds."""
        ...


class FlightFollow(Protocol):
    """Another replica runs the call (see the module docstring)."""

    leads: bool
    claim: Callable[[], Awaitable[bool]] | None

    def events(self) -> AsyncIterator[StreamEvent]:
        """The call's events from its first, up to its terminal event; ``FlightLost`` when it cannot go on."""
        ...


@runtime_checkable
class FlightRegistry(Protocol):
    """Who runs the call for a coalescing key. ``degraded_reason`` is ``None`` while sharing works and
    says why it does not otherwise (flights are then led in-process: a request never fails for it)."""

    degraded_reason: str | None

    async def join(self, key: str) -> FlightLead | FlightFollow:
        """Lead or follow the flight of ``key`` (the engine's coalescing key, which may name the stored
        keys a token chose: an implementation that stores it elsewhere must hash it first). Never raises."""
        ...

    async def aclose(self) -> None: ...


class LocalLead:
    """The role of every flight that is not shared: nothing to publish, claim or release."""

    leads = True
    claim = None

    def publish(self, event: StreamEvent) -> None:
        pass

    def idle(self, flight: Flight) -> bool:
        return False

    def finish(self) -> None:
        pass


LOCAL_LEAD = LocalLead()


class LocalFlights:
    """In-process coalescing only: every replica leads its own flights (the default)."""

    degraded_reason: str | None = None

    def __repr__(self) -> str:
        return "LocalFlights()"

    async def join(self, key: str) -> LocalLead:
        return LOCAL_LEAD

    async def aclose(self) -> None:
        pass


def open_flights(config: CacheConfig | None) -> FlightRegistry:
    """The registry ``[cache] coalescing`` selects: Redis when it resolves to a ``redis://`` URL
    (``auto`` follows a ``redis://`` ``backend``), else in-process. Connects on first use, not here."""
    url = config.coalescing_url() if config is not None else None
    if url is None:
        return LocalFlights()
    from gtl_nb.engine.stores.redis_flights import RedisFlights

    return RedisFlights(url)
