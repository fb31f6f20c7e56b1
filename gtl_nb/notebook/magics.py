"""``%%gtl`` / ``%gtl`` and ``%%gap`` / ``%gap``: GTL completions and GAP messages from notebook cells.

The magics are a guest of the public API: ``gtl_nb.connect`` and its ``Client``, ``gtl_nb.gap``,
``gtl_nb.analysis``, ``gtl_nb.tools`` and the widgets of ``gtl_nb.notebook.widgets``. docs/magics.md
is the reference; this module keeps three rules:

* a user mistake (an unknown model, a missing key, a bad option, an undefined ``{name}``) is one
  ``UsageError`` line that says how to fix it, never a traceback;
* a provider error is one line with its GTL code (``RATE_LIMIT [openai]: ...``), raised as a
  ``GTLCellError`` so the cell still fails (``Run all`` stops) without a traceback;
* the last result is ``_gtl`` in the user namespace (``_gap`` for GAP messages), and never a token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.display import display

from gtl_nb.notebook import args as cli
from gtl_nb.notebook.args import ArgumentError
from gtl_nb.notebook.session import NotebookSession, platform_for, utc_now
from gtl_nb.notebook.template import TemplateError, render

__all__ = ["GTLCellError", "GTLMagics"]

FORMAT_INSTRUCTIONS = {
    "json": "Answer with JSON only: no prose before or after it, no code fences.",
    "code": "Answer with the code only, in one fenced code block, with no explanation before or after it.",
}
_FENCE_RE = re.compile(r"```[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<body>.*?)\n?```", re.DOTALL)

GTL_HELP = """\
%%gtl [MODEL] [options]      send the cell to a model (`%%gtl --help` lists the options)
%gtl models [--live DEPLOYMENT]   the models this notebook can use
%gtl usage [--by provider|model|day]   cost and tokens from the usage ledger
%gtl config [key=value ...]  show or set model=, chat=on|off, stream=on|off, endpoint=URL, file=PATH
%gtl providers [NAME key=value ... | NAME --remove]   configure a provider deployment
%gtl connect URL [--token-env VAR | --ask-token]   connect to a GTL endpoint
%gtl history                 the conversation kept in chat mode
%gtl reset                   forget the conversation"""

GAP_HELP = """\
%%gap [--platform P --thread T --role R --id ID --reply-to ID --to TARGET]   wrap the cell as a GAP message
%gap --from-last [options]   wrap the last %%gtl answer (or --from VAR)
%gap entities [VAR] [KEY=VALUE ...] [--suggest-with MODEL] [--apply]   define undefined entities
%gap graph [--out VAR]       draw the context graph of this notebook's GAP messages
%gap export PATH             write this notebook's GAP messages as JSON lines"""


class GTLCellError(Exception):
    """A provider error in a cell: shown as one GTL error line, no traceback (``.error`` is the GTLError)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def _mistake(exc: BaseException) -> UsageError:
    """A caller mistake from the client as a one-line ``UsageError`` that names the notebook's fix."""
    from gtl_nb.protocol import ConfigurationError, InvalidRequestError, ModelNotFoundError

    if isinstance(exc, ModelNotFoundError):
        return UsageError(str(exc).replace("`gtl models`", "`%gtl models`"))
    if isinstance(exc, (ConfigurationError, InvalidRequestError)):
        message = getattr(exc, "message", "") or str(exc)
        if "provider" in message and ("configured" in message or "missing" in message):
            message += " (in a notebook: `%gtl providers NAME key=value ...` or `%gtl config file=PATH`)"
        return UsageError(message)
    return UsageError(str(exc))


def _cell_number(shell: Any) -> int:
    """The In[n] of the running cell: IPython counts it as ``displayhook.prompt_count`` (older versions
    increment ``execution_count`` after a cell, newer ones before it)."""
    count = getattr(getattr(shell, "displayhook", None), "prompt_count", None)
    return count if isinstance(count, int) else shell.execution_count


