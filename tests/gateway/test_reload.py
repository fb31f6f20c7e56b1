"""Reloading a running gateway (SIGHUP, ``gtl reload``): deployments, routing and the token policy change in
place; a bad file changes nothing; sessions already running finish on what they started with.

Each test runs a gateway child process (``start_gateway``, plain HTTP on a free loopback port), rewrites
its configuration file, sends SIGHUP and waits for the one ``gtl gateway: reload…`` line it prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import gtl_nb
from gtl_nb.engine.builder import build_engine
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.local import LocalGateway, start_gateway
from gtl_nb.gateway.reload import Reloader, SwappableAuthenticator
from gtl_nb.gateway.reload_cli import gateway_pid
from gtl_nb.gateway.reload_report import ReloadReporter, report_path
from gtl_nb.gateway.tokens import mint_token
from gtl_nb.protocol.errors import AuthenticationError, ConfigurationError, PermissionDeniedError
from gtl_nb.protocol.messages import Done, Token
from tests.gateway.conftest import LONG_PROMPT, MODEL, SIM_KEY, write_toml

RELOAD_LINE = "gtl gateway: reload"
ISSUER = "gtl-reload-test"


def reload_and_wait(gateway: LocalGateway, *, timeout: float = 30.0) -> str:
    """SIGHUP the gateway, then its next ``gtl gateway: reload…`` line (the reload is done when it prints)."""
    seen = len(gateway.output)
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gateway.output[seen:]:
            if line.startswith(RELOAD_LINE):
                return line
        assert gateway.running, "".join(gateway.output)
        time.sleep(0.02)  # the stderr reader thread appends the line: nothing to wait on but the list
    raise AssertionError(f"no reload line within {timeout} s: {''.join(gateway.output[seen:])}")


def tables(tmp_path: Path, providers: dict[str, dict[str, Any]], **more: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        **{f"providers.{name}": table for name, table in providers.items()},
        "ledger": {"path": tmp_path / "ledger.sqlite"},
        "gateway": {"shutdown_grace": 2},
        **more,
    }


def test_a_reload_adds_a_deployment_and_a_running_stream_finishes(tmp_path: Path, sims: SimpleNamespace) -> None:
    slow = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.slow.base_url}
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"slow": slow}))
    with start_gateway(config) as gateway:
        pid = gateway.process.pid
        url = gateway.url("ws")
        with gtl_nb.connect(url) as before:
            assert "fast" not in {info.provider for info in before.providers()}
            stream = iter(before.stream(f"slow:{MODEL}", LONG_PROMPT))
            first = next(event for event in stream if isinstance(event, Token))  # the session is under way

            write_toml(
                config,
                tables(
                    tmp_path,
                    {"slow": slow, "fast": fast},
                    defaults={"model": f"fast:{MODEL}"},
                    routing={"strategy": "round_robin"},
                    **{"routing.retry": {"max_attempts": 2}},
                ),
            )
            line = reload_and_wait(gateway)
            # exactly what changed ([defaults] are the clients': not the gateway's to apply)
            assert line == (
                "gtl gateway: reloaded the configuration: 3 deployments (+fast), [routing] strategy round_robin, "
                "[routing.retry]\n"
            ), line

            with gtl_nb.connect(url) as after:
                assert {"fast", "slow"} <= {info.provider for info in after.providers()}
                assert after.complete(f"fast:{MODEL}", "Say something").text

            rest = list(stream)  # the stream begun before the reload ends as it would have
            assert isinstance(rest[-1], Done), rest[-1]
            text = first.text + "".join(event.text for event in rest if isinstance(event, Token))
            assert len(text) > 40
        assert gateway.running and gateway.process.pid == pid  # reloaded, not restarted


def test_metrics_and_the_audit_log_label_a_deployment_added_by_a_reload(tmp_path: Path, sims: SimpleNamespace) -> None:
    """A deployment a reload adds has its own metrics label and breaker gauge (not ``other``), and its
    audit records name its provider type, as if the gateway had started with it."""
    slow = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.slow.base_url}
    audit = tmp_path / "audit.jsonl"
    operations = {"gateway.metrics": {"require_token": False}, "gateway.audit": {"path": audit, "fsync": False}}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"slow": slow}, **operations))
    with start_gateway(config) as gateway:
        write_toml(config, tables(tmp_path, {"slow": slow, "fresh": {"type": "echo"}}, **operations))
        assert "+fresh" in reload_and_wait(gateway)
        with gtl_nb.connect(gateway.url("ws")) as client:
            answer = client.complete("fresh:echo", "Say something")
        scraped = httpx.get(gateway.url("http") + "/metrics", timeout=10).text
    assert 'gtl_breaker_state{deployment="fresh"} 0.0' in scraped
    assert 'provider="fresh",status="ok"' in scraped and 'provider="other"' not in scraped
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [record for record in records if record.get("session_id") == answer.session_id]
    assert [record["provider"] for record in mine] == ["echo"]


def test_a_broken_file_changes_nothing_and_the_gateway_keeps_answering(tmp_path: Path, sims: SimpleNamespace) -> None:
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}))
    with start_gateway(config) as gateway:
        url = gateway.url("ws")
        with gtl_nb.connect(url) as client:
            served = sorted(info.provider for info in client.providers())
        assert "fast" in served
        good = config.read_text(encoding="utf-8")
        broken = {
            "not TOML": good + "\n[providers.more\nbase_url = \n",
            "an unknown strategy": good + '\n[routing]\nstrategy = "fastest_please"\n',
        }
        for case, text in broken.items():
            config.write_text(text, encoding="utf-8")
            seen = len(gateway.output)
            line = reload_and_wait(gateway)
            assert line.startswith("gtl gateway: reload refused, still serving the previous configuration: "), (
                case,
                line,
            )
            assert line.count("\n") == 1 and len(gateway.output) - seen == 1, (case, gateway.output[seen:])
            with gtl_nb.connect(url) as client:
                assert sorted(info.provider for info in client.providers()) == served
                assert client.complete(f"fast:{MODEL}", "still there?").text
        assert "fastest_please" in "".join(gateway.output)  # the refusal said what was wrong


def test_a_reload_with_a_new_secret_refuses_old_tokens_and_accepts_new_ones(
    tmp_path: Path, sims: SimpleNamespace
) -> None:
    secrets = {"a": "first-secret-of-reload-test-0123456789abcdef", "b": "second-secret-of-reload-test-9876543210fedc"}
    for name, secret in secrets.items():
        (tmp_path / f"secret-{name}").write_text(secret + "\n", encoding="utf-8")
        (tmp_path / f"secret-{name}").chmod(0o600)
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}

    def configure(secret: str) -> Path:
        jwt = {
            "issuer": ISSUER,
            "secret_file": f"secret-{secret}",
            "default_deployments": ["*"],
            "revocations": tmp_path / "tokens.sqlite3",
        }
        return write_toml(
            tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}, **{"gateway.jwt": jwt}, gateway={"auth": "jwt"})
        )

    def token(secret: str) -> str:
        return mint_token(secrets[secret], subject="alice", scopes=["chat:write"], lifetime=600, issuer=ISSUER)

    config = configure("a")
    with start_gateway(config) as gateway:
        url = gateway.url("ws")
        old = token("a")
        with gtl_nb.connect(url, token=old) as client:
            assert client.complete(f"fast:{MODEL}", "before").text
            configure("b")
            line = reload_and_wait(gateway)
            assert line == "gtl gateway: reloaded the configuration: token policy renewed (secret)\n", line
            # a connection opened with a token of the retired secret starts nothing more: a secret is
            # replaced when it leaked, and tokens forged with it must not live on in open connections
            with pytest.raises(AuthenticationError):
                client.complete(f"fast:{MODEL}", "same connection")
            with pytest.raises(AuthenticationError):
                client.usage()
        with pytest.raises(AuthenticationError):
            gtl_nb.connect(url, token=old)
        with gtl_nb.connect(url, token=token("b")) as client:
            assert client.complete(f"fast:{MODEL}", "after").text


def test_a_reload_of_a_secret_env_gateway_says_a_new_secret_needs_a_restart(tmp_path: Path, sims: SimpleNamespace):
    """A leaked secret put anew in the gateway's env file, then ``systemctl reload``: the process's
    environment never changes, so the reload found "no change to apply" and the leaked secret's tokens
    kept working, silently. The reload line now says the variable is read at start only."""
    leaked = "leaked-secret-of-the-secret-env-reload-test-0123"
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    jwt = {"issuer": ISSUER, "secret_env": "GTL_RELOAD_TEST_SECRET", "default_deployments": ["*"]}
    jwt["revocations"] = tmp_path / "tokens.sqlite3"
    config = write_toml(
        tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}, **{"gateway.jwt": jwt}, gateway={"auth": "jwt"})
    )
    with start_gateway(config, env={"GTL_RELOAD_TEST_SECRET": leaked}) as gateway:
        line = reload_and_wait(gateway)
        assert line.startswith("gtl gateway: reloaded the configuration: no change to apply; "), line
        assert "[gateway.jwt] secret_env is read at start: restart to apply" in line, line
        assert "restart to apply a new value of $GTL_RELOAD_TEST_SECRET" in line and leaked not in line
        token = mint_token(leaked, subject="alice", scopes=["chat:write"], lifetime=600, issuer=ISSUER)
        with gtl_nb.connect(gateway.url("ws"), token=token) as client:  # what the note warns of
            assert client.complete(f"fast:{MODEL}", "still the started-with secret").text


def test_a_reload_taking_a_deployment_from_default_deployments_reaches_open_connections(
    tmp_path: Path, sims: SimpleNamespace
) -> None:
    """An operator narrows ``default_deployments`` (a deployment withdrawn, say): a notebook whose
    WebSocket opened before the reload may no longer use what was taken, on that connection too —
    its token allowed it only through the policy's defaults."""
    secret = "secret-of-the-narrowing-reload-test-0123456789"
    (tmp_path / "secret").write_text(secret + "\n", encoding="utf-8")
    (tmp_path / "secret").chmod(0o600)
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}

    def configure(defaults: list[str]) -> Path:
        jwt = {"issuer": ISSUER, "secret_file": "secret", "default_deployments": defaults}
        return write_toml(
            tmp_path / "gtl.toml",
            tables(tmp_path, {"kept": fast, "withdrawn": fast}, **{"gateway.jwt": jwt}, gateway={"auth": "jwt"}),
        )

    token = mint_token(secret, subject="alice", scopes=["chat:write", "models:read"], lifetime=600, issuer=ISSUER)
    with start_gateway(configure(["*"])) as gateway, gtl_nb.connect(gateway.url("ws"), token=token) as client:
        assert any(
            line.startswith("gtl gateway: ready") and "clients need a GhostToken" in line for line in gateway.output
        )
        assert client.complete(f"withdrawn:{MODEL}", "before").text
        configure(["kept"])
        line = reload_and_wait(gateway)
        assert "token policy renewed (default_deployments)" in line, line
        with pytest.raises(PermissionDeniedError, match="may not use"):
            client.complete(f"withdrawn:{MODEL}", "same connection, after")
        assert client.complete(f"kept:{MODEL}", "what is left").text


