"""A GTL session's answer → an OpenAI Responses API ``response`` object, or its server-sent events.

* ``id`` is the GTL session id (``resp_…``), also the ledger row's ``session_id`` and the
  ``x-request-id`` header; ``model`` the model that served it (GTL's ``done``), as on chat — in a
  stream, the events before the last carry the model the request named.
* ``output``: the provider's reasoning, when the request asked for a summary and the provider gave any
  (``responses_request``), as one ``reasoning`` item (``rs_…``) whose one ``summary_text`` is that text;
  the answer's text as one ``message`` item (``msg_…``, one ``output_text`` part with
  ``annotations: []``), then each GTL tool call as a ``function_call`` item (``fc_…``, its ``call_id``
  the GTL call's id, ``name``, ``arguments``, ``status: "completed"``). An answer with neither text
  nor calls is one message of empty text.
* ``status``: ``completed``; ``incomplete`` with ``incomplete_details.reason`` ``max_output_tokens``
  (GTL ``length``) or ``content_filter`` (the message item's status ``incomplete`` too).
* ``usage``: ``input_tokens`` (cached included, as OpenAI counts) with
  ``input_tokens_details.cached_tokens`` and ``cache_write_tokens``, ``output_tokens`` with
  ``output_tokens_details.reasoning_tokens``, ``total_tokens``; ``null`` when the provider reported none.
* The request's settings are echoed (``responses_request``), ``store: false`` among them.
* A stream is ``event:``/``data:`` pairs, each with a ``sequence_number`` from 0: ``response.created``
  and ``response.in_progress`` once the answer begins; per item ``response.output_item.added``, for a
  message ``response.content_part.added``, one ``response.output_text.delta`` per GTL token,
  for reasoning ``response.reasoning_summary_part.added``, one ``response.reasoning_summary_text.delta``
  per GTL reasoning event, ``response.reasoning_summary_text.done`` and ``…_part.done``,
  ``response.output_text.done``, ``response.content_part.done``, for a call one
  ``response.function_call_arguments.delta`` (GTL hands a call over whole) and its ``.done``, then
  ``response.output_item.done``; last ``response.completed`` or ``response.incomplete`` with the whole
  response and its usage. An error after the answer began is ``response.failed`` (the response with
  its ``error``) then an ``error`` event, whose fields are both flat (as the API reference documents
  them) and nested under ``error`` (as the live API sends them, and what makes the SDK raise
  ``APIError``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from gtl_nb.gateway.compat.openai_response import usage_object
from gtl_nb.ids import unique_hex
from gtl_nb.protocol.messages import (
    Done,
    Error,
    ErrorCode,
    Reasoning,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.protocol.session import Transcript

__all__ = ["ResponseEventEncoder", "response_object", "responses_usage"]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""The GTL finish reasons that leave a response ``incomplete``, and the reason it then gives."""


