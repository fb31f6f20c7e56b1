"""GTLConnection, rule by rule: the hello exchange, sessions, cancel, limits, bad frames, the end."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec
import pytest
from connection_pair import ConnectionPair, drain

from gtl_nb.protocol import (
    CONNECTION_CLOSED,
    NEED_DATA,
    AuthenticationError,
    Cancel,
    CompletionRequest,
    ConfigurationError,
    ConnectionState,
    ConnectionTerminated,
    Done,
    Error,
    FrameReader,
    FrameTooLargeError,
    GTLConnection,
    HandshakeComplete,
    Hello,
    InvalidRequestError,
    Message,
    ProtocolError,
    ProtocolViolation,
    ProviderInfo,
    Reasoning,
    SessionStateError,
    Status,
    Token,
    Usage,
    VersionMismatchError,
    decode,
    encode,
)
from gtl_nb.protocol.codec import frames_within
from gtl_nb.protocol.frames import HEAD_BYTES, string_field

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "gtl_nb" / "protocol"


def request(sid: str, content: str = "hi") -> CompletionRequest:
    return CompletionRequest(session_id=sid, model="m", messages=[Message(role="user", content=content)])


def streaming(sid: str) -> Status:
    return Status(session_id=sid, state="streaming")


def frames(data: bytes) -> list[object]:
    return [decode(line) for line in data.splitlines() if line]


def opened(**server_options: object) -> ConnectionPair:
    pair = ConnectionPair(server=GTLConnection("server", **server_options))  # type: ignore[arg-type]
    pair.handshake()
    return pair


def of(events: list[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


# -- the hello exchange -------------------------------------------------------------------------


def test_the_client_queues_its_hello_and_both_sides_agree_on_the_highest_common_version():
    client = GTLConnection("client", versions=["1.0", "1.1"], features=["reasoning", "cancel"], token="tok")
    sent = client.data_to_send()
    assert frames(sent) == [Hello(versions=["1.0", "1.1"], features=["reasoning", "cancel"], token="tok")]
    server = GTLConnection("server", versions=["1.0", "1.1", "2.0"], features=["cancel", "failover"])
    pair = ConnectionPair(client, server)
    pair.inject_to_server(sent)
    client_events, server_events = pair.pump()
    assert client_events == [HandshakeComplete("1.1", ("cancel",), client_events[0].peer_hello)]
    (done,) = server_events
    assert (done.version, done.features, done.token) == ("1.1", ("cancel",), "tok")
    assert client.state is server.state is ConnectionState.OPEN
    assert client.version == server.version == "1.1" and client.features == server.features == ("cancel",)


def test_the_hello_token_never_shows_in_a_repr():
    pair = ConnectionPair(GTLConnection("client", token="ghost-secret"))
    _, (done,) = pair.pump()
    assert done.token == "ghost-secret"
    assert "ghost-secret" not in repr(done) and "ghost-secret" not in repr(done.peer_hello)


def test_a_server_refuses_a_token_by_closing_with_the_reason():
    pair = ConnectionPair(GTLConnection("client", token="wrong"))
    _, (hello,) = pair.pump()
    assert hello.token == "wrong"
    pair.to_client.write(pair.server.close(AuthenticationError("unknown GhostToken")))
    client_events, _ = pair.pump()
    (end,) = client_events
    assert isinstance(end.error, AuthenticationError) and end.by_peer and "unknown GhostToken" in str(end.error)


def test_no_common_version_is_a_clear_error_the_client_reads_before_the_end():
    pair = ConnectionPair(GTLConnection("client", versions=["2.0"]), GTLConnection("server", versions=["1.0"]))
    client_events, server_events = pair.pump()
    (server_end,) = server_events
    assert isinstance(server_end.error, VersionMismatchError) and not server_end.by_peer
    (client_end,) = client_events
    assert isinstance(client_end, ConnectionTerminated) and client_end.by_peer
    assert "no common GTL version: client offers ['2.0'], server supports ['1.0']" in str(client_end.error)
    assert pair.client.next_event() is CONNECTION_CLOSED and pair.server.next_event() is CONNECTION_CLOSED


def test_a_client_refuses_an_answer_with_a_version_it_did_not_offer():
    client = GTLConnection("client", versions=["1.0"])
    client.data_to_send()
    client.receive_data(encode(Hello(version="1.1")) + b"\n")
    (end,) = drain(client)
    assert isinstance(end.error, VersionMismatchError) and "answered version '1.1'" in str(end.error)
    assert frames(client.data_to_send())[0].session_id == ""  # the server is told why


def test_nothing_but_hello_before_the_exchange_completes():
    client = GTLConnection("client")
    with pytest.raises(ProtocolError, match="before the hello exchange completed"):
        client.send(request("s1"))
    server = GTLConnection("server")
    with pytest.raises(ProtocolError, match="before the hello exchange completed"):
        server.send(streaming("s1"))
    client.receive_data(encode(streaming("s1")) + b"\n")  # a server must answer the client's hello first
    (end,) = drain(client)
    assert isinstance(end, ConnectionTerminated) and "expected hello before anything else" in str(end.error)
    (reply,) = frames(client.data_to_send())[1:]  # after the client's own hello
    assert reply.session_id == "" and reply.code == "INTERNAL"


def test_a_server_implies_hello_for_a_client_that_sends_none():
    """The spec has no hello: its peer's first frame is a request. The server takes it to have offered 1.0
    and no features, answers nothing it did not ask for, and serves the request."""
    server = GTLConnection("server")
    server.receive_data(encode(request("s1")) + b"\n" + encode(Cancel(session_id="s1")) + b"\n")
    handshake, started, cancel = drain(server)
    assert isinstance(handshake, HandshakeComplete) and handshake.implicit
    assert (handshake.version, handshake.features, handshake.token) == ("1.0", (), None)
    assert started == request("s1") and cancel == Cancel(session_id="s1")
    assert server.state is ConnectionState.OPEN and server.live_sessions == {"s1"}
    assert server.data_to_send() == b""  # no hello answer, nothing else
    sent = server.send(streaming("s1")) + server.send(Error(session_id="s1", code="CANCELLED", message="stopped"))
    assert [frame.type for frame in frames(sent)] == ["status", "error"]
    with pytest.raises(ProtocolError, match="a second hello"):  # a hello now is out of order, as after one
        server.receive_data(encode(Hello(versions=["1.0"])) + b"\n")
        (violation,) = drain(server)
        raise violation.error


def test_an_implied_hello_offers_the_transports_versions():
    """A WebSocket upgrade's or gRPC call's ``GTL-Version`` is what the hello-less client speaks."""
    server = GTLConnection("server", versions=["1.0", "1.1"], implied_versions=["1.1"])
    server.receive_data(encode(request("s1")) + b"\n")
    handshake, _ = drain(server)
    assert handshake.version == "1.1" and handshake.peer_hello.versions == ["1.1"]
    refusing = GTLConnection("server", versions=["1.0"], implied_versions=["2.0"])
    refusing.receive_data(encode(request("s1")) + b"\n")
    (end,) = drain(refusing)
    assert isinstance(end.error, VersionMismatchError) and "client offers ['2.0']" in str(end.error)
    (reply,) = frames(refusing.data_to_send())
    assert reply.session_id == "" and reply.code == "INVALID_REQUEST"


def test_a_hello_less_first_request_that_does_not_decode_is_one_bad_frame():
    server = GTLConnection("server")
    server.receive_data(b'{"type":"completion_request","session_id":"s1","model":7}\n' + encode(request("s2")) + b"\n")
    handshake, violation, started = drain(server)
    assert handshake.implicit and isinstance(violation, ProtocolViolation) and violation.session_id == "s1"
    assert started == request("s2")
    (refusal,) = frames(server.data_to_send())
    assert (refusal.session_id, refusal.code) == ("s1", "INVALID_REQUEST") and "model" in refusal.message
    garbage = GTLConnection("server")
    garbage.receive_data(b"not json\n")
    (end,) = drain(garbage)
    assert isinstance(end, ConnectionTerminated) and "malformed frame" in str(end.error)


def test_hello_is_the_connections_own_business():
    pair = opened()
    with pytest.raises(ProtocolError, match="sends hello itself"):
        pair.client.send(Hello(versions=["1.0"]))
    with pytest.raises(ConfigurationError):
        GTLConnection("server", token="t")
    with pytest.raises(ConfigurationError):
        GTLConnection("proxy")  # type: ignore[arg-type]


def test_a_second_hello_is_a_bad_frame():
    pair = opened()
    pair.inject_to_server(encode(Hello(versions=["1.0"])) + b"\n")
    _, server_events = pair.pump()
    assert [type(e) for e in server_events] == [ProtocolViolation]
    assert "a second hello" in str(server_events[0].error)


def test_the_server_closing_before_answering_hello_is_an_error():
    pair = ConnectionPair()
    pair.client.data_to_send()
    pair.close_server()
    (end,) = pair.client_events
    assert "before answering hello" in str(end.error)


# -- sessions -----------------------------------------------------------------------------------


def test_many_sessions_interleave_and_each_arrives_in_order():
    pair = opened()
    for sid in ("a", "b", "c"):
        pair.client_send(request(sid))
    _, server_events = pair.pump()
    assert [e.session_id for e in server_events] == ["a", "b", "c"]
    script = [streaming("b"), streaming("a"), Token(session_id="a", text="1"), streaming("c")]
    script += [
        Token(session_id="b", text="2"),
        Done(session_id="a"),
        Error(session_id="c", code="TIMEOUT", message="x"),
    ]
    script += [Usage(session_id="b", tokens_in=1, tokens_out=1), Done(session_id="b")]
    for event in script:
        pair.server_send(event)
    client_events, _ = pair.pump()
    assert client_events == script
    assert pair.client.live_sessions == pair.server.live_sessions == frozenset()


def test_a_second_request_with_a_live_id_is_refused_locally():
    pair = opened()
    pair.client_send(request("s1"))
    with pytest.raises(ProtocolError, match="still live") as refused:
        pair.client.send(request("s1"))
    assert refused.value.code == "INVALID_REQUEST"  # the caller's mistake, not the library's
    pair.pump()
    pair.server_send(Error(session_id="s1", code="INTERNAL", message="x"))
    pair.pump()
    pair.client_send(request("s1"))  # an id may be reused once its session ended


def test_a_second_request_with_a_live_id_from_the_peer_ends_that_session():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.inject_to_server(encode(request("s1")) + b"\n")
    client_events, server_events = pair.pump()
    violation, ended = server_events
    assert isinstance(violation, ProtocolViolation) and violation.session_id == "s1"
    assert "a second completion_request for live session 's1'" in str(violation.error)
    assert ended == Error(session_id="s1", code="INVALID_REQUEST", message=violation.error.message)
    assert client_events == [ended]  # the client's session ends with the same error
    assert pair.server.send(Token(session_id="s1", text="late")) == b""  # the application's late events go nowhere


def test_a_request_for_an_id_the_server_still_ends_is_refused_and_never_gets_the_old_sessions_events():
    """The connection ended a session (a bad frame) and told the client, but the application is still
    ending it: a request reusing that id became the live session, so the old session's late events —
    its terminal ``CANCELLED`` — ended the new one. It is refused on its own (retryable; no bad frame
    counted), and once the old session's end has been sent the id may be used again."""
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.inject_to_server(encode(request("s1")) + b"\n")  # the duplicate: s1 is abandoned
    pair.pump()
    bad_frames = pair.server.bad_frames
    pair.client_send(request("s1", "again"))  # the client has seen s1 end: it may reuse the id
    client_events, server_events = pair.pump()
    assert server_events == []  # the application never sees it: its old session of the id still runs
    (refused,) = client_events
    assert (refused.session_id, refused.code, refused.retryable) == ("s1", "INVALID_REQUEST", True)
    assert "still ending" in refused.message and pair.server.bad_frames == bad_frames
    assert pair.server.send(Token(session_id="s1", text="late")) == b""  # the old session's events go nowhere
    assert pair.server.send(Error(session_id="s1", code="CANCELLED", message="old")) == b""
    pair.client_send(request("s1", "now"))  # the old one has ended: the id is free
    _, server_events = pair.pump()
    assert server_events == [request("s1", "now")]


