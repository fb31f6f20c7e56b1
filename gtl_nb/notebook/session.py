"""The notebook's state: settings, clients, the conversation, the GAP messages and ``_gtl``.

One ``NotebookSession`` lives per IPython shell (created by ``%load_ext gtl_nb``). It holds what the
magics share between cells, in memory only: nothing here is written into the notebook, tokens least
of all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from gtl_nb.client import Client
    from gtl_nb.completion import Completion
    from gtl_nb.gap import WrappedMessage
    from gtl_nb.protocol import Message

__all__ = ["GATEWAY_ENV", "MODEL_ENV", "RESULT_NAME", "TOKEN_ENV", "NotebookSession", "Settings", "utc_now"]

MODEL_ENV = "GTL_NB_MODEL"
TOKEN_ENV = "GTL_TOKEN"
GATEWAY_ENV = "GTL_NB_GATEWAY"
"""The gateway the notebook connects to at start, as the ``gtl`` command does (``gtl_nb.cli``): a
kernel restarted with it set is back on the gateway, not silently on the embedded engine."""


def default_endpoint() -> str:
    """``$GTL_NB_GATEWAY`` when set, else ``embedded://`` (the engine in the kernel)."""
    return os.environ.get(GATEWAY_ENV, "").strip() or "embedded://"


RESULT_NAME = "_gtl"  # the last %%gtl result in the user namespace
GAP_RESULT_NAME = "_gap"  # the last GAP message made by %%gap

# provider type -> GAP platform whose conventions a model of that provider reads best
PLATFORM_BY_PROVIDER_TYPE = {
    "openai": "chatgpt",
    "azure": "chatgpt",
    "anthropic": "claude.ai",
    "gemini": "gemini",
}


def is_embedded(url: str) -> bool:
    """Whether ``url`` names the engine in this process (``embedded://``, ``embedded``), not a gateway:
    as ``gtl_nb.connect`` reads it."""
    from gtl_nb.client import is_embedded as embedded

    return embedded(url)


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second (``2025-05-01T12:00:00Z``)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def platform_for(provider_type: str | None) -> str:
    """The GAP platform of a provider type: openai/azure -> chatgpt, anthropic -> claude.ai, gemini -> gemini,
    anything else -> generic."""
    return PLATFORM_BY_PROVIDER_TYPE.get(provider_type or "", "generic")


@dataclass
class Settings:
    """What ``%gtl config`` shows and sets."""

    model: str | None = None  # None: $GTL_NB_MODEL, then the client's default (echo)
    chat: bool = False
    stream: bool = True
    reasoning_effort: str | None = None  # None: the configuration's [defaults], else each deployment's
    endpoint: str = field(default_factory=default_endpoint)
    config_file: str | None = None  # None: $GTL_NB_CONFIG, then the user's config file


_SALT = os.urandom(16)  # the variables' values are kept as keyed digests only: nothing a log could show


@dataclass(frozen=True)
class Sources:
    """What an embedded client's configuration was read from: the environment variables the
    configuration loader reads (``engine.config.variables_read``; each value kept as a keyed digest,
    never the value) and the configuration file in use (its path, size and modification time)."""

    variables: dict[str, bytes | None]
    file: tuple[str, tuple[int, int] | None]

    @classmethod
    def now(cls, config_file: str | None) -> Sources:
        from gtl_nb.engine.config import CONFIG_ENV, user_config_path, variables_read
        from gtl_nb.providers.registry import provider_types

        names = variables_read(provider_types())
        if config_file:  # `%gtl config file=` names the file: $GTL_NB_CONFIG is not read
            names = tuple(name for name in names if name != CONFIG_ENV)
        variables = {name: _digest(os.environ.get(name)) for name in names}
        path = os.path.expanduser(config_file or os.environ.get(CONFIG_ENV) or str(user_config_path()))
        try:
            status = os.stat(path)
            stamp: tuple[int, int] | None = (status.st_size, status.st_mtime_ns)
        except OSError:
            stamp = None
        return cls(variables, (os.path.abspath(path), stamp))

    def changes(self, now: Sources) -> list[str]:
        """What differs in ``now``, in words (``$OPENAI_API_KEY``, ``the file /path/gtl.toml``)."""
        names = {**self.variables, **now.variables}
        said = [f"${name}" for name in names if self.variables.get(name) != now.variables.get(name)]
        if self.file != now.file:
            path, stamp = now.file
            edited = "edited" if path == self.file[0] and stamp is not None else "gone" if stamp is None else ""
            said.append(f"the configuration file {path}" + (f" ({edited})" if edited else ""))
        return said


