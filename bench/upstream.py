"""A fast fake OpenAI-compatible upstream, the bench's own: ``python -m bench.upstream [--pace S]``.

``POST …/chat/completions`` answers ``max_tokens`` (or ``max_completion_tokens``; default 16) tokens
(``TOKEN_TEXTS``, alternating), as one ``chat.completion`` object or, with ``stream: true``, as
``chat.completion.chunk`` server-sent events (a role chunk, one chunk per token, a finish chunk, a usage chunk when
``stream_options.include_usage`` asks, ``data: [DONE]``), one HTTP chunk per event. Every answer is
built once per shape and then written from cache in one ``write`` call, so the upstream costs as
little as a Python server can; ``--pace S`` instead writes the first token at once and then sleeps
``S`` seconds before each later chunk (long-lived streams for ``bench.scale``). Anything else is ``404``.

It is a plain asyncio ``Protocol`` on uvloop when uvloop is installed: no framework, no HTTP library.
The request parser reads what the load clients, httpx, aiohttp and LiteLLM send — a request line,
headers and a ``Content-Length`` body, keep-alive — and refuses anything else with ``400``. It prints
``upstream listening on PORT`` on standard output once it accepts, and runs until SIGTERM/SIGINT.

The same port also speaks HTTP/2 cleartext with prior knowledge (h2c): a connection whose first 24 bytes
are the HTTP/2 client preface is handed, with the bytes read so far, to ``bench.upstream_h2`` (built on the
sans-I/O ``h2`` package, imported by ``serve`` and not by this module, so HTTP/1.1 works without it). Both
protocols answer from the same ``AnswerCache``: the JSON body of a whole answer and the unframed
server-sent events are cached apart from the HTTP/1.1 head and chunk framing, which HTTP/2 does not use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.upstream_h2 import H2UpstreamProtocol

TOKEN = "zq "
"""Every token's text holds this once and no id or JSON key holds it, so a client counts tokens by
counting it. Tokens alternate between ``"zq "`` and ``" zq "``: LiteLLM ends a stream whose last 100
chunks are all the same ("the model is repeating the same chunk")."""
TOKEN_TEXTS = (TOKEN, " " + TOKEN)


def answer_text(tokens: int) -> str:
    """The whole answer of ``tokens`` tokens."""
    return "".join(TOKEN_TEXTS[i % 2] for i in range(tokens))


MODEL = "bench-model"
MAX_TOKENS = 100_000
"""The most tokens one answer may ask for (a bound, not a workload)."""
_HEAD_LIMIT = 64 * 1024
_BODY_LIMIT = 8 * 1024 * 1024
_CREATED = 1_700_000_000


def _chunked(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying ``payload``."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk_object(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


def sse_events(tokens: int, include_usage: bool) -> list[bytes]:
    """The server-sent events of a streamed answer of ``tokens`` tokens, unframed (``data: …\\n\\n`` each)."""
    events = [_sse(_chunk_object({"role": "assistant"}, None))]
    token_events = [_sse(_chunk_object({"content": text}, None)) for text in TOKEN_TEXTS]
    events += [token_events[i % 2] for i in range(tokens)]
    events.append(_sse(_chunk_object({}, "stop")))
    if include_usage:
        usage = _chunk_object({}, None) | {"choices": [], "usage": _usage(tokens)}
        events.append(_sse(usage))
    events.append(b"data: [DONE]\n\n")
    return events


def stream_events(tokens: int, include_usage: bool) -> list[bytes]:
    """The server-sent events of a streamed answer of ``tokens`` tokens, each already one HTTP/1.1 chunk."""
    return [_chunked(event) for event in sse_events(tokens, include_usage)]


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
CHUNKED_END = b"0\r\n\r\n"


def whole_body(tokens: int) -> bytes:
    """The JSON body of a non-streamed answer of ``tokens`` tokens."""
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": _CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer_text(tokens), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(tokens),
        },
        separators=(",", ":"),
    ).encode()


def whole_answer(tokens: int, body: bytes | None = None) -> bytes:
    """The complete HTTP/1.1 response of a non-streamed answer of ``tokens`` tokens (``body``: its
    ``whole_body``, when already at hand)."""
    if body is None:
        body = whole_body(tokens)
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    return head + body


def _simple(status: bytes, text: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (status, len(text), text)


NOT_FOUND = _simple(b"404 Not Found", b"not found")
BAD_REQUEST = _simple(b"400 Bad Request", b"bad request")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The first 24 bytes of every HTTP/2 connection a client opens with prior knowledge (RFC 9113 §3.4)."""