def test_the_server_may_not_send_events_out_of_order():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    with pytest.raises(SessionStateError, match="unknown session 'nope'"):
        pair.server.send(streaming("nope"))
    with pytest.raises(SessionStateError, match="before the first status"):
        pair.server.send(Token(session_id="s1", text="x"))
    pair.server_send(streaming("s1"))  # the refused send changed nothing
    pair.server_send(Done(session_id="s1"))
    with pytest.raises(SessionStateError, match="ended session 's1'"):
        pair.server.send(Token(session_id="s1", text="x"))
    with pytest.raises(ProtocolError, match="close\\(error\\)"):
        pair.server.send(Error(session_id="", code="INTERNAL", message="x"))


def test_messages_of_the_wrong_direction_are_refused_locally():
    pair = opened()
    with pytest.raises(ProtocolError, match="a client does not send token"):
        pair.client.send(Token(session_id="s1", text="x"))
    with pytest.raises(ProtocolError, match="a server does not send completion_request"):
        pair.server.send(request("s1"))
    pair.server_send(ProviderInfo(provider="p"))
    assert pair.pump()[0] == [ProviderInfo(provider="p")]


def test_a_message_of_the_wrong_direction_from_the_peer_ends_its_session():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.inject_to_server(encode(Token(session_id="s1", text="x")) + b"\n")
    client_events, server_events = pair.pump()
    assert "token goes from server to client" in str(server_events[0].error)
    assert server_events[1].session_id == "s1" and client_events == [server_events[1]]


