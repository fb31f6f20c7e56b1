"""``write_timeout`` on gRPC and QUIC: a write that waits on flow control with nothing taken is let go.

The rule itself, on fakes of the layer underneath: ``GrpcStreamChannel`` (a gRPC write that never completes
ends the call as a client that left; writes that complete, however slowly, never do) and ``QuicPeer.drain``
(a stream that sends nothing for ``write_timeout`` seconds is reported once; one that sends a little, however
slowly, never is). End to end against a gateway process: tests/network/test_gateway_slow_and_idle.py.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from gtl_nb.protocol.codec import encode
from gtl_nb.protocol.messages import Token
from gtl_nb.transports.grpc.stream import GrpcStreamChannel
from gtl_nb.transports.quic.config import HIGH_WATER
from gtl_nb.transports.quic.peer import QuicPeer

TIMEOUT = 0.3


def token_frame(text: str = "x") -> bytes:
    return encode(Token(session_id="s1", text=text)) + b"\n"


async def never() -> Any:
    """A receive (or send) that never completes: the peer sends nothing (or takes nothing)."""
    await asyncio.get_running_loop().create_future()


# -- gRPC ------------------------------------------------------------------------------------------------------


def test_a_grpc_write_that_never_completes_ends_the_call_at_the_write_timeout(caplog):
    async def main() -> tuple[float, bytes, bool]:
        async def send(data: bytes) -> None:
            await never()

        channel = GrpcStreamChannel(never, send, role="server", peer="10.0.0.1:5", write_timeout=TIMEOUT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        channel.write(token_frame())
        read = await asyncio.wait_for(channel.read(), 5)  # the end, as for a client that left
        after = loop.time() - started
        await asyncio.wait_for(channel.drain(), 1)  # a session waiting for room is let go too
        await asyncio.wait_for(channel.aclose(), 1)  # and nothing waits on the stuck write
        return after, read, channel.broken

    with caplog.at_level(logging.INFO, logger="gtl_nb"):
        after, read, broken = asyncio.run(main())
    assert read == b"" and broken
    assert TIMEOUT <= after < TIMEOUT + 1, after
    lines = [record for record in caplog.records if "read none of what was written" in record.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, caplog.records
    assert "10.0.0.1:5" in lines[0].getMessage()


def test_a_slow_grpc_reader_taking_a_message_within_each_write_timeout_is_never_cut():
    async def main() -> tuple[int, bool, bool]:
        sent: list[bytes] = []

        async def send(data: bytes) -> None:
            await asyncio.sleep(TIMEOUT / 2)  # the client's pace: one message in half the bound
            sent.append(data)

        channel = GrpcStreamChannel(never, send, role="server", write_timeout=TIMEOUT)
        reading = asyncio.ensure_future(channel.read())
        for n in range(8):  # eight messages, 1.2 s: four times the bound
            channel.write(token_frame(str(n)))
        await asyncio.wait_for(channel.aclose(), 5)
        cut = reading.done()
        reading.cancel()
        return len(sent), channel.broken, cut

    count, broken, cut = asyncio.run(main())
    assert count == 8 and not broken and not cut


def test_a_grpc_call_with_nothing_to_write_is_not_cut():
    async def main() -> tuple[bool, bool]:
        async def send(data: bytes) -> None:
            pass

        channel = GrpcStreamChannel(never, send, role="server", write_timeout=TIMEOUT)
        reading = asyncio.ensure_future(channel.read())
        channel.write(token_frame())
        await asyncio.sleep(3 * TIMEOUT)  # idle, with nothing waiting: idle_timeout's business, not this one's
        cut = reading.done()
        reading.cancel()
        await channel.aclose()
        return channel.broken, cut

    assert asyncio.run(main()) == (False, False)


async def end_of_requests() -> Any:
    """A receive that finds the client's half-close: it sends no more (it may still read)."""
    import grpc

    return grpc.aio.EOF


