"""``echo``: the built-in offline model. No key, no network, the same answer every time.

The answer quotes the last user message verbatim, then continues with a sentence chosen
deterministically from the conversation (SHA-256 of its text). It is streamed token by token,
split by ``gtl_nb.providers.tokenizer``, at ``pace`` seconds per token (set per deployment with
``options={"pace": 0.02}``; 0 by default). Token counts come from the same tokenizer; the cost is 0.

* With tools (and ``tool_choice`` not ``"none"``), when the last message is the user's, it calls every
  offered tool (or the one ``tool_choice`` names; only the first with ``parallel: false``) with
  arguments generated from each tool's JSON Schema, so they validate, and plausible for what each
  property is called (a ``city`` takes the place the prompt names, e.g. "Oslo"; see
  ``schema_values``); ``finish_reason`` is ``tool_calls``.
* After tool results, it reports what the tools returned.
* ``request.reasoning`` adds a short ``reasoning`` stream before the answer — unless the request's
  ``reasoning_effort`` is ``none`` (or its ``reasoning_budget`` 0): asked not to think, it shows no
  thinking. Echo does not think, so no other effort or budget changes its answer.
* ``response_format``: ``json_schema`` answers a JSON value built from the schema by the generator
  tool arguments use (types, required properties, enums, consts, numeric bounds, ``$ref``: what the
  SDKs' ``parse`` helpers need; ``pattern`` and the like are not followed), ``json_object`` the usual
  answer as ``{"answer": ...}``; a format it cannot read is an ``InvalidRequestError``, never prose.
* A failed tool's result (``tool_error``) is reported as failed.
* ``count_input(request)``: the ``tokens_in`` its answer would report, counted without answering (the
  gateway's token counting calls it an exact count).
* ``max_tokens`` truncates the answer (``finish_reason`` ``length``); ``stop`` sequences cut it, and
  ``done.stop_sequence`` names the one that did (so Anthropic's endpoint answers ``stop_sequence``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any, ClassVar

from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Message,
    ModelInfo,
    Reasoning,
    StreamEvent,
    Token,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from gtl_nb.providers.base import parse_tool_choice, schema_asked
from gtl_nb.providers.effort import thinking_asked
from gtl_nb.providers.schema_shape import schema_shape_problem
from gtl_nb.providers.schema_values import example_value
from gtl_nb.providers.tokenizer import count_message_tokens, count_tokens, split_tokens

MODEL_NAME = "echo"

_CONTINUATIONS = (
    "This answer comes from echo, the offline model built into gtl_nb: it needs no key and costs nothing.",
    "Echo repeats your words and adds this sentence, so every run gives the same answer and the same counts.",
    "No provider was called: echo answers locally, which makes it handy for trying prompts, widgets and tests.",
    "Point the same cell at a real provider when you are ready; the protocol, events and usage stay the same.",
)


class EchoProvider:
    """The ``echo`` local generator (a ``LocalProvider``)."""

    name: ClassVar[str] = "echo"
    offline: ClassVar[bool] = True

    def __init__(self, pace: float = 0.0) -> None:
        if pace < 0:
            raise ValueError("pace must be >= 0 seconds per token")
        self.pace = float(pace)

    def with_options(self, options: dict[str, Any]) -> EchoProvider:
        """A copy configured from a deployment's ``options`` (``pace``)."""
        return EchoProvider(pace=float(options.get("pace", self.pace)))

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                name=MODEL_NAME,
                context_window=None,
                max_tokens=None,
                supports_streaming=True,
                supports_functions=True,
                supports_vision=True,
                cost_per_1k_input=0.0,
                cost_per_1k_output=0.0,
            )
        ]

    def count_input(self, request: CompletionRequest) -> int:
        """The ``tokens_in`` an answer to ``request`` reports, without answering it: echo is its own
        tokenizer, so this count is exact (``Engine.count_tokens``)."""
        return count_message_tokens(_message_text(m) for m in request.messages)

    # -- generation -----------------------------------------------------------------------------

    def generate(self, request: CompletionRequest) -> Iterator[tuple[float, StreamEvent]]:
        _refuse_malformed_tools(request)  # first: what it cannot honour fails before any event
        answer = _answer_text(request)
        calls = _tool_calls(request)  # (before any event too: arguments too large to write are refused)
        sid = request.session_id
        tokens_in = self.count_input(request)
        tokens_out = 0
        reasoning_tokens = 0
        thinks = request.reasoning and thinking_asked(request) is not False
        if thinks:
            thought = _reasoning_text(request)
            for piece in split_tokens(thought):
                reasoning_tokens += 1
                yield self.pace, Reasoning(session_id=sid, text=piece)

        stop_sequence: str | None = None
        if calls:
            for call in calls:
                tokens_out += count_tokens(call.name) + count_tokens(call.arguments)
                yield self.pace, ToolCallEvent(session_id=sid, function=call)
            finish = "tool_calls"
        else:
            text, finish, stop_sequence = _limit(answer, request)
            for piece in split_tokens(text):
                tokens_out += 1
                yield self.pace, Token(session_id=sid, text=piece)
        yield (
            0.0,
            Usage(
                session_id=sid,
                tokens_in=tokens_in,
                tokens_out=tokens_out + reasoning_tokens,
                reasoning_tokens_out=reasoning_tokens if thinks else None,
                cost=0.0,
            ),
        )
        done = Done(session_id=sid, finish_reason=finish, model=MODEL_NAME, stop_sequence=stop_sequence)  # type: ignore[arg-type]
        yield 0.0, done


