"""What every listener of the gateway is given: its address and TLS files, the limits, the shutdown signal.

A listener is one ``async def serve_<transport>(engine, listener, *, authenticate, limits, shutdown,
ready)`` coroutine (``gateway.http``, ``gateway.grpc``, ``gateway.quic``) with one contract:

* it binds ``listener.host``/``listener.port`` (port 0: any free port) and calls ``ready(url)`` once
  it accepts connections — ``url`` is what a client passes to ``gtl_nb.connect`` (``https://…``,
  ``grpc://…``, ``quic://…``), with the real port;
* it runs until ``shutdown.stopping`` is set, then stops accepting, refuses a completion request that
  still reaches it with ``gateway.refusals.GatewayStopping`` — its ledger row and audit record written
  (``recorded_refusal``) —, lets running sessions finish for up to ``shutdown.grace`` seconds, ends
  the rest with a ``CANCELLED`` error (every ledger row completed) and returns;
* cancelling it is the same without the grace period.

Limits apply to every transport alike (``Limits``); where a transport cannot enforce one, its module
says so and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import functools
import ipaddress
import math
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gtl_nb.engine.loop import within
from gtl_nb.gateway.principal_sessions import DEFAULT_MAX_SESSIONS_PER_PRINCIPAL
from gtl_nb.gateway.proxies import TrustedProxies
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.negotiation import FEATURES

__all__ = [
    "LISTENER_SCHEMES",
    "TRANSPORTS",
    "Limits",
    "ListenerSettings",
    "Ready",
    "Shutdown",
    "TlsFiles",
    "is_loopback",
]

log = get_logger("gateway.tls")

TRANSPORTS = ("http", "grpc", "quic")
"""The listener tables of ``[gateway]``: ``http`` serves HTTP, SSE, WebSocket, discovery and health."""

LISTENER_SCHEMES = {"http": ("http", "https"), "grpc": ("grpc", "grpcs"), "quic": ("quic", "quic")}
"""Transport -> (scheme without TLS, scheme with TLS) of the URL ``ready`` reports."""

Ready = Callable[[str], None]
"""Called once with the URL a client connects to, when the listener accepts connections."""


DEFAULT_MAX_UNFINISHED_BYTES = 256 * 1024 * 1024
"""``[gateway] max_unfinished_bytes``: 32 messages of the default 8 MiB arriving at once (``gateway.unfinished``)."""

MIN_REQUEST_RATE = 32 * 1024
"""Bytes a second a request must keep arriving at once ``header_timeout`` has passed: each byte received
moves its deadline on by ``1 / MIN_REQUEST_RATE`` s. A 256 kbit/s uplink keeps up with it; a client sending
a byte a second is cut at ``header_timeout``. (HTTP requests and QUIC session streams alike.)"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


CERTIFICATE_RENEWAL_DAYS = 7
"""How close to its end a listener's certificate is when the gateway warns at start."""


_CERTIFICATE_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKS = (b"PRIVATE KEY-----",)  # BEGIN PRIVATE KEY, RSA/EC PRIVATE KEY, ENCRYPTED PRIVATE KEY


def _holds_key(data: bytes) -> bool:
    return any(mark in data for mark in _KEY_MARKS)


