"""The request fields that extend GTL 1.0, each the feature a peer names in ``hello`` when it knows it.

GTL 1.0's ``completion_request`` has ``session_id``, ``provider``, ``model``, ``messages`` (``role``,
``content``, ``images``), ``stream``, ``max_tokens``, ``temperature``, ``providers`` and ``tools``.
Everything else a request may carry is this project's, and a gateway that does not know a field
decodes the request without it (msgspec skips unknown fields; an older schema has no place for it):
it would answer another question than the one asked — no stop sequence, a tool's failure read as its
result, the parts' order lost — and say nothing. So each extension is a feature: the client and the
gateway list those they know in ``hello`` (HTTP: the gateway's ``GTL-Features`` header), and the
client refuses, before sending, a request that *uses* one the gateway did not agree to
(``UnsupportedFeatureError``, naming the field).

A field at its default is no use of it: ``stop=None`` or ``[]``, ``tool_error=False``, ``parts=[]``;
a dropped default changes nothing. ``cache=False`` is a use (it opts out of the response cache,
which a gateway dropping it would not do), and so are ``reasoning_effort="none"`` and
``reasoning_budget=0`` (no thinking, where the deployment's option may think).

``reasoning_effort`` and ``reasoning_budget`` share one feature, ``reasoning_effort``: they are one
question (how hard to think) in two units, added together, and each dialect converts the one it does
not take into the one it does (``providers.effort``) — a gateway that knew one and not the other cannot
exist, and a client needs no second name to refuse on. A tool result's ``name`` is no use of ``name``: it repeats
its call's, and belongs to tool calling (its ``tool_call_id`` needs ``tool_calls``).

Not every extension changes the answer. ``metadata`` (the caller's tags, kept in the ledger), ``cache``
(whether the gateway's response cache may answer) and a message's ``cache_point`` / ``cache_ttl`` (prompt
caching: what a provider keeps and bills) change what a request costs or where its answer comes from,
never what was asked. Against a gateway that lacks their features the spec's "graceful degradation"
holds: ``degraded`` leaves them out of the request with a ``DroppedExtensionWarning`` naming each, and
the request is sent (``DEGRADABLE_FEATURES``); ``check_request`` refuses only the fields that change
the answer.

The check costs nothing when every extension was agreed (the connection keeps the set of those that
were not, ``GTLConnection.missing_extensions``, and an empty set is falsy); against an older gateway it reads each named
field of the request and of its messages once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from gtl_nb.protocol.errors import UnsupportedFeatureError
from gtl_nb.protocol.messages import CompletionRequest

DEGRADABLE_FEATURES = frozenset({"metadata", "cache", "cache_point", "cache_ttl"})
"""The features whose fields change what a request costs or where its answer comes from, never what is
asked: left out, with a warning, against a gateway that lacks them (``degraded``)."""


class DroppedExtensionWarning(UserWarning):
    """A request field left out because the gateway does not know it, and it changes no answer
    (``DEGRADABLE_FEATURES``): the request was sent without it."""


def _set(name: str) -> Callable[[Any], bool]:
    return lambda owner: getattr(owner, name) is not None


def _given(name: str) -> Callable[[Any], bool]:
    return lambda owner: bool(getattr(owner, name))  # None, False, "", [] and {}: each field's default


def _one_call_only(request: Any) -> bool:
    # GTL's "parallel": false inside tool_choice came after the tool_calls flag: a gateway that knew
    # tool calls but not this read the choice and let the model make several calls
    choice = request.tool_choice
    return isinstance(choice, dict) and choice.get("parallel") is False


def _interleaved(message: Any) -> bool:
    # parts say what content and images cannot: text and images in their order (without parts, a
    # dialect places the images where its API prefers: Anthropic's and Gemini's before the text), or
    # text in several pieces; one text part alone reads the same without them
    parts = message.parts
    if not parts:
        return False
    texts = sum(1 for part in parts if getattr(part, "type", None) == "text")
    return texts > 1 or (texts == 1 and len(parts) > 1)


def _named(message: Any) -> bool:
    # a tool result's name repeats its call's (which the history's tool_calls carry; tool_call_id needs
    # that feature already): every gateway that knew tool calls read it, and the tool runner sets it
    return bool(message.name) and message.role != "tool"


_Field = tuple[str, str, Callable[[Any], bool]]

REQUEST_FIELDS: tuple[_Field, ...] = (
    ("stop", "stop", _given("stop")),
    ("top_p", "top_p", _set("top_p")),  # 0.0 is a value asked for
    ("tool_choice", "tool_calls", _set("tool_choice")),
    ("tool_choice.parallel", "one_tool_call", _one_call_only),
    ("response_format", "response_format", _given("response_format")),
    ("metadata", "metadata", _given("metadata")),
    ("reasoning", "reasoning", _given("reasoning")),
    ("cache", "cache", _set("cache")),  # False opts out of the response cache: a use
    # one feature for the pair: they came together, and every dialect converts one into the other
    ("reasoning_effort", "reasoning_effort", _set("reasoning_effort")),  # "none" is a value asked for
    ("reasoning_budget", "reasoning_effort", _set("reasoning_budget")),  # so is 0 (no thinking)
)
"""``completion_request``'s extension fields: (field, feature, whether the request uses it)."""