def _message_text(message: Message) -> str:
    if not message.tool_calls:  # (most messages: their content alone)
        return message.content or ""
    parts = [message.content or ""]
    parts.extend(f"{c.name}({c.arguments})" for c in message.tool_calls)
    return " ".join(p for p in parts if p)


def _last_user(request: CompletionRequest) -> Message | None:
    return next((m for m in reversed(request.messages) if m.role == "user"), None)


def _digest(request: CompletionRequest) -> int:
    text = "\x00".join(f"{m.role}:{_message_text(m)}" for m in request.messages)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _answer_text(request: CompletionRequest) -> str:
    """The answer, in the shape ``response_format`` asks for."""
    kind = (request.response_format or {}).get("type", "text")
    if kind == "json_object":
        return json.dumps({"answer": _prose(request)}, ensure_ascii=False)
    asked = schema_asked(request.response_format, "echo")
    if asked is not None:
        problem = schema_shape_problem(asked[0], "response_format's schema")
        if problem is not None:
            raise InvalidRequestError(problem)
        user = _last_user(request)
        return _bounded(example_value(asked[0], user.content or "" if user else ""), "response_format's schema", 0)
    return _prose(request)


def _prose(request: CompletionRequest) -> str:
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "tool":
        results = [m for m in _trailing_tool_results(request.messages)]
        said = _quoted("; ".join(f"{m.tool_call_id}: {_result(m)}" for m in results))
        return f"The tool returned {said}. " + _CONTINUATIONS[_digest(request) % len(_CONTINUATIONS)]
    user = _last_user(request)
    quoted = _quoted(user.content or "") if user is not None else ""
    images = f" (with {len(user.images)} image{'s' if len(user.images) != 1 else ''})" if user and user.images else ""
    return f'You said: "{quoted}"{images}. ' + _CONTINUATIONS[_digest(request) % len(_CONTINUATIONS)]


MAX_QUOTED = 65_536
"""Characters of a message echo repeats at most (then "…"): its answer stays the size of a long one of
a model's, whatever the prompt — an 8 MB prompt answered whole made an 80 MB body on a gateway, for any
caller."""


def _quoted(text: str) -> str:
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "…"


def _result(message: Message) -> str:
    """What a tool result said, as echo repeats it: a failed tool's as an error."""
    text = _quoted(message.content or "")
    if message.tool_error:
        return f"an error ({text})" if text else "an error"
    return text


def _trailing_tool_results(messages: list[Message]) -> list[Message]:
    out: list[Message] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        out.append(message)
    return list(reversed(out))


def _reasoning_text(request: CompletionRequest) -> str:
    count = len(request.messages)
    return f"The conversation has {count} message{'s' if count != 1 else ''}; echo quotes the last user message."


def _limit(text: str, request: CompletionRequest) -> tuple[str, str, str | None]:
    """The answer cut at the first stop sequence it holds, then at ``max_tokens``: the text, the
    finish reason and the stop sequence that ended it (``None`` when none did, or ``max_tokens`` came first)."""
    finish = "stop"
    matched: str | None = None
    cut = len(text)
    for stop in request.stop or ():
        at = text.find(stop) if stop else -1
        if 0 <= at < cut:  # the earliest wins; at a tie the first listed, as a provider scanning in order
            cut, matched = at, stop
    text = text[:cut]
    if request.max_tokens is not None:
        pieces = split_tokens(text)
        if len(pieces) > request.max_tokens:
            text = "".join(pieces[: max(0, request.max_tokens)])
            finish, matched = "length", None
    return text, finish, matched


def _refuse_malformed_tools(request: CompletionRequest) -> None:
    """A tool whose parameters are no well-formed schema is the caller's mistake, said as such."""
    for tool in request.tools or []:
        problem = schema_shape_problem(tool.parameters, f"tool {tool.name!r}: parameters")
        if problem is not None:
            raise InvalidRequestError(problem)


def _tool_calls(request: CompletionRequest) -> list[ToolCall]:
    tools = request.tools or []
    choice = parse_tool_choice(request.tool_choice)
    if not tools or (choice is not None and choice.mode == "none"):
        return []
    if not request.messages or request.messages[-1].role != "user":
        return []
    if choice is not None and choice.mode == "tool":
        tools = [t for t in tools if t.name == choice.name]
    if choice is not None and not choice.parallel:
        tools = tools[:1]
    prompt = (_last_user(request) or Message(role="user", content="")).content or ""
    calls: list[ToolCall] = []
    written = 0
    for index, tool in enumerate(tools):
        arguments = _bounded(example_value(tool.parameters, prompt), f"tool {tool.name[:100]!r}'s parameters", written)
        written += len(arguments)
        calls.append(ToolCall(id=f"call_echo_{index}", name=tool.name, arguments=arguments))
    return calls


MAX_WRITTEN = 1 << 20
"""Characters of generated JSON echo writes at most in one answer (tool calls' arguments together, or a
``response_format`` value): a 229-byte schema asks for 7.7 MB of valid arguments (arrays of 16 of
strings of ``minLength`` 4,096), and 512 tools of it would be an answer of gigabytes."""


def _bounded(value: Any, what: str, written: int) -> str:
    """``value`` as JSON text, unless the answer would pass ``MAX_WRITTEN`` characters with it: then
    ``InvalidRequestError`` (a value the schema allows would be that large; echo writes no invalid one)."""
    text = json.dumps(value, ensure_ascii=False)
    if written + len(text) > MAX_WRITTEN:
        raise InvalidRequestError(
            f"{what} asks for values of {written + len(text):,} characters in all; echo writes at most "
            f"{MAX_WRITTEN:,} (lower minItems or minLength)"
        )
    return text
