"""The request extensions are negotiated on every transport: against an older gateway — one whose features
are narrowed to what gateways announced before (``FIRST_FEATURES``) — the client refuses, before sending,
a request that uses a field the gateway would drop that changes the answer, leaves out with a warning
one that changes no answer (metadata, caching), and sends everything else; an older client, which
offers none of the new features, keeps working against a new gateway."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

import gtl_nb
from gtl_nb.gateway.listeners import Limits
from gtl_nb.protocol import GTLError
from gtl_nb.protocol.extensions import DroppedExtensionWarning
from gtl_nb.protocol.negotiation import FEATURES, FEATURES_HEADER, FIRST_FEATURES
from tests.gateway.conftest import write_toml
from tests.gateway.test_grpc import grpc_gateway
from tests.gateway.test_http import serving
from tests.gateway.test_quic import quic_gateway

OLDER_GATEWAY = Path(__file__).with_name("older_gateway.py")
CHARTER = {"role": "system", "content": "Answer briefly.", "cache_point": True}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("extensions")
    return write_toml(
        directory / "gtl.toml", {"ledger": {"path": str(directory / "ledger.sqlite")}, "providers.echo": {}}
    )


@contextmanager
def older_gateway(config: Path, transport: str, features: tuple[str, ...] = FIRST_FEATURES) -> Iterator[str]:
    """The URL of a gateway offering only ``features``, over ``transport``."""
    if transport == "stdio":
        command = [sys.executable, str(OLDER_GATEWAY), ",".join(features), "--stdio", "--config", str(config)]
        yield "stdio://?command=" + quote(shlex.join(command), safe="")
    elif transport == "grpc":
        with grpc_gateway(config, features=features) as served:
            yield served.url
    else:
        with serving(config, limits=Limits(features=features)) as served:
            yield served.url.replace("http://", f"{transport}://")


def refusal(client: gtl_nb.Client, messages: object = "Say hello there", **fields: object) -> GTLError:
    with pytest.raises(GTLError) as caught:
        client.complete("echo", messages, **fields)
    return caught.value


@pytest.mark.parametrize("transport", ["stdio", "ws", "http", "sse", "grpc"])
def test_an_older_gateway_is_sent_no_field_it_would_drop(config, transport):
    with older_gateway(config, transport) as url, gtl_nb.connect(url) as client:
        error = refusal(client, stop=["there"])
        assert error.code == "INVALID_REQUEST"
        assert error.message.startswith("stop: the gateway does not support this GTL extension")
        assert "'stop'" in error.message and "Upgrade the gateway" in error.message
        assert "top_p" in refusal(client, top_p=0.0).message  # 0.0 is a value asked for
        for fields in ({"reasoning_effort": "high"}, {"reasoning_budget": 0}):  # "no thinking" is asked too
            error = refusal(client, reasoning=True, **fields)
            assert error.message.startswith(f"{next(iter(fields))}: the gateway does not support")
            assert "'reasoning_effort'" in error.message
        # defaults are no use of a field, and the first extensions were always announced
        assert client.complete("echo", "Say hello there", stop=[]).text.count("there") == 1
        assert client.complete("echo", "Say hello there", reasoning=True, tool_choice="none").text


@pytest.mark.parametrize("transport", ["stdio", "ws", "http", "sse", "grpc"])
def test_an_older_gateway_is_sent_the_request_without_what_changes_no_answer(config, transport):
    """The spec's graceful degradation: metadata, cache and prompt caching change what a request costs or
    where its answer comes from, never the answer — left out with a warning naming them, and sent."""
    with older_gateway(config, transport) as url, gtl_nb.connect(url) as client:
        with pytest.warns(DroppedExtensionWarning) as caught:
            answer = client.complete(
                "echo", [CHARTER, {"role": "user", "content": "Say hello there"}], metadata={"team": "a"}, cache=False
            )
        assert "hello there" in answer.text
        said = " ".join(str(warning.message) for warning in caught)
        assert "messages[0].cache_point" in said and "metadata" in said and "cache" in said
        assert "it asks the same" in said


@pytest.mark.parametrize("transport", ["stdio", "ws", "http", "grpc"])
def test_a_gateway_that_knows_the_extensions_is_sent_them(config, transport):
    with older_gateway(config, transport, FEATURES) as url, gtl_nb.connect(url) as client:
        answer = client.complete("echo", [CHARTER, {"role": "user", "content": "Say hello there"}], stop=["there"])
        assert "there" not in answer.text  # the stop sequence reached the provider
        # echo shows no thinking when asked not to think: the effort reached the provider
        assert client.complete("echo", "Say hello", reasoning=True).reasoning
        assert not client.complete("echo", "Say hello", reasoning=True, reasoning_effort="none").reasoning


@pytest.mark.parametrize("transport", ["ws", "grpc"])
def test_a_gateway_without_the_effort_feature_is_sent_no_effort(config, transport):
    """A gateway that knows every extension but ``reasoning_effort`` (the pair's one feature) would think as
    its deployment says whatever the caller asked: refused before sending, the rest sent."""
    features = tuple(feature for feature in FEATURES if feature != "reasoning_effort")
    with older_gateway(config, transport, features) as url, gtl_nb.connect(url) as client:
        assert refusal(client, reasoning_budget=2048).message.startswith("reasoning_budget: the gateway does not")
        assert refusal(client, reasoning_effort="low").message.startswith("reasoning_effort: the gateway does not")
        assert client.complete("echo", "Say hello there", stop=["there"], reasoning=True).reasoning


def test_one_extension_withheld_refuses_only_that_field(config):
    offered = tuple(feature for feature in FEATURES if feature != "tool_error")
    with older_gateway(config, "ws", offered) as url, gtl_nb.connect(url) as client:
        failed = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "name": "f", "arguments": "{}"}]},
            {"role": "tool", "tool_call_id": "t1", "content": "boom", "tool_error": True},
        ]
        assert refusal(client, failed).message.startswith("messages[2].tool_error:")
        assert client.complete("echo", [CHARTER, {"role": "user", "content": "hi"}], stop=["x"]).text


def test_the_http_gateway_names_its_features_where_the_client_reads_the_provider_list(config):
    with serving(config) as served:
        answer = httpx.get(served.url + "/v1/gtl/providers")
        assert answer.headers[FEATURES_HEADER].split(", ") == list(FEATURES)
    # an empty header reads as an older gateway's
    with serving(config, limits=Limits(features=())) as served, gtl_nb.connect(served.url) as client:
        assert "stop" in refusal(client, stop=["x"]).message


def test_an_older_client_keeps_working_against_a_new_gateway(config):
    """A client that offers only the first features agrees on those; a field it sends anyway is honoured
    (the gateway knows it: refusing would break a hand-written client and protect nobody)."""
    from websockets.sync.client import connect as ws_connect

    request = {
        "type": "completion_request",
        "session_id": "s1",
        "model": "echo",
        "messages": [{"role": "user", "content": "Say hello there"}],
        "stop": ["there"],
    }
    with serving(config) as served, ws_connect(served.url.replace("http://", "ws://") + "/v1/gtl/ws") as socket_:
        socket_.send(json.dumps({"type": "hello", "versions": ["1.0"], "features": list(FIRST_FEATURES)}))
        answer = json.loads(socket_.recv(5))
        assert answer["type"] == "hello" and answer["features"] == list(FIRST_FEATURES)
        socket_.send(json.dumps(request))
        frames = []
        while not frames or frames[-1]["type"] not in ("done", "error"):
            frame = json.loads(socket_.recv(5))
            if frame.get("session_id") == "s1":
                frames.append(frame)
        assert frames[-1]["type"] == "done" and frames[-1]["stop_sequence"] == "there"
        # and over HTTP, a client that names no features and reads no header
        body = httpx.post(served.url + "/v1/gtl", json={**request, "stream": False}).json()
        assert body["events"][-1]["type"] == "done" and body["events"][-1]["stop_sequence"] == "there"


def test_quic_negotiates_on_its_control_stream(config, certs):
    """QUIC sends each request on a stream of its own, not through the control stream's connection: the
    link checks the request against what the control stream's hello agreed."""
    for features, refused in ((FIRST_FEATURES, True), (FEATURES, False)):
        with (
            quic_gateway(config, certs, features=features) as served,
            gtl_nb.connect(served.url, verify=str(certs.ca)) as client,
        ):
            if refused:
                assert refusal(client, stop=["there"]).message.startswith("stop: the gateway does not support")
                assert client.complete("echo", "Say hello there").text.count("there") == 1
            else:
                assert "there" not in client.complete("echo", "Say hello there", stop=["there"]).text
