"""The request extensions as features (``protocol.extensions``): what counts as a use of each field, and
the client's refusal, before sending, of a field the server did not agree to."""

from __future__ import annotations

import re
import warnings
from typing import Any

import msgspec
import pytest
from connection_pair import ConnectionPair

from gtl_nb.protocol import CompletionRequest, GTLConnection, HandshakeComplete, Message, UnsupportedFeatureError
from gtl_nb.protocol import connection as connection_module
from gtl_nb.protocol.extensions import (
    DEGRADABLE_FEATURES,
    EXTENSION_FEATURES,
    MESSAGE_FIELDS,
    REQUEST_FIELDS,
    DroppedExtensionWarning,
    degraded,
    missing_extensions,
    unsupported_field,
)
from gtl_nb.protocol.messages import Part, ToolCall
from gtl_nb.protocol.negotiation import FEATURES, FIRST_FEATURES, features_from_header, features_value

GTL_1_0_REQUEST = {
    *("session_id", "model", "messages", "provider", "stream", "max_tokens", "temperature", "providers", "tools")
}
GTL_1_0_MESSAGE = {"role", "content", "images"}
ALL = frozenset(EXTENSION_FEATURES)

# a value that uses each field, and where the refusal says it is
USES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "stop": ({"stop": ["\n\n"]}, {}),
    "top_p": ({"top_p": 0.0}, {}),
    "tool_choice": ({"tool_choice": "none"}, {}),
    "tool_choice.parallel": ({"tool_choice": {"type": "auto", "parallel": False}}, {}),
    "response_format": ({"response_format": {"type": "json_object"}}, {}),
    "metadata": ({"metadata": {"team": "a"}}, {}),
    "reasoning": ({"reasoning": True}, {}),
    "cache": ({"cache": False}, {}),
    "reasoning_effort": ({"reasoning_effort": "none"}, {}),  # no thinking: a value asked for
    "reasoning_budget": ({"reasoning_budget": 0}, {}),
    "parts": ({}, {"parts": [Part(type="text", text="a"), Part(type="text", text="b")]}),
    "tool_error": ({}, {"role": "tool", "tool_call_id": "t1", "content": "boom", "tool_error": True}),
    "cache_point": ({}, {"cache_point": True}),
    "cache_ttl": ({}, {"cache_point": True, "cache_ttl": "1h"}),
    "tool_calls": ({}, {"role": "assistant", "tool_calls": [ToolCall(id="t1", name="f")]}),
    "tool_call_id": ({}, {"role": "tool", "tool_call_id": "t1", "content": "42"}),
    "provider_data": ({}, {"role": "assistant", "content": "x", "provider_data": {"signature": "s"}}),
    "name": ({}, {"name": "ann"}),
}


def build(request: dict[str, Any] | None = None, message: dict[str, Any] | None = None) -> CompletionRequest:
    last = {"role": "user", "content": "hi", **(message or {})}
    messages = [Message(role="user", content="first"), Message(**last)]
    return CompletionRequest(session_id="s1", model="m", messages=messages, **(request or {}))


def test_every_field_beyond_gtl_1_0_is_an_extension_with_a_feature():
    """A field added to a request or a message without a feature here would be dropped silently by an
    older gateway: this fails until it has one."""
    request_fields = set(CompletionRequest.__struct_fields__) - GTL_1_0_REQUEST
    message_fields = set(Message.__struct_fields__) - GTL_1_0_MESSAGE
    assert request_fields == {name.partition(".")[0] for name, _, _ in REQUEST_FIELDS}
    assert message_fields == {name for name, _, _ in MESSAGE_FIELDS}
    assert set(USES) == {name for name, _, _ in REQUEST_FIELDS + MESSAGE_FIELDS}
    assert set(EXTENSION_FEATURES) <= set(FEATURES) and set(FIRST_FEATURES) <= set(FEATURES)


