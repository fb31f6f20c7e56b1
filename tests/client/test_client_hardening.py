"""Bad arguments get a library error that says what to pass, and the caller and the ledger always agree
on how a session ended — also when it is cancelled at the last moment or from a loop that has closed."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.backend import ContextFallbackWarning
from gtl_nb.engine.ledger import Ledger, LedgerLocationError
from gtl_nb.engine.stores.sqlite import SqliteUsageLedger
from gtl_nb.protocol import Done, Error, Token
from gtl_nb.protocol.errors import ConfigurationError, ContextLengthExceededError, GTLError, InvalidRequestError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def client(ledger_path):
    opened = gtl_nb.connect(ledger=ledger_path, environ={})
    yield opened
    opened.close()


def nested(depth: int) -> dict:
    root: dict = {}
    node = root
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


BAD_ARGUMENTS = {
    "messages an int": ({"messages": 5}, "messages must be a prompt string"),
    "messages bytes": ({"messages": b"hi"}, "messages must be a prompt string"),
    "a lone surrogate in the prompt": ({"messages": "caf\udce9"}, "unpaired surrogate"),
    "a lone surrogate in the system prompt": ({"messages": "hi", "system": "\ud800"}, "unpaired surrogate"),
    "a lone surrogate in metadata": ({"messages": "hi", "metadata": {"k": "\udfff"}}, "unpaired surrogate"),
    "deeply nested metadata": ({"messages": "hi", "metadata": nested(5000)}, "metadata nests deeper than"),
    "deeply nested response_format": ({"messages": "hi", "response_format": nested(200)}, "response_format nests"),
    "a deeply nested tool schema": (
        {"messages": "hi", "tools": [{"name": "t", "parameters": nested(300)}]},
        "tool definition nests deeper",
    ),
    "a deeply nested message": ({"messages": [{"role": "user", "content": [nested(300)]}]}, "message nests deeper"),
    "providers a string": ({"messages": "hi", "providers": "echo"}, "providers=['echo']"),
    "providers with a number": ({"messages": "hi", "providers": ["echo", 3]}, "non-empty strings"),
    "provider a list": ({"messages": "hi", "provider": ["echo"]}, "provider must be one deployment name"),
    "temperature nan": ({"messages": "hi", "temperature": math.nan}, "temperature must be a finite number"),
    "temperature inf": ({"messages": "hi", "temperature": math.inf}, "temperature must be a finite number"),
    "top_p -inf": ({"messages": "hi", "top_p": -math.inf}, "top_p must be a finite number"),
    "temperature a string": (
        {"messages": "hi", "temperature": "0.2"},
        "temperature must be a number from 0 to 2, not '0.2' (of type str)",
    ),
    "temperature too high": ({"messages": "hi", "temperature": 5}, "temperature must be a number from 0 to 2, not 5"),
    "temperature below 0": ({"messages": "hi", "temperature": -0.5}, "temperature must be a number from 0 to 2"),
    "top_p above 1": ({"messages": "hi", "top_p": 7}, "top_p must be a number from 0 to 1, not 7"),
    "stop a number": ({"messages": "hi", "stop": 5}, "stop must be a string or a list of strings, not int"),
    "stop holding a number": ({"messages": "hi", "stop": ["END", 3]}, "one of them is not a string"),
    "max_tokens zero": ({"messages": "hi", "max_tokens": 0}, "max_tokens must be a positive integer"),
    # no model writes that many, and a provider reads the number as a 32-bit integer
    "max_tokens past 2**31 - 1": ({"messages": "hi", "max_tokens": 2**31}, "max_tokens must be at most 2,147,483,647"),
    "max_tokens 10**30": ({"messages": "hi", "max_tokens": 10**30}, "max_tokens must be at most 2,147,483,647"),
    "an ftp: image URL": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
        "messages[0] (role 'user'): an image URL must be https:, http: or data: (base64), not ftp:",
    ),
    "a file: image in images": (
        {"messages": [{"role": "user", "content": "x", "images": ["file:///etc/passwd"]}]},
        "an image URL must be https:, http: or data: (base64), not file:",
    ),
    "a data: image whose base64 is not": (
        {"messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,iVBOR w0KGgo"]}]},
        "the image's data is not valid base64",
    ),
    "a data: image part cut short": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:,x"}},
                        {"type": "image", "url": "data:image/png;base64,iVBORw0"},
                    ],
                }
            ]
        },
        "7 characters, not a multiple of 4 (cut short, or not padded with =) (the message's images[1])",
    ),
    "temperature past a float's range": ({"messages": "hi", "temperature": 10**400}, "from 0 to 2, not 1000000"),
    "top_p past the digits an int shows": ({"messages": "hi", "top_p": 10**5000}, "from 0 to 1, not <int too long"),
    "one tool not in a list": (
        {"messages": "hi", "tools": {"name": "t", "parameters": {"type": "object"}}},
        "tools takes a list of tools (gtl_nb.Tool or dicts), not one dict: put it in a list",
    ),
    "a function as a tool": ({"messages": "hi", "tools": [len]}, "gtl_nb.tool_from_function(len) builds one"),
    "metadata holding a function": ({"messages": "hi", "metadata": {"f": len}}, "metadata holds a value JSON cannot"),
    "a tool schema holding an object": (
        {"messages": "hi", "tools": [{"name": "t", "parameters": {"type": "object", "x": object()}}]},
        "tools holds a value JSON cannot carry",
    ),
}


@pytest.mark.parametrize("arguments, says", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_bad_arguments_are_refused_with_a_library_error_before_anything_is_sent(client, ledger_path, arguments, says):
    for call in (client.request, client.complete):
        with pytest.raises(InvalidRequestError) as caught:
            call("echo", **arguments)
        assert says in str(caught.value)
        assert "\n" not in str(caught.value)
    assert Ledger(ledger_path).to_dataframe().empty  # nothing was sent, so nothing was recorded


def test_an_on_event_that_cannot_be_called_is_refused_before_anything_is_sent(client, ledger_path):
    # it failed at the first event, a TypeError from inside the stream, the session already started
    with pytest.raises(InvalidRequestError, match="on_event must be a function, called with each event; not 5"):
        client.complete("echo", "hi", on_event=5)
    with pytest.raises(InvalidRequestError, match="on_event must be a function"):
        client.stream("echo", "hi", on_event="print")
    with pytest.raises(InvalidRequestError, match="on_event must be a function"):
        asyncio.run(client.acomplete("echo", "hi", on_event=5))
    with pytest.raises(InvalidRequestError, match="on_event must be a function"):
        client.compare(["echo"], "hi", on_event=5)
    assert Ledger(ledger_path).to_dataframe().empty


def test_a_request_built_by_hand_is_checked_as_the_wire_checks_it(client, ledger_path):
    """``request=`` (and a batch's ``CompletionRequest`` items) skipped every check: the embedded
    engine answered ``max_tokens=0`` with an empty ``length`` answer that every transport refuses, and
    an empty session id broke the HTTP client's matching of events to sessions."""
    from gtl_nb.protocol import CompletionRequest, Message

    hello = [Message(role="user", content="hi")]
    for bad, says in (
        (CompletionRequest(session_id="s1", model="echo", messages=hello, max_tokens=0), "max_tokens"),
        (CompletionRequest(session_id="s1", model="echo", messages=hello, max_tokens=2**64), "max_tokens"),
        (CompletionRequest(session_id="s1", model="echo", messages=hello, temperature=5.0), "temperature"),
        (CompletionRequest(session_id="", model="echo", messages=hello), "session_id is empty"),
        (CompletionRequest(session_id="s1", model="echo", messages="hi"), "messages"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidRequestError, match=says):
            client.complete(request=bad)
        with pytest.raises(InvalidRequestError, match=says):
            list(client.stream(request=bad))
        with pytest.raises(InvalidRequestError, match=says):
            asyncio.run(client.acomplete(request=bad))
        (refused,) = client.batch([bad])
        assert isinstance(refused, InvalidRequestError) and says in str(refused)
    with pytest.raises(InvalidRequestError, match="takes a CompletionRequest, not dict"):
        client.complete(request={"model": "echo"})
    assert Ledger(ledger_path).to_dataframe().empty  # nothing was sent
    good = CompletionRequest(session_id="s2", model="echo", messages=hello, max_tokens=3)
    assert client.complete(request=good).session_id == "s2"


def test_a_misspelt_keyword_names_the_likely_one(client, ledger_path):
    """The interpreter's own message named ``Client.request()`` — which the caller never called —
    and suggested nothing."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'; did you mean 'temperature'"):
        client.complete("echo", "hi", temprature=0.5)
    with pytest.raises(TypeError, match="did you mean 'max_tokens'"):
        client.stream("echo", "hi", max_token=3)
    with pytest.raises(TypeError, match="did you mean 'max_tokens'"):
        asyncio.run(client.acomplete("echo", "hi", max_token=3))
    with pytest.raises(TypeError, match="'colour'; a request takes cache, max_tokens"):
        client.complete("echo", "hi", colour="red")
    with pytest.raises(InvalidRequestError, match=r"system must be text \(a str\), not int"):
        client.complete("echo", "hi", system=5)
    # compare and batch name it too (their defaults and a batch's dict items)
    with pytest.raises(TypeError, match="did you mean 'temperature'"):
        client.compare(["echo"], "hi", temprature=0.5)
    with pytest.raises(TypeError, match="did you mean 'temperature'"):
        client.batch(["hi"], temprature=0.5)
    with pytest.raises(TypeError, match="did you mean 'messages'"):
        client.batch([{"model": "echo", "mesages": "hi"}])
    # a request given whole carries its own options: one given beside it was silently dropped
    request = client.request("echo", "hi")
    with pytest.raises(TypeError, match="request= carries its own options; temperature would be ignored"):
        client.complete(request=request, temperature=0.2)
    with pytest.raises(TypeError, match="model would be ignored"):
        client.stream("echo", request=request)
    with pytest.raises(TypeError, match="; temperature would be ignored"):  # messages=None is no messages
        client.complete(request=request, messages=None, temperature=0.5)
    with pytest.raises(TypeError, match="; messages would be ignored"):
        client.complete(request=request, messages=("hi",))
    with pytest.raises(TypeError, match="keywords must be strings, not int"):
        client.batch([{"messages": "hi", 1: 2}])
    assert Ledger(ledger_path).to_dataframe().empty


def test_a_str_subclass_is_the_text_it_is(client):
    """numpy's ``str_`` (a prompt from a DataFrame or an array) is a ``str``: JSON could not carry the
    subclass, and the error named ``messages`` for a ``system`` text."""
    numpy = pytest.importorskip("numpy")
    answer = client.complete("echo", numpy.str_("hi"), system=numpy.str_("be brief"))
    assert answer.text.startswith('You said: "hi"')
    texts = [item.text[:13] for item in client.batch(numpy.array(["a", "b"]))]
    assert texts == ['You said: "a"', 'You said: "b"']

    class Prompt(str, enum.Enum):  # str() of a member is its name: the text is its value
        HI = "hello there"

    assert client.complete("echo", Prompt.HI, system=Prompt.HI).text.startswith('You said: "hello there"')
    assert client.request("echo", [Prompt.HI], system=Prompt.HI).messages[0].content == "hello there"


def test_nan_is_refused_by_the_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gtl_nb.cli", "complete", "hi", "-m", "echo", "--temperature", "nan"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "XDG_DATA_HOME": str(tmp_path)},
        timeout=60,
    )
    assert done.returncode == 2
    assert "expected a finite number, got 'nan'" in done.stderr and "Traceback" not in done.stderr


def test_nan_is_refused_by_the_magic(tmp_path, monkeypatch):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    from gtl_nb.notebook import load_ipython_extension, unload_ipython_extension

    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n')
    monkeypatch.setenv("GTL_NB_CONFIG", str(config))
    shell = InteractiveShell.instance()
    load_ipython_extension(shell)
    try:
        for value in ("nan", "inf", "-inf"):
            result = shell.run_cell(f"%%gtl echo --temperature={value}\nhello", store_history=True)
            assert isinstance(result.error_in_exec, UsageError)
            assert "finite number" in str(result.error_in_exec)
    finally:
        unload_ipython_extension(shell)


@pytest.mark.parametrize(
    "where, says",
    [
        ("/proc/gtl-nb-nowhere/ledger.sqlite3", "cannot create the ledger's directory"),
        ("{file}/ledger.sqlite3", "a file is in the way"),
        ("{dir}", "is a directory"),
    ],
)
def test_a_ledger_path_that_cannot_work_says_what_to_pass(tmp_path, where, says):
    afile = tmp_path / "plain-file"
    afile.write_text("x")
    path = where.format(file=afile, dir=tmp_path)
    with pytest.raises(LedgerLocationError) as caught:
        gtl_nb.connect(ledger=path, environ={})
    message = str(caught.value)
    assert says in message and "ledger=False" in message
    assert isinstance(caught.value, ConfigurationError)


def test_leaving_astream_early_inside_asyncio_run_is_quiet_and_the_row_is_cancelled(ledger_path):
    script = textwrap.dedent(
        f"""
        import asyncio, time
        import gtl_nb
        from gtl_nb import sim

        with sim.running("openai", pace=0.05) as url:
            client = gtl_nb.connect(
                providers={{"openai": {{"api_key": "sim-key", "base_url": url}}}},
                ledger={str(ledger_path)!r},
                environ={{}},
            )

            async def main():
                async for event in client.astream("gpt-4o-mini", "tell me a long story about loops"):
                    if type(event).__name__ == "Token":
                        break   # leave without aclose(): asyncio.run's shutdown closes the stream

            asyncio.run(main())
            client.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "never retrieved" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
    frame = Ledger(ledger_path).to_dataframe()
    assert list(frame["status"]) == ["cancelled"]


class SlowFinishLedger(SqliteUsageLedger):
    """The SQLite ledger store, with a ``finish`` that takes a while, so a cancel can arrive while the
    row is being completed."""

    finish_nowait = None  # a ledger whose completion waits (the engine's fast path is off)

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.finishing = threading.Event()

    async def finish(self, *args, **kwargs):
        self.finishing.set()
        await asyncio.sleep(0.3)
        return await super().finish(*args, **kwargs)


def test_a_cancel_that_arrives_while_the_row_is_completed_reports_what_the_ledger_says(ledger_path):
    ledger = SlowFinishLedger(ledger_path)
    client = gtl_nb.connect(ledger=ledger, environ={})
    try:
        stream = client.stream("echo", "a short answer")
        assert ledger.finishing.wait(10)  # the engine has ended the session and is writing its row
        stream.close()
    finally:
        client.close()
    row = Ledger(ledger_path).to_dataframe().iloc[0]
    end = stream.transcript.events[-1]
    assert row["status"] == "ok" and isinstance(end, Done), end
    assert stream.result().text  # the caller has the whole answer the ledger paid for


async def _cancel_async_during_finish(client, ledger):
    stream = client.astream("echo", "a short answer")
    iterator = stream.__aiter__()
    await iterator.__anext__()
    while not ledger.finishing.is_set():
        await asyncio.sleep(0.01)
    await stream.aclose()
    return stream


def test_an_async_cancel_while_the_row_is_completed_reports_what_the_ledger_says(ledger_path):
    ledger = SlowFinishLedger(ledger_path)
    client = gtl_nb.connect(ledger=ledger, environ={})
    try:
        stream = asyncio.run(_cancel_async_during_finish(client, ledger))
    finally:
        client.close()
    row = Ledger(ledger_path).to_dataframe().iloc[0]
    end = stream.transcript.events[-1]
    assert row["status"] == "ok" and isinstance(end, Done), end


def test_a_cancel_mid_stream_is_cancelled_for_both(ledger_path):
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, ledger=ledger_path, environ={})
    try:
        stream = client.stream("echo", "a long enough answer to be cut short by the caller")
        for event in stream:
            if isinstance(event, Token):
                break
        stream.close()
    finally:
        client.close()
    end = stream.transcript.events[-1]
    assert isinstance(end, Error) and end.code == "CANCELLED"
    assert list(Ledger(ledger_path).to_dataframe()["status"]) == ["cancelled"]


def test_a_stream_closed_before_its_session_took_a_step_is_cancelled_for_both_at_once(ledger_path):
    """``close()`` right after ``stream()``: the session's task was cancelled before its first step, so its
    coroutine never ran — no ledger row, no terminal event, and ``close()`` waited 5 s for one."""
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, ledger=ledger_path, environ={})
    try:
        streams = []
        for _ in range(5):
            stream = client.stream("echo", "closed at once")
            started = time.monotonic()
            stream.close()
            assert time.monotonic() - started < 2.0
            streams.append(stream)
    finally:
        client.close()
    for stream in streams:
        end = stream.transcript.events[-1]
        assert isinstance(end, Error) and end.code == "CANCELLED" and end.message == "cancelled by the caller"
    frame = Ledger(ledger_path).to_dataframe()
    assert sorted(frame["session_id"]) == sorted(stream.session_id for stream in streams)
    assert set(frame["status"]) == {"cancelled"}


