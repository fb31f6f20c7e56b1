"""The gateway's Prometheus metrics, fed by the engine's hooks and served at ``GET /metrics``.

Everything lives in the ``Metrics`` object's own ``CollectorRegistry`` (never the process-wide one,
so two gateways — or two tests — in one process never share a counter):

=================================== ========================== =============================================
metric                              labels                     meaning
=================================== ========================== =============================================
``gtl_requests_total``              provider, model, status    finished requests (ok, error, cancelled)
``gtl_errors_total``                code                       finished requests that ended with that GTL code
``gtl_request_duration_seconds``    provider, model            histogram: start to end of each request
``gtl_time_to_first_token_seconds`` provider, model            histogram: start to the first content
``gtl_tokens_total``                provider, model, direction tokens sent (``in``) and received (``out``)
``gtl_prompt_cache_tokens_total``   provider, model, kind      input tokens read from / written to a prompt cache
``gtl_cost_usd_total``              provider, model            what the requests cost, in US dollars
``gtl_breaker_state``               deployment                 0 closed, 1 half-open, 2 open
``gtl_open_sessions``               transport                  sessions running now, per transport
``gtl_retries_total``               provider                   retries of the same deployment
``gtl_failovers_total``             from_provider, to_provider moves to another deployment
``gtl_cache_hits_total``            provider                   answers replayed from the response cache
``gtl_store_degraded``              store                      1 while a shared store is away (``/readyz``
                                                               says why), else 0; one of ``STORES``
``gtl_gc_pause_seconds``            generation                 histogram: each garbage collection's pause
                                                               (0, 1, 2; ``gateway.gc_pauses``), from
                                                               ``attach`` to ``detach``
``gtl_token_refusals_total``        reason                     tokens the gateway refused (``counting_refusals``):
                                                               a GhostToken's fixed reason word, ``refused``
                                                               for a development gateway's
=================================== ========================== =============================================

``provider`` is the deployment's name — GTL's ``provider`` field, as in ``done`` and the ledger.
**Labels are bounded**: a provider value is a configured deployment, a model value one the deployment
lists or the catalog knows for its provider type, a transport one of ``TRANSPORTS``, a code one of
the protocol's; anything else is ``other`` (``none`` where there is no value: a request refused
before routing). So a client naming a thousand random models adds no series, and no label carries a
principal, a token, a key or any text of a request: per-principal figures are in the usage ledger.

One way past the lists, bounded too: a model the deployment answered a request for (status ``ok``)
gets its own label even when no list has it — a model pulled on the Ollama deployment that takes any
name, a dated id the provider answers under (``gpt-4o-mini-2024-07-18``), a fine-tune — so a real
model is never hidden in ``other``. A name the provider refused (a typo: its ``404``) never does, and
at most ``SERVED_LABELS`` such names per deployment are taken (a server that answers whatever name it
is sent could otherwise be made to mint a series per name), nor one shaped like a credential or unlike a
model id (letters, digits and ``-._:/``, 128 at most: no address, quote or prose). Past
that bound they count as ``other``; the lists' own names keep the common case one set lookup.

A cached answer counts as a request and a cache hit but adds no tokens or cost (nothing was spent
upstream). The time to first token needs ``RequestFinished.ttft_ms`` (docs/operations.md); without it
that histogram stays empty.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.hooks import (
    BreakerChanged,
    CacheHit,
    EngineEvent,
    FailedOver,
    Hooks,
    Reloaded,
    ReloadRefused,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
)
from gtl_nb.gateway.gc_pauses import GcPauses
from gtl_nb.gateway.refusals import UNCHECKABLE_RETRY_AFTER, unavailable_status
from gtl_nb.log import get_logger, redact
from gtl_nb.protocol.codec import encode
from gtl_nb.protocol.errors import (
    ERROR_CLASSES,
    AuthenticationError,
    ConfigurationError,
    GTLError,
    PermissionDeniedError,
)

__all__ = [
    "BREAKER_VALUES",
    "METRICS_KEYS",
    "OTHER",
    "SERVED_LABELS",
    "STORES",
    "TRANSPORTS",
    "Metrics",
    "MetricsSettings",
    "metrics_route",
]

log = get_logger("gateway.metrics")

Authenticate = Callable[[str | None], RequestContext]
"""A token checker (``gateway.sessions.Authenticate``)."""

OTHER = "other"
NONE = "none"
TRANSPORTS = ("stdio", "http", "sse", "ws", "grpc", "quic")
STORES = ("ledger", "budgets", "cache", "breakers", "coalescing", "revocations", "audit", "vault")
"""The parts ``/readyz`` may call degraded: the ``store`` label of ``gtl_store_degraded``."""
"""The ``transport`` label's values (another name counts as ``other``)."""
STATUSES = ("ok", "error", "cancelled")
BREAKER_VALUES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, math.inf)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
_MAX_PENDING = 65_536
SERVED_LABELS = 50
"""Models no list names that a deployment may still show under their own label, once it served them
(the module docstring): the first this many it answers; later ones are ``other``."""

_MODEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:/")
_MODEL_LABEL_CHARS = 128


def _model_shaped(name: str) -> bool:
    """Whether ``name`` reads as a model id (``gpt-4o-mini-2024-07-18``, ``llama3.2:3b``,
    ``ft:gpt-4o-mini:acme::x1``, ``org/model``) and so may become a served name's label: a caller's
    prose, an address or quotes never do, whatever a server that answers any name answered."""
    return 0 < len(name) <= _MODEL_LABEL_CHARS and set(name) <= _MODEL_CHARACTERS


METRICS_KEYS: Mapping[str, str] = {
    "enabled": "serve GET /metrics on the HTTP listener (default true once the [gateway.metrics] table exists)",
    "require_token": "a valid token (with the scope the gateway asks for) is needed to read /metrics (default true)",
}
"""The keys of ``[gateway.metrics]``."""


class MetricsSettings:
    """``[gateway.metrics]``, typed: ``enabled`` and ``require_token`` (``METRICS_KEYS``)."""

    __slots__ = ("enabled", "require_token")

    def __init__(self, *, enabled: bool = True, require_token: bool = True) -> None:
        self.enabled = enabled
        self.require_token = require_token

    @classmethod
    def from_table(cls, table: Mapping[str, Any] | None) -> MetricsSettings:
        """The settings of a ``[gateway.metrics]`` table; no table means no ``/metrics``."""
        where = "[gateway.metrics]"
        if table is None:
            return cls(enabled=False)
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{where} must be a table")
        for key, value in table.items():
            if key not in METRICS_KEYS:
                raise ConfigurationError(f"unknown key {key!r} in {where} (known: {', '.join(METRICS_KEYS)})")
            if not isinstance(value, bool):
                raise ConfigurationError(f"{where} {key} must be true or false")
        return cls(enabled=table.get("enabled", True), require_token=table.get("require_token", True))

    def __repr__(self) -> str:
        return f"MetricsSettings(enabled={self.enabled}, require_token={self.require_token})"


class Metrics:
    """The gateway's metrics (module docstring): a hook subscriber plus the session gauge's API.

    ``models`` maps each configured deployment to the model names its label may show (``for_engine``
    builds it from the engine's deployments and catalog); ``clock`` (monotonic) times the requests
    whose duration the engine did not report.
    """

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._models = {name: frozenset(names) for name, names in (models or {}).items()}
        self._served: dict[str, set[str]] = {}  # deployment → names no list has that it answered (``SERVED_LABELS``)
        self._clock = clock
        self._started: dict[object, float] = {}  # by the request's hook handle: ids are the clients
        self._unsubscribe: list[Callable[[], None]] = []
        r = self.registry
        self.requests = Counter("gtl_requests", "Finished requests.", ("provider", "model", "status"), registry=r)
        self.errors = Counter(
            "gtl_errors", "Finished requests that ended with an error, by GTL code.", ("code",), registry=r
        )
        self.duration = Histogram(
            "gtl_request_duration_seconds",
            "Seconds from a request's start to its end.",
            ("provider", "model"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gtl_time_to_first_token_seconds",
            "Seconds from a request's start to its first content.",
            ("provider", "model"),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gtl_tokens", "Tokens sent (in) and received (out).", ("provider", "model", "direction"), registry=r
        )
        self.prompt_cache = Counter(
            "gtl_prompt_cache_tokens",
            "Input tokens read from (read) and written to (write) the providers' prompt caches; part of gtl_tokens in.",
            ("provider", "model", "kind"),
            registry=r,
        )
        self.cost = Counter("gtl_cost_usd", "Cost of the requests in US dollars.", ("provider", "model"), registry=r)
        self.breakers = Gauge(
            "gtl_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ("deployment",), registry=r
        )
        self.sessions = Gauge("gtl_open_sessions", "Sessions running now.", ("transport",), registry=r)
        self.retries = Counter("gtl_retries", "Retries of the same deployment.", ("provider",), registry=r)
        self.failovers = Counter(
            "gtl_failovers", "Moves of a request to another deployment.", ("from_provider", "to_provider"), registry=r
        )
        self.cache_hits = Counter(
            "gtl_cache_hits", "Answers replayed from the response cache.", ("provider",), registry=r
        )
        self.degraded = Gauge(
            "gtl_store_degraded", "1 while a shared store is away (see /readyz), else 0.", ("store",), registry=r
        )
        self.reload_ok = Gauge(
            "gtl_config_last_reload_successful",
            "1 when the last configuration reload was taken (or none was tried), 0 when it was refused.",
            registry=r,
        )
        self.reload_ok.set(1)
        self.reload_at = Gauge(
            "gtl_config_last_reload_success_timestamp_seconds",
            "When the configuration now served was taken: the last reload taken, else the start.",
            registry=r,
        )
        self.reload_at.set_to_current_time()
        self.token_refusals = Counter(
            "gtl_token_refusals", "Tokens refused, by the refusal's fixed reason word.", ("reason",), registry=r
        )
        self.gc_pauses = GcPauses(r)
        for deployment in self._models:
            self.breakers.labels(deployment).set(0)
        for transport in TRANSPORTS:
            self.sessions.labels(transport).set(0)

    @classmethod
    def for_engine(cls, engine: Any, **options: Any) -> Metrics:
        """Metrics that know ``engine``'s deployments and models, subscribed to its hooks."""
        metrics = cls(known_models(engine), **options)
        metrics.attach(engine.hooks)
        return metrics

    def attach(self, hooks: Hooks) -> Callable[[], None]:
        """Subscribe to ``hooks``; returns the unsubscribe call."""
        unsubscribe = hooks.subscribe(self)
        self._unsubscribe.append(unsubscribe)
        self.gc_pauses.start()
        return unsubscribe

    def detach(self) -> None:
        """Unsubscribe from every ``Hooks`` attached."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        self.gc_pauses.stop()

    def counting_refusals(self, authenticate: Authenticate) -> Authenticate:
        """``authenticate``, each token it refuses counted in ``gtl_token_refusals_total`` — what a
        dashboard watches for guessed, stolen or expired tokens. The refusals are not audited: a client
        sending bad tokens would fill the audit log's rotation with them (docs/security.md)."""
        return _RefusalCounting(authenticate, self.token_refused)

    def token_refused(self, refusal: AuthenticationError) -> None:
        """Count one refused token under its reason (a word of ``REFUSAL_REASONS``, never the token)."""
        reason = getattr(refusal, "reason", None)
        if reason is None:  # a development gateway's (auth = "token"): no reason word of its own
            label = "refused"
        else:  # (a TokenRefusedError: its module is loaded already)
            from gtl_nb.gateway.tokens.verify import REFUSAL_REASONS

            label = reason if reason in REFUSAL_REASONS else OTHER
        self.token_refusals.labels(label).inc()

    # -- bounded label values

    def provider_label(self, deployment: str | None) -> str:
        if not deployment:
            return NONE
        return deployment if deployment in self._models else OTHER

    def model_label(self, deployment: str | None, model: str | None, *, served: bool = False) -> str:
        """``model``'s label at ``deployment``: its own name when the deployment's list has it or it was
        answered under it (``served``: this request was; ``SERVED_LABELS`` a deployment at most), else
        ``other``."""
        if not model:
            return NONE
        if model in self._models.get(deployment or "", ()):
            return model
        answered = self._served.get(deployment or "")
        if answered is not None and model in answered:
            return model
        if not served or deployment not in self._models or not _model_shaped(model) or redact(model) != model:
            return OTHER
        if answered is None:
            answered = self._served[deployment] = set()
        if len(answered) >= SERVED_LABELS:
            return OTHER
        answered.add(model)
        return model

    # -- the hook subscriber (the engine's loop)

    def __call__(self, event: EngineEvent) -> None:
        """Count one engine event."""
        if isinstance(event, RequestFinished):
            self._finished(event)
        elif isinstance(event, RequestStarted):
            if not event.refused:  # (refused: it never ran, no duration is observed)
                if len(self._started) >= _MAX_PENDING:
                    self._started.pop(next(iter(self._started)))
                self._started[event.handle] = self._clock()
            transport = event.context.transport
            if transport:  # a gateway session: open until its RequestFinished
                self.session_opened(transport)
        elif isinstance(event, RetryScheduled):
            self.retries.labels(self.provider_label(event.deployment)).inc()
        elif isinstance(event, FailedOver):
            self.failovers.labels(
                self.provider_label(event.from_deployment), self.provider_label(event.to_deployment)
            ).inc()
        elif isinstance(event, CacheHit):
            self.cache_hits.labels(self.provider_label(event.deployment)).inc()
        elif isinstance(event, BreakerChanged):
            self.breaker_state(event.deployment, event.new)
        elif isinstance(event, Reloaded):
            self.learn(known_models(event.engine))
            self.reload_ok.set(1)
            self.reload_at.set_to_current_time()
        elif isinstance(event, ReloadRefused):
            self.reload_ok.set(0)  # until a reload is taken: an alert can wait on this

    def learn(self, models: Mapping[str, Iterable[str]]) -> None:
        """Take a reloaded configuration's deployments and models as the labels' bounds: a new
        deployment gets its own label (and a closed breaker gauge), a removed one's gauge goes."""
        fresh = {name: frozenset(names) for name, names in models.items()}
        for gone in self._models.keys() - fresh.keys():
            self._served.pop(gone, None)
            with contextlib.suppress(KeyError):
                self.breakers.remove(gone)
        for added in fresh.keys() - self._models.keys():
            self.breakers.labels(added).set(0)
        self._models = fresh

    def _finished(self, event: RequestFinished) -> None:
        started = self._started.pop(event.handle, None)
        if event.context.transport:
            self.session_closed(event.context.transport)
        provider = self.provider_label(event.deployment)
        model = self.model_label(event.deployment, event.model, served=event.status == "ok")
        status = event.status if event.status in STATUSES else OTHER
        self.requests.labels(provider, model, status).inc()
        if event.error_code:
            self.errors.labels(event.error_code if event.error_code in ERROR_CLASSES else OTHER).inc()
        seconds = _seconds(event.latency_ms)
        if seconds is None and started is not None:
            seconds = max(0.0, self._clock() - started)
        if seconds is not None:
            self.duration.labels(provider, model).observe(seconds)
        ttft = _seconds(getattr(event, "ttft_ms", None))  # a field the hook may carry (docs/operations.md)
        if ttft is not None:
            self.ttft.labels(provider, model).observe(ttft)
        if event.cache_hit:
            return  # a replay spent nothing upstream
        for direction, count in (("in", event.tokens_in), ("out", event.tokens_out)):
            if isinstance(count, int) and count > 0:
                self.tokens.labels(provider, model, direction).inc(count)
        for kind, count in (("read", event.cached_tokens_in), ("write", event.cache_write_tokens_in)):
            if isinstance(count, int) and count > 0:
                self.prompt_cache.labels(provider, model, kind).inc(count)
        if isinstance(event.cost, (int, float)) and math.isfinite(event.cost) and event.cost > 0:
            self.cost.labels(provider, model).inc(event.cost)

    # -- what the gateway tells it directly

    def breaker_state(self, deployment: str, state: str) -> None:
        """Set a deployment's circuit state (``closed``, ``half_open``, ``open``)."""
        if deployment in self._models and state in BREAKER_VALUES:
            self.breakers.labels(deployment).set(BREAKER_VALUES[state])

    async def refresh_breakers(self, engine: Any) -> None:
        """Read every circuit's state from ``engine`` (an open circuit turns half-open by time alone, with
        no hook; a shared breaker store changes in other processes): call it before each scrape."""
        try:
            states = await engine.breaker_states()
        except Exception:  # a scrape must still answer with what is known
            log.exception("metrics: could not read the breaker states")
            return
        for deployment, snapshot in states.items():
            self.breaker_state(deployment, str(snapshot.get("state")))

    def store_states(self, degraded: Mapping[str, str]) -> None:
        """Set ``gtl_store_degraded`` of every part in ``STORES`` from ``/readyz``'s ``degraded`` mapping."""
        for store in STORES:
            self.degraded.labels(store).set(1 if store in degraded else 0)

    def session_opened(self, transport: str) -> None:
        """A listener started serving a session over ``transport``."""
        self.sessions.labels(_transport(transport)).inc()

    def session_closed(self, transport: str) -> None:
        """A session over ``transport`` ended (call it once per ``session_opened``)."""
        self.sessions.labels(_transport(transport)).dec()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def known_models(engine: Any) -> dict[str, set[str]]:
    """Deployment → the model names its label may show: what the deployment lists, what its provider
    offers (``provider_info``: the catalog, or a local provider's own list), and the ids the catalog
    maps them to (a Bedrock answer names its model by such an id), and the catalog's aliases of each
    (``claude-haiku-4-5`` for ``claude-haiku-4-5-20251001``: what callers write)."""
    known: dict[str, set[str]] = {}
    for info in engine.provider_info():
        known.setdefault(info.provider, set()).update(model.name for model in info.models)
    catalog = getattr(engine, "catalog", None)
    for name, deployment in engine.deployments.items():
        models = known.setdefault(name, set())
        models.update(deployment.models)
        if deployment.model:
            models.add(deployment.model)
        if catalog is not None:
            models.update({catalog.model_id(deployment.type, model) for model in list(models)})
            for entry in catalog.entries(deployment.type):
                if entry.aliases and (entry.name in models or not models.isdisjoint(entry.aliases)):
                    models.add(entry.name)
                    models.update(entry.aliases)
    return known


def _transport(name: str) -> str:
    return name if name in TRANSPORTS else OTHER


def _seconds(milliseconds: float | None) -> float | None:
    if isinstance(milliseconds, (int, float)) and math.isfinite(milliseconds) and milliseconds >= 0:
        return milliseconds / 1000.0
    return None


# ----------------------------------------------------------------------------------------------
# GET /metrics


class _RefusalCounting:
    """``Metrics.counting_refusals``: the checker the listeners hold, its refusals counted — on every
    transport, at a connection's hello and on each ``recheck`` of an open connection's token."""

    def __init__(self, authenticate: Authenticate, refused: Callable[[AuthenticationError], None]) -> None:
        self.authenticate = authenticate
        self.refused = refused

    @property
    def target(self) -> Any:
        """The checker behind this one (behind a reload's ``SwappableAuthenticator`` too): what
        ``gateway.readiness`` asks about its revocation list."""
        return getattr(self.authenticate, "target", self.authenticate)

    def __call__(self, token: str | None) -> RequestContext:
        try:
            return self.authenticate(token)
        except AuthenticationError as exc:
            self.refused(exc)
            raise

    def recheck(self, context: RequestContext) -> RequestContext:
        """The checker's own ``recheck`` (when it has one), its refusals counted too."""
        recheck = getattr(self.authenticate, "recheck", None)
        if recheck is None:
            return context
        try:
            return recheck(context)  # type: ignore[no-any-return]
        except AuthenticationError as exc:
            self.refused(exc)
            raise

    def __repr__(self) -> str:
        return f"counting refusals of {self.authenticate!r}"


def metrics_route(
    metrics: Metrics,
    *,
    require_token: bool,
    authenticate: Callable[[str | None], RequestContext],
    scope: str | None = None,
    refresh: Callable[[], Awaitable[None]] | None = None,
    path: str = "/metrics",
) -> Any:
    """A Starlette ``Route`` for ``GET /metrics`` in the Prometheus text format.

    With ``require_token`` the request needs ``Authorization: Bearer <token>`` that ``authenticate``
    accepts (``401`` otherwise) and, when ``scope`` is given, holds that scope (``403``); refusals are
    one GTL ``error`` as JSON, like the other endpoints. ``refresh`` is awaited before each rendering
    (the gateway passes ``lambda: metrics.refresh_breakers(engine)``).
    """
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def refusal(exc: GTLError, status: int) -> Response:
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        if status == 503:  # a token the gateway cannot check: the other endpoints' retry-after
            headers = dict(UNCHECKABLE_RETRY_AFTER)
        return Response(encode(exc.to_event("")), status_code=status, media_type="application/json", headers=headers)

    async def endpoint(request: Request) -> Response:
        if require_token:
            token = _bearer(request.headers.get("authorization"))
            if token is None:
                return refusal(AuthenticationError("GET /metrics needs a token (Authorization: Bearer …)"), 401)
            try:
                context = authenticate(token)
            except PermissionDeniedError as exc:
                return refusal(exc, 403)
            except AuthenticationError as exc:
                return refusal(exc, unavailable_status(exc))  # (503: the revocation list is unreachable)
            if scope is not None and not _has_scope(context, scope):
                return refusal(PermissionDeniedError(f"reading /metrics needs the {scope} scope"), 403)
        if refresh is not None:
            await refresh()
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})

    return Route(path, endpoint, methods=["GET"])


def _bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _has_scope(context: RequestContext, scope: str) -> bool:
    from gtl_nb.gateway.tokens import has_scope

    return has_scope(context, scope)
