"""gtl_nb.gap stays sans-I/O and light: no clock, no I/O libraries, networkx and pandas only on use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

GAP_DIR = Path(__file__).resolve().parents[2] / "gtl_nb" / "gap"
FORBIDDEN = ("asyncio", "socket", "httpx", "IPython", "networkx", "pandas")


def modules_after(script: str) -> list[str]:
    code = f"import sys\n{script}\nprint(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return [name for name in result.stdout.strip().split(",") if name]


def test_importing_the_package_and_using_the_core_operations_stays_light():
    script = (
        "from gtl_nb import gap\n"
        "m = gap.wrap_message('I think the system is slow', 'claude.ai', 'c1')\n"
        "m = gap.from_markdown(gap.to_markdown(m)); m = gap.from_json(gap.to_json(m))\n"
        "gap.transform_for_platform(m, 'chatgpt'); gap.suggest_definitions(m, [m])\n"
        "gap.parse_all(''); gap.update_entity(m, 'k', 'v'); gap.find_undefined(m)\n"
        "import gtl_nb.gap.graph, gtl_nb.gap.cli\n"
    )
    assert modules_after(script) == []


def test_graph_functions_bring_networkx_but_not_pandas_until_dataframes():
    script = "from gtl_nb import gap\ngap.create_context_graph([gap.wrap_message('x', 'p', 'c')])"
    loaded = modules_after(script)
    assert "networkx" in loaded
    # networkx itself may pull in socket (importlib.metadata -> email); nothing else may come along
    assert set(loaded) <= {"networkx", "socket"}


def test_no_module_reads_the_clock_except_the_cli():
    clock_calls = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}
    for path in GAP_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "time" not in imported, path.name
        calls = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        if path.name != "cli.py":
            assert not (calls & clock_calls), f"{path.name} reads the clock"
