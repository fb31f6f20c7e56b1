"""Running one GTL session for a compatible endpoint: collected whole, or streamed as server-sent events.

Both run on the HTTP listener's own session runner (``gateway.http._Sessions``), so a shutdown waits
for these sessions and cancels them as it does the GTL endpoints' — and a client that disconnects
cancels its session (the engine closes the upstream response, the ledger row says ``cancelled``).

**Streaming.** The status line waits for the session's first answer event (text, a tool call, usage,
the end): an error before any of the answer — an unknown model, a refused provider key, a rate limit
— is then an HTTP error in the format's own shape, so an SDK raises its own exception class even for
``stream=True`` — with ``x-should-retry: false`` when the gateway retried already
(``reply.retried_already``: the SDK's own retries would multiply the gateway's). Once the answer has
begun, the status is ``200`` and a later error is an error event inside the stream. A deployment that
fails after the answer began is not failed over from (the next one would start the answer again, which
neither format can take back): the session's context says so (``RequestContext.unrestartable``), and the
engine ends the session with that failure, recorded against the deployment that failed. A ``failover``
status after the answer began can therefore only be a defect's; it still ends the stream with an error
event (``failover_code``: of the failure that moved it on) and cancels the session, so the ledger does
not record an answer the client never got.

**Replay state.** A provider's state for the next turn (Gemini 3's signatures, thinking blocks) rides on
the first tool call's id (``replay_state``): both ways of running put it on the answer's ids, for a
request that offers tools (no tool call can come otherwise). The endpoints took it off the request's
ids when they read the body (``restored``: in the worker thread that reads a large one).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast, get_args

from gtl_nb.engine.context import RequestContext
from gtl_nb.gateway.compat.replay_state import ReplayStamps
from gtl_nb.gateway.compat.reply import Reply, retried_already
from gtl_nb.gateway.refusals import REFUSED_BEFORE_START
from gtl_nb.gateway.streaming import EventOutbox, Running, SessionRunner, collect_session, stream_session
from gtl_nb.log import get_logger
from gtl_nb.protocol.errors import GTLError
from gtl_nb.protocol.messages import CompletionRequest, Done, Error, ErrorCode, Status, StreamEvent
from gtl_nb.protocol.session import Transcript, is_failover

__all__ = ["EventEncoder", "Running", "SessionRunner", "StreamedSession", "collect", "failover_code"]

log = get_logger("gateway.compat")

FAILOVER_CANCEL = "the gateway (a failover after the answer began, which a compatible stream cannot carry)"
"""Who cancelled a session whose stream had to end at a failover (its ledger row's reason)."""


_ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))


def failover_code(status: Status) -> ErrorCode:
    """The GTL code of the failure that moved a session on, from the front of the failover's ``reason``
    (the engine writes "CODE: message"); ``PROVIDER_UNAVAILABLE`` when it names none. A stream cut by a
    failover ends with an error of that code, so an overload mid-answer reaches an SDK as the format's
    overload (Anthropic's ``overloaded_error``), as a session that ended at it without a failover does."""
    code = (status.reason or "").partition(":")[0].strip()
    return cast(ErrorCode, code) if code in _ERROR_CODES else "PROVIDER_UNAVAILABLE"


ENCODING_FAILED = "the gateway (its answer could not be written in the compatible format: a defect, see the log)"
"""Who cancelled a session whose events an encoder failed on (its ledger row's reason)."""

_ENCODING_FAILED = "the gateway could not write the answer in this format (a defect in the gateway; its log says more)"


def _failover_message(event: Status) -> str:
    """What a stream cut by a failover after the answer began says."""
    reason = event.reason or "the deployment failed"
    return (
        f"the answer broke off after it began ({reason}); the gateway moved to another deployment, "
        "which would start the answer again, and this format cannot take back what was sent: ask again"
    )


class Refuse(Protocol):
    """A format's whole error answer (``openai.error_reply``, ``anthropic.error_reply``)."""

    def __call__(self, error: Error, *, retried: bool = False) -> Reply: ...


class EventEncoder(Protocol):
    """Turns a session's events into one format's server-sent events (``openai_wire``, ``anthropic_wire``)."""

    def open(self, first: StreamEvent) -> bytes:
        """What the stream starts with, once the answer has begun with ``first`` (OpenAI's role chunk,
        ``message_start``)."""
        ...

    def encode(self, event: StreamEvent) -> bytes:
        """The bytes of one event (``b""`` for an event the format has no place for). The statuses before
        the answer begins come here too, their bytes unwritten: what they say may go in ``open``."""
        ...

    def interrupt(self, message: str, code: ErrorCode = "PROVIDER_UNAVAILABLE") -> bytes:
        """An error event that ends the stream early (no terminator after it), of GTL error ``code``."""
        ...


