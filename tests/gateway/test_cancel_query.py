"""The ``cancel`` query against a registry of running sessions: a user cancels their own sessions of an
id, an administrator everyone's, and a session of another user that took the same id (clients may
name their sessions) is never in a user's way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gtl_nb.engine.context import RequestContext
from gtl_nb.gateway import queries
from gtl_nb.gateway.live import LiveSession, LiveSessions
from gtl_nb.protocol.errors import InvalidRequestError

ID = "sess_shared"


def who(owner: str) -> tuple[str, str | None]:
    """``"acme/alice"``: sub ``alice`` of tenant ``acme``; ``"alice"``: a principal with no tenant."""
    tenant, _, sub = owner.rpartition("/")
    return sub, tenant or None


def cancel(monkeypatch: pytest.MonkeyPatch, principal: str, scopes: set[str], owners: list[str]) -> tuple[object, dict]:
    """Run ``cancel`` of ``ID`` as ``principal`` with sessions of ``owners`` under that id running; its
    answer (or the exception raised) and which owners' sessions were cancelled."""

    async def main() -> tuple[object, dict]:
        registry = LiveSessions()
        monkeypatch.setattr(queries, "live_sessions", lambda engine: registry)
        tasks = {}
        for owner in owners:
            tasks[owner] = asyncio.ensure_future(asyncio.sleep(3600))
            sub, tenant = who(owner)
            registry.add(LiveSession(ID, sub, tenant, "ws", "m", 0.0, tasks[owner]), object())
        await asyncio.sleep(0)
        try:
            sub, tenant = who(principal)
            context = RequestContext(principal=sub, tenant=tenant, scopes=frozenset(scopes))
            answer: object = queries._cancel(None, context, {"session_id": ID})  # type: ignore[arg-type]
        except Exception as exc:
            answer = exc
        await asyncio.sleep(0.01)
        cancelled = {owner: task.cancelled() for owner, task in tasks.items()}
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return answer, cancelled

    return asyncio.run(main())


WRITE, ADMIN = {"session:write"}, {"session:admin"}


def test_a_user_cancels_their_own_session_even_when_another_users_took_its_id(monkeypatch):
    answer, cancelled = cancel(monkeypatch, "bob", WRITE, ["alice", "bob"])
    assert answer == {"cancelled": 1} and cancelled == {"alice": False, "bob": True}


def test_another_users_session_alone_is_no_session_to_a_user(monkeypatch):
    """Without ``session:admin`` another user's session is not there: the answer is the one for an id
    nothing runs under (a FORBIDDEN told a guesser that a session of that id was running)."""
    answer, cancelled = cancel(monkeypatch, "bob", WRITE, ["alice"])
    nothing, _ = cancel(monkeypatch, "bob", WRITE, [])
    assert isinstance(answer, InvalidRequestError) and str(answer) == str(nothing)
    assert "no session" in str(answer) and "of yours" in str(answer)
    assert cancelled == {"alice": False}


@pytest.mark.parametrize("owners", [["alice", "root"], ["alice"], ["root"]])
def test_an_administrator_cancels_every_session_of_the_id(monkeypatch, owners):
    answer, cancelled = cancel(monkeypatch, "root", ADMIN, owners)
    assert answer == {"cancelled": len(owners)} and all(cancelled.values())


def test_no_session_of_that_id_is_a_clear_error(monkeypatch):
    answer, _ = cancel(monkeypatch, "bob", WRITE, [])
    assert isinstance(answer, InvalidRequestError) and "no session" in str(answer)


def test_the_same_sub_of_another_tenant_is_another_user(monkeypatch):
    """Two tenants' tokens with one ``sub`` were one owner: each could cancel the other's sessions."""
    answer, cancelled = cancel(monkeypatch, "beta/alice", WRITE, ["acme/alice"])
    assert isinstance(answer, InvalidRequestError)  # (no session of theirs: another tenant's is not there)
    assert cancelled == {"acme/alice": False}
    answer, cancelled = cancel(monkeypatch, "acme/alice", WRITE, ["acme/alice", "beta/alice"])
    assert answer == {"cancelled": 1} and cancelled == {"acme/alice": True, "beta/alice": False}


def test_sessions_are_listed_to_their_owner_within_its_tenant():
    registry = LiveSessions()
    for owner in ("acme/alice", "beta/alice", "alice"):
        sub, tenant = who(owner)
        registry.add(LiveSession(owner, sub, tenant, "ws", "m", 0.0, None), object())
    for owner in ("acme/alice", "beta/alice", "alice"):
        sub, tenant = who(owner)
        seen = registry.visible_to(RequestContext(principal=sub, tenant=tenant), everyone=False)
        assert [entry.session_id for entry in seen] == [owner]


def finished(context: RequestContext, handle: object, *, refused: bool = False) -> Any:
    from gtl_nb.engine.hooks import RequestFinished

    return RequestFinished(
        "S", context, "error", "OVERLOADED", None, "echo", None, None, None, None, False, refused=refused, handle=handle
    )


def test_the_end_of_a_refused_request_that_took_a_running_ones_id_removes_nothing():
    """A refused request is never listed; its end removed the first entry of its id and owner — a
    running session of the same principal that took the same id vanished from ``sessions`` and
    ``cancel`` while it ran on."""
    from gtl_nb.engine.hooks import RequestStarted

    registry = LiveSessions()
    context, running, refused = RequestContext(principal="ann"), object(), object()
    registry(RequestStarted("S", context, "echo", handle=running))
    registry(RequestStarted("S", context, "echo", refused=True, handle=refused))
    registry(finished(context, refused, refused=True))
    assert [entry.principal for entry in registry.find("S")] == ["ann"]
    registry(finished(context, running))
    assert registry.find("S") == []


def test_the_end_of_one_of_two_running_sessions_of_an_id_removes_its_own_entry():
    """One principal runs two sessions of one id (two connections): the second's end removed the
    first's entry (the first of its id and owner), so ``sessions`` listed the ended one and ``cancel``
    reached a task that had finished while the other ran on."""
    from gtl_nb.engine.hooks import RequestStarted

    registry = LiveSessions()
    ann, first, second = RequestContext(principal="ann"), object(), object()
    registry(RequestStarted("S", ann, "model-a", handle=first))
    registry(RequestStarted("S", ann, "model-b", handle=second))
    registry(finished(ann, second))
    assert [entry.model for entry in registry.find("S")] == ["model-a"]
    registry(finished(ann, first))
    assert registry.find("S") == [] and registry._running == {}
