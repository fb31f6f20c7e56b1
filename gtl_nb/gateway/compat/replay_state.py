"""A provider's replay state, carried through the compatible endpoints on a tool call's id.

Some providers answer with state that the next turn must give back. Gemini 3 signs each
function-call turn (``thoughtSignature``) and refuses the turn's calls replayed without it; Anthropic's
and Bedrock's thinking blocks must come back in a tool loop. GTL carries that state as ``provider_data``
on the ``done`` and on the assistant message that replays the answer: the embedded client and GTL's
own transports keep it. The OpenAI and Anthropic formats have no field for it — but a client sends
every tool call's id back exactly as it got it. So here:

* an answer with tool calls whose ``done`` holds replay state has that state appended to its first
  call's id: ``<id>__gtl1_<state>``, ``<state>`` the URL-safe base64 (unpadded) of the zlib-compressed
  JSON of ``provider_data`` (``stamped``). A stream is held back from its first tool call until the ``done``
  says what to stamp (``ReplayStamps``): GTL hands each call over whole, and the ``done`` follows the
  last at once;
* a request whose assistant message holds such an id gets the state back on that message, and every
  id — the calls' and the tool results' — loses the suffix before the provider sees it (``restored``).

Nothing changes for an answer without tool calls or without replay state (OpenAI, and Anthropic without
thinking, have none): its ids are the provider's. A state larger than ``MAX_STATE_BYTES`` is not
carried (Gemini then gets Google's stand-in signature, ``providers.gemini``). A suffix that does not
decode — an id a client cut short or made up — is dropped (an INFO line), the id kept without it:
the state only spares the model its earlier reasoning, and the conversation goes on without it.
Decoding is bounded: at most ``MAX_STATE_BYTES`` inflated an id, ``MAX_REQUEST_STATE_BYTES`` a
request, JSON at most ``providers.limits``' depth. A caller can forge a state, as it can write any
assistant turn it likes: each dialect rebuilds what it replays from the fields of its own shape (a
thinking block's text and signature, a signature string) and passes over the rest, and the provider
checks its own signatures.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable
from typing import Any

import msgspec

from gtl_nb.log import get_logger
from gtl_nb.protocol.messages import (
    CompletionRequest,
    Done,
    Error,
    Message,
    Status,
    StreamEvent,
    ToolCall,
    ToolCallEvent,
)
from gtl_nb.protocol.session import is_failover
from gtl_nb.providers.limits import parse_json

__all__ = [
    "MARK",
    "MAX_REQUEST_STATE_BYTES",
    "MAX_STATE_BYTES",
    "PACKED",
    "ReplayStamps",
    "restored",
    "stamped",
    "unstamped",
]

log = get_logger("gateway.compat")

MARK = "__gtl1_"
"""What separates a tool call's own id from the state appended to it (only ``[A-Za-z0-9_-]``, so the id
stays one Anthropic's pattern accepts)."""

PACKED = "gtl_packed"
"""The ``provider_data`` key under which a format's own field brought back packed state (``stamped("",
state)``: an Anthropic thinking block's signature, ``compat.thinking``); ``restored`` unpacks it."""

MAX_STATE_BYTES = 64 * 1024
"""The most JSON of replay state carried on an id (a Gemini signature is a few KB; thinking text can be
more): a larger state is not carried, and a suffix inflating past it is not read."""

MAX_REQUEST_STATE_BYTES = 1024 * 1024
"""The most replay state one request's ids may inflate to, read from its last turn back (the turns a
provider checks): the ids of earlier turns beyond it lose their suffix unread, so a request of many
ids costs at most this much decoding, whatever it holds."""


def stamped(call_id: str, provider_data: dict[str, Any] | None) -> str:
    """``call_id`` with ``provider_data`` appended (module docstring); unchanged when there is none, when it
    is too large, or when the id holds ``MARK`` already (it could not be told apart)."""
    if not provider_data or MARK in call_id:
        return call_id
    state = msgspec.json.encode(provider_data)
    if len(state) > MAX_STATE_BYTES:
        log.debug("tool call %r: %d bytes of replay state, too many to carry", call_id, len(state))
        return call_id
    packed = base64.urlsafe_b64encode(zlib.compress(state, 6)).rstrip(b"=").decode("ascii")
    return f"{call_id}{MARK}{packed}"


def unstamped(call_id: str) -> tuple[str, dict[str, Any] | None]:
    """``call_id`` without its suffix, and the state the suffix held (``None``: none, or none that decodes)."""
    own, state, _ = _unstamped(call_id)
    return own, state


