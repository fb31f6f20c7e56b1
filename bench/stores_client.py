"""The load client of ``bench.bench_stores``: ``bench.loadclient`` with one GhostToken per worker.

``python -m bench.stores_client`` speaks the same line protocol as ``python -m bench.loadclient``; a
phase's path may carry ``extra["tokens"]``, a list of tokens: worker *i* sends ``tokens[i]`` (modulo
their number) for that phase. The budget bench gives every worker of every phase a principal of its
own, so what a budget check reads (the principal's last minute) is that phase's own requests on every
configuration alike, whatever ran before it. Connections stay open between phases as in
``bench.loadclient``: only the request head changes. Paths of kind ``chat`` only.
"""

from __future__ import annotations

import asyncio

from bench.httpclient import request_head
from bench.loadclient import LoadClient, run
from bench.paths import Caller, ChatCaller, PathSpec
from bench.upstream import install_fast_loop


class TokenPerWorker(LoadClient):
    """``LoadClient`` whose chat workers send the phase's ``extra["tokens"][i]``."""

    async def workers(self, spec: PathSpec, count: int) -> list[Caller]:
        callers = await super().workers(spec, count)
        tokens = spec.extra.get("tokens") or [spec.token]
        for index, caller in enumerate(callers):
            if not isinstance(caller, ChatCaller):
                raise ValueError(f"bench.stores_client drives chat paths only, not {spec.kind!r}")
            headers = {"content-type": "application/json", "authorization": f"Bearer {tokens[index % len(tokens)]}"}
            caller.head = request_head("POST", "/v1/chat/completions", f"{spec.host}:{spec.port}", headers)
        return callers


def main() -> None:
    install_fast_loop()
    asyncio.run(run(TokenPerWorker()))


if __name__ == "__main__":
    main()