def test_an_awaited_call_cancelled_before_its_session_began_leaves_its_row(ledger_path):
    client = gtl_nb.connect(providers={"echo": {"options": {"pace": 0.02}}}, ledger=ledger_path, environ={})

    async def cancelled_calls() -> int:
        cancelled = 0
        for _ in range(10):
            call = asyncio.ensure_future(client.acomplete("echo", "cancelled as it starts"))
            await asyncio.sleep(0)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            cancelled += call.cancelled()
        return cancelled

    try:
        cancelled = asyncio.run(cancelled_calls())
    finally:
        client.close()
    assert cancelled == 10
    assert list(Ledger(ledger_path).to_dataframe()["status"]) == ["cancelled"] * 10


@pytest.mark.parametrize("steps", range(5))
def test_aclose_from_another_task_ends_the_reader_too(ledger_path, steps):
    """A task reading ``astream`` and another closing it: the reader stayed blocked for ever (the closing
    task took the events it waited for), or recorded an event after the terminal one; closed before the
    reader's first step, the stream started a session anyway — billed, while the caller read CANCELLED."""
    simulator = sim.serve("openai", pace=0.01)
    providers = {"openai": {"api_key": "sim-key", "base_url": simulator.base_url}}
    client = gtl_nb.connect(providers=providers, ledger=ledger_path, environ={})

    async def read_and_close() -> gtl_nb.AsyncEventStream:
        stream = client.astream("openai:gpt-4o-mini", "read by one task, closed by another")

        async def reader() -> None:
            async for _ in stream:
                pass

        reading = asyncio.ensure_future(reader())
        for _ in range(steps):
            await asyncio.sleep(0)
        await stream.aclose()
        await asyncio.wait_for(reading, 5)
        return stream

    try:
        stream = asyncio.run(read_and_close())
    finally:
        client.close()
        simulator.close()
    events = stream.transcript.events
    assert isinstance(events[-1], Error) and events[-1].code == "CANCELLED", events
    assert sum(isinstance(event, (Done, Error)) for event in events) == 1, events
    statuses = list(Ledger(ledger_path).to_dataframe()["status"])
    assert statuses in ([], ["cancelled"]), statuses  # none when closed before any session was started
    if steps == 0:
        assert statuses == [] and [type(event) for event in events] == [Error]
        assert simulator.requests == []  # nothing was sent for a stream closed before its first read


