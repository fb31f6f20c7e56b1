"""A defect in a compatible format's encoder still ends the client's answer in that format's own error,
not a dropped connection: an error reply before the answer began, an error event after; the session
stops, its ledger row is written once, and the gateway logs the defect."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gtl_nb.gateway.compat.anthropic_response import MessageEncoder
from gtl_nb.gateway.compat.openai_response import ChunkEncoder
from gtl_nb.protocol.messages import Token
from tests.gateway.conftest import write_toml
from tests.gateway.test_http import serving
from tests.ledger_wait import rows_when

PROMPT = [{"role": "user", "content": "Tell me about the harbour of Bergen"}]


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder") / "ledger.sqlite"


@pytest.fixture(scope="module")
def base_url(ledger_path: Path) -> Iterator[str]:
    tables = {"providers.echo": {}, "ledger": {"path": str(ledger_path)}}
    with serving(write_toml(ledger_path.parent / "gtl.toml", tables)) as served:
        yield served.url


def _broken(original: Any) -> Any:
    def encode(self: Any, event: Any) -> bytes:
        if isinstance(event, Token):
            raise RuntimeError("an encoder defect")
        return original(self, event)

    return encode


def test_a_defect_mid_stream_ends_it_with_an_error_event(
    base_url: str, ledger_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(ChunkEncoder, "encode", _broken(ChunkEncoder.encode))
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", max_retries=0)
    with caplog.at_level(logging.ERROR, logger="gtl_nb.gateway.compat"):
        stream = client.chat.completions.create(model="echo", messages=PROMPT, stream=True)
        with pytest.raises(openai.APIError, match="could not write the answer in this format") as raised:
            for _chunk in stream:
                pass
    assert not isinstance(raised.value, openai.APIConnectionError)  # an answer, not a dropped connection
    assert "its answer could not be written in the format" in caplog.text and "an encoder defect" in caplog.text
    session = stream.response.headers["x-request-id"]
    (row,) = rows_when(ledger_path, session_id=session)
    assert row["status"] in ("cancelled", "ok")  # written once, whichever came first: the cancel or the end


def test_a_defect_before_the_answer_began_is_the_formats_error_reply(
    base_url: str, ledger_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def open_broken(self: Any, first: Any) -> bytes:
        raise RuntimeError("an encoder defect")

    monkeypatch.setattr(MessageEncoder, "open", open_broken)
    client = anthropic.Anthropic(base_url=base_url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.InternalServerError, match="could not write the answer in this format") as raised:
        client.messages.create(model="echo", max_tokens=100, messages=PROMPT, stream=True)
    session = raised.value.response.headers["request-id"]
    assert len(rows_when(ledger_path, session_id=session)) == 1
