"""What one request is on each measured path, as the load client sends it.

A path is described by a ``PathSpec`` (plain data, sent to the load client process as JSON) and run by
a ``Caller`` — one per concurrent worker, holding that worker's own connection:

* ``http`` paths (``direct``, ``gtl-openai``, ``litellm``: Chat Completions; ``gtl-sse``: a GTL
  ``completion_request`` to ``POST /v1/gtl/sse``) go through ``bench.httpclient``, the same client for
  each, so its cost is paid equally.
* ``gtl`` paths (``gtl-ws``, ``gtl-grpc``, ``gtl-quic``) go through the project's own client,
  ``gtl_nb.aconnect(url, token=…)`` — its connection on the load client's own loop, as an async
  program runs it, so no thread is crossed per event — one connection per worker, ``Client.astream``.

Every path answers the same workload: ``tokens`` tokens of ``bench.upstream.TOKEN``, streamed or not.
A request is an error unless it had status 200, carried exactly ``tokens`` tokens and its path's end
(``[DONE]``, a GTL ``done``); the kind of error is counted.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.httpclient import HttpConnection, request_head
from bench.upstream import MODEL, TOKEN

PROMPT = "Say something short about benchmarks."
_TOKEN_BYTES = TOKEN.encode()


@dataclass(frozen=True)
class PathSpec:
    """How to reach one path (JSON-able, so the orchestrator can hand it to the load client)."""

    name: str
    kind: str
    """``chat`` (OpenAI Chat Completions over HTTP), ``gtl-sse`` (GTL over SSE) or ``gtl`` (the project's client)."""
    host: str = "127.0.0.1"
    port: int = 0
    url: str = ""
    """For ``gtl`` paths: what ``gtl_nb.connect`` takes."""
    token: str = ""
    verify: str | None = None
    """For ``gtl`` paths over TLS (QUIC): the CA file."""
    report_only: bool = False
    """Measured and shown, not bound by a target (gRPC, QUIC)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


GATEWAY_PATHS = ("gtl-openai", "gtl-sse", "gtl-ws", "gtl-grpc", "gtl-quic")
"""The gateway's paths: the binding three on its HTTP port, and the report-only gRPC and QUIC listeners."""


def gateway_paths(gateway: Any, files: Any, names: Iterable[str] = GATEWAY_PATHS[:3]) -> dict[str, PathSpec]:
    """The ``PathSpec`` of each of ``names`` on a running ``bench.servers.Gateway`` started with
    ``gateway_setup`` ``files`` (gRPC and QUIC only when asked: their listeners must be configured)."""
    made = {
        "gtl-openai": lambda: PathSpec("gtl-openai", "chat", port=gateway.port("http"), token=files.token),
        "gtl-sse": lambda: PathSpec("gtl-sse", "gtl-sse", port=gateway.port("http"), token=files.token),
        "gtl-ws": lambda: PathSpec("gtl-ws", "gtl", url=gateway.url("ws"), token=files.token),
        "gtl-grpc": lambda: PathSpec("gtl-grpc", "gtl", url=gateway.url("grpc"), token=files.token, report_only=True),
        "gtl-quic": lambda: PathSpec(
            "gtl-quic", "gtl", url=gateway.url("quic"), token=files.token, verify=str(files.ca), report_only=True
        ),
    }
    return {name: made[name]() for name in dict.fromkeys(names)}


@dataclass
class Outcome:
    """One request: its times (seconds) or the kind of error it ended with."""

    latency: float
    ttft: float | None
    error: str | None = None


@dataclass(frozen=True)
class Workload:
    stream: bool
    tokens: int

    @property
    def label(self) -> str:
        return f"stream {self.tokens}" if self.stream else f"whole {self.tokens}"


class Caller:
    """One worker's connection on one path."""

    async def open(self) -> None:
        """Connect (done before a phase's measured part)."""

    async def call(self, workload: Workload) -> Outcome:
        raise NotImplementedError

    async def close(self) -> None:
        """Release the connection."""


def _check(status: int, markers: int, ended: bool, expected: int, head: bytes) -> str | None:
    if status != 200:
        return f"status {status}: {head[:120].decode('utf-8', 'replace')}"
    if not ended:
        return "no end of stream"
    if markers != expected:
        return "lost tokens" if markers < expected else "extra tokens"
    return None


class ChatCaller(Caller):
    """OpenAI Chat Completions over one keep-alive connection (direct, gtl-openai, litellm)."""

    def __init__(self, spec: PathSpec, local_host: str | None = None) -> None:
        self.connection = HttpConnection(spec.host, spec.port, local_host=local_host)
        headers = {"content-type": "application/json", "authorization": f"Bearer {spec.token}"}
        self.head = request_head("POST", "/v1/chat/completions", f"{spec.host}:{spec.port}", headers)
        self.model = spec.extra.get("model", MODEL)
        self._bodies: dict[Workload, bytes] = {}

    def body(self, workload: Workload) -> bytes:
        if workload not in self._bodies:
            body: dict[str, Any] = {
                "model": self.model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": workload.tokens,
                "stream": workload.stream,
            }
            if workload.stream:
                body["stream_options"] = {"include_usage": True}
            self._bodies[workload] = json.dumps(body).encode()
        return self._bodies[workload]

    async def call(self, workload: Workload) -> Outcome:
        end = b"data: [DONE]" if workload.stream else b'"finish_reason"'
        try:
            reply = await self.connection.request(self.head, self.body(workload), _TOKEN_BYTES, end)
        except (OSError, ConnectionError, ValueError) as exc:
            return Outcome(0.0, None, f"connection: {type(exc).__name__}")
        error = _check(reply.status, reply.markers, reply.ended, workload.tokens, reply.head)
        return Outcome(reply.latency, reply.ttft if workload.stream else None, error)

    async def close(self) -> None:
        self.connection.close()


class GtlSseCaller(Caller):
    """A GTL ``completion_request`` to the gateway's SSE transport (``POST /v1/gtl/sse``)."""

    _ids = itertools.count()

    def __init__(self, spec: PathSpec, local_host: str | None = None) -> None:
        self.connection = HttpConnection(spec.host, spec.port, local_host=local_host)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "authorization": f"Bearer {spec.token}",
        }
        self.head = request_head("POST", "/v1/gtl/sse", f"{spec.host}:{spec.port}", headers)
        self.model = spec.extra.get("model", MODEL)

    def body(self, workload: Workload) -> bytes:
        return json.dumps(
            {
                "type": "completion_request",
                "session_id": f"bench-{next(self._ids)}",
                "model": self.model,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": workload.tokens,
                "stream": workload.stream,
            }
        ).encode()

    async def call(self, workload: Workload) -> Outcome:
        try:
            reply = await self.connection.request(self.head, self.body(workload), _TOKEN_BYTES, b"event: done")
        except (OSError, ConnectionError, ValueError) as exc:
            return Outcome(0.0, None, f"connection: {type(exc).__name__}")
        error = _check(reply.status, reply.markers, reply.ended, workload.tokens, reply.head)
        return Outcome(reply.latency, reply.ttft if workload.stream else None, error)

    async def close(self) -> None:
        self.connection.close()


