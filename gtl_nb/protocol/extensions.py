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
which a gateway dropping it would not do).

The check costs nothing when every extension was agreed (the connection keeps the set of those that
were not, ``GTLConnection.missing_extensions``, and an empty set is falsy); against an older gateway it reads each named
field of the request and of its messages once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gtl_nb.protocol.errors import UnsupportedFeatureError
from gtl_nb.protocol.messages import CompletionRequest


def _set(value: Any) -> bool:
    return value is not None


def _given(value: Any) -> bool:
    return bool(value)  # None, False, "", [] and {} are each field's default: nothing asked


_Field = tuple[str, str, Callable[[Any], bool]]

REQUEST_FIELDS: tuple[_Field, ...] = (
    ("stop", "stop", _given),
    ("top_p", "top_p", _set),  # 0.0 is a value asked for
    ("tool_choice", "tool_calls", _set),
    ("response_format", "response_format", _given),
    ("metadata", "metadata", _given),
    ("reasoning", "reasoning", _given),
    ("cache", "cache", _set),  # False opts out of the response cache: a use
)
"""``completion_request``'s extension fields: (field, feature, whether a value uses it)."""

MESSAGE_FIELDS: tuple[_Field, ...] = (
    ("parts", "parts", _given),
    ("tool_error", "tool_error", _given),
    ("cache_point", "cache_point", _given),
    ("cache_ttl", "cache_ttl", _set),
    ("tool_calls", "tool_calls", _given),
    ("tool_call_id", "tool_calls", _set),
    ("provider_data", "provider_data", _given),
    ("name", "name", _given),
)
"""A chat message's extension fields, as ``REQUEST_FIELDS``."""

EXTENSION_FEATURES: tuple[str, ...] = tuple(dict.fromkeys(feature for _, feature, _ in REQUEST_FIELDS + MESSAGE_FIELDS))
"""Every feature a request field needs, in a stable order (``tool_calls``, ``reasoning`` and
``provider_data`` were flags of the first ``hello``; the others came with this check)."""


def missing_extensions(agreed: Iterable[str]) -> frozenset[str]:
    """The extension features a connection that agreed on ``agreed`` cannot carry (empty: every one)."""
    return frozenset(EXTENSION_FEATURES).difference(agreed)


def unsupported_field(request: CompletionRequest, missing: frozenset[str]) -> tuple[str, str] | None:
    """The first field of ``request`` that uses a feature in ``missing``, as ``(where, feature)``
    (``("stop", "stop")``, ``("messages[2].tool_error", "tool_error")``), or ``None``."""
    for name, feature, used in REQUEST_FIELDS:
        if feature in missing and used(getattr(request, name)):
            return name, feature
    fields = [(name, feature, used) for name, feature, used in MESSAGE_FIELDS if feature in missing]
    if fields:
        for index, message in enumerate(request.messages):
            for name, feature, used in fields:
                if used(getattr(message, name)):
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