def test_every_refusal_is_a_gtl_error():
    # the families callers catch: none of the refusals above is a foreign exception
    for arguments, _ in BAD_ARGUMENTS.values():
        with gtl_nb.connect(ledger=False, environ={}) as client, pytest.raises(GTLError):
            client.request("echo", **arguments)


LONG_PROMPT = "token " * 200_000  # about 300,000 tokens by the four-characters rule


def test_a_prompt_clearly_over_the_context_window_is_refused_before_sending():
    with sim.running("openai") as url:
        client = gtl_nb.connect(providers={"openai": {"api_key": "sim-key", "base_url": url}}, ledger=False, environ={})
        with pytest.raises(ContextLengthExceededError, match=r"about 300,000 tokens.*context window is 128,000"):
            client.complete("gpt-4o-mini", LONG_PROMPT)
        assert client.complete("gpt-4o-mini", "a prompt that fits").text


def test_a_prompt_over_the_window_goes_to_the_configured_context_fallback():
    with sim.serve("openai") as simulator:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": simulator.base_url}},
            routing={"context_fallbacks": {"gpt-4o-mini": "gpt-4.1"}},
            ledger=False,
            environ={},
        )
        with pytest.warns(ContextFallbackWarning, match="sending it to openai:gpt-4.1"):
            answer = client.complete("gpt-4o-mini", LONG_PROMPT)
    assert [r.json["model"] for r in simulator.requests] == ["gpt-4.1"]
    assert answer.model == "gpt-4.1-2025-04-14"  # the model that served it, as OpenAI names the alias's snapshot


