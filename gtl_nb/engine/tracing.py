"""OpenTelemetry traces of the engine's requests, following the GenAI semantic conventions.

``RequestTracer`` subscribes to the engine's lifecycle hooks (``engine.hooks``) and turns each request
into exactly one span: ``chat {model}``, kind ``CLIENT``, with the ``gen_ai.*`` attributes of the GenAI
inference span (semantic conventions ``SEMCONV_VERSION``, the first to name ``gen_ai.provider.name``;
the deprecated ``gen_ai.system`` is not written). The span covers the logical request — retries,
failovers and a cache replay included, as the conventions ask — and those steps are span *events*
(``gtl.attempt``, ``gtl.retry``, ``gtl.failover``, ``gtl.cache_hit``): a retried or failed-over error
is handled, so it never makes the span an error. A request that ends in an error or is cancelled sets
``error.type`` to its GTL code and the span status to ``ERROR``.

What never goes on a span: provider keys and tokens (nothing from a deployment but its name, its
provider type and the host and port of its URL), error *messages* (a provider's message can quote a
key; only codes are kept), request ``metadata`` and headers. Prompts and answers only with
``capture_content=True`` (``gen_ai.input.messages`` / ``gen_ai.output.messages``, as JSON strings,
credential-shaped text redacted) — and only when the hooks carry them (``RequestStarted.request``,
``RequestFinished.answer``).

The span's trace id is the request's (``RequestContext.trace_id``) when that is a valid W3C trace id,
so audit records, ledger rows and spans join on it: a ``traceparent`` the context carries makes the
span that parent's child; otherwise a tracer provider built here (``build_tracer_provider``, its
``RequestTraceIds``) starts a root span with that id. Under a provider of someone else's the id is
recorded as ``gtl.trace_id`` instead.

OpenTelemetry itself is imported only when a tracer is built (the ``otel`` extra): importing this
module, or gtl_nb, never imports it.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.hooks import (
    AttemptStarted,
    CacheHit,
    EngineEvent,
    FailedOver,
    Hooks,
    Reloaded,
    RequestFinished,
    RequestStarted,
    RetryScheduled,
)
from gtl_nb.log import get_logger, redact, redact_loggers
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.words import install_extra

__all__ = [
    "EXPORTERS",
    "INSTALL_HINT",
    "SEMCONV_VERSION",
    "RequestTraceIds",
    "RequestTracer",
    "build_tracer_provider",
    "check_exporter",
    "provider_name",
    "server_of",
]

log = get_logger("engine.tracing")

SEMCONV_VERSION = "1.37.0"
"""The OpenTelemetry semantic conventions the spans follow (the GenAI ones are still "development")."""
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
INSTALL_HINT = install_extra("otel")
EXPORTERS = ("otlp", "console", "none")
"""``otlp``: OTLP over HTTP; ``console``: one JSON line per span on standard error; ``none``: no exporter
of ours — spans go to the process's global tracer provider, if something set one up."""
REFUSED_PROVIDER = "gtl_nb"
"""``gen_ai.provider.name`` of a request no provider saw (refused by budgets or permissions, no route)."""

# gen_ai.provider.name's well-known values, by deployment type; other types are written as they are
_PROVIDER_NAMES = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "bedrock": "aws.bedrock",
}
# where a deployment without base_url sends its requests (the dialects' defaults)
_DEFAULT_SERVERS = {
    "openai": ("api.openai.com", 443),
    "anthropic": ("api.anthropic.com", 443),
    "gemini": ("generativelanguage.googleapis.com", 443),
    "ollama": ("localhost", 11434),
}
_MAX_TEXT = 256  # caller-chosen identifiers (models, session ids) are cut here
_MAX_PART = 32_768  # one captured message part, in characters (the JSON structure stays whole)
_MAX_OPEN = 65_536  # requests followed at once; more means RequestFinished went missing somewhere
_HEX = frozenset("0123456789abcdefABCDEF")


# ----------------------------------------------------------------------------------------------
# What a deployment may say about itself


def provider_name(deployment_type: str | None) -> str:
    """``gen_ai.provider.name`` for a deployment type (``azure`` → ``azure.ai.openai``)."""
    if not deployment_type:
        return REFUSED_PROVIDER
    return _PROVIDER_NAMES.get(deployment_type, deployment_type)


