"""The gateway's command line: ``python -m gtl_nb.gateway`` and the ``gtl serve`` subcommand."""

from __future__ import annotations

import argparse
import subprocess
import sys

from gtl_nb.gateway import cli


def test_the_gateway_needs_a_transport():
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb.gateway"], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert "--stdio" in done.stderr
    assert done.stdout == ""


def test_a_configuration_mistake_is_one_line_on_standard_error_and_nothing_on_the_frames(tmp_path):
    config = tmp_path / "gtl.toml"
    config.write_text('[gateway]\nauth = "jwt"\n', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb.gateway", "--stdio", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("gtl gateway: error:") and "not served yet" in done.stderr
    assert done.stdout == ""


def test_gtl_serve_takes_the_config_before_or_after_the_subcommand():
    parser = argparse.ArgumentParser(prog="gtl")
    parser.add_argument("--config")
    cli.add_subcommands(parser.add_subparsers(dest="command"))
    for argv in (["serve", "--stdio", "--config", "a.toml"], ["--config", "a.toml", "serve", "--stdio"]):
        args = parser.parse_args(argv)
        assert (args.stdio, args.serve_config or args.config, args.principal) == (True, "a.toml", None)
        assert args.handler is cli._serve