def tls_files_mistake(cert: Path, key: Path) -> str | None:
    """What is wrong with a certificate and key pair the TLS library refused, when the files tell: a
    file that cannot be read, the two paths swapped, a file that is not PEM, a key that does not belong to
    the certificate — ``None`` when none of these is it (the library's own words are then all there is)."""
    try:
        cert_data, key_data = cert.read_bytes(), key.read_bytes()
    except OSError:
        return None  # the library's message names the file and the errno
    if _CERTIFICATE_MARK not in cert_data:
        if _holds_key(cert_data) and not _holds_key(key_data) and _CERTIFICATE_MARK in key_data:
            return (
                f"{cert} holds a private key and {key} a certificate: tls_cert and tls_key swapped? "
                "(--tls-cert takes the certificate, --tls-key its key)"
            )
        if _holds_key(cert_data):
            return f"{cert} holds a private key, not a certificate: tls_cert and tls_key swapped?"
        return f"{cert} is not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"
    if not _holds_key(key_data):
        if _CERTIFICATE_MARK in key_data:
            return f"{key} holds a certificate, not a private key: tls_cert and tls_key swapped?"
        return f"{key} is not a PEM private key (no '-----BEGIN … PRIVATE KEY-----' line)"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        return f"{cert} holds a certificate that cannot be read (damaged, or not base64 PEM)"
    try:
        private = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        return f"{key} is encrypted with a passphrase: the gateway takes an unencrypted key (mode 0600)"
    except (ValueError, serialization.UnsupportedAlgorithm):
        return f"{key} holds a private key that cannot be read (damaged, or not base64 PEM)"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != certificate.public_key().public_bytes(*raw):
        return (
            f"the key {key} does not belong to the certificate {cert} (their public keys differ): give tls_key "
            "the key made with that certificate"
        )
    return None


@functools.lru_cache(maxsize=64)
def _warn_of_dates(path: str, modified_ns: int) -> None:
    """``TlsFiles.say_if_out_of_date`` for the file at ``path`` as it was at ``modified_ns``."""
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError):
        return  # the TLS library loaded it: a form this reader does not take is no reason to stop
    now = datetime.datetime.now(datetime.timezone.utc)
    starts, ends = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    renew = "renew it (`gtl certs DIR` makes a development pair)"
    if ends <= now:
        log.warning("the TLS certificate %s expired on %s: clients that check will refuse it; %s", path, ends, renew)
    elif starts > now:
        log.warning(
            "the TLS certificate %s is valid only from %s: clients that check will refuse it until then", path, starts
        )
    elif ends - now < datetime.timedelta(days=CERTIFICATE_RENEWAL_DAYS):
        log.warning("the TLS certificate %s expires on %s: %s", path, ends, renew)


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate chain and its private key (PEM files, as ``gtl certs`` writes them)."""

    cert: Path
    key: Path

    def server_context(self, *, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A TLS 1.2+ server context with these files (a ``ConfigurationError`` says what is wrong)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise self.refusal(exc) from None
        self.say_if_out_of_date()
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def refusal(self, exc: BaseException) -> ConfigurationError:
        """The error for files the TLS library would not load (``exc``): what is wrong in our words when
        the files tell — the two swapped, a file that is no PEM, a key of another certificate — else the
        library's (OpenSSL's "no certificate assigned" or "PEM lib" say nothing of which mistake it is)."""
        said = tls_files_mistake(self.cert, self.key)
        if said is None and isinstance(exc, ConfigurationError):
            return exc  # already ours (the QUIC library's refusal, worded by its caller)
        if said is None:
            said = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ConfigurationError(f"cannot load the TLS certificate {self.cert} and key {self.key}: {said}")

    def say_if_out_of_date(self) -> None:
        """Log a warning, once a file, when the certificate is not valid now or runs out within
        ``CERTIFICATE_RENEWAL_DAYS``: the listener still starts (a client may not check), but every
        client that does will refuse it, and its error says only that the certificate was refused."""
        try:
            stat = self.cert.stat()
        except OSError:
            return
        _warn_of_dates(str(self.cert), stat.st_mtime_ns)


@dataclass(frozen=True)
class ListenerSettings:
    """One ``[gateway.<transport>]`` table: where to listen and with which TLS files."""

    transport: str
    host: str = "127.0.0.1"
    port: int = 0
    tls: TlsFiles | None = None
    insecure: bool = False
    """Let a plaintext listener bind beyond loopback (``--insecure``)."""

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigurationError(f"unknown gateway transport {self.transport!r} (known: {', '.join(TRANSPORTS)})")
        if self.transport == "quic" and self.tls is None:
            raise ConfigurationError(
                "[gateway.quic] needs tls_cert and tls_key: QUIC always runs over TLS 1.3 "
                "(`gtl certs DIR` makes a development pair)"
            )
        if self.tls is None and not self.insecure and not is_loopback(self.host):
            raise ConfigurationError(
                f"[gateway.{self.transport}] would serve plaintext on {self.host}: a listener without TLS binds to "
                "loopback only (127.0.0.1, ::1); give it tls_cert and tls_key, or insecure = true (--insecure) "
                'on purpose (and beyond loopback, auth = "jwt": a development gateway listens on loopback only)'
            )

    def cannot_listen(self, error: OSError | str, *, udp: bool = False) -> ConfigurationError:
        """Why this listener could not bind, named as the user set it (``--http`` or ``[gateway.http]``),
        with the usual cause of a taken port said."""
        where = f"{'udp ' if udp else ''}{self.host}:{self.port}"
        reason = error if isinstance(error, str) else (error.strerror or str(error))
        named = f"the {self.transport} listener (--{self.transport} or [gateway.{self.transport}])"
        message = f"{named} cannot listen on {where}: {reason}"
        if (isinstance(error, OSError) and error.errno == errno.EADDRINUSE) or "in use" in str(reason).lower():
            message += (
                " — another process holds that port (a gateway still running?); choose another port, or port 0 "
                "for any free one (the gateway prints the address it took)"
            )
        return ConfigurationError(message)

    @property
    def scheme(self) -> str:
        """The URL scheme clients use for this listener."""
        plain, secure = LISTENER_SCHEMES[self.transport]
        return secure if self.tls is not None else plain

    def url(self, port: int | None = None) -> str:
        """``scheme://host:port`` (the bound ``port`` when given)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port if port is None else port}"


