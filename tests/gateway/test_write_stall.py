"""``gateway.write_stall``: a connection whose writing stays paused for ``write_timeout`` seconds is reset.

The WebSocket case runs end to end against a gateway process in tests/network/test_gateway_slow_and_idle.py;
here the rule itself, on a protocol of the test's own, and its place in the HTTP listener's two protocols
(HTTP/1.1 with SSE and the compatible endpoints, and WebSocket)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
import struct
from typing import Any

import pytest

from gtl_nb.gateway.http import _ConnectionGuard, _protocol_classes
from gtl_nb.gateway.listeners import Limits
from gtl_nb.gateway.unfinished import UnfinishedBytes
from gtl_nb.gateway.write_stall import WriteStallBound


class FakeSocket:
    def __init__(self) -> None:
        self.options: list[tuple[int, int, bytes]] = []

    def setsockopt(self, level: int, name: int, value: bytes) -> None:
        self.options.append((level, name, value))


class FakeTransport:
    def __init__(self, buffered: int = 200_000) -> None:
        self.socket = FakeSocket()
        self.aborted = False
        self.buffered = buffered
        self.protocol: Any = None

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str) -> Any:
        return self.socket if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class Recording:
    """A base protocol recording what reaches it through the mix-in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: FakeTransport) -> None:
        self.loop = loop
        self.transport = transport
        transport.protocol = self
        self.client = ("127.0.0.9", 4242)
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")


class Bounded(WriteStallBound, Recording):
    write_timeout = 0.05


def test_writing_paused_for_the_timeout_resets_the_connection(caplog):
    async def scenario() -> None:
        transport = FakeTransport()
        protocol = Bounded(asyncio.get_running_loop(), transport)
        with caplog.at_level(logging.INFO, logger="gtl_nb.gateway.write_stall"):
            protocol.pause_writing()
            await asyncio.sleep(0.2)
        assert protocol.calls == ["pause"] and transport.aborted
        assert transport.socket.options == [(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))]
        assert "dropping the connection from 127.0.0.9:4242: it read none of what was written to it for 0.05 s" in (
            caplog.text
        )
        assert "200000 bytes wait" in caplog.text

    asyncio.run(scenario())


def test_a_reader_that_drains_the_buffer_starts_the_count_again():
    async def scenario() -> None:
        transport = FakeTransport()
        protocol = Bounded(asyncio.get_running_loop(), transport)
        for _ in range(5):  # paused and resumed, each time within the timeout: a slow reader, never cut
            protocol.pause_writing()
            await asyncio.sleep(0.03)
            protocol.resume_writing()
        await asyncio.sleep(0.1)
        assert not transport.aborted
        assert protocol.calls == ["pause", "resume"] * 5

    asyncio.run(scenario())


def test_a_connection_lost_while_paused_is_not_touched_again():
    async def scenario() -> None:
        transport = FakeTransport()
        protocol = Bounded(asyncio.get_running_loop(), transport)
        protocol.pause_writing()
        protocol.connection_lost(None)
        await asyncio.sleep(0.1)
        assert not transport.aborted and protocol.calls == ["pause", "lost"]

    asyncio.run(scenario())


def test_a_protocol_replaced_by_an_upgrade_leaves_the_connection_to_its_successor():
    async def scenario() -> None:
        transport = FakeTransport()
        protocol = Bounded(asyncio.get_running_loop(), transport)
        protocol.pause_writing()
        transport.protocol = object()  # (a WebSocket upgrade hands the transport to another protocol)
        await asyncio.sleep(0.2)
        assert not transport.aborted

    asyncio.run(scenario())


def test_no_timeout_means_no_timer():
    async def scenario() -> None:
        class Unbounded(WriteStallBound, Recording):
            write_timeout = math.inf

        protocol = Unbounded(asyncio.get_running_loop(), FakeTransport())
        protocol.pause_writing()
        assert protocol._stall_timer is None

    asyncio.run(scenario())


@pytest.mark.parametrize("which", ["http", "websocket"])
def test_both_protocols_of_the_http_listener_carry_the_bound(which):
    limits = dataclasses.replace(Limits(), write_timeout=7.5)
    http, websocket = _protocol_classes(_ConnectionGuard(10), limits, 1024, UnfinishedBytes(1 << 20))
    protocol = http if which == "http" else websocket
    assert issubclass(protocol, WriteStallBound) and protocol.write_timeout == 7.5
    pausing = [cls for cls in protocol.__mro__ if "pause_writing" in vars(cls)]
    assert pausing[0] is WriteStallBound, pausing  # first: the library's own pause_writing runs under it