def test_a_half_closed_grpc_call_waits_for_its_sessions_and_is_still_let_go_at_the_write_timeout():
    """The gateway's channel after the client's half-close: ``on_half_close`` is told once and the read waits
    (the sessions go on), until a write stalls past the bound — then the read ends, as for a client that left."""

    async def main() -> tuple[list[str], bool, bytes, bool]:
        told: list[str] = []
        stalled = asyncio.Event()

        async def send(data: bytes) -> None:
            await stalled.wait()  # the first write completes only when the test says so: never
            await never()

        channel = GrpcStreamChannel(
            end_of_requests, send, role="server", write_timeout=TIMEOUT, on_half_close=lambda: told.append("done")
        )
        reading = asyncio.ensure_future(channel.read())
        while not told:
            await asyncio.sleep(0)
        waiting = not reading.done()  # told, and still reading: nothing ended the call
        channel.write(token_frame())  # a session's event the client never takes
        read = await asyncio.wait_for(reading, 5)
        await asyncio.wait_for(channel.aclose(), 1)
        return told, waiting, read, channel.half_closed

    told, waiting, read, half_closed = asyncio.run(main())
    assert told == ["done"] and waiting and half_closed
    assert read == b""


# -- QUIC ------------------------------------------------------------------------------------------------------


class FakeQuic:
    """What ``QuicPeer`` asks of aioquic's connection: one stream whose sent offset the test moves."""

    def __init__(self) -> None:
        self.configuration = SimpleNamespace(is_client=False)
        self._streams: dict[int, Any] = {}

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self._streams.setdefault(stream_id, SimpleNamespace(sender=SimpleNamespace(highest_offset=0)))

    def datagrams_to_send(self, now: float) -> list[Any]:
        return []

    def get_timer(self) -> None:
        return None

    def sent(self, stream_id: int, count: int) -> None:
        self._streams[stream_id].sender.highest_offset += count


async def blocked_peer() -> tuple[QuicPeer, FakeQuic, list[int]]:
    """A peer with ``write_timeout`` whose stream 4 holds more than ``HIGH_WATER`` unsent (its drain waits)."""
    quic = FakeQuic()
    peer = QuicPeer(quic)  # type: ignore[arg-type]
    stalled: list[int] = []
    peer.write_timeout = TIMEOUT
    peer.on_write_stalled = stalled.append
    peer._listeners[4] = SimpleNamespace()  # type: ignore[assignment]
    peer.write(4, b"x" * (4 * HIGH_WATER))
    return peer, quic, stalled


def test_a_quic_stream_sending_nothing_while_drained_is_reported_once_at_the_write_timeout():
    async def main() -> tuple[list[int], float, bool]:
        peer, _, stalled = await blocked_peer()
        loop = asyncio.get_running_loop()
        started = loop.time()
        draining = asyncio.ensure_future(peer.drain(4))
        while not stalled and loop.time() - started < 5:
            await asyncio.sleep(0.01)  # polling the fake's report
        after = loop.time() - started
        await asyncio.sleep(3 * TIMEOUT)  # still waiting: not reported again in the same wait
        waiting = not draining.done()
        peer.forget(4)  # (the gateway resets it: the drain returns)
        await asyncio.wait_for(draining, 1)
        return stalled, after, waiting

    stalled, after, waiting = asyncio.run(main())
    assert stalled == [4] and waiting
    assert TIMEOUT <= after < TIMEOUT + 1, after


def test_a_quic_stream_sending_a_little_within_each_write_timeout_is_never_reported():
    async def main() -> tuple[list[int], bool]:
        peer, quic, stalled = await blocked_peer()
        draining = asyncio.ensure_future(peer.drain(4))
        for _ in range(8):  # 1.2 s, four times the bound: a few bytes each half bound
            await asyncio.sleep(TIMEOUT / 2)
            quic.sent(4, 100)
            peer.transmit()
        cut = draining.done()
        quic.sent(4, 4 * HIGH_WATER)  # it caught up: the drain returns
        peer.transmit()
        await asyncio.wait_for(draining, 1)
        return stalled, cut

    stalled, cut = asyncio.run(main())
    assert stalled == [] and not cut
