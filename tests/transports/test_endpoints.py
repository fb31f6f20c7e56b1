"""``transports.endpoints``: what a gateway address says when it cannot be used (``connect``'s cases are in
``tests/conformance/test_aconnect_gateway.py``; these reach the module's own entry point)."""

from __future__ import annotations

import pytest

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.transports.endpoints import backend_for, unusable_address


def test_a_known_scheme_is_never_offered_as_its_own_correction():
    with pytest.raises(ConfigurationError) as raised:
        backend_for("embedded://")  # (connect runs it in the process; this entry point serves gateways)
    assert "did you mean" not in str(raised.value)
    with pytest.raises(ConfigurationError, match=r"did you mean 'grpc://h:1'"):
        backend_for("GRCP://h:1")


@pytest.mark.parametrize(
    ("endpoint", "usable"),
    [
        ("ws://127.0.0.1:8787", True),
        ("stdio:///srv/gtl@v2.toml", True),  # a path may hold an @
        ("stdio:u:p/w@h", False),  # a mistyped stdio is no path
        ("https://user:pa/ss@h:1", False),
        ("h:1?x@y", False),
        ("ws://h:1/" + "x" * 2_100, False),
    ],
)
def test_an_address_is_refused_for_a_password_or_its_length_without_being_quoted(endpoint, usable):
    said = unusable_address(endpoint)
    assert (said is None) is usable
    assert said is None or ("pa/ss" not in said and "x" * 50 not in said and "u:p" not in said)


@pytest.mark.parametrize(
    ("endpoint", "factory"),
    [
        ("https://h:1", "discovery"),
        ("https://h:1/", "discovery"),
        ("https://h:1/.well-known/gtl", "discovery"),
        ("https://h:1/v1/gtl", "http"),  # the HTTP transport over TLS, asked for by its path
        ("https://h:1/v1/gtl/?compression=none", "http"),
    ],
)
def test_https_is_discovery_or_by_its_path_the_http_transport(endpoint, factory):
    from gtl_nb.transports.endpoints import _entry_of

    assert _entry_of(endpoint)[1].factory.split(":")[0].endswith(factory)


@pytest.mark.parametrize("endpoint", ["https://h:1/v1/gtl/sse", "https://h:1/gtl"])
def test_another_https_path_is_refused_rather_than_dropped_by_discovery(endpoint):
    with pytest.raises(ConfigurationError, match=r"https://HOST:PORT/v1/gtl is the HTTP transport over TLS"):
        backend_for(endpoint)


def test_a_fragment_is_refused_without_being_quoted():
    with pytest.raises(ConfigurationError, match=r"has no #fragment") as refused:
        backend_for("https://h:1/x#frag")
    assert "frag" not in str(refused.value).replace("fragment", "")
