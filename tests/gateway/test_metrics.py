"""The gateway's Prometheus metrics: fed by a real engine's hooks (a failover, errors, a cache hit),
bounded labels under thousands of random model names (answered or refused), a served model no list names
under its own label, the session gauge, ``GET /metrics`` with and
without a token — and canaries that never reach the exposition."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gtl_nb import sim
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.context import RequestContext
from gtl_nb.engine.core import Engine
from gtl_nb.engine.hooks import BreakerChanged, Hooks, Reloaded, ReloadRefused, RequestFinished
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.metrics import SERVED_LABELS, Metrics, MetricsSettings, known_models, metrics_route
from gtl_nb.protocol.errors import AuthenticationError, ConfigurationError
from gtl_nb.protocol.messages import CompletionRequest, Message
from tests.gateway.conftest import marked_prompt_twice

KEY_CANARY = "sk-canary-PROVIDERKEY-9a8b7c6d5e"  # a fake provider key the simulators accept
PROMPT_CANARY = "PROMPT-CANARY-e27d10"
TOKEN_CANARY = "gtl.TOKEN-CANARY.81f0c2aa"  # stands for a GhostToken
CONTEXT = RequestContext(principal="ann-the-analyst", tenant="acme", key_id="jti-0002", peer="127.0.0.1:40000")


@pytest.fixture(scope="module")
def upstream() -> Iterator[SimpleNamespace]:
    """``good`` answers any model name; ``flaky`` answers every request with 503."""
    good = sim.serve("openai", seed=5, api_key=KEY_CANARY, models=sim.ANY_MODEL)
    flaky = sim.serve("openai", sim.Fault.http(503), seed=5, api_key=KEY_CANARY)
    yield SimpleNamespace(good=good, flaky=flaky)
    good.close()
    flaky.close()


async def _no_sleep(seconds: float) -> None:
    return None


def make_engine(upstream: SimpleNamespace, **sections: Any) -> Engine:
    providers = {
        "echo": {"type": "echo"},
        "openai": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.good.base_url},
        "flaky": {"type": "openai", "api_key": KEY_CANARY, "base_url": upstream.flaky.base_url},
        "badkey": {"type": "openai", "api_key": "sk-wrong-key-0000000000", "base_url": upstream.good.base_url},
    }
    settings = load_settings(providers=providers, environ={}, **sections)
    return build_engine(settings, ledger=False, hooks=Hooks(), sleep=_no_sleep)


def request(session_id: str, model: str, **fields: Any) -> CompletionRequest:
    message = Message(role="user", content=f"Say hello. {PROMPT_CANARY}")
    metadata = {"authorization": f"Bearer {TOKEN_CANARY}"}
    return CompletionRequest(session_id=session_id, model=model, messages=[message], metadata=metadata, **fields)


def drive(engine: Engine, requests: list[CompletionRequest], *, concurrency: int = 1) -> None:
    async def one(message: CompletionRequest) -> None:
        async for _ in engine.stream(message, context=CONTEXT):
            pass

    async def main() -> None:
        for start in range(0, len(requests), concurrency):
            await asyncio.gather(*(one(message) for message in requests[start : start + concurrency]))
        await engine.aclose()

    asyncio.run(main())


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def label_values(metrics: Metrics) -> dict[str, set[str]]:
    """Every value each label takes in the registry."""
    seen: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            for label, text in sample.labels.items():
                if label != "le":
                    seen.setdefault(label, set()).add(text)
    return seen


def test_a_real_engine_feeds_every_request_metric(upstream):
    engine = make_engine(upstream, cache={"enabled": True})
    metrics = Metrics.for_engine(engine)
    drive(
        engine,
        [
            request("ok-1", "echo"),
            request("failover-1", "gpt-4o-mini", providers=["flaky", "openai"], max_tokens=20),
            request("error-1", "gpt-4o-mini", provider="badkey"),
            request("missing-1", "no-such-model-xyz"),
            request("cached-1", "echo", temperature=0),
            request("cached-2", "echo", temperature=0),
        ],
    )
    assert value(metrics, "gtl_requests_total", provider="echo", model="echo", status="ok") == 3
    assert value(metrics, "gtl_requests_total", provider="openai", model="gpt-4o-mini", status="ok") == 1
    assert value(metrics, "gtl_requests_total", provider="badkey", model="gpt-4o-mini", status="error") == 1
    assert value(metrics, "gtl_requests_total", provider="none", model="none", status="error") == 1
    assert value(metrics, "gtl_errors_total", code="AUTH_FAILED") == 1
    assert value(metrics, "gtl_errors_total", code="MODEL_NOT_FOUND") == 1
    assert value(metrics, "gtl_retries_total", provider="flaky") >= 1
    assert value(metrics, "gtl_failovers_total", from_provider="flaky", to_provider="openai") == 1
    assert value(metrics, "gtl_cache_hits_total", provider="echo") == 1

    assert value(metrics, "gtl_tokens_total", provider="openai", model="gpt-4o-mini", direction="out") > 0
    echo_out = value(metrics, "gtl_tokens_total", provider="echo", model="echo", direction="out")
    assert echo_out > 0 and echo_out % 2 == 0  # two echo answers counted, the cached replay not
    assert value(metrics, "gtl_cost_usd_total", provider="openai", model="gpt-4o-mini") > 0
    assert value(metrics, "gtl_request_duration_seconds_count", provider="echo", model="echo") == 3
    assert value(metrics, "gtl_request_duration_seconds_count", provider="none", model="none") == 1


def test_breaker_states_from_hooks_and_from_the_engine(upstream):
    engine = make_engine(upstream)
    metrics = Metrics.for_engine(engine)
    engine.hooks.emit(BreakerChanged(deployment="flaky", old="closed", new="open"))
    assert value(metrics, "gtl_breaker_state", deployment="flaky") == 2
    engine.hooks.emit(BreakerChanged(deployment="flaky", old="open", new="half_open"))
    assert value(metrics, "gtl_breaker_state", deployment="flaky") == 1
    engine.hooks.emit(BreakerChanged(deployment="somewhere-else", old="closed", new="open"))
    assert "somewhere-else" not in label_values(metrics)["deployment"]
    asyncio.run(metrics.refresh_breakers(engine))  # the engine's own view: every circuit closed
    assert value(metrics, "gtl_breaker_state", deployment="flaky") == 0
    assert label_values(metrics)["deployment"] == {"echo", "openai", "flaky", "badkey"}


@dataclass(frozen=True)
class FinishedWithTtft(RequestFinished):
    """``RequestFinished`` with the time to first token, as the hook may carry it (docs/operations.md)."""

    ttft_ms: float | None = None


def test_time_to_first_token_when_the_hook_carries_it():
    metrics = Metrics({"openai": ["gpt-4o-mini"]})
    metrics(
        FinishedWithTtft(
            session_id="s1",
            context=CONTEXT,
            status="ok",
            error_code=None,
            deployment="openai",
            model="gpt-4o-mini",
            tokens_in=3,
            tokens_out=5,
            cost=0.001,
            latency_ms=900.0,
            cache_hit=False,
            ttft_ms=120.0,
        )
    )
    assert value(metrics, "gtl_time_to_first_token_seconds_count", provider="openai", model="gpt-4o-mini") == 1
    assert value(metrics, "gtl_time_to_first_token_seconds_sum", provider="openai", model="gpt-4o-mini") == 0.12
    assert (
        value(metrics, "gtl_time_to_first_token_seconds_bucket", provider="openai", model="gpt-4o-mini", le="0.1") == 0
    )


def random_names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase + string.digits, k=16)) for _ in range(count)]


def series(metrics: Metrics) -> int:
    return sum(len(family.samples) for family in metrics.registry.collect())


def test_labels_stay_bounded_when_requests_name_a_thousand_random_models(upstream):
    """``good`` answers any name, so each random name is served: the first ``SERVED_LABELS`` keep their
    names, every later one is ``other``, and a second thousand adds no series at all."""
    engine = make_engine(upstream)
    metrics = Metrics.for_engine(engine)
    names = random_names(1000, seed=7)
    messages = [request(f"r{i}", f"openai:{name}", max_tokens=3, stream=False) for i, name in enumerate(names)]
    drive(engine, messages, concurrency=50)
    served = value(metrics, "gtl_requests_total", provider="openai", model="other", status="ok")
    assert served == 1000 - SERVED_LABELS
    seen = label_values(metrics)
    assert len(seen["model"] & set(names)) == SERVED_LABELS
    assert seen["model"] - set(names) <= {"other"} | set().union(*known_models(engine).values())
    before = series(metrics)
    engine = make_engine(upstream)
    metrics.attach(engine.hooks)
    more = random_names(1000, seed=8)
    drive(engine, [request(f"s{i}", f"openai:{name}", max_tokens=3, stream=False) for i, name in enumerate(more)])
    assert series(metrics) == before
    assert value(metrics, "gtl_requests_total", provider="openai", model="other", status="ok") == 2000 - SERVED_LABELS


PULLED = "acme-support:7b"  # a model pulled on Ollama that the catalog does not know


def test_names_the_provider_refuses_never_get_a_label(ollama_upstream):
    """A thousand random names at the Ollama deployment that takes any name no other serves: each is
    Ollama's 404, each counts as ``other``; the model it has pulled, which no list names, keeps its own."""
    engine = ollama_engine(ollama_upstream)
    metrics = Metrics.for_engine(engine)
    pulled = PULLED
    assert pulled not in known_models(engine)["ollama"]  # (no list has it: only the answer shows it is real)
    names = random_names(1000, seed=9)
    drive(engine, [request(f"r{i}", name, max_tokens=3) for i, name in enumerate(names)], concurrency=50)
    assert value(metrics, "gtl_requests_total", provider="ollama", model="other", status="error") == 1000
    assert not label_values(metrics)["model"] & set(names)
    engine = ollama_engine(ollama_upstream)
    metrics.attach(engine.hooks)
    drive(engine, [request("p1", pulled, max_tokens=3), request("p2", f"ollama:{pulled}", max_tokens=3)])
    assert value(metrics, "gtl_requests_total", provider="ollama", model=pulled, status="ok") == 2
    assert value(metrics, "gtl_tokens_total", provider="ollama", model=pulled, direction="out") > 0
    engine = ollama_engine(ollama_upstream)
    metrics.attach(engine.hooks)
    drive(engine, [request("again", names[0], max_tokens=3)])  # refused again: still other
    assert value(metrics, "gtl_requests_total", provider="ollama", model="other", status="error") == 1001


