"""What gtl_nb adds on top of talking to a provider directly.

1. **Over the wire**: one streamed answer from the OpenAI simulator on loopback, through
   ``client.stream`` (engine, dialect, state machine, pricing, ledger row), against the baseline of the
   same request sent with a bare ``httpx`` client whose body is only read. The simulator's own time is
   in both, so the ratio is the honest end-to-end overhead a user sees.
2. **Per event**: the offline ``echo`` answer through ``client.stream`` against iterating the
   generator directly — the cost of the engine, the loop-thread hand-off and the session machinery
   per event.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import httpx

import gtl_nb
from bench.timing import interleaved
from gtl_nb.protocol import CompletionRequest, Message
from gtl_nb.providers.echo import EchoProvider

PROMPT = "Summarise the history of the harbour of Bergen in a few sentences, please."


def wire() -> float:
    with gtl_nb.sim.serve("openai", seed=1) as simulator, tempfile.TemporaryDirectory() as tmp:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": simulator.base_url}},
            ledger=Path(tmp) / "bench.sqlite3",
            environ={},
        )
        body = json.dumps(
            {
                "model": "gpt-4o-mini",
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": PROMPT}],
            }
        ).encode()
        raw = httpx.Client(headers={"authorization": "Bearer sim-key", "content-type": "application/json"})

        def through_gtl() -> None:
            for _ in client.stream("gpt-4o-mini", PROMPT):
                pass

        def direct() -> None:
            with raw.stream("POST", simulator.base_url + "/chat/completions", content=body) as response:
                for _ in response.iter_raw():
                    pass

        ours, baseline = interleaved(through_gtl, direct, rounds=5, number=10)
        raw.close()
        client.close()
    overhead_ms = (ours - baseline) * 1000
    print(
        f"wire: gtl_nb {ours * 1000:.2f} ms vs bare httpx {baseline * 1000:.2f} ms per streamed answer "
        f"({ours / baseline:.2f}x, +{overhead_ms:.2f} ms incl. one ledger row)"
    )
    return ours / baseline


def per_event() -> float:
    client = gtl_nb.connect(ledger=False, environ={})
    request = CompletionRequest(session_id="b", model="echo", messages=[Message(role="user", content=PROMPT * 4)])
    provider = EchoProvider()
    events = sum(1 for _ in provider.generate(request))

    def through_gtl() -> None:
        for _ in client.stream("echo", PROMPT * 4):
            pass

    def direct() -> None:
        for _ in provider.generate(request):
            pass

    ours, baseline = interleaved(through_gtl, direct, rounds=5, number=20)
    per_event_us = (ours - baseline) / events * 1e6
    print(
        f"per event: {events} events; engine + client add {per_event_us:.1f} us per event "
        f"({ours / baseline:.1f}x the bare generator, which does no I/O at all)"
    )
    client.close()
    return per_event_us


def run() -> dict[str, float]:
    return {"wire_ratio": wire(), "per_event_us": per_event()}


if __name__ == "__main__":
    run()