def _digest(value: str | None) -> bytes | None:
    return None if value is None else _keyed(value)


def _keyed(value: str) -> bytes:
    """A keyed digest of ``value`` (a key, a token): compared between cells, never shown or kept as it is."""
    return hmac.new(_SALT, value.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


@dataclass
class NotebookSession:
    """State shared by the magics of one shell."""

    shell: Any
    settings: Settings = field(default_factory=Settings)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)  # from %gtl providers
    history: list[Message] = field(default_factory=list)  # the conversation (chat mode)
    gap_messages: list[WrappedMessage] = field(default_factory=list)  # this notebook's GAP messages
    last_result: Any = None  # what the last %%gtl cell gave: a Completion, a Comparison or an error
    _token: str | None = field(default=None, repr=False)
    _token_variable: str | None = field(default=None, repr=False)  # the variable `--token-env` read it from
    _clients: dict[str, Client] = field(default_factory=dict, repr=False)
    _built_from: dict[str, Sources] = field(default_factory=dict, repr=False)  # embedded URL -> its sources
    _token_from: dict[str, tuple[str, bytes] | None] = field(default_factory=dict, repr=False)  # gateway URL -> source
    _finished_at: dict[str, str] = field(default_factory=dict, repr=False)  # session id -> time

    # -- clients ------------------------------------------------------------------------------

    def client(self, endpoint: str | None = None) -> Client:
        """The client for ``endpoint`` (default: the configured one), connected on first use."""
        url = endpoint or self.settings.endpoint
        client = self._clients.get(url)
        changed: list[str] = []
        if client is not None and is_embedded(url):  # the engine reads its settings once: rebuilt when they change
            now = Sources.now(self.settings.config_file)
            changed = self._built_from[url].changes(now) if url in self._built_from else []
            if changed:
                self.drop_client(url)  # (between cells: nothing of it is running)
                client = None
        elif client is not None:  # a gateway's client sends the token it was made with: follow its variable
            source = self._token_source()
            if source is not None and source != self._token_from.get(url):
                changed = [source[0]]
                self.drop_client(url)
                client = None
        if client is None:
            sources = Sources.now(self.settings.config_file) if is_embedded(url) else None
            import gtl_nb

            options: dict[str, Any] = {}
            if is_embedded(url):  # a gateway serves its own deployments: the notebook's stay here for later
                if self.providers:
                    added = {name: dict(values) for name, values in self.providers.items()}
                    options["providers"] = {**added, **self._from_the_environment(added)}  # the added first
                if self.settings.config_file:
                    options["config"] = self.settings.config_file
            from gtl_nb.client import sendable_environment_token
            from gtl_nb.protocol import AuthenticationError

            if self._token_variable and not is_embedded(url):  # `--token-env VAR`: what VAR holds now
                self._token = os.environ.get(self._token_variable, "").strip() or self._token
            token = None if is_embedded(url) else self._token or sendable_environment_token()  # a gateway's only
            source = None if is_embedded(url) else self._token_source()
            try:
                client = gtl_nb.connect(url, token, **options)
            except AuthenticationError as exc:  # say whose token was refused: the variable, never the token
                if source is not None:
                    since = ", which changed since the last cell" if changed else ""
                    exc.message = f"{exc.message} (the token sent was {source[0]}'s{since})"
                raise
            self._clients[url] = client
            if sources is not None:
                self._built_from[url] = sources
            else:
                self._token_from[url] = source
            if changed:
                print(f"settings changed ({', '.join(changed)}): reconnected to {url}")
        return client

    def _from_the_environment(self, added: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The deployments the environment implies (``OPENAI_API_KEY`` …) when nothing else configures
        any: ``%gtl providers`` *adds* a deployment, so these stay beside it (given ``providers=``,
        the engine would otherwise take the notebook's as the whole list and drop them) — but never
        one of a type the notebook added a deployment of: that one is how the user wants that
        provider reached (another account, a private endpoint), and a model must not go elsewhere."""
        from gtl_nb.engine.config import load_config

        try:
            implied = load_config(config=self.settings.config_file).implied
        except ValueError:  # the file's mistake: said when the client connects
            return {}
        types_added = {str(spec.get("type") or name) for name, spec in added.items()}
        return {kind: {} for kind in implied if kind != "echo" and kind not in types_added and kind not in added}

    def set_aside(self, url: str) -> list[str]:
        """What of the notebook's own set-up a client of ``url`` does not use (a gateway's: the
        deployments added with ``%gtl providers`` and the configuration file), to say so."""
        if is_embedded(url):
            return []
        aside = []
        if self.providers:
            aside.append(f"the deployment(s) {', '.join(sorted(self.providers))} added with %gtl providers")
        if self.settings.config_file:
            aside.append(f"the configuration file {self.settings.config_file}")
        return aside

    def _token_source(self) -> tuple[str, bytes] | None:
        """The variable a gateway's token comes from and a keyed digest of what it holds now (never the
        token): the one ``%gtl connect --token-env VAR`` named, else ``$GTL_TOKEN`` / ``$GTL_NB_TOKEN``
        when no token was given. ``None`` when no variable holds one — a token typed at ``--ask-token``'s
        prompt, or a variable since unset or emptied: the token in memory stays, nothing new replaces it."""
        if self._token_variable is not None:
            value = os.environ.get(self._token_variable, "").strip()
            return (f"${self._token_variable}", _keyed(value)) if value else None
        if self._token is not None:  # from the password prompt: no variable to follow
            return None
        from gtl_nb.client import TOKEN_VARIABLES

        for name in TOKEN_VARIABLES:  # as connect reads them, first set first
            if value := os.environ.get(name, "").strip():
                return f"${name}", _keyed(value)
        return None

    @property
    def has_token(self) -> bool:
        """Whether a token was given to an earlier ``connect`` (kept in memory, used again)."""
        return self._token is not None

    def connect(self, endpoint: str, token: str | None = None, *, variable: str | None = None) -> Client:
        """Switch the notebook to ``endpoint`` (a token is kept in memory only). ``variable``: the
        environment variable ``token`` was read from, followed when it changes (``client``)."""
        old = self.settings.endpoint, self._token, self._token_variable
        self.settings.endpoint = endpoint
        if token is not None:
            self._token, self._token_variable = token, variable
        self.drop_client(endpoint)
        try:
            return self.client()
        except Exception:
            self.settings.endpoint, self._token, self._token_variable = old
            raise

    def reconnect(self) -> Client:
        """Close every client; the next use connects again with the current settings. On a gateway,
        the notebook's own set-up (``%gtl providers``, ``file=``) is checked too, by an embedded
        engine built and closed: it applies when the notebook returns to ``embedded://``, and a
        mistake there must be said now, not then (when the gateway may be gone)."""
        self.close()
        if not is_embedded(self.settings.endpoint) and (self.providers or self.settings.config_file):
            self.client("embedded://")
            self.drop_client("embedded://")
        return self.client()

    def drop_client(self, endpoint: str) -> None:
        self._built_from.pop(endpoint, None)
        self._token_from.pop(endpoint, None)
        client = self._clients.pop(endpoint, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        for url in list(self._clients):
            self.drop_client(url)

    # -- defaults -----------------------------------------------------------------------------

    def default_model(self, client: Client) -> tuple[str, str]:
        """The model for a cell that names none, and where it came from."""
        if self.settings.model:
            return self.settings.model, "%gtl config model=..."
        if os.environ.get(MODEL_ENV):
            return os.environ[MODEL_ENV], f"${MODEL_ENV}"
        return client.default_model, "configuration default"

    def provider_type_of(self, client: Client, model: str) -> str | None:
        """The provider type a request for ``model`` goes to (``None`` when it cannot be routed)."""
        from gtl_nb.protocol import GTLError

        try:
            candidates = client.route(model)
        except GTLError:
            return None
        return candidates[0][1] if candidates else None

    # -- results ------------------------------------------------------------------------------

    def remember(self, result: Any, out: str | None = None) -> None:
        """``result`` becomes ``_gtl`` (and ``out``) in the user namespace."""
        from gtl_nb.completion import Completion

        self.last_result = result
        if isinstance(result, Completion):
            self._finished_at.setdefault(result.session_id, utc_now())
        self.shell.user_ns[RESULT_NAME] = result
        if out:
            self.shell.user_ns[out] = result

    def forget_last(self, why: BaseException, out: str | None = None) -> None:
        """A ``%%gtl`` cell failed before it had an answer: ``--from-last`` has nothing to wrap now, and
        ``_gtl`` (and ``out``) is the error — never an older cell's answer, which ``_gtl.text`` would read
        without a sign. (An interrupt is no result: it leaves them as they were.)"""
        self.last_result = why
        if isinstance(why, Exception):
            self.shell.user_ns[RESULT_NAME] = why
            if out:
                self.shell.user_ns[out] = why

    @property
    def last_completion(self) -> Completion | None:
        """The last ``%%gtl`` cell's answer when it was one (``--from-last``): never an older cell's."""
        from gtl_nb.completion import Completion

        return self.last_result if isinstance(self.last_result, Completion) else None

    def finished_at(self, completion: Completion) -> str:
        """When a completion finished (its ``created_at``; now, for one that has none)."""
        if completion.created_at is not None:
            when = datetime.fromtimestamp(completion.created_at, timezone.utc).replace(microsecond=0)
            return when.isoformat().replace("+00:00", "Z")
        return self._finished_at.get(completion.session_id) or utc_now()

    def add_gap(self, wrapped: WrappedMessage, out: str | None = None) -> None:
        """Record a GAP message of this notebook as ``_gap`` (and ``out``).

        A message with the same chat id is replaced, and every notebook variable that held the old
        version now holds the new one: messages are immutable, so defining an entity makes a new
        version, and ``--context msg`` must send the one with the definitions.
        """
        for index, existing in enumerate(self.gap_messages):
            if existing.chat_id == wrapped.chat_id:
                self.gap_messages[index] = wrapped
                self.rebind(existing, wrapped)
                break
        else:
            self.gap_messages.append(wrapped)
        self.shell.user_ns[GAP_RESULT_NAME] = wrapped
        if out:
            self.shell.user_ns[out] = wrapped

    def rebind(self, old: Any, new: Any) -> None:
        """Point every user variable that holds exactly ``old`` at ``new``."""
        namespace = self.shell.user_ns
        for name in [name for name, value in namespace.items() if value is old]:
            namespace[name] = new

    def previous_in_thread(self, thread_id: str | None, exclude: str | None = None) -> str | None:
        """The chat id of the thread's last message before ``exclude`` (messages without a thread form
        one thread of their own).

        A message ``exclude`` already names is being wrapped again (a cell run again): it keeps its
        place, so its parent is the message before that place — never one wrapped after it, which
        replies to it (that would make the two each other's parent).
        """
        messages = self.gap_messages
        place = next((i for i, message in enumerate(messages) if message.chat_id == exclude), len(messages))
        for message in reversed(messages[:place]):
            if message.thread_id == thread_id:
                return message.chat_id
        return None