@pytest.mark.parametrize("field", sorted(USES))
def test_each_use_is_found_and_named(field):
    request_fields, message_fields = USES[field]
    request = build(request_fields, message_fields)
    (feature,) = {feature for name, feature, _ in REQUEST_FIELDS + MESSAGE_FIELDS if name == field}
    expected = field if request_fields else f"messages[1].{field}"
    if feature in DEGRADABLE_FEATURES:  # changes no answer: left out with a warning, never refused
        assert unsupported_field(request, frozenset({feature})) is None
        with pytest.warns(DroppedExtensionWarning, match=re.escape(expected)):
            assert unsupported_field(degraded(request, frozenset({feature})), ALL) is None
        return
    assert unsupported_field(request, frozenset({feature})) == (expected, feature)
    other = unsupported_field(request, ALL - {feature})  # (a tool result needs tool_calls too, say)
    assert other is None or other[0] != expected


def test_what_changes_no_answer_is_left_out_with_a_warning_and_the_rest_kept():
    """The spec's "graceful degradation": metadata, cache, cache_point and cache_ttl change what a request
    costs or where its answer comes from, never what was asked."""
    assert {"metadata", "cache", "cache_point", "cache_ttl"} == DEGRADABLE_FEATURES
    request = build(
        {"metadata": {"team": "a"}, "cache": False, "stop": ["x"], "temperature": 0.5},
        {"cache_point": True, "cache_ttl": "1h", "images": ["https://x/y.png"]},
    )
    with pytest.warns(DroppedExtensionWarning) as caught:
        sent = degraded(request, ALL - set(FIRST_FEATURES))
    [warning] = caught
    said = str(warning.message)
    for where in ("metadata", "cache", "messages[1].cache_point", "messages[1].cache_ttl"):
        assert where in said
    assert "it asks the same" in said and "response cache kept may come back" in said
    assert sent.stop == ["x"] and sent.temperature == 0.5 and sent.messages[1].images == ["https://x/y.png"]
    assert sent == msgspec.structs.replace(
        request,
        metadata=None,
        cache=None,
        messages=[request.messages[0], Message(role="user", content="hi", images=["https://x/y.png"])],
    )
    # what changes the answer stays, for check_request to refuse
    assert unsupported_field(sent, ALL - set(FIRST_FEATURES)) == ("stop", "stop")


def test_a_cache_ttl_goes_with_its_point_and_nothing_is_dropped_that_was_agreed():
    request = build(message={"cache_point": True, "cache_ttl": "5m"})
    with pytest.warns(DroppedExtensionWarning, match=r"messages\[1\]\.cache_ttl"):
        only_ttl = degraded(request, frozenset({"cache_ttl"}))
    assert only_ttl.messages[1].cache_point and only_ttl.messages[1].cache_ttl is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        assert degraded(request, frozenset({"stop", "metadata"})) is request
        assert degraded(request, frozenset()) is request


def test_an_older_server_is_sent_the_request_without_what_changes_no_answer():
    pair = handshake(GTLConnection("client"), GTLConnection("server", features=FIRST_FEATURES))
    request = build({"metadata": {"team": "a"}}, {"cache_point": True})
    with pytest.warns(DroppedExtensionWarning):
        pair.client_send(degraded(request, pair.client.missing_extensions))
    _, [received] = pair.pump()
    assert received.metadata is None and not received.messages[1].cache_point


def test_defaults_are_no_use():
    request = build(
        {
            "stop": [],
            "top_p": None,
            "metadata": {},
            "reasoning": False,
            "cache": None,
            "reasoning_effort": None,
            "reasoning_budget": None,
        },
        {"parts": [], "tool_error": False, "cache_point": False, "cache_ttl": None},
    )
    assert unsupported_field(request, ALL) is None
    assert unsupported_field(build({"stop": None}), ALL) is None
    # parts that say no more than content: one text; text and an image in any order are a use (without
    # parts a dialect places images where its API prefers)
    alone = build(message={"parts": [Part(type="text", text="hi")]})
    assert unsupported_field(alone, ALL - {"parts"}) is None
    then_image = build(message={"parts": [Part(type="text", text="hi"), Part(type="image", url="https://x/y.png")]})
    assert unsupported_field(then_image, frozenset({"parts"})) == ("messages[1].parts", "parts")
    image_first = build(message={"parts": [Part(type="image", url="https://x/y.png"), Part(type="text", text="hi")]})
    assert unsupported_field(image_first, frozenset({"parts"})) == ("messages[1].parts", "parts")
    # a tool choice that does not limit the calls to one is tool calling alone
    assert unsupported_field(build({"tool_choice": {"type": "auto"}}), frozenset({"one_tool_call"})) is None
    # a tool result's name repeats its call's (the tool runner sets it): tool calling, not the name feature
    result = build(message={"role": "tool", "tool_call_id": "t1", "content": "42", "name": "f"})
    assert unsupported_field(result, ALL - {"tool_calls"}) is None


