"""The model catalog: what each provider type offers, and what a response cost.

Pure data and pure functions: the packaged ``catalog.toml`` is read once with
``importlib.resources``; nothing here touches the network or reads a clock.

**Lookup** (``Catalog.entry`` / ``Catalog.model``): a model name is matched against the provider
type's model ids and their ``aliases``, exactly and then case-insensitively. If that fails, the
*dated-id rule* tries once more after removing one recognised suffix — a snapshot date
(``gpt-4o-2024-08-06``, ``claude-sonnet-4-5-20250929``, ``claude-sonnet-4-5@20250929``), a
moving ``-latest`` / ``:latest`` tag, or a three-digit Gemini version (``gemini-2.0-flash-001``)
— and a leading ``models/`` (Gemini resource names). There is no looser prefix matching: a
sibling such as ``gpt-4o-audio-preview`` must not be priced as ``gpt-4o``.

**Provider types for a bare name** (``Catalog.providers_for``): the types of the name's entry
in the ``[aliases]`` table, in the order written there; then every other type whose models
include the name, in ``PROVIDER_PREFERENCE`` order (plugin types last, alphabetically).

**Cost** (``Catalog.cost``), in USD, rates per 1,000 tokens::

    cost = ((tokens_in - cached - written) * input + cached * cached_input
            + (written - written_1h) * cache_write_input + written_1h * cache_write_1h_input
            + tokens_out * output) / 1000

``tokens_in`` counts *all* input tokens, the cached ones included (``cached_tokens_in`` is the part
of ``tokens_in`` served from the provider's prompt cache, ``cache_write_tokens_in`` the part written
to it; ``None`` means none were reported). ``tokens_out`` includes reasoning tokens, which providers
bill as output. When a model has a ``long_context`` tier and ``tokens_in`` exceeds its threshold,
the tier's rates apply to the whole request. The result is ``None`` — cost unknown, never 0 — when
the model is not in the catalog, a count is missing or inconsistent, or a rate the request needs is
unknown (a cached rate marked ``"unknown"`` only matters when cached tokens were reported). Prompt-cache
*writes* are priced at ``cache_write_input`` (Anthropic's: 1.25 times the input rate, for its
five-minute cache), the input rate where the catalog gives none (the provider charges nothing more
for them); an ``"unknown"`` write rate, like a cached one, only matters when writes were reported.
``cache_write_1h_tokens_in`` (``written_1h``) is the part of the writes made to the one-hour cache,
priced at ``cache_write_1h_input`` (Anthropic's: twice the input rate); a model without that rate has
no one-hour cache, and one-hour writes reported for it make the cost unknown.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import ModelInfo, ProviderInfo

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "MODEL_KEYS",
    "PROVIDER_PREFERENCE",
    "UNKNOWN",
    "Catalog",
    "CatalogEntry",
    "LongContext",
    "Rates",
    "validate_overrides",
]

# Order in which provider types offer a bare model name when the alias table says nothing.
PROVIDER_PREFERENCE = ("openai", "anthropic", "gemini", "azure", "bedrock", "ollama", "openai_compatible")

UNKNOWN = "unknown"  # a cache rate the provider sets apart but that could not be sourced

_INT_KEYS = ("context_window", "max_tokens")
_BOOL_KEYS = ("supports_streaming", "supports_functions", "supports_vision", "supports_reasoning", "local")
_PRICE_KEYS = (
    "cost_per_1k_input",
    "cost_per_1k_output",
    "cost_per_1k_cached_input",
    "cost_per_1k_cache_write_input",
    "cost_per_1k_cache_write_1h_input",
)
_MAY_BE_UNKNOWN = ("cost_per_1k_cached_input", "cost_per_1k_cache_write_input", "cost_per_1k_cache_write_1h_input")
_TEXT_KEYS = ("source", "source_date", "status", "note", "capabilities_from")
# Fields `capabilities_from` copies: what a model can do, never what it costs.
_CAPABILITY_KEYS = (
    "context_window",
    "max_tokens",
    "supports_streaming",
    "supports_functions",
    "supports_vision",
    "supports_reasoning",
)
MODEL_KEYS = frozenset((*_INT_KEYS, *_BOOL_KEYS, *_PRICE_KEYS, *_TEXT_KEYS, "aliases", "long_context"))
_LONG_CONTEXT_KEYS = frozenset(("threshold", *_PRICE_KEYS))
_RESERVED = "aliases"  # top-level key of the alias table (not a provider type)

_DATED_SUFFIXES = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # OpenAI snapshots
    re.compile(r"-\d{8}$"),  # Anthropic snapshots
    re.compile(r"@\d{8}$"),  # Vertex-style snapshots
    re.compile(r"[-:]latest$"),  # moving tags
    re.compile(r"-\d{3}$"),  # Gemini stable versions
)


@dataclass(frozen=True)
class Rates:
    """USD per 1,000 tokens; ``None`` is unknown. ``cached_input`` is the effective rate of cached
    input (equal to ``input`` when the provider does not discount it), ``cache_write_input`` that of
    input written to the prompt cache (equal to ``input`` when writes cost nothing more),
    ``cache_write_1h_input`` that of input written to the one-hour cache (unknown unless given: only
    the providers that have one price it)."""

    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    cache_write_input: float | None = None
    cache_write_1h_input: float | None = None


@dataclass(frozen=True)
class LongContext:
    """Rates for a whole request whose input exceeds ``threshold`` tokens."""

    threshold: int
    rates: Rates


@dataclass(frozen=True)
class CatalogEntry:
    """One model of one provider type, with everything the catalog knows about it."""

    provider_type: str
    name: str
    context_window: int | None = None
    max_tokens: int | None = None
    supports_streaming: bool = True
    supports_functions: bool = False
    supports_vision: bool = False
    supports_reasoning: bool = False
    rates: Rates = Rates()
    long_context: LongContext | None = None
    local: bool = False
    source: str | None = None
    source_date: str | None = None
    status: str | None = None
    note: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def priced(self) -> bool:
        """True when any rate is known."""
        rates = [self.rates, *([self.long_context.rates] if self.long_context else [])]
        return any(
            v is not None
            for r in rates
            for v in (r.input, r.output, r.cached_input, r.cache_write_input, r.cache_write_1h_input)
        )

    def rates_for(self, tokens_in: int) -> Rates:
        """The rates that apply to a request with ``tokens_in`` input tokens."""
        if self.long_context is not None and tokens_in > self.long_context.threshold:
            return self.long_context.rates
        return self.rates

    def info(self, name: str | None = None) -> ModelInfo:
        """This entry as the protocol's ``ModelInfo`` (optionally under the name the caller used)."""
        return ModelInfo(
            name=name or self.name,
            context_window=self.context_window,
            max_tokens=self.max_tokens,
            supports_streaming=self.supports_streaming,
            supports_functions=self.supports_functions,
            supports_vision=self.supports_vision,
            cost_per_1k_input=self.rates.input,
            cost_per_1k_output=self.rates.output,
            cost_per_1k_cached_input=self.rates.cached_input,
            cost_per_1k_cache_write_input=self.rates.cache_write_input,
            cost_per_1k_cache_write_1h_input=self.rates.cache_write_1h_input,
        )


