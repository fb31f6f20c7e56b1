"""``make bench-scale``: N concurrent long-lived streaming sessions held by ONE gateway process.

    python -m bench.scale [--sessions 10000] [--hold 60] [--pace 5] [--rate 500] [--clients 4]

Issue 13's target: 10,000 sessions, each on its own client connection (half SSE, half WebSocket, the
clients spread over source addresses 127.0.0.2–127.0.0.9) and with its own upstream stream (the fake
upstream paced: the first token at once, then one every ``pace`` seconds), all open together for
``hold`` seconds; zero errors, zero lost events, under 100 KB of gateway memory per open session, and
the time to first token p99 while they run. Sessions start at ``rate`` a second, so the stream length is
chosen to keep the first one open until ``hold`` seconds after the last one started.

It raises ``RLIMIT_NOFILE`` to 65,536 for itself and its children when it may; where the hard limit is
lower it settles for what the run needs, and stops, saying so, when even that is out of reach. What the
run needs depends on the upstream client (``--upstream-client``): over HTTP/2 (``h2``, the default: the
fake upstream speaks h2c on the same port) the gateway's sessions share a few upstream connections, so
it holds one descriptor per session; over HTTP/1.1 (``httptools``) two. It ends by itself within ten
minutes (clients that are still running then are counted as errors), and is never run in CI. The
gateway is configured as ``bench.suite`` does (tokens, ledger, audit on) with the per-address
connection cap and the per-principal session cap raised to fit the sessions and no bound on the
upstream connection pool.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import gateway_setup
from bench.procstat import rss_bytes, tree_usage
from bench.servers import REPO, Gateway, Upstream
from bench.stats import median, percentile

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 10)]
NOFILE = 65_536
WALL_LIMIT = 600.0
"""The whole run ends within this many seconds."""


def raise_nofile(needed: int, wanted: int = NOFILE, *, sessions: int = 0, client: str = "h2") -> int:
    """Raise the open-file limit (children inherit it) to ``wanted``, or as far as the hard limit lets
    a user without privileges when that still covers ``needed``; stop with a clear message otherwise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(wanted, needed)
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError) as exc:
        if hard >= needed:  # (raising the hard limit needs privileges; up to it does not)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            print(
                f"scale: RLIMIT_NOFILE hard limit {hard} < {target} ({exc}); it covers the {needed} needed", flush=True
            )
            return hard
        raise SystemExit(
            f"bench-scale needs RLIMIT_NOFILE >= {needed} (now soft {soft}, hard {hard}) and could not raise it "
            f"({exc}); run `ulimit -n {target}` as a user allowed to, or as root"
            + (
                ", or try --upstream-client h2 (one descriptor per session)"
                if client != "h2" and hard >= sessions + 1024
                else ""
            )
        ) from exc
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def check_addresses() -> None:
    """Each source address must be bindable (127.0.0.0/8 is all loopback on Linux)."""
    for address in ADDRESSES:
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError as exc:
                raise SystemExit(f"cannot bind source address {address}: {exc}") from exc


class Sampler:
    """Samples the gateway's RSS and CPU once a second in a thread, until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            usage = tree_usage(self.pid, [self.pid])
            self.samples.append((time.monotonic(), usage.rss, usage.cpu))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [s for s in self.samples if start <= s[0] <= end]


def start_client(config: dict[str, Any]) -> subprocess.Popen[str]:
    """One ``bench.scale_client`` process running ``config``'s sessions."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.scale_client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(config) + "\n")
    process.stdin.flush()
    return process


def start_clients(args: argparse.Namespace, port: int, token: str, tokens: int, timeout: float) -> list[Any]:
    """``args.clients`` client processes sharing the sessions and the start rate."""
    clients = []
    per_client = math.ceil(args.sessions / args.clients)
    for number in range(args.clients):
        first = number * per_client
        count = min(per_client, args.sessions - first)
        if count <= 0:
            break
        config = {
            "host": "127.0.0.1",
            "port": port,
            "token": token,
            "sessions": count,
            "first": first,
            "rate": args.rate / args.clients,
            "tokens": tokens,
            "timeout": timeout,
            "compression": not args.no_compression,
            "addresses": ADDRESSES,
        }
        clients.append(start_client(config))
    return clients


