"""The benchmark suite still works end to end: ``python -m bench --smoke`` (what ``make bench-smoke`` runs).

No figure is asserted — timing never belongs in a test — only that the whole pipeline ran: the fake
upstream, the gateway started with ``gtl serve`` (tokens, ledger and audit on), the load client, every
path measured with zero errors, and the report printed. The smoke run leaves ``docs/benchmarks.md``
alone and takes well under a minute. The second case does the same for ``python -m bench.bench_stores
--smoke`` (``make bench-stores``: the gateway on Redis and PostgreSQL against its one-process stores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATHS = {"direct", "gtl-openai", "gtl-sse", "gtl-ws", "gtl-grpc", "gtl-quic"}


def run_bench(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m ARGUMENTS`` from the repository, this tree on the path; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.timeout(90)
def test_smoke_run_measures_every_path_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    docs = REPO / "docs" / "benchmarks.md"
    before = docs.read_bytes() if docs.exists() else None
    done = run_bench("bench", "--smoke", "--json", str(out), timeout=80)
    result = json.loads(out.read_text())
    summaries = result["summaries"]
    assert {s["path"] for s in summaries} == PATHS
    for summary in summaries:
        where = f"{summary['path']} {summary['label']} c={summary['concurrency']}"
        assert summary["requests"] > 0, where
        assert summary["errors"] == {}, f"{where}: {summary['errors']}"

    # each path ran each cell of the smoke grid
    def cell(summary: dict) -> tuple[bool, int, int]:
        return summary["stream"], summary["tokens"], summary["concurrency"]

    cells = {cell(s) for s in summaries}
    assert all(sum(1 for s in summaries if cell(s) == c) == len(PATHS) for c in cells)
    assert "### Targets of issue 13" in done.stdout
    assert "Codec and frame decoder" in done.stdout
    assert (docs.read_bytes() if docs.exists() else None) == before, "the smoke run must not rewrite the docs"


@pytest.mark.timeout(60)
def test_stores_smoke_run_measures_every_configuration(tmp_path: Path) -> None:
    """``python -m bench.bench_stores --smoke`` (``make bench-stores`` in small): a real redis-server and
    PostgreSQL, one gateway per store configuration, every cell measured without errors, the report
    printed, the docs left alone. No figure is asserted."""
    from bench.stores_servers import missing

    why = missing()
    if why is not None:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{why}; CI must run the stores bench smoke (.ci/run installs them)", pytrace=False)
        pytest.skip(why)
    out = tmp_path / "stores.json"
    docs = REPO / "docs" / "benchmarks.md"
    before = docs.read_bytes() if docs.exists() else None
    done = run_bench("bench.bench_stores", "--smoke", "--json", str(out), timeout=50)
    result = json.loads(out.read_text())
    configs = set(result["options"]["configs"])
    assert {"sqlite", "memory", "redis", "postgres", "redis+pg"} <= configs
    summaries = result["summaries"]
    assert {s["config"] for s in summaries} == configs
    for summary in summaries:
        where = f"{summary['config']} {summary['label']} c={summary['concurrency']}"
        assert summary["requests"] > 0 and summary["errors"] == {}, f"{where}: {summary['errors']}"
        for key in ("rps", "p50", "gateway_ms", "redis_ms", "postgres_ms", "rss_mib"):
            assert isinstance(summary[key], (int, float)), f"{where}: {key}"
    assert {s["label"] for s in summaries} == {"whole 16", "stream 16"}
    assert all(s["redis_per_request"] for s in summaries if "redis" in s["config"])
    assert {"postgres", "redis+pg"} <= set(result["postgres"])
    assert {row["what"] for row in result["window"]} == {"budget", "breaker"}
    for heading in (
        "### Per request, against the baseline",
        "### Round trips to the stores",
        "### Sizing from this run",
    ):
        assert heading in done.stdout
    assert (docs.read_bytes() if docs.exists() else None) == before, "the smoke run must not rewrite the docs"


@pytest.mark.timeout(90)
def test_the_embedded_benchmark_runs_every_path_and_reports_both_baselines(tmp_path: Path) -> None:
    """``python -m bench.bench_embedded`` with tiny counts: the bare aiohttp and httpx calls, the aiohttp
    call that also reads the answer, and the embedded client each measured in every phase (the engine
    on the caller's loop, whole call and engine alone, in the awaited ones), the many-streams phase without errors."""
    out = tmp_path / "embedded.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bench.bench_embedded", "--rounds", "1", "--calls", "20", "--streams", "5"]
    done = subprocess.run([*command, "--json", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    for phase in ("c1_sync", "c1_async", "c20_cpu"):
        # gtl_nb.aconnect's client and its engine alone: awaited only
        on_callers_loop = {"callers", "engine_only"} if phase != "c1_sync" else set()
        assert set(figures[f"{phase}_ms"]) == {"bare", "read", "httpx", "embedded"} | on_callers_loop
        assert all(value > 0 for value in figures[f"{phase}_ms"].values())
    assert figures["stream_errors"] == 0, figures["first_error"]
    assert "| bare aiohttp | bare httpx | embedded |" in done.stdout
    assert "| bare aiohttp, answer read (ms) | embedded (ms) |" in done.stdout  # the call that reads the answer
    assert "| bare aiohttp (ms) | engine alone (ms) |" in done.stdout  # where the gap lies


@pytest.mark.timeout(90)
def test_the_ledger_commits_comparison_measures_each_client_and_every_row_is_written() -> None:
    """``python -m bench.ab_ledger_commits`` with tiny counts: every client measured in every phase,
    and each ledger holds one ``ok`` row per request (the thread's and the loop's commits alike)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "bench.ab_ledger_commits", "--rounds", "1", "--calls", "40"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == ["bare", "thread", "loop", "off", "lt-thread", "lt-loop"]
    # warm-up 50 + 40 at concurrency 20 + 6 awaited (+ 6 from a thread for the connect clients)
    for name, count in (("thread", 96), ("loop", 96), ("lt-thread", 102), ("lt-loop", 102)):
        where = name.removeprefix("lt-")  # each client's ledger committed where its configuration said
        assert f"{name}: {{'ok': {count}}}, committed on the {where}" in done.stdout, done.stdout


@pytest.mark.timeout(90)
def test_the_scale_benchmark_holds_a_few_sessions_over_http2_and_http1(tmp_path: Path) -> None:
    """``make bench-scale``'s pipeline in miniature (the 10,000-session run is never in CI): SSE and
    WebSocket sessions from several source addresses, each with its own paced upstream stream, every
    token and ``done`` received — over the HTTP/2 upstream client, then over HTTP/1.1."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for client in ("h2", "httptools"):
        out = tmp_path / f"scale-{client}.json"
        command = [sys.executable, "-m", "bench.scale", "--sessions", "24", "--hold", "3", "--pace", "0.5"]
        command += ["--rate", "48", "--clients", "2", "--upstream-client", client, "--json", str(out)]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=40)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["upstream_client"] == client
        assert result["ok"] == 24 and result["errors"] == {} and result["lost_tokens"] == 0
        assert result["probe_sessions"] >= 1 and not result["gateway_errors_logged"]
        assert result["gc_pauses"]["0"]["count"] > 0  # read from the gateway's gtl_gc_pause_seconds


def test_counting_some_paths_keeps_the_order_of_the_counted_dumps() -> None:
    """``bench_embedded --callgrind --only KINDS`` numbers its dumps in ``COUNTED``'s order, the kinds
    left out skipped: worker and reader must agree on which dump is which path."""
    sys.path.insert(0, str(REPO))
    from bench.bench_embedded import COUNTED, _counted

    assert _counted(None) == list(COUNTED)
    chosen = _counted({"bare", "callers"})
    assert [(group, how) for _, group, how in chosen] == [(1, "bare"), (20, "bare"), (1, "callers"), (20, "callers")]


@pytest.mark.timeout(60)
def test_engine_parts_smoke_run_measures_every_path(tmp_path: Path) -> None:
    """``python -m bench.engine_parts --smoke``: every path of the engine's decomposition ran (its own
    check that the parts give the engine's answer included) and is in the table; no figure asserted."""
    from bench.engine_parts import PATHS

    done = run_bench("bench.engine_parts", "--smoke", timeout=50)
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[2:] == list(PATHS)  # (after the head and its rule)


@pytest.mark.timeout(60)
def test_engine_lines_counts_every_path_and_the_counts_repeat() -> None:
    """``python -m bench.engine_lines``: each path's lines a session are counted (the parts' answer
    checked against the engine's first), the engine executes more than its parts, the general path
    more than the lane and the whole call more than the engine, and — the point of counting lines —
    two runs agree to within 2 %."""

    def totals(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
        found = {}
        for line in done.stdout.splitlines():
            cells = [cell.strip() for cell in line.split("|")[1:-1]]
            if len(cells) == 2 and cells[1].replace(",", "").isdigit():
                found[cells[0]] = int(cells[1].replace(",", ""))
        return found

    first, second = (totals(run_bench("bench.engine_lines", "--sessions", "20", timeout=25)) for _ in range(2))
    assert list(first) == ["parts", "engine", "general", "whole"], first
    assert 0 < first["parts"] < first["engine"] < first["whole"]
    assert first["engine"] < first["general"]  # the lane (``session._run_lane``) runs fewer lines
    assert all(abs(first[path] - second[path]) <= first[path] * 0.02 for path in first), (first, second)


@pytest.mark.timeout(60)
def test_the_gap_wrap_benchmark_runs(tmp_path: Path) -> None:
    done = run_bench("bench.bench_gap", "--smoke", timeout=60)
    assert "| 0.01 MB |" in done.stdout and "wrap_message" in done.stdout
