"""Sessions each principal runs at once in this gateway process: ``[gateway] max_sessions_per_principal``.

Without it one token could run ``max_connections_per_address`` × ``max_sessions_per_connection``
sessions from each address it can use (every loopback address, say): a single caller's open upstream
streams would be bounded only by what the process can hold. The count is per principal (a token's
``sub``), across every transport and connection of this process — it lives with the engine the
listeners share (``sessions_of``) — and each replica counts its own.

A session is counted from the moment it is accepted until its task is done, through the task's done
callback, which asyncio calls exactly once however the task ends: ``done``, an error, a cancel, the
client gone, the connection closed — also a task cancelled before it ever ran, whose body never runs.
One session over the cap is refused before it starts (``OverloadedError``, retryable), naming the limit
and nobody else. Every listener runs on the gateway's one event loop, so the count is a dict with no
lock: admitting a session is a lookup and a store, ending one a lookup and a store or a delete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from gtl_nb.gateway.per_engine import PerEngine
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import OverloadedError
from gtl_nb.words import counted

__all__ = ["DEFAULT_MAX_SESSIONS_PER_PRINCIPAL", "PrincipalSessions", "sessions_of"]

log = get_logger("gateway")

DEFAULT_MAX_SESSIONS_PER_PRINCIPAL = 1000
"""Sessions one principal may run at once in one gateway process (``0``: no cap)."""

_Task = TypeVar("_Task", bound="asyncio.Future[Any]")


class PrincipalSessions:
    """Running sessions per principal (module docstring); ``limit`` is asked per call (``0``: no cap)."""

    __slots__ = ("_open", "_told")

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._told: set[str] = set()  # principals refused since they last had room (one log line each)

    def running(self, principal: str) -> int:
        """How many sessions ``principal`` runs now."""
        return self._open.get(principal, 0)

    def take(self, principal: str, limit: int) -> None:
        """Count one more session of ``principal``; ``OverloadedError`` (nothing counted) when it already
        runs ``limit``. The caller must ``release`` it exactly once (``start`` does that itself)."""
        count = self._open.get(principal, 0)
        if limit and count >= limit:
            if principal not in self._told:
                self._told.add(principal)
                # (the operator's log names who; the refusal the client reads names only the limit)
                log.info(
                    "principal %r reached max_sessions_per_principal (%d): refusing its new sessions", principal, limit
                )
            raise OverloadedError(
                f"this token's principal already runs {counted(limit, 'session')} on this gateway (its "
                "max_sessions_per_principal); start more when some have ended"
            )
        self._open[principal] = count + 1

    def release(self, principal: str) -> None:
        """One session of ``principal`` has ended."""
        count = self._open.get(principal, 0) - 1
        if count > 0:
            self._open[principal] = count
        else:
            self._open.pop(principal, None)
        if self._told:
            self._told.discard(principal)  # it has room again: a later refusal is news

    def start(self, principal: str, limit: int, run: Callable[[], _Task]) -> _Task:
        """``run()`` — which makes the session's task — counted against ``principal`` until that task is
        done; ``OverloadedError`` with nothing run when ``principal`` already runs ``limit`` sessions."""
        self.take(principal, limit)
        try:
            task = run()
        except BaseException:
            self.release(principal)
            raise
        task.add_done_callback(lambda _: self.release(principal))
        return task

    def __len__(self) -> int:
        """Sessions running, all principals together."""
        return sum(self._open.values())


sessions_of: PerEngine[PrincipalSessions] = PerEngine(PrincipalSessions)
"""The one count of an engine's gateway: every listener serving that engine shares it."""
