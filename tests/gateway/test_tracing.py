"""OpenTelemetry traces (``gtl_nb.engine.tracing``): one GenAI span per request, checked with the SDK's
in-memory exporter on a real engine — a streamed answer, a failover, a cache hit, errors, a cancel —
the request's trace id, the settings, the missing extra, a canary key that never reaches a span, and a
real gateway that sends spans over OTLP only when ``[gateway.tracing]`` says so."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as OtlpStatus
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.hooks import AttemptStarted, Hooks, Reloaded, RequestFinished, RequestStarted
from gtl_nb.engine.session import run_session
from gtl_nb.engine.settings import load_settings
from gtl_nb.engine.tracing import RequestTraceIds, RequestTracer, build_tracer_provider, server_of
from gtl_nb.gateway.local import start_gateway
from gtl_nb.gateway.server import _tracer_provider
from gtl_nb.gateway.settings import GatewaySettings, TracingSettings
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import CompletionRequest, Done, Message, StreamEvent, Token, ToolCall, Usage
from gtl_nb.providers.base import Deployment
from tests.gateway.conftest import LONG_PROMPT, marked_prompt_twice, send_body, write_toml

KEY_CANARY = "sk-canary-TRACEKEY-5f4e3d2c1b"  # a fake provider key the simulators accept
TOKEN_CANARY = "gtl.TOKEN-CANARY.77aa01"  # stands for a GhostToken in request metadata
PROMPT_CANARY = "PROMPT-CANARY-4c1d"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
MODEL = "gpt-4o-mini"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimpleNamespace]:
    """``good`` answers at once; ``flaky`` answers 503; ``slow`` streams a chunk every 50 ms."""
    good = sim.serve("openai", seed=7, api_key=KEY_CANARY)
    flaky = sim.serve("openai", sim.Fault.http(503), seed=7, api_key=KEY_CANARY)
    slow = sim.serve("openai", seed=7, api_key=KEY_CANARY, pace=0.05)
    yield SimpleNamespace(good=good, flaky=flaky, slow=slow)
    for server in (good, flaky, slow):
        server.close()


async def _no_sleep(seconds: float) -> None:
    return None


def make_engine(upstream: SimpleNamespace, **sections: Any) -> Engine:
    providers = {
        "echo": {"type": "echo"},
        "openai": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.good.base_url},
        "flaky": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.flaky.base_url},
        "slow": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.slow.base_url},
        "badkey": {"type": "openai", "api_key": "sk-wrong-key-000000000000", "base_url": upstream.good.base_url},
    }
    settings = load_settings(providers=providers, environ={}, **sections)
    return build_engine(settings, ledger=False, hooks=Hooks(), sleep=_no_sleep)


@dataclass
class Traced:
    """A tracer on an in-memory exporter; ``spans`` are the finished ones."""

    exporter: InMemorySpanExporter
    tracer: RequestTracer

    @property
    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())


def traced(engine: Engine | None = None, *, ids: bool = True, **options: Any) -> Traced:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=RequestTraceIds()) if ids else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if engine is None:
        tracer = RequestTracer(provider, **options)
    else:
        tracer = RequestTracer.for_engine(engine, tracer_provider=provider, **options)
    return Traced(exporter, tracer)


def request(session_id: str, model: str, **fields: Any) -> CompletionRequest:
    message = Message(role="user", content=f"Say hello. {PROMPT_CANARY}")
    metadata = {"authorization": f"Bearer {TOKEN_CANARY}"}
    return CompletionRequest(session_id=session_id, model=model, messages=[message], metadata=metadata, **fields)


CONTEXT = RequestContext(principal="ann", tenant="acme", key_id="jti-0001", trace_id=TRACE_ID)


def drive(engine: Engine, requests: list[CompletionRequest], context: RequestContext = CONTEXT) -> list[StreamEvent]:
    """Stream each request to its end, one after the other; every event, in order."""
    seen: list[StreamEvent] = []

    async def main() -> None:
        for message in requests:
            async for event in engine.stream(message, context=context):
                seen.append(event)
        await engine.aclose()

    asyncio.run(main())
    return seen


def one_span_per_session(spans: list[Any]) -> dict[str, Any]:
    sessions = [span.attributes["gtl.session_id"] for span in spans]
    assert len(sessions) == len(set(sessions)), f"a request ended more than one span: {sessions}"
    return {span.attributes["gtl.session_id"]: span for span in spans}


def everything_said(span: Any) -> str:
    """All a span carries, as text: name, attributes, events, status, resource."""
    return span.to_json(indent=None)


# -- a real engine, the in-memory exporter ---------------------------------------------------------


def test_a_streamed_completion_is_one_client_span_with_the_genai_attributes(upstream):
    engine = make_engine(upstream)
    seen = traced(engine)
    events = drive(engine, [request("stream-1", MODEL, max_tokens=40)])
    usage = next(event for event in events if isinstance(event, Usage))

    (span,) = seen.spans
    assert span.name == f"chat {MODEL}" and span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    attributes = dict(span.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.response.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == usage.tokens_in > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage.tokens_out > 0
    assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == upstream.good.port
    assert attributes["gtl.deployment"] == "openai" and attributes["gtl.status"] == "ok"
    assert attributes["gtl.cache_hit"] is False and attributes["gtl.cost_usd"] > 0
    assert "error.type" not in attributes and "gen_ai.system" not in attributes  # the deprecated name is not written
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in attributes)  # no content by default
    assert [(event.name, dict(event.attributes)) for event in span.events] == [
        ("gtl.attempt", {"gtl.deployment": "openai", "gen_ai.request.model": MODEL, "gtl.attempt": 1})
    ]
    assert span.parent is None and span.context.trace_id == int(TRACE_ID, 16)  # joins the audit record
    assert seen.tracer.open_requests == 0


def test_a_failover_is_one_span_whose_retries_and_failover_are_events_not_errors(upstream):
    engine = make_engine(upstream)
    seen = traced(engine)
    drive(engine, [request("failover-1", MODEL, providers=["flaky", "openai"])])

    (span,) = seen.spans
    assert span.status.status_code is StatusCode.UNSET and "error.type" not in span.attributes  # handled
    assert span.attributes["gtl.deployment"] == "openai" and span.attributes["gen_ai.provider.name"] == "openai"
    names = [event.name for event in span.events]
    flaky_attempts = [e for e in span.events if e.name == "gtl.attempt" and e.attributes["gtl.deployment"] == "flaky"]
    retries = [event for event in span.events if event.name == "gtl.retry"]
    assert len(flaky_attempts) >= 1 and len(retries) == len(flaky_attempts) - 1
    assert all(event.attributes["error.type"] == "OVERLOADED" for event in retries)  # the code, never the message
    (failover,) = [event for event in span.events if event.name == "gtl.failover"]
    assert dict(failover.attributes) == {
        "gtl.failover.from": "flaky",
        "gtl.failover.to": "openai",
        "error.type": "OVERLOADED",
    }
    assert names[-1] == "gtl.attempt" and span.events[-1].attributes["gtl.deployment"] == "openai"
    assert names.index("gtl.failover") < len(names) - 1


def test_a_cache_hit_is_a_span_of_its_own_with_no_tokens_used(upstream):
    engine = make_engine(upstream, cache={"enabled": True})
    seen = traced(engine)
    drive(engine, [request("first", "echo", temperature=0), request("replayed", "echo", temperature=0)])

    spans = one_span_per_session(seen.spans)
    assert set(spans) == {"first", "replayed"}
    first, replayed = spans["first"], spans["replayed"]
    assert first.attributes["gen_ai.usage.output_tokens"] > 0 and first.attributes["gtl.cache_hit"] is False
    assert replayed.attributes["gtl.cache_hit"] is True
    assert [event.name for event in replayed.events] == ["gtl.cache_hit"]
    assert not any(key.startswith("gen_ai.usage.") for key in replayed.attributes)
    assert replayed.attributes["gen_ai.provider.name"] == "echo" and "server.address" not in replayed.attributes
    assert replayed.attributes["gen_ai.response.model"] == "echo"
    assert replayed.status.status_code is StatusCode.UNSET


def test_errors_set_error_type_and_the_error_status(upstream):
    engine = make_engine(upstream)
    seen = traced(engine)
    drive(engine, [request("refused-key", MODEL, provider="badkey"), request("no-route", "no-such-model-xyz")])

    spans = one_span_per_session(seen.spans)
    refused, lost = spans["refused-key"], spans["no-route"]
    assert refused.status.status_code is StatusCode.ERROR and refused.status.description is None
    assert refused.attributes["error.type"] == "AUTH_FAILED" and refused.attributes["gtl.status"] == "error"
    assert refused.attributes["gen_ai.provider.name"] == "openai" and refused.attributes["gtl.deployment"] == "badkey"
    assert "gen_ai.response.model" not in refused.attributes
    assert lost.status.status_code is StatusCode.ERROR and lost.attributes["error.type"] == "MODEL_NOT_FOUND"
    assert lost.attributes["gen_ai.provider.name"] == "gtl_nb" and "gtl.deployment" not in lost.attributes
    assert lost.name == "chat no-such-model-xyz"


def test_a_cancelled_request_ends_its_one_span_as_cancelled(upstream):
    engine = make_engine(upstream)
    seen = traced(engine)

    async def main() -> None:
        first_token = asyncio.Event()

        def send(event: StreamEvent) -> None:
            if isinstance(event, Token):
                first_token.set()

        message = CompletionRequest(
            session_id="cancel-1", model=f"slow:{MODEL}", messages=[Message(role="user", content=LONG_PROMPT)]
        )
        task = asyncio.ensure_future(run_session(engine, message, CONTEXT, send))
        await first_token.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.aclose()

    asyncio.run(main())
    (span,) = seen.spans
    assert span.attributes["gtl.status"] == "cancelled" and span.attributes["error.type"] == "CANCELLED"
    assert span.status.status_code is StatusCode.ERROR
    assert seen.tracer.open_requests == 0


def test_two_requests_with_one_session_id_each_end_their_own_span(upstream):
    """Clients choose session ids; two at once under one id still get a span each, ended once."""
    engine = make_engine(upstream)
    seen = traced(engine)
    ann, bob = RequestContext(principal="ann"), RequestContext(principal="bob")

    async def main() -> None:
        async def one(model: str, context: RequestContext) -> None:
            async for _ in engine.stream(request("same-id", model, max_tokens=8), context=context):
                pass

        await asyncio.gather(one(f"slow:{MODEL}", ann), one("echo", bob))
        await engine.aclose()

    asyncio.run(main())
    spans = seen.spans
    assert len(spans) == 2
    assert sorted(span.attributes["gtl.deployment"] for span in spans) == ["echo", "slow"]
    for span in spans:  # each span's outcome is its own request's (matched by the request's context)
        assert span.attributes["gen_ai.request.model"].endswith(span.attributes["gen_ai.response.model"])
    assert seen.tracer.open_requests == 0


# -- the trace id ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trace_id", "adopted"),
    [(TRACE_ID, True), (TRACE_ID.upper(), True), ("0" * 32, False), ("not-a-w3c-trace-id", False), (None, False)],
)
def test_the_span_takes_the_request_trace_id_when_it_is_a_w3c_one(upstream, trace_id, adopted):
    engine = make_engine(upstream)
    seen = traced(engine)
    drive(engine, [request("t-1", "echo")], RequestContext(principal="ann", trace_id=trace_id))
    (span,) = seen.spans
    assert span.parent is None
    assert (span.context.trace_id == int(TRACE_ID, 16)) is adopted
    if adopted or trace_id is None:
        assert "gtl.trace_id" not in span.attributes
    else:  # not a usable id: still on the span, so audit records and spans join
        assert span.attributes["gtl.trace_id"] == trace_id


def test_under_a_provider_of_someone_else_the_trace_id_is_an_attribute(upstream):
    engine = make_engine(upstream)
    seen = traced(engine, ids=False)
    drive(engine, [request("t-2", "echo")])
    (span,) = seen.spans
    assert span.context.trace_id != int(TRACE_ID, 16) and span.attributes["gtl.trace_id"] == TRACE_ID


@dataclass(frozen=True)
class TracedContext(RequestContext):
    """A context with the incoming W3C header (the field the gateway's HTTP listener may add)."""

    traceparent: str | None = None


def test_a_traceparent_on_the_context_makes_the_span_its_child(upstream):
    parent_span = "00f067aa0ba902b7"
    engine = make_engine(upstream)
    seen = traced(engine)
    sampled = TracedContext(principal="ann", trace_id=TRACE_ID, traceparent=f"00-{TRACE_ID}-{parent_span}-01")
    unsampled = TracedContext(principal="ann", trace_id=TRACE_ID, traceparent=f"00-{TRACE_ID}-{parent_span}-00")
    drive(engine, [request("child", "echo")], sampled)
    (span,) = seen.spans
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.parent is not None and span.parent.span_id == int(parent_span, 16) and span.parent.is_remote

    engine = make_engine(upstream)
    seen = traced(engine)
    drive(engine, [request("not-sampled", "echo")], unsampled)
    assert seen.spans == [] and seen.tracer.open_requests == 0  # the caller's sampling decision is kept


# -- what the hooks may carry: request parameters, finish reason, content ---------------------------


def test_a_real_engine_gives_the_span_parameters_finish_reason_and_content(upstream):
    engine = make_engine(upstream)
    seen = traced(engine, capture_content=True)
    events = drive(engine, [request("content-2", MODEL, max_tokens=40, temperature=0.5, top_p=0.8)])
    text = "".join(event.text for event in events if isinstance(event, Token))
    (span,) = seen.spans
    assert span.attributes["gen_ai.request.max_tokens"] == 40
    assert (span.attributes["gen_ai.request.temperature"], span.attributes["gen_ai.request.top_p"]) == (0.5, 0.8)
    (done,) = [event for event in events if isinstance(event, Done)]
    assert span.attributes["gen_ai.response.finish_reasons"] == (done.finish_reason,)
    (message,) = json.loads(span.attributes["gen_ai.input.messages"])
    assert message["role"] == "user" and PROMPT_CANARY in message["parts"][0]["content"]
    (answer,) = json.loads(span.attributes["gen_ai.output.messages"])
    assert answer["parts"] == [{"type": "text", "content": text}] and text
    assert TOKEN_CANARY not in everything_said(span) and KEY_CANARY not in everything_said(span)


@dataclass(frozen=True)
class StartedWithRequest(RequestStarted):
    request: CompletionRequest | None = None


@dataclass(frozen=True)
class FinishedWithAnswer(RequestFinished):
    finish_reason: str | None = None
    answer: str | None = None


def _conversation() -> CompletionRequest:
    return CompletionRequest(
        session_id="content-1",
        model="gpt-4o",
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="user", content=f"Weather in Paris? {PROMPT_CANARY} api_key={KEY_CANARY}"),
            Message(
                role="assistant", tool_calls=[ToolCall(id="call-1", name="weather", arguments='{"city": "Paris"}')]
            ),
            Message(role="tool", tool_call_id="call-1", content="rainy"),
        ],
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        metadata={"authorization": f"Bearer {TOKEN_CANARY}"},
    )


