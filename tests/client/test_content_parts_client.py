"""Message dicts whose content is a list of parts, as the client takes them."""

from __future__ import annotations

import pytest

import gtl_nb
from gtl_nb.protocol import InvalidRequestError

PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture(scope="module")
def client():
    connected = gtl_nb.connect(environ={})
    yield connected
    connected.close()


def test_user_parts_keep_their_order(client):
    request = client.request(
        "echo",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Image 1:"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "text", "text": "Image 2:"},
                    {"type": "image", "url": PNG},
                ],
            }
        ],
    )
    assert request.messages[0].in_order() == [
        ("text", "Image 1:"),
        ("image", PNG),
        ("text", "Image 2:"),
        ("image", PNG),
    ]


def test_text_parts_alone_are_the_joined_text(client):
    request = client.request(
        "echo", [{"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, "hi"]
    )
    assert request.messages[0].content == "a\nb" and not request.messages[0].parts


@pytest.mark.parametrize("role", ["system", "assistant"])
def test_an_image_where_no_provider_takes_one_is_refused(client, role):
    content = [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": PNG}}]
    with pytest.raises(InvalidRequestError, match="text parts only"):
        client.request("echo", [{"role": role, "content": content}, "hi"])


@pytest.mark.parametrize(
    "message, complaint",
    [
        ({"role": "user", "content": []}, "empty"),
        ({"role": "user", "content": [{"type": "audio"}]}, "a content part is"),
        ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "needs a URL"),
        ({"role": "user", "content": [{"type": "text", "text": "a"}], "images": [PNG]}, "not both"),
    ],
)
def test_parts_that_say_nothing_clear_are_refused(client, message, complaint):
    with pytest.raises(InvalidRequestError, match=complaint):
        client.request("echo", [message])


def test_a_marked_part_marks_its_message(client):
    content = [{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "q"}]
    assert client.request("echo", [{"role": "user", "content": content}]).messages[0].cache_point is True
    with pytest.raises(InvalidRequestError, match="cache_control"):
        client.request("echo", [{"role": "user", "content": [{"type": "text", "text": "d", "cache_control": True}]}])
