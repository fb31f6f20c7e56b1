"""The gateway benchmark of issue 13: every path in one run, interleaved rounds, medians.

Processes: the fake upstream (``bench.upstream``), the gateway (``gtl serve --config`` with tokens,
ledger and audit on), LiteLLM's proxy when ``.venv-peers`` has it, and the load client
(``bench.loadclient``) — four processes, so each one's CPU is read from ``/proc`` around each phase.

A *cell* is a workload (non-streamed 16 tokens, streamed 16 or 256) at a concurrency (1, 10, 50),
plus streamed 1 and 64 tokens at concurrency 1 for the per-chunk fit. A *round* runs every cell once
on every path, round-robin over the paths inside each cell and starting at another path each round,
so drift on this shared machine falls on all paths alike. Each figure is the median over rounds;
added latency is ``path − direct`` within a round, then the median across rounds.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import gateway_setup
from bench.paths import GATEWAY_PATHS, PathSpec, Workload, gateway_paths
from bench.procstat import Usage, descendants, tree_usage
from bench.servers import Gateway, LiteLLM, LoadClientProcess, Upstream, litellm_executable, litellm_version
from bench.stats import line_fit, median, spread

#: paths whose targets bind (issue 13): the OpenAI-compatible endpoint, SSE and WebSocket
BINDING = ("gtl-openai", "gtl-sse", "gtl-ws")
CHUNK_FIT_TOKENS = (1, 16, 64, 256)


@dataclass
class Options:
    """How much to run; the defaults are the full benchmark."""

    rounds: int = 5
    duration: float = 2.0
    """Seconds of each phase's measured closed loop."""
    requests: int = 0
    """Instead of ``duration``: this many requests per phase (callgrind uses it)."""
    warmup: int = 2
    concurrencies: tuple[int, ...] = (1, 10, 50)
    workloads: tuple[Workload, ...] = (Workload(False, 16), Workload(True, 16), Workload(True, 256))
    chunk_fit: bool = True
    paths: tuple[str, ...] = ("direct", *GATEWAY_PATHS, "litellm")
    peers: str = "auto"
    """``auto``: LiteLLM when installed; ``off``; ``on`` (fail without it)."""
    upstream_table: dict[str, Any] = field(default_factory=dict)
    """An ``[upstream]`` table for the gateway (its HTTP client), when given."""

    def cells(self) -> list[tuple[Workload, int]]:
        cells = [(w, c) for c in self.concurrencies for w in self.workloads]
        if self.chunk_fit:
            for tokens in CHUNK_FIT_TOKENS:
                cell = (Workload(True, tokens), 1)
                if cell not in cells:
                    cells.append(cell)
        return cells


@dataclass
class Phase:
    """One path, one cell, one round: what the client saw and what the processes spent."""

    path: str
    stream: bool
    tokens: int
    concurrency: int
    round: int
    result: dict[str, Any]
    server_cpu_ms: float
    """Server CPU per request, milliseconds (the upstream's for ``direct``)."""
    server_rss: int
    load: dict[str, float]
    """CPU used per wall second by ``server``, ``upstream`` and ``client`` (1.0 = one core)."""


@dataclass
class Environment:
    """The running processes and what the client needs to reach each path."""

    upstream: Upstream
    gateway: Gateway | None
    litellm: LiteLLM | None
    client: LoadClientProcess
    specs: dict[str, PathSpec]
    server_pids: dict[str, list[int]]
    """Path → the process tree whose CPU is the path's server CPU."""

    def stop(self) -> None:
        self.client.close()
        if self.litellm is not None:
            self.litellm.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.upstream.stop()


def start(options: Options, directory: Path, gateway_wrapper: Iterable[str] = ()) -> Environment:
    """Start every process the chosen paths need (see the module docstring)."""
    upstream = Upstream()
    gateway: Gateway | None = None
    litellm: LiteLLM | None = None
    specs: dict[str, PathSpec] = {}
    try:
        specs["direct"] = PathSpec("direct", "chat", port=upstream.port, token="bench-upstream-key")
        wanted = set(options.paths)
        if wanted & set(GATEWAY_PATHS):
            files = gateway_setup.prepare(
                directory / "gateway",
                upstream.port,
                grpc="gtl-grpc" in wanted,
                quic="gtl-quic" in wanted,
                upstream=options.upstream_table or None,
            )
            gateway = Gateway(files, wrapper=tuple(gateway_wrapper), log=directory / "gateway.log")
            # the binding three always (the report's rows need them), gRPC and QUIC when asked for
            binding, report_only = GATEWAY_PATHS[:3], [name for name in GATEWAY_PATHS[3:] if name in wanted]
            specs.update(gateway_paths(gateway, files, [*binding, *report_only]))
        if "litellm" in wanted and options.peers != "off":
            if litellm_executable() is not None:
                litellm = LiteLLM(directory, upstream.port)
                specs["litellm"] = PathSpec("litellm", "chat", port=litellm.port, token=litellm.master_key)
            elif options.peers == "on":
                raise RuntimeError("LiteLLM is not installed in .venv-peers: run `make bench-peers`")
    except BaseException:
        for process in (litellm, gateway, upstream):
            if process is not None:
                process.stop()
        raise
    specs = {name: spec for name, spec in specs.items() if name in wanted}
    server_pids: dict[str, list[int]] = {}
    for name in specs:
        if name == "direct":
            server_pids[name] = [upstream.pid]
        elif name == "litellm":
            assert litellm is not None
            server_pids[name] = descendants(litellm.pid)  # its worker processes, if it started any
        else:
            assert gateway is not None
            server_pids[name] = descendants(gateway.pid)
    return Environment(upstream, gateway, litellm, LoadClientProcess(), specs, server_pids)