def _emit_content_request(tracer: RequestTracer) -> None:
    hooks = Hooks()
    tracer.attach(hooks)
    request = object()  # the request's hook handle: its events share it
    hooks.emit(StartedWithRequest("content-1", CONTEXT, "gpt-4o", request=_conversation(), handle=request))
    hooks.emit(AttemptStarted("content-1", "openai", "gpt-4o", 1, handle=request))
    hooks.emit(
        FinishedWithAnswer(
            session_id="content-1",
            context=CONTEXT,
            status="ok",
            error_code=None,
            deployment="openai",
            model="gpt-4o-2024-08-06",
            tokens_in=30,
            tokens_out=5,
            cost=0.001,
            latency_ms=120.0,
            cache_hit=False,
            provider_type="openai",
            finish_reason="length",
            answer="It is rainy.",
            handle=request,
        )
    )


SECRET_DEPLOYMENT = Deployment(
    name="openai",
    type="openai",
    api_key=KEY_CANARY,
    base_url=f"https://u:{KEY_CANARY}@api.example.com:8443/v1?k={KEY_CANARY}",
)


def test_request_parameters_and_the_finish_reason_when_the_hooks_carry_them():
    seen = traced(deployments={"openai": SECRET_DEPLOYMENT})
    _emit_content_request(seen.tracer)
    (span,) = seen.spans
    attributes = dict(span.attributes)
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["gen_ai.request.temperature"] == 0.2 and attributes["gen_ai.request.top_p"] == 0.9
    assert attributes["gen_ai.request.stop_sequences"] == ("END",)
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert attributes["server.address"] == "api.example.com" and attributes["server.port"] == 8443
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in attributes)  # content is opt-in
    text = everything_said(span)
    assert PROMPT_CANARY not in text and KEY_CANARY not in text and TOKEN_CANARY not in text


