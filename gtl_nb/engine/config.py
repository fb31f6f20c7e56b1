"""One configuration schema for the whole project: ``load_config`` and the ``Config`` it returns.

Sources, highest precedence first (docs/configuration.md is the user-facing description):

1. keyword arguments — ``providers={...}`` and one keyword per section (``routing={...}``, …);
2. the TOML file — ``config=`` (a path, or an already-parsed dict), else ``$GTL_NB_CONFIG``,
   else the user's config file (``user_config_path``; a missing default file is fine, a missing
   named file is an error);
3. the providers' conventional environment variables (declared on each dialect class as
   ``ProviderNeeds.env``), which fill only what is
   still missing; for ``bedrock`` the AWS chain continues with ``~/.aws/credentials`` and
   ``~/.aws/config``.

Tables merge key by key (a keyword ``routing={"strategy": "weighted"}`` changes only the
strategy). Every key is checked in each source separately, so an unknown key or a wrong type is a
``ConfigurationError`` naming the key, where it was found and the close matches.

``[routing]``, ``[cache]`` and ``[budgets]`` are validated by the engine modules that read them
(``OWNED_SECTIONS``), so their keys are defined in one place; the other sections are defined here.
``timeouts`` comes back as the engine's ``Timeouts``.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
import sys
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from gtl_nb.engine.http import Timeouts
from gtl_nb.engine.lingering import GROUP_COMMIT
from gtl_nb.engine.stores.urls import is_url_shaped, masked_url, refuse_url_for_path
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import REASONING_EFFORTS
from gtl_nb.providers.base import Deployment, ProviderNeeds, needs_of
from gtl_nb.providers.catalog import validate_overrides
from gtl_nb.providers.registry import BUILTIN_PROVIDERS, get_provider
from gtl_nb.words import a_kind_of, looks_like_variable_name

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "CONFIG_ENV",
    "CREDENTIAL_FIELDS",
    "DEPLOYMENT_KEYS",
    "OWNED_SECTIONS",
    "SECTION_SCHEMAS",
    "Config",
    "CredentialWhitespaceWarning",
    "clean_credential",
    "env_vars",
    "load_config",
    "ollama_url",
    "provider_needs",
    "user_config_dir",
    "user_config_path",
    "variables_read",
]

CONFIG_ENV = "GTL_NB_CONFIG"
CONFIG_FILE_NAME = "config.toml"
APP_DIR_NAME = "gtl_nb"

SECTIONS = (
    "providers",
    "routing",
    "cache",
    "budgets",
    "ledger",
    "gateway",
    "catalog",
    "defaults",
    "timeouts",
    "upstream",
)

DEPLOYMENT_KEYS = (
    "type",
    "api_key",
    "api_key_env",
    "base_url",
    "api_version",
    "region",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_profile",
    "model",
    "models",
    "headers",
    "options",
    "weight",
    "timeouts",
)

# What each provider type needs (environment variables, required fields, the variables that imply it)
# is declared on its dialect class (``providers.base.ProviderNeeds``); these read it.


def known_types_in_order(known: Collection[str]) -> list[str]:
    """Built-in types first (in the registry's order), then the others sorted."""
    return [t for t in BUILTIN_PROVIDERS if t in known] + sorted(set(known) - set(BUILTIN_PROVIDERS))


def provider_needs(provider_type: str) -> ProviderNeeds | None:
    """The needs the dialect of ``provider_type`` declares (``None``: unknown type or none declared)."""
    try:
        return needs_of(get_provider(provider_type))
    except ConfigurationError:
        return None


def env_vars(provider_type: str) -> Mapping[str, tuple[str, ...]]:
    """Deployment field -> environment variables tried in order, for ``provider_type``."""
    needs = provider_needs(provider_type)
    return needs.env if needs is not None else {}


_AWS_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_OLLAMA_PORT = 11434


# ----------------------------------------------------------------------------------------------
# Section schemas


@dataclass(frozen=True)
class Field:
    """One key of a section: accepted Python types, default, allowed values, description."""

    kinds: tuple[type, ...]
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any, str], None] | None = None
    secret: bool = False
    """Whether the value may be a secret (a key, a token, a header's value): an error names its kind, never it."""


def _two_slashes(value: Any, where: str) -> None:
    """Refuse a URL written with one slash after its scheme (``postgresql:/user:password@host/db``): read
    as a file's path it would make a folder named after it, the password included."""
    if is_url_shaped(value) and "://" not in value:
        scheme = value.partition(":")[0]
        raise ConfigurationError(
            f"{where}: {masked_url(value)!r} has one slash after {scheme}:; a URL is written {scheme}://…"
        )


def _str_list(value: Any, where: str) -> None:
    if not all(isinstance(item, str) for item in value):
        raise ConfigurationError(f"{where} must be a list of strings, got {value!r}")


def _seconds(value: Any, where: str) -> None:
    if value is True:
        raise ConfigurationError(f"{where} must be a number of seconds, or false to disable it")


_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))
_SECONDS = (int, float, bool, type(None))  # `false` (or None) disables a timeout

GROUP_COMMIT_MS = Field(
    _OPT_NUM,
    None,
    f"milliseconds a busy writer gathers rows into one commit (1 to 1000; default {GROUP_COMMIT * 1000:g}): "
    "longer costs less CPU per request, and is the most a SIGKILL can lose",
    check=lambda v, w: _between(v, w, 1, 1000),
)
"""``[ledger] group_commit_ms`` (``[gateway.audit]`` reads its own the same way, in ``gateway.audit``)."""

