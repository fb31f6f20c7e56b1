"""Live notebook views of streaming answers: ``StreamView``, ``ComparisonGrid`` and ``EntityEditor``.

Each view works in three places:

* **widget** — in a Jupyter kernel (JupyterLab 4, Notebook 7, ipywidgets 8): an ``ipywidgets.HTML``
  per answer, redrawn as tokens arrive (coalesced by ``gtl_nb.notebook.throttle.Throttle`` to at
  most one redraw per ``min_interval``);
* **display** — an IPython shell without widgets (``live=False`` in a kernel): an IPython
  ``DisplayHandle`` updated the same way;
* **print** — terminal IPython or plain Python: the tokens are printed as they arrive, then the footer.

How the final state reaches a saved notebook. ``display()`` shows the live area as one output whose
bundle is the widget view plus an empty ``text/plain``. ``finish()`` turns that output into the empty
``text/plain`` alone (``update_display_data``) and closes the widget, then displays the final answer as a
*new* output: ``text/markdown`` (the answer and its footer) and ``text/plain``. So a saved notebook —
and its HTML export, GitHub's rendering and terminal IPython — shows every answer with its footer,
without needing widget state, and an nbval run (which ignores ``update_display_data``) records the
same outputs: the live area's ``text/plain`` is empty both ways and the widget view is not compared.
The live area is a placeholder that always ends empty; every output that keeps a widget view (an
``EntityEditor``, a view shown as a cell's value) carries its text forms beside it, which is what
``gtl_nb.notebook.runner`` keeps of it in a notebook executed headless (``static_outputs``).
Footers print times as ``0.21 s``, so a sanitize pattern can mask them. A ``$`` is written as
``safe_markdown.DOLLAR`` in every markdown and HTML form, so MathJax never reads two of them as a formula.

DOM hooks (for browser tests): every answer's root element has class ``gtl-stream`` and
``data-model="<model>"``; its text is in ``.gtl-text``; the final output's root also has ``gtl-final``.
In the final output the text is rendered markdown, so compare it with whitespace normalised.

Thread safety: ``on_event`` may be called from any thread (``Client.compare`` calls it from the
engine's loop thread); state changes happen under a lock, live redraws only touch widget traits (comm
messages), and all display outputs are published by ``display()`` and ``finish()`` in the caller's thread.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gtl_nb.completion import Comparison, Completion, short_reason
from gtl_nb.notebook.errors import in_notebook_words
from gtl_nb.notebook.output import md_cell
from gtl_nb.notebook.throttle import Throttle
from gtl_nb.progress import WIDGET_VIEW
from gtl_nb.protocol.messages import Done, Error, Reasoning, Status, Token
from gtl_nb.protocol.session import Transcript
from gtl_nb.safe_markdown import code_span, no_math_html, no_math_markdown

__all__ = ["ComparisonGrid", "EntityEditor", "StreamView"]

_TEXT_STYLE = "white-space: pre-wrap; word-break: break-word;"


# ----------------------------------------------------------------------------------------------
# where views draw


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a core dependency
        return None
    return get_ipython()


def _frontend() -> str:
    """``kernel`` (Jupyter), ``shell`` (an embedded IPython shell), ``terminal`` or ``none``."""
    shell = _shell()
    if shell is None:
        return "none"
    if getattr(shell, "kernel", None) is not None:
        return "kernel"
    if type(shell).__name__ == "TerminalInteractiveShell":
        return "terminal"
    return "shell"


def _have_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_mode(live: bool | None) -> str:
    """``widget``, ``display`` or ``print`` for the ``live`` argument (see the module docstring)."""
    where = _frontend()
    if live is None:
        live = where == "kernel" and _have_ipywidgets()
    if live:
        if not _have_ipywidgets():
            raise ImportError("live widgets need ipywidgets: pip install ipywidgets")
        return "widget"
    return "display" if where in ("kernel", "shell") else "print"


def _display(bundle: dict[str, Any], *, display_id: bool = False) -> Any:
    from IPython.display import display

    return display(bundle, raw=True, display_id=display_id or None)


@dataclass(frozen=True)
class _Frame:
    """One live snapshot: an HTML fragment per answer, plain text, and what ``print`` mode needs."""

    html: list[str]
    plain: str
    text: str = ""
    resets: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Final:
    """The final state: the bundle to display (``None``: nothing to show), and the text and tail for
    ``print`` mode."""

    bundle: dict[str, str] | None
    frame: _Frame
    text: str = ""
    tail: str = ""


class _WidgetSurface:
    """ipywidgets: one ``HTML`` per answer (side by side when several) in one live output."""

    def __init__(self, columns: int) -> None:
        import ipywidgets as w

        self.cells = [w.HTML(value="") for _ in range(columns)]
        if columns == 1:
            self.root: Any = self.cells[0]
        else:
            for cell in self.cells:
                cell.layout = w.Layout(flex="1 1 0", min_width="0", margin="0 0.75em 0 0")
            self.root = w.HBox(self.cells, layout=w.Layout(width="100%", align_items="flex-start"))
        self.root.add_class("gtl-widget")
        self.handle: Any = None

    def view(self) -> dict[str, Any]:
        return {WIDGET_VIEW: self.root._repr_mimebundle_()[WIDGET_VIEW]}

    def show(self, frame: _Frame) -> None:
        self.draw(frame)
        self.handle = _display({**self.view(), "text/plain": ""}, display_id=True)

    def draw(self, frame: _Frame) -> None:
        for cell, fragment in zip(self.cells, frame.html, strict=False):
            if cell.value != fragment:
                cell.value = fragment

    def close(self, final: _Final) -> None:
        if self.handle is None:  # shown through _repr_mimebundle_: keep the widget, showing the final state
            self.draw(final.frame)
            return
        self.handle.update({"text/plain": ""}, raw=True)
        _close_widgets(*self.cells, self.root)
        if final.bundle is not None:
            _display(final.bundle)


def _close_widgets(*widgets: Any) -> None:
    """Close widgets and the layout/style models they own, so long sessions do not pile up models."""
    for widget in dict.fromkeys(widgets):
        for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
            if part is not None and hasattr(part, "close"):
                part.close()


class _DisplaySurface:
    """An IPython ``DisplayHandle`` updated with HTML (no widget frontend needed)."""

    def __init__(self) -> None:
        self.handle: Any = None

    def show(self, frame: _Frame) -> None:
        # Displayed as the empty text/plain it ends as: nbval ignores updates, and must record the
        # same output as a saved notebook (where the updates were applied).
        self.handle = _display({"text/plain": ""}, display_id=True)
        self.draw(frame)

    def draw(self, frame: _Frame) -> None:
        if self.handle is not None:
            self.handle.update({"text/html": "".join(frame.html), "text/plain": ""}, raw=True)

    def close(self, final: _Final) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": ""}, raw=True)
        if final.bundle is not None:
            _display(final.bundle)


class _PrintSurface:
    """stdout: print the answer's new text as it grows (``stream=True``), then the footer."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.printed = ""
        self.resets = 0
        self.notes = 0

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def show(self, frame: _Frame) -> None:
        self.draw(frame)

    def draw(self, frame: _Frame) -> None:
        if not self.stream:
            return
        for note in frame.notes[self.notes :]:
            self._write(("\n" if self.printed else "") + f"[{note}]\n")
        self.notes = len(frame.notes)
        if frame.resets != self.resets:
            self.resets, self.printed = frame.resets, ""
        if frame.text.startswith(self.printed) and len(frame.text) > len(self.printed):
            self._write(frame.text[len(self.printed) :])
            self.printed = frame.text

    def close(self, final: _Final) -> None:
        if final.bundle is None:
            self._write("\n" if self.printed else "")
        elif self.stream and self.printed and final.text.startswith(self.printed):
            # the answer is already on screen: finish it and add the footer
            self._write(final.text[len(self.printed) :] + "\n" + (final.tail + "\n" if final.tail else ""))
        else:
            self._write(("\n" if self.printed else "") + final.bundle["text/plain"] + "\n")


