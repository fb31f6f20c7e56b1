"""Credentials are checked when configured: whitespace around a key is removed with a warning that
names where it came from; a key that cannot go in an HTTP header is a configuration error that names
its source and never quotes it."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine import routing
from gtl_nb.engine.config import CredentialWhitespaceWarning, load_config
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.providers import registry
from gtl_nb.providers.base import API_KEY, ProviderNeeds

CANARY = "sk-canary-credential-7f3e9a"


def test_a_trailing_newline_is_removed_with_a_warning_naming_the_variable():
    with pytest.warns(CredentialWhitespaceWarning, match=r"\$OPENAI_API_KEY") as caught:
        config = load_config(environ={"OPENAI_API_KEY": CANARY + "\n"}, config={})
    assert config.deployments["openai"].api_key == CANARY
    assert CANARY not in str(caught[0].message)


@pytest.mark.parametrize(
    "kwargs, environ, source",
    [
        ({"providers": {"openai": {"api_key": f"  {CANARY}\r\n"}}}, {}, "api_key in [providers.openai]"),
        (
            {"config": {"providers": {"team": {"type": "anthropic", "api_key_env": "TEAM_KEY"}}}},
            {"TEAM_KEY": f"\t{CANARY}\n"},
            "$TEAM_KEY (named by api_key_env in [providers.team])",
        ),
        (
            {"providers": {"bedrock": {"region": "us-east-1"}}},
            {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE1234567\n", "AWS_SECRET_ACCESS_KEY": f"{CANARY}\n"},
            "$AWS_ACCESS_KEY_ID",
        ),
    ],
    ids=["keyword", "api_key_env", "aws"],
)
def test_each_source_is_named_in_the_warning(kwargs, environ, source):
    with pytest.warns(CredentialWhitespaceWarning) as caught:
        config = load_config(environ=environ, **kwargs)
    messages = [str(w.message) for w in caught]
    assert any(source in message for message in messages), messages
    assert not any(CANARY in message for message in messages)
    deployment = next(iter(config.deployments.values()))
    secrets = [deployment.api_key, deployment.aws_secret_access_key, deployment.aws_access_key_id]
    assert all(value is None or value == value.strip() for value in secrets)


@pytest.mark.parametrize(
    "bad, kind",
    [
        (CANARY + "é", "a non-ASCII character"),
        ("\u200b" + CANARY, "a non-ASCII character"),  # a zero-width space pasted from a web page
        (CANARY[:5] + "\n" + CANARY[5:], "a control character"),
        (CANARY + "\x00", "a control character"),
    ],
)
@pytest.mark.parametrize("via", ["keyword", "environment", "header"])
def test_a_key_that_cannot_be_a_header_is_a_configuration_error_that_never_quotes_it(bad, kind, via, caplog):
    if via == "keyword":
        arguments, environ, source = {"providers": {"openai": {"api_key": bad}}}, {}, "api_key in [providers.openai]"
    elif via == "environment":
        arguments, environ, source = {}, {"ANTHROPIC_API_KEY": bad}, "$ANTHROPIC_API_KEY"
    else:
        headers = {"x-api-key": bad}
        arguments = {
            "providers": {"local": {"type": "openai_compatible", "base_url": "http://127.0.0.1:9", "headers": headers}}
        }
        environ, source = {}, "header 'x-api-key' in [providers.local]"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CredentialWhitespaceWarning)
        with pytest.raises(ConfigurationError) as caught:
            gtl_nb.connect(ledger=False, environ=environ, **arguments)
    message = str(caught.value)
    assert source in message and kind in message and "HTTP header" in message
    assert "canary" not in message and "canary" not in repr(caught.value.args) and "canary" not in caplog.text


def test_a_stripped_key_works_against_the_simulator_and_nothing_leaks(caplog):
    with sim.running("openai", api_key=CANARY) as url:
        with pytest.warns(CredentialWhitespaceWarning):
            client = gtl_nb.connect(providers={"openai": {"api_key": CANARY + "\n", "base_url": url}}, ledger=False)
        with client:
            answer = client.complete("gpt-4o-mini", "hello")
    assert answer.text
    assert CANARY not in repr(client.config) and CANARY not in caplog.text


def test_a_rotated_key_in_the_environment_needs_no_restart(monkeypatch):
    # the credential resolver reads the environment again at request time
    monkeypatch.setenv("OPENAI_API_KEY", "sk-old-rotated-away")
    with sim.serve("openai", api_key="sk-new-after-rotation") as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        with gtl_nb.connect(ledger=False) as client:
            with pytest.raises(gtl_nb.protocol.AuthenticationError):
                client.complete("gpt-4o-mini", "hello")
            monkeypatch.setenv("OPENAI_API_KEY", "sk-new-after-rotation")
            assert client.complete("gpt-4o-mini", "hello").text
    assert [r.headers["authorization"] for r in s.requests] == [
        "Bearer sk-old-rotated-away",
        "Bearer sk-new-after-rotation",
    ]


class AcmeDialect:
    """A plugin's dialect: it declares what it needs, and the configuration uses that."""

    name = "needs_demo"
    needs = ProviderNeeds(
        env={"api_key": ("ACME_API_KEY",), "base_url": ("ACME_URL",)},
        requires=(API_KEY,),
        implied_by=(("ACME_API_KEY",),),
    )


