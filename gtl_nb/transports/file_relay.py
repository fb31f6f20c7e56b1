"""Regular files as a stdio gateway's standard input and output, relayed through pipes.

The event loop's pipe transports take pipes, sockets and terminals only: asyncio refuses a regular
file, and uvloop aborts the whole process on one (SIGABRT, no message) — which is what
``gtl serve --stdio < requests.jsonl > answers.jsonl`` hands it, and ``> /dev/full`` or ``< /dev/null`` too
(devices that are no terminal). ``readable(fd)`` and ``writable(fd)`` return ``fd`` itself for a pipe, a
socket or a terminal; otherwise each returns the end of a fresh pipe that a thread copies to or from
``fd``, so the gateway sees a pipe either way and the file gets every byte.

A written file's relay ends when the gateway closes its end of the pipe (the channel's close); the
process waits for it at exit (``RELAY_EXIT_WAIT``), so the answers written last reach the file. A write
that fails (a full disk, a file size limit) stops the relay: it closes the pipe, so the gateway's next
write finds its reader gone, and keeps the error for ``failure``.
"""

from __future__ import annotations

import atexit
import os
import stat
import threading

from gtl_nb.log import get_logger

__all__ = ["RELAY_EXIT_WAIT", "failure", "is_regular_file", "readable", "relayed_input", "writable"]

log = get_logger("transports.file_relay")

RELAY_EXIT_WAIT = 30.0
"""Seconds the process waits at exit for a written file's relay to copy what the gateway wrote last."""

_CHUNK = 64 * 1024


class _Relay:
    """A written file's relay: its thread, and the error that stopped it."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.error: OSError | None = None


_WRITTEN: dict[int, _Relay] = {}
"""The relays ``writable`` started, by the pipe end it returned."""


def is_regular_file(fd: int) -> bool:
    """Whether ``fd`` is a regular file (not a pipe, socket or terminal)."""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def relayed_input(fd: int) -> bool:
    """Whether ``readable`` relays ``fd``: neither a pipe, a socket nor a terminal (a regular file, a device
    such as ``/dev/null``)."""
    return not _a_stream(fd)


def readable(fd: int) -> int:
    """``fd`` for a pipe, a socket or a terminal; for anything else (a regular file, a device such as
    ``/dev/null``) the read end of a pipe a thread fills from ``fd`` (closed at its end)."""
    if _a_stream(fd):
        return fd
    pipe_read, pipe_write = os.pipe()
    threading.Thread(target=_copy, args=(fd, pipe_write, False), name="gtl-stdin-relay", daemon=True).start()
    return pipe_read


def writable(fd: int) -> int:
    """``fd`` for a pipe, a socket or a terminal; for anything else (a regular file, a device such as
    ``/dev/full``) the write end of a pipe a thread copies into ``fd`` until that end closes."""
    if _a_stream(fd):
        return fd
    pipe_read, pipe_write = os.pipe()
    relay = _Relay()
    relay.thread = threading.Thread(
        target=_copy, args=(pipe_read, fd, True, relay), name="gtl-stdout-relay", daemon=True
    )
    _WRITTEN[pipe_write] = relay
    relay.thread.start()
    atexit.register(relay.thread.join, RELAY_EXIT_WAIT)
    return pipe_write


def failure(fd: int, wait: float = RELAY_EXIT_WAIT) -> OSError | None:
    """The error that stopped the relay behind ``fd`` (a pipe end ``writable`` returned, closed by now),
    once it has copied what it could (waiting at most ``wait`` seconds); ``None`` when every byte went, or
    when ``fd`` was not relayed."""
    relay = _WRITTEN.get(fd)
    if relay is None or relay.thread is None:
        return None
    relay.thread.join(wait)
    return relay.error


def _a_stream(fd: int) -> bool:
    """Whether the event loop's pipe transports take ``fd`` as it is: a pipe, a socket or a terminal."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True  # (not open: the transport says so)
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


def _copy(source: int, target: int, close_source: bool, relay: _Relay | None = None) -> None:
    """Copy ``source`` to ``target`` until the source ends; then close the pipe's end this relay owns."""
    try:
        while chunk := os.read(source, _CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view) :]
    except OSError as exc:  # a full disk, a file size limit, a file closed under it
        if relay is not None:  # the answers' relay: the pipe closes, the gateway finds its reader gone
            relay.error = exc
        elif not isinstance(exc, BrokenPipeError):  # (that one: the gateway stopped reading, its peer gone)
            log.warning("the relay of a regular file stopped: %s", exc)
    finally:
        os.close(source if close_source else target)