def handshake(client: GTLConnection, server: GTLConnection) -> ConnectionPair:
    pair = ConnectionPair(client, server)
    client_events, server_events = pair.pump()
    assert isinstance(client_events[0], HandshakeComplete) and isinstance(server_events[0], HandshakeComplete)
    return pair


def test_a_client_refuses_what_an_older_server_would_drop_and_nothing_changes():
    pair = handshake(GTLConnection("client"), GTLConnection("server", features=FIRST_FEATURES))
    assert pair.client.missing_extensions == ALL - set(FIRST_FEATURES)
    refused = build({"stop": ["x"]}, {"role": "tool", "tool_call_id": "t1", "content": "boom", "tool_error": True})
    with pytest.raises(UnsupportedFeatureError) as caught:
        pair.client.send(refused)
    error = caught.value
    assert (error.field, error.feature, error.code) == ("stop", "stop", "INVALID_REQUEST")
    assert "the gateway does not support" in error.message and "Upgrade the gateway" in error.message
    assert pair.client.live_sessions == frozenset() and pair.client.data_to_send() == b""
    # the same id, without the field, goes; the first extensions were always announced
    pair.client_send(msgspec.structs.replace(build({"reasoning": True}), stop=[]))
    _, server_events = pair.pump()
    assert [type(event) for event in server_events] == [CompletionRequest]


def test_the_check_costs_nothing_once_every_extension_was_agreed(monkeypatch):
    def never(*args: Any) -> None:
        raise AssertionError("checked a request on a connection that agreed to every extension")

    monkeypatch.setattr(connection_module, "check_request", never)
    pair = handshake(GTLConnection("client"), GTLConnection("server"))
    assert pair.client.missing_extensions == frozenset()
    pair.client_send(build(*USES["tool_error"]))


def test_an_older_client_agrees_on_the_first_features_and_what_it_sends_is_served():
    pair = handshake(GTLConnection("client", features=FIRST_FEATURES), GTLConnection("server"))
    assert pair.server.features == FIRST_FEATURES == pair.client.features
    # a server refuses nothing it knows: the field reaches it as sent (a hand-written client's stop, say)
    pair.to_server.write(b'{"type":"completion_request","session_id":"s2","model":"m","stop":["x"],'
                         b'"messages":[{"role":"user","content":"hi"}]}\n')  # fmt: skip
    _, (received,) = pair.pump()
    assert isinstance(received, CompletionRequest) and received.stop == ["x"]


def test_features_header():
    assert features_from_header(features_value(FEATURES)) == FEATURES
    assert features_from_header(" , ") == ()
    # no header: a gateway older than it, which announced (and read) the first flags everywhere
    assert features_from_header(None) == FIRST_FEATURES
    assert missing_extensions(features_from_header(None)) == ALL - set(FIRST_FEATURES)


def test_the_reasoning_pair_is_one_feature_refused_by_name_on_a_gateway_that_lacks_it():
    """``reasoning_effort`` and ``reasoning_budget`` share the feature ``reasoning_effort``: a gateway that
    did not offer it would think as its deployment says, whatever the caller asked — refused before sending,
    naming the field the request used; the same request without them goes."""
    assert {feature for name, feature, _ in REQUEST_FIELDS if name.startswith("reasoning_")} == {"reasoning_effort"}
    pair = handshake(GTLConnection("client"), GTLConnection("server", features=ALL - {"reasoning_effort"}))
    assert pair.client.missing_extensions == frozenset({"reasoning_effort"})
    for fields, where in (
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"reasoning_budget": 4096}, "reasoning_budget"),
    ):
        with pytest.raises(UnsupportedFeatureError) as caught:
            pair.client.send(build({"reasoning": True, **fields}))
        assert (caught.value.field, caught.value.feature) == (where, "reasoning_effort")
        assert "reasoning_effort" in caught.value.message
    pair.client_send(build({"reasoning": True}))
    _, server_events = pair.pump()
    assert [type(event) for event in server_events] == [CompletionRequest]