def _show_final(surface: Any, final: _Final) -> None:
    """Show a view that finished before it was displayed: just its final output."""
    if isinstance(surface, _PrintSurface):
        surface.close(final)
    elif final.bundle is not None:
        _display(final.bundle)


def _surface(mode: str, columns: int, *, stream_prints: bool) -> Any:
    if mode == "widget":
        return _WidgetSurface(columns)
    if mode == "display":
        return _DisplaySurface()
    return _PrintSurface(stream_prints)


# ----------------------------------------------------------------------------------------------
# the state of one answer


def _seconds(ms: float | None) -> str | None:
    return None if ms is None else f"{ms / 1000:.2f} s"


@dataclass
class _Answer:
    """What one stream has shown so far (a ``Transcript``: the protocol's failover reset is its), and
    (once finished) its final form."""

    model: str
    transcript: Transcript = field(default_factory=Transcript)
    status: str = "waiting"
    # set by finish()
    finished: bool = False
    final_text: str = ""
    final_text_markdown: str | None = None  # the answer's own markdown form of its text, when it has one
    final_calls: list[str] = field(default_factory=list)
    final_error: tuple[str, str] | None = None
    footer: str = ""
    started: float = field(default_factory=time.monotonic)  # the view's making: the request's start
    began: bool = False  # an event arrived: the session had begun (one refused before it shows no time)
    ended: float | None = None  # when the terminal event arrived

    @property
    def text(self) -> str:
        return self.final_text if self.finished else self.transcript.text

    @property
    def calls(self) -> list[str]:
        return [f"{call.name}({call.arguments})" for call in self.transcript.tool_calls]

    def heading(self, *, arrow: str = "→", asked: str | None = None) -> str:
        """A column's title: the model asked for (``asked``, default ``model``) — and, once the stream
        failed over, what answers instead (``deployment:model`` from its ``done``; the deployment failed
        over to before it)."""
        failovers = self.transcript.failovers
        asked = asked or self.model
        if not failovers:
            return asked
        done = self.transcript.done
        if done is not None and done.provider:
            answering = f"{done.provider}:{done.model}" if done.model else done.provider
        else:
            answering = failovers[-1].to_provider or "?"
        return f"{asked} {arrow} {answering}"

    @property
    def notes(self) -> list[str]:
        """One note per failover, worded as ``Completion.footer()`` words them."""
        return [
            "failover: "
            + short_reason(
                f"{s.from_provider or '?'} -> {s.to_provider or '?'}" + (f": {s.reason}" if s.reason else "")
            )
            for s in self.transcript.failovers
        ]

    @property
    def error(self) -> tuple[str, str] | None:
        error = self.transcript.error
        return None if error is None else (error.code, in_notebook_words(error.message))

    @property
    def empty(self) -> bool:
        """Finished with nothing to show: no text, no tool calls, no error line."""
        return self.finished and not self.final_text.strip() and not self.final_calls and not self.final_error

    def apply(self, event: Any) -> None:
        """Fold one GTL event into the state (unknown events are ignored)."""
        self.began = True
        self.transcript.add(event)
        if isinstance(event, Token):
            self.status = "streaming"
        elif isinstance(event, Reasoning):
            self.status = "thinking"
        elif isinstance(event, Done):
            self.status = "done"
            self.ended = time.monotonic()
        elif isinstance(event, Error):
            self.status = "error"
            self.ended = time.monotonic()
        elif isinstance(event, Status):
            self.status = _status_word(event)

    def finish(self, result: Any, *, show_error: bool = True) -> None:
        """Take the final state from a ``Completion`` or an exception; ``show_error=False`` leaves the
        error line out (the caller reports the error itself)."""
        completion, exc = _outcome(result)
        if completion is not None:
            self.final_text = completion.text
            self.final_text_markdown = completion.text_markdown().strip("\n")
            self.final_calls = [f"{c.name}({c.arguments})" for c in completion.tool_calls]
            self.footer = completion.footer()
            if completion.error is not None and not completion.cancelled:  # (a cancelled one's footer says so)
                self.final_error = (completion.error.code, in_notebook_words(completion.error.message))
        else:
            self.final_text = self.transcript.text
            self.final_calls = self.calls
            self.footer = " · ".join(self.notes)
        if exc is not None and self.final_error is None:
            code = getattr(exc, "code", None) or type(exc).__name__
            # worded as %%gtl's own error line: a column's advice is a notebook's (`%gtl models`)
            self.final_error = (str(code), in_notebook_words(getattr(exc, "message", None) or str(exc)))
        if self.final_error is None and completion is None:
            self.final_error = self.error
        if not show_error:
            self.final_error = None
            if not self.final_text.strip() and not self.final_calls:
                self.footer = ""  # nothing arrived: no output at all
        elif self.final_error is not None and self.began and (completion is None or completion.latency_ms is None):
            # an error's footer had no time (only done says latency): a refusal and a stream cut after
            # seconds read alike; said here as %%gtl's error line says it
            self.footer = " · ".join(part for part in (self._how_far(completion), self.footer) if part)
        self.finished = True

    def _how_far(self, completion: Completion | None) -> str:
        """``after 12 tokens, 4.02 s``: how much of the answer came before the error, and when."""
        counted = completion.usage.tokens_out if completion is not None and completion.usage is not None else None
        count = counted if counted else len(self.transcript.tokens)
        arrived = f"{count} token{'s' if count != 1 else ''}, " if count else ""
        return f"after {arrived}{(self.ended or time.monotonic()) - self.started:.2f} s"

    # -- rendering ------------------------------------------------------------------------------

    def live_footer(self) -> str:
        parts = [self.status]
        usage, done = self.transcript.usage, self.transcript.done
        if usage is not None:
            parts.append(f"{_count(usage.tokens_in)} in · {_count(usage.tokens_out)} out")
        if done is not None:
            for label, value in (("first token ", done.ttft_ms), ("", done.latency_ms)):
                if _seconds(value):
                    parts.append(f"{label}{_seconds(value)}")
            if done.provider:
                parts.append(done.provider)
        parts.extend(self.notes)
        return " · ".join(parts)

    def live_html(self, heading: str | None) -> str:
        """The live fragment: escaped text in ``.gtl-text``, status and notes in the footer."""
        if self.finished:
            return self._fragment(heading, self.final_text, "", self.final_calls, self.final_error, self.footer)
        transcript = self.transcript
        return self._fragment(
            heading, transcript.text, transcript.reasoning_text, self.calls, self.error, self.live_footer()
        )

    def _fragment(
        self,
        heading: str | None,
        text: str,
        reasoning: str,
        calls: list[str],
        error: tuple[str, str] | None,
        footer: str,
    ) -> str:
        classes = "gtl-stream" + (" gtl-error" if error else "") + (" gtl-final" if self.finished else "")
        out = [f'<div class="{classes}" data-model="{_attr(self.model)}">']
        if heading:
            out.append(f'<div class="gtl-title"><b>{no_math_html(heading)}</b></div>')
        if reasoning:
            shown = no_math_html(reasoning)
            out.append(f'<div class="gtl-reasoning" style="{_TEXT_STYLE} opacity: 0.6;">{shown}</div>')
        out.append(f'<div class="gtl-text" style="{_TEXT_STYLE}">{no_math_html(text)}</div>')
        out += [f'<div class="gtl-call"><code>{html.escape(call)}</code></div>' for call in calls]
        if error:
            code, message = error
            out.append(f'<div class="gtl-error-line"><b>{html.escape(code)}</b>: {no_math_html(message)}</div>')
        out.append(f'<div class="gtl-footer" style="opacity: 0.7;"><small>{no_math_html(footer)}</small></div>')
        out.append("</div>")
        return "".join(out)

    def final_markdown(self, heading: str | None, style: str = "") -> str:
        """The final answer as markdown inside ``gtl-stream gtl-final`` HTML blocks.

        The blank lines after each opening tag end the HTML block (CommonMark), so the answer
        inside is rendered as markdown.
        """
        style_attr = f' style="{style}"' if style else ""
        lines = [f'<div class="gtl-stream gtl-final" data-model="{_attr(self.model)}"{style_attr}>']
        if heading:
            lines += ['<div class="gtl-title">', "", f"**{_md_inline(heading)}**", "", "</div>"]
        text = self.final_text.strip("\n")
        if text:
            body = self.final_text_markdown if self.final_text_markdown is not None else no_math_markdown(text)
        else:
            body = "" if self.final_calls or self.final_error else "_(empty answer)_"
        lines += ['<div class="gtl-text">', "", body, "", "</div>"] if body else []
        for call in self.final_calls:
            lines += ['<div class="gtl-call">', "", code_span(call), "", "</div>"]
        if self.final_error:
            code, message = self.final_error
            lines += ['<div class="gtl-error">', "", f"**{code}**: {_md_inline(message)}", "", "</div>"]
        if self.footer:
            lines += ['<div class="gtl-footer">', "", f"<sub>{no_math_html(self.footer)}</sub>", "", "</div>"]
        lines.append("</div>")
        return "\n".join(lines)

    def final_tail(self) -> str:
        """What follows the text in plain form: tool calls, the error, ``-- footer``."""
        lines = [f"[tool call] {call}" for call in self.final_calls]
        if self.final_error:
            lines.append(f"[{self.final_error[0]}] {self.final_error[1]}")
        if self.footer:
            lines.append(f"-- {self.footer}")
        return "\n".join(lines)

    def final_plain(self, heading: str | None) -> str:
        head = [f"== {heading} =="] if heading else []
        return "\n".join(part for part in [*head, self.final_text.strip("\n"), self.final_tail()] if part)

    def live_plain(self, heading: str | None) -> str:
        head = [f"== {heading} =="] if heading else []
        return "\n".join([*head, self.transcript.text, f"-- {self.live_footer()}"])


