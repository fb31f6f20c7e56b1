"""The embedded client on the offline default: sync, async, in a running loop, cancelled, threaded."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import jsonschema
import pytest

import gtl_nb
from gtl_nb.protocol import (
    ConfigurationError,
    Done,
    Error,
    InvalidRequestError,
    ModelNotFoundError,
    SessionStateMachine,
    Status,
    Token,
    Tool,
    Usage,
)
from gtl_nb.protocol.errors import GTLError
from gtl_nb.providers.tokenizer import count_tokens


@pytest.fixture(scope="module")
def client():
    c = gtl_nb.connect(environ={})
    yield c
    c.close()


@pytest.fixture(scope="module")
def slow_client():
    c = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, environ={})
    yield c
    c.close()


def test_echo_works_with_no_configuration_at_all(client):
    answer = client.complete(model="echo", messages="hi")
    assert answer.text.startswith('You said: "hi". ')
    assert answer.provider == "echo" and answer.provider_type == "echo" and answer.model == "echo"
    assert answer.finish_reason == "stop" and not answer.truncated
    assert answer.cost == 0.0
    assert answer.usage.tokens_out == count_tokens(answer.text)
    assert answer.usage.tokens_in == count_tokens("hi") + 3
    assert answer.latency_ms is not None and answer.ttft_ms is not None
    assert 0 <= answer.ttft_ms <= answer.latency_ms
    assert answer.session_id.startswith("sess_")


def test_echo_is_deterministic(client):
    first = client.complete("echo", "same prompt").text
    assert client.complete("echo", "same prompt").text == first


def test_stream_yields_a_legal_event_sequence(client):
    events = list(client.stream("echo", "stream me"))
    machine = SessionStateMachine(events[0].session_id)
    for event in events:
        machine.advance(event)
    machine.end_of_stream()
    assert [e.state for e in events if isinstance(e, Status)] == ["queued", "streaming"]
    assert isinstance(events[-2], Usage) and isinstance(events[-1], Done)
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert len(tokens) > 5
    assert "".join(tokens).startswith('You said: "stream me"')


def test_on_event_callback_sees_every_event(client):
    seen = []
    answer = client.complete("echo", "callback", on_event=seen.append)
    assert seen == list(answer.events)
    assert isinstance(seen[-1], Done)


def test_async_twins():
    async def main():
        client = gtl_nb.connect(environ={})
        answer = await client.acomplete("echo", "async hi")
        events = [e async for e in client.astream("echo", "async stream")]
        return answer, events

    answer, events = asyncio.run(main())
    assert answer.text.startswith('You said: "async hi"')
    assert isinstance(events[-1], Done)


def test_sync_api_works_inside_a_running_event_loop(client):
    """A Jupyter kernel runs its code inside an event loop: the sync API must still work."""

    async def cell():
        assert asyncio.get_running_loop().is_running()
        return client.complete("echo", "from inside a loop")

    assert asyncio.run(cell()).text.startswith('You said: "from inside a loop"')


def test_many_threads_at_once(client):
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = client.complete("echo", f"thread {i}").text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(16))
    assert all(text.startswith(f'You said: "thread {i}"') for i, text in results.items())


def test_closing_a_stream_early_cancels_it(slow_client):
    stream = slow_client.stream("echo", "a long answer to interrupt")
    received = []
    for event in stream:
        received.append(event)
        if isinstance(event, Token) and len([e for e in received if isinstance(e, Token)]) == 2:
            break
    assert not stream.finished  # leaving the loop alone does not cancel: next(stream) would go on
    assert isinstance(next(stream), Token)
    stream.close()
    assert stream.finished
    last = stream.transcript.events[-1]
    assert isinstance(last, Error) and last.code == "CANCELLED"
    with pytest.raises(gtl_nb.protocol.CancelledError):
        stream.result()


def test_stream_close_before_iteration_cancels(slow_client):
    stream = slow_client.stream("echo", "never read")
    stream.close()
    assert stream.transcript.error is not None and stream.transcript.error.code == "CANCELLED"


def test_keyboard_interrupt_while_waiting_cancels_the_session(slow_client):
    seen = []
    main = threading.main_thread().ident

    def interrupt() -> None:
        while not any(isinstance(e, Token) for e in seen):
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        slow_client.complete("echo", "interrupt me please, this takes a while", on_event=seen.append)
    assert isinstance(seen[-1], Error) and seen[-1].code == "CANCELLED"


def test_async_cancellation_ends_the_session():
    async def main():
        client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, environ={})
        seen = []
        task = asyncio.ensure_future(client.acomplete("echo", "cancel me", on_event=seen.append))
        while not any(isinstance(e, Token) for e in seen):
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(main())
    assert isinstance(seen[-1], Error) and seen[-1].code == "CANCELLED"


def test_tool_calls_validate_against_each_tool_schema(client):
    tools = [
        Tool(
            name="get_weather",
            description="weather",
            parameters={
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
                "required": ["city", "days", "unit"],
            },
        ),
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "q": {"type": "string", "minLength": 3},
                        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                    },
                    "required": ["q", "tags"],
                },
            },
        },
    ]
    answer = client.complete("echo", "weather in Oslo and search", tools=tools)
    assert answer.finish_reason == "tool_calls"
    assert [c.name for c in answer.tool_calls] == ["get_weather", "search"]
    schemas = [tools[0].parameters, tools[1]["function"]["parameters"]]
    for call, schema in zip(answer.tool_calls, schemas, strict=True):
        jsonschema.validate(call.parsed_arguments, schema)


def test_tool_results_go_back_in_the_next_request(client):
    tool = Tool(
        name="lookup",
        parameters={"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]},
    )
    first = client.complete("echo", "look it up", tools=[tool])
    call = first.tool_calls[0]
    follow = client.complete(
        "echo",
        [
            {"role": "user", "content": "look it up"},
            first.message,
            {"role": "tool", "tool_call_id": call.id, "content": "42"},
        ],
        tools=[tool],
    )
    assert follow.finish_reason == "stop"
    assert f"{call.id}: 42" in follow.text


def test_max_tokens_truncates(client):
    answer = client.complete("echo", "a prompt that makes a long answer", max_tokens=4)
    assert answer.truncated and answer.usage.tokens_out == 4


def test_reasoning_only_when_asked(client):
    assert client.complete("echo", "think").reasoning == ""
    answer = client.complete("echo", "think", reasoning=True)
    assert answer.reasoning and answer.reasoning not in answer.text
    assert answer.usage.reasoning_tokens_out == count_tokens(answer.reasoning)


def test_model_names_with_colons(client):
    assert client.complete("echo:echo", "x").provider == "echo"
    # not a provider prefix: the whole string is the model, which the catalog knows as an Ollama model
    with pytest.raises(ConfigurationError, match=r"model 'llama3\.1:8b' is served by ollama.*OLLAMA_HOST"):
        client.complete("llama3.1:8b", "x")


def test_unknown_model_lists_close_matches(client):
    with pytest.raises(ModelNotFoundError, match="did you mean 'echo'"):
        client.complete("ecko", "x")


def test_catalog_model_without_its_provider_names_what_to_set(client):
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        client.complete("gpt-4o", "x")


def test_a_misspelled_keyword_of_connect_is_named_as_connect_s():
    # the user called connect: "the keyword arguments of load_config" named a function they never saw
    with pytest.raises(ConfigurationError, match=r"unknown key 'provider' in the keyword arguments of gtl_nb\.connect"):
        gtl_nb.connect(provider={"openai": {}})


def test_bad_input_is_a_clear_error(client):
    with pytest.raises(InvalidRequestError, match="messages is empty"):
        client.complete("echo", [])
    with pytest.raises(InvalidRequestError, match=r"messages\[0\] \(role 'wizard', 'x'\)"):
        client.complete("echo", [{"role": "wizard", "content": "x"}])


def test_a_bad_message_is_named_by_its_place_never_quoted_whole(client):
    document = "clause " * 5000  # a cached document is long: the error must not carry it
    with pytest.raises(InvalidRequestError) as refused:
        client.complete(
            "echo",
            [{"role": "system", "content": document, "cache_point": True, "cache_ttl": "2h"}, {"role": "user"}],
        )
    said = str(refused.value)
    assert len(said) < 200 and "messages[0] (role 'system', 'clause clause" in said and "5m or 1h" in said
    with pytest.raises(InvalidRequestError, match=r"\$\.is_error"):  # named as the dict named it
        client.complete("echo", [{"role": "tool", "content": "x", "tool_call_id": "t", "is_error": 1}])


def test_a_prompt_passed_alone_is_told_it_was_read_as_the_model(client):
    with pytest.raises(InvalidRequestError, match=r"'hello there' was read as the model") as told:
        client.complete("hello there")
    assert "complete(messages=prompt)" in str(told.value) and repr(client.default_model) in str(told.value)
    assert "hello there" in client.complete(messages="hello there").text  # as the message says
    # a model named on purpose, or messages given empty, is told only that the messages are empty
    for call in (lambda: client.complete(model="echo"), lambda: client.complete("hello there", [])):
        with pytest.raises(InvalidRequestError, match="messages is empty: pass a prompt string") as generic:
            call()
        assert "read as the model" not in str(generic.value)


def test_numpy_numbers_are_numbers(client):
    numpy = pytest.importorskip("numpy")
    request = client.request("echo", "hi", temperature=numpy.int64(1), top_p=numpy.float32(0.5))
    assert (request.temperature, request.top_p) == (1.0, 0.5) and type(request.temperature) is float


def test_providers_lists_echo_as_offline(client):
    infos = {info.provider: info for info in client.providers()}
    assert infos["echo"].offline is True
    assert [m.name for m in infos["echo"].models] == ["echo"]


def test_a_gateway_that_is_not_there_is_an_error_naming_it():
    with pytest.raises(GTLError, match=r"127\.0\.0\.1:1"):
        gtl_nb.connect("ws://127.0.0.1:1")


def test_completion_renders_as_markdown_and_text(client):
    answer = client.complete("echo", "render")
    bundle = answer._repr_mimebundle_()
    assert "echo (offline)" in bundle["text/markdown"]
    assert bundle["text/plain"].startswith('You said: "render"')


def test_a_tool_loops_steps_make_one_answer_with_the_loops_totals():
    from gtl_nb.completion import Completion

    def step(text, usage, latency_ms, ttft_ms):
        return Completion(text=text, session_id=f"s_{text}", provider="p", model="m", finish_reason="stop",
                          usage=usage, latency_ms=latency_ms, ttft_ms=ttft_ms)  # fmt: skip

    calls = step("", Usage(session_id="a", tokens_in=10, tokens_out=5, cost=0.001, cached_tokens_in=4), 300.0, 100.0)
    answer = step("sunny", Usage(session_id="b", tokens_in=30, tokens_out=7, cost=0.002), 200.0, 150.0)
    total = Completion.over_steps([calls, answer])
    assert total.text == "sunny" and total.session_id == "s_sunny" and total.steps == [calls, answer]
    assert (total.tokens_in, total.tokens_out, total.usage.cached_tokens_in) == (40, 12, 4)
    assert total.cost == pytest.approx(0.003)
    assert (total.latency_ms, total.ttft_ms) == (500.0, 100.0)
    assert total.footer().startswith("40 in (4 from prompt cache) · 12 out · $0.003000 · 2 requests · ")
    assert Completion.over_steps([total, answer]).steps == [calls, answer, answer]  # a total's steps, not it
    assert Completion.over_steps([answer]) is answer
    unreported = step("?", Usage(session_id="c", tokens_in=None, tokens_out=3, cost=None), None, None)
    partly = Completion.over_steps([calls, unreported])
    assert (partly.tokens_in, partly.tokens_out, partly.cost, partly.latency_ms) == (None, 8, None, None)
    assert "? in" in partly.footer() and "cost unknown" in partly.footer()


def test_compare_runs_models_side_by_side_and_keeps_going_past_a_failure():
    with gtl_nb.sim.running("openai", faults=gtl_nb.sim.Fault.http(401)) as url:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": url}, "echo": {}}, ledger=False, environ={}
        )
        seen: dict[str, int] = {}
        comparison = client.compare(
            ["echo", "gpt-4o-mini", "no-such-model"],
            "compare me",
            on_event=lambda model, event: seen.__setitem__(model, seen.get(model, 0) + 1),
        )
    assert comparison.completion("echo").text.startswith('You said: "compare me"')
    assert comparison.results["gpt-4o-mini"].code == "AUTH_FAILED"
    assert comparison.results["no-such-model"].code == "MODEL_NOT_FOUND"
    assert seen["echo"] > 3 and seen["gpt-4o-mini"] >= 2
    frame = comparison.to_dataframe()
    assert next(iter(frame["model"])) == "echo" and list(frame["status"]) == ["ok", "error", "error"]
    assert "AUTH_FAILED" in comparison._repr_mimebundle_()["text/markdown"]


def test_a_deployment_without_its_key_is_refused_before_any_call():
    client = gtl_nb.connect(providers={"openai": {}}, ledger=False, environ={})
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        client.complete("gpt-4o", "hi")


def test_wrongly_typed_arguments_are_a_clear_error(client):
    with pytest.raises(
        InvalidRequestError, match=r"temperature must be a number from 0 to 2, not 'hot' \(of type str\)"
    ):
        client.complete("echo", "hi", temperature="hot")


def test_route_says_where_a_model_would_go():
    with gtl_nb.sim.running("anthropic") as url:
        client = gtl_nb.connect(
            providers={"anthropic": {"api_key": "k", "base_url": url}, "echo": {}}, ledger=False, environ={}
        )
        assert client.route("echo") == [("echo", "echo", "echo")]
        assert client.route("claude-sonnet-4-5")[0][:2] == ("anthropic", "anthropic")
        with pytest.raises(ModelNotFoundError):
            client.route("ecko")


def test_the_footer_names_a_deployment_its_model_and_offline_in_one_pair_of_brackets():
    client = gtl_nb.connect(providers={"slow": {"type": "echo"}}, config={"ledger": {"enabled": False}}, environ={})
    try:
        footer = client.complete("slow:echo", "hi").footer()
    finally:
        client.close()
    assert "slow (echo, offline)" in footer and ") (" not in footer
