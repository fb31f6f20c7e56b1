"""A GTL session's answer → an Anthropic ``message`` object, or the Messages stream's server-sent events.

* ``id`` is the GTL session id (``msg_…``), also the ledger row's ``session_id`` and the
  ``request-id`` header. A whole ``message``'s ``model`` is the model that served it, as GTL's
  ``done`` names it (the provider's own word: Anthropic answers ``claude-sonnet-4-5`` with
  ``claude-sonnet-4-5-20250929``, and so does this endpoint); a stream's ``message_start`` carries the
  model the request named, since it is written before the provider's ``done`` says which.
* Reasoning (asked with ``thinking``) → ``thinking`` blocks first, signed as the provider signed them
  (``compat.thinking``). A stream sends each block as Anthropic does: its ``thinking_delta``s, then its
  ``signature_delta`` as its last delta, then its ``content_block_stop`` — GTL's ``reasoning`` marks the
  end of each of the provider's blocks with its signature (``redacted_thinking`` blocks go whole where
  they came). Where no such mark came (a provider that signs nothing, an answer cached before the marks,
  ``display: "omitted"``), the signatures the ``done`` holds go at the end, as ``streamed_signatures`` says.
* Text → a ``text`` block; each GTL tool call → a ``tool_use`` block (``input`` is the parsed
  arguments; arguments that are not a JSON object arrive as ``{"_unparsed_arguments": "<text>"}``, so
  nothing the model wrote is lost). In a stream: ``message_start``, then per block
  ``content_block_start`` / ``content_block_delta`` (``text_delta``, or one ``input_json_delta`` with
  the whole arguments: GTL hands a call over whole) / ``content_block_stop``, then ``message_delta``
  (``stop_reason``, ``usage``) and ``message_stop``.
* ``stop_reason``: GTL ``stop`` → ``end_turn``, ``length`` → ``max_tokens``, ``tool_calls`` →
  ``tool_use``, ``content_filter`` → ``refusal``, ``other`` → ``end_turn``; a ``done`` that names its
  ``stop_sequence`` → ``stop_sequence`` with that sequence (else ``stop_sequence`` is null: OpenAI,
  Gemini and Ollama do not say whether a stop sequence ended the answer).
* ``usage``: ``input_tokens`` = GTL ``tokens_in`` minus its cache reads and writes (Anthropic counts
  both apart), ``cache_read_input_tokens`` = the cached tokens and ``cache_creation_input_tokens`` the
  tokens written to the cache (split by lifetime in ``cache_creation``), ``output_tokens`` =
  ``tokens_out``; every count is always there, 0 when unreported. A stream's ``message_start`` carries
  the input counts when the provider told them before its answer (a ``streaming`` status with
  ``tokens_in``: Anthropic's own ``message_start``, Claude on Bedrock does not), else 0 — never the
  gateway's estimate, which would read as the provider's count —, and ``output_tokens`` 0; the closing
  ``message_delta`` carries every count (the SDK's final message takes them from it).
* An error after the answer began is an ``error`` event (the SDK raises it) and the stream ends there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from gtl_nb.gateway.compat.thinking import answered_blocks, streamed_signatures
from gtl_nb.protocol.messages import (
    Done,
    Error,
    ErrorCode,
    Reasoning,
    Status,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.protocol.session import Transcript

__all__ = ["MessageEncoder", "message_object", "stop_reason", "tool_input", "usage_object"]

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def stop_reason(done: Done) -> str:
    """Anthropic's ``stop_reason`` for a GTL ``done``: ``stop_sequence`` when it names the sequence."""
    if done.finish_reason == "stop" and done.stop_sequence:
        return "stop_sequence"
    return _STOP.get(done.finish_reason, "end_turn")


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """Anthropic's ``usage`` object, every count present (0 where nothing was reported), as the API
    writes it: a client adds ``input_tokens`` and the two cache counts, and a missing one is ``None``
    in the SDK's types."""
    if usage is None:
        usage = _NOTHING_REPORTED
    cache_writes, cache_reads = usage.cache_write_tokens_in or 0, usage.cached_tokens_in or 0
    hour = min(usage.cache_write_1h_tokens_in or 0, cache_writes)
    return {
        "input_tokens": max(0, (usage.tokens_in or 0) - cache_reads - cache_writes),
        "output_tokens": usage.tokens_out or 0,
        "cache_creation_input_tokens": cache_writes,
        "cache_read_input_tokens": cache_reads,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_writes - hour, "ephemeral_1h_input_tokens": hour},
    }


