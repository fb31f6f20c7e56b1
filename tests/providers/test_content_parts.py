"""Text and images in their order (a message's ``parts``): the protocol's rule, and each dialect's body."""

from __future__ import annotations

import base64
import json
import urllib.parse

import msgspec
import pytest

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import CompletionRequest, Message, Part, Tool, ToolCall
from gtl_nb.providers import anthropic, bedrock, gemini, ollama
from gtl_nb.providers.base import Deployment
from gtl_nb.providers.openai import chat_messages

PNG = "data:image/png;base64,iVBORw0KGgo="
JPEG = "data:image/jpeg;base64,/9j/4AAQ"
PIECES = [("text", "Image 1:"), ("image", PNG), ("text", "Image 2:"), ("image", JPEG), ("text", "Which is larger?")]


def interleaved(role: str = "user") -> Message:
    return Message.from_pieces(role, PIECES)


# -- the protocol's rule ----------------------------------------------------------------------------------


def test_parts_keep_the_order_and_the_message_keeps_each_image_once():
    message = interleaved()
    assert message.in_order() == PIECES
    assert message.content == "Image 1:\nImage 2:\nWhich is larger?"  # what a reader without order sees
    assert message.images == [PNG, JPEG]
    assert all(part.url == "" for part in message.parts)  # the URLs live in images only
    wire = msgspec.json.encode(message)
    assert wire.count(PNG.encode()) == 1 and wire.count(JPEG.encode()) == 1
    assert msgspec.json.decode(wire, type=Message) == message


def test_parts_may_name_their_images_or_leave_them_to_images():
    by_url = Message(role="user", parts=[Part(type="text", text="a"), Part(type="image", url=PNG)])
    by_place = Message(role="user", parts=[Part(type="text", text="a"), Part(type="image")], images=[PNG])
    assert by_url == by_place
    assert msgspec.structs.replace(by_url, cache_point=True).in_order() == [("text", "a"), ("image", PNG)]


def test_the_order_leaves_blank_texts_out():
    message = Message.from_pieces("user", [("text", " "), ("image", PNG), ("text", "\n"), ("text", "why?")])
    assert message.in_order() == [("image", PNG), ("text", "why?")]


def test_a_message_without_parts_has_no_order():
    assert Message(role="user", content="hi", images=[PNG]).in_order() is None
    assert Message.from_pieces("user", [("text", "a")]) == Message(role="user", content="a")
    assert Message.from_pieces("user", [("image", PNG)]) == Message(role="user", images=[PNG])


