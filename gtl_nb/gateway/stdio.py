"""The gateway on stdio: one connection over standard input and output, for the life of the process.

The client (``connect("stdio://...")``) starts this process, so there is exactly one connection; when
it ends — the client closed its end of the pipe, or went away — every session is cancelled, its
ledger row completed, and the process exits. The end of standard input is the client leaving (the GTL
spec says nothing of it): what runs is cancelled, not finished as after gRPC's half-close, but each
session's ``CANCELLED`` is still written to standard output, for a client that closed only its side.
A regular file (or a device, ``/dev/null``) as standard input (``gtl serve --stdio < requests.jsonl >
answers.jsonl``) is a batch: its end is the end of the requests, which run to their end before the process
exits (``file_relay`` carries files and devices the event loop's pipes cannot take). Answers that cannot be
written — a full disk, a file size limit, ``/dev/full``, the output's reader gone — end the connection as a
client leaving does (what runs is cancelled, its rows completed), and ``serve_stdio`` returns why: the process
then says so and exits 1. A reader gone once it had every answer, nothing running, lost nothing: no failure.

It opens what ``gtl serve`` opens beside its listeners (``server.open_parts``): the audit log of
``[gateway.audit]`` — one record per finished request, as on every other transport; a log file another
gateway process is writing refuses this one, as it refuses a second ``gtl serve`` — and the request
tracer of ``[gateway.tracing]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

from gtl_nb.engine.credentials import CredentialResolver
from gtl_nb.engine.settings import Settings
from gtl_nb.gateway.listeners import Shutdown
from gtl_nb.gateway.offload import OffloadedFrames
from gtl_nb.gateway.server import open_parts
from gtl_nb.gateway.sessions import Authenticate, GatewayConnection
from gtl_nb.gateway.settings import GatewaySettings
from gtl_nb.log import get_logger
from gtl_nb.protocol.connection import GTLConnection
from gtl_nb.transports.stdio import answers_failure, input_is_a_file, open_server_channel

__all__ = ["serve_stdio"]

log = get_logger("gateway.stdio")


async def serve_stdio(
    settings: Settings,
    *,
    authenticate: Authenticate,
    frames_fd: int,
    in_fd: int = 0,
    shutdown: Shutdown | None = None,
    credentials: CredentialResolver | None = None,
) -> str | None:
    """Serve one GTL connection on ``in_fd`` / ``frames_fd`` (see ``transports.stdio.take_stdout``).

    The ``[gateway]`` limits apply, but for ``idle_timeout``: the client that started this process
    owns it, so a quiet pipe is not a reason to exit. ``shutdown`` (SIGTERM) lets running sessions
    finish within its grace period. Returns why the answers did not all reach standard output (logged
    as an ``ERROR``), or ``None``."""
    options = GatewaySettings.from_settings(settings)
    limits = dataclasses.replace(options.limits, idle_timeout=math.inf)
    connection = GTLConnection("server", max_frame_bytes=options.max_frame_bytes, features=limits.features)
    parts = await open_parts(settings, options, credentials=credentials)
    try:
        from_a_file = input_is_a_file(in_fd)
        channel = await open_server_channel(frames_fd, in_fd=in_fd)
        try:
            framed = OffloadedFrames(connection, channel)  # a large frame decoded in a worker thread
            gateway = GatewayConnection(
                parts.engine,
                framed,
                authenticate=authenticate,
                limits=limits,
                shutdown=shutdown,
                transport="stdio",
                answers_after_end=True,  # a client that closed our input may still read our output
                # a file of requests is a batch: nobody could retry an OVERLOADED, so at a cap it waits
                batch=channel.output_gone if from_a_file else None,
            )
            if from_a_file:  # the file's end is the end of the requests: they run to their end, then we exit
                channel.on_half_close = gateway.client_done_sending
            running_when_gone: list[int] = []  # sessions running when the output went (the end cancels them)
            channel.on_output_gone = lambda: running_when_gone.append(gateway.live_sessions)
            await gateway.run()
        finally:
            await channel.aclose()
        sessions_cut = any(running_when_gone)
        # (a file's relay copies what it can first)
        failure = await asyncio.to_thread(answers_failure, channel, sessions_cut=sessions_cut)
        if failure is not None:
            cut = ": the sessions still running were cancelled" if sessions_cut else ""
            log.error("%s%s; the process exits 1", failure, cut)
        elif channel.output_lost:
            log.debug("the reader of standard output went away after the last answer, with nothing running")
        return failure
    finally:
        await parts.aclose()  # the refusals' rows and records first, then the audit log, then the engine