def test_an_event_for_an_unknown_or_ended_session_is_a_bad_frame():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.server_send(Error(session_id="s1", code="INTERNAL", message="x"))
    pair.inject_to_client(encode(Token(session_id="s1", text="x")) + b"\n")
    pair.inject_to_client(encode(streaming("ghost")) + b"\n")
    client_events, _ = pair.pump()
    first, second = of(client_events, ProtocolViolation)
    assert "token for ended session 's1'" in str(first.error)
    assert "status for unknown session 'ghost'" in str(second.error)


# -- cancel ---------------------------------------------------------------------------------------


def test_after_a_cancel_events_stay_legal_until_the_one_terminal_event():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.server_send(streaming("s1"))
    pair.client_send(Cancel(session_id="s1"))
    assert pair.client.send(Cancel(session_id="s1")) == b""  # said once
    _, server_events = pair.pump()
    assert server_events == [Cancel(session_id="s1")]
    pair.server_send(Token(session_id="s1", text="in flight"))
    pair.server_send(Error(session_id="s1", code="CANCELLED", message="cancelled"))
    pair.pump()
    session = [e for e in pair.client_events if getattr(e, "session_id", None) == "s1"]
    assert [type(e) for e in session] == [Status, Token, Error] and session[-1].code == "CANCELLED"


