"""Every ```python block of every page in docs/ and of the README runs, in order per page, offline.

A page's blocks share one IPython namespace (so a later block may use an earlier block's names, and
``%`` magics work as they would in a notebook), in a fresh interpreter with a temporary working
directory and its own HOME and XDG directories, and without any provider's API key in the
environment. A block that needs a real key or service is marked by putting ``<!-- no-test -->`` on
the line right before its fence (blank lines between are allowed); it is then only checked to
compile, unless it contains magics.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
NO_TEST = "<!-- no-test -->"
RUN_LANGS = {"python", "py", "ipython", "python3"}
FENCE = re.compile(r"^(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S)
# Provider credentials the examples must never see (they run offline, on echo and the simulators).
SECRET_VARS = re.compile(r"^(OPENAI_|AZURE_OPENAI_|ANTHROPIC_|GEMINI_|GOOGLE_API|OLLAMA_|AWS_|GTL_)", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: bool


def extract_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown page, in order, with their ``no-test`` marks."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        lang = (match.group("info").split() or [""])[0].lower()
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line=line, lang=lang, code=match.group("body"), skip=before == NO_TEST))
    return blocks


def _strip_prompts(code: str) -> str:
    """A doctest-style block (``>>>`` / ``...``) as plain code; its expected-output lines dropped."""
    lines = code.splitlines()
    if not any(line.lstrip().startswith(">>>") for line in lines):
        return code
    kept = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith((">>> ", "... ")) or stripped in (">>>", "..."):
            kept.append(stripped[4:])
    return "\n".join(kept) + "\n"


def runnable(page: Path) -> list[tuple[int, str]]:
    return [
        (block.line, _strip_prompts(block.code))
        for block in extract_blocks(page.read_text(encoding="utf-8"))
        if block.lang in RUN_LANGS and not block.skip
    ]


# Runs in the child interpreter: each block through IPython, stop at the first failure.
RUNNER = r"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell

blocks = json.load(sys.stdin)
shell = InteractiveShell.instance(colors="nocolor")
for line, code in blocks:
    print(f"--- block at line {line} ---", flush=True)
    result = shell.run_cell(code, store_history=False)
    if not result.success:
        print(f"FAILED: the block at line {line}", flush=True)
        sys.exit(1)
sys.exit(0)
"""


def offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not SECRET_VARS.match(k)}
    for name, sub in (
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("IPYTHONDIR", "ipython"),
        ("MPLCONFIGDIR", "mpl"),
    ):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / sub)
    env["MPLBACKEND"] = "Agg"
    env.pop("GTL_NB_CONFIG", None)
    return env


def run_page(page: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    """Run the page's blocks in a fresh interpreter; its output is in ``stdout``."""
    work = scratch / "work"
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(runnable(page)),
        capture_output=True,
        text=True,
        cwd=work,
        env=offline_env(scratch),
        timeout=90,
    )


PAGES = sorted(DOCS.glob("*.md"))
# Pages whose examples do not run offline yet -> why. Strict: once a page is fixed its xfail turns into
# a failure, so the entry is removed with the fix.
PENDING: dict[str, str] = {}
PAGE_PARAMS = [
    pytest.param(page, id=page.name, marks=[pytest.mark.xfail(strict=True, reason=PENDING[page.name])])
    if page.name in PENDING
    else pytest.param(page, id=page.name)
    for page in PAGES
]


def test_the_docs_have_pages_with_examples():
    assert (DOCS / "guide.md").is_file()
    assert sum(len(runnable(page)) for page in PAGES) >= 10


def test_a_no_test_mark_applies_to_the_next_block_only():
    text = "intro\n\n<!-- no-test -->\n\n```python\nkey()\n```\n\n```python\nrun()\n```\n"
    blocks = extract_blocks(text)
    assert [(b.code, b.skip) for b in blocks] == [("key()\n", True), ("run()\n", False)]


def test_doctest_prompts_are_stripped():
    assert _strip_prompts(">>> x = 1\n>>> x + 1\n2\n... \n") == "x = 1\nx + 1\n\n"


@pytest.mark.parametrize("page", PAGE_PARAMS)
def test_examples_of_page_run_offline(page: Path, tmp_path: Path):
    blocks = runnable(page)
    for block in extract_blocks(page.read_text(encoding="utf-8")):
        if block.skip and block.lang in RUN_LANGS and "%" not in block.code:
            compile(_strip_prompts(block.code), f"{page.name}:{block.line}", "exec")  # still valid Python
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python blocks")
    done = run_page(page, tmp_path)
    assert done.returncode == 0, f"{page.name}: an example failed\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"


def test_the_readme_examples_run_as_shown_on_a_fresh_machine(tmp_path: Path):
    """No key, no network: every README block runs, and no answer is an error (a magic shows errors in
    its output rather than failing the cell, so the output is checked too)."""
    assert len(runnable(README)) >= 5  # the tour, and the notebook cells one by one
    done = run_page(README, tmp_path)
    assert done.returncode == 0, f"README.md: an example failed\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    for code in ("INVALID_REQUEST", "AUTH_FAILED", "MODEL_NOT_FOUND", "PROVIDER_UNAVAILABLE", "Traceback"):
        assert code not in done.stdout, f"README.md shows {code}:\n{done.stdout[-6000:]}"
    assert "== anthropic:claude-haiku-4-5 ==" in done.stdout and "You said:" in done.stdout


if __name__ == "__main__":  # python tests/docs/test_examples.py docs/client.md: run one page, show its output
    import tempfile

    for name in sys.argv[1:]:
        result = run_page(Path(name).resolve(), Path(tempfile.mkdtemp(prefix="gtl_nb-docs-")))
        print(result.stdout, result.stderr, f"exit {result.returncode}", sep="\n")
