"""The gRPC client transport: ``connect("grpc://HOST:PORT")`` (plaintext) or ``"grpcs://HOST:PORT"`` (TLS).

Every session runs over one ``Session`` call of ``gtl.proto`` (``GrpcStreamChannel``): many sessions,
cancels and a lost gateway behave as on every other transport, through ``RemoteBackend``. Each dial
opens a fresh ``grpc.aio`` channel, so after a drop the next request connects again by itself.

* **Token**: ``authorization: Bearer <token>`` call metadata (not ``hello``: gRPC has headers).
* **TLS** (``grpcs://``): ``verify=True`` trusts gRPC's default roots, ``verify="ca.pem"`` a CA file
  (``gtl certs`` writes one). ``verify=False`` is refused: gRPC has no way to skip verification. A
  certificate the client refuses (another CA, a name it does not list) is a ``ConfigurationError``
  quoting the TLS library's reason, as on the other TLS transports.
* **Compression**: ``?compression=gzip`` compresses what the client sends and asks the gateway to
  compress its answers (``gtl-compression: gzip``); the default is none.
* **A gateway that cannot be reached** (refused, gone, no answer within ``DIAL_TIMEOUT``) raises
  ``OSError`` from the dialer, which ``RemoteBackend`` turns into a retryable ``PROVIDER_UNAVAILABLE``
  naming the address; a gateway that dies mid-stream ends every live session the same way as soon as
  gRPC sees the connection close (keepalive pings find a peer that vanished silently).
* **Refusals** before the stream starts (too many connections, shutting down) raise the ``GTLError``
  the status's details name (``stream.status_error``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc

from gtl_nb.engine.loop import LoopThread
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.transports.channel import CLOSE_WAIT, Channel
from gtl_nb.transports.endpoints import http1_hint, split_endpoint, tls_hint
from gtl_nb.transports.grpc.stream import (
    BATCH_KEY,
    BATCH_VALUE,
    COMPRESSION_KEY,
    MAX_FRAME_KEY,
    MESSAGE_SLACK,
    SESSION_METHOD,
    GrpcStreamChannel,
    status_error,
)
from gtl_nb.transports.remote import RemoteBackend

__all__ = ["DIAL_ATTEMPTS", "DIAL_TIMEOUT", "channel_options", "grpc_endpoint"]

DIAL_TIMEOUT = 5.0
"""Seconds to wait for the gateway to accept the ``Session`` call."""
DIAL_ATTEMPTS = 2
"""Dials within ``DIAL_TIMEOUT`` when grpc.aio lost the gateway's refusal (``open_session``)."""
QUIET_WAIT = 1.0
"""Seconds a dial made again waits for the gateway's answer before it writes its hello (``open_session``)."""
_LOST_STATUS = "Internal error from Core"
"""grpc.aio's details when a write of the call failed before the gateway's status was read (that status is lost)."""
COMPRESSIONS = {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}
_CERTIFICATE_REFUSED = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed")
"""What gRPC's details say when this client refused the gateway's certificate (a set-up mistake, not retried)."""
_CLOSED_UNANSWERED = ("Socket closed", "Connection reset", "End of TCP stream")
"""What gRPC's details say when the server closed a plaintext dial without an answer (a TLS listener does)."""
# a call that ended before its start with one of these met no gateway willing to serve it; CANCELLED
# too: nothing on this side cancelled it, so a server stopping (its grace begun) did
_UNREACHABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)


