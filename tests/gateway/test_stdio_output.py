"""The stdio gateway's standard output failing, on a real gateway process (docs/transports.md, "stdio"):

* answers written into a file that fills up mid-batch (``gtl serve --stdio < requests > answers`` on a full
  disk; here the process's file size limit, ``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored: ``EFBIG``): the
  sessions still running are cancelled as for a client that left (rows ``cancelled``, none left ``started``),
  one ``ERROR`` line says why, and the process exits 1 — not 0 over a truncated file;
* standard output a device that refuses every write (``> /dev/full``): one clear line, exit 1, no row left
  ``started`` (uvloop aborted the process, SIGABRT and no message);
* standard output closed (``>&-``): one ``gtl gateway: error:`` line and exit 2, no traceback;
* a pipe's reader that goes away while the gateway's input is still open: the same as a failed write when a
  session was running or an answer was left unwritten — and no failure at all (exit 0, no ``ERROR``) when it
  left once it had read every answer, nothing running (``gtl serve --stdio < requests | head -n ALL``);
* standard input ``/dev/null`` (cron, systemd, ``nohup``): read like a file, an empty batch, exit 0 (uvloop
  aborted the process, SIGABRT and no message);
* a file of requests larger than ``max_sessions_per_connection``: read as sessions end (back-pressure), every
  request run, none refused with an ``OVERLOADED`` nobody could retry — and a batch waiting at the cap when its
  answers' reader goes away ends at once.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
from pathlib import Path

from gtl_nb.engine.ledger import Ledger
from gtl_nb.transports.stdio import gateway_command
from tests.gateway.conftest import write_toml
from tests.gateway.test_stdio_edges import _request

LIMIT = 1024 * 1024
"""The answers file's size limit: two long echo answers, streamed, pass it; the ledger stays far below it."""
PROMPT = "Streaming answers into a file that fills up: every session still running must be told. " * 700
"""About 60 KB: echo quotes it back streamed, ~800 KB of token frames."""


def _config(tmp_path: Path, **gateway: object) -> tuple[Path, Path]:
    ledger = tmp_path / "ledger.sqlite"
    tables: dict[str, object] = {
        "providers.echo": {},
        # minutes of streaming: still running when the answers file fills up
        "providers.slowecho": {"type": "echo", "options": {"pace": 0.05}},
        "ledger": {"path": str(ledger)},
    }
    if gateway:
        tables["gateway"] = gateway
    return write_toml(tmp_path / "gtl.toml", tables), ledger


