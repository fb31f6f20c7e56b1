"""The HTTP listener's session runner (``gateway.http._Sessions``) on a real engine and ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.routing import GATEWAY
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.http import _Sessions
from gtl_nb.gateway.principal_sessions import sessions_of
from gtl_nb.gateway.scopes import SCOPE_NAMES
from gtl_nb.protocol import CompletionRequest, Error, Message, StreamEvent


def test_a_session_cancelled_before_its_task_ran_still_ends_and_leaves_the_runner_idle(tmp_path: Path):
    """A shutdown's ``cancel_all`` (or a client gone) may reach a session whose task has not taken its first
    step. Cancelled there, the task never runs its body: no terminal event, no ledger row, and the runner
    counts it as running for ever — a shutdown then waits out its whole grace. The cancel must come after
    the first step, as the connections' own do (``sessions.cancel_started``)."""
    ledger = tmp_path / "rows.sqlite"

    async def main() -> None:
        options = {"providers": {"echo": {"options": {"pace": 0.05}}}}  # its first token is a wait away
        engine = build_engine(load_settings(config=options, environ={}), ledger=ledger, audience=GATEWAY)
        sessions = _Sessions(engine, max_per_principal=1)
        events: list[StreamEvent] = []
        request = CompletionRequest(session_id="early", model="echo", messages=[Message(role="user", content="hi")])
        running = sessions.start(request, RequestContext(principal="ann", scopes=SCOPE_NAMES), events.append)
        running.cancel("the gateway shutting down")  # in the same step that started it
        await running.wait()
        assert events and isinstance(events[-1], Error), events
        assert (events[-1].code, events[-1].message) == ("CANCELLED", "cancelled by the gateway shutting down")
        assert await sessions.wait_idle(10)  # at once: nothing runs
        assert sessions_of(engine).running("ann") == 0
        await engine.aclose()

    asyncio.run(main())
    assert [(row["session_id"], row["status"]) for row in Ledger(ledger).rows()] == [("early", "cancelled")]
