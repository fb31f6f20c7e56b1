"""A client link's pending ``query`` messages and their answers (feature ``query``; docs/transports.md).

Every link (``ClientLink`` over a channel, ``QuicLink`` over QUIC's control stream) keeps one
``Questions``: ``ask`` sends a ``query`` with a fresh id and waits for its ``answer``; the link hands
each ``answer`` it reads to ``answered``, and ``fail_all`` answers whatever is still pending when the
connection ends, so no caller waits for a gateway that is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gtl_nb.protocol.errors import ProviderUnavailableError, error_from_event
from gtl_nb.protocol.messages import Answer, Error, Query

__all__ = ["QUERY_TIMEOUT", "Questions"]

QUERY_TIMEOUT = 60.0
"""Seconds a query waits for its answer."""


class Questions:
    """The pending queries of one connection (see the module docstring)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._asked = 0

    async def ask(
        self, send: Callable[[Query], Any], name: str, params: dict[str, Any] | None, *, timeout: float = QUERY_TIMEOUT
    ) -> dict[str, Any]:
        """Send the query through ``send`` (which may raise ``GTLError``) and return the answer's result,
        or raise the ``GTLError`` the gateway answered with."""
        self._asked += 1
        qid = f"q{self._asked}"
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[qid] = future
        try:
            sent = send(Query(query_id=qid, name=name, params=params or {}))
            if asyncio.iscoroutine(sent):
                await sent
            answer = await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise ProviderUnavailableError(
                f"the {self.label} did not answer the {name} query in {timeout:g} s"
            ) from None
        finally:
            self._pending.pop(qid, None)
        if answer.error is not None:
            raise error_from_event(answer.error)
        return answer.result or {}

    def answered(self, answer: Answer) -> None:
        """Hand over an ``answer`` the link read (one nobody waits for any more is dropped)."""
        future = self._pending.get(answer.query_id)
        if future is not None and not future.done():
            future.set_result(answer)

    def fail_all(self, error_for: Callable[[str], Error]) -> None:
        """Answer every pending query with ``error_for(query_id)`` (the connection ended)."""
        for qid, future in list(self._pending.items()):
            if not future.done():
                future.set_result(Answer(query_id=qid, error=error_for(qid)))
