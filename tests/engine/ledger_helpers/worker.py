"""A separate process that writes to a ledger file, for the concurrency and crash-recovery tests.

Usage::

    worker.py write <path> <tag> <count>   open, print "ready", wait for a line on stdin, then run
                                            <count> start/finish pairs (reading totals now and
                                            then) and print "done"
    worker.py hold <path> <tag>            open, start one row, print its id, then wait until
                                            stdin closes (or the process is killed)
"""

from __future__ import annotations

import sys

from gtl_nb.engine.ledger import Ledger
from gtl_nb.log import configure_logging


def write(path: str, tag: str, count: int) -> None:
    ledger = Ledger(path)
    print("ready", flush=True)
    sys.stdin.readline()  # the parent releases every worker at once
    for index in range(count):
        row = ledger.start(session_id=f"{tag}-{index}", user=tag, deployment="sim", model="m")
        ledger.finish(row, status="ok", tokens_in=index, tokens_out=1, cost=0.001, latency_ms=1.0)
        if index % 25 == 0:
            ledger.totals(user=tag)  # readers interleaved with the other processes' writes
    ledger.close()
    print("done", flush=True)


def hold(path: str, tag: str) -> None:
    ledger = Ledger(path)
    row = ledger.start(session_id=tag, user=tag)
    print(row, flush=True)
    sys.stdin.read()  # block until the parent closes stdin or kills us
    ledger.close()


if __name__ == "__main__":
    configure_logging("WARNING")  # any warning the ledger logs shows up on stderr for the test to see
    mode, path, tag = sys.argv[1:4]
    if mode == "write":
        write(path, tag, int(sys.argv[4]))
    else:
        hold(path, tag)