MESSAGE_FIELDS: tuple[_Field, ...] = (
    ("parts", "parts", _interleaved),
    ("tool_error", "tool_error", _given("tool_error")),
    ("cache_point", "cache_point", _given("cache_point")),
    ("cache_ttl", "cache_ttl", _set("cache_ttl")),
    ("tool_calls", "tool_calls", _given("tool_calls")),
    ("tool_call_id", "tool_calls", _set("tool_call_id")),
    ("provider_data", "provider_data", _given("provider_data")),
    ("name", "name", _named),
)
"""A chat message's extension fields, as ``REQUEST_FIELDS`` (whether the message uses it)."""

EXTENSION_FEATURES: tuple[str, ...] = tuple(dict.fromkeys(feature for _, feature, _ in REQUEST_FIELDS + MESSAGE_FIELDS))
"""Every feature a request field needs, in a stable order (``tool_calls``, ``reasoning`` and
``provider_data`` were flags of the first ``hello``; the others came with this check)."""


def missing_extensions(agreed: Iterable[str]) -> frozenset[str]:
    """The extension features a connection that agreed on ``agreed`` cannot carry (empty: every one)."""
    return frozenset(EXTENSION_FEATURES).difference(agreed)


def unsupported_field(request: CompletionRequest, missing: frozenset[str]) -> tuple[str, str] | None:
    """The first field of ``request`` that uses a feature in ``missing``, as ``(where, feature)``
    (``("stop", "stop")``, ``("messages[2].tool_error", "tool_error")``), or ``None``."""
    missing = missing - DEGRADABLE_FEATURES  # those are left out (degraded), never refused
    for name, feature, uses in REQUEST_FIELDS:
        if feature in missing and uses(request):
            return name, feature
    fields = [field for field in MESSAGE_FIELDS if field[1] in missing]
    if fields:
        for index, message in enumerate(request.messages):
            for name, feature, uses in fields:
                if uses(message):
                    return f"messages[{index}].{name}", feature
    return None


def check_request(request: CompletionRequest, missing: frozenset[str]) -> None:
    """Raise ``UnsupportedFeatureError`` when ``request`` uses an extension in ``missing`` (call it only
    when ``missing`` is not empty: that test is the whole cost on a connection that agreed to all)."""
    found = unsupported_field(request, missing)
    if found is not None:
        where, feature = found
        raise UnsupportedFeatureError(
            f"{where}: the gateway does not support this GTL extension (it did not offer the feature "
            f"{feature!r}), so it would drop the field silently and answer a different request. Upgrade the "
            f"gateway, or leave {where} out",
            field=where,
            feature=feature,
        )


_LOST = {
    "metadata": "the ledger keeps no metadata",
    "cache": "an answer the gateway's response cache kept may come back in place of a new one",
    "cache_point": "the provider is not asked to cache the prompt",
    "cache_ttl": "the provider is not asked to cache the prompt",
}
"""What a dropped feature's field no longer does (never the answer: ``DEGRADABLE_FEATURES``)."""


def degraded(request: CompletionRequest, missing: frozenset[str]) -> CompletionRequest:
    """``request`` without the fields of the ``DEGRADABLE_FEATURES`` in ``missing`` it uses — ``metadata``,
    ``cache``, a message's ``cache_point`` and ``cache_ttl`` — with one ``DroppedExtensionWarning`` naming
    them; ``request`` itself when it uses none. (The fields that change the answer are
    ``check_request``'s to refuse.)"""
    drop = missing & DEGRADABLE_FEATURES
    if not drop:
        return request
    dropped: list[tuple[str, str]] = []  # (where, feature)
    changes: dict[str, Any] = {}
    for name, feature, uses in REQUEST_FIELDS:
        if feature in drop and uses(request):
            changes[name] = None  # (metadata's and cache's default)
            dropped.append((name, feature))
    messages = list(request.messages)
    for index, message in enumerate(messages):
        point = "cache_point" in drop and message.cache_point
        # a cache_ttl goes with its cache_point: a message keeps no ttl without the point
        ttl = ("cache_ttl" in drop or point) and message.cache_ttl is not None
        if point:
            dropped.append((f"messages[{index}].cache_point", "cache_point"))
        if ttl:
            dropped.append((f"messages[{index}].cache_ttl", "cache_ttl"))
        if point or ttl:
            fields: dict[str, Any] = {"cache_ttl": None, **({"cache_point": False} if point else {})}
            messages[index] = msgspec.structs.replace(message, **fields)
            changes["messages"] = messages
    if not dropped:
        return request
    features = sorted({feature for _, feature in dropped})
    lost = "; ".join(dict.fromkeys(_LOST[feature] for feature in features))
    warnings.warn(
        f"the gateway does not support the GTL extension{'s' if len(features) > 1 else ''} {', '.join(features)}, "
        f"so the request was sent without {', '.join(where for where, _ in dropped)}: it asks the same, "
        f"but {lost} (upgrade the gateway to keep them)",
        DroppedExtensionWarning,
        stacklevel=2,
    )
    return msgspec.structs.replace(request, **changes)
