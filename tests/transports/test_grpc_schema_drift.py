"""A proto that stops matching protocol/messages.py is refused when the mapping is built, naming the field."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from gtl_nb.protocol import messages as m
from gtl_nb.transports.grpc.converters import SchemaMismatch
from gtl_nb.transports.grpc.fields import CodecTable

F = descriptor_pb2.FieldDescriptorProto


def proto_class(name: str, fields: list[tuple[str, int, bool]], enum_values: tuple[str, ...] = ()) -> type:
    """A message ``name`` in a fresh pool; ``fields`` are ``(name, type, optional)``; an enum ``E`` if asked."""
    file = descriptor_pb2.FileDescriptorProto(name="drift.proto", package="drift", syntax="proto3")
    if enum_values:
        enum = file.enum_type.add(name="E")
        for number, value in enumerate(enum_values):
            enum.value.add(name=value, number=number)
    message = file.message_type.add(name=name)
    for number, (field_name, kind, optional) in enumerate(fields, start=1):
        field = message.field.add(name=field_name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        if kind == F.TYPE_ENUM:
            field.type_name = ".drift.E"
        if optional:  # proto3 `optional`: a synthetic oneof of its own
            field.proto3_optional = True
            field.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{field_name}")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"drift.{name}"))


def test_a_matching_proto_is_accepted():
    CodecTable({m.Token: proto_class("Token", [("session_id", F.TYPE_STRING, False), ("text", F.TYPE_STRING, False)])})


@pytest.mark.parametrize(
    ("cls", "proto", "complaint"),
    [
        (m.Token, proto_class("Token", [("session_id", F.TYPE_STRING, False)]), "Token.text: the proto has no field"),
        (
            m.Token,
            proto_class("Token", [("session_id", F.TYPE_STRING, False), ("text", F.TYPE_STRING, True)]),
            "Token.text: `optional` in the proto iff optional in GTL",
        ),
        (
            m.Cancel,
            proto_class("Cancel", [("session_id", F.TYPE_BYTES, False)]),
            "Cancel.session_id: must be str",
        ),
        (
            m.Status,
            proto_class(
                "Status",
                [("session_id", F.TYPE_STRING, False), ("state", F.TYPE_ENUM, False)],
                ("STATE_UNSPECIFIED", "STATE_QUEUED"),
            ),
            "Status.state: E lacks",
        ),
        (  # an open enum (the spec closes no set of states) needs the text field beside it
            m.Status,
            proto_class(
                "Status",
                [("session_id", F.TYPE_STRING, False), ("state", F.TYPE_ENUM, False)],
                ("STATUS_STATE_UNSPECIFIED", *(f"STATUS_STATE_{state.upper()}" for state in m.StatusState.__args__)),
            ),
            "Status.state: the proto has no field peer_state for the values E lacks",
        ),
        (
            m.Usage,
            proto_class("Usage", [("session_id", F.TYPE_STRING, False), ("tokens_in", F.TYPE_INT32, True)]),
            "Usage.tokens_in: must be int",
        ),
    ],
)
def test_drift_is_refused_with_the_field_named(cls, proto, complaint):
    with pytest.raises(SchemaMismatch, match="disagree") as caught:
        CodecTable({cls: proto})
    assert complaint in str(caught.value)
