"""A failed tool's result (``Message.tool_error``): each provider is told in its own terms — Anthropic's
``is_error``, Converse's ``status: "error"``, Gemini's ``error`` key — and those with no flag (OpenAI,
Ollama, Converse models that take no status) read a text that says so."""

from __future__ import annotations

import msgspec
import pytest

from gtl_nb.client import _messages
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import CompletionRequest, Message, Tool, ToolCall
from gtl_nb.providers import anthropic, bedrock, gemini, ollama
from gtl_nb.providers.base import Deployment, tool_result_text
from gtl_nb.providers.openai import chat_messages
from gtl_nb.tools import run_tool_calls

PNG = "data:image/png;base64,iVBORw0KGgo="
CALL = ToolCall(id="t1", name="weather", arguments='{"city": "Oslo"}')
FAILED = Message(role="tool", content="the weather service timed out", tool_call_id="t1", tool_error=True)
WORKED = Message(role="tool", content='{"celsius": 4}', tool_call_id="t1")
TOOLS = [Tool(name="weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})]


def conversation(result: Message) -> list[Message]:
    return [Message(role="user", content="Weather in Oslo?"), Message(role="assistant", tool_calls=[CALL]), result]


def request(result: Message, model: str) -> CompletionRequest:
    return CompletionRequest(session_id="s", model=model, messages=conversation(result), tools=TOOLS)


# -- the protocol ---------------------------------------------------------------------------------------


def test_only_a_tool_result_can_say_its_tool_failed():
    with pytest.raises(ValueError, match="tool result's flag"):
        Message(role="user", content="hi", tool_error=True)
    with pytest.raises(msgspec.ValidationError, match="tool result's flag"):
        msgspec.json.decode(b'{"role": "assistant", "tool_error": true}', type=Message)
    wire = msgspec.json.encode(FAILED)
    assert b'"tool_error":true' in wire and msgspec.json.decode(wire, type=Message) == FAILED
    assert b"tool_error" not in msgspec.json.encode(WORKED)  # a default stays off the wire: older peers read it


def test_the_clients_message_dicts_take_the_flag_by_either_name():
    base = {"role": "tool", "content": "timed out", "tool_call_id": "t1"}
    (gtl_name,) = _messages([{**base, "tool_error": True}])
    (anthropic_name,) = _messages([{**base, "is_error": True}])
    assert gtl_name.tool_error and anthropic_name.tool_error
    (plain,) = _messages([{**base, "is_error": False}])
    assert not plain.tool_error
    with pytest.raises(InvalidRequestError, match="not both"):
        _messages([{**base, "is_error": True, "tool_error": True}])
    with pytest.raises(InvalidRequestError, match="tool result's flag"):
        _messages([{"role": "user", "content": "hi", "is_error": True}])


def test_a_tool_that_raised_answers_with_the_flag():
    def weather(city: str) -> dict[str, int]:
        raise TimeoutError("the weather service timed out")

    (raised,) = run_tool_calls([CALL], {"weather": weather})
    (unknown,) = run_tool_calls([CALL], {})
    (fine,) = run_tool_calls([CALL], {"weather": lambda city: {"celsius": 4}})
    assert raised.message.tool_error and unknown.message.tool_error and not fine.message.tool_error
    assert raised.message.content == "error: TimeoutError: the weather service timed out"


# -- each provider --------------------------------------------------------------------------------------


def test_anthropic_reads_is_error():
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    failed = anthropic.build_body(request(FAILED, "claude-sonnet-4-5"), deployment)["messages"][-1]["content"][0]
    worked = anthropic.build_body(request(WORKED, "claude-sonnet-4-5"), deployment)["messages"][-1]["content"][0]
    assert failed == {
        "type": "tool_result",
        "tool_use_id": "t1",
        "content": "the weather service timed out",
        "is_error": True,
    }
    assert "is_error" not in worked


def converse_result(result: Message, model: str) -> dict[str, object]:
    deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
    body = bedrock.build_body(request(result, model), deployment)
    return body["messages"][-1]["content"][0]["toolResult"]


@pytest.mark.parametrize("model", ["anthropic.claude-3-5-haiku-20241022-v1:0", "amazon.nova-lite-v1:0"])
def test_converse_says_status_error_to_the_models_that_take_it(model):
    assert converse_result(FAILED, model)["status"] == "error"
    assert converse_result(FAILED, model)["content"] == [{"text": "the weather service timed out"}]
    assert converse_result(WORKED, model)["status"] == "success"


def test_converse_models_without_a_status_read_it_in_the_text_in_order():
    model = "mistral.mistral-large-2407-v1:0"
    assert "status" not in converse_result(FAILED, model)
    assert converse_result(FAILED, model)["content"] == [{"text": "Error: the weather service timed out"}]
    assert converse_result(WORKED, model)["content"] == [{"text": '{"celsius": 4}'}]
    ordered = Message.from_pieces(
        "tool", [("image", PNG), ("text", "chart failed")], tool_call_id="t1", tool_error=True
    )
    blocks = converse_result(ordered, model)["content"]
    assert [next(iter(block)) for block in blocks] == ["image", "text"]
    assert blocks[1] == {"text": "Error: chart failed"}
    image_only = Message(role="tool", images=[PNG], tool_call_id="t1", tool_error=True)
    assert [next(iter(block)) for block in converse_result(image_only, model)["content"]] == ["text", "image"]


def test_gemini_puts_it_under_the_error_key():
    def response(result: Message) -> dict[str, object]:
        _, contents = gemini.convert_messages(conversation(result))
        return contents[-1]["parts"][0]["functionResponse"]["response"]

    assert response(FAILED) == {"error": "the weather service timed out"}
    as_json = Message(role="tool", content='{"code": 504}', tool_call_id="t1", tool_error=True)
    assert response(as_json) == {"error": {"code": 504}}
    empty = Message(role="tool", tool_call_id="t1", tool_error=True)
    assert response(empty) == {"error": "the tool failed"}
    blank = Message(role="tool", content="", tool_call_id="t1", tool_error=True)  # an image-only failure's
    assert response(blank) == {"error": "the tool failed"}
    assert response(WORKED) == {"celsius": 4}


def test_openai_and_ollama_read_it_in_the_text():
    assert chat_messages(conversation(FAILED))[-1]["content"] == "Error: the weather service timed out"
    assert chat_messages(conversation(WORKED))[-1]["content"] == '{"celsius": 4}'
    assert ollama._messages(conversation(FAILED))[-1]["content"] == "Error: the weather service timed out"


@pytest.mark.parametrize(
    ("content", "sent"),
    [
        ("error: TimeoutError: boom", "error: TimeoutError: boom"),  # already says so: not twice
        ("  ERROR 504", "  ERROR 504"),
        ("", "Error"),
        (None, "Error"),
        ("errand ran late", "Error: errand ran late"),
    ],
)
def test_the_text_says_it_once(content, sent):
    message = Message(role="tool", content=content, tool_call_id="t1", tool_error=True)
    assert tool_result_text(message) == sent


def test_echo_says_a_tool_failed():
    import gtl_nb

    client = gtl_nb.connect(config={"ledger": {"enabled": False}}, environ={})
    try:
        failed = client.complete("echo", conversation(FAILED), tools=TOOLS).text
        worked = client.complete("echo", conversation(WORKED), tools=TOOLS).text
    finally:
        client.close()
    assert failed.startswith("The tool returned t1: an error (the weather service timed out).")
    assert worked.startswith('The tool returned t1: {"celsius": 4}')
