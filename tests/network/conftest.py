"""Shared set-up of the network-level fuzz tests: one real gateway process, and raw clients for every wire.

The gateway is ``start_gateway`` (``python -m gtl_nb.gateway``) with HTTP (+ SSE, WebSocket), gRPC and QUIC
listeners on loopback and tight limits (``LIMITS``), so every bound is reached in about a second. Attack
traffic comes from other loopback addresses (``attacker()``: 127.0.0.2 and up, each test its own) so that the
well-behaved client — ``gtl_nb.connect`` from 127.0.0.1 — keeps its own share of the per-address limit and
must still be served while an attack runs (``assert_serves``). Memory is the gateway's resident set, read
from ``/proc`` (``RssWatch`` samples it while an attack runs).

The raw clients speak just enough of each wire to misbehave: HTTP/1.1 over a socket, WebSocket frames
(RFC 6455, masked), HTTP/2 frames with literal HPACK headers for gRPC calls (no library needed to *send*;
a gRPC status is read from the first literal ``grpc-status`` of a connection), and QUIC through aioquic.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import gtl_nb
from gtl_nb.engine.ledger import Ledger
from gtl_nb.gateway.certs import make_dev_certificates
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.protocol import GTLConnection
from gtl_nb.protocol.codec import decode
from tests.gateway.conftest import write_toml

MAX_FRAME = 256 * 1024
"""The gateway's ``max_frame_bytes``: room for JSON nested 100,000 deep (200 KB), so the parser is reached."""
CAP = 100
"""``max_connections_per_address``: twice it (200) stays under the 500 connections a test may open."""
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
WRITE_TIMEOUT = 2.0
LIMITS = {
    "max_frame_bytes": MAX_FRAME,
    "max_connections_per_address": CAP,
    "max_sessions_per_connection": 16,
    "header_timeout": HEADER_TIMEOUT,
    "idle_timeout": IDLE_TIMEOUT,
    "write_timeout": WRITE_TIMEOUT,
    "shutdown_grace": 1.0,
}
RSS_BOUND_KIB = 200 * 1024
"""How much the gateway's resident set may grow during one attack (generous: a leak or an unbounded buffer
grows far past it; the gateway itself starts at about 80 MiB)."""
LONG_PROMPT = "Explain every wire: " + "streams, frames, limits and timeouts. " * 8
_ATTACKERS = itertools.count(2)


def attacker() -> str:
    """A loopback address no other test attacks from (127.0.0.2, .3, …): its own per-address count."""
    return f"127.0.0.{next(_ATTACKERS)}"


# -- the gateway -------------------------------------------------------------------------------------------


@dataclass
class Target:
    """The running gateway: its URLs, process, CA, ledger, and addresses to dial."""

    process: LocalGateway
    ca: Path
    ledger: Path

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def url(self, scheme: str) -> str:
        return self.process.url(scheme)

    def address(self, transport: str) -> tuple[str, int]:
        """``(host, port)`` of the ``http``, ``grpc`` or ``quic`` listener."""
        host, _, port = self.process.urls[transport].split("://", 1)[1].rpartition(":")
        return host, int(port)

    def rss_kib(self) -> int:
        """The gateway's resident set size, KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(status.split("VmRSS:", 1)[1].split()[0])

    def rows(self) -> list[dict[str, Any]]:
        """The gateway's ledger rows (its SQLite file, read from this process)."""
        return Ledger(self.ledger).rows()

    def output(self) -> str:
        """Everything the gateway printed on standard error so far."""
        return "".join(self.process.output)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One gateway for the whole folder: ``echo`` answers at once, ``paced`` at 0.1 s a token."""
    directory = tmp_path_factory.mktemp("network-gateway")
    certs = make_dev_certificates(directory / "certs")
    ledger = directory / "ledger.sqlite"
    config = write_toml(
        directory / "gtl.toml",
        {
            "providers.echo": {"type": "echo"},
            "providers.paced": {"type": "echo"},
            "providers.paced.options": {"pace": 0.1},
            "ledger": {"path": str(ledger)},
            "gateway": LIMITS,
            "gateway.http": {"port": 0},
            "gateway.grpc": {"port": 0},
            "gateway.quic": {"port": 0, "tls_cert": str(certs.certificate), "tls_key": str(certs.key)},
        },
    )
    with start_gateway(config) as process:
        yield Target(process, certs.ca, ledger)
        assert process.running, "the gateway died during the tests:\n" + "".join(process.output[-20:])


def assert_serves(target: Target, transports: tuple[str, ...] = ("http", "sse", "ws", "grpc", "quic")) -> None:
    """A well-behaved client (from 127.0.0.1) completes a session over each transport."""
    for scheme in transports:
        verify = {"verify": str(target.ca)} if scheme == "quic" else {}
        with gtl_nb.connect(target.url(scheme), **verify) as client:
            text = client.complete("echo", f"still serving {scheme}").text
        assert f"still serving {scheme}" in text, (scheme, text)


class RssWatch:
    """Samples the gateway's resident set every 50 ms from ``start`` to ``stop``; ``growth`` is the peak over
    the first sample, KiB."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.first = target.rss_kib()
        self.peak = self.first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):  # a sampling period, not a wait for the gateway
            self.peak = max(self.peak, self.target.rss_kib())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.target.rss_kib())

    @property
    def growth(self) -> int:
        return self.peak - self.first

    def assert_bounded(self, bound_kib: int = RSS_BOUND_KIB) -> None:
        assert self.growth < bound_kib, f"the gateway grew by {self.growth} KiB (bound {bound_kib} KiB)"


