"""Which ``data:`` image URLs a message takes: base64 that is base64, checked a chunk at a time."""

from __future__ import annotations

import base64
import time

import msgspec
import pytest

from gtl_nb.protocol import Message, decode, messages
from gtl_nb.protocol.errors import ProtocolError
from gtl_nb.protocol.messages import Part


def url_of(payload: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(payload).decode()


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 47, 48, 49])
def test_every_base64_text_passes_whatever_its_length_against_the_chunk(monkeypatch, size):
    monkeypatch.setattr(messages, "_BASE64_CHUNK", 16)  # a few chunks, and a chunk's edge at each place
    payload = bytes(range(size))
    assert messages.data_url_refusal(url_of(payload)) == (None if size else "the image's base64 data is empty")


def test_what_is_not_base64_is_refused_in_whichever_chunk_it_falls(monkeypatch):
    monkeypatch.setattr(messages, "_BASE64_CHUNK", 16)
    good = url_of(bytes(range(60)))  # 80 characters of base64: five chunks
    start = good.index(",") + 1
    for at in (start, start + 15, start + 16, start + 47, len(good) - 1):
        bad = good[:at] + "*" + good[at + 1 :]
        assert "not valid base64" in (messages.data_url_refusal(bad) or ""), at
    # padding that ends a chunk but not the text: each chunk alone is base64, the whole is not
    edge = url_of(bytes(10)) + "YmM="  # 16 characters ending in "==", then 4 more
    assert "'=' before its end" in (messages.data_url_refusal(edge) or "")
    assert "not a multiple of 4" in (messages.data_url_refusal(good[:-1]) or "")
    assert messages.data_url_refusal(good.replace(";base64", ";charset=x")) is None  # not said to be base64
    # the URL-safe alphabet, as Google's SDKs write Gemini's inline data; but one alphabet throughout
    url_safe = "data:image/jpeg;base64," + base64.urlsafe_b64encode(bytes(range(250, 256)) * 9).decode()
    assert "-" in url_safe and "_" in url_safe and messages.data_url_refusal(url_safe) is None
    assert "mixes the standard alphabet" in (messages.data_url_refusal(url_safe[:-4] + "ab+c") or "")
    assert messages.data_url_refusal(good.replace(";base64", ";BASE64")) is None  # (a parameter's case)
    assert messages.data_url_refusal("data:image/png;base64") == (
        "a data: URL needs a comma before its data (data:image/png;base64,…)"
    )


def test_a_request_on_the_wire_is_refused_naming_the_message_and_the_image():
    frame = {
        "type": "completion_request",
        "session_id": "s",
        "model": "echo",
        "messages": [{"role": "user", "content": "x", "images": [url_of(b"png"), "data:image/png;base64,iV BORw="]}],
    }
    with pytest.raises(ProtocolError) as refused:
        decode(msgspec.json.encode(frame))
    said = str(refused.value)
    assert refused.value.code == "INVALID_REQUEST" and "not valid base64" in said
    assert "images[1]" in said and "$.messages[0]" in said
    assert Message(role="user", images=[url_of(b"png")]).images  # a valid one is taken as given


def test_a_large_image_is_checked_in_linear_time():
    """Twice the data takes about twice the time (a generous bound: a quadratic check would take four)."""
    small, large = url_of(b"\x89PNG" * 250_000), url_of(b"\x89PNG" * 1_000_000)

    def timed(url: str) -> float:
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            assert messages.data_url_refusal(url) is None
            best = min(best, time.perf_counter() - began)
        return best

    assert timed(large) < 8 * timed(small) + 0.05


@pytest.mark.parametrize(
    ("url", "sent"),
    [
        ("data:image/png;base64,AAAA", ("image/png", "AAAA")),
        ("data:base64,AAAA", ("base64", "QUFBQQ==")),  # a type named "base64", its data percent-encoded
        ("data:image/png,x;base64,eA", ("image/png", "eDtiYXNlNjQsZUE=")),  # ";base64" after the comma is data
        ("data:image/png;charset=x;base64,AAA=", ("image/png", "AAA=")),
        ("data:;base64,AAAA", ("application/octet-stream", "AAAA")),
    ],
)
def test_the_check_and_the_providers_read_a_data_urls_header_alike(url, sent):
    """What is checked as base64 is what is sent as base64, and what is sent as percent-encoded bytes was
    never taken for base64: one reading of the header (``data_url_parts``) for both."""
    from gtl_nb.protocol.messages import data_url_parts
    from gtl_nb.providers.base import split_data_url

    assert split_data_url(url) == sent
    assert data_url_parts(url)[1] == (";base64," in url.partition(",")[0] + ",")


# -- bare base64, as the GTL spec's vision example gives an image ----------------------------------------

IMAGES = {
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(40)),
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(41)),
    "image/gif": b"GIF89a\x01\x00\x01\x00" + bytes(range(30)),
    "image/webp": b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(range(33)),
}


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_bare_base64_of_an_image_becomes_its_data_url(kind):
    bare = base64.b64encode(IMAGES[kind]).decode()
    assert Message(role="user", content="x", images=[bare]).images == [f"data:{kind};base64,{bare}"]
    frame = {"type": "completion_request", "session_id": "s", "model": "m"}
    request = decode(msgspec.json.encode({**frame, "messages": [{"role": "user", "content": "x", "images": [bare]}]}))
    assert request.messages[0].images == [f"data:{kind};base64,{bare}"]
    parts = [Part(type="text", text="look:"), Part(type="image", url=bare)]
    assert Message(role="user", parts=parts).images == [f"data:{kind};base64,{bare}"]


def test_the_url_safe_alphabet_and_the_specs_shortest_example_are_read():
    url_safe = base64.urlsafe_b64encode(IMAGES["image/jpeg"] + b"\xfb\xff" * 9).decode()
    assert "-" in url_safe or "_" in url_safe
    assert Message(role="user", images=[url_safe]).images == [f"data:image/jpeg;base64,{url_safe}"]
    assert Message(role="user", images=["iVBORw0KGgo="]).images == ["data:image/png;base64,iVBORw0KGgo="]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (base64.b64encode(b"just some text, not an image").decode(), "must be https:, http: or data: (base64)"),
        ("hello", "must be https:, http: or data: (base64)"),
        (base64.b64encode(IMAGES["image/png"]).decode()[:-1], "not a multiple of 4"),
        (base64.b64encode(IMAGES["image/png"]).decode()[:20] + "*" * 4 + "AAAA", "not valid base64"),
        (base64.b64encode(IMAGES["image/png"]).decode()[:20] + "\n" + "AAA", "not valid base64"),
    ],
)
def test_other_bare_strings_are_refused_naming_the_image(text, said):
    with pytest.raises(ValueError) as refused:
        Message(role="user", images=["data:image/gif;base64,R0lGODlh", text])
    assert said in str(refused.value) and "images[1]" in str(refused.value)
