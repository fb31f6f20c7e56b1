"""Every documented configuration key has its effect — proven where it is observable (the request the
simulator receives, the routing, the ledger, the events), never in the parsed configuration object.

``docs/configuration.md`` is walked for its key tables; a documented key without a check here fails
the first test, so a key cannot be documented without an effect being shown.
"""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.backend import CostWarning, EmbeddedBackend
from gtl_nb.engine.settings import load_settings
from gtl_nb.protocol import CompletionRequest, Done, Error, Message, Reasoning, Status, Token, Usage
from gtl_nb.protocol.errors import (
    BudgetExceededError,
    ConfigurationError,
    OverloadedError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
)
from gtl_nb.providers import registry

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
MODEL = "gpt-4o-mini"
GATEWAY = "gateway"  # the gateway's keys are proven over real listeners, in tests/gateway/test_gateway_keys.py


def documented_keys() -> set[str]:
    """``section.key`` for every row of every "Key" table under a ``[section]`` heading."""
    keys: set[str] = set()
    section = None
    in_key_table = False
    for line in DOCS.read_text().splitlines():
        heading = re.match(r"#+ `\[([a-z_.<>]+)\]`", line)
        if heading:
            section = heading.group(1).replace("providers.<deployment>", "providers")
            in_key_table = False
            continue
        if line.startswith("| Key |"):
            in_key_table = True
            continue
        if not line.startswith("|"):
            in_key_table = False
            continue
        if in_key_table and section and not line.startswith("| ---"):
            first_cell = line.split("|")[1]
            keys.update(f"{section}.{key}" for key in re.findall(r"`([a-z_]+)`", first_cell))
    return keys


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client(providers=None, *, environ=None, ledger=False, home=None, **options) -> gtl_nb.Client:
    """A client built the way ``connect`` builds one, with builder injections (``sleep=``, ``clock=``…)."""
    builder = {k: options.pop(k) for k in ("sleep", "clock", "wall_clock") if k in options}
    settings = load_settings(providers=providers, environ=environ or {}, home=home, **options)
    made = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann", ledger=ledger, **builder))
    made.recorded = builder.get("sleep")
    return made


def oa(server, **extra) -> dict:
    return {"type": "openai", "api_key": "sim-key", "base_url": server.base_url, **extra}


def body(server, index: int = -1) -> dict:
    return server.requests[index].json


# -- [providers.<deployment>] -----------------------------------------------------------------------


def providers_type(tmp_path):
    with sim.serve("openai") as s:
        c = client({"mine": oa(s)})
        answer = c.complete(MODEL, "hi")
    assert answer.provider == "mine" and len(s.requests) == 1 and s.requests[0].path.endswith("/chat/completions")


def providers_api_key(tmp_path):
    with sim.serve("openai", api_key="team-key") as s:
        client({"openai": {"api_key": "team-key", "base_url": s.base_url}}).complete(MODEL, "hi")
    assert s.requests[0].headers["authorization"] == "Bearer team-key"


def providers_api_key_env(tmp_path):
    with sim.serve("openai", api_key="from-env") as s:
        c = client(
            {"openai": {"api_key_env": "TEAM_KEY", "base_url": s.base_url}},
            environ={"TEAM_KEY": "from-env", "OPENAI_API_KEY": "personal"},
        )
        c.complete(MODEL, "hi")
    assert s.requests[0].headers["authorization"] == "Bearer from-env"


