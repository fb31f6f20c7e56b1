"""A GTL session's answer → an OpenAI ``chat.completion`` object, or ``chat.completion.chunk`` server-sent events.

* The answer's ``id`` is the GTL session id (``chatcmpl-…``), which is also the ledger row's
  ``session_id`` and the ``x-request-id`` header. A whole answer's ``model`` is the model that served
  it, as GTL's ``done`` names it (the provider's own word: OpenAI answers ``gpt-4o-mini`` with its
  dated snapshot, ``gpt-4o-mini-2024-07-18``, and so does this endpoint); a stream's chunks carry the
  model the request named, since the first is written before the provider's ``done`` says which.
* Text → ``message.content`` / ``delta.content``; each GTL tool call → ``message.tool_calls[i]``, or in
  a stream one delta with ``index``, ``id``, ``type`` and the function's name and empty arguments, then
  one with the arguments (GTL hands a call over whole, so there is no finer piece to pass on).
* ``finish_reason``: GTL's ``stop``, ``length``, ``tool_calls`` and ``content_filter`` are OpenAI's
  own; ``other`` (a provider's reason OpenAI has no word for) becomes ``stop``.
* ``usage``: ``prompt_tokens`` = GTL ``tokens_in`` (cached tokens included, as OpenAI counts),
  ``completion_tokens`` = ``tokens_out``, their sum, and — whichever provider answered, whole or
  streamed — both details objects with the fields OpenAI itself sends: ``prompt_tokens_details``
  (``cached_tokens``, ``audio_tokens``) and ``completion_tokens_details`` (``reasoning_tokens``,
  ``audio_tokens``, ``accepted_prediction_tokens``, ``rejected_prediction_tokens``), so a caller's
  ``usage.prompt_tokens_details.cached_tokens`` works for every deployment (the SDK reads a missing
  object as ``None``). ``prompt_tokens_details`` also carries ``cache_write_tokens``, the prompt tokens
  written to the provider's cache (Anthropic's ``cache_creation_input_tokens``, Bedrock's
  ``cacheWriteInputTokens``), billed at their own rate: OpenAI caches without being asked and bills no
  write, so its API sends none, but the SDK's ``PromptTokensDetails`` defines the field, so a caller reads
  it typed — kept, always present, for the cost of prompt caching to be seen through this endpoint. A
  count the provider did not report is ``0`` (GTL never estimates; no audio or predicted output passes
  through GTL, so those are ``0`` for every answer), ``text_tokens``/``image_tokens`` are left out (a
  split of the prompt no provider reports here; ``0`` would be false); no usage at all leaves ``usage``
  null. A stream carries it in one last chunk (``choices: []``) when the request said
  ``stream_options.include_usage``.
* A stream ends with ``data: [DONE]``; an error after the answer began is ``data: {"error": {…}}``
  (which the SDK raises as ``APIError``) and the stream ends without ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from gtl_nb.protocol.messages import Done, Error, ErrorCode, StreamEvent, Token, ToolCall, ToolCallEvent, Usage
from gtl_nb.protocol.session import Transcript

__all__ = ["ChunkEncoder", "completion_object", "finish_reason", "usage_object"]

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}


def finish_reason(done: Done) -> str:
    """OpenAI's ``finish_reason`` for a GTL ``done``."""
    return _FINISH.get(done.finish_reason, "stop")


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    """OpenAI's ``usage`` object for a GTL ``usage`` event (``None``: nothing was reported)."""
    if usage is None or (usage.tokens_in is None and usage.tokens_out is None):
        return None
    prompt = usage.tokens_in or 0
    completion = usage.tokens_out or 0
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    result["prompt_tokens_details"] = {
        "cached_tokens": usage.cached_tokens_in or 0,
        "cache_write_tokens": usage.cache_write_tokens_in or 0,
        "audio_tokens": 0,
    }
    result["completion_tokens_details"] = {
        "reasoning_tokens": usage.reasoning_tokens_out or 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    return result


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def completion_object(transcript: Transcript, *, model: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` object of a session that ended with ``done``; ``model``: the one the
    request named, answered when ``done`` names none that served."""
    done = transcript.done
    assert done is not None
    message: dict[str, Any] = {"role": "assistant", "content": transcript.text or None, "refusal": None}
    if transcript.tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in transcript.tool_calls]
    elif message["content"] is None:
        message["content"] = ""  # an answer with neither text nor calls is empty text, not absent text
    return {
        "id": transcript.session_id,
        "object": "chat.completion",
        "created": created,
        "model": done.model or model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(done)}],
        "usage": usage_object(transcript.usage),
    }


class ChunkEncoder:
    """A session's events as ``chat.completion.chunk`` server-sent events (``runner.EventEncoder``)."""

    def __init__(
        self, session_id: str, *, model: str, created: int, include_usage: bool, error_body: Callable[[Error], bytes]
    ) -> None:
        self.session_id = session_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self._error_body = error_body
        self._calls = 0
        self._usage: Usage | None = None
        self._text_frame: tuple[bytes, bytes] | None = None

    def open(self, first: StreamEvent) -> bytes:
        # as OpenAI streams it: an answer that starts with a tool call has no text (``null``), not ``""``
        content = None if isinstance(first, ToolCallEvent) else ""
        return self._chunk([self._choice({"role": "assistant", "content": content})])

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, Token):
            # the bulk of a stream: the chunk around the text is the same every time (``_text_frame``)
            if not event.text:
                return b""
            head, tail = self._text_frame or self._frame_text()
            return head + msgspec.json.encode(event.text) + tail
        if isinstance(event, ToolCallEvent):
            index = self._calls
            self._calls += 1
            call = event.function
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            body = {"index": index, "function": {"arguments": call.arguments}}
            return self._chunk([self._choice({"tool_calls": [head]})]) + self._chunk(
                [self._choice({"tool_calls": [body]})]
            )
        if isinstance(event, Usage):
            self._usage = event  # sent after the finish chunk, as OpenAI does
            return b""
        if isinstance(event, Done):
            out = self._chunk([self._choice({}, finish_reason(event))])
            if self.include_usage:
                out += self._chunk([], usage=usage_object(self._usage))
            return out + b"data: [DONE]\n\n"
        if isinstance(event, Error):
            return b"data: " + self._error_body(event) + b"\n\n"
        return b""  # statuses and reasoning (never asked for) have no place in a chunk

    def interrupt(self, message: str, code: ErrorCode = "PROVIDER_UNAVAILABLE") -> bytes:
        error = Error(session_id=self.session_id, code=code, message=message)
        return b"data: " + self._error_body(error) + b"\n\n"

    def _frame_text(self) -> tuple[bytes, bytes]:
        """The bytes of a text chunk before and after its JSON-encoded text: ``_chunk`` of a content
        delta, cut around a marker (at its last place: the text is the last field that varies, and the
        caller's model name, before it, could hold the marker too), so the two make exactly that chunk."""
        marker = msgspec.json.encode("\x00gtl-text\x00")
        whole = self._chunk([self._choice({"content": "\x00gtl-text\x00"})])
        head, _, tail = whole.rpartition(marker)
        self._text_frame = (head, tail)
        return self._text_frame

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _chunk(self, choices: list[dict[str, Any]], **usage: Any) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.session_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage.get("usage")  # null on every chunk but the last, as OpenAI sends it
        return b"data: " + msgspec.json.encode(chunk) + b"\n\n"