_NOTHING_REPORTED = Usage(session_id="")


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is (see the module docstring)."""
    if not call.arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(call.arguments)
    except msgspec.DecodeError:
        value = None
    return value if isinstance(value, dict) else {"_unparsed_arguments": call.arguments}


def _tool_block(call: ToolCall, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input}


def message_object(transcript: Transcript, *, model: str, thinking_omitted: bool = False) -> dict[str, Any]:
    """The ``message`` object of a session that ended with ``done``; ``model``: the one the request
    named, answered when ``done`` names none that served; ``thinking_omitted``: the request's
    ``thinking.display`` said ``omitted`` (``compat.thinking``)."""
    done = transcript.done
    assert done is not None
    content = answered_blocks(done.provider_data, transcript.reasoning_text, omitted=thinking_omitted)
    if transcript.text:
        content.append({"type": "text", "text": transcript.text})
    content += [_tool_block(call, tool_input(call)) for call in transcript.tool_calls]
    return {
        "id": transcript.session_id,
        "type": "message",
        "role": "assistant",
        "model": done.model or model,
        "content": content,
        "stop_reason": stop_reason(done),
        "stop_sequence": (done.stop_sequence or None) if done.finish_reason == "stop" else None,
        "usage": usage_object(transcript.usage),
    }


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode({"type": name, **payload}) + b"\n\n"


class MessageEncoder:
    """A session's events as the Messages stream (``runner.EventEncoder``)."""

    def __init__(
        self,
        session_id: str,
        *,
        model: str,
        error_object: Callable[[Error], dict[str, Any]],
        thinking_omitted: bool = False,
    ) -> None:
        self.session_id = session_id
        self.model = model
        self.thinking_omitted = thinking_omitted  # ``thinking.display: "omitted"``: no thinking text sent
        self._error_object = error_object
        self._blocks = 0  # blocks started so far: the next block's index
        self._open: str | None = None  # the type of the block still open: "text", "thinking" or none
        self._thinking: list[tuple[int, list[str]]] = []  # each thinking block sent: its index and text, to sign
        self._marked = False  # whether the provider's blocks came with their ends marked (signed where they end)
        self._input: Usage | None = None  # the input counts the provider told before its answer
        self._usage: Usage | None = None

    def open(self, first: StreamEvent) -> bytes:
        message = {
            "id": self.session_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_object(self._input),
        }
        return _event("message_start", {"message": message})

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, Token):
            if not event.text:
                return b""
            out = b"" if self._open == "text" else self._close() + self._start({"type": "text", "text": ""})
            self._open = "text"
            delta = {"type": "text_delta", "text": event.text}
            return out + _event("content_block_delta", {"index": self._blocks - 1, "delta": delta})
        if isinstance(event, Reasoning):
            return self._reasoning(event)
        if isinstance(event, Status):  # (before the answer: ``runner`` hands them on until it begins)
            # the counts of the call that told them; any other status — a retry, a failover, the next
            # call's start — leaves them to that call's own word
            self._input = None
            if event.state == "streaming" and event.tokens_in is not None:
                self._input = Usage(
                    session_id=event.session_id,
                    tokens_in=event.tokens_in,
                    cached_tokens_in=event.cached_tokens_in,
                    cache_write_tokens_in=event.cache_write_tokens_in,
                    cache_write_1h_tokens_in=event.cache_write_1h_tokens_in,
                )
            return b""
        if isinstance(event, ToolCallEvent):
            call = event.function
            out = self._close() + self._start(_tool_block(call, {}))  # the input arrives as the delta
            delta = {"type": "input_json_delta", "partial_json": msgspec.json.encode(tool_input(call)).decode()}
            out += _event("content_block_delta", {"index": self._blocks - 1, "delta": delta})
            return out + _event("content_block_stop", {"index": self._blocks - 1})
        if isinstance(event, Usage):
            self._usage = event
            return b""
        if isinstance(event, Done):
            matched = (event.stop_sequence or None) if event.finish_reason == "stop" else None
            delta = {"stop_reason": stop_reason(event), "stop_sequence": matched}
            out = self._signed(event)
            out += _event("message_delta", {"delta": delta, "usage": usage_object(self._usage)})
            return out + _event("message_stop", {})
        if isinstance(event, Error):
            return _event("error", {"error": self._error_object(event)})
        return b""  # (nothing else has an event here)

    def interrupt(self, message: str, code: ErrorCode = "PROVIDER_UNAVAILABLE") -> bytes:
        error = Error(session_id=self.session_id, code=code, message=message)
        return _event("error", {"error": self._error_object(error)})

    def _start(self, block: dict[str, Any]) -> bytes:
        self._blocks += 1
        return _event("content_block_start", {"index": self._blocks - 1, "content_block": block})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"index": self._blocks - 1})

    def _reasoning(self, event: Reasoning) -> bytes:
        """A piece of thinking: its text as a ``thinking_delta`` (a block opened for it when none is), and
        at a provider block's end its ``signature_delta`` and ``content_block_stop`` — or a redacted block,
        whole. With ``display: "omitted"`` no text goes, and the ends wait for the ``done`` (``_signed``)."""
        omitted = self.thinking_omitted
        if event.redacted is not None and not omitted:
            self._marked = True
            out = self._close() + self._start({"type": "redacted_thinking", "data": event.redacted})
            return out + _event("content_block_stop", {"index": self._blocks - 1})
        out = b""
        if event.text or (event.signature and not omitted):
            if self._open != "thinking":
                out = self._close() + self._start({"type": "thinking", "thinking": "", "signature": ""})
                self._open = "thinking"
                self._thinking.append((self._blocks - 1, []))
            self._thinking[-1][1].append(event.text)
            if event.text and not omitted:
                delta = {"type": "thinking_delta", "thinking": event.text}
                out += _event("content_block_delta", {"index": self._blocks - 1, "delta": delta})
        if event.signature and not omitted:  # the provider's block ends here, signed: as Anthropic ends one
            self._marked = True
            delta = {"type": "signature_delta", "signature": event.signature}
            out += _event("content_block_delta", {"index": self._blocks - 1, "delta": delta}) + self._close()
        return out

    def _signed(self, done: Done) -> bytes:
        """What ends the content at ``done``: the block still open closed, after its signature when it is a
        thinking block whose end came unmarked; the other unmarked thinking blocks' signatures and any
        redacted blocks, which only ``done`` has (``thinking.streamed_signatures``). Nothing more when the
        provider's blocks came marked: each was signed, or sent whole, where it ended."""
        if self._marked or not (self._thinking or done.provider_data):
            return self._close()
        streamed = ["".join(texts) for _, texts in self._thinking]
        signed, redacted = streamed_signatures(done.provider_data, streamed, omitted=self.thinking_omitted)
        still_open = self._blocks - 1 if self._open == "thinking" else None
        first, later = b"", b""
        for (index, _), signature in zip(self._thinking, signed, strict=False):
            if signature:
                delta = {"type": "signature_delta", "signature": signature}
                if index == still_open:  # its last delta, before its stop, as Anthropic sends it
                    first += _event("content_block_delta", {"index": index, "delta": delta})
                else:
                    later += _event("content_block_delta", {"index": index, "delta": delta})
        out = first + self._close() + later
        for block in redacted:
            out += self._start(block) + _event("content_block_stop", {"index": self._blocks - 1})
        return out
