"""``[gateway] trusted_proxies``: forwarding headers are believed only from the proxies named."""

from __future__ import annotations

import pytest

from gtl_nb.gateway.proxies import MAX_HOPS, TrustedProxies, peer_text
from gtl_nb.protocol.errors import ConfigurationError

NGINX = TrustedProxies.parse(["127.0.0.1", "10.0.0.0/8", "::1"])


def test_nothing_is_trusted_by_default():
    assert not TrustedProxies.parse(None)
    assert TrustedProxies().client("127.0.0.1", "1.2.3.4") == "127.0.0.1"
    assert TrustedProxies().scheme("127.0.0.1", "https", "http") == "http"


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),  # one proxy
        ("127.0.0.1", "203.0.113.9, 10.1.2.3", "203.0.113.9"),  # two proxies, both trusted
        ("127.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # a forged left part is never reached
        ("127.0.0.1", "not-an-ip, 10.1.2.3", "10.1.2.3"),  # garbage ends the walk: the last proven hop
        ("127.0.0.1", "", "127.0.0.1"),
        ("192.0.2.1", "203.0.113.9", "192.0.2.1"),  # an untrusted peer's header is ignored
        ("::1", "2001:db8::7", "2001:db8::7"),
        ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),  # an IPv4-mapped peer is the same proxy
        ("127.0.0.1", "203.0.113.9:5555", "203.0.113.9"),
        ("127.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
    ],
)
def test_the_client_is_the_first_untrusted_hop_from_the_right(peer: str, header: str, client: str):
    assert NGINX.client(peer, header) == client


def test_a_huge_header_is_read_within_bounds():
    header = ",".join(["10.0.0.1"] * 100_000) + ",203.0.113.9"
    assert NGINX.client("127.0.0.1", header) == "203.0.113.9"
    only_proxies = ",".join(["10.0.0.1"] * (MAX_HOPS * 4))
    assert NGINX.client("127.0.0.1", only_proxies) == "10.0.0.1"


def test_the_scheme_a_trusted_proxy_reports():
    assert NGINX.scheme("127.0.0.1", "https", "http") == "https"
    assert NGINX.scheme("127.0.0.1", "HTTPS, http", "http") == "https"
    assert NGINX.scheme("127.0.0.1", "gopher", "http") == "http"
    assert NGINX.scheme("192.0.2.1", "https", "http") == "http"


@pytest.mark.parametrize("bad", ["127.0.0.1", [1], ["10.0.0.0/33"], ["proxy.internal"]])
def test_a_bad_setting_is_a_clear_error(bad: object):
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        TrustedProxies.parse(bad)


def test_peer_text():
    assert peer_text(("127.0.0.1", 5000)) == "127.0.0.1:5000"
    assert peer_text(("203.0.113.9", 0)) == "203.0.113.9"
    assert peer_text(("::1", 5000)) == "[::1]:5000"
    assert peer_text(None) is None


def test_a_network_written_in_ipv4_mapped_form_trusts_its_peers():
    mapped = TrustedProxies.parse(["::ffff:10.0.0.5", "::ffff:192.168.0.0/112"])
    assert mapped.trusts("::ffff:10.0.0.5") and mapped.trusts("10.0.0.5")
    assert mapped.trusts("192.168.3.4") and not mapped.trusts("192.169.0.1")
