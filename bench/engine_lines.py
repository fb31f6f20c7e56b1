"""What the embedded engine executes per session, counted exactly: Python lines, function by function.

CPU figures on these machines move ±30 % between runs, and instruction counts (``--callgrind`` of
``bench_embedded``) include the sockets, the kernel's share and the ledger's writer thread. This bench
takes all three away: every path runs on one loop with a transport of its own that hands back the bench
upstream's 16-token answer from memory (``RecordedTransport``: the same bytes, one read, as the real
upstream sends them), the ledger off, the garbage collector paused while counting. What is left —
Python's own work — is counted with ``sys.settrace``: the lines each function executes per session,
which repeat from run to run to within a few lines in a thousand (what varies is periodic: the pool of
random ids refilled every few hundred sessions), so a change's effect shows in one run.

Four paths, as in ``engine_parts``: ``parts`` (the engine's parts in one coroutine), ``engine``
(``aconnect``'s engine alone), ``general`` (the same with ``run_session``'s lane refused: the session
down ``stream_batches`` and the attempt levels) and ``whole`` (the awaited ``acomplete``). A line is a rough unit (one
may call into C for a microsecond, another test a flag), so confirm a saving in instructions —
``valgrind --tool=callgrind python -m bench.engine_lines --count-only`` counts the same sessions —
and in ``engine_parts``' CPU figures. What the counts said is in docs/benchmarks.md, "Lines executed".

Run: ``python -m bench.engine_lines [--sessions N] [--top N] [--paths parts,engine,general,whole]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any

import msgspec

import gtl_nb
from bench.bench_embedded import MODEL
from bench.engine_parts import _Parts
from bench.upstream import sse_events
from gtl_nb.client import Client, new_session_id
from gtl_nb.protocol.messages import StreamEvent
from gtl_nb.providers.base import HttpRequest

PATHS = ("parts", "engine", "general", "whole")
Call = Callable[[], Awaitable[Any]]


class _Body:
    """A response body of one read, as the engine's own transport hands it over (``at_end`` once read)."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data

    @property
    def at_end(self) -> bool:
        return self._data is None


class _Response:
    status = 200
    headers = {"content-type": "text/event-stream"}

    def __init__(self, body: bytes) -> None:
        self._body = body

    def chunks(self) -> _Body:
        return _Body(self._body)

    async def aclose(self) -> None:
        return None


class RecordedTransport:
    """An ``HttpTransport`` answering every request with the bench upstream's streamed answer, from memory."""

    def __init__(self, tokens: int = 16) -> None:
        self.body = b"".join(sse_events(tokens, include_usage=True))

    async def send(self, request: HttpRequest, *, connect_timeout: float | None) -> _Response:
        return _Response(self.body)

    async def aclose(self) -> None:
        return None


async def _client() -> Client:
    providers = {"fast": {"type": "openai", "api_key": "bench", "base_url": "http://127.0.0.1:9/v1"}}
    client = await gtl_nb.aconnect(providers=providers, config={"ledger": {"enabled": False}}, environ={})
    client.backend.engine.http.transport = RecordedTransport()  # type: ignore[attr-defined]
    return client


def _engine_alone(client: Client) -> Call:
    """One session of ``client``'s engine in the caller's task, its events dropped."""
    request = client.request(MODEL, "hi", max_tokens=16)

    def drop(_: StreamEvent) -> None:
        pass

    async def engine() -> None:
        fresh = msgspec.structs.replace(request, session_id=new_session_id())
        await client.backend.session(fresh, drop, callers_task=True)  # type: ignore[call-arg]

    return engine


def _calls(client: Client, general: Client) -> dict[str, Call]:
    """The paths (module docstring); ``general``'s engine has ``run_session``'s lane refused."""
    general.backend.engine.lane_targets = lambda request, context: None  # type: ignore[attr-defined]

    async def whole() -> None:
        await client.acomplete(MODEL, "hi", max_tokens=16)

    return {
        "parts": _Parts(client, ledger=False).answer,
        "engine": _engine_alone(client),
        "general": _engine_alone(general),
        "whole": whole,
    }


class _LineCounter:
    """Counts the lines each function executes while installed (``sys.settrace``)."""

    def __init__(self) -> None:
        self.lines: collections.Counter[str] = collections.Counter()

    def _call(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._line if event == "call" else None

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            code = frame.f_code
            where = "/".join(code.co_filename.split("/")[-2:])
            self.lines[f"{where}:{code.co_name}"] += 1
        return self._line

    async def count(self, call: Call, sessions: int) -> None:
        sys.settrace(self._call)
        try:
            for _ in range(sessions):
                await call()
        finally:
            sys.settrace(None)


async def _measure(paths: list[str], sessions: int, count_only: bool) -> dict[str, collections.Counter[Any]]:
    client, general = await _client(), await _client()
    try:
        calls = _calls(client, general)
        answer = (await client.acomplete(MODEL, "hi", max_tokens=16)).text
        if not answer or answer != await calls["parts"]():
            raise RuntimeError("the parts' answer is not the engine's")
        counted: dict[str, collections.Counter[Any]] = {}
        for path in paths:
            for _ in range(20):  # warm: every specialisation and memo in place
                await calls[path]()
            gc.collect()
            gc.disable()
            try:
                if count_only:  # (under callgrind: the sessions alone, nothing traced)
                    for _ in range(sessions):
                        await calls[path]()
                    continue
                counter = _LineCounter()
                await counter.count(calls[path], sessions)
                counted[path] = collections.Counter({k: v / sessions for k, v in counter.lines.items()})
            finally:
                gc.enable()
        return counted
    finally:
        await client.aclose()
        await general.aclose()


def report(counted: dict[str, collections.Counter[Any]], top: int) -> str:
    lines = ["| path | lines a session |", "| --- | --- |"]
    lines += [f"| {path} | {sum(counts.values()):,.0f} |" for path, counts in counted.items()]
    for path, counts in counted.items() if top > 0 else ():
        lines += ["", f"{path}, the functions executing most lines a session:", ""]
        lines += [f"  {count:7.1f}  {name}" for name, count in counts.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_lines", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, of: " + ", ".join(PATHS))
    parser.add_argument("--count-only", action="store_true", help="run the sessions untraced (for callgrind)")
    args = parser.parse_args(argv)
    paths = [path for path in args.paths.split(",") if path]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or args.sessions < 1:
        parser.error(f"unknown path {unknown[0]!r}" if unknown else "--sessions must be at least 1")
    counted = asyncio.run(_measure(paths, args.sessions, args.count_only))
    if not args.count_only:
        print(report(counted, args.top))


if __name__ == "__main__":
    main()
