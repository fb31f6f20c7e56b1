"""What the notebook tests share: a shell with the extension loaded, and running cells in it.

Every cell runs through ``shell.run_cell`` (as a notebook would), with its output captured: user
mistakes must be one ``UsageError`` line, never a traceback. The shell gets its own config file and
ledger and none of the developer's provider keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from gtl_nb.notebook import load_ipython_extension, unload_ipython_extension

PROVIDER_ENV = (
    "GTL_NB_MODEL", "GTL_TOKEN", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY",
    "GOOGLE_API_KEY", "OLLAMA_HOST", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_BEARER_TOKEN_BEDROCK", "AWS_PROFILE",
)  # fmt: skip
SIM_KEY_ENV = "SIM_KEY"  # the variable the simulators' deployments read their key from


def deployments(servers: dict[str, Any], types: dict[str, str] | None = None) -> str:
    """``[providers.NAME]`` sections for simulators, keyed by deployment name (``type`` when given)."""
    sections = []
    for name, server in servers.items():
        kind = f'type = "{types[name]}"\n' if types and name in types else ""
        sections.append(f'[providers.{name}]\n{kind}base_url = "{server.base_url}"\napi_key_env = "{SIM_KEY_ENV}"\n')
    return "".join(sections)


def loaded_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str = "") -> Iterator[InteractiveShell]:
    """A shell with the extension freshly loaded and ``config`` (TOML) plus a ledger of its own.

    For a fixture to ``yield from``; afterwards the names the test left in the namespace are removed.
    """
    for name in (*PROVIDER_ENV, "GTL_NB_GATEWAY", "GTL_TOKEN", "GTL_NB_TOKEN"):  # the user's own never count
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(SIM_KEY_ENV, "sim-key")
    path = tmp_path / "gtl.toml"
    path.write_text(config + f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    monkeypatch.setenv("GTL_NB_CONFIG", str(path))
    shell = InteractiveShell.instance()
    before = set(shell.user_ns)
    unload_ipython_extension(shell)
    load_ipython_extension(shell)
    try:
        yield shell
    finally:
        unload_ipython_extension(shell)
        for name in set(shell.user_ns) - before:
            shell.user_ns.pop(name, None)


def run(shell: InteractiveShell, source: str) -> tuple[Any, str]:
    """Run a cell as a notebook does; the result and all its text (stdout, stderr, displays)."""
    with capture_output() as captured:
        result = shell.run_cell(source, store_history=True)
    parts = [captured.stdout, captured.stderr]
    for output in captured.outputs:
        parts += [output.data.get("text/plain", ""), output.data.get("text/markdown", "")]
    return result, "\n".join(parts)


def mistake(shell: InteractiveShell, source: str) -> str:
    """Run a cell that must fail with one UsageError line; that line."""
    result, text = run(shell, source)
    assert isinstance(result.error_in_exec, UsageError), text
    assert "Traceback" not in text
    message = str(result.error_in_exec)
    assert "\n" not in message
    return message


def session_of(shell: InteractiveShell) -> Any:
    """The extension's ``NotebookSession`` of ``shell``."""
    return shell.magics_manager.registry["GTLMagics"].session


class RecordingPublisher(DisplayPublisher):
    """Keeps every display / update the views publish, as a kernel would send them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outputs: list[tuple[dict, dict | None, bool]] = []

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        self.outputs.append((dict(data), transient, update))

    def saved(self) -> list[dict]:
        """The outputs a saved notebook keeps: each display as its last update left it."""
        shown: list[dict] = []
        by_id: dict[str, int] = {}
        for data, transient, update in self.outputs:
            display_id = (transient or {}).get("display_id")
            if update:
                if display_id in by_id:
                    shown[by_id[display_id]] = data
                continue
            if display_id:
                by_id[display_id] = len(shown)
            shown.append(data)
        return shown


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    """The global shell with its displays recorded (``shell.display_pub.outputs``)."""
    ip = InteractiveShell.instance()
    saved = ip.display_pub
    ip.display_pub = RecordingPublisher(shell=ip)
    try:
        yield ip
    finally:
        ip.display_pub = saved
