"""The gateway core's time limits, graceful shutdown and queries, in-process over a held channel.

(``test_backpressure.py`` has the channel; the transports' own tests show the same over sockets.)
"""

from __future__ import annotations

import asyncio

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.listeners import Limits, Shutdown
from gtl_nb.gateway.scopes import SCOPE_NAMES
from gtl_nb.gateway.sessions import GatewayConnection
from gtl_nb.protocol import (
    Answer,
    Cancel,
    CompletionRequest,
    Done,
    Error,
    GTLConnection,
    Message,
    Query,
    Token,
)
from gtl_nb.transports.framed import FramedConnection
from tests.gateway.test_backpressure import HeldChannel, settle, take


def request(sid: str, text: str = "hello") -> CompletionRequest:
    return CompletionRequest(session_id=sid, model="echo", messages=[Message(role="user", content=text)])


async def paced(seconds: float) -> None:
    await asyncio.sleep(seconds)


def gateway_over(
    channel: HeldChannel,
    *,
    limits: Limits,
    shutdown: Shutdown | None = None,
    pace: float = 0.0,
    scopes: frozenset[str] = SCOPE_NAMES,
    config: dict | None = None,
    **context,
):
    options = config or ({"providers": {"echo": {"options": {"pace": pace}}}} if pace else {})
    engine = build_engine(load_settings(config=options, environ={}), ledger=False, audience="gateway")
    gateway = GatewayConnection(
        engine,
        FramedConnection(GTLConnection("server"), channel),
        authenticate=lambda token: RequestContext(principal="tester", scopes=scopes, **context),
        limits=limits,
        shutdown=shutdown,
    )
    return engine, gateway


async def said_hello(gateway: GatewayConnection, channel: HeldChannel) -> tuple[asyncio.Future, GTLConnection]:
    """``gateway.run()`` started and a client's hello exchanged (its provider list read)."""
    running = asyncio.ensure_future(gateway.run())
    client = GTLConnection("client")
    channel.inbox.put_nowait(client.data_to_send())
    await settle()
    take(channel, client)
    return running, client


def test_a_client_that_never_says_hello_is_closed_after_the_header_timeout():
    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(channel, limits=Limits(header_timeout=0.2))
        await asyncio.wait_for(gateway.run(), 5)  # returns by itself
        assert b"no hello within 0.2 s" in bytes(channel.written)
        await engine.aclose()

    asyncio.run(main())


def test_an_idle_connection_is_closed_and_a_busy_one_is_not():
    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(channel, limits=Limits(idle_timeout=0.3))
        running, client = await said_hello(gateway, channel)
        channel.inbox.put_nowait(client.send(request("s1")))
        await asyncio.sleep(0.2)
        assert not running.done()
        await asyncio.wait_for(running, 5)  # 0.3 s after the session ended, with nothing from the client
        events = take(channel, client)  # (the listener closes the socket after run() returns: the client's EOF)
        assert [type(e) for e in events if isinstance(e, (Done, Error))] == [Done]
        await engine.aclose()

    asyncio.run(main())


def test_shutdown_refuses_new_sessions_lets_running_ones_finish_then_cancels_the_rest():
    async def main() -> None:
        channel = HeldChannel()
        shutdown = Shutdown(grace=1.5)
        engine, gateway = gateway_over(channel, limits=Limits(), shutdown=shutdown, pace=0.02)
        running, client = await said_hello(gateway, channel)
        long = "word " * 400  # seconds of tokens at the pace; "hi" takes a fraction of one
        channel.inbox.put_nowait(client.send(request("short", "hi")) + client.send(request("long", long)))
        await asyncio.sleep(0.1)
        shutdown.begin()
        await settle()
        channel.inbox.put_nowait(client.send(request("late")))
        await asyncio.wait_for(running, 5)
        ends = {e.session_id: e for e in take(channel, client) if isinstance(e, (Done, Error))}
        assert isinstance(ends["short"], Done)
        assert ends["late"].code == "PROVIDER_UNAVAILABLE" and "shutting down" in ends["late"].message
        assert ends["long"].code == "CANCELLED" and ends["long"].message == "cancelled by the gateway shutting down"
        await engine.aclose()

    asyncio.run(main())


