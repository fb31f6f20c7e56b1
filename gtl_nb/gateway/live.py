"""The sessions running on a gateway, whoever started them and over whichever transport.

``live_sessions(engine)`` is the one registry of an engine (made on first use, subscribed to its hooks):
``RequestStarted`` is emitted inside the task that runs the session, so the registry keeps that task;
``RequestFinished`` forgets it — the entry its own request made (both events carry the request's
``handle``), never another running session that took the same id. The ``sessions`` and ``cancel``
queries (``gateway.queries``) read it: a caller sees and cancels its own sessions (``session:read``,
``session:write``; a token cancels those it started itself without that scope) and, with
``session:admin``, anyone's — so a token of one user can never reach
another user's session, and a session of another user that took the same id (clients may name their
sessions) never stops a user cancelling their own.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.hooks import EngineEvent, RequestFinished, RequestStarted

__all__ = ["LiveSession", "LiveSessions", "live_sessions"]


@dataclass
class LiveSession:
    """One running session: who, over what, since when, and the task that runs it."""

    session_id: str
    principal: str
    tenant: str | None
    """The principal's tenant (a GhostToken's claim): two tenants' tokens with one ``sub`` are not one owner."""
    transport: str | None
    model: str | None
    started: float
    task: asyncio.Task[Any] | None
    key_id: str | None = None
    """The credential it was started with (a GhostToken's ``jti``): that token may cancel it without
    ``session:write`` (``started_with``)."""

    def owned_by(self, context: RequestContext) -> bool:
        """Whether ``context``'s principal (its ``sub`` within its tenant) started this session."""
        return self.principal == context.principal and self.tenant == context.tenant

    def started_with(self, context: RequestContext) -> bool:
        """Whether ``context``'s credential — the same token (``jti``) of the same principal — started this
        session. That token could end the session anyway (an HTTP client closes its response), so it may
        cancel it without ``session:write``; another token, of this principal or another, may not."""
        return self.key_id is not None and self.key_id == context.key_id and self.owned_by(context)

    def describe(self) -> dict[str, Any]:
        """What a ``sessions`` query shows of it (never the task)."""
        return {
            "session_id": self.session_id,
            "user": self.principal,
            "transport": self.transport,
            "model": self.model,
            "started": self.started,
        }


class LiveSessions:
    """The running sessions of one engine (see the module docstring)."""

    def __init__(self) -> None:
        # by session id, then by the request's hook handle: ids are the clients', two running sessions
        # may share one, and each one's end removes its own entry only
        self._running: dict[str, dict[object, LiveSession]] = {}

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, RequestStarted):
            if event.refused:  # recorded, never run: nothing to list or cancel (its task is its caller's)
                return
            task = asyncio.current_task() if _in_loop() else None
            context = event.context
            live = LiveSession(
                event.session_id,
                context.principal,
                context.tenant,
                context.transport,
                event.model,
                time.time(),
                task,
                context.key_id,
            )
            self.add(live, event.handle)
        elif isinstance(event, RequestFinished):
            entries = self._running.get(event.session_id)
            if entries is not None and entries.pop(event.handle, None) is not None and not entries:
                del self._running[event.session_id]

    def add(self, entry: LiveSession, handle: object) -> None:
        """List ``entry`` until the ``RequestFinished`` carrying ``handle``."""
        self._running.setdefault(entry.session_id, {})[handle] = entry

    def visible_to(self, context: RequestContext, *, everyone: bool) -> list[LiveSession]:
        """The caller's own sessions, or (``everyone``) all of them, oldest first."""
        found = [entry for entries in self._running.values() for entry in entries.values()]
        if not everyone:
            found = [entry for entry in found if entry.owned_by(context)]
        return sorted(found, key=lambda entry: entry.started)

    def find(self, session_id: str) -> list[LiveSession]:
        """Every running session of ``session_id``, whoever started it."""
        return list(self._running.get(session_id, {}).values())


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_REGISTRIES: weakref.WeakKeyDictionary[Engine, LiveSessions] = weakref.WeakKeyDictionary()


def live_sessions(engine: Engine) -> LiveSessions:
    """The registry of ``engine``'s running sessions (subscribed to its hooks on first use)."""
    registry = _REGISTRIES.get(engine)
    if registry is None:
        registry = _REGISTRIES[engine] = LiveSessions()
        engine.hooks.subscribe(registry)
    return registry
