"""What ``GTLConnection.next_event()`` returns besides the peer's GTL messages.

* ``HandshakeComplete`` — the hello exchange is done: the agreed version and features (and, on a
  server, the client's token when the transport carried it in ``hello``); ``implicit`` when the client
  sent no hello at all (a server implies one, see ``GTLConnection``).
* ``ProtocolViolation`` — the peer sent a frame that does not decode or breaks the protocol's order;
  for the record (logs, metrics). The session it ended, if any, gets its own ``error`` event next.
* ``ConnectionTerminated`` — the connection is over; every session still open has had its ``error``.
* ``NEED_DATA`` — nothing more until ``receive_data()``; ``CONNECTION_CLOSED`` — forever after the end.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gtl_nb.protocol.errors import GTLError, ProtocolError
from gtl_nb.protocol.messages import Hello, WireMessage


class Sentinel(enum.Enum):
    """The two answers of ``next_event()`` that are not events."""

    NEED_DATA = "NEED_DATA"
    CONNECTION_CLOSED = "CONNECTION_CLOSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = Sentinel.NEED_DATA
CONNECTION_CLOSED = Sentinel.CONNECTION_CLOSED


@dataclass(frozen=True)
class HandshakeComplete:
    """The hello exchange succeeded; sessions may start."""

    version: str
    features: tuple[str, ...]
    peer_hello: Hello = field(repr=False)
    token: str | None = field(default=None, repr=False)  # a server's view of the client's hello token
    implicit: bool = False
    """(server) The client sent no ``hello``: its first frame was a message (the spec's peer). ``peer_hello``
    is the hello it is taken to have sent — the transport's ``GTL-Version`` versions, else 1.0, no
    features — and no answer went back; nor should anything else it did not ask for (the provider list)."""


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer broke the protocol with one frame; ``bad_frames`` counts them on this connection."""

    error: ProtocolError
    session_id: str | None
    bad_frames: int


@dataclass(frozen=True)
class ConnectionTerminated:
    """The connection ended: ``error`` says why (``None`` for a plain close); ``by_peer`` says who ended it."""

    error: GTLError | None
    by_peer: bool


ConnectionEvent = WireMessage | HandshakeComplete | ProtocolViolation | ConnectionTerminated
"""Everything ``next_event()`` returns apart from the two sentinels."""