def test_queries_are_answered_and_refused_with_their_errors():
    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(
            channel, limits=Limits(), scopes=frozenset({"chat:write", "models:read", "usage:read"})
        )
        running, client = await said_hello(gateway, channel)
        asks = [
            Query(query_id="a", name="models", params={"deployment": "echo"}),
            Query(query_id="b", name="usage"),
            Query(query_id="c", name="usage", params={"filters": {"user": "someone-else"}}),
            Query(query_id="d", name="weather"),
            Query(query_id="e", name="breakers"),
            Query(query_id="f", name="usage", params={"filters": {"foo": 1}}),
            Query(query_id="g", name="usage", params={"filters": {"since": {"$gt": 1}}}),
        ]
        channel.inbox.put_nowait(b"".join(client.send(q) for q in asks))
        for _ in range(50):
            await settle()
        answers = {a.query_id: a for a in take(channel, client) if isinstance(a, Answer)}
        assert answers["a"].result == {"models": ["echo"]}
        assert answers["b"].result == {"rows": [], "next": None}  # no ledger kept here
        assert answers["c"].error is not None and answers["c"].error.code == "FORBIDDEN"
        assert answers["d"].error is not None and "unknown query 'weather'" in answers["d"].error.message
        assert "breakers" in (answers["e"].result or {})
        for bad in ("f", "g"):  # the caller's mistakes, not the gateway's
            assert answers[bad].error is not None and answers[bad].error.code == "INVALID_REQUEST", answers[bad]
        channel.inbox.put_nowait(b"")
        await asyncio.wait_for(running, 5)
        await engine.aclose()

    asyncio.run(main())


def test_a_token_event_is_what_the_echo_model_streams():  # guards the helper above: echo must stream
    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(channel, limits=Limits())
        running, client = await said_hello(gateway, channel)
        channel.inbox.put_nowait(client.send(request("s")))
        await settle()
        assert any(isinstance(e, Token) for e in take(channel, client))
        channel.inbox.put_nowait(b"")
        await asyncio.wait_for(running, 5)
        await engine.aclose()

    asyncio.run(main())


def test_a_cancel_right_behind_its_request_still_ends_the_session_and_frees_its_slot():
    """Request and cancel in one read: the session's task is cancelled before it ever ran. It must still
    end with one terminal event and give its place back (a connection limited to 2 sessions takes more)."""

    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(channel, limits=Limits(max_sessions_per_connection=2))
        running, client = await said_hello(gateway, channel)
        burst = b""
        for i in range(4):
            burst += client.send(request(f"s{i}")) + client.send(Cancel(session_id=f"s{i}"))
        channel.inbox.put_nowait(burst)
        await settle()
        ends = {e.session_id: e for e in take(channel, client) if isinstance(e, (Done, Error))}
        assert set(ends) == {"s0", "s1", "s2", "s3"}
        assert gateway.live_sessions == 0
        channel.inbox.put_nowait(client.send(request("after")))
        await settle()
        assert [type(e) for e in take(channel, client) if isinstance(e, (Done, Error))] == [Done]
        channel.inbox.put_nowait(b"")
        await asyncio.wait_for(running, 5)
        await engine.aclose()

    asyncio.run(main())


def test_a_provider_list_larger_than_a_frame_is_cut_to_fit_not_dropped():
    from gtl_nb.gateway.sessions import fitted
    from gtl_nb.protocol import ModelInfo, ProviderInfo, encode

    info = ProviderInfo(provider="big", models=[ModelInfo(name=f"model-{i:04d}") for i in range(400)])
    cut = fitted(info, 4096)
    assert len(encode(cut)) < 4096 and cut.models == info.models[: len(cut.models)] and cut.models
    small = ProviderInfo(provider="small", models=info.models[:3])
    assert fitted(small, 4096) is small


def test_a_connection_waits_on_its_limits_and_the_shutdown_without_tasks_of_their_own():
    """The header and idle deadlines and the shutdown are a timer and a callback: an open connection
    runs one task of its own (its reader), whatever it waits for (docs/benchmarks.md, "Scale")."""

    async def main() -> None:
        channel = HeldChannel()
        shutdown = Shutdown(grace=5)
        engine, gateway = gateway_over(channel, limits=Limits(idle_timeout=30), shutdown=shutdown)
        before = asyncio.all_tasks()
        running, _ = await said_hello(gateway, channel)
        assert len(asyncio.all_tasks() - before) == 2  # run() itself and its reader
        assert len(shutdown.stopping._callbacks) == 1
        shutdown.begin()  # idle: it closes at once
        await asyncio.wait_for(running, 5)
        assert not shutdown.stopping._callbacks
        await engine.aclose()

    asyncio.run(main())


def test_a_connection_that_starts_after_the_shutdown_began_closes_at_once():
    async def main() -> None:
        channel = HeldChannel()
        shutdown = Shutdown(grace=5)
        shutdown.begin()
        engine, gateway = gateway_over(channel, limits=Limits(), shutdown=shutdown)
        await asyncio.wait_for(gateway.run(), 5)
        await engine.aclose()

    asyncio.run(main())


