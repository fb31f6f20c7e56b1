"""The load client: its own process, so the server's CPU can be read from ``/proc`` around each phase.

``python -m bench.loadclient`` reads one JSON command per line on standard input and answers one JSON
line on standard output:

* ``{"cmd": "phase", "path": {PathSpec}, "stream": b, "tokens": n, "concurrency": c, "duration": s,
  "requests": r, "warmup": w}`` — opens (or reuses) ``c`` workers' connections on the path, runs ``w``
  warm-up requests on each, answers ``{"ready": true}`` and waits for a ``go`` line (the orchestrator
  reads the server's CPU in between), then runs a closed loop — each worker sends its next request as
  soon as its last one ended — for ``duration`` seconds or ``requests`` requests in all, and answers
  with the phase's summary (``PhaseResult``).
* ``{"cmd": "close"}`` — closes every connection and exits.

Connections stay open between phases of the same path (keep-alive, as a real client holds them).
The loop is uvloop when installed: the client should cost as little CPU as possible, since it shares
the machine's two cores with the server it measures.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.paths import Caller, Outcome, PathSpec, Workload, make_caller
from bench.stats import percentile
from bench.upstream import install_fast_loop


@dataclass
class PhaseResult:
    """What one phase measured, as the load client saw it (times in milliseconds)."""

    requests: int
    elapsed: float
    rps: float
    p50: float
    p99: float
    ttft_p50: float | None
    ttft_p99: float | None
    errors: dict[str, int] = field(default_factory=dict)


def summarise(outcomes: list[Outcome], elapsed: float) -> PhaseResult:
    good = [o for o in outcomes if o.error is None]
    errors: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.error is not None:
            errors[outcome.error] = errors.get(outcome.error, 0) + 1
    latencies = sorted(o.latency * 1000 for o in good)
    ttfts = sorted(o.ttft * 1000 for o in good if o.ttft is not None)
    return PhaseResult(
        requests=len(outcomes),
        elapsed=elapsed,
        rps=len(good) / elapsed if elapsed > 0 else 0.0,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        ttft_p50=percentile(ttfts, 50) if ttfts else None,
        ttft_p99=percentile(ttfts, 99) if ttfts else None,
        errors=errors,
    )


class LoadClient:
    """The workers' callers per path, kept between phases."""

    def __init__(self) -> None:
        self.callers: dict[str, list[Caller]] = {}

    async def workers(self, spec: PathSpec, count: int) -> list[Caller]:
        callers = self.callers.setdefault(spec.name, [])
        while len(callers) < count:
            caller = make_caller(spec)
            await caller.open()
            callers.append(caller)
        return callers[:count]

    async def phase(self, command: dict, read_line: asyncio.StreamReader) -> PhaseResult:
        spec = PathSpec(**command["path"])
        workload = Workload(bool(command["stream"]), int(command["tokens"]))
        callers = await self.workers(spec, int(command["concurrency"]))
        for _ in range(int(command.get("warmup", 1))):
            await asyncio.gather(*(caller.call(workload) for caller in callers))
        _answer({"ready": True})
        await read_line.readline()  # "go"
        duration = float(command.get("duration") or 0)
        budget = int(command.get("requests") or 0)
        outcomes: list[Outcome] = []
        start = time.perf_counter()
        deadline = start + duration if duration else float("inf")
        issued = 0

        async def worker(caller: Caller) -> None:
            nonlocal issued
            while time.perf_counter() < deadline and (not budget or issued < budget):
                issued += 1
                outcomes.append(await caller.call(workload))

        await asyncio.gather(*(worker(caller) for caller in callers))
        return summarise(outcomes, time.perf_counter() - start)

    async def close(self) -> None:
        for callers in self.callers.values():
            for caller in callers:
                await caller.close()


def _answer(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def run(client: LoadClient | None = None) -> None:
    """Answer the orchestrator's commands on standard input (one JSON line each) until ``close``,
    with ``client`` (a ``LoadClient`` unless another kind is given: ``bench.stores_client``'s)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client = client if client is not None else LoadClient()
    while line := await reader.readline():
        command = json.loads(line)
        if command["cmd"] == "close":
            break
        if command["cmd"] == "phase":
            result = await client.phase(command, reader)
            _answer(asdict(result))
    await client.close()


def main() -> None:
    install_fast_loop()
    asyncio.run(run())


if __name__ == "__main__":
    main()
