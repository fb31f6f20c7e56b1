"""What the embedded engine costs per request and per chunk: ``python -m bench.chunk_cost``.

Counts, under callgrind (every thread of this process; the bench's upstream runs in a process of its
own, not counted), the instructions per request of the engine alone — sessions back to back on its
loop thread, as ``bench_embedded``'s "engine alone", the ledger on — for answers of 1, 16 and 64
tokens, all chunks arriving in one read. The slope between 16 and 64 tokens is the cost of one
chunk (decoding it, the token event it becomes, its way through the engine's levels); the 1-token
count is what every request costs whatever its length. A bare call reads the same bytes for almost
nothing per chunk, so the slope is where the engine's ratio to it grows with the answer.

    python -m bench.chunk_cost [--requests 200] [--tokens 1,16,64] [--keep DIR]

``--keep DIR`` keeps the dumps (``DIR/callgrind.out.N``, one per length) for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import msgspec

import gtl_nb
from bench.bench_embedded import COUNTED_GROUP_COMMIT_MS, MODEL, _callgrind_control, _client, _wait_for
from bench.callgrind import _total_instructions, run_counted_worker
from bench.servers import Upstream
from gtl_nb.client import new_session_id
from gtl_nb.protocol.messages import Error, StreamEvent


async def _sessions(client: gtl_nb.Client, count: int, tokens: int) -> None:
    """``count`` sessions of ``tokens``-token answers, one after another, on the engine's loop thread."""
    request = client.request(MODEL, "hi", max_tokens=tokens)
    ends: list[StreamEvent] = []
    for _ in range(count):
        await client.backend.session(msgspec.structs.replace(request, session_id=new_session_id()), ends.append)
    failed = [event for event in ends if type(event) is Error]
    if failed:
        raise RuntimeError(f"the engine alone: {failed[0]}")


def _counted_worker(requests: int, lengths: list[int], out: Path) -> None:
    """Runs under valgrind: each length warmed up, then counted alone, one dump each."""
    pid = str(os.getpid())
    upstream = Upstream()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Path(tmp) / "bench.sqlite3"
            client = _client(upstream.port, ledger, group_commit_ms=COUNTED_GROUP_COMMIT_MS)
            try:
                for number, tokens in enumerate(lengths, start=1):
                    client.backend.loop.run(_sessions(client, 20, tokens))
                    _callgrind_control("--instr=on", pid)
                    _callgrind_control("--zero", pid)
                    client.backend.loop.run(_sessions(client, requests, tokens))
                    _callgrind_control("--dump", pid)
                    _wait_for(out.with_name(f"{out.name}.{number}"))
            finally:
                client.close()
    finally:
        upstream.stop()


def count(requests: int, lengths: list[int], keep: Path | None = None) -> dict[int, float]:
    """Instructions per request of the engine alone, for each answer length in ``lengths``."""
    with tempfile.TemporaryDirectory(prefix="gtl-chunk-cost-") as tmp:
        directory = keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / "callgrind.out"
        lengths_arg = ",".join(map(str, lengths))
        run_counted_worker("bench.chunk_cost", out, "--requests", str(requests), "--tokens", lengths_arg)
        return {
            tokens: _total_instructions(out.with_name(f"{out.name}.{number}")) / requests
            for number, tokens in enumerate(lengths, start=1)
        }


def report(counts: dict[int, float]) -> str:
    """The counts, and the per-chunk slope between the two longest answers."""
    lines = ["| answer | M instructions per request |", "| --- | --- |"]
    lines += [f"| {tokens} token(s) | {value / 1e6:.3f} |" for tokens, value in counts.items()]
    lengths = sorted(counts)
    if len(lengths) >= 2:
        short, long = lengths[-2], lengths[-1]
        slope = (counts[long] - counts[short]) / (long - short)
        lines.append(f"\nper chunk ({short} → {long} tokens): {slope / 1e3:.1f} k instructions")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chunk_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", default="1,16,64", help="answer lengths, comma-separated")
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps in this directory")
    parser.add_argument("--counted-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lengths = [int(part) for part in args.tokens.split(",") if part.strip()]
    if args.counted_worker:
        _counted_worker(args.requests, lengths, args.counted_worker)
        return
    print(report(count(args.requests, lengths, args.keep)))


if __name__ == "__main__":
    main()
