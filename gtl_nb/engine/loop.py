"""One long-lived background event loop thread for the synchronous API.

A Jupyter kernel already runs an asyncio loop in its main thread, so ``asyncio.run`` fails there and
patching the loop (nest_asyncio) breaks other libraries. Instead every synchronous call hands its
coroutine to this thread's loop and waits for it (``run``: on a lock the task's end releases); a
coroutine on another loop awaits it (``call``: the end comes back with one ``call_soon_threadsafe``).
One wake-up each way, so a call costs little beyond its own work. Connection pools live on this loop
and survive between notebook cells.

A ``KeyboardInterrupt`` while waiting (the notebook's "interrupt kernel") cancels the coroutine on
the loop thread, waits briefly for its clean-up to finish, and re-raises.

``stop()`` — at interpreter exit for the shared loop — first ends what still runs on the loop: each
resource given to ``close_at_exit`` (a client's connection to a gateway the program never closed) is
closed, within ``EXIT_SECONDS``, then every task left is cancelled and awaited, ``TASK_SECONDS`` at
most per round: a gateway that is gone or hung cannot hold the exit for more than a few seconds. A
task still pending when the loop closes would be destroyed by the garbage collector later, printing
"Task was destroyed but it is pending!" and running its clean-up against a closed loop.

The shared loop runs on uvloop when it can be imported (as the gateway does): the engine's sockets,
timers and call scheduling then run in compiled code, about 8 % fewer instructions per embedded
request (``python -m bench.bench_embedded --callgrind``). ``GTL_NB_EVENT_LOOP`` chooses: ``auto``
(the default), ``uvloop`` (an error when it is missing) or ``asyncio`` (the standard library's loop).
The loop is ours alone: a notebook kernel's own loop, in another thread, is not touched.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib
import inspect
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import ConfigurationError

T = TypeVar("T")
R = TypeVar("R")

log = get_logger("engine.loop")

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
"""What ``GTL_NB_EVENT_LOOP`` (and ``LoopThread(event_loop=...)``) may say."""

_CLEANUP_GRACE_SECONDS = 5.0
EXIT_SECONDS = 2.0
"""Seconds ``stop`` gives the ``close_at_exit`` resources to close (a polite close waits for the gateway)."""
TASK_SECONDS = 1.0
"""Seconds ``stop`` gives the tasks it cancelled to run their clean-up, per round (two at most)."""


class Closable(Protocol):
    """What ``close_at_exit`` takes: anything with an ``aclose()`` coroutine."""

    async def aclose(self) -> None: ...


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None`` when none is (``asyncio.get_running_loop``
    without its exception)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class WaitedTooLong(concurrent.futures.TimeoutError):
    """``LoopThread.run`` waited its ``timeout`` for the work's result (a ``TimeoutError``, told apart
    from one the work itself raised)."""


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``await awaitable``, or ``TimeoutError`` after ``timeout`` seconds (``None``: no limit) — never
    losing a cancellation of the caller. Python 3.11's ``asyncio.wait_for`` returns what completed in
    the same turn as its caller was cancelled and drops the cancellation (fixed in 3.12): a gRPC call
    whose request and reset came in one burst ran its session to the end. ``asyncio.timeout``
    delivers it; Python 3.10 has no ``asyncio.timeout``, and keeps ``wait_for``'s race."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout)


def loop_factory(choice: str, *, setting: str = "GTL_NB_EVENT_LOOP") -> Callable[[], asyncio.AbstractEventLoop]:
    """The function that makes the event loop ``choice`` names (one of ``EVENT_LOOPS``); ``setting``
    names where the choice came from, for the error (the gateway's is ``[gateway] event_loop``)."""
    if choice not in EVENT_LOOPS:
        raise ConfigurationError(f"{setting} must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(f"{setting} = uvloop needs uvloop: pip install uvloop") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # type: ignore[no-any-return]


class LoopThread:
    """A daemon thread running an event loop forever: asyncio's unless ``event_loop`` says otherwise.

    A forked child has none of its parent's threads: there, every call raises ``FORKED`` at once
    (it would wait forever for a loop that no longer runs) and ``stop`` does nothing."""

    forked = False
    """Whether this process is a fork of the one that started the thread (set by ``_after_fork``)."""

    def __init__(self, name: str = "gtl_nb-loop", *, event_loop: str = "asyncio") -> None:
        self._new_loop = loop_factory(event_loop)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # weak: a resource the program let go of is not kept alive for the exit (its tasks still end there)
        self._at_exit: weakref.WeakSet[Closable] = weakref.WeakSet()
        self._at_exit_lock = threading.Lock()  # added to from any thread, read by ``stop``
        # one per caller loop awaiting ``call``s: the ends that land together wake that loop once. Held
        # by value weakly, under the loop's id: a mailbox lives while a call, its end or a delivery
        # needs it, and goes — its loop with it — once none does (a loop closed with a delivery
        # queued drops that delivery, the last holder)
        self._mailboxes: weakref.WeakValueDictionary[int, _Mailbox] = weakref.WeakValueDictionary()
        self._stop_lock = threading.Lock()
        self._stopping = False  # stop() was called: a later call has nothing to add
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        _started.add(self)

    def _run(self) -> None:
        loop = self._new_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        if self.in_loop_thread or self.forked:
            coro.close()
            raise RuntimeError(
                FORKED if self.forked else "the synchronous gtl_nb API cannot be called from its own loop thread"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine[Any, Any, T], ended: Callable[[asyncio.Task[T]], object] | None = None) -> Work[T]:
        """Start ``coro`` as a task on the loop (one wake-up of it); ``ended(task)`` is called there
        when the task is done. The returned ``Work`` can be cancelled from any thread."""
        if self.in_loop_thread or self.forked:
            coro.close()
            raise RuntimeError(
                FORKED if self.forked else "the synchronous gtl_nb API cannot be called from its own loop thread"
            )
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"a coroutine is required, not {type(coro).__name__}")
        work = Work(self.loop, coro, ended)
        try:
            self.loop.call_soon_threadsafe(work._start)
        except RuntimeError:  # this loop has closed
            coro.close()
            raise
        return work

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result; Ctrl-C cancels it.

        The waiting thread sleeps on one lock that the task's end releases: one wake-up each way
        and none of ``concurrent.futures``' conditions and callbacks (a third of the instructions)."""
        ended = threading.Lock()
        ended.acquire()
        work = self.spawn(coro, lambda _: ended.release())
        try:
            if not ended.acquire(timeout=-1 if timeout is None else timeout):
                work.cancel()  # do not leave the work running on the loop after giving up on it
                raise WaitedTooLong(f"no result within {timeout:g} s")
        except KeyboardInterrupt:
            work.cancel()
            # Let the coroutine's clean-up (closing upstream responses, recording the cancel) run.
            ended.acquire(timeout=_CLEANUP_GRACE_SECONDS)
            raise
        return work.outcome(cancelled=concurrent.futures.CancelledError)

    async def call(self, coro: Coroutine[Any, Any, T], *, grace: float = _CLEANUP_GRACE_SECONDS) -> T:
        """Await ``coro`` on this loop from a coroutine on another loop (the caller's).

        One wake-up of this loop starts it and one of the caller's hands back its outcome — no
        ``concurrent.futures.Future`` in between. Cancelling the caller cancels ``coro`` and waits up
        to ``grace`` seconds for its clean-up (a session recording its end) before re-raising.
        """
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("LoopThread.call awaits another loop's work; on the loop thread, await it directly")
        caller = asyncio.get_running_loop()
        landing = _Landing(caller)
        mailbox = self._mailboxes.get(id(caller))
        if mailbox is None or not mailbox.bound_for(caller):  # (an id a collected loop had is reused)
            mailbox = self._mailboxes[id(caller)] = _Mailbox(caller)
        work = self.spawn(coro, lambda _: mailbox.post(landing))
        try:
            await landing.future
        except asyncio.CancelledError:  # the caller was cancelled
            if not landing.ended:  # and the work runs on: cancel it and wait for its end on a new future
                landing.future = caller.create_future()
                work.cancel()
                await asyncio.wait([landing.future], timeout=grace)
            raise
        return work.outcome(cancelled=asyncio.CancelledError)

    def close_at_exit(self, resource: Closable) -> None:
        """Have ``stop`` close ``resource`` (``await resource.aclose()`` on this loop) if it is still alive
        then; closing it earlier does no harm (``aclose`` is called again and must allow that)."""
        with self._at_exit_lock:
            self._at_exit.add(resource)

    def stop(self) -> None:
        """End what runs on the loop (see the module docstring), then stop the loop and its thread."""
        loop = self._loop
        if loop is None or not loop.is_running() or self.forked:  # (a forked child's copy runs nowhere)
            return
        with self._stop_lock:  # once: at exit several drains ask, and a wedged loop costs each the wait
            if self._stopping:
                return
            self._stopping = True
        if self.in_loop_thread:  # it cannot wait for itself: the loop just stops
            loop.stop()
            return
        ending = asyncio.run_coroutine_threadsafe(self._end_everything(), loop)
        with contextlib.suppress(Exception):  # a wedged loop: stop it all the same
            ending.result(EXIT_SECONDS + 2 * TASK_SECONDS + 1)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)

    async def _end_everything(self) -> None:
        """Close the ``close_at_exit`` resources, cancel the tasks left and wait for them (bounded)."""
        with self._at_exit_lock:
            resources = list(self._at_exit)
            self._at_exit.clear()
        if resources:
            closing = [asyncio.ensure_future(_close_quietly(resource)) for resource in resources]
            await asyncio.wait(closing, timeout=EXIT_SECONDS)
        here = asyncio.current_task()
        for _ in range(2):  # a second round for the tasks the first one's clean-up started
            tasks = [task for task in asyncio.all_tasks() if task is not here]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=TASK_SECONDS)
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()  # seen: nobody is left to read it
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().shutdown_asyncgens()