def _cell_error(exc: Exception) -> Exception:
    """A caller mistake (set-up, routing, a request refused before sending) -> ``UsageError``; a provider's
    error -> ``GTLCellError``."""
    from gtl_nb.protocol import ConfigurationError, InvalidRequestError, ModelNotFoundError

    if isinstance(exc, (ConfigurationError, ModelNotFoundError)) or (
        isinstance(exc, InvalidRequestError) and getattr(exc, "provider", None) is None
    ):
        return _mistake(exc)
    return GTLCellError(exc)


def _bundle(markdown: str, plain: str) -> None:
    display({"text/markdown": markdown, "text/plain": plain}, raw=True)


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


@magics_class
class GTLMagics(Magics):
    """The magics of ``%load_ext gtl_nb``; ``self.session`` holds the notebook's state."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session = NotebookSession(shell)

    # ==========================================================================================
    # %gtl / %%gtl

    @no_var_expand
    @line_cell_magic
    def gtl(self, line: str, cell: str | None = None) -> Any:
        """Send the cell to a model (``%%gtl``), or run a subcommand (``%gtl models``, ...).

        ``%gtl`` alone lists the subcommands; ``%%gtl --help`` the options (docs/magics.md).
        """
        from gtl_nb.protocol import GTLError

        try:
            if cell is None:
                return self._gtl_line(line)
            return self._gtl_cell(line, cell)
        except (ArgumentError, TemplateError) as exc:
            raise UsageError(str(exc)) from None
        except GTLError as exc:  # raised before any request left: a set-up or routing mistake
            raise _mistake(exc) from None

    # -- the cell -----------------------------------------------------------------------------

    def _gtl_cell(self, line: str, cell: str) -> None:
        parser = cli.gtl_cell_parser()
        opts = parser.parse(cli.split(line, self.shell.user_ns))
        if opts is None or opts.help:
            print(cli.help_text(parser))
            return
        self._check_cell_options(opts)
        ns = self.shell.user_ns
        prompt = render(cell.strip("\n"), ns)
        if not prompt.strip():
            raise UsageError("the cell is empty: write the prompt in the cell, under the %%gtl line")
        client = self._client(opts.endpoint)
        chat = self.session.settings.chat if opts.chat is None else opts.chat
        stream = self.session.settings.stream if opts.stream is None else opts.stream
        models = opts.compare or [opts.model[0] if opts.model else self.session.default_model(client)[0]]

        from gtl_nb.protocol import Message

        system = self._system(opts, client, models)
        history = list(self.session.history) if chat else []
        messages = [*history, Message(role="user", content=prompt)]
        request: dict[str, Any] = {"system": system, "stream": stream}
        if opts.temperature is not None:
            request["temperature"] = opts.temperature
        if opts.max_tokens is not None:
            request["max_tokens"] = opts.max_tokens
        if opts.no_cache:
            request["cache"] = False
        if opts.providers:
            request["providers"] = opts.providers
        if opts.compare:
            self._compare(client, opts.compare, messages, request, opts.out)
            return
        final, added = self._ask(client, models[0], messages, request, opts, stream)
        self.session.remember(final, opts.out)
        if chat and final.tool_calls:
            print("not added to the conversation: its tool calls were not run")
        elif chat:
            self.session.history.extend([*added, final.message])
        if opts.format == "code" and not final.tool_calls:
            self.shell.set_next_input(_code_of(final.text), replace=False)

    def _check_cell_options(self, opts: Any) -> None:
        if len(opts.model) > 1:
            named = ", ".join(repr(m) for m in opts.model)
            raise ArgumentError(
                f"%%gtl takes at most one MODEL, got {named}; quote the --system text, or use --compare A B"
            )
        if opts.compare:
            if opts.model:
                raise ArgumentError("give the models after --compare (`%%gtl --compare A B`), not before it")
            if opts.tools:
                raise ArgumentError("--tools runs with one model; drop --compare, or drop --tools")
            if opts.chat:
                raise ArgumentError("--chat keeps one model's conversation; --compare does not add to it")
            if opts.format != "markdown":
                raise ArgumentError("--format applies to one model's answer; --compare shows markdown only")
        if opts.tools_dry_run and not opts.tools:
            raise ArgumentError("--tools-dry-run needs --tools f,g (the functions whose calls to show)")

    def _client(self, endpoint: str | None) -> Any:
        try:
            return self.session.client(endpoint)
        except ValueError as exc:  # ConfigurationError: a bad config file or endpoint
            raise _mistake(exc) from None

    def _system(self, opts: Any, client: Any, models: Sequence[str]) -> str | None:
        """``--system``, the format's instruction and the ``--context`` message, as one system prompt."""
        parts = []
        if opts.system:
            parts.append(opts.system)  # {name} was substituted with the rest of the line
        if opts.format in FORMAT_INSTRUCTIONS:
            parts.append(FORMAT_INSTRUCTIONS[opts.format])
        if opts.context:
            parts.append(self._context_text(opts.context, client, models))
        return "\n\n".join(parts) or None

    def _context_text(self, name: str, client: Any, models: Sequence[str]) -> str:
        from gtl_nb import gap

        wrapped = self._wrapped_variable(name)
        platforms = {platform_for(self.session.provider_type_of(client, model)) for model in models}
        target = platforms.pop() if len(platforms) == 1 else "generic"
        return gap.transform_for_platform(wrapped, target)

    def _wrapped_variable(self, name: str) -> Any:
        """A GAP message from the namespace: a ``WrappedMessage``, or GAP JSON / markdown text."""
        from gtl_nb import gap

        if name not in self.shell.user_ns:
            raise UsageError(f"{name!r} is not defined; wrap a message first (`%%gap --out {name}`)")
        value = self.shell.user_ns[name]
        if isinstance(value, gap.WrappedMessage):
            return value
        if isinstance(value, str):
            for parse in (gap.from_json, gap.from_markdown):
                try:
                    return parse(value)
                except (ValueError, TypeError):
                    continue
        raise UsageError(
            f"{name!r} is a {type(value).__name__}, not a GAP message; "
            f"wrap it first (`%%gap --from {name} --out msg`)"
        )

    # -- one model, with the tool loop ------------------------------------------------------------

    def _ask(
        self, client: Any, model: str, messages: list[Any], request: dict[str, Any], opts: Any, stream: bool
    ) -> tuple[Any, list[Any]]:
        """Ask ``model``, running tool calls up to ``--max-steps`` rounds; the final Completion and the
        messages this cell added to the conversation before the final answer."""
        from gtl_nb.tools import run_tool_calls

        tools, functions = self._tools(opts.tools or ())
        if tools:
            request = {**request, "tools": tools}
        convo = list(messages)
        start = len(messages) - 1  # the user's message is the first one this cell adds
        rounds = 0
        while True:
            completion = self._one(client, model, convo, request, stream, opts)
            if not (tools and completion.tool_calls):
                return completion, convo[start:]
            for call in completion.tool_calls:
                _show_call(call, dry_run=opts.tools_dry_run)
            if opts.tools_dry_run:
                print(f"dry run: {len(completion.tool_calls)} tool call(s) shown, not run")
                return completion, convo[start:]
            if rounds >= opts.max_steps:
                print(
                    f"stopped after {rounds} tool round(s) (--max-steps {opts.max_steps}); "
                    "the calls above were not run"
                )
                return completion, convo[start:]
            results = run_tool_calls(completion.tool_calls, functions)
            for result in results:
                _show_result(result)
            convo.extend([completion.message, *(result.message for result in results)])
            rounds += 1

    def _tools(self, names: Sequence[str]) -> tuple[list[Any], dict[str, Callable[..., Any]]]:
        from gtl_nb.tools import tool_from_function

        tools, functions = [], {}
        for name in names:
            func = self.shell.user_ns.get(name)
            if func is None:
                raise UsageError(
                    f"--tools: {name!r} is not defined in the notebook; define the function first"
                )
            if not callable(func):
                raise UsageError(f"--tools: {name!r} is a {type(func).__name__}, not a function")
            try:
                tool = tool_from_function(func, name=name)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--tools: {exc}") from None
            tools.append(tool)
            functions[name] = func
        return tools, functions

    def _one(
        self, client: Any, model: str, messages: list[Any], request: dict[str, Any], stream: bool, opts: Any
    ) -> Any:
        """One request: a live ``StreamView`` (or the Completion when not streaming); errors as one line.

        ``client.stream`` raises set-up and routing mistakes before anything is sent (they become a
        ``UsageError`` in ``gtl``); what goes wrong after that is the provider's, shown with its code.
        """
        from gtl_nb.protocol import GTLError

        view = None
        if stream:
            from gtl_nb.notebook.widgets import StreamView

            view = StreamView(title=model)
        events = client.stream(model, messages, on_event=view.on_event if view else None, **request)
        if view is not None:
            view.display()
        try:
            for _ in events:
                pass
        except KeyboardInterrupt:
            events.close()
            if view is not None:
                view.finish(_stream_error(events))
            raise
        try:
            completion = events.result()
        except GTLError as exc:
            if view is not None:
                view.finish(exc)
            self._failed(exc, opts.out)
        shown = _shown(completion, opts.format)
        if view is not None:
            view.finish(shown)
        else:
            display(shown)
        return completion

    def _failed(self, exc: Exception, out: str | None) -> None:
        """A provider error: ``_gtl`` is the exception (its ``.completion`` has what arrived)."""
        self.session.remember(exc, out)
        raise GTLCellError(exc) from None

    # -- several models ---------------------------------------------------------------------------

    def _compare(
        self, client: Any, models: list[str], messages: list[Any], request: dict[str, Any], out: str | None
    ) -> None:
        from gtl_nb.notebook.widgets import ComparisonGrid

        grid = ComparisonGrid(list(dict.fromkeys(models)))
        grid.display()
        comparison = client.compare(models, messages, on_event=grid.on_event, **request)
        grid.finish(comparison)
        self.session.remember(comparison, out)

    # -- %gtl subcommands ---------------------------------------------------------------------------

    def _gtl_line(self, line: str) -> Any:
        words = cli.split(line, self.shell.user_ns)
        if not words or words[0] in ("help", "-h", "--help"):
            print(GTL_HELP)
            return None
        command, rest = words[0], words[1:]
        handler = {
            "models": self._models,
            "usage": self._usage,
            "config": self._config,
            "providers": self._providers,
            "connect": self._connect,
            "history": self._history,
            "reset": self._reset,
        }.get(command)
        if handler is None:
            raise UsageError(
                f"unknown %gtl subcommand {command!r}; use models, usage, config, providers, connect, "
                "history or reset (to ask a model, start the cell with %%gtl)"
            )
        return handler(rest)

    def _models(self, words: list[str]) -> Any:
        parser = cli.models_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return None
        import pandas as pd

        client = self._client(None)
        if opts.live:
            from gtl_nb.protocol import GTLError

            try:
                names = client.list_models(opts.live)
            except GTLError as exc:
                raise _cell_error(exc) from None
            return pd.DataFrame({"deployment": opts.live, "model": names})
        rows = [
            {
                "deployment": info.provider,
                "type": info.provider_type,
                "model": model.name,
                "offline": info.offline,
                "context_window": model.context_window,
                "cost_per_1k_input": model.cost_per_1k_input,
                "cost_per_1k_output": model.cost_per_1k_output,
            }
            for info in client.providers()
            for model in info.models
        ]
        return pd.DataFrame(rows)

    def _usage(self, words: list[str]) -> Any:
        parser = cli.usage_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return None
        client = self._client(None)
        if client.ledger is None:
            raise UsageError("the usage ledger is off ([ledger] enabled = false): there is no usage to show")
        from gtl_nb.analysis import usage_table

        return usage_table(client.ledger.to_dataframe(), by=opts.by)

    def _config(self, words: list[str]) -> None:
        settings = self.session.settings
        if not words:
            self._show_config()
            return
        changes = cli.parse_assignments(words, what="%gtl config")
        known = ("model", "chat", "stream", "endpoint", "file")
        for key in changes:
            if key not in known:
                raise UsageError(f"%gtl config: unknown setting {key!r}; known: {', '.join(known)}")
        switches = {key: cli.parse_bool(changes[key]) for key in ("chat", "stream") if key in changes}
        if "chat" in switches:  # every value is checked before any is applied
            settings.chat = switches["chat"]
        if "stream" in switches:
            settings.stream = switches["stream"]
        if "model" in changes:
            settings.model = changes["model"].strip() or None
        if "file" in changes:
            old = settings.config_file
            settings.config_file = os.path.expanduser(changes["file"]) if changes["file"].strip() else None
            try:
                self.session.reconnect()
            except ValueError as exc:
                settings.config_file = old
                self.session.close()
                raise _mistake(exc) from None
        if "endpoint" in changes:
            self._switch_endpoint(changes["endpoint"].strip() or "embedded://", None)
        self._show_config()

    def _show_config(self) -> None:
        settings = self.session.settings
        client = self._client(None)
        model, source = self.session.default_model(client)
        deployments = ", ".join(
            f"{info.provider} ({info.provider_type}{', offline' if info.offline else ''})"
            for info in client.providers()
        )
        config_path = getattr(getattr(client, "config", None), "source_path", None)
        rows = [
            ("model", f"{model}  ({source})"),
            ("chat", "on" if settings.chat else "off"),
            ("stream", "on" if settings.stream else "off"),
            ("endpoint", settings.endpoint),
            (
                "file",
                str(config_path) if config_path else "none (set $GTL_NB_CONFIG or `%gtl config file=PATH`)",
            ),
            ("providers", deployments or "none"),
        ]
        print("\n".join(f"{key:<10}{value}" for key, value in rows))

    def _providers(self, words: list[str]) -> None:
        if not words:
            client = self._client(None)
            for info in client.providers():
                kind = f"{info.provider_type}, offline" if info.offline else info.provider_type
                print(f"{info.provider:<16}{kind:<22}{len(info.models)} model(s)")
            return
        name, rest = words[0], words[1:]
        if "=" in name or name.startswith("-"):
            raise UsageError(
                "%gtl providers: start with the deployment's name (`%gtl providers openai base_url=...`)"
            )
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
            self.session.providers[name] = {key: _setting_value(key, value) for key, value in raw.items()}
        try:
            client = self.session.reconnect()
        except ValueError as exc:  # ConfigurationError names the bad key
            if previous is None:
                self.session.providers.pop(name, None)
            else:
                self.session.providers[name] = previous
            self.session.close()
            raise _mistake(exc) from None
        names = ", ".join(info.provider for info in client.providers())
        print(f"providers: {names}")

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
                raise UsageError(
                    f"%gtl connect: ${opts.token_env} is not set; set it before starting Jupyter"
                )
        elif opts.ask_token:
            import getpass

            token = getpass.getpass(f"token for {opts.url}: ") or None
        self._switch_endpoint(opts.url, token)
        print(f"connected to {opts.url}")

    def _switch_endpoint(self, url: str, token: str | None) -> None:
        try:
            self.session.connect(url, token)
        except ValueError as exc:  # ConfigurationError: unknown scheme, no gateway yet
            raise _mistake(exc) from None

    def _history(self, words: list[str]) -> None:
        history = self.session.history
        if not history:
            print("no conversation yet (chat mode keeps one: `%gtl config chat=on` or `%%gtl --chat`)")
            return
        plain, markdown = [], []
        for message in history:
            text = message.content or ""
            for call in message.tool_calls:
                text += f" [tool call] {call.name}({call.arguments})"
            plain.append(f"{message.role}: {text}")
            markdown.append(f"**{message.role}**: {text}")
        _bundle("\n\n".join(markdown), "\n".join(plain))

    def _reset(self, words: list[str]) -> None:
        count = len(self.session.history)
        self.session.history.clear()
        print(f"conversation cleared ({count} message{'s' if count != 1 else ''})")

    # ==========================================================================================
    # %gap / %%gap

    @no_var_expand
    @line_cell_magic
    def gap(self, line: str, cell: str | None = None) -> Any:
        """Wrap the cell (or the last answer) as a GAP message; ``%gap entities|graph|export``."""
        from gtl_nb.protocol import GTLError

        try:
            words = cli.split(line, self.shell.user_ns)
            if cell is None and words and not words[0].startswith("-"):
                return self._gap_line(words)
            if cell is None and not words:
                print(GAP_HELP)
                return None
            return self._gap_cell(words, cell or "")
        except (ArgumentError, TemplateError) as exc:
            raise UsageError(str(exc)) from None
        except GTLError as exc:
            raise _mistake(exc) from None

    def _gap_cell(self, words: list[str], cell: str) -> None:
        from gtl_nb import gap

        parser = cli.gap_cell_parser()
        opts = parser.parse(words)
        if opts is None or opts.help:
            print(cli.help_text(parser))
            return
        content = cell.strip("\n")
        if opts.from_last or opts.from_var:
            if content.strip():
                raise UsageError("%%gap --from-last/--from wraps an answer: leave the cell empty")
            completion = self._completion_source(opts)
            if isinstance(completion, str):
                content, platform, model, chat_id, time, role = (
                    completion,
                    "generic",
                    None,
                    None,
                    utc_now(),
                    "user",
                )
            else:
                content = completion.text
                platform = platform_for(completion.provider_type)
                model, chat_id = completion.model, completion.session_id
                time, role = self.session.finished_at(completion), "assistant"
        else:
            if not content.strip():
                raise UsageError(
                    "%%gap: the cell is empty; write the message under %%gap (or use --from-last)"
                )
            platform, model, chat_id, time, role = "generic", None, None, utc_now(), "user"
        chat_id = opts.chat_id or chat_id or f"nb-{_cell_number(self.shell)}"
        parent = opts.reply_to or self.session.previous_in_thread(opts.thread, exclude=chat_id)
        target = None
        if opts.to:
            target = opts.to.strip().lower()
            if target not in gap.PLATFORMS:
                raise UsageError(
                    f"--to: unknown platform {opts.to!r}; choose one of {', '.join(gap.PLATFORMS)}"
                )
        try:
            wrapped = gap.wrap_message(
                content,
                opts.platform or platform,
                chat_id,
                role=opts.role or role,
                model=opts.model or model,
                timestamp=time,
                thread_id=opts.thread,
                parent_messages=[parent] if parent else [],
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"%%gap: {exc}") from None
        self.session.add_gap(wrapped, opts.out)
        display(GapView(wrapped, target))

    def _completion_source(self, opts: Any) -> Any:
        from gtl_nb.completion import Completion

        if opts.from_last:
            if self.session.last_completion is None:
                raise UsageError("--from-last: no answer yet; run a %%gtl cell first")
            return self.session.last_completion
        value = self.shell.user_ns.get(opts.from_var)
        if value is None:
            raise UsageError(f"--from: {opts.from_var!r} is not defined in the notebook")
        value = getattr(value, "completion", value)  # a GTL error keeps the partial answer
        if not isinstance(value, (Completion, str)):
            raise UsageError(
                f"--from: {opts.from_var!r} is a {type(value).__name__}, not a Completion or text"
            )
        return value

    def _gap_line(self, words: list[str]) -> Any:
        command, rest = words[0], words[1:]
        handler = {"entities": self._entities, "graph": self._graph, "export": self._export}.get(command)
        if handler is None:
            raise UsageError(
                f"unknown %gap subcommand {command!r}; use entities, graph or export (or %%gap to wrap)"
            )
        return handler(rest)

    def _entities(self, words: list[str]) -> None:
        from gtl_nb import gap
        from gtl_nb.protocol import GTLError

        parser = cli.entities_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return
        names = [w for w in opts.words if "=" not in w]
        values = cli.parse_assignments([w for w in opts.words if "=" in w], what="%gap entities")
        if len(names) > 1:
            raise UsageError(f"%gap entities takes one message variable, got {', '.join(names)}")
        var = names[0] if names else None
        if var is not None:
            wrapped = self._wrapped_variable(var)
        elif self.session.gap_messages:
            wrapped = self.session.gap_messages[-1]
        else:
            raise UsageError("%gap entities: no GAP message yet; wrap one with %%gap (or name a variable)")

        latest = [wrapped]

        def store(updated: Any) -> None:
            """A new version of the message: into the notebook's list and every variable that held it."""
            previous, latest[0] = latest[0], updated
            if var is None or any(m.chat_id == updated.chat_id for m in self.session.gap_messages):
                self.session.add_gap(updated)
            self.session.rebind(previous, updated)
            if var is not None:
                self.shell.user_ns[var] = updated

        for key, value in values.items():
            wrapped = gap.update_entity(wrapped, key, value or None)
        if values:
            store(wrapped)
        undefined = gap.find_undefined(wrapped)
        if not undefined:
            print(f"no undefined entities in {wrapped.chat_id}")
            if values:
                display(GapView(wrapped, None))
            return
        suggestions = []
        if opts.suggest_with:
            history = [m for m in self.session.gap_messages if m.chat_id != wrapped.chat_id]
            ask = self._client(None).as_ask(opts.suggest_with)
            try:
                suggestions = gap.suggest_definitions(wrapped, history, ask=ask)
            except GTLError as exc:
                raise _cell_error(exc) from None
            _show_suggestions(suggestions)
        from gtl_nb.notebook.widgets import EntityEditor

        editor = EntityEditor(wrapped, on_apply=store, suggestions=suggestions)  # fields pre-filled
        if opts.apply and suggestions:
            best: dict[str, str] = {}
            for suggestion in suggestions:  # ranked best first within each key
                best.setdefault(suggestion.key, suggestion.value)
            editor.apply(best)  # calls store()
        editor.display()

    def _graph(self, words: list[str]) -> None:
        from gtl_nb import gap

        parser = cli.graph_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return
        if not self.session.gap_messages:
            raise UsageError("%gap graph: no GAP messages in this notebook yet; wrap some with %%gap")
        graph = gap.create_context_graph(self.session.gap_messages)
        import matplotlib.pyplot as plt

        from gtl_nb.analysis import draw_context_graph

        figure, ax = plt.subplots(figsize=(9, 6))
        draw_context_graph(graph, ax=ax)
        display(figure)
        plt.close(figure)  # shown once: the inline backend must not draw it again at the end of the cell
        if opts.out:
            self.shell.user_ns[opts.out] = graph

    def _export(self, words: list[str]) -> None:
        from gtl_nb import gap

        parser = cli.export_parser()
        opts = parser.parse(words)
        if opts is None:
            print(cli.help_text(parser))
            return
        messages = self.session.gap_messages
        if not messages:
            raise UsageError("%gap export: no GAP messages in this notebook yet; wrap some with %%gap")
        path = Path(opts.path).expanduser()
        try:
            with path.open("w", encoding="utf-8") as handle:
                for message in messages:
                    handle.write(gap.to_json(message) + "\n")
        except OSError as exc:
            raise UsageError(f"%gap export: cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {len(messages)} GAP message{'s' if len(messages) != 1 else ''} to {path}")


