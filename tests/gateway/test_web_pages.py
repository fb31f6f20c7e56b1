"""A development gateway (``auth = "none"``: no GhostToken checked, loopback only) refuses what a web page
could send it: any page the user opens may POST to 127.0.0.1 or open a WebSocket there without asking,
and a site whose name resolves to 127.0.0.1 (DNS rebinding) may even read the answers. Programs on this
machine — the SDKs, ``gtl_nb.connect``, curl — name it by a loopback address and send no ``Origin``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

import gtl_nb
from gtl_nb.gateway.local import LocalGateway
from tests.gateway.conftest import write_toml

NAMES = "addressed to a loopback name or devbox.test"  # (the fixture's allowed_hosts)
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    folder = tmp_path_factory.mktemp("web_pages")
    config = write_toml(
        folder / "gtl.toml",
        {"ledger": {"path": str(folder / "ledger.sqlite")}, "gateway": {"allowed_hosts": ["devbox.test"]}},
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gtl_nb", "serve", "--config", str(config), "--http", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with LocalGateway(process, config) as running:
        yield running


def test_programs_on_this_machine_are_served(gateway: LocalGateway):
    url = gateway.url("http")
    port = url.rpartition(":")[2]
    names = (None, "localhost", "127.0.0.1", f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}")
    # a name under .localhost resolves to loopback only; a name [gateway] allowed_hosts gives this machine
    aliases = (f"notebooks.localhost:{port}", "devbox.test", f"DevBox.Test.:{port}")
    for host in (*names, *aliases):
        headers = {"host": host} if host else {}
        answer = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
    page_on_this_machine = httpx.post(
        f"{url}/v1/chat/completions", json=BODY, headers={"origin": "http://localhost:8888"}, timeout=30
    )
    assert page_on_this_machine.status_code == 200  # (a notebook's own page, say)
    page_under_localhost = httpx.post(
        f"{url}/v1/chat/completions", json=BODY, headers={"origin": "http://lab.localhost:8888"}, timeout=30
    )
    assert page_under_localhost.status_code == 200
    with gtl_nb.connect(url) as client:
        assert client.complete("echo", "hi").text


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"origin": "https://evil.example"}, "refuses requests from web pages"),
        ({"origin": "null"}, "refuses requests from web pages"),  # a sandboxed page, a file:// one
        ({"origin": "http://[::1"}, "refuses requests from web pages"),  # no URL at all: refused, not a 500
        ({"host": "evil.example:8787", "origin": "http://evil.example:8787"}, NAMES),
        ({"host": "evil.example"}, NAMES),
        ({"host": "localhost.evil.example"}, NAMES),
        ({"host": "devbox.test.evil.example"}, NAMES),
        ({"host": "evil-localhost"}, "add it to [gateway] allowed_hosts"),
        # allowed_hosts names how programs address the gateway; a page's origin must still be loopback
        ({"origin": "http://devbox.test:3000"}, "refuses requests from web pages"),
        ({"origin": "http://localhost.evil.example"}, "refuses requests from web pages"),
    ],
)
def test_a_request_a_web_page_could_send_is_refused(gateway: LocalGateway, headers: dict[str, str], said: str):
    url = gateway.url("http")
    sent = {"content-type": "text/plain", **headers}
    refused = httpx.post(f"{url}/v1/gtl", content=json.dumps(BODY), headers=sent, timeout=30)
    assert refused.status_code == 403, refused.text
    assert said in refused.json()["message"] and refused.json()["code"] == "FORBIDDEN"
    # the compatible paths refuse in their API's shape, which its SDK reads (a GTL frame it showed as a dict)
    chat = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(BODY), headers=sent, timeout=30)
    assert chat.status_code == 403, chat.text
    assert said in chat.json()["error"]["message"] and chat.json()["error"]["code"] == "forbidden"
    messages = httpx.post(f"{url}/v1/messages", content=json.dumps(BODY), headers=sent, timeout=30)
    assert messages.status_code == 403, messages.text
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "permission_error"
    assert said in messages.json()["error"]["message"]


def test_the_sdks_read_the_refusal_of_a_web_pages_request(gateway: LocalGateway):
    import anthropic
    import openai

    url = gateway.url("http")
    origin = {"origin": "https://evil.example"}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, default_headers=origin)
    with client, pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert "refuses requests from web pages" in caught.value.message and caught.value.code == "forbidden"
    claude = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, default_headers=origin)
    with claude, pytest.raises(anthropic.PermissionDeniedError) as refused:
        claude.messages.create(model="echo", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "refuses requests from web pages" in refused.value.message


def test_a_web_pages_websocket_is_refused(gateway: LocalGateway):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = gateway.url("ws")
    with pytest.raises(InvalidStatus) as caught:
        connect(f"{url}/v1/gtl/ws", origin="https://evil.example", open_timeout=10)  # type: ignore[arg-type]
    assert caught.value.response.status_code == 403