def _status_word(event: Status) -> str:
    if event.state == "retrying":
        return "retrying" + (f" (attempt {event.attempt})" if event.attempt else "")
    return event.state


def _outcome(result: Any) -> tuple[Completion | None, BaseException | None]:
    """``(completion, exception)`` of what ``finish()`` was given (an exception may carry a completion)."""
    if isinstance(result, Completion):
        return result, None
    if isinstance(result, BaseException):
        completion = getattr(result, "completion", None)
        return (completion if isinstance(completion, Completion) else None), result
    raise TypeError(f"finish() takes a Completion or an exception, not {type(result).__name__}")


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def _md_inline(text: str) -> str:
    """Text safe on one markdown line (no HTML, no line breaks, no math)."""
    return no_math_html(" ".join(text.split()))


# ----------------------------------------------------------------------------------------------
# what both live views share


class _LiveView:
    """The surface, lock, throttle and drawing of a live view; subclasses say what to draw.

    Subclasses set ``mode`` and implement ``finished``, ``_frame_unlocked``, ``_final`` and
    ``_live_bundle``; ``_columns`` and ``_stream_prints`` choose the surface.
    """

    _stream_prints = False

    def __init__(self, columns: int, mode: str, min_interval: float) -> None:
        self.mode = mode
        self._columns = columns
        self._lock = threading.Lock()
        self._surface: Any = None
        self._throttle = Throttle(self._draw, min_interval)

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    def display(self) -> None:
        """Show the view now (a no-op when already shown)."""
        with self._lock:
            if self._surface is not None:
                return
            self._surface = _surface(self.mode, self._columns, stream_prints=self._stream_prints)
            finished = self.finished
        if finished:
            _show_final(self._surface, self._final())
        else:
            self._surface.show(self._frame())

    @property
    def redraws(self) -> int:
        """How many draws ran so far (live ones plus the final one)."""
        return self._throttle.draws

    @property
    def widget(self) -> Any:
        """The ipywidgets widget (``None`` unless shown in widget mode)."""
        surface = self._surface
        return surface.root if isinstance(surface, _WidgetSurface) else None

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        with self._lock:
            if self.finished:
                return dict(self._final().bundle or {"text/plain": ""})
            bundle = self._live_bundle()
            if self.mode == "widget":
                if self._surface is None:
                    self._surface = _WidgetSurface(self._columns)  # shown by IPython through this bundle
                    self._surface.draw(self._frame_unlocked())
                if isinstance(self._surface, _WidgetSurface):
                    bundle.update(self._surface.view())
            return bundle

    def __str__(self) -> str:
        with self._lock:
            if self.finished:
                return (self._final().bundle or {}).get("text/plain", "")
            return self._live_bundle()["text/plain"]

    # -- for subclasses ---------------------------------------------------------------------------

    def _frame_unlocked(self) -> _Frame:
        raise NotImplementedError

    def _final(self) -> _Final:
        raise NotImplementedError

    def _live_bundle(self) -> dict[str, Any]:
        """The text forms of the live state (markdown and plain), under the lock."""
        raise NotImplementedError

    # -- drawing --------------------------------------------------------------------------------

    def _frame(self) -> _Frame:
        with self._lock:
            return self._frame_unlocked()

    def _draw(self) -> None:
        surface = self._surface
        if surface is not None:
            surface.draw(self._frame())

    def _draw_final(self) -> None:
        surface = self._surface
        if surface is not None:
            with self._lock:
                final = self._final()
            surface.close(final)