def test_a_done_that_crossed_the_cancel_ends_the_session_and_the_late_cancel_is_ignored():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.server_send(streaming("s1"))
    pair.server_send(Done(session_id="s1"))  # on the wire while the client cancels
    pair.client_send(Cancel(session_id="s1"))
    client_events, server_events = pair.pump()
    assert client_events == [streaming("s1"), Done(session_id="s1")]
    assert server_events == []
    assert pair.client.send(Cancel(session_id="s1")) == b""


def test_the_server_reports_one_cancel_per_session_and_none_for_a_session_it_does_not_know():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    for sid in ("s1", "s1", "never"):
        pair.inject_to_server(encode(Cancel(session_id=sid)) + b"\n")
    _, server_events = pair.pump()
    assert server_events == [Cancel(session_id="s1")]
    assert pair.server.bad_frames == 0


# -- frame size -----------------------------------------------------------------------------------


def test_a_frame_over_the_limit_is_refused_on_send_and_changes_nothing():
    # (400: the client's own hello, every feature listed, must fit)
    pair = ConnectionPair(GTLConnection("client", max_frame_bytes=400), GTLConnection("server"))
    pair.handshake()
    with pytest.raises(FrameTooLargeError, match="exceeds the maximum frame size of 400 bytes"):
        pair.client.send(request("s1", "x" * 500))
    pair.client_send(request("s1"))


def test_an_oversized_request_from_the_peer_is_answered_with_an_error_for_its_session():
    pair = ConnectionPair(to_server_cuts=range(0, 5000, 97), server=GTLConnection("server", max_frame_bytes=300))
    pair.handshake()
    pair.client.send_limit = 10_000  # a client that did not read the limit in the server's hello answer
    pair.client_send(request("s1", "x" * 1000))
    client_events, server_events = pair.pump()
    (violation,) = server_events
    assert isinstance(violation.error, FrameTooLargeError) and violation.session_id == "s1"
    (ended,) = client_events
    assert ended.session_id == "s1" and ended.code == "INVALID_REQUEST" and "maximum frame size" in ended.message
    assert pair.client.live_sessions == frozenset() and pair.client.bad_frames == 0


def test_a_client_refuses_a_request_over_the_limit_the_server_announced():
    pair = ConnectionPair(server=GTLConnection("server", max_frame_bytes=300))
    pair.handshake()
    assert pair.client.send_limit == 300 and pair.client.max_frame_bytes > 300  # reading stays at its own limit
    with pytest.raises(FrameTooLargeError, match="maximum frame size of 300 bytes"):
        pair.client.send(request("s1", "x" * 1000))
    pair.client_send(request("s2", "small"))  # nothing changed: the connection carries on
    _, server_events = pair.pump()
    assert [event.session_id for event in server_events] == ["s2"]


