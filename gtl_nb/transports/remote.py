"""``RemoteBackend``: the client's ``Backend`` (``gtl_nb.backend``) over a GTL connection to a gateway.

It holds one ``Link`` at a time — the client's end of one connection: ``open()``, ``session()``,
``closed``, ``providers``, ``abort()``, ``aclose()``. Transports give it either a *dialer* — an async
callable returning a fresh ``Channel``, on which the backend runs a ``ClientLink`` (``stdio`` dials by
starting the gateway as a child process, ``ws`` by opening a socket) — or ``open_link``, an async
callable returning a link of their own (``quic``, whose sessions each have a stream rather than
sharing one byte stream). The connection runs on the client's loop thread (``backend.loop``) and is
opened when first needed; after it drops, the next request (or ``providers()``) opens a new one.
Sessions on a dropped connection end with a retryable ``PROVIDER_UNAVAILABLE`` error; they are not
re-sent (the gateway may already have called a provider).

``usage_rows``, ``breakers`` and ``list_models`` are asked of the gateway with ``query`` messages
(feature ``query``; from a gateway without it: ``[]``, ``{}`` and the models of its provider list).
What the protocol does not carry, this backend answers locally (see docs/gateway.md):

* ``check``, ``route`` and ``fit`` do nothing: the gateway routes, and its answer (an ``error`` event
  with the same code the embedded client raises) comes back as the session's end;
* ``providers()`` and ``provider_type()`` come from the gateway's provider list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gtl_nb.engine.loop import LoopThread, shared_loop
from gtl_nb.engine.settings import RequestDefaults
from gtl_nb.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.protocol.errors import ConfigurationError, GTLError, InvalidRequestError, ProviderUnavailableError
from gtl_nb.protocol.messages import TERMINAL_EVENTS, CompletionRequest, Error, ProviderInfo, StreamEvent
from gtl_nb.providers.registry import provider_types
from gtl_nb.transports.channel import Channel
from gtl_nb.transports.framed import FramedConnection
from gtl_nb.transports.link import OPEN_TIMEOUT, ClientLink, Deliver
from gtl_nb.transports.unreached import unreached_reason

__all__ = ["Dialer", "HelloDialer", "Link", "LinkOpener", "RemoteBackend"]

Dialer = Callable[[], Awaitable[Channel]]
"""Opens a new byte stream to the gateway; raises ``GTLError`` or ``OSError`` when it cannot."""
HelloDialer = Callable[[bytes], Awaitable[Channel]]
"""A ``Dialer`` handed the connection's first bytes (its ``hello``), which it writes before it waits for the
gateway's answer (``RemoteBackend``'s ``dial_with_hello``)."""


class Link(Protocol):
    """The client's end of one connection to a gateway (``ClientLink`` is the one over a ``Channel``)."""

    providers: list[ProviderInfo]
    """The gateway's provider list, complete once ``open`` returned."""

    @property
    def closed(self) -> bool:
        """Whether the connection ended (no new session can start on it)."""
        ...

    async def open(self, timeout: float) -> None:
        """Connect and say hello; return once the provider list is in, or raise why not."""
        ...

    async def session(self, request: CompletionRequest, deliver: Deliver) -> None:
        """Run one session, delivering its events, exactly one of them ``done`` or ``error``."""
        ...

    async def abort(self, error: GTLError) -> None:
        """End the connection now; every live session gets ``error``."""
        ...

    async def aclose(self) -> None:
        """Close politely; live sessions end ``CANCELLED``."""
        ...


LinkOpener = Callable[[], Awaitable[Link]]
"""Makes a new, not yet opened ``Link``; raises ``GTLError`` or ``OSError`` when it cannot."""


