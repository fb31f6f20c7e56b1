"""A separate process that reserves budget against a shared SQLite file, for the multi-process test.

Usage::

    budget_worker.py <path> <requests> <requests_per_minute> <now>
        open the counter, print "ready", wait for a line on stdin, then try <requests> reserves at
        once (asyncio.gather) at the fixed unix time <now>, and print how many were admitted
"""

from __future__ import annotations

import asyncio
import sys

from gtl_nb.engine.ratelimit import Limits
from gtl_nb.engine.stores import SqliteBudgetCounter
from gtl_nb.protocol import RateLimitError


async def main(path: str, requests: int, limit: int, now: float) -> int:
    counter = SqliteBudgetCounter(path)
    limits = Limits(requests_per_minute=limit)
    await counter.usage("ann", now=now)  # open the file (and its table) before the start line
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent releases every worker at once
    outcomes = await asyncio.gather(
        *(counter.reserve("ann", limits, now=now) for _ in range(requests)), return_exceptions=True
    )
    await counter.aclose()
    for outcome in outcomes:
        if isinstance(outcome, Exception) and not isinstance(outcome, RateLimitError):
            raise outcome
    return sum(not isinstance(outcome, Exception) for outcome in outcomes)


if __name__ == "__main__":
    path, requests, limit, now = sys.argv[1:5]
    print(asyncio.run(main(path, int(requests), int(limit), float(now))), flush=True)
