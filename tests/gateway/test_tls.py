"""The HTTP listener over TLS: ``https://``, ``sses://`` and ``wss://`` through ``gtl_nb.connect`` with a
``gtl certs`` CA, and the refusals — an unknown CA, a name the certificate does not list, plaintext
beyond loopback."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import gtl_nb
from gtl_nb.gateway.certs import DevCertificates, make_dev_certificates
from gtl_nb.gateway.listeners import Limits, ListenerSettings, TlsFiles
from gtl_nb.protocol import Token
from gtl_nb.protocol.errors import ConfigurationError, ProviderUnavailableError
from tests.gateway.conftest import MODEL
from tests.gateway.test_http import serving

SCHEMES = ("https", "sses", "wss")


@pytest.fixture(scope="module")
def tls_url(base_config: Path, certs: DevCertificates) -> Iterator[str]:
    with serving(base_config, tls=TlsFiles(certs.certificate, certs.key)) as served:
        yield served.url


def test_the_listener_reports_https_and_offers_the_tls_forms(tls_url, certs):
    assert tls_url.startswith("https://127.0.0.1:")
    address = tls_url.partition("://")[2]
    trust = ssl.create_default_context(cafile=str(certs.ca))
    found = httpx.get(f"{tls_url}/.well-known/gtl", verify=trust).json()
    assert found["transports"] == {"ws": f"wss://{address}", "sse": f"sses://{address}", "http": tls_url}
    # the port speaks TLS only: plain HTTP is answered 400 in nginx's words (no more a bare disconnect)
    plain = httpx.get(f"http://{address}/healthz")
    assert plain.status_code == 400, plain.text
    assert plain.json()["error"]["message"] == "this port speaks TLS: connect with https:// (wss:// for WebSocket)"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sessions_over_tls_with_the_gtl_certs_ca(tls_url, certs, scheme):
    address = tls_url.partition("://")[2]
    with gtl_nb.connect(f"{scheme}://{address}", verify=str(certs.ca)) as client:
        # https:// discovers; with only this listener offered the best transport is the secure WebSocket
        assert client.transport == ("wss" if scheme == "https" else scheme)
        assert client.complete("echo", "Hello over TLS").text.count("Hello over TLS") == 1
        tokens = [event.text for event in client.stream(f"openai:{MODEL}", "Say something") if isinstance(event, Token)]
        assert len(tokens) > 1


@pytest.mark.parametrize("path", ["/v1/gtl", "/v1/gtl/"])
def test_the_http_transport_over_tls_is_asked_for_by_its_path(tls_url, certs, path):
    # https://HOST:PORT discovers (and may choose another transport); https://HOST:PORT/v1/gtl is the
    # one-POST-per-session transport itself, as http:// is in plaintext (there was no way to ask for it)
    with gtl_nb.connect(f"{tls_url}{path}", verify=str(certs.ca)) as client:
        assert client.transport == "https"
        assert client.complete("echo", "Hello over HTTPS").text.count("Hello over HTTPS") == 1
    other = make_dev_certificates(Path(certs.ca).parent / "elsewhere")
    with pytest.raises(ConfigurationError, match="does not accept"):  # verified as every TLS scheme is
        gtl_nb.connect(f"{tls_url}{path}", verify=str(other.ca))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_certificate_from_another_ca_is_refused_clearly(tls_url, tmp_path, scheme):
    other = make_dev_certificates(tmp_path / "other")
    address = tls_url.partition("://")[2]
    for verify in (str(other.ca), True):  # another CA, and the system's trust store, which knows neither
        with pytest.raises(ConfigurationError, match="does not accept") as refused:
            gtl_nb.connect(f"{scheme}://{address}", verify=verify)
        assert "unable to get local issuer certificate" in str(refused.value)
        assert "verify=" in str(refused.value)


@pytest.mark.parametrize("scheme", ["http", "sse", "ws"])
def test_a_plaintext_scheme_to_the_tls_listener_says_which_scheme_to_use(tls_url, scheme):
    """The listener answers a plaintext request 400 "this port speaks TLS"; the error names the TLS twin."""
    twin = {"http": "https", "sse": "sses", "ws": "wss"}[scheme]
    with pytest.raises(ProviderUnavailableError) as unreachable:
        gtl_nb.connect(f"{scheme}://{tls_url.partition('://')[2]}")
    assert f"HTTP 400: that port speaks TLS; connect with {twin}://" in str(unreachable.value)


def test_a_port_with_nothing_listening_gets_no_tls_hint():
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # closed again before the dial: nothing listens there
    for scheme in ("http", "ws"):
        with pytest.raises(ProviderUnavailableError) as unreachable:
            gtl_nb.connect(f"{scheme}://127.0.0.1:{port}")
        assert "TLS" not in str(unreachable.value)


def test_a_name_the_certificate_does_not_list_is_refused(base_config, tmp_path):
    files = make_dev_certificates(tmp_path / "named", names=("gateway.example",))
    with serving(base_config, tls=TlsFiles(files.certificate, files.key)) as served:
        address = served.url.partition("://")[2]
        for scheme in SCHEMES:
            with pytest.raises(ConfigurationError, match=r"mismatch, certificate is not valid for '127\.0\.0\.1'"):
                gtl_nb.connect(f"{scheme}://{address}", verify=str(files.ca))
        with gtl_nb.connect(f"wss://{address}", verify=False) as client:  # the documented escape hatch
            assert client.complete("echo", "unverified").text


def test_a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout(base_config, certs):
    tls = TlsFiles(certs.certificate, certs.key)
    with serving(base_config, tls=tls, limits=Limits(max_frame_bytes=64 * 1024, header_timeout=0.5)) as served:
        host, _, port = served.url.partition("://")[2].rpartition(":")
        with socket.create_connection((host, int(port))) as silent:
            silent.settimeout(5)
            started = time.monotonic()
            try:
                assert silent.recv(1024) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < 3


def test_a_missing_ca_file_is_a_configuration_error(tls_url, tmp_path):
    with pytest.raises(ConfigurationError, match="not a readable CA file"):
        gtl_nb.connect(tls_url.replace("https://", "sses://"), verify=str(tmp_path / "missing.pem"))


def test_plaintext_beyond_loopback_is_refused(certs):
    with pytest.raises(ConfigurationError, match="loopback"):
        ListenerSettings("http", host="0.0.0.0", port=0)
    # with TLS files (or insecure = true, on purpose) any address is allowed
    assert ListenerSettings("http", host="0.0.0.0", tls=TlsFiles(certs.certificate, certs.key))
    assert ListenerSettings("http", host="0.0.0.0", insecure=True).url(8787) == "http://0.0.0.0:8787"


def test_the_tls_hint_is_for_a_first_contact_that_got_no_answer_only():
    """A gateway that answered before and then closed a connection (a crash mid-stream, an idle
    keep-alive closed) is no TLS mix-up: no hint then."""
    import httpx

    from gtl_nb.transports.http import HttpBackend

    backend = HttpBackend("http://127.0.0.1:9")
    closed = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert "connect with https://" in str(backend._unreachable(closed))
    assert "TLS" not in str(backend._unreachable(closed, lost=True))  # mid-stream
    backend._fetched = True  # the provider list came over plaintext: the port speaks it
    assert "TLS" not in str(backend._unreachable(closed))


def test_an_expired_certificate_is_said_to_be_one_with_advice_that_fits(base_config, tmp_path, monkeypatch):
    """A client given the right CA is told the gateway's certificate ran out, not to pass the CA again."""
    import datetime

    from gtl_nb.gateway import certs as certs_module

    class LongAgo(datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # the pair is made as if 40 days ago, valid for one day
            return datetime.datetime.now(tz) - datetime.timedelta(days=40)

    monkeypatch.setattr(
        certs_module,
        "datetime",
        type("Clock", (), {"datetime": LongAgo, "timezone": datetime.timezone, "timedelta": datetime.timedelta}),
    )
    files = make_dev_certificates(tmp_path / "old", days=1)
    monkeypatch.undo()
    with (
        serving(base_config, tls=TlsFiles(files.certificate, files.key)) as served,
        pytest.raises(ConfigurationError) as refused,
    ):
        gtl_nb.connect(f"wss://{served.url.partition('://')[2]}", verify=str(files.ca))
    message = str(refused.value)
    assert "certificate has expired" in message and "the gateway needs a new one" in message, message
    assert "verify=" not in message and "connect by a name" not in message


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_the_official_sdk_sent_to_http_on_the_tls_port_reads_what_to_do(tmp_path, certs, event_loop):
    """An operator without nginx, a client given http:// for the gateway's own TLS listener: the SDK read a
    bare disconnect ("Connection error."); now the listener answers 400 in nginx's words, and TLS works
    as before on the same port, on either event loop."""
    openai = pytest.importorskip("openai")
    if event_loop == "uvloop":
        pytest.importorskip("uvloop")
    from gtl_nb.gateway.local import start_gateway
    from tests.gateway.conftest import write_toml

    config = write_toml(
        tmp_path / "gtl.toml",
        {"providers.echo": {}, "ledger": {"path": tmp_path / "ledger.sqlite"}, "gateway": {"event_loop": event_loop}},
    )
    with start_gateway(config, http="127.0.0.1:0", tls_cert=certs.certificate, tls_key=certs.key) as gateway:
        address = gateway.url("http").partition("://")[2]
        plain = openai.OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0)
        with plain, pytest.raises(openai.BadRequestError) as refused:
            plain.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        assert "this port speaks TLS: connect with https://" in refused.value.message, refused.value.message
        trust = httpx.Client(verify=ssl.create_default_context(cafile=str(certs.ca)))
        secure = openai.OpenAI(base_url=f"https://{address}/v1", api_key="unused", max_retries=0, http_client=trust)
        with secure:
            answer = secure.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
        assert any(f"(event loop {event_loop}" in line for line in gateway.output), gateway.output
