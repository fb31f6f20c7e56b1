"""The AWS event-stream frame decoder: recorded Bedrock bodies, every header type, corruption."""

from __future__ import annotations

import json
import random
import struct
import uuid
import zlib
from pathlib import Path

import pytest
from botocore.eventstream import EventStreamBuffer

from gtl_nb.providers.eventstream import EventStreamDecoder, EventStreamError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wire" / "bedrock"
STREAMS = sorted(p.name for p in FIXTURES.glob("*.eventstream"))


def _frame(headers: bytes, payload: bytes) -> bytes:
    """An event-stream frame built by hand from the documented layout (independent of the decoder)."""
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _string_header(name: str, value: str) -> bytes:
    raw = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw


def _decode_all(data: bytes, pieces: list[bytes] | None = None) -> list:
    decoder = EventStreamDecoder()
    frames = []
    for piece in pieces if pieces is not None else [data]:
        frames.extend(decoder.feed(piece))
    decoder.close()
    return frames


def test_fixture_streams_exist() -> None:
    assert len(STREAMS) == 4


@pytest.mark.parametrize("name", STREAMS)
def test_frames_match_the_decoded_jsonl(name: str) -> None:
    expected = [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if line]
    frames = _decode_all((FIXTURES / name).read_bytes())
    assert [f.headers for f in frames] == [e["headers"] for e in expected]
    assert [json.loads(f.payload) for f in frames] == [e["payload"] for e in expected]


@pytest.mark.parametrize("name", STREAMS)
def test_any_split_gives_the_same_frames_as_botocore(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    reference = EventStreamBuffer()
    reference.add_data(data)
    botocore_frames = [(m.headers, m.payload) for m in reference]
    one_byte = _decode_all(data, [data[i : i + 1] for i in range(len(data))])
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    random_split = _decode_all(data, [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    for frames in (one_byte, random_split):
        assert [(f.headers, f.payload) for f in frames] == botocore_frames


def test_every_header_value_type_is_decoded_and_skipped_correctly() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678").bytes
    headers = (
        b"\x01t\x00"  # bool true
        + b"\x01f\x01"  # bool false
        + b"\x01b\x02"
        + struct.pack(">b", -5)
        + b"\x01s\x03"
        + struct.pack(">h", -300)
        + b"\x01i\x04"
        + struct.pack(">i", 70000)
        + b"\x01l\x05"
        + struct.pack(">q", -(2**40))
        + b"\x01y\x06"
        + struct.pack(">H", 3)
        + b"\x00\x01\x02"
        + b"\x01S\x07"
        + struct.pack(">H", 2)
        + "é".encode()
        + b"\x01T\x08"
        + struct.pack(">q", 1700000000123)
        + b"\x01u\x09"
        + ident
        + _string_header(":event-type", "messageStart")
    )
    [frame] = _decode_all(_frame(headers, b'{"role":"assistant"}'))
    assert frame.headers == {
        "t": True,
        "f": False,
        "b": -5,
        "s": -300,
        "i": 70000,
        "l": -(2**40),
        "y": b"\x00\x01\x02",
        "S": "é",
        "T": 1700000000123,
        "u": ident,
        ":event-type": "messageStart",
    }
    assert frame.payload == b'{"role":"assistant"}'


def test_frame_without_headers_or_payload() -> None:
    [frame] = _decode_all(_frame(b"", b""))
    assert (frame.headers, frame.payload) == ({}, b"")


def test_message_crc_mismatch_is_an_error() -> None:
    data = bytearray(_frame(_string_header(":event-type", "x"), b"{}"))
    data[-6] ^= 0xFF  # a payload byte
    with pytest.raises(EventStreamError, match="message CRC"):
        EventStreamDecoder().feed(bytes(data))


def test_error_carries_the_good_frames_decoded_before_it() -> None:
    good = _frame(_string_header(":event-type", "a"), b"1")
    bad = bytearray(_frame(_string_header(":event-type", "b"), b"2"))
    bad[-1] ^= 0x01
    with pytest.raises(EventStreamError) as caught:
        EventStreamDecoder().feed(good + bytes(bad))
    assert [f.payload for f in caught.value.frames] == [b"1"]


def test_prelude_crc_mismatch_is_an_error() -> None:
    data = bytearray(_frame(b"", b"{}"))
    data[3] ^= 0x01  # total length
    with pytest.raises(EventStreamError, match="prelude CRC"):
        EventStreamDecoder().feed(bytes(data))


def test_truncated_frame_is_reported_at_close() -> None:
    data = _frame(_string_header(":event-type", "x"), b'{"a":1}')
    decoder = EventStreamDecoder()
    assert decoder.feed(data[:-3]) == []
    assert decoder.pending == len(data) - 3
    with pytest.raises(EventStreamError, match="ended inside a frame"):
        decoder.close()


def test_header_running_past_its_block_is_an_error() -> None:
    bad = b"\x01S\x07" + struct.pack(">H", 50) + b"short"
    with pytest.raises(EventStreamError, match="header"):
        EventStreamDecoder().feed(_frame(bad, b""))


def test_unknown_header_type_is_an_error() -> None:
    with pytest.raises(EventStreamError, match="unknown value type"):
        EventStreamDecoder().feed(_frame(b"\x01x\x0a", b""))


def test_two_frames_in_one_chunk_and_a_frame_across_chunks() -> None:
    first = _frame(_string_header(":event-type", "a"), b"1")
    second = _frame(_string_header(":event-type", "b"), b"2")
    decoder = EventStreamDecoder()
    out = decoder.feed(first + second[:5])
    assert [f.payload for f in out] == [b"1"]
    assert [f.payload for f in decoder.feed(second[5:])] == [b"2"]
    decoder.close()
