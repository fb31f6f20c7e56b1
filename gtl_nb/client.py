"""The public client: ``gtl_nb.connect()`` and ``Client.complete`` / ``stream`` and their async twins.

``connect("embedded://")`` (the default) runs the engine in this process on one background loop
thread (see ``gtl_nb.engine.loop``), so the synchronous API works inside a running Jupyter kernel,
from many threads at once, and keeps its connection pool between cells. ``await aconnect()`` runs it
on the caller's own event loop instead (no thread crossed by an awaited call; see ``aconnect``).

Every call produces one session whose events end in exactly one ``done`` or ``error``. Leaving a
``stream()`` early (``break``, ``close()``), a ``KeyboardInterrupt`` while waiting, or cancelling
the task awaiting ``acomplete`` cancels the work on the loop thread, closes the upstream response
and ends the session with a ``CANCELLED`` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import getpass
import inspect
import math
import numbers
import os
import queue
import re
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gtl_nb.backend import Backend, EmbeddedBackend, TokenCount
from gtl_nb.completion import Comparison, Completion
from gtl_nb.engine.loop import LOOP_CLOSED, OWN_LOOP, CallersLoop, LoopThread, WaitedTooLong, Work
from gtl_nb.handoff import AsyncEventHandoff, EventHandoff
from gtl_nb.ids import time_ordered_hex
from gtl_nb.log import get_logger
from gtl_nb.protocol.codec import normalise_message_calls, normalise_tool
from gtl_nb.protocol.errors import (
    AuthenticationError,
    ConfigurationError,
    GTLError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderUnavailableError,
    error_from_event,
)
from gtl_nb.protocol.messages import (
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    REASONING_EFFORTS,
    TERMINAL_EVENTS,
    CompletionRequest,
    Error,
    Message,
    ProviderInfo,
    StreamEvent,
    Tool,
    longest_ttl,
)
from gtl_nb.protocol.session import Transcript
from gtl_nb.providers.anthropic import asks_for_cache
from gtl_nb.providers.base import limited_to_one_call
from gtl_nb.strict_schema import left_open, strict_schema
from gtl_nb.transports.questions import QUERY_TIMEOUT
from gtl_nb.words import a_kind_of

if TYPE_CHECKING:
    import pandas

__all__ = [
    "Client",
    "Comparison",
    "Completion",
    "EventStream",
    "connect",
    "is_embedded",
    "new_session_id",
    "response_format_of",
]

log = get_logger("client")
EventCallback = Callable[[StreamEvent], Any]
_END_WAIT = 5.0  # seconds to wait for the loop thread's last event after a cancel
QUESTION_WAIT = QUERY_TIMEOUT + 30.0
"""Seconds ``usage()``, ``sessions()`` and the like wait: longer than a gateway's query waits (and a
shared store's read, 60 s), so the answer that says why comes first."""
T = TypeVar("T")


def new_session_id() -> str:
    """A new session id: ``sess_`` and ``ids.time_ordered_hex()`` (the time, then 64 random bits). The
    ledger's index of session ids takes each new row beside the last: fully random ids put every row
    on a page of its own, which doubled the cost of writing a row (a 4 KiB page rewritten a request)."""
    return "sess_" + time_ordered_hex()


CA_FILE_ENV = "GTL_NB_CA_FILE"
_PLAIN_SCHEMES = frozenset({"http", "sse", "ws", "grpc", "stdio"})  # addresses that never speak TLS
"""The CA file ``connect`` to a gateway trusts when given no ``verify=`` (a private CA's, ``gtl certs``'s
``ca.pem``); ``gtl --gateway`` reads it too when given no ``--verify``. Unset or empty: the system's trust store."""
TOKEN_VARIABLES = ("GTL_TOKEN", "GTL_NB_TOKEN")
"""Where ``connect`` to a gateway finds its token when given none, in order: ``$GTL_TOKEN``, then the
older ``$GTL_NB_TOKEN``. The ``gtl`` command and the notebook read them alike (``environment_token``),
so one set-up serves all three and they send the same token."""
CONNECT_READS = "(or put it in $GTL_TOKEN, which connect reads)"
"""How a missing token's advice (``gateway.tokens.verify.MISSING``) names ``TOKEN_VARIABLES`` for a
Python caller; the ``gtl`` command and the notebook reword that advice whole, this included."""


def environment_token() -> str | None:
    """The gateway token the environment holds: ``$GTL_TOKEN``, else ``$GTL_NB_TOKEN``, else ``None``."""
    found = _token_variable()
    return found[1] if found else None


def sendable_environment_token() -> str | None:
    """``environment_token`` as a gateway is sent it (``sendable_token``): a refusal names the variable."""
    found = _token_variable()
    return sendable_token(found[1], found[0]) if found else None


def _token_variable() -> tuple[str, str] | None:
    """``(variable, token)`` of ``environment_token``."""
    for name in TOKEN_VARIABLES:
        if value := os.environ.get(name, "").strip():
            return name, value
    return None


def sendable_token(token: object, variable: str | None = None) -> str | None:
    """``token`` as a gateway is sent it: without the whitespace around it — a file's last newline, a
    secret mounted into the environment — or a ``ConfigurationError`` that never quotes it when what is
    left cannot be a token (one line of printable ASCII: it travels in an ``Authorization`` header, and
    a header library that refused it would quote the whole value in its error). ``variable``: the
    environment variable it was read from, which the refusal names."""
    if token is None:
        return None
    which = "the gateway token" if variable is None else f"the gateway token in ${variable}"
    if not isinstance(token, str):
        raise ConfigurationError(f"token= takes the gateway token as a str, not {a_kind_of(token)}")
    stripped = token.strip()
    if not stripped:
        raise ConfigurationError(f"{which} is empty: give the token `gtl token mint` printed")
    if _header_safe(stripped):
        return stripped
    position, character = next((index, char) for index, char in enumerate(stripped) if not _header_safe(char))
    raise ConfigurationError(
        f"{which} cannot be sent: its character {position + 1} of {len(stripped)} is "
        f"{_named_character(character)}, and a token is one line of printable ASCII (was something else "
        "copied with it?)"
    )


def _header_safe(text: str) -> bool:
    """Whether ``text`` is printable ASCII with no space: what a bearer token may hold."""
    return text.isascii() and text.isprintable() and " " not in text


def _named_character(character: str) -> str:
    """How a message names a character a token cannot hold, without showing the token's own text."""
    if character == " ":
        return "a space"
    if character.isascii():
        return f"a control character (U+{ord(character):04X})"
    return f"not ASCII (U+{ord(character):04X})"


@contextlib.contextmanager
def _saying_where_the_token_came_from(variable: str | None) -> Generator[None, None, None]:
    """A refused token's error names the variable it was read from: a caller who gave no ``token=`` cannot
    tell otherwise (and a stale export in a shell is the usual cause)."""
    try:
        yield
    except AuthenticationError as exc:
        if variable is not None:
            exc.message = f"{exc.message} (the token sent was ${variable}'s: connect(token=...) sends another)"
        raise


def connect(
    endpoint: str = "embedded://",
    token: str | None = None,
    *,
    providers: dict[str, dict[str, Any]] | None = None,
    config: Any = None,
    user: str | None = None,
    ledger: Any = None,
    environ: Any = None,
    **options: Any,
) -> Client:
    """Connect to GTL.

    ``endpoint="embedded://"`` runs the engine in-process. ``providers`` configures deployments by
    name (``{"openai": {"api_key": ...}}``, ``{"azure-east": {"type": "azure", ...}}``); ``config``
    is a TOML path or dict; anything else (``routing=``, ``timeouts=``, …) is a configuration section.
    With nothing configured, the offline model ``echo`` is always available. It takes no ``token``
    (a ``ConfigurationError``: a token is a gateway's).

    ``user`` (default: the OS user) is who budgets and ledger rows are accounted to. ``ledger`` is
    the SQLite file of the usage ledger (a path, an open ``Ledger``, or ``False`` for none; default:
    the ``[ledger]`` section, then the user's data directory).

    ``"stdio:///path/to/gtl.toml"`` (or ``"stdio://"`` for the usual file, or
    ``"stdio://?command=..."``) starts a gateway as a child process and runs every session there
    (docs/gateway.md); ``token`` goes in its ``hello``, ``user`` becomes its principal.
    ``"http://HOST:PORT"`` and ``"sse://HOST:PORT"`` run every session on a gateway started with
    ``gtl serve --http HOST:PORT``, ``"ws://HOST:PORT"`` runs them over one WebSocket to it; ``token``
    goes in ``Authorization: Bearer``. For a gateway, ``token`` defaults to ``$GTL_TOKEN``, else
    ``$GTL_NB_TOKEN`` (``environment_token``). ``sses://`` and ``wss://`` are their TLS forms; ``verify=`` is
    ``True`` (the system's trust store), a CA file (``gtl certs`` writes ``ca.pem``) or ``False``; not given,
    it is the file ``$GTL_NB_CA_FILE`` names, else ``True``.
    ``"https://HOST:PORT"`` and a bare ``"HOST:PORT"`` read the gateway's ``/.well-known/gtl`` and use
    the best transport it offers (QUIC, gRPC, WebSocket, SSE, HTTP, in that order); ``client.transport``
    says which (docs/transports.md).
    """
    endpoint = _normalized(endpoint)
    if _is_embedded(endpoint):
        if token is not None:  # said, not dropped: the caller meant a gateway, or a provider's key
            raise ConfigurationError(_EMBEDDED_TAKES_NO_TOKEN)
        return Client(providers=providers, config=config, user=user, ledger=ledger, environ=environ, **options)
    local = {"providers": providers, "config": config, "ledger": ledger, "environ": environ, **options}
    verify = _gateway_options(endpoint, local)
    from gtl_nb.transports.endpoints import backend_for

    found = _token_variable() if token is None else None
    token = sendable_token(found[1], found[0]) if found else sendable_token(token)
    backend: Backend = backend_for(endpoint, token=token, user=user, verify=verify)
    client = Client(backend=backend, user=user)
    try:
        with _saying_where_the_token_came_from(found[0] if found else None):
            backend.loop.run(backend.start(), timeout=backend.open_timeout + 5)  # type: ignore[attr-defined]
    except BaseException:
        client.close()
        raise
    return client