def providers_base_url(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai") as b:
        client({"openai": oa(b)}).complete(MODEL, "hi")
    assert not a.requests and len(b.requests) == 1


def providers_api_version(tmp_path):
    with sim.serve("azure") as s:
        conf = {"type": "azure", "api_key": "sim-key", "base_url": s.base_url, "api_version": "2024-10-21"}
        client({"az": conf}).complete("gpt-4o-mini", "hi", provider="az")
    assert s.requests[0].query.get("api-version") == "2024-10-21"


def _bedrock(s, **extra) -> dict:
    return {"type": "bedrock", "base_url": s.base_url, **extra}


def providers_region(tmp_path):
    with sim.serve("bedrock", aws_region="eu-west-3") as s:
        keys = {"aws_access_key_id": "AKIDSIMULATOR", "aws_secret_access_key": "sim-secret"}
        client({"br": _bedrock(s, region="eu-west-3", **keys)}).complete("amazon.nova-lite-v1:0", "hi", provider="br")
    assert "/eu-west-3/bedrock/aws4_request" in s.requests[0].headers["authorization"]


def providers_aws_access_key_id(tmp_path):
    with sim.serve("bedrock", aws_access_key_id="AKIDTEAM", aws_secret_access_key="team-secret") as s:
        keys = {"aws_access_key_id": "AKIDTEAM", "aws_secret_access_key": "team-secret", "aws_session_token": "tok"}
        answer = client({"br": _bedrock(s, region="us-east-1", **keys)}).complete(
            "amazon.nova-lite-v1:0", "hi", provider="br"
        )
    headers = s.requests[0].headers
    assert answer.text and "Credential=AKIDTEAM/" in headers["authorization"]  # the secret signed it
    assert headers["x-amz-security-token"] == "tok"


providers_aws_secret_access_key = providers_aws_session_token = providers_aws_access_key_id


def providers_aws_profile(tmp_path):
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[team]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = prof-secret\n")
    with sim.serve("bedrock", aws_access_key_id="AKIDPROFILE", aws_secret_access_key="prof-secret") as s:
        c = client(
            {"br": _bedrock(s, region="us-east-1", aws_profile="team")},
            environ={"AWS_ACCESS_KEY_ID": "AKIDIGNORED", "AWS_SECRET_ACCESS_KEY": "x"},
            home=tmp_path,
        )
        c.complete("amazon.nova-lite-v1:0", "hi", provider="br")
    assert "Credential=AKIDPROFILE/" in s.requests[0].headers["authorization"]


def providers_model(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai", models=["house-model"]) as b:  # a private model
        c = client({"first": oa(a), "house": oa(b, model="house-model")})
        assert c.route("house-model")[0][0] == "house"
        c.complete("house-model", "hi")
    assert body(b)["model"] == "house-model" and not a.requests


def providers_models(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai") as b:
        c = client({"first": oa(a), "listed": oa(b, models=["gpt-4o-mini"])})
        c.complete(MODEL, "hi")
    assert len(b.requests) == 1 and not a.requests


def providers_headers(tmp_path):
    with sim.serve("openai") as s:
        client({"openai": oa(s, headers={"OpenAI-Project": "proj_x"})}).complete(MODEL, "hi")
    assert s.requests[0].headers["openai-project"] == "proj_x"


def providers_options(tmp_path):
    with sim.serve("anthropic") as s:
        conf = {"type": "anthropic", "api_key": "sim-key", "base_url": s.base_url, "options": {"max_tokens": 77}}
        client({"anthropic": conf}).complete("claude-haiku-4-5", "hi")
    assert body(s)["max_tokens"] == 77


def providers_weight(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai") as b:
        c = client({"big": oa(a, weight=3), "small": oa(b)}, routing={"strategy": "weighted"})
        served = Counter(c.complete(MODEL, f"n{i}").provider for i in range(8))
    assert served == {"big": 6, "small": 2}


def providers_timeouts(tmp_path):
    # the per-deployment first_byte reaches the HTTP runner (the global one would wait 60 s)
    with sim.serve("openai", faults=sim.Fault.slow_first_token(2.0)) as s:
        c = client({"slow": oa(s, timeouts={"first_byte": 0.3})}, routing={"retry": {"max_attempts": 1}})
        with pytest.raises(ProviderTimeoutError, match=r"first-byte timeout \(0.3 s\)"):
            c.complete(MODEL, "hi")


# -- [routing] and its sub-tables ---------------------------------------------------------------------


def routing_strategy(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai") as b:
        c = client({"a": oa(a), "b": oa(b)}, routing={"strategy": "round_robin"})
        order = [c.complete(MODEL, f"n{i}").provider for i in range(4)]
    assert order in (["a", "b", "a", "b"], ["b", "a", "b", "a"])


def routing_weights(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai") as b:
        c = client({"a": oa(a), "b": oa(b)}, routing={"strategy": "weighted", "weights": {"a": 1, "b": 3}})
        served = Counter(c.complete(MODEL, f"n{i}").provider for i in range(8))
    assert served == {"a": 2, "b": 6}


def routing_latency_alpha(tmp_path):
    # a answered slowly (0.6 s) then fast; b once in 0.3 s. With alpha = 1 only a's newest answer
    # counts (a is faster); with 0.3 its average is still about 0.42 s (b is faster)
    for alpha, expected in ((1.0, "a"), (0.3, "b")):
        with (
            sim.serve("openai", faults=[sim.Fault.slow_first_token(0.6)]) as a,
            sim.serve("openai", faults=[sim.Fault.slow_first_token(0.3)]) as b,
        ):
            c = client({"a": oa(a), "b": oa(b)}, routing={"strategy": "lowest_latency", "latency_alpha": alpha})
            c.complete(MODEL, "slow", providers=["a"])
            c.complete(MODEL, "fast", providers=["a"])
            c.complete(MODEL, "medium", providers=["b"])
            assert c.complete(MODEL, "which?").provider == expected, alpha


class _SmallContext:
    name = "cfgkeys_smallctx"
    offline = True

    def models(self):
        return []

    def generate(self, request):
        sid = request.session_id
        if request.model == "tiny":
            yield 0.0, Error(session_id=sid, code="CONTEXT_LENGTH_EXCEEDED", message="too long")
            return
        yield 0.0, Token(session_id=sid, text=f"answered by {request.model}")
        yield 0.0, Usage(session_id=sid, tokens_in=1, tokens_out=1, cost=0.0)
        yield 0.0, Done(session_id=sid)


def routing_context_fallbacks(tmp_path):
    registry.register("cfgkeys_smallctx", _SmallContext())
    c = client(
        {"ctx": {"type": "cfgkeys_smallctx", "models": ["tiny", "huge"]}},
        routing={"context_fallbacks": {"tiny": "huge"}},
    )
    assert c.complete("tiny", "a long prompt").text == "answered by huge"


def _retrying(faults, **retry):
    sleep = RecordedSleep()
    with sim.serve("openai", faults=faults) as s:
        c = client({"openai": oa(s)}, routing={"retry": retry}, sleep=sleep)
        try:
            c.complete(MODEL, "x")
        except (OverloadedError, RateLimitError):
            pass
    return s, sleep


def routing_retry_max_attempts(tmp_path):
    s, _ = _retrying([sim.Fault.http(503)] * 9, max_attempts=4, jitter=False)
    assert len(s.requests) == 4


def routing_retry_base_delay(tmp_path):
    _, sleep = _retrying([sim.Fault.http(503)] * 9, max_attempts=3, base_delay=0.25, jitter=False)
    assert sleep.delays == [0.25, 0.5]


def routing_retry_max_delay(tmp_path):
    _, sleep = _retrying([sim.Fault.http(503)] * 9, max_attempts=5, base_delay=1, max_delay=3, jitter=False)
    assert sleep.delays == [1, 2, 3, 3]


def routing_retry_multiplier(tmp_path):
    _, sleep = _retrying([sim.Fault.http(503)] * 9, max_attempts=4, base_delay=1, multiplier=3, jitter=False)
    assert sleep.delays == [1, 3, 9]


def routing_retry_jitter(tmp_path):
    _, sleep = _retrying([sim.Fault.http(503)] * 9, max_attempts=6, base_delay=1, max_delay=1, jitter=True)
    assert all(0 <= d <= 1 for d in sleep.delays) and len(set(sleep.delays)) > 1  # random, under the ceiling


def routing_retry_deadline(tmp_path):
    s, sleep = _retrying([sim.Fault.http(429, retry_after=8)], deadline=5)  # (a wait max_retry_after allows)
    assert len(s.requests) == 1 and sleep.delays == []


def routing_retry_max_retry_after(tmp_path):
    s, sleep = _retrying([sim.Fault.http(429, retry_after=8)], max_retry_after=5)
    assert len(s.requests) == 1 and sleep.delays == []
    s, sleep = _retrying([sim.Fault.http(429, retry_after=8)])  # within the default, 10 s: waited, then retried
    assert len(s.requests) == 2 and sleep.delays == [8]


def _breaker_client(faults, clock, **breaker):
    s = sim.serve("openai", faults=faults)
    c = client({"openai": oa(s)}, routing={"breaker": breaker, "retry": {"max_attempts": 1}}, clock=clock)
    return s, c


def _fail(c) -> str:
    try:
        c.complete(MODEL, "x")
    except Exception as exc:
        return str(exc)
    return "ok"


def routing_breaker_backend(tmp_path):
    # two clients on one breaker file: what the first learned opens the circuit for the second
    url = f"sqlite:///{tmp_path / 'breakers.sqlite3'}"
    routing = {"breaker": {"failure_threshold": 1, "backend": url}, "retry": {"max_attempts": 1}}
    with sim.serve("openai", faults=[sim.Fault.http(503)] * 3) as s:
        first = client({"openai": oa(s)}, routing=routing)
        second = client({"openai": oa(s)}, routing=routing)
        _fail(first)
        assert "every circuit is open" in _fail(second)
    assert len(s.requests) == 1


def routing_breaker_enabled(tmp_path):
    s, c = _breaker_client([sim.Fault.http(503)] * 5, Clock(), enabled=False, failure_threshold=1)
    with s:
        for _ in range(4):
            _fail(c)
    assert len(s.requests) == 4  # never opened


def routing_breaker_failure_threshold(tmp_path):
    s, c = _breaker_client([sim.Fault.http(503)] * 5, Clock(), failure_threshold=2)
    with s:
        messages = [_fail(c) for _ in range(3)]
    assert len(s.requests) == 2 and "every circuit is open" in messages[-1]


def routing_breaker_error_rate_threshold(tmp_path):
    faults = [sim.Fault.ok(), sim.Fault.http(503), sim.Fault.ok(), sim.Fault.http(503)]
    s, c = _breaker_client(faults, Clock(), failure_threshold=0, error_rate_threshold=0.5, min_calls=4)
    with s:
        for _ in range(5):
            _fail(c)
    assert len(s.requests) == 4  # 2 of 4 failed: open


def routing_breaker_window(tmp_path):
    clock = Clock()
    faults = [sim.Fault.http(503), sim.Fault.http(503), sim.Fault.ok(), sim.Fault.ok()]
    s, c = _breaker_client(faults, clock, failure_threshold=0, error_rate_threshold=0.5, min_calls=3, window=10)
    with s:
        _fail(c), _fail(c)
        clock.now += 11  # both failures leave the window
        _fail(c), _fail(c), _fail(c)
    assert len(s.requests) == 5  # never opened: the window never held 3 calls with half failed


def routing_breaker_min_calls(tmp_path):
    s, c = _breaker_client(
        [sim.Fault.http(503)] * 9, Clock(), failure_threshold=0, error_rate_threshold=0.5, min_calls=3
    )
    with s:
        for _ in range(5):
            _fail(c)
    assert len(s.requests) == 3


def routing_breaker_cooldown(tmp_path):
    clock = Clock()
    s, c = _breaker_client([sim.Fault.http(503), sim.Fault.ok()], clock, failure_threshold=1, cooldown=7)
    with s:
        _fail(c)
        assert "retry in 7 s" in _fail(c)
        clock.now += 7.5
        assert _fail(c) == "ok"


def routing_breaker_max_cooldown(tmp_path):
    # a 429 asking for an hour: the circuit stays open past the 7 s cooldown, up to the 60 s ceiling
    clock = Clock()
    faults = [sim.Fault.http(429, retry_after=3600), sim.Fault.ok()]
    s, c = _breaker_client(faults, clock, failure_threshold=1, cooldown=7, max_cooldown=60)
    with s:
        _fail(c)
        shown = c.breakers()["openai"]
        clock.now += 59.5
        assert "every circuit is open" in _fail(c)  # past the cooldown, not the provider's wait
        clock.now += 0.5
        assert _fail(c) == "ok"
    assert (shown["retry_in"], shown["provider_retry_after"]) == (60, 60)
    assert len(s.requests) == 2


def routing_breaker_half_open_probes(tmp_path):
    clock = Clock()
    s, c = _breaker_client([sim.Fault.http(503)], clock, failure_threshold=1, cooldown=1, half_open_probes=2)
    with s:
        _fail(c)
        clock.now += 2
        states = c.breakers()["openai"]
        assert states["state"] == "half_open"
    snap = asyncio.run(_probe_two(c))
    assert snap == ["probe", "probe", None]


async def _probe_two(c):
    store = c.backend.engine.stores.breakers
    return [await store.acquire("openai") for _ in range(3)]


# -- [cache] --------------------------------------------------------------------------------------


def cache_enabled(tmp_path):
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, cache={"enabled": True})
        first, second = (c.complete(MODEL, "same", temperature=0) for _ in range(2))
    assert len(s.requests) == 1 and second.text == first.text and second.usage.cache_hit


def cache_ttl(tmp_path):
    clock = Clock()
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, cache={"enabled": True, "ttl": 5}, clock=clock, wall_clock=clock)
        c.complete(MODEL, "same", temperature=0)
        clock.now += 6
        c.complete(MODEL, "same", temperature=0)
    assert len(s.requests) == 2


def cache_max_entries(tmp_path):
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, cache={"enabled": True, "max_entries": 1})
        for prompt in ("one", "two", "one"):
            c.complete(MODEL, prompt, temperature=0)
    assert len(s.requests) == 3  # "one" was evicted by "two"


def cache_cache_nonzero_temperature(tmp_path):
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, cache={"enabled": True, "cache_nonzero_temperature": True})
        for _ in range(2):
            c.complete(MODEL, "same", temperature=0.7)
    assert len(s.requests) == 1


def cache_backend(tmp_path):
    url = f"sqlite:///{tmp_path / 'cache.sqlite3'}"
    with sim.serve("openai") as s:
        for _ in range(2):  # two clients, as two processes would be: the second is answered from the file
            with client({"openai": oa(s)}, cache={"enabled": True, "backend": url}) as c:
                c.complete(MODEL, "same", temperature=0)
    assert len(s.requests) == 1


def cache_coalescing(tmp_path):
    import importlib.util
    import threading

    from tests.redis_server import RedisServer, find_redis_server

    if find_redis_server() is None or importlib.util.find_spec("redis") is None:
        pytest.skip("needs redis-server and redis-py (tests/engine/stores/test_redis_flights.py runs under CI)")
    server = RedisServer.start(tmp_path / "redis")
    try:
        with sim.serve("openai", pace=0.02) as s:
            # two clients, as two gateway replicas would be: their identical requests share one call
            replicas = [
                client({"openai": oa(s)}, cache={"coalescing": f"{server.url}?client_name=r{i}"}) for i in (1, 2)
            ]
            answers: list = []

            def ask(index: int) -> None:
                answers.append(replicas[index % 2].complete(MODEL, "same", temperature=0).text)

            threads = [threading.Thread(target=ask, args=(index,)) for index in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            for made in replicas:
                made.close()
    finally:
        server.stop()
    assert len(s.requests) == 1 and len(answers) == 4 and len(set(answers)) == 1


def cache_scope(tmp_path):
    # behind a gateway (the engine serving one): tests/gateway/test_cache_across_tenants.py runs a real one
    from tests.engine.test_cache_scope import ANN, BOB, CAT, cached, engine_for

    principal, shared = engine_for("principal"), engine_for("shared")
    assert [cached(principal, who) for who in (ANN, CAT, ANN)] == [False, False, True]
    assert [cached(shared, who) for who in (ANN, BOB)] == [False, True]


# -- [budgets] --------------------------------------------------------------------------------------


def budgets_requests_per_minute(tmp_path):
    c = client(budgets={"requests_per_minute": 2})
    c.complete("echo", "1"), c.complete("echo", "2")
    with pytest.raises(RateLimitError, match="requests per minute"):
        c.complete("echo", "3")


def budgets_tokens_per_minute(tmp_path):
    c = client(budgets={"tokens_per_minute": 60})
    with pytest.raises(RateLimitError, match="tokens per minute"):
        for i in range(10):
            c.complete("echo", f"a prompt with several words in it, number {i}", max_tokens=20)


def budgets_usd_per_day(tmp_path):
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, budgets={"usd_per_day": 0.0000001})
        c.complete(MODEL, "spend a little")
        with pytest.raises(BudgetExceededError):
            c.complete(MODEL, "and more")


def budgets_users(tmp_path):
    c = client(budgets={"requests_per_minute": 1, "users": {"ann": {"requests_per_minute": "unlimited"}}})
    for i in range(3):  # the client's principal is "ann"
        c.complete("echo", str(i))


def budgets_tenants(tmp_path):
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.context import RequestContext

    settings = load_settings(
        config={"budgets": {"tenants": {"acme": {"requests_per_minute": 1}}}, "ledger": {"enabled": False}}
    )
    engine = build_engine(settings, ledger=False)
    request = CompletionRequest(session_id="t", model="echo", messages=[Message(role="user", content="hi")])

    async def last_event(principal: str) -> object:
        context = RequestContext(principal=principal, tenant="acme")
        return [event async for event in engine.stream(request, context=context)][-1]

    assert isinstance(asyncio.run(last_event("ann")), Done)
    refused = asyncio.run(last_event("bob"))  # another member: the tenant's one request is used
    assert isinstance(refused, Error) and refused.code == "RATE_LIMIT"


def budgets_backend(tmp_path):
    url = f"sqlite:///{tmp_path / 'budgets.sqlite3'}"
    clock = Clock()
    first = client(budgets={"requests_per_minute": 2, "backend": url}, wall_clock=clock)
    second = client(budgets={"requests_per_minute": 2, "backend": url}, wall_clock=clock)
    first.complete("echo", "1"), second.complete("echo", "2")
    with pytest.raises(RateLimitError):  # the two clients share the count through the file
        first.complete("echo", "3")


# -- [ledger] --------------------------------------------------------------------------------------


def ledger_enabled(tmp_path):
    path = tmp_path / "l.sqlite3"
    settings = load_settings(environ={}, ledger={"enabled": False, "path": str(path)})
    c = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann"))
    c.complete("echo", "hi")
    assert c.usage().empty and c.ledger is None


def ledger_path(tmp_path):
    path = tmp_path / "l.sqlite3"
    settings = load_settings(environ={}, ledger={"path": str(path)})
    gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann")).complete("echo", "hi")
    assert list(gtl_nb.connect(ledger=path, environ={}).usage()["status"]) == ["ok"]


def ledger_url(tmp_path):
    path = tmp_path / "u.sqlite3"
    settings = load_settings(environ={}, ledger={"url": f"sqlite:///{path}"})
    gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann")).complete("echo", "hi")
    assert list(gtl_nb.connect(ledger=path, environ={}).usage()["user"]) == ["ann"]


def _old_rows(path, ages_in_days: list[float]) -> None:
    """Finished rows written ``ages_in_days`` ago, by another writer (as older sessions would have)."""
    from gtl_nb.engine.ledger import Ledger

    now = time.time()
    with Ledger(path) as old:
        for number, age in enumerate(ages_in_days):
            row = old.start(session_id=f"old-{number}", user="ann", model="echo", now=now - age * 86400)
            old.finish(row, status="ok", now=now - age * 86400 + 1)


def ledger_retention_days(tmp_path):
    path = tmp_path / "r.sqlite3"
    _old_rows(path, [10, 3])
    settings = load_settings(environ={}, ledger={"path": str(path), "retention_days": 5})
    c = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann"))
    c.complete("echo", "hi")  # opening the ledger applies retention
    c.close()
    sessions = list(gtl_nb.connect(ledger=path, environ={}).usage()["session_id"])
    assert "old-0" not in sessions and "old-1" in sessions and len(sessions) == 2


def ledger_max_rows(tmp_path):
    path = tmp_path / "m.sqlite3"
    _old_rows(path, [9, 8, 7])
    settings = load_settings(environ={}, ledger={"path": str(path), "max_rows": 2})
    c = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann"))
    c.complete("echo", "hi")
    c.close()
    sessions = list(gtl_nb.connect(ledger=path, environ={}).usage()["session_id"])
    # pruned when the ledger opened (then at most hourly): the two newest rows were kept, the new one added
    assert sessions[:2] == ["old-1", "old-2"] and len(sessions) == 3


def ledger_group_commit_ms(tmp_path):
    from unittest import mock

    from gtl_nb.engine import ledger_writer

    commits: list[int] = []
    write_batch = ledger_writer.write_batch

    def counted(conn, ops, rowids, hostname):  # every commit, the loop's and the thread's
        commits.append(len(ops))
        return write_batch(conn, ops, rowids, hostname)

    settings = load_settings(environ={}, ledger={"path": str(tmp_path / "g.sqlite3"), "group_commit_ms": 1000})
    with mock.patch.object(ledger_writer, "write_batch", counted):
        c = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann"))
        c.complete("echo", "hi")
        assert c.usage()["status"].tolist() == ["ok"]  # (a read flushes: the writer is busy from here on)
        before = len(commits)
        for _ in range(5):
            c.complete("echo", "hi")  # each a few ms: one commit each at a 5 ms window
        c.close()  # drains the queue
    assert len(commits) - before <= 2, commits  # the five rows waited for the window (or the close)


def ledger_commits(tmp_path):
    import threading
    from unittest import mock

    from gtl_nb.engine import ledger_writer

    write_batch = ledger_writer.write_batch
    for commits in ("thread", "loop"):
        threads: list[str] = []

        def recorded(conn, ops, rowids, hostname, threads=threads):
            threads.append(threading.current_thread().name)
            return write_batch(conn, ops, rowids, hostname)

        path = str(tmp_path / f"{commits}.sqlite3")
        settings = load_settings(environ={}, ledger={"path": path, "group_commit_ms": 20, "commits": commits})
        with mock.patch.object(ledger_writer, "write_batch", recorded):
            c = gtl_nb.Client(backend=EmbeddedBackend(settings, principal="ann"))
            deadline = time.monotonic() + 30
            while not threads and time.monotonic() < deadline:
                c.complete("echo", "hi")
                time.sleep(0.05)  # a window and more: whoever commits has committed
            committed = list(threads)
            c.close()
        by_writer = [name.startswith("gtl_nb ledger writer") for name in committed]
        if commits == "thread":
            assert committed and all(by_writer), committed
        else:  # the engine's loop commits (the thread only backs up a loop too late by three windows)
            assert committed and not all(by_writer), committed


def ledger_strict_durability(tmp_path):
    """A PostgreSQL ledger whose server is away spools its rows: by default a spooled row counts as written
    (``when_written``, what the audit log waits for); with ``strict_durability`` it does not."""
    import socket
    import threading

    pytest.importorskip("psycopg")
    from gtl_nb.engine.builder import build_engine
    from gtl_nb.engine.stores.postgres_pool import PostgresUnavailableError

    for strict in (False, True):
        with socket.socket() as probe:  # a loopback port nothing listens on: PostgreSQL is away
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        spool = tmp_path / f"spool-{strict}.sqlite3"
        url = f"postgresql://gtl@127.0.0.1:{port}/gtl?spool_path={spool}"
        settings = load_settings(environ={}, ledger={"url": url, "strict_durability": strict})
        engine = build_engine(settings)
        ledger = engine.stores.ledger
        called = threading.Event()

        async def answered(engine=engine, session_id=f"s-{strict}") -> None:
            request = CompletionRequest(session_id=session_id, model="echo", messages=[Message("user", "hi")])
            async for _ in engine.stream(request):
                pass

        try:
            asyncio.run(answered())
            ledger.when_written(called.set)
            deadline = time.monotonic() + 30
            while ledger.spooled < 1:
                assert time.monotonic() < deadline, "the row was never spooled"
                time.sleep(0.02)
            with pytest.raises(PostgresUnavailableError):  # a call on the ledger's loop, after the spooling
                asyncio.run(ledger.flush())
            if strict:
                assert not called.is_set()
            else:
                assert called.wait(30)
        finally:
            asyncio.run(engine.aclose())


# -- [defaults] --------------------------------------------------------------------------------------


def defaults_model(tmp_path):
    with sim.serve("openai") as s:
        client({"openai": oa(s)}, defaults={"model": MODEL}).complete(messages="hi")
    assert body(s)["model"] == MODEL


def defaults_provider(tmp_path):
    with sim.serve("openai") as a, sim.serve("openai") as b:
        client({"a": oa(a), "b": oa(b)}, defaults={"provider": "b"}).complete(MODEL, "hi")
    assert len(b.requests) == 1 and not a.requests


def defaults_providers(tmp_path):
    with sim.serve("openai", faults=sim.Fault.http(503)) as a, sim.serve("openai") as b:
        c = client({"a": oa(a), "b": oa(b)}, defaults={"providers": ["a", "b"]}, routing={"retry": {"max_attempts": 1}})
        answer = c.complete(MODEL, "hi")
    assert answer.provider == "b" and any(isinstance(e, Status) and e.state == "failover" for e in answer.events)


def defaults_system(tmp_path):
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, defaults={"system": "Be brief."})
        c.complete(MODEL, "hi")
        c.complete(MODEL, [Message(role="system", content="Mine."), Message(role="user", content="hi")])
    assert body(s, 0)["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in body(s, 1)["messages"] if m["role"] == "system"] == ["Mine."]


def defaults_temperature(tmp_path):
    with sim.serve("openai") as s:
        client({"openai": oa(s)}, defaults={"temperature": 0.3}).complete(MODEL, "hi")
    assert body(s)["temperature"] == 0.3


def defaults_max_tokens(tmp_path):
    with sim.serve("openai") as s:
        client({"openai": oa(s)}, defaults={"max_tokens": 42}).complete(MODEL, "hi")
    assert 42 in (body(s).get("max_tokens"), body(s).get("max_completion_tokens"))


def defaults_reasoning(tmp_path):
    answer = client(defaults={"reasoning": True}).complete("echo", "think first")
    assert any(isinstance(e, Reasoning) for e in answer.events)


def defaults_reasoning_effort(tmp_path):
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, defaults={"reasoning_effort": "high"})
        c.complete("o4-mini", "hi")
        c.complete("o4-mini", "hi", reasoning_effort="low")  # a caller's own replaces the default
        c.complete("o4-mini", "hi", reasoning_budget=0)  # … in either unit (0: o4-mini's least, it cannot stop)
    assert [body(s, i).get("reasoning_effort") for i in range(3)] == ["high", "low", "low"]
    with pytest.raises(ConfigurationError, match=r"reasoning_effort must be one of 'none', 'minimal'.*got 'huge'"):
        load_settings(environ={}, defaults={"reasoning_effort": "huge"})


def defaults_reasoning_budget(tmp_path):
    with sim.serve("anthropic") as s:
        providers = {"anthropic": {"type": "anthropic", "api_key": "sim-key", "base_url": s.base_url}}
        client(providers, defaults={"reasoning_budget": 3000}).complete("claude-sonnet-4-5", "hi", max_tokens=5000)
    assert body(s)["thinking"] == {"type": "enabled", "budget_tokens": 3000} and body(s)["max_tokens"] == 5000
    with pytest.raises(ConfigurationError, match="reasoning_budget must not be negative"):
        load_settings(environ={}, defaults={"reasoning_budget": -1})


def defaults_warn_cost_usd(tmp_path):
    prompt = "word " * 4000  # about 5,000 tokens of gpt-4o input: about $0.0125
    with sim.serve("openai") as s:
        c = client({"openai": oa(s)}, defaults={"warn_cost_usd": 0.01})
        with pytest.warns(CostWarning, match=r"cost about \$0\.01"):
            c.complete("gpt-4o", prompt)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CostWarning)
            c.complete("gpt-4o", "a short one costs less than the threshold")
    assert len(s.requests) == 2  # a warning, never a refusal


