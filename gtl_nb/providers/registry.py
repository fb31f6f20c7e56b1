"""The one registry of provider types: built-in dialects and generators, plus plugins.

Third-party packages add providers through the entry-point group ``gtl_nb.providers``: each entry
point's name is the provider type and its object is a class (or factory) returning an
``HttpDialect`` or a ``LocalProvider``. Built-ins are imported only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gtl_nb.protocol.errors import ConfigurationError

if TYPE_CHECKING:
    from importlib import metadata

ENTRY_POINT_GROUP = "gtl_nb.providers"

BUILTIN_PROVIDERS: dict[str, str] = {
    "echo": "gtl_nb.providers.echo:EchoProvider",
    "openai": "gtl_nb.providers.openai:OpenAIDialect",
    "azure": "gtl_nb.providers.openai:AzureDialect",
    "openai_compatible": "gtl_nb.providers.openai:OpenAICompatibleDialect",
    "anthropic": "gtl_nb.providers.anthropic:AnthropicDialect",
    "gemini": "gtl_nb.providers.gemini:GeminiDialect",
    "ollama": "gtl_nb.providers.ollama:OllamaDialect",
    "bedrock": "gtl_nb.providers.bedrock:BedrockDialect",
}

PROVIDER_TYPE_ALIASES: dict[str, str] = {"claude": "anthropic", "google": "gemini"}
"""Other names of built-in provider types, as the GTL spec uses them (its failover example names
``"claude"``; its provider list says Google for Gemini). A deployment or a plugin's type of that name
comes first: an alias names the type only where nothing else is called so."""


def aliased_type(name: str) -> str | None:
    """The provider type ``name`` is another name of (``"claude"`` → ``"anthropic"``), or ``None`` when it is
    no alias — or a provider type of its own (a plugin's)."""
    kind = PROVIDER_TYPE_ALIASES.get(name)
    if kind is None or name in provider_types():
        return None
    return kind


_instances: dict[str, Any] = {}
_plugins: dict[str, metadata.EntryPoint] | None = None


def _load_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def plugin_entry_points(refresh: bool = False) -> dict[str, metadata.EntryPoint]:
    """Installed plugins by provider type (read once, ``refresh=True`` to read again)."""
    global _plugins
    if _plugins is None or refresh:
        # imported here: importlib.metadata pulls in email, which imports socket
        from importlib import metadata

        _plugins = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return _plugins


def provider_types(refresh: bool = False) -> list[str]:
    """Every known provider type, built-in first."""
    extra = (set(plugin_entry_points(refresh)) | set(_instances)) - set(BUILTIN_PROVIDERS)
    return [*BUILTIN_PROVIDERS, *sorted(extra)]


def get_provider(provider_type: str) -> Any:
    """The dialect or local generator instance for ``provider_type``."""
    instance = _instances.get(provider_type)
    if instance is not None:
        return instance
    if provider_type in BUILTIN_PROVIDERS:
        factory = _load_target(BUILTIN_PROVIDERS[provider_type])
    else:
        entry = plugin_entry_points().get(provider_type) or plugin_entry_points(refresh=True).get(provider_type)
        if entry is None:
            known = ", ".join(provider_types())
            raise ConfigurationError(f"unknown provider type {provider_type!r}; known types: {known}")
        factory = entry.load()
    instance = factory() if callable(factory) else factory
    _instances[provider_type] = instance
    return instance


def register(provider_type: str, provider: Any) -> None:
    """Register a provider instance in-process (tests, notebooks); replaces any earlier one."""
    _instances[provider_type] = provider


def is_local(provider: Any) -> bool:
    """True for a ``LocalProvider`` (has ``generate``), False for an HTTP dialect."""
    return callable(getattr(provider, "generate", None))