# ----------------------------------------------------------------------------------------------
# display helpers


class GapView:
    """A GAP message in the notebook: its GAP markdown, the undefined entities, and the text for a target."""

    def __init__(self, wrapped: Any, target: str | None) -> None:
        self.wrapped = wrapped
        self.target = target

    def _parts(self) -> tuple[str, str | None, list[str]]:
        from gtl_nb import gap

        transformed = gap.transform_for_platform(self.wrapped, self.target) if self.target else None
        return gap.to_markdown(self.wrapped), transformed, list(self.wrapped.undefined)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        text, transformed, undefined = self._parts()
        note = (
            f"undefined entities: {', '.join(undefined)} (define them with `%gap entities`)"
            if undefined
            else ""
        )
        markdown = [f"```\n{text}\n```"]
        plain = [text]
        if note:
            markdown.append(f"_{note}_")
            plain.append(note)
        if transformed is not None:
            markdown.append(f"**For {self.target}:**\n\n```\n{transformed}\n```")
            plain.append(f"-- for {self.target} --\n{transformed}")
        return {"text/markdown": "\n\n".join(markdown), "text/plain": "\n\n".join(plain)}


def _show_call(call: Any, *, dry_run: bool) -> None:
    label = "tool call (dry run, not run)" if dry_run else "tool call"
    _bundle(
        f"**{label}** `{call.name}({_clip(call.arguments)})`",
        f"[{label}] {call.name}({_clip(call.arguments)})",
    )


