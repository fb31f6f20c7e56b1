"""Where the gateway's CPU goes: py-spy on ``gtl serve`` under a concurrency-1 streaming load.

    python -m bench.profile_gateway [--seconds 20] [--path gtl-openai|gtl-sse|gtl-ws|gtl-grpc|gtl-quic]
                                    [--tokens 16] [--whole] [--raw FILE]
    python -m bench.profile_gateway --summarise FILE     # a saved py-spy raw profile

Starts the fake upstream and the gateway (tokens, ledger, audit on, as ``bench.suite`` does), runs the
load client on one path at concurrency 1 and has ``py-spy record --format raw --full-filenames`` sample
the gateway process meanwhile (only frames running on a CPU: idle waits are not samples). Then it sums
**self time** — the innermost frame of each sample — per function, and per owner of the file that
function lives in: ``gtl_nb`` (ours), uvicorn, h11, starlette, websockets, httpx/httpcore, aiohttp,
grpcio, protobuf, aioquic, cryptography, asyncio, sqlite3, other standard library, other packages. It
prints the top functions of our code, the share of each owner and of each thread, and before them the
gateway's CPU per request by thread read from ``/proc`` (grpcio's native threads included, which no
Python profiler sees). py-spy is ``pip install py-spy`` in the project's environment.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench import gateway_setup
from bench.paths import GATEWAY_PATHS, gateway_paths
from bench.procstat import cpu_seconds, thread_cpu_seconds
from bench.servers import Gateway, LoadClientProcess, Upstream

#: file-path fragments → owner, first match wins (our package before the site-packages rules)
OWNERS = (
    ("/gtl_nb/", "gtl_nb (ours)"),
    ("/bench/", "gtl_nb (ours)"),
    ("/uvicorn/", "uvicorn"),
    ("/h11/", "h11"),
    ("/starlette/", "starlette"),
    ("/websockets/", "websockets"),
    ("/httpx/", "httpx/httpcore"),
    ("/httpcore/", "httpx/httpcore"),
    ("/aiohttp/", "aiohttp"),
    ("/grpc/", "grpcio"),
    ("/google/protobuf/", "protobuf"),
    ("/aioquic/", "aioquic"),
    ("/cryptography/", "cryptography"),
    ("/yarl/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("/anyio/", "anyio"),
    ("/msgspec/", "msgspec"),
    ("/jwt/", "pyjwt"),
    ("/prometheus_client/", "prometheus_client"),
    ("/asyncio/", "asyncio"),
    ("/sqlite3/", "sqlite3"),
    ("/site-packages/", "other packages"),
    ("/lib/python3", "other standard library"),
)


PATHS = GATEWAY_PATHS
"""What ``--path`` may name: the binding paths, and the report-only gRPC and QUIC listeners."""


def owner(filename: str) -> str:
    for fragment, name in OWNERS:
        if fragment in filename:
            return name
    return "native / unknown"


def parse_raw(text: str) -> Counter[tuple[str, str]]:
    """Self samples per ``(function (file), owner)`` from py-spy's raw (collapsed-stack) output."""
    selves: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = stack.split(";")
        if _thread_name(frames[0]) is not None:  # (recorded with --threads: the thread comes first)
            frames = frames[1:]
        if not frames:  # a thread running native code only (a library's own thread)
            selves[("(native code, no Python frame)", "native / unknown")] += int(samples)
            continue
        leaf = frames[-1]
        function, _, location = leaf.partition(" (")
        filename = location.rsplit(":", 1)[0]
        short = filename.split("/site-packages/")[-1].split("/gtl_nb/")[-1]
        if "/gtl_nb/" in filename:
            short = "gtl_nb/" + short
        selves[(f"{function} ({short})", owner(filename))] += int(samples)
    return selves


def _thread_name(frame: str) -> str | None:
    """The thread's name in py-spy's first frame of a ``--threads`` stack (``thread (0x…): name``),
    without what makes one instance differ from another (a ledger writer's file path)."""
    if not frame.startswith("thread ("):
        return None
    name = frame.partition("): ")[2].strip() or "(unnamed)"
    return name.split(" /", 1)[0]


def by_thread(text: str) -> Counter[str]:
    """Samples per thread name (a profile recorded without ``--threads`` has none)."""
    threads: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, samples = line.rpartition(" ")
        name = _thread_name(stack.split(";", 1)[0]) if stack and samples.isdigit() else None
        if name is not None:
            threads[name] += int(samples)
    return threads


def summarise(text: str, top: int = 10) -> str:
    """The report: top self-time functions of our code, then the share of each owner."""
    selves = parse_raw(text)
    total = sum(selves.values()) or 1
    by_owner: Counter[str] = Counter()
    for (_, who), samples in selves.items():
        by_owner[who] += samples
    lines = [f"{total} samples (self time, CPU only)", "", f"top {top} self-time functions of our code:"]
    ours = [(name, samples) for (name, who), samples in selves.items() if who == "gtl_nb (ours)"]
    for name, samples in sorted(ours, key=lambda item: -item[1])[:top]:
        lines.append(f"  {samples / total * 100:5.1f} %  {name}")
    lines += ["", "self time by owner:"]
    for who, samples in by_owner.most_common():
        lines.append(f"  {samples / total * 100:5.1f} %  {who}")
    threads = by_thread(text)
    if threads:
        lines += ["", "samples by thread:"]
        for name, samples in threads.most_common():
            lines.append(f"  {samples / total * 100:5.1f} %  {name}")
    lines += ["", "top 10 self-time functions overall:"]
    for (name, who), samples in selves.most_common(10):
        lines.append(f"  {samples / total * 100:5.1f} %  {name}  [{who}]")
    return "\n".join(lines)


