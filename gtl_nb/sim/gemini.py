"""Google Gemini (Developer API) simulator.

Written from the recorded fixtures (``tests/fixtures/wire/gemini``) and the wire-format digest:
``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent`` (``v1``, ``v1alpha``
too). With ``?alt=sse`` the stream is SSE with ``data:`` lines and CRLF separators, no ``[DONE]``;
without it, one JSON array streamed element by element (``[{…}`` LF ``,`` CRLF ``{…}`` LF ``]``).
Every chunk repeats a ``usageMetadata`` snapshot; function calls arrive whole with ``args`` objects and no
id; ``finishReason`` is on the last chunk (``STOP`` even after a function call). Thought parts
(``thought: true``) and a ``thoughtSignature`` appear when ``thinkingConfig.includeThoughts`` is set; Gemini 3
and later sign a function-call turn's first call always, and refuse a request whose current turn (what
follows the last user message that is not only function responses) replays a function call without its
signature: 400 "Function call is missing a thought_signature in functionCall parts" (Google's documented
``skip_thought_signature_validator`` passes). ``thinkingConfig.thinkingLevel`` is Gemini 3's alone (400
before it) and never goes with ``thinkingBudget`` (400 "You can only set only one of thinking budget and
thinking level."); a ``thinkingBudget`` outside a Gemini 2.5 model's range is its 400 (``_budget_refusal``), and
so are function names outside its rule (``_function_name_refusal``). A turn of function responses must
follow a turn of as many function calls (the API's two 400s).
``:countTokens`` counts ``contents`` or a whole ``generateContentRequest`` with the arithmetic of the usage's
``promptTokenCount`` (``_count_tokens``).
Key: ``x-goog-api-key`` header or ``?key=``; a wrong key is a 400 ``API_KEY_INVALID``, a missing one a 403.
Request fields are read in camelCase or snake_case.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from typing import Any

from gtl_nb.sim.answers import Answer, count_tokens
from gtl_nb.sim.base import SimContext, SimRequest, SimResponse, json_response, name_within
from gtl_nb.sim.tokens import Rates, Tally, b64_bytes, gemini_image_tokens

__all__ = ["GEMINI_CONTEXT_WINDOWS", "GEMINI_MODELS", "GeminiSim", "signs_function_calls"]

#: The text models of the simulated project (ListModels of the Gemini API, generateContent-capable).
GEMINI_MODELS = (
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-001",
    "gemini-2.0-flash-lite",
    "gemini-2.0-flash-lite-001",
    "gemini-flash-latest",
    "gemini-flash-lite-latest",
    "gemini-pro-latest",
    "gemini-3-pro-preview",
    "gemini-3-flash-preview",
    "gemini-3.1-pro-preview",
    "gemini-3.1-flash-lite",
    "gemini-3.1-flash-lite-preview",
    "gemini-3.5-flash",
    "gemini-3.5-flash-lite",
)
#: The context windows (input token limits) of those models, as the model catalog gives them; a model
#: missing here has no limit in the simulator (and lists the usual 1,048,576). A prompt over its window is the
#: API's 400 INVALID_ARGUMENT "The input token count (N) exceeds the maximum number of tokens allowed (M)."
GEMINI_CONTEXT_WINDOWS: dict[str, int] = dict.fromkeys(
    ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite", "gemini-3.1-pro-preview", "gemini-3.5-flash"),
    1048576,
)
_LISTED_INPUT_LIMIT = 1048576
# Framing measured on the recorded usage: Gemini bills text, calls and responses with next to no overhead;
# function declarations cost their words. Later models add a little: 2.5 (and the "-latest" aliases of its
# time) a couple of tokens per request and ~17 of hidden tool instructions, 3.x ~12 of tool instructions.
_RATES = Rates(per_tool=2, per_property=1, image=gemini_image_tokens)
_FAMILY_RATES = (  # model-name prefix -> (per_request, with_tools); the first match wins
    (("gemini-1", "gemini-2.0"), (0, 0)),
    (("gemini-2.5", "gemini-flash-latest", "gemini-flash-lite-latest", "gemini-pro-latest"), (2, 17)),
    (("gemini-",), (0, 12)),
)
_SIGNATURE_CHARS_PER_TOKEN = 6  # a thought signature replayed in the conversation is billed (compactly)
_MAJOR_VERSION = re.compile(r"gemini-(\d{1,3})")
_METHOD_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_MODEL_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+)$")
_QUOTA_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _get(obj: Any, camel: str) -> Any:
    """A proto-JSON field: camelCase or its snake_case spelling."""
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel))


def _dumps(obj: Any) -> str:
    # the service writes `"key": value` with no space after commas
    return json.dumps(obj, ensure_ascii=False, separators=(",", ": "))


def _pretty(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2)


def _thinking_refusal(config: Any, *, gemini_3: bool) -> str | None:
    """The API's 400 for a ``thinkingConfig`` it refuses: a level and a budget together (every model), or a
    level to a model before Gemini 3, which takes budgets only."""
    if not isinstance(config, dict):
        return None
    level, budget = _get(config, "thinkingLevel"), _get(config, "thinkingBudget")
    if level is not None and budget is not None:
        return "You can only set only one of thinking budget and thinking level."
    if level is not None and not gemini_3:
        return "thinking_level is not supported by this model."
    return None


#: Gemini 2.5's ``thinkingBudget`` ranges (model-name prefix → least, most, whether 0 turns thinking off), the
#: longest prefix first; -1 (dynamic) is taken by all. From Google's thinking guide: Pro 128 to 32,768 and no
#: off; Flash-Lite 512 to 24,576 or 0; Flash 0 to 24,576. Other models' budgets are not checked.
_BUDGET_RANGES = (
    ("gemini-2.5-flash-lite", 512, 24576, True),
    ("gemini-2.5-flash", 1, 24576, True),
    ("gemini-2.5-pro", 128, 32768, False),
)
_NAME_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"


def _budget_refusal(config: Any, model: str) -> str | None:
    """The API's 400 for a ``thinkingBudget`` outside ``model``'s range: "Budget 0 is invalid. This model only
    works in thinking mode." for 0 to a model that cannot stop (vercel/ai#8027), else "The thinking budget (N)
    is invalid." (RooCodeInc/Roo-Code#4399); ``None`` when it is in range or the model's range is not known."""
    budget = _get(config, "thinkingBudget") if isinstance(config, dict) else None
    if not isinstance(budget, int) or isinstance(budget, bool) or budget == -1:
        return None
    for prefix, least, most, stops in _BUDGET_RANGES:
        if model.startswith(prefix):
            if budget == 0 and not stops:
                return "Budget 0 is invalid. This model only works in thinking mode."
            if (budget == 0 and stops) or least <= budget <= most:
                return None
            return f"The thinking budget ({budget}) is invalid."
    return None


