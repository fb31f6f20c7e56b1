"""The simulators' prompt cache: its rules, and the Anthropic and Bedrock simulators behind the official SDKs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anthropic
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gtl_nb.sim.prompt_cache import CacheUse, PromptCache, claude_minimum, prefix_key

SONNET = "claude-sonnet-4-5-20250929"  # caches a prefix of 1,024 tokens or more
KEY_ID, SECRET, REGION = "AKIDSIMULATOR", "sim-secret", "us-east-1"


def document() -> str:
    """A system prompt long enough to cache (~2,000 tokens by the simulators' estimate), unique per call."""
    marker = uuid.uuid4().hex
    return f"Charter {marker}. " + " ".join(
        f"clause {i} of the harbour charter says the tide turns at {i % 24} o'clock." for i in range(120)
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rules ------------------------------------------------------------------------------------------


def test_a_first_request_writes_and_the_next_reads():
    cache = PromptCache(clock=Clock())
    prefixes = [("system", 1500), ("turn-1", 2600)]
    assert cache.use(prefixes) == CacheUse(read=0, written=2600)
    assert cache.use(prefixes) == CacheUse(read=2600, written=0)
    # a longer conversation reads the longest prefix it shares and writes the rest
    assert cache.use([("system", 1500), ("turn-1", 2600), ("turn-2", 3100)]) == CacheUse(read=2600, written=500)


def test_a_lookup_is_read_but_never_written():
    cache = PromptCache(clock=Clock())
    assert cache.use([("turn-1", 2000)]) == CacheUse(read=0, written=2000)
    # the next turn marks only itself: the previous turn's prefix is found by looking back
    assert cache.use([("turn-2", 2600)], lookups=[("turn-1", 2000)]) == CacheUse(read=2000, written=600)
    assert cache.use([("other", 3000)], lookups=[("never-written", 2500)]) == CacheUse(read=0, written=3000)
    assert cache.use([("x", 1500)], lookups=[("never-written", 2500)]) == CacheUse(read=0, written=1500)


def test_a_prefix_under_the_minimum_is_not_cached():
    cache = PromptCache(clock=Clock(), minimum_tokens=1024)
    assert cache.use([("short", 1023)]) == CacheUse()
    assert cache.use([("short", 1023)]) == CacheUse()
    assert cache.use([("short", 1023), ("long", 1100)]) == CacheUse(read=0, written=1100)


def test_an_entry_expires_after_its_ttl_and_a_hit_renews_it():
    clock = Clock()
    cache = PromptCache(clock=clock, ttl=300.0)
    cache.use([("p", 2000)])
    clock.now += 299.0
    assert cache.use([("p", 2000)]).read == 2000  # renewed: another 300 s from now
    clock.now += 299.0
    assert cache.use([("p", 2000)]).read == 2000
    clock.now += 301.0
    assert cache.use([("p", 2000)]) == CacheUse(read=0, written=2000)


def test_the_cache_holds_a_bounded_number_of_prefixes():
    clock = Clock()
    cache = PromptCache(clock=clock, max_entries=3)
    for name in "abcde":
        cache.use([(name, 2000)])
    assert cache.use([("e", 2000)]).read == 2000
    assert cache.use([("a", 2000)]).read == 0  # the oldest went first
    assert len(cache._expiry) <= 3


def test_a_prefix_is_known_by_its_content_not_its_markers():
    marked = {"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}
    plain = {"system": [{"type": "text", "text": "x"}]}
    assert prefix_key("m", "k", marked, marker="cache_control") == prefix_key("m", "k", plain, marker="cache_control")
    point = {"system": [{"text": "x"}, {"cachePoint": {"type": "default"}}]}
    assert prefix_key("m", "k", point, marker="cachePoint") == prefix_key(
        "m", "k", {"system": [{"text": "x"}]}, marker="cachePoint"
    )
    assert prefix_key("m", "k", plain, marker="cache_control") != prefix_key(
        "m", "other", plain, marker="cache_control"
    )
    assert prefix_key("m", "k", plain, marker="cache_control") != prefix_key("n", "k", plain, marker="cache_control")


# -- Anthropic, with its SDK ----------------------------------------------------------------------------


def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="sim-key", max_retries=0)


def test_anthropic_sim_writes_then_reads_a_marked_system_prompt(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    system = [{"type": "text", "text": document(), "cache_control": {"type": "ephemeral"}}]
    ask = {"role": "user", "content": "Which clause speaks of noon?"}
    first = claude(s.base_url).messages.create(model=SONNET, max_tokens=50, system=system, messages=[ask])
    second = claude(s.base_url).messages.create(model=SONNET, max_tokens=50, system=system, messages=[ask])
    assert first.usage.cache_creation_input_tokens > 1024 and first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens  # what follows the breakpoint
    total = first.usage.input_tokens + first.usage.cache_creation_input_tokens
    assert total == second.usage.input_tokens + second.usage.cache_read_input_tokens


def test_anthropic_sim_streams_the_cache_counts(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    system = [{"type": "text", "text": document(), "cache_control": {"type": "ephemeral"}}]
    ask = [{"role": "user", "content": "Which clause speaks of noon?"}]
    counts = []
    for _ in range(2):
        with claude(s.base_url).messages.stream(model=SONNET, max_tokens=50, system=system, messages=ask) as stream:
            usage = stream.get_final_message().usage
        counts.append((usage.cache_creation_input_tokens, usage.cache_read_input_tokens))
    assert counts[0][0] > 1024 and counts[0][1] == 0
    assert counts[1] == (0, counts[0][0])


def test_anthropic_sim_caches_nothing_under_the_models_minimum(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    system = [{"type": "text", "text": document(), "cache_control": {"type": "ephemeral"}}]  # ~2,000 tokens
    for _ in range(2):  # Haiku 4.5 caches prefixes of 4,096 tokens or more
        usage = (
            claude(s.base_url)
            .messages.create(
                model="claude-haiku-4-5", max_tokens=20, system=system, messages=[{"role": "user", "content": "hi"}]
            )
            .usage
        )
        assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    assert [claude_minimum(m) for m in ("claude-opus-4-6", "claude-3-5-haiku-20241022", "claude-sonnet-4-5")] == [
        4096,
        2048,
        1024,
    ]


def test_anthropic_sim_without_markers_caches_nothing(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    system = document()
    for _ in range(2):
        usage = (
            claude(s.base_url)
            .messages.create(model=SONNET, max_tokens=20, system=system, messages=[{"role": "user", "content": "hi"}])
            .usage
        )
        assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0


def test_anthropic_sim_refuses_a_fifth_breakpoint(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    marked = {"type": "ephemeral"}
    turns = []
    for i in range(5):
        turns.append({"role": "user", "content": [{"type": "text", "text": f"turn {i}", "cache_control": marked}]})
        turns.append({"role": "assistant", "content": "ok"})
    with pytest.raises(anthropic.BadRequestError, match="A maximum of 4 blocks with cache_control"):
        claude(s.base_url).messages.create(
            model=SONNET, max_tokens=20, messages=[*turns, {"role": "user", "content": "?"}]
        )


# -- Bedrock's Converse, with boto3 ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_bearer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)  # boto3 would prefer it over SigV4


def converse_client(base_url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=base_url,
        region_name=REGION,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


@pytest.mark.parametrize("model", ["us.amazon.nova-micro-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0"])
@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_sim_writes_then_reads_a_cache_point(serve_sim: Any, model: str, stream: bool) -> None:
    s = serve_sim("bedrock", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    client = converse_client(s.base_url)
    system = [{"text": document()}, {"cachePoint": {"type": "default"}}]
    messages = [{"role": "user", "content": [{"text": "Which clause speaks of noon?"}]}]
    usages = []
    for _ in range(2):
        if stream:
            events = client.converse_stream(modelId=model, system=system, messages=messages)["stream"]
            usages.append(next(e["metadata"]["usage"] for e in events if "metadata" in e))
        else:
            usages.append(client.converse(modelId=model, system=system, messages=messages)["usage"])
    first, second = usages
    assert first["cacheWriteInputTokens"] > 1024 and first["cacheReadInputTokens"] == 0
    assert second["cacheReadInputTokens"] == first["cacheWriteInputTokens"] and second["cacheWriteInputTokens"] == 0
    assert first["inputTokens"] == second["inputTokens"]
    assert first["totalTokens"] == first["inputTokens"] + first["cacheWriteInputTokens"] + first["outputTokens"]


@pytest.mark.parametrize("model", ["meta.llama3-1-8b-instruct-v1:0", "anthropic.claude-3-haiku-20240307-v1:0"])
def test_bedrock_sim_refuses_cache_points_for_a_model_it_does_not_cache(serve_sim: Any, model: str) -> None:
    s = serve_sim("bedrock", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    system = [{"text": "rules"}, {"cachePoint": {"type": "default"}}]
    with pytest.raises(ClientError, match="cachePoint"):
        converse_client(s.base_url).converse(
            modelId=model,
            system=system,
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
        )


def test_bedrock_sim_refuses_a_fifth_cache_point(serve_sim: Any) -> None:
    s = serve_sim("bedrock", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    point = {"cachePoint": {"type": "default"}}
    messages = []
    for i in range(5):
        messages.append({"role": "user", "content": [{"text": f"turn {i}"}, point]})
        messages.append({"role": "assistant", "content": [{"text": "ok"}]})
    messages.append({"role": "user", "content": [{"text": "?"}]})
    with pytest.raises(ClientError, match="maximum of 4"):
        converse_client(s.base_url).converse(modelId="us.amazon.nova-micro-v1:0", messages=messages)


# -- the one-hour cache -----------------------------------------------------------------------------------


def test_an_hours_entry_outlives_five_minutes_and_its_writes_are_told_apart():
    clock = Clock()
    cache = PromptCache(clock=clock)
    # a system prompt kept an hour, then a turn kept five minutes: each stretch has its breakpoint's life
    assert cache.use([("system", 1500, 3600.0), ("turn", 2600, 300.0)]) == CacheUse(
        read=0, written=2600, written_1h=1500
    )
    clock.now += 600.0  # the turn is gone, the system prompt is not
    assert cache.use([("system", 1500, 3600.0), ("turn", 2600, 300.0)]) == CacheUse(
        read=1500, written=1100, written_1h=0
    )
    clock.now += 3599.0  # renewed by that hit for another hour
    assert cache.use([("system", 1500, 3600.0)]).read == 1500
    clock.now += 3601.0
    assert cache.use([("system", 1500, 3600.0)]) == CacheUse(read=0, written=1500, written_1h=1500)


def test_anthropic_sim_keeps_a_one_hour_prefix_and_says_so(serve_sim: Any) -> None:
    s = serve_sim("anthropic")
    hour = {"type": "ephemeral", "ttl": "1h"}
    system = [{"type": "text", "text": document(), "cache_control": hour}]
    ask = {"role": "user", "content": "Which clause speaks of noon?"}
    first = claude(s.base_url).messages.create(model=SONNET, max_tokens=50, system=system, messages=[ask])
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == first.usage.cache_creation_input_tokens > 1024
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 0
    s.provider.prompt_cache.clock = lambda: time.monotonic() + 1800  # half an hour later: still there
    second = claude(s.base_url).messages.create(model=SONNET, max_tokens=50, system=system, messages=[ask])
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


@pytest.mark.parametrize(
    ("system_ttl", "turn_ttl", "complaint"),
    [("5m", "1h", "must not come after"), ("2h", None, "'5m' or '1h'"), (["1h"], None, "'5m' or '1h'")],
)
def test_anthropic_sim_refuses_lifetimes_the_api_refuses(serve_sim: Any, system_ttl, turn_ttl, complaint) -> None:
    s = serve_sim("anthropic")
    system = [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral", "ttl": system_ttl}}]
    turn: dict[str, Any] = {"type": "text", "text": "q"}
    if turn_ttl:
        turn["cache_control"] = {"type": "ephemeral", "ttl": turn_ttl}
    with pytest.raises(anthropic.BadRequestError, match=complaint):
        claude(s.base_url).messages.create(
            model=SONNET, max_tokens=50, system=system, messages=[{"role": "user", "content": [turn]}]
        )


def test_bedrock_sim_keeps_an_hour_for_claude_4_5_and_reports_cache_details(serve_sim: Any) -> None:
    s = serve_sim("bedrock", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    system = [{"text": document()}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    messages = [{"role": "user", "content": [{"text": "Which clause speaks of noon?"}]}]
    usage = converse_client(s.base_url).converse(
        modelId="anthropic.claude-sonnet-4-5-20250929-v1:0", system=system, messages=messages
    )["usage"]
    assert usage["cacheDetails"] == [{"ttl": "1h", "inputTokens": usage["cacheWriteInputTokens"]}]
    with pytest.raises(ClientError, match="Extended cache TTL is not supported"):
        converse_client(s.base_url).converse(modelId="us.amazon.nova-micro-v1:0", system=system, messages=messages)


def test_a_five_minute_reread_does_not_shorten_an_hours_entry():
    clock = Clock()
    cache = PromptCache(clock=clock)
    cache.use([("system", 1500, 3600.0)])
    clock.now += 60.0
    assert cache.use([("system", 1500, 300.0)]).read == 1500  # reread by a five-minute mark
    clock.now += 1800.0  # past five minutes: the hour paid for still holds
    assert cache.use([("system", 1500, 300.0)]).read == 1500


def test_a_prompt_of_many_blocks_costs_memory_in_proportion_not_its_square():
    """Every block boundary's prefix was built up front: 100,000 system blocks drove the simulator to
    10 GB. Prefixes are built only where the cache looks (the marks and the blocks before them)."""
    import tracemalloc

    from gtl_nb.sim.anthropic import _boundaries

    blocks = [{"type": "text", "text": f"rule {n}"} for n in range(20_000)]
    blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
    body = {"model": "claude-sonnet-4-5", "system": blocks, "messages": [{"role": "user", "content": "hi"}]}
    tracemalloc.start()
    try:
        boundaries = _boundaries(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(boundaries) == 20_001 and peak < 50_000_000  # its square would be gigabytes
    prefix, marked = boundaries[19_999]
    assert marked and prefix()["system"] == blocks and prefix()["messages"] == []
