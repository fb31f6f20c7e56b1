"""What gtl_nb adds on top of talking to a provider directly.

1. **Over the wire**: one streamed answer from the OpenAI simulator on loopback, through
   ``client.stream`` (engine, dialect, state machine, pricing, ledger row), against two baselines: the
   same request with a bare synchronous ``httpx.Client`` whose body is only read, and with a bare
   ``httpx.AsyncClient`` run on the same background loop thread (so the difference to the latter is
   what gtl_nb itself adds). The simulator's own time is in all three.
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
        headers = {"authorization": "Bearer sim-key", "content-type": "application/json"}
        raw = httpx.Client(headers=headers)
        loop = client._loop
        async_raw = loop.run(_make_async_client(headers))

        def through_gtl() -> None:
            for _ in client.stream("gpt-4o-mini", PROMPT):
                pass

        def direct() -> None:
            with raw.stream("POST", simulator.base_url + "/chat/completions", content=body) as response:
                for _ in response.iter_raw():
                    pass

        async def direct_async_body() -> None:
            async with async_raw.stream("POST", simulator.base_url + "/chat/completions", content=body) as r:
                async for _ in r.aiter_raw():
                    pass

        def direct_async() -> None:
            loop.run(direct_async_body())

        ours, baseline = interleaved(through_gtl, direct, rounds=5, number=10)
        ours_again, async_baseline = interleaved(through_gtl, direct_async, rounds=5, number=10)
        raw.close()
        loop.run(async_raw.aclose())
        client.close()
    ours = min(ours, ours_again)
    print(
        f"wire: gtl_nb {ours * 1000:.2f} ms per streamed answer; bare sync httpx {baseline * 1000:.2f} ms "
        f"({ours / baseline:.2f}x); bare async httpx on the same loop thread {async_baseline * 1000:.2f} ms "
        f"({ours / async_baseline:.2f}x: gtl_nb adds {(ours - async_baseline) * 1000:.2f} ms incl. one ledger row)"
    )
    return ours / async_baseline


async def _make_async_client(headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(headers=headers)


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