@pytest.fixture(scope="module")
def ollama_upstream() -> Iterator[sim.Simulator]:
    served = sim.serve("ollama", seed=5, models=["llama3.2:3b", PULLED])
    yield served
    served.close()


def ollama_engine(upstream: sim.Simulator) -> Engine:
    settings = load_settings(providers={"ollama": {"type": "ollama", "base_url": upstream.base_url}}, environ={})
    return build_engine(settings, ledger=False, hooks=Hooks(), sleep=_no_sleep)


def test_a_served_name_shaped_like_a_credential_is_never_a_label():
    metrics = Metrics({"openai": ["gpt-4o"]})
    assert metrics.model_label("openai", "sk-proj-" + "a1B2c3D4" * 6, served=True) == "other"
    assert metrics.model_label("openai", "ft:gpt-4o:acme::abc123", served=True) == "ft:gpt-4o:acme::abc123"
    assert metrics.model_label("nowhere", "gpt-4o", served=True) == "other"  # (no such deployment)


def test_a_model_the_deployment_knows_keeps_its_name_and_strangers_are_other():
    metrics = Metrics({"openai": ["gpt-4o"], "echo": ["echo"]})
    assert metrics.model_label("openai", "gpt-4o") == "gpt-4o"
    assert metrics.model_label("openai", "echo") == "other"  # known elsewhere, not on this deployment
    assert metrics.provider_label("not-configured") == "other" and metrics.provider_label(None) == "none"


