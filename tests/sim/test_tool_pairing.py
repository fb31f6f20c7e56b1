"""Every simulator refuses a tool history its provider refuses: results that answer no call, calls left
unanswered. Each case starts from a recorded follow-up request (``tests/fixtures/wire``), which the
simulators accept as the services did, and breaks it the way a faulty history builder would; the refusal
must be the provider's own (status, error shape, wording — the sources are in each simulator's checks).
"""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors

from gtl_nb import sim

from .conftest import fixture_json

OPENAI_RECORDED = "stream-text-after-tool-result.request.json"
ANTHROPIC_RECORDED = "stream-text-after-tool-results.request.json"
GEMINI_RECORDED = "stream-sse-text-after-function-responses.request.json"
BEDROCK_RECORDED = "converse-stream-text-after-tool-result.request.json"
ANTHROPIC_HEADERS = {"x-api-key": "sim-key", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def sims() -> Any:
    started = {
        name: sim.serve(name, models=sim.ANY_MODEL)  # recorded requests name retired models too
        for name in ("openai", "openai_compatible", "azure", "anthropic", "gemini", "bedrock")
    }
    yield started
    for simulator in started.values():
        simulator.close()


# -- OpenAI Chat Completions ----------------------------------------------------------------------------------


def openai_post(s: sim.Simulator, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(s.base_url + "/chat/completions", json=body, headers={"authorization": "Bearer sim-key"})


def openai_refusal(message: str, param: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def recorded_openai() -> dict[str, Any]:
    body = fixture_json("openai", OPENAI_RECORDED)
    body["stream"] = False
    return body


def test_openai_accepts_the_recorded_tool_loop_and_parallel_results_in_any_order(sims: dict[str, Any]) -> None:
    assert openai_post(sims["openai"], recorded_openai()).status_code == 200
    calls = [{"id": f"call_{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for n in ("a", "b")]
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": "Looking.", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_b", "content": "2"},
            {"role": "tool", "tool_call_id": "call_a", "content": "1"},
            {"role": "user", "content": "and?"},
        ],
    }
    assert openai_post(sims["openai"], body).status_code == 200


def test_openai_refuses_a_tool_message_that_answers_no_call(sims: dict[str, Any]) -> None:
    body = recorded_openai()
    del body["messages"][1]  # the assistant message that made the call
    response = openai_post(sims["openai"], body)
    assert response.status_code == 400
    assert response.json() == openai_refusal(
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
        "messages.[1].role",
    )
    with pytest.raises(openai.BadRequestError) as raised:  # the SDK's own class
        openai.OpenAI(base_url=sims["openai"].base_url, api_key="sim-key", max_retries=0).chat.completions.create(
            model=body["model"], messages=body["messages"]
        )
    assert raised.value.param == "messages.[1].role"


def test_openai_refuses_a_tool_message_after_a_user_message(sims: dict[str, Any]) -> None:
    body = recorded_openai()
    body["messages"].insert(2, {"role": "user", "content": "hurry"})
    response = openai_post(sims["openai"], body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("An assistant message with 'tool_calls' must be followed")
    assert response.json()["error"]["param"] == "messages.[1].role"  # the unanswered call comes first


def test_openai_refuses_a_result_for_an_id_the_assistant_did_not_call(sims: dict[str, Any]) -> None:
    body = recorded_openai()
    body["messages"][2]["tool_call_id"] = "call_other"
    response = openai_post(sims["openai"], body)
    assert response.status_code == 400
    assert response.json() == openai_refusal(
        "Invalid parameter: 'tool_call_id' of 'call_other' not found in 'tool_calls' of previous message.",
        "messages.[2].tool_call_id",
    )


@pytest.mark.parametrize("then", [[], [{"role": "user", "content": "never mind"}]])
def test_openai_refuses_calls_left_unanswered(then: list[dict[str, Any]], sims: dict[str, Any]) -> None:
    body = recorded_openai()
    second = {"id": "call_second", "type": "function", "function": {"name": "get_capital", "arguments": "{}"}}
    body["messages"][1]["tool_calls"].append(second)
    body["messages"] = [*body["messages"][:2], *then]  # no tool message at all
    response = openai_post(sims["openai"], body)
    assert response.status_code == 400
    assert response.json() == openai_refusal(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        "'tool_call_id'. The following tool_call_ids did not have response messages: "
        "call_ZR5UUuTt3pf61kjwAJIYdVMj, call_second",
        "messages.[1].role",
    )


def test_azure_pairs_as_openai_does_and_a_compatible_server_does_not_check(sims: dict[str, Any]) -> None:
    body = recorded_openai()
    del body["messages"][1]
    url = sims["azure"].root_url + "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    refused = httpx.post(url, json=body, headers={"api-key": "sim-key"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages.[1].role"
    assert openai_post(sims["openai_compatible"], body).status_code == 200


# -- Anthropic Messages ---------------------------------------------------------------------------------------


def anthropic_post(s: sim.Simulator, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(s.base_url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS)


def anthropic_refusal(message: str) -> dict[str, Any]:
    return {"type": "invalid_request_error", "message": message}


def recorded_anthropic() -> dict[str, Any]:
    body = fixture_json("anthropic", ANTHROPIC_RECORDED)
    body["stream"] = False
    return body


def test_anthropic_accepts_the_recorded_parallel_results_and_text_after_them(sims: dict[str, Any]) -> None:
    body = recorded_anthropic()
    assert anthropic_post(sims["anthropic"], body).status_code == 200
    body["messages"][2]["content"].append({"type": "text", "text": "Pick one."})
    assert anthropic_post(sims["anthropic"], body).status_code == 200


def test_anthropic_refuses_tool_use_ids_without_results_in_the_next_message(sims: dict[str, Any]) -> None:
    body = recorded_anthropic()
    body["messages"][2]["content"] = [{"type": "text", "text": "forget it"}]
    response = anthropic_post(sims["anthropic"], body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"] == anthropic_refusal(
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_01LtHJmixrs9NcWQkK8hu8hj, toolu_01N8a4jWyf116qKTMqKKmjyt. Each `tool_use` block must have a "
        "corresponding `tool_result` block in the next message."
    )


def test_anthropic_refuses_results_that_come_a_message_too_late(sims: dict[str, Any]) -> None:
    """An assistant text between the calls and their results (what LiteLLM's Responses adapter sent)."""
    body = recorded_anthropic()
    body["messages"][1]["content"] = [b for b in body["messages"][1]["content"] if b["type"] == "tool_use"]
    body["messages"][2:2] = [{"role": "assistant", "content": [{"type": "text", "text": "Calling."}]}]
    with pytest.raises(anthropic.BadRequestError) as raised:
        anthropic.Anthropic(base_url=sims["anthropic"].base_url, api_key="sim-key", max_retries=0).messages.create(
            model=body["model"], max_tokens=100, messages=body["messages"], tools=body["tools"]
        )
    assert "messages.1: `tool_use` ids were found without `tool_result` blocks" in str(raised.value)


def test_anthropic_refuses_a_result_whose_id_the_previous_message_did_not_use(sims: dict[str, Any]) -> None:
    body = recorded_anthropic()
    body["messages"][2]["content"][1]["tool_use_id"] = "toolu_elsewhere"
    body["messages"][2]["content"].append({"type": "tool_result", "tool_use_id": "toolu_01N8a4jWyf116qKTMqKKmjyt"})
    response = anthropic_post(sims["anthropic"], body)
    assert response.status_code == 400
    assert response.json()["error"] == anthropic_refusal(
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_elsewhere. Each "
        "`tool_result` block must have a corresponding `tool_use` block in the previous message."
    )


def test_anthropic_refuses_a_result_with_no_message_before_it(sims: dict[str, Any]) -> None:
    body = recorded_anthropic()
    body["messages"] = body["messages"][2:]
    response = anthropic_post(sims["anthropic"], body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: "
        "toolu_01LtHJmixrs9NcWQkK8hu8hj, toolu_01N8a4jWyf116qKTMqKKmjyt."
    )


# -- Gemini ---------------------------------------------------------------------------------------------------


def gemini_post(s: sim.Simulator, body: dict[str, Any]) -> httpx.Response:
    url = f"{s.root_url}/v1beta/models/gemini-2.5-flash:generateContent"
    return httpx.post(url, json=body, headers={"x-goog-api-key": "sim-key"})


def test_gemini_accepts_the_recorded_loop_and_a_call_turn_followed_by_text(sims: dict[str, Any]) -> None:
    body = fixture_json("gemini", GEMINI_RECORDED)
    assert gemini_post(sims["gemini"], body).status_code == 200
    body["contents"][-1] = {"role": "user", "parts": [{"text": "never mind"}]}  # the API lets this through
    assert gemini_post(sims["gemini"], body).status_code == 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda contents: contents[-1]["parts"].append(copy.deepcopy(contents[-1]["parts"][0])),
            "Please ensure that the number of function response parts is equal to the number of function call "
            "parts of the function call turn.",
        ),
        (
            lambda contents: contents.pop(3),  # the second call turn: its response follows a response turn
            "Please ensure that function response turn comes immediately after a function call turn.",
        ),
    ],
)
def test_gemini_refuses_responses_that_do_not_answer_the_previous_turn(
    change: Any, message: str, sims: dict[str, Any]
) -> None:
    body = fixture_json("gemini", GEMINI_RECORDED)
    change(body["contents"])
    response = gemini_post(sims["gemini"], body)
    assert response.status_code == 400
    assert response.json() == {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    sdk = genai.Client(api_key="sim-key", http_options={"base_url": sims["gemini"].root_url})
    with pytest.raises(errors.ClientError) as raised:
        sdk.models.generate_content(model="gemini-2.5-flash", contents=body["contents"])
    assert raised.value.code == 400 and message in str(raised.value)


# -- Bedrock Converse -----------------------------------------------------------------------------------------


def bedrock_post(s: sim.Simulator, body: dict[str, Any]) -> httpx.Response:
    url = f"{s.root_url}/model/us.amazon.nova-micro-v1:0/converse"
    return httpx.post(url, json=body, headers={"authorization": "Bearer sim-key"})


def recorded_bedrock() -> dict[str, Any]:
    return fixture_json("bedrock", BEDROCK_RECORDED)


def test_bedrock_accepts_the_recorded_loop(sims: dict[str, Any]) -> None:
    assert bedrock_post(sims["bedrock"], recorded_bedrock()).status_code == 200


def test_bedrock_refuses_more_results_than_the_previous_turn_called(sims: dict[str, Any]) -> None:
    body = recorded_bedrock()
    extra = copy.deepcopy(body["messages"][2]["content"][0])
    extra["toolResult"]["toolUseId"] = "tooluse_other"
    body["messages"][2]["content"].append(extra)
    response = bedrock_post(sims["bedrock"], body)
    assert response.status_code == 400 and response.headers["x-amzn-errortype"].startswith("ValidationException")
    assert response.json() == {
        "message": "The number of toolResult blocks at messages.2.content exceeds the number of toolUse blocks of "
        "previous turn."
    }


def test_bedrock_refuses_a_call_without_its_result(sims: dict[str, Any]) -> None:
    body = recorded_bedrock()
    call = body["messages"][1]["content"][-1]["toolUse"]["toolUseId"]
    body["messages"][2]["content"][0]["toolResult"]["toolUseId"] = "tooluse_other"
    response = bedrock_post(sims["bedrock"], body)
    assert response.status_code == 400
    assert response.json() == {
        "message": f"Expected toolResult blocks at messages.2.content for the following Ids: {call}"
    }


# -- a tool history in a request that offers no tools ------------------------------------------------------------
# Anthropic's Messages API and Bedrock's Converse refuse tool blocks in a request without tools (their words
# below); OpenAI's Chat Completions, Azure's and Gemini's take the recorded loop's follow-up with the tools
# taken out (their documented rules are about pairing only), as does Ollama, whose chat templates read a
# tool message like any other.


def test_anthropic_refuses_tool_blocks_without_tools(sims: dict[str, Any]) -> None:
    body = recorded_anthropic()
    del body["tools"]
    response = anthropic_post(sims["anthropic"], body)
    assert response.status_code == 400
    assert response.json()["error"] == anthropic_refusal(
        "Requests which include `tool_use` or `tool_result` blocks must define tools."
    )
    sdk = anthropic.Anthropic(api_key="sim-key", base_url=sims["anthropic"].base_url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="must define tools"):
        sdk.messages.create(model=body["model"], max_tokens=64, messages=body["messages"])


def test_bedrock_refuses_tool_blocks_without_a_tool_config(sims: dict[str, Any]) -> None:
    body = recorded_bedrock()
    del body["toolConfig"]
    response = bedrock_post(sims["bedrock"], body)
    assert response.status_code == 400 and response.headers["x-amzn-errortype"].startswith("ValidationException")
    assert response.json() == {
        "message": "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    }


def test_openai_azure_gemini_and_ollama_take_a_tool_history_without_tools(sims: dict[str, Any]) -> None:
    body = recorded_openai()
    body.pop("tools", None)
    body.pop("tool_choice", None)
    assert any(message["role"] == "tool" for message in body["messages"])
    assert openai_post(sims["openai"], body).status_code == 200
    azure = sims["azure"]
    url = f"{azure.root_url}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    assert httpx.post(url, json=body, headers={"api-key": "sim-key"}).status_code == 200
    contents = fixture_json("gemini", GEMINI_RECORDED)
    contents.pop("tools", None)
    contents.pop("toolConfig", None)
    assert any("functionResponse" in part for turn in contents["contents"] for part in turn["parts"])
    assert gemini_post(sims["gemini"], contents).status_code == 200
    chat = fixture_json("ollama", "chat-nonstream-tool-call.request.json")
    del chat["tools"]
    chat["messages"] += [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    ollama = sim.serve("ollama", models=sim.ANY_MODEL)
    try:
        assert httpx.post(ollama.root_url + "/api/chat", json=chat).status_code == 200
    finally:
        ollama.close()