def per_thread_report(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    requests: int,
    profile: str,
    process_seconds: float | None = None,
) -> str:
    """The gateway's CPU per request by thread over the phase, from ``/proc`` (every thread, native
    ones included; py-spy's samples see only Python's), each named as the profile names its thread id.
    ``process_seconds`` (the process's own CPU over the phase) adds the threads that ended meanwhile."""
    names = python_thread_names(profile)
    spent: Counter[str] = Counter()
    for tid, (kernel_name, seconds) in after.items():
        name = names.get(tid) or f"{kernel_name} (native)"
        spent[name] += seconds - before.get(tid, (kernel_name, 0.0))[1]
    if process_seconds is not None and process_seconds > sum(spent.values()):
        spent["(threads that ended during the phase)"] = process_seconds - sum(spent.values())
    per_request = 1000 / max(requests, 1)
    lines = [f"gateway CPU per request (/proc, all threads): {sum(spent.values()) * per_request:.3f} ms"]
    for name, seconds in spent.most_common():
        if seconds > 0:
            lines.append(f"  {seconds * per_request:7.3f} ms  {name}")
    return "\n".join(lines)


def python_thread_names(profile: str) -> dict[int, str]:
    """Thread id → Python thread name, from a raw profile recorded with ``--threads``."""
    names: dict[int, str] = {}
    for line in profile.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        first = stack.split(";", 1)[0]
        name = _thread_name(first)
        tid = first[len("thread (") :].partition(")")[0]
        if name is not None and tid.isdigit():
            names[int(tid)] = name
    return names


def record(path: str, seconds: float, tokens: int, rate: int, gil: bool = False, whole: bool = False) -> str:
    """Run the load and py-spy together; the raw profile's text."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/python -m pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="gtl-profile-") as tmp:
        directory = Path(tmp)
        upstream = Upstream()
        files = gateway_setup.prepare(
            directory / "gateway", upstream.port, grpc=path == "gtl-grpc", quic=path == "gtl-quic"
        )
        gateway = Gateway(files)
        client = LoadClientProcess()
        raw = directory / "profile.txt"
        recorder: list[subprocess.CompletedProcess[str]] = []
        try:
            specs = gateway_paths(gateway, files, (path,))
            command = [py_spy, "record", "--pid", str(gateway.pid), "--format", "raw", "--full-filenames", "--threads"]
            command += ["--rate", str(rate), "--duration", str(int(seconds)), "--nonblocking", "-o", str(raw)]
            if gil:
                command.append("--gil")  # only the thread holding the GIL: Python's CPU, no I/O waits

            def start_recording() -> None:
                threads_before.update(thread_cpu_seconds(gateway.pid))
                process_before.append(cpu_seconds(gateway.pid))
                # in a thread: py-spy runs for the whole phase while the load client drives the gateway
                thread = threading.Thread(
                    target=lambda: recorder.append(subprocess.run(command, capture_output=True, text=True))
                )
                thread.start()
                recording.append(thread)

            recording: list[threading.Thread] = []
            threads_before: dict[int, tuple[str, float]] = {}
            process_before: list[float] = []
            phase = {
                "path": specs[path].to_json(),
                "stream": not whole,
                "tokens": tokens,
                "concurrency": 1,
                "duration": seconds,
                "requests": 0,
                "warmup": 20,
            }
            result = client.phase(phase, start_recording)
            threads_after = thread_cpu_seconds(gateway.pid)
            process_spent = cpu_seconds(gateway.pid) - process_before[0] if process_before else None
            for thread in recording:
                thread.join()
            if result["errors"]:
                raise RuntimeError(f"errors under profile: {result['errors']}")
            if not raw.exists():
                raise RuntimeError(f"py-spy wrote nothing: {recorder[0].stderr if recorder else ''}")
            kind = "whole answers" if whole else "streams"
            print(f"profiled {result['requests']} {kind} of {tokens} tokens over {path} ({result['rps']:.0f}/s)")
            text = raw.read_text()
            print(per_thread_report(threads_before, threads_after, result["requests"], text, process_spent))
            return text
        finally:
            client.close()
            gateway.stop()
            upstream.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--path", default="gtl-openai", choices=PATHS)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="also save py-spy's raw profile here")
    parser.add_argument("--summarise", type=Path, metavar="FILE", help="summarise a saved raw profile and exit")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python CPU; without it a thread in fsync counts as busy)",
    )
    parser.add_argument("--whole", action="store_true", help="whole answers (stream: false) instead of streams")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise.read_text()))
        return
    text = record(args.path, args.seconds, args.tokens, args.rate, args.gil, args.whole)
    if args.raw:
        args.raw.write_text(text)
    print(summarise(text))


if __name__ == "__main__":
    main()