def test_the_credential_check_sees_a_key_removed_or_set_after_an_earlier_request_passed(monkeypatch):
    # the check remembers a deployment that passed only as long as it resolves to the same credentials
    monkeypatch.setenv("OPENAI_API_KEY", "sim-key")
    with sim.running("openai") as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        with gtl_nb.connect(ledger=False) as client:
            assert client.complete("gpt-4o-mini", "hello").text
            monkeypatch.delenv("OPENAI_API_KEY")
            with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
                client.complete("gpt-4o-mini", "hello")
            monkeypatch.setenv("OPENAI_API_KEY", "sim-key")
            assert client.complete("gpt-4o-mini", "hello").text


def test_stop_takes_any_iterable_of_strings_read_once(client):
    assert client.request("echo", "hi", stop=(word for word in ["END", "STOP"])).stop == ["END", "STOP"]
    assert client.request("echo", "hi", stop={"END"}).stop == ["END"]
    assert client.request("echo", "hi", stop="END").stop == ["END"]
    assert client.request("echo", "hi", stop=[]).stop is None


def test_max_tokens_above_the_models_own_limit_is_refused_before_the_provider_is_called(ledger_path):
    """``max_tokens=10**6`` went to the provider, which refused it after a round trip (or, behind another
    API, clipped it): the catalog knows gpt-4o-mini writes at most 16,384 tokens per answer. Refused
    before anything is sent, one ledger row; a deployment of the request's list that can write that
    much answers instead."""
    from gtl_nb import sim

    simulator = sim.serve("openai", seed=3)
    try:
        providers = {"openai": {"api_key": "sim-key", "base_url": simulator.base_url}, "echo": {}}
        with gtl_nb.connect(providers=providers, ledger=ledger_path, environ={}) as client:
            with pytest.raises(InvalidRequestError, match="max_tokens: gpt-4o-mini writes at most 16,384 tokens"):
                client.complete("openai:gpt-4o-mini", "hi", max_tokens=16_385)
            assert simulator.requests == []  # nothing was sent
            rows = Ledger(ledger_path).rows()
            assert [(row["status"], row["error_code"]) for row in rows] == [("error", "INVALID_REQUEST")]
            moved = client.complete("gpt-4o-mini", "hi", max_tokens=16_385, providers=["openai", "echo"])
            assert moved.provider == "echo" and simulator.requests == []
            assert client.complete("openai:gpt-4o-mini", "hi", max_tokens=16_384).provider == "openai"
            assert len(simulator.requests) == 1
    finally:
        simulator.close()