def test_a_closed_connection_unregisters_from_the_shutdown():
    async def main() -> None:
        shutdown = Shutdown(grace=5)
        engines = []
        for _ in range(3):
            channel = HeldChannel()
            engine, gateway = gateway_over(channel, limits=Limits(header_timeout=0.05), shutdown=shutdown)
            engines.append(engine)
            await asyncio.wait_for(gateway.run(), 5)  # no hello: closed by its deadline
        assert not shutdown.stopping._callbacks  # nothing left behind for a shutdown to call
        for engine in engines:
            await engine.aclose()

    asyncio.run(main())


def test_the_shutdown_signal_calls_back_in_order_once_and_forgets_who_unregistered():
    async def main() -> None:
        shutdown = Shutdown(grace=0.05)
        heard: list[str] = []
        shutdown.when_stopping(lambda: heard.append("a"))
        unregister = shutdown.when_stopping(lambda: heard.append("b"))
        shutdown.when_stopping(lambda: heard.append("c"))
        unregister()
        shutdown.begin()
        shutdown.begin()  # a second signal calls nobody twice
        await settle()
        assert heard == ["a", "c"] and shutdown.is_stopping
        shutdown.when_stopping(lambda: heard.append("late"))  # already stopping: soon
        await settle()
        assert heard[-1] == "late"
        over = asyncio.Event()
        shutdown.after_grace(over.set)
        await asyncio.wait_for(over.wait(), 5)
        cancelled: list[int] = []
        shutdown.after_grace(lambda: cancelled.append(1))()  # cancelled before it is due
        await asyncio.sleep(0.1)
        assert not cancelled

    asyncio.run(main())


def test_a_busy_connection_arms_no_idle_timer_until_its_last_session_ends():
    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(channel, limits=Limits(idle_timeout=0.05), pace=0.02)
        checks: list[bool] = []
        look = gateway._check_idle

        def counted() -> None:
            checks.append(bool(gateway._tasks))
            look()

        gateway._check_idle = counted  # type: ignore[method-assign]
        running, client = await said_hello(gateway, channel)
        channel.inbox.put_nowait(client.send(request("s1", "word " * 40)))  # ~1 s of paced tokens
        await asyncio.wait_for(running, 10)  # closed 0.05 s after the session ended
        assert checks.count(True) <= 1  # the timer armed at hello may find it busy once; none after
        assert checks and checks[-1] is False
        await engine.aclose()

    asyncio.run(main())


def test_an_unregistered_callback_does_not_run_even_when_already_queued():
    from gtl_nb.gateway.listeners import Signal

    async def main() -> None:
        signal = Signal()
        heard: list[str] = []
        unregister = signal.when_set(lambda: heard.append("a"))
        signal.when_set(lambda: 1 / 0)  # raises in its own turn: the loop reports it, the others run
        signal.when_set(lambda: heard.append("c"))
        signal.set()
        unregister()  # after set(), before its turn
        await settle()
        assert heard == ["c"]

    loop = asyncio.new_event_loop()
    reported: list[object] = []
    loop.set_exception_handler(lambda _, context: reported.append(context.get("exception")))
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(reported) == 1 and isinstance(reported[0], ZeroDivisionError)


def test_a_signal_set_from_another_thread_calls_back_on_the_loop_that_registered():
    import threading

    from gtl_nb.gateway.listeners import Signal

    async def main() -> None:
        signal = Signal()
        where: list[str] = []
        signal.when_set(lambda: where.append(threading.current_thread().name))
        setter = threading.Thread(target=signal.set, name="elsewhere")
        setter.start()
        setter.join()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if where:
                break
        assert where == [threading.current_thread().name]

    asyncio.run(main())


def test_queries_reach_and_name_only_the_deployments_a_token_may_use():
    async def main() -> None:
        hidden = {"type": "openai", "api_key": "k", "base_url": "http://127.0.0.1:9/v1"}  # nothing listens
        channel = HeldChannel()
        engine, gateway = gateway_over(
            channel,
            limits=Limits(),
            config={"providers": {"echo": {}, "hidden": hidden}},
            allowed_deployments=frozenset({"echo"}),
        )
        running, client = await said_hello(gateway, channel)
        asks = [
            Query(query_id="m", name="models", params={"deployment": "hidden"}),
            Query(query_id="n", name="models", params={"deployment": "nothing-here"}),
            Query(query_id="b", name="breakers"),
        ]
        channel.inbox.put_nowait(b"".join(client.send(q) for q in asks))
        for _ in range(50):
            await settle()
        answers = {a.query_id: a for a in take(channel, client) if isinstance(a, Answer)}
        # the same answer as for a name that does not exist, and no call upstream (no "cannot list")
        assert answers["m"].error.code == answers["n"].error.code == "MODEL_NOT_FOUND"
        assert answers["m"].error.provider is None and "cannot" not in answers["m"].error.message
        assert set(answers["b"].result["breakers"]) == {"echo"}
        channel.inbox.put_nowait(b"")
        await asyncio.wait_for(running, 5)
        await engine.aclose()

    asyncio.run(main())


