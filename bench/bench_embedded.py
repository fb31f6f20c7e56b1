"""The embedded client (what a notebook uses) against a bare async HTTP call, issue 13's last targets.

Both paths talk to the bench's own fast upstream (``bench.upstream``, one process of its own) and
stream a 16-token answer; the embedded path runs the whole engine with the ledger ON (a SQLite file).
The bare path is ``aiohttp`` on an asyncio loop running in a thread of its own, as a notebook
kernel's loop does; the embedded client's async calls are awaited on that same loop. A bare ``httpx``
call — the baseline issue 13 measured with — is reported beside it (``httpx``); the ratios and the
verdict are against aiohttp, the faster of the two here; the same aiohttp call that also reads the
answer (``read``: the SSE events split, each chunk parsed with ``json``, the text joined — work the
bare call leaves undone and every real client does) is reported beside them. Measured in
interleaved rounds (the order rotates every round), medians reported:

* **concurrency 1, sync** — wall time per request: ``client.complete`` from the main thread against
  the bare request submitted from the main thread to the caller's loop (both cross one thread);
* **concurrency 1, async** — wall time per request: ``await client.acomplete`` against ``await`` of
  the bare request, each on the caller's loop (the embedded call crosses to the engine's loop and
  back, the bare one does not);
* **concurrency 20** — this process's CPU per request (all threads: the caller's loop, the engine's
  loop thread, the ledger writer), 20 ``acomplete`` at once against 20 bare requests at once;
* **1,000 concurrent streams** from one client, the upstream pacing each stream's chunks so they are
  all open together: errors (target: zero) and wall time.

Targets: at most 1.2x at concurrency 1, at most 1.5x CPU at concurrency 20, zero errors.

``--callgrind`` counts instructions per request instead (valgrind's callgrind, every thread of this
process, the upstream not included): repeatable to about 1 %, where the timings above move by 30 %.

Run: ``python -m bench.bench_embedded [--rounds N] [--streams N] [--callgrind [--requests N] [--only KINDS]]``;
``python -m bench`` runs the timed part too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec

import gtl_nb
from bench.callgrind import _total_instructions, run_counted_worker
from bench.servers import Upstream
from gtl_nb.client import new_session_id
from gtl_nb.protocol.messages import Error, StreamEvent

BODY = b'{"model":"gpt-4o-mini","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
MODEL = "fast:gpt-4o-mini"

Call = Callable[[], Awaitable[Any]]


class _CallerLoop:
    """The caller's asyncio loop on a thread of its own (a notebook kernel's), holding the bare client."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.session: aiohttp.ClientSession = self.run(self._open())
        self.httpx: httpx.AsyncClient = self.run(self._open_httpx())

    async def _open(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def _open_httpx(self) -> httpx.AsyncClient:
        unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        return httpx.AsyncClient(limits=unbounded, trust_env=False)  # no proxy from the environment: as aiohttp

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` on the caller's loop and wait for it (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    async def bare(self) -> None:
        """One bare request, its streamed body read to the end (on the caller's loop)."""
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as response:
            async for _ in response.content.iter_any():
                pass

    async def bare_read(self) -> str:
        """The bare request that also reads the answer, as a hand-written client would: the body's SSE
        events split, each chunk's JSON parsed with the standard library, the text joined — what the
        embedded call hands back (beside its usage, cost, ledger row…), which ``bare`` never works out."""
        pieces: list[str] = []
        pending = b""
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as response:
            async for data in response.content.iter_any():
                *events, pending = (pending + data).split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    for choice in json.loads(event[6:]).get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            pieces.append(text)
        return "".join(pieces)

    async def bare_httpx(self) -> None:
        """The same request with httpx (the baseline issue 13 measured with)."""
        async with self.httpx.stream("POST", self.url, content=BODY, headers=HEADERS) as response:
            async for _ in response.aiter_raw():
                pass

    def bare_from_thread(self) -> None:
        self.run(self.bare())

    def bare_read_from_thread(self) -> None:
        self.run(self.bare_read())

    def bare_httpx_from_thread(self) -> None:
        self.run(self.bare_httpx())

    def close(self) -> None:
        self.run(self.httpx.aclose())
        self.run(self.session.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


def _configuration(port: int, ledger: Path, group_commit_ms: int | None) -> dict[str, Any]:
    """``connect``'s and ``aconnect``'s keyword arguments for the bench's client: the bench's upstream,
    the ledger in ``ledger`` (its writer's group-commit window ``group_commit_ms``, default the
    configuration's) — an explicit configuration, never the user's file: every path measures the same client."""
    providers = {"fast": {"type": "openai", "api_key": "bench", "base_url": f"http://127.0.0.1:{port}/v1"}}
    ledger_table: dict[str, object] = {"path": str(ledger)}
    if group_commit_ms is not None:
        ledger_table["group_commit_ms"] = group_commit_ms
    return {"providers": providers, "config": {"ledger": ledger_table}, "environ": {}}


def _client(port: int, ledger: Path, *, group_commit_ms: int | None = None) -> gtl_nb.Client:
    """The embedded client on the bench's upstream (``_configuration``), its engine on its loop thread."""
    return gtl_nb.connect(**_configuration(port, ledger, group_commit_ms))


# Under callgrind everything runs ~50x slower, the ledger writer's group-commit window (20 ms of wall
# time) included: it would gather about one request per commit where a real run gathers dozens. The
# counted worker stretches the window to the longest allowed, so a commit holds about as many rows
# as in real time (docs/benchmarks.md, "The ledger's writer under callgrind").
COUNTED_GROUP_COMMIT_MS = 1000


def _on_callers_loop(
    caller: _CallerLoop, port: int, ledger: Path, *, group_commit_ms: int | None = None
) -> gtl_nb.Client:
    """The embedded client of ``gtl_nb.aconnect``: its engine on the caller's own loop (same
    configuration as ``_client``)."""

    async def connected() -> gtl_nb.Client:
        return await gtl_nb.aconnect(**_configuration(port, ledger, group_commit_ms))

    return caller.run(connected())  # type: ignore[no-any-return]


def _embedded(client: gtl_nb.Client) -> Call:
    return lambda: client.acomplete(MODEL, "hi", max_tokens=16)


def _engine_session(client: gtl_nb.Client) -> Call:
    """One session of ``client``'s engine in the caller's task, on a request built once (a new session
    id each time), its events dropped: the awaited call without the client's own work around it."""
    request = client.request(MODEL, "hi", max_tokens=16)

    def drop(_: StreamEvent) -> None:
        pass

    return lambda: client.backend.session(
        msgspec.structs.replace(request, session_id=new_session_id()), drop, callers_task=True
    )


def _sync_call(client: gtl_nb.Client) -> Callable[[], object]:
    return lambda: client.complete(MODEL, "hi", max_tokens=16)


async def _one_at_a_time(call: Call, calls: int) -> float:
    """Seconds per call, ``calls`` awaited one after another."""
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls


async def _together(call: Call, count: int, *, errors: bool = False) -> list[Any]:
    return await asyncio.gather(*(call() for _ in range(count)), return_exceptions=errors)


async def _in_groups(call: Call, group: int, groups: int) -> None:
    for _ in range(groups):
        await _together(call, group)


def _per_call(action: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        action()
    return (time.perf_counter() - start) / calls


def _cpu_per_call(caller: _CallerLoop, call: Call, group: int, groups: int) -> float:
    start = time.process_time()
    caller.run(_in_groups(call, group, groups))
    return (time.process_time() - start) / (group * groups)


def measure(rounds: int = 5, calls: int = 200, streams: int = 1000) -> dict[str, Any]:
    """The figures above, as a dict (milliseconds and ratios)."""
    upstream = Upstream()
    paced = Upstream(pace=0.1)  # 16 chunks 0.1 s apart: every stream stays open ~1.6 s
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = _client(upstream.port, Path(tmp) / "bench.sqlite3")
            caller = _CallerLoop(upstream.port)
            on_loop = _on_callers_loop(caller, upstream.port, Path(tmp) / "on-loop.sqlite3")
            embedded, embedded_sync, callers = _embedded(client), _sync_call(client), _embedded(on_loop)
            engine_only = _engine_session(on_loop)
            said = caller.run(caller.bare_read())
            if said != embedded_sync().text:  # the baseline must read the answer whole, not cheaply wrong
                raise RuntimeError(f"the bare read's answer {said!r} is not the embedded client's")
            for _ in range(20):  # warm both: connections, imports, the ledger file
                embedded_sync()
                caller.run(embedded())
                caller.run(callers())
                caller.run(engine_only())
                caller.bare_from_thread()
                caller.bare_read_from_thread()
                caller.bare_httpx_from_thread()
            phases: dict[str, dict[str, Callable[[], float]]] = {
                "c1_sync": {
                    "bare": lambda: _per_call(caller.bare_from_thread, calls),
                    "read": lambda: _per_call(caller.bare_read_from_thread, calls),
                    "httpx": lambda: _per_call(caller.bare_httpx_from_thread, calls),
                    "embedded": lambda: _per_call(embedded_sync, calls),
                },
                "c1_async": {
                    "bare": lambda: caller.run(_one_at_a_time(caller.bare, calls)),
                    "read": lambda: caller.run(_one_at_a_time(caller.bare_read, calls)),
                    "httpx": lambda: caller.run(_one_at_a_time(caller.bare_httpx, calls)),
                    "embedded": lambda: caller.run(_one_at_a_time(embedded, calls)),
                    "callers": lambda: caller.run(_one_at_a_time(callers, calls)),
                    "engine_only": lambda: caller.run(_one_at_a_time(engine_only, calls)),
                },
                "c20_cpu": {
                    "bare": lambda: _cpu_per_call(caller, caller.bare, 20, calls // 20),
                    "read": lambda: _cpu_per_call(caller, caller.bare_read, 20, calls // 20),
                    "httpx": lambda: _cpu_per_call(caller, caller.bare_httpx, 20, calls // 20),
                    "embedded": lambda: _cpu_per_call(caller, embedded, 20, calls // 20),
                    "callers": lambda: _cpu_per_call(caller, callers, 20, calls // 20),
                    "engine_only": lambda: _cpu_per_call(caller, engine_only, 20, calls // 20),
                },
            }
            samples: dict[str, dict[str, list[float]]] = {
                phase: {path: [] for path in paths} for phase, paths in phases.items()
            }
            for round_ in range(rounds):
                for phase, paths in phases.items():
                    order = list(paths)[round_ % len(paths) :] + list(paths)[: round_ % len(paths)]  # rotated
                    for path in order:
                        samples[phase][path].append(paths[path]())
            caller.run(on_loop.aclose())
            caller.close()
            client.close()
            many = _client(paced.port, Path(tmp) / "many.sqlite3")
            started = time.perf_counter()
            outcomes = asyncio.run(_together(_embedded(many), streams, errors=True))
            held = time.perf_counter() - started
            errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            many.close()
    finally:
        upstream.stop()
        paced.stop()
    figures: dict[str, Any] = {}
    for phase, paths in samples.items():
        medians = {path: statistics.median(values) * 1000 for path, values in paths.items()}
        figures[f"{phase}_ms"] = medians
        figures[f"{phase}_ratio"] = medians["embedded"] / medians["bare"]
        figures[f"{phase}_httpx_ratio"] = medians["embedded"] / medians["httpx"]
        figures[f"{phase}_read_ratio"] = medians["embedded"] / medians["read"]
        if "callers" in medians:
            figures[f"{phase}_callers_ratio"] = medians["callers"] / medians["bare"]
            figures[f"{phase}_callers_httpx_ratio"] = medians["callers"] / medians["httpx"]
            figures[f"{phase}_callers_read_ratio"] = medians["callers"] / medians["read"]
            figures[f"{phase}_engine_only_ratio"] = medians["engine_only"] / medians["bare"]
    # the names earlier runs used: the sync row is the "concurrency 1" figure of the first reports
    figures["c1_ms"], figures["c1_ratio"] = figures["c1_sync_ms"], figures["c1_sync_ratio"]
    figures.update(
        streams=streams,
        stream_errors=len(errors),
        first_error=repr(errors[0])[:200] if errors else None,
        streams_seconds=held,
    )
    return figures


def report(figures: dict[str, Any]) -> str:
    def row(label: str, phase: str, target: str, path: str = "embedded") -> str:
        ms = figures[f"{phase}_ms"]
        kind = "" if path == "embedded" else f"_{path}"
        ratios = f"{figures[f'{phase}{kind}_ratio']:.2f}x | {figures[f'{phase}{kind}_httpx_ratio']:.2f}x"
        return f"| {label} | {ms['bare']:.3f} | {ms['httpx']:.3f} | {ms[path]:.3f} | {ratios} | {target} |"

    def read_row(label: str, phase: str, path: str = "embedded") -> str:
        ms = figures[f"{phase}_ms"]
        kind = "" if path == "embedded" else f"_{path}"
        return f"| {label} | {ms['read']:.3f} | {ms[path]:.3f} | {figures[f'{phase}{kind}_read_ratio']:.2f}x |"

    def engine_row(label: str, phase: str) -> str:
        ms = figures[f"{phase}_ms"]
        return (
            f"| {label} | {ms['bare']:.3f} | {ms['engine_only']:.3f} | {figures[f'{phase}_engine_only_ratio']:.2f}x "
            f"| {ms['callers']:.3f} | {figures[f'{phase}_callers_ratio']:.2f}x |"
        )

    return "\n".join(
        [
            "| embedded client, 16-token stream, ledger on | bare aiohttp | bare httpx | embedded "
            "| ÷ aiohttp | ÷ httpx | target |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            row("wall per request, concurrency 1, `complete` from a thread (ms)", "c1_sync", "<= 1.2x"),
            row(
                "wall per request, concurrency 1, `await acomplete` from the caller's loop, engine on its thread (ms)",
                "c1_async",
                "<= 1.2x",
            ),
            row("CPU per request, concurrency 20, `acomplete` (ms)", "c20_cpu", "<= 1.5x"),
            row(
                "the same awaited call, engine on the caller's loop (`gtl_nb.aconnect`) (ms)",
                "c1_async",
                "<= 1.2x",
                "callers",
            ),
            row(
                "CPU per request, concurrency 20, `acomplete` of `gtl_nb.aconnect` (ms)",
                "c20_cpu",
                "<= 1.5x",
                "callers",
            ),
            f"| {figures['streams']} concurrent streams from one client | | | "
            f"{figures['stream_errors']} errors in {figures['streams_seconds']:.1f} s | | | zero errors |",
            "",
            "Against a bare aiohttp call that also reads the answer (SSE split, each chunk parsed by `json`, "
            "the text joined; the verdict above stays against the call that reads nothing):",
            "",
            "| the same rows | bare aiohttp, answer read (ms) | embedded (ms) | ÷ it |",
            "| --- | --- | --- | --- |",
            read_row("`complete` from a thread, concurrency 1", "c1_sync"),
            read_row("`await acomplete`, engine on its thread", "c1_async"),
            read_row("CPU at concurrency 20, `acomplete`", "c20_cpu"),
            read_row("`await acomplete` of `gtl_nb.aconnect`", "c1_async", "callers"),
            read_row("CPU at concurrency 20, `acomplete` of `gtl_nb.aconnect`", "c20_cpu", "callers"),
            "",
            "Where the gap lies: `aconnect`'s engine alone — the session of a request built beforehand, its "
            "events dropped, no `Completion` made — against the whole awaited call (what a client layer of no "
            "cost at all would reach):",
            "",
            "| the same rows | bare aiohttp (ms) | engine alone (ms) | ÷ bare | whole call (ms) | ÷ bare |",
            "| --- | --- | --- | --- | --- | --- |",
            engine_row("`await`, concurrency 1", "c1_async"),
            engine_row("CPU at concurrency 20", "c20_cpu"),
        ]
    )


# -- instruction counts -------------------------------------------------------------------------

#: what ``--callgrind`` counts, in this order: (name, concurrency, how the embedded client is called)
COUNTED = (
    ("bare, awaited on the caller's loop", 1, "bare"),
    ("bare that reads the answer (SSE split, `json` parse), awaited", 1, "read"),
    ("embedded `await acomplete`", 1, "acomplete"),
    ("embedded `complete` from a thread", 1, "complete"),
    ("the engine alone: sessions back to back on its loop, nothing handed over", 1, "engine"),
    ("bare, 20 at once", 20, "bare"),
    ("bare that reads the answer, 20 at once", 20, "read"),
    ("embedded `acomplete`, 20 at once", 20, "acomplete"),
    ("`aconnect`'s `await acomplete` (the engine on the caller's loop)", 1, "callers"),
    ("`aconnect`'s `acomplete`, 20 at once", 20, "callers"),
    ("`aconnect`'s engine alone: sessions back to back on the caller's loop", 1, "callers_engine"),
)


async def _engine_alone(client: gtl_nb.Client, count: int) -> None:
    """``count`` sessions one after another on the engine's loop (where this runs: its loop thread, or
    the caller's loop for ``aconnect``): what the engine and its ledger cost without the client around
    them (no request building, no hand-over)."""
    request = client.request(MODEL, "hi", max_tokens=16)
    ends: list[StreamEvent] = []
    for _ in range(count):
        await client.backend.session(msgspec.structs.replace(request, session_id=new_session_id()), ends.append)
    failed = [event for event in ends if isinstance(event, Error)]
    if failed:
        raise RuntimeError(f"the engine alone: {failed[0]}")


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=120, check=False)


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"callgrind wrote no {path.name}")
        time.sleep(0.1)
    time.sleep(0.5)  # let valgrind finish writing it


def _counted(only: set[str] | None) -> list[tuple[str, int, str]]:
    """The paths of ``COUNTED`` to count: those whose kind (``bare``, ``read``, ``acomplete``, ``complete``,
    ``engine``, ``callers``, ``callers_engine``) is in ``only``, or all."""
    return [path for path in COUNTED if only is None or path[2] in only]


def _counted_worker(requests: int, out: Path, only: set[str] | None = None) -> None:
    """Runs under valgrind (``--callgrind``): each of ``COUNTED`` (or the kinds ``only`` names) warmed
    up, then counted alone, one dump each (``out.1``, ``out.2`` …)."""
    pid = str(os.getpid())
    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = _client(upstream.port, Path(tmp) / "bench.sqlite3", group_commit_ms=COUNTED_GROUP_COMMIT_MS)
            caller = _CallerLoop(upstream.port)
            on_loop = _on_callers_loop(
                caller, upstream.port, Path(tmp) / "on-loop.sqlite3", group_commit_ms=COUNTED_GROUP_COMMIT_MS
            )
            calls: dict[str, Callable[[int, int], object]] = {
                "bare": lambda group, groups: caller.run(_in_groups(caller.bare, group, groups)),
                "read": lambda group, groups: caller.run(_in_groups(caller.bare_read, group, groups)),
                "acomplete": lambda group, groups: caller.run(_in_groups(_embedded(client), group, groups)),
                "complete": lambda group, groups: [_sync_call(client)() for _ in range(group * groups)],
                "engine": lambda group, groups: client.backend.loop.run(_engine_alone(client, group * groups)),
                "callers": lambda group, groups: caller.run(_in_groups(_embedded(on_loop), group, groups)),
                "callers_engine": lambda group, groups: caller.run(_engine_alone(on_loop, group * groups)),
            }
            for number, (_, group, how) in enumerate(_counted(only), start=1):
                calls[how](group, max(1, 20 // group))
                _callgrind_control("--instr=on", pid)
                _callgrind_control("--zero", pid)
                calls[how](group, requests // group)
                _callgrind_control("--dump", pid)
                _wait_for(out.with_name(f"{out.name}.{number}"))
            caller.run(on_loop.aclose())
            caller.close()
            client.close()
    finally:
        upstream.stop()


def count_instructions(requests: int = 300, only: set[str] | None = None) -> dict[str, float]:
    """Instructions per request of each of ``COUNTED`` (or the kinds ``only`` names; the bare call is
    always counted), every thread of a process under callgrind."""
    only = None if only is None else only | {"bare"}
    kinds = [] if only is None else ["--only", ",".join(sorted(only))]
    with tempfile.TemporaryDirectory(prefix="gtl-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        run_counted_worker("bench.bench_embedded", out, "--requests", str(requests), *kinds)
        counts = {}
        for number, (name, _, _) in enumerate(_counted(only), start=1):
            counts[name] = _total_instructions(out.with_name(f"{out.name}.{number}")) / requests
        return counts


def report_instructions(counts: dict[str, float]) -> str:
    bare = {group: counts[name] for name, group, how in COUNTED if how == "bare"}
    lines = ["| instructions per request (callgrind) | M | ÷ bare at the same concurrency |", "| --- | --- | --- |"]
    for name, group, _ in COUNTED:
        if name not in counts:
            continue
        lines.append(f"| {name} | {counts[name] / 1e6:.3f} | {counts[name] / bare[group]:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions per request instead")
    parser.add_argument("--requests", type=int, default=300, help="requests counted per path (--callgrind)")
    parser.add_argument(
        "--only",
        help="with --callgrind: count only these kinds, comma-separated "
        "(bare, read, acomplete, complete, engine, callers, callers_engine)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--counted-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.counted_worker:
        _counted_worker(args.requests, args.counted_worker, set(args.only.split(",")) if args.only else None)
        return
    if args.callgrind:
        figures: dict[str, Any] = count_instructions(args.requests, set(args.only.split(",")) if args.only else None)
        print(report_instructions(figures))
    else:
        figures = measure(args.rounds, args.calls, args.streams)
        print(report(figures))
        if figures["first_error"]:
            print("first error:", figures["first_error"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