def test_an_answers_text_longer_than_the_peers_frames_goes_as_several_tokens_of_the_same_text():
    """A ``token`` (or ``reasoning``) too long for the connection's frames is cut, never refused: a long
    answer not streamed arrives as one token, and the protocol says nothing of how text is cut."""
    pair = ConnectionPair(server=GTLConnection("server", max_frame_bytes=400))  # a gateway's [gateway] setting
    pair.handshake()
    assert pair.server.send_limit == 400
    pair.client_send(request("s1"))
    pair.pump()
    text = "Å harbour, a quay — 港. " * 60  # ~1.6 KB in UTF-8, several characters of two and three bytes
    pair.server_send(streaming("s1"))
    pair.server_send(Reasoning(session_id="s1", text=text))
    pair.server_send(Token(session_id="s1", text=text))
    pair.server_send(Done(session_id="s1"))
    client_events, _ = pair.pump()
    tokens = [e.text for e in client_events if isinstance(e, Token)]
    thoughts = [e.text for e in client_events if isinstance(e, Reasoning)]
    assert "".join(tokens) == text == "".join(thoughts) and len(tokens) > 4 and len(thoughts) > 4
    assert client_events[-1] == Done(session_id="s1") and pair.client.bad_frames == 0
    assert all(len(encode(event)) <= 400 for event in client_events)
    with pytest.raises(FrameTooLargeError):  # anything else still is refused whole
        frames_within(Error(session_id="s1", code="INTERNAL", message="x" * 500), 400)
    with pytest.raises(FrameTooLargeError):  # a token whose one character cannot fit (its id is the bulk)
        frames_within(Token(session_id="s" * 500, text="ab"), 400)


def test_a_reasoning_block_cut_into_pieces_keeps_its_end_mark_on_the_last_piece_only():
    """A provider block's ``signature`` marks where the block ends: cut, only its last piece may carry it."""
    text = "Å harbour, a quay — 港. " * 60
    frames = frames_within(Reasoning(session_id="s1", text=text, signature="SIG"), 400).splitlines()
    pieces = [decode(frame) for frame in frames]
    assert len(pieces) > 4 and "".join(piece.text for piece in pieces) == text
    assert [piece.signature for piece in pieces] == [None] * (len(pieces) - 1) + ["SIG"]


# -- bad frames -------------------------------------------------------------------------------------


def test_a_broken_request_is_answered_with_an_error_for_its_session():
    pair = opened()
    frame = pair.client.send(request("s1"))
    pair.inject_to_server(frame.replace(b'"messages":[', b'"messages":7,"x":['))
    client_events, server_events = pair.pump()
    assert [type(e) for e in server_events] == [ProtocolViolation]  # the application never saw the session
    (ended,) = client_events
    assert ended.session_id == "s1" and ended.code == "INVALID_REQUEST"
    assert pair.client.live_sessions == frozenset() and pair.client.bad_frames == 0


def test_an_undecodable_frame_for_a_live_session_ends_it_on_both_sides():
    pair = opened()
    pair.client_send(request("s1"))
    pair.client_send(request("s2"))
    pair.pump()
    pair.inject_to_server(b'{"type":"cancel","session_id":"s1",,,}\n')
    client_events, server_events = pair.pump()
    violation, ended = server_events
    assert violation.session_id == "s1" and violation.bad_frames == 1
    assert ended.session_id == "s1" and ended.code == "INVALID_REQUEST"
    assert client_events == [ended]
    assert pair.server.live_sessions == {"s2"} and pair.client.live_sessions == {"s2"}
    assert pair.server.send(streaming("s1")) == b""
    pair.server_send(Done(session_id="s1"))  # the application's late terminal closes the matter
    with pytest.raises(SessionStateError):
        pair.server.send(streaming("s1"))