class Catalog:
    """Models per provider type, an alias table, and the cost arithmetic (see the module docstring).

    Build one with ``Catalog.default()`` (the packaged data), ``Catalog.from_dict`` or
    ``catalog.with_overrides``; a catalog never changes after construction.
    """

    def __init__(self, data: Mapping[str, Any], *, where: str = "catalog") -> None:
        self._raw = _copy(data)
        self._aliases, raw_models = _split_aliases(self._raw, where)
        self._entries: dict[str, dict[str, CatalogEntry]] = {}
        for provider_type, models in raw_models.items():
            built: dict[str, CatalogEntry] = {}
            for name, spec in models.items():
                resolved = _resolve_capabilities(raw_models, provider_type, name, spec, where)
                label = f"{where} [{provider_type}.{name!r}]"
                built[name] = _build_entry(provider_type, name, resolved, label)
            self._entries[provider_type] = built
        self._index = {t: _name_index(models) for t, models in self._entries.items()}
        self._aliases_lower = {name.lower(): name for name in self._aliases}

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def default(cls) -> Catalog:
        """The packaged catalog (parsed once per process)."""
        return _default_catalog()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        """A catalog from a mapping shaped like ``catalog.toml``."""
        return cls(data, where="catalog dict")

    def with_overrides(self, overrides: Mapping[str, Any] | None, *, where: str = "[catalog]") -> Catalog:
        """A new catalog with ``overrides`` (shaped like the configuration's ``[catalog]`` table:
        ``{provider_type: {model: {key: value}}}`` plus an optional ``aliases`` table) merged in.

        Keys of an existing model are replaced one by one; an unknown model is added. New prices
        given without a ``source`` are recorded as coming from the configuration.
        """
        if not overrides:
            return self
        validate_overrides(overrides, where=where)
        merged = _copy(self._raw)
        for provider_type, models in overrides.items():
            if provider_type == _RESERVED:
                table = merged.setdefault(_RESERVED, {})
                for name, targets in models.items():
                    table[name] = {**table.get(name, {}), **targets}
                continue
            existing = merged.setdefault(provider_type, {})
            for name, spec in models.items():
                canonical = self._canonical(provider_type, name) or name
                base = dict(existing.get(canonical, {}))
                changes = dict(spec)
                if any(k in changes for k in (*_PRICE_KEYS, "long_context")) and "source" not in changes:
                    changes["source"] = "configuration override"
                    base.pop("source_date", None)
                base.update(changes)
                existing[canonical] = base
        return Catalog(merged, where=where)

    # -- lookups -------------------------------------------------------------------------------

    def provider_types(self) -> list[str]:
        """Provider types with at least one model, in preference order."""
        return [t for t in _ordered(self._entries) if self._entries[t]]

    def entry(self, provider_type: str, model: str) -> CatalogEntry | None:
        """The catalog entry for ``model`` at ``provider_type`` (lookup rule in the module docstring)."""
        canonical = self._canonical(provider_type, model)
        return self._entries[provider_type][canonical] if canonical is not None else None

    def model(self, provider_type: str, model: str) -> ModelInfo | None:
        """``ModelInfo`` for ``model`` at ``provider_type``, or ``None`` when unknown."""
        found = self.entry(provider_type, model)
        return found.info() if found is not None else None

    def models(self, provider_type: str) -> list[ModelInfo]:
        """Every catalog model of ``provider_type``, in catalog order."""
        return [entry.info() for entry in self._entries.get(provider_type, {}).values()]

    def entries(self, provider_type: str | None = None) -> list[CatalogEntry]:
        """Every entry (of one provider type, or of all)."""
        types = [provider_type] if provider_type is not None else _ordered(self._entries)
        return [e for t in types for e in self._entries.get(t, {}).values()]

    def providers_for(self, model: str) -> list[str]:
        """Provider types that offer the bare name ``model``, most preferred first."""
        found = list(self._alias_targets(model))
        for provider_type in _ordered(self._entries):
            if provider_type not in found and self.entry(provider_type, model) is not None:
                found.append(provider_type)
        return found

    def model_id(self, provider_type: str, model: str) -> str:
        """The id to send ``provider_type`` for ``model``: the name itself when that provider knows
        it by this name, else the alias table's id for it (``claude-sonnet-4-5`` on ``bedrock`` is
        ``global.anthropic.claude-sonnet-4-5-20250929-v1:0``), else the name unchanged."""
        index = self._index.get(provider_type, {})
        if model in index or model.lower() in index:
            return model
        for candidate in _candidates(model):
            target = self._alias_targets(candidate).get(provider_type)
            if target is not None:
                return target
        return model

    def aliases(self) -> dict[str, dict[str, str]]:
        """The alias table: bare name -> {provider type: model id}."""
        return {name: dict(targets) for name, targets in self._aliases.items()}

    def close_matches(self, name: str, n: int = 5) -> list[str]:
        """Known model names that look like ``name`` (for "did you mean" hints)."""
        names = set(self._aliases)
        for entry in self.entries():
            names.add(entry.name)
            names.update(entry.aliases)
        return difflib.get_close_matches(name, sorted(names), n=n, cutoff=0.6)

    # -- cost ----------------------------------------------------------------------------------

    def cost(
        self,
        provider_type: str,
        model: str,
        tokens_in: int | None,
        tokens_out: int | None,
        cached_tokens_in: int | None = None,
        cache_write_tokens_in: int | None = None,
        cache_write_1h_tokens_in: int | None = None,
    ) -> float | None:
        """The USD cost of one response, or ``None`` when it cannot be known (see the module docstring)."""
        found = self.entry(provider_type, model)
        if found is None or tokens_in is None or tokens_out is None:
            return None
        cached = cached_tokens_in or 0
        written = cache_write_tokens_in or 0
        hour = cache_write_1h_tokens_in or 0
        if min(tokens_in, tokens_out, cached, written, hour) < 0 or cached + written > tokens_in or hour > written:
            return None
        rates = found.rates_for(tokens_in)
        if rates.input is None or rates.output is None:
            return None
        total = (tokens_in - cached - written) * rates.input + tokens_out * rates.output
        if cached:
            if rates.cached_input is None:
                return None
            total += cached * rates.cached_input
        if written > hour:
            if rates.cache_write_input is None:
                return None
            total += (written - hour) * rates.cache_write_input
        if hour:
            if rates.cache_write_1h_input is None:
                return None
            total += hour * rates.cache_write_1h_input
        return total / 1000.0

    # -- protocol ------------------------------------------------------------------------------

    def provider_info(
        self,
        deployment_name: str,
        provider_type: str,
        *,
        offline: bool = False,
        models: Iterable[str | ModelInfo] | None = None,
    ) -> ProviderInfo:
        """The ``provider_info`` message of a deployment: ``models`` (names or ``ModelInfo``) when
        given — unknown names get a bare ``ModelInfo`` — else every catalog model of its type."""
        if models is None:
            infos = self.models(provider_type)
        else:
            infos = []
            for item in models:
                if isinstance(item, ModelInfo):
                    infos.append(item)
                    continue
                found = self.entry(provider_type, item)
                infos.append(found.info(name=item) if found is not None else ModelInfo(name=item))
        return ProviderInfo(provider=deployment_name, models=infos, offline=offline, provider_type=provider_type)

    # -- internals -----------------------------------------------------------------------------

    def _canonical(self, provider_type: str, model: str) -> str | None:
        index = self._index.get(provider_type)
        if not index:
            return None
        for candidate in _candidates(model):
            found = index.get(candidate) or index.get(candidate.lower())
            if found is None:  # a bare name the alias table maps to this type's own id
                target = self._alias_targets(candidate).get(provider_type)
                found = index.get(target) if target is not None else None
            if found is not None:
                return found
        return None

    def _alias_targets(self, model: str) -> dict[str, str]:
        name = model if model in self._aliases else self._aliases_lower.get(model.lower())
        return self._aliases[name] if name is not None else {}

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={len(self._entries[t])}" for t in self.provider_types())
        return f"Catalog({counts})"


