"""The embedded client (what a notebook uses) against a bare async HTTP call, issue 13's last targets.

Both paths talk to the bench's own fast upstream (``bench.upstream``, one process of its own) and
stream a 16-token answer; the embedded path runs the whole engine with the ledger ON (a SQLite file).
Measured in alternating rounds, medians reported:

* **concurrency 1** — wall time per request, embedded ``client.complete`` against bare ``aiohttp``
  (target: at most 1.2x);
* **concurrency 20** — this process's CPU per request (all threads: the engine's loop thread, the
  ledger writer), 20 ``acomplete`` at once against 20 bare requests at once (target: at most 1.5x);
* **1,000 concurrent streams** from one client, the upstream pacing each stream's chunks so they are
  all open together: errors (target: zero) and wall time.

Run: ``python -m bench.bench_embedded [--rounds N] [--streams N]``; ``python -m bench`` runs it too.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

import gtl_nb
from bench.servers import Upstream

BODY = b'{"model":"gpt-4o-mini","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}


class _Bare:
    """Bare aiohttp on a loop of its own thread (as the engine's is), driven from the caller's thread."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/chat/completions"
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.session: aiohttp.ClientSession = self._run(self._open())

    async def _open(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def one(self) -> None:
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as response:
            async for _ in response.content.iter_any():
                pass

    def request(self) -> None:
        self._run(self.one())

    def many(self, count: int) -> None:
        async def all_at_once() -> None:
            await asyncio.gather(*(self.one() for _ in range(count)))

        self._run(all_at_once())

    def close(self) -> None:
        self._run(self.session.close())
        self.loop.call_soon_threadsafe(self.loop.stop)


def _client(port: int, ledger: Path) -> gtl_nb.Client:
    providers = {"fast": {"type": "openai", "api_key": "bench", "base_url": f"http://127.0.0.1:{port}/v1"}}
    return gtl_nb.connect(providers=providers, ledger=ledger, environ={})


def _embedded_many(client: gtl_nb.Client, count: int) -> list[Any]:
    async def all_at_once() -> list[Any]:
        calls = (client.acomplete("fast:gpt-4o-mini", "hi", max_tokens=16) for _ in range(count))
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(all_at_once())


def _per_call(action: Callable[[], object], calls: int, *, cpu: bool) -> float:
    clock = time.process_time if cpu else time.perf_counter
    start = clock()
    for _ in range(calls):
        action()
    return (clock() - start) / calls


def measure(rounds: int = 5, calls: int = 200, streams: int = 1000) -> dict[str, Any]:
    """The figures above, as a dict (milliseconds and ratios)."""
    upstream = Upstream()
    paced = Upstream(pace=0.1)  # 16 chunks 0.1 s apart: every stream stays open ~1.6 s
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = _client(upstream.port, Path(tmp) / "bench.sqlite3")
            bare = _Bare(upstream.port)
            for _ in range(20):  # warm both: connections, imports, the ledger file
                client.complete("fast:gpt-4o-mini", "hi", max_tokens=16)
                bare.request()
            one = {"bare": [], "embedded": []}
            twenty = {"bare": [], "embedded": []}
            for _ in range(rounds):
                one["bare"].append(_per_call(bare.request, calls, cpu=False))
                one["embedded"].append(
                    _per_call(lambda: client.complete("fast:gpt-4o-mini", "hi", max_tokens=16), calls, cpu=False)
                )
                twenty["bare"].append(_per_call(lambda: bare.many(20), calls // 20, cpu=True) / 20)
                twenty["embedded"].append(_per_call(lambda: _embedded_many(client, 20), calls // 20, cpu=True) / 20)
            bare.close()
            client.close()
            many = _client(paced.port, Path(tmp) / "many.sqlite3")
            started = time.perf_counter()
            outcomes = _embedded_many(many, streams)
            held = time.perf_counter() - started
            errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            many.close()
    finally:
        upstream.stop()
        paced.stop()
    median = {name: statistics.median(values) * 1000 for name, values in one.items()}
    cpu = {name: statistics.median(values) * 1000 for name, values in twenty.items()}
    return {
        "c1_ms": median,
        "c1_ratio": median["embedded"] / median["bare"],
        "c20_cpu_ms": cpu,
        "c20_cpu_ratio": cpu["embedded"] / cpu["bare"],
        "streams": streams,
        "stream_errors": len(errors),
        "first_error": repr(errors[0])[:200] if errors else None,
        "streams_seconds": held,
    }


def report(figures: dict[str, Any]) -> str:
    c1, c20 = figures["c1_ms"], figures["c20_cpu_ms"]
    return "\n".join(
        [
            "| embedded client, 16-token stream, ledger on | bare aiohttp | embedded | ratio | target |",
            "| --- | --- | --- | --- | --- |",
            f"| wall per request, concurrency 1 (ms) | {c1['bare']:.3f} | {c1['embedded']:.3f} | "
            f"{figures['c1_ratio']:.2f}x | <= 1.2x |",
            f"| CPU per request, concurrency 20 (ms) | {c20['bare']:.3f} | {c20['embedded']:.3f} | "
            f"{figures['c20_cpu_ratio']:.2f}x | <= 1.5x |",
            f"| {figures['streams']} concurrent streams from one client | | "
            f"{figures['stream_errors']} errors in {figures['streams_seconds']:.1f} s | | zero errors |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args(argv)
    figures = measure(args.rounds, args.calls, args.streams)
    print(report(figures))
    if figures["first_error"]:
        print("first error:", figures["first_error"])


if __name__ == "__main__":
    main()
