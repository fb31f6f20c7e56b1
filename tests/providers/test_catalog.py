"""The model catalog: packaged data hygiene, lookup rules, cost arithmetic, overrides."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.protocol.messages import ModelInfo, ProviderInfo
from gtl_nb.providers.catalog import MODEL_KEYS, Catalog

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PACKAGED = Path(__file__).resolve().parents[2] / "gtl_nb" / "providers" / "catalog.toml"
PRICE_KEYS = ("cost_per_1k_input", "cost_per_1k_output", "cost_per_1k_cached_input")


def raw_entries():
    data = tomllib.loads(PACKAGED.read_text(encoding="utf-8"))
    for provider_type, models in data.items():
        if provider_type == "aliases":
            continue
        for name, spec in models.items():
            yield provider_type, name, spec


def prices(spec):
    found = [spec[k] for k in PRICE_KEYS if k in spec]
    found += [spec["long_context"][k] for k in PRICE_KEYS if k in spec.get("long_context", {})]
    return found


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.default()


SMALL = {
    "aliases": {"shared": {"beta": "b-model", "alpha": "a-model"}},
    "alpha": {
        "a-model": {
            "context_window": 1000,
            "supports_functions": True,
            "cost_per_1k_input": 0.002,
            "cost_per_1k_output": 0.01,
            "cost_per_1k_cached_input": 0.0005,
            "source": "https://example.test/pricing",
            "source_date": "2026-01-02",
        },
        "plain": {"cost_per_1k_input": 0.001, "cost_per_1k_output": 0.002, "source": "https://x.test"},
        "half-known": {
            "cost_per_1k_input": 0.001,
            "cost_per_1k_output": 0.002,
            "cost_per_1k_cached_input": "unknown",
        },
        "tiered": {
            "cost_per_1k_input": 0.001,
            "cost_per_1k_output": 0.002,
            "long_context": {"threshold": 100, "cost_per_1k_input": 0.01, "cost_per_1k_output": 0.02},
        },
        "free": {"local": True, "cost_per_1k_input": 0.0, "cost_per_1k_output": 0.0},
    },
    "beta": {"b-model": {"capabilities_from": "alpha:a-model"}},
}


# ----------------------------------------------------------------------------------------------
# Packaged data


def test_every_priced_entry_names_a_source_and_an_iso_date():
    checked = 0
    for provider_type, name, spec in raw_entries():
        if not prices(spec):
            continue
        checked += 1
        assert spec.get("source"), f"{provider_type}.{name} has prices but no source"
        date.fromisoformat(spec["source_date"])  # raises when missing or not ISO
        if not spec.get("local"):
            assert spec["source"].startswith("https://"), f"{provider_type}.{name}: source must be a URL"
    assert checked > 30


def test_no_packaged_price_is_zero_unless_the_model_is_local():
    for provider_type, name, spec in raw_entries():
        for price in prices(spec):
            if price == 0:
                assert spec.get("local") is True, f"{provider_type}.{name} costs 0 but is not local"


def test_local_models_are_free_and_say_why():
    for _provider_type, _name, spec in raw_entries():
        if spec.get("local"):
            assert spec["cost_per_1k_input"] == 0 and spec["cost_per_1k_output"] == 0
            assert spec["source"] == "local inference, no per-token charge"


def test_packaged_entries_use_only_known_keys():
    for provider_type, name, spec in raw_entries():
        assert set(spec) <= MODEL_KEYS, f"{provider_type}.{name}: {set(spec) - MODEL_KEYS}"


def test_catalog_covers_the_cloud_and_local_provider_types(catalog):
    for provider_type in ("openai", "azure", "anthropic", "gemini", "ollama", "bedrock"):
        assert catalog.models(provider_type), provider_type
    assert catalog.models("openai_compatible") == []
    for name in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "o4-mini", "gpt-5"):
        assert catalog.model("openai", name) is not None
    for name in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-3-5-haiku"):
        assert catalog.model("anthropic", name) is not None
    for name in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"):
        assert catalog.model("gemini", name) is not None
    for name in ("amazon.nova-lite-v1:0", "amazon.nova-micro-v1:0", "amazon.nova-pro-v1:0", "us.amazon.nova-lite-v1:0"):
        assert catalog.model("bedrock", name) is not None


def test_every_alias_target_is_a_catalog_model(catalog):
    for name, targets in catalog.aliases().items():
        for provider_type, model_id in targets.items():
            assert catalog.entry(provider_type, model_id) is not None, f"{name} -> {provider_type}:{model_id}"


def test_a_price_the_provider_page_did_not_confirm_is_unknown_not_zero(catalog):
    azure = catalog.model("azure", "gpt-4o")
    assert azure.cost_per_1k_input is None and azure.cost_per_1k_output is None
    assert azure.context_window == catalog.model("openai", "gpt-4o").context_window  # capabilities copied
    assert catalog.cost("azure", "gpt-4o", 1000, 1000) is None


def test_default_catalog_is_parsed_once():
    assert Catalog.default() is Catalog.default()


def test_importing_the_catalog_stays_sans_io():
    code = (
        "import sys; from gtl_nb.providers.catalog import Catalog; Catalog.default();"
        "bad = [m for m in ('asyncio', 'socket', 'httpx', 'IPython') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ----------------------------------------------------------------------------------------------
# Lookup


@pytest.mark.parametrize(
    ("provider_type", "requested", "canonical"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "GPT-4o", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
        ("anthropic", "claude-opus-4-5@20251101", "claude-opus-4-5-20251101"),
        ("anthropic", "claude-3-5-haiku-latest", "claude-3-5-haiku-20241022"),
        ("gemini", "models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("ollama", "llama3.1", "llama3.1:8b"),
        ("ollama", "llama3.1:latest", "llama3.1:8b"),
        ("bedrock", "amazon.nova-pro-v1:0", "amazon.nova-pro-v1:0"),
    ],
)
def test_lookup_matches_exact_alias_and_dated_ids(catalog, provider_type, requested, canonical):
    found = catalog.entry(provider_type, requested)
    assert found is not None and found.name == canonical


def test_lookup_never_prices_a_sibling_model_by_prefix(catalog):
    assert catalog.model("openai", "gpt-4o-audio-preview") is None
    assert catalog.model("openai", "gpt-4o-realtime") is None
    assert catalog.model("anthropic", "claude-sonnet-4-5-extra") is None
    assert catalog.model("nope", "gpt-4o") is None


def test_providers_for_follows_the_alias_table_order_then_preference(catalog):
    assert catalog.providers_for("gpt-4o") == ["openai", "azure"]
    assert catalog.providers_for("claude-sonnet-4-5") == ["anthropic", "bedrock"]
    assert catalog.providers_for("gemini-2.5-pro") == ["gemini"]
    assert catalog.providers_for("llama3.2") == ["ollama"]
    assert catalog.providers_for("no-such-model") == []
    small = Catalog.from_dict(SMALL)
    assert small.providers_for("shared") == ["beta", "alpha"]  # alias table order wins
    assert small.providers_for("a-model") == ["alpha"]


def test_model_id_translates_a_bare_name_for_the_provider(catalog):
    bedrock_id = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert catalog.model_id("bedrock", "claude-sonnet-4-5") == bedrock_id
    assert catalog.model_id("anthropic", "claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert catalog.model_id("anthropic", "claude-sonnet-4-5-20250929") == "claude-sonnet-4-5-20250929"
    assert catalog.model_id("ollama", "llama3.1") == "llama3.1:8b"
    assert catalog.model_id("openai", "my-fine-tune") == "my-fine-tune"


def test_close_matches_suggest_known_names(catalog):
    assert "gpt-4o" in catalog.close_matches("gpt4o")
    assert "claude-sonnet-4-5" in catalog.close_matches("claude-sonet-4-5")
    assert len(catalog.close_matches("gpt", n=2)) <= 2
    assert catalog.close_matches("zzzzzzzz") == []


def test_model_info_carries_the_spec_fields(catalog):
    info = catalog.model("openai", "gpt-4o")
    assert isinstance(info, ModelInfo)
    assert (info.context_window, info.max_tokens) == (128000, 16384)
    assert info.supports_functions and info.supports_vision and info.supports_streaming
    rates = (info.cost_per_1k_input, info.cost_per_1k_output, info.cost_per_1k_cached_input)
    assert rates == (0.0025, 0.01, 0.00125)
    entry = catalog.entry("openai", "o3")
    assert entry.supports_reasoning and not catalog.entry("openai", "gpt-4o").supports_reasoning


# ----------------------------------------------------------------------------------------------
# Cost


def test_cost_is_input_plus_output_per_thousand():
    small = Catalog.from_dict(SMALL)
    assert small.cost("alpha", "plain", 2000, 500) == pytest.approx(2 * 0.001 + 0.5 * 0.002)


def test_cached_tokens_are_part_of_tokens_in_and_priced_at_the_cached_rate():
    small = Catalog.from_dict(SMALL)
    # 1000 input of which 400 cached, 100 output
    expected = (600 * 0.002 + 400 * 0.0005 + 100 * 0.01) / 1000
    assert small.cost("alpha", "a-model", 1000, 100, 400) == pytest.approx(expected)
    uncached = (1000 * 0.002 + 100 * 0.01) / 1000
    assert small.cost("alpha", "a-model", 1000, 100, None) == pytest.approx(uncached)


def test_cached_input_without_a_discount_is_billed_like_input():
    small = Catalog.from_dict(SMALL)
    assert small.cost("alpha", "plain", 1000, 0, 600) == pytest.approx(0.001)


def test_unknown_cached_rate_only_matters_when_cached_tokens_were_reported():
    small = Catalog.from_dict(SMALL)
    assert small.cost("alpha", "half-known", 1000, 1000, 0) == pytest.approx(0.003)
    assert small.cost("alpha", "half-known", 1000, 1000, 10) is None


def test_long_context_rates_apply_to_the_whole_request_above_the_threshold():
    small = Catalog.from_dict(SMALL)
    assert small.cost("alpha", "tiered", 100, 10) == pytest.approx((100 * 0.001 + 10 * 0.002) / 1000)
    assert small.cost("alpha", "tiered", 101, 10) == pytest.approx((101 * 0.01 + 10 * 0.02) / 1000)


def test_cost_is_none_when_anything_needed_is_unknown():
    small = Catalog.from_dict(SMALL)
    assert small.cost("alpha", "missing", 10, 10) is None
    assert small.cost("alpha", "plain", None, 10) is None
    assert small.cost("alpha", "plain", 10, None) is None
    assert small.cost("alpha", "plain", 10, 10, 11) is None  # more cached than input
    assert small.cost("alpha", "plain", -1, 10) is None
    assert small.cost("beta", "b-model", 10, 10) is None  # capabilities copied, prices not


def test_local_model_costs_zero():
    small = Catalog.from_dict(SMALL)
    assert small.cost("alpha", "free", 12345, 678) == 0.0


def test_packaged_prices_compute_expected_costs(catalog):
    # gpt-4o: 2.50 / 1.25 cached / 10.00 USD per 1M
    assert catalog.cost("openai", "gpt-4o-2024-08-06", 10_000, 1_000, 4_000) == pytest.approx(
        (6_000 * 2.5 + 4_000 * 1.25 + 1_000 * 10.0) / 1_000_000
    )
    # Gemini 2.5 Pro above 200k prompt tokens: 2.50 / 15.00 USD per 1M
    assert catalog.cost("gemini", "gemini-2.5-pro", 300_000, 1_000) == pytest.approx(
        (300_000 * 2.5 + 1_000 * 15.0) / 1_000_000
    )
    assert catalog.cost("ollama", "llama3.1", 5_000, 5_000) == 0.0
    assert catalog.cost("bedrock", "us.amazon.nova-lite-v1:0", 10, 10) is None


# ----------------------------------------------------------------------------------------------
# Construction and overrides


def test_overrides_change_a_price_and_record_where_it_came_from(catalog):
    prices = {"cost_per_1k_input": 0.003, "cost_per_1k_output": 0.012}
    changed = catalog.with_overrides({"azure": {"gpt-4o": prices}})
    entry = changed.entry("azure", "gpt-4o")
    assert (entry.rates.input, entry.rates.output) == (0.003, 0.012)
    assert entry.source == "configuration override" and entry.source_date is None
    assert entry.context_window == 128000  # the rest of the entry is kept
    assert catalog.entry("azure", "gpt-4o").rates.input is None  # the original is unchanged


def test_overrides_add_models_and_aliases(catalog):
    spec = {"context_window": 8192, "local": True, "cost_per_1k_input": 0.0, "cost_per_1k_output": 0.0}
    changed = catalog.with_overrides(
        {
            "openai_compatible": {"my-llama": spec},
            "aliases": {"team-default": {"openai_compatible": "my-llama"}},
        }
    )
    assert changed.model("openai_compatible", "my-llama").context_window == 8192
    assert changed.providers_for("team-default") == ["openai_compatible"]
    assert changed.cost("openai_compatible", "my-llama", 100, 100) == 0.0


def test_overrides_by_alias_update_the_canonical_entry(catalog):
    changed = catalog.with_overrides({"anthropic": {"claude-sonnet-4-5": {"max_tokens": 1234}}})
    assert changed.entry("anthropic", "claude-sonnet-4-5-20250929").max_tokens == 1234
    assert changed.entry("anthropic", "claude-sonnet-4-5-20250929").rates.input == 0.003


def test_override_with_an_unknown_key_names_it_and_the_close_match(catalog):
    with pytest.raises(ConfigurationError) as info:
        catalog.with_overrides({"openai": {"gpt-4o": {"cost_per_1k_inptu": 1.0}}})
    message = str(info.value)
    assert "cost_per_1k_inptu" in message and "cost_per_1k_input" in message and "gpt-4o" in message


@pytest.mark.parametrize(
    "spec",
    [
        {"cost_per_1k_input": -1},
        {"cost_per_1k_input": "cheap"},
        {"cost_per_1k_output": "unknown"},
        {"context_window": 1.5},
        {"supports_vision": "yes"},
        {"source_date": "23/11/2026"},
        {"aliases": "x"},
        {"long_context": {"cost_per_1k_input": 1.0}},
        {"capabilities_from": "no-colon"},
    ],
)
def test_override_values_are_type_checked(catalog, spec):
    with pytest.raises(ConfigurationError):
        catalog.with_overrides({"openai": {"gpt-4o": spec}})


def test_capabilities_from_must_name_a_known_model_without_cycles():
    with pytest.raises(ConfigurationError, match="unknown model"):
        Catalog.from_dict({"a": {"m": {"capabilities_from": "a:nope"}}})
    with pytest.raises(ConfigurationError, match="cycle"):
        Catalog.from_dict({"a": {"m": {"capabilities_from": "a:n"}, "n": {"capabilities_from": "a:m"}}})


def test_from_dict_copies_capabilities_but_not_prices():
    small = Catalog.from_dict(SMALL)
    beta = small.entry("beta", "b-model")
    assert beta.context_window == 1000 and beta.supports_functions
    assert beta.rates.input is None and not beta.priced


# ----------------------------------------------------------------------------------------------
# provider_info


def test_provider_info_lists_the_catalog_models_of_the_type(catalog):
    info = catalog.provider_info("azure-east", "azure")
    assert isinstance(info, ProviderInfo)
    assert info.provider == "azure-east" and info.provider_type == "azure" and info.offline is False
    assert [m.name for m in info.models] == [m.name for m in catalog.models("azure")]


def test_provider_info_describes_the_models_a_deployment_names(catalog):
    given = ModelInfo(name="custom", context_window=42)
    info = catalog.provider_info("ollama", "ollama", offline=True, models=["llama3.1", "my-own:7b", given])
    by_name = {m.name: m for m in info.models}
    assert by_name["llama3.1"].context_window == 131072 and by_name["llama3.1"].cost_per_1k_input == 0.0
    assert by_name["my-own:7b"] == ModelInfo(name="my-own:7b")
    assert by_name["custom"] is given
    assert info.offline is True


def test_price_candidates_are_remembered_for_model_names_only() -> None:
    from gtl_nb.providers import catalog

    short = "gpt-4o-mini-2024-07-18"
    assert catalog._candidates(short) == catalog._candidates_of(short)
    assert catalog._candidates(short) is catalog._candidates(short)  # remembered
    long = "m" * 300 + "-2024-07-18"  # a gateway's caller chooses the name: not kept
    before = catalog._remembered_candidates.cache_info().currsize
    assert catalog._candidates(long) == (long, "m" * 300)
    assert catalog._remembered_candidates.cache_info().currsize == before
