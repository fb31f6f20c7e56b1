"""Edges of the stdio gateway's one connection, spoken frame by frame over a real gateway process's pipes.

* stopping (SIGTERM) with several requests read at once: every request read gets exactly one ``error``
  (``PROVIDER_UNAVAILABLE``, the gateway stopping) and one ledger row — none is left silent because the
  connection found itself idle after the first refusal (``serve_stdio`` on real pipes in this process, whose
  loop the test holds so that the stop and the read reach it in one turn);
* the end of standard input (the client closing its side) is the client leaving (docs/transports.md, "stdio"):
  what runs is cancelled, and every request read still gets its one terminal event, written before the
  gateway exits, and its one ledger row.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

from gtl_nb.engine.ledger import Ledger
from gtl_nb.engine.settings import load_settings
from gtl_nb.gateway.devauth import DevAuth
from gtl_nb.gateway.listeners import Shutdown
from gtl_nb.gateway.stdio import serve_stdio
from gtl_nb.transports.stdio import gateway_command
from tests.gateway.conftest import write_toml

LONG = "Explain streaming, cancellation, pipes, gateways, ledgers and simulators, one by one, at length. " * 4


class Frames:
    """A stdio gateway process and the frames it writes, read by a thread into a queue (``None``: its end)."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            gateway_command(config), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.frames: Queue[dict[str, Any] | None] = Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.frames.put(json.loads(line))
        self.frames.put(None)

    def write(self, *frames: dict[str, Any]) -> None:
        """Every frame in one write."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"".join(json.dumps(frame).encode() + b"\n" for frame in frames))
        self.process.stdin.flush()

    def until(self, check: Any, seconds: float = 30) -> dict[str, Any]:
        """Read frames until one passes ``check``; returns it (the test fails at the gateway's end)."""
        while True:
            try:
                frame = self.frames.get(timeout=seconds)
            except Empty:
                pytest.fail(f"no such frame within {seconds} s; seen: {self.seen[-5:]}")
            if frame is None:
                pytest.fail(f"the gateway ended first; seen: {self.seen[-5:]}")
            self.seen.append(frame)
            if check(frame):
                return frame

    def rest(self, seconds: float = 60) -> None:
        """Read every frame up to the gateway's end, and wait for its exit."""
        while (frame := self.frames.get(timeout=seconds)) is not None:
            self.seen.append(frame)
        assert self.process.wait(seconds) == 0

    def terminals(self) -> Counter[str]:
        """How many ``done`` or ``error`` frames each session got."""
        return Counter(frame["session_id"] for frame in self.seen if frame.get("type") in ("done", "error"))

    def ending(self, session_id: str) -> dict[str, Any]:
        return next(f for f in self.seen if f.get("type") in ("done", "error") and f["session_id"] == session_id)


class InProcess(Frames):
    """``serve_stdio`` on real pipes, on an asyncio loop thread of this process, with a ``Shutdown`` the test
    begins itself (``Frames``' reading and writing, over those pipes)."""

    def __init__(self, config: Path) -> None:
        self.settings = load_settings(config=str(config))
        self.shutdown = Shutdown(grace=60)
        self.loop = asyncio.new_event_loop()
        in_read, self._in_write = os.pipe()
        self._out_read, out_write = os.pipe()
        self.frames = Queue()
        self.seen = []
        authenticate = DevAuth.from_settings("none", principal="stdio-test", environ={})

        async def main() -> None:
            try:
                await serve_stdio(
                    self.settings, authenticate=authenticate, frames_fd=out_write, in_fd=in_read, shutdown=self.shutdown
                )
            finally:
                os.close(in_read)

        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self._thread.start()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with open(self._out_read, "rb") as out:
            for line in out:
                if line.strip():
                    self.frames.put(json.loads(line))
        self.frames.put(None)

    def write(self, *frames: dict[str, Any]) -> None:
        os.write(self._in_write, b"".join(json.dumps(frame).encode() + b"\n" for frame in frames))

    def rest(self, seconds: float = 60) -> None:
        while (frame := self.frames.get(timeout=seconds)) is not None:
            self.seen.append(frame)
        self._thread.join(seconds)
        assert not self._thread.is_alive()

    @contextmanager
    def holding_the_loop(self) -> Iterator[None]:
        """The loop waits in a callback for the block's end: what the block does reaches it together."""
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(30)

        self.loop.call_soon_threadsafe(hold)
        assert held.wait(30)
        try:
            yield
        finally:
            release.set()

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._in_write)
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.shutdown.begin)
            self._thread.join(30)
        if not self.loop.is_running():
            self.loop.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Frames, Path]]:
    """A stdio gateway whose ``slowecho`` streams a long answer for seconds, a minute of grace, its own ledger;
    past the hello exchange and the provider list."""
    ledger = tmp_path / "ledger.sqlite"
    config = write_toml(
        tmp_path / "gtl.toml",
        {
            "providers.slowecho": {"type": "echo", "options": {"pace": 0.05}},
            "ledger": {"path": str(ledger)},
            "gateway": {"shutdown_grace": 60},
        },
    )
    frames = Frames(config)
    try:
        frames.write({"type": "hello", "versions": ["1.0"]})
        frames.until(lambda frame: frame.get("type") == "provider_info" and not frame.get("provider"))
        yield frames, ledger
    finally:
        if frames.process.poll() is None:
            frames.process.kill()
            frames.process.wait(10)


def _request(session_id: str, model: str = "echo", content: str = "hello") -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": session_id,
        "model": model,
        "messages": [{"role": "user", "content": content}],
    }