# Sections whose keys this module owns. [routing], [cache] and [budgets] belong to the engine
# modules that use them and are validated by their readers (``OWNED_SECTIONS``).
SECTION_SCHEMAS: dict[str, dict[str, Field]] = {
    "ledger": {
        "enabled": Field((bool,), True, "record every response's usage and cost"),
        "path": Field(
            _OPT_STR,
            None,
            "SQLite file (default: gtl_nb.engine.ledger.default_ledger_path())",
            check=lambda v, w: refuse_url_for_path(v, w, "a SQLite file's path (a store URL goes in [ledger] url)"),
            secret=True,  # a URL put here by mistake may hold the database's password
        ),
        "url": Field(
            _OPT_STR,
            None,
            "store URL: sqlite:///relative/path, sqlite:////absolute/path, memory:// or postgresql://…",
            check=lambda v, w: _two_slashes(v, w),
            secret=True,  # a postgresql:// URL may hold the database's password
        ),
        "retention_days": Field(
            _OPT_NUM,
            None,
            "delete finished rows older than this many days (at least 1; default: keep every row)",
            check=lambda v, w: _at_least(v, w, 1),
        ),
        "max_rows": Field(
            (int, type(None)),
            None,
            "keep at most this many rows, deleting the oldest finished ones (default: no limit)",
            check=lambda v, w: _at_least(v, w, 1),
        ),
        "group_commit_ms": GROUP_COMMIT_MS,
        "strict_durability": Field(
            (bool,),
            False,
            "PostgreSQL ledgers: a row counts as written (what the gateway's audit log waits for) only once "
            "PostgreSQL committed it, never when it is in the local spool during an outage",
        ),
        "commits": Field(
            _OPT_STR,
            None,
            "who commits the rows: loop (the event loop that queued them, waiting for nothing: less CPU "
            "under load; the default for aconnect's engine on the caller's loop) or thread (the writer's "
            "thread, overlapping the loop's waits: the default for connect's loop thread and a gateway)",
            choices=("loop", "thread", None),
        ),
    },
    "gateway": {
        "auth": Field((str,), "none", "client authentication", choices=("none", "token", "jwt")),
        "max_frame_bytes": Field(
            (int, type(None)),
            None,
            "largest accepted frame (default: the codec's)",
            check=lambda v, w: _at_least(v, w, 4096),
        ),
        "max_sessions_per_connection": Field(
            (int,), 256, "sessions one connection may run at once", check=lambda v, w: _at_least(v, w, 1)
        ),
        "max_sessions_per_principal": Field(
            (int,),
            1000,
            "sessions one principal may run at once in this gateway process (0: no cap)",
            check=lambda v, w: _at_least(v, w, 0),
        ),
        "max_connections_per_address": Field(
            (int,), 256, "open connections from one client address", check=lambda v, w: _at_least(v, w, 1)
        ),
        "max_connections": Field(
            (int,),
            0,
            "client connections the HTTP and gRPC listeners may hold at once, shared equally "
            "(0: half the file-descriptor limit)",
            check=lambda v, w: _at_least(v, w, 0),
        ),
        "header_timeout": Field(
            _NUM,
            10.0,
            "seconds a new connection has to send its request head or hello",
            check=lambda v, w: _at_least(v, w, 0.001),
        ),
        "idle_timeout": Field(
            _NUM,
            300.0,
            "seconds a connection without a running session may stay silent",
            check=lambda v, w: _at_least(v, w, 0.001),
        ),
        "write_timeout": Field(
            _NUM,
            60.0,
            "seconds a connection may leave what the gateway writes unread before it is dropped",
            check=lambda v, w: _at_least(v, w, 0.001),
        ),
        "max_unfinished_bytes": Field(
            (int,),
            256 * 1024 * 1024,
            "bytes the HTTP listener holds in WebSocket messages and request bodies still arriving",
            check=lambda v, w: _at_least(v, w, 0),
        ),
        "shutdown_grace": Field(_NUM, 30.0, "seconds running streams get to finish after SIGTERM"),
        "event_loop": Field(
            (str,),
            "auto",
            "the event loop: uvloop when installed (auto), uvloop, or asyncio",
            choices=("auto", "uvloop", "asyncio"),
        ),
        "trusted_proxies": Field(
            (list, type(None)),
            None,
            "reverse proxies (addresses or CIDR networks) whose X-Forwarded-For/-Proto are believed",
        ),
        "allowed_hosts": Field(
            (list, type(None)),
            None,
            "host names besides loopback ones that a development gateway (auth none or token) answers to",
            check=lambda v, w: _check_host_names(v, w),
        ),
        "advertise": Field(
            (dict, type(None)),
            None,
            "discovery URLs of the gRPC and QUIC listeners as clients reach them (behind a proxy)",
            check=lambda v, w: _check_advertise(v, w),
        ),
        "http": Field((dict,), None, "the HTTP/SSE/WebSocket listener", check=lambda v, w: _check_listener(v, w)),
        "grpc": Field((dict,), None, "the gRPC listener", check=lambda v, w: _check_listener(v, w)),
        "quic": Field((dict,), None, "the QUIC listener", check=lambda v, w: _check_listener(v, w)),
        # read by gateway.tokens and gateway.vault_credentials, which check their own keys (never echoing a value)
        "jwt": Field((object,), None, "GhostToken verification (docs/tokens.md)", check=lambda v, w: _table_only(v, w)),
        "vault": Field((object,), None, "the provider-key vault (docs/vault.md)", check=lambda v, w: _table_only(v, w)),
        "audit": Field((object,), None, "the audit log (docs/operations.md)", check=lambda v, w: _table_only(v, w)),
        "metrics": Field((object,), None, "GET /metrics (docs/operations.md)", check=lambda v, w: _table_only(v, w)),
        "tracing": Field(
            (object,), None, "OpenTelemetry traces (docs/operations.md)", check=lambda v, w: _table_only(v, w)
        ),
    },
    "defaults": {
        "model": Field(_OPT_STR, None, "model used when a request names none (built-in: 'echo')"),
        "provider": Field(_OPT_STR, None, "deployment used when a request names none"),
        "providers": Field((list, type(None)), None, "failover list used when a request names none", check=_str_list),
        "system": Field(_OPT_STR, None, "system prompt prepended to requests without one"),
        "temperature": Field(_OPT_NUM, None, "sampling temperature"),
        "max_tokens": Field((int, type(None)), None, "output token limit"),
        "reasoning": Field((bool,), False, "ask for reasoning events"),
        "reasoning_effort": Field(
            _OPT_STR,
            None,
            "how hard the model thinks, shown or not (none: no thinking; unset: each deployment's own)",
            choices=(*REASONING_EFFORTS, None),
        ),
        "reasoning_budget": Field(
            (int, type(None)),
            None,
            "thinking tokens the model may spend (0: none; unset: each deployment's own)",
            check=lambda v, w: _at_least(v, w, 0),
        ),
        "warn_cost_usd": Field(_OPT_NUM, None, "warn before sending a request estimated to cost more (USD)"),
    },
    "upstream": {
        "client": Field(
            (str,),
            "httptools",
            "the HTTP client for provider calls (h2: HTTP/2, many streams on one connection)",
            choices=("httptools", "aiohttp", "httpx", "h2"),
        ),
        "max_connections": Field(
            (int,), 0, "open connections to providers in all (0: no limit)", check=lambda v, w: _at_least(v, w, 0)
        ),
        "max_connections_per_host": Field(
            (int,), 0, "open connections to one provider host (0: no limit)", check=lambda v, w: _at_least(v, w, 0)
        ),
    },
    "timeouts": {
        "connect": Field(_SECONDS, 10.0, "seconds to establish a connection", check=_seconds),
        "first_byte": Field(_SECONDS, 60.0, "seconds from sending to the first body byte", check=_seconds),
        "idle": Field(_SECONDS, 60.0, "longest silence between two chunks of a stream", check=_seconds),
    },
}


LISTENER_FIELDS: dict[str, Field] = {
    "host": Field((str,), "127.0.0.1", "interface to listen on"),
    "port": Field((int,), None, "port (0: any free port)"),
    "tls_cert": Field(_OPT_STR, None, "PEM certificate chain (gtl certs writes server.pem)"),
    "tls_key": Field(_OPT_STR, None, "PEM private key of tls_cert"),
    "insecure": Field((bool,), False, "let a plaintext listener bind beyond loopback"),
}
"""The keys of ``[gateway.http]``, ``[gateway.grpc]`` and ``[gateway.quic]``."""

