"""The response cache: key stability and sensitivity, cacheability, the LRU with TTL, and replay."""

from __future__ import annotations

import threading

import msgspec
import pytest
from hypothesis import given
from strategies import requests as any_request

from gtl_nb.engine.cache import (
    CacheConfig,
    CachedAnswer,
    MemoryCache,
    cache_key,
    is_cacheable,
    make_cache,
    replay,
)
from gtl_nb.protocol import (
    CompletionRequest,
    ConfigurationError,
    Done,
    Error,
    Message,
    Reasoning,
    SessionStateMachine,
    Status,
    Token,
    Tool,
    ToolCall,
    ToolCallEvent,
    Transcript,
    Usage,
)
from gtl_nb.protocol.messages import REASONING_EFFORTS


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


BASE = CompletionRequest(
    session_id="s1",
    model="gpt-4o",
    messages=[
        Message(role="system", content="Be brief."),
        Message(role="user", content="What is 2+2?", images=["data:image/png;base64,AAAA"]),
        Message(
            role="assistant",
            tool_calls=[ToolCall(id="c1", name="add", arguments='{"a": 2, "b": 2}')],
            provider_data={"signature": "xyz", "nested": {"k": [1, 2]}},
        ),
        Message(role="tool", content="4", tool_call_id="c1", name="add"),
    ],
    temperature=0.0,
    top_p=0.9,
    max_tokens=100,
    stop=["\n\n"],
    tools=[Tool(name="add", description="adds", parameters={"type": "object", "properties": {"a": {}}})],
    tool_choice="auto",
    response_format={"type": "json_object"},
    reasoning=False,
)


def key(request: CompletionRequest = BASE, deployment: str = "east", model: str = "gpt-4o") -> str:
    return cache_key(deployment, model, request)


def with_message(index: int, **changes) -> CompletionRequest:
    messages = list(BASE.messages)
    messages[index] = msgspec.structs.replace(messages[index], **changes)
    return msgspec.structs.replace(BASE, messages=messages)


# -- the key --------------------------------------------------------------------------------------


def test_key_is_a_sha256_hex_digest():
    digest = key()
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_equal_requests_give_equal_keys():
    copy = msgspec.json.decode(msgspec.json.encode(BASE), type=CompletionRequest)
    assert key(copy) == key()


@pytest.mark.parametrize(
    "changes",
    [
        {"session_id": "another"},
        {"metadata": {"user": "ann", "cell": 3}},
        {"stream": False},
        {"provider": "west"},
        {"providers": ["east", "west"]},
        {"cache": True},
    ],
    ids=lambda c: next(iter(c)),
)
def test_fields_that_do_not_shape_the_answer_leave_the_key_alone(changes):
    assert key(msgspec.structs.replace(BASE, **changes)) == key()


SENSITIVE = {
    "deployment": lambda: key(deployment="west"),
    "model": lambda: key(model="gpt-4o-mini"),
    "message content": lambda: key(with_message(1, content="What is 2+3?")),
    "message role": lambda: key(with_message(0, role="user")),
    "message images": lambda: key(with_message(1, images=["data:image/png;base64,AAAB"])),
    "message tool calls": lambda: key(with_message(2, tool_calls=[ToolCall(id="c1", name="add")])),
    "tool call id": lambda: key(with_message(3, tool_call_id="c2")),
    "message name": lambda: key(with_message(3, name="sum")),
    "provider_data": lambda: key(with_message(2, provider_data={"signature": "abc"})),
    "message order": lambda: key(msgspec.structs.replace(BASE, messages=list(reversed(BASE.messages)))),
    "tools": lambda: key(msgspec.structs.replace(BASE, tools=[Tool(name="add", description="sums")])),
    "no tools": lambda: key(msgspec.structs.replace(BASE, tools=None)),
    "tool_choice": lambda: key(msgspec.structs.replace(BASE, tool_choice={"type": "function"})),
    "response_format": lambda: key(msgspec.structs.replace(BASE, response_format={"type": "text"})),
    "temperature": lambda: key(msgspec.structs.replace(BASE, temperature=0.1)),
    "temperature unset": lambda: key(msgspec.structs.replace(BASE, temperature=None)),
    "top_p": lambda: key(msgspec.structs.replace(BASE, top_p=1.0)),
    "max_tokens": lambda: key(msgspec.structs.replace(BASE, max_tokens=101)),
    "stop": lambda: key(msgspec.structs.replace(BASE, stop=["END"])),
    "reasoning": lambda: key(msgspec.structs.replace(BASE, reasoning=True)),
    "reasoning_effort": lambda: key(msgspec.structs.replace(BASE, reasoning_effort="high")),
    "reasoning_budget": lambda: key(msgspec.structs.replace(BASE, reasoning_budget=4096)),
}