class Attack:
    """``attack`` run in threads while the caller checks the gateway; ``join`` re-raises a thread's failure."""

    def __init__(self, *attacks: Callable[[], Any]) -> None:
        self.results: dict[int, Any] = {}
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i, a), daemon=True) for i, a in enumerate(attacks)]

    def _run(self, index: int, attack: Callable[[], Any]) -> None:
        try:
            self.results[index] = attack()
        except BaseException as exc:  # reported by join() in the test's thread
            self.errors.append(exc)

    def __enter__(self) -> Attack:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self, timeout: float = 60) -> list[Any]:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self.threads), "an attack did not end in time"
        if self.errors:
            raise self.errors[0]
        return [self.results.get(i) for i in range(len(self.threads))]


# -- HTTP/1.1 and WebSocket over a raw socket -----------------------------------------------------------------


@dataclass
class Closed:
    """What a raw connection received until the gateway closed it, and when."""

    data: bytes
    how: str  # "eof", "reset" or "open" (still open when the wait ended)
    after: float  # seconds from the start of the wait

    @property
    def status(self) -> int | None:
        """The status of the first HTTP response received, if any."""
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", self.data)
        return int(match.group(1)) if match else None


def dial(target: Target, source: str, transport: str = "http", *, receive_buffer: int | None = None) -> socket.socket:
    """A connection from ``source``; ``receive_buffer`` sets its ``SO_RCVBUF`` before it connects (the window
    it offers: what a client that reads nothing lets the gateway send before its writes wait)."""
    if receive_buffer is None:
        return socket.create_connection(target.address(transport), timeout=5, source_address=(source, 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(target.address(transport))
    return sock


def wait_closed(sock: socket.socket, limit: float, *, drip: bytes = b"", interval: float = 0.1) -> Closed:
    """Read until the peer closes (or ``limit`` seconds); meanwhile send ``drip`` a byte every ``interval`` s,
    stopping once anything was received (a client that has been answered sends no more)."""
    sock.settimeout(interval)
    data, started, sent = b"", time.monotonic(), 0
    while time.monotonic() - started < limit:
        if sent < len(drip) and not data:
            try:
                sock.sendall(drip[sent : sent + 1])
            except OSError:
                pass
            sent += 1
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return Closed(data, "reset", time.monotonic() - started)
        if not piece:
            return Closed(data, "eof", time.monotonic() - started)
        data += piece
    return Closed(data, "open", time.monotonic() - started)


def http_request(method: str, path: str, body: bytes = b"", *headers: str, length: bool = True) -> bytes:
    """A whole HTTP/1.1 request (``content-length`` added unless ``length`` is false)."""
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *headers]
    if length and method == "POST":
        lines.append(f"content-length: {len(body)}")
    return "\r\n".join([*lines, "", ""]).encode() + body


def ws_upgrade(target: Target, source: str, *, receive_buffer: int | None = None) -> socket.socket:
    """A socket upgraded to a WebSocket on ``/v1/gtl/ws`` (the 101 read, nothing more)."""
    sock = dial(target, source, receive_buffer=receive_buffer)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        http_request(
            "GET",
            "/v1/gtl/ws",
            b"",
            "upgrade: websocket",
            "connection: upgrade",
            "sec-websocket-version: 13",
            f"sec-websocket-key: {key}",
        )
    )
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(1)
        assert piece, f"the upgrade was not answered: {head!r}"
        head += piece
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def ws_frame(payload: bytes, opcode: int = 1, *, fin: bool = True) -> bytes:
    """One masked client frame (``opcode`` 1 text, 2 binary, 8 close, 9 ping)."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + masked


def ws_messages(data: bytes) -> list[tuple[int, bytes]]:
    """The server's (unmasked) frames in ``data``: ``(opcode, payload)``, a partial last frame left out."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = struct.unpack("!H", data[at : at + 2])[0], at + 2
        elif size == 127:
            size, at = struct.unpack("!Q", data[at : at + 8])[0], at + 8
        if at + size > len(data):
            break
        frames.append((opcode, data[at : at + size]))
        at += size
    return frames