@dataclass(frozen=True)
class Limits:
    """The gateway's limits (``[gateway]``), the same on every transport."""

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest frame (or HTTP request body, or gRPC message) accepted."""
    max_sessions_per_connection: int = 256
    """Sessions one connection may run at once; one more ends at once with a retryable ``OVERLOADED``."""
    max_sessions_per_principal: int = DEFAULT_MAX_SESSIONS_PER_PRINCIPAL
    """Sessions one principal may run at once in this process, over every transport and connection
    (``gateway.principal_sessions``); one more is refused with a retryable ``OVERLOADED``. ``0``: no cap."""
    max_connections_per_address: int = 256
    """Open connections from one client address; one more is refused (HTTP 429, gRPC RESOURCE_EXHAUSTED, …)."""
    max_connections: int = 0
    """``[gateway] max_connections``: client connections the TCP listeners (HTTP, gRPC) may hold at once, all
    together; each gets an equal share and closes a connection beyond it at once (``gateway.connection_budget``).
    ``0``: half of what the process's file-descriptor limit leaves after a fixed reserve."""
    tcp_listeners: int = 1
    """How many TCP listeners share ``max_connections`` (set by ``gateway.server`` for the listeners it starts)."""
    header_timeout: float = 10.0
    """Seconds a new connection has to send its request head (HTTP) or its hello (the other transports)."""
    idle_timeout: float = 300.0
    """Seconds a connection with no running session may stay silent before it is closed."""
    write_timeout: float = 60.0
    """Seconds a client may leave what the gateway writes unread before it is let go and its sessions end
    ``cancelled``: an HTTP-listener connection whose writing stays paused (``gateway.write_stall``), a gRPC
    ``Session`` call whose write waits on flow control (``GrpcStreamChannel``), a QUIC session stream that
    sends nothing while its session waits (``QuicPeer.drain``)."""
    max_unfinished_bytes: int = DEFAULT_MAX_UNFINISHED_BYTES
    """Bytes the HTTP listener's connections may hold together in WebSocket messages and request bodies still
    arriving, beyond 64 KiB each (``gateway.unfinished``); at least one largest message."""
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    """Peers whose ``X-Forwarded-For``/``-Proto`` are believed and whose connections are not capped."""
    features: tuple[str, ...] = FEATURES
    """The features the gateway offers: in each ``hello`` answer (those the client also offered), and in
    ``GTL-Features`` over HTTP. Every one it knows; fewer make it act as an older gateway (tests)."""


