"""The interface between the simulator core and the per-provider modules.

A provider module (``gtl_nb/sim/<provider>.py``) defines one class satisfying :class:`ProviderSim`. The core
(``server.py``) owns the sockets: it parses each HTTP request into a :class:`SimRequest`, applies the fault
script, calls ``handle(req, ctx)`` and writes the :class:`SimResponse` back, streaming ``chunks`` one by one
(each item written and flushed as an HTTP/1.1 chunk, with ``ctx.pace`` seconds between items).

Provider classes are constructed with no arguments, once per server; everything configurable arrives through
the :class:`SimContext` (``ctx.options`` holds the extra keyword arguments given to ``serve()``).

Models: each provider module holds its own list of the provider's models (the simulators import nothing of
the rest of gtl_nb, the catalog included) and answers any other name with the provider's real "model not
found" error. ``serve(..., models=[...])`` replaces that list; ``models="*"`` (:data:`ANY_MODEL`) accepts any
name, for tests and benchmarks that use made-up ones.

Context windows: each provider module also holds the context window of the models it serves (the same
numbers as the model catalog's ``context_window``; ``tests/sim/test_context_window.py`` checks that they
agree) and refuses a request whose input, counted as its usage would be (:mod:`gtl_nb.sim.tokens`), is over
it, with the provider's real error (Ollama excepted: it trims an over-long prompt silently, as its
``truncate`` default does). A model without a window (not in the catalog, or a made-up name served
through ``models=``) has no limit. ``serve(..., context_windows={"model": tokens})`` sets or replaces
windows (``None`` removes one), e.g. a small window for a test.

Registry: :data:`PROVIDERS` maps a provider name to a ``"module:Class"`` string resolved lazily by
:func:`load_provider`, so a provider module that does not exist yet fails only when asked for.

This package is an independent witness of the wire formats: it never imports ``gtl_nb.providers`` or
``gtl_nb.engine``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from gtl_nb.sim.answers import Answer, make_answer

__all__ = [
    "ANY_MODEL",
    "DEFAULT_API_KEY",
    "DEFAULT_AWS_ACCESS_KEY_ID",
    "DEFAULT_AWS_REGION",
    "DEFAULT_AWS_SECRET_ACCESS_KEY",
    "FIXED_EPOCH",
    "PROVIDERS",
    "Answer",
    "ProviderSim",
    "SimContext",
    "SimRequest",
    "SimResponse",
    "UnknownProviderError",
    "json_response",
    "load_provider",
    "name_within",
]

DEFAULT_API_KEY = "sim-key"
DEFAULT_AWS_ACCESS_KEY_ID = "AKIDSIMULATOR"
DEFAULT_AWS_SECRET_ACCESS_KEY = "sim-secret"
DEFAULT_AWS_REGION = "us-east-1"

#: The simulators never read the clock for what they put on the wire (determinism: same seed and prompt give
#: the same bytes); "created" timestamps are this fixed instant (2025-01-01T00:00:00Z).
FIXED_EPOCH = 1735689600

#: ``serve(provider, models=ANY_MODEL)``: accept any model name instead of the provider's own list.
ANY_MODEL = "*"

#: name -> "module:Class", resolved lazily by :func:`load_provider`.
PROVIDERS: dict[str, str] = {
    "openai": "gtl_nb.sim.openai:OpenAISim",
    "openai_compatible": "gtl_nb.sim.openai:OpenAICompatibleSim",
    "azure": "gtl_nb.sim.openai:AzureSim",
    "anthropic": "gtl_nb.sim.anthropic:AnthropicSim",
    "gemini": "gtl_nb.sim.gemini:GeminiSim",
    "ollama": "gtl_nb.sim.ollama:OllamaSim",
    "bedrock": "gtl_nb.sim.bedrock:BedrockSim",
}


@dataclass
class SimRequest:
    """One HTTP request as received by the simulator."""

    method: str
    path: str  # without the query string, percent-encoding kept as received
    query: dict[str, str]  # decoded; the last value wins for repeated keys
    headers: dict[str, str]  # lower-cased keys
    body: bytes
    json: Any = None  # the parsed body, or None when absent or not JSON
    raw_path: str = ""  # the request target exactly as received (path + "?" + query)


@dataclass
class SimResponse:
    """What a provider module answers; the core writes it (and applies faults around ``chunks``)."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    #: a streamed body: each item is written as one HTTP chunk and flushed as it comes
    chunks: Iterable[bytes] | None = None


@runtime_checkable
class ProviderSim(Protocol):
    """A provider's server side: routes, credential checks, answers, and its error shapes for faults.

    Optional class attributes the core reads when present: ``base_path`` (appended to the root URL to make
    ``Simulator.base_url``, e.g. "/v1"; default "") and ``overloaded_status`` (the status of
    ``Fault.overloaded()``, e.g. 529 for Anthropic; default 503).
    """

    name: str  # "openai", "openai_compatible", "azure", "anthropic", "gemini", "ollama", "bedrock"

    def handle(self, req: SimRequest, ctx: SimContext) -> SimResponse:
        """Route the request, check credentials as the real service does, and answer it."""
        ...

    def error_response(self, status: int, kind: str, retry_after: float | None) -> SimResponse:
        """The provider's real error envelope for an injected fault.

        ``kind`` is one of "rate_limit", "server_error", "overloaded", "quota", "billing" (Anthropic's credit used up;
        the others answer it as the status alone).
        """
        ...

    def stream_error_chunk(self, kind: str) -> bytes:
        """An error delivered inside a 200 stream (one whole chunk), or b"" when the provider has none."""
        ...

    def malformed_chunk(self) -> bytes:
        """A syntactically broken chunk in this provider's stream framing."""
        ...


