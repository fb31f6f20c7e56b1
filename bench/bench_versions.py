"""This tree against an earlier commit: the same streamed answer, the same upstream, interleaved rounds.

``python -m bench.bench_versions [REV]`` checks REV out in a temporary worktree, makes a temporary
virtual environment whose ``gtl_nb`` is that commit's source (the third-party dependencies are this
project's ``.venv``'s, so only gtl_nb differs), and starts one worker process per version. Both talk
to one OpenAI simulator on loopback, each with its own SQLite ledger; the parent alternates rounds
between them and keeps each one's best time per answer, so drift on this shared machine hits both.
The figure is ``this tree / REV``: above 1 means this tree is slower.

REV defaults to ``BASELINE``, the last commit before the engine was rebuilt on seams (builder,
stores, request context, backend).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

import gtl_nb

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("version_worker.py")
#: the commit before "Seams before the gateway" (see the module docstring)
BASELINE = "606af2e"
#: the simulator's options for both workers (none needed: the model asked for is a real one)
SIMULATOR_OPTIONS: dict[str, object] = {}


def prepare(rev: str, where: Path) -> Path:
    """A python whose ``gtl_nb`` is ``rev``'s source (checked out in ``where/src``); its interpreter."""
    where.mkdir(parents=True, exist_ok=True)
    source = where / "src"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(source), rev], check=True, capture_output=True
    )
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # .pth files are read in name order: the old source first, then this project's dependencies
    Path(site, "a_gtl_nb_baseline.pth").write_text(f"{source}\n")
    Path(site, "b_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


class Worker:
    """One version's worker process (``version_worker.py``), driven over its stdin/stdout."""

    def __init__(self, python: str, base_url: str, ledger: Path, label: str) -> None:
        self.label = label
        self.process = subprocess.Popen(
            [python, str(WORKER), base_url, str(ledger)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ledger.parent,
        )
        self.location = self._read()  # the worker says which gtl_nb it imported

    def _read(self) -> str:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the {self.label} worker died")
        return line.strip()

    def per_answer(self, count: int) -> float:
        self.process.stdin.write(f"{count}\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return float(self._read()) / count

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(30)


def compare(rev: str, *, new_rev: str | None = None, rounds: int = 7, count: int = 20) -> float:
    """``new_rev`` (default: this tree) against ``rev``, per streamed answer; returns new / old."""
    label = new_rev or "this tree"
    with tempfile.TemporaryDirectory(prefix="gtl-bench-versions-") as tmp:
        where = Path(tmp)
        sources = [where / "old" / "src"] + ([where / "new" / "src"] if new_rev else [])
        try:
            old_python = prepare(rev, where / "old")
            new_python = str(prepare(new_rev, where / "new")) if new_rev else sys.executable
            # the simulator accepts any model name: both versions ask for the same one
            with gtl_nb.sim.serve("openai", seed=1, **SIMULATOR_OPTIONS) as simulator:
                new = Worker(new_python, simulator.base_url, where / "new.sqlite3", label)
                old = Worker(str(old_python), simulator.base_url, where / "old.sqlite3", rev)
                assert new.location != old.location, "both workers imported the same gtl_nb"
                new.per_answer(count), old.per_answer(count)  # warm up both
                best_new = best_old = float("inf")
                for _ in range(rounds):
                    best_new = min(best_new, new.per_answer(count))
                    best_old = min(best_old, old.per_answer(count))
                new.close(), old.close()
        finally:
            for source in sources:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(source)], capture_output=True
                )
    ratio = best_new / best_old
    print(
        f"versions: {label} {best_new * 1000:.2f} ms per streamed answer, {rev} {best_old * 1000:.2f} ms "
        f"({ratio:.3f}x; same simulator, one SQLite ledger row each, best of {rounds} interleaved rounds)"
    )
    return ratio


def run() -> dict[str, float]:
    return {"versions_ratio": compare(BASELINE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", nargs="?", default=BASELINE, help=f"the commit to compare with (default {BASELINE})")
    parser.add_argument("--new", metavar="REV", help="measure this commit instead of the working tree")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    compare(args.rev, new_rev=args.new, rounds=args.rounds)


if __name__ == "__main__":
    main()