def test_a_refused_reload_shows_until_one_is_taken():
    metrics = Metrics({"echo": ["echo"]})
    started = value(metrics, "gtl_config_last_reload_success_timestamp_seconds")
    assert value(metrics, "gtl_config_last_reload_successful") == 1 and started > 0  # the start counts as taken
    metrics(ReloadRefused("[routing] unknown strategy 'fastest'"))
    assert value(metrics, "gtl_config_last_reload_successful") == 0
    assert value(metrics, "gtl_config_last_reload_success_timestamp_seconds") == started  # still the start's
    metrics(Reloaded(SimpleNamespace(deployments={}, provider_info=list)))
    assert value(metrics, "gtl_config_last_reload_successful") == 1
    assert value(metrics, "gtl_config_last_reload_success_timestamp_seconds") >= started


def test_open_sessions_per_transport():
    metrics = Metrics()
    metrics.session_opened("ws")
    metrics.session_opened("ws")
    metrics.session_opened("grpc")
    metrics.session_closed("ws")
    metrics.session_opened(f"carrier-pigeon-{TOKEN_CANARY}")
    assert value(metrics, "gtl_open_sessions", transport="ws") == 1
    assert value(metrics, "gtl_open_sessions", transport="grpc") == 1
    assert value(metrics, "gtl_open_sessions", transport="quic") == 0
    assert value(metrics, "gtl_open_sessions", transport="other") == 1


