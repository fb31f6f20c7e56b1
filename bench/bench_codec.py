"""The GTL codec against the standard library on a realistic event stream.

Workload: the frames of one streamed answer as a gateway relays it — a status, 400 token events
of realistic sizes, a tool call, a usage and a done event. Ours is a validated, typed decode
(``gtl_nb.protocol.decode``) plus ``encode`` of every frame; the baseline is ``json.loads`` plus
``json.dumps`` of the same frames, which validates nothing. Target: ours at least 2x faster.

Two more rows measure what a connection does per event beyond the codec — both ends of
``GTLConnection`` with one live session: the gateway's end framing each event (``send``: encode,
the size limit, the session's order checked) against ``json.dumps`` of the event's dict, and the
client's end turning the stream's bytes, one WebSocket message, into checked session events
(``receive_data`` + ``next_event``) against splitting lines and ``json.loads``.
"""

from __future__ import annotations

import json
import random

from bench.timing import interleaved
from gtl_nb.protocol import (
    NEED_DATA,
    CompletionRequest,
    Done,
    FrameDecoder,
    GTLConnection,
    Message,
    Status,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
    decode,
    encode,
)
from gtl_nb.providers.tokenizer import split_tokens

TARGET_RATIO = 2.0


def realistic_frames(seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    words = [
        "the",
        "model",
        "streams",
        "tokens",
        "of",
        "varied",
        "length,",
        "with",
        "punctuation;",
        "unicode",
        "—",
        "naïve",
        "café",
        "東京",
        "and",
        "code",
        "`x",
        "=",
        "1`",
    ]
    text = " ".join(rnd.choice(words) for _ in range(400))
    sid = f"sess_{rnd.getrandbits(64):016x}"
    events = [Status(session_id=sid, state="streaming")]
    events += [Token(session_id=sid, text=piece) for piece in split_tokens(text)[:400]]
    events.append(
        ToolCallEvent(
            session_id=sid,
            function=ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo", "days": 3}'),
        )
    )
    events.append(Usage(session_id=sid, tokens_in=812, tokens_out=400, cached_tokens_in=256, cost=0.00412))
    events.append(
        Done(
            session_id=sid,
            finish_reason="tool_calls",
            provider="openai",
            model="gpt-4o",
            ttft_ms=212.5,
            latency_ms=4120.0,
        )
    )
    return [encode(event) for event in events]


def connected_pair(session_id: str) -> tuple[GTLConnection, GTLConnection]:
    """A client and a server ``GTLConnection`` past their hello, with session ``session_id`` live on both."""
    client, server = GTLConnection("client"), GTLConnection("server")
    server.receive_data(client.data_to_send())
    server.next_event()  # the handshake
    client.receive_data(server.data_to_send())
    client.next_event()
    request = CompletionRequest(session_id=session_id, model="m", messages=[Message(role="user", content="hi")])
    server.receive_data(client.send(request))
    server.next_event()  # the request
    return client, server


def _rate(seconds_per_pass: float, frames: int) -> float:
    return frames / seconds_per_pass


def run() -> dict[str, float]:
    """Three comparisons, each against the standard library on the same frames, interleaved: typed
    decode + encode, typed decode alone, and the incremental ``FrameDecoder`` on the stream's bytes
    cut into 1,400-byte pieces (a TCP segment) against splitting lines and ``json.loads``."""
    frames = realistic_frames()
    stream = b"".join(frame + b"\n" for frame in frames)
    pieces = [stream[i : i + 1400] for i in range(0, len(stream), 1400)]

    def ours() -> None:
        for frame in frames:
            encode(decode(frame))

    def stdlib() -> None:
        for frame in frames:
            json.dumps(json.loads(frame))

    def ours_decode() -> None:
        for frame in frames:
            decode(frame)

    def stdlib_decode() -> None:
        for frame in frames:
            json.loads(frame)

    def ours_stream() -> None:
        decoder = FrameDecoder()
        for piece in pieces:
            decoder.feed(piece)

    def stdlib_stream() -> None:
        buffer = b""
        for piece in pieces:
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                json.loads(line)

    events = [decode(frame) for frame in frames]
    sid = events[0].session_id  # type: ignore[union-attr]
    as_dicts = [json.loads(frame) for frame in frames]

    def ours_send() -> None:
        server = connected_pair(sid)[1]
        for event in events:
            server.send(event)

    def stdlib_send() -> None:
        for value in as_dicts:
            json.dumps(value, separators=(",", ":")).encode() + b"\n"

    def ours_receive() -> None:
        client = connected_pair(sid)[0]
        client.receive_data(stream)
        while client.next_event() is not NEED_DATA:
            pass

    def stdlib_receive() -> None:
        for line in stream.split(b"\n"):
            if line:
                json.loads(line)

    ours_s, stdlib_s = interleaved(ours, stdlib)
    decode_s, stdlib_decode_s = interleaved(ours_decode, stdlib_decode)
    stream_s, stdlib_stream_s = interleaved(ours_stream, stdlib_stream)
    send_s, stdlib_send_s = interleaved(ours_send, stdlib_send)
    receive_s, stdlib_receive_s = interleaved(ours_receive, stdlib_receive)
    count = len(frames)
    ratio = stdlib_s / ours_s
    print(
        f"codec: {count} frames; gtl_nb decode+encode {ours_s / count * 1e9:.0f} ns/frame; "
        f"json.loads+dumps {stdlib_s / count * 1e9:.0f} ns/frame"
    )
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"codec: {ratio:.2f}x faster than the standard library while validating ({verdict} the {TARGET_RATIO}x target)"
    )
    print(
        f"codec: events/s — decode {_rate(decode_s, count):,.0f} vs json.loads {_rate(stdlib_decode_s, count):,.0f}; "
        f"FrameDecoder {_rate(stream_s, count):,.0f} vs split+json.loads {_rate(stdlib_stream_s, count):,.0f}; "
        f"connection send {_rate(send_s, count):,.0f} vs json.dumps {_rate(stdlib_send_s, count):,.0f}; "
        f"connection receive {_rate(receive_s, count):,.0f} vs split+json.loads {_rate(stdlib_receive_s, count):,.0f}"
    )
    return {
        "codec_ratio": ratio,
        "codec_events_per_s": _rate(ours_s, count),
        "json_events_per_s": _rate(stdlib_s, count),
        "decode_events_per_s": _rate(decode_s, count),
        "json_decode_events_per_s": _rate(stdlib_decode_s, count),
        "frame_decoder_events_per_s": _rate(stream_s, count),
        "json_lines_events_per_s": _rate(stdlib_stream_s, count),
        "connection_send_events_per_s": _rate(send_s, count),
        "json_dumps_events_per_s": _rate(stdlib_send_s, count),
        "connection_receive_events_per_s": _rate(receive_s, count),
        "json_receive_events_per_s": _rate(stdlib_receive_s, count),
    }


if __name__ == "__main__":
    run()