def test_content_only_when_asked_in_the_conventions_shape_and_redacted():
    seen = traced(capture_content=True, deployments={"openai": SECRET_DEPLOYMENT})
    _emit_content_request(seen.tracer)
    (span,) = seen.spans
    inputs = json.loads(span.attributes["gen_ai.input.messages"])
    assert [message["role"] for message in inputs] == ["system", "user", "assistant", "tool"]
    assert inputs[0]["parts"] == [{"type": "text", "content": "Be brief."}]
    assert PROMPT_CANARY in inputs[1]["parts"][0]["content"]
    assert inputs[2]["parts"] == [
        {"type": "tool_call", "id": "call-1", "name": "weather", "arguments": {"city": "Paris"}}
    ]
    assert inputs[3]["parts"] == [{"type": "tool_call_response", "id": "call-1", "response": "rainy"}]
    outputs = json.loads(span.attributes["gen_ai.output.messages"])
    assert outputs == [
        {"role": "assistant", "parts": [{"type": "text", "content": "It is rainy."}], "finish_reason": "length"}
    ]
    text = everything_said(span)
    assert KEY_CANARY not in text and TOKEN_CANARY not in text  # a key typed into a prompt is redacted too


def test_a_reload_names_the_new_deployments_server():
    seen = traced()
    hooks = Hooks()
    seen.tracer.attach(hooks)
    added = Deployment(name="azure-west", type="azure", api_key=KEY_CANARY, base_url="https://west.example.net")
    hooks.emit(Reloaded(SimpleNamespace(deployments={"azure-west": added})))
    request = object()  # the request's hook handle: its events share it
    hooks.emit(RequestStarted("r-1", CONTEXT, "gpt-4o", handle=request))
    hooks.emit(
        RequestFinished("r-1", CONTEXT, "ok", None, "azure-west", "gpt-4o", 1, 1, None, 1.0, False, handle=request)
    )
    (span,) = seen.spans
    assert span.attributes["gen_ai.provider.name"] == "azure.ai.openai"  # the well-known value, from the type
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("west.example.net", 443)