# -- [timeouts] ---------------------------------------------------------------------------------------


def timeouts_connect(tmp_path):
    # a listening socket that never accepts, its backlog full: connecting hangs until the timeout
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        c = client(
            {"openai": {"type": "openai", "api_key": "k", "base_url": url}},
            timeouts={"connect": 0.3},
            routing={"retry": {"max_attempts": 1}},
        )
        with pytest.raises((ProviderTimeoutError, ProviderUnavailableError), match=r"connect timeout \(0.3 s\)"):
            c.complete(MODEL, "hi")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def timeouts_first_byte(tmp_path):
    with sim.serve("openai", faults=sim.Fault.slow_first_token(2.0)) as s:
        c = client({"openai": oa(s)}, timeouts={"first_byte": 0.3}, routing={"retry": {"max_attempts": 1}})
        with pytest.raises(ProviderTimeoutError, match="first-byte"):
            c.complete(MODEL, "hi")


def timeouts_idle(tmp_path):
    with sim.serve("openai", faults=sim.Fault.stall(after=1, seconds=2.0)) as s:
        c = client({"openai": oa(s)}, timeouts={"idle": 0.3}, routing={"retry": {"max_attempts": 1}})
        with pytest.raises(ProviderTimeoutError, match="idle"):
            c.complete(MODEL, "hi")