def run_phase(env: Environment, options: Options, path: str, workload: Workload, concurrency: int, rnd: int) -> Phase:
    """One phase; the servers' CPU is read right before the measured loop starts and after it ends."""
    server = env.server_pids[path]
    others = {"upstream": [env.upstream.pid], "client": [env.client.pid]}
    before: dict[str, Usage] = {}

    def snapshot() -> None:
        before["server"] = tree_usage(0, server)
        for name, pids in others.items():
            before[name] = tree_usage(0, pids)

    command = {
        "path": env.specs[path].to_json(),
        "stream": workload.stream,
        "tokens": workload.tokens,
        "concurrency": concurrency,
        "duration": options.duration,
        "requests": options.requests,
        "warmup": options.warmup,
    }
    result = env.client.phase(command, snapshot)
    after = {"server": tree_usage(0, server), **{name: tree_usage(0, pids) for name, pids in others.items()}}
    elapsed = max(result["elapsed"], 1e-9)
    load = {name: (after[name].cpu - before[name].cpu) / elapsed for name in after}
    if path == "direct":
        load["upstream"] = load["server"]  # the direct path's server is the upstream
    cpu_ms = (after["server"].cpu - before["server"].cpu) * 1000 / max(result["requests"], 1)
    return Phase(path, workload.stream, workload.tokens, concurrency, rnd, result, cpu_ms, after["server"].rss, load)


def run_rounds(env: Environment, options: Options, progress: bool = True) -> list[Phase]:
    """Every cell on every path, ``options.rounds`` times, interleaved."""
    phases: list[Phase] = []
    paths = list(env.specs)
    cells = options.cells()
    for rnd in range(options.rounds):
        for index, (workload, concurrency) in enumerate(cells):
            shift = (rnd + index) % len(paths)
            for path in paths[shift:] + paths[:shift]:
                phase = run_phase(env, options, path, workload, concurrency, rnd)
                phases.append(phase)
                if progress:
                    errors = sum(phase.result["errors"].values())
                    print(
                        f"  round {rnd + 1}/{options.rounds} {workload.label:>10} c={concurrency:<3} {path:<11} "
                        f"{phase.result['rps']:8.1f} req/s p50 {phase.result['p50']:7.2f} ms "
                        f"cpu {phase.server_cpu_ms:6.2f} ms/req" + (f" ERRORS {errors}" if errors else ""),
                        flush=True,
                    )
    return phases


@dataclass
class CellSummary:
    """One path in one cell, over the rounds."""

    path: str
    label: str
    stream: bool
    tokens: int
    concurrency: int
    rounds: int
    requests: int
    rps: float
    p50: float
    p99: float
    ttft_p50: float | None
    ttft_p99: float | None
    added_p50: float | None
    added_p99: float | None
    added_ttft_p50: float | None
    added_ttft_p99: float | None
    cpu_ms: float
    rss_mib: float
    p50_spread: float
    cpu_spread: float
    errors: dict[str, int]
    load: dict[str, float]
    bound: str


def _bound(load: dict[str, float], path: str) -> str:
    """Which process limited the cell: one near a full core, else none (latency-bound)."""
    name, busiest = max(load.items(), key=lambda item: item[1])
    if busiest >= 0.85:
        who = {"server": "direct upstream" if path == "direct" else "server"}.get(name, name)
        return f"{who} CPU ({busiest:.2f} cores)"
    return "round trips (no process saturated)"