def test_a_plugin_declares_its_needs_and_takes_part_in_hints_and_checks(monkeypatch):
    monkeypatch.setitem(registry._instances, "needs_demo", AcmeDialect())  # gone after the test
    env = {"ACME_API_KEY": "acme-key", "ACME_URL": "http://127.0.0.1:9"}
    implied = load_config(environ=env, known_types=["needs_demo"])
    assert "needs_demo" in implied.implied and implied.deployments["needs_demo"].api_key == "acme-key"
    assert implied.deployments["needs_demo"].base_url == "http://127.0.0.1:9"
    keyless = load_config(providers={"needs_demo": {}}, environ={}, known_types=["needs_demo"])
    with pytest.raises(ConfigurationError, match=r"missing api_key: set ACME_API_KEY, or api_key \(or api_key_env\)"):
        keyless.require_credentials("needs_demo")
    assert routing.credential_hint("needs_demo") == "ACME_API_KEY"


def test_a_configuration_file_nested_without_end_is_a_configuration_error(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("[routing]\nweights = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(ConfigurationError, match="deeper than 32 levels"):
        load_config(config=deep, environ={})
    huge = tmp_path / "huge.toml"
    huge.write_text("# " + "x" * (5 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigurationError, match="larger than"):
        load_config(config=huge, environ={})


def test_an_azure_deployment_by_entra_token_and_resource_name_lacks_nothing():
    # the dialect sends options.azure_ad_token for the key and builds the URL from options.resource
    from gtl_nb.engine.config import missing_credentials
    from gtl_nb.providers.base import Deployment

    entra = Deployment(name="az", type="azure", options={"azure_ad_token": "eyJ0", "resource": "r"})
    assert missing_credentials(entra) == []
    config = load_config(
        providers={"az": {"type": "azure", "options": {"azure_ad_token": "eyJ0", "resource": "r"}}}, environ={}
    )
    assert config.require_credentials("az").options["resource"] == "r"
    bare = Deployment(name="az", type="azure")
    assert missing_credentials(bare) == ["api_key", "base_url"]
    with pytest.raises(ConfigurationError, match="AZURE_OPENAI_API_KEY"):
        load_config(providers={"az": {"type": "azure"}}, environ={}).require_credentials("az")


@pytest.mark.parametrize(
    "spec",
    [
        {"api_key": [CANARY]},
        {"api_key": {"value": CANARY}},
        {"api_key_env": [CANARY]},
        {"aws_secret_access_key": [CANARY]},
        {"aws_session_token": {"token": CANARY}},
        {"headers": {"X-Api-Key": [CANARY]}},
        {"headers": f"Authorization: Bearer {CANARY}"},
    ],
)
def test_a_secret_of_the_wrong_type_is_named_by_its_kind_never_quoted(spec):
    """``api_key = ["sk-…"]`` was refused with "api_key must be a string, got ['sk-…']": the key itself in
    an error that reaches logs and terminals. A secret-bearing setting's error tells its kind instead."""
    with pytest.raises(ConfigurationError) as caught:
        load_config(environ={}, config={"providers": {"team": {"type": "openai", **spec}}})
    assert CANARY not in caught.value.message
    assert "got a " in caught.value.message or "holds a list" in caught.value.message


def test_a_key_pasted_for_the_name_of_its_variable_is_not_quoted_as_one():
    """``api_key_env = "sk-proj-…"`` (the key, not its variable) gave "names $sk-proj-…, which is not set"."""
    config = load_config(environ={}, config={"providers": {"team": {"type": "openai", "api_key_env": CANARY}}})
    with pytest.raises(ConfigurationError, match="may be the key itself") as caught:
        config.require_credentials("team")
    assert CANARY not in caught.value.message
    named = load_config(environ={}, config={"providers": {"team": {"type": "openai", "api_key_env": "TEAM_KEY"}}})
    with pytest.raises(ConfigurationError, match=r"names \$TEAM_KEY, which is not set"):
        named.require_credentials("team")  # a variable's name is still told


@pytest.mark.parametrize(
    "config",
    [
        {"ledger": {"url": [f"postgresql://gtl:{CANARY}@db.internal/gtl"]}},
        {"cache": {"backend": [f"redis://:{CANARY}@cache.internal/0"]}},
        {"budgets": {"backend": [f"redis://:{CANARY}@cache.internal/0"]}},
        {"routing": {"breaker": {"backend": {"url": f"redis://:{CANARY}@cache.internal/0"}}}},
    ],
)
def test_a_store_url_of_the_wrong_type_is_named_by_its_kind_never_quoted(config):
    """A store URL may hold its database's password: put in a list by mistake, it was quoted whole."""
    with pytest.raises(ConfigurationError) as caught:
        load_config(environ={}, config=config)
    assert CANARY not in caught.value.message and "got a " in caught.value.message


def test_a_missing_key_named_by_api_key_env_is_asked_of_that_variable_never_the_conventional_one():
    """``api_key_env = "TEAM_OPENAI_KEY"`` unset: the warning ``gtl serve`` prints said "set OPENAI_API_KEY",
    a variable that is never read for this deployment (api_key_env puts it out of use)."""
    from gtl_nb.engine.settings import load_settings

    providers = {"openai-team": {"type": "openai", "api_key_env": "TEAM_OPENAI_KEY"}}
    (problem,) = load_settings(providers=providers, environ={"OPENAI_API_KEY": "sk-unused"}).missing_credentials()
    assert "TEAM_OPENAI_KEY" in problem and "set OPENAI_API_KEY" not in problem
    assert "api_key in [providers.openai-team]" in problem and "OPENAI_API_KEY is not read in its place" in problem
    # set when the configuration loaded, unset since (a rotation gone wrong): still that variable
    settings = load_settings(providers=providers, environ={"TEAM_OPENAI_KEY": "sk-team"})
    keyless = dataclasses.replace(settings.deployments["openai-team"], api_key=None)
    (problem,) = settings.missing_credentials(lambda d: keyless if d.name == "openai-team" else d)
    assert "$TEAM_OPENAI_KEY" in problem and "set OPENAI_API_KEY" not in problem
    # without api_key_env the conventional variable is still the advice
    (plain,) = load_settings(providers={"team": {"type": "openai"}}, environ={}).missing_credentials()
    assert "set OPENAI_API_KEY, or api_key (or api_key_env) in [providers.team]" in plain