def ws_hello() -> bytes:
    """A client hello as one text frame (``GTLConnection``'s own bytes, newline removed)."""
    return ws_frame(GTLConnection("client").data_to_send().strip())


def gtl_errors(frames: list[tuple[int, bytes]]) -> list[Any]:
    """The GTL ``error`` messages among a WebSocket's text frames."""
    messages = [decode(payload) for opcode, payload in frames if opcode == 1]
    return [message for message in messages if type(message).__name__ == "Error"]


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    """The status code of the server's close frame, if it sent one."""
    for opcode, payload in frames:
        if opcode == 8 and len(payload) >= 2:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


# -- gRPC as raw HTTP/2 ------------------------------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
COMPLETE = "/gtl.v1.GTL/Complete"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 0 DATA, 1 HEADERS, 3 RST_STREAM, 4 SETTINGS, 6 PING, 7 GOAWAY, 8 WINDOW_UPDATE."""
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


def _hpack_length(value: int) -> bytes:
    if value < 127:
        return bytes([value])
    out, value = [127], value - 127
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes([*out, value])


def h2_headers(stream: int, path: str, *extra: tuple[str, str], end_headers: bool = True) -> bytes:
    """A HEADERS frame starting a gRPC call to ``path`` (HPACK literals, never indexed, no Huffman)."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "gateway"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra,
    ]
    block = b"".join(
        b"\x00" + _hpack_length(len(name)) + name.encode() + _hpack_length(len(value)) + value.encode()
        for name, value in fields
    )
    return h2_frame(1, 0x4 if end_headers else 0, stream, block)


def grpc_message(payload: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    """gRPC's length-prefixed message: a compressed-flag byte, a 4-byte length, the payload."""
    return bytes([flag]) + struct.pack("!I", len(payload) if length is None else length) + payload


@dataclass
class H2Outcome:
    """How the gateway ended stream 1 of a raw HTTP/2 connection."""

    status: int | None  # the grpc-status of its trailers (None: reset, or no status read)
    reset: bool
    after: float
    frames: list[tuple[int, int, int]] = field(default_factory=list)  # (type, flags, stream) received


def h2_call(target: Target, source: str, frames: bytes, limit: float = 10) -> H2Outcome:
    """Open an HTTP/2 connection, send ``frames`` (stream 1), answer SETTINGS and PINGs, and wait until stream 1
    ends (trailers or RST_STREAM) or the connection does."""
    with dial(target, source, "grpc") as sock:
        window = h2_frame(8, 0, 0, struct.pack("!I", 1 << 30))
        sock.sendall(H2_PREFACE + h2_frame(4, 0, 0) + window + frames)
        sock.settimeout(0.1)
        buffer, started, seen = bytearray(), time.monotonic(), []
        while time.monotonic() - started < limit:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                piece = b""
            if not piece:
                return H2Outcome(None, False, time.monotonic() - started, seen)
            buffer += piece
            for kind, flags, stream, payload in _h2_frames_answered(sock, buffer, seen):
                if stream == 1 and kind == 3:
                    return H2Outcome(None, True, time.monotonic() - started, seen)
                elif stream == 1 and kind == 1 and flags & 1:
                    found = re.search(rb"grpc-status[\x00-\x7f](\d+)", payload)
                    status = int(found.group(1)) if found else None
                    return H2Outcome(status, False, time.monotonic() - started, seen)
        raise AssertionError(f"stream 1 was not ended within {limit} s: {seen}")


def h2_reading_nothing(
    target: Target, source: str, frames: bytes, hold: float, *, grant: int = 0, every: float = 0.5
) -> list[tuple[int, int, int]]:
    """An HTTP/2 connection that lets no DATA of the gateway's through: every stream's window is 0
    (``SETTINGS_INITIAL_WINDOW_SIZE``) and never grows. Its HTTP/2 layer reads the socket and acknowledges
    SETTINGS and PINGs — a gRPC client whose library keeps reading while its application reads none of its
    messages. With ``grant``, stream 1's window (and the connection's) grows by that many bytes every ``every``
    seconds instead: a slow reader. Sends ``frames`` and holds the connection ``hold`` seconds; the frames
    received (type, flags, stream)."""
    no_window = h2_frame(4, 0, 0, struct.pack("!HI", 4, 0))
    with dial(target, source, "grpc") as sock:
        sock.sendall(H2_PREFACE + no_window + frames)
        sock.settimeout(0.1)
        buffer, started, seen = bytearray(), time.monotonic(), []
        granted = started
        while time.monotonic() - started < hold:
            if grant and (since := time.monotonic() - granted) >= every:
                granted += since
                # WINDOW_UPDATEs, the stream's and the connection's: what is due since the last, so the rate
                # asked for holds however late this loop comes round (a busy machine)
                increment = struct.pack("!I", int(grant * since / every))
                sock.sendall(h2_frame(8, 0, 1, increment) + h2_frame(8, 0, 0, increment))
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                continue
            if not piece:
                break
            buffer += piece
            for _ in _h2_frames_answered(sock, buffer, seen):
                pass
    return seen


def _h2_frames_answered(
    sock: socket.socket, buffer: bytearray, seen: list[tuple[int, int, int]]
) -> Iterator[tuple[int, int, int, bytes]]:
    """The whole frames at the front of ``buffer`` (taken out of it), each noted in ``seen`` as (type, flags,
    stream) and yielded with its payload; SETTINGS and PINGs are acknowledged as an HTTP/2 layer does."""
    while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
        size = int.from_bytes(buffer[:3], "big")
        kind, flags = buffer[3], buffer[4]
        stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buffer[9 : 9 + size])
        del buffer[: 9 + size]
        seen.append((kind, flags, stream))
        if kind == 4 and not flags & 1:
            sock.sendall(h2_frame(4, 1, 0))  # SETTINGS ack
        elif kind == 6 and not flags & 1:
            sock.sendall(h2_frame(6, 1, 0, payload))  # PING ack
        yield kind, flags, stream, payload