def test_gtl_reload_signals_the_gateway_named_by_its_pidfile(tmp_path: Path, sims: SimpleNamespace) -> None:
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}))
    pidfile = tmp_path / "gateway.pid"
    gateway = LocalGateway(
        subprocess.Popen(
            [
                *(sys.executable, "-m", "gtl_nb", "serve", "--config", str(config), "--http", "127.0.0.1:0"),
                "--pidfile",
                str(pidfile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ),
        config,
    )
    with gateway:
        assert gateway_pid(pidfile=pidfile) == gateway.process.pid
        seen = len(gateway.output)
        done = subprocess.run(
            [sys.executable, "-m", "gtl_nb", "reload", "--pidfile", str(pidfile)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        # gtl reload waits for the reload its signal asked for and prints what it came to
        assert done.returncode == 0, done.stderr
        expected = "reloaded the configuration: no change to apply"  # the file is as the gateway started with it
        assert done.stdout == f"gateway {gateway.process.pid}: {expected}\n"
        assert expected in "".join(gateway.output[seen:])
        # a refused reload is told to whoever ran gtl reload, with status 1; by --pid too (the report's
        # place is found from the gateway's command line)
        config.write_text(config.read_text(encoding="utf-8") + '\n[routing]\nstrategy = "fastest"\n', encoding="utf-8")
        by_pid = ["--pid", str(gateway.process.pid)] if Path("/proc/self/cmdline").exists() else []
        for which in (["--pidfile", str(pidfile)], *([by_pid] if by_pid else [])):
            refused = subprocess.run(
                [sys.executable, "-m", "gtl_nb", "reload", *which],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert refused.returncode == 1, (refused.stdout, refused.stderr)
            assert refused.stderr.startswith(
                f"gtl reload: gateway {gateway.process.pid}: reload refused, still serving the previous "
                "configuration: [routing] unknown strategy 'fastest'"
            ), refused.stderr
        assert gateway.running
    assert not pidfile.exists()  # removed at the gateway's exit
    assert not Path(f"{pidfile}.reload").exists()  # and its reload report


def _served_with_pidfile(config: Path, pidfile: Path) -> LocalGateway:
    command = [sys.executable, "-m", "gtl_nb", "serve", "--config", str(config), "--http", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*command, "--pidfile", str(pidfile)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return LocalGateway(process, config)


def _gtl_reload(pidfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gtl_nb", "reload", "--pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_gateway_refuses_the_pidfile_of_a_running_one(tmp_path: Path, sims: SimpleNamespace) -> None:
    # it took the file over and removed it at its exit: gtl reload --pidfile could no longer reach the first
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}))
    pidfile = tmp_path / "gateway.pid"
    with _served_with_pidfile(config, pidfile) as first:
        assert gateway_pid(pidfile=pidfile) == first.process.pid
        second = subprocess.run(
            [
                *(sys.executable, "-m", "gtl_nb", "serve", "--config", str(config), "--http", "127.0.0.1:0"),
                *("--pidfile", str(pidfile)),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, (second.stdout, second.stderr)
        assert (
            f"--pidfile {pidfile}: gateway {first.process.pid} is running and uses it; give this one its own"
            in second.stderr
        ), second.stderr
        assert gateway_pid(pidfile=pidfile) == first.process.pid
        assert Path(f"{pidfile}.reload").exists()
        done = _gtl_reload(pidfile)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"gateway {first.process.pid}: reloaded the configuration"), done.stdout
    # a file the first one left (killed, say) names no running gateway: the next start takes it over
    pidfile.write_text(f"{first.process.pid}\n", encoding="ascii")
    with _served_with_pidfile(config, pidfile) as later:
        assert gateway_pid(pidfile=pidfile) == later.process.pid
        # the file handed to another process meanwhile is never removed at this one's exit
        pidfile.write_text("1\n", encoding="ascii")
    assert pidfile.read_text(encoding="ascii") == "1\n"


def test_gtl_reload_of_what_needs_a_restart_exits_non_zero_and_says_which(tmp_path: Path, sims: SimpleNamespace):
    """``auth`` switched from "none" to "jwt" was reported "restart to apply" and ``gtl reload`` exited 0:
    a script would think tokens were now checked, while every caller still got in — and a deployment the
    same file added was served to them. Now such a reload is refused whole (status 1, the setting and
    "restart" named, nothing applied); a reload whose other restart-only changes leave the rest applied
    exits 3 and names them on standard error."""
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}))
    (tmp_path / "secret").write_text("secret-of-the-auth-switch-reload-test-0123456789\n", encoding="utf-8")
    (tmp_path / "secret").chmod(0o600)
    pidfile = tmp_path / "gateway.pid"
    with _served_with_pidfile(config, pidfile) as gateway:
        pid = gateway.process.pid
        jwt = {"issuer": ISSUER, "secret_file": "secret"}
        write_toml(
            config,
            tables(tmp_path, {"fast": fast, "added": fast}, gateway={"auth": "jwt"}, **{"gateway.jwt": jwt}),
        )
        refused = _gtl_reload(pidfile)
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert refused.stderr.startswith(f"gtl reload: gateway {pid}: reload refused"), refused.stderr
        assert '[gateway] auth changes from "none" to "jwt"' in refused.stderr, refused.stderr
        assert "restart the gateway" in refused.stderr and refused.stdout == ""
        with gtl_nb.connect(gateway.url("ws")) as client:  # still no token asked, and nothing else applied
            assert "added" not in {info.provider for info in client.providers()}

        grace_changed = {"shutdown_grace": 3}
        write_toml(config, tables(tmp_path, {"fast": fast, "added": fast}, gateway=grace_changed))
        in_part = _gtl_reload(pidfile)
        assert in_part.returncode == 3, (in_part.stdout, in_part.stderr)
        assert in_part.stdout.startswith(f"gateway {pid}: reloaded the configuration: 3 deployments (+added)")
        left = "restart the gateway to apply [gateway] shutdown_grace"
        assert in_part.stderr == f"gtl reload: gateway {pid} took the reload in part: {left}\n", in_part.stderr
        with gtl_nb.connect(gateway.url("ws")) as client:
            assert "added" in {info.provider for info in client.providers()}
        assert gateway.running


def test_gtl_reload_explains_a_missing_gateway(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is the gateway running"):
        gateway_pid(pidfile=tmp_path / "none.pid")
    (tmp_path / "junk.pid").write_text("not a pid\n", encoding="ascii")
    with pytest.raises(ConfigurationError, match="holds no process id"):
        gateway_pid(pidfile=tmp_path / "junk.pid")
    with pytest.raises(ConfigurationError, match="process id"):
        gateway_pid(pid=0)
    assert gateway_pid(pid=os.getpid()) == os.getpid()


def test_the_engine_takes_every_reloadable_part_and_names_the_rest(tmp_path: Path, sims: SimpleNamespace) -> None:
    """In process: routing, breaker thresholds, timeouts, budgets and prices change in place; listeners, limits
    and the ledger are named "restart to apply" and stay as they were."""
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}))
    settings = load_settings(config=config)
    engine = build_engine(settings)
    board = engine.stores.breakers.board
    reloader = Reloader(engine, config=config, settings=settings, authenticate=SwappableAuthenticator(lambda _: None))
    changed = tables(
        tmp_path,
        {"fast": {**fast, "base_url": sims.slow.base_url}},
        ledger={"path": tmp_path / "another.sqlite"},
        gateway={"shutdown_grace": 5, "max_sessions_per_connection": 3},
        routing={"strategy": "lowest_cost"},
        timeouts={"connect": 3},
        budgets={"requests_per_minute": 7},
        **{"routing.breaker": {"failure_threshold": 2}, f'catalog.openai."{MODEL}"': {"cost_per_1k_input": 1.5}},
    )
    write_toml(config, changed)
    line = reloader.reload()
    # every part that changed is named, and only those: the deployment, the strategy, the breaker's
    # thresholds, the timeouts, the prices, the budget limits
    assert line == (
        "reloaded the configuration: 2 deployments (~fast), [routing] strategy lowest_cost, [routing.breaker], "
        "[timeouts], [catalog], [budgets] limits; changed but not reloadable, restart to apply: "
        "[gateway] max_sessions_per_connection, [gateway] shutdown_grace, [ledger]"
    ), line
    assert engine.deployments["fast"].base_url.startswith(sims.slow.base_url.rstrip("/"))
    assert type(engine.strategy).__name__.lower().startswith("lowestcost")
    assert engine.http.timeouts.connect == 3
    assert engine.budgets is not None and engine.budgets.limits_for("anyone").requests_per_minute == 7
    assert engine.catalog.model("openai", MODEL).cost_per_1k_input == 1.5
    # in-process circuits restart closed under the new thresholds; the stores themselves stay
    assert engine.stores.breakers.board is not board and engine.stores.breakers.board.config.failure_threshold == 2
    assert engine.ledger.path == Path(settings.ledger.url)
    asyncio.run(engine.aclose())