def test_a_request_every_deployment_refuses_before_a_call_names_the_first_not_the_last(tmp_path):
    """Three deployments of one model, a ``max_tokens`` above what it writes per answer: each refuses
    before any call and the request fails over to the next — and the error and the row named the last
    one, a deployment the caller never asked for first."""
    with sim.running("openai") as base_url:
        spec = {"type": "openai", "api_key": "sim-key", "base_url": base_url}
        client = gtl_nb.connect(
            providers={"primary": spec, "east": spec, "west": spec},
            config={"ledger": {"path": str(tmp_path / "ledger.sqlite3")}},
            environ={},
        )
        try:
            with pytest.raises(InvalidRequestError, match="writes at most") as refused:
                client.complete("gpt-4o-mini", "hi", providers=["primary", "east", "west"], max_tokens=999_999)
            rows = client.usage()
        finally:
            client.close()
    assert refused.value.provider == "primary"
    assert list(rows["deployment"]) == ["primary"] and list(rows["failover_path"][0]) == ["primary", "east", "west"]


def test_the_row_of_a_request_refused_everywhere_names_the_model_of_the_deployment_it_names(tmp_path):
    # the row took its deployment from the error (the first) and its model from the last target tried
    with sim.running("openai") as base_url:
        spec = {"type": "openai", "api_key": "sim-key", "base_url": base_url}
        client = gtl_nb.connect(
            providers={"primary": spec, "east": spec},
            config={"ledger": {"path": str(tmp_path / "ledger.sqlite3")}},
            environ={},
        )
        try:
            with pytest.raises(InvalidRequestError):
                client.complete(
                    "gpt-4o-mini", "hi", providers=["primary:gpt-4o-mini", "east:gpt-4.1-nano"], max_tokens=999_999
                )
            rows = client.usage()
        finally:
            client.close()
    assert (rows["deployment"][0], rows["model"][0]) == ("primary", "gpt-4o-mini")