# ----------------------------------------------------------------------------------------------
# StreamView


class StreamView(_LiveView):
    """Live view of one streaming answer. Thread-safe: on_event may be called from the engine's loop thread.

    ``live=None`` picks ipywidgets in a Jupyter kernel, an IPython display handle in other IPython
    shells, and printing to stdout in terminal IPython or plain Python; ``live=True`` forces widgets
    and ``live=False`` forbids them. ``min_interval`` is the shortest time between two redraws.

        view = StreamView("gpt-4o")
        view.display()
        try:
            view.finish(client.stream("gpt-4o", prompt, on_event=view.on_event).result())
        except Exception as exc:
            view.finish(exc)
    """

    _stream_prints = True

    def __init__(self, title: str | None = None, *, min_interval: float = 0.25, live: bool | None = None) -> None:
        super().__init__(1, _resolve_mode(live), min_interval)
        self.title = title
        self.result: Any = None
        self._answer = _Answer(model=title or "")

    def on_event(self, event: Any) -> None:
        """Fold in one GTL event and ask for a (coalesced) redraw."""
        with self._lock:
            if self._answer.finished:
                return
            self._answer.apply(event)
            if isinstance(event, Done) and event.model and not self.title:
                self._answer.model = event.model
        self._throttle.request()

    def finish(self, result: Any, *, show_error: bool = True) -> None:
        """Show the final state of ``result`` (a ``Completion`` or an exception). Always draws; idempotent.

        ``show_error=False`` leaves the error out of the view (for a caller that reports it itself):
        what arrived before it is shown with its footer, and when nothing arrived there is no output.
        """
        with self._lock:
            if self._answer.finished:
                return
            if not self.title and isinstance(result, Completion) and result.model:
                self._answer.model = result.model
            self._answer.finish(result, show_error=show_error)
            self.result = result
        self._throttle.close(self._draw_final)

    @property
    def text(self) -> str:
        """The answer text so far (the final text once finished)."""
        with self._lock:
            return self._answer.text

    @property
    def finished(self) -> bool:
        return self._answer.finished

    # -- drawing --------------------------------------------------------------------------------

    def _heading(self, *, arrow: str = "→") -> str | None:
        """The title as the answer stands: the model asked for, and what answers once it failed over."""
        return self._answer.heading(arrow=arrow, asked=self.title) if self.title else None

    def _live_bundle(self) -> dict[str, Any]:
        answer = self._answer
        text = no_math_markdown(answer.transcript.text) or "_…_"
        return {
            "text/markdown": f"{text}\n\n<sub>{no_math_html(answer.live_footer())}</sub>",
            "text/plain": answer.live_plain(self._heading(arrow="->")),
        }

    def _frame_unlocked(self) -> _Frame:
        answer = self._answer
        return _Frame(
            html=[answer.live_html(self._heading())],
            plain=answer.live_plain(self._heading(arrow="->")),
            text=answer.transcript.text,
            resets=len(answer.transcript.failovers),
            notes=tuple(answer.notes),
        )

    def _final(self) -> _Final:
        answer = self._answer
        bundle = None
        if not answer.empty:
            bundle = {
                "text/markdown": answer.final_markdown(self._heading()),
                "text/plain": answer.final_plain(self._heading(arrow="->")),
            }
        return _Final(bundle=bundle, frame=self._frame_unlocked(), text=answer.final_text, tail=answer.final_tail())