def test_the_event_loop_and_advertise_are_named_restart_to_apply(tmp_path: Path, sims: SimpleNamespace) -> None:
    """Neither can change in a running gateway (the loop runs the process; discovery offers what it started
    with): a reload that changes them says so instead of reporting them taken."""
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast}))
    settings = load_settings(config=config)
    engine = build_engine(settings)
    reloader = Reloader(engine, config=config, settings=settings, authenticate=SwappableAuthenticator(lambda _: None))
    gateway = {"shutdown_grace": 2, "event_loop": "asyncio", "advertise": {"grpc": "grpcs://gw.example.com:443"}}
    gateway["trusted_proxies"] = ["10.0.0.0/8"]  # a limit: named by its own key, as the file spells it
    write_toml(config, tables(tmp_path, {"fast": fast}, gateway=gateway))
    line = reloader.reload()
    assert line.endswith("restart to apply: [gateway] advertise, [gateway] event_loop, [gateway] trusted_proxies"), line
    asyncio.run(engine.aclose())


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="asks /proc which program a process runs")
def test_gtl_reload_never_signals_a_process_that_is_not_a_gateway(tmp_path: Path) -> None:
    # a pid file left by a gateway that was killed may name a process that took its id since
    from gtl_nb.gateway.reload_cli import send_reload

    bystander = subprocess.Popen(["sleep", "30"])
    started = time.monotonic()
    while not Path(f"/proc/{bystander.pid}/cmdline").read_bytes() and time.monotonic() - started < 5:
        time.sleep(0.01)  # (just after its start a process may show no command line yet)
    try:
        (tmp_path / "stale.pid").write_text(f"{bystander.pid}\n", encoding="ascii")
        pid = gateway_pid(pidfile=tmp_path / "stale.pid")
        with pytest.raises(ConfigurationError, match=r"is not a gtl_nb gateway .*sleep 30.*none was sent"):
            send_reload(pid)
        time.sleep(0.1)
        assert bystander.poll() is None  # still running: no SIGHUP reached it
    finally:
        bystander.kill()
        bystander.wait()
    finished = subprocess.Popen(["true"])
    finished.wait()
    with pytest.raises(ConfigurationError, match="is the gateway running"):
        send_reload(finished.pid)


