"""What a system call that lets go of the interpreter's lock costs when another thread wants it.

CPython releases the GIL around ``getrandom`` (``os.urandom``), as around socket and file I/O. On an
idle process that costs nothing; with another thread running Python, the call's thread must take
the lock back, and a thread that computes keeps it until the switch interval (5 ms by default)
makes it let go. This times one draw of 64 random bits — ``os.urandom(8)`` against the project's
pool (``gtl_nb.ids.random_hex``) — with the process otherwise idle, beside a thread that computes,
and beside one that lets go of the lock often (``time.sleep(0)``), in interleaved rounds.

The figures depend on the machine and on what the other thread does; what the pool changes is that
a draw never lets go of the lock (docs/benchmarks.md, "A system call that let go of the lock").

Run: ``python -m bench.gil_handover [--rounds N] [--draws N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

from gtl_nb.ids import random_hex

DRAWS: dict[str, Callable[[], object]] = {"os.urandom(8)": lambda: os.urandom(8), "ids.random_hex()": random_hex}


def _computes(stop: threading.Event) -> None:
    count = 0
    while not stop.is_set():
        for _ in range(1000):  # pure Python between looks at the flag: the lock is kept until asked for
            count += 1


def _lets_go(stop: threading.Event) -> None:
    while not stop.is_set():
        time.sleep(0)


NEIGHBOURS: dict[str, Callable[[threading.Event], None] | None] = {
    "alone": None,
    "beside a thread that computes": _computes,
    "beside a thread that sleeps(0)": _lets_go,
}


def _per_draw(draw: Callable[[], object], draws: int) -> float:
    start = time.perf_counter()
    for _ in range(draws):
        draw()
    return (time.perf_counter() - start) / draws


def measure(rounds: int = 3, draws: int = 200) -> dict[str, dict[str, float]]:
    """Median microseconds a draw, by neighbour and by draw."""
    samples: dict[str, dict[str, list[float]]] = {n: {d: [] for d in DRAWS} for n in NEIGHBOURS}
    for _ in range(rounds):
        for neighbour, body in NEIGHBOURS.items():
            stop = threading.Event()
            thread = threading.Thread(target=body, args=(stop,), daemon=True) if body is not None else None
            if thread is not None:
                thread.start()
                time.sleep(0.02)  # let it be running when the draws begin
            try:
                for name, draw in DRAWS.items():
                    samples[neighbour][name].append(_per_draw(draw, draws) * 1e6)
            finally:
                stop.set()
                if thread is not None:
                    thread.join()
    return {n: {d: statistics.median(v) for d, v in by_draw.items()} for n, by_draw in samples.items()}


def report(figures: dict[str, dict[str, float]]) -> str:
    lines = ["| µs a draw of 64 bits | " + " | ".join(DRAWS) + " |", "| --- |" + " --- |" * len(DRAWS)]
    for neighbour, by_draw in figures.items():
        lines.append(f"| {neighbour} | " + " | ".join(f"{by_draw[d]:.2f}" for d in DRAWS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gil_handover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args(argv)
    print(report(measure(args.rounds, args.draws)))


if __name__ == "__main__":
    main()
