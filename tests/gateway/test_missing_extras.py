"""An optional package that is not installed is one ``pip install`` line, never a traceback: each
scenario runs in a fresh interpreter whose ``sys.modules[name] = None`` makes that package's import
fail, as on a host without the extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "missing-extras-secret-0123456789abcdef0123"
JWT = '[gateway]\nauth = "jwt"\n\n[gateway.jwt]\nissuer = "https://issuer.test"\nsecret_env = "GTL_TEST_EXTRA_SECRET"\n'
METRICS = "[gateway.metrics]\nenabled = true\n"


def run(tmp_path: Path, missing: str, code: str) -> subprocess.CompletedProcess[str]:
    program = f"import sys\nsys.modules[{missing!r}] = None\n{code}"
    env = {**os.environ, "GTL_TEST_EXTRA_SECRET": SECRET, "XDG_DATA_HOME": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def cli(argv: list[str]) -> str:
    return f"from gtl_nb import cli\nsys.exit(cli.main({argv!r}))"


@pytest.mark.parametrize(
    ("config", "missing", "argv", "said"),
    [
        (JWT, "jwt", ["serve", "--config", "{config}"], 'gtl: error: [gateway] auth = "jwt" needs PyJWT'),
        (METRICS, "prometheus_client", ["serve", "--config", "{config}"], "[gateway.metrics] needs prometheus_client"),
        (
            JWT,
            "jwt",
            ["--config", "{config}", "token", "mint", "--sub", "a", "--scope", "chat:write"],
            "gtl token mint needs PyJWT",
        ),
    ],
)
def test_a_missing_extra_is_an_install_line(tmp_path: Path, config: str, missing: str, argv: list[str], said: str):
    path = tmp_path / "gtl.toml"
    path.write_text(config, encoding="utf-8")
    done = run(tmp_path, missing, cli([arg.replace("{config}", str(path)) for arg in argv]))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and said in done.stderr, done.stderr
    assert "which is not installed: pip install 'gtl-nb[gateway]'" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_connect_over_websockets_without_websockets_is_an_install_line(tmp_path: Path):
    code = (
        "import gtl_nb\nfrom gtl_nb.protocol.errors import ConfigurationError\n"
        "try:\n    gtl_nb.connect('ws://127.0.0.1:9')\nexcept ConfigurationError as exc:\n    print(exc.message)\n"
    )
    done = run(tmp_path, "websockets", code)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "the ws:// transport needs websockets, which is not installed: pip install 'gtl-nb[gateway]'" in done.stdout