class Signal:
    """An ``asyncio.Event`` (``set``, ``is_set``, ``wait``) that also calls back whoever registered with
    ``when_set``: a connection watches it without a task of its own.

    Each callback runs in a turn of its own on the loop it was registered from (one that raises is
    that loop's to report; the others still run), even when ``set`` is called from another thread
    (``wait`` is an ``asyncio.Event``'s, which is not: set it there from the loop's thread); one
    unregistered before its turn does not run."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._set = False
        # in the order given; dicts, so that unregistering is O(1) with thousands of connections registered
        self._callbacks: dict[Callable[[], object], asyncio.AbstractEventLoop] = {}
        self._queued: dict[Callable[[], object], asyncio.Handle] = {}
        self._lock = threading.Lock()  # set() may come from another thread than (un)registering

    def set(self) -> None:
        self._event.set()
        with self._lock:
            self._set = True
            callbacks, self._callbacks = self._callbacks, {}
            for callback, loop in callbacks.items():
                self._queue(callback, loop)

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def when_set(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Have ``callback()`` called on the running loop once the signal is set (soon, if it already
        is). Returns the function that unregisters it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._set:
                self._queue(callback, loop)
            else:
                self._callbacks[callback] = loop
        return lambda: self._unregister(callback)

    def _queue(self, callback: Callable[[], object], loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``callback`` on ``loop`` (the caller holds the lock)."""

        def run() -> None:
            with self._lock:
                if self._queued.pop(callback, None) is None:  # unregistered meanwhile
                    return
            callback()

        try:
            self._queued[callback] = loop.call_soon_threadsafe(run)
        except RuntimeError:  # that loop has closed: nobody is left to tell
            pass

    def _unregister(self, callback: Callable[[], object]) -> None:
        with self._lock:
            self._callbacks.pop(callback, None)
            handle = self._queued.pop(callback, None)
        if handle is not None:
            handle.cancel()


@dataclass
class Shutdown:
    """Tells listeners to stop (``begin()``, on SIGTERM) and how long running sessions may take."""

    grace: float = 30.0
    stopping: Signal = field(default_factory=Signal)

    def begin(self) -> None:
        """Stop accepting; running sessions get ``grace`` seconds to finish."""
        self.stopping.set()

    @property
    def is_stopping(self) -> bool:
        return self.stopping.is_set()

    async def wait(self) -> None:
        """Return once shutdown began."""
        await self.stopping.wait()

    def when_stopping(self, callback: Callable[[], object]) -> Callable[[], None]:
        """``callback()`` on the loop once shutdown begins; returns the function that unregisters it."""
        return self.stopping.when_set(callback)

    def after_grace(self, callback: Callable[[], object]) -> Callable[[], None]:
        """``callback()`` on the loop when the grace that starts now is over (called once shutdown
        began); returns the function that cancels it."""
        if not math.isfinite(self.grace):
            return _nothing
        return asyncio.get_running_loop().call_later(max(0.0, self.grace), callback).cancel


def _nothing() -> None:
    """What cancels a grace that never ends."""


PLAIN_HTTP_TO_TLS_BODY = (
    b'{"type":"error","error":{"type":"invalid_request_error","code":"plain_http_to_tls_port","param":null,'
    b'"message":"this port speaks TLS: connect with https:// (wss:// for WebSocket)"}}'
)
"""What plain HTTP sent to the gateway's own TLS listener is answered (``400``), in nginx's words and shape
(``deploy/nginx/gtl.conf.template``): the OpenAI and Anthropic SDKs read its message."""
PLAIN_HTTP_TO_TLS = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(PLAIN_HTTP_TO_TLS_BODY)
    + PLAIN_HTTP_TO_TLS_BODY
)
_TLS_HANDSHAKE = 0x16  # a TLS record's first byte: a handshake (the ClientHello)
_ACCEPT_PAUSE = 1.0  # seconds without accepting after the process ran out of file descriptors (as asyncio)


