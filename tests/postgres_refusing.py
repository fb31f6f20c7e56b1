"""A PostgreSQL that refuses every connection, as one starting up does, and notes who tried.

``RefusingPostgres`` listens on loopback and answers each connection the way a real server answers
while it starts up (or shuts down): it declines SSL and GSS encryption, reads the startup message,
and sends the FATAL error ``57P03 the database system is starting up`` before it hangs up. Unlike a
closed port, it sees every attempt: ``attempts`` lists ``(monotonic time, application_name)`` of
each, so a test can tell which of a gateway's stores (the ledger, the audit chain: each names its
connections) was trying to connect when. Every read is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

__all__ = ["RefusingPostgres", "refusing_postgres"]

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_MAX_STARTUP = 10_000  # bytes: a startup message is a few hundred
_READ_WAIT = 5.0  # seconds a client may take to send its startup message


def _error_response() -> bytes:
    fields = b"".join(
        code + text + b"\0"
        for code, text in (
            (b"S", b"FATAL"),
            (b"V", b"FATAL"),
            (b"C", b"57P03"),
            (b"M", b"the database system is starting up"),
        )
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    return data


def _application_name(startup: bytes) -> str:
    """``application_name`` of a startup message's body (after its protocol version), or ``""``."""
    parts = startup[4:].split(b"\0")
    pairs = dict(zip(parts[0::2], parts[1::2], strict=False))
    return pairs.get(b"application_name", b"").decode("utf-8", "replace")


class RefusingPostgres:
    """A listening socket on 127.0.0.1 that refuses every PostgreSQL connection (module docstring)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.attempts: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="refusing-postgres", daemon=True)
        self._thread.start()

    def url(self, database: str = "gtl") -> str:
        return f"postgresql://postgres:refused-pw@127.0.0.1:{self.port}/{database}"

    def times_of(self, name_part: str) -> list[float]:
        """When the connections whose application name holds ``name_part`` arrived, in order."""
        with self._lock:
            return [when for when, name in self.attempts if name_part in name]

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._socket.close()
        self._thread.join(5)

    def _serve(self) -> None:
        self._socket.settimeout(0.1)  # a close from another thread does not wake accept(): look again
        while not self._closed:
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            conn.settimeout(_READ_WAIT)
            while True:
                (length,) = struct.unpack("!i", _read_exactly(conn, 4))
                if not 8 <= length <= _MAX_STARTUP:
                    return
                body = _read_exactly(conn, length - 4)
                (code,) = struct.unpack("!i", body[:4])
                if code in (_SSL_REQUEST, _GSS_REQUEST):
                    conn.sendall(b"N")  # no encryption: the client goes on in plain text
                    continue
                with self._lock:
                    self.attempts.append((time.monotonic(), _application_name(body)))
                conn.sendall(_error_response())
                return


@contextlib.contextmanager
def refusing_postgres() -> Iterator[RefusingPostgres]:
    """A ``RefusingPostgres`` for the block."""
    server = RefusingPostgres()
    try:
        yield server
    finally:
        server.close()
