"""``python -m bench``: the benchmark suite of issue 13 (``make bench``, ``bench-smoke``, ``bench-peers``).

Runs, in order: the codec against the standard library (``bench_codec``), the embedded client against
bare httpx (``bench_overhead``) and against bare aiohttp at concurrency 1 and 20 with 1,000 concurrent
streams (``bench_embedded``; neither in ``--smoke``), and the gateway suite (``bench.suite``: direct,
the gateway's OpenAI-compatible endpoint, SSE, WebSocket, gRPC, QUIC, and LiteLLM when
``.venv-peers`` has it). Prints the markdown report and writes it into ``docs/benchmarks.md``.

    python -m bench                    # the full run (~15 min): 5 rounds, 2 s phases
    python -m bench --short            # 2 rounds, 0.5 s phases (~3 min)
    python -m bench --smoke --json F   # under a minute, tiny counts, docs untouched (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import bench_codec, bench_embedded, bench_overhead
from bench.paths import Workload
from bench.report import markdown, write_docs
from bench.suite import Options, run, write_json

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def options_from(args: argparse.Namespace) -> Options:
    options = Options()
    if args.smoke:
        options = Options(
            rounds=1,
            duration=0.2,
            warmup=1,
            concurrencies=(1, 2),
            workloads=(Workload(False, 16), Workload(True, 16)),
            chunk_fit=False,
            peers="off",
        )
    elif args.short:
        options = Options(rounds=2, duration=0.5, warmup=1)
    if args.rounds:
        options.rounds = args.rounds
    if args.duration:
        options.duration = args.duration
    if args.concurrency:
        options.concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if args.paths:
        options.paths = tuple(args.paths.split(","))
    if args.peers:
        options.peers = args.peers
    if args.upstream_client:
        options.upstream_table = {"client": args.upstream_client}
    return options


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny counts, under a minute; docs untouched")
    size.add_argument("--short", action="store_true", help="2 rounds of 0.5 s phases")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds per phase")
    parser.add_argument("--concurrency", help="comma-separated, e.g. 1,10,50")
    parser.add_argument("--paths", help="comma-separated: direct,gtl-openai,gtl-sse,gtl-ws,gtl-grpc,gtl-quic,litellm")
    parser.add_argument("--peers", choices=("auto", "on", "off"), help="LiteLLM: when installed (auto), must, never")
    parser.add_argument("--upstream-client", help="write [upstream] client = NAME into the gateway's file")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--skip-embedded", action="store_true", help="skip the embedded client's benchmark")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    options = options_from(args)
    codec = bench_codec.run()
    embedded = None
    if not (args.smoke or args.skip_embedded):
        bench_overhead.run()
        embedded = bench_embedded.report(bench_embedded.measure(rounds=3 if args.short else 5))
    result = run(options)
    report = markdown(result, codec)
    if embedded is not None:
        report += "\n### The embedded client (what a notebook uses)\n\n" + embedded + "\n"
    print()
    print(report)
    if args.json:
        write_json(result, args.json)
    if not (args.smoke or args.no_write):
        write_docs(report, DOCS)
        print(f"written to {DOCS}")
    failed = [s for s in result.summaries if s.errors]
    for summary in failed:
        print(f"ERRORS on {summary.path} {summary.label} c={summary.concurrency}: {summary.errors}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