async def collect(
    sessions: SessionRunner,
    request: CompletionRequest,
    context: RequestContext,
    receive: Callable[[], Awaitable[Any]],
    *,
    native: frozenset[str] = frozenset(),
) -> Transcript:
    """Run one session to its end and return what it produced (the failover reset applied); ``native``:
    the replay state the format carries itself, not stamped on a tool call's id (``replay_state``).

    A client that disconnects first cancels the session; so does a shutdown that cancels this task.
    """
    transcript = Transcript(session_id=request.session_id)
    deliver: Callable[[StreamEvent], None] = transcript.add
    if request.tools:
        deliver = functools.partial(_stamped_into, ReplayStamps(native), transcript)
    await collect_session(sessions, request, context, deliver, receive)
    return transcript


def _stamped_into(stamps: ReplayStamps, transcript: Transcript, event: StreamEvent) -> None:
    for handed in stamps.take(event):
        transcript.add(handed)


class StreamedSession:
    """An ASGI response that runs one session and streams it through an ``EventEncoder`` (module docstring)."""

    def __init__(
        self,
        sessions: SessionRunner,
        request: CompletionRequest,
        context: RequestContext,
        *,
        encoder: EventEncoder,
        refuse: Refuse,
        refused: Callable[[GTLError], Reply],
        headers: dict[str, str] | None = None,
        native: frozenset[str] = frozenset(),
    ) -> None:
        self.sessions = sessions
        self.request = request
        self.stamps = ReplayStamps(native) if request.tools else None
        self.context = context.unrestartable()  # (its stream cannot take a failover once it began)
        self.encoder = encoder
        self.refuse = refuse
        self.refused = refused  # the format's answer to a refusal before the session (``openai.refusal``)
        self.headers = headers or {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        outbox = EventOutbox()  # a slow client holds the engine back once its high-water mark is reached
        try:
            running = self.sessions.start(self.request, self.context, outbox.put, drain=outbox.drain)
        except REFUSED_BEFORE_START as exc:  # the principal's sessions at their cap, or the stop: nothing started
            await self.sessions.refused(self.request, self.context, exc)  # (its ledger row and audit record)
            exc.session_id = self.request.session_id
            await self.refused(exc)(scope, receive, send)
            return
        await stream_session(self._pump(outbox, send, running), running, receive)

    async def _pump(self, outbox: EventOutbox, send: Any, running: Running) -> None:
        started = False
        ended = False
        retried = False  # whether the gateway tried again before the answer began (``reply.retried_already``)
        while not ended:
            pieces: list[bytes] = []  # what this batch of events writes, in one send
            refusal: Error | None = None  # an error before the answer began: the format's error reply
            opened = started
            events = await outbox.take()
            try:  # (only the encoder runs in here: every write is after it)
                for event in events if self.stamps is None else self.stamps.batch(events):
                    if not started:
                        if isinstance(event, Status):
                            retried = retried or retried_already((event,))
                            # queued, retrying, a failover before any answer: nothing to write yet, but
                            # the encoder reads them (the input counts a provider told early go in ``open``)
                            self.encoder.encode(event)
                            continue
                        if isinstance(event, Error):
                            refusal = event
                            break
                        pieces.append(self.encoder.open(event))  # written with the batch: one write, not two
                        started = True
                    if isinstance(event, Status):  # (asked first: most events are not, and need no call to tell)
                        if not is_failover(event):
                            continue  # a status has no place in the format
                        pieces.append(self.encoder.interrupt(_failover_message(event), failover_code(event)))
                        running.cancel(FAILOVER_CANCEL)
                        ended = True
                        break
                    pieces.append(self.encoder.encode(event))
                    if isinstance(event, (Done, Error)):
                        ended = True
                        break
            except Exception:  # a defect in the encoder: the client hears of it, and the session stops
                log.exception("session %r: its answer could not be written in the format", self.request.session_id)
                running.cancel(ENCODING_FAILED)
                failed = Error(session_id=self.request.session_id, code="INTERNAL", message=_ENCODING_FAILED)
                if not started:
                    await self.refuse(failed)(None, None, send)
                    return
                pieces.append(self._interrupted(failed))
                ended = True
            if refusal is not None:
                await self.refuse(refusal, retried=retried)(None, None, send)
                return
            if started and not opened:
                await self._start(send)
            chunk = b"".join(pieces)
            if ended:  # the last events and the end of the body in one write
                await send({"type": "http.response.body", "body": chunk})
            elif chunk:
                await self._write(send, chunk)

    def _interrupted(self, failed: Error) -> bytes:
        """The encoder's error event for ``failed``, or nothing when the encoder cannot write even that."""
        try:
            return self.encoder.interrupt(failed.message, failed.code)
        except Exception:
            log.exception("session %r: its error event could not be written either", self.request.session_id)
            return b""

    async def _start(self, send: Any) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # a reverse proxy in front must not hold events back
        ]
        headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

    @staticmethod
    async def _write(send: Any, chunk: bytes) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