RETIRED_GATEWAY_KEYS: dict[str, str] = {
    "host": "listeners have their own tables now: write host under [gateway.http] (or [gateway.grpc], [gateway.quic])",
    "port": "listeners have their own tables now: write port under [gateway.http] (or [gateway.grpc], [gateway.quic])",
    "jwt_secret_env": "GhostToken settings have their own table now: write secret_env under [gateway.jwt]",
    "vault_path": "the vault has its own table now: write path under [gateway.vault]",
    "vault_key_env": "the vault has its own table now: write master_key_env under [gateway.vault]",
    "audit_log": "the audit log has its own table now: write path under [gateway.audit]",
    "cors_origins": "it was a placeholder nothing read; the gateway serves no browser origins yet",
    "metrics": "metrics have their own table now: write enabled (and require_token) under [gateway.metrics]",
    "openai_compatible": "it was a placeholder nothing read; the OpenAI-compatible endpoint is not served yet",
}
"""Keys ``[gateway]`` documented before the gateway existed, and what replaced them."""


def _at_least(value: Any, where: str, least: float) -> None:
    if value is not None and value < least:
        raise ConfigurationError(f"{where} must be at least {least:g}, got {value!r}")


def _between(value: Any, where: str, least: float, most: float) -> None:
    if value is not None and not least <= value <= most:
        raise ConfigurationError(f"{where} must be between {least:g} and {most:g}, got {value!r}")


def _check_advertise(value: Any, where: str) -> None:
    """``advertise = { grpc = "grpcs://gw.example.com:443", quic = "quic://gw.example.com:8789" }``."""
    schemes = {"grpc": ("grpc", "grpcs"), "quic": ("quic",)}
    for name, url in value.items():
        if name not in schemes:
            raise ConfigurationError(
                f"{where}.{name}: only grpc and quic are advertised "
                "(HTTP, SSE and WebSocket are offered at the Host the client sent)"
            )
        if not isinstance(url, str) or url.partition("://")[0] not in schemes[name] or not url.partition("://")[2]:
            raise ConfigurationError(f"{where}.{name} must be a URL like {schemes[name][-1]}://host:port")


# letters, digits, hyphens and dots (an IPv4 address matches too); one pass, no backtracking to speak of
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}")


def _check_host_names(value: Any, where: str) -> None:
    """``allowed_hosts = ["devbox", "gateway.test"]``: bare host names, as a ``Host`` header names them."""
    for name in value:
        if isinstance(name, str) and (name.startswith(".") or "*" in name):
            raise ConfigurationError(
                f"{where} holds {name[:100]!r}: each name is matched exactly; a domain with its subdomains "
                "(a leading dot or a *) is not taken — list each name"
            )
        if not isinstance(name, str) or not name.strip(".") or not _HOST_NAME.fullmatch(name):
            raise ConfigurationError(
                f"{where} holds {str(name)[:100]!r}: give host names only, without a scheme, port or path "
                '(allowed_hosts = ["devbox", "gateway.test"])'
            )


def _table_only(value: Any, where: str) -> None:
    """A table whose keys its reader checks; anything else is refused without quoting it (it may be a secret)."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a table, not {a_kind_of(value)}")


def _check_listener(table: Any, where: str) -> None:
    head, _, name = where.rpartition(": ")  # "[gateway] in FILE: http" -> "[gateway.http] in FILE"
    if head.startswith("[gateway]") and name:
        where = head.replace("[gateway]", f"[gateway.{name}]", 1)
    _check_table(table, LISTENER_FIELDS, where)
    if ("tls_cert" in table) != ("tls_key" in table):
        raise ConfigurationError(f"{where} needs tls_cert and tls_key together")
    port = table.get("port")
    if port is not None and not 0 <= port <= 65535:
        raise ConfigurationError(f"{where}: port must be 0..65535, got {port}")


def _check_routing(table: Mapping[str, Any], source: str) -> None:
    """``[routing]``: the strategy and its keys (engine.strategies), ``[routing.breaker]``
    (engine.breaker) and ``[routing.retry]`` (engine.retry)."""
    from gtl_nb.engine.breaker import BreakerConfig
    from gtl_nb.engine.retry import RetryPolicy
    from gtl_nb.engine.strategies import STRATEGY_KEYS, strategy_from_routing

    known = ("strategy", *STRATEGY_KEYS, "breaker", "retry", "context_fallbacks")
    for key in table:
        if key not in known:
            raise ConfigurationError(_unknown_key_message(key, f"[routing] in {source}", known))
    fallbacks = table.get("context_fallbacks", {})
    if not isinstance(fallbacks, Mapping) or not all(isinstance(v, str) for v in fallbacks.values()):
        raise ConfigurationError(
            f"[routing] context_fallbacks in {source} must map a model to a larger one "
            '(e.g. {"gpt-4o-mini" = "gpt-4.1"} or "deployment:model")'
        )
    strategy_from_routing(table, price_of=lambda _candidate: None, other_keys=("breaker", "retry", "context_fallbacks"))
    BreakerConfig.from_dict(table.get("breaker"), where=f"[routing.breaker] in {source}")
    RetryPolicy.from_dict(table.get("retry"), where=f"[routing.retry] in {source}")


def _check_cache(table: Mapping[str, Any], source: str) -> None:
    from gtl_nb.engine.cache import CacheConfig

    CacheConfig.from_dict(table, where=f"[cache] in {source}")


def _check_budgets(table: Mapping[str, Any], source: str) -> None:
    from gtl_nb.engine.ratelimit import BudgetConfig

    BudgetConfig.from_dict(table, where=f"[budgets] in {source}")


# Section -> validator(table, source) built on the engine module that reads the section.
OWNED_SECTIONS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "routing": _check_routing,
    "cache": _check_cache,
    "budgets": _check_budgets,
}


# ----------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class Config:
    """A validated configuration; treat it as read-only.

    ``ledger``, ``gateway`` and ``defaults`` have every key of ``SECTION_SCHEMAS`` (defaults filled
    in); ``routing``, ``cache`` and ``budgets`` are the merged tables as written, for their readers
    (``strategy_from_routing``, ``BreakerConfig``/``RetryPolicy.from_dict`` on ``routing["breaker"]``
    / ``routing["retry"]``, ``CacheConfig.from_dict``, ``BudgetConfig.from_dict``) to apply their
    own defaults. Deployment ``weight`` keys are merged into ``routing["weights"]``; ``weights``
    has every deployment's effective weight. Secrets live only in ``deployments`` (whose repr
    hides them)."""

    deployments: dict[str, Deployment]
    routing: dict[str, Any]
    cache: dict[str, Any]
    budgets: dict[str, Any]
    ledger: dict[str, Any]
    gateway: dict[str, Any]
    catalog: dict[str, Any]
    defaults: dict[str, Any]
    timeouts: Timeouts
    source_path: Path | None = None
    upstream: dict[str, Any] = field(default_factory=dict)
    """``[upstream]``: the HTTP client the engine calls providers with, and its pool's bounds."""
    weights: dict[str, float] = field(default_factory=dict)
    deployment_timeouts: dict[str, Timeouts] = field(default_factory=dict)
    implied: tuple[str, ...] = ()
    credential_hints: dict[str, str] = field(default_factory=dict, repr=False)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    """Each deployment's merged table as written (secrets included: never shown)."""
    home: Path = field(default_factory=Path.home, repr=False)
    known_types: frozenset[str] = field(default_factory=frozenset, repr=False)
    environ: Mapping[str, str] | None = field(default=None, repr=False)
    """The environment given to ``load_config`` (``None``: the live ``os.environ``)."""

    def rebuild_deployment(self, name: str, environ: Mapping[str, str]) -> Deployment:
        """``name`` built again from its table and the given environment (a rotated key is picked up)."""
        deployment, _hint = _build_deployment(
            name, self.specs[name], environ, self.home, set(self.known_types), warn=False
        )
        return deployment

    def credential_sources(self, name: str) -> tuple[tuple[str, ...], tuple[Path, ...]]:
        """The environment variables and files ``name``'s credentials may be read from."""
        spec = self.specs.get(name, {})
        kind = spec.get("type", name)
        variables = [v for names in env_vars(kind).values() for v in names]
        if "api_key_env" in spec:
            variables.append(spec["api_key_env"])
        files: tuple[Path, ...] = ()
        if kind == "bedrock":
            variables += _AWS_CHAIN_VARIABLES
            files = (self.home / ".aws" / "credentials", self.home / ".aws" / "config")
        return tuple(variables), files

    def deployment(self, name: str) -> Deployment:
        """The deployment called ``name``."""
        found = self.deployments.get(name)
        if found is None:
            known = ", ".join(sorted(self.deployments)) or "none"
            raise ConfigurationError(
                f"no deployment named {name!r}{_did_you_mean(name, self.deployments)}; configured: {known}"
            )
        return found

    def require_credentials(self, name: str, current: Deployment | None = None) -> Deployment:
        """The deployment called ``name``, or a ``ConfigurationError`` saying which environment
        variable (and which TOML key) to set when it lacks the credentials its type needs.
        ``current`` is the deployment with its credentials as resolved now (a rotated key)."""
        deployment = current if current is not None else self.deployment(name)
        missing = missing_credentials(deployment)
        if not missing:
            return deployment
        where = f"[providers.{name}]"
        spec = self.specs.get(name, {})
        advice = []
        for key in missing:
            if key == "api_key" and "api_key_env" in spec and "api_key" not in spec:
                # the variable it names is the only one read: the conventional one is no fallback
                advice.append(_unset_key_env(spec["api_key_env"], deployment.type, where))
            else:
                advice.append(_credential_hint(deployment.type, key, where))
        hint = self.credential_hints.get(name)
        if hint is not None and not any(hint in said for said in advice):
            advice.append(hint)
        what, how = " and ".join(missing), "; ".join(advice)
        raise ConfigurationError(f"deployment {name!r} ({deployment.type}) is missing {what}: {how}")


