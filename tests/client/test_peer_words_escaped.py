"""A server's words reach ``str(exception)`` escaped: an ``error`` whose code the client does not know
(kept in ``peer_code``), its message and the provider it names may hold ESC, newlines or bidi overrides,
and an application that logs the exception must not have a line forged or its terminal recoloured.

A hostile GTL server on loopback (the websockets library, raw frames) answers each request with such an
``error``; the client is ``gtl_nb.connect("ws://…")``."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
import websockets

import gtl_nb
from gtl_nb.protocol.errors import GTLError, escaped
from gtl_nb.words import shown_in_terminal

HOSTILE = "EVIL\x1b[31m\nFAKE LOG LINE\u202e\x85"


async def _answer(socket: websockets.ServerConnection) -> None:
    async for message in socket:
        for line in str(message).splitlines():
            frame = json.loads(line)
            if frame.get("type") == "hello":
                await socket.send(json.dumps({"type": "hello", "version": "1.0", "features": ["cancel", "query"]}))
                await socket.send(json.dumps({"type": "provider_info", "provider": "", "models": []}))
            elif frame.get("type") == "completion_request":
                error = {
                    "type": "error",
                    "session_id": frame["session_id"],
                    "code": HOSTILE,
                    "message": "m\x1b[0m\r\nsecond line\u2066",
                    "provider": "p\x1b]0;title\x07",
                }
                await socket.send(json.dumps(error))


@pytest.fixture
def hostile_server() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    ports: list[int] = []
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with websockets.serve(_answer, "127.0.0.1", 0, subprotocols=["gtl.ndjson"]) as server:
            ports.append(next(iter(server.sockets)).getsockname()[1])
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield ports[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def test_a_servers_unknown_code_message_and_provider_are_escaped_in_the_exception(hostile_server):
    client = gtl_nb.connect(f"ws://127.0.0.1:{hostile_server}", token="tok-test")
    try:
        with pytest.raises(GTLError) as caught:
            client.complete("m", "hi")
    finally:
        client.close()
    error = caught.value
    shown = str(error)
    assert error.peer_code == HOSTILE[: len(error.peer_code or "")]  # the raw code stays on the attribute
    for forged in ("\x1b", "\n", "\r", "\u202e", "\u2066", "\x85", "\x07"):
        assert forged not in shown
    assert "EVIL\\x1b[31m\\nFAKE LOG LINE\\u202e" in shown
    assert "m\\x1b[0m\\r\\nsecond line\\u2066" in shown
    assert "[p\\x1b]0;title\\x07]" in shown


@pytest.mark.parametrize("text", ["plain", "a\nb", "\x1b[2J", "\u202eabc", "tab\there", "\x85\x9b", "é ü ✓"])
def test_the_protocol_layers_escape_is_the_terminals(text):
    assert escaped(text) == shown_in_terminal(text)
