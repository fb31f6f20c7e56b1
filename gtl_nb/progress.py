"""A small progress bar for batches: an ipywidgets bar in a notebook, a one-line bar in a terminal.

Updates are coalesced (at most ``max_redraws_per_second``) and the final state is always drawn.
In a notebook the bar's output also carries a ``text/plain`` form — the terminal's line — and
``close()`` updates it to the final count, so a saved notebook (an HTML export, GitHub, a run
without widget state) shows how the batch ended, not the bar as it started.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
"""The MIME type of a widget's view in an output (the notebook layer's widgets and runner use it too)."""


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    get_ipython = getattr(shell, "get_ipython", None)
    ip = get_ipython() if get_ipython else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class Progress:
    """``Progress(total, label)``; ``advance(ok=True)`` per item; ``close()`` at the end."""

    def __init__(
        self, total: int, label: str = "batch", *, stream: TextIO | None = None, max_redraws_per_second: float = 8.0
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.failed = 0
        self._stream = stream if stream is not None else sys.stderr
        self._interval = 1.0 / max_redraws_per_second
        self._last = 0.0
        self._widget: Any = None
        self._view: Any = None
        self._handle: Any = None  # the bar's display in a notebook, whose text form close() updates
        if in_notebook():
            self._widget = self._make_widget()

    def _make_widget(self) -> Any:
        try:
            import ipywidgets
            from IPython.display import display
        except ImportError:  # pragma: no cover - ipywidgets is a core dependency
            return None
        bar = ipywidgets.IntProgress(min=0, max=max(1, self.total), description=self.label)
        text = ipywidgets.Label()
        box = ipywidgets.HBox([bar, text])
        self._view = box._repr_mimebundle_()[WIDGET_VIEW]
        self._handle = display(self._bundle(), raw=True, display_id=True)
        return bar, text

    def _bundle(self) -> dict[str, Any]:
        """The bar's output: the widget, and the terminal's line for where no widget is drawn."""
        return {WIDGET_VIEW: self._view, "text/plain": self._line()}

    def advance(self, ok: bool = True) -> None:
        self.done += 1
        if not ok:
            self.failed += 1
        now = time.monotonic()
        if now - self._last >= self._interval or self.done == self.total:
            self._last = now
            self._draw()

    def _summary(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done}/{self.total}{failed}"

    def _line(self) -> str:
        width = 24
        filled = int(width * self.done / max(1, self.total))
        return f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self._summary()}"

    def _draw(self) -> None:
        if self._widget is not None:
            bar, text = self._widget
            bar.value = self.done
            text.value = self._summary()
            return
        self._stream.write(f"\r{self._line()}")
        self._stream.flush()

    def close(self) -> None:
        self._draw()
        if self._handle is not None:
            self._handle.update(self._bundle(), raw=True)
        if self._widget is None:
            self._stream.write("\n")
            self._stream.flush()
