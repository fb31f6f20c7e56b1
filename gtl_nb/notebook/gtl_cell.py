"""``%%gtl``: send the cell to a model and show the answer.

From the cell's options to the request (system prompt, ``--format``, ``--context``, chat history), then
either one model, streamed into a ``StreamView`` with the ``--tools`` loop, or ``--compare A B``, all
models at once into a ``ComparisonGrid``. The result becomes ``_gtl`` (and ``--out VAR``); a provider
error fails the cell with one ``GTLCellError`` line, and so does Ctrl-C (the kernel's interrupt) while
an answer streams: ``_gtl`` is then the partial answer, a ``Completion`` whose ``cancelled`` is true.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec
from IPython.core.error import UsageError
from IPython.display import display

from gtl_nb.completion import Comparison, Completion
from gtl_nb.notebook import args as cli
from gtl_nb.notebook.args import ArgumentError
from gtl_nb.notebook.errors import GTLCellError, a_kind_of, client_for, in_notebook_words, mistake
from gtl_nb.notebook.formats import FORMAT_INSTRUCTIONS, code_to_insert, shown
from gtl_nb.notebook.gap_magic import wrapped_variable
from gtl_nb.notebook.output import clip, show_bundle
from gtl_nb.notebook.session import platform_for
from gtl_nb.notebook.template import render
from gtl_nb.protocol.session import is_failover
from gtl_nb.safe_markdown import code_span

if TYPE_CHECKING:  # pragma: no cover
    from gtl_nb.notebook.session import NotebookSession

__all__ = ["GtlCell", "check_cell_options"]


class GtlCell:
    """Runs ``%%gtl`` cells for one shell; the notebook's state is ``session``."""

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        self.shell = shell
        self.session = session
        self._out: str | None = None  # the running cell's --out, once its options are read
        self._default: tuple[str, str] | None = None  # the running cell's model when a setting chose it

    def run(self, line: str, cell: str) -> None:
        """Ask the model(s) the ``%%gtl`` line names, with the cell (its ``{name}`` substituted) as prompt."""
        from gtl_nb.protocol import ModelNotFoundError

        answers_before = self.session.last_result
        self._out = None
        self._default = None
        try:
            try:
                self._run(line, cell)
            except ModelNotFoundError as exc:  # the cell named no model: say where the unknown one came from
                if self._default is None or repr(self._default[0]) not in str(exc):
                    raise
                raise UsageError(f"{mistake(exc)} {_where_the_model_came_from(self._default[1])}") from None
        except BaseException as exc:
            if self.session.last_result is answers_before:  # failed before any answer: none to wrap now
                self.session.forget_last(exc, self._out)
            raise

    def _run(self, line: str, cell: str) -> None:
        parser = cli.gtl_cell_parser()
        opts = parser.parse(cli.split(line, self.shell.user_ns))
        if opts is None or opts.help:
            print(cli.help_text(parser))
            return
        self._out = opts.out  # the error is the cell's result too, should it fail before an answer
        check_cell_options(opts)
        ns = self.shell.user_ns
        prompt = render(cell.strip("\n"), ns)
        if not prompt.strip():
            raise UsageError("the cell is empty: write the prompt in the cell, under the %%gtl line")
        client = client_for(self.session, opts.endpoint)
        chat = self.session.settings.chat if opts.chat is None else opts.chat
        stream = self.session.settings.stream if opts.stream is None else opts.stream
        if not opts.compare and not opts.model:
            default = self.session.default_model(client)
            if default[1] != "configuration default":  # the notebook's own setting: said if routing knows it not
                self._default = default
        models = opts.compare or [opts.model[0] if opts.model else default[0]]

        from gtl_nb.protocol import Message

        system = self._system(opts, client, models)
        history = list(self.session.history) if chat else []
        cached = opts.cache_prompt or opts.cache_ttl is not None
        mark: dict[str, Any] = {"cache_point": cached, "cache_ttl": opts.cache_ttl if cached else None}
        messages = [*history, Message(role="user", content=prompt, **mark)]
        request: dict[str, Any] = {"system": system, "stream": stream}
        if cached and system:  # marked too: the document a question follows is the prefix reread
            messages.insert(0, Message(role="system", content=system, **mark))
            request["system"] = None
        if opts.temperature is not None:
            request["temperature"] = opts.temperature
        if opts.max_tokens is not None:
            request["max_tokens"] = opts.max_tokens
        if opts.reasoning_effort is not None or opts.reasoning_budget is not None:  # the cell's replaces the pair
            request["reasoning_effort"] = opts.reasoning_effort
            request["reasoning_budget"] = opts.reasoning_budget
        elif self.session.settings.reasoning_effort is not None:  # `%gtl config reasoning_effort=`
            request["reasoning_effort"] = self.session.settings.reasoning_effort
        if opts.no_cache:
            request["cache"] = False
        if opts.providers:
            request["providers"] = opts.providers
        if opts.schema:
            request["response_format"] = _schema(ns, opts.schema)
        if opts.compare:
            self._compare(client, opts.compare, messages, request, opts.out)
            return
        final, added = self._ask(client, models[0], messages, request, opts, stream)
        self.session.remember(final, opts.out)
        if chat and final.tool_calls:
            print("not added to the conversation: its tool calls were not run")
        elif chat:  # the marks are this cell's: the next one marks its own newest turn
            unmarked = {"cache_point": False, "cache_ttl": None}
            self.session.history.extend(msgspec.structs.replace(m, **unmarked) for m in [*added, final.message])
        if opts.format == "code" and not final.tool_calls:
            code = code_to_insert(final.text)
            if code is None:  # as --format json says of an answer that is not JSON
                print("the answer holds no code block (nor Python as written); no cell inserted")
            else:
                self.shell.set_next_input(code, replace=False)

    def _system(self, opts: Any, client: Any, models: Sequence[str]) -> str | None:
        """The ``--context`` message, ``--system`` and the format's instruction, as one system prompt.

        The context leads: it is the long part that stays the same from cell to cell, so a provider's
        cached prefix still holds when ``--system`` changes, and the instructions come after what they are
        about, where models weigh them most."""
        parts = []
        if opts.context:
            parts.append(self._context_text(opts.context, client, models))
        if opts.system:
            parts.append(opts.system)  # {name} was substituted with the rest of the line
        if opts.format in FORMAT_INSTRUCTIONS:
            parts.append(FORMAT_INSTRUCTIONS[opts.format])
        return "\n\n".join(parts) or None

    def _context_text(self, name: str, client: Any, models: Sequence[str]) -> str:
        """The ``--context`` GAP message, transformed for the platform of the models' provider."""
        from gtl_nb import gap

        wrapped = wrapped_variable(self.shell.user_ns, name)
        platforms = {platform_for(self.session.provider_type_of(client, model)) for model in models}
        target = platforms.pop() if len(platforms) == 1 else "generic"
        return gap.transform_for_platform(wrapped, target)

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
        steps: list[Any] = []  # this cell's requests so far, each its own Completion
        rounds = 0
        while True:
            last = not tools or opts.tools_dry_run or rounds >= opts.max_steps  # no calls run after this one
            answer = self._one(client, model, convo, request, stream, opts, steps, last=last)  # the cell's whole answer
            steps = list(answer.steps) or [answer]
            completion = steps[-1]  # this request's own
            if not (tools and completion.tool_calls):
                return answer, convo[start:]
            # the answer above shows its calls already: what follows is what became of them
            if opts.tools_dry_run:
                print(f"dry run: the {len(completion.tool_calls)} tool call(s) above were not run")
                return answer, convo[start:]
            if rounds >= opts.max_steps:
                print(
                    f"stopped after {rounds} tool round(s) (--max-steps {opts.max_steps}); the calls above were not run"
                )
                return answer, convo[start:]
            try:  # (the results shown too: no request streams until the next round's, to catch a Ctrl-C)
                results = run_tool_calls(completion.tool_calls, functions)
                for result in results:
                    _show_result(result)
            except KeyboardInterrupt:  # Ctrl-C in one of the notebook's tool functions: the loop so far stands
                names = ", ".join(dict.fromkeys(call.name for call in completion.tool_calls))
                self.session.remember(answer, opts.out)
                said = f"cancelled while the notebook ran {names} (tool round {rounds + 1}); _gtl has the answers"
                raise GTLCellError(answer, said) from None
            convo.extend([completion.message, *(result.message for result in results)])
            rounds += 1

    def _tools(self, names: Sequence[str]) -> tuple[list[Any], dict[str, Callable[..., Any]]]:
        """The ``--tools`` functions of the notebook, as GTL tools and by name."""
        from gtl_nb.tools import tool_from_function

        tools, functions = [], {}
        for name in names:
            func = self.shell.user_ns.get(name)
            if func is None:
                raise UsageError(f"--tools: {name!r} is not defined in the notebook; define the function first")
            if not callable(func):
                raise UsageError(f"--tools: {name!r} is {a_kind_of(func)}, not a function")
            try:
                tool = tool_from_function(func, name=name)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--tools: {exc}") from None
            tools.append(tool)
            functions[name] = func
        return tools, functions

    def _one(
        self,
        client: Any,
        model: str,
        messages: list[Any],
        request: dict[str, Any],
        stream: bool,
        opts: Any,
        earlier: Sequence[Any] = (),
        *,
        last: bool = True,
    ) -> Any:
        """One request: a live ``StreamView`` (or the Completion when not streaming); errors as one line.

        After ``earlier`` requests of the cell's tool loop, the answer returned is the whole loop's
        (``Completion.over_steps``): this request's text, every request's tokens and cost. It is also
        what is shown when no request follows (no tool calls, or ``last``: none of them will be run);
        a request whose calls the loop runs next shows its own numbers, so the footers never count a
        request twice.
        ``client.stream`` raises set-up and routing mistakes before anything is sent (they become a
        ``UsageError`` in ``gtl``); what goes wrong after that is the provider's, shown with its code.
        """
        from gtl_nb.protocol import GTLError

        view = None
        if stream:
            from gtl_nb.notebook.widgets import StreamView

            view = StreamView(title=model)
        started = time.monotonic()
        events = client.stream(model, messages, on_event=view.on_event if view else None, **request)
        if view is not None:
            view.display()
        try:
            for _ in events:
                pass
            completion = events.result()
        except KeyboardInterrupt:  # Ctrl-C / "interrupt the kernel": the stream has cancelled itself
            seconds = time.monotonic() - started
            self._cancelled(events, view, seconds, opts.out, _routed(client, model, request), earlier)
        except GTLError as exc:
            self._failed(exc, events, view, time.monotonic() - started, opts.out, earlier)
        except BaseException as exc:
            if view is not None:
                view.finish(exc)  # never leave a live widget behind
            raise
        whole = Completion.over_steps([*earlier, completion])
        answer = shown(whole if last or not completion.tool_calls else completion, opts.format)
        if view is not None:
            view.finish(answer)
        else:
            display(answer)
        return whole

    def _failed(
        self, exc: Exception, events: Any, view: Any, seconds: float, out: str | None, earlier: Sequence[Any] = ()
    ) -> NoReturn:
        """A provider error: ``_gtl`` is the exception (its ``.completion`` has what arrived — after
        ``earlier`` requests of a tool loop, the loop's, as ``Completion.over_steps`` adds it up); the cell
        fails with its one line — how long it took and, if an answer had begun, how much of it came —
        and the view keeps only what arrived before it (so the error is said once)."""
        if view is not None:
            view.finish(exc, show_error=False)
        arrived_here = getattr(exc, "completion", None)
        arrived = _arrived(events, arrived_here)  # of this request, before the loop's are added
        if earlier and isinstance(arrived_here, Completion):
            exc.completion = Completion.over_steps([*earlier, arrived_here])  # type: ignore[attr-defined]
        self.session.remember(exc, out)
        after = f"{arrived}, " if arrived else ""
        raise GTLCellError(exc, f"{in_notebook_words(str(exc))} · after {after}{seconds:.2f} s") from None

    def _cancelled(
        self,
        events: Any,
        view: Any,
        seconds: float,
        out: str | None,
        routed: list[tuple[str, str, str]],
        earlier: Sequence[Any] = (),
    ) -> NoReturn:
        """The user interrupted the stream: keep what arrived as ``_gtl`` — with the time it took and
        the deployment it was with, so its footer reads as a finished answer's, marked cancelled — and
        fail the cell with one line (failing, so "Run all" stops where the user stopped it)."""
        events.close()  # a no-op once the stream has ended with its CANCELLED error
        partial = events.completion()
        arrived = _arrived(events, partial) or "0 tokens"
        partial = Completion.over_steps([*earlier, _cut_short(partial, routed, seconds)])
        if view is not None:
            view.finish(partial, show_error=False)
        self.session.remember(partial, out)
        raise GTLCellError(partial, f"cancelled after {arrived}, {seconds:.1f} s")

    # -- several models ---------------------------------------------------------------------------

    def _compare(
        self, client: Any, models: list[str], messages: list[Any], request: dict[str, Any], out: str | None
    ) -> None:
        """``--compare``: every model at once, one column each, then the summary table."""
        from gtl_nb.notebook.widgets import ComparisonGrid

        distinct = list(dict.fromkeys(models))
        if len(distinct) < len(models):  # one column a model: say so, or a column seems to be missing
            twice = ", ".join(dict.fromkeys(model for model in models if models.count(model) > 1))
            print(f"--compare: {twice} named more than once, compared once (one column each)")
        grid = ComparisonGrid(distinct)
        grid.display()
        started = time.monotonic()
        try:
            comparison = client.compare(models, messages, on_event=grid.on_event, **request)
        except KeyboardInterrupt:  # the client cancelled every request; the columns keep what arrived
            comparison = grid.interrupted()
            results = {
                model: _cut_short(result, _routed(client, model, request))
                if isinstance(result, Completion) and result.cancelled
                else result
                for model, result in comparison.results.items()
            }
            comparison = Comparison(models=comparison.models, results=results)
            grid.finish(comparison)
            self.session.remember(comparison, out)
            raise GTLCellError(comparison, f"cancelled after {time.monotonic() - started:.1f} s") from None
        grid.finish(comparison)
        self.session.remember(comparison, out)