class UnknownProviderError(LookupError):
    """Raised for a provider name not in :data:`PROVIDERS` or whose module is not available."""


def _stop_sequences(stop: Any) -> tuple[str, ...]:
    """A request's stop sequences as the services take them: a string, or a list of strings."""
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list):
        return tuple(item for item in stop if isinstance(item, str))
    return ()


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def name_within(name: Any, longest: int, *, also: str = "", first: str = "") -> bool:
    """Whether a tool name keeps a provider's rule: 1 to ``longest`` characters, each a letter, a digit,
    ``_``, ``-`` or one of ``also``, and (when ``first`` is given) the first one of ``first``. A set
    lookup per character, never a regular expression: a request's names are outside input."""
    if not isinstance(name, str) or not 0 < len(name) <= longest:
        return False
    if first and name[0] not in first:
        return False
    allowed = _NAME_CHARS.union(also) if also else _NAME_CHARS
    return all(char in allowed for char in name)


def load_provider(name: str) -> ProviderSim:
    """Instantiate the simulator class registered for ``name``."""
    target = PROVIDERS.get(name)
    if target is None:
        known = ", ".join(sorted(PROVIDERS))
        raise UnknownProviderError(f"no simulator for provider {name!r}; known: {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UnknownProviderError(
            f"the simulator for provider {name!r} ({module_name}) is not available in this installation"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UnknownProviderError(f"{module_name} defines no class {class_name!r} (provider {name!r})")
    return cls()


@dataclass
class SimContext:
    """What the core gives a provider module: configuration, credentials and the answer generator."""

    seed: int = 0
    pace: float = 0.0  # seconds between streamed chunks; applied by the core, not by providers
    #: which simulator this is: it salts the answers, so two providers asked the same thing word it differently
    provider: str = ""
    api_key: str = DEFAULT_API_KEY
    aws_access_key_id: str = DEFAULT_AWS_ACCESS_KEY_ID
    aws_secret_access_key: str = DEFAULT_AWS_SECRET_ACCESS_KEY
    aws_region: str = DEFAULT_AWS_REGION
    #: provider-specific keyword arguments of serve() (e.g. ``models=[...]``, ``check_key=True``)
    options: dict[str, Any] = field(default_factory=dict)

    def answer(
        self,
        prompt_text: str,
        tools: list[dict[str, Any]],
        *,
        tool_results: list[str] | None = None,
        thinking: bool = False,
        max_tokens: int | None = None,
        tokens_in: int | None = None,
        schema: dict[str, Any] | None = None,
        stop: Any = None,
        one_call: bool = False,
    ) -> Answer:
        """The deterministic answer to ``prompt_text`` (see :mod:`gtl_nb.sim.answers`).

        ``tools`` are ``{"name", "description", "parameters": <JSON Schema>}`` dicts; pass them only when the
        model should call them (e.g. the last message is a user message). ``tool_results`` (texts of tool
        results answered in the last turn) make the answer a text that mentions them. ``thinking`` asks for
        reasoning text too. ``max_tokens`` cuts the text (``Answer.finish == "length"``). ``tokens_in`` is the
        whole request's input estimate (:mod:`gtl_nb.sim.tokens`). ``schema``: the structured output the request
        asks for (``{}``: any JSON object), which the text then is. ``stop``: the request's stop sequences
        (a string or a list), before the first of which the text ends. ``one_call``: at most one tool call.
        """
        return make_answer(
            self.seed,
            prompt_text,
            tools,
            tool_results=tool_results or [],
            thinking=thinking,
            max_tokens=max_tokens,
            tokens_in=tokens_in,
            salt=self.provider,
            schema=schema,
            stop=_stop_sequences(stop),
            one_call=one_call,
        )

    def accepts_model(self, model: str, known: Iterable[str]) -> bool:
        """Whether the simulated account has ``model``: the ``models=`` option, else the provider's ``known``.

        ``models="*"`` accepts any name (for tests and benchmarks that use made-up ones).
        """
        return self.options.get("models") == ANY_MODEL or model in self.models(known)

    def models(self, known: Iterable[str]) -> list[str]:
        """The model list to serve: the ``models=`` option when it is a list, else the provider's ``known``."""
        chosen = self.options.get("models")
        return list(known) if not chosen or chosen == ANY_MODEL else list(chosen)

    def context_window(self, model: str, windows: Mapping[str, int]) -> int | None:
        """The context window of ``model`` in tokens: the ``context_windows=`` option's, else the provider's
        ``windows`` table; ``None`` (no limit) for a model in neither."""
        chosen = self.options.get("context_windows")
        if isinstance(chosen, Mapping) and model in chosen:
            value = chosen[model]
            return int(value) if value is not None else None
        return windows.get(model)

    def rng(self, *parts: object) -> random.Random:
        """A random generator seeded from the server seed and ``parts`` (for ids and signatures)."""
        digest = hashlib.sha256(repr((self.seed, *parts)).encode("utf-8")).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def make_id(self, prefix: str, length: int, *parts: object, alphabet: str = "") -> str:
        """A deterministic id such as ``chatcmpl-…``: ``prefix`` + ``length`` characters from ``alphabet``."""
        chars = alphabet or "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        rnd = self.rng(prefix, *parts)
        return prefix + "".join(rnd.choice(chars) for _ in range(length))


def json_response(
    status: int, obj: Any, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> SimResponse:
    """A non-streamed JSON response (compact separators, keys in insertion order)."""
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    all_headers = {"content-type": content_type}
    all_headers.update(headers or {})
    return SimResponse(status=status, headers=all_headers, body=body)