def _opt(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _added(group: list[Phase], direct: dict[int, Phase], metric: str) -> float | None:
    """Median over rounds of ``metric`` on the path minus the direct path's in the same round."""
    diffs = [
        p.result[metric] - direct[p.round].result[metric]
        for p in group
        if p.round in direct and p.result[metric] is not None and direct[p.round].result[metric] is not None
    ]
    return _opt(median(diffs)) if diffs else None


def summarise(phases: list[Phase]) -> list[CellSummary]:
    """Medians per path and cell; added figures against ``direct`` of the same round."""
    by_key: dict[tuple[str, bool, int, int], list[Phase]] = {}
    for phase in phases:
        by_key.setdefault((phase.path, phase.stream, phase.tokens, phase.concurrency), []).append(phase)
    summaries = []
    for (path, stream, tokens, concurrency), group in by_key.items():
        direct = {p.round: p for p in by_key.get(("direct", stream, tokens, concurrency), [])}
        if path == "direct":
            direct = {}  # no figure is "added" to the baseline itself

        errors: dict[str, int] = {}
        for phase in group:
            for kind, count in phase.result["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        load = {name: median([p.load[name] for p in group]) for name in group[0].load}
        summaries.append(
            CellSummary(
                path=path,
                label=Workload(stream, tokens).label,
                stream=stream,
                tokens=tokens,
                concurrency=concurrency,
                rounds=len(group),
                requests=sum(p.result["requests"] for p in group),
                rps=median([p.result["rps"] for p in group]),
                p50=median([p.result["p50"] for p in group]),
                p99=median([p.result["p99"] for p in group]),
                ttft_p50=_opt(median([p.result["ttft_p50"] for p in group])) if stream else None,
                ttft_p99=_opt(median([p.result["ttft_p99"] for p in group])) if stream else None,
                added_p50=_added(group, direct, "p50"),
                added_p99=_added(group, direct, "p99"),
                added_ttft_p50=_added(group, direct, "ttft_p50") if stream else None,
                added_ttft_p99=_added(group, direct, "ttft_p99") if stream else None,
                cpu_ms=median([p.server_cpu_ms for p in group]),
                rss_mib=max(p.server_rss for p in group) / 2**20,
                p50_spread=spread([p.result["p50"] for p in group]),
                cpu_spread=spread([p.server_cpu_ms for p in group]),
                errors=errors,
                load=load,
                bound=_bound(load, path),
            )
        )
    return summaries


def chunk_fits(summaries: list[CellSummary]) -> dict[str, tuple[float, float]]:
    """Per path: ``(fixed ms, ms per chunk)`` of server CPU, fitted over 1, 16, 64 and 256 tokens
    streamed at concurrency 1."""
    fits = {}
    for path in {s.path for s in summaries}:
        points = {s.tokens: s.cpu_ms for s in summaries if s.path == path and s.stream and s.concurrency == 1}
        if all(tokens in points for tokens in CHUNK_FIT_TOKENS):
            fits[path] = line_fit(list(CHUNK_FIT_TOKENS), [points[t] for t in CHUNK_FIT_TOKENS])
    return fits


@dataclass
class SuiteResult:
    """Everything the report needs."""

    options: dict[str, Any]
    summaries: list[CellSummary]
    fits: dict[str, tuple[float, float]]
    versions: dict[str, str]
    phases: list[Phase]

    def to_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "summaries": [asdict(s) for s in self.summaries],
            "fits": {path: {"fixed_ms": fixed, "per_chunk_ms": slope} for path, (fixed, slope) in self.fits.items()},
            "versions": self.versions,
            "phases": [asdict(p) for p in self.phases],
        }


def versions(env: Environment) -> dict[str, str]:
    """Versions of what was measured (packages of this environment, and LiteLLM's)."""
    import importlib.metadata as metadata
    import platform

    found = {"python": platform.python_version()}
    for package in (
        "gtl-nb",
        "uvicorn",
        "starlette",
        "h11",
        "websockets",
        "httpx",
        "aiohttp",
        "uvloop",
        "grpcio",
        "aioquic",
        "msgspec",
        "pyjwt",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    if env.litellm is not None:
        found["litellm"] = litellm_version()
    return found


def run(options: Options, work_dir: Path | None = None, progress: bool = True) -> SuiteResult:
    """Start everything, run the rounds, stop everything; the summaries."""
    with tempfile.TemporaryDirectory(prefix="gtl-bench-") as tmp:
        directory = work_dir or Path(tmp)
        env = start(options, directory)
        try:
            if progress:
                print(f"bench: paths {', '.join(env.specs)}; {len(options.cells())} cells x {options.rounds} rounds")
            phases = run_rounds(env, options, progress)
            found = versions(env)
        finally:
            env.stop()
    summaries = summarise(phases)
    options_json = asdict(options)
    options_json["workloads"] = [w.label for w in options.workloads]
    return SuiteResult(options_json, summaries, chunk_fits(summaries), found, phases)


def write_json(result: SuiteResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
