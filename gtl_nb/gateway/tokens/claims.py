"""What a GhostToken is made of: the algorithms, the claims every token carries, the limits on its
names, times and JSON, and the strict JSON reading that the header, the claims and a JWKS file share."""

from __future__ import annotations

import json
import re
from typing import Any

from gtl_nb.protocol.codec import nesting_exceeds

ALGORITHMS = ("HS256", "RS256", "ES256")
"""Every algorithm the gateway can accept; a policy accepts a subset. ``none`` never."""
REQUIRED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "jti"})
"""Claims every token must carry; a policy may require more, never fewer."""
DEFAULT_AUDIENCE = "gtl"
DEV_ISSUER = "gtl-dev"
"""The issuer of tokens minted with a bare secret (``mint_token(secret, ...)``)."""

MAX_NAME = 256  # sub, jti, kid, tenant, a scope, a model or deployment name
MAX_ITEMS = 256  # entries of scopes, provider_keys and the allow-lists
MAX_TIME = 1e12  # seconds: some 30,000 years either side of 1970
_MAX_JSON_DEPTH = 8  # claims are flat; provider_keys is the deepest (2)


def is_name(value: Any) -> bool:
    """A non-empty string of at most ``MAX_NAME`` characters without control characters (C0, DEL, C1) or
    lone surrogates: a name goes into ledger rows, logs and audit records, which must read it back as
    the token said it (a ``\ud800`` subject was stored as six other characters)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and not _NOT_IN_A_NAME.search(value)


_NOT_IN_A_NAME = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # one character class: linear


def is_time(value: Any) -> bool:
    """A NumericDate the arithmetic can use: NaN and infinities fail the comparison, and a huge integer
    (JSON has no limit) is refused before ``exp + leeway`` could overflow into a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -MAX_TIME <= value <= MAX_TIME


class _DuplicateName(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # RFC 7519 §4: a parser may not silently pick one of two claims
        raise _DuplicateName
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON, and NaN would compare false with every time


def json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` as a JSON object, or ``None`` for anything else (too deep, duplicate names, NaN, not JSON)."""
    if nesting_exceeds(data, _MAX_JSON_DEPTH):
        return None
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
