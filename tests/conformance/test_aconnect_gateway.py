"""``gtl_nb.aconnect`` to a gateway, over each of the six transports: the connection runs on the
caller's own event loop, so an awaited call crosses no thread; answers are the embedded client's, the
synchronous API is refused on that loop's own thread (and says why), and ``aclose`` ends the
connection. ``connect``'s argument checks hold for it as they do for ``connect``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine.loop import CallersLoop
from gtl_nb.gateway.local import LocalGateway
from gtl_nb.protocol import ConfigurationError, Token
from tests.conformance.conftest import SCHEMES
from tests.gateway.conftest import MODEL


def address(scheme: str, served: LocalGateway, certs: Any) -> tuple[str, dict[str, Any]]:
    """``aconnect``'s endpoint and options for ``scheme`` (as ``connect_to`` gives ``connect``'s)."""
    if scheme == "stdio":
        return f"stdio://{served.config}", {}
    return served.url(scheme), ({"verify": str(certs.ca)} if scheme == "quic" else {})


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_awaited_call_to_a_gateway_runs_on_the_callers_loop_and_answers_as_embedded(
    scheme: str, served: LocalGateway, certs: Any, embedded: gtl_nb.Client
):
    local = embedded.complete(MODEL, "Say hello.", max_tokens=16)
    endpoint, options = address(scheme, served, certs)

    async def main() -> None:
        here = asyncio.get_running_loop()
        client = await gtl_nb.aconnect(endpoint, **options)
        seen: list[tuple[threading.Thread, asyncio.AbstractEventLoop]] = []
        session = client.backend.session

        async def watched(request: Any, deliver: Any) -> None:  # where the backend's session runs
            seen.append((threading.current_thread(), asyncio.get_running_loop()))
            await session(request, deliver)

        client.backend.session = watched
        try:
            assert isinstance(client._loop, CallersLoop) and client.transport == scheme
            answer = await client.acomplete(MODEL, "Say hello.", max_tokens=16)
            assert answer.text == local.text and answer.usage.tokens_out == local.usage.tokens_out
            events = [event async for event in client.astream(MODEL, "Say hello.", max_tokens=16)]
            assert "".join(e.text for e in events if isinstance(e, Token)) == local.text
            assert events[-1].type == "done"
            with pytest.raises(RuntimeError, match="aconnect"):  # it would wait for the loop it blocks
                client.complete(MODEL, "Say hello.")
            assert seen == [(threading.current_thread(), here)] * 2  # no thread crossed, either call
        finally:
            await client.aclose()
        with pytest.raises(gtl_nb.GTLError, match="closed"):
            await client.acomplete(MODEL, "Say hello.")

    asyncio.run(main())


def test_a_gateway_found_by_discovery_is_opened_on_the_callers_loop(served: LocalGateway):
    endpoint = served.url("http").removeprefix("http://")  # a bare HOST:PORT: discovery picks the transport

    async def main() -> str:
        async with await gtl_nb.aconnect(endpoint) as client:
            assert isinstance(client._loop, CallersLoop)
            answer = await client.acomplete(MODEL, "Say hello.", max_tokens=8)
            assert answer.text
            return client.transport

    with gtl_nb.connect(endpoint) as chosen_by_connect:
        assert asyncio.run(main()) == chosen_by_connect.transport  # the same choice as connect's


@pytest.mark.parametrize(
    ("endpoint", "options", "message"),
    [
        ("not a gateway", {}, "is not a gateway address"),
        ("ws://user:secret@127.0.0.1:1", {}, "carries no credentials"),
        ("ws://127.0.0.1:1", {"ledger": False}, "takes no ledger="),
        ("nope://127.0.0.1:1", {}, "unknown endpoint scheme"),
        # a known scheme with its "://" mistyped: the URL meant is named
        ("http//127.0.0.1:8787", {}, "did you mean 'http://127.0.0.1:8787'"),
        ("WS:/127.0.0.1:1", {}, "did you mean 'ws://127.0.0.1:1'"),
        ("grpc:://127.0.0.1:1", {}, "did you mean 'grpc://127.0.0.1:1'"),
        ("stdio///etc/gtl.toml", {}, "did you mean 'stdio:///etc/gtl.toml'"),
        ("embedded//", {}, "did you mean 'embedded://'"),
        # credentials in a mistyped address are refused as in a well-typed one, never echoed back
        ("http//user:secret@127.0.0.1:1", {}, "carries no credentials"),
        ("stdio:/etc/gtl.toml", {}, "did you mean 'stdio:///etc/gtl.toml'"),  # the path typed: absolute
        ("http:", {}, "followed by :// and the gateway's HOST:PORT"),
        ("http//" + "x" * 2_000, {}, r"did you mean 'http://x{73}…'\?\)$"),  # an error quotes 80 characters
        ("http//" + "x" * 100_000, {}, r"at most 2,048 characters; this one has 100,006$"),  # none: too long
        # a mistyped scheme: the URL meant is named; an unknown one is quoted clipped, never whole
        ("htp://127.0.0.1:8787", {}, r"'htp'.*did you mean 'http://127.0.0.1:8787'"),
        ("grcp://127.0.0.1:1/x", {}, r"did you mean 'grpc://127.0.0.1:1/x'"),
        ("nope" * 500 + "://h:1", {}, r"unknown endpoint scheme 'n[nope]{15}…' in 'n[nope]{79}…'; known"),
        ("h:1/http://x", {}, r"scheme 'h:1/http' in 'h:1/http://x'; known"),  # no scheme: nothing to correct
        # a password behind a "/" or "?" (which end an authority) is refused as any other, never quoted —
        # whatever the scheme, mistyped or not, or none
        ("htp://us/er:secret@host:1", {}, "carries no credentials"),
        ("https://user:pa/secret@127.0.0.1:1", {}, "carries no credentials"),
        ("ws://user:pa?secret@127.0.0.1:1", {}, "carries no credentials"),
        ("http:://user:pa/secret@h:1", {}, "carries no credentials"),
        ("user:pa/secret@h:1", {}, "carries no credentials"),
        ("user:secret@host://x", {}, "carries no credentials"),
        # a token in the query (a habit of WebSocket clients) is refused as user:password@ is, never quoted,
        # on every scheme (grpc:// and quic:// read no query: it was dropped, then echoed by the next error)
        ("http://127.0.0.1:1/?token=secret", {}, "query takes compression=none alone.*token="),
        ("ws://127.0.0.1:1?compression=none&access_token=secret", {}, "not shown as it may be a token"),
        ("grpc://127.0.0.1:1?key=secret", {}, r"\$GTL_TOKEN"),
        ("quic://127.0.0.1:1/?secret", {}, "query takes compression=none alone"),  # a bare token
        ("https://127.0.0.1:1?jwt=secret#x", {}, "query takes compression=none alone"),
        # an address of no use is refused before anything quotes it: too long, a host no lookup can take
        ("ws://h:1/" + "x" * 5000, {}, r"at most 2,048 characters; this one has 5,009$"),
        ("ws://" + "a" * 64 + ":1", {}, r"is not a host name \(a dot-separated label is empty or longer than 63"),
        ("grpc://a..b:1", {}, "is not a host name"),
    ],
)
def test_a_gateway_address_and_arguments_are_checked_as_connect_checks_them(endpoint, options, message):
    async def main() -> None:
        await gtl_nb.aconnect(endpoint, **options)

    with pytest.raises(ConfigurationError, match=message) as raised:
        asyncio.run(main())
    assert "secret" not in str(raised.value)
    with pytest.raises(ConfigurationError, match=message):
        gtl_nb.connect(endpoint, **options)


def test_a_gateway_that_cannot_be_reached_fails_the_connect_and_leaves_nothing_open():
    async def main() -> None:
        before = set(asyncio.all_tasks())
        with pytest.raises(gtl_nb.GTLError, match="cannot reach"):
            await gtl_nb.aconnect("ws://127.0.0.1:9")  # the discard port: nothing listens
        await asyncio.sleep(0)
        assert set(asyncio.all_tasks()) == before  # no reader or opener left behind

    asyncio.run(main())
