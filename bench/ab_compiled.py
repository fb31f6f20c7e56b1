"""The embedded engine compiled with Cython against the same source interpreted, in one run.

    python -m bench.ab_compiled [--rev HEAD] [--rounds 2] [--runs 2] [--calls 2000] [--skip-callgrind]

An alternative issue 13 asks to measure before the embedded client's remainder is called ours to
keep: compile the per-request path instead of making it do less. The revision is checked out twice
in temporary worktrees (``bench.ab.worktrees``); Cython goes into a temporary directory (pip, from
the package index — this bench needs it, the project never does); ``HOT_MODULES`` of the second tree
are compiled in place from their plain Python source (annotations not read as C types, so the code
means what it means interpreted). Then ``bench_embedded`` runs in each tree (``PYTHONPATH``): its
``--callgrind`` counts for the awaited call and concurrency 20 once each, and its wall-time rounds
``--runs`` times, the trees alternating. mypyc, the other compiler for plain Python, cannot build the
engine's levels at all ("async generators are unimplemented", mypy 2.4): it is not measured.
Results and what they mean: docs/benchmarks.md, "The engine compiled".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.ab import worktrees

#: every module a request of the bench's 16-token stream spends its own time in (``bench.profile_engine``)
HOT_MODULES = (
    "gtl_nb/backend.py",
    "gtl_nb/client.py",
    "gtl_nb/completion.py",
    "gtl_nb/handoff.py",
    "gtl_nb/ids.py",
    "gtl_nb/engine/breaker.py",
    "gtl_nb/engine/core.py",
    "gtl_nb/engine/credentials.py",
    "gtl_nb/engine/http.py",
    "gtl_nb/engine/http_parts.py",
    "gtl_nb/engine/httptools_transport.py",
    "gtl_nb/engine/ledger.py",
    "gtl_nb/engine/ledger_writer.py",
    "gtl_nb/engine/retry.py",
    "gtl_nb/engine/routing.py",
    "gtl_nb/engine/stores/sqlite.py",
    "gtl_nb/engine/strategies.py",
    "gtl_nb/engine/transport.py",
    "gtl_nb/protocol/codec.py",
    "gtl_nb/protocol/messages.py",
    "gtl_nb/protocol/session.py",
    "gtl_nb/providers/base.py",
    "gtl_nb/providers/catalog.py",
    "gtl_nb/providers/openai.py",
    "gtl_nb/providers/openai_chat.py",
    "gtl_nb/providers/sse.py",
)

_BUILD = """
import sys
from Cython.Build import cythonize
from setuptools import setup

directives = {"language_level": 3, "annotation_typing": False, "binding": True}
modules = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--inplace", "--quiet"]
setup(ext_modules=cythonize(modules, compiler_directives=directives, quiet=True, nthreads=2))
"""


def compile_in_place(tree: Path, cython: Path) -> None:
    """``HOT_MODULES`` of ``tree`` built as extension modules beside their sources (which they shadow)."""
    script = tree / "_build_compiled.py"
    script.write_text(_BUILD)
    env = {**os.environ, "PYTHONPATH": str(cython)}
    subprocess.run([sys.executable, str(script), *HOT_MODULES], cwd=tree, env=env, check=True)
    built = sorted(tree.glob("gtl_nb/**/*.so"))
    if len(built) != len(HOT_MODULES):
        raise SystemExit(f"built {len(built)} extension modules of {len(HOT_MODULES)}")


def bench_embedded(tree: Path, *args: str) -> str:
    """``bench_embedded``'s report, run with ``tree``'s ``gtl_nb`` (and its ``bench``)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_embedded", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="the revision to compare with itself compiled")
    parser.add_argument("--rounds", type=int, default=2, help="bench_embedded's rounds a run")
    parser.add_argument("--runs", type=int, default=2, help="wall-time runs of each tree, alternating")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--skip-callgrind", action="store_true")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gtl-cython-") as cython, worktrees([options.rev] * 2) as trees:
        print(f"installing Cython into {cython}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", cython, "cython"], check=True)
        print(f"compiling {len(HOT_MODULES)} modules (a few minutes)", flush=True)
        compile_in_place(trees[1], Path(cython))
        named = {"interpreted": trees[0], "compiled": trees[1]}
        if not options.skip_callgrind:
            for name, tree in named.items():
                counts = bench_embedded(tree, "--callgrind", "--requests", "300", "--only", "callers,callers_engine")
                print(f"## {name}: instructions\n{counts}", flush=True)
        wall = ("--rounds", str(options.rounds), "--calls", str(options.calls), "--streams", "200")
        for run in range(options.runs):
            for name, tree in named.items() if run % 2 == 0 else reversed(named.items()):
                print(f"## {name}, run {run + 1}\n{bench_embedded(tree, *wall)}", flush=True)


if __name__ == "__main__":
    main()
