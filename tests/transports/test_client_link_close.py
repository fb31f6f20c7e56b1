"""``ClientLink.aclose()`` with a session still running: the gateway is sent a ``cancel`` for it before the end
of the client's input — over gRPC that end (a half-close) means only "no more requests", and the gateway lets
running sessions finish, so a polite close must say which ones to stop.

The gateway here is a sans-I/O ``GTLConnection("server")`` fed by hand through an in-memory channel."""

from __future__ import annotations

import asyncio

from gtl_nb.protocol.codec import decode
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.connection_events import NEED_DATA
from gtl_nb.protocol.messages import Cancel, CompletionRequest, Message, StreamEvent
from gtl_nb.transports.conventions import PROVIDERS_END
from gtl_nb.transports.framed import FramedConnection
from gtl_nb.transports.link import ClientLink


class MemoryChannel:
    """What the client writes, kept; what it reads, put in ``incoming`` by the test."""

    peer = "memory"

    def __init__(self) -> None:
        self.written = bytearray()
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False

    async def read(self) -> bytes:
        return await self.incoming.get()

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        pass

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.incoming.put_nowait(b"")


def test_a_polite_close_cancels_the_running_sessions_on_the_gateway():
    async def main() -> list[object]:
        channel = MemoryChannel()
        link = ClientLink(FramedConnection(GTLConnection("client"), channel, reader_waits=False), label="memory")
        server = GTLConnection("server")

        async def answer_hello() -> None:
            while not channel.written:
                await asyncio.sleep(0)
            server.receive_data(bytes(channel.written))
            channel.written.clear()
            while server.next_event() is not NEED_DATA:
                pass
            channel.incoming.put_nowait(server.data_to_send() + server.send(PROVIDERS_END))

        answering = asyncio.ensure_future(answer_hello())
        await link.open(5)
        await answering
        events: list[StreamEvent] = []
        request = CompletionRequest(session_id="s1", model="echo", messages=[Message(role="user", content="hi")])
        session = asyncio.ensure_future(link.session(request, events.append))
        while b"completion_request" not in channel.written:
            await asyncio.sleep(0)
        await link.aclose()
        await session
        sent = [decode(line) for line in bytes(channel.written).splitlines() if line.strip()]
        return [*sent, *events]

    sent = asyncio.run(main())
    assert any(isinstance(message, Cancel) and message.session_id == "s1" for message in sent), sent
    ends = [event for event in sent if getattr(event, "type", None) == "error"]
    assert [end.code for end in ends] == ["CANCELLED"]  # the caller's own session ended, once