@pytest.mark.parametrize(
    ("deployment", "server"),
    [
        (Deployment(name="a", type="openai"), ("api.openai.com", 443)),
        (Deployment(name="b", type="bedrock", region="eu-west-1"), ("bedrock-runtime.eu-west-1.amazonaws.com", 443)),
        (Deployment(name="c", type="ollama", base_url="gpu-box:11434"), ("gpu-box", 11434)),
        (Deployment(name="d", type="openai_compatible", base_url="http://10.0.0.5/v1"), ("10.0.0.5", 80)),
        (Deployment(name="e", type="echo"), None),
        (Deployment(name="f", type="openai", base_url="http://host:notaport/v1"), None),
    ],
)
def test_server_address_is_only_ever_a_host_and_port(deployment, server):
    assert server_of(deployment) == server


def test_no_provider_key_or_token_reaches_any_span(upstream):
    """The canary key is every deployment's; the sim quotes a refused key in its error; the token sits in
    request metadata — none of it is in any span name, attribute, event or status."""
    engine = make_engine(upstream, cache={"enabled": True})
    seen = traced(engine, capture_content=True)
    drive(
        engine,
        [
            request("ok", MODEL),
            request("failover", MODEL, providers=["flaky", "openai"]),
            request("refused", MODEL, provider="badkey"),
            request("cached-1", "echo", temperature=0),
            request("cached-2", "echo", temperature=0),
        ],
    )
    spans = seen.spans
    assert len(spans) == 5
    for span in spans:
        text = everything_said(span)
        for canary in (KEY_CANARY, TOKEN_CANARY, "sk-wrong-key"):
            assert canary not in text, f"{canary} in the span of {span.attributes['gtl.session_id']}"