def test_each_reasoning_effort_and_budget_has_a_key_of_its_own():
    """An answer thought through at ``high`` is not the one asked at ``low`` (or with no thinking): each
    effort, and each budget, is its own question; a request without them keeps the key it always had."""
    efforts = [key(msgspec.structs.replace(BASE, reasoning_effort=e)) for e in REASONING_EFFORTS]
    budgets = [key(msgspec.structs.replace(BASE, reasoning_budget=b)) for b in (0, 1024, 1025, 32000)]
    assert len({*efforts, *budgets, key()}) == len(efforts) + len(budgets) + 1
    both = msgspec.structs.replace(BASE, reasoning_effort="low", reasoning_budget=1024)
    assert key(both) not in {*efforts, *budgets}


@pytest.mark.parametrize("field", list(SENSITIVE))
def test_every_field_that_shapes_the_answer_changes_the_key(field):
    assert SENSITIVE[field]() != key()


def test_all_sensitive_variants_are_distinct_from_each_other():
    keys = [variant() for variant in SENSITIVE.values()]
    assert len(set(keys)) == len(keys)


def test_key_does_not_depend_on_dict_order_in_nested_data():
    a = with_message(2, provider_data={"x": 1, "y": {"p": 1, "q": 2}})
    b = with_message(2, provider_data={"y": {"q": 2, "p": 1}, "x": 1})
    assert key(a) == key(b)


def test_integer_and_float_temperature_give_one_key():
    as_int = msgspec.structs.replace(BASE, temperature=1)
    assert key(as_int) == key(msgspec.structs.replace(BASE, temperature=1.0))


def test_explicit_defaults_hash_like_absent_fields():
    explicit = with_message(0, images=[], tool_calls=[], tool_call_id=None)
    assert key(explicit) == key()


def test_non_ascii_text_gives_a_stable_key():
    a = with_message(1, content="Grüße, 世界")
    assert key(a) == key(msgspec.json.decode(msgspec.json.encode(a), type=CompletionRequest))
    assert key(a) != key(with_message(1, content="Grusse, 世界"))


@given(any_request)
def test_key_ignores_session_and_metadata_for_any_request(request):
    sid = request.session_id + "x"
    other = msgspec.structs.replace(request, session_id=sid, metadata={"m": 1}, stream=True)
    assert cache_key("d", "m", other) == cache_key("d", "m", request)


# -- cacheability ---------------------------------------------------------------------------------

ON = CacheConfig(enabled=True)


@pytest.mark.parametrize(
    ("temperature", "cache", "config", "expected"),
    [
        (0.0, None, ON, True),
        (0.0, None, CacheConfig(enabled=False), False),
        (0.0, True, CacheConfig(enabled=False), False),  # the operator's switch wins
        (0.0, False, ON, False),  # per-request opt-out
        (0.7, None, ON, False),
        (0.7, True, ON, True),  # explicitly asked for
        (0.7, None, CacheConfig(enabled=True, cache_nonzero_temperature=True), True),
        (0.7, False, CacheConfig(enabled=True, cache_nonzero_temperature=True), False),
        (None, None, ON, False),  # the provider's default temperature samples
        (None, True, ON, True),
    ],
)
def test_is_cacheable(temperature, cache, config, expected):
    request = msgspec.structs.replace(BASE, temperature=temperature, cache=cache)
    assert is_cacheable(request, config) is expected


def test_cache_config_from_table():
    config = CacheConfig.from_dict(
        {
            "enabled": True,
            "ttl": 60,
            "max_entries": 10,
            "cache_nonzero_temperature": True,
            "backend": "memory",
        }
    )
    assert config == CacheConfig(True, 60, 10, True, "memory")
    assert CacheConfig.from_dict(None) == CacheConfig()
    assert CacheConfig().enabled is False


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"enable": True}, "did you mean 'enabled'"),
        ({"enabled": "yes"}, "enabled must be a bool"),
        ({"max_entries": 1.5}, "max_entries must be an int"),
        ({"ttl": "long"}, "ttl must be a float"),
        ({"ttl": 0}, "ttl must be > 0"),
        ({"backend": 3}, "backend must be a str"),
        (True, "must be a table"),
    ],
)
def test_cache_config_rejects_bad_tables(table, fragment):
    with pytest.raises(ConfigurationError, match=r"\[cache\]") as info:
        CacheConfig.from_dict(table)
    assert fragment in str(info.value)


