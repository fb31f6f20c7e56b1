"""``gtl_nb.aconnect``: the embedded engine on the caller's own event loop.

An awaited call then crosses no thread; the synchronous API still works from other threads and is
refused, with a message that says what to do, on the loop's own thread; cancelling and closing behave
as they do across the loop thread (the caller gets ``CancelledError``, the session and its ledger row
end ``cancelled``, closing ends the sessions without cancelling the caller)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine import bookkeeping
from gtl_nb.engine.hooks import RequestStarted
from gtl_nb.engine.loop import CallersLoop
from gtl_nb.engine.stores.memory import MemoryUsageLedger
from gtl_nb.protocol import ConfigurationError
from gtl_nb.protocol.messages import Error

SLOW = {"slow": {"type": "echo", "options": {"pace": 0.05}}}  # an echo that streams a word every 50 ms


def _statuses(ledger: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT status, error_code FROM requests ORDER BY id").fetchall()


async def _rows_settled(ledger: Path, count: int) -> list[tuple[str, str | None]]:
    for _ in range(200):  # the ledger's writer thread commits shortly after the session ends
        rows = _statuses(ledger)
        if len(rows) == count and all(status != "started" for status, _ in rows):
            return rows
        await asyncio.sleep(0.02)
    return _statuses(ledger)


def test_the_awaited_calls_run_the_engine_on_the_callers_thread():
    async def main() -> list[threading.Thread]:
        async with await gtl_nb.aconnect(ledger=False) as client:
            assert isinstance(client._loop, CallersLoop)
            threads: list[threading.Thread] = []
            client.backend.engine.hooks.subscribe(
                lambda event: threads.append(threading.current_thread()) if isinstance(event, RequestStarted) else None
            )
            answer = await client.acomplete("echo", "hello there")
            assert "hello there" in answer.text
            events = [event async for event in client.astream("echo", "streamed")]
            assert events[-1].type == "done"
            batch = await client.abatch(["a", "b"], model="echo", progress=False)
            assert [type(item).__name__ for item in batch] == ["Completion", "Completion"]
            return threads

    threads = asyncio.run(main())
    assert threads and all(thread is threading.main_thread() for thread in threads), threads


def test_it_is_awaited_or_used_as_async_with_which_closes_the_client():
    async def main() -> None:
        async with gtl_nb.aconnect(ledger=False) as client:  # no await: the block opens and closes it
            assert "in a block" in (await client.acomplete("echo", "in a block")).text
        assert client._closed
        awaited = await gtl_nb.aconnect(ledger=False)
        async with awaited:
            assert "awaited" in (await awaited.acomplete("echo", "awaited")).text
        assert awaited._closed
        as_task = asyncio.ensure_future(gtl_nb.aconnect(ledger=False))  # a coroutine still, named for what it is
        assert "coro=<aconnect()" in repr(as_task)
        await (await as_task).aclose()

    assert asyncio.iscoroutinefunction(gtl_nb.aconnect)  # what asyncio and mock's autospec ask of it
    asyncio.run(main())


def test_a_synchronous_call_on_the_loops_own_thread_is_refused_and_works_from_another_thread():
    async def main() -> str:
        client = await gtl_nb.aconnect(ledger=False)
        try:
            for call in (
                lambda: client.complete("echo", "hi"),
                lambda: client.stream("echo", "hi"),
                lambda: client.usage(),
                client.close,
            ):
                with pytest.raises(RuntimeError, match=r"aconnect.*await client\.acomplete"):
                    call()
            from_a_thread = await asyncio.to_thread(client.complete, "echo", "from a thread")
            return from_a_thread.text
        finally:
            await client.aclose()

    assert "from a thread" in asyncio.run(main())


def test_the_usage_table_is_read_awaited_on_the_loop_its_rows_were_committed_on(tmp_path):
    # aconnect's engine commits its ledger rows on the caller's loop; ausage reads them there (the
    # synchronous usage() is refused on that thread), waiting for rows still queued off the loop
    ledger = tmp_path / "ledger.sqlite3"

    async def main() -> tuple[list[str], list[str], bool]:
        async with await gtl_nb.aconnect(ledger=ledger) as client:
            assert client.backend.engine.stores.ledger._writer.loop_commits is True
            for word in ("one", "two", "three"):
                await client.acomplete("echo", word)
            right_away = list((await client.ausage())["status"])  # queued a moment ago: waited for
            await asyncio.sleep(0.1)  # five windows: the loop's own commits
            later = await client.ausage(status="ok")
            return right_away, list(later["status"]), set(later.columns) >= {"cost", "tokens_in", "model"}

    right_away, later, columns = asyncio.run(main())
    assert right_away == ["ok", "ok", "ok"] and later == ["ok", "ok", "ok"] and columns


def test_the_usage_table_is_built_off_the_awaiting_loop(tmp_path, monkeypatch):
    # pandas' first import and a large ledger's frame take a while: never on the loop that awaits
    from gtl_nb.engine import ledger as ledger_module

    built_on: list[threading.Thread] = []
    build = ledger_module.frame_from_rows

    def recording(rows):
        built_on.append(threading.current_thread())
        return build(rows)

    monkeypatch.setattr(ledger_module, "frame_from_rows", recording)

    async def main() -> tuple[threading.Thread, int]:
        async with await gtl_nb.aconnect(ledger=tmp_path / "ledger.sqlite3") as client:
            await client.acomplete("echo", "one")
            table = await client.ausage()
            return threading.current_thread(), len(table)

    loop_thread, rows = asyncio.run(main())
    assert rows == 1 and built_on and all(thread is not loop_thread for thread in built_on)


def test_a_loop_thread_clients_usage_is_awaited_from_another_loop_too(tmp_path):
    client = gtl_nb.connect(ledger=tmp_path / "ledger.sqlite3")
    try:

        async def main() -> list[str]:
            await client.acomplete("echo", "hi")
            return list((await client.ausage())["status"])

        assert asyncio.run(main()) == ["ok"]
    finally:
        client.close()


def test_cancelling_an_awaited_call_cancels_its_session_and_the_row_says_so(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"

    async def main() -> list[tuple[str, str | None]]:
        async with await gtl_nb.aconnect(providers=SLOW, ledger=ledger) as client:
            task = asyncio.ensure_future(client.acomplete("slow:echo", "one two three four five six seven"))
            await asyncio.sleep(0.12)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not client.backend._sessions  # the session ended with the caller
            return await _rows_settled(ledger, 1)

    assert asyncio.run(main()) == [("cancelled", "CANCELLED")]


def test_closing_ends_the_running_sessions_without_cancelling_their_callers(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"

    async def main() -> tuple[str | None, list[str]]:
        client = await gtl_nb.aconnect(providers=SLOW, ledger=ledger)
        streamed: list[str] = []

        async def read() -> None:
            async for event in client.astream("slow:echo", "one two three four five six seven"):
                streamed.append(event.type)

        answer = asyncio.ensure_future(client.acomplete("slow:echo", "one two three four five six seven"))
        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.12)
        await client.aclose()
        with pytest.raises(gtl_nb.GTLError) as raised:  # the caller's task was not cancelled: it got the end
            await answer
        await reader
        return raised.value.code, streamed

    code, streamed = asyncio.run(main())
    assert code == "CANCELLED"
    assert streamed[-1] == "error" and streamed.count("error") == 1


def test_an_awaited_call_runs_its_session_in_the_callers_own_task():
    # no task of its own: none to start and none to wake the caller (``Client._answer``, ``callers_task=True``)
    async def main() -> None:
        async with await gtl_nb.aconnect(ledger=False) as client:
            seen: list[asyncio.Task[object] | None] = []
            client.backend.engine.hooks.subscribe(
                lambda event: seen.append(asyncio.current_task()) if isinstance(event, RequestStarted) else None
            )
            before = len(asyncio.all_tasks())
            answer = await client.acomplete("echo", "in my task")
            assert "in my task" in answer.text
            assert seen == [asyncio.current_task()]
            assert len(asyncio.all_tasks()) == before

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is Python 3.11's")
def test_a_timeout_around_an_awaited_call_is_the_callers_and_the_row_says_cancelled(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"

    async def main() -> list[tuple[str, str | None]]:
        async with await gtl_nb.aconnect(providers=SLOW, ledger=ledger) as client:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.12):
                    await client.acomplete("slow:echo", "one two three four five six seven")
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
            assert not client.backend._sessions
            return await _rows_settled(ledger, 1)

    assert asyncio.run(main()) == [("cancelled", "CANCELLED")]


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is Python 3.11's")
def test_a_timeout_is_not_held_for_as_long_as_a_stalled_ledger_takes(monkeypatch):
    # the row's completion is waited for a while (CANCELLED_WRITE_WAIT), then the caller hears its timeout
    monkeypatch.setattr(bookkeeping, "CANCELLED_WRITE_WAIT", 0.3)

    class StalledFinish(MemoryUsageLedger):
        async def finish(self, row_id: int, **fields: object) -> None:
            await asyncio.sleep(30)

    async def main() -> float:
        async with await gtl_nb.aconnect(providers=SLOW, ledger=StalledFinish()) as client:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.12):
                    await client.acomplete("slow:echo", "one two three four five six seven")
            return time.monotonic() - started

    assert asyncio.run(main()) < 5  # 0.12 s, then at most 0.3 s for the write (it took 30 s unbounded)


def test_closing_takes_back_only_its_own_cancel_and_does_not_wait_for_the_callers_task(tmp_path):
    ledger = tmp_path / "ledger.sqlite3"

    async def main() -> None:
        client = await gtl_nb.aconnect(providers=SLOW, ledger=ledger)
        went_on = asyncio.Event()

        async def caller() -> str | None:
            try:
                await client.acomplete("slow:echo", "one two three four five six seven")
            except gtl_nb.GTLError as exc:
                code = exc.code
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
            await asyncio.sleep(0.01)  # not cancelled: the task goes on
            went_on.set()
            await asyncio.sleep(30)  # ... for longer than closing may wait
            return code

        task = asyncio.ensure_future(caller())
        await asyncio.sleep(0.12)
        started = time.monotonic()
        await client.aclose()
        assert time.monotonic() - started < 5  # the session's end, not the caller's task, was waited for
        await asyncio.wait_for(went_on.wait(), 5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _rows_settled(ledger, 1) == [("cancelled", "CANCELLED")]

    asyncio.run(main())


def test_a_call_made_in_a_tasks_own_clean_up_is_told_of_a_close_and_of_a_timeout_as_any_other():
    # the task is under one cancel already (cancelling() == 1): only the close's, or the read timer's, is taken back
    async def last_call(client: gtl_nb.Client, model: str) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            try:
                await client.acomplete(model, "one two three four five six seven")
            except gtl_nb.GTLError as exc:
                assert asyncio.current_task().cancelling() == 1  # type: ignore[union-attr]  # its own, still
                return exc.code
        return "answered"

    async def main(base_url: str) -> tuple[str, str]:
        providers = {
            **SLOW,
            "stalled": {"type": "openai", "api_key": "sim-key", "base_url": base_url, "timeouts": {"first_byte": 0.2}},
        }
        client = await gtl_nb.aconnect(providers=providers, ledger=False, routing={"retry": {"max_attempts": 1}})
        timed = asyncio.ensure_future(last_call(client, "stalled:gpt-4o-mini"))
        closed = asyncio.ensure_future(last_call(client, "slow:echo"))
        await asyncio.sleep(0.05)
        timed.cancel()
        closed.cancel()
        timed_out = await timed
        await asyncio.sleep(0.05)
        await client.aclose()
        return timed_out, await closed

    with sim.serve("openai", faults=sim.Fault.slow_first_token(2.0)) as stalled:
        assert asyncio.run(main(stalled.base_url)) == ("TIMEOUT", "CANCELLED")


def test_a_callers_cancel_at_the_moment_of_closing_still_reaches_the_caller(tmp_path):
    async def main() -> None:
        client = await gtl_nb.aconnect(providers=SLOW, ledger=tmp_path / "ledger.sqlite3")
        task = asyncio.ensure_future(client.acomplete("slow:echo", "one two three four five six seven"))
        await asyncio.sleep(0.12)
        closing = asyncio.ensure_future(client.aclose())
        await asyncio.sleep(0)  # the close has cancelled the session's task: now the caller does too
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await closing

    asyncio.run(main())


def test_what_a_call_on_the_callers_loop_ends_in_reaches_its_caller_and_nothing_is_left_behind(caplog):
    # ``CallersLoop.call`` runs the work as a task of its own, which settles what the caller awaits:
    # its result, its exception (handed over, never left in a task nobody awaits), its cancellation
    async def work(outcome: str) -> str:
        await asyncio.sleep(0)
        if outcome == "fails":
            raise ValueError("the work failed")
        if outcome == "cancelled":
            raise asyncio.CancelledError
        return outcome

    async def main() -> None:
        calls = CallersLoop()
        assert await calls.call(work("done")) == "done"
        with pytest.raises(ValueError, match="the work failed"):
            await calls.call(work("fails"))
        with pytest.raises(asyncio.CancelledError):
            await calls.call(work("cancelled"))
        assert await calls.call(work("still serving")) == "still serving"

    with caplog.at_level("ERROR"):
        asyncio.run(main())
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_call_whose_task_is_cancelled_before_it_starts_ends_its_caller_and_never_runs_the_work(recwarn):
    # something cancels every other task (a shutdown helper) after the caller's first step and before
    # the task's: the caller must not wait for ever, and the work, never started, must not be reported
    # as never awaited
    async def work() -> str:
        return "ran"

    async def main() -> str:
        calls = CallersLoop()
        me = asyncio.current_task()
        caller = asyncio.ensure_future(calls.call(work()))

        def cancel_the_others() -> None:
            for task in asyncio.all_tasks():
                if task is not me and task is not caller:
                    task.cancel()

        asyncio.get_running_loop().call_soon(cancel_the_others)
        done, _ = await asyncio.wait([caller], timeout=2)
        assert done, "the caller still waits"
        with pytest.raises(asyncio.CancelledError):
            caller.result()
        return "ended"

    assert asyncio.run(main()) == "ended"
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_failure_after_the_caller_stopped_waiting_is_still_reported(caplog):
    # the caller is cancelled; the work's clean-up then fails: nobody awaits it any more, and asyncio
    # reports it as it did behind asyncio.shield (a broken clean-up must not vanish without a trace)
    async def work() -> None:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            raise ValueError("the clean-up failed") from None

    async def main() -> None:
        calls = CallersLoop()
        caller = asyncio.ensure_future(calls.call(work(), grace=1))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    with caplog.at_level("ERROR"):
        asyncio.run(main())
        gc.collect()
    assert any("the clean-up failed" in f"{r.getMessage()} {r.exc_info}" for r in caplog.records)


def test_the_embedded_engine_takes_no_token():
    """Refused, not dropped: ``connect`` and ``aconnect`` alike, and the token is not shown."""

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="no token") as refused:
            await gtl_nb.aconnect(token="secret")
        assert "a token is for a gateway" in str(refused.value)

    asyncio.run(main())
    for endpoint in ("embedded://", "EMBEDDED://", "embedded"):
        with pytest.raises(ConfigurationError, match="a token is for a gateway") as refused:
            gtl_nb.connect(endpoint, token="secret")
        assert "secret" not in str(refused.value)


def test_another_threads_loop_awaits_it_across_the_thread():
    async def main() -> list[str]:
        async with await gtl_nb.aconnect(ledger=False) as client:

            def elsewhere() -> list[str]:
                async def three() -> list[str]:
                    answers = await asyncio.gather(*(client.acomplete("echo", f"call {n}") for n in range(3)))
                    return [answer.text for answer in answers]

                return asyncio.run(three())  # a loop of its own: each call crosses to the client's loop

            return await asyncio.to_thread(elsewhere)

    texts = asyncio.run(main())
    assert [f"call {n}" in text for n, text in enumerate(texts)] == [True, True, True]


def test_a_client_whose_loop_has_closed_says_so_and_how_to_go_on():
    client = asyncio.run(gtl_nb.aconnect(ledger=False))  # asyncio.run closes the loop it awaited on
    with pytest.raises(RuntimeError, match=r"closed.*aconnect\(\) there.*gtl_nb\.connect\(\)"):
        asyncio.run(client.acomplete("echo", "on another loop"))
    with pytest.raises(RuntimeError, match="closed"):
        client.complete("echo", "synchronously")
    with pytest.raises(RuntimeError, match="closed"):

        async def streamed() -> None:
            async for _ in client.astream("echo", "streamed"):
                pass

        asyncio.run(streamed())
    client.close()  # nothing left to end: quietly closed
    asyncio.run(client.aclose())


def test_a_client_used_while_another_loop_runs_on_its_thread_refuses_rather_than_hangs():
    first = asyncio.new_event_loop()
    client = first.run_until_complete(gtl_nb.aconnect(ledger=False))  # made on a loop that then stops

    async def elsewhere() -> None:
        with pytest.raises(RuntimeError, match="not running here"):
            await client.acomplete("echo", "hi")
        with pytest.raises(RuntimeError, match="not running here"):
            async for _ in client.astream("echo", "hi"):  # would wait forever for a task of the stopped loop
                pass

    asyncio.run(elsewhere())
    assert first.run_until_complete(client.acomplete("echo", "back home")).text  # its own loop, running again
    first.run_until_complete(client.aclose())
    first.close()


@pytest.mark.parametrize("how", ["complete", "stream"])
def test_a_synchronous_call_from_a_thread_its_loop_waits_for_says_why_it_waits(monkeypatch, caplog, how):
    from gtl_nb.engine import loop as loop_module

    monkeypatch.setattr(loop_module, "STALL_SECONDS", 0.3)

    async def main() -> list[str]:
        async with await gtl_nb.aconnect(ledger=False) as client:
            answers: list[str] = []

            def in_a_thread() -> None:
                if how == "complete":
                    answers.append(client.complete("echo", "hi").text)
                else:
                    answers.append("".join(e.text for e in client.stream("echo", "hi") if e.type == "token"))

            worker = threading.Thread(target=in_a_thread)
            worker.start()
            worker.join(1.5)  # the loop's own thread waits for the worker (a cell joining its thread)...
            assert worker.is_alive() and not answers  # ...and the worker for the loop: neither goes on
            await asyncio.to_thread(worker.join, 30)  # the loop free again: the call is answered
            return answers

    [answer] = asyncio.run(main())
    assert "hi" in answer
    assert "has not started a call for 0.3 s" in caplog.text and "thread.join()" in caplog.text


def test_a_synchronous_calls_timeout_is_kept_to(monkeypatch):
    from gtl_nb.engine import loop as loop_module

    monkeypatch.setattr(loop_module, "_WATCH_SECONDS", 30.0)  # looks at the loop far less often than that

    async def main() -> float:
        async with await gtl_nb.aconnect(ledger=False) as client:

            def timed() -> float:
                started = time.monotonic()
                with pytest.raises(concurrent.futures.TimeoutError):
                    client._loop.run(asyncio.sleep(5), timeout=0.05)
                return time.monotonic() - started

            return await asyncio.to_thread(timed)

    assert asyncio.run(main()) < 10  # its own deadline, not the next look at the loop


@pytest.mark.parametrize("how", ["complete", "stream"])
def test_a_synchronous_call_whose_loop_closes_under_it_is_told_so(how):
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(gtl_nb.aconnect(ledger=False))
    outcome: list[object] = []
    calling = threading.Event()

    def in_a_thread() -> None:
        calling.set()
        try:
            if how == "complete":
                client.complete("echo", "hi")
            else:
                outcome.extend(client.stream("echo", "hi"))
        except BaseException as exc:
            outcome.append(exc)

    def busy_then_stop() -> None:  # a callback of the running loop: the call is queued meanwhile
        worker.start()
        assert calling.wait(5)
        time.sleep(0.3)  # the worker's call has reached the loop's queue
        loop.stop()  # and the loop ends before it starts that work

    worker = threading.Thread(target=in_a_thread)
    loop.call_soon(busy_then_stop)
    loop.run_forever()
    loop.close()
    worker.join(10)
    assert not worker.is_alive()
    [end] = outcome  # complete: raised; stream: its one event, the session's end
    if how == "complete":
        assert isinstance(end, RuntimeError) and "closed" in str(end)
    else:
        assert isinstance(end, Error) and end.code == "CANCELLED" and "closed" in end.message


def test_closing_from_where_its_loop_does_not_run_leaves_it_open_and_says_so():
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(gtl_nb.aconnect(ledger=False))  # its loop, stopped now
    with pytest.raises(RuntimeError, match="not running here"):
        asyncio.run(client.aclose())  # another loop on this thread
    with pytest.raises(RuntimeError, match="not running here"):
        client.close()
    assert loop.run_until_complete(client.acomplete("echo", "still open")).text  # nothing was closed
    loop.run_until_complete(client.aclose())
    with pytest.raises(ConfigurationError, match="closed"):
        loop.run_until_complete(client.acomplete("echo", "closed now"))
    loop.close()


def test_its_loop_may_run_on_another_thread_later():
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(gtl_nb.aconnect(ledger=False))  # made here...
    runner = threading.Thread(target=loop.run_forever)  # ...then run elsewhere
    runner.start()
    try:
        assert "from the first thread" in client.complete("echo", "from the first thread").text
        assert asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(10) is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def test_spaces_around_an_address_are_read_as_is_embedded_reads_them():
    # GTL_NB_GATEWAY=' embedded ' was embedded to the notebook (is_embedded) and refused by connect
    from gtl_nb.client import is_embedded

    assert is_embedded(" embedded ")
    with gtl_nb.connect(" embedded ") as client:
        assert client.complete("echo", "hi").text
