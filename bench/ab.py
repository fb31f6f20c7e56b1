"""Gateway variants against each other, interleaved: source revisions, or settings of one tree.

    python -m bench.ab --rev HEAD~1 --rev HEAD [--rounds 5] [--duration 3] [--cells whole:1,stream:1]
    python -m bench.ab --rev HEAD --rev HEAD        # the noise floor: the same tree twice
    python -m bench.ab --rev HEAD --rev HEAD --upstream-client aiohttp --upstream-client httptools
    python -m bench.ab --rev main --rev my-branch --path gtl-ws     # another binding path
    python -m bench.ab --rev HEAD --rev HEAD --env '' --env GTL_NB_LOG=DEBUG   # one tree, two environments

Each variant is a ``gtl serve`` with the suite's configuration (GhostToken checked, SQLite ledger and
audit log on, ``bench.gateway_setup``) behind one fast fake upstream; a ``--rev`` is checked out in a
temporary git worktree and its gateway imports that tree (``PYTHONPATH``). One load client drives the
OpenAI-compatible endpoint (or ``--path``) of each variant in turn, cell by cell, the variants' order reversed every
other round (A B, B A, ...) so a drift of the machine weighs on both alike. Prints the gateway's CPU per
request (from /proc) and the p50 and p99 latency per variant and round, then the medians and each variant's
ratio to the first. ``bench.ab_event_loop`` compares settings of this tree the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import gateway_setup
from bench.paths import GATEWAY_PATHS, PathSpec, gateway_paths
from bench.procstat import descendants, tree_usage
from bench.servers import Gateway, LoadClientProcess, Upstream

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CELLS = ((False, 1), (True, 1), (True, 10))  # (streamed, concurrency)


@dataclass(frozen=True)
class Variant:
    """One gateway to compare: its name, ``[gateway]`` settings, and the source tree it imports."""

    name: str
    limits: dict[str, Any] = field(default_factory=dict)
    tree: Path | None = None
    """A checkout whose ``gtl_nb`` the gateway imports instead of this one."""
    upstream: dict[str, Any] = field(default_factory=dict)
    """``[upstream]`` settings (``{"client": "aiohttp"}``)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables of its ``gtl serve`` (``{"GTL_NB_LOG": "INFO"}``)."""


@dataclass
class Figures:
    """Per (variant, streamed, concurrency): CPU ms per request, p50 and p99 ms, one value per round."""

    cpu: dict[tuple[str, bool, int], list[float]] = field(default_factory=dict)
    p50: dict[tuple[str, bool, int], list[float]] = field(default_factory=dict)
    p99: dict[tuple[str, bool, int], list[float]] = field(default_factory=dict)


def _kind(stream: bool) -> str:
    return "stream" if stream else "whole"


def compare(
    variants: Sequence[Variant],
    *,
    cells: Sequence[tuple[bool, int]] = DEFAULT_CELLS,
    rounds: int = 4,
    duration: float = 3.0,
    tokens: int = 16,
    path: str = "gtl-openai",
) -> Figures:
    """Run the interleaved rounds (module docstring) and return every figure, printing each as it comes."""
    upstream = Upstream()
    client = LoadClientProcess()
    folder = Path(tempfile.mkdtemp(prefix="gtl-ab-"))
    running: list[tuple[Variant, Gateway, PathSpec, list[int]]] = []
    figures = Figures()
    try:
        for number, variant in enumerate(variants):
            files = gateway_setup.prepare(
                folder / f"v{number}",
                upstream.port,
                grpc=False,
                quic=False,
                limits=variant.limits or None,
                upstream=variant.upstream or None,
            )
            if variant.tree is not None:
                files.env["PYTHONPATH"] = str(variant.tree)
            files.env.update(variant.env)
            gateway = Gateway(files)
            # each variant's path has its own name: the load client keeps its connections per name
            spec = replace(gateway_paths(gateway, files, [path])[path], name=f"{path}-v{number}")
            running.append((variant, gateway, spec, descendants(gateway.pid)))
        for round_ in range(rounds):
            order = running if round_ % 2 == 0 else running[::-1]
            for stream, concurrency in cells:
                for variant, _, spec, pids in order:
                    before: list[float] = []
                    command = {
                        "path": spec.to_json(),
                        "stream": stream,
                        "tokens": tokens,
                        "concurrency": concurrency,
                        "duration": duration,
                        "requests": 0,
                        "warmup": 50,
                    }
                    result = client.phase(
                        command, lambda pids=pids, before=before: before.append(tree_usage(0, pids).cpu)
                    )
                    per_request = (tree_usage(0, pids).cpu - before[0]) * 1000 / max(result["requests"], 1)
                    key = (variant.name, stream, concurrency)
                    figures.cpu.setdefault(key, []).append(per_request)
                    figures.p50.setdefault(key, []).append(result["p50"])
                    figures.p99.setdefault(key, []).append(result["p99"])
                    print(
                        f"round {round_} {variant.name:24s} {_kind(stream):6s} c={concurrency:<3d} "
                        f"cpu {per_request:.3f} ms/req, p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms",
                        flush=True,
                    )
    finally:
        for _, gateway, _, _ in running:
            gateway.stop()
        client.close()
        upstream.stop()
    return figures


def summary(variants: Sequence[Variant], figures: Figures, cells: Sequence[tuple[bool, int]]) -> str:
    """Medians per cell and variant (CPU ms per request / p50 / p99 ms), with each CPU ratio to the first variant."""
    lines = ["medians (gateway CPU ms per request / p50 ms / p99 ms; ratio = CPU against the first variant):"]
    for stream, concurrency in cells:
        base = statistics.median(figures.cpu[(variants[0].name, stream, concurrency)])
        parts = []
        for variant in variants:
            key = (variant.name, stream, concurrency)
            cpu, p50 = statistics.median(figures.cpu[key]), statistics.median(figures.p50[key])
            p99 = statistics.median(figures.p99[key])
            parts.append(f"{variant.name} {cpu:.3f} / {p50:.2f} / {p99:.2f} ({cpu / base:.2f}x)")
        lines.append(f"  {_kind(stream)} c={concurrency}: " + "  ".join(parts))
    return "\n".join(lines)


@contextlib.contextmanager
def worktrees(revisions: Sequence[str]) -> Iterator[list[Path]]:
    """Each revision checked out (detached) in a temporary worktree of this repository; removed after."""
    parent = Path(tempfile.mkdtemp(prefix="gtl-ab-trees-"))
    trees: list[Path] = []
    try:
        for number, revision in enumerate(revisions):
            tree = parent / f"r{number}"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(tree), revision], check=True
            )
            trees.append(tree)
        yield trees
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def parse_cells(text: str) -> tuple[tuple[bool, int], ...]:
    """``"whole:1,stream:10"`` as ``((False, 1), (True, 10))``."""
    cells = []
    for item in text.split(","):
        kind, _, concurrency = item.strip().partition(":")
        if kind not in ("whole", "stream") or not concurrency.isdigit():
            raise argparse.ArgumentTypeError(f"a cell is whole:N or stream:N, not {item!r}")
        cells.append((kind == "stream", int(concurrency)))
    return tuple(cells)


def parse_env(text: str) -> dict[str, str]:
    """``NAME=VALUE[,NAME=VALUE]`` (``""``: nothing) as a dict."""
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    if any(not name or not sep for name, sep, _ in pairs):
        raise SystemExit(f"--env takes NAME=VALUE[,NAME=VALUE], not {text!r}")
    return {name.strip(): value for name, _, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", required=True, help="a git revision (one per variant)")
    parser.add_argument(
        "--upstream-client",
        action="append",
        default=[],
        help="[upstream] client of each variant, in the order of --rev (one value: every variant)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="environment of each variant's gtl serve, in the order of --rev: NAME=VALUE[,NAME=VALUE], or '' for none",
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--cells", type=parse_cells, default=DEFAULT_CELLS, help="e.g. whole:1,stream:1,stream:10")
    parser.add_argument("--path", choices=GATEWAY_PATHS[:3], default="gtl-openai", help="the gateway path measured")
    options = parser.parse_args()
    clients = (
        options.upstream_client * len(options.rev) if len(options.upstream_client) == 1 else options.upstream_client
    )
    if len(options.rev) < 2 or (clients and len(clients) != len(options.rev)):
        parser.error("give two or more --rev, and one --upstream-client or one per --rev")
    if options.env and len(options.env) != len(options.rev):
        parser.error("give one --env per --rev ('' for none)")
    environments = [parse_env(text) for text in options.env] or [{} for _ in options.rev]
    with worktrees(options.rev) as trees:
        variants = [
            Variant(
                f"{number}:{revision}{':' + clients[number] if clients else ''}"[:24],
                tree=tree,
                upstream={"client": clients[number]} if clients else {},
                env=environments[number],
            )
            for number, (revision, tree) in enumerate(zip(options.rev, trees, strict=True))
        ]
        figures = compare(
            variants,
            cells=options.cells,
            rounds=options.rounds,
            duration=options.duration,
            tokens=options.tokens,
            path=options.path,
        )
    print()
    print(summary(variants, figures, options.cells))


if __name__ == "__main__":
    main()