class CallersLoop(LoopThread):
    """The caller's own running event loop, in place of a loop thread (``gtl_nb.aconnect``).

    The engine then runs on the loop that awaits it: ``call`` runs its coroutine as a task of that
    loop — no thread is crossed either way, where ``LoopThread.call`` wakes the loop thread and then
    the caller's loop — and ``spawn`` starts a task there. Other threads still reach it while it runs
    (``run``, ``submit``, ``spawn``: one wake-up of this loop, as for a loop thread); where it runs,
    nothing may wait for it synchronously (``run`` and ``submit`` raise: the loop would wait for
    itself), and a call made where it cannot run — closed, stopped, or another loop running on that
    thread — raises a sentence that says which and how to go on. It is not
    ours to stop: ``stop`` does nothing and ``close_at_exit`` keeps nothing, so a client on it is
    closed by ``await client.aclose()`` (or ``async with``); rows a program left open at exit are
    marked ``interrupted`` the next time the ledger opens, as for any process that ended abruptly.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._at_exit = weakref.WeakSet()
        self._at_exit_lock = threading.Lock()
        self._mailboxes = weakref.WeakValueDictionary()  # for calls from other loops (``LoopThread.call``)

    @property
    def in_loop_thread(self) -> bool:
        """Whether this loop is the one running here (its thread is wherever it runs now)."""
        return asyncio._get_running_loop() is self._loop

    def unusable(self) -> str | None:
        """Why the engine's work cannot run on this loop from here (a sentence for the error), or
        ``None``: the loop is closed; or it is neither running here nor running at all (another
        loop runs on this thread — a second ``asyncio.run`` — or it is stopped: the work would wait
        forever)."""
        if self._loop.is_closed():
            return LOOP_CLOSED
        if self.in_loop_thread or self._loop.is_running():
            return None
        return LOOP_NOT_HERE

    def _refuse(self, coro: object, *, synchronous: bool) -> None:
        """Raise (closing ``coro``) when the work cannot run from here; a synchronous wait on the
        loop's own thread never returns."""
        reason = self.unusable() or (OWN_LOOP if synchronous and self.in_loop_thread else None)
        if reason is not None:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError(reason)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        self._refuse(coro, synchronous=True)
        return super().submit(coro)

    def spawn(self, coro: Coroutine[Any, Any, T], ended: Callable[[asyncio.Task[T]], object] | None = None) -> Work[T]:
        """Start ``coro`` as a task of the loop: at once where it runs, by one wake-up from elsewhere."""
        self._refuse(coro, synchronous=False)
        if not self.in_loop_thread:
            return super().spawn(coro, ended)
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"a coroutine is required, not {type(coro).__name__}")
        work = Work(self.loop, coro, ended)
        work._start()
        return work

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """``LoopThread.run`` from another thread, watching the loop while it waits: the loop is the
        caller's, and may close or stall under the wait. Closed before the work ended: ``LOOP_CLOSED``
        (a work that never started is closed, not left un-awaited). Not started within
        ``STALL_SECONDS``: a warning that names the likely deadlock (this loop's thread waiting for
        this one, as a cell joining the thread it started) — then it waits on: a loop busy for a long
        while is not an error."""
        self._refuse(coro, synchronous=True)
        ended = threading.Lock()
        ended.acquire()
        work = self.spawn(coro, lambda _: ended.release())
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.watch(lambda wait: ended.acquire(timeout=wait) or None, work, deadline)
        except concurrent.futures.TimeoutError:
            work.cancel()
            raise
        except KeyboardInterrupt:
            work.cancel()
            if not self._loop.is_closed():
                ended.acquire(timeout=_CLEANUP_GRACE_SECONDS)
            work.close_unstarted()
            raise
        return work.outcome(cancelled=concurrent.futures.CancelledError)

    def watch(self, take: Callable[[float], R | None], work: Work[Any], deadline: float | None = None) -> R:
        """From another thread: ``take(seconds)`` until it gives something (``None`` or ``queue.Empty``:
        nothing yet), looking at the loop between tries. The loop closed with nothing taken:
        ``LOOP_CLOSED`` (``work``'s coroutine closed if it never started). ``work`` not started
        after ``STALL_SECONDS``: one warning naming the likely deadlock, then it waits on — a loop
        busy for a long while is not an error. Past ``deadline`` (monotonic): ``TimeoutError``."""
        stall_at: float | None = time.monotonic() + STALL_SECONDS
        while True:
            now = time.monotonic()
            wait = _WATCH_SECONDS if deadline is None else max(0.0, min(_WATCH_SECONDS, deadline - now))
            try:
                taken = take(wait)
            except queue.Empty:
                taken = None
            if taken is not None:
                return taken
            if self._loop.is_closed():
                try:  # one last look: what ended just before the loop closed is an answer
                    taken = take(0)
                except queue.Empty:
                    taken = None
                if taken is not None:
                    return taken
                work.close_unstarted()
                raise RuntimeError(LOOP_CLOSED)
            now = time.monotonic()
            if stall_at is not None and now >= stall_at:
                stall_at = None
                if not work.started:
                    log.warning(LOOP_STALLED, STALL_SECONDS)
            if deadline is not None and now >= deadline:
                raise WaitedTooLong("no result by the deadline")

    async def call(self, coro: Coroutine[Any, Any, T], *, grace: float = _CLEANUP_GRACE_SECONDS) -> T:
        """Await ``coro`` as a task of this loop (from a coroutine on it), or from another loop as
        ``LoopThread.call`` does. A task of its own, not ``await coro``: what cancels the session
        (``aclose``, ending every session) must not cancel the caller, and a caller cancelled mid-call
        gets its ``CancelledError`` after the session's clean-up (at most ``grace`` seconds), as from a
        loop thread."""
        # (one look at the running loop — a getpid() system call each on Python 3.11 — not two: on its
        # own running loop nothing is refused, since a running loop is never closed)
        if asyncio._get_running_loop() is not self._loop:
            self._refuse(coro, synchronous=False)
            return await super().call(coro, grace=grace)
        # The caller waits for ``told``, which the task settles from inside as its last step: what
        # ``asyncio.shield(task)`` does, one turn of the loop sooner (no done callback scheduled
        # between the task's end and the caller's wake-up) and with no future or callbacks of its own.
        told: asyncio.Future[T] = self._loop.create_future()
        task = self._loop.create_task(_telling(coro, told))
        task.add_done_callback(_settle_unsettled(told, coro))  # (run with the caller's wake-up: no turn more)
        try:
            return await told
        except asyncio.CancelledError:
            if not task.done():  # the caller was cancelled, and the session runs on: cancel it too
                task.cancel()
                await asyncio.wait([task], timeout=grace)
            raise

    def close_at_exit(self, resource: Closable) -> None:
        """Nothing: the caller's loop may be gone at exit (see the class docstring)."""

    def stop(self) -> None:
        """Nothing: the loop is the caller's."""


