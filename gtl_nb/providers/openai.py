"""The OpenAI family of HTTP dialects, all speaking Chat Completions:

* ``openai`` (``OpenAIDialect``): ``POST {base_url}/chat/completions``, ``base_url`` including
  ``/v1`` (default ``DEFAULT_BASE_URL``), ``Authorization: Bearer <api_key>``, and
  ``OpenAI-Organization`` / ``OpenAI-Project`` from ``options["organization"]`` /
  ``options["project"]``.
* ``azure`` (``AzureDialect``): ``api-key`` header (or ``Authorization: Bearer`` with
  ``options["azure_ad_token"]``), ``base_url`` = ``https://{resource}.openai.azure.com`` (or
  ``options["resource"]``). Classic URL
  ``{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`` where
  the deployment is ``options["deployment"]`` or else ``request.model`` and the version is
  ``deployment.api_version`` / ``options["api_version"]`` or ``AZURE_API_VERSION`` (2024-10-21, the
  last GA of the dated data-plane API, which has ``stream_options`` and ``max_completion_tokens``).
  With ``options["api"] == "v1"``: ``{base_url}/openai/v1/chat/completions``, no api-version,
  deployment name in ``model``.
* ``openai_compatible`` (``OpenAICompatibleDialect``): the OpenAI wire at a required ``base_url``
  (vLLM, llama.cpp server, LM Studio, OpenRouter, Groq, Together, Ollama's ``/v1``); no
  ``Authorization`` header without an ``api_key``.

Request mapping (shared): role ``system`` messages stay in order as ``system`` messages, except that
OpenAI reasoning models (o1/o3/o4…, gpt-5…) get ``developer``, the role OpenAI documents for them
(Azure and compatible servers keep ``system``: older Azure api-versions and most chat templates do
not know ``developer``; ``options["system_role"]`` overrides all three). Reasoning models get
``max_completion_tokens`` instead of ``max_tokens``, and no sampling parameter the request did not
set (``options["reasoning_model"]`` overrides the name check; compatible servers are never assumed
to be reasoning models). Images are ``image_url`` content parts after the text; images on a tool
result (Chat Completions tool messages are text only) follow the run of tool messages as one user
message; images on assistant messages are dropped (the API takes none there). Each tool message is
sent right after the assistant message whose call it answers, as the API requires (``_paired``: an
assistant text after a message of calls joins it; a user's words between a call and its result follow
the results), so a history the other dialects take is taken here too. Tools are
``{"type": "function", "function": {name, description, parameters}}``;
``tool_choice`` passes through, a plain tool name (not ``auto``/``none``/``required``) becomes
``{"type": "function", "function": {"name": …}}``, and it is left out when no tools are sent (the
API rejects it then). ``response_format`` passes through. ``stop``: OpenAI and Azure take at most 4
sequences, so more is refused before sending (``NotServedHere``: another deployment may take them);
a compatible server decides for itself. Streaming requests ask for usage with
``stream_options.include_usage`` unless ``options["stream_usage"] is False``.
``options["extra_body"]`` (a dict) is merged into the body last; ``deployment.headers`` are added
last (they win). ``request.reasoning`` changes nothing on the wire: Chat Completions never returns
OpenAI's reasoning text, and compatible servers send theirs unasked.

Effort: ``reasoning_effort`` is the request's (``request.reasoning_effort`` as is; a
``reasoning_budget`` alone converted by ``providers.effort.effort_of``: 0 → ``none``, up to 4,096 →
``low``, up to 12,288 → ``medium``, more → ``high``; a budget of 0, ``none``, goes as the least effort
the model takes where it cannot stop thinking — ``low`` for the o-series, ``minimal`` for the first
GPT-5 models: ``least_effort`` — since that number is the dialect's reading, not the caller's
word), else ``options["reasoning_effort"]`` (every
request, as configured). The request's goes to a reasoning model only — by name for OpenAI and
Azure, or ``options["reasoning_model"]`` — since a model that does not reason has nothing to tune and
OpenAI's API refuses the parameter for it (400 "Unsupported parameter"); a compatible server, whose
models cannot be told apart by name, gets it unless ``options["reasoning_model"]`` is ``false``.
OpenAI's API checks the value against the model (``none`` and ``xhigh`` only on its newest models)
and answers a 400 naming ``reasoning_effort`` in its words.

Responses, errors and ``provider_data`` are handled by ``gtl_nb.providers.openai_chat`` (read its
docstring). ``openai_compatible`` replays captured reasoning text on assistant messages (as the
field it came in) only with ``options["replay_reasoning"] = True``: Ollama accepts it, but strict
servers (Groq) reject unknown message fields and DeepSeek rejects ``reasoning_content`` in input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import CompletionRequest, Error, Message, Tool, ToolCall
from gtl_nb.providers.base import (
    API_KEY,
    Deployment,
    HttpRequest,
    ProviderNeeds,
    Requirement,
    encode_body,
    error_boundary,
    one_call_at_most,
    parse_tool_choice,
    path_segment,
    reads_as_gtl,
    refuse_stop_sequences,
    standard_data_url,
    tool_result_text,
)
from gtl_nb.providers.effort import asked_effort
from gtl_nb.providers.openai_chat import (
    PROVIDER_DATA_KEY,
    REASONING_FIELDS,
    ChatCompletionsDecoder,
    error_from_response,
)
from gtl_nb.providers.openai_chat import model_times as _model_times
from gtl_nb.providers.openai_chat import parse_models as _parse_models

DEFAULT_BASE_URL = "https://api.openai.com/v1"
AZURE_API_VERSION = "2024-10-21"

_REASONING_MODEL = re.compile(r"^(?:o[0-9]+|gpt-5)(?:$|[-.:_])")


def is_reasoning_model(model: str) -> bool:
    """True for OpenAI reasoning model names (o1, o3-mini, o4-mini-2025-04-16, gpt-5, gpt-5-mini…)."""
    return bool(_REASONING_MODEL.match(model.lower()))


def least_effort(model: str) -> str:
    """The least ``reasoning_effort`` an OpenAI model takes, by its name: ``low`` for the o-series and
    ``minimal`` for the first GPT-5 models (``gpt-5``, ``gpt-5-mini``, ``gpt-5-nano``, dated or not), which
    cannot stop thinking and refuse ``none`` ("Unsupported value"); ``none`` for the others (GPT-5.1 and
    later take it)."""
    name = model.lower()
    if name[:1] == "o" and name[1:2].isdigit():
        return "low"
    if name.startswith("gpt-5") and not name.startswith("gpt-5."):
        return "minimal"
    return "none"


# ----------------------------------------------------------------------------------------------
# Request body


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": standard_data_url(url)}}


def _user_content(message: Message) -> str | list[dict[str, Any]]:
    """A user message's content: its text, or parts — in the order of its ``parts`` when it has them,
    else the text and then the images."""
    if not message.images:
        return message.content or ""
    ordered = message.in_order()
    if ordered is not None:
        return [_image_part(value) if kind == "image" else {"type": "text", "text": value} for kind, value in ordered]
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "text": message.content})
    parts.extend(_image_part(url) for url in message.images)
    return parts


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments if call.arguments.strip() else "{}"},
    }


def _tool_images(pending: list[tuple[str | None, list[str]]]) -> dict[str, Any]:
    """One user message carrying the images that tool results returned."""
    parts: list[dict[str, Any]] = []
    for call_id, images in pending:
        parts.append({"type": "text", "text": f"Images returned by tool call {call_id or '(unknown)'}:"})
        parts.extend(_image_part(url) for url in images)
    return {"role": "user", "content": parts}


def _replayed_reasoning(message: Message) -> tuple[str, str] | None:
    data = (message.provider_data or {}).get(PROVIDER_DATA_KEY)
    if isinstance(data, dict) and data.get("field") in REASONING_FIELDS and isinstance(data.get("text"), str):
        return data["field"], data["text"]
    return None


def chat_messages(
    messages: list[Message], *, system_role: str = "system", replay_reasoning: bool = False
) -> list[dict[str, Any]]:
    """GTL messages as Chat Completions ``messages``."""
    out: list[dict[str, Any]] = []
    pending_images: list[tuple[str | None, list[str]]] = []
    for message in messages:
        if message.role != "tool" and pending_images:
            out.append(_tool_images(pending_images))
            pending_images = []
        entry: dict[str, Any]
        if message.role == "system":
            entry = {"role": system_role, "content": message.content or ""}
        elif message.role == "user":
            entry = {"role": "user", "content": _user_content(message)}
        elif message.role == "assistant":
            entry = {"role": "assistant", "content": message.content or None}
            if message.tool_calls:
                entry["tool_calls"] = [_tool_call(call) for call in message.tool_calls]
            elif entry["content"] is None:
                entry["content"] = ""  # an assistant message needs content or tool_calls
            replay = _replayed_reasoning(message) if replay_reasoning else None
            if replay is not None:
                entry[replay[0]] = replay[1]
        else:  # tool result
            entry = {"role": "tool", "content": tool_result_text(message)}
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            if message.images:
                pending_images.append((message.tool_call_id, list(message.images)))
        if message.name and message.role != "tool":
            entry["name"] = message.name
        out.append(entry)
    if pending_images:
        out.append(_tool_images(pending_images))
    # (a history without tool results has nothing to pair: most requests skip the walk)
    return _paired(out) if any(entry["role"] == "tool" for entry in out) else out


def _paired(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``entries`` with every tool message right after the assistant message whose call it answers, as
    Chat Completions requires (a 400 otherwise; ``sim.openai`` holds its wording). A history that
    splits them — the Responses API's items in the order LiteLLM sends them, the call before the
    assistant's own text; a user's words between a call and its result — is paired the way the
    dialects that merge turns pair it (Anthropic's, Bedrock's, Gemini's): an assistant message right
    after one holding calls joins it (its text after that one's, its calls after those), and a result
    that a user, system or tool-images message came before moves up to the results of its call, those
    messages following them. A result whose call no assistant message since made is left where it is
    (the API refuses it, as it would the history as given)."""
    out: list[dict[str, Any]] = []
    caller: dict[str, Any] | None = None  # the last assistant message with calls, until another assistant's
    called: set[Any] = set()
    end = 0  # where its next result goes: right after it and the results placed so far
    for entry in entries:
        role = entry["role"]
        if role == "tool" and caller is not None and entry.get("tool_call_id") in called:
            out.insert(end, entry)
            end += 1
            continue
        if role == "assistant" and caller is not None and out[-1] is caller:  # no result yet: one turn
            if entry.get("content"):
                caller["content"] = "\n\n".join(text for text in (caller.get("content"), entry["content"]) if text)
            for call in entry.get("tool_calls", ()):
                caller["tool_calls"].append(call)
                called.add(call.get("id"))
            for field, value in entry.items():
                caller.setdefault(field, value)  # a replayed reasoning field, a name
            end = len(out)
            continue
        out.append(entry)
        if role == "assistant":
            caller = entry if entry.get("tool_calls") else None
            called = {call.get("id") for call in entry.get("tool_calls", ())}
            end = len(out)
    return out


