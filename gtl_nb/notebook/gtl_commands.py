"""``%gtl SUBCOMMAND``: what the notebook can use and how it is set up.

``models`` and ``usage`` return a DataFrame (the cell's output); ``config``, ``providers`` and
``connect`` change the session's settings and clients (a bad value is refused before anything changes,
or rolled back); ``history`` and ``reset`` show and clear the chat-mode conversation. ``%gtl`` alone
prints the list below.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from gtl_nb.cli_unknown import close_word
from gtl_nb.notebook import args as cli
from gtl_nb.notebook.errors import cell_error, client_for, gateway_way_out, in_notebook_words, mistake, no_gateway
from gtl_nb.notebook.output import show_bundle
from gtl_nb.notebook.session import GATEWAY_ENV, default_endpoint, is_embedded
from gtl_nb.safe_markdown import code_span, no_math_markdown
from gtl_nb.words import looks_like_variable_name

if TYPE_CHECKING:  # pragma: no cover
    from gtl_nb.notebook.session import NotebookSession, Settings

__all__ = ["GTL_HELP", "GtlCommands", "setting_value"]

GTL_HELP = """\
%%gtl [MODEL] [options]      send the cell to a model (`%%gtl --help` lists the options)
%gtl models [--live DEPLOYMENT]   the models this notebook can use
%gtl usage [--by provider|model|day|hour|...] [--days N | --since WHEN] [--all-users]   cost and tokens from the ledger
%gtl config [key=value ...]  show or set model=, chat=on|off, stream=on|off, reasoning_effort=LEVEL, endpoint=URL,
                             file=PATH
