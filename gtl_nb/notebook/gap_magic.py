"""``%%gap`` / ``%gap``: GAP messages from notebook cells.

``%%gap`` wraps the cell (or, with ``--from-last`` / ``--from VAR``, a ``%%gtl`` answer) as a GAP
message, threads it after the previous message of its thread, keeps it in the session and shows it as
a ``GapView`` (``_gap`` is the last one). The subcommands work on the notebook's messages:
``%gap entities`` defines undefined entities (by hand, or suggested by a model), ``%gap graph`` draws
the context graph, ``%gap export`` writes them as JSON lines. ``%gap`` alone prints the list below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.display import display

from gtl_nb.cli_unknown import close_word
from gtl_nb.notebook import args as cli
from gtl_nb.notebook.errors import a_kind_of, cell_error, client_for
from gtl_nb.notebook.formats import fenced
from gtl_nb.notebook.output import md_cell, sendable, show_bundle
from gtl_nb.notebook.session import platform_for, utc_now
from gtl_nb.safe_markdown import code_span

if TYPE_CHECKING:  # pragma: no cover
    from gtl_nb.notebook.session import NotebookSession

__all__ = ["GAP_HELP", "GapMagic", "GapView", "wrapped_variable"]

GAP_HELP = """\
%%gap [--platform P --thread T --role R --id ID --reply-to ID --to TARGET]   wrap the cell as a GAP message
%gap --from-last [options]   wrap the last %%gtl answer (or --from VAR)
%gap entities [VAR] [KEY=VALUE ...] [--suggest-with MODEL] [--apply]   define undefined entities
%gap graph [--out VAR]       draw the context graph of this notebook's GAP messages
%gap export PATH             write this notebook's GAP messages as JSON lines"""


#: A cell whose first line is this alone is a GAP message pasted whole (from a chat, gap.to_markdown,
#: gtl gap wrap); text that merely begins with it is text to wrap, as before
PASTED_MARKER = "[GAP:START]"
_END_MARKER = "[GAP:END]"