def chat_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """GTL tools as Chat Completions function tools."""
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
        }
        for tool in tools
    ]


def chat_tool_choice(choice: str | Mapping[str, Any]) -> str | dict[str, Any]:
    """GTL's forms as Chat Completions writes them (``auto``/``none``/``required``, a named function);
    a provider's own object (``allowed_tools``, a custom tool) passes through. GTL's ``parallel`` goes
    in ``parallel_tool_calls`` instead (``chat_body``)."""
    if not reads_as_gtl(choice):
        return {key: value for key, value in choice.items() if key != "parallel"}  # type: ignore[union-attr]
    parsed = parse_tool_choice(choice)
    if parsed is None:
        return "auto"
    if parsed.mode == "tool":
        return {"type": "function", "function": {"name": parsed.name}}
    return parsed.mode


def chat_body(
    request: CompletionRequest,
    *,
    model: str,
    reasoning_model: bool = False,
    system_role: str = "system",
    include_usage: bool = True,
    replay_reasoning: bool = False,
    options: Mapping[str, Any] | None = None,
    reasoning_effort: str | None = None,
) -> dict[str, Any]:
    """The Chat Completions JSON body of ``request`` (see the module docstring); ``reasoning_effort``: the
    effort to send (the dialect's choice of the request's and the deployment's)."""
    options = options or {}
    body: dict[str, Any] = {
        "model": model,
        "messages": chat_messages(request.messages, system_role=system_role, replay_reasoning=replay_reasoning),
        "stream": request.stream,
    }
    if request.stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    if request.max_tokens is not None:
        body["max_completion_tokens" if reasoning_model else "max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = chat_tools(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = chat_tool_choice(request.tool_choice)
        if one_call_at_most(request):
            body["parallel_tool_calls"] = False
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if reasoning_effort:
        body["reasoning_effort"] = reasoning_effort
    extra = options.get("extra_body")
    if isinstance(extra, Mapping):
        body.update(extra)
    return body


def _encode(body: Mapping[str, Any]) -> bytes:
    return encode_body(body)


# ----------------------------------------------------------------------------------------------
# Dialects


class _ChatCompletionsDialect:
    """What the three dialects share; subclasses choose URLs, auth and defaults."""

    name: ClassVar[str] = ""
    api: ClassVar[str] = "OpenAI's Chat Completions API"  # how an error names it
    max_stop_sequences: ClassVar[int | None] = 4  # OpenAI's limit (a 400 beyond); None: the server decides
    reasoning_system_role: ClassVar[str] = "system"  # the role of system messages for reasoning models
    detects_reasoning_models: ClassVar[bool] = True
    replays_reasoning: ClassVar[bool] = False

    # -- hooks

    def _base_url(self, deployment: Deployment) -> str:
        return (deployment.base_url or DEFAULT_BASE_URL).rstrip("/")

    def _chat_url(self, request: CompletionRequest, deployment: Deployment) -> str:
        return f"{self._base_url(deployment)}/chat/completions"

    def _models_url(self, deployment: Deployment) -> str:
        return f"{self._base_url(deployment)}/models"

    def _auth_headers(self, deployment: Deployment) -> dict[str, str]:
        return {"Authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}

    def _model(self, request: CompletionRequest, deployment: Deployment) -> str:
        return request.model

    # -- shared

    def _headers(self, deployment: Deployment, accept: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": accept}
        headers.update(self._auth_headers(deployment))
        headers.update(deployment.headers)
        return headers

    def _is_reasoning(self, request: CompletionRequest, deployment: Deployment) -> bool:
        override = deployment.options.get("reasoning_model")
        if override is not None:
            return bool(override)
        return self.detects_reasoning_models and is_reasoning_model(request.model)

    def _effort(self, request: CompletionRequest, deployment: Deployment, reasoning_model: bool) -> str | None:
        """The ``reasoning_effort`` to send: the request's, to a model that takes it, else the option's."""
        asked = asked_effort(request)
        told = deployment.options.get("reasoning_model")
        takes_it = reasoning_model or (not self.detects_reasoning_models and told is not False)
        if asked == "none" and request.reasoning_effort is None and self.detects_reasoning_models:
            asked = least_effort(request.model)  # a budget of 0, read by the dialect: what the model takes
        if asked is not None and takes_it:
            return asked
        return deployment.options.get("reasoning_effort") or None

    def build_request(self, request: CompletionRequest, deployment: Deployment, *, now: float) -> HttpRequest:
        """The Chat Completions HTTP request for ``request`` (``now`` is unused: nothing is signed)."""
        refuse_stop_sequences(request, self.api, most=self.max_stop_sequences)
        reasoning = self._is_reasoning(request, deployment)
        options = deployment.options
        system_role = options.get("system_role") or (self.reasoning_system_role if reasoning else "system")
        body = chat_body(
            request,
            model=self._model(request, deployment),
            reasoning_model=reasoning,
            system_role=system_role,
            include_usage=options.get("stream_usage") is not False,
            replay_reasoning=self.replays_reasoning and bool(options.get("replay_reasoning")),
            options=options,
            reasoning_effort=self._effort(request, deployment, reasoning),
        )
        accept = "text/event-stream" if request.stream else "application/json"
        return HttpRequest(
            method="POST",
            url=self._chat_url(request, deployment),
            headers=self._headers(deployment, accept),
            body=_encode(body),
            stream=request.stream,
        )

    def response_decoder(self, request: CompletionRequest, deployment: Deployment) -> ChatCompletionsDecoder:
        """A decoder for a 2xx response (SSE or JSON)."""
        return ChatCompletionsDecoder(request, deployment)

    @error_boundary
    def decode_error(
        self,
        request: CompletionRequest,
        deployment: Deployment,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Error:
        """A non-2xx response as an ``error`` event."""
        return error_from_response(request, deployment, status, headers, body)

    def models_request(self, deployment: Deployment, *, now: float) -> HttpRequest:
        """``GET`` the model listing."""
        return HttpRequest(
            method="GET",
            url=self._models_url(deployment),
            headers=self._headers(deployment, "application/json"),
            stream=False,
        )

    def parse_models(self, body: bytes) -> list[str]:
        """Model ids of the listing (``data[].id``)."""
        return _parse_models(body)

    def model_times(self, body: bytes) -> dict[str, int]:
        """When the listing's models were made, in Unix seconds (``data[].created``; Azure's ``created_at``)."""
        return _model_times(body)


class OpenAIDialect(_ChatCompletionsDialect):
    """OpenAI's own Chat Completions API."""

    name: ClassVar[str] = "openai"
    needs: ClassVar[ProviderNeeds] = ProviderNeeds(
        env={"api_key": ("OPENAI_API_KEY",), "base_url": ("OPENAI_BASE_URL",)},
        requires=(API_KEY,),
        implied_by=(("OPENAI_API_KEY",),),
    )
    reasoning_system_role: ClassVar[str] = "developer"

    def _auth_headers(self, deployment: Deployment) -> dict[str, str]:
        headers = super()._auth_headers(deployment)
        if deployment.options.get("organization"):
            headers["OpenAI-Organization"] = str(deployment.options["organization"])
        if deployment.options.get("project"):
            headers["OpenAI-Project"] = str(deployment.options["project"])
        return headers


class AzureDialect(_ChatCompletionsDialect):
    """Azure OpenAI: classic per-deployment URLs with ``api-version``, or the v1 API."""

    name: ClassVar[str] = "azure"
    api: ClassVar[str] = "Azure OpenAI's Chat Completions API"
    needs: ClassVar[ProviderNeeds] = ProviderNeeds(
        env={
            "api_key": ("AZURE_OPENAI_API_KEY",),
            "base_url": ("AZURE_OPENAI_ENDPOINT",),
            "api_version": ("OPENAI_API_VERSION",),
        },
        # an Entra ID token stands for the key, the resource's name for the endpoint (``_auth_headers``, ``_base_url``)
        requires=(
            Requirement("api_key", (("api_key",), ("options.azure_ad_token",))),
            Requirement("base_url", (("base_url",), ("options.resource",))),
        ),
        implied_by=(("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"),),
    )

    def _base_url(self, deployment: Deployment) -> str:
        if deployment.base_url:
            return deployment.base_url.rstrip("/")
        resource = deployment.options.get("resource")
        if resource:
            return f"https://{resource}.openai.azure.com"
        raise ConfigurationError(
            f"azure deployment {deployment.name!r} needs base_url (https://<resource>.openai.azure.com) "
            "or options['resource']"
        )

    def _v1(self, deployment: Deployment) -> bool:
        return deployment.options.get("api") == "v1"

    def _api_version(self, deployment: Deployment) -> str:
        return str(deployment.api_version or deployment.options.get("api_version") or AZURE_API_VERSION)

    def _model(self, request: CompletionRequest, deployment: Deployment) -> str:
        return str(deployment.options.get("deployment") or request.model)

    def _chat_url(self, request: CompletionRequest, deployment: Deployment) -> str:
        base = self._base_url(deployment)
        if self._v1(deployment):
            return f"{base}/openai/v1/chat/completions"
        name = path_segment(self._model(request, deployment), "Azure deployment")
        version = quote(self._api_version(deployment))
        return f"{base}/openai/deployments/{name}/chat/completions?api-version={version}"

    def _models_url(self, deployment: Deployment) -> str:
        base = self._base_url(deployment)
        if self._v1(deployment):
            return f"{base}/openai/v1/models"
        return f"{base}/openai/models?api-version={quote(self._api_version(deployment))}"

    def _auth_headers(self, deployment: Deployment) -> dict[str, str]:
        token = deployment.options.get("azure_ad_token")
        if token:
            return {"Authorization": f"Bearer {token}"}
        return {"api-key": deployment.api_key} if deployment.api_key else {}


class OpenAICompatibleDialect(_ChatCompletionsDialect):
    """Any server with an OpenAI-compatible ``/chat/completions`` at a configured ``base_url``."""

    name: ClassVar[str] = "openai_compatible"
    api: ClassVar[str] = "this OpenAI-compatible server"
    max_stop_sequences: ClassVar[int | None] = None  # each server has its own (vLLM's is configurable)
    needs: ClassVar[ProviderNeeds] = ProviderNeeds()  # a local server: no key required
    detects_reasoning_models: ClassVar[bool] = False
    replays_reasoning: ClassVar[bool] = True

    def _base_url(self, deployment: Deployment) -> str:
        if not deployment.base_url:
            raise ConfigurationError(
                f"openai_compatible deployment {deployment.name!r} needs base_url "
                "(for example http://localhost:8000/v1)"
            )
        return deployment.base_url.rstrip("/")
