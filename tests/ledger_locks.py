"""Another process holding a SQLite ledger file's write lock, for the tests of what a locked file does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# the other process: takes the lock (BEGIN <mode>), says "held", and keeps it until it reads a line
_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN " + sys.argv[2])
    print("held", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    """
)


class Holder:
    """A process holding ``path``'s write lock (``mode``: ``EXCLUSIVE`` or ``IMMEDIATE``) from construction;
    ``release()`` lets it go and waits for the process to end."""

    def __init__(self, path: Path, mode: str = "EXCLUSIVE") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            assert self.process.wait(30) == 0