# -- building a provider, the settings, the missing extra -------------------------------------------


def test_the_console_exporter_writes_one_json_line_per_span_on_standard_error(capsys):
    provider = build_tracer_provider("console", service_name="gtl-test")
    tracer = RequestTracer(provider, owns_provider=True)
    hooks = Hooks()
    tracer.attach(hooks)
    request = object()
    hooks.emit(RequestStarted("c-1", CONTEXT, "echo", handle=request))
    finished = RequestFinished("c-1", CONTEXT, "ok", None, "echo", "echo", 3, 4, 0.0, 1.0, False, provider_type="echo")
    hooks.emit(dataclasses.replace(finished, handle=request))
    tracer.close()  # shuts the provider down: its batch is written
    captured = capsys.readouterr()
    assert captured.out == ""  # a stdio gateway's standard output carries frames
    (line,) = captured.err.splitlines()
    span = json.loads(line)
    assert span["name"] == "chat echo" and span["kind"] == "SpanKind.CLIENT"
    assert span["resource"]["attributes"]["service.name"] == "gtl-test"
    assert span["context"]["trace_id"] == "0x" + TRACE_ID


def test_none_builds_no_provider_and_otlp_sends_to_the_endpoint(receiver):
    assert build_tracer_provider("none") is None
    with pytest.raises(ConfigurationError, match="unknown trace exporter"):
        build_tracer_provider("jaeger")
    provider = build_tracer_provider("otlp", endpoint=receiver.url, environ={"OTEL_SERVICE_NAME": "from-env"})
    tracer = RequestTracer(provider, owns_provider=True)
    hooks = Hooks()
    tracer.attach(hooks)
    request = object()
    hooks.emit(RequestStarted("o-1", CONTEXT, "echo", handle=request))
    hooks.emit(
        RequestFinished("o-1", CONTEXT, "error", "TIMEOUT", None, None, None, None, None, 1.0, False, handle=request)
    )
    tracer.close()
    (span,) = receiver.spans()
    assert receiver.paths == {"/v1/traces"}  # a bare collector address gets the traces path
    assert span.resource["service.name"] == "from-env" and span.name == "chat echo"
    assert span.attributes["error.type"] == "TIMEOUT" and span.status == OtlpStatus.STATUS_CODE_ERROR


