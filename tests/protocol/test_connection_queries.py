"""``query`` and ``answer``: questions that are not completions, over the same sans-I/O connection."""

from __future__ import annotations

import pytest
from connection_pair import ConnectionPair

from gtl_nb.protocol import (
    Answer,
    ConnectionTerminated,
    Error,
    GTLConnection,
    ProtocolError,
    ProtocolViolation,
    Query,
    SessionStateError,
)
from gtl_nb.protocol.negotiation import FEATURES


def opened(**server: object) -> ConnectionPair:
    pair = ConnectionPair(server=GTLConnection("server", **server))  # type: ignore[arg-type]
    pair.handshake()
    return pair


def test_a_query_is_answered_once_by_id():
    pair = opened()
    pair.client_send(Query(query_id="q1", name="usage", params={"filters": {"status": "ok"}}))
    _, server_events = pair.pump()
    assert server_events == [Query(query_id="q1", name="usage", params={"filters": {"status": "ok"}})]
    pair.server_send(Answer(query_id="q1", result={"rows": [{"id": 1}], "next": None}))
    client_events, _ = pair.pump()
    assert client_events == [Answer(query_id="q1", result={"rows": [{"id": 1}], "next": None})]
    with pytest.raises(SessionStateError, match="not pending"):
        pair.server.send(Answer(query_id="q1", result={}))  # answered already


def test_a_pending_id_is_not_reused_and_queries_go_from_client_to_server_only():
    pair = opened()
    pair.client_send(Query(query_id="q1", name="breakers"))
    with pytest.raises(SessionStateError):
        pair.client.send(Query(query_id="q1", name="breakers"))
    with pytest.raises(ProtocolError, match="a server does not send query"):
        pair.server.send(Query(query_id="q2", name="usage"))
    with pytest.raises(ProtocolError, match="a client does not send answer"):
        pair.client.send(Answer(query_id="q1"))


def test_an_answer_nobody_asked_for_is_a_bad_frame():
    pair = opened()
    pair.inject_to_client(b'{"type":"answer","query_id":"q9","result":{}}\n')
    client_events, _ = pair.pump()
    assert [type(event) for event in client_events] == [ProtocolViolation]


def test_the_end_of_the_connection_answers_every_pending_query_with_an_error():
    pair = opened()
    pair.client_send(Query(query_id="q1", name="usage"))
    pair.pump()
    pair.close_server()
    answers = [event for event in pair.client_events if isinstance(event, Answer)]
    assert len(answers) == 1 and isinstance(answers[0].error, Error)
    assert answers[0].error.code == "PROVIDER_UNAVAILABLE" and answers[0].error.retryable
    assert isinstance(pair.client_events[-1], ConnectionTerminated)


def test_an_older_server_without_the_feature_is_not_asked():
    pair = opened(features=[name for name in FEATURES if name != "query"])
    assert "query" not in pair.client.features
    with pytest.raises(ProtocolError, match="older gateway"):
        pair.client.send(Query(query_id="q1", name="usage"))


def test_a_query_nested_too_deep_is_refused_like_any_frame():
    pair = opened()
    deep = b'{"type":"query","query_id":"q1","name":"usage","params":' + b'{"a":' * 70 + b"1" + b"}" * 71 + b"\n"
    pair.inject_to_server(deep)
    _, server_events = pair.pump()
    assert [type(event) for event in server_events] == [ProtocolViolation]