def test_make_cache_builds_the_memory_backend_and_refuses_unknown_ones():
    cache = make_cache(CacheConfig(enabled=True, max_entries=3, ttl=5))
    assert isinstance(cache, MemoryCache)
    assert (cache.max_entries, cache.default_ttl) == (3, 5)
    with pytest.raises(ConfigurationError, match="redis"):
        make_cache(CacheConfig(backend="redis"))


# -- the memory backend ---------------------------------------------------------------------------


def answer(text: str = "4") -> CachedAnswer:
    return CachedAnswer(events=[Token("s", text), Done("s")], deployment="east", model="gpt-4o")


def test_memory_cache_returns_what_was_stored():
    cache = MemoryCache(clock=FakeClock())
    assert cache.get("k") is None
    cache.set("k", answer())
    assert cache.get("k") == answer()
    assert cache.stats() == {"entries": 1, "hits": 1, "misses": 1, "evictions": 0}


def test_memory_cache_evicts_the_least_recently_used_entry():
    cache = MemoryCache(max_entries=2, clock=FakeClock())
    cache.set("a", answer("a"))
    cache.set("b", answer("b"))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.set("c", answer("c"))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    assert len(cache) == 2
    assert cache.evictions == 1


def test_overwriting_an_entry_refreshes_it_without_evicting():
    cache = MemoryCache(max_entries=2, clock=FakeClock())
    cache.set("a", answer("a"))
    cache.set("b", answer("b"))
    cache.set("a", answer("a2"))
    cache.set("c", answer("c"))
    assert cache.get("b") is None
    assert cache.get("a") == answer("a2")


def test_memory_cache_entries_expire_after_their_ttl():
    clock = FakeClock(100.0)
    cache = MemoryCache(default_ttl=10, clock=clock)
    cache.set("default", answer())
    cache.set("short", answer(), ttl=2)
    clock.now = 101.999
    assert cache.get("short") is not None
    clock.now = 102.0
    assert cache.get("short") is None
    assert cache.get("default") is not None
    clock.now = 110.0
    assert cache.get("default") is None
    assert len(cache) == 0


def test_non_positive_ttl_stores_nothing():
    cache = MemoryCache(clock=FakeClock())
    cache.set("k", answer())
    cache.set("k", answer(), ttl=0)
    assert cache.get("k") is None