class TlsServer:
    """``loop.create_server(ssl=…)``'s stand-in for a TLS listener that looks at each connection's first
    bytes before its handshake: a TLS ClientHello (or anything but a letter) goes to TLS as before
    (``connect_accepted_socket``, the same handshake deadline, the same protocol); plain HTTP (a request
    line starts with its method, letters) is answered ``PLAIN_HTTP_TO_TLS`` and closed, so a client sent
    to ``http://`` by mistake reads what to do instead of a bare disconnect. Nothing is read before TLS
    starts (the bytes are peeked, ``MSG_PEEK``) and nothing is sent but that fixed answer: TLS is what it
    was. Waiting for the first bytes and the handshake share ``handshake_timeout``.

    Offers what the HTTP listener asks of the loop's server: ``close()`` (stop accepting, at once) and
    ``wait_closed()``."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        *,
        handshake_timeout: float,
        backlog: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = protocol_factory
        self._context = context
        self._timeout = handshake_timeout
        self._closed = False
        self._starting: set[asyncio.Task[None]] = set()  # connections not handed to TLS yet
        sock.setblocking(False)
        sock.listen(backlog)
        self._accepting = self._loop.create_task(self._accept(), name=f"gtl_nb tls accept {sock.getsockname()}")

    def close(self) -> None:
        """Stop accepting (the listening socket closed). A connection accepted before goes on to its
        handshake, as with the loop's own server: a request it then sends is refused by the draining
        gateway in words, with its row, not cut."""
        if self._closed:
            return
        self._closed = True
        self._accepting.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        """Wait for the accepting task and the connections not yet handed over to end (after ``close``)."""
        await asyncio.gather(self._accepting, *self._starting, return_exceptions=True)

    async def _accept(self) -> None:
        while not self._closed:
            try:
                connection, _ = await self._loop.sock_accept(self._sock)
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("out of file descriptors: accepting no connection for %g s (%s)", _ACCEPT_PAUSE, exc)
                    await asyncio.sleep(_ACCEPT_PAUSE)
                continue  # (a connection reset before it was accepted, say)
            task = self._loop.create_task(self._start(connection))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, connection: socket.socket) -> None:
        began = self._loop.time()
        try:
            first = await within(self._first_bytes(connection), self._timeout)
        except asyncio.CancelledError:
            connection.close()
            raise
        except (asyncio.TimeoutError, OSError):
            connection.close()  # nothing came within the deadline (as a handshake that never comes), or gone
            return
        if first[:1].isalpha():
            with contextlib.suppress(OSError):
                connection.send(PLAIN_HTTP_TO_TLS)  # a few hundred bytes: an empty send buffer takes them
                connection.shutdown(socket.SHUT_WR)
            connection.close()
            return
        left = max(0.001, self._timeout - (self._loop.time() - began))
        try:
            await self._loop.connect_accepted_socket(
                self._factory, connection, ssl=self._context, ssl_handshake_timeout=left
            )
        except asyncio.CancelledError:
            connection.close()
            raise
        except Exception as exc:  # a failed or late handshake ends the connection, as the loop's own server does
            log.debug("TLS handshake failed: %s", exc)
            connection.close()

    async def _first_bytes(self, connection: socket.socket) -> bytes:
        """The connection's first bytes, peeked (left for TLS to read); ``b""`` when it closed at once."""
        readable = self._loop.create_future()
        descriptor = connection.fileno()
        self._loop.add_reader(descriptor, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            self._loop.remove_reader(descriptor)
        return connection.recv(8, socket.MSG_PEEK)
