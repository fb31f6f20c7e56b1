"""load_config: sources and precedence, the schema's error messages, credentials per provider.

Every test passes an explicit ``environ`` and a temporary ``home``: the real environment and the
real home directory are never read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gtl_nb.engine.config import (
    SECTION_SCHEMAS,
    Config,
    load_config,
    ollama_url,
    user_config_dir,
    user_config_path,
)
from gtl_nb.engine.http import Timeouts
from gtl_nb.protocol.errors import ConfigurationError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def load(home: Path, environ: dict[str, str] | None = None, **kwargs) -> Config:
    return load_config(environ=environ or {}, home=home, platform="linux", **kwargs)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# Defaults and implied deployments


def test_nothing_configured_gives_only_the_offline_echo_deployment(home):
    config = load(home)
    assert list(config.deployments) == ["echo"]
    assert config.deployments["echo"].type == "echo"
    assert config.source_path is None and config.implied == ("echo",)


def test_openai_key_alone_makes_openai_usable(home):
    config = load(home, {"OPENAI_API_KEY": "sk-env", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    openai = config.require_credentials("openai")
    assert (openai.type, openai.api_key, openai.base_url) == ("openai", "sk-env", "http://127.0.0.1:9/v1")
    assert set(config.deployments) == {"openai", "echo"}


def test_environment_implies_one_deployment_per_provider_type_present(home):
    config = load(
        home,
        {
            "AZURE_OPENAI_API_KEY": "az",
            "AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com",
            "OPENAI_API_VERSION": "2024-10-21",
            "ANTHROPIC_API_KEY": "ant",
            "GOOGLE_API_KEY": "goog",
            "OLLAMA_HOST": "0.0.0.0:11434",
            "AWS_ACCESS_KEY_ID": "AKID",
            "AWS_SECRET_ACCESS_KEY": "SECRET",
            "AWS_REGION": "us-west-2",
        },
    )
    assert set(config.deployments) == {"azure", "anthropic", "gemini", "ollama", "bedrock", "echo"}
    assert config.deployments["azure"].api_version == "2024-10-21"
    assert config.deployments["gemini"].api_key == "goog"
    assert config.deployments["ollama"].base_url == "http://0.0.0.0:11434"
    bedrock = config.require_credentials("bedrock")
    assert bedrock.aws_access_key_id == "AKID" and bedrock.aws_secret_access_key == "SECRET"
    assert bedrock.region == "us-west-2"


def test_azure_needs_both_key_and_endpoint_to_be_implied(home):
    assert "azure" not in load(home, {"AZURE_OPENAI_API_KEY": "az"}).deployments


def test_gemini_api_key_is_preferred_over_google_api_key(home):
    config = load(home, {"GEMINI_API_KEY": "gem", "GOOGLE_API_KEY": "goog"})
    assert config.deployments["gemini"].api_key == "gem"


def test_configured_deployments_turn_off_the_implied_ones(home):
    config = load(home, {"OPENAI_API_KEY": "sk"}, providers={"anthropic": {"api_key": "a"}})
    assert set(config.deployments) == {"anthropic", "echo"}


def test_sections_defined_here_come_back_with_every_documented_key(home):
    config = load(home)
    for section in ("ledger", "gateway", "defaults"):
        assert set(getattr(config, section)) == set(SECTION_SCHEMAS[section])
    assert config.ledger["enabled"] is True and config.gateway["shutdown_grace"] == 30.0
    assert config.timeouts == Timeouts(connect=10.0, first_byte=60.0, idle=60.0)
    # the engine modules that read these apply their own defaults
    assert config.routing == {} and config.cache == {} and config.budgets == {} and config.catalog == {}


def test_owned_sections_are_readable_by_their_engine_modules(home):
    from gtl_nb.engine.cache import CacheConfig
    from gtl_nb.engine.ratelimit import BudgetConfig
    from gtl_nb.engine.retry import RetryPolicy

    config = load(
        home,
        cache={"enabled": True, "ttl": 60},
        budgets={"usd_per_day": 5, "users": {"ann": {"usd_per_day": "unlimited"}}},
        routing={"strategy": "round_robin", "retry": {"max_attempts": 2}},
    )
    assert CacheConfig.from_dict(config.cache).ttl == 60
    assert BudgetConfig.from_dict(config.budgets).limits_for("ann").usd_per_day is None
    assert RetryPolicy.from_dict(config.routing["retry"]).max_attempts == 2


def test_deployment_weights_feed_the_routing_weights(home):
    config = load(
        home,
        providers={"a": {"type": "openai", "weight": 3}, "b": {"type": "openai", "weight": 1}},
        routing={"strategy": "weighted", "weights": {"b": 2}},
    )
    assert config.routing["weights"] == {"a": 3.0, "b": 2}  # the [routing] table wins
    assert config.weights == {"a": 3.0, "b": 2.0, "echo": 1.0}


# ----------------------------------------------------------------------------------------------
# Sources and precedence


def test_keyword_arguments_override_the_file_key_by_key(home, tmp_path):
    path = write(
        tmp_path / "gtl.toml",
        """
        [providers.openai]
        api_key = "from-file"
        base_url = "http://127.0.0.1:1/v1"

        [routing]
        strategy = "round_robin"

        [routing.retry]
        max_attempts = 4
        base_delay = 1.5
    """,
    )
    retry = {"retry": {"max_attempts": 1}}
    config = load(home, config=path, providers={"openai": {"api_key": "from-kwargs"}}, routing=retry)
    openai = config.deployments["openai"]
    assert openai.api_key == "from-kwargs" and openai.base_url == "http://127.0.0.1:1/v1"
    assert config.routing == {"strategy": "round_robin", "retry": {"max_attempts": 1, "base_delay": 1.5}}
    assert config.source_path == path


def test_the_file_overrides_the_environment_which_fills_what_is_missing(home, tmp_path):
    path = write(tmp_path / "gtl.toml", '[providers.anthropic]\nbase_url = "http://127.0.0.1:2"\n')
    env = {"ANTHROPIC_API_KEY": "env-key", "ANTHROPIC_BASE_URL": "http://env.invalid"}
    anthropic = load(home, env, config=path).deployments["anthropic"]
    assert anthropic.base_url == "http://127.0.0.1:2" and anthropic.api_key == "env-key"


def test_a_parsed_dict_is_accepted_as_the_file(home):
    config = load(home, config={"defaults": {"model": "gpt-4o"}, "providers": {"openai": {"api_key": "k"}}})
    assert config.defaults["model"] == "gpt-4o" and config.source_path is None


def test_the_type_defaults_to_the_deployment_name_and_names_can_repeat_a_type(home):
    config = load(
        home,
        providers={
            "azure-east": {"type": "azure", "api_key": "e", "base_url": "https://east.openai.azure.com"},
            "azure-west": {"type": "azure", "api_key": "w", "base_url": "https://west.openai.azure.com", "weight": 3},
            "openai": {"api_key": "o", "models": ["gpt-4o", "gpt-4o-mini"], "headers": {"OpenAI-Project": "p"}},
        },
    )
    assert config.deployments["azure-east"].type == config.deployments["azure-west"].type == "azure"
    assert config.deployments["openai"].type == "openai"
    assert config.deployments["openai"].models == ("gpt-4o", "gpt-4o-mini")
    assert config.deployments["openai"].headers == {"OpenAI-Project": "p"}
    assert config.weights["azure-west"] == 3.0 and config.weights["azure-east"] == 1.0


def test_config_file_is_found_through_the_environment_variable(home, tmp_path):
    path = write(tmp_path / "elsewhere.toml", '[defaults]\nmodel = "o3"\n')
    config = load(home, {"GTL_NB_CONFIG": str(path)})
    assert config.defaults["model"] == "o3" and config.source_path == path


def test_config_file_is_found_in_the_user_config_directory(home):
    write(home / ".config" / "gtl_nb" / "config.toml", '[defaults]\nmodel = "gemini-2.5-flash"\n')
    assert load(home).defaults["model"] == "gemini-2.5-flash"


def test_xdg_config_home_is_honoured(home, tmp_path):
    xdg = tmp_path / "xdg"
    write(xdg / "gtl_nb" / "config.toml", '[defaults]\nmodel = "mistral"\n')
    assert load(home, {"XDG_CONFIG_HOME": str(xdg)}).defaults["model"] == "mistral"


def test_a_missing_default_file_is_fine_but_a_named_one_is_an_error(home, tmp_path):
    assert load(home).source_path is None
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigurationError, match=r"nope\.toml"):
        load(home, config=missing)
    with pytest.raises(ConfigurationError, match=r"nope\.toml.*GTL_NB_CONFIG"):
        load(home, {"GTL_NB_CONFIG": str(missing)})


def test_invalid_toml_is_an_error_naming_the_file(home, tmp_path):
    path = write(tmp_path / "broken.toml", "[providers\n")
    with pytest.raises(ConfigurationError, match=r"broken\.toml"):
        load(home, config=path)


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("linux", {}, ".config/gtl_nb"),
        ("linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/gtl_nb"),
        ("linux", {"XDG_CONFIG_HOME": "relative"}, ".config/gtl_nb"),
        ("darwin", {}, "Library/Application Support/gtl_nb"),
        ("win32", {"APPDATA": "/appdata"}, "/appdata/gtl_nb"),
        ("win32", {}, "AppData/Roaming/gtl_nb"),
    ],
)
def test_user_config_dir_follows_the_platform_convention(home, platform, environ, expected):
    found = user_config_dir(environ=environ, home=home, platform=platform)
    want = Path(expected) if expected.startswith("/") else home / expected
    assert found == want
    assert user_config_path(environ=environ, home=home, platform=platform) == want / "config.toml"


# ----------------------------------------------------------------------------------------------
# Validation messages


def test_an_unknown_deployment_key_names_the_key_the_place_and_the_close_match(home, tmp_path):
    path = write(tmp_path / "gtl.toml", '[providers.openai]\napi_kye = "x"\n')
    with pytest.raises(ConfigurationError) as info:
        load(home, config=path)
    message = str(info.value)
    assert "'api_kye'" in message and "[providers.openai]" in message
    assert str(path) in message and "'api_key'" in message


@pytest.mark.parametrize(
    ("key", "new_home"),
    [("port", "[gateway.http]"), ("host", "[gateway.http]"), ("vault_path", "vault"), ("metrics", "metrics")],
)
def test_a_retired_gateway_key_says_what_replaced_it(home, key, new_home):
    with pytest.raises(ConfigurationError) as info:
        load(home, gateway={key: 1})
    message = str(info.value)
    assert f"[gateway] {key}" in message and "not a key any more" in message and new_home in message


@pytest.mark.parametrize(
    ("listener", "expected"),
    [({"tls_cert": "a.pem"}, "together"), ({"port": 70000}, "0..65535"), ({"insecure": "yes"}, "true or false")],
)
def test_listener_tables_are_checked_when_loaded(home, listener, expected):
    with pytest.raises(ConfigurationError, match=expected):
        load(home, gateway={"grpc": listener})


@pytest.mark.parametrize("name", [".example.com", "*.example.com", "*"])
def test_allowed_hosts_are_exact_names(home, name):
    with pytest.raises(ConfigurationError, match="matched exactly"):
        load(home, gateway={"allowed_hosts": [name]})


@pytest.mark.parametrize("name", ["http://devbox", "devbox:8787", "devbox/v1", "dev box", "", 5, "x" * 300])
def test_allowed_hosts_are_bare_host_names(home, name):
    with pytest.raises(ConfigurationError, match="host names only") as refused:
        load(home, gateway={"allowed_hosts": ["devbox", name]})
    assert "x" * 101 not in str(refused.value)  # a long value is quoted cut


def test_allowed_hosts_are_kept_as_dns_compares_them(home):
    from gtl_nb.engine.settings import Settings
    from gtl_nb.gateway.settings import GatewaySettings

    config = load(home, gateway={"allowed_hosts": ["DevBox.", "gateway.test"]})
    gateway = GatewaySettings.from_settings(Settings.from_config(config))
    assert gateway.allowed_hosts == {"devbox", "gateway.test"}


@pytest.mark.parametrize(
    ("sections", "key", "place", "suggestion"),
    [
        ({"routing": {"stratgy": "weighted"}}, "stratgy", "[routing]", "strategy"),
        ({"routing": {"retry": {"max_attemps": 3}}}, "max_attemps", "[routing.retry]", "max_attempts"),
        ({"routing": {"breaker": {"cooldwn": 3}}}, "cooldwn", "[routing.breaker]", "cooldown"),
        ({"cache": {"ttll": 3}}, "ttll", "[cache]", "ttl"),
        ({"budgets": {"usd_per_dya": 3}}, "usd_per_dya", "[budgets]", "usd_per_day"),
        ({"ledger": {"pth": "x"}}, "pth", "[ledger]", "path"),
        ({"gateway": {"idle_timout": 1}}, "idle_timout", "[gateway]", "idle_timeout"),
        ({"gateway": {"http": {"prot": 1}}}, "prot", "[gateway.http]", "port"),
    ],
)
def test_an_unknown_section_key_names_the_key_the_place_and_the_close_match(home, sections, key, place, suggestion):
    with pytest.raises(ConfigurationError) as info:
        load(home, **sections)
    message = str(info.value)
    assert repr(key) in message and place in message and "keyword arguments" in message
    assert repr(suggestion) in message


def test_an_unknown_key_in_an_owned_section_of_the_file_names_the_file(home, tmp_path):
    path = write(tmp_path / "gtl.toml", "[routing.retry]\nmax_attemps = 3\n")
    with pytest.raises(ConfigurationError) as info:
        load(home, config=path)
    assert "max_attemps" in str(info.value) and str(path) in str(info.value)


def test_an_unknown_top_level_section_is_an_error(home, tmp_path):
    path = write(tmp_path / "gtl.toml", "[routeing]\nretries = 1\n")
    with pytest.raises(ConfigurationError, match=r"'routeing'.*'routing'"):
        load(home, config=path)
    with pytest.raises(ConfigurationError, match=r"'budget'.*'budgets'"):
        load(home, budget={"daily_usd": 1})


@pytest.mark.parametrize(
    ("sections", "fragment"),
    [
        ({"routing": {"strategy": "random"}}, "random"),
        ({"routing": {"retry": {"max_attempts": "three"}}}, "max_attempts"),
        ({"routing": {"breaker": {"cooldown": -1}}}, "cooldown"),
        ({"routing": {"weights": {"a": -1}}}, "weights"),
        ({"cache": {"ttl": -5}}, "ttl"),
        ({"budgets": {"usd_per_day": "lots"}}, "usd_per_day"),
        ({"defaults": {"max_tokens": 1.5}}, "max_tokens"),
        ({"timeouts": {"idle": "soon"}}, "idle"),
        ({"timeouts": {"idle": True}}, "idle"),
        ({"budgets": {"users": {"ann": {"dayly_usd": 1}}}}, "dayly_usd"),
        ({"providers": {"openai": {"models": "gpt-4o"}}}, "models"),
        ({"providers": {"openai": {"headers": {"X": 1}}}}, "headers"),
        ({"providers": {"openai": "sk-key"}}, "providers.openai"),
        ({"catalog": {"openai": {"gpt-4o": {"cost_per_1k_inptu": 1}}}}, "cost_per_1k_inptu"),
    ],
)
def test_values_of_the_wrong_type_or_shape_are_rejected(home, sections, fragment):
    with pytest.raises(ConfigurationError, match=fragment):
        load(home, **sections)


def test_an_unknown_provider_type_suggests_the_close_ones(home):
    with pytest.raises(ConfigurationError, match=r"'antropic'.*'anthropic'"):
        load(home, providers={"claude": {"type": "antropic"}})
    with pytest.raises(ConfigurationError, match=r"\[providers.azure-east\] needs a type.*'azure'"):
        load(home, providers={"azure-east": {"api_key": "k"}})


def test_plugin_provider_types_are_accepted_when_known(home):
    providers = {"mine": {"type": "acme", "options": {"flavour": "x"}}}
    config = load(home, providers=providers, known_types=["acme"])
    mine = config.deployments["mine"]
    assert mine.type == "acme" and mine.options == {"flavour": "x"}
    config.require_credentials("mine")  # a plugin's needs are its own business


# ----------------------------------------------------------------------------------------------
# Timeouts


def test_timeouts_can_be_changed_disabled_and_set_per_deployment(home):
    config = load(
        home,
        timeouts={"connect": 5, "idle": False},
        providers={"ollama": {"timeouts": {"first_byte": 300}}},
    )
    assert config.timeouts == Timeouts(connect=5.0, first_byte=60.0, idle=None)
    assert config.deployment_timeouts["ollama"] == Timeouts(connect=5.0, first_byte=300.0, idle=None)
    assert load(home, timeouts=Timeouts(connect=1.0, first_byte=2.0, idle=3.0)).timeouts.idle == 3.0


# ----------------------------------------------------------------------------------------------
# Credentials


def test_missing_key_error_names_the_variable_and_the_toml_key(home):
    config = load(home, providers={"openai": {}, "anthropic": {}, "azure": {"api_key": "k"}})
    with pytest.raises(ConfigurationError) as info:
        config.require_credentials("openai")
    assert "OPENAI_API_KEY" in str(info.value) and "api_key" in str(info.value)
    assert "[providers.openai]" in str(info.value)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        config.require_credentials("anthropic")
    with pytest.raises(ConfigurationError, match="AZURE_OPENAI_ENDPOINT"):
        config.require_credentials("azure")


def test_keyless_provider_types_need_no_credentials(home):
    config = load(home, providers={"ollama": {}, "local": {"type": "openai_compatible", "base_url": "http://x"}})
    for name in ("ollama", "local", "echo"):
        assert config.require_credentials(name).name == name


def test_api_key_env_names_the_variable_holding_the_key(home):
    providers = {"team": {"type": "openai", "api_key_env": "TEAM_OPENAI_KEY"}}
    config = load(home, {"TEAM_OPENAI_KEY": "sk-team", "OPENAI_API_KEY": "sk-default"}, providers=providers)
    assert config.deployments["team"].api_key == "sk-team"
    missing = load(home, {"OPENAI_API_KEY": "sk-default"}, providers=providers)
    assert missing.deployments["team"].api_key is None  # never silently another account's key
    with pytest.raises(ConfigurationError, match="TEAM_OPENAI_KEY"):
        missing.require_credentials("team")


def test_unknown_deployment_name_suggests_configured_ones(home):
    config = load(home, providers={"openai": {"api_key": "k"}})
    with pytest.raises(ConfigurationError, match=r"'opnai'.*'openai'"):
        config.deployment("opnai")


def test_secrets_never_appear_in_the_repr(home):
    config = load(
        home,
        {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "AKID"},
        providers={"openai": {"api_key": "sk-very-secret"}, "bedrock": {"region": "us-east-1"}},
    )
    text = repr(config)
    assert "sk-very-secret" not in text and "s3cr3t" not in text and "AKID" not in text


# ----------------------------------------------------------------------------------------------
# Bedrock and the AWS chain


AWS_CREDENTIALS = """
[default]
aws_access_key_id = DEFAULTID
aws_secret_access_key = DEFAULTSECRET

