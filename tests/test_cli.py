"""The ``gtl`` command, run as a real subprocess where it matters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import gtl_nb
from gtl_nb.cli import build_parser, main


def gtl(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GTL_NB_CONFIG": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb", *args], capture_output=True, text=True, env=env, input=stdin, timeout=60
    )


def test_complete_streams_to_the_terminal_with_a_footer():
    result = gtl("complete", "hello terminal", "--model", "echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('You said: "hello terminal"')
    assert "echo (offline)" in result.stdout.splitlines()[-1]


def test_complete_json_prints_every_event_as_a_gtl_frame():
    result = gtl("complete", "-", "--json", stdin="from stdin")
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert frames[0]["type"] == "status" and frames[-1]["type"] == "done"
    text = "".join(f["text"] for f in frames if f["type"] == "token")
    assert text.startswith('You said: "from stdin"')
    for frame in frames:
        gtl_nb.protocol.decode(json.dumps(frame))


@pytest.mark.parametrize(
    ("argv", "stdin", "where"),
    [
        (["complete", ""], None, "the prompt given was empty"),
        (["complete", "  \t "], None, "the prompt given was empty"),
        (["complete", "-"], "", "standard input was empty"),  # gtl complete - </dev/null
        (["complete"], "\n  \n", "standard input was empty"),  # piped in, only blank lines
    ],
)
def test_complete_refuses_an_empty_prompt_before_sending_anything(tmp_path, argv, stdin, where):
    from gtl_nb.engine.ledger import Ledger

    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{ledger.as_posix()}"\n')
    result = gtl(*argv, stdin=stdin, env={"GTL_NB_CONFIG": str(config)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("gtl: error: gtl complete needs a prompt") and where in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert not ledger.exists() or Ledger(ledger).rows() == []  # nothing was sent, nothing recorded
    sent = gtl("complete", "a prompt", env={"GTL_NB_CONFIG": str(config)})  # the same set-up records one
    assert sent.returncode == 0 and len(Ledger(ledger).rows()) == 1


def test_models_lists_providers_and_models():
    result = gtl("models")
    assert result.returncode == 0
    assert "echo [echo] (offline)" in result.stdout


def test_models_shows_names_a_terminal_would_act_on_as_their_escapes(tmp_path, capsys):
    """A deployment's name and its models' names (the configuration's, or a provider's own list's) reach
    the terminal as text: no escape sequence clears the screen or recolours it, no newline forges a row."""
    config = tmp_path / "gtl.toml"
    config.write_text(
        '[providers."team\\u001b[2J"]\ntype = "openai_compatible"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'models = ["m\\u001b[31mred\\nforged  ctx 1M  $0.00/1M in", "plain\\u202eevil"]\n'
    )
    assert main(["--config", str(config), "models"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    lines = out.splitlines()
    head = lines.index("team\\x1b[2J [openai_compatible]")
    red, plain = lines[head + 1 : head + 3]
    assert red.startswith("  m\\x1b[31mred\\nforged  ctx 1M") and plain.startswith("  plain\\u202eevil ")
    assert red.index("ctx ?") == plain.index("ctx ?")  # the columns line up as the terminal shows them


def test_an_error_quoting_a_provider_shows_what_a_terminal_would_act_on_as_escapes(tmp_path, capsys):
    with gtl_nb.sim.running("openai") as url:
        config = tmp_path / "gtl.toml"
        config.write_text(f'[providers.openai]\napi_key = "sim-key"\nbase_url = "{url}"\n')
        assert main(["--config", str(config), "complete", "x", "--model", "openai:no-such\x1b[2J\nmodel"]) == 2
    err = capsys.readouterr().err
    assert "no-such\\x1b[2J\\nmodel" in err and "\x1b" not in err and err.count("\n") == 1


def test_complete_takes_how_hard_the_model_thinks(tmp_path, capsys):
    with gtl_nb.sim.serve("openai") as served:
        config = tmp_path / "gtl.toml"
        config.write_text(f'[providers.openai]\napi_key = "sim-key"\nbase_url = "{served.base_url}"\n')
        argv = ["--config", str(config), "complete", "hi", "--model", "openai:gpt-5.5"]  # (it takes xhigh and none)
        assert main([*argv, "--reasoning-effort", "XHigh"]) == 0
        assert served.requests[-1].json["reasoning_effort"] == "xhigh"
        assert main([*argv, "--reasoning-budget", "0"]) == 0
        assert served.requests[-1].json["reasoning_effort"] == "none"
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            main([*argv, "--reasoning-effort", "huge"])
        assert refused.value.code == 2 and len(served.requests) == 2
    err = capsys.readouterr().err
    assert "unknown reasoning effort 'huge'; choose one of none, minimal, low, medium, high, xhigh, max" in err


def test_user_mistakes_are_one_line_and_exit_2(capsys):
    assert main(["complete", "x", "--model", "gpt-4o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gtl: error:") and "OPENAI_API_KEY" in err and "\n" not in err


def test_provider_errors_show_their_gtl_code(tmp_path, capsys):
    with gtl_nb.sim.running("openai") as url:
        config = tmp_path / "gtl.toml"
        config.write_text(f'[providers.openai]\napi_key = "wrong"\nbase_url = "{url}"\n')
        assert main(["--config", str(config), "complete", "x", "--model", "gpt-4o-mini"]) == 2
    assert "AUTH_FAILED [openai]" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "complete" in capsys.readouterr().out


def test_a_missing_provider_is_explained_in_shell_terms(capsys):
    assert main(["complete", "hi", "-m", "claude-haiku-4-5"]) == 2
    err = capsys.readouterr().err
    assert "ANTHROPIC_API_KEY" in err and "[providers.anthropic]" in err and "--config" in err
    assert "gtl_nb.connect" not in err and "providers={" not in err  # Python advice means nothing in a shell


def test_a_missing_config_file_names_the_option(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml"), "complete", "x"]) == 2
    err = capsys.readouterr().err
    assert "nope.toml" in err and "--config" in err and "config=" not in err


def test_a_prompt_from_stdin_loses_one_trailing_newline():
    result = gtl("complete", "-", stdin="piped text\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('You said: "piped text". ')


def test_every_complete_option_has_help_text():
    complete = build_parser()._subparsers._group_actions[0].choices["complete"]
    assert all(action.help for action in complete._actions), [a.dest for a in complete._actions if not a.help]


def test_the_gateway_option_says_usage_does_not_read_the_variable():
    # `gtl usage` stays on this machine's ledger with only $GTL_NB_GATEWAY set (a typed --gateway asks the
    # gateway): the help must not promise the variable to usage too
    (option,) = [action for action in build_parser()._actions if "--gateway" in action.option_strings]
    assert "complete and models: default $GTL_NB_GATEWAY" in " ".join(option.help.split()), option.help


@pytest.mark.parametrize("before", [True, False], ids=["before-the-command", "after-the-command"])
def test_complete_and_models_take_config_before_or_after_the_command(tmp_path, capsys, before):
    from gtl_nb.engine.ledger import Ledger

    config = tmp_path / "gtl.toml"
    ledger = tmp_path / "ledger.sqlite3"
    config.write_text(
        f'[ledger]\npath = "{ledger.as_posix()}"\n[providers.team]\ntype = "openai_compatible"\n'
        'base_url = "http://127.0.0.1:9/v1"\nmodels = ["team-model"]\n'
    )

    def run(*argv: str) -> int:
        command, *rest = argv
        given = ["--config", str(config)]
        return main([*given, command, *rest] if before else [command, *given, *rest])

    assert run("models") == 0
    assert "team [openai_compatible]" in capsys.readouterr().out
    assert run("complete", "hello", "--model", "echo") == 0
    assert 'You said: "hello"' in capsys.readouterr().out
    assert [row["model"] for row in Ledger(ledger).rows()] == ["echo"]  # the file's ledger, not the default


def test_config_after_the_command_is_refused_with_a_gateway_as_before_it(capsys):
    assert main(["models", "--config", "gtl.toml", "--gateway", "ws://127.0.0.1:9"]) == 2
    assert "has its own" in capsys.readouterr().err


def test_models_says_echo_has_no_context_window_rather_than_an_unknown_one():
    result = gtl("models")
    echo = next(line for line in result.stdout.splitlines() if line.startswith("  echo "))  # the model row
    assert "ctx ?" not in echo and "n/a" in echo


def test_a_ghosttoken_refusal_tells_the_terminal_where_its_token_goes():
    from gtl_nb.cli import _for_the_shell
    from gtl_nb.gateway.tokens.verify import MISSING
    from gtl_nb.notebook.errors import in_notebook_words

    # this version's words, and an older gateway's (without the $GTL_TOKEN hint for Python callers)
    older = MISSING.replace(" (or put it in $GTL_TOKEN, which connect reads)", "")
    assert older != MISSING
    for said in (MISSING, older):
        told = _for_the_shell(said)
        assert told.endswith("or put it in $GTL_TOKEN for gtl --gateway") and "gtl_nb.connect" not in told
        in_a_notebook = in_notebook_words(said)
        assert "%gtl connect URL --token-env VAR" in in_a_notebook and "gtl_nb.connect" not in in_a_notebook
        assert "Authorization" not in in_a_notebook and "api_key" not in in_a_notebook  # an SDK's way, not a notebook's
        assert in_a_notebook.startswith("the gateway needs a GhostToken, the token its administrator gave you: give it")


def test_a_development_token_refusal_survives_the_log_and_tells_the_terminal_where_its_token_goes():
    from gtl_nb.cli import _for_the_shell
    from gtl_nb.gateway.devauth import DevAuth
    from gtl_nb.log import redact
    from gtl_nb.protocol.errors import AuthenticationError

    auth = DevAuth.from_settings("token", principal="p", environ={"GTL_NB_DEV_TOKEN": "dev-token-canary-0123"})
    with pytest.raises(AuthenticationError) as refused:
        auth("wrong")
    assert redact(refused.value.message) == refused.value.message  # logged as it is said
    assert "in $GTL_TOKEN for gtl --gateway" in _for_the_shell(refused.value.message)


def test_models_quotes_prices_per_million_in_plain_digits():
    result = gtl("models", env={"OPENAI_API_KEY": "sk-listing-only"})
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("gpt-4o-mini "))
    assert line.endswith("$0.15/1M in, $0.60/1M out"), line
    assert "e-0" not in result.stdout


def test_a_gateway_variable_naming_the_embedded_engine_sends_it_no_token():
    result = gtl("models", env={"GTL_NB_GATEWAY": "embedded://", "GTL_TOKEN": "for-a-gateway"})
    assert result.returncode == 0, result.stderr
    assert "echo [echo] (offline)" in result.stdout


def test_an_unreachable_gateway_says_how_to_start_one(capsys):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["--gateway", f"ws://127.0.0.1:{port}", "models"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the ws gateway" in err and "`gtl serve` starts one" in err


@pytest.mark.parametrize(
    ("environ", "sent"),
    [
        ({"GTL_TOKEN": "gtl-token"}, "gtl-token"),
        ({"GTL_NB_TOKEN": "older-token"}, "older-token"),  # the older variable still serves
        ({"GTL_NB_TOKEN": "older-token", "GTL_TOKEN": "gtl-token"}, "gtl-token"),  # $GTL_TOKEN first, as connect
        ({"GTL_TOKEN": "  gtl-token\n"}, "gtl-token"),  # as a shell's $(cat file) leaves it, as connect reads it
        ({}, None),
    ],
)
def test_the_gateways_token_comes_from_either_variable(monkeypatch, environ, sent):
    from gtl_nb.cli import _client

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen = {}
    monkeypatch.setattr(gtl_nb.client, "connect", lambda url, token=None: seen.update(url=url, token=token))
    _client(build_parser().parse_args(["--gateway", "ws://127.0.0.1:9", "models"]))
    assert seen == {"url": "ws://127.0.0.1:9", "token": sent}


def test_a_gateways_model_list_advice_reads_as_a_command_in_the_terminal():
    from gtl_nb.cli import _for_the_shell
    from gtl_nb.engine.routing import GATEWAY_LIST

    told = _for_the_shell(f"unknown model 'x'; {GATEWAY_LIST}")
    assert told == "unknown model 'x'; gtl --gateway URL models lists what this gateway serves"


def test_version_says_the_package_and_its_version():
    result = gtl("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gtl_nb {gtl_nb.__version__}"


@pytest.mark.parametrize(
    ("per_1k", "shown"),
    [(0.00015, "0.15"), (0.0006, "0.60"), (0.0, "0.00"), (-0.0, "0.00"), (1e-12, "0.000000001"),
     (float("nan"), "?"), (float("inf"), "?"), (0.01, "10.00")],
)  # fmt: skip
def test_prices_per_million_never_look_free_or_scientific(per_1k, shown):
    from gtl_nb.cli import _per_million

    assert _per_million(per_1k) == shown


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["serve", "--port", "9000"], "for --port, give the address as --http 127.0.0.1:9000"),
        (["serve", "--host", "0.0.0.0"], "for --host, give the address as --http 0.0.0.0:8787"),
        (["serve", "--host", "0.0.0.0", "--port=9000"], "for --host/--port, give the address as --http 0.0.0.0:9000"),
        (["serve", "-p", "9000"], "for -p, give the address as --http 127.0.0.1:9000"),
        (["serve", "--bind", "::1"], "for --bind, give the address as --http [::1]:8787"),
        (["serve", "--htp", "127.0.0.1:9000"], "--htp: did you mean --http?"),
        (["complete", "hi", "--modle", "echo"], "--modle: did you mean --model?"),
        (["complete", "hello", "world"], 'the prompt is one argument: quote it (gtl complete "hello world")'),
        (["models", "--jsn"], "--jsn: did you mean --json?"),
    ],
)
def test_an_unknown_argument_is_reported_by_its_subcommand_with_the_option_meant(capsys, argv, said):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    command = argv[0]
    assert err.startswith(f"usage: gtl {command} ")  # the usage line that names the subcommand's options
    assert f"gtl {command}: error: unrecognized arguments: " in err
    assert said in err and f"(`gtl {command} --help` lists the options)" in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # (argparse quotes the choices before Python 3.12.8/3.13.1, not since: only the word is read here)
        (["complet", "hi"], "invalid choice: 'complet' (choose from "),
        (["sim", "opnai"], "invalid choice: 'opnai' (choose from "),
        (["usage", "--by", "modle"], "invalid choice: 'modle' (choose from "),
        (["token", "mnt"], "invalid choice: 'mnt' (choose from "),
    ],
)
def test_a_misspelt_command_or_choice_is_told_the_one_meant(capsys, argv, said):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    meant = {"complet": "complete", "opnai": "openai", "modle": "model", "mnt": "mint"}[said.split("'")[1]]
    assert exited.value.code == 2 and said in err and err.rstrip().endswith(f"; did you mean {meant!r}?")


def test_gtl_gateway_is_told_of_gtl_serve(capsys):
    """Every line the gateway writes starts ``gtl gateway:``, so an operator types ``gtl gateway``."""
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--config", "gtl.toml"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "invalid choice: 'gateway'" in err
    assert "; did you mean 'serve'? (gtl serve runs the gateway" in err


@pytest.mark.parametrize(
    ("argv", "command", "said"),
    [
        (["token", "mint", "--sub", "bob", "--tenent", "x"], "token mint", "--tenent: did you mean --tenant?"),
        (["audit", "verify", "--confg", "x"], "audit verify", "--confg: did you mean --config?"),
    ],
)
def test_an_unknown_argument_of_a_nested_command_is_reported_by_that_command(capsys, argv, command, said):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert err.startswith(f"usage: gtl {command} ")
    assert said in err and f"(`gtl {command} --help` lists the options)" in err


@pytest.mark.parametrize("argv", [["complete", "hi", "--temprature", "0.5"], ["complete", "hi", "-x", "5"]])
def test_the_value_of_an_unknown_option_is_not_taken_for_an_unquoted_prompt(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    assert "quote it" not in capsys.readouterr().err


def test_an_unknown_argument_with_nothing_close_names_only_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--frobnicate"])
    err = capsys.readouterr().err
    assert err.rstrip().endswith(
        "gtl models: error: unrecognized arguments: --frobnicate (`gtl models --help` lists the options)"
    )


def test_the_close_choice_is_found_in_linear_time_whatever_the_user_typed():
    """The did-you-mean reads argparse's message, which quotes the user's words: a message of many
    "invalid choice: " pieces must not take quadratic time (a regular expression did)."""
    from gtl_nb.cli_unknown import with_close_choice

    said = "argument command: invalid choice: 'complet' (choose from complete, models)"
    assert with_close_choice(said).endswith("; did you mean 'complete'?")
    assert with_close_choice(said.replace("'complet'", "complet")).endswith("; did you mean 'complete'?")
    huge = "unrecognized arguments: " + "invalid choice: " * 200_000
    started = time.perf_counter()
    assert with_close_choice(huge) == huge
    assert time.perf_counter() - started < 1.0  # (quadratic: minutes; linear: milliseconds)


@pytest.mark.parametrize(
    ("fault", "status", "retryable"),
    [
        (gtl_nb.sim.Fault.http(429), 1, True),  # the provider's load, retried already: may pass later
        (gtl_nb.sim.Fault.http(429, kind="quota"), 2, False),  # an exhausted quota: sending again will not help
    ],
)
def test_a_rate_limit_exits_by_whether_it_passes(tmp_path, capsys, fault, status, retryable):
    with gtl_nb.sim.serve("openai", fault) as served:
        config = tmp_path / "gtl.toml"
        config.write_text(
            f'[providers.openai]\napi_key = "sim-key"\nbase_url = "{served.base_url}"\n'
            "[routing.retry]\nmax_attempts = 1\n"
        )
        assert main(["--config", str(config), "complete", "--json", "x", "--model", "gpt-4o-mini"]) == status
    out, err = capsys.readouterr()
    assert "RATE_LIMIT [openai]" in err and err.count("\n") == 1
    error = json.loads(out.strip().splitlines()[-1])
    assert error["type"] == "error" and error.get("retryable", False) is retryable


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])  # (C: Python reads standard input with surrogateescape)
def test_standard_input_that_is_not_utf8_is_refused_as_such_before_sending(tmp_path, locale):
    ledger = tmp_path / "ledger.sqlite3"
    config = tmp_path / "gtl.toml"
    config.write_text(f'[ledger]\npath = "{ledger}"\n')
    env = {**os.environ, "GTL_NB_CONFIG": str(config), "LC_ALL": locale, "PYTHONUTF8": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "gtl_nb", "complete", "-m", "echo", "-"],
        capture_output=True,
        env=env,
        input="caf\u00e9 au lait\n".encode("latin-1"),  # a Latin-1 file piped in
        timeout=60,
    )
    err = result.stderr.decode()
    assert result.returncode == 2 and result.stdout == b"", err
    assert err.startswith("gtl: error: standard input is not UTF-8 text (byte 0xe9 is no UTF-8)")
    assert err.count("\n") == 1
    assert "surrogate" not in err and "Traceback" not in err and not ledger.exists()  # nothing was sent


def test_a_prompt_from_standard_input_keeps_its_line_ends_as_sent():  # (read as bytes now: nothing else changed)
    result = subprocess.run(
        [sys.executable, "-m", "gtl_nb", "complete", "-m", "echo", "-"],
        capture_output=True,
        env={**os.environ, "GTL_NB_CONFIG": ""},
        input=b"one\r\ntwo\r\n",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith('You said: "one\r\ntwo". ')


def test_standard_input_is_read_in_the_locales_encoding_when_it_is_not_utf8():
    result = subprocess.run(
        [sys.executable, "-m", "gtl_nb", "complete", "-m", "echo", "-"],
        capture_output=True,
        env={**os.environ, "GTL_NB_CONFIG": "", "PYTHONIOENCODING": "latin-1"},  # as a Latin-1 locale sets it
        input="caf\u00e9\n".encode("latin-1"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("latin-1").startswith('You said: "caf\u00e9". ')


def test_standard_input_that_is_not_utf8_is_no_traceback_under_a_strict_utf8_locale():
    # (en_US.UTF-8 and the like read standard input strictly: the bytes raised UnicodeDecodeError out of main)
    result = subprocess.run(
        [sys.executable, "-m", "gtl_nb", "complete", "-m", "echo", "-"],
        capture_output=True,
        env={**os.environ, "GTL_NB_CONFIG": "", "PYTHONIOENCODING": "utf-8:strict"},
        input="caf\u00e9\n".encode("latin-1"),
        timeout=60,
    )
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err, err
    assert err.startswith("gtl: error: standard input is not UTF-8 text (byte 0xe9 is no UTF-8)")
