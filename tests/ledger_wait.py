"""Reading a gateway's ledger file from the test process.

The gateway writes its rows from a writer thread with group commits (every few ms under load), so a
client holds its answer a moment before the row is on disk for another process. Tests that read the
file while the gateway runs wait for the rows they expect, finished (``client.usage()``, read through
the gateway, needs no wait). Also the program the SQLite and PostgreSQL exit tests both run
(``EXITS_MID_STREAM``)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

from gtl_nb.engine.ledger import Ledger


def rows_when(
    path: Path | str, count: int = 1, *, settled: bool = True, timeout: float = 10.0, **filters: Any
) -> list[dict[str, Any]]:
    """``Ledger(path).rows(**filters)`` once at least ``count`` rows match and (``settled``) none is
    ``started`` — or what is there when ``timeout`` runs out, for the test's assertion to report."""
    deadline = time.monotonic() + timeout
    while True:
        rows = Ledger(path).rows(**filters)
        ready = len(rows) >= count and (not settled or all(row["status"] != "started" for row in rows))
        if ready or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


#: A program that exits with two sessions open — a stream left mid-answer and a ``complete()`` in a
#: daemon thread — its ledger (a path or a URL) from ``sys.argv[1]``; prints ``mid-stream`` before exiting.
EXITS_MID_STREAM = textwrap.dedent(
    """
    import sys, threading, gtl_nb
    client = gtl_nb.connect(providers={"slow": {"type": "echo", "options": {"pace": 0.05}}},
                            ledger=sys.argv[1], environ={})
    stream = client.stream("slow:echo", "a long answer " * 50, max_tokens=500)
    next(stream), next(stream)
    reader = threading.Thread(target=lambda: client.complete("slow:echo", "another " * 50, max_tokens=500), daemon=True)
    reader.start()
    print("mid-stream", flush=True)
    """
)
