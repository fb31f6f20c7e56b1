"""What a first session with the magics meets: the settings followed as they are now (a key, a base URL,
``$GTL_NB_CONFIG`` or the file it names, changed between cells, reaches the next cell — the embedded
engine is rebuilt, once, and says so; nothing changed keeps the engine and its connections), a gateway
gone, a frontend that cannot prompt, the docs' examples as written, and names a cell must not take."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import pytest

from gtl_nb import sim

from .conftest import SIM_KEY_ENV, loaded_shell, mistake, run, session_of


@pytest.fixture
def sims():
    servers = [sim.serve("openai", seed=1), sim.serve("openai", seed=2)]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def ip(tmp_path, monkeypatch):
    yield from loaded_shell(tmp_path, monkeypatch)


def config_for(tmp_path, name: str, server) -> str:
    """A configuration file of one openai deployment on ``server`` (and the test's ledger)."""
    path = tmp_path / name
    path.write_text(
        f'[providers.openai]\nbase_url = "{server.base_url}"\napi_key_env = "{SIM_KEY_ENV}"\n'
        f'[ledger]\npath = "{tmp_path / "ledger.sqlite3"}"\n'
    )
    return str(path)


def test_a_new_gtl_nb_config_reaches_the_next_cell_and_says_so_once(ip, sims, tmp_path, monkeypatch):
    first, second = sims
    monkeypatch.setenv("GTL_NB_CONFIG", config_for(tmp_path, "one.toml", first))
    result, text = run(ip, "%%gtl gpt-4o-mini\nto the first")
    assert result.success, text
    assert len(first.requests) == 1 and "reconnected" not in text

    monkeypatch.setenv("GTL_NB_CONFIG", config_for(tmp_path, "two.toml", second))
    result, text = run(ip, "%%gtl gpt-4o-mini\nto the second")
    assert result.success, text
    assert len(second.requests) == 1 and len(first.requests) == 1
    notice = [line for line in text.splitlines() if "reconnected" in line]
    assert notice == ["settings changed ($GTL_NB_CONFIG, the configuration file " + str(tmp_path / "two.toml") +
                      "): reconnected to embedded://"]  # fmt: skip

    client = session_of(ip).client()
    result, text = run(ip, "%%gtl gpt-4o-mini\nstill the second")
    assert result.success, text
    assert "reconnected" not in text and len(second.requests) == 2
    assert session_of(ip).client() is client  # nothing changed: the same engine and pool


def test_a_key_and_base_url_set_after_the_first_cell_are_used(ip, sims, monkeypatch):
    result, text = run(ip, "%%gtl\nfirst, on echo")
    assert result.success, text
    first = sims[0]
    monkeypatch.setenv("OPENAI_API_KEY", "sim-key")
    monkeypatch.setenv("OPENAI_BASE_URL", first.base_url)
    result, text = run(ip, "%%gtl gpt-4o-mini\nnow on openai")
    assert result.success, text
    assert ip.user_ns["_gtl"].provider == "openai" and len(first.requests) == 1
    assert "settings changed ($OPENAI_API_KEY, $OPENAI_BASE_URL): reconnected to embedded://" in text
    assert "sim-key" not in text  # the names of what changed, never a value
    _, text = run(ip, "%gtl config")
    assert "openai (openai)" in text


def test_an_edited_configuration_file_is_read_again(ip, sims, tmp_path, monkeypatch):
    first, second = sims
    path = config_for(tmp_path, "edited.toml", first)
    monkeypatch.setenv("GTL_NB_CONFIG", path)
    assert run(ip, "%%gtl gpt-4o-mini\nbefore the edit")[0].success
    config_for(tmp_path, "edited.toml", second)  # the same file, now naming the second simulator
    result, text = run(ip, "%%gtl gpt-4o-mini\nafter the edit")
    assert result.success, text
    assert (len(first.requests), len(second.requests)) == (1, 1)
    assert f"the configuration file {path} (edited)" in text


def test_a_file_named_with_gtl_config_file_is_not_replaced_by_the_variable(ip, sims, tmp_path, monkeypatch):
    first, second = sims
    result, text = run(ip, f"%gtl config file={config_for(tmp_path, 'named.toml', first)}")
    assert result.success, text
    monkeypatch.setenv("GTL_NB_CONFIG", config_for(tmp_path, "other.toml", second))
    result, text = run(ip, "%%gtl gpt-4o-mini\nstill the named file")
    assert result.success, text
    assert (len(first.requests), len(second.requests)) == (1, 0)
    assert "reconnected" not in text


def test_gtl_nb_model_set_between_cells_is_the_next_cells_model(ip, sims, tmp_path, monkeypatch):
    monkeypatch.setenv("GTL_NB_CONFIG", config_for(tmp_path, "models.toml", sims[0]))
    monkeypatch.setenv("GTL_NB_MODEL", "echo")
    assert run(ip, "%%gtl\nhello")[0].success
    assert ip.user_ns["_gtl"].provider == "echo"
    monkeypatch.setenv("GTL_NB_MODEL", "gpt-4o-mini")
    result, text = run(ip, "%%gtl\nhello")
    assert result.success, text
    assert ip.user_ns["_gtl"].provider == "openai" and len(sims[0].requests) == 1


def test_config_still_shows_the_settings_when_the_gateway_has_gone_and_errors_say_the_way_out(ip, tmp_path):
    from gtl_nb.gateway.local import start_gateway
    from gtl_nb.notebook.errors import GTLCellError

    config = tmp_path / "gateway.toml"
    config.write_text(f'[ledger]\npath = "{tmp_path / "gateway-ledger.sqlite3"}"\n')
    with start_gateway(config) as gateway:
        url = gateway.url("ws")
        assert run(ip, f"%gtl connect {url}")[0].success
        assert run(ip, "%%gtl echo\nwhile it runs")[0].success
    result, text = run(ip, "%gtl config")  # the gateway has stopped
    assert result.success, text
    assert f"endpoint  {url}" in text
    providers = next(line for line in text.splitlines() if line.startswith("providers"))
    assert "not connected: PROVIDER_UNAVAILABLE" in providers and "`%gtl connect embedded://`" in providers

    result, text = run(ip, "%%gtl echo\nafter it left")
    assert isinstance(result.error_in_exec, GTLCellError) and "Traceback" not in text
    assert "`%gtl connect embedded://` runs the engine in this kernel instead" in str(result.error_in_exec)
    for source in ("%gtl models", "%gtl usage"):
        result, text = run(ip, source)
        assert result.error_in_exec is not None and "Traceback" not in text, source
        assert "`%gtl connect embedded://`" in str(result.error_in_exec), source
    assert run(ip, "%gtl connect embedded://")[0].success
    assert run(ip, "%%gtl echo\nback in the kernel")[0].success


def test_ask_token_where_the_frontend_cannot_prompt_is_one_line(ip, monkeypatch):
    from IPython.core.error import StdinNotImplementedError

    def no_prompt(prompt=""):  # what ipykernel's getpass does when the frontend allows no input
        raise StdinNotImplementedError("getpass was called, but this frontend does not support input requests.")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    message = mistake(ip, "%gtl connect http://127.0.0.1:9 --ask-token")
    assert message == (
        "%gtl connect --ask-token: this frontend cannot prompt for input; use --token-env VAR or $GTL_TOKEN "
        "(the notebook stays on embedded://)"
    )
    assert "embedded://" in run(ip, "%gtl config")[1]


@pytest.mark.parametrize("source", ["%%gtl --out print\nx", "%%gap --out list\nx", "%gap graph --out id"])
def test_out_refuses_the_name_of_a_builtin(ip, source):
    name = source.split("--out ")[1].split()[0]
    message = mistake(ip, source)
    assert f"{name!r} is a Python builtin" in message and f"{name}_result" in message
    assert name not in ip.user_ns  # the builtin is still what the name means
    assert run(ip, name)[0].result is getattr(builtins, name)


def test_an_unknown_model_from_gtl_nb_model_names_the_variable(ip, monkeypatch):
    monkeypatch.setenv("GTL_NB_MODEL", "gpt-4oo")
    message = mistake(ip, "%%gtl\nhi")
    assert message.startswith("MODEL_NOT_FOUND: unknown model 'gpt-4oo'; did you mean 'gpt-4o'")
    assert message.endswith(
        "(the model of $GTL_NB_MODEL; `%gtl config model=...` overrides it, a cell's own MODEL too)"
    )
    named = mistake(ip, "%%gtl gpt-4oo\nhi")  # a cell's own model is the cell's: nothing more to say
    assert "GTL_NB_MODEL" not in named
    assert run(ip, "%%gtl echo\nhi")[0].success


def test_the_schema_example_of_magics_md_runs_offline_as_written(ip):
    import msgspec

    page = (Path(__file__).resolve().parents[2] / "docs" / "magics.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w*)\n(.*?)```", page, flags=re.DOTALL)
    at = next(i for i, (_, body) in enumerate(blocks) if "class City" in body)
    (_, define), (language, cell) = blocks[at], blocks[at + 1]
    assert language == "ipython" and cell.startswith("%%gtl") and "--schema City" in cell
    assert run(ip, define)[0].success
    result, text = run(ip, cell)
    assert result.success, text
    city = msgspec.json.decode(ip.user_ns["_gtl"].text, type=ip.user_ns["City"])  # as the page reads it back
    assert isinstance(city.name, str) and isinstance(city.population, int)


def test_schema_refusals_name_every_kind_of_class_taken(ip):
    missing = mistake(ip, "%%gtl --schema Town\nhi")
    assert all(kind in missing for kind in ("dataclass", "TypedDict", "pydantic model class"))
    ip.run_cell("import os")
    wrong = mistake(ip, "%%gtl --schema os\nhi")
    assert all(kind in wrong for kind in ("dataclass", "TypedDict", "pydantic model class"))
    assert wrong.endswith("not a module")


def test_an_answer_interrupted_on_a_gateway_names_its_provider_as_on_the_embedded_engine(ip, tmp_path, monkeypatch):
    import threading

    from gtl_nb.completion import Completion
    from gtl_nb.gateway.local import start_gateway
    from gtl_nb.notebook import widgets
    from gtl_nb.notebook.errors import GTLCellError

    from .test_magics import run_until_ctrl_c

    config = tmp_path / "gateway.toml"
    config.write_text(  # the gateway's one deployment of echo, slow enough to interrupt
        f'[providers.echo]\ntype = "echo"\noptions = {{ pace = 0.05 }}\n[ledger]\npath = "{tmp_path / "gw.sqlite3"}"\n'
    )
    arrived = threading.Event()
    original = widgets.StreamView.on_event

    def on_event(view, event):
        original(view, event)
        if len(view.text.split()) >= 3:
            arrived.set()

    monkeypatch.setattr(widgets.StreamView, "on_event", on_event)
    with start_gateway(config) as gateway:
        assert run(ip, f"%gtl connect {gateway.url('ws')}")[0].success
        result, text = run_until_ctrl_c(ip, "%%gtl echo\nTell me a long story", arrived)
        assert run(ip, "%gtl connect embedded://")[0].success
    assert isinstance(result.error_in_exec, GTLCellError), text
    answer = ip.user_ns["_gtl"]
    assert isinstance(answer, Completion) and answer.cancelled
    assert answer.provider == "echo" and answer.provider_type == "echo"
    assert re.fullmatch(r"\d+ chunks? arrived · \d+\.\d\d s · echo \(offline\) · cancelled", answer.footer())
    assert answer.footer() in text