def test_each_metrics_object_has_its_own_registry_and_the_global_one_stays_clean():
    first, second = Metrics({"echo": ["echo"]}), Metrics({"echo": ["echo"]})
    first.session_opened("stdio")
    assert value(first, "gtl_open_sessions", transport="stdio") == 1
    assert value(second, "gtl_open_sessions", transport="stdio") == 0
    assert REGISTRY.get_sample_value("gtl_open_sessions", {"transport": "stdio"}) is None


# -- GET /metrics ------------------------------------------------------------------------------------


def authenticate(token: str | None) -> RequestContext:
    if token == TOKEN_CANARY:
        return RequestContext(principal="prometheus", key_id="jti-prom", scopes=frozenset({"usage:admin"}))
    if token == "no-scopes":
        return RequestContext(principal="someone", key_id="jti-other")
    raise AuthenticationError("the token was not accepted")


@pytest.fixture
def served(upstream) -> SimpleNamespace:
    """Metrics after a few real requests, and a client factory for apps serving them."""
    engine = make_engine(upstream)
    metrics = Metrics.for_engine(engine)
    refreshed: list[bool] = []
    drive(engine, [request("ok-1", "echo"), request("error-1", "gpt-4o-mini", provider="badkey")])

    async def refresh() -> None:
        refreshed.append(True)

    def client(**options: Any) -> TestClient:
        route = metrics_route(metrics, authenticate=authenticate, refresh=refresh, **options)
        return TestClient(Starlette(routes=[route]))

    return SimpleNamespace(metrics=metrics, client=client, refreshed=refreshed)


