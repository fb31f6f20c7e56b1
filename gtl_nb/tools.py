"""Python functions as GTL tools: ``tool_from_function`` builds the schema, ``run_tool_calls`` runs calls.

    >>> def get_weather(city: str, days: int = 1) -> str:
    ...     '''Weather forecast for a city.
    ...
    ...     Args:
    ...         city: the city name, e.g. "Oslo"
    ...         days: how many days ahead
    ...     '''
    >>> tool = tool_from_function(get_weather)
    >>> tool.parameters["required"]
    ['city']

The schema comes from the signature: a parameter without a default is required; its annotation gives
the JSON Schema type (``str``, ``int``, ``float``, ``bool``, ``list[X]``, ``tuple``, ``dict``,
``Optional[X]`` / ``X | None``, ``Literal[...]`` and ``Enum`` subclasses become ``enum``); an
unannotated or unknown annotation accepts any value. The description is the docstring's first
paragraph; parameter descriptions come from a Google-style ``Args:`` section, a numpydoc
``Parameters`` section or Sphinx ``:param name:`` lines — or, with none of those, from a paragraph of
bare ``name: text`` lines in which every line names one of the function's parameters. ``*args`` and
``**kwargs`` are not offered to the model.

``run_tool_calls`` executes a completion's tool calls against named functions and returns one
``ToolResult`` per call, each with the ``tool`` message to send back. A call that fails (unknown
function, arguments that are not a JSON object or do not fit the signature, an exception in the
function) is not raised: its error text is the result, so the model can see it and recover.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gtl_nb.protocol.messages import Message, Tool, ToolCall

__all__ = ["ToolResult", "run_tool_calls", "schema_for_annotation", "tool_from_function"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the providers accept as a function name
_SECTION_RE = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:?\s*$")
_OTHER_SECTION_RE = re.compile(
    r"^\s*(Returns?|Yields?|Raises?|Examples?|Notes?|See Also|Attributes|References|Warnings?)\s*:?\s*$"
)
_GOOGLE_PARAM_RE = re.compile(r"^(?P<name>\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)$")
_NUMPY_PARAM_RE = re.compile(r"^(?P<name>\*{0,2}\w+)\s*(:\s*.*)?$")
_SPHINX_PARAM_RE = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(?P<name>\w+)\s*:\s*(?P<text>.*)$")


def tool_from_function(func: Callable[..., Any], *, name: str | None = None, description: str | None = None) -> Tool:
    """The ``Tool`` (name, description, JSON Schema of the parameters) that describes ``func``.

    ``name`` defaults to ``func.__name__`` and ``description`` to the docstring's first paragraph.
    """
    if not callable(func):
        raise TypeError(f"a tool must be a callable, not {type(func).__name__}")
    tool_name = name or getattr(func, "__name__", None) or type(func).__name__
    if not _NAME_RE.match(tool_name):
        raise ValueError(f"{tool_name!r} cannot be a tool name: use letters, digits, '_' or '-' (at most 64)")
    doc = inspect.getdoc(func) or ""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of {tool_name!r}: {exc}") from None
    summary, param_docs = _parse_docstring(doc, frozenset(signature.parameters))
    hints = _type_hints(func)

    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name, param.annotation)
        schema = schema_for_annotation(annotation)
        if param_docs.get(param.name):
            schema["description"] = param_docs[param.name]
        if param.default is not param.empty:
            default = _json_default(param.default)
            if default is not _NO_DEFAULT and default is not None:  # None just means "optional"
                schema["default"] = default
        else:
            required.append(param.name)
        properties[param.name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(name=tool_name, description=description if description is not None else summary, parameters=parameters)


def schema_for_annotation(annotation: Any) -> dict[str, Any]:
    """JSON Schema for one parameter annotation (``{}`` accepts anything)."""
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is None:
        return {}
    if isinstance(annotation, str):  # an annotation that could not be resolved
        return {}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}
    if annotation in simple:
        return {"type": simple[annotation]}
    if annotation in (list, tuple, set, frozenset):
        return {"type": "array"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return schema_for_annotation(options[0])
        return {"anyOf": [schema_for_annotation(a) or {} for a in options]}
    if origin is typing.Annotated:
        return schema_for_annotation(args[0])
    if origin in (list, set, frozenset, Sequence, tuple):
        schema: dict[str, Any] = {"type": "array"}
        item_args = [a for a in args if a is not Ellipsis]
        if item_args:
            schema["items"] = schema_for_annotation(item_args[0])
        return schema
    if origin in (dict, Mapping):
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = schema_for_annotation(args[1])
        return schema
    return {}


@dataclass(frozen=True)
class ToolResult:
    """One executed tool call: its value (or the error text) and the ``tool`` message to send back."""

    call: ToolCall
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def content(self) -> str:
        """The text sent back to the model."""
        if self.error is not None:
            return f"error: {self.error}"
        return _as_text(self.value)

    @property
    def message(self) -> Message:
        """The ``tool`` message that answers the call."""
        return Message(
            role="tool", content=self.content, tool_call_id=self.call.id, name=self.call.name, tool_error=not self.ok
        )


def run_tool_calls(calls: Sequence[ToolCall], functions: Mapping[str, Callable[..., Any]]) -> list[ToolResult]:
    """Run each call with the function of its name; errors become results, never exceptions."""
    results: list[ToolResult] = []
    for call in calls:
        func = functions.get(call.name)
        if func is None:
            known = ", ".join(sorted(functions)) or "none"
            results.append(ToolResult(call, error=f"unknown tool {call.name!r} (available: {known})"))
            continue
        try:
            arguments = call.parsed_arguments
        except ValueError as exc:
            results.append(ToolResult(call, error=f"arguments are not a JSON object: {exc}"))
            continue
        try:
            inspect.signature(func).bind(**arguments)
        except TypeError as exc:
            results.append(ToolResult(call, error=f"arguments do not fit {call.name}(): {exc}"))
            continue
        except ValueError:  # no signature (some builtins): just try the call
            pass
        try:
            results.append(ToolResult(call, value=func(**arguments)))
        except Exception as exc:  # the model sees the failure and can try again
            results.append(ToolResult(call, error=f"{type(exc).__name__}: {exc}"))
    return results


# ----------------------------------------------------------------------------------------------
# helpers

_NO_DEFAULT = object()


def _json_default(value: Any) -> Any:
    """The default as JSON, or ``_NO_DEFAULT`` when it has no JSON form (then it is left out)."""
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _NO_DEFAULT
    return value


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Resolved annotations (``from __future__ import annotations`` leaves strings); ``{}`` if impossible."""
    plain = inspect.isfunction(func) or inspect.ismethod(func)
    target = func if plain else type(func).__call__  # a callable object: the hints of its __call__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # a forward reference that does not resolve: fall back to the raw annotations
        return {}


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _parse_docstring(doc: str, names: frozenset[str] = frozenset()) -> tuple[str, dict[str, str]]:
    """The first paragraph (joined into one line) and the parameter descriptions (``names``: the
    function's parameters, for the bare form)."""
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION_RE.match(line) or _SPHINX_PARAM_RE.match(line):
            break
        summary_lines.append(line.strip())
    params: dict[str, str] = {}
    for match in map(_SPHINX_PARAM_RE.match, lines):
        if match:
            params[match.group("name")] = match.group("text").strip()
    params.update(_section_params(lines))
    if not params:
        params = _bare_params(lines[len(summary_lines) :], names)
    return " ".join(summary_lines), params


def _bare_params(lines: list[str], names: frozenset[str]) -> dict[str, str]:
    """``name: text`` lines with no section header over them: read from a paragraph after the summary
    whose every line at its own indent names a parameter of the function (``city: the city name``), a
    more indented line continuing the one above. A paragraph with any other line (``Note: ...``) is
    prose, not parameters."""
    params: dict[str, str] = {}
    paragraph: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line)
            continue
        if paragraph:
            params.update(_bare_paragraph(paragraph, names))
            paragraph = []
    return params


def _bare_paragraph(paragraph: list[str], names: frozenset[str]) -> dict[str, str]:
    base = min(len(line) - len(line.lstrip()) for line in paragraph)
    found: dict[str, str] = {}
    current: str | None = None
    for line in paragraph:
        text = line.strip()
        if len(line) - len(line.lstrip()) > base and current is not None:
            found[current] = f"{found[current]} {text}".strip()
            continue
        match = _GOOGLE_PARAM_RE.match(text)
        if match is None or match.group("name") not in names:
            return {}
        current = match.group("name")
        found[current] = match.group("text").strip()
    return found


def _section_params(lines: list[str]) -> dict[str, str]:
    """Parameters of a Google ``Args:`` or numpydoc ``Parameters`` (underlined) section."""
    params: dict[str, str] = {}
    start = next((i for i, line in enumerate(lines) if _SECTION_RE.match(line)), None)
    if start is None:
        return params
    body = lines[start + 1 :]
    numpy_style = bool(body) and set(body[0].strip()) == {"-"}
    if numpy_style:
        body = body[1:]
    indents = [len(line) - len(line.lstrip()) for line in body if line.strip()]
    if not indents:
        return params
    base = indents[0]
    current: str | None = None
    for line in body:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent < base or _OTHER_SECTION_RE.match(line):
            break
        text = line.strip()
        if indent == base:
            if numpy_style and text.startswith("-"):  # the next section's underline
                break
            match = (_NUMPY_PARAM_RE if numpy_style else _GOOGLE_PARAM_RE).match(text)
            current = match.group("name").lstrip("*") if match else None
            if current is not None:
                params[current] = "" if numpy_style else match.group("text").strip()  # type: ignore[union-attr]
        elif current is not None:
            params[current] = f"{params[current]} {text}".strip()
    return params
