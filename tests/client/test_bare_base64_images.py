"""The GTL spec's vision example gives an image as bare base64: the client takes it, and the provider is
sent it as the ``data:`` URL of its type — here OpenAI's simulator, on loopback."""

from __future__ import annotations

import base64
import json

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.protocol import InvalidRequestError

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(60))


def test_a_bare_base64_image_reaches_the_provider_as_a_data_url():
    simulator = sim.serve("openai", seed=5)
    try:
        providers = {"openai": {"api_key": "sim-key", "base_url": simulator.base_url}}
        bare = base64.b64encode(PNG).decode()
        with gtl_nb.connect(providers=providers, environ={}) as client:
            message = {"role": "user", "content": "What's in this image?", "images": [bare]}
            assert client.complete("gpt-4o-mini", [message]).text
            before = len(simulator.requests)
            with pytest.raises(InvalidRequestError) as refused:
                client.complete("gpt-4o-mini", [{**message, "images": ["bm90IGFuIGltYWdlIGF0IGFsbA=="]}])
            assert "images[0]" in str(refused.value) and len(simulator.requests) == before
        sent = json.loads(simulator.requests[before - 1].body)
        urls = [
            part["image_url"]["url"]
            for part in sent["messages"][-1]["content"]
            if isinstance(part, dict) and part.get("type") == "image_url"
        ]
        assert urls == [f"data:image/png;base64,{bare}"]
    finally:
        simulator.close()