def test_a_deployment_without_its_key_is_warned_of_at_start_and_on_reload(
    tmp_path: Path, sims: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GTL_TEST_NOPE_KEY", raising=False)
    fast = {"type": "openai", "api_key": SIM_KEY, "base_url": sims.fast.base_url}
    keyless = {"type": "openai", "api_key_env": "GTL_TEST_NOPE_KEY", "base_url": sims.fast.base_url}
    config = write_toml(tmp_path / "gtl.toml", tables(tmp_path, {"fast": fast, "keyless": keyless}))
    with start_gateway(config) as gateway:
        started = "".join(gateway.output)
        assert "gtl gateway: warning: deployment 'keyless' (openai) is missing api_key" in started, started
        assert "GTL_TEST_NOPE_KEY" in started and "fail over" in started
        write_toml(config, tables(tmp_path, {"fast": fast, "keyless": keyless, "keyless2": keyless}))
        line = reload_and_wait(gateway)
        assert "warning: deployment 'keyless2' (openai) is missing api_key" in line, line


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="asks /proc which program a process runs")
def test_gtl_reload_waits_for_a_gateways_report_and_signals_without_one(tmp_path: Path) -> None:
    """A gateway whose report is not there — still starting, or unable to write it — gets its SIGHUP
    once the wait is over (a gateway that wrote its pid file counts one and reloads once up), with
    no answer to give: status 0, and a message that says so. A report of another process (an init
    as process 1) sends nothing."""
    from gtl_nb.gateway.reload_cli import pidfile_of

    pidfile = tmp_path / "gateway.pid"
    got = tmp_path / "hang-ups"
    # a stand-in whose command line reads as a gateway's, counting SIGHUPs as a starting gateway does
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *_: open(sys.argv[1], 'a').write('x'))\n"
        "time.sleep(60)\n"
    )
    starting = subprocess.Popen([sys.executable, "-c", code, str(got), "gtl_nb", "serve", "--pidf", str(pidfile)])
    try:
        pidfile.write_text(f"{starting.pid}\n", encoding="ascii")
        deadline = time.monotonic() + 5
        while pidfile_of(starting.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)  # (just after its start a process may show no command line yet)
        assert pidfile_of(starting.pid) == pidfile  # an abbreviated --pidfile, as argparse takes it
        for sent, which in enumerate((["--pidfile", str(pidfile)], ["--pid", str(starting.pid)]), start=1):
            began = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "gtl_nb", "reload", *which, "--wait", "0.5"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, (done.stdout, done.stderr)
            assert "keeps no reload report" in done.stderr, done.stderr
            assert time.monotonic() - began >= 0.5  # the signal went only after the wait
            deadline = time.monotonic() + 5
            while (got.read_text() if got.exists() else "") != "x" * sent and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got.read_text() == "x" * sent and starting.poll() is None
        # a report that is another process's (an init such as tini as process 1, the gateway its child)
        ReloadReporter(report_path(pidfile), pid=starting.pid + 100000)
        done = subprocess.run(
            [sys.executable, "-m", "gtl_nb", "reload", "--pid", str(starting.pid), "--wait", "0.3"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1 and "name the gateway's own process" in done.stderr, done.stderr
        assert got.read_text() == "xx"  # nothing more was sent
    finally:
        starting.kill()
        starting.wait()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="asks /proc which program a process runs")
@pytest.mark.parametrize(
    "words", [("gtl", "complete", "a long answer"), ("gtl_nb", "audit", "tail", "-f"), ("-m", "gtl_nb.notebook")]
)
def test_gtl_reload_signals_no_gtl_command_but_a_gateway(tmp_path: Path, words: tuple[str, ...]) -> None:
    # `gtl complete` (or a kernel started as python -m gtl_nb...) ends at a SIGHUP: only `serve` is a gateway
    from gtl_nb.gateway.reload_cli import send_reload

    got = tmp_path / "hang-ups"
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGHUP, lambda *_: open(sys.argv[1], 'a').write('x'))\n"
        "time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(got), *words])
    try:
        deadline = time.monotonic() + 5
        while words[-1].encode() not in Path(f"/proc/{other.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # (just after its start a process may show no command line yet)
        with pytest.raises(ConfigurationError, match=r"(?s)is not a gtl_nb gateway .*none was sent"):
            send_reload(other.pid)
        assert not got.exists() and other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="asks /proc which program a process runs")
def test_gtl_reload_never_ends_a_gateway_on_its_pipes(tmp_path: Path) -> None:
    # a gateway on --stdio has no reload: SIGHUP ends it, so gtl reload refuses and sends nothing
    code = "import time; time.sleep(60)"
    stdio = subprocess.Popen([sys.executable, "-c", code, "gtl_nb", "serve", "--stdio"])
    try:
        deadline = time.monotonic() + 5
        while b"--stdio" not in Path(f"/proc/{stdio.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        done = subprocess.run(
            [sys.executable, "-m", "gtl_nb", "reload", "--pid", str(stdio.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0 and "--stdio" in done.stderr and "none was sent" in done.stderr, done.stderr
        assert stdio.poll() is None
    finally:
        stdio.kill()
        stdio.wait()