# ----------------------------------------------------------------------------------------------
# ComparisonGrid


class ComparisonGrid(_LiveView):
    """One column per model, all streaming at once; ``finish(comparison)`` adds a ranked summary table.

    Pass ``grid.on_event`` as ``Client.compare(..., on_event=grid.on_event)``; it is called from the
    engine's loop thread.
    """

    def __init__(self, models: Sequence[str], *, min_interval: float = 0.25, live: bool | None = None) -> None:
        models = list(dict.fromkeys(models))
        if not models:
            raise ValueError("ComparisonGrid needs at least one model")
        super().__init__(len(models), _resolve_mode(live), min_interval)
        self.models = models
        self.comparison: Comparison | None = None
        self.summary: Any = None  # the ranked pandas table, once finished
        self._answers = {model: _Answer(model=model) for model in self.models}
        self._finished = False

    def on_event(self, model: str, event: Any) -> None:
        """One event of ``model``'s stream (the signature ``Client.compare`` uses)."""
        with self._lock:
            answer = self._answers.get(model)
            if answer is None or self._finished:
                return
            answer.apply(event)
        self._throttle.request()

    def finish(self, comparison: Comparison) -> None:
        """Draw every column's final state (answer, metrics or error) and the summary table."""
        summary = _summary_frame(comparison)
        with self._lock:
            if self._finished:
                return
            for model, answer in self._answers.items():
                result = comparison.results.get(model)
                answer.finish(result if result is not None else KeyError(f"no result for {model}"))
            self.comparison = comparison
            self.summary = summary
            self._finished = True
        self._throttle.close(self._draw_final)

    @property
    def finished(self) -> bool:
        return self._finished

    def interrupted(self) -> Comparison:
        """What every column received so far, as a ``Comparison`` for ``finish``: the user stopped the
        comparison, so a column that had not ended is a ``Completion`` marked cancelled, timed from the
        grid's start to the interrupt."""
        results: dict[str, Completion | Exception] = {}
        now = time.monotonic()
        with self._lock:
            for model, answer in self._answers.items():
                transcript = Transcript(session_id=answer.transcript.session_id)
                for event in answer.transcript.events:
                    transcript.add(event)
                if not transcript.finished:
                    transcript.add(Error(session_id=transcript.session_id, code="CANCELLED", message="cancelled"))
                completion = Completion.from_transcript(transcript)
                if completion.cancelled and completion.latency_ms is None:
                    completion = replace(completion, latency_ms=((answer.ended or now) - answer.started) * 1000)
                results[model] = completion
        return Comparison(models=list(self.models), results=results)

    def text(self, model: str) -> str:
        """The current (or final) answer text of one column."""
        with self._lock:
            return self._answers[model].text

    # -- drawing --------------------------------------------------------------------------------

    def _live_bundle(self) -> dict[str, Any]:
        answers = self._answers
        return {
            "text/markdown": "\n\n".join(
                f"**{_md_inline(a.heading())}**:\n\n{no_math_markdown(a.text) or '…'}" for a in answers.values()
            ),
            "text/plain": "\n".join(a.live_plain(a.heading(arrow="->")) for a in answers.values()),
        }

    def _frame_unlocked(self) -> _Frame:
        answers = self._answers
        return _Frame(
            html=[answers[m].live_html(answers[m].heading()) for m in self.models],
            plain="\n".join(answers[m].live_plain(answers[m].heading(arrow="->")) for m in self.models),
        )

    def _final(self) -> _Final:
        answers = [self._answers[m] for m in self.models]
        columns = [a.final_markdown(a.heading(), style="flex: 1 1 0; min-width: 0;") for a in answers]
        grid = "\n".join(
            ['<div class="gtl-grid" style="display: flex; gap: 1.5em; align-items: flex-start;">', *columns, "</div>"]
        )
        plain = "\n".join(a.final_plain(a.heading(arrow="->")) for a in answers)
        if self.summary is not None:
            grid += "\n\n" + _markdown_table(self.summary)
            plain += "\n\n" + self.summary.to_string(index=False)
        return _Final(bundle={"text/markdown": grid, "text/plain": plain}, frame=self._frame_unlocked())