[work]
aws_access_key_id = WORKID
aws_secret_access_key = WORKSECRET
aws_session_token = WORKTOKEN
"""

AWS_CONFIG = """
[default]
region = eu-west-1

[profile work]
region = us-east-2
"""


def aws_home(home: Path) -> Path:
    write(home / ".aws" / "credentials", AWS_CREDENTIALS)
    write(home / ".aws" / "config", AWS_CONFIG)
    return home


def test_bedrock_reads_the_shared_credentials_file_for_the_default_profile(home):
    bedrock = load(aws_home(home), providers={"bedrock": {}}).require_credentials("bedrock")
    assert (bedrock.aws_access_key_id, bedrock.aws_secret_access_key) == ("DEFAULTID", "DEFAULTSECRET")
    assert bedrock.region == "eu-west-1"


def test_aws_profile_selects_the_profile_and_its_region(home):
    bedrock = load(aws_home(home), {"AWS_PROFILE": "work"}).require_credentials("bedrock")
    assert (bedrock.aws_access_key_id, bedrock.aws_session_token) == ("WORKID", "WORKTOKEN")
    assert bedrock.region == "us-east-2"


def test_environment_keys_come_before_the_shared_file_and_region_variables_before_the_config(home):
    env = {"AWS_ACCESS_KEY_ID": "ENVID", "AWS_SECRET_ACCESS_KEY": "ENVSECRET", "AWS_DEFAULT_REGION": "ap-south-1"}
    bedrock = load(aws_home(home), env, providers={"bedrock": {}}).deployments["bedrock"]
    assert (bedrock.aws_access_key_id, bedrock.region) == ("ENVID", "ap-south-1")


def test_an_explicit_aws_profile_wins_over_environment_keys(home):
    env = {"AWS_ACCESS_KEY_ID": "ENVID", "AWS_SECRET_ACCESS_KEY": "ENVSECRET"}
    bedrock = load(aws_home(home), env, providers={"bedrock": {"aws_profile": "work"}}).deployments["bedrock"]
    assert bedrock.aws_access_key_id == "WORKID" and bedrock.region == "us-east-2"


def test_explicit_keys_in_the_deployment_win_over_everything(home):
    spec = {"aws_access_key_id": "CFGID", "aws_secret_access_key": "CFGSECRET", "region": "sa-east-1"}
    env = {"AWS_ACCESS_KEY_ID": "ENVID", "AWS_SECRET_ACCESS_KEY": "ENVSECRET", "AWS_REGION": "us-west-1"}
    bedrock = load(aws_home(home), env, providers={"bedrock": spec}).deployments["bedrock"]
    assert (bedrock.aws_access_key_id, bedrock.region) == ("CFGID", "sa-east-1")


def test_shared_file_locations_follow_the_aws_variables(home, tmp_path):
    write(tmp_path / "creds.ini", "[default]\naws_access_key_id = X\naws_secret_access_key = Y\n")
    write(tmp_path / "conf.ini", "[default]\nregion = ca-central-1\n")
    env = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "creds.ini"),
        "AWS_CONFIG_FILE": str(tmp_path / "conf.ini"),
    }
    bedrock = load(home, env, providers={"bedrock": {}}).require_credentials("bedrock")
    assert (bedrock.aws_access_key_id, bedrock.region) == ("X", "ca-central-1")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[default]\naws_access_key_id = AKIDCANARY\naws_secret_access_key SECRETCANARY/K7MDENG\n", r"line 3 "),
        ("aws_secret_access_key = SECRETCANARY/K7MDENG\n[default]\n", r"line 1 comes before any \[section\]"),
        ("[default]\naws_secret_access_key = SECRETCANARY\naws_secret_access_key = SECRETCANARY2\n", r"line 3 sets"),
        ("[default]\nregion = x\n[default]\naws_secret_access_key = SECRETCANARY\n", r"line 3 repeats"),
    ],
)
def test_a_malformed_aws_file_is_refused_by_line_number_without_quoting_the_line(home, tmp_path, text, where):
    # configparser's own message quotes the offending line: in ~/.aws/credentials, a secret key
    write(tmp_path / "creds.ini", text)
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "creds.ini"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    with pytest.raises(ConfigurationError, match=where) as refused:
        load(home, env, providers={"bedrock": {"region": "us-east-1"}}).require_credentials("bedrock")
    assert "creds.ini" in str(refused.value)
    assert "CANARY" not in str(refused.value)


def test_an_aws_file_that_is_not_utf8_is_refused_by_position(home, tmp_path):
    (tmp_path / "creds.ini").write_bytes(b"[default]\naws_secret_access_key = \xffCANARY\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "creds.ini"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    with pytest.raises(ConfigurationError, match=r"byte 34 is not UTF-8") as refused:
        load(home, env, providers={"bedrock": {"region": "us-east-1"}}).require_credentials("bedrock")
    assert "CANARY" not in str(refused.value)


def test_bedrock_api_key_is_read_from_the_bearer_token_variable(home):
    config = load(home, {"AWS_BEARER_TOKEN_BEDROCK": "bedrock-key", "AWS_REGION": "us-east-1"})
    assert config.require_credentials("bedrock").api_key == "bedrock-key"


def test_a_profile_without_static_keys_explains_why(home):
    write(home / ".aws" / "config", "[profile sso]\nsso_start_url = https://x\nregion = us-east-1\n")
    config = load(home, {"AWS_PROFILE": "sso"})
    with pytest.raises(ConfigurationError, match=r"AWS_ACCESS_KEY_ID.*'sso'.*SSO"):
        config.require_credentials("bedrock")


def test_bedrock_without_a_region_asks_for_one(home):
    config = load(home, providers={"bedrock": {"aws_access_key_id": "a", "aws_secret_access_key": "b"}})
    with pytest.raises(ConfigurationError, match=r"region.*AWS_REGION"):
        config.require_credentials("bedrock")


# ----------------------------------------------------------------------------------------------
# Ollama host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", "http://localhost:11434"),
        ("0.0.0.0:11434", "http://0.0.0.0:11434"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://ollama.example.com", "https://ollama.example.com:443"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("http://host:1234/prefix", "http://host:1234/prefix"),
    ],
)
def test_ollama_host_accepts_what_ollama_accepts(value, expected):
    assert ollama_url(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":11434", "http://127.0.0.1:11434"),  # no host: this machine, as Ollama's own command reaches it
        (":8080", "http://127.0.0.1:8080"),
        ("::1", "http://[::1]:11434"),  # an IPv6 address alone takes the default port
        ("[::1]", "http://[::1]:11434"),
        ("[::1]:8080", "http://[::1]:8080"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("[0:0:0:0:0:0:0:1]:11434", "http://[::1]:11434"),
        ("fd00::2", "http://[fd00::2]:11434"),
        ("http://gpu-box", "http://gpu-box:80"),  # a scheme without a port: the scheme's port, as Ollama says
        ("HTTPS://gpu-box/ollama/", "https://gpu-box:443/ollama"),
        ("ollama.com", "https://ollama.com:443"),  # Ollama's shorthand for its cloud
        ("gpu-box:", "http://gpu-box:11434"),  # an empty port is the default one
        ("  gpu_box.lan:9000  ", "http://gpu_box.lan:9000"),
    ],
)
def test_ollama_host_reads_ports_and_ipv6_as_ollama_does(value, expected):
    assert ollama_url(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("ftp://gpu-box", "Ollama is reached over http:// or https://, not 'ftp'"),
        ("unix:///run/ollama.sock", "Ollama is reached over http:// or https://, not 'unix'"),
        ("gpu-box:abc", "the port is a number from 1 to 65535, not 'abc'"),
        ("gpu-box:70000", "the port is a number from 1 to 65535, not '70000'"),
        ("gpu-box:0", "the port is a number from 1 to 65535, not '0'"),
        ("::1:11434", "an IPv6 address with a port is written in brackets ([::1]:11434), not '::1:11434'"),
        ("[::1", "an IPv6 address is written in brackets, then an optional :port ([::1]:11434), not '[::1'"),
        ("[::1]11434", "an IPv6 address is written in brackets, then an optional :port"),
        ("[gpu-box]:11434", "'[gpu-box]:11434' holds no IPv6 address between its brackets"),
        ("gpu box", "Ollama's host is host, host:port, :port, [IPv6]:port or http(s)://host:port, not 'gpu box'"),
    ],
)
def test_ollama_host_refuses_what_ollama_cannot_reach_and_says_what_it_takes(value, says):
    with pytest.raises(ConfigurationError) as refused:
        ollama_url(value)
    assert str(refused.value).startswith(f"OLLAMA_HOST: {says}"), refused.value


def test_a_bad_ollama_host_is_refused_at_load_naming_its_source(home):
    assert load(home, {"OLLAMA_HOST": "::1"}).deployments["ollama"].base_url == "http://[::1]:11434"
    with pytest.raises(ConfigurationError, match=r"^\$OLLAMA_HOST: an IPv6 address with a port is written in brackets"):
        load(home, {"OLLAMA_HOST": "::1:11434"})
    with pytest.raises(ConfigurationError, match=r"^base_url in \[providers\.local\]: the port is a number"):
        load(home, providers={"local": {"type": "ollama", "base_url": "gpu-box:port"}})


def test_a_long_ollama_host_is_read_in_one_pass_and_quoted_short():
    """Every step is a plain string operation: a hostile value of a million colons or brackets is
    refused at once, and the message quotes only its beginning."""
    for hostile in (":" * 1_000_000, "[" * 1_000_000, "[::1]" + ":" * 1_000_000, "a" * 1_000_000 + ":x"):
        with pytest.raises(ConfigurationError) as refused:
            ollama_url(hostile)
        assert len(str(refused.value)) < 300, str(refused.value)[:300]


def test_ollama_base_url_in_the_file_is_normalised_too(home):
    config = load(home, providers={"ollama": {"base_url": "gpu-box"}})
    assert config.deployments["ollama"].base_url == "http://gpu-box:11434"


@pytest.mark.parametrize(
    ("providers", "environ", "source", "said"),
    [
        (
            {"proxy": {"type": "openai", "base_url": "http://u:pw-CANARY@127.0.0.1:9/v1"}},
            {},
            "base_url in [providers.proxy]",
            "carries credentials",
        ),
        ({}, {"OPENAI_BASE_URL": "https://:pw-CANARY@api.example.com/v1"}, "$OPENAI_BASE_URL", "carries credentials"),
        (
            {"local": {"type": "openai", "base_url": "localhost:8000/v1"}},
            {},
            "base_url in [providers.local]",
            "http://",
        ),
        (
            {"bad": {"type": "anthropic", "base_url": "http://127.0.0.1:99999"}},
            {},
            "base_url in [providers.bad]",
            "port",
        ),
    ],
)
def test_a_base_url_no_request_could_be_sent_to_is_refused_when_the_configuration_loads(
    home, providers, environ, source, said
):
    """Every request to such a deployment failed as the caller's mistake (a 400 behind a gateway), with
    no failover and no breaker; now the configuration says so, naming where the URL came from, never it."""
    with pytest.raises(ConfigurationError) as refused:
        load(home, dict(environ, OPENAI_API_KEY="k"), providers=providers)
    assert source in str(refused.value) and said in str(refused.value)
    assert "CANARY" not in str(refused.value)


def test_defaults_whose_effort_and_budget_disagree_are_refused_when_they_load(home):
    """Loaded, they made every request fail as the caller's mistake; now the configuration says so."""
    from gtl_nb.engine.settings import load_settings

    with pytest.raises(ConfigurationError, match=r"\[defaults\] reasoning_effort 'none' and reasoning_budget 4096"):
        load_settings(environ={}, home=home, defaults={"reasoning_effort": "none", "reasoning_budget": 4096})
    agreed = load_settings(environ={}, home=home, defaults={"reasoning_effort": "high", "reasoning_budget": 4096})
    assert (agreed.defaults.reasoning_effort, agreed.defaults.reasoning_budget) == ("high", 4096)


