"""Reading a foreign JSON body field by field: each reader returns the value or raises ``FieldError``.

The compatible endpoints take bodies written for another API, so a mistake is reported the way that
API would: a 400 naming the offending parameter by its path (``messages[2].content[0].type``). The
readers check types, and the ranges no request may leave (``max_tokens`` past 2**31 - 1, an image
URL neither ``https:`` nor ``data:``); what a value means to a model is the GTL engine's business.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from gtl_nb.protocol.codec import json_kind
from gtl_nb.protocol.errors import InvalidRequestError
from gtl_nb.protocol.limits import count_refusal
from gtl_nb.protocol.messages import data_url_refusal, image_url_refusal

__all__ = [
    "FieldError",
    "at_most",
    "boolean",
    "data_url",
    "did_you_mean",
    "image_url",
    "integer",
    "items",
    "number",
    "obj",
    "text",
    "unknown_key",
]


class FieldError(InvalidRequestError):
    """An ``INVALID_REQUEST`` about one parameter of the body; ``param`` is its path. The message is
    ``"{param}: {message}"``, or ``message`` alone when it is ``whole`` (it names the parameter itself)."""

    def __init__(self, param: str, message: str, *, whole: bool = False) -> None:
        super().__init__(message if whole else f"{param}: {message}")
        self.param = param


def did_you_mean(name: str, known: Collection[str]) -> str | None:
    """The known name ``name`` is most likely a slip for (``max_token`` → ``max_tokens``), or ``None``."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_key(value: Mapping[str, Any], known: Collection[str]) -> tuple[str, str | None] | None:
    """The first key of the nested object ``value`` that ``known`` has not (cut to 100 characters), with
    the known key it is a near miss of, or ``None``: a misspelt ``cache_contrl`` or ``paramters``,
    ignored, would silently change the answer, as a misspelt top-level field would."""
    for key in value:
        if key not in known:
            return key[:100], did_you_mean(key, known)
    return None


def at_most(values: list[Any], where: str, limit: int, what: str) -> list[Any]:
    """``values``, unless there are more than ``limit`` of them (GTL's request limits,
    ``protocol.limits``): checked on the body as read, before a single one is converted."""
    refused = count_refusal(where, len(values), limit, what)
    if refused is not None:
        raise FieldError(where, refused, whole=True)
    return values


def image_url(value: Any, where: str) -> str:
    """An image's URL: a non-empty ``https:`` or ``data:`` URL — what a gateway takes (plain ``http:`` too
    is refused here, where the caller's own path can be named: ``protocol.messages.plain_http_image``)."""
    if not isinstance(value, str) or not value:
        raise FieldError(where, "an image needs a URL (https: or data:)")
    if value[:5].lower() == "data:":
        return data_url(value, where)
    if image_url_refusal(value) is not None or value[:5].lower() == "http:":
        scheme, colon, _ = value.partition(":")
        shown = f"{scheme[:20]}:" if colon and scheme.isascii() and scheme.isalnum() else repr(value[:20])
        raise FieldError(
            where,
            f"an image URL must be https: or data: (base64), not {shown} (a gateway fetches no image, and "
            "the server its deployment calls would fetch an http: one from its own network)",
        )
    return value


def data_url(value: str, where: str) -> str:
    """``value``, a ``data:`` URL, unless its base64 is not base64 (``protocol.messages.data_url_refusal``):
    refused before any provider is called, naming the part."""
    refused = data_url_refusal(value)
    if refused is not None:
        raise FieldError(where, refused)
    return value


def _missing(body: Mapping[str, Any], key: str, where: str, required: bool) -> bool:
    if body.get(key) is not None:
        return False
    if required:
        raise FieldError(where, "this field is required")
    return True


def text(
    body: Mapping[str, Any], key: str, where: str, *, required: bool = False, max_length: int | None = None
) -> str | None:
    """A string field (``None`` when absent or ``null``), at most ``max_length`` characters when given."""
    value = body.get(key)
    if type(value) is str and max_length is None:  # the common case, read once (a role, a text, per message)
        return value
    if value is None:
        if required:
            raise FieldError(where, "this field is required")
        return None
    if not isinstance(value, str):
        raise FieldError(where, f"expected a string, not {json_kind(value)}")
    if max_length is not None and len(value) > max_length:
        raise FieldError(where, f"expected at most {max_length} characters, not {len(value):,}")
    return value


def number(body: Mapping[str, Any], key: str, where: str, *, within: tuple[float, float] | None = None) -> float | None:
    """A number field (an integer is taken as a float; a boolean is not a number), ``within`` the
    range its API allows (both ends included) when given."""
    if _missing(body, key, where, False):
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(where, f"expected a number, not {json_kind(value)}")
    if within is not None and not within[0] <= value <= within[1]:  # (NaN is in no range)
        raise FieldError(where, f"expected a number from {within[0]:g} to {within[1]:g}, not {value!r}")
    return float(value)


def integer(
    body: Mapping[str, Any], key: str, where: str, *, required: bool = False, most: int | None = None
) -> int | None:
    """A positive integer field, at most ``most`` when given."""
    if _missing(body, key, where, required):
        return None
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(where, f"expected an integer, not {json_kind(value)}")
    if value < 1:
        raise FieldError(where, f"expected an integer of at least 1, not {value}")
    if most is not None and value > most:
        shown = f"{value:,}" if value.bit_length() <= 128 else "a number above 2**128"
        raise FieldError(where, f"expected an integer of at most {most:,}, not {shown}")
    return value


def boolean(body: Mapping[str, Any], key: str, where: str) -> bool | None:
    """A boolean field."""
    if _missing(body, key, where, False):
        return None
    value = body[key]
    if not isinstance(value, bool):
        raise FieldError(where, f"expected true or false, not {json_kind(value)}")
    return value


def obj(body: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> dict[str, Any] | None:
    """A JSON object field."""
    if _missing(body, key, where, required):
        return None
    value = body[key]
    if not isinstance(value, dict):
        raise FieldError(where, f"expected an object, not {json_kind(value)}")
    return value


def items(body: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> list[Any] | None:
    """A JSON array field."""
    if _missing(body, key, where, required):
        return None
    value = body[key]
    if not isinstance(value, list):
        raise FieldError(where, f"expected an array, not {json_kind(value)}")
    return value
