"""Requests per minute are exact across processes: four processes reserving at once against one
SQLite file, many reserves each at the same instant, admit exactly the limit in total."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
WORKER = REPO / "tests" / "engine" / "ledger_helpers" / "budget_worker.py"
NOW = 1_709_294_400.0  # a fixed instant: every reserve falls in one window


def test_four_processes_admit_exactly_the_requests_per_minute(tmp_path: Path):
    path = tmp_path / "budgets.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(path), "15", "25", str(NOW)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # release them together: 60 reserves race for 25 slots
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        admitted = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            assert "locked" not in err
            admitted.append(int(out.strip()))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert sum(admitted) == 25, admitted
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM budget_reservations").fetchone() == (25,)
    finally:
        conn.close()