def test_metrics_route_with_a_token(served):
    client = served.client(require_token=True)
    assert client.get("/metrics").status_code == 401
    refused = client.get("/metrics", headers={"authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.json()["code"] == "AUTH_FAILED"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert not served.refreshed  # nothing is read for a refused caller
    answer = client.get("/metrics", headers={"authorization": f"Bearer {TOKEN_CANARY}"})
    assert answer.status_code == 200 and served.refreshed == [True]
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'gtl_requests_total{model="echo",provider="echo",status="ok"} 1.0' in answer.text
    assert 'gtl_errors_total{code="AUTH_FAILED"} 1.0' in answer.text
    assert "# TYPE gtl_request_duration_seconds histogram" in answer.text
    for canary in (TOKEN_CANARY, KEY_CANARY, PROMPT_CANARY, CONTEXT.principal, CONTEXT.key_id):
        assert canary not in answer.text


def test_metrics_route_scope_and_without_a_token(served):
    scoped = served.client(require_token=True, scope="usage:admin")
    assert scoped.get("/metrics", headers={"authorization": "Bearer no-scopes"}).status_code == 403
    assert scoped.get("/metrics", headers={"authorization": f"Bearer {TOKEN_CANARY}"}).status_code == 200
    open_ = served.client(require_token=False)
    answer = open_.get("/metrics")
    assert answer.status_code == 200 and "gtl_open_sessions" in answer.text
    openmetrics = open_.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert open_.post("/metrics").status_code == 405


def test_metrics_settings_from_the_table():
    assert not MetricsSettings.from_table(None).enabled
    settings = MetricsSettings.from_table({"require_token": False})
    assert settings.enabled and not settings.require_token
    assert MetricsSettings.from_table({}).require_token
    with pytest.raises(ConfigurationError, match="unknown key 'requre_token'"):
        MetricsSettings.from_table({"requre_token": True})
    with pytest.raises(ConfigurationError, match="true or false"):
        MetricsSettings.from_table({"enabled": "yes"})


def _gc_pause_count(metrics: Metrics, generation: str) -> float:
    return metrics.registry.get_sample_value("gtl_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_every_garbage_collection_is_timed_while_attached_and_none_after_detach():
    import gc

    metrics = Metrics()
    callbacks = len(gc.callbacks)
    metrics.attach(Hooks())
    assert len(gc.callbacks) == callbacks + 1
    metrics.attach(Hooks())  # a second engine's hooks: still one timer
    assert len(gc.callbacks) == callbacks + 1
    gc.collect()
    gc.collect(0)
    assert _gc_pause_count(metrics, "2") >= 1 and _gc_pause_count(metrics, "0") >= 1
    total = metrics.registry.get_sample_value("gtl_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and 0 < total < 60
    metrics.detach()
    assert len(gc.callbacks) == callbacks
    before = _gc_pause_count(metrics, "2")
    gc.collect()
    assert _gc_pause_count(metrics, "2") == before
    text = metrics.render()[0].decode()
    assert 'gtl_gc_pause_seconds_bucket{generation="2",le="0.001"}' in text


def test_a_start_refused_by_a_tampered_audit_log_leaves_no_gc_timer_behind(tmp_path, upstream):
    import gc

    from gtl_nb.gateway.server import open_parts
    from tests.gateway.test_audit import rewrite, write_log

    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    rewrite(path, lambda lines: [lines[0], lines[2]])
    gateway = SimpleNamespace(metrics={"require_token": False}, audit={"path": str(path)}, base=tmp_path, tracing=None)
    engine = make_engine(upstream)
    callbacks = list(gc.callbacks)
    with pytest.raises(ConfigurationError, match="failed verification"):
        asyncio.run(open_parts(None, gateway, engine=engine))  # type: ignore[arg-type]
    assert gc.callbacks == callbacks
    asyncio.run(engine.aclose())


def test_a_models_catalog_alias_keeps_its_own_label():
    # callers write the alias (the README's claude-haiku-4-5); the dated id and the alias are both known
    settings = load_settings(providers={"anthropic": {"type": "anthropic", "api_key": KEY_CANARY}}, environ={})
    known = known_models(build_engine(settings, ledger=False))
    assert {"claude-haiku-4-5", "claude-haiku-4-5-20251001", "claude-sonnet-4-5"} <= known["anthropic"]
    metrics = Metrics(known)
    assert metrics.model_label("anthropic", "claude-haiku-4-5") == "claude-haiku-4-5"
    assert metrics.model_label("anthropic", "gpt-4o") == "other"


def test_prompt_cache_reads_and_writes_are_counted_from_a_real_engine():
    """Two requests marking the same long system prompt at Anthropic: the first writes it to the
    provider's prompt cache, the second reads it."""
    with sim.running("anthropic") as url:
        providers = {"anthropic": {"type": "anthropic", "api_key": "sim-key", "base_url": url}}
        engine = build_engine(load_settings(providers=providers, environ={}), ledger=False, hooks=Hooks())
        metrics = Metrics.for_engine(engine)
        asks = marked_prompt_twice("pc")
        drive(engine, asks)
    labels = {"provider": "anthropic", "model": "claude-sonnet-4-5"}
    written = value(metrics, "gtl_prompt_cache_tokens_total", kind="write", **labels)
    assert written > 1024
    assert value(metrics, "gtl_prompt_cache_tokens_total", kind="read", **labels) == written
    assert value(metrics, "gtl_tokens_total", direction="in", **labels) > 2 * written  # a part of the input


# -- refused tokens ----------------------------------------------------------------------------------


class _Checker:
    """A token checker with a revocation list and a ``recheck`` that refuses a revoked context."""

    revocations = SimpleNamespace(loaded=False)  # never read: every token would be refused

    def __call__(self, token: str | None) -> RequestContext:
        return authenticate(token)

    def recheck(self, context: RequestContext) -> RequestContext:
        from gtl_nb.gateway.tokens.verify import REFUSED, TokenRefusedError

        if context.key_id == "jti-revoked":
            raise TokenRefusedError(REFUSED, "revoked")
        return context


def test_refusals_are_counted_at_the_check_and_the_recheck_and_the_checker_stays_reachable():
    from gtl_nb.gateway.readiness import refuses_every_token
    from gtl_nb.gateway.reload import SwappableAuthenticator
    from gtl_nb.gateway.tokens.verify import TokenRefusedError

    metrics = Metrics({"echo": ["echo"]})
    checker = _Checker()
    counting = metrics.counting_refusals(SwappableAuthenticator(checker))
    assert counting(TOKEN_CANARY).principal == "prometheus"
    with pytest.raises(AuthenticationError):
        counting("a development gateway's wrong token")  # no reason word of its own
    assert counting.recheck(CONTEXT) is CONTEXT  # (accepted: the context handed on, nothing counted)
    with pytest.raises(TokenRefusedError):
        counting.recheck(RequestContext(principal="gone", key_id="jti-revoked"))
    metrics.token_refused(TokenRefusedError("refused", "a reason nobody listed"))  # a label stays bounded
    assert value(metrics, "gtl_token_refusals_total", reason="refused") == 1
    assert value(metrics, "gtl_token_refusals_total", reason="revoked") == 1
    assert value(metrics, "gtl_token_refusals_total", reason="other") == 1
    assert counting.target is checker  # /readyz reads the revocation list behind both wrappers
    assert refuses_every_token(counting)


def test_every_reason_a_token_is_refused_for_is_a_label_value():
    """The ``reason`` label's values are ``REFUSAL_REASONS``: every reason word ``verify`` raises is one."""
    import ast
    import inspect

    from gtl_nb.gateway.tokens import verify

    raised = set()
    for node in ast.walk(ast.parse(inspect.getsource(verify))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("_Refusal", "TokenRefusedError"):
            words = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            if words:  # (not the boundary's re-raise of a ``_Refusal``'s own reason)
                raised.add(words[0] if node.func.id == "_Refusal" else words[-1])  # type: ignore[attr-defined]
    assert raised and raised <= set(verify.REFUSAL_REASONS), raised - set(verify.REFUSAL_REASONS)


def test_a_served_name_unlike_a_model_id_never_becomes_a_label(upstream):
    """A server that answers any name answers a caller's prose, address or quotes too: such a name counts
    as ``other`` however it was answered, and takes none of the deployment's ``SERVED_LABELS``."""
    engine = make_engine(upstream)
    metrics = Metrics.for_engine(engine)
    for odd in ["alice@example.com", 'say "hi"', "two words", "x" * 129, "naïve-model", "a;b"]:
        assert metrics.model_label("openai", odd, served=True) == "other", odd
    for model_id in ["gpt-4o-mini-2024-07-18", "llama3.2:3b", "ft:gpt-4o-mini:acme::x1", "org/model-7b"]:
        assert metrics.model_label("openai", model_id, served=True) == model_id
    assert metrics.model_label("openai", "alice@example.com", served=True) == "other"  # (not kept since)
