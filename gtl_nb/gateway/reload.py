"""Reloading a running gateway's configuration without a restart (SIGHUP, ``gtl reload``).

``Reloader.prepare()`` re-reads the file the gateway was started with and builds everything the new
configuration needs — settings, catalog, credentials and, with ``auth = "jwt"``, a new
``TokenAuthenticator`` — raising ``ConfigurationError`` before anything changed. ``Reloader.apply()``
then swaps it all in one synchronous step on the event loop: ``Engine.reload`` (deployments, routing,
prices, timeouts, budget limits, credentials) and the target of the ``SwappableAuthenticator`` the
listeners hold, so the next connection's token is checked by the new policy. The reload's line names
exactly what changed in place (``gateway.reload_changes``): a part that did not change is not named.

The new authenticator keeps the running revocation list when ``[gateway.jwt] revocations`` names the
same one (a Redis list takes the new ``refresh``): a reload while Redis is down keeps answering from
the set read before, where a new list could read nothing and would refuse every token. A
``revocations`` that names a new Redis list which cannot be read yet leaves the whole token policy as
it was, and the reload's line says so ("token policy not renewed"); the rest is applied.

Sessions already running finish on the deployments they resolved when they started; connections
already authenticated keep their context, but for what a new token policy takes away: a retired key or
secret refuses them, and deployments taken out of ``default_deployments`` are taken from their next
completion and query (``TokenAuthenticator.recheck``). What a reload cannot change in place — the listener
tables, the ``[gateway]`` limits (``max_frame_bytes``, ``trusted_proxies``, …), the event loop and
``advertise``, the ledger and the other stores' backends, the HTTP client of ``[upstream]``, the audit
log, ``/metrics``, the vault — is reported in the reload's line as "restart to apply", the rest being
applied (``gtl reload`` exits 3: taken in part). Those tables are first checked as a start checks them
(``gateway.restart_checks``): a change a start would refuse refuses the whole reload, so the restart
the line advises never meets a file it refuses. A change of the auth mode refuses the whole reload: the
rest of the file may count on it (a deployment added for callers who now need a token)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.credentials import StaticCredentials
from gtl_nb.engine.settings import Settings, load_settings
from gtl_nb.gateway.auth import (
    build_authenticator,
    build_credentials,
    close_revocations,
    configured_fallback,
    kept_revocations,
)
from gtl_nb.gateway.reload_changes import applied_changes, policy_changes
from gtl_nb.gateway.restart_checks import check_restart_tables
from gtl_nb.gateway.sessions import Authenticate
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["FAIL_OVER_NOTE", "PreparedReload", "Reloader", "SwappableAuthenticator", "secret_env_note"]


FAIL_OVER_NOTE = "requests routed to it fail over, but for a key their token chooses"
"""What becomes of requests for a deployment without credentials (a token's ``provider_keys`` still work)."""


class SwappableAuthenticator:
    """The ``authenticate`` hook the listeners hold: it calls ``target``, which a reload replaces.

    The listeners keep this one object for their lifetime, so a new token policy reaches every
    listener by one assignment; a check already running finishes with the authenticator it started on.
    """

    def __init__(self, target: Authenticate) -> None:
        self.target = target

    def __call__(self, token: str | None) -> RequestContext:
        return self.target(token)

    def recheck(self, context: RequestContext) -> RequestContext:
        """Ask the current authenticator again about an open connection's context (when it can): the
        context to use now (``sessions.Authenticate``)."""
        recheck = getattr(self.target, "recheck", None)
        return context if recheck is None else recheck(context)

    def swap(self, target: Authenticate) -> Authenticate:
        """Make ``target`` check the next tokens; returns the one it replaces."""
        previous, self.target = self.target, target
        return previous

    def __repr__(self) -> str:
        return f"SwappableAuthenticator({self.target!r})"


@dataclass(frozen=True)
class PreparedReload:
    """A validated new configuration, built and ready to apply (``Reloader.prepare``)."""

    settings: Settings
    options: GatewaySettings
    catalog: Any
    credentials: Any
    authenticate: Authenticate | None
    """The new token checker (``auth = "jwt"`` both before and after), else ``None``: unchanged."""
    restart: tuple[str, ...]
    """The tables that changed but apply only at a restart."""
    not_renewed: str | None = None
    """Why the token policy was not renewed (its new revocation list cannot be read), else ``None``."""
    token_changes: tuple[str, ...] = ()
    """The ``[gateway.jwt]`` keys in which the new token policy differs from the running one."""


def _catalog(settings: Settings) -> Any:
    from gtl_nb.providers.catalog import Catalog

    catalog = Catalog.default()
    return catalog.with_overrides(settings.catalog_overrides) if settings.catalog_overrides else catalog


def _fixed_tables(settings: Settings, options: GatewaySettings) -> dict[str, Any]:
    """What a reload cannot change in place, by the name its line gives it."""
    listeners = {listener.transport: listener for listener in options.listeners}
    tables: dict[str, Any] = {f"[gateway.{name}]": listener for name, listener in sorted(listeners.items())}
    budgets = settings.budgets
    tables.update(
        {
            "[gateway] auth": options.auth,
            # the limits are keys of [gateway] itself (max_frame_bytes, trusted_proxies, …): each by its name
            **{f"[gateway] {limit.name}": getattr(options.limits, limit.name) for limit in fields(options.limits)},
            "[gateway] shutdown_grace": options.shutdown_grace,
            # the loop runs the whole process, and discovery offers what the listeners were started with
            "[gateway] event_loop": options.event_loop,
            "[gateway] advertise": dict(options.advertise),
            "[gateway.audit]": options.audit,
            "[gateway.metrics]": options.metrics,
            "[gateway.tracing]": options.tracing,
            "[gateway.vault]": options.vault,
            "[ledger]": settings.ledger,
            "[cache]": settings.cache,
            "[budgets] backend": budgets.backend if budgets is not None else None,
            "[routing.breaker] backend": settings.routing.breaker.backend,
            "[upstream]": settings.upstream,  # the HTTP client and its pool, made at start
        }
    )
    return tables


class Reloader:
    """Reloads one gateway's configuration (see the module docstring).

    ``config`` is the ``--config`` the gateway was started with (``None``: found again as at start),
    ``settings`` what it was started with, ``authenticate`` the swappable hook its listeners hold.
    """

    def __init__(
        self,
        engine: Any,
        *,
        config: str | os.PathLike[str] | None,
        settings: Settings,
        authenticate: SwappableAuthenticator,
        principal: str | None = None,
        load: Callable[..., Settings] = load_settings,
    ) -> None:
        self.engine = engine
        self.config = config
        self.settings = settings
        self.options = GatewaySettings.from_settings(settings)  # as the file says: the command line's listeners aside
        # what runs until a restart: later reloads compare with it, not with a file that was never applied
        self._fixed = _fixed_tables(settings, self.options)
        self.authenticate = authenticate
        self.principal = principal
        self._load = load

    def prepare(self) -> PreparedReload:
        """Read and validate the configuration, building every part; ``ConfigurationError`` on any mistake.

        Touches nothing that runs (file reads and builds only), so it may run in a worker thread."""
        try:
            settings = self._load(config=self.config)
        except OSError as exc:
            raise ConfigurationError(f"cannot read the configuration: {exc.strerror or exc}") from None
        options = GatewaySettings.from_settings(settings)
        if options.auth != self.options.auth:
            raise ConfigurationError(_auth_needs_restart(self.options.auth, options.auth))
        catalog = _catalog(settings)
        # the vault is opened once (not reloadable): the open one is rebound to the new file's fallback
        # credentials, so a deployment the reload adds finds its key as a new start would
        if self.options.vault is None:
            credentials = build_credentials(settings, options)
        else:
            fallback = configured_fallback(settings) or StaticCredentials()
            credentials = self.engine.credentials.rebound(fallback, deployments=settings.deployments)
        authenticate, not_renewed, token_changes = None, None, ()
        if options.auth == "jwt" and self.options.auth == "jwt":
            current = self.authenticate.target
            # the same revocation list is kept (``kept_revocations``): one that Redis cannot give now
            # would refuse every token until it answers, so a new one that cannot be read is not taken
            authenticate = build_authenticator(settings, options, principal=self.principal, current=current)
            not_renewed = _unread_revocations(authenticate, current)
            if not_renewed is not None:
                close_revocations(authenticate.revocations)  # type: ignore[attr-defined]
                authenticate = None
            else:  # (built anew either way; the line names only what differs)
                policy = getattr(authenticate, "policy", None)
                token_changes = tuple(policy_changes(getattr(current, "policy", None), policy))
        before, after = self._fixed, _fixed_tables(settings, options)
        restart = tuple(name for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name))
        try:  # "restart to apply" must not send the operator to a start that refuses the file
            check_restart_tables(settings, options, restart)
        except BaseException:
            if authenticate is not None and authenticate is not self.authenticate.target:
                self.discard(PreparedReload(settings, options, catalog, credentials, authenticate, restart))
            raise
        return PreparedReload(
            settings, options, catalog, credentials, authenticate, restart, not_renewed, token_changes
        )

    def apply(self, prepared: PreparedReload) -> str:
        """Swap ``prepared`` in (synchronously, between requests); returns the line that says what changed."""
        old = self.settings
        # the engine validates its part before changing anything; the token checker can no longer fail
        try:
            self.engine.reload(prepared.settings, catalog=prepared.catalog, credentials=prepared.credentials)
        except BaseException:
            self.discard(prepared)
            raise
        if prepared.authenticate is not None:
            previous = self.authenticate.swap(prepared.authenticate)
            _hand_over_revocations(previous, prepared.authenticate)
        self.settings = prepared.settings
        changes = applied_changes(old, prepared.settings, token_policy=prepared.token_changes)
        line = f"reloaded the configuration: {changes}"
        if prepared.not_renewed is not None:
            line += f"; token policy not renewed, the previous one still checks tokens: {prepared.not_renewed}"
        if prepared.restart:
            line += f"; changed but not reloadable, restart to apply: {', '.join(prepared.restart)}"
        for problem in prepared.settings.missing_credentials(self.engine.credentials.resolve):
            line += f"; warning: {problem} ({FAIL_OVER_NOTE})"
        note = secret_env_note(prepared.options) if "secret" not in prepared.token_changes else None
        if note is not None:
            line += f"; {note}"
        return line

    def discard(self, prepared: PreparedReload) -> None:
        """Let go of what ``prepare`` built for a reload that is not applied (a new revocation list's watcher)."""
        new = getattr(prepared.authenticate, "revocations", None)
        if new is not None and new is not getattr(self.authenticate.target, "revocations", None):
            close_revocations(new)

    def reload(self) -> str:
        """``prepare`` then ``apply`` (for callers already off the event loop's hot path)."""
        return self.apply(self.prepare())


