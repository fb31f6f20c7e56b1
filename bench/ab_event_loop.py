"""The gateway on asyncio's loop against the same gateway on uvloop (``[gateway] event_loop``).

    python -m bench.ab_event_loop [--rounds 4] [--duration 3]

Two ``gtl serve`` processes with the suite's configuration (tokens, ledger and audit on), one per loop,
behind the bench's fast upstream; the load client drives the OpenAI-compatible endpoint of each in turn,
interleaved round by round (whole answers at concurrency 1, 16-token streams at concurrency 1 and 10).
Prints the gateway CPU per request (from /proc) and p50 latency per loop, each round, then the medians
and the uvloop/asyncio ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import gateway_setup
from bench.paths import PathSpec
from bench.procstat import descendants, tree_usage
from bench.servers import Gateway, LoadClientProcess, Upstream

LOOPS = ("asyncio", "uvloop")
CELLS = ((False, 1), (True, 1), (True, 10))  # (streamed, concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    options = parser.parse_args()
    upstream = Upstream()
    client = LoadClientProcess()
    folder = Path(tempfile.mkdtemp(prefix="gtl-ab-loop-"))
    gateways: dict[str, tuple[Gateway, PathSpec, list[int]]] = {}
    cpu: dict[tuple[str, bool, int], list[float]] = {}
    p50: dict[tuple[str, bool, int], list[float]] = {}
    try:
        for loop in LOOPS:
            files = gateway_setup.prepare(
                folder / loop, upstream.port, grpc=False, quic=False, limits={"event_loop": loop}
            )
            gateway = Gateway(files)
            # each path has its own name: the load client keeps its connections per name
            spec = PathSpec(f"gtl-openai-{loop}", "chat", port=gateway.port("http"), token=files.token)
            gateways[loop] = (gateway, spec, descendants(gateway.pid))
        for round_ in range(options.rounds):
            for loop, (_, spec, pids) in gateways.items():
                for stream, concurrency in CELLS:
                    before: list[float] = []
                    command = {
                        "path": spec.to_json(),
                        "stream": stream,
                        "tokens": 16,
                        "concurrency": concurrency,
                        "duration": options.duration,
                        "requests": 0,
                        "warmup": 50,
                    }
                    result = client.phase(
                        command, lambda pids=pids, before=before: before.append(tree_usage(0, pids).cpu)
                    )
                    per_request = (tree_usage(0, pids).cpu - before[0]) * 1000 / max(result["requests"], 1)
                    key = (loop, stream, concurrency)
                    cpu.setdefault(key, []).append(per_request)
                    p50.setdefault(key, []).append(result["p50"])
                    kind = "stream" if stream else "whole"
                    print(
                        f"round {round_} {loop:8s} {kind:6s} c={concurrency:<3d} cpu {per_request:.3f} ms/req, "
                        f"p50 {result['p50']:.2f} ms",
                        flush=True,
                    )
    finally:
        for gateway, _, _ in gateways.values():
            gateway.stop()
        client.close()
        upstream.stop()
    print("\nmedians (gateway CPU ms per request; p50 ms):")
    for stream, concurrency in CELLS:
        a, u = (statistics.median(cpu[(loop, stream, concurrency)]) for loop in LOOPS)
        pa, pu = (statistics.median(p50[(loop, stream, concurrency)]) for loop in LOOPS)
        kind = "16-token stream" if stream else "whole answer"
        print(
            f"  {kind}, c={concurrency}: asyncio {a:.3f} / {pa:.2f}  uvloop {u:.3f} / {pu:.2f}  CPU ratio {u / a:.2f}"
        )


if __name__ == "__main__":
    main()