# -- [upstream] ---------------------------------------------------------------------------------------


def upstream_client(tmp_path):
    from gtl_nb.engine.aiohttp_transport import AiohttpTransport
    from gtl_nb.engine.httptools_transport import HttptoolsTransport
    from gtl_nb.engine.httpx_transport import HttpxTransport

    with sim.serve("openai") as s:
        default = client({"openai": oa(s)})
        assert isinstance(default.backend.engine.http.transport, HttptoolsTransport)
        default.close()
        for name, kind in (("httpx", HttpxTransport), ("aiohttp", AiohttpTransport), ("httptools", HttptoolsTransport)):
            c = client({"openai": oa(s)}, upstream={"client": name})
            assert isinstance(c.backend.engine.http.transport, kind)
            assert c.complete(MODEL, "hi").text
            c.close()


def _second_request_waits_for_the_first(limit: dict) -> None:
    """With one connection allowed, a second request waits for the first stream's connection, and that
    wait counts against its first-byte timeout; without the bound both run at once."""
    with sim.serve("openai", pace=0.1) as s:
        for bounded in (True, False):
            c = client(
                {"openai": oa(s)},
                upstream=limit if bounded else {},
                timeouts={"first_byte": 0.5},
                routing={"retry": {"max_attempts": 1}},
            )
            first = iter(c.stream(MODEL, "a long answer, please " * 20))
            next(first)  # the first stream holds its connection
            if bounded:
                with pytest.raises(ProviderTimeoutError, match="first-byte"):
                    c.complete(MODEL, "and another")
            else:
                assert c.complete(MODEL, "and another").text
            c.close()