def secret_env_note(options: GatewaySettings) -> str | None:
    """What a reload says when ``[gateway.jwt] secret_env`` names the HS256 secret: a process's environment
    never changes, so the reload re-reads the value the gateway started with — a new secret put in the
    variable (an env file, after a leak) takes a restart, which a reload line reporting "no change" must
    not hide. ``None`` when the secret is not read from the environment. (Not said of a reload that
    did find a new value there: only a process whose own environment was changed, as an embedder's
    or a test's can be, finds one.)"""
    if options.auth != "jwt":
        return None
    name = (options.jwt or {}).get("secret_env")
    if not isinstance(name, str) or not name:
        return None
    return (
        f"[gateway.jwt] secret_env is read at start: restart to apply a new value of ${name} "
        "(a secret_file is read again at each reload)"
    )


def _auth_needs_restart(running: str, asked: str) -> str:
    """Why a reload that changes the ``auth`` mode is refused whole: who may connect is decided when the
    listeners start, and the rest of the file was written for the new mode (deployments, budgets and
    token defaults meant for checked callers) — applied without it, they would serve every caller."""
    return (
        f'[gateway] auth changes from "{running}" to "{asked}", which a running gateway cannot apply (who may '
        "connect is set when its listeners start), and the rest of the file may count on it, so nothing was "
        "reloaded: restart the gateway to apply the file"
    )


def _unread_revocations(new: Any, current: Any) -> str | None:
    """Why ``new``'s revocation list cannot serve (a new Redis list that could not be read), else ``None``."""
    revocations = getattr(new, "revocations", None)
    if revocations is None or getattr(revocations, "loaded", True):
        return None
    if revocations is kept_revocations(new.policy, current):  # never read, as before the reload: no worse
        return None
    problem = getattr(revocations, "problem", None) or "it could not be read"
    return (
        f"[gateway.jwt] revocations names a new revocation list, not read yet ({problem}); reload again once it answers"
    )


def _hand_over_revocations(previous: Any, new: Any) -> None:
    """After a swap: a kept revocation list takes the new ``refresh``; one no longer used is closed."""
    old_list, new_list = getattr(previous, "revocations", None), getattr(new, "revocations", None)
    if old_list is None or new_list is None:
        return
    if new_list is not old_list:
        close_revocations(old_list)
    elif hasattr(new_list, "refresh") and new_list.refresh != new.policy.refresh:
        new_list.refresh = new.policy.refresh
