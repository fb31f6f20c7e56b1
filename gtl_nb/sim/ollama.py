"""Ollama native API simulator.

Written from the recorded fixtures (``tests/fixtures/wire/ollama``), the wire-format digest and Ollama's
``server/routes.go``: ``POST /api/chat`` streams NDJSON by default (``stream`` absent means true), one
``{"model", "created_at", "message", "done": false}`` object per line, tool calls whole (arguments objects,
``id: call_xxxxxxxx``, ``function.index``) one call per line, and a closing ``done: true`` line with
``done_reason`` and the count/duration metrics; ``{"stream": false}`` returns one JSON object. No
authentication. The models of :data:`OLLAMA_MODELS` are "pulled" (``serve("ollama", models=[...])`` replaces
them, ``models="*"`` accepts any); another name gets the real 404 ``model "x" not found, try pulling it
first``.

``format`` is answered as Ollama's grammar constrains the model to: ``"json"`` with a JSON object, a JSON
Schema (an object) with JSON of that schema (``answers.sample_for_schema``, as every simulator answers
structured output), ``""`` or ``null`` as no format; anything else is refused before any output, in
Ollama's words (``invalid format: "yaml"; expected "json" or a valid JSON Schema object``; the status
is 400, as recent servers answer it — older ones said 500). ``think`` (``true`` or a level) to a model
that does not think (every pulled one but ``qwen3`` and ``gpt-oss``) is Ollama's 400 ``"llama3.1:8b" does
not support thinking``, as ``server/routes.go`` words it; ``/api/show`` lists ``thinking`` only for those.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from gtl_nb.sim.answers import Answer
from gtl_nb.sim.base import ANY_MODEL, FIXED_EPOCH, SimContext, SimRequest, SimResponse, json_response
from gtl_nb.sim.tokens import Rates, Tally, anthropic_image_tokens, b64_bytes

__all__ = ["OLLAMA_MODELS", "OllamaSim"]

#: The models pulled on the simulated server (``name:tag``; a bare name means ``:latest``).
OLLAMA_MODELS = (
    "llama3.2:latest",
    "llama3.2:3b",
    "llama3.1:latest",
    "llama3.1:8b",
    "qwen3:latest",
    "qwen3:8b",
    "qwen2.5:latest",
    "qwen2.5:7b",
    "mistral:latest",
    "mistral:7b",
    "gemma3:latest",
    "gemma3:4b",
    "gpt-oss:latest",
    "gpt-oss:20b",
)
#: The families of those models that think (the rest do not: ``think`` to one is Ollama's 400).
_THINKING_FAMILIES = ("qwen3", "gpt-oss")
# Framing of a Llama 3 chat template, measured on the recorded usage: role headers around each turn; with
# tools, the template adds instructions and the tool definitions as raw JSON (verbose: ~30 tokens a tool).
_RATES = Rates(
    per_request=5,
    per_message=5,
    per_part=4,
    with_tools=100,
    per_tool=30,
    per_property=8,
    image=anthropic_image_tokens,
)
_JSON_TYPE = "application/json; charset=utf-8"


def _format_schema(wanted: Any) -> dict[str, Any] | None:
    """The schema ``format`` asks the answer to follow: ``{}`` (any JSON object) for ``"json"``, the
    schema itself for an object, ``None`` for none (``_chat`` refused any other value)."""
    if wanted == "json":
        return {}
    return wanted if isinstance(wanted, dict) else None


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _timestamp(step: int) -> str:
    """``created_at`` of the ``step``-th line: the fixed epoch plus 10 ms per line, nanosecond digits."""
    nanos = step * 10_000_000 + 123_456
    base = _dt.datetime.fromtimestamp(FIXED_EPOCH + nanos // 1_000_000_000, tz=_dt.timezone.utc)
    return base.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 1_000_000_000:09d}Z"


def _full_name(model: str) -> str:
    return model if ":" in model else model + ":latest"


def _thinks(model: str) -> bool:
    """Whether a pulled model thinks (a name outside :data:`OLLAMA_MODELS`, served through ``models=``, is
    taken to: the simulator knows nothing of it)."""
    full = _full_name(model)
    if full not in {_full_name(m) for m in OLLAMA_MODELS}:
        return True
    return full.partition(":")[0] in _THINKING_FAMILIES


def _text_of(content: Any) -> str:
    return content if isinstance(content, str) else ""


def _input_tokens(body: dict[str, Any]) -> int:
    """Every message (its text, images and tool calls) and the tool definitions, in a Llama-style template."""
    tally = Tally()
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        tally.messages += 1
        tally.texts.append(_text_of(message.get("content")))
        tally.parts += message.get("role") == "tool"
        for image in message.get("images") or []:
            tally.image(b64_bytes(image) if isinstance(image, str) else None)
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                tally.parts += 1
                tally.texts.append(str(function.get("name", "")))
                tally.values.append(function.get("arguments"))
    tally.tools = [
        t["function"] for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    return tally.total(_RATES)


class OllamaSim:
    """``localhost:11434``: /api/chat, /api/tags, /api/show, /api/version."""

    name = "ollama"
    base_path = ""
    overloaded_status = 503

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        """Route (Ollama has no authentication)."""
        if req.path == "/" and req.method in ("GET", "HEAD"):
            return SimResponse(200, {"content-type": "text/plain; charset=utf-8"}, b"Ollama is running")
        if req.method == "POST" and req.path == "/api/chat":
            return self._chat(req, ctx)
        if req.method == "GET" and req.path == "/api/tags":
            return json_response(200, {"models": [self._tag(m) for m in self._models(ctx)]})
        if req.method == "POST" and req.path == "/api/show":
            model = req.json.get("model") or req.json.get("name") if isinstance(req.json, dict) else None
            if not model or not self._known(str(model), ctx):
                return self._not_found(str(model or ""))
            return json_response(200, self._show(str(model)))
        if req.method == "GET" and req.path == "/api/version":
            return json_response(200, {"version": "0.12.6"})
        return SimResponse(404, {"content-type": "text/plain"}, b"404 page not found")

    # -- models ----------------------------------------------------------------------------------------------

    def _models(self, ctx: SimContext) -> list[str]:
        return [_full_name(m) for m in ctx.models(OLLAMA_MODELS)]

    def _known(self, model: str, ctx: SimContext) -> bool:
        return ctx.options.get("models") == ANY_MODEL or _full_name(model) in self._models(ctx)

    def _not_found(self, model: str) -> SimResponse:
        return json_response(
            404, {"error": f'model "{model}" not found, try pulling it first'}, content_type=_JSON_TYPE
        )

    def _details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        }

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00.000000000Z",
            "size": 2019393189,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": self._details(),
        }

    def _show(self, name: str) -> dict[str, Any]:
        return {
            "modelfile": f"FROM {name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": self._details(),
            "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
            "capabilities": ["completion", "tools", "thinking"] if _thinks(name) else ["completion", "tools"],
            "modified_at": "2025-01-01T00:00:00.000000000Z",
        }

    # -- chat ------------------------------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], ctx: SimContext) -> Answer:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        results: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.insert(0, _text_of(message.get("content")))
        prompt = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        last_is_user = bool(messages) and messages[-1].get("role") == "user"
        tools = [
            t["function"]
            for t in body.get("tools") or []
            if last_is_user and isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        limit = options.get("num_predict")
        think = body.get("think")
        return ctx.answer(
            prompt,
            tools,
            tool_results=results,
            thinking=bool(think) and think != "false",
            max_tokens=limit if isinstance(limit, int) and limit > 0 else None,
            tokens_in=_input_tokens(body),
            stop=options.get("stop"),
            schema=_format_schema(body.get("format")),
        )

    def _metrics(self, answer: Answer) -> dict[str, Any]:
        eval_count = answer.tokens_out + answer.tokens_thinking
        return {
            "total_duration": 250_000_000 + eval_count * 10_000_000,
            "load_duration": 50_000_000,
            "prompt_eval_count": answer.tokens_in,
            "prompt_eval_duration": answer.tokens_in * 1_000_000,
            "eval_count": eval_count,
            "eval_duration": eval_count * 10_000_000,
        }

    def _chat(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        body = req.json
        if not isinstance(body, dict):
            return json_response(400, {"error": "invalid character in request body"}, content_type=_JSON_TYPE)
        model = body.get("model")
        if not model:
            return json_response(400, {"error": "model is required"}, content_type=_JSON_TYPE)
        if not self._known(str(model), ctx):
            return self._not_found(str(model))
        wanted = body.get("format")
        if wanted not in (None, "", "json") and not isinstance(wanted, dict):
            said = json.dumps(wanted, ensure_ascii=False)
            refusal = f'invalid format: {said}; expected "json" or a valid JSON Schema object'
            return json_response(400, {"error": refusal}, content_type=_JSON_TYPE)
        think = body.get("think")
        if think not in (None, False, "", "false") and not _thinks(
            str(model)
        ):  # (a level is a yes: Go's ThinkValue.Bool)
            # server/routes.go: 400 {"error": fmt.Sprintf("%q does not support thinking", req.Model)}
            refusal = f"{json.dumps(str(model), ensure_ascii=False)} does not support thinking"
            return json_response(400, {"error": refusal}, content_type=_JSON_TYPE)
        answer = self._answer(body, ctx)
        ids = [
            ctx.make_id("call_", 8, req.body, i, alphabet="abcdefghijklmnopqrstuvwxyz0123456789")
            for i in range(len(answer.tool_calls))
        ]
        calls = [
            {"id": ids[i], "function": {"index": i, "name": c["name"], "arguments": c["arguments"]}}
            for i, c in enumerate(answer.tool_calls)
        ]
        done_reason = "length" if answer.finish == "length" else "stop"
        if body.get("stream", True) is False:
            message: dict[str, Any] = {"role": "assistant", "content": answer.text}
            if answer.thinking:
                message["thinking"] = answer.thinking
            if calls:
                message["tool_calls"] = calls
            payload = {
                "model": model,
                "created_at": _timestamp(0),
                "message": message,
                "done_reason": done_reason,
                "done": True,
                **self._metrics(answer),
            }
            return json_response(200, payload, content_type=_JSON_TYPE)

        lines: list[dict[str, Any]] = []
        lines += [{"role": "assistant", "content": "", "thinking": p} for p in answer.thinking_pieces]
        lines += [{"role": "assistant", "content": p} for p in answer.pieces]
        lines += [{"role": "assistant", "content": "", "tool_calls": [call]} for call in calls]
        chunks = [
            _line({"model": model, "created_at": _timestamp(i), "message": m, "done": False})
            for i, m in enumerate(lines)
        ]
        chunks.append(
            _line(
                {
                    "model": model,
                    "created_at": _timestamp(len(lines)),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": done_reason,
                    "done": True,
                    **self._metrics(answer),
                }
            )
        )
        return SimResponse(200, {"content-type": "application/x-ndjson"}, chunks=chunks)

    # -- faults ----------------------------------------------------------------------------------------------

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """``{"error": "…"}``: 503 server busy (queue full) for overload, 500 for a runner failure."""
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        if status == 503 or kind == "overloaded":
            message = "server busy, please try again.  maximum pending requests exceeded"
        elif status == 429 or kind in ("rate_limit", "quota"):
            message = "too many requests, please try again later"
        elif status >= 500:
            message = "llama runner process has terminated: exit status 2"
        else:
            message = f"simulated error (HTTP {status})"
        return json_response(status, {"error": message}, headers, content_type=_JSON_TYPE)

    def stream_error_chunk(self, kind: str) -> bytes:
        """A ``{"error": …}`` line inside the 200 stream, with no ``done: true`` after it."""
        return _line({"error": "an error was encountered while running the model"})

    def malformed_chunk(self) -> bytes:
        """A line whose JSON is cut short."""
        return b'{"model":"sim","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","cont\n'
