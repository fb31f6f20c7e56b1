"""``run_session``'s lane (``session._run_lane``): the common session — one target, no budget, cache,
shared call or hook — runs in one coroutine instead of climbing ``stream_batches``, ``_attempts`` and
``_one_attempt``. It must be a shortcut and nothing else: every scenario here runs twice, once down
the lane and once with the lane refused (the general path), against the same upstream, and the two
must hand the caller the same events, leave the same ledger row and the same circuit — for an answer,
and for each way the first attempt can fail and the general path takes the session over."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from engine_kit import make_engine

from gtl_nb.engine import session, session_parts
from gtl_nb.engine.breaker import BreakerConfig
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.http import Timeouts
from gtl_nb.engine.ledger import FINISH_FIELDS
from gtl_nb.engine.session import run_session
from gtl_nb.engine.stores import MemoryBreakerStore, MemoryBudgetCounter, MemoryResponseCache, Stores
from gtl_nb.engine.stores.memory import MemoryUsageLedger
from gtl_nb.protocol import CompletionRequest, Done, Error, Message, SessionStateMachine, Token, Usage
from gtl_nb.protocol.messages import TERMINAL_EVENTS
from gtl_nb.providers import registry
from gtl_nb.providers.base import Deployment, HttpRequest, error_event

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
TIMEOUTS = Timeouts(connect=2, first_byte=0.5, idle=0.3)
ROW_FIELDS = ("status", *sorted(FINISH_FIELDS - {"latency_ms", "ttft_ms"}))  # the row, times aside
TIMES = ("latency_ms", "ttft_ms", "retry_after")


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class _Decoder:
    """``t:<text>`` lines are tokens, ``u`` usage, ``done`` the end, ``boom`` a decoder bug."""

    def __init__(self, request: CompletionRequest) -> None:
        self.sid = request.session_id
        self.buffer = b""
        self.ended = False

    def feed(self, chunk: bytes) -> list:
        from gtl_nb.protocol import Usage

        self.buffer += chunk
        events: list = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith(b"t:"):
                events.append(Token(session_id=self.sid, text=line[2:].decode()))
            elif line == b"u":
                events.append(Usage(session_id=self.sid, tokens_in=3, tokens_out=2))
            elif line == b"done":
                self.ended = True
                events.append(Done(session_id=self.sid, finish_reason="stop"))
            elif line == b"boom":
                raise ValueError("decoder bug")
        return events

    def close(self) -> list:
        if self.ended:
            return []
        return [Error(session_id=self.sid, code="PROVIDER_UNAVAILABLE", message="stream ended early", retryable=True)]


class _Dialect:
    name = "lane-lines"

    def build_request(self, request, deployment, *, now):
        return HttpRequest("POST", f"{deployment.base_url}/chat", {"content-type": "text/plain"}, b"hi")

    def response_decoder(self, request, deployment):
        return _Decoder(request)

    def decode_error(self, request, deployment, status, headers, body):
        code = {503: "OVERLOADED", 401: "AUTHENTICATION"}.get(status, "INVALID_REQUEST")
        return error_event(request, deployment, code, body.decode(), http_status=status)


registry.register("lane-lines", _Dialect())


class _Upstream:
    """A loopback server answering its n-th connection with ``script[n]`` (the last one from then on)."""

    def __init__(self, *script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            behaviour = self.script[min(self.connections, len(self.script) - 1)]
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, behaviour), daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket, behaviour: Callable[[socket.socket], None]) -> None:
        with conn:
            conn.recv(65536)
            try:
                behaviour(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def _answer(conn: socket.socket) -> None:
    conn.sendall(HEAD + _chunked(b"t:hel", b"lo\nt: world\nu\ndone\n"))


def _status(code: int, reason: str = "Busy") -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\nContent-Length: 4\r\n\r\nnope".encode())

    return reply


def _done_in_a_read_of_its_own(conn: socket.socket) -> None:
    conn.sendall(HEAD + b"10\r\nt:hel\nt:lo world\n\r\n")
    time.sleep(0.05)
    conn.sendall(b"2\r\nu\n\r\n")
    time.sleep(0.05)
    conn.sendall(_chunked(b"done\n"))


def _cut_after_a_token(conn: socket.socket) -> None:
    conn.sendall(HEAD + b"8\r\nt:part\nu\n")  # then the connection closes mid-body


def _silent(conn: socket.socket) -> None:
    conn.settimeout(3)
    try:
        conn.recv(1)
    except OSError:
        pass


def _out_of_order(conn: socket.socket) -> None:
    conn.sendall(HEAD + _chunked(b"u\nt:late token\ndone\n"))


def _decoder_bug(conn: socket.socket) -> None:
    conn.sendall(HEAD + _chunked(b"t:x\nboom\n"))


def _engine(url: str, *, lane: bool, ledger: Any, routing: dict[str, Any] | None = None) -> Engine:
    built: dict[str, Any] = {"ledger": ledger}  # a path: the SQLite ledger, as ``connect`` builds it
    if not isinstance(ledger, Path):
        breakers = MemoryBreakerStore(BreakerConfig.from_dict((routing or {}).get("breaker")))
        built = {
            "stores": Stores(
                ledger=ledger, budgets=MemoryBudgetCounter(), cache=MemoryResponseCache(), breakers=breakers
            )
        }
    engine = make_engine(
        {"a": Deployment(name="a", type="lane-lines", base_url=url, models=("m",))},
        **built,
        timeouts=TIMEOUTS,
        routing=routing or {"retry": {"max_attempts": 1}},
        sleep=lambda _: asyncio.sleep(0),
    )
    taken: list[bool] = []
    choose = engine.lane_targets

    def spied(request: CompletionRequest, context: RequestContext) -> Any:
        chosen = choose(request, context) if lane else None
        taken.append(chosen is not None)
        return chosen

    engine.lane_targets = spied  # type: ignore[method-assign]
    engine.lanes_taken = taken  # type: ignore[attr-defined]
    engine.heard = []  # type: ignore[attr-defined]
    if _HOOKED["on"]:  # a subscriber that does not want the answer's text: the lane is still taken
        engine.hooks.subscribe(lambda event: engine.heard.append(_hook_event(event)))  # type: ignore[attr-defined]
    return engine


_HOOKED = {"on": False}


@pytest.fixture(autouse=True, params=["no hooks", "hooks"])
def hooked(request: pytest.FixtureRequest) -> bool:
    """Every test here runs with no hook subscriber and with one (metrics and an audit log subscribe,
    never wanting the answer's text): the lane must tell hooks what the general path tells them."""
    _HOOKED["on"] = request.param == "hooks"
    return _HOOKED["on"]


def _hook_event(event: Any) -> tuple:
    """What a hook heard, without times and identities."""
    skip = ("handle", "context", "request", "latency_ms", "ttft_ms", "delay", "engine")
    names = [f.name for f in dataclasses.fields(event)] if dataclasses.is_dataclass(event) else []
    kept = {name: repr(getattr(event, name)) for name in names if name not in skip}
    return (type(event).__name__, tuple(sorted(kept.items(), key=lambda kv: kv[0])))


def _request(**fields: Any) -> CompletionRequest:
    return CompletionRequest(session_id="s1", model="m", messages=[Message(role="user", content="hi")], **fields)


def _plain(event: Any) -> dict[str, Any]:
    if isinstance(event, tuple) and event[0] == "hook":  # what a hook subscriber heard
        return {"hook": repr(event[1])}
    if isinstance(event, tuple):  # (``finish``, the event) — an end the stream did not deliver
        return {"finish": _plain(event[1])}
    fields = msgspec.structs.asdict(event)
    fields = {k: v for k, v in fields.items() if k not in TIMES}
    fields["type"] = type(event).__name__
    return fields


async def _rows(engine: Engine) -> list[dict[str, Any]]:
    if engine.stores.ledger is None:
        return []
    rows = engine.stores.ledger.rows()
    return await rows if inspect.isawaitable(rows) else rows


async def _session(engine: Engine, *, prepare: Callable[[Engine], Any] | None = None) -> tuple[list, list, dict]:
    if prepare is not None:
        await prepare(engine)
    sent: list = []
    ended: list = []  # what ``run_session`` sent through ``finish``: nothing, when the stream delivered its end
    await run_session(engine, _request(), RequestContext(principal="alice"), sent.append, finish=ended.append)
    rows = await _rows(engine)
    circuits = await engine.breaker_states()
    await engine.aclose()
    return [*sent, *(("finish", e) for e in ended), *(("hook", h) for h in engine.heard)], rows, circuits


def _down_both(
    main: Callable[[Engine], Any],
    *script: Callable[[socket.socket], None],
    ledger: Callable[[bool], Any] = lambda lane: MemoryUsageLedger(),
    routing: dict[str, Any] | None = None,
    timeouts: Timeouts | None = None,
) -> list[Any]:
    """What ``main(engine)`` returns down the lane, then down the general path — each engine new, its
    ledger ``ledger(lane)``, against an upstream of its own answering with ``script``."""
    outcomes = []
    for lane in (True, False):
        upstream = _Upstream(*script)
        try:
            engine = _engine(upstream.url, lane=lane, ledger=ledger(lane), routing=routing)
            if timeouts is not None:
                engine.http.timeouts = timeouts
            outcomes.append(asyncio.run(main(engine)))
            assert engine.lanes_taken == [lane]  # type: ignore[attr-defined]
        finally:
            upstream.close()
    return outcomes


def _both(*script: Callable[[socket.socket], None], **options: Any) -> tuple[tuple, tuple]:
    """The scenario down the lane and down the general path: (events, rows, circuits) of each."""
    lane, general = _down_both(
        lambda engine: _session(engine, prepare=options.get("prepare")), *script, routing=options.get("routing")
    )
    return lane, general


def _row_fields(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row.get(k) for k in ROW_FIELDS} for row in rows]


