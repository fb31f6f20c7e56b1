"""A request the provider refuses for its content, and circuits: such a refusal is no verdict on the
provider (it never opens a circuit, whatever the answer's retry hints say), and a request no deployment
could carry is told why even while the circuits are open — not "every circuit is open", a wait that
would end in the same refusal."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.core import Engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol import CompletionRequest, Error, Message

CLAUDE = "claude-sonnet-4-5"
OPENAI = "gpt-4o-mini"
BREAKER = {"breaker": {"failure_threshold": 2, "cooldown": 30}, "retry": {"max_attempts": 3, "base_delay": 0}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _no_sleep(seconds: float) -> None:
    return None


def engine_for(providers: dict[str, dict[str, Any]]) -> Engine:
    settings = load_settings(providers=providers, environ={}, routing=BREAKER)
    return build_engine(settings, ledger=False, clock=FakeClock(), sleep=_no_sleep)


def ask(engine: Engine, i: int, model: str, **fields: Any) -> list:
    request = CompletionRequest(
        session_id=f"s{i}", model=model, messages=[Message(role="user", content="hi")], **fields
    )

    async def go() -> list:
        return [e async for e in engine.stream(request)]

    return asyncio.run(go())


def circuit(engine: Engine, name: str) -> str:
    return asyncio.run(engine.breaker_states())[name]["state"]


@contextmanager
def answering(status: int, body: dict[str, Any], headers: dict[str, str]) -> Iterator[tuple[str, list[bytes]]]:
    """A loopback HTTP server that answers every POST with ``status``, ``headers`` and ``body`` (a proxy in
    front of a provider, say), and the bodies it was sent."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            data = json.dumps(body).encode()
            self.send_response(status)
            for key, value in {**headers, "content-type": "application/json"}.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


ANTHROPIC_400 = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0: not allowed"}}
OPENAI_400 = {
    "error": {
        "message": "Invalid 'tools[0].function.name': 'avoid_overload' is a reserved name.",
        "type": "invalid_request_error",
        "param": "tools[0].function.name",
        "code": None,
    }
}


@pytest.mark.parametrize(
    ("kind", "model", "body", "headers", "words"),
    [
        # a proxy in front of Anthropic that marks every error retryable
        ("anthropic", CLAUDE, ANTHROPIC_400, {"x-should-retry": "true"}, "messages.0: not allowed"),
        # OpenAI's 400 quoting the caller's own words, one of which is "overload"
        ("openai", OPENAI, OPENAI_400, {}, "'avoid_overload' is a reserved name"),
    ],
)
def test_a_providers_400_about_the_request_never_opens_its_circuit(kind, model, body, headers, words):
    """Each of four requests gets the provider's own words, sent once (asking again gets the same
    400), and the circuit stays closed: the refusals were the request's, not the provider's trouble.
    Before, the second refusal opened the circuit and the third caller heard "every circuit is open"."""
    with answering(400, body, headers) as (url, received):
        engine = engine_for({"p": {"type": kind, "api_key": "k", "base_url": url}})
        ends = [ask(engine, i, model)[-1] for i in range(4)]
        calls = len(received)
    for end in ends:
        assert isinstance(end, Error), end
        assert (end.code, end.retryable, end.provider, end.http_status) == ("INVALID_REQUEST", False, "p", 400)
        assert words in end.message and "circuit" not in end.message
    assert calls == 4  # one call each: no retry of what would be refused again
    assert circuit(engine, "p") == "closed"


def test_a_request_no_open_deployment_could_carry_is_told_why_not_that_circuits_are_open():
    """The reported symptom: Anthropic's circuit opened after real overloads; JSON without a schema
    (which Anthropic's API cannot give) asked of it then heard "every circuit is open" — a 503 to
    retry in 30 s, after which the same request gets the 400. It hears the 400 at once, naming the
    parameter; an ordinary request still hears of the open circuit."""
    with sim.serve("anthropic", faults=[sim.Fault.overloaded()] * 6) as s:
        engine = engine_for({"claude": {"type": "anthropic", "api_key": "k", "base_url": s.base_url}})
        overloaded = ask(engine, 1, CLAUDE)[-1]  # (retried: its second overload opens the circuit)
        assert isinstance(overloaded, Error) and circuit(engine, "claude") == "open", overloaded
        sent = len(s.requests)
        refused = ask(engine, 3, CLAUDE, response_format={"type": "json_object"})[-1]
        too_long = ask(engine, 4, CLAUDE, max_tokens=10_000_000)[-1]
        paused = ask(engine, 5, CLAUDE)[-1]
        assert len(s.requests) == sent  # nothing reached the provider
    assert isinstance(refused, Error) and (refused.code, refused.retryable) == ("INVALID_REQUEST", False)
    assert "response_format" in refused.message and "json_object" in refused.message, refused.message
    assert refused.provider == "claude" and "circuit" not in refused.message
    assert isinstance(too_long, Error) and too_long.code == "INVALID_REQUEST" and "max_tokens" in too_long.message
    assert isinstance(paused, Error) and paused.code == "PROVIDER_UNAVAILABLE"
    assert "every circuit is open" in paused.message


def test_while_another_open_deployment_could_carry_it_the_circuits_are_what_the_caller_hears():
    """Two deployments, both circuits open: Anthropic cannot give JSON without a schema, OpenAI can —
    so the request is one a wait would serve, and the caller hears of the circuits and when to retry."""
    with (
        sim.serve("anthropic", faults=[sim.Fault.overloaded()] * 2) as a,
        sim.serve("openai", faults=[sim.Fault.overloaded()] * 2) as o,
    ):
        engine = engine_for(
            {
                "claude": {"type": "anthropic", "api_key": "k", "base_url": a.base_url, "models": [CLAUDE]},
                "gpt": {"type": "openai", "api_key": "k", "base_url": o.base_url, "models": [CLAUDE]},
            }
        )
        for i in range(2):
            ask(engine, i, CLAUDE, providers=["claude", "gpt"])
        assert (circuit(engine, "claude"), circuit(engine, "gpt")) == ("open", "open")
        end = ask(engine, 9, CLAUDE, providers=["claude", "gpt"], response_format={"type": "json_object"})[-1]
    assert isinstance(end, Error) and end.code == "PROVIDER_UNAVAILABLE" and end.retryable, end
    assert "every circuit is open (claude, gpt)" in end.message and end.retry_after is not None
