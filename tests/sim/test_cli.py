"""The ``gtl sim`` command."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb.sim import cli
from gtl_nb.sim.server import serve


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gtl")
    cli.add_subcommands(root.add_subparsers(dest="command"))
    return root


def test_arguments_parse_with_their_defaults() -> None:
    args = parser().parse_args(["sim", "openai", "--port", "0", "--seed", "1", "--pace", "0.05"])
    assert (args.provider, args.port, args.seed, args.pace) == ("openai", 0, 1, 0.05)
    assert args.handler is cli.run_sim and args.host == "127.0.0.1" and args.models is None


def test_run_sim_prints_the_base_url_and_serves_until_stopped(monkeypatch: Any) -> None:
    printed = threading.Event()
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            lines.append(text)
            if text.startswith("http://"):
                printed.set()
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Out())
    stop = threading.Event()
    args = parser().parse_args(["sim", "ollama", "--model", "llama3.2"])
    worker = threading.Thread(target=lambda: cli.run_sim(args, stop=stop), daemon=True)
    worker.start()
    assert printed.wait(10)
    base_url = next(line for line in lines if line.startswith("http://"))
    assert httpx.get(base_url + "/api/tags").json()["models"][0]["name"] == "llama3.2:latest"
    stop.set()
    worker.join(10)
    assert not worker.is_alive()


def test_the_gtl_command_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gtl_nb", "sim", "openai", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = proc.stdout.readline().strip()  # the readiness signal  # type: ignore[union-attr]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        models = httpx.get(base_url + "/models", headers={"authorization": "Bearer sim-key"})
        assert models.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "API key 'sim-key'" in proc.stderr.read()  # type: ignore[union-attr]  # what the SDK must send
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_dash_m_runs_the_simulator_command() -> None:
    # what a user tries first, after the gtl command's own spelling
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb.sim", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: gtl sim"), done.stderr


MODELS = {
    "openai": "gpt-4o-mini",
    "azure": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-5",
    "ollama": "llama3.1:8b",
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
}


@pytest.mark.parametrize("provider", sorted(MODELS))
def test_the_advice_it_prints_points_gtl_nb_at_the_simulator(provider: str, tmp_path: Any) -> None:
    from gtl_nb.sim.base import DEFAULT_API_KEY

    simulator = serve(provider)
    try:
        advice = cli._how_to_use(provider, simulator.base_url, DEFAULT_API_KEY)
        if advice.startswith("to use it, export "):
            environ = dict(pair.split("=", 1) for pair in advice.removeprefix("to use it, export ").split())
            client = gtl_nb.connect(environ=environ, config={"ledger": {"enabled": False}})
        else:  # a TOML section, pasted into a file as it is
            config = tmp_path / "gtl.toml"
            config.write_text(advice.split("\n", 1)[1] + "\n[ledger]\nenabled = false\n", encoding="utf-8")
            client = gtl_nb.connect(config=str(config), environ={})
        try:
            assert client.complete(f"{provider}:{MODELS[provider]}", "hello").text
        finally:
            client.close()
    finally:
        simulator.close()


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--port", "99999"], "argument --port: 99999 is not a port: 0 (any free one) to 65535"),
        (["--port", "http"], "argument --port: 'http' is not a port number"),
        (["--pace", "-1"], "argument --pace: -1 is not a pause: give 0 or more seconds"),
    ],
)
def test_a_port_or_pace_that_cannot_be_is_a_usage_error(option: list[str], says: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(["sim", "openai", *option])
    assert stopped.value.code == 2 and says in capsys.readouterr().err


def test_a_port_in_use_or_an_address_not_of_this_machine_is_one_line_not_a_traceback(capsys: Any) -> None:
    """An ``OSError`` from binding went up as a traceback (``gtl serve`` explained the same cases)."""
    with serve("openai") as taken:
        port = int(taken.base_url.rsplit(":", 1)[1].split("/")[0])
        args = parser().parse_args(["sim", "openai", "--port", str(port)])
        assert cli.run_sim(args, stop=threading.Event()) == 2
    said = capsys.readouterr().err
    assert f"gtl sim: cannot listen on 127.0.0.1:{port}: Address already in use; another process has it" in said
    args = parser().parse_args(["sim", "openai", "--host", "192.0.2.1"])  # (TEST-NET-1: no DNS asked)
    assert cli.run_sim(args, stop=threading.Event()) == 2
    assert "gtl sim: cannot listen on 192.0.2.1:0: Cannot assign requested address" in capsys.readouterr().err
