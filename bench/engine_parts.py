"""What the embedded engine's CPU at concurrency 20 is made of: its parts alone, then its levels.

Issue 13's last missed target is the embedded client's CPU a request at concurrency 20 (at most 1.5x a
bare aiohttp call that reads nothing). ``bench_embedded`` measures the whole call and the engine alone;
this bench takes the engine apart, in the same interleaved rounds on one loop, against the same bare
call (CPU a request, 20 calls at once; medians over rounds):

* ``bare`` — aiohttp's request, its streamed body read to the end (the target's baseline);
* ``transport`` — the engine's own HTTP client (``HttptoolsTransport``) alone: the same request sent
  and its body read, nothing decoded;
* ``parts`` — everything the engine needs for one answer, in ONE coroutine: the request routed,
  built by the OpenAI dialect and sent through the engine's transport, the body decoded by the
  dialect's decoder into GTL events, the session's statuses through the state machine, the usage
  priced, and the ledger row started and finished through the engine's SQLite ledger — every part
  the engine's own, with no level between them (no retry, failover, breaker or cancel-safety);
* ``parts_no_ledger`` — the same without the ledger row;
* ``engine`` — ``aconnect``'s engine alone (``EmbeddedBackend.session`` on a request built once, its
  events dropped: ``bench_embedded``'s ``engine_only``);
* ``engine_no_ledger`` — the same engine with ``[ledger] enabled = false``;
* ``engine_general`` — the same engine with ``run_session``'s lane refused (``Engine.lane_targets``
  answering ``None``): the session down the general path — ``stream_batches``, ``_attempts`` and
  ``_one_attempt`` — as every session ran before the lane. What the lane saves, in the same rounds;
* ``whole`` — the awaited ``acomplete`` of ``aconnect``'s client (what a notebook runs);
* ``whole_no_ledger`` — the same with ``[ledger] enabled = false``: what the ledger costs the whole call
  in situ (its row built and queued, its share of the loop's group commits, the collector's work on the
  rows it holds meanwhile), which ``parts`` against ``parts_no_ledger`` shows for the parts alone.

Beside each path the report gives the cycle collector's runs per 1,000 calls (generations 0/1/2, all
rounds). A session leaves no cyclic garbage (``gc.DEBUG_SAVEALL`` after 1,000 calls finds none); the
runs follow how many objects twenty calls hold at once — the collector runs whenever the tracked objects
alive grow by 700 — and each full run (generation 2) walks every object of the process, tens of
milliseconds here and more in a notebook's kernel.

Each engine path runs in a client of its own, so ``engine_general``'s patch (an attribute of that one
engine) touches no other. ``parts`` must hand back the engine's own answer (checked before measuring), so it
is not cheaply wrong.

Run: ``python -m bench.engine_parts [--rounds N] [--groups N]`` (``--smoke``: tiny counts, no figures
meant).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

import gtl_nb
from bench.bench_embedded import BODY, HEADERS, MODEL
from bench.servers import Upstream
from gtl_nb.client import Client, new_session_id
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.httptools_transport import HttptoolsTransport
from gtl_nb.protocol.messages import Status, StreamEvent, Token, Usage
from gtl_nb.protocol.session import SessionStateMachine
from gtl_nb.providers.base import HttpRequest
from gtl_nb.providers.registry import get_provider

Call = Callable[[], Awaitable[Any]]
CONCURRENCY = 20
PATHS = (
    "bare",
    "transport",
    "parts",
    "parts_no_ledger",
    "engine",
    "engine_no_ledger",
    "engine_general",
    "whole",
    "whole_no_ledger",
)


async def _client(port: int, ledger: Path | None) -> Client:
    """``aconnect``'s client of the bench's upstream, its ledger in ``ledger`` (``None``: off)."""
    providers = {"fast": {"type": "openai", "api_key": "bench", "base_url": f"http://127.0.0.1:{port}/v1"}}
    table: dict[str, object] = {"path": str(ledger)} if ledger else {"enabled": False}
    return await gtl_nb.aconnect(providers=providers, config={"ledger": table}, environ={})


def _engine_session(client: Client) -> Call:
    """One session of ``client``'s engine in the caller's task, its events dropped."""
    request = client.request(MODEL, "hi", max_tokens=16)

    def drop(_: StreamEvent) -> None:
        pass

    return lambda: client.backend.session(
        msgspec.structs.replace(request, session_id=new_session_id()), drop, callers_task=True
    )


def _general_only(engine: Engine) -> None:
    """Send every session of ``engine`` down the general path (``engine_general`` in the module docstring)."""
    engine.lane_targets = lambda request, context: None  # type: ignore[method-assign]


class _Parts:
    """The engine's parts in one coroutine (``parts`` in the module docstring)."""

    def __init__(self, client: Client, *, ledger: bool) -> None:
        self.engine: Engine = client.backend.engine  # type: ignore[attr-defined]
        self.request = client.request(MODEL, "hi", max_tokens=16)
        self.target = self.engine.targets(self.request)[0]
        self.provider = get_provider(self.target.deployment.type)
        self.transport = self.engine.http.transport
        self.ledger = self.engine.stores.ledger if ledger else None
        self.context = RequestContext(principal="", trace_id="00")

    async def answer(self) -> str:
        """One answer's text, every event handled as the engine would hand it on."""
        engine, target = self.engine, self.target
        request = msgspec.structs.replace(self.request, session_id=new_session_id())
        sid = request.session_id
        row = None
        if self.ledger is not None:
            row = self.ledger.start_nowait(session_id=sid, context=self.context, model=target.model)
        machine = SessionStateMachine(sid)
        for state in ("queued", "streaming"):
            machine.advance(Status(session_id=sid, state=state))
        sent = msgspec.structs.replace(request, model=target.model, provider=target.name, providers=None)
        deployment = engine.credentials.resolve(target.deployment)
        description = self.provider.build_request(sent, deployment, now=time.time())
        response = await self.transport.send(description, connect_timeout=10.0)
        decoder = self.provider.response_decoder(sent, deployment)
        text: list[str] = []
        usage: Usage | None = None
        try:
            async for chunk in response.chunks():
                for event in decoder.feed(chunk):
                    kind = type(event)
                    if kind is Token:
                        text.append(event.text)
                    elif kind is Usage:
                        usage = engine._priced(event, target)  # type: ignore[assignment]
            decoder.close()
        finally:
            await response.aclose()
        if row is not None and self.ledger is not None:
            tokens_in, tokens_out = (usage.tokens_in, usage.tokens_out) if usage else (None, None)
            self.ledger.finish_nowait(
                row, status="ok", tokens_in=tokens_in, tokens_out=tokens_out, deployment=target.name
            )
        return "".join(text)


