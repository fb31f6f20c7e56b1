"""Map a prompt over a DataFrame column through ``Client.batch``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from gtl_nb.analysis.frames import Table

__all__ = ["fill_template", "map_prompt"]

# {{ and }} are literal braces; {name} is a column; any other brace (JSON, code) stays as typed.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_template(template: str, values: Mapping[str, Any]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``; ``{{``/``}}`` give ``{``/``}``.

    An unknown name is a ``KeyError`` naming it; other braces are left as they are.
    """

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "{{":
            return "{"
        if text == "}}":
            return "}"
        name = match.group(1)
        if name not in values:
            raise KeyError(
                f"the template names {{{name}}}, which is not a column ({', '.join(map(str, values))}); "
                "write {{ and }} for literal braces"
            )
        return str(values[name])

    return _PLACEHOLDER.sub(replace, template)


def _uses_placeholders(template: str) -> bool:
    return any(match.group(1) for match in _PLACEHOLDER.finditer(template))


def map_prompt(
    client: Any,
    frame: pd.DataFrame,
    column: str,
    template: str | Callable[[Mapping[str, Any]], str] = "{value}",
    *,
    model: str | None = None,
    out_column: str | None = None,
    concurrency: int = 4,
    metrics: bool = False,
    progress: bool = False,
    **options: Any,
) -> pd.DataFrame:
    """Ask ``model`` once per row of ``frame[column]`` and return a copy with the answers added.

    ``template`` makes each prompt: ``{name}`` inserts that row's column ``name`` and ``{value}``
    the value of ``column`` (unless a column is called ``value``); a template without placeholders
    gets the value appended after a blank line; a callable receives the row as a dict. Rows whose
    value is missing are not sent. The requests run through ``client.batch`` with at most
    ``concurrency`` at once (``options`` such as ``system=``, ``temperature=``, ``max_tokens=`` are
    passed on; ``progress=True`` shows the batch's progress bar).

    The result (a ``gtl_nb.analysis.Table``) has ``out_column`` (default ``"answer"``: the answer text,
    ``<NA>`` for a skipped or failed row) and ``<out_column>_error`` (the GTL error code, or ``<NA>``); ``metrics=True``
    adds ``<out_column>_tokens_out``, ``_cost`` and ``_latency_s``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"map_prompt needs a pandas DataFrame, not {type(frame).__name__}")
    if column not in frame.columns:
        raise KeyError(f"no column {column!r} in the frame (columns: {', '.join(map(str, frame.columns))})")
    out = out_column or "answer"
    placeholders = callable(template) or _uses_placeholders(template)
    prompts: list[str] = []
    positions: list[int] = []
    for position, row in enumerate(frame.to_dict("records")):
        value = row[column]
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            continue
        values = {"value": value, **{str(k): v for k, v in row.items()}}
        if callable(template):
            prompt = template(values)
        elif placeholders:
            prompt = fill_template(template, values)
        else:
            prompt = f"{template}\n\n{value}"
        prompts.append(prompt)
        positions.append(position)
    results = client.batch(prompts, model=model, concurrency=concurrency, progress=progress, **options)
    answers: list[Any] = [pd.NA] * len(frame)
    errors: list[Any] = [pd.NA] * len(frame)
    tokens: list[Any] = [pd.NA] * len(frame)
    costs: list[float] = [float("nan")] * len(frame)
    latencies: list[float] = [float("nan")] * len(frame)
    for position, result in zip(positions, results, strict=True):
        if isinstance(result, Exception):
            errors[position] = getattr(result, "code", None) or type(result).__name__
            continue
        answers[position] = result.text
        tokens[position] = result.tokens_out if result.tokens_out is not None else pd.NA
        costs[position] = result.cost if result.cost is not None else float("nan")
        latencies[position] = result.latency if result.latency is not None else float("nan")
    mapped = Table(frame.copy())  # the caller's columns as they were; the cost shown as money
    mapped[out] = pd.array(answers, dtype="string")
    mapped[f"{out}_error"] = pd.array(errors, dtype="string")
    if metrics:
        mapped[f"{out}_tokens_out"] = pd.array(tokens, dtype="Int64")
        mapped[f"{out}_cost"] = pd.array(costs, dtype="float64")
        mapped[f"{out}_latency_s"] = pd.array(latencies, dtype="float64")
    return mapped
