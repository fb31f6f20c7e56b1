"""HTTP/SSE behind a proxy that spreads requests over replicas (nginx's round robin): a cancelled session's
``cancel`` query, a request of its own, reaches another replica, which knows no such session. The client
waited the whole ``CANCEL_WAIT`` for an end that only closing its response could bring — the session went
on generating, billed, meanwhile. It now closes the response a moment after that answer."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from gtl_nb import sim
from gtl_nb.gateway.local import start_gateway
from gtl_nb.protocol.messages import CompletionRequest, Message, Token
from gtl_nb.transports import http as http_transport
from gtl_nb.transports.http import HttpBackend

LONG_WAIT = 60.0  # CANCEL_WAIT made long, so a cancel that waited for it cannot pass for one that did not


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("sse", [False, True])
def test_a_cancel_whose_query_reaches_another_replica_closes_the_stream_at_once(tmp_path: Path, monkeypatch, sse):
    monkeypatch.setattr(http_transport, "CANCEL_WAIT", LONG_WAIT)
    with sim.serve("openai", seed=3, pace=0.05, api_key="sim-key") as upstream:
        gateways = []
        for index in range(2):
            config = tmp_path / f"gtl{index}.toml"
            config.write_text(
                f'[providers.openai]\napi_key = "sim-key"\nbase_url = "{upstream.base_url}"\n\n'
                f'[ledger]\npath = "{tmp_path / f"ledger{index}.sqlite3"}"\n',
                encoding="utf-8",
            )
            gateways.append(start_gateway(config))
        try:
            ports = itertools.cycle([int(g.url("http").rsplit(":", 1)[1]) for g in gateways])

            async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", next(ports))
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

            async def scenario() -> float:
                proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
                port = proxy.sockets[0].getsockname()[1]
                backend = HttpBackend(f"http://127.0.0.1:{port}", sse=sse, token=None)
                request = CompletionRequest(
                    session_id="spread-1",
                    model="openai:gpt-4o-mini",
                    stream=True,
                    max_tokens=400,
                    messages=[Message(role="user", content="tell me a long story")],
                )
                seen: list[object] = []
                task = asyncio.ensure_future(backend.session(request, seen.append))
                deadline = time.monotonic() + 30
                while sum(type(event) is Token for event in seen) < 3:
                    assert time.monotonic() < deadline, seen
                    await asyncio.sleep(0.01)
                cancelled = time.monotonic()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                took = time.monotonic() - cancelled
                proxy.close()
                await proxy.wait_closed()
                return took

            took = asyncio.run(scenario())
        finally:
            for gateway in gateways:
                gateway.stop()
    assert took < LONG_WAIT / 4, took  # closed after the other replica's "no such session", not at CANCEL_WAIT
    statuses = []
    for index in range(2):
        with sqlite3.connect(tmp_path / f"ledger{index}.sqlite3") as ledger:
            statuses += [row[0] for row in ledger.execute("SELECT status FROM requests")]
    assert statuses == ["cancelled"]  # the replica that ran it cancelled it when its response closed
