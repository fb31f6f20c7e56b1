"""The client's queries awaited — ``acount_tokens``, ``alist_models``, ``abreakers``, ``asessions`` and
``acancel_session``: callable on an ``aconnect`` client's own loop, where their synchronous twins are
refused (they would wait for the loop they block), and from any loop over the engine's thread; the
same answers and refusals as the synchronous ones, and the same deadline past which a question that
has no answer is a retryable ``PROVIDER_UNAVAILABLE``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol import ConfigurationError, InvalidRequestError, ProviderUnavailableError
from gtl_nb.protocol.messages import Error, Token
from tests.gateway.conftest import jwt_echo_gateway

LONG = " ".join(f"word{i}" for i in range(2000))  # at 0.1 s a token: streams for minutes


def test_the_queries_answer_on_the_loop_of_aconnect_where_the_synchronous_ones_are_refused():
    async def main() -> tuple[Any, ...]:
        async with await gtl_nb.aconnect(ledger=False) as client:
            with pytest.raises(RuntimeError):
                client.count_tokens("echo", "hello there")
            with pytest.raises(ConfigurationError, match=r"sessions\(\) asks a gateway"):
                await client.asessions()
            with pytest.raises(ConfigurationError, match=r"cancel_session\(\) asks a gateway"):
                await client.acancel_session("sess_x")
            return (
                await client.acount_tokens("echo", "hello there", system="be brief"),
                await client.alist_models("echo"),
                await client.abreakers(),
            )

    counted, models, breakers = asyncio.run(main())
    with gtl_nb.connect(ledger=False) as client:  # the synchronous twins, from this thread
        assert counted == client.count_tokens("echo", "hello there", system="be brief")
        assert models == client.list_models("echo") == ["echo"]
        assert breakers == client.breakers()
    assert counted.exact and counted.input_tokens > 0


def test_the_queries_answer_from_another_loop_over_the_engines_thread():
    with gtl_nb.connect(ledger=False) as client:

        async def main() -> Any:
            return await client.acount_tokens("echo", "hello there"), await client.abreakers()

        counted, breakers = asyncio.run(main())
        assert counted == client.count_tokens("echo", "hello there")
        assert breakers["echo"]["state"] == "closed"


def test_a_request_the_count_refuses_is_refused_alike():
    async def main() -> None:
        async with await gtl_nb.aconnect(ledger=False) as client:
            with pytest.raises(InvalidRequestError):
                await client.acount_tokens("echo", [])

    asyncio.run(main())


def test_a_question_with_no_answer_by_the_deadline_is_provider_unavailable_and_is_cancelled():
    cancelled = asyncio.Event()

    async def never() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def times_out_itself() -> None:
        raise TimeoutError("the store's own deadline")

    async def main() -> None:
        async with await gtl_nb.aconnect(ledger=False) as client:
            with pytest.raises(ProviderUnavailableError, match=r"the test question had no answer in 0.2 s"):
                await client._aask(never(), "the test question", timeout=0.2)
            assert cancelled.is_set()  # not left running on the loop
            with pytest.raises(TimeoutError, match="the store's own deadline"):  # its own answer, passed on
                await client._aask(times_out_itself(), "the test question", timeout=5)

    asyncio.run(main())


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalGateway, str]]:
    more = {"providers.slow": {"type": "echo", "options": {"pace": 0.1}}}
    config, mint = jwt_echo_gateway(tmp_path, monkeypatch, "ASYNC_QUERIES_SECRET", more)
    served = start_gateway(config)
    try:
        yield served, mint("chat:write", "session:read", "session:write")
    finally:
        served.stop()


def test_sessions_are_listed_and_cancelled_awaited_over_a_gateway(gateway: tuple[LocalGateway, str]):
    served, token = gateway

    async def main() -> Error | None:
        async with await gtl_nb.aconnect(served.url("ws"), token=token) as client:
            events = aiter(client.astream("slow:echo", LONG, session_id="sess_awaited"))
            while not isinstance(await anext(events), Token):  # running: its first token is here
                pass
            listed = await client.asessions()
            assert [entry["session_id"] for entry in listed] == ["sess_awaited"], listed
            assert await client.acancel_session("sess_awaited") == 1
            async for event in events:
                if isinstance(event, Error):
                    return event
            return None

    ended = asyncio.run(main())
    assert ended is not None and ended.code == "CANCELLED", ended