def start_probe(args: argparse.Namespace, port: int, token: str) -> subprocess.Popen[str]:
    """Two new short sessions a second while every session is open: their time to first token is the
    gateway's under that load (the ramp's own first tokens measure the ramp, not the hold)."""
    count = max(4, int(args.hold - 10) * 2)
    return start_client(
        {
            "host": "127.0.0.1",
            "port": port,
            "token": token,
            "sessions": count,
            "first": 10**9,  # ids apart from the held sessions'
            "rate": 2.0,
            "tokens": 2,
            "timeout": args.hold + args.pace * 2 + 30,
            "compression": not args.no_compression,
            "addresses": ADDRESSES,
        }
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.monotonic()
    # the gateway holds a client socket per session, plus an upstream one over HTTP/1.1, plus its files
    per_session = 1 if args.upstream_client == "h2" else 2
    limit = raise_nofile(
        per_session * args.sessions + 1024, args.min_nofile, sessions=args.sessions, client=args.upstream_client
    )
    check_addresses()
    ramp = args.sessions / args.rate
    tokens = max(2, math.ceil((ramp + args.hold) / args.pace) + 1)
    stream_seconds = (tokens - 1) * args.pace
    timeout = min(WALL_LIMIT - 120, ramp + stream_seconds + 60)
    print(
        f"scale: {args.sessions} sessions (half SSE, half WebSocket) from {ADDRESSES[0]}–{ADDRESSES[-1]}, "
        f"started at {args.rate:g}/s over {ramp:.0f} s, each {tokens} tokens {args.pace:g} s apart "
        f"({stream_seconds:.0f} s), all open together ≥ {args.hold:g} s; upstream client "
        f"{args.upstream_client}; RLIMIT_NOFILE {limit}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="gtl-scale-") as tmp:
        directory = Path(tmp)
        upstream = Upstream(pace=args.pace, extra_args=["--backlog", "65535"])
        # one principal (the token's "bench") runs every session: its cap too is raised to fit them, and
        # the listener's share of descriptors (by default half the limit: the rest for upstream sockets —
        # over HTTP/2 a few, so the sessions may take the rest)
        limits = {
            "max_connections": args.sessions + 64,
            "max_connections_per_address": args.sessions + 64,
            "max_sessions_per_principal": args.sessions + 64,
            "idle_timeout": 600,
        }
        upstream_table = {"client": args.upstream_client, "max_connections": 0, "max_connections_per_host": 0}
        files = gateway_setup.prepare(
            directory / "gateway", upstream.port, grpc=False, quic=False, limits=limits, upstream=upstream_table
        )
        # the engine's idle deadline between chunks must outlast the pace
        with files.config.open("a", encoding="utf-8") as config:
            config.write(f"\n[timeouts]\nidle = {args.pace * 3 + 30:g}\nfirst_byte = 120\n")
            # /metrics for the garbage collector's pauses (read once, at the end)
            config.write("\n[gateway.metrics]\nrequire_token = false\n")
        gateway = Gateway(files, log=directory / "gateway.log")
        sampler = Sampler(gateway.pid)
        clients: list[Any] = []
        try:
            time.sleep(2)  # two RSS samples of the idle gateway
            baseline = rss_bytes(gateway.pid)
            cpu_before = tree_usage(gateway.pid, [gateway.pid]).cpu
            clients = start_clients(args, gateway.port("http"), files.token, tokens, timeout)
            for client in clients:
                assert client.stdout is not None
                client.stdout.readline()  # {"started": n}
            all_started = time.monotonic()
            print(f"scale: all sessions started after {all_started - began:.0f} s", flush=True)
            probe = start_probe(args, gateway.port("http"), files.token)
            clients.append(probe)
            summaries = []
            for client in clients:
                assert client.stdout is not None
                summary: dict[str, Any] = {}
                while "sessions" not in summary:  # past the probe's {"started": n}
                    line = _readline(client, max(1.0, began + WALL_LIMIT - 30 - time.monotonic()))
                    summary = json.loads(line) if line else {"sessions": 0, "errors": {"client gave no summary": 1}}
                summaries.append(summary)
            cpu_after = tree_usage(gateway.pid, [gateway.pid]).cpu
            try:
                gc_pauses = read_gc_pauses(gateway.port("http"))
            except OSError as exc:  # the run's other figures stand without these
                print(f"scale: could not read the gateway's /metrics: {exc}", flush=True)
                gc_pauses = {}
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            sampler.stop()
            gateway.stop()
            upstream.stop()
            log_file = directory / "gateway.log"
            gateway_log = log_file.read_text(errors="replace") if log_file.exists() else ""
    # while every session is open: from the last start to the first possible end
    held = sampler.between(all_started + 2, all_started + args.hold - 2)
    plateau = median([rss for _, rss, _ in held]) if held else math.nan
    hold_cpu = (held[-1][2] - held[0][2]) / (held[-1][0] - held[0][0]) if len(held) >= 2 else math.nan
    errors: dict[str, int] = {}
    for summary in summaries:
        for kind, count in summary.get("errors", {}).items():
            errors[kind] = errors.get(kind, 0) + count
    probed, summaries = summaries[-1], summaries[:-1]
    for kind, count in probed.get("errors", {}).items():
        errors["probe: " + kind] = errors.get("probe: " + kind, 0) + count
    ttfts = sorted(t for s in summaries for t in s.get("ttft_ms", []))
    probe_ttfts = probed.get("ttft_ms", [])
    result = {
        "sessions": args.sessions,
        "upstream_client": args.upstream_client,
        "nofile": limit,
        "ramp_s": args.sessions / args.rate,
        "probe_sessions": probed.get("sessions", 0),
        "probe_ttft_p50_ms": percentile(probe_ttfts, 50) if probe_ttfts else None,
        "probe_ttft_p99_ms": percentile(probe_ttfts, 99) if probe_ttfts else None,
        "ok": sum(s.get("ok", 0) for s in summaries),
        "errors": errors,
        "lost_tokens": sum(s.get("lost_tokens", 0) for s in summaries),
        "extra_tokens": sum(s.get("extra_tokens", 0) for s in summaries),
        "ttft_p50_ms": percentile(ttfts, 50) if ttfts else None,
        "ttft_p99_ms": percentile(ttfts, 99) if ttfts else None,
        "rss_baseline_mib": baseline / 2**20,
        "rss_plateau_mib": plateau / 2**20,
        "kib_per_session": (plateau - baseline) / args.sessions / 1024,
        "gateway_cores_while_held": hold_cpu,
        "gateway_cpu_s": cpu_after - cpu_before,
        "wall_s": time.monotonic() - began,
        "gateway_errors_logged": sum(1 for line in gateway_log.splitlines() if "error" in line.lower()),
        "gc_pauses": gc_pauses,
    }
    return result


def read_gc_pauses(port: int) -> dict[str, dict[str, float]]:
    """Per generation, from the gateway's ``gtl_gc_pause_seconds`` histogram: how many collections ran,
    their total and mean seconds, and how many took longer than 0.1 s and 0.5 s."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[tuple[str, str, str], float] = {}
    pattern = re.compile(r'^gtl_gc_pause_seconds_(bucket|count|sum)\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$')
    for line in text.splitlines():
        found = pattern.match(line)
        if found:
            kind, generation, bound, value = found.groups()
            samples[(kind, generation, bound or "")] = float(value)
    pauses: dict[str, dict[str, float]] = {}
    for generation in "012":
        count = samples.get(("count", generation, ""), 0.0)
        total = samples.get(("sum", generation, ""), 0.0)
        pauses[generation] = {
            "count": count,
            "seconds": total,
            "mean_ms": total / count * 1000 if count else 0.0,
            "over_100ms": count - samples.get(("bucket", generation, "0.1"), count),
            "over_500ms": count - samples.get(("bucket", generation, "0.5"), count),
        }
    return pauses


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """A line from the process within ``timeout`` seconds ('' when it has none by then)."""
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return found[0] if found else ""


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def report(result: dict[str, Any]) -> str:
    ok = result["ok"] == result["sessions"] and not result["errors"] and not result["lost_tokens"]
    return "\n".join(
        [
            f"scale: {result['ok']}/{result['sessions']} sessions ended with every token and done "
            f"({'zero errors, zero lost events' if ok else 'FAILED'}) in {result['wall_s']:.0f} s",
            f"scale: errors {result['errors'] or 'none'}; lost tokens {result['lost_tokens']}, "
            f"extra {result['extra_tokens']}",
            f"scale: time to first token while every session is open ({result['probe_sessions']} probe sessions): "
            f"p50 {_ms(result['probe_ttft_p50_ms'])} ms, p99 {_ms(result['probe_ttft_p99_ms'])} ms",
            f"scale: time to first token during the {result['ramp_s']:.0f} s ramp: "
            f"p50 {_ms(result['ttft_p50_ms'])} ms, p99 {_ms(result['ttft_p99_ms'])} ms",
            f"scale: gateway RSS {result['rss_baseline_mib']:.0f} MiB idle, {result['rss_plateau_mib']:.0f} MiB with "
            f"every session open: {result['kib_per_session']:.1f} KiB per session (target < 100 KB)",
            f"scale: gateway CPU while held {result['gateway_cores_while_held']:.2f} cores; "
            f"{result['gateway_errors_logged']} error lines in its log",
            "scale: garbage collections (gtl_gc_pause_seconds): "
            + "; ".join(
                f"gen {generation}: {int(p['count'])}, mean {p['mean_ms']:.1f} ms, "
                f"{int(p['over_100ms'])} over 100 ms, {int(p['over_500ms'])} over 500 ms"
                for generation, p in result["gc_pauses"].items()
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds every session is open together")
    parser.add_argument("--pace", type=float, default=5.0, help="seconds between a stream's tokens upstream")
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="sessions started per second, in all (below what the gateway can start)",
    )
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--no-compression", action="store_true", help="no gzip (SSE) or permessage-deflate (WS)")
    parser.add_argument(
        "--upstream-client",
        choices=("h2", "httptools"),
        default="h2",
        help="the gateway's upstream client: h2 (HTTP/2, one descriptor per session) or httptools (HTTP/1.1, two)",
    )
    parser.add_argument(
        "--min-nofile",
        type=int,
        default=NOFILE,
        help=f"the open-file limit to ask for (default {NOFILE}; a lower hard limit is taken when it covers the run)",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] == args.sessions and not result["lost_tokens"] else 1


if __name__ == "__main__":
    sys.exit(main())