# ----------------------------------------------------------------------------------------------
# Validation


def validate_overrides(overrides: Mapping[str, Any], *, where: str = "[catalog]") -> None:
    """Check a ``[catalog]`` table: provider types map to models map to known model keys with
    values of the right type. Raises ``ConfigurationError`` naming the key and where it was."""
    if not isinstance(overrides, Mapping):
        raise ConfigurationError(f"{where} must be a table of provider types, got {type(overrides).__name__}")
    for provider_type, models in overrides.items():
        if not isinstance(models, Mapping):
            kind = type(models).__name__
            raise ConfigurationError(f"{where}.{provider_type} must be a table of models, got {kind}")
        if provider_type == _RESERVED:
            _check_alias_table(models, f"{where}.aliases")
            continue
        for name, spec in models.items():
            _check_spec(spec, f"{where}.{provider_type}.{name!r}")


def _check_spec(spec: Any, where: str) -> None:
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where} must be a table of model settings, got {type(spec).__name__}")
    for key, value in spec.items():
        if key not in MODEL_KEYS:
            raise ConfigurationError(_unknown_key(key, where, MODEL_KEYS))
        if key in _INT_KEYS:
            _check_count(value, key, where)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ConfigurationError(f"{where}: {key} must be true or false, got {value!r}")
        elif key in _PRICE_KEYS:
            _check_price(value, key, where)
        elif key == "source_date":
            _check_date(value, where)
        elif key in _TEXT_KEYS:
            if not isinstance(value, str):
                raise ConfigurationError(f"{where}: {key} must be a string, got {value!r}")
            if key == "capabilities_from" and ":" not in value:
                raise ConfigurationError(f"{where}: capabilities_from must be '<provider type>:<model>', got {value!r}")
        elif key == "aliases":
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise ConfigurationError(f"{where}: aliases must be a list of strings, got {value!r}")
        elif key == "long_context":
            _check_long_context(value, f"{where}.long_context")


