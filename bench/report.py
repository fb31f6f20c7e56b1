"""The suite's results as markdown: printed, and written between two markers in ``docs/benchmarks.md``.

Only the part between ``<!-- bench:results:start -->`` and ``<!-- bench:results:end -->`` is
generated; the method, the profile findings and the alternatives around it are written by hand.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.suite import BINDING, CellSummary, SuiteResult

START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
REPO = Path(__file__).resolve().parents[1]

#: issue 13's targets (milliseconds)
ADDED_P50, ADDED_P99, ADDED_AIM = 1.0, 2.0, 0.5
CPU_WHOLE, CPU_STREAM16 = 0.7, 1.2


def machine() -> str:
    """CPU model, cores, kernel and load average, in one line."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, load average {load} at the end"


def revision() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _ms(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _verdict(value: float | None, limit: float) -> str:
    if value is None or not math.isfinite(value):
        return "not measured"
    return "meets" if value <= limit else "**misses**"


def _find(summaries: list[CellSummary], path: str, stream: bool, tokens: int, concurrency: int) -> CellSummary | None:
    for summary in summaries:
        if (summary.path, summary.stream, summary.tokens, summary.concurrency) == (path, stream, tokens, concurrency):
            return summary
    return None


def targets_table(result: SuiteResult) -> list[str]:
    """Issue 13's targets next to what each gateway path measured (concurrency 1, 16 tokens)."""
    rows = [
        "| path | added p50 / p99, whole answer | added p50 / p99, 16-token stream | added TTFT p50 / p99 "
        "| CPU per request (≤ 0.7) | CPU per 16-token stream (≤ 1.2) | CPU per chunk | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in [p for p in ("gtl-openai", "gtl-sse", "gtl-ws", "gtl-grpc", "gtl-quic", "litellm")]:
        whole = _find(result.summaries, path, False, 16, 1)
        stream = _find(result.summaries, path, True, 16, 1)
        if whole is None and stream is None:
            continue
        fit = result.fits.get(path)
        figures = {
            "added p50 whole": (whole and whole.added_p50, ADDED_P50),
            "added p99 whole": (whole and whole.added_p99, ADDED_P99),
            "added p50 stream": (stream and stream.added_p50, ADDED_P50),
            "added p99 stream": (stream and stream.added_p99, ADDED_P99),
            "added TTFT p50": (stream and stream.added_ttft_p50, ADDED_P50),
            "added TTFT p99": (stream and stream.added_ttft_p99, ADDED_P99),
            "CPU whole": (whole and whole.cpu_ms, CPU_WHOLE),
            "CPU stream": (stream and stream.cpu_ms, CPU_STREAM16),
        }
        missed = [name for name, (value, limit) in figures.items() if _verdict(value, limit) != "meets"]
        binding = "binding" if path in BINDING else ("peer" if path == "litellm" else "report-only")
        verdict = f"{binding}: " + ("meets all 8" if not missed else f"misses {len(missed)} of 8")
        rows.append(
            f"| {path} | {_ms(figures['added p50 whole'][0])} / {_ms(figures['added p99 whole'][0])} "
            f"| {_ms(figures['added p50 stream'][0])} / {_ms(figures['added p99 stream'][0])} "
            f"| {_ms(figures['added TTFT p50'][0])} / {_ms(figures['added TTFT p99'][0])} "
            f"| {_ms(figures['CPU whole'][0])} | {_ms(figures['CPU stream'][0])} "
            f"| {_ms(fit[1], 3) if fit else '–'} ms (fixed {_ms(fit[0]) if fit else '–'}) | {verdict} |"
        )
    return rows


def peer_table(result: SuiteResult) -> list[str]:
    """Each gateway path against the direct baseline and against LiteLLM, same cells."""
    rows = [
        "| path | cell | p50 ÷ direct | added p50 ÷ LiteLLM's | CPU/request ÷ LiteLLM's | requests/s per core |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for summary in result.summaries:
        if summary.path in ("direct", "litellm") or summary.tokens not in (16, 256) or summary.concurrency != 1:
            continue
        direct = _find(result.summaries, "direct", summary.stream, summary.tokens, summary.concurrency)
        peer = _find(result.summaries, "litellm", summary.stream, summary.tokens, summary.concurrency)
        ratio_direct = summary.p50 / direct.p50 if direct and direct.p50 else math.nan
        ratio_added = (
            summary.added_p50 / peer.added_p50
            if peer and peer.added_p50 and summary.added_p50 is not None
            else math.nan
        )
        ratio_cpu = summary.cpu_ms / peer.cpu_ms if peer and peer.cpu_ms else math.nan
        per_core = 1000 / summary.cpu_ms if summary.cpu_ms > 0 else math.nan
        rows.append(
            f"| {summary.path} | {summary.label}, c=1 | {_ms(ratio_direct, 1)}× | {_ms(ratio_added)}× "
            f"| {_ms(ratio_cpu)}× | {_ms(per_core, 0)} |"
        )
    return rows


def full_table(result: SuiteResult) -> list[str]:
    rows = [
        "| path | workload | c | req/s | p50 | p99 | TTFT p50 | TTFT p99 | added p50 | added p99 | added TTFT p50 "
        "| errors | server CPU ms/req | RSS MiB | p50 spread | bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {name: index for index, name in enumerate(result.options["paths"])}
    for s in sorted(result.summaries, key=lambda s: (s.concurrency, not s.stream, s.tokens, order.get(s.path, 99))):
        errors = sum(s.errors.values())
        rows.append(
            f"| {s.path} | {s.label} | {s.concurrency} | {s.rps:.0f} | {_ms(s.p50)} | {_ms(s.p99)} "
            f"| {_ms(s.ttft_p50)} | {_ms(s.ttft_p99)} | {_ms(s.added_p50)} | {_ms(s.added_p99)} "
            f"| {_ms(s.added_ttft_p50)} | {errors} | {_ms(s.cpu_ms)} | {s.rss_mib:.0f} "
            f"| ±{_ms(s.p50_spread * 100, 0)} % | {s.bound} |"
        )
    return rows


def codec_lines(codec: dict[str, float] | None) -> list[str]:
    if not codec:
        return []
    return [
        "",
        "### Codec and frame decoder (events/s, against the standard library's json, same run)",
        "",
        "| what | gtl_nb | json | ratio |",
        "| --- | --- | --- | --- |",
        f"| typed decode + encode (validating) | {codec['codec_events_per_s']:,.0f} "
        f"| {codec['json_events_per_s']:,.0f} | {codec['codec_ratio']:.1f}× |",
        f"| typed decode | {codec['decode_events_per_s']:,.0f} | {codec['json_decode_events_per_s']:,.0f} "
        f"| {codec['decode_events_per_s'] / codec['json_decode_events_per_s']:.1f}× |",
        f"| FrameDecoder on 1,400-byte pieces | {codec['frame_decoder_events_per_s']:,.0f} "
        f"| {codec['json_lines_events_per_s']:,.0f} "
        f"| {codec['frame_decoder_events_per_s'] / codec['json_lines_events_per_s']:.1f}× |",
        *(
            f"| {label} | {codec[ours]:,.0f} | {codec[theirs]:,.0f} | {codec[ours] / codec[theirs]:.1f}× |"
            for label, ours, theirs in (
                (
                    "connection, gateway's end: event → checked frame",
                    "connection_send_events_per_s",
                    "json_dumps_events_per_s",
                ),
                (
                    "connection, client's end: bytes → checked events",
                    "connection_receive_events_per_s",
                    "json_receive_events_per_s",
                ),
            )
            if ours in codec
        ),
    ]


def markdown(result: SuiteResult, codec: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> str:
    """The generated section of ``docs/benchmarks.md``."""
    options = result.options
    versions = ", ".join(f"{name} {version}" for name, version in result.versions.items())
    fits = "; ".join(
        f"{path} {fixed:.2f} ms + {slope * 1000:.1f} µs/chunk" for path, (fixed, slope) in sorted(result.fits.items())
    )
    concurrencies = ", ".join(map(str, options["concurrencies"]))
    lines = [
        f"Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, gtl_nb {revision()}; {machine()}.",
        f"Versions: {versions}.",
        f"{options['rounds']} interleaved rounds; each phase {options['duration']:g} s of closed loop "
        f"after {options['warmup']} warm-up request(s) per worker; concurrency {concurrencies}.",
        "",
        "### Targets of issue 13 (concurrency 1; milliseconds; added = path − direct, per round, median)",
        "",
        *targets_table(result),
        "",
        "### Against the direct baseline and LiteLLM",
        "",
        *peer_table(result),
        "",
        f"Server CPU per chunk (fit over 1, 16, 64, 256 streamed tokens, concurrency 1): {fits or 'not run'}.",
        "",
        "### Every cell (medians over rounds; ms; server = the gateway, LiteLLM, or for `direct` the upstream)",
        "",
        *full_table(result),
        *codec_lines(codec),
    ]
    for title, text in (extra or {}).items():
        lines += ["", f"### {title}", "", str(text)]
    return "\n".join(lines) + "\n"


def write_docs(generated: str, path: Path) -> None:
    """Replace the generated section of ``path`` (create the file with only that section if missing)."""
    block = f"{START}\n{generated}{END}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            path.write_text(head + block + tail, encoding="utf-8")
            return
        path.write_text(text.rstrip("\n") + "\n\n" + block + "\n", encoding="utf-8")
        return
    path.write_text("# Benchmarks\n\n" + block + "\n", encoding="utf-8")