def server_of(deployment: Any) -> tuple[str, int] | None:
    """``(server.address, server.port)`` of a deployment: the host and port of its base URL (never the
    user, password, path or query, where a key could hide), else its type's default; ``None`` when unknown
    (a local generator)."""
    base_url = getattr(deployment, "base_url", None)
    kind = getattr(deployment, "type", None)
    if base_url:
        try:
            parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
            host, port = parts.hostname, parts.port
        except ValueError:  # a port that is not a number: say nothing rather than guess
            return None
        if not host:
            return None
        return host, port or (443 if parts.scheme == "https" else 80)
    if kind == "bedrock" and getattr(deployment, "region", None):
        return f"bedrock-runtime.{deployment.region}.amazonaws.com", 443
    return _DEFAULT_SERVERS.get(kind or "")


def _describe(deployments: Mapping[str, Any]) -> dict[str, tuple[str, tuple[str, int] | None]]:
    # only what a span may carry is kept: the tracer never holds a deployment (or its key)
    return {name: (provider_name(d.type), server_of(d)) for name, d in deployments.items()}


# ----------------------------------------------------------------------------------------------
# Trace ids


def _trace_id(value: str | None) -> int | None:
    """A W3C trace id (32 hex digits, not all zero) as an int; ``None`` for anything else."""
    if not value or len(value) != 32 or not set(value) <= _HEX:
        return None
    number = int(value, 16)
    return number or None


def _random_id(bits: int) -> int:
    number = 0
    while not number:  # zero is the invalid id
        number = random.getrandbits(bits)
    return number


class RequestTraceIds:
    """An OpenTelemetry SDK id generator that hands out a request's own trace id when told to.

    ``RequestTracer`` calls ``adopt(trace_id)`` just before it starts a root span, so that span gets the
    request's trace id; every other id is random, as the SDK's own generator makes them.
    """

    def __init__(self) -> None:
        self._local = threading.local()  # the adopted id is for the thread starting the span, only

    def adopt(self, trace_id: int | None) -> None:
        """Make ``trace_id`` the next trace id this thread gets (``None`` forgets it)."""
        self._local.wanted = trace_id

    def generate_trace_id(self) -> int:
        wanted = getattr(self._local, "wanted", None)
        self._local.wanted = None
        self._local.adopted = wanted is not None
        return wanted if wanted is not None else _random_id(128)

    def generate_span_id(self) -> int:
        return _random_id(64)

    def is_trace_id_random(self) -> bool:
        return not getattr(self._local, "adopted", False)  # an adopted id was chosen by someone else


# ----------------------------------------------------------------------------------------------
# Building a tracer provider


def check_exporter(exporter: str) -> None:
    """What ``build_tracer_provider`` refuses of ``exporter`` (an unknown name, a missing package),
    without building anything."""
    if exporter not in EXPORTERS:
        raise ConfigurationError(f"unknown trace exporter {exporter!r} (known: {', '.join(EXPORTERS)})")
    _module("opentelemetry.trace")
    if exporter == "none":
        return
    for name in ("opentelemetry.sdk.trace", "opentelemetry.sdk.trace.export", "opentelemetry.sdk.resources"):
        _module(name)
    if exporter == "otlp":
        _module("opentelemetry.exporter.otlp.proto.http.trace_exporter")