def _check_long_context(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where} must be a table, got {value!r}")
    for key, item in value.items():
        if key not in _LONG_CONTEXT_KEYS:
            raise ConfigurationError(_unknown_key(key, where, _LONG_CONTEXT_KEYS))
        if key == "threshold":
            _check_count(item, key, where)
        else:
            _check_price(item, key, where)
    if "threshold" not in value:
        raise ConfigurationError(f"{where}: threshold (input tokens) is required")


def _check_count(value: Any, key: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where}: {key} must be a non-negative integer, got {value!r}")


def _check_price(value: Any, key: str, where: str) -> None:
    if key in _MAY_BE_UNKNOWN and value == UNKNOWN:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        allowed = ' or "unknown"' if key in _MAY_BE_UNKNOWN else ""
        raise ConfigurationError(f"{where}: {key} must be a non-negative number{allowed}, got {value!r}")


def _check_date(value: Any, where: str) -> None:
    try:
        date.fromisoformat(value)
    except (TypeError, ValueError):
        message = f"{where}: source_date must be an ISO date (YYYY-MM-DD), got {value!r}"
        raise ConfigurationError(message) from None


def _check_alias_table(table: Mapping[str, Any], where: str) -> None:
    for name, targets in table.items():
        if not isinstance(targets, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in targets.items()
        ):
            raise ConfigurationError(f"{where}.{name!r} must map provider types to model ids: {targets!r}")


