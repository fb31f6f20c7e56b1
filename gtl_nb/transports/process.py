"""A ``Channel`` to a child process: frames go to its standard input and come from its standard output.

The child runs in a session of its own, so a Ctrl-C meant for the caller (a terminal's process group)
does not kill it under the client's sessions; the client ends it by closing its standard input, and
``aclose`` waits for it to exit, then terminates and finally kills it. Its standard error is relayed
line by line to this process's ``sys.stderr`` (in a notebook: under the cell), and the last lines are
kept for the message that explains an early exit. A gateway's set-up mistake (status 2, its ``gtl
gateway: error:`` line) is not relayed: the client raises it as a ``ConfigurationError``
(``set_up_error``), so it is said once.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence

from gtl_nb.log import get_logger
from gtl_nb.transports.channel import READ_SIZE, StreamChannel

__all__ = ["ProcessChannel", "spawn"]

log = get_logger("transports.process")
EXIT_WAIT = 2.0
"""Seconds a child gets to exit after its standard input closed, then after SIGTERM, then after SIGKILL."""
_TAIL_LINES = 5
_MAX_LINE = 4000  # a relayed line is cut here (a child may write anything)
SET_UP_STATUS = 2
"""The status a gateway exits with for a set-up mistake (its configuration, its arguments): permanent."""
SET_UP_ERROR = "gtl gateway: error: "
"""How the gateway's line for that mistake starts (``gateway.main``); the rest is its message."""


class ProcessChannel(StreamChannel):
    """The pipes of one child process as a ``Channel`` (see the module docstring)."""

    def __init__(self, process: asyncio.subprocess.Process, *, peer: str) -> None:
        assert process.stdout is not None and process.stdin is not None
        super().__init__(process.stdout, process.stdin, peer=peer)
        self.process = process
        self._tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._relay = asyncio.get_running_loop().create_task(self._relay_stderr(), name=f"gtl-stderr-{process.pid}")

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def exit_note(self) -> str:
        """How the child ended, with its last lines of standard error (for error messages)."""
        code = self.process.returncode
        status = "is still running" if code is None else f"exited with status {code}"
        tail = " | ".join(self._tail)
        return f"the process {status}" + (f"; it said: {tail}" if tail else "")

    def set_up_error(self) -> str | None:
        """The child's own words when it exited with ``SET_UP_STATUS`` — a configuration or argument
        mistake, which starting it again would only repeat — else ``None``."""
        if self.process.returncode != SET_UP_STATUS:
            return None
        said = [line[len(SET_UP_ERROR) :] for line in self._tail if line.startswith(SET_UP_ERROR)]
        return said[-1] if said else (" | ".join(self._tail) or None)

    async def aclose(self) -> None:
        """Close the child's standard input and wait for it to exit (terminating it if it does not)."""
        await super().aclose()
        for stop in (None, self.process.terminate, self.process.kill):
            if stop is not None and self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    stop()
            try:
                await asyncio.wait_for(self.process.wait(), EXIT_WAIT)
                break
            except asyncio.TimeoutError:
                continue
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._relay, EXIT_WAIT)

    async def _relay_stderr(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(READ_SIZE):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._show(line)
            if len(pending) > _MAX_LINE:
                self._show(pending)
                pending = b""
        if pending:
            self._show(pending)

    def _show(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")[:_MAX_LINE]
        if not line:
            return
        self._tail.append(line)
        if line.startswith(SET_UP_ERROR):  # the client raises it (``set_up_error``): said once, not twice
            return
        try:
            print(line, file=sys.stderr, flush=True)
        except (OSError, ValueError):  # no usable stderr (closed, detached): the tail still keeps it
            pass


async def spawn(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, peer: str | None = None
) -> ProcessChannel:
    """Start ``argv`` with its three standard streams piped to this process; raises ``OSError``."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=None if env is None else dict(env),
        start_new_session=True,
        limit=READ_SIZE,
    )
    log.debug("started %s (pid %d)", argv[0], process.pid)
    return ProcessChannel(process, peer=peer or f"pid:{process.pid}")
