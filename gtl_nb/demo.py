"""The main job of ``make demo``: a short offline tour on the built-in default model ``echo``.

It streams a completion token by token, shows its usage and footer, asks for a tool call, and lists
the configured providers — with no key and no network.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import gtl_nb
from gtl_nb.completion import money
from gtl_nb.protocol.messages import Token, Tool


def main() -> int:
    out = sys.stdout
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.01}}})
    out.write("gtl_nb demo — offline, on the built-in model 'echo'\n\n")

    out.write("1. Streaming a completion:\n   ")
    stream = client.stream("echo", "Explain what GTL is in one sentence.", system="You are concise.")
    for event in stream:
        if isinstance(event, Token):
            out.write(event.text)
            out.flush()
    answer = stream.result()
    out.write(f"\n   -- {answer.footer()}\n\n")

    out.write("2. Usage of that completion:\n")
    usage = answer.usage
    assert usage is not None
    cost = money(usage.cost) or "unknown"  # ("$0": echo is free; "$0.0" read like a rounding)
    out.write(f"   tokens in {usage.tokens_in}, tokens out {usage.tokens_out}, cost {cost}\n")
    out.write(f"   time to first token {answer.ttft_ms} ms, total {answer.latency_ms} ms\n\n")

    out.write("3. A tool call:\n")
    weather = Tool(
        name="get_weather",
        description="Current weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    called = client.complete("echo", "What's the weather in Oslo?", tools=[weather])
    for call in called.tool_calls:
        out.write(f"   {call.name}({call.arguments})  finish_reason={called.finish_reason}\n")
    out.write("\n4. Providers:\n")
    for info in client.providers():
        models = ", ".join(m.name for m in info.models) or "(from the catalog)"
        out.write(f"   {info.provider} [{info.provider_type}] offline={info.offline}: {models}\n")
    out.write(
        f'\nNext: `{gtl_command()} complete "hello"`, the notebooks in notebooks/, `make serve` for a gateway on '
        "127.0.0.1:8787 (docs/gateway.md), and `make test` (it needs redis-server and PostgreSQL 15: README).\n"
    )
    client.close()
    return 0


def gtl_command() -> str:
    """How to type the ``gtl`` command from here: ``gtl`` when the shell finds this installation's, else
    its path (``.venv/bin/gtl`` after ``make demo``, whose virtual environment is not activated)."""
    installed = Path(sys.executable).parent / "gtl"
    found = shutil.which("gtl")
    if not installed.exists() or (found is not None and Path(found).resolve() == installed.resolve()):
        return "gtl"
    relative = os.path.relpath(installed)
    return relative if not relative.startswith("..") else str(installed)


if __name__ == "__main__":
    sys.exit(main())