def _unstamped(call_id: str) -> tuple[str, dict[str, Any] | None, int]:
    """``unstamped``, and how many bytes its suffix inflated to (what reading it cost)."""
    own, mark, packed = call_id.partition(MARK)
    if not mark:
        return call_id, None, 0
    inflated = b""
    try:
        compressed = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4))
        inflater = zlib.decompressobj()
        inflated = inflater.decompress(compressed, MAX_STATE_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("larger than the gateway carries, or cut short")
        value = parse_json(inflated, "a tool call's replay state", limit=MAX_STATE_BYTES)
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise ValueError("not an object")
    except (ValueError, binascii.Error, zlib.error) as exc:  # (the parser's own errors are ValueErrors)
        log.info("tool call %r: its replay state does not decode (%s); the call is replayed without it", own[:64], exc)
        return own, None, len(inflated) + len(packed)
    return own, value, len(inflated) + len(packed)


def restored(request: CompletionRequest) -> CompletionRequest:
    """``request`` with every id's suffix taken off and each assistant message's state put back on it
    (the request itself when no id has one: the common case costs a scan of the ids).

    Only an assistant message's first marked call is decoded (the one ``ReplayStamps`` stamps), from the
    last message back, until ``MAX_REQUEST_STATE_BYTES`` have been inflated; other suffixes are only cut."""
    if not any(_marked(message) for message in request.messages):
        return request
    budget = [MAX_REQUEST_STATE_BYTES]
    messages = [_restored(message, budget) if _marked(message) else message for message in reversed(request.messages)]
    messages.reverse()
    return msgspec.structs.replace(request, messages=messages)


def _marked(message: Message) -> bool:
    if message.tool_call_id is not None and MARK in message.tool_call_id:
        return True
    if message.provider_data and PACKED in message.provider_data:
        return True
    return any(MARK in call.id for call in message.tool_calls)


def _restored(message: Message, budget: list[int]) -> Message:
    """``message`` with its ids' suffixes cut and its state decoded while ``budget`` (bytes, shared by
    the request's messages) lasts: what its own field packed (``PACKED``) first, else its first marked call."""
    if message.tool_call_id is not None:
        return msgspec.structs.replace(message, tool_call_id=message.tool_call_id.partition(MARK)[0])
    own_data = dict(message.provider_data or {})
    packed = own_data.pop(PACKED, None)
    state: dict[str, Any] | None = None
    if isinstance(packed, str) and budget[0] > 0:
        _, state, cost = _unstamped(packed)
        budget[0] -= cost
    calls: list[ToolCall] = []
    for call in message.tool_calls:
        if MARK not in call.id:
            calls.append(call)
            continue
        if state is not None or budget[0] <= 0:
            own = call.id.partition(MARK)[0]
        else:
            own, state, cost = _unstamped(call.id)
            budget[0] -= cost
            state = state if state is not None else {}  # (one decoding a message, found or not)
        calls.append(msgspec.structs.replace(call, id=own))
    # what was packed is the provider's state as it wrote it; the message's own blocks fill what it lacks
    provider_data = {**own_data, **(state or {})} or None
    return msgspec.structs.replace(message, tool_calls=calls, provider_data=provider_data)


class ReplayStamps:
    """One session's events, from its first tool call on held until its ``done`` and then handed on in
    their order, the first call's id stamped with the ``done``'s state (module docstring). An ``error``
    lets the held events go as they came; a ``failover`` drops them, as it voids everything before it."""

    def __init__(self, native: frozenset[str] = frozenset()) -> None:
        self.native = native  # provider_data keys the format carries itself (``compat.thinking``): not stamped
        self._held: list[StreamEvent] = []  # the first tool call, and every event after it

    def take(self, event: StreamEvent) -> list[StreamEvent]:
        """What to hand on now that ``event`` came."""
        if not self._held:
            if isinstance(event, ToolCallEvent):
                self._held.append(event)
                return []
            return [event]
        if isinstance(event, Done):
            first, *rest = self._held
            self._held = []
            assert isinstance(first, ToolCallEvent)
            state = event.provider_data
            if state and self.native:
                state = {key: value for key, value in state.items() if key not in self.native}
            call = msgspec.structs.replace(first.function, id=stamped(first.function.id, state))
            return [msgspec.structs.replace(first, function=call), *rest, event]
        if isinstance(event, Error):
            held, self._held = self._held, []
            return [*held, event]
        if isinstance(event, Status) and is_failover(event):
            self._held = []
            return [event]
        self._held.append(event)
        return []

    def batch(self, events: Iterable[StreamEvent]) -> list[StreamEvent]:
        """``take`` over a batch of events, in order."""
        out: list[StreamEvent] = []
        for event in events:
            out += self.take(event)
        return out