def _unknown_key(key: str, where: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    return f"unknown key {key!r} in {where}{hint} (known: {', '.join(sorted(known))})"


# ----------------------------------------------------------------------------------------------
# Building entries


def _split_aliases(raw: Mapping[str, Any], where: str) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where} must be a table, got {type(raw).__name__}")
    aliases: dict[str, dict[str, str]] = {}
    models: dict[str, dict] = {}
    for key, value in raw.items():
        if not isinstance(value, Mapping):
            raise ConfigurationError(f"{where}: {key} must be a table, got {type(value).__name__}")
        if key == _RESERVED:
            _check_alias_table(value, f"{where} [aliases]")
            aliases = {name: dict(targets) for name, targets in value.items()}
        else:
            for name, spec in value.items():
                _check_spec(spec, f"{where} [{key}.{name!r}]")
            models[key] = dict(value)
    return aliases, models


def _resolve_capabilities(
    raw_models: Mapping[str, Mapping[str, Any]],
    provider_type: str,
    name: str,
    spec: Mapping[str, Any],
    where: str,
) -> dict[str, Any]:
    """``spec`` with the capability fields of its ``capabilities_from`` model filled in."""
    resolved = dict(spec)
    seen = {(provider_type, name)}
    reference = resolved.get("capabilities_from")
    while reference:
        ref_type, _, ref_name = reference.partition(":")
        source = raw_models.get(ref_type, {}).get(ref_name)
        if source is None or (ref_type, ref_name) in seen:
            problem = "a cycle" if source is not None else "an unknown model"
            raise ConfigurationError(
                f"{where} [{provider_type}.{name!r}]: capabilities_from {reference!r} is {problem}"
            )
        seen.add((ref_type, ref_name))
        for key in _CAPABILITY_KEYS:
            if key in source and key not in resolved:
                resolved[key] = source[key]
        reference = source.get("capabilities_from")
    return resolved