def _function_name_refusal(body: dict[str, Any]) -> str | None:
    """The API's 400 for function declarations whose names break its rule — a letter or ``_`` first, then
    letters, digits, ``_``, ``.``, ``:`` or ``-``, at most 64 — one line per name, as it lists them
    (kaitranntt/ccs#25, google-gemini/gemini-cli#7878); ``None`` when every name keeps it."""
    lines = []
    for i, tool in enumerate(_get(body, "tools") or []):
        for j, decl in enumerate(_get(tool, "functionDeclarations") or [] if isinstance(tool, dict) else []):
            name = _get(decl, "name")
            if not name_within(name, 64, also=".:", first=_NAME_FIRST):
                lines.append(
                    f"  * tools[{i}].function_declarations[{j}].name: [FIELD_INVALID] Invalid function name. Must "
                    "start with a letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores (_), dots "
                    "(.), colons (:), or dashes (-), with a maximum length of 64."
                )
    return "The GenerateContentRequest proto is invalid:\n" + "\n".join(lines) if lines else None


def _google_error(
    status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> SimResponse:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return SimResponse(
        status,
        {"content-type": "application/json; charset=UTF-8", **(headers or {})},
        _pretty({"error": error}).encode("utf-8"),
    )


def signs_function_calls(model: str) -> bool:
    """Whether ``model`` is Gemini 3 or later: it signs every function-call turn and checks the signatures."""
    found = _MAJOR_VERSION.match(model)
    return found is not None and int(found.group(1)) >= 3


def _unsigned_call(contents: list[dict[str, Any]]) -> tuple[str, int] | None:
    """The first function call of the current turn replayed without its signature: ``(name, position)``.

    The current turn starts after the last user message with something other than function responses;
    each model message of it must carry a signature on its first function-call part (parallel calls
    are signed on the first only)."""
    start = 0
    for index, content in enumerate(contents):
        parts = [part for part in content.get("parts") or [] if isinstance(part, dict)]
        if content.get("role", "user") == "user" and any(_get(part, "functionResponse") is None for part in parts):
            start = index + 1
    for index in range(start, len(contents)):
        content = contents[index]
        if content.get("role") != "model":
            continue
        calls = [part for part in content.get("parts") or [] if isinstance(part, dict) and _get(part, "functionCall")]
        if calls and not _get(calls[0], "thoughtSignature"):
            call = _get(calls[0], "functionCall")
            return str(call.get("name") if isinstance(call, dict) else ""), index
    return None


def _parts_with(content: Any, field: str) -> int:
    """How many parts of a content carry ``field`` (``functionCall`` or ``functionResponse``)."""
    parts = content.get("parts") if isinstance(content, dict) else None
    return sum(1 for part in parts if isinstance(part, dict) and _get(part, field)) if isinstance(parts, list) else 0


def _unpaired_responses(contents: list[dict[str, Any]]) -> str | None:
    """The API's 400 INVALID_ARGUMENT for function responses that do not answer the turn before them, or
    ``None``: a turn of responses whose previous turn called nothing, "Please ensure that function response
    turn comes immediately after a function call turn." (langchain-ai/langchain#27799,
    GoogleCloudPlatform/generative-ai#368); one with more or fewer responses than that turn's calls, "Please
    ensure that the number of function response parts is equal to the number of function call parts of the
    function call turn." (google-gemini/gemini-cli#5443, #16543). A call turn followed by a turn without
    responses is let through, as the API lets it through."""
    for index, content in enumerate(contents):
        answers = _parts_with(content, "functionResponse")
        if not answers or content.get("role") == "model":
            continue
        calls = _parts_with(contents[index - 1], "functionCall") if index else 0
        if not calls:
            return "Please ensure that function response turn comes immediately after a function call turn."
        if answers != calls:
            return (
                "Please ensure that the number of function response parts is equal to the number of function "
                "call parts of the function call turn."
            )
    return None


def _input_tokens(body: dict[str, Any], model: str) -> int:
    """The system instruction, every content's parts (calls, responses, images) and the declarations."""
    tally = Tally()
    extra = 0
    system = _get(body, "systemInstruction")
    contents = [system] if isinstance(system, dict) else []
    contents += [c for c in _get(body, "contents") or [] if isinstance(c, dict)]
    for content in contents:
        for part in content.get("parts") or []:
            if isinstance(part, dict):
                _tally_part(tally, part)
                signature = _get(part, "thoughtSignature")
                extra += len(signature) // _SIGNATURE_CHARS_PER_TOKEN if isinstance(signature, str) else 0
    tools_field = _get(body, "tools") or []
    for tool in [tools_field] if isinstance(tools_field, dict) else tools_field:
        for decl in _get(tool, "functionDeclarations") or []:
            if isinstance(decl, dict):
                params = _get(decl, "parametersJsonSchema") or _get(decl, "parameters")
                tally.tools.append({**decl, "parameters": params})
    per_request, with_tools = next((r for prefixes, r in _FAMILY_RATES if model.startswith(prefixes)), (0, 12))
    return tally.total(dataclasses.replace(_RATES, per_request=per_request, with_tools=with_tools)) + extra


def _tally_part(tally: Tally, part: dict[str, Any]) -> None:
    """One part: text, inline image, file reference, function call or function response."""
    if isinstance(part.get("text"), str):
        tally.texts.append(part["text"])
    inline = _get(part, "inlineData")
    if isinstance(inline, dict) and str(_get(inline, "mimeType") or "").startswith("image/"):
        data = inline.get("data")
        tally.image(b64_bytes(data) if isinstance(data, str) else None)
    file_data = _get(part, "fileData")
    if isinstance(file_data, dict) and str(_get(file_data, "mimeType") or "image/").startswith("image/"):
        tally.image(None)
    for key, payload in (("functionCall", "args"), ("functionResponse", "response")):
        call = _get(part, key)
        if isinstance(call, dict):
            tally.parts += 1
            tally.texts.append(str(call.get("name", "")))
            tally.values.append(call.get(payload))


def _group(pieces: list[str], size: int = 3) -> list[str]:
    """Gemini's chunks are larger than a word: join the answer's pieces a few at a time."""
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]