def test_tracing_settings_from_the_table():
    assert TracingSettings.from_table(None) == TracingSettings(enabled=False)
    assert TracingSettings.from_table({}).enabled is False  # a table alone turns nothing on
    full = {
        "enabled": True,
        "exporter": "otlp",
        "endpoint": "https://collector.example:4318",
        "service_name": "gw",
        "capture_content": True,
    }
    assert TracingSettings.from_table(full) == TracingSettings(
        True, "otlp", "https://collector.example:4318", "gw", True
    )
    secret = f"https://user:{KEY_CANARY}@collector.example:4318"
    refused = [
        ({"enable": True}, "unknown key 'enable'"),
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"exporter": "zipkin"}, "exporter must be one of"),
        ({"exporter": "console", "endpoint": "http://c:4318"}, 'for exporter = "otlp" only'),
        ({"endpoint": "collector:4318"}, "http:// or https:// URL"),
        ({"endpoint": "http://c:port"}, "http:// or https:// URL"),
        ({"endpoint": secret}, "must not hold a user or password"),
        ({"service_name": ""}, "service_name must be a non-empty string"),
    ]
    for table, message in refused:
        with pytest.raises(ConfigurationError, match=message) as caught:
            TracingSettings.from_table(table)
        assert KEY_CANARY not in str(caught.value)