def _same(lane: tuple, general: tuple) -> list:
    (lane_events, lane_rows, lane_circuits), (events, rows, circuits) = lane, general
    assert [_plain(e) for e in lane_events] == [_plain(e) for e in events]
    assert _row_fields(lane_rows) == _row_fields(rows)
    keep = ("state", "consecutive_failures", "calls_in_window", "probes_in_flight")
    assert {n: {k: c[k] for k in keep} for n, c in lane_circuits.items()} == {
        n: {k: c[k] for k in keep} for n, c in circuits.items()
    }
    # one session, told in order, ended once, with one row (and its hooks: one start, one end)
    sent = [e for e in lane_events if not isinstance(e, tuple)]
    machine = SessionStateMachine("s1")
    for event in sent:
        machine.advance(event)
    machine.end_of_stream()
    assert sum(type(e) in TERMINAL_EVENTS for e in sent) == 1 and len(lane_rows) == 1
    heard = [e[1][0] for e in lane_events if isinstance(e, tuple) and e[0] == "hook"]
    if _HOOKED["on"]:
        assert heard.count("RequestStarted") == 1 and heard.count("RequestFinished") == 1
    return sent


def test_an_answer_down_the_lane_is_the_general_paths_answer():
    events = _same(*_both(_answer))
    assert "".join(e.text for e in events if isinstance(e, Token)) == "hello world"
    assert isinstance(events[-1], Done) and events[-1].provider == "a" and events[-1].latency_ms is not None


