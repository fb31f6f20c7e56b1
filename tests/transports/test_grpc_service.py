"""The generated service works over a real gRPC channel, with frames built and read by the mapping.

A toy servicer (not the gateway, which comes later) on a loopback port: it answers ListProviders,
Complete and a Session whose client frames it reads with ``from_proto``.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from gtl_nb.protocol import messages as m
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
from gtl_nb.transports.grpc.mapping import from_proto, to_frame, to_proto

PROVIDER = m.ProviderInfo(provider="echo", models=[m.ModelInfo(name="echo", context_window=2**40)], offline=True)


def answer(request: m.CompletionRequest) -> list:
    """The events of a session that repeats the last message."""
    text = request.messages[-1].content or ""
    return [m.Token(session_id=request.session_id, text=text), m.Done(session_id=request.session_id)]


class ToyServicer(pb_grpc.GTLServicer):
    """Answers from the mapping's point of view: protos in, GTL messages inside, protos out."""

    def ListProviders(self, request, context):
        return pb.ListProvidersResponse(providers=[to_proto(PROVIDER)])

    def Complete(self, request, context):
        events = answer(from_proto(request))
        return pb.CompletionResult(events=[to_frame(event, pb.StreamEvent) for event in events])

    def Session(self, request_iterator, context):
        for frame in request_iterator:
            message = from_proto(frame)
            if isinstance(message, m.Hello):
                yield to_frame(m.Hello(version="1.0", features=message.features), pb.ServerFrame)
            elif isinstance(message, m.CompletionRequest):
                for event in answer(message):
                    yield to_frame(event, pb.ServerFrame)


@pytest.fixture(scope="module")
def stub():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_GTLServicer_to_server(ToyServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.GTLStub(channel)
    channel.close()
    server.stop(grace=None)


def request(session_id: str, text: str) -> m.CompletionRequest:
    return m.CompletionRequest(session_id=session_id, model="echo", messages=[m.Message(role="user", content=text)])


def test_list_providers(stub):
    response = stub.ListProviders(pb.ListProvidersRequest(), timeout=10)
    assert [from_proto(provider) for provider in response.providers] == [PROVIDER]


def test_complete_returns_every_event_of_the_session(stub):
    result = stub.Complete(to_proto(request("s1", "héllo 😀")), timeout=10)
    assert [from_proto(event) for event in result.events] == answer(request("s1", "héllo 😀"))


def test_a_session_stream_carries_hello_and_many_sessions(stub):
    frames = [m.Hello(versions=["1.0"], features=["reasoning"]), request("a", "one"), request("b", "two")]
    replies = [
        from_proto(frame) for frame in stub.Session(iter([to_frame(f, pb.ClientFrame) for f in frames]), timeout=10)
    ]
    assert replies == [
        m.Hello(version="1.0", features=["reasoning"]),
        *answer(request("a", "one")),
        *answer(request("b", "two")),
    ]