QUERY_CANARY = "OTLPQCANARY-9f1e"


@pytest.mark.parametrize("name", ["api_key", "X-Api-Key", "access_token", "sig", "password", "Authorization"])
def test_a_collector_credential_in_the_endpoints_query_is_refused_pointing_at_the_headers(name):
    # the OpenTelemetry SDK's own log quotes the endpoint, query and all, whenever an export fails
    endpoint = f"http://127.0.0.1:4318/v1/traces?tenant=a&{name}={QUERY_CANARY}"
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_HEADERS") as caught:
        TracingSettings.from_table({"enabled": True, "exporter": "otlp", "endpoint": endpoint})
    assert f"({name}=…)" in str(caught.value) and QUERY_CANARY not in str(caught.value)
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        with pytest.raises(ConfigurationError, match=f"\\${variable} must not carry a credential") as caught:
            build_tracer_provider("otlp", environ={variable: endpoint})
        assert QUERY_CANARY not in str(caught.value)
    plain = "http://127.0.0.1:4318/v1/traces?tenant=a"
    assert TracingSettings.from_table({"enabled": True, "endpoint": plain}).endpoint == plain


@pytest.mark.parametrize("logger", ["opentelemetry.exporter.otlp.proto.http.trace_exporter", "urllib3.connectionpool"])
def test_what_the_exporter_and_its_http_client_log_is_redacted(logger, caplog):
    build_tracer_provider("otlp", endpoint="http://127.0.0.1:1").shutdown()
    with caplog.at_level(logging.WARNING, logger=logger):
        logging.getLogger(logger).warning(
            "Transient error %s encountered while exporting span batch",
            f"Max retries exceeded with url: /v1/traces?api_key={QUERY_CANARY} (Bearer {QUERY_CANARY}xyz)",
        )
    assert "encountered while exporting span batch" in caplog.text and QUERY_CANARY not in caplog.text


def test_without_the_extra_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'gtl-nb\[otel\]'"):
        build_tracer_provider("otlp")
    gateway = GatewaySettings(tracing={"enabled": True})
    with pytest.raises(ConfigurationError, match=r"^\[gateway.tracing\] OpenTelemetry tracing needs .*gtl-nb\[otel\]"):
        _tracer_provider(gateway)  # before anything of the gateway opens
    assert _tracer_provider(GatewaySettings(tracing={"enabled": False})) is None
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ConfigurationError, match=r"gtl-nb\[otel\]"):
        RequestTracer()


def test_tracing_off_imports_no_opentelemetry():
    script = """
import sys
import gtl_nb
from gtl_nb.engine import tracing
from gtl_nb.gateway import server, settings
client = gtl_nb.connect(ledger=False)
assert client.complete("echo", "hi").text
assert settings.TracingSettings.from_table({"enabled": False}).enabled is False
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
print(loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


# -- a real gateway over OTLP ----------------------------------------------------------------------


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    status: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any] = field(default_factory=dict)


def _value(any_value: Any) -> Any:
    which = any_value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """An OTLP/HTTP collector on loopback that keeps every export request it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.add(self.path)
                receiver.bodies.append(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                send_body(self, 200, reply, "application/x-protobuf")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[ReceivedSpan]:
        found = []
        for body in list(self.bodies):
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append(
                            ReceivedSpan(
                                name=span.name,
                                kind=span.kind,
                                trace_id=span.trace_id.hex(),
                                status=span.status.code,
                                attributes=_attributes(span.attributes),
                                events=[(event.name, _attributes(event.attributes)) for event in span.events],
                                resource=resource,
                            )
                        )
        return found

    def clear(self) -> None:
        self.bodies.clear()
        self.paths.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    collector = OtlpReceiver()
    yield collector
    collector.close()


def gateway_config(path: Path, upstream_url: str, tracing: dict[str, Any] | None) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "providers.openai": {"api_key": KEY_CANARY, "base_url": upstream_url},
        "ledger": {"enabled": False},
    }
    if tracing is not None:
        tables["gateway.tracing"] = tracing
    return write_toml(path, tables)