def test_delete_and_clear():
    cache = MemoryCache(clock=FakeClock())
    for name in "abc":
        cache.set(name, answer(name))
    cache.delete("a")
    cache.delete("missing")
    assert cache.get("a") is None
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_memory_cache_is_consistent_under_threads():
    cache = MemoryCache(max_entries=50, clock=FakeClock())
    stored = answer()

    def work(offset: int) -> None:
        for i in range(500):
            cache.set(f"{offset}-{i % 80}", stored)
            cache.get(f"{offset}-{(i * 7) % 80}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == 2000


# -- stored answers and their replay --------------------------------------------------------------

ORIGINAL = [
    Status("old", "queued"),
    Status("old", "streaming"),
    Reasoning("old", "adding"),
    Token("old", "The "),
    Token("old", "answer "),
    Token("old", "is 4."),
    ToolCallEvent("old", ToolCall(id="c9", name="log", arguments='{"n": 4}')),
    Usage("old", tokens_in=12, tokens_out=5, cached_tokens_in=2, reasoning_tokens_out=1, cost=0.0042),
    Done(
        "old",
        finish_reason="tool_calls",
        provider="east",
        model="gpt-4o",
        ttft_ms=120.0,
        latency_ms=900.0,
        provider_data={"signature": "sig"},
    ),
]


def stored() -> CachedAnswer:
    answer = CachedAnswer.from_events(ORIGINAL, deployment="east", model="gpt-4o", stored_at=5.0)
    assert answer is not None
    return answer


def test_cached_answer_keeps_content_usage_and_done_but_no_statuses():
    answer = stored()
    assert [type(e).__name__ for e in answer.events] == [
        "Reasoning",
        "Token",
        "Token",
        "Token",
        "ToolCallEvent",
        "Usage",
        "Done",
    ]
    assert (answer.deployment, answer.model, answer.stored_at) == ("east", "gpt-4o", 5.0)


def test_cached_answer_keeps_only_what_followed_the_last_failover():
    events = [
        Status("s", "streaming"),
        Token("s", "half an ans"),
        Status("s", "failover", from_provider="east", to_provider="west"),
        Token("s", "whole"),
        Done("s", provider="west"),
    ]
    answer = CachedAnswer.from_events(events, deployment="west", model="m")
    assert answer is not None
    assert answer.events == [Token("s", "whole"), Done("s", provider="west")]


def test_answers_that_did_not_end_in_done_are_not_stored():
    failed = [Status("s", "streaming"), Token("s", "x"), Error("s", "TIMEOUT", "slow", retryable=True)]
    assert CachedAnswer.from_events(failed, deployment="d", model="m") is None
    cut = [Status("s", "streaming"), Token("s", "x")]
    assert CachedAnswer.from_events(cut, deployment="d", model="m") is None


def test_cached_answer_survives_a_json_round_trip():
    answer = stored()
    assert msgspec.json.decode(msgspec.json.encode(answer), type=CachedAnswer) == answer


def test_replay_starts_with_cached_status_and_is_re_addressed():
    events = replay(stored(), "new-session")
    assert events[0] == Status("new-session", "cached")
    assert all(e.session_id == "new-session" for e in events)


def test_replay_streams_the_original_content_piece_by_piece():
    events = replay(stored(), "n")
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert tokens == ["The ", "answer ", "is 4."]
    assert [e.text for e in events if isinstance(e, Reasoning)] == ["adding"]
    calls = [e.function for e in events if isinstance(e, ToolCallEvent)]
    assert calls == [ToolCall(id="c9", name="log", arguments='{"n": 4}')]


def test_replay_usage_is_a_free_cache_hit_with_the_original_counts():
    usage = [e for e in replay(stored(), "n") if isinstance(e, Usage)]
    assert usage == [
        Usage(
            "n",
            tokens_in=12,
            tokens_out=5,
            cached_tokens_in=2,
            reasoning_tokens_out=1,
            cost=0.0,
            cache_hit=True,
        )
    ]


def test_replay_ends_with_the_original_done_without_its_timings():
    done = replay(stored(), "n")[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "tool_calls"
    assert (done.provider, done.model, done.provider_data) == ("east", "gpt-4o", {"signature": "sig"})
    assert done.ttft_ms is None
    assert done.latency_ms is None


def test_replay_follows_the_legal_event_order():
    for prefix in ([], [Status("n", "queued")]):  # alone, and after the engine's queued status
        machine = SessionStateMachine("n")
        transcript = Transcript("n")
        for event in [*prefix, *replay(stored(), "n")]:
            machine.advance(event)
            transcript.add(event)
        machine.end_of_stream()
        assert transcript.text == "The answer is 4."
        assert transcript.usage is not None
        assert transcript.usage.cache_hit


def test_replay_of_an_answer_without_usage_still_reports_a_free_cache_hit():
    bare = CachedAnswer(events=[Token("o", "hi"), Done("o")], deployment="east", model="m")
    events = replay(bare, "n")
    assert events[-2] == Usage("n", cost=0.0, cache_hit=True)
    assert events[-1] == Done("n", provider="east", model="m")
    machine = SessionStateMachine("n")
    for event in events:
        machine.advance(event)
    machine.end_of_stream()


def test_replay_does_not_change_the_stored_answer():
    answer = stored()
    replay(answer, "n")
    assert answer == stored()
    assert answer.events[0].session_id == "old"


@pytest.mark.parametrize("backend", ["memory", "memory://", "sqlite:///cache.db", "sqlite:////var/cache/gtl.db"])
def test_cache_backend_is_a_store_url(backend):
    assert CacheConfig.from_dict({"backend": backend}).backend == backend


@pytest.mark.parametrize(
    ("backend", "fragment"), [("postgresql://db/gtl", "holds the usage ledger only"), ("disk", "unknown store 'disk'")]
)
def test_cache_backend_mistakes_are_configuration_errors(backend, fragment):
    with pytest.raises(ConfigurationError, match=r"\[cache\] backend") as info:
        CacheConfig.from_dict({"backend": backend})
    assert fragment in str(info.value)


def test_cached_answers_survive_a_round_trip_through_json():
    answer = CachedAnswer(
        events=[
            Token(session_id="s", text="hi"),
            Usage(session_id="s", tokens_in=1, tokens_out=1),
            Done(session_id="s"),
        ],
        deployment="oa",
        model="m",
        stored_at=3.0,
    )
    assert msgspec.json.decode(msgspec.json.encode(answer), type=CachedAnswer) == answer


def test_make_cache_sends_other_backends_to_the_async_stores():
    with pytest.raises(ConfigurationError, match="open_stores"):
        make_cache(CacheConfig(backend="sqlite:///cache.db"))
