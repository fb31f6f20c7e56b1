"""Every request leaves exactly one ledger row, whatever way it ends."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import gtl_nb
from gtl_nb import sim
from gtl_nb.engine.ledger import Ledger
from gtl_nb.protocol import AuthenticationError, ConfigurationError, Token
from tests.ledger_wait import EXITS_MID_STREAM


@pytest.fixture
def ledger_path(tmp_path):
    return tmp_path / "ledger.sqlite3"


def rows(path):
    return Ledger(path).to_dataframe()


def test_ok_error_and_cancelled_requests_each_leave_one_row(ledger_path):
    with sim.running("openai") as url:
        client = gtl_nb.connect(
            providers={"openai": {"api_key": "sim-key", "base_url": url}, "echo": {"options": {"pace": 0.01}}},
            ledger=ledger_path,
            user="ada",
            environ={},
        )
        ok = client.complete("gpt-4o-mini", "hello")
        bad = gtl_nb.connect(providers={"openai": {"api_key": "nope", "base_url": url}}, ledger=ledger_path, environ={})
        with pytest.raises(AuthenticationError):
            bad.complete("gpt-4o-mini", "hello")
        stream = client.stream("echo", "cancel me after one token")
        for event in stream:
            if isinstance(event, Token):
                break
        stream.close()
        client.close()
        bad.close()
    frame = rows(ledger_path).set_index("session_id")
    assert len(frame) == 3
    row = frame.loc[ok.session_id]
    assert row["status"] == "ok" and row["user"] == "ada"
    assert row["deployment"] == "openai" and row["provider_type"] == "openai" and row["model"] == "gpt-4o-mini"
    assert row["tokens_in"] == ok.usage.tokens_in and row["tokens_out"] == ok.usage.tokens_out
    assert row["cost"] == pytest.approx(ok.cost)
    assert row["latency_ms"] > 0
    statuses = sorted(frame["status"])
    assert statuses == ["cancelled", "error", "ok"]
    assert frame[frame["status"] == "error"]["error_code"].iloc[0] == "AUTH_FAILED"
    assert frame.loc[stream.session_id]["error_code"] == "CANCELLED"


def test_failover_path_is_recorded(ledger_path):
    with sim.running("openai", faults=sim.Fault.http(503)) as broken, sim.running("anthropic") as healthy:
        client = gtl_nb.connect(
            providers={
                "openai": {"api_key": "sim-key", "base_url": broken},
                "anthropic": {"api_key": "sim-key", "base_url": healthy},
            },
            ledger=ledger_path,
            environ={},
        )
        answer = client.complete("gpt-4o-mini", "hi", providers=["openai", "anthropic:claude-sonnet-4-5"])
        client.close()
    assert answer.provider == "anthropic"
    row = rows(ledger_path).iloc[0]
    assert row["deployment"] == "anthropic" and row["status"] == "ok"
    assert "openai" in row["failover_path"] and "anthropic" in row["failover_path"]


KILLED = textwrap.dedent(
    """
    import sys, gtl_nb
    from gtl_nb.protocol import Token
    client = gtl_nb.connect(providers={"openai": {"api_key": "sim-key", "base_url": sys.argv[1]}},
                            ledger=sys.argv[2], environ={})
    for event in client.stream("gpt-4o-mini", "a slow answer"):
        if isinstance(event, Token):
            print("first token", flush=True)
            break_here = sys.stdin.read()  # wait to be killed
    """
)


def test_a_process_killed_mid_stream_leaves_one_interrupted_row(ledger_path):
    with sim.running("openai", pace=0.2) as url:
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED, url, str(ledger_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "first token"
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
    frame = rows(ledger_path)  # opening the ledger recovers rows of dead processes
    assert len(frame) == 1
    assert frame.iloc[0]["status"] == "interrupted"


def test_a_closed_client_says_so_when_asked_for_usage_or_a_batch(ledger_path):
    # usage() read a closed ledger: LedgerStateError, code INTERNAL, as if the library had failed
    client = gtl_nb.connect(ledger=ledger_path, environ={})
    client.complete("echo", "hi")
    client.close()
    for call in (client.usage, lambda: client.batch(["hi"], model="echo"), lambda: client.compare(["echo"], "hi")):
        with pytest.raises(ConfigurationError, match=r"this client is closed; gtl_nb\.connect"):
            call()
    assert list(gtl_nb.connect(ledger=ledger_path, environ={}).usage()["status"]) == ["ok"]  # a new one reads it


def test_exiting_with_sessions_open_ends_their_rows_cancelled(ledger_path):
    # the ledger's writer registers its exit drain after the loop thread's stop, and atexit runs the
    # last registered first: the writer closed before the loop's sessions could record their ends
    done = subprocess.run(
        [sys.executable, "-c", EXITS_MID_STREAM, str(ledger_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == "mid-stream", done.stderr
    assert list(rows(ledger_path)["status"]) == ["cancelled", "cancelled"]  # not left started (interrupted)


def test_one_model_name_per_row_whatever_the_outcome(ledger_path):
    # a failed request named with its deployment prefix is recorded with the bare model, as a
    # successful one is, and the deployment in its own column
    with sim.running("openai") as url:
        providers = {
            "goodoa": {"type": "openai", "api_key": "sim-key", "base_url": url},
            "badoa": {"type": "openai", "api_key": "wrong-key", "base_url": url},
        }
        client = gtl_nb.connect(providers=providers, ledger=ledger_path, environ={})
        client.complete("goodoa:gpt-4o-mini", "hello")
        with pytest.raises(AuthenticationError):
            client.complete("badoa:gpt-4o-mini", "hello")
        client.close()
    frame = rows(ledger_path)
    assert list(frame["model"]) == ["gpt-4o-mini", "gpt-4o-mini"]
    assert list(frame["deployment"]) == ["goodoa", "badoa"]


def test_an_alias_answered_by_its_snapshot_is_recorded_as_the_model_asked(ledger_path):
    # OpenAI answers gpt-4o-mini as gpt-4o-mini-2024-07-18 (its simulator too): the caller reads the snapshot
    # in the answer, the ledger keeps the model asked, so an answered and a failed request of one model are
    # one model in a table by model
    with sim.running("openai") as url:
        providers = {
            "goodoa": {"type": "openai", "api_key": "sim-key", "base_url": url},
            "badoa": {"type": "openai", "api_key": "wrong-key", "base_url": url},
        }
        client = gtl_nb.connect(providers=providers, ledger=ledger_path, environ={})
        answer = client.complete("goodoa:gpt-4o-mini", "hello")
        with pytest.raises(AuthenticationError):
            client.complete("badoa:gpt-4o-mini", "hello")
        client.close()
    assert answer.model == "gpt-4o-mini-2024-07-18"
    assert list(rows(ledger_path)["model"]) == ["gpt-4o-mini", "gpt-4o-mini"]


def test_a_question_without_an_answer_is_a_retryable_error_after_the_stores_own_wait(ledger_path, monkeypatch):
    """``usage()`` and the gateway's queries wait longer than a gateway's query and a shared store's read
    wait themselves (their answer says why); past that, a retryable error naming what had no answer —
    not a bare ``TimeoutError``."""
    import asyncio

    import gtl_nb.client as client_module
    from gtl_nb.engine.stores.postgres_ledger import PostgresUsageLedger
    from gtl_nb.protocol import ProviderUnavailableError
    from gtl_nb.transports.questions import QUERY_TIMEOUT

    store_wait = inspect.signature(PostgresUsageLedger).parameters["wait_for"].default
    assert max(QUERY_TIMEOUT, store_wait) < client_module.QUESTION_WAIT
    client = gtl_nb.connect(config={"ledger": {"path": str(ledger_path)}})

    async def hung(**_: object) -> list[dict[str, object]]:
        await asyncio.sleep(30)
        return []

    monkeypatch.setattr(client.backend, "usage_rows", hung)
    monkeypatch.setattr(client_module, "QUESTION_WAIT", 0.2)
    with pytest.raises(ProviderUnavailableError, match=r"the usage query had no answer in 0\.2 s") as raised:
        client.usage()
    assert raised.value.retryable

    async def timed_out_itself(**_: object) -> list[dict[str, object]]:
        raise TimeoutError("the store's own timeout")

    monkeypatch.setattr(client.backend, "usage_rows", timed_out_itself)
    with pytest.raises(TimeoutError, match="the store's own timeout"):  # its own answer, not relabelled
        client.usage()
    client.close()