@pytest.mark.slow
def test_a_real_gateway_sends_a_span_per_request_only_when_tracing_is_enabled(tmp_path, upstream, receiver):
    table = {"enabled": True, "endpoint": receiver.url, "service_name": "gtl-test-gateway"}
    config = gateway_config(tmp_path / "on.toml", upstream.good.base_url, table)
    with start_gateway(config) as served, gtl_nb.connect(served.url("http")) as client:
        answer = client.complete(MODEL, f"Hello through the gateway. {PROMPT_CANARY}")
    (span,) = receiver.spans()  # the gateway stopped: its exporter was flushed
    assert span.name == f"chat {MODEL}" and span.kind == OtlpSpan.SPAN_KIND_CLIENT
    assert span.resource["service.name"] == "gtl-test-gateway"
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.attributes["gen_ai.usage.output_tokens"] == answer.usage.tokens_out
    assert span.attributes["server.port"] == upstream.good.port
    assert [name for name, _ in span.events] == ["gtl.attempt"]
    raw = b"".join(receiver.bodies)
    assert KEY_CANARY.encode() not in raw and PROMPT_CANARY.encode() not in raw

    receiver.clear()
    environment = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces"}  # would be used, were it on
    for name, table in (("off.toml", {"enabled": False, "endpoint": receiver.url}), ("none.toml", None)):
        config = gateway_config(tmp_path / name, upstream.good.base_url, table)
        with start_gateway(config, env=environment) as served, gtl_nb.connect(served.url("http")) as client:
            assert client.complete(MODEL, "Hello again").text
        assert receiver.bodies == [], name


def run_gateway_reading_stderr(config: Path, ask: str, *, env: dict[str, str] | None = None) -> list[str]:
    """Serve ``config`` on HTTP, complete ``ask`` through it, stop it with SIGTERM: every line it printed on
    standard error, read to the end (so nothing a shutdown flushed is missed)."""
    command = [sys.executable, "-m", "gtl_nb.gateway", "--config", str(config), "--http", "127.0.0.1:0"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:
            lines.append(line)
            if "listening on " in line:
                url = line.rsplit("listening on ", 1)[1].strip()
            if line.startswith(("gtl gateway: ready", "gtl gateway: error")):
                break
        if url is None:
            raise ConfigurationError("".join(lines).strip() or "the gateway did not start")
        with gtl_nb.connect(url) as client:
            assert client.complete("echo", ask).text
        process.terminate()
        _, rest = process.communicate(timeout=60)
        lines.extend(rest.splitlines(keepends=True))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return lines


def test_a_prompt_cache_read_and_write_are_span_attributes():
    with sim.running("anthropic") as url:
        providers = {"anthropic": {"type": "anthropic", "api_key": "sim-key", "base_url": url}}
        engine = build_engine(load_settings(providers=providers, environ={}), ledger=False, hooks=Hooks())
        seen = traced(engine)
        asks = marked_prompt_twice("pc-")
        events = drive(engine, asks)
    usages = [event for event in events if isinstance(event, Usage)]
    spans = one_span_per_session(seen.spans)
    first, second = (dict(spans[f"pc-{i}"].attributes) for i in range(2))
    assert first["gen_ai.usage.cache_creation.input_tokens"] == usages[0].cache_write_tokens_in > 1024
    assert first["gen_ai.usage.cache_read.input_tokens"] == 0
    assert second["gen_ai.usage.cache_read.input_tokens"] == usages[1].cached_tokens_in > 1024
    assert second["gen_ai.usage.input_tokens"] == usages[1].tokens_in
