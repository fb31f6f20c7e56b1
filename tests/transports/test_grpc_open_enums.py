"""gRPC keeps the protocol open where the spec closes no set: a status's states and the error codes.

``gtl.proto``'s enums have a number for each state and code this project knows; a newer peer may send one
more. Both directions of the mapping carry it (``converters.OpenEnum``): a value the enum lacks goes as its
text beside the enum (``Status.peer_state``, ``Error.peer_code`` with the code ``INTERNAL``), and a number
this side's enum does not name is read — as that text, else as ``INTERNAL`` / its digits — never refused as
a bad frame. The last test runs a "newer gateway" written against a newer ``gtl.proto`` (raw numbers this
one does not name) on a loopback port and reads it with ``connect("grpc://…")``.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
import pytest

import gtl_nb
from gtl_nb.protocol import messages as m
from gtl_nb.protocol.errors import InternalError
from gtl_nb.transports.conventions import PROVIDERS_END
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc import gtl_pb2_grpc as pb_grpc
from gtl_nb.transports.grpc.mapping import from_proto, parse_frame, to_frame, to_proto

NEWER_STATE = max(value.number for value in pb.StatusState.DESCRIPTOR.values) + 1  # a number this proto lacks
NEWER_CODE = max(value.number for value in pb.ErrorCode.DESCRIPTOR.values) + 1


@pytest.mark.parametrize("frame_type", [pb.ServerFrame, pb.StreamEvent, pb.Frame])
def test_a_state_the_enum_lacks_crosses_as_its_text(frame_type):
    status = m.Status(session_id="s", state="thinking", reason="a newer gateway's state")  # type: ignore[arg-type]
    proto = to_proto(status)
    assert proto.state == pb.STATUS_STATE_UNSPECIFIED and proto.peer_state == "thinking"
    assert from_proto(proto) == status
    assert parse_frame(to_frame(status, frame_type).SerializeToString(), frame_type) == status
    known = m.Status(session_id="s", state="streaming")
    assert not to_proto(known).HasField("peer_state") and from_proto(to_proto(known)) == known


def test_a_code_the_enum_lacks_crosses_as_internal_keeping_it():
    """As the JSON codec reads an unknown code: ``INTERNAL``, the peer's code in ``peer_code``."""
    error = m.Error(session_id="s", code="QUOTA_EXCEEDED", message="monthly quota used up")  # type: ignore[arg-type]
    proto = to_proto(error)
    assert (proto.code, proto.peer_code) == (pb.ERROR_CODE_INTERNAL, "QUOTA_EXCEEDED")
    read = from_proto(proto)
    assert (read.code, read.peer_code, read.message) == ("INTERNAL", "QUOTA_EXCEEDED", "monthly quota used up")
    relayed = m.Error(session_id="s", code="INTERNAL", message="m", peer_code="QUOTA_EXCEEDED")
    assert from_proto(to_proto(relayed)) == relayed  # a code already kept is carried as it is


def test_a_number_this_side_does_not_name_is_read_not_refused():
    """A newer ``gtl.proto``'s number: the text beside it when the sender wrote one, else the number."""
    assert from_proto(pb.Status(session_id="s", state=NEWER_STATE, peer_state="thinking")).state == "thinking"
    assert from_proto(pb.Status(session_id="s", state=NEWER_STATE)).state == str(NEWER_STATE)
    named = from_proto(pb.Error(session_id="s", code=NEWER_CODE, message="m", peer_code="QUOTA_EXCEEDED"))
    assert (named.code, named.peer_code) == ("INTERNAL", "QUOTA_EXCEEDED")
    bare = from_proto(pb.Error(session_id="s", code=NEWER_CODE, message="m"))
    assert (bare.code, bare.peer_code) == ("INTERNAL", str(NEWER_CODE))
    # a number this side names wins over the text (a newer sender writes both for older readers)
    assert from_proto(pb.Status(session_id="s", state=pb.STATUS_STATE_STREAMING, peer_state="x")).state == "streaming"
    frame = pb.ServerFrame(status=pb.Status(session_id="s", state=NEWER_STATE)).SerializeToString()
    assert parse_frame(frame, pb.ServerFrame).state == str(NEWER_STATE)


def test_unset_is_still_refused():
    with pytest.raises(Exception, match="state: is required but not set"):
        from_proto(pb.Status(session_id="s"))
    with pytest.raises(Exception, match="code: is required but not set"):
        from_proto(pb.Error(session_id="s", message="m"))


class NewerGateway(pb_grpc.GTLServicer):
    """A gateway built from a newer ``gtl.proto``: its session's statuses and its error use numbers (and, for
    one status, the text) this side's enums do not name."""

    def Session(self, request_iterator: Any, context: Any) -> Any:
        for frame in request_iterator:
            message = from_proto(frame)
            if isinstance(message, m.Hello):
                yield to_frame(m.Hello(version="1.0", features=message.features), pb.ServerFrame)
                yield to_frame(PROVIDERS_END, pb.ServerFrame)
            elif isinstance(message, m.CompletionRequest):
                sid = message.session_id
                yield pb.ServerFrame(status=pb.Status(session_id=sid, state=NEWER_STATE))
                yield pb.ServerFrame(status=pb.Status(session_id=sid, state=NEWER_STATE, peer_state="thinking"))
                yield to_frame(m.Token(session_id=sid, text="partial"), pb.ServerFrame)
                yield pb.ServerFrame(error=pb.Error(session_id=sid, code=NEWER_CODE, message="monthly quota used up"))


@pytest.fixture
def newer_gateway() -> Any:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GTLServicer_to_server(NewerGateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    server.stop(grace=None)


def test_the_client_reads_a_newer_gateways_states_and_code_over_grpc(newer_gateway):
    """No bad frame: both statuses reach the caller (informational, ending nothing), and the error ends the
    session as ``INTERNAL`` keeping the newer code and the gateway's words."""
    seen: list[Any] = []
    with gtl_nb.connect(newer_gateway) as client:
        stream = client.stream("echo", "hi", on_event=seen.append)
        for _ in stream:
            pass
        with pytest.raises(InternalError) as ended:
            stream.result()
    states = [event.state for event in seen if isinstance(event, m.Status)]
    assert states == [str(NEWER_STATE), "thinking"]
    assert [event.text for event in seen if isinstance(event, m.Token)] == ["partial"]
    assert ended.value.peer_code == str(NEWER_CODE) and "monthly quota used up" in str(ended.value)