def test_an_empty_or_padded_base_url_and_any_ollama_host_still_load(home):
    """An empty ``base_url`` is the provider's default (as every dialect reads it), surrounding whitespace
    is no part of the URL, and Ollama's host is read as Ollama reads ``OLLAMA_HOST``: none of them is
    refused, so a configuration that only implies Ollama never stops everything else loading."""
    config = load(home, {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "", "OLLAMA_HOST": ":11434"})
    assert config.deployments["openai"].base_url is None and "ollama" in config.deployments
    padded = load(home, {"OPENAI_API_KEY": "k"}, providers={"openai": {"base_url": " http://127.0.0.1:9/v1\n"}})
    assert padded.deployments["openai"].base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ConfigurationError, match="carries credentials") as refused:
        load(home, {"OLLAMA_HOST": "http://u:pw-CANARY@gpu-box:11434"})
    assert "CANARY" not in str(refused.value)


# ----------------------------------------------------------------------------------------------
# Documentation


def test_every_toml_example_in_the_configuration_guide_is_valid(home):
    guide = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    blocks = guide.read_text(encoding="utf-8").split("```toml")[1:]
    assert len(blocks) >= 5
    for block in blocks:
        text = block.split("```")[0]
        data = tomllib.loads(text)
        config = load(home, config=data)
        assert isinstance(config, Config)