def channel_options(max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list[tuple[str, int]]:
    """The ``grpc.aio`` channel options of a client."""
    return [
        ("grpc.max_receive_message_length", max_frame_bytes + MESSAGE_SLACK),  # gRPC's default is 4 MiB
        ("grpc.max_send_message_length", -1),  # the gateway's announced limit applies (stream.py)
        ("grpc.keepalive_time_ms", 30_000),  # find a gateway that vanished without closing the socket
        ("grpc.keepalive_timeout_ms", 10_000),
        # each dial connects afresh: a subchannel shared through gRPC's global pool would still be
        # backing off from the gateway that went away, and fail the next request at once
        ("grpc.use_local_subchannel_pool", 1),
    ]


def grpc_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: Any = True,
    loop: LoopThread | None = None,
) -> RemoteBackend:
    """``transports.endpoints`` factory of ``grpc://`` and ``grpcs://``: a ``RemoteBackend`` over gRPC.

    ``user`` is not sent: the gateway accounts sessions to its token's principal.
    """
    scheme, address = split_endpoint(endpoint, ("grpc", "grpcs"))
    compression = _compression(endpoint)
    credentials = _credentials(verify) if scheme == "grpcs" else None
    where = f"grpc gateway ({scheme}://{address})"
    metadata: list[tuple[str, str]] = [(BATCH_KEY, BATCH_VALUE)]  # several frames per message, when it can
    if token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    if compression is grpc.Compression.Gzip:
        metadata.append((COMPRESSION_KEY, "gzip"))

    reached = False  # a call has started once: a later failure is no TLS mix-up

    async def dial(hello: bytes) -> Channel:
        nonlocal reached
        channel = await open_session(
            address,
            credentials=credentials,
            metadata=metadata,
            compression=compression,
            where=where,
            first_contact=not reached,
            hello=hello,
        )
        reached = True
        return channel

    return RemoteBackend(dial_with_hello=dial, label=where, loop=loop)


async def open_session(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: list[tuple[str, str]] | None = None,
    compression: grpc.Compression | None = None,
    where: str = "grpc gateway",
    first_contact: bool = False,
    hello: bytes = b"",
) -> GrpcStreamChannel:
    """Open a ``Session`` call to ``address`` and wrap it; ``OSError`` when the gateway cannot be reached
    (on ``first_contact``, a plaintext dial the server closed unanswered says to try ``grpcs://``).

    ``hello`` (the connection's first frame) is written before the wait for the gateway's initial metadata:
    nginx in front of the gateway over TLS passes those headers on only once the client sent a message.
    A gateway that refuses the call (a cap, its shutdown) while that write is under way may leave grpc.aio
    reporting its own ``INTERNAL`` "Internal error from Core" instead of the gateway's status (the failed
    write's, set first); such a dial is made again, within the one ``DIAL_TIMEOUT``, the other way round:
    it waits up to ``QUIET_WAIT`` seconds for the gateway's answer before it writes — a refusal then finds
    no write under way, so the caller hears it — and writes its hello when nothing came by then (nginx)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DIAL_TIMEOUT
    for attempt in range(1, DIAL_ATTEMPTS + 1):
        try:
            return await _dial_once(
                address,
                credentials=credentials,
                metadata=metadata,
                compression=compression,
                where=where,
                first_contact=first_contact,
                hello=hello,
                timeout=max(0.0, deadline - loop.time()),
                quiet=0.0 if attempt == 1 else QUIET_WAIT,
            )
        except _StatusLost as lost:
            if attempt == DIAL_ATTEMPTS or loop.time() >= deadline:
                raise status_error(grpc.StatusCode.INTERNAL, lost.details, where=where) from None
    raise AssertionError("unreachable")  # (the loop returns or raises)


class _StatusLost(Exception):
    """A dial whose call grpc.aio ended with its own ``INTERNAL`` status (see ``open_session``)."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