%gtl providers [NAME key=value ... | NAME --remove]   configure a provider deployment
%gtl connect URL [--token-env VAR | --ask-token]   connect to a GTL endpoint
%gtl history                 the conversation kept in chat mode
%gtl reset                   forget the conversation
%gtl help                    this list and the options of %%gtl"""


class GtlCommands:
    """Runs ``%gtl`` line magics for one shell; the notebook's state is ``session``."""

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        self.shell = shell
        self.session = session

    def run(self, line: str) -> Any:
        """Run the subcommand ``line`` names (the list of them for ``%gtl`` alone or ``help``)."""
        words = cli.split(line, self.shell.user_ns)
        if not words:
            print(GTL_HELP)
            return None
        if words[0] in ("help", "-h", "--help"):
            print(GTL_HELP + "\n\n" + cli.help_text(cli.gtl_cell_parser()))
            return None
        command, rest = words[0], words[1:]
        handlers: dict[str, Callable[[list[str]], Any]] = {
            "models": self._models,
            "usage": self._usage,
            "config": self._config,
            "providers": self._providers,
            "connect": self._connect,
            "history": self._history,
            "reset": self._reset,
        }
        handler = handlers.get(command)
        if handler is None:
            raise UsageError(
                f"unknown %gtl subcommand {command!r}{close_word(command, [*handlers, 'help'])} (use models, "
                "usage, config, providers, connect, history, reset or help; to ask a model, start the cell with %%gtl)"
            )
        return handler(rest)

    def _models(self, words: list[str]) -> Any:
        parser = cli.models_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return None
        import pandas as pd

        from gtl_nb.protocol import GTLError

        client = client_for(self.session, None)
        if opts.live:
            try:
                names = client.list_models(opts.live)
            except GTLError as exc:
                raise cell_error(exc) from None
            return pd.DataFrame({"deployment": opts.live, "model": names})
        from gtl_nb.analysis import Table

        try:
            infos = client.providers()
        except GTLError as exc:  # a gateway gone: said, rather than the list it once announced
            raise cell_error(exc) from None
        rows = [
            {
                "deployment": info.provider,
                "type": info.provider_type,
                "model": model.name,
                "offline": info.offline,
                "context_window": model.context_window,
                # prices as providers quote them, per 1M tokens (the catalog keeps them per 1k)
                "input_per_1m": _per_million(model.cost_per_1k_input),
                "output_per_1m": _per_million(model.cost_per_1k_output),
            }
            for info in infos
            for model in info.models
        ]
        columns = ["deployment", "type", "model", "offline", "context_window", "input_per_1m", "output_per_1m"]
        if not rows and client.transport != "embedded":  # an empty table would not say why
            print("no models listed: a gateway lists them only to a token with the models:read scope")
        frame = pd.DataFrame(rows, columns=columns)
        return Table(frame.astype({"context_window": "Int64", "input_per_1m": "float64", "output_per_1m": "float64"}))

    def _usage(self, words: list[str]) -> Any:
        parser = cli.usage_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return None
        since = _usage_since(opts)  # (a mistake in it is said before connecting)
        client = client_for(self.session, None)
        if client.config is not None and client.ledger is None:  # embedded, with the ledger switched off
            raise UsageError("the usage ledger is off ([ledger] enabled = false): there is no usage to show")
        from gtl_nb.analysis import usage_table

        filters = {} if since is None else {"since": since}
        by = "provider" if opts.by == "deployment" else opts.by  # (gtl usage's name: the same table)
        table = usage_table(client.usage(all_users=opts.all_users, **filters), by=by)
        if table.empty and since is not None:
            window = f"in the last {opts.days:g} day(s)" if opts.days is not None else f"since {opts.since}"
            print(f"no requests recorded {window}")
        elif table.empty:  # said, as gtl usage says it: an empty table alone reads as a failure to read one
            print("no requests recorded yet: every %%gtl cell and client request adds a row")
        if client.config is None:  # a gateway's ledger and this machine's look alike: say which this is
            from gtl_nb.client import environment_token

            if opts.all_users:
                whose = "everyone's requests"
            elif self.session.has_token or environment_token():
                whose = "your token's requests"
            else:  # no token: the principal the gateway gives every caller it checks no token for
                whose = "the requests of its development principal, which every caller without a token shares"
            print(f"usage from the gateway at {self.session.settings.endpoint} ({whose})")
        elif (where := _ledger_file(client.ledger)) is not None:  # shared by every kernel and run on this machine
            recent = "" if since is not None else "; --days N for recent ones"
            print(f"usage from the ledger {where} (every run that wrote it, not this notebook alone{recent})")
        return table

    def _config(self, words: list[str]) -> None:
        if not words:
            self._show_config()
            return
        changes = cli.parse_assignments(words, what="%gtl config")
        known = ("model", "chat", "stream", "reasoning_effort", "endpoint", "file")
        for key in changes:
            if key not in known:
                raise UsageError(f"%gtl config: unknown setting {key!r}; known: {', '.join(known)}")
        switches = {
            key: cli.parse_bool(changes[key], what=f"%gtl config: {key}=")
            for key in ("chat", "stream")
            if key in changes
        }
        if "reasoning_effort" in changes:  # checked before anything changes
            changes["reasoning_effort"] = _effort_setting(changes["reasoning_effort"])
        before = dataclasses.replace(self.session.settings)  # a refused line changes nothing
        try:
            self._apply_settings(changes, switches)
        except UsageError:
            self._restore_settings(before)
            raise
        self._show_config()

    def _apply_settings(self, changes: dict[str, str], switches: dict[str, bool]) -> None:
        """Apply ``%gtl config``'s values; the model is checked last, against the client they make."""
        settings = self.session.settings
        if "chat" in switches:
            settings.chat = switches["chat"]
        if "stream" in switches:
            settings.stream = switches["stream"]
        if "reasoning_effort" in changes:
            settings.reasoning_effort = changes["reasoning_effort"] or None
        if "file" in changes:
            settings.config_file = os.path.expanduser(changes["file"]) if changes["file"].strip() else None
            try:
                self.session.reconnect()
            except ValueError as exc:
                raise mistake(exc) from None
        if "endpoint" in changes:
            self._switch_endpoint(changes["endpoint"].strip() or "embedded://", None)
        if "model" in changes:
            model = changes["model"].strip() or None
            if model is not None:
                self._check_model(model)
            settings.model = model

    def _check_model(self, model: str) -> None:
        """Refuse a model routing does not know (with its "did you mean"), now rather than at the next
        cell; a known model whose provider is not configured yet is accepted with a note."""
        from gtl_nb.protocol import ConfigurationError, GTLError

        try:
            client_for(self.session, None).route(model)
        except ConfigurationError as exc:  # the model is known; its deployment may be added next
            hint = "`%gtl providers NAME api_key_env=VAR base_url=...`"
            print(f"note: {getattr(exc, 'message', None) or exc} (in a notebook: {hint})")
        except GTLError as exc:
            raise mistake(exc) from None

    def _restore_settings(self, before: Settings) -> None:
        """Put the settings back as they were; clients reconnect with them on next use."""
        changed = (before.config_file, before.endpoint) != (
            self.session.settings.config_file,
            self.session.settings.endpoint,
        )
        self.session.settings = before
        if changed:
            self.session.close()

    def _show_config(self) -> None:
        """The settings — also when the endpoint gives no connection (a gateway away, a token refused):
        this is where a user looks to see why, so it says so rather than failing like the others."""
        from gtl_nb.protocol import GTLError

        settings = self.session.settings
        unconnected = None
        try:
            client = client_for(self.session, None)
            model, source = self.session.default_model(client)
            deployments = ", ".join(
                f"{info.provider} ({info.provider_type}{', offline' if info.offline else ''})"
                for info in client.providers()
            )
            config_path = getattr(getattr(client, "config", None), "source_path", None)
        except UsageError as exc:  # no connection to begin with: client_for said why, and the way out
            unconnected = str(exc)
        except GTLError as exc:  # connected once, and the gateway has gone since
            unconnected = f"{in_notebook_words(str(exc))}{gateway_way_out(self.session, exc)}"
        if unconnected is not None:
            model, source = settings.model or "?", "%gtl config model=..." if settings.model else "not connected"
            deployments, config_path = f"not connected: {unconnected}", None
        rows = [
            ("model", f"{model}  ({source})"),
            ("chat", "on" if settings.chat else "off"),
            ("stream", "on" if settings.stream else "off"),
            ("reasoning_effort", settings.reasoning_effort or "unset (the configuration's, else each deployment's)"),
            ("endpoint", settings.endpoint + _endpoint_source(settings.endpoint)),
            (
                "file",
                str(config_path) if config_path else "none (set $GTL_NB_CONFIG or `%gtl config file=PATH`)",
            ),
            ("providers", deployments or "none"),
        ]
        print("\n".join(f"{key:<10}{value}" if len(key) < 10 else f"{key}  {value}" for key, value in rows))

    def _providers(self, words: list[str]) -> None:
        if not words:
            client = client_for(self.session, None)
            for info in client.providers():
                kind = f"{info.provider_type}, offline" if info.offline else info.provider_type
                print(f"{info.provider:<16}{kind:<22}{len(info.models)} model(s)")
            return
        name, rest = words[0], words[1:]
        if "=" in name or name.startswith("-"):
            raise UsageError("%gtl providers: start with the deployment's name (`%gtl providers openai base_url=...`)")
        previous = self.session.providers.get(name)
        if rest == ["--remove"]:
            if previous is None:
                raise UsageError(f"%gtl providers: {name!r} was not added with %gtl providers")
            del self.session.providers[name]
        else:
            raw = cli.parse_assignments(rest, what="%gtl providers")
            cli.refuse_secret_settings(raw)
            if not raw:
                raise UsageError(
                    f"%gtl providers {name}: give its settings as key=value (base_url=, api_key_env=, ...)"
                )
            settings = {key: setting_value(key, value) for key, value in raw.items()}
            cli.refuse_credential_values(settings)
            self.session.providers[name] = settings
        try:
            client = self.session.reconnect()
        except ValueError as exc:  # ConfigurationError names the bad key
            if previous is None:
                self.session.providers.pop(name, None)
            else:
                self.session.providers[name] = previous
            self.session.close()
            raise mistake(exc) from None
        names = ", ".join(info.provider for info in client.providers())
        print(f"providers: {names}")
        say_set_aside(self.session, self.session.settings.endpoint)

    def _connect(self, words: list[str]) -> None:
        parser = cli.connect_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return
        token: str | None = None
        if opts.token_env:
            token = os.environ.get(opts.token_env)
            if not token:
                staying = self.session.settings.endpoint
                if not looks_like_variable_name(opts.token_env):  # it may be the token itself, pasted there
                    raise UsageError(
                        "%gtl connect: --token-env names no variable set in this kernel; its value is not quoted, "
                        "as it is not capital letters, digits and _ only and may be the token itself (put the token "
                        f"in a variable and name that, or use --ask-token; the notebook stays on {staying})"
                    )
                raise UsageError(
                    f"%gtl connect: ${opts.token_env} is not set in this kernel: set it in the shell that starts "
                    f"Jupyter, or use --ask-token (the notebook stays on {staying})"
                )
        elif opts.ask_token:
            import getpass

            from IPython.core.error import StdinNotImplementedError

            try:
                token = getpass.getpass(f"token for {opts.url}: ") or None
            except (StdinNotImplementedError, EOFError):  # a headless run (nbconvert, papermill): no prompt
                raise UsageError(
                    "%gtl connect --ask-token: this frontend cannot prompt for input; use --token-env VAR or "
                    f"$GTL_TOKEN (the notebook stays on {self.session.settings.endpoint})"
                ) from None
        # say so: the user may think they connect without one (the embedded engine takes none)
        kept = token is None and self.session.has_token and not is_embedded(opts.url)
        self._switch_endpoint(opts.url, token, opts.token_env)
        print(f"connected to {opts.url}" + (" (with the token given before)" if kept else ""))

    def _switch_endpoint(self, url: str, token: str | None, variable: str | None = None) -> None:
        from gtl_nb.protocol import GTLError

        staying = self.session.settings.endpoint
        try:
            self.session.connect(url, token, variable=variable)
        except (ValueError, GTLError) as exc:  # an unknown scheme, no gateway there, a refused token
            refused = mistake(exc)
            if url == staying and not is_embedded(url):  # "stays on" the very address that failed: say the way out
                raise UsageError(f"{refused} {no_gateway(url)}") from None
            raise UsageError(f"{refused}; the notebook stays on {staying}") from None
        say_set_aside(self.session, url)

    def _history(self, words: list[str]) -> None:
        _no_more_words("history", words)
        history = self.session.history
        if not history:
            print("no conversation yet (chat mode keeps one: `%gtl config chat=on` or `%%gtl --chat`)")
            return
        plain, markdown = [], []
        for message in history:
            text = message.content or ""
            calls = [f"{call.name}({call.arguments})" for call in message.tool_calls]
            plain.append(f"{message.role}: {text}" + "".join(f" [tool call] {call}" for call in calls))
            shown_calls = "".join(f" {code_span(call)}" for call in calls)
            # the text at a line's start: a fence of it is one only there (after the label it would be text)
            markdown.append(f"**{message.role}**:{shown_calls}\n\n{no_math_markdown(text)}".rstrip())
        show_bundle("\n\n".join(markdown), "\n".join(plain))

    def _reset(self, words: list[str]) -> None:
        _no_more_words("reset", words)
        count = len(self.session.history)
        self.session.history.clear()
        print(f"conversation cleared ({count} message{'s' if count != 1 else ''})")


