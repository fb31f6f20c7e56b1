"""Instructions per request in the gateway, counted by callgrind: ``python -m bench.callgrind``.

Wall-clock and CPU figures move ±30 % on a shared machine; an instruction count repeats to a fraction
of a percent, so a change that saves 5 % shows. The gateway runs under ``valgrind --tool=callgrind
--instr-atstart=no`` (start-up runs uninstrumented, which keeps it to about a minute); the load client
warms each path up, then ``callgrind_control`` switches instrumentation on and zeroes the counters,
the client sends a fixed number of requests one at a time, and a dump gives the instructions (``Ir``)
spent by every thread of the gateway in between — divided by the requests.

(``perf stat -e instructions`` would be cheaper; this machine's kernel does not expose the counter,
``<not supported>``.) Optional, slow (valgrind runs Python ~50× slower): not part of ``make bench``.

    python -m bench.callgrind [--requests 50] [--paths gtl-openai,gtl-sse,gtl-ws] [--keep DIR]

``--keep DIR`` keeps each dump (``DIR/<path>-<workload>.callgrind``) for ``callgrind_annotate``, which
names the C functions the instructions went to: that is how a ``bytes`` ``in`` that formats an
exception, or an ``isinstance`` that looks up ``__class__``, shows up.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import gateway_setup
from bench.paths import Workload, gateway_paths
from bench.servers import Gateway, LoadClientProcess, Upstream

WORKLOADS = (Workload(False, 16), Workload(True, 16), Workload(True, 256))


def _control(*args: str) -> str:
    done = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=False)
    return done.stdout + done.stderr


def _total_instructions(dump: Path) -> int:
    """The ``summary:``/``totals:`` line of a callgrind output file (events: Ir)."""
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def run_counted_worker(module: str, out: Path, *args: str) -> None:
    """``python -m MODULE --counted-worker OUT ARGS…`` under callgrind, counting nothing until the worker
    turns it on (``callgrind_control``); each of its dumps is ``OUT.1``, ``OUT.2`` …"""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        module,
        "--counted-worker",
        str(out),
        *args,
    ]
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])


def _newest_dump(directory: Path, known: set[Path]) -> Path:
    """The dump file ``callgrind_control --dump`` just wrote (it writes asynchronously)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        fresh = set(directory.glob("callgrind.out*")) - known
        if fresh:
            newest = max(fresh, key=lambda p: p.stat().st_mtime)
            time.sleep(0.5)  # let valgrind finish writing the file
            return newest
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def count(paths: list[str], requests: int, keep: Path | None = None) -> dict[tuple[str, str], float]:
    """Instructions per request for each path and workload (each dump copied into ``keep``, if given)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="gtl-callgrind-") as tmp:
        directory = Path(tmp)
        upstream = Upstream()
        files = gateway_setup.prepare(directory / "gateway", upstream.port, grpc=False, quic=False)
        out = directory / "callgrind.out"
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        gateway = Gateway(files, wrapper=wrapper)
        client = LoadClientProcess()
        pid = str(gateway.pid)
        try:
            specs = gateway_paths(gateway, files)
            for path in paths:
                for workload in WORKLOADS:
                    command = {
                        "path": specs[path].to_json(),
                        "stream": workload.stream,
                        "tokens": workload.tokens,
                        "concurrency": 1,
                        "duration": 0,
                        "requests": requests,
                        "warmup": 10,
                    }

                    def before() -> None:
                        _control("--instr=on", pid)
                        _control("--zero", pid)

                    known = set(directory.glob("callgrind.out*"))
                    result = client.phase(command, before)
                    _control("--dump", pid)
                    dump = _newest_dump(directory, known)
                    _control("--instr=off", pid)
                    if result["errors"]:
                        raise RuntimeError(f"{path} {workload.label}: {result['errors']}")
                    if keep is not None:
                        keep.mkdir(parents=True, exist_ok=True)
                        shutil.copy(dump, keep / f"{path}-{workload.label.replace(' ', '-')}.callgrind")
                    per_request = _total_instructions(dump) / result["requests"]
                    results[(path, workload.label)] = per_request
                    millions = per_request / 1e6
                    print(f"callgrind: {path:<11} {workload.label:>10}: {millions:8.2f} M instructions/request")
        finally:
            client.close()
            gateway.stop()
            upstream.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50, help="requests per path and workload (default 50)")
    parser.add_argument("--paths", default="gtl-openai,gtl-sse,gtl-ws")
    parser.add_argument("--keep", type=Path, help="copy each dump here, for callgrind_annotate")
    args = parser.parse_args(argv)
    count(args.paths.split(","), args.requests, args.keep)


if __name__ == "__main__":
    main()