def h2_protocol_class() -> type[H2UpstreamProtocol] | None:
    """``bench.upstream_h2``'s protocol, or ``None`` without the ``h2`` package. Imported here rather than at
    the top: that module imports this one, and HTTP/1.1 alone must not need ``h2``."""
    try:
        from bench import upstream_h2
    except ImportError:
        return None
    return upstream_h2.H2UpstreamProtocol


class AnswerCache:
    """Precomputed response bytes per answer shape, so serving one costs a dict look-up. HTTP/1.1 takes the
    whole responses (``whole``, ``stream``, ``stream_at_once``); HTTP/2 frames its own, so it takes the bare
    payloads (``body``, ``events``, ``events_at_once``)."""

    def __init__(self) -> None:
        self._bodies: dict[int, bytes] = {}
        self._whole: dict[int, bytes] = {}
        self._events: dict[tuple[int, bool], list[bytes]] = {}
        self._events_at_once: dict[tuple[int, bool], bytes] = {}
        self._streams: dict[tuple[int, bool], list[bytes]] = {}
        self._at_once: dict[tuple[int, bool], bytes] = {}

    def body(self, tokens: int) -> bytes:
        """The JSON body of a whole answer."""
        if tokens not in self._bodies:
            self._bodies[tokens] = whole_body(tokens)
        return self._bodies[tokens]

    def whole(self, tokens: int) -> bytes:
        if tokens not in self._whole:
            self._whole[tokens] = whole_answer(tokens, self.body(tokens))
        return self._whole[tokens]

    def events(self, tokens: int, include_usage: bool) -> list[bytes]:
        """The unframed server-sent events of a stream."""
        key = (tokens, include_usage)
        if key not in self._events:
            self._events[key] = sse_events(tokens, include_usage)
        return self._events[key]

    def events_at_once(self, tokens: int, include_usage: bool) -> bytes:
        """Every unframed event of a stream as one buffer."""
        key = (tokens, include_usage)
        if key not in self._events_at_once:
            self._events_at_once[key] = b"".join(self.events(tokens, include_usage))
        return self._events_at_once[key]

    def stream(self, tokens: int, include_usage: bool) -> list[bytes]:
        """The events of a stream, each one HTTP/1.1 chunk."""
        key = (tokens, include_usage)
        if key not in self._streams:
            self._streams[key] = [_chunked(event) for event in self.events(tokens, include_usage)]
        return self._streams[key]

    def stream_at_once(self, tokens: int, include_usage: bool) -> bytes:
        """Head, every event and the chunked terminator as one buffer (cached with the events)."""
        key = (tokens, include_usage)
        if key not in self._at_once:
            self._at_once[key] = STREAM_HEAD + b"".join(self.stream(tokens, include_usage)) + CHUNKED_END
        return self._at_once[key]


