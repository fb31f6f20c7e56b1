"""Several gateway processes writing one SQLite ledger: no lost rows, no "database is locked".

Three ``gtl serve`` processes share one ledger file (and, by default, the budget counter inside it);
each has an audit log of its own, since one log has one writer. All three take requests at once, from
three clients running batches concurrently. Every session must leave exactly one finished row, written
by the process that served it, and no gateway may report the file as locked.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import gtl_nb
from gtl_nb.completion import Completion
from tests.faults.conftest import gateway_file, ledger_rows, start, token, wait_until

GATEWAYS = 3
REQUESTS = 250
"""Requests per gateway (each client runs them 8 at a time)."""


def test_several_gateways_share_one_ledger(tmp_path: Path):
    ledger = tmp_path / "shared-ledger.sqlite"
    gateways = []
    try:
        for index in range(GATEWAYS):
            directory = tmp_path / f"gateway-{index}"
            directory.mkdir()
            tables = {"providers.echo": {}, "ledger": {"path": str(ledger)}}
            gateways.append(start(gateway_file(directory, tables)))
        results: dict[int, list[object]] = {}

        def run_batch(index: int) -> None:
            with gtl_nb.connect(gateways[index].url("ws"), token=token()) as client:
                prompts = [f"gateway {index}, request {i}" for i in range(REQUESTS)]
                results[index] = client.batch(prompts, model="echo", progress=False)

        threads = [threading.Thread(target=run_batch, args=(index,)) for index in range(GATEWAYS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert sorted(results) == list(range(GATEWAYS)), "a client did not finish its batch"
        failures = [result for batch in results.values() for result in batch if not isinstance(result, Completion)]
        assert failures == [], failures[:3]
        served_by = {
            result.session_id: gateways[index].process.pid
            for index, batch in results.items()
            for result in batch
            if isinstance(result, Completion)
        }
        assert len(served_by) == GATEWAYS * REQUESTS

        def finished() -> list[dict[str, object]]:
            rows = ledger_rows(ledger)
            done = len(rows) >= len(served_by) and all(row["status"] != "started" for row in rows)
            return rows if done else []

        rows = wait_until(finished, timeout=20, what="a finished row for every session in the shared ledger")
    finally:
        codes = [gateway.stop() for gateway in gateways]
    assert codes == [0] * GATEWAYS
    assert Counter(row["session_id"] for row in rows) == Counter(served_by.keys()), "one row per session, none lost"
    assert {row["status"] for row in rows} == {"ok"}
    assert all(row["pid"] == served_by[row["session_id"]] for row in rows), "each row names the gateway that served it"
    locked = [line for gateway in gateways for line in gateway.output if "locked" in line.lower()]
    assert locked == [], locked[:5]
