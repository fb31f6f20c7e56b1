"""An image's media type as the caller wrote it in a ``data:`` URL — any letter case, or ``image/jpg`` — reaches
Anthropic spelled as its API lists the types it takes (its simulator refuses any other spelling, as the API
does), and every provider that reads images answers it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import wire

import gtl_nb
from gtl_nb import sim
from gtl_nb.providers.base import image_media_type

_RECORDED = json.loads((wire.fixture_dir("anthropic") / "nonstream-vision-base64.request.json").read_text())
JPEG = next(block for block in _RECORDED["messages"][0]["content"] if block["type"] == "image")["source"]["data"]
TARGETS = (
    "anthropic:claude-haiku-4-5",
    "openai:gpt-4o-mini",
    "gemini:gemini-2.5-flash",
    "bedrock:amazon.nova-lite-v1:0",
)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[gtl_nb.Client, dict[str, sim.Simulator]]]:
    started = {name: sim.serve(name, seed=2) for name in ("anthropic", "openai", "gemini", "bedrock")}
    providers: dict[str, dict[str, Any]] = {
        name: {"api_key": "sim-key", "base_url": simulator.base_url} for name, simulator in started.items()
    }
    providers["bedrock"] = {
        "base_url": started["bedrock"].base_url,
        "region": "us-east-1",
        "aws_access_key_id": "AKIDSIMULATOR",
        "aws_secret_access_key": "sim-secret",
    }
    client = gtl_nb.connect(providers=providers, config={"ledger": {"enabled": False}}, environ={})
    yield client, started
    client.close()
    for simulator in started.values():
        simulator.close()


@pytest.mark.parametrize("label", ["image/jpeg", "IMAGE/JPEG", "image/jpg", "Image/Jpg"])
@pytest.mark.parametrize("target", TARGETS)
def test_a_jpeg_labelled_any_common_way_is_answered(label: str, target: str, served: Any) -> None:
    client, started = served
    message = {"role": "user", "content": "What is in the picture?", "images": [f"data:{label};base64,{JPEG}"]}
    assert client.complete(target, [message], max_tokens=32).text
    if target.startswith("anthropic:"):
        sent = json.loads(started["anthropic"].requests[-1].body)["messages"][0]["content"]
        assert [block["source"]["media_type"] for block in sent if block["type"] == "image"] == ["image/jpeg"]


def test_the_spelling_of_other_types_is_lowered_and_kept() -> None:
    assert image_media_type(" Image/PNG ") == "image/png"
    assert image_media_type("image/x-png") == "image/png"
    assert image_media_type("image/bmp") == "image/bmp"  # the provider's to refuse, in its words
