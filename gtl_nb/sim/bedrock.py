"""AWS Bedrock runtime simulator: Converse and ConverseStream, SigV4 checked, binary event stream.

Written from the recorded fixtures (``tests/fixtures/wire/bedrock``), the wire-format digest and AWS's
documented SigV4 algorithm; it has its own event-stream encoder and its own signature verifier (it never
imports ``gtl_nb.providers``).

Routes (the bare ``http://127.0.0.1:PORT`` stands for ``https://bedrock-runtime.{region}.amazonaws.com``):

* ``POST /model/{modelId}/converse`` → Converse JSON; ``POST /model/{modelId}/converse-stream`` → HTTP 200
  ``application/vnd.amazon.eventstream``: ``messageStart`` → per block ``contentBlockStart`` (tool use only:
  text blocks start with their deltas, as recorded) / ``contentBlockDelta``… / ``contentBlockStop`` →
  ``messageStop{stopReason}`` → ``metadata{usage, metrics}``. Every payload carries the random ``"p"``
  padding. Reasoning (asked with ``additionalModelRequestFields.thinking``) streams as
  ``reasoningContent.text`` deltas and ends with a ``reasoningContent.signature`` delta.
* ``GET /foundation-models``: the control plane's ListFoundationModels (served here too, for convenience).

Validation answers 400 ``ValidationException`` with the service's messages: a model not in
:data:`BEDROCK_MODELS` (or the ``models=`` list) "The provided model identifier is invalid.", a conversation
that does not start with a user message or does not alternate, blank text blocks, toolUse/toolResult blocks
without a ``toolConfig``, an empty ``toolConfig.tools``, a tool named outside ``[a-zA-Z0-9_-]`` (1 to 64) or a
tool schema whose type is not ``object``,
``toolResult`` blocks that do not answer the previous message's ``toolUse`` blocks one for one,
``toolResult.status`` sent to a model other than Claude or Nova (the API reference says only those accept it;
the message wording is our assumption), a ``toolUseId`` other than 1 to 64 of ``[a-zA-Z0-9_-]`` (the API
reference's constraint; the wording is Smithy's usual one, our assumption), bad image formats. An image whose
bytes do not match its declared format fails as the recording shows: inside the 200 stream (a
``validationException`` frame) for ConverseStream, 400 for Converse. ``cachePoint`` blocks (in ``system``, a
message's content or ``toolConfig.tools``; at most four, for the Claude and Nova models AWS lists with prompt
caching — both refusals' wordings are our assumption) read and write a prompt cache of the simulator's own
(``sim.prompt_cache``), reported as ``cacheReadInputTokens`` / ``cacheWriteInputTokens`` beside an
``inputTokens`` that excludes them.

Authentication, as the service does it (status 403, ``x-amzn-ErrorType: <Name>:http://internal.amazon.com/
coral/com.amazon.coral.service/``, body ``{"message": …}``):

* no ``Authorization`` → ``MissingAuthenticationTokenException`` "Missing Authentication Token" (the AWS
  common error for an unsigned request);
* ``Authorization: Bearer <key>`` (Bedrock API keys) must equal ``ctx.api_key``, else
  ``UnrecognizedClientException`` (the status/type for a bad bearer key is not recorded anywhere we could
  read: an assumption);
* SigV4: an unknown access key id → ``UnrecognizedClientException`` "The security token included in the
  request is invalid."; a credential scope with another region or service, or a date that differs from
  ``X-Amz-Date`` → ``InvalidSignatureException``; a malformed header → 400 ``IncompleteSignatureException``;
  otherwise the signature is recomputed from the request as received — canonical URI from the raw path with
  each segment encoded once more (``%3A`` → ``%253A``), canonical query, the headers named in
  ``SignedHeaders`` with the received values, SHA-256 of the received body — and a mismatch is
  ``InvalidSignatureException`` whose message, like the real one, includes the canonical string and the
  string to sign the server expected. Session tokens are not checked beyond being signed, and the clock skew
  is not checked (tests sign at fixed times).

Faults: ``error_response`` gives 429 ``ThrottlingException``, 503 ``ServiceUnavailableException``, 500
``InternalServerException``, "quota" ``ServiceQuotaExceededException`` (the status the fault asks for), other
statuses their documented exception (400 Validation, 403 AccessDenied, 404 ResourceNotFound, 408
ModelTimeout, 424 ModelError). The real service sends no ``Retry-After``; a fault that sets one gets it as a
header anyway. In-stream errors are exception frames (``throttlingException``,
``serviceUnavailableException``, ``internalServerException``, ``modelStreamErrorException``); the malformed
chunk is a frame whose message CRC is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct
import zlib
from typing import Any
from urllib.parse import quote, unquote

from gtl_nb.sim.answers import Answer
from gtl_nb.sim.base import SimContext, SimRequest, SimResponse, json_response, name_within
from gtl_nb.sim.prompt_cache import MINIMUM_TOKENS, TTLS, CacheUse, PromptCache, claude_minimum, prefix_key
from gtl_nb.sim.tokens import Rates, Tally, anthropic_image_tokens, b64_bytes

__all__ = ["BEDROCK_CONTEXT_WINDOWS", "BEDROCK_MODELS", "BedrockSim", "encode_frame"]

#: The foundation models enabled in the simulated account; the cross-region inference profiles of each
#: (``us.``, ``eu.``, ``apac.``, ``global.`` + id) and their ARNs are accepted too.
BEDROCK_MODELS = (
    "amazon.nova-micro-v1:0",
    "amazon.nova-lite-v1:0",
    "amazon.nova-pro-v1:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic.claude-haiku-4-5-20251001-v1:0",
    "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "anthropic.claude-opus-4-1-20250805-v1:0",
    "meta.llama3-1-8b-instruct-v1:0",
    "mistral.mistral-large-2407-v1:0",
)
#: The context windows (tokens) of those models, as the model catalog gives them (an inference profile or
#: ARN has its model's); a model missing here has no limit in the simulator. A prompt over its window is
#: the service's 400 ValidationException "Input is too long for requested model."
BEDROCK_CONTEXT_WINDOWS: dict[str, int] = {
    "amazon.nova-micro-v1:0": 128000,
    "amazon.nova-lite-v1:0": 300000,
    "amazon.nova-pro-v1:0": 300000,
    "anthropic.claude-haiku-4-5-20251001-v1:0": 200000,
    "anthropic.claude-sonnet-4-5-20250929-v1:0": 200000,
    "anthropic.claude-opus-4-1-20250805-v1:0": 200000,
}
_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.")
# Framing measured on the recorded usage (Amazon Nova): no per-turn overhead; a request with tools pays a
# long hidden tool-use prompt (~420 tokens). Images follow the width x height / 750 rule.
_RATES = Rates(per_part=4, with_tools=420, per_tool=4, per_property=3, image=anthropic_image_tokens)
_EVENTSTREAM = "application/vnd.amazon.eventstream"
_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.coral.service/"
MAX_CACHE_POINTS = 4
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
_MODEL_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
_STATUS_EXCEPTIONS = {
    400: ("ValidationException", "Malformed input request, please reformat your input and try again."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: (
        "ResourceNotFoundException",
        "Could not resolve the foundation model from the provided model identifier.",
    ),
    408: ("ModelTimeoutException", "Model has timed out in processing the request. Try your request again."),
    424: ("ModelErrorException", "The model returned an error. Try your request again."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an error processing your request."),
    503: ("ServiceUnavailableException", "Model is getting throttled. Try your request again."),
}
_STREAM_EXCEPTIONS = {
    "rate_limit": ("throttlingException", "Too many requests, please wait before trying again."),
    "quota": ("throttlingException", "Too many tokens per day, please wait before trying again."),
    "overloaded": ("serviceUnavailableException", "Bedrock is unable to process your request."),
    "server_error": (
        "internalServerException",
        "The system encountered an unexpected error during processing.",
    ),
}


# ------------------------------------------------------------------------------------------------------------
# The binary event stream (encoder)


def _string_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
    return bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value


def encode_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total and header lengths) + its CRC32, headers (all strings),
    payload, and the CRC32 of everything before it."""
    block = b"".join(_string_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(block) + len(payload) + 4, len(block))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + block + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_frame(headers, _json_bytes({"message": message}))