class GtlClientCaller(Caller):
    """The project's own client over one of its transports (one ``gtl_nb.aconnect`` per worker, on
    this process's loop)."""

    def __init__(self, spec: PathSpec) -> None:
        self.spec = spec
        self.client: Any = None
        self.model = spec.extra.get("model", MODEL)

    async def open(self) -> None:
        import gtl_nb

        options = {"verify": self.spec.verify} if self.spec.verify else {}
        self.client = await gtl_nb.aconnect(self.spec.url, token=self.spec.token, **options)

    async def call(self, workload: Workload) -> Outcome:
        from gtl_nb.protocol import Done, Error, Token

        start = time.perf_counter()  # not loop.time(): uvloop's has millisecond resolution
        first: float | None = None
        count = 0
        ended = False
        error: str | None = None
        try:
            stream = self.client.astream(self.model, PROMPT, max_tokens=workload.tokens, stream=workload.stream)
            async for event in stream:
                if isinstance(event, Token):
                    if first is None:
                        first = time.perf_counter() - start
                    count += event.text.count(TOKEN)
                elif isinstance(event, Done):
                    ended = True
                elif isinstance(event, Error):
                    error = f"error {event.code}: {event.message[:100]}"
        except Exception as exc:  # the client raises its own errors for a failed session
            return Outcome(0.0, None, f"client: {type(exc).__name__}: {str(exc)[:100]}")
        latency = time.perf_counter() - start
        if error is None and not ended:
            error = "no end of stream"
        elif error is None and count != workload.tokens:
            error = "lost tokens" if count < workload.tokens else "extra tokens"
        return Outcome(latency, first if workload.stream else None, error)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


def make_caller(spec: PathSpec, local_host: str | None = None) -> Caller:
    """A worker's caller for ``spec``."""
    if spec.kind == "chat":
        return ChatCaller(spec, local_host)
    if spec.kind == "gtl-sse":
        return GtlSseCaller(spec, local_host)
    if spec.kind == "gtl":
        return GtlClientCaller(spec)
    raise ValueError(f"unknown path kind {spec.kind!r}")