async def _telling(coro: Coroutine[Any, Any, T], told: asyncio.Future[T]) -> None:
    """Run ``coro`` and settle ``told`` with its outcome as the last step (``CallersLoop.call``): its
    result, its exception, or cancelled when it was. A failure once the caller has stopped waiting
    (``told`` cancelled) stays the task's, which asyncio reports as never retrieved — as it did behind
    ``asyncio.shield``. What this cannot settle itself — the task cancelled before its first step, a
    ``KeyboardInterrupt`` — ``_settle_unsettled`` does once the task is done."""
    try:
        result = await coro
    except asyncio.CancelledError:
        told.cancel()
        raise
    except Exception as exc:
        if told.done():
            raise
        told.set_exception(exc)
        return
    if not told.done():
        told.set_result(result)


def _settle_unsettled(
    told: asyncio.Future[Any], coro: Coroutine[Any, Any, Any]
) -> Callable[[asyncio.Task[None]], None]:
    """The done callback of ``_telling``'s task: ``told`` cancelled when the task was cancelled
    before its first step (``coro`` never ran: closed, so it is not reported as never awaited), or
    given the task's ``KeyboardInterrupt``/``SystemExit`` (retrieved: handed on, not reported)."""

    def settle(task: asyncio.Task[None]) -> None:
        if told.done():
            return
        if task.cancelled():
            coro.close()
            told.cancel()
        else:  # (``_telling`` settled ``told`` whenever it returned: only a BaseException is left)
            told.set_exception(task.exception())  # type: ignore[arg-type]

    return settle


