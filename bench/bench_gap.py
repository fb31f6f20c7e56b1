"""GAP's wrap of a long message against one regular-expression pass over the same text.

``gap.wrap_message`` finds the message's entities (product names and versions, file references,
components, "the system"-style references) and builds the wrapped message; ``%%gap`` and ``gtl gap
wrap`` run it on whatever a user pastes, up to GAP's 16 MiB limit. The workload is generated prose
(a fixed seed) in which about one word in twelve is something entity detection looks for — names
with versions, paths, file names, calls, code spans, URLs, references. The baseline is
``re.findall(r"\\w+", text)``: one pass of the regex engine over the text, about the least work any
scan of it does. Measured in interleaved rounds, best of each; reported as milliseconds, megabytes a
second and the ratio to the baseline (what bounds it: the passes entity detection makes, each a
C-level scan, and the Python work per candidate it finds).

Run: ``python -m bench.bench_gap [--sizes 0.1,1] [--rounds N] [--smoke]``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from dataclasses import dataclass

from bench.timing import interleaved
from gtl_nb import gap

_SENTENCE = (
    "the quick brown fox jumps over a lazy dog and then we consider how data flows through a program "
    "while users wait for results from remote calls over networks that drop packets now and again"
)
WORDS = tuple(_SENTENCE.split(" "))
PIECES = (
    "PostgreSQL 14.5", "Redis", "Python 3.11", "Node.js 20", "React", "Django 4.2", "v2.3.1", "version 1.2",
    "src/app.py", "config.yaml", "/etc/hosts", "~/notes", ".env", "Dockerfile", "AuthService", "HTTPClient",
    "parse_args()", "`a code span`", "the system", "these APIs", "the database PostgreSQL 14",
    "https://example.com/a/b.py", "Go 1.21", "Ubuntu 22.04", "Spring Boot", "scikit-learn", "pandas",
    "my server", "\n\n", "Next.js", "e.g.", "1.5",
)  # fmt: skip
_WORD = re.compile(r"\w+")


def prose(size: int, seed: int = 1) -> str:
    """``size`` characters of sentences, about one word in twelve a piece entity detection looks for."""
    rnd = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        words = [rnd.choice(PIECES) if rnd.random() < 0.08 else rnd.choice(WORDS) for _ in range(rnd.randint(6, 20))]
        sentence = " ".join(words).capitalize() + rnd.choice(".?!.") + " "
        out.append(sentence)
        length += len(sentence)
    return "".join(out)[:size]


@dataclass
class Row:
    size: int
    wrap_ms: float
    baseline_ms: float
    entities: int

    @property
    def ratio(self) -> float:
        return self.wrap_ms / self.baseline_ms

    @property
    def megabytes_a_second(self) -> float:
        return self.size / 1e6 / (self.wrap_ms / 1e3)


def measure(sizes: list[float], rounds: int) -> list[Row]:
    """One row per size (megabytes of text)."""
    rows = []
    for megabytes in sizes:
        text = prose(int(megabytes * 1_000_000))
        wrapped = gap.wrap_message(text, platform="claude.ai", chat_id="bench")

        def wrap(text: str = text) -> object:
            return gap.wrap_message(text, platform="claude.ai", chat_id="bench")

        def baseline(text: str = text) -> object:
            return _WORD.findall(text)

        ours, floor = interleaved(wrap, baseline, rounds=rounds, number=1)
        rows.append(Row(len(text), ours * 1e3, floor * 1e3, len(wrapped.entities)))
    return rows


def report(rows: list[Row]) -> str:
    lines = [
        "| text | `wrap_message` (ms) | MB/s | one `\\w+` pass (ms) | ÷ that pass | entities |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.size / 1e6:g} MB | {row.wrap_ms:,.1f} | {row.megabytes_a_second:.2f} | {row.baseline_ms:,.1f} "
            f"| {row.ratio:.1f}× | {row.entities} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.1,1", help="megabytes of text, comma-separated (default: 0.1,1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="10 kB, one round: the pipeline runs (no figures)")
    args = parser.parse_args(argv)
    sizes = [0.01] if args.smoke else [float(size) for size in args.sizes.split(",")]
    print(report(measure(sizes, 1 if args.smoke else args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