def test_a_first_attempt_refused_with_503_is_retried_by_the_general_path_taking_over():
    events = _same(*_both(_status(503), _answer, routing={"retry": {"max_attempts": 2}}))
    states = [e.state for e in events if type(e).__name__ == "Status"]
    assert states == ["queued", "streaming", "retrying", "streaming"] and isinstance(events[-1], Done)


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (_status(400, "Bad"), "INVALID_REQUEST"),
        (_status(401, "No"), "AUTHENTICATION"),
        (_cut_after_a_token, "PROVIDER_UNAVAILABLE"),
        (_silent, "TIMEOUT"),
        (_out_of_order, "INTERNAL"),
        (_decoder_bug, "INTERNAL"),
    ],
    ids=["invalid", "auth", "cut-mid-answer", "first-byte-timeout", "out-of-order", "decoder-bug"],
)
def test_a_first_attempt_that_fails_ends_as_the_general_path_ends_it(behaviour, code, caplog):
    with caplog.at_level(logging.CRITICAL, logger="gtl_nb"):
        events = _same(*_both(behaviour))
    assert isinstance(events[-1], Error) and events[-1].code == code


def test_an_unreachable_provider_ends_as_the_general_path_ends_it():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    outcomes = []
    for lane in (True, False):
        engine = _engine(url, lane=lane, ledger=MemoryUsageLedger())
        outcomes.append(asyncio.run(_session(engine)))
    events = _same(*outcomes)
    assert events[-1].code == "PROVIDER_UNAVAILABLE"


def _open_circuit(cooldown: float) -> tuple[dict[str, Any], Callable[[Engine], Any]]:
    routing = {"retry": {"max_attempts": 1}, "breaker": {"failure_threshold": 1, "cooldown": cooldown}}

    async def prepare(engine: Engine) -> None:
        await engine.stores.breakers.record_failure("a")

    return routing, prepare


