"""How a refusal's row is written (``gateway.refusals``): in a task of its own the caller's cancel does not
cut short, which the gateway's stop waits for — a bounded time — before the ledger closes; and a gRPC
``Complete`` that reaches the gateway once it stops is read and refused with its row."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import gtl_nb
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.grpc import GTLServicer
from gtl_nb.gateway.listeners import Limits
from gtl_nb.gateway.refusals import GatewayStopping, recorded_refusal, recordings_of
from gtl_nb.transports.grpc.mapping import to_proto


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Any]:
    client = gtl_nb.connect(config={"ledger": {"path": str(tmp_path / "ledger.sqlite")}})
    yield client
    client.close()


def _slow_finish(engine: Any, seconds: float) -> Any:
    """Make the engine's row endings take ``seconds`` (a PostgreSQL ledger slow to answer); returns the original."""
    written = engine._finish

    async def slow_finish(*args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.sleep(seconds)
        finally:
            await written(*args, **kwargs)

    engine._finish = slow_finish
    return written


def _slow_start(engine: Any, seconds: float) -> Any:
    """Make the engine's row starts wait ``seconds`` (a ledger's full queue); returns the original."""
    started = engine._ledger_start

    async def slow_start(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await started(*args, **kwargs)

    engine._ledger_start = slow_start
    return started


def _rows(tmp_path: Path, session_id: str) -> list[tuple[str, str]]:
    rows = Ledger(tmp_path / "ledger.sqlite").rows(session_id=session_id)
    return [(row["status"], row["error_code"]) for row in rows]


def test_a_connection_whose_last_session_ends_while_a_refusal_is_recorded_sends_it_first(tmp_path: Path):
    """During the stop a connection closes once it runs no session; a refusal its reader is recording
    then is finished and sent first (closing cancelled the reader: no error, and no row)."""
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.listeners import Shutdown
    from gtl_nb.gateway.scopes import SCOPE_NAMES
    from gtl_nb.gateway.sessions import GatewayConnection
    from gtl_nb.protocol import Done, Error, GTLConnection
    from gtl_nb.transports.framed import FramedConnection
    from tests.gateway.test_backpressure import HeldChannel, settle, take
    from tests.gateway.test_connection_limits import request, said_hello

    async def main() -> dict[str, Any]:
        channel = HeldChannel()
        shutdown = Shutdown(grace=60)
        settings = load_settings(config={"providers": {"echo": {"options": {"pace": 0.01}}}}, environ={})
        engine = build_engine(settings, ledger=tmp_path / "ledger.sqlite", audience="gateway")
        gateway = GatewayConnection(
            engine,
            FramedConnection(GTLConnection("server"), channel),
            authenticate=lambda token: RequestContext(principal="ann", scopes=SCOPE_NAMES),
            shutdown=shutdown,
        )
        running, client = await said_hello(gateway, channel)
        channel.inbox.put_nowait(client.send(request("short", "one two three")))  # 0.3 s of tokens
        await settle()
        shutdown.begin()
        await settle()
        _slow_start(engine, 1.0)  # the refusal's row is still being written when "short" ends
        channel.inbox.put_nowait(client.send(request("late")))
        await asyncio.wait_for(running, 10)
        await engine.aclose()
        return {e.session_id: e for e in take(channel, client) if isinstance(e, (Done, Error))}

    ends = asyncio.run(main())
    assert isinstance(ends["short"], Done), ends
    assert ends["late"].code == "PROVIDER_UNAVAILABLE" and "shutting down" in ends["late"].message, ends
    assert _rows(tmp_path, "late") == [("error", "PROVIDER_UNAVAILABLE")]


def test_the_wait_for_refusals_is_bounded(embedded: Any, caplog: pytest.LogCaptureFixture):
    """A recording that does not end (a ledger making no room) holds the stop ``timeout`` seconds, not more."""
    engine = embedded.backend.engine
    written = _slow_finish(engine, 3600)
    request = embedded.request("echo", "hi", session_id="stuck")

    async def stop() -> tuple[float, int]:
        refusing = asyncio.ensure_future(
            recorded_refusal(engine, request, RequestContext(principal="ann"), GatewayStopping())
        )
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await recordings_of(engine).settle(0.3)
        await asyncio.gather(refusing, return_exceptions=True)
        return time.monotonic() - began, len(recordings_of(engine))

    try:
        with caplog.at_level(logging.WARNING, logger="gtl_nb.gateway"):
            seconds, left = embedded.backend.loop.run(stop())
    finally:
        engine._finish = written
    assert 0.3 <= seconds < 1.5 and left == 0, seconds
    assert "1 refused requests were still being recorded" in caplog.text


def test_settle_waits_for_a_refusal_begun_while_it_waits(embedded: Any, tmp_path: Path):
    engine = embedded.backend.engine
    written = _slow_finish(engine, 0.2)
    first, second = (embedded.request("echo", "hi", session_id=sid) for sid in ("first", "second"))
    context = RequestContext(principal="ann")

    async def stop() -> None:
        refusing = [asyncio.ensure_future(recorded_refusal(engine, first, context, GatewayStopping()))]
        await asyncio.sleep(0.01)
        settling = asyncio.ensure_future(recordings_of(engine).settle())
        await asyncio.sleep(0.1)
        refusing.append(asyncio.ensure_future(recorded_refusal(engine, second, context, GatewayStopping())))
        await asyncio.sleep(0.01)
        await settling
        assert all(task.done() for task in refusing)

    try:
        embedded.backend.loop.run(stop())
    finally:
        engine._finish = written
    assert _rows(tmp_path, "first") == _rows(tmp_path, "second") == [("error", "PROVIDER_UNAVAILABLE")]


class _Aborted(Exception):
    pass


class _Call:
    """The little of ``grpc.aio.ServicerContext`` that ``Complete`` uses, for one request message."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.status: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer any"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    async def read(self) -> bytes:
        return self.message

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = (code, details)
        raise _Aborted

    def set_compression(self, compression: Any) -> None:
        pass

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass


def test_a_grpc_complete_that_arrives_as_the_gateway_stops_is_refused_with_its_row(embedded: Any, tmp_path: Path):
    """gRPC refuses the calls made after its server stopped by itself (they never reach the gateway); one
    already dispatched to the gateway when the stop begins is read, then refused with its row."""
    engine = embedded.backend.engine
    servicer = GTLServicer(engine, authenticate=lambda token: RequestContext(principal="ann"), limits=Limits())
    request = embedded.request("echo", "hi", session_id="late-complete")
    call = _Call(to_proto(request).SerializeToString())

    async def complete() -> None:
        servicer.stopping.begin()
        with pytest.raises(_Aborted):
            await servicer.Complete(None, call)  # type: ignore[arg-type]
        await recordings_of(engine).settle()

    embedded.backend.loop.run(complete())
    assert call.status is not None and call.status[0] == grpc.StatusCode.UNAVAILABLE
    assert "PROVIDER_UNAVAILABLE" in call.status[1] and "shutting down" in call.status[1], call.status
    assert _rows(tmp_path, "late-complete") == [("error", "PROVIDER_UNAVAILABLE")]


def test_settle_waits_for_a_refusal_that_begins_as_the_last_one_ends(
    embedded: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """One reader records two refusals in turn: the second begins in the same step the first ends, before
    the waiting stop looks again — it is waited for, not taken for a stuck one and cancelled."""
    engine = embedded.backend.engine
    started = _slow_start(engine, 0.1)
    first, second = (embedded.request("echo", "hi", session_id=sid) for sid in ("one", "two"))
    context = RequestContext(principal="ann")

    async def reader() -> None:
        await recorded_refusal(engine, first, context, GatewayStopping())
        await recorded_refusal(engine, second, context, GatewayStopping())

    async def stop() -> None:
        reading = asyncio.ensure_future(reader())
        await asyncio.sleep(0.02)
        await recordings_of(engine).settle(2.0)
        assert reading.done() and not reading.cancelled()

    try:
        with caplog.at_level(logging.WARNING, logger="gtl_nb.gateway"):
            embedded.backend.loop.run(stop())
    finally:
        engine._ledger_start = started
    assert "still being recorded" not in caplog.text
    assert _rows(tmp_path, "one") == _rows(tmp_path, "two") == [("error", "PROVIDER_UNAVAILABLE")]