CAN_TAKE_BACK_A_CANCEL = hasattr(asyncio.Task, "uncancel")
"""Whether a task's cancel can be taken back (``Task.uncancel``, Python 3.11): what lets an awaited
call of ``aconnect``'s client run its session in the caller's own task (``EmbeddedBackend.session``)."""
LOOP_CLOSED = (  # what a call on a ``CallersLoop`` whose loop has closed raises
    "this client ran on the event loop gtl_nb.aconnect() was awaited on, and that loop is closed (an "
    "asyncio.run() ended): make the client on the loop you use it from (await gtl_nb.aconnect() there), "
    "or use gtl_nb.connect(), which works from any loop and thread"
)
LOOP_NOT_HERE = (  # ... and one made from a thread where another loop runs, or that is not running
    "this client runs on the event loop gtl_nb.aconnect() was awaited on, which is not running here "
    "(another asyncio.run() makes another loop): make the client on the loop you use it from (await "
    "gtl_nb.aconnect() there), or use gtl_nb.connect(), which works from any loop and thread"
)
STALL_SECONDS = 5.0
"""After this long without a ``CallersLoop`` starting a synchronous call's work, the call warns."""
_WATCH_SECONDS = 0.25  # how often such a call looks at the loop while it waits
LOOP_STALLED = (  # logged by a synchronous call from another thread while that loop does not start it
    "the event loop this client runs on (gtl_nb.aconnect) has not started a call for %g s: if its thread "
    "is waiting for this one (thread.join(), future.result() in a cell), neither will go on; await the "
    "client's async methods there instead, or use gtl_nb.connect(), whose engine has a thread of its own"
)
FORKED = (  # what a call raises in a forked child, on a loop thread its parent started
    "this client was made before the process forked, and the thread its engine runs on is not in this "
    "process: make a client here, after the fork (gtl_nb.connect() in the worker), or start workers "
    "with multiprocessing's 'spawn' or 'forkserver' method"
)
OWN_LOOP = (  # what a synchronous call on the thread of a ``CallersLoop`` raises
    "this client runs on this thread's event loop (gtl_nb.aconnect): a synchronous call here would wait "
    "for itself; use the async methods (await client.acomplete(...), client.astream(...), "
    "await client.abatch(...), await client.ausage(), await client.aclose()), or use gtl_nb.connect(), "
    "whose engine has a thread of its own"
)