def test_an_open_circuit_is_the_general_paths_refusal():
    routing, prepare = _open_circuit(cooldown=60)
    events = _same(*_both(_answer, routing=routing, prepare=prepare))
    assert events[-1].code == "PROVIDER_UNAVAILABLE" and "every circuit is open" in events[-1].message


def test_a_half_open_circuits_probe_is_the_general_paths_and_closes_it():
    routing, prepare = _open_circuit(cooldown=0)
    lane, general = _both(_answer, routing=routing, prepare=prepare)
    events = _same(lane, general)
    assert isinstance(events[-1], Done) and lane[2]["a"]["state"] == "closed"


def test_a_session_with_two_targets_or_answers_recorded_or_budgets_does_not_take_the_lane():
    engine = make_engine(
        {
            "a": Deployment(name="a", type="lane-lines", base_url="http://127.0.0.1:9", models=("m",)),
            "b": Deployment(name="b", type="lane-lines", base_url="http://127.0.0.1:9", models=("m",)),
        }
    )
    context = RequestContext(principal="alice")
    assert engine.lane_targets(_request(provider="a"), context) is not None
    assert engine.lane_targets(_request(providers=["a", "b"]), context) is None
    assert engine.lane_targets(_request(temperature=0.0, provider="a"), context) is None  # shared (coalesced)
    assert engine.lane_targets(_request(provider="nowhere"), context) is None  # refused: worded by the general path
    engine.hooks.subscribe(lambda event: None)  # (metrics, an audit log: told of each request, not its text)
    assert engine.lane_targets(_request(provider="a"), context) is not None
    engine.hooks.want_answers = True  # a subscriber that records the answer's text (traces with content)
    assert engine.lane_targets(_request(provider="a"), context) is None
    budgeted = make_engine(
        {"a": Deployment(name="a", type="lane-lines", base_url="http://127.0.0.1:9", models=("m",))},
        budgets={"tokens_per_minute": 1000},
    )
    assert budgeted.lane_targets(_request(), context) is None


def test_a_cancel_mid_answer_down_the_lane_ends_the_row_cancelled_and_the_session_once():
    def slow(conn: socket.socket) -> None:
        conn.sendall(HEAD + _chunked(b"t:first\n")[:-5])  # a token, then nothing more for a while
        _silent(conn)

    async def main(engine: Engine) -> tuple[list, list]:
        sent: list = []
        task = asyncio.ensure_future(run_session(engine, _request(), RequestContext(principal="alice"), sent.append))
        while not any(isinstance(e, Token) for e in sent):
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = await _rows(engine)
        await engine.aclose()
        return sent, rows

    upstream = _Upstream(slow)
    try:
        engine = _engine(upstream.url, lane=True, ledger=MemoryUsageLedger())
        engine.http.timeouts = Timeouts(connect=2, first_byte=5, idle=5)
        sent, rows = asyncio.run(main(engine))
    finally:
        upstream.close()
    assert engine.lanes_taken == [True]  # type: ignore[attr-defined]
    assert [type(e).__name__ for e in sent][-1] == "Error" and sent[-1].code == "CANCELLED"
    assert sum(type(e) in TERMINAL_EVENTS for e in sent) == 1
    assert [(r["status"], r["error_code"]) for r in rows] == [("cancelled", "CANCELLED")]
    assert session_parts.REQUEST_CONTEXT.get(None) is None


