"""Faults the simulator core injects around a provider's answer.

``faults=`` (of ``serve()`` or ``Simulator.set_faults``) is a single :class:`Fault`, applied to every request,
or a list consumed one per request (a script); once the script runs out, requests are answered normally.

Stream faults count the provider's chunks (SSE events, NDJSON lines, event-stream frames): ``after=n`` acts
once ``n`` chunks have been written. ``n`` is clamped so the fault always lands before the provider's last
chunk (its terminator) — a fault never turns into a no-op because the answer happened to be short. On a
non-streamed response, ``drop_after`` sends the headers and half of the body, then closes the connection;
``slow_first_token`` delays the response; the other stream faults do not apply.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Fault", "FaultScript", "kind_for_status"]

#: the error kinds a provider's ``error_response`` / ``stream_error_chunk`` knows by name
ERROR_KINDS = ("rate_limit", "server_error", "overloaded", "quota", "billing")


def kind_for_status(status: int) -> str:
    """The default error kind for an HTTP status (providers fall back on the status for others)."""
    if status == 429:
        return "rate_limit"
    if status in (503, 529):
        return "overloaded"
    if status >= 500:
        return "server_error"
    return "client_error"


@dataclass(frozen=True)
class Fault:
    """One injected behaviour; build it with the class methods."""

    action: str = "ok"  # ok | http | drop | slow_first_token | malformed | stall | stream_error
    status: int | None = None  # for "http"; None means the provider's own overload status
    kind: str | None = None  # error kind for "http" / "stream_error"
    retry_after: float | None = None
    after: int = 0
    seconds: float = 0.0

    @classmethod
    def ok(cls) -> Fault:
        """Answer normally."""
        return cls("ok")

    @classmethod
    def http(cls, status: int, retry_after: float | None = None, kind: str | None = None) -> Fault:
        """Answer with the provider's real error body for ``status`` (``kind`` refines it, e.g. "quota")."""
        return cls("http", status=status, kind=kind or kind_for_status(status), retry_after=retry_after)

    @classmethod
    def overloaded(cls, retry_after: float | None = None) -> Fault:
        """The provider's overload error (Anthropic 529, the others 503)."""
        return cls("http", status=None, kind="overloaded", retry_after=retry_after)

    @classmethod
    def drop_after(cls, n_chunks: int) -> Fault:
        """Close the connection after ``n_chunks`` chunks, without the stream's terminator."""
        return cls("drop", after=n_chunks)

    @classmethod
    def slow_first_token(cls, seconds: float) -> Fault:
        """Send the headers, then wait ``seconds`` before the first chunk."""
        return cls("slow_first_token", seconds=seconds)

    @classmethod
    def malformed_chunk(cls, after: int = 0) -> Fault:
        """Insert one syntactically broken chunk after ``after`` chunks (the stream then continues)."""
        return cls("malformed", after=after)

    @classmethod
    def stall(cls, after: int = 0, seconds: float = 30.0) -> Fault:
        """Stop sending for ``seconds`` after ``after`` chunks, then continue (interrupted by ``close()``)."""
        return cls("stall", after=after, seconds=seconds)

    @classmethod
    def stream_error(cls, kind: str = "server_error", after: int = 0) -> Fault:
        """After ``after`` chunks, send the provider's in-stream error and end the body (status stays 200)."""
        return cls("stream_error", kind=kind, after=after)


FaultsArg = Fault | Sequence[Fault] | None


class FaultScript:
    """Thread-safe source of the fault for each incoming request."""

    def __init__(self, faults: FaultsArg = None) -> None:
        self._lock = threading.Lock()
        self._always: Fault | None = None
        self._queue: list[Fault] = []
        self.set(faults)

    def set(self, faults: FaultsArg) -> None:
        """Replace the script: a single Fault (always), a list (one per request), or None."""
        with self._lock:
            if faults is None:
                self._always, self._queue = None, []
            elif isinstance(faults, Fault):
                self._always, self._queue = faults, []
            else:
                items = list(faults)
                bad = [f for f in items if not isinstance(f, Fault)]
                if bad:
                    raise TypeError(f"faults must be Fault objects, got {bad[0]!r}")
                self._always, self._queue = None, items

    def next(self) -> Fault:
        """The fault for the next request (``Fault.ok()`` once the script is exhausted)."""
        with self._lock:
            if self._always is not None:
                return self._always
            if self._queue:
                return self._queue.pop(0)
            return Fault.ok()

    @property
    def remaining(self) -> int:
        """How many scripted faults are left (0 for a single always-applied fault)."""
        with self._lock:
            return len(self._queue)