def responses_usage(usage: Usage | None) -> dict[str, Any] | None:
    """The Responses API's ``usage`` for a GTL ``usage`` event (``None``: nothing was reported)."""
    chat = usage_object(usage)
    if chat is None:
        return None
    cached = dict(chat.get("prompt_tokens_details") or {})
    reasoning = (chat.get("completion_tokens_details") or {}).get("reasoning_tokens")
    return {
        "input_tokens": chat["prompt_tokens"],
        "input_tokens_details": {
            "cached_tokens": cached.get("cached_tokens") or 0,
            "cache_write_tokens": cached.get("cache_write_tokens") or 0,
        },
        "output_tokens": chat["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": chat["total_tokens"],
    }


def _outcome(done: Done) -> tuple[str, dict[str, str] | None]:
    reason = _INCOMPLETE.get(done.finish_reason)
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    summary = [] if text is None else [_summary_part(text)]
    return {"id": item_id, "type": "reasoning", "summary": summary}


def _summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def _call_item(item_id: str, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def _shell(
    session_id: str, *, model: str, created: int, settings: dict[str, Any], status: str, output: list[Any]
) -> dict[str, Any]:
    """A ``response`` object but for its outcome: ``status`` and the ``output`` so far."""
    return {
        "id": session_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "error": None,
        "incomplete_details": None,
        "usage": None,
        **settings,
    }


def response_object(transcript: Transcript, *, model: str, created: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``response`` object of a session that ended with ``done``; ``model``: the one the request named,
    answered when ``done`` names none that served; ``settings``: what the request's answer echoes."""
    done = transcript.done
    assert done is not None
    status, incomplete = _outcome(done)
    output: list[dict[str, Any]] = []
    if transcript.reasoning_text:
        output.append(_reasoning_item(f"rs_{unique_hex()}", transcript.reasoning_text))
    if transcript.text or not transcript.tool_calls:
        output.append(_message_item(f"msg_{unique_hex()}", transcript.text, status))
    output += [_call_item(f"fc_{unique_hex()}", call, call.arguments, "completed") for call in transcript.tool_calls]
    answer = _shell(
        transcript.session_id,
        model=done.model or model,
        created=created,
        settings=settings,
        status=status,
        output=output,
    )
    answer["incomplete_details"] = incomplete
    answer["usage"] = responses_usage(transcript.usage)
    return answer


class ResponseEventEncoder:
    """A session's events as the Responses API's server-sent events (``runner.EventEncoder``)."""

    def __init__(
        self,
        session_id: str,
        *,
        model: str,
        created: int,
        settings: dict[str, Any],
        error_fields: Callable[[Error], dict[str, Any]],
    ) -> None:
        self.session_id = session_id
        self.model = model
        self.created = created
        self.settings = settings
        self._error_fields = error_fields  # an error's OpenAI fields: type, code, message, param
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # the items done so far
        self._text_id: str | None = None  # the message item being written, if any
        self._text: list[str] = []
        self._reasoning_id: str | None = None  # the reasoning item being written, if any
        self._reasoning: list[str] = []
        self._usage: Usage | None = None

    def open(self, first: StreamEvent) -> bytes:
        shell = self._response("in_progress")
        return self._event("response.created", response=shell) + self._event("response.in_progress", response=shell)

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, Token):
            if not event.text:
                return b""
            head = b"" if self._text_id is not None else self._close_reasoning() + self._open_text()
            self._text.append(event.text)
            return head + self._event(
                "response.output_text.delta",
                item_id=self._text_id,
                output_index=len(self._output),
                content_index=0,
                delta=event.text,
                logprobs=[],
            )
        if isinstance(event, Reasoning):
            if not event.text:
                return b""
            head = b"" if self._reasoning_id is not None else self._close_text("completed") + self._open_reasoning()
            self._reasoning.append(event.text)
            where = {"item_id": self._reasoning_id, "output_index": len(self._output), "summary_index": 0}
            return head + self._event("response.reasoning_summary_text.delta", **where, delta=event.text)
        if isinstance(event, ToolCallEvent):
            return self._close_reasoning() + self._close_text("completed") + self._call(event.function)
        if isinstance(event, Usage):
            self._usage = event
            return b""
        if isinstance(event, Done):
            status, incomplete = _outcome(event)
            out = self._close_reasoning()
            answered = any(item["type"] != "reasoning" for item in self._output)
            if self._text_id is None and not answered:  # no text, no call: one message of empty text
                out += self._open_text()
            out += self._close_text(status)
            final = self._response(status, model=event.model or self.model)
            final["incomplete_details"] = incomplete
            final["usage"] = responses_usage(self._usage)
            return out + self._event(f"response.{status}", response=final)
        if isinstance(event, Error):
            return self._failed(event)
        return b""  # statuses have no place in a response

    def interrupt(self, message: str, code: ErrorCode = "PROVIDER_UNAVAILABLE") -> bytes:
        return self._failed(Error(session_id=self.session_id, code=code, message=message))

    def _failed(self, error: Error) -> bytes:
        """``response.failed`` with what was answered so far, then the ``error`` event."""
        out = self._close_reasoning() + self._close_text("incomplete")
        said = self._error_fields(error)
        failed = self._response("failed")
        failed["error"] = {"code": "rate_limit_exceeded" if error.code == "RATE_LIMIT" else "server_error"}
        failed["error"]["message"] = said["message"]
        failed["usage"] = responses_usage(self._usage)
        out += self._event("response.failed", response=failed)
        flat = {"code": said["code"] or said["type"], "message": said["message"], "param": said["param"]}
        return out + self._event("error", **flat, error=said)

    def _open_text(self) -> bytes:
        self._text_id = f"msg_{unique_hex()}"
        index = len(self._output)
        added = self._event(
            "response.output_item.added", output_index=index, item=_message_item(self._text_id, None, "in_progress")
        )
        return added + self._event(
            "response.content_part.added",
            item_id=self._text_id,
            output_index=index,
            content_index=0,
            part=_text_part(""),
        )

    def _close_text(self, status: str) -> bytes:
        """The events that end the message item being written (none when there is none)."""
        if self._text_id is None:
            return b""
        item_id, text, index = self._text_id, "".join(self._text), len(self._output)
        self._text_id, self._text = None, []
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        item = _message_item(item_id, text, status)
        self._output.append(item)
        return (
            self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event("response.content_part.done", **where, part=_text_part(text))
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _open_reasoning(self) -> bytes:
        self._reasoning_id = f"rs_{unique_hex()}"
        where = {"item_id": self._reasoning_id, "output_index": len(self._output), "summary_index": 0}
        added = self._event(
            "response.output_item.added",
            output_index=len(self._output),
            item=_reasoning_item(self._reasoning_id, None),
        )
        return added + self._event("response.reasoning_summary_part.added", **where, part=_summary_part(""))

    def _close_reasoning(self) -> bytes:
        """The events that end the reasoning item being written (none when there is none)."""
        if self._reasoning_id is None:
            return b""
        item_id, text, index = self._reasoning_id, "".join(self._reasoning), len(self._output)
        self._reasoning_id, self._reasoning = None, []
        where = {"item_id": item_id, "output_index": index, "summary_index": 0}
        item = _reasoning_item(item_id, text)
        self._output.append(item)
        return (
            self._event("response.reasoning_summary_text.done", **where, text=text)
            + self._event("response.reasoning_summary_part.done", **where, part=_summary_part(text))
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _call(self, call: ToolCall) -> bytes:
        item_id, index = f"fc_{unique_hex()}", len(self._output)
        item = _call_item(item_id, call, call.arguments, "completed")
        self._output.append(item)
        where = {"item_id": item_id, "output_index": index}
        return (
            self._event(
                "response.output_item.added", output_index=index, item=_call_item(item_id, call, "", "in_progress")
            )
            + self._event("response.function_call_arguments.delta", **where, delta=call.arguments)
            + self._event("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
            + self._event("response.output_item.done", output_index=index, item=item)
        )

    def _response(self, status: str, *, model: str | None = None) -> dict[str, Any]:
        return _shell(
            self.session_id,
            model=model or self.model,
            created=self.created,
            settings=self.settings,
            status=status,
            output=list(self._output),
        )

    def _event(self, kind: str, /, **values: Any) -> bytes:
        data = {"type": kind, **values, "sequence_number": self._sequence}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"