# ----------------------------------------------------------------------------------------------
# Loading


def load_config(
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    providers: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    known_types: Collection[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    platform: str | None = None,
    **sections: Any,
) -> Config:
    """Read, merge and validate the configuration (sources and precedence: module docstring).

    ``environ`` defaults to ``os.environ``; ``home`` (the user's home directory, for the default
    config file and ``~/.aws``) defaults to ``$HOME``; ``platform`` to ``sys.platform``.
    ``known_types`` are the provider types a deployment may name (default: the built-ins).
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    home_dir = _home(home, env, platform)
    known = set(BUILTIN_PROVIDERS) | set(known_types or ())

    file_data, source_path, file_where = _read_file(config, env, home_dir, platform)
    _validate_source(file_data, file_where)
    if source_path is not None:
        file_data = _anchored(file_data, Path(os.path.abspath(source_path.parent)))  # (abspath: no "..")

    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        where = "the keyword arguments of gtl_nb.connect"  # (load_config's too, but a user called connect)
        raise ConfigurationError(_unknown_key_message(unknown[0], where, SECTIONS))
    keyword_data = {name: _plain(value) for name, value in sections.items() if value is not None}
    if providers is not None:
        keyword_data["providers"] = _plain(providers)
    _validate_source(keyword_data, "the keyword arguments")

    merged = _merge(file_data, keyword_data)
    section_values = {name: _with_defaults(name, merged.get(name, {})) for name in SECTION_SCHEMAS}
    timeouts = _timeouts(section_values.pop("timeouts"))

    specs: dict[str, dict[str, Any]] = dict(merged.get("providers", {}))
    implied: list[str] = []
    if not specs:
        for provider_type in known_types_in_order(known):
            needs = provider_needs(provider_type)
            groups = needs.implied_by if needs is not None else ()
            if any(all(env.get(var) for var in group) for group in groups):
                specs[provider_type] = {}
                implied.append(provider_type)
    if "echo" not in specs and not any(spec.get("type") == "echo" for spec in specs.values()):
        specs["echo"] = {}
        implied.append("echo")

    deployments: dict[str, Deployment] = {}
    per_deployment_timeouts: dict[str, Timeouts] = {}
    hints: dict[str, str] = {}
    for name, spec in specs.items():
        deployment, hint = _build_deployment(name, spec, env, home_dir, known)
        deployments[name] = deployment
        if "timeouts" in spec:
            per_deployment_timeouts[name] = _timeouts({**_timeouts_dict(timeouts), **spec["timeouts"]})
        if hint:
            hints[name] = hint

    routing = dict(merged.get("routing", {}))
    declared = {name: float(spec["weight"]) for name, spec in specs.items() if "weight" in spec}
    if declared:  # deployment weights feed [routing] weights, which win where both name one
        routing["weights"] = {**declared, **routing.get("weights", {})}
    weights = {name: float(routing.get("weights", {}).get(name, 1.0)) for name in deployments}

    return Config(
        deployments=deployments,
        routing=routing,
        cache=dict(merged.get("cache", {})),
        budgets=dict(merged.get("budgets", {})),
        ledger=section_values["ledger"],
        gateway=section_values["gateway"],
        catalog=dict(merged.get("catalog", {})),
        defaults=section_values["defaults"],
        timeouts=timeouts,
        source_path=source_path,
        upstream=section_values["upstream"],
        weights=weights,
        deployment_timeouts=per_deployment_timeouts,
        implied=tuple(implied),
        credential_hints=hints,
        specs={name: dict(spec) for name, spec in specs.items()},
        home=home_dir,
        known_types=frozenset(known),
        environ=None if environ is None else dict(environ),
    )


def user_config_dir(
    *,
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
    platform: str | None = None,
) -> Path:
    """The user's gtl_nb configuration directory.

    ``$XDG_CONFIG_HOME/gtl_nb`` when that variable holds an absolute path (on every platform);
    otherwise ``~/Library/Application Support/gtl_nb`` on macOS, ``%APPDATA%\\gtl_nb`` on Windows
    and ``~/.config/gtl_nb`` elsewhere.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    plat = platform or sys.platform
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_DIR_NAME
    home_dir = _home(home, env, plat)
    if plat == "darwin":
        return home_dir / "Library" / "Application Support" / APP_DIR_NAME
    if plat.startswith(("win", "cygwin")):
        appdata = env.get("APPDATA")
        return (Path(appdata) if appdata else home_dir / "AppData" / "Roaming") / APP_DIR_NAME
    return home_dir / ".config" / APP_DIR_NAME


def user_config_path(
    *,
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
    platform: str | None = None,
) -> Path:
    """The default configuration file: ``user_config_dir() / "config.toml"``."""
    return user_config_dir(environ=environ, home=home, platform=platform) / CONFIG_FILE_NAME


# What load_config reads of the environment beside the file itself: the file's name and where the
# default one lives, then each provider type's variables (the fields they fill, the ones that imply it)
_LOCATION_VARIABLES = (CONFIG_ENV, "XDG_CONFIG_HOME", "HOME", "USERPROFILE", "APPDATA")
_AWS_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
)  # fmt: skip


