"""``gtl_nb.connect`` to a gateway reads its token from ``$GTL_TOKEN``, else ``$GTL_NB_TOKEN``, when given
none — the variables the notebook and the ``gtl`` command read — and a ``token=`` given wins."""

from __future__ import annotations

import asyncio

import pytest

import gtl_nb
from gtl_nb.protocol.errors import AuthenticationError, ConfigurationError
from tests.gateway.test_http import gateway

TOKEN = "the-development-token"


@pytest.fixture(scope="module")
def url(base_config):
    with gateway(base_config, token=TOKEN) as served:
        yield served


@pytest.mark.parametrize("variable", ["GTL_TOKEN", "GTL_NB_TOKEN"])
@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_a_token_in_the_environment_is_sent(url, monkeypatch, variable, scheme):
    monkeypatch.setenv(variable, f"  {TOKEN}\n")  # as a shell's $(cat file) or an .env line may leave it
    with gtl_nb.connect(url.replace("http://", f"{scheme}://")) as client:
        assert client.complete("echo", "hi").text


def test_gtl_token_comes_before_gtl_nb_token_and_a_given_token_wins(url, monkeypatch):
    monkeypatch.setenv("GTL_TOKEN", TOKEN)
    monkeypatch.setenv("GTL_NB_TOKEN", "stale")
    with gtl_nb.connect(url) as client:
        assert client.complete("echo", "hi").text
    with pytest.raises(AuthenticationError), gtl_nb.connect(url, token="wrong") as client:
        client.complete("echo", "hi")
    monkeypatch.setenv("GTL_TOKEN", "wrong")
    with gtl_nb.connect(url, token=TOKEN) as client:
        assert client.complete("echo", "hi").text


def test_aconnect_reads_it_too_and_the_embedded_engine_ignores_it(url, monkeypatch):
    monkeypatch.setenv("GTL_TOKEN", TOKEN)

    async def over_websocket() -> str:
        async with gtl_nb.aconnect(url.replace("http://", "ws://")) as client:
            return (await client.acomplete("echo", "hi")).text

    assert asyncio.run(over_websocket())
    with gtl_nb.connect() as embedded:  # runs in this process: no token to send, none refused
        assert embedded.complete("echo", "hi").text


def test_a_refused_token_from_the_environment_says_which_variable_it_came_from(url, monkeypatch):
    monkeypatch.setenv("GTL_TOKEN", "stale-export")
    with pytest.raises(AuthenticationError, match=r"the token sent was \$GTL_TOKEN's") as refused:
        gtl_nb.connect(url.replace("http://", "ws://")).close()
    assert "stale-export" not in str(refused.value)
    monkeypatch.delenv("GTL_TOKEN")
    monkeypatch.setenv("GTL_NB_TOKEN", "stale-export")

    async def over_websocket() -> None:
        async with gtl_nb.aconnect(url.replace("http://", "ws://")):
            pass

    with pytest.raises(AuthenticationError, match=r"\$GTL_NB_TOKEN's"):
        asyncio.run(over_websocket())


def test_without_one_the_gateway_still_refuses(url, monkeypatch):
    monkeypatch.delenv("GTL_TOKEN", raising=False)
    monkeypatch.delenv("GTL_NB_TOKEN", raising=False)
    with pytest.raises(AuthenticationError), gtl_nb.connect(url) as client:
        client.complete("echo", "hi")


@pytest.mark.parametrize("scheme", ["http", "ws", "sse"])
def test_a_given_token_is_sent_without_the_whitespace_around_it(url, scheme):
    # open("token.txt").read(): the file's last newline came with it, as a mounted secret's does
    with gtl_nb.connect(url.replace("http://", f"{scheme}://"), token=f"{TOKEN}\n") as client:
        assert client.complete("echo", "hi").text

    async def awaited() -> str:
        async with gtl_nb.aconnect(url.replace("http://", f"{scheme}://"), token=f"\t{TOKEN}\r\n") as client:
            return (await client.acomplete("echo", "hi")).text

    assert asyncio.run(awaited())


SECRET_PART = "c2VjcmV0LXBhcnQ"


@pytest.mark.parametrize(
    ("token", "named"),
    [
        (f"{TOKEN}\n{SECRET_PART}", "a control character (U+000A)"),
        (f"{TOKEN} {SECRET_PART}", "a space"),
        (f"{TOKEN}\u00e9{SECRET_PART}", "not ASCII (U+00E9)"),
    ],
)
@pytest.mark.parametrize("scheme", ["http", "ws"])
def test_a_token_no_header_can_carry_is_refused_without_being_quoted(url, scheme, token, named):
    with pytest.raises(ConfigurationError) as refused:
        gtl_nb.connect(url.replace("http://", f"{scheme}://"), token=token).close()
    message = str(refused.value)
    assert f"character {len(TOKEN) + 1} of {len(token)} is {named}" in message
    assert TOKEN not in message and SECRET_PART not in message
    assert not refused.value.retryable  # the token, not the gateway: trying again cannot help


def test_an_empty_or_non_text_token_is_refused(url):
    with pytest.raises(ConfigurationError, match="the gateway token is empty"):
        gtl_nb.connect(url, token=" \n").close()
    with pytest.raises(ConfigurationError, match="takes the gateway token as a str, not a bytes"):
        gtl_nb.connect(url, token=TOKEN.encode()).close()