def test_a_session_its_front_end_ends_with_an_error_leaves_that_error_in_its_row_down_both_paths():
    # a gateway connection that told its client INVALID_REQUEST (a second request for the running id)
    # cancels the session: its row says what the client was told, not ``cancelled``, and the reader is
    # handed that one end
    def slow(conn: socket.socket) -> None:
        conn.sendall(HEAD + _chunked(b"t:first\n")[:-5])  # a token, then nothing more for a while
        _silent(conn)

    told = Error(session_id="s1", code="INVALID_REQUEST", message="a second completion_request for live session")

    async def main(engine: Engine) -> tuple[list, list]:
        sent: list = []
        ended: list = []
        ending = session.SessionEnd()
        context = RequestContext(principal="alice")
        task = asyncio.ensure_future(
            run_session(engine, _request(), context, sent.append, finish=ended.append, ending=ending)
        )
        while not any(isinstance(e, Token) for e in sent):
            await asyncio.sleep(0.005)
        ending.end_with(told)
        ending.end_with(Error(session_id="s1", code="INTERNAL", message="a later one changes nothing"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = await _rows(engine)
        await engine.aclose()
        return sent + ended, rows

    (lane_events, lane_rows), (events, rows) = _down_both(
        main, slow, timeouts=Timeouts(connect=2, first_byte=5, idle=5)
    )
    assert [_plain(e) for e in lane_events] == [_plain(e) for e in events]
    assert lane_events[-1] is told and sum(type(e) in TERMINAL_EVENTS for e in lane_events) == 1
    assert [(r["status"], r["error_code"]) for r in lane_rows] == [("error", "INVALID_REQUEST")]
    assert _row_fields(lane_rows) == _row_fields(rows)


def test_an_end_from_outside_changes_nothing_once_the_engine_has_decided_the_end():
    ending = session.SessionEnd()
    ending.event = Done(session_id="s1", finish_reason="stop")
    ending.end_with(Error(session_id="s1", code="INVALID_REQUEST", message="too late"))
    assert ending.failure is None


@pytest.mark.parametrize("where", ["mid-answer", "recording-success"])
@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "no-ledger"])
def test_a_cancel_is_told_and_recorded_as_down_the_general_path(where, ledger):
    # cancelled mid-answer, or while a slow breaker store records the success after ``done`` was read:
    # the same events, the same row, and — with no ledger at all — the hooks still hear the end
    def slow(conn: socket.socket) -> None:
        conn.sendall(HEAD + _chunked(b"t:first\n")[:-5])  # a token, then nothing more for a while
        _silent(conn)

    async def main(engine: Engine) -> tuple[list, list]:
        if where == "recording-success":
            record_success = engine.stores.breakers.record_success

            async def slowly(name: str) -> Any:
                await asyncio.sleep(5)
                return await record_success(name)

            engine.stores.breakers.record_success = slowly  # type: ignore[method-assign]
        sent: list = []
        ended: list = []
        task = asyncio.ensure_future(
            run_session(engine, _request(), RequestContext(principal="alice"), sent.append, finish=ended.append)
        )
        while not any(isinstance(e, Usage if where == "recording-success" else Token) for e in sent):
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = await _rows(engine)
        await engine.aclose()
        heard = [("hook", h) for h in engine.heard]  # type: ignore[attr-defined]
        return [*sent, *(("finish", e) for e in ended), *heard], rows

    (lane_events, lane_rows), (events, rows) = _down_both(
        main,
        slow if where == "mid-answer" else _answer,
        ledger=lambda lane: MemoryUsageLedger() if ledger else None,
        timeouts=Timeouts(connect=2, first_byte=5, idle=5),
    )
    assert [_plain(e) for e in lane_events] == [_plain(e) for e in events]
    assert _row_fields(lane_rows) == _row_fields(rows)
    ends = [e for e in lane_events if not isinstance(e, tuple) or e[0] == "finish"]
    assert sum(type(e[1] if isinstance(e, tuple) else e) in TERMINAL_EVENTS for e in ends) == 1
    if _HOOKED["on"]:
        heard = [e[1][0] for e in lane_events if isinstance(e, tuple) and e[0] == "hook"]
        assert heard.count("RequestStarted") == 1 and heard.count("RequestFinished") == 1
    assert session_parts.REQUEST_CONTEXT.get(None) is None


def test_a_bug_in_the_lane_itself_ends_the_session_and_its_row_internal(caplog):
    async def main(engine: Engine) -> tuple[list, list]:
        def broken(*args: Any) -> Any:
            raise RuntimeError("lane bug")

        engine._call = broken  # type: ignore[method-assign]
        sent: list = []
        await run_session(engine, _request(), RequestContext(principal="alice"), sent.append)
        rows = await _rows(engine)
        await engine.aclose()
        return sent, rows

    engine = _engine("http://127.0.0.1:9", lane=True, ledger=MemoryUsageLedger())
    with caplog.at_level(logging.ERROR, logger="gtl_nb"):
        sent, rows = asyncio.run(main(engine))
    assert sent[-1].code == "INTERNAL" and "lane bug" in sent[-1].message
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "INTERNAL")]
    assert any("failed inside the engine" in r.getMessage() for r in caplog.records)


def test_the_lane_answers_through_the_sqlite_ledger_as_the_general_path_does(tmp_path):
    events = _same(*_down_both(_session, _answer, ledger=lambda lane: tmp_path / f"{lane}.sqlite3"))
    assert isinstance(events[-1], Done)