async def _cpu_per_call(call: Call, groups: int) -> float:
    """This process's CPU per call (µs), ``groups`` times ``CONCURRENCY`` calls at once."""
    start = time.process_time()
    for _ in range(groups):
        await asyncio.gather(*(call() for _ in range(CONCURRENCY)))
    return (time.process_time() - start) / (groups * CONCURRENCY) * 1e6


class _Collections:
    """The cycle collector's runs by generation while ``counting`` is set (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.counting: str | None = None
        self.runs: dict[str, list[int]] = {}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and self.counting is not None:
            self.runs.setdefault(self.counting, [0, 0, 0])[info["generation"]] += 1


async def _measure(
    port: int, folder: Path, rounds: int, groups: int
) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    transport = HttptoolsTransport()
    described = HttpRequest("POST", url, dict(HEADERS), BODY)
    clients = {
        "parts": await _client(port, folder / "parts.sqlite3"),
        "engine": await _client(port, folder / "engine.sqlite3"),
        "engine_no_ledger": await _client(port, None),
        "engine_general": await _client(port, folder / "general.sqlite3"),
        "whole": await _client(port, folder / "whole.sqlite3"),
        "whole_no_ledger": await _client(port, None),
    }
    _general_only(clients["engine_general"].backend.engine)  # type: ignore[attr-defined]
    parts = _Parts(clients["parts"], ledger=True)
    parts_no_ledger = _Parts(clients["parts"], ledger=False)
    whole = clients["whole"]

    async def bare() -> None:
        async with session.post(url, data=BODY, headers=HEADERS) as response:
            async for _ in response.content.iter_any():
                pass

    async def transport_alone() -> None:
        response = await transport.send(described, connect_timeout=10.0)
        try:
            async for _ in response.chunks():
                pass
        finally:
            await response.aclose()

    calls: dict[str, Call] = {
        "bare": bare,
        "transport": transport_alone,
        "parts": parts.answer,
        "parts_no_ledger": parts_no_ledger.answer,
        "engine": _engine_session(clients["engine"]),
        "engine_no_ledger": _engine_session(clients["engine_no_ledger"]),
        "engine_general": _engine_session(clients["engine_general"]),
        "whole": lambda: whole.acomplete(MODEL, "hi", max_tokens=16),
        "whole_no_ledger": lambda: clients["whole_no_ledger"].acomplete(MODEL, "hi", max_tokens=16),
    }
    try:
        said = (await whole.acomplete(MODEL, "hi", max_tokens=16)).text
        if await parts.answer() != said:  # the parts must do the engine's job, not a cheaper wrong one
            raise RuntimeError("the parts' answer is not the engine's")
        for call in calls.values():  # warm: connections, the ledger files
            await _cpu_per_call(call, 3)
        samples: dict[str, list[float]] = {path: [] for path in PATHS}
        collections = _Collections()
        gc.callbacks.append(collections)
        try:
            for round_ in range(rounds):
                order = PATHS[round_ % len(PATHS) :] + PATHS[: round_ % len(PATHS)]  # rotated
                for path in order:
                    collections.counting = path
                    samples[path].append(await _cpu_per_call(calls[path], groups))
                    collections.counting = None
        finally:
            gc.callbacks.remove(collections)
        return samples, collections.runs
    finally:
        for client in clients.values():
            await client.aclose()
        await transport.aclose()
        await session.close()


def measure(rounds: int = 6, groups: int = 100) -> dict[str, Any]:
    """Medians (µs of CPU a call) and ratios to ``bare``, per path."""
    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            samples, runs = asyncio.run(_measure(upstream.port, Path(tmp), rounds, groups))
    finally:
        upstream.stop()
    medians = {path: statistics.median(values) for path, values in samples.items()}
    calls = rounds * groups * CONCURRENCY
    collections = {path: [count * 1000 / calls for count in runs.get(path, [0, 0, 0])] for path in PATHS}
    ratios = {path: medians[path] / medians["bare"] for path in PATHS}
    return {"us": medians, "ratio": ratios, "samples": samples, "collections": collections}


def report(figures: dict[str, Any]) -> str:
    lines = [
        f"| path (CPU a call, {CONCURRENCY} at once) | µs | ÷ bare | rounds (µs) "
        "| collector runs a 1,000 calls (gen 0/1/2) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path in PATHS:
        spread = ", ".join(f"{value:.0f}" for value in figures["samples"][path])
        runs = " / ".join(f"{count:.1f}" for count in figures["collections"][path])
        lines.append(f"| {path} | {figures['us'][path]:.1f} | {figures['ratio'][path]:.2f}x | {spread} | {runs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_parts", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--groups", type=int, default=100, help=f"groups of {CONCURRENCY} calls per path a round")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: the bench runs (no figures meant)")
    args = parser.parse_args(argv)
    rounds, groups = (1, 2) if args.smoke else (args.rounds, args.groups)
    print(report(measure(rounds, groups)))


if __name__ == "__main__":
    main()
