"""ONE conformance suite for the six gateway transports: the same scenarios, parametrised by scheme.

Each scenario runs against ``stdio``, ``http``, ``sse``, ``ws``, ``grpc`` and ``quic``; what the remote
client sees is compared with the embedded client's answer for the same configuration. Where a
scenario cannot apply to a scheme, ``not_for`` skips it with the reason — nothing else is skipped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.local import LocalGateway
from gtl_nb.protocol import Error, Message, Status, Token, Tool
from gtl_nb.protocol.errors import (
    AuthenticationError,
    GTLError,
    InvalidRequestError,
    OverloadedError,
    RateLimitError,
)
from tests.conformance.conftest import (
    FRAME_LIMIT,
    MULTIPLEXED,
    SCHEMES,
    Relay,
    connect_to,
    gateway_config,
    settled_rows,
    start,
)
from tests.gateway.conftest import LONG_PROMPT, MODEL

pytestmark = pytest.mark.parametrize("scheme", SCHEMES)

WEATHER = Tool(
    name="get_weather",
    description="Weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
    },
)
PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
DROP_DEADLINE = 5.0
"""Seconds within which a client must learn that its connection is gone (the issue's promise)."""


def not_for(scheme: str, schemes: tuple[str, ...], reason: str) -> None:
    if scheme in schemes:
        pytest.skip(f"{scheme}: {reason}")


def same_answer(remote: gtl_nb.Completion, local: gtl_nb.Completion) -> None:
    """What a user reads of an answer is the same remotely and embedded."""
    assert remote.text == local.text
    assert remote.finish_reason == local.finish_reason
    assert [(call.name, call.arguments) for call in remote.tool_calls] == [
        (call.name, call.arguments) for call in local.tool_calls
    ]
    assert remote.usage is not None and local.usage is not None
    assert (remote.usage.tokens_in, remote.usage.tokens_out) == (
        local.usage.tokens_in,
        local.usage.tokens_out,
    )
    assert remote.usage.cost == pytest.approx(local.usage.cost)
    assert (remote.provider, remote.model, remote.failovers) == (local.provider, local.model, local.failovers)


def rows_of(served: LocalGateway, session_id: str) -> list[dict[str, Any]]:
    return settled_rows(served.config.parent / "ledger.sqlite", lambda row: row["session_id"] == session_id, 1)


# -- answers -------------------------------------------------------------------------------------------


def test_text_streams_and_completes_as_embedded(scheme, open_client, embedded):
    client = open_client(scheme)
    prompt = "Tell me about transports and gateways."
    same_answer(client.complete(f"openai:{MODEL}", prompt), embedded.complete(f"openai:{MODEL}", prompt))
    tokens = [event.text for event in client.stream(f"openai:{MODEL}", prompt) if isinstance(event, Token)]
    assert len(tokens) > 3 and "".join(tokens) == embedded.complete(f"openai:{MODEL}", prompt).text
    assert client.complete("echo", "hello remote").text == embedded.complete("echo", "hello remote").text


def test_tool_calls_as_embedded(scheme, open_client, embedded):
    client = open_client(scheme)
    ask = "What is the weather in Oslo?"
    remote = client.complete(f"openai:{MODEL}", ask, tools=[WEATHER])
    same_answer(remote, embedded.complete(f"openai:{MODEL}", ask, tools=[WEATHER]))
    assert remote.tool_calls and remote.tool_calls[0].name == "get_weather"


def test_images_as_embedded(scheme, open_client, embedded):
    client = open_client(scheme)
    messages = [Message(role="user", content="What is in this picture?", images=[PIXEL])]
    same_answer(client.complete(f"openai:{MODEL}", messages), embedded.complete(f"openai:{MODEL}", messages))


def test_usage_and_cost_as_embedded(scheme, open_client, embedded):
    client = open_client(scheme)
    remote = client.complete(f"openai:{MODEL}", "Count my tokens, please.", max_tokens=50)
    local = embedded.complete(f"openai:{MODEL}", "Count my tokens, please.", max_tokens=50)
    same_answer(remote, local)
    assert remote.usage.cost and remote.usage.cost > 0


def test_failover_statuses_as_embedded(scheme, open_client, embedded):
    client = open_client(scheme)
    chain = {"providers": ["down", "openai"]}
    remote_events = list(client.stream(MODEL, "Fail over, please.", **chain))
    local_events = list(embedded.stream(MODEL, "Fail over, please.", **chain))

    def statuses(events: list[Any]) -> list[tuple[str, str | None, str | None]]:
        return [(e.state, e.from_provider, e.to_provider) for e in events if isinstance(e, Status)]

    assert statuses(remote_events) == statuses(local_events)
    assert ("failover", "down", "openai") in statuses(remote_events)
    [failover] = client.complete(MODEL, "Fail over, please.", **chain).failovers
    assert failover.startswith("down -> openai: OVERLOADED")


@pytest.mark.parametrize(
    ("model", "error", "code"),
    [
        (f"badkey:{MODEL}", AuthenticationError, "AUTH_FAILED"),
        (f"limited:{MODEL}", RateLimitError, "RATE_LIMIT"),
        (f"down:{MODEL}", OverloadedError, "OVERLOADED"),  # the 503 the simulator answers
        ("openai:no-such-model", GTLError, None),
    ],
)
def test_errors_keep_their_codes_and_fields(scheme, open_client, embedded, model, error, code):
    client = open_client(scheme)
    with pytest.raises(error) as remote:
        client.complete(model, "This one fails.")
    with pytest.raises(error) as local:
        embedded.complete(model, "This one fails.")
    assert type(remote.value) is type(local.value)
    assert remote.value.code == local.value.code and (code is None or remote.value.code == code)
    assert remote.value.retryable == local.value.retryable
    assert getattr(remote.value, "retry_after", None) == getattr(local.value, "retry_after", None)


def test_usage_breakers_and_live_models_are_the_gateways(scheme, open_client, served):
    """``client.usage()`` shows the caller's rows of the gateway's ledger (not an empty frame), page by
    page; ``breakers()`` and ``list_models()`` are asked of the gateway too."""
    client = open_client(scheme)
    answer = client.complete("echo", f"count this one over {scheme}")
    table = client.usage()
    assert answer.session_id in set(table["session_id"])
    mine = rows_of(served, answer.session_id)
    assert [row["status"] for row in mine] == ["ok"]
    assert len(table) == len(Ledger(served.config.parent / "ledger.sqlite").rows())  # every row is this user's
    assert set(client.usage(status="ok")["status"]) == {"ok"}
    assert client.list_models("openai")  # the simulator's live list, through the gateway
    assert isinstance(client.breakers(), dict)


# -- many sessions, cancels, slow readers -----------------------------------------------------------------


def test_many_concurrent_sessions_on_one_connection(scheme, open_client, embedded):
    client = open_client(scheme)
    prompts = [f"Question number {i} about streams." for i in range(24)]

    async def all_at_once() -> list[gtl_nb.Completion]:
        return await asyncio.gather(*(client.acomplete(f"openai:{MODEL}", prompt) for prompt in prompts))

    answers = asyncio.run(all_at_once())
    assert [answer.text for answer in answers] == [embedded.complete(f"openai:{MODEL}", p).text for p in prompts]
    if scheme in MULTIPLEXED:  # the sessions shared the connection the client opened first
        channel = client.backend.channel  # type: ignore[attr-defined]
        assert channel is not None
        client.complete("echo", "still the same connection")
        assert client.backend.channel is channel  # type: ignore[attr-defined]


def test_a_cancel_reaches_the_upstream_and_the_ledger(scheme, open_client, served, sims):
    client = open_client(scheme)
    before = len(sims.slow.requests)
    stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
    for event in stream:
        if isinstance(event, Token):
            break
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < DROP_DEADLINE
    assert len(sims.slow.requests) == before + 1
    deadline = time.monotonic() + DROP_DEADLINE
    while time.monotonic() < deadline and [r["status"] for r in rows_of(served, stream.session_id)] != ["cancelled"]:
        time.sleep(0.05)
    assert [row["status"] for row in rows_of(served, stream.session_id)] == ["cancelled"]
    assert client.complete("echo", "the connection still works").text


def test_a_slow_reader_loses_nothing_and_holds_no_other_session(scheme, open_client, embedded):
    """A consumer that takes its time gets every event in order, while another session on the same
    client completes at full speed. (That the gateway then holds at most one event per session beyond
    the transport's buffer is proven in-process by tests/gateway/test_backpressure.py, and each
    transport's flow control by its own tests: the client library reads its connection eagerly.)"""
    client = open_client(scheme)
    prompt = "Stream slowly to a slow reader."
    seen: list[str] = []

    async def slow() -> None:
        async for event in client.astream(f"openai:{MODEL}", prompt):
            if isinstance(event, Token):
                seen.append(event.text)
                await asyncio.sleep(0.02)

    async def both() -> float:
        reader = asyncio.ensure_future(slow())
        started = time.monotonic()
        await client.acomplete("echo", "a quick one beside it")
        quick = time.monotonic() - started
        await reader
        return quick

    quick = asyncio.run(both())
    assert "".join(seen) == embedded.complete(f"openai:{MODEL}", prompt).text
    assert quick < 0.02 * len(seen)  # it did not wait for the slow one


# -- connections that fail -------------------------------------------------------------------------------


def test_a_dropped_connection_is_a_retryable_error_within_seconds(scheme, served, certs, tmp_path):
    if scheme == "stdio":
        client = connect_to("stdio", served, certs)
        relay = None
    else:
        port = served.ports["http" if scheme in ("http", "sse", "ws") else scheme]
        relay = Relay(port, udp=scheme == "quic")
        endpoint = served.url(scheme).rsplit(":", 1)[0] + f":{relay.port}"
        client = gtl_nb.connect(endpoint, **({"verify": str(certs.ca)} if scheme == "quic" else {}))
    try:
        stream = client.stream(f"slow:{MODEL}", LONG_PROMPT)
        events = iter(stream)
        assert any(isinstance(event, Token) for event in events)
        if relay is not None:
            relay.cut()
        else:  # the gateway child of a stdio client: its pipes are the connection
            client.backend.channel.process.kill()  # type: ignore[attr-defined]
        started = time.monotonic()
        *_, last = events  # a stream ends with its error event (it does not raise)
        assert time.monotonic() - started < DROP_DEADLINE
        assert isinstance(last, Error) and last.code == "PROVIDER_UNAVAILABLE" and last.retryable
    finally:
        client.close()


def test_a_restarted_gateway_fails_streams_retryably_and_the_next_request_works(scheme, sims, certs, tmp_path):
    if scheme == "stdio":
        pytest.skip("stdio: the client starts its own gateway child; test_a_dropped_connection kills it")
    first = start(gateway_config(tmp_path, sims, certs))
    client = connect_to(scheme, first, certs)
    try:
        stream = iter(client.stream(f"slow:{MODEL}", LONG_PROMPT))
        assert any(isinstance(event, Token) for event in stream)
        first.kill()
        started = time.monotonic()
        *_, last = stream
        assert time.monotonic() - started < DROP_DEADLINE
        assert isinstance(last, Error) and last.code == "PROVIDER_UNAVAILABLE" and last.retryable
        second = start(gateway_config(tmp_path, sims, certs, ports=first.ports))
        try:
            assert client.complete("echo", "after the restart").text
        finally:
            second.stop()
    finally:
        client.close()
        if first.process.poll() is None:
            first.kill()


def test_a_request_over_the_frame_limit_is_refused_and_the_connection_lives(scheme, open_client):
    client = open_client(scheme)
    with pytest.raises(InvalidRequestError):
        client.complete("echo", "x" * (FRAME_LIMIT + 1000))
    assert client.complete("echo", "a small one still works").text


def test_a_peer_with_an_unknown_protocol_version_is_refused(scheme, served, certs, monkeypatch):
    """In ``hello``, or — one session per request, no hello — in the spec's ``GTL-Version`` header."""
    from gtl_nb.protocol.connection import GTLConnection
    from gtl_nb.transports import http

    defaults = dict(GTLConnection.__init__.__kwdefaults__)
    monkeypatch.setattr(GTLConnection.__init__, "__kwdefaults__", {**defaults, "versions": ("9.0",)})
    monkeypatch.setattr(http, "header_value", lambda: "9.0")
    with pytest.raises(InvalidRequestError, match="no common GTL version"):
        connect_to(scheme, served, certs)
