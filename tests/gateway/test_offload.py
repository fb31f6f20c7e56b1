"""``gateway.offload``: a body over ``OFF_LOOP_BYTES`` is converted in a worker thread, a smaller one on the
event loop's own thread (where a thread's hand-off would cost more than the conversion); an error
raised by the conversion reaches the caller either way."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from gtl_nb.gateway import offload
from gtl_nb.gateway.offload import OFF_LOOP_BYTES, converted
from gtl_nb.protocol.errors import InvalidRequestError
from tests.gateway.conftest import write_toml
from tests.gateway.test_http import serving


def test_a_large_body_is_converted_off_the_loop_and_a_small_one_on_it():
    async def main() -> tuple[threading.Thread, threading.Thread, threading.Thread]:
        def where(_body: bytes) -> threading.Thread:
            return threading.current_thread()

        small = await converted(OFF_LOOP_BYTES, where, b"")
        large = await converted(OFF_LOOP_BYTES + 1, where, b"")
        return threading.current_thread(), small, large

    loop_thread, small, large = asyncio.run(main())
    assert small is loop_thread
    # its own threads: asyncio's default pool runs the stores' calls and name lookups, not to wait behind it
    assert large is not loop_thread and large.name.startswith("gtl-convert")


@pytest.mark.parametrize("size", [10, OFF_LOOP_BYTES + 1])
def test_a_conversions_refusal_reaches_the_caller(size):
    def refuse(_body: bytes) -> None:
        raise InvalidRequestError("messages: too many")

    with pytest.raises(InvalidRequestError, match="too many"):
        asyncio.run(converted(size, refuse, b""))


def test_the_endpoints_hand_a_large_body_to_a_thread_and_keep_a_small_one(tmp_path, monkeypatch):
    """What each HTTP endpoint runs in a worker thread (``offload._in_worker``, recorded): for a body over
    ``OFF_LOOP_BYTES`` its parse or decode and its conversion; for a small body nothing."""
    handed: list[str] = []
    in_worker = offload._in_worker

    async def recording(function, *args):
        handed.append(getattr(function, "__name__", None) or function.func.__name__)
        return await in_worker(function, *args)

    monkeypatch.setattr(offload, "_in_worker", recording)
    tables = {"providers.local": {"type": "echo"}, "ledger": {"enabled": False}}
    with serving(write_toml(tmp_path / "gtl.toml", tables)) as served:
        many = [{"role": "user", "content": "x"}] * 10_000  # ~300 KB
        posts = {  # (path: the body, and the field its messages go in)
            "/v1/chat/completions": ({"model": "local:echo"}, "messages"),
            "/v1/responses": ({"model": "local:echo"}, "input"),
            "/v1/messages": ({"model": "local:echo", "max_tokens": 5}, "messages"),
            "/v1/gtl": (
                {"type": "completion_request", "session_id": "s", "model": "local:echo", "stream": False},
                "messages",
            ),
        }
        expected = {  # (each endpoint's reader: the request mapped, its replay state restored)
            "/v1/chat/completions": ["_parsed", "_chat"],
            "/v1/responses": ["_parsed", "_responses"],
            "/v1/messages": ["_parsed", "_read"],
            "/v1/gtl": ["decode"],
        }
        for path, (body, field) in posts.items():
            handed.clear()
            small = httpx.post(f"{served.url}{path}", json={**body, field: many[:1]}, timeout=60)
            assert small.status_code == 200 and handed == [], (path, handed)
            large = httpx.post(f"{served.url}{path}", json={**body, field: many}, timeout=60)
            assert large.status_code == 200, large.text[:300]
            assert handed == expected[path], (path, handed)