def _file_size_limit() -> None:
    """In the gateway's process, before it starts: writes past ``LIMIT`` bytes fail with ``EFBIG``."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _rows(ledger: Path) -> dict[str, str]:
    rows = Ledger(ledger).rows()
    assert not [row for row in rows if row["status"] == "started"], rows
    return {row["session_id"]: row["status"] for row in rows}


def test_answers_that_fill_the_file_cancel_what_runs_say_so_and_exit_1(tmp_path):
    config, ledger = _config(tmp_path)
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    asked = [
        _request("slow1", "slowecho:echo", PROMPT),
        _request("slow2", "slowecho:echo", PROMPT),
        _request("fast1", "echo", PROMPT),
        _request("fast2", "echo", PROMPT),
    ]
    requests.write_text("".join(json.dumps(request) + "\n" for request in asked))
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        finished = subprocess.run(
            gateway_command(config),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            preexec_fn=_file_size_limit,  # the child's own limit, set before it runs anything
            timeout=120,
            check=False,
        )
    stderr = finished.stderr.decode()
    assert finished.returncode == 1, stderr[-2000:]
    assert answers.stat().st_size == LIMIT  # the file is full: its last frame cut
    errors = [line for line in stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot write the answers to standard output: File too large" in errors[0], stderr
    assert "Traceback" not in stderr
    rows = _rows(ledger)
    assert rows["slow1"] == rows["slow2"] == "cancelled"  # minutes from their end: not run on for nobody


def test_standard_output_that_refuses_every_write_is_one_error_line_and_exit_1(tmp_path):
    config, ledger = _config(tmp_path)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(_request("s1", "slowecho:echo", PROMPT)) + "\n")
    with requests.open("rb") as stdin, open("/dev/full", "wb") as stdout:
        finished = subprocess.run(
            gateway_command(config), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=120, check=False
        )
    stderr = finished.stderr.decode()
    assert finished.returncode == 1, (finished.returncode, stderr[-2000:])
    assert "cannot write the answers to standard output: No space left on device" in stderr
    assert "Traceback" not in stderr
    assert set(_rows(ledger).values()) <= {"cancelled"}


def test_a_closed_standard_output_is_one_error_line_and_exit_2(tmp_path):
    config, _ = _config(tmp_path)

    def close_standard_output() -> None:
        os.close(1)

    finished = subprocess.run(
        gateway_command(config),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=close_standard_output,  # ``gtl serve --stdio >&-``
        timeout=120,
        check=False,
    )
    stderr = finished.stderr.decode()
    assert finished.returncode == 2, stderr
    assert stderr.strip().splitlines() == [
        "gtl gateway: error: standard output is closed: the stdio gateway writes its answers there "
        "(give it a pipe or a file)"
    ]


def test_a_batch_larger_than_the_session_cap_waits_at_the_cap_and_runs_every_request(tmp_path):
    """Six streamed requests in a file, a connection allowed two sessions at once: the file is read as sessions
    end (back-pressure), not refused past the cap with a retryable ``OVERLOADED`` nobody could retry."""
    ledger = tmp_path / "ledger.sqlite"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "providers.slowecho": {"type": "echo", "options": {"pace": 0.02}},
            "ledger": {"path": str(ledger)},
            "gateway": {"max_sessions_per_connection": 2},
        },
    )
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    asked = [f"b{n}" for n in range(6)]
    requests.write_text("".join(json.dumps(_request(sid, "slowecho:echo", "a few words")) + "\n" for sid in asked))
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        finished = subprocess.run(
            gateway_command(config), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=120, check=False
        )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    frames = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    ends = {
        frame["session_id"]: frame.get("code", frame["type"]) for frame in frames if frame["type"] in ("done", "error")
    }
    assert ends == dict.fromkeys(asked, "done"), ends
    assert _rows(ledger) == dict.fromkeys(asked, "ok")


def test_a_reader_of_the_answers_that_goes_away_while_the_input_is_open_cancels_what_runs(tmp_path):
    """A client that stops reading the gateway's standard output for good (its end of the pipe closed) while
    the gateway's input is still open: nobody can be answered, so what runs is cancelled (rows ``cancelled``)
    and the process exits 1 with one ``ERROR`` line — it used to run every session to its end, billed, and
    wait for an input end that might never come."""
    config, ledger = _config(tmp_path)
    errors_file = tmp_path / "stderr.txt"
    with errors_file.open("wb") as errors_out:
        process = subprocess.Popen(
            gateway_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors_out
        )
    try:
        assert process.stdin is not None and process.stdout is not None
        hello = json.dumps({"type": "hello", "versions": ["1.0"]})
        process.stdin.write(f"{hello}\n{json.dumps(_request('s1', 'slowecho:echo', PROMPT))}\n".encode())
        process.stdin.flush()
        while (line := process.stdout.readline()) and b'"type":"token"' not in line:
            pass  # until the session streams
        process.stdout.close()
        process.wait(60)  # the input stays open all the while
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdin.close()
    stderr = errors_file.read_text()
    assert process.returncode == 1, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "the reader of standard output went away" in errors[0], stderr
    assert _rows(ledger) == {"s1": "cancelled"}


def test_a_batch_waiting_at_the_session_cap_ends_when_its_answers_cannot_be_written(tmp_path):
    """The back-pressure and a reader that goes away together: a batch allowed two sessions, both paced (minutes
    long), the third request waiting for one to end, when the reader of the answers closes its end — the wait
    ends with the connection (it would have lasted until a session ran its minutes out): what runs is
    cancelled, the waiting request never starts, exit 1."""
    config, ledger = _config(tmp_path, max_sessions_per_connection=2)
    requests = tmp_path / "requests.jsonl"
    asked = ["slow1", "slow2", "slow3"]
    requests.write_text("".join(json.dumps(_request(sid, "slowecho:echo", PROMPT)) + "\n" for sid in asked))
    errors_file = tmp_path / "stderr.txt"
    with requests.open("rb") as stdin, errors_file.open("wb") as errors_out:
        process = subprocess.Popen(gateway_command(config), stdin=stdin, stdout=subprocess.PIPE, stderr=errors_out)
    try:
        assert process.stdout is not None
        while (line := process.stdout.readline()) and not (b'"type":"token"' in line and b'"slow2"' in line):
            pass  # until both sessions stream: the third request waits at the cap
        process.stdout.close()
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    stderr = errors_file.read_text()
    assert process.returncode == 1, stderr[-2000:]
    assert "the reader of standard output went away" in stderr
    assert _rows(ledger) == {"slow1": "cancelled", "slow2": "cancelled"}


def _read_every_answer_then_leave(process: subprocess.Popen[bytes], sessions: list[str]) -> int:
    """Read the gateway's answers until each of ``sessions`` has its ``done`` (a frame per line), then close
    the reading end, as ``head -n`` or a script that got what it waited for does; the lines read."""
    assert process.stdout is not None
    waiting, lines = set(sessions), 0
    while waiting and (line := process.stdout.readline()):
        lines += 1
        frame = json.loads(line)
        if frame["type"] == "done":
            waiting.discard(frame["session_id"])
    process.stdout.close()
    assert not waiting, waiting
    return lines


def test_a_reader_that_leaves_once_it_has_every_answer_is_no_failure(tmp_path):
    """A client that reads every answer, then closes its end of the gateway's output while the gateway's input
    is still open (so the gateway finds its reader gone before anything else ends the connection): nothing
    was left unwritten and nothing runs, so the process exits 0 with no ``ERROR`` — it said sessions were
    cancelled when none were, and exited 1."""
    config, ledger = _config(tmp_path)
    asked = [f"r{n}" for n in range(3)]
    errors_file = tmp_path / "stderr.txt"
    with errors_file.open("wb") as errors_out:
        process = subprocess.Popen(
            gateway_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors_out
        )
    try:
        assert process.stdin is not None
        hello = json.dumps({"type": "hello", "versions": ["1.0"]})
        lines = [hello] + [json.dumps(_request(sid, "echo", "hi")) for sid in asked]
        process.stdin.write("".join(line + "\n" for line in lines).encode())
        process.stdin.flush()
        _read_every_answer_then_leave(process, asked)
        process.wait(60)  # the input stays open all the while: the reader's leaving ends the connection
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdin.close()
    stderr = errors_file.read_text()
    assert process.returncode == 0, stderr[-2000:]
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr
    assert _rows(ledger) == dict.fromkeys(asked, "ok")


def test_a_batch_read_to_its_last_answer_by_head_exits_0(tmp_path):
    """``gtl serve --stdio < requests | head -n ALL``: the file's requests all answered and read, then ``head``
    gone while the gateway tears down — exit 0, no ``ERROR``, every row ``ok``."""
    config, ledger = _config(tmp_path)
    asked = [f"h{n}" for n in range(5)]
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    requests.write_text("".join(json.dumps(_request(sid, "echo", "hi")) + "\n" for sid in asked))
    with requests.open("rb") as stdin, answers.open("wb") as stdout:  # how many lines the answers are
        subprocess.run(gateway_command(config), stdin=stdin, stdout=stdout, timeout=120, check=True)
    every_line = len(answers.read_bytes().splitlines())
    errors_file = tmp_path / "stderr.txt"
    with requests.open("rb") as stdin, errors_file.open("wb") as errors_out:
        gateway = subprocess.Popen(gateway_command(config), stdin=stdin, stdout=subprocess.PIPE, stderr=errors_out)
    assert gateway.stdout is not None
    head = subprocess.Popen(["head", "-n", str(every_line)], stdin=gateway.stdout, stdout=subprocess.PIPE)
    gateway.stdout.close()  # head is its only reader
    try:
        read, _ = head.communicate(timeout=120)
        gateway.wait(60)
    finally:
        for process in (head, gateway):
            if process.poll() is None:
                process.kill()
                process.wait(10)
    stderr = errors_file.read_text()
    assert gateway.returncode == 0, stderr[-2000:]
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr
    done = {json.loads(line)["session_id"] for line in read.splitlines() if b'"type":"done"' in line}
    assert done == set(asked)
    statuses = [row["status"] for row in Ledger(ledger).rows()]  # both runs': each request ran twice
    assert statuses == ["ok"] * 2 * len(asked), statuses


def test_standard_input_dev_null_is_an_empty_batch(tmp_path):
    """``gtl serve --stdio < /dev/null``: a device that is neither pipe, socket nor terminal is read like a
    file — no request, nothing written, exit 0 (uvloop's pipe reader aborted the process on it, silently)."""
    config, _ = _config(tmp_path)
    with open(os.devnull, "rb") as stdin:
        finished = subprocess.run(gateway_command(config), stdin=stdin, capture_output=True, timeout=120, check=False)
    stderr = finished.stderr.decode()
    assert finished.returncode == 0, (finished.returncode, stderr[-2000:])
    assert finished.stdout == b""
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr
