"""GAP, the context-transfer format, as pure code (``GAP-protocol-v0.1.0``).

    >>> from gtl_nb import gap
    >>> wrapped = gap.wrap_message("The system needs optimization", "claude.ai", "session_123")
    >>> gap.find_undefined(wrapped)
    ['the_system']
    >>> wrapped = gap.update_entity(wrapped, "the_system", "PostgreSQL 14.5 cluster")
    >>> print(gap.transform_for_platform(wrapped, "chatgpt"))  # doctest: +SKIP

Modules: ``model`` (the immutable values), ``markdown`` and ``jsonfmt`` (the two formats, within the
size and depth limits of ``limits``),
``entities`` and ``vocabulary`` (detection), ``suggest``, ``pronouns``, ``platforms``, ``wrap``,
``graph`` (networkx; imported on use) and ``cli`` (``gtl gap``).

Names resolve lazily (PEP 562), and nothing here imports asyncio, sockets, httpx or IPython or
reads a clock; networkx is imported only when a graph function runs, pandas only by
``graph_to_dataframes``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    # operations
    "wrap_message": "wrap",
    "transform_for_platform": "platforms",
    "to_markdown": "markdown",
    "from_markdown": "markdown",
    "parse_all": "markdown",
    "to_json": "jsonfmt",
    "from_json": "jsonfmt",
    "to_dict": "jsonfmt",
    "from_dict": "jsonfmt",
    "update_entity": "entities",
    "detect_entities": "entities",
    "merge_entities": "entities",
    "find_undefined": "entities",
    "suggest_definitions": "suggest",
    "best_definitions": "suggest",
    "transform_pronouns": "pronouns",
    "create_context_graph": "graph",
    "undefined_entities": "graph",
    "entity_cooccurrence": "graph",
    "reply_chain": "graph",
    "graph_to_dataframes": "graph",
    "graph_to_json": "graph",
    "graph_from_json": "graph",
    # values and constants
    "WrappedMessage": "model",
    "Entity": "model",
    "TransformHints": "model",
    "FrozenMap": "model",
    "GAP_VERSION": "model",
    "ROLES": "model",
    "ENTITY_TYPES": "model",
    "PLATFORMS": "platforms",
    "Suggestion": "suggest",
    "GAPFormatError": "errors",
}
_SUBMODULES = frozenset(
    {"model", "errors", "limits", "markdown", "jsonfmt", "entities", "vocabulary", "spans", "suggest",
     "pronouns", "platforms", "wrap", "graph", "cli"}
)  # fmt: skip

__all__ = [
    "ENTITY_TYPES",
    "GAP_VERSION",
    "PLATFORMS",
    "ROLES",
    "Entity",
    "FrozenMap",
    "GAPFormatError",
    "Suggestion",
    "TransformHints",
    "WrappedMessage",
    "best_definitions",
    "create_context_graph",
    "detect_entities",
    "entity_cooccurrence",
    "find_undefined",
    "from_dict",
    "from_json",
    "from_markdown",
    "graph_from_json",
    "graph_to_dataframes",
    "graph_to_json",
    "merge_entities",
    "parse_all",
    "reply_chain",
    "suggest_definitions",
    "to_dict",
    "to_json",
    "to_markdown",
    "transform_for_platform",
    "transform_pronouns",
    "undefined_entities",
    "update_entity",
    "wrap_message",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from gtl_nb.gap.entities import detect_entities, find_undefined, merge_entities, update_entity
    from gtl_nb.gap.errors import GAPFormatError
    from gtl_nb.gap.graph import (
        create_context_graph,
        entity_cooccurrence,
        graph_from_json,
        graph_to_dataframes,
        graph_to_json,
        reply_chain,
        undefined_entities,
    )
    from gtl_nb.gap.jsonfmt import from_dict, from_json, to_dict, to_json
    from gtl_nb.gap.markdown import from_markdown, parse_all, to_markdown
    from gtl_nb.gap.model import (
        ENTITY_TYPES,
        GAP_VERSION,
        ROLES,
        Entity,
        FrozenMap,
        TransformHints,
        WrappedMessage,
    )
    from gtl_nb.gap.platforms import PLATFORMS, transform_for_platform
    from gtl_nb.gap.pronouns import transform_pronouns
    from gtl_nb.gap.suggest import Suggestion, best_definitions, suggest_definitions
    from gtl_nb.gap.wrap import wrap_message


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"gtl_nb.gap.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gtl_nb.gap' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gtl_nb.gap.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