def _module(name: str) -> Any:
    """``importlib.import_module(name)``, or the ``ConfigurationError`` that says which extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing = exc.name or name
        raise ConfigurationError(
            f"OpenTelemetry tracing needs {missing}, which is not installed: {INSTALL_HINT}"
        ) from None


_CREDENTIAL_WORDS = ("key", "token", "secret", "pass", "pwd", "auth", "sig", "cred", "bearer", "session")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def refuse_credential_in_query(url: str, where: str) -> None:
    """Refuse a collector ``url`` whose query has a parameter named as a credential is (``api_key``,
    ``X-Api-Key``, ``access_token``, ``sig``, ``password`` …): the SDK's own log quotes the URL, query and
    all, whenever an export fails. The value is never quoted; the name only when it reads as a name."""
    for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if any(word in name.lower() for word in _CREDENTIAL_WORDS):
            plain = len(name) <= 24 and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in name)
            shown = f"{name}=…" if plain else "a parameter named like one"  # (a name may be the secret pasted)
            raise ConfigurationError(
                f"{where} must not carry a credential in its query ({shown}): put it in "
                "OTEL_EXPORTER_OTLP_HEADERS (key=value pairs, sent as headers and never logged)"
            )


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint``: a bare collector address gets ``/v1/traces``."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def _one_line(span: Any) -> str:
    return span.to_json(indent=None) + "\n"


def build_tracer_provider(
    exporter: str,
    *,
    endpoint: str | None = None,
    service_name: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """An OpenTelemetry SDK ``TracerProvider`` exporting as ``exporter`` says (``EXPORTERS``), with
    ``RequestTraceIds``; ``None`` for ``"none"`` (use the global provider).

    ``endpoint`` is the OTLP/HTTP collector (default: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, then
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, then ``http://localhost:4318``); headers, timeouts, sampling and
    resource attributes come from the usual ``OTEL_*`` variables. ``service_name`` defaults to
    ``OTEL_SERVICE_NAME``, then ``gtl_nb``. Spans are exported in batches by a thread of the SDK, so a
    slow collector never holds a request back. Raises ``ConfigurationError`` naming ``gtl_nb[otel]``
    when OpenTelemetry is not installed.
    """
    check_exporter(exporter)  # before anything starts a thread
    if exporter == "none":
        return None
    sdk_trace = _module("opentelemetry.sdk.trace")
    sdk_export = _module("opentelemetry.sdk.trace.export")
    resources = _module("opentelemetry.sdk.resources")
    if exporter == "otlp":
        otlp = _module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    environ = os.environ if environ is None else environ
    if exporter == "otlp" and not endpoint:  # the SDK reads the endpoint from these: the same check
        for variable in ENDPOINT_VARIABLES:
            if environ.get(variable):
                refuse_credential_in_query(environ[variable], f"${variable}")
    name = service_name or environ.get("OTEL_SERVICE_NAME") or "gtl_nb"
    provider = sdk_trace.TracerProvider(
        resource=resources.Resource.create({"service.name": name}), id_generator=RequestTraceIds()
    )
    if exporter == "console":
        # standard error: a stdio gateway's standard output carries its frames
        span_exporter = sdk_export.ConsoleSpanExporter(service_name=name, out=sys.stderr, formatter=_one_line)
    else:
        span_exporter = otlp.OTLPSpanExporter(endpoint=traces_url(endpoint) if endpoint else None)
    provider.add_span_processor(sdk_export.BatchSpanProcessor(span_exporter))
    # the exporter's failures are logged by the SDK and by urllib3, the collector's URL in them
    redact_loggers("opentelemetry", "urllib3", "requests")
    return provider


# ----------------------------------------------------------------------------------------------
# Content (opt-in)


def _cut(text: str) -> str:
    return redact(text[:_MAX_PART])


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _cut(raw)


def _input_messages(messages: Any) -> str:
    """GTL messages in the conventions' input-messages shape, as JSON (images are left out)."""
    shaped = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        if message.role == "tool":
            parts.append(
                {"type": "tool_call_response", "id": message.tool_call_id, "response": _cut(message.content or "")}
            )
        elif message.content:
            parts.append({"type": "text", "content": _cut(message.content)})
        for call in message.tool_calls or ():
            parts.append(
                {"type": "tool_call", "id": call.id, "name": call.name, "arguments": _arguments(call.arguments)}
            )
        shaped.append({"role": message.role, "parts": parts})
    return json.dumps(shaped, ensure_ascii=False)


def _output_messages(answer: str, finish_reason: str | None) -> str:
    shaped = {"role": "assistant", "parts": [{"type": "text", "content": _cut(answer)}]}
    shaped["finish_reason"] = finish_reason or "stop"
    return json.dumps([shaped], ensure_ascii=False)


def _request_attributes(request: Any) -> dict[str, Any]:
    """The sampling parameters a request set (``gen_ai.request.*``)."""
    attributes: dict[str, Any] = {}
    if isinstance(request.max_tokens, int):
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    for field in ("temperature", "top_p"):
        value = getattr(request, field, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[f"gen_ai.request.{field}"] = float(value)
    stop = getattr(request, "stop", None)
    if stop:
        attributes["gen_ai.request.stop_sequences"] = [str(item)[:_MAX_TEXT] for item in stop]
    return attributes


def _short(value: Any) -> str:
    return str(value)[:_MAX_TEXT]


def _code_of(reason: str) -> str:
    """The GTL code at the front of a hook's ``reason`` ("CODE: message"); the message is never kept."""
    code = reason.partition(":")[0].strip()
    return code if code and len(code) <= 40 and code.replace("_", "").isalpha() and code.isupper() else "_OTHER"


# ----------------------------------------------------------------------------------------------
# The subscriber


class RequestTracer:
    """One span per engine request, from the engine's hooks (see the module docstring).

    ``tracer_provider``: an OpenTelemetry ``TracerProvider`` (default: the global one). ``owns_provider``:
    ``close()`` shuts it down (flushing what is queued) — for a provider built by ``build_tracer_provider``.
    ``capture_content``: also record prompts and answers (off by default: they are the users' data).
    """

    def __init__(
        self,
        tracer_provider: Any = None,
        *,
        capture_content: bool = False,
        deployments: Mapping[str, Any] | None = None,
        owns_provider: bool = False,
    ) -> None:
        trace = _module("opentelemetry.trace")
        self._trace = trace
        self._propagation = _module("opentelemetry.trace.propagation.tracecontext")
        self._context = _module("opentelemetry.context")
        self.provider = tracer_provider
        version = getattr(sys.modules.get("gtl_nb"), "__version__", None)  # the package, always imported
        self.tracer = trace.get_tracer("gtl_nb", version, tracer_provider=tracer_provider, schema_url=SCHEMA_URL)
        self.capture_content = capture_content
        self._owns_provider = owns_provider
        self._ids = getattr(tracer_provider, "id_generator", None)
        self._deployments = _describe(deployments or {})
        # each request's span by its hook handle (ids are the clients': two running requests may share one)
        self._open: dict[object, Any] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    @classmethod
    def for_engine(cls, engine: Any, **options: Any) -> RequestTracer:
        """A tracer that knows ``engine``'s deployments, subscribed to its hooks."""
        tracer = cls(deployments=engine.deployments, **options)
        tracer.attach(engine.hooks)
        return tracer

    def attach(self, hooks: Hooks) -> Callable[[], None]:
        """Subscribe to ``hooks`` (``close()`` unsubscribes); returns the unsubscribe call."""
        unsubscribe = hooks.subscribe(self)
        self._unsubscribe.append(unsubscribe)
        if self.capture_content:
            hooks.want_answers = True  # type: ignore[attr-defined]  # the engine then collects each answer's text
        return unsubscribe

    @property
    def open_requests(self) -> int:
        """Requests whose span has started and not ended yet."""
        return len(self._open)

    # -- the hooks (the engine's loop)

    def __call__(self, event: EngineEvent) -> None:
        """Take one engine event."""
        if isinstance(event, RequestStarted):
            self._started(event)
        elif isinstance(event, RequestFinished):
            self._finished(event)
        elif isinstance(event, Reloaded):
            self._deployments = _describe(event.engine.deployments)
        elif isinstance(event, AttemptStarted):
            self._event(
                event.handle,
                "gtl.attempt",
                {
                    "gtl.deployment": _short(event.deployment),
                    "gen_ai.request.model": _short(event.model),
                    "gtl.attempt": event.attempt,
                },
            )
        elif isinstance(event, RetryScheduled):
            self._event(
                event.handle,
                "gtl.retry",
                {
                    "gtl.deployment": _short(event.deployment),
                    "gtl.attempt": event.attempt,
                    "gtl.retry.delay_s": float(event.delay),
                    "error.type": _code_of(event.reason),
                },
            )
        elif isinstance(event, FailedOver):
            self._event(
                event.handle,
                "gtl.failover",
                {
                    "gtl.failover.from": _short(event.from_deployment),
                    "gtl.failover.to": _short(event.to_deployment),
                    "error.type": _code_of(event.reason),
                },
            )
        elif isinstance(event, CacheHit):
            self._event(event.handle, "gtl.cache_hit", {"gtl.deployment": _short(event.deployment)})

    def _started(self, event: RequestStarted) -> None:
        if len(self._open) >= _MAX_OPEN:
            self._evict_oldest()
        model = _short(event.model) if event.model else ""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gtl.session_id": _short(event.session_id),
        }
        if model:
            attributes["gen_ai.request.model"] = model
        request = getattr(event, "request", None)  # a field the hook may carry (the content seam)
        if request is not None:
            attributes.update(_request_attributes(request))
        span = self._start(f"chat {model}" if model else "chat", event.context, attributes)
        if self.capture_content and request is not None and span.is_recording():
            span.set_attribute("gen_ai.input.messages", _input_messages(request.messages))
        self._open[event.handle] = span

    def _start(self, name: str, context: RequestContext, attributes: dict[str, Any]) -> Any:
        """Start the request's span under the request's own trace, when it has a usable one."""
        kind = self._trace.SpanKind.CLIENT
        parent = self._remote_parent(context)
        wanted = _trace_id(context.trace_id)
        if parent is None and wanted is not None and isinstance(self._ids, RequestTraceIds):
            self._ids.adopt(wanted)
            try:  # an empty context: a root span, whose trace id the generator hands out
                return self.tracer.start_span(name, context=self._context.Context(), kind=kind, attributes=attributes)
            finally:
                self._ids.adopt(None)
        span = self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        if context.trace_id and span.get_span_context().trace_id != wanted:
            span.set_attribute("gtl.trace_id", _short(context.trace_id))  # still joinable with the audit log
        return span

    def _remote_parent(self, context: RequestContext) -> Any:
        """The context of a W3C ``traceparent`` the request came with (a field the context may carry)."""
        header = getattr(context, "traceparent", None)
        if not isinstance(header, str) or not header:
            return None
        carrier = {"traceparent": header}
        state = getattr(context, "tracestate", None)
        if isinstance(state, str) and state:
            carrier["tracestate"] = state
        extracted = self._propagation.TraceContextTextMapPropagator().extract(carrier)
        parent = self._trace.get_current_span(extracted).get_span_context()
        if not parent.is_valid:
            return None
        wanted = _trace_id(context.trace_id)
        if wanted is not None and parent.trace_id != wanted:
            return None  # two different traces claimed: the request's own trace id wins
        return extracted

    def _event(self, handle: object, name: str, attributes: dict[str, Any]) -> None:
        span = self._open.get(handle)
        if span is not None:
            span.add_event(name, attributes)

    def _finished(self, event: RequestFinished) -> None:
        span = self._open.pop(event.handle, None)
        if span is None:
            return
        try:
            if span.is_recording():
                self._outcome(span, event)
        finally:
            span.end()

    def _outcome(self, span: Any, event: RequestFinished) -> None:
        """The attributes a finished request sets: provider, response, usage, outcome."""
        deployment = event.deployment
        described = self._deployments.get(deployment or "")
        provider = provider_name(event.provider_type) if event.provider_type else None
        if provider is None:
            provider = described[0] if described is not None else REFUSED_PROVIDER
        attributes: dict[str, Any] = {"gen_ai.provider.name": provider, "gtl.status": event.status}
        if deployment:
            attributes["gtl.deployment"] = _short(deployment)
        server = described[1] if described is not None else None
        if server is not None:
            attributes["server.address"], attributes["server.port"] = server
        attributes["gtl.cache_hit"] = bool(event.cache_hit)
        if event.status == "ok":
            if event.model:
                attributes["gen_ai.response.model"] = _short(event.model)
            reason = getattr(event, "finish_reason", None)  # a field the hook may carry
            if isinstance(reason, str) and reason:
                attributes["gen_ai.response.finish_reasons"] = [_short(reason)]
            if not event.cache_hit:  # a replay used no tokens (the metrics count none either)
                if event.tokens_in is not None:
                    attributes["gen_ai.usage.input_tokens"] = int(event.tokens_in)
                if event.tokens_out is not None:
                    attributes["gen_ai.usage.output_tokens"] = int(event.tokens_out)
                for name, count in (  # the parts of input_tokens a provider's prompt cache read or wrote
                    ("gen_ai.usage.cache_read.input_tokens", getattr(event, "cached_tokens_in", None)),
                    ("gen_ai.usage.cache_creation.input_tokens", getattr(event, "cache_write_tokens_in", None)),
                ):
                    if count is not None:
                        attributes[name] = int(count)
            if event.ttft_ms is not None:
                attributes["gtl.ttft_ms"] = float(event.ttft_ms)
            answer = getattr(event, "answer", None)
            if self.capture_content and isinstance(answer, str):
                attributes["gen_ai.output.messages"] = _output_messages(answer, reason)
        else:
            attributes["error.type"] = event.error_code or "_OTHER"
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        if event.cost is not None and not event.cache_hit:
            attributes["gtl.cost_usd"] = float(event.cost)
        span.set_attributes(attributes)

    def _evict_oldest(self) -> None:
        span = self._open.pop(next(iter(self._open)))
        span.set_attribute("error.type", "_OTHER")
        span.end()
        log.warning("tracing: more than %d requests open; ended the oldest span", _MAX_OPEN)

    # -- the end

    def close(self) -> None:
        """Unsubscribe, end the spans of requests still open, and shut an owned provider down (flushing
        the spans it still holds; this may wait for the exporter). Idempotent."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        for span in list(self._open.values()):
            span.set_attribute("error.type", "_OTHER")
            span.end()
        self._open.clear()
        if self._owns_provider and self.provider is not None:
            self._owns_provider = False
            self.provider.shutdown()