def test_several_texts_keep_their_pieces_and_anthropic_gets_them_as_blocks():
    """Adjacent text blocks were joined with a newline into one, a character the caller never sent; the
    pieces are kept (``content`` still joins them, for a reader without parts)."""
    message = Message.from_pieces("user", [("text", "a"), ("text", "b")])
    assert message.in_order() == [("text", "a"), ("text", "b")] and message.content == "a\nb"
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    body = anthropic.build_body(request(message, "claude-sonnet-4-5"), deployment)
    assert body["messages"][0]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    (block,) = anthropic._blocks(Message.from_pieces("tool", [("text", "a"), ("text", "b")], tool_call_id="t1"))
    assert block["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    (entry,) = chat_messages([message])
    assert entry["content"] == "a\nb"  # OpenAI's text alone is the content, as it always was


@pytest.mark.parametrize(
    "wire, complaint",
    [
        (b'{"role":"user","parts":[{"type":"image"}]}', "1 image parts for 0 images"),
        (b'{"role":"user","parts":[{"type":"image","url":"u"},{"type":"image"}]}', "every image part its url"),
        (b'{"role":"user","images":["a"],"parts":[{"type":"image","url":"b"}]}', "differ"),
        (b'{"role":"user","parts":[{"type":"image","url":"u","text":"x"}]}', "no text"),
        (b'{"role":"user","parts":[{"type":"text","text":"x","url":"u"}]}', "no url"),
        (b'{"role":"user","parts":[{"type":"audio"}]}', "Invalid enum value"),
    ],
)
def test_parts_that_do_not_agree_are_refused(wire, complaint):
    with pytest.raises(msgspec.ValidationError, match=complaint):
        msgspec.json.decode(wire, type=Message)


# -- each dialect -----------------------------------------------------------------------------------------


def request(message: Message, model: str) -> CompletionRequest:
    return CompletionRequest(session_id="s", model=model, messages=[message])


def test_openai_sends_the_parts_in_order():
    (entry,) = chat_messages([interleaved()])
    assert [(p["type"], p.get("text") or p["image_url"]["url"]) for p in entry["content"]] == [
        ("text", "Image 1:"),
        ("image_url", PNG),
        ("text", "Image 2:"),
        ("image_url", JPEG),
        ("text", "Which is larger?"),
    ]


def test_anthropic_sends_the_blocks_in_order_for_users_and_tool_results():
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    body = anthropic.build_body(request(interleaved(), "claude-sonnet-4-5"), deployment)
    assert [b["type"] for b in body["messages"][0]["content"]] == ["text", "image", "text", "image", "text"]
    assert body["messages"][0]["content"][1]["source"]["media_type"] == "image/png"
    result = Message.from_pieces("tool", PIECES, tool_call_id="t1")
    (block,) = anthropic._blocks(result)
    assert [b["type"] for b in block["content"]] == ["text", "image", "text", "image", "text"]


def test_without_parts_anthropic_still_puts_images_first():
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    plain = Message(role="user", content="What is this?", images=[PNG])
    body = anthropic.build_body(request(plain, "claude-sonnet-4-5"), deployment)
    assert [b["type"] for b in body["messages"][0]["content"]] == ["image", "text"]


def test_gemini_sends_the_parts_in_order():
    _, contents = gemini.convert_messages([interleaved()])
    kinds = ["inline_data" if "inline_data" in p or "inlineData" in p else "text" for p in contents[0]["parts"]]
    assert kinds == ["text", "inline_data", "text", "inline_data", "text"]


def test_converse_sends_the_blocks_in_order():
    deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
    body = bedrock.build_body(request(interleaved(), "amazon.nova-lite-v1:0"), deployment)
    kinds = [next(iter(block)) for block in body["messages"][0]["content"]]
    assert kinds == ["text", "image", "text", "image", "text"]
    assert [b["image"]["format"] for b in body["messages"][0]["content"] if "image" in b] == ["png", "jpeg"]


def test_ollama_which_has_no_order_gets_the_text_and_the_images():
    (entry,) = ollama._messages([interleaved()])
    assert entry["content"] == "Image 1:\nImage 2:\nWhich is larger?"
    assert len(entry["images"]) == 2


def test_a_blank_text_part_is_not_sent_as_a_blank_block():
    message = Message.from_pieces("user", [("text", ""), ("image", PNG), ("text", "what?")])
    deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
    body = bedrock.build_body(request(message, "amazon.nova-lite-v1:0"), deployment)
    assert [next(iter(block)) for block in body["messages"][0]["content"]] == ["image", "text"]
    assert '"text": ""' not in json.dumps(body)


@pytest.mark.parametrize("blank", [" ", "\n", "\t "])
def test_a_blank_text_part_is_never_a_block_of_its_own(blank):
    message = Message.from_pieces("user", [("text", "A:"), ("image", PNG), ("text", blank), ("image", JPEG)])
    deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
    converse = bedrock.build_body(request(message, "amazon.nova-lite-v1:0"), deployment)
    assert [next(iter(block)) for block in converse["messages"][0]["content"]] == ["text", "image", "image"]
    deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
    claude = anthropic.build_body(request(message, "claude-sonnet-4-5"), deployment)
    assert [b["type"] for b in claude["messages"][0]["content"]] == ["text", "image", "image"]
    (entry,) = chat_messages([message])
    assert [p["type"] for p in entry["content"]] == ["text", "image_url", "image_url"]
    _, contents = gemini.convert_messages([message])
    assert len(contents[0]["parts"]) == 3


def test_converse_sends_a_tool_results_images_in_it():
    deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
    call = Message(role="assistant", tool_calls=[ToolCall(id="t1", name="draw")])
    plain = Message(role="tool", content="two charts", images=[PNG, JPEG], tool_call_id="t1")
    ordered = Message.from_pieces(
        "tool", [("text", "A:"), ("image", PNG), ("text", "B:"), ("image", JPEG)], tool_call_id="t1"
    )
    for result, kinds in ((plain, ["text", "image", "image"]), (ordered, ["text", "image", "text", "image"])):
        messages = [Message(role="user", content="draw"), call, result]
        body = bedrock.build_body(
            CompletionRequest(
                session_id="s", model="amazon.nova-lite-v1:0", messages=messages, tools=[Tool(name="draw")]
            ),
            deployment,
        )
        (block,) = body["messages"][-1]["content"]
        assert [next(iter(item)) for item in block["toolResult"]["content"]] == kinds
    empty = Message(role="tool", content="", tool_call_id="t1")
    messages = [Message(role="user", content="draw"), call, empty]
    body = bedrock.build_body(
        CompletionRequest(session_id="s", model="amazon.nova-lite-v1:0", messages=messages, tools=[Tool(name="draw")]),
        deployment,
    )
    assert body["messages"][-1]["content"][0]["toolResult"]["content"] == [{"text": ""}]  # as before


BLANK_TURNS = [
    Message.from_pieces("user", [("text", " "), ("text", "\n")]),  # several blank texts: parts, none sent
    Message(role="user", content=""),
]


@pytest.mark.parametrize("blank", BLANK_TURNS)
@pytest.mark.parametrize("dialect", ["anthropic", "gemini", "bedrock"])
def test_a_user_turn_with_nothing_to_send_is_refused_not_left_out(dialect, blank):
    """Left out, the assistant's turn before it ended the conversation: the model continued its own text
    (a prefill) instead of answering — and the caller never learnt why."""
    history = [
        Message(role="user", content="Write a poem"),
        Message(role="assistant", content="Roses are red"),
        blank,
    ]
    with pytest.raises(InvalidRequestError, match=r"messages\[2\] \(user\) holds no text or image"):
        if dialect == "anthropic":
            deployment = Deployment(name="a", type="anthropic", base_url="http://127.0.0.1:9", api_key="k")
            anthropic.build_body(
                CompletionRequest(session_id="s", model="claude-sonnet-4-5", messages=history), deployment
            )
        elif dialect == "bedrock":
            deployment = Deployment(name="b", type="bedrock", base_url="http://127.0.0.1:9")
            bedrock.build_body(
                CompletionRequest(session_id="s", model="amazon.nova-lite-v1:0", messages=history), deployment
            )
        else:
            gemini.convert_messages(history)


def test_an_empty_assistant_turn_is_still_left_out():
    history = [
        Message(role="user", content="a"),
        Message(role="assistant", content=""),
        Message(role="user", content="b"),
    ]
    _, contents = gemini.convert_messages(history)
    assert [content["role"] for content in contents] == ["user"]  # the two user turns, one after the other


# -- inline images in every provider's alphabet --------------------------------------------------------

RAW = bytes(range(250, 256)) + b"\xfb\xff>?"  # bytes whose base64 holds + and / (and - _ URL-safe)
STANDARD = base64.b64encode(RAW).decode()


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/png;base64,{STANDARD}",
        f"data:image/png;base64,{base64.urlsafe_b64encode(RAW).decode()}",  # as Google's SDKs write it
        "data:image/png," + urllib.parse.quote_from_bytes(RAW),  # RFC 2397's percent-encoded form
    ],
    ids=["standard", "url-safe", "percent-encoded"],
)
def test_every_provider_that_takes_inline_bytes_gets_them_in_standard_base64(url):
    """A ``data:`` URL's bytes reach Anthropic, Bedrock and Ollama as the standard base64 each decodes,
    whichever form the caller wrote them in — sent on as written, a URL-safe or percent-encoded image was
    a 400 from the provider after a round trip; Gemini gets base64 in either alphabet as written."""
    assert "+" in STANDARD and "/" in STANDARD
    message = Message(role="user", content="What is this?", images=[url])
    claude = anthropic.build_body(request(message, "claude-sonnet-4-5"), Deployment(name="a", type="anthropic"))
    (image,) = [block for block in claude["messages"][0]["content"] if block["type"] == "image"]
    assert image["source"] == {"type": "base64", "media_type": "image/png", "data": STANDARD}
    _, contents = gemini.convert_messages([message])  # (Gemini reads URL-safe base64 too: kept as written)
    expected = url.partition(",")[2] if ";base64" in url else STANDARD
    assert [part["inlineData"] for part in contents[0]["parts"] if "inlineData" in part] == [
        {"mimeType": "image/png", "data": expected}
    ]
    converse = bedrock.build_body(request(message, "amazon.nova-lite-v1:0"), Deployment(name="b", type="bedrock"))
    assert [block["image"] for block in converse["messages"][0]["content"] if "image" in block] == [
        {"format": "png", "source": {"bytes": STANDARD}}
    ]
    (entry,) = ollama._messages([message])
    assert entry["images"] == [STANDARD]


def test_openai_gets_a_data_url_in_standard_base64_and_any_other_url_as_written():
    from gtl_nb.providers.base import standard_data_url

    standard = f"data:image/png;base64,{STANDARD}"
    assert standard_data_url(standard) is standard  # (no copy of an image already as it should be)
    assert standard_data_url("data:image/png," + urllib.parse.quote_from_bytes(RAW)) == standard
    assert standard_data_url(f"data:image/png;base64,{base64.urlsafe_b64encode(RAW).decode()}") == standard
    assert standard_data_url("https://example.com/a.png") == "https://example.com/a.png"
    percent_encoded = "data:image/png," + urllib.parse.quote_from_bytes(RAW)
    message = Message(role="user", content="What is this?", images=[percent_encoded])
    (entry,) = chat_messages([message])
    assert [part["image_url"]["url"] for part in entry["content"] if part["type"] == "image_url"] == [standard]
