"""The gateway core in-process, over a channel whose reader only reads when the test says so.

A slow reader must stop each session after one event (the engine pulls nothing more from its
provider until the channel drains), and a connection runs at most ``max_sessions`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.scopes import SCOPE_NAMES
from gtl_nb.gateway.sessions import GatewayConnection
from gtl_nb.protocol import (
    CONNECTION_CLOSED,
    NEED_DATA,
    CompletionRequest,
    Done,
    Error,
    GTLConnection,
    Message,
    ProviderInfo,
    Status,
    Token,
)
from gtl_nb.transports.framed import FramedConnection


class HeldChannel:
    """A ``Channel`` whose peer reads only while ``room`` is set (``drain`` waits for it)."""

    peer = "test"

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.written = bytearray()
        self.room = asyncio.Event()
        self.room.set()

    async def read(self) -> bytes:
        return await self.inbox.get()

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        await self.room.wait()

    async def aclose(self) -> None:
        self.inbox.put_nowait(b"")


async def no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


async def settle() -> None:
    """Let every task run until it waits on something only the test can release."""
    for _ in range(300):
        await asyncio.sleep(0)


def take(channel: HeldChannel, client: GTLConnection) -> list:
    """What the gateway wrote so far, as the client's connection reads it."""
    client.receive_data(bytes(channel.written))
    channel.written.clear()
    events = []
    while (event := client.next_event()) not in (NEED_DATA, CONNECTION_CLOSED):
        events.append(event)
    return events


def request(i: int) -> CompletionRequest:
    return CompletionRequest(session_id=f"s{i}", model="echo", messages=[Message(role="user", content=f"prompt {i}")])


@contextlib.asynccontextmanager
async def serving(max_sessions: int = 256) -> AsyncIterator[tuple[HeldChannel, GTLConnection, GatewayConnection]]:
    """A gateway connection with the hello exchange done; on the way out the client leaves."""
    engine = build_engine(load_settings(config={}), ledger=False, sleep=no_sleep)
    channel = HeldChannel()
    gateway = GatewayConnection(
        engine,
        FramedConnection(GTLConnection("server"), channel),
        authenticate=lambda token: RequestContext(principal="tester", scopes=SCOPE_NAMES),
        max_sessions=max_sessions,
    )
    task = asyncio.ensure_future(gateway.run())
    client = GTLConnection("client")
    channel.inbox.put_nowait(client.data_to_send())
    await settle()
    welcome = take(channel, client)
    assert isinstance(welcome[-1], ProviderInfo) and welcome[-1].provider == ""  # the end of the provider list
    try:
        yield channel, client, gateway
    finally:
        channel.room.set()
        channel.inbox.put_nowait(b"")  # the client goes away: what still runs is cancelled
        await asyncio.wait_for(task, 10)
        await engine.aclose()


def test_a_slow_reader_holds_each_session_at_one_event():
    async def main() -> None:
        async with serving() as (channel, client, gateway):
            channel.room.clear()  # the client stops reading
            channel.inbox.put_nowait(b"".join(client.send(request(i)) for i in range(5)))
            await settle()
            held = take(channel, client)
            assert sorted(event.session_id for event in held) == [f"s{i}" for i in range(5)]
            assert all(isinstance(event, Status) for event in held)  # one event each, nothing pulled beyond
            channel.room.set()
            await settle()
            rest = take(channel, client)
            assert sum(isinstance(event, Token) for event in rest) > 5 * 5
            assert sorted(e.session_id for e in rest if isinstance(e, Done)) == [f"s{i}" for i in range(5)]
            assert gateway.live_sessions == 0

    asyncio.run(main())


def test_sessions_beyond_the_limit_are_refused_as_overloaded():
    async def main() -> None:
        async with serving(max_sessions=2) as (channel, client, gateway):
            channel.room.clear()
            channel.inbox.put_nowait(b"".join(client.send(request(i)) for i in range(3)))
            await settle()
            held = take(channel, client)
            refused = [event for event in held if isinstance(event, Error)]
            assert [(e.session_id, e.code, e.retryable) for e in refused] == [("s2", "OVERLOADED", True)]
            assert gateway.live_sessions == 2
        assert gateway.live_sessions == 0  # the client left: both were cancelled and awaited

    asyncio.run(main())
