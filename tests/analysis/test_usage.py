"""Usage, cost and latency tables over a ledger filled by real requests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gtl_nb import analysis
from gtl_nb.completion import Comparison, Completion


def expected_usage(filled, deployment):
    answers = filled.answers[deployment]
    return {
        "requests": len(answers) + filled.failed.get(deployment, 0),
        "ok": len(answers),
        "errors": filled.failed.get(deployment, 0),
        "tokens_in": sum(a.tokens_in for a in answers),
        "tokens_out": sum(a.tokens_out for a in answers),
        "cost": sum(a.cost for a in answers),
    }


def test_usage_by_provider_sums_what_the_requests_reported(filled):
    table = analysis.usage_table(filled.frame, by="provider").set_index("provider")
    assert sorted(table.index) == ["anthropic", "echo", "openai"]
    for deployment in ("openai", "anthropic", "echo"):
        expected = expected_usage(filled, deployment)
        row = table.loc[deployment]
        for column in ("requests", "ok", "errors", "tokens_in", "tokens_out"):
            assert row[column] == expected[column], (deployment, column)
        assert row["tokens"] == expected["tokens_in"] + expected["tokens_out"]
        assert row["cost"] == pytest.approx(expected["cost"])
        assert row["cost_per_1k_tokens"] == pytest.approx(1000 * expected["cost"] / row["tokens"])
        assert row["unpriced"] == 0
    assert table.loc["anthropic", "cost"] > table.loc["openai", "cost"] > 0
    assert table.loc["echo", "cost"] == 0


def test_usage_table_dtypes_and_order(filled):
    table = analysis.usage_table(filled.frame, by="provider")
    assert table.dtypes.to_dict() == {
        "provider": "string",
        "requests": "Int64",
        "ok": "Int64",
        "errors": "Int64",
        "cancelled": "Int64",
        "tokens_in": "Int64",
        "tokens_out": "Int64",
        "tokens": "Int64",
        "cost": "float64",
        "unpriced": "Int64",
        "cost_per_1k_tokens": "float64",
    }
    assert list(table["cost"]) == sorted(table["cost"], reverse=True)


def test_usage_by_model_and_by_several_keys(filled):
    by_model = analysis.usage_table(filled.frame, by="model").set_index("model")
    assert set(by_model.index) == {"gpt-4o-mini", "claude-sonnet-4-5", "echo"}
    assert by_model.loc["claude-sonnet-4-5", "tokens_out"] == expected_usage(filled, "anthropic")["tokens_out"]
    both = analysis.usage_table(filled.frame, by=["provider", "model"])
    assert list(both.columns[:2]) == ["provider", "model"]
    assert set(zip(both["provider"], both["model"], strict=True)) == {
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4-5"),
        ("echo", "echo"),
    }


def test_usage_by_day_buckets_utc_days_in_time_order(filled):
    frame = filled.frame.copy()
    earlier = frame.index[:3]
    frame.loc[earlier, "time"] = frame.loc[earlier, "time"] - pd.Timedelta(days=2)
    table = analysis.usage_table(frame, by="day")
    assert str(table["day"].dtype) == "datetime64[ns, UTC]"
    assert len(table) == 2 and table["day"].is_monotonic_increasing
    assert (table["day"] == table["day"].dt.normalize()).all()
    assert list(table["requests"]) == [3, len(frame) - 3]
    assert table["cost"].sum() == pytest.approx(filled.frame["cost"].sum())


def test_unknown_costs_and_tokens_stay_unknown(filled):
    frame = filled.frame.copy()
    openai = frame.index[(frame["deployment"] == "openai") & (frame["status"] == "ok")]
    frame.loc[openai[0], "cost"] = np.nan
    frame.loc[frame["deployment"] == "echo", ["cost"]] = np.nan
    frame.loc[frame["deployment"] == "echo", ["tokens_in", "tokens_out"]] = pd.NA
    table = analysis.usage_table(frame, by="provider").set_index("provider")
    assert table.loc["openai", "unpriced"] == 1
    known = filled.frame.loc[openai[1:], "cost"].sum()
    assert table.loc["openai", "cost"] == pytest.approx(known)
    priced_tokens = (filled.frame.loc[openai[1:], "tokens_in"] + filled.frame.loc[openai[1:], "tokens_out"]).sum()
    assert table.loc["openai", "cost_per_1k_tokens"] == pytest.approx(1000 * known / priced_tokens)
    assert pd.isna(table.loc["echo", "cost"]) and pd.isna(table.loc["echo", "tokens"])
    assert table.loc["echo", "unpriced"] == 4
    assert list(table.index)[-1] == "echo"  # unknown cost sorts last


def test_cost_per_1k_gives_cost_per_token_and_per_request(filled):
    table = analysis.cost_per_1k(filled.frame, by="provider").set_index("provider")
    expected = expected_usage(filled, "anthropic")
    tokens = expected["tokens_in"] + expected["tokens_out"]
    assert table.loc["anthropic", "cost_per_1k_tokens"] == pytest.approx(1000 * expected["cost"] / tokens)
    assert table.loc["anthropic", "cost_per_request"] == pytest.approx(expected["cost"] / 4)
    assert list(table.columns) == ["requests", "tokens", "cost", "cost_per_1k_tokens", "cost_per_request"]


def test_latency_percentiles_match_numpy_per_group(filled):
    table = analysis.latency_percentiles(filled.frame, by="provider").set_index("provider")
    assert list(table.columns) == [
        "requests",
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_p99",
        "ttft_ms_p50",
        "ttft_ms_p90",
        "ttft_ms_p99",
    ]
    assert all(str(t) == "float64" for t in table.dtypes.iloc[1:])
    for deployment, answers in filled.answers.items():
        latencies = [a.latency_ms for a in answers]  # the witness: what each request reported
        ttfts = [a.ttft_ms for a in answers]
        assert table.loc[deployment, "requests"] == len(answers)
        for p in (50, 90, 99):
            assert table.loc[deployment, f"latency_ms_p{p}"] == pytest.approx(np.percentile(latencies, p), rel=0.05)
            assert table.loc[deployment, f"ttft_ms_p{p}"] == pytest.approx(np.percentile(ttfts, p), rel=0.05)
        assert table.loc[deployment, "latency_ms_p50"] <= table.loc[deployment, "latency_ms_p99"]


def test_latency_percentiles_can_count_failed_requests_and_other_percentiles(filled):
    everything = analysis.latency_percentiles(filled.frame, by="provider", percentiles=(25, 99.9), status=None)
    row = everything.set_index("provider").loc["openai"]
    assert row["requests"] == 5
    assert "latency_ms_p99.9" in everything.columns and "ttft_ms_p25" in everything.columns
    with pytest.raises(ValueError, match="between 0 and 100"):
        analysis.latency_percentiles(filled.frame, percentiles=(120,))


def test_comparison_table_ranks_groups_by_latency_and_cost(filled):
    table = analysis.comparison_table(filled.frame, by="provider")
    assert list(table["rank_latency"]) == sorted(table["rank_latency"])
    assert table["latency_ms_p50"].is_monotonic_increasing
    rows = table.set_index("provider")
    assert rows.loc["openai", "success_rate"] == pytest.approx(4 / 5)
    assert rows.loc["echo", "success_rate"] == 1.0
    cheapest = rows["cost_per_request"].idxmin()
    assert rows.loc[cheapest, "rank_cost"] == 1
    mean_out = np.mean([a.tokens_out for a in filled.answers["anthropic"]])
    assert rows.loc["anthropic", "tokens_out_per_request"] == pytest.approx(mean_out)


def test_comparison_table_of_a_comparison_is_its_ranked_frame():
    answer = Completion(text="hi", session_id="s", provider="echo", model="echo", finish_reason="stop", latency_ms=5.0)
    comparison = Comparison(models=["echo", "x"], results={"echo": answer, "x": KeyError("x")})
    table = analysis.comparison_table(comparison)
    assert list(table["model"]) == ["echo", "x"] and list(table["status"]) == ["ok", "error"]


def test_empty_frames_give_empty_tables_with_their_columns(filled):
    empty = filled.frame.iloc[:0]
    assert analysis.usage_table(empty).empty
    assert "cost_per_1k_tokens" in analysis.usage_table(empty).columns
    assert "latency_ms_p50" in analysis.latency_percentiles(empty).columns


def test_wrong_inputs_are_named(filled):
    with pytest.raises(TypeError, match=r"client\.usage\(\)"):
        analysis.usage_table(None)
    with pytest.raises(ValueError, match="lacks the ledger column"):
        analysis.usage_table(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="unknown grouping key 'colour'"):
        analysis.usage_table(filled.frame, by="colour")
    with pytest.raises(ValueError, match="unknown grouping key 'providers'; did you mean 'provider'\\?"):
        analysis.usage_table(filled.frame, by="providers")


# -- how the tables show --------------------------------------------------------------------------


def test_tables_show_costs_as_money_and_unknowns_as_empty_cells_with_raw_numbers_in_the_data(filled):
    frame = filled.frame.copy()
    frame.loc[frame["deployment"] == "anthropic", "cost"] = np.nan  # unknown costs: a NaN group
    frame.loc[frame["deployment"] == "anthropic", "tokens_in"] = pd.NA  # ... and an <NA> one
    for table in (
        analysis.usage_table(frame, by="provider"),
        analysis.cost_per_1k(frame, by="model"),
        analysis.comparison_table(frame, by="model"),
    ):
        assert isinstance(table, analysis.Table) and isinstance(table, pd.DataFrame)
        assert table["cost_per_1k_tokens"].dtype == "float64"  # the data stays numbers
        with pd.option_context("display.width", 400, "display.max_columns", 50):
            text, page = repr(table), table._repr_html_()
        for shown in (text, page):
            assert "<NA>" not in shown and "&lt;NA&gt;" not in shown and "NaN" not in shown, shown
        costs = [value for value in table["cost_per_1k_tokens"] if value == value and value > 0]
        assert costs and all(f"${value:.6f}" in text for value in costs if value < 0.01), text
    usage = analysis.usage_table(frame, by="provider").set_index("provider")
    assert pd.isna(usage.loc["anthropic", "cost"]) and usage.loc["openai", "cost"] > 0
    selection = analysis.usage_table(frame)[["provider", "cost"]]  # a part of a table shows the same way
    assert isinstance(selection, analysis.Table) and "$" in repr(selection)


def test_a_table_formats_by_column_name():
    table = analysis.Table(
        {
            "model": ["a", None],
            "cost": [0.000953, 0.0],
            "rank_cost": pd.array([1, None], dtype="Int64"),
            "input_per_1m": [0.15, 10.0],
            "latency_s": [0.214, np.nan],
            "success_rate": [0.75, 1.0],
        }
    )
    assert table.formatted().to_dict("list") == {
        "model": ["a", ""],
        "cost": ["$0.000953", "$0"],
        "rank_cost": ["1", ""],
        "input_per_1m": ["$0.15", "$10.00"],
        "latency_s": ["0.21 s", ""],
        "success_rate": ["75%", "100%"],
    }


def test_a_money_column_has_one_precision_so_its_amounts_line_up():
    mixed = analysis.Table({"cost": [0.0125, 0.000953, 0.0, np.nan, 12.5]})
    assert mixed.formatted()["cost"].tolist() == ["$0.012500", "$0.000953", "$0", "", "$12.500000"]
    large = analysis.Table({"cost_per_request": [0.0125, 1.5]})  # nothing under a cent: four decimals
    assert large.formatted()["cost_per_request"].tolist() == ["$0.0125", "$1.5000"]


def test_requests_that_reached_no_deployment_have_a_named_group(filled):
    frame = filled.frame
    refused = frame.iloc[[0]].copy()
    refused["deployment"] = None  # an unknown model, a missing key: refused before any deployment
    refused["status"], refused["error_code"] = "error", "MODEL_NOT_FOUND"
    refused[["tokens_in", "tokens_out", "cost"]] = None
    table = analysis.usage_table(pd.concat([frame, refused], ignore_index=True), by="provider")
    row = table.set_index("provider").loc[analysis.usage.NOT_ROUTED]
    assert (row["requests"], row["ok"], row["errors"]) == (1, 0, 1)
    assert sorted(table["provider"]) == sorted(["anthropic", "echo", "openai", "(not routed)"])


def test_a_categorical_deployment_column_still_groups_its_unrouted_rows(filled):
    frame = filled.frame.copy()
    frame.loc[frame.index[0], "deployment"] = None
    frame["deployment"] = frame["deployment"].astype("category")  # a user's own transformation
    table = analysis.usage_table(frame, by="provider")
    assert analysis.usage.NOT_ROUTED in set(table["provider"])
    assert int(table["requests"].sum()) == len(frame)


def test_answers_cut_short_group_by_finish_reason():
    from gtl_nb.engine.ledger import frame_from_rows

    def row(n: int, status: str, reason: str | None) -> dict[str, object]:
        return {"id": n, "time": 1.7e9 + n, "deployment": "oa", "model": "m", "status": status, "tokens_in": 10,
                "tokens_out": 20, "cost": 0.5, "finish_reason": reason}  # fmt: skip

    rows = [row(1, "ok", "length"), row(2, "ok", "stop"), row(3, "ok", "length"), row(4, "error", None)]
    table = analysis.usage_table(frame_from_rows(rows), by="finish_reason").set_index("finish_reason")
    assert (table.loc["length", "requests"], table.loc["length", "cost"]) == (2, 1.0)
    assert table.loc["stop", "requests"] == 1 and int(table["errors"].sum()) == 1  # the error: no reason


def test_a_tables_page_writes_each_dollar_apart_so_two_in_a_cell_are_no_formula():
    # map_prompt's table of reviews: "Paid $5 for soup and $3 for tea" was a formula in JupyterLab
    table = analysis.Table(pd.DataFrame({"review": ["Paid $5 for soup and $3 for tea"], "cost": [0.000046]}))
    page = table._repr_html_()
    assert "$" not in page.replace("&#36;", "") and page.count("<span>&#36;</span>") == 3
    assert "Paid $5 for soup and $3 for tea" in repr(table)  # the text form keeps its dollars
