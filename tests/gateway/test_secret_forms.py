"""A provider that quotes the key it was sent in another form than as sent — lowercased, uppercased,
cut to its first characters, percent-encoded, base64-encoded — in a request error (whose words reach
the client: they say what to change), an HTML error page, or a 5xx the gateway logs: the key reaches
neither the client (GTL and the OpenAI-compatible endpoint, through the official SDK) nor the log."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import openai
import pytest

import gtl_nb
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol.errors import GTLError
from tests.gateway.conftest import send_body, write_toml

CANARY = "Canary+Provider/KEY-7f3A9c1e5b2d4f60"  # mixed case, and characters percent- and base64-encoding change
FORMS = {
    "lower": CANARY.lower(),
    "upper": CANARY.upper(),
    "prefix": CANARY[:16],
    "suffix": CANARY[-14:].lower(),
    "percent": quote(CANARY, safe=""),
    "base64": base64.b64encode(CANARY.encode()).decode(),
    "basic": base64.b64encode(f"gateway:{CANARY}".encode()).decode(),  # Basic authorisation's user:key
    "urlsafe": base64.urlsafe_b64encode(CANARY.encode()).decode().rstrip("="),
}
LEAKS = [form[:12] for form in FORMS.values()] + [CANARY[:12].lower(), CANARY[-12:].lower()]


def leaked(text: str) -> list[str]:
    """The canary's forms (their first 12 characters, or the key's own ends in any case) in ``text``."""
    folded = text.lower()
    return [piece for piece in LEAKS if piece.lower() in folded]


class _Quoting(http.server.BaseHTTPRequestHandler):
    """An OpenAI-shaped provider that refuses every request quoting the key in the form its model names:
    ``form-<name>`` (a JSON 400), ``html-<name>`` (an HTML 400), ``down-<name>`` (a 502 the gateway logs)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        model = json.loads(self.rfile.read(length))["model"]
        kind, _, form = model.partition("-")
        key = self.headers.get("authorization", "")[7:]
        assert key == CANARY
        quoted = FORMS[form]
        if kind == "html":
            page = f"<html><body><h1>400 Bad Request</h1><p>not available to key {quoted}</p></body></html>"
            send_body(self, 400, page.encode(), "text/html")
            return
        message = f"Invalid value for model: not available to key {quoted} (see docs)"
        error = {"message": message, "type": "invalid_request_error"}
        send_body(self, 502 if kind == "down" else 400, json.dumps({"error": error}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quoting)
    threading.Thread(target=provider.serve_forever, daemon=True).start()
    directory = tmp_path_factory.mktemp("secret-forms")
    tables = {
        "providers.hostile": {
            "type": "openai",
            "api_key": CANARY,
            "base_url": f"http://127.0.0.1:{provider.server_port}/v1",
        },
        "routing.retry": {"max_attempts": 1},
        "routing.breaker": {"enabled": False},  # every form reaches the provider, however many failed before
        "ledger": {"enabled": False},
        "gateway.http": {"port": 0},
    }
    gateway = start_gateway(write_toml(directory / "gtl.toml", tables), env={"GTL_NB_LOG": "INFO"})
    try:
        yield gateway
    finally:
        gateway.stop()
        provider.shutdown()


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("kind", ["form", "html"])
def test_a_key_quoted_in_another_form_reaches_no_gtl_client(gateway, form, kind):
    with gtl_nb.connect(gateway.url("http")) as client, pytest.raises(GTLError) as refused:
        client.complete(f"hostile:{kind}-{form}", "hello")
    said = str(refused.value)
    assert refused.value.code == "INVALID_REQUEST", said
    assert "not available to key [redacted]" in said and not leaked(said), said


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_key_quoted_in_another_form_reaches_no_openai_compatible_client(gateway, form):
    client = openai.OpenAI(base_url=gateway.url("http") + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=f"hostile:form-{form}", messages=[{"role": "user", "content": "hi"}])
    said = json.dumps(refused.value.body)
    assert "[redacted]" in said and not leaked(said), said
    with pytest.raises(openai.BadRequestError) as streamed:
        stream = client.chat.completions.create(
            model=f"hostile:form-{form}", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        for _ in stream:
            pass
    assert not leaked(json.dumps(streamed.value.body)), streamed.value.body


def test_a_key_quoted_in_another_form_by_a_failing_provider_is_not_logged(gateway):
    for form in sorted(FORMS):
        answer = httpx.post(
            gateway.url("http") + "/v1/chat/completions",
            json={"model": f"hostile:down-{form}", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code >= 500 and not leaked(answer.text), answer.text
    output = "".join(gateway.output)
    assert "not available to key [redacted]" in output  # the provider's words reached the log, scrubbed
    assert not leaked(output)