def _rates(spec: Mapping[str, Any]) -> Rates:
    input_rate = _number(spec.get("cost_per_1k_input"))
    return Rates(
        input=input_rate,
        output=_number(spec.get("cost_per_1k_output")),
        cached_input=_cache_rate(spec.get("cost_per_1k_cached_input"), input_rate),
        cache_write_input=_cache_rate(spec.get("cost_per_1k_cache_write_input"), input_rate),
        cache_write_1h_input=_cache_rate(spec.get("cost_per_1k_cache_write_1h_input", UNKNOWN), input_rate),
    )


def _cache_rate(value: Any, input_rate: float | None) -> float | None:
    """A cache rate as written: absent = billed like other input, ``"unknown"`` = set apart but not sourced."""
    if value == UNKNOWN:
        return None
    return input_rate if value is None else float(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _build_entry(provider_type: str, name: str, spec: Mapping[str, Any], where: str) -> CatalogEntry:
    long_context = None
    if "long_context" in spec:
        table = spec["long_context"]
        long_context = LongContext(threshold=int(table["threshold"]), rates=_rates(table))
    return CatalogEntry(
        provider_type=provider_type,
        name=name,
        context_window=spec.get("context_window"),
        max_tokens=spec.get("max_tokens"),
        supports_streaming=spec.get("supports_streaming", True),
        supports_functions=spec.get("supports_functions", False),
        supports_vision=spec.get("supports_vision", False),
        supports_reasoning=spec.get("supports_reasoning", False),
        rates=_rates(spec),
        long_context=long_context,
        local=spec.get("local", False),
        source=spec.get("source"),
        source_date=spec.get("source_date"),
        status=spec.get("status"),
        note=spec.get("note"),
        aliases=tuple(spec.get("aliases", ())),
    )


def _name_index(models: Mapping[str, CatalogEntry]) -> dict[str, str]:
    """Lookup key -> canonical name: exact names and aliases first, then their lower-case forms."""
    index: dict[str, str] = {}
    for name, entry in models.items():
        for key in (name, *entry.aliases):
            index.setdefault(key, name)
    for name, entry in models.items():
        for key in (name, *entry.aliases):
            index.setdefault(key.lower(), name)
    return index


def _candidates(model: str) -> tuple[str, ...]:
    """The names tried for ``model``: itself, then each dated-id rewrite (module docstring).
    Remembered for names of a model's length (asked for every request's price; a gateway's caller
    chooses the name, so a long one is not kept)."""
    return _remembered_candidates(model) if len(model) <= _REMEMBERED_NAME_LENGTH else _candidates_of(model)


_REMEMBERED_NAME_LENGTH = 200


def _candidates_of(model: str) -> tuple[str, ...]:
    base = model[len("models/") :] if model.startswith("models/") else model
    found = [model] if base == model else [model, base]
    for pattern in _DATED_SUFFIXES:
        stripped = pattern.sub("", base)
        if stripped != base and stripped:
            found.append(stripped)
    return tuple(found)


_remembered_candidates = functools.lru_cache(maxsize=1024)(_candidates_of)


def _ordered(types: Iterable[str]) -> list[str]:
    present = list(types)
    preferred = [t for t in PROVIDER_PREFERENCE if t in present]
    return preferred + sorted(t for t in present if t not in PROVIDER_PREFERENCE)


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


# ----------------------------------------------------------------------------------------------
# The packaged catalog


def _read_packaged() -> bytes:
    try:
        return resources.files("gtl_nb.providers").joinpath("catalog.toml").read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, TypeError, AttributeError):  # pragma: no cover
        return Path(__file__).with_name("catalog.toml").read_bytes()


@functools.lru_cache(maxsize=1)
def _default_catalog() -> Catalog:
    data = tomllib.loads(_read_packaged().decode("utf-8"))
    return Catalog(data, where="catalog.toml")
