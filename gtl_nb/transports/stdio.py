"""The stdio transport: GTL frames (newline-delimited JSON, the codec's framing) on standard input and output.

**Server half** (the gateway process): ``take_stdout()`` keeps the real standard output for frames and
points file descriptor 1 — and so every stray ``print`` — at standard error; ``open_server_channel()``
is the ``Channel`` over standard input and that descriptor. The token travels in ``hello`` (a pipe has
no header).

**Client half**: ``stdio_backend(endpoint)`` is a ``RemoteBackend`` whose dialer starts the gateway as
a child process (``process.spawn``) and speaks frames over its pipes; a new child is started whenever
the previous one is gone. Endpoints::

    stdio://                         python -m gtl_nb.gateway --stdio            (the usual config file)
    stdio:///abs/path/gtl.toml       python -m gtl_nb.gateway --stdio --config /abs/path/gtl.toml
    stdio://team.toml                the same with a path relative to the working directory
    stdio://?command=CMD             CMD, percent-encoded, split like a POSIX shell would
                                     (``gtl%20serve%20--stdio``, ``ssh%20host%20gtl%20serve%20--stdio``)

``python`` is this interpreter (``sys.executable``), so the gateway runs the same gtl_nb. The child
inherits the environment (provider keys are read there, as embedded).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote

from gtl_nb.engine.loop import LoopThread
from gtl_nb.engine.settings import RequestDefaults, load_settings
from gtl_nb.protocol.errors import ConfigurationError
from gtl_nb.transports import file_relay
from gtl_nb.transports.channel import Channel
from gtl_nb.transports.pipes import PipeChannel, open_pipe_channel
from gtl_nb.transports.process import spawn
from gtl_nb.transports.remote import RemoteBackend

__all__ = [
    "SCHEME",
    "StdioEndpoint",
    "answers_failure",
    "gateway_command",
    "input_is_a_file",
    "open_server_channel",
    "parse_stdio",
    "stdio_backend",
    "take_stdout",
]

SCHEME = "stdio://"
_QUERY_KEYS = ("command",)


# -- server half ------------------------------------------------------------------------------------------


def take_stdout() -> int:
    """Keep standard output for frames: return a duplicate of descriptor 1, then point 1 at standard error.

    Call it before anything can print; afterwards ``print()`` and ``sys.stdout`` write to standard
    error, and only the returned descriptor reaches the client. A closed standard output (``>&-``) is a
    ``ConfigurationError``: there is nowhere to answer.
    """
    try:
        frames = os.dup(1)
    except OSError:
        raise ConfigurationError(
            "standard output is closed: the stdio gateway writes its answers there (give it a pipe or a file)"
        ) from None
    if sys.stdout is not None:
        sys.stdout.flush()
    os.dup2(2, 1)
    return frames


async def open_server_channel(frames_fd: int, *, in_fd: int = 0) -> PipeChannel:
    """The gateway's channel: frames read from ``in_fd`` (standard input) and written to ``frames_fd`` —
    each a pipe, a socket or a terminal, or a regular file or a device relayed through a pipe (``file_relay``)."""
    return await open_pipe_channel(file_relay.readable(in_fd), file_relay.writable(frames_fd), peer="stdio")


def answers_failure(channel: PipeChannel, *, sessions_cut: bool = False) -> str | None:
    """Why not every answer written to the closed ``channel`` reached standard output, or ``None``: a file's
    (or device's) relay stopped by a failed write (after copying what it could), or the reader of the
    pipe gone while the connection was still open with an answer lost — bytes left unwritten
    (``PipeChannel.answers_dropped``), or ``sessions_cut``: sessions were running then, and are cancelled.
    A reader that went away once it had every answer, with nothing running, lost nothing: ``None``."""
    error = file_relay.failure(channel.output_fd) if channel.output_fd is not None else None
    if error is not None:
        return f"cannot write the answers to standard output: {error.strerror or error}"
    if channel.output_lost and (sessions_cut or channel.answers_dropped):
        return "the reader of standard output went away before every answer was written"
    return None


def input_is_a_file(in_fd: int = 0) -> bool:
    """Whether standard input is read like a file — a regular file, or a device such as ``/dev/null`` (neither
    pipe, socket nor terminal): its end is then the end of the requests, not the client leaving (``gtl serve
    --stdio < requests.jsonl``)."""
    return file_relay.relayed_input(in_fd)


# -- client half ------------------------------------------------------------------------------------------


def gateway_command(config: str | os.PathLike[str] | None = None, *, principal: str | None = None) -> list[str]:
    """The command line of a gtl_nb gateway on stdio, run by this interpreter."""
    argv = [sys.executable, "-m", "gtl_nb.gateway", "--stdio"]
    if config is not None:
        argv += ["--config", os.fspath(config)]
    if principal is not None:
        argv += ["--principal", principal]
    return argv


@dataclass(frozen=True)
class StdioEndpoint:
    """What a ``stdio://`` endpoint starts."""

    argv: list[str]
    """The child's command line."""
    config: str | None = None
    """The gateway's configuration file, for the config-path forms (``None``: the usual file)."""
    builtin: bool = True
    """Whether the child is this package's gateway (the config-path forms) rather than a ``command=``."""

    @property
    def label(self) -> str:
        """How messages name the gateway."""
        if self.builtin:
            return f"stdio gateway ({self.config or 'default configuration'})"
        return f"stdio gateway ({shlex.join(self.argv)})"


def parse_stdio(endpoint: str, *, principal: str | None = None) -> StdioEndpoint:
    """The child process a ``stdio://`` endpoint starts (the forms are in the module docstring).

    ``principal`` (``connect(user=...)``) becomes the gateway's ``--principal``; a ``command=``
    endpoint is used as written, so it must say that itself.
    """
    if not endpoint.startswith(SCHEME):
        raise ConfigurationError(
            f"{endpoint!r} is not a stdio endpoint (stdio://[CONFIG-PATH] or stdio://?command=...)"
        )
    path, _, query = endpoint[len(SCHEME) :].partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_QUERY_KEYS))
    if unknown:
        raise ConfigurationError(f"unknown option {unknown[0]!r} in {endpoint!r} (known: {', '.join(_QUERY_KEYS)})")
    command = options.get("command")
    if command is None:
        config = str(Path(unquote(path)).expanduser().absolute()) if path else None
        return StdioEndpoint(gateway_command(config, principal=principal), config)
    if path:
        raise ConfigurationError(f"{endpoint!r} has both a config path and command=; the command names its own config")
    if principal is not None:
        raise ConfigurationError(
            f"user= cannot be added to {endpoint!r}: a command= endpoint runs as written (add --principal to it)"
        )
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigurationError(f"cannot split command= of {endpoint!r}: {exc}") from None
    if not argv:
        raise ConfigurationError(f"command= is empty in {endpoint!r}")
    return StdioEndpoint(argv, builtin=False)