def _show_result(result: Any) -> None:
    content = _clip(result.content)
    mark = "→" if result.ok else "→ **failed**:"
    _bundle(f"{mark} `{content}`", f"  -> {content}")


def _show_suggestions(suggestions: list[Any]) -> None:
    if not suggestions:
        print("no suggestions")
        return
    lines = ["| entity | value | score | from |", "| --- | --- | --- | --- |"]
    plain = []
    for s in suggestions:
        origin = s.chat_id or s.source
        lines.append(f"| {s.key} | {s.value} | {s.score:.2f} | {origin} |")
        plain.append(f"{s.key} = {s.value}  ({s.score:.2f}, {origin})")
    _bundle("\n".join(lines), "\n".join(plain))


def _stream_error(events: Any) -> Any:
    """What to draw when the user interrupted: the stream's error, or what arrived."""
    try:
        return events.result()
    except Exception as exc:
        return exc


def _shown(completion: Any, fmt: str) -> Any:
    """The Completion as ``--format`` shows it: markdown as is; text, json and code in a fenced block."""
    if fmt == "markdown" or completion.tool_calls:
        return completion
    if fmt == "json":
        body = _code_of(completion.text)
        try:
            text = "```json\n" + json.dumps(json.loads(body), indent=2, ensure_ascii=False) + "\n```"
        except ValueError as exc:
            print(f"the answer is not valid JSON ({exc}); shown as text")
            text = f"```text\n{completion.text}\n```"
    elif fmt == "code":
        match = _FENCE_RE.search(completion.text)
        language = (match.group("lang") if match else "") or "python"
        text = f"```{language}\n{_code_of(completion.text)}\n```"
    else:
        text = f"```text\n{completion.text}\n```"
    return dataclasses.replace(completion, text=text)


def _code_of(text: str) -> str:
    """The first fenced block's body, or the whole text when there is no fence."""
    match = _FENCE_RE.search(text)
    return (match.group("body") if match else text).strip("\n")


def _setting_value(key: str, value: str) -> Any:
    """A ``%gtl providers`` value: ``models`` is a comma list, JSON values as JSON, anything else text."""
    if key == "models":
        return cli.comma_list(value)
    text = value.strip()
    if text and (text[0] in "[{" or text in ("true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", text)):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return value
