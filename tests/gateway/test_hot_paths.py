"""The gateway's per-request shortcuts answer exactly as the long way does.

* ``_HotRoutes`` calls the busiest endpoints without Starlette's router: for the same request, the
  same messages go out, and the same exception (if any) comes back, as through the Starlette app.
* ``ChunkEncoder`` writes a text chunk from a frame made once: byte for byte the chunk it would build.
* ``ledger.iso_utc`` (the ledger's and the audit log's times) formats the date once per second: the
  text of ``datetime.isoformat``.
* ``EventOutbox`` hands events over with a future and a flag: batches, the high-water pause, a
  writer cancelled while it waits.
* ``collect_session`` cancels the session with who cancelled it, and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
from typing import Any

import pytest
from engine_kit import make_engine

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import iso_utc
from gtl_nb.gateway.compat.openai import error_body
from gtl_nb.gateway.compat.openai_response import ChunkEncoder
from gtl_nb.gateway.http import _HotRoutes, _sse, build_app
from gtl_nb.gateway.listeners import Limits, Shutdown
from gtl_nb.gateway.streaming import EventOutbox, collect_session
from gtl_nb.protocol.codec import encode
from gtl_nb.protocol.errors import AuthenticationError
from gtl_nb.protocol.messages import Done, Status, Token
from gtl_nb.providers.base import Deployment

# -- _HotRoutes against the Starlette application ------------------------------------------------------


def _authenticate(token: str | None) -> RequestContext:
    if token == "bug":
        raise RuntimeError("a bug in the authenticator")
    if token != "good":
        raise AuthenticationError("not a token this gateway accepts")
    return RequestContext(principal="alice", scopes=frozenset({"chat:write"}))


def _application() -> _HotRoutes:
    engine = make_engine({"echo": Deployment(name="echo", type="echo")})
    app = build_app(
        engine, authenticate=_authenticate, limits=Limits(), shutdown=Shutdown(), base_url=lambda: "http://x"
    )
    assert isinstance(app, _HotRoutes)
    return app


async def _call(app: Any, method: str, path: str, token: str, body: bytes, *, cut: bool = False) -> tuple:
    """What ``app`` sends for one request (``cut``: the client leaves before the body is whole), and the
    type of what it raised."""
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {token}".encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    messages = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.disconnect"} if cut else {"type": "http.request", "body": body[5:], "more_body": False},
    ]
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await never.wait()  # the client stays until the response is complete
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raised = None
    try:
        await app(scope, receive, send)
    except Exception as exc:
        raised = type(exc)
    return _comparable(sent), raised


def _comparable(sent: list[dict[str, Any]]) -> list[Any]:
    """The messages, with what differs between two runs of the same request (ids, times) blanked."""
    out = []
    for message in sent:
        message = dict(message)
        if "headers" in message:
            varies = (b"x-request-id", b"content-length")  # (a latency's digits change the length)
            message["headers"] = sorted((k, v) for k, v in message["headers"] if k not in varies)
        if message.get("body"):
            text = message["body"].decode()
            if text.startswith("{"):
                value = json.loads(text)
                for key in ("id", "session_id", "created"):
                    value.pop(key, None)
                for event in value.get("events", []):
                    for key in ("session_id", "latency_ms", "ttft_ms"):
                        event.pop(key, None)
                message["body"] = value
        out.append(message)
    return out


_CHAT = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}).encode()
_GTL = encode(
    __import__("gtl_nb.protocol.messages", fromlist=["CompletionRequest"]).CompletionRequest(
        session_id="s1", model="echo", messages=[{"role": "user", "content": "hi"}], stream=False
    )
)


@pytest.mark.parametrize(
    ("method", "path", "token", "body", "cut"),
    [
        ("POST", "/v1/chat/completions", "good", _CHAT, False),  # answered
        ("POST", "/v1/chat/completions", "nope", _CHAT, False),  # refused: 401
        ("POST", "/v1/chat/completions", "bug", _CHAT, False),  # a bug: 500, and raised again
        ("POST", "/v1/chat/completions", "good", _CHAT, True),  # the client left mid-body
        ("POST", "/v1/gtl", "good", _GTL, False),
        ("POST", "/v1/gtl", "bug", _GTL, False),
        ("POST", "/v1/gtl", "good", _GTL, True),
        ("POST", "/v1/gtl/sse", "nope", _GTL, False),
        ("GET", "/v1/chat/completions", "good", b"", False),  # not served: Starlette's 405
        ("POST", "/v1/chat/completions/", "good", _CHAT, False),  # not a hot path
    ],
)
def test_a_hot_route_answers_as_starlette_does(method: str, path: str, token: str, body: bytes, cut: bool) -> None:
    async def both() -> tuple:
        app = _application()
        return await _call(app, method, path, token, body, cut=cut), await _call(
            app.app, method, path, token, body, cut=cut
        )

    direct, through_starlette = asyncio.run(both())
    assert direct == through_starlette
    assert direct[0], "something was sent"


# -- the text chunk of ChunkEncoder --------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("model", ["bench-model", 'we"ird\\ \u00e9 model', "\x00gtl-text\x00"])
def test_a_text_chunk_is_the_chunk_the_encoder_would_build(include_usage: bool, model: str) -> None:
    encoder = ChunkEncoder("chatcmpl-x", model=model, created=1, include_usage=include_usage, error_body=error_body)
    for text in ["zq ", 'a"b\\c\n\u2028\u00e9\U0001f600', "\x00gtl-text\x00", " "]:
        built = encoder._chunk([encoder._choice({"content": text})])
        assert encoder.encode(Token(session_id="s", text=text)) == built
    assert encoder.encode(Token(session_id="s", text="")) == b""


def test_a_gtl_server_sent_event_names_its_type() -> None:
    for event in (Token(session_id="s", text="x"), Done(session_id="s"), Status(session_id="s", state="queued")):
        tag = str(event.__struct_config__.tag)
        assert _sse(event, 1 << 20) == b"event: " + tag.encode() + b"\ndata: " + encode(event) + b"\n\n"


# -- audit times ---------------------------------------------------------------------------------------


def _reference(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_ledger_or_audit_time_is_what_isoformat_writes() -> None:
    rng = random.Random(7)
    values = [rng.uniform(0, 4e9) for _ in range(20_000)]
    # the carries: microseconds rounding up into the next millisecond, second, minute, day, year
    edges = [0.9999995, 0.99999949, 0.0000005, 0.9995, 0.0005, 0.5, 0.0]
    values += [whole + edge for whole in (0, 59, 86_399, 1_700_000_000, 1_704_067_199) for edge in edges]
    values += [-1.5, 1.5e11, 253_402_300_799.9]  # outside the wall clock's range: the general path
    for value in values:
        assert iso_utc(value) == _reference(value), value


# -- EventOutbox -------------------------------------------------------------------------------------


def test_the_outbox_hands_over_batches_and_pauses_the_session_at_its_high_water_mark() -> None:
    async def scenario() -> None:
        outbox = EventOutbox(high_water=3)
        events = [Token(session_id="s", text=str(n)) for n in range(5)]
        outbox.put(events[0])
        assert outbox.drain() is None  # room: nothing to await
        assert await outbox.take() == [events[0]]
        taking = asyncio.ensure_future(outbox.take())
        await asyncio.sleep(0)
        for event in events[1:4]:
            outbox.put(event)
        pause = outbox.drain()
        assert pause is not None  # three wait: the session waits for the writer
        assert await taking == events[1:4]
        await asyncio.wait_for(pause, 1)  # the writer took them: room again
        assert outbox.drain() is None

    asyncio.run(scenario())


def test_a_writer_cancelled_while_it_waits_does_not_stop_the_next_one() -> None:
    async def scenario() -> None:
        outbox = EventOutbox()
        waiting = asyncio.ensure_future(outbox.take())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        outbox.put(Token(session_id="s", text="a"))
        assert await asyncio.wait_for(outbox.take(), 1) == [Token(session_id="s", text="a")]

    asyncio.run(scenario())


# -- collect_session -----------------------------------------------------------------------------------


class _FakeRunning:
    def __init__(self, body: Any) -> None:
        self.reasons: list[str] = []
        self.task = asyncio.ensure_future(body())

    def cancel(self, reason: str) -> None:
        if not self.task.done():
            self.reasons.append(reason)
            self.task.cancel()

    async def wait(self) -> None:
        await asyncio.gather(self.task, return_exceptions=True)


class _FakeSessions:
    def __init__(self, body: Any) -> None:
        self.body = body
        self.running: _FakeRunning | None = None

    def start(self, request: Any, context: Any, send: Any, drain: Any = None) -> _FakeRunning:
        self.running = _FakeRunning(self.body)
        return self.running


def _receive_then(disconnect: asyncio.Event) -> Any:
    async def receive() -> dict[str, str]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    return receive


@pytest.mark.parametrize("how", ["finishes", "client leaves", "shutdown"])
def test_a_collected_session_is_cancelled_by_whoever_ended_it(how: str) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        left = asyncio.Event()

        async def session() -> None:
            await release.wait()

        sessions = _FakeSessions(session)
        collecting = asyncio.ensure_future(
            collect_session(sessions, None, None, lambda event: None, _receive_then(left))  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.01)
        if how == "finishes":
            release.set()
            await collecting
        elif how == "client leaves":
            left.set()
            await collecting
        else:
            collecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await collecting
        running = sessions.running
        assert running is not None and running.task.done()
        expected = {"finishes": [], "client leaves": ["the client"], "shutdown": ["the gateway shutting down"]}
        assert running.reasons == expected[how]
        await asyncio.sleep(0)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not [task for task in others if not task.done()], "no watcher left behind"

    asyncio.run(scenario())
