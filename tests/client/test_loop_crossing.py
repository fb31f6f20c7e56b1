"""How a call crosses to the engine's loop thread and back: ``complete``/``acomplete`` without an
``on_event`` hand the whole answer over once, cancelling still ends the session, and the loop thread
runs on the event loop ``GTL_NB_EVENT_LOOP`` chooses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.loop import LoopThread, _Landing, _Mailbox, loop_factory
from gtl_nb.protocol import AuthenticationError, CancelledError, ConfigurationError

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def counted_wake_ups(loop: asyncio.AbstractEventLoop) -> list[object]:
    """The callbacks other threads schedule on ``loop`` from now on (each a wake-up of it)."""
    wakes: list[object] = []
    original = loop.call_soon_threadsafe

    def counting(*args, **kwargs):
        wakes.append(args[0])
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    return wakes


@pytest.fixture
def loop_thread():
    thread = LoopThread(name="test-crossing")
    yield thread
    thread.stop()


def test_call_returns_the_result_or_raises_the_error_on_the_callers_loop(loop_thread):
    async def on_the_loop_thread() -> str:
        assert loop_thread.in_loop_thread
        return "answer"

    async def failing() -> None:
        raise ValueError("from the loop thread")

    async def main() -> str:
        with pytest.raises(ValueError, match="from the loop thread"):
            await loop_thread.call(failing())
        return await loop_thread.call(on_the_loop_thread())

    assert asyncio.run(main()) == "answer"


def test_cancelling_the_caller_cancels_the_work_and_waits_for_its_clean_up(loop_thread):
    cleaned = threading.Event()

    async def long_work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a clean-up that takes a while (a session recording its end)
            cleaned.set()
            raise

    async def main() -> None:
        task = asyncio.ensure_future(loop_thread.call(long_work()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned.is_set()  # the caller saw the cancel only once the clean-up had run

    asyncio.run(main())


def test_run_gives_up_after_its_timeout_and_cancels_the_work(loop_thread):
    cancelled = threading.Event()

    async def long_work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(concurrent.futures.TimeoutError):
        loop_thread.run(long_work(), timeout=0.05)
    assert cancelled.wait(5)


def test_spawned_work_is_cancelled_from_any_thread_and_a_late_cancel_does_no_harm():
    thread = LoopThread(name="test-spawn")
    ended = threading.Event()
    work = thread.spawn(asyncio.sleep(30), lambda task: ended.set() if task.cancelled() else None)
    canceller = threading.Thread(target=work.cancel)
    canceller.start()
    canceller.join()
    assert ended.wait(5)
    with pytest.raises(concurrent.futures.CancelledError):
        work.outcome(cancelled=concurrent.futures.CancelledError)
    with pytest.raises(TypeError, match="a coroutine is required"):
        thread.spawn(lambda: None)  # type: ignore[arg-type]
    thread.stop()
    work.cancel()  # the loop has closed: nothing to do, nothing raised


def test_ends_that_come_while_the_callers_loop_is_busy_wake_it_once(loop_thread):
    async def work(number: int) -> int:
        return number * 10

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        wakes = counted_wake_ups(loop)
        calls = [asyncio.ensure_future(loop_thread.call(work(number))) for number in range(12)]
        await asyncio.sleep(0)  # every call has started its work on the loop thread
        # the caller's loop is busy (blocked, here) while all twelve end on the other thread
        deadline = time.monotonic() + 10
        while len(loop_thread._mailboxes[id(loop)]._landings) < 12 and time.monotonic() < deadline:
            time.sleep(0.005)
        results = await asyncio.gather(*calls)
        assert len(wakes) == 1  # one wake-up for the twelve ends
        return results

    assert asyncio.run(main()) == [number * 10 for number in range(12)]


def test_many_callers_loops_each_get_their_own_ends(loop_thread):
    async def work(number: int) -> int:
        await asyncio.sleep(0.001 * (number % 3))
        return number

    def one_caller(first: int, results: dict[int, list[int]]) -> None:
        async def main() -> list[int]:
            return await asyncio.gather(*(loop_thread.call(work(first + n)) for n in range(50)))

        results[first] = asyncio.run(main())

    results: dict[int, list[int]] = {}
    callers = [threading.Thread(target=one_caller, args=(first, results)) for first in (0, 1000, 2000, 3000)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert results == {first: [first + n for n in range(50)] for first in (0, 1000, 2000, 3000)}


def test_an_end_bound_for_a_closed_callers_loop_is_dropped_quietly():
    caller = asyncio.new_event_loop()
    landing = _Landing(caller)
    mailbox = _Mailbox(caller)
    caller.close()
    mailbox.post(landing)  # nobody is waiting: nothing raised on the loop thread, nothing kept
    assert not landing.ended and not mailbox._landings
    assert not mailbox._armed  # the next end tries again, rather than believing a wake-up is on its way


def test_a_callers_loop_the_program_let_go_of_is_not_kept_alive(loop_thread):
    async def work() -> str:
        return "done"

    caller = asyncio.new_event_loop()
    assert caller.run_until_complete(loop_thread.call(work())) == "done"
    caller.close()
    gone = weakref.ref(caller)
    del caller
    gc.collect()
    assert gone() is None and not loop_thread._mailboxes


def test_a_callers_loop_closed_with_a_delivery_pending_is_not_kept_alive(loop_thread):
    release = threading.Event()

    async def work() -> str:
        while not release.is_set():
            await asyncio.sleep(0.005)
        return "done"

    caller = asyncio.new_event_loop()
    task = caller.create_task(loop_thread.call(work()))
    caller.run_until_complete(asyncio.sleep(0.05))  # the call is in flight; then the loop stops
    release.set()
    deadline = time.monotonic() + 10
    while not loop_thread._mailboxes[id(caller)]._armed and time.monotonic() < deadline:
        time.sleep(0.005)  # the work ended: a delivery is queued on the stopped loop
    task.cancel()
    caller.close()  # the queued delivery is dropped with the loop
    gone = weakref.ref(caller)
    del caller, task
    gc.collect()
    assert gone() is None and not loop_thread._mailboxes


def test_a_call_whose_task_nobody_references_still_ends(loop_thread):
    release = threading.Event()
    results: list[str] = []

    async def work() -> str:
        while not release.is_set():
            await asyncio.sleep(0.005)
        return "done"

    async def fire_and_forget() -> None:
        results.append(await loop_thread.call(work()))

    async def main() -> None:
        asyncio.get_running_loop().create_task(fire_and_forget())  # no reference kept
        await asyncio.sleep(0.05)
        release.set()
        deadline = time.monotonic() + 10
        while not results and time.monotonic() < deadline:
            gc.collect()  # while its end is on the way: only the landing keeps the waiting task alive
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert results == ["done"]


def test_call_from_the_loop_thread_itself_is_refused(loop_thread):
    async def inner() -> None:
        pass

    async def outer() -> None:
        with pytest.raises(RuntimeError, match="await it directly"):
            await loop_thread.call(inner())

    loop_thread.run(outer())


def test_acomplete_wakes_the_callers_loop_once_for_the_whole_answer():
    client = gtl_nb.connect(environ={}, ledger=False)
    try:

        async def main() -> str:
            wakes = counted_wake_ups(asyncio.get_running_loop())
            answer = await client.acomplete("echo", "a whole answer, handed over once", max_tokens=30)
            assert len(wakes) == 1
            return answer.text

        assert asyncio.run(main()).startswith("You said")
    finally:
        client.close()


def test_acomplete_and_complete_raise_the_sessions_error_with_its_class():
    with sim.running("openai") as url:
        client = gtl_nb.connect(providers={"openai": {"api_key": "nope", "base_url": url}}, environ={}, ledger=False)
        try:
            with pytest.raises(AuthenticationError) as raised:
                client.complete("gpt-4o-mini", "hello")
            assert raised.value.completion.error.code == "AUTH_FAILED"  # type: ignore[attr-defined]
            with pytest.raises(AuthenticationError):
                asyncio.run(client.acomplete("gpt-4o-mini", "hello"))
        finally:
            client.close()


def test_cancelling_acomplete_leaves_a_cancelled_row_by_the_time_the_caller_hears_of_it(tmp_path):
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.05}}}, ledger=tmp_path / "l.sqlite3", environ={})
    try:

        async def main() -> None:
            task = asyncio.ensure_future(client.acomplete("echo", "a long answer that nobody waits for"))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert list(client.usage()["status"]) == ["cancelled"]
    finally:
        client.close()


def test_keyboard_interrupt_in_complete_cancels_the_session(tmp_path):
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.05}}}, ledger=tmp_path / "l.sqlite3", environ={})
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    try:
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client.complete("echo", "interrupt me: this answer has many words and takes seconds to stream")
        assert time.monotonic() - started < 2  # not after the whole answer
        assert list(client.usage()["status"]) == ["cancelled"]
    finally:
        timer.cancel()
        client.close()


def test_closing_the_client_ends_a_complete_waiting_in_another_thread_as_cancelled(tmp_path):
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.05}}}, ledger=tmp_path / "l.sqlite3", environ={})
    outcome: list[BaseException] = []

    def wait_for_the_answer() -> None:
        try:
            client.complete("echo", "a long answer that the client's closing cuts short")
        except BaseException as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=wait_for_the_answer)
    waiting.start()
    time.sleep(0.2)
    client.close()
    waiting.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)
    assert outcome[0].completion.error.code == "CANCELLED"  # type: ignore[attr-defined]


FORKS = textwrap.dedent(
    """
    import os, sys, gtl_nb
    client = gtl_nb.connect(ledger=False, environ={})
    client.complete("echo", "before the fork")
    if os.fork() == 0:  # the child: the engine's thread did not come with it
        try:
            client.complete("echo", "in the child")
        except RuntimeError as exc:
            print("refused:", exc, flush=True)
        print("its own:", gtl_nb.connect(ledger=False, environ={}).complete("echo", "anew").text[:10], flush=True)
        sys.exit(0)  # through atexit, which must not wait for the parent's loop either
    print("child:", os.wait()[1], flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_client_used_in_a_forked_child_says_so_instead_of_waiting_forever():
    # the call waited on the parent's loop thread, which a forked child does not have: forever
    done = subprocess.run([sys.executable, "-c", FORKS], capture_output=True, text=True, timeout=30)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: this client was made before the process forked"), done.stderr
    assert lines[1:] == ["its own: You said: ", "child: 0"]


FORKS_FROM_THE_LOOP = textwrap.dedent(
    """
    import os, sys, gtl_nb
    client = gtl_nb.connect(ledger=False, environ={})
    forked = []

    def fork_here(model, event):  # compare's on_event runs on the engine's loop thread
        if not forked and os.fork() == 0:  # the child: this thread's copy, no loop running it
            print("its own:", gtl_nb.connect(ledger=False, environ={}).complete("echo", "anew").text[:10], flush=True)
            os._exit(0)
        forked.append(True)

    client.compare(["echo"], "hi", on_event=fork_here)
    print("child:", os.wait()[1], flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_from_the_loop_thread_makes_a_client_of_its_own():
    # there the copied loop thread is the current one (alive), and the shared loop was still the parent's
    done = subprocess.run([sys.executable, "-c", FORKS_FROM_THE_LOOP], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["its own: You said: ", "child: 0"], done.stderr


def test_a_wedged_loop_thread_is_waited_for_once_however_many_ask():
    """At exit every ledger's drain and the loop's own handler ask to stop it: with its thread stuck
    (a callback that blocks), each of them waited the whole bound (~10 s), where one wait is enough."""
    thread = LoopThread(name="test-stop-once")
    wedge = threading.Event()
    thread.loop.call_soon_threadsafe(wedge.wait)  # the loop thread is stuck until the wedge goes
    first = threading.Thread(target=thread.stop)
    first.start()
    time.sleep(0.2)  # the first stop is waiting for the loop
    second = threading.Thread(target=thread.stop)
    second.start()
    second.join(timeout=3)
    try:
        assert not second.is_alive(), "a second stop waited for the wedged loop again"
    finally:
        wedge.set()
        first.join(timeout=30)
        second.join(timeout=30)
    assert not thread._thread.is_alive()


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_the_loop_thread_runs_uvloop_when_asked_or_when_auto_finds_it():
    for choice in ("auto", "uvloop"):
        thread = LoopThread(name="test-uvloop", event_loop=choice)
        try:
            assert type(thread.loop).__module__.startswith("uvloop")
        finally:
            thread.stop()


def test_the_loop_thread_runs_asyncio_by_default_and_when_asked():
    for thread in (LoopThread(name="test-default"), LoopThread(name="test-asyncio", event_loop="asyncio")):
        try:
            assert type(thread.loop).__module__.startswith("asyncio")
        finally:
            thread.stop()


def test_an_unknown_event_loop_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="GTL_NB_EVENT_LOOP must be one of auto, uvloop, asyncio"):
        loop_factory("trio")


def test_within_never_loses_a_cancellation_that_came_with_the_result():
    """A read completing in the same turn as its caller is cancelled: ``asyncio.wait_for`` (Python 3.11)
    returned the read and dropped the cancel — a gRPC call reset with its request ran its session to the
    end. ``within`` delivers the cancel; it still times out, and returns what came in time."""
    from gtl_nb.engine.loop import within

    async def scenario() -> list[str]:
        outcomes = []
        for wait in (within, asyncio.wait_for):
            arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            reader = asyncio.ensure_future(wait(arrived, 5))
            await asyncio.sleep(0)  # the reader waits on the read
            arrived.set_result(b"request")  # the request and the reset, in one turn
            reader.cancel()
            try:
                outcomes.append(f"read {await reader!r}")
            except asyncio.CancelledError:
                outcomes.append("cancelled")
        with pytest.raises(TimeoutError):
            await within(asyncio.sleep(1), 0.01)
        assert await within(asyncio.sleep(0, "in time"), 1) == "in time"
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == "cancelled"
    if sys.version_info[:2] == (3, 11):
        assert outcomes[1] == "read b'request'"  # the race within replaces