def test_a_bad_frame_from_the_server_ends_the_session_and_cancels_it():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.server_send(streaming("s1"))
    pair.inject_to_client(b'{"type":"token","session_id":"s1","text":\xff}\n')
    client_events, server_events = pair.pump()
    _, violation, ended = client_events
    assert violation.session_id == "s1" and ended.code == "INTERNAL" and ended.session_id == "s1"
    assert server_events == [Cancel(session_id="s1")]
    # the server's remaining events for s1 are dropped by the client, its terminal included
    pair.server_send(Token(session_id="s1", text="late"))
    pair.server_send(Error(session_id="s1", code="CANCELLED", message="cancelled"))
    assert pair.pump() == ([], [])
    assert pair.client.bad_frames == 1


def test_a_broken_terminal_event_ends_the_session_without_a_cancel():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.inject_to_client(b'{"type":"done","session_id":"s1","finish_reason":"nope"}\n')
    client_events, server_events = pair.pump()
    assert [type(e) for e in client_events] == [ProtocolViolation, Error]
    assert server_events == []


def test_repeated_bad_frames_end_the_connection_and_every_session():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    for garbage in (b"garbage\n", b"{\n", b"[1,2]\n"):
        pair.inject_to_server(garbage)
    client_events, server_events = pair.pump()
    assert [type(e) for e in server_events] == [ProtocolViolation] * 3 + [Error, ConnectionTerminated]
    end = server_events[-1]
    assert "3 bad frames from the client" in str(end.error) and not end.by_peer
    assert server_events[3].session_id == "s1"
    (ended, client_end) = client_events
    assert ended.session_id == "s1" and ended.code == "INVALID_REQUEST"
    assert client_end.by_peer and isinstance(client_end.error, InvalidRequestError)
    assert pair.client.closed and pair.server.closed
    with pytest.raises(ProtocolError, match="the connection is closed"):
        pair.client.send(request("s2"))


def test_the_limit_is_configurable():
    pair = opened(max_bad_frames=1)
    pair.inject_to_server(b"garbage\n")
    _, server_events = pair.pump()
    assert [type(e) for e in server_events] == [ProtocolViolation, ConnectionTerminated]


# -- the end ------------------------------------------------------------------------------------------


def test_end_of_stream_ends_every_live_session_on_both_sides():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.close_server()
    ended, end = pair.client_events[-2:]
    assert ended.session_id == "s1" and ended.code == "PROVIDER_UNAVAILABLE" and ended.retryable
    assert end == ConnectionTerminated(None, by_peer=True)

    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.close_client()
    ended, end = pair.server_events[-2:]
    assert ended.code == "CANCELLED" and end == ConnectionTerminated(None, by_peer=True)


def test_a_partial_frame_at_the_end_is_a_bad_frame_of_its_session():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.client.receive_data(b'{"type":"token","session_id":"s1","te')
    pair.client.receive_data(b"")
    events = drain(pair.client)
    assert [type(e) for e in events] == [ProtocolViolation, Error, ConnectionTerminated]
    assert events[0].session_id == "s1" and "ended inside a frame" in str(events[0].error)


def test_close_tells_the_peer_and_ends_local_sessions():
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    last = pair.server.close(InvalidRequestError("going away"))
    assert frames(last) == [Error(session_id="", code="INVALID_REQUEST", message="going away")]
    ended, end = drain(pair.server)
    assert ended == Error(session_id="s1", code="INVALID_REQUEST", message="going away")
    assert isinstance(end.error, InvalidRequestError) and not end.by_peer
    assert pair.server.close() == b""
    assert pair.server.send(Token(session_id="s1", text="x")) == b""  # nowhere to go, nothing raised
    pair.to_client.write(last)
    client_events, _ = pair.pump()
    assert [type(e) for e in client_events] == [Error, ConnectionTerminated]
    assert client_events[0] == Error(session_id="s1", code="INVALID_REQUEST", message="going away")


@pytest.mark.parametrize(
    "code", ["INTERNAL", "RATE_LIMIT", "AUTH_FAILED", "PROVIDER_UNAVAILABLE", "CANCELLED", "CLIENT_QUIT"]
)
def test_a_clients_connection_level_error_is_the_client_going_away_whatever_its_code(code: str):
    """Whatever its code — one the server does not know too (``CLIENT_QUIT``: no bad frame, quoted as written)."""
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    words = "client-chosen\n\x1b[31mforged \u202e" + "y" * 500
    frame = msgspec.json.encode({"type": "error", "session_id": "", "code": code, "message": words})
    pair.inject_to_server(frame + b"\n")
    _, server_events = pair.pump()
    ended, end = server_events[-2:]
    # the session ends as a cancel: the client cannot make it read as the gateway's or a provider's failure
    assert ended == Error(session_id="s1", code="CANCELLED", message="the client ended the connection")
    assert end.by_peer and end.error.code == "CANCELLED"
    # its words, for a log line: quoted, cut, every control character escaped
    said = str(end.error)
    assert code in said and "client-chosen\\n\\x1b[31mforged \\u202e" in said and said.endswith("…)")
    assert said.isprintable() and "y" * 500 not in said  # cut: a client's words do not fill a log


