"""The simulator core: lifecycle, request recording, HTTP/1.1 framing, registry."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

import httpx
import pytest

from gtl_nb import sim
from gtl_nb.sim import base

from .conftest import PROVIDERS, stream_request

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello simulator"}]}
AUTH = {"authorization": "Bearer sim-key"}


def test_base_url_has_the_shape_each_sdk_expects(serve_sim: Any) -> None:
    for provider, suffix in [
        ("openai", "/v1"),
        ("openai_compatible", "/v1"),
        ("azure", ""),
        ("anthropic", ""),
        ("gemini", ""),
        ("ollama", ""),
    ]:
        s = serve_sim(provider)
        assert s.base_url == f"http://127.0.0.1:{s.port}{suffix}"


def test_requests_records_method_path_query_headers_and_bodies(serve_sim: Any) -> None:
    s = serve_sim("openai")
    httpx.post(s.base_url + "/chat/completions?trace=1", json=CHAT, headers={**AUTH, "X-Custom": "yes"})
    (req,) = s.requests
    assert req.method == "POST" and req.path == "/v1/chat/completions"
    assert req.query == {"trace": "1"}
    assert req.headers["x-custom"] == "yes" and req.headers["authorization"] == "Bearer sim-key"
    assert json.loads(req.body) == CHAT and req.json == CHAT


def test_the_server_keeps_the_connection_alive_between_requests(serve_sim: Any) -> None:
    s = serve_sim("openai")
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT), headers=AUTH)
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": True}), headers=AUTH)
    second = conn.getresponse()
    body = second.read()
    assert conn.sock is sock  # same TCP connection
    assert first.status == second.status == 200
    assert second.getheader("transfer-encoding") == "chunked"
    assert body.endswith(b"data: [DONE]\n\n")
    conn.close()


def test_each_provider_chunk_is_one_http_chunk(serve_sim: Any) -> None:
    s = serve_sim("openai")
    payload = json.dumps({**CHAT, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sim-key\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(body[:size])
        body = body[size + 2 :]
    assert len(chunks) > 3
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)
    assert chunks[-1] == b"data: [DONE]\n\n"


def test_close_frees_the_port_and_is_idempotent() -> None:
    s = sim.serve("openai")
    port = s.port
    httpx.get(s.base_url + "/models", headers=AUTH)
    s.close()
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket() as probe:  # the port can be bound again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_running_yields_the_base_url_and_closes_afterwards() -> None:
    with sim.running("ollama") as base_url:
        assert httpx.get(base_url + "/api/tags").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/api/tags")


def test_simulator_is_a_context_manager() -> None:
    with sim.serve("anthropic") as s:
        port = s.port
        assert "anthropic" in repr(s)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_close_interrupts_an_open_stream_promptly() -> None:
    s = sim.serve("openai", sim.Fault.stall(after=1, seconds=60))
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", s.base_url + "/chat/completions", json={**CHAT, "stream": True}, headers=AUTH
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        started = time.monotonic()
        s.close()
        with pytest.raises(httpx.HTTPError):
            list(lines)
    assert time.monotonic() - started < 5


def test_same_seed_and_request_give_the_same_bytes() -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    bodies = []
    for _ in range(2):
        with sim.serve("openai", seed=7) as s:
            bodies.append(httpx.post(s.base_url + "/chat/completions", json=request, headers=AUTH).content)
    assert bodies[0] == bodies[1]
    with sim.serve("openai", seed=8) as s:
        other = httpx.post(s.base_url + "/chat/completions", json=request, headers=AUTH).content
    assert other != bodies[0]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_answers_the_same_request_with_the_same_bytes(provider: str) -> None:
    bodies = []
    for _ in range(2):
        with sim.serve(provider, seed=3) as s:
            request = stream_request(provider, s)
            bodies.append(httpx.post(**request).content)
            request["json"] = {**request["json"], "stream": False}
            bodies.append(httpx.post(**request).content)
    assert bodies[0] == bodies[2] and bodies[1] == bodies[3]


def test_pace_spaces_out_the_chunks(serve_sim: Any) -> None:
    s = serve_sim("ollama", pace=0.02, models=sim.ANY_MODEL)  # model "m": any name
    started = time.monotonic()
    lines = httpx.post(s.base_url + "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    elapsed = time.monotonic() - started
    n = len(lines.text.splitlines())
    assert n > 5
    assert elapsed >= 0.02 * (n - 1) * 0.8  # a lower bound only


def test_an_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(sim.UnknownProviderError, match=r"known: .*openai"):
        sim.serve("nosuch")


def test_a_registered_but_missing_module_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(base.PROVIDERS, "future", "gtl_nb.sim.not_written_yet:FutureSim")
    with pytest.raises(sim.UnknownProviderError, match="not available"):
        sim.serve("future")


def test_the_registry_names_every_provider_including_bedrock() -> None:
    assert set(base.PROVIDERS) == {"openai", "openai_compatible", "azure", "anthropic", "gemini", "ollama", "bedrock"}
    assert base.PROVIDERS["bedrock"] == "gtl_nb.sim.bedrock:BedrockSim"


def test_every_provider_module_satisfies_the_protocol() -> None:
    for name in ("openai", "openai_compatible", "azure", "anthropic", "gemini", "ollama"):
        provider = base.load_provider(name)
        assert isinstance(provider, base.ProviderSim)
        assert provider.name == name


def test_a_provider_bug_becomes_a_500_not_a_dead_server(serve_sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = serve_sim("ollama")

    def broken(req: Any, ctx: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(s.provider, "handle", broken)
    assert httpx.get(s.base_url + "/api/tags").status_code == 500
    monkeypatch.undo()
    assert httpx.get(s.base_url + "/api/tags").status_code == 200


def test_the_simulators_import_nothing_from_the_rest_of_gtl_nb() -> None:
    import ast
    from pathlib import Path

    package = Path(sim.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("gtl_nb"):
                    assert name.startswith("gtl_nb.sim"), f"{path.name} imports {name}"