def aconnect(endpoint: str = "embedded://", token: str | None = None, **options: Any) -> Connecting:
    """``connect`` from a coroutine, for a program that runs its own event loop (an async web
    service, a notebook that awaits): the same arguments, the same ``Client`` —
    ``client = await gtl_nb.aconnect()``, or ``async with gtl_nb.aconnect() as client:``, which
    closes it at the end of the block.

    The client then runs on the calling loop instead of gtl_nb's loop thread — the embedded engine
    (the default endpoint), or the connection to a gateway (any other endpoint, opened here) — so an
    awaited call (``acomplete``, ``astream``, ``abatch``) crosses no thread, and an embedded
    ``acomplete`` runs in the caller's own task: less wall time and CPU a call than across the loop
    thread, one call at a time and many at once (docs/benchmarks.md). The synchronous methods
    still work from other threads, but not from this loop's own thread (they would wait for the loop
    they block: they raise and say so); close it with ``await client.aclose()`` or ``async with``.
    """
    return Connecting(_connected(endpoint, token, options))


class Connecting(Coroutine[Any, Any, "Client"]):
    """What ``aconnect`` returns: awaited, the ``Client``; used as ``async with``, the client for the
    block, closed at its end. A coroutine still (it hands every step to the one that connects), so
    ``asyncio.run``, ``create_task`` and ``ensure_future`` take it as they took ``aconnect``'s."""

    __slots__ = ("_client", "_opening")

    def __init__(self, opening: Coroutine[Any, Any, Client]) -> None:
        self._opening = opening
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return self._opening.__await__()

    def send(self, value: Any) -> Any:
        return self._opening.send(value)

    def throw(self, *exc_info: Any) -> Any:
        return self._opening.throw(*exc_info)

    def close(self) -> None:
        self._opening.close()

    # what asyncio and debuggers read of a coroutine (a task's repr: ``coro=<aconnect() running at …>``)
    __name__ = __qualname__ = "aconnect"

    @property
    def cr_code(self) -> Any:
        return self._opening.cr_code  # type: ignore[attr-defined]

    @property
    def cr_frame(self) -> Any:
        return self._opening.cr_frame  # type: ignore[attr-defined]

    @property
    def cr_running(self) -> bool:
        return bool(self._opening.cr_running)  # type: ignore[attr-defined]

    @property
    def cr_await(self) -> Any:
        return self._opening.cr_await  # type: ignore[attr-defined]

    async def __aenter__(self) -> Client:
        self._client = await self._opening
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.aclose()


# ``aconnect`` returns a coroutine: said so to those that ask the function (asyncio, unittest.mock's autospec)
if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12
    inspect.markcoroutinefunction(aconnect)
else:
    aconnect._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


async def _connected(endpoint: str, token: str | None, options: dict[str, Any]) -> Client:
    """The client ``aconnect`` describes, made on the running loop."""
    endpoint = _normalized(endpoint)
    if not _is_embedded(endpoint):
        user = options.pop("user", None)
        verify = _gateway_options(endpoint, options)
        from gtl_nb.transports.endpoints import open_backend

        found = _token_variable() if token is None else None
        token = sendable_token(found[1], found[0]) if found else sendable_token(token)
        with _saying_where_the_token_came_from(found[0] if found else None):
            backend = await open_backend(endpoint, token=token, user=user, verify=verify, loop=CallersLoop())
        return Client(backend=backend, user=user)
    if token is not None:
        raise ConfigurationError(_EMBEDDED_TAKES_NO_TOKEN)
    return Client(loop=CallersLoop(), **options)


_EMBEDDED_TAKES_NO_TOKEN = (
    "the embedded engine takes no token: it runs in this process (a token is for a gateway, "
    "connect('http://HOST:PORT', token=...); a provider's key goes in providers=)"
)


def is_embedded(endpoint: str) -> bool:
    """Whether ``endpoint`` names the engine in this process (``embedded://``, ``embedded``), not a
    gateway: as ``connect`` reads it."""
    return _is_embedded(_normalized(endpoint))


def _normalized(endpoint: str) -> str:
    """``endpoint`` with its scheme in lower case (URL schemes are case-insensitive: HTTP://host is http://host)
    and without the spaces around it (an environment variable's, a notebook line's)."""
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        return endpoint
    scheme, rest = endpoint.split("://", 1)
    return f"{scheme.lower()}://{rest}"


def _is_embedded(endpoint: str) -> bool:
    return (endpoint.split("://", 1)[0] if "://" in endpoint else endpoint) == "embedded"


def environment_ca_file(environ: Any = None) -> str | None:
    """The CA file ``$GTL_NB_CA_FILE`` names (``None`` when it is unset or empty); a ``ConfigurationError``
    naming the variable when that file cannot be read (a set-up mistake, said before any connection)."""
    path = (os.environ if environ is None else environ).get(CA_FILE_ENV, "").strip()
    if not path:
        return None
    expanded = os.path.expanduser(path)
    if not os.path.isfile(expanded) or not os.access(expanded, os.R_OK):
        raise ConfigurationError(
            f"${CA_FILE_ENV} names {path}, which is not a readable file: give the CA file that signed the gateway's "
            "certificate (`gtl certs` writes ca.pem), or unset it to trust the system's store"
        )
    return expanded


def _gateway_options(endpoint: str, options: dict[str, Any]) -> Any:
    """``verify=`` out of ``options``, the arguments ``connect`` was given for the gateway at
    ``endpoint``, after checking the address and that nothing else is given: a gateway reads its own
    configuration."""
    from gtl_nb.transports.endpoints import unusable_address

    unusable = unusable_address(endpoint)  # (before anything quotes it)
    if unusable is not None:
        raise ConfigurationError(unusable)
    if "://" not in endpoint:
        from gtl_nb.transports.discovery import is_host_port

        if not is_host_port(endpoint):  # a bare HOST:PORT goes to discovery; anything else is a mistake
            from gtl_nb.transports.endpoints import mistyped_scheme

            mistyped = mistyped_scheme(endpoint)  # http//HOST:PORT: a scheme whose "://" was mistyped
            if mistyped is not None:
                raise ConfigurationError(mistyped)
            raise ConfigurationError(
                f"{endpoint!r} is not a gateway address: give HOST:PORT (the best transport the gateway offers) "
                "or a scheme (https://HOST:PORT, grpc://HOST:PORT, …); use connect() or connect('embedded://') "
                "to run the engine in this process"
            )
    verify = options.pop("verify", None)
    if verify is None:  # ($GTL_NB_CA_FILE is for TLS: an address that cannot use TLS is not refused for it)
        plain = endpoint.split("://", 1)[0].lower() in _PLAIN_SCHEMES if "://" in endpoint else False
        verify = True if plain else environment_ca_file() or True
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ConfigurationError(
            f"connect({endpoint!r}) takes no {given[0]}=: the gateway reads its own configuration "
            "(stdio:///path/to/gtl.toml names the file)"
        )
    return verify


