"""Every session the gateway's engine ran leaves exactly one finished row in the gateway's ledger."""

from __future__ import annotations

from collections import Counter

import gtl_nb
from gtl_nb.completion import Completion
from gtl_nb.engine.ledger import Ledger
from gtl_nb.protocol import GTLError, Token

MODEL = "gpt-4o-mini"


def test_every_session_leaves_exactly_one_ledger_row(write_config, tmp_path):
    ledger = tmp_path / "rows.sqlite"
    client = gtl_nb.connect(f"stdio://{write_config(ledger=ledger)}", user="ledger-test")
    sessions: list[str] = []
    try:
        sessions.append(client.complete("echo", "one").session_id)
        sessions.append(client.complete(f"openai:{MODEL}", "two").session_id)
        for model in (f"badkey:{MODEL}", "no-such-model-anywhere"):
            try:
                client.complete(model, "refused")
            except GTLError as exc:
                sessions.append(exc.completion.session_id)
        stream = client.stream(f"slow:{MODEL}", "a long answer, cancelled once it starts")
        for event in stream:
            if isinstance(event, Token):
                break
        stream.close()
        sessions.append(stream.session_id)
        results = client.batch([f"batch item {i}" for i in range(12)], model="echo", progress=False)
        sessions += [result.session_id for result in results if isinstance(result, Completion)]
        live = client.stream(f"slow:{MODEL}", "still running when the client closes")
        next(live)
        sessions.append(live.session_id)
    finally:
        client.close()  # returns once the gateway has exited: its rows are complete
    assert len(sessions) == 18
    rows = Ledger(ledger).rows()
    assert Counter(row["session_id"] for row in rows) == Counter(sessions)
    statuses = Counter(row["status"] for row in rows)
    assert statuses == {"ok": 14, "error": 2, "cancelled": 2}
    assert {row["user"] for row in rows} == {"ledger-test"}