# -- QUIC ------------------------------------------------------------------------------------------------------


class Collector:
    """A QUIC stream listener that keeps what arrives; ``ended`` on FIN or reset."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()

    def data_received(self, data: bytes, end: bool) -> None:
        self.data += data
        self.changed.set()
        if end:
            self.ended.set()

    def reset_received(self, code: int) -> None:
        self.ended.set()

    def stop_received(self, code: int) -> None:
        pass

    def frames(self) -> list[Any]:
        return [decode(line) for line in bytes(self.data).split(b"\n") if line.strip()]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


@dataclass
class RawQuic:
    """A raw QUIC connection to the gateway (``peer`` is a ``QuicPeer``)."""

    peer: Any
    transport: asyncio.DatagramTransport

    def open(self, data: bytes, *, end: bool = False) -> Collector:
        """A new session stream carrying ``data``."""
        collector = Collector()
        self.peer.write(self.peer.open_stream(collector), data, end=end)
        return collector


@asynccontextmanager
async def quic_peer(
    target: Target, source: str, *, hello: bool = True, stream_credit: int | None = None
) -> AsyncIterator[RawQuic]:
    """A handshaken QUIC connection from ``source``; with ``hello`` the control stream's exchange is done.
    With ``stream_credit`` each session stream lets the gateway send that many bytes and never more (aioquic
    grants more as it receives: that is switched off but for the control stream) — a client reading none.

    On exit it is closed politely unless the test ``vanish``-ed it (``transport.close()`` alone: no
    CONNECTION_CLOSE, as when a client's machine goes away)."""
    from aioquic.quic.connection import QuicConnection

    from gtl_nb.transports.quic.config import client_configuration
    from gtl_nb.transports.quic.peer import QuicPeer

    host, port = target.address("quic")
    configuration = client_configuration(host, str(target.ca))
    if stream_credit is not None:
        configuration.max_stream_data = stream_credit
    quic = QuicConnection(configuration=configuration)
    if stream_credit is not None:
        grant = quic._write_stream_limits
        quic._write_stream_limits = lambda builder, space, stream: (  # type: ignore[method-assign]
            grant(builder, space, stream) if stream.stream_id == 0 else None
        )
    transport, peer = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: QuicPeer(quic), local_addr=(source, 0)
    )
    raw = RawQuic(peer, transport)  # type: ignore[arg-type]
    try:
        peer.connect((host, port))
        await asyncio.wait_for(asyncio.shield(peer.handshake), 5)
        if hello:
            control = Collector()
            peer.write(peer.open_stream(control), GTLConnection("client").data_to_send())
            await control.wait_for(lambda: b'"provider":""' in control.data)
        yield raw
    finally:
        if not transport.is_closing():
            peer.close()
            transport.close()


def vanish(raw: RawQuic) -> None:
    """Drop the connection without a word: no CONNECTION_CLOSE reaches the gateway."""
    raw.peer.stop_pings()
    if raw.peer._timer is not None:  # aioquic's retransmission timer: it must not send a close later
        raw.peer._timer.cancel()
    raw.transport.abort()