def is_pasted(text: str) -> bool:
    """Whether ``text``'s first line that is not blank is the GAP start marker alone (as GAP's grammar
    reads a marker: on a line of its own)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip() == PASTED_MARKER
    return False


#: What a pasted message already says: the options that would wrap it again
_WRAPPING_OPTIONS = (
    ("--platform", "platform"),
    ("--thread", "thread"),
    ("--role", "role"),
    ("--id", "chat_id"),
    ("--reply-to", "reply_to"),
    ("--model", "model"),
)


def _refuse_wrapping_options(opts: Any, where: str) -> None:
    """A GAP message is read as it is: the options that would wrap it again are refused, named."""
    given = [option for option, name in _WRAPPING_OPTIONS if getattr(opts, name)]
    if given:
        raise UsageError(
            f"%%gap: {where} is a GAP message, which carries its own platform, thread, role, chat id, parents "
            f"and model; drop {', '.join(given)} (--out and --to apply to it)"
        )


def _gap_message_held(value: Any, name: str) -> Any:
    """The GAP message a ``--from`` variable holds as a ``WrappedMessage``, as GAP's JSON structure (a
    dict with ``gap_version``), or as its JSON text; ``None`` for anything else (a Completion, text to
    wrap). A structure that says it is GAP but is not a valid message: its fault, as one line."""
    from gtl_nb import gap
    from gtl_nb.gap.errors import GAPLimitError
    from gtl_nb.gap.jsonfmt import BOM, decode, is_meant_as_gap_json
    from gtl_nb.gap.limits import check_text

    if isinstance(value, gap.WrappedMessage):
        return value
    what = "a GAP structure"
    if isinstance(value, str):
        text = value.strip().removeprefix(BOM).strip()  # (a BOM: how an editor saved the file)
        # The parse below only for a likely one; a key written with escapes ("gap\u005fversion") is
        # gap_version too once decoded
        if not (text.startswith("{") and ('"gap_version"' in text or "\\u" in text)):
            return None
        try:  # GAP's JSON is an object with gap_version at its top: anything else is text to wrap
            value = decode(check_text(text, "a GAP JSON document"))
        except GAPLimitError as exc:  # a GAP document beyond a limit is refused, not wrapped as prose
            if is_meant_as_gap_json(text):
                raise UsageError(f"--from: {name!r} holds GAP JSON beyond GAP's limits: {exc}") from None
            return None
        except gap.GAPFormatError:
            return None
        what = "GAP JSON"
    if not (isinstance(value, dict) and "gap_version" in value):
        return None
    try:
        return gap.from_dict(value)
    except gap.GAPFormatError as exc:
        raise UsageError(f"--from: {name!r} holds {what} that is not a GAP message: {exc}") from None


def _pasted_message(content: str, opts: Any, where: str = "the cell") -> Any:
    """The GAP message pasted into a ``%%gap`` cell (or held as text by ``--from VAR``: ``where`` says
    which), read as it is (wrapping it again would bury its metadata in the content, its markers
    escaped); what is wrong with it, as one line."""
    from gtl_nb import gap

    _refuse_wrapping_options(opts, where)
    in_a_cell = where == "the cell"
    try:
        blocks = gap.parse_all(content)
    except gap.GAPFormatError as exc:
        raise UsageError(f"%%gap: {where} starts with {PASTED_MARKER} but is not a GAP message: {exc}") from None
    if len(blocks) > 1:  # a wrap is one message: _gap, --out and the view hold one
        each = "paste each in a %%gap cell of its own" if in_a_cell else "give each a variable of its own"
        raise UsageError(f"%%gap: {where} holds {len(blocks)} GAP messages, and %%gap reads one; {each}")
    if not blocks:  # (the grammar found no whole block after the start marker)
        raise UsageError(f"%%gap: {where} starts with {PASTED_MARKER} but holds no whole GAP message")
    wrapped = blocks[0]
    lines = [line.strip() for line in content.strip().split("\n")]  # (its lines as the reader split them)
    end = lines.index(_END_MARKER) if _END_MARKER in lines else len(lines)
    if any(lines[end + 1 :]) or end == len(lines):  # (a marker counts only on a line of its own)
        alone = "put the message in a cell of its own" if in_a_cell else f"keep the message alone in {where}"
        raise UsageError(f"%%gap: text follows the GAP message's [GAP:END] in {where}; {alone}")
    return wrapped


def _pasted_json(content: str, opts: Any) -> Any:
    """The GAP message a ``%%gap`` cell holds in GAP's JSON form, read as it is; ``None`` for any other
    text (JSON that is not GAP's included: wrapped as text, as before). A GAP document that cannot be
    read — beyond a limit, or missing what GAP requires — is one line saying why, not wrapped as prose."""
    from gtl_nb import gap
    from gtl_nb.gap.jsonfmt import BOM, decode, from_dict, is_meant_as_gap_json
    from gtl_nb.gap.limits import check_text

    text = content.strip().removeprefix(BOM).strip()
    if not text.startswith("{"):
        return None
    try:
        document = decode(check_text(text, "a GAP JSON document"))
    except gap.GAPFormatError as exc:  # beyond a limit, or not JSON: a GAP document cut short, or text
        if is_meant_as_gap_json(text):  # (its first key says so, or it decodes to one)
            raise UsageError(f"%%gap: the cell holds GAP JSON that cannot be read: {exc}") from None
        return None
    if not isinstance(document, dict) or "gap_version" not in document:
        return None  # JSON, not GAP's
    try:
        message = from_dict(document)
    except gap.GAPFormatError as exc:
        raise UsageError(f"%%gap: the cell holds GAP JSON that cannot be read: {exc}") from None
    _refuse_wrapping_options(opts, "the cell")
    return message


class GapMagic:
    """Runs ``%%gap`` cells and ``%gap`` lines for one shell; the notebook's state is ``session``."""

    def __init__(self, shell: Any, session: NotebookSession) -> None:
        self.shell = shell
        self.session = session

    def run(self, line: str, cell: str | None) -> Any:
        """A subcommand (``%gap entities ...``), the list of them (``%gap``), or a wrap: ``%%gap`` and a
        line of options only (``%gap --from-last``)."""
        words = cli.split(line, self.shell.user_ns)
        if cell is None and words and not words[0].startswith("-"):
            return self._line(words)
        if cell is None and not words:
            print(GAP_HELP)
            return None
        return self._wrap(words, cell or "")

    # -- %%gap: wrap a message --------------------------------------------------------------------

    def _wrap(self, words: list[str], cell: str) -> None:
        from gtl_nb import gap

        parser = cli.gap_cell_parser()
        opts = parser.parse(words)
        if opts is None or opts.help:
            print(cli.help_text(parser))
            return
        content = cell.strip("\n")
        target = None
        if opts.to:
            target = opts.to.strip().lower()
            if target not in gap.PLATFORMS:
                raise UsageError(f"--to: unknown platform {opts.to!r}; choose one of {', '.join(gap.PLATFORMS)}")
        source = None  # the answer (or text) --from-last / --from VAR names
        if opts.from_last or opts.from_var:
            if content.strip():
                raise UsageError("%%gap --from-last/--from wraps an answer: leave the cell empty")
            source = self._completion_source(opts)
        # GAP markdown (pasted in the cell, or text --from VAR holds) is a message already: read as it is;
        # so is a WrappedMessage, or GAP's JSON (text or a dict), --from VAR holds
        if source is None:
            text, where = content, "the cell"
        else:
            text, where = (source if isinstance(source, str) else ""), repr(opts.from_var)
        message = None
        if isinstance(source, gap.WrappedMessage):
            _refuse_wrapping_options(opts, where)
            message = source
        elif is_pasted(text):
            message = _pasted_message(text.strip("\n"), opts, where)
        elif source is None:  # GAP's JSON form pasted whole (gtl gap wrap --to-json, a line of %gap export)
            message = _pasted_json(text, opts)
        if message is not None:
            self.session.add_gap(message, opts.out)
            display(GapView(message, target))
            return
        if source is not None:
            completion = source
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
                if not content.strip():  # (as an empty cell is refused: a GAP message carries text)
                    calls = (
                        f" (its {len(completion.tool_calls)} tool call(s) are no message)"
                        if completion.tool_calls
                        else ""
                    )
                    raise UsageError(f"%%gap: that answer has no text to wrap{calls}; wrap one that does")
                platform = platform_for(completion.provider_type)
                model, chat_id = completion.model, completion.session_id
                time, role = self.session.finished_at(completion), "assistant"
        else:
            if not content.strip():
                raise UsageError("%%gap: the cell is empty; write the message under %%gap (or use --from-last)")
            platform, model, chat_id, time, role = "generic", None, None, utc_now(), "user"
        chat_id = opts.chat_id or chat_id or f"nb-{cell_number(self.shell)}"
        parent = opts.reply_to or self.session.previous_in_thread(opts.thread, exclude=chat_id)
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
        """The answer ``--from-last`` / ``--from VAR`` names: a Completion, text, or a GAP message
        (``_gap_message_held``)."""
        from gtl_nb.completion import Comparison, Completion

        if opts.from_last:
            if self.session.last_completion is not None:
                return self.session.last_completion
            picked = _first_answer(self.session.last_result)
            if picked is None:
                raise UsageError(_no_last_answer(self.session.last_result))
            model, completion = picked
            print(
                f"note: the last %%gtl cell compared {', '.join(self.session.last_result.results)}; wrapping "
                f'{model}\'s answer (another: `answer = _gtl.completion("MODEL")`, then `%gap --from answer`)'
            )
            return completion
        value = self.shell.user_ns.get(opts.from_var)
        if value is None:
            raise UsageError(f"--from: {opts.from_var!r} is not defined in the notebook")
        if isinstance(value, Comparison):  # its .completion is a method: say how to pick one answer
            raise UsageError(
                f"--from: {opts.from_var!r} is a comparison of {', '.join(value.results)}; pick one answer "
                f'(`answer = {opts.from_var}.completion("MODEL")`, then `%gap --from answer`)'
            )
        if isinstance(value, BaseException):  # a GTL error keeps the partial answer
            value = getattr(value, "completion", value)
        held = _gap_message_held(value, opts.from_var)
        if held is not None:
            return held
        if not isinstance(value, (Completion, str)):
            raise UsageError(f"--from: {opts.from_var!r} is {a_kind_of(value)}, not a Completion, text or GAP message")
        return value

    # -- %gap subcommands -------------------------------------------------------------------------

    def _line(self, words: list[str]) -> Any:
        command, rest = words[0], words[1:]
        handlers: dict[str, Callable[[list[str]], None]] = {
            "entities": self._entities,
            "graph": self._graph,
            "export": self._export,
        }
        handler = handlers.get(command)
        if handler is None:
            raise UsageError(
                f"unknown %gap subcommand {command!r}{close_word(command, list(handlers))} (use entities, graph or "
                "export; %%gap to wrap)"
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
            wrapped = wrapped_variable(self.shell.user_ns, var)
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

        if values:
            wrapped = define_entities(wrapped, values)
            store(wrapped)
        undefined = gap.find_undefined(wrapped)
        if not undefined:
            print(f"no undefined entities {'left ' if values else ''}in {wrapped.chat_id}")
            if values:
                display(GapView(wrapped, None))
            return
        suggestions = []
        if opts.suggest_with:
            history = [m for m in self.session.gap_messages if m.chat_id != wrapped.chat_id]
            ask = client_for(self.session, None).as_ask(opts.suggest_with)
            try:
                suggestions = gap.suggest_definitions(wrapped, history, ask=ask)
            except GTLError as exc:
                raise cell_error(exc) from None
            _show_suggestions(suggestions)
        from gtl_nb.notebook.widgets import EntityEditor

        editor = EntityEditor(wrapped, on_apply=store, suggestions=suggestions, variable=var)  # fields pre-filled
        if opts.apply and suggestions:
            # the best proposal of each entity, never one value for two of them
            editor.apply({key: s.value for key, s in gap.best_definitions(suggestions).items()})  # calls store()
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
        from gtl_nb.analysis import draw_context_graph
        from gtl_nb.analysis.plots import pyplot

        try:
            plt = pyplot()
        except ImportError as exc:  # the plot extra is not installed: say how, not a traceback
            raise UsageError(f"%gap graph draws with matplotlib, which is not installed: {exc}") from None
        graph = gap.create_context_graph(self.session.gap_messages)

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
        # GAP JSON is always UTF-8 (a lone surrogate is written as its escape: gap.to_json)
        data = "".join(gap.to_json(message) + "\n" for message in messages).encode("utf-8")
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise UsageError(f"%gap export: cannot write {path}: {exc.strerror or exc}") from None
        print(f"wrote {len(messages)} GAP message{'s' if len(messages) != 1 else ''} to {path}")


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
        markdown = [fenced(text)]
        plain = [text]
        if undefined:  # (the keys are the message's, from outside: each one code of entities, never markdown)
            keys = ", ".join(code_span(key) for key in undefined)
            markdown.append(f"_undefined entities: {keys} (define them with {code_span('%gap entities')})_")
            plain.append(f"undefined entities: {', '.join(undefined)} (define them with `%gap entities`)")
        if transformed is not None:
            markdown.append(f"**For {self.target}:**\n\n{fenced(transformed)}")
            plain.append(f"-- for {self.target} --\n{transformed}")
        return {"text/markdown": sendable("\n\n".join(markdown)), "text/plain": sendable("\n\n".join(plain))}


def define_entities(wrapped: Any, values: Mapping[str, str]) -> Any:
    """``wrapped`` with ``KEY=VALUE`` definitions applied, saying what was done: a key that is not an
    entity of the message is added as a new one, with a warning (and the nearest entity's name)."""
    import difflib

    from gtl_nb import gap

    known = list(wrapped.entities)
    for key, value in values.items():
        if key not in wrapped.entities:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            entities = ", ".join(known) or "none"
            print(
                f"warning: {key!r} is not an entity of {wrapped.chat_id} (its entities: {entities}){hint} "
                f"- added it as a new entity"
            )
        wrapped = gap.update_entity(wrapped, key, value or None)
    defined = [key for key, value in values.items() if value]
    cleared = [key for key, value in values.items() if not value]
    done = ([f"defined {', '.join(defined)}"] if defined else []) + (
        [f"marked {', '.join(cleared)} undefined"] if cleared else []
    )
    print(f"{'; '.join(done)} in {wrapped.chat_id}")
    return wrapped


def wrapped_variable(namespace: Mapping[str, Any], name: str) -> Any:
    """A GAP message from the notebook's namespace: a ``WrappedMessage``, or GAP JSON / markdown text
    (``%gap entities VAR``, ``%%gtl --context VAR``)."""
    from gtl_nb import gap

    if name not in namespace:
        raise UsageError(f"{name!r} is not defined; wrap a message first (`%%gap --out {name}`)")
    value = namespace[name]
    if isinstance(value, gap.WrappedMessage):
        return value
    if isinstance(value, str):
        from gtl_nb.gap.errors import GAPLimitError
        from gtl_nb.gap.jsonfmt import is_meant_as_gap_json

        for parse in (gap.from_json, gap.from_markdown):
            try:
                return parse(value)
            except GAPLimitError as exc:  # GAP JSON beyond a limit: say so, not "not a GAP message"
                if parse is gap.from_json and is_meant_as_gap_json(value):
                    raise UsageError(f"{name!r} holds GAP JSON beyond GAP's limits: {exc}") from None
            except (ValueError, TypeError):
                continue
    raise UsageError(
        f"{name!r} is {a_kind_of(value)}, not a GAP message; wrap it first (`%%gap --from {name} --out msg`)"
    )


def cell_number(shell: Any) -> int:
    """The In[n] of the running cell: IPython counts it as ``displayhook.prompt_count`` (older versions
    increment ``execution_count`` after a cell, newer ones before it)."""
    count = getattr(getattr(shell, "displayhook", None), "prompt_count", None)
    return count if isinstance(count, int) else shell.execution_count


def _show_suggestions(suggestions: list[Any]) -> None:
    if not suggestions:
        print("no suggestions")
        return
    lines = ["| entity | value | score | from |", "| --- | --- | --- | --- |"]
    plain = []
    for s in suggestions:
        origin = s.chat_id or s.source
        lines.append(f"| {md_cell(s.key)} | {md_cell(s.value)} | {s.score:.2f} | {md_cell(origin)} |")
        plain.append(f"{s.key} = {s.value}  ({s.score:.2f}, {origin})")
    show_bundle("\n".join(lines), "\n".join(plain))


def _first_answer(last: object) -> tuple[str, Any] | None:
    """A comparison's first model that answered, and its answer (``--from-last`` wraps it, and says so)."""
    from gtl_nb.completion import Completion

    results = getattr(last, "results", None)
    if not isinstance(results, dict):
        return None
    return next(((model, result) for model, result in results.items() if isinstance(result, Completion)), None)


def _no_last_answer(last: object) -> str:
    """Why ``--from-last`` has nothing to wrap: no cell yet, a comparison no model answered, or an error."""
    results = getattr(last, "results", None)
    if isinstance(results, dict):
        return f"--from-last: the last %%gtl cell compared {', '.join(results)}, and none of them answered"
    if isinstance(last, BaseException):
        return "--from-last: the last %%gtl cell ended in an error, with no answer to wrap"
    return "--from-last: no answer yet; run a %%gtl cell first"