async def _close_quietly(resource: Closable) -> None:
    """``resource.aclose()``; at exit nobody is left to hear how it failed."""
    with contextlib.suppress(Exception):
        await resource.aclose()


_shared: LoopThread | None = None
_shared_lock = threading.Lock()
_started: weakref.WeakSet[LoopThread] = weakref.WeakSet()  # every loop thread started in this process


def _after_fork() -> None:
    """In a forked child: mark the loop threads the parent started (none of them runs here)."""
    global _shared, _shared_lock
    for started in list(_started):
        started.forked = True
    _started.clear()
    _shared = None  # (forked from the loop thread itself, its copy is this thread: alive, yet no loop)
    _shared_lock = threading.Lock()  # the parent may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def shared_loop() -> LoopThread:
    """The process-wide loop thread, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared._thread.is_alive():
            _shared = LoopThread(event_loop=os.environ.get("GTL_NB_EVENT_LOOP", "auto"))
            atexit.register(_shared.stop)
        return _shared


def stop_shared_loop() -> None:
    """Stop the process-wide loop thread, if one runs (``LoopThread.stop``: its sessions end
    ``cancelled`` first). What drains a ledger at exit calls this before draining: ``atexit`` runs
    the last handler registered first, and a ledger opens after the loop started, so its drain would
    otherwise run — and close the ledger — before the loop's sessions have queued their outcomes."""
    shared = _shared
    if shared is not None:
        shared.stop()