@pytest.mark.parametrize(
    "value, message",
    [
        ("nan", "finite number"),
        ("-inf", "finite number"),
        ("1979-05-27T07:32:00Z", "datetime"),
        ("[1, {a = inf}]", "finite number"),
    ],
)
def test_provider_options_must_be_plain_json_as_they_go_into_request_bodies(home, tmp_path, value, message):
    path = write(
        tmp_path / "gtl.toml",
        f'[providers.o]\ntype = "openai"\napi_key = "k"\noptions = {{ extra_body = {{ seed = {value} }} }}\n',
    )
    with pytest.raises(ConfigurationError, match=rf"extra_body\.seed.*{message}"):
        load(home, config=path)
    options = 'options = { extra_body = { seed = 7, stop = ["x"], deep = { t = 0.5, n = "s", b = true } } }'
    fine = write(tmp_path / "fine.toml", f'[providers.o]\ntype = "openai"\napi_key = "k"\n{options}\n')
    assert load(home, config=fine).deployments["o"].options["extra_body"]["seed"] == 7


def test_a_files_relative_sqlite_paths_start_at_its_folder(home, tmp_path, monkeypatch):
    folder = tmp_path / "team 100%"  # a space and a percent sign: the URL's path is %-encoded
    write(
        folder / "gtl.toml",
        '[ledger]\npath = "data/usage.sqlite"\n'
        '[cache]\nbackend = "sqlite:///cache.sqlite"\n'
        '[budgets]\nbackend = "sqlite:////absolute/budgets.sqlite"\n'
        '[routing.breaker]\nbackend = "memory://"\n',
    )
    monkeypatch.chdir(tmp_path)  # where the process starts moves nothing
    loaded = load(home, config="team 100%/gtl.toml")
    assert loaded.ledger["path"] == str(folder / "data" / "usage.sqlite")
    assert loaded.cache["backend"] == f"sqlite:///{str(folder).replace('%', '%25').replace(' ', '%20')}/cache.sqlite"
    from gtl_nb.engine.stores.urls import parse_store_url

    assert parse_store_url(loaded.cache["backend"]).path == folder / "cache.sqlite"
    assert loaded.budgets["backend"] == "sqlite:////absolute/budgets.sqlite"  # absolute: as written
    assert loaded.routing["breaker"]["backend"] == "memory://"
    url_config = write(folder / "url.toml", '[ledger]\nurl = "sqlite:///usage.sqlite"\n')
    assert parse_store_url(load(home, config=url_config).ledger["url"]).path == folder / "usage.sqlite"


