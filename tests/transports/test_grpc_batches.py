"""Several frames per gRPC message (``ServerFrame.more``): sent only to a client that asked for them.

The gateway's ``GrpcStreamChannel`` with ``batches`` appends the serialized frames waiting behind the
first as ``more`` entries of one ``ServerFrame`` (at most ``BATCH_BYTES``); a client's channel reads
them back as the same frames, in order. Without the ask, one frame per message, as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gtl_nb.protocol.codec import encode
from gtl_nb.protocol.frames import REFUSED_START
from gtl_nb.protocol.messages import Token
from gtl_nb.transports.grpc import gtl_pb2 as pb
from gtl_nb.transports.grpc.stream import BATCH_BYTES, GrpcStreamChannel


def frames_of(texts: list[str]) -> list[bytes]:
    return [encode(Token(session_id="s1", text=text)) + b"\n" for text in texts]


async def sent_by_gateway(frames: list[bytes], *, batches: bool) -> list[bytes]:
    """The gRPC messages a gateway's channel sends for ``frames`` written in one loop turn."""
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    async def receive() -> Any:
        return None

    channel = GrpcStreamChannel(receive, send, role="server", batches=batches)
    channel.write(b"".join(frames))
    await channel.aclose()
    return sent


async def read_by_client(messages: list[bytes]) -> bytes:
    """What a client's channel hands its connection for ``messages``, joined."""
    pending = list(messages)

    async def receive() -> Any:
        return pending.pop(0) if pending else None

    async def send(data: bytes) -> None:
        return None

    channel = GrpcStreamChannel(receive, send, role="client")
    reads = []
    while piece := await channel.read():
        reads.append(piece)
    await channel.aclose()
    return b"".join(reads)


def test_the_frames_waiting_go_in_one_message_and_read_back_in_order():
    frames = frames_of([f"token {number}" for number in range(5)])
    [message] = asyncio.run(sent_by_gateway(frames, batches=True))
    parsed = pb.ServerFrame.FromString(message)
    assert parsed.WhichOneof("message") == "token" and [extra.token.text for extra in parsed.more] == [
        f"token {number}" for number in range(1, 5)
    ]
    assert asyncio.run(read_by_client([message])) == b"".join(frames)


def test_without_the_ask_each_frame_is_a_message_of_its_own():
    frames = frames_of(["a", "b", "c"])
    sent = asyncio.run(sent_by_gateway(frames, batches=False))
    assert len(sent) == 3 and not any(pb.ServerFrame.FromString(message).more for message in sent)


@given(st.lists(st.integers(0, BATCH_BYTES + 100), min_size=1, max_size=8))
def test_every_frame_arrives_once_in_order_and_messages_stay_within_the_bound(sizes):
    frames = frames_of(["x" * size for size in sizes])
    sent = asyncio.run(sent_by_gateway(frames, batches=True))
    assert asyncio.run(read_by_client(sent)) == b"".join(frames)
    for message in sent:
        if pb.ServerFrame.FromString(message).more:
            assert len(message) <= BATCH_BYTES


def batch_of(frames: list[bytes], *extras: bytes) -> bytes:
    """A ``ServerFrame`` message: the first of ``frames`` with the rest, then raw ``extras``, as ``more``."""
    protos = [pb.ServerFrame(token=pb.Token(session_id="s1", text=json.loads(f)["text"])) for f in frames]
    message = protos[0]
    message.more.extend(protos[1:])
    return message.SerializeToString() + b"".join(extras)


def test_a_batch_longer_than_a_gateway_sends_is_one_bad_frame_and_is_not_expanded():
    message = batch_of(frames_of(["a", "b"])) + b"\x72\x00" * (BATCH_BYTES // 2)  # 32,768 empty frames
    read = asyncio.run(read_by_client([message]))
    assert read.count(b"\n") == 1 and b"longer than" in read


def test_a_bad_or_nested_entry_ends_the_batch_after_the_frames_before_it():
    good = frames_of(["a", "b"])
    nested = pb.ServerFrame(token=pb.Token(session_id="s2", text="c"))
    nested.more.add(token=pb.Token(session_id="s3", text="d"))
    entry = nested.SerializeToString()
    for extra in (b"\x72\x00" * 100, b"\x72" + bytes([len(entry)]) + entry):  # empty frames; a nested one
        read = asyncio.run(read_by_client([batch_of(good, extra, *([b"\x72\x00"] * 5))]))
        lines = read.splitlines()
        assert lines[:2] == [frame.rstrip(b"\n") for frame in good] and len(lines) == 3  # then one bad frame
        assert lines[2].startswith(REFUSED_START)


def test_a_request_the_wire_refuses_is_answered_not_dropped():
    """A request built by hand with a value no decoder takes (``max_tokens`` 0) cannot be read back by
    the client's own channel: its session gets ``INVALID_REQUEST`` at once, as the gateway would
    answer it, instead of a request that never leaves and a caller that waits forever."""

    async def scenario() -> tuple[list[bytes], list[dict[str, Any]]]:
        sent: list[bytes] = []

        async def send(data: bytes) -> None:
            sent.append(data)

        async def receive() -> Any:
            await asyncio.sleep(3600)  # the gateway says nothing

        channel = GrpcStreamChannel(receive, send, role="client")
        bad = b'{"type":"completion_request","session_id":"s1","model":"echo","messages":[],"max_tokens":0}\n'
        query = b'{"type":"query","query_id":"q1","what":"nothing-such"}\n'
        channel.write(bad + query)
        answers = [json.loads(line) for line in (await channel.read()).splitlines()]
        answers += [json.loads(line) for line in (await channel.read()).splitlines()] if len(answers) < 2 else []
        await channel.aclose()
        return sent, answers

    sent, answers = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert sent == []  # nothing the gateway could not read went out
    error, answer = answers
    assert error["type"] == "error" and error["session_id"] == "s1" and error["code"] == "INVALID_REQUEST"
    assert "max_tokens" in error["message"]
    assert answer["type"] == "answer" and answer["query_id"] == "q1" and answer["error"]["code"] == "INVALID_REQUEST"
