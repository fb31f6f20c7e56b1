"""Where the embedded engine's own time goes, function by function (cProfile, calls counted exactly).

Runs ``--requests`` sessions back to back on the engine's loop thread (``bench_embedded``'s "engine
alone": the bench's fast upstream, a 16-token stream, the ledger on) under ``cProfile``, after a
warm-up, and prints per request: each function's own time and its number of calls. The call counts
repeat exactly from run to run — a function called 40 times per request is a lead no matter how noisy
the machine — while the times carry cProfile's own overhead (it inflates small, often-called functions
most): read them as a ranking, and confirm a saving with ``bench_embedded --callgrind``.

Only the loop thread is profiled; the ledger's writer thread is not (its share shows in callgrind).

Run: ``python -m bench.profile_engine [--requests N] [--top N] [--sort own|calls|cumulative]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

import gtl_nb
from bench.bench_embedded import _client, _engine_alone
from bench.servers import Upstream

SORTS = ("own", "calls", "cumulative")


async def _profiled(client: gtl_nb.Client, requests: int) -> cProfile.Profile:
    """``requests`` engine-alone sessions under a profiler enabled on this (the loop's) thread."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        await _engine_alone(client, requests)
    finally:
        profile.disable()
    return profile


def profile_engine(requests: int) -> pstats.Stats:
    """The profile of ``requests`` warmed-up engine-alone sessions."""
    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = _client(upstream.port, Path(tmp) / "bench.sqlite3")
            try:
                client.backend.loop.run(_engine_alone(client, 50))  # connections, imports, the ledger file
                profile = client.backend.loop.run(_profiled(client, requests))
            finally:
                client.close()
    finally:
        upstream.stop()
    return pstats.Stats(profile)


def report(stats: pstats.Stats, requests: int, top: int, sort: str) -> str:
    """The ``top`` functions by ``sort``, per request: own µs, cumulative µs, calls."""
    rows = []
    for (path, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(path).name}:{line}({name})" if line else name
        rows.append((where, own / requests * 1e6, cumulative / requests * 1e6, calls / requests))
    key = {"own": 1, "cumulative": 2, "calls": 3}[sort]
    rows.sort(key=lambda row: row[key], reverse=True)
    total = sum(row[1] for row in rows)
    lines = [
        f"{requests} sessions; {total:.0f} µs of profiled own time per request (cProfile's overhead included)",
        f"{'own µs':>8} {'cum µs':>8} {'calls':>7}  function",
    ]
    lines += [f"{own:8.1f} {cumulative:8.1f} {calls:7.1f}  {where}" for where, own, cumulative, calls in rows[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", choices=SORTS, default="own")
    args = parser.parse_args(argv)
    print(report(profile_engine(args.requests), args.requests, args.top, args.sort))


if __name__ == "__main__":
    main()