class RemoteBackend:
    """Runs a client's sessions on a gateway (see the module docstring).

    Give ``dial`` or ``open_link``. ``label`` names the gateway in messages and ``repr(client)``;
    ``token`` travels in ``hello`` (of the dialled connections; a link opener sends its own);
    ``defaults`` are the request defaults the client applies (the protocol does not carry the
    gateway's yet). ``dial_with_hello`` (instead of ``dial``) is a ``HelloDialer``: given the hello, for a
    transport whose gateway may answer only once the client sent something (gRPC through nginx over TLS
    holds the call's first headers until then, so a dialer that waits for them first would wait for ever).
    """

    def __init__(
        self,
        dial: Dialer | None = None,
        *,
        dial_with_hello: HelloDialer | None = None,
        open_link: LinkOpener | None = None,
        label: str,
        token: str | None = None,
        loop: LoopThread | None = None,
        defaults: RequestDefaults | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        self.loop = loop or shared_loop()
        self.defaults = defaults or RequestDefaults()
        self.label = label
        self.open_timeout = open_timeout
        if [dial, dial_with_hello, open_link].count(None) != 2:
            raise ConfigurationError("RemoteBackend needs one of dial, dial_with_hello and open_link")
        self._dial = dial
        self._dial_with_hello = dial_with_hello
        self._open_link = open_link
        self._token = token
        self._max_frame_bytes = max_frame_bytes
        self._link: Link | None = None
        self._opening: asyncio.Task[Link] | None = None
        self._providers: list[ProviderInfo] = []
        self._closed = False

    def __repr__(self) -> str:  # never the token
        return f"<RemoteBackend {self.label}>"

    @property
    def link(self) -> Link | None:
        """The current connection's link (``None`` before the first one)."""
        return self._link

    @property
    def channel(self) -> Any:
        """What carries the current connection (``None`` before the first one): its ``Channel`` for a dialled
        link, else the link's own ``channel`` (QUIC: the connection) — the same object while it lasts."""
        link = self._link
        framed = getattr(link, "framed", None)
        return framed.channel if framed is not None else getattr(link, "channel", None)

    async def start(self) -> None:
        """Open the connection now (``connect()`` does, so a gateway that cannot start fails there)."""
        await self._current()

    # -- sessions ------------------------------------------------------------------------------------

    async def session(self, request: CompletionRequest, deliver: Deliver) -> None:
        sid = request.session_id
        ended = False

        def once(event: StreamEvent) -> None:  # whatever happens below, one terminal event gets through
            nonlocal ended
            if not ended:
                ended = type(event) in TERMINAL_EVENTS
                deliver(event)

        try:
            link = await self._current()
            await link.session(request, once)
        except asyncio.CancelledError:
            once(Error(session_id=sid, code="CANCELLED", message="cancelled by the caller"))
            raise
        except GTLError as exc:  # no connection: the gateway could not be started or refused us
            once(exc.to_event(sid))
        except Exception as exc:  # a bug must still end the session
            once(Error(session_id=sid, code="INTERNAL", message=f"{type(exc).__name__}: {exc}"))
            raise

    async def _current(self) -> Link:
        """The open connection, opening one (once, for every caller waiting) when there is none."""
        if self._closed:
            raise ConfigurationError(f"this client is closed; connect to the {self.label} again")
        link = self._link
        if link is not None and not link.closed:
            return link
        if self._opening is None or self._opening.done():
            self._opening = asyncio.get_running_loop().create_task(self._open(), name=f"gtl-open-{self.label}")
            self._opening.add_done_callback(_retrieve)
        return await asyncio.shield(self._opening)

    async def _open(self) -> Link:
        try:
            link = await self._open_link() if self._open_link is not None else await self._dial_link()
        except FileNotFoundError as exc:
            where = f": {exc.filename}" if exc.filename else ""  # (the label names the command already)
            raise ConfigurationError(f"cannot start the {self.label}: {exc.strerror}{where}") from None
        except OSError as exc:
            raise ProviderUnavailableError(f"cannot reach the {self.label}: {unreached_reason(exc)}") from None
        await link.open(self.open_timeout)
        self._link = link
        self._providers = list(link.providers)
        return link

    async def _dial_link(self) -> ClientLink:
        connection = GTLConnection("client", token=self._token, max_frame_bytes=self._max_frame_bytes)
        if self._dial_with_hello is not None:
            channel = await self._dial_with_hello(connection.data_to_send())  # the hello, written at once
        else:
            assert self._dial is not None
            channel = await self._dial()
        return ClientLink(FramedConnection(connection, channel, reader_waits=False), label=self.label)

    # -- questions about providers (answered from the gateway's provider list) ----------------------------

    def check(self, request: CompletionRequest) -> None:
        """Nothing to check here: the gateway routes, and its error ends the session."""

    def route(self, request: CompletionRequest) -> list[tuple[str, str, str]]:
        """Where the gateway sends ``request`` when its provider list makes that certain — a
        ``deployment:model`` or a ``provider`` it has, or the one deployment that lists the model —
        else ``[]``: with several candidates (or a ``providers`` list) routing happens on the gateway,
        which the protocol cannot ask yet. What a cancelled answer, whose ``done`` never came, is
        said to have been with (as the embedded engine's ``route`` says it)."""
        if request.providers:
            return []
        kinds = {info.provider: info.provider_type or info.provider for info in self._providers}
        prefix, sep, rest = request.model.partition(":")
        if sep and rest and prefix in kinds:
            return [(prefix, kinds[prefix], rest)]
        if request.provider:
            return [(request.provider, kinds[request.provider], request.model)] if request.provider in kinds else []
        serving = [info for info in self._providers if any(m.name == request.model for m in info.models)]
        if len(serving) != 1:
            return []
        return [(serving[0].provider, kinds[serving[0].provider], request.model)]

    def default_routing(self, model: str, *, named: bool) -> tuple[str | None, tuple[str, ...] | None]:
        """``EmbeddedBackend.default_routing``'s rule, judged from the gateway's provider list: a
        ``deployment:model`` keeps its deployment; ``[defaults] provider`` applies when it serves the
        model (or no deployment lists it); ``providers`` entries naming their own model apply only when
        the caller named no model."""
        prefix, sep, rest = model.partition(":")
        deployments = {info.provider for info in self._providers}
        if sep and rest and (prefix in deployments or prefix in provider_types()):
            return None, None
        provider = self.defaults.provider
        serving = {info.provider for info in self._providers if any(m.name == model for m in info.models)}
        if provider and serving and provider not in serving:
            provider = None
        providers = self.defaults.providers
        if providers and named and any(entry.partition(":")[2] for entry in providers):
            providers = None
        return provider or None, providers

    def fit(self, request: CompletionRequest) -> CompletionRequest:
        """``request`` as it is: the gateway applies context windows and fallbacks."""
        return request

    def providers(self) -> list[ProviderInfo]:
        """The gateway's ``provider_info`` list (connecting first when no connection is open)."""
        link = self._link
        if (link is None or link.closed) and not self.loop.in_loop_thread:
            self.loop.run(self._current(), timeout=self.open_timeout + 5)
        return list(self._providers)

    def provider_type(self, deployment: str | None) -> str | None:
        for info in self._providers:
            if info.provider == deployment:
                return info.provider_type
        return None

    async def list_models(self, deployment: str) -> list[str]:
        """The deployment's live model list, asked of the gateway (an older gateway: its provider list)."""
        link = await self._current()
        if self._answers_queries(link):
            result = await link.query("models", {"deployment": deployment})  # type: ignore[attr-defined]
            return [str(name) for name in result.get("models", [])]
        for info in self._providers:
            if info.provider == deployment:
                return [model.name for model in info.models]
        known = ", ".join(info.provider for info in self._providers) or "none"
        raise ConfigurationError(f"the {self.label} has no deployment named {deployment!r} (it has: {known})")

    async def breakers(self) -> dict[str, dict[str, Any]]:
        """The gateway's circuit breakers (``{}`` from a gateway that does not answer queries)."""
        link = await self._current()
        if not self._answers_queries(link):
            return {}
        result = await link.query("breakers")  # type: ignore[attr-defined]
        return dict(result.get("breakers", {}))

    async def usage_rows(self, *, all_users: bool = False, **filters: Any) -> list[dict[str, Any]]:
        """The caller's rows of the gateway's ledger (``all_users``: everyone's, which needs
        ``usage:admin``), fetched page by page (``[]`` from an older gateway)."""
        link = await self._current()
        if not self._answers_queries(link):
            return []
        rows: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            params: dict[str, Any] = {"filters": filters, "offset": offset}
            if all_users:
                params["all_users"] = True
            page = await link.query("usage", params)  # type: ignore[attr-defined]
            rows.extend(page.get("rows", []))
            following = page.get("next")
            offset = following if isinstance(following, int) and following > offset else None
        return rows

    async def sessions(self, *, all_users: bool = False) -> list[dict[str, Any]]:
        """The caller's sessions running on the gateway, over any connection (``all_users``: everyone's)."""
        link = await self._current()
        if not self._answers_queries(link):
            raise InvalidRequestError(f"the {self.label} does not answer queries (an older gateway)")
        result = await link.query("sessions", {"all_users": True} if all_users else {})  # type: ignore[attr-defined]
        return list(result.get("sessions", []))

    async def cancel_session(self, session_id: str) -> int:
        """Cancel a session running on the gateway, from this connection; how many were cancelled."""
        link = await self._current()
        if not self._answers_queries(link):
            raise InvalidRequestError(f"the {self.label} does not answer queries (an older gateway)")
        result = await link.query("cancel", {"session_id": session_id})  # type: ignore[attr-defined]
        return int(result.get("cancelled", 0))

    @staticmethod
    def _answers_queries(link: Link) -> bool:
        return bool(getattr(link, "answers_queries", False))

    def describe(self) -> str:
        return f"remote {self.label} providers=[{', '.join(info.provider for info in self._providers)}]"

    async def aclose(self) -> None:
        self._closed = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            await asyncio.wait({self._opening})
        if self._link is not None:
            await self._link.aclose()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark an opening's failure as seen (every waiter already got it, or none was left)."""
    if not task.cancelled():
        task.exception()