def _one_row_each(ledger: Path, session_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    rows = Ledger(ledger).rows()
    assert not [row for row in rows if row["status"] == "started"], rows
    counts = Counter(row["session_id"] for row in rows)
    assert {sid: counts[sid] for sid in session_ids} == dict.fromkeys(session_ids, 1), counts
    return {row["session_id"]: (row["status"], row["error_code"]) for row in rows}


def test_every_request_read_as_the_stop_begins_gets_one_error_and_one_row(tmp_path):
    """An idle stdio gateway (``serve_stdio`` on real pipes, on a loop thread of this process) reads three
    requests in the turn its stop begins: the first is refused, and the connection — idle — used to close then,
    leaving the other two read and unanswered. Each gets its ``PROVIDER_UNAVAILABLE`` and its row now.

    The loop is held in a callback while the requests are written and the stop is queued, so that in its next
    turns the bytes are read, the stop begins, and only then does the reader take the requests (an order a
    signal arriving with the bytes can give)."""
    ledger = tmp_path / "ledger.sqlite"
    config = write_toml(tmp_path / "gtl.toml", {"providers.echo": {}, "ledger": {"path": str(ledger)}})
    with InProcess(config) as gateway:
        gateway.write({"type": "hello", "versions": ["1.0"]})
        gateway.until(lambda frame: frame.get("type") == "provider_info" and not frame.get("provider"))
        with gateway.holding_the_loop():
            gateway.write(_request("r1"), _request("r2"), _request("r3"))
            # in the loop's next turn the read's callback comes after this one, which queues the stop behind
            # it: the bytes are read, then the stop begins, then the reader takes the requests
            gateway.loop.call_soon_threadsafe(gateway.loop.call_soon, gateway.shutdown.begin)
        gateway.rest()
    asked = ["r1", "r2", "r3"]
    assert {sid: gateway.terminals()[sid] for sid in asked} == dict.fromkeys(asked, 1), gateway.seen[-6:]
    assert {gateway.ending(sid)["code"] for sid in asked} == {"PROVIDER_UNAVAILABLE"}
    rows = _one_row_each(ledger, asked)
    assert {rows[sid] for sid in asked} == {("error", "PROVIDER_UNAVAILABLE")}


def test_the_end_of_standard_input_cancels_what_runs_and_every_request_read_hears_so(gateway):
    """Requests, then the end of standard input at once (the client's side of the pipe closed, its reading
    side still open): the gateway cancels what runs — the end of its input is the client leaving — and each
    request read gets its one terminal event before the gateway exits, and one row."""
    frames, ledger = gateway
    frames.write(_request("long", "slowecho:echo", LONG))
    frames.until(lambda frame: frame.get("type") == "token" and frame["session_id"] == "long")
    frames.write(_request("a", "slowecho:echo", LONG), _request("b", "slowecho:echo", LONG))
    assert frames.process.stdin is not None
    frames.process.stdin.close()
    frames.rest()
    asked = ["long", "a", "b"]
    assert {sid: frames.terminals()[sid] for sid in asked} == dict.fromkeys(asked, 1), frames.seen[-6:]
    assert {frames.ending(sid)["code"] for sid in asked} == {"CANCELLED"}
    rows = _one_row_each(ledger, asked)
    assert {rows[sid] for sid in asked} == {("cancelled", "CANCELLED")}


@pytest.mark.parametrize("second", ["malformed", "duplicate"])
def test_a_session_the_connection_ended_is_not_ended_twice_at_the_end_of_standard_input(gateway, second):
    """A request, then a frame the connection answers for that session itself — a malformed request of the
    same id, or another request under the running id — and the end of standard input at once: the client
    was told that session's end by the connection, so the end of the input writes it no second one."""
    frames, ledger = gateway
    frames.write(_request("a", "slowecho:echo", LONG))
    frames.until(lambda frame: frame.get("type") == "token" and frame["session_id"] == "a")
    if second == "malformed":
        frames.write({"type": "completion_request", "session_id": "a"})
    else:
        frames.write(_request("a", "slowecho:echo", "again"))
    assert frames.process.stdin is not None
    frames.process.stdin.close()
    frames.rest()
    assert frames.terminals()["a"] == 1, frames.seen[-4:]
    assert frames.ending("a")["code"] == "INVALID_REQUEST"
    _one_row_each(ledger, ["a"])


def test_a_file_of_requests_on_standard_input_is_a_batch_answered_into_a_file(tmp_path):
    """``gtl serve --stdio < requests.jsonl > answers.jsonl``: the event loop's pipes take no regular file
    (uvloop aborted the process, no message, nothing written), and a file's end is the end of the
    requests, not a client leaving — each request runs to its ``done`` and the process exits 0."""
    ledger = tmp_path / "ledger.sqlite"
    config = write_toml(
        tmp_path / "gtl.toml",
        {"providers.slowecho": {"type": "echo", "options": {"pace": 0.02}}, "ledger": {"path": str(ledger)}},
    )
    requests, answers = tmp_path / "requests.jsonl", tmp_path / "answers.jsonl"
    asked = ["slow", "quick"]
    requests.write_text(
        json.dumps(_request("slow", "slowecho:echo", "a few words to stream"))
        + "\n"
        + json.dumps(_request("quick"))
        + "\n"
    )
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        finished = subprocess.run(
            gateway_command(config), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, timeout=120, check=False
        )
    assert finished.returncode == 0, finished.stderr.decode()[-2000:]
    frames = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    ends = {frame["session_id"]: frame["type"] for frame in frames if frame["type"] in ("done", "error")}
    assert ends == dict.fromkeys(asked, "done"), frames[-4:]
    assert any(frame["type"] == "token" and frame["session_id"] == "slow" for frame in frames)
    assert set(_one_row_each(ledger, asked).values()) == {("ok", None)}