class GeminiSim:
    """``generativelanguage.googleapis.com``: generateContent, streamGenerateContent, model listing."""

    name = "gemini"
    base_path = ""
    overloaded_status = 503

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        """Route; the key is checked first."""
        key = req.headers.get("x-goog-api-key") or req.query.get("key")
        if not key:
            return _google_error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != ctx.api_key:
            return _google_error(
                400,
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                        "locale": "en-US",
                        "message": "API key not valid. Please pass a valid API key.",
                    },
                ],
            )
        method_match = _METHOD_PATH.match(req.path)
        if method_match and req.method == "POST":
            version, model, method = method_match.groups()
            if method in ("generateContent", "streamGenerateContent"):
                return self._generate(req, ctx, version, model, stream=method == "streamGenerateContent")
            if method == "countTokens":
                return self._count_tokens(req, ctx, version, model)
        if req.method == "GET" and re.match(r"^/(v1|v1beta|v1alpha)/models$", req.path):
            return json_response(200, {"models": [self._model(m) for m in self._models(ctx)]})
        model_match = _MODEL_PATH.match(req.path)
        if model_match and req.method == "GET":
            if ctx.accepts_model(model_match.group(2), GEMINI_MODELS):
                return json_response(200, self._model(model_match.group(2)))
            return _google_error(
                404,
                f"models/{model_match.group(2)} is not found for API version "
                f"{model_match.group(1)}, or is not supported for generateContent.",
            )
        return _google_error(404, f"Method not found: {req.method} {req.path}")

    # -- models ----------------------------------------------------------------------------------------------

    def _models(self, ctx: SimContext) -> list[str]:
        return ctx.models(GEMINI_MODELS)

    def _model(self, name: str) -> dict[str, Any]:
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name.replace("-", " ").title(),
            "description": f"Simulated {name}",
            "inputTokenLimit": GEMINI_CONTEXT_WINDOWS.get(name, _LISTED_INPUT_LIMIT),
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2,
            "thinking": True,
        }

    # -- the conversation ------------------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], ctx: SimContext, model: str = "") -> Answer:
        contents = [c for c in _get(body, "contents") or [] if isinstance(c, dict)]
        last = contents[-1] if contents else {}
        last_is_user = last.get("role", "user") == "user"
        results = [
            _dumps(_get(p, "functionResponse").get("response", {}))
            for p in last.get("parts") or []
            if last_is_user and isinstance(_get(p, "functionResponse"), dict)
        ]

        def text(content: dict[str, Any]) -> str:
            return "\n".join(
                str(p["text"])
                for p in content.get("parts") or []
                if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
            )

        prompt = next((t for c in reversed(contents) if c.get("role", "user") == "user" for t in [text(c)] if t), "")
        tools: list[dict[str, Any]] = []
        calling = _get(_get(body, "toolConfig"), "functionCallingConfig") or {}
        if last_is_user and not results and _get(calling, "mode") != "NONE":
            tools_field = _get(body, "tools") or []
            for tool in [tools_field] if isinstance(tools_field, dict) else tools_field:  # a lone Tool is accepted
                for decl in _get(tool, "functionDeclarations") or []:
                    params = _get(decl, "parametersJsonSchema") or _get(decl, "parameters") or {"type": "object"}
                    tools.append(
                        {
                            "name": decl.get("name"),
                            "description": decl.get("description", ""),
                            "parameters": params,
                        }
                    )
            allowed = _get(calling, "allowedFunctionNames")
            if allowed:
                tools = [t for t in tools if t["name"] in allowed] or tools
        config = _get(body, "generationConfig") or {}
        thinking = bool(_get(_get(config, "thinkingConfig"), "includeThoughts"))
        limit = _get(config, "maxOutputTokens")
        return ctx.answer(
            prompt,
            tools,
            tool_results=results,
            thinking=thinking,
            max_tokens=limit if isinstance(limit, int) else None,
            tokens_in=_input_tokens(body, model),
            stop=_get(config, "stopSequences"),
            schema=_structured(config),
        )

    def _signature(self, req: SimRequest, ctx: SimContext) -> str:
        rnd = ctx.rng("thoughtSignature", req.body)
        return base64.b64encode(bytes(rnd.randrange(256) for _ in range(96))).decode("ascii")

    def _usage(self, answer: Answer, candidates: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": answer.tokens_in}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = answer.tokens_in + candidates + answer.tokens_thinking
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": answer.tokens_in}]
        if answer.tokens_thinking:
            usage["thoughtsTokenCount"] = answer.tokens_thinking
        return usage

    def _finish_reason(self, answer: Answer) -> str:
        return "MAX_TOKENS" if answer.finish == "length" else "STOP"

    def _call_parts(self, answer: Answer, signature: str | None) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for call in answer.tool_calls:
            part: dict[str, Any] = {"functionCall": {"name": call["name"], "args": call["arguments"]}}
            if signature and not parts:  # the signature rides on the first function-call part
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    # -- generation ------------------------------------------------------------------------------------------

    def _count_tokens(self, req: SimRequest, ctx: SimContext, version: str, model: str) -> SimResponse:
        """``models/{model}:countTokens``: ``{"totalTokens": N}`` for ``contents`` alone, or for a whole
        ``generateContentRequest`` (system instruction and function declarations counted too; ``contents``
        beside it ignored, as documented) — with the arithmetic of the usage's ``promptTokenCount``
        (``_input_tokens``), so a count equals the usage of the same request. An unknown model is the 404
        of ``generateContent`` (naming ``countTokens``), a turn of function responses without its calls the
        same 400; a prompt over the window is still counted."""
        body = req.json
        if not isinstance(body, dict):
            return _google_error(400, "Invalid JSON payload received. Unexpected token.")
        if not ctx.accepts_model(model, GEMINI_MODELS):
            return _google_error(
                404,
                f"models/{model} is not found for API version {version}, or is not supported for countTokens. "
                "Call ListModels to see the list of available models and their supported methods.",
            )
        whole = _get(body, "generateContentRequest")
        counted = whole if isinstance(whole, dict) else {"contents": _get(body, "contents") or []}
        unpaired = _unpaired_responses([c for c in _get(counted, "contents") or [] if isinstance(c, dict)])
        refused = unpaired or _function_name_refusal(counted)
        if refused is not None:
            return _google_error(400, refused)
        return json_response(200, {"totalTokens": _input_tokens(counted, model)})

    def _generate(self, req: SimRequest, ctx: SimContext, version: str, model: str, *, stream: bool) -> SimResponse:
        body = req.json
        if not isinstance(body, dict):
            return _google_error(400, "Invalid JSON payload received. Unexpected token.")
        if not ctx.accepts_model(model, GEMINI_MODELS):
            return _google_error(
                404,
                f"models/{model} is not found for API version {version}, or is not "
                "supported for generateContent. Call ListModels to see the list of available "
                "models and their supported methods.",
            )
        window = ctx.context_window(model, GEMINI_CONTEXT_WINDOWS)
        tokens = _input_tokens(body, model) if window is not None else 0
        if window is not None and tokens > window:  # as answered to a Developer API key (gemini-cli #4118)
            return _google_error(
                400, f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({window})."
            )
        unpaired = _unpaired_responses([c for c in _get(body, "contents") or [] if isinstance(c, dict)])
        if unpaired is not None:
            return _google_error(400, unpaired)
        signed = signs_function_calls(model)
        thinking_config = _get(_get(body, "generationConfig"), "thinkingConfig")
        refused = (
            _thinking_refusal(thinking_config, gemini_3=signed)
            or _budget_refusal(thinking_config, model)
            or _function_name_refusal(body)
        )
        if refused is not None:
            return _google_error(400, refused)
        unsigned = _unsigned_call([c for c in _get(body, "contents") or [] if isinstance(c, dict)]) if signed else None
        if unsigned is not None:
            name, position = unsigned
            return _google_error(
                400,
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to "
                "work correctly, and missing thought_signature may lead to degraded model performance. Additional "
                f"data, function call `default_api:{name}` , position {position + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
            )
        answer = self._answer(body, ctx, model)
        response_id = ctx.make_id("", 23, req.body)
        signature = self._signature(req, ctx) if answer.thinking or (signed and answer.tool_calls) else None

        def response(parts: list[dict[str, Any]], finish: bool, candidates: int) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
            if finish:
                candidate["finishReason"] = self._finish_reason(answer)
            candidate["index"] = 0
            return {
                "candidates": [candidate],
                "usageMetadata": self._usage(answer, candidates),
                "modelVersion": model,
                "responseId": response_id,
            }

        if not stream:
            parts: list[dict[str, Any]] = []
            if answer.thinking:
                parts.append({"text": answer.thinking, "thought": True})
            if answer.text:
                parts.append({"text": answer.text})
                if signature:
                    parts[-1]["thoughtSignature"] = signature
            parts.extend(self._call_parts(answer, signature))
            payload = response(parts or [{"text": ""}], True, answer.tokens_out)
            return SimResponse(
                200, {"content-type": "application/json; charset=UTF-8"}, _pretty(payload).encode("utf-8")
            )

        items: list[tuple[list[dict[str, Any]], int]] = [  # (parts, candidatesTokenCount so far)
            ([{"text": group, "thought": True}], 0) for group in _group(answer.thinking_pieces)
        ]
        first_content = len(items)
        sent = ""
        for group in _group(answer.pieces):
            sent += group
            items.append(([{"text": group}], min(count_tokens(sent), answer.tokens_out)))
        if answer.tool_calls:
            items.append((self._call_parts(answer, signature), answer.tokens_out))
        if signature and not answer.tool_calls:  # the signature closes a text turn on an empty part
            items.append(([{"text": "", "thoughtSignature": signature}], answer.tokens_out))
        elif signature or len(items) == first_content:
            items.append(([{"text": ""}], answer.tokens_out))
        # the last chunk carries the finish reason and the final usage
        objects = [
            response(parts, i == len(items) - 1, answer.tokens_out if i == len(items) - 1 else candidates)
            for i, (parts, candidates) in enumerate(items)
        ]

        if req.query.get("alt") == "sse":
            chunks = [f"data: {_dumps(obj)}\r\n\r\n".encode() for obj in objects]
            return SimResponse(200, {"content-type": "text/event-stream"}, chunks=chunks)
        chunks = [
            ("[" if i == 0 else "\n,\r\n").encode() + _pretty(obj).encode("utf-8") for i, obj in enumerate(objects)
        ]
        chunks.append(b"\n]")
        return SimResponse(200, {"content-type": "application/json; charset=UTF-8"}, chunks=chunks)

    # -- faults ----------------------------------------------------------------------------------------------

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """google.rpc errors: 429 RESOURCE_EXHAUSTED (+ RetryInfo), 503 UNAVAILABLE, 500 INTERNAL."""
        if status == 429 or kind in ("rate_limit", "quota"):
            per = "PerDay" if kind == "quota" else "PerMinute"
            details: list[dict[str, Any]] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _QUOTA_METRIC,
                            "quotaId": f"GenerateRequests{per}PerProjectPerModel-FreeTier",
                            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                            "quotaValue": "250" if kind == "quota" else "10",
                        }
                    ],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
            ]
            if retry_after is not None and kind != "quota":
                delay = f"{int(retry_after)}s" if float(retry_after).is_integer() else f"{retry_after:g}s"
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
            return _google_error(
                429,
                "You exceeded your current quota, please check your plan and billing "
                "details. For more information on this error, head to: "
                "https://ai.google.dev/gemini-api/docs/rate-limits.",
                details,
            )
        if kind == "overloaded" or status == 503:
            return _google_error(status, "The model is overloaded. Please try again later.")
        if status >= 500:
            return _google_error(
                status,
                "An internal error has occurred. Please retry or report in "
                "https://developers.generativeai.google/guide/troubleshooting",
            )
        return _google_error(status, f"Simulated error (HTTP {status}).")

    def stream_error_chunk(self, kind: str) -> bytes:
        """An error object as an SSE event (the shape of Google's error bodies; not recorded in a stream)."""
        status = 503 if kind == "overloaded" else (429 if kind == "rate_limit" else 500)
        message = {
            503: "The model is overloaded. Please try again later.",
            429: "Resource has been exhausted (e.g. check quota).",
            500: "An internal error has occurred.",
        }[status]
        error = {"error": {"code": status, "message": message, "status": _STATUS_NAMES[status]}}
        return f"data: {_dumps(error)}\r\n\r\n".encode()

    def malformed_chunk(self) -> bytes:
        """A well-framed SSE event whose JSON is cut short."""
        return b'data: {"candidates": [{"content": {"parts": [{"text": "bro\r\n\r\n'


def _structured(config: dict[str, Any]) -> dict[str, Any] | None:
    """The structured output a ``generationConfig`` asks for: with ``responseMimeType`` JSON, the schema of
    ``responseJsonSchema`` (JSON Schema) or else ``responseSchema`` (the OpenAPI subset: upper-case type
    names, which the sampler reads alike), or ``{}`` — any JSON object — when it names none; ``None`` for text."""
    mime = _get(config, "responseMimeType")
    if not isinstance(mime, str) or mime.split(";")[0].strip().lower() != "application/json":
        return None
    for field in ("responseJsonSchema", "responseSchema"):
        schema = _get(config, field)
        if isinstance(schema, dict):
            return schema
    return {}
