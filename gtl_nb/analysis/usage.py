"""Tables of cost, tokens and latency from the usage ledger's DataFrame.

Every function takes the frame ``client.usage()`` returns (the columns and dtypes of
``docs/ledger.md``) and never reads SQLite itself, so a filtered or concatenated frame works too.

Grouping keys (``by=``, a name or a list of names):

==================  ================================================================
``provider``        the deployment that answered (``deployment`` column), as GTL names providers;
                    ``(not routed)`` for requests that reached none (``NOT_ROUTED``)
``provider_type``   ``openai``, ``anthropic``, ``echo`` …
``model``           the model asked of that deployment
``day`` / ``hour``  the UTC day / hour the request started (``datetime64[ns, UTC]``)
``user``, ``status``, ``error_code``, ``deployment``: those columns as they are
==================  ================================================================

Unknown values follow the ledger's rule: NULL means *unknown*, never zero. Sums add the known
values and are ``<NA>`` / ``NaN`` when a group knows none; rows whose group key is unknown are kept
in a group labelled ``<NA>``.

Each table is a ``gtl_nb.analysis.Table``: a DataFrame with those numbers as data, shown with costs
as money (``$0.000953``) and unknown values as empty cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from gtl_nb.analysis.frames import Table
from gtl_nb.engine.ledger_schema import USAGE_GROUPINGS, USAGE_OUTCOMES, cost_unknown, usage_outcome

__all__ = [
    "GROUP_KEYS",
    "NOT_ROUTED",
    "comparison_table",
    "cost_per_1k",
    "latency_percentiles",
    "usage_table",
]

#: ``by=`` names that are not plain columns: an alias or a computed bucket.
GROUP_KEYS: dict[str, str] = {"provider": "deployment", "day": "D", "hour": "h"}
# the rest of the one list gtl usage --by and %gtl usage --by take too: columns as they are
_PLAIN_KEYS = tuple(key for key in USAGE_GROUPINGS if key not in GROUP_KEYS)
NOT_ROUTED = "(not routed)"
"""The ``provider`` of requests that reached no deployment (an unknown model, a missing key, a budget or a
token's refusal), so their group has a name in a table rather than a blank."""
_NEEDED = ("time", "deployment", "model", "status", "tokens_in", "tokens_out", "cost", "ttft_ms", "latency_ms")


def _check(frame: Any) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected the ledger's DataFrame (client.usage()), not {type(frame).__name__}")
    missing = [column for column in _NEEDED if column not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks the ledger column(s) {', '.join(missing)}; pass client.usage()")
    return frame


def _keys(by: str | Sequence[str]) -> list[str]:
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise ValueError("by= needs at least one grouping key")
    for key in keys:
        if key not in GROUP_KEYS and key not in _PLAIN_KEYS:
            from gtl_nb.cli_unknown import close_word

            choices = [*GROUP_KEYS, *_PLAIN_KEYS]
            meant = close_word(key, choices) if isinstance(key, str) else ""  # "; did you mean 'provider'?"
            raise ValueError(f"unknown grouping key {key!r}{meant} (the keys: {', '.join(choices)})")
    return keys


def with_keys(frame: pd.DataFrame, by: str | Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """A copy of ``frame`` with a column for every grouping key, and the key names."""
    frame = _check(frame)
    keys = _keys(by)
    work = frame.copy()
    for key in keys:
        if key == "provider":
            # as strings first: a categorical column refuses a value it has no category for
            work["provider"] = work["deployment"].astype("string").fillna(NOT_ROUTED)
        elif key in ("day", "hour"):
            work[key] = pd.to_datetime(work["time"], utc=True).dt.floor(GROUP_KEYS[key])
    return work, keys


def _sum(series: pd.Series) -> Any:
    return series.sum(min_count=1)


def usage_table(frame: pd.DataFrame, by: str | Sequence[str] = "provider") -> pd.DataFrame:
    """Requests, tokens and cost per group, with the cost per 1,000 tokens.

    Columns: the keys, then ``requests``, ``ok``, ``errors`` (failed: ``error`` or ``interrupted``),
    ``cancelled`` — counted as ``gtl usage`` counts them, by ``ledger_schema.usage_outcome`` —,
    ``tokens_in``, ``tokens_out``, ``tokens`` (Int64, sums of the known counts), ``cost`` (USD,
    sum of the known costs), ``unpriced`` (requests that cost something whose cost is unknown:
    ``ledger_schema.cost_unknown``, ``gtl usage``'s ``*``) and ``cost_per_1k_tokens`` (over the
    requests whose cost and both token counts are known).
    Sorted by cost (highest first); ``by="day"``/``"hour"`` sorts by time instead.
    """
    work, keys = with_keys(frame, by)
    tokens_in = work["tokens_in"].astype("Int64")
    tokens_out = work["tokens_out"].astype("Int64")
    cost = work["cost"].astype("float64")
    priced = cost.notna() & tokens_in.notna() & tokens_out.notna()
    outcomes = work["status"].astype("object").map(usage_outcome)
    began = work["ttft_ms"].astype("float64").notna()
    unpriced = [
        cost_unknown(status, known, answered)
        for status, known, answered in zip(work["status"].astype("object"), cost.notna(), began, strict=True)
    ]
    work = work.assign(
        **{f"_{outcome}": (outcomes == outcome).astype("Int64") for outcome in USAGE_OUTCOMES},
        _tokens=tokens_in.fillna(0) + tokens_out.fillna(0),
        _known_tokens=(tokens_in.notna() | tokens_out.notna()),
        _unpriced=pd.Series(unpriced, index=work.index, dtype="bool").astype("Int64"),
        _priced_cost=cost.where(priced),
        _priced_tokens=(tokens_in + tokens_out).where(priced).astype("float64"),
    )
    work["_tokens"] = work["_tokens"].where(work["_known_tokens"])
    grouped = work.groupby(keys, dropna=False, sort=True)
    table = pd.DataFrame(
        {
            "requests": grouped.size().astype("Int64"),
            **{outcome: grouped[f"_{outcome}"].sum().astype("Int64") for outcome in USAGE_OUTCOMES},
            "tokens_in": grouped["tokens_in"].agg(_sum).astype("Int64"),
            "tokens_out": grouped["tokens_out"].agg(_sum).astype("Int64"),
            "tokens": grouped["_tokens"].agg(_sum).astype("Int64"),
            "cost": grouped["cost"].agg(_sum).astype("float64"),
            "unpriced": grouped["_unpriced"].sum().astype("Int64"),
        }
    )
    priced_cost = grouped["_priced_cost"].agg(_sum).astype("float64")
    priced_tokens = grouped["_priced_tokens"].agg(_sum).astype("float64")
    table["cost_per_1k_tokens"] = (priced_cost / priced_tokens.where(priced_tokens > 0) * 1000).astype("float64")
    table = Table(table.reset_index())
    if keys[0] in ("day", "hour"):
        return table.sort_values(keys, kind="stable").reset_index(drop=True)
    return table.sort_values("cost", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def cost_per_1k(frame: pd.DataFrame, by: str | Sequence[str] = "model") -> pd.DataFrame:
    """Cost per 1,000 tokens (and per request) for each group: the keys, ``requests``, ``tokens``,
    ``cost``, ``cost_per_1k_tokens`` and ``cost_per_request`` (mean over requests with a known cost)."""
    work, keys = with_keys(frame, by)
    table = usage_table(frame, by)
    per_request = work.groupby(keys, dropna=False)["cost"].mean().rename("cost_per_request").reset_index()
    table = table.merge(per_request, on=keys, how="left")
    return table[[*keys, "requests", "tokens", "cost", "cost_per_1k_tokens", "cost_per_request"]]


def latency_percentiles(
    frame: pd.DataFrame,
    by: str | Sequence[str] = "provider",
    percentiles: Sequence[float] = (50, 90, 99),
    *,
    status: str | Sequence[str] | None = "ok",
) -> pd.DataFrame:
    """Percentiles of ``latency_ms`` and ``ttft_ms`` per group (linear interpolation, NaN skipped).

    Columns: the keys, ``requests`` (rows used), then ``latency_ms_p50``, ``latency_ms_p90`` … and
    ``ttft_ms_p50`` … (float64, milliseconds). Only ``status`` rows count (default: ``ok``; ``None``
    for all), since a failed request's latency measures the failure.
    """
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentiles are between 0 and 100, not {p}")
    work, keys = with_keys(frame, by)
    if status is not None:
        work = work[work["status"].isin([status] if isinstance(status, str) else list(status))]
    grouped = work.groupby(keys, dropna=False, sort=True)
    table = pd.DataFrame({"requests": grouped.size().astype("Int64")})
    for column in ("latency_ms", "ttft_ms"):
        values = grouped[column]
        for p in percentiles:
            table[f"{column}_p{p:g}"] = values.quantile(p / 100).astype("float64")
    return Table(table.reset_index())


def comparison_table(source: Any, by: str | Sequence[str] = "model") -> pd.DataFrame:
    """Groups side by side, ranked: from the ledger frame, or a ``Comparison`` (its ``to_dataframe()``).

    From a ledger frame, the columns are the keys, ``requests``, ``success_rate``,
    ``tokens_out_per_request`` (mean over ok requests), ``cost_per_request``, ``cost_per_1k_tokens``,
    ``latency_ms_p50``, ``latency_ms_p90``, ``ttft_ms_p50``, then ``rank_latency`` and ``rank_cost`` (1 = best; Int64),
    sorted by ``rank_latency``.
    """
    if hasattr(source, "to_dataframe") and hasattr(source, "results"):
        return Table(source.to_dataframe())
    work, keys = with_keys(source, by)
    usage = usage_table(source, by)
    grouped = work.groupby(keys, dropna=False)
    extra = pd.DataFrame(
        {
            "tokens_out_mean": work[work["status"] == "ok"].groupby(keys, dropna=False)["tokens_out"].mean(),
            "cost_per_request": grouped["cost"].mean(),
        }
    ).reset_index()
    latency = latency_percentiles(source, by, (50, 90))[[*keys, "latency_ms_p50", "latency_ms_p90", "ttft_ms_p50"]]
    table = usage.merge(extra, on=keys, how="left").merge(latency, on=keys, how="left")
    table["success_rate"] = (table["ok"].astype("float64") / table["requests"].astype("float64")).astype("float64")
    table = table.rename(columns={"tokens_out_mean": "tokens_out_per_request"})
    table["tokens_out_per_request"] = table["tokens_out_per_request"].astype("float64")
    table["cost_per_request"] = table["cost_per_request"].astype("float64")
    table["rank_latency"] = table["latency_ms_p50"].rank(method="min").astype("Int64")
    table["rank_cost"] = table["cost_per_request"].rank(method="min").astype("Int64")
    columns = [
        *keys,
        "requests",
        "success_rate",
        "tokens_out_per_request",
        "cost_per_request",
        "cost_per_1k_tokens",
        "latency_ms_p50",
        "latency_ms_p90",
        "ttft_ms_p50",
        "rank_latency",
        "rank_cost",
    ]
    return table[columns].sort_values(["rank_latency", "rank_cost"], na_position="last").reset_index(drop=True)