async def _dial_once(
    address: str,
    *,
    credentials: grpc.ChannelCredentials | None,
    metadata: list[tuple[str, str]] | None,
    compression: grpc.Compression | None,
    where: str,
    first_contact: bool,
    hello: bytes,
    timeout: float,
    quiet: float,
) -> GrpcStreamChannel:
    """One try of ``open_session``, waiting ``timeout`` seconds at most for the gateway's answer; ``hello`` is
    written first, or after ``quiet`` seconds without an answer (or with it)."""
    options = channel_options()
    if credentials is None:
        channel = grpc.aio.insecure_channel(address, options=options, compression=compression)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=options, compression=compression)
    stream: GrpcStreamChannel | None = None
    answered: asyncio.Future[Any] | None = None
    try:
        call = channel.stream_stream(SESSION_METHOD)(metadata=tuple(metadata or ()))

        async def close() -> None:
            try:
                await call.done_writing()
                await asyncio.wait_for(call.code(), CLOSE_WAIT)  # the gateway ends its sessions and rows first
            except Exception:
                pass
            finally:
                await channel.close()

        stream = GrpcStreamChannel(call.read, call.write, role="client", peer=address, where=where, close=close)
        answered = asyncio.ensure_future(call.initial_metadata())
        try:
            if quiet > 0:
                await asyncio.wait({answered}, timeout=min(quiet, timeout))
            stream.write(hello)  # the sender writes it as soon as the call starts
            initial = await asyncio.wait_for(answered, max(0.0, timeout - quiet) if quiet > 0 else timeout)
        except asyncio.TimeoutError:
            raise OSError(f"{address} did not answer within {DIAL_TIMEOUT:g} s") from None
        if call.done():  # ended before it started: not reachable, or refused
            code, details = await call.code(), await call.details()
            text = details or code.name
            if credentials is not None and "WRONG_VERSION_NUMBER" in text.upper():  # plaintext answered TLS
                raise ConfigurationError(
                    f"{address} answered in plain text, not TLS (OpenSSL: wrong version number): that port serves "
                    "no TLS; connect with grpc:// (or http://, sse://, ws:// if it is the gateway's HTTP listener)"
                )
            if credentials is not None and any(mark in text for mark in _CERTIFICATE_REFUSED):
                raise ConfigurationError(
                    f"the TLS certificate of {address} was refused ({text.rpartition('last error: ')[2]}); pass "
                    "the gateway's CA file (verify=...) and connect by a name its certificate lists"
                )
            if http1_hint(text):  # the gateway's HTTP listener: a wrong scheme, the caller's to mend (not retried)
                raise ConfigurationError(f"{address}{http1_hint(text)}")
            if code in _UNREACHABLE:
                # a plaintext dial whose socket the server closed: most often a TLS listener
                closed = any(mark in text for mark in _CLOSED_UNANSWERED)
                hint = tls_hint("grpc") if credentials is None and closed and first_contact else ""
                raise ConnectionError(f"{address}: {text}{hint}")
            if code is grpc.StatusCode.INTERNAL and details == _LOST_STATUS:
                raise _StatusLost(details)
            raise status_error(code, details, where=where)
    except BaseException:
        if answered is not None and not answered.done():
            answered.cancel()
        if stream is not None:
            stream.abandon()
        await channel.close()
        raise
    assert stream is not None
    announced = dict(initial or ()).get(MAX_FRAME_KEY)
    if isinstance(announced, str) and announced.isdigit():
        stream.peer_max_frame_bytes = int(announced)
    return stream


def _compression(endpoint: str) -> grpc.Compression | None:
    """``?compression=gzip`` (or ``none``); any other query key is a mistake worth saying."""
    query = parse_qs(urlsplit(endpoint).query, keep_blank_values=True)
    unknown = sorted(set(query) - {"compression"})
    if unknown:
        raise ConfigurationError(f"unknown option {unknown[0]!r} in {endpoint!r} (grpc:// takes compression=gzip)")
    values = query.get("compression")
    if not values:
        return None
    if values[-1] not in COMPRESSIONS:
        raise ConfigurationError(f"compression={values[-1]!r} in {endpoint!r}: gRPC offers gzip or none")
    return COMPRESSIONS[values[-1]]


def _credentials(verify: Any) -> grpc.ChannelCredentials:
    """TLS credentials for ``verify``: ``True`` (default roots) or a CA file path."""
    if verify is True:
        return grpc.ssl_channel_credentials()
    if verify is False:
        raise ConfigurationError(
            "grpcs:// cannot skip certificate verification (gRPC has no such option); pass the gateway's CA "
            'file instead: connect("grpcs://HOST:PORT", verify="ca.pem") (`gtl certs DIR` writes one)'
        )
    if isinstance(verify, (str, os.PathLike)):
        try:
            with open(verify, "rb") as file:
                roots = file.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the CA file {os.fspath(verify)}: {exc.strerror}") from None
        return grpc.ssl_channel_credentials(root_certificates=roots)
    raise ConfigurationError(f"verify= takes True or the path of a CA file, not {type(verify).__name__}")