def test_after_the_end_only_connection_closed_and_late_bytes_are_ignored():
    server = GTLConnection("server")
    server.receive_data(b"")
    assert [type(e) for e in drain(server)] == [ConnectionTerminated]
    assert server.next_event() is CONNECTION_CLOSED and server.next_event() is CONNECTION_CLOSED
    with pytest.raises(ProtocolError, match="after the end of the stream"):
        server.receive_data(b"x")
    fresh = GTLConnection("server")
    assert fresh.next_event() is NEED_DATA
    fresh.close()
    fresh.receive_data(b"late bytes\n")  # in flight when this side closed: ignored
    assert [type(e) for e in drain(fresh)] == [ConnectionTerminated]


def test_bytes_come_out_once_and_in_order_through_either_door():
    pair = opened()
    pair.inject_to_server(b'{"type":"completion_request","session_id":"s9",,}\n')  # the server queues an error
    pair.to_server.write(pair.client.data_to_send())
    for piece in pair.to_server.take():
        pair.server.receive_data(piece)
    drain(pair.server)
    pair.client_send(request("s1"))
    pair.to_server.write(pair.client.data_to_send())
    for piece in pair.to_server.take():
        pair.server.receive_data(piece)
    drain(pair.server)
    out = pair.server.send(streaming("s1"))  # the queued reply comes first, then the event
    assert [type(m) for m in frames(out)] == [Error, Status]
    assert pair.server.data_to_send() == b""


# -- frames.py: what a bad frame reveals ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"type":"token","session_id":"s1",', "s1"),
        (b'{ "session_id" :\t"a\\"b" }', 'a"b'),
        (b'{"sid":"s2"', None),  # the alias is asked for separately
        (b'{"text":"\\"session_id\\":\\"fake\\"","session_id":"real"}', "real"),
        (b'{"x":["session_id"],"session_id":"after"}', "after"),
        (b'{"session_id":5}', None),
        (b'{"session_id":"unterminated', None),
        (b'{"session_id":""}', None),
        (b'{"session_id":"\\ud800"}', None),
    ],
)
def test_string_field_reads_a_key_from_broken_json(data, expected):
    assert string_field(data, b"session_id") == expected


def test_the_frame_reader_names_the_session_of_a_bad_frame_split_anywhere():
    frame = b'{"type":"completion_request","sid":"s7","model":1}\n'
    for cut in range(len(frame)):
        reader = FrameReader()
        items = reader.feed(frame[:cut]) + reader.feed(frame[cut:])
        (bad,) = items
        assert (bad.session_id, bad.message_type) == ("s7", "completion_request")


def test_the_frame_reader_names_the_session_of_an_oversized_frame():
    reader = FrameReader(max_frame_bytes=64)
    items = reader.feed(b'{"type":"token","session_id":"big",')
    items += reader.feed(b'"text":"' + b"x" * 100 + b'"}\n' + encode(streaming("ok")) + b"\n")
    bad, good = items
    assert isinstance(bad.error, FrameTooLargeError) and bad.session_id == "big" and good == streaming("ok")


# -- sans-I/O -----------------------------------------------------------------------------------------


def test_the_protocol_package_reads_no_clock_and_does_no_io():
    clock_calls = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns", "sleep"}
    for path in PROTOCOL_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"time", "asyncio", "socket", "datetime", "selectors"}, path.name
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & clock_calls, f"{path.name} reads the clock"


def test_events_are_plain_values():
    event = ProtocolViolation(ProtocolError("x"), "s1", 1)
    assert event == ProtocolViolation(event.error, "s1", 1)
    assert msgspec.json.decode(encode(Hello(versions=["1.0"], token="t")))["token"] == "t"


def test_a_subclass_of_provider_info_is_sent_like_provider_info():
    """The per-event fast path tests the event types by exact type (they refuse subclasses); the other
    server messages may be subclassed and are still sent."""

    class Described(ProviderInfo, frozen=True):
        pass

    pair = ConnectionPair()
    pair.handshake()
    data = pair.server.send(Described(provider="p"))
    assert data == b'{"type":"provider_info","provider":"p"}\n'