def parse_request(head: bytes) -> tuple[bytes, bytes, int, bool] | None:
    """``(method, target, content_length, keep_alive)`` of a request head, or ``None`` when it is not one
    this server reads (no chunked request bodies)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    length = 0
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
        elif name == b"connection":
            keep_alive = value.strip().lower() != b"close"
    return method, target, length, keep_alive


def answer_shape(body: bytes) -> tuple[bool, int, bool]:
    """``(stream, tokens, include_usage)`` asked for by a Chat Completions body."""
    request = json.loads(body)
    tokens = request.get("max_tokens") or request.get("max_completion_tokens") or 16
    tokens = max(1, min(int(tokens), MAX_TOKENS))
    options = request.get("stream_options") or {}
    return bool(request.get("stream")), tokens, bool(options.get("include_usage"))


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: requests in order, each answered from the cache (or paced). A connection that
    opens with the HTTP/2 preface is handed over to ``bench.upstream_h2`` instead."""

    def __init__(self, cache: AnswerCache, pace: float) -> None:
        self.cache = cache
        self.pace = pace
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a paced answer is being written; later requests wait in the buffer
        self.sniffing = True  # the connection's protocol is not known yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.sniffing:
            # a prefix of the preface may still become one (wait for 24 bytes); anything else is HTTP/1.1,
            # decided at the first differing byte, so HTTP/1.1 requests never wait
            start = bytes(self.buffer[: len(H2_PREFACE)])
            if H2_PREFACE.startswith(start):
                if len(start) == len(H2_PREFACE):
                    self._hand_over_to_h2()
                return
            self.sniffing = False
        if not self.busy:
            self._serve_buffered()

    def _hand_over_to_h2(self) -> None:
        """Make the HTTP/2 protocol this transport's protocol, giving it every byte read so far."""
        assert self.transport is not None
        self.sniffing = False
        protocol_class = h2_protocol_class()
        if protocol_class is None:
            self.transport.close()  # no h2 package: a prior-knowledge client cannot be served
            return
        protocol = protocol_class(self.cache, self.pace)
        received = bytes(self.buffer)
        self.buffer.clear()
        transport, self.transport = self.transport, None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(received)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _serve_buffered(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _HEAD_LIMIT:
                    self._fail()
                return
            parsed = parse_request(bytes(self.buffer[:end]))
            if parsed is None:
                self._fail()
                return
            method, target, length, keep_alive = parsed
            if length > _BODY_LIMIT:
                self._fail()
                return
            if len(self.buffer) < end + 4 + length:
                return  # the body is still arriving
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self._answer(method, target, body, keep_alive)

    def _answer(self, method: bytes, target: bytes, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        if method != b"POST" or not target.split(b"?", 1)[0].endswith(b"/chat/completions"):
            self.transport.write(NOT_FOUND)
        else:
            try:
                stream, tokens, include_usage = answer_shape(body)
            except (ValueError, TypeError, AttributeError):
                self.transport.write(BAD_REQUEST)
                return
            if not stream:
                self.transport.write(self.cache.whole(tokens))
            elif self.pace <= 0:
                self.transport.write(self.cache.stream_at_once(tokens, include_usage))
            else:
                self.busy = True
                asyncio.get_running_loop().create_task(self._paced(tokens, include_usage, keep_alive))
                return
        if not keep_alive:
            self.transport.close()

    async def _paced(self, tokens: int, include_usage: bool, keep_alive: bool) -> None:
        """Write a stream's events ``pace`` seconds apart (a long-lived stream)."""
        events = self.cache.stream(tokens, include_usage)
        try:
            if self.transport is None:
                return
            # the role chunk and the first token at once, so the time to first token is the path's own
            self.transport.write(STREAM_HEAD + b"".join(events[:2]))
            for event in events[2:]:
                await asyncio.sleep(self.pace)
                if self.transport is None:
                    return  # the client went away: nothing more to send
                self.transport.write(event)
            self.transport.write(CHUNKED_END)
            if not keep_alive:
                self.transport.close()
        finally:
            self.busy = False
        self._serve_buffered()

    def _fail(self) -> None:
        assert self.transport is not None
        self.transport.write(BAD_REQUEST)
        self.transport.close()


def install_fast_loop() -> str:
    """Use uvloop when it is installed; returns the loop's name for the report."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"


async def serve(host: str, port: int, pace: float, backlog: int) -> None:
    """Serve until SIGTERM or SIGINT; announce the port on standard output."""
    loop = asyncio.get_running_loop()
    cache = AnswerCache()
    h2_protocol_class()  # import the HTTP/2 side now, not on the first h2c connection's time
    server = await loop.create_server(lambda: UpstreamProtocol(cache, pace), host, port, backlog=backlog)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"upstream listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between streamed chunks (0: all at once)")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(argv)
    loop_name = install_fast_loop()
    print(f"upstream loop: {loop_name}", file=sys.stderr, flush=True)
    asyncio.run(serve(args.host, args.port, args.pace, args.backlog))


if __name__ == "__main__":
    main()
