"""The gateway's command line: ``python -m gtl_nb.gateway [--config FILE] [--stdio | --http/--grpc/--quic HOST:PORT]``.

``add_arguments`` and ``run`` are shared with ``gtl serve`` (``gateway.cli``). Errors a user can fix
print one line on standard error and exit with status 2; standard output carries only frames.
SIGTERM and SIGINT shut down gracefully; SIGHUP reloads the configuration file (``gateway.reload``)
when serving listeners, and shuts down a ``--stdio`` gateway as before (it serves one connection).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gtl_nb.gateway import event_loop
from gtl_nb.protocol.errors import ConfigurationError

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser, *, config: bool = True) -> None:
    """The gateway's options (``config=False`` when the parent command already has ``--config``)."""
    parser.add_argument("--stdio", action="store_true", help="serve one connection on standard input and output")
    for transport, what in (("http", "HTTP, SSE, WebSocket and discovery"), ("grpc", "gRPC"), ("quic", "QUIC")):
        parser.add_argument(
            f"--{transport}",
            metavar="HOST:PORT",
            help=f"serve {what} there (port 0: any free port); overrides [gateway.{transport}] host and port",
        )
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate for the listeners given on the command line"
    )
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--insecure", action="store_true", help="let a plaintext listener bind to an address beyond loopback"
    )
    if config:
        parser.add_argument("--config", help="TOML configuration file (default: $GTL_NB_CONFIG, then the user config)")
    parser.add_argument(
        "--pidfile", metavar="FILE", help="write the gateway's process id there while it runs (for gtl reload)"
    )
    parser.add_argument(
        "--principal",
        metavar="NAME",
        help=(
            'who sessions are accounted to when no token names one ([gateway] auth = "none" or "token"; '
            "default: the user running the gateway)"
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Serve as ``args`` say; raises ``ConfigurationError`` for a set-up mistake (after which nothing was served)."""
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.auth import build_authenticator, build_credentials, check_exposure
    from gtl_nb.gateway.listeners import Shutdown
    from gtl_nb.gateway.settings import GatewaySettings
    from gtl_nb.gateway.stdio import serve_stdio
    from gtl_nb.transports.stdio import take_stdout

    if args.stdio:
        if any(getattr(args, name, None) for name in ("http", "grpc", "quic")):
            raise ConfigurationError("--stdio serves one connection on this process's pipes: give no listener with it")
        frames_fd = take_stdout()  # first: nothing may print on the frames
        settings = load_settings(config=args.config)
        options = GatewaySettings.from_settings(settings)
        authenticate = build_authenticator(settings, options, principal=args.principal)
        credentials = build_credentials(settings, options)

        async def serve_pipes() -> str | None:
            shutdown = Shutdown(grace=options.shutdown_grace)
            _on_signals(shutdown)
            return await serve_stdio(
                settings, authenticate=authenticate, frames_fd=frames_fd, shutdown=shutdown, credentials=credentials
            )

        with _pidfile(getattr(args, "pidfile", None)):
            failure = event_loop.run(serve_pipes(), options.event_loop)
        return 1 if failure is not None else 0  # (the answers did not all reach standard output: logged)
    early = _EarlySignals()  # first: from here until the loop handles them, a signal must not end the gateway
    try:
        settings = load_settings(config=args.config)
        options = _with_command_line(GatewaySettings.from_settings(settings), args)
        check_exposure(options)
        _mark_fleet(options)
        authenticate = build_authenticator(settings, options, principal=args.principal)
        pidfile = getattr(args, "pidfile", None)
        with _pidfile(pidfile):
            return _serve_listeners(
                settings,
                options,
                authenticate,
                build_credentials(settings, options),
                config=args.config,
                principal=args.principal,
                pidfile=pidfile,
                early=early,
            )
    finally:
        early.restore()  # SIGTERM and Ctrl-C end the process as before (a caller of run() goes on)


def _auth_words(auth: str) -> str:
    """What the ``ready`` line says of ``[gateway] auth``: whether tokens are checked is the first thing an
    operator should be able to read off a gateway's start."""
    if auth == "jwt":
        return "clients need a GhostToken"
    if auth == "token":
        return "clients need the development token"
    return "no token checked: every client that reaches it is trusted"


@contextlib.contextmanager
def _pidfile(path: str | None) -> Iterator[None]:
    """Write this process's id to ``path`` (if given) while the body runs; remove it after, if still ours."""
    if not path:
        yield
        return
    file = Path(path).expanduser()
    _refuse_a_running_gateways(file, path)
    try:
        file.write_text(f"{os.getpid()}\n", encoding="ascii")
    except OSError as exc:
        raise ConfigurationError(f"--pidfile {path}: cannot write it: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        # another gateway may have taken the file over since: never remove its id
        with contextlib.suppress(OSError):
            if file.read_text(encoding="ascii").strip() == str(os.getpid()):
                file.unlink()


def _refuse_a_running_gateways(file: Path, path: str) -> None:
    """``ConfigurationError`` when the pid file names another gateway that still runs: taking it over
    would leave that one with no pid file at this one's exit (``gtl reload --pidfile`` and a systemd
    ``PIDFile=`` could no longer reach it). A file left by a gateway that ended, or naming a process
    that is no gateway (its id taken since), is taken over."""
    from gtl_nb.gateway.reload_cli import running_gateway

    try:
        text = file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return
    if not text.isdigit() or int(text) <= 0 or int(text) == os.getpid():
        return
    if running_gateway(int(text)):
        raise ConfigurationError(f"--pidfile {path}: gateway {text} is running and uses it; give this one its own")


def _with_command_line(options: Any, args: argparse.Namespace) -> Any:
    """``options`` with the listeners of ``--http``/``--grpc``/``--quic`` added or moved (and the
    HTTP listener on 127.0.0.1:8787 when neither the file nor the command line names one)."""
    from gtl_nb.gateway.listeners import ListenerSettings, TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    tls = TlsFiles(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    listeners = {listener.transport: listener for listener in options.listeners}
    for transport in ("http", "grpc", "quic"):
        address = getattr(args, transport, None)
        if not address:
            continue
        host, sep, port = address.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()):  # (str.isdigit takes '²' and other scripts' digits)
            raise ConfigurationError(f"--{transport} takes HOST:PORT (127.0.0.1:8787), not {address!r}")
        if len(port.lstrip("0")) > 5 or int(port) > 65535:  # (no int() of thousands of digits)
            # caught here: the HTTP bind raised a traceback and gRPC silently bound port % 65536
            raise ConfigurationError(f"--{transport} {address}: the port must be 0..65535 (0: any free port)")
        known = listeners.get(transport)
        listeners[transport] = ListenerSettings(
            transport=transport,
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
            tls=tls or (known.tls if known is not None else None),
            insecure=args.insecure or (known.insecure if known is not None else False),
        )
    if args.insecure:
        listeners = {
            name: dataclasses.replace(listener, insecure=True) if not listener.insecure else listener
            for name, listener in listeners.items()
        }
    if not listeners:
        from gtl_nb.gateway.settings import DEFAULT_PORTS

        listeners["http"] = ListenerSettings(transport="http", port=DEFAULT_PORTS["http"])
    return dataclasses.replace(options, listeners=tuple(listeners.values()))


def _serve_listeners(
    settings: Any,
    options: Any,
    authenticate: Any,
    credentials: Any = None,
    *,
    config: str | None = None,
    principal: str | None = None,
    pidfile: str | None = None,
    early: _EarlySignals | None = None,
) -> int:
    """Run the listeners; each prints ``gtl gateway: listening on URL`` on standard error once it accepts,
    then ``gtl gateway: ready`` once all do. SIGTERM (and a first Ctrl-C) shut down gracefully; SIGHUP
    reloads ``config`` (the file the gateway started with) and prints one ``gtl gateway: reload…`` line,
    and with a ``pidfile`` keeps what each reload came to beside it (``gateway.reload_report``).

    A SIGTERM (or Ctrl-C) while the gateway starts stops the start: what is being opened is closed
    once open (a thread cannot be stopped halfway), no listener starts, no ``ready`` line follows the
    ``shutting down`` one, and the exit status is 0. A SIGHUP then is kept for after the start."""
    from gtl_nb.gateway.config_exposure import config_file_warnings
    from gtl_nb.gateway.listeners import Shutdown
    from gtl_nb.gateway.readiness import degraded_summary, look_at_shared_stores, refuses_every_token
    from gtl_nb.gateway.reload import FAIL_OVER_NOTE, Reloader, SwappableAuthenticator
    from gtl_nb.gateway.reload_report import ReloadReporter, report_path
    from gtl_nb.gateway.server import open_parts, serve
    from gtl_nb.gateway.spool_orphans import spool_warnings

    hook = SwappableAuthenticator(authenticate)  # the listeners hold this one; a reload swaps its target
    loop = event_loop.loop_name(options.event_loop)  # a missing uvloop that was asked for stops here

    announced: set[str] = set()
    shutdowns: list[Any] = []  # the one of the loop, once it runs
    engines: list[Any] = []  # the one the listeners serve, once open

    def announce(listener: Any, url: str) -> None:
        print(f"gtl gateway: listening on {url}", file=sys.stderr, flush=True)
        announced.add(listener.transport)
        stopping = any(shutdown.is_stopping for shutdown in shutdowns)  # a signal as the last one started
        if len(announced) == len(options.listeners) and not stopping:
            words = _auth_words(options.auth)
            if refuses_every_token(hook):  # no revocation list read yet (Redis away): say so, not "ready" alone
                words += (
                    "; refusing every token for now, retryably (503), until the revocation list can be read: "
                    "/readyz answers 503 meanwhile"
                )
            degraded = degraded_summary(engines[0], hook) if engines else None
            state = "ready" if degraded is None else f"ready, degraded: {degraded}"
            print(f"gtl gateway: {state} (event loop {loop}; {words})", file=sys.stderr, flush=True)

    async def serve_all() -> None:
        shutdown = Shutdown(grace=options.shutdown_grace)
        shutdowns.append(shutdown)
        task = asyncio.current_task()
        # first, before anything opens: a signal during the start is handled at once, a SIGHUP kept
        hang_ups = _HangUpsWhileStarting()
        stop = _on_signals(shutdown, force=task.cancel if task is not None else None, reload=hang_ups)
        # the early count read once the loop's handlers are in: a SIGHUP between the two is not lost
        hang_ups.count += early.count if early is not None else 0
        if early is not None and early.stopping:  # a SIGTERM or Ctrl-C before the loop could handle it
            stop()
            return
        # opened here rather than by serve(): the reloader needs the very engine the listeners run
        parts = await open_parts(settings, options, credentials=credentials)
        engines.append(parts.engine)
        try:
            if shutdown.is_stopping:  # a signal came while the stores opened: no listener starts
                return
            await look_at_shared_stores(parts.engine)  # a Redis away now is said on the ready line
            if shutdown.is_stopping:
                return
            for problem in settings.missing_credentials(parts.engine.credentials.resolve):
                print(f"gtl gateway: warning: {problem} ({FAIL_OVER_NOTE})", file=sys.stderr, flush=True)
            for problem in config_file_warnings(config):  # secrets others may read, a key never used
                print(f"gtl gateway: warning: {problem}", file=sys.stderr, flush=True)
            for problem in spool_warnings(parts.engine, config=config):  # rows left under another URL
                print(f"gtl gateway: warning: {problem}", file=sys.stderr, flush=True)
            reloader = Reloader(parts.engine, config=config, settings=settings, authenticate=hook, principal=principal)
            reporter = ReloadReporter(report_path(pidfile) if pidfile else None)
            reporters.append(reporter)
            hang_ups.started(_reloading(reloader, reporter))  # a SIGHUP while the gateway was starting: now
            await serve(settings, options, authenticate=hook, shutdown=shutdown, announce=announce, parts=parts)
        finally:
            await parts.aclose()

    reporters: list[Any] = []
    try:
        with contextlib.suppress(asyncio.CancelledError):
            event_loop.run(serve_all(), options.event_loop)
    finally:
        if early is not None:
            early.ignore()  # the loop's handlers are gone: a late SIGHUP must not cut the clean-up short
        for reporter in reporters:
            reporter.remove()
    stopped_early = any(shutdown.is_stopping for shutdown in shutdowns)  # it said it was shutting down
    if announced or stopped_early:  # say it has stopped, its stores closed (a supervisor's log ends here)
        with contextlib.suppress(OSError, ValueError):  # a log pipe gone (closed reader) changes nothing
            print("gtl gateway: stopped", file=sys.stderr, flush=True)
    return 0


def _mark_fleet(options: Any) -> None:
    """Mark this replica in Redis's live-replica registry with its token issuer (``stores.replicas``), so
    a replica of another fleet sharing the same keys is noticed."""
    from gtl_nb.engine.stores.replicas import fleet_mark, set_fleet

    issuer = options.jwt.get("issuer") if options.auth == "jwt" and isinstance(options.jwt, Mapping) else None
    set_fleet(fleet_mark(issuer) if isinstance(issuer, str) and issuer else None)


class _EarlySignals:
    """Notes the signals that arrive before the event loop handles them (while the gateway starts:
    reading its file, building its token checker), which would otherwise end it at once: SIGHUPs are
    counted (a reload runs once the gateway has started), a SIGTERM or Ctrl-C stops the start (the loop
    says so and starts nothing). A second SIGTERM or Ctrl-C ends the process as it would have. The
    loop's own handlers replace these. In the main thread only (signals)."""

    def __init__(self) -> None:
        self.count = 0
        self.stopping = False
        self._before: dict[int, Any] = {}  # SIGTERM's and SIGINT's handlers before these
        if threading.current_thread() is not threading.main_thread():
            return
        for name in ("SIGHUP", "SIGTERM", "SIGINT"):
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            if name != "SIGHUP":
                self._before[signum] = signal.getsignal(signum)
            signal.signal(signum, self._hung_up if name == "SIGHUP" else self._stop)

    def _hung_up(self, signum: int, frame: Any) -> None:
        self.count += 1

    def _stop(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            return
        if signum == getattr(signal, "SIGINT", None):  # a second Ctrl-C: as Python's own would
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM: end as an unhandled one does
        os.kill(os.getpid(), signum)

    @staticmethod
    def ignore() -> None:
        """From now on SIGHUP does nothing (after the loop: nothing is left to reload)."""
        hang_up = getattr(signal, "SIGHUP", None)
        if hang_up is not None and threading.current_thread() is threading.main_thread():
            signal.signal(hang_up, signal.SIG_IGN)

    def restore(self) -> None:
        """SIGTERM and SIGINT back to their handlers before these (SIGHUP is ignored from now on)."""
        self.ignore()
        for signum, handler in self._before.items():
            if handler is not None:  # (None: set from outside Python, nothing to put back)
                signal.signal(signum, handler)
        self._before = {}


class _HangUpsWhileStarting:
    """SIGHUP's handler on the loop: while the gateway starts there is nothing to reload yet, so the
    SIGHUPs are counted; ``started(reload)`` then reloads once if any came, and from then on each
    SIGHUP calls ``reload``."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self._reload: Callable[[], None] | None = None

    def __call__(self) -> None:
        if self._reload is None:
            self.count += 1
        else:
            self._reload()

    def started(self, reload: Callable[[], None]) -> None:
        """The gateway runs: ``reload`` handles SIGHUP from now on (and at once, if one came meanwhile)."""
        self._reload = reload
        if self.count:
            reload()


def _reloading(reloader: Any, reporter: Any) -> Callable[[], None]:
    """SIGHUP's handler: reload in a task, one at a time (a SIGHUP during a reload runs one more after it).

    The file is read and validated in a worker thread; the swap runs on the loop, between requests.
    Whatever goes wrong, the gateway keeps serving what it had and says why in one line — on standard
    error, to ``reporter`` (for ``gtl reload``) and to the engine's hooks (the reload metrics)."""
    from gtl_nb.engine.hooks import ReloadRefused

    state = {"running": False, "again": False}
    tasks: set[asyncio.Task[None]] = set()

    async def reload_once() -> None:
        try:
            while True:
                state["again"] = False
                covers = reporter.starting()
                ok = partial = False
                try:
                    prepared = await asyncio.to_thread(reloader.prepare)
                    line = reloader.apply(prepared)
                    # the token policy (to ask for again), or settings that apply only at a restart
                    partial = prepared.not_renewed is not None or bool(prepared.restart)
                except Exception as exc:  # a bad file, or a bug: either way the old configuration keeps serving
                    why = str(exc) if isinstance(exc, ConfigurationError) else f"{type(exc).__name__}: {exc}"
                    why = " ".join(why.split())  # one line, whatever the message
                    line = f"reload refused, still serving the previous configuration: {why}"
                    reloader.engine.hooks.emit(ReloadRefused(why))
                else:
                    ok = True
                _say(f"gtl gateway: {line}")
                reporter.finished(covers, ok=ok, line=line, again=state["again"], partial=partial)
                if not state["again"]:
                    return
        finally:
            state["running"] = False

    def handle() -> None:
        reporter.signalled()
        if state["running"]:
            state["again"] = True
            return
        state["running"] = True
        task = asyncio.ensure_future(reload_once())
        tasks.add(task)  # a reference, so the task is not collected mid-reload
        task.add_done_callback(tasks.discard)

    return handle


def _say(line: str) -> None:
    """One line on standard error, where nobody may be reading any more (a closed pipe is not an error)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _on_signals(
    shutdown: Any, *, force: Callable[[], Any] | None = None, reload: Callable[[], None] | None = None
) -> Callable[[], None]:
    """SIGTERM and SIGINT begin a graceful shutdown; a second one (with ``force``) stops at once. SIGHUP calls
    ``reload`` when given (not once shutting down), else shuts down like the others. Returns what a
    SIGTERM does (for one that came before the loop could handle it)."""
    loop = asyncio.get_running_loop()

    def hang_up() -> None:
        if reload is None:
            handle()
        elif not shutdown.is_stopping:
            reload()

    def handle() -> None:
        if shutdown.is_stopping and force is not None:
            force()
        elif not shutdown.is_stopping:
            shutdown.begin()  # first: a closed standard error must not cancel the shutdown
            with contextlib.suppress(OSError, ValueError):
                print(
                    f"gtl gateway: shutting down (running sessions get {shutdown.grace:g} s)",
                    file=sys.stderr,
                    flush=True,
                )

    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, hang_up if name == "SIGHUP" else handle)
    return handle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gtl_nb.gateway", description="The gtl_nb gateway.")
    add_arguments(parser)
    parser.add_argument("--log", metavar="LEVEL", help="log verbosity on standard error: DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    from gtl_nb.log import configure_logging

    configure_logging(args.log)
    try:
        return run(args)
    except ConfigurationError as exc:
        print(f"gtl gateway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