class Work(Generic[T]):
    """A coroutine running as a task on a ``LoopThread`` (``spawn``, and inside ``run`` and ``call``).

    ``cancel()`` may be called from any thread, at any time (before the task has started, after it
    ended, after the loop closed); ``outcome()`` once the ``ended`` callback has been called.
    """

    __slots__ = ("_coro", "_ended", "_loop", "_task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, T],
        ended: Callable[[asyncio.Task[T]], object] | None,
    ) -> None:
        self._loop = loop
        self._coro = coro
        self._ended = ended or _retrieve
        self._task: asyncio.Task[T] | None = None

    def _start(self) -> None:  # on the loop thread
        self._task = self._loop.create_task(self._coro)
        self._task.add_done_callback(self._ended)

    @property
    def started(self) -> bool:
        """Whether the loop has made the task (``spawn`` only queued it)."""
        return self._task is not None

    def close_unstarted(self) -> None:
        """Close the coroutine of a work its loop never started (the loop closed first): it is
        then not reported as never awaited."""
        if self._task is None:
            self._coro.close()

    def cancel(self) -> None:
        """Cancel the task, from any thread. (``spawn`` queued ``_start`` before handing this object
        out, and the loop runs what is queued in order: the task exists by the time ``_cancel`` runs.)"""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the work has ended with it
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:  # on the loop thread
        task = self._task
        if task is None or task.done():
            return
        coro = self._coro  # (a native coroutine says whether it has started; another awaitable is cancelled at once)
        if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
            # A task cancelled before its first step never runs its coroutine: a session would end with no
            # ledger row and no terminal event (and its reader wait for one). Its first step is queued
            # already (``_start``): cancel once it has taken it, where its own handling of a cancel runs.
            self._loop.call_soon(self._cancel)
            return
        task.cancel()

    def outcome(self, cancelled: type[BaseException]) -> T:
        """The ended task's result, or its exception raised (``cancelled`` if it was cancelled)."""
        assert self._task is not None and self._task.done()
        if self._task.cancelled():
            raise cancelled
        return self._task.result()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """The default ``ended``: nobody asks for the outcome (a stream reads its session's events, which
    report any failure), so an exception is marked seen rather than logged as never retrieved."""
    if not task.cancelled():
        task.exception()


class _Landing:
    """Where the end of a task sent by ``call`` lands, on the caller's loop (where every method runs)."""

    __slots__ = ("ended", "future")

    def __init__(self, caller: asyncio.AbstractEventLoop) -> None:
        self.ended = False
        self.future: asyncio.Future[None] = caller.create_future()  # replaced if the caller waits anew

    def land(self) -> None:
        self.ended = True
        if not self.future.done():
            self.future.set_result(None)


class _Mailbox:
    """The ends of ``call``s bound for one caller loop. Posting wakes that loop only when no wake-up
    is pending already: ends that come while it is busy land together, in one of its turns, where
    each would have cost a write to its self-pipe and a turn of its own (at concurrency 20: a tenth
    of the wake-ups, ~5 % of the CPU a request). It holds its loop weakly and its landings strongly
    (a caller task nobody else references is kept alive by its landing until it is woken); what
    holds the mailbox — the calls in flight, a queued delivery — goes with the loop."""

    __slots__ = ("__weakref__", "_armed", "_caller", "_landings")

    def __init__(self, caller: asyncio.AbstractEventLoop) -> None:
        self._caller = weakref.ref(caller)
        self._landings: deque[_Landing] = deque()  # appended on the loop thread, emptied on the caller's
        self._armed = False  # a ``_deliver`` is on its way to the caller's loop

    def bound_for(self, caller: asyncio.AbstractEventLoop) -> bool:
        return self._caller() is caller

    def post(self, landing: _Landing) -> None:  # on the loop thread
        self._landings.append(landing)
        if self._armed:
            return
        self._armed = True
        caller = self._caller()
        try:
            if caller is None:
                raise RuntimeError("the caller's loop is gone")
            caller.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the caller's loop has closed: nobody is waiting for these ends
            self._landings.clear()
            self._armed = False

    def _deliver(self) -> None:  # on the caller's loop
        # disarmed before emptying: an end posted after this line arms a new delivery, one posted
        # before it is taken by the loop below, so none is left behind
        self._armed = False
        landings = self._landings
        while landings:
            landings.popleft().land()
