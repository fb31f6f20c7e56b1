"""``ConnectionPair``: a client and a server ``GTLConnection`` wired together without sockets.

Bytes each side produces (from ``send`` or ``data_to_send``) wait in that direction's pipe until
``pump()`` delivers them, cut at the given byte offsets of the whole stream of that direction (or
every ``chunk_size`` bytes), then drains both sides' events into ``client_events`` and
``server_events``. Importable as ``connection_pair`` from any test (``tests/conftest.py`` puts this
folder on ``sys.path``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from gtl_nb.protocol import CONNECTION_CLOSED, NEED_DATA, GTLConnection, WireMessage


class Pipe:
    """One direction: bytes written, delivered in pieces cut at absolute stream offsets."""

    def __init__(self, cuts: Iterable[int] = (), chunk_size: int | None = None) -> None:
        self.cuts = sorted(set(cuts))
        self.chunk_size = chunk_size
        self.pending = bytearray()
        self.delivered = 0  # bytes of this direction's stream delivered so far
        self.log = bytearray()  # every byte ever written, for assertions

    def write(self, data: bytes) -> None:
        self.pending += data
        self.log += data

    def take(self) -> list[bytes]:
        """The pending bytes as the pieces the peer receives."""
        data, start = bytes(self.pending), self.delivered
        self.pending.clear()
        self.delivered += len(data)
        edges = {0, len(data)}
        edges.update(cut - start for cut in self.cuts if start < cut < start + len(data))
        if self.chunk_size:
            edges.update(range(0, len(data), self.chunk_size))
        points = sorted(edges)
        return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


class ConnectionPair:
    """A client and a server connection and the two pipes between them."""

    def __init__(
        self,
        client: GTLConnection | None = None,
        server: GTLConnection | None = None,
        *,
        to_server_cuts: Iterable[int] = (),
        to_client_cuts: Iterable[int] = (),
        chunk_size: int | None = None,
    ) -> None:
        self.client = client or GTLConnection("client")
        self.server = server or GTLConnection("server")
        self.to_server = Pipe(to_server_cuts, chunk_size)
        self.to_client = Pipe(to_client_cuts, chunk_size)
        self.client_events: list[object] = []
        self.server_events: list[object] = []

    def client_send(self, message: WireMessage) -> None:
        self.to_server.write(self.client.send(message))

    def server_send(self, message: WireMessage) -> None:
        self.to_client.write(self.server.send(message))

    def inject_to_server(self, data: bytes) -> None:
        """Raw bytes on the wire, as if the client had written them (damaged frames, say)."""
        self.to_server.write(data)

    def inject_to_client(self, data: bytes) -> None:
        self.to_client.write(data)

    def pump(self) -> tuple[list[object], list[object]]:
        """Move bytes both ways until neither side has any to send; the new (client, server) events."""
        start_client, start_server = len(self.client_events), len(self.server_events)
        while True:
            self.to_server.write(self.client.data_to_send())
            self.to_client.write(self.server.data_to_send())
            if not self.to_server.pending and not self.to_client.pending:
                return self.client_events[start_client:], self.server_events[start_server:]
            for piece in self.to_server.take():  # events are read after every piece, as a transport would
                self.server.receive_data(piece)
                self.server_events += drain(self.server)
            for piece in self.to_client.take():
                self.client.receive_data(piece)
                self.client_events += drain(self.client)

    def close_client(self) -> None:
        """The client's transport closes after its last bytes: the server sees the end of its stream."""
        self.to_server.write(self.client.data_to_send())
        for piece in self.to_server.take():
            self.server.receive_data(piece)
        self.server.receive_data(b"")
        self.server_events += drain(self.server)

    def close_server(self) -> None:
        """The server's transport closes after its last bytes: the client sees the end of its stream."""
        self.to_client.write(self.server.data_to_send())
        for piece in self.to_client.take():
            self.client.receive_data(piece)
        self.client.receive_data(b"")
        self.client_events += drain(self.client)

    def handshake(self) -> None:
        """Run the hello exchange (both sides' ``HandshakeComplete`` land in the event lists)."""
        self.pump()


def drain(connection: GTLConnection) -> list[object]:
    """Every event ``connection`` has now, up to ``NEED_DATA`` or ``CONNECTION_CLOSED``."""
    events: list[object] = []
    while (event := connection.next_event()) is not NEED_DATA and event is not CONNECTION_CLOSED:
        events.append(event)
    return events