@pytest.mark.parametrize("path", ["~/usage.sqlite", ":memory:", "/var/lib/gtl/usage.sqlite"])
def test_home_memory_and_absolute_ledger_paths_are_kept(home, tmp_path, path):
    config = write(tmp_path / "gtl.toml", f'[ledger]\npath = "{path}"\n')
    assert load(home, config=config).ledger["path"] == path


def test_paths_given_as_arguments_stay_relative_to_the_working_directory(home, tmp_path):
    config = write(tmp_path / "conf" / "gtl.toml", '[ledger]\npath = "from-file.sqlite"\n')
    assert load(home, config=config, ledger={"path": "mine.sqlite"}).ledger["path"] == "mine.sqlite"
    assert load(home, config={"ledger": {"path": "dict.sqlite"}}).ledger["path"] == "dict.sqlite"  # no file: no folder


@pytest.mark.parametrize(
    "url",
    ["sqlite:///C:/data/usage.sqlite", "sqlite:///:memory:", "sqlite:////var/lib/usage.sqlite", "memory://"],
)
def test_absolute_and_memory_store_urls_in_a_file_are_kept(home, tmp_path, url):
    config = write(tmp_path / "gtl.toml", f'[ledger]\nurl = "{url}"\n')
    loaded = load(home, config=config).ledger["url"]
    import sys

    if url.startswith("sqlite:///C:") and sys.platform != "win32":
        assert loaded.endswith("/C:/data/usage.sqlite")  # relative here; on Windows an absolute path, kept
    else:
        assert loaded == url