def _ledger_file(store: Any) -> str | None:
    """The file an embedded client's ledger store writes (``None``: in memory, or not a SQLite file)."""
    path = getattr(getattr(store, "ledger", None), "path", None)
    return None if path is None or str(path) == ":memory:" else str(path)


def _endpoint_source(endpoint: str) -> str:
    """``  ($GTL_NB_GATEWAY)`` when ``endpoint`` came from that variable, else nothing."""
    return f"  (${GATEWAY_ENV})" if endpoint != "embedded://" and endpoint == default_endpoint() else ""


def _per_million(per_1k: float | None) -> float | None:
    # round: 0.00015 * 1000 is 0.15000000000000002 in binary floating point
    return None if per_1k is None else round(per_1k * 1000, 9)


def _no_more_words(command: str, words: list[str]) -> None:
    """``%gtl history`` and ``%gtl reset`` take nothing: a word after them is refused, not ignored (a
    user who typed ``%gtl reset chat`` or ``%gtl history 5`` expects it to mean something)."""
    if words:
        raise UsageError(f"%gtl {command} takes no arguments, got {' '.join(words)!r}")


def _effort_setting(value: str) -> str:
    """``%gtl config reasoning_effort=``'s value: an effort (any case), or empty to unset it."""
    if not value.strip():
        return ""
    try:
        return cli.effort_choice(value)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"%gtl config: reasoning_effort={value}: {exc}") from None