def stdio_backend(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    loop: LoopThread | None = None,
    env: Mapping[str, str] | None = None,
) -> RemoteBackend:
    """A ``RemoteBackend`` that runs the gateway of ``endpoint`` as a child process.

    For the config-path forms the client reads ``[defaults]`` from the gateway's own file (the protocol
    does not carry them yet), so requests are filled in as the embedded client fills them.
    """
    target = parse_stdio(endpoint, principal=user)
    defaults = RequestDefaults()
    if target.builtin:
        try:
            defaults = load_settings(config=target.config).defaults
        except ConfigurationError as exc:  # the file was named by the endpoint, not by config=
            raise ConfigurationError(exc.message.replace("(named by config=)", f"(named by {endpoint})")) from None

    async def dial() -> Channel:
        return await spawn(target.argv, env=env, peer="stdio")

    return RemoteBackend(dial, label=target.label, token=token, loop=loop, defaults=defaults)


def stdio_endpoint(
    endpoint: str,
    *,
    token: str | None = None,
    user: str | None = None,
    verify: object = True,
    loop: LoopThread | None = None,
) -> RemoteBackend:
    """``transports.endpoints`` factory of ``stdio://`` (``verify`` does not apply to a child process)."""
    return stdio_backend(endpoint, token=token, user=user, loop=loop)
