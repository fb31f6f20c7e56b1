"""``Table``: a pandas DataFrame whose data stays raw and whose display reads like a bill.

The usage, cost and comparison tables of ``gtl_nb.analysis``, ``Comparison.to_dataframe()`` (and the
magics' ``%gtl usage`` and ``%gtl models``) return a ``Table``. It is a ``DataFrame`` in every way —
costs are float64 USD, counts Int64, times float64 seconds, so sums, filters and plots work on the
numbers — and only what a notebook or ``print`` shows is formatted, by column name:

==========================================  ===========================================
``cost``, ``*_cost``, ``cost_per_*``        money as in the footers, one precision a column: ``$0``, ``$0.000953``
``*_per_1m``                                 a price per 1M tokens: ``$0.15``, ``$2.50``
``*_s``                                      seconds: ``0.21 s``
``success_rate``                             a percentage: ``75%``
==========================================  ===========================================

A missing value shows as an empty cell whatever its dtype (pandas would print ``<NA>`` in an Int64
column and ``NaN`` in a float one). Operations on a ``Table`` give a ``Table``, so a selection such
as ``table[["model", "cost"]]`` keeps the display.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from gtl_nb.safe_markdown import DOLLAR
from gtl_nb.words import dollars

__all__ = ["MISSING", "Table", "price", "shown"]

MISSING = ""  # how a missing value shows, in every column


def price(value: Any) -> str:
    """A price in USD with at least two decimals and no trailing zeros beyond them: ``$0.15``, ``$0.075``."""
    if _missing(value):
        return MISSING
    text = f"{float(value):,.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals.ljust(2, '0')}"


def _money(value: Any) -> str:
    return MISSING if _missing(value) else dollars(float(value))


def _seconds(value: Any) -> str:
    return MISSING if _missing(value) else f"{float(value):.2f} s"


def _percent(value: Any) -> str:
    return MISSING if _missing(value) else f"{float(value):.0%}"


def _plain(value: Any) -> str:
    return MISSING if _missing(value) else str(value)


def _missing(value: Any) -> bool:
    # not pd.isna: a cell may hold a list, for which isna answers element by element
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def formatter_for(name: Any, dtype: Any) -> Callable[[Any], str] | None:
    """How column ``name`` shows (``None``: pandas' own formatting, with ``MISSING`` for NaN)."""
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    label = str(name)
    if label.startswith("rank_"):  # a rank is a count, whatever it ranks by
        return _plain if isinstance(dtype, pd.api.extensions.ExtensionDtype) else None
    if numeric and (label == "cost" or label.endswith("_cost") or label.startswith("cost_per_")):
        return _money
    if numeric and label.endswith("_per_1m"):
        return price
    if numeric and label.endswith("_s"):
        return _seconds
    if numeric and label == "success_rate":
        return _percent
    if isinstance(dtype, pd.api.extensions.ExtensionDtype) or pd.api.types.is_object_dtype(dtype):
        return _plain  # na_rep does not reach <NA> in these columns
    return None


def _money_column(column: pd.Series) -> list[str]:
    """Money cells with one number of decimals down the column (six if any amount is under a cent,
    as ``money`` writes it, else four), so the amounts line up: ``$0.012500`` beside ``$0.000953``."""
    amounts = [None if _missing(value) else float(value) for value in column]
    small = any(amount is not None and 0 < abs(amount) < 0.01 for amount in amounts)
    decimals = 6 if small else 4
    return [MISSING if a is None else ("$0" if a == 0 else f"${a:.{decimals}f}") for a in amounts]


def shown(name: Any, column: pd.Series) -> list[str]:
    """The cells of ``column`` as a ``Table`` shows them."""
    formatter = formatter_for(name, column.dtype)
    if formatter is _money:
        return _money_column(column)
    if formatter is not None:
        return [formatter(value) for value in column]
    if pd.api.types.is_float_dtype(column.dtype) and len(column):
        # pandas' own float formatting, one precision for the whole column
        text = column.to_string(index=False, header=False, na_rep=MISSING)
        return [line.strip() for line in text.split("\n")]
    return [_plain(value) for value in column]


class Table(pd.DataFrame):
    """A DataFrame that shows money, prices and seconds for reading (see the module docstring)."""

    @property
    def _constructor(self) -> type[Table]:
        return Table

    def formatted(self) -> pd.DataFrame:
        """A plain DataFrame of the cells as shown (strings): what the notebook and ``print`` display."""
        cells = {position: shown(name, self.iloc[:, position]) for position, name in enumerate(self.columns)}
        frame = pd.DataFrame(cells, index=self.index, dtype=object)
        frame.columns = self.columns
        return frame

    # pandas draws the formatted cells with its own options (rows, columns, width, truncation)

    def _repr_html_(self) -> str | None:
        html = self.formatted()._repr_html_()
        # every "$" in an element of its own, as the magics write them: JupyterLab's MathJax reads two
        # in one cell ("Paid $5 … $3") as a formula (pandas has escaped the cells' HTML already)
        return None if html is None else html.replace("$", DOLLAR)

    def __repr__(self) -> str:
        return repr(self.formatted())
