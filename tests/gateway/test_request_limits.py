"""GTL's request limits (``protocol.limits``): how many messages, content parts, tools, tool calls and stop
sequences one request may hold.

A body under ``max_frame_bytes`` could still hold 200,000 messages, each converted in Python on the
gateway's event loop while every other client waited. Past a limit a request is refused — ``400`` /
``INVALID_REQUEST`` naming the list and the limit — on ``/v1/chat/completions``, ``/v1/messages`` and
``/v1/gtl`` alike, and by the embedded client, each refusal leaving exactly one ledger row; a request
at every limit at once is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb.protocol import CompletionRequest, Message, Tool, ToolCall
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.limits import (
    MAX_MESSAGES,
    MAX_PARTS,
    MAX_STOP_SEQUENCES,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    request_limit_refusal,
)
from gtl_nb.protocol.messages import Part
from tests.gateway.conftest import write_toml
from tests.gateway.test_http import serving
from tests.ledger_wait import rows_when

ECHO = "local:echo"
USER = {"role": "user", "content": "x"}


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limits") / "ledger.sqlite"


@pytest.fixture(scope="module")
def base_url(ledger_path: Path) -> Iterator[str]:
    """A gateway of the echo model alone, with the default 8 MiB bodies."""
    tables = {"providers.local": {"type": "echo"}, "ledger": {"path": str(ledger_path)}}
    with serving(write_toml(ledger_path.parent / "gtl.toml", tables)) as served:
        yield served.url


def one_refusal_row(ledger: Path, session_id: str) -> None:
    rows = rows_when(ledger, session_id=session_id)
    assert [(row["status"], row["error_code"]) for row in rows] == [("error", "INVALID_REQUEST")], rows


def tools(count: int) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": f"f{index}"}} for index in range(count)]


def gtl_request(**fields: Any) -> CompletionRequest:
    one = [Message(role="user", content="x")]
    return CompletionRequest(**{"session_id": "s", "model": ECHO, "messages": one, **fields})


# -- the check itself --------------------------------------------------------------------------------------


def test_each_limit_is_taken_at_its_value_and_refused_one_past_it():
    user = Message(role="user", content="x")
    at_limits = gtl_request(
        messages=[
            Message(role="user", parts=[Part(type="text", text="x")] * MAX_PARTS),
            Message(role="assistant", tool_calls=[ToolCall(id=f"c{i}", name="f") for i in range(MAX_TOOL_CALLS)]),
            *[user] * (MAX_MESSAGES - 2),
        ],
        tools=[Tool(name=f"f{index}") for index in range(MAX_TOOLS)],
        stop=["."] * MAX_STOP_SEQUENCES,
    )
    assert request_limit_refusal(at_limits) is None
    over = {
        "messages": gtl_request(messages=[user] * (MAX_MESSAGES + 1)),
        "tools": gtl_request(tools=[Tool(name="f")] * (MAX_TOOLS + 1)),
        "stop": gtl_request(stop=["."] * (MAX_STOP_SEQUENCES + 1)),
        "messages[1].content": gtl_request(
            messages=[user, Message(role="user", images=["https://x/y.png"] * (MAX_PARTS + 1))]
        ),
        "messages[0].content": gtl_request(
            messages=[Message(role="user", parts=[Part(type="text", text="x")] * (MAX_PARTS + 1))]
        ),
        "messages[0].tool_calls": gtl_request(
            messages=[Message(role="assistant", tool_calls=[ToolCall(id="c", name="f")] * (MAX_TOOL_CALLS + 1))]
        ),
    }
    for where, request in over.items():
        refused = request_limit_refusal(request)
        assert refused is not None and refused.startswith(f"{where}: "), (where, refused)
        assert "over the limit of" in refused


# -- the compatible endpoints and /v1/gtl ------------------------------------------------------------------


def test_chat_completions_past_each_limit_is_a_400_naming_it_with_one_row(base_url, ledger_path):
    over = {
        "messages": {"messages": [USER] * (MAX_MESSAGES + 1)},
        "tools": {"messages": [USER], "tools": tools(MAX_TOOLS + 1)},
        "messages[0].content": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}] * (MAX_PARTS + 1)}]
        },
        "messages[0].tool_calls": {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
                    * (MAX_TOOL_CALLS + 1),
                },
                USER,
            ]
        },
    }
    for where, body in over.items():
        answer = httpx.post(f"{base_url}/v1/chat/completions", json={"model": ECHO, **body}, timeout=60)
        error = answer.json()["error"]
        assert answer.status_code == 400, answer.text
        assert error["param"] == where and "over the limit of" in error["message"], error
        one_refusal_row(ledger_path, answer.headers["x-request-id"])


def test_messages_past_each_limit_is_a_400_naming_it_with_one_row(base_url, ledger_path):
    blocks = [{"type": "text", "text": "x"}]
    over = {
        "messages": {"messages": [USER] * (MAX_MESSAGES + 1)},
        "tools": {"messages": [USER], "tools": [{"name": f"f{i}", "input_schema": {}} for i in range(MAX_TOOLS + 1)]},
        "stop_sequences": {"messages": [USER], "stop_sequences": ["."] * (MAX_STOP_SEQUENCES + 1)},
        "messages.0.content": {"messages": [{"role": "user", "content": blocks * (MAX_PARTS + 1)}]},
        "system": {"messages": [USER], "system": blocks * (MAX_PARTS + 1)},
    }
    for where, body in over.items():
        answer = httpx.post(f"{base_url}/v1/messages", json={"model": ECHO, "max_tokens": 5, **body}, timeout=60)
        error = answer.json()["error"]
        assert answer.status_code == 400, answer.text
        assert error["message"].startswith(f"{where}: ") and "over the limit of" in error["message"], error
        one_refusal_row(ledger_path, answer.headers["request-id"])


def test_gtl_past_each_limit_is_a_400_naming_it_with_one_row(base_url, ledger_path):
    over = {
        "messages": {"messages": [USER] * (MAX_MESSAGES + 1)},
        "tools": {"messages": [USER], "tools": [{"name": f"f{i}"} for i in range(MAX_TOOLS + 1)]},
        "stop": {"messages": [USER], "stop": ["."] * (MAX_STOP_SEQUENCES + 1)},
        "messages[0].content": {"messages": [{"role": "user", "images": ["https://x/y.png"] * (MAX_PARTS + 1)}]},
    }
    for where, body in over.items():
        session_id = f"over-{where}"
        frame = {"type": "completion_request", "session_id": session_id, "model": ECHO, "stream": False, **body}
        answer = httpx.post(f"{base_url}/v1/gtl", json=frame, timeout=60)
        assert answer.status_code == 400, answer.text
        error = answer.json()["events"][-1]
        assert error["code"] == "INVALID_REQUEST" and error["message"].startswith(f"{where}: "), error
        one_refusal_row(ledger_path, session_id)


def test_an_empty_model_or_no_messages_is_refused_naming_the_field(base_url, ledger_path):
    """A gRPC request leaves unset fields empty: no model was "unknown model ''" (MODEL_NOT_FOUND), no
    messages were sent to the provider (echo answered them)."""
    bodies = {
        "model is empty": {"model": "", "messages": [USER]},
        "messages is empty": {"model": ECHO, "messages": []},
    }
    for said, body in bodies.items():
        session_id = f"empty-{said.split()[0]}"
        frame = {"type": "completion_request", "session_id": session_id, "stream": False, **body}
        answer = httpx.post(f"{base_url}/v1/gtl", json=frame, timeout=60)
        assert answer.status_code == 400, answer.text
        error = answer.json()["events"][-1]
        assert error["code"] == "INVALID_REQUEST" and error["message"].startswith(said), error
        one_refusal_row(ledger_path, session_id)


def test_requests_at_every_limit_are_served(base_url):
    parts = [{"type": "text", "text": "x"}] * MAX_PARTS
    messages = [{"role": "user", "content": parts}, *[USER] * (MAX_MESSAGES - 1)]
    chat = {"model": ECHO, "messages": messages, "tools": tools(MAX_TOOLS), "stop": ["a", "b", "c", "d"]}
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=chat, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.json()["choices"][0]["message"]["tool_calls"]) == MAX_TOOLS  # echo calls every tool

    blocks = [{"type": "text", "text": "x"}] * MAX_PARTS
    anthropic_body = {
        "model": ECHO,
        "max_tokens": 50,
        "system": blocks,
        "messages": [{"role": "user", "content": blocks}, *[USER] * (MAX_MESSAGES - 2)],
        "stop_sequences": ["zz"] * MAX_STOP_SEQUENCES,
    }
    answer = httpx.post(f"{base_url}/v1/messages", json=anthropic_body, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["content"][0]["text"]

    gtl_messages = [{"role": "user", "images": ["https://x/y.png"] * MAX_PARTS}, *[USER] * (MAX_MESSAGES - 1)]
    frame = {
        "type": "completion_request",
        "session_id": "at-limits",
        "model": ECHO,
        "stream": False,
        "messages": gtl_messages,
        "stop": ["zz"] * MAX_STOP_SEQUENCES,
    }
    answer = httpx.post(f"{base_url}/v1/gtl", json=frame, timeout=120)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["events"][-1]["type"] == "done"


# -- the embedded client -----------------------------------------------------------------------------------


def test_the_embedded_client_refuses_past_a_limit_with_one_row_and_serves_at_it(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    client = gtl_nb.connect(providers={"local": {"type": "echo"}}, ledger=str(ledger), environ={})
    try:
        user = Message(role="user", content="x")
        with pytest.raises(InvalidRequestError, match=r"messages: 100,001 messages, over the limit of 100,000"):
            client.complete(ECHO, [user] * (MAX_MESSAGES + 1), session_id="too-many")
        one_refusal_row(ledger, "too-many")
        with pytest.raises(InvalidRequestError, match=r"tools: 513 tools, over the limit of 512"):
            client.complete(ECHO, "x", tools=[Tool(name="f")] * (MAX_TOOLS + 1), session_id="too-many-tools")
        one_refusal_row(ledger, "too-many-tools")
        served = client.complete(
            ECHO, [user] * MAX_MESSAGES, tools=[Tool(name=f"f{i}") for i in range(MAX_TOOLS)], session_id="at"
        )
        assert len(served.tool_calls) == MAX_TOOLS
    finally:
        client.close()


# -- the answer side: echo's generated values ----------------------------------------------------------------

HUGE = {  # 229 bytes of schema whose every valid value is 7.7 MB: arrays of 16 of strings of 4,096
    "type": "object",
    "required": ["a"],
    "properties": {
        "a": {
            "type": "array",
            "minItems": 16,
            "items": {
                "type": "array",
                "minItems": 16,
                "items": {"type": "array", "minItems": 16, "items": {"type": "string", "minLength": 4096}},
            },
        }
    },
}


def test_echo_refuses_to_write_arguments_or_values_larger_than_its_bound(tmp_path):
    client = gtl_nb.connect(providers={"local": {"type": "echo"}}, ledger=False, environ={})
    try:
        many = [Tool(name=f"f{index}", parameters=HUGE) for index in range(MAX_TOOLS)]
        with pytest.raises(InvalidRequestError, match="tool 'f0''s parameters asks for values of 7,675,901 characters"):
            client.complete(ECHO, "x", tools=many)
        form = {"type": "json_schema", "json_schema": {"name": "x", "schema": HUGE}}
        with pytest.raises(InvalidRequestError, match="response_format's schema asks for values of"):
            client.complete(ECHO, "x", response_format=form)
        small = {"type": "object", "required": ["a"], "properties": {"a": {"type": "string", "minLength": 100}}}
        served = client.complete(
            ECHO, "x", tools=[Tool(name=f"f{index}", parameters=small) for index in range(MAX_TOOLS)]
        )
        assert len(served.tool_calls) == MAX_TOOLS
    finally:
        client.close()