def _where_the_model_came_from(source: str) -> str:
    """Where a cell's model came from when the cell named none (``NotebookSession.default_model``'s source)."""
    if source.startswith("$"):
        return f"(the model of {source}; `%gtl config model=...` overrides it, a cell's own MODEL too)"
    return "(the model set with `%gtl config model=...`; `%gtl config model=` with no value goes back to the default)"


def _routed(client: Any, model: str, request: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Where routing sends ``model`` (``Client.route``; ``[]`` when it cannot say): for an answer cut
    short before its ``done`` named the deployment."""
    from gtl_nb.protocol import GTLError

    try:
        return client.route(model, providers=request.get("providers"))
    except GTLError:
        return []


def _cut_short(partial: Completion, routed: Sequence[tuple[str, str, str]], seconds: float | None = None) -> Completion:
    """A cancelled answer as far as it got, with what its ``done`` would have said: the deployment it
    was with (the one it failed over to last, else the one deployment routing has for it — with
    several, a strategy or a breaker chose, and the footer names none rather than guess), its type
    and model, and ``seconds`` as its time (a time it has already is kept)."""
    deployment = partial.provider
    if deployment is None:
        failovers = [event for event in partial.events if is_failover(event)]
        deployment = failovers[-1].to_provider if failovers else (routed[0][0] if len(routed) == 1 else None)
    kind, model = next(((kind, model) for name, kind, model in routed if name == deployment), (None, None))
    latency = partial.latency_ms if partial.latency_ms is not None or seconds is None else seconds * 1000
    return replace(
        partial,
        provider=deployment,
        provider_type=partial.provider_type or kind,
        model=partial.model or model,
        latency_ms=latency,
    )


def _arrived(events: Any, partial: Any) -> str:
    """How much of the answer arrived, in words (``""`` for nothing): the provider's count of tokens
    when it sent one, else the stream's pieces of text (chunks: a provider may send many tokens in one)."""
    counted = getattr(partial, "tokens_out", None)
    if counted is not None:
        return f"{counted} token{'s' if counted != 1 else ''}" if counted else ""
    chunks = len(events.transcript.tokens)
    return f"{chunks} chunk{'s' if chunks != 1 else ''}" if chunks else ""


def _schema(namespace: dict[str, Any], name: str) -> Any:
    """``--schema VAR``: the request's ``response_format`` made from the notebook's ``VAR`` (a class
    into its strict JSON Schema), or one line saying what to pass instead."""
    from gtl_nb.client import response_format_of
    from gtl_nb.protocol import GTLError

    if name not in namespace:
        raise UsageError(
            f"--schema {name}: no variable {name!r} in the notebook; define it first: a dataclass or TypedDict "
            "(no extra install), a pydantic model class, or a response_format dict"
        )
    try:
        return response_format_of(namespace[name])
    except GTLError as exc:
        raise UsageError(f"--schema {name}: {in_notebook_words(exc.message)}") from None


def check_cell_options(opts: Any) -> None:
    """Refuse the ``%%gtl`` option combinations that cannot work, naming the fix (and take ``--model M``
    as the word ``M``; ``--schema`` shows the answer as ``--format json``)."""
    if getattr(opts, "schema", None):
        if opts.format not in ("markdown", "json"):
            raise ArgumentError(f"--schema answers with JSON; drop --format {opts.format} (it is shown as json)")
        if not opts.compare:
            opts.format = "json"
    if getattr(opts, "model_option", None):
        if opts.model:
            raise ArgumentError(f"give the model once: {opts.model[0]!r} or --model {opts.model_option!r}")
        opts.model = [opts.model_option]
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


def _show_result(result: Any) -> None:
    """What a tool call of the answer above returned (or how it failed), under its tool's name."""
    name = result.call.name
    if result.ok:
        content = clip(result.content)
        show_bundle(f"{code_span(name)} → {code_span(content)}", f"[{name}] -> {content}")
    else:
        error = clip(result.error or "")
        show_bundle(f"{code_span(name)} → **failed**: {code_span(error)}", f"[{name}] -> failed: {error}")
