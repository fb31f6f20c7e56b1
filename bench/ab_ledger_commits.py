"""Who commits the ledger's rows, measured in one process: the writer's thread or the event loop that
queued them (``[ledger] commits``), or no ledger at all — each beside a bare aiohttp call, interleaved.

    python -m bench.ab_ledger_commits [--rounds 5] [--calls 2000]

Five clients of the same upstream (``bench.upstream``, its own process), all 16-token streams:

* ``thread`` / ``loop`` / ``off`` — ``gtl_nb.aconnect`` (the engine on the caller's loop), the
  ledger's commits on the writer's thread, on the loop (its default), or the ledger off;
* ``lt-thread`` / ``lt-loop`` — ``gtl_nb.connect`` (the engine on its loop thread; the thread is its
  default), thread or loop.

Per round, in a rotating order: CPU of this process per request at concurrency 20 (every thread),
wall time per awaited request at concurrency 1, and for the ``connect`` clients wall time per
``complete`` from a thread. Prints medians and the median of the per-round ratios to the bare call.
Each client writes its own ledger file; the row counts are printed at the end (every request one
``ok`` row). docs/benchmarks.md, "Commits on the loop".
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gtl_nb
from bench.bench_embedded import (
    _CallerLoop,
    _configuration,
    _cpu_per_call,
    _embedded,
    _one_at_a_time,
    _per_call,
    _sync_call,
)
from bench.servers import Upstream


def _ratio(values: list[float], bare: list[float]) -> float:
    return statistics.median(value / base for value, base in zip(values, bare, strict=True))


def measure(rounds: int, calls: int) -> None:
    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            caller = _CallerLoop(upstream.port)

            def client(name: str, commits: str | None, *, own_loop: bool = True) -> Any:
                """``commits``: who commits (``[ledger] commits``), ``None``: no ledger."""
                settings = _configuration(upstream.port, Path(tmp) / f"{name}.sqlite3", None)
                ledger = settings["config"]["ledger"]
                settings["config"]["ledger"] = {**ledger, "commits": commits} if commits else {"enabled": False}
                if not own_loop:
                    return gtl_nb.connect(**settings)

                async def connected() -> gtl_nb.Client:
                    return await gtl_nb.aconnect(**settings)

                return caller.run(connected())

            clients = {
                "thread": client("thread", "thread"),
                "loop": client("loop", "loop"),
                "off": client("off", None),
                "lt-thread": client("lt-thread", "thread", own_loop=False),
                "lt-loop": client("lt-loop", "loop", own_loop=False),
            }
            awaited = {"bare": caller.bare, **{name: _embedded(each) for name, each in clients.items()}}
            synced: dict[str, Callable[[], object]] = {
                "bare": caller.bare_from_thread,
                **{name: _sync_call(clients[name]) for name in ("lt-thread", "lt-loop")},
            }
            for call in awaited.values():
                caller.run(_one_at_a_time(call, 50))  # warm: connections, the ledger files
            cpu: dict[str, list[float]] = {name: [] for name in awaited}
            wall: dict[str, list[float]] = {name: [] for name in awaited}
            sync: dict[str, list[float]] = {name: [] for name in synced}
            for round_ in range(rounds):
                for samples, paths, measure_one in (
                    (cpu, awaited, lambda call: _cpu_per_call(caller, call, 20, calls // 20)),
                    (wall, awaited, lambda call: caller.run(_one_at_a_time(call, calls // 6))),
                    (sync, synced, lambda call: _per_call(call, calls // 6)),
                ):
                    names = list(paths)
                    for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                        samples[name].append(measure_one(paths[name]))
            print(
                "| client | CPU a request at concurrency 20 (ms) | ÷ bare | awaited at concurrency 1 (ms) | ÷ bare "
                "| `complete` from a thread (ms) | ÷ bare |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for name in awaited:
                row = f"| {name} | {statistics.median(cpu[name]) * 1e3:.3f} | {_ratio(cpu[name], cpu['bare']):.2f}x "
                row += f"| {statistics.median(wall[name]) * 1e3:.3f} | {_ratio(wall[name], wall['bare']):.2f}x |"
                if name in sync:
                    row += f" {statistics.median(sync[name]) * 1e3:.3f} | {_ratio(sync[name], sync['bare']):.2f}x |"
                else:
                    row += " | |"
                print(row)
            for name, each in clients.items():
                if name != "off":
                    frame = each.usage()  # waits for the rows still queued
                    counts = {status: int(count) for status, count in frame["status"].value_counts().items()}
                    writer = each.backend.engine.stores.ledger._writer
                    print(f"{name}: {counts}, committed on the {'loop' if writer.loop_commits else 'thread'}")
            for name, each in clients.items():
                if name.startswith("lt-"):
                    each.close()
                else:
                    caller.run(each.aclose())
            caller.close()
    finally:
        upstream.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_ledger_commits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="requests per client per round at concurrency 20")
    args = parser.parse_args(argv)
    measure(args.rounds, args.calls)


if __name__ == "__main__":
    main()