def upstream_max_connections(tmp_path):
    _second_request_waits_for_the_first({"max_connections": 1})


def upstream_max_connections_per_host(tmp_path):
    _second_request_waits_for_the_first({"max_connections_per_host": 1})


# -- the table ----------------------------------------------------------------------------------------

EFFECTS: dict[str, Callable] = {
    name.replace("_", ".", 1): check
    for name, check in dict(globals()).items()
    if callable(check)
    and name.split("_", 1)[0]
    in ("providers", "routing", "cache", "budgets", "ledger", "defaults", "timeouts", "upstream")
    and not name.startswith("_")
}
# sub-tables: routing.retry.x and routing.breaker.x
EFFECTS = {re.sub(r"^routing\.(retry|breaker)_", r"routing.\1.", key): check for key, check in EFFECTS.items()}


def test_every_documented_key_has_a_check():
    documented = documented_keys()
    assert len(documented) > 40, "the key tables of docs/configuration.md were not found"
    served = {key for key in documented if not key.startswith(GATEWAY + ".")}
    missing = sorted(served - set(EFFECTS))
    assert not missing, f"documented keys without a proven effect: {missing}"
    stale = sorted(set(EFFECTS) - served)
    assert not stale, f"checks for keys the docs do not list: {stale}"


def test_an_unknown_key_is_refused_with_its_close_match():
    with pytest.raises(ConfigurationError, match="did you mean 'first_byte'"):
        load_settings(environ={}, timeouts={"first_bite": 3})


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_the_key_has_its_effect(key, tmp_path):
    EFFECTS[key](tmp_path)