class Client:
    """A connection to GTL (see ``connect``). Thread-safe; use one per notebook or application.

    The client runs its sessions through a backend (``gtl_nb.backend``): the embedded engine unless
    ``backend=`` gives another one, in which case the configuration arguments must be left out.
    """

    def __init__(
        self,
        *,
        providers: dict[str, dict[str, Any]] | None = None,
        config: Any = None,
        user: str | None = None,
        ledger: Any = None,
        environ: Any = None,
        loop: LoopThread | None = None,
        backend: Backend | None = None,
        **sections: Any,
    ) -> None:
        if backend is None:
            from gtl_nb.engine.settings import load_settings
            from gtl_nb.providers.registry import provider_types

            settings = load_settings(
                config=config, providers=providers, environ=environ, known_types=provider_types(), **sections
            )
            engine_options = {} if ledger is None else {"ledger": ledger}
            backend = EmbeddedBackend(settings, principal=user or _os_user(), loop=loop, **engine_options)
        self.backend = backend
        self.user = user or getattr(getattr(backend, "context", None), "principal", None) or _os_user()
        self._loop = backend.loop
        self._closed = False
        # an awaited call on aconnect's loop runs its session in the caller's task: no task of its
        # own, no turn of the loop to start it and none to wake the caller (``_answer``)
        self._sessions_in_callers_task = isinstance(self._loop, CallersLoop) and getattr(
            backend, "sessions_in_callers_task", False
        )

    @property
    def transport(self) -> str:
        """The scheme sessions travel over: ``"embedded"``, or the gateway transport in use (``"stdio"``,
        ``"wss"``, ``"grpc"``, …) — for ``https://`` and a bare ``HOST:PORT``, the one discovery chose."""
        if isinstance(self.backend, EmbeddedBackend):
            return "embedded"
        return str(getattr(self.backend, "transport", None) or type(self.backend).__name__)

    @property
    def config(self) -> Any:
        """The validated configuration of an embedded client (``None`` for a remote one)."""
        settings = getattr(self.backend, "settings", None)
        return None if settings is None else settings.config

    @property
    def ledger(self) -> Any:
        """The embedded engine's usage ledger store (``None`` when none is kept). Prefer
        ``client.usage()``, which works over every backend."""
        engine = getattr(self.backend, "engine", None)
        return None if engine is None else engine.ledger

    @property
    def catalog(self) -> Any:
        """The model catalog prices come from (embedded)."""
        engine = getattr(self.backend, "engine", None)
        return None if engine is None else engine.catalog

    # -- requests -----------------------------------------------------------------------------

    def request(
        self,
        model: str | None = None,
        messages: str | Message | dict[str, Any] | Sequence[Message | dict[str, Any]] = (),
        *,
        provider: str | None = None,
        providers: Sequence[str] | None = None,
        system: str | None = None,
        tools: Sequence[Tool | dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        response_format: dict[str, Any] | type | None = None,
        metadata: dict[str, Any] | None = None,
        reasoning: bool | None = None,
        reasoning_effort: str | None = None,
        reasoning_budget: int | None = None,
        cache: bool | None = None,
        stream: bool = True,
        session_id: str | None = None,
    ) -> CompletionRequest:
        """Build (and validate) the ``CompletionRequest`` that ``complete``/``stream`` would send.

        Arguments left out take the ``[defaults]`` of the configuration (``model``, ``provider``,
        ``providers``, ``system`` — for a request without a system message —, ``temperature``,
        ``max_tokens``, ``reasoning``, and ``reasoning_effort`` with ``reasoning_budget`` for a request that
        gives neither). ``parallel_tool_calls=False`` lets the answer hold at most one
        tool call (``tool_choice`` then carries GTL's ``"parallel": false``); a deployment whose API
        cannot be so limited is skipped, and when none can the request fails ``INVALID_REQUEST``.

        ``reasoning_effort`` (``"none"``, ``"minimal"``, ``"low"``, ``"medium"``, ``"high"``, ``"xhigh"``,
        ``"max"``) and ``reasoning_budget`` (thinking tokens, ``0``: none) say how hard the model thinks,
        whatever ``reasoning`` says (which asks to be shown the thinking): each deployment sends its own
        API's knob, converted from the other when it takes only one (docs/providers.md); left out, the
        deployment's own option decides.
        """
        if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
            raise InvalidRequestError(f"parallel_tool_calls must be True or False, not {parallel_tool_calls!r}")
        if parallel_tool_calls is False:
            tool_choice = limited_to_one_call(tool_choice)
        defaults = self.backend.defaults
        named = bool(model)
        model = model or defaults.model
        if provider is None and providers is None and isinstance(model, str):
            provider, providers = self.backend.default_routing(model, named=named)
        temperature = defaults.temperature if temperature is None else temperature
        max_tokens = defaults.max_tokens if max_tokens is None else max_tokens
        reasoning = defaults.reasoning if reasoning is None else reasoning
        if reasoning_effort is None and reasoning_budget is None:  # (a caller's one replaces the pair)
            reasoning_effort, reasoning_budget = defaults.reasoning_effort, defaults.reasoning_budget
        if reasoning_effort is not None and reasoning_effort not in REASONING_EFFORTS:
            shown = _short(reasoning_effort, 40) if isinstance(reasoning_effort, str) else a_kind_of(reasoning_effort)
            raise InvalidRequestError(
                f"reasoning_effort must be one of {', '.join(map(repr, REASONING_EFFORTS))}, not {shown}"
            )
        if reasoning_budget is not None and (type(reasoning_budget) is bool or not isinstance(reasoning_budget, int)):
            raise InvalidRequestError(
                f"reasoning_budget takes a whole number of thinking tokens (0: none), not {a_kind_of(reasoning_budget)}"
            )
        response_format = response_format_of(response_format)
        _check_arguments(
            model=model,
            provider=provider,
            providers=providers,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            metadata=metadata,
            response_format=response_format,
            tool_choice=tool_choice,
        )
        stops = _stop_sequences(stop)
        msgs = _messages(messages)
        if system is None and defaults.system and not any(m.role == "system" for m in msgs):
            system = defaults.system
        if system is not None:
            if not isinstance(system, str):  # (it would be named as messages[0].content, never given)
                raise InvalidRequestError(f"system must be text (a str), not {type(system).__name__}")
            msgs.insert(0, Message(role="system", content=_text(system)))
        if not msgs:
            # a prompt passed alone was read as the model: said so when no messages were given at all
            # and the "model" is no model routing knows
            alone = named and isinstance(messages, tuple) and not messages and self._unknown_model(model)
            raise InvalidRequestError(_no_messages(model if alone else None, defaults.model))
        try:
            request = CompletionRequest(
                session_id=session_id or new_session_id(),
                model=model,
                messages=msgs,
                provider=provider,
                providers=list(providers) if providers else None,
                stream=stream,
                max_tokens=max_tokens,
                temperature=None if temperature is None else float(temperature),
                top_p=None if top_p is None else float(top_p),
                stop=stops,
                tools=_tools(_listed(tools, "tools takes a list of tools (gtl_nb.Tool or dicts)")) if tools else None,
                tool_choice=tool_choice,
                response_format=response_format,
                metadata=metadata,
                reasoning=reasoning,
                cache=cache,
                reasoning_effort=reasoning_effort,
                reasoning_budget=reasoning_budget,
            )
        except (TypeError, ValueError) as exc:  # (ValueError: effort and budget that disagree)
            raise InvalidRequestError(f"invalid request: {exc}") from None
        return _typed(request)

    def _unknown_model(self, model: str) -> bool:
        """Whether routing knows no model ``model`` (asked only to word an error)."""
        try:
            if self.route(model):
                return False
            # a gateway routes for itself (no candidates here): judge from the models it lists
            listed = {(info.provider, entry.name) for info in self.providers() for entry in info.models}
        except ModelNotFoundError:
            return True
        except Exception:  # another refusal (credentials, scopes): the name itself was a model's
            return False
        deployment, _, name = model.partition(":")
        known = (deployment, name) in listed or any(model in pair for pair in listed)  # dep:model, model, dep
        return not known

    def _prepare(self, model: str | None, messages: Any, kwargs: dict[str, Any]) -> CompletionRequest:
        """The request ``complete``/``stream`` and their twins send: ``request=`` or one built from the
        arguments, checked — a routing or credential mistake raises here, with its own class."""
        given = kwargs.pop("request", None)
        _check_options(kwargs)
        no_messages = messages is None or (isinstance(messages, tuple) and not messages)  # (an array has no ==)
        if given is not None and (kwargs or model is not None or not no_messages):
            others = [*(["model"] if model is not None else []), *([] if no_messages else ["messages"]), *kwargs]
            raise TypeError(f"request= carries its own options; {', '.join(others)} would be ignored: set them in it")
        # a request built by hand was never checked (Struct constructors check no types or limits)
        request = _typed(given) if given is not None else self.request(model, messages, **kwargs)
        return self._check_route(request)

    def _check_route(self, request: CompletionRequest) -> CompletionRequest:
        """Refuse, before any session starts, a request that no configured deployment can serve, whose
        deployment lacks its credentials (the error names what to set) or whose prompt is clearly over
        the model's context window; returns the request to send (moved to a context fallback, if one
        is configured and needed)."""
        self._ensure_open()
        self.backend.check(request)
        return self.backend.fit(request)

    @property
    def default_model(self) -> str:
        """The model a request gets when it names none (``[defaults] model``, built-in ``echo``)."""
        return self.backend.defaults.model

    def complete(
        self,
        model: str | None = None,
        messages: Any = (),
        *,
        on_event: EventCallback | None = None,
        **kwargs: Any,
    ) -> Completion:
        """Run a request to the end and return its ``Completion``; an ``error`` raises its exception."""
        if on_event is not None:  # the callback sees each event as it arrives
            events = self.stream(model, messages, on_event=on_event, **kwargs)
            for _ in events:
                pass
            return events.result()
        # nobody watches the events: the loop thread collects the answer and hands it over once
        request = self._prepare(model, messages, kwargs)
        return _completion_or_raise(self._loop.run(self._answer(request)))

    def stream(
        self,
        model: str | None = None,
        messages: Any = (),
        *,
        on_event: EventCallback | None = None,
        **kwargs: Any,
    ) -> EventStream:
        """Start a request; iterate the returned ``EventStream`` for events as they arrive."""
        self._refuse_on_own_loop()
        return EventStream(self, self._prepare(model, messages, kwargs), on_event)

    async def acomplete(
        self,
        model: str | None = None,
        messages: Any = (),
        *,
        on_event: EventCallback | None = None,
        **kwargs: Any,
    ) -> Completion:
        """Async twin of ``complete``."""
        if on_event is not None:  # the callback sees each event as it arrives, on the caller's loop
            stream = self.astream(model, messages, on_event=on_event, **kwargs)
            async for _ in stream:
                pass
            return stream.result()
        # one wake-up of the loop thread to start, one of the caller's loop for the whole answer (none
        # with aconnect: the engine runs on the caller's loop, in the caller's task)
        request = self._prepare(model, messages, kwargs)
        if self._sessions_in_callers_task and self._loop.in_loop_thread:
            return _completion_or_raise(await self._answer(request, callers_task=True))
        return _completion_or_raise(await self._loop.call(self._answer(request), grace=_END_WAIT))

    def astream(
        self,
        model: str | None = None,
        messages: Any = (),
        *,
        on_event: EventCallback | None = None,
        **kwargs: Any,
    ) -> AsyncEventStream:
        """Async twin of ``stream``: ``async for event in client.astream(...)``."""
        return AsyncEventStream(self, self._prepare(model, messages, kwargs), on_event)

    def batch(
        self,
        requests: Iterable[str | dict[str, Any] | CompletionRequest],
        *,
        concurrency: int = 8,
        progress: bool = True,
        **defaults: Any,
    ) -> list[Completion | GTLError]:
        """Run many requests with at most ``concurrency`` at once; results in input order.

        Each item is a prompt string, a dict of ``complete()`` keyword arguments, or a
        ``CompletionRequest``; ``defaults`` (``model=``, ``system=`` …) apply to strings and dicts.
        A failed item gives its exception in its slot instead of a ``Completion``.
        """
        prepared = self._prepare_batch(requests, defaults)
        return self._loop.run(self._run_batch(prepared, concurrency, progress))

    async def abatch(
        self,
        requests: Iterable[str | dict[str, Any] | CompletionRequest],
        *,
        concurrency: int = 8,
        progress: bool = True,
        **defaults: Any,
    ) -> list[Completion | GTLError]:
        """Async twin of ``batch``."""
        prepared = self._prepare_batch(requests, defaults)
        return await self._loop.call(self._run_batch(prepared, concurrency, progress), grace=_END_WAIT)

    def _prepare_batch(self, requests: Iterable[Any], defaults: dict[str, Any]) -> list[CompletionRequest | GTLError]:
        self._ensure_open()  # (raised, as complete() raises it, not put in every item's slot)
        if concurrency_error := [k for k in ("on_event", "session_id") if k in defaults]:
            raise InvalidRequestError(f"batch() does not take {concurrency_error[0]}")
        _check_options(defaults, also=("model",))  # (messages are the items)
        out: list[CompletionRequest | GTLError] = []
        for item in _listed(requests, "batch() takes a list of requests (prompts, dicts of complete() arguments)"):
            try:
                if isinstance(item, CompletionRequest):
                    request = _typed(item)
                elif isinstance(item, str):
                    request = self.request(messages=item, **defaults)
                elif isinstance(item, dict):
                    _check_options(item, also=("model", "messages"))
                    request = self.request(**{**defaults, **item})
                else:
                    raise InvalidRequestError(f"a batch item must be a str, dict or CompletionRequest, not {item!r}")
                out.append(self._check_route(request))
            except GTLError as exc:
                out.append(exc)
        return out

    async def _run_batch(
        self, prepared: list[CompletionRequest | GTLError], concurrency: int, show_progress: bool
    ) -> list[Completion | GTLError]:
        from gtl_nb.progress import Progress

        if isinstance(concurrency, bool) or not isinstance(concurrency, numbers.Integral) or concurrency < 1:
            raise InvalidRequestError(f"concurrency must be at least 1, not {_short(concurrency, 40)}")
        bar = Progress(len(prepared), "gtl batch") if show_progress and prepared else None
        gate = asyncio.Semaphore(concurrency)

        async def one(item: CompletionRequest | GTLError) -> Completion | GTLError:
            if isinstance(item, GTLError):
                result: Completion | GTLError = item
            else:
                async with gate:
                    result = await self._collect(item)
            if bar is not None:
                bar.advance(ok=not isinstance(result, GTLError))
            return result

        try:
            return list(await asyncio.gather(*(one(item) for item in prepared)))
        finally:
            if bar is not None:
                bar.close()

    def compare(
        self,
        models: Sequence[str],
        messages: Any,
        *,
        on_event: Callable[[str, StreamEvent], Any] | None = None,
        **kwargs: Any,
    ) -> Comparison:
        """Send the same prompt to several models at once; one result (or error) per model.

        ``on_event(model, event)`` sees every model's events as they arrive (from the loop
        thread), which is how the notebook grid streams all columns at the same time. A failing
        model does not stop the others.
        """
        self._ensure_open()
        _check_callback(on_event)
        models = list(
            dict.fromkeys(_listed(models, "compare() takes a list of models, e.g. ['echo', 'openai:gpt-4o']"))
        )
        if not models:
            raise InvalidRequestError("compare() needs at least one model")
        _check_options(kwargs)
        requests: dict[str, CompletionRequest | GTLError] = {}
        for model in models:
            try:
                request = self.request(model, messages, **kwargs)
                requests[model] = self._check_route(request)
            except GTLError as exc:
                requests[model] = exc
        return self._loop.run(self._run_compare(requests, on_event))

    async def _run_compare(
        self, requests: dict[str, CompletionRequest | GTLError], on_event: Callable[[str, StreamEvent], Any] | None
    ) -> Comparison:
        async def one(model: str, item: CompletionRequest | GTLError) -> Completion | Exception:
            if isinstance(item, GTLError):
                return item
            return await self._collect(item, (lambda event: on_event(model, event)) if on_event else None)

        results = await asyncio.gather(*(one(model, item) for model, item in requests.items()))
        return Comparison(models=list(requests), results=dict(zip(requests, results, strict=True)))

    def _outcome(self, transcript: Transcript) -> Completion | GTLError:
        """A finished session as its ``Completion``, or its error's exception carrying the partial one."""
        done, error = transcript.done, transcript.error
        provider = done.provider if done else (error.provider if error else None)
        completion = Completion.from_transcript(transcript, self.provider_type(provider))
        if error is None:
            return completion
        exc = error_from_event(error)
        exc.completion = completion  # type: ignore[attr-defined]
        return exc

    async def _answer(self, request: CompletionRequest, *, callers_task: bool = False) -> Completion | GTLError:
        """Run one session to its end and build its outcome (for ``complete`` and ``acomplete``): the
        caller is woken once, for the whole answer. On the loop thread, a session cancelled by someone
        else (``close()`` from another thread, the loop stopping) still ends in its outcome: the
        ``CANCELLED`` error, as the ledger records it.

        ``callers_task``: run in the caller's own task (``acomplete`` on ``aconnect``'s loop). ``aclose``
        ending the session is then its ``CANCELLED`` end, the caller's task not cancelled (the backend
        takes that cancel back); a cancel of the caller's — its own ``cancel()``, a timeout — ends the
        session ``cancelled`` and goes on to the caller, its clean-up done by then."""
        transcript = Transcript(session_id=request.session_id)
        try:
            if callers_task:
                await self.backend.session(request, transcript.add, callers_task=True)  # type: ignore[call-arg]
            else:
                await self.backend.session(request, transcript.add)
        except asyncio.CancelledError:
            if callers_task or not transcript.finished:  # (a backend ends every cancelled session)
                raise
        return self._outcome(transcript)

    async def _collect(
        self, request: CompletionRequest, on_event: Callable[[StreamEvent], Any] | None = None
    ) -> Completion | GTLError:
        """Run one session on the loop thread to its end (for ``batch`` and ``compare``)."""
        transcript = Transcript(session_id=request.session_id)

        def deliver(event: StreamEvent) -> None:
            transcript.add(event)
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:  # a display callback must not break the run
                    log.exception("on_event callback failed for %r", request.session_id)

        await self.backend.session(request, deliver)
        return self._outcome(transcript)

    def as_ask(self, model: str | None = None, **kwargs: Any) -> Callable[[str], str]:
        """A plain ``prompt -> answer text`` function (for ``gap.suggest_definitions(ask=...)``)."""

        def ask(prompt: str) -> str:
            return self.complete(model, prompt, **kwargs).text

        return ask

    # -- providers ----------------------------------------------------------------------------

    def providers(self) -> list[ProviderInfo]:
        """``provider_info`` for every configured deployment."""
        return self.backend.providers()

    def models(self) -> list[tuple[str, str]]:
        """``(deployment, model)`` pairs the client can route to."""
        return [(info.provider, model.name) for info in self.providers() for model in info.models]

    def route(
        self, model: str | None = None, *, provider: str | None = None, providers: Sequence[str] | None = None
    ) -> list[tuple[str, str, str]]:
        """Where a request for ``model`` would go: ``(deployment, provider type, model id)`` for each
        candidate, in the order routing considers them (the first answers unless it fails).

        Raises the same configuration or unknown-model error that sending the request would.
        """
        request = self.request(model, "?", provider=provider, providers=providers)
        return self.backend.route(request)

    def _ask(self, question: Coroutine[Any, Any, T], what: str, *, timeout: float | None = None) -> T:
        """Wait for ``question`` — a gateway's query, a shared store's read — longer than the gateway and
        the stores wait themselves, so that their own answer, which says why, comes first; past that, a
        retryable ``PROVIDER_UNAVAILABLE`` naming what had no answer."""
        timeout = QUESTION_WAIT if timeout is None else timeout
        try:
            return self._loop.run(question, timeout=timeout)
        except WaitedTooLong:  # (not a TimeoutError of the question's own: that is its answer)
            raise ProviderUnavailableError(f"{what} had no answer in {timeout:g} s") from None

    async def _aask(self, question: Coroutine[Any, Any, T], what: str, *, timeout: float | None = None) -> T:
        """``_ask`` awaited: from any loop, ``aconnect``'s own included (where ``_ask`` is refused), with
        the same deadline and the same ``PROVIDER_UNAVAILABLE`` past it. The question runs as a task of its
        own, so a ``TimeoutError`` it raises is its answer, never taken for the deadline."""
        timeout = QUESTION_WAIT if timeout is None else timeout
        asking = asyncio.ensure_future(self._loop.call(question))
        try:
            done, _ = await asyncio.wait([asking], timeout=timeout)
        except asyncio.CancelledError:
            asking.cancel()
            raise
        if not done:
            asking.cancel()
            await asyncio.wait([asking], timeout=_END_WAIT)
            raise ProviderUnavailableError(f"{what} had no answer in {timeout:g} s")
        return asking.result()

    def count_tokens(self, model: str | None = None, messages: Any = (), **kwargs: Any) -> TokenCount:
        """How many input tokens the request ``complete(model, messages, **kwargs)`` would send, counted
        without running it: ``.input_tokens``, and ``.exact`` — the provider's own count where its API
        has one (Anthropic's ``count_tokens``, Gemini's ``countTokens``; echo's tokenizer), else an
        estimate (about four characters a token). Routed as the request would be (``.deployment``,
        ``.model``); nothing is generated and no ledger row is written. Served by the embedded engine; a
        gateway serves it to the Anthropic SDK (``POST /v1/messages/count_tokens``), not over GTL's
        transports."""
        request, count = self._token_count_of(model, messages, kwargs)
        return self._ask(count(request), f"the token count of {request.model}", timeout=120)

    async def acount_tokens(self, model: str | None = None, messages: Any = (), **kwargs: Any) -> TokenCount:
        """Async twin of ``count_tokens`` (callable on an ``aconnect`` client's own loop)."""
        request, count = self._token_count_of(model, messages, kwargs)
        return await self._aask(count(request), f"the token count of {request.model}", timeout=120)

    def _token_count_of(
        self, model: str | None, messages: Any, kwargs: dict[str, Any]
    ) -> tuple[CompletionRequest, Callable[[CompletionRequest], Coroutine[Any, Any, TokenCount]]]:
        self._ensure_open()
        request = self.request(model, messages, **kwargs)
        count = getattr(self.backend, "count_tokens", None)
        if count is None:
            raise InvalidRequestError(
                "this client cannot count tokens over its connection to a gateway (GTL has no message for it); "
                "the gateway counts them at POST /v1/messages/count_tokens (the Anthropic SDK's "
                "client.messages.count_tokens)"
            )
        return request, count

    def list_models(self, deployment: str) -> list[str]:
        """Ask the provider itself which models it offers (``GET /v1/models`` and the like)."""
        return self._ask(self.backend.list_models(deployment), f"the model list of {deployment}", timeout=120)

    async def alist_models(self, deployment: str) -> list[str]:
        """Async twin of ``list_models``."""
        return await self._aask(self.backend.list_models(deployment), f"the model list of {deployment}", timeout=120)

    def breakers(self) -> dict[str, dict[str, Any]]:
        """Each deployment's circuit breaker: state, failures, error rate, when it may be tried again."""
        return self._ask(self.backend.breakers(), "the circuit breakers")

    async def abreakers(self) -> dict[str, dict[str, Any]]:
        """Async twin of ``breakers``."""
        return await self._aask(self.backend.breakers(), "the circuit breakers")

    def sessions(self, *, all_users: bool = False) -> list[dict[str, Any]]:
        """Your sessions running on the gateway, over any connection (``all_users``: everyone's, with the
        ``session:admin`` scope). Embedded there is no one else: refused with a ``ConfigurationError``."""
        return self._ask(self._gateway_query("sessions")(all_users=all_users), "the sessions query")

    async def asessions(self, *, all_users: bool = False) -> list[dict[str, Any]]:
        """Async twin of ``sessions``."""
        return await self._aask(self._gateway_query("sessions")(all_users=all_users), "the sessions query")

    def cancel_session(self, session_id: str) -> int:
        """Cancel one of your sessions running on the gateway (from any connection; anyone's with
        ``session:admin``); how many were cancelled."""
        return self._ask(self._gateway_query("cancel_session")(session_id), "the cancel query")

    async def acancel_session(self, session_id: str) -> int:
        """Async twin of ``cancel_session``."""
        return await self._aask(self._gateway_query("cancel_session")(session_id), "the cancel query")

    def _gateway_query(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        """The backend's query ``name``, which only a gateway's connection has."""
        query = getattr(self.backend, name, None)
        if query is None:
            raise ConfigurationError(f"{name}() asks a gateway; this client runs the engine in this process")
        return query  # type: ignore[no-any-return]

    def usage(self, *, all_users: bool = False, **filters: Any) -> pandas.DataFrame:
        """The usage rows this client may see as a DataFrame (the columns of ``docs/ledger.md``).

        ``filters`` narrow it like the ledger's readers do: ``user=``, ``status=``, ``since=``,
        ``until=`` … Works the same over every backend; empty when no ledger is kept. From a gateway,
        the rows are the token's own; ``all_users=True`` asks for everyone's (``usage:admin``).
        """
        from gtl_nb.engine.ledger import frame_from_rows

        self._ensure_open()  # (its ledger is closed with it: a new client reads the same file)
        rows = self._ask(self.backend.usage_rows(all_users=all_users, **filters), "the usage query")
        return frame_from_rows(rows)

    async def ausage(self, *, all_users: bool = False, **filters: Any) -> pandas.DataFrame:
        """Async twin of ``usage`` (the way to read it from the loop of an ``aconnect`` client, where
        the synchronous call is refused). The rows still queued for the ledger are waited for in a
        worker thread, never on the loop, and the table is built in one too: pandas' first import
        (~0.2 s) and a large ledger's frame are work the awaiting loop need not stand still for."""
        from gtl_nb.engine.ledger import frame_from_rows

        self._ensure_open()
        rows = await self._loop.call(self.backend.usage_rows(all_users=all_users, **filters))
        return await asyncio.to_thread(frame_from_rows, rows)

    def provider_type(self, deployment: str | None) -> str | None:
        return self.backend.provider_type(deployment)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """End the sessions still running (each ``CANCELLED``) and close the connections."""
        if not self._closed:
            if isinstance(self._loop, CallersLoop) and self._loop.loop.is_closed():
                # aconnect's loop has closed, and the engine's connections with it: nothing left to end
                # (a row left started is marked interrupted when the ledger next opens)
                self._closed = True
                return
            self._refuse_on_own_loop()
            self._closed = True
            try:
                self._loop.run(self.backend.aclose(), timeout=10)
            except Exception:  # pragma: no cover - closing is best effort
                pass

    async def aclose(self) -> None:
        """Async twin of ``close`` (the way to close a client of ``aconnect`` from its loop)."""
        if self._closed:
            return
        loop = self._loop
        if isinstance(loop, CallersLoop):
            reason = loop.unusable()
            if reason == LOOP_CLOSED:  # its connections closed with their loop: nothing left to end
                self._closed = True
                return
            if reason is not None:  # it can be closed only where its loop runs: still open, say so
                raise RuntimeError(reason)
        self._closed = True
        with contextlib.suppress(Exception):  # closing is best effort
            await loop.call(self.backend.aclose(), grace=_END_WAIT)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<gtl_nb.Client {self.backend.describe()}>"

    # -- internal -----------------------------------------------------------------------------

    def _start(self, request: CompletionRequest, deliver: Callable[[StreamEvent], None]) -> Work[None]:
        return self._loop.spawn(self.backend.session(request, deliver))

    def _refuse_on_own_loop(self) -> None:
        """A synchronous call that would wait on the thread of the loop it waits for never returns;
        nor does one whose loop (``aconnect``'s) is closed or not running."""
        loop = self._loop
        if isinstance(loop, CallersLoop):
            reason = loop.unusable() or (OWN_LOOP if loop.in_loop_thread else None)
            if reason is not None:
                raise RuntimeError(reason)
        elif loop.in_loop_thread:
            raise RuntimeError("the synchronous gtl_nb API cannot be called from its own loop thread")

    def _ensure_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this client is closed; gtl_nb.connect() gives a new one")


class _StreamBase:
    def __init__(self, client: Client, request: CompletionRequest, on_event: EventCallback | None) -> None:
        _check_callback(on_event)  # (before the session starts: it would fail at the first event)
        self.client = client
        self.request = request
        self.on_event = on_event
        self.transcript = Transcript(session_id=request.session_id)
        self._finished = False  # the transcript's ``finished``, kept as a flag: it is asked per event

    @property
    def session_id(self) -> str:
        return self.request.session_id

    @property
    def finished(self) -> bool:
        return self.transcript.finished  # (the per-event checks read ``_finished``, which ``_record`` keeps)

    def _record(self, event: StreamEvent) -> None:
        if self._finished:
            return  # one terminal event per session, and nothing after it, whoever records it
        self.transcript.add(event)
        if type(event) in TERMINAL_EVENTS:
            self._finished = True
            self._on_end()
        if self.on_event is not None:
            self.on_event(event)

    def _on_end(self) -> None:
        """The terminal event was just recorded (a stream with readers to wake does so here)."""

    def completion(self) -> Completion:
        """What arrived so far, as a ``Completion`` (complete once the stream finished)."""
        outcome = self.client._outcome(self.transcript)
        return outcome if isinstance(outcome, Completion) else outcome.completion  # type: ignore[attr-defined]

    def result(self) -> Completion:
        """The ``Completion``; raises the session's error as its exception."""
        if not self.finished:
            raise GTLError("the stream has not finished; iterate it to the end first")
        outcome = self.client._outcome(self.transcript)
        if isinstance(outcome, GTLError):
            raise outcome
        return outcome


_WOKEN = object()  # what a watched read of an ``EventStream`` gives for a wake-up without an event


class EventStream(_StreamBase):
    """Events of one session, as they arrive (an iterator: ``for event in stream``, ``next(stream)``).

    ``close()`` (or leaving a ``with`` block, or the stream being garbage-collected unfinished)
    cancels the session, also from another thread while one is iterating; a ``KeyboardInterrupt``
    while waiting for the next event cancels it too. Either way the session ends with exactly one
    ``CANCELLED`` error. Leaving a ``for`` loop early does not cancel by itself: iterate on later,
    or call ``close()``.
    """

    def __init__(self, client: Client, request: CompletionRequest, on_event: EventCallback | None) -> None:
        super().__init__(client, request, on_event)
        self._handoff = EventHandoff()
        self._work = client._start(request, self._handoff.deliver)
        self._lock = threading.RLock()  # on_event callbacks run under it and may call close()
        self._reader: threading.Thread | None = None
        self._ended = threading.Event()

    def _record(self, event: StreamEvent) -> None:
        with self._lock:
            if self.finished:
                return  # one terminal event per session, whoever records it
            super()._record(event)
            if self.finished:
                self._ended.set()
                self._handoff.wake_readers()  # a reader blocked for an event another thread took

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> StreamEvent:
        self._reader = threading.current_thread()
        try:
            while not self.finished:
                event = self._next_event()
                if event is None:
                    continue  # woken: the stream ended while close() read its end
                before = len(self.transcript.events)
                self._record(event)
                if len(self.transcript.events) > before:
                    return event
        except KeyboardInterrupt:  # the notebook's "interrupt kernel" while waiting
            self._cancel()
            raise
        finally:
            self._reader = None
        raise StopIteration

    def _next_event(self) -> StreamEvent | None:
        """The next event handed over (``None``: woken without one). On ``aconnect``'s loop, read
        from another thread, the wait watches that loop: one that closes ends the session with a
        ``CANCELLED`` error saying so, one that has not started it warns (``CallersLoop.watch``)."""
        loop = self.client._loop
        if not isinstance(loop, CallersLoop):
            return self._handoff.next()

        def take(wait: float) -> object:
            event = self._handoff.next(timeout=wait)
            return _WOKEN if event is None else event

        try:
            taken = loop.watch(take, self._work)
        except RuntimeError as exc:  # the loop closed under the session: it can never end there
            return Error(session_id=self.session_id, code="CANCELLED", message=str(exc))
        return None if taken is _WOKEN else taken  # type: ignore[return-value]

    def _cancel(self) -> None:
        """Cancel and collect the ``CANCELLED`` error the pump delivers (the caller reads the queue)."""
        self._work.cancel()
        while not self.finished:
            try:
                event = self._handoff.next(timeout=_END_WAIT)
                if event is not None:
                    self._record(event)
            except queue.Empty:  # pragma: no cover - the loop thread is wedged
                self._record(Error(session_id=self.session_id, code="CANCELLED", message="cancelled by the caller"))

    def close(self) -> None:
        """Stop the session (a ``CANCELLED`` error ends it) unless it already finished."""
        if self.finished:
            return
        reader = self._reader
        if reader is not None and reader is not threading.current_thread() and reader.is_alive():
            self._work.cancel()  # the thread waiting in __next__ reads the CANCELLED error itself
            if self._ended.wait(5):
                return
        self._cancel()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "transcript", None) or self.finished:
            return
        try:
            self._work.cancel()
        except Exception:  # pragma: no cover
            pass

    @property
    def text(self) -> str:
        return self.transcript.text


class AsyncEventStream(_StreamBase):
    """Async iterator of one session's events (see ``Client.astream``).

    ``await stream.aclose()``, ``async with`` exiting, cancelling the task that awaits the next
    event, or the stream being dropped unfinished (``break`` out of ``async for client.astream(...)``
    keeps no reference to it) cancels the session; it then ends with one ``CANCELLED`` error — or
    with the ``done`` the engine had already recorded, so the caller and the ledger agree. A
    ``break`` out of a stream you keep only stops reading, as with ``EventStream``: another ``async
    for`` (or ``anext``) carries on where it left off.
    """

    def __init__(self, client: Client, request: CompletionRequest, on_event: EventCallback | None) -> None:
        super().__init__(client, request, on_event)
        self._work: Work[None] | None = None
        self._handoff: AsyncEventHandoff | None = None

    def __aiter__(self) -> AsyncEventStream:
        # an object, not an async generator: a generator's frame would hold the stream in a cycle,
        # so a ``break`` would not drop it and the session would run on, billed, to its end
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:  # (also closed before its first read: no session is started then)
            raise StopAsyncIteration
        handoff = self._handoff
        if handoff is None:
            handoff = self._start_session()
        if handoff.ready:  # the rest of a batch that already arrived: no waiting, no coroutine
            event = handoff.ready.popleft()
        else:
            try:
                event = await handoff.next()
            except asyncio.CancelledError:
                self._work.cancel()  # the task reading the stream was cancelled: so is the session
                await self._collect_end()  # its one terminal event, as the ledger records it
                raise
            if event is None or self._finished:  # another task (``aclose``) recorded the end meanwhile
                raise StopAsyncIteration
        self._record(event)
        return event

    def _start_session(self) -> AsyncEventHandoff:
        self._handoff = handoff = AsyncEventHandoff(asyncio.get_running_loop())
        self._work = self.client._start(self.request, handoff.deliver)
        return handoff

    async def _collect_end(self) -> None:
        """After a cancel, record the end the loop thread delivers (``CANCELLED``, or the ``done`` the
        engine had already recorded in the ledger), so the caller sees what the ledger says."""
        try:
            while not self.finished and self._handoff is not None:
                event = await asyncio.wait_for(self._handoff.next(), _END_WAIT)
                if event is None:  # (another reader recorded the end)
                    break
                self._record(event)
        except asyncio.TimeoutError:  # pragma: no cover - the loop thread is wedged
            pass
        finally:
            self._stop()

    def _on_end(self) -> None:
        if self._handoff is not None:
            self._handoff.close()  # a reader waiting in another task learns the stream ended

    def _stop(self) -> None:
        if not self.finished:
            if self._work is not None:
                self._work.cancel()
            self._record(Error(session_id=self.session_id, code="CANCELLED", message="cancelled by the caller"))

    async def aclose(self) -> None:
        """Stop the session (a ``CANCELLED`` error ends it) unless it already finished."""
        if self.finished:
            return
        if self._work is None:  # never iterated: nothing ran
            self._stop()
            return
        self._work.cancel()
        await self._collect_end()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_work", None) is not None and not self.finished:
            self._work.cancel()  # dropped unfinished: its end reaches nobody, the ledger says cancelled


def _no_messages(named_model: str | None, default_model: str) -> str:
    """What an empty request is told; when a model was named, the likely slip: the prompt passed
    alone, so it was read as the model (``complete("hi")``)."""
    if not named_model:
        return "messages is empty: pass a prompt string or a list of messages"
    return (
        f"messages is empty: {named_model!r} was read as the model (the first argument); pass the prompt "
        f"after it — complete(model, prompt) — or alone by name — complete(messages=prompt) asks the "
        f"default model, {default_model!r}"
    )


def _completion_or_raise(outcome: Completion | GTLError) -> Completion:
    if isinstance(outcome, GTLError):
        raise outcome
    return outcome


# ----------------------------------------------------------------------------------------------
# input normalisation


#: How deeply ``metadata``, ``response_format`` and tool schemas may nest (the codec's limit on frames).
MAX_ARGUMENT_DEPTH = 64


_REQUEST_OPTIONS = frozenset(inspect.signature(Client.request).parameters) - {"self", "model", "messages"}
"""The keywords ``complete``, ``stream`` and their twins pass on to ``Client.request``."""


def _check_arguments(
    *,
    model: Any,
    provider: Any,
    providers: Any,
    temperature: Any,
    top_p: Any,
    max_tokens: Any,
    metadata: Any,
    response_format: Any,
    tool_choice: Any,
) -> None:
    """Refuse, with a message that says what to pass, arguments the typed round trip would accept
    or report only as a foreign exception (NaN, a string for a list, nesting without end)."""
    if not isinstance(model, str) or not model:
        raise InvalidRequestError(f"model must be a model name such as 'echo' or 'openai:gpt-4o', not {model!r}")
    if provider is not None and not isinstance(provider, str):
        raise InvalidRequestError(f"provider must be one deployment name (a str), not {type(provider).__name__}")
    if isinstance(providers, (str, bytes)):
        raise InvalidRequestError(
            f"providers must be a list of deployment or model names in failover order, e.g. providers=[{providers!r}]; "
            f"to send to one deployment, pass provider={providers!r}"
        )
    if providers is not None and not all(isinstance(item, str) and item for item in _iterable(providers, "providers")):
        raise InvalidRequestError("providers must be a list of deployment or model names (non-empty strings)")
    for name, value, highest in (("temperature", temperature, MAX_TEMPERATURE), ("top_p", top_p, 1.0)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # (numpy's numbers are Real too)
            shown = f"{_short(value, 40)} (of type {type(value).__name__})"
            raise InvalidRequestError(f"{name} must be a number from 0 to {highest:g}, not {shown}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer past a float's range: out of range (below), not infinite
            finite = True
        if not finite:
            raise InvalidRequestError(f"{name} must be a finite number, not {value!r}")
        if not 0 <= value <= highest:  # (the providers' own range: OpenAI's and Gemini's; Anthropic's stops at 1)
            raise InvalidRequestError(f"{name} must be a number from 0 to {highest:g}, not {_short(value, 40)}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidRequestError(f"max_tokens must be a positive integer, not {_short(max_tokens, 40)}")
    if max_tokens is not None and max_tokens > MAX_TOKENS_LIMIT:  # (a model's own limit: the engine's check)
        raise InvalidRequestError(
            f"max_tokens must be at most {MAX_TOKENS_LIMIT:,} (no model writes more), not {_short(max_tokens, 40)}"
        )
    for name, value in (("metadata", metadata), ("response_format", response_format), ("tool_choice", tool_choice)):
        if value is not None and nesting_depth(value, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH:
            raise InvalidRequestError(f"{name} nests deeper than {MAX_ARGUMENT_DEPTH} levels; flatten it")


_FORMAT_TYPES = ("text", "json_object", "json_schema")


def response_format_of(value: Any) -> dict[str, Any] | None:
    """``response_format`` as the request carries it: a dict of OpenAI's shape as given; a pydantic model
    class, a dataclass or a ``TypedDict`` (what the OpenAI SDK's ``parse`` takes) as its JSON Schema made
    strict (``gtl_nb.strict_schema``); a bare JSON Schema, or a model instance, refused with what to
    pass instead (``InvalidRequestError``). What ``Client.request`` applies to its ``response_format``."""
    if value is None or (isinstance(value, dict) and value.get("type") in _FORMAT_TYPES):
        return value
    wrap = 'response_format is {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}'
    if isinstance(value, type):  # as the OpenAI SDK's ``parse`` sends a class: strict, every object closed
        schema = strict_schema(_schema_of(value))
        spec: dict[str, Any] = {"name": _schema_name(value), "schema": schema}
        if left_open(schema) is None:  # a dict[str, X] field cannot be strict: sent without, as it was before
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}
    if isinstance(value, dict):
        if value.get("type") in _JSON_TYPES or any(key in value for key in ("properties", "items", "$schema")):
            raise InvalidRequestError(
                f"{wrap} or a class (a dataclass, a TypedDict or a pydantic model class); this looks like the schema "
                "alone: wrap it so"
            )
        return value  # another type: the provider's dialect names it
    if callable(getattr(type(value), "model_json_schema", None)):
        raise InvalidRequestError(f"response_format takes the model class ({type(value).__name__}), not an instance")
    classes = "a class (a dataclass, a TypedDict or a pydantic model class)"
    raise InvalidRequestError(f"{wrap}, {classes} or {{'type': 'json_object'}}, not {a_kind_of(value)}")


_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


def _schema_of(model: type) -> dict[str, Any]:
    """A class's JSON Schema: a pydantic model's own, else pydantic's reading of it (a dataclass, a
    ``TypedDict``) — or msgspec's where pydantic is not installed (a notebook set up by ``make demo``
    has no pydantic); ``InvalidRequestError`` when it has none."""
    try:
        schema_of = getattr(model, "model_json_schema", None)
        if callable(schema_of):
            return dict(schema_of())
        try:
            from pydantic import TypeAdapter  # (pydantic comes with the SDKs that take such classes)
        except ImportError:
            return _msgspec_schema(model)
        return dict(TypeAdapter(model).json_schema())
    except Exception as exc:  # pydantic's or msgspec's refusal (BaseModel itself, an unsupported type)
        raise InvalidRequestError(f"response_format={model.__name__}: no JSON Schema for it ({exc})"[:300]) from None


def _msgspec_schema(model: type) -> dict[str, Any]:
    """msgspec's JSON Schema of a dataclass, ``TypedDict``, ``NamedTuple`` or ``msgspec.Struct``, with its
    root written out where msgspec refers to it (``{"$ref": "#/$defs/P"}``): the providers' structured
    output wants an object at the root."""
    schema = msgspec.json.schema(model)
    definitions = dict(schema.get("$defs") or {})
    reference = schema.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/$defs/"):
        name = reference.removeprefix("#/$defs/")
        root = dict(definitions[name])
        if not _refers_to(definitions, reference):  # (a class that contains itself keeps its definition)
            del definitions[name]
        schema = root
    if definitions:
        schema["$defs"] = definitions
    return schema


def _refers_to(definitions: dict[str, Any], reference: str) -> bool:
    """Whether any of ``definitions`` refers to ``reference``."""
    return f'"{reference}"' in msgspec.json.encode(definitions).decode()


def _schema_name(model: type) -> str:
    """The class's name as the APIs take a schema's name: letters, digits, ``_`` and ``-``, 64 at most."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "response"


def _stop_sequences(stop: Any) -> list[str] | None:
    """``stop`` as the request's list: one string, or any iterable of strings (a list, a tuple, a
    generator — read once, here); nothing (``None``, empty) is ``None``."""
    if stop is None or isinstance(stop, str):
        return [stop] if stop else None
    if isinstance(stop, (dict, bytes, bytearray)) or not isinstance(stop, Iterable):
        raise InvalidRequestError(f"stop must be a string or a list of strings, not {type(stop).__name__}")
    stops = list(stop)
    if not all(isinstance(item, str) for item in stops):
        raise InvalidRequestError("stop must be a string or a list of strings; one of them is not a string")
    return stops or None


def _listed(value: Any, takes: str) -> Iterable[Any]:
    """``value``, an iterable of items, or ``InvalidRequestError`` (``takes`` says what to pass) for one
    item given alone: a string or a dict iterates as characters or keys, one request each."""
    if isinstance(value, (str, bytes, dict, CompletionRequest, Tool, Message)):
        raise InvalidRequestError(f"{takes}, not one {type(value).__name__}: put it in a list")
    if not isinstance(value, Iterable):
        raise InvalidRequestError(f"{takes}, not {type(value).__name__}")
    return value


def _check_options(options: Mapping[str, Any], also: tuple[str, ...] = ()) -> None:
    """``TypeError`` for a keyword no request takes (``also``: more it may hold here, a batch item's
    ``model``), naming the likely one: the interpreter's own message named ``Client.request()``,
    which the caller never called, and suggested nothing."""
    for name in options:
        if not isinstance(name, str):
            raise TypeError(f"keywords must be strings, not {type(name).__name__} ({_short(name, 40)})")
        if name not in _REQUEST_OPTIONS and name not in also:
            close = difflib.get_close_matches(name, [*_REQUEST_OPTIONS, *also], n=1)
            hint = (
                f"; did you mean {close[0]!r}?" if close else f"; a request takes {', '.join(sorted(_REQUEST_OPTIONS))}"
            )
            raise TypeError(f"unexpected keyword argument {name!r}{hint}")


def _typed(request: Any) -> CompletionRequest:
    """``request`` checked as the wire would check it — types, limits (``max_tokens`` ≥ 1, the
    temperature's range), a session id — or ``InvalidRequestError`` naming what is wrong. A Struct's
    constructor checks nothing, and a frame a transport's own decoder refuses must not get that far:
    one typed round trip, the same check for every transport and for the embedded engine."""
    if not isinstance(request, CompletionRequest):
        raise InvalidRequestError(f"request= takes a CompletionRequest, not {type(request).__name__}")
    if not isinstance(request.session_id, str) or not request.session_id:
        raise InvalidRequestError(
            "request.session_id is empty: give the request an id (client.request(...) makes one, "
            "gtl_nb.client.new_session_id() too)"
        )
    try:
        return msgspec.json.decode(msgspec.json.encode(request), type=CompletionRequest)
    except TypeError as exc:
        raise InvalidRequestError(f"invalid request: {_holding(request, exc)}") from None
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"invalid request: {exc}") from None
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"invalid request: the text contains {exc.object[exc.start : exc.end]!r}, an unpaired surrogate "
            "that cannot be sent as UTF-8 (it often comes from decoding bytes with errors='surrogateescape')"
        ) from None


def _holding(request: CompletionRequest, exc: TypeError) -> str:
    """``exc``, a failure to encode ``request``, naming the argument holding what JSON cannot carry."""
    for name in ("metadata", "response_format", "tools", "tool_choice", "messages"):
        try:
            msgspec.json.encode(getattr(request, name))
        except TypeError:
            return f"{name} holds a value JSON cannot carry ({exc})"
    return str(exc)


def _check_callback(on_event: Any) -> None:
    """Refuse an ``on_event`` that cannot be called."""
    if on_event is not None and not callable(on_event):
        raise InvalidRequestError(f"on_event must be a function, called with each event; not {_short(on_event, 40)}")


def _iterable(value: Any, name: str) -> Iterable[Any]:
    if isinstance(value, (dict, set)) or not isinstance(value, Iterable):
        raise InvalidRequestError(f"{name} must be a list, not {type(value).__name__}")
    return list(value)


def nesting_depth(value: Any, stop_after: int) -> int:
    """How deeply dicts, lists and tuples nest in ``value`` (a scalar is 0), counted without recursion
    and giving up once past ``stop_after`` (so a pathological value costs little)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        pending.extend((child, depth) for child in children)
    return deepest


def _messages(value: Any) -> list[Message]:
    if isinstance(value, str):  # (a str subclass — numpy's str_ — as the str it is: JSON knows no subclass)
        return [Message(role="user", content=_text(value))]
    if isinstance(value, (Message, dict)):
        value = [value]
    elif value is not None and (isinstance(value, (bytes, set)) or not isinstance(value, Iterable)):
        raise InvalidRequestError(
            f"messages must be a prompt string, a message dict or a list of them, not {type(value).__name__}"
        )
    out: list[Message] = []
    items = list(value or ())
    if any(isinstance(item, dict) and nesting_depth(item, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH for item in items):
        raise InvalidRequestError(f"a message nests deeper than {MAX_ARGUMENT_DEPTH} levels")
    # tool calls in OpenAI's shapes, arguments as an object, no id: read as the wire reads them
    items = normalise_message_calls(items)
    for index, item in enumerate(items):
        if isinstance(item, Message):
            out.append(item)
        elif isinstance(item, dict):
            try:
                out.append(msgspec.convert(_openai_message(item), Message))
            except msgspec.ValidationError as exc:
                raise InvalidRequestError(f"{_which_message(index, item)}: {_in_its_words(exc, item)}") from None
            except ValueError as exc:  # a rule of the message built from its parts (an image URL's scheme)
                raise InvalidRequestError(f"{_which_message(index, item)}: {exc}") from None
        elif isinstance(item, str):
            out.append(Message(role="user", content=_text(item)))
        else:
            raise InvalidRequestError(f"a message must be a str, dict or Message, not {type(item).__name__}")
    return out


def _text(value: str) -> str:
    """A ``str`` or a subclass of it (numpy's ``str_``, a ``(str, Enum)`` member) as the plain text it
    holds — not its ``str()``, which an enum (``'Prompt.HI'``) or any subclass may override."""
    return value if type(value) is str else str.__str__(value)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error names a value, never a document."""
    try:
        text = repr(value)
    except ValueError:  # an integer past the interpreter's limit on digits (sys.set_int_max_str_digits)
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else f"{text[:limit]}…"


def _which_message(index: int, item: dict[str, Any]) -> str:
    """A message dict as an error names it: its place and role, and the start of its text (a cached
    document may be megabytes: never the whole of it)."""
    content = item.get("content")
    text = content if isinstance(content, str) else ""
    start = f", {text[:40]!r}{'…' if len(text) > 40 else ''}" if text else ""
    role = f"role {_short(item['role'], 24)}" if "role" in item else "no role"
    return f"messages[{index}] ({role}{start})"


def _in_its_words(exc: Exception, item: dict[str, Any]) -> str:
    """A validation error about a message dict, naming the fields as the dict did (``is_error``), and
    cut short (a validator may quote the whole value it refused)."""
    said = str(exc)
    if "is_error" in item:
        said = said.replace("$.tool_error", "$.is_error").replace("tool_error is", "is_error is")
    return said if len(said) <= 300 else f"{said[:300]}…"


def _openai_message(item: dict[str, Any]) -> dict[str, Any]:
    """Accept (its tool calls already read by ``protocol.codec.normalise_message_calls``) content
    given as parts (``_content_parts``), Anthropic's ``cache_control`` marker for GTL's ``cache_point``
    — on the message, or on one of its parts (the whole message is then marked) — and its ``is_error``
    for ``tool_error``."""
    content = item.get("content")
    marks = [item.get("cache_control")]
    if isinstance(content, list):
        marks += [part.get("cache_control") for part in content if isinstance(part, dict)]
    asked = [marker for marker in marks if _cache_marker(marker)]
    if asked:
        item = {**item, "cache_point": item.get("cache_point", True)}
        ttl = longest_ttl(marker.get("ttl") for marker in asked)  # several on one message: the longest-lived
        if ttl is not None and item["cache_point"] is True and "cache_ttl" not in item:
            item["cache_ttl"] = ttl  # (a message that says cache_point false stays unmarked, ttl or not)
    item = {key: value for key, value in item.items() if key != "cache_control"}
    if "is_error" in item:  # Anthropic's name for a failed tool's result
        if "tool_error" in item:
            raise InvalidRequestError("say a tool failed with tool_error or is_error, not both")
        item["tool_error"] = item.pop("is_error")
    if isinstance(content, list):
        if "images" in item:
            raise InvalidRequestError("give a message's images in its content parts or in images, not both")
        item = {**item, **_content_parts(content, item.get("role"))}
    return item


def _cache_marker(marker: Any) -> bool:
    """Whether a ``cache_control`` value asks for caching (``providers.anthropic.asks_for_cache``)."""
    try:
        return asks_for_cache(marker)
    except ValueError as exc:
        raise InvalidRequestError(f"cache_control: {exc} (or say cache_point=True), not {_short(marker)}") from None


def _content_parts(parts: list[Any], role: Any) -> dict[str, Any]:
    """A message dict's ``content`` given as parts — OpenAI's ``{"type": "text", "text"}`` and
    ``{"type": "image_url", "image_url": {"url"}}``, or GTL's ``{"type": "image", "url"}`` — as the
    ``content``, ``images`` and ``parts`` fields of a ``Message`` (``Message.from_pieces``). Images go
    in user and tool messages only (no provider takes them elsewhere)."""
    if not parts:
        raise InvalidRequestError("a message's content parts are empty: give at least one text or image")
    pieces: list[tuple[str, str]] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(("text", part["text"]))
        elif kind == "image_url" or (kind == "image" and "url" in part):
            image = part.get("image_url", part.get("url"))
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise InvalidRequestError(f"an image part needs a URL (https:, http: or data:), not {_short(part)}")
            pieces.append(("image", url))
        else:
            raise InvalidRequestError(
                f'a content part is {{"type": "text", "text": ...}} or {{"type": "image_url", "image_url": '
                f'{{"url": ...}}}}, not {_short(part)}'
            )
    if role not in ("user", "tool") and any(kind == "image" for kind, _ in pieces):
        raise InvalidRequestError(f"a {role} message takes text parts only; images go in user and tool messages")
    message = Message.from_pieces("user", pieces)
    # parts are a user or tool message's (a system or assistant message's texts are its content, joined)
    parts = message.parts if role in ("user", "tool") else []
    return {"content": message.content, "images": message.images, "parts": parts}


def _tools(tools: Iterable[Tool | dict[str, Any]]) -> list[Tool]:
    out: list[Tool] = []
    for tool in tools:
        if isinstance(tool, Tool):
            out.append(tool)
            continue
        if inspect.isroutine(tool):  # (a Python function: the magics build its schema, and so can the caller)
            name = getattr(tool, "__name__", "f")
            raise InvalidRequestError(
                f"a tool is a gtl_nb.Tool or a JSON-Schema dict, not the function {name}: "
                f"gtl_nb.tool_from_function({name}) builds one from its signature"
            )
        if nesting_depth(tool, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH:
            raise InvalidRequestError(f"a tool definition nests deeper than {MAX_ARGUMENT_DEPTH} levels")
        try:
            out.append(msgspec.convert(normalise_tool(tool), Tool))
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(f"invalid tool definition {_short(tool)}: {exc}") from None
    return out


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database (containers)
        return "unknown"
