"""A program that ends without ``client.close()`` exits silently and promptly, whatever its gateway does.

Each test runs a small client script in a child interpreter against a gateway child process
(``start_gateway``: plain ``ws://`` and ``quic://`` with ``make_dev_certificates`` files). The script
connects, completes one request, starts one more it never reads, and waits for a line on standard
input; the test may kill or freeze the gateway first, then sends the line and the script ends without
closing its client. Its standard error must be empty — no "Task was destroyed but it is pending!", no
``RuntimeError: Event loop is closed`` — and it must exit within a few seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gtl_nb.gateway.certs import DevCertificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from tests.gateway.conftest import write_toml

EXIT_LIMIT = 6.0
"""Seconds the script may take from its last line to its exit (the loop thread allows itself 4 at most)."""

SCRIPT = textwrap.dedent(
    """
    import sys
    import gtl_nb

    client = gtl_nb.connect(sys.argv[1], verify=sys.argv[2])
    print(client.complete("echo", "one request").text[:8], flush=True)
    stream = client.stream("echo", "a second one, never read")
    sys.stdin.readline()  # the test kills or freezes the gateway first, or not
    """
)


@pytest.fixture
def gateway(tmp_path: Path, certs: DevCertificates) -> Iterator[LocalGateway]:
    """A gateway of this test's own: plain HTTP (``ws://``) and QUIC, both on free loopback ports."""
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "ledger": {"path": tmp_path / "ledger.sqlite"},
            "gateway": {"shutdown_grace": 1},
            "gateway.quic": {"tls_cert": certs.certificate, "tls_key": certs.key},
        },
    )
    running = start_gateway(config, http="127.0.0.1:0", quic="127.0.0.1:0")
    try:
        yield running
    finally:
        if running.running:
            os.kill(running.process.pid, signal.SIGCONT)  # a frozen one must take its SIGTERM
            running.stop(timeout=15)


def run_script(url: str, ca: Path, before_exit: Callable[[], None]) -> tuple[str, float, int]:
    """Run ``SCRIPT`` against ``url``; call ``before_exit()`` once its request completed; its standard
    error, the seconds from its last line to its exit, and its exit status."""
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, url, str(ca)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert script.stdout is not None and script.stdin is not None
    try:
        assert script.stdout.readline().startswith("You said"), "the request did not complete"
        before_exit()
        started = time.monotonic()
        _, errors = script.communicate("exit now\n", timeout=30)
        return errors, time.monotonic() - started, script.returncode
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()


@pytest.mark.parametrize("scheme", ["ws", "quic"])
@pytest.mark.parametrize("gateway_state", ["running", "killed", "frozen"])
def test_a_client_never_closed_exits_silently(gateway, certs, scheme, gateway_state):
    url = gateway.url(scheme)
    assert url.startswith(f"{scheme}://")

    def before_exit() -> None:
        if gateway_state == "killed":
            gateway.kill()
        elif gateway_state == "frozen":  # alive to the kernel (TCP still answers), silent to the client
            os.kill(gateway.process.pid, signal.SIGSTOP)

    errors, seconds, status = run_script(url, certs.ca, before_exit)
    assert errors == ""
    assert status == 0
    assert seconds < EXIT_LIMIT, f"the script took {seconds:.1f} s to exit"
