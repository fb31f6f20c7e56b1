"""``Table`` for the analysis layer: it lives in ``gtl_nb.table`` (beside the ``Comparison`` whose
``to_dataframe()`` returns one), and is the same class here."""

from __future__ import annotations

from gtl_nb.table import MISSING, Table, formatter_for, price, shown

__all__ = ["MISSING", "Table", "formatter_for", "price", "shown"]