# ------------------------------------------------------------------------------------------------------------
# SigV4 verification


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def _canonical_uri(raw_path: str) -> str:
    """Each segment of the path as received, encoded once more (non-S3 services sign it twice-encoded)."""
    return "/".join(_encode(segment) for segment in (raw_path or "/").split("/")) or "/"


def _canonical_query(raw_query: str) -> str:
    pairs = []
    for item in raw_query.split("&"):
        if item:
            name, _, value = item.partition("=")
            pairs.append((_encode(unquote(name)), _encode(unquote(value))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _parse_authorization(value: str) -> dict[str, str] | None:
    """``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`` → its three fields, or None."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        return None
    fields = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    if not {"Credential", "SignedHeaders", "Signature"} <= set(fields):
        return None
    return fields


def _auth_error(status: int, name: str, message: str) -> SimResponse:
    return json_response(status, {"message": message}, {"x-amzn-errortype": f"{name}:{_ERROR_NAMESPACE}"})


def verify_sigv4(req: SimRequest, ctx: SimContext, service: str = "bedrock") -> SimResponse | None:
    """None when ``req`` is signed with the simulator's credentials; else the service's 4xx answer."""
    fields = _parse_authorization(req.headers.get("authorization", ""))
    if fields is None:
        return _auth_error(
            400,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return _auth_error(400, "IncompleteSignatureException", "Credential is malformed.")
    key_id, date, region, scope_service, _ = scope
    if key_id != ctx.aws_access_key_id:
        return _auth_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    timestamp = req.headers.get("x-amz-date", "")
    if not timestamp:
        return _auth_error(
            400,
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    if region != ctx.aws_region:
        return _auth_error(403, "InvalidSignatureException", "Credential should be scoped to a valid region. ")
    if scope_service != service:
        return _auth_error(
            403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'. "
        )
    if timestamp[:8] != date:
        return _auth_error(
            403,
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{timestamp[:8]}', from '{timestamp}'.",
        )
    names = [n for n in fields["SignedHeaders"].split(";") if n]
    headers = "".join(f"{n}:{' '.join(req.headers.get(n, '').split())}\n" for n in names)
    raw_path, _, raw_query = (req.raw_path or req.path).partition("?")
    canonical = "\n".join(
        [
            req.method,
            _canonical_uri(raw_path),
            _canonical_query(raw_query),
            headers,
            ";".join(names),
            hashlib.sha256(req.body).hexdigest(),
        ]
    )
    credential_scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            timestamp,
            credential_scope,
            hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + ctx.aws_secret_access_key).encode("utf-8"), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected, fields["Signature"]):
        return None
    return _auth_error(
        403,
        "InvalidSignatureException",
        f"{_SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n'{canonical}'\n\n"
        f"The String-to-Sign should have been\n'{to_sign}'\n",
    )


# ------------------------------------------------------------------------------------------------------------
# Request reading


class _Invalid(Exception):
    """A request the service rejects with ValidationException (carries the message)."""


def _base_model(model: str) -> str:
    """The foundation model id of a model id, a cross-region inference profile, or the ARN of either."""
    model = model.rsplit("/", 1)[-1] if model.startswith("arn:") else model
    return next((model[len(p) :] for p in _PROFILE_PREFIXES if model.startswith(p)), model)


def _accepts_tool_status(model: str) -> bool:
    """Per the API reference, only Amazon Nova and Anthropic Claude models accept ``toolResult.status``."""
    return "anthropic." in model or "amazon.nova" in model


def _caches(model: str) -> bool:
    """Whether the service takes ``cachePoint`` blocks for ``model``: Claude from 3.5 Haiku and 3.7
    Sonnet on, and Amazon Nova's text models (AWS's list of models with prompt caching)."""
    if "anthropic." in model:
        old = ("claude-instant", "claude-v2", "claude-3-haiku", "claude-3-sonnet", "claude-3-opus", "claude-3-5-sonnet")
        return not any(name in model for name in old)
    return any(f"amazon.nova-{name}" in model for name in ("micro", "lite", "pro", "premier", "2"))


def _detected_image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


def _check_tool_config(config: Any) -> None:
    if not isinstance(config, dict):
        return
    tools = config.get("tools")
    if not isinstance(tools, list) or not tools:
        raise _Invalid(
            "1 validation error detected: Value at 'toolConfig.tools' failed to satisfy constraint: Member "
            "must have length greater than or equal to 1"
        )
    for i, tool in enumerate(tools):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(spec, dict) and not name_within(name, 64):
            # the API reference's ToolSpecification.name: 1 to 64 of [a-zA-Z0-9_-]+, in the service's words for
            # a member outside its pattern or length
            broken = (
                "must have length less than or equal to 64"
                if isinstance(name, str) and len(name) > 64 and name_within(name, len(name))
                else "must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
            )
            raise _Invalid(
                f"1 validation error detected: Value '{name}' at 'toolConfig.tools.{i + 1}.member.toolSpec.name' "
                f"failed to satisfy constraint: Member {broken}"
            )
        schema = ((tool.get("toolSpec") or {}).get("inputSchema") or {}).get("json") if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _Invalid(
                f"The value at toolConfig.tools.{i}.toolSpec.inputSchema.json.type must be one of the "
                "following: object."
            )


_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _check_tool_id(block: dict[str, Any], i: int, j: int) -> None:
    """The service's ValidationException for a ``toolUseId`` outside its documented pattern and length
    (1 to 64 of ``[a-zA-Z0-9_-]``): an id another provider minted, such as ``functions.f:0``."""
    for kind in ("toolUse", "toolResult"):
        inner = block.get(kind)
        value = inner.get("toolUseId") if isinstance(inner, dict) else None
        if isinstance(inner, dict) and not (isinstance(value, str) and _TOOL_ID.fullmatch(value)):
            raise _Invalid(
                f"1 validation error detected: Value '{value}' at 'messages.{i + 1}.member.content.{j + 1}.member."
                f"{kind}.toolUseId' failed to satisfy constraint: Member must satisfy regular expression pattern: "
                "[a-zA-Z0-9_-]+"
            )


def _check_messages(body: dict[str, Any], model: str) -> str | None:
    """Structural validation; returns the message of an image whose bytes do not match its format."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid(
            "A conversation must start with a user message. Try again with a conversation that "
            "starts with a user message."
        )
    uses_tools = False
    image_mismatch = None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if i == 0 and role != "user":
            raise _Invalid(
                "A conversation must start with a user message. Try again with a conversation that "
                "starts with a user message."
            )
        if role not in ("user", "assistant"):
            raise _Invalid(
                f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' failed "
                "to satisfy constraint: Member must satisfy enum value set: [user, assistant]"
            )
        if i > 0 and role == messages[i - 1].get("role"):  # earlier roles are valid here
            raise _Invalid(
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        for j, block in enumerate(message.get("content") or []):
            if not isinstance(block, dict):
                continue
            if "text" in block and not str(block["text"]).strip():
                raise _Invalid(
                    f"The text field in the ContentBlock object at messages.{i}.content.{j} is blank. "
                    "Add text to the text field, and try again."
                )
            uses_tools = uses_tools or "toolUse" in block or "toolResult" in block
            _check_tool_id(block, i, j)
            result = block.get("toolResult")
            if isinstance(result, dict) and "status" in result and not _accepts_tool_status(model):
                raise _Invalid(
                    "This model doesn't support the toolResult.status field. Remove toolResult.status and try again."
                )
            if isinstance(result, dict) and result.get("status", "success") not in ("success", "error"):
                raise _Invalid(
                    f"1 validation error detected: Value '{result['status']}' at 'messages.{i}.member.content."
                    f"{j}.member.toolResult.status' failed to satisfy constraint: Member must satisfy enum value "
                    "set: [success, error]"
                )
            if "image" in block:
                image_mismatch = image_mismatch or _check_image(block["image"])
    _check_tool_config(body.get("toolConfig"))
    if uses_tools and not body.get("toolConfig"):
        raise _Invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    _check_tool_pairs(messages)
    return image_mismatch


def _tool_ids(message: Any, kind: str) -> list[Any]:
    """The ``toolUseId`` of each ``toolUse`` or ``toolResult`` block (``kind``) of a message."""
    content = message.get("content") if isinstance(message, dict) else None
    return [
        block[kind].get("toolUseId")
        for block in (content if isinstance(content, list) else [])
        if isinstance(block, dict) and isinstance(block.get(kind), dict)
    ]


def _check_tool_pairs(messages: list[Any]) -> None:
    """The service's ValidationException for a user message at N whose ``toolResult`` blocks do not answer
    the ``toolUse`` blocks of message N-1: more results than calls, "The number of toolResult blocks at
    messages.N.content exceeds the number of toolUse blocks of previous turn." (pydantic/pydantic-ai#2327,
    Just-Curieous/Curie#16); a call without its result, "Expected toolResult blocks at messages.N.content for
    the following Ids: …", the ids joined by ", " (agno-agi/agno#6698, genkit-ai/aws-bedrock-js-plugin#664).
    A last assistant message's calls are not checked: there is no message N to name."""
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        called = _tool_ids(messages[index - 1], "toolUse") if index else []
        answered = _tool_ids(message, "toolResult")
        if len(answered) > len(called):
            raise _Invalid(
                f"The number of toolResult blocks at messages.{index}.content exceeds the number of toolUse "
                "blocks of previous turn."
            )
        missing = [call for call in called if call not in answered]
        if missing:
            raise _Invalid(
                f"Expected toolResult blocks at messages.{index}.content for the following Ids: "
                f"{', '.join(str(call) for call in missing)}"
            )


def _check_image(image: Any) -> str | None:
    fmt = image.get("format") if isinstance(image, dict) else None
    if fmt not in _IMAGE_FORMATS:
        raise _Invalid(
            f"1 validation error detected: Value '{fmt}' at 'image.format' failed to satisfy "
            "constraint: Member must satisfy enum value set: [png, jpeg, gif, webp]"
        )
    raw = (image.get("source") or {}).get("bytes")
    try:
        data = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Invalid("Invalid Base64 encoding in image.source.bytes.") from exc
    detected = _detected_image_type(data)
    if detected != f"image/{fmt}":
        return (
            f"The model returned the following errors: The detected file MIME type {detected} does not "
            f"match the expected type image/{fmt}. Reformat your input and try again."
        )
    return None


def _texts(content: Any) -> str:
    return "\n".join(str(b["text"]) for b in content or [] if isinstance(b, dict) and "text" in b)


def _tool_result_text(result: dict[str, Any]) -> str:
    parts = []
    for item in result.get("content") or []:
        if isinstance(item, dict) and "text" in item:
            parts.append(str(item["text"]))
        elif isinstance(item, dict) and "json" in item:
            parts.append(json.dumps(item["json"], ensure_ascii=False))
    return "\n".join(parts)


def _answer(body: dict[str, Any], ctx: SimContext) -> Answer:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    last = messages[-1]
    results = [
        ("(the tool failed) " if b["toolResult"].get("status") == "error" else "") + _tool_result_text(b["toolResult"])
        for b in last.get("content") or []
        if last.get("role") == "user" and isinstance(b, dict) and isinstance(b.get("toolResult"), dict)
    ]
    prompt = next(
        (t for m in reversed(messages) if m.get("role") == "user" for t in [_texts(m.get("content"))] if t),
        "",
    )
    tools: list[dict[str, Any]] = []
    config = body.get("toolConfig") if isinstance(body.get("toolConfig"), dict) else {}
    if last.get("role") == "user" and not results:
        for tool in config.get("tools") or []:
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            if isinstance(spec, dict) and spec.get("name"):
                schema = (spec.get("inputSchema") or {}).get("json") or {"type": "object"}
                tools.append({"name": spec["name"], "description": spec.get("description", ""), "parameters": schema})
        named = ((config.get("toolChoice") or {}).get("tool") or {}).get("name")
        if named:
            tools = [t for t in tools if t["name"] == named] or tools
    extra = body.get("additionalModelRequestFields")
    thinking = (
        isinstance(extra, dict)
        and isinstance(extra.get("thinking"), dict)
        and (extra["thinking"].get("type") in ("enabled", "adaptive"))
    )
    limit = (body.get("inferenceConfig") or {}).get("maxTokens")
    return ctx.answer(
        prompt,
        tools,
        tool_results=results,
        thinking=thinking,
        max_tokens=limit if isinstance(limit, int) else None,
        tokens_in=_input_tokens(body),
        schema=_structured(body.get("outputConfig")),
        stop=(body.get("inferenceConfig") or {}).get("stopSequences"),
    )


def _structured(output: Any) -> dict[str, Any] | None:
    """The schema of ``outputConfig.textFormat`` (its ``structure.jsonSchema.schema``: JSON text), or ``None``."""
    text_format = output.get("textFormat") if isinstance(output, dict) else None
    if not isinstance(text_format, dict) or text_format.get("type") != "json_schema":
        return None
    structure = text_format.get("structure")
    definition = structure.get("jsonSchema") if isinstance(structure, dict) else None
    raw = definition.get("schema") if isinstance(definition, dict) else None
    try:
        schema = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def _input_tokens(body: dict[str, Any]) -> int:
    """The system blocks, every message's blocks (text, image, toolUse, toolResult) and the tool specs."""
    tally = Tally()
    tally.texts += [str(b["text"]) for b in body.get("system") or [] if isinstance(b, dict) and "text" in b]
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            tally.messages += 1
            for block in message.get("content") or []:
                if isinstance(block, dict):
                    _tally_block(tally, block)
    config = body.get("toolConfig") if isinstance(body.get("toolConfig"), dict) else {}
    for tool in config.get("tools") or []:
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if isinstance(spec, dict):
            tally.tools.append({**spec, "parameters": (spec.get("inputSchema") or {}).get("json")})
    return tally.total(_RATES)


def _tally_block(tally: Tally, block: dict[str, Any]) -> None:
    """One content block: text, image (its bytes), toolUse or toolResult."""
    if isinstance(block.get("text"), str):
        tally.texts.append(block["text"])
    image = block.get("image")
    if isinstance(image, dict):
        data = (image.get("source") or {}).get("bytes") if isinstance(image.get("source"), dict) else None
        tally.image(b64_bytes(data) if isinstance(data, str) else None)
    use = block.get("toolUse")
    if isinstance(use, dict):
        tally.parts += 1
        tally.texts.append(str(use.get("name", "")))
        tally.values.append(use.get("input"))
    result = block.get("toolResult")
    if isinstance(result, dict):
        tally.parts += 1
        tally.texts.append(_tool_result_text(result))


# ------------------------------------------------------------------------------------------------------------
# The simulator


def _cache_lifetimes(body: dict[str, Any]) -> list[str]:
    """Each ``cachePoint`` block's ``ttl`` (``"5m"`` when it gives none), in ``_cache_prefixes``' order."""
    config = body.get("toolConfig") if isinstance(body.get("toolConfig"), dict) else {}
    blocks = [t for t in config.get("tools") or [] if isinstance(t, dict)]
    blocks += [b for b in body.get("system") or [] if isinstance(b, dict)]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        blocks += [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    points = [block["cachePoint"] for block in blocks if "cachePoint" in block]
    return [point.get("ttl", "5m") if isinstance(point, dict) else "5m" for point in points]


def _keeps_an_hour(model: str) -> bool:
    """Whether the service takes a one-hour ``cachePoint`` ``ttl`` for ``model``: Claude 4.5 and later."""
    found = re.search(r"claude-(?:sonnet|haiku|opus)-(\d{1,2})(?:-(\d{1,2}))?(?!\d)", model)
    return "anthropic." in model and found is not None and (int(found.group(1)), int(found.group(2) or 0)) >= (4, 5)


def _ttl_problem(lifetimes: list[str], model: str) -> str | None:
    """The service's ValidationException for the cache points' ``ttl`` values, or ``None``."""
    for ttl in lifetimes:
        if not isinstance(ttl, str) or ttl not in TTLS:
            return (
                f"1 validation error detected: Value '{ttl}' at 'cachePoint.ttl' failed to satisfy constraint: "
                "Member must satisfy enum value set: [5m, 1h]"
            )
    if "1h" in lifetimes and not _keeps_an_hour(model):
        return "Extended cache TTL is not supported for this model. Remove the ttl field from cachePoint and try again."
    hours = [ttl == "1h" for ttl in lifetimes]
    if False in hours and True in hours[hours.index(False) :]:
        return "A cachePoint with a 1h TTL must not come after a cachePoint with a 5m TTL."
    return None


def _cache_prefixes(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt before each ``cachePoint`` block, in prompt order (tools, system, messages), as a
    body of its own."""
    config = body.get("toolConfig") if isinstance(body.get("toolConfig"), dict) else {}
    tools = [t for t in config.get("tools") or [] if isinstance(t, dict)]
    system = [b for b in body.get("system") or [] if isinstance(b, dict)]
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    prefixes: list[dict[str, Any]] = []
    prefixes += [{"toolConfig": {"tools": tools[:i]}} for i, tool in enumerate(tools) if "cachePoint" in tool]
    prefixes += [
        {"toolConfig": {"tools": tools}, "system": system[:i]} for i, b in enumerate(system) if "cachePoint" in b
    ]
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message.get("content"), list) else []
        for j, block in enumerate(content):
            if isinstance(block, dict) and "cachePoint" in block:
                turn = {**message, "content": content[:j]}
                prefixes.append({"toolConfig": {"tools": tools}, "system": system, "messages": [*messages[:i], turn]})
    return prefixes


class BedrockSim:
    """``bedrock-runtime.{region}.amazonaws.com`` (plus ListFoundationModels) on loopback, with a prompt
    cache (``sim.prompt_cache``) for the ``cachePoint`` blocks a request carries."""

    name = "bedrock"
    base_path = ""
    overloaded_status = 503

    def __init__(self) -> None:
        self.prompt_cache = PromptCache()

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        """Authenticate (SigV4 or Bedrock API key), then route."""
        denied = self._authenticate(req, ctx)
        if denied is not None:
            return denied
        match = _MODEL_PATH.match(req.path)
        if req.method == "POST" and match:
            return self._converse(req, ctx, unquote(match.group(1)), stream=match.group(2) == "converse-stream")
        if req.method == "GET" and req.path == "/foundation-models":
            return self._foundation_models(req, ctx)
        return self._error(404, "UnknownOperationException", "Unknown operation", req, ctx)

    # -- helpers -----------------------------------------------------------------------------------------

    def _authenticate(self, req: SimRequest, ctx: SimContext) -> SimResponse | None:
        authorization = req.headers.get("authorization", "")
        if not authorization:
            return _auth_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        if authorization.lower().startswith("bearer "):
            if authorization[7:].strip() == ctx.api_key:
                return None
            return _auth_error(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        return verify_sigv4(req, ctx)

    def _request_id(self, req: SimRequest, ctx: SimContext) -> str:
        rnd = ctx.rng("request-id", req.raw_path, req.body)
        hexdigits = "".join(rnd.choice("0123456789abcdef") for _ in range(32))
        return "-".join([hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20], hexdigits[20:]])

    def _error(
        self,
        status: int,
        name: str,
        message: str,
        req: SimRequest | None = None,
        ctx: SimContext | None = None,
    ) -> SimResponse:
        headers = {"x-amzn-errortype": f"{name}:{_ERROR_NAMESPACE}"}
        if req is not None and ctx is not None:
            headers["x-amzn-requestid"] = self._request_id(req, ctx)
        return json_response(status, {"message": message}, headers)

    def _models(self, ctx: SimContext) -> list[str]:
        return ctx.models(BEDROCK_MODELS)

    def _accepts(self, model: str, ctx: SimContext) -> bool:
        """A listed model id, its cross-region inference profile, or the ARN of either."""
        if ctx.accepts_model(model, BEDROCK_MODELS):
            return True
        if ctx.options.get("models"):
            return False  # an explicit list is taken literally
        return _base_model(model) in BEDROCK_MODELS

    def _window(self, model: str, ctx: SimContext) -> int | None:
        """The context window of ``model``: an inference profile or ARN has its foundation model's, set by
        the ``context_windows=`` option under either name, else the table's."""
        base = _base_model(model)
        chosen = ctx.options.get("context_windows")
        named = model if isinstance(chosen, dict) and model in chosen else base
        return ctx.context_window(named, BEDROCK_CONTEXT_WINDOWS)

    # -- Converse / ConverseStream -----------------------------------------------------------------------

    def _converse(self, req: SimRequest, ctx: SimContext, model: str, *, stream: bool) -> SimResponse:
        body = req.json
        if not isinstance(body, dict):
            return self._error(400, "SerializationException", "Unexpected token in the request body.", req, ctx)
        if not self._accepts(model, ctx):
            return self._error(400, "ValidationException", "The provided model identifier is invalid.", req, ctx)
        try:
            image_mismatch = _check_messages(body, model)
        except _Invalid as exc:
            return self._error(400, "ValidationException", str(exc), req, ctx)
        headers = {"x-amzn-requestid": self._request_id(req, ctx)}
        if image_mismatch and not stream:
            return self._error(400, "ValidationException", image_mismatch, req, ctx)
        if image_mismatch:  # the recorded service fails this one inside the 200 stream
            return SimResponse(
                200,
                {"content-type": _EVENTSTREAM, **headers},
                chunks=[_exception_frame("validationException", image_mismatch)],
            )
        prefixes = _cache_prefixes(body)
        if prefixes and not _caches(model):
            return self._error(
                400,
                "ValidationException",
                "This model doesn't support the cachePoint field. Remove cachePoint and try again.",
                req,
                ctx,
            )
        if len(prefixes) > MAX_CACHE_POINTS:
            message = f"The number of cachePoint blocks ({len(prefixes)}) exceeds the maximum of {MAX_CACHE_POINTS}."
            return self._error(400, "ValidationException", message, req, ctx)
        lifetimes = _cache_lifetimes(body)
        problem = _ttl_problem(lifetimes, model)
        if problem is not None:
            return self._error(400, "ValidationException", problem, req, ctx)
        window = self._window(model, ctx)
        if window is not None and _input_tokens(body) > window:
            return self._error(400, "ValidationException", "Input is too long for requested model.", req, ctx)
        answer = _answer(body, ctx)
        cache = self.prompt_cache.use(
            [
                (
                    prefix_key(model, ctx.aws_access_key_id, prefix, marker="cachePoint"),
                    min(answer.tokens_in, _input_tokens(prefix)),
                    TTLS[ttl],
                )
                for prefix, ttl in zip(prefixes, lifetimes, strict=True)
            ],
            minimum_tokens=claude_minimum(model) if "anthropic." in model else MINIMUM_TOKENS,
        )
        usage = self._usage(answer, cache if prefixes else None)
        tool_ids = [ctx.make_id("tooluse_", 22, req.body, i, alphabet=_ID_CHARS) for i in range(len(answer.tool_calls))]
        signature = base64.b64encode(bytes(ctx.rng("signature", req.body).randrange(256) for _ in range(96))).decode()
        if stream:
            return SimResponse(
                200,
                {"content-type": _EVENTSTREAM, **headers},
                chunks=self._frames(req, ctx, answer, tool_ids, signature, usage),
            )
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append({"reasoningContent": {"reasoningText": {"text": answer.thinking, "signature": signature}}})
        if answer.text:
            content.append({"text": answer.text})
        for call, tool_id in zip(answer.tool_calls, tool_ids, strict=True):
            content.append({"toolUse": {"toolUseId": tool_id, "name": call["name"], "input": call["arguments"]}})
        payload = {
            "metrics": {"latencyMs": self._latency(req, ctx)},
            "output": {"message": {"content": content, "role": "assistant"}},
            "stopReason": self._stop_reason(answer),
            "usage": usage,
        }
        return json_response(200, payload, headers)

    def _stop_reason(self, answer: Answer) -> str:
        if answer.tool_calls:
            return "tool_use"
        if answer.finish == "length":
            return "max_tokens"
        return "stop_sequence" if answer.stop_sequence is not None else "end_turn"

    def _usage(self, answer: Answer, cache: CacheUse | None) -> dict[str, Any]:
        """The usage object; with ``cache`` (the request had cache points) its two counts, which
        ``inputTokens`` then excludes (``totalTokens`` counts them)."""
        output = answer.tokens_out + answer.tokens_thinking
        if cache is None:
            return {"inputTokens": answer.tokens_in, "outputTokens": output, "totalTokens": answer.tokens_in + output}
        usage: dict[str, Any] = {
            "inputTokens": max(0, answer.tokens_in - cache.read - cache.written),
            "outputTokens": output,
            "totalTokens": answer.tokens_in + output,
            "cacheReadInputTokens": cache.read,
            "cacheWriteInputTokens": cache.written,
        }
        if cache.written:  # the writes by ttl, the hour's first (the API reference's order)
            details = [("1h", cache.written_1h), ("5m", cache.written - cache.written_1h)]
            usage["cacheDetails"] = [{"ttl": ttl, "inputTokens": tokens} for ttl, tokens in details if tokens]
        return usage

    def _latency(self, req: SimRequest, ctx: SimContext) -> int:
        return ctx.rng("latency", req.body).randint(150, 600)

    def _frames(
        self,
        req: SimRequest,
        ctx: SimContext,
        answer: Answer,
        tool_ids: list[str],
        signature: str,
        usage: dict[str, int],
    ) -> list[bytes]:
        rnd = ctx.rng("padding", req.body)

        def event(event_type: str, payload: dict[str, Any]) -> bytes:
            padded = {**payload, "p": _PADDING[: rnd.randint(1, len(_PADDING))]}
            headers = {
                ":event-type": event_type,
                ":content-type": "application/json",
                ":message-type": "event",
            }
            return encode_frame(headers, _json_bytes(padded))

        frames = [event("messageStart", {"role": "assistant"})]
        index = 0
        if answer.thinking:
            for piece in answer.thinking_pieces:
                frames.append(
                    event(
                        "contentBlockDelta",
                        {"contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece}}},
                    )
                )
            frames.append(
                event(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"reasoningContent": {"signature": signature}}},
                )
            )
            frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if answer.text:
            for piece in answer.pieces:
                frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
            frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        for call, tool_id in zip(answer.tool_calls, tool_ids, strict=True):
            start = {"toolUse": {"name": call["name"], "toolUseId": tool_id}}
            frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            arguments = json.dumps(call["arguments"], ensure_ascii=False, separators=(",", ":"))
            for i in range(0, len(arguments), 16):
                delta = {"toolUse": {"input": arguments[i : i + 16]}}
                frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        frames.append(event("messageStop", {"stopReason": self._stop_reason(answer)}))
        frames.append(event("metadata", {"metrics": {"latencyMs": self._latency(req, ctx)}, "usage": usage}))
        return frames

    # -- control plane -----------------------------------------------------------------------------------

    def _foundation_models(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        summaries = []
        for model in self._models(ctx):
            provider = model.split(".")[-2] if model.count(".") >= 2 else model.split(".")[0]
            summaries.append(
                {
                    "modelArn": f"arn:aws:bedrock:{ctx.aws_region}::foundation-model/{model}",
                    "modelId": model,
                    "modelName": model.split(".", 1)[-1],
                    "providerName": provider.capitalize(),
                    "inputModalities": ["TEXT"],
                    "outputModalities": ["TEXT"],
                    "responseStreamingSupported": True,
                    "customizationsSupported": [],
                    "inferenceTypesSupported": ["ON_DEMAND"],
                    "modelLifecycle": {"status": "ACTIVE"},
                }
            )
        return json_response(200, {"modelSummaries": summaries}, {"x-amzn-requestid": self._request_id(req, ctx)})

    # -- faults ------------------------------------------------------------------------------------------

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """The exception for ``status`` (module docstring); "quota" is ServiceQuotaExceededException."""
        if kind == "quota":
            name, message = (
                "ServiceQuotaExceededException",
                (
                    "Your request exceeds the service quota for your account. You can view your quotas at "
                    "https://docs.aws.amazon.com/servicequotas/latest/userguide/gs-request-quota.html. "
                    "You can resubmit your request later."
                ),
            )
        elif kind == "rate_limit":
            name, message = _STATUS_EXCEPTIONS[429]
        elif kind == "overloaded":
            name, message = _STATUS_EXCEPTIONS[503]
        else:
            fallback = _STATUS_EXCEPTIONS[500] if status >= 500 else _STATUS_EXCEPTIONS[400]
            name, message = _STATUS_EXCEPTIONS.get(status, fallback)
        response = self._error(status, name, message)
        if retry_after is not None:
            response.headers["retry-after"] = (
                str(int(retry_after)) if float(retry_after).is_integer() else (f"{retry_after:g}")
            )
        return response

    def stream_error_chunk(self, kind: str) -> bytes:
        """An exception frame inside the 200 stream (``:message-type: exception``)."""
        name, message = _STREAM_EXCEPTIONS.get(
            kind,
            ("modelStreamErrorException", "The model stream encountered an error. Try your request again."),
        )
        return _exception_frame(name, message)

    def malformed_chunk(self) -> bytes:
        """A contentBlockDelta frame whose message CRC is wrong."""
        headers = {
            ":event-type": "contentBlockDelta",
            ":content-type": "application/json",
            ":message-type": "event",
        }
        frame = encode_frame(headers, _json_bytes({"contentBlockIndex": 0, "delta": {"text": "broken"}, "p": "ab"}))
        return frame[:-4] + bytes(b ^ 0xFF for b in frame[-4:])
