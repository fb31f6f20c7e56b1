"""The gateway on asyncio's loop against the same gateway on uvloop (``[gateway] event_loop``).

    python -m bench.ab_event_loop [--rounds 4] [--duration 3]

Two ``gtl serve`` processes of this tree, one per loop, compared by ``bench.ab`` (interleaved rounds,
whole answers at concurrency 1, 16-token streams at concurrency 1 and 10): the gateway CPU per request
(from /proc) and p50 latency per loop, each round, then the medians and the uvloop/asyncio ratios.
"""

from __future__ import annotations

import argparse

from bench.ab import DEFAULT_CELLS, Variant, compare, summary

LOOPS = ("asyncio", "uvloop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    options = parser.parse_args()
    variants = [Variant(loop, limits={"event_loop": loop}) for loop in LOOPS]
    figures = compare(variants, rounds=options.rounds, duration=options.duration)
    print()
    print(summary(variants, figures, DEFAULT_CELLS))


if __name__ == "__main__":
    main()