def variables_read(known_types: Collection[str] | None = None) -> tuple[str, ...]:
    """The names of the environment variables ``load_config`` may read, for ``known_types`` (default:
    the built-ins): a caller that keeps a configuration compares them to know when it is out of date.
    (A variable a file names with ``api_key_env`` is read again per request by the engine's credentials.)"""
    names: dict[str, None] = dict.fromkeys(_LOCATION_VARIABLES)
    for provider_type in known_types_in_order(set(BUILTIN_PROVIDERS) | set(known_types or ())):
        needs = provider_needs(provider_type)
        if needs is None:
            continue
        names.update(dict.fromkeys(v for variables in needs.env.values() for v in variables))
        names.update(dict.fromkeys(v for group in needs.implied_by for v in group))
        if provider_type == "bedrock":
            names.update(dict.fromkeys(_AWS_CHAIN_VARIABLES))
    return tuple(names)


# ----------------------------------------------------------------------------------------------
# Reading the file


def _home(home: str | os.PathLike[str] | None, env: Mapping[str, str], platform: str | None) -> Path:
    if home is not None:
        return Path(home)
    plat = platform or sys.platform
    value = env.get("USERPROFILE") if plat.startswith("win") else None
    value = value or env.get("HOME")
    return Path(value) if value else Path.home()


def _read_file(
    config: Any, env: Mapping[str, str], home: Path, platform: str | None
) -> tuple[dict[str, Any], Path | None, str]:
    if isinstance(config, Mapping):
        return _plain(config), None, "the config dict"
    if config is not None:
        return _parse(Path(os.fspath(config)).expanduser(), required=True, named_by="config=")
    from_env = env.get(CONFIG_ENV)
    if from_env:
        return _parse(Path(from_env).expanduser(), required=True, named_by=f"${CONFIG_ENV}")
    return _parse(user_config_path(environ=env, home=home, platform=platform), required=False, named_by="")


# The file's keys that name a SQLite file: a path, or a store URL (sqlite:///relative/path)
_FILE_PATHS = (("ledger", "path"),)
_FILE_URLS = (("ledger", "url"), ("cache", "backend"), ("budgets", "backend"), ("routing", "breaker", "backend"))
_SQLITE = "sqlite:///"