@pytest.mark.parametrize("behaviour", [_answer, _done_in_a_read_of_its_own], ids=["one-read", "done-alone"])
def test_the_lane_lets_a_slow_reader_hold_it_back_as_often_as_the_general_path_does(behaviour):
    async def main(engine: Engine) -> tuple[list, list]:
        sent: list = []
        drained: list = []

        def drain() -> Any:
            drained.append(len(sent))  # how much the reader had been handed at each chance to hold back
            return asyncio.sleep(0) if len(drained) % 2 else None

        await run_session(engine, _request(), RequestContext(principal="alice"), sent.append, drain=drain)
        await engine.aclose()
        return sent, drained

    outcomes = _down_both(main, behaviour)
    (lane_sent, lane_drained), (sent, drained) = outcomes
    assert [_plain(e) for e in lane_sent] == [_plain(e) for e in sent]
    assert lane_drained == drained and drained[0] == 1 and drained[-1] == len(sent)


def test_a_cancel_while_a_slow_reader_holds_the_end_sends_no_second_end():
    # the reader is slow after ``done`` was handed to it: a cancel then (the client leaving) must not
    # make the session runner send an end again — down either path
    async def main(engine: Engine) -> tuple[list, list]:
        sent: list = []
        ended: list = []
        full = asyncio.Event()

        def drain() -> Any:
            return full.wait() if any(isinstance(e, Done) for e in sent) else None

        task = asyncio.ensure_future(
            run_session(
                engine, _request(), RequestContext(principal="alice"), sent.append, drain=drain, finish=ended.append
            )
        )
        while not any(isinstance(e, Done) for e in sent):
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.aclose()
        return sent, ended

    outcomes = _down_both(main, _answer)
    for sent, ended in outcomes:
        assert ended == [] and sum(type(e) in TERMINAL_EVENTS for e in sent) == 1


def test_a_reader_refusing_an_event_fails_the_session_as_down_the_general_path():
    # the reader's failure is not the engine's bug: the exception goes on to the session's runner, the
    # reader hears INTERNAL through ``finish``, and the row ends with that same error (not ``cancelled``:
    # the ledger tells the end the reader was told)
    async def main(engine: Engine) -> tuple[list, list, list]:
        sent: list = []
        ended: list = []

        def send(event: Any) -> None:
            if isinstance(event, Token):
                raise ValueError("this connection cannot carry that")
            sent.append(event)

        with pytest.raises(ValueError, match="cannot carry"):
            await run_session(engine, _request(), RequestContext(principal="alice"), send, finish=ended.append)
        rows = await _rows(engine)
        await engine.aclose()
        return sent, ended, rows

    outcomes = _down_both(main, _answer)
    (sent, ended, rows), general = outcomes
    assert [_plain(e) for e in sent] == [_plain(e) for e in general[0]]
    assert [_plain(e) for e in ended] == [_plain(e) for e in general[1]]
    assert [e.code for e in ended] == ["INTERNAL"] and "cannot carry" in ended[0].message
    assert [(r["status"], r["error_code"]) for r in rows] == [(r["status"], r["error_code"]) for r in general[2]]
    assert [(r["status"], r["error_code"]) for r in rows] == [("error", "INTERNAL")]


def test_a_reader_refusing_the_end_itself_is_told_internal_once_down_both_paths():
    # the row is complete before the end goes out (it says ok: the provider answered); a reader that
    # cannot take that end hears INTERNAL through ``finish`` — not the same end again, which it just refused
    async def main(engine: Engine) -> tuple[list, list, list]:
        sent: list = []
        ended: list = []

        def send(event: Any) -> None:
            if isinstance(event, Done):
                raise ValueError("this connection cannot carry that end")
            sent.append(event)

        def finish(event: Any) -> None:
            if isinstance(event, Done):  # (as a gateway's finish would fail to frame it again)
                raise AssertionError("the refused end was sent again")
            ended.append(event)

        with pytest.raises(ValueError, match="cannot carry that end"):
            await run_session(engine, _request(), RequestContext(principal="alice"), send, finish=finish)
        rows = await _rows(engine)
        await engine.aclose()
        return sent, ended, rows

    outcomes = _down_both(main, _answer)
    (sent, ended, rows), general = outcomes
    assert [_plain(e) for e in sent] == [_plain(e) for e in general[0]]
    assert [e.code for e in ended] == ["INTERNAL"] == [e.code for e in general[1]]
    assert "cannot carry that end" in ended[0].message
    assert (
        [(r["status"], r["error_code"]) for r in rows]
        == [("ok", None)]
        == [(r["status"], r["error_code"]) for r in general[2]]
    )
