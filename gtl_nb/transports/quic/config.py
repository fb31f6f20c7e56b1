"""aioquic configurations of both ends, and the timing values of GTL over QUIC.

Liveness: the client pings every ``PING_INTERVAL`` seconds and offers an idle timeout of
``IDLE_TIMEOUT`` seconds, which both ends then apply (QUIC takes the smaller of the two offers). A
gateway that dies without a word (a killed process sends no CONNECTION_CLOSE) is therefore noticed
within about ``IDLE_TIMEOUT + PING_INTERVAL`` = 4 s, and a client that vanished is noticed by the
gateway just as fast. The gateway offers its ``[gateway] idle_timeout`` (a peer that never pings is
dropped after that long) and also closes a connection that has run no session for that long.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.transports.quic.wire import ALPN

__all__ = [
    "CONNECT_TIMEOUT",
    "FLUSH_WAIT",
    "HIGH_WATER",
    "IDLE_TIMEOUT",
    "PING_INTERVAL",
    "client_configuration",
    "server_configuration",
]

PING_INTERVAL = 1.0
"""Seconds between the client's PING frames (each one the gateway acknowledges)."""
IDLE_TIMEOUT = 3.0
"""Seconds without a packet from the peer after which a connection is over (the client's offer)."""
CONNECT_TIMEOUT = 3.0
"""Seconds the client waits for the QUIC and TLS handshake."""
HIGH_WATER = 64 * 1024
"""Bytes a stream may hold written but not yet sent before its writer waits (flow control holds them)."""
FLUSH_WAIT = 1.0
"""Seconds the gateway waits for its last frames to be acknowledged before it closes a connection."""


def client_configuration(server_name: str, verify: Any = True) -> Any:
    """The client's ``QuicConfiguration``: ALPN ``gtl/1``, the idle timeout, and ``verify``: ``True`` (the
    system's trust store), a CA file (``gtl certs`` writes ``ca.pem``), ``False``, or an ``ssl.SSLContext``
    (its verify mode and the CA certificates it lists: aioquic does its own TLS)."""
    from aioquic.quic.configuration import QuicConfiguration

    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], idle_timeout=IDLE_TIMEOUT, server_name=server_name
    )
    if isinstance(verify, ssl.SSLContext):  # aioquic has its own TLS: take the context's mode and CAs
        listed = verify.get_ca_certs(binary_form=True)
        if verify.verify_mode == ssl.CERT_NONE:
            verify = False
        elif not listed or set(listed) == set(ssl.create_default_context().get_ca_certs(binary_form=True)):
            verify = True  # the system's store, read from its files as below
        else:
            cadata = "".join(ssl.DER_cert_to_PEM_cert(der) for der in listed)
            configuration.load_verify_locations(cadata=cadata.encode())
            return configuration
    if verify is False:
        configuration.verify_mode = ssl.CERT_NONE
    elif verify is True:
        paths = ssl.get_default_verify_paths()  # the system's store, as the other transports use (aioquic: certifi)
        cafile = paths.cafile if paths.cafile and os.path.isfile(paths.cafile) else None
        capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
        if cafile or capath:
            configuration.load_verify_locations(cafile=cafile, capath=capath)
    elif isinstance(verify, (str, os.PathLike)):
        path = Path(verify).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"verify={os.fspath(verify)!r} is not a readable CA file (PEM): no such file")
        configuration.load_verify_locations(cafile=str(path))
    else:
        raise ConfigurationError(
            f"verify= takes True (the system's trust store), a CA file path, an ssl.SSLContext or False, "
            f"not {type(verify).__name__}"
        )
    return configuration


def server_configuration(cert: Path, key: Path, *, idle_timeout: float) -> Any:
    """The gateway's ``QuicConfiguration``: ALPN ``gtl/1``, its certificate chain and key (PEM)."""
    from aioquic.quic.configuration import QuicConfiguration

    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], idle_timeout=idle_timeout)
    try:
        configuration.load_cert_chain(cert, key)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from None
    return configuration