def _anchored(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data``, a file's tables, with each relative SQLite file its ``_FILE_PATHS`` and ``_FILE_URLS``
    name read from ``folder`` — the file's own, as the ``[gateway]`` tables' paths are — so where a
    process starts (a service manager's working directory, ``gtl usage`` run elsewhere) never moves
    the ledger. Paths given as keyword arguments stay relative to the working directory."""
    for keys, rewrite in [*((keys, _anchored_path) for keys in _FILE_PATHS), *((k, _anchored_url) for k in _FILE_URLS)]:
        *tables, key = keys
        table: Any = data
        for name in tables:
            table = table.get(name) if isinstance(table, Mapping) else None
        if isinstance(table, dict) and isinstance(table.get(key), str):
            table[key] = rewrite(table[key], folder)
    return data


def _anchored_path(path: str, folder: Path) -> str:
    if not path or path == ":memory:" or path.startswith("~") or Path(path).is_absolute() or is_url_shaped(path):
        return path
    return str(folder / path)


def _anchored_url(url: str, folder: Path) -> str:
    if url[: len(_SQLITE)].lower() != _SQLITE:  # another store (a scheme's case is no matter)
        return url
    written = url[len(_SQLITE) :]
    path = unquote(written)
    if not path or path == ":memory:" or path.startswith(("~", "/")) or Path(path).is_absolute():  # (C:/… too)
        return url
    # the URL's path is %-encoded; a folder's name in no encoding is kept as its bytes
    return f"{url[: len(_SQLITE)]}{quote(str(folder), safe='/', errors='surrogateescape')}/{written}"


#: A configuration file larger than this is refused unread (a configuration is a few KB).
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: How deeply inline tables and arrays may nest in a configuration file (tomllib recurses).
MAX_CONFIG_DEPTH = 32


def _parse(path: Path, *, required: bool, named_by: str) -> tuple[dict[str, Any], Path | None, str]:
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigurationError(f"configuration file {str(path)!r} is larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        if required:
            message = f"configuration file {str(path)!r} (named by {named_by}) does not exist"
            raise ConfigurationError(message) from None
        return {}, None, str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read configuration file {str(path)!r}: {exc}") from None
    if _brackets_nest_deeper(text, MAX_CONFIG_DEPTH):
        raise ConfigurationError(
            f"configuration file {str(path)!r} nests tables or arrays deeper than {MAX_CONFIG_DEPTH} levels"
        )
    try:
        return tomllib.loads(text), path, str(path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from None
    except RecursionError:  # a nesting the pre-check could not see (brackets inside strings hide nothing)
        raise ConfigurationError(f"configuration file {str(path)!r} nests too deeply") from None


def _brackets_nest_deeper(text: str, limit: int) -> bool:
    """A linear, conservative check: ``{`` and ``[`` opened and not yet closed, strings ignored
    roughly (a bracket inside a string may count, which can only refuse, never let through)."""
    if text.count("{") + text.count("[") <= limit:
        return False
    depth = 0
    for char in text:
        if char in "{[":
            depth += 1
            if depth > limit:
                return True
        elif char in "}]":
            depth = max(0, depth - 1)
    return False


# ----------------------------------------------------------------------------------------------
# Validation


def _validate_source(data: Mapping[str, Any], where: str) -> None:
    """Check one source (the file, or the keyword arguments) before merging, so errors say where."""
    for name, value in data.items():
        if name not in SECTIONS:
            raise ConfigurationError(_unknown_key_message(name, f"the top level of {where}", SECTIONS))
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"[{name}] in {where} must be a table, got {type(value).__name__}")
        if name == "providers":
            for deployment, spec in value.items():
                _check_deployment(spec, f"[providers.{deployment}] in {where}")
        elif name == "catalog":
            validate_overrides(value, where=f"[catalog] in {where}")
        elif name in OWNED_SECTIONS:
            try:
                OWNED_SECTIONS[name](value, where)
            except ConfigurationError as exc:
                if f"in {where}" in exc.message:
                    raise
                raise ConfigurationError(f"{exc.message} (in {where})") from None
        else:
            if name == "gateway":
                for key in value:
                    if key in RETIRED_GATEWAY_KEYS and not isinstance(value[key], Mapping):  # metrics: now a table
                        raise ConfigurationError(
                            f"[gateway] {key} in {where} is not a key any more: {RETIRED_GATEWAY_KEYS[key]}"
                        )
            _check_table(value, SECTION_SCHEMAS[name], f"[{name}] in {where}")


def _check_table(table: Any, schema: Mapping[str, Field], where: str) -> None:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{where} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        spec = schema.get(key)
        if spec is None:
            raise ConfigurationError(_unknown_key_message(key, where, schema))
        _check_value(value, spec, f"{where}: {key}")


def _check_value(value: Any, spec: Field, where: str) -> None:
    kinds = spec.kinds
    shown = _shown(value, spec)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigurationError(f"{where} must be {_kind_names(kinds)}, got {shown}")
    if not isinstance(value, kinds):
        raise ConfigurationError(f"{where} must be {_kind_names(kinds)}, got {shown}")
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(repr(c) for c in spec.choices if c is not None)  # None is no setting (not TOML)
        raise ConfigurationError(f"{where} must be one of {allowed}, got {shown}")
    if isinstance(value, float) and value != value:  # TOML's nan: every comparison with it is false
        raise ConfigurationError(f"{where} must be a number, got nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigurationError(f"{where} must not be negative, got {shown}")
    if spec.check is not None:
        spec.check(value, where)


def _shown(value: Any, spec: Field) -> str:
    """``value`` as an error quotes it: a secret field's only by its kind (``a list``), since a key put in
    a list or a table by mistake is still the key, and errors reach logs and terminals."""
    return a_kind_of(value) if spec.secret else repr(value)


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "a table",
        type(None): "empty",
    }
    shown = [names.get(kind, kind.__name__) for kind in kinds if not (kind is int and float in kinds)]
    return " or ".join(shown)


_DEPLOYMENT_FIELDS: dict[str, Field] = {
    "type": Field((str,)),
    "api_key": Field((str,), secret=True),
    "api_key_env": Field((str,), secret=True),  # a key is pasted here for its variable's name at times
    "base_url": Field((str,)),
    "api_version": Field((str,)),
    "region": Field((str,)),
    "aws_access_key_id": Field((str,)),
    "aws_secret_access_key": Field((str,), secret=True),
    "aws_session_token": Field((str,), secret=True),
    "aws_profile": Field((str,)),
    "model": Field((str,)),
    "models": Field((list,), check=_str_list),
    "headers": Field((dict,), check=lambda v, w: _str_dict(v, w), secret=True),
    "options": Field((dict,), check=lambda v, w: _json_value(v, w)),
    "weight": Field(_NUM),
    "timeouts": Field((dict,), check=lambda v, w: _check_table(v, SECTION_SCHEMAS["timeouts"], w)),
}


def _json_value(value: Any, where: str, depth: int = 0) -> None:
    """Provider options go into request bodies (``extra_body``): only what JSON carries as it is —
    strings, finite numbers, booleans, null, arrays and tables with string keys. A TOML date, ``nan`` or
    ``inf`` would be sent as something else (a string, ``null``) or refused by the provider."""
    if depth > 32:
        raise ConfigurationError(f"{where} nests deeper than 32 levels")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigurationError(f"{where} is {value}: a provider option must be a finite number")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigurationError(f"{where} has a key that is not a string: {key!r}")
            _json_value(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _json_value(item, f"{where}[{index}]", depth + 1)
        return
    raise ConfigurationError(
        f"{where} is {a_kind_of(value)}: a provider option must be a string, number, boolean, array or table"
    )


def _str_dict(value: Mapping[str, Any], where: str) -> None:
    """Header names to strings; an error names the header, never a value (a header may carry a key)."""
    for header, text in value.items():
        if not isinstance(text, str):
            raise ConfigurationError(
                f"{where} must map header names to strings; header {header!r} holds {a_kind_of(text)}"
            )


def _check_deployment(spec: Any, where: str) -> None:
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where} must be a table of deployment settings, got {type(spec).__name__}")
    _check_table(spec, _DEPLOYMENT_FIELDS, where)


def _unknown_key_message(key: str, where: str, known: Collection[str]) -> str:
    return f"unknown key {key!r} in {where}{_did_you_mean(key, known)} (known: {', '.join(sorted(known))})"


def _did_you_mean(name: str, known: Collection[str]) -> str:
    matches = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


# ----------------------------------------------------------------------------------------------
# Merging and defaults


def _plain(value: Any) -> Any:
    """Deep copy into plain dicts and lists (dataclass sections such as ``Timeouts`` become dicts)."""
    if isinstance(value, Timeouts):
        return _timeouts_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, tables merged key by key, anything else replaced."""
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_defaults(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    schema = SECTION_SCHEMAS[section]
    filled = {key: _plain(spec.default) for key, spec in schema.items()}
    filled.update(values)
    return filled


def _unset_key_variable(variable: str, where: str) -> str:
    """What to say of ``api_key_env`` naming a variable that is not set: its name when it has a name's
    shape; otherwise not even that — it may be the key itself, pasted where its variable's name belongs."""
    if looks_like_variable_name(variable):
        return f"{where} names ${variable}, which is not set"
    return (
        f"{where} names no variable that is set; its value is not quoted, as it is not capital letters, digits "
        "and _ only and may be the key itself (put the key in an environment variable and name that)"
    )


def _unset_key_env(variable: Any, provider_type: str, where: str) -> str:
    """How to give a deployment whose ``api_key_env`` names an unset variable its key: that variable, or
    ``api_key`` — never the type's conventional variable, which ``api_key_env`` puts out of use."""
    said = _unset_key_variable(str(variable), f"api_key_env in {where}")
    conventional = " or ".join(env_vars(provider_type).get("api_key", ()))
    instead = f" ({conventional} is not read in its place)" if conventional else ""
    if looks_like_variable_name(str(variable)):
        return f"{said}: set it, or api_key in {where}{instead}"
    return f"{said}; or set api_key in {where}{instead}"


def _timeouts(values: Mapping[str, Any]) -> Timeouts:
    def seconds(key: str) -> float | None:
        value = values.get(key, SECTION_SCHEMAS["timeouts"][key].default)
        if value is None or value is False:
            return None  # `false` disables a timeout
        return float(value)

    return Timeouts(connect=seconds("connect"), first_byte=seconds("first_byte"), idle=seconds("idle"))


def _timeouts_dict(timeouts: Timeouts) -> dict[str, Any]:
    return {"connect": timeouts.connect, "first_byte": timeouts.first_byte, "idle": timeouts.idle}


# ----------------------------------------------------------------------------------------------
# Deployments and credentials


def _build_deployment(
    name: str, spec: Mapping[str, Any], env: Mapping[str, str], home: Path, known: set[str], *, warn: bool = True
) -> tuple[Deployment, str | None]:
    provider_type = spec.get("type", name)
    if provider_type not in known:
        if "type" in spec:
            raise ConfigurationError(
                f"unknown provider type {provider_type!r} in [providers.{name}]"
                f"{_did_you_mean(provider_type, known)} (known: {', '.join(sorted(known))})"
            )
        raise ConfigurationError(
            f"[providers.{name}] needs a type (its name is not a provider type{_did_you_mean(name, known)}): "
            f'add type = "<type>" (known types: {", ".join(sorted(known))})'
        )
    values: dict[str, Any] = {key: spec[key] for key in spec if key in Deployment.__dataclass_fields__}
    # where each value came from, so a bad credential is reported by its source, never by its value
    sources = {key: f"{key} in [providers.{name}]" for key in values}
    hint = None
    if "api_key" not in values and "api_key_env" in spec:
        variable = spec["api_key_env"]
        if env.get(variable):
            values["api_key"] = env[variable]
            sources["api_key"] = f"${variable} (named by api_key_env in [providers.{name}])"
        else:
            hint = _unset_key_variable(variable, f"api_key_env in [providers.{name}]")
    for field_name, variables in env_vars(provider_type).items():
        if values.get(field_name) or (field_name == "api_key" and "api_key_env" in spec):
            continue
        found = next((v for v in variables if env.get(v)), None)
        if found is not None:
            values[field_name] = env[found]
            sources[field_name] = f"${found}"
    if isinstance(values.get("base_url"), str):
        # (surrounding whitespace is no part of a URL, and would make every request unsendable)
        values["base_url"] = values["base_url"].strip() or None  # "": the provider's default, as unset
    if provider_type == "ollama" and values.get("base_url"):
        values["base_url"] = ollama_url(values["base_url"], sources["base_url"])
    if values.get("base_url"):
        # (Ollama's host is taken as Ollama takes OLLAMA_HOST: only credentials in it are refused)
        _check_base_url(values["base_url"], sources["base_url"], as_url=provider_type != "ollama")
    if provider_type == "bedrock":
        aws_values, aws_sources, aws_hint = _aws_credentials(spec, values, env, home)
        values.update(aws_values)
        sources.update(aws_sources)
        hint = hint or aws_hint
    for key in CREDENTIAL_FIELDS:
        if isinstance(values.get(key), str):
            values[key] = clean_credential(values[key], sources[key], warn=warn) or None
    if values.get("headers"):
        values["headers"] = {
            header: clean_credential(text, f"header {header!r} in [providers.{name}]", warn=warn)
            for header, text in values["headers"].items()
        }
    values["models"] = tuple(values.get("models", ()))
    values["headers"] = dict(values.get("headers", {}))
    values["options"] = dict(values.get("options", {}))
    values.pop("type", None)
    return Deployment(name=name, type=provider_type, **values), hint


def _check_base_url(url: str, source: str, *, as_url: bool = True) -> None:
    """Refuse, when the configuration loads, a ``base_url`` no request could be sent to: credentials in it
    (``user:password@``: gtl_nb never sends a secret in a URL, and every request would fail as the
    caller's mistake), or — ``as_url`` — a URL that is not ``http(s)://`` with a host and a valid port.
    The URL is never quoted (its password)."""
    try:
        parts = urlsplit(url)
        if as_url:
            parts.port  # noqa: B018 - (a port out of range or not a number raises here)
    except ValueError:
        raise ConfigurationError(f"{source} is not a URL (an invalid port or address)") from None
    if "@" in parts.netloc:  # (user, password or both)
        raise ConfigurationError(
            f"{source} carries credentials (user:password@), which gtl_nb never sends in a URL: put the "
            "provider's key in api_key or api_key_env, or an authorization header in headers"
        )
    if as_url and (parts.scheme.lower() not in ("http", "https") or not parts.hostname):
        raise ConfigurationError(f"{source} must be an http:// or https:// URL with a host")


def ollama_url(value: str, source: str = "OLLAMA_HOST") -> str:
    """``OLLAMA_HOST`` (or an Ollama deployment's ``base_url``, named by ``source``) as a base URL, read as
    Ollama reads it: ``host``, ``host:port``, ``:port`` (the local machine), an IPv6 address alone
    (``::1``) or in brackets with a port (``[::1]:11434``), or ``http(s)://`` any of those, with a path.
    Without a scheme it is ``http`` and the port 11434 (``ollama.com`` alone: ``https://ollama.com``);
    ``http://`` without a port is port 80, ``https://`` 443, as for Ollama's own command. Anything else —
    another scheme, a port that is no port, an unbracketed IPv6 address with a port, a host with spaces
    — is a ``ConfigurationError`` that says what Ollama takes. A value with ``user:password@`` is left for
    ``_check_base_url`` to refuse, never quoted. Every step is a plain string operation (linear time)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigurationError(f"{source}: Ollama is reached over http:// or https://, {_not_this(scheme)}")
        default_port = 80 if scheme == "http" else 443
    else:
        if text.lower() == "ollama.com":  # (Ollama's own shorthand for its cloud)
            return "https://ollama.com:443"
        scheme, rest, default_port = "http", text, _OLLAMA_PORT
    authority, slash, path = rest.partition("/")
    path = (slash + path).rstrip("/")
    if "@" in authority:  # credentials: ``_check_base_url`` refuses them without quoting the value
        return f"{scheme}://{authority}{path}"
    host, port = _ollama_host_and_port(authority, source)
    return f"{scheme}://{host}:{_ollama_port(port, default_port, source)}{path}"


_OLLAMA_FORMS = "host, host:port, :port, [IPv6]:port or http(s)://host:port"
_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def _not_this(text: str) -> str:
    """``not 'text'`` for a message, cut short (the value is the operator's, but may be long)."""
    return f"not {text[:60] + '…' if len(text) > 60 else text!r}"


def _ollama_host_and_port(authority: str, source: str) -> tuple[str, str | None]:
    """An Ollama host's ``host`` (IPv6 in brackets; the local machine for none) and its port as written
    (``None``: none)."""
    if authority.startswith("["):
        inside, closed, after = authority[1:].partition("]")
        if not closed or (after and not after.startswith(":")):
            raise ConfigurationError(
                f"{source}: an IPv6 address is written in brackets, then an optional :port "
                f"([::1]:11434), {_not_this(authority)}"
            )
        return _ipv6(inside, authority, source), after[1:] if after else None
    if authority.count(":") > 1:  # an IPv6 address alone (``::1``), as Ollama takes it
        if not _is_ipv6(authority):
            raise ConfigurationError(
                f"{source}: an IPv6 address with a port is written in brackets ([::1]:11434), {_not_this(authority)}"
            )
        return _ipv6(authority, authority, source), None
    host, colon, port = authority.partition(":")
    if host and not set(host) <= _HOST_CHARACTERS:
        raise ConfigurationError(f"{source}: Ollama's host is {_OLLAMA_FORMS}, {_not_this(authority)}")
    return host or "127.0.0.1", port if colon else None  # (``:11434``: this machine, as Ollama reads it)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _ipv6(address: str, written: str, source: str) -> str:
    if not _is_ipv6(address):
        raise ConfigurationError(f"{source}: {_not_this(written)[4:]} holds no IPv6 address between its brackets")
    return f"[{ipaddress.IPv6Address(address).compressed}]"


def _ollama_port(port: str | None, default: int, source: str) -> int:
    """The port written (``None`` or empty: ``default``, as Ollama takes ``host:``), or a ``ConfigurationError``."""
    if not port:
        return default
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535):
        raise ConfigurationError(f"{source}: the port is a number from 1 to 65535, {_not_this(port)}")
    return int(port)


#: Deployment fields that hold secrets: checked when configured (``clean_credential``), never shown.
CREDENTIAL_FIELDS = ("api_key", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def clean_credential(value: str, source: str, *, warn: bool = True) -> str:
    """A credential as it can travel in an HTTP header, or a ``ConfigurationError`` naming its source.

    Surrounding whitespace (a key file's trailing newline) is removed with a warning; any other
    character outside visible ASCII cannot go in a header and is refused. The value itself is never
    quoted: not in the warning, not in the error.
    """
    stripped = value.strip()
    if stripped != value and warn:  # said once, when the configuration loads; not at every re-read
        warnings.warn(
            f"{source}: removed whitespace around the credential (a trailing newline from a key file?)",
            CredentialWhitespaceWarning,
            stacklevel=4,
        )
    bad = next((i for i, ch in enumerate(stripped) if not " " <= ch <= "~"), None)
    if bad is not None:
        kind = "a non-ASCII character" if ord(stripped[bad]) > 127 else "a control character"
        raise ConfigurationError(
            f"{source} contains {kind} at position {bad + 1} of {len(stripped)}, which cannot be sent in an "
            "HTTP header; copy the credential again from the provider's console"
        )
    return stripped


class CredentialWhitespaceWarning(UserWarning):
    """A configured credential had whitespace around it, which was removed."""


def _aws_credentials(
    spec: Mapping[str, Any], values: Mapping[str, Any], env: Mapping[str, str], home: Path
) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """Fill bedrock credentials and region: explicit keys, then (unless ``aws_profile`` is set
    explicitly) AWS_* variables, then the shared credentials/config files for the profile.
    Returns the values, where each came from, and a hint when the chain found nothing."""
    out: dict[str, Any] = {}
    sources: dict[str, str] = {}
    explicit_profile = spec.get("aws_profile")
    profile = explicit_profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    has_keys = bool(spec.get("aws_access_key_id") and spec.get("aws_secret_access_key"))
    hint = None
    if not has_keys:
        if not explicit_profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            out["aws_access_key_id"] = env["AWS_ACCESS_KEY_ID"]
            out["aws_secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
            out["aws_session_token"] = env.get("AWS_SESSION_TOKEN") or None
            sources.update({key: f"${key.upper()}" for key in _AWS_KEYS})
        else:
            keys = _profile_keys(profile, env, home)
            if keys.get("aws_access_key_id") and keys.get("aws_secret_access_key"):
                out.update(keys)
                sources.update({key: f"{key} of AWS profile {profile!r}" for key in keys})
            elif explicit_profile or env.get("AWS_PROFILE"):
                hint = (
                    f"AWS profile {profile!r} has no aws_access_key_id/aws_secret_access_key in the "
                    "shared credentials files (SSO and role profiles are not supported)"
                )
    if not values.get("region"):
        region = _profile_region(profile, env, home)
        if region:
            out["region"] = region
    return out, sources, hint


def _shared_file(env: Mapping[str, str], variable: str, default: str, home: Path) -> Path:
    value = env.get(variable)
    if not value:
        return home / ".aws" / default
    if value.startswith("~"):
        return home / value[1:].lstrip("/\\")
    return Path(value)


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except FileNotFoundError:
        pass
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"cannot read AWS file {str(path)!r}: byte {exc.start} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read AWS file {str(path)!r}: {exc.strerror or type(exc).__name__}") from None
    except configparser.Error as exc:
        raise ConfigurationError(f"cannot read AWS file {str(path)!r}: {_ini_problem(exc)}") from None
    return parser


def _ini_problem(exc: configparser.Error) -> str:
    """What is wrong in an AWS file, by line number and kind only: configparser's own message quotes the
    offending line, and a line of ~/.aws/credentials is likely to hold a secret key."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno} comes before any [section] header (a profile's keys go under [profile-name])"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno} repeats a [section] header given earlier in the file"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno} sets a key its section already sets"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors[:5])
        more = f" and {len(exc.errors) - 5} more" if len(exc.errors) > 5 else ""
        plural = "s" if len(exc.errors) > 1 else ""
        return f"line{plural} {lines}{more} cannot be read: each line must be a [section] header or key = value"
    return f"it is not a valid INI file ({type(exc).__name__})"


def _profile_section(parser: configparser.ConfigParser, profile: str, *, config_file: bool) -> dict[str, str]:
    names = [f"profile {profile}", profile] if config_file else [profile]
    for section in names:
        if parser.has_section(section):
            return dict(parser.items(section))
    return {}


def _profile_keys(profile: str, env: Mapping[str, str], home: Path) -> dict[str, Any]:
    credentials = _read_ini(_shared_file(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials", home))
    section = _profile_section(credentials, profile, config_file=False)
    if not section.get("aws_access_key_id"):
        config = _read_ini(_shared_file(env, "AWS_CONFIG_FILE", "config", home))
        section = _profile_section(config, profile, config_file=True)
    return {key: section[key] for key in _AWS_KEYS if section.get(key)}


def _profile_region(profile: str, env: Mapping[str, str], home: Path) -> str | None:
    config = _read_ini(_shared_file(env, "AWS_CONFIG_FILE", "config", home))
    return _profile_section(config, profile, config_file=True).get("region") or None


def missing_credentials(deployment: Deployment) -> list[str]:
    """The names of the requirements ``deployment`` does not meet (its dialect's ``ProviderNeeds``)."""
    needs = provider_needs(deployment.type)
    if needs is None:
        return []  # a plugin type that declares nothing: it cannot be checked
    return [
        requirement.name
        for requirement in needs.requires
        if not any(all(_has(deployment, field_name) for field_name in group) for group in requirement.any_of)
    ]


def _has(deployment: Deployment, field_name: str) -> bool:
    """Whether ``deployment`` sets ``field_name``: a field, or ``options.KEY`` (a key of its options)."""
    if field_name.startswith("options."):
        return bool(deployment.options.get(field_name.removeprefix("options.")))
    return bool(getattr(deployment, field_name, None))


def _credential_hint(provider_type: str, key: str, where: str) -> str:
    needs = provider_needs(provider_type)
    requirement = next((r for r in needs.requires if r.name == key), None) if needs is not None else None
    if requirement is not None and requirement.hint:
        return requirement.hint.format(where=where)
    variables = " or ".join(env_vars(provider_type).get(key, ()))
    toml = f"{key} (or api_key_env)" if key == "api_key" else key
    return f"set {variables}, or {toml} in {where}" if variables else f"set {toml} in {where}"
