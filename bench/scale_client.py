"""One of ``bench.scale``'s client processes: many long-lived streaming sessions, each on its own connection.

``python -m bench.scale_client`` reads one JSON object on standard input::

    {"host": "127.0.0.1", "port": P, "token": "...", "sessions": 2500, "first": 0, "rate": 125,
     "tokens": 16, "timeout": 200, "compression": true, "addresses": ["127.0.0.2", …]}

Session ``i`` (counting from ``first``) starts at ``i / rate`` seconds, from source address
``addresses[i % len]``, over SSE when ``i`` is even and WebSocket when odd, and asks for a streamed answer
of ``tokens`` tokens (the paced upstream sends one every few seconds). Each session records its time to
first token, the tokens it got, and whether it ended with ``done``. Prints ``{"started": n}`` once every
session has been sent, then one JSON summary when all have ended (or at ``timeout``).

Compression as the project's clients do it: SSE asks for gzip (decoded here before counting), the
WebSocket offers permessage-deflate; ``"compression": false`` turns both off.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Any

from bench.httpclient import HttpConnection, request_head
from bench.stats import percentile
from bench.upstream import MODEL, TOKEN, install_fast_loop

PROMPT = "A long answer, slowly."


@dataclass
class SessionResult:
    kind: str
    ttft: float | None
    tokens: int
    error: str | None


def _request(index: int, tokens: int) -> dict[str, Any]:
    return {
        "type": "completion_request",
        "session_id": f"scale-{index}",
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "stream": True,
    }


async def sse_session(config: dict[str, Any], index: int, address: str) -> SessionResult:
    """One SSE session on a connection of its own from ``address``."""
    connection = HttpConnection(config["host"], config["port"], local_host=address)
    headers = {"content-type": "application/json", "authorization": f"Bearer {config['token']}"}
    body_filter = None
    if config.get("compression", True):
        headers["accept-encoding"] = "gzip"
        body_filter = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    head = request_head("POST", "/v1/gtl/sse", f"{config['host']}:{config['port']}", headers)
    body = json.dumps(_request(index, config["tokens"])).encode()
    try:
        reply = await connection.request(head, body, TOKEN.encode(), b"event: done", body_filter=body_filter)
    except (OSError, ConnectionError, ValueError, zlib.error) as exc:
        return SessionResult("sse", None, 0, f"sse connection: {type(exc).__name__}")
    finally:
        connection.close()
    error = None
    if reply.status != 200:
        error = f"sse status {reply.status}"
    elif not reply.ended:
        error = "sse: no done"
    return SessionResult("sse", reply.ttft, reply.markers, error)


async def ws_session(config: dict[str, Any], index: int, address: str) -> SessionResult:
    """One WebSocket session (hello, one completion_request) on a connection of its own."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    url = f"ws://{config['host']}:{config['port']}/v1/gtl/ws"
    headers = {"Authorization": f"Bearer {config['token']}"}
    compression = "deflate" if config.get("compression", True) else None
    start = time.perf_counter()
    first: float | None = None
    count = 0
    try:
        async with connect(
            url, additional_headers=headers, compression=compression, local_addr=(address, 0), open_timeout=60
        ) as socket:
            start = time.perf_counter()
            await socket.send(json.dumps({"type": "hello", "versions": ["1.0"], "features": []}))
            await socket.send(json.dumps(_request(index, config["tokens"])))
            async for message in socket:
                frame = json.loads(message)
                kind = frame.get("type")
                if kind == "token":
                    count += frame.get("text", "").count(TOKEN)
                    if first is None:
                        first = time.perf_counter() - start
                elif kind == "done":
                    return SessionResult("ws", first, count, None)
                elif kind == "error":
                    return SessionResult("ws", first, count, f"ws error {frame.get('code')}")
    except (OSError, WebSocketException, asyncio.TimeoutError) as exc:
        return SessionResult("ws", first, count, f"ws connection: {type(exc).__name__}")
    return SessionResult("ws", first, count, "ws: closed before done")


async def run(config: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    addresses = config["addresses"]
    tasks = []
    for offset in range(config["sessions"]):
        index = config["first"] + offset
        delay = begin + offset / config["rate"] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        session = sse_session if index % 2 == 0 else ws_session
        tasks.append(asyncio.create_task(session(config, index, addresses[index % len(addresses)])))
    print(json.dumps({"started": len(tasks)}), flush=True)
    done, pending = await asyncio.wait(tasks, timeout=config["timeout"])
    for task in pending:
        task.cancel()
    results = [task.result() for task in done]
    errors: dict[str, int] = {}
    for result in results:
        if result.error:
            errors[result.error] = errors.get(result.error, 0) + 1
    if pending:
        errors["still running at the timeout"] = len(pending)
    ttfts = sorted(r.ttft * 1000 for r in results if r.ttft is not None)
    return {
        "sessions": config["sessions"],
        "finished": len(results),
        "ok": sum(1 for r in results if r.error is None),
        "errors": errors,
        "lost_tokens": sum(max(0, config["tokens"] - r.tokens) for r in results),
        "extra_tokens": sum(max(0, r.tokens - config["tokens"]) for r in results),
        "ttft_ms": ttfts,
        "by_kind": {kind: sum(1 for r in results if r.kind == kind and r.error is None) for kind in ("sse", "ws")},
        "ttft_p99": percentile(ttfts, 99) if ttfts else None,
    }


def main() -> None:
    config = json.loads(sys.stdin.readline())
    install_fast_loop()
    summary = asyncio.run(run(config))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