def test_a_query_being_answered_keeps_the_connection_from_idling_out():
    async def main() -> None:
        channel = HeldChannel()
        engine, gateway = gateway_over(channel, limits=Limits(idle_timeout=0.2))
        slow = asyncio.Event()

        async def slow_models(name: str, key_name: str | None = None) -> tuple[list[str], dict[str, int]]:
            await asyncio.sleep(0.6)  # three idle periods
            slow.set()
            return ["echo"], {}

        engine.listed_models = slow_models  # type: ignore[method-assign]
        running, client = await said_hello(gateway, channel)
        channel.inbox.put_nowait(client.send(Query(query_id="q", name="models", params={"deployment": "echo"})))
        await asyncio.wait_for(slow.wait(), 5)
        await settle()
        answers = [a for a in take(channel, client) if isinstance(a, Answer)]
        assert [a.result for a in answers] == [{"models": ["echo"]}]  # answered, not cut off
        await asyncio.wait_for(running, 5)  # then idle: closed 0.2 s later
        await engine.aclose()

    asyncio.run(main())


def test_a_store_that_is_away_is_the_gateways_trouble_and_its_address_stays_in_the_log(caplog):
    from types import SimpleNamespace

    from gtl_nb.engine.context import RequestContext
    from gtl_nb.engine.stores.postgres_pool import PostgresUnavailableError
    from gtl_nb.gateway.queries import answer_query

    where = "postgresql://gtl@db.internal:5432/ledger; rows spooled in /var/lib/gtl/postgres-spool-0a1b.sqlite3"

    class AwayLedger:
        async def rows(self, **filters):
            raise PostgresUnavailableError(f"the ledger {where} cannot be read now: connection refused")

    context = RequestContext(principal="ann", scopes=frozenset({"usage:read"}))
    with caplog.at_level("WARNING", logger="gtl_nb"):
        answer = asyncio.run(
            answer_query(
                SimpleNamespace(ledger=AwayLedger()), context, Query(query_id="q", name="usage"), max_bytes=1 << 20
            )
        )
    assert answer.error is not None and answer.error.code == "PROVIDER_UNAVAILABLE" and answer.error.retryable
    assert "try again" in answer.error.message and "db.internal" not in answer.error.message
    assert "spool" not in answer.error.message
    assert "db.internal" in caplog.text  # the operator's


def test_a_flood_past_the_cap_leaves_a_row_per_request_and_no_work_behind(tmp_path):
    """200 requests in one read to a connection at its cap of 1: each is refused ``OVERLOADED`` with its
    own ledger row, recorded by the connection's reader itself — no task, no queue per refusal — and none
    counts against the connection's or the principal's cap."""
    from gtl_nb.engine.ledger import Ledger
    from gtl_nb.gateway.principal_sessions import sessions_of

    async def main() -> None:
        channel = HeldChannel()
        options = {"providers": {"echo": {"options": {"pace": 0.05}}}}
        settings = load_settings(config=options, environ={})
        engine = build_engine(settings, ledger=tmp_path / "rows.sqlite", audience="gateway")
        gateway = GatewayConnection(
            engine,
            FramedConnection(GTLConnection("server"), channel),
            authenticate=lambda token: RequestContext(principal="tester", scopes=SCOPE_NAMES),
            limits=Limits(max_sessions_per_connection=1),
        )
        running, client = await said_hello(gateway, channel)
        channel.inbox.put_nowait(client.send(request("held", "word " * 400)))  # seconds of paced tokens
        await settle()
        made: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_task_factory(
            lambda loop, coro, **kw: made.append(coro.__qualname__) or asyncio.Task(coro, loop=loop, **kw)
        )
        channel.inbox.put_nowait(b"".join(client.send(request(f"r{i}")) for i in range(200)))
        await settle()
        loop.set_task_factory(None)
        ends = [e for e in take(channel, client) if isinstance(e, Error)]
        assert [e.session_id for e in ends] == [f"r{i}" for i in range(200)]
        assert {(e.code, e.retryable) for e in ends} == {("OVERLOADED", True)}
        assert made == []  # every refusal was written by the reader, in turn
        assert gateway.live_sessions == 1 and sessions_of(engine).running("tester") == 1
        channel.inbox.put_nowait(b"")
        await asyncio.wait_for(running, 10)
        await engine.aclose()

    asyncio.run(main())
    rows = Ledger(tmp_path / "rows.sqlite").rows()
    refused = [row for row in rows if row["session_id"] != "held"]
    assert len(refused) == 200 and len({row["session_id"] for row in refused}) == 200
    assert {(row["status"], row["error_code"], row["user"], row["model"]) for row in refused} == {
        ("error", "OVERLOADED", "tester", "echo")
    }