def _summary_frame(comparison: Comparison) -> Any:
    """``Comparison.to_dataframe()`` as it reads (``gtl_nb.analysis.Table`` cells: times as ``0.21 s``,
    cost as money, unknowns empty), with shorter headings."""
    from gtl_nb.analysis.frames import Table

    cells = Table(comparison.to_dataframe()).formatted()
    columns = {
        "model": "model",
        "provider": "provider",
        "status": "status",
        "error": "error",
        "tokens_in": "tokens_in",
        "tokens_out": "tokens_out",
        "cost": "cost",
        "ttft_s": "first token",
        "latency_s": "latency",
        "length_chars": "length",
        **{name: name.replace("_", " ") for name in ("rank_latency", "rank_cost", "rank_length")},
    }
    present = [name for name in columns if name in cells.columns]
    return cells[present].rename(columns=columns)


def _markdown_table(frame: Any) -> str:
    """A GitHub-flavoured pipe table (no extra dependency such as tabulate)."""

    header = "| " + " | ".join(md_cell(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


# ----------------------------------------------------------------------------------------------
# EntityEditor


class EntityEditor:
    """One text field per undefined entity of a GAP message and an Apply button.

    ``apply(values)`` (what the button does, with the fields' values) defines every entity given a
    non-empty value, returns the updated ``WrappedMessage`` and calls ``on_apply`` with it.
    ``suggestions`` (``gap.suggest_definitions`` output) pre-fill the fields with the best values, no
    value in two fields (``gap.best_definitions``).
    ``variable`` names the notebook variable that holds the message, for the ``%gap entities`` hint.

    Its output always carries the entity table as markdown and text beside the widget (what a saved
    notebook shows where the widget cannot be drawn); once every entity is defined, the output
    becomes that table alone.
    """

    def __init__(
        self,
        wrapped: Any,
        on_apply: Callable[[Any], Any] | None = None,
        *,
        suggestions: Iterable[Any] | None = None,
        live: bool | None = None,
        variable: str | None = None,
    ) -> None:
        from gtl_nb import gap

        self._gap = gap
        self._wrapped = wrapped
        self.on_apply = on_apply
        self.variable = variable
        self.keys: list[str] = list(gap.find_undefined(wrapped))
        # the best proposal of each, never one value for two entities (gap.best_definitions)
        best = gap.best_definitions(s for s in suggestions or () if s.key in self.keys)
        self.suggested: dict[str, str] = {key: s.value for key, s in best.items()}
        self.mode = _resolve_mode(live)
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = {}
        self._status: Any = None
        self._root: Any = None
        self._handle: Any = None  # the display of the editor, while it shows the widget
        self.applied: dict[str, str] = {}

    @property
    def wrapped(self) -> Any:
        """The message with every definition applied so far."""
        return self._wrapped

    @property
    def undefined(self) -> list[str]:
        """The keys still undefined."""
        return list(self._gap.find_undefined(self._wrapped))

    @property
    def widget(self) -> Any:
        return self._root

    def _build(self) -> Any:
        import ipywidgets as w

        if self._root is not None:
            return self._root
        rows = []
        for key in self.keys:
            field_ = w.Text(
                value=self.suggested.get(key, ""),
                description=key,
                placeholder=f"what is {key.replace('_', ' ')}?",
                layout=w.Layout(width="100%"),
                style={"description_width": "initial"},
            )
            field_.add_class("gtl-entity")
            self._fields[key] = field_
            rows.append(field_)
        button = w.Button(description="Apply", button_style="primary", icon="check")
        button.add_class("gtl-apply")
        button.on_click(lambda _button: self.apply())
        self._status = w.HTML(value=self._status_html())
        self._root = w.VBox([*rows, w.HBox([button, self._status])])
        self._root.add_class("gtl-entity-editor")
        return self._root

    def display(self) -> None:
        """Show the editor (widgets in a kernel, while entities are undefined; the table elsewhere)."""
        bundle = self._text_bundle()
        if self.mode == "widget" and self.undefined:
            root = self._build()
            self._handle = _display({WIDGET_VIEW: root._repr_mimebundle_()[WIDGET_VIEW], **bundle}, display_id=True)
        elif self.mode in ("widget", "display"):
            _display(bundle)
        else:
            sys.stdout.write(bundle["text/plain"] + "\n")

    def apply(self, values: Mapping[str, str] | None = None) -> Any:
        """Define the entities in ``values`` (default: the fields); return the updated message."""
        with self._lock:
            if values is None:
                values = {key: field_.value for key, field_ in self._fields.items()}
            else:
                for key, value in values.items():
                    if key in self._fields:
                        self._fields[key].value = value
            wrapped = self._wrapped
            for key, value in values.items():
                value = (value or "").strip()
                if not value:
                    continue
                if key not in wrapped.entities:
                    raise KeyError(f"the message has no entity {key!r}; its entities: {', '.join(wrapped.entities)}")
                wrapped = self._gap.update_entity(wrapped, key, value)
                self.applied[key] = value
            self._wrapped = wrapped
            if self._status is not None:
                self._status.value = self._status_html()
        if self._handle is not None and not self.undefined:
            self._become_static()
        if self.on_apply is not None:
            self.on_apply(wrapped)
        return wrapped

    def _become_static(self) -> None:
        """Every entity is defined: the output becomes the table, and the widgets are closed."""
        handle, self._handle = self._handle, None
        handle.update(self._text_bundle(), raw=True)
        root = self._root
        _close_widgets(*self._fields.values(), *root.children[-1].children, root.children[-1], root)

    def _status_html(self) -> str:
        left = self.undefined
        if not self.keys:
            return "<span>no undefined entities</span>"
        if not left:
            return '<span class="gtl-entities-done">all entities defined</span>'
        return f"<span>undefined: {html.escape(', '.join(left))}</span>"

    def _text_bundle(self) -> dict[str, str]:
        entities = self._wrapped.entities
        if not entities:
            return {"text/markdown": "_No entities in this message._", "text/plain": "No entities in this message."}
        md = ["| entity | type | value |", "| --- | --- | --- |"]
        plain = []
        for key, entity in entities.items():
            value = _md_inline(entity.value).replace("|", "\\|") if entity.value is not None else "*(undefined)*"
            md.append(f"| {code_span(key)} | {_md_inline(entity.type)} | {value} |")
            plain.append(f"{key} ({entity.type}): {entity.value if entity.value is not None else '(undefined)'}")
        left = self.undefined
        if left:
            # without the variable, %gap entities defines the notebook's last message: maybe another one
            example = " ".join([*([self.variable] if self.variable else []), *(f'{k}="..."' for k in left)])
            # (no "apply() on this editor": %gap entities, which shows it, hands the user no editor)
            md += ["", f"Define them with {code_span(f'%gap entities {example}')}."]  # (keys from outside: entities)
            plain.append(f"Define them with %gap entities {example}.")
        return {"text/markdown": "\n".join(md), "text/plain": "\n".join(plain)}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        bundle: dict[str, Any] = self._text_bundle()
        if self.mode == "widget" and self.undefined:
            bundle[WIDGET_VIEW] = self._build()._repr_mimebundle_()[WIDGET_VIEW]
        return bundle
