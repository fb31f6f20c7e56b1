"""Regular files as a stdio gateway's standard input and output, relayed through pipes.

The event loop's pipe transports take pipes, sockets and terminals only: asyncio refuses a regular
file, and uvloop aborts the whole process on one (SIGABRT, no message) — which is what
``gtl serve --stdio < requests.jsonl > answers.jsonl`` hands it. ``readable(fd)`` and ``writable(fd)``
return ``fd`` itself for anything else, and for a regular file the end of a fresh pipe that a thread
copies to or from the file, so the gateway sees a pipe either way and the file gets every byte.

A written file's relay ends when the gateway closes its end of the pipe (the channel's close); the
process waits for it at exit (``RELAY_EXIT_WAIT``), so the answers written last reach the file.
"""

from __future__ import annotations

import atexit
import os
import stat
import threading

from gtl_nb.log import get_logger

__all__ = ["RELAY_EXIT_WAIT", "is_regular_file", "readable", "writable"]

log = get_logger("transports.file_relay")

RELAY_EXIT_WAIT = 30.0
"""Seconds the process waits at exit for a written file's relay to copy what the gateway wrote last."""

_CHUNK = 64 * 1024


def is_regular_file(fd: int) -> bool:
    """Whether ``fd`` is a regular file (not a pipe, socket or terminal)."""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def readable(fd: int) -> int:
    """``fd``, or for a regular file the read end of a pipe a thread fills from it (closed at its end)."""
    if not is_regular_file(fd):
        return fd
    pipe_read, pipe_write = os.pipe()
    threading.Thread(target=_copy, args=(fd, pipe_write, False), name="gtl-stdin-relay", daemon=True).start()
    return pipe_read


def writable(fd: int) -> int:
    """``fd``, or for a regular file the write end of a pipe a thread copies into it until that end closes."""
    if not is_regular_file(fd):
        return fd
    pipe_read, pipe_write = os.pipe()
    relay = threading.Thread(target=_copy, args=(pipe_read, fd, True), name="gtl-stdout-relay", daemon=True)
    relay.start()
    atexit.register(relay.join, RELAY_EXIT_WAIT)
    return pipe_write


def _copy(source: int, target: int, close_source: bool) -> None:
    """Copy ``source`` to ``target`` until the source ends; then close the pipe's end this relay owns."""
    try:
        while chunk := os.read(source, _CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view) :]
    except OSError as exc:  # a full disk, a file closed under it: the gateway's writes fail at the pipe
        log.warning("the relay of a regular file stopped: %s", exc)
    finally:
        os.close(source if close_source else target)
