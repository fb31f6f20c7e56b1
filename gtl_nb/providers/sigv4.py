"""AWS Signature Version 4 for request headers, written from AWS's documented algorithm. Pure.

Steps (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html):

1. **Canonical request**: ``METHOD \\n canonical URI \\n canonical query \\n canonical headers \\n
   signed headers \\n hex(SHA-256(payload))``.

   * The canonical URI of every service but S3 is the request path with each segment URI-encoded
     *again*: a model id sent as ``us.amazon.nova-micro-v1%3A0`` is signed as
     ``us.amazon.nova-micro-v1%253A0``. Dot segments are removed first; an empty path is ``/``.
   * The canonical query sorts the parameters by encoded name (then value), each name and value
     URI-encoded (unreserved characters ``A-Z a-z 0-9 - _ . ~`` kept).
   * Canonical headers are lower-cased names sorted, values trimmed with inner runs of spaces
     collapsed, each as ``name:value\\n``; ``host`` is always signed (from the URL, default port
     dropped), as are ``x-amz-date``, ``x-amz-content-sha256`` and, for temporary credentials,
     ``x-amz-security-token``. Headers proxies rewrite (``user-agent``, ``expect``,
     ``x-amzn-trace-id``) are left unsigned.
2. **String to sign**: ``AWS4-HMAC-SHA256 \\n YYYYMMDD'T'HHMMSS'Z' \\n date/region/service/aws4_request
   \\n hex(SHA-256(canonical request))``.
3. **Signing key**: HMAC-SHA256 chain ``"AWS4" + secret`` → date → region → service → ``aws4_request``.
4. ``Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<scope>, SignedHeaders=<names>, Signature=<hex>``.

The signing time is an argument (Unix seconds): this module never reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, unquote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_HEADERS = frozenset({"authorization", "user-agent", "expect", "x-amzn-trace-id"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class AwsCredentials:
    """An access key pair, with the session token of temporary credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"AwsCredentials(access_key_id={self.access_key_id!r})"


def amz_date(now: float) -> str:
    """``now`` (Unix seconds) as SigV4's ``YYYYMMDD'T'HHMMSS'Z'``."""
    return datetime.fromtimestamp(now, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _remove_dot_segments(segments: list[str]) -> list[str]:
    out: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return out


def canonical_uri(path: str) -> str:
    """The canonical URI of a non-S3 request: the path as sent, each segment encoded once more."""
    if not path:
        return "/"
    trailing = path.endswith("/") and path != "/"
    segments = _remove_dot_segments(path.split("/")[1:] if path.startswith("/") else path.split("/"))
    encoded = "/" + "/".join(_uri_encode(segment) for segment in segments)
    if trailing and not encoded.endswith("/"):
        encoded += "/"
    return encoded


def canonical_query(query: str) -> str:
    """The canonical query string of a raw (already encoded) query."""
    if not query:
        return ""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((_uri_encode(unquote(name)), _uri_encode(unquote(value))))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_host(url: str) -> str:
    """The ``host`` header value of ``url`` (lower-cased, default port dropped)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{parts.port}"
    return host


def _header_value(value: str) -> str:
    return " ".join(value.split())


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """``(canonical headers block, signed header names)`` of the headers to sign."""
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        key = name.lower().strip()
        if key in UNSIGNED_HEADERS:
            continue
        merged.setdefault(key, []).append(_header_value(str(value)))
    names = sorted(merged)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


def canonical_request(method: str, url: str, headers: Mapping[str, str], payload_hash: str) -> tuple[str, str]:
    """``(canonical request, signed header names)``; ``headers`` must already include ``host``."""
    parts = urlsplit(url)
    block, signed = canonical_headers(headers)
    text = "\n".join(
        [method.upper(), canonical_uri(parts.path), canonical_query(parts.query), block, signed, payload_hash]
    )
    return text, signed


def credential_scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, timestamp, scope, sha256_hex(canonical.encode("utf-8"))])


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The derived key: HMAC chain over date, region, service and ``aws4_request``."""
    key = _hmac(("AWS4" + secret_access_key).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def sign_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    credentials: AwsCredentials,
    region: str,
    service: str,
    now: float,
) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date``, ``X-Amz-Content-Sha256``, ``X-Amz-Security-Token`` (temporary
    credentials) and ``Authorization``, signed for ``method url`` with ``body`` at time ``now``.

    ``Host`` is signed from the URL but not added to the result: the HTTP client sends it.
    """
    timestamp = amz_date(now)
    date = timestamp[:8]
    payload_hash = sha256_hex(body)
    out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "host")}
    out["X-Amz-Date"] = timestamp
    out["X-Amz-Content-Sha256"] = payload_hash
    if credentials.session_token:
        out["X-Amz-Security-Token"] = credentials.session_token
    to_sign = {**out, "host": canonical_host(url)}
    canonical, signed = canonical_request(method, url, to_sign, payload_hash)
    scope = credential_scope(date, region, service)
    key = signing_key(credentials.secret_access_key, date, region, service)
    signature = hmac.new(key, string_to_sign(timestamp, scope, canonical).encode("utf-8"), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return out
