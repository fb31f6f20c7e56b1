"""``CorkedTransport``: the writes a connection makes in one turn of the event loop go out as one.

uvicorn writes an HTTP answer's head as soon as the application starts the response and its body
when it is sent: two socket writes — two system calls and, with Nagle off, two TCP segments the
client must take in — for an answer that is ready at once. The WebSocket protocol writes each
message on its own the same way. Wrapped in a ``CorkedTransport``, a connection's writes are held
until the current loop turn ends (``loop.call_soon``) and then written together: the same bytes, in
the same order, a few microseconds later, in one write.

``close`` and ``write_eof`` write what is held first; ``abort`` drops it, as the transport's own
abort drops its buffer. Everything else is the wrapped transport's.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CorkedTransport"]


class CorkedTransport:
    """``transport`` with its writes gathered per loop turn (see the module docstring)."""

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None  # the writes of this turn, or None when nothing is held

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if held is None:
            self._held = [bytes(data)]
            self._loop.call_soon(self._flush)
        else:
            held.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self.transport.close()

    def write_eof(self) -> None:
        self._flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        held = self._held
        return self.transport.get_write_buffer_size() + (sum(map(len, held)) if held else 0)

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, set_protocol, …
        return getattr(self.transport, name)