@pytest.mark.parametrize(
    ("frame", "fault"),
    [
        (
            b'{"type":"completion_request","session_id":"\\ud800","model":"echo","messages":[]}\n',  # a lone surrogate
            "has a session_id that is not valid text",
        ),
        (
            b'{"type":"completion_request","session_id":7,"model":"echo","messages":[]}\n',
            "has a session_id that is not a string (a number)",
        ),
        (
            b'{"type":"completion_request","session_id":null,"model":"echo","messages":[]}\n',
            "has a session_id that is not a string (null)",
        ),
        (b'{"type":"completion_request","model":"echo","messages":[]}\n', "has no session_id"),
        # an empty id is the connection's own: no session's error can carry the answer either (it was
        # counted as a bad frame and never answered, so a client waited for it)
        (
            b'{"type":"completion_request","session_id":"","model":"echo","messages":[]}\n',
            'has an empty session_id ("")',
        ),
        # an id the reader could not reach: a frame refused (its temperature) whose id comes after its first bytes
        (
            b'{"type":"completion_request","model":"echo","messages":[{"role":"user","content":"'
            + b"x" * HEAD_BYTES
            + b'"}],"temperature":9,"session_id":"late"}\n',
            f"has no session_id in its first {HEAD_BYTES} bytes",
        ),
        # the same, in a frame the decoder refuses for another field too: the id is what ends the connection
        (
            b'{"type":"completion_request","session_id":"","model":"echo","messages":[],"temperature":9}\n',
            'has an empty session_id ("")',
        ),
    ],
)
def test_a_request_whose_session_cannot_be_read_is_answered_by_ending_the_connection(frame, fault):
    """Its session cannot be told, so no session's error can answer it; left alone, the client would
    wait for it until two more bad frames. Ending the connection answers it (and every other session),
    and its error says exactly what was wrong with the id, why that ends the connection, and what to do."""
    pair = opened()
    pair.client_send(request("s1"))
    pair.pump()
    pair.inject_to_server(frame)
    client_events, server_events = pair.pump()
    assert [type(e) for e in server_events][-1] is ConnectionTerminated
    said = str(server_events[-1].error)
    assert f"closing the connection: a completion_request {fault}" in said  # what was wrong
    assert 'session_id "" names the connection itself' in said  # why the connection ends
    assert "give each request a non-empty session_id of its own" in said  # what to do
    told = [e for e in client_events if isinstance(e, ConnectionTerminated)]
    assert told and f"a completion_request {fault}" in str(told[0].error)  # the client reads the same words
    if b"temperature" in frame:  # the decoder's other reason is kept
        assert "the frame was refused for this too" in said and "temperature" in said
    elif b"\\ud800" in frame:  # not JSON the decoder reads: its own words say where
        assert "the frame was refused for this too: malformed frame (not JSON" in said
    else:
        assert "refused for this too" not in said  # the decoder's words about the id itself are not repeated
    assert any(isinstance(e, Error) and e.session_id == "s1" and e.code == "INVALID_REQUEST" for e in client_events)
    assert pair.server.closed


def test_a_newer_servers_status_state_and_error_code_end_nothing_on_the_client_by_themselves():
    """Forward compatibility: an unknown ``status`` state is one more status (no bad frame, no cancel), and
    an unknown ``error`` code ends its session as an ``INTERNAL`` error keeping the server's code and words."""
    pair = opened()
    pair.client_send(request("s1"))
    pair.client_send(request("s2"))
    pair.pump()
    pair.inject_to_client(
        b'{"type":"status","session_id":"s1","state":"thinking"}\n'
        b'{"type":"token","session_id":"s1","text":"hi"}\n'
        b'{"type":"done","session_id":"s1"}\n'
        b'{"type":"error","session_id":"s2","code":"QUOTA_EXCEEDED","message":"monthly quota used up"}\n'
    )
    client_events, server_events = pair.pump()
    assert not of(client_events, ProtocolViolation) and pair.client.bad_frames == 0
    assert [type(e) for e in client_events] == [Status, Token, Done, Error]
    assert client_events[0].state == "thinking"
    ended = client_events[-1]
    assert (ended.code, ended.peer_code, ended.message) == ("INTERNAL", "QUOTA_EXCEEDED", "monthly quota used up")
    assert not of(server_events, Cancel) and pair.client.live_sessions == frozenset()
