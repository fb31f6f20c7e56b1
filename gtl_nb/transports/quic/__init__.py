"""GTL over QUIC (``quic://HOST:PORT``, aioquic): ALPN ``gtl/1``, TLS 1.3, one bidirectional stream per session.

* ``wire`` — the stream roles, frames, codes and the two readings of a session stream (sans-I/O);
* ``config`` — both ends' aioquic configurations and the timing values (pings, idle timeout);
* ``peer`` — ``QuicPeer``, aioquic's asyncio protocol with per-stream listeners and flow-controlled writes;
* ``client`` — ``QuicLink``, the client's end of one connection;
* ``backend`` — ``quic_endpoint``: the client's ``RemoteBackend`` over QUIC.

The gateway's half is ``gtl_nb.gateway.quic``. Importing this package imports aioquic (the ``quic`` extra).
"""

from __future__ import annotations

from gtl_nb.transports.quic.backend import quic_backend, quic_endpoint
from gtl_nb.transports.quic.client import QuicLink

__all__ = ["QuicLink", "quic_backend", "quic_endpoint"]
