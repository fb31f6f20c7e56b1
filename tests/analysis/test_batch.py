"""map_prompt: a prompt over a DataFrame column through client.batch."""

from __future__ import annotations

import pandas as pd
import pytest

import gtl_nb
from gtl_nb import analysis
from gtl_nb.analysis.batch import fill_template


@pytest.fixture
def client(tmp_path):
    client = gtl_nb.connect(ledger=tmp_path / "ledger.sqlite3", environ={})
    yield client
    client.close()


@pytest.fixture
def reviews():
    return pd.DataFrame({"id": [1, 2, 3, 4], "review": ["great soup", None, "cold {tea}", "fine"]})


def test_each_row_gets_its_answer_and_the_ledger_counts_the_batch(client, reviews):
    out = analysis.map_prompt(client, reviews, "review", "Rate #{id}: {review}", model="echo", concurrency=2)
    assert out is not reviews and "answer" not in reviews.columns
    assert list(out.columns) == ["id", "review", "answer", "answer_error"]
    assert out["answer"].dtype == "string" and out["answer_error"].dtype == "string"
    for index in (0, 2, 3):
        prompt = f"Rate #{reviews['id'][index]}: {reviews['review'][index]}"
        assert out["answer"][index] == client.complete("echo", prompt).text  # echo is deterministic
        assert pd.isna(out["answer_error"][index])
    assert pd.isna(out["answer"][1])  # a missing value is not sent
    usage = analysis.usage_table(client.usage(), by="model").set_index("model")
    assert usage.loc["echo", "requests"] == 3 + 3  # the batch, then the three witnesses


def test_failed_rows_carry_their_error_code(client, reviews):
    out = analysis.map_prompt(client, reviews, "review", "{review}", model="no-such-model", out_column="label")
    assert list(out["label_error"].dropna()) == ["MODEL_NOT_FOUND"] * 3
    assert out["label"].isna().all()


def test_metrics_columns_and_other_template_forms(client, reviews):
    out = analysis.map_prompt(client, reviews, "review", "Summarise this review:", model="echo", metrics=True)
    assert out["answer"][0].startswith('You said: "Summarise this review:\n\ngreat soup"')
    assert out["answer_tokens_out"].dtype == "Int64" and out["answer_tokens_out"][0] > 0
    assert out["answer_cost"].dtype == "float64" and out["answer_cost"][0] == 0
    assert out["answer_latency_s"][0] > 0 and pd.isna(out["answer_latency_s"][1])
    called = analysis.map_prompt(client, reviews, "review", lambda row: f"id={row['id']}", model="echo")
    assert '"id=4"' in called["answer"][3]


def test_templates_substitute_only_names_and_keep_other_braces():
    values = {"review": "ok", "value": "ok"}
    assert fill_template('{review} as {"json": true} and {{literal}}', values) == 'ok as {"json": true} and {literal}'
    with pytest.raises(KeyError, match=r"\{missing\}.*\{\{ and \}\}"):
        fill_template("{missing}", values)


def test_a_template_value_placeholder_and_bad_columns(client, reviews):
    out = analysis.map_prompt(client, reviews, "review", "About {value}", model="echo")
    assert "About cold {tea}" in out["answer"][2]  # braces inside values are not templates
    with pytest.raises(KeyError, match="no column 'text'"):
        analysis.map_prompt(client, reviews, "text", "{text}", model="echo")
    with pytest.raises(TypeError):
        analysis.map_prompt(client, [1, 2], "review", "{review}")