def test_a_store_urls_scheme_case_does_not_matter(home, tmp_path):
    config = write(tmp_path / "gtl.toml", '[cache]\nbackend = "SQLITE:///cache.sqlite"\n')
    assert load(home, config=config).cache["backend"].endswith(f"{tmp_path}/cache.sqlite")


def test_a_file_named_through_dot_dot_anchors_at_its_folder_without_it(home, tmp_path, monkeypatch):
    write(tmp_path / "cfg" / "gtl.toml", '[ledger]\npath = "u.sqlite"\n')
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert load(home, config="../cfg/gtl.toml").ledger["path"] == str(tmp_path / "cfg" / "u.sqlite")


def test_a_provider_option_of_no_json_type_is_named_with_its_article(home):
    providers = {"o": {"type": "openai", "api_key": "k", "options": {"extra_body": {"seed": object()}}}}
    with pytest.raises(ConfigurationError, match=r"extra_body\.seed is an object: a provider option must be"):
        load(home, providers=providers)


def test_a_gateway_section_that_is_no_table_is_named_with_its_article(home):
    with pytest.raises(ConfigurationError, match=r"audit must be a table, not an int$"):
        load(home, config={"gateway": {"audit": 7}})


@pytest.mark.parametrize("key", ["write_timeout", "header_timeout", "idle_timeout", "shutdown_grace"])
def test_a_number_setting_of_nan_is_refused(home, tmp_path, key):
    """TOML's ``nan`` passed every bound (each comparison with it is false): ``write_timeout = nan``
    silently switched the bound off."""
    path = write(tmp_path / "gtl.toml", f"[gateway]\n{key} = nan\n")
    with pytest.raises(ConfigurationError, match=rf"{key} must be a number, got nan"):
        load(home, config=path)