def setting_value(key: str, value: str) -> Any:
    """A ``%gtl providers`` value: ``models`` is a comma list, JSON values as JSON, anything else text."""
    if key == "models":
        try:
            return cli.comma_list(value)
        except argparse.ArgumentTypeError as exc:  # one line, as every other bad value (docs/magics.md)
            raise UsageError(f"%gtl providers: models={value!r}: {exc}") from None
    text = value.strip()
    if text and (text[0] in "[{" or text in ("true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", text)):
        try:
            return json.loads(text)
        except ValueError:
            if text[0] in "[{":  # meant as JSON: most often its quotes were taken by the line's own quoting
                example = '{"pace": 0.2}' if key == "options" else '{"name": "value"}'
                shown = "" if key in ("headers", "options") else f"={value}"  # (a pasted header may hold a key)
                raise UsageError(
                    f"%gtl providers: {key}{shown} is not JSON; quote the whole value so its own quotes stay: "
                    f"{key}='{example}'"
                ) from None
    return value


def say_set_aside(session: Any, url: str) -> None:
    """On a gateway, say what of the notebook's own set-up waits for ``embedded://``."""
    for unused in session.set_aside(url):
        print(f"(the gateway serves its own deployments: {unused} applies when you connect embedded:// again)")


def _usage_since(opts: Any) -> float | None:
    """``%gtl usage --days N`` / ``--since WHEN`` as unix seconds (``None``: neither), read as
    ``gtl usage --days`` and ``client.usage(since=)`` read them; a mistake is one line naming the option."""
    from gtl_nb.engine.ledger import bound_seconds
    from gtl_nb.engine.ledger_cli import days_ago

    if opts.since is None:
        try:
            return days_ago(opts.days)
        except ValueError as exc:  # a ConfigurationError
            raise UsageError(f"%gtl usage: {getattr(exc, 'message', None) or exc}") from None
    try:
        return bound_seconds(opts.since)
    except ValueError:  # the ledger's words are a Python caller's (tzinfo=, datetime): these a notebook's
        raise UsageError(
            "%gtl usage --since: expected a day (2026-12-01, from midnight UTC), ISO-8601 time with its offset "
            f"(2026-12-01T09:00:00Z) or unix seconds, got {opts.since!r}"
        ) from None
